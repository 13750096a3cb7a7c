using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using StorageNode.Hosting;
using StorageNode.Pair;
using StorageNode.Config;
using StorageNode.Nvme.Host;

namespace StorageNode.Testing;

/// <summary>
/// Two nodes of an HA pair in one process, on loopback with real sockets. The interconnect runs through
/// <see cref="TcpForwarder"/>s so a test can cut it from outside; ANA group 1 (NSID 1) belongs to A, group 2
/// (NSID 2) to B.
/// </summary>
public sealed class TestPair : IPairRig
{
    public string Kind => "one process";

    public const string Nqn = "nqn.2026-11.io.storagenode:pair-test";
    /// <summary>The second subsystem (with <c>subsystems: 2</c>): the same layout, its own bdev.</summary>
    public const string Nqn2 = "nqn.2026-11.io.storagenode:pair-test-2";

    // The nodes with their management RPC (Control:RpcSocket) and metrics, once started here.
    private NodeHost? _hostA, _hostB;

    public Node A { get; private set; }
    public Node B { get; private set; }
    public TcpForwarder InterconnectAtoB { get; private set; }
    public TcpForwarder InterconnectBtoA { get; private set; }
    public StringWriterLoggerProvider LogsA { get; } = new();
    public StringWriterLoggerProvider LogsB { get; } = new();
    private readonly ILoggerFactory _lfA, _lfB;
    private Dictionary<string, string?> _cfgA, _cfgB;

