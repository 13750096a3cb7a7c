using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Interop;
using StorageNode.Nvme.Rdma;
using StorageNode.Nvme.Spec;
using StorageNode.Rdma;

namespace StorageNode.Nvme.Host;

public sealed record RdmaHostQueueOptions
{
    /// <summary>Commands outstanding (the host submission queue size, HSQSIZE + 1; also HRQSIZE).</summary>
    public int Depth { get; init; } = 32;
    /// <summary>Largest write sent in-capsule (0: none); set it from the controller's IOCCSZ.</summary>
    public uint InCapsuleDataSize { get; init; }
    /// <summary>Send buffer per command: the 64-byte SQE plus in-capsule data (raw capsules may use all of it).</summary>
    public int CapsuleBufferSize { get; init; } = 64 + 8192 + 4096;
    /// <summary>RDMA READs the controller may have outstanding against this host (responder resources).</summary>
    public int ReadDepth { get; init; } = 16;
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>The QP's local ACK timeout exponent, 4.096 µs × 2^value (1–31); 0: rdma_cm's default.</summary>
    public int AckTimeout { get; init; }
    /// <summary>A completion channel: the queue arms its CQ when idle and <see cref="RdmaHostQueue.Fd"/> wakes a sleeper.</summary>
    public bool EventMode { get; init; }
    /// <summary>Capsule sends are queued and posted together by <see cref="RdmaHostQueue.SendPending"/> (one doorbell).</summary>
    public bool BatchSends { get; init; }
    /// <summary>
    /// Picks the protection domain for the device the address resolved to (a caller's shared PD, whose
    /// registrations commands may then name); null, or a null answer: the connection's own PD.
    /// </summary>
    public Func<IntPtr, ProtectionDomain?>? ProtectionDomainFor { get; init; }
}

/// <summary>The controller rejected the RDMA connection; <see cref="Status"/> is its NVMe/RDMA reject status.</summary>
public sealed class NvmeRdmaRejectedException(RdmaCmStatus? status, int cmStatus)
    : Exception($"NVMe/RDMA connection rejected: {(status is { } s ? RdmaCm.Describe(s) : $"no NVMe/RDMA status (rdma_cm status {cmStatus})")}")
{
    public RdmaCmStatus? Status { get; } = status;
}

/// <summary>
/// The host side of one NVMe/RDMA queue (the role <see cref="TcpHostQueue"/> plays for NVMe/TCP): connects
/// with the NVMe/RDMA private data, sends command capsules (SQE + in-capsule data) with SEND, describes other
/// data with keyed SGL data blocks in memory registered here (the controller moves it with RDMA READ/WRITE),
/// and receives 16-byte responses. Not thread-safe: one thread submits and polls. A command completes when its
/// response arrived and its capsule's send completed.
/// Data in a region added with <see cref="AddRegion"/> (or passed explicitly) moves with no copy here: the
/// controller reads or writes it in place. Other data is copied through the command's own registered slot
/// buffer when it fits (<see cref="BounceCopies"/>), else registered for the one command
/// (<see cref="TemporaryRegistrations"/>); the counters show which path a caller's data took.
/// </summary>
public sealed unsafe class RdmaHostQueue : IHostQueue
{
    private const int RecvStride = 64;
    private const int WcBatch = 32;
    private const ulong RecvFlag = 1UL << 40;
    private const int ScratchSize = 8192;

    private struct Slot
    {
        public bool Busy;
        public bool Responded;
        public bool Sent;
        public long Token;
        public IHostCompletion? Callback;
        public CompletionQueueEntry Cqe;
        /// <summary>Read data bounced through the slot buffer goes here on completion.</summary>
        public byte* BounceTo;
        public uint BounceLength;
        /// <summary>The caller's memory registered for this command alone.</summary>
        public MemoryRegion? TempMr;
    }

    private readonly RdmaConnection _conn;
    private readonly RdmaHostQueueOptions _opt;
    private readonly Slot[] _slots;
    private readonly int[] _free;
    private int _freeCount;
    private readonly int _stride;
    private readonly byte* _send;
    private readonly byte* _recv;
    private readonly byte* _scratch;
    private readonly MemoryRegion _sendMr;
    private readonly MemoryRegion _recvMr;
    private readonly MemoryRegion _scratchMr;
    private readonly SnWorkCompletion[] _wc = new SnWorkCompletion[WcBatch];
    private readonly SnSendWr* _pending;
    private int _pendingCount;
    private MemoryRegion[] _regions = [];
    private bool _armed;
    private string? _error;
    private bool _disposed;

