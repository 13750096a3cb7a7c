using System.Diagnostics;
using Microsoft.Extensions.Logging;
using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;
using StorageNode.Target;

namespace StorageNode.Pair;

/// <summary>
/// The owner's view of one namespace's replica on the partner (<c>Cluster:Mirror</c>; docs/ha.md, "Mirroring" and "The
/// keeper's knowledge"). While the replica is in sync or resyncing, every write to the namespace completes only once the
/// replica has it too (the copies go over the interconnect's queues, <see cref="ProxyQueue.Mirror"/>, with the epoch).
/// When a copy fails or the interconnect goes down, a replica the partner may still take for in sync is <em>leaving</em>:
/// writes that complete without it are held until the partner has acknowledged "out of sync" or the lease the owner's
/// heartbeats renew has expired; then it is out of sync, and writes complete here alone, their regions marked. Once the
/// interconnect is up again a resync (announced to the partner first) copies the marked regions over, one range-locked
/// chunk at a time, while new writes are mirrored; then the partner is told "in sync".
/// </summary>
public sealed unsafe class NamespaceMirror : INamespaceMirror
{
    private const int OutOfSync = 0, Resyncing = 1, InSync = 2, Leaving = 3, Refused = 4;
    private const uint ChunkBytes = 128 * 1024;
    /// <summary>The dirty bitmap's region: 1 MiB (a 1 TiB namespace: 128 KiB of bits), as the dirty-region record's.</summary>
    private const int RegionShift = DirtyRegionLog.RegionShift;

    private readonly InterconnectLink _link;
    private readonly Namespace _ns;
    private readonly Reactor _reactor;
    private readonly ILogger _log;
    // The state and what the partner may believe change together, under the lock; the I/O path reads the state alone.
    private readonly object _lock = new();
    private volatile int _state = OutOfSync;
    // Since the owner last said "in sync" and until the partner acknowledged "out of sync" or the lease expired, the
    // partner may take the replica for whole: no write the replica lacks completes meanwhile.
    private bool _partnerMayTrust;
    private uint _epoch;
    private uint _sequence;
    // The sequence number of the latest "in sync" word (the trust the heartbeats renew), and whether it was acknowledged.
    private uint _trustSequence;
    private bool _trustAcknowledged;
    // When (Stopwatch ticks) a heartbeat last renewed this replica's lease: a lease lasts from its send time.
    private long _leaseSent;
    // Completions held while leaving: released (on their reactors) once the partner no longer trusts the replica.
    private readonly List<(int Reactor, IMirrorCompletion Done, NvmeStatus Status)> _held = [];
    private int _resyncRunning;
    private int _wordRunning;
    // Regions written here that the replica may lack (out of sync). A resync takes them; it gives back what it did not
    // finish.
    private readonly DirtyBitmap _dirty;
    // Whether _dirty (with what a running resync took) marks every region where the replica may differ from this node's
    // data, against the replica of epoch _epoch: a resync may then be incremental, if the keeper agrees that its replica
    // is that one (a restarted keeper whose replica is in RAM has none, for one). True once the keeper applied a resync
    // of this node's, or when the dirty-region record was kept across a restart of this node.
    private bool _baseValid;

    internal NamespaceMirror(InterconnectLink link, Namespace ns, Reactor resyncReactor, ILogger log)
    {
        _link = link;
        _ns = ns;
        _reactor = resyncReactor;
        _log = log;
        _dirty = new DirtyBitmap(Regions);
        if (ns.DirtyLog is { Loaded: true } record)
        {
            _epoch = record.Epoch;
            _baseValid = true;
        }
        // New data (RAM starts empty) is not served until the partner's replica has taken it for the truth: the replica
        // may hold data this node lost, and writes served meanwhile would be lost with it or lose it (docs/ha.md, "An
        // owner that lost its data"). The node took the hold (the namespace holds it) before its listeners opened.
        if (ns.DataGenerationIsNew)
            log.LogInformation("{Nqn}: NSID {Nsid}: new data (generation {Generation:x16}): ANA group {Group} is served once the partner's replica takes it (or an operator decides: cluster_replica_discard)",
                link.Subsystem.Nqn, ns.Nsid, ns.DataGeneration, ns.AnaGroupId);
    }

