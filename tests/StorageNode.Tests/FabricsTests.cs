using System.Diagnostics;
using System.Runtime.CompilerServices;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Target;

namespace StorageNode.Tests;

public class FabricsTests
{
    [Fact]
    public void UnknownSubsystemIsAnInvalidParameterInTheData()
    {
        using var node = new TestNode();
        var ex = Assert.Throws<NvmeCommandException>(() => node.Connect(nqn: "nqn.2026-11.io.storagenode:nope"));
        Assert.Equal(StatusCodeType.CommandSpecific, ex.Status.Type);
        Assert.Equal(FabricsStatus.ConnectInvalidParameters, ex.Status.Code);
        Assert.Equal(256u, ex.Dw0 & 0xFFFF);       // IPO: SUBNQN
        Assert.Equal(1u, (ex.Dw0 >> 16) & 0xFF);   // IATTR: in the connect data
    }

    [Fact]
    public void HostNotOnTheListIsRefused()
    {
        using var node = new TestNode(new()
        {
            ["Subsystems:0:AllowAnyHost"] = "false",
            ["Subsystems:0:Hosts:0"] = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555",
        });
        var ex = Assert.Throws<NvmeCommandException>(() => node.Connect());
        Assert.Equal(FabricsStatus.ConnectInvalidHost, ex.Status.Code);
        using NvmeHost ok = node.Connect(new NvmeHostOptions { HostId = Guid.Parse("11111111-2222-3333-4444-555555555555") });
        Assert.True(ok.IoQueues[0].Flush(1).IsSuccess);
    }

    [Fact]
    public void AnEmptyHostNqnIsAcceptedWhereAnyHostIs()
    {
        // SPDK's host (spdk_nvme_perf, spdk_nvme_identify) sends an empty Host NQN unless given one; SPDK's target and
        // Linux nvmet accept it where any host is allowed.
        using var node = new TestNode();
        var id = Guid.NewGuid();
        using NvmeHost host = node.Connect(new NvmeHostOptions { HostNqn = "", HostId = id, IoQueues = 2 });
        var data = new byte[4096];
        new Random(5).NextBytes(data);
        Assert.True(host.IoQueues[1].Write(2, 7, 1, data).IsSuccess); // NSID 2: 4 KiB blocks
        var back = new byte[4096];
        Assert.True(host.IoQueues[0].Read(2, 7, 1, back).IsSuccess);
        Assert.Equal(data, back);
        // Said in the log, with the Host Identifier the host is known by; the I/O queues named the same (empty) NQN.
        Assert.Contains(node.Logs.Lines, l => l.Contains("empty Host NQN; accepted") && l.Contains(id.ToString()));
    }

    [Theory]
    [InlineData(127, true)]  // 128 entries: SPDK's default max_aq_depth, and what its abort tool asks for at -q 120
    [InlineData(128, false)]
    public void TheAdminQueueTakesUpTo128EntriesByDefault(ushort sqsize, bool accepted)
    {
        using var node = new TestNode();
        using var c = new RawClient(node.Endpoint);
        c.IcReq();
        CompletionQueueEntry cqe = c.Connect(0, 0xFFFF, TestNode.Nqn, sqsize);
        Assert.Equal(accepted, cqe.StatusField.IsSuccess);
        if (!accepted)
        {
            Assert.Equal(FabricsStatus.ConnectInvalidParameters, cqe.StatusField.Code);
            Assert.Equal(44u, cqe.Dw0 & 0xFFFF); // IPO: SQSIZE in the command
        }
    }

    [Fact]
    public void AnEmptyHostNqnIsRefusedWhereOnlyListedHostsMayConnect()
    {
        using var node = new TestNode(new()
        {
            ["Subsystems:0:AllowAnyHost"] = "false",
            ["Subsystems:0:Hosts:0"] = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555",
        });
        var ex = Assert.Throws<NvmeCommandException>(() => node.Connect(new NvmeHostOptions { HostNqn = "" }));
        Assert.Equal(FabricsStatus.ConnectInvalidHost, ex.Status.Code);
    }

    [Fact]
    public void ControllerIdsComeFromTheConfiguredRange()
    {
        using var node = new TestNode(new() { ["Subsystems:0:ControllerIdMin"] = "100", ["Subsystems:0:ControllerIdMax"] = "101" });
        using NvmeHost a = node.Connect(new NvmeHostOptions { IoQueues = 0 });
        using NvmeHost b = node.Connect(new NvmeHostOptions { IoQueues = 0 });
        Assert.Equal(new ushort[] { 100, 101 }, new[] { a.Cntlid, b.Cntlid }.Order().ToArray());
        // The range is exhausted: Controller Busy.
        var ex = Assert.Throws<NvmeCommandException>(() => node.Connect(new NvmeHostOptions { IoQueues = 0 }));
        Assert.Equal(FabricsStatus.ControllerBusy, ex.Status.Code);
    }

