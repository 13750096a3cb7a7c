using System.Diagnostics;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;
using StorageNode.Target;
using StorageNode.Transport.Rdma;

namespace StorageNode.Pair;

/// <summary>
/// This node's association into the partner's interconnect listener for one subsystem: an admin queue for control
/// (heartbeats, registrations, relay opens, drains; several commands may be outstanding) on the pair's control thread,
/// and one I/O queue per reactor (the proxy's <see cref="ProxyQueue"/>s), over NVMe/RDMA or NVMe/TCP.
/// </summary>
public sealed class InterconnectLink
{
    private readonly PairNode _pair;
    private readonly ILogger _log;
    private volatile NvmeHost? _host;
    private volatile ProxyQueue?[] _queues = [];
    private volatile InstallFailure? _installFailure;

    /// <summary>A reactor could not take its proxy queue of one connect's set (a set no longer current is no reason to go down).</summary>
    private sealed record InstallFailure(ProxyQueue?[] Set, string Why);
    private long _nextConnect;
    private string? _lastConnectError;
    private volatile bool _stallSends;
    private readonly System.Collections.Concurrent.ConcurrentQueue<SubmissionQueueEntry> _notices = new();
    private int _sendingNotices;

    public Subsystem Subsystem { get; }
    public bool IsUp { get; private set; }
    /// <summary>The partner's incarnation as of the last connect (a new one: it restarted, and its replicas are empty).</summary>
    public long PartnerIncarnation { get; private set; }
    public long ConnectCount { get; private set; }
    /// <summary>The proxy side of relay control for this subsystem.</summary>
    public RelayControl Relays { get; }
    /// <summary>"rdma" or "tcp" while up; null while down.</summary>
    public string? Transport { get; private set; }
    /// <summary>Why the last connect did not use RDMA (null when it did, or RDMA was not tried).</summary>
    public string? RdmaFallbackReason { get; private set; }
    /// <summary>Relayed commands submitted to the partner over this link (statistics).</summary>
    public long Relayed;
    /// <summary>Commands not relayed because they may have been sent before the owner's last drain of their host.</summary>
    public long DroppedBeforeFence;
    // Replaced whole (under _mirrorsLock) when a mirror comes or goes: the control thread and the status read it unlocked.
    private volatile NamespaceMirror[] _mirrors = [];
    private readonly object _mirrorsLock = new();

    /// <summary><c>Cluster:Mirror</c>: writes' copies share this link's queues with relayed commands.</summary>
    public bool MirrorEnabled => _pair.Config.Mirror;
    internal PairNode Pair => _pair;

    /// <summary>With <c>Cluster:Mirror</c>: the replicas on the partner of the namespaces this node owns.</summary>
    public IReadOnlyList<NamespaceMirror> Mirrors => _mirrors;

    /// <summary>
    /// Mirrors the writes of a namespace this node owns to its replica on the partner: at start, or when this node takes
    /// a group over (its mirror starts out of sync; the partner's replica is resynced once it keeps one again). Any thread.
    /// </summary>
    internal void AddMirror(Namespace ns)
    {
        var m = new NamespaceMirror(this, ns, _pair.Target.Reactors[0], _log);
        lock (_mirrorsLock) _mirrors = [.. _mirrors, m];
        ns.Mirror = m;
        // Once writes see the mirror (they mark what the replica misses): what the dirty-region record marks by now.
        m.TakeRecord();
    }

    /// <summary>
    /// This node no longer owns the mirror's namespace (the partner took its group over): the mirror goes, and the writes
    /// it held fail with <paramref name="status"/> (a path status the host retries on the group's owner).
    /// </summary>
    internal void RetireMirror(NamespaceMirror m, NvmeStatus status)
    {
        lock (_mirrorsLock) _mirrors = [.. _mirrors.Where(x => x != m)];
        m.Retire(status);
    }

    internal InterconnectLink(PairNode pair, Subsystem subsystem, ILogger log)
    {
        _pair = pair;
        _log = log;
        Subsystem = subsystem;
        Relays = new RelayControl(this, log);
    }

    /// <summary>The CNTLID the partner gave this node's association (0: none).</summary>
    public ushort AssociationCntlid => _host?.Cntlid ?? 0;

    /// <summary>Status for commands that cannot be relayed now (link down, or coming up).</summary>
    public NvmeStatus UnavailableStatus => NvmeStatus.Path(PathStatus.AnaInaccessible);

    /// <summary>How long a host has to show it still uses an association here once its relay opened (the gate's drain limit).</summary>
    internal TimeSpan ProofLimit => _pair.Gate.DrainLimit;

    /// <summary>How long a relayed command may live after it reached this node, in Stopwatch ticks.</summary>
    public long RelayTimeoutTicks => (long)(_pair.Config.RelayTimeout.TotalSeconds * Stopwatch.Frequency);

