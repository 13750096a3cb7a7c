namespace StorageNode.Nvme.Spec;

/// <summary>
/// The fields of the admin commands' dwords, by the names the specification gives them, so no handler (or host) reads
/// or writes a bare shift and mask.
/// </summary>
public static class AdminFields
{
    // Get Log Page: CDW10 LID 7:0, LSP 14:8, RAE 15, NUMDL 31:16; CDW11 NUMDU 15:0; CDW12/13 the offset (LPOL/LPOU).
    private const uint LspMask = 0x7F;
    private const int LspShift = 8;
    private const uint RaeBit = 1u << 15;
    private const int NumdlShift = 16;
    private const uint NumduMask = 0xFFFF;

    public static byte LogPageId(this in SubmissionQueueEntry sqe) => (byte)sqe.Cdw10;
    public static byte LogSpecificField(this in SubmissionQueueEntry sqe) => (byte)((sqe.Cdw10 >> LspShift) & LspMask);
    /// <summary>Retain Asynchronous Event: reading the page does not clear its event.</summary>
    public static bool RetainAsyncEvent(this in SubmissionQueueEntry sqe) => (sqe.Cdw10 & RaeBit) != 0;
    /// <summary>NUMD, 1-based: how many dwords to return.</summary>
    public static ulong LogPageDwords(this in SubmissionQueueEntry sqe) => ((sqe.Cdw10 >> NumdlShift) | ((ulong)(sqe.Cdw11 & NumduMask) << 16)) + 1;
    public static ulong LogPageOffset(this in SubmissionQueueEntry sqe) => sqe.Cdw12 | ((ulong)sqe.Cdw13 << 32);

    /// <summary>Writes the Get Log Page fields (<paramref name="dwords"/> 1-based).</summary>
    public static void SetLogPage(this ref SubmissionQueueEntry sqe, byte lid, uint dwords, ulong offset, byte lsp = 0, bool rae = false)
    {
        uint numd = dwords - 1;
        sqe.Cdw10 = lid | ((lsp & LspMask) << LspShift) | (rae ? RaeBit : 0) | ((numd & NumduMask) << NumdlShift);
        sqe.Cdw11 = numd >> 16;
        sqe.Cdw12 = (uint)offset;
        sqe.Cdw13 = (uint)(offset >> 32);
    }

    // Get / Set Features: CDW10 FID 7:0, SEL 10:8 (Get), SV 31 (Set).
    private const int SelShift = 8;
    private const uint SelMask = 0x7;
    private const uint SaveBit = 1u << 31;

    public static byte FeatureIdentifier(this in SubmissionQueueEntry sqe) => (byte)sqe.Cdw10;
    public static FeatureSelect FeatureSelect(this in SubmissionQueueEntry sqe) => (FeatureSelect)((sqe.Cdw10 >> SelShift) & SelMask);
    /// <summary>Set Features: save the value across a reset (SV).</summary>
    public static bool FeatureSave(this in SubmissionQueueEntry sqe) => (sqe.Cdw10 & SaveBit) != 0;
}

/// <summary>Identify's CNS (CDW10 7:0) and CSI (CDW11 31:24); Dataset Management's NR (CDW10 7:0, 0-based).</summary>
public static class CommandFields
{
    public static byte IdentifyCns(this in SubmissionQueueEntry sqe) => (byte)sqe.Cdw10;
    public static byte IdentifyCsi(this in SubmissionQueueEntry sqe) => (byte)(sqe.Cdw11 >> 24);
    /// <summary>Dataset Management: how many ranges the data holds (1-based).</summary>
    public static uint DsmRangeCount(this in SubmissionQueueEntry sqe) => (sqe.Cdw10 & 0xFF) + 1;

    /// <summary>Dataset Management's data: one 16-byte range each (NLB, 1-based, at byte 4; SLBA at byte 8).</summary>
    public const int DsmRangeSize = 16;

    /// <summary>Range <paramref name="i"/> of a Dataset Management's data.</summary>
    public static (ulong Lba, uint Blocks) DsmRange(ReadOnlySpan<byte> data, int i)
        => (System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(data[(i * DsmRangeSize + 8)..]),
            System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(data[(i * DsmRangeSize + 4)..]));
}

/// <summary>
/// The Copy command: CDW10/11 SDLBA (the destination), CDW12 NR 7:0 (source ranges, 0-based), Descriptor Format 11:8,
/// FUA 30; its data, one 32-byte Source Range entry per range (format 0: SLBA at byte 8, NLB 0-based at byte 16).
/// </summary>
public static class CopyFields
{
    public const int EntrySize = 32;
    private const int EntrySlba = 8;
    private const int EntryNlb = 16;
    private const uint FuaBit = 1u << 30;

    public static ulong DestinationLba(this in SubmissionQueueEntry sqe) => sqe.Cdw10 | ((ulong)sqe.Cdw11 << 32);
    public static int SourceRanges(this in SubmissionQueueEntry sqe) => (int)(sqe.Cdw12 & 0xFF) + 1;
    public static int DescriptorFormat(this in SubmissionQueueEntry sqe) => (int)((sqe.Cdw12 >> 8) & 0xF);
    public static bool CopyFua(this in SubmissionQueueEntry sqe) => (sqe.Cdw12 & FuaBit) != 0;

