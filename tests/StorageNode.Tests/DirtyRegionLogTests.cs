using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using StorageNode.Nvme;
using StorageNode.Target;

namespace StorageNode.Tests;

/// <summary>
/// The dirty-region record's file (docs/ha.md, "The dirty-region record"): kept across a restart only for the same
/// data generation, size and boot of the machine; anything else starts anew, naming no epoch. (Marking and clearing
/// regions are tested with the pair: MirrorTests.TwoProcessesAnOwnerKilledAndRestartedResyncsOnlyWhatItsReplicaMissed.)
/// </summary>
public class DirtyRegionLogTests
{
    private static readonly TimeSpan Clear = TimeSpan.FromSeconds(5);

    [Fact]
    public void TheRecordIsKeptOnlyForTheSameDataSizeAndBoot()
    {
        string path = Path.Combine(Path.GetTempPath(), $"sn-dirty-{Guid.NewGuid():N}.dirty");
        try
        {
            using (DirtyRegionLog fresh = DirtyRegionLog.Open(path, generation: 77, regions: 100, Clear, NullLogger.Instance))
            {
                Assert.False(fresh.Loaded);
                Assert.Equal(0u, fresh.Epoch);
                Assert.True(fresh.SetEpoch(3));
            }
            Assert.Equal(4096 + (100 + 7) / 8, new FileInfo(path).Length);
            using (DirtyRegionLog kept = DirtyRegionLog.Open(path, 77, 100, Clear, NullLogger.Instance))
            {
                Assert.True(kept.Loaded);
                Assert.Equal(3u, kept.Epoch);
                Assert.Equal(0, kept.MarkedRegions);
            }

            // A region marked on the device (as a write's flush leaves it) comes back marked.
            using (FileStream f = File.OpenWrite(path))
            {
                f.Position = 4096 + 1;
                f.WriteByte(0b0000_0100); // region 10
            }
            using (DirtyRegionLog kept = DirtyRegionLog.Open(path, 77, 100, Clear, NullLogger.Instance))
            {
                Assert.Equal(1, kept.MarkedRegions);
                Assert.Equal(1L << 10, kept.LoadedRegions[0]);
            }

            // Another boot of the machine: writes the device had not flushed may be lost; the record starts anew.
            byte[] header = new byte[4096];
            using (FileStream f = File.OpenRead(path)) f.ReadExactly(header);
            Guid.NewGuid().TryWriteBytes(header.AsSpan(28, 16));
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(44), Crc32C.Compute(header.AsSpan(0, 44)));
            using (FileStream f = File.OpenWrite(path)) f.Write(header);
            using (DirtyRegionLog other = DirtyRegionLog.Open(path, 77, 100, Clear, NullLogger.Instance))
            {
                Assert.False(other.Loaded);
                Assert.Equal(0u, other.Epoch);
                Assert.Equal(0, other.MarkedRegions);
                Assert.True(other.SetEpoch(4));
            }

            // Other data (the file was made anew), another size, a damaged header: anew.
            using (DirtyRegionLog other = DirtyRegionLog.Open(path, 78, 100, Clear, NullLogger.Instance)) Assert.False(other.Loaded);
            using (DirtyRegionLog kept = DirtyRegionLog.Open(path, 78, 100, Clear, NullLogger.Instance)) Assert.True(kept.Loaded);
            using (DirtyRegionLog other = DirtyRegionLog.Open(path, 78, 101, Clear, NullLogger.Instance)) Assert.False(other.Loaded);
            using (FileStream f = File.OpenWrite(path))
            {
                f.Position = 8;
                f.WriteByte(0xFF);
            }
            using (DirtyRegionLog other = DirtyRegionLog.Open(path, 78, 101, Clear, NullLogger.Instance)) Assert.False(other.Loaded);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
