using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>A command's part in a fused operation (FUSE).</summary>
internal enum FusedRole : byte { None, First, Second, Relayed }

/// <summary>What a fused pair relayed to the owner as one command keeps on the proxy (the host's own buffers and SQE).</summary>
internal sealed unsafe class FusedRelay(NvmfRequest second, byte* data, uint length, SubmissionQueueEntry sqe)
{
    public readonly NvmfRequest Second = second;
    public readonly byte* Data = data;
    public readonly uint Length = length;
    public readonly SubmissionQueueEntry Sqe = sqe;
}

/// <summary>
/// Compare, and the fused Compare and Write (FUSE 01b Compare, then FUSE 10b Write, adjacent on one submission queue):
/// the pair is matched as the capsules arrive, runs when both have their data, and is atomic against every other
/// command to those blocks on every reactor (<see cref="RangeLocks"/>) and, in a pair, through either node: the partner
/// relays the pair to the owner as one command (<see cref="RelayedOpcode"/>), and all I/O to the namespace runs on the
/// owner.
/// </summary>
internal static unsafe class FusedCommands
{
    /// <summary>
    /// Vendor-specific NVM opcode of the interconnect (host to controller): a fused Compare and Write relayed whole. The
    /// SQE is the Compare's; the data is the Compare's data followed by the Write's; CDW13 bit 0 the Write's FUA. The
    /// completion's DW0 bit 0 says the compare matched (a failure is then the Write's).
    /// </summary>
    public const byte RelayedOpcode = 0x81;
    private const uint RelayedFua = 1;
    public const uint CompareMatched = 1;

    /// <summary>
    /// The largest fused Compare and Write (blocks): what ACWU advertises (0-based), and a bound on the buffers a relayed
    /// pair needs. Larger ones fail with Invalid Field.
    /// </summary>
    public const uint MaxBlocks = 32;

    /// <summary>
    /// A capsule arrived on an I/O queue (before validation): pairs fused commands, and abandons a first command whose
    /// second did not follow. Returns the status to fail the command with, or success.
    /// </summary>
    public static NvmeStatus OnCapsule(NvmfRequest req)
    {
        QueuePair qp = req.Qpair;
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        int fuse = sqe.Fuse;
        NvmfRequest? pending = qp.FusedFirst;
        NvmeStatus firstFailed = qp.FusedFirstFailed;
        if (!firstFailed.IsSuccess) qp.FusedFirstFailed = default; // (no store on the common path)
        if (pending != null && fuse != CommandFlags.FuseSecond)
        {
            qp.FusedFirst = null;
            Abort(pending, NvmeStatus.Generic(GenericStatus.AbortedMissingFused));
        }
        if (fuse == 0) return NvmeStatus.Success;
        if (qp.Qid == 0 || fuse > CommandFlags.FuseSecond) return NvmeStatus.Generic(GenericStatus.InvalidField);
        if (fuse == CommandFlags.FuseFirst)
        {
            if (sqe.Opcode != IoOpcode.Compare || sqe.BlockCount > MaxBlocks) return NvmeStatus.Generic(GenericStatus.InvalidField);
            req.Fused.Role = FusedRole.First;
            qp.FusedFirst = req;
            return NvmeStatus.Success;
        }
        qp.FusedFirst = null;
        if (pending == null)
        {
            // The first failed as it arrived: the second is aborted too (with the same path status, so that a multipath
            // host retries the whole operation elsewhere), or it never came.
            if (firstFailed.IsSuccess) return NvmeStatus.Generic(GenericStatus.AbortedMissingFused);
            return PartnerOfFailed(firstFailed);
        }
        if (sqe.Opcode != IoOpcode.Write || sqe.Nsid != pending.Sqe.Nsid || sqe.Slba != pending.Sqe.Slba || sqe.BlockCount != pending.Sqe.BlockCount)
        {
            Abort(pending, NvmeStatus.Generic(GenericStatus.AbortedFailedFused));
            return NvmeStatus.Generic(GenericStatus.InvalidField);
        }
        req.Fused.Role = FusedRole.Second;
        req.Fused.Partner = pending;
        pending.Fused.Partner = req;
        return NvmeStatus.Success;
    }

