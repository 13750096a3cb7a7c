using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using StorageNode.Control;
using StorageNode.Nvme.Host;

namespace StorageNode.Testing;

/// <summary>A pair of nodes under test, whatever runs them: one process (<see cref="TestPair"/>) or two (<see cref="ProcessPair"/>).</summary>
public interface IPairRig : IDisposable
{
    string Kind { get; }
    IPEndPoint EndpointA { get; }
    IPEndPoint EndpointB { get; }
    /// <summary>The interconnect association A makes into B runs through this forwarder (and B's into A through the other).</summary>
    TcpForwarder InterconnectAtoB { get; }
    TcpForwarder InterconnectBtoA { get; }
    void WaitHealthy(TimeSpan? timeout = null);
    NvmeHost Connect(IPEndPoint ep, Guid hostId, NvmeHostOptions? options = null, string nqn = TestPair.Nqn);
    /// <summary>What went wrong, from both nodes' logs (for failure messages).</summary>
    string Problems();
    /// <summary>Everything node 'A' or 'B' logged so far.</summary>
    string Log(char node);
    /// <summary>
    /// Waits (bounded) until node 'A' or 'B' has logged a line containing <paramref name="text"/>: what a test waits for
    /// may be visible before the line that tells of it is written (a node process's console logger writes from a queue of
    /// its own, and the test process reads the output as it comes).
    /// </summary>
    void WaitLogged(char node, string text, TimeSpan? timeout = null);
    /// <summary>Commands node 'A' or 'B' relayed to its partner (first subsystem).</summary>
    long Relayed(char node);
    /// <summary>
    /// Waits (bounded) until nothing relayed is on its way: both interconnect forwarders hold no bytes, and neither node
    /// has a relayed command (or a write's copy) queued or unanswered. Whatever was sent has then run on its owner or been
    /// refused there: the positive condition a test waits for before it checks that an old copy did not land.
    /// </summary>
    void WaitRelaysSettled(TimeSpan? timeout = null);
}

/// <summary>
/// The two nodes of a pair as two <c>storagenode</c> processes on loopback, configured as <see cref="TestPair"/> does,
/// the interconnect through <see cref="TcpForwarder"/>s in the test process. Each node has its own clock offset
/// (<c>Cluster:ClockOffsetSeconds</c>), as two machines would, and its own management socket, through which the test
/// sees the pair's health.
/// </summary>
public sealed class ProcessPair : IPairRig
{
    private Node _a, _b;
    private readonly Dictionary<string, string?> _settingsA, _settingsB;

    public string Kind => "two processes";
    public IPEndPoint EndpointA => _a.Endpoint;
    public IPEndPoint EndpointB => _b.Endpoint;
    public TcpForwarder InterconnectAtoB { get; }
    public TcpForwarder InterconnectBtoA { get; }
    public int ProcessIdA => _a.Process.Id;
    public int ProcessIdB => _b.Process.Id;

    /// <summary>The heartbeat channel's relay (<c>relayHeartbeats</c>; null: the nodes' datagrams go straight to each other).</summary>
    public UdpRelay? HeartbeatRelay { get; }

    /// <param name="relayHeartbeats">The heartbeat datagrams go through a <see cref="UdpRelay"/> (<see cref="HeartbeatRelay"/>), which a test can block.</param>
    public ProcessPair(Dictionary<string, string?>? overridesA = null, Dictionary<string, string?>? overridesB = null, int clockOffsetSecondsB = 0, int reactors = 1,
        bool relayHeartbeats = false)
    {
        (int icA, int icB, TcpForwarder atoB, TcpForwarder btoA) = TestPair.InterconnectPorts();
        InterconnectAtoB = atoB;
        InterconnectBtoA = btoA;
        int hbA = TestPair.FreeUdpPort(), hbB = TestPair.FreeUdpPort();
        (Dictionary<string, string?> a, Dictionary<string, string?> b) = TestPair.PairSettings(icA, icB, InterconnectAtoB.Endpoint.Port, InterconnectBtoA.Endpoint.Port, hbA, hbB, reactors, 1);
        if (relayHeartbeats)
        {
            HeartbeatRelay = new UdpRelay(new IPEndPoint(IPAddress.Loopback, hbA), new IPEndPoint(IPAddress.Loopback, hbB));
            a["Cluster:PartnerHeartbeat"] = HeartbeatRelay.ForA.ToString();
            b["Cluster:PartnerHeartbeat"] = HeartbeatRelay.ForB.ToString();
        }
        b["Cluster:ClockOffsetSeconds"] = clockOffsetSecondsB.ToString();
        foreach (var kv in overridesA ?? []) a[kv.Key] = kv.Value;
        foreach (var kv in overridesB ?? []) b[kv.Key] = kv.Value;
        (_settingsA, _settingsB) = (a, b);
        _a = new Node("A", a);
        try
        {
            _b = new Node("B", b);
        }
        catch
        {
            _a.Dispose();
            HeartbeatRelay?.Dispose();
            throw;
        }
    }

