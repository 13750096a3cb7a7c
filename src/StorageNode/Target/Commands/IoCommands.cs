using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>What an I/O command's blocks are to the range locks of a Compare and Write (<see cref="RangeLocks"/>).</summary>
internal enum BlockReach : byte
{
    /// <summary>No blocks (Flush, the reservation commands).</summary>
    None,
    /// <summary>SLBA and NLB of the command.</summary>
    Range,
    /// <summary>Ranges in its data (Dataset Management, Copy): taken as the whole namespace.</summary>
    Whole,
}

/// <summary>
/// One I/O command of the NVM command set: its entry in the Commands Supported and Effects log, the checks made before
/// data moves, what it does, what it does on a replica (the owner's mirrored copy) and how it counts in the bdev's
/// statistics. A new command is one entry of <see cref="IoCommands"/>' table.
/// </summary>
internal readonly unsafe struct IoCommand
{
    public string Name { get; init; }
    /// <summary>Its Commands Supported and Effects entry (<see cref="CommandEffects"/>).</summary>
    public uint Effects { get; init; }
    public BlockReach Reach { get; init; }
    /// <summary>A reservation command: not itself subject to the namespace's reservation, no range lock, not counted.</summary>
    public bool IsReservation { get; init; }
    /// <summary>Accepted only from the partner on the interconnect.</summary>
    public bool InterconnectOnly { get; init; }
    /// <summary>Checks of its fields and data length against the namespace, before data moves (null: none).</summary>
    public delegate*<NvmfRequest, Namespace, NvmeStatus> Check { get; init; }
    /// <summary>Runs it on the namespace's bdev channel (<see cref="NvmfRequest.PendingOps"/> is 1 on entry).</summary>
    public delegate*<NvmfRequest, Namespace, BdevChannel, void> Run { get; init; }
    /// <summary>Runs the owner's copy of it on this node's replica (null: never mirrored).</summary>
    public delegate*<NvmfRequest, Namespace, BdevChannel, void> RunOnReplica { get; init; }
    /// <summary>Counts it, completed successfully, in its bdev's statistics for this reactor (null: not counted).</summary>
    public delegate*<NvmfRequest, Bdev, long[], void> Count { get; init; }

    public bool Exists => Run != null;
}

/// <summary>The bits of a Commands Supported and Effects log entry that this target sets.</summary>
internal static class CommandEffects
{
    /// <summary>CSUPP: the command is supported.</summary>
    public const uint Supported = 1;
    /// <summary>LBCC: the command may change logical block content.</summary>
    public const uint ChangesBlocks = 1 << 1;
}

/// <summary>NVM command set I/O commands. The hot path: no allocation, no locks.</summary>
internal static unsafe class IoCommands
{
    /// <summary>The I/O commands by opcode; an entry that does not <see cref="IoCommand.Exists"/> is an invalid opcode.</summary>
    private static readonly IoCommand[] Table = BuildTable();