    [Fact]
    public void PropertiesAndShutdown()
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect();
        ulong cap = host.PropertyGet(Property.Cap, 8);
        Assert.Equal(127, CapRegister.Mqes(cap));
        Assert.NotEqual(0UL, cap & (1UL << 37)); // NVM command set
        Assert.Equal(NvmeVersion.V1_4, (uint)host.PropertyGet(Property.Vs, 4));
        Assert.Equal(CstsRegister.Ready, (uint)host.PropertyGet(Property.Csts, 4) & CstsRegister.Ready);
        var ex = Assert.Throws<NvmeCommandException>(() => host.PropertyGet(0x40, 4));
        Assert.Equal(GenericStatus.InvalidField, ex.Status.Code);
        ex = Assert.Throws<NvmeCommandException>(() => host.PropertyGet(Property.Vs, 8));
        Assert.Equal(GenericStatus.InvalidField, ex.Status.Code);

        // Shutdown: CSTS.SHST reports complete and I/O queues are disconnected.
        host.PropertySet(Property.Cc, CcRegister.Make(true, shn: 1));
        Assert.Equal(CstsRegister.ShutdownComplete, (uint)host.PropertyGet(Property.Csts, 4) & CstsRegister.ShutdownMask);
        var buf = new byte[512];
        NvmeStatus st = NvmeStatus.Success;
        for (int i = 0; i < 100 && st.IsSuccess; i++)
        {
            try { st = host.IoQueues[0].Read(1, 0, 1, buf); }
            catch (NvmeTransportException) { st = NvmeStatus.Generic(GenericStatus.TransientTransportError); }
            if (st.IsSuccess) Thread.Sleep(10);
        }
        Assert.False(st.IsSuccess);
    }

    [Fact]
    public void IoQueueConnectChecksControllerIdHostAndQid()
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect(new NvmeHostOptions { IoQueues = 1 });
        using var q = TcpHostQueue.Connect(node.Endpoint, new HostQueueOptions());
        var waiter = new Waiter();
        // Unknown CNTLID.
        Assert.Equal(FabricsStatus.ConnectInvalidParameters, RawConnect(q, waiter, 1, (ushort)(host.Cntlid + 1000), host.Options.EffectiveHostNqn, host.Options.HostId).StatusField.Code);
        // Another host's NQN.
        CompletionQueueEntry cqe = RawConnect(q, waiter, 1, host.Cntlid, "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001", host.Options.HostId);
        Assert.Equal(FabricsStatus.ConnectInvalidParameters, cqe.StatusField.Code);
        Assert.Equal(512u, cqe.Dw0 & 0xFFFF);
        // QID beyond what Set Features granted (1), and QID 1 already connected.
        cqe = RawConnect(q, waiter, 2, host.Cntlid, host.Options.EffectiveHostNqn, host.Options.HostId);
        Assert.Equal(42u, cqe.Dw0 & 0xFFFF);
        cqe = RawConnect(q, waiter, 1, host.Cntlid, host.Options.EffectiveHostNqn, host.Options.HostId);
        Assert.Equal(FabricsStatus.ConnectInvalidParameters, cqe.StatusField.Code);
    }

    private sealed class Waiter : IHostCompletion
    {
        public CompletionQueueEntry Cqe;
        public bool Done;
        public void OnHostComplete(long token, in CompletionQueueEntry cqe) { Cqe = cqe; Done = true; }
    }

    private static unsafe CompletionQueueEntry RawConnect(TcpHostQueue q, Waiter w, ushort qid, ushort cntlid, string hostNqn, Guid hostId)
    {
        ConnectData data = ConnectData.For(hostId, cntlid, TestNode.Nqn, hostNqn);
        ConnectCommand cmd = default;
        cmd.Opcode = AdminOpcode.FabricsCommand;
        cmd.FabricsType = FabricsCommandType.Connect;
        cmd.Qid = qid;
        cmd.SqSize = 15;
        w.Done = false;
        Assert.True(q.TrySubmit(Unsafe.As<ConnectCommand, SubmissionQueueEntry>(ref cmd), (byte*)&data, 1024, DataDirection.HostToController, w, 0));
        var sw = Stopwatch.StartNew();
        while (!w.Done && sw.Elapsed < TimeSpan.FromSeconds(10)) q.Poll();
        Assert.True(w.Done, "no response to Connect");
        return w.Cqe;
    }

    [Fact]
    public void KeepAliveTimeoutTearsDownASilentHost()
    {
        using var node = new TestNode(new() { ["Target:KeepAliveGranularityMs"] = "100" });
        using NvmeHost silent = node.Connect(new NvmeHostOptions { KatoMs = 500, SendKeepAlive = false });
        using NvmeHost talking = node.Connect(new NvmeHostOptions { KatoMs = 500, SendKeepAlive = true });
        Subsystem s = node.Node.Target.FindSubsystem(TestNode.Nqn)!;
        Assert.Equal(2, s.Controllers.Count);
        var sw = Stopwatch.StartNew();
        while (s.Controllers.Count > 1 && sw.Elapsed < TimeSpan.FromSeconds(10)) Thread.Sleep(50);
        Assert.Single(s.Controllers);
        Assert.Equal(talking.Cntlid, s.Controllers[0].Cntlid);
        Assert.True(sw.Elapsed > TimeSpan.FromMilliseconds(300), $"torn down too early ({sw.ElapsedMilliseconds} ms)");
        // The silent host's queues are gone; the other host still works after several KATO periods.
        Assert.ThrowsAny<Exception>(() => silent.KeepAlive());
        Thread.Sleep(1200);
        Assert.True(talking.IoQueues[0].Flush(1).IsSuccess);
        Assert.Contains(node.Logs.Lines, l => l.Contains("keep-alive timeout"));
    }

    [Fact]
    public void CommandsBeforeEnableAreSequenceErrors()
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect(new NvmeHostOptions { IoQueues = 0 });
        host.PropertySet(Property.Cc, 0); // disable (controller reset)
        var ex = Assert.Throws<NvmeCommandException>(() => host.Identify(Cns.Controller, 0));
        Assert.Equal(GenericStatus.CommandSequenceError, ex.Status.Code);
        host.PropertySet(Property.Cc, CcRegister.Make(true));
        Assert.Equal(4096, host.Identify(Cns.Controller, 0).Length);
    }
}

