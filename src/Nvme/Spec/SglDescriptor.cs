using System.Runtime.InteropServices;

namespace StorageNode.Nvme.Spec;

/// <summary>SGL descriptor (16 bytes). Byte 15 holds the type (7:4) and subtype (3:0).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 16)]
public struct SglDescriptor
{
    public ulong Address;   // 0
    public uint Length;     // 8 (keyed descriptors: bytes 8..10 length, 11..14 key)
    public byte Reserved0;  // 12
    public byte Reserved1;  // 13
    public byte Reserved2;  // 14
    public byte Identifier; // 15

    public readonly int Type => Identifier >> 4;
    public readonly int Subtype => Identifier & 0xF;

    /// <summary>Length of a keyed data block descriptor (24 bits).</summary>
    public readonly uint KeyedLength => Length & 0xFFFFFF;

    /// <summary>Key of a keyed data block descriptor (bytes 11..14).</summary>
    public readonly uint Key => (Length >> 24) | ((uint)Reserved0 << 8) | ((uint)Reserved1 << 16) | ((uint)Reserved2 << 24);

    /// <summary>Data block, offset addressing: in-capsule data (NVMe/TCP, NVMe/RDMA).</summary>
    public const byte InCapsuleDataBlock = (SglType.DataBlock << 4) | SglSubtype.Offset;

    /// <summary>Transport data block: data moved by the transport (NVMe/TCP R2T / C2HData).</summary>
    public const byte TransportDataBlock = (SglType.TransportDataBlock << 4) | SglSubtype.Transport;

    public static SglDescriptor InCapsule(uint length) => new() { Address = 0, Length = length, Identifier = InCapsuleDataBlock };
    public static SglDescriptor Transport(uint length) => new() { Address = 0, Length = length, Identifier = TransportDataBlock };
}

public static class SglType
{
    public const int DataBlock = 0x0;
    public const int BitBucket = 0x1;
    public const int Segment = 0x2;
    public const int LastSegment = 0x3;
    public const int KeyedDataBlock = 0x4;
    public const int TransportDataBlock = 0x5;
}

public static class SglSubtype
{
    public const int Address = 0x0;
    public const int Offset = 0x1;
    public const int Transport = 0xA;
    public const int InvalidateKey = 0xF;
}