    internal PairClock Clock => _pair.Clock;
    internal PairWorkers Workers => _pair.Workers;
    internal IReadOnlyList<Reactor> Reactors => _pair.Target.Reactors;

    /// <summary>
    /// The lease the owner's heartbeats give the partner's trust in an in-sync replica (docs/ha.md, "The keeper's
    /// knowledge"): the heartbeat timeout, after which this node would take the link down anyway.
    /// </summary>
    internal long MirrorLeaseTicks => (long)(_pair.Config.HeartbeatTimeout.TotalSeconds * Stopwatch.Frequency);

    /// <summary>How long a write's copy may wait for the partner's answer before the link is taken down: the longer of the heartbeat and relay timeouts.</summary>
    internal long CopyTimeoutTicks => (long)(Math.Max(_pair.Config.HeartbeatTimeout.TotalSeconds, _pair.Config.RelayTimeout.TotalSeconds) * Stopwatch.Frequency);

    // The heartbeat's list of leases it renews (control thread only): room for 512 namespaces.
    private readonly byte[] _leases = new byte[4096];

    /// <summary>The pair's threads for words to the partner (replica states, reservation notices, drains): not behind relay opens.</summary>
    internal PairWorkers Notices => _pair.Notices;

    /// <summary>This node's association into the partner now (null while down): a word meant for one association is sent on no other.</summary>
    internal object? Association => _host;

    /// <summary>How many of the partner's descriptors this node learned (<see cref="PairNode.LearnOwnership"/>; under the pair's ownership lock).</summary>
    internal long DescriptorsLearned { get; set; }
    internal long Incarnation => _pair.Incarnation;

    public ProxyQueue? QueueFor(int reactorId)
    {
        ProxyQueue?[] q = _queues;
        return (uint)reactorId < (uint)q.Length ? q[reactorId] : null;
    }

    /// <summary>The installed proxy queues (a snapshot; for status and tests).</summary>
    public IReadOnlyList<ProxyQueue> ProxyQueues => [.. _queues.OfType<ProxyQueue>()];

    /// <summary>Test hook: while set, relayed commands queue up on this node instead of being sent.</summary>
    public bool StallSends
    {
        get => _stallSends;
        set
        {
            _stallSends = value;
            if (!value) WakeQueues();
        }
    }

    /// <summary>Commands waiting in the proxy queues' backlogs (approximate; for tests and status).</summary>
    public int QueuedRelays
    {
        get
        {
            int n = 0;
            foreach (ProxyQueue? q in _queues) if (q != null) n += q.Backlog;
            return n;
        }
    }

    /// <summary>Commands (relayed, or writes' copies) sent to the partner and not yet answered (approximate; for tests and status).</summary>
    public int InFlight
    {
        get
        {
            int n = 0;
            foreach (ProxyQueue? q in _queues) if (q != null) n += q.InFlight;
            return n;
        }
    }

    /// <summary>Marks every proxy queue for a flush (something they wait for changed).</summary>
    internal void WakeQueues()
    {
        foreach (ProxyQueue? q in _queues)
        {
            if (q == null) continue;
            ProxyQueue pq = q;
            pq.Reactor.Post(() => pq.Wake());
        }
    }

    /// <summary>Counters of the NVMe/RDMA proxy queues (zeros over NVMe/TCP): how relayed data moved on this node.</summary>
    public InterconnectCounters Counters
    {
        get
        {
            var c = new InterconnectCounters();
            foreach (ProxyQueue? q in _queues)
            {
                if (q?.Queue is not RdmaHostQueue r) continue;
                c.ZeroCopyBytes += r.ZeroCopyBytes;
                c.InCapsuleBytes += r.InCapsuleBytes;
                c.BounceCopies += r.BounceCopies;
                c.TemporaryRegistrations += r.TemporaryRegistrations;
                c.Doorbells += r.Doorbells;
            }
            c.Relayed = Relayed;
            return c;
        }
    }

    // ------------------------------------------------------------------ life (control thread)

