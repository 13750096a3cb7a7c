using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace StorageNode.Target;

/// <summary>
/// One way commands of a host reach the namespaces this node owns: a direct association (one controller), or
/// the partner's relay. Counts the commands received on it and not yet completed.
/// </summary>
public sealed class GatePath(long id, string description)
{
    private static long _nextId;

    public static long NewId() => Interlocked.Increment(ref _nextId);

    public long Id { get; } = id;
    public string Description { get; } = description;
    internal int Outstanding;

    public int OutstandingCount => Volatile.Read(ref Outstanding);
}

/// <summary>Owner-side state of one host (host NQN + host ID): which path is active, what is held.</summary>
public sealed class HostState
{
    internal readonly object Lock = new();
    internal readonly List<NvmfRequest> Held = [];
    internal long ActivePath;
    internal int Switching;
    /// <summary>While switching: the path being drained.</summary>
    internal long SwitchFrom;
    /// <summary>The partner opened the relay while a switch elsewhere was running: switch to it right after.</summary>
    internal bool RelayOpenPending;

    public string HostNqn { get; }
    public Guid HostId { get; }
    /// <summary>The partner's relay for this host.</summary>
    public GatePath Relay { get; }
    public long Switches;

    internal HostState(string hostNqn, Guid hostId)
    {
        HostNqn = hostNqn;
        HostId = hostId;
        Relay = new GatePath(HostGate.RelayPathId, "relay");
    }

    public long ActivePathId => Volatile.Read(ref ActivePath);

    /// <summary>The partner's current registration of this host (relayed commands arrive under its handle).</summary>
    public volatile RelayBinding? CurrentRelayBinding;

    public override string ToString() => $"{HostNqn} ({HostId})";
}

/// <summary>What the gate needs from the cluster to fence the partner's relay (null on a standalone node).</summary>
public interface IRelayFence
{
    /// <summary>
    /// Asks the partner to drop this host's relayed commands whose host connection is gone and to report how
    /// many of its commands it has relayed to us. Null when the partner cannot be asked: the implementation has
    /// then cut the inbound relay connections, so nothing more can arrive.
    /// </summary>
    Task<long?> DrainRelayAsync(HostState host);

    /// <summary>Incremented whenever an inbound relay connection closes (what was in flight on it is gone).</summary>
    long InboundRelayEpoch { get; }

    /// <summary>How long a relayed command may live; a relayed command older than this is never started.</summary>
    TimeSpan RelayTimeout { get; }
}

/// <summary>
/// The owner-side guarantee against stale writes (docs/ha.md): a host's commands to the namespaces this node
/// owns run through one path at a time. When a command arrives on another path, commands on the new path are
/// held until every command of the old path has completed — for the relay, until the partner confirms that
/// all it relayed has arrived (or can no longer arrive) — and only then do they execute.
/// </summary>
public sealed class HostGate(NvmfTarget target)
{
    public const long RelayPathId = -1;

    private readonly ConcurrentDictionary<(string, Guid), HostState> _hosts = new();
    private readonly ILogger _log = target.LoggerFactory.CreateLogger("gate");

    public IRelayFence? Fence { get; set; }

    /// <summary>Upper bound on waiting for a path to drain; past it the switch proceeds and says so.</summary>
    public TimeSpan DrainLimit { get; set; } = TimeSpan.FromSeconds(30);

    public HostState Get(string hostNqn, Guid hostId) => _hosts.GetOrAdd((hostNqn, hostId), k => new HostState(k.Item1, k.Item2));

    public IReadOnlyCollection<HostState> Hosts => [.. _hosts.Values];

    /// <summary>Counts a command against its path when it arrives (before any data moves). Reactor thread.</summary>
    internal static void Count(NvmfRequest req, HostState host, GatePath path)
    {
        req.GateHost = host;
        req.GateCounted = true;
        req.GatePathRef = path;
        Interlocked.Increment(ref path.Outstanding);
    }

    /// <summary>The command completed (or is being held): it no longer counts against its path.</summary>
    internal static void Done(NvmfRequest req)
    {
        if (!req.GateCounted) return;
        req.GateCounted = false;
        Interlocked.Decrement(ref req.GatePathRef!.Outstanding);
    }

    /// <summary>
    /// True when the command may execute now; false when it was held (the gate executes it later on its reactor).
    /// </summary>
    internal bool Admit(NvmfRequest req)
    {
        HostState? h = req.GateHost;
        if (h == null) return true;
        // The count taken at arrival (a full fence) precedes this read; a switch publishes Switching before it
        // reads the counts. So either this command sees the switch, or the switch sees this command.
        if (Volatile.Read(ref h.Switching) == 0 && Volatile.Read(ref h.ActivePath) == req.GatePathRef!.Id) return true;
        return AdmitSlow(req, h);
    }

