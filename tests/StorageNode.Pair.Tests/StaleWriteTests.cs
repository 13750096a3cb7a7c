using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using static StorageNode.Testing.HostWrites;

namespace StorageNode.Pair.Tests;

/// <summary>
/// No stale writes (docs/ha.md): a write relayed through the partner is held in flight, the host's path to the
/// partner is killed, the host retries on the owner and writes again, then the old copy is released. The old
/// copy must never land after the host holds a completion for the retry. The interconnect-only cases run with the
/// nodes in one process and as two processes with node B's clock hours off.
/// </summary>
public class StaleWriteTests
{
    [Fact]
    public void OldCopyHeldOnTheProxyIsDroppedWhenTheHostConnectionDies()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId);
        using NvmeHost viaB = pair.Connect(toB.Endpoint, hostId, new NvmeHostOptions { SendKeepAlive = false });
        IoQueue a = viaA.IoQueues[0], b = viaB.IoQueues[0];
        Assert.True(Write(a, 0x10).IsSuccess);

        pair.B.Pair!.Links[0].StallSends = true;           // the relayed write sits on B
        Pending old = Submit(b, 0x11);
        PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(300));
        Assert.False(old.Done);
        toB.Cut();                                          // the host's path to B dies
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(5));
        Assert.True(old.Done);
        Assert.False(old.Cqe.StatusField.IsSuccess);

        Assert.True(Write(a, 0x11).IsSuccess);             // the retry, on the owner
        Assert.True(Write(a, 0x12).IsSuccess);             // and a newer write
        pair.B.Pair!.Links[0].StallSends = false;          // release the old copy
        pair.WaitRelaysSettled();
        Assert.Equal(0x12, ReadTag(a));
    }

    /// <summary>
    /// The host relays once through B, then B's next relayed write is held on the interconnect while the host's path
    /// to B dies; the host then retries on the owner through an association made after its relay opened (as after a
    /// failover: one made before would be closed at its first I/O, since it could still carry old copies).
    /// </summary>
    private static (NvmeHost ViaB, NvmeHost ViaA, Pending Old) OldCopyOnTheInterconnect(IPairRig pair, TcpForwarder toB, byte tag)
    {
        Guid hostId = Guid.NewGuid();
        NvmeHost viaB = pair.Connect(toB.Endpoint, hostId, new NvmeHostOptions { SendKeepAlive = false });
        IoQueue b = viaB.IoQueues[0];
        // The host's first write through B opens its relay (a registration with A, then a relay open): it waits for
        // that, bounded by its relay deadline, and fails with a path status when the open takes longer (a loaded
        // machine, a short Cluster:RelayTimeoutMs); a multipath host retries it, as here.
        NvmeStatus first = WriteRetryingPathErrors(b, tag);
        Assert.True(first.IsSuccess, $"the host's first write through B: {first}\n{pair.Problems()}");
        NvmeHost viaA = pair.Connect(pair.EndpointA, hostId);
        pair.InterconnectBtoA.PauseUpstream = true;
        Pending old = Submit(b, (byte)(tag + 1));
        PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(300));
        Assert.False(old.Done);
        toB.Cut();
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(5));
        Assert.False(old.Cqe.StatusField.IsSuccess);
        return (viaB, viaA, old);
    }

    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void OldCopyInFlightOnTheInterconnectLandsBeforeTheRetryCompletes(string kind, int clockOffsetB)
    {
        var slow = new Dictionary<string, string?> { ["Cluster:HeartbeatTimeoutMs"] = "10000" };
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB, slow, slow);
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        (NvmeHost viaB, NvmeHost viaA, _) = OldCopyOnTheInterconnect(pair, toB, 0x20);
        using (viaB)
        using (viaA)
        {
            IoQueue a = viaA.IoQueues[0];
            // The retry on the owner waits for the old copy (it was sent: the drain counts it).
            Pending retry = Submit(a, 0x21);
            PollUntil(a, () => retry.Done, TimeSpan.FromMilliseconds(500));
            Assert.False(retry.Done, "the retry completed while the old copy was still in flight");
            pair.InterconnectBtoA.PauseUpstream = false;
            PollUntil(a, () => retry.Done, TimeSpan.FromSeconds(10));
            Assert.True(retry.Succeeded);
            Assert.True(Write(a, 0x22).IsSuccess);
            pair.WaitRelaysSettled();
            Assert.Equal(0x22, ReadTag(a));
            pair.WaitLogged('A', "commands now run through"); // (two processes: A's output is read as it comes)
        }
    }

    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void OldCopyPastItsDeadlineNeverStarts(string kind, int clockOffsetB)
    {
        var shortRelay = new Dictionary<string, string?> { ["Cluster:HeartbeatTimeoutMs"] = "20000", ["Cluster:RelayTimeoutMs"] = "800" };
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB, shortRelay, new Dictionary<string, string?>(shortRelay));
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        (NvmeHost viaB, NvmeHost viaA, _) = OldCopyOnTheInterconnect(pair, toB, 0x30);
        using (viaB)
        using (viaA)
        {
            IoQueue a = viaA.IoQueues[0];
            // The drain waits at most the relay timeout; then the retry and a newer write go ahead.
            Pending retry = Submit(a, 0x31);
            PollUntil(a, () => retry.Done, TimeSpan.FromSeconds(10));
            Assert.True(retry.Succeeded);
            Assert.True(Write(a, 0x32).IsSuccess);
            // Release the old copy long after its deadline: it must be refused, not executed.
            pair.InterconnectBtoA.PauseUpstream = false;
            pair.WaitRelaysSettled();
            Assert.Equal(0x32, ReadTag(a));
        }
    }
}
