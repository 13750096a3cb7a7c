namespace StorageNode.Bdevs;

/// <summary>What <see cref="IoStats"/> counts: commands that completed successfully and their bytes, by kind, and failures.</summary>
public enum IoStat
{
    ReadOps, BytesRead, WriteOps, BytesWritten, WriteZeroesOps, BytesZeroed, UnmapOps, BytesUnmapped,
    CopyOps, BytesCopied, FlushOps, CompareOps, Errors,
}

/// <summary>
/// What one bdev has done, as SPDK's <c>bdev_get_iostat</c> reports it (<see cref="IoStat"/>). One slot per reactor,
/// written only on that reactor (plain increments, no atomics on the I/O path); readers sum the slots. Counted when a
/// command completes (<see cref="Target.NvmfRequest.Complete"/>), whether it ran here or was relayed to the partner.
/// </summary>
public sealed class IoStats
{
    /// <summary>As many slots as a node may have reactors (<c>Node:Reactors</c>).</summary>
    public const int MaxReactors = 64;
    private const int Kinds = (int)IoStat.Errors + 1;
    // Counts, then padding: slots of two reactors never share a cache line.
    private const int SlotLength = Kinds + 8;
    private readonly long[]?[] _slots = new long[]?[MaxReactors];

    /// <summary>The counts of one reactor, indexed by <see cref="IoStat"/> (made on the reactor's first command, then kept).</summary>
    public long[] For(int reactorId) => _slots[reactorId] ?? Create(reactorId);

    private long[] Create(int reactorId)
    {
        var s = new long[SlotLength];
        return Interlocked.CompareExchange(ref _slots[reactorId], s, null) ?? s;
    }

    /// <summary>One count summed over every reactor (a command completing meanwhile may be in one count and not another).</summary>
    public long this[IoStat stat]
    {
        get
        {
            long sum = 0;
            foreach (long[]? s in _slots)
                if (s != null) sum += Volatile.Read(ref s[(int)stat]);
            return sum;
        }
    }
}
