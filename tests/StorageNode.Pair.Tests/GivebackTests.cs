using System.Text.Json.Nodes;
using StorageNode.Control;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Testing;
using static StorageNode.Pair.Tests.MirrorRig;

namespace StorageNode.Pair.Tests;

/// <summary>
/// Giveback (docs/ha.md, "Giveback"): the node that took a group over hands it back to its configured owner once that
/// node, back as the keeper, holds its replicas in sync — on <c>cluster_giveback</c> or by itself
/// (<c>Cluster:AutoGiveback</c>) — under the hosts' writes, with no acknowledged write lost and no moment where both
/// nodes serve the group.
/// </summary>
public sealed class GivebackTests
{
    private static JsonObject MirrorOf(ProcessPair pair, char node, uint nsid)
        => pair.Rpc(node, "cluster_get_status")!["links"]![0]!["mirrors"]!.AsArray().Single(m => m!["nsid"]!.GetValue<uint>() == nsid)!.AsObject();

    private static JsonNode? Call(ProcessPair pair, char node, string method, uint group)
        => pair.Rpc(node, method, new JsonObject { ["nqn"] = TestPair.Nqn, ["anagrpid"] = group });

    /// <summary>A killed, B takes group 1 over, A started again is resynced as the keeper (B's mirror in sync, A knows it).</summary>
    private static void TakenOverAndResynced(ProcessPair pair)
    {
        pair.WaitHealthy();
        // In sync, and B's knowledge of it renewed by a lease (the takeover's condition: whole when A was last heard).
        TestPair.WaitUntil(() => MirrorOf(pair, 'A', 1)["state"]!.GetValue<string>() == "in_sync"
            && pair.Rpc('B', "cluster_get_status")!["links"]![0]!["replicas"]!.AsArray().Single(r => r!["nsid"]!.GetValue<uint>() == 1)!["whole"]!.GetValue<bool>(),
            "A's NSID 1 in sync and whole on B", TimeSpan.FromSeconds(60));
        pair.Kill('A');
        TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "B to find A dead",
            TimeSpan.FromSeconds(30));
        Call(pair, 'B', "cluster_takeover", 1);
        // Nothing to give back to a partner that is away.
        Assert.Contains("interconnect", Assert.Throws<RpcException>(() => Call(pair, 'B', "cluster_giveback", 1)).Message, StringComparison.Ordinal);
        pair.Start('A');
        TestPair.WaitUntil(() => Group(pair, 'A', 1)["term"]!.GetValue<ulong>() == 1, "A to learn B's term", TimeSpan.FromSeconds(30));
    }

    /// <summary>
    /// A host writes versioned blocks through both nodes (a write that gets a path status is retried through the other,
    /// as a multipath host does); meanwhile B gives group 1 back to A. Every block reads back as last acknowledged
    /// through both nodes; A owns group 1 at term 2 and serves it optimized, B relays it; A mirrors to B's replica, which
    /// it resyncs. A giveback is refused where there is nothing to give back.
    /// </summary>
    [Theory]
    [InlineData(3 * 3600)]
    [InlineData(-3 * 3600)]
    public void TwoProcessesAGroupGivenBackUnderTheHostsWritesKeepsEveryAcknowledgedWrite(int clockOffsetB)
    {
        using var pair = new ProcessPair(Mirror, Mirror, clockOffsetB);
        TakenOverAndResynced(pair);
        // Refused while A's replica is not yet in sync (or accepted once it is: the wait below covers both).
        TestPair.WaitUntil(() => MirrorOf(pair, 'B', 1)["state"]!.GetValue<string>() == "in_sync", "B to resync A's replica", TimeSpan.FromSeconds(60));

        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid());
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid());
        var acked = new Dictionary<ulong, uint>();
        long retried = 0;
        string? failed = null;
        bool stop = false;
        var writer = new Thread(() =>
        {
            var rnd = new Random(11);
            for (uint v = 1; v <= 200_000 && !Volatile.Read(ref stop) && failed == null; v++)
            {
                ulong lba = (ulong)rnd.Next(0, 512);
                byte[] data = Block(v, lba);
                NvmeHost first = v % 2 == 0 ? viaA : viaB;
                NvmeStatus st = default;
                // A host's multipath: a path status is retried on the other path, then again (bounded).
                for (int attempt = 0; attempt < 400; attempt++)
                {
                    st = (attempt % 2 == 0 ? first : first == viaA ? viaB : viaA).IoQueues[0].Write(1, lba, 1, data);
                    if (st.Type != StatusCodeType.PathRelated) break;
                    Interlocked.Increment(ref retried);
                    if (attempt % 2 == 1) Thread.Sleep(5);
                }
                if (!st.IsSuccess) { failed = $"write {v} at LBA {lba}: {st}"; break; }
                lock (acked) acked[lba] = v;
            }
        }) { IsBackground = true };
        writer.Start();
        int Acked() { lock (acked) return acked.Count; }
        TestPair.WaitUntil(() => Acked() > 100, "the host's writes to run", TimeSpan.FromSeconds(30));

        JsonNode given = Call(pair, 'B', "cluster_giveback", 1)!;
        Assert.Equal("A", given["owner"]!.GetValue<string>());
        Assert.Equal(2UL, given["term"]!.GetValue<ulong>());
        pair.WaitLogged('A', "ANA group 1 given back by B");
        int atGiveback = Acked();
        TestPair.WaitUntil(() => Acked() > atGiveback + 100 || failed != null, "the host's writes to go on after the giveback", TimeSpan.FromSeconds(30));
        Volatile.Write(ref stop, true);
        Assert.True(writer.Join(TimeSpan.FromSeconds(60)), "the writer to stop");
        Assert.True(failed == null, $"{failed}\n{pair.Problems()}");

        JsonObject a1 = Group(pair, 'A', 1), b1 = Group(pair, 'B', 1);
        Assert.Equal("A", a1["owner"]!.GetValue<string>());
        Assert.Equal(2UL, a1["term"]!.GetValue<ulong>());
        Assert.True(a1["served_here"]!.GetValue<bool>());
        Assert.Equal("A", b1["owner"]!.GetValue<string>());
        Assert.Equal(2UL, b1["term"]!.GetValue<ulong>());
        Assert.False(b1["served_here"]!.GetValue<bool>());
        Assert.Null(b1["giving_back_at"]);

        var buf = new byte[512];
        foreach ((ulong lba, uint v) in acked)
            foreach (NvmeHost h in new[] { viaA, viaB })
            {
                NvmeStatus st = h.IoQueues[0].Read(1, lba, 1, buf);
                Assert.True(st.IsSuccess, $"read LBA {lba} through {(h == viaA ? 'A' : 'B')} after the giveback: {st}");
                Assert.True(buf.AsSpan().SequenceEqual(Block(v, lba)),
                    $"LBA {lba} through {(h == viaA ? 'A' : 'B')}: not version {v}, the last acknowledged (version {BitConverter.ToUInt32(buf)})");
            }
        // A mirrors to B's replica again: resynced, in sync.
        TestPair.WaitUntil(() => MirrorOf(pair, 'A', 1)["state"]!.GetValue<string>() == "in_sync", "A to resync B's replica", TimeSpan.FromSeconds(60));
        // Nothing to give back on either node now.
        Assert.Contains("nothing to give back", Assert.Throws<RpcException>(() => Call(pair, 'A', "cluster_giveback", 1)).Message, StringComparison.Ordinal);
        Assert.Contains("not served by this node", Assert.Throws<RpcException>(() => Call(pair, 'B', "cluster_giveback", 1)).Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// <c>Cluster:AutoGiveback</c> on B: once A, back as the keeper, has its replica in sync, B gives group 1 back by
    /// itself; what the host wrote through B while it owned the group reads back through A.
    /// </summary>
    [Fact]
    public void TwoProcessesAutoGivebackReturnsTheGroupOnceTheReplicaIsInSync()
    {
        using var pair = new ProcessPair(Mirror, With(Mirror, new() { ["Cluster:AutoGiveback"] = "true" }), clockOffsetSecondsB: 2 * 3600);
        TakenOverAndResynced(pair);
        TestPair.WaitUntil(() => Group(pair, 'A', 1)["term"]!.GetValue<ulong>() == 2, "B to give group 1 back by itself", TimeSpan.FromSeconds(90));
        Assert.True(Group(pair, 'A', 1)["served_here"]!.GetValue<bool>());
        pair.WaitLogged('B', "given back automatically");
        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Assert.True(viaA.IoQueues[0].Write(1, 7, 1, Block(5, 7)).IsSuccess);
        var buf = new byte[512];
        Assert.True(viaA.IoQueues[0].Read(1, 7, 1, buf).IsSuccess);
        Assert.True(buf.AsSpan().SequenceEqual(Block(5, 7)));
    }

    /// <summary>
    /// In one process: B took group 1 over in a partition and A, healed, is its keeper in sync. A host registers a
    /// reservation key on NSID 1 through B: a giveback is refused (it would drop the reservation, which it does not hand
    /// over yet) and the group stays served by B; once the key is unregistered the giveback goes, and A serves NSID 1
    /// with what the host wrote through B.
    /// </summary>
    [Fact]
    public void AGivebackIsRefusedWhileTheNamespaceHasReservations()
    {
        using TestPair pair = InSyncPair();
        (Target.Subsystem sa, Target.Subsystem sb) = PartitionedAndTakenOverByB(pair);
        pair.InterconnectAtoB.Blocked = pair.InterconnectBtoA.Blocked = false;
        TestPair.WaitUntil(() => pair.A.Pair!.OwnershipOf(sa, 1)!.Current == new GroupTerm(1, "B"), "A to learn B's term", TimeSpan.FromSeconds(30));
        NamespaceMirror mirrorOfB = pair.B.Pair!.Links[0].Mirrors.Single(m => m.Nsid == 1);
        TestPair.WaitUntil(() => mirrorOfB.PartnerKnowsInSync, "B to resync A's replica, and A to know", TimeSpan.FromSeconds(60));

        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid());
        Assert.True(viaB.IoQueues[0].Write(1, 9, 1, Block(4, 9)).IsSuccess);
        Assert.True(viaB.IoQueues[0].ReservationRegister(1, ReservationAction.Register, 0, 0xABC).IsSuccess);
        Assert.True(sb.GetNamespace(1)!.Reservations.Snapshot().Registrants.Length == 1, $"registrants on B: {sb.GetNamespace(1)!.Reservations.Snapshot()} remote {sb.GetNamespace(1)!.IsRemote}");
        InvalidOperationException e = Assert.Throws<InvalidOperationException>(() => pair.B.Pair!.GiveBack(sb, 1));
        Assert.Contains("reservations", e.Message, StringComparison.Ordinal);
        Assert.True(pair.B.Pair!.MayServe(sb, 1));
        Assert.True(viaB.IoQueues[0].Write(1, 10, 1, Block(4, 10)).IsSuccess);
        Assert.True(viaB.IoQueues[0].ReservationRegister(1, ReservationAction.Unregister, 0xABC, 0).IsSuccess);
        TestPair.WaitUntil(() => mirrorOfB.PartnerKnowsInSync, "B's mirror in sync, and A to know", TimeSpan.FromSeconds(30));
        Assert.Equal(new GroupTerm(2, "A"), pair.B.Pair!.GiveBack(sb, 1));
        Assert.True(pair.A.Pair!.MayServe(sa, 1));
        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid());
        var buf = new byte[512];
        foreach (ulong lba in new ulong[] { 9, 10 })
        {
            Assert.True(viaA.IoQueues[0].Read(1, lba, 1, buf).IsSuccess);
            Assert.True(buf.AsSpan().SequenceEqual(Block(4, lba)), $"LBA {lba} through A after the giveback");
        }
    }

    /// <summary>
    /// The offer gets no answer: A is frozen (SIGSTOP) as B gives group 1 back, and thawed a few heartbeat timeouts later.
    /// B holds the group until the interconnect's next association says whether A took it; either way exactly one node
    /// serves group 1 afterwards, at one term on both, and a block written before reads back through both nodes.
    /// </summary>
    [Fact]
    public void TwoProcessesAnUnansweredGivebackIsSettledByTheNextAssociation()
    {
        using var pair = new ProcessPair(Mirror, Mirror, clockOffsetSecondsB: -2 * 3600);
        TakenOverAndResynced(pair);
        TestPair.WaitUntil(() => MirrorOf(pair, 'B', 1)["state"]!.GetValue<string>() == "in_sync", "B to resync A's replica", TimeSpan.FromSeconds(60));
        using (NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid()))
            Assert.True(viaB.IoQueues[0].Write(1, 3, 1, Block(9, 3)).IsSuccess);
        TestPair.WaitUntil(() => MirrorOf(pair, 'B', 1)["state"]!.GetValue<string>() == "in_sync", "B's mirror in sync", TimeSpan.FromSeconds(30));

        pair.Freeze('A', true);
        try
        {
            // No answer (or the link found down first: then the offer never went): refused either way here.
            Assert.Throws<RpcException>(() => Call(pair, 'B', "cluster_giveback", 1));
            // The group is not served by B while the offer is unsettled (or B serves it again: it never went).
            JsonObject b1 = Group(pair, 'B', 1);
            Assert.False(b1["giving_back_at"] != null && b1["served_here"]!.GetValue<bool>(), "B serves a group it offered");
            Thread.Sleep(3000);
        }
        finally
        {
            pair.Freeze('A', false);
        }
        pair.WaitHealthy();
        TestPair.WaitUntil(() =>
        {
            JsonObject a = Group(pair, 'A', 1), b = Group(pair, 'B', 1);
            return b["giving_back_at"] == null && a["term"]!.GetValue<ulong>() == b["term"]!.GetValue<ulong>()
                && a["served_here"]!.GetValue<bool>() != b["served_here"]!.GetValue<bool>();
        }, "the giveback settled: one term on both nodes, one of them serving group 1", TimeSpan.FromSeconds(60));
        // B said how it ended: given (the answer, or A's descriptor at term 2) or served again (A never took it).
        Assert.True(pair.Log('B').Contains("ANA group 1 given back to A", StringComparison.Ordinal)
            || pair.Log('B').Contains("ANA group 1: not given back to A", StringComparison.Ordinal), pair.Problems());
        foreach (System.Net.IPEndPoint ep in new[] { pair.EndpointA, pair.EndpointB })
        {
            using NvmeHost h = pair.Connect(ep, Guid.NewGuid());
            var buf = new byte[512];
            NvmeStatus st = default;
            // A path status while the other node's relay opens is retried (bounded).
            for (int i = 0; i < 200; i++)
            {
                st = h.IoQueues[0].Read(1, 3, 1, buf);
                if (st.Type != StatusCodeType.PathRelated) break;
                Thread.Sleep(50);
            }
            Assert.True(st.IsSuccess, $"read through {ep}: {st}\n{pair.Problems()}");
            Assert.True(buf.AsSpan().SequenceEqual(Block(9, 3)), $"LBA 3 through {ep} lost the write acknowledged before the giveback");
        }
    }
}