    /// <summary>Abort of a first command ready and waiting for its second: it completes with <paramref name="status"/>.</summary>
    public static bool TryAbortWaitingFirst(NvmfRequest req, NvmeStatus status)
    {
        if (req.Fused.Role != FusedRole.First || !req.Fused.Ready || req.Fused.Partner != null || req.Qpair.FusedFirst != req) return false;
        req.Qpair.FusedFirst = null;
        Finish(req, status);
        return true;
    }

    /// <summary>
    /// A fused command failed before it ran (validation, reservation, a path): its partner is aborted — with the same path
    /// status when it is one, whichever of the two failed first (the Write's path can fail while the Compare still waits
    /// for the gate), so that a multipath host retries the whole operation elsewhere rather than failing it.
    /// </summary>
    public static void Failed(NvmfRequest req, NvmeStatus status)
    {
        if (req.Qpair.FusedFirst == req)
        {
            req.Qpair.FusedFirst = null;
            req.Qpair.FusedFirstFailed = status;
        }
        if (req.Fused.Partner is { } p)
        {
            req.Fused.Partner = null;
            p.Fused.Partner = null;
            Abort(p, PartnerOfFailed(status));
        }
    }

    /// <summary>
    /// The status of a fused command whose partner failed with <paramref name="failed"/>: the same path status when it is
    /// one (a multipath host then retries the whole operation elsewhere), else Aborted Failed Fused.
    /// </summary>
    private static NvmeStatus PartnerOfFailed(NvmeStatus failed)
        => failed.Type == StatusCodeType.PathRelated ? failed : NvmeStatus.Generic(GenericStatus.AbortedFailedFused);

    /// <summary>Fails a fused command now if it is waiting, or when it becomes ready.</summary>
    private static void Abort(NvmfRequest req, NvmeStatus status)
    {
        req.Fused.Abort = status;
        req.Fused.Partner = null;
        if (req.Fused.Ready) Finish(req, status);
    }

    private static void Finish(NvmfRequest req, NvmeStatus status)
    {
        req.Fused.Role = FusedRole.None;
        req.Fused.Ready = false;
        req.PendingOps = 0;
        if (status.IsSuccess) req.Complete();
        else req.Fail(status);
    }

    /// <summary>
    /// A fused command is ready to run (its data is here, the gate admitted it): the operation starts once both are.
    /// Reactor thread.
    /// </summary>
    public static void Ready(NvmfRequest req)
    {
        if (!req.Fused.Abort.IsSuccess)
        {
            Finish(req, req.Fused.Abort);
            return;
        }
        req.Fused.Ready = true;
        NvmfRequest? partner = req.Fused.Partner;
        if (partner == null || !partner.Fused.Ready) return;
        NvmfRequest first = req.Fused.Role == FusedRole.First ? req : partner, second = req.Fused.Role == FusedRole.First ? partner : req;
        Namespace ns = first.Namespace!;
        if (ns.IsRemote)
        {
            // Relayed to the owner as one command (the owner runs it under its range lock).
            PrepareRelay(first, second);
            first.Fused.Role = FusedRole.None;
            second.PendingOps = 1; // the slot stays allocated until the owner answered, even if the connection closes
            ((ICommandChannel)first.Channel!).Submit(first);
        }
        else new CompareOperation(first, second, first.Data, second.Data, second.Sqe.ForceUnitAccess).Start();
    }

    /// <summary>A fused pair relayed whole from the partner (<see cref="RelayedOpcode"/>), run as the owner. Reactor thread.</summary>
    public static void RunRelayed(NvmfRequest req)
    {
        uint half = req.Length / 2;
        new CompareOperation(req, null, req.Data, req.Data + half, (req.Sqe.Cdw13 & RelayedFua) != 0).Start();
    }

