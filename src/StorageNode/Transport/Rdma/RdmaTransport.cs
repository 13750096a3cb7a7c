using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.Logging;
using StorageNode.Interop;
using StorageNode.Nvme.Rdma;
using StorageNode.Rdma;
using StorageNode.Reactors;
using StorageNode.Target;
namespace StorageNode.Transport.Rdma;

/// <summary>One reactor's buffer pools registered in one protection domain (once per device and reactor).</summary>
internal sealed unsafe class PoolRegistration : IDisposable
{
    private readonly DataBufferPools _pools;
    private readonly MemoryRegion _small;
    private readonly MemoryRegion _medium;
    private readonly MemoryRegion _large;

    public ProtectionDomain Pd { get; }

    /// <summary>The three pools' regions (small, medium, large).</summary>
    public MemoryRegion[] Regions => [_small, _medium, _large];

    /// <param name="remote">Let peers of this PD read and write the pools (the interconnect's own PD only).</param>
    public PoolRegistration(ProtectionDomain pd, DataBufferPools pools, bool remote = false)
    {
        Pd = pd;
        _pools = pools;
        _small = pd.Register(pools.Small.Base, (nuint)pools.Small.TotalBytes, remote, remote);
        try
        {
            _medium = pd.Register(pools.Medium.Base, (nuint)pools.Medium.TotalBytes, remote, remote);
            try
            {
                _large = pd.Register(pools.Large.Base, (nuint)pools.Large.TotalBytes, remote, remote);
            }
            catch
            {
                _medium.Dispose();
                throw;
            }
        }
        catch
        {
            _small.Dispose();
            throw;
        }
    }

    /// <summary>The local key of the pool that owns <paramref name="buffer"/>.</summary>
    public uint Lkey(byte* buffer)
        => _pools.Small.Owns(buffer) ? _small.Lkey : _pools.Medium.Owns(buffer) ? _medium.Lkey : _large.Lkey;

    public void Dispose()
    {
        _small.Dispose();
        _medium.Dispose();
        _large.Dispose();
    }
}

/// <summary>
/// The NVMe/RDMA transport: rdma_cm listeners (a thread each, control plane: connect requests with the NVMe/RDMA
/// private data, and every later event of the accepted connections, whose ids stay on the listener's channel)
/// and the queue pairs, handed to reactors round-robin. One protection domain per device; each reactor's
/// buffer pools are registered in it once.
/// </summary>
public sealed class RdmaTransport : INvmfTransport
{
    public const string TransportName = "rdma";

    public string Name => TransportName;
    public byte TrType => Nvme.Spec.Discovery.TrTypeRdma;
    /// <summary>Data moves with keyed SGL data blocks (RDMA READ and WRITE): a Linux host refuses a controller without them.</summary>
    public uint SglSupport => Nvme.Spec.IdentifyControllerBits.SglsKeyed;

    /// <summary>TSAS of NVMe/RDMA: reliable connected QPs, no provider type, RDMA_CM connection management.</summary>
    public void WriteTsas(Span<byte> tsas)
    {
        tsas[0] = 1; // RDMA QP type: reliable connected
        tsas[1] = 1; // provider type: none
        tsas[2] = 1; // connection management: RDMA_CM
    }

    IPEndPoint INvmfTransport.Listen(ListenAddress a) => Listen(a.Endpoint, a.PortId, a.AdvertiseAddress, a.Role, a.RdmaAckTimeout);

    private readonly NvmfTarget _target;
    private readonly ILogger _log;
    private readonly List<RdmaListenerThread> _listeners = [];
    private readonly QueuePairRegistry<RdmaQueuePair> _queues;
    private readonly ConcurrentDictionary<IntPtr, RdmaQueuePair> _byId = new();
    private readonly object _lock = new();
    private readonly Dictionary<IntPtr, ProtectionDomain> _pds = [];
    private readonly Dictionary<(IntPtr, int), PoolRegistration> _registrations = [];
    // The cluster interconnect's outbound queues: a PD of their own per device (hosts' connections never share
    // it), in which each reactor's pools are registered with remote access so the partner moves relayed data
    // straight in and out of them.
    private readonly Dictionary<IntPtr, ProtectionDomain> _interconnectPds = [];
    private readonly Dictionary<(IntPtr, int), PoolRegistration> _interconnectRegistrations = [];
    private int _nextReactor;

    /// <summary>A connection that has not completed Connect within this time is closed.</summary>
    public TimeSpan ConnectTimeout { get => _queues.ConnectTimeout; init => _queues.ConnectTimeout = value; }

