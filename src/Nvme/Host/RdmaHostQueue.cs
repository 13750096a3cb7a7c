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
/// </summary>
public sealed unsafe class RdmaHostQueue : IDisposable
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
    private string? _error;
    private bool _disposed;

    public ushort Qid { get; }
    public int Depth => _slots.Length;
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
        _sendMr = conn.Register(_send, (nuint)(_stride * depth));
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
    /// Queues a command (CID = its slot). Writes up to <see cref="InCapsuleDataSize"/> go in-capsule; other data
    /// must lie in <paramref name="region"/> and is described by a keyed SGL. False when every slot is busy.
    /// </summary>
    public bool TrySubmit(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, MemoryRegion? region,
        IHostCompletion callback, long token)
    {
        SubmissionQueueEntry s = sqe;
        uint inCapsule = 0;
        if (direction == DataDirection.HostToController && length > 0 && length <= InCapsuleDataSize && 64 + length <= _stride)
        {
            s.Dptr = SglDescriptor.InCapsule(length);
            inCapsule = length;
        }
        else if (length > 0)
        {
            if (region == null || !region.Contains(data, length)) throw new ArgumentException("the data must lie in a region registered with this queue", nameof(region));
            s.Dptr = RdmaSgl.Keyed((ulong)data, length, region.Rkey, invalidate: false);
        }
        else
        {
            s.Dptr = RdmaSgl.Keyed(0, 0, 0, invalidate: false);
        }
        s.Flags = (byte)((s.Flags & 0x3F) | 0x40); // PSDT = SGL
        return Post(s, inCapsule == 0 ? default : new ReadOnlySpan<byte>(data, (int)inCapsule), setCid: true, callback, token);
    }

    /// <summary>
    /// Sends <paramref name="sqe"/> exactly as given (its SGL untouched; only CID is set to the slot) followed by
    /// <paramref name="capsuleData"/>: for tests of a controller's handling of bad capsules.
    /// </summary>
    public bool TrySubmitRaw(in SubmissionQueueEntry sqe, ReadOnlySpan<byte> capsuleData, IHostCompletion callback, long token)
    {
        if (64 + capsuleData.Length > _stride) throw new ArgumentException($"a capsule holds at most {_stride - 64} data bytes here", nameof(capsuleData));
        return Post(sqe, capsuleData, setCid: true, callback, token);
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
        int rc = _conn.TryPostSend((ulong)slot, buf, (uint)bytes.Length, _sendMr.Lkey, signaled: true, inline: false);
        if (rc != 0) Fail($"ibv_post_send: {Libc.StrError(-rc)}");
    }

    private bool Post(in SubmissionQueueEntry sqe, ReadOnlySpan<byte> capsuleData, bool setCid, IHostCompletion callback, long token)
    {
        if (_error != null) throw new NvmeTransportException(_error);
        if (_freeCount == 0) return false;
        int slot = _free[--_freeCount];
        ref Slot s = ref _slots[slot];
        s = new Slot { Busy = true, Token = token, Callback = callback };
        byte* buf = _send + slot * _stride;
        *(SubmissionQueueEntry*)buf = sqe;
        if (setCid) ((SubmissionQueueEntry*)buf)->Cid = (ushort)slot;
        if (!capsuleData.IsEmpty) capsuleData.CopyTo(new Span<byte>(buf + 64, capsuleData.Length));
        int rc = _conn.TryPostSend((ulong)slot, buf, (uint)(64 + capsuleData.Length), _sendMr.Lkey, signaled: true, inline: false);
        if (rc != 0) Fail($"ibv_post_send: {Libc.StrError(-rc)}");
        return true;
    }

    /// <summary>Reaps completions and delivers finished commands. Returns how many completed.</summary>
    public int Poll()
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
        if (s.Callback == null) return 0; // a raw send
        s.Callback.OnHostComplete(s.Token, s.Cqe);
        return 1;
    }

    private void Fail(string why)
    {
        if (_error != null) return;
        _error = why;
        // Complete everything outstanding with a transport error so no caller waits forever.
        for (int i = 0; i < _slots.Length; i++)
        {
            if (!_slots[i].Busy) continue;
            Slot s = _slots[i];
            _slots[i] = default;
            _free[_freeCount++] = i;
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
        ConnectData* data = (ConnectData*)_scratch;
        *data = default;
        hostId.TryWriteBytes(new Span<byte>(data->HostId, 16), bigEndian: true, out _);
        data->Cntlid = cntlid;
        SpecText.WriteNulPadded(new Span<byte>(data->SubNqn, 256), subNqn);
        SpecText.WriteNulPadded(new Span<byte>(data->HostNqn, 256), hostNqn);
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
        try { _conn.Disconnect(); } catch (RdmaException) { }
        _conn.Dispose();   // the QP goes first: after it nothing touches our buffers
        _sendMr.Dispose();
        _recvMr.Dispose();
        _scratchMr.Dispose();
        NativeMemory.AlignedFree(_send);
        NativeMemory.AlignedFree(_recv);
        NativeMemory.AlignedFree(_scratch);
    }
}
