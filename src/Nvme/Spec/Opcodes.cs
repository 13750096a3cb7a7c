namespace StorageNode.Nvme.Spec;

public static class AdminOpcode
{
    public const byte DeleteIoSq = 0x00;
    public const byte CreateIoSq = 0x01;
    public const byte GetLogPage = 0x02;
    public const byte DeleteIoCq = 0x04;
    public const byte CreateIoCq = 0x05;
    public const byte Identify = 0x06;
    public const byte Abort = 0x08;
    public const byte SetFeatures = 0x09;
    public const byte GetFeatures = 0x0A;
    public const byte AsyncEventRequest = 0x0C;
    public const byte NamespaceManagement = 0x0D;
    public const byte FirmwareCommit = 0x10;
    public const byte FirmwareDownload = 0x11;
    public const byte NamespaceAttachment = 0x15;
    public const byte KeepAlive = 0x18;
    public const byte FabricsCommand = 0x7F;
}

public static class IoOpcode
{
    public const byte Flush = 0x00;
    public const byte Write = 0x01;
    public const byte Read = 0x02;
    public const byte WriteUncorrectable = 0x04;
    public const byte Compare = 0x05;
    public const byte WriteZeroes = 0x08;
    public const byte DatasetManagement = 0x09;
    public const byte Verify = 0x0C;
    public const byte ReservationRegister = 0x0D;
    public const byte ReservationReport = 0x0E;
    public const byte ReservationAcquire = 0x11;
    public const byte ReservationRelease = 0x15;
    public const byte Copy = 0x19;
    public const byte FabricsCommand = 0x7F;

    public static bool IsReservation(byte op) => op is ReservationRegister or ReservationReport or ReservationAcquire or ReservationRelease;
}

public static class FabricsCommandType
{
    public const byte PropertySet = 0x00;
    public const byte Connect = 0x01;
    public const byte PropertyGet = 0x04;
    public const byte AuthenticationSend = 0x05;
    public const byte AuthenticationReceive = 0x06;
    public const byte Disconnect = 0x08;
}

/// <summary>Data transfer direction encoded in bits 1:0 of an opcode (or Fabrics command type).</summary>
public enum DataDirection
{
    None = 0,
    HostToController = 1,
    ControllerToHost = 2,
    Bidirectional = 3,
}

public static class Cns
{
    public const byte Namespace = 0x00;
    public const byte Controller = 0x01;
    public const byte ActiveNamespaceList = 0x02;
    public const byte NamespaceDescriptorList = 0x03;
    public const byte IoCommandSetNamespace = 0x05;
    public const byte IoCommandSetController = 0x06;
    public const byte IoCommandSetActiveNamespaceList = 0x07;
    public const byte IoCommandSetIndependentNamespace = 0x08;
}

public static class LogPageId
{
    /// <summary>Supported Log Pages: 256 dwords, one per LID (bit 0 LSUPP: supported; bit 1 IOS: index offset).</summary>
    public const byte SupportedLogPages = 0x00;
    public const byte Error = 0x01;
    public const byte Smart = 0x02;
    public const byte FirmwareSlot = 0x03;
    public const byte ChangedNamespaceList = 0x04;
    public const byte CommandEffects = 0x05;
    public const byte Ana = 0x0C;
    public const byte ReservationNotification = 0x80;
    public const byte Discovery = 0x70;
}

public static class FeatureId
{
    public const byte Arbitration = 0x01;
    public const byte PowerManagement = 0x02;
    public const byte TemperatureThreshold = 0x04;
    public const byte ErrorRecovery = 0x05;
    public const byte VolatileWriteCache = 0x06;
    public const byte NumberOfQueues = 0x07;
    public const byte InterruptCoalescing = 0x08;
    public const byte InterruptVectorConfiguration = 0x09;
    public const byte WriteAtomicityNormal = 0x0A;
    public const byte AsyncEventConfiguration = 0x0B;
    public const byte KeepAliveTimer = 0x0F;
    public const byte HostIdentifier = 0x81;
    public const byte ReservationNotificationMask = 0x82;
    public const byte ReservationPersistence = 0x83;
}

/// <summary>Asynchronous event types and information (completion DW0 of an AER).</summary>
public static class AsyncEvent
{
    public const byte TypeError = 0x0;
    public const byte TypeSmart = 0x1;
    public const byte TypeNotice = 0x2;

    public const byte NoticeNamespaceAttributeChanged = 0x00;
    public const byte NoticeFirmwareActivation = 0x01;
    public const byte NoticeAnaChange = 0x03;
    public const byte NoticeDiscoveryLogChange = 0xF0;

    /// <summary>Async Event Configuration feature bits.</summary>
    public const uint ConfigNamespaceAttribute = 1u << 8;
    public const uint ConfigFirmwareActivation = 1u << 9;
    public const uint ConfigAnaChange = 1u << 11;
    public const uint ConfigDiscoveryLogChange = 1u << 31;

    public static uint Dw0(byte type, byte info, byte logPage) => type | ((uint)info << 8) | ((uint)logPage << 16);

    /// <summary>The log page (bits 23:16) an event's Dword 0 names.</summary>
    public static byte LogPageOf(uint dw0) => (byte)(dw0 >> 16);
}

public static class DsmAttribute
{
    public const uint IntegralDatasetForRead = 1u << 0;
    public const uint IntegralDatasetForWrite = 1u << 1;
    public const uint Deallocate = 1u << 2;
}

public static class WellKnownNqn
{
    public const string Discovery = "nqn.2014-08.org.nvmexpress.discovery";
}

public static class Opcodes
{
    public static DataDirection Direction(byte opcodeOrFabricsType) => (DataDirection)(opcodeOrFabricsType & 0x3);
}
