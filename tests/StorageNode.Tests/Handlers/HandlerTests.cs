using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using StorageNode.Bdevs;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests.Handlers;

/// <summary>
/// The command handlers against a queue pair with no transport (<see cref="HandlerRig"/>), as SPDK's <c>ctrlr_ut.c</c>
/// tests its own: what each answers and what it changes, with nothing of a wire in between. The loopback tests cover
/// the same commands through NVMe/TCP.
/// </summary>
public sealed class HandlerTests : IDisposable
{
    private readonly HandlerRig _rig = new();

    public void Dispose() => _rig.Dispose();

    private static SubmissionQueueEntry Admin(byte opcode, uint cdw10 = 0, uint nsid = 0)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = opcode;
        sqe.Cdw10 = cdw10;
        sqe.Nsid = nsid;
        return sqe;
    }

    private static SubmissionQueueEntry GetLogPage(byte lid, int bytes)
        => Admin(AdminOpcode.GetLogPage, lid | ((uint)(bytes / 4 - 1) << 16), 0xFFFFFFFF);

    [Fact]
    public void IdentifyControllerCarriesTheTransportsSglSupport()
    {
        _rig.Connect();
        var page = new byte[4096];
        CompletionQueueEntry cqe = _rig.Admin.Run(Admin(AdminOpcode.Identify, Cns.Controller), page);
        Assert.True(cqe.StatusField.IsSuccess, cqe.StatusField.ToString());
        Assert.Equal("SNHANDLERS", Encoding.ASCII.GetString(page, 4, 20).Trim());
        uint sgls = BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(536));
        Assert.Equal(IdentifyControllerBits.SglsSupported | IdentifyControllerBits.SglsOffset | IdentifyControllerBits.SglsKeyed,
            sgls & (IdentifyControllerBits.SglsSupported | IdentifyControllerBits.SglsOffset | IdentifyControllerBits.SglsKeyed));
        using var tcpLike = new HandlerRig(Discovery.TrTypeTcp, sglSupport: 0);
        tcpLike.Connect();
        Assert.True(tcpLike.Admin.Run(Admin(AdminOpcode.Identify, Cns.Controller), page).StatusField.IsSuccess);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(536)) & IdentifyControllerBits.SglsKeyed);
    }

    [Fact]
    public void TheErrorLogAndTheDiscoveryLogNameTheQueuesTransport()
    {
        _rig.Connect();
        var data = new byte[512];
        // A read of NSID 9 (no such namespace) fails and is logged with the transport it came on.
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat,
            _rig.Io.Run(IoQueue.ReadWriteSqe(IoOpcode.Read, 9, 0, 1), data).StatusField.Code);
        var log = new byte[64];
        Assert.True(_rig.Admin.Run(GetLogPage(LogPageId.Error, 64), log).StatusField.IsSuccess);
        ErrorLogEntry e = MemoryMarshal.Read<ErrorLogEntry>(log);
        Assert.Equal(1ul, e.ErrorCount);
        Assert.Equal(9u, e.Nsid);
        Assert.Equal(Discovery.TrTypeRdma, e.TrType);

        using var d = new HandlerRig();
        d.Connect(WellKnownNqn.Discovery, io: false);
        var disc = new byte[4096];
        Assert.True(d.Admin.Run(GetLogPage(LogPageId.Discovery, 4096), disc).StatusField.IsSuccess);
        ulong records = BinaryPrimitives.ReadUInt64LittleEndian(disc.AsSpan(8));
        Assert.Equal(2ul, records); // the discovery subsystem and the NVM subsystem, on the one listener
        for (int i = 0; i < (int)records; i++)
        {
            ReadOnlySpan<byte> entry = disc.AsSpan(1024 + i * 1024, 1024);
            Assert.Equal(Discovery.TrTypeRdma, entry[0]);
            Assert.Equal(StubTransport.TsasMark, entry[768]);
        }
    }

    [Fact]
    public void IoBeforeTheControllerIsEnabledIsACommandSequenceError()
    {
        _rig.Connect(enable: false, io: false);
        // The I/O queue cannot even connect to a disabled controller; an admin command other than Fabrics is refused too.
        Assert.Equal(GenericStatus.CommandSequenceError, _rig.Admin.Run(Admin(AdminOpcode.KeepAlive)).StatusField.Code);
    }

    [Fact]
    public void AWriteAndItsReadGoThroughTheTableAndCountInTheBdevsStatistics()
    {
        _rig.Connect();
        var data = new byte[4096];
        new Random(5).NextBytes(data);
        Assert.True(_rig.Io.Run(IoQueue.ReadWriteSqe(IoOpcode.Write, 1, 100, 8), data).StatusField.IsSuccess);
        var back = new byte[4096];
        Assert.True(_rig.Io.Run(IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 100, 8), back).StatusField.IsSuccess);
        Assert.Equal(data, back);
        long[] st = _rig.Bdev.Stats.For(0);
        Assert.Equal(1, st[(int)IoStat.WriteOps]);
        Assert.Equal(4096, st[(int)IoStat.BytesWritten]);
        Assert.Equal(1, st[(int)IoStat.ReadOps]);
        Assert.Equal(4096, st[(int)IoStat.BytesRead]);
        Assert.Equal(0, st[(int)IoStat.Errors]);
    }

    [Fact]
    public void ChecksBeforeDataMovesFailTheCommandAndCountAsErrors()
    {
        _rig.Connect();
        var block = new byte[512];
        // Past the end of the namespace: nothing is written.
        Assert.Equal(GenericStatus.LbaOutOfRange, _rig.Io.Run(IoQueue.ReadWriteSqe(IoOpcode.Write, 1, HandlerRig.Blocks, 1), block).StatusField.Code);
        // Data of another length than the blocks': refused before data moves.
        Assert.Equal(GenericStatus.DataSglLengthInvalid, _rig.Io.Run(IoQueue.ReadWriteSqe(IoOpcode.Write, 1, 0, 2), block).StatusField.Code);
        // Write Zeroes and Verify check the range, with no data.
        Assert.Equal(GenericStatus.LbaOutOfRange, _rig.Io.Run(IoQueue.ReadWriteSqe(IoOpcode.WriteZeroes, 1, HandlerRig.Blocks - 1, 2)).StatusField.Code);
        Assert.True(_rig.Io.Run(IoQueue.ReadWriteSqe(IoOpcode.Verify, 1, HandlerRig.Blocks - 2, 2)).StatusField.IsSuccess);
        long[] st = _rig.Bdev.Stats.For(0);
        Assert.Equal(0, st[(int)IoStat.WriteOps]);
        Assert.Equal(0, st[(int)IoStat.WriteZeroesOps]);
        Assert.Equal(0, st[(int)IoStat.Errors]); // refused in Prepare: the namespace is not set, nothing reached the bdev
    }

    [Theory]
    [InlineData(0xA1)] // the replica's copy of a Write: accepted only on the interconnect
    [InlineData(0xB9)] // ... of a Copy
    [InlineData(0x81)] // a fused Compare and Write relayed whole: only from the partner
    [InlineData(0x04)] // Write Uncorrectable: not in the table
    public void CommandsOutsideTheHostsTableAreInvalidOpcodes(byte opcode)
    {
        _rig.Connect();
        SubmissionQueueEntry sqe = IoQueue.ReadWriteSqe(opcode, 1, 0, 1);
        Assert.Equal(GenericStatus.InvalidOpcode, _rig.Io.Run(sqe, (opcode & 3) == 1 ? new byte[512] : default).StatusField.Code);
    }

    [Fact]
    public void AbortIsRefusedOnADiscoveryControllerAndKeepAliveIsNot()
    {
        _rig.Connect(WellKnownNqn.Discovery, io: false);
        Assert.Equal(GenericStatus.InvalidOpcode, _rig.Admin.Run(Admin(AdminOpcode.Abort, 1)).StatusField.Code);
        Assert.True(_rig.Admin.Run(Admin(AdminOpcode.KeepAlive)).StatusField.IsSuccess);
    }
}