    public void WaitHealthy(TimeSpan? timeout = null)
    {
        var sw = Stopwatch.StartNew();
        TimeSpan limit = timeout ?? TimeSpan.FromSeconds(30);
        while (!(_a.Healthy() && _b.Healthy()))
        {
            if (sw.Elapsed > limit) throw new TimeoutException($"pair not healthy after {limit.TotalSeconds} s\n{Problems()}");
            Thread.Sleep(50);
        }
    }

    public NvmeHost Connect(IPEndPoint ep, Guid hostId, NvmeHostOptions? options = null, string nqn = TestPair.Nqn)
        => NvmeHost.Connect(ep, nqn, (options ?? new NvmeHostOptions()) with { HostId = hostId });

    /// <summary>A management call on one node (e.g. <c>cluster_get_status</c>).</summary>
    public JsonNode? Rpc(char node, string method, JsonObject? parameters = null) => (node == 'A' ? _a : _b).Call(method, parameters);

    /// <summary>
    /// Kills a node for real (SIGKILL: nothing it held in memory survives) and starts it again with the same settings
    /// (a new incarnation, on a new listener port: <see cref="Start"/>).
    /// </summary>
    public void KillAndRestart(char node)
    {
        Kill(node);
        Start(node);
    }

    /// <summary>Kills a node for real (SIGKILL) and leaves it dead until <see cref="Start"/>.</summary>
    public void Kill(char node)
    {
        Node old = node == 'A' ? _a : _b;
        if (old.Process.HasExited) return;
        Signal(old.Process.Id, "CONT");
        Signal(old.Process.Id, "KILL");
        old.Process.WaitForExit();
    }

    /// <summary>
    /// Starts a node that was killed again, with the same settings (a new incarnation): on a new listener port, or with
    /// <paramref name="samePort"/> on the one it had, as a machine started again would be (a host's path to it comes back).
    /// </summary>
    public void Start(char node, bool samePort = false)
    {
        Node old = node == 'A' ? _a : _b;
        if (!old.Process.HasExited) throw new InvalidOperationException($"node {node} is running");
        old.Dispose();
        Node fresh = new(node.ToString(), node == 'A' ? _settingsA : _settingsB, samePort ? old.Endpoint.Port : null);
        if (node == 'A') _a = fresh;
        else _b = fresh;
    }

    /// <summary>Stops or resumes a node's whole process (SIGSTOP / SIGCONT): a node that stalls, as under a long pause.</summary>
    public void Freeze(char node, bool frozen) => Signal((node == 'A' ? _a : _b).Process.Id, frozen ? "STOP" : "CONT");