    /// <summary>
    /// Takes what the namespace's dirty-region record marks (a restart of this node: the replica may lack those regions,
    /// or hold writes this node lost in the crash; the record marks a region before any write to it starts) — marked
    /// now, not only as loaded: the node's listeners opened before this mirror was made, and a write that completed
    /// meanwhile marked its regions in the record with nothing here to mark it missed. Called once writes see this
    /// mirror (a write from then on that misses the replica marks it here). From then on the record clears a region no
    /// write is inside once the replica holds it: in sync, and not marked missed.
    /// </summary>
    internal void TakeRecord()
    {
        if (_ns.DirtyLog is not { } record) return;
        if (record.Loaded)
        {
            _dirty.GiveBack(record.MarkedNow());
            _log.LogInformation("{Nqn}: NSID {Nsid}: {Regions} region(s) of 1 MiB marked in the dirty-region record against the replica's epoch {Epoch}",
                _link.Subsystem.Nqn, _ns.Nsid, _dirty.Count, _epoch);
        }
        record.ReplicaHas = region => _state == InSync && !_dirty.IsMarked(region);
    }

    // An operator decided that this node's data replaces what the partner's replica holds (cluster_replica_discard).
    private bool _overwrite;
    // The keeper has taken this node's data once (Namespace.DataTaken called).
    private int _dataTaken;

    /// <summary>The keeper has taken this node's data (its first resync was applied), or the data was taken before this start.</summary>
    public bool DataTakenOnce => Volatile.Read(ref _dataTaken) != 0 || !_ns.DataGenerationIsNew;

    /// <summary>Why the partner refused this node's resync (null: it did not).</summary>
    public string? RefusedReason { get; private set; }

    /// <summary>The data generation this node's namespace has (docs/ha.md, "An owner that lost its data").</summary>
    public long DataGeneration => _ns.DataGeneration;

    /// <summary>Whether the namespace's ANA group is held inaccessible on this node (new data not yet taken by the replica, or refused).</summary>
    public bool GroupHeld => _link.Subsystem.IsGroupHeld(_ns.AnaGroupId);

    /// <summary>
    /// The partner's replica holds a consistent copy of data of another generation, which this node does not have:
    /// nothing is resynced over it, and the group stays inaccessible here until an operator decides.
    /// </summary>
    private void Refuse()
    {
        lock (_lock)
        {
            // An operator's decision that came meanwhile stands: the next resync carries it.
            if (_state != OutOfSync || Volatile.Read(ref _overwrite)) return;
            _state = Refused;
            RefusedReason = "the partner's replica holds data of another generation (this node's namespace started without it)";
            _link.Subsystem.HoldGroup(_ns.AnaGroupId, _ns);
        }
        _log.LogError("{Nqn}: NSID {Nsid}: the partner refused the resync: its replica holds data this node does not have (this node's data is generation {Generation:x16}, new: {New}); ANA group {Group} stays inaccessible until an operator decides: cluster_replica_discard replaces the replica with this node's data",
            _link.Subsystem.Nqn, _ns.Nsid, _ns.DataGeneration, _ns.DataGenerationIsNew, _ns.AnaGroupId);
    }

    /// <summary>
    /// An operator's decision (cluster_replica_discard): this node's data is the truth; the partner's replica is
    /// resynced from it whatever it holds, and the group is served now. Returns what changed.
    /// </summary>
    public string Discard()
    {
        bool wasRefused, released;
        lock (_lock)
        {
            Volatile.Write(ref _overwrite, true);
            wasRefused = _state == Refused;
            if (wasRefused) _state = OutOfSync;
            RefusedReason = null;
            released = _link.Subsystem.ReleaseGroup(_ns.AnaGroupId, _ns);
        }
        _log.LogWarning("{Nqn}: NSID {Nsid}: an operator discards the partner's replica: this node's data (generation {Generation:x16}) replaces it at the next resync{Served}",
            _link.Subsystem.Nqn, _ns.Nsid, _ns.DataGeneration, released ? $"; ANA group {_ns.AnaGroupId} is served" : "");
        return wasRefused ? "refused resync retried with overwrite" : released ? "group served; the replica will be overwritten" : "the replica will be overwritten at the next resync";
    }

    private int Regions => (int)((_ns.Bdev.SizeBytes + (1UL << RegionShift) - 1) >> RegionShift);

    public uint Nsid => _ns.Nsid;

