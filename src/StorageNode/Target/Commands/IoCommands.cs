using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>NVM command set I/O commands. The hot path: no allocation, no locks.</summary>
internal static unsafe class IoCommands
{
    public static NvmeStatus Validate(NvmfRequest req, Controller ctrl)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        byte op = sqe.Opcode;
        if (ctrl.IsInterconnect && MirrorCommands.IsMirrorOpcode(op))
        {
            // The owner's copy of a write, for this node's replica: validated as the write it is, run on the replica.
            op = sqe.Opcode = MirrorCommands.Original(op);
            req.ForReplica = true;
        }
        bool relayedFused = op == FusedCommands.RelayedOpcode && ctrl.IsInterconnect;
        if (op is not (IoOpcode.Read or IoOpcode.Write or IoOpcode.Flush or IoOpcode.WriteZeroes or IoOpcode.DatasetManagement
                or IoOpcode.Compare or IoOpcode.Verify or IoOpcode.Copy)
            && !IoOpcode.IsReservation(op) && !relayedFused)
            return NvmeStatus.Generic(GenericStatus.InvalidOpcode);
        if (!ctrl.Enabled) return NvmeStatus.Generic(GenericStatus.CommandSequenceError);

        Namespace? ns = ctrl.Subsystem.GetNamespace(sqe.Nsid);
        if (ns == null) return NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat);

        if (req.ForReplica && (!ns.IsRemote || ns.ReplicaChannels.Length == 0)) return NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat);
        // A copy from an epoch that is over (an older association's, or from before the last resync began) would undo
        // what came after it: refused (the owner takes its replica for out of sync).
        if (req.ForReplica && !ns.ReplicaKnowledge.AcceptsCopy(ctrl, MirrorCommands.Epoch(sqe))) return NvmeStatus.Generic(GenericStatus.CommandSequenceError);
        AnaState ana = req.ForReplica ? AnaState.Optimized : ctrl.AnaState(ns.AnaGroupId);
        if (ana != AnaState.Optimized && ana != AnaState.NonOptimized)
        {
            return ana switch
            {
                AnaState.Inaccessible => NvmeStatus.Path(PathStatus.AnaInaccessible),
                AnaState.PersistentLoss => NvmeStatus.Path(PathStatus.AnaPersistentLoss),
                _ => NvmeStatus.Path(PathStatus.AnaTransition),
            };
        }

        Bdev bdev = ns.Bdev;
        switch (op)
        {
            case IoOpcode.Read:
            case IoOpcode.Write:
            case IoOpcode.WriteZeroes:
            case IoOpcode.Compare:
            case IoOpcode.Verify:
            case FusedCommands.RelayedOpcode:
            {
                ulong slba = sqe.Slba;
                ulong nlb = sqe.BlockCount;
                if (slba > bdev.BlockCount || nlb > bdev.BlockCount - slba)
                    return NvmeStatus.Generic(GenericStatus.LbaOutOfRange);
                if (op is not (IoOpcode.WriteZeroes or IoOpcode.Verify))
                {
                    ulong bytes = nlb << bdev.BlockShift;
                    if (op == FusedCommands.RelayedOpcode)
                    {
                        // The Compare's data, then the Write's.
                        if (nlb > FusedCommands.MaxBlocks) return NvmeStatus.Generic(GenericStatus.InvalidField);
                        bytes *= 2;
                        req.Fused = FusedRole.Relayed;
                    }
                    if (bytes > req.Qpair.Target.Options.MaxIoSize) return NvmeStatus.Generic(GenericStatus.InvalidField);
                    if (bytes != req.Length) return NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);
                }
                break;
            }
            case IoOpcode.DatasetManagement:
            {
                uint ranges = sqe.DsmRangeCount();
                if (req.Length < ranges * CommandFields.DsmRangeSize) return NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);
                break;
            }
            case IoOpcode.Copy:
            {
                if (sqe.DescriptorFormat() != 0) return NvmeStatus.Generic(GenericStatus.InvalidField);
                if (sqe.SourceRanges() > CopyCommand.MaxRanges) return NvmeStatus.CommandSpecific(CommandSpecificStatus.CommandSizeLimitExceeded);
                if (req.Length < (uint)(sqe.SourceRanges() * CopyFields.EntrySize)) return NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);
                break;
            }
            case IoOpcode.ReservationRegister or IoOpcode.ReservationAcquire or IoOpcode.ReservationRelease:
            {
                int keys = op == IoOpcode.ReservationRelease ? ReservationFields.OneKey : ReservationFields.TwoKeys;
                if (req.Length < (uint)keys) return NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);
                break;
            }
        }
        req.Namespace = ns;
        if (req.ForReplica)
        {
            req.Channel = ns.ReplicaChannels[req.Qpair.Reactor.Id];
            return NvmeStatus.Success;
        }
        req.Channel = ns.Channels[req.Qpair.Reactor.Id];
        if (ns.IsRemote) return NvmeStatus.Success;

        // In a pair the owner fences stale writes on its namespaces (docs/ha.md): the command counts from now on.
        IIoGate? gate = ctrl.Target.IoGate;
        return gate == null ? NvmeStatus.Success : gate.Count(req, ctrl);
    }

    /// <summary>
    /// For a validated Read on an I/O queue whose bdev holds the data in memory: points the command's data at
    /// it (no buffer, no copy; the transport sends from there). False when the transport must get a buffer.
    /// </summary>
    internal static bool TryZeroCopyRead(NvmfRequest req)
    {
        if (req.Qpair.Qid == 0 || req.Sqe.Opcode != IoOpcode.Read || req.Channel == null || req.Namespace!.IsRemote) return false;
        byte* p = req.Channel.ZeroCopyRead(req.Sqe.Slba << req.Namespace.Bdev.BlockShift, req.Length);
        if (p == null) return false;
        req.Data = p;
        req.DataBorrowed = true;
        return true;
    }

    public static void Execute(NvmfRequest req)
    {
        if (req.ForReplica)
        {
            RunOnReplica(req);
            return;
        }
        if (req.Namespace!.IsRemote)
        {
            if (req.Fused is FusedRole.First or FusedRole.Second) FusedCommands.Ready(req); // relayed as one, once both are here
            else ((ICommandChannel)req.Channel!).Submit(req);
            return;
        }
        IIoGate? gate = req.Qpair.Target.IoGate;
        if (gate != null && !gate.Admit(req)) return; // held until the host's previous path drained, or failed
        Run(req);
    }

    /// <summary>A command the gate held is released (on its reactor): it runs if the gate now admits it.</summary>
    internal static void Resume(NvmfRequest req)
    {
        req.PendingOps = 0;
        if (req.Qpair.IsClosed)
        {
            req.Complete(); // releases the slot; nothing executes
            return;
        }
        if (req.Qpair.Target.IoGate!.Admit(req)) Run(req);
    }

    private static void Run(NvmfRequest req)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        Namespace ns = req.Namespace!;
        BdevChannel ch = req.Channel!;
        int shift = ns.Bdev.BlockShift;
        if (req.Qpair.Controller!.Destroyed)
        {
            // Its association ended (keep-alive expired, fenced, closed, or not shown still in use after a switch back
            // from the relay) after the command arrived: nothing more of it runs. Read after the gate admitted it: the
            // gate lets an association go (HostGate's unproven count) only after it was destroyed.
            NvmeStatus st = NvmeStatus.Generic(GenericStatus.AbortedSqDeletion);
            if (req.Fused != FusedRole.None) FusedCommands.Failed(req, st);
            req.Fail(st);
            return;
        }
        if (ns.Removed || ns.MovedAway || (ns.Quiesced && !req.ForReplica))
        {
            // Taken out of the subsystem after this command arrived, or its group moved (or is moving) to the partner: it
            // does not reach the bdev (a moved one is retried by the host on the group's owner).
            NvmeStatus st = ns.Removed ? NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat) : NvmeStatus.Path(PathStatus.AnaInaccessible);
            if (req.Fused != FusedRole.None) FusedCommands.Failed(req, st);
            req.Fail(st);
            return;
        }
        // Checked when the command runs (not when it arrived): nothing of a host a reservation excludes starts after the
        // reservation command completed, however long it waited for a buffer or in the gate.
        if (ns.Reservations.Held && !IoOpcode.IsReservation(sqe.Opcode) && !Allowed(req, ns))
        {
            if (req.Fused != FusedRole.None) FusedCommands.Failed(req, NvmeStatus.Generic(GenericStatus.ReservationConflict));
            req.Fail(NvmeStatus.Generic(GenericStatus.ReservationConflict));
            return;
        }
        // A write to a mirrored namespace in a file starts only once its regions are marked in the dirty-region record
        // (docs/ha.md, "The dirty-region record"); it counts inside them until it completes.
        if (ns.DirtyLog is { } log && !req.DirtyLogged && log.RegionsOf(req, shift) is (int first, int last) && !log.Enter(req, first, last)) return;
        if (req.Fused is FusedRole.First or FusedRole.Second)
        {
            FusedCommands.Ready(req); // runs once both are here, under a range lock
            return;
        }
        // Whether the replica misses this write if it runs now (out of sync): decided once, so that a write is either
        // ordered and mirrored, or marked missed, whatever the mirror's state when it completes (docs/ha.md).
        bool unmirrored = ns.Mirror is { Active: false };
        if (req.Fused != FusedRole.Relayed && !IoOpcode.IsReservation(sqe.Opcode))
        {
            // Nothing runs on blocks a Compare and Write has locked; what runs counts, so that a lock (and a namespace's
            // removal) waits for it. The relayed fused pair takes a lock of its own; reservation commands touch no
            // blocks (and preempt and abort waits on a lock itself).
            RangeLocks.Channel locks = ns.Locks.For(req.Qpair.Reactor.Id);
            if (TouchesBlocks(sqe.Opcode))
            {
                bool ranged = sqe.Opcode is not (IoOpcode.DatasetManagement or IoOpcode.Copy);
                if (locks.MustWait(req, ranged ? sqe.Slba : 0, ranged ? sqe.BlockCount : ns.Bdev.BlockCount)) return;
            }
            // Mirrored: a write waits for the overlapping ones still on their way to the replica (docs/ha.md, "Mirroring").
            if (ns.Mirror != null && !unmirrored && !req.MirrorOrdered && WriteOrder.Orders(sqe.Opcode))
            {
                (ulong start, ulong end) = WriteOrder.RangeOf(sqe);
                if (ns.WriteOrder.MustWait(req, start, end)) return;
            }
            locks.Started(req);
        }
        req.Ran = true; // from here it reaches the bdev: only such a write is mirrored (or marked missed)
        req.RanUnmirrored = unmirrored && !req.MirrorOrdered;
        req.PendingOps = 1;
        // Its copy goes to the replica now, beside the local write (docs/ha.md, "Mirroring").
        if (!unmirrored && ns.Mirror is { } mirror) MirrorCommands.SendEarly(req, mirror);
        switch (sqe.Opcode)
        {
            case IoOpcode.Read:
                if (req.DataBorrowed) req.OnBdevComplete(0); // zero-copy: the data is already where it is sent from
                else ch.Read(sqe.Slba << shift, req.Data, req.Length, req);
                break;
            case IoOpcode.Write:
                ch.Write(sqe.Slba << shift, req.Data, req.Length, fua: sqe.ForceUnitAccess, req);
                break;
            case IoOpcode.Flush:
                ch.Flush(req);
                break;
            case IoOpcode.WriteZeroes:
            {
                ulong bytes = (ulong)sqe.BlockCount << shift;
                bool deallocate = sqe.DeallocateZeroes && ns.Bdev.DeallocateReadsZeroes;
                if (deallocate) ch.Deallocate(sqe.Slba << shift, bytes, req);
                else ch.WriteZeroes(sqe.Slba << shift, bytes, req);
                break;
            }
            case IoOpcode.DatasetManagement:
                DatasetManagement(req, ns, ch);
                break;
            case IoOpcode.Compare:
                FusedCommands.Compare(req);
                break;
            case IoOpcode.Verify:
                // RAM and file namespaces keep no protection information: the blocks are there to read.
                req.PendingOps = 0;
                req.Complete();
                break;
            case FusedCommands.RelayedOpcode:
                FusedCommands.RunRelayed(req);
                break;
            case IoOpcode.Copy:
                CopyCommand.Run(req);
                break;
            default:
                req.PendingOps = 0;
                ReservationCommands.Execute(req, ns);
                break;
        }
    }

    /// <summary>
    /// The owner's copy of a write, on this node's replica (the channel <see cref="Validate"/> chose): no reservation, range
    /// lock or gate here, the owner applied them; commands of one interconnect queue run in the order they arrive.
    /// </summary>
    private static void RunOnReplica(NvmfRequest req)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        // Checked again as it runs: its data may have waited (an R2T, a stalled reactor) while the owner's word changed,
        // or this node took the namespace over meanwhile (it serves the replica now: a late copy would undo host writes).
        if (req.Namespace!.Removed || !req.Namespace.ReplicaKnowledge.AcceptsCopy(req.Qpair.Controller, MirrorCommands.Epoch(sqe)))
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.CommandSequenceError));
            return;
        }
        BdevChannel ch = req.Channel!;
        int shift = req.Namespace!.Bdev.BlockShift;
        req.PendingOps = 1;
        switch (sqe.Opcode)
        {
            case IoOpcode.Write:
                ch.Write(sqe.Slba << shift, req.Data, req.Length, fua: sqe.ForceUnitAccess, req);
                break;
            case IoOpcode.WriteZeroes:
                ch.WriteZeroes(sqe.Slba << shift, (ulong)sqe.BlockCount << shift, req);
                break;
            case IoOpcode.DatasetManagement:
                DatasetManagement(req, req.Namespace, ch);
                break;
            case IoOpcode.Flush:
                ch.Flush(req);
                break;
            default: // Copy
                CopyCommand.Run(req);
                break;
        }
    }

    /// <summary>Whether the reservation lets the command's host run it (a Compare is of the read group, a relayed Compare and Write of both).</summary>
    private static bool Allowed(NvmfRequest req, Namespace ns)
    {
        Guid host = ReservationCommands.HostOf(req);
        byte op = req.Sqe.Opcode;
        if (op == FusedCommands.RelayedOpcode) return ns.Reservations.Allows(host, writeGroup: true) && ns.Reservations.Allows(host, writeGroup: false);
        return ns.Reservations.Allows(host, ReservationState.IsWriteGroup(op));
    }

    private static bool TouchesBlocks(byte op) => op is IoOpcode.Read or IoOpcode.Write or IoOpcode.WriteZeroes or IoOpcode.DatasetManagement
        or IoOpcode.Compare or IoOpcode.Verify or IoOpcode.Copy;

    /// <summary>A command parked behind a range lock runs (on its reactor) once the lock is gone.</summary>
    internal static void RunParked(NvmfRequest req)
    {
        req.PendingOps = 0;
        if (req.Qpair.IsClosed)
        {
            req.Complete(); // releases the slot; nothing executes
            return;
        }
        Run(req);
    }

    private static void DatasetManagement(NvmfRequest req, Namespace ns, BdevChannel ch)
    {
        int ranges = (int)req.Sqe.DsmRangeCount();
        bool deallocate = (req.Sqe.Cdw11 & DsmAttribute.Deallocate) != 0;
        Bdev bdev = ns.Bdev;
        ReadOnlySpan<byte> data = req.DataSpan;
        // Validate every range before touching any (all or nothing).
        for (int i = 0; i < ranges; i++)
        {
            (ulong slba, uint nlb) = CommandFields.DsmRange(data, i);
            if (slba > bdev.BlockCount || nlb > bdev.BlockCount - slba)
            {
                req.PendingOps = 0;
                req.Fail(NvmeStatus.Generic(GenericStatus.LbaOutOfRange));
                return;
            }
        }
        if (!deallocate)
        {
            // Attributes other than deallocate are hints; nothing to do.
            req.PendingOps = 0;
            req.Complete();
            return;
        }
        // One extra reference so completions that arrive inline cannot finish the command early.
        req.PendingOps = 1;
        for (int i = 0; i < ranges; i++)
        {
            (ulong slba, uint nlb) = CommandFields.DsmRange(data, i);
            if (nlb == 0) continue;
            req.PendingOps++;
            ch.Deallocate(slba << bdev.BlockShift, (ulong)nlb << bdev.BlockShift, req);
        }
        req.OnBdevComplete(0);
    }

    /// <summary>
    /// Counts a command of a namespace as it completes, in its bdev's <see cref="IoStats"/> (on this reactor's slot):
    /// by kind and bytes when it succeeded, as an error when it did not. Reservation commands touch no blocks and are
    /// not counted.
    /// </summary>
    internal static void Count(NvmfRequest req)
    {
        byte op = req.Sqe.Opcode;
        if (IoOpcode.IsReservation(op) || req.Qpair.Qid == 0) return;
        Bdev bdev = req.ForReplica ? req.Namespace!.Replica! : req.Namespace!.Bdev;
        long[] st = bdev.Stats.For(req.Qpair.Reactor.Id);
        if (!req.Status.IsSuccess)
        {
            st[(int)IoStat.Errors]++;
            return;
        }
        switch (op)
        {
            case IoOpcode.Read:
                st[(int)IoStat.ReadOps]++;
                st[(int)IoStat.BytesRead] += req.Length;
                break;
            case IoOpcode.Write:
                st[(int)IoStat.WriteOps]++;
                st[(int)IoStat.BytesWritten] += req.Length;
                break;
            case IoOpcode.WriteZeroes:
                st[(int)IoStat.WriteZeroesOps]++;
                st[(int)IoStat.BytesZeroed] += (long)req.Sqe.BlockCount << bdev.BlockShift;
                break;
            case IoOpcode.DatasetManagement when (req.Sqe.Cdw11 & DsmAttribute.Deallocate) != 0:
            {
                st[(int)IoStat.UnmapOps]++;
                int ranges = (int)Math.Min(req.Sqe.DsmRangeCount(), req.Length / CommandFields.DsmRangeSize);
                ReadOnlySpan<byte> data = req.DataSpan;
                for (int i = 0; i < ranges; i++)
                    st[(int)IoStat.BytesUnmapped] += (long)CommandFields.DsmRange(data, i).Blocks << bdev.BlockShift;
                break;
            }
            case IoOpcode.Copy:
            {
                st[(int)IoStat.CopyOps]++;
                int n = Math.Min(req.Sqe.SourceRanges(), (int)(req.Length / CopyFields.EntrySize));
                for (int i = 0; i < n; i++) st[(int)IoStat.BytesCopied] += (long)CopyFields.Entry(req.DataSpan, i).Blocks << bdev.BlockShift;
                break;
            }
            case IoOpcode.Flush:
                st[(int)IoStat.FlushOps]++;
                break;
            case IoOpcode.Compare:
                st[(int)IoStat.CompareOps]++;
                break;
            case FusedCommands.RelayedOpcode:
                // A fused Compare and Write relayed whole: its data is the Compare's, then the Write's.
                st[(int)IoStat.CompareOps]++;
                st[(int)IoStat.WriteOps]++;
                st[(int)IoStat.BytesWritten] += req.Length / 2;
                break;
        }
    }

    /// <summary>Accounting after the bdev finished (SMART counters).</summary>
    public static void Completed(NvmfRequest req)
    {
        QueuePair qp = req.Qpair;
        // A copy the replica's device failed (a failed fsync may have dropped any dirty page): the replica is no base for
        // an incremental resync any more (docs/ha.md, "The dirty-region record").
        if (req.ForReplica && req.FirstError != 0) req.Namespace!.ReplicaKnowledge.DeviceFailed();
        switch (req.Sqe.Opcode)
        {
            case IoOpcode.Read:
                qp.ReadCommands++;
                qp.BytesRead += req.Length;
                break;
            case IoOpcode.Write:
                qp.WriteCommands++;
                qp.BytesWritten += req.Length;
                break;
        }
    }
}
