using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Pair.Tests;

/// <summary>
/// Fused Compare and Write through either node of the pair: the partner relays the pair to the owner as one command, so
/// it is atomic against everything the owner runs, local or relayed. Namespace 1 belongs to node A.
/// </summary>
public class CompareAndWritePairTests
{
    private const uint Ns = 1;
    private const ulong CounterLba = 64;

    private static byte[] Counter(uint v)
    {
        var b = new byte[512];
        for (int i = 0; i < 512; i += 4) BitConverter.TryWriteBytes(b.AsSpan(i), v);
        return b;
    }

    [Theory]
    [InlineData(PairRigs.OneProcess, 0)]
    [InlineData(PairRigs.TwoProcesses, -3 * 3600)]
    public void HostsOnBothNodesSwapOneCounterWithoutLosingAnUpdate(string kind, int clockOffsetB)
    {
        const int PerNode = 2, Increments = 25;
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB);
        pair.WaitHealthy();
        var hosts = new List<NvmeHost>();
        for (int i = 0; i < PerNode; i++)
        {
            hosts.Add(pair.Connect(pair.EndpointA, Guid.NewGuid()));
            hosts.Add(pair.Connect(pair.EndpointB, Guid.NewGuid()));
        }
        try
        {
            Assert.True(hosts[0].IoQueues[0].Write(Ns, CounterLba, 1, Counter(0)).IsSuccess);
            // Statuses through the partner: a mismatch fails the Compare and aborts the Write.
            var (c, w) = hosts[1].IoQueues[0].CompareAndWrite(Ns, CounterLba, 1, Counter(7), Counter(8));
            Assert.Equal((StatusCodeType.MediaDataIntegrity, MediaStatus.CompareFailure), (c.Type, (byte)c.Code));
            Assert.Equal((StatusCodeType.Generic, GenericStatus.AbortedFailedFused), (w.Type, (byte)w.Code));

            var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
            int swaps = 0, conflicts = 0;
            var threads = hosts.Select(h => new Thread(() =>
            {
                IoQueue q = h.IoQueues[0];
                var cur = new byte[512];
                for (int done = 0, tries = 0; done < Increments && tries < 5_000; tries++)
                {
                    if (!q.Read(Ns, CounterLba, 1, cur).IsSuccess) errors.Enqueue("read failed");
                    var (cs, ws) = q.CompareAndWrite(Ns, CounterLba, 1, cur, Counter(BitConverter.ToUInt32(cur, 0) + 1));
                    if (cs.IsSuccess && ws.IsSuccess) { Interlocked.Increment(ref swaps); done++; }
                    else if ((byte)cs.Code == MediaStatus.CompareFailure) Interlocked.Increment(ref conflicts);
                    else errors.Enqueue($"{cs} / {ws}");
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => Assert.True(t.Join(TimeSpan.FromSeconds(120))));
            Assert.Empty(errors);
            Assert.Equal(2 * PerNode * Increments, swaps);
            var back = new byte[512];
            Assert.True(hosts[1].IoQueues[0].Read(Ns, CounterLba, 1, back).IsSuccess);
            Assert.Equal(Counter((uint)swaps), back);
            Assert.True(conflicts > 0, "the hosts never raced");
            Assert.True(pair.Relayed('B') > 0);
        }
        finally
        {
            hosts.ForEach(h => h.Dispose());
        }
    }

    [Fact]
    public void WithTheInterconnectDownBothCommandsFailWithAPathStatus()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid());
        pair.InterconnectBtoA.Cut();
        TestPair.WaitUntil(() => pair.B.Pair!.Links[0].IsUp == false, "B's link down");
        // Whichever of the two fails first with the path status (the group's ANA state is published a moment after the
        // link goes down: the Compare may pass validation and wait, and the Write fail it), both get one: a multipath host
        // retries the whole operation elsewhere (before: the Compare got Aborted Failed Fused with DNR, an I/O error).
        var (c, w) = viaB.IoQueues[0].CompareAndWrite(Ns, CounterLba, 1, Counter(0), Counter(1));
        Assert.True(c.Type == StatusCodeType.PathRelated && w.Type == StatusCodeType.PathRelated, $"compare {c}, write {w}");
    }
}
