using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using StorageNode.Interop;
using StorageNode.Nvme;
using StorageNode.Nvme.Spec;
using StorageNode.Nvme.Tcp;
using StorageNode.Reactors;
using StorageNode.Target;

namespace StorageNode.Transport.Tcp;

/// <summary>Per-command state of the NVMe/TCP transport.</summary>
internal sealed unsafe class TcpRequest(QueuePair qpair, ushort slot, byte* headers) : NvmfRequest(qpair, slot)
{
    /// <summary>This slot's pinned PDU header area (response, R2Ts, C2H headers and digests).</summary>
    public readonly byte* Headers = headers;
    public uint H2CReceived;
    public uint R2TOffset;
    public int R2TOutstanding;
    public uint R2TOldestEnd;
    public int R2TSequence;
    public bool DataDigestError;
    /// <summary>Status decided while the capsule arrived (bad SGL): consume the data, then fail.</summary>
    public bool FailAfterData;
}

/// <summary>
/// One NVMe/TCP connection on the target side. Lives on one reactor. Receives in bulk into a pinned buffer
/// and parses every PDU it holds; queues outgoing PDUs as iovecs that one sendmsg per iteration flushes.
/// </summary>
internal sealed unsafe class TcpQueuePair : QueuePair
{
    private enum RecvState : byte { AwaitICReq, AwaitHeader, Payload, WaitCapsuleBuffer, Fatal, Closed }

    private const int SendFlagRelease = 1;
    private const int SendFlagClose = 2;
    private const int MaxIov = 256;
    private const int RespOffset = 0;
    private const int R2TOffsetInBlock = 32;
    private const int DirectReceiveThreshold = 16 * 1024;
    // Static area: ICResp at 0, C2HTermReq (header + up to 128 bytes of the offending PDU) at 128,
    // zero bytes for C2HData padding (PDO alignment) at 384.
    private const int StaticICResp = 0;
    private const int StaticTermReq = 128;
    private const int StaticZeroes = 384;
    private const int StaticAreaSize = 640;

    private struct SendEntry
    {
        public byte* Ptr;
        public int Length;
        public short Slot;
        public byte Flags;
    }

    private readonly ILogger _log;
    private readonly TargetOptions _opt;
    private readonly string _peer;
    private readonly long _createdTimestamp;
    // When each received byte arrived at the earliest (relay deadlines count from there).
    private ArrivalClock _arrival;
    private int _fd;
    private RecvState _state = RecvState.AwaitICReq;
    private bool _closed;
    private string _closeReason = "";

    // Negotiated at ICReq/ICResp.
    private bool _hdgst;
    private bool _ddgst;
    private int _hostPduAlign = 4;
    private int _maxR2T = 1;

    // Receive buffer.
    private readonly byte* _rbuf;
    private readonly int _rcap;
    private int _rpos;
    private int _rend;

    // The PDU whose payload is being received.
    private TcpRequest? _payloadReq;
    private byte* _payloadDest;
    private uint _payloadRemaining;
    private int _payloadSkip;
    private int _payloadDigestRemaining;
    private uint _payloadCrc;
    private uint _payloadDatal;
    private bool _payloadIsCapsule;
    private readonly byte* _digestStage;

    // Requests.
    private readonly TcpRequest[] _reqs;
    private readonly int[] _freeSlots;
    private int _freeCount;
    private readonly int[] _bufferWaiters;
    private int _waitHead;
    private int _waitCount;
    private readonly byte* _headerArea;
    private readonly int _headerBlock;
    private readonly int _c2hOffset;
    private readonly int _c2hDigestOffset;
    private readonly int _maxC2HPdus;
    private readonly byte* _staticArea; // ICResp, TermReq, zero padding

    // Send ring.
    private readonly SendEntry[] _sendRing;
    private readonly int _sendMask;
    private int _sendHead;
    private int _sendTail;
    private int _headSent;
    private readonly Libc.IoVec* _iov;
    private bool _wantWrite;
    private ushort _sqHeadReport;

    private readonly TcpTransport _transport;

