using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

// What each stage of the command path keeps of a command, in its request slot (no allocation per command): a struct a
// stage, reset whole with the slot (NvmfRequest.Reset), its default meaning "this stage has nothing of the command".

/// <summary>A command's part in a fused Compare and Write (<see cref="FusedCommands"/>).</summary>
internal struct FusedState
{
    public FusedRole Role;
    /// <summary>The other command of the pair, while both are here and neither has ended.</summary>
    public NvmfRequest? Partner;
    /// <summary>Its data is here and it may run (the pair runs once both are ready).</summary>
    public bool Ready;
    /// <summary>How the pair was aborted before it ran (success: it was not).</summary>
    public NvmeStatus Abort;
    /// <summary>On the proxy: the pair relayed to the owner as one command, with the host's buffers and SQEs.</summary>
    public FusedRelay? Relay;
}

/// <summary>The Compare and Write range lock a command counts against (<see cref="RangeLocks"/>) until it completes.</summary>
internal struct RangeLockState
{
    public RangeLocks.Channel? Channel;
    /// <summary>The channel's epoch when the command started counting.</summary>
    public int Epoch;
}

/// <summary>On the owner, a write's way to the replica (<see cref="MirrorCommands"/>).</summary>
internal struct MirrorState
{
    public MirrorPhase Phase;
    /// <summary>Counted in its namespace's <see cref="WriteOrder"/> until it completes.</summary>
    public bool Ordered;
    /// <summary>
    /// It reached the bdev (<see cref="IoCommands"/>' Run): a command released after its connection closed completes
    /// without running, and must not be mirrored.
    /// </summary>
    public bool Ran;
    /// <summary>
    /// It ran while the replica was out of sync: it is marked missed as it completes, never mirrored, even if a resync
    /// began meanwhile (its copy would not be ordered with the writes around it, and the resync would not repair it).
    /// </summary>
    public bool RanUnmirrored;
}

/// <summary>The regions of its namespace's <see cref="DirtyRegionLog"/> a write counts inside until it completes.</summary>
internal struct DirtyState
{
    public bool Logged;
    public int First, Last;
}
