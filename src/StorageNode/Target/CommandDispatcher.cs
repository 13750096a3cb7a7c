using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// Transport-independent command entry. A transport calls <see cref="Prepare"/> when a capsule arrives
/// (before any data moves), obtains a buffer and the host's data, then calls <see cref="Execute"/>.
/// </summary>
public static class CommandDispatcher
{
    /// <summary>
    /// Decides direction and length, and validates everything that can be checked before data moves (so a
    /// doomed write is not pulled from the host). Returns false when the command already failed: its status is
    /// set and the transport must consume any in-capsule data and then call <see cref="NvmfRequest.Complete"/>.
    /// </summary>
    public static bool Prepare(NvmfRequest req, uint sglLength)
    {
        req.Length = sglLength;
        NvmeStatus status = Validate(req);
        if (status.IsSuccess)
        {
            if (req.Direction == DataDirection.None && sglLength != 0)
                status = NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);
            else if (sglLength > req.Qpair.Target.Options.MaxIoSize)
                status = NvmeStatus.Generic(GenericStatus.InvalidField);
        }
        if (status.IsSuccess) return true;
        if (req.Fused.Role != FusedRole.None) FusedCommands.Failed(req, status);
        req.Status = status;
        return false;
    }

    /// <summary>The command's checks by its command set, in order; sets its data direction where the set knows it.</summary>
    private static NvmeStatus Validate(NvmfRequest req)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        QueuePair qp = req.Qpair;
        // Fabrics requires SGLs for data (PSDT = 01b).
        if (sqe.Psdt != 1) return NvmeStatus.Generic(GenericStatus.InvalidField);
        // The only fused operation is Compare and Write, on I/O queues.
        if (qp.Qid == 0 && sqe.Fuse != 0) return NvmeStatus.Generic(GenericStatus.InvalidField);
        if (sqe.Opcode == AdminOpcode.FabricsCommand)
        {
            req.Direction = Opcodes.Direction(sqe.FabricsType);
            return FabricsCommands.Validate(req);
        }
        if (qp.Qid != 0)
        {
            // On an I/O queue a fused command finds its partner as it arrives; one that cannot fails here (and so does a
            // first command left without its second).
            NvmeStatus fused = FusedCommands.OnCapsule(req);
            if (!fused.IsSuccess)
            {
                req.Direction = Opcodes.Direction(sqe.Opcode);
                return fused;
            }
        }
        // Only Connect may come first on a queue.
        if (qp.Controller is not { } ctrl) return NvmeStatus.Generic(GenericStatus.CommandSequenceError);
        if (qp.Qid == 0)
        {
            req.Direction = Opcodes.Direction(sqe.Opcode);
            return AdminCommands.Validate(req, ctrl);
        }
        // What only the partner sends on the interconnect is decoded first (a replica's copy of a write runs as the write).
        if (ctrl.IsInterconnect) MirrorCommands.DecodeCopy(req);
        req.Direction = Opcodes.Direction(sqe.Opcode);
        return IoCommands.Validate(req, ctrl);
    }

    /// <summary>
    /// Runs an I/O command the <see cref="IIoGate"/> held, once the gate releases it (on the command's reactor): it
    /// runs if the gate now admits it, and completes without running if its connection closed meanwhile.
    /// </summary>
    public static void Resume(NvmfRequest req) => IoCommands.Resume(req);

    /// <summary>
    /// For a prepared command that sends data to the host: lends the memory that already holds the data (a read from a
    /// RAM namespace), so that the transport sends from it with no copy and no pool buffer. True when it did
    /// (<see cref="NvmfRequest.Data"/> points at it, <see cref="NvmfRequest.DataBorrowed"/> is set); the transport then
    /// runs the command as usual.
    /// </summary>
    public static bool TryLendReadData(NvmfRequest req) => req.Qpair.Qid != 0 && IoCommands.TryZeroCopyRead(req);

    /// <summary>Runs a prepared command whose host data (if any) is in <see cref="NvmfRequest.Data"/>.</summary>
    public static void Execute(NvmfRequest req)
    {
        if (req.Sqe.Opcode == AdminOpcode.FabricsCommand) FabricsCommands.Execute(req);
        else if (req.Qpair.Qid == 0) AdminCommands.Execute(req, req.Qpair.Controller!);
        else IoCommands.Execute(req);
    }
}
