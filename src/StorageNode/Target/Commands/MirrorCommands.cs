using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// Writes mirrored to the replica: the owner holds a write's completion until the replica has it, and the partner runs
/// the replica's copy on its replica bdev. The copy is the write's own command with the opcode <see cref="Bit"/> | the
/// write's (Write A1h, Write Zeroes A8h, Dataset Management A9h, Copy B9h: the low two bits still give the data
/// direction), accepted only on the interconnect.
/// </summary>
internal static unsafe class MirrorCommands
{
    public const byte Bit = 0xA0;

    /// <summary>The mirror form of a command that has a replica form in the I/O command table (<see cref="IoCommand.RunOnReplica"/>).</summary>
    public static bool IsMirrorOpcode(byte op) => (op & Bit) == Bit && IoCommands.IsMirrored(Original(op));

    public static byte Original(byte op) => (byte)(op & ~Bit);

    /// <summary>
    /// On the interconnect, before the command is validated: the owner's copy of a write, for this node's replica, becomes
    /// the write it is (its opcode the original's), marked <see cref="NvmfRequest.ForReplica"/>: validated as that write,
    /// run on the replica.
    /// </summary>
    public static void DecodeCopy(NvmfRequest req)
    {
        if (!IsMirrorOpcode(req.Sqe.Opcode)) return;
        req.Sqe.Opcode = Original(req.Sqe.Opcode);
        req.ForReplica = true;
    }

    /// <summary>
    /// A copy's mirror epoch (CDW2: copies are not relayed commands, which carry their handle there): the keeper refuses
    /// a copy older than its replica's epoch (<see cref="ReplicaKnowledge.AcceptsCopy"/>).
    /// </summary>
    public static uint Epoch(in SubmissionQueueEntry sqe) => sqe.Cdw2;

    public static void SetEpoch(ref SubmissionQueueEntry sqe, uint epoch) => sqe.Cdw2 = epoch;

    /// <summary>Whether the command changes blocks (what a replica must get): Dataset Management only with deallocate.</summary>
    public static bool Writes(in SubmissionQueueEntry sqe) => sqe.Opcode is IoOpcode.Write or IoOpcode.WriteZeroes or IoOpcode.Copy
        || (sqe.Opcode == IoOpcode.DatasetManagement && (sqe.Cdw11 & DsmAttribute.Deallocate) != 0);

    /// <summary>The replica's copy of a write: its command with the mirror opcode, alone (a fused Write goes unfused).</summary>
    public static SubmissionQueueEntry CopyOf(in SubmissionQueueEntry sqe, byte opcode)
    {
        SubmissionQueueEntry m = sqe;
        m.Opcode = (byte)(Bit | opcode);
        m.Flags = (byte)(m.Flags & ~CommandFlags.FuseMask);
        return m;
    }

