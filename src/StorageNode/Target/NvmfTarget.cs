using System.Diagnostics;
using Microsoft.Extensions.Logging;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;

namespace StorageNode.Target;

/// <summary>Protocol limits of the target, shared by every transport.</summary>
public sealed record TargetOptions
{
    public int MaxQueueDepth { get; init; } = 128;
    public int AdminQueueDepth { get; init; } = 128; // as SPDK's TCP and RDMA transports (max_aq_depth)
    public int MaxIoQueues { get; init; } = 16;
    /// <summary>Largest data transfer of one command (MDTS); a power of two, at least 4096.</summary>
    public uint MaxIoSize { get; init; } = 1024 * 1024;
    /// <summary>In-capsule data accepted on I/O queues (IOCCSZ = 4 + this / 16).</summary>
    public uint InCapsuleDataSize { get; init; } = 8192;
    /// <summary>In-capsule data accepted on the admin queue (Connect data is 1024 bytes).</summary>
    public uint AdminInCapsuleDataSize { get; init; } = 8192;
    /// <summary>Keep-alive granularity (KAS) in milliseconds; a multiple of 100.</summary>
    public uint KeepAliveGranularityMs { get; init; } = 1000;
    /// <summary>
    /// Connections (queue pairs) the node keeps open at once, over every transport and listener (the interconnect's
    /// included); one more is closed (NVMe/RDMA: rejected) at once (<see cref="ConnectionLimit"/>).
    /// </summary>
    public int MaxConnections { get; init; } = 1024;

    public byte Mdts => (byte)System.Numerics.BitOperations.Log2(MaxIoSize / 4096);
}

/// <summary>A listener as the discovery log advertises it.</summary>
/// <remarks><see cref="RdmaAckTimeout"/>: NVMe/RDMA listeners, the local ACK timeout exponent of accepted QPs (0: rdma_cm's default).</remarks>
public sealed record ListenerInfo(INvmfTransport Transport, string Address, int Port, ushort PortId, ListenerRole Role = ListenerRole.Combined,
    int RdmaAckTimeout = 0)
{
    public byte TrType => Transport.TrType;
    public byte AdrFam => Address.Contains(':') ? Nvme.Spec.Discovery.AdrFamIpv6 : Nvme.Spec.Discovery.AdrFamIpv4;
}

/// <summary>
/// The node's NVMe-oF target: its subsystems (the discovery subsystem included), reactors and listeners.
/// Transports hand it queue pairs; the command handlers look subsystems up here.
/// </summary>
public sealed class NvmfTarget : IDisposable
{
    private readonly Dictionary<string, Subsystem> _subsystems = new(StringComparer.Ordinal);
    private readonly List<ListenerInfo> _listeners = [];
    private readonly object _lock = new();
    private Timer? _watchdog;
    private ulong _discoveryGeneration = 1;

    public TargetOptions Options { get; }
    /// <summary>The node's open connections against <see cref="TargetOptions.MaxConnections"/> (every transport).</summary>
    public ConnectionLimit Connections { get; }
    /// <summary>The HA pair's fence against stale writes on the namespaces this node owns (null on a standalone node).</summary>
    public IIoGate? IoGate { get; set; }
    /// <summary>The pair's side of the interconnect listener (null on a standalone node).</summary>
    public IInterconnectHandler? Interconnect { get; set; }
    public IReadOnlyList<Reactor> Reactors { get; }
    public ILogger Log { get; }
    public ILoggerFactory LoggerFactory { get; }
    public string NodeName { get; }
    public DateTime StartedUtc { get; } = DateTime.UtcNow;
    /// <summary>CQT advertised in Identify Controller (ms): how long a host should wait before retrying on another path.</summary>
    public ushort CommandQuiesceTimeMs { get; set; }

    /// <summary>
    /// Test hook: the reactor index for a connection accepted on a listener (null: round-robin, the default). Tests
    /// that stall one reactor use it to know what lives there.
    /// </summary>
    public Func<ListenerInfo, int?>? PlaceConnection { get; set; }

    /// <summary>The reactor a new connection on <paramref name="listener"/> goes to: the next one round-robin, unless <see cref="PlaceConnection"/> says.</summary>
    internal Reactor ReactorFor(ListenerInfo listener, ref int roundRobin)
    {
        if (PlaceConnection?.Invoke(listener) is int pinned && (uint)pinned < (uint)Reactors.Count) return Reactors[pinned];
        return Reactors[(int)((uint)Interlocked.Increment(ref roundRobin) % (uint)Reactors.Count)];
    }

