using StorageNode.Support;

namespace StorageNode.Target;

/// <summary>The keeper's answer to an owner's word.</summary>
public enum ReplicaAnswer
{
    /// <summary>Applied: the keeper knows.</summary>
    Applied,
    /// <summary>Older than what the keeper knows, or from a replaced incarnation: ignored.</summary>
    Stale,
    /// <summary>A resync of another data generation over a consistent copy of data: refused until an operator decides.</summary>
    Refused,
    /// <summary>Not now: this node is asking the witness to take the replica over (<see cref="ReplicaKnowledge.BeginTake"/>); the owner says it again.</summary>
    NotNow,
}

/// <summary>What the owner last said of a replica (docs/ha.md, "The keeper's knowledge").</summary>
public enum ReplicaWord : byte
{
    /// <summary>The replica misses writes (or may): not whole.</summary>
    OutOfSync = 0,
    /// <summary>A resync is copying the missed regions over: not whole until it ends.</summary>
    Resyncing = 1,
    /// <summary>The replica had every write the owner completed when it said so.</summary>
    InSync = 2,
}

/// <summary>
/// On the partner of a mirrored namespace (the keeper): what it knows of its replica, which a takeover will serve as
/// the truth. The owner's notices carry its incarnation, an epoch and a sequence number; a notice from another
/// incarnation resets what is known (a restarted owner starts over), an older one is ignored. "In sync" holds only
/// within a lease the owner renews with its heartbeats on the association that said it, and the owner never completes a
/// write the replica lacks until the keeper has heard "out of sync" or that lease has expired (docs/ha.md): so while
/// <see cref="IsWhole"/> is true, every write the owner completed is on the replica. Thread-safe.
/// </summary>
public sealed class ReplicaKnowledge
{
    private readonly object _lock = new();
    private long _wholeUntil;   // Stopwatch ticks on this node; 0: not renewed since the last word
    private object? _wordFrom;  // the association the last word came on: only its heartbeats renew the lease
    private volatile uint _epoch;

    /// <summary>
    /// False while the replica's bdev still finishes commands of the namespace this node served from it (its partner took
    /// the group over a moment ago): no word is applied, and so no copy accepted, until they have finished.
    /// </summary>
    public bool Ready
    {
        get => _ready;
        set => _ready = value;
    }

    private volatile bool _ready = true;

    public long OwnerIncarnation { get; private set; }
    public ReplicaWord Word { get; private set; }
    public uint Epoch => _epoch;
    public uint Sequence { get; private set; }
    /// <summary>When the last word was applied (UTC; default: never).</summary>
    public DateTime SinceUtc { get; private set; }
    /// <summary>Until when (this node's Stopwatch ticks) an in-sync word holds without another renewal; 0: none.</summary>
    public long WholeUntilTicks
    {
        get { lock (_lock) return _wholeUntil; }
    }

    /// <summary>
    /// Whole when the owner died (docs/ha.md, "Takeover"): its last word was "in sync" and that word's lease, renewed at
    /// least once, outlived the owner's last sign of life (<paramref name="lastHeardTicks"/>: its last heartbeat datagram
    /// here). An owner heard after the lease ended may have completed writes alone (the rule lets it, once the lease has
    /// expired), so its replica is not whole then.
    /// </summary>
    public bool WholeAtDeath(long lastHeardTicks)
    {
        lock (_lock) return Word == ReplicaWord.InSync && _wholeUntil != 0 && _wholeUntil >= lastHeardTicks;
    }

    /// <summary>Whole: the owner's last word is "in sync" and its lease has not expired.</summary>
    public bool IsWhole(long nowTicks)
    {
        lock (_lock) return Word == ReplicaWord.InSync && nowTicks < _wholeUntil;
    }

    /// <summary>
    /// The owner's word on association <paramref name="association"/>. Applied (true) when it comes from the owner's
    /// current incarnation (<paramref name="knownIncarnation"/>, as the heartbeat channel and the descriptor say; 0 while
    /// none is known) with a sequence number above the last applied; a word of a new incarnation resets what was known
    /// first. A word of an incarnation that was replaced (a dead owner's, delivered late) is never applied.
    /// </summary>
    public bool Apply(object association, long incarnation, ReplicaWord word, uint epoch, uint sequence, long knownIncarnation)
        => Offer(association, incarnation, word, epoch, sequence, knownIncarnation, generation: 0, overwrite: false) == ReplicaAnswer.Applied;

