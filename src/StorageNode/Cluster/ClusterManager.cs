using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Proxy;
using StorageNode.Reactors;
using StorageNode.Target;
using StorageNode.Transport.Rdma;

namespace StorageNode.Cluster;

/// <summary>What this node knows of its partner.</summary>
public enum PartnerStatus
{
    /// <summary>Not heard from on either channel yet.</summary>
    Unknown,
    /// <summary>Interconnect up: the partner's groups are reachable through the proxy.</summary>
    Healthy,
    /// <summary>The interconnect is down but the partner answers on the heartbeat channel.</summary>
    InterconnectDown,
    /// <summary>Silent on both channels.</summary>
    PartnerDown,
    /// <summary>The partner's configuration disagrees with this node's: no pairing.</summary>
    Refused,
}

/// <summary>
/// Membership and the interconnect of an HA pair: the outbound association(s) into the partner (the proxy's
/// queues), heartbeats over the interconnect and over a second channel (UDP), the partner's clock, and the
/// answers this node gives on the partner's inbound association. Runs on its own control thread.
/// </summary>
public sealed class ClusterManager : IInterconnectHandler, IRelayFence, IPartnerClock, IDisposable
{
    private readonly ClusterConfig _cfg;
    private readonly NvmfTarget _target;
    private readonly ILogger _log;
    private readonly List<SubsystemLink> _links = [];
    private readonly Dictionary<string, Dictionary<uint, string>> _owners;
    private readonly ConcurrentQueue<Action> _work = new();
    private readonly Thread _thread;
    private readonly AutoResetEvent _wake = new(false);
    private readonly Socket _udp;
    private readonly Thread _udpThread;
    private readonly List<Controller> _inbound = [];
    private volatile bool _stop;
    private long _lastUdpTicks;
    private long _inboundEpoch;
    private PartnerStatus _status = PartnerStatus.Unknown;

    /// <summary>This node's clock as the partner sees it, and the estimate of the partner's.</summary>
    public StorageNode.Pair.PairClock Clock { get; }

    public ClusterConfig Config => _cfg;
    public PartnerStatus Status => _status;
    public string? RefusedReason { get; private set; }
    public IReadOnlyList<SubsystemLink> Links => _links;
    public TimeSpan RelayTimeout => _cfg.RelayTimeout;
    public long InboundRelayEpoch => Interlocked.Read(ref _inboundEpoch);
    public long Incarnation { get; } = Random.Shared.NextInt64(1, long.MaxValue);

    /// <summary>
    /// The node's NVMe/RDMA transport when the interconnect may use RDMA (set before <see cref="Start"/>): its
    /// interconnect PD and pool registrations serve the outbound queues. Null: NVMe/TCP only.
    /// </summary>
    public RdmaTransport? Rdma { get; set; }

    /// <summary>Raised once when the partner's configuration disagrees; the node stops (docs/configuration.md).</summary>
    public event Action<string>? Refused;

    /// <summary>The host NQN a node uses on the interconnect.</summary>
    public static string IdentityNqn(string cluster, string node) => $"nqn.2026-11.io.storagenode:cluster:{cluster}:node:{node}";