    /// <param name="beforeStart">Runs on the two nodes once made, before they start (e.g. to pin connections to reactors).</param>
    public TestPair(Dictionary<string, string?>? overridesA = null, Dictionary<string, string?>? overridesB = null, int reactors = 1, bool start = true, int subsystems = 1,
        bool onlyNamespace1 = false, Action<Node, Node>? beforeStart = null)
    {
        _lfA = LoggerFactory.Create(b => b.AddProvider(LogsA));
        _lfB = LoggerFactory.Create(b => b.AddProvider(LogsB));
        for (int attempt = 1; ; attempt++)
        {
            // The free ports are found, then bound later by the nodes: another process (a rig guest's forwarders) may take
            // one in between. Then the pair is made again on new ports (a bounded number of times).
            (int icA, int icB, InterconnectAtoB, InterconnectBtoA) = InterconnectPorts();
            int hbA = FreeUdpPort(), hbB = FreeUdpPort();
            (_cfgA, _cfgB) = PairSettings(icA, icB, InterconnectAtoB.Endpoint.Port, InterconnectBtoA.Endpoint.Port, hbA, hbB, reactors, subsystems);
            if (onlyNamespace1)
            {
                // Namespace 1 (A's) alone: namespace 2 (B's) goes from both nodes.
                foreach (var cfg in new[] { _cfgA, _cfgB })
                    foreach (string k in cfg.Keys.Where(k => k.StartsWith("Subsystems:0:Namespaces:1:", StringComparison.Ordinal)).ToList()) cfg.Remove(k);
            }
            foreach (var kv in overridesA ?? []) _cfgA[kv.Key] = kv.Value;
            foreach (var kv in overridesB ?? []) _cfgB[kv.Key] = kv.Value;
            A = new Node(NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(_cfgA).Build()), _lfA);
            B = new Node(NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(_cfgB).Build()), _lfB);
            beforeStart?.Invoke(A, B);
            if (!start) return;
            try
            {
                _hostA = new NodeHost(A);
                _hostA.Start();
                _hostB = new NodeHost(B);
                _hostB.Start();
                return;
            }
            catch (SocketException e) when (attempt < 5 && e.Message.Contains("Address already in use", StringComparison.Ordinal))
            {
                InterconnectAtoB.Dispose();
                InterconnectBtoA.Dispose();
                _hostA?.Dispose();
                _hostB?.Dispose();
                A.Dispose();
                B.Dispose();
            }
        }
    }

    internal static Dictionary<string, string?> Settings(string me, string partner, int ic, int partnerIc, int hb, int partnerHb, int reactors, uint ownerOf, int cntlMin,
        int subsystems)
    {
        uint other = ownerOf == 1 ? 2u : 1u;
        var d = new Dictionary<string, string?>
        {
            ["Node:Name"] = me,
            ["Node:Reactors"] = reactors.ToString(),
            ["Node:Pools:SmallBufferCount"] = "256",
            ["Node:Pools:MediumBufferCount"] = "32",
            ["Node:Pools:LargeBufferCount"] = "8",
            ["Listeners:0:Address"] = "127.0.0.1",
            ["Listeners:0:Port"] = "0",
            ["Cluster:Name"] = "test",
            ["Cluster:Partner"] = partner,
            ["Cluster:Interconnect"] = $"127.0.0.1:{ic}",
            ["Cluster:PartnerInterconnect"] = $"127.0.0.1:{partnerIc}",
            ["Cluster:Heartbeat"] = $"127.0.0.1:{hb}",
            ["Cluster:PartnerHeartbeat"] = $"127.0.0.1:{partnerHb}",
            ["Cluster:HeartbeatIntervalMs"] = "100",
            ["Cluster:HeartbeatTimeoutMs"] = "2000",
            ["Cluster:RelayTimeoutMs"] = "3000",
            ["Cluster:ReconnectIntervalMs"] = "100",
            ["Bdevs:0:Name"] = "Local",
            ["Bdevs:0:Type"] = "malloc",
            ["Bdevs:0:SizeMiB"] = "32",
            ["Subsystems:0:Nqn"] = Nqn,
            ["Subsystems:0:ModelNumber"] = "StorageNode pair test",
            ["Subsystems:0:ControllerIdMin"] = cntlMin.ToString(),
            ["Subsystems:0:ControllerIdMax"] = (cntlMin + 499).ToString(),
            ["Subsystems:0:AnaGroups:0:Id"] = "1",
            ["Subsystems:0:AnaGroups:0:Owner"] = ownerOf == 1 ? me : partner,
            ["Subsystems:0:AnaGroups:1:Id"] = "2",
            ["Subsystems:0:AnaGroups:1:Owner"] = ownerOf == 2 ? me : partner,
            [$"Subsystems:0:Namespaces:{ownerOf - 1}:Nsid"] = ownerOf.ToString(),
            [$"Subsystems:0:Namespaces:{ownerOf - 1}:Bdev"] = "Local",
            [$"Subsystems:0:Namespaces:{ownerOf - 1}:AnaGroup"] = ownerOf.ToString(),
            [$"Subsystems:0:Namespaces:{other - 1}:Nsid"] = other.ToString(),
            [$"Subsystems:0:Namespaces:{other - 1}:AnaGroup"] = other.ToString(),
            [$"Subsystems:0:Namespaces:{other - 1}:SizeMiB"] = "32",
        };
        if (subsystems > 1)
        {
            // A second subsystem with the same layout on a bdev of its own.
            d["Bdevs:1:Name"] = "Local2";
            d["Bdevs:1:Type"] = "malloc";
            d["Bdevs:1:SizeMiB"] = "32";
            foreach (var kv in d.Where(kv => kv.Key.StartsWith("Subsystems:0:", StringComparison.Ordinal)).ToList())
                d["Subsystems:1:" + kv.Key["Subsystems:0:".Length..]] = kv.Value;
            d["Subsystems:1:Nqn"] = Nqn2;
            d[$"Subsystems:1:Namespaces:{ownerOf - 1}:Bdev"] = "Local2";
            d["Subsystems:1:ControllerIdMin"] = (cntlMin + 500).ToString();
            d["Subsystems:1:ControllerIdMax"] = (cntlMin + 999).ToString();
        }
        return d;
    }

    public IPEndPoint EndpointA => A.TcpEndpoints[0];
    public IPEndPoint EndpointB => B.TcpEndpoints[0];

    /// <summary>Both nodes' settings as the constructor builds them (for <see cref="ProcessPair"/>).</summary>
    internal static (Dictionary<string, string?> A, Dictionary<string, string?> B) PairSettings(int icA, int icB, int icAtoB, int icBtoA, int hbA, int hbB, int reactors, int subsystems)
        => (Settings("A", "B", icA, icAtoB, hbA, hbB, reactors, ownerOf: 1, cntlMin: 1, subsystems),
            Settings("B", "A", icB, icBtoA, hbB, hbA, reactors, ownerOf: 2, cntlMin: 1000, subsystems));

    /// <summary>Waits until both nodes report the partner healthy, hear its heartbeat datagrams, and every reactor has taken its proxy queues (bounded).</summary>
    public void WaitHealthy(TimeSpan? timeout = null)
    {
        var sw = Stopwatch.StartNew();
        TimeSpan limit = timeout ?? TimeSpan.FromSeconds(15);
        // Both channels up: the interconnect (every reactor has taken its proxy queue) and the heartbeat datagrams.
        static bool Ready(Node n) => n.Pair!.Status == PartnerStatus.Healthy && n.Pair.Membership.PartnerHeard
                                     && n.Pair.Links.All(l => l.IsUp && l.QueuesInstalled == n.Reactors.Count);
        while (!(Ready(A) && Ready(B)))
        {
            if (sw.Elapsed > limit)
                throw new TimeoutException($"pair not healthy after {limit.TotalSeconds} s: A {A.Pair!.Status}, B {B.Pair!.Status}\n{Problems()}");
            Thread.Sleep(20);
        }
    }

    public long Relayed(char node) => (node == 'A' ? A : B).Pair!.Links[0].Relayed;

    public void WaitRelaysSettled(TimeSpan? timeout = null)
    {
        static int Out(Node n) => n.Pair!.Links.Sum(l => l.QueuedRelays + l.InFlight);
        WaitUntil(() => InterconnectAtoB.Held == 0 && InterconnectBtoA.Held == 0 && Out(A) == 0 && Out(B) == 0,
            "nothing relayed on its way (both interconnect forwarders empty, nothing queued or unanswered on either node)", timeout);
    }

    public string Log(char node) => string.Join("\n", node == 'A' ? LogsA.Lines : LogsB.Lines);

    /// <summary>
    /// Waits (bounded) until node 'A' or 'B' has logged a line containing <paramref name="text"/>: a state a test waits
    /// for may be visible a moment before the line that tells of it is written.
    /// </summary>
    public void WaitLogged(char node, string text, TimeSpan? timeout = null)
        => WaitUntil(() => (node == 'A' ? LogsA : LogsB).Lines.Any(l => l.Contains(text, StringComparison.Ordinal)), $"node {node} to log '{text}'", timeout);

    /// <summary>Warnings and errors both nodes logged (for failure messages).</summary>
    public string Problems()
    {
        static IEnumerable<string> Bad(IEnumerable<string> lines) => lines.Where(l => !l.StartsWith("Information", StringComparison.Ordinal)).TakeLast(20);
        return $"A: {string.Join("\nA: ", Bad(LogsA.Lines))}\nB: {string.Join("\nB: ", Bad(LogsB.Lines))}";
    }

    public static void WaitUntil(Func<bool> condition, string what, TimeSpan? timeout = null)
    {
        var sw = Stopwatch.StartNew();
        TimeSpan limit = timeout ?? TimeSpan.FromSeconds(15);
        while (!condition())
        {
            if (sw.Elapsed > limit) throw new TimeoutException($"timed out after {limit.TotalSeconds} s waiting for {what}");
            Thread.Sleep(10);
        }
    }

    public NvmeHost Connect(IPEndPoint ep, Guid hostId, NvmeHostOptions? options = null, string nqn = Nqn)
        => NvmeHost.Connect(ep, nqn, (options ?? new NvmeHostOptions()) with { HostId = hostId });

    /// <summary>Stops node B (as if it died) and builds a fresh one with the same configuration (not started).</summary>
    public void DisposeB()
    {
        _hostB?.Dispose();
        B.Dispose();
    }

    /// <summary>Node B stops and starts again with the same configuration (a new incarnation, empty RAM bdevs).</summary>
    /// <summary>Stops B and starts it again with the same settings; <paramref name="whileDown"/> runs in between.</summary>
    public void RestartB(Action? whileDown = null)
    {
        DisposeB();
        whileDown?.Invoke();
        B = new Node(NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(_cfgB).Build()), _lfB);
        _hostB = new NodeHost(B);
        _hostB.Start();
    }

    /// <summary>
    /// Two free TCP ports for the nodes' interconnect listeners and the two forwarders to them (A to B's, B to A's), all
    /// four distinct: a forwarder binds a port of its own choosing, which may be one just found free for a listener.
    /// </summary>
    internal static (int IcA, int IcB, TcpForwarder AtoB, TcpForwarder BtoA) InterconnectPorts()
    {
        for (int attempt = 1; ; attempt++)
        {
            int icA = FreeTcpPort(), icB = FreeTcpPort();
            var atoB = new TcpForwarder(new IPEndPoint(IPAddress.Loopback, icB));
            var btoA = new TcpForwarder(new IPEndPoint(IPAddress.Loopback, icA));
            if (new HashSet<int> { icA, icB, atoB.Endpoint.Port, btoA.Endpoint.Port }.Count == 4 || attempt == 10) return (icA, icB, atoB, btoA);
            atoB.Dispose();
            btoA.Dispose();
        }
    }

    /// <summary>A free TCP port on 127.0.0.1, never one this process was given before (see <see cref="FreePort"/>).</summary>
    public static int FreeTcpPort() => FreePort(SocketType.Stream, ProtocolType.Tcp);

    /// <summary>A free UDP port on 127.0.0.1, never one this process was given before (see <see cref="FreePort"/>).</summary>
    public static int FreeUdpPort() => FreePort(SocketType.Dgram, ProtocolType.Udp);

    // Every port FreePort has handed out in this process (TCP and UDP alike).
    private static readonly HashSet<int> HandedOut = [];

    /// <summary>
    /// A port the kernel says is free now, and that this process has not been given before: the port is released at once
    /// and bound later by whoever asked, and the kernel may hand a released port out again straight away — two calls in a
    /// row (A's and B's heartbeat ports, a witness's and a pair's) then name the same port. UDP's pick is random here
    /// (about one pair in 28,000: seen once in a stress run of the pair tests, which make hundreds); TCP's came back to a
    /// port it had given within 87 draws (<c>TestHarnessTests</c>).
    /// </summary>
    private static int FreePort(SocketType type, ProtocolType protocol)
    {
        lock (HandedOut)
            for (int attempt = 1; attempt <= 1000; attempt++)
            {
                using var s = new Socket(AddressFamily.InterNetwork, type, protocol);
                s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                int port = ((IPEndPoint)s.LocalEndPoint!).Port;
                if (HandedOut.Add(port)) return port;
            }
        throw new InvalidOperationException($"no free {protocol} port on 127.0.0.1 that this process was not given before, in 1000 tries ({HandedOut.Count} handed out)");
    }

    public void Dispose()
    {
        InterconnectAtoB.Dispose();
        InterconnectBtoA.Dispose();
        _hostA?.Dispose();
        _hostB?.Dispose();
        A.Dispose();
        B.Dispose();
        _lfA.Dispose();
        _lfB.Dispose();
    }
}