    public TcpQueuePair(int fd, string peer, Reactor reactor, NvmfTarget target, ListenerInfo listener, TcpTransport transport, ILogger log)
        : base(reactor, target, listener)
    {
        _transport = transport;
        _fd = fd;
        _peer = peer;
        _log = log;
        _opt = target.Options;
        _createdTimestamp = Stopwatch.GetTimestamp();
        _arrival = new ArrivalClock(_createdTimestamp);
        _rcap = _opt.ReceiveBufferSize;
        _rbuf = (byte*)NativeMemory.AlignedAlloc((nuint)_rcap, 64);
        _digestStage = (byte*)NativeMemory.Alloc(8);

        int slots = Math.Max(_opt.MaxQueueDepth, _opt.AdminQueueDepth);
        _maxC2HPdus = (int)((_opt.MaxIoSize + _opt.MaxC2HDataSize - 1) / _opt.MaxC2HDataSize);
        _c2hOffset = R2TOffsetInBlock + 32 * _opt.MaxR2TPerCommand;
        _c2hDigestOffset = _c2hOffset + 32 * _maxC2HPdus;
        _headerBlock = (_c2hDigestOffset + 4 * _maxC2HPdus + 63) & ~63;
        _headerArea = (byte*)NativeMemory.AlignedAlloc((nuint)(_headerBlock * slots), 64);
        _staticArea = (byte*)NativeMemory.AlignedAlloc(StaticAreaSize, 64);
        NativeMemory.Clear(_staticArea, StaticAreaSize);

        _reqs = new TcpRequest[slots];
        _freeSlots = new int[slots];
        _bufferWaiters = new int[slots];
        for (int i = 0; i < slots; i++)
        {
            _reqs[i] = new TcpRequest(this, (ushort)i, _headerArea + i * _headerBlock);
            _freeSlots[i] = slots - 1 - i;
        }
        _freeCount = slots;

        int entries = slots * (3 * _maxC2HPdus + 2 + _opt.MaxR2TPerCommand) + 16;
        int cap = 1;
        while (cap < entries) cap <<= 1;
        _sendRing = new SendEntry[cap];
        _sendMask = cap - 1;
        _iov = (Libc.IoVec*)NativeMemory.Alloc((nuint)(MaxIov * sizeof(Libc.IoVec)));
    }

    public override int Fd => _fd;
    public override string PeerAddress => _peer;
    public override uint InCapsuleDataSize => Qid == 0 && Connected ? _opt.AdminInCapsuleDataSize : Math.Max(_opt.InCapsuleDataSize, _opt.AdminInCapsuleDataSize);
    public override bool IsClosed => _closed;
    public int OutstandingRequests => _reqs.Length - _freeCount;

    /// <summary>True when the connection has not completed Connect within <paramref name="ticks"/>.</summary>
    public bool ConnectOverdue(long now, long ticks) => !Connected && !_closed && now - _createdTimestamp > ticks;

    // ====================================================================== receive

    public override int OnReady(uint events)
    {
        if (_closed) return 0;
        int work = 0;
        if ((events & Libc.EPOLLOUT) != 0) work += Flush();
        if ((events & (Libc.EPOLLIN | Libc.EPOLLRDHUP | Libc.EPOLLHUP | Libc.EPOLLERR)) != 0) work += Receive();
        if (!_closed) Reactor.MarkDirty(this);
        return work;
    }

    private int Receive()
    {
        if (_state is RecvState.Fatal or RecvState.Closed) return 0;

        // Large payloads go straight from the socket into the command's buffer.
        if (_state == RecvState.Payload && _rpos == _rend && _payloadSkip == 0 && _payloadDest != null
            && _payloadRemaining >= DirectReceiveThreshold)
        {
            nint d = Libc.Recv(_fd, _payloadDest, _payloadRemaining, Libc.MSG_DONTWAIT);
            if (d > 0)
            {
                _arrival.OnReceived(d, drained: d < _payloadRemaining, _fd, Reactor.Now);
                if (_ddgst) _payloadCrc = Crc32C.Update(_payloadCrc, _payloadDest, (int)d);
                _payloadDest += d;
                _payloadRemaining -= (uint)d;
                ProcessInput();
                return 1;
            }
            return HandleRecvError(d);
        }

        if (_rpos == _rend) _rpos = _rend = 0;
        else if (_rcap - _rend < PduSize.MaxHeader + PduSize.Digest && _rpos > 0)
        {
            Buffer.MemoryCopy(_rbuf + _rpos, _rbuf, _rcap, _rend - _rpos);
            _rend -= _rpos;
            _rpos = 0;
        }
        int space = _rcap - _rend;
        if (space == 0)
        {
            // Buffer full of unparsed input (stalled on a data buffer); parse before reading more.
            return ProcessInput();
        }
        nint n = Libc.Recv(_fd, _rbuf + _rend, (nuint)space, Libc.MSG_DONTWAIT);
        if (n > 0)
        {
            _arrival.OnReceived(n, drained: n < space, _fd, Reactor.Now);
            _rend += (int)n;
            ProcessInput();
            return 1;
        }
        return HandleRecvError(n);
    }

    private int HandleRecvError(nint n)
    {
        if (n == 0)
        {
            Close("connection closed by host");
            return 1;
        }
        int e = Libc.Errno;
        if (e == Libc.EAGAIN)
        {
            _arrival.OnEmpty(Reactor.Now);
            return 0;
        }
        if (e == Libc.EINTR) return 0;
        Close($"receive failed: {Libc.StrError(e)}");
        return 1;
    }

