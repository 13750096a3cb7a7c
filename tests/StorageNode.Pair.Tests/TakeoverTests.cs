using System.Text.Json.Nodes;
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
    private static byte[] Block(uint version, ulong lba)
    {
        var b = new byte[512];
        BitConverter.TryWriteBytes(b.AsSpan(0), version);
        BitConverter.TryWriteBytes(b.AsSpan(8), lba);
        for (int i = 16; i < b.Length; i++) b[i] = (byte)(version * 31 + lba + (ulong)i);
        return b;
    }

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

    private static JsonObject Group(ProcessPair pair, char node, uint group)
        => pair.Rpc(node, "cluster_get_status")!["links"]![0]!["groups"]!.AsArray().Single(g => g!["anagrpid"]!.GetValue<uint>() == group)!.AsObject();

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
    /// optimized there. A started again learns that B owns group 1 and holds it inaccessible (its RAM is empty).
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
        for (uint v = 1; v <= 400; v++)
        {
            ulong lba = (ulong)rnd.Next(0, 256);
            NvmeHost h = v % 2 == 0 ? viaA : viaB;
            NvmeStatus st = h.IoQueues[0].Write(1, lba, 1, Block(v, lba));
            Assert.True(st.IsSuccess, $"write {v} through {(h == viaA ? 'A' : 'B')}: {st}\n{pair.Problems()}");
            acked[lba] = v;
        }

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
        var buf = new byte[512];
        foreach ((ulong lba, uint v) in acked)
        {
            NvmeStatus st = viaB.IoQueues[0].Read(1, lba, 1, buf);
            Assert.True(st.IsSuccess, $"read LBA {lba} through B after the takeover: {st}");
            Assert.True(buf.AsSpan().SequenceEqual(Block(v, lba)), $"LBA {lba}: not version {v}, the last acknowledged (version {BitConverter.ToUInt32(buf)})");
        }
        for (uint v = 1001; v <= 1100; v++)
        {
            ulong lba = (ulong)rnd.Next(0, 256);
            Assert.True(viaB.IoQueues[0].Write(1, lba, 1, Block(v, lba)).IsSuccess, $"write {v} through B after the takeover");
            acked[lba] = v;
        }
        // Taking it over again is refused: it is served here.
        Assert.Contains("already", Assert.Throws<RpcException>(() => TakeOver(pair, 'B', 1)).Message, StringComparison.Ordinal);

        // A comes back: it hears B's term before it serves group 1, and holds it (its RAM is empty).
        pair.Start('A');
        TestPair.WaitUntil(() => Group(pair, 'A', 1)["term"]!.GetValue<ulong>() == 1, "A to learn B's term", TimeSpan.FromSeconds(30));
        JsonObject a1 = Group(pair, 'A', 1);
        Assert.Equal("B", a1["owner"]!.GetValue<string>());
        Assert.False(a1["served_here"]!.GetValue<bool>());
        using NvmeHost viaA2 = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), viaA2.IoQueues[0].Write(1, 0, 1, Block(9999, 0)));
        Assert.Equal((byte)Nvme.Spec.AnaState.Inaccessible, AnaState(viaA2, 1));
        foreach ((ulong lba, uint v) in acked)
        {
            Assert.True(viaB.IoQueues[0].Read(1, lba, 1, buf).IsSuccess);
            Assert.True(buf.AsSpan().SequenceEqual(Block(v, lba)), $"LBA {lba} after A's return: not version {v}");
        }
        // Group 2 (B's) is served as before: directly on B.
        Assert.True(viaB.IoQueues[0].Write(2, 0, 1, Block(1, 0)).IsSuccess);
    }

    /// <summary>
    /// The namespace and the replica in files, with state directories: the takeover is kept. After it, B dies too and A
    /// starts alone: A cannot know B took group 1 over, so it holds it (a write through A gets ANA Inaccessible). B
    /// started again finds its term in its state directory; once they hear each other A keeps B's term and holds its stale
    /// file, and B serves NSID 1 from its replica file with everything the host wrote before and after the takeover.
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

            // B comes back: its kept term reaches A, which keeps it and holds its stale file; B serves from its replica.
            pair.Start('B');
            TestPair.WaitUntil(() => Group(pair, 'B', 1)["served_here"]!.GetValue<bool>(), "B, started again, to serve group 1 once it heard A",
                TimeSpan.FromSeconds(30));
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["term"]!.GetValue<ulong>() == 1, "A to learn B's term", TimeSpan.FromSeconds(30));
            Assert.Equal("1 B", File.ReadAllText(Directory.GetFiles(stateA, "*-group1.owner").Single()).Trim());
            using (NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid()))
                Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), viaA.IoQueues[0].Write(1, 40, 1, Block(3, 40)));
            using NvmeHost host = pair.Connect(pair.EndpointB, Guid.NewGuid());
            var buf = new byte[512];
            for (ulong lba = 0; lba < 96; lba++)
            {
                Assert.True(host.IoQueues[0].Read(1, lba, 1, buf).IsSuccess, $"read LBA {lba} through B");
                Assert.True(buf.AsSpan().SequenceEqual(Block(lba < 32 ? 1u : 2u, lba)), $"LBA {lba}: not the last acknowledged version");
            }
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
        InvalidOperationException e = Assert.Throws<InvalidOperationException>(() => pair.B.Pair!.TakeOver(s, 1, force: true));
        Assert.Contains("it has an interconnect association into this node", e.Message, StringComparison.Ordinal);
        Assert.False(s.IsLocalGroup(1));
    }
}