/// <summary>
/// A TCP forwarder on loopback for fault injection: every accepted connection is piped to the target. Cut()
/// resets every piped connection; Block() makes new connections fail at once. It runs on threads of its own (an
/// accept thread, two per connection) with blocking sockets, never on the thread pool that blocking test code and the
/// nodes' own work also use: pair traffic through it never waits for the pool to grow.
/// </summary>
public sealed class TcpForwarder : IDisposable
{
    private const int StackBytes = 256 * 1024;
    private readonly Socket _listener;
    private readonly IPEndPoint _target;
    private readonly List<(Socket A, Socket B)> _pairs = [];
    private readonly Thread _acceptor;
    private volatile bool _stopped;
    private volatile bool _blocked;

    public IPEndPoint Endpoint { get; }
    public int Accepted;

    public TcpForwarder(IPEndPoint target)
    {
        _target = target;
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(64);
        Endpoint = (IPEndPoint)_listener.LocalEndPoint!;
        _acceptor = new Thread(AcceptLoop, StackBytes) { IsBackground = true, Name = $"forwarder {Endpoint.Port}->{target.Port}" };
        _acceptor.Start();
    }

    public bool Blocked
    {
        get => _blocked;
        set => _blocked = value;
    }

    /// <summary>While set, bytes from clients towards the target are held in the forwarder (a slow link).</summary>
    public volatile bool PauseUpstream;