    /// <summary>Bytes the controller moved straight in or out of caller memory (keyed SGLs on registered regions).</summary>
    public long ZeroCopyBytes;
    /// <summary>Bytes of writes sent in-capsule (copied into the capsule, as the binding does for small writes).</summary>
    public long InCapsuleBytes;
    /// <summary>Commands whose data was copied through the slot buffer (not in a registered region).</summary>
    public long BounceCopies;
    /// <summary>Commands whose data was registered for that command alone.</summary>
    public long TemporaryRegistrations;
    /// <summary>Posts of send work requests (each one doorbell).</summary>
    public long Doorbells;

    public ushort Qid { get; }
    public string Transport => "rdma";
    public int Depth => _slots.Length;
    public bool EventMode { get; }
    /// <summary>Sends wait for <see cref="SendPending"/> (one doorbell for many) instead of going at once.</summary>
    public bool BatchSends { get; set; }
    /// <summary>The completion channel (event mode), else -1.</summary>
    public int Fd => _conn.Cq.Fd;
    public bool NeedsPolling => true;
    public bool HasPendingSends => _pendingCount > 0;
    public int Outstanding => _slots.Length - _freeCount;
    /// <summary>CRQSIZE from the controller's accept (null when it sent none).</summary>
    public ushort? ControllerReceiveQueueSize { get; }
    public uint InCapsuleDataSize { get; set; }
    public bool IsBroken => _error != null;
    public string? Error => _error;
    public RdmaConnection Connection => _conn;
    /// <summary>A registered 8 KiB buffer for small admin data (Connect data, Identify, log pages).</summary>
    public byte* Scratch => _scratch;
    public MemoryRegion ScratchRegion => _scratchMr;

    private RdmaHostQueue(RdmaConnection conn, ushort qid, RdmaHostQueueOptions o)
    {
        _conn = conn;
        _opt = o;
        Qid = qid;
        InCapsuleDataSize = o.InCapsuleDataSize;
        EventMode = o.EventMode;
        BatchSends = o.BatchSends;
        ControllerReceiveQueueSize = RdmaCm.TryParseAccept(conn.PeerPrivateData);
        int depth = o.Depth;
        _slots = new Slot[depth];
        _free = new int[depth];
        for (int i = 0; i < depth; i++) _free[i] = depth - 1 - i;
        _freeCount = depth;
        _stride = (o.CapsuleBufferSize + 63) & ~63;
        _send = (byte*)NativeMemory.AlignedAlloc((nuint)(_stride * depth), 4096);
        _recv = (byte*)NativeMemory.AlignedAlloc((nuint)(RecvStride * depth), 4096);
        _scratch = (byte*)NativeMemory.AlignedAlloc(ScratchSize, 4096);
        NativeMemory.Clear(_scratch, ScratchSize);
        // Remote access: a slot's buffer past its SQE also bounces data that is not in a registered region.
        _sendMr = conn.Register(_send, (nuint)(_stride * depth), remoteRead: true, remoteWrite: true);
        _pending = (SnSendWr*)NativeMemory.AllocZeroed((nuint)(sizeof(SnSendWr) * (depth + 1)));
        _recvMr = conn.Register(_recv, (nuint)(RecvStride * depth));
        _scratchMr = conn.Register(_scratch, ScratchSize, remoteRead: true, remoteWrite: true);
        for (int i = 0; i < depth; i++) PostRecv(i);
    }

    /// <summary>
    /// Connects queue <paramref name="qid"/> of a controller at <paramref name="address"/>:<paramref name="port"/>
    /// (rdma_cm), asking for <see cref="RdmaHostQueueOptions.Depth"/> entries. A reject throws
    /// <see cref="NvmeRdmaRejectedException"/> with the controller's status.
    /// </summary>
    public static RdmaHostQueue Connect(string address, int port, ushort qid, RdmaHostQueueOptions? options = null)
        => Connect(address, port, qid, RdmaCm.BuildRequest(qid, (ushort)(options ?? new()).Depth, (ushort)((options ?? new()).Depth - 1)), options);