    /// <summary>Parses every complete PDU (and payload bytes) held in the receive buffer.</summary>
    private int ProcessInput()
    {
        int work = 0;
        while (!_closed)
        {
            int avail = _rend - _rpos;
            switch (_state)
            {
                case RecvState.AwaitICReq:
                case RecvState.AwaitHeader:
                {
                    if (avail < PduSize.Common) return work;
                    CommonHeader* ch = (CommonHeader*)(_rbuf + _rpos);
                    int expected = PduSize.HeaderLength(ch->Type);
                    if (_state == RecvState.AwaitICReq && ch->Type != PduType.ICReq)
                    {
                        Close($"first PDU is type {(byte)ch->Type:X2}, not ICReq");
                        return work;
                    }
                    if (expected == 0 || !IsHostPdu(ch->Type))
                    {
                        Fatal(TermReqFes.InvalidHeaderField, 0, "PDU type " + ((byte)ch->Type).ToString("X2") + " is not valid from a host");
                        return work;
                    }
                    if (ch->Hlen != expected)
                    {
                        Fatal(TermReqFes.InvalidHeaderField, 2, $"HLEN {ch->Hlen} for PDU type {ch->Type} (expected {expected})");
                        return work;
                    }
                    int hd = _hdgst && PduSize.HasHeaderDigest(ch->Type) ? PduSize.Digest : 0;
                    int need = expected + hd;
                    if (ch->Plen < (uint)need)
                    {
                        Fatal(TermReqFes.InvalidHeaderField, 4, $"PLEN {ch->Plen} shorter than the header ({need})");
                        return work;
                    }
                    if (avail < need) return work;
                    if (hd != 0)
                    {
                        uint want = Unsafe.ReadUnaligned<uint>(_rbuf + _rpos + expected);
                        if (Crc32C.Compute(new ReadOnlySpan<byte>(_rbuf + _rpos, expected)) != want)
                        {
                            Fatal(TermReqFes.HeaderDigestError, 0, "header digest mismatch");
                            return work;
                        }
                    }
                    byte* hdr = _rbuf + _rpos;
                    _rpos += need;
                    work++;
                    HandleHeader(hdr, hd);
                    break;
                }
                case RecvState.WaitCapsuleBuffer:
                {
                    TcpRequest req = _payloadReq!;
                    req.Data = Reactor.Pools.Get(_payloadRemaining);
                    if (req.Data == null) return work; // retried when the connection is flushed
                    _payloadDest = req.Data;
                    _state = RecvState.Payload;
                    break;
                }
                case RecvState.Payload:
                {
                    if (avail == 0)
                    {
                        if (_payloadSkip == 0 && _payloadRemaining == 0 && _payloadDigestRemaining == 0) PayloadDone();
                        return work;
                    }
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
                        if (_payloadDest != null)
                        {
                            Buffer.MemoryCopy(_rbuf + _rpos, _payloadDest, n, n);
                            if (_ddgst) _payloadCrc = Crc32C.Update(_payloadCrc, _payloadDest, n);
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
                    if (_payloadSkip == 0 && _payloadRemaining == 0 && _payloadDigestRemaining == 0)
                    {
                        work++;
                        PayloadDone();
                    }
                    break;
                }
                default:
                    return work;
            }
        }
        return work;
    }

    private static bool IsHostPdu(PduType t) => t is PduType.ICReq or PduType.H2CTermReq or PduType.CapsuleCmd or PduType.H2CData;

    private void HandleHeader(byte* hdr, int hd)
    {
        CommonHeader* ch = (CommonHeader*)hdr;
        switch (ch->Type)
        {
            case PduType.ICReq:
                if (_state != RecvState.AwaitICReq)
                {
                    Fatal(TermReqFes.PduSequenceError, 0, "second ICReq", hdr);
                    return;
                }
                HandleICReq((ICReqPdu*)hdr);
                return;
            case PduType.H2CTermReq:
            {
                TermReqPdu* t = (TermReqPdu*)hdr;
                Close($"host sent H2CTermReq (FES {t->Fes:X2})");
                return;
            }
            case PduType.CapsuleCmd:
                HandleCapsule((CapsuleCmdPdu*)hdr, hd);
                return;
            case PduType.H2CData:
                HandleH2CData((H2CDataPdu*)hdr, hd);
                return;
        }
    }

    private bool CheckDigestFlags(CommonHeader* ch, bool hasData)
    {
        bool hflag = (ch->Flags & PduFlags.HeaderDigest) != 0;
        bool dflag = (ch->Flags & PduFlags.DataDigest) != 0;
        if (hflag != _hdgst || (hasData && dflag != _ddgst) || (!hasData && dflag))
        {
            Fatal(TermReqFes.InvalidHeaderField, 1, $"digest flags {ch->Flags:X2} do not match the negotiated digests", (byte*)ch);
            return false;
        }
        return true;
    }

    private void HandleICReq(ICReqPdu* ic)
    {
        if (ic->Common.Plen != PduSize.ICReq)
        {
            Fatal(TermReqFes.InvalidHeaderField, 4, $"ICReq PLEN {ic->Common.Plen}", (byte*)ic);
            return;
        }
        if (ic->Pfv != 0)
        {
            Fatal(TermReqFes.UnsupportedParameter, 8, $"ICReq PFV {ic->Pfv} not supported", (byte*)ic);
            return;
        }
        if (ic->Hpda > 31)
        {
            Fatal(TermReqFes.UnsupportedParameter, 10, $"ICReq HPDA {ic->Hpda} out of range", (byte*)ic);
            return;
        }
        _hdgst = (ic->Digest & 1) != 0;
        _ddgst = (ic->Digest & 2) != 0;
        _hostPduAlign = (ic->Hpda + 1) * 4;
        _maxR2T = (int)Math.Min((ulong)ic->MaxR2T + 1, (ulong)_opt.MaxR2TPerCommand);

        ICRespPdu* resp = (ICRespPdu*)(_staticArea + StaticICResp);
        *resp = default;
        resp->Common = new CommonHeader(PduType.ICResp, 0, PduSize.ICResp, 0, PduSize.ICResp);
        resp->Pfv = 0;
        resp->Cpda = 0;
        resp->Digest = ic->Digest;
        resp->MaxH2CData = _opt.MaxH2CDataSize;
        Enqueue((byte*)resp, PduSize.ICResp, -1, 0);
        _state = RecvState.AwaitHeader;
    }

    private void HandleCapsule(CapsuleCmdPdu* pdu, int hd)
    {
        CommonHeader* ch = &pdu->Common;
        uint plen = ch->Plen;
        int hlen = PduSize.CapsuleCmd;
        bool hasData = plen > (uint)(hlen + hd);
        if (!CheckDigestFlags(ch, hasData)) return;
        uint dataLen = 0;
        int skip = 0;
        if (hasData)
        {
            int dd = _ddgst ? PduSize.Digest : 0;
            if (ch->Pdo < hlen + hd || ch->Pdo > plen)
            {
                Fatal(TermReqFes.InvalidHeaderField, 3, $"capsule PDO {ch->Pdo}", (byte*)pdu);
                return;
            }
            if (plen < (uint)(ch->Pdo + dd + 1))
            {
                Fatal(TermReqFes.InvalidHeaderField, 4, $"capsule PLEN {plen} leaves no room for data", (byte*)pdu);
                return;
            }
            dataLen = plen - ch->Pdo - (uint)dd;
            if (dataLen > InCapsuleDataSize)
            {
                Fatal(TermReqFes.DataTransferLimitExceeded, 4, $"in-capsule data {dataLen} B exceeds {InCapsuleDataSize} B", (byte*)pdu);
                return;
            }
            skip = ch->Pdo - hlen - hd;
        }

        // A host may have at most SQSIZE commands outstanding (Connect told us the size).
        int limit = Connected && SqSize > 0 ? Math.Min(SqSize, _reqs.Length) : _reqs.Length;
        if (_reqs.Length - _freeCount >= limit)
        {
            Fatal(TermReqFes.PduSequenceError, 0, $"host exceeded the submission queue size ({limit} commands outstanding)", (byte*)pdu);
            return;
        }
        TcpRequest req = _reqs[_freeSlots[--_freeCount]];
        req.Reset();
        req.Sqe = pdu->Sqe;
        req.H2CReceived = 0;
        req.R2TOffset = 0;
        req.R2TOutstanding = 0;
        req.R2TSequence = 0;
        req.DataDigestError = false;
        req.FailAfterData = false;
        req.Data = null;
        req.ArrivedAfter = _arrival.ArrivedAfter(_arrival.Received - (_rend - ((byte*)pdu - _rbuf)));
        _sqHeadReport = AdvanceSqHead();

        SglDescriptor sgl = req.Sqe.Dptr;
        if (hasData)
        {
            NvmeStatus sglStatus = NvmeStatus.Success;
            if (sgl.Identifier != SglDescriptor.InCapsuleDataBlock)
                sglStatus = NvmeStatus.Generic(GenericStatus.SglDescriptorTypeInvalid);
            else if (sgl.Address != 0)
                sglStatus = NvmeStatus.Generic(GenericStatus.InvalidSglOffset);
            else if (sgl.Length != dataLen)
                sglStatus = NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);

            bool ok = sglStatus.IsSuccess && CommandDispatcher.Prepare(req, dataLen);
            if (ok && req.Direction != DataDirection.HostToController)
            {
                sglStatus = NvmeStatus.Generic(GenericStatus.SglDescriptorTypeInvalid);
                ok = false;
            }
            if (!sglStatus.IsSuccess) req.Status = sglStatus;
            req.FailAfterData = !ok;
            req.State = RequestState.ReceivingCapsuleData;
            BeginPayload(req, isCapsule: true, dataLen, skip, discard: !ok);
            return;
        }

        uint length;
        if (sgl.Identifier == SglDescriptor.TransportDataBlock) length = sgl.Length;
        else if (sgl.Length == 0) length = 0;
        else
        {
            req.Status = sgl.Identifier == SglDescriptor.InCapsuleDataBlock
                ? NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid)
                : NvmeStatus.Generic(GenericStatus.SglDescriptorTypeInvalid);
            req.Complete();
            return;
        }
        if (!CommandDispatcher.Prepare(req, length))
        {
            req.Complete();
            return;
        }
        if (length == 0)
        {
            req.State = RequestState.Executing;
            CommandDispatcher.Execute(req);
            return;
        }
        StartDataPhase(req);
    }

    private void BeginPayload(TcpRequest req, bool isCapsule, uint length, int skip, bool discard)
    {
        _payloadReq = req;
        _payloadIsCapsule = isCapsule;
        _payloadRemaining = length;
        _payloadDatal = length;
        _payloadSkip = skip;
        _payloadDigestRemaining = _ddgst ? PduSize.Digest : 0;
        _payloadCrc = Crc32C.Seed;
        if (discard)
        {
            _payloadDest = null;
            _state = RecvState.Payload;
            return;
        }
        if (isCapsule)
        {
            req.Data = Reactor.Pools.Get(length);
            if (req.Data == null)
            {
                _state = RecvState.WaitCapsuleBuffer;
                return;
            }
            _payloadDest = req.Data;
        }
        else
        {
            _payloadDest = req.Data + req.H2CReceived;
        }
        _state = RecvState.Payload;
    }

    private void PayloadDone()
    {
        TcpRequest req = _payloadReq!;
        _payloadReq = null;
        _state = RecvState.AwaitHeader;
        if (_ddgst && _payloadDest != null)
        {
            uint got = Unsafe.ReadUnaligned<uint>(_digestStage);
            if (Crc32C.Finish(_payloadCrc) != got) req.DataDigestError = true;
        }

        if (_payloadIsCapsule)
        {
            if (req.FailAfterData)
            {
                req.Complete();
                return;
            }
            if (req.DataDigestError)
            {
                req.Fail(NvmeStatus.Generic(GenericStatus.TransientTransportError, dnr: false));
                return;
            }
            req.State = RequestState.Executing;
            CommandDispatcher.Execute(req);
            return;
        }

        // H2CData for an R2T.
        req.H2CReceived += _payloadDatal;
        while (req.R2TOutstanding > 0 && req.H2CReceived >= req.R2TOldestEnd)
        {
            req.R2TOutstanding--;
            req.R2TOldestEnd = Math.Min(req.R2TOldestEnd + _opt.MaxH2CDataSize, req.Length);
        }
        if (req.H2CReceived == req.Length)
        {
            if (req.DataDigestError)
            {
                req.Fail(NvmeStatus.Generic(GenericStatus.TransientTransportError, dnr: false));
                return;
            }
            req.State = RequestState.Executing;
            CommandDispatcher.Execute(req);
            return;
        }
        SendR2Ts(req);
    }

    private void HandleH2CData(H2CDataPdu* pdu, int hd)
    {
        CommonHeader* ch = &pdu->Common;
        int hlen = PduSize.H2CData;
        uint plen = ch->Plen;
        if (!CheckDigestFlags(ch, hasData: plen > (uint)(hlen + hd))) return;
        int dd = _ddgst ? PduSize.Digest : 0;
        if (ch->Pdo < hlen + hd || ch->Pdo > plen)
        {
            Fatal(TermReqFes.InvalidHeaderField, 3, $"H2CData PDO {ch->Pdo}", (byte*)pdu);
            return;
        }
        if (plen != ch->Pdo + pdu->Datal + (uint)dd || pdu->Datal == 0)
        {
            Fatal(TermReqFes.InvalidHeaderField, 16, $"H2CData DATAL {pdu->Datal} does not match PLEN {plen}", (byte*)pdu);
            return;
        }
        if (pdu->Ttag >= _reqs.Length || _reqs[pdu->Ttag].State != RequestState.TransferringHostData || _reqs[pdu->Ttag].Sqe.Cid != pdu->Cccid)
        {
            Fatal(TermReqFes.InvalidHeaderField, 10, $"H2CData for unknown transfer (TTAG {pdu->Ttag}, CCCID {pdu->Cccid})", (byte*)pdu);
            return;
        }
        TcpRequest req = _reqs[pdu->Ttag];
        if (pdu->Datal > _opt.MaxH2CDataSize)
        {
            Fatal(TermReqFes.DataTransferLimitExceeded, 16, $"H2CData DATAL {pdu->Datal} exceeds MAXH2CDATA {_opt.MaxH2CDataSize}", (byte*)pdu);
            return;
        }
        if (pdu->Datao != req.H2CReceived)
        {
            Fatal(TermReqFes.DataTransferOutOfRange, 12, $"H2CData DATAO {pdu->Datao}, expected {req.H2CReceived}", (byte*)pdu);
            return;
        }
        if ((ulong)pdu->Datao + pdu->Datal > req.R2TOffset)
        {
            Fatal(TermReqFes.DataTransferOutOfRange, 16, $"H2CData {pdu->Datao}+{pdu->Datal} beyond the requested window (end {req.R2TOffset})", (byte*)pdu);
            return;
        }
        BeginPayload(req, isCapsule: false, pdu->Datal, ch->Pdo - hlen - hd, discard: false);
    }

    // ====================================================================== data phase

    private void StartDataPhase(TcpRequest req)
    {
        if (req.Direction == DataDirection.ControllerToHost && IoCommands.TryZeroCopyRead(req))
        {
            req.State = RequestState.Executing;
            CommandDispatcher.Execute(req);
            return;
        }
        // Commands already waiting for a buffer go first, so large transfers are not starved.
        byte* buf = _waitCount == 0 ? Reactor.Pools.Get(req.Length) : null;
        if (buf == null)
        {
            req.State = RequestState.NeedBuffer;
            _bufferWaiters[(_waitHead + _waitCount++) % _bufferWaiters.Length] = req.Slot;
            return;
        }
        BeginDataPhase(req, buf);
    }

    private void BeginDataPhase(TcpRequest req, byte* buffer)
    {
        req.Data = buffer;
        if (req.Direction == DataDirection.HostToController)
        {
            req.State = RequestState.TransferringHostData;
            req.R2TOldestEnd = Math.Min(_opt.MaxH2CDataSize, req.Length);
            SendR2Ts(req);
        }
        else
        {
            req.State = RequestState.Executing;
            CommandDispatcher.Execute(req);
        }
    }

    private void SendR2Ts(TcpRequest req)
    {
        while (req.R2TOutstanding < _maxR2T && req.R2TOffset < req.Length)
        {
            uint len = Math.Min(req.Length - req.R2TOffset, _opt.MaxH2CDataSize);
            byte* h = req.Headers + R2TOffsetInBlock + 32 * (req.R2TSequence % _opt.MaxR2TPerCommand);
            R2TPdu* r2t = (R2TPdu*)h;
            int hd = _hdgst ? PduSize.Digest : 0;
            *r2t = default;
            r2t->Common = new CommonHeader(PduType.R2T, _hdgst ? PduFlags.HeaderDigest : (byte)0, PduSize.R2T, 0, (uint)(PduSize.R2T + hd));
            r2t->Cccid = req.Sqe.Cid;
            r2t->Ttag = req.Slot;
            r2t->R2To = req.R2TOffset;
            r2t->R2Tl = len;
            if (hd != 0) Unsafe.WriteUnaligned(h + PduSize.R2T, Crc32C.Compute(new ReadOnlySpan<byte>(h, PduSize.R2T)));
            Enqueue(h, PduSize.R2T + hd, -1, 0);
            req.R2TOffset += len;
            req.R2TOutstanding++;
            req.R2TSequence++;
        }
    }

    /// <summary>Gives buffers to commands that waited for one, oldest first.</summary>
    private void ServeBufferWaiters()
    {
        while (_waitCount > 0)
        {
            TcpRequest req = _reqs[_bufferWaiters[_waitHead]];
            byte* buf = Reactor.Pools.Get(req.Length);
            if (buf == null) return;
            _waitHead = (_waitHead + 1) % _bufferWaiters.Length;
            _waitCount--;
            BeginDataPhase(req, buf);
        }
    }

    // ====================================================================== completion and send

    public override void CompleteRequest(NvmfRequest r)
    {
        var req = (TcpRequest)r;
        if (_closed)
        {
            Release(req);
            return;
        }
        req.State = RequestState.Completing;
        ref CompletionQueueEntry cqe = ref req.Cqe;
        cqe.Cid = req.Sqe.Cid;
        cqe.SqId = Qid;
        cqe.SqHead = SqFlowControlDisabled ? (ushort)0xFFFF : _sqHeadReport;
        int hd = _hdgst ? PduSize.Digest : 0;

        if (req.Status.IsSuccess && req.Direction == DataDirection.ControllerToHost && req.Length > 0)
        {
            // The SUCCESS flag replaces the response capsule, so only when the CQE carries nothing else.
            bool success = _opt.C2HSuccess && SqFlowControlDisabled && cqe.Dw0 == 0 && cqe.Dw1 == 0;
            int dd = _ddgst ? PduSize.Digest : 0;
            int headerBytes = PduSize.C2HData + hd;
            int pdo = (headerBytes + _hostPduAlign - 1) / _hostPduAlign * _hostPduAlign;
            uint offset = 0;
            for (int i = 0; offset < req.Length; i++)
            {
                uint len = Math.Min(req.Length - offset, _opt.MaxC2HDataSize);
                bool last = offset + len == req.Length;
                byte* h = req.Headers + _c2hOffset + 32 * i;
                C2HDataPdu* c2h = (C2HDataPdu*)h;
                byte flags = (byte)((_hdgst ? PduFlags.HeaderDigest : 0) | (_ddgst ? PduFlags.DataDigest : 0)
                    | (last ? PduFlags.LastPdu : 0) | (last && success ? PduFlags.Success : 0));
                *c2h = default;
                c2h->Common = new CommonHeader(PduType.C2HData, flags, PduSize.C2HData, (byte)pdo, (uint)(pdo + len + dd));
                c2h->Cccid = req.Sqe.Cid;
                c2h->Datao = offset;
                c2h->Datal = len;
                if (hd != 0) Unsafe.WriteUnaligned(h + PduSize.C2HData, Crc32C.Compute(new ReadOnlySpan<byte>(h, PduSize.C2HData)));
                Enqueue(h, headerBytes, -1, 0);
                if (pdo > headerBytes) Enqueue(_staticArea + StaticZeroes, pdo - headerBytes, -1, 0);
                bool releaseHere = last && success;
                if (dd != 0)
                {
                    byte* dg = req.Headers + _c2hDigestOffset + 4 * i;
                    Unsafe.WriteUnaligned(dg, Crc32C.Compute(new ReadOnlySpan<byte>(req.Data + offset, (int)len)));
                    Enqueue(req.Data + offset, (int)len, -1, 0);
                    Enqueue(dg, dd, releaseHere ? req.Slot : -1, releaseHere ? SendFlagRelease : 0);
                }
                else
                {
                    Enqueue(req.Data + offset, (int)len, releaseHere ? req.Slot : -1, releaseHere ? SendFlagRelease : 0);
                }
                offset += len;
            }
            if (success)
            {
                Reactor.MarkDirty(this);
                return;
            }
        }

        byte* rh = req.Headers + RespOffset;
        CapsuleRespPdu* resp = (CapsuleRespPdu*)rh;
        resp->Common = new CommonHeader(PduType.CapsuleResp, _hdgst ? PduFlags.HeaderDigest : (byte)0, PduSize.CapsuleResp, 0, (uint)(PduSize.CapsuleResp + hd));
        resp->Cqe = cqe;
        if (hd != 0) Unsafe.WriteUnaligned(rh + PduSize.CapsuleResp, Crc32C.Compute(new ReadOnlySpan<byte>(rh, PduSize.CapsuleResp)));
        Enqueue(rh, PduSize.CapsuleResp + hd, req.Slot, SendFlagRelease);
        Reactor.MarkDirty(this);
    }

    private void Enqueue(byte* ptr, int length, int slot, int flags)
    {
        if (_sendTail - _sendHead > _sendMask)
            throw new InvalidOperationException("send ring overflow"); // sized so this cannot happen
        ref SendEntry e = ref _sendRing[_sendTail & _sendMask];
        e.Ptr = ptr;
        e.Length = length;
        e.Slot = (short)slot;
        e.Flags = (byte)flags;
        _sendTail++;
    }

    public override int Flush()
    {
        if (_closed) return 0;
        int work = 0;
        if (_waitCount > 0) ServeBufferWaiters();
        if (_state == RecvState.WaitCapsuleBuffer || (_state == RecvState.Payload && _rpos < _rend) || (_state == RecvState.AwaitHeader && _rend - _rpos >= PduSize.Common))
            work += ProcessInput();

        while (_sendHead != _sendTail && !_closed)
        {
            int count = 0;
            nuint total = 0;
            for (int i = _sendHead; i != _sendTail && count < MaxIov; i++, count++)
            {
                ref SendEntry e = ref _sendRing[i & _sendMask];
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
                    SetWantWrite(true);
                    return work;
                }
                Close($"send failed: {Libc.StrError(err)}");
                return work + 1;
            }
            work++;
            long left = sent;
            while (left > 0)
            {
                ref SendEntry e = ref _sendRing[_sendHead & _sendMask];
                int remaining = e.Length - _headSent;
                if (left >= remaining)
                {
                    left -= remaining;
                    _headSent = 0;
                    _sendHead++;
                    OnSent(ref e);
                    if (_closed) return work;
                }
                else
                {
                    _headSent += (int)left;
                    left = 0;
                }
            }
            if ((nuint)sent < total)
            {
                SetWantWrite(true);
                return work;
            }
        }
        if (_wantWrite) SetWantWrite(false);
        if (_waitCount > 0 || _state == RecvState.WaitCapsuleBuffer) Reactor.MarkDirty(this);
        return work;
    }

    private void OnSent(ref SendEntry e)
    {
        if ((e.Flags & SendFlagRelease) != 0) Release(_reqs[e.Slot]);
        if ((e.Flags & SendFlagClose) != 0) Close(_closeReason);
        e = default;
    }

    private void SetWantWrite(bool want)
    {
        if (_wantWrite == want) return;
        _wantWrite = want;
        Reactor.SetWritable(this, want);
    }

    private void Release(TcpRequest req)
    {
        if (req.Gate.Path != null) Target.IoGate!.Done(req);
        if (req.Data != null)
        {
            if (!req.DataBorrowed) Reactor.Pools.Return(req.Data);
            req.Data = null;
            req.DataBorrowed = false;
        }
        if (req.State == RequestState.Free) return;
        req.State = RequestState.Free;
        _freeSlots[_freeCount++] = req.Slot;
        if (_closed && _freeCount == _reqs.Length) FreeNativeMemory();
    }

    // ====================================================================== errors and teardown

    /// <summary>
    /// A fatal transport error: send C2HTermReq carrying the offending PDU header, then close.
    /// <paramref name="hdr"/> points at that header (null: the one at the parse position, if any).
    /// </summary>
    private void Fatal(ushort fes, uint fei, string why, byte* hdr = null)
    {
        _log.LogWarning("{Peer}: fatal transport error (FES {Fes:X2}, FEI {Fei}): {Why}; closing the connection", _peer, fes, fei, why);
        int copy = 0;
        if (hdr == null && _rend - _rpos >= PduSize.Common) hdr = _rbuf + _rpos;
        if (hdr != null)
        {
            int available = (int)(_rbuf + _rend - hdr);
            copy = Math.Min(Math.Min(Math.Max((int)((CommonHeader*)hdr)->Hlen, PduSize.Common), PduSize.TermReqMaxData), available);
        }
        byte* t = _staticArea + StaticTermReq;
        TermReqPdu* term = (TermReqPdu*)t;
        *term = default;
        term->Common = new CommonHeader(PduType.C2HTermReq, 0, PduSize.TermReqHeader, 0, (uint)(PduSize.TermReqHeader + copy));
        term->Fes = fes;
        term->Fei = fei;
        if (copy > 0) Buffer.MemoryCopy(hdr, t + PduSize.TermReqHeader, copy, copy);
        _state = RecvState.Fatal;
        _closeReason = $"fatal transport error: {why}";
        Enqueue(t, PduSize.TermReqHeader + copy, -1, SendFlagClose);
        Flush();
        if (!_closed) Close(_closeReason);
    }

    public override void OnFault(Exception e) => Close($"internal error: {e.Message}");

    public override void Disconnect(string reason)
    {
        Reactor.Post(() => Close(reason));
    }

    /// <summary>Closes the socket and ends this queue's part in its controller. Reactor thread only.</summary>
    public void Close(string reason)
    {
        if (_closed) return;
        _closed = true;
        _state = RecvState.Closed;
        _log.LogInformation("{Peer}: queue {Qid} closed: {Reason}", _peer, Connected ? Qid.ToString() : "-", reason);
        Reactor.Unregister(this);
        Libc.Shutdown(_fd, Libc.SHUT_RDWR);
        Libc.Close(_fd);
        _fd = -1;
        _transport.OnQueueClosed(this);

        Controller? ctrl = Controller;
        if (ctrl != null)
        {
            if (Qid == 0)
            {
                ctrl.ClearAers();
                ctrl.Destroy($"admin queue closed ({reason})");
            }
            else
            {
                ctrl.RemoveIoQueue(this);
            }
        }
        // Everything not inside a bdev is released now; bdev I/O releases its slot when it completes.
        _sendHead = _sendTail = 0;
        _waitCount = 0;
        foreach (TcpRequest req in _reqs)
        {
            if (req.State != RequestState.Free && req.PendingOps == 0) Release(req);
        }
        if (_freeCount == _reqs.Length) FreeNativeMemory();
    }

    private bool _freed;

    private void FreeNativeMemory()
    {
        if (_freed) return;
        _freed = true;
        NativeMemory.AlignedFree(_rbuf);
        NativeMemory.AlignedFree(_headerArea);
        NativeMemory.AlignedFree(_staticArea);
        NativeMemory.Free(_digestStage);
        NativeMemory.Free(_iov);
    }
}
