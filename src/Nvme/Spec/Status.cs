namespace StorageNode.Nvme.Spec;

public enum StatusCodeType
{
    Generic = 0,
    CommandSpecific = 1,
    MediaDataIntegrity = 2,
    PathRelated = 3,
    VendorSpecific = 7,
}

/// <summary>Generic command status codes (SCT 0).</summary>
public static class GenericStatus
{
    public const byte Success = 0x00;
    public const byte InvalidOpcode = 0x01;
    public const byte InvalidField = 0x02;
    public const byte CommandIdConflict = 0x03;
    public const byte DataTransferError = 0x04;
    public const byte InternalError = 0x06;
    public const byte AbortedByRequest = 0x07;
    public const byte AbortedSqDeletion = 0x08;
    /// <summary>Command Aborted due to Failed Fused Command: the other command of the fused operation failed.</summary>
    public const byte AbortedFailedFused = 0x09;
    /// <summary>Command Aborted due to Missing Fused Command: the other command of the fused operation never came.</summary>
    public const byte AbortedMissingFused = 0x0A;
    public const byte InvalidNamespaceOrFormat = 0x0B;
    public const byte CommandSequenceError = 0x0C;
    public const byte InvalidSglSegmentDescriptor = 0x0D;
    public const byte InvalidNumberOfSglDescriptors = 0x0E;
    public const byte DataSglLengthInvalid = 0x0F;
    public const byte MetadataSglLengthInvalid = 0x10;
    public const byte SglDescriptorTypeInvalid = 0x11;
    public const byte InvalidSglOffset = 0x16;
    public const byte HostIdInconsistentFormat = 0x18;
    public const byte KeepAliveExpired = 0x19;
    public const byte KeepAliveInvalid = 0x1A;
    public const byte CommandInterrupted = 0x21;
    public const byte TransientTransportError = 0x22;
    public const byte LbaOutOfRange = 0x80;
    public const byte CapacityExceeded = 0x81;
    public const byte NamespaceNotReady = 0x82;
    public const byte ReservationConflict = 0x83;
}

/// <summary>Command specific status codes (SCT 1).</summary>
public static class CommandSpecificStatus
{
    public const byte InvalidQueueIdentifier = 0x01;
    public const byte InvalidQueueSize = 0x02;
    public const byte AbortCommandLimitExceeded = 0x03;
    public const byte AsyncEventRequestLimitExceeded = 0x05;
    public const byte InvalidLogPage = 0x09;
    public const byte FeatureIdNotSaveable = 0x0D;
    public const byte FeatureNotChangeable = 0x0E;
    public const byte FeatureNotNamespaceSpecific = 0x0F;
    public const byte AttemptedWriteToReadOnlyRange = 0x82;
    /// <summary>Copy: a source range, the whole copy or the range count exceeds MSSRL, MCL or MSRC.</summary>
    public const byte CommandSizeLimitExceeded = 0x83;
}

/// <summary>Fabrics command status codes (SCT 1, Fabrics commands).</summary>
public static class FabricsStatus
{
    public const byte IncompatibleFormat = 0x80;
    public const byte ControllerBusy = 0x81;
    public const byte ConnectInvalidParameters = 0x82;
    public const byte RestartDiscovery = 0x83;
    public const byte ConnectInvalidHost = 0x84;
}

/// <summary>Media and data integrity errors (SCT 2).</summary>
public static class MediaStatus
{
    public const byte CompareFailure = 0x85;
}

/// <summary>Path related status codes (SCT 3).</summary>
public static class PathStatus
{
    public const byte InternalPathError = 0x00;
    public const byte AnaPersistentLoss = 0x01;
    public const byte AnaInaccessible = 0x02;
    public const byte AnaTransition = 0x03;
    public const byte ControllerPathingError = 0x60;
    public const byte HostPathingError = 0x70;
    public const byte CommandAbortedByHost = 0x71;
}
