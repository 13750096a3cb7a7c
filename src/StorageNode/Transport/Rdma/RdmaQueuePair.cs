using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using StorageNode.Interop;
using StorageNode.Nvme.Rdma;
using StorageNode.Nvme.Spec;
using StorageNode.Rdma;
using StorageNode.Reactors;
using StorageNode.Target;

namespace StorageNode.Transport.Rdma;

/// <summary>Per-command state of the NVMe/RDMA transport.</summary>
internal sealed class RdmaRequest(QueuePair qpair, ushort slot) : NvmfRequest(qpair, slot)
{
    public RdmaDataKind Kind;
    public ulong RemoteAddress;
    public uint RemoteKey;
    /// <summary>The host asked for the response to invalidate <see cref="RemoteKey"/> (SGL subtype Fh).</summary>
    public bool Invalidate;
    /// <summary>In-capsule data still in receive buffer <see cref="RecvIndex"/> (waiting for a data buffer); else -1.</summary>
    public int RecvIndex = -1;
    public uint InCapsuleOffset;
}

/// <summary>
/// One NVMe/RDMA queue pair on the target side (RDMA transport binding): command capsules arrive as RDMA SENDs
/// into preallocated, registered receive buffers (64-byte SQE + in-capsule data); the target pulls write data
/// with RDMA READ, pushes read data with RDMA WRITE, and answers with the 16-byte CQE in a SEND (SEND with
/// invalidate when the host asked). Lives on one reactor, which polls its completion queue every iteration (an
/// <see cref="IReactorPoller"/>) and, when idle, sleeps on its completion channel (this source's descriptor).
/// Nothing on the I/O path allocates.
/// </summary>
internal sealed unsafe class RdmaQueuePair : QueuePair<RdmaRequest>, IReactorPoller
{
    private const int CqeSize = 16;
    private const int WcBatch = 32;
    private const uint KindRecv = 1;
    private const uint KindRead = 2;
    private const uint KindWrite = 3;
    private const uint KindSend = 4;

    private readonly RdmaTransport _transport;
    private readonly RdmaConnection _conn;
    private readonly PoolRegistration _pools;
    private readonly ILogger _log;
    private readonly string _peer;
    private readonly bool _eventMode;
    private readonly int _cmQid;

    // Receive buffers: one per host submission queue entry, each 64 bytes of SQE + the in-capsule data size.
    private readonly byte* _recvBase;
    private readonly int _recvStride;
    private readonly int _recvCount;
    private readonly uint _icd;
    private readonly MemoryRegion _recvMr;

    // Requests: twice the receive depth (a response whose send completion has not been polled yet still holds
    // its slot while the host may already reuse its submission queue entry).
    /// <summary>Commands received and not yet answered (bounded by the host's submission queue size).</summary>
    private int _active;
    private readonly byte* _cqes; // one response per slot (sent inline)
    private readonly SnWorkCompletion[] _wc = new SnWorkCompletion[WcBatch];
    // Send work requests queued this iteration, posted together at flush (one doorbell instead of one each).
    private readonly SnSendWr* _pending;
    private readonly int _pendingCap;
    private int _pendingCount;

    private bool _armed;
    private ushort _sqHeadReport;

    public long Receives;
    public long RdmaReads;
    public long RdmaWrites;
    /// <summary>Batched posts of send work requests (each one doorbell).</summary>
    public long Doorbells;
    // Steady-state allocation check: bytes allocated on the reactor thread from the 1024th command to the close
    // (everything the reactor did meanwhile, other queues included), reported in the close log.
    private const int AllocationMarkAt = 1024;
    private long _allocationMark = -1;

