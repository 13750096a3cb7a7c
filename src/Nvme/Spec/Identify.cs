using System.Runtime.InteropServices;
using System.Text;

namespace StorageNode.Nvme.Spec;

/// <summary>Identify Controller data structure (CNS 01h), 4096 bytes. Offsets from the NVMe base specification.</summary>
[StructLayout(LayoutKind.Explicit, Size = 4096)]
public unsafe struct IdentifyController
{
    [FieldOffset(0)] public ushort Vid;
    [FieldOffset(2)] public ushort Ssvid;
    [FieldOffset(4)] public fixed byte Sn[20];
    [FieldOffset(24)] public fixed byte Mn[40];
    [FieldOffset(64)] public fixed byte Fr[8];
    [FieldOffset(72)] public byte Rab;
    [FieldOffset(73)] public fixed byte Ieee[3];
    [FieldOffset(76)] public byte Cmic;
    [FieldOffset(77)] public byte Mdts;
    [FieldOffset(78)] public ushort Cntlid;
    [FieldOffset(80)] public uint Ver;
    [FieldOffset(84)] public uint Rtd3r;
    [FieldOffset(88)] public uint Rtd3e;
    [FieldOffset(92)] public uint Oaes;
    [FieldOffset(96)] public uint Ctratt;
    [FieldOffset(100)] public ushort Rrls;
    [FieldOffset(111)] public byte Cntrltype;
    [FieldOffset(112)] public fixed byte Fguid[16];
    [FieldOffset(128)] public ushort Crdt1;
    [FieldOffset(130)] public ushort Crdt2;
    [FieldOffset(132)] public ushort Crdt3;
    [FieldOffset(253)] public byte Nvmsr;
    [FieldOffset(254)] public byte Vwci;
    [FieldOffset(255)] public byte Mec;
    [FieldOffset(256)] public ushort Oacs;
    [FieldOffset(258)] public byte Acl;
    [FieldOffset(259)] public byte Aerl;
    [FieldOffset(260)] public byte Frmw;
    [FieldOffset(261)] public byte Lpa;
    [FieldOffset(262)] public byte Elpe;
    [FieldOffset(263)] public byte Npss;
    [FieldOffset(264)] public byte Avscc;
    [FieldOffset(265)] public byte Apsta;
    [FieldOffset(266)] public ushort Wctemp;
    [FieldOffset(268)] public ushort Cctemp;
    [FieldOffset(270)] public ushort Mtfa;
    [FieldOffset(272)] public uint Hmpre;
    [FieldOffset(276)] public uint Hmmin;
    [FieldOffset(280)] public fixed byte Tnvmcap[16];
    [FieldOffset(296)] public fixed byte Unvmcap[16];
    [FieldOffset(312)] public uint Rpmbs;
    [FieldOffset(316)] public ushort Edstt;
    [FieldOffset(318)] public byte Dsto;
    [FieldOffset(319)] public byte Fwug;
    [FieldOffset(320)] public ushort Kas;
    [FieldOffset(322)] public ushort Hctma;
    [FieldOffset(324)] public ushort Mntmt;
    [FieldOffset(326)] public ushort Mxtmt;
    [FieldOffset(328)] public uint Sanicap;
    [FieldOffset(332)] public uint Hmminds;
    [FieldOffset(336)] public ushort Hmmaxd;
    [FieldOffset(338)] public ushort Nsetidmax;
    [FieldOffset(340)] public ushort Endgidmax;
    [FieldOffset(342)] public byte Anatt;
    [FieldOffset(343)] public byte Anacap;
    [FieldOffset(344)] public uint Anagrpmax;
    [FieldOffset(348)] public uint Nanagrpid;
    [FieldOffset(352)] public uint Pels;
    /// <summary>Command Quiesce Time (ms), NVMe 2.1 / TP4129.</summary>
    [FieldOffset(386)] public ushort Cqt;
    [FieldOffset(512)] public byte Sqes;
    [FieldOffset(513)] public byte Cqes;
    [FieldOffset(514)] public ushort Maxcmd;
    [FieldOffset(516)] public uint Nn;
    [FieldOffset(520)] public ushort Oncs;
    [FieldOffset(522)] public ushort Fuses;
    [FieldOffset(524)] public byte Fna;
    [FieldOffset(525)] public byte Vwc;
    [FieldOffset(526)] public ushort Awun;
    [FieldOffset(528)] public ushort Awupf;
    [FieldOffset(530)] public byte Icsvscc;
    [FieldOffset(531)] public byte Nwpc;
    [FieldOffset(532)] public ushort Acwu;
    [FieldOffset(534)] public ushort Ocfs;
    [FieldOffset(536)] public uint Sgls;
    [FieldOffset(540)] public uint Mnan;
    [FieldOffset(768)] public fixed byte Subnqn[256];
    // NVMe over Fabrics attributes.
    [FieldOffset(1792)] public uint Ioccsz;
    [FieldOffset(1796)] public uint Iorcsz;
    [FieldOffset(1800)] public ushort Icdoff;
    [FieldOffset(1802)] public byte Fcatt;
    [FieldOffset(1803)] public byte Msdbd;
    [FieldOffset(1804)] public ushort Ofcs;
    [FieldOffset(2048)] public fixed byte Psd[1024];
    [FieldOffset(3072)] public fixed byte Vs[1024];
}

