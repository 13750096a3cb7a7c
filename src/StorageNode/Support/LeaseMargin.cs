namespace StorageNode.Support;

/// <summary>How much sooner than its length a lease stops counting, for the rate drift between two machines' clocks.</summary>
public static class LeaseMargin
{
    /// <summary>The margin for a lease of <paramref name="leaseTicks"/> Stopwatch ticks: 5 % of it, and 1 ms.</summary>
    public static long Ticks(long leaseTicks) => leaseTicks / 20 + System.Diagnostics.Stopwatch.Frequency / 1000;
}
