using System.Net;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Pair;
using static StorageNode.Testing.HostWrites;

namespace StorageNode.Pair.Tests;

/// <summary>
/// The stale-write fence across the pair (docs/ha.md): a host writes through one path, abandons it while a copy may
/// still be on its way, retries on the other and writes something newer; the old copy must never land afterwards.
/// Each test names the defect of issue 12 it covers.
/// </summary>
public class FenceTests(ITestOutputHelper output)
{
    private static Dictionary<string, string?> Slow(string relayMs = "3000") => new()
    {
        ["Cluster:HeartbeatTimeoutMs"] = "10000", ["Cluster:RelayTimeoutMs"] = relayMs,
    };

    /// <summary>Defect 2: with two subsystems the owner must drain the relays of the subsystem the host switched in.</summary>
    [Fact]
    public void TheDrainWaitsForTheRelaysOfTheRightSubsystem()
    {
        using var pair = new TestPair(Slow(), Slow(), subsystems: 2);
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        Guid hostId = Guid.NewGuid();
        using NvmeHost a1 = pair.Connect(pair.EndpointA, hostId, nqn: TestPair.Nqn);
        using NvmeHost b2 = pair.Connect(toB.Endpoint, hostId, new NvmeHostOptions { SendKeepAlive = false }, nqn: TestPair.Nqn2);
        IoQueue b = b2.IoQueues[0];
        Assert.True(Write(a1.IoQueues[0], 0x01).IsSuccess); // the host is active on subsystem 1 too
        Assert.True(Write(b, 0x20).IsSuccess);               // relay open on subsystem 2
        // The host reaches the owner on an association made after its relay opened (as after a failover): one made
        // before would be closed at its first I/O, since it could still carry old copies (docs/ha.md).
        using NvmeHost a2 = pair.Connect(pair.EndpointA, hostId, nqn: TestPair.Nqn2);
        IoQueue a = a2.IoQueues[0];
        pair.InterconnectBtoA.PauseUpstream = true;          // B's next relay sits on the interconnect
        Pending old = Submit(b, 0x21);
        PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(300));
        Assert.False(old.Done);
        toB.Cut();
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(5));

        Pending retry = Submit(a, 0x21);
        PollUntil(a, () => retry.Done, TimeSpan.FromMilliseconds(700));
        bool early = retry.Done;
        pair.InterconnectBtoA.PauseUpstream = false;
        PollUntil(a, () => retry.Done, TimeSpan.FromSeconds(10));
        Assert.True(retry.Succeeded);
        Assert.True(Write(a, 0x22).IsSuccess);
        pair.WaitRelaysSettled(); // the old copy has run or been refused: it cannot land later
        byte tag = ReadTag(a);
        output.WriteLine("A:\n" + string.Join("\n", pair.LogsA.Lines) + "\nB:\n" + string.Join("\n", pair.LogsB.Lines));
        Assert.False(early, "the retry completed while the old copy was still on the interconnect");
        Assert.Equal(0x22, tag);
    }

    /// <summary>
    /// Defect 3: the proxy's own link went down (its registrations with it) while a relayed write it already sent sits
    /// on the interconnect; the owner still has the old association. The proxy must not answer "nothing in flight":
    /// it says it has no association, and the owner closes what it still has of the partner before the retry runs.
    /// </summary>
    [Fact]
    public void AProxyWhoseLinkIsDownNeverAnswersNothingInFlight()
    {
        // B's link goes down a heartbeat timeout (TestPair's 2 s) after its capsules stop; A's (10 s) outlasts the test.
        using var pair = new TestPair(Slow(), new Dictionary<string, string?>());
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaB = pair.Connect(toB.Endpoint, hostId, new NvmeHostOptions { SendKeepAlive = false });
        IoQueue b = viaB.IoQueues[0];
        NvmeStatus first = Write(b, 0x80);
        Assert.True(first.IsSuccess, $"{first}\n{pair.Problems()}");
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId);
        IoQueue a = viaA.IoQueues[0];
        pair.InterconnectBtoA.PauseUpstream = true;         // B's capsules (the write, its heartbeats) stop on the way
        Pending old = Submit(b, 0x81);
        TestPair.WaitUntil(() => !pair.B.Pair!.Links[0].IsUp, "B's link to go down (its heartbeat timeout)", TimeSpan.FromSeconds(20));
        toB.Cut();
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(5));
        Assert.True(Write(a, 0x81).IsSuccess);              // the retry: B's drain answer closes A's old association
        Assert.True(Write(a, 0x82).IsSuccess);
        Assert.Contains("the partner's link is down", pair.Log('A'));
        pair.InterconnectBtoA.PauseUpstream = false;         // the old copy is released: it has nowhere to land
        pair.WaitRelaysSettled();
        Assert.Equal(0x82, ReadTag(a));
    }

    /// <summary>Defect 4: a relay held on the proxy while the host's connection still looks alive (a half-open path).</summary>
    [Fact]
    public void ARelayHeldOnTheProxyWhileTheHostLooksAliveNeverLandsAfterTheRetry()
    {
        using var pair = new TestPair(Slow(), Slow());
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaB = pair.Connect(pair.EndpointB, hostId);
        IoQueue b = viaB.IoQueues[0];
        Assert.True(Write(b, 0x40).IsSuccess);
        // The host reaches the owner on an association made after its relay opened (as after a failover): one made
        // before would be closed at its first I/O, since it could still carry old copies (docs/ha.md).
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId);
        IoQueue a = viaA.IoQueues[0];
        pair.B.Pair!.Links[0].StallSends = true;         // the next relay waits on B
        Pending old = Submit(b, 0x41);
        PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(300));
        Assert.False(old.Done);
        // The host gives up on B without closing anything (B still sees a live connection) and retries on A.
        Assert.True(Write(a, 0x41).IsSuccess);
        Assert.True(Write(a, 0x42).IsSuccess);
        pair.B.Pair!.Links[0].StallSends = false;
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(10));
        pair.WaitRelaysSettled();
        output.WriteLine($"old copy completed: {old.Done} {old.Cqe.StatusField}");
        Assert.Equal(0x42, ReadTag(a));
    }

    /// <summary>Defect 4: a command that waited in the proxy's socket while its reactor was stalled.</summary>
    [Fact]
    public void ACommandStuckBehindAStalledProxyReactorNeverLandsAfterTheRetry()
    {
        using var pair = new TestPair(Slow("800"), Slow("800"));
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaB = pair.Connect(pair.EndpointB, hostId, new NvmeHostOptions { SendKeepAlive = false });
        IoQueue b = viaB.IoQueues[0];
        Assert.True(Write(b, 0x50).IsSuccess);
        // The host reaches the owner on an association made after its relay opened (as after a failover): one made
        // before would be closed at its first I/O, since it could still carry old copies (docs/ha.md).
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId);
        IoQueue a = viaA.IoQueues[0];
        // B's reactor stops (a long GC pause, a stuck disk call) until the host has retried on the owner: longer than
        // the relay timeout (800 ms), so the old copy is past its deadline when B reads it.
        using var stalled = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        pair.B.Reactors[0].Post(() =>
        {
            stalled.Set();
            release.Wait(TimeSpan.FromSeconds(60)); // bounded: released below
        });
        Pending old;
        try
        {
            Assert.True(stalled.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "B's reactor did not stall");
            old = Submit(b, 0x51);                                // waits in B's socket
            var held = System.Diagnostics.Stopwatch.StartNew();
            PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(300));
            Assert.False(old.Done);
            Assert.True(Write(a, 0x51).IsSuccess);               // the retry on the owner
            Assert.True(Write(a, 0x52).IsSuccess);
            // The stall outlasts the old copy's relay deadline (800 ms after it reached B's socket).
            TestPair.WaitUntil(() => held.ElapsedMilliseconds > 2 * 800, "twice the relay timeout");
        }
        finally
        {
            release.Set();
        }
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(15));
        Assert.True(old.Done, "B never answered the old copy after its stall");
        pair.WaitRelaysSettled();
        output.WriteLine($"old copy completed: {old.Done} {old.Cqe.StatusField}");
        Assert.Equal(0x52, ReadTag(a));
    }

    /// <summary>Defect 6: a direct path with no keep-alive (KATO 0) is partitioned with a write on it.</summary>
    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AnOldWriteHeldOnAPartitionedDirectPathNeverLandsAfterANewerOne(string kind, int clockOffsetB)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB, Slow(), Slow());
        pair.WaitHealthy();
        using var toA = new TcpForwarder(pair.EndpointA);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaA = pair.Connect(toA.Endpoint, hostId, new NvmeHostOptions { KatoMs = 0, SendKeepAlive = false });
        using NvmeHost viaB = pair.Connect(pair.EndpointB, hostId);
        IoQueue a = viaA.IoQueues[0], b = viaB.IoQueues[0];
        Assert.True(Write(a, 0x60).IsSuccess);
        toA.PauseUpstream = true;                             // the path to A stops delivering, nothing is closed
        Pending old = Submit(a, 0x61);
        PollUntil(a, () => old.Done, TimeSpan.FromMilliseconds(300));
        Assert.False(old.Done);
        Assert.True(WriteRetryingPathErrors(b, 0x61).IsSuccess); // the retry through B (relayed; the first may be refused)
        Assert.True(Write(b, 0x62).IsSuccess);
        toA.PauseUpstream = false;                            // the partition heals: the old copy reaches A
        PollUntil(a, () => old.Done && toA.Held == 0, TimeSpan.FromSeconds(10));
        Assert.True(old.Done, "the old copy got no answer (or no error) after the partition healed");
        pair.WaitRelaysSettled();
        output.WriteLine($"old copy completed: {old.Done} {old.Cqe.StatusField}");
        Assert.Equal(0x62, ReadTag(b));
    }

    /// <summary>
    /// Defect 7: a stalled reactor on the proxy must not fence other hosts or take the link down. B's reactor 1 serves
    /// host 1 and stalls for longer than the heartbeat timeout; host 1 moves to the owner (a drain of its relay on B,
    /// answered without waiting for the stalled reactor) while host 2 keeps relaying through B's reactor 0. Both hosts'
    /// writes succeed, the link stays up, and the data is what each host wrote last. Connections are pinned to B's
    /// reactors (<see cref="StorageNode.Target.NvmfTarget.PlaceConnection"/>): A's interconnect association and host 2
    /// on reactor 0, host 1 on reactor 1. Depends on the heartbeat timeout (the stall outlasts it) and the relay
    /// timeout (TestPair's 3 s bounds the drain); conditions are waited for, not slept for.
    /// </summary>
    [Fact]
    public void OneStalledProxyReactorDoesNotFenceOtherHostsOrTakeTheLinkDown()
    {
        const int heartbeatTimeoutMs = 1000;
        var fast = new Dictionary<string, string?> { ["Cluster:HeartbeatTimeoutMs"] = heartbeatTimeoutMs.ToString() };
        int placeOnB = 0;
        using var pair = new TestPair(fast, fast, reactors: 2, beforeStart: (_, b) => b.Target.PlaceConnection = _ => Volatile.Read(ref placeOnB));
        pair.WaitHealthy();
        Guid h1 = Guid.NewGuid(), h2 = Guid.NewGuid();
        Volatile.Write(ref placeOnB, 1);
        using NvmeHost h1b = pair.Connect(pair.EndpointB, h1);
        Volatile.Write(ref placeOnB, 0);
        using NvmeHost h2b = pair.Connect(pair.EndpointB, h2);
        Assert.True(Write(h1b.IoQueues[0], 0x70).IsSuccess);                 // host 1's relay opens
        Assert.True(Write(h2b.IoQueues[0], 0x70, lba: 4096).IsSuccess);
        // Host 1 reaches the owner on an association made after its relay opened (as after a failover): one made before
        // would be closed at its first I/O, since it could still carry old copies (docs/ha.md).
        using NvmeHost h1a = pair.Connect(pair.EndpointA, h1);
        long connects = pair.A.Pair!.Links[0].ConnectCount + pair.B.Pair!.Links[0].ConnectCount;

        using var stalled = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        pair.B.Reactors[1].Post(() =>
        {
            stalled.Set();
            release.Wait(TimeSpan.FromSeconds(60)); // bounded: released once the test has seen what it needs
        });
        var failures = new List<string>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        NvmeStatus h1Status = default;
        Thread? h1Write = null;
        byte lastH2 = 0x70;
        try
        {
            Assert.True(stalled.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "B's reactor 1 did not stall");
            // Host 1 moves to the owner (a drain of its relay on B); host 2 keeps relaying through B meanwhile, for longer
            // than the heartbeat timeout and until host 1's write is done.
            h1Write = new Thread(() => h1Status = Write(h1a.IoQueues[0], 0x71)) { IsBackground = true };
            h1Write.Start();
            for (int i = 0; i < 200 && (clock.ElapsedMilliseconds < 3 * heartbeatTimeoutMs || h1Write.IsAlive); i++)
            {
                NvmeStatus st = Write(h2b.IoQueues[0], (byte)i, lba: 4096);
                if (st.IsSuccess) lastH2 = (byte)i;
                else failures.Add($"{clock.ElapsedMilliseconds} ms: host 2's write {i}: {st}");
                Thread.Sleep(20);
            }
            Assert.True(h1Write.Join(TimeSpan.FromSeconds(20)), "host 1's write through the owner did not complete");
        }
        finally
        {
            release.Set();
        }
        if (!h1Status.IsSuccess) failures.Add($"host 1's write through the owner: {h1Status}");
        if (failures.Count > 0) output.WriteLine($"{string.Join("\n", failures)}\nA:\n{pair.Log('A')}\nB:\n{pair.Log('B')}");
        Assert.Empty(failures);
        Assert.Equal(connects, pair.A.Pair!.Links[0].ConnectCount + pair.B.Pair!.Links[0].ConnectCount);
        Assert.Equal(PartnerStatus.Healthy, pair.A.Pair.Status);
        Assert.Equal(PartnerStatus.Healthy, pair.B.Pair.Status);
        Assert.Equal(0x71, ReadTag(h1a.IoQueues[0]));
        Assert.Equal(lastH2, ReadTag(h2b.IoQueues[0], lba: 4096));
    }

    /// <summary>Defect 9: two paths of one host to the same owner are one path for the gate (no barrier per switch).</summary>
    [Fact]
    public void TwoPathsToTheSameOwnerNeedNoBarrier()
    {
        using var pair = new TestPair(new() { ["Listeners:1:Address"] = "127.0.0.1", ["Listeners:1:Port"] = "0" });
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost p1 = pair.Connect(pair.A.TcpEndpoints[0], hostId);
        using NvmeHost p2 = pair.Connect(pair.A.TcpEndpoints[1], hostId);
        for (int i = 0; i < 100; i++)
        {
            Assert.True(Write(p1.IoQueues[0], (byte)(2 * i)).IsSuccess);
            Assert.True(Write(p2.IoQueues[0], (byte)(2 * i + 1)).IsSuccess);
        }
        Assert.DoesNotContain(pair.LogsA.Lines, l => l.Contains("commands now run through"));
    }

    /// <summary>
    /// No relay between them: the host's write on an association with the owner is held in the network; the host gives
    /// the association up without closing it, retries the write on another association with the same node — a new one
    /// (it reconnected), or one it made earlier and had not used (a second port) — and writes a newer version. Then the
    /// old copy arrives (TCP retransmits after a partition heals, and the other connection's data can overtake it): it
    /// must not land over the newer data. The other association's first command makes the given-up one run nothing until
    /// the host shows it still uses it, which it never does.
    /// </summary>
    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AnOldWriteOnAnAssociationTheHostGaveUpNeverLandsAfterItsRetryOnANewOneWithTheSameNode(string kind, int clockOffsetB)
        => OldWriteOnAGivenUpAssociationAndItsRetryOnAnotherWithTheSameNode(kind, clockOffsetB, 'A', retryOnOneMadeBefore: false);

    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AnOldWriteOnAnAssociationTheHostGaveUpNeverLandsAfterItsRetryOnAnUnusedOneWithTheSameNode(string kind, int clockOffsetB)
        => OldWriteOnAGivenUpAssociationAndItsRetryOnAnotherWithTheSameNode(kind, clockOffsetB, 'A', retryOnOneMadeBefore: true);

    /// <summary>The same through the proxy, its relay open all along: nothing else would stop the old copy there.</summary>
    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AnOldWriteOnAProxyAssociationTheHostGaveUpNeverLandsAfterItsRetryOnANewOne(string kind, int clockOffsetB)
        => OldWriteOnAGivenUpAssociationAndItsRetryOnAnotherWithTheSameNode(kind, clockOffsetB, 'B', retryOnOneMadeBefore: false);

    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AnOldWriteOnAProxyAssociationTheHostGaveUpNeverLandsAfterItsRetryOnAnUnusedOne(string kind, int clockOffsetB)
        => OldWriteOnAGivenUpAssociationAndItsRetryOnAnotherWithTheSameNode(kind, clockOffsetB, 'B', retryOnOneMadeBefore: true);

    /// <summary>
    /// A host with two associations on the proxy, both in use, answers the questions each one's start raises on the
    /// other, and its writes through both are relayed.
    /// </summary>
    [Fact]
    public void TwoAssociationsOnTheProxyBothInUseAnswerAndTheirWritesAreRelayed()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        var options = new NvmeHostOptions { AsyncEvents = true };
        using NvmeHost p1 = pair.Connect(pair.EndpointB, hostId, options);
        using NvmeHost p2 = pair.Connect(pair.EndpointB, hostId, options);
        for (int i = 0; i < 10; i++)
        {
            Assert.True(WriteRetryingPathErrors(p1.IoQueues[0], (byte)(0xD0 + 2 * i)).IsSuccess);
            Assert.True(WriteRetryingPathErrors(p2.IoQueues[0], (byte)(0xD1 + 2 * i)).IsSuccess);
        }
        pair.WaitLogged('B', "the host answered on this association since another of its associations here started relaying");
        Assert.DoesNotContain(pair.LogsB.Lines, l => l.Contains("what it carries is never relayed"));
        Assert.Equal(0xD1 + 18, ReadTag(p1.IoQueues[0]));
    }

    /// <param name="node">The node the host's associations are with: the owner of NSID 1 (A), or the proxy (B).</param>
    private static void OldWriteOnAGivenUpAssociationAndItsRetryOnAnotherWithTheSameNode(string kind, int clockOffsetB, char node, bool retryOnOneMadeBefore)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB, Slow("1000"), Slow("1000"));
        pair.WaitHealthy();
        IPEndPoint endpoint = node == 'A' ? pair.EndpointA : pair.EndpointB;
        using var path = new TcpForwarder(endpoint);
        Guid hostId = Guid.NewGuid();
        var options = new NvmeHostOptions { AsyncEvents = true };
        NvmeHost? other = retryOnOneMadeBefore ? pair.Connect(endpoint, hostId, options) : null;
        try
        {
            using NvmeHost old = pair.Connect(path.Endpoint, hostId, options);
            IoQueue q1 = old.IoQueues[0];
            Assert.True(WriteRetryingPathErrors(q1, 0x90).IsSuccess);
            path.PauseUpstream = true;                             // the path stops delivering, nothing is closed
            Pending held = Submit(q1, 0x91);
            PollUntil(q1, () => held.Done, TimeSpan.FromMilliseconds(300));
            Assert.False(held.Done);
            old.StopKeepAlive();                                   // given up: never polled again, no keep-alives
            other ??= pair.Connect(endpoint, hostId, options);
            IoQueue q2 = other.IoQueues[0];
            Assert.True(WriteRetryingPathErrors(q2, 0x91).IsSuccess);
            Assert.True(WriteRetryingPathErrors(q2, 0x92).IsSuccess);
            path.PauseUpstream = false;                            // the old copy reaches the node
            PollUntil(q1, () => held.Done || q1.Transport.IsBroken, TimeSpan.FromSeconds(15));
            Assert.False(held.Succeeded, "the old copy ran after the host's retry on another association");
            pair.WaitLogged(node, node == 'A' ? "started since; closing it" : "started relaying; closing it");
            pair.WaitRelaysSettled();
            using NvmeHost reader = pair.Connect(pair.EndpointA, Guid.NewGuid());
            Assert.Equal(0x92, ReadTag(reader.IoQueues[0]));
        }
        finally
        {
            other?.Dispose();
        }
    }

    /// <summary>
    /// The other side: a host with two live associations with the owner (two ports, both used) answers the question its
    /// newer association's first command raises on the older one, and the older one's writes run.
    /// </summary>
    [Fact]
    public void AnOlderAssociationTheHostStillUsesRunsOnceItAnswers()
    {
        using var pair = new TestPair(new() { ["Listeners:1:Address"] = "127.0.0.1", ["Listeners:1:Port"] = "0" });
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost p1 = pair.Connect(pair.A.TcpEndpoints[0], hostId, new NvmeHostOptions { AsyncEvents = true });
        Assert.True(Write(p1.IoQueues[0], 0xC0).IsSuccess);
        using NvmeHost p2 = pair.Connect(pair.A.TcpEndpoints[1], hostId, new NvmeHostOptions { AsyncEvents = true });
        Assert.True(Write(p2.IoQueues[0], 0xC1).IsSuccess);
        Assert.True(Write(p1.IoQueues[0], 0xC2).IsSuccess);
        pair.WaitLogged('A', "the host still uses this association");
        Assert.Equal(0xC2, ReadTag(p2.IoQueues[0]));
    }

    /// <summary>
    /// Issue 21's stale write (stress series s3, run 8): the host writes through its own association with A, A's
    /// namespace; a write it sent through B (the proxy) is held in the network. The host gives that association up
    /// without closing it, retries the write on A, writes a newer version, and goes quiet. Then the partition heals: the
    /// old copy reaches B after the host's last command to A, so B asks A to open the host's relay, and A does. B must
    /// not relay the old copy: the host never shows it still uses the association it came on.
    /// </summary>
    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AnOldWriteHeldOnTheWayToTheProxyNeverLandsAfterItsRetryOnTheOwner(string kind, int clockOffsetB)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB, Slow("1000"), Slow("1000"));
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId, new NvmeHostOptions { AsyncEvents = true });
        using NvmeHost viaB = pair.Connect(toB.Endpoint, hostId, new NvmeHostOptions { AsyncEvents = true });
        IoQueue a = viaA.IoQueues[0], b = viaB.IoQueues[0];
        // Another host keeps B's reactor busy (as the detector's NSID 2 traffic does), so B dates the old copy's arrival
        // when it comes, not from a long idle wait before the host's last command to A.
        using NvmeHost other = pair.Connect(pair.EndpointB, Guid.NewGuid());
        using var stop = new CancellationTokenSource();
        var busy = new Thread(() =>
        {
            for (int i = 0; i < 1_000_000 && !stop.IsCancellationRequested; i++) Write(other.IoQueues[0], (byte)i, nsid: 2);
        }) { IsBackground = true };
        busy.Start();
        Pending old;
        try
        {
            Assert.True(Write(a, 0xA0).IsSuccess);
            toB.PauseUpstream = true;                              // the path to B stops delivering, nothing is closed
            old = Submit(b, 0xA1);
            PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(300));
            Assert.False(old.Done);
            viaB.StopKeepAlive();                                  // given up: never polled again, no keep-alives
            Assert.True(Write(a, 0xA1).IsSuccess);
            Assert.True(Write(a, 0xA2).IsSuccess);
            Thread.Sleep(50);
            toB.PauseUpstream = false;                             // the old copy reaches B; the host is quiet
            PollUntil(b, () => old.Done || b.Transport.IsBroken, TimeSpan.FromSeconds(15));
        }
        finally
        {
            stop.Cancel();
            busy.Join();
        }
        Assert.False(old.Succeeded, "the old copy was relayed after the host's retry on the owner");
        pair.WaitLogged('B', "since its relay opened; closing it");
        pair.WaitRelaysSettled();
        using NvmeHost reader = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Assert.Equal(0xA2, ReadTag(reader.IoQueues[0]));
    }

    /// <summary>
    /// The other side of the test above: a host that wrote through A and moves to B's relay (its path to A cut) answers
    /// B's question on the association it uses (an ANA change notice on its Asynchronous Event Request, which it sends
    /// again), and its writes through B run.
    /// </summary>
    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AHostThatMovesToTheRelayAnswersAndItsWritesRun(string kind, int clockOffsetB)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB, Slow("1000"), Slow("1000"));
        pair.WaitHealthy();
        using var toA = new TcpForwarder(pair.EndpointA);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaA = pair.Connect(toA.Endpoint, hostId, new NvmeHostOptions { AsyncEvents = true });
        using NvmeHost viaB = pair.Connect(pair.EndpointB, hostId, new NvmeHostOptions { AsyncEvents = true });
        Assert.True(Write(viaA.IoQueues[0], 0xB0).IsSuccess);
        toA.Cut();
        // (The host takes its asynchronous events as they come, as Linux does: NvmeHostOptions.AsyncEvents.)
        Assert.True(WriteRetryingPathErrors(viaB.IoQueues[0], 0xB1).IsSuccess);
        Assert.True(Write(viaB.IoQueues[0], 0xB2).IsSuccess);
        pair.WaitLogged('B', "the host answered on this association since its relay opened");
        Assert.Equal(0xB2, ReadTag(viaB.IoQueues[0]));
    }

    /// <summary>
    /// Issue 21's stale write (the stress series, seed 7): the host relays through B for A's namespace, then makes a new
    /// direct association to A — after its relay opened, so the fence lets it be. Its write there is held in the network;
    /// the host gives the association up without closing it, retries the write through B's relay and writes a newer
    /// version. Then the partition heals and the old copy reaches A: A holds it, drains the relay, and must not run it,
    /// since the host never shows it still uses that association. Depends on the relay timeout (1 s here): A gives the
    /// host twice that and a second to answer before it closes the association.
    /// </summary>
    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AnOldWriteOnAnAssociationMadeWhileTheHostRelayedNeverLandsAfterItsRelayedRetry(string kind, int clockOffsetB)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB, Slow("1000"), Slow("1000"));
        pair.WaitHealthy();
        using var toA = new TcpForwarder(pair.EndpointA);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaB = pair.Connect(pair.EndpointB, hostId, new NvmeHostOptions { AsyncEvents = true });
        IoQueue b = viaB.IoQueues[0];
        Assert.True(WriteRetryingPathErrors(b, 0x70).IsSuccess);  // through B's relay: it opens on A
        using NvmeHost viaA = pair.Connect(toA.Endpoint, hostId, new NvmeHostOptions { AsyncEvents = true });
        IoQueue a = viaA.IoQueues[0];
        toA.PauseUpstream = true;                                  // the new path stops delivering, nothing is closed
        Pending old = Submit(a, 0x71);
        PollUntil(a, () => old.Done, TimeSpan.FromMilliseconds(300));
        Assert.False(old.Done);
        // The host gives that association up (it never polls it again, and sends no more keep-alives) and retries through
        // B, then writes anew.
        viaA.StopKeepAlive();
        Assert.True(WriteRetryingPathErrors(b, 0x71).IsSuccess);
        Assert.True(Write(b, 0x72).IsSuccess);
        toA.PauseUpstream = false;                                 // the old copy reaches A
        // A holds it, drains B's relay, asks the host, gets no answer and closes the association (after 3 s).
        PollUntil(a, () => old.Done || a.Transport.IsBroken, TimeSpan.FromSeconds(15));
        Assert.False(old.Succeeded, "the old copy ran after the host's relayed retry");
        pair.WaitLogged('A', "has not shown within");
        pair.WaitRelaysSettled();
        // (The host's association with B is quarantined by B's fence for KATO after A's drain: read on a new one.)
        using NvmeHost reader = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Assert.Equal(0x72, ReadTag(reader.IoQueues[0]));
    }

    /// <summary>
    /// The other side of the test above: a host that moves back from B's relay to a new association with A and still
    /// uses it answers A's question (an ANA change notice on its Asynchronous Event Request, which it sends again), and
    /// its write held meanwhile runs.
    /// </summary>
    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AWriteOnAnAssociationMadeWhileTheHostRelayedRunsOnceTheHostAnswers(string kind, int clockOffsetB)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB, Slow("1000"), Slow("1000"));
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaB = pair.Connect(pair.EndpointB, hostId, new NvmeHostOptions { AsyncEvents = true });
        Assert.True(WriteRetryingPathErrors(viaB.IoQueues[0], 0x80).IsSuccess);
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId, new NvmeHostOptions { AsyncEvents = true });
        // (The host takes its asynchronous events as they come, as Linux does: NvmeHostOptions.AsyncEvents.)
        Assert.True(Write(viaA.IoQueues[0], 0x81).IsSuccess);
        Assert.True(Write(viaA.IoQueues[0], 0x82).IsSuccess);
        pair.WaitLogged('A', "the host still uses this association");
        Assert.Equal(0x82, ReadTag(viaA.IoQueues[0]));
        Assert.True(viaA.TryGetEvent(out uint ev));
        Assert.Equal(AsyncEvent.NoticeAnaChange, (byte)(ev >> 8));
    }
}
