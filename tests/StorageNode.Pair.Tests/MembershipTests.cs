using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Pair;
using static StorageNode.Testing.HostWrites;

namespace StorageNode.Pair.Tests;

/// <summary>
/// Who counts as the partner (docs/ha.md): heartbeat datagrams only from the partner's configured endpoint, interconnect
/// Connects only with the partner's identity from the partner's address, and a partner that restarted is recognised by
/// its new incarnation.
/// </summary>
public class MembershipTests(ITestOutputHelper output)
{
    private static readonly byte[] ForgedBeat = "SNHB1 test B 12345"u8.ToArray();

    [Fact]
    public void HeartbeatsFromAnotherEndpointDoNotKeepADeadPartnerAlive()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        IPEndPoint hbA = pair.A.Config.Cluster!.Heartbeat;
        IPEndPoint hbB = pair.A.Config.Cluster!.PartnerHeartbeat;
        Assert.Equal(hbB, pair.B.Config.Cluster!.Heartbeat);
        // Strangers: B's heartbeat port on another address, and B's address on another port. Both name the right
        // cluster and partner in well-formed datagrams.
        using var otherAddress = new UdpClient(new IPEndPoint(IPAddress.Parse("127.0.0.2"), hbB.Port));
        using var otherPort = new UdpClient(new IPEndPoint(IPAddress.Loopback, TestPair.FreeUdpPort()));
        Membership m = pair.A.Pair!.Membership;
        long ignoredBefore = Interlocked.Read(ref m.Ignored);
        long sent = 0;

        otherAddress.Send(ForgedBeat, hbA);
        sent++;
        string warning = $"heartbeat channel: ignored a datagram from 127.0.0.2:{hbB.Port} ('SNHB1 test B 12345'): only B at {hbB} counts";
        TestPair.WaitUntil(() => pair.LogsA.Lines.Any(l => l.StartsWith("Warning", StringComparison.Ordinal) && l.Contains(warning, StringComparison.Ordinal)),
            "A's warning about the stranger");