    /// <summary>Connects with caller-made private data (tests of a controller's checks).</summary>
    public static RdmaHostQueue Connect(string address, int port, ushort qid, ReadOnlySpan<byte> privateData, RdmaHostQueueOptions? options = null)
    {
        options ??= new RdmaHostQueueOptions();
        RdmaConnection conn;
        try
        {
            conn = RdmaConnection.Connect(address, port, privateData, new RdmaConnectionOptions
            {
                SendQueueDepth = options.Depth + 1,
                RecvQueueDepth = options.Depth,
                MaxInline = 0,
                ReadDepth = options.ReadDepth,
                Timeout = options.ConnectTimeout,
                EventMode = options.EventMode,
                ProtectionDomainFor = options.ProtectionDomainFor,
                AckTimeout = options.AckTimeout,
            });
        }
        catch (RdmaRejectedException e)
        {
            throw new NvmeRdmaRejectedException(RdmaCm.TryParseReject(e.PrivateData), 0);
        }
        try
        {
            return new RdmaHostQueue(conn, qid, options);
        }
        catch
        {
            conn.Dispose();
            throw;
        }
    }

    /// <summary>Registers caller memory that commands may name in keyed SGLs (the controller reads and writes it).</summary>
    public MemoryRegion Register(byte* address, nuint length) => _conn.Register(address, length, remoteRead: true, remoteWrite: true);

    private void PostRecv(int i)
    {
        int rc = _conn.TryPostRecv(RecvFlag | (uint)i, _recv + i * RecvStride, 16, _recvMr.Lkey);
        if (rc != 0) Fail($"ibv_post_recv: {Libc.StrError(-rc)}");
    }

    /// <summary>
    /// Adds a region (registered in this queue's protection domain, owned by the caller, alive as long as the
    /// queue) whose memory commands may name without a copy. Not thread-safe with submissions.
    /// </summary>
    public void AddRegion(MemoryRegion region) => _regions = [.. _regions, region];

    private MemoryRegion? FindRegion(byte* data, uint length)
    {
        MemoryRegion[] r = _regions;
        for (int i = 0; i < r.Length; i++)
            if (r[i].Contains(data, length)) return r[i];
        return null;
    }

    /// <summary>
    /// Queues a command (CID = its slot). Writes up to <see cref="InCapsuleDataSize"/> go in-capsule; other data
    /// must lie in <paramref name="region"/> and is described by a keyed SGL. False when every slot is busy.
    /// </summary>
    public bool TrySubmit(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, MemoryRegion? region,
        IHostCompletion callback, long token)
    {
        if (region == null && length > 0 && !(direction == DataDirection.HostToController && length <= InCapsuleDataSize && 64 + length <= _stride))
            throw new ArgumentException("the data must lie in a region registered with this queue", nameof(region));
        if (region != null && length > 0 && !region.Contains(data, length))
            throw new ArgumentException("the data must lie in a region registered with this queue", nameof(region));
        return Submit(sqe, data, length, direction, region, callback, token);
    }

    /// <summary>
    /// Queues a command whatever memory its data is in: a region added with <see cref="AddRegion"/> (no copy),
    /// else the slot's bounce buffer, else a registration for this command. False when every slot is busy.
    /// </summary>
    public bool TrySubmit(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, IHostCompletion callback, long token)
        => Submit(sqe, data, length, direction, null, callback, token);

    /// <summary>
    /// As <see cref="TrySubmit(in SubmissionQueueEntry, byte*, uint, DataDirection, IHostCompletion, long)"/>, except that
    /// data in a region added with <see cref="AddRegion"/> is read by the controller in place however small it is (no copy
    /// here, not even into the capsule: a mirrored write's copy, read by the keeper from the owner's pools).
    /// </summary>
    public bool TrySubmitInPlace(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, IHostCompletion callback, long token)
        => Submit(sqe, data, length, direction, length > 0 ? FindRegion(data, length) : null, callback, token, inPlace: true);

