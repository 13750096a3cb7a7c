using System.Text;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Target;

namespace StorageNode.Tests;

public class AdminTests : IDisposable
{
    private readonly TestNode _node = new();
    private readonly NvmeHost _host;

    public AdminTests() => _host = _node.Connect();

    public void Dispose()
    {
        _host.Dispose();
        _node.Dispose();
    }

    [Fact]
    public void IdentifyControllerReportsTheConfiguration()
    {
        byte[] id = _host.IdentifyControllerData;
        Assert.Equal("SNTEST0001", _host.SerialNumber);
        Assert.Equal("StorageNode test", _host.ModelNumber);
        Assert.Equal(TestNode.Nqn, SpecText.ReadNulTerminated(id.AsSpan(768, 256)));
        Assert.Equal(_host.Cntlid, BitConverter.ToUInt16(id, 78));
        Assert.Equal(IdentifyControllerBits.TypeIo, id[111]);
        // Multi-controller and ANA reporting so Linux native multipath accepts two paths.
        Assert.Equal(IdentifyControllerBits.CmicMultiController | IdentifyControllerBits.CmicAnaReporting,
            id[76] & (IdentifyControllerBits.CmicMultiController | IdentifyControllerBits.CmicAnaReporting));
        Assert.Equal(8, id[77]); // MDTS: 1 MiB with 4 KiB pages
        Assert.True(BitConverter.ToUInt16(id, 320) > 0, "KAS must be non-zero");
        Assert.True(BitConverter.ToUInt32(id, 1792) >= 4, "IOCCSZ");
        Assert.True(BitConverter.ToUInt32(id, 1796) >= 1, "IORCSZ");
        uint nn = BitConverter.ToUInt32(id, 516);
        uint mnan = BitConverter.ToUInt32(id, 540);
        Assert.InRange(mnan, 1u, nn);
        Assert.True(BitConverter.ToUInt32(id, 344) >= 2, "ANAGRPMAX");
        Assert.Equal(0x66, id[512]);
        Assert.Equal(0x44, id[513]);
        ushort oncs = BitConverter.ToUInt16(id, 520);
        Assert.NotEqual(0, oncs & IdentifyControllerBits.OncsDatasetManagement);
        Assert.NotEqual(0, oncs & IdentifyControllerBits.OncsWriteZeroes);
        Assert.NotEqual(0, oncs & IdentifyControllerBits.OncsSaveAndSelect); // Get Features answers every Select
        Assert.Equal(NvmeVersion.V1_4, BitConverter.ToUInt32(id, 80));
    }

