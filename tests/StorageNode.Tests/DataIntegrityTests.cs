using StorageNode.Nvme.Host;
using StorageNode.Perf;

namespace StorageNode.Tests;

/// <summary>Initiator against target over loopback: what is written is read back, on every data path.</summary>
public class DataIntegrityTests
{
    private static WorkloadResult RunVerify(IoQueue q, int blockSize, int qd, long ios, uint nsid = 1, uint lbaSize = 512, ulong regionBlocks = 0, int seed = 1)
    {
        var opts = new WorkloadOptions
        {
            Pattern = AccessPattern.RandRw,
            BlockSize = blockSize,
            QueueDepth = qd,
            IoCount = ios,
            Verify = true,
            Nsid = nsid,
            LbaSize = lbaSize,
            RegionLba = 0,
            RegionBlocks = regionBlocks != 0 ? regionBlocks : (ulong)(Math.Max(qd * 4, 64) * blockSize / lbaSize),
            Seed = seed,
            Poll = HostPollMode.Adaptive,
            Duration = TimeSpan.FromMinutes(2),
        };
        using var runner = new WorkloadRunner(q, opts);
        WorkloadResult r = runner.Run();
        Assert.True(r.Errors == 0, r.FirstError);
        Assert.True(r.VerifyFailures == 0, r.FirstError);
        Assert.Equal(ios, r.Ios);
        Assert.True(r.Reads > 0 && r.Writes > 0);
        return r;
    }

    public static TheoryData<int, bool> BlockSizesAndDigests()
    {
        var d = new TheoryData<int, bool>();
        foreach (int bs in new[] { 512, 4096, 8192, 8704, 65536, 131072, 262144, 1048576 })
            foreach (bool dg in new[] { false, true })
                d.Add(bs, dg);
        return d;
    }

    [Theory]
    [MemberData(nameof(BlockSizesAndDigests))]
    public void BlockSizes(int blockSize, bool digests)
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect(new NvmeHostOptions { HeaderDigest = digests, DataDigest = digests });
        Assert.Equal(digests, host.IoQueues[0].Queue.HeaderDigest);
        Assert.Equal(digests, host.IoQueues[0].Queue.DataDigest);
        RunVerify(host.IoQueues[0], blockSize, qd: 4, ios: blockSize >= 262144 ? 120 : 600);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    [InlineData(32)]
    [InlineData(128)]
    public void QueueDepths(int qd)
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect(new NvmeHostOptions { IoQueueDepth = qd });
        Assert.Equal(qd, host.IoQueues[0].Queue.Depth);
        RunVerify(host.IoQueues[0], 4096, qd, ios: 4000);
    }

    [Theory]
    [InlineData(0u)]     // every write through R2T
    [InlineData(8192u)]  // writes up to 8 KiB in-capsule
    public void InCapsuleAndR2TPaths(uint icd)
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect(new NvmeHostOptions { InCapsuleDataSize = icd });
        Assert.Equal(icd, host.IoQueues[0].Queue.InCapsuleDataSize);
        RunVerify(host.IoQueues[0], 4096, 16, ios: 2000);
        RunVerify(host.IoQueues[0], 8192, 16, ios: 2000, seed: 2);
    }

    [Fact]
    public void SeveralR2TsOutstandingPerCommand()
    {
        // A small MAXH2CDATA splits each 1 MiB write into 64 R2Ts, up to 4 outstanding at once.
        using var node = new TestNode(new() { ["Target:MaxH2CDataSize"] = "16384", ["Target:MaxR2TPerCommand"] = "4" });
        using NvmeHost host = node.Connect(new NvmeHostOptions { MaxR2T = 4, InCapsuleDataSize = 0 });
        Assert.Equal(16384u, host.IoQueues[0].Queue.MaxH2CData);
        RunVerify(host.IoQueues[0], 1048576, 2, ios: 60);
        RunVerify(host.IoQueues[0], 20480, 8, ios: 400, seed: 3);
    }

    [Fact]
    public void ResponseCapsuleWhenSqFlowControlIsOn()
    {
        // With SQ flow control on, reads end with a CapsuleResp instead of a C2HData SUCCESS flag.
        using var node = new TestNode();
        using NvmeHost host = node.Connect(new NvmeHostOptions { DisableSqFlowControl = false });
        RunVerify(host.IoQueues[0], 4096, 8, ios: 1000);
        RunVerify(host.IoQueues[0], 262144, 2, ios: 60, seed: 2);
    }

    [Fact]
    public void SmallC2HPdusSplitReads()
    {
        using var node = new TestNode(new() { ["Target:MaxC2HDataSize"] = "4096" });
        using NvmeHost host = node.Connect(new NvmeHostOptions { DataDigest = true, HeaderDigest = true });
        RunVerify(host.IoQueues[0], 65536, 4, ios: 200);
    }

    [Fact]
    public void SeveralQueuesOnSeveralReactorsConcurrently()
    {
        using var node = new TestNode(reactors: 2);
        using NvmeHost host = node.Connect(new NvmeHostOptions { IoQueues = 4, IoQueueDepth = 16 });
        Assert.Equal(4, host.IoQueues.Count);
        var results = new WorkloadResult[4];
        var threads = new Thread[4];
        for (int i = 0; i < 4; i++)
        {
            int idx = i;
            threads[i] = new Thread(() =>
            {
                var opts = new WorkloadOptions
                {
                    Pattern = AccessPattern.RandRw, BlockSize = 8192, QueueDepth = 16, IoCount = 1500, Verify = true,
                    RegionLba = (ulong)idx * 4096, RegionBlocks = 4096, Seed = idx + 1, Poll = HostPollMode.Adaptive,
                    Duration = TimeSpan.FromMinutes(2),
                };
                using var r = new WorkloadRunner(host.IoQueues[idx], opts);
                results[idx] = r.Run();
            });
            threads[i].Start();
        }
        foreach (Thread t in threads) Assert.True(t.Join(TimeSpan.FromMinutes(2)), "workload thread did not finish");
        foreach (WorkloadResult r in results)
        {
            Assert.True(r.Errors == 0 && r.VerifyFailures == 0, r.FirstError);
            Assert.Equal(1500, r.Ios);
        }
    }

    [Fact]
    public void FourKiBlockNamespace()
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect();
        NamespaceInfo ns = host.IdentifyNamespace(2);
        Assert.Equal(4096u, ns.BlockSize);
        RunVerify(host.IoQueues[0], 16384, 8, ios: 800, nsid: 2, lbaSize: 4096);
    }

    [Fact]
    public void DataSurvivesReconnect()
    {
        using var node = new TestNode();
        var data = new byte[65536];
        new Random(9).NextBytes(data);
        using (NvmeHost host = node.Connect())
            Assert.True(host.IoQueues[0].Write(1, 1000, 128, data).IsSuccess);
        using (NvmeHost host = node.Connect())
        {
            var back = new byte[65536];
            Assert.True(host.IoQueues[0].Read(1, 1000, 128, back).IsSuccess);
            Assert.Equal(data, back);
        }
    }
}
