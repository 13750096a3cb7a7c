using System.Diagnostics;
using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Interop;
using StorageNode.Nvme.Spec;
using StorageNode.Nvme.Tcp;

namespace StorageNode.Nvme.Host;

/// <summary>Receives command completions from a <see cref="TcpHostQueue"/>.</summary>
public interface IHostCompletion
{
    void OnHostComplete(long token, in CompletionQueueEntry cqe);
}

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
public sealed unsafe class TcpHostQueue : IHostQueue
{
    private const int MaxIov = 256;
    private const int SlotHeaderBytes = 128;      // capsule header + digest, in-capsule data digest
    private const int H2CHeaderSlots = 16;
    private const int H2CHeaderBytes = 32;

    private struct Slot
    {
        public bool Busy;
        public bool Responded;
        public byte* Data;
        public uint Length;
        public DataDirection Direction;
        public uint Received;
        public int PendingSends;
        public int H2CSequence;
        public long Token;
        public IHostCompletion? Callback;
        public CompletionQueueEntry Cqe;
    }

    private struct SendEntry
    {
        public byte* Ptr;
        public int Length;
        public short Slot;
    }

    private enum RecvState : byte { Header, Payload }

    private int _fd;
    private readonly HostQueueOptions _opt;
    private readonly Slot[] _slots;
    private readonly int[] _free;
    private int _freeCount;
    private readonly byte* _hdrArea;
    private readonly byte* _h2cArea;
    private readonly byte* _zeroes;
    private readonly byte* _rbuf;
    private readonly int _rcap;
    private int _rpos, _rend;
    private RecvState _state;
    private int _payloadSlot;
    private byte* _payloadDest;
    private uint _payloadRemaining;
    private int _payloadSkip;
    private int _payloadDigestRemaining;
    private uint _payloadCrc;
    private bool _payloadSuccess;
    private bool _payloadLast;
    private uint _payloadDigestValue;
    private readonly SendEntry[] _ring;
    private readonly int _ringMask;
    private int _sendHead, _sendTail, _headSent;
    private readonly Libc.IoVec* _iov;
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
        _fd = fd;
        Endpoint = ep;
        _opt = opt;
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
        _zeroes = (byte*)NativeMemory.AllocZeroed(256);
        _rcap = opt.ReceiveBufferSize;
        _rbuf = (byte*)NativeMemory.AlignedAlloc((nuint)_rcap, 64);
        int cap = 1;
        while (cap < depth * (H2CHeaderSlots * 4 + 4) + 16) cap <<= 1;
        _ring = new SendEntry[cap];
        _ringMask = cap - 1;
        _iov = (Libc.IoVec*)NativeMemory.Alloc((nuint)(MaxIov * sizeof(Libc.IoVec)));
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
            req.Digest = (byte)((options.HeaderDigest ? 1 : 0) | (options.DataDigest ? 2 : 0));
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
                (resp.Digest & 1) != 0, (resp.Digest & 2) != 0, resp.MaxH2CData, resp.Cpda);
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
        s.Token = token;
        s.Callback = callback;
        s.Cqe = default;

        byte* h = _hdrArea + slot * SlotHeaderBytes;
        CapsuleCmdPdu* pdu = (CapsuleCmdPdu*)h;
        pdu->Sqe = sqe;
        pdu->Sqe.Cid = (ushort)slot;
        pdu->Sqe.Flags = (byte)((sqe.Flags & 0x3F) | 0x40); // PSDT = SGL
        int hd = HeaderDigest ? PduSize.Digest : 0;
        bool inCapsule = direction == DataDirection.HostToController && length > 0 && length <= InCapsuleDataSize;
        if (inCapsule)
        {
            int hdrBytes = PduSize.CapsuleCmd + hd;
            int pdo = Align(hdrBytes, ControllerPduAlign);
            int dd = DataDigest ? PduSize.Digest : 0;
            pdu->Sqe.Dptr = SglDescriptor.InCapsule(length);
            pdu->Common = new CommonHeader(PduType.CapsuleCmd, Flags(true), PduSize.CapsuleCmd, (byte)pdo, (uint)(pdo + length + dd));
            WriteHeaderDigest(h, PduSize.CapsuleCmd);
            Enqueue(h, hdrBytes, slot);
            if (pdo > hdrBytes) Enqueue(_zeroes, pdo - hdrBytes, slot);
            Enqueue(data, (int)length, slot);
            if (dd != 0)
            {
                Unsafe.WriteUnaligned(h + 96, Crc32C.Compute(new ReadOnlySpan<byte>(data, (int)length)));
                Enqueue(h + 96, dd, slot);
            }
        }
        else
        {
            pdu->Sqe.Dptr = SglDescriptor.Transport(length);
            pdu->Common = new CommonHeader(PduType.CapsuleCmd, Flags(false), PduSize.CapsuleCmd, 0, (uint)(PduSize.CapsuleCmd + hd));
            WriteHeaderDigest(h, PduSize.CapsuleCmd);
            Enqueue(h, PduSize.CapsuleCmd + hd, slot);
        }
        return true;
    }

    private static int Align(int v, int a) => (v + a - 1) / a * a;

    private byte Flags(bool hasData) => (byte)((HeaderDigest ? PduFlags.HeaderDigest : 0) | (hasData && DataDigest ? PduFlags.DataDigest : 0));

    private void WriteHeaderDigest(byte* h, int hlen)
    {
        if (HeaderDigest) Unsafe.WriteUnaligned(h + hlen, Crc32C.Compute(new ReadOnlySpan<byte>(h, hlen)));
    }

    private void Enqueue(byte* p, int len, int slot)
    {
        if (_sendTail - _sendHead > _ringMask) throw new InvalidOperationException("host send ring overflow");
        ref SendEntry e = ref _ring[_sendTail & _ringMask];
        e.Ptr = p;
        e.Length = len;
        e.Slot = (short)slot;
        _sendTail++;
        if (slot >= 0) _slots[slot].PendingSends++;
    }

    /// <summary>Sends what is queued, receives and processes what arrived. Returns the number of completions.</summary>
    public int Poll()
    {
        if (_error != null) throw new NvmeTransportException(_error);
        int completed = Flush();
        completed += Receive();
        if (_sendHead != _sendTail) completed += Flush();
        return completed;
    }

    /// <summary>The socket, for a poller that waits on readiness (a reactor's epoll set).</summary>
    public int Fd => _fd;

    /// <summary>True when PDUs are queued but not yet handed to the kernel.</summary>
    public bool HasPendingSends => _sendHead != _sendTail;

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
        if (_disposed || _rpos < _rend) return;
        Libc.PollFd p = new() { Fd = _fd, Events = Libc.POLLIN };
        Libc.Poll(&p, 1, timeoutMs);
    }

    private int Flush()
    {
        int completed = 0;
        while (_sendHead != _sendTail)
        {
            int count = 0;
            nuint total = 0;
            for (int i = _sendHead; i != _sendTail && count < MaxIov; i++, count++)
            {
                ref SendEntry e = ref _ring[i & _ringMask];
                int skip = i == _sendHead ? _headSent : 0;
                _iov[count].Base = e.Ptr + skip;
                _iov[count].Length = (nuint)(e.Length - skip);
                total += _iov[count].Length;
            }
            Libc.MsgHdr msg = default;
            msg.Iov = _iov;
            msg.IovLen = (nuint)count;
            nint sent = Libc.SendMsg(_fd, &msg, Libc.MSG_DONTWAIT | Libc.MSG_NOSIGNAL);
            if (sent < 0)
            {
                int err = Libc.Errno;
                if (err == Libc.EAGAIN || err == Libc.EINTR) return completed;
                Fail($"send failed: {Libc.StrError(err)}");
                return completed;
            }
            long left = sent;
            while (left > 0)
            {
                ref SendEntry e = ref _ring[_sendHead & _ringMask];
                int remaining = e.Length - _headSent;
                if (left < remaining)
                {
                    _headSent += (int)left;
                    break;
                }
                left -= remaining;
                _headSent = 0;
                _sendHead++;
                if (e.Slot >= 0)
                {
                    ref Slot s = ref _slots[e.Slot];
                    if (--s.PendingSends == 0 && s.Responded) { Deliver(e.Slot); completed++; }
                }
            }
            if ((nuint)sent < total) return completed;
        }
        return completed;
    }

    private int Receive()
    {
        int completed = 0;
        for (int round = 0; round < 4; round++)
        {
            if (_state == RecvState.Payload && _rpos == _rend && _payloadSkip == 0 && _payloadDest != null && _payloadRemaining >= 16384)
            {
                nint d = Libc.Recv(_fd, _payloadDest, _payloadRemaining, Libc.MSG_DONTWAIT);
                if (d <= 0) return completed + RecvError(d);
                if (DataDigest) _payloadCrc = Crc32C.Update(_payloadCrc, _payloadDest, (int)d);
                _payloadDest += d;
                _payloadRemaining -= (uint)d;
                completed += Parse();
                continue;
            }
            if (_rpos == _rend) _rpos = _rend = 0;
            else if (_rcap - _rend < 256 && _rpos > 0)
            {
                Buffer.MemoryCopy(_rbuf + _rpos, _rbuf, _rcap, _rend - _rpos);
                _rend -= _rpos;
                _rpos = 0;
            }
            nint n = Libc.Recv(_fd, _rbuf + _rend, (nuint)(_rcap - _rend), Libc.MSG_DONTWAIT);
            if (n <= 0) return completed + RecvError(n);
            _rend += (int)n;
            completed += Parse();
            if (_error != null || n < _rcap - _rend) break;
        }
        return completed;
    }

    private int RecvError(nint n)
    {
        if (n == 0)
        {
            Fail("connection closed by the controller");
            return 0;
        }
        int e = Libc.Errno;
        if (e != Libc.EAGAIN && e != Libc.EINTR) Fail($"recv failed: {Libc.StrError(e)}");
        return 0;
    }

    private int Parse()
    {
        int completed = 0;
        while (_error == null)
        {
            int avail = _rend - _rpos;
            if (_state == RecvState.Header)
            {
                if (avail < PduSize.Common) return completed;
                CommonHeader* ch = (CommonHeader*)(_rbuf + _rpos);
                int hlen = PduSize.HeaderLength(ch->Type);
                if (hlen == 0 || ch->Hlen != hlen)
                {
                    Fail($"controller sent PDU type {(byte)ch->Type:X2} with HLEN {ch->Hlen}");
                    return completed;
                }
                int hd = HeaderDigest && PduSize.HasHeaderDigest(ch->Type) ? PduSize.Digest : 0;
                if (ch->Type == PduType.C2HTermReq)
                {
                    TermReqPdu* t = (TermReqPdu*)ch;
                    if (avail < PduSize.TermReqHeader) return completed;
                    Fail($"controller sent C2HTermReq: FES {t->Fes:X2}, FEI {t->Fei}");
                    return completed;
                }
                if (avail < hlen + hd) return completed;
                if (hd != 0 && Crc32C.Compute(new ReadOnlySpan<byte>(ch, hlen)) != Unsafe.ReadUnaligned<uint>((byte*)ch + hlen))
                {
                    Fail($"header digest mismatch on PDU type {ch->Type}");
                    return completed;
                }
                _rpos += hlen + hd;
                completed += HandleHeader(ch, hd);
            }
            else
            {
                if (_payloadSkip > 0)
                {
                    int skip = Math.Min(avail, _payloadSkip);
                    _payloadSkip -= skip;
                    _rpos += skip;
                    avail -= skip;
                }
                if (_payloadSkip == 0 && _payloadRemaining > 0 && avail > 0)
                {
                    int n = (int)Math.Min((uint)avail, _payloadRemaining);
                    Buffer.MemoryCopy(_rbuf + _rpos, _payloadDest, n, n);
                    if (DataDigest) _payloadCrc = Crc32C.Update(_payloadCrc, _payloadDest, n);
                    _payloadDest += n;
                    _payloadRemaining -= (uint)n;
                    _rpos += n;
                    avail -= n;
                }
                if (_payloadRemaining == 0 && _payloadDigestRemaining > 0 && avail > 0)
                {
                    int n = Math.Min(avail, _payloadDigestRemaining);
                    uint v = _payloadDigestValue;
                    Buffer.MemoryCopy(_rbuf + _rpos, (byte*)&v + (PduSize.Digest - _payloadDigestRemaining), n, n);
                    _payloadDigestValue = v;
                    _payloadDigestRemaining -= n;
                    _rpos += n;
                }
                if (_payloadSkip == 0 && _payloadRemaining == 0 && _payloadDigestRemaining == 0)
                {
                    _state = RecvState.Header;
                    completed += C2HDataDone();
                }
                else if (_rend - _rpos == 0)
                {
                    return completed;
                }
            }
        }
        return completed;
    }

    private int HandleHeader(CommonHeader* ch, int hd)
    {
        switch (ch->Type)
        {
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
                int dd = DataDigest ? PduSize.Digest : 0;
                if (d->Datao != s.Received || (ulong)d->Datao + d->Datal > s.Length || d->Common.Plen != d->Common.Pdo + d->Datal + (uint)dd
                    || d->Common.Pdo < PduSize.C2HData + hd)
                {
                    Fail($"C2HData out of range: DATAO {d->Datao} DATAL {d->Datal} PDO {d->Common.Pdo} PLEN {d->Common.Plen} (expected offset {s.Received}, length {s.Length})");
                    return 0;
                }
                _payloadSlot = slot;
                _payloadDest = s.Data + d->Datao;
                _payloadRemaining = d->Datal;
                _payloadSkip = d->Common.Pdo - PduSize.C2HData - hd;
                _payloadDigestRemaining = dd;
                _payloadCrc = Crc32C.Seed;
                _payloadLast = (d->Common.Flags & PduFlags.LastPdu) != 0;
                _payloadSuccess = (d->Common.Flags & PduFlags.Success) != 0;
                s.Received += d->Datal;
                _state = RecvState.Payload;
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
                Fail($"unexpected PDU type {ch->Type} from the controller");
                return 0;
        }
    }

    private int C2HDataDone()
    {
        ref Slot s = ref _slots[_payloadSlot];
        if (DataDigest && Crc32C.Finish(_payloadCrc) != _payloadDigestValue)
        {
            DataDigestErrors++;
            // Remember the error; the completion is turned into a transport error.
            s.Cqe.Dw1 = 0xDD;
        }
        if (_payloadSuccess)
        {
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
        return 0;
    }

    private void SendH2CData(int slot, ushort ttag, uint offset, uint length)
    {
        ref Slot s = ref _slots[slot];
        int hd = HeaderDigest ? PduSize.Digest : 0;
        int dd = DataDigest ? PduSize.Digest : 0;
        int hdrBytes = PduSize.H2CData + hd;
        int pdo = Align(hdrBytes, ControllerPduAlign);
        uint end = offset + length;
        while (offset < end)
        {
            uint len = Math.Min(end - offset, MaxH2CData);
            bool last = offset + len == end;
            int idx = s.H2CSequence++ % H2CHeaderSlots;
            byte* h = _h2cArea + (slot * H2CHeaderSlots + idx) * H2CHeaderBytes;
            H2CDataPdu* p = (H2CDataPdu*)h;
            *p = default;
            p->Common = new CommonHeader(PduType.H2CData, (byte)(Flags(true) | (last ? PduFlags.LastPdu : 0)), PduSize.H2CData, (byte)pdo, (uint)(pdo + len + dd));
            p->Cccid = (ushort)slot;
            p->Ttag = ttag;
            p->Datao = offset;
            p->Datal = len;
            WriteHeaderDigest(h, PduSize.H2CData);
            Enqueue(h, hdrBytes, slot);
            if (pdo > hdrBytes) Enqueue(_zeroes, pdo - hdrBytes, slot);
            Enqueue(s.Data + offset, (int)len, slot);
            if (dd != 0)
            {
                // The digest lives after the header in the same 32-byte cell (header 24 + hdgst 4 leaves 4).
                byte* dg = h + 28;
                Unsafe.WriteUnaligned(dg, Crc32C.Compute(new ReadOnlySpan<byte>(s.Data + offset, (int)len)));
                Enqueue(dg, dd, slot);
            }
            offset += len;
        }
    }

    private void Deliver(int slot)
    {
        ref Slot s = ref _slots[slot];
        CompletionQueueEntry cqe = s.Cqe;
        if (cqe.Dw1 == 0xDD && s.Direction == DataDirection.ControllerToHost)
        {
            cqe.Dw1 = 0;
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
        _sendHead = _sendTail;
    }

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_fd >= 0)
        {
            Libc.Close(_fd);
            _fd = -1;
        }
        if (_error == null) Fail("queue closed");
        NativeMemory.AlignedFree(_hdrArea);
        NativeMemory.AlignedFree(_h2cArea);
        NativeMemory.Free(_zeroes);
        NativeMemory.AlignedFree(_rbuf);
        NativeMemory.Free(_iov);
    }

    /// <summary>Aborts the connection with a TCP reset (fault injection in tests).</summary>
    public void Reset()
    {
        if (_fd >= 0) NativeSocket.Abort(_fd);
        _fd = -1;
        Fail("connection reset by host");
    }
}