    public NvmfTarget(string nodeName, TargetOptions options, IReadOnlyList<Reactor> reactors, ILoggerFactory loggerFactory)
    {
        NodeName = nodeName;
        Options = options;
        Reactors = reactors;
        LoggerFactory = loggerFactory;
        Log = loggerFactory.CreateLogger("target");
        Connections = new ConnectionLimit(options.MaxConnections, Log);
        AddSubsystem(new Subsystem(WellKnownNqn.Discovery, SubsystemKind.Discovery, "", "StorageNode discovery", "",
            1, 0xFFEF, 0, allowAnyHost: true));
    }

    public void AddSubsystem(Subsystem s)
    {
        lock (_lock)
        {
            if (!_subsystems.TryAdd(s.Nqn, s)) throw new InvalidOperationException($"subsystem {s.Nqn} already exists");
            _discoveryGeneration++;
        }
        foreach (Namespace ns in s.Namespaces) ns.OpenChannels(Reactors);
    }

    /// <summary>
    /// Adds a namespace to a running subsystem (opens its per-reactor channels first); the hosts' controllers are told
    /// (Changed Namespace List, Namespace Attribute Changed).
    /// </summary>
    public void AddNamespace(Subsystem s, Namespace ns)
    {
        ns.OpenChannels(Reactors);
        try
        {
            s.AddNamespace(ns);
        }
        catch
        {
            ns.CloseChannelsOnTheirReactors(Reactors); // the reactors are running: each closes its own
            throw;
        }
        Log.LogInformation("{Nqn}: namespace {Nsid} added (bdev {Bdev}, {Blocks} blocks of {BlockSize} bytes)", s.Nqn, ns.Nsid, ns.Bdev.Name, ns.Bdev.BlockCount, ns.Bdev.BlockSize);
        s.NotifyNamespaceChanged(ns.Nsid);
    }

    /// <summary>
    /// Takes a namespace out of a running subsystem: hosts no longer find it (new commands get Invalid Namespace or
    /// Format; commands that had arrived but not reached the bdev fail the same way), the hosts' controllers are told,
    /// and <paramref name="drained"/> runs (on some reactor) once every command that had reached the bdev has finished
    /// and the namespace's channels are closed. Null when the subsystem has no such namespace.
    /// </summary>
    public Namespace? RemoveNamespace(Subsystem s, uint nsid, Action drained)
    {
        Namespace? ns = s.RemoveNamespace(nsid);
        if (ns == null) return null;
        ns.Removed = true;
        // The lock's message reaches every reactor after the two writes above, so whatever runs there afterwards sees
        // them; it is granted once the commands counted before it on each reactor have finished. It is never released.
        ns.Locks.Lock(0, ulong.MaxValue, () =>
        {
            ns.CloseChannelsOnTheirReactors(Reactors);
            drained();
        });
        Log.LogInformation("{Nqn}: namespace {Nsid} removed (bdev {Bdev})", s.Nqn, nsid, ns.Bdev.Name);
        s.NotifyNamespaceChanged(nsid);
        return ns;
    }

    /// <summary>
    /// A takeover (docs/ha.md): <paramref name="ns"/> — the partner's namespace <paramref name="keeper"/> served from this
    /// node's replica of it — takes its place at once, on the replica's own channels (nothing that ran on them is closed
    /// under it). The namespace replaced is marked removed, so a copy of the partner's that had arrived before the takeover
    /// never lands on the data now served; a relay that had reached the partner's channel finishes there (a partner that
    /// is gone fails it with a path status the host retries), and those channels close once the commands counted on them
    /// have finished. The hosts see the same namespace (no Changed Namespace List).
    /// </summary>
    public void ServeFromReplica(Subsystem s, Namespace keeper, Namespace ns)
    {
        ns.TakeReplicaChannelsOf(keeper, Reactors);
        keeper.Removed = true;
        Namespace? old = s.ReplaceNamespace(ns);
        if (old != keeper) throw new InvalidOperationException($"{s.Nqn}: NSID {ns.Nsid} changed while it was taken over");
        // Granted once the commands counted before it on each reactor have finished; never released.
        keeper.Locks.Lock(0, ulong.MaxValue, () => keeper.CloseChannelsOnTheirReactors(Reactors));
        Log.LogInformation("{Nqn}: namespace {Nsid} is served from replica bdev {Bdev}", s.Nqn, ns.Nsid, ns.Bdev.Name);
    }

