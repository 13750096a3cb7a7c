using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using StorageNode.Nvme;
using StorageNode.Nvme.Spec;
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

    /// <summary>
    /// The regions (1 MiB; blocks of 512 bytes here, 2048 per region) a write marks: a Write's LBA range; a deallocating
    /// Dataset Management from its first range's region to its last's (a range of no blocks marks nothing; one beyond
    /// the namespace is clipped); a Copy its destination, as long as its sources together; a DSM without deallocate
    /// (a hint) and a Read nothing.
    /// </summary>
    [Fact]
    public void AWriteMarksTheRegionsItsBlocksTouch()
    {
        const int Regions = 64, Shift = 9;
        SubmissionQueueEntry Sqe(byte op, ulong slba, uint blocks = 1, uint cdw11 = 0, uint cdw12 = 0)
        {
            SubmissionQueueEntry e = default;
            e.Opcode = op;
            e.Cdw10 = (uint)slba;
            e.Cdw11 = cdw11 != 0 ? cdw11 : (uint)(slba >> 32);
            e.Cdw12 = cdw12 != 0 ? cdw12 : blocks - 1;
            return e;
        }
        Assert.Equal((0, 0), DirtyRegionLog.RegionsOf(Sqe(IoOpcode.Write, 0, 8), [], Regions, Shift));
        Assert.Equal((0, 1), DirtyRegionLog.RegionsOf(Sqe(IoOpcode.Write, 2040, 16), [], Regions, Shift));
        Assert.Equal((3, 3), DirtyRegionLog.RegionsOf(Sqe(IoOpcode.WriteZeroes, 3 * 2048, 2048), [], Regions, Shift));
        Assert.Null(DirtyRegionLog.RegionsOf(Sqe(IoOpcode.Read, 0, 8), [], Regions, Shift));

        // Dataset Management: ranges in regions 5, 2 (of no blocks: nothing) and 9, and one beyond the namespace.
        byte[] dsm = new byte[4 * 16];
        void Range(int i, uint nlb, ulong slba)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(dsm.AsSpan(i * 16 + 4), nlb);
            BinaryPrimitives.WriteUInt64LittleEndian(dsm.AsSpan(i * 16 + 8), slba);
        }
        Range(0, 8, 5 * 2048);
        Range(1, 0, 2 * 2048);
        Range(2, 4096, 9 * 2048 + 100);
        SubmissionQueueEntry deallocate = Sqe(IoOpcode.DatasetManagement, 2, cdw11: DsmAttribute.Deallocate); // CDW10: 3 ranges
        Assert.Equal((5, 11), DirtyRegionLog.RegionsOf(deallocate, dsm, Regions, Shift));
        Range(3, 8, 1UL << 40);
        deallocate.Cdw10 = 3;
        Assert.Equal((5, Regions - 1), DirtyRegionLog.RegionsOf(deallocate, dsm, Regions, Shift));
        SubmissionQueueEntry hint = deallocate;
        hint.Cdw11 = 0;
        Assert.Null(DirtyRegionLog.RegionsOf(hint, dsm, Regions, Shift));
        Assert.Null(DirtyRegionLog.RegionsOf(deallocate, dsm.AsSpan(0, 0), Regions, Shift)); // no range in its data

        // Copy: two sources of 2048 and 1 blocks to destination LBA 20 * 2048 + 1: regions 20 and 21.
        byte[] copy = new byte[2 * CopyFields.EntrySize];
        BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan(8), 0);
        BinaryPrimitives.WriteUInt16LittleEndian(copy.AsSpan(16), 2047);
        BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan(CopyFields.EntrySize + 8), 40 * 2048);
        BinaryPrimitives.WriteUInt16LittleEndian(copy.AsSpan(CopyFields.EntrySize + 16), 0);
        SubmissionQueueEntry c = Sqe(IoOpcode.Copy, 20 * 2048 + 1, cdw12: 1); // CDW12 bits 7:0: two ranges
        Assert.Equal((20, 21), DirtyRegionLog.RegionsOf(c, copy, Regions, Shift));
    }

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
