using System.Diagnostics;
using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Interop;
using StorageNode.Nvme.Spec;
using StorageNode.Nvme.Tcp;

namespace StorageNode.Nvme.Host;

public sealed record HostQueueOptions
{
    public bool HeaderDigest { get; init; }
    public bool DataDigest { get; init; }
    /// <summary>Outstanding R2Ts per command we allow the controller (MAXR2T + 1).</summary>
    public int MaxR2T { get; init; } = 4;
    public int Depth { get; init; } = 128;
    /// <summary>Largest write sent in-capsule; larger writes go through R2T. 0 disables in-capsule data.</summary>
    public uint InCapsuleDataSize { get; init; } = 8192;
    public int ReceiveBufferSize { get; init; } = 256 * 1024;
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>The local address the connection leaves from (null: the system chooses).</summary>
    public IPAddress? LocalAddress { get; init; }
}

/// <summary>A fatal transport error on a host queue (TermReq, malformed PDU, closed connection).</summary>
public sealed class NvmeTransportException(string message) : Exception(message);

/// <summary>
/// The host side of one NVMe/TCP connection. Not thread-safe: one thread submits and polls. Submissions are
/// queued and sent by the next <see cref="Poll"/> (so a burst goes out in one sendmsg); completions are
/// delivered from <see cref="Poll"/>. Data buffers are caller-owned, pinned, and must live until completion.
/// </summary>
public sealed unsafe class TcpHostQueue : IHostQueue, ITcpConnectionOwner
{
    /// <summary>The command identifier the last submitted command went out with (what an Abort names).</summary>
    public ushort LastCid { get; private set; }

    private const int SlotHeaderBytes = 128;      // capsule header + digest, in-capsule data digest
    private const int CapsuleDataDigestOffset = 96;
    private const int H2CHeaderSlots = 16;
    private const int H2CHeaderBytes = 32;        // header 24 + header digest 4 + data digest 4
    private const int H2CDataDigestOffset = 28;

    private struct Slot
    {
        public bool Busy;
        public bool Responded;
        public byte* Data;
        public uint Length;
        public DataDirection Direction;
        public uint Received;
        /// <summary>PDUs of this command queued and not yet handed to the kernel whole.</summary>
        public int PendingSends;
        public int H2CSequence;
        public bool DataDigestError;
        public long Token;
        public IHostCompletion? Callback;
        public CompletionQueueEntry Cqe;
    }

    private readonly TcpConnection _conn;
    private readonly Slot[] _slots;
    private readonly int[] _free;
    private int _freeCount;
    private readonly byte* _hdrArea;
    private readonly byte* _h2cArea;
    // The C2HData PDU whose payload is being received.
    private int _payloadSlot;
    private bool _payloadSuccess;
    private bool _payloadLast;
    private string? _error;

    public bool HeaderDigest { get; }
    public bool DataDigest { get; }
    public int Depth => _slots.Length;
    public int Outstanding => _slots.Length - _freeCount;
    /// <summary>MAXH2CDATA from the controller's ICResp.</summary>
    public uint MaxH2CData { get; }
    /// <summary>CPDA from ICResp: H2C data must start at a multiple of (CPDA+1)*4.</summary>
    public int ControllerPduAlign { get; }
    public uint InCapsuleDataSize { get; set; }
    public IPEndPoint Endpoint { get; }
    public bool IsBroken => _error != null;
    public string? Error => _error;
    /// <summary>Completions whose data digest did not match (the command is completed with a transport error).</summary>
    public long DataDigestErrors { get; private set; }