    private bool Submit(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, MemoryRegion? region,
        IHostCompletion callback, long token, bool inPlace = false)
    {
        if (_error != null) throw new NvmeTransportException(_error);
        if (_freeCount == 0) return false;
        int slot = _free[--_freeCount];
        ref Slot s = ref _slots[slot];
        s = new Slot { Busy = true, Token = token, Callback = callback };
        byte* buf = _send + slot * _stride;
        SubmissionQueueEntry e = sqe;
        uint inCapsule = 0;
        if (length == 0 || direction == DataDirection.None)
        {
            e.Dptr = RdmaSgl.Keyed(0, 0, 0, invalidate: false);
        }
        else if (direction == DataDirection.HostToController && length <= InCapsuleDataSize && 64 + length <= _stride && !(inPlace && region != null))
        {
            e.Dptr = SglDescriptor.InCapsule(length);
            Buffer.MemoryCopy(data, buf + 64, length, length);
            inCapsule = length;
            InCapsuleBytes += length;
        }
        else
        {
            region ??= FindRegion(data, length);
            ulong address = (ulong)data;
            uint rkey;
            if (region != null)
            {
                rkey = region.Rkey;
                ZeroCopyBytes += length;
            }
            else if (64 + length <= _stride)
            {
                byte* bounce = buf + 64;
                if (direction == DataDirection.HostToController) Buffer.MemoryCopy(data, bounce, length, length);
                else
                {
                    s.BounceTo = data;
                    s.BounceLength = length;
                }
                address = (ulong)bounce;
                rkey = _sendMr.Rkey;
                BounceCopies++;
            }
            else
            {
                try
                {
                    s.TempMr = _conn.Register(data, length, remoteRead: true, remoteWrite: true);
                }
                catch
                {
                    s = default;
                    _free[_freeCount++] = slot;
                    throw;
                }
                rkey = s.TempMr.Rkey;
                TemporaryRegistrations++;
            }
            e.Dptr = RdmaSgl.Keyed(address, length, rkey, invalidate: false);
        }
        e.Flags = (byte)((e.Flags & ~CommandFlags.PsdtMask) | CommandFlags.PsdtSgl);
        e.Cid = (ushort)slot;
        *(SubmissionQueueEntry*)buf = e;
        QueueSend(slot, buf, 64 + inCapsule);
        return true;
    }

    /// <summary>
    /// Sends <paramref name="sqe"/> exactly as given (its SGL untouched; only CID is set to the slot) followed by
    /// <paramref name="capsuleData"/>: for tests of a controller's handling of bad capsules.
    /// </summary>
    public bool TrySubmitRaw(in SubmissionQueueEntry sqe, ReadOnlySpan<byte> capsuleData, IHostCompletion callback, long token)
    {
        if (64 + capsuleData.Length > _stride) throw new ArgumentException($"a capsule holds at most {_stride - 64} data bytes here", nameof(capsuleData));
        if (_error != null) throw new NvmeTransportException(_error);
        if (_freeCount == 0) return false;
        int slot = _free[--_freeCount];
        _slots[slot] = new Slot { Busy = true, Token = token, Callback = callback };
        byte* buf = _send + slot * _stride;
        *(SubmissionQueueEntry*)buf = sqe;
        ((SubmissionQueueEntry*)buf)->Cid = (ushort)slot;
        if (!capsuleData.IsEmpty) capsuleData.CopyTo(new Span<byte>(buf + 64, capsuleData.Length));
        QueueSend(slot, buf, (uint)(64 + capsuleData.Length));
        return true;
    }