    /// <summary><c>in_sync</c>, <c>resyncing</c>, <c>leaving</c> (out of sync, the partner not yet told), <c>out_of_sync</c> or <c>refused</c> (the partner's replica holds data this node lacks: docs/ha.md).</summary>
    public string State => _state switch { InSync => "in_sync", Resyncing => "resyncing", Leaving => "leaving", Refused => "refused", _ => "out_of_sync" };

    public bool IsInSync => _state == InSync;

    /// <summary>In sync, and the partner acknowledged the word that says so (its replica's knowledge says "in sync"): a giveback may go.</summary>
    public bool PartnerKnowsInSync
    {
        get { lock (_lock) return _state == InSync && _partnerMayTrust && _trustAcknowledged; }
    }
    public bool Active => _state is InSync or Resyncing;

    /// <summary>The epoch of the replica's contents: a new one with each resync (copies carry it; the partner refuses older ones).</summary>
    public uint Epoch => Volatile.Read(ref _epoch);

    /// <summary>Writes (and failed copies) held now until the partner no longer takes the replica for whole.</summary>
    public int Held
    {
        get { lock (_lock) return _held.Count; }
    }

    /// <summary>Test hook: the partner's acknowledgement of "out of sync" is not waited for (the rule it keeps is off); the stale-write detector shows what that costs.</summary>
    public static bool KeeperRuleDisabledForTest { get; set; }

    /// <summary>Resyncs finished, and the bytes the last one has copied so far (statistics).</summary>
    public int ResyncsDone { get; private set; }
    public long ResyncedBytes => Volatile.Read(ref _resyncedBytes);
    /// <summary>Whether the last resync copied everything (the keeper's replica was no base for an incremental one).</summary>
    public bool LastResyncWhole { get; private set; }
    /// <summary>The namespace's dirty-region record (a file namespace with a state directory), or null.</summary>
    public DirtyRegionLog? DirtyRecord => _ns.DirtyLog;
    private long _resyncedBytes;

    /// <summary>
    /// For the next heartbeat (control thread): when this replica is in sync, the sequence number of the "in sync" word
    /// whose lease the heartbeat renews (noting it sent at <paramref name="sentTicks"/>); 0 otherwise (leaving: no more
    /// renewals, so the lease runs out). A lease that lapsed between two renewals (a stall, a slow link) is renewed by
    /// the next one: the keeper renews a word whatever its lease did meanwhile.
    /// </summary>
    internal uint RenewLease(long sentTicks)
    {
        lock (_lock)
        {
            if (_state != InSync || !_partnerMayTrust) return 0;
            _leaseSent = sentTicks;
            return _trustSequence;
        }
    }

    public void Send(int reactorId, in SubmissionQueueEntry sqe, byte* data, uint length, IMirrorCompletion done)
    {
        SubmissionQueueEntry copy = sqe;
        MirrorCommands.SetEpoch(ref copy, Volatile.Read(ref _epoch));
        ProxyQueue? q = _link.QueueFor(reactorId);
        if (q == null)
        {
            Completed(reactorId, _link.UnavailableStatus, done, copy);
            return;
        }
        q.Mirror(this, copy, data, length, done);
    }

    /// <summary>The replica answered a copy, or it could not be sent (reactor <paramref name="reactorId"/>'s thread).</summary>
    internal void Completed(int reactorId, NvmeStatus status, IMirrorCompletion done, in SubmissionQueueEntry sqe)
    {
        if (!status.IsSuccess)
        {
            bool flush = MirrorCommands.Original(sqe.Opcode) == IoOpcode.Flush;
            if (Active) Lost(flush ? $"a Flush did not reach the replica's device ({status})" : $"a write's copy failed ({status})");
            // A Flush changes no block; one the keeper's device failed may have lost any of them (a failed fsync drops
            // dirty pages): then everything. One that never got there: nothing more than being out of sync.
            if (!flush) Missed(sqe);
            else if (status.Type == StatusCodeType.MediaDataIntegrity
                     || (status.Type == StatusCodeType.Generic && status.Code == GenericStatus.InternalError)) _dirty.MarkAll();
            // The write is on this node and not on the replica: it completes once the partner no longer trusts it.
            if (HoldWhileLeaving(reactorId, done, status)) return;
        }
        done.OnMirrored(status);
    }

