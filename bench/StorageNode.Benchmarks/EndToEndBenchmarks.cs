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

/// <summary>
/// The HA pair in one process (real sockets on loopback, adaptive reactors): QD1 4 KiB reads and writes of the
/// namespace A owns (direct) and of the one B owns, through A's proxy (relayed over the TCP interconnect).
/// The difference is the proxy's added latency; MemoryDiagnoser covers the host side.
/// </summary>
[MemoryDiagnoser]
public unsafe class PairEndToEndBenchmarks : IHostCompletion
{
    /// <summary>With <c>Cluster:Mirror</c>: every write also reaches the partner's replica before it completes.</summary>
    protected virtual bool Mirrored => false;

    private const string Nqn = "nqn.2026-11.io.storagenode:bench-pair";
    private Node? _a, _b;
    private NvmeHost? _host;
    private TcpHostQueue? _q;
    private byte* _buf;
    private bool _done;

    private static int FreePort(System.Net.Sockets.ProtocolType proto)
    {
        if (proto == System.Net.Sockets.ProtocolType.Udp)
        {
            using var u = new System.Net.Sockets.UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
            return ((IPEndPoint)u.Client.LocalEndPoint!).Port;
        }
        var l = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    private Dictionary<string, string?> Settings(string me, string partner, int ic, int partnerIc, int hb, int partnerHb, int owned, int cntlMin)
    {
        int other = 3 - owned;
        return new Dictionary<string, string?>
        {
            ["Cluster:Mirror"] = Mirrored ? "true" : "false",
            ["Node:Name"] = me,
            // Three pollers (A, B, the benchmark) share this machine's cores: adaptive reactors yield while idle.
            ["Node:PollMode"] = "adaptive",
            ["Listeners:0:Address"] = "127.0.0.1",
            ["Listeners:0:Port"] = "0",
            ["Cluster:Name"] = "bench",
            ["Cluster:Partner"] = partner,
            ["Cluster:Interconnect"] = $"127.0.0.1:{ic}",
            ["Cluster:PartnerInterconnect"] = $"127.0.0.1:{partnerIc}",
            ["Cluster:Heartbeat"] = $"127.0.0.1:{hb}",
            ["Cluster:PartnerHeartbeat"] = $"127.0.0.1:{partnerHb}",
            // The nodes' timers allocate in the background, which MemoryDiagnoser counts into every operation (the
            // allocation check subtracts what Background measures): heartbeats ten times rarer than the default keep
            // that small; the I/O path is what is measured.
            ["Cluster:HeartbeatIntervalMs"] = "1000",
            ["Cluster:HeartbeatTimeoutMs"] = "5000",
            ["Bdevs:0:Name"] = "Local",
            ["Bdevs:0:Type"] = "malloc",
            ["Bdevs:0:SizeMiB"] = "64",
            ["Subsystems:0:Nqn"] = Nqn,
            ["Subsystems:0:ControllerIdMin"] = cntlMin.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Subsystems:0:ControllerIdMax"] = (cntlMin + 999).ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Subsystems:0:AnaGroups:0:Id"] = "1",
            ["Subsystems:0:AnaGroups:0:Owner"] = owned == 1 ? me : partner,
            ["Subsystems:0:AnaGroups:1:Id"] = "2",
            ["Subsystems:0:AnaGroups:1:Owner"] = owned == 2 ? me : partner,
            [$"Subsystems:0:Namespaces:{owned - 1}:Nsid"] = $"{owned}",
            [$"Subsystems:0:Namespaces:{owned - 1}:Bdev"] = "Local",
            [$"Subsystems:0:Namespaces:{owned - 1}:AnaGroup"] = $"{owned}",
            [$"Subsystems:0:Namespaces:{other - 1}:Nsid"] = $"{other}",
            [$"Subsystems:0:Namespaces:{other - 1}:AnaGroup"] = $"{other}",
            [$"Subsystems:0:Namespaces:{other - 1}:SizeMiB"] = "64",
        };
    }

