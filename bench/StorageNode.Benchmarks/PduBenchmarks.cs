using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using StorageNode.Nvme;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Nvme.Tcp;

namespace StorageNode.Benchmarks;

/// <summary>
/// NVMe/TCP PDU primitives the hot paths are built from: encoding a command capsule (SQE, common header,
/// header digest) and decoding a C2HData header and a response capsule (type, lengths, digest, status).
/// </summary>
[MemoryDiagnoser]
public unsafe class PduBenchmarks
{
    private readonly byte[] _capsule = new byte[PduSize.CapsuleCmd + PduSize.Digest];
    private readonly byte[] _c2h = new byte[PduSize.C2HData + PduSize.Digest];
    private readonly byte[] _resp = new byte[PduSize.CapsuleResp + PduSize.Digest];
    private ushort _cid;

    [GlobalSetup]
    public void Setup()
    {
        fixed (byte* p = _c2h)
        {
            var h = (C2HDataPdu*)p;
            h->Common = new CommonHeader(PduType.C2HData, PduFlags.HeaderDigest | PduFlags.LastPdu | PduFlags.Success, PduSize.C2HData,
                PduSize.C2HData + PduSize.Digest, PduSize.C2HData + PduSize.Digest + 4096);
            h->Cccid = 7;
            h->Datal = 4096;
            Unsafe.WriteUnaligned(p + PduSize.C2HData, Crc32C.Compute(new ReadOnlySpan<byte>(p, PduSize.C2HData)));
        }
        fixed (byte* p = _resp)
        {
            var r = (CapsuleRespPdu*)p;
            r->Common = new CommonHeader(PduType.CapsuleResp, PduFlags.HeaderDigest, PduSize.CapsuleResp, 0, PduSize.CapsuleResp + PduSize.Digest);
            r->Cqe.Cid = 7;
            Unsafe.WriteUnaligned(p + PduSize.CapsuleResp, Crc32C.Compute(new ReadOnlySpan<byte>(p, PduSize.CapsuleResp)));
        }
    }

    /// <summary>A 4 KiB read command capsule with a header digest, as the initiator sends it.</summary>
    [Benchmark]
    public uint EncodeReadCapsule()
    {
        fixed (byte* p = _capsule)
        {
            var pdu = (CapsuleCmdPdu*)p;
            pdu->Common = new CommonHeader(PduType.CapsuleCmd, PduFlags.HeaderDigest, PduSize.CapsuleCmd, 0, PduSize.CapsuleCmd + PduSize.Digest);
            pdu->Sqe = IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 4096, 8);
            pdu->Sqe.Cid = ++_cid;
            pdu->Sqe.Dptr = SglDescriptor.Transport(4096);
            uint digest = Crc32C.Compute(new ReadOnlySpan<byte>(p, PduSize.CapsuleCmd));
            Unsafe.WriteUnaligned(p + PduSize.CapsuleCmd, digest);
            return digest;
        }
    }

    /// <summary>A C2HData header and a response capsule checked the way a receiver checks them.</summary>
    [Benchmark]
    public int DecodeC2HAndResponse()
    {
        int ok = 0;
        fixed (byte* c = _c2h)
        fixed (byte* r = _resp)
        {
            var h = (C2HDataPdu*)c;
            if (h->Common.Type == PduType.C2HData && h->Common.Hlen == PduSize.HeaderLength(PduType.C2HData)
                && h->Common.Plen >= (uint)h->Common.Pdo + h->Datal
                && Unsafe.ReadUnaligned<uint>(c + PduSize.C2HData) == Crc32C.Compute(new ReadOnlySpan<byte>(c, PduSize.C2HData)))
                ok += h->Cccid;
            var resp = (CapsuleRespPdu*)r;
            if (resp->Common.Type == PduType.CapsuleResp && resp->Common.Hlen == PduSize.HeaderLength(PduType.CapsuleResp)
                && Unsafe.ReadUnaligned<uint>(r + PduSize.CapsuleResp) == Crc32C.Compute(new ReadOnlySpan<byte>(r, PduSize.CapsuleResp))
                && resp->Cqe.StatusField.IsSuccess)
                ok += resp->Cqe.Cid;
        }
        return ok;
    }
}