    /// <summary>
    /// While leaving: holds a write that completes without the replica (its regions already marked) until the partner no
    /// longer takes the replica for whole; then <paramref name="done"/> is told on reactor <paramref name="reactorId"/>.
    /// False when not leaving (the caller completes it now).
    /// </summary>
    public bool HoldWhileLeaving(int reactorId, IMirrorCompletion done, NvmeStatus status)
    {
        if (_state != Leaving) return false;
        lock (_lock)
        {
            if (_state != Leaving) return false;
            // The slot stays allocated while held, even if the connection closes (a write whose copy went early and whose
            // local write is still on its way holds it by that, and is held once it completes: NvmfRequest.Complete).
            if (done is NvmfRequest { Mirror.Phase: not MirrorPhase.Early } req) req.PendingOps = 1;
            _held.Add((reactorId, done, status));
            return true;
        }
    }

    public void Missed(in SubmissionQueueEntry sqe)
    {
        byte op = (byte)(sqe.Opcode & ~MirrorCommands.Bit);
        if (op is not (IoOpcode.Write or IoOpcode.WriteZeroes))
        {
            // Dataset Management and Copy: their ranges are in their data; the whole namespace goes.
            _dirty.MarkAll();
            return;
        }
        int shift = _ns.Bdev.BlockShift;
        ulong first = (sqe.Slba << shift) >> RegionShift, last = (((sqe.Slba + sqe.BlockCount) << shift) - 1) >> RegionShift;
        _dirty.Mark(first, last);
    }

    /// <summary>Regions marked dirty now (for tests and status).</summary>
    public int DirtyRegions => _dirty.Count;

    /// <summary>
    /// The replica misses (or may miss) a write: out of sync until a resync (the next once the link is up). A replica the
    /// partner may take for whole is leaving first: no more lease renewals, the partner is told, and writes wait until it
    /// has acknowledged or the last lease sent has expired. Any thread.
    /// </summary>
    public void Lost(string why)
    {
        bool leaving;
        lock (_lock)
        {
            if (_state is OutOfSync or Leaving or Refused) return;
            leaving = _partnerMayTrust && !KeeperRuleDisabledForTest;
            _state = leaving ? Leaving : OutOfSync;
            if (!leaving) _partnerMayTrust = false;
        }
        if (leaving)
        {
            _log.LogWarning("{Nqn}: NSID {Nsid}: the partner's replica is out of sync: {Why}; writes wait until the partner knows (it acknowledges, or its lease expires)",
                _link.Subsystem.Nqn, _ns.Nsid, why);
            TellPartnerOutOfSync();
        }
        else
        {
            _log.LogWarning("{Nqn}: NSID {Nsid}: the partner's replica is out of sync: {Why}; writes complete on this node alone until a resync",
                _link.Subsystem.Nqn, _ns.Nsid, why);
        }
    }

    /// <summary>
    /// The partner took this namespace's group over (this node learned a newer term): the mirror stops for good; writes
    /// it held fail with <paramref name="status"/> (they ran here, on data that is no longer the truth), on their reactors.
    /// </summary>
    internal void Retire(NvmeStatus status)
    {
        lock (_lock)
        {
            _state = OutOfSync;
            _partnerMayTrust = false;
        }
        // Nothing is held from now on (not leaving): what was fails.
        FailHeld(status);
    }

    /// <summary>
    /// This node fenced itself off the group (it hears neither its partner nor the witness): writes held while leaving
    /// fail with <paramref name="status"/> (the hosts retry them on the partner, which may take the group over); the
    /// replica stays leaving, their regions marked. Returns how many failed.
    /// </summary>
    internal int FailHeld(NvmeStatus status)
    {
        List<(int Reactor, IMirrorCompletion Done, NvmeStatus Status)> release;
        lock (_lock)
        {
            release = [.. _held];
            _held.Clear();
        }
        IReadOnlyList<Reactor> reactors = _link.Reactors;
        foreach ((int r, IMirrorCompletion done, _) in release)
        {
            IMirrorCompletion d = done;
            reactors[r].Post(() => d.Abandon(status));
        }
        return release.Count;
    }

    /// <summary>Runs one word to the partner at a time, on the pair's notice threads; false when one is already on its way.</summary>
    private bool SendWord(Action send)
    {
        if (!_link.IsUp || Interlocked.CompareExchange(ref _wordRunning, 1, 0) != 0) return false;
        if (_link.Notices.Run(() =>
            {
                try { send(); }
                finally { Volatile.Write(ref _wordRunning, 0); }
            }))
            return true;
        Volatile.Write(ref _wordRunning, 0);
        return false;
    }

