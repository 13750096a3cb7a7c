using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Interop;
using StorageNode.Nvme.Spec;
using StorageNode.Nvme.Tcp;

namespace StorageNode.Nvme.Tests;

/// <summary>
/// The NVMe/TCP connection (framing, digests, payloads, send ring, TermReq) that the target's queue pair and the host's
/// queue share, driven directly over a Unix socket pair: one end is the connection, the test writes and reads the other.
/// </summary>
public sealed unsafe class TcpConnectionTests : IDisposable
{
    private readonly int _peer;
    private readonly Owner _owner = new();
    private readonly TcpConnection _conn;

    public TcpConnectionTests()
    {
        int* sv = stackalloc int[2];
        Assert.Equal(0, Libc.SocketPair(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0, sv));
        _peer = sv[1];
        _conn = new TcpConnection(sv[0], _owner, 64 * 1024, 64);
        _owner.Conn = _conn;
    }

    public void Dispose()
    {
        _conn.CloseSocket();
        _conn.Free();
        Libc.Close(_peer);
        _owner.Dispose();
    }

    /// <summary>Records what the connection told its owner; payloads land in one 1 MiB native buffer.</summary>
    private sealed class Owner : ITcpConnectionOwner, IDisposable
    {
        public TcpConnection? Conn;
        public readonly List<(PduType Type, byte[] Header)> Headers = [];
        public readonly List<bool> PayloadsDone = [];
        public readonly List<int> Sent = [];
        public (ushort Fes, uint Fei, string Why)? ProtocolError;
        public string? ConnectionError;
        public readonly byte* Buffer = (byte*)NativeMemory.AllocZeroed(1 << 20);
        /// <summary>The payload that follows a C2HData header (length, padding before it).</summary>
        public (uint Length, int Skip) Payload;
        public bool Discard;
        public bool IntoBuffer;
        public bool HaveBuffer = true;
        public bool RejectType;
        public bool AnswerErrorsWithTermReq;
        public long Received;
        public int Empty;

        public bool AcceptPduType(CommonHeader* header) => !RejectType;

        public int OnHeader(byte* header, int headerDigestBytes)
        {
            var ch = (CommonHeader*)header;
            Headers.Add((ch->Type, new ReadOnlySpan<byte>(header, ch->Hlen).ToArray()));
            if (ch->Type == PduType.C2HData)
            {
                if (IntoBuffer) Conn!.ReceivePayloadIntoBuffer(Payload.Length, Payload.Skip);
                else Conn!.ReceivePayload(Discard ? null : Buffer, Payload.Length, Payload.Skip);
            }
            return 1;
        }

        public int OnPayloadDone(bool dataDigestError)
        {
            PayloadsDone.Add(dataDigestError);
            return 1;
        }

        public byte* AcquirePayloadBuffer(uint length) => HaveBuffer ? Buffer : null;

        public void OnProtocolError(ushort fes, uint fei, string why, byte* header)
        {
            ProtocolError = (fes, fei, why);
            if (AnswerErrorsWithTermReq) Conn!.EnqueueTermReq(PduType.C2HTermReq, fes, fei, header, 7);
        }

        public void OnConnectionError(string why) => ConnectionError = why;

        public int OnSent(int tag)
        {
            Sent.Add(tag);
            return 1;
        }

        public void OnReceived(nint bytes, bool drained) => Received += bytes;

        public void OnReceiveEmpty() => Empty++;

        public void Dispose() => NativeMemory.Free(Buffer);
    }

    // ------------------------------------------------------------------ helpers

    private void Write(ReadOnlySpan<byte> bytes)
    {
        fixed (byte* p = bytes)
        {
            int done = 0;
            while (done < bytes.Length)
            {
                nint n = Libc.Send(_peer, p + done, (nuint)(bytes.Length - done), Libc.MSG_NOSIGNAL);
                Assert.True(n > 0, $"send to the connection failed: {Libc.StrError(Libc.Errno)}");
                done += (int)n;
            }
        }
    }

