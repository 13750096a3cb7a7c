using System.Runtime.InteropServices;

namespace StorageNode.Interop;

/// <summary>libsnverbs (native/shim/sn_verbs.c): libibverbs and librdmacm with flat parameters.</summary>
public static unsafe partial class Verbs
{
    internal const string Lib = "snverbs";

    // ibv_wr_opcode
    public const int WrRdmaWrite = 0;
    public const int WrRdmaWriteWithImm = 1;
    public const int WrSend = 2;
    public const int WrSendWithImm = 3;
    public const int WrRdmaRead = 4;
    public const int WrSendWithInvalidate = 9;
    // ibv_send_flags
    public const int SendFence = 1;
    public const int SendSignaled = 2;
    public const int SendSolicited = 4;
    public const int SendInline = 8;
    // ibv_access_flags
    public const int AccessLocalWrite = 1;
    public const int AccessRemoteWrite = 2;
    public const int AccessRemoteRead = 4;
    // ibv_wc_opcode
    public const uint WcSend = 0;
    public const uint WcRdmaWrite = 1;
    public const uint WcRdmaRead = 2;
    public const uint WcRecv = 128;
    public const uint WcRecvRdmaWithImm = 129;
    // rdma_cm_event_type
    public const int CmAddrResolved = 0;
    public const int CmAddrError = 1;
    public const int CmRouteResolved = 2;
    public const int CmRouteError = 3;
    public const int CmConnectRequest = 4;
    public const int CmConnectResponse = 5;
    public const int CmConnectError = 6;
    public const int CmUnreachable = 7;
    public const int CmRejected = 8;
    public const int CmEstablished = 9;
    public const int CmDisconnected = 10;
    public const int CmDeviceRemoval = 11;
    public const int CmTimewaitExit = 15;

    private static readonly Lazy<(bool Ok, string Reason)> State = new(Probe);

    /// <summary>True when libsnverbs (and so libibverbs/librdmacm) could be loaded.</summary>
    public static bool IsAvailable => State.Value.Ok;
    public static string UnavailableReason => State.Value.Reason;

    private static (bool, string) Probe()
    {
        try
        {
            sn_verbs_version();
            return (true, "");
        }
        catch (DllNotFoundException e)
        {
            return (false, $"libsnverbs.so is not available ({e.Message}); it needs rdma-core (libibverbs, librdmacm) at build and run time");
        }
        catch (EntryPointNotFoundException e)
        {
            return (false, $"libsnverbs.so is out of date: {e.Message}");
        }
    }

    [LibraryImport(Lib)] private static partial uint sn_verbs_version();

    [LibraryImport(Lib, EntryPoint = "sn_list_devices")] public static partial int ListDevices(byte* buf, int len);

    [LibraryImport(Lib, EntryPoint = "sn_cm_create_channel")] public static partial IntPtr CmCreateChannel(out int err);
    [LibraryImport(Lib, EntryPoint = "sn_cm_channel_fd")] public static partial int CmChannelFd(IntPtr ch);
    [LibraryImport(Lib, EntryPoint = "sn_cm_destroy_channel")] public static partial void CmDestroyChannel(IntPtr ch);
    [LibraryImport(Lib, EntryPoint = "sn_cm_create_id")] public static partial IntPtr CmCreateId(IntPtr ch, IntPtr context, out int err);
    [LibraryImport(Lib, EntryPoint = "sn_cm_destroy_id")] public static partial int CmDestroyId(IntPtr id);
    [LibraryImport(Lib, EntryPoint = "sn_cm_bind", StringMarshalling = StringMarshalling.Utf8)] public static partial int CmBind(IntPtr id, string ip, int port);
    [LibraryImport(Lib, EntryPoint = "sn_cm_listen")] public static partial int CmListen(IntPtr id, int backlog);
    [LibraryImport(Lib, EntryPoint = "sn_cm_local_port")] public static partial int CmLocalPort(IntPtr id);
    [LibraryImport(Lib, EntryPoint = "sn_cm_peer_addr")] public static partial int CmPeerAddr(IntPtr id, byte* buf, int len);
    [LibraryImport(Lib, EntryPoint = "sn_cm_resolve_addr", StringMarshalling = StringMarshalling.Utf8)] public static partial int CmResolveAddr(IntPtr id, string ip, int port, int timeoutMs);
    [LibraryImport(Lib, EntryPoint = "sn_cm_resolve_route")] public static partial int CmResolveRoute(IntPtr id, int timeoutMs);
    [LibraryImport(Lib, EntryPoint = "sn_cm_get_event")] public static partial int CmGetEvent(IntPtr ch, SnCmEvent* ev);
    [LibraryImport(Lib, EntryPoint = "sn_cm_ack_event")] public static partial int CmAckEvent(IntPtr ev);
    [LibraryImport(Lib, EntryPoint = "sn_cm_verbs")] public static partial IntPtr CmVerbs(IntPtr id);
    [LibraryImport(Lib, EntryPoint = "sn_cm_qp")] public static partial IntPtr CmQp(IntPtr id);
    [LibraryImport(Lib, EntryPoint = "sn_cm_create_qp")]
    public static partial int CmCreateQp(IntPtr id, IntPtr pd, IntPtr sendCq, IntPtr recvCq, int maxSendWr, int maxRecvWr, int maxSendSge, int maxRecvSge, int maxInline);
    [LibraryImport(Lib, EntryPoint = "sn_cm_destroy_qp")] public static partial void CmDestroyQp(IntPtr id);
    [LibraryImport(Lib, EntryPoint = "sn_cm_connect")] public static partial int CmConnect(IntPtr id, void* pdata, int len, int responderResources, int initiatorDepth, int retryCount, int rnrRetryCount);
    [LibraryImport(Lib, EntryPoint = "sn_cm_accept")] public static partial int CmAccept(IntPtr id, void* pdata, int len, int responderResources, int initiatorDepth);
    [LibraryImport(Lib, EntryPoint = "sn_cm_reject")] public static partial int CmReject(IntPtr id, void* pdata, int len);
    [LibraryImport(Lib, EntryPoint = "sn_cm_disconnect")] public static partial int CmDisconnect(IntPtr id);
    [LibraryImport(Lib, EntryPoint = "sn_cm_set_ack_timeout")] public static partial int CmSetAckTimeout(IntPtr id, int timeout);
    [LibraryImport(Lib, EntryPoint = "sn_cm_migrate")] public static partial int CmMigrate(IntPtr id, IntPtr channel);