    public static Guid IdentityId(string cluster, string node)
        => new(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes($"{cluster}/{node}"))[..16]);

    public ClusterManager(ClusterConfig cfg, NvmfTarget target, IReadOnlyDictionary<Subsystem, IReadOnlyDictionary<uint, string>> groupOwners)
    {
        _cfg = cfg;
        Clock = new StorageNode.Pair.PairClock(cfg.ClockOffset);
        _target = target;
        _log = target.LoggerFactory.CreateLogger("cluster");
        _owners = groupOwners.ToDictionary(kv => kv.Key.Nqn, kv => kv.Value.ToDictionary(x => x.Key, x => x.Value));
        foreach (Subsystem s in groupOwners.Keys) _links.Add(new SubsystemLink(this, s));
        target.Interconnect = this;
        target.Gate.Fence = this;
        target.RelayHosts.Clock = this;
        target.ControllerCreated += c => Enqueue(() => RegisterWithPartner(c));
        _udp = new Socket(cfg.Heartbeat.AddressFamily, SocketType.Dgram, ProtocolType.Udp) { ReceiveTimeout = 200 };
        _thread = new Thread(Run) { IsBackground = true, Name = $"cluster {cfg.LocalNode}" };
        _udpThread = new Thread(ReceiveHeartbeats) { IsBackground = true, Name = $"heartbeat {cfg.LocalNode}" };
    }

    public RelayLink LinkFor(Subsystem s) => _links.First(l => l.Subsystem == s);

    public void Start()
    {
        _udp.Bind(_cfg.Heartbeat);
        _udpThread.Start();
        _thread.Start();
        _log.LogInformation("cluster {Cluster}: node {Node}, partner {Partner} (interconnect {Ic}, heartbeat {Hb})",
            _cfg.Name, _cfg.LocalNode, _cfg.Partner, _cfg.PartnerInterconnect, _cfg.PartnerHeartbeat);
    }

    private void Enqueue(Action a)
    {
        _work.Enqueue(a);
        _wake.Set();
    }

    // ------------------------------------------------------------------ control thread

    private void Run()
    {
        long nextBeat = 0;
        while (!_stop)
        {
            _wake.WaitOne(TimeSpan.FromMilliseconds(Math.Max(5, _cfg.HeartbeatInterval.TotalMilliseconds / 2)));
            while (_work.TryDequeue(out Action? a))
            {
                try { a(); }
                catch (Exception e) { _log.LogError(e, "cluster work item failed"); }
            }
            if (_stop || _status == PartnerStatus.Refused) continue;
            long now = Stopwatch.GetTimestamp();
            if (now < nextBeat) continue;
            nextBeat = now + (long)(_cfg.HeartbeatInterval.TotalSeconds * Stopwatch.Frequency);
            SendUdpHeartbeat();
            foreach (SubsystemLink l in _links)
            {
                try { l.Tick(now); }
                catch (Exception e) { _log.LogError(e, "{Nqn}: interconnect link failed", l.Subsystem.Nqn); }
            }
            UpdateStatus();
        }
    }

    private void UpdateStatus()
    {
        if (_status == PartnerStatus.Refused) return;
        bool ic = _links.Count > 0 && _links.All(l => l.IsUp);
        long last = Interlocked.Read(ref _lastUdpTicks);
        bool udp = last != 0 && Stopwatch.GetElapsedTime(last) < _cfg.HeartbeatTimeout;
        PartnerStatus next = ic ? PartnerStatus.Healthy : udp ? PartnerStatus.InterconnectDown : (_status == PartnerStatus.Unknown ? PartnerStatus.Unknown : PartnerStatus.PartnerDown);
        if (next == _status) return;
        PartnerStatus old = _status;
        _status = next;
        switch (next)
        {
            case PartnerStatus.Healthy:
                _log.LogInformation("partner {Partner}: interconnect up (was {Old})", _cfg.Partner, old);
                break;
            case PartnerStatus.InterconnectDown:
                _log.LogWarning("partner {Partner}: interconnect lost, partner alive on the heartbeat channel (link dead)", _cfg.Partner);
                break;
            case PartnerStatus.PartnerDown:
                _log.LogWarning("partner {Partner}: silent on the interconnect and the heartbeat channel (partner dead)", _cfg.Partner);
                break;
        }
    }

    internal void Refuse(string reason)
    {
        if (_status == PartnerStatus.Refused) return;
        _status = PartnerStatus.Refused;
        RefusedReason = reason;
        _log.LogCritical("partner {Partner} disagrees with this node's configuration: {Reason}", _cfg.Partner, reason);
        foreach (SubsystemLink l in _links) l.Down("configuration mismatch");
        Refused?.Invoke(reason);
    }

    // ------------------------------------------------------------------ second channel

    private byte[] HeartbeatDatagram() => Encoding.UTF8.GetBytes($"SNHB1 {_cfg.Name} {_cfg.LocalNode} {Incarnation}");

    private volatile bool _silenced;

    private void SendUdpHeartbeat()
    {
        if (_silenced) return;
        try { _udp.SendTo(HeartbeatDatagram(), _cfg.PartnerHeartbeat); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { /* the partner's port may not exist yet */ }
    }

    private void ReceiveHeartbeats()
    {
        var buf = new byte[256];
        string expect = $"SNHB1 {_cfg.Name} {_cfg.Partner} ";
        while (!_stop)
        {
            try
            {
                EndPoint from = new IPEndPoint(_cfg.Heartbeat.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
                int n = _udp.ReceiveFrom(buf, ref from);
                if (n > 0 && !_silenced && Encoding.UTF8.GetString(buf, 0, n).StartsWith(expect, StringComparison.Ordinal))
                    Interlocked.Exchange(ref _lastUdpTicks, Stopwatch.GetTimestamp());
            }
            catch (SocketException) { }
            catch (ObjectDisposedException) { return; }
        }
    }

    /// <summary>Test hook: stops answering and sending on the heartbeat channel (simulates a dead partner with the interconnect).</summary>
    public void SilenceHeartbeatChannel() => _silenced = true;

    // ------------------------------------------------------------------ partner clock

    /// <summary>
    /// On the owner: a relay deadline the partner wrote on this node's own clock (CDW3), as a local Stopwatch
    /// timestamp. No clock conversion happens here: the proxy made the only one (<see cref="PairClock.TryToPartner"/>).
    /// </summary>
    public long LocalDeadline(uint ownerClockDeadline)
        => Clock.OwnDeadlineTicks(new StorageNode.Pair.OwnerDeadline(ownerClockDeadline), Stopwatch.GetTimestamp());

    public long WireNow => Clock.WireNow;

    // ------------------------------------------------------------------ proxy-side registrations

    private void RegisterWithPartner(Controller c)
    {
        if (c.IsInterconnect || c.Subsystem.IsDiscovery) return;
        _links.FirstOrDefault(l => l.Subsystem == c.Subsystem)?.Register(c);
    }

    // ------------------------------------------------------------------ IInterconnectHandler (owner side of the partner's association)

    public bool IsPartnerIdentity(string hostNqn) => hostNqn == IdentityNqn(_cfg.Name, _cfg.Partner);

    public void OnPartnerAssociation(Controller association)
    {
        List<Controller> older;
        lock (_inbound)
        {
            older = _inbound.Where(c => c.Subsystem == association.Subsystem).ToList();
            _inbound.Add(association);
        }
        // A new association replaces the old: close the old one so nothing still in flight on it can arrive.
        foreach (Controller c in older) c.Destroy("replaced by a newer association from the partner");
    }

    public void OnPartnerAssociationEnded(Controller association)
    {
        lock (_inbound) _inbound.Remove(association);
        Interlocked.Increment(ref _inboundEpoch);
    }

    /// <summary>Closes every inbound association from the partner (fences relays in flight).</summary>
    public void FenceInbound(string reason)
    {
        Controller[] all;
        lock (_inbound) all = [.. _inbound];
        foreach (Controller c in all) c.Destroy(reason);
        Interlocked.Increment(ref _inboundEpoch);
    }

    public byte[] Descriptor(Subsystem subsystem) => DescriptorFor(subsystem).ToJson();

    internal ClusterDescriptor DescriptorFor(Subsystem s)
        => ClusterDescriptor.For(s, _cfg.Name, _cfg.LocalNode, _cfg.Partner, _owners.TryGetValue(s.Nqn, out var o) ? o : new Dictionary<uint, string>());

    public Task<long> DrainForPartnerAsync(Subsystem subsystem, string hostNqn, Guid hostId)
    {
        SubsystemLink? link = _links.FirstOrDefault(l => l.Subsystem == subsystem);
        return link == null ? Task.FromResult(0L) : link.DrainAsync(hostNqn, hostId);
    }

    // ------------------------------------------------------------------ IRelayFence (owner side asks the partner)

    public async Task<long?> DrainRelayAsync(HostState host)
    {
        // Any link will do: the partner answers for the host's relays into this node.
        SubsystemLink? link = _links.FirstOrDefault(l => l.IsUp);
        long? sent = link == null ? null : await link.QueryDrainAsync(host);
        if (sent == null)
        {
            // The partner cannot be asked: cut its inbound associations so nothing in flight can still arrive.
            FenceInbound("relay drain: partner unreachable");
        }
        return sent;
    }

    public void Dispose()
    {
        _stop = true;
        _wake.Set();
        if (_thread.IsAlive) _thread.Join(TimeSpan.FromSeconds(5));
        foreach (SubsystemLink l in _links) l.Down("node stopping");
        _udp.Close();
        if (_udpThread.IsAlive) _udpThread.Join(TimeSpan.FromSeconds(2));
        _wake.Dispose();
    }

    /// <summary>
    /// The outbound association into the partner for one subsystem: an admin queue (heartbeats, registrations,
    /// drains) on the control thread and one I/O queue per reactor (the proxy).
    /// </summary>
    public sealed class SubsystemLink : RelayLink
    {
        private readonly ClusterManager _m;
        private readonly object _adminLock = new();
        private NvmeHost? _host;
        private long _nextConnect;
        private long _lastBeatOk;
        private string? _lastConnectError;
        private readonly ConcurrentDictionary<(string, Guid), RelayRegistration> _registrations = new();

        public Subsystem Subsystem { get; }
        public bool IsUp { get; private set; }
        public long ConnectCount { get; private set; }

        public SubsystemLink(ClusterManager m, Subsystem s)
        {
            _m = m;
            Subsystem = s;
        }

        public override NvmeStatus UnavailableStatus => NvmeStatus.Path(PathStatus.AnaInaccessible);
        public override long RelayTimeoutTicks => (long)(_m._cfg.RelayTimeout.TotalSeconds * Stopwatch.Frequency);
        public override bool TryPartnerDeadline(long localDeadline, out StorageNode.Pair.OwnerDeadline deadline) => _m.Clock.TryToPartner(localDeadline, out deadline);

        public override void RequestOpen(RelayRegistration reg) => Task.Run(() =>
        {
            var data = new byte[InterconnectOpcode.HostIdentityLength];
            InterconnectOpcode.WriteHostIdentity(data, reg.HostNqn, reg.HostId);
            SubmissionQueueEntry sqe = default;
            sqe.Opcode = InterconnectOpcode.RelayOpen;
            try
            {
                NvmeHost? host = _host ?? throw new InvalidOperationException("interconnect down");
                CompletionQueueEntry cqe;
                lock (_adminLock) cqe = host.AdminCommand(sqe, data, DataDirection.HostToController);
                NvmeHost.Check("relay open", cqe);
                Interlocked.Exchange(ref reg.State, RelayRegistration.Active);
            }
            catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
            {
                _m._log.LogWarning("{Nqn}: relay open for {Host} failed: {Error}", Subsystem.Nqn, reg.HostNqn, e.Message);
                Thread.Sleep(50); // waiting commands retry (and expire at their relay deadline)
                Interlocked.Exchange(ref reg.State, RelayRegistration.Idle);
            }
            WakeQueues();
        });

        internal void Tick(long now)
        {
            if (IsUp)
            {
                if (_host == null || _host.AdminBroken) { Down("interconnect admin queue failed"); return; }
                foreach (ProxyQueue? q in Queues)
                {
                    if (q == null || q.IsClosed) { Down($"interconnect I/O queue closed ({q?.LastCloseReason ?? "missing"})"); return; }
                }
                try
                {
                    Heartbeat();
                    _lastBeatOk = now;
                }
                catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
                {
                    Down($"interconnect heartbeat failed: {e.Message}");
                }
                return;
            }
            if (now < _nextConnect) return;
            _nextConnect = now + (long)(_m._cfg.ReconnectInterval.TotalSeconds * Stopwatch.Frequency);
            TryConnect();
        }

        private void Heartbeat()
        {
            SubmissionQueueEntry sqe = default;
            sqe.Opcode = InterconnectOpcode.Heartbeat;
            long t0 = _m.Clock.WireNow;
            CompletionQueueEntry cqe;
            lock (_adminLock) cqe = _host!.AdminCommand(sqe, default, DataDirection.None);
            long t1 = _m.Clock.WireNow;
            NvmeHost.Check("interconnect heartbeat", cqe);
            _m.Clock.Sample(t0, cqe.Dw0 | ((long)cqe.Dw1 << 32), t1);
        }

        /// <summary>"rdma" or "tcp" while up; null while down.</summary>
        public string? Transport { get; private set; }

        /// <summary>Why the last connect did not use RDMA (null when it did, or RDMA was not tried).</summary>
        public string? RdmaFallbackReason { get; private set; }

        /// <summary>Counters of the NVMe/RDMA proxy queues (zeros over NVMe/TCP): how relayed data moved on this node.</summary>
        public InterconnectCounters Counters
        {
            get
            {
                var c = new InterconnectCounters();
                foreach (ProxyQueue? q in Queues)
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

        private void TryConnect()
        {
            ClusterConfig cfg = _m._cfg;
            RdmaTransport? rdma = _m.Rdma;
            if (rdma != null)
            {
                try
                {
                    if (Connect(HostTransport.Rdma, rdma)) RdmaFallbackReason = null;
                    return;
                }
                catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or SocketException
                                              or InvalidOperationException or System.Text.Json.JsonException or StorageNode.Rdma.RdmaException
                                              or NvmeRdmaRejectedException)
                {
                    if (cfg.InterconnectTransport == InterconnectTransport.Rdma)
                    {
                        if (_lastConnectError != e.Message)
                            _m._log.LogWarning("{Nqn}: cannot reach partner {Partner} at {Ep} over NVMe/RDMA: {Error}", Subsystem.Nqn, cfg.Partner, cfg.PartnerInterconnect, e.Message);
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
            catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or SocketException
                                          or InvalidOperationException or System.Text.Json.JsonException)
            {
                string why = RdmaFallbackReason != null ? $"{e.Message} (NVMe/RDMA: {RdmaFallbackReason})" : e.Message;
                if (_lastConnectError != why)
                    _m._log.LogWarning("{Nqn}: cannot reach partner {Partner} at {Ep}: {Error}", Subsystem.Nqn, cfg.Partner, cfg.PartnerInterconnect, why);
                _lastConnectError = why;
            }
        }

        /// <summary>Connects the association over one transport; false when the partner's configuration disagrees. Throws on failure.</summary>
        private bool Connect(HostTransport transport, RdmaTransport? rdma)
        {
            ClusterConfig cfg = _m._cfg;
            NvmeHost? host = null;
            try
            {
                host = NvmeHost.Connect(cfg.PartnerInterconnect, Subsystem.Nqn, new NvmeHostOptions
                {
                    Transport = transport,
                    RdmaProtectionDomainFor = rdma == null ? null : rdma.InterconnectPd,
                    RdmaReactorQueues = true,
                    RdmaAckTimeout = cfg.RdmaAckTimeout,
                    HostNqn = IdentityNqn(cfg.Name, cfg.LocalNode),
                    HostId = IdentityId(cfg.Name, cfg.LocalNode),
                    IoQueues = _m._target.Reactors.Count,
                    IoQueueDepth = _m._target.Options.MaxQueueDepth,
                    KatoMs = (uint)Math.Max(1000, cfg.HeartbeatTimeout.TotalMilliseconds * 4),
                    SendKeepAlive = true,
                    CommandTimeout = cfg.HeartbeatTimeout,
                    ConnectTimeout = cfg.HeartbeatTimeout,
                    InCapsuleDataSize = _m._target.Options.InCapsuleDataSize,
                });
                if (host.IoQueues.Count != _m._target.Reactors.Count)
                    throw new InvalidOperationException($"partner granted {host.IoQueues.Count} interconnect I/O queues, {_m._target.Reactors.Count} needed");

                // Both nodes must present one subsystem image.
                ClusterDescriptor mine = _m.DescriptorFor(Subsystem);
                var buf = new byte[65536];
                SubmissionQueueEntry sqe = default;
                sqe.Opcode = InterconnectOpcode.GetDescriptor;
                sqe.Cdw10 = (uint)(buf.Length / 4 - 1) << 16;
                CompletionQueueEntry cqe = host.AdminCommand(sqe, buf, DataDirection.ControllerToHost);
                NvmeHost.Check("interconnect descriptor", cqe);
                ClusterDescriptor theirs = ClusterDescriptor.FromJson(buf.AsSpan(0, (int)cqe.Dw0));
                string? problem = mine.Disagreement(theirs);
                if (problem != null)
                {
                    host.Dispose();
                    host = null;
                    _m.Refuse(problem);
                    return false;
                }

                lock (_adminLock) _host = host;
                Heartbeat();
                string zeroCopy = InstallQueues(host.DetachIoQueues(), rdma);
                _registrations.Clear();
                foreach (Controller c in Subsystem.Controllers)
                    if (!c.IsInterconnect) Register(c);
                IsUp = true;
                ConnectCount++;
                _lastConnectError = null;
                Transport = transport == HostTransport.Rdma ? "rdma" : "tcp";
                if (transport == HostTransport.Rdma)
                    _m._log.LogInformation("{Nqn}: interconnect to {Partner} up over NVMe/RDMA ({Queues} proxy queue(s); {ZeroCopy}; {Timeouts})", Subsystem.Nqn, cfg.Partner, Queues.Length, zeroCopy,
                        DescribeTimeouts());
                else
                    _m._log.LogInformation("{Nqn}: interconnect to {Partner} up over NVMe/TCP ({Queues} proxy queue(s); {Why})", Subsystem.Nqn, cfg.Partner, Queues.Length,
                        RdmaFallbackReason != null ? $"NVMe/RDMA failed: {RdmaFallbackReason}" : cfg.InterconnectTransport == InterconnectTransport.Tcp ? "configured" : "no RDMA on this node");
                Subsystem.SetPartnerAccess(PartnerAccess.Available);
                return true;
            }
            catch
            {
                lock (_adminLock) _host = null;
                host?.Dispose();
                throw;
            }
        }

        /// <summary>The first RDMA proxy queue's QP timeouts as the device reports them (for the log).</summary>
        private string DescribeTimeouts()
        {
            foreach (ProxyQueue? pq in Queues)
            {
                if (pq?.Queue is RdmaHostQueue rq) return RdmaTransport.DescribeTimeouts(rq.Connection);
            }
            return "no RDMA proxy queue";
        }

        /// <summary>Hands one queue to each reactor; returns how relayed data will move (for the log).</summary>
        private string InstallQueues(IReadOnlyList<IoQueue> queues, RdmaTransport? rdma)
        {
            IReadOnlyList<Reactor> reactors = _m._target.Reactors;
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
            var installed = new ProxyQueue?[reactors.Count];
            using var done = new CountdownEvent(reactors.Count);
            for (int i = 0; i < reactors.Count; i++)
            {
                int idx = i;
                Reactor r = reactors[i];
                r.Post(() =>
                {
                    try
                    {
                        var pq = new ProxyQueue(queues[idx].Transport, r, this);
                        pq.Attach();
                        installed[idx] = pq;
                    }
                    finally
                    {
                        done.Signal();
                    }
                });
            }
            if (!done.Wait(TimeSpan.FromSeconds(10))) throw new InvalidOperationException("reactors did not take the proxy queues");
            SetQueues(installed);
            return how;
        }

        /// <summary>Registers a host with the partner for relayed commands (control thread).</summary>
        internal void Register(Controller c)
        {
            if (!IsUpOrConnecting()) return;
            var key = (c.HostNqn, c.HostId);
            if (!_registrations.TryGetValue(key, out RelayRegistration? reg))
            {
                var data = new byte[InterconnectOpcode.HostIdentityLength];
                InterconnectOpcode.WriteHostIdentity(data, c.HostNqn, c.HostId);
                SubmissionQueueEntry sqe = default;
                sqe.Opcode = InterconnectOpcode.RegisterHost;
                CompletionQueueEntry cqe;
                try
                {
                    lock (_adminLock) cqe = _host!.AdminCommand(sqe, data, DataDirection.HostToController);
                    NvmeHost.Check("register host", cqe);
                }
                catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
                {
                    _m._log.LogWarning("{Nqn}: registering {Host} with the partner failed: {Error}", Subsystem.Nqn, c.HostNqn, e.Message);
                    return;
                }
                reg = new RelayRegistration(cqe.Dw0, c.HostNqn, c.HostId);
                _registrations[key] = reg;
            }
            c.PartnerRegistration = reg;
            WakeQueues();
        }

        private bool IsUpOrConnecting() => _host != null;

        /// <summary>As the owner: asks the partner how many of the host's commands it relayed here (after dropping orphans).</summary>
        internal Task<long?> QueryDrainAsync(HostState h) => Task.Run(() =>
        {
            var data = new byte[InterconnectOpcode.HostIdentityLength];
            InterconnectOpcode.WriteHostIdentity(data, h.HostNqn, h.HostId);
            SubmissionQueueEntry sqe = default;
            sqe.Opcode = InterconnectOpcode.RelayDrain;
            try
            {
                NvmeHost? host = _host;
                if (host == null) return (long?)null;
                CompletionQueueEntry cqe;
                lock (_adminLock) cqe = host.AdminCommand(sqe, data, DataDirection.HostToController);
                NvmeHost.Check("relay drain", cqe);
                return cqe.Dw0 | ((long)cqe.Dw1 << 32);
            }
            catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
            {
                _m._log.LogWarning("{Nqn}: relay drain for {Host} failed: {Error}", Subsystem.Nqn, h, e.Message);
                return null;
            }
        });

        /// <summary>As the proxy: drops orphaned relays of the host on every reactor, then reports what was sent.</summary>
        internal async Task<long> DrainAsync(string hostNqn, Guid hostId)
        {
            // The owner fences this host's relay: a later relayed command needs a new relay open first.
            if (_registrations.TryGetValue((hostNqn, hostId), out RelayRegistration? r)) Interlocked.Exchange(ref r.State, RelayRegistration.Idle);
            ProxyQueue?[] queues = Queues;
            var tasks = new List<Task>();
            foreach (ProxyQueue? q in queues)
            {
                if (q == null) continue;
                var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                ProxyQueue pq = q;
                pq.Reactor.Post(() =>
                {
                    pq.DropOrphans();
                    tcs.TrySetResult();
                });
                tasks.Add(tcs.Task);
            }
            await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(5));
            return _registrations.TryGetValue((hostNqn, hostId), out RelayRegistration? reg) ? Interlocked.Read(ref reg.Sent) : 0;
        }

        /// <summary>Takes the link down: proxy queues close (their commands fail with the ANA path status). Control thread.</summary>
        internal void Down(string reason)
        {
            bool wasUp = IsUp;
            IsUp = false;
            if (wasUp && Transport == "rdma")
                _m._log.LogInformation("{Nqn}: RDMA interconnect counters: {Counters}", Subsystem.Nqn, Counters);
            Transport = null;
            NvmeHost? host;
            lock (_adminLock)
            {
                host = _host;
                _host = null;
            }
            ProxyQueue?[] queues = Queues;
            SetQueues([]);
            foreach (ProxyQueue? q in queues)
            {
                if (q == null) continue;
                ProxyQueue pq = q;
                pq.Reactor.Post(() => pq.Close(reason));
            }
            host?.Dispose();
            foreach (Controller c in Subsystem.Controllers) c.PartnerRegistration = null;
            _registrations.Clear();
            Subsystem.SetPartnerAccess(PartnerAccess.Unavailable);
            if (wasUp)
            {
                _m._log.LogWarning("{Nqn}: interconnect to {Partner} down: {Reason}", Subsystem.Nqn, _m._cfg.Partner, reason);
                // Nothing relayed to this node may arrive on the old inbound association either.
                _m.FenceInbound($"interconnect down: {reason}");
            }
        }
    }
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