    /// <summary>Allocates and registers the receive buffers and posts them (before the connection is accepted).</summary>
    public RdmaQueuePair(RdmaConnection conn, Reactor reactor, NvmfTarget target, ListenerInfo listener, RdmaTransport transport,
        PoolRegistration pools, int cmQid, int recvDepth, ILogger log)
        : base(reactor, target, listener, 2 * recvDepth, static (q, i) => new RdmaRequest(q, i))
    {
        _conn = conn;
        _transport = transport;
        _pools = pools;
        _log = log;
        _cmQid = cmQid;
        _peer = conn.PeerAddress;
        _eventMode = reactor.Mode != PollMode.Busy;
        TargetOptions o = target.Options;
        _icd = cmQid == 0 ? o.AdminInCapsuleDataSize : o.InCapsuleDataSize;
        _recvCount = recvDepth;
        _recvStride = (int)((64 + _icd + 63) & ~63u);
        nuint recvBytes = (nuint)_recvStride * (nuint)_recvCount;
        _recvBase = (byte*)NativeMemory.AlignedAlloc(recvBytes, 4096);
        int slots = 2 * recvDepth;
        _cqes = (byte*)NativeMemory.AlignedAlloc((nuint)(CqeSize * slots), 64);
        NativeMemory.Clear(_cqes, (nuint)(CqeSize * slots));
        _pendingCap = 2 * slots; // at most two send work requests per slot at a time (RDMA WRITE + response)
        _pending = (SnSendWr*)NativeMemory.AlignedAlloc((nuint)(sizeof(SnSendWr) * _pendingCap), 64);
        try
        {
            _recvMr = pools.Pd.Register(_recvBase, recvBytes);
        }
        catch
        {
            NativeMemory.AlignedFree(_recvBase);
            NativeMemory.AlignedFree(_cqes);
            NativeMemory.AlignedFree(_pending);
            throw;
        }
        for (int i = 0; i < _recvCount; i++)
        {
            int rc = PostRecv(i);
            if (rc != 0)
            {
                _recvMr.Dispose();
                NativeMemory.AlignedFree(_recvBase);
                NativeMemory.AlignedFree(_cqes);
                NativeMemory.AlignedFree(_pending);
                throw new RdmaException("ibv_post_recv", -rc);
            }
        }
    }

    public RdmaConnection Connection => _conn;
    public override int Fd => _conn.Cq.Fd;
    public override string PeerAddress => _peer;
    public override uint InCapsuleDataSize => _icd;
    public int ReceiveDepth => _recvCount;

    private static ulong WrId(uint kind, int index) => ((ulong)kind << 32) | (uint)index;

    private int PostRecv(int index)
    {
        byte* buf = _recvBase + (nint)index * _recvStride;
        return _conn.TryPostRecv(WrId(KindRecv, index), buf, (uint)_recvStride, _recvMr.Lkey);
    }

    /// <summary>Gives a receive buffer back to the host; false when the connection is (now) closed.</summary>
    private bool Repost(int index)
    {
        if (IsClosed) return false;
        int rc = PostRecv(index);
        if (rc == 0) return true;
        Close($"cannot post a receive buffer: {Libc.StrError(-rc)}");
        return false;
    }

    /// <summary>Queues one send work request; <see cref="Flush"/> posts everything queued in one call.</summary>
    private void QueueSend(uint kind, int slot, int opcode, int flags, byte* addr, uint length, uint lkey, ulong remoteAddress, uint rkey, uint invalidate)
    {
        if (_pendingCount == _pendingCap) PostPending(); // sized so this cannot happen
        if (IsClosed) return;
        SnSendWr* w = _pending + _pendingCount++;
        w->WrId = WrId(kind, slot);
        w->Addr = (ulong)addr;
        w->RemoteAddr = remoteAddress;
        w->Length = length;
        w->Lkey = lkey;
        w->Rkey = rkey;
        w->ImmOrInvalidate = invalidate;
        w->Opcode = opcode;
        w->Flags = flags;
        if (_pendingCount == 1) Reactor.MarkDirty(this);
    }

    private void PostPending()
    {
        int n = _pendingCount;
        if (n == 0 || IsClosed) return;
        _pendingCount = 0;
        Doorbells++;
        int rc = _conn.TryPostSendBatch(_pending, n, out int posted);
        if (rc != 0) Close($"cannot post {n - posted} of {n} send work request(s): {Libc.StrError(-rc)}");
    }

    // ====================================================================== polling

    /// <summary>Reactor poller: reaps completions; when there are none, arms the CQ so an idle reactor can sleep.</summary>
    public int Poll()
    {
        if (IsClosed) return 0;
        try
        {
            int n = Reap();
            if (n == 0 && _eventMode && !_armed && !IsClosed)
            {
                _conn.Cq.Arm();
                _armed = true;
                n = Reap(); // a completion that landed before the arm raises no event
            }
            return n;
        }
        catch (Exception e)
        {
            Close($"internal error: {e.Message}");
            return 1;
        }
    }