    /// <summary>Sends <paramref name="length"/> raw bytes as one capsule (even shorter than an SQE); no response is expected.</summary>
    public void SendRawBytes(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > _stride) throw new ArgumentException("too large", nameof(bytes));
        if (_freeCount == 0) throw new InvalidOperationException("no free slot");
        int slot = _free[--_freeCount];
        _slots[slot] = new Slot { Busy = true, Responded = true };
        byte* buf = _send + slot * _stride;
        bytes.CopyTo(new Span<byte>(buf, bytes.Length));
        QueueSend(slot, buf, (uint)bytes.Length);
    }

    private void QueueSend(int slot, byte* buf, uint length)
    {
        SnSendWr* w = _pending + _pendingCount++;
        w->WrId = (ulong)slot;
        w->Addr = (ulong)buf;
        w->RemoteAddr = 0;
        w->Length = length;
        w->Lkey = _sendMr.Lkey;
        w->Rkey = 0;
        w->ImmOrInvalidate = 0;
        w->Opcode = Verbs.WrSend;
        w->Flags = Verbs.SendSignaled;
        if (!BatchSends) SendPending();
    }

    /// <summary>Posts the queued capsule sends chained (one doorbell); never throws (a failure breaks the queue).</summary>
    public int SendPending()
    {
        int n = _pendingCount;
        if (n == 0 || _error != null) return 0;
        _pendingCount = 0;
        Doorbells++;
        int rc = _conn.TryPostSendBatch(_pending, n, out int posted);
        if (rc != 0) Fail($"ibv_post_send: {n - posted} of {n} capsule(s) not posted: {Libc.StrError(-rc)}");
        return n;
    }

    /// <summary>Posts queued sends, reaps completions and delivers finished commands. Throws once broken.</summary>
    public int Poll()
    {
        if (_error != null) throw new NvmeTransportException(_error);
        SendPending();
        return Reap();
    }

    /// <summary>
    /// Reaps completions (never throws); in event mode, when there were none, arms the CQ (and reaps once more:
    /// a completion that landed before the arm raises no event) so a sleeper on <see cref="Fd"/> wakes for the next.
    /// </summary>
    public int Progress()
    {
        int n = Reap();
        if (n == 0 && EventMode && !_armed && _error == null)
        {
            _conn.Cq.Arm();
            _armed = true;
            n = Reap();
        }
        return n;
    }

    /// <summary>The completion channel fired: consume the event and reap.</summary>
    public int OnReadable()
    {
        if (_error != null) return 0;
        _conn.Cq.AcknowledgeEvents();
        _armed = false;
        return Reap() + 1;
    }

    /// <summary>Waits up to <paramref name="timeoutMs"/> on the connection's rdma_cm events: a disconnect breaks the queue.</summary>
    public void WaitReadable(int timeoutMs) => CheckConnection(TimeSpan.FromMilliseconds(timeoutMs));

    /// <summary>Reads this connection's rdma_cm events (waiting up to <paramref name="wait"/>): a disconnect or error breaks the queue.</summary>
    public void CheckConnection(TimeSpan wait)
    {
        if (_error != null) return;
        CmEvent? e;
        try
        {
            e = _conn.PollEvent(wait);
        }
        catch (RdmaException ex)
        {
            Fail($"rdma_cm: {ex.Message}");
            return;
        }
        if (e is { } ev && ev.Type is Verbs.CmDisconnected or Verbs.CmDeviceRemoval or Verbs.CmConnectError or Verbs.CmUnreachable or Verbs.CmRejected)
            Fail($"the controller's side went away ({ev.TypeName})");
    }

    private int Reap()
    {
        if (_error != null) return 0;
        int done = 0;
        int n = _conn.Cq.Poll(_wc);
        for (int i = 0; i < n && _error == null; i++)
        {
            ref SnWorkCompletion wc = ref _wc[i];
            if (wc.Status != 0)
            {
                Fail($"{((wc.WrId & RecvFlag) != 0 ? "receive" : "send")} completion status {wc.Status} (vendor error {wc.VendorErr})");
                break;
            }
            if ((wc.WrId & RecvFlag) != 0)
            {
                int r = (int)(uint)wc.WrId;
                if (wc.ByteLen != 16)
                {
                    Fail($"response of {wc.ByteLen} bytes (a CQE is 16)");
                    break;
                }
                CompletionQueueEntry cqe = *(CompletionQueueEntry*)(_recv + r * RecvStride);
                PostRecv(r);
                int slot = cqe.Cid;
                if (slot >= _slots.Length || !_slots[slot].Busy || _slots[slot].Responded)
                {
                    Fail($"response for command {cqe.Cid}, which is not outstanding");
                    break;
                }
                _slots[slot].Cqe = cqe;
                _slots[slot].Responded = true;
                if (_slots[slot].Sent) done += Finish(slot);
            }
            else
            {
                int slot = (int)wc.WrId;
                _slots[slot].Sent = true;
                if (_slots[slot].Responded) done += Finish(slot);
            }
        }
        return done;
    }

    private int Finish(int slot)
    {
        Slot s = _slots[slot];
        _slots[slot] = default;
        _free[_freeCount++] = slot;
        if (s.BounceTo != null) Buffer.MemoryCopy(_send + slot * _stride + 64, s.BounceTo, s.BounceLength, s.BounceLength);
        s.TempMr?.Dispose();
        if (s.Callback == null) return 0; // a raw send
        s.Callback.OnHostComplete(s.Token, s.Cqe);
        return 1;
    }

    private void Fail(string why)
    {
        if (_error != null) return;
        _error = why;
        _pendingCount = 0;
        // The QP goes to the error state first: after that the controller can no longer touch caller memory,
        // so the callers below may reuse their buffers at once.
        try { _conn.Disconnect(); } catch (RdmaException) { }
        // Complete everything outstanding with a transport error so no caller waits forever.
        for (int i = 0; i < _slots.Length; i++)
        {
            if (!_slots[i].Busy) continue;
            Slot s = _slots[i];
            _slots[i] = default;
            _free[_freeCount++] = i;
            s.TempMr?.Dispose();
            if (s.Callback == null) continue;
            CompletionQueueEntry cqe = default;
            cqe.Cid = (ushort)i;
            cqe.Status = NvmeStatus.Generic(GenericStatus.TransientTransportError, dnr: false).ToCqeStatus();
            s.Callback.OnHostComplete(s.Token, cqe);
        }
    }

    private sealed class Waiter : IHostCompletion
    {
        public bool Done;
        public CompletionQueueEntry Cqe;
        public void OnHostComplete(long token, in CompletionQueueEntry cqe)
        {
            Cqe = cqe;
            Done = true;
        }
    }

    /// <summary>Runs one command synchronously (polling, bounded by <paramref name="timeout"/>).</summary>
    public CompletionQueueEntry Execute(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, MemoryRegion? region, TimeSpan timeout)
    {
        var w = new Waiter();
        if (!TrySubmit(sqe, data, length, direction, region, w, 0)) throw new InvalidOperationException("queue full");
        return Wait(w, timeout);
    }

    /// <summary>Sends a raw capsule (see <see cref="TrySubmitRaw"/>) and waits for its response.</summary>
    public CompletionQueueEntry ExecuteRaw(in SubmissionQueueEntry sqe, ReadOnlySpan<byte> capsuleData, TimeSpan timeout)
    {
        var w = new Waiter();
        if (!TrySubmitRaw(sqe, capsuleData, w, 0)) throw new InvalidOperationException("queue full");
        return Wait(w, timeout);
    }

    private CompletionQueueEntry Wait(Waiter w, TimeSpan timeout)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        while (!w.Done)
        {
            if (_error != null) throw new NvmeTransportException(_error);
            if (Poll() == 0)
            {
                if (Stopwatch.GetTimestamp() > deadline) throw new TimeoutException($"no response within {timeout.TotalSeconds:0.#} s");
                Thread.Yield();
            }
        }
        return w.Cqe;
    }

    /// <summary>Fabrics Connect for this queue (Connect data through the scratch buffer); returns the CQE.</summary>
    public CompletionQueueEntry FabricsConnect(string subNqn, string hostNqn, Guid hostId, ushort cntlid, ushort sqSize, uint katoMs, TimeSpan timeout, ushort? qid = null)
    {
        *(ConnectData*)_scratch = ConnectData.For(hostId, cntlid, subNqn, hostNqn);
        ConnectCommand cmd = default;
        cmd.Opcode = AdminOpcode.FabricsCommand;
        cmd.FabricsType = FabricsCommandType.Connect;
        cmd.Qid = qid ?? Qid;
        cmd.SqSize = sqSize;
        cmd.Kato = katoMs;
        SubmissionQueueEntry sqe = Unsafe.As<ConnectCommand, SubmissionQueueEntry>(ref cmd);
        return Execute(sqe, _scratch, (uint)sizeof(ConnectData), DataDirection.HostToController, _scratchMr, timeout);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Fail("queue closed"); // disconnects (QP to error), completes what is outstanding with a transport error
        _conn.Dispose();   // the QP goes first: after it nothing touches our buffers
        _sendMr.Dispose();
        _recvMr.Dispose();
        _scratchMr.Dispose();
        NativeMemory.AlignedFree(_send);
        NativeMemory.AlignedFree(_recv);
        NativeMemory.AlignedFree(_scratch);
        NativeMemory.Free(_pending);
        for (int i = 0; i < _slots.Length; i++) _slots[i].TempMr?.Dispose();
    }
}
