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
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        QueuePair qp = req.Qpair;
        req.Length = sglLength;
        NvmeStatus status;

        // Fabrics requires SGLs for data (PSDT = 01b); the only fused operation is Compare and Write on I/O queues.
        if (sqe.Psdt != 1)
        {
            status = NvmeStatus.Generic(GenericStatus.InvalidField);
        }
        else if (qp.Qid != 0 && sqe.Opcode != AdminOpcode.FabricsCommand && !(status = FusedCommands.OnCapsule(req)).IsSuccess)
        {
            req.Direction = Opcodes.Direction(sqe.Opcode);
        }
        else if (sqe.Fuse != 0 && qp.Qid == 0)
        {
            status = NvmeStatus.Generic(GenericStatus.InvalidField);
        }
        else if (sqe.Opcode == AdminOpcode.FabricsCommand)
        {
            req.Direction = Opcodes.Direction(sqe.FabricsType);
            status = FabricsCommands.Validate(req);
        }
        else if (qp.Controller is not { } ctrl)
        {
            // Only Connect may come first on a queue.
            status = NvmeStatus.Generic(GenericStatus.CommandSequenceError);
        }
        else if (qp.Qid == 0)
        {
            req.Direction = Opcodes.Direction(sqe.Opcode);
            status = AdminCommands.Validate(req, ctrl);
        }
        else
        {
            req.Direction = Opcodes.Direction(sqe.Opcode);
            status = IoCommands.Validate(req, ctrl);
        }

        if (status.IsSuccess)
        {
            if (req.Direction == DataDirection.None && sglLength != 0)
                status = NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);
            else if (sglLength > qp.Target.Options.MaxIoSize)
                status = NvmeStatus.Generic(GenericStatus.InvalidField);
        }
        if (status.IsSuccess) return true;
        if (req.Fused.Role != FusedRole.None) FusedCommands.Failed(req, status);
        req.Status = status;
        return false;
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
