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
internal sealed unsafe class TcpRequest(QueuePair qpair, ushort slot) : NvmfRequest(qpair, slot)
{
    /// <summary>This slot's pinned PDU header area (response, R2Ts, C2H headers and digests).</summary>
    public byte* Headers;
    public uint H2CReceived;
    public uint R2TOffset;
    public int R2TOutstanding;
    public uint R2TOldestEnd;
    public int R2TSequence;
    public bool DataDigestError;
    /// <summary>Status decided while the capsule arrived (bad SGL): consume the data, then fail.</summary>
    public bool FailAfterData;

    /// <summary>A capsule landed in this (reset) slot: the command and when it arrived at the earliest.</summary>
    public void Begin(in SubmissionQueueEntry sqe, long arrivedAfter)
    {
        Sqe = sqe;
        ArrivedAfter = arrivedAfter;
        Data = null;
        H2CReceived = R2TOffset = 0;
        R2TOutstanding = R2TSequence = 0;
        DataDigestError = FailAfterData = false;
    }
}

/// <summary>
/// One NVMe/TCP connection on the target side: what the target does with the PDUs a <see cref="TcpConnection"/>
/// frames (ICReq, command capsules, R2T and H2CData, C2HData and responses, TermReq). Lives on one reactor.
/// </summary>
internal sealed unsafe class TcpQueuePair : QueuePair<TcpRequest>, ITcpConnectionOwner
{
    private const int TagClose = 1 << 20;
    private const int RespOffset = 0;
    private const int R2TOffsetInBlock = 32;
    private const int ICRespArea = PduSize.ICResp;

    private readonly ILogger _log;
    private readonly TargetOptions _opt;
    private readonly TcpTransportOptions _tcp;
    private readonly string _peer;
    private readonly TcpConnection _conn;
    // When each received byte arrived at the earliest (relay deadlines count from there).
    private ArrivalClock _arrival;
    private bool _icDone;
    private string _closeReason = "";

    // Negotiated at ICReq/ICResp.
    private int _hostPduAlign = 4;
    private int _maxR2T = 1;

    // The PDU whose payload is being received.
    private TcpRequest? _payloadReq;
    private uint _payloadDatal;

    // Each slot's PDU headers.
    private readonly byte* _headerArea;
    private readonly int _headerBlock;
    private readonly int _c2hOffset;
    private readonly int _c2hDigestOffset;
    private readonly byte* _icResp;

    private bool _wantWrite;
    private ushort _sqHeadReport;

    private readonly TcpTransport _transport;

    public TcpQueuePair(int fd, string peer, Reactor reactor, NvmfTarget target, ListenerInfo listener, TcpTransport transport, ILogger log)
        : base(reactor, target, listener, Slots(target.Options), static (q, i) => new TcpRequest(q, i))
    {
        _transport = transport;
        _peer = peer;
        _log = log;
        _opt = target.Options;
        _tcp = transport.Options;
        _arrival = new ArrivalClock(Stopwatch.GetTimestamp());

        int slots = Requests.Length;
        int maxC2HPdus = (int)((_opt.MaxIoSize + _tcp.MaxC2HDataSize - 1) / _tcp.MaxC2HDataSize);
        _c2hOffset = R2TOffsetInBlock + 32 * _tcp.MaxR2TPerCommand;
        _c2hDigestOffset = _c2hOffset + 32 * maxC2HPdus;
        _headerBlock = (_c2hDigestOffset + 4 * maxC2HPdus + 63) & ~63;
        _headerArea = (byte*)NativeMemory.AlignedAlloc((nuint)(_headerBlock * slots), 64);
        _icResp = (byte*)NativeMemory.AlignedAlloc(ICRespArea, 64);
        for (int i = 0; i < slots; i++) Requests[i].Headers = _headerArea + i * _headerBlock;
        // Per command at most: its C2HData PDUs (header, padding, data, digest each), its R2Ts and its response.
        _conn = new TcpConnection(fd, this, _tcp.ReceiveBufferSize, slots * (4 * maxC2HPdus + 2 + _tcp.MaxR2TPerCommand) + 16);
    }

    private static int Slots(TargetOptions o) => Math.Max(o.MaxQueueDepth, o.AdminQueueDepth);

