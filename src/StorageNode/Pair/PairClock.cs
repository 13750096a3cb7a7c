using System.Diagnostics;

namespace StorageNode.Pair;

/// <summary>
/// A deadline on the owner's clock as it travels in CDW3 of a relayed command: units of 10 µs on the owner's
/// <see cref="PairClock"/> wire clock, modulo 2^32 (it wraps every 11.9 hours, so it is compared by signed
/// difference and is meaningful within ±5.9 hours of the owner's now).
/// </summary>
public readonly record struct OwnerDeadline(uint Units10Us);

/// <summary>
/// The node's clock as its partner sees it, and its estimate of the partner's. Two machines' monotonic clocks share
/// nothing, so a time that crosses the interconnect is converted exactly once, here: the node that relays turns its
/// local deadline into an <see cref="OwnerDeadline"/> (<see cref="TryToPartner"/>), and the owner only ever compares
/// that with its own clock (<see cref="OwnDeadlineTicks"/>). Everything else on a node stays in Stopwatch ticks.
/// </summary>
/// <remarks>
/// The "wire clock" is Stopwatch ticks in 10 µs units plus <c>Cluster:ClockOffsetSeconds</c> (0 in production): tests
/// run both nodes on one machine and offset one of them by hours, as two machines would be.
/// </remarks>
public sealed class PairClock
{
    private static readonly double UnitsPerTick = 100_000.0 / Stopwatch.Frequency;
    private static readonly double TicksPerUnit = Stopwatch.Frequency / 100_000.0;

    private readonly long _offsetUnits;
    // The partner's wire clock = this node's wire clock + _partnerOffset, within ± _uncertainty (10 µs units).
    private long _partnerOffset;
    private long _uncertainty = long.MaxValue;

    public PairClock(TimeSpan testOffset = default)
    {
        _offsetUnits = (long)(testOffset.TotalMilliseconds * 100);
    }

    /// <summary>A Stopwatch timestamp of this node on its wire clock (10 µs units).</summary>
    public long Wire(long stopwatchTicks) => (long)(stopwatchTicks * UnitsPerTick) + _offsetUnits;

    public long WireNow => Wire(Stopwatch.GetTimestamp());

    /// <summary>True once a heartbeat has measured the partner's clock.</summary>
    public bool HasPartnerEstimate => Interlocked.Read(ref _uncertainty) != long.MaxValue;

    /// <summary>The estimate: partner's wire clock minus this node's (10 µs units), and its uncertainty (± units).</summary>
    public (long Offset, long Uncertainty) PartnerEstimate => (Interlocked.Read(ref _partnerOffset), Interlocked.Read(ref _uncertainty));

    /// <summary>
    /// One measurement of the partner's clock: this node's wire clock when the request left and when the answer came
    /// back, and the partner's reading in between. Keeps the sample with the smallest uncertainty, letting an old one
    /// age by one unit per sample so that drift is followed.
    /// </summary>
    public void Sample(long sentWire, long partnerWire, long receivedWire)
    {
        long rtt = receivedWire - sentWire;
        if (rtt < 0) return;
        long offset = partnerWire - (sentWire + receivedWire) / 2;
        long unc = rtt / 2 + 1;
        long aged = Interlocked.Read(ref _uncertainty);
        if (aged != long.MaxValue) aged += 1;
        if (unc <= aged)
        {
            Interlocked.Exchange(ref _partnerOffset, offset);
            Interlocked.Exchange(ref _uncertainty, unc);
        }
        else
        {
            Interlocked.Exchange(ref _uncertainty, aged);
        }
    }

    /// <summary>Forgets the partner's clock (a new partner incarnation).</summary>
    public void ResetPartner() => Interlocked.Exchange(ref _uncertainty, long.MaxValue);

    /// <summary>
    /// The one conversion between the nodes' clocks: a local deadline (Stopwatch ticks) as a deadline on the partner's
    /// clock, earlier by the estimate's uncertainty (the partner refuses rather than risks). False without an estimate.
    /// </summary>
    public bool TryToPartner(long localDeadlineTicks, out OwnerDeadline deadline)
    {
        long unc = Interlocked.Read(ref _uncertainty);
        if (unc == long.MaxValue)
        {
            deadline = default;
            return false;
        }
        deadline = new OwnerDeadline((uint)(Wire(localDeadlineTicks) + Interlocked.Read(ref _partnerOffset) - unc));
        return true;
    }

    /// <summary>
    /// The other conversion, for a time the partner reports (its wire clock, 10 µs units modulo 2^32, within ±5.9 h
    /// of now): as a local Stopwatch timestamp, later by the estimate's uncertainty (never earlier than the true
    /// time). Without an estimate: <paramref name="nowTicks"/> (the latest it can be).
    /// </summary>
    public long FromPartnerLatest(uint partnerWire, long nowTicks)
    {
        long unc = Interlocked.Read(ref _uncertainty);
        if (unc == long.MaxValue) return nowTicks;
        uint partnerNow = (uint)(Wire(nowTicks) + Interlocked.Read(ref _partnerOffset));
        long ageUnits = (int)(partnerNow - partnerWire) - unc;
        return ageUnits <= 0 ? nowTicks : nowTicks - (long)(ageUnits * TicksPerUnit);
    }

    /// <summary>
    /// On the owner: a deadline the partner wrote on this node's own clock, as a Stopwatch timestamp of this node (a
    /// change of unit, not of clock).
    /// </summary>
    public long OwnDeadlineTicks(OwnerDeadline deadline, long nowTicks)
    {
        int remainingUnits = (int)(deadline.Units10Us - (uint)Wire(nowTicks));
        return nowTicks + (long)(remainingUnits * TicksPerUnit);
    }

    /// <summary>True when the owner-clock deadline has passed on this (the owner's) clock.</summary>
    public bool IsPast(OwnerDeadline deadline, long nowTicks) => (int)(deadline.Units10Us - (uint)Wire(nowTicks)) < 0;
}