    private static void Signal(int pid, string sig)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", $"-{sig} {pid}") { UseShellExecute = false })!;
        kill.WaitForExit(5000);
    }

    public string Problems() => $"A:\n{_a.Tail()}\nB:\n{_b.Tail()}";

    /// <summary>Everything a node printed so far.</summary>
    public string Log(char node) => (node == 'A' ? _a : _b).Output;

    public void WaitLogged(char node, string text, TimeSpan? timeout = null)
        => TestPair.WaitUntil(() => Log(node).Contains(text, StringComparison.Ordinal), $"node {node} to log '{text}'", timeout);

    public long Relayed(char node) => Rpc(node, "cluster_get_status")!["links"]![0]!["relayed"]!.GetValue<long>();

    public void WaitRelaysSettled(TimeSpan? timeout = null)
    {
        int Out(char node) => Rpc(node, "cluster_get_status")!["links"]!.AsArray().Sum(l => l!["queued_relays"]!.GetValue<int>() + l["inflight"]!.GetValue<int>());
        TestPair.WaitUntil(() => InterconnectAtoB.Held == 0 && InterconnectBtoA.Held == 0 && Out('A') == 0 && Out('B') == 0,
            "nothing relayed on its way (both interconnect forwarders empty, nothing queued or unanswered on either node)", timeout);
    }

    public void Dispose()
    {
        InterconnectAtoB.Dispose();
        InterconnectBtoA.Dispose();
        HeartbeatRelay?.Dispose();
        _a.Dispose();
        _b.Dispose();
    }

    /// <summary>One storagenode process.</summary>
    private sealed class Node : IDisposable
    {
        private readonly StringBuilder _out = new();
        private readonly string _socket;

        public Process Process { get; }
        public IPEndPoint Endpoint { get; }

        /// <summary>The node's reactor count (Node:Reactors).</summary>
        public int Reactors { get; }

        /// <param name="port">The listener's port (null: a free one).</param>
        public Node(string name, Dictionary<string, string?> settings, int? port = null)
        {
            Reactors = int.Parse(settings["Node:Reactors"]!, System.Globalization.CultureInfo.InvariantCulture);
            // Never a port this process was given before (the interconnect's, the partner's), and never a forwarder's:
            // those stay bound while the pair lives.
            port ??= TestPair.FreeTcpPort();
            settings["Listeners:0:Port"] = port.Value.ToString();
            _socket = Path.Combine(Path.GetTempPath(), $"sn-pair-{Environment.ProcessId}-{Guid.NewGuid():N}-{name}.sock");
            settings["Control:RpcSocket"] = _socket;
            Endpoint = new IPEndPoint(IPAddress.Loopback, port.Value);
            var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(Path.Combine(Repo.BuiltOutput("src/StorageNode"), "storagenode.dll"));
            foreach (var kv in settings) psi.ArgumentList.Add($"--{kv.Key}={kv.Value}");
            Process = ChildProcesses.Start(psi);
            Process.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_out) _out.AppendLine(e.Data); };
            Process.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_out) _out.AppendLine(e.Data); };
            Process.BeginOutputReadLine();
            Process.BeginErrorReadLine();
            // Started once its management socket answers (the node answers calls once it has started: docs/management.md).
            var sw = Stopwatch.StartNew();
            while (!Answers())
            {
                if (Process.HasExited || sw.Elapsed > TimeSpan.FromSeconds(30))
                    throw new InvalidOperationException($"node {name} did not start (exit {(Process.HasExited ? Process.ExitCode : -1)}):\n{Output}");
                Thread.Sleep(50);
            }
        }

        public string Output
        {
            get { lock (_out) return _out.ToString(); }
        }

        public string Tail()
        {
            string[] lines = Output.Split('\n');
            return string.Join("\n", lines.Where(l => l.Contains("warn") || l.Contains("fail") || l.Contains("crit")).TakeLast(30));
        }

        public JsonNode? Call(string method, JsonObject? parameters = null)
        {
            using var c = new RpcClient(_socket, TimeSpan.FromSeconds(5));
            return c.Call(method, parameters);
        }

        private bool Answers()
        {
            if (!File.Exists(_socket)) return false;
            try
            {
                return Call("rpc_get_methods") != null;
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or InvalidOperationException or TimeoutException) { return false; }
        }

        public bool Healthy()
        {
            try
            {
                JsonNode? st = Call("cluster_get_status");
                return st?["partner_status"]?.GetValue<string>() == "healthy" && st["partner_heard"]!.GetValue<bool>()
                    && st["links"]!.AsArray().All(l => l!["up"]!.GetValue<bool>() && l["proxy_queues"]!.GetValue<int>() == Reactors);
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or InvalidOperationException or TimeoutException) { return false; }
        }

        public void Dispose()
        {
            try
            {
                if (!Process.HasExited)
                {
                    Signal(Process.Id, "CONT");
                    Signal(Process.Id, "TERM");
                    if (!Process.WaitForExit(10_000)) Process.Kill(entireProcessTree: true);
                }
                Process.WaitForExit();
            }
            catch (InvalidOperationException) { }
            Process.Dispose();
            try { File.Delete(_socket); } catch (IOException) { }
        }
    }
}

/// <summary>Pairs for tests that must hold however the nodes run: in one process on one clock, or as two processes with node B's clock hours off.</summary>
public static class PairRigs
{
    public const string OneProcess = "one process";
    public const string TwoProcesses = "two processes";

    /// <summary>(kind, node B's clock offset in seconds)</summary>
    public static TheoryData<string, int> Kinds => new()
    {
        { OneProcess, 0 },
        { TwoProcesses, 3 * 3600 },
        { TwoProcesses, -3 * 3600 },
    };

    public static IPairRig Create(string kind, int clockOffsetSecondsB, Dictionary<string, string?>? overridesA = null, Dictionary<string, string?>? overridesB = null)
    {
        if (kind == TwoProcesses) return new ProcessPair(overridesA, overridesB, clockOffsetSecondsB);
        var b = new Dictionary<string, string?>(overridesB ?? []) { ["Cluster:ClockOffsetSeconds"] = clockOffsetSecondsB.ToString() };
        return new TestPair(overridesA, b);
    }
}