public static class IdentifyControllerBits
{
    // CMIC
    public const byte CmicMultiPort = 1 << 0;
    public const byte CmicMultiController = 1 << 1;
    public const byte CmicAnaReporting = 1 << 3;
    // OAES
    public const uint OaesNamespaceAttribute = 1u << 8;
    public const uint OaesAnaChange = 1u << 11;
    public const uint OaesDiscoveryLogChange = 1u << 31;
    // LPA
    public const byte LpaSmartPerNamespace = 1 << 0;
    public const byte LpaCommandEffects = 1 << 1;
    public const byte LpaExtendedData = 1 << 2;
    // ONCS
    public const ushort OncsCompare = 1 << 0;
    public const ushort OncsWriteUncorrectable = 1 << 1;
    public const ushort OncsDatasetManagement = 1 << 2;
    public const ushort OncsWriteZeroes = 1 << 3;
    /// <summary>The Save field of Set Features and the Select field of Get Features are supported.</summary>
    public const ushort OncsSaveAndSelect = 1 << 4;
    public const ushort OncsReservations = 1 << 5;
    public const ushort OncsVerify = 1 << 7;
    public const ushort OncsCopy = 1 << 8;
    // OCFS
    public const ushort OcfsFormat0 = 1 << 0;
    // FUSES
    public const ushort FusesCompareAndWrite = 1 << 0;
    // ANACAP
    public const byte AnacapOptimized = 1 << 0;
    public const byte AnacapNonOptimized = 1 << 1;
    public const byte AnacapInaccessible = 1 << 2;
    public const byte AnacapPersistentLoss = 1 << 3;
    public const byte AnacapChange = 1 << 4;
    public const byte AnacapGroupIdNotChanged = 1 << 6;
    public const byte AnacapNonZeroGroupId = 1 << 7;
    // SGLS
    public const uint SglsSupported = 1u << 0;
    public const uint SglsKeyed = 1u << 2;
    public const uint SglsOffset = 1u << 20;
    // CNTRLTYPE
    public const byte TypeIo = 1;
    public const byte TypeDiscovery = 2;
    // FCATT
    public const byte FcattDynamic = 0;
    // CTRATT
    public const uint CtrattHostId128 = 1u << 0;
}