    /// <summary>A socket sends from any memory: a read from a RAM namespace goes out of the namespace itself.</summary>
    protected override bool SendsFromAnyMemory => true;

    public override int Fd => _conn.Fd;
    public override string PeerAddress => _peer;
    public override uint InCapsuleDataSize => Qid == 0 && Connected ? _opt.AdminInCapsuleDataSize : Math.Max(_opt.InCapsuleDataSize, _opt.AdminInCapsuleDataSize);

    // ====================================================================== receive

    /// <summary>The epoll wait round that last reported the socket readable.</summary>
    private long _readableRound = -2;

    public override int OnReady(uint events)
    {
        if (IsClosed) return 0;
        int work = 0;
        if ((events & Libc.EPOLLOUT) != 0) work += Flush();
        if ((events & (Libc.EPOLLIN | Libc.EPOLLRDHUP | Libc.EPOLLHUP | Libc.EPOLLERR)) != 0)
        {
            // Not readable at the previous wait (which reported every ready descriptor): the socket was empty after that
            // wait began, so what it holds now came later (an idle connection's first command is not dated from its last
            // burst, however long ago).
            if (_readableRound != Reactor.WaitRound - 1 && Reactor.PreviousWaitSawAll) _arrival.OnEmpty(Reactor.PreviousWaitStart);
            _readableRound = Reactor.WaitRound;
            work += _conn.Receive(out ReceiveOutcome outcome);
            if (outcome != ReceiveOutcome.Nothing) work++;
        }
        if (!IsClosed) Reactor.MarkDirty(this);
        return work;
    }

    // ====================================================================== ITcpConnectionOwner

    bool ITcpConnectionOwner.AcceptPduType(CommonHeader* ch)
    {
        if (!_icDone && ch->Type != PduType.ICReq)
        {
            Close($"first PDU is type {(byte)ch->Type:X2}, not ICReq");
            return false;
        }
        if (ch->Type is PduType.ICReq or PduType.H2CTermReq or PduType.CapsuleCmd or PduType.H2CData) return true;
        Fatal(TermReqFes.InvalidHeaderField, PduField.Type, "PDU type " + ((byte)ch->Type).ToString("X2") + " is not valid from a host", (byte*)ch);
        return false;
    }

    int ITcpConnectionOwner.OnHeader(byte* header, int hd)
    {
        HandleHeader(header, hd);
        return 1;
    }

    int ITcpConnectionOwner.OnPayloadDone(bool dataDigestError)
    {
        PayloadDone(dataDigestError);
        return 1;
    }

    byte* ITcpConnectionOwner.AcquirePayloadBuffer(uint length)
    {
        TcpRequest req = _payloadReq!;
        req.Data = Reactor.Pools.Get(length);
        return req.Data;
    }

    void ITcpConnectionOwner.OnProtocolError(ushort fes, uint fei, string why, byte* header) => Fatal(fes, fei, why, header);

    void ITcpConnectionOwner.OnConnectionError(string why) => Close(why);

    int ITcpConnectionOwner.OnSent(int tag)
    {
        if (tag == TagClose) Close(_closeReason);
        else Release(Requests[tag]);
        return 1;
    }

    void ITcpConnectionOwner.OnReceived(nint bytes, bool drained) => _arrival.OnReceived(bytes, drained, _conn.Fd, Reactor.Now);

    void ITcpConnectionOwner.OnReceiveEmpty() => _arrival.OnEmpty(Reactor.Now);

