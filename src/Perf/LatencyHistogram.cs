using System.Diagnostics;
using System.Numerics;

namespace StorageNode.Perf;

/// <summary>
/// Log-linear latency histogram over nanoseconds: 64 sub-buckets per power of two (under 1.6 % error),
/// fixed size, no allocation when recording.
/// </summary>
public sealed class LatencyHistogram
{
    private const int SubBits = 6;
    private const int Sub = 1 << SubBits;
    private readonly long[] _counts = new long[64 * Sub];

    public long Count { get; private set; }
    public long MaxNs { get; private set; }
    public long MinNs { get; private set; } = long.MaxValue;
    public double SumNs { get; private set; }

    public static long TicksToNs(long ticks) => (long)(ticks * (1_000_000_000.0 / Stopwatch.Frequency));

    public void Record(long ns)
    {
        if (ns < 0) ns = 0;
        _counts[Index(ns)]++;
        Count++;
        SumNs += ns;
        if (ns > MaxNs) MaxNs = ns;
        if (ns < MinNs) MinNs = ns;
    }

    private static int Index(long v)
    {
        if (v < Sub) return (int)v;
        int msb = 63 - BitOperations.LeadingZeroCount((ulong)v);
        int shift = msb - SubBits;
        return ((shift + 1) << SubBits) + (int)((v >> shift) & (Sub - 1));
    }

    private static long Lower(int index)
    {
        if (index < Sub) return index;
        int shift = (index >> SubBits) - 1;
        long mant = (index & (Sub - 1)) | Sub;
        return mant << shift;
    }

    public void Add(LatencyHistogram other)
    {
        for (int i = 0; i < _counts.Length; i++) _counts[i] += other._counts[i];
        Count += other.Count;
        SumNs += other.SumNs;
        MaxNs = Math.Max(MaxNs, other.MaxNs);
        MinNs = Math.Min(MinNs, other.MinNs);
    }

    public double MeanNs => Count == 0 ? 0 : SumNs / Count;

    /// <summary>The latency below which <paramref name="percentile"/> % of samples fall.</summary>
    public long Percentile(double percentile)
    {
        if (Count == 0) return 0;
        long target = (long)Math.Ceiling(Count * percentile / 100.0);
        long seen = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            seen += _counts[i];
            if (seen >= target) return Math.Min(Lower(i + 1) - 1, MaxNs);
        }
        return MaxNs;
    }
}