    /// <summary>Upper bound on RDMA READs outstanding per queue pair (the host's offer may lower it).</summary>
    public int MaxReadDepth { get; init; } = 16;

    public RdmaTransport(NvmfTarget target)
    {
        _target = target;
        _log = target.LoggerFactory.CreateLogger("rdma");
        _queues = new QueuePairRegistry<RdmaQueuePair>(target, TimeSpan.FromSeconds(10));
    }

    /// <summary>Binds an rdma_cm listener and starts serving it; returns the bound endpoint (port 0 picks one).</summary>
    public IPEndPoint Listen(IPEndPoint endpoint, ushort portId, string? advertiseAddress = null, ListenerRole role = ListenerRole.Combined,
        int ackTimeout = 0)
    {
        string? why = RdmaDevices.UnavailableReason();
        if (why != null) throw new InvalidOperationException($"NVMe/RDMA listener {endpoint}: RDMA is unavailable: {why}");
        var listener = new RdmaListener(endpoint.Address.ToString(), endpoint.Port);
        var bound = new IPEndPoint(endpoint.Address, listener.Port);
        var info = new ListenerInfo(this, advertiseAddress ?? bound.Address.ToString(), bound.Port, portId, role, ackTimeout);
        var t = new RdmaListenerThread(this, listener, bound, info);
        lock (_lock) _listeners.Add(t);
        _target.AddListener(info);
        t.Start();
        _log.LogInformation("listening on {Endpoint} (NVMe/RDMA, devices {Devices}, port id {PortId}, {Role}, ACK timeout {AckTimeout})",
            bound, string.Join(",", RdmaDevices.List()), portId, role.ToString().ToLowerInvariant(),
            ackTimeout == 0 ? "rdma_cm's default" : RdmaConnection.DescribeAckTimeout(ackTimeout));
        return bound;
    }

    /// <summary>Stops accepting on the listener bound to <paramref name="endpoint"/>.</summary>
    public void StopListening(IPEndPoint endpoint)
    {
        RdmaListenerThread[] all;
        lock (_lock) all = [.. _listeners];
        foreach (RdmaListenerThread l in all)
        {
            if (!l.Endpoint.Equals(endpoint)) continue;
            l.Stop();
        }
    }

    /// <summary>Number of live connections (all reactors).</summary>
    public int ConnectionCount => _queues.Count;

    private void OnEvent(RdmaListener listener, ListenerInfo info, in CmEvent e)
    {
        RdmaQueuePair? qp;
        switch (e.Type)
        {
            case Verbs.CmConnectRequest:
                OnConnectRequest(listener, info, e);
                break;
            case Verbs.CmEstablished:
                if (_byId.TryGetValue(e.Id, out qp)) _log.LogDebug("{Peer}: RDMA connection established", qp.PeerAddress);
                break;
            case Verbs.CmDisconnected:
                if (_byId.TryGetValue(e.Id, out qp)) qp.Disconnect("host disconnected");
                break;
            case Verbs.CmRejected:
            case Verbs.CmConnectError:
            case Verbs.CmUnreachable:
            case Verbs.CmDeviceRemoval:
                if (_byId.TryGetValue(e.Id, out qp)) qp.Disconnect($"connection failed: {e.TypeName} (status {e.Status})");
                else if (e.Type == Verbs.CmDeviceRemoval) _log.LogWarning("listener {Endpoint}: RDMA device removed", info.Address);
                break;
            default:
                _log.LogDebug("listener {Address}:{Port}: {Event} (status {Status})", info.Address, info.Port, e.TypeName, e.Status);
                break;
        }
    }

    /// <summary>A connection's QP timeouts as the device reports them (for the log).</summary>
    internal static string DescribeTimeouts(RdmaConnection conn)
    {
        try
        {
            var (ack, retry, rnr) = conn.Timeouts;
            return $"QP ACK timeout {RdmaConnection.DescribeAckTimeout(ack)}, retry count {retry}, RNR retry {rnr}";
        }
        catch (RdmaException ex)
        {
            return $"QP timeouts unknown ({ex.Message})";
        }
    }

