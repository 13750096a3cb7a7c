using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Nvme;
using StorageNode.Nvme.Spec;
using StorageNode.Nvme.Tcp;

namespace StorageNode.Tests;

/// <summary>A hand-driven NVMe/TCP host for malformed-traffic tests: builds PDUs byte by byte.</summary>
public sealed unsafe class RawClient : IDisposable
{
    private readonly Socket _s;
    public bool HeaderDigest { get; private set; }
    public bool DataDigest { get; private set; }
    public Guid HostId { get; }
    public string HostNqn => $"nqn.2014-08.org.nvmexpress:uuid:{HostId}";

    public RawClient(IPEndPoint ep, int timeoutMs = 5000, Guid? hostId = null)
    {
        HostId = hostId ?? Guid.NewGuid();
        _s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = timeoutMs, SendTimeout = timeoutMs };
        _s.Connect(ep);
    }

    public void Send(ReadOnlySpan<byte> bytes) => _s.Send(bytes);

    public static byte[] Bytes<T>(in T value) where T : unmanaged
        => MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)).ToArray();

    public void IcReq(bool hdgst = false, bool ddgst = false, ushort pfv = 0)
    {
        ICReqPdu req = default;
        req.Common = new CommonHeader(PduType.ICReq, 0, 128, 0, 128);
        req.Pfv = pfv;
        req.Digest = (byte)((hdgst ? 1 : 0) | (ddgst ? 2 : 0));
        Send(Bytes(req));
        if (pfv != 0) return;
        (CommonHeader ch, byte[] pdu) = ReadPdu();
        Assert.Equal(PduType.ICResp, ch.Type);
        HeaderDigest = (pdu[11] & 1) != 0;
        DataDigest = (pdu[11] & 2) != 0;
    }

    /// <summary>Reads exactly one PDU (common header, then PLEN - 8 bytes). Throws on close or timeout.</summary>
    public (CommonHeader Header, byte[] Pdu) ReadPdu()
    {
        byte[] head = ReadExactly(8);
        CommonHeader ch = MemoryMarshal.Read<CommonHeader>(head);
        Assert.InRange(ch.Plen, 8u, 16u << 20);
        byte[] pdu = new byte[ch.Plen];
        head.CopyTo(pdu, 0);
        byte[] rest = ReadExactly((int)ch.Plen - 8);
        rest.CopyTo(pdu, 8);
        return (ch, pdu);
    }

    private byte[] ReadExactly(int n)
    {
        var buf = new byte[n];
        int got = 0;
        while (got < n)
        {
            int r = _s.Receive(buf, got, n - got, SocketFlags.None);
            if (r == 0) throw new EndOfStreamException($"connection closed after {got} of {n} bytes");
            got += r;
        }
        return buf;
    }

    /// <summary>Expects a C2HTermReq with the given FES (and FEI, when given), then the connection to close.</summary>
    public void ExpectTermReqAndClose(ushort fes, uint? fei = null)
    {
        (CommonHeader ch, byte[] pdu) = ReadPdu();
        Assert.Equal(PduType.C2HTermReq, ch.Type);
        Assert.Equal(24, ch.Hlen);
        TermReqPdu t = MemoryMarshal.Read<TermReqPdu>(pdu);
        Assert.Equal(fes, t.Fes);
        if (fei is uint f) Assert.Equal(f, t.Fei);
        ExpectClosed();
    }

    public void ExpectClosed()
    {
        var buf = new byte[256];
        try
        {
            for (int i = 0; i < 100; i++)
            {
                int r = _s.Receive(buf);
                if (r == 0) return;
            }
            Assert.Fail("connection still open");
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
        }
    }

    public byte[] Capsule(in SubmissionQueueEntry sqe, ReadOnlySpan<byte> inCapsule = default, bool corruptHeaderDigest = false, bool corruptDataDigest = false)
    {
        int hd = HeaderDigest ? 4 : 0;
        int dd = DataDigest && inCapsule.Length > 0 ? 4 : 0;
        int pdo = inCapsule.Length > 0 ? 72 + hd : 0;
        int plen = 72 + hd + inCapsule.Length + dd;
        var pdu = new byte[plen];
        CapsuleCmdPdu c = default;
        byte flags = (byte)((HeaderDigest ? PduFlags.HeaderDigest : 0) | (dd != 0 ? PduFlags.DataDigest : 0));
        c.Common = new CommonHeader(PduType.CapsuleCmd, flags, 72, (byte)pdo, (uint)plen);
        c.Sqe = sqe;
        Bytes(c).CopyTo(pdu, 0);
        if (hd != 0) BitConverter.TryWriteBytes(pdu.AsSpan(72), Crc32C.Compute(pdu.AsSpan(0, 72)) ^ (corruptHeaderDigest ? 1u : 0u));
        inCapsule.CopyTo(pdu.AsSpan(72 + hd));
        if (dd != 0) BitConverter.TryWriteBytes(pdu.AsSpan(72 + hd + inCapsule.Length), Crc32C.Compute(inCapsule) ^ (corruptDataDigest ? 1u : 0u));
        return pdu;
    }

    public byte[] H2CData(ushort cccid, ushort ttag, uint datao, ReadOnlySpan<byte> data, uint? datalOverride = null)
    {
        int hd = HeaderDigest ? 4 : 0;
        int dd = DataDigest ? 4 : 0;
        int plen = 24 + hd + data.Length + dd;
        var pdu = new byte[plen];
        H2CDataPdu h = default;
        h.Common = new CommonHeader(PduType.H2CData, (byte)((HeaderDigest ? PduFlags.HeaderDigest : 0) | (DataDigest ? PduFlags.DataDigest : 0) | PduFlags.LastPdu), 24, (byte)(24 + hd), (uint)plen);
        h.Cccid = cccid;
        h.Ttag = ttag;
        h.Datao = datao;
        h.Datal = datalOverride ?? (uint)data.Length;
        Bytes(h).CopyTo(pdu, 0);
        if (hd != 0) BitConverter.TryWriteBytes(pdu.AsSpan(24), Crc32C.Compute(pdu.AsSpan(0, 24)));
        data.CopyTo(pdu.AsSpan(24 + hd));
        if (dd != 0) BitConverter.TryWriteBytes(pdu.AsSpan(24 + hd + data.Length), Crc32C.Compute(data));
        return pdu;
    }

    public byte[] ConnectData(ushort cntlid, string subnqn)
    {
        return Bytes(Nvme.Spec.ConnectData.For(HostId, cntlid, subnqn, HostNqn));
    }

    public static SubmissionQueueEntry ConnectSqe(ushort cid, ushort qid, ushort sqsize, bool inCapsule)
    {
        ConnectCommand c = default;
        c.Opcode = AdminOpcode.FabricsCommand;
        c.Cid = cid;
        c.FabricsType = FabricsCommandType.Connect;
        c.Qid = qid;
        c.SqSize = sqsize;
        c.Kato = 0;
        c.Sgl1 = inCapsule ? SglDescriptor.InCapsule(1024) : SglDescriptor.Transport(1024);
        SubmissionQueueEntry sqe = Unsafe.As<ConnectCommand, SubmissionQueueEntry>(ref c);
        sqe.Flags = 0x40;
        return sqe;
    }

    /// <summary>Fabrics Connect with in-capsule data; returns the CQE.</summary>
    public CompletionQueueEntry Connect(ushort qid, ushort cntlid, string subnqn, ushort sqsize = 31)
    {
        Send(Capsule(ConnectSqe(1, qid, sqsize, inCapsule: true), ConnectData(cntlid, subnqn)));
        return ReadResponse();
    }

    public CompletionQueueEntry ReadResponse()
    {
        (CommonHeader ch, byte[] pdu) = ReadPdu();
        Assert.Equal(PduType.CapsuleResp, ch.Type);
        return MemoryMarshal.Read<CapsuleRespPdu>(pdu).Cqe;
    }

    public CompletionQueueEntry PropertySet(uint offset, uint value)
    {
        PropertyCommand p = default;
        p.Opcode = AdminOpcode.FabricsCommand;
        p.Cid = 2;
        p.FabricsType = FabricsCommandType.PropertySet;
        p.Offset = offset;
        p.Value = value;
        SubmissionQueueEntry sqe = Unsafe.As<PropertyCommand, SubmissionQueueEntry>(ref p);
        sqe.Flags = 0x40;
        Send(Capsule(sqe));
        return ReadResponse();
    }

    public void Dispose() => _s.Dispose();
}
