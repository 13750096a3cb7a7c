using System.Collections.Concurrent;
using System.Diagnostics.Tracing;
using StorageNode.Nvme.Host;
using StorageNode.Perf;
using StorageNode.Reactors;

namespace StorageNode.Tests;

/// <summary>
/// The I/O path allocates nothing in steady state: bytes allocated on the reactor threads over a long run
/// (measured on those threads) stay at what the two measuring probes themselves cost.
/// </summary>
public class AllocationTests(ITestOutputHelper output)
{
    private const long ProbeAllowance = 1024;

    private static long AllocatedOn(Reactor r)
    {
        long bytes = -1;
        using var done = new ManualResetEventSlim();
        r.Post(() => { bytes = GC.GetAllocatedBytesForCurrentThread(); done.Set(); });
        Assert.True(done.Wait(TimeSpan.FromSeconds(10)));
        return bytes;
    }

    private static void Run(IoQueue q, uint nsid, long ios, int seed, int bs = 4096)
    {
        using var r = new WorkloadRunner(q, new WorkloadOptions
        {
            Pattern = AccessPattern.RandRw, BlockSize = bs, QueueDepth = 8, IoCount = ios, Nsid = nsid,
            RegionBlocks = 65536, Seed = seed, Poll = HostPollMode.Adaptive, Duration = TimeSpan.FromMinutes(2),
        });
        WorkloadResult res = r.Run();
        Assert.True(res.Errors == 0, res.FirstError);
    }

    [Fact]
    public void DirectIoAllocatesNothingOnTheReactor()
    {
        using var node = new TestNode();
        using NvmeHost h = node.Connect(new NvmeHostOptions { IoQueueDepth = 8, HeaderDigest = true, DataDigest = true });
        Run(h.IoQueues[0], 1, 5000, 1);
        Run(h.IoQueues[0], 1, 500, 2, bs: 131072); // R2T and split C2H paths warm too
        using var ticks = new AllocationTicks();
        long before = AllocatedOn(node.Node.Reactors[0]);
        Run(h.IoQueues[0], 1, 100_000, 3);
        Run(h.IoQueues[0], 1, 2000, 4, bs: 131072);
        long bytes = AllocatedOn(node.Node.Reactors[0]) - before;
        output.WriteLine($"102,000 direct I/Os (4 KiB and 128 KiB, digests on): reactor allocated {bytes} B");
        Assert.True(bytes <= ProbeAllowance, $"reactor allocated {bytes} B; sampled types: {ticks}");
    }

    [Fact]
    public void RelayedIoAllocatesNothingOnEitherReactor()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        using NvmeHost a = pair.Connect(pair.EndpointA, Guid.NewGuid(), new NvmeHostOptions { IoQueueDepth = 8 });
        Run(a.IoQueues[0], 2, 5000, 1);
        using var ticks = new AllocationTicks();
        long a0 = AllocatedOn(pair.A.Reactors[0]), b0 = AllocatedOn(pair.B.Reactors[0]);
        const long ios = 20_000;
        Run(a.IoQueues[0], 2, ios, 2);
        long a1 = AllocatedOn(pair.A.Reactors[0]), b1 = AllocatedOn(pair.B.Reactors[0]);
        output.WriteLine($"{ios} relayed I/Os: proxy reactor allocated {a1 - a0} B, owner reactor {b1 - b0} B");
        Assert.True(a1 - a0 <= ProbeAllowance && b1 - b0 <= ProbeAllowance, $"proxy {a1 - a0} B, owner {b1 - b0} B; sampled types: {ticks}");
        Assert.True(pair.A.Pair!.Links[0].Relayed >= ios);
    }

    /// <summary>
    /// With <c>Cluster:Mirror</c>: writes to the namespace A owns (each copied to B's replica before it completes) and
    /// to B's (relayed to B, copied back to A's replica) allocate nothing on either reactor.
    /// </summary>
    [Fact]
    public void MirroredWritesAllocateNothingOnEitherReactor()
    {
        var mirror = new Dictionary<string, string?> { ["Cluster:Mirror"] = "true" };
        using var pair = new TestPair(mirror, new Dictionary<string, string?>(mirror));
        pair.WaitHealthy();
        TestPair.WaitUntil(() => pair.A.Pair!.Links[0].Mirrors.Concat(pair.B.Pair!.Links[0].Mirrors).All(m => m.IsInSync), "both replicas in sync",
            TimeSpan.FromSeconds(30));
        using NvmeHost a = pair.Connect(pair.EndpointA, Guid.NewGuid(), new NvmeHostOptions { IoQueueDepth = 8 });
        Run(a.IoQueues[0], 1, 5000, 1);
        Run(a.IoQueues[0], 2, 5000, 2);
        using var ticks = new AllocationTicks();
        long a0 = AllocatedOn(pair.A.Reactors[0]), b0 = AllocatedOn(pair.B.Reactors[0]);
        const long ios = 20_000;
        Bdevs.Bdev replicaOnB = pair.B.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(1)!.Replica!;
        long copies0 = replicaOnB.Stats[Bdevs.IoStat.WriteOps];
        Run(a.IoQueues[0], 1, ios, 3);
        Run(a.IoQueues[0], 2, ios, 4);
        long a1 = AllocatedOn(pair.A.Reactors[0]), b1 = AllocatedOn(pair.B.Reactors[0]);
        output.WriteLine($"{ios} mirrored I/Os on A's namespace and {ios} relayed to B's (mirrored back): A's reactor allocated {a1 - a0} B, B's {b1 - b0} B");
        Assert.True(a1 - a0 <= ProbeAllowance && b1 - b0 <= ProbeAllowance, $"A {a1 - a0} B, B {b1 - b0} B; sampled types: {ticks}");
        long copies = replicaOnB.Stats[Bdevs.IoStat.WriteOps] - copies0;
        Assert.True(copies >= ios / 4, $"B's replica of NSID 1 took {copies} writes of about {ios / 2}: the writes were not mirrored");
    }

    /// <summary>Samples allocation types (GCAllocationTick, every ~100 KB) to say what allocated when a test fails.</summary>
    private sealed class AllocationTicks : EventListener
    {
        private readonly ConcurrentBag<string> _types = [];

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == "Microsoft-Windows-DotNETRuntime") EnableEvents(source, EventLevel.Verbose, (EventKeywords)0x1);
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (e.EventName?.StartsWith("GCAllocationTick", StringComparison.Ordinal) != true || e.Payload == null || e.PayloadNames == null) return;
            int i = e.PayloadNames.IndexOf("TypeName");
            if (i >= 0) _types.Add($"{e.Payload[i]}");
        }

        public override string ToString() => string.Join(", ", _types.GroupBy(t => t).Select(g => $"{g.Key} x{g.Count()}"));
    }
}