    private static IoCommand[] BuildTable()
    {
        const uint csupp = CommandEffects.Supported, lbcc = CommandEffects.ChangesBlocks;
        var t = new IoCommand[256];
        t[IoOpcode.Flush] = new() { Name = "Flush", Effects = csupp | lbcc, Run = &Flush, RunOnReplica = &Flush, Count = &CountFlush };
        t[IoOpcode.Write] = new()
        {
            Name = "Write", Effects = csupp | lbcc, Reach = BlockReach.Range, Check = &CheckBlocksAndData, Run = &Write, RunOnReplica = &Write,
            Count = &CountWrite,
        };
        t[IoOpcode.Read] = new() { Name = "Read", Effects = csupp, Reach = BlockReach.Range, Check = &CheckBlocksAndData, Run = &Read, Count = &CountRead };
        t[IoOpcode.Compare] = new()
        {
            Name = "Compare", Effects = csupp, Reach = BlockReach.Range, Check = &CheckBlocksAndData, Run = &Compare, Count = &CountCompare,
        };
        t[IoOpcode.WriteZeroes] = new()
        {
            Name = "Write Zeroes", Effects = csupp | lbcc, Reach = BlockReach.Range, Check = &CheckBlocks, Run = &WriteZeroes,
            RunOnReplica = &WriteZeroesOnReplica, Count = &CountWriteZeroes,
        };
        t[IoOpcode.DatasetManagement] = new()
        {
            Name = "Dataset Management", Effects = csupp | lbcc, Reach = BlockReach.Whole, Check = &CheckDatasetManagement,
            Run = &DatasetManagement, RunOnReplica = &DatasetManagement, Count = &CountDatasetManagement,
        };
        t[IoOpcode.Verify] = new()
        {
            Name = "Verify", Effects = csupp, Reach = BlockReach.Range, Check = &CheckBlocks, Run = &Verify, Count = &CountErrorsOnly,
        };
        t[IoOpcode.Copy] = new()
        {
            Name = "Copy", Effects = csupp | lbcc, Reach = BlockReach.Whole, Check = &CheckCopy, Run = &Copy, RunOnReplica = &Copy,
            Count = &CountCopy,
        };
        t[IoOpcode.ReservationRegister] = Reservation("Reservation Register", ReservationFields.TwoKeys);
        t[IoOpcode.ReservationReport] = Reservation("Reservation Report", 0);
        t[IoOpcode.ReservationAcquire] = Reservation("Reservation Acquire", ReservationFields.TwoKeys);
        t[IoOpcode.ReservationRelease] = Reservation("Reservation Release", ReservationFields.OneKey);
        // A fused Compare and Write relayed by the partner as one command (FusedCommands): never on a host's queue.
        t[FusedCommands.RelayedOpcode] = new()
        {
            Name = "Compare and Write (relayed)", Reach = BlockReach.Range, InterconnectOnly = true, Check = &CheckRelayedFused,
            Run = &RunRelayedFused, Count = &CountRelayedFused,
        };
        return t;
    }

    private static IoCommand Reservation(string name, int keyBytes) => new()
    {
        Name = name, Effects = CommandEffects.Supported, IsReservation = true, Run = &RunReservation,
        Check = keyBytes == ReservationFields.TwoKeys ? &CheckTwoKeys : keyBytes == ReservationFields.OneKey ? &CheckOneKey : null,
    };

    /// <summary>The I/O commands a host may send, by opcode, for the Commands Supported and Effects log.</summary>
    internal static IEnumerable<(byte Opcode, uint Effects)> Supported()
    {
        for (int op = 0; op < Table.Length; op++)
            if (Table[op].Exists && !Table[op].InterconnectOnly) yield return ((byte)op, Table[op].Effects);
    }

    /// <summary>Whether the owner mirrors the command to the replica (it has a replica form): the mirror opcodes' originals.</summary>
    internal static bool IsMirrored(byte op) => Table[op].RunOnReplica != null;

    public static NvmeStatus Validate(NvmfRequest req, Controller ctrl)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        ref readonly IoCommand cmd = ref Table[sqe.Opcode];
        if (!cmd.Exists || (cmd.InterconnectOnly && !ctrl.IsInterconnect)) return NvmeStatus.Generic(GenericStatus.InvalidOpcode);
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
        if (cmd.Check != null)
        {
            NvmeStatus checkedStatus = cmd.Check(req, ns);
            if (!checkedStatus.IsSuccess) return checkedStatus;
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

    // ---------------- checks before data moves ----------------

    /// <summary>SLBA and NLB within the namespace (Write Zeroes, Verify: no data).</summary>
    private static NvmeStatus CheckBlocks(NvmfRequest req, Namespace ns)
    {
        ulong slba = req.Sqe.Slba, nlb = req.Sqe.BlockCount, blocks = ns.Bdev.BlockCount;
        return slba > blocks || nlb > blocks - slba ? NvmeStatus.Generic(GenericStatus.LbaOutOfRange) : NvmeStatus.Success;
    }

    /// <summary>The blocks, and data of exactly their length within the largest transfer (Read, Write, Compare).</summary>
    private static NvmeStatus CheckBlocksAndData(NvmfRequest req, Namespace ns)
    {
        NvmeStatus st = CheckBlocks(req, ns);
        return st.IsSuccess ? CheckDataLength(req, (ulong)req.Sqe.BlockCount << ns.Bdev.BlockShift) : st;
    }

    private static NvmeStatus CheckDataLength(NvmfRequest req, ulong bytes)
    {
        if (bytes > req.Qpair.Target.Options.MaxIoSize) return NvmeStatus.Generic(GenericStatus.InvalidField);
        return bytes != req.Length ? NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid) : NvmeStatus.Success;
    }