    /// <summary>
    /// As a write starts on this node (<see cref="IoCommands"/>' Run, after its range lock, its place in the write order
    /// and its dirty-region mark): with the replica in sync or resyncing, its copy goes to the replica now, in parallel
    /// with the local write — a mirrored write costs one interconnect round trip beside the local write, not after it.
    /// The command completes once both have (<see cref="NvmfRequest.Complete"/>, <see cref="NvmfRequest.OnMirrored"/>).
    /// Write, Write Zeroes and Flush only: their blocks were checked when the command arrived, so what runs here runs
    /// there. Dataset Management and Copy check their ranges as they run, and one refused here must not reach the
    /// replica (its refusal there would count as a failed copy: out of sync for a host's bad command); they go as they
    /// complete (<see cref="Hold"/>), as a Copy while resyncing must anyway. Reactor thread.
    /// </summary>
    public static void SendEarly(NvmfRequest req, INamespaceMirror mirror)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        if (req.ForReplica || req.Qpair.Qid == 0 || sqe.Opcode is not (IoOpcode.Write or IoOpcode.WriteZeroes or IoOpcode.Flush)) return;
        // Set before the send: a copy that cannot go (the link is down) is answered at once.
        req.Mirror.Phase = MirrorPhase.Early;
        bool data = sqe.Opcode == IoOpcode.Write;
        mirror.Send(req.Qpair.Reactor.Id, CopyOf(sqe, sqe.Opcode), data ? req.Data : null, data ? req.Length : 0, req);
    }

    /// <summary>
    /// A write completed here (<see cref="NvmfRequest.Complete"/>), its copy sent early or not: if it failed midway, the
    /// replica may differ from this node in its blocks — it is out of sync and the write's blocks go in the resync.
    /// </summary>
    public static void LocalDone(NvmfRequest req)
    {
        if (req.Sqe.Opcode == IoOpcode.Flush || !FailedMidway(req) || req.Namespace?.Mirror is not { } mirror) return;
        if (mirror.Active) mirror.Lost($"a write failed on this node ({req.Status})");
        mirror.Missed(req.Sqe);
    }

    /// <summary>
    /// A write that failed here and may have changed some of its blocks (a device error, a range of several, a short file
    /// write), unlike one refused before it touched any (a range past the end: the replica refuses its copy alike).
    /// </summary>
    private static bool FailedMidway(NvmfRequest req) => !req.Status.IsSuccess
        && (req.FirstError != 0 || (req.Status.Type == StatusCodeType.Generic && req.Status.Code == GenericStatus.InternalError));

    /// <summary>
    /// Called as a command completes (<see cref="NvmfRequest.Complete"/>) whose copy did not go early: true when it is a
    /// successful write to a namespace whose replica must have it first (one that ran out of sync, or one that was ordered
    /// while in sync and ran once the replica was not — its copy goes now if it is again). Its copy is then sent, and the
    /// command completes again once the replica answered (<see cref="NvmfRequest.OnMirrored"/>), still holding its range-lock count and its place in the
    /// HA gate meanwhile.
    /// </summary>
    public static bool Hold(NvmfRequest req)
    {
        if (req.Mirror.Phase != MirrorPhase.None || req.ForReplica || !req.Mirror.Ran || req.Namespace is not { IsRemote: false, Mirror: { } mirror }
            || req.Qpair.Qid == 0)
            return false;
        if (req.Sqe.Opcode == IoOpcode.Flush)
        {
            // A Flush that succeeded here reaches the replica's device too before its host hears of it: what a host made
            // durable survives a power loss of both nodes on the copy a takeover would serve. Out of sync, the replica
            // is not whole anyway (a resync copies what it lacks).
            if (!req.Status.IsSuccess) return false;
            if (!mirror.Active)
            {
                // Leaving: the partner may still take the replica for whole, whose device this Flush never reached: held
                // as a write the replica lacks is, until the partner no longer does.
                if (!mirror.HoldWhileLeaving(req.Qpair.Reactor.Id, req, NvmeStatus.Success)) return false;
                req.Mirror.Phase = MirrorPhase.Sending; // completes again through OnMirrored
                return true;
            }
            req.Mirror.Phase = MirrorPhase.Sending;
            req.PendingOps = 1;
            mirror.Send(req.Qpair.Reactor.Id, CopyOf(req.Sqe, IoOpcode.Flush), null, 0, req);
            return true;
        }
        if (!Writes(req.Sqe)) return false;
        if (!req.Status.IsSuccess)
        {
            // A write that failed here may have changed some of its blocks: the replica cannot be trusted with them.
            LocalDone(req);
            return false;
        }
        if (!mirror.Active || req.Mirror.RanUnmirrored)
        {
            // Out of sync (now, or when it ran): the write completes here alone, and its blocks are remembered for the
            // resync, which waits for it before it takes them; while the partner may still take the replica for whole,
            // not before it no longer does (docs/ha.md, "The keeper's knowledge").
            mirror.Missed(req.Sqe);
            if (!mirror.HoldWhileLeaving(req.Qpair.Reactor.Id, req, NvmeStatus.Success)) return false;
            req.Mirror.Phase = MirrorPhase.Sending; // completes again through OnMirrored
            return true;
        }
        // Writes(): a Write, Write Zeroes, deallocate or Copy (a fused Compare and Write mirrors its Write under its range
        // lock, in CompareOperation: it never got here, not having run through IoCommands' Run).
        if (req.Sqe.Opcode == IoOpcode.Copy && !mirror.IsInSync)
        {
            // The replica copies from its own blocks, which a resync may not have reached yet: start the resync over,
            // with this Copy's blocks in it.
            mirror.Lost("a Copy during the resync");
            mirror.Missed(req.Sqe);
            return false;
        }
        req.Mirror.Phase = MirrorPhase.Sending;
        // The slot and its data buffer stay allocated while the copy is on its way, even if the connection closes
        // meanwhile: the copy reads the buffer, and its answer completes this command (NvmfRequest.OnMirrored).
        req.PendingOps = 1;
        mirror.Send(req.Qpair.Reactor.Id, CopyOf(req.Sqe, req.Sqe.Opcode), req.Data, req.Length, req);
        return true;
    }
}