    [GlobalSetup]
    public void Setup()
    {
        int icA = FreePort(System.Net.Sockets.ProtocolType.Tcp), icB = FreePort(System.Net.Sockets.ProtocolType.Tcp);
        int hbA = FreePort(System.Net.Sockets.ProtocolType.Udp), hbB = FreePort(System.Net.Sockets.ProtocolType.Udp);
        _a = new Node(NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(Settings("A", "B", icA, icB, hbA, hbB, 1, 1)).Build()), NullLoggerFactory.Instance);
        _b = new Node(NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(Settings("B", "A", icB, icA, hbB, hbA, 2, 2000)).Build()), NullLoggerFactory.Instance);
        _a.Start();
        _b.Start();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        // Healthy, and with the mirror each replica in sync (a RAM namespace is served once its replica took its data).
        while (!(_a.Pair!.Status == StorageNode.Pair.PartnerStatus.Healthy && _b.Pair!.Status == StorageNode.Pair.PartnerStatus.Healthy
                 && _a.Pair.Links.Concat(_b.Pair.Links).SelectMany(l => l.Mirrors).All(m => m.IsInSync)))
        {
            if (sw.Elapsed > TimeSpan.FromSeconds(30)) throw new TimeoutException("the benchmark pair did not become healthy (and its replicas in sync)");
            Thread.Sleep(20);
        }
        _host = NvmeHost.Connect(_a.TcpEndpoints[0], Nqn, new NvmeHostOptions { IoQueueDepth = 4 });
        _q = _host.IoQueues[0].Queue;
        _buf = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4096, 4096);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _host?.Dispose();
        _a?.Dispose();
        _b?.Dispose();
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_buf);
    }

    public void OnHostComplete(long token, in CompletionQueueEntry cqe)
    {
        if (!cqe.StatusField.IsSuccess) throw new InvalidOperationException($"I/O failed: {cqe.StatusField}");
        _done = true;
    }

    private void RoundTrip(uint nsid, byte opcode, DataDirection dir)
    {
        SubmissionQueueEntry sqe = IoQueue.ReadWriteSqe(opcode, nsid, 64, 8);
        _done = false;
        _q!.TrySubmit(sqe, _buf, 4096, dir, this, 0);
        while (!_done) _q.Poll();
    }

    [Benchmark(Baseline = true)]
    public void DirectRead4KiBQd1() => RoundTrip(1, IoOpcode.Read, DataDirection.ControllerToHost);

    /// <summary>
    /// 200 µs of time passing, no I/O: what the two nodes' timers (heartbeats, keep-alives) allocate meanwhile, which
    /// the allocation check subtracts from the I/O benchmarks in proportion to their time (about 15 KB/s, measured).
    /// </summary>
    [Benchmark]
    public void Background()
    {
        long end = System.Diagnostics.Stopwatch.GetTimestamp() + System.Diagnostics.Stopwatch.Frequency / 5000;
        while (System.Diagnostics.Stopwatch.GetTimestamp() < end) Thread.SpinWait(20);
    }

    [Benchmark]
    public void ProxiedRead4KiBQd1() => RoundTrip(2, IoOpcode.Read, DataDirection.ControllerToHost);

    [Benchmark]
    public void DirectWrite4KiBQd1() => RoundTrip(1, IoOpcode.Write, DataDirection.HostToController);

    [Benchmark]
    public void ProxiedWrite4KiBQd1() => RoundTrip(2, IoOpcode.Write, DataDirection.HostToController);
}

/// <summary>
/// <see cref="PairEndToEndBenchmarks"/> with <c>Cluster:Mirror</c> on both nodes: a write completes once the partner's
/// replica has it too (its copy over the interconnect), so DirectWrite4KiBQd1 here against the unmirrored suite's is
/// what mirroring costs (issue 23's target: at most two loopback round trips at QD1).
/// </summary>
public class MirroredPairEndToEndBenchmarks : PairEndToEndBenchmarks
{
    protected override bool Mirrored => true;
}
