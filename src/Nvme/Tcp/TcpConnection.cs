using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Interop;

namespace StorageNode.Nvme.Tcp;

/// <summary>
/// What the owner of a <see cref="TcpConnection"/> does with what the connection frames: the target's queue pair
/// (command dispatch) and the host's queue (completion matching) implement it; the framing is the connection's.
/// </summary>
public unsafe interface ITcpConnectionOwner
{
    /// <summary>
    /// The first look at a PDU: its common header, before its length and digest are checked. False when the type is
    /// not acceptable here; the owner has then reported the error itself (a TermReq, a close).
    /// </summary>
    bool AcceptPduType(CommonHeader* header);

    /// <summary>A whole PDU header (its header digest, if any, verified). Returns the work it did.</summary>
    int OnHeader(byte* header, int headerDigestBytes);

    /// <summary>The payload begun by <see cref="TcpConnection.ReceivePayload"/> has arrived whole.</summary>
    int OnPayloadDone(bool dataDigestError);

    /// <summary>A buffer for a payload begun by <see cref="TcpConnection.ReceivePayloadIntoBuffer"/>, or null to wait.</summary>
    byte* AcquirePayloadBuffer(uint length);

    /// <summary>
    /// The PDU at <paramref name="header"/> breaks the transport's rules (FES and the byte offset FEI of the field at
    /// fault, as a TermReq reports them). The connection stops parsing.
    /// </summary>
    void OnProtocolError(ushort fes, uint fei, string why, byte* header);

    /// <summary>The connection failed: closed by the peer, or a receive or send error. The connection stops parsing.</summary>
    void OnConnectionError(string why);

    /// <summary>An entry queued with a tag of 0 or more has been handed to the kernel whole. Returns the work it did.</summary>
    int OnSent(int tag);

    /// <summary><paramref name="bytes"/> arrived; <paramref name="drained"/> when the read took less than it asked for.</summary>
    void OnReceived(nint bytes, bool drained);

    /// <summary>The socket had nothing to read.</summary>
    void OnReceiveEmpty();
}

/// <summary>What one <see cref="TcpConnection.Receive"/> found.</summary>
public enum ReceiveOutcome : byte
{
    /// <summary>Nothing to read (or interrupted).</summary>
    Nothing,
    /// <summary>Bytes arrived, fewer than asked for: the socket is drained.</summary>
    Drained,
    /// <summary>Bytes arrived, as many as asked for: more may be waiting.</summary>
    Filled,
    /// <summary>The connection failed (closed by the peer or an error, reported to the owner).</summary>
    Failed,
}

/// <summary>
/// One NVMe/TCP connection's byte stream, for the target's queue pair and the host's queue alike: the receive buffer and
/// the PDU state machine (common header, HLEN, PLEN and header digest checks; payloads copied or received in place, with
/// their data digest), the send ring (iovecs that one sendmsg flushes), the digests and padding of the PDUs it builds,
/// and TermReq. What a PDU means is its owner's (<see cref="ITcpConnectionOwner"/>). Not thread-safe: one thread drives it.
/// </summary>
public sealed unsafe class TcpConnection
{
    private enum RecvState : byte { Header, Payload, PayloadWaitBuffer, Stopped }

    private struct SendEntry
    {
        public byte* Ptr;
        public int Length;
        public int Tag;
    }

    /// <summary>Payloads at least this large are received straight into their buffer when nothing else is buffered.</summary>
    public const int DirectReceiveThreshold = 16 * 1024;
    /// <summary>A tag for entries whose sending needs no notice.</summary>
    public const int NoTag = -1;
    private const int MaxIov = 256;
    /// <summary>The largest PDU data alignment ((xPDA + 1) * 4, xPDA at most 31) and so the most padding.</summary>
    private const int MaxPad = 128;
    private const int TermReqArea = PduSize.TermReqHeader + PduSize.TermReqMaxData;

    private readonly ITcpConnectionOwner _owner;
    private int _fd;

    // Receive buffer and the PDU state machine.
    private readonly byte* _rbuf;
    private readonly int _rcap;
    private int _rpos;
    private int _rend;
    private RecvState _state;
    private byte* _payloadDest;
    private uint _payloadRemaining;
    private int _payloadSkip;
    private int _payloadDigestRemaining;
    private uint _payloadCrc;
    private bool _payloadDiscard;
    private readonly byte* _digestStage;

