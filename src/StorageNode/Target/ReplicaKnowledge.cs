namespace StorageNode.Target;

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

    /// <summary>Whole: the owner's last word is "in sync" and its lease has not expired.</summary>
    public bool IsWhole(long nowTicks)
    {
        lock (_lock) return Word == ReplicaWord.InSync && nowTicks < _wholeUntil;
    }

    /// <summary>
    /// The owner's word on association <paramref name="association"/>. Applied (true) when it comes from the incarnation
    /// known (or a new one: what was known is reset first) with a sequence number above the last applied.
    /// </summary>
    public bool Apply(object association, long incarnation, ReplicaWord word, uint epoch, uint sequence)
    {
        lock (_lock)
        {
            if (incarnation != OwnerIncarnation) ResetLocked(incarnation);
            else if (sequence <= Sequence) return false;
            Word = word;
            _epoch = epoch;
            Sequence = sequence;
            SinceUtc = DateTime.UtcNow;
            _wordFrom = association;
            _wholeUntil = 0; // an in-sync word holds from the next renewal on
            return true;
        }
    }

    /// <summary>The owner restarted (another incarnation): nothing it said before holds; its replica is not whole.</summary>
    public void Reset(long incarnation)
    {
        lock (_lock) ResetLocked(incarnation);
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
    /// The owner's heartbeat on <paramref name="association"/> renews an in-sync word said on that association, until
    /// <paramref name="untilTicks"/> (this node's clock, converted once by the owner and earlier by its uncertainty).
    /// </summary>
    public void Renew(object association, long untilTicks)
    {
        lock (_lock)
        {
            if (Word == ReplicaWord.InSync && ReferenceEquals(_wordFrom, association) && untilTicks > _wholeUntil) _wholeUntil = untilTicks;
        }
    }

    /// <summary>
    /// Whether a copy of epoch <paramref name="epoch"/> may run on the replica: not one older than the last word's
    /// epoch (it belongs to an association or a resync that is over, and would undo what came after it).
    /// </summary>
    public bool AcceptsCopy(uint epoch) => (int)(epoch - _epoch) >= 0;
}