        // B dies as far as A can tell: silent on the heartbeat channel, the interconnect cut and kept down.
        pair.B.Pair!.SilenceHeartbeatChannel();
        pair.InterconnectAtoB.Blocked = true;
        pair.InterconnectAtoB.Cut();
        pair.InterconnectBtoA.Blocked = true;
        pair.InterconnectBtoA.Cut();
        var sw = Stopwatch.StartNew();
        while (pair.A.Pair!.Status != PartnerStatus.PartnerDown)
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(20),
                $"A still thinks B is {pair.A.Pair!.Status} after {sw.Elapsed.TotalSeconds:0} s of strangers' heartbeats\n{pair.Problems()}");
            otherAddress.Send(ForgedBeat, hbA);
            otherPort.Send(ForgedBeat, hbA);
            sent += 2;
            Thread.Sleep(50);
        }
        output.WriteLine($"A declared B dead after {sw.Elapsed.TotalMilliseconds:0} ms; {sent} forged datagrams sent");
        TestPair.WaitUntil(() => Interlocked.Read(ref m.Ignored) - ignoredBefore >= sent, "every forged datagram counted as ignored");
        Assert.Equal(sent, Interlocked.Read(ref m.Ignored) - ignoredBefore);
        Assert.Equal(pair.B.Pair!.Incarnation, m.PartnerIncarnation); // 12345 was never taken for B's incarnation
        Assert.DoesNotContain(pair.LogsA.Lines, l => l.Contains("partner B restarted", StringComparison.Ordinal));
    }

    [Fact]
    public void OnlyThePartnersIdentityFromThePartnersAddressMayConnectToTheInterconnect()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        IPEndPoint ic = pair.A.InterconnectEndpoint!;
        ushort partnerCntlid = Assert.Single(pair.A.Pair!.Service.Inbound).Cntlid;
        var asB = new NvmeHostOptions
        {
            HostNqn = PairNode.IdentityNqn("test", "B"),
            HostId = PairNode.IdentityId("test", "B"),
            IoQueues = 0,
            SendKeepAlive = false,
        };

        // The partner's identity from another address.
        AssertInvalidHost(() => NvmeHost.Connect(ic, TestPair.Nqn, asB with { LocalAddress = IPAddress.Parse("127.0.0.2") }));
        Assert.Contains(pair.LogsA.Lines, l => l.Contains("interconnect connect from 127.0.0.2:", StringComparison.Ordinal)
                                               && l.Contains("the partner's interconnect address is 127.0.0.1", StringComparison.Ordinal));
        // Wrong identities from the partner's address.
        AssertInvalidHost(() => NvmeHost.Connect(ic, TestPair.Nqn, asB with { HostNqn = PairNode.IdentityNqn("test", "C"), HostId = PairNode.IdentityId("test", "C") }));
        AssertInvalidHost(() => NvmeHost.Connect(ic, TestPair.Nqn, asB with { HostId = Guid.NewGuid() }));
        AssertInvalidHost(() => NvmeHost.Connect(ic, TestPair.Nqn, asB with { HostNqn = PairNode.IdentityNqn("other", "B"), HostId = PairNode.IdentityId("other", "B") }));
        AssertInvalidHost(() => NvmeHost.Connect(ic, TestPair.Nqn, asB with { HostNqn = null, HostId = Guid.NewGuid() }));
        // None of that disturbed B's association.
        Assert.Equal(partnerCntlid, Assert.Single(pair.A.Pair!.Service.Inbound).Cntlid);
        Assert.Equal(PartnerStatus.Healthy, pair.A.Pair!.Status);
        Assert.Equal(PartnerStatus.Healthy, pair.B.Pair!.Status);

        // Control: the same identity from the partner's address is let in (B's own link kept down first, since the
        // newer association replaces B's).
        pair.InterconnectBtoA.Blocked = true;
        pair.InterconnectBtoA.Cut();
        using NvmeHost accepted = NvmeHost.Connect(ic, TestPair.Nqn, asB with { LocalAddress = IPAddress.Loopback });
        Assert.NotEqual(0, accepted.Cntlid);
        Assert.Contains(pair.A.Pair!.Service.Inbound, c => c.Cntlid == accepted.Cntlid);
    }

    [Fact]
    public void APartnerThatRestartedIsNoticedAndPairedAgain()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        long oldIncarnation = pair.B.Pair!.Incarnation;
        Assert.Equal(oldIncarnation, pair.A.Pair!.Membership.PartnerIncarnation);
        long connects = pair.A.Pair!.Links[0].ConnectCount;
        Config.NodeConfig configB = pair.B.Config;

        // B dies and comes back with the same configuration (a new process would: a new incarnation).
        pair.DisposeB();
        var logsB = new StringWriterLoggerProvider();
        using ILoggerFactory lf = LoggerFactory.Create(b => b.AddProvider(logsB));
        using var b = new Node(configB, lf);
        b.Start();
        long newIncarnation = b.Pair!.Incarnation;
        Assert.NotEqual(oldIncarnation, newIncarnation);
        try
        {
            TestPair.WaitUntil(() => pair.A.Pair!.Status == PartnerStatus.Healthy && b.Pair!.Status == PartnerStatus.Healthy
                                     && pair.A.Pair!.Links[0].ConnectCount > connects && pair.A.Pair!.Membership.PartnerIncarnation == newIncarnation,
                "A and the restarted B paired again", TimeSpan.FromSeconds(20));
        }
        catch (TimeoutException)
        {
            output.WriteLine($"A: {pair.A.Pair!.Status}, B: {b.Pair!.Status}\nA:\n{string.Join("\n", pair.LogsA.Lines.TakeLast(40))}\nB:\n{string.Join("\n", logsB.Lines.TakeLast(40))}");
            throw;
        }
        Assert.Contains(pair.LogsA.Lines, l => l.StartsWith("Warning", StringComparison.Ordinal)
                                               && l.Contains($"partner B restarted (incarnation {oldIncarnation:x16} -> {newIncarnation:x16})", StringComparison.Ordinal));

        // Relaying works both ways again.
        using NvmeHost viaB = pair.Connect(b.TcpEndpoints[0], Guid.NewGuid());
        Assert.True(Write(viaB.IoQueues[0], 0x5A, nsid: 1).IsSuccess); // A's namespace through the new B
        Assert.Equal(0x5A, ReadTag(viaB.IoQueues[0], nsid: 1));
        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Assert.True(Write(viaA.IoQueues[0], 0x5B, nsid: 2).IsSuccess); // the new B's namespace through A
        Assert.Equal(0x5B, ReadTag(viaA.IoQueues[0], nsid: 2));
    }

    private void AssertInvalidHost(Func<NvmeHost> connect)
    {
        NvmeHost? host = null;
        var e = Assert.Throws<NvmeCommandException>(() => host = connect());
        host?.Dispose();
        output.WriteLine(e.Message);
        Assert.Equal(StatusCodeType.CommandSpecific, e.Status.Type);
        Assert.Equal(FabricsStatus.ConnectInvalidHost, e.Status.Code);
    }
}