    // Send ring.
    private readonly SendEntry[] _ring;
    private readonly int _ringMask;
    private int _sendHead;
    private int _sendTail;
    private int _headSent;
    private bool _sendsDropped;
    private readonly Libc.IoVec* _iov;
    private readonly byte* _static; // zeroes for padding, then the TermReq
    private bool _freed;

    /// <param name="fd">The connected socket (non-blocking I/O is requested per call).</param>
    /// <param name="owner">What the PDUs mean.</param>
    /// <param name="receiveBufferSize">Bytes received per recv (at least a largest header and its digest).</param>
    /// <param name="sendEntries">Entries the send ring holds at once; sized by the owner so it cannot overflow.</param>
    public TcpConnection(int fd, ITcpConnectionOwner owner, int receiveBufferSize, int sendEntries)
    {
        if (receiveBufferSize < 2 * (PduSize.MaxHeader + PduSize.Digest))
            throw new ArgumentOutOfRangeException(nameof(receiveBufferSize), receiveBufferSize, "too small for a PDU header");
        _fd = fd;
        _owner = owner;
        _rcap = receiveBufferSize;
        _rbuf = (byte*)NativeMemory.AlignedAlloc((nuint)_rcap, 64);
        _digestStage = (byte*)NativeMemory.AllocZeroed(8);
        int cap = 1;
        while (cap < sendEntries) cap <<= 1;
        _ring = new SendEntry[cap];
        _ringMask = cap - 1;
        _iov = (Libc.IoVec*)NativeMemory.Alloc((nuint)(MaxIov * sizeof(Libc.IoVec)));
        _static = (byte*)NativeMemory.AlignedAlloc(MaxPad + TermReqArea, 64);
        NativeMemory.Clear(_static, MaxPad + TermReqArea);
    }

    public int Fd => _fd;
    /// <summary>Header digests negotiated (ICReq/ICResp).</summary>
    public bool HeaderDigest { get; set; }
    /// <summary>Data digests negotiated (ICReq/ICResp).</summary>
    public bool DataDigest { get; set; }
    /// <summary>True while PDUs are queued and not yet handed to the kernel.</summary>
    public bool HasPendingSends => _sendHead != _sendTail;
    /// <summary>True when input is buffered that parsing could make progress on (it stopped for a buffer).</summary>
    public bool HasInputToParse => _state == RecvState.PayloadWaitBuffer
        || (_state == RecvState.Payload && _rpos < _rend) || (_state == RecvState.Header && _rend - _rpos >= PduSize.Common);
    /// <summary>True while a payload waits for the owner to have a buffer for it (<see cref="ReceivePayloadIntoBuffer"/>).</summary>
    public bool WaitingForBuffer => _state == RecvState.PayloadWaitBuffer;
    /// <summary>True when the bytes received so far end in the middle of nothing: no partial PDU is buffered.</summary>
    public bool InputEmpty => _rpos == _rend;

    /// <summary>Bytes received after <paramref name="p"/>, a pointer into the receive buffer (a PDU being handled).</summary>
    public int BufferedAfter(byte* p) => _rend - (int)(p - _rbuf);

    /// <summary>The header at the parse position, or null when less than a common header is buffered.</summary>
    public byte* UnparsedHeader => _rend - _rpos >= PduSize.Common ? _rbuf + _rpos : null;

    /// <summary>The header digest bytes a PDU of <paramref name="type"/> carries on this connection.</summary>
    public int HeaderDigestBytes(PduType type) => HeaderDigest && PduSize.HasHeaderDigest(type) ? PduSize.Digest : 0;

    /// <summary>The data digest bytes a PDU with data carries on this connection.</summary>
    public int DataDigestBytes => DataDigest ? PduSize.Digest : 0;

    /// <summary>Stops parsing (after a fatal error): what is buffered and what arrives later is ignored.</summary>
    public void StopReceiving() => _state = RecvState.Stopped;

    // ====================================================================== receive

