using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// Reservation Register, Acquire, Release and Report on a namespace this node holds the data of (its owner, in a
/// pair): decoded here, decided by the namespace's <see cref="ReservationState"/>, and the notifications they owe
/// other hosts raised through the subsystem. Reactor thread.
/// </summary>
internal static class ReservationCommands
{
    /// <summary>The host a command is from: its association's, or for a command the partner relays, the host the relay names.</summary>
    public static Guid HostOf(NvmfRequest req)
    {
        Controller c = req.Qpair.Controller!;
        return c.IsInterconnect ? req.Qpair.Target.IoGate?.RelayedHostId(req) ?? Guid.Empty : c.HostId;
    }

    public static void Execute(NvmfRequest req, Namespace ns)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        ReservationState state = ns.Reservations;
        Guid host = HostOf(req);
        if (host == Guid.Empty)
        {
            // Over fabrics a host always has an identifier; a relayed command whose host is unknown is refused.
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
            return;
        }
        ReadOnlySpan<byte> data = req.DataSpan;
        ReservationOutcome outcome;
        switch (sqe.Opcode)
        {
            case IoOpcode.ReservationRegister:
                outcome = state.Register(host, sqe.ReservationAction(), sqe.IgnoreExistingKey(), sqe.ChangePtplField(),
                    ReservationFields.Key(data, 0), ReservationFields.Key(data, 1));
                break;
            case IoOpcode.ReservationAcquire:
                outcome = state.Acquire(host, sqe.ReservationAction(), sqe.IgnoreExistingKey(), sqe.ReservationTypeField(),
                    ReservationFields.Key(data, 0), ReservationFields.Key(data, 1));
                break;
            case IoOpcode.ReservationRelease:
                outcome = state.Release(host, sqe.ReservationAction(), sqe.IgnoreExistingKey(), sqe.ReservationTypeField(),
                    ReservationFields.Key(data, 0));
                break;
            default:
            {
                Span<byte> dest = req.DataSpan;
                if ((ulong)dest.Length > sqe.ReportBytes()) dest = dest[..(int)sqe.ReportBytes()];
                outcome = new ReservationOutcome(state.Report(dest, sqe.ExtendedDataStructure()), []);
                break;
            }
        }
        req.Qpair.Controller!.Subsystem.RaiseReservationNotices(outcome.Notices);
        if (outcome.Status.IsSuccess && sqe.Opcode == IoOpcode.ReservationAcquire && sqe.ReservationAction() == ReservationAction.PreemptAndAbort)
        {
            // Nothing of a preempted host starts from now on (every command is checked when it runs); what already
            // runs must end before the Acquire completes, as SPDK's target and nvmet wait for it: a lock of the whole
            // namespace is granted once every command that started before it has finished, on every reactor.
            req.PendingOps = 1;
            ns.Locks.Lock(0, ns.Bdev.BlockCount, () =>
            {
                ns.Locks.Unlock();
                req.Qpair.Reactor.Post(() =>
                {
                    req.PendingOps = 0;
                    req.Complete();
                });
            });
            return;
        }
        if (outcome.Status.IsSuccess) req.Complete();
        else req.Fail(outcome.Status);
    }
}
