using System.Net;
using StorageNode.Pair;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Perf;
using StorageNode.Target;
namespace StorageNode.Pair.Tests;

public class HaPairTests(ITestOutputHelper output)
{
    private static byte[] AnaStates(NvmeHost h)
    {
        byte[] log = h.GetLogPage(LogPageId.Ana, 4096, nsid: 0);
        int groups = BitConverter.ToUInt16(log, 8);
        var states = new byte[3];
        int off = 16;
        for (int i = 0; i < groups; i++)
        {
            uint gid = BitConverter.ToUInt32(log, off);
            uint n = BitConverter.ToUInt32(log, off + 4);
            states[gid] = log[off + 16];
            off += 32 + (int)n * 4;
        }
        return states;
    }

    private static void VerifyRelayed(IoQueue q, uint nsid, int bs, int qd, long ios, int seed)
    {
        using var r = new WorkloadRunner(q, new WorkloadOptions
        {
            Pattern = AccessPattern.RandRw, BlockSize = bs, QueueDepth = qd, IoCount = ios, Verify = true, Nsid = nsid,
            RegionBlocks = (ulong)(Math.Max(qd * 4, 32) * bs / 512), Seed = seed, Poll = HostPollMode.Adaptive,
            Duration = TimeSpan.FromMinutes(2),
        });
        WorkloadResult res = r.Run();
        Assert.True(res.Errors == 0 && res.VerifyFailures == 0, res.FirstError);
        Assert.Equal(ios, res.Ios);
    }

    [Fact]
    public void BothNodesPresentOneSubsystemImage()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost a = pair.Connect(pair.EndpointA, hostId);
        using NvmeHost b = pair.Connect(pair.EndpointB, hostId);