    private TcpHostQueue(int fd, IPEndPoint ep, HostQueueOptions opt, int depth, bool hdgst, bool ddgst, uint maxH2C, int cpda)
    {
        Endpoint = ep;
        HeaderDigest = hdgst;
        DataDigest = ddgst;
        MaxH2CData = maxH2C;
        ControllerPduAlign = (cpda + 1) * 4;
        InCapsuleDataSize = opt.InCapsuleDataSize;
        _slots = new Slot[depth];
        _free = new int[depth];
        for (int i = 0; i < depth; i++) _free[i] = depth - 1 - i;
        _freeCount = depth;
        _hdrArea = (byte*)NativeMemory.AlignedAlloc((nuint)(depth * SlotHeaderBytes), 64);
        _h2cArea = (byte*)NativeMemory.AlignedAlloc((nuint)(depth * H2CHeaderSlots * H2CHeaderBytes), 64);
        // Each PDU is at most four entries (header, padding, data, data digest).
        _conn = new TcpConnection(fd, this, opt.ReceiveBufferSize, depth * (H2CHeaderSlots * 4 + 4) + 16)
        {
            HeaderDigest = hdgst,
            DataDigest = ddgst,
        };
    }

    /// <summary>Opens the TCP connection and performs the ICReq/ICResp exchange.</summary>
    public static TcpHostQueue Connect(IPEndPoint endpoint, HostQueueOptions options)
    {
        int fd = NativeSocket.Connect(endpoint, options.ConnectTimeout, options.LocalAddress);
        try
        {
            ICReqPdu req = default;
            req.Common = new CommonHeader(PduType.ICReq, 0, PduSize.ICReq, 0, PduSize.ICReq);
            req.Pfv = 0;
            req.Hpda = 0;
            req.Digest = (byte)((options.HeaderDigest ? DigestBits.Header : 0) | (options.DataDigest ? DigestBits.Data : 0));
            req.MaxR2T = (uint)Math.Max(0, options.MaxR2T - 1);
            SendAllBlocking(fd, (byte*)&req, PduSize.ICReq, options.ConnectTimeout);
            ICRespPdu resp;
            RecvAllBlocking(fd, (byte*)&resp, PduSize.ICResp, options.ConnectTimeout);
            if (resp.Common.Type == PduType.C2HTermReq)
                throw new NvmeTransportException($"controller rejected ICReq with C2HTermReq (FES {((TermReqPdu*)&resp)->Fes:X2})");
            if (resp.Common.Type != PduType.ICResp || resp.Common.Hlen != PduSize.ICResp || resp.Common.Plen != PduSize.ICResp)
                throw new NvmeTransportException($"expected ICResp, got PDU type {(byte)resp.Common.Type:X2} hlen {resp.Common.Hlen} plen {resp.Common.Plen}");
            if (resp.Pfv != 0) throw new NvmeTransportException($"ICResp PFV {resp.Pfv} not supported");
            if (resp.MaxH2CData < 4096 || resp.MaxH2CData % 4 != 0) throw new NvmeTransportException($"ICResp MAXH2CDATA {resp.MaxH2CData} invalid");
            if (resp.Cpda > 31) throw new NvmeTransportException($"ICResp CPDA {resp.Cpda} invalid");
            return new TcpHostQueue(fd, endpoint, options, options.Depth,
                (resp.Digest & DigestBits.Header) != 0, (resp.Digest & DigestBits.Data) != 0, resp.MaxH2CData, resp.Cpda);
        }
        catch
        {
            Libc.Close(fd);
            throw;
        }
    }

