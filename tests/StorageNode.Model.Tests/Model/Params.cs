using System.Diagnostics;

namespace StorageNode.Model.Tests.Model;

/// <summary>A bug seeded on purpose: the model must find each (docs/ha.md, "The model").</summary>
public enum SeededBug
{
    None,
    /// <summary>The owner's self-fence runs one heartbeat interval late (a heartbeat timeout and an interval without an answer).</summary>
    FenceOneIntervalLate,
    /// <summary>The owner never fences itself.</summary>
    NeverFence,
    /// <summary>The witness grants a take while the owner's lease still runs (it decides as if a lease had passed).</summary>
    WitnessGrantsEarly,
    /// <summary>An owner whose keeper's lease expired completes the held writes without the witness's alone record.</summary>
    AloneWithoutWitness,
    /// <summary>The keeper takes words of another incarnation (a restarted owner's old self, delivered late): it neither checks nor resets.</summary>
    KeeperTakesOtherIncarnation,
    /// <summary>
    /// The takeover as it was before the fix: the keeper's knowledge is not frozen while it asks the witness (the owner's
    /// words apply meanwhile), the partner's associations are not refused meanwhile, and a grant is checked as of the
    /// partner's last sign of life after the grant.
    /// </summary>
    NoFreezeDuringTake,
    /// <summary>
    /// The fix's first step alone: the knowledge frozen and the grant checked as of before the ask, but the partner's new
    /// associations not refused meanwhile (a restarted owner, confirmed by the asking node's descriptor, serves writes the
    /// replica lacks while that node's reset of its knowledge waits).
    /// </summary>
    NoRefusalDuringTake,
}

/// <summary>The failures one test explores: each is a kind of fault the world may inject, at times it chooses.</summary>
[Flags]
public enum Faults
{
    None = 0,
    /// <summary>The owner (A) crashes, and may start again later (its kept term, data and replica record survive).</summary>
    OwnerCrash = 1,
    /// <summary>The keeper (B) crashes, and may start again later.</summary>
    KeeperCrash = 2,
    /// <summary>The interconnect and the heartbeat datagrams between A and B are cut (both still reach the witness).</summary>
    PairPartition = 4,
    /// <summary>A is cut off from the witness (alone, or together with <see cref="PairPartition"/>: A isolated).</summary>
    OwnerWitnessPartition = 8,
    /// <summary>B is cut off from the witness.</summary>
    KeeperWitnessPartition = 16,
    /// <summary>The witness crashes, and starts again later from its state file.</summary>
    WitnessCrash = 32,
    /// <summary>Only the interconnect is cut (the heartbeat datagrams still pass).</summary>
    InterconnectOnly = 64,
    /// <summary>Only the heartbeat datagrams are cut.</summary>
    DatagramsOnly = 128,
    /// <summary>A failure heals after a while (partitions end, a crashed node or witness starts again).</summary>
    Heal = 256,
}

/// <summary>Timers of the modelled pair (scaled: the product's default interval is 100 ms, timeout 1 s, witness lease 1.5 s).</summary>
public static class P
{
    public static readonly long F = Stopwatch.Frequency;
    public static long Ms(long ms) => ms * F / 1000;

    public const int IntervalMs = 100;       // Cluster:HeartbeatIntervalMs
    public const int TimeoutMs = 400;        // Cluster:HeartbeatTimeoutMs (and the keeper's lease)
    public const int WitnessLeaseMs = 600;   // Witness:LeaseMs (above the heartbeat timeout, as the docs advise)
    public const int ReconnectMs = 200;      // Cluster:ReconnectIntervalMs
    public const int Blocks = 2;             // the namespace's blocks, each written with increasing versions
    public const long Generation = 7;        // the owner's data generation (its data survives restarts: a file)

    public static long Interval => Ms(IntervalMs);
    public static long Timeout => Ms(TimeoutMs);
}