    /// <summary>The completion channel fired (the CQ was armed): consume the event and reap.</summary>
    public override int OnReady(uint events)
    {
        if (IsClosed) return 0;
        _conn.Cq.AcknowledgeEvents();
        _armed = false;
        return Reap() + 1;
    }

    // Capsules reaped now reached this node no earlier than this (the last time the CQ was seen empty).
    private long _arrivedAfter = System.Diagnostics.Stopwatch.GetTimestamp();

    private int Reap()
    {
        int total = 0;
        Span<SnWorkCompletion> wc = _wc;
        for (int round = 0; round < 4 && !IsClosed; round++)
        {
            int n = _conn.Cq.Poll(wc);
            for (int i = 0; i < n && !IsClosed; i++) OnCompletion(ref wc[i]);
            total += n;
            if (n < WcBatch)
            {
                // The CQ was empty after this iteration began: what arrives later arrived after it.
                _arrivedAfter = Reactor.Now;
                break;
            }
        }
        return total;
    }

    private void OnCompletion(ref SnWorkCompletion wc)
    {
        uint kind = (uint)(wc.WrId >> 32);
        int index = (int)(uint)wc.WrId;
        if (wc.Status != 0)
        {
            CompletionError(ref wc, kind);
            return;
        }
        switch (kind)
        {
            case KindRecv:
                OnReceive(index, wc.ByteLen);
                break;
            case KindRead:
                OnReadDone(Requests[index]);
                break;
            case KindSend:
                Release(Requests[index]);
                break;
            default:
                break; // RDMA WRITEs are unsignaled; their completions arrive only on error
        }
    }

    private void CompletionError(ref SnWorkCompletion wc, uint kind)
    {
        const uint FlushError = 5; // IBV_WC_WR_FLUSH_ERR: the QP is already in the error state
        string what = kind switch { KindRecv => "receive", KindRead => "RDMA READ", KindWrite => "RDMA WRITE", KindSend => "send", _ => "work request" };
        if (wc.Status == FlushError) Close($"{what} flushed (connection lost)");
        else if (kind == KindRecv && wc.Status is 1 or 2)
            Close($"receive failed: completion status {wc.Status} (a capsule larger than the {_recvStride}-byte receive buffer?)");
        else Close($"{what} failed: completion status {wc.Status} (vendor error {wc.VendorErr})");
    }

    // ====================================================================== commands

    private void OnReceive(int index, uint byteLen)
    {
        if ((uint)index >= (uint)_recvCount)
        {
            Close($"receive completion for unknown buffer {index}");
            return;
        }
        if (++Receives == AllocationMarkAt) _allocationMark = GC.GetAllocatedBytesForCurrentThread();
        byte* buf = _recvBase + (nint)index * _recvStride;
        if (byteLen < 64)
        {
            Close($"command capsule of {byteLen} bytes (less than a 64-byte SQE)");
            return;
        }
        // A host may have at most its submission queue size of commands outstanding.
        int limit = CommandLimit(_recvCount);
        if (_active >= limit || TakeRequest() is not { } req)
        {
            Close($"host exceeded the submission queue size ({limit} commands outstanding)");
            return;
        }
        _active++;
        req.Sqe = *(SubmissionQueueEntry*)buf;
        req.Data = null;
        req.Kind = RdmaDataKind.None;
        req.Invalidate = false;
        req.RecvIndex = -1;
        req.ArrivedAfter = _arrivedAfter;
        req.State = RequestState.Executing;
        _sqHeadReport = AdvanceSqHead();

        NvmeStatus st = RdmaSgl.Parse(req.Sqe.Dptr, byteLen - 64, out RdmaDataDescriptor d);
        if (!st.IsSuccess)
        {
            if (!Repost(index)) return;
            req.Status = st;
            req.Complete();
            return;
        }
        req.Kind = d.Kind;
        req.RemoteAddress = d.Address;
        req.RemoteKey = d.Key;
        req.Invalidate = d.Invalidate;

        if (req.Sqe.Opcode == AdminOpcode.FabricsCommand && req.Sqe.FabricsType == FabricsCommandType.Connect && !CheckConnect(req))
        {
            if (!Repost(index)) return;
            req.Complete();
            return;
        }
        if (!CommandDispatcher.Prepare(req, d.Length))
        {
            if (!Repost(index)) return;
            req.Complete();
            return;
        }
        switch (d.Kind)
        {
            case RdmaDataKind.None:
                if (!Repost(index)) return;
                CommandDispatcher.Execute(req);
                return;
            case RdmaDataKind.InCapsule:
                if (req.Direction != DataDirection.HostToController)
                {
                    if (!Repost(index)) return;
                    req.Fail(NvmeStatus.Generic(GenericStatus.SglDescriptorTypeInvalid));
                    return;
                }
                // The receive buffer goes back to the host at once: copy the data into a pool buffer (the bdev
                // may need it aligned, and the buffer's life would otherwise tie up a receive).
                req.RecvIndex = index;
                req.InCapsuleOffset = d.Offset;
                StartDataPhase(req);
                return;
            default:
                if (!Repost(index)) return;
                StartDataPhase(req);
                return;
        }
    }

