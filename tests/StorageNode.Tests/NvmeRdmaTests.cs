using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Configuration;
using StorageNode.Config;
using StorageNode.Nvme.Rdma;
using StorageNode.Nvme.Spec;
using StorageNode.Rdma;

namespace StorageNode.Tests;

/// <summary>
/// The NVMe/RDMA transport's host-independent parts: connection manager private data, SGL1 validation, and
/// configuration (this host has no RDMA device; the transport itself is tested in the rig, RigTests).
/// </summary>
public class NvmeRdmaTests
{
    private static RdmaCmDecision Decide(byte[] pd, int readDepth = 16) => RdmaCm.Decide(pd, maxIoQueues: 16, adminQueueDepth: 32, maxQueueDepth: 128, readDepth);

    [Fact]
    public void RequestPrivateDataLayoutIsTheBindings()
    {
        byte[] r = RdmaCm.BuildRequest(qid: 3, hrqSize: 128, hsqSize: 127, cntlid: 0x1234);
        Assert.Equal(32, r.Length);
        Assert.Equal(new byte[] { 0, 0, 3, 0, 128, 0, 127, 0, 0x34, 0x12 }, r[..10]);
        Assert.All(r[10..], b => Assert.Equal(0, b));
        Assert.Equal(RdmaCmStatus.Ok, RdmaCm.TryParseRequest(r, out RdmaCmRequest p));
        Assert.Equal(new RdmaCmRequest(0, 3, 128, 127, 0x1234), p);

        byte[] a = RdmaCm.BuildAccept(crqSize: 32);
        Assert.Equal(32, a.Length);
        Assert.Equal(new byte[] { 0, 0, 32, 0 }, a[..4]);
        Assert.Equal((ushort)32, RdmaCm.TryParseAccept(a));

        byte[] j = RdmaCm.BuildReject(RdmaCmStatus.InvalidHsqSize);
        Assert.Equal(new byte[] { 0, 0, 4, 0 }, j);
        Assert.Equal(RdmaCmStatus.InvalidHsqSize, RdmaCm.TryParseReject(j));
        Assert.Null(RdmaCm.TryParseReject([0, 0]));
        Assert.Null(RdmaCm.TryParseAccept([1, 0, 32, 0]));
    }

    [Fact]
    public void LinuxHostRequestsAreAccepted()
    {
        // nvme-rdma: the admin queue asks for NVME_AQ_DEPTH (HRQSIZE 32, HSQSIZE 31); I/O queues for queue_size.
        RdmaCmDecision admin = Decide(RdmaCm.BuildRequest(0, 32, 31));
        Assert.True(admin.Accepted, admin.Reason);
        Assert.Equal(32, admin.RecvDepth);
        Assert.True(admin.SendDepth >= 2 * admin.RecvDepth);
        RdmaCmDecision io = Decide(RdmaCm.BuildRequest(1, 128, 127));
        Assert.True(io.Accepted, io.Reason);
        Assert.Equal(128, io.RecvDepth);
        // rdma_cm pads private data (56 bytes on RoCE): the padding is fine.
        byte[] padded = new byte[56];
        RdmaCm.BuildRequest(2, 64, 63).CopyTo(padded, 0);
        Assert.Equal(64, Decide(padded).RecvDepth);
    }

    [Theory]
    [InlineData(16, 0, 1, 32, 31, 16, RdmaCmStatus.InvalidLength)]
    [InlineData(32, 1, 1, 32, 31, 16, RdmaCmStatus.InvalidRecordFormat)]
    [InlineData(32, 0, 17, 32, 31, 16, RdmaCmStatus.InvalidQid)]
    [InlineData(32, 0, 0, 33, 32, 16, RdmaCmStatus.InvalidHsqSize)]    // admin queue beyond AdminQueueDepth
    [InlineData(32, 0, 1, 129, 128, 16, RdmaCmStatus.InvalidHsqSize)]  // I/O queue beyond MaxQueueDepth
    [InlineData(32, 0, 1, 1, 0, 16, RdmaCmStatus.InvalidHsqSize)]      // a one-entry queue
    [InlineData(32, 0, 1, 0, 31, 16, RdmaCmStatus.InvalidHrqSize)]
    [InlineData(32, 0, 1, 32, 31, 0, RdmaCmStatus.InvalidIrd)]         // the host serves no RDMA READ
    public void BadRequestsAreRejectedWithTheirStatus(int length, ushort recfmt, ushort qid, ushort hrq, ushort hsq, int readDepth, RdmaCmStatus expected)
    {
        byte[] full = RdmaCm.BuildRequest(qid, hrq, hsq);
        full[0] = (byte)recfmt;
        RdmaCmDecision d = Decide(full[..length], readDepth);
        Assert.False(d.Accepted);
        Assert.Equal(expected, d.Status);
        Assert.NotEmpty(d.Reason);
        Assert.NotEqual($"status {(ushort)expected}", RdmaCm.Describe(expected));
    }

