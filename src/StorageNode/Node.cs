using System.Net;
using Microsoft.Extensions.Logging;
using StorageNode.Bdevs;
using StorageNode.Config;
using StorageNode.Interop;
using StorageNode.Reactors;
using StorageNode.Target;
using StorageNode.Transport.Tcp;

namespace StorageNode;

/// <summary>
/// One StorageNode: reactors, bdevs, the NVMe-oF target with its subsystems, and the transports. Built from a
/// validated <see cref="NodeConfig"/>; usable in-process (tests, benchmarks) or from the executable.
/// </summary>
public sealed class Node : IDisposable
{
    private readonly List<Reactor> _reactors = [];
    private readonly Dictionary<string, Bdev> _bdevs = new(StringComparer.Ordinal);
    private readonly ILogger _log;
    private bool _started;

    public NodeConfig Config { get; }
    public NvmfTarget Target { get; }
    public TcpTransport Tcp { get; }
    public IReadOnlyList<Reactor> Reactors => _reactors;
    public IReadOnlyList<IPEndPoint> TcpEndpoints { get; private set; } = [];
    public ILoggerFactory LoggerFactory { get; }

    public Node(NodeConfig config, ILoggerFactory loggerFactory)
    {
        Config = config;
        LoggerFactory = loggerFactory;
        _log = loggerFactory.CreateLogger("node");
        try
        {
            for (int i = 0; i < config.ReactorCount; i++)
                _reactors.Add(new Reactor(i, $"{config.Name}-reactor{i}", config.PollMode, config.AdaptiveSpin, config.Pools, loggerFactory.CreateLogger($"reactor{i}")));
            Target = new NvmfTarget(config.Name, config.Target, _reactors, loggerFactory);
            Tcp = new TcpTransport(Target);

            foreach (BdevConfig b in config.Bdevs) _bdevs[b.Name] = CreateBdev(b);
            foreach (SubsystemConfig sc in config.Subsystems)
            {
                var s = new Subsystem(sc.Nqn, SubsystemKind.Nvm, sc.SerialNumber, sc.ModelNumber, sc.FirmwareRevision,
                    sc.ControllerIdMin, sc.ControllerIdMax, sc.MaxNamespaces, sc.AllowAnyHost, sc.Hosts);
                foreach (NamespaceConfig nc in sc.Namespaces)
                    s.AddNamespace(new Namespace(nc.Nsid, _bdevs[nc.Bdev], nc.Nguid, nc.Uuid, nc.AnaGroup));
                Target.AddSubsystem(s);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private Bdev CreateBdev(BdevConfig b) => b.Type switch
    {
        "malloc" => new MallocBdev(b.Name, b.BlockSize, b.SizeBytes / b.BlockSize),
        "null" => new NullBdev(b.Name, b.BlockSize, b.SizeBytes / b.BlockSize),
        "file" => FileBdev.Open(b.Name, b.Path!, b.BlockSize, b.SizeBytes == 0 ? null : b.SizeBytes, b.Direct, LoggerFactory.CreateLogger("bdev")),
        _ => throw new ConfigException("Bdevs", $"unknown type {b.Type}"),
    };

    public Bdev GetBdev(string name) => _bdevs[name];

    /// <summary>Starts reactors, then listeners. Returns the bound TCP endpoints.</summary>
    public void Start()
    {
        if (_started) throw new InvalidOperationException("node already started");
        _started = true;
        if (!Shim.IsAvailable) _log.LogWarning("native shim unavailable: {Reason}", Shim.UnavailableReason);
        foreach (Reactor r in _reactors) r.Start();
        Target.Start();
        var eps = new List<IPEndPoint>();
        foreach (ListenerConfig l in Config.Listeners)
            eps.Add(Tcp.Listen(new IPEndPoint(l.Address, l.Port), l.PortId, l.AdvertiseAddress));
        TcpEndpoints = eps;
        _log.LogInformation("node {Name} up: {Reactors} reactor(s), poll mode {Mode}, {Subsystems} subsystem(s), pools {Pools} MiB per reactor",
            Config.Name, _reactors.Count, Config.PollMode.ToString().ToLowerInvariant(), Config.Subsystems.Count,
            _reactors.Count > 0 ? _reactors[0].Pools.TotalBytes >> 20 : 0);
    }

    public void Dispose()
    {
        Tcp?.Dispose();
        Target?.Dispose();
        // Give reactors a moment to run the posted disconnects before they stop.
        if (_started) Thread.Sleep(50);
        foreach (Reactor r in _reactors) r.Stop();
        foreach (Subsystem s in Target?.Subsystems ?? [])
            foreach (Namespace ns in s.Namespaces) ns.CloseChannels();
        foreach (Reactor r in _reactors) r.Dispose();
        foreach (Bdev b in _bdevs.Values) b.Dispose();
        _bdevs.Clear();
    }
}