/// <summary>Identify Namespace data structure (CNS 00h), 4096 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 4096)]
public unsafe struct IdentifyNamespace
{
    [FieldOffset(0)] public ulong Nsze;
    [FieldOffset(8)] public ulong Ncap;
    [FieldOffset(16)] public ulong Nuse;
    [FieldOffset(24)] public byte Nsfeat;
    [FieldOffset(25)] public byte Nlbaf;
    [FieldOffset(26)] public byte Flbas;
    [FieldOffset(27)] public byte Mc;
    [FieldOffset(28)] public byte Dpc;
    [FieldOffset(29)] public byte Dps;
    [FieldOffset(30)] public byte Nmic;
    [FieldOffset(31)] public byte Rescap;
    [FieldOffset(32)] public byte Fpi;
    [FieldOffset(33)] public byte Dlfeat;
    [FieldOffset(34)] public ushort Nawun;
    [FieldOffset(36)] public ushort Nawupf;
    [FieldOffset(38)] public ushort Nacwu;
    [FieldOffset(40)] public ushort Nabsn;
    [FieldOffset(42)] public ushort Nabo;
    [FieldOffset(44)] public ushort Nabspf;
    [FieldOffset(46)] public ushort Noiob;
    [FieldOffset(48)] public fixed byte Nvmcap[16];
    [FieldOffset(64)] public ushort Npwg;
    [FieldOffset(66)] public ushort Npwa;
    [FieldOffset(68)] public ushort Npdg;
    [FieldOffset(70)] public ushort Npda;
    [FieldOffset(72)] public ushort Nows;
    /// <summary>Maximum Single Source Range Length (blocks) of a Copy.</summary>
    [FieldOffset(74)] public ushort Mssrl;
    /// <summary>Maximum Copy Length (blocks, all source ranges together).</summary>
    [FieldOffset(76)] public uint Mcl;
    /// <summary>Maximum Source Range Count (0-based).</summary>
    [FieldOffset(80)] public byte Msrc;
    [FieldOffset(92)] public uint Anagrpid;
    [FieldOffset(99)] public byte Nsattr;
    [FieldOffset(100)] public ushort Nvmsetid;
    [FieldOffset(102)] public ushort Endgid;
    [FieldOffset(104)] public fixed byte Nguid[16];
    [FieldOffset(120)] public fixed byte Eui64[8];
    /// <summary>LBA formats 0..63, 4 bytes each: MS 15:0, LBADS 23:16, RP 25:24.</summary>
    [FieldOffset(128)] public fixed uint Lbaf[64];
    [FieldOffset(3712)] public fixed byte Vs[384];

    public static uint LbaFormat(int lbads, int metadataSize = 0, int relativePerformance = 0)
        => (uint)(metadataSize | (lbads << 16) | (relativePerformance << 24));

    /// <summary>The formatted LBA size in bytes (FLBAS 3:0 picks the format; LBADS is its log2), or 0 when unset.</summary>
    public readonly uint FormattedBlockSize
    {
        get
        {
            int lbads = (int)((Lbaf[Flbas & 0xF] >> 16) & 0xFF);
            return lbads == 0 ? 0 : 1u << lbads;
        }
    }
}

public static class IdentifyNamespaceBits
{
    public const byte NsfeatThinProvisioning = 1 << 0;
    public const byte NsfeatNsAtomics = 1 << 1;
    public const byte NsfeatDeallocatedError = 1 << 2;
    public const byte NsfeatOptPerf = 1 << 4;
    public const byte NmicShared = 1 << 0;
    /// <summary>DLFEAT: deallocated blocks read as zeroes.</summary>
    public const byte DlfeatReadZeroes = 0x1;
    public const byte DlfeatWriteZeroesDeallocate = 1 << 3;
}

/// <summary>Namespace Identification Descriptor types (CNS 03h).</summary>
public static class NamespaceIdType
{
    public const byte Eui64 = 1;
    public const byte Nguid = 2;
    public const byte Uuid = 3;
    public const byte Csi = 4;

    public static int Length(byte type) => type switch { Eui64 => 8, Nguid => 16, Uuid => 16, Csi => 1, _ => 0 };
}

public static class SpecText
{
    /// <summary>Writes an ASCII string padded with spaces (SN, MN, FR fields).</summary>
    public static void WritePadded(Span<byte> field, string value)
    {
        field.Fill((byte)' ');
        int n = Encoding.ASCII.GetBytes(value.AsSpan(0, Math.Min(value.Length, field.Length)), field);
        _ = n;
    }

    /// <summary>Writes a NUL-terminated (NUL-padded) ASCII string (NQN fields).</summary>
    public static void WriteNulPadded(Span<byte> field, string value)
    {
        field.Clear();
        Encoding.ASCII.GetBytes(value.AsSpan(0, Math.Min(value.Length, field.Length - 1)), field);
    }

    public static string ReadPadded(ReadOnlySpan<byte> field) => Encoding.ASCII.GetString(field).TrimEnd(' ', '\0');

    public static string ReadNulTerminated(ReadOnlySpan<byte> field)
    {
        int end = field.IndexOf((byte)0);
        if (end < 0) end = field.Length;
        return Encoding.ASCII.GetString(field[..end]);
    }
}
