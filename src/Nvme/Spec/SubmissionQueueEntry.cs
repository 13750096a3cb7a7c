using System.Runtime.InteropServices;

namespace StorageNode.Nvme.Spec;

/// <summary>NVMe Submission Queue Entry (64 bytes), as carried in a command capsule.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 64)]
public struct SubmissionQueueEntry
{
    public byte Opcode;          // 0
    public byte Flags;           // 1: FUSE 1:0, PSDT 7:6
    public ushort Cid;           // 2
    public uint Nsid;            // 4 (Fabrics: byte 4 is FCTYPE)
    public uint Cdw2;            // 8
    public uint Cdw3;            // 12
    public ulong Mptr;           // 16
    public SglDescriptor Dptr;   // 24 (SGL1)
    public uint Cdw10;           // 40
    public uint Cdw11;           // 44
    public uint Cdw12;           // 48
    public uint Cdw13;           // 52
    public uint Cdw14;           // 56
    public uint Cdw15;           // 60

    /// <summary>Fabrics command type (byte 4), meaningful when <see cref="Opcode"/> is 0x7F.</summary>
    public readonly byte FabricsType => (byte)Nsid;

    /// <summary>PSDT: 00 = PRP, 01/10 = SGL. Fabrics requires SGL.</summary>
    public readonly int Psdt => Flags >> CommandFlags.PsdtShift;

    public readonly int Fuse => Flags & CommandFlags.FuseMask;

    /// <summary>Force Unit Access (CDW12 bit 30) of Read, Write, Compare and Write Zeroes.</summary>
    public readonly bool ForceUnitAccess => (Cdw12 & IoCdw12.ForceUnitAccess) != 0;

    /// <summary>Deallocate (CDW12 bit 25) of Write Zeroes.</summary>
    public readonly bool DeallocateZeroes => (Cdw12 & IoCdw12.Deallocate) != 0;

    /// <summary>Starting LBA of NVM read/write/write zeroes (CDW10-11).</summary>
    public readonly ulong Slba => Cdw10 | ((ulong)Cdw11 << 32);

    /// <summary>Number of logical blocks (0-based in the SQE, returned 1-based).</summary>
    public readonly uint BlockCount => (Cdw12 & IoCdw12.BlockCountMask) + 1;
}

/// <summary>The command's flags byte (SQE byte 1): FUSE in bits 1:0, PSDT in bits 7:6.</summary>
public static class CommandFlags
{
    public const byte FuseMask = 0x03;
    /// <summary>FUSE 01b: the first command of a fused operation (Compare, of Compare and Write).</summary>
    public const int FuseFirst = 1;
    /// <summary>FUSE 10b: the second command (Write).</summary>
    public const int FuseSecond = 2;
    public const int PsdtShift = 6;
    public const byte PsdtMask = 0xC0;
    /// <summary>PSDT 01b: SGLs for the data (all that NVMe over Fabrics uses).</summary>
    public const byte PsdtSgl = 0x40;
}

/// <summary>Bits of CDW12 of the NVM I/O commands (Read, Write, Compare, Write Zeroes).</summary>
public static class IoCdw12
{
    /// <summary>NLB, 0-based, bits 15:0.</summary>
    public const uint BlockCountMask = 0xFFFF;
    /// <summary>Write Zeroes: deallocate the blocks (bit 25).</summary>
    public const uint Deallocate = 1u << 25;
    /// <summary>Force Unit Access (bit 30).</summary>
    public const uint ForceUnitAccess = 1u << 30;
}

/// <summary>Fabrics Connect command view of an SQE.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 64)]
public struct ConnectCommand
{
    public byte Opcode;                 // 0
    public byte Reserved1;              // 1
    public ushort Cid;                  // 2
    public byte FabricsType;            // 4
    public unsafe fixed byte Reserved2[19];
    public SglDescriptor Sgl1;          // 24
    public ushort RecordFormat;         // 40
    public ushort Qid;                  // 42
    public ushort SqSize;               // 44 (0-based)
    public byte Cattr;                  // 46
    public byte Reserved3;              // 47
    public uint Kato;                   // 48 (milliseconds)
    public unsafe fixed byte Reserved4[12];
}

/// <summary>Fabrics Property Get / Property Set view of an SQE.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 64)]
public struct PropertyCommand
{
    public byte Opcode;                 // 0
    public byte Reserved1;              // 1
    public ushort Cid;                  // 2
    public byte FabricsType;            // 4
    public unsafe fixed byte Reserved2[35];
    public byte Attributes;             // 40: bits 2:0 size (0 = 4 bytes, 1 = 8 bytes)
    public unsafe fixed byte Reserved3[3];
    public uint Offset;                 // 44
    public ulong Value;                 // 48 (Property Set)
    public unsafe fixed byte Reserved4[8];

    /// <summary>The property's size in bytes from ATTRIB bits 2:0 (0: 4 bytes, 1: 8 bytes).</summary>
    public readonly int Size => (Attributes & 0x7) == 1 ? 8 : 4;
}

/// <summary>Connect command data (1024 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1, Size = 1024)]
public unsafe struct ConnectData
{
    public fixed byte HostId[16];       // 0
    public ushort Cntlid;               // 16
    public fixed byte Reserved1[238];   // 18
    public fixed byte SubNqn[256];      // 256
    public fixed byte HostNqn[256];     // 512
    public fixed byte Reserved2[256];   // 768

    /// <summary>The data of a Connect from host <paramref name="hostId"/> / <paramref name="hostNqn"/> to <paramref name="subNqn"/>.</summary>
    public static ConnectData For(Guid hostId, ushort cntlid, string subNqn, string hostNqn)
    {
        ConnectData d = default;
        hostId.TryWriteBytes(new Span<byte>(d.HostId, 16), bigEndian: true, out _);
        d.Cntlid = cntlid;
        SpecText.WriteNulPadded(new Span<byte>(d.SubNqn, 256), subNqn);
        SpecText.WriteNulPadded(new Span<byte>(d.HostNqn, 256), hostNqn);
        return d;
    }
}