    private void OnConnectRequest(RdmaListener listener, ListenerInfo info, in CmEvent e)
    {
        TargetOptions o = _target.Options;
        RdmaCmDecision d = RdmaCm.Decide(e.PrivateData, o.MaxIoQueues, o.AdminQueueDepth, o.MaxQueueDepth, e.InitiatorDepth);
        if (!d.Accepted)
        {
            _log.LogWarning("listener {Address}:{Port}: NVMe/RDMA connect request rejected ({Status}): {Reason}",
                info.Address, info.Port, RdmaCm.Describe(d.Status), d.Reason);
            TryReject(listener, e, d.Status);
            return;
        }
        RdmaCm.TryParseRequest(e.PrivateData, out RdmaCmRequest request);
        // Node-wide connection limit (Target:MaxConnections): the slot is held until the queue pair closes.
        if (!_target.Connections.TryAcquire("NVMe/RDMA", $"a host on listener {info.Address}:{info.Port} (queue {request.Qid})"))
        {
            TryReject(listener, e, RdmaCmStatus.NoResources);
            return;
        }
        Reactor reactor = _target.ReactorFor(info, ref _nextReactor);
        RdmaQueuePair? qp = null;
        RdmaConnection conn;
        try
        {
            PoolRegistration reg = Registration(listener, RdmaListener.DeviceOf(e), reactor);
            var options = new RdmaConnectionOptions
            {
                SendQueueDepth = d.SendDepth,
                RecvQueueDepth = d.RecvDepth,
                MaxInline = 64,
                ReadDepth = Math.Min(e.InitiatorDepth, MaxReadDepth),
                EventMode = true,
                AckTimeout = info.RdmaAckTimeout,
            };
            conn = listener.AcceptRequest(e, RdmaCm.BuildAccept((ushort)d.RecvDepth), RdmaCm.BuildReject(RdmaCmStatus.NoResources), options, reg.Pd,
                c => qp = new RdmaQueuePair(c, reactor, _target, info, this, reg, request.Qid, d.RecvDepth, _log));
        }
        catch (Exception ex)
        {
            qp?.Abandon();
            _target.Connections.Release();
            _log.LogWarning("listener {Address}:{Port}: cannot accept an NVMe/RDMA connection (queue {Qid}): {Error}", info.Address, info.Port, request.Qid, ex.Message);
            return;
        }
        RdmaQueuePair q = qp!;
        _byId[conn.CmId] = q;
        _queues.Add(q);
        if (info.Role == ListenerRole.Interconnect)
            _log.LogInformation("{Peer}: interconnect NVMe/RDMA queue {Qid} accepted (depth {Depth}, read depth {Reads}, {Timeouts})",
                q.PeerAddress, request.Qid, d.RecvDepth, Math.Min(e.InitiatorDepth, MaxReadDepth), DescribeTimeouts(conn));
        else
            _log.LogDebug("{Peer}: NVMe/RDMA connection for queue {Qid} accepted (depth {Depth}, read depth {Reads}, {Timeouts})",
                q.PeerAddress, request.Qid, d.RecvDepth, Math.Min(e.InitiatorDepth, MaxReadDepth), DescribeTimeouts(conn));
        reactor.Post(() => Adopt(reactor, q));
    }

    private void TryReject(RdmaListener listener, in CmEvent e, RdmaCmStatus status)
    {
        try
        {
            listener.Reject(e, RdmaCm.BuildReject(status));
        }
        catch (Exception ex)
        {
            _log.LogWarning("rdma_reject failed: {Error}", ex.Message);
        }
    }

    private void Adopt(Reactor reactor, RdmaQueuePair qp)
    {
        if (qp.IsClosed) return;
        try
        {
            reactor.Register(qp);
            reactor.AddPoller(qp);
        }
        catch (Exception e)
        {
            _log.LogError("{Peer}: cannot register the RDMA connection: {Error}", qp.PeerAddress, e.Message);
            qp.Close("registration failed");
        }
    }

    private PoolRegistration Registration(RdmaListener listener, IntPtr context, Reactor reactor)
    {
        lock (_lock)
        {
            if (!_pds.TryGetValue(context, out ProtectionDomain? pd))
            {
                pd = listener.AllocatePd(context);
                _pds[context] = pd;
            }
            if (!_registrations.TryGetValue((context, reactor.Id), out PoolRegistration? reg))
            {
                var sw = Stopwatch.StartNew();
                reg = new PoolRegistration(pd, reactor.Pools);
                _registrations[(context, reactor.Id)] = reg;
                _log.LogInformation("registered {Name}'s buffer pools ({MiB} MiB) for RDMA in {Ms} ms", reactor.Name, reactor.Pools.TotalBytes >> 20, sw.ElapsedMilliseconds);
            }
            return reg;
        }
    }

