using StorageNode.Nvme.Host;
using StorageNode.Pair;
using static StorageNode.Testing.HostWrites;

namespace StorageNode.Pair.Tests;

/// <summary>
/// The pair's tables stay bounded: what the owner keeps per host (<see cref="HostGate"/>: a gate entry per subsystem
/// and host, a relay binding per host on the partner's association) and what the proxy keeps (<see cref="RelayControl"/>:
/// a host relay per host) is forgotten once the host is gone and nothing of it is in flight.
/// </summary>
public class BoundsTests(ITestOutputHelper output)
{
    private const int Hosts = 50;

    [Fact]
    public void FiftyHostsRelayingThroughTheProxyLeaveNothingBehind()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        var ids = Enumerable.Range(0, Hosts).Select(_ => Guid.NewGuid()).ToHashSet();
        var hosts = new List<NvmeHost>();
        try
        {
            int i = 0;
            foreach (Guid id in ids)
            {
                NvmeHost h = pair.Connect(pair.EndpointB, id);
                hosts.Add(h);
                Assert.True(Write(h.IoQueues[0], (byte)i++, nsid: 1).IsSuccess); // NSID 1 is A's: B relays it
            }
            Assert.True(pair.Relayed('B') >= Hosts);
            // While they are connected, each is known once on each side.
            Assert.Equal(Hosts, GateEntries(pair, ids));
            Assert.Equal(Hosts, pair.A.Pair!.Gate.BindingCount);
            foreach (GateEntry e in pair.A.Pair!.Gate.Entries.Where(e => ids.Contains(e.HostId)))
            {
                Assert.Single(pair.A.Pair!.Gate.BindingsOf(e));
                Assert.Equal(GatePath.Relay, e.Active);
            }
            Assert.Equal(Hosts, ProxyHosts(pair, ids));
            Assert.Equal(Hosts, pair.B.Pair!.Links[0].Relays.Hosts.Count);
        }
        finally
        {
            foreach (NvmeHost h in hosts) h.Dispose();
        }
        WaitForgotten(pair, ids);
    }

    /// <summary>
    /// A host that leaves while the proxy's registration of it is still on its way to the owner: the handle the owner
    /// then gives belongs to nobody and must be given back (else the owner keeps a binding and a gate entry per such
    /// host until the proxy's association ends).
    /// </summary>
    [Fact]
    public void AHostThatLeavesBeforeItsRegistrationCompletesLeavesNothingBehind()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        Guid id = Guid.NewGuid();
        var ids = new HashSet<Guid> { id };
        PairNode b = pair.B.Pair!;
        // B's control thread (which registers hosts with A) waits while the host connects, so that its registration is
        // the very next thing it does once released, with nothing (a heartbeat) between.
        using var hold = new ManualResetEventSlim(false);
        using var holding = new ManualResetEventSlim(false);
        b.Enqueue(() =>
        {
            holding.Set();
            hold.Wait(TimeSpan.FromSeconds(10));
        });
        NvmeHost? host = null;
        try
        {
            Assert.True(holding.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
            host = pair.Connect(pair.EndpointB, id, new NvmeHostOptions { IoQueues = 0, SendKeepAlive = false });
            pair.InterconnectBtoA.PauseDownstream = true; // A's answer to the registration waits on the interconnect
            hold.Set();
            TestPair.WaitUntil(() => pair.A.Pair!.Gate.BindingCount == 1, "B's registration of the host reaches A");
            Assert.Equal(1, GateEntries(pair, ids));

            host.Dispose(); // the host leaves before B has its handle
            host = null;
            TestPair.WaitUntil(() => ProxyHosts(pair, ids) == 0, "B forgets the host that left");
        }
        finally
        {
            hold.Set();
            pair.InterconnectBtoA.PauseDownstream = false;
            host?.Dispose();
        }
        // B gets the handle, finds the host gone, and gives the handle back.
        WaitForgotten(pair, ids);
        Assert.Contains(pair.LogsB.Lines, l => l.Contains("left before its registration with the partner completed", StringComparison.Ordinal));
        Assert.Equal(PartnerStatus.Healthy, pair.A.Pair!.Status);
        Assert.Equal(PartnerStatus.Healthy, b.Status);
    }

    /// <summary>
    /// The owner holds a host's command while it switches the host back from the relay to its own association, and the
    /// host leaves both nodes meanwhile: once the switch ends and the held command completes, the host's gate entry
    /// must go (nothing refers to it any more).
    /// </summary>
    [Fact]
    public void AHostThatLeavesWhileItsCommandIsHeldLeavesNoGateEntry()
    {
        var slow = new Dictionary<string, string?> { ["Cluster:HeartbeatTimeoutMs"] = "5000", ["Cluster:RelayTimeoutMs"] = "3000" };
        using var pair = new TestPair(slow, slow);
        pair.WaitHealthy();
        Guid id = Guid.NewGuid();
        var ids = new HashSet<Guid> { id };
        NvmeHost? viaB = pair.Connect(pair.EndpointB, id);
        NvmeHost? viaA = null;
        try
        {
            Assert.True(Write(viaB.IoQueues[0], 0x10).IsSuccess); // relay open: A runs the host's commands through B's relay
            // The host comes back to A on a new association; A must drain B's relay first: its question waits on the interconnect.
            viaA = pair.Connect(pair.EndpointA, id, new NvmeHostOptions { SendKeepAlive = false });
            pair.InterconnectAtoB.PauseUpstream = true;
            Pending held = Submit(viaA.IoQueues[0], 0x11);
            PollUntil(viaA.IoQueues[0], () => held.Done, TimeSpan.FromMilliseconds(300));
            Assert.False(held.Done, "the command ran before the relay drained");
            GateEntry e = Assert.Single(pair.A.Pair!.Gate.Entries, x => x.HostId == id);
            Assert.Equal(GatePath.Local, e.Switching);

            // The host leaves both nodes while its command is held.
            viaA.Dispose();
            viaA = null;
            viaB.Dispose();
            viaB = null;
            TestPair.WaitUntil(() => ProxyHosts(pair, ids) == 0 && pair.A.Pair!.Gate.BindingCount == 0, "both nodes see the host gone");
            Assert.Single(pair.A.Pair!.Gate.Entries, x => x.HostId == id); // still switching: the entry stays for now
        }
        finally
        {
            pair.InterconnectAtoB.PauseUpstream = false;
            viaA?.Dispose();
            viaB?.Dispose();
        }
        WaitForgotten(pair, ids);
    }

    private static int GateEntries(TestPair pair, HashSet<Guid> ids) => pair.A.Pair!.Gate.Entries.Count(e => ids.Contains(e.HostId));

    private static int ProxyHosts(TestPair pair, HashSet<Guid> ids) => pair.B.Pair!.Links[0].Relays.Hosts.Count(h => ids.Contains(h.HostId));

    private void WaitForgotten(TestPair pair, HashSet<Guid> ids)
    {
        try
        {
            TestPair.WaitUntil(() => GateEntries(pair, ids) == 0 && pair.A.Pair!.Gate.BindingCount == 0 && pair.B.Pair!.Links[0].Relays.Hosts.Count == 0,
                "the hosts forgotten on both nodes", TimeSpan.FromSeconds(20));
        }
        catch (TimeoutException)
        {
            output.WriteLine($"A: {GateEntries(pair, ids)} gate entries, {pair.A.Pair!.Gate.BindingCount} bindings; B: {pair.B.Pair!.Links[0].Relays.Hosts.Count} host relays");
            foreach (GateEntry e in pair.A.Pair!.Gate.Entries)
                output.WriteLine($"A entry {e}: active {e.Active}, switching {e.Switching}, local {e.LocalOutstanding}, relay {e.RelayOutstanding}");
            output.WriteLine(pair.Problems());
            throw;
        }
    }
}