/// <summary>Where a command is in mirroring its write to the replica (<see cref="MirrorCommands"/>).</summary>
internal enum MirrorPhase : byte
{
    None,
    /// <summary>The copy went as the write started (<see cref="MirrorCommands.SendEarly"/>); both are on their way.</summary>
    Early,
    /// <summary>The copy was answered; the local write is still on its way.</summary>
    Answered,
    /// <summary>The local write completed (or was held); the copy's answer is awaited.</summary>
    Sending,
    /// <summary>Both done: the command completes.</summary>
    Done,
}

/// <summary>
/// Keeps writes to overlapping blocks in one order on both copies of a mirrored namespace. A write that starts while its
/// blocks overlap a write still on its way to the replica (or an earlier one waiting) waits, parked, until that one has
/// been answered: the replica then gets them in the order they ran here. Only while the namespace is mirrored; one lock
/// per namespace, taken twice per write (the replica's round trip is far longer).
/// </summary>
internal sealed class WriteOrder
{
    private readonly object _lock = new();
    private readonly List<(ulong Start, ulong End, NvmfRequest Req)> _inflight = [];
    private readonly List<(ulong Start, ulong End, NvmfRequest Req)> _parked = [];

    /// <summary>A Dataset Management or Copy takes the whole namespace (its ranges are many, or it reads as well).</summary>
    public static (ulong Start, ulong End) RangeOf(in SubmissionQueueEntry sqe)
        => sqe.Opcode is IoOpcode.Write or IoOpcode.WriteZeroes ? (sqe.Slba, sqe.Slba + sqe.BlockCount) : (0, ulong.MaxValue);

    public static bool Orders(byte op) => op is IoOpcode.Write or IoOpcode.WriteZeroes or IoOpcode.DatasetManagement or IoOpcode.Copy;

    /// <summary>Writes parked now, and writes counted in flight (for tests).</summary>
    public (int Parked, int InFlight) Counts
    {
        get { lock (_lock) return (_parked.Count, _inflight.Count); }
    }

    /// <summary>
    /// True when the write must wait: it is parked, and runs again (<see cref="IoCommands.RunParked"/>, on its reactor)
    /// once what it overlaps has been answered. Otherwise it counts as in flight until <see cref="Finished"/>.
    /// </summary>
    public bool MustWait(NvmfRequest req, ulong start, ulong end)
    {
        lock (_lock)
        {
            if (Overlaps(_inflight, _inflight.Count, start, end) || Overlaps(_parked, _parked.Count, start, end))
            {
                req.PendingOps = 1; // the slot stays allocated while parked, even if the connection closes
                _parked.Add((start, end, req));
                return true;
            }
            _inflight.Add((start, end, req));
            req.Mirror.Ordered = true;
            return false;
        }
    }

    /// <summary>The write completed (after the replica's answer, or without one): the writes it held back may run.</summary>
    public void Finished(NvmfRequest req)
    {
        List<NvmfRequest>? run = null;
        lock (_lock)
        {
            req.Mirror.Ordered = false;
            for (int i = 0; i < _inflight.Count; i++)
            {
                if (_inflight[i].Req != req) continue;
                _inflight.RemoveAt(i);
                break;
            }
            // In arrival order: each runs once it overlaps nothing in flight and no earlier write still waiting.
            for (int i = 0; i < _parked.Count; i++)
            {
                (ulong start, ulong end, NvmfRequest p) = _parked[i];
                if (Overlaps(_inflight, _inflight.Count, start, end) || Overlaps(_parked, i, start, end)) continue;
                _parked.RemoveAt(i--);
                _inflight.Add((start, end, p));
                p.Mirror.Ordered = true;
                (run ??= []).Add(p);
            }
        }
        if (run == null) return;
        foreach (NvmfRequest r in run) r.Qpair.Reactor.Post(() => IoCommands.RunParked(r));
    }

    private static bool Overlaps(List<(ulong Start, ulong End, NvmfRequest Req)> list, int count, ulong start, ulong end)
    {
        for (int i = 0; i < count; i++)
            if (start < list[i].End && list[i].Start < end) return true;
        return false;
    }
}