    [Fact]
    public void IdentifyNamespaceAndDescriptors()
    {
        Assert.Equal([1u, 2u], _host.ActiveNamespaces());
        NamespaceInfo ns = _host.IdentifyNamespace(1);
        Assert.Equal(64UL * 1024 * 1024 / 512, ns.BlockCount);
        Assert.Equal(512u, ns.BlockSize);
        Assert.Equal(IdentifyNamespaceBits.NmicShared, ns.Nmic);
        Assert.Equal(1u, ns.AnaGroupId);
        Namespace target = _node.Node.Target.FindSubsystem(TestNode.Nqn)!.GetNamespace(1)!;
        Assert.Equal(target.Nguid, ns.Nguid);

        byte[] desc = _host.Identify(Cns.NamespaceDescriptorList, 1);
        var found = new Dictionary<byte, byte[]>();
        for (int off = 0; off < 4096 && desc[off] != 0;)
        {
            byte type = desc[off], len = desc[off + 1];
            found[type] = desc.AsSpan(off + 4, len).ToArray();
            off += 4 + len;
        }
        Assert.Equal(target.Nguid, found[NamespaceIdType.Nguid]);
        Assert.Equal(target.Uuid, new Guid(found[NamespaceIdType.Uuid], bigEndian: true));
        Assert.Equal([0], found[NamespaceIdType.Csi]);

        // Inactive (but valid) NSID: zero-filled; beyond NN: Invalid Namespace.
        Assert.All(_host.Identify(Cns.Namespace, 5), b => Assert.Equal(0, b));
        var ex = Assert.Throws<NvmeCommandException>(() => _host.Identify(Cns.Namespace, 100000));
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat, ex.Status.Code);
        ex = Assert.Throws<NvmeCommandException>(() => _host.Identify(Cns.NamespaceDescriptorList, 5));
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat, ex.Status.Code);
        ex = Assert.Throws<NvmeCommandException>(() => _host.Identify(0x1F, 0));
        Assert.Equal(GenericStatus.InvalidField, ex.Status.Code);
    }

    [Fact]
    public void AnaLogPage()
    {
        byte[] log = _host.GetLogPage(LogPageId.Ana, 4096, nsid: 0);
        Assert.Equal(2, BitConverter.ToUInt16(log, 8));
        int off = 16;
        for (uint g = 1; g <= 2; g++)
        {
            Assert.Equal(g, BitConverter.ToUInt32(log, off));
            Assert.Equal(1u, BitConverter.ToUInt32(log, off + 4));
            Assert.Equal((byte)AnaState.Optimized, log[off + 16]);
            Assert.Equal(g, BitConverter.ToUInt32(log, off + 32));
            off += 36;
        }
        // RGO: groups only, no NSID lists.
        byte[] rgo = _host.GetLogPage(LogPageId.Ana, 16 + 64, lsp: 1, nsid: 0);
        Assert.Equal(0u, BitConverter.ToUInt32(rgo, 16 + 4));
        Assert.Equal(2u, BitConverter.ToUInt32(rgo, 48));
    }

    [Fact]
    public void SmartLogCountsHostCommands()
    {
        IoQueue q = _host.IoQueues[0];
        var buf = new byte[4096];
        for (int i = 0; i < 5; i++) Assert.True(q.Write(1, 0, 8, buf).IsSuccess);
        for (int i = 0; i < 3; i++) Assert.True(q.Read(1, 0, 8, buf).IsSuccess);
        byte[] smart = _host.GetLogPage(LogPageId.Smart, 512);
        Assert.Equal(3UL, BitConverter.ToUInt64(smart, 64));
        Assert.Equal(5UL, BitConverter.ToUInt64(smart, 80));
        Assert.Equal(1UL, BitConverter.ToUInt64(smart, 48)); // 20 KiB written = 40 units of 512 B, rounds up to 1 thousand
        Assert.Equal(100, smart[3]);
    }

    [Fact]
    public void FirmwareAndEffectsLogs()
    {
        byte[] fw = _host.GetLogPage(LogPageId.FirmwareSlot, 512);
        Assert.Equal(1, fw[0]);
        Assert.Equal(_host.FirmwareRevision, Encoding.ASCII.GetString(fw, 8, 8).Trim());
        byte[] effects = _host.GetLogPage(LogPageId.CommandEffects, 4096);
        Assert.Equal(1u, BitConverter.ToUInt32(effects, AdminOpcode.Identify * 4) & 1);
        Assert.Equal(3u, BitConverter.ToUInt32(effects, 1024 + IoOpcode.Write * 4) & 3);
        Assert.Equal(0u, BitConverter.ToUInt32(effects, AdminOpcode.FirmwareDownload * 4));
    }

    [Fact]
    public void SupportedLogPagesListsExactlyWhatAnswers()
    {
        byte[] supported = _host.GetLogPage(LogPageId.SupportedLogPages, 1024, nsid: 0);
        var listed = new List<int>();
        for (int lid = 0; lid < 256; lid++)
        {
            bool lsupp = (BitConverter.ToUInt32(supported, lid * 4) & 1) != 0;
            if (lsupp) listed.Add(lid);
            // Every listed page answers; every other one is an Invalid Log Page.
            try
            {
                _host.GetLogPage((byte)lid, 512, nsid: 0);
                Assert.True(lsupp, $"log page {lid:X2} answers but is not listed");
            }
            catch (NvmeCommandException e)
            {
                Assert.False(lsupp, $"log page {lid:X2} is listed but fails: {e.Message}");
                Assert.Equal(CommandSpecificStatus.InvalidLogPage, e.Status.Code);
            }
        }
        Assert.Equal([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x0C, 0x80], listed);
    }

    [Fact]
    public void LogPageOffsetsAndErrors()
    {
        byte[] whole = _host.GetLogPage(LogPageId.Ana, 88, nsid: 0);
        byte[] tail = _host.GetLogPage(LogPageId.Ana, 40, offset: 48, nsid: 0);
        Assert.Equal(whole.AsSpan(48, 40).ToArray(), tail);
        var ex = Assert.Throws<NvmeCommandException>(() => _host.GetLogPage(0xC7, 512));
        Assert.Equal(StatusCodeType.CommandSpecific, ex.Status.Type);
        Assert.Equal(CommandSpecificStatus.InvalidLogPage, ex.Status.Code);
        ex = Assert.Throws<NvmeCommandException>(() => _host.GetLogPage(LogPageId.Smart, 512, offset: 2));
        Assert.Equal(GenericStatus.InvalidField, ex.Status.Code);
    }

    [Fact]
    public void Features()
    {
        uint nq = _host.GetFeature(FeatureId.NumberOfQueues);
        Assert.Equal(0u, nq & 0xFFFF); // the host asked for one I/O queue
        Assert.Equal(30_000u, _host.GetFeature(FeatureId.KeepAliveTimer));
        _host.SetFeature(FeatureId.KeepAliveTimer, 20_000);
        Assert.Equal(20_000u, _host.GetFeature(FeatureId.KeepAliveTimer));
        Assert.Equal(1u, _host.GetFeature(FeatureId.VolatileWriteCache));
        _host.SetFeature(FeatureId.AsyncEventConfiguration, AsyncEvent.ConfigAnaChange | AsyncEvent.ConfigNamespaceAttribute);
        Assert.Equal(AsyncEvent.ConfigAnaChange | AsyncEvent.ConfigNamespaceAttribute, _host.GetFeature(FeatureId.AsyncEventConfiguration));
        var ex = Assert.Throws<NvmeCommandException>(() => _host.GetFeature(0x55));
        Assert.Equal(GenericStatus.InvalidField, ex.Status.Code);
        // Saving is not supported.
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.SetFeatures;
        sqe.Cdw10 = FeatureId.KeepAliveTimer | (1u << 31);
        sqe.Cdw11 = 1000;
        CompletionQueueEntry cqe = _host.AdminCommand(sqe, default, DataDirection.None);
        Assert.Equal(CommandSpecificStatus.FeatureIdNotSaveable, cqe.StatusField.Code);
        // Number of queues cannot change once I/O queues exist.
        ex = Assert.Throws<NvmeCommandException>(() => _host.SetFeature(FeatureId.NumberOfQueues, 3 | (3 << 16)));
        Assert.Equal(GenericStatus.CommandSequenceError, ex.Status.Code);
    }

    [Fact]
    public void AnaChangeRaisesAnEventAndPathStatus()
    {
        _host.EnableAsyncEvents(AsyncEvent.ConfigAnaChange);
        Subsystem s = _node.Node.Target.FindSubsystem(TestNode.Nqn)!;
        s.SetAnaState(1, AnaState.Inaccessible);
        uint dw0 = 0;
        bool got = false;
        for (int i = 0; i < 200 && !got; i++)
        {
            got = _host.TryGetEvent(out dw0);
            if (!got) Thread.Sleep(10);
        }
        Assert.True(got, "no asynchronous event arrived");
        Assert.Equal(AsyncEvent.Dw0(AsyncEvent.TypeNotice, AsyncEvent.NoticeAnaChange, LogPageId.Ana), dw0);
        byte[] log = _host.GetLogPage(LogPageId.Ana, 4096, nsid: 0);
        Assert.Equal((byte)AnaState.Inaccessible, log[16 + 16]);

        var buf = new byte[512];
        NvmeStatus st = _host.IoQueues[0].Read(1, 0, 1, buf);
        Assert.Equal(StatusCodeType.PathRelated, st.Type);
        Assert.Equal(PathStatus.AnaInaccessible, st.Code);
        Assert.False(st.DoNotRetry);
        // The other group is untouched.
        Assert.True(_host.IoQueues[0].Read(2, 0, 1, new byte[4096]).IsSuccess);

        s.SetAnaState(1, AnaState.Optimized);
        Assert.True(_host.IoQueues[0].Read(1, 0, 1, buf).IsSuccess);
    }

    [Fact]
    public void AsyncEventRequestLimit()
    {
        // AERL + 1 outstanding requests are accepted; one more is refused.
        _host.EnableAsyncEvents(AsyncEvent.ConfigAnaChange, count: Controller.MaxOutstandingAers);
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.AsyncEventRequest;
        CompletionQueueEntry cqe = _host.AdminCommand(sqe, default, DataDirection.None);
        Assert.Equal(StatusCodeType.CommandSpecific, cqe.StatusField.Type);
        Assert.Equal(CommandSpecificStatus.AsyncEventRequestLimitExceeded, cqe.StatusField.Code);
    }

    [Fact]
    public void AbortReportsNotAbortedAndUnknownAdminOpcodeIsRefused()
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.Abort;
        sqe.Cdw10 = 1 | (5u << 16);
        CompletionQueueEntry cqe = _host.AdminCommand(sqe, default, DataDirection.None);
        Assert.True(cqe.StatusField.IsSuccess);
        Assert.Equal(1u, cqe.Dw0 & 1);
        sqe = default;
        sqe.Opcode = AdminOpcode.CreateIoSq;
        cqe = _host.AdminCommand(sqe, default, DataDirection.None);
        Assert.Equal(GenericStatus.InvalidOpcode, cqe.StatusField.Code);
        _host.KeepAlive();
    }
}