    /// <summary>A relayed Compare and Write: its blocks, at most <see cref="FusedCommands.MaxBlocks"/>, and the Compare's data then the Write's.</summary>
    private static NvmeStatus CheckRelayedFused(NvmfRequest req, Namespace ns)
    {
        NvmeStatus st = CheckBlocks(req, ns);
        if (!st.IsSuccess) return st;
        if (req.Sqe.BlockCount > FusedCommands.MaxBlocks) return NvmeStatus.Generic(GenericStatus.InvalidField);
        req.Fused.Role = FusedRole.Relayed;
        return CheckDataLength(req, ((ulong)req.Sqe.BlockCount << ns.Bdev.BlockShift) * 2);
    }

    private static NvmeStatus CheckDatasetManagement(NvmfRequest req, Namespace ns)
        => req.Length < req.Sqe.DsmRangeCount() * CommandFields.DsmRangeSize ? NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid) : NvmeStatus.Success;

    private static NvmeStatus CheckCopy(NvmfRequest req, Namespace ns)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        if (sqe.DescriptorFormat() != 0) return NvmeStatus.Generic(GenericStatus.InvalidField);
        if (sqe.SourceRanges() > CopyCommand.MaxRanges) return NvmeStatus.CommandSpecific(CommandSpecificStatus.CommandSizeLimitExceeded);
        return req.Length < (uint)(sqe.SourceRanges() * CopyFields.EntrySize) ? NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid) : NvmeStatus.Success;
    }

    private static NvmeStatus CheckOneKey(NvmfRequest req, Namespace ns)
        => req.Length < (uint)ReservationFields.OneKey ? NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid) : NvmeStatus.Success;

    private static NvmeStatus CheckTwoKeys(NvmfRequest req, Namespace ns)
        => req.Length < (uint)ReservationFields.TwoKeys ? NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid) : NvmeStatus.Success;

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
            if (req.Fused.Role is FusedRole.First or FusedRole.Second) FusedCommands.Ready(req); // relayed as one, once both are here
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
        ref readonly IoCommand cmd = ref Table[sqe.Opcode];
        Namespace ns = req.Namespace!;
        if (req.Qpair.Controller!.Destroyed)
        {
            // Its association ended (keep-alive expired, fenced, closed, or not shown still in use after a switch back
            // from the relay) after the command arrived: nothing more of it runs. Read after the gate admitted it: the
            // gate lets an association go (HostGate's unproven count) only after it was destroyed.
            NvmeStatus st = NvmeStatus.Generic(GenericStatus.AbortedSqDeletion);
            if (req.Fused.Role != FusedRole.None) FusedCommands.Failed(req, st);
            req.Fail(st);
            return;
        }
        if (ns.Removed || ns.MovedAway || (ns.Quiesced && !req.ForReplica))
        {
            // Taken out of the subsystem after this command arrived, or its group moved (or is moving) to the partner: it
            // does not reach the bdev (a moved one is retried by the host on the group's owner).
            NvmeStatus st = ns.Removed ? NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat) : NvmeStatus.Path(PathStatus.AnaInaccessible);
            if (req.Fused.Role != FusedRole.None) FusedCommands.Failed(req, st);
            req.Fail(st);
            return;
        }
        // Checked when the command runs (not when it arrived): nothing of a host a reservation excludes starts after the
        // reservation command completed, however long it waited for a buffer or in the gate.
        if (ns.Reservations.Held && !cmd.IsReservation && !Allowed(req, ns))
        {
            if (req.Fused.Role != FusedRole.None) FusedCommands.Failed(req, NvmeStatus.Generic(GenericStatus.ReservationConflict));
            req.Fail(NvmeStatus.Generic(GenericStatus.ReservationConflict));
            return;
        }
        // A write to a mirrored namespace in a file starts only once its regions are marked in the dirty-region record
        // (docs/ha.md, "The dirty-region record"); it counts inside them until it completes.
        if (ns.DirtyLog is { } log && !req.Dirty.Logged && log.RegionsOf(req, ns.Bdev.BlockShift) is (int first, int last) && !log.Enter(req, first, last)) return;
        if (req.Fused.Role is FusedRole.First or FusedRole.Second)
        {
            FusedCommands.Ready(req); // runs once both are here, under a range lock
            return;
        }
        // Whether the replica misses this write if it runs now (out of sync): decided once, so that a write is either
        // ordered and mirrored, or marked missed, whatever the mirror's state when it completes (docs/ha.md).
        bool unmirrored = ns.Mirror is { Active: false };
        if (req.Fused.Role != FusedRole.Relayed && !cmd.IsReservation)
        {
            // Nothing runs on blocks a Compare and Write has locked; what runs counts, so that a lock (and a namespace's
            // removal) waits for it. The relayed fused pair takes a lock of its own; reservation commands touch no
            // blocks (and preempt and abort waits on a lock itself).
            RangeLocks.Channel locks = ns.Locks.For(req.Qpair.Reactor.Id);
            if (cmd.Reach != BlockReach.None)
            {
                bool ranged = cmd.Reach == BlockReach.Range;
                if (locks.MustWait(req, ranged ? sqe.Slba : 0, ranged ? sqe.BlockCount : ns.Bdev.BlockCount)) return;
            }
            // Mirrored: a write waits for the overlapping ones still on their way to the replica (docs/ha.md, "Mirroring").
            if (ns.Mirror != null && !unmirrored && !req.Mirror.Ordered && WriteOrder.Orders(sqe.Opcode))
            {
                (ulong start, ulong end) = WriteOrder.RangeOf(sqe);
                if (ns.WriteOrder.MustWait(req, start, end)) return;
            }
            locks.Started(req);
        }
        req.Mirror.Ran = true; // from here it reaches the bdev: only such a write is mirrored (or marked missed)
        req.Mirror.RanUnmirrored = unmirrored && !req.Mirror.Ordered;
        req.PendingOps = 1;
        // Its copy goes to the replica now, beside the local write (docs/ha.md, "Mirroring").
        if (!unmirrored && ns.Mirror is { } mirror) MirrorCommands.SendEarly(req, mirror);
        cmd.Run(req, ns, req.Channel!);
    }

    // ---------------- what each command does ----------------

    private static void Read(NvmfRequest req, Namespace ns, BdevChannel ch)
    {
        if (req.DataBorrowed) req.OnBdevComplete(0); // zero-copy: the data is already where it is sent from
        else ch.Read(req.Sqe.Slba << ns.Bdev.BlockShift, req.Data, req.Length, req);
    }

    private static void Write(NvmfRequest req, Namespace ns, BdevChannel ch)
        => ch.Write(req.Sqe.Slba << ns.Bdev.BlockShift, req.Data, req.Length, fua: req.Sqe.ForceUnitAccess, req);

    private static void Flush(NvmfRequest req, Namespace ns, BdevChannel ch) => ch.Flush(req);

    private static void WriteZeroes(NvmfRequest req, Namespace ns, BdevChannel ch)
    {
        int shift = ns.Bdev.BlockShift;
        ulong bytes = (ulong)req.Sqe.BlockCount << shift;
        bool deallocate = req.Sqe.DeallocateZeroes && ns.Bdev.DeallocateReadsZeroes;
        if (deallocate) ch.Deallocate(req.Sqe.Slba << shift, bytes, req);
        else ch.WriteZeroes(req.Sqe.Slba << shift, bytes, req);
    }

    /// <summary>On the replica the blocks are zeroed whatever the owner's bdev did (its reads return zeroes either way).</summary>
    private static void WriteZeroesOnReplica(NvmfRequest req, Namespace ns, BdevChannel ch)
    {
        int shift = ns.Bdev.BlockShift;
        ch.WriteZeroes(req.Sqe.Slba << shift, (ulong)req.Sqe.BlockCount << shift, req);
    }

    private static void Compare(NvmfRequest req, Namespace ns, BdevChannel ch) => FusedCommands.Compare(req);

    /// <summary>RAM and file namespaces keep no protection information: the blocks are there to read.</summary>
    private static void Verify(NvmfRequest req, Namespace ns, BdevChannel ch)
    {
        req.PendingOps = 0;
        req.Complete();
    }

    private static void RunRelayedFused(NvmfRequest req, Namespace ns, BdevChannel ch) => FusedCommands.RunRelayed(req);

    private static void Copy(NvmfRequest req, Namespace ns, BdevChannel ch) => CopyCommand.Run(req);

    private static void RunReservation(NvmfRequest req, Namespace ns, BdevChannel ch)
    {
        req.PendingOps = 0;
        ReservationCommands.Execute(req, ns);
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
        req.PendingOps = 1;
        Table[sqe.Opcode].RunOnReplica(req, req.Namespace, req.Channel!);
    }

    /// <summary>Whether the reservation lets the command's host run it (a Compare is of the read group, a relayed Compare and Write of both).</summary>
    private static bool Allowed(NvmfRequest req, Namespace ns)
    {
        Guid host = ReservationCommands.HostOf(req);
        byte op = req.Sqe.Opcode;
        if (op == FusedCommands.RelayedOpcode) return ns.Reservations.Allows(host, writeGroup: true) && ns.Reservations.Allows(host, writeGroup: false);
        return ns.Reservations.Allows(host, ReservationState.IsWriteGroup(op));
    }

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
        ref readonly IoCommand cmd = ref Table[req.Sqe.Opcode];
        if (cmd.Count == null || req.Qpair.Qid == 0) return;
        Bdev bdev = req.ForReplica ? req.Namespace!.Replica! : req.Namespace!.Bdev;
        long[] st = bdev.Stats.For(req.Qpair.Reactor.Id);
        if (req.Status.IsSuccess) cmd.Count(req, bdev, st);
        else st[(int)IoStat.Errors]++;
    }

    private static void CountRead(NvmfRequest req, Bdev bdev, long[] st)
    {
        st[(int)IoStat.ReadOps]++;
        st[(int)IoStat.BytesRead] += req.Length;
    }

    private static void CountWrite(NvmfRequest req, Bdev bdev, long[] st)
    {
        st[(int)IoStat.WriteOps]++;
        st[(int)IoStat.BytesWritten] += req.Length;
    }

    private static void CountWriteZeroes(NvmfRequest req, Bdev bdev, long[] st)
    {
        st[(int)IoStat.WriteZeroesOps]++;
        st[(int)IoStat.BytesZeroed] += (long)req.Sqe.BlockCount << bdev.BlockShift;
    }

    /// <summary>Counted when it deallocates (an unmap); its other attributes are hints that do nothing.</summary>
    private static void CountDatasetManagement(NvmfRequest req, Bdev bdev, long[] st)
    {
        if ((req.Sqe.Cdw11 & DsmAttribute.Deallocate) == 0) return;
        st[(int)IoStat.UnmapOps]++;
        int ranges = (int)Math.Min(req.Sqe.DsmRangeCount(), req.Length / CommandFields.DsmRangeSize);
        ReadOnlySpan<byte> data = req.DataSpan;
        for (int i = 0; i < ranges; i++)
            st[(int)IoStat.BytesUnmapped] += (long)CommandFields.DsmRange(data, i).Blocks << bdev.BlockShift;
    }

    private static void CountCopy(NvmfRequest req, Bdev bdev, long[] st)
    {
        st[(int)IoStat.CopyOps]++;
        int n = Math.Min(req.Sqe.SourceRanges(), (int)(req.Length / CopyFields.EntrySize));
        for (int i = 0; i < n; i++) st[(int)IoStat.BytesCopied] += (long)CopyFields.Entry(req.DataSpan, i).Blocks << bdev.BlockShift;
    }

    /// <summary>Moves no data: counted only as an error when it fails.</summary>
    private static void CountErrorsOnly(NvmfRequest req, Bdev bdev, long[] st)
    {
    }

    private static void CountFlush(NvmfRequest req, Bdev bdev, long[] st) => st[(int)IoStat.FlushOps]++;

    private static void CountCompare(NvmfRequest req, Bdev bdev, long[] st) => st[(int)IoStat.CompareOps]++;

    /// <summary>A fused Compare and Write relayed whole: its data is the Compare's, then the Write's.</summary>
    private static void CountRelayedFused(NvmfRequest req, Bdev bdev, long[] st)
    {
        st[(int)IoStat.CompareOps]++;
        st[(int)IoStat.WriteOps]++;
        st[(int)IoStat.BytesWritten] += req.Length / 2;
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