    /// <summary>
    /// The data the replica holds: the owner's data generation it was last resynced from (0: none, an empty replica)
    /// and whether that resync finished (the replica was whole then: a consistent copy, perhaps since outdated). Kept
    /// across the owner's restarts: they do not change what is on the replica.
    /// </summary>
    public (long Generation, bool Consistent) Holds
    {
        get { lock (_lock) return (_held.Generation, _held.Consistent); }
    }

    /// <summary>What the replica holds, with the epoch of its last resync and whether it is a base for an incremental one (kept in a file).</summary>
    public ReplicaHolds Kept
    {
        get { lock (_lock) return _held; }
    }

    private ReplicaHolds _held;

    /// <summary>
    /// Where what the replica holds is kept across this node's restarts (a replica in a file, with a state directory:
    /// <see cref="ReplicaHoldsFile"/>); null: nowhere (RAM: the replica is empty after a restart).
    /// </summary>
    public string? HoldsPath { get; init; }

    /// <summary>At start: what a kept replica holds, as <see cref="HoldsPath"/> says.</summary>
    public void Restore(long generation, bool consistent) => Restore(new ReplicaHolds(generation, consistent, 0, false));

    /// <summary>At start, or when a record could not be written: what the replica holds, as its record says.</summary>
    public void Restore(ReplicaHolds held)
    {
        lock (_lock) _held = held.Generation == 0 ? default : held;
    }

    /// <summary>
    /// <see cref="Apply"/>, with the owner's data generation <paramref name="generation"/> (its data's lineage: the same
    /// across restarts of a namespace whose data survives them, new for one that starts empty). A resync of another
    /// generation over a replica that holds data of another (consistent, or torn by a resync that did not finish) is refused unless <paramref name="overwrite"/>
    /// (an operator decided): it would replace data the owner no longer has with what it has now (docs/ha.md, "An
    /// owner that lost its data").
    /// </summary>
    public ReplicaAnswer Offer(object association, long incarnation, ReplicaWord word, uint epoch, uint sequence, long knownIncarnation, long generation, bool overwrite)
        => Offer(association, incarnation, word, epoch, sequence, knownIncarnation, generation, overwrite, baseEpoch: null, out _);

    /// <summary>
    /// <see cref="Offer(object, long, ReplicaWord, uint, uint, long, long, bool)"/>, for a resync that the owner would make
    /// incremental against epoch <paramref name="baseEpoch"/> (its dirty-region record is kept against it; null: none).
    /// <paramref name="whole"/>: the resync must copy everything — the replica is not the one the owner's record was kept
    /// against (another generation or epoch, empty, torn by a whole resync that did not finish, or kept by a boot that
    /// ended: a power loss may have lost copies its device had not flushed).
    /// </summary>
    public ReplicaAnswer Offer(object association, long incarnation, ReplicaWord word, uint epoch, uint sequence, long knownIncarnation, long generation, bool overwrite,
        uint? baseEpoch, out bool whole)
    {
        whole = true;
        lock (_lock)
        {
            if (_taking > 0) return ReplicaAnswer.NotNow;
            if (knownIncarnation != 0 && incarnation != knownIncarnation) return ReplicaAnswer.Stale;
            if (incarnation == OwnerIncarnation && sequence <= Sequence) return ReplicaAnswer.Stale;
            if (incarnation != OwnerIncarnation) ResetLocked(incarnation);
            // Torn data (a resync that never finished) is refused as well: outside the regions that resync had left, it
            // is the last copy of what it held.
            if (word == ReplicaWord.Resyncing && generation != 0 && _held.Generation != 0 && _held.Generation != generation && !overwrite)
                return ReplicaAnswer.Refused;
            Word = word;
            _epoch = epoch;
            Sequence = sequence;
            SinceUtc = DateTime.UtcNow;
            _wordFrom = association;
            _wholeUntil = 0; // an in-sync word holds from its first renewal on
            if (word == ReplicaWord.Resyncing)
            {
                // Incremental only over the replica the owner's record was kept against: then it stays a base (torn only
                // where the owner's record marks); a whole resync is a base again once it ends.
                // The same resync announced again (its answer was lost, or the owner restarted before its record named
                // the epoch) is still incremental: the replica has had copies of that epoch only, each marked first.
                whole = _deviceFailed || !(baseEpoch is uint b && !overwrite && generation != 0 && _held.Base && _held.Generation == generation
                          && (_held.Epoch == b || (_held.Epoch == epoch && !_held.Consistent)));
                if (whole) _deviceFailed = false; // this resync copies everything
                // Torn from now until the resync ends: whatever it held is being replaced by this generation's data.
                _held = new ReplicaHolds(generation, false, epoch, !whole);
            }
            else if (word == ReplicaWord.InSync && generation == _held.Generation)
            {
                _held = _held with { Consistent = true, Base = !_deviceFailed && (_held.Base || epoch == _held.Epoch) };
            }
            return ReplicaAnswer.Applied;
        }
    }

