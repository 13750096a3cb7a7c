using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests;

/// <summary>
/// Compare, Verify and the fused Compare and Write (what VMware's VMFS locking and other clustered hosts use): the
/// pairing rules of fused commands, their statuses, and atomicity against concurrent writers on several reactors.
/// </summary>
public sealed class CompareTests : IDisposable
{
    private const uint Ns = 1;
    /// <summary>A file namespace: its reads and writes complete later (io_uring), which widens every race.</summary>
    private const uint FileNs = 3;
    private readonly string _dir = Directory.CreateTempSubdirectory("sn-compare-").FullName;
    private readonly TestNode _node;
    private readonly NvmeHost _host;
    private IoQueue Q => _host.IoQueues[0];

    public CompareTests()
    {
        _node = new TestNode(new()
        {
            ["Bdevs:2:Name"] = "File0",
            ["Bdevs:2:Type"] = "file",
            ["Bdevs:2:Path"] = Path.Combine(_dir, "disk.img"),
            ["Bdevs:2:SizeMiB"] = "4",
            ["Bdevs:2:BlockSize"] = "512",
            ["Bdevs:2:Direct"] = "off",
            ["Subsystems:0:Namespaces:2:Nsid"] = FileNs.ToString(),
            ["Subsystems:0:Namespaces:2:Bdev"] = "File0",
        }, reactors: 2);
        _host = _node.Connect();
    }

