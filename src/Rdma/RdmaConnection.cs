using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using StorageNode.Interop;

namespace StorageNode.Rdma;

public sealed record RdmaConnectionOptions
{
    public int SendQueueDepth { get; init; } = 128;
    public int RecvQueueDepth { get; init; } = 128;
    public int MaxInline { get; init; } = 64;
    /// <summary>Outstanding RDMA READs this side serves / issues.</summary>
    public int ReadDepth { get; init; } = 16;
    public bool EventMode { get; init; }
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>
    /// The QP's local ACK timeout, 4.096 µs × 2^value before an unacknowledged packet is sent again (1–31);
    /// 0 keeps rdma_cm's default (on RoCE ≈ 0.5–2 s, by kernel). SPDK's <c>transport_ack_timeout</c>.
    /// </summary>
    public int AckTimeout { get; init; }
    /// <summary>
    /// Client side: called with the device (ibv_context) the route resolved to; a PD returned here (made on that
    /// device, outliving the connection) is used instead of a PD of the connection's own.
    /// </summary>
    public Func<IntPtr, ProtectionDomain?>? ProtectionDomainFor { get; init; }
}

/// <summary>
/// One reliable-connected queue pair with its connection manager id, protection domain and completion queue
/// (shared by sends and receives). Made by <see cref="Connect"/> or <see cref="RdmaListener.Accept"/>.
/// </summary>
public sealed unsafe class RdmaConnection : IDisposable
{
    // Null when the id reports to its listener's event channel (a target's connections).
    private readonly CmEventChannel? _events;
    private readonly CmIdHandle _id;
    private readonly PdHandle _pd;
    private readonly bool _ownsPd;
    private readonly QpHandle _qp;
    private bool _disposed;

    public CompletionQueue Cq { get; }
    public uint QpNum { get; }
    /// <summary>Private data the peer sent with its connect request or accept.</summary>
    public byte[] PeerPrivateData { get; private set; } = [];
    public bool Disconnected { get; private set; }

    private RdmaConnection(CmEventChannel? events, CmIdHandle id, RdmaConnectionOptions o, ProtectionDomain? sharedPd = null)
    {
        _events = events;
        _id = id;
        IntPtr idp = id.DangerousGetHandle();
        IntPtr ctx = Verbs.CmVerbs(idp);
        if (ctx == IntPtr.Zero) throw new RdmaException("rdma_cm id has no device", 19);
        if (o.AckTimeout is < 0 or > 31) throw new ArgumentOutOfRangeException(nameof(o), o.AckTimeout, "AckTimeout is 0 (the default) or 1..31");
        // Before rdma_connect / rdma_accept: rdma_cm applies it when it moves the QP to RTS.
        if (o.AckTimeout > 0) Check(Verbs.CmSetAckTimeout(idp, o.AckTimeout), "rdma_set_option(ACK_TIMEOUT)");
        if (sharedPd != null)
        {
            if (sharedPd.Context != ctx) throw new RdmaException("the protection domain belongs to another device", 22);
            _pd = sharedPd.Handle;
        }
        else
        {
            IntPtr pd = Verbs.AllocPd(ctx);
            if (pd == IntPtr.Zero) throw new RdmaException("ibv_alloc_pd", Marshal.GetLastPInvokeError());
            _pd = new PdHandle(pd, id);
            _ownsPd = true;
        }
        try
        {
            Cq = new CompletionQueue(id, ctx, o.SendQueueDepth + o.RecvQueueDepth, o.EventMode);
            int rc = Verbs.CmCreateQp(idp, _pd.DangerousGetHandle(), Cq.Handle.DangerousGetHandle(), Cq.Handle.DangerousGetHandle(),
                o.SendQueueDepth, o.RecvQueueDepth, 1, 1, o.MaxInline);
            if (rc != 0)
            {
                Cq.Dispose();
                throw new RdmaException("rdma_create_qp", -rc);
            }
        }
        catch
        {
            if (_ownsPd) _pd.Dispose();
            throw;
        }
        IntPtr qp = Verbs.CmQp(idp);
        _qp = new QpHandle(qp, id, _pd, Cq.Handle, Cq.Handle);
        QpNum = Verbs.QpNum(qp);
    }

