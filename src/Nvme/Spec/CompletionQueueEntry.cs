using System.Runtime.InteropServices;

namespace StorageNode.Nvme.Spec;

/// <summary>NVMe Completion Queue Entry (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 16)]
public struct CompletionQueueEntry
{
    public uint Dw0;        // 0: command specific
    public uint Dw1;        // 4: command specific
    public ushort SqHead;   // 8
    public ushort SqId;     // 10
    public ushort Cid;      // 12
    public ushort Status;   // 14: P bit 0, SC 8:1, SCT 11:9, CRD 13:12, M 14, DNR 15

    public readonly NvmeStatus StatusField => new((ushort)(Status >> 1));
}

/// <summary>
/// The 15-bit status field of a CQE (without the phase bit): SC 7:0, SCT 10:8, CRD 12:11, M 13, DNR 14.
/// </summary>
public readonly record struct NvmeStatus(ushort Value)
{
    public byte Code => (byte)Value;
    public StatusCodeType Type => (StatusCodeType)((Value >> 8) & 0x7);
    public bool DoNotRetry => (Value & 0x4000) != 0;
    public bool More => (Value & 0x2000) != 0;
    public bool IsSuccess => (Value & 0x7FF) == 0;

    public static readonly NvmeStatus Success = default;

    public static NvmeStatus Make(StatusCodeType type, byte code, bool dnr = false)
        => new((ushort)(code | ((int)type << 8) | (dnr ? 0x4000 : 0)));

    public static NvmeStatus Generic(byte code, bool dnr = true) => Make(StatusCodeType.Generic, code, dnr);
    public static NvmeStatus CommandSpecific(byte code, bool dnr = true) => Make(StatusCodeType.CommandSpecific, code, dnr);
    public static NvmeStatus Path(byte code) => Make(StatusCodeType.PathRelated, code, false);

    /// <summary>Value for CQE bytes 14-15 (phase bit 0).</summary>
    public ushort ToCqeStatus() => (ushort)(Value << 1);

    public override string ToString() => $"SCT {(int)Type:X} SC {Code:X2}{(DoNotRetry ? " DNR" : "")}";
}