    /// <summary>
    /// One receive from the socket and the parse of all that is buffered. Returns the work parsing did (what the
    /// owner's handlers returned); <paramref name="outcome"/> says whether bytes arrived and whether the read filled
    /// what it asked for (more may be waiting in the socket).
    /// </summary>
    public int Receive(out ReceiveOutcome outcome)
    {
        outcome = ReceiveOutcome.Nothing;
        if (_state == RecvState.Stopped || _fd < 0) return 0;

        // Large payloads go straight from the socket into their buffer.
        if (_state == RecvState.Payload && _rpos == _rend && _payloadSkip == 0 && !_payloadDiscard
            && _payloadRemaining >= DirectReceiveThreshold)
        {
            nint d = Libc.Recv(_fd, _payloadDest, _payloadRemaining, Libc.MSG_DONTWAIT);
            if (d <= 0) return ReceiveError(d, out outcome);
            outcome = d == _payloadRemaining ? ReceiveOutcome.Filled : ReceiveOutcome.Drained;
            _owner.OnReceived(d, drained: outcome == ReceiveOutcome.Drained);
            if (DataDigest) _payloadCrc = Crc32C.Update(_payloadCrc, _payloadDest, (int)d);
            _payloadDest += d;
            _payloadRemaining -= (uint)d;
            return Parse();
        }

        if (_rpos == _rend) _rpos = _rend = 0;
        else if (_rcap - _rend < PduSize.MaxHeader + PduSize.Digest && _rpos > 0)
        {
            Buffer.MemoryCopy(_rbuf + _rpos, _rbuf, _rcap, _rend - _rpos);
            _rend -= _rpos;
            _rpos = 0;
        }
        int space = _rcap - _rend;
        if (space == 0) return Parse(); // full of unparsed input (stalled on a data buffer): parse before reading more
        nint n = Libc.Recv(_fd, _rbuf + _rend, (nuint)space, Libc.MSG_DONTWAIT);
        if (n <= 0) return ReceiveError(n, out outcome);
        outcome = n == space ? ReceiveOutcome.Filled : ReceiveOutcome.Drained;
        _owner.OnReceived(n, drained: outcome == ReceiveOutcome.Drained);
        _rend += (int)n;
        return Parse();
    }

    private int ReceiveError(nint n, out ReceiveOutcome outcome)
    {
        outcome = ReceiveOutcome.Failed;
        if (n == 0)
        {
            Fail("connection closed by the peer");
            return 0;
        }
        int e = Libc.Errno;
        outcome = ReceiveOutcome.Nothing;
        if (e == Libc.EAGAIN) _owner.OnReceiveEmpty();
        else if (e != Libc.EINTR)
        {
            outcome = ReceiveOutcome.Failed;
            Fail($"receive failed: {Libc.StrError(e)}");
        }
        return 0;
    }

    private void Fail(string why)
    {
        _state = RecvState.Stopped;
        _owner.OnConnectionError(why);
    }