    /// <summary>
    /// The interconnect's protection domain on <paramref name="context"/> (the device an outbound interconnect
    /// connection resolved to), made through a listener bound to that device (the node's own RDMA interconnect
    /// listener); null when no listener is on that device (the connection then uses a PD of its own, without
    /// zero copy).
    /// </summary>
    public ProtectionDomain? InterconnectPd(IntPtr context)
    {
        if (context == IntPtr.Zero) return null;
        lock (_lock)
        {
            if (_interconnectPds.TryGetValue(context, out ProtectionDomain? pd)) return pd;
            RdmaListenerThread? anchor = _listeners.FirstOrDefault(l => l.DeviceContext == context);
            if (anchor == null) return null;
            pd = anchor.AllocatePd(context);
            _interconnectPds[context] = pd;
            return pd;
        }
    }

    /// <summary>
    /// <paramref name="reactor"/>'s pools registered (remote read/write) in the interconnect's PD on
    /// <paramref name="context"/>; null when there is no such PD.
    /// </summary>
    public IReadOnlyList<MemoryRegion>? InterconnectRegions(IntPtr context, Reactor reactor)
    {
        ProtectionDomain? pd = InterconnectPd(context);
        if (pd == null) return null;
        lock (_lock)
        {
            if (!_interconnectRegistrations.TryGetValue((context, reactor.Id), out PoolRegistration? reg))
            {
                var sw = Stopwatch.StartNew();
                reg = new PoolRegistration(pd, reactor.Pools, remote: true);
                _interconnectRegistrations[(context, reactor.Id)] = reg;
                _log.LogInformation("registered {Name}'s buffer pools ({MiB} MiB) for the RDMA interconnect in {Ms} ms", reactor.Name, reactor.Pools.TotalBytes >> 20, sw.ElapsedMilliseconds);
            }
            return reg.Regions;
        }
    }

    /// <summary>A queue pair closed (its reactor, once): its connection slot is free again.</summary>
    internal void OnQueueClosed(RdmaQueuePair qp)
    {
        _byId.TryRemove(qp.Connection.CmId, out _);
        _queues.Remove(qp);
    }

    public void Dispose()
    {
        RdmaListenerThread[] listeners;
        lock (_lock) listeners = [.. _listeners];
        foreach (RdmaListenerThread l in listeners) l.Stop();
        _queues.DisconnectAll("node stopping");
        // The reactors close their queues (destroying the QPs); only then may the registrations go.
        var sw = Stopwatch.StartNew();
        while (ConnectionCount > 0 && sw.Elapsed < TimeSpan.FromSeconds(5)) Thread.Sleep(10);
        if (ConnectionCount > 0)
        {
            _log.LogWarning("{Count} RDMA connection(s) did not close within 5 s; their registrations are left in place", ConnectionCount);
            return;
        }
        lock (_lock)
        {
            foreach (PoolRegistration r in _registrations.Values) r.Dispose();
            _registrations.Clear();
            foreach (ProtectionDomain pd in _pds.Values) pd.Dispose();
            _pds.Clear();
            foreach (PoolRegistration r in _interconnectRegistrations.Values) r.Dispose();
            _interconnectRegistrations.Clear();
            foreach (ProtectionDomain pd in _interconnectPds.Values) pd.Dispose();
            _interconnectPds.Clear();
        }
        foreach (RdmaListenerThread l in listeners) l.DisposeListener();
    }

    private sealed class RdmaListenerThread(RdmaTransport owner, RdmaListener listener, IPEndPoint endpoint, ListenerInfo info)
    {
        public IPEndPoint Endpoint => endpoint;
        public IntPtr DeviceContext => listener.DeviceContext;
        public ProtectionDomain AllocatePd(IntPtr context) => listener.AllocatePd(context);

        private volatile bool _stop;
        private Thread? _running;

        public void Start()
        {
            _running = new Thread(Run) { IsBackground = true, Name = $"rdma-cm {endpoint}" };
            _running.Start();
        }

        private void Run()
        {
            while (!_stop)
            {
                CmEvent? e;
                try
                {
                    e = listener.NextEvent(TimeSpan.FromMilliseconds(200));
                }
                catch (Exception ex)
                {
                    owner._log.LogWarning("listener {Endpoint}: rdma_get_cm_event failed: {Error}", endpoint, ex.Message);
                    Thread.Sleep(100);
                    continue;
                }
                if (e == null) continue;
                try
                {
                    owner.OnEvent(listener, info, e.Value);
                }
                catch (Exception ex)
                {
                    owner._log.LogError(ex, "listener {Endpoint}: handling {Event} failed", endpoint, e.Value.TypeName);
                }
            }
        }

        public void Stop()
        {
            _stop = true;
            _running?.Join(TimeSpan.FromSeconds(2));
        }

        public void DisposeListener() => listener.Dispose();
    }
}