    public static (ulong Lba, uint Blocks) Entry(ReadOnlySpan<byte> data, int i)
        => (System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(data[(i * EntrySize + EntrySlba)..]),
            (uint)System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(data[(i * EntrySize + EntryNlb)..]) + 1);

    public static void WriteEntry(Span<byte> data, int i, ulong lba, uint blocks)
    {
        data.Slice(i * EntrySize, EntrySize).Clear();
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(data[(i * EntrySize + EntrySlba)..], lba);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(data[(i * EntrySize + EntryNlb)..], (ushort)(blocks - 1));
    }

    public static void Set(this ref SubmissionQueueEntry sqe, ulong destination, int ranges, bool fua = false)
    {
        sqe.Cdw10 = (uint)destination;
        sqe.Cdw11 = (uint)(destination >> 32);
        sqe.Cdw12 = (uint)(ranges - 1) | (fua ? FuaBit : 0);
    }
}

/// <summary>Dword 11 of Set Features Number of Queues and Dword 0 of its completion: NSQR 15:0, NCQR 31:16, both 0-based.</summary>
public static class QueueCount
{
    /// <summary>The dword for <paramref name="queues"/> submission and completion queues (1-based).</summary>
    public static uint Encode(int queues) => (uint)(queues - 1) | ((uint)(queues - 1) << 16);
    public static uint Submission(uint dw) => dw & 0xFFFF;
    public static uint Completion(uint dw) => dw >> 16;
    /// <summary>The queues (1-based) both counts allow.</summary>
    public static int Decode(uint dw) => (int)Math.Min(Submission(dw), Completion(dw)) + 1;
    /// <summary>The value 65535 (0-based) a host may not ask for.</summary>
    public const uint Invalid = 0xFFFF;
}

/// <summary>The Select field of Get Features.</summary>
public enum FeatureSelect : byte
{
    Current = 0,
    Default = 1,
    Saved = 2,
    SupportedCapabilities = 3,
}

/// <summary>Dword 0 of Get Features with Select = supported capabilities.</summary>
public static class FeatureCapabilities
{
    public const uint Saveable = 1u << 0;
    public const uint NamespaceSpecific = 1u << 1;
    public const uint Changeable = 1u << 2;
}

/// <summary>
/// Offsets that a Connect Invalid Parameters completion reports (Dword 0: the offset, bit 16 set when it is in the
/// Connect data rather than the SQE).
/// </summary>
public static class ConnectField
{
    public const ushort Qid = 42;
    public const ushort SqSize = 44;
    public const ushort HostId = 0;
    public const ushort Cntlid = 16;
    public const ushort SubNqn = 256;
    public const ushort HostNqn = 512;
    /// <summary>Dword 0 bit 16: the offset is in the Connect data.</summary>
    public const uint InData = 1u << 16;
    /// <summary>Connect CATTR bit 2: the host disables submission queue flow control (SQHD not reported).</summary>
    public const byte CattrDisableSqFlowControl = 1 << 2;
    /// <summary>The Connect data's CNTLID of the dynamic controller model: "any controller".</summary>
    public const ushort AnyController = 0xFFFF;
}

/// <summary>The fields of the features' Dword 11 (Set Features; Get Features where it selects) and Dword 0.</summary>
public static class FeatureFields
{
    // Temperature Threshold: TMPTH 15:0, TMPSEL 19:16 (0 composite, 1-8 sensors, Fh all), THSEL 21:20 (0 over, 1 under).
    private const int TmpselShift = 16;
    private const int ThselShift = 20;
    public const uint TmpselComposite = 0;
    public const uint TmpselLastSensor = 8;
    public const uint TmpselAll = 0xF;
    public const uint ThselOver = 0;
    public const uint ThselUnder = 1;
    public static ushort Threshold(uint dw) => (ushort)dw;
    public static uint TemperatureSelect(uint dw) => (dw >> TmpselShift) & 0xF;
    public static uint ThresholdSelect(uint dw) => (dw >> ThselShift) & 0x3;
    public static uint TemperatureThreshold(ushort threshold, uint tmpsel, uint thsel) => threshold | (tmpsel << TmpselShift) | (thsel << ThselShift);

    /// <summary>Power Management: PS 4:0 (WH 7:5).</summary>
    public const uint PowerStateMask = 0x1F;
    /// <summary>Error Recovery: TLER 15:0; DULBE, bit 16.</summary>
    public const uint TlerMask = 0xFFFF;
    public const uint Dulbe = 1u << 16;
    /// <summary>Interrupt Vector Configuration: IV 15:0; CD (coalescing disable), bit 16.</summary>
    public const uint InterruptVectorMask = 0xFFFF;
    public const uint CoalescingDisable = 1u << 16;
    /// <summary>Volatile Write Cache WCE, Write Atomicity Normal DN, Host Identifier EXHID: bit 0 each.</summary>
    public const uint Enable = 1u << 0;
    /// <summary>Host Identifier: the 128-bit identifier's size (EXHID set).</summary>
    public const int ExtendedHostIdBytes = 16;
}