    /// <summary>Receives until nothing is left to read (bounded).</summary>
    private int ReceiveAll()
    {
        int work = 0;
        for (int i = 0; i < 1000; i++)
        {
            work += _conn.Receive(out ReceiveOutcome o);
            if (o is ReceiveOutcome.Nothing or ReceiveOutcome.Failed) return work;
        }
        throw new InvalidOperationException("the connection kept receiving");
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes from the peer end (bounded wait).</summary>
    private byte[] ReadPeer(int count)
    {
        var buf = new byte[count];
        int done = 0;
        fixed (byte* p = buf)
        {
            for (int i = 0; i < 1000 && done < count; i++)
            {
                nint n = Libc.Recv(_peer, p + done, (nuint)(count - done), Libc.MSG_DONTWAIT);
                if (n > 0) done += (int)n;
                else Thread.Sleep(1);
            }
        }
        Assert.Equal(count, done);
        return buf;
    }

    private static byte[] Pdu<T>(T pdu) where T : unmanaged
    {
        var bytes = new byte[sizeof(T)];
        MemoryMarshal.Write(bytes, in pdu);
        return bytes;
    }

    private static byte[] WithDigest(byte[] header)
    {
        var b = new byte[header.Length + 4];
        header.CopyTo(b, 0);
        BitConverter.TryWriteBytes(b.AsSpan(header.Length), Crc32C.Compute(header));
        return b;
    }

    private static CapsuleRespPdu Response(ushort cid, byte flags = 0, int digest = 0)
    {
        CapsuleRespPdu r = default;
        r.Common = new CommonHeader(PduType.CapsuleResp, flags, PduSize.CapsuleResp, 0, (uint)(PduSize.CapsuleResp + digest));
        r.Cqe.Cid = cid;
        return r;
    }

    private static byte[] C2HData(uint length, int pdo, bool dataDigest, out byte[] data, byte seed = 1)
    {
        C2HDataPdu d = default;
        int dd = dataDigest ? 4 : 0;
        d.Common = new CommonHeader(PduType.C2HData, (byte)(dataDigest ? PduFlags.DataDigest : 0), PduSize.C2HData, (byte)pdo, (uint)(pdo + length + dd));
        d.Datal = length;
        data = new byte[length];
        for (int i = 0; i < data.Length; i++) data[i] = (byte)(i * 7 + seed);
        var all = new byte[pdo + length + dd];
        Pdu(d).CopyTo(all, 0);
        data.CopyTo(all, pdo);
        if (dataDigest) BitConverter.TryWriteBytes(all.AsSpan(pdo + (int)length), Crc32C.Compute(data));
        return all;
    }

    private Span<byte> Landed(int length) => new(_owner.Buffer, length);

    // ------------------------------------------------------------------ receive

    [Fact]
    public void AHeaderSplitOverThreeReceivesIsHandledOnceWhole()
    {
        byte[] pdu = Pdu(Response(0x1234));
        Write(pdu.AsSpan(0, 5));
        ReceiveAll();
        Write(pdu.AsSpan(5, 10));
        ReceiveAll();
        Assert.Empty(_owner.Headers);
        Write(pdu.AsSpan(15));
        ReceiveAll();
        var (type, header) = Assert.Single(_owner.Headers);
        Assert.Equal(PduType.CapsuleResp, type);
        Assert.Equal(pdu, header);
        Assert.Equal(pdu.Length, _owner.Received);
        Assert.Null(_owner.ProtocolError);
    }

    [Fact]
    public void ManyPdusInOneReceiveAreAllHandled()
    {
        var stream = new List<byte>();
        for (ushort cid = 0; cid < 100; cid++) stream.AddRange(Pdu(Response(cid)));
        Write(stream.ToArray());
        ReceiveAll();
        Assert.Equal(100, _owner.Headers.Count);
        for (int i = 0; i < 100; i++) Assert.Equal(i, BitConverter.ToUInt16(_owner.Headers[i].Header, 8 + 12));
    }

    [Fact]
    public void AWrongHlenIsAnInvalidHeaderFieldAtOffsetTwo()
    {
        CapsuleRespPdu r = Response(1);
        r.Common.Hlen = 20;
        Write(Pdu(r));
        ReceiveAll();
        Assert.Equal((TermReqFes.InvalidHeaderField, PduField.Hlen), (_owner.ProtocolError?.Fes, _owner.ProtocolError?.Fei));
        Assert.Empty(_owner.Headers);
    }

    [Fact]
    public void APlenShorterThanTheHeaderIsAnInvalidHeaderFieldAtOffsetFour()
    {
        CapsuleRespPdu r = Response(1);
        r.Common.Plen = 10;
        Write(Pdu(r));
        ReceiveAll();
        Assert.Equal((TermReqFes.InvalidHeaderField, PduField.Plen), (_owner.ProtocolError?.Fes, _owner.ProtocolError?.Fei));
    }

    [Fact]
    public void HeaderDigestsAreCheckedWhenNegotiated()
    {
        _conn.HeaderDigest = true;
        byte[] good = WithDigest(Pdu(Response(5, PduFlags.HeaderDigest, 4)));
        Write(good);
        ReceiveAll();
        Assert.Single(_owner.Headers);
        Assert.Null(_owner.ProtocolError);

        byte[] bad = WithDigest(Pdu(Response(6, PduFlags.HeaderDigest, 4)));
        bad[^1] ^= 0xFF;
        Write(bad);
        ReceiveAll();
        Assert.Equal(TermReqFes.HeaderDigestError, _owner.ProtocolError?.Fes);
        Assert.Single(_owner.Headers);
    }

    [Fact]
    public void ARejectedTypeStopsParsingWithNothingHandled()
    {
        _owner.RejectType = true;
        Write(Pdu(Response(1)));
        Write(Pdu(Response(2)));
        ReceiveAll();
        Assert.Empty(_owner.Headers);
        Assert.Null(_owner.ProtocolError);
        _owner.RejectType = false;
        ReceiveAll();
        Assert.Empty(_owner.Headers); // stopped for good
    }

    [Theory]
    [InlineData(512u, 24, false)]
    [InlineData(512u, 32, true)]   // padding (PDO past the header) and a data digest
    [InlineData(65536u, 24, false)] // large enough to be received straight into the buffer
    [InlineData(200000u, 128, true)]
    public void APayloadLandsWholeAfterItsPadding(uint length, int pdo, bool dataDigest)
    {
        _conn.DataDigest = dataDigest;
        byte[] pdu = C2HData(length, pdo, dataDigest, out byte[] data);
        _owner.Payload = (length, pdo - PduSize.C2HData);
        // Header first, then the rest in uneven pieces, so that the direct receive path is taken for large payloads.
        Write(pdu.AsSpan(0, PduSize.C2HData));
        ReceiveAll();
        for (int off = PduSize.C2HData; off < pdu.Length; off += 70001)
        {
            Write(pdu.AsSpan(off, Math.Min(70001, pdu.Length - off)));
            ReceiveAll();
        }
        Assert.Equal([false], _owner.PayloadsDone);
        Assert.True(Landed(data.Length).SequenceEqual(data));
        // The stream continues with the next PDU.
        Write(Pdu(Response(9)));
        ReceiveAll();
        Assert.Equal(2, _owner.Headers.Count);
    }

    [Fact]
    public void ADataDigestMismatchIsReportedWithThePayload()
    {
        _conn.DataDigest = true;
        byte[] pdu = C2HData(4096, 24, true, out _);
        pdu[^2] ^= 1;
        _owner.Payload = (4096u, 0);
        Write(pdu);
        ReceiveAll();
        Assert.Equal([true], _owner.PayloadsDone);
        Assert.Null(_owner.ProtocolError);
    }

    [Fact]
    public void ADiscardedPayloadIsConsumedAndTheNextPduParsed()
    {
        _conn.DataDigest = true;
        byte[] pdu = C2HData(30000, 24, true, out _);
        _owner.Payload = (30000u, 0);
        _owner.Discard = true;
        Write(pdu);
        Write(Pdu(Response(3)));
        ReceiveAll();
        Assert.Equal([false], _owner.PayloadsDone); // not checked: nothing was kept
        Assert.Equal(2, _owner.Headers.Count);
        Assert.Equal(-1, Landed(30000).IndexOfAnyExcept((byte)0));
    }

    [Fact]
    public void APayloadWaitsForItsBufferThenLands()
    {
        byte[] pdu = C2HData(8192, 24, false, out byte[] data, seed: 3);
        _owner.IntoBuffer = true;
        _owner.HaveBuffer = false;
        _owner.Payload = (8192u, 0);
        Write(pdu);
        ReceiveAll();
        Assert.Empty(_owner.PayloadsDone);
        Assert.True(_conn.HasInputToParse);
        _owner.HaveBuffer = true;
        _conn.Parse();
        Assert.Equal([false], _owner.PayloadsDone);
        Assert.True(Landed(8192).SequenceEqual(data));
    }

    [Fact]
    public void ThePeerClosingIsAConnectionError()
    {
        Write(Pdu(Response(1)));
        Libc.Shutdown(_peer, Libc.SHUT_RDWR);
        ReceiveAll();
        Assert.Single(_owner.Headers);
        Assert.Equal("connection closed by the peer", _owner.ConnectionError);
    }

    // ------------------------------------------------------------------ send

    [Theory]
    [InlineData(false, false, 4)]
    [InlineData(true, true, 4)]
    [InlineData(true, true, 64)] // the peer asked for data aligned to 64 bytes: padding after the header
    public void ADataPduIsFramedWithItsDigestsAndPadding(bool hdgst, bool ddgst, int align)
    {
        _conn.HeaderDigest = hdgst;
        _conn.DataDigest = ddgst;
        byte* h = (byte*)NativeMemory.AllocZeroed(64);
        byte[] data = new byte[1000];
        Random.Shared.NextBytes(data);
        try
        {
            fixed (byte* d = data)
            {
                var c2h = (C2HDataPdu*)h;
                c2h->Cccid = 77;
                c2h->Datal = (uint)data.Length;
                _conn.EnqueuePdu(h, PduType.C2HData, PduFlags.LastPdu, align, d, (uint)data.Length, h + 32, TcpConnection.NoTag, 11);
                Assert.True(_conn.Flush(out bool blocked) > 0);
                Assert.False(blocked);
            }
            int hd = hdgst ? 4 : 0, dd = ddgst ? 4 : 0;
            int pdo = (PduSize.C2HData + hd + align - 1) / align * align;
            byte[] wire = ReadPeer(pdo + data.Length + dd);
            CommonHeader ch = MemoryMarshal.Read<CommonHeader>(wire);
            Assert.Equal(PduType.C2HData, ch.Type);
            Assert.Equal(PduSize.C2HData, ch.Hlen);
            Assert.Equal(pdo, ch.Pdo);
            Assert.Equal((uint)wire.Length, ch.Plen);
            Assert.Equal((byte)(PduFlags.LastPdu | (hdgst ? PduFlags.HeaderDigest : 0) | (ddgst ? PduFlags.DataDigest : 0)), ch.Flags);
            Assert.Equal(77, BitConverter.ToUInt16(wire, 8));
            if (hdgst) Assert.Equal(Crc32C.Compute(wire.AsSpan(0, PduSize.C2HData)), BitConverter.ToUInt32(wire, PduSize.C2HData));
            Assert.Equal(-1, wire.AsSpan(PduSize.C2HData + hd, pdo - PduSize.C2HData - hd).IndexOfAnyExcept((byte)0));
            Assert.Equal(data, wire.AsSpan(pdo, data.Length).ToArray());
            if (ddgst) Assert.Equal(Crc32C.Compute(data), BitConverter.ToUInt32(wire, pdo + data.Length));
            Assert.Equal([11], _owner.Sent);
        }
        finally
        {
            NativeMemory.Free(h);
        }
    }

    [Fact]
    public void APduWithoutDataHasNoDataDigestFlag()
    {
        _conn.HeaderDigest = true;
        _conn.DataDigest = true;
        byte* h = (byte*)NativeMemory.AllocZeroed(32);
        try
        {
            ((CapsuleRespPdu*)h)->Cqe.Cid = 5;
            _conn.EnqueuePdu(h, PduType.CapsuleResp, 0, 4, null, 0, null, TcpConnection.NoTag, 3);
            _conn.Flush(out _);
            byte[] wire = ReadPeer(PduSize.CapsuleResp + 4);
            CommonHeader ch = MemoryMarshal.Read<CommonHeader>(wire);
            Assert.Equal(PduFlags.HeaderDigest, ch.Flags);
            Assert.Equal(0, ch.Pdo);
            Assert.Equal((uint)(PduSize.CapsuleResp + 4), ch.Plen);
            Assert.Equal(Crc32C.Compute(wire.AsSpan(0, PduSize.CapsuleResp)), BitConverter.ToUInt32(wire, PduSize.CapsuleResp));
        }
        finally
        {
            NativeMemory.Free(h);
        }
    }

    [Fact]
    public void AFullSocketBlocksTheFlushAndTheRestGoesLaterInOrder()
    {
        int small = 4096;
        Libc.SetSockOpt(_conn.Fd, Libc.SOL_SOCKET, Libc.SO_SNDBUF, &small, sizeof(int));
        const int chunk = 64 * 1024, count = 8;
        byte* data = (byte*)NativeMemory.Alloc(chunk);
        try
        {
            for (int i = 0; i < chunk; i++) data[i] = (byte)i;
            for (int i = 0; i < count; i++) _conn.Enqueue(data, chunk, i);
            _conn.Flush(out bool blocked);
            Assert.True(blocked);
            Assert.True(_conn.HasPendingSends);
            byte* sink = stackalloc byte[4096];
            int read = 0;
            for (int round = 0; round < 100000 && read < chunk * count; round++)
            {
                nint n = Libc.Recv(_peer, sink, 4096, Libc.MSG_DONTWAIT);
                if (n > 0)
                {
                    for (int i = 0; i < n; i++) Assert.Equal((byte)((read + i) % chunk), sink[i]);
                    read += (int)n;
                }
                _conn.Flush(out _);
            }
            Assert.Equal(chunk * count, read);
            Assert.False(_conn.HasPendingSends);
            Assert.Equal(Enumerable.Range(0, count), _owner.Sent);
        }
        finally
        {
            NativeMemory.Free(data);
        }
    }

    [Fact]
    public void ATermReqCarriesTheOffendingHeader()
    {
        _owner.AnswerErrorsWithTermReq = true;
        CapsuleRespPdu r = Response(0xBEEF);
        r.Common.Hlen = 30;
        byte[] bad = Pdu(r);
        Write(bad);
        ReceiveAll();
        _conn.Flush(out _);
        // The copy is HLEN bytes (30) but no more than what arrived (24).
        byte[] wire = ReadPeer(PduSize.TermReqHeader + bad.Length);
        TermReqPdu t = MemoryMarshal.Read<TermReqPdu>(wire);
        Assert.Equal(PduType.C2HTermReq, t.Common.Type);
        Assert.Equal((uint)wire.Length, t.Common.Plen);
        Assert.Equal(TermReqFes.InvalidHeaderField, t.Fes);
        Assert.Equal(PduField.Hlen, t.Fei);
        Assert.Equal(bad, wire.AsSpan(PduSize.TermReqHeader).ToArray());
        Assert.Equal([7], _owner.Sent);
    }

    [Fact]
    public void DroppedSendsAreNeverSentNorReported()
    {
        byte* h = (byte*)NativeMemory.AllocZeroed(32);
        try
        {
            _conn.Enqueue(h, 24, 1);
            _conn.DropSends();
            Assert.Equal(0, _conn.Flush(out _));
            Assert.Empty(_owner.Sent);
            byte b;
            Assert.Equal(-1, Libc.Recv(_peer, &b, 1, Libc.MSG_DONTWAIT));
        }
        finally
        {
            NativeMemory.Free(h);
        }
    }

    [Fact]
    public void LayoutOfTheFieldOffsetsTheTermReqNames()
    {
        H2CDataPdu p = default;
        ref byte b = ref Unsafe.As<H2CDataPdu, byte>(ref p);
        Assert.Equal((int)PduField.H2CDataTtag, (int)Unsafe.ByteOffset(ref b, ref Unsafe.As<ushort, byte>(ref p.Ttag)));
        Assert.Equal((int)PduField.H2CDataDatao, (int)Unsafe.ByteOffset(ref b, ref Unsafe.As<uint, byte>(ref p.Datao)));
        Assert.Equal((int)PduField.H2CDataDatal, (int)Unsafe.ByteOffset(ref b, ref Unsafe.As<uint, byte>(ref p.Datal)));
        ICReqPdu ic = default;
        ref byte c = ref Unsafe.As<ICReqPdu, byte>(ref ic);
        Assert.Equal((int)PduField.ICReqPfv, (int)Unsafe.ByteOffset(ref c, ref Unsafe.As<ushort, byte>(ref ic.Pfv)));
        Assert.Equal((int)PduField.ICReqHpda, (int)Unsafe.ByteOffset(ref c, ref ic.Hpda));
        CommonHeader ch = default;
        ref byte d = ref Unsafe.As<CommonHeader, byte>(ref ch);
        Assert.Equal((int)PduField.Hlen, (int)Unsafe.ByteOffset(ref d, ref ch.Hlen));
        Assert.Equal((int)PduField.Pdo, (int)Unsafe.ByteOffset(ref d, ref ch.Pdo));
        Assert.Equal((int)PduField.Plen, (int)Unsafe.ByteOffset(ref d, ref Unsafe.As<uint, byte>(ref ch.Plen)));
    }
}
