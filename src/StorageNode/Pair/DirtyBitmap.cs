using System.Numerics;

namespace StorageNode.Pair;

/// <summary>
/// The regions of a namespace its replica may lack (<see cref="NamespaceMirror"/>): one bit per region, set by any
/// reactor as writes miss the replica, taken by a resync. One array for its whole life: a take exchanges each word
/// with zero, so a bit set at the same moment lands either in what is taken or in what stays; none is lost (an array
/// swapped for a fresh one lost the bits set into the old one after the taker had read them).
/// </summary>
public sealed class DirtyBitmap
{
    private readonly long[] _words;

    public DirtyBitmap(int regions)
    {
        if (regions < 0) throw new ArgumentOutOfRangeException(nameof(regions));
        Regions = regions;
        _words = new long[(regions + 63) / 64];
    }

    public int Regions { get; }

    /// <summary>Marks regions <paramref name="first"/> to <paramref name="last"/> (inclusive; clipped to the bitmap). Any thread.</summary>
    public void Mark(ulong first, ulong last)
    {
        for (ulong r = first; r <= last && r < (ulong)Regions; r++) Interlocked.Or(ref _words[r >> 6], 1L << (int)(r & 63));
    }

    /// <summary>Marks every region. Any thread.</summary>
    public void MarkAll()
    {
        for (int i = 0; i < _words.Length; i++) Interlocked.Exchange(ref _words[i], TailMask(i));
    }

    /// <summary>Takes the marked regions (clearing them); what is marked from now on stays for the next take. Any thread.</summary>
    public long[] Take()
    {
        var taken = new long[_words.Length];
        for (int i = 0; i < _words.Length; i++)
            if (Volatile.Read(ref _words[i]) != 0) taken[i] = Interlocked.Exchange(ref _words[i], 0);
        return taken;
    }

    /// <summary>Marks again regions taken and not done (a resync that did not finish). Any thread.</summary>
    public void GiveBack(long[] taken)
    {
        for (int i = 0; i < taken.Length && i < _words.Length; i++)
            if (taken[i] != 0) Interlocked.Or(ref _words[i], taken[i]);
    }

    /// <summary>Whether region <paramref name="region"/> is marked now. Any thread.</summary>
    public bool IsMarked(ulong region) => region < (ulong)Regions && (Volatile.Read(ref _words[region >> 6]) & (1L << (int)(region & 63))) != 0;

    /// <summary>Regions marked now (approximate while others mark).</summary>
    public int Count
    {
        get
        {
            int n = 0;
            for (int i = 0; i < _words.Length; i++) n += BitOperations.PopCount((ulong)Volatile.Read(ref _words[i]));
            return n;
        }
    }

    /// <summary>Whether region <paramref name="region"/> is set in <paramref name="taken"/> (a result of <see cref="Take"/>).</summary>
    public static bool IsSet(long[] taken, ulong region) => (region >> 6) < (ulong)taken.Length && (taken[region >> 6] & (1L << (int)(region & 63))) != 0;

    /// <summary>Regions set in <paramref name="taken"/>.</summary>
    public static int CountOf(long[] taken)
    {
        int n = 0;
        foreach (long w in taken) n += BitOperations.PopCount((ulong)w);
        return n;
    }

    /// <summary>The bits of word <paramref name="i"/> that stand for regions (the last word may be partial).</summary>
    private long TailMask(int i)
    {
        int bits = Math.Min(64, Regions - i * 64);
        return bits >= 64 ? -1L : (1L << bits) - 1;
    }
}
