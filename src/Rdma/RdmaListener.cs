using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using StorageNode.Interop;

namespace StorageNode.Rdma;

/// <summary>A listening rdma_cm id.</summary>
public sealed unsafe class RdmaListener : IDisposable
{
    private readonly CmEventChannel _events = new();
    private readonly CmIdHandle _id;

    public int Port { get; }

    public RdmaListener(string address, int port, int backlog = 64)
    {
        try
        {
            IntPtr idp = Verbs.CmCreateId(_events.Handle.DangerousGetHandle(), IntPtr.Zero, out int err);
            if (idp == IntPtr.Zero) throw new RdmaException("rdma_create_id", -err);
            _id = new CmIdHandle(idp, _events.Handle);
            int rc = Verbs.CmBind(idp, address, port);
            if (rc != 0) throw new RdmaException($"rdma_bind_addr {address}:{port}", -rc);
            rc = Verbs.CmListen(idp, backlog);
            if (rc != 0) throw new RdmaException("rdma_listen", -rc);
            Port = Verbs.CmLocalPort(idp);
        }
        catch
        {
            _id?.Dispose();
            _events.Dispose();
            throw;
        }
    }

    /// <summary>Descriptor of the listener's event channel: readable when an event is pending.</summary>
    public int Fd => _events.Fd;

    /// <summary>The device the listener is bound to, or zero when bound to a wildcard address.</summary>
    public IntPtr DeviceContext => Verbs.CmVerbs(_id.DangerousGetHandle());

    /// <summary>The device a connect request arrived on (its id's ibv_context).</summary>
    public static IntPtr DeviceOf(in CmEvent request) => Verbs.CmVerbs(request.Id);

    /// <summary>
    /// The next event of this listener or of any connection accepted with <see cref="AcceptRequest"/> (their
    /// events stay on the listener's channel), or null when none arrives within <paramref name="wait"/>.
    /// </summary>
    public CmEvent? NextEvent(TimeSpan wait) => _events.Next(wait);

    /// <summary>A protection domain on <paramref name="context"/> (a device); it keeps the listener's id alive.</summary>
    public ProtectionDomain AllocatePd(IntPtr context) => new(context, _id);

    /// <summary>
    /// Accepts a CONNECT_REQUEST read with <see cref="NextEvent"/>: creates the QP (in <paramref name="pd"/> when
    /// given), runs <paramref name="beforeAccept"/> (post receives there), then rdma_accept with
    /// <paramref name="acceptData"/>. Returns at once; ESTABLISHED and DISCONNECTED arrive through
    /// <see cref="NextEvent"/>. On failure before the accept the request is rejected with <paramref name="rejectData"/>.
    /// </summary>
    public RdmaConnection AcceptRequest(in CmEvent request, ReadOnlySpan<byte> acceptData, ReadOnlySpan<byte> rejectData,
        RdmaConnectionOptions options, ProtectionDomain? pd = null, Action<RdmaConnection>? beforeAccept = null)
    {
        if (request.Type != Verbs.CmConnectRequest) throw new ArgumentException($"{request.TypeName} is not a connect request", nameof(request));
        return RdmaConnection.AcceptOnListenerChannel(_events, request.Id, request.PrivateData, acceptData, rejectData, options, pd, beforeAccept);
    }

    /// <summary>Rejects a CONNECT_REQUEST read with <see cref="NextEvent"/> (with private data saying why).</summary>
    public void Reject(in CmEvent request, ReadOnlySpan<byte> privateData)
    {
        if (request.Type != Verbs.CmConnectRequest) throw new ArgumentException($"{request.TypeName} is not a connect request", nameof(request));
        fixed (byte* p = privateData) Verbs.CmReject(request.Id, p, privateData.Length);
        Verbs.CmDestroyId(request.Id);
    }

    /// <summary>
    /// Waits for a connect request; <paramref name="decide"/> sees its private data and returns the data to
    /// accept with, or null to reject. Returns the connection, or null on rejection or timeout.
    /// </summary>
    public RdmaConnection? Accept(TimeSpan timeout, Func<byte[], byte[]?> decide, RdmaConnectionOptions? options = null)
    {
        options ??= new RdmaConnectionOptions();
        CmEvent? e = _events.Next(timeout);
        if (e == null) return null;
        if (e.Value.Type != Verbs.CmConnectRequest) throw new RdmaException($"listener: unexpected {e.Value.TypeName}", Math.Abs(e.Value.Status));
        byte[]? reply = decide(e.Value.PrivateData);
        if (reply == null)
        {
            Verbs.CmReject(e.Value.Id, null, 0);
            Verbs.CmDestroyId(e.Value.Id);
            return null;
        }
        return RdmaConnection.FromRequest(_events, e.Value.Id, e.Value.PrivateData, reply, options);
    }

    public void Dispose()
    {
        _id.Dispose();
        _events.Dispose();
    }
}
