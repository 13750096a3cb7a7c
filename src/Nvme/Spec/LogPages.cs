using System.Runtime.InteropServices;

namespace StorageNode.Nvme.Spec;

/// <summary>Error Information log entry (64 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
public struct ErrorLogEntry
{
    [FieldOffset(0)] public ulong ErrorCount;
    [FieldOffset(8)] public ushort SqId;
    [FieldOffset(10)] public ushort Cid;
    [FieldOffset(12)] public ushort Status;
    [FieldOffset(14)] public ushort ParameterErrorLocation;
    [FieldOffset(16)] public ulong Lba;
    [FieldOffset(24)] public uint Nsid;
    [FieldOffset(28)] public byte VendorSpecific;
    [FieldOffset(29)] public byte TrType;
    [FieldOffset(32)] public ulong CommandSpecific;
    [FieldOffset(40)] public ushort TransportSpecific;
}

/// <summary>SMART / Health Information log (512 bytes). 128-bit counters are stored as two 64-bit halves.</summary>
[StructLayout(LayoutKind.Explicit, Size = 512)]
public struct SmartLog
{
    [FieldOffset(0)] public byte CriticalWarning;
    [FieldOffset(1)] public ushort CompositeTemperature;
    [FieldOffset(3)] public byte AvailableSpare;
    [FieldOffset(4)] public byte AvailableSpareThreshold;
    [FieldOffset(5)] public byte PercentageUsed;
    [FieldOffset(6)] public byte EnduranceGroupCriticalWarning;
    [FieldOffset(32)] public ulong DataUnitsRead;
    [FieldOffset(48)] public ulong DataUnitsWritten;
    [FieldOffset(64)] public ulong HostReadCommands;
    [FieldOffset(80)] public ulong HostWriteCommands;
    [FieldOffset(96)] public ulong ControllerBusyTime;
    [FieldOffset(112)] public ulong PowerCycles;
    [FieldOffset(128)] public ulong PowerOnHours;
    [FieldOffset(144)] public ulong UnsafeShutdowns;
    [FieldOffset(160)] public ulong MediaErrors;
    [FieldOffset(176)] public ulong ErrorLogEntries;
    [FieldOffset(192)] public uint WarningTemperatureTime;
    [FieldOffset(196)] public uint CriticalTemperatureTime;
}

/// <summary>Firmware Slot Information log (512 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 512)]
public unsafe struct FirmwareSlotLog
{
    [FieldOffset(0)] public byte Afi;
    /// <summary>FRS1..FRS7, 8 ASCII bytes each.</summary>
    [FieldOffset(8)] public fixed byte Frs[56];
}

/// <summary>ANA log page header (16 bytes); group descriptors follow.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
public struct AnaLogHeader
{
    [FieldOffset(0)] public ulong ChangeCount;
    [FieldOffset(8)] public ushort GroupCount;
}

/// <summary>ANA group descriptor (32 bytes); NNSIDS namespace identifiers (4 bytes each) follow.</summary>
[StructLayout(LayoutKind.Explicit, Size = 32)]
public struct AnaGroupDescriptor
{
    [FieldOffset(0)] public uint GroupId;
    [FieldOffset(4)] public uint NamespaceCount;
    [FieldOffset(8)] public ulong ChangeCount;
    [FieldOffset(16)] public byte State;
}

public enum AnaState : byte
{
    Optimized = 0x01,
    NonOptimized = 0x02,
    Inaccessible = 0x03,
    PersistentLoss = 0x04,
    Change = 0x0F,
}

/// <summary>Discovery log page header (1024 bytes); 1024-byte entries follow.</summary>
[StructLayout(LayoutKind.Explicit, Size = 1024)]
public struct DiscoveryLogHeader
{
    [FieldOffset(0)] public ulong GenerationCounter;
    [FieldOffset(8)] public ulong RecordCount;
    [FieldOffset(16)] public ushort RecordFormat;
}

/// <summary>Discovery log page entry (1024 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 1024)]
public unsafe struct DiscoveryLogEntry
{
    [FieldOffset(0)] public byte TrType;
    [FieldOffset(1)] public byte AdrFam;
    [FieldOffset(2)] public byte SubType;
    [FieldOffset(3)] public byte Treq;
    [FieldOffset(4)] public ushort PortId;
    [FieldOffset(6)] public ushort Cntlid;
    [FieldOffset(8)] public ushort AsqSz;
    [FieldOffset(10)] public ushort Eflags;
    [FieldOffset(32)] public fixed byte TrSvcId[32];
    [FieldOffset(256)] public fixed byte SubNqn[256];
    [FieldOffset(512)] public fixed byte TrAddr[256];
    [FieldOffset(768)] public fixed byte Tsas[256];
}

public static class Discovery
{
    public const byte TrTypeRdma = 1;
    public const byte TrTypeTcp = 3;
    public const byte AdrFamIpv4 = 1;
    public const byte AdrFamIpv6 = 2;
    public const byte SubTypeReferral = 1;
    public const byte SubTypeNvm = 2;
    public const byte SubTypeCurrentDiscovery = 3;
    public const byte TreqNotSpecified = 0;
    public const byte TreqNotRequired = 2;
    /// <summary>Dynamic controller model: CNTLID FFFFh in a discovery entry.</summary>
    public const ushort CntlidDynamic = 0xFFFF;
    public const byte EflagsDuplicateReturnedInfo = 1 << 0;
    public const byte EflagsExplicitPersistentConnection = 1 << 1;
}