    /// <summary>The Connect command must name the queue the connection was made for (CM private data QID).</summary>
    private bool CheckConnect(RdmaRequest req)
    {
        ref ConnectCommand cmd = ref Unsafe.As<SubmissionQueueEntry, ConnectCommand>(ref req.Sqe);
        if (cmd.Qid != _cmQid)
        {
            _log.LogWarning("{Peer}: Connect for queue {Qid} on the RDMA connection made for queue {CmQid}", _peer, cmd.Qid, _cmQid);
            req.Cqe.Dw0 = ConnectField.Qid;
            req.Status = NvmeStatus.CommandSpecific(FabricsStatus.ConnectInvalidParameters);
            return false;
        }
        if (cmd.SqSize + 1 > _recvCount)
        {
            _log.LogWarning("{Peer}: Connect SQSIZE {SqSize} exceeds the {Depth} entries negotiated (HSQSIZE)", _peer, cmd.SqSize, _recvCount);
            req.Cqe.Dw0 = ConnectField.SqSize;
            req.Status = NvmeStatus.CommandSpecific(FabricsStatus.ConnectInvalidParameters);
            return false;
        }
        return true;
    }

    protected override void BeginDataPhase(RdmaRequest req, byte* buffer)
    {
        req.Data = buffer;
        if (req.Kind == RdmaDataKind.InCapsule)
        {
            int index = req.RecvIndex;
            byte* src = _recvBase + (nint)index * _recvStride + 64 + req.InCapsuleOffset;
            Buffer.MemoryCopy(src, buffer, req.Length, req.Length);
            req.RecvIndex = -1;
            if (!Repost(index)) return;
            req.State = RequestState.Executing;
            CommandDispatcher.Execute(req);
            return;
        }
        if (req.Direction == DataDirection.HostToController)
        {
            req.State = RequestState.TransferringHostData;
            QueueSend(KindRead, req.Slot, Verbs.WrRdmaRead, Verbs.SendSignaled, buffer, req.Length, _pools.Lkey(buffer), req.RemoteAddress, req.RemoteKey, 0);
            RdmaReads++;
            return;
        }
        req.State = RequestState.Executing;
        CommandDispatcher.Execute(req);
    }

    private void OnReadDone(RdmaRequest req)
    {
        if (req.State != RequestState.TransferringHostData)
        {
            Close($"RDMA READ completion for a command in state {req.State}");
            return;
        }
        req.State = RequestState.Executing;
        CommandDispatcher.Execute(req);
    }

    public override int Flush()
    {
        if (IsClosed) return 0;
        int work = 0;
        if (BufferWaiters > 0)
        {
            ServeBufferWaiters();
            if (BufferWaiters > 0 && !IsClosed) Reactor.MarkDirty(this);
            work++;
        }
        if (_pendingCount > 0)
        {
            PostPending();
            work++;
        }
        return work;
    }

    // ====================================================================== completion

