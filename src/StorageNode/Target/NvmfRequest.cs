using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// A command slot of one queue pair, preallocated with it. Carries the SQE, the CQE being built, and the
/// command's data buffer. Implements the bdev completion callback so I/O needs no per-command delegate.
/// </summary>
public unsafe class NvmfRequest : IBdevCompletion, IMirrorCompletion
{
    public readonly QueuePair Qpair;
    public readonly ushort Slot;

    public SubmissionQueueEntry Sqe;
    public CompletionQueueEntry Cqe;
    public RequestState State;
    public DataDirection Direction;
    /// <summary>Transfer length from SGL1 (bytes).</summary>
    public uint Length;
    /// <summary>Data buffer (from the reactor's pools) or null when Length is 0.</summary>
    public byte* Data;
    /// <summary>Data points into a bdev's own memory (zero-copy read): never returned to a pool.</summary>
    public bool DataBorrowed;

    // Set while executing.
    public Namespace? Namespace;
    public BdevChannel? Channel;
    internal int PendingOps;
    internal int FirstError;
    /// <summary>The I/O gate's state for this command (<see cref="IIoGate"/>; opaque to the target).</summary>
    public GateTicket Gate;
    /// <summary>
    /// The capsule reached this node no earlier than this Stopwatch timestamp: the transport's conservative bound,
    /// from the last time it saw its connection's input drained. Time a command spent in a socket buffer or behind a
    /// stalled reactor counts from here.
    /// </summary>
    public long ArrivedAfter;

    // Fused Compare and Write (FusedCommands) and range locks (RangeLocks).
    internal FusedRole Fused;
    internal NvmfRequest? FusedPartner;
    internal bool FusedReady;
    internal NvmeStatus FusedAbort;
    internal FusedRelay? FusedRelay;
    internal RangeLocks.Channel? RangeLockChannel;
    internal int RangeLockEpoch;

    // Mirroring (MirrorCommands): on the owner, where the write's copy to the replica is; on the partner, whether this
    // command is such a copy (it runs on the namespace's replica).
    internal MirrorPhase MirrorPhase;
    internal bool ForReplica;
    /// <summary>Counted in its namespace's <see cref="WriteOrder"/> until it completes.</summary>
    internal bool MirrorOrdered;
    /// <summary>
    /// It reached the bdev (<see cref="IoCommands"/>' Run): a command released after its connection closed completes
    /// without running, and must not be mirrored.
    /// </summary>
    internal bool Ran;
    /// <summary>
    /// It ran while the replica was out of sync: it is marked missed as it completes, never mirrored, even if a resync
    /// began meanwhile (its copy would not be ordered with the writes around it, and the resync would not repair it).
    /// </summary>
    internal bool RanUnmirrored;
    /// <summary>Counted inside regions <see cref="DirtyFirst"/> to <see cref="DirtyLast"/> of its namespace's <see cref="DirtyRegionLog"/> until it completes.</summary>
    internal bool DirtyLogged;
    internal int DirtyFirst, DirtyLast;

    public NvmfRequest(QueuePair qpair, ushort slot)
    {
        Qpair = qpair;
        Slot = slot;
    }

    public NvmeStatus Status
    {
        get => Cqe.StatusField;
        set => Cqe.Status = value.ToCqeStatus();
    }

    public Span<byte> DataSpan => Data == null ? Span<byte>.Empty : new Span<byte>(Data, (int)Length);

    /// <summary>Resets per-command state when a capsule lands in this slot.</summary>
    public void Reset()
    {
        Cqe = default;
        Direction = DataDirection.None;
        Length = 0;
        DataBorrowed = false;
        Namespace = null;
        Channel = null;
        PendingOps = 0;
        FirstError = 0;
        Gate = default;
        Fused = FusedRole.None;
        FusedPartner = null;
        FusedReady = false;
        FusedAbort = default;
        FusedRelay = null;
        RangeLockChannel = null;
        MirrorPhase = MirrorPhase.None;
        ForReplica = false;
        MirrorOrdered = false;
        Ran = false;
        RanUnmirrored = false;
        DirtyLogged = false;
    }

    /// <summary>Fails the command with a status (DNR per the status) and completes it.</summary>
    public void Fail(NvmeStatus status)
    {
        Status = status;
        Complete();
    }

    /// <summary>Hands the completed command back to its queue pair's transport.</summary>
    public void Complete()
    {
        // A write to a mirrored namespace completes once the replica has it too (OnMirrored completes it again).
        switch (MirrorPhase)
        {
            case MirrorPhase.Sending:
                return; // already waiting for the replica
            case MirrorPhase.Early:
                // Done here, its copy still on its way: the slot and the data buffer (which the copy reads) stay allocated
                // until the replica answers, even if the connection closes meanwhile.
                MirrorCommands.LocalDone(this);
                MirrorPhase = MirrorPhase.Sending;
                PendingOps = 1;
                return;
            case MirrorPhase.Answered:
                MirrorCommands.LocalDone(this);
                MirrorPhase = MirrorPhase.Done;
                break;
            case MirrorPhase.None:
                if (MirrorCommands.Hold(this)) return;
                break;
        }
        // Its namespace's group moved to the partner while it ran (a takeover): what it did here is not the truth (a write
        // landed on what is now the partner's replica, which the partner resyncs): the host retries it on the owner.
        if (Status.IsSuccess && !ForReplica && Namespace is { MovedAway: true }) Status = NvmeStatus.Path(PathStatus.AnaInaccessible);
        if (MirrorOrdered) Namespace!.WriteOrder.Finished(this);
        if (DirtyLogged) Namespace!.DirtyLog!.Leave(this);
        // A fused command that ends on its own (the HA gate failed it while it was held): its partner cannot run alone.
        if (FusedPartner != null) FusedCommands.Failed(this, Status);
        if (RangeLockChannel != null) RangeLockChannel.Finished(this);
        if (Gate.Path != null) Qpair.Target.IoGate!.Done(this);
        if (!Status.IsSuccess) Qpair.OnCommandFailed(this);
        if (Namespace != null) IoCommands.Count(this);
        Qpair.CompleteRequest(this);
    }

    /// <summary>
    /// The replica answered this command's copy (reactor thread): the command completes, or, while its local write is
    /// still on its way (the copy went early), completes when that does. Its status is the local write's either way (a
    /// copy that failed made the replica out of sync: NamespaceMirror.Completed).
    /// </summary>
    public void OnMirrored(NvmeStatus status)
    {
        if (MirrorPhase == MirrorPhase.Early)
        {
            MirrorPhase = MirrorPhase.Answered;
            return;
        }
        MirrorPhase = MirrorPhase.Done;
        PendingOps = 0; // held while the copy was on its way (MirrorCommands.Hold)
        Complete();
    }

    public void Abandon(NvmeStatus status)
    {
        Status = status;
        OnMirrored(status);
    }

    public void OnBdevComplete(int result)
    {
        if (result != 0 && FirstError == 0) FirstError = result;
        if (--PendingOps > 0) return;
        if (FusedRelay != null)
        {
            FusedCommands.RelayCompleted(this, FirstError);
            return;
        }
        if (FirstError != 0) Status = BdevResult.ToStatus(FirstError);
        IoCommands.Completed(this);
        Complete();
    }
}
