using Microsoft.Extensions.Configuration;
using StorageNode.Config;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Rdma;

namespace StorageNode.Pair.Tests;

/// <summary>
/// Cluster:InterconnectTransport on this machine (no RDMA device: the NVMe/RDMA interconnect itself is tested in
/// the rig, RigTests.HaPairRelaysAndMirrorsOverTheRdmaInterconnectWithoutCopiesAndFailsOver).
/// </summary>
public sealed class InterconnectTransportTests
{
    /// <summary>A paired node's settings (A of pair c), with the interconnect transport given (null: the default).</summary>
    internal static Dictionary<string, string?> Cluster(string? transport)
    {
        var d = new Dictionary<string, string?>
        {
            ["Node:Name"] = "A",
            ["Cluster:Name"] = "c",
            ["Cluster:Partner"] = "B",
            ["Cluster:Interconnect"] = "127.0.0.1:4430",
            ["Cluster:PartnerInterconnect"] = "127.0.0.1:4431",
            ["Cluster:Heartbeat"] = "127.0.0.1:4440",
            ["Cluster:PartnerHeartbeat"] = "127.0.0.1:4441",
        };
        if (transport != null) d["Cluster:InterconnectTransport"] = transport;
        return d;
    }

    private static NodeConfig Load(Dictionary<string, string?> d) => NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(d).Build());

    [Fact]
    public void InterconnectTransportIsAutoTcpOrRdma()
    {
        Assert.Equal(InterconnectTransport.Auto, Load(Cluster(null)).Cluster!.InterconnectTransport);
        Assert.Equal(InterconnectTransport.Tcp, Load(Cluster("tcp")).Cluster!.InterconnectTransport);
        Assert.Equal(InterconnectTransport.Rdma, Load(Cluster("RDMA")).Cluster!.InterconnectTransport);
        ConfigException e = Assert.Throws<ConfigException>(() => Load(Cluster("iwarp")));
        Assert.Equal("Cluster:InterconnectTransport", e.Key);
        Assert.Contains("auto, tcp, rdma", e.Message);
        Assert.Equal("Cluster:InterconnectTransport", Assert.Throws<ConfigException>(() => Load(Cluster("1"))).Key);
    }

    [Fact]
    public void RdmaAckTimeoutIsAnExponentForRdmaInterconnectsAndListeners()
    {
        Assert.Equal(0, Load(Cluster(null)).Cluster!.RdmaAckTimeout);
        var d = Cluster("rdma");
        d["Cluster:RdmaAckTimeout"] = "14";
        Assert.Equal(14, Load(d).Cluster!.RdmaAckTimeout);
        d["Cluster:InterconnectTransport"] = "auto";
        Assert.Equal(14, Load(d).Cluster!.RdmaAckTimeout);
        foreach (string bad in new[] { "32", "-1", "fast" })
        {
            d["Cluster:RdmaAckTimeout"] = bad;
            Assert.Equal("Cluster:RdmaAckTimeout", Assert.Throws<ConfigException>(() => Load(d)).Key);
        }
        d["Cluster:RdmaAckTimeout"] = "14";
        d["Cluster:InterconnectTransport"] = "tcp";
        ConfigException e = Assert.Throws<ConfigException>(() => Load(d));
        Assert.Equal("Cluster:RdmaAckTimeout", e.Key);
        Assert.Contains("tcp", e.Problem);

        var l = new Dictionary<string, string?> { ["Listeners:0:Transport"] = "rdma", ["Listeners:0:Address"] = "127.0.0.1", ["Listeners:0:RdmaAckTimeout"] = "12" };
        Assert.Equal(12, Load(l).Listeners[0].RdmaAckTimeout);
        l.Remove("Listeners:0:RdmaAckTimeout");
        Assert.Equal(0, Load(l).Listeners[0].RdmaAckTimeout);
        l["Listeners:0:Transport"] = "tcp";
        l["Listeners:0:RdmaAckTimeout"] = "12";
        e = Assert.Throws<ConfigException>(() => Load(l));
        Assert.Equal("Listeners:0:RdmaAckTimeout", e.Key);
        Assert.Contains("rdma listeners", e.Problem);
    }

    [Fact]
    public void AckTimeoutsReadAsTime()
    {
        Assert.Equal("14 (67.109 ms)", RdmaConnection.DescribeAckTimeout(14));
        Assert.Equal("17 (536.871 ms)", RdmaConnection.DescribeAckTimeout(17));
        Assert.Equal("0 (none)", RdmaConnection.DescribeAckTimeout(0));
    }

    [Fact]
    public void AnRdmaOnlyInterconnectWithoutRdmaIsRefusedAtStart()
    {
        if (RdmaDevices.UnavailableReason() == null) return; // a machine with RDMA: nothing to refuse
        using var pair = new TestPair(overridesA: new() { ["Cluster:InterconnectTransport"] = "rdma" }, start: false);
        ConfigException e = Assert.Throws<ConfigException>(pair.A.Start);
        Assert.Equal("Cluster:InterconnectTransport", e.Key);
        Assert.Contains("RDMA is unavailable", e.Message);
    }

    [Theory]
    [InlineData("auto")]
    [InlineData("tcp")]
    public void WithoutRdmaTheInterconnectRunsOverTcpAndSaysSo(string transport)
    {
        if (RdmaDevices.UnavailableReason() == null) return; // with RDMA, auto would pick it
        using var pair = new TestPair(
            overridesA: new() { ["Cluster:InterconnectTransport"] = transport },
            overridesB: new() { ["Cluster:InterconnectTransport"] = transport });
        pair.WaitHealthy();
        Assert.Null(pair.A.InterconnectRdmaEndpoint);
        Assert.Null(pair.A.Rdma);
        StorageNode.Pair.InterconnectLink link = pair.B.Pair!.Links[0];
        Assert.Equal("tcp", link.Transport);
        Assert.All(link.ProxyQueues, q => Assert.Equal("tcp", q.Queue.Transport));
        Assert.Contains(pair.LogsB.Lines, l => l.Contains("interconnect to A up over NVMe/TCP") &&
            l.Contains(transport == "tcp" ? "configured" : "no RDMA on this node"));

        // Relayed I/O works and the RDMA counters stay at zero (only relays are counted over TCP).
        using NvmeHost host = NvmeHost.Connect(pair.EndpointB, TestPair.Nqn);
        byte[] data = new byte[4096];
        Random.Shared.NextBytes(data);
        Assert.True(host.IoQueues[0].Write(1, 0, 8, data).IsSuccess);
        byte[] back = new byte[4096];
        Assert.True(host.IoQueues[0].Read(1, 0, 8, back).IsSuccess);
        Assert.Equal(data, back);
        StorageNode.Pair.InterconnectCounters c = link.Counters;
        Assert.True(c.Relayed >= 2, $"relayed {c.Relayed}");
        Assert.Equal(0, c.ZeroCopyBytes);
        Assert.Equal(0, c.BounceCopies);
    }
}