    public void Dispose()
    {
        _host.Dispose();
        _node.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private static byte[] Fill(byte b, int blocks = 1) => Enumerable.Repeat(b, 512 * blocks).ToArray();

    private static void Is(StatusCodeType type, byte code, NvmeStatus st) => Assert.Equal((type, code), (st.Type, (byte)st.Code));

    [Fact]
    public void IdentifyAdvertisesCompareVerifyAndTheFusedOperation()
    {
        byte[] id = _host.IdentifyControllerData;
        ushort oncs = BitConverter.ToUInt16(id, 520);
        Assert.NotEqual(0, oncs & IdentifyControllerBits.OncsCompare);
        Assert.NotEqual(0, oncs & IdentifyControllerBits.OncsVerify);
        Assert.Equal(IdentifyControllerBits.FusesCompareAndWrite, BitConverter.ToUInt16(id, 522));
        Assert.Equal(31, BitConverter.ToUInt16(id, 532)); // ACWU: 32 blocks, 0-based
    }

    [Fact]
    public void CompareSaysWhetherTheBlocksHoldTheData()
    {
        Assert.True(Q.Write(Ns, 10, 2, Fill(0x33, 2)).IsSuccess);
        Assert.True(Q.Compare(Ns, 10, 2, Fill(0x33, 2)).IsSuccess);
        byte[] almost = Fill(0x33, 2);
        almost[1023] = 0x34;
        NvmeStatus st = Q.Compare(Ns, 10, 2, almost);
        Is(StatusCodeType.MediaDataIntegrity, MediaStatus.CompareFailure, st);
        Assert.True(st.DoNotRetry);
        Is(StatusCodeType.Generic, GenericStatus.LbaOutOfRange, Q.Compare(Ns, 131071, 2, Fill(0, 2)));
        Is(StatusCodeType.Generic, GenericStatus.DataSglLengthInvalid, Q.Compare(Ns, 10, 2, Fill(0x33, 1)));
        Assert.True(Q.Verify(Ns, 0, 64).IsSuccess);
        Is(StatusCodeType.Generic, GenericStatus.LbaOutOfRange, Q.Verify(Ns, 131071, 2));
    }

    [Fact]
    public void CompareAndWriteReplacesOnlyWhatMatches()
    {
        Assert.True(Q.Write(Ns, 20, 4, Fill(0x01, 4)).IsSuccess);
        var (c, w) = Q.CompareAndWrite(Ns, 20, 4, Fill(0x01, 4), Fill(0x02, 4));
        Assert.True(c.IsSuccess && w.IsSuccess, $"{c} {w}");
        (c, w) = Q.CompareAndWrite(Ns, 20, 4, Fill(0x01, 4), Fill(0x03, 4));
        Is(StatusCodeType.MediaDataIntegrity, MediaStatus.CompareFailure, c);
        Is(StatusCodeType.Generic, GenericStatus.AbortedFailedFused, w);
        var back = new byte[2048];
        Assert.True(Q.Read(Ns, 20, 4, back).IsSuccess);
        Assert.All(back, b => Assert.Equal(0x02, b));
        // Larger than ACWU: refused (both).
        (c, w) = Q.CompareAndWrite(Ns, 0, 33, Fill(0, 33), Fill(1, 33));
        Is(StatusCodeType.Generic, GenericStatus.InvalidField, c);
        Assert.False(w.IsSuccess);
    }

    [Fact]
    public unsafe void FusedCommandsMustComeAsAPair()
    {
        // A second without a first.
        SubmissionQueueEntry second = IoQueue.ReadWriteSqe(IoOpcode.Write, Ns, 0, 1);
        second.Flags |= CommandFlags.FuseSecond;
        Is(StatusCodeType.Generic, GenericStatus.AbortedMissingFused, Q.Execute(second, Fill(0x05), DataDirection.HostToController).StatusField);
        // FUSE 11b, a fused Read, a fused command on the admin queue.
        SubmissionQueueEntry bad = IoQueue.ReadWriteSqe(IoOpcode.Compare, Ns, 0, 1);
        bad.Flags |= CommandFlags.FuseMask;
        Is(StatusCodeType.Generic, GenericStatus.InvalidField, Q.Execute(bad, Fill(0), DataDirection.HostToController).StatusField);
        SubmissionQueueEntry read = IoQueue.ReadWriteSqe(IoOpcode.Read, Ns, 0, 1);
        read.Flags |= CommandFlags.FuseFirst;
        Is(StatusCodeType.Generic, GenericStatus.InvalidField, Q.Execute(read, new byte[512], DataDirection.ControllerToHost).StatusField);
        SubmissionQueueEntry admin = default;
        admin.Opcode = AdminOpcode.KeepAlive;
        admin.Flags = CommandFlags.FuseFirst;
        Is(StatusCodeType.Generic, GenericStatus.InvalidField, _host.AdminCommand(admin, default, DataDirection.None).StatusField);

        // A first followed by something else: the first is aborted, the other command runs.
        var first = new HostWrites.Pending();
        SubmissionQueueEntry cmp = IoQueue.ReadWriteSqe(IoOpcode.Compare, Ns, 0, 1);
        cmp.Flags |= CommandFlags.FuseFirst;
        byte[] cmpData = Fill(0);
        fixed (byte* p = cmpData)
        {
            Assert.True(Q.Transport.TrySubmit(cmp, p, 512, DataDirection.HostToController, first, 0));
            Assert.True(Q.Write(Ns, 1, 1, Fill(0x07)).IsSuccess);
            HostWrites.PollUntil(Q, () => first.Done, TimeSpan.FromSeconds(5));
        }
        Assert.True(first.Done);
        Is(StatusCodeType.Generic, GenericStatus.AbortedMissingFused, first.Cqe.StatusField);

        // A pair on different blocks: the Write is refused, the Compare aborted.
        var c = new HostWrites.Pending();
        var w = new HostWrites.Pending();
        SubmissionQueueEntry w2 = IoQueue.ReadWriteSqe(IoOpcode.Write, Ns, 1, 1);
        w2.Flags |= CommandFlags.FuseSecond;
        byte[] wData = Fill(0x09);
        fixed (byte* pc = cmpData)
        fixed (byte* pw = wData)
        {
            Assert.True(Q.Transport.TrySubmit(cmp, pc, 512, DataDirection.HostToController, c, 0));
            Assert.True(Q.Transport.TrySubmit(w2, pw, 512, DataDirection.HostToController, w, 0));
            HostWrites.PollUntil(Q, () => c.Done && w.Done, TimeSpan.FromSeconds(5));
        }
        Is(StatusCodeType.Generic, GenericStatus.AbortedFailedFused, c.Cqe.StatusField);
        Is(StatusCodeType.Generic, GenericStatus.InvalidField, w.Cqe.StatusField);
        var back = new byte[512];
        Assert.True(Q.Read(Ns, 1, 1, back).IsSuccess);
        Assert.All(back, b => Assert.Equal(0x07, b));
    }

    [Theory]
    [InlineData(Ns)]
    [InlineData(FileNs)]
    public void CopyGathersTheSourceRangesAtTheDestination(uint ns)
    {
        Assert.True(Q.Write(ns, 0, 2, Fill(0xA1, 2)).IsSuccess);
        Assert.True(Q.Write(ns, 10, 1, Fill(0xB2)).IsSuccess);
        Assert.True(Q.Write(ns, 20, 3, Fill(0xC3, 3)).IsSuccess);
        Assert.True(Q.Copy(ns, 100, [(20UL, 3u), (0UL, 2u), (10UL, 1u)]).IsSuccess);
        var back = new byte[6 * 512];
        Assert.True(Q.Read(ns, 100, 6, back).IsSuccess);
        Assert.Equal([.. Fill(0xC3, 3), .. Fill(0xA1, 2), .. Fill(0xB2)], back);

        byte[] idNs = _host.Identify(Cns.Namespace, ns);
        ushort mssrl = BitConverter.ToUInt16(idNs, 74);
        uint mcl = BitConverter.ToUInt32(idNs, 76);
        Assert.Equal((2048, 2048u, (byte)15), (mssrl, mcl, idNs[80])); // 1 MiB of 512-byte blocks, 16 ranges
        Assert.Equal(IdentifyControllerBits.OcfsFormat0, BitConverter.ToUInt16(_host.IdentifyControllerData, 534));
        Is(StatusCodeType.CommandSpecific, CommandSpecificStatus.CommandSizeLimitExceeded, Q.Copy(ns, 5000, [(0UL, 2049u)]));
        Is(StatusCodeType.CommandSpecific, CommandSpecificStatus.CommandSizeLimitExceeded, Q.Copy(ns, 5000, [(0UL, 1500u), (2000UL, 1000u)]));
        Is(StatusCodeType.CommandSpecific, CommandSpecificStatus.CommandSizeLimitExceeded,
            Q.Copy(ns, 5000, Enumerable.Range(0, 17).Select(i => ((ulong)i, 1u)).ToArray()));
        ulong blocks = ns == Ns ? 131072UL : 8192UL;
        Is(StatusCodeType.Generic, GenericStatus.LbaOutOfRange, Q.Copy(ns, blocks - 1, [(0UL, 2u)]));
        Is(StatusCodeType.Generic, GenericStatus.LbaOutOfRange, Q.Copy(ns, 0, [(blocks - 1, 2u)]));
        // Nothing of a refused copy was written.
        Assert.True(Q.Read(ns, 5000, 1, back.AsSpan(0, 512)).IsSuccess);
        Assert.All(back[..512], b => Assert.Equal(0, b));
    }

    /// <summary>
    /// Hosts on both reactors increment one counter with Compare and Write (read, then swap in the next value): lost
    /// updates would show as a final count below the number of successful swaps. Meanwhile a writer hammers the
    /// neighbouring blocks, which must never be touched by the swaps.
    /// </summary>
    [Theory]
    [InlineData(Ns)]
    [InlineData(FileNs)]
    public void CompareAndWriteIsAtomicAgainstConcurrentWriters(uint ns)
    {
        const int Hosts = 4, Increments = 40;
        const ulong CounterLba = 100;
        Assert.True(Q.Write(ns, CounterLba, 1, Counter(0)).IsSuccess);
        var hosts = Enumerable.Range(0, Hosts).Select(_ => _node.Connect()).ToList();
        using NvmeHost other = _node.Connect();
        var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
        int swaps = 0, conflicts = 0;
        _stop = false;
        var neighbour = new Thread(() =>
        {
            byte tag = 0;
            for (int i = 0; i < 100_000 && !_stop; i++)
            {
                NvmeStatus st = other.IoQueues[0].Write(ns, CounterLba + 1, 1, Fill(tag++));
                if (!st.IsSuccess) errors.Enqueue($"neighbour write: {st}");
            }
        });
        neighbour.Start();
        var workers = hosts.Select(h => new Thread(() =>
        {
            IoQueue q = h.IoQueues[0];
            var cur = new byte[512];
            for (int done = 0, tries = 0; done < Increments && tries < 10_000; tries++)
            {
                if (!q.Read(ns, CounterLba, 1, cur).IsSuccess) errors.Enqueue("read failed");
                uint v = BitConverter.ToUInt32(cur, 0);
                var (c, w) = q.CompareAndWrite(ns, CounterLba, 1, cur, Counter(v + 1));
                if (c.IsSuccess)
                {
                    if (!w.IsSuccess) errors.Enqueue($"write after a match: {w}");
                    Interlocked.Increment(ref swaps);
                    done++;
                }
                else if ((byte)c.Code == MediaStatus.CompareFailure)
                {
                    Interlocked.Increment(ref conflicts);
                }
                else
                {
                    errors.Enqueue($"compare: {c}");
                }
            }
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => Assert.True(t.Join(TimeSpan.FromSeconds(120))));
        _stop = true;
        Assert.True(neighbour.Join(TimeSpan.FromSeconds(30)));
        hosts.ForEach(h => h.Dispose());

        Assert.Empty(errors);
        Assert.Equal(Hosts * Increments, swaps);
        var back = new byte[512];
        Assert.True(Q.Read(ns, CounterLba, 1, back).IsSuccess);
        Assert.Equal(Counter((uint)swaps), back);
        Assert.True(conflicts > 0, "the hosts never raced: the test proved nothing");
    }

    private volatile bool _stop;

    private static byte[] Counter(uint v)
    {
        var b = new byte[512];
        for (int i = 0; i < 512; i += 4) BitConverter.TryWriteBytes(b.AsSpan(i), v);
        return b;
    }
}