    private static void SendAllBlocking(int fd, byte* p, int len, TimeSpan timeout)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        int done = 0;
        while (done < len)
        {
            nint n = Libc.Send(fd, p + done, (nuint)(len - done), Libc.MSG_NOSIGNAL | Libc.MSG_DONTWAIT);
            if (n > 0) { done += (int)n; continue; }
            int e = Libc.Errno;
            if (n < 0 && e != Libc.EAGAIN && e != Libc.EINTR) throw new NvmeTransportException($"send: {Libc.StrError(e)}");
            WaitFd(fd, Libc.POLLOUT, deadline);
        }
    }

    private static void RecvAllBlocking(int fd, byte* p, int len, TimeSpan timeout)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        int done = 0;
        while (done < len)
        {
            nint n = Libc.Recv(fd, p + done, (nuint)(len - done), Libc.MSG_DONTWAIT);
            if (n > 0) { done += (int)n; continue; }
            if (n == 0)
            {
                // A C2HTermReq may be shorter than an ICResp; report it rather than "closed".
                if (done >= PduSize.TermReqHeader && ((CommonHeader*)p)->Type == PduType.C2HTermReq) return;
                throw new NvmeTransportException("connection closed by the controller");
            }
            int e = Libc.Errno;
            if (e != Libc.EAGAIN && e != Libc.EINTR) throw new NvmeTransportException($"recv: {Libc.StrError(e)}");
            WaitFd(fd, Libc.POLLIN, deadline);
        }
    }

    private static void WaitFd(int fd, short events, long deadline)
    {
        long left = (deadline - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency;
        if (left <= 0) throw new TimeoutException("timed out waiting for the controller");
        Libc.PollFd p = new() { Fd = fd, Events = events };
        Libc.Poll(&p, 1, (int)Math.Min(left, 1000));
    }

    /// <summary>
    /// Queues a command. CID is assigned here (the slot index). <paramref name="direction"/> and
    /// <paramref name="length"/> describe the data buffer. Returns false when all slots are busy.
    /// </summary>
    public bool TrySubmit(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, IHostCompletion callback, long token)
    {
        if (_error != null) throw new NvmeTransportException(_error);
        if (_freeCount == 0) return false;
        int slot = _free[--_freeCount];
        ref Slot s = ref _slots[slot];
        s.Busy = true;
        s.Responded = false;
        s.Data = data;
        s.Length = length;
        s.Direction = direction;
        s.Received = 0;
        s.PendingSends = 0;
        s.H2CSequence = 0;
        s.DataDigestError = false;
        s.Token = token;
        s.Callback = callback;
        s.Cqe = default;

        byte* h = _hdrArea + slot * SlotHeaderBytes;
        CapsuleCmdPdu* pdu = (CapsuleCmdPdu*)h;
        pdu->Sqe = sqe;
        pdu->Sqe.Cid = (ushort)slot;
        LastCid = (ushort)slot;
        pdu->Sqe.Flags = (byte)((sqe.Flags & ~CommandFlags.PsdtMask) | CommandFlags.PsdtSgl);
        bool inCapsule = direction == DataDirection.HostToController && length > 0 && length <= InCapsuleDataSize;
        pdu->Sqe.Dptr = inCapsule ? SglDescriptor.InCapsule(length) : SglDescriptor.Transport(length);
        s.PendingSends++;
        _conn.EnqueuePdu(h, PduType.CapsuleCmd, 0, ControllerPduAlign, data, inCapsule ? length : 0, h + CapsuleDataDigestOffset,
            TcpConnection.NoTag, slot);
        return true;
    }

    /// <summary>Sends what is queued, receives and processes what arrived. Returns the number of completions.</summary>
    public int Poll()
    {
        if (_error != null) throw new NvmeTransportException(_error);
        int completed = Flush();
        completed += Receive();
        if (_conn.HasPendingSends) completed += Flush();
        return completed;
    }

    /// <summary>The socket, for a poller that waits on readiness (a reactor's epoll set).</summary>
    public int Fd => _conn.Fd;

    /// <summary>True when PDUs are queued but not yet handed to the kernel.</summary>
    public bool HasPendingSends => _conn.HasPendingSends;

    /// <summary>Sends what is queued; never throws (a failure completes every command with an error).</summary>
    public int SendPending() => _error != null ? 0 : Flush();

    /// <summary>Receives and processes what arrived; never throws.</summary>
    public int ReceiveAvailable() => _error != null ? 0 : Receive();

    string IHostQueue.Transport => "tcp";
    bool IHostQueue.NeedsPolling => false;
    int IHostQueue.OnReadable() => ReceiveAvailable();

    /// <summary>Number of free command slots.</summary>
    public int FreeSlots => _freeCount;

    /// <summary>Blocks up to <paramref name="timeoutMs"/> until the socket is readable (for idle waits).</summary>
    public void WaitReadable(int timeoutMs)
    {
        if (_disposed || !_conn.InputEmpty) return;
        Libc.PollFd p = new() { Fd = _conn.Fd, Events = Libc.POLLIN };
        Libc.Poll(&p, 1, timeoutMs);
    }

    private int Flush() => _conn.Flush(out _);

    private int Receive()
    {
        int completed = 0;
        for (int round = 0; round < 4 && _error == null; round++)
        {
            completed += _conn.Receive(out ReceiveOutcome outcome);
            if (outcome != ReceiveOutcome.Filled) break;
        }
        return completed;
    }

    // ====================================================================== ITcpConnectionOwner

    bool ITcpConnectionOwner.AcceptPduType(CommonHeader* ch)
    {
        if (ch->Type is PduType.CapsuleResp or PduType.C2HData or PduType.R2T or PduType.C2HTermReq) return true;
        Fail($"unexpected PDU type {(byte)ch->Type:X2} from the controller");
        return false;
    }

    int ITcpConnectionOwner.OnHeader(byte* header, int hd)
    {
        CommonHeader* ch = (CommonHeader*)header;
        switch (ch->Type)
        {
            case PduType.C2HTermReq:
            {
                TermReqPdu* t = (TermReqPdu*)ch;
                Fail($"controller sent C2HTermReq: FES {t->Fes:X2}, FEI {t->Fei}");
                return 0;
            }
            case PduType.CapsuleResp:
            {
                CapsuleRespPdu* r = (CapsuleRespPdu*)ch;
                int slot = r->Cqe.Cid;
                if (slot >= _slots.Length || !_slots[slot].Busy || _slots[slot].Responded)
                {
                    Fail($"response for unknown command (CID {slot})");
                    return 0;
                }
                ref Slot s = ref _slots[slot];
                s.Cqe = r->Cqe;
                s.Responded = true;
                if (s.PendingSends > 0) return 0;
                Deliver(slot);
                return 1;
            }
            case PduType.C2HData:
            {
                C2HDataPdu* d = (C2HDataPdu*)ch;
                int slot = d->Cccid;
                if (slot >= _slots.Length || !_slots[slot].Busy || _slots[slot].Direction != DataDirection.ControllerToHost)
                {
                    Fail($"C2HData for unknown command (CCCID {slot})");
                    return 0;
                }
                ref Slot s = ref _slots[slot];
                if (d->Datao != s.Received || (ulong)d->Datao + d->Datal > s.Length || d->Common.Plen != d->Common.Pdo + d->Datal + (uint)_conn.DataDigestBytes
                    || d->Common.Pdo < PduSize.C2HData + hd)
                {
                    Fail($"C2HData out of range: DATAO {d->Datao} DATAL {d->Datal} PDO {d->Common.Pdo} PLEN {d->Common.Plen} (expected offset {s.Received}, length {s.Length})");
                    return 0;
                }
                _payloadSlot = slot;
                _payloadLast = (d->Common.Flags & PduFlags.LastPdu) != 0;
                _payloadSuccess = (d->Common.Flags & PduFlags.Success) != 0;
                s.Received += d->Datal;
                _conn.ReceivePayload(s.Data + d->Datao, d->Datal, d->Common.Pdo - PduSize.C2HData - hd);
                return 0;
            }
            case PduType.R2T:
            {
                R2TPdu* r = (R2TPdu*)ch;
                int slot = r->Cccid;
                if (slot >= _slots.Length || !_slots[slot].Busy || _slots[slot].Direction != DataDirection.HostToController
                    || r->R2Tl == 0 || (ulong)r->R2To + r->R2Tl > _slots[slot].Length)
                {
                    Fail($"invalid R2T: CCCID {slot} R2TO {r->R2To} R2TL {r->R2Tl}");
                    return 0;
                }
                SendH2CData(slot, r->Ttag, r->R2To, r->R2Tl);
                return 0;
            }
            default:
                return 0; // AcceptPduType let no other type through
        }
    }

    int ITcpConnectionOwner.OnPayloadDone(bool dataDigestError)
    {
        ref Slot s = ref _slots[_payloadSlot];
        if (dataDigestError)
        {
            DataDigestErrors++;
            s.DataDigestError = true; // the completion is turned into a transport error
        }
        if (!_payloadSuccess) return 0;
        if (!_payloadLast)
        {
            Fail("C2HData SUCCESS flag without LAST_PDU");
            return 0;
        }
        s.Cqe = default;
        s.Cqe.Cid = (ushort)_payloadSlot;
        s.Responded = true;
        if (s.PendingSends > 0) return 0;
        Deliver(_payloadSlot);
        return 1;
    }

    byte* ITcpConnectionOwner.AcquirePayloadBuffer(uint length) => null; // every C2HData lands in its command's buffer

    void ITcpConnectionOwner.OnProtocolError(ushort fes, uint fei, string why, byte* header) => Fail($"malformed PDU from the controller: {why}");

    void ITcpConnectionOwner.OnConnectionError(string why) => Fail(why);

    int ITcpConnectionOwner.OnSent(int slot)
    {
        ref Slot s = ref _slots[slot];
        if (--s.PendingSends != 0 || !s.Responded) return 0;
        Deliver(slot);
        return 1;
    }

    void ITcpConnectionOwner.OnReceived(nint bytes, bool drained) { }

    void ITcpConnectionOwner.OnReceiveEmpty() { }

    private void SendH2CData(int slot, ushort ttag, uint offset, uint length)
    {
        ref Slot s = ref _slots[slot];
        uint end = offset + length;
        while (offset < end)
        {
            uint len = Math.Min(end - offset, MaxH2CData);
            bool last = offset + len == end;
            int idx = s.H2CSequence++ % H2CHeaderSlots;
            byte* h = _h2cArea + (slot * H2CHeaderSlots + idx) * H2CHeaderBytes;
            H2CDataPdu* p = (H2CDataPdu*)h;
            *p = default;
            p->Cccid = (ushort)slot;
            p->Ttag = ttag;
            p->Datao = offset;
            p->Datal = len;
            s.PendingSends++;
            _conn.EnqueuePdu(h, PduType.H2CData, last ? PduFlags.LastPdu : (byte)0, ControllerPduAlign, s.Data + offset, len,
                h + H2CDataDigestOffset, TcpConnection.NoTag, slot);
            offset += len;
        }
    }

    private void Deliver(int slot)
    {
        ref Slot s = ref _slots[slot];
        CompletionQueueEntry cqe = s.Cqe;
        if (s.DataDigestError)
        {
            cqe.Status = NvmeStatus.Generic(GenericStatus.TransientTransportError, dnr: false).ToCqeStatus();
        }
        IHostCompletion cb = s.Callback!;
        long token = s.Token;
        s.Busy = false;
        s.Callback = null;
        s.Data = null;
        _free[_freeCount++] = slot;
        cb.OnHostComplete(token, cqe);
    }

    private void Fail(string error)
    {
        if (_error != null) return;
        _error = error;
        // Every outstanding command completes with a transport error so callers never hang.
        for (int i = 0; i < _slots.Length; i++)
        {
            if (!_slots[i].Busy) continue;
            ref Slot s = ref _slots[i];
            s.Cqe = default;
            s.Cqe.Cid = (ushort)i;
            s.Cqe.Status = NvmeStatus.Generic(GenericStatus.TransientTransportError, dnr: false).ToCqeStatus();
            s.PendingSends = 0;
            Deliver(i);
        }
        _conn.DropSends();
    }

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _conn.CloseSocket();
        if (_error == null) Fail("queue closed");
        NativeMemory.AlignedFree(_hdrArea);
        NativeMemory.AlignedFree(_h2cArea);
        _conn.Free();
    }

    /// <summary>Aborts the connection with a TCP reset (fault injection in tests).</summary>
    public void Reset()
    {
        _conn.CloseSocket(abort: true);
        Fail("connection reset by host");
    }
}
