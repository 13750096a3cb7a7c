using StorageNode.Bdevs;
using StorageNode.Interop;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Perf;

namespace StorageNode.Tests;

public class FileBdevTests
{
    [Theory]
    [InlineData("auto")]
    [InlineData("off")]
    public void FileBdevThroughTheTarget(string direct)
    {
        // /var/tmp is a disk-backed file system here (O_DIRECT works); the test accepts either outcome of "auto".
        string dir = Path.Combine("/var/tmp", "sn-filebdev-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "disk.img");
        try
        {
            using (var node = new TestNode(new()
            {
                ["Bdevs:2:Name"] = "File0",
                ["Bdevs:2:Type"] = "file",
                ["Bdevs:2:Path"] = path,
                ["Bdevs:2:SizeMiB"] = "16",
                ["Bdevs:2:BlockSize"] = "4096",
                ["Bdevs:2:Direct"] = direct,
                ["Subsystems:0:Namespaces:2:Nsid"] = "3",
                ["Subsystems:0:Namespaces:2:Bdev"] = "File0",
            }))
            {
                var bdev = (FileBdev)node.Node.GetBdev("File0");
                Assert.Equal(Shim.Has(Shim.FeatureUring), bdev.UsesUring);
                if (direct == "off") Assert.False(bdev.Direct);
                using NvmeHost host = node.Connect(new NvmeHostOptions { IoQueueDepth = 16 });
                IoQueue q = host.IoQueues[0];
                using (var r = new WorkloadRunner(q, new WorkloadOptions
                {
                    Pattern = AccessPattern.RandRw, BlockSize = 16384, QueueDepth = 16, IoCount = 1500, Verify = true,
                    Nsid = 3, LbaSize = 4096, RegionBlocks = 2048, Poll = HostPollMode.Adaptive, Duration = TimeSpan.FromMinutes(2),
                }))
                {
                    WorkloadResult res = r.Run();
                    Assert.True(res.Errors == 0 && res.VerifyFailures == 0, res.FirstError);
                }
                var data = new byte[8192];
                new Random(4).NextBytes(data);
                Assert.True(q.Write(3, 100, 2, data).IsSuccess);
                Assert.True(q.Flush(3).IsSuccess);
                Assert.True(q.WriteZeroes(3, 101, 1).IsSuccess);
                Assert.True(q.Deallocate(3, [(500, 8)]).IsSuccess);
                var back = new byte[8192];
                Assert.True(q.Read(3, 100, 2, back).IsSuccess);
                Assert.Equal(data.AsSpan(0, 4096).ToArray(), back.AsSpan(0, 4096).ToArray());
                Assert.All(back.AsSpan(4096).ToArray(), b => Assert.Equal(0, b));
            }
            // The data is in the file itself.
            using FileStream fs = File.OpenRead(path);
            Assert.Equal(16L * 1024 * 1024, fs.Length);
            var sector = new byte[4096];
            fs.Position = 100 * 4096;
            fs.ReadExactly(sector);
            var again = new byte[8192];
            new Random(4).NextBytes(again);
            Assert.Equal(again.AsSpan(0, 4096).ToArray(), sector);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>
    /// Found by the rig (a replica in a guest's /tmp failed every resync with Internal Error): tmpfs has no
    /// FALLOC_FL_ZERO_RANGE, so a Write Zeroes failed with EOPNOTSUPP. It punches a hole there instead; the blocks read
    /// back as zeroes, the blocks around them keep their data, and the file keeps its size. /dev/shm is a tmpfs.
    /// </summary>
    [Fact]
    public void WriteZeroesWorksOnAFileSystemWithoutZeroRange()
    {
        Assert.True(Directory.Exists("/dev/shm"), "no /dev/shm (a tmpfs) on this machine");
        string path = Path.Combine("/dev/shm", "sn-filebdev-" + Guid.NewGuid().ToString("N") + ".img");
        try
        {
            using var node = new TestNode(new()
            {
                ["Bdevs:2:Name"] = "File0",
                ["Bdevs:2:Type"] = "file",
                ["Bdevs:2:Path"] = path,
                ["Bdevs:2:SizeMiB"] = "4",
                ["Bdevs:2:BlockSize"] = "4096",
                ["Subsystems:0:Namespaces:2:Nsid"] = "3",
                ["Subsystems:0:Namespaces:2:Bdev"] = "File0",
            });
            using NvmeHost host = node.Connect();
            IoQueue q = host.IoQueues[0];
            var data = new byte[4 * 4096];
            new Random(5).NextBytes(data);
            Assert.True(q.Write(3, 10, 4, data).IsSuccess);
            for (int round = 0; round < 2; round++) // the first learns the file system's limit, the second knows it
            {
                NvmeStatus st = q.WriteZeroes(3, (ulong)(11 + round), 1);
                Assert.True(st.IsSuccess, $"Write Zeroes {round + 1} on tmpfs: {st}");
            }
            var back = new byte[4 * 4096];
            Assert.True(q.Read(3, 10, 4, back).IsSuccess);
            Assert.Equal(data.AsSpan(0, 4096).ToArray(), back.AsSpan(0, 4096).ToArray());
            Assert.All(back.AsSpan(4096, 2 * 4096).ToArray(), b => Assert.Equal(0, b));
            Assert.Equal(data.AsSpan(3 * 4096).ToArray(), back.AsSpan(3 * 4096).ToArray());
            Assert.Equal(4L << 20, new FileInfo(path).Length);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void NativeShimIsBuiltAndHasIoUring()
    {
        // build.ps1 builds libsnshim with liburing; a test run without it would silently test the fallback only.
        Assert.True(Shim.IsAvailable, Shim.UnavailableReason);
        Assert.True(Shim.Has(Shim.FeatureUring), "libsnshim was built without io_uring support");
    }
}