    /// <summary>While leaving, tells the partner "out of sync"; its acknowledgement (applied, newer than the trust it ends) ends the leaving.</summary>
    private void TellPartnerOutOfSync() => SendWord(() =>
    {
        uint sequence;
        lock (_lock)
        {
            if (_state != Leaving) return;
            sequence = ++_sequence;
        }
        if (_link.SendReplicaState(_ns.Nsid, ReplicaWord.OutOfSync, Epoch, sequence, association: null, _ns.DataGeneration) != ReplicaAnswer.Applied) return;
        lock (_lock)
        {
            // An answer to a word older than the trust now given ends nothing (it was sent in an earlier episode).
            if (sequence <= _trustSequence) return;
        }
        PartnerNoLongerTrusts("the partner acknowledged");
    });

    /// <summary>
    /// The control thread's work (every heartbeat interval, link up or down): a leaving replica whose last lease has
    /// expired (sent a lease and a margin ago) is out of sync, one whose partner can be told is told; an in-sync word not
    /// acknowledged is said anew; an out-of-sync replica is resynced.
    /// </summary>
    internal void Tick(long nowTicks)
    {
        int state = _state;
        if (state == Leaving)
        {
            long lease = _link.MirrorLeaseTicks;
            long sent;
            lock (_lock) sent = _leaseSent;
            // With a witness, the keeper may take the group over once the owner's lease there has run out: writes the
            // replica lacks complete only once the witness has recorded that this node serves the group alone.
            if (nowTicks - sent > lease + Support.LeaseMargin.Ticks(lease) && _link.Pair.EnsureAlone(_link.Subsystem, _ns.AnaGroupId))
                PartnerNoLongerTrusts("the partner's lease expired");
            else TellPartnerOutOfSync();
            return;
        }
        if (!_link.IsUp) return;
        if (state == InSync)
        {
            bool again;
            lock (_lock) again = _partnerMayTrust && !_trustAcknowledged;
            if (again) SayInSync();
            return;
        }
        // Only the group's owner resyncs (a node that learned its partner took the group over holds it instead).
        if (state == OutOfSync && _link.Pair.MayServe(_link.Subsystem, _ns.AnaGroupId)) StartResync();
    }

    /// <summary>The partner no longer takes the replica for whole: out of sync; the held writes complete (on their reactors).</summary>
    private void PartnerNoLongerTrusts(string how)
    {
        List<(int Reactor, IMirrorCompletion Done, NvmeStatus Status)> release;
        lock (_lock)
        {
            if (_state != Leaving) return;
            _state = OutOfSync;
            _partnerMayTrust = false;
            release = [.. _held];
            _held.Clear();
        }
        _log.LogInformation("{Nqn}: NSID {Nsid}: the partner no longer takes its replica for whole ({How}); {Held} held write(s) complete",
            _link.Subsystem.Nqn, _ns.Nsid, how, release.Count);
        IReadOnlyList<Reactor> reactors = _link.Reactors;
        foreach ((int r, IMirrorCompletion done, NvmeStatus status) in release)
        {
            IMirrorCompletion d = done;
            NvmeStatus st = status;
            reactors[r].Post(() => d.OnMirrored(st));
        }
    }