    internal void Tick(long now)
    {
        if (IsUp)
        {
            NvmeHost? host = _host;
            if (host == null || host.AdminBroken) { Down($"interconnect admin queue failed{(host?.TimeoutReason is { } t ? $" ({t})" : "")}"); return; }
            if (_installFailure is { } failed && ReferenceEquals(failed.Set, _queues)) { Down(failed.Why); return; }
            long copyLimit = CopyTimeoutTicks;
            foreach (ProxyQueue? q in _queues)
            {
                // A reactor that has not taken its queue yet (stalled) is no reason to take the link down.
                if (q is { IsClosed: true }) { Down($"interconnect I/O queue closed ({q.LastCloseReason})"); return; }
                // A write's copy the partner never answers (a stalled reactor there, its admin path healthy) would hold the
                // write for good: past the limit the link goes down, the copies fail, and the replica goes out of sync.
                if (q != null && q.OldestCopyAgeTicks(now) > copyLimit)
                {
                    Down($"a write's copy got no answer from the partner within {copyLimit * 1000 / Stopwatch.Frequency} ms");
                    return;
                }
            }
            try
            {
                Heartbeat(host);
            }
            catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
            {
                Down($"interconnect heartbeat failed: {e.Message}");
                MirrorsTick(now);
                return;
            }
            MirrorsTick(now);
            return;
        }
        MirrorsTick(now);
        if (now < _nextConnect) return;
        // A silent partner (dead on both channels) is tried less often.
        int factor = _pair.Status == PartnerStatus.PartnerDown ? 10 : 1;
        _nextConnect = now + (long)(_pair.Config.ReconnectInterval.TotalSeconds * Stopwatch.Frequency * factor);
        TryConnect();
    }

    /// <summary>The mirrors' own work, every heartbeat interval, link up or down (<see cref="NamespaceMirror.Tick"/>).</summary>
    internal void MirrorsTick(long now)
    {
        foreach (NamespaceMirror m in _mirrors) m.Tick(now);
    }