    /// <summary>While set, bytes from the target towards clients are held in the forwarder.</summary>
    public volatile bool PauseDownstream;

    /// <summary>
    /// Milliseconds bytes from clients towards the target are held before they are passed on (a slow link that stays
    /// up: bytes arriving while a chunk is held go with it; 0: none; at most 10 s).
    /// </summary>
    public volatile int UpstreamDelayMs;

    /// <summary>
    /// A partition that leaves every connection open (no FIN, no reset): bytes in both directions are held until
    /// <see cref="Heal"/> (then delivered in order, as TCP delivers after a partition) or <see cref="Cut"/>.
    /// A partition ends by itself after 30 s.
    /// </summary>
    public void Partition() => PauseUpstream = PauseDownstream = true;

    public void Heal() => PauseUpstream = PauseDownstream = false;

    private void AcceptLoop()
    {
        while (!_stopped)
        {
            Socket client;
            try { client = _listener.Accept(); }
            catch (Exception) when (_stopped) { return; }
            catch (SocketException) { continue; }
            Interlocked.Increment(ref Accepted);
            if (_blocked)
            {
                Reset(client);
                continue;
            }
            var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                upstream.Connect(_target);
            }
            catch (SocketException)
            {
                Reset(client);
                upstream.Dispose();
                continue;
            }
            client.NoDelay = true;
            lock (_pairs)
            {
                if (_stopped)
                {
                    Reset(client);
                    Reset(upstream);
                    return;
                }
                _pairs.Add((client, upstream));
            }
            Start(() => Pump(client, upstream, upstreamDirection: true), "up");
            Start(() => Pump(upstream, client, upstreamDirection: false), "down");
        }
    }

    private void Start(ThreadStart pump, string way) =>
        new Thread(pump, StackBytes) { IsBackground = true, Name = $"forwarder {Endpoint.Port} {way}" }.Start();

    /// <summary>Bytes received from one side and not yet passed on to the other (held by a pause, or on their way).</summary>
    public long Held => Interlocked.Read(ref _held);
    private long _held;

    private void Pump(Socket from, Socket to, bool upstreamDirection)
    {
        var buf = new byte[256 * 1024];
        int pending = 0;
        try
        {
            while (true)
            {
                int n = from.Receive(buf, SocketFlags.None);
                if (n == 0) break;
                pending = n;
                Interlocked.Add(ref _held, n);
                for (int i = 0; (upstreamDirection ? PauseUpstream : PauseDownstream) && i < 6000 && !_stopped; i++) Thread.Sleep(5);
                if (upstreamDirection && UpstreamDelayMs > 0)
                {
                    // Latency, not a slower pipe: what arrived meanwhile (the rest of a PDU) goes with this chunk.
                    Thread.Sleep(Math.Min(UpstreamDelayMs, 10_000));
                    while (n < buf.Length && from.Available > 0)
                    {
                        int more = from.Receive(buf, n, Math.Min(from.Available, buf.Length - n), SocketFlags.None);
                        if (more == 0) break;
                        n += more;
                        pending += more;
                        Interlocked.Add(ref _held, more);
                    }
                }
                for (int sent = 0; sent < n;)
                {
                    int k = to.Send(buf, sent, n - sent, SocketFlags.None);
                    sent += k;
                    pending -= k;
                    Interlocked.Add(ref _held, -k);
                }
            }
            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception)
        {
            Interlocked.Add(ref _held, -pending); // what was held is lost with the connection
            pending = 0;
            Reset(to);
            Reset(from);
        }
    }

    private static void Reset(Socket s)
    {
        try
        {
            s.LingerState = new LingerOption(true, 0);
            s.Close();
        }
        catch (Exception)
        {
            // already closed
        }
    }

    /// <summary>Resets every connection through the forwarder (both sides see a reset).</summary>
    public void Cut()
    {
        List<(Socket A, Socket B)> pairs;
        lock (_pairs)
        {
            pairs = [.. _pairs];
            _pairs.Clear();
        }
        foreach ((Socket a, Socket b) in pairs)
        {
            Reset(a);
            Reset(b);
        }
    }

    public void Dispose()
    {
        lock (_pairs) _stopped = true;
        _listener.Dispose();
        Cut();
        _acceptor.Join(TimeSpan.FromSeconds(5));
    }
}