    /// <summary>
    /// The QP's local ACK timeout exponent (4.096 µs × 2^value), transport retry count and RNR retry count as
    /// the device reports them (meaningful once connected).
    /// </summary>
    public (int AckTimeout, int RetryCount, int RnrRetry) Timeouts
    {
        get
        {
            Check(Verbs.QpTimeouts(_qp.DangerousGetHandle(), out int t, out int r, out int rnr), "ibv_query_qp");
            return (t, r, rnr);
        }
    }

    /// <summary>An ACK timeout exponent in words: "14 (67 ms)".</summary>
    public static string DescribeAckTimeout(int exponent) =>
        exponent == 0 ? "0 (none)" : FormattableString.Invariant($"{exponent} ({4.096e-3 * Math.Pow(2, exponent):0.###} ms)");

    /// <summary>The rdma_cm id (to match events read from a listener's channel).</summary>
    public IntPtr CmId => _id.DangerousGetHandle();

    /// <summary>The device (ibv_context) the connection runs on.</summary>
    public IntPtr DeviceContext => Verbs.CmVerbs(CmId);

    /// <summary>The peer's address, "ip:port".</summary>
    public string PeerAddress
    {
        get
        {
            byte* buf = stackalloc byte[64];
            int n = Verbs.CmPeerAddr(CmId, buf, 64);
            return n > 0 ? Encoding.ASCII.GetString(buf, n) : "?";
        }
    }

    /// <summary>Client side: resolve, create the QP, connect (with private data), wait for ESTABLISHED.</summary>
    public static RdmaConnection Connect(string address, int port, ReadOnlySpan<byte> privateData, RdmaConnectionOptions? options = null)
    {
        options ??= new RdmaConnectionOptions();
        var events = new CmEventChannel();
        CmIdHandle? id = null;
        RdmaConnection? conn = null;
        try
        {
            IntPtr idp = Verbs.CmCreateId(events.Handle.DangerousGetHandle(), IntPtr.Zero, out int err);
            if (idp == IntPtr.Zero) throw new RdmaException("rdma_create_id", -err);
            id = new CmIdHandle(idp, events.Handle);
            Check(Verbs.CmResolveAddr(idp, address, port, (int)options.Timeout.TotalMilliseconds), $"rdma_resolve_addr {address}:{port}");
            events.Expect(Verbs.CmAddrResolved, options.Timeout, "resolve address");
            Check(Verbs.CmResolveRoute(idp, (int)options.Timeout.TotalMilliseconds), "rdma_resolve_route");
            events.Expect(Verbs.CmRouteResolved, options.Timeout, "resolve route");
            ProtectionDomain? shared = options.ProtectionDomainFor?.Invoke(Verbs.CmVerbs(idp));
            conn = new RdmaConnection(events, id, options, shared);
            fixed (byte* pd = privateData)
                Check(Verbs.CmConnect(idp, pd, privateData.Length, options.ReadDepth, options.ReadDepth, 7, 7), "rdma_connect");
            CmEvent e = events.Next(options.Timeout) ?? throw new TimeoutException($"connect to {address}:{port}: no answer");
            if (e.Type == Verbs.CmRejected) throw new RdmaRejectedException(e.PrivateData, e.Status);
            if (e.Type != Verbs.CmEstablished) throw new RdmaException($"connect to {address}:{port}: {e.TypeName}", Math.Abs(e.Status));
            conn.PeerPrivateData = e.PrivateData;
            return conn;
        }
        catch
        {
            if (conn != null) conn.Dispose();
            else
            {
                id?.Dispose();
                events.Dispose();
            }
            throw;
        }
    }