    private void HandleHeader(byte* hdr, int hd)
    {
        CommonHeader* ch = (CommonHeader*)hdr;
        switch (ch->Type)
        {
            case PduType.ICReq:
                if (_icDone)
                {
                    Fatal(TermReqFes.PduSequenceError, PduField.Type, "second ICReq", hdr);
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
        if (hflag != _conn.HeaderDigest || (hasData && dflag != _conn.DataDigest) || (!hasData && dflag))
        {
            Fatal(TermReqFes.InvalidHeaderField, PduField.Flags, $"digest flags {ch->Flags:X2} do not match the negotiated digests", (byte*)ch);
            return false;
        }
        return true;
    }

    private void HandleICReq(ICReqPdu* ic)
    {
        if (ic->Common.Plen != PduSize.ICReq)
        {
            Fatal(TermReqFes.InvalidHeaderField, PduField.Plen, $"ICReq PLEN {ic->Common.Plen}", (byte*)ic);
            return;
        }
        if (ic->Pfv != 0)
        {
            Fatal(TermReqFes.UnsupportedParameter, PduField.ICReqPfv, $"ICReq PFV {ic->Pfv} not supported", (byte*)ic);
            return;
        }
        if (ic->Hpda > 31)
        {
            Fatal(TermReqFes.UnsupportedParameter, PduField.ICReqHpda, $"ICReq HPDA {ic->Hpda} out of range", (byte*)ic);
            return;
        }
        _conn.HeaderDigest = (ic->Digest & DigestBits.Header) != 0;
        _conn.DataDigest = (ic->Digest & DigestBits.Data) != 0;
        _hostPduAlign = (ic->Hpda + 1) * 4;
        _maxR2T = (int)Math.Min((ulong)ic->MaxR2T + 1, (ulong)_tcp.MaxR2TPerCommand);

        ICRespPdu* resp = (ICRespPdu*)_icResp;
        *resp = default;
        resp->Pfv = 0;
        resp->Cpda = 0;
        resp->Digest = ic->Digest;
        resp->MaxH2CData = _tcp.MaxH2CDataSize;
        _conn.EnqueuePdu(_icResp, PduType.ICResp, 0, 1, null, 0, null, TcpConnection.NoTag, TcpConnection.NoTag);
        _icDone = true;
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
            int dd = _conn.DataDigestBytes;
            if (ch->Pdo < hlen + hd || ch->Pdo > plen)
            {
                Fatal(TermReqFes.InvalidHeaderField, PduField.Pdo, $"capsule PDO {ch->Pdo}", (byte*)pdu);
                return;
            }
            if (plen < (uint)(ch->Pdo + dd + 1))
            {
                Fatal(TermReqFes.InvalidHeaderField, PduField.Plen, $"capsule PLEN {plen} leaves no room for data", (byte*)pdu);
                return;
            }
            dataLen = plen - ch->Pdo - (uint)dd;
            if (dataLen > InCapsuleDataSize)
            {
                Fatal(TermReqFes.DataTransferLimitExceeded, PduField.Plen, $"in-capsule data {dataLen} B exceeds {InCapsuleDataSize} B", (byte*)pdu);
                return;
            }
            skip = ch->Pdo - hlen - hd;
        }

        // A host may have at most SQSIZE commands outstanding (Connect told us the size).
        int limit = CommandLimit(Requests.Length);
        if (OutstandingRequests >= limit || TakeRequest() is not { } req)
        {
            Fatal(TermReqFes.PduSequenceError, PduField.Type, $"host exceeded the submission queue size ({limit} commands outstanding)", (byte*)pdu);
            return;
        }
        req.Begin(pdu->Sqe, _arrival.ArrivedAfter(_arrival.Received - _conn.BufferedAfter((byte*)pdu)));
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
            BeginPayload(req, dataLen, skip, discard: !ok);
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

    /// <summary>The payload of a capsule (state <see cref="RequestState.ReceivingCapsuleData"/>) or of an H2CData PDU.</summary>
    private void BeginPayload(TcpRequest req, uint length, int skip, bool discard)
    {
        _payloadReq = req;
        _payloadDatal = length;
        if (discard) _conn.ReceivePayload(null, length, skip);
        else if (req.State == RequestState.ReceivingCapsuleData) _conn.ReceivePayloadIntoBuffer(length, skip);
        else _conn.ReceivePayload(req.Data + req.H2CReceived, length, skip);
    }

    private void PayloadDone(bool dataDigestError)
    {
        TcpRequest req = _payloadReq!;
        _payloadReq = null;
        if (dataDigestError) req.DataDigestError = true;

        if (req.State == RequestState.ReceivingCapsuleData)
        {
            if (req.FailAfterData)
            {
                req.Complete();
                return;
            }
            ExecuteWithData(req);
            return;
        }

        // H2CData for an R2T.
        req.H2CReceived += _payloadDatal;
        while (req.R2TOutstanding > 0 && req.H2CReceived >= req.R2TOldestEnd)
        {
            req.R2TOutstanding--;
            req.R2TOldestEnd = Math.Min(req.R2TOldestEnd + _tcp.MaxH2CDataSize, req.Length);
        }
        if (req.H2CReceived == req.Length)
        {
            ExecuteWithData(req);
            return;
        }
        SendR2Ts(req);
    }

    /// <summary>All of a write's data arrived: it runs, unless a data digest did not match (then it fails, retryable).</summary>
    private static void ExecuteWithData(TcpRequest req)
    {
        if (req.DataDigestError)
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.TransientTransportError, dnr: false));
            return;
        }
        req.State = RequestState.Executing;
        CommandDispatcher.Execute(req);
    }

    private void HandleH2CData(H2CDataPdu* pdu, int hd)
    {
        CommonHeader* ch = &pdu->Common;
        int hlen = PduSize.H2CData;
        uint plen = ch->Plen;
        if (!CheckDigestFlags(ch, hasData: plen > (uint)(hlen + hd))) return;
        int dd = _conn.DataDigestBytes;
        if (ch->Pdo < hlen + hd || ch->Pdo > plen)
        {
            Fatal(TermReqFes.InvalidHeaderField, PduField.Pdo, $"H2CData PDO {ch->Pdo}", (byte*)pdu);
            return;
        }
        if (plen != ch->Pdo + pdu->Datal + (uint)dd || pdu->Datal == 0)
        {
            Fatal(TermReqFes.InvalidHeaderField, PduField.H2CDataDatal, $"H2CData DATAL {pdu->Datal} does not match PLEN {plen}", (byte*)pdu);
            return;
        }
        if (pdu->Ttag >= Requests.Length || Requests[pdu->Ttag].State != RequestState.TransferringHostData || Requests[pdu->Ttag].Sqe.Cid != pdu->Cccid)
        {
            Fatal(TermReqFes.InvalidHeaderField, PduField.H2CDataTtag, $"H2CData for unknown transfer (TTAG {pdu->Ttag}, CCCID {pdu->Cccid})", (byte*)pdu);
            return;
        }
        TcpRequest req = Requests[pdu->Ttag];
        if (pdu->Datal > _tcp.MaxH2CDataSize)
        {
            Fatal(TermReqFes.DataTransferLimitExceeded, PduField.H2CDataDatal, $"H2CData DATAL {pdu->Datal} exceeds MAXH2CDATA {_tcp.MaxH2CDataSize}", (byte*)pdu);
            return;
        }
        if (pdu->Datao != req.H2CReceived)
        {
            Fatal(TermReqFes.DataTransferOutOfRange, PduField.H2CDataDatao, $"H2CData DATAO {pdu->Datao}, expected {req.H2CReceived}", (byte*)pdu);
            return;
        }
        if ((ulong)pdu->Datao + pdu->Datal > req.R2TOffset)
        {
            Fatal(TermReqFes.DataTransferOutOfRange, PduField.H2CDataDatal, $"H2CData {pdu->Datao}+{pdu->Datal} beyond the requested window (end {req.R2TOffset})", (byte*)pdu);
            return;
        }
        BeginPayload(req, pdu->Datal, ch->Pdo - hlen - hd, discard: false);
    }

    // ====================================================================== data phase

    protected override void BeginDataPhase(TcpRequest req, byte* buffer)
    {
        req.Data = buffer;
        if (req.Direction == DataDirection.HostToController)
        {
            req.State = RequestState.TransferringHostData;
            req.R2TOldestEnd = Math.Min(_tcp.MaxH2CDataSize, req.Length);
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
            uint len = Math.Min(req.Length - req.R2TOffset, _tcp.MaxH2CDataSize);
            byte* h = req.Headers + R2TOffsetInBlock + 32 * (req.R2TSequence % _tcp.MaxR2TPerCommand);
            R2TPdu* r2t = (R2TPdu*)h;
            *r2t = default;
            r2t->Cccid = req.Sqe.Cid;
            r2t->Ttag = req.Slot;
            r2t->R2To = req.R2TOffset;
            r2t->R2Tl = len;
            _conn.EnqueuePdu(h, PduType.R2T, 0, 1, null, 0, null, TcpConnection.NoTag, TcpConnection.NoTag);
            req.R2TOffset += len;
            req.R2TOutstanding++;
            req.R2TSequence++;
        }
    }

    // ====================================================================== completion and send

    public override void CompleteRequest(NvmfRequest r)
    {
        var req = (TcpRequest)r;
        if (IsClosed)
        {
            Release(req);
            return;
        }
        req.State = RequestState.Completing;
        ref CompletionQueueEntry cqe = ref req.Cqe;
        cqe.Cid = req.Sqe.Cid;
        cqe.SqId = Qid;
        cqe.SqHead = SqFlowControlDisabled ? (ushort)0xFFFF : _sqHeadReport;
        if (req.Status.IsSuccess && req.Direction == DataDirection.ControllerToHost && req.Length > 0)
        {
            // The SUCCESS flag replaces the response capsule, so only when the CQE carries nothing else.
            bool success = _tcp.C2HSuccess && SqFlowControlDisabled && cqe.Dw0 == 0 && cqe.Dw1 == 0;
            uint offset = 0;
            for (int i = 0; offset < req.Length; i++)
            {
                uint len = Math.Min(req.Length - offset, _tcp.MaxC2HDataSize);
                bool last = offset + len == req.Length;
                byte* h = req.Headers + _c2hOffset + 32 * i;
                C2HDataPdu* c2h = (C2HDataPdu*)h;
                *c2h = default;
                c2h->Cccid = req.Sqe.Cid;
                c2h->Datao = offset;
                c2h->Datal = len;
                byte flags = (byte)((last ? PduFlags.LastPdu : 0) | (last && success ? PduFlags.Success : 0));
                _conn.EnqueuePdu(h, PduType.C2HData, flags, _hostPduAlign, req.Data + offset, len, req.Headers + _c2hDigestOffset + 4 * i,
                    TcpConnection.NoTag, last && success ? req.Slot : TcpConnection.NoTag);
                offset += len;
            }
            if (success)
            {
                Reactor.MarkDirty(this);
                return;
            }
        }

        byte* rh = req.Headers + RespOffset;
        ((CapsuleRespPdu*)rh)->Cqe = cqe;
        _conn.EnqueuePdu(rh, PduType.CapsuleResp, 0, 1, null, 0, null, TcpConnection.NoTag, req.Slot);
        Reactor.MarkDirty(this);
    }

    public override int Flush()
    {
        if (IsClosed) return 0;
        int work = 0;
        if (BufferWaiters > 0) ServeBufferWaiters();
        if (_conn.HasInputToParse) work += _conn.Parse();
        if (IsClosed) return work;
        work += _conn.Flush(out bool blocked);
        if (IsClosed) return work;
        if (blocked != _wantWrite)
        {
            _wantWrite = blocked;
            Reactor.SetWritable(this, blocked);
        }
        // Waiting for a pool buffer: try again next iteration (input that is only incomplete waits for the socket).
        if (BufferWaiters > 0 || _conn.WaitingForBuffer) Reactor.MarkDirty(this);
        return work;
    }

    // ====================================================================== errors and teardown

    /// <summary>
    /// A fatal transport error: send C2HTermReq carrying the offending PDU header, then close.
    /// <paramref name="hdr"/> points at that header (null: the one at the parse position, if any).
    /// </summary>
    private void Fatal(ushort fes, uint fei, string why, byte* hdr = null)
    {
        _log.LogWarning("{Peer}: fatal transport error (FES {Fes:X2}, FEI {Fei}): {Why}; closing the connection", _peer, fes, fei, why);
        _conn.StopReceiving();
        _closeReason = $"fatal transport error: {why}";
        _conn.EnqueueTermReq(PduType.C2HTermReq, fes, fei, hdr != null ? hdr : _conn.UnparsedHeader, TagClose);
        _conn.Flush(out _);
        if (!IsClosed) Close(_closeReason);
    }

    /// <summary>Closes the socket and ends this queue's part in its controller. Reactor thread only.</summary>
    public override void Close(string reason)
    {
        if (!MarkClosed()) return;
        _log.LogInformation("{Peer}: queue {Qid} closed: {Reason}", _peer, Connected ? Qid.ToString() : "-", reason);
        Reactor.Unregister(this);
        _conn.CloseSocket();
        _transport.OnQueueClosed(this);
        DetachAndRelease(reason);
    }

    protected override void FreeNativeMemory()
    {
        _conn.Free();
        NativeMemory.AlignedFree(_headerArea);
        NativeMemory.AlignedFree(_icResp);
    }
}
