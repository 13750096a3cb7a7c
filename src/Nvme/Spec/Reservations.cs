using System.Buffers.Binary;

namespace StorageNode.Nvme.Spec;

/// <summary>Reservation types (Acquire/Release RTYPE, Report's RTYPE).</summary>
public enum ReservationType : byte
{
    None = 0,
    WriteExclusive = 1,
    ExclusiveAccess = 2,
    WriteExclusiveRegistrantsOnly = 3,
    ExclusiveAccessRegistrantsOnly = 4,
    WriteExclusiveAllRegistrants = 5,
    ExclusiveAccessAllRegistrants = 6,
}

/// <summary>The actions of the reservation commands (CDW10 bits 2:0).</summary>
public static class ReservationAction
{
    public const byte Register = 0;
    public const byte Unregister = 1;
    public const byte Replace = 2;

    public const byte Acquire = 0;
    public const byte Preempt = 1;
    public const byte PreemptAndAbort = 2;

    public const byte Release = 0;
    public const byte Clear = 1;
}

/// <summary>Reservation Register's CPTPL (CDW10 31:30): what happens to Persist Through Power Loss.</summary>
public static class ChangePtpl
{
    public const byte NoChange = 0;
    public const byte Clear = 2;
    public const byte Set = 3;
}

/// <summary>
/// The reservation commands' dwords: CDW10 holds the action (2:0), IEKEY (3), the type (15:8, Acquire and Release)
/// and CPTPL (31:30, Register); Report's CDW10 is NUMD (0-based dwords) and CDW11 bit 0 EDS.
/// </summary>
public static class ReservationFields
{
    private const uint ActionMask = 0x7;
    private const uint IekeyBit = 1u << 3;
    private const int TypeShift = 8;
    private const int CptplShift = 30;
    private const uint EdsBit = 1u << 0;

    /// <summary>Register and Acquire carry two keys (16 bytes), Release one (8).</summary>
    public const int TwoKeys = 16;
    public const int OneKey = 8;

    public static byte ReservationAction(this in SubmissionQueueEntry sqe) => (byte)(sqe.Cdw10 & ActionMask);
    public static bool IgnoreExistingKey(this in SubmissionQueueEntry sqe) => (sqe.Cdw10 & IekeyBit) != 0;
    public static byte ReservationTypeField(this in SubmissionQueueEntry sqe) => (byte)(sqe.Cdw10 >> TypeShift);
    public static byte ChangePtplField(this in SubmissionQueueEntry sqe) => (byte)(sqe.Cdw10 >> CptplShift);
    /// <summary>Report: how many bytes the host asked for.</summary>
    public static ulong ReportBytes(this in SubmissionQueueEntry sqe) => ((ulong)sqe.Cdw10 + 1) * 4;
    public static bool ExtendedDataStructure(this in SubmissionQueueEntry sqe) => (sqe.Cdw11 & EdsBit) != 0;

    public static uint Cdw10(byte action, bool iekey = false, ReservationType type = ReservationType.None, byte cptpl = ChangePtpl.NoChange)
        => (action & ActionMask) | (iekey ? IekeyBit : 0) | ((uint)type << TypeShift) | ((uint)cptpl << CptplShift);

    public static void SetReport(this ref SubmissionQueueEntry sqe, uint bytes, bool extended)
    {
        sqe.Cdw10 = bytes / 4 - 1;
        sqe.Cdw11 = extended ? EdsBit : 0;
    }

    /// <summary>The first (CRKEY) and second (NRKEY/PRKEY) key of a command's data.</summary>
    public static ulong Key(ReadOnlySpan<byte> data, int index) => BinaryPrimitives.ReadUInt64LittleEndian(data[(index * 8)..]);

    public static void WriteKeys(Span<byte> data, ulong first, ulong second = 0)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(data, first);
        if (data.Length >= TwoKeys) BinaryPrimitives.WriteUInt64LittleEndian(data[8..], second);
    }
}

/// <summary>
/// The Reservation Status data structure of Reservation Report, in the extended format (EDS = 1: 128-bit host
/// identifiers, the only one NVMe over Fabrics can give): a 64-byte header, then 64 bytes per registrant.
/// </summary>
public static class ReservationReport
{
    public const int ExtendedHeaderSize = 64;
    public const int ExtendedEntrySize = 64;

    // Header
    public const int Generation = 0;
    public const int Type = 4;
    public const int RegisteredControllers = 5;
    public const int PtplState = 9;
    // Registrant entry
    public const int Cntlid = 0;
    public const int Status = 2;
    public const int Key = 8;
    public const int HostId = 16;

    /// <summary>RCSTS bit 0: the registrant holds the reservation.</summary>
    public const byte HoldsReservation = 1;
    /// <summary>A registrant's CNTLID under the dynamic controller model: not one controller.</summary>
    public const ushort DynamicController = 0xFFFF;
}

/// <summary>The Reservation Notification log page (LID 80h): one 64-byte entry per read.</summary>
public static class ReservationNotification
{
    public const int Size = 64;
    public const byte Empty = 0;
    public const byte RegistrationPreempted = 1;
    public const byte ReservationReleased = 2;
    public const byte ReservationPreempted = 3;

    public const int LogPageCount = 0;
    public const int Type = 8;
    public const int Available = 9;
    public const int Nsid = 12;

    /// <summary>Reservation Notification Mask feature (FID 82h): the bit that masks a notification type.</summary>
    public static uint MaskBit(byte type) => 1u << type;
    public const uint MaskAll = (1u << RegistrationPreempted) | (1u << ReservationReleased) | (1u << ReservationPreempted);

    /// <summary>Asynchronous event type 6 (I/O command specific status), information 0: the log page has entries.</summary>
    public const byte AsyncEventType = 0x6;
    public const byte AsyncEventInfo = 0x0;
}

/// <summary>Identify Namespace RESCAP (byte 31): the reservation capabilities.</summary>
public static class ReservationCapabilities
{
    public const byte PersistThroughPowerLoss = 1 << 0;
    /// <summary>Bits 6:1, one per reservation type 1-6.</summary>
    public const byte AllTypes = 0x7E;
    /// <summary>Bit 7: Ignore Existing Key as defined since NVMe 1.3 (Acquire and Release refuse IEKEY).</summary>
    public const byte IgnoreExistingKey13 = 1 << 7;
}