    internal static RdmaConnection FromRequest(CmEventChannel listenerEvents, IntPtr childId, byte[] privateData,
        ReadOnlySpan<byte> acceptData, RdmaConnectionOptions o)
    {
        var events = new CmEventChannel();
        var id = new CmIdHandle(childId, events.Handle);
        RdmaConnection? conn = null;
        try
        {
            conn = new RdmaConnection(events, id, o) { PeerPrivateData = privateData };
            fixed (byte* pd = acceptData)
                Check(Verbs.CmAccept(childId, pd, acceptData.Length, o.ReadDepth, o.ReadDepth), "rdma_accept");
            // ESTABLISHED arrives on the listener's channel; then the id moves to its own channel.
            CmEvent e = listenerEvents.Next(o.Timeout) ?? throw new TimeoutException("accept: no ESTABLISHED");
            if (e.Type != Verbs.CmEstablished || e.Id != childId) throw new RdmaException($"accept: {e.TypeName}", Math.Abs(e.Status));
            Check(Verbs.CmMigrate(childId, events.Handle.DangerousGetHandle()), "rdma_migrate_id");
            return conn;
        }
        catch
        {
            if (conn != null) conn.Dispose();
            else
            {
                id.Dispose();
                events.Dispose();
            }
            throw;
        }
    }

    internal static RdmaConnection AcceptOnListenerChannel(CmEventChannel listenerEvents, IntPtr childId, byte[] privateData,
        ReadOnlySpan<byte> acceptData, ReadOnlySpan<byte> rejectData, RdmaConnectionOptions o, ProtectionDomain? pd,
        Action<RdmaConnection>? beforeAccept)
    {
        var id = new CmIdHandle(childId, listenerEvents.Handle);
        RdmaConnection? conn = null;
        bool accepted = false;
        try
        {
            conn = new RdmaConnection(null, id, o, pd) { PeerPrivateData = privateData };
            beforeAccept?.Invoke(conn);
            fixed (byte* p = acceptData)
                Check(Verbs.CmAccept(childId, p, acceptData.Length, o.ReadDepth, o.ReadDepth), "rdma_accept");
            accepted = true;
            return conn;
        }
        catch
        {
            if (!accepted)
                fixed (byte* p = rejectData) Verbs.CmReject(childId, p, rejectData.Length);
            if (conn != null) conn.Dispose();
            else id.Dispose();
            throw;
        }
    }

    private static void Check(int rc, string what)
    {
        if (rc != 0) throw new RdmaException(what, -rc);
    }

    /// <summary>Registers <paramref name="length"/> bytes at <paramref name="address"/> (which must stay pinned) in this connection's PD.</summary>
    public MemoryRegion Register(byte* address, nuint length, bool remoteRead = false, bool remoteWrite = false)
        => new(_pd, address, length, Verbs.AccessLocalWrite | (remoteRead ? Verbs.AccessRemoteRead : 0) | (remoteWrite ? Verbs.AccessRemoteWrite : 0));

    private IntPtr Qp => _qp.DangerousGetHandle();

    public void PostRecv(ulong wrId, MemoryRegion mr, byte* addr, uint length)
        => Check(Verbs.PostRecv(Qp, wrId, addr, length, mr.Lkey), "ibv_post_recv");

    public void PostSend(ulong wrId, MemoryRegion? mr, byte* addr, uint length, bool signaled = true, bool inline = false)
        => Check(Verbs.PostSend(Qp, wrId, Verbs.WrSend, (signaled ? Verbs.SendSignaled : 0) | (inline ? Verbs.SendInline : 0),
            addr, length, mr?.Lkey ?? 0, 0, 0, 0), "ibv_post_send(SEND)");

    public void PostSendWithInvalidate(ulong wrId, MemoryRegion? mr, byte* addr, uint length, uint rkeyToInvalidate, bool inline = false)
        => Check(Verbs.PostSend(Qp, wrId, Verbs.WrSendWithInvalidate, Verbs.SendSignaled | (inline ? Verbs.SendInline : 0), addr, length,
            mr?.Lkey ?? 0, 0, 0, rkeyToInvalidate), "ibv_post_send(SEND_WITH_INV)");

    public void PostWrite(ulong wrId, MemoryRegion mr, byte* addr, uint length, ulong remoteAddress, uint rkey, bool signaled = true)
        => Check(Verbs.PostSend(Qp, wrId, Verbs.WrRdmaWrite, signaled ? Verbs.SendSignaled : 0, addr, length, mr.Lkey, remoteAddress, rkey, 0),
            "ibv_post_send(RDMA_WRITE)");

    public void PostRead(ulong wrId, MemoryRegion mr, byte* addr, uint length, ulong remoteAddress, uint rkey)
        => Check(Verbs.PostSend(Qp, wrId, Verbs.WrRdmaRead, Verbs.SendSignaled, addr, length, mr.Lkey, remoteAddress, rkey, 0),
            "ibv_post_send(RDMA_READ)");