    private void Heartbeat(NvmeHost host)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = InterconnectOpcode.Heartbeat;
        // The replicas of this node's the partner may take for whole: the heartbeat renews each one's "in sync" word (by
        // its sequence number) until the send time plus the lease, on the partner's clock (earlier by the estimate's
        // uncertainty). Each mirror notes the send time before it is sent: from then on the partner may hold it.
        int renewed = 0;
        long sent = Stopwatch.GetTimestamp();
        NamespaceMirror[] mirrors = _mirrors;
        if (mirrors.Length > 0 && _pair.Clock.TryToPartner(sent + MirrorLeaseTicks, out OwnerDeadline until))
        {
            foreach (NamespaceMirror m in mirrors)
            {
                if (renewed * MirrorLease.EntryBytes >= _leases.Length) break;
                uint sequence = m.RenewLease(sent);
                if (sequence == 0) continue;
                MirrorLease.WriteEntry(_leases.AsSpan(renewed * MirrorLease.EntryBytes), m.Nsid, sequence);
                renewed++;
            }
            if (renewed > 0)
            {
                sqe.Opcode = InterconnectOpcode.HeartbeatRenewing;
                MirrorLease.Set(ref sqe, until);
            }
        }
        long t0 = _pair.Clock.WireNow;
        CompletionQueueEntry cqe = renewed > 0
            ? host.AdminCommand(sqe, _leases.AsSpan(0, renewed * MirrorLease.EntryBytes), DataDirection.HostToController, _pair.Config.HeartbeatTimeout)
            : host.AdminCommand(sqe, default, DataDirection.None, _pair.Config.HeartbeatTimeout);
        long t1 = _pair.Clock.WireNow;
        NvmeHost.Check("interconnect heartbeat", cqe);
        _pair.Clock.Sample(t0, cqe.Dw0 | ((long)cqe.Dw1 << 32), t1);
        Volatile.Write(ref _lastHeartbeatSent, sent);
    }

    private long _lastHeartbeatSent;

    // The partner's side (its associations into this node): when it last asked something whose answer makes it hear this
    // node (a heartbeat, this node's descriptor), and the associations made until when refuse those from now on.
    private long _partnerHeard, _refuseMadeUntil;

    /// <summary>
    /// When (Stopwatch ticks, 0: never) the partner last sent, on any of its associations into this node (ended ones
    /// too), a heartbeat or a descriptor request: what the takeover counts as the partner answering there, and — answered —
    /// the last time it heard this node (its self-fence counts from it; NVMe Keep Alive, which its host sends on a timer
    /// of its own, does not count).
    /// </summary>
    internal long PartnerHeardTicks => Volatile.Read(ref _partnerHeard);

    /// <summary>
    /// Notes that the partner asked, on an association made at <paramref name="madeTicks"/>, something whose answer makes
    /// it hear this node; true when it must be refused instead (<see cref="RefusePartnerAssociations"/>). With the full
    /// fence between, either this sees the refusal or that caller sees this note.
    /// </summary>
    internal bool NotePartnerHeard(long madeTicks)
    {
        long now = Stopwatch.GetTimestamp(), seen = Volatile.Read(ref _partnerHeard);
        while (now > seen)
        {
            long was = Interlocked.CompareExchange(ref _partnerHeard, now, seen);
            if (was == seen) break;
            seen = was;
        }
        Interlocked.MemoryBarrier();
        return madeTicks <= Volatile.Read(ref _refuseMadeUntil);
    }

    /// <summary>
    /// A takeover of one of the partner's groups: the partner's associations made until now (<c>MadeUntil</c>, Stopwatch
    /// ticks) answer no heartbeat and no descriptor request from now on (they are closed; it reconnects and learns the new
    /// term). <c>Heard</c>: <see cref="PartnerHeardTicks"/> read after a full fence — every request of the partner's
    /// answered, now or later, is counted in it.
    /// </summary>
    internal (long MadeUntil, long Heard) RefusePartnerAssociations()
    {
        long madeUntil = Stopwatch.GetTimestamp();
        Interlocked.Exchange(ref _refuseMadeUntil, madeUntil);
        return (madeUntil, Volatile.Read(ref _partnerHeard));
    }

    /// <summary>
    /// When (Stopwatch ticks, this node's clock) the last interconnect heartbeat the partner answered was sent (0: none):
    /// the partner heard this node then. The self-fence reads it, on a thread of its own, rather than <see cref="IsUp"/>,
    /// which the control thread changes only once a heartbeat has timed out.
    /// </summary>
    public long LastHeartbeatAnsweredTicks => Volatile.Read(ref _lastHeartbeatSent);

    private void TryConnect()
    {
        ClusterConfig cfg = _pair.Config;
        RdmaTransport? rdma = _pair.Rdma;
        if (rdma != null)
        {
            try
            {
                if (Connect(HostTransport.Rdma, rdma)) RdmaFallbackReason = null;
                return;
            }
            catch (Exception e) when (IsConnectFailure(e) || e is StorageNode.Rdma.RdmaException or NvmeRdmaRejectedException)
            {
                if (cfg.InterconnectTransport == InterconnectTransport.Rdma)
                {
                    if (_lastConnectError != e.Message)
                        _log.LogWarning("{Nqn}: cannot reach partner {Partner} at {Ep} over NVMe/RDMA: {Error}", Subsystem.Nqn, cfg.Partner, cfg.PartnerInterconnect, e.Message);
                    _lastConnectError = e.Message;
                    return;
                }
                RdmaFallbackReason = e.Message;
            }
        }
        try
        {
            Connect(HostTransport.Tcp, null);
        }
        catch (Exception e) when (IsConnectFailure(e))
        {
            string why = RdmaFallbackReason != null ? $"{e.Message} (NVMe/RDMA: {RdmaFallbackReason})" : e.Message;
            if (_lastConnectError != why)
                _log.LogWarning("{Nqn}: cannot reach partner {Partner} at {Ep}: {Error}", Subsystem.Nqn, cfg.Partner, cfg.PartnerInterconnect, why);
            _lastConnectError = why;
        }
    }

    private static bool IsConnectFailure(Exception e) => e is NvmeTransportException or TimeoutException or NvmeCommandException or SocketException
        or InvalidOperationException or System.Text.Json.JsonException;

    /// <summary>Connects the association over one transport; false when the partner's configuration disagrees. Throws on failure.</summary>
    private bool Connect(HostTransport transport, RdmaTransport? rdma)
    {
        ClusterConfig cfg = _pair.Config;
        IReadOnlyList<Reactor> reactors = _pair.Target.Reactors;
        NvmeHost? host = null;
        IReadOnlyList<IoQueue>? detached = null;
        bool handedOver = false;
        try
        {
            host = NvmeHost.Connect(cfg.PartnerInterconnect, Subsystem.Nqn, new NvmeHostOptions
            {
                Transport = transport,
                RdmaProtectionDomainFor = rdma == null ? null : rdma.InterconnectPd,
                RdmaReactorQueues = true,
                RdmaAckTimeout = cfg.RdmaAckTimeout,
                HostNqn = PairNode.IdentityNqn(cfg.Name, cfg.LocalNode),
                HostId = PairNode.IdentityId(cfg.Name, cfg.LocalNode),
                IoQueues = reactors.Count,
                IoQueueDepth = _pair.Target.Options.MaxQueueDepth,
                KatoMs = (uint)Math.Max(1000, cfg.HeartbeatTimeout.TotalMilliseconds * 4),
                SendKeepAlive = true,
                CommandTimeout = cfg.HeartbeatTimeout,
                ConnectTimeout = cfg.HeartbeatTimeout,
                InCapsuleDataSize = _pair.Target.Options.InCapsuleDataSize,
            });
            if (host.IoQueues.Count != reactors.Count)
                throw new InvalidOperationException($"partner granted {host.IoQueues.Count} interconnect I/O queues, {reactors.Count} needed");

            // Both nodes must present one subsystem image.
            ClusterDescriptor mine = _pair.DescriptorFor(Subsystem);
            var buf = new byte[65536];
            SubmissionQueueEntry sqe = default;
            sqe.Opcode = InterconnectOpcode.GetDescriptor;
            sqe.Cdw10 = (uint)(buf.Length / 4 - 1) << 16;
            long asked = Stopwatch.GetTimestamp();
            CompletionQueueEntry cqe = host.AdminCommand(sqe, buf, DataDirection.ControllerToHost);
            NvmeHost.Check("interconnect descriptor", cqe);
            // The partner heard this node then (as a heartbeat answered does): a group learned from its descriptor is
            // not fenced for lack of one before the first heartbeat goes.
            Volatile.Write(ref _lastHeartbeatSent, asked);
            ClusterDescriptor theirs = ClusterDescriptor.FromJson(buf.AsSpan(0, (int)Math.Min(cqe.Dw0, (uint)buf.Length)));
            string? problem = mine.Disagreement(theirs);
            if (problem != null)
            {
                host.Dispose();
                host = null;
                _pair.Refuse(problem);
                return false;
            }
            _pair.Membership.NoteIncarnation(theirs.Incarnation);
            PartnerIncarnation = theirs.Incarnation;
            // Who owns each group now (a takeover while this node was away): learned before anything is served or relayed.
            _pair.LearnOwnership(Subsystem, theirs);

            _host = host;
            Heartbeat(host);
            IReadOnlyList<IoQueue> ioQueues = detached = host.DetachIoQueues();
            string zeroCopy = InstallQueues(ioQueues, rdma);
            handedOver = true; // the reactors take (or close) them from here
            Relays.RegisterAll(host.Cntlid);
            IsUp = true;
            // The partner answers Get Features Reservation Persistence for the namespaces this node owns from what it was told.
            foreach (Namespace ns in Subsystem.Namespaces)
                if (!ns.IsRemote && _pair.MayServe(Subsystem, ns.AnaGroupId)) SendReservationNotice(Guid.Empty, ns.Nsid, 0, ns.Reservations.Ptpl);
            ConnectCount++;
            _lastConnectError = null;
            Transport = transport == HostTransport.Rdma ? "rdma" : "tcp";
            if (transport == HostTransport.Rdma)
                _log.LogInformation("{Nqn}: interconnect to {Partner} up over NVMe/RDMA ({Queues} proxy queue(s); {ZeroCopy}; {Timeouts})", Subsystem.Nqn, cfg.Partner,
                    reactors.Count, zeroCopy, DescribeTimeouts(ioQueues));
            else
                _log.LogInformation("{Nqn}: interconnect to {Partner} up over NVMe/TCP ({Queues} proxy queue(s); {Why})", Subsystem.Nqn, cfg.Partner, reactors.Count,
                    RdmaFallbackReason != null ? $"NVMe/RDMA failed: {RdmaFallbackReason}" : cfg.InterconnectTransport == InterconnectTransport.Tcp ? "configured" : "no RDMA on this node");
            (long offset, long unc) = _pair.Clock.PartnerEstimate;
            _log.LogInformation("{Nqn}: partner {Partner}'s clock reads {Offset:+0.000000;-0.000000} s from this node's (within {Uncertainty} us)",
                Subsystem.Nqn, cfg.Partner, offset / 100_000.0, unc * 10);
            Subsystem.SetPartnerAccess(PartnerAccess.Available);
            return true;
        }
        catch
        {
            _host = null;
            ProxyQueue?[] queues = _queues;
            _queues = [];
            CloseQueues(reactors, queues, "connect failed");
            // Detached from the host and never handed to the reactors (registering the pools failed): nobody else closes them.
            if (detached != null && !handedOver)
                foreach (IoQueue q in detached) q.Transport.Dispose();
            host?.Dispose();
            throw;
        }
    }

    /// <summary>The first RDMA proxy queue's QP timeouts as the device reports them (for the log).</summary>
    private static string DescribeTimeouts(IReadOnlyList<IoQueue> queues)
    {
        foreach (IoQueue q in queues)
        {
            if (q.Rdma is RdmaHostQueue rq) return RdmaTransport.DescribeTimeouts(rq.Connection);
        }
        return "no RDMA proxy queue";
    }

    /// <summary>
    /// Hands one queue to each reactor, which takes it when it next runs: the control thread never waits on a reactor,
    /// so a stalled one delays only its own relays (they fail with the link's path status, as while the link comes up,
    /// until it has taken its queue) while heartbeats and the other reactors go on. Returns how relayed data will move
    /// (for the log).
    /// </summary>
    private string InstallQueues(IReadOnlyList<IoQueue> queues, RdmaTransport? rdma)
    {
        IReadOnlyList<Reactor> reactors = _pair.Target.Reactors;
        string how = "zero copy beyond the sockets";
        for (int i = 0; i < queues.Count && i < reactors.Count; i++)
        {
            if (queues[i].Rdma is not RdmaHostQueue rq) continue;
            IReadOnlyList<StorageNode.Rdma.MemoryRegion>? regions = rdma?.InterconnectRegions(rq.Connection.DeviceContext, reactors[i]);
            if (regions == null)
            {
                how = "NOT zero copy: no interconnect PD on the device (no RDMA interconnect listener there); data is copied or registered per command";
                continue;
            }
            foreach (StorageNode.Rdma.MemoryRegion r in regions) rq.AddRegion(r);
            how = "zero copy: the reactors' pools are registered, the partner reads and writes them directly";
        }
        var set = new ProxyQueue?[reactors.Count];
        _installFailure = null;
        _queues = set;
        for (int i = 0; i < reactors.Count; i++)
        {
            int idx = i;
            Reactor r = reactors[i];
            IHostQueue transport = queues[i].Transport;
            r.Post(() => TakeQueue(set, idx, transport, r));
        }
        return how;
    }

    /// <summary>
    /// A reactor takes its proxy queue (its own thread). If the link went down (or came up again) before this reactor
    /// ran, the queue belongs to an association that is gone: it is closed instead. A queue taken just before the link
    /// went down is closed by <see cref="CloseQueues"/>, which this reactor runs after this.
    /// </summary>
    private void TakeQueue(ProxyQueue?[] set, int idx, IHostQueue transport, Reactor r)
    {
        if (!ReferenceEquals(_queues, set))
        {
            transport.Dispose();
            return;
        }
        try
        {
            var pq = new ProxyQueue(transport, r, this);
            pq.Attach();
            Volatile.Write(ref set[idx], pq);
        }
        catch (Exception e)
        {
            transport.Dispose();
            _installFailure = new InstallFailure(set, $"reactor {r.Name} could not take its proxy queue: {e.Message}");
        }
    }

    /// <summary>Closes a connect's proxy queues, each on its own reactor (after that reactor has taken it, or not: in order).</summary>
    private static void CloseQueues(IReadOnlyList<Reactor> reactors, ProxyQueue?[] set, string reason)
    {
        for (int i = 0; i < set.Length && i < reactors.Count; i++)
        {
            int idx = i;
            reactors[i].Post(() => Volatile.Read(ref set[idx])?.Close(reason));
        }
    }

    /// <summary>How many reactors have taken their proxy queue (all of them, soon after the link came up, unless one is stalled).</summary>
    public int QueuesInstalled
    {
        get
        {
            int n = 0;
            foreach (ProxyQueue? q in _queues) if (q != null) n++;
            return n;
        }
    }

    /// <summary>Takes the link down: proxy queues close (their commands fail with the ANA path status). Control thread.</summary>
    internal void Down(string reason)
    {
        bool wasUp = IsUp;
        IsUp = false;
        if (wasUp && Transport == "rdma")
            _log.LogInformation("{Nqn}: RDMA interconnect counters: {Counters}", Subsystem.Nqn, Counters);
        Transport = null;
        NvmeHost? host = _host;
        _host = null;
        ProxyQueue?[] queues = _queues;
        _queues = [];
        CloseQueues(_pair.Target.Reactors, queues, reason);
        host?.Dispose();
        Relays.Clear();
        foreach (NamespaceMirror m in _mirrors) m.Lost("the interconnect is down");
        Subsystem.SetPartnerAccess(PartnerAccess.Unavailable);
        if (wasUp) _log.LogWarning("{Nqn}: interconnect to {Partner} down: {Reason}", Subsystem.Nqn, _pair.Config.Partner, reason);
    }

    // ------------------------------------------------------------------ relay control over the admin queue

    private CompletionQueueEntry Admin(SubmissionQueueEntry sqe, Span<byte> data, DataDirection direction, TimeSpan timeout)
    {
        NvmeHost host = _host ?? throw new NvmeTransportException("interconnect down");
        return host.AdminCommand(sqe, data, direction, timeout);
    }

    /// <summary>Registers a host with the partner; its handle, or null when that failed (logged). Control thread.</summary>
    internal uint? Register(HostRelay h)
    {
        var data = new byte[HostIdentity.Length];
        HostIdentity.Write(data, h.HostNqn, h.HostId);
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = InterconnectOpcode.RegisterHost;
        try
        {
            CompletionQueueEntry cqe = Admin(sqe, data, DataDirection.HostToController, _pair.Config.HeartbeatTimeout);
            NvmeHost.Check("register host", cqe);
            return cqe.Dw0;
        }
        catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
        {
            _log.LogWarning("{Nqn}: registering {Host} with the partner failed: {Error}", Subsystem.Nqn, h, e.Message);
            return null;
        }
    }

    internal void Unregister(ProxyRegistration reg) => _pair.Enqueue(() => UnregisterNow(reg.Handle, reg.AssociationCntlid, reg.Host));

    /// <summary>Gives a host's handle back to the partner (control thread).</summary>
    internal void UnregisterNow(uint handle, ushort associationCntlid, HostRelay h)
    {
        if (_host == null || _host.Cntlid != associationCntlid) return; // the association (and the handle) is gone anyway
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = InterconnectOpcode.UnregisterHost;
        sqe.Cdw10 = handle;
        try { Admin(sqe, default, DataDirection.None, _pair.Config.HeartbeatTimeout); }
        catch (Exception e) when (e is NvmeTransportException or TimeoutException or InvalidOperationException)
        {
            _log.LogInformation("{Nqn}: unregistering {Host}: {Error}", Subsystem.Nqn, h, e.Message);
        }
    }

    /// <summary>Asks the owner to open a host's relay (blocks up to the owner's drain limit; not on a reactor).</summary>
    internal CompletionQueueEntry RelayOpen(uint handle, long fenceId)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = InterconnectOpcode.RelayOpen;
        sqe.Cdw10 = handle;
        sqe.Cdw11 = (uint)fenceId;
        sqe.Cdw12 = (uint)(fenceId >> 32);
        sqe.Cdw13 = (uint)_pair.Incarnation;
        sqe.Cdw14 = (uint)(_pair.Incarnation >> 32);
        return Admin(sqe, default, DataDirection.None, _pair.Gate.DrainLimit + _pair.Config.HeartbeatTimeout);
    }

    /// <summary>
    /// As the owner: tells the partner of a reservation notification for a host's controllers there (type 0: none), and of
    /// the namespace's PTPL. Sent in order, one at a time, off the caller's thread; lost while the link is down (the
    /// state is sent again when it comes up).
    /// </summary>
    internal void SendReservationNotice(Guid host, uint nsid, byte type, bool ptpl)
    {
        if (!IsUp) return;
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = InterconnectOpcode.ReservationNotice;
        ReservationNoticeFields.Set(ref sqe, host, nsid, type, ptpl);
        _notices.Enqueue(sqe);
        StartNotices();
    }

    /// <summary>
    /// Tells the partner what its replica of a namespace this node owns is now (<see cref="NamespaceMirror"/>), on
    /// <paramref name="association"/> when given (false if the link has another one by now), and waits for its answer (the
    /// heartbeat timeout at most; a thread that may block): true when applied, false when the partner found it older than
    /// what it holds, null when it did not answer.
    /// </summary>
    internal ReplicaAnswer? SendReplicaState(uint nsid, ReplicaWord word, uint epoch, uint sequence, object? association, long generation = 0, bool overwrite = false)
        => SendReplicaState(nsid, word, epoch, sequence, association, generation, overwrite, baseEpoch: null, out _);

    /// <summary>
    /// Tells the partner the replica's state (a notice thread); for a resync, <paramref name="baseEpoch"/> is the epoch
    /// this node's dirty record is kept against (null: none), and <paramref name="whole"/> says whether the keeper asks for
    /// everything. Null when it could not be told.
    /// </summary>
    internal ReplicaAnswer? SendReplicaState(uint nsid, ReplicaWord word, uint epoch, uint sequence, object? association, long generation, bool overwrite,
        uint? baseEpoch, out bool whole)
    {
        whole = true;
        NvmeHost? host = _host;
        if (!IsUp || host == null || (association != null && !ReferenceEquals(association, host))) return null;
        SubmissionQueueEntry sqe = default;
        ReplicaStateFields.Set(ref sqe, nsid, word, epoch, sequence, _pair.Incarnation, generation, overwrite, baseEpoch);
        try
        {
            CompletionQueueEntry cqe = host.AdminCommand(sqe, default, DataDirection.None, _pair.Config.HeartbeatTimeout);
            NvmeHost.Check("replica state", cqe);
            whole = (cqe.Dw0 & ReplicaStateFields.Whole) != 0;
            return (cqe.Dw0 & ReplicaStateFields.Applied) != 0 ? ReplicaAnswer.Applied
                : (cqe.Dw0 & ReplicaStateFields.Refused) != 0 ? ReplicaAnswer.Refused
                : ReplicaAnswer.Stale;
        }
        catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
        {
            _log.LogWarning("{Nqn}: NSID {Nsid}: telling the partner its replica is {Word} (epoch {Epoch}) failed: {Error}", Subsystem.Nqn, nsid, word, epoch, e.Message);
            return null;
        }
    }

    /// <summary>
    /// As a group's owner that stopped serving it (<see cref="PairNode.GiveBack"/>): offers the partner the group from
    /// <paramref name="term"/>, with each namespace's data generation, and waits for its answer (at most
    /// <paramref name="timeout"/>; a thread that may block). Null when it did not answer: the partner may have taken it or
    /// not, which the next association's descriptor says.
    /// </summary>
    internal GivebackAnswer? SendGiveback(object association, uint group, ulong term, IReadOnlyList<(uint Nsid, long Generation)> namespaces, TimeSpan timeout,
        out bool sent)
    {
        NvmeHost? host = _host;
        sent = false;
        if (!IsUp || host == null || !ReferenceEquals(association, host)) return null;
        sent = true;
        SubmissionQueueEntry sqe = default;
        GivebackFields.Set(ref sqe, group, term);
        var data = new byte[Math.Max(1, namespaces.Count) * GivebackFields.EntryBytes];
        for (int i = 0; i < namespaces.Count; i++) GivebackFields.WriteEntry(data.AsSpan(i * GivebackFields.EntryBytes), namespaces[i].Nsid, namespaces[i].Generation);
        try
        {
            CompletionQueueEntry cqe = host.AdminCommand(sqe, data.AsSpan(0, namespaces.Count * GivebackFields.EntryBytes), DataDirection.HostToController, timeout);
            // Only the partner's own answer settles it: an error status may be this node's (a transport error completes what
            // was outstanding) or the partner's failure half way (Internal Error): no answer.
            if (!cqe.StatusField.IsSuccess)
            {
                _log.LogWarning("{Nqn}: ANA group {Group}: offering it to the partner at term {Term} failed: {Status}", Subsystem.Nqn, group, term, cqe.StatusField);
                return null;
            }
            return cqe.Dw0 is (uint)GivebackAnswer.Taken or (uint)GivebackAnswer.NotYet or (uint)GivebackAnswer.Refused ? (GivebackAnswer)cqe.Dw0 : null;
        }
        catch (Exception e)
        {
            // Whatever failed, the word may have gone: no answer.
            _log.LogWarning("{Nqn}: ANA group {Group}: offering it to the partner at term {Term} got no answer: {Error}", Subsystem.Nqn, group, term, e.Message);
            return null;
        }
    }

    private void StartNotices()
    {
        if (Interlocked.CompareExchange(ref _sendingNotices, 1, 0) == 0 && !_pair.Notices.Run(SendNotices)) Volatile.Write(ref _sendingNotices, 0);
    }

    private void SendNotices()
    {
        do
        {
            while (_notices.TryDequeue(out SubmissionQueueEntry sqe))
            {
                try { NvmeHost.Check("reservation notice", Admin(sqe, default, DataDirection.None, _pair.Config.RelayTimeout)); }
                catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
                {
                    _log.LogWarning("{Nqn}: a reservation notice for namespace {Nsid} did not reach the partner: {Error}", Subsystem.Nqn, sqe.Cdw14, e.Message);
                }
            }
            Volatile.Write(ref _sendingNotices, 0);
        } while (!_notices.IsEmpty && Interlocked.CompareExchange(ref _sendingNotices, 1, 0) == 0);
    }

    /// <summary>
    /// As the owner: asks the partner to close a host's relay and say what it relayed. Null when the partner cannot be
    /// asked or did not answer within the relay timeout (the admin queue then closes: its answer cannot arrive late).
    /// </summary>
    internal Task<DrainAnswer?> QueryDrainAsync(HostKey key, long drainId) => _pair.Notices.Run(() =>
    {
        var data = new byte[DrainAnswer.Size];
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = InterconnectOpcode.RelayDrain;
        key.WriteTo(ref sqe);
        sqe.Cdw14 = (uint)drainId;
        sqe.Cdw15 = (uint)(drainId >> 32);
        try
        {
            CompletionQueueEntry cqe = Admin(sqe, data, DataDirection.ControllerToHost, _pair.Config.RelayTimeout);
            NvmeHost.Check("relay drain", cqe);
            return (DrainAnswer?)System.Runtime.InteropServices.MemoryMarshal.Read<DrainAnswer>(data);
        }
        catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
        {
            _log.LogWarning("{Nqn}: relay drain for host {Key} failed: {Error}", Subsystem.Nqn, key, e.Message);
            return null;
        }
    });
}

/// <summary>How relayed data moved through a node's NVMe/RDMA proxy queues (sums over the reactors).</summary>
public sealed record InterconnectCounters
{
    public long Relayed { get; set; }
    /// <summary>Bytes the partner read or wrote in place in this node's registered pools.</summary>
    public long ZeroCopyBytes { get; set; }
    /// <summary>Bytes of small writes sent in-capsule.</summary>
    public long InCapsuleBytes { get; set; }
    /// <summary>Commands whose data had to be copied on this node (not in a registered pool).</summary>
    public long BounceCopies { get; set; }
    /// <summary>Commands whose data had to be registered for that command.</summary>
    public long TemporaryRegistrations { get; set; }
    public long Doorbells { get; set; }

    public override string ToString() =>
        $"relayed {Relayed}, zero-copy {ZeroCopyBytes} B, in-capsule {InCapsuleBytes} B, copied {BounceCopies}, registered per command {TemporaryRegistrations}, send doorbells {Doorbells}";
}
