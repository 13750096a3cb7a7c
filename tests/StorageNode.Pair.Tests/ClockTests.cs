using StorageNode.Nvme.Host;
using StorageNode.Pair;

namespace StorageNode.Pair.Tests;

/// <summary>
/// Two machines' monotonic clocks share nothing. These run the pair with node B's clock offset by hours
/// (<c>Cluster:ClockOffsetSeconds</c>), which an in-process pair on one clock would hide.
/// </summary>
public class ClockTests
{
    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    [InlineData(PairRigs.OneProcess, 3 * 3600)]
    [InlineData(PairRigs.OneProcess, -3 * 3600)]
    public void RelayedIoWorksBothWaysWithTheClocksHoursApart(string kind, int clockOffsetB)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB);
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost a = pair.Connect(pair.EndpointA, hostId);
        using NvmeHost b = pair.Connect(pair.EndpointB, Guid.NewGuid());
        var data = new byte[8192];
        new Random(clockOffsetB + kind.Length).NextBytes(data);
        var back = new byte[8192];
        // B relays to A (NSID 1), A relays to B (NSID 2).
        var st = b.IoQueues[0].Write(1, 64, 16, data);
        Assert.True(st.IsSuccess, $"relayed write through B: {st}");
        Assert.True(b.IoQueues[0].Read(1, 64, 16, back).IsSuccess);
        Assert.Equal(data, back);
        Assert.True(a.IoQueues[0].Write(2, 64, 16, data).IsSuccess);
        Array.Clear(back);
        Assert.True(a.IoQueues[0].Read(2, 64, 16, back).IsSuccess);
        Assert.Equal(data, back);
    }

    [Fact]
    public void TheOneConversionIsConservativeAndExact()
    {
        var owner = new PairClock(TimeSpan.FromHours(5));
        var proxy = new PairClock(TimeSpan.FromHours(-2));
        // The proxy measures the owner's clock over a 200 µs round trip.
        long t0 = proxy.WireNow;
        long ownerReading = owner.WireNow;
        proxy.Sample(t0, ownerReading, t0 + 20);
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        long inOneSecond = now + System.Diagnostics.Stopwatch.Frequency;
        Assert.True(proxy.TryToPartner(inOneSecond, out OwnerDeadline d));
        // On the owner's own clock the deadline is about one second away, never later.
        long ownerTicks = owner.OwnDeadlineTicks(d, now);
        double seconds = (ownerTicks - now) / (double)System.Diagnostics.Stopwatch.Frequency;
        Assert.InRange(seconds, 0.99, 1.0 + 1e-3);
        Assert.False(owner.IsPast(d, now));
        Assert.True(owner.IsPast(d, inOneSecond + System.Diagnostics.Stopwatch.Frequency / 100));
        // Without a measurement there is no conversion at all.
        Assert.False(new PairClock().TryToPartner(inOneSecond, out _));
        // And back: a time the owner reports, as the latest local time it can be.
        long oneSecondAgo = now - System.Diagnostics.Stopwatch.Frequency;
        uint ownerThen = (uint)owner.Wire(oneSecondAgo);
        long local = proxy.FromPartnerLatest(ownerThen, now);
        double back = (now - local) / (double)System.Diagnostics.Stopwatch.Frequency;
        Assert.InRange(back, 1.0 - 1e-3, 1.0);
        Assert.Equal(now, new PairClock().FromPartnerLatest(ownerThen, now));
    }
}