        Assert.Equal(a.SerialNumber, b.SerialNumber);
        Assert.Equal(a.ModelNumber, b.ModelNumber);
        Assert.InRange(a.Cntlid, (ushort)1, (ushort)500);
        Assert.InRange(b.Cntlid, (ushort)1000, (ushort)1499);
        foreach (NvmeHost h in new[] { a, b })
        {
            byte[] id = h.IdentifyControllerData;
            Assert.Equal(TestPair.Nqn, SpecText.ReadNulTerminated(id.AsSpan(768, 256)));
            Assert.Equal(IdentifyControllerBits.CmicMultiController | IdentifyControllerBits.CmicAnaReporting,
                id[76] & (IdentifyControllerBits.CmicMultiController | IdentifyControllerBits.CmicAnaReporting));
            Assert.Equal(3000, BitConverter.ToUInt16(id, 386)); // CQT = relay timeout
            Assert.Equal([1u, 2u], h.ActiveNamespaces());
        }
        for (uint nsid = 1; nsid <= 2; nsid++)
        {
            NamespaceInfo na = a.IdentifyNamespace(nsid), nb = b.IdentifyNamespace(nsid);
            Assert.Equal(na.Nguid, nb.Nguid);
            Assert.Equal(na.BlockCount, nb.BlockCount);
            Assert.Equal(na.BlockSize, nb.BlockSize);
            Assert.Equal(nsid, na.AnaGroupId);
            Assert.Equal(IdentifyNamespaceBits.NmicShared, na.Nmic);
            Assert.Equal(a.Identify(Cns.NamespaceDescriptorList, nsid), b.Identify(Cns.NamespaceDescriptorList, nsid));
        }
        Assert.Equal(new byte[] { 0, (byte)AnaState.Optimized, (byte)AnaState.NonOptimized }, AnaStates(a));
        Assert.Equal(new byte[] { 0, (byte)AnaState.NonOptimized, (byte)AnaState.Optimized }, AnaStates(b));
    }

    [Theory]
    [InlineData(4096, false)]
    [InlineData(131072, false)]
    [InlineData(1048576, true)]
    public void IoThroughBothPathsIsVerified(int bs, bool digests)
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        // Two hosts: one through each node. (One host sending a namespace's I/O through both nodes at once has its
        // older path's association closed at each switch: docs/ha.md.)
        Guid hostId = Guid.NewGuid();
        var opts = new NvmeHostOptions { HeaderDigest = digests, DataDigest = digests, IoQueueDepth = 8 };
        using NvmeHost a = pair.Connect(pair.EndpointA, hostId, opts);
        using NvmeHost b = pair.Connect(pair.EndpointB, Guid.NewGuid(), opts);
        // Each node's own namespace directly, and the partner's through the proxy.
        VerifyRelayed(a.IoQueues[0], 2, bs, 4, bs >= 1048576 ? 40 : 300, seed: 1);
        VerifyRelayed(b.IoQueues[0], 1, bs, 4, bs >= 1048576 ? 40 : 300, seed: 2);

        // Written through one node, read back through the other.
        var data = new byte[bs];
        new Random(bs).NextBytes(data);
        uint blocks = (uint)(bs / 512);
        Assert.True(a.IoQueues[0].Write(2, 4096, blocks, data).IsSuccess);
        var back = new byte[bs];
        Assert.True(b.IoQueues[0].Read(2, 4096, blocks, back).IsSuccess);
        Assert.Equal(data, back);
        Assert.True(b.IoQueues[0].Write(1, 8192, blocks, data).IsSuccess);
        Array.Clear(back);
        Assert.True(a.IoQueues[0].Read(1, 8192, blocks, back).IsSuccess);
        Assert.Equal(data, back);

        // Flush, Write Zeroes and deallocate relay too.
        Assert.True(a.IoQueues[0].Flush(2).IsSuccess);
        Assert.True(a.IoQueues[0].WriteZeroes(2, 4096, 8).IsSuccess);
        Assert.True(a.IoQueues[0].Deallocate(2, [(4104, 8)]).IsSuccess);
        var zeroes = new byte[8192];
        Array.Fill(zeroes, (byte)0xAA);
        Assert.True(b.IoQueues[0].Read(2, 4096, 16, zeroes).IsSuccess);
        Assert.All(zeroes, x => Assert.Equal(0, x));
        Assert.True(pair.B.Pair!.Links[0].Relayed > 0 && pair.A.Pair!.Links[0].Relayed > 0);
        // The owner sees the relayed commands as the same host (its identity travels with them).
        GateEntry? onB = pair.B.Pair!.Gate.Find(pair.B.Target.FindSubsystem(TestPair.Nqn)!, a.Options.EffectiveHostNqn, hostId);
        Assert.NotNull(onB);
        Assert.True(pair.B.Pair!.Gate.BindingsOf(onB!).Sum(x => x.Received) > 0);
    }

    [Fact]
    public void RelayingDoesNotBlockOtherCommandsOnTheQueue()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost a = pair.Connect(pair.EndpointA, hostId, new NvmeHostOptions { IoQueueDepth = 8 });
        // Hold relayed commands on A; local commands on the same queue still complete.
        pair.A.Pair!.Links[0].StallSends = true;
        var waiter = new Waiter();
        var buf = new byte[4096];
        unsafe
        {
            fixed (byte* p = buf)
                Assert.True(a.IoQueues[0].Queue.TrySubmit(IoQueue.ReadWriteSqe(IoOpcode.Read, 2, 0, 8), p, 4096, DataDirection.ControllerToHost, waiter, 7));
            for (int i = 0; i < 50; i++) a.IoQueues[0].Queue.Poll();
            Assert.False(waiter.Done);
            Assert.True(a.IoQueues[0].Read(1, 0, 8, new byte[4096]).IsSuccess);
            Assert.False(waiter.Done);
            pair.A.Pair!.Links[0].StallSends = false;
            pair.A.Reactors[0].Post(() => { }); // wake the reactor
            TestPair.WaitUntil(() => { a.IoQueues[0].Queue.Poll(); return waiter.Done; }, "the relayed read");
        }
        Assert.True(waiter.Cqe.StatusField.IsSuccess);
    }

    private sealed class Waiter : IHostCompletion
    {
        public volatile bool Done;
        public CompletionQueueEntry Cqe;
        public void OnHostComplete(long token, in CompletionQueueEntry cqe)
        {
            Cqe = cqe;
            Done = true;
        }
    }

    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void CuttingTheHostsPathToTheOwnerLosesNothing(string kind, int clockOffsetB)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB);
        pair.WaitHealthy();
        using var toA = new TcpForwarder(pair.EndpointA);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaA = pair.Connect(toA.Endpoint, hostId, new NvmeHostOptions { IoQueueDepth = 16, SendKeepAlive = false });
        using NvmeHost viaB = pair.Connect(pair.EndpointB, hostId, new NvmeHostOptions { IoQueueDepth = 16 });
        using var w = new MultipathWorkload([viaA.IoQueues[0], viaB.IoQueues[0]], nsid: 1, blockSize: 4096, qd: 16, regionBytes: 8 << 20);
        bool cut = false;
        w.Run(12_000, TimeSpan.FromMinutes(2), done =>
        {
            if (!cut && done >= 3000)
            {
                cut = true;
                toA.Cut(); // the host's connections to the owner die from outside the node
            }
        });
        Assert.True(cut);
        Assert.True(viaA.IoQueues[0].Queue.IsBroken, "the cut path should be broken");
        Assert.True(w.Errors == 0, w.FirstError);
        Assert.True(w.VerifyFailures == 0, w.FirstError);
        Assert.Equal(12_000, w.Completed);
        var problems = new List<string>();
        long bad = w.VerifyAll(viaB.IoQueues[0], problems);
        Assert.True(bad == 0, $"{bad} block(s) wrong after the workload: {string.Join("; ", problems)}\n{pair.Problems()}");
        long relayed = pair.Relayed('B');
        Assert.True(relayed > 0, "the workload should have gone on through the proxy");
        output.WriteLine($"{pair.Kind}, B's clock {clockOffsetB:+0;-0} s: retries {w.Retries}, longest stall {w.MaxStallMs} ms, relayed {relayed}");
        output.WriteLine(pair.Problems());
    }

    [Theory]
    [MemberData(nameof(PairRigs.Kinds), MemberType = typeof(PairRigs))]
    public void AHostWithAnEmptyHostNqnIsRelayedToo(string kind, int clockOffsetB)
    {
        // SPDK's host (spdk_nvme_perf, spdk_nvme_identify) sends an empty Host NQN unless given one. Through the partner
        // its commands to the owner's namespace must be relayed like anyone's (the owner refused to register it, and
        // every relayed command waited out the relay timeout).
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB);
        pair.WaitHealthy();
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid(), new NvmeHostOptions { HostNqn = "" });
        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid(), new NvmeHostOptions { HostNqn = "" });
        byte[] data = new byte[4096], back = new byte[4096];
        new Random(14).NextBytes(data);
        for (uint lba = 0; lba < 64; lba += 8)
        {
            NvmeStatus st = viaB.IoQueues[0].Write(1, lba, 8, data);
            Assert.True(st.IsSuccess, $"relayed write at {lba}: {st}\n{pair.Problems()}");
            Assert.True(viaA.IoQueues[0].Read(1, lba, 8, back).IsSuccess);
            Assert.Equal(data, back);
        }
        Assert.True(pair.Relayed('B') > 0, "the writes should have gone through the proxy");
    }

    [Fact]
    public void InterconnectLossFailsRelayedCommandsWithAnaStatusAndRecovers()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost a = pair.Connect(pair.EndpointA, hostId);
        a.EnableAsyncEvents(AsyncEvent.ConfigAnaChange);
        var buf = new byte[4096];
        Assert.True(a.IoQueues[0].Read(2, 0, 8, buf).IsSuccess);

        pair.InterconnectAtoB.Blocked = pair.InterconnectBtoA.Blocked = true;
        pair.InterconnectAtoB.Cut();
        pair.InterconnectBtoA.Cut();
        TestPair.WaitUntil(() => pair.A.Pair!.Status == PartnerStatus.InterconnectDown, "A to see the link dead");
        NvmeStatus st = a.IoQueues[0].Read(2, 0, 8, buf);
        Assert.Equal(StatusCodeType.PathRelated, st.Type);
        Assert.Equal(PathStatus.AnaInaccessible, st.Code);
        Assert.Equal((byte)AnaState.Inaccessible, AnaStates(a)[2]);
        Assert.True(a.IoQueues[0].Read(1, 0, 8, buf).IsSuccess); // the local group is unaffected
        uint ev = 0;
        TestPair.WaitUntil(() => a.TryGetEvent(out ev), "the ANA change event");
        Assert.Equal((byte)AsyncEvent.NoticeAnaChange, (byte)(ev >> 8));
        pair.WaitLogged('A', "interconnect lost, partner alive");

        pair.InterconnectAtoB.Blocked = pair.InterconnectBtoA.Blocked = false;
        pair.WaitHealthy();
        Assert.Equal((byte)AnaState.NonOptimized, AnaStates(a)[2]);
        TestPair.WaitUntil(() => a.IoQueues[0].Read(2, 0, 8, buf).IsSuccess, "relayed I/O after recovery");
    }

    [Fact]
    public void RelayedCommandsInFlightFailFastWhenTheInterconnectDies()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        using NvmeHost a = pair.Connect(pair.EndpointA, Guid.NewGuid(), new NvmeHostOptions { IoQueueDepth = 16 });
        var res = new WorkloadResult();
        var runner = new WorkloadRunner(a.IoQueues[0], new WorkloadOptions
        {
            Pattern = AccessPattern.RandRw, BlockSize = 4096, QueueDepth = 16, Nsid = 2, RegionBlocks = 16384,
            Duration = TimeSpan.FromSeconds(3), Poll = HostPollMode.Adaptive,
        });
        var t = new Thread(() => res = runner.Run());
        t.Start();
        TestPair.WaitUntil(() => Interlocked.Read(ref runner.CompletedIos) > 100 || !t.IsAlive, "relayed I/O to flow");
        pair.InterconnectAtoB.Blocked = true;
        pair.InterconnectAtoB.Cut();
        Assert.True(t.Join(TimeSpan.FromSeconds(30)), "relayed commands hung after the interconnect died");
        runner.Dispose();
        Assert.True(res.Ios > 0);
        Assert.True(res.Errors > 0, "commands issued after the cut must fail (ANA inaccessible)");
        Assert.Contains("SCT 3 SC 02", res.FirstError);
    }

    [Fact]
    public void PartnerDeadIsToldFromLinkDead()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        pair.B.Pair!.SilenceHeartbeatChannel();
        pair.InterconnectAtoB.Blocked = true;
        pair.InterconnectAtoB.Cut();
        TestPair.WaitUntil(() => pair.A.Pair!.Status == PartnerStatus.PartnerDown, "A to declare B dead");
        pair.WaitLogged('A', "partner dead");
    }

    [Fact]
    public void ListenerRolesDecideWhatAPortServes()
    {
        // A's default listener is combined; add a direct port and a (virtual) proxy port on the same address.
        using var pair = new TestPair(overridesA: new()
        {
            ["Listeners:1:Address"] = "127.0.0.1", ["Listeners:1:Port"] = "0", ["Listeners:1:Role"] = "direct",
            ["Listeners:2:Address"] = "127.0.0.1", ["Listeners:2:Port"] = "0", ["Listeners:2:Role"] = "proxy",
        });
        pair.WaitHealthy();
        Guid hostId = Guid.NewGuid();
        using NvmeHost direct = pair.Connect(pair.A.TcpEndpoints[1], hostId);
        using NvmeHost proxy = pair.Connect(pair.A.TcpEndpoints[2], hostId);
        Assert.Equal(new byte[] { 0, (byte)AnaState.Optimized, (byte)AnaState.Inaccessible }, AnaStates(direct));
        Assert.Equal(new byte[] { 0, (byte)AnaState.Inaccessible, (byte)AnaState.NonOptimized }, AnaStates(proxy));
        var buf = new byte[4096];
        Assert.True(direct.IoQueues[0].Read(1, 0, 8, buf).IsSuccess);
        NvmeStatus st = direct.IoQueues[0].Read(2, 0, 8, buf);
        Assert.Equal((StatusCodeType.PathRelated, PathStatus.AnaInaccessible), (st.Type, st.Code));
        Assert.True(proxy.IoQueues[0].Read(2, 0, 8, buf).IsSuccess);
        st = proxy.IoQueues[0].Read(1, 0, 8, buf);
        Assert.Equal((StatusCodeType.PathRelated, PathStatus.AnaInaccessible), (st.Type, st.Code));
        // Discovery lists all three ports of A (never the interconnect).
        using NvmeHost disc = NvmeHost.Connect(pair.EndpointA, WellKnownNqn.Discovery, new NvmeHostOptions { IoQueues = 0 });
        var ports = disc.GetDiscoveryLog().Where(e => e.SubType == Discovery.SubTypeNvm).Select(e => int.Parse(e.TrSvcId)).Order().ToArray();
        Assert.Equal(pair.A.TcpEndpoints.Select(e => e.Port).Order().ToArray(), ports);
        Assert.DoesNotContain(pair.A.InterconnectEndpoint!.Port, ports);
    }

    [Fact]
    public void DisagreeingConfigurationIsRefused()
    {
        using var pair = new TestPair(overridesB: new() { ["Subsystems:0:Namespaces:0:Nguid"] = "0102030405060708090a0b0c0d0e0f10" });
        string? reason = null;
        pair.A.Pair!.Refused += r => reason = r;
        TestPair.WaitUntil(() => pair.A.Pair.Status == PartnerStatus.Refused && pair.B.Pair!.Status == PartnerStatus.Refused, "both nodes to refuse");
        Assert.Contains("namespace 1 NGUID", pair.A.Pair.RefusedReason);
        Assert.Equal(PartnerAccess.Unavailable, pair.A.Target.FindSubsystem(TestPair.Nqn)!.PartnerAccess);
    }

    [Fact]
    public void OverlappingControllerIdRangesAreRefused()
    {
        using var pair = new TestPair(overridesB: new() { ["Subsystems:0:ControllerIdMin"] = "400", ["Subsystems:0:ControllerIdMax"] = "900" });
        TestPair.WaitUntil(() => pair.A.Pair!.Status == PartnerStatus.Refused, "A to refuse");
        Assert.Contains("controller ID ranges overlap", pair.A.Pair!.RefusedReason);
    }

    /// <summary>
    /// The first relayed command after the host's connection sat idle longer than the relay timeout runs: its arrival is
    /// bounded by the reactor's last epoll wait that found the socket empty, not by the connection's last burst (found by
    /// the rig's reservation test: such a command failed with ANA Transition).
    /// </summary>
    [Fact]
    public void ARelayedCommandAfterAnIdleSpellLongerThanTheRelayTimeoutRuns()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid());
        IoQueue q = viaB.IoQueues[0];
        Assert.True(q.Write(1, 0, 1, new byte[512]).IsSuccess);
        Thread.Sleep(4000); // the scenario: idle longer than TestPair's relay timeout (3 s)
        NvmeStatus st = q.Write(1, 0, 1, new byte[512]);
        Assert.True(st.IsSuccess, $"{st}\n{pair.Problems()}");
    }
}
