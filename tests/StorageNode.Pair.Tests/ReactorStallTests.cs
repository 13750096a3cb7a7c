using System.Diagnostics;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Pair;
using StorageNode.Target;
using static StorageNode.Testing.HostWrites;

namespace StorageNode.Pair.Tests;

/// <summary>
/// A reactor that stalls (a long GC pause, a stuck disk call) costs only its own connections (docs/ha.md, "A stalled
/// reactor"): the pair's control thread never waits on a reactor, so heartbeats, reconnects and the other reactors'
/// relays go on. Which connection lives on which reactor is pinned (<see cref="NvmfTarget.PlaceConnection"/>), so the
/// test knows what the stall holds.
/// </summary>
public class ReactorStallTests(ITestOutputHelper output)
{
    private const int HeartbeatTimeoutMs = 1000;

    /// <summary>
    /// B's reactor 1 stalls, and while it does, B's interconnect into A is lost and made again: B's control thread hands
    /// the new proxy queues to the reactors without waiting for them, so the link is up again at once for reactor 0 (its
    /// relays succeed) while reactor 1 takes its queue when it runs again; B's heartbeats never stop, and A never loses
    /// B. Depends on the heartbeat timeout (the stall lasts longer than two of them, measured on the test's clock) and
    /// the reconnect interval (100 ms, TestPair's default): the conditions are waited for, never slept for.
    /// </summary>
    [Fact]
    public void AStalledReactorNeitherHoldsTheInterconnectDownNorStopsHeartbeats()
    {
        var fast = new Dictionary<string, string?> { ["Cluster:HeartbeatTimeoutMs"] = HeartbeatTimeoutMs.ToString() };
        // Everything B accepts (A's interconnect association, the host) goes to B's reactor 0 unless the test says
        // otherwise: reactor 1 holds only B's own proxy queue and what is pinned there.
        int placeOnB = 0;
        using var pair = new TestPair(fast, fast, reactors: 2, beforeStart: (_, b) => b.Target.PlaceConnection = _ => Volatile.Read(ref placeOnB));
        pair.WaitHealthy();
        InterconnectLink linkB = pair.B.Pair!.Links[0], linkA = pair.A.Pair!.Links[0];
        using NvmeHost onR0 = pair.Connect(pair.EndpointB, Guid.NewGuid());
        Volatile.Write(ref placeOnB, 1);
        using NvmeHost onR1 = pair.Connect(pair.EndpointB, Guid.NewGuid());
        Volatile.Write(ref placeOnB, 0);
        Assert.True(Write(onR0.IoQueues[0], 0x10).IsSuccess);
        Assert.True(Write(onR1.IoQueues[0], 0x11, lba: 4096).IsSuccess);

        using var stalled = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        pair.B.Reactors[1].Post(() =>
        {
            stalled.Set();
            release.Wait(TimeSpan.FromSeconds(60)); // bounded: the test releases it long before
        });
        try
        {
            Assert.True(stalled.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "B's reactor 1 did not stall");
            long connectsB = linkB.ConnectCount, connectsA = linkA.ConnectCount;
            var clock = Stopwatch.StartNew();
            var unheard = new List<string>();
            void Sample()
            {
                if (!pair.A.Pair!.Membership.PartnerHeard) unheard.Add($"{clock.ElapsedMilliseconds} ms: A hears no heartbeat datagram from B");
                if (pair.A.Pair.Status != PartnerStatus.Healthy) unheard.Add($"{clock.ElapsedMilliseconds} ms: A's partner status is {pair.A.Pair.Status}");
            }

            // A closes B's association into it (as a lost connection would): B's link goes down and comes up again.
            Subsystem onA = pair.A.Target.FindSubsystem(TestPair.Nqn)!;
            pair.A.Pair!.Service.CloseInbound(onA, 0, "test: B's interconnect is lost");
            TestPair.WaitUntil(() => { Sample(); return linkB.IsUp && linkB.ConnectCount > connectsB; },
                "B's link to come up again while its reactor 1 is stalled", TimeSpan.FromSeconds(20));
            TestPair.WaitUntil(() => { Sample(); return pair.B.Pair.Status == PartnerStatus.Healthy; }, "B to report A healthy again", TimeSpan.FromSeconds(10));
            Assert.Equal(1, linkB.QueuesInstalled); // reactor 0's; reactor 1 is still stalled

            // Reactor 0's relays work, while reactor 1 still stalls.
            NvmeStatus st = WriteRetryingPathErrors(onR0.IoQueues[0], 0x20);
            Assert.True(st.IsSuccess, $"a relay on B's reactor 0: {st}\n{pair.Problems()}");

            // The stall outlasts two heartbeat timeouts; B's heartbeats keep reaching A all along.
            TestPair.WaitUntil(() => { Sample(); return clock.ElapsedMilliseconds > 2 * HeartbeatTimeoutMs; }, "two heartbeat timeouts", TimeSpan.FromSeconds(10));
            Assert.True(unheard.Count == 0, string.Join("\n", unheard.Take(10)) + $"\n{pair.Problems()}");
            Assert.Equal(connectsA, linkA.ConnectCount); // A's own link never went down
            Assert.Equal(connectsB + 1, linkB.ConnectCount);
        }
        finally
        {
            release.Set();
        }

        // Reactor 1 runs again: it takes its queue, and its host's relays work.
        TestPair.WaitUntil(() => linkB.QueuesInstalled == 2, "B's reactor 1 to take its proxy queue", TimeSpan.FromSeconds(10));
        NvmeStatus r1 = WriteRetryingPathErrors(onR1.IoQueues[0], 0x21, lba: 4096);
        output.WriteLine($"A:\n{pair.Log('A')}\nB:\n{pair.Log('B')}");
        Assert.True(r1.IsSuccess, $"a relay on B's reactor 1 after the stall: {r1}\n{pair.Problems()}");
        Assert.Equal(0x20, ReadTag(onR0.IoQueues[0]));
        Assert.Equal(0x21, ReadTag(onR1.IoQueues[0], lba: 4096));
    }

