using System.Diagnostics;
using System.Text.Json.Nodes;
using StorageNode.Bdevs;
using StorageNode.Control;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Testing;
using static StorageNode.Pair.Tests.MirrorRig;

namespace StorageNode.Pair.Tests;

/// <summary>
/// A node's death (docs/ha.md, "Takeover"): the survivor serves the dead owner's namespaces from its replicas once an
/// operator says so (<c>cluster_takeover</c>), on the connections the hosts already have; the old owner, started again,
/// learns it lost the group before it serves anything.
/// </summary>
public sealed class TakeoverTests
{
    private static byte AnaState(NvmeHost h, uint group)
    {
        byte[] log = h.GetLogPage(LogPageId.Ana, 4096, nsid: 0);
        int groups = BitConverter.ToUInt16(log, 8);
        int off = 16;
        for (int i = 0; i < groups; i++)
        {
            uint gid = BitConverter.ToUInt32(log, off);
            uint n = BitConverter.ToUInt32(log, off + 4);
            if (gid == group) return log[off + 16];
            off += 32 + (int)n * 4;
        }
        throw new InvalidOperationException($"no ANA group {group} in the log");
    }

    private static string TakeOver(ProcessPair pair, char node, uint group, bool force = false)
    {
        var p = new JsonObject { ["nqn"] = TestPair.Nqn, ["anagrpid"] = group };
        if (force) p["force"] = true;
        return pair.Rpc(node, "cluster_takeover", p)!.ToJsonString();
    }