    [Fact]
    public void KeyedSglDescriptorsDecode()
    {
        SglDescriptor k = RdmaSgl.Keyed(0x1122334455667788, 0x0ABCDE, 0xA1B2C3D4, invalidate: false);
        byte[] raw = MemoryMarshal.AsBytes(new ReadOnlySpan<SglDescriptor>(ref k)).ToArray();
        // Bytes 0-7 address, 8-10 length, 11-14 key, 15 type 4 / subtype 0 (little endian throughout).
        Assert.Equal(new byte[] { 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xDE, 0xBC, 0x0A, 0xD4, 0xC3, 0xB2, 0xA1, 0x40 }, raw);
        Assert.True(RdmaSgl.Parse(k, 0, out RdmaDataDescriptor d).IsSuccess);
        Assert.Equal(new RdmaDataDescriptor(RdmaDataKind.Keyed, 0x0ABCDE, 0x1122334455667788, 0xA1B2C3D4, false, 0), d);

        SglDescriptor inv = RdmaSgl.Keyed(0x1000, 4096, 7, invalidate: true);
        Assert.Equal(0x4F, inv.Identifier);
        Assert.True(RdmaSgl.Parse(inv, 0, out d).IsSuccess);
        Assert.True(d.Invalidate);
        Assert.Equal(7u, d.Key);

        // Linux sends commands without data with a zero-length keyed descriptor.
        Assert.True(RdmaSgl.Parse(RdmaSgl.Keyed(0, 0, 0, false), 0, out d).IsSuccess);
        Assert.Equal(RdmaDataKind.None, d.Kind);
        Assert.Throws<ArgumentOutOfRangeException>(() => RdmaSgl.Keyed(0, 1 << 24, 0, false));
    }

    [Fact]
    public void InCapsuleDataMustLieWithinWhatArrived()
    {
        Assert.True(RdmaSgl.Parse(SglDescriptor.InCapsule(4096), 4096, out RdmaDataDescriptor d).IsSuccess);
        Assert.Equal(new RdmaDataDescriptor(RdmaDataKind.InCapsule, 4096, 0, 0, false, 0), d);
        var offset = new SglDescriptor { Address = 512, Length = 1024, Identifier = SglDescriptor.InCapsuleDataBlock };
        Assert.True(RdmaSgl.Parse(offset, 2048, out d).IsSuccess);
        Assert.Equal(512u, d.Offset);
        Assert.Equal(GenericStatus.DataSglLengthInvalid, Code(RdmaSgl.Parse(SglDescriptor.InCapsule(4097), 4096, out _)));
        Assert.Equal(GenericStatus.DataSglLengthInvalid, Code(RdmaSgl.Parse(offset, 1500, out _)));
        var beyond = new SglDescriptor { Address = 9000, Length = 0, Identifier = SglDescriptor.InCapsuleDataBlock };
        Assert.Equal(GenericStatus.InvalidSglOffset, Code(RdmaSgl.Parse(beyond, 4096, out _)));
        Assert.True(RdmaSgl.Parse(SglDescriptor.InCapsule(0), 0, out d).IsSuccess);
        Assert.Equal(RdmaDataKind.None, d.Kind);
    }

    [Theory]
    [InlineData(SglDescriptor.TransportDataBlock)]            // NVMe/TCP's descriptor
    [InlineData((SglType.DataBlock << 4) | SglSubtype.Address)]
    [InlineData((SglType.KeyedDataBlock << 4) | SglSubtype.Offset)]
    [InlineData(SglType.LastSegment << 4)]
    [InlineData(SglType.BitBucket << 4)]
    public void OtherDescriptorsAreInvalidSglTypes(byte identifier)
    {
        var sgl = new SglDescriptor { Address = 0, Length = 4096, Identifier = identifier };
        NvmeStatus st = RdmaSgl.Parse(sgl, 4096, out _);
        Assert.Equal(GenericStatus.SglDescriptorTypeInvalid, Code(st));
        Assert.True(st.DoNotRetry);
    }

    [Fact]
    public unsafe void CmEventLayoutMatchesTheShim()
    {
        // native/shim/sn_verbs.c asserts the same offsets for struct sn_cm_event.
        Assert.Equal(104, sizeof(StorageNode.Interop.SnCmEvent));
        Assert.Equal(24, (int)Marshal.OffsetOf<StorageNode.Interop.SnCmEvent>(nameof(StorageNode.Interop.SnCmEvent.Type)));
        Assert.Equal(32, (int)Marshal.OffsetOf<StorageNode.Interop.SnCmEvent>(nameof(StorageNode.Interop.SnCmEvent.PrivateDataLength)));
        Assert.Equal(33, (int)Marshal.OffsetOf<StorageNode.Interop.SnCmEvent>(nameof(StorageNode.Interop.SnCmEvent.ResponderResources)));
        Assert.Equal(34, (int)Marshal.OffsetOf<StorageNode.Interop.SnCmEvent>(nameof(StorageNode.Interop.SnCmEvent.InitiatorDepth)));
        Assert.Equal(40, (int)Marshal.OffsetOf<StorageNode.Interop.SnCmEvent>(nameof(StorageNode.Interop.SnCmEvent.PrivateData)));
    }