    /// <summary>
    /// B's reactor that serves A's interconnect association stalls for two heartbeat timeouts: A's interconnect
    /// heartbeat gets no answer, and A's link goes down and comes back (the one connection a stall on one node costs
    /// the other, docs/ha.md). But A's heartbeat datagrams keep flowing all along: they are sent from a thread of their
    /// own, not from the control thread that waits for the heartbeat's answer, so B never takes A for dead, and A sees B
    /// alive on the second channel (a dead link, not a dead partner). Depends on the heartbeat interval and timeout
    /// (TestPair's 100 ms and the 1 s here); conditions are waited for, not slept for.
    /// </summary>
    [Fact]
    public void AStalledPartnerReactorDoesNotSilenceTheHeartbeatChannel()
    {
        var fast = new Dictionary<string, string?> { ["Cluster:HeartbeatTimeoutMs"] = HeartbeatTimeoutMs.ToString() };
        // A's association into B lives on B's reactor 1, and nothing else accepted by B does.
        using var pair = new TestPair(fast, fast, reactors: 2, beforeStart: (_, b) => b.Target.PlaceConnection = l => l.Role == ListenerRole.Interconnect ? 1 : 0);
        pair.WaitHealthy();
        InterconnectLink linkA = pair.A.Pair!.Links[0];
        long connectsA = linkA.ConnectCount;
        using var stalled = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        pair.B.Reactors[1].Post(() =>
        {
            stalled.Set();
            release.Wait(TimeSpan.FromSeconds(60)); // bounded: released below
        });
        var unheard = new List<string>();
        var clock = Stopwatch.StartNew();
        try
        {
            Assert.True(stalled.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "B's reactor 1 did not stall");
            // A's heartbeat times out (its link goes down) while B keeps hearing A's datagrams.
            TestPair.WaitUntil(() =>
            {
                if (!pair.B.Pair!.Membership.PartnerHeard) unheard.Add($"{clock.ElapsedMilliseconds} ms: B hears no heartbeat datagram from A");
                return !linkA.IsUp && clock.ElapsedMilliseconds > 2 * HeartbeatTimeoutMs;
            }, "A's link to go down, and two heartbeat timeouts", TimeSpan.FromSeconds(20));
            TestPair.WaitUntil(() => pair.A.Pair.Status == PartnerStatus.InterconnectDown, "A to see B alive on the heartbeat channel", TimeSpan.FromSeconds(10));
            Assert.True(unheard.Count == 0, string.Join("\n", unheard.Take(10)) + $"\n{pair.Problems()}");
            Assert.NotEqual(PartnerStatus.PartnerDown, pair.B.Pair!.Status);
        }
        finally
        {
            release.Set();
        }
        TestPair.WaitUntil(() => linkA.IsUp && linkA.ConnectCount > connectsA, "A's link to come back after the stall", TimeSpan.FromSeconds(20));
        pair.WaitHealthy();
        Assert.DoesNotContain(pair.LogsB.Lines, l => l.Contains("silent on the interconnect and the heartbeat channel", StringComparison.Ordinal));
        Assert.DoesNotContain(pair.LogsA.Lines, l => l.Contains("silent on the interconnect and the heartbeat channel", StringComparison.Ordinal));
    }
}