    /// <summary>Parses every complete PDU header and the payload bytes that are buffered. Returns the work done.</summary>
    public int Parse()
    {
        int work = 0;
        while (true)
        {
            int avail = _rend - _rpos;
            switch (_state)
            {
                case RecvState.Header:
                {
                    if (avail < PduSize.Common) return work;
                    byte* hdr = _rbuf + _rpos;
                    CommonHeader* ch = (CommonHeader*)hdr;
                    if (!_owner.AcceptPduType(ch))
                    {
                        _state = RecvState.Stopped;
                        return work;
                    }
                    int hlen = PduSize.HeaderLength(ch->Type);
                    if (ch->Hlen != hlen)
                    {
                        ProtocolError(TermReqFes.InvalidHeaderField, PduField.Hlen, $"HLEN {ch->Hlen} for PDU type {ch->Type} (expected {hlen})", hdr);
                        return work;
                    }
                    int hd = HeaderDigestBytes(ch->Type);
                    int need = hlen + hd;
                    if (ch->Plen < (uint)need)
                    {
                        ProtocolError(TermReqFes.InvalidHeaderField, PduField.Plen, $"PLEN {ch->Plen} shorter than the {ch->Type} header ({need})", hdr);
                        return work;
                    }
                    if (avail < need) return work;
                    if (hd != 0 && Crc32C.Compute(new ReadOnlySpan<byte>(hdr, hlen)) != Unsafe.ReadUnaligned<uint>(hdr + hlen))
                    {
                        ProtocolError(TermReqFes.HeaderDigestError, 0, $"header digest mismatch on PDU type {ch->Type}", hdr);
                        return work;
                    }
                    _rpos += need;
                    work += _owner.OnHeader(hdr, hd);
                    break;
                }
                case RecvState.PayloadWaitBuffer:
                {
                    byte* buf = _owner.AcquirePayloadBuffer(_payloadRemaining);
                    if (buf == null) return work; // tried again when the owner flushes
                    _payloadDest = buf;
                    _state = RecvState.Payload;
                    break;
                }
                case RecvState.Payload:
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
                        if (!_payloadDiscard)
                        {
                            Buffer.MemoryCopy(_rbuf + _rpos, _payloadDest, n, n);
                            if (DataDigest) _payloadCrc = Crc32C.Update(_payloadCrc, _payloadDest, n);
                            _payloadDest += n;
                        }
                        _rpos += n;
                        avail -= n;
                        _payloadRemaining -= (uint)n;
                    }
                    if (_payloadRemaining == 0 && _payloadDigestRemaining > 0 && avail > 0)
                    {
                        int n = Math.Min(avail, _payloadDigestRemaining);
                        Buffer.MemoryCopy(_rbuf + _rpos, _digestStage + (PduSize.Digest - _payloadDigestRemaining), n, n);
                        _payloadDigestRemaining -= n;
                        _rpos += n;
                    }
                    if (_payloadSkip != 0 || _payloadRemaining != 0 || _payloadDigestRemaining != 0) return work;
                    _state = RecvState.Header;
                    bool digestError = DataDigest && !_payloadDiscard
                        && Crc32C.Finish(_payloadCrc) != Unsafe.ReadUnaligned<uint>(_digestStage);
                    work += _owner.OnPayloadDone(digestError);
                    break;
                }
                default:
                    return work;
            }
        }
    }

    private void ProtocolError(ushort fes, uint fei, string why, byte* hdr)
    {
        _state = RecvState.Stopped;
        _owner.OnProtocolError(fes, fei, why, hdr);
    }

    /// <summary>
    /// The header just handled is followed by <paramref name="length"/> bytes of data after <paramref name="skip"/>
    /// bytes of padding (and a data digest when negotiated): receive them into <paramref name="dest"/> (null: read
    /// and drop them). <see cref="ITcpConnectionOwner.OnPayloadDone"/> follows.
    /// </summary>
    public void ReceivePayload(byte* dest, uint length, int skip)
    {
        BeginPayload(length, skip);
        _payloadDest = dest;
        _payloadDiscard = dest == null;
        _state = RecvState.Payload;
    }

    /// <summary>As <see cref="ReceivePayload"/>, into a buffer the owner gives when it has one (<see cref="ITcpConnectionOwner.AcquirePayloadBuffer"/>).</summary>
    public void ReceivePayloadIntoBuffer(uint length, int skip)
    {
        BeginPayload(length, skip);
        _payloadDiscard = false;
        _payloadDest = _owner.AcquirePayloadBuffer(length);
        _state = _payloadDest == null ? RecvState.PayloadWaitBuffer : RecvState.Payload;
    }

    private void BeginPayload(uint length, int skip)
    {
        _payloadRemaining = length;
        _payloadSkip = skip;
        _payloadDigestRemaining = DataDigestBytes;
        _payloadCrc = Crc32C.Seed;
    }

    // ====================================================================== send

    /// <summary>
    /// Queues <paramref name="length"/> bytes at <paramref name="ptr"/> (pinned until sent). When the entry has been
    /// handed to the kernel whole, <see cref="ITcpConnectionOwner.OnSent"/> is told its <paramref name="tag"/> (unless
    /// <see cref="NoTag"/>).
    /// </summary>
    public void Enqueue(byte* ptr, int length, int tag)
    {
        if (_sendTail - _sendHead > _ringMask)
            throw new InvalidOperationException("NVMe/TCP send ring overflow"); // sized by the owner so this cannot happen
        ref SendEntry e = ref _ring[_sendTail & _ringMask];
        e.Ptr = ptr;
        e.Length = length;
        e.Tag = tag;
        _sendTail++;
    }

    /// <summary>
    /// Writes the common header of the PDU at <paramref name="h"/> (its other fields already written) and its header
    /// digest, and queues it: header, padding to <paramref name="align"/>, <paramref name="length"/> bytes of
    /// <paramref name="data"/> (none when 0) and their data digest, written at <paramref name="digest"/>. Every entry
    /// carries <paramref name="tag"/> but the last, which carries <paramref name="lastTag"/>.
    /// </summary>
    public void EnqueuePdu(byte* h, PduType type, byte flags, int align, byte* data, uint length, byte* digest, int tag, int lastTag)
    {
        int hlen = PduSize.HeaderLength(type);
        int hd = HeaderDigestBytes(type);
        int headerBytes = hlen + hd;
        if (length == 0)
        {
            ((CommonHeader*)h)[0] = new CommonHeader(type, (byte)(flags | (hd != 0 ? PduFlags.HeaderDigest : 0)), (byte)hlen, 0, (uint)headerBytes);
            WriteHeaderDigest(h, hlen, hd);
            Enqueue(h, headerBytes, lastTag);
            return;
        }
        int dd = DataDigestBytes;
        int pdo = (headerBytes + align - 1) / align * align;
        byte allFlags = (byte)(flags | (hd != 0 ? PduFlags.HeaderDigest : 0) | (dd != 0 ? PduFlags.DataDigest : 0));
        ((CommonHeader*)h)[0] = new CommonHeader(type, allFlags, (byte)hlen, (byte)pdo, (uint)(pdo + length + dd));
        WriteHeaderDigest(h, hlen, hd);
        Enqueue(h, headerBytes, tag);
        if (pdo > headerBytes) Enqueue(_static, pdo - headerBytes, tag);
        if (dd == 0)
        {
            Enqueue(data, (int)length, lastTag);
            return;
        }
        Enqueue(data, (int)length, tag);
        Unsafe.WriteUnaligned(digest, Crc32C.Compute(new ReadOnlySpan<byte>(data, (int)length)));
        Enqueue(digest, dd, lastTag);
    }

    private static void WriteHeaderDigest(byte* h, int hlen, int hd)
    {
        if (hd != 0) Unsafe.WriteUnaligned(h + hlen, Crc32C.Compute(new ReadOnlySpan<byte>(h, hlen)));
    }

    /// <summary>
    /// Queues a TermReq (<paramref name="type"/>: C2HTermReq or H2CTermReq) with <paramref name="fes"/> and
    /// <paramref name="fei"/>, carrying the start of the offending PDU at <paramref name="offending"/> (a pointer into
    /// the receive buffer, or null).
    /// </summary>
    public void EnqueueTermReq(PduType type, ushort fes, uint fei, byte* offending, int tag)
    {
        int copy = 0;
        if (offending != null)
        {
            int available = BufferedAfter(offending);
            copy = Math.Min(Math.Min(Math.Max((int)((CommonHeader*)offending)->Hlen, PduSize.Common), PduSize.TermReqMaxData), available);
        }
        byte* t = _static + MaxPad;
        TermReqPdu* term = (TermReqPdu*)t;
        *term = default;
        term->Common = new CommonHeader(type, 0, PduSize.TermReqHeader, 0, (uint)(PduSize.TermReqHeader + copy));
        term->Fes = fes;
        term->Fei = fei;
        if (copy > 0) Buffer.MemoryCopy(offending, t + PduSize.TermReqHeader, copy, copy);
        Enqueue(t, PduSize.TermReqHeader + copy, tag);
    }

    /// <summary>
    /// Hands what is queued to the kernel (one sendmsg per up to 256 entries). Returns the work done (what
    /// <see cref="ITcpConnectionOwner.OnSent"/> returned); <paramref name="blocked"/> is true when the socket took less
    /// than was queued (wait for it to be writable). A send error goes to <see cref="ITcpConnectionOwner.OnConnectionError"/>.
    /// </summary>
    public int Flush(out bool blocked)
    {
        blocked = false;
        int work = 0;
        _sendsDropped = false;
        while (_sendHead != _sendTail && _fd >= 0)
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
                if (err == Libc.EAGAIN || err == Libc.EINTR)
                {
                    blocked = true;
                    return work;
                }
                Fail($"send failed: {Libc.StrError(err)}");
                return work + 1;
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
                int tag = e.Tag;
                e = default;
                if (tag >= 0) work += _owner.OnSent(tag);
                if (_sendsDropped) return work; // the owner closed or failed the connection meanwhile
            }
            if ((nuint)sent < total)
            {
                blocked = true;
                return work;
            }
        }
        return work;
    }

    /// <summary>Forgets everything queued and not yet sent (the connection is going away).</summary>
    public void DropSends()
    {
        _sendHead = _sendTail = 0;
        _headSent = 0;
        _sendsDropped = true;
    }

    // ====================================================================== teardown

    /// <summary>Closes the socket (<paramref name="abort"/>: with a TCP reset), stops parsing and drops what is queued.</summary>
    public void CloseSocket(bool abort = false)
    {
        _state = RecvState.Stopped;
        DropSends();
        if (_fd < 0) return;
        if (abort) NativeSocket.Abort(_fd);
        else
        {
            Libc.Shutdown(_fd, Libc.SHUT_RDWR);
            Libc.Close(_fd);
        }
        _fd = -1;
    }

    /// <summary>Frees the native buffers (the socket must be closed and nothing may point into them any more).</summary>
    public void Free()
    {
        if (_freed) return;
        _freed = true;
        NativeMemory.AlignedFree(_rbuf);
        NativeMemory.Free(_digestStage);
        NativeMemory.Free(_iov);
        NativeMemory.AlignedFree(_static);
    }
}
