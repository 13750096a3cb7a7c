using System.Runtime.InteropServices;
using StorageNode.Nvme.Spec;

namespace StorageNode.Nvme.Tcp;

/// <summary>NVMe/TCP PDU types.</summary>
public enum PduType : byte
{
    ICReq = 0x00,
    ICResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

public static class PduFlags
{
    public const byte HeaderDigest = 1 << 0;
    public const byte DataDigest = 1 << 1;
    public const byte LastPdu = 1 << 2;
    public const byte Success = 1 << 3;
}

/// <summary>Fatal Error Status of a TermReq PDU.</summary>
public static class TermReqFes
{
    public const ushort InvalidHeaderField = 0x01;
    public const ushort PduSequenceError = 0x02;
    public const ushort HeaderDigestError = 0x03;
    public const ushort DataTransferOutOfRange = 0x04;
    public const ushort R2TLimitExceeded = 0x05;
    public const ushort DataTransferLimitExceeded = 0x05;
    public const ushort UnsupportedParameter = 0x06;
}

/// <summary>
/// Byte offsets of PDU header fields, as a TermReq's Fatal Error Information (FEI) names the field at fault.
/// </summary>
public static class PduField
{
    // The common header (every PDU).
    public const uint Type = 0;
    public const uint Flags = 1;
    public const uint Hlen = 2;
    public const uint Pdo = 3;
    public const uint Plen = 4;
    // ICReq.
    public const uint ICReqPfv = 8;
    public const uint ICReqHpda = 10;
    // H2CData.
    public const uint H2CDataTtag = 10;
    public const uint H2CDataDatao = 12;
    public const uint H2CDataDatal = 16;
}

/// <summary>The DGST field of ICReq and ICResp.</summary>
public static class DigestBits
{
    public const byte Header = 1 << 0;
    public const byte Data = 1 << 1;
}

/// <summary>Sizes fixed by the NVMe/TCP transport specification.</summary>
public static class PduSize
{
    public const int Common = 8;
    public const int ICReq = 128;
    public const int ICResp = 128;
    public const int TermReqHeader = 24;
    public const int TermReqMaxData = 128;
    public const int CapsuleCmd = 72;
    public const int CapsuleResp = 24;
    public const int H2CData = 24;
    public const int C2HData = 24;
    public const int R2T = 24;
    public const int Digest = 4;
    public const int MaxHeader = 128;

    /// <summary>The HLEN the specification fixes for each PDU type, or 0 for an unknown type.</summary>
    public static int HeaderLength(PduType type) => type switch
    {
        PduType.ICReq => ICReq,
        PduType.ICResp => ICResp,
        PduType.H2CTermReq or PduType.C2HTermReq => TermReqHeader,
        PduType.CapsuleCmd => CapsuleCmd,
        PduType.CapsuleResp => CapsuleResp,
        PduType.H2CData => H2CData,
        PduType.C2HData => C2HData,
        PduType.R2T => R2T,
        _ => 0,
    };

    /// <summary>True for PDU types that carry a header digest when it is negotiated.</summary>
    public static bool HasHeaderDigest(PduType type) =>
        type is PduType.CapsuleCmd or PduType.CapsuleResp or PduType.H2CData or PduType.C2HData or PduType.R2T;

    /// <summary>True for PDU types that may carry data (and so a data digest when negotiated).</summary>
    public static bool MayCarryData(PduType type) =>
        type is PduType.CapsuleCmd or PduType.H2CData or PduType.C2HData;
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 8)]
public struct CommonHeader
{
    public PduType Type;    // 0
    public byte Flags;      // 1
    public byte Hlen;       // 2
    public byte Pdo;        // 3
    public uint Plen;       // 4

    public CommonHeader(PduType type, byte flags, byte hlen, byte pdo, uint plen)
    {
        Type = type; Flags = flags; Hlen = hlen; Pdo = pdo; Plen = plen;
    }
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 128)]
public unsafe struct ICReqPdu
{
    public CommonHeader Common; // 0
    public ushort Pfv;          // 8
    public byte Hpda;           // 10
    public byte Digest;         // 11: bit 0 HDGST_ENABLE, bit 1 DDGST_ENABLE
    public uint MaxR2T;         // 12 (0-based)
    public fixed byte Reserved[112];
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 128)]
public unsafe struct ICRespPdu
{
    public CommonHeader Common; // 0
    public ushort Pfv;          // 8
    public byte Cpda;           // 10
    public byte Digest;         // 11
    public uint MaxH2CData;     // 12
    public fixed byte Reserved[112];
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 24)]
public unsafe struct TermReqPdu
{
    public CommonHeader Common; // 0
    public ushort Fes;          // 8
    public uint Fei;            // 10 (unaligned)
    public fixed byte Reserved[10];
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 72)]
public struct CapsuleCmdPdu
{
    public CommonHeader Common;     // 0
    public SubmissionQueueEntry Sqe; // 8
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 24)]
public struct CapsuleRespPdu
{
    public CommonHeader Common;      // 0
    public CompletionQueueEntry Cqe; // 8
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 24)]
public struct H2CDataPdu
{
    public CommonHeader Common; // 0
    public ushort Cccid;        // 8
    public ushort Ttag;         // 10
    public uint Datao;          // 12
    public uint Datal;          // 16
    public uint Reserved;       // 20
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 24)]
public struct C2HDataPdu
{
    public CommonHeader Common; // 0
    public ushort Cccid;        // 8
    public ushort Reserved0;    // 10
    public uint Datao;          // 12
    public uint Datal;          // 16
    public uint Reserved;       // 20
}

[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 24)]
public struct R2TPdu
{
    public CommonHeader Common; // 0
    public ushort Cccid;        // 8
    public ushort Ttag;         // 10
    public uint R2To;           // 12
    public uint R2Tl;           // 16
    public uint Reserved;       // 20
}
