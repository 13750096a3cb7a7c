using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using StorageNode.Support;
using StorageNode;
using StorageNode.Config;
using StorageNode.Hosting;

// storagenode [--config FILE] [--Section:Key=value ...]
// Configuration sources, later ones win: the JSON file, SN_* environment variables, the command line.
// storagenode rpc [-s SOCKET] METHOD [PARAMS]: a management call to a running node (docs/management.md).
if (args.Length > 0 && args[0] == "rpc") return StorageNode.Control.RpcClient.Run(args[1..], Console.Out, Console.Error);
bool witnessMode = args.Length > 0 && args[0] == "witness";
if (witnessMode) args = args[1..];
string? configFile = null;
for (int i = 0; i < args.Length; i++)
{
    if (args[i] is "--config" or "-c" && i + 1 < args.Length) configFile = args[i + 1];
    else if (args[i].StartsWith("--config=", StringComparison.Ordinal)) configFile = args[i]["--config=".Length..];
    else if (args[i] is "--help" or "-h")
    {
        Console.WriteLine("usage: storagenode [--config FILE] [--Section:Key=value ...]");
        Console.WriteLine("       storagenode witness [--config FILE] [--Witness:Key=value ...]   (a pair's witness: docs/ha.md)");
        Console.WriteLine("       storagenode rpc [-s SOCKET] METHOD [PARAMS_JSON | NAME=VALUE ...]   (a running node's management RPC)");
        Console.WriteLine("  Settings come from FILE (JSON), then SN_* environment variables (SN_Node__Name=A), then the command line.");
        Console.WriteLine("  Reference: docs/configuration.md");
        return 0;
    }
}

IConfigurationRoot configuration;
try
{
    var builder = new ConfigurationBuilder();
    if (configFile != null)
    {
        if (!File.Exists(configFile))
        {
            Console.Error.WriteLine($"storagenode: configuration file '{configFile}' does not exist");
            return 2;
        }
        builder.AddJsonFile(Path.GetFullPath(configFile), optional: false, reloadOnChange: false);
    }
    builder.AddEnvironmentVariables("SN_");
    builder.AddCommandLine(args.Where(a => a is not ("--config" or "-c") && !a.StartsWith("--config=", StringComparison.Ordinal) && a != configFile).ToArray());
    configuration = builder.Build();
}
catch (Exception e) when (e is FormatException or InvalidDataException or IOException)
{
    Console.Error.WriteLine($"storagenode: cannot read configuration: {e.Message}");
    return 2;
}
if (witnessMode) return StorageNode.Witness.WitnessMain.Run(configuration);

NodeConfig config;
try
{
    config = NodeConfig.Load(configuration);
    // State kept across restarts (reservations with PTPL) lives beside the configuration unless placed elsewhere; where
    // that default cannot be had (a read-only folder) the node runs without it and says so.
    if (config.StateDirectory == null && configFile != null)
        config = config with { StateDirectory = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(configFile))!, "state"), StateDirectoryIsDefault = true };
}
catch (ConfigException e)
{
    Console.Error.WriteLine($"storagenode: invalid configuration: {e.Message}");
    return 2;
}
catch (Exception e) when (e is FormatException or InvalidDataException or IOException)
{
    Console.Error.WriteLine($"storagenode: cannot read configuration: {e.Message}");
    return 2;
}

// A transport this machine cannot run (RDMA without a device): say why, naming the setting, before anything starts.
if (Node.UnavailableTransport(config) is { } unavailable)
{
    Console.Error.WriteLine($"storagenode: invalid configuration: {unavailable.Message}");
    return 2;
}

using ILoggerFactory loggerFactory = ConsoleLog.Create();

NodeHost host;
try
{
    host = NodeHost.Start(config, loggerFactory);
}
catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or ConfigException or InvalidOperationException or StorageNode.Rdma.RdmaException)
{
    Console.Error.WriteLine($"storagenode {config.Name}: cannot start: {e.Message}");
    return 1;
}

Node node = host.Node;
using var stop = new ManualResetEventSlim();
int exitCode = 0;
if (node.Pair != null)
{
    node.Pair.Refused += reason =>
    {
        Console.Error.WriteLine($"storagenode {config.Name}: invalid configuration: Cluster: partner {config.Cluster!.Partner} disagrees: {reason}");
        exitCode = 2;
        stop.Set();
    };
}
Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Set(); };
using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Set(); });
// SIGUSR1 prints one stats line (collections so far, bytes allocated by the process): `build.ps1 bench` uses it
// to show that a perf run causes no GC.
using var sigusr1 = System.Runtime.InteropServices.PosixSignalRegistration.Create((System.Runtime.InteropServices.PosixSignal)10, c =>
{
    c.Cancel = true;
    Console.WriteLine(FormattableString.Invariant(
        $"[{config.Name}] stats: gc0={GC.CollectionCount(0)} gc1={GC.CollectionCount(1)} gc2={GC.CollectionCount(2)} allocated={GC.GetTotalAllocatedBytes()} heap={GC.GetTotalMemory(false)}"));
    // The reactors' loop counts: iterations and sleeps (each sleep ends in a wake-up; per I/O, what polling costs).
    foreach (var r in node.Reactors)
        Console.WriteLine(FormattableString.Invariant($"[{config.Name}] reactor {r.Name}: iterations={Volatile.Read(ref r.Iterations)} sleeps={Volatile.Read(ref r.Sleeps)}"));
    // The interconnect: which transport each link runs on and, over RDMA, how relayed data moved on this node.
    foreach (var link in node.Pair?.Links ?? [])
        Console.WriteLine($"[{config.Name}] interconnect {link.Subsystem.Nqn}: {link.Transport ?? "down"}; {link.Counters}");
});

foreach (var ep in node.TcpEndpoints)
    Console.WriteLine($"[{config.Name}] NVMe/TCP listening on {ep}");
foreach (var ep in node.RdmaEndpoints)
    Console.WriteLine($"[{config.Name}] NVMe/RDMA listening on {ep}");
foreach (var s in config.Subsystems)
    Console.WriteLine($"[{config.Name}] subsystem {s.Nqn}: {s.Namespaces.Count} namespace(s), CNTLID {s.ControllerIdMin}-{s.ControllerIdMax}");
if (config.Cluster is { } cl)
    Console.WriteLine($"[{config.Name}] cluster {cl.Name}: partner {cl.Partner}, interconnect {node.InterconnectEndpoint}" +
        $"{(node.InterconnectRdmaEndpoint != null ? " (NVMe/TCP and NVMe/RDMA)" : " (NVMe/TCP)")} -> {cl.PartnerInterconnect}, transport {cl.InterconnectTransport.ToString().ToLowerInvariant()}");
if (host.Rpc != null)
    Console.WriteLine($"[{config.Name}] management RPC on {host.Rpc.Path} (storagenode rpc -s {host.Rpc.Path} rpc_get_methods)");
Console.WriteLine($"[{config.Name}] ready. Ctrl-C stops.");
stop.Wait();
Console.WriteLine($"[{config.Name}] stopping");
host.Dispose();
Console.WriteLine($"[{config.Name}] stopped");
return exitCode;
