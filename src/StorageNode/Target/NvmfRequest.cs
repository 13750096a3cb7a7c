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

    /// <summary>The owner's copy of a write, for this node's replica (a mirror opcode on the interconnect, decoded).</summary>
    internal bool ForReplica;

    // What the stages a command passes through keep of it, each reset whole with the slot (Reset). A command of a plain
    // namespace leaves every one of them at its default.
    /// <summary>Its part in a fused Compare and Write (<see cref="FusedCommands"/>).</summary>
    internal FusedState Fused;
    /// <summary>The Compare and Write range lock it counts against (<see cref="RangeLocks"/>).</summary>
    internal RangeLockState RangeLock;
    /// <summary>Its write's way to the replica, on the owner (<see cref="MirrorCommands"/>).</summary>
    internal MirrorState Mirror;
    /// <summary>The dirty regions it counts in (<see cref="DirtyRegionLog"/>).</summary>
    internal DirtyState Dirty;

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
        ForReplica = false;
        Fused = default;
        RangeLock = default;
        Mirror = default;
        Dirty = default;
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
        switch (Mirror.Phase)
        {
            case MirrorPhase.Sending:
                return; // already waiting for the replica
            case MirrorPhase.Early:
                // Done here, its copy still on its way: the slot and the data buffer (which the copy reads) stay allocated
                // until the replica answers, even if the connection closes meanwhile.
                MirrorCommands.LocalDone(this);
                Mirror.Phase = MirrorPhase.Sending;
                PendingOps = 1;
                return;
            case MirrorPhase.Answered:
                MirrorCommands.LocalDone(this);
                Mirror.Phase = MirrorPhase.Done;
                break;
            case MirrorPhase.None:
                if (MirrorCommands.Hold(this)) return;
                break;
        }
        // Its namespace's group moved to the partner while it ran (a takeover): what it did here is not the truth (a write
        // landed on what is now the partner's replica, which the partner resyncs): the host retries it on the owner.
        if (Status.IsSuccess && !ForReplica && Namespace is { MovedAway: true }) Status = NvmeStatus.Path(PathStatus.AnaInaccessible);
        if (Mirror.Ordered) Namespace!.WriteOrder.Finished(this);
        if (Dirty.Logged) Namespace!.DirtyLog!.Leave(this);
        // A fused command that ends on its own (the HA gate failed it while it was held): its partner cannot run alone.
        if (Fused.Partner != null) FusedCommands.Failed(this, Status);
        RangeLock.Channel?.Finished(this);
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
        if (Mirror.Phase == MirrorPhase.Early)
        {
            Mirror.Phase = MirrorPhase.Answered;
            return;
        }
        Mirror.Phase = MirrorPhase.Done;
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
        if (Fused.Relay != null)
        {
            FusedCommands.RelayCompleted(this, FirstError);
            return;
        }
        if (FirstError != 0) Status = BdevResult.ToStatus(FirstError);
        IoCommands.Completed(this);
        Complete();
    }
}
