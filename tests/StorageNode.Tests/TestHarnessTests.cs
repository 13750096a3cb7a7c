using StorageNode.Testing;

namespace StorageNode.Tests;

/// <summary>The test harness's own promises, where a broken one shows up only as a rare failure elsewhere.</summary>
public sealed class TestHarnessTests
{
    /// <summary>
    /// The free ports a test is given are never given again in the same process: two calls in a row once named the same
    /// UDP port for A's and B's heartbeats ("Cluster:PartnerHeartbeat: is the same endpoint as Cluster:Heartbeat", in a
    /// stress run of the pair tests), since the kernel may hand a released ephemeral port out again at once. 1,500 draws
    /// of each kind out of this machine's ~28,000 ephemeral ports: without the harness's record a repeat is all but
    /// certain (UDP picks at random: the birthday bound; TCP repeated a port within 87 draws).
    /// </summary>
    [Fact]
    public void AFreePortIsNeverHandedOutTwice()
    {
        var udp = new HashSet<int>();
        var tcp = new HashSet<int>();
        for (int i = 0; i < 1500; i++)
        {
            int u = TestPair.FreeUdpPort(), t = TestPair.FreeTcpPort();
            Assert.True(udp.Add(u), $"UDP port {u} handed out twice (draw {i + 1})");
            Assert.True(tcp.Add(t), $"TCP port {t} handed out twice (draw {i + 1})");
        }
    }
}