    [LibraryImport(Lib, EntryPoint = "sn_alloc_pd")] public static partial IntPtr AllocPd(IntPtr ctx);
    [LibraryImport(Lib, EntryPoint = "sn_dealloc_pd")] public static partial int DeallocPd(IntPtr pd);
    [LibraryImport(Lib, EntryPoint = "sn_reg_mr")] public static partial IntPtr RegMr(IntPtr pd, void* addr, nuint len, int access, out int err);
    [LibraryImport(Lib, EntryPoint = "sn_mr_lkey")] public static partial uint MrLkey(IntPtr mr);
    [LibraryImport(Lib, EntryPoint = "sn_mr_rkey")] public static partial uint MrRkey(IntPtr mr);
    [LibraryImport(Lib, EntryPoint = "sn_dereg_mr")] public static partial int DeregMr(IntPtr mr);
    [LibraryImport(Lib, EntryPoint = "sn_create_comp_channel")] public static partial IntPtr CreateCompChannel(IntPtr ctx);
    [LibraryImport(Lib, EntryPoint = "sn_comp_channel_fd")] public static partial int CompChannelFd(IntPtr ch);
    [LibraryImport(Lib, EntryPoint = "sn_destroy_comp_channel")] public static partial int DestroyCompChannel(IntPtr ch);
    [LibraryImport(Lib, EntryPoint = "sn_create_cq")] public static partial IntPtr CreateCq(IntPtr ctx, int cqe, IntPtr compChannel, out int err);
    [LibraryImport(Lib, EntryPoint = "sn_destroy_cq")] public static partial int DestroyCq(IntPtr cq);
    [LibraryImport(Lib, EntryPoint = "sn_req_notify_cq")] public static partial int ReqNotifyCq(IntPtr cq, int solicitedOnly);
    [LibraryImport(Lib, EntryPoint = "sn_get_cq_event")] public static partial int GetCqEvent(IntPtr compChannel);
    [LibraryImport(Lib, EntryPoint = "sn_poll_cq")] public static partial int PollCq(IntPtr cq, SnWorkCompletion* wc, int max);
    [LibraryImport(Lib, EntryPoint = "sn_qp_num")] public static partial uint QpNum(IntPtr qp);
    [LibraryImport(Lib, EntryPoint = "sn_qp_timeouts")] public static partial int QpTimeouts(IntPtr qp, out int timeout, out int retryCount, out int rnrRetry);
    [LibraryImport(Lib, EntryPoint = "sn_post_send")]
    public static partial int PostSend(IntPtr qp, ulong wrId, int opcode, int flags, void* addr, uint len, uint lkey, ulong remoteAddr, uint rkey, uint immOrInvalidate);
    [LibraryImport(Lib, EntryPoint = "sn_post_send_batch")] public static partial int PostSendBatch(IntPtr qp, SnSendWr* wrs, int count, out int posted);
    [LibraryImport(Lib, EntryPoint = "sn_post_recv")] public static partial int PostRecv(IntPtr qp, ulong wrId, void* addr, uint len, uint lkey);
}

/// <summary>Layout of struct sn_wc (native/shim/sn_verbs.c).</summary>
[StructLayout(LayoutKind.Sequential, Size = 40)]
public struct SnWorkCompletion
{
    public ulong WrId;
    public uint Status;
    public uint Opcode;
    public uint ByteLen;
    public uint ImmData;
    public uint WcFlags;
    public uint QpNum;
    public uint VendorErr;
    public uint Reserved;
}

/// <summary>Layout of struct sn_send_wr (native/shim/sn_verbs.c): one send work request with one SGE.</summary>
[StructLayout(LayoutKind.Sequential, Size = 48)]
public struct SnSendWr
{
    public ulong WrId;
    public ulong Addr;
    public ulong RemoteAddr;
    public uint Length;
    public uint Lkey;
    public uint Rkey;
    public uint ImmOrInvalidate;
    public int Opcode;
    public int Flags;
}

/// <summary>Layout of struct sn_cm_event (native/shim/sn_verbs.c).</summary>
[StructLayout(LayoutKind.Sequential, Size = 104)]
public unsafe struct SnCmEvent
{
    public IntPtr Event;
    public IntPtr Id;
    public IntPtr ListenId;
    public int Type;
    public int Status;
    public byte PrivateDataLength;
    /// <summary>Connect request / response: the peer's offer as rdma_cm reports it (already seen from this side).</summary>
    public byte ResponderResources;
    public byte InitiatorDepth;
    public fixed byte Reserved[5];
    public fixed byte PrivateData[64];
}
