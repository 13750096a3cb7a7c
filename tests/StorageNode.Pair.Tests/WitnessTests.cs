using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Control;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Target;
using StorageNode.Testing;
using StorageNode.Witness;
using static StorageNode.Pair.Tests.MirrorRig;

namespace StorageNode.Pair.Tests;

/// <summary>
/// The witness (docs/ha.md, "The witness"): three processes — two nodes, B's clock hours off, and a
/// <c>storagenode witness</c> — killed for real; and one pair in this process with a witness in it, to see every ANA state a
/// takeover on the witness's grant publishes.
/// </summary>
public sealed class WitnessTests
{
    /// <summary>
    /// Versioned blocks written through both nodes; A (group 1's owner) holds its lease at the witness. A is killed
    /// (SIGKILL): B, finding A silent on both channels, asks the witness, which grants group 1 once A's lease has run out;
    /// B serves it from its replica with no operator, on the host's existing connection: every acknowledged block reads
    /// back, new writes succeed. A started again learns B's term before it serves anything.
    /// </summary>
    [Theory]
    [InlineData(3 * 3600)]
    [InlineData(-3 * 3600)]
    public void TheSurvivorTakesADeadOwnersGroupOverOnItsOwnWithEveryAcknowledgedWrite(int clockOffsetB)
    {
        // The lease outlasts the heartbeat timeout (2 s here), as docs/ha.md advises: B asks while A's lease still runs.
        using var witness = new WitnessProcess(leaseMs: 2500);
        using var pair = new ProcessPair(WithWitness(witness), WithWitness(witness), clockOffsetB);
        pair.WaitHealthy();
        WaitInSync(pair);
        TestPair.WaitUntil(() => Group(pair, 'A', 1)["witness_lease_ms"]!.GetValue<long>() > 0, "A to hold group 1's lease at the witness");
        Assert.Equal(0, Group(pair, 'B', 1)["witness_lease_ms"]!.GetValue<long>());
        Assert.NotNull(pair.Rpc('A', "cluster_get_status")!["witness"]!["answered_ms_ago"]);

        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid());
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid());
        var acked = new Dictionary<ulong, uint>();
        var rnd = new Random(11);
        WriteVersions(acked, rnd, 1, 300, "through A and B", viaA, viaB);

        pair.Kill('A');
        var stall = Stopwatch.StartNew();
        // Bounded by the heartbeat timeout, the lease, and the machine's load: generous.
        try { TestPair.WaitUntil(() => Group(pair, 'B', 1)["served_here"]!.GetValue<bool>(), "B to take group 1 over on its own", TimeSpan.FromSeconds(30)); }
        catch (TimeoutException) { Console.WriteLine(pair.Log('B')); Console.WriteLine(witness.Output); throw; }
        TimeSpan took = stall.Elapsed;
        pair.WaitLogged('B', "taken over automatically");
        JsonObject g1 = Group(pair, 'B', 1);
        Assert.Equal(("B", 1UL), (g1["owner"]!.GetValue<string>(), g1["term"]!.GetValue<ulong>()));
        Assert.True(g1["witness_lease_ms"]!.GetValue<long>() > 0, "B holds the lease it was granted");
        Assert.Contains("granted to B at term 1", witness.Output, StringComparison.Ordinal);

        ReadBack(viaB, acked, "through B after the takeover");
        WriteVersions(acked, rnd, 1001, 1100, "through B after the takeover", viaB);

        // A comes back: it learns B's term and serves nothing of group 1 itself; B resyncs A's replica.
        pair.Start('A');
        TestPair.WaitUntil(() => Group(pair, 'A', 1)["term"]!.GetValue<ulong>() == 1, "A to learn B's term", TimeSpan.FromSeconds(30));
        Assert.False(Group(pair, 'A', 1)["served_here"]!.GetValue<bool>());
        ReadBack(viaB, acked, "through B after A's return");
        Console.WriteLine($"[witness takeover] clock offset {clockOffsetB} s: group 1 served on B {took.TotalMilliseconds:0} ms after A was killed");
    }

    /// <summary>
    /// The witness is killed: A keeps serving (its interconnect is up). The interconnect is cut too (the heartbeats still
    /// flow, so B takes nothing over): A hears neither and fences itself off group 1 — writes through A get ANA
    /// Inaccessible. The witness started again renews A's lease: the fence lifts, and A, its replica on B unreachable,
    /// has the witness record that it serves group 1 alone (kept in its state file) before its writes complete. When A
    /// dies then, B does not take group 1 over on its own (its replica lacks those writes): an operator's forced
    /// takeover is what serves it, and the witness keeps B's term.
    /// </summary>
    [Fact]
    public void AnOwnerThatHearsNeitherPartnerNorWitnessFencesItselfAndOneThatServedAloneIsNotReplacedByAStaleReplica()
    {
        string dir = Directory.CreateTempSubdirectory("sn-witness-").FullName;
        try
        {
            using var witness = new WitnessProcess(leaseMs: 1000, stateDirectory: dir);
            using var pair = new ProcessPair(WithWitness(witness), WithWitness(witness), clockOffsetSecondsB: 2 * 3600);
            pair.WaitHealthy();
            WaitInSync(pair);
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["witness_lease_ms"]!.GetValue<long>() > 0, "A to hold group 1's lease at the witness");
            using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid());

            witness.Kill();
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["witness_lease_ms"]!.GetValue<long>() == 0, "A's lease to run out", TimeSpan.FromSeconds(10));
            Assert.True(viaA.IoQueues[0].Write(1, 0, 1, Block(1, 0)).IsSuccess, "A serves with its interconnect up, the witness gone");
            Assert.False(Group(pair, 'A', 1)["fenced"]!.GetValue<bool>());

            pair.InterconnectAtoB.Blocked = true;
            pair.InterconnectAtoB.Cut();
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["fenced"]!.GetValue<bool>(), "A to fence itself off group 1", TimeSpan.FromSeconds(10));
            pair.WaitLogged('A', "ANA group 1: fenced");
            // B still hears A (heartbeats, and its own association into A): it takes nothing over.
            Assert.NotEqual("partner_down", pair.Rpc('B', "cluster_get_status")!["partner_status"]!.GetValue<string>());
            NvmeStatus fenced = viaA.IoQueues[0].Write(1, 1, 1, Block(2, 1));
            Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), fenced);

            // The witness comes back (it kept A's term): the fence lifts; writes the replica lacks complete once the
            // witness has recorded A alone.
            witness.Start();
            TestPair.WaitUntil(() => !Group(pair, 'A', 1)["fenced"]!.GetValue<bool>(), "A's fence to lift", TimeSpan.FromSeconds(10));
            NvmeStatus alone = NvmeStatus.Path(PathStatus.AnaInaccessible);
            TestPair.WaitUntil(() => (alone = viaA.IoQueues[0].Write(1, 2, 1, Block(3, 2))).IsSuccess, "a write through A to complete alone", TimeSpan.FromSeconds(20));
            Assert.True(Group(pair, 'A', 1)["alone"]!.GetValue<bool>());
            pair.WaitLogged('A', "the witness recorded that this node serves it alone");

            // The witness keeps it: A, term 0, alone.
            Assert.Contains($"{TestPair.Nqn} 1 0 A 1 ", File.ReadAllText(Path.Combine(dir, "witness.state")), StringComparison.Ordinal);

            // A dies: B finds it silent on both channels and does not take group 1 over (its replica lacks A's writes).
            pair.Kill('A');
            pair.WaitLogged('B', "does not take the group over yet", TimeSpan.FromSeconds(30));
            Assert.False(Group(pair, 'B', 1)["served_here"]!.GetValue<bool>());
            // An operator decides: a forced takeover serves the replica (the write A completed alone is lost with A).
            // (The witness grants it once B has asked for a heartbeat interval: tried until then.)
            JsonNode? took = null;
            TestPair.WaitUntil(() =>
            {
                try { took = pair.Rpc('B', "cluster_takeover", new JsonObject { ["nqn"] = TestPair.Nqn, ["anagrpid"] = 1, ["force"] = true }); }
                catch (RpcException e) when (e.Message.Contains("has asked for", StringComparison.Ordinal)) { return false; }
                return true;
            }, "the forced takeover on B", TimeSpan.FromSeconds(20));
            Assert.Equal(1UL, took!["term"]!.GetValue<ulong>());
            Assert.True(Group(pair, 'B', 1)["served_here"]!.GetValue<bool>());
            Assert.Contains($"{TestPair.Nqn} 1 1 B 0 ", File.ReadAllText(Path.Combine(dir, "witness.state")), StringComparison.Ordinal);
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// A's namespace in a file, with a state directory. B dies; A goes on alone (the witness records it), then dies too
    /// and starts again with B still dead: it has not heard B, and the witness says A owns group 1 and records it alone
    /// again, so A serves it — every write read back. Started once more with the witness dead as well, A serves nothing
    /// of group 1 and says why in one line; the witness started again (it kept its records) lets A serve it.
    /// </summary>
    [Fact]
    public void AnOwnerStartedWithoutItsPartnerServesOnlyOnceTheWitnessSaysItStillOwnsTheGroup()
    {
        string dir = Directory.CreateTempSubdirectory("sn-witness-").FullName;
        try
        {
            string stateA = Path.Combine(dir, "state-a"), wdir = Path.Combine(dir, "witness");
            Directory.CreateDirectory(stateA);
            using var witness = new WitnessProcess(leaseMs: 1000, stateDirectory: wdir);
            Dictionary<string, string?> a = WithWitness(witness, new()
            {
                ["Node:StateDirectory"] = stateA,
                ["Bdevs:0:Type"] = "file",
                ["Bdevs:0:Path"] = Path.Combine(dir, "a-owns-1.img"),
            });
            using var pair = new ProcessPair(a, WithWitness(witness), clockOffsetSecondsB: -2 * 3600);
            pair.WaitHealthy();
            WaitInSync(pair);
            var acked = new Dictionary<ulong, uint>();
            using (NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid()))
            {
                for (ulong lba = 0; lba < 64; lba++)
                {
                    Assert.True(viaA.IoQueues[0].Write(1, lba, 1, Block(1, lba)).IsSuccess);
                    acked[lba] = 1;
                }
                pair.Kill('B');
                TestPair.WaitUntil(() => pair.Rpc('A', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "A to find B dead",
                    TimeSpan.FromSeconds(30));
                for (ulong lba = 0; lba < 32; lba++)
                {
                    NvmeStatus st = viaA.IoQueues[0].Write(1, lba, 1, Block(2, lba));
                    Assert.True(st.IsSuccess, $"write LBA {lba} through A alone: {st}\n{pair.Problems()}");
                    acked[lba] = 2;
                }
                Assert.True(Group(pair, 'A', 1)["alone"]!.GetValue<bool>());
            }

            void ReadBackThroughA(string when)
            {
                using NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid());
                ReadBack(h, acked, $"through A {when}");
            }

            // A starts again, B still dead: the witness says A owns group 1.
            pair.KillAndRestart('A');
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["served_here"]!.GetValue<bool>(), "A to serve group 1 on the witness's word", TimeSpan.FromSeconds(30));
            pair.WaitLogged('A', "the witness says this node owns it");
            ReadBackThroughA("started again without B");

            // Neither B nor the witness: held, said once.
            pair.Kill('A');
            witness.Kill();
            pair.Start('A');
            pair.WaitLogged('A', "has heard neither B nor the witness", TimeSpan.FromSeconds(30));
            Assert.False(Group(pair, 'A', 1)["served_here"]!.GetValue<bool>());
            using (NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid()))
                Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), h.IoQueues[0].Read(1, 0, 1, new byte[512]));

            witness.Start();
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["served_here"]!.GetValue<bool>(), "A to serve group 1 once the witness answers", TimeSpan.FromSeconds(30));
            ReadBackThroughA("once the witness came back");
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// Split brain: A, group 1's owner, is cut off from B on both channels (interconnect and heartbeats) and from the
    /// witness, all three alive; B still reaches the witness. Host 1 writes versioned blocks to NSID 1 through A only,
    /// host 2 through B only, each retrying what fails. With the self-fence, A stops completing writes before the
    /// witness lets B have group 1: every write host 1 got acknowledged after the cut was acknowledged before the first
    /// write host 2 got acknowledged from B as the new owner, and every acknowledged block reads back from B.
    /// </summary>
    [Fact]
    public void SplitBrainWithTheSelfFenceAtMostOneNodeAcceptsWritesAndNoAcknowledgedWriteIsLost()
    {
        (List<string> violations, string report) = SplitBrain(selfFence: true);
        Assert.True(violations.Count == 0, $"{string.Join("\n", violations.Take(10))}\n{report}");
    }

    /// <summary>The same cut with <c>Cluster:SelfFence</c> false: both nodes accept writes, and writes A acknowledged are lost (the test can fail).</summary>
    [Fact]
    public void SplitBrainWithoutTheSelfFenceBothNodesAcceptWritesAndAcknowledgedWritesAreLost()
    {
        (List<string> violations, string report) = SplitBrain(selfFence: false);
        Assert.True(violations.Count > 0, $"no violation without the self-fence:\n{report}");
    }

    /// <summary>
    /// One process, an in-process witness (lease 1 s): A, group 1's owner, is cut off from B on both channels and from
    /// the witness (a UDP relay on A's way to it); B finds A silent and asks the witness, which grants group 1 once A's
    /// lease has run out. At the grant (<see cref="Pair.PairNode.AfterWitnessGrant"/>, before B changes anything) the
    /// interconnect comes back and B's link into A comes up, so that B takes the group over while its partner answers
    /// again, and A may serve group 1 until it learns B's term. Every ANA state B
    /// publishes for group 1 is recorded (<see cref="Target.Subsystem.AnaPublished"/>) with whether the grant's hold
    /// holds it: from the grant on, group 1 must never be Optimized on B before that hold was placed — B goes from held
    /// for the change-over straight to held for the grant, released a heartbeat timeout and two intervals after it last
    /// heard A, and only then serves it. (Before the fix B published group 1 Optimized and unheld as the change-over's hold was
    /// released, then held it: every run.) A learns B's term.
    /// </summary>
    [Fact]
    public void AGroupGrantedWhileThePartnerReconnectsIsNeverServedUnheld()
    {
        using var w = new InProcessWitnessPair();
        TestPair pair = w.Pair;
        Target.Subsystem sa = w.SA, sb = w.SB;
        PairNode b = w.B;
        {

            // Every ANA state of group 1 on B from now on, with whether the grant's hold holds it, and when.
            var trace = new List<(AnaState State, bool GrantHeld, long Ticks)>();
            int grantedAt = -1, hooked = 0;
            string? hookFailed = null;
            long heardAtGrant = 0; // when B had last heard A once A was back (at least): the hold runs 2.2 s past it
            sb.AnaPublished = () =>
            {
                lock (trace) trace.Add((sb.GetAnaState(1, ListenerRole.Direct), sb.IsGroupHeldBy(1, b.GrantHold), Stopwatch.GetTimestamp()));
            };
            b.AfterWitnessGrant = (s, g) =>
            {
                if (s != sb || g != 1 || Interlocked.Exchange(ref hooked, 1) != 0) return;
                lock (trace) grantedAt = trace.Count;
                // The partner comes back while B was asking: the interconnect heals, and the heartbeats (A, hearing B
                // again, stops asking the witness for B's group: its descriptor is not refused to B's link any more).
                pair.InterconnectAtoB.Blocked = pair.InterconnectBtoA.Blocked = false;
                w.A.SilenceHeartbeatChannel(false);
                b.SilenceHeartbeatChannel(false);
                try
                {
                    // B's own link into A up: A answers B again. (A's association into B alone would not do: refused B's
                    // descriptor while B asks, it carries no heartbeat, and A — hearing nothing of B — needs no hold.)
                    TestPair.WaitUntil(() => b.Links[0].IsUp, "B's interconnect into A up again", TimeSpan.FromSeconds(20));
                    heardAtGrant = Stopwatch.GetTimestamp();
                }
                catch (TimeoutException e) { hookFailed = e.Message; }
            };

            w.CutAOff();
            try
            {
                pair.WaitLogged('B', "taken over automatically", TimeSpan.FromSeconds(40));
                Assert.True(hooked == 1 && hookFailed == null, $"the grant's hook: {(hooked == 0 ? "not run" : hookFailed)}");
                pair.WaitLogged('B', "granted while A ");
                TestPair.WaitUntil(() => sb.GetAnaState(1, ListenerRole.Direct) == AnaState.Optimized, "B to serve group 1 once the grant's hold is released",
                    TimeSpan.FromSeconds(20));
            }
            catch (Exception e) when (e is TimeoutException or Xunit.Sdk.XunitException)
            {
                throw new InvalidOperationException($"{e.Message}\n{w.Problems()}", e);
            }

            List<(AnaState State, bool GrantHeld, long Ticks)> since;
            lock (trace) since = trace.Skip(grantedAt).ToList();
            string shown = string.Join(", ", since.Select(x => $"{x.State}{(x.GrantHeld ? " (grant hold)" : "")}"));
            Console.WriteLine($"[grant while the partner reconnects] B's group 1 from the grant on: {shown}");
            int held = since.FindIndex(x => x.GrantHeld), optimized = since.FindIndex(x => x.State == AnaState.Optimized);
            Assert.True(held >= 0, $"the grant's hold was never placed: {shown}");
            Assert.True(optimized > held, $"group 1 was Optimized on B, unheld, before the grant's hold was placed: {shown}");
            // Released no earlier than a heartbeat timeout and two intervals after B last heard A (timeout 2 s, interval
            // 100 ms here): by then A, which holds no lease and whose heartbeats B no longer answers, has fenced itself.
            double heldMs = Stopwatch.GetElapsedTime(heardAtGrant, since[optimized].Ticks).TotalMilliseconds;
            Assert.True(heardAtGrant != 0 && heldMs >= 2200, $"group 1 served {heldMs:0} ms after B last heard A: {shown}");
            Assert.False(sb.IsGroupHeldBy(1, b.GrantHold));

            // A learns B's term (over the interconnect: the witness is still cut off from it) and does not serve group 1.
            try { TestPair.WaitUntil(() => pair.A.Pair!.OwnershipOf(sa, 1)!.Current == new GroupTerm(1, "B"), "A to learn B's term", TimeSpan.FromSeconds(20)); }
            catch (TimeoutException e) { throw new InvalidOperationException($"{e.Message}\nA:\n{pair.Log('A')}\nB:\n{pair.Log('B')}", e); }
            TestPair.WaitUntil(() => sa.GetAnaState(1, ListenerRole.Direct) != AnaState.Optimized, "A to stop serving group 1");
            sb.AnaPublished = null;
            b.AfterWitnessGrant = null;
        }
    }

    /// <summary>
    /// A's machine loses power, as far as B can tell: both interconnect connections held open and silent (the forwarders'
    /// partition: no FIN, no reset), A's datagrams and witness renewals stopped. B takes group 1 over on the witness's
    /// grant with A's silent association still there. The grant's hold, meant for a partner that may still hear B, ends a
    /// heartbeat timeout and two intervals after A's last heartbeat reached B, by when A has fenced itself: B serves
    /// group 1 at once or nearly. (Before, the group was held that long from the grant — 2.2 s more, each power cut.)
    /// </summary>
    [Fact]
    public void AGroupGrantedWhileThePartnersAssociationIsSilentIsHeldOnlyUntilThePartnerHasFencedItself()
    {
        using var w = new InProcessWitnessPair();
        TestPair pair = w.Pair;
        Target.Subsystem sb = w.SB;
        PairNode b = w.B;
        int associationAtGrant = -1;
        long heldUntil = 0, heardAtGrant = 0;
        b.AfterWitnessGrant = (s, g) =>
        {
            if (s != sb || g != 1) return;
            Interlocked.Exchange(ref heardAtGrant, b.Links[0].PartnerHeardTicks);
            Interlocked.CompareExchange(ref associationAtGrant, sb.Controllers.Any(c => c.IsInterconnect) ? 1 : 0, -1);
        };
        b.OnGrantHold = (s, g, until) =>
        {
            if (s == sb && g == 1) Interlocked.Exchange(ref heldUntil, until);
        };
        long partitioned = w.PartitionAOff();
        try
        {
            pair.WaitLogged('B', "taken over automatically", TimeSpan.FromSeconds(40));
            TestPair.WaitUntil(() => sb.GetAnaState(1, ListenerRole.Direct) == AnaState.Optimized, "B to serve group 1", TimeSpan.FromSeconds(20));
        }
        catch (Exception e) when (e is TimeoutException or Xunit.Sdk.XunitException)
        {
            throw new InvalidOperationException($"{e.Message}\n{w.Problems()}", e);
        }
        finally
        {
            b.AfterWitnessGrant = null;
            b.OnGrantHold = null;
            pair.InterconnectAtoB.Cut();
            pair.InterconnectBtoA.Cut();
        }
        // The keep-alive would have ended A's association 8 s after its last heartbeat; B was granted the group before.
        Assert.True(associationAtGrant == 1, $"A's association into B at the grant: {(associationAtGrant < 0 ? "no grant seen" : "gone")}");
        long until = Interlocked.Read(ref heldUntil), heard = Interlocked.Read(ref heardAtGrant);
        Console.WriteLine($"[grant, the partner's association silent] A's last heartbeat {Stopwatch.GetElapsedTime(partitioned, heard).TotalMilliseconds:0} ms after the partition began; group 1 held for its grant: "
            + (until == 0 ? "no" : $"until {Stopwatch.GetElapsedTime(partitioned, until).TotalMilliseconds:0} ms after it"));
        // Held (if at all) until a heartbeat timeout and two intervals (2 s + 2 × 100 ms here) after A's last heartbeat
        // reached B — before the partition, or as it began — not that long from the grant.
        Assert.True(heard != 0 && Stopwatch.GetElapsedTime(partitioned, heard) < TimeSpan.FromSeconds(1), "A's last heartbeat came as the partition began");
        Assert.True(until == 0 || until <= heard + (long)(2.2 * Stopwatch.Frequency),
            $"group 1 held for its grant until {Stopwatch.GetElapsedTime(heard, until).TotalMilliseconds:0} ms after A's last heartbeat");
    }

    /// <summary>
    /// The model's finding (docs/ha.md, "The model"): A cut off from B on both channels and from the witness; B asks the
    /// witness for group 1, and as it is granted (<see cref="Pair.PairNode.AfterWitnessGrant"/>) the heartbeat channel
    /// heals — B hears A's datagrams again, so A's last sign of life moves past the end of B's replica lease. B must still
    /// take the group over, its replica checked as of A's last sign of life before it asked (its knowledge frozen while
    /// it asked): before, B declined the grant ("not whole when the partner was last heard") while the witness kept B's
    /// term, and nobody served group 1. The interconnect heals too, and A's association into B is refused B's descriptor
    /// until the ask is over (<see cref="Pair.PairNode.AskingToTakeOver"/>): A stays fenced, then learns B's term.
    /// </summary>
    [Fact]
    public void AGrantIsNotDeclinedWhenThePartnerIsHeardAgainDuringTheAsk()
    {
        using var w = new InProcessWitnessPair();
        TestPair pair = w.Pair;
        Target.Subsystem sa = w.SA, sb = w.SB;
        PairNode a = w.A, b = w.B;
        {

            int hooked = 0;
            bool frozenAtGrant = false, descriptorRefused = false, aUpDuringAsk = true;
            string? hookFailed = null;
            ReplicaKnowledge keeper = sb.GetNamespace(1)!.ReplicaKnowledge; // replaced by the namespace served once taken over
            b.AfterWitnessGrant = (s, g) =>
            {
                if (s != sb || g != 1 || Interlocked.Exchange(ref hooked, 1) != 0) return;
                frozenAtGrant = keeper.Taking;
                descriptorRefused = b.AskingToTakeOver(sb);
                // The heartbeat channel heals as the witness grants: B hears A again (the interconnect stays cut).
                long before = b.Membership.LastHeardTicks;
                a.SilenceHeartbeatChannel(false);
                b.SilenceHeartbeatChannel(false);
                try
                {
                    TestPair.WaitUntil(() => b.Membership.LastHeardTicks > before && b.Membership.PartnerHeard, "B to hear A's datagrams again", TimeSpan.FromSeconds(20));
                    // The interconnect heals too: A's association into B gets no descriptor while B asks (it would learn
                    // the old term from it, its fence lifted by B's answers, and serve while B serves its replica).
                    pair.InterconnectAtoB.Blocked = pair.InterconnectBtoA.Blocked = false;
                    pair.WaitLogged('A', "interconnect descriptor", TimeSpan.FromSeconds(20));
                    aUpDuringAsk = a.Links[0].IsUp;
                }
                catch (TimeoutException e) { hookFailed = e.Message; }
            };

            w.CutAOff();
            try
            {
                TestPair.WaitUntil(() => hooked == 1, "the witness to grant group 1 to B", TimeSpan.FromSeconds(40));
                Assert.True(hookFailed == null, hookFailed);
                TestPair.WaitUntil(() => sb.GetAnaState(1, ListenerRole.Direct) == AnaState.Optimized, "B to serve group 1 on the grant", TimeSpan.FromSeconds(20));
                pair.WaitLogged('B', "taken over automatically");
            }
            catch (Exception e) when (e is TimeoutException or Xunit.Sdk.XunitException)
            {
                throw new InvalidOperationException($"{e.Message}\n{w.Problems()}", e);
            }
            Assert.True(frozenAtGrant, "B's knowledge of its replica was not frozen while it asked the witness");
            Assert.True(descriptorRefused, "B would have given A's new interconnect associations its descriptor while it asked");
            Assert.False(keeper.Taking);
            Assert.False(b.AskingToTakeOver(sb));
            Assert.Equal(new GroupTerm(1, "B"), b.OwnershipOf(sb, 1)!.Current);
            Assert.False(aUpDuringAsk, "A's interconnect came up while B asked the witness");
            // Once the ask is over A connects, learns B's term and serves nothing of group 1.
            TestPair.WaitUntil(() => a.OwnershipOf(sa, 1)!.Current == new GroupTerm(1, "B"), "A to learn B's term", TimeSpan.FromSeconds(20));
            Assert.NotEqual(AnaState.Optimized, sa.GetAnaState(1, ListenerRole.Direct));
            b.AfterWitnessGrant = null;
        }
    }

    private sealed record Ack(ulong Lba, uint Version, long Ticks);

    private static (List<string> Violations, string Report) SplitBrain(bool selfFence)
    {
        using var witness = new WitnessProcess(leaseMs: 1500);
        using var toWitness = new UdpRelay(null, witness.Endpoint); // A's path to the witness
        Dictionary<string, string?> a = WithWitness(witness), b = WithWitness(witness);
        a["Cluster:Witness"] = toWitness.ForA.ToString();
        if (!selfFence) a["Cluster:SelfFence"] = b["Cluster:SelfFence"] = "false";
        using var pair = new ProcessPair(a, b, clockOffsetSecondsB: 3 * 3600, relayHeartbeats: true);
        pair.WaitHealthy();
        WaitInSync(pair);
        TestPair.WaitUntil(() => Group(pair, 'A', 1)["witness_lease_ms"]!.GetValue<long>() > 0, "A to hold group 1's lease at the witness");

        using NvmeHost host1 = pair.Connect(pair.EndpointA, Guid.NewGuid());
        using NvmeHost host2 = pair.Connect(pair.EndpointB, Guid.NewGuid());
        var acks1 = new List<Ack>();
        var acks2 = new List<Ack>();
        long failed1 = 0, failed2 = 0;
        long firstFail2AfterCut = long.MaxValue, cut = long.MaxValue;
        var stop = new ManualResetEventSlim();
        // One writer per host, one write at a time, versions rising; a write that fails is retried (the same version).
        Thread Writer(NvmeHost h, ulong first, List<Ack> acks, Func<long> fail) => new(() =>
        {
            uint v = 0;
            var rnd = new Random((int)first + 1);
            ulong lba = first;
            bool retry = false;
            while (!stop.IsSet)
            {
                if (!retry)
                {
                    v++;
                    lba = first + (ulong)rnd.Next(0, 64);
                }
                NvmeStatus st = h.IoQueues[0].Write(1, lba, 1, Block(v, lba));
                retry = !st.IsSuccess;
                if (st.IsSuccess)
                {
                    lock (acks) acks.Add(new Ack(lba, v, Stopwatch.GetTimestamp()));
                }
                else
                {
                    fail();
                    stop.Wait(20);
                }
            }
        }) { IsBackground = true };
        Thread w1 = Writer(host1, 0, acks1, () => Interlocked.Increment(ref failed1));
        Thread w2 = Writer(host2, 64, acks2, () =>
        {
            long now = Stopwatch.GetTimestamp();
            if (now > Volatile.Read(ref cut) && firstFail2AfterCut == long.MaxValue) Volatile.Write(ref firstFail2AfterCut, now);
            return Interlocked.Increment(ref failed2);
        });
        w1.Start();
        w2.Start();
        Thread.Sleep(1000);

        Volatile.Write(ref cut, Stopwatch.GetTimestamp());
        pair.HeartbeatRelay!.Blocked = true;
        toWitness.Blocked = true;
        pair.InterconnectAtoB.Blocked = pair.InterconnectBtoA.Blocked = true;
        pair.InterconnectAtoB.Cut();
        pair.InterconnectBtoA.Cut();
        int AcksAfter(List<Ack> l, long t) { lock (l) return l.Count(x => x.Ticks > t); }
        try
        {
            TestPair.WaitUntil(() => Group(pair, 'B', 1)["served_here"]!.GetValue<bool>(), "B to take group 1 over", TimeSpan.FromSeconds(40));
            long took = Stopwatch.GetTimestamp();
            TestPair.WaitUntil(() => AcksAfter(acks2, took) >= 50, "host 2 to write through B, the new owner", TimeSpan.FromSeconds(30));
            // A, fenced or not, has had time to show what it does.
            Thread.Sleep(selfFence ? 500 : 3000);
        }
        finally
        {
            stop.Set();
            w1.Join(TimeSpan.FromSeconds(30));
            w2.Join(TimeSpan.FromSeconds(30));
        }

        var violations = new List<string>();
        // After the cut, host 2's writes through B fail (B relays to A no more) until B owns group 1: those acknowledged
        // after its first failure were accepted by B as the owner.
        List<Ack> a1 = [.. acks1.Where(x => x.Ticks > cut)], a2 = [.. acks2.Where(x => x.Ticks > firstFail2AfterCut)];
        if (firstFail2AfterCut == long.MaxValue) violations.Add("host 2's writes through B never failed after the cut: the cut did not hold");
        if (a1.Count > 0 && a2.Count > 0 && a1.Max(x => x.Ticks) > a2.Min(x => x.Ticks))
            violations.Add($"both nodes accepted writes: host 1's last acknowledgement through A came {Stopwatch.GetElapsedTime(a2.Min(x => x.Ticks), a1.Max(x => x.Ticks)).TotalMilliseconds:0} ms after host 2's first through B as the owner");
        // Every acknowledged block, through B (the owner now): the newest version acknowledged, or a newer one.
        var newest = new Dictionary<ulong, uint>();
        foreach (Ack x in acks1.Concat(acks2)) newest[x.Lba] = Math.Max(newest.GetValueOrDefault(x.Lba), x.Version);
        var buf = new byte[512];
        foreach ((ulong lba, uint v) in newest.OrderBy(x => x.Key))
        {
            NvmeStatus st = host2.IoQueues[0].Read(1, lba, 1, buf);
            if (!st.IsSuccess) violations.Add($"LBA {lba}: read through B failed: {st}");
            else if (BitConverter.ToUInt32(buf) < v) violations.Add($"LBA {lba}: version {BitConverter.ToUInt32(buf)} through B, but version {v} was acknowledged");
        }
        string report = $"self-fence {selfFence}: host 1 {acks1.Count} acknowledged ({a1.Count} after the cut), {failed1} failed; host 2 {acks2.Count} acknowledged ({a2.Count} after the cut), {failed2} failed; {violations.Count} violation(s)";
        Console.WriteLine($"[split brain] {report}");
        return (violations, report + "\n" + pair.Problems());
    }
    /// <summary>
    /// A pair in this process with Cluster:Mirror and a witness in it too (lease 1 s), A reaching the witness through a
    /// relay (<see cref="CutAOff"/> blocks it); healthy, A holding group 1's lease, B's replica of NSID 1 whole.
    /// </summary>
    private sealed class InProcessWitnessPair : IDisposable
    {
        private readonly string _dir = Directory.CreateTempSubdirectory("sn-witness-").FullName;
        private readonly StringWriterLoggerProvider _witnessLogs = new();
        private readonly ILoggerFactory _lf;
        private readonly WitnessService _witness;
        private readonly UdpRelay _toWitness;

        public TestPair Pair { get; }
        public Target.Subsystem SA { get; }
        public Target.Subsystem SB { get; }
        public PairNode A => Pair.A.Pair!;
        public PairNode B => Pair.B.Pair!;

        public InProcessWitnessPair()
        {
            _lf = LoggerFactory.Create(b => b.AddProvider(_witnessLogs));
            _witness = new WitnessService(
                new WitnessConfig { Listen = new IPEndPoint(IPAddress.Loopback, 0), StateDirectory = _dir, Lease = TimeSpan.FromMilliseconds(1000) },
                _lf.CreateLogger("witness"));
            _witness.Start();
            _toWitness = new UdpRelay(null, _witness.Endpoint); // A's way to the witness
            Pair = InSyncPair(moreA: new() { ["Cluster:Witness"] = _toWitness.ForA.ToString() },
                moreB: new() { ["Cluster:Witness"] = _witness.Endpoint.ToString() });
            SA = Pair.A.Target.FindSubsystem(TestPair.Nqn)!;
            SB = Pair.B.Target.FindSubsystem(TestPair.Nqn)!;
            TestPair.WaitUntil(() => A.Witness!.LeaseHeld(TestPair.Nqn, 1, 0, Stopwatch.GetTimestamp()), "A to hold group 1's lease at the witness");
            // A's "in sync" word renewed at least once (B's takeover checks that it outlived A's last heartbeat datagram).
            Target.Subsystem sb = SB;
            TestPair.WaitUntil(() => sb.GetNamespace(1)!.ReplicaKnowledge.IsWhole(Stopwatch.GetTimestamp()), "B's replica of NSID 1 whole");
        }

        /// <summary>
        /// A cut off from B on both channels (heartbeats silenced both ways, the interconnect blocked and cut) and from the
        /// witness: its lease runs out, it fences itself, and B, hearing A on neither channel, asks the witness for group 1.
        /// </summary>
        public void CutAOff()
        {
            A.SilenceHeartbeatChannel();
            B.SilenceHeartbeatChannel();
            _toWitness.Blocked = true;
            Pair.InterconnectAtoB.Blocked = Pair.InterconnectBtoA.Blocked = true;
            Pair.InterconnectAtoB.Cut();
            Pair.InterconnectBtoA.Cut();
        }

        /// <summary>
        /// A's machine loses power, as far as B can tell: both interconnect connections held open and silent (no FIN, no
        /// reset), heartbeats silenced both ways, A cut off from the witness. Returns when (Stopwatch ticks).
        /// </summary>
        public long PartitionAOff()
        {
            A.SilenceHeartbeatChannel();
            B.SilenceHeartbeatChannel();
            _toWitness.Blocked = true;
            Pair.InterconnectAtoB.Partition();
            Pair.InterconnectBtoA.Partition();
            return Stopwatch.GetTimestamp();
        }

        public string Problems() => $"{Pair.Problems()}\nA, its last 80 lines:\n{string.Join("\n", Pair.LogsA.Lines.TakeLast(80))}\nB, its last 80 lines:\n{string.Join("\n", Pair.LogsB.Lines.TakeLast(80))}\nwitness: {string.Join("\n", _witnessLogs.Lines)}";

        public void Dispose()
        {
            Pair.Dispose();
            _toWitness.Dispose();
            _witness.Dispose();
            _lf.Dispose();
            try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
        }
    }
}