    [Fact]
    public unsafe void SendWorkRequestLayoutMatchesTheShim()
    {
        // native/shim/sn_verbs.c asserts the same for struct sn_send_wr (sn_post_send_batch).
        Assert.Equal(48, sizeof(StorageNode.Interop.SnSendWr));
        Assert.Equal(16, (int)Marshal.OffsetOf<StorageNode.Interop.SnSendWr>(nameof(StorageNode.Interop.SnSendWr.RemoteAddr)));
        Assert.Equal(24, (int)Marshal.OffsetOf<StorageNode.Interop.SnSendWr>(nameof(StorageNode.Interop.SnSendWr.Length)));
        Assert.Equal(36, (int)Marshal.OffsetOf<StorageNode.Interop.SnSendWr>(nameof(StorageNode.Interop.SnSendWr.ImmOrInvalidate)));
        Assert.Equal(40, (int)Marshal.OffsetOf<StorageNode.Interop.SnSendWr>(nameof(StorageNode.Interop.SnSendWr.Opcode)));
    }

    private static byte Code(NvmeStatus s) => s.Code;

    private static Dictionary<string, string?> Config(string transport) => new()
    {
        ["Node:Name"] = "A",
        ["Listeners:0:Transport"] = transport,
        ["Listeners:0:Address"] = "127.0.0.1",
        ["Listeners:0:Port"] = "4420",
        ["Bdevs:0:Name"] = "Malloc0",
        ["Bdevs:0:Type"] = "malloc",
        ["Bdevs:0:SizeMiB"] = "8",
        ["Subsystems:0:Nqn"] = "nqn.2026-11.io.storagenode:cfg",
        ["Subsystems:0:Namespaces:0:Bdev"] = "Malloc0",
    };

    private static NodeConfig Load(Dictionary<string, string?> d) => NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(d).Build());

    [Fact]
    public void RdmaListenersAreConfigurable()
    {
        ListenerConfig l = Assert.Single(Load(Config("RDMA")).Listeners);
        Assert.Equal("rdma", l.Transport);
        // rdma_cm and TCP have separate port spaces: one address and port may carry both.
        var both = Config("rdma");
        both["Listeners:1:Transport"] = "tcp";
        both["Listeners:1:Address"] = "127.0.0.1";
        both["Listeners:1:Port"] = "4420";
        Assert.Equal(2, Load(both).Listeners.Count);
        var twice = Config("rdma");
        twice["Listeners:1:Transport"] = "rdma";
        twice["Listeners:1:Address"] = "127.0.0.1";
        twice["Listeners:1:Port"] = "4420";
        Assert.Equal("Listeners:1:Port", Assert.Throws<ConfigException>(() => Load(twice)).Key);
        ConfigException e = Assert.Throws<ConfigException>(() => Load(Config("iwarp")));
        Assert.Equal("Listeners:0:Transport", e.Key);
        Assert.Contains("supported: tcp, rdma", e.Message);
    }

    [Fact]
    public void NodeWithAnRdmaListenerSaysWhyRdmaIsUnavailable()
    {
        if (RdmaDevices.UnavailableReason() == null) return; // a machine with RDMA: nothing to refuse
        var d = Config("rdma");
        d["Node:Pools:SmallBufferCount"] = "16";
        d["Node:Pools:MediumBufferCount"] = "1";
        d["Node:Pools:LargeBufferCount"] = "1";
        using var loggers = Microsoft.Extensions.Logging.LoggerFactory.Create(_ => { });
        using var node = new Node(Load(d), loggers);
        ConfigException e = Assert.Throws<ConfigException>(node.Start);
        Assert.Equal("Listeners:0:Transport", e.Key);
        Assert.Contains("RDMA is unavailable", e.Message);
        Assert.Contains("no RDMA device", e.Message);
    }

    [Fact]
    public void ExecutableExitsWith2WhenAnRdmaListenerCannotBeHad()
    {
        if (RdmaDevices.UnavailableReason() == null) return;
        (int exitCode, string stdout, string err) = NodeExecutable.RunWithConfig("""
            { "Node": { "Name": "A" },
              "Listeners": [ { "Transport": "rdma", "Address": "127.0.0.1", "Port": 4420 } ],
              "Bdevs": [ { "Name": "Malloc0", "Type": "malloc", "SizeMiB": 8 } ],
              "Subsystems": [ { "Nqn": "nqn.2026-11.io.storagenode:cfg", "Namespaces": [ { "Bdev": "Malloc0" } ] } ] }
            """);
        Assert.Equal(2, exitCode);
        Assert.StartsWith("storagenode: invalid configuration: Listeners:0:Transport: rdma, but RDMA is unavailable on this machine: no RDMA device", err.Trim());
        Assert.Equal("", stdout.Trim());
    }
}
