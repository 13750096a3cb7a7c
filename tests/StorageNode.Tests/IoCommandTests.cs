using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests;

/// <summary>Write Zeroes, Dataset Management (deallocate), Flush and the errors of the NVM command set.</summary>
public class IoCommandTests : IDisposable
{
    private readonly TestNode _node = new();
    private readonly NvmeHost _host;
    private readonly IoQueue _q;

    public IoCommandTests()
    {
        _host = _node.Connect();
        _q = _host.IoQueues[0];
    }

    public void Dispose()
    {
        _host.Dispose();
        _node.Dispose();
    }

    private byte[] Fill(ulong lba, uint blocks, int seed)
    {
        var data = new byte[blocks * 512];
        new Random(seed).NextBytes(data);
        Assert.True(_q.Write(1, lba, blocks, data).IsSuccess);
        return data;
    }

    private byte[] ReadBack(ulong lba, uint blocks)
    {
        var back = new byte[blocks * 512];
        Assert.True(_q.Read(1, lba, blocks, back).IsSuccess);
        return back;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WriteZeroesClearsExactlyTheRange(bool deallocate)
    {
        byte[] before = Fill(100, 32, 1);
        Assert.True(_q.WriteZeroes(1, 108, 8, deallocate).IsSuccess);
        byte[] after = ReadBack(100, 32);
        Assert.Equal(before.AsSpan(0, 8 * 512).ToArray(), after.AsSpan(0, 8 * 512).ToArray());
        Assert.All(after.AsSpan(8 * 512, 8 * 512).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(before.AsSpan(16 * 512).ToArray(), after.AsSpan(16 * 512).ToArray());
    }

    [Fact]
    public void DeallocateReadsBackZeroesOnEveryRange()
    {
        byte[] before = Fill(0, 64, 2);
        Assert.True(_q.Deallocate(1, [(4, 4), (20, 10), (60, 4)]).IsSuccess);
        byte[] after = ReadBack(0, 64);
        for (int lba = 0; lba < 64; lba++)
        {
            bool cleared = lba is >= 4 and < 8 or >= 20 and < 30 or >= 60;
            var sector = after.AsSpan(lba * 512, 512).ToArray();
            if (cleared) Assert.All(sector, b => Assert.Equal(0, b));
            else Assert.Equal(before.AsSpan(lba * 512, 512).ToArray(), sector);
        }
    }

    [Fact]
    public void DeallocateWithARangePastTheEndChangesNothing()
    {
        byte[] before = Fill(0, 16, 3);
        ulong blocks = _host.IdentifyNamespace(1).BlockCount;
        NvmeStatus st = _q.Deallocate(1, [(0, 8), (blocks - 2, 4)]);
        Assert.Equal(GenericStatus.LbaOutOfRange, st.Code);
        Assert.Equal(StatusCodeType.Generic, st.Type);
        Assert.Equal(before, ReadBack(0, 16));
    }

    [Fact]
    public void FlushSucceedsAndBroadcastFlushIsRefused()
    {
        Assert.True(_q.Flush(1).IsSuccess);
        NvmeStatus st = _q.Flush(0xFFFFFFFF);
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat, st.Code);
    }

    [Fact]
    public void ReadAndWritePastTheEndAreOutOfRange()
    {
        ulong blocks = _host.IdentifyNamespace(1).BlockCount;
        var buf = new byte[4096];
        Assert.Equal(GenericStatus.LbaOutOfRange, _q.Read(1, blocks - 4, 8, buf).Code);
        Assert.Equal(GenericStatus.LbaOutOfRange, _q.Write(1, blocks, 8, buf).Code);
        Assert.Equal(GenericStatus.LbaOutOfRange, _q.WriteZeroes(1, blocks - 1, 2).Code);
        // The last block itself is fine.
        Assert.True(_q.Read(1, blocks - 8, 8, buf).IsSuccess);
    }

    [Fact]
    public void InvalidNamespaceIsRefused()
    {
        var buf = new byte[512];
        NvmeStatus st = _q.Read(7, 0, 1, buf);
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat, st.Code);
        Assert.True(st.DoNotRetry);
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat, _q.Read(0, 0, 1, buf).Code);
    }

    [Fact]
    public void TransferLargerThanMdtsIsInvalidField()
    {
        uint mdts = _host.MaxTransferSize;
        Assert.Equal(1048576u, mdts);
        var buf = new byte[mdts * 2];
        NvmeStatus st = _q.Read(1, 0, (uint)(buf.Length / 512), buf);
        Assert.Equal(GenericStatus.InvalidField, st.Code);
    }

    [Fact]
    public void SglLengthThatDisagreesWithTheBlockCountIsRefused()
    {
        SubmissionQueueEntry sqe = IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 0, 8);
        var buf = new byte[2048];
        CompletionQueueEntry cqe = _q.Execute(sqe, buf, DataDirection.ControllerToHost);
        Assert.Equal(GenericStatus.DataSglLengthInvalid, cqe.StatusField.Code);
    }

    [Theory]
    [InlineData(0xA1)] // the replica's copies of Write, Write Zeroes, Dataset Management and Copy: the interconnect's only
    [InlineData(0xA8)]
    [InlineData(0xA9)]
    [InlineData(0xB9)]
    public void AReplicasCopyOpcodeFromAHostIsInvalidOpcode(byte opcode)
    {
        var data = new byte[512];
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = opcode;
        sqe.Nsid = 1;
        CompletionQueueEntry cqe = _q.Execute(sqe, (opcode & 3) == 1 ? data : default, (opcode & 3) == 1 ? DataDirection.HostToController : DataDirection.None);
        Assert.Equal(GenericStatus.InvalidOpcode, cqe.StatusField.Code);
        Assert.True(_q.Flush(1).IsSuccess);
    }

    /// <summary>
    /// The Commands Supported and Effects log follows the command tables: every opcode it lists is taken (answered with
    /// anything but Invalid Opcode, here mostly a data length error for want of data), every other one is refused with
    /// Invalid Opcode — on the admin queue and on an I/O queue. LBCC is set for exactly the commands that write.
    /// </summary>
    [Fact]
    public void TheEffectsLogListsExactlyTheCommandsThatAreTaken()
    {
        byte[] effects = _host.GetLogPage(LogPageId.CommandEffects, 4096);
        uint Entry(int offset, int op) => BitConverter.ToUInt32(effects, offset + op * 4);
        var admin = new List<int>();
        var io = new List<int>();
        for (int op = 0; op < 256; op++)
        {
            SubmissionQueueEntry sqe = default;
            sqe.Opcode = (byte)op;
            // 7Fh is a Fabrics command on either queue; an Asynchronous Event Request stays outstanding until an event.
            if (op != AdminOpcode.FabricsCommand && op != AdminOpcode.AsyncEventRequest)
            {
                bool taken = _host.AdminCommand(sqe, default, DataDirection.None).StatusField.Code != GenericStatus.InvalidOpcode;
                Assert.True(taken == ((Entry(0, op) & 1) != 0), $"admin opcode {op:X2}: taken {taken}, listed {Entry(0, op):X}");
                if (taken) admin.Add(op);
            }
            if (op != IoOpcode.FabricsCommand)
            {
                sqe.Nsid = 1;
                bool taken = _q.Execute(sqe, default, DataDirection.None).StatusField.Code != GenericStatus.InvalidOpcode;
                Assert.True(taken == ((Entry(1024, op) & 1) != 0), $"I/O opcode {op:X2}: taken {taken}, listed {Entry(1024, op):X}");
                if (taken) io.Add(op);
            }
        }
        Assert.Equal(1u, Entry(0, AdminOpcode.AsyncEventRequest));
        Assert.Equal([AdminOpcode.GetLogPage, AdminOpcode.Identify, AdminOpcode.Abort, AdminOpcode.SetFeatures, AdminOpcode.GetFeatures,
            AdminOpcode.KeepAlive], admin.Select(o => (byte)o));
        Assert.Equal([IoOpcode.Flush, IoOpcode.Write, IoOpcode.Read, IoOpcode.Compare, IoOpcode.WriteZeroes, IoOpcode.DatasetManagement,
            IoOpcode.Verify, IoOpcode.ReservationRegister, IoOpcode.ReservationReport, IoOpcode.ReservationAcquire, IoOpcode.ReservationRelease,
            IoOpcode.Copy], io.Select(o => (byte)o));
        byte[] writes = [IoOpcode.Flush, IoOpcode.Write, IoOpcode.WriteZeroes, IoOpcode.DatasetManagement, IoOpcode.Copy];
        foreach (int op in io) Assert.Equal(writes.Contains((byte)op) ? 3u : 1u, Entry(1024, op));
        Assert.True(_q.Flush(1).IsSuccess);
    }

    [Fact]
    public void UnknownIoOpcodeIsInvalidOpcode()
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = 0x7E;
        sqe.Nsid = 1;
        CompletionQueueEntry cqe = _q.Execute(sqe, default, DataDirection.None);
        Assert.Equal(GenericStatus.InvalidOpcode, cqe.StatusField.Code);
        // The queue still works afterwards.
        Assert.True(_q.Flush(1).IsSuccess);
    }

    [Fact]
    public void FailedCommandsLandInTheErrorLog()
    {
        var buf = new byte[512];
        Assert.False(_q.Read(9, 0, 1, buf).IsSuccess);
        byte[] log = _host.GetLogPage(LogPageId.Error, 64 * 64);
        ulong count = BitConverter.ToUInt64(log, 0);
        Assert.True(count >= 1);
        Assert.Equal(_q.Qid, BitConverter.ToUInt16(log, 8));
        Assert.Equal(9u, BitConverter.ToUInt32(log, 24));
        var status = new NvmeStatus((ushort)(BitConverter.ToUInt16(log, 12) >> 1));
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat, status.Code);
    }
}