    // Kept apart from Admit: a lambda here makes the compiler allocate its closure on every call.
    private bool AdmitSlow(NvmfRequest req, HostState h)
    {
        long path = req.GatePathRef!.Id;
        lock (h.Lock)
        {
            if (h.Switching == 0 && (h.ActivePath == path || h.ActivePath == 0))
            {
                Volatile.Write(ref h.ActivePath, path);
                return true;
            }
            // Relayed commands arriving while the relay is being drained are the old copies the drain waits
            // for (the partner sends nothing new before a new relay open): they run now, before the new path.
            if (h.Switching != 0 && path == RelayPathId && h.SwitchFrom == RelayPathId) return true;
            Done(req);
            req.PendingOps = 1; // the slot stays allocated even if its connection closes while held
            h.Held.Add(req);
            if (h.Switching == 0)
            {
                h.SwitchFrom = h.ActivePath;
                Interlocked.Exchange(ref h.Switching, 1);
                GatePath from = h.ActivePath == RelayPathId ? h.Relay : FindDirectPath(h.ActivePath);
                StartSwitch(h, from, req.GatePathRef);
            }
            return false;
        }
    }

    private void StartSwitch(HostState h, GatePath from, GatePath to) => _ = Task.Run(() => SwitchAsync(h, from, to));

    private readonly ConcurrentDictionary<long, GatePath> _directPaths = new();

    /// <summary>Registers a controller's path so a switch away from it can wait for it to drain.</summary>
    public void RegisterPath(GatePath p) => _directPaths[p.Id] = p;

    private GatePath FindDirectPath(long id) => _directPaths.TryGetValue(id, out GatePath? p) ? p : new GatePath(id, "gone");

    /// <summary>
    /// The partner is about to relay this host's commands. From now on the relay is the host's active path, so a
    /// direct command that arrives later first fences the relay (the drain query) before it runs.
    /// </summary>
    public void OpenRelay(HostState h)
    {
        lock (h.Lock)
        {
            if (h.Switching != 0)
            {
                h.RelayOpenPending = true;
                return;
            }
            if (h.ActivePath == RelayPathId) return;
            if (h.ActivePath == 0)
            {
                Volatile.Write(ref h.ActivePath, RelayPathId);
                return;
            }
            h.SwitchFrom = h.ActivePath;
            Interlocked.Exchange(ref h.Switching, 1);
            StartSwitch(h, FindDirectPath(h.ActivePath), h.Relay);
        }
    }

    private async Task SwitchAsync(HostState h, GatePath from, GatePath to)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            if (from.Id == RelayPathId) await DrainRelayAsync(h, sw);
            else await WaitDrainedAsync(() => from.OutstandingCount == 0, sw, $"{from.Description} of {h}");
        }
        catch (Exception e)
        {
            _log.LogError(e, "path switch for {Host}: barrier failed", h);
        }
        List<NvmfRequest> release;
        bool chainToRelay;
        lock (h.Lock)
        {
            Volatile.Write(ref h.ActivePath, to.Id);
            release = [.. h.Held];
            h.Held.Clear();
            h.Switches++;
            chainToRelay = h.RelayOpenPending && to.Id != RelayPathId;
            h.RelayOpenPending = false;
            if (chainToRelay) h.SwitchFrom = to.Id;
            else Interlocked.Exchange(ref h.Switching, 0);
        }
        _log.LogInformation("{Host}: commands now run through {To} (was {From}); barrier took {Ms:0.0} ms, {Held} command(s) held",
            h, to.Description, from.Description, sw.Elapsed.TotalMilliseconds, release.Count);
        foreach (NvmfRequest req in release)
        {
            NvmfRequest r = req;
            r.Qpair.Reactor.Post(() => IoCommands.Resume(r));
        }
        // The partner opened the relay meanwhile: what just ran must drain before relayed commands run.
        if (chainToRelay) await SwitchAsync(h, to, h.Relay);
    }

    private async Task DrainRelayAsync(HostState h, Stopwatch sw)
    {
        IRelayFence? fence = Fence;
        if (fence == null)
        {
            await WaitDrainedAsync(() => h.Relay.OutstandingCount == 0, sw, $"relay of {h}");
            return;
        }
        long epoch = fence.InboundRelayEpoch;
        RelayBinding? binding = h.CurrentRelayBinding;
        long? sent = await fence.DrainRelayAsync(h);
        long limit = sw.ElapsedTicks + (long)(fence.RelayTimeout.TotalSeconds * Stopwatch.Frequency);
        // Everything the partner relayed must have arrived — unless the relay connections closed (what was in
        // flight is gone) or the relay deadline passed (a late arrival would be refused).
        await WaitDrainedAsync(() =>
            (sent is not long s || binding == null || Volatile.Read(ref binding.Received) >= s
                || fence.InboundRelayEpoch != epoch || sw.ElapsedTicks > limit)
            && h.Relay.OutstandingCount == 0, sw, $"relay of {h}");
    }

    private async Task WaitDrainedAsync(Func<bool> drained, Stopwatch sw, string what)
    {
        while (!drained())
        {
            if (sw.Elapsed > DrainLimit)
            {
                _log.LogError("{What} did not drain within {Limit} s; switching anyway", what, DrainLimit.TotalSeconds);
                return;
            }
            await Task.Delay(1);
        }
    }
}