    /// <summary>Compare alone. Reactor thread.</summary>
    public static void Compare(NvmfRequest req) => new CompareOperation(req, null, req.Data, null, false).Start();

    // ------------------------------------------------------------------ the proxy's side

    /// <summary>Turns <paramref name="first"/> into the relayed form of the pair (its data: both commands' data in one buffer).</summary>
    private static void PrepareRelay(NvmfRequest first, NvmfRequest second)
    {
        uint len = first.Length, total = len * 2;
        byte* buf = first.Qpair.Reactor.Pools.Borrow(total);
        Buffer.MemoryCopy(first.Data, buf, len, len);
        Buffer.MemoryCopy(second.Data, buf + len, len, len);
        first.Fused.Relay = new FusedRelay(second, first.Data, first.Length, first.Sqe);
        first.Data = buf;
        first.Length = total;
        first.Sqe.Opcode = RelayedOpcode;
        first.Sqe.Flags = (byte)(first.Sqe.Flags & ~CommandFlags.FuseMask);
        first.Sqe.Cdw13 = second.Sqe.ForceUnitAccess ? RelayedFua : 0;
    }

    /// <summary>The owner answered the relayed pair: both host commands complete as the owner decided.</summary>
    public static void RelayCompleted(NvmfRequest first, int result)
    {
        FusedRelay r = first.Fused.Relay!;
        first.Fused.Relay = null;
        first.Qpair.Reactor.Pools.Release(first.Data);
        first.Data = r.Data;
        first.Length = r.Length;
        first.Sqe = r.Sqe;
        NvmeStatus st = BdevResult.ToStatus(result);
        bool matched = (first.Cqe.Dw0 & CompareMatched) != 0;
        first.Cqe.Dw0 = 0;
        Complete(first, r.Second, st, matched);
    }

    /// <summary>Completes a pair: a failure before the compare matched is the Compare's (the Write is aborted); after, the Write's.</summary>
    internal static void Complete(NvmfRequest first, NvmfRequest second, NvmeStatus status, bool compareMatched)
    {
        first.Fused.Partner = null;
        second.Fused.Partner = null;
        if (status.IsSuccess)
        {
            Finish(first, status);
            Finish(second, status);
        }
        else if (compareMatched)
        {
            Finish(first, NvmeStatus.Success);
            Finish(second, status);
        }
        else
        {
            // A path status (the owner could not be reached) is for both: the host retries the whole operation.
            Finish(first, status);
            Finish(second, PartnerOfFailed(status));
        }
    }

    /// <summary>
    /// Reads the blocks, compares them with the host's data, and (for Compare and Write) writes the new data, all under a
    /// range lock when it writes. One object per operation: Compare and Write is not the I/O hot path.
    /// </summary>
    private sealed class CompareOperation(NvmfRequest req, NvmfRequest? second, byte* compareData, byte* writeData, bool fua) : IBdevCompletion, IMirrorCompletion
    {
        private bool _matched;
        private readonly Namespace _ns = req.Namespace!;
        private readonly BdevChannel _ch = req.Channel!;
        private byte* _scratch;
        private bool _writing;
        private bool _locked;

        private ulong Offset => req.Sqe.Slba << _ns.Bdev.BlockShift;
        private uint Length => req.Sqe.BlockCount << _ns.Bdev.BlockShift;

        public void Start()
        {
            // The slots stay allocated until the operation ends, even if the connection closes meanwhile.
            req.PendingOps = 1;
            if (second != null) second.PendingOps = 1;
            if (writeData == null)
            {
                Read();
                return;
            }
            _locked = true;
            ulong slba = req.Sqe.Slba;
            _ns.Locks.Lock(slba, slba + req.Sqe.BlockCount, () => req.Qpair.Reactor.Post(Read));
        }