    /// <summary>
    /// The reverse of <see cref="ServeFromReplica"/>: the partner took the group of <paramref name="owned"/> over, and
    /// <paramref name="keeper"/> — the namespace relayed to the partner, keeping this node's data as its replica — takes
    /// its place at once. A command that was running on <paramref name="owned"/> finishes on its bdev (now the replica)
    /// before the replica takes the partner's words; one that reaches it later fails with ANA Inaccessible (the host retries
    /// it on the owner). <paramref name="drained"/> runs (on some reactor) once those have finished, instead of making the
    /// replica ready to take words (it does, when it is). The hosts see the same namespace (no Changed Namespace List).
    /// </summary>
    public void KeepAsReplica(Subsystem s, Namespace owned, Namespace keeper, Action? drained = null)
    {
        keeper.KeepChannelsOf(owned, Reactors);
        keeper.ReplicaKnowledge.Ready = false;
        owned.MovedAway = true;
        Namespace? old = s.ReplaceNamespace(keeper);
        if (old != owned) throw new InvalidOperationException($"{s.Nqn}: NSID {keeper.Nsid} changed while its group changed owner");
        // The replica takes the partner's words (and so its copies) once every command that was running on the namespace
        // replaced has finished: none of them lands after a resync's copy. Those parked meanwhile fail (moved away).
        owned.Locks.Lock(0, ulong.MaxValue, () =>
        {
            owned.Locks.Unlock();
            if (drained != null) drained(); // which makes the replica ready when it is
            else keeper.ReplicaKnowledge.Ready = true;
        });
        Log.LogInformation("{Nqn}: namespace {Nsid} is relayed to the partner; bdev {Bdev} keeps its replica", s.Nqn, keeper.Nsid, owned.Bdev.Name);
    }

    public Subsystem? FindSubsystem(string nqn)
    {
        lock (_lock) return _subsystems.TryGetValue(nqn, out Subsystem? s) ? s : null;
    }

    public IReadOnlyList<Subsystem> Subsystems
    {
        get { lock (_lock) return [.. _subsystems.Values]; }
    }

    public void AddListener(ListenerInfo l)
    {
        lock (_lock)
        {
            _listeners.Add(l);
            _discoveryGeneration++;
        }
    }

    public IReadOnlyList<ListenerInfo> Listeners
    {
        get { lock (_lock) return [.. _listeners]; }
    }

    public ulong DiscoveryGeneration
    {
        get { lock (_lock) return _discoveryGeneration; }
    }

    /// <summary>
    /// What the discovery log shows changed for one host (its access to a subsystem), or for every host (null): the
    /// generation counter moves, and that host's discovery controllers get a Discovery Log Page Change notice (as Linux
    /// nvmet and SPDK's target send when a host is allowed or removed).
    /// </summary>
    public void NotifyDiscoveryChanged(string? hostNqn)
    {
        lock (_lock) _discoveryGeneration++;
        if (FindSubsystem(WellKnownNqn.Discovery) is not Subsystem discovery) return;
        foreach (Controller c in discovery.Controllers)
            if (hostNqn == null || c.HostNqn == hostNqn)
                c.RaiseAsyncEvent(AsyncEvent.TypeNotice, AsyncEvent.NoticeDiscoveryLogChange, LogPageId.Discovery, AsyncEvent.ConfigDiscoveryLogChange);
    }

    /// <summary>Starts the keep-alive watchdog (control plane timer; tears down silent hosts' controllers).</summary>
    public void Start()
    {
        _watchdog = new Timer(_ => CheckKeepAlive(), null, 200, 200);
    }

    private void CheckKeepAlive()
    {
        long now = Stopwatch.GetTimestamp();
        foreach (Subsystem s in Subsystems)
        {
            foreach (Controller c in s.Controllers)
            {
                if (c.KeepAliveExpired(now))
                {
                    Log.LogWarning("{Ctrl}: keep-alive timeout ({Kato} ms) expired; tearing the controller down", c, c.KatoMs);
                    c.Destroy("keep-alive timeout");
                }
            }
        }
    }

    /// <summary>
    /// Raised (on a reactor thread, before the Connect completes; handlers must not block) when a host's admin queue
    /// connected. Not raised for the partner's interconnect associations.
    /// </summary>
    public event Action<Controller>? ControllerCreated;

    /// <summary>Raised (any thread; handlers must not block) when a host's association ended.</summary>
    public event Action<Controller>? ControllerDestroyed;

    internal void OnControllerCreated(Controller c)
    {
        if (c.IsInterconnect) Interconnect?.OnAssociationCreated(c);
        else ControllerCreated?.Invoke(c);
    }

    internal void OnControllerDestroyed(Controller c, string reason)
    {
        Log.LogInformation("{Ctrl}: controller destroyed ({Reason})", c, reason);
        if (c.IsInterconnect) Interconnect?.OnAssociationEnded(c);
        else ControllerDestroyed?.Invoke(c);
    }

    public void Dispose()
    {
        _watchdog?.Dispose();
        foreach (Subsystem s in Subsystems)
        {
            foreach (Controller c in s.Controllers) c.Destroy("node stopping");
        }
    }
}