    public override void CompleteRequest(NvmfRequest r)
    {
        var req = (RdmaRequest)r;
        if (IsClosed)
        {
            Release(req);
            return;
        }
        if (req.State == RequestState.Completing || req.State == RequestState.Free) return;
        req.State = RequestState.Completing;
        _active--;
        if (req.RecvIndex >= 0)
        {
            // Failed before its in-capsule data was consumed.
            int index = req.RecvIndex;
            req.RecvIndex = -1;
            if (!Repost(index)) return;
        }
        ref CompletionQueueEntry cqe = ref req.Cqe;
        cqe.Cid = req.Sqe.Cid;
        cqe.SqId = Qid;
        cqe.SqHead = SqFlowControlDisabled ? (ushort)0xFFFF : _sqHeadReport;

        if (req.Status.IsSuccess && req.Direction == DataDirection.ControllerToHost && req.Kind == RdmaDataKind.Keyed && req.Data != null)
        {
            // Unsignaled: the response SEND behind it completes only after it (same send queue, in order).
            QueueSend(KindWrite, req.Slot, Verbs.WrRdmaWrite, 0, req.Data, req.Length, _pools.Lkey(req.Data), req.RemoteAddress, req.RemoteKey, 0);
            RdmaWrites++;
        }
        byte* c = _cqes + CqeSize * req.Slot;
        *(CompletionQueueEntry*)c = cqe;
        // The response: the CQE, inline (copied at post time; this slot's CQE stays put until its send completes).
        if (req.Invalidate)
            QueueSend(KindSend, req.Slot, Verbs.WrSendWithInvalidate, Verbs.SendSignaled | Verbs.SendInline, c, CqeSize, 0, 0, 0, req.RemoteKey);
        else
            QueueSend(KindSend, req.Slot, Verbs.WrSend, Verbs.SendSignaled | Verbs.SendInline, c, CqeSize, 0, 0, 0, 0);
    }

    protected override void OnReleasing(RdmaRequest req)
    {
        req.RecvIndex = -1;
        if (req.State != RequestState.Completing) _active--;
    }

    // ====================================================================== teardown

    /// <summary>
    /// Disconnects, destroys the QP (after which the device touches none of our buffers), and ends this queue's
    /// part in its controller. Reactor thread only.
    /// </summary>
    public override void Close(string reason)
    {
        long allocated = _allocationMark >= 0 && Reactor.IsCurrentThread ? GC.GetAllocatedBytesForCurrentThread() - _allocationMark : -1;
        if (!MarkClosed()) return;
        _log.LogInformation("{Peer}: RDMA queue {Qid} closed: {Reason} ({Commands} commands, {Reads} RDMA READs, {Writes} RDMA WRITEs, {Doorbells} send doorbells{Allocation}{InFlight})",
            _peer, Connected ? Qid.ToString() : "-", reason, Receives, RdmaReads, RdmaWrites, Doorbells,
            allocated >= 0 ? $"; reactor allocated {allocated} B over the last {Receives - AllocationMarkAt} commands" : "", InFlight());
        Reactor.Unregister(this);
        Reactor.RemovePoller(this);
        _transport.OnQueueClosed(this);
        try
        {
            _conn.Disconnect();
        }
        catch (Exception e)
        {
            _log.LogDebug("{Peer}: rdma_disconnect: {Error}", _peer, e.Message);
        }
        _conn.Dispose();
        _recvMr.Dispose();

        _pendingCount = 0;
        DetachAndRelease(reason);
    }

    /// <summary>The accept failed after this queue was built (its connection is already gone): free what it holds.</summary>
    public void Abandon()
    {
        if (!MarkClosed()) return;
        _recvMr.Dispose();
        FreeOnce();
    }

    /// <summary>What the queue's commands were doing (for the close log): empty when none was outstanding.</summary>
    private string InFlight()
    {
        int reading = 0, waiting = 0, executing = 0, responding = 0;
        foreach (RdmaRequest r in Requests)
        {
            switch (r.State)
            {
                case RequestState.TransferringHostData: reading++; break;
                case RequestState.NeedBuffer: waiting++; break;
                case RequestState.Executing: executing++; break;
                case RequestState.Completing: responding++; break;
            }
        }
        if (reading + waiting + executing + responding == 0) return "";
        DataBufferPools p = Reactor.Pools;
        return $"; in flight: {reading} RDMA READ, {waiting} waiting for a buffer ({BufferWaiters} queued; pools free {p.Small.Available}/{p.Medium.Available}/{p.Large.Available}), " +
            $"{executing} executing, {responding} responding, {_active} unanswered";
    }

    protected override void FreeNativeMemory()
    {
        NativeMemory.AlignedFree(_recvBase);
        NativeMemory.AlignedFree(_cqes);
        NativeMemory.AlignedFree(_pending);
    }
}