        private void Read()
        {
            // Granted after its namespace's group moved to the partner, or it was removed: it must not touch the bdev
            // (a replica now, or nothing), and is not counted by the range locks that wait for commands to finish.
            if (_ns.MovedAway || _ns.Removed)
            {
                End(BdevResult.FromStatus(_ns.Removed ? NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat) : NvmeStatus.Path(PathStatus.AnaInaccessible)), false);
                return;
            }
            uint len = Length;
            _scratch = req.Qpair.Reactor.Pools.Borrow(len);
            _ch.Read(Offset, _scratch, len, this);
        }

        public void OnBdevComplete(int result)
        {
            if (result != 0 || _writing)
            {
                Done(result, compareMatched: _writing);
                return;
            }
            if (!new ReadOnlySpan<byte>(_scratch, (int)Length).SequenceEqual(new ReadOnlySpan<byte>(compareData, (int)Length)))
            {
                Done(BdevResult.FromStatus(NvmeStatus.Make(StatusCodeType.MediaDataIntegrity, MediaStatus.CompareFailure, dnr: true)), compareMatched: false);
                return;
            }
            if (writeData == null)
            {
                Done(0, compareMatched: true);
                return;
            }
            _writing = true;
            _ch.Write(Offset, writeData, Length, fua, this);
        }

        private void Done(int result, bool compareMatched)
        {
            req.Qpair.Reactor.Pools.Release(_scratch);
            if (result == 0 && _writing && _ns.Mirror is { Active: true } mirror)
            {
                // The Write's copy reaches the replica while the blocks are still locked: no other write to them can reach
                // it first.
                _matched = compareMatched;
                SubmissionQueueEntry copy = MirrorCommands.CopyOf(second?.Sqe ?? req.Sqe, IoOpcode.Write);
                mirror.Send(req.Qpair.Reactor.Id, copy, writeData, Length, this);
                return;
            }
            if (_writing && _ns.Mirror is { } missed)
            {
                // Out of sync: the Write's blocks go in the next resync. A Write that failed here may have changed some
                // of its blocks: the replica cannot be trusted with them either (as MirrorCommands.Hold does for a Write).
                if (result != 0 && missed.Active) missed.Lost($"a fused Compare and Write's Write failed on this node ({BdevResult.ToStatus(result)})");
                missed.Missed(MirrorCommands.CopyOf(second?.Sqe ?? req.Sqe, IoOpcode.Write));
                // A Write done here alone while the partner may still take the replica for whole completes once it no
                // longer does (docs/ha.md, "The keeper's knowledge").
                _matched = compareMatched;
                if (result == 0 && missed.HoldWhileLeaving(req.Qpair.Reactor.Id, this, NvmeStatus.Success)) return;
            }
            End(result, compareMatched);
        }

        public void OnMirrored(NvmeStatus status) => End(0, _matched);

        public void Abandon(NvmeStatus status)
        {
            _abandoned = status;
            End(0, _matched);
        }

        // Set when the pair's Write may not complete as done (IMirrorCompletion.Abandon): the commands fail with it.
        private NvmeStatus? _abandoned;

        private void End(int result, bool compareMatched)
        {
            // The pair's Write is mirrored here, under the lock, or not at all: not again as it completes.
            req.Mirror.Phase = MirrorPhase.Done;
            if (second != null) second.Mirror.Phase = MirrorPhase.Done;
            if (_locked) _ns.Locks.Unlock();
            NvmeStatus st = _abandoned ?? BdevResult.ToStatus(result);
            if (second != null)
            {
                Complete(req, second, st, compareMatched);
                return;
            }
            if (req.Fused.Role == FusedRole.Relayed) req.Cqe.Dw0 = compareMatched ? CompareMatched : 0;
            req.PendingOps = 0;
            if (st.IsSuccess) req.Complete();
            else req.Fail(st);
        }
    }
}
