using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Support;

namespace StorageNode.Witness;

/// <summary><c>storagenode witness</c>: runs a <see cref="WitnessService"/> until Ctrl-C or SIGTERM.</summary>
public static class WitnessMain
{
    public static int Run(IConfiguration configuration)
    {
        WitnessConfig cfg;
        try { cfg = NodeConfig.LoadWitness(configuration); }
        catch (ConfigException e)
        {
            Console.Error.WriteLine($"storagenode witness: invalid configuration: {e.Message}");
            return 2;
        }
        using ILoggerFactory loggerFactory = ConsoleLog.Create();
        WitnessService service;
        try
        {
            service = new WitnessService(cfg, loggerFactory.CreateLogger("witness"));
            service.Start();
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException or System.Net.Sockets.SocketException)
        {
            Console.Error.WriteLine($"storagenode witness: cannot start: {e.Message}");
            return 1;
        }
        using var stop = new ManualResetEventSlim();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Set(); };
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Set(); });
        Console.WriteLine($"[witness] ready on udp {service.Endpoint}. Ctrl-C stops.");
        stop.Wait();
        service.Dispose();
        Console.WriteLine("[witness] stopped");
        return 0;
    }
}