    /// <summary>
    /// Two processes, B's clock hours off, RAM namespaces: a host writes versioned blocks to NSID 1 (A's) through both
    /// nodes; the takeover is refused while A lives; A is killed (SIGKILL); B takes group 1 over and, on the host's
    /// existing connection to B, every block reads back as last acknowledged, and new writes succeed, with group 1
    /// optimized there. A started again learns that B owns group 1, keeps its (empty) RAM as B's replica, which B resyncs
    /// whole, and relays the host's I/O to B; when B dies in turn, A takes the group back over with every write there.
    /// B, started again, keeps A's replica; A restarted with its RAM empty is then refused by it (the group held), not
    /// resynced over it.
    /// </summary>
    [Theory]
    [InlineData(3 * 3600)]
    [InlineData(-3 * 3600)]
    public void TwoProcessesTheSurvivorServesADeadOwnersNamespaceFromItsReplicaWithEveryAcknowledgedWrite(int clockOffsetB)
    {
        using var pair = new ProcessPair(Mirror, Mirror, clockOffsetB);
        pair.WaitHealthy();
        JsonObject MirrorOfA() => pair.Rpc('A', "cluster_get_status")!["links"]![0]!["mirrors"]!.AsArray().Single(m => m!["nsid"]!.GetValue<uint>() == 1)!.AsObject();
        JsonObject ReplicaOnB() => pair.Rpc('B', "cluster_get_status")!["links"]![0]!["replicas"]!.AsArray().Single(r => r!["nsid"]!.GetValue<uint>() == 1)!.AsObject();
        TestPair.WaitUntil(() => MirrorOfA()["state"]!.GetValue<string>() == "in_sync" && ReplicaOnB()["whole"]!.GetValue<bool>(),
            "A's NSID 1 in sync and whole on B", TimeSpan.FromSeconds(60));

        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid());
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid());
        var acked = new Dictionary<ulong, uint>();
        var rnd = new Random(7);
        WriteVersions(acked, rnd, 1, 400, "through A and B", viaA, viaB);

        // A answers: no takeover.
        RpcException alive = Assert.Throws<RpcException>(() => TakeOver(pair, 'B', 1));
        Assert.Contains("answers", alive.Message, StringComparison.Ordinal);

        pair.Kill('A');
        TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "B to find A dead",
            TimeSpan.FromSeconds(30));
        JsonNode took = JsonNode.Parse(TakeOver(pair, 'B', 1))!;
        Assert.Equal("B", took["owner"]!.GetValue<string>());
        Assert.Equal(1UL, took["term"]!.GetValue<ulong>());
        Assert.Equal("[1]", took["from_replica"]!.ToJsonString());
        Assert.Equal("[]", took["risks"]!.ToJsonString());
        JsonObject g1 = Group(pair, 'B', 1);
        Assert.True(g1["served_here"]!.GetValue<bool>());
        Assert.Equal("A", g1["configured_owner"]!.GetValue<string>());
        pair.WaitLogged('B', "ANA group 1 taken over");

        // The host's existing connection to B: group 1 optimized, every acknowledged block there, new writes served.
        Assert.Equal((byte)Nvme.Spec.AnaState.Optimized, AnaState(viaB, 1));
        ReadBack(viaB, acked, "through B after the takeover");
        WriteVersions(acked, rnd, 1001, 1100, "through B after the takeover", viaB);
        // Taking it over again is refused: it is served here.
        Assert.Contains("already", Assert.Throws<RpcException>(() => TakeOver(pair, 'B', 1)).Message, StringComparison.Ordinal);

        // A comes back: it hears B's term before it serves group 1, and keeps its (empty) RAM as B's replica of NSID 1,
        // which B resyncs; the hosts' path through A relays NSID 1 to B.
        pair.Start('A');
        TestPair.WaitUntil(() => Group(pair, 'A', 1)["term"]!.GetValue<ulong>() == 1, "A to learn B's term", TimeSpan.FromSeconds(30));
        JsonObject a1 = Group(pair, 'A', 1);
        Assert.Equal("B", a1["owner"]!.GetValue<string>());
        Assert.False(a1["served_here"]!.GetValue<bool>());
        JsonObject MirrorOfB() => pair.Rpc('B', "cluster_get_status")!["links"]![0]!["mirrors"]!.AsArray().Single(m => m!["nsid"]!.GetValue<uint>() == 1)!.AsObject();
        JsonObject ReplicaOnA() => pair.Rpc('A', "cluster_get_status")!["links"]![0]!["replicas"]!.AsArray().Single(r => r!["nsid"]!.GetValue<uint>() == 1)!.AsObject();
        TestPair.WaitUntil(() => MirrorOfB()["state"]!.GetValue<string>() == "in_sync" && ReplicaOnA()["whole"]!.GetValue<bool>(),
            "B to resync A's replica of NSID 1", TimeSpan.FromSeconds(60));
        Assert.True(MirrorOfB()["last_resync_whole"]!.GetValue<bool>());
        using NvmeHost viaA2 = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Assert.Equal((byte)Nvme.Spec.AnaState.NonOptimized, AnaState(viaA2, 1));
        WriteVersions(acked, rnd, 2001, 2050, "through A, relayed to B", viaA2);
        ReadBack(viaA2, acked, "through A after its return");
        // Group 2 (B's) is served as before: directly on B.
        Assert.True(viaB.IoQueues[0].Write(2, 0, 1, Block(1, 0)).IsSuccess);

        // The circle closes: B dies, A takes group 1 back over from its replica (term 2), everything acknowledged there.
        pair.Kill('B');
        TestPair.WaitUntil(() => pair.Rpc('A', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "A to find B dead",
            TimeSpan.FromSeconds(30));
        JsonNode back = JsonNode.Parse(TakeOver(pair, 'A', 1))!;
        Assert.Equal(2UL, back["term"]!.GetValue<ulong>());
        Assert.Equal("[]", back["risks"]!.ToJsonString());
        ReadBack(viaA2, acked, "through A after taking it back");

        // B comes back (RAM: empty) and keeps A's replica, resynced; then A restarts with its RAM empty. The data's
        // lineage went with the takeovers (the replica's generation), so B's replica refuses A's empty data instead of
        // taking it for the truth: the group is held, and nothing reads zeros.
        pair.Start('B');
        TestPair.WaitUntil(() => MirrorOfA()["state"]!.GetValue<string>() == "in_sync", "A to resync B's replica of NSID 1", TimeSpan.FromSeconds(60));
        pair.KillAndRestart('A');
        pair.WaitLogged('B', "refused the owner's resync");
        using NvmeHost viaB2 = pair.Connect(pair.EndpointB, Guid.NewGuid());
        Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), viaB2.IoQueues[0].Read(1, 0, 1, new byte[512]));
    }

    /// <summary>
    /// The namespace and the replica in files, with state directories: the takeover is kept. After it, B dies too and A
    /// starts alone: A cannot know B took group 1 over, so it holds it (a write through A gets ANA Inaccessible). B
    /// started again finds its term in its state directory; once they hear each other A keeps B's term, B serves NSID 1
    /// from its replica file with everything the host wrote before and after the takeover, and resyncs A's stale file,
    /// which is B's replica now: byte for byte the same once in sync.
    /// </summary>
    [Fact]
    public void TwoProcessesATakeoverIsKeptAndAnOwnerStartedAloneServesNothingUntilItHearsItsPartner()
    {
        string dir = Directory.CreateTempSubdirectory("sn-takeover-").FullName;
        try
        {
            string stateA = Path.Combine(dir, "state-a"), stateB = Path.Combine(dir, "state-b");
            Directory.CreateDirectory(stateA);
            Directory.CreateDirectory(stateB);
            Dictionary<string, string?> a = With(Mirror, new()
            {
                ["Node:StateDirectory"] = stateA,
                ["Bdevs:0:Type"] = "file",
                ["Bdevs:0:Path"] = Path.Combine(dir, "a-owns-1.img"),
            });
            using var pair = new ProcessPair(a, With(Mirror, FileReplica(1, Path.Combine(dir, "b-keeps-1.img"), stateB)), clockOffsetSecondsB: 3 * 3600);
            pair.WaitHealthy();
            TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["links"]![0]!["replicas"]!.AsArray().Single()!["whole"]!.GetValue<bool>(),
                "B's replica of NSID 1 whole", TimeSpan.FromSeconds(60));
            using (NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid()))
                for (ulong lba = 0; lba < 64; lba++) Assert.True(viaA.IoQueues[0].Write(1, lba, 1, Block(1, lba)).IsSuccess);

            pair.Kill('A');
            TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "B to find A dead",
                TimeSpan.FromSeconds(30));
            TakeOver(pair, 'B', 1);
            Assert.Equal("1 B", File.ReadAllText(Directory.GetFiles(stateB, "*-group1.owner").Single()).Trim());
            using (NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid()))
                for (ulong lba = 32; lba < 96; lba++) Assert.True(viaB.IoQueues[0].Write(1, lba, 1, Block(2, lba)).IsSuccess);

            // B dies as well; A starts alone with its (stale) file: it serves nothing of group 1.
            pair.Kill('B');
            pair.Start('A');
            JsonObject alone = Group(pair, 'A', 1);
            Assert.Equal("A", alone["owner"]!.GetValue<string>());
            Assert.False(alone["confirmed"]!.GetValue<bool>());
            using (NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid()))
            {
                Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), viaA.IoQueues[0].Read(1, 40, 1, new byte[512]));
                Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), viaA.IoQueues[0].Write(1, 40, 1, Block(3, 40)));
            }

            // An operator's takeover on A alone is refused without force: A cannot know whether B took the group over.
            Assert.Contains("has not heard B since it started", Assert.Throws<RpcException>(() => TakeOver(pair, 'A', 1)).Message, StringComparison.Ordinal);

            // B comes back: its kept term reaches A, which keeps it and keeps its stale file as B's replica; B serves from
            // its replica file and resyncs A's file whole.
            pair.Start('B');
            TestPair.WaitUntil(() => Group(pair, 'B', 1)["served_here"]!.GetValue<bool>(), "B, started again, to serve group 1 once it heard A",
                TimeSpan.FromSeconds(30));
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["term"]!.GetValue<ulong>() == 1, "A to learn B's term", TimeSpan.FromSeconds(30));
            Assert.Equal("1 B", File.ReadAllText(Directory.GetFiles(stateA, "*-group1.owner").Single()).Trim());
            JsonObject MirrorOfB() => pair.Rpc('B', "cluster_get_status")!["links"]![0]!["mirrors"]!.AsArray().Single(m => m!["nsid"]!.GetValue<uint>() == 1)!.AsObject();
            TestPair.WaitUntil(() => MirrorOfB()["state"]!.GetValue<string>() == "in_sync", "B to resync A's file", TimeSpan.FromSeconds(60));
            using NvmeHost host = pair.Connect(pair.EndpointB, Guid.NewGuid());
            using NvmeHost relayed = pair.Connect(pair.EndpointA, Guid.NewGuid());
            var buf = new byte[512];
            for (ulong lba = 0; lba < 96; lba++)
            {
                uint v = lba < 32 ? 1u : 2u;
                Assert.True(host.IoQueues[0].Read(1, lba, 1, buf).IsSuccess, $"read LBA {lba} through B");
                Assert.True(buf.AsSpan().SequenceEqual(Block(v, lba)), $"LBA {lba} through B: not the last acknowledged version");
                Assert.True(relayed.IoQueues[0].Read(1, lba, 1, buf).IsSuccess, $"read LBA {lba} through A (relayed)");
                Assert.True(buf.AsSpan().SequenceEqual(Block(v, lba)), $"LBA {lba} through A: not the last acknowledged version");
            }
            Assert.True(relayed.IoQueues[0].Write(1, 40, 1, Block(3, 40)).IsSuccess, "a write through A, relayed to B");
            Assert.True(host.IoQueues[0].Flush(1).IsSuccess);
            Assert.True(File.ReadAllBytes(Path.Combine(dir, "a-owns-1.img")).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(dir, "b-keeps-1.img"))),
                "A's file (B's replica now) = B's replica file (the namespace now)");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The way out ha.md gives when an owner restarts empty: A (RAM) is killed and started again, B's replica holds A's
    /// data and refuses A's empty resync (the group inaccessible on both). A is stopped; B's takeover is refused without
    /// force (A restarted, so what it said of the replica before is void) and, forced, serves the replica with A's data —
    /// the refusal's hold gone with it.
    /// </summary>
    [Fact]
    public void TwoProcessesATakeoverAfterTheKeeperRefusedAnEmptyOwnerServesTheKeptData()
    {
        using var pair = new ProcessPair(Mirror, Mirror, clockOffsetSecondsB: -3 * 3600);
        pair.WaitHealthy();
        TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["links"]![0]!["replicas"]!.AsArray().Single()!["whole"]!.GetValue<bool>(),
            "B's replica of NSID 1 whole", TimeSpan.FromSeconds(60));
        using (NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid()))
            for (ulong lba = 0; lba < 32; lba++) Assert.True(viaA.IoQueues[0].Write(1, lba, 1, Block(4, lba)).IsSuccess);

        pair.KillAndRestart('A');
        pair.WaitLogged('B', "refused the owner's resync");
        pair.Kill('A');
        TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "B to find A dead",
            TimeSpan.FromSeconds(30));
        Assert.Contains("was not whole", Assert.Throws<RpcException>(() => TakeOver(pair, 'B', 1)).Message, StringComparison.Ordinal);
        JsonNode took = JsonNode.Parse(TakeOver(pair, 'B', 1, force: true))!;
        Assert.Single(took["risks"]!.AsArray());
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid());
        var buf = new byte[512];
        for (ulong lba = 0; lba < 32; lba++)
        {
            NvmeStatus st = viaB.IoQueues[0].Read(1, lba, 1, buf);
            Assert.True(st.IsSuccess, $"read LBA {lba} through B: {st}");
            Assert.True(buf.AsSpan().SequenceEqual(Block(4, lba)), $"LBA {lba}: not A's data");
        }
        Assert.True(Group(pair, 'B', 1)["served_here"]!.GetValue<bool>());
    }

    /// <summary>
    /// One way of the interconnect lost (B's association into A), A's heartbeat datagrams too: B finds A silent, but A's
    /// association into B still carries A's heartbeats and copies. A is alive: the takeover is refused.
    /// </summary>
    [Fact]
    public void ATakeoverIsRefusedWhileThePartnersAssociationIntoThisNodeLives()
    {
        using TestPair pair = InSyncPair();
        pair.InterconnectBtoA.Blocked = true;
        pair.InterconnectBtoA.Cut();
        pair.A.Pair!.SilenceHeartbeatChannel();
        TestPair.WaitUntil(() => pair.B.Pair!.Status == PartnerStatus.PartnerDown, "B to hear A on neither of its channels", TimeSpan.FromSeconds(30));
        Assert.True(pair.A.Pair!.Links[0].IsUp, "A's association into B is up");
        Target.Subsystem s = pair.B.Target.FindSubsystem(TestPair.Nqn)!;
        // A's heartbeats arrive on it (one every 100 ms; the check counts the last 2 s).
        TestPair.WaitUntil(() => Stopwatch.GetElapsedTime(pair.B.Pair!.Links[0].PartnerHeardTicks) < TimeSpan.FromMilliseconds(500),
            "a heartbeat of A's on its association into B");
        InvalidOperationException e = Assert.Throws<InvalidOperationException>(() => pair.B.Pair!.TakeOver(s, 1, force: true));
        Assert.Contains("its interconnect association into this node carries its heartbeats", e.Message, StringComparison.Ordinal);
        Assert.False(s.IsLocalGroup(1));
    }

    /// <summary>
    /// A's machine loses power as the pair runs: no FIN, no reset — both interconnect connections are held open and carry
    /// nothing (the forwarders' partition), and A's datagrams stop. A's association into B lives on B until its keep-alive
    /// (4 × the heartbeat timeout) ends it, but it carries no heartbeat: silent for a heartbeat timeout, it does not count as
    /// A answering, and B takes group 1 over while it is still there, from its replica (whole when A was last heard).
    /// Before, the takeover was refused until the keep-alive ended the association ("it has an interconnect association
    /// into this node").
    /// </summary>
    [Fact]
    public void AnAssociationThatCarriesNoHeartbeatForAHeartbeatTimeoutDoesNotHoldATakeoverOff()
    {
        using TestPair pair = InSyncPair();
        Target.Subsystem s = pair.B.Target.FindSubsystem(TestPair.Nqn)!;
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid());
        NvmeStatus written = HostWrites.WriteRetryingPathErrors(viaB.IoQueues[0], 0x5A, 1, 77);
        Assert.True(written.IsSuccess, $"a write to NSID 1 relayed through B to A: {written}");
        TestPair.WaitUntil(() => s.GetNamespace(1)!.ReplicaKnowledge.IsWhole(Stopwatch.GetTimestamp()), "B's replica of NSID 1 whole (A's lease renewed)");
        pair.A.Pair!.SilenceHeartbeatChannel();
        pair.InterconnectAtoB.Partition();
        pair.InterconnectBtoA.Partition();
        try
        {
            // B finds A silent on its own channels, and A's association silent for a heartbeat timeout (a heartbeat of A's
            // can land just after B's own last one was answered).
            TestPair.WaitUntil(() => pair.B.Pair!.Status == PartnerStatus.PartnerDown
                && Stopwatch.GetElapsedTime(pair.B.Pair!.Links[0].PartnerHeardTicks) > TimeSpan.FromMilliseconds(2000),
                "B to hear A on none of its channels, A's association silent for the heartbeat timeout", TimeSpan.FromSeconds(30));
            // The keep-alive ends it 4 heartbeat timeouts after A's last heartbeat: 8 s here, where B finds A silent after 2.
            Assert.True(s.Controllers.Any(c => c.IsInterconnect), "A's association into B is still there (its keep-alive has not ended it)");
            pair.B.Pair!.TakeOver(s, 1, force: false);
            Assert.True(s.IsLocalGroup(1), "B serves group 1");
            Assert.Equal(0x5A, HostWrites.ReadTag(viaB.IoQueues[0], 1, 77)); // A's acknowledged write, from B's replica
        }
        finally
        {
            pair.InterconnectAtoB.Cut();
            pair.InterconnectBtoA.Cut();
        }
    }

    /// <summary>
    /// No witness: A's process is frozen (SIGSTOP) for longer than a heartbeat timeout, and the operator takes group 1
    /// over on B, A's association into B still there but silent. When A thaws, it learns B's term and stops serving the
    /// group, and B closed A's old association as it took the group over (refusing its heartbeats first), so A cannot
    /// go on through it. (Before, a manual takeover left that association open, its heartbeats answered: A learned the
    /// term in the 2 runs tried only because B's own link reconnected into A and told it — the close fails the test
    /// then.)
    /// </summary>
    [Fact]
    public void AFrozenOwnerThatThawsAfterAManualTakeoverLearnsTheNewTerm()
    {
        using var pair = new ProcessPair(Mirror, Mirror, clockOffsetSecondsB: 2 * 3600);
        pair.WaitHealthy();
        WaitInSync(pair);
        Assert.True(Group(pair, 'A', 1)["served_here"]!.GetValue<bool>());
        pair.Freeze('A', true);
        try
        {
            TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "B to find A silent",
                TimeSpan.FromSeconds(30));
            // The keep-alive would end A's association 4 heartbeat timeouts (8 s) after its last heartbeat: taken over before.
            string took = "";
            TestPair.WaitUntil(() =>
            {
                try { took = TakeOver(pair, 'B', 1); return true; }
                catch (RpcException e) when (e.Message.Contains("answers", StringComparison.Ordinal)) { return false; }
            }, "B to take group 1 over (A's association silent for a heartbeat timeout)", TimeSpan.FromSeconds(5));
            Assert.Contains("\"term\":1", took, StringComparison.Ordinal);
        }
        finally
        {
            pair.Freeze('A', false);
        }
        TestPair.WaitUntil(() => Group(pair, 'A', 1) is var g && g["term"]!.GetValue<ulong>() == 1 && !g["served_here"]!.GetValue<bool>(),
            "A, thawed, to learn B's term and stop serving group 1", TimeSpan.FromSeconds(30));
        Assert.True(Group(pair, 'B', 1)["served_here"]!.GetValue<bool>());
        pair.WaitLogged('B', "closing the partner's association");
    }

    /// <summary>
    /// A partition of both channels, taken by the operator for A's death: B takes group 1 over while A goes on serving a
    /// host alone. When the partition heals, A learns B's term while that host's writes run through it: A's namespace
    /// becomes B's replica under them (writes on it finish before the replica takes B's words; later ones get ANA
    /// Inaccessible and the host retries them, relayed to B), and B resyncs it. Once in sync, A's replica equals B's
    /// namespace byte for byte. (What A took alone during the partition is lost: that is what the operator's takeover
    /// decided, and what a witness will prevent.)
    /// </summary>
    [Fact]
    public void AnOwnerThatLearnsWhileServingThatItsGroupWasTakenOverBecomesItsKeeperUnderTheHostsWrites()
    {
        using TestPair pair = InSyncPair();
        (Target.Subsystem sa, Target.Subsystem sb) = PartitionedAndTakenOverByB(pair);

        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid());
        long ok = 0, retried = 0, other = 0;
        string? firstOther = null;
        bool stop = false;
        var writer = new Thread(() =>
        {
            var rnd = new Random(3);
            var data = new byte[4096];
            for (int i = 0; i < 200_000 && !Volatile.Read(ref stop); i++)
            {
                rnd.NextBytes(data);
                NvmeStatus st = viaA.IoQueues[0].Write(1, (ulong)rnd.Next(0, 8192) * 8, 8, data);
                if (st.IsSuccess) ok++;
                else if (st == NvmeStatus.Path(PathStatus.AnaInaccessible) || st == NvmeStatus.Path(PathStatus.AnaTransition)) retried++;
                else { other++; firstOther ??= st.ToString(); }
            }
        }) { IsBackground = true };
        writer.Start();
        TestPair.WaitUntil(() => Volatile.Read(ref ok) > 200, "A to serve the host alone", TimeSpan.FromSeconds(30));
        pair.InterconnectAtoB.Blocked = pair.InterconnectBtoA.Blocked = false;
        TestPair.WaitUntil(() => pair.A.Pair!.OwnershipOf(sa, 1)!.Current == new GroupTerm(1, "B"), "A to learn B's term", TimeSpan.FromSeconds(30));
        NamespaceMirror MirrorOfB() => pair.B.Pair!.Links[0].Mirrors.Single(m => m.Nsid == 1);
        TestPair.WaitUntil(() => MirrorOfB().IsInSync, "B to resync A's replica under the host's writes", TimeSpan.FromSeconds(60));
        long okBefore = Volatile.Read(ref ok);
        TestPair.WaitUntil(() => Volatile.Read(ref ok) > okBefore + 100, "the host's writes through A to go on, relayed to B", TimeSpan.FromSeconds(30));
        Volatile.Write(ref stop, true);
        Assert.True(writer.Join(TimeSpan.FromSeconds(30)));
        Assert.True(other == 0, $"{other} write(s) failed otherwise than with a path status the host retries: {firstOther}");
        TestPair.WaitUntil(() => MirrorOfB().IsInSync, "B's mirror in sync once the writes stopped", TimeSpan.FromSeconds(30));
        Bdev served = sb.GetNamespace(1)!.Bdev, kept = sa.GetNamespace(1)!.Replica!;
        const int Chunk = 1 << 20;
        for (ulong off = 0; off < served.SizeBytes; off += Chunk)
            Assert.True(Contents(pair.B, served, off, Chunk).SequenceEqual(Contents(pair.A, kept, off, Chunk)), $"A's replica differs from B's namespace in [{off}, {off + Chunk})");
    }

    /// <summary>
    /// After a takeover the survivor's replica file (its data now) is lost and it restarts: its data is new. The old owner
    /// comes back as the keeper with its own file, which holds the data's lineage: it refuses the survivor's empty data
    /// instead of being resynced with it (the group held on both), and its file keeps what it had.
    /// </summary>
    [Fact]
    public void TwoProcessesAnOldOwnerBackAsTheKeeperRefusesASurvivorThatLostItsData()
    {
        string dir = Directory.CreateTempSubdirectory("sn-takeover-").FullName;
        try
        {
            string stateA = Path.Combine(dir, "state-a"), stateB = Path.Combine(dir, "state-b");
            string fileA = Path.Combine(dir, "a-owns-1.img"), fileB = Path.Combine(dir, "b-keeps-1.img");
            Directory.CreateDirectory(stateA);
            Directory.CreateDirectory(stateB);
            Dictionary<string, string?> a = With(Mirror, new()
            {
                ["Node:StateDirectory"] = stateA,
                ["Bdevs:0:Type"] = "file",
                ["Bdevs:0:Path"] = fileA,
            });
            using var pair = new ProcessPair(a, With(Mirror, FileReplica(1, fileB, stateB)), clockOffsetSecondsB: -3 * 3600);
            pair.WaitHealthy();
            TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["links"]![0]!["replicas"]!.AsArray().Single()!["whole"]!.GetValue<bool>(),
                "B's replica of NSID 1 whole", TimeSpan.FromSeconds(60));
            using (NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid()))
            {
                for (ulong lba = 0; lba < 32; lba++) Assert.True(viaA.IoQueues[0].Write(1, lba, 1, Block(1, lba)).IsSuccess);
                Assert.True(viaA.IoQueues[0].Flush(1).IsSuccess);
            }
            pair.Kill('A');
            TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "B to find A dead",
                TimeSpan.FromSeconds(30));
            TakeOver(pair, 'B', 1);
            pair.Kill('B');
            File.Delete(fileB); // B's disk with the data it served is gone
            pair.Start('B');
            pair.Start('A');
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["term"]!.GetValue<ulong>() == 1, "A to learn B's term", TimeSpan.FromSeconds(30));
            pair.WaitLogged('A', "refused the owner's resync", TimeSpan.FromSeconds(30));
            using (NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid()))
                Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), viaB.IoQueues[0].Read(1, 0, 1, new byte[512]));
            byte[] kept = FileBytes(fileA, 0, 32 * 512);
            for (int lba = 0; lba < 32; lba++)
                Assert.True(kept.AsSpan(lba * 512, 512).SequenceEqual(Block(1, (ulong)lba)), $"A's file lost LBA {lba}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
