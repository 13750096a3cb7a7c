using StorageNode.Nvme.Spec;

namespace StorageNode.Nvme.Rdma;

/// <summary>How an NVMe/RDMA command's data moves.</summary>
public enum RdmaDataKind : byte
{
    /// <summary>No data (a keyed descriptor of length 0, as Linux sends for commands without data).</summary>
    None,
    /// <summary>Keyed SGL data block: the target RDMA READs / WRITEs the host's memory.</summary>
    Keyed,
    /// <summary>Data block with offset addressing: the data came in the command capsule.</summary>
    InCapsule,
}

/// <summary>SGL1 of a command received over RDMA, checked.</summary>
public readonly record struct RdmaDataDescriptor(RdmaDataKind Kind, uint Length, ulong Address, uint Key, bool Invalidate, uint Offset);

/// <summary>
/// Validates SGL1 of an NVMe/RDMA command capsule (RDMA transport binding): a keyed SGL data block descriptor
/// (type 4, subtype 0 = address or Fh = address + remote invalidate) or, for in-capsule data, a data block
/// descriptor with offset addressing (type 0, subtype 1) that lies within the data that arrived.
/// </summary>
public static class RdmaSgl
{
    /// <summary>
    /// Returns Success and the descriptor, or the NVMe status the command fails with.
    /// <paramref name="capsuleDataBytes"/> is how much data followed the 64-byte SQE in the capsule.
    /// </summary>
    public static NvmeStatus Parse(in SglDescriptor sgl, uint capsuleDataBytes, out RdmaDataDescriptor d)
    {
        d = default;
        switch (sgl.Type)
        {
            case SglType.KeyedDataBlock:
                if (sgl.Subtype is not (SglSubtype.Address or SglSubtype.InvalidateKey))
                    return NvmeStatus.Generic(GenericStatus.SglDescriptorTypeInvalid);
                uint len = sgl.KeyedLength;
                if (len == 0)
                {
                    d = new RdmaDataDescriptor(RdmaDataKind.None, 0, 0, 0, false, 0);
                    return NvmeStatus.Success;
                }
                d = new RdmaDataDescriptor(RdmaDataKind.Keyed, len, sgl.Address, sgl.Key, sgl.Subtype == SglSubtype.InvalidateKey, 0);
                return NvmeStatus.Success;
            case SglType.DataBlock:
                if (sgl.Subtype != SglSubtype.Offset) return NvmeStatus.Generic(GenericStatus.SglDescriptorTypeInvalid);
                if (sgl.Address > capsuleDataBytes) return NvmeStatus.Generic(GenericStatus.InvalidSglOffset);
                if (sgl.Length > capsuleDataBytes - (uint)sgl.Address) return NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);
                d = new RdmaDataDescriptor(sgl.Length == 0 ? RdmaDataKind.None : RdmaDataKind.InCapsule, sgl.Length, 0, 0, false, (uint)sgl.Address);
                return NvmeStatus.Success;
            default:
                return NvmeStatus.Generic(GenericStatus.SglDescriptorTypeInvalid);
        }
    }

    /// <summary>A keyed SGL data block descriptor (what a host puts in SGL1 for data in registered memory).</summary>
    public static SglDescriptor Keyed(ulong address, uint length, uint key, bool invalidate)
    {
        if (length > 0xFFFFFF) throw new ArgumentOutOfRangeException(nameof(length), "a keyed SGL length has 24 bits");
        return new SglDescriptor
        {
            Address = address,
            Length = length | (key << 24),
            Reserved0 = (byte)(key >> 8),
            Reserved1 = (byte)(key >> 16),
            Reserved2 = (byte)(key >> 24),
            Identifier = (byte)((SglType.KeyedDataBlock << 4) | (invalidate ? SglSubtype.InvalidateKey : SglSubtype.Address)),
        };
    }
}