public class DiscoveryTests
{
    [Fact]
    public void DiscoveryLogListsTheSubsystemOnThisNodesListener()
    {
        using var node = new TestNode();
        using NvmeHost disc = node.Connect(new NvmeHostOptions { IoQueues = 0 }, WellKnownNqn.Discovery);
        Assert.Equal(IdentifyControllerBits.TypeDiscovery, disc.IdentifyControllerData[111]);
        IReadOnlyList<DiscoveryEntry> log = disc.GetDiscoveryLog();
        DiscoveryEntry nvm = Assert.Single(log, e => e.SubType == Discovery.SubTypeNvm);
        Assert.Equal(TestNode.Nqn, nvm.SubNqn);
        Assert.Equal("127.0.0.1", nvm.TrAddr);
        Assert.Equal(node.Endpoint.Port.ToString(), nvm.TrSvcId);
        Assert.Equal(Discovery.TrTypeTcp, nvm.TrType);
        Assert.Equal(Discovery.AdrFamIpv4, nvm.AdrFam);
        Assert.Equal(0xFFFF, nvm.Cntlid);
        Assert.Single(log, e => e.SubType == Discovery.SubTypeCurrentDiscovery && e.SubNqn == WellKnownNqn.Discovery);
        // A discovery controller has no I/O command set.
        var ex = Assert.Throws<NvmeCommandException>(() => disc.GetLogPage(LogPageId.Smart, 512));
        Assert.Equal(CommandSpecificStatus.InvalidLogPage, ex.Status.Code);
    }

    [Fact]
    public void AdvertisedAddressAndHostFiltering()
    {
        using var node = new TestNode(new()
        {
            ["Listeners:0:AdvertiseAddress"] = "10.0.2.100",
            ["Subsystems:0:AllowAnyHost"] = "false",
            ["Subsystems:0:Hosts:0"] = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-2222-3333-4444-555555555555",
        });
        using (NvmeHost stranger = node.Connect(new NvmeHostOptions { IoQueues = 0 }, WellKnownNqn.Discovery))
            Assert.DoesNotContain(stranger.GetDiscoveryLog(), e => e.SubType == Discovery.SubTypeNvm);
        using NvmeHost known = node.Connect(new NvmeHostOptions { IoQueues = 0, HostId = Guid.Parse("aaaaaaaa-2222-3333-4444-555555555555") }, WellKnownNqn.Discovery);
        DiscoveryEntry e = Assert.Single(known.GetDiscoveryLog(), e => e.SubType == Discovery.SubTypeNvm);
        Assert.Equal("10.0.2.100", e.TrAddr);
    }
}
