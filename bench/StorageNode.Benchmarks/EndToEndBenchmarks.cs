using System.Net;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging.Abstractions;
using StorageNode.Config;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Benchmarks;

/// <summary>
/// QD1 round trip over loopback: the managed initiator against an in-process node (RAM namespace), one
/// 4 KiB read or write per operation. MemoryDiagnoser shows the host side's allocation per I/O.
/// </summary>
[MemoryDiagnoser]
public unsafe class EndToEndBenchmarks : IHostCompletion
{
    private Node? _node;
    private NvmeHost? _host;
    private TcpHostQueue? _q;
    private byte* _buf;
    private bool _done;

    [GlobalSetup]
    public void Setup()
    {
        var settings = new Dictionary<string, string?>
        {
            ["Node:Name"] = "bench",
            ["Node:PollMode"] = "busy",
            ["Listeners:0:Address"] = "127.0.0.1",
            ["Listeners:0:Port"] = "0",
            ["Bdevs:0:Name"] = "Malloc0",
            ["Bdevs:0:Type"] = "malloc",
            ["Bdevs:0:SizeMiB"] = "64",
            ["Subsystems:0:Nqn"] = "nqn.2026-11.io.storagenode:bench",
            ["Subsystems:0:Namespaces:0:Bdev"] = "Malloc0",
        };
        _node = new Node(NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(settings).Build()), NullLoggerFactory.Instance);
        _node.Start();
        _host = NvmeHost.Connect(_node.TcpEndpoints[0], "nqn.2026-11.io.storagenode:bench", new NvmeHostOptions { IoQueueDepth = 4 });
        _q = _host.IoQueues[0].Queue;
        _buf = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4096, 4096);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _host?.Dispose();
        _node?.Dispose();
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_buf);
    }

    public void OnHostComplete(long token, in CompletionQueueEntry cqe) => _done = true;

    private void RoundTrip(byte opcode, DataDirection dir)
    {
        SubmissionQueueEntry sqe = IoQueue.ReadWriteSqe(opcode, 1, 64, 8);
        _done = false;
        _q!.TrySubmit(sqe, _buf, 4096, dir, this, 0);
        while (!_done) _q.Poll();
    }

    [Benchmark]
    public void Read4KiBQd1() => RoundTrip(IoOpcode.Read, DataDirection.ControllerToHost);

    [Benchmark]
    public void Write4KiBQd1() => RoundTrip(IoOpcode.Write, DataDirection.HostToController);
}
