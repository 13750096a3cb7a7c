using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using StorageNode.Interop;

namespace StorageNode.Rdma;

/// <summary>RDMA devices of this machine, and why RDMA is unavailable when it is.</summary>
public static unsafe class RdmaDevices
{
    /// <summary>Null when RDMA can be used; otherwise a sentence saying why not.</summary>
    public static string? UnavailableReason()
    {
        if (!Verbs.IsAvailable) return Verbs.UnavailableReason;
        IReadOnlyList<string> d = List();
        return d.Count == 0 ? "no RDMA device (for soft-RoCE: modprobe rdma_rxe; rdma link add rxe0 type rxe netdev IFACE)" : null;
    }

    public static IReadOnlyList<string> List()
    {
        if (!Verbs.IsAvailable) return [];
        byte* buf = stackalloc byte[4096];
        int n = Verbs.ListDevices(buf, 4096);
        if (n <= 0) return [];
        string s = Encoding.ASCII.GetString(buf, new ReadOnlySpan<byte>(buf, 4096).IndexOf((byte)0));
        return s.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }
}

/// <summary>One rdma_cm event, copied out of the library (private data included) and acknowledged.</summary>
public readonly record struct CmEvent(int Type, int Status, IntPtr Id, IntPtr ListenId, byte[] PrivateData)
{
    /// <summary>Connect request: the RDMA READs the peer will serve for us (its responder resources), as rdma_cm reports it.</summary>
    public byte InitiatorDepth { get; init; }
    /// <summary>Connect request: the RDMA READs the peer wants to issue to us.</summary>
    public byte ResponderResources { get; init; }

    public string TypeName => Type switch
    {
        Verbs.CmAddrResolved => "ADDR_RESOLVED", Verbs.CmAddrError => "ADDR_ERROR", Verbs.CmRouteResolved => "ROUTE_RESOLVED",
        Verbs.CmRouteError => "ROUTE_ERROR", Verbs.CmConnectRequest => "CONNECT_REQUEST", Verbs.CmConnectResponse => "CONNECT_RESPONSE",
        Verbs.CmConnectError => "CONNECT_ERROR", Verbs.CmUnreachable => "UNREACHABLE", Verbs.CmRejected => "REJECTED",
        Verbs.CmEstablished => "ESTABLISHED", Verbs.CmDisconnected => "DISCONNECTED", Verbs.CmDeviceRemoval => "DEVICE_REMOVAL",
        Verbs.CmTimewaitExit => "TIMEWAIT_EXIT", _ => $"EVENT_{Type}",
    };
}

/// <summary>An rdma_cm event channel (non-blocking; waits with poll on its descriptor).</summary>
public sealed unsafe class CmEventChannel : IDisposable
{
    internal readonly CmChannelHandle Handle;

    public CmEventChannel()
    {
        if (!Verbs.IsAvailable) throw new InvalidOperationException(Verbs.UnavailableReason);
        IntPtr ch = Verbs.CmCreateChannel(out int err);
        if (ch == IntPtr.Zero) throw new RdmaException("rdma_create_event_channel", -err);
        Handle = new CmChannelHandle(ch);
    }

    public int Fd => Verbs.CmChannelFd(Handle.DangerousGetHandle());

    /// <summary>The next event, or null when none arrives within <paramref name="timeout"/>.</summary>
    public CmEvent? Next(TimeSpan timeout)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            SnCmEvent ev;
            int rc = Verbs.CmGetEvent(Handle.DangerousGetHandle(), &ev);
            if (rc < 0) throw new RdmaException("rdma_get_cm_event", -rc);
            if (rc == 1)
            {
                var pd = new byte[ev.PrivateDataLength];
                new ReadOnlySpan<byte>(ev.PrivateData, ev.PrivateDataLength).CopyTo(pd);
                var e = new CmEvent(ev.Type, ev.Status, ev.Id, ev.ListenId, pd) { InitiatorDepth = ev.InitiatorDepth, ResponderResources = ev.ResponderResources };
                Verbs.CmAckEvent(ev.Event);
                return e;
            }
            long left = (deadline - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency;
            if (left <= 0) return null;
            Libc.PollFd p = new() { Fd = Fd, Events = Libc.POLLIN };
            Libc.Poll(&p, 1, (int)Math.Min(left, 1000));
        }
    }

    /// <summary>Waits for one event of <paramref name="type"/>; any other event is an error.</summary>
    public CmEvent Expect(int type, TimeSpan timeout, string what)
    {
        CmEvent e = Next(timeout) ?? throw new TimeoutException($"{what}: no rdma_cm event within {timeout.TotalSeconds:0.#} s");
        if (e.Type != type) throw new RdmaException($"{what}: expected {new CmEvent(type, 0, 0, 0, []).TypeName}, got {e.TypeName} (status {e.Status})", Math.Abs(e.Status));
        return e;
    }

    public void Dispose() => Handle.Dispose();
}