    /// <summary>
    /// Starts a resync when the replica is out of sync and none runs (the link up): a new epoch, announced to the partner
    /// on the link's association and acknowledged before anything else; only then is every write that completes mirrored
    /// with it, and the resync's first chunk read.
    /// </summary>
    private void StartResync()
    {
        if (Volatile.Read(ref _resyncRunning) != 0) return;
        object? association = _link.Association;
        if (association == null) return;
        SendWord(() =>
        {
            uint epoch, sequence;
            lock (_lock)
            {
                if (_state != OutOfSync || _resyncRunning != 0) return;
                epoch = _epoch + 1;
                sequence = ++_sequence;
            }
            bool overwrite = Volatile.Read(ref _overwrite);
            uint? baseEpoch;
            lock (_lock) baseEpoch = _baseValid && !overwrite ? _epoch : null;
            ReplicaAnswer? answer = _link.SendReplicaState(_ns.Nsid, ReplicaWord.Resyncing, epoch, sequence, association, _ns.DataGeneration, overwrite,
                baseEpoch, out bool whole);
            if (answer == ReplicaAnswer.Refused)
            {
                Refuse();
                return;
            }
            if (answer != ReplicaAnswer.Applied) return;
            // The keeper holds the replica of this epoch from now on: the dirty-region record is kept against it (written
            // before any copy of the epoch is sent; a record that names an older one resyncs everything after a crash).
            _ns.DirtyLog?.SetEpoch(epoch);
            // An operator's overwrite is carried out by this resync (later ones are incremental again).
            if (overwrite) Volatile.Write(ref _overwrite, false);
            // The keeper takes this node's data for the truth: the group may be served (after a restart too).
            if (Interlocked.Exchange(ref _dataTaken, 1) == 0) _ns.DataTaken?.Invoke();
            if (_link.Subsystem.ReleaseGroup(_ns.AnaGroupId, _ns))
                _log.LogInformation("{Nqn}: NSID {Nsid}: the partner's replica takes this node's data (generation {Generation:x16}){How}; ANA group {Group} is served",
                    _link.Subsystem.Nqn, _ns.Nsid, _ns.DataGeneration, overwrite ? ", as an operator decided" : "", _ns.AnaGroupId);
            lock (_lock)
            {
                // From here every write that completes is mirrored, with the new epoch; each chunk is read under a range
                // lock, after the writes that were running on it finished, so a chunk and the writes around it reach the
                // replica in the order they happened.
                if (_state != OutOfSync || _resyncRunning != 0) return;
                _epoch = epoch;
                _baseValid = true;
                _resyncRunning = 1;
                _state = Resyncing;
            }
            Volatile.Write(ref _resyncedBytes, 0);
            LastResyncWhole = whole || baseEpoch == null;
            _reactor.Post(new Resync(this, LastResyncWhole).Start);
        });
    }

    /// <summary>Says "in sync" (anew), with a new sequence number: the trust the heartbeats renew from now on.</summary>
    private void SayInSync() => SendWord(() =>
    {
        uint sequence, epoch;
        lock (_lock)
        {
            if (_state != InSync || !_partnerMayTrust) return;
            sequence = ++_sequence;
            epoch = _epoch;
            _trustSequence = sequence;
            _trustAcknowledged = false;
        }
        if (_link.SendReplicaState(_ns.Nsid, ReplicaWord.InSync, epoch, sequence, association: null, _ns.DataGeneration) != ReplicaAnswer.Applied) return;
        lock (_lock)
        {
            if (_trustSequence == sequence) _trustAcknowledged = true;
        }
    });

    /// <summary>
    /// The resync's work, taken once every write that started while the replica was out of sync has finished (a
    /// whole-namespace range lock, released at once): each has marked its blocks dirty or, completing after the switch,
    /// reached the replica; and a write starting now is mirrored, in order with the overlapping ones.
    /// </summary>
    private long[] TakeWork(bool whole)
    {
        if (whole) _dirty.MarkAll();
        long[] work = _dirty.Take();
        int regions = DirtyBitmap.CountOf(work);
        _log.LogInformation("{Nqn}: NSID {Nsid}: resyncing the partner's replica (epoch {Epoch}): {What}", _link.Subsystem.Nqn, _ns.Nsid, Epoch,
            whole ? $"all of it ({_ns.Bdev.SizeBytes >> 20} MiB: it is not the replica this node's record of missed writes is kept against)"
                  : $"{Math.Min(regions, Regions)} region(s) of 1 MiB it may lack");
        return work;
    }

    /// <summary>Gives back regions a resync did not finish (they go in the next one).</summary>
    private void GiveBack(long[] work) => _dirty.GiveBack(work);

    /// <summary>The resync ended; false when the replica fell out of sync meanwhile (its regions are then given back).</summary>
    private bool ResyncEnded(bool completed, long elapsedTicks)
    {
        bool inSync = false;
        if (completed)
        {
            lock (_lock)
            {
                if (_state == Resyncing)
                {
                    // From the moment the word may reach the partner, it may take the replica for whole. (The word itself
                    // is said by Tick, on a notice thread: not acknowledged yet.)
                    _state = InSync;
                    _partnerMayTrust = true;
                    _trustAcknowledged = false;
                    _leaseSent = 0;
                    inSync = true;
                }
            }
        }
        if (inSync)
        {
            ResyncsDone++;
            SayInSync();
            _log.LogInformation("{Nqn}: NSID {Nsid}: the partner's replica is in sync ({Bytes} MiB copied in {Seconds:0.00} s)",
                _link.Subsystem.Nqn, _ns.Nsid, ResyncedBytes >> 20, (double)elapsedTicks / Stopwatch.Frequency);
        }
        Volatile.Write(ref _resyncRunning, 0);
        return inSync;
    }