    /// <summary>
    /// The replica's device failed a copy: what it holds may differ from the owner's data anywhere, so it is no base for
    /// an incremental resync (kept in the record at the next word that changes it). Any thread.
    /// </summary>
    public void DeviceFailed()
    {
        lock (_lock)
        {
            _deviceFailed = true;
            if (!_held.Base) return;
            _held = _held with { Base = false };
            // Kept before the failed copy is answered (on the reactor: a rare error path), so that a restart of this node
            // before the next word still asks for everything.
            if (HoldsPath == null) return;
            try { ReplicaHoldsFile.Save(HoldsPath, _held); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { SaveFailed = e.Message; }
        }
    }

    // A copy the replica's device failed since the last whole resync began: no base, whatever the owner says, until one
    // copies everything.
    private bool _deviceFailed;

    /// <summary>
    /// Why keeping the record after a device failure failed (null: it did not, or a later save succeeded): the record may
    /// still call the replica a base. The next word from the owner saves it again (<see cref="RecordSaved"/>); shown in
    /// cluster_get_status (<c>record_error</c>).
    /// </summary>
    public string? SaveFailed { get; private set; }

    /// <summary>The record was written with <paramref name="saved"/>: an earlier failure is mended if that is what is held now.</summary>
    public void RecordSaved(ReplicaHolds saved)
    {
        lock (_lock)
            if (_held == saved) SaveFailed = null;
    }

    /// <summary>
    /// The owner restarted (another incarnation): nothing it said before holds; its replica is not whole. While this node
    /// asks the witness to take the replica over (<see cref="BeginTake"/>) the reset waits for the end of the ask: what is
    /// known is what the owner's last incarnation left, which a takeover may serve (the owner died then).
    /// </summary>
    public void Reset(long incarnation)
    {
        lock (_lock)
        {
            if (_taking > 0) _resetAfterTake = incarnation;
            else ResetLocked(incarnation);
        }
    }

    private int _taking;
    private long? _resetAfterTake;

    /// <summary>Whether this node is asking the witness to take the replica over (its knowledge frozen).</summary>
    public bool Taking
    {
        get { lock (_lock) return _taking > 0; }
    }

    /// <summary>
    /// This node asks the witness for the group (docs/ha.md, "The witness", the partner's side): until <see cref="EndTake"/>, no word of
    /// the owner is applied (each is answered <see cref="ReplicaAnswer.NotNow"/>, and the owner says it again), and a
    /// restart of the owner is applied at the end — so that what the takeover checks once the witness has granted is what
    /// it checked before asking. Without it, an "out of sync" the keeper acknowledged during the ask would let the owner
    /// complete writes the replica lacks without the witness, and a takeover granted then would have to be declined,
    /// the witness keeping a term nobody serves. Lease renewals still apply (they only say the replica stayed whole).
    /// </summary>
    public void BeginTake()
    {
        lock (_lock) _taking++;
    }

    /// <summary>Ends <see cref="BeginTake"/>: words are applied again, and an owner's restart heard meanwhile now.</summary>
    public void EndTake()
    {
        lock (_lock)
        {
            if (_taking == 0 || --_taking > 0 || _resetAfterTake is not long incarnation) return;
            _resetAfterTake = null;
            if (incarnation != OwnerIncarnation) ResetLocked(incarnation);
        }
    }

    private void ResetLocked(long incarnation)
    {
        OwnerIncarnation = incarnation;
        Word = ReplicaWord.OutOfSync;
        _epoch = 0;
        Sequence = 0;
        SinceUtc = DateTime.UtcNow;
        _wordFrom = null;
        _wholeUntil = 0;
    }

    /// <summary>
    /// The owner's heartbeat on <paramref name="association"/> renews its "in sync" word number <paramref name="sequence"/>,
    /// said on that association, until <paramref name="untilTicks"/> (this node's clock, converted once by the owner and
    /// earlier by its uncertainty). A lease that lapsed (its renewals came late) is renewed all the same: the owner names
    /// this word only while every write it has completed is on the replica, and the deadline was fixed when it sent the
    /// heartbeat, so a renewal never reaches past the time the owner may stop counting on this node's trust.
    /// </summary>
    public void Renew(object association, uint sequence, long untilTicks)
    {
        lock (_lock)
        {
            if (Word != ReplicaWord.InSync || Sequence != sequence || !ReferenceEquals(_wordFrom, association)) return;
            if (untilTicks > _wholeUntil) _wholeUntil = untilTicks;
        }
    }

    /// <summary>
    /// Whether a copy of epoch <paramref name="epoch"/> that came on <paramref name="association"/> may run on the replica:
    /// only one of the current epoch, on the association the owner's last word came on (a copy from an association or an
    /// epoch that is over — delivered late, behind a stalled reactor — would undo what came after it), and not once the
    /// owner has said the replica is out of sync.
    /// </summary>
    public bool AcceptsCopy(object? association, uint epoch)
    {
        lock (_lock) return Word != ReplicaWord.OutOfSync && epoch == _epoch && association != null && ReferenceEquals(association, _wordFrom);
    }
}

/// <summary>
/// What a replica in a file holds (its owner's data generation, and whether its last resync finished), kept in the
/// state directory beside the reservations: written to a temporary file, flushed to the device, renamed over the old
/// one, so a crash leaves the old record or the new.
/// </summary>
public static class ReplicaHoldsFile
{
    /// <summary>
    /// The record (<c>GENERATION consistent|torn EPOCH base|whole BOOT</c>; a record of an older version has the first two
    /// only). A record kept by another boot of the machine is no base for an incremental resync: copies acknowledged and
    /// not yet flushed by the device may have been lost with the power.
    /// </summary>
    public static ReplicaHolds Load(string path)
    {
        if (!File.Exists(path)) return default;
        string[] parts = File.ReadAllText(path).Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length is not (2 or 5) || !long.TryParse(parts[0], System.Globalization.NumberStyles.HexNumber, null, out long g)
            || parts.Length == 5 && (!uint.TryParse(parts[2], out _) || !Guid.TryParse(parts[4], out _)))
            throw new InvalidDataException($"{path}: not a replica record (expected 'GENERATION consistent|torn EPOCH base|whole BOOT')");
        if (parts.Length == 2) return new ReplicaHolds(g, parts[1] == "consistent", 0, false);
        bool sameBoot = Guid.Parse(parts[4]) == BootId.Current && BootId.Current != Guid.Empty;
        return new ReplicaHolds(g, parts[1] == "consistent", uint.Parse(parts[2]), parts[3] == "base" && sameBoot);
    }

    public static void Save(string path, ReplicaHolds holds)
        => StateFile.Replace(path, System.Text.Encoding.ASCII.GetBytes(
            $"{holds.Generation:x16} {(holds.Consistent ? "consistent" : "torn")} {holds.Epoch} {(holds.Base ? "base" : "whole")} {BootId.Current}\n"));
}

/// <summary>
/// What a replica holds: its owner's data generation (0: nothing), whether its last resync finished, that resync's epoch,
/// and whether the replica is a base for an incremental resync against it (it differs from the owner's data only where
/// the owner's dirty-region record marks).
/// </summary>
public readonly record struct ReplicaHolds(long Generation, bool Consistent, uint Epoch, bool Base);