/// <summary>
/// A protection domain shared by many connections on one device (a target registers its buffer pools once per
/// device, not once per connection). Made by <see cref="RdmaListener.AllocatePd"/>; freed after its connections.
/// </summary>
public sealed unsafe class ProtectionDomain : IDisposable
{
    internal readonly PdHandle Handle;

    /// <summary>The device context (ibv_context) this PD belongs to.</summary>
    public IntPtr Context { get; }

    internal ProtectionDomain(IntPtr context, SafeHandle parent)
    {
        IntPtr pd = Verbs.AllocPd(context);
        if (pd == IntPtr.Zero) throw new RdmaException("ibv_alloc_pd", Marshal.GetLastPInvokeError());
        Handle = new PdHandle(pd, parent);
        Context = context;
    }

    /// <summary>Registers <paramref name="length"/> bytes at <paramref name="address"/> (which must stay pinned).</summary>
    public MemoryRegion Register(byte* address, nuint length, bool remoteRead = false, bool remoteWrite = false)
        => new(Handle, address, length, Verbs.AccessLocalWrite | (remoteRead ? Verbs.AccessRemoteRead : 0) | (remoteWrite ? Verbs.AccessRemoteWrite : 0));

    public void Dispose() => Handle.Dispose();
}

/// <summary>Registered memory over a caller-owned, pinned buffer.</summary>
public sealed unsafe class MemoryRegion : IDisposable
{
    internal readonly MrHandle Handle;
    public byte* Address { get; }
    public nuint Length { get; }
    public uint Lkey { get; }
    public uint Rkey { get; }

    internal MemoryRegion(PdHandle pd, byte* address, nuint length, int access)
    {
        IntPtr mr = Verbs.RegMr(pd.DangerousGetHandle(), address, length, access, out int err);
        if (mr == IntPtr.Zero) throw new RdmaException("ibv_reg_mr", -err);
        Handle = new MrHandle(mr, pd);
        Address = address;
        Length = length;
        Lkey = Verbs.MrLkey(mr);
        Rkey = Verbs.MrRkey(mr);
    }

    public bool Contains(byte* p, nuint len) => p >= Address && p + len <= Address + Length;

    public void Dispose() => Handle.Dispose();
}

/// <summary>A completion queue: polled, or armed to signal its completion channel's descriptor when idle.</summary>
public sealed unsafe class CompletionQueue : IDisposable
{
    internal readonly CqHandle Handle;
    private readonly CompChannelHandle? _channel;

    internal CompletionQueue(SafeHandle parent, IntPtr context, int entries, bool eventMode)
    {
        IntPtr ch = IntPtr.Zero;
        if (eventMode)
        {
            ch = Verbs.CreateCompChannel(context);
            if (ch == IntPtr.Zero) throw new RdmaException("ibv_create_comp_channel", Marshal.GetLastPInvokeError());
            _channel = new CompChannelHandle(ch, parent);
        }
        IntPtr cq = Verbs.CreateCq(context, entries, ch, out int err);
        if (cq == IntPtr.Zero)
        {
            _channel?.Dispose();
            throw new RdmaException("ibv_create_cq", -err);
        }
        Handle = new CqHandle(cq, (SafeHandle?)_channel ?? parent);
    }

    /// <summary>Reaps up to <paramref name="into"/>.Length completions; returns how many.</summary>
    public int Poll(Span<SnWorkCompletion> into)
    {
        fixed (SnWorkCompletion* p = into)
        {
            int n = Verbs.PollCq(Handle.DangerousGetHandle(), p, Math.Min(into.Length, 32));
            if (n < 0) throw new RdmaException("ibv_poll_cq", -n);
            return n;
        }
    }

    /// <summary>Descriptor that becomes readable after <see cref="Arm"/> when a completion arrives (event mode).</summary>
    public int Fd => _channel != null ? Verbs.CompChannelFd(_channel.DangerousGetHandle()) : -1;

    /// <summary>Requests a notification for the next completion (then poll again before sleeping).</summary>
    public void Arm()
    {
        int rc = Verbs.ReqNotifyCq(Handle.DangerousGetHandle(), 0);
        if (rc != 0) throw new RdmaException("ibv_req_notify_cq", rc);
    }

    /// <summary>Consumes pending notifications; true when there was one.</summary>
    public bool AcknowledgeEvents()
    {
        if (_channel == null) return false;
        bool any = false;
        while (Verbs.GetCqEvent(_channel.DangerousGetHandle()) == 1) any = true;
        return any;
    }

    /// <summary>Event mode: blocks (up to <paramref name="timeoutMs"/>) until the armed CQ signals.</summary>
    public void WaitEvent(int timeoutMs)
    {
        Libc.PollFd p = new() { Fd = Fd, Events = Libc.POLLIN };
        Libc.Poll(&p, 1, timeoutMs);
        AcknowledgeEvents();
    }

    public void Dispose()
    {
        Handle.Dispose();
        _channel?.Dispose();
    }
}