    /// <summary>One resync: chunk after chunk on one reactor, each read under a range lock and sent as a Write (or Write Zeroes).</summary>
    private sealed class Resync(NamespaceMirror m, bool whole) : IBdevCompletion, IMirrorCompletion
    {
        private readonly long _startedAt = Stopwatch.GetTimestamp();
        private long[] _work = [];
        private byte* _buffer;
        private ulong _next, _blocks;

        private bool Dirty(ulong block) => DirtyBitmap.IsSet(_work, (block << m._ns.Bdev.BlockShift) >> RegionShift);

        public void Start()
        {
            Namespace ns = m._ns;
            ns.Locks.Lock(0, ns.Bdev.BlockCount, () => m._reactor.Post(() =>
            {
                ns.Locks.Unlock();
                _work = m.TakeWork(whole);
                _buffer = m._reactor.Pools.Borrow(ChunkBytes);
                Next();
            }));
        }

        private void Next()
        {
            Namespace ns = m._ns;
            if (m._state != Resyncing || ns.Removed)
            {
                End(completed: false);
                return;
            }
            ulong regionBlocks = (1UL << RegionShift) >> ns.Bdev.BlockShift;
            while (_next < ns.Bdev.BlockCount && !Dirty(_next)) _next = (_next / regionBlocks + 1) * regionBlocks;
            if (_next >= ns.Bdev.BlockCount)
            {
                // A write that completed just as the resync began may have marked the fresh bitmap: another pass for it.
                long[] more = m._dirty.Take();
                if (DirtyBitmap.CountOf(more) > 0)
                {
                    _work = more;
                    _next = 0;
                    Next();
                    return;
                }
                End(completed: true);
                return;
            }
            _blocks = Math.Min(ChunkBytes >> ns.Bdev.BlockShift, ns.Bdev.BlockCount - _next);
            ns.Locks.Lock(_next, _next + _blocks, () => m._reactor.Post(Read));
        }

        private void Read()
        {
            Namespace ns = m._ns;
            ns.Channels[m._reactor.Id].Read(_next << ns.Bdev.BlockShift, _buffer, (uint)(_blocks << ns.Bdev.BlockShift), this);
        }

        public void OnBdevComplete(int result)
        {
            Namespace ns = m._ns;
            if (result != 0)
            {
                m.Lost($"reading block {_next} for the resync failed ({result})");
                ns.Locks.Unlock();
                End(completed: false);
                return;
            }
            uint length = (uint)(_blocks << ns.Bdev.BlockShift);
            bool zero = !new ReadOnlySpan<byte>(_buffer, (int)length).ContainsAnyExcept((byte)0);
            SubmissionQueueEntry sqe = default;
            sqe.Nsid = ns.Nsid;
            sqe.Cdw10 = (uint)_next;
            sqe.Cdw11 = (uint)(_next >> 32);
            sqe.Cdw12 = (uint)(_blocks - 1);
            sqe = MirrorCommands.CopyOf(sqe, zero ? IoOpcode.WriteZeroes : IoOpcode.Write);
            m.Send(m._reactor.Id, sqe, zero ? null : _buffer, zero ? 0 : length, this);
        }

        public void Abandon(NvmeStatus status) => OnMirrored(status);

        public void OnMirrored(NvmeStatus status)
        {
            m._ns.Locks.Unlock();
            if (!status.IsSuccess)
            {
                End(completed: false);
                return;
            }
            Interlocked.Add(ref m._resyncedBytes, (long)(_blocks << m._ns.Bdev.BlockShift));
            _next += _blocks;
            Next();
        }

        private void End(bool completed)
        {
            if (_buffer != null) m._reactor.Pools.Release(_buffer);
            _buffer = null;
            if (!completed) m.GiveBack(_work);
            // A replica that fell out of sync while this resync ran gets its regions again in the next one: what fell out
            // may have been anything this resync copied.
            if (!m.ResyncEnded(completed, Stopwatch.GetTimestamp() - _startedAt) && completed) m.GiveBack(_work);
        }
    }
}