    // Data-path posting without exceptions: each returns 0, or a negative errno (e.g. -ENOMEM: queue full).

    public int TryPostRecv(ulong wrId, byte* addr, uint length, uint lkey) => Verbs.PostRecv(Qp, wrId, addr, length, lkey);

    /// <summary>
    /// Posts <paramref name="count"/> queued work requests chained (one doorbell per 32; on rxe a doorbell is a
    /// system call). Returns 0, or a negative errno with <paramref name="posted"/> = how many went before it.
    /// </summary>
    public int TryPostSendBatch(SnSendWr* wrs, int count, out int posted) => Verbs.PostSendBatch(Qp, wrs, count, out posted);

    public int TryPostSend(ulong wrId, byte* addr, uint length, uint lkey, bool signaled, bool inline)
        => Verbs.PostSend(Qp, wrId, Verbs.WrSend, (signaled ? Verbs.SendSignaled : 0) | (inline ? Verbs.SendInline : 0), addr, length, lkey, 0, 0, 0);

    public int TryPostSendWithInvalidate(ulong wrId, byte* addr, uint length, uint lkey, uint rkeyToInvalidate, bool signaled, bool inline)
        => Verbs.PostSend(Qp, wrId, Verbs.WrSendWithInvalidate, (signaled ? Verbs.SendSignaled : 0) | (inline ? Verbs.SendInline : 0),
            addr, length, lkey, 0, 0, rkeyToInvalidate);

    public int TryPostWrite(ulong wrId, byte* addr, uint length, uint lkey, ulong remoteAddress, uint rkey, bool signaled)
        => Verbs.PostSend(Qp, wrId, Verbs.WrRdmaWrite, signaled ? Verbs.SendSignaled : 0, addr, length, lkey, remoteAddress, rkey, 0);

    public int TryPostRead(ulong wrId, byte* addr, uint length, uint lkey, ulong remoteAddress, uint rkey)
        => Verbs.PostSend(Qp, wrId, Verbs.WrRdmaRead, Verbs.SendSignaled, addr, length, lkey, remoteAddress, rkey, 0);

    /// <summary>Polls until <paramref name="count"/> completions arrived (bounded); returns them.</summary>
    public SnWorkCompletion[] WaitCompletions(int count, TimeSpan timeout)
    {
        var all = new List<SnWorkCompletion>(count);
        Span<SnWorkCompletion> buf = stackalloc SnWorkCompletion[32];
        var sw = Stopwatch.StartNew();
        while (all.Count < count)
        {
            int n = Cq.Poll(buf);
            for (int i = 0; i < n; i++) all.Add(buf[i]);
            if (n == 0)
            {
                if (sw.Elapsed > timeout) throw new TimeoutException($"{all.Count} of {count} completions within {timeout.TotalSeconds:0.#} s");
                Thread.Yield();
            }
        }
        return [.. all];
    }

    /// <summary>Reads a connection manager event for this connection without blocking (DISCONNECTED, ...).</summary>
    public CmEvent? PollEvent(TimeSpan wait)
    {
        if (_events == null) throw new InvalidOperationException("this connection's events arrive on its listener's channel");
        CmEvent? e = _events.Next(wait);
        if (e?.Type == Verbs.CmDisconnected && !Disconnected)
        {
            // Answer the peer's disconnect: this moves our QP to the error state, flushing what is posted.
            Verbs.CmDisconnect(_id.DangerousGetHandle());
            Disconnected = true;
        }
        return e;
    }

    public void Disconnect()
    {
        if (Disconnected) return;
        Verbs.CmDisconnect(_id.DangerousGetHandle());
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _qp.Dispose();
        Cq.Dispose();
        if (_ownsPd) _pd.Dispose();
        _id.Dispose();
        _events?.Dispose();
    }
}

/// <summary>The peer rejected the connection; <see cref="PrivateData"/> is what it said why.</summary>
public sealed class RdmaRejectedException(byte[] privateData, int status) : Exception($"connection rejected (status {status})")
{
    public byte[] PrivateData { get; } = privateData;
}
