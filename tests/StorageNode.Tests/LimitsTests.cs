using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Nvme.Host;
using StorageNode.Target;
using StorageNode.Transport.Tcp;

namespace StorageNode.Tests;

/// <summary>
/// Bounded state per node: the connection limit (<c>Target:MaxConnections</c>) and TCP keep-alive on accepted
/// connections (<c>Target:TcpKeepAliveSeconds</c>), so that neither many hosts nor vanished ones grow it without end.
/// </summary>
public class LimitsTests(ITestOutputHelper output)
{
    // ------------------------------------------------------------------ connection limit

    [Fact]
    public void AtTheLimitANewConnectionIsClosedAtOnceAndAFreedSlotServesAgain()
    {
        using var node = new TestNode(new() { ["Target:MaxConnections"] = "3" });
        ConnectionLimit limit = node.Node.Target.Connections;
        Assert.Equal(3, limit.Max);
        var held = new List<Socket>();
        try
        {
            for (int i = 0; i < 3; i++) held.Add(RawConnect(node.Endpoint));
            WaitUntil(() => limit.Open == 3 && node.Node.Tcp.ConnectionCount == 3, "three connections adopted");

            using (Socket fourth = RawConnect(node.Endpoint))
                AssertClosedByNode(fourth);
            Assert.Equal(1, limit.Refused);
            Assert.Equal(3, limit.Open);
            string line = Assert.Single(LimitLines(node));
            output.WriteLine(line);
            Assert.StartsWith("Warning", line, StringComparison.Ordinal);
            Assert.Contains("refused: 3 connection(s) open, the limit (Target:MaxConnections = 3)", line, StringComparison.Ordinal);
            Assert.Contains("1 refused since the last", line, StringComparison.Ordinal);
            // The three it holds are still served: none was closed to make room.
            foreach (Socket s in held) Assert.False(s.Poll(0, SelectMode.SelectRead) && s.Available == 0, "a held connection was closed");

            // One goes away: its slot serves a whole association (admin queue) again.
            held[0].Dispose();
            held.RemoveAt(0);
            WaitUntil(() => limit.Open == 2 && node.Node.Tcp.ConnectionCount == 2, "the closed connection's slot given back");
            using NvmeHost host = node.Connect(new NvmeHostOptions { IoQueues = 0, SendKeepAlive = false });
            Assert.Equal(3, limit.Open);
            Assert.Equal("StorageNode test", host.ModelNumber);
            Assert.Equal(1u, BitConverter.ToUInt32(host.Identify(Nvme.Spec.Cns.ActiveNamespaceList, 0), 0));

            // Full again: the next association cannot connect, and the refusal within 10 s of the warning is counted, not logged.
            Assert.ThrowsAny<Exception>(() => node.Connect(new NvmeHostOptions { IoQueues = 0, SendKeepAlive = false, ConnectTimeout = TimeSpan.FromSeconds(5) }));
            Assert.Equal(2, limit.Refused);
            Assert.Single(LimitLines(node));
            Assert.Equal(3, limit.Open);
        }
        finally
        {
            foreach (Socket s in held) s.Dispose();
        }
    }

    [Fact]
    public void RefusalsAreLoggedAtMostEveryTenSecondsWithTheCountSinceTheLastLine()
    {
        var logs = new StringWriterLoggerProvider();
        using ILoggerFactory lf = LoggerFactory.Create(b => b.AddProvider(logs));
        long now = 1;
        var limit = new ConnectionLimit(2, lf.CreateLogger("target"), () => now);
        Assert.True(limit.TryAcquire("NVMe/TCP", "h1"));
        Assert.True(limit.TryAcquire("NVMe/TCP", "h2"));
        for (int i = 0; i < 3; i++)
        {
            Assert.False(limit.TryAcquire("NVMe/TCP", $"x{i}"));
            now += Stopwatch.Frequency; // 1 s apart
        }
        string first = Assert.Single(logs.Lines);
        Assert.Contains("x0 refused: 2 connection(s) open, the limit (Target:MaxConnections = 2); 1 refused since the last", first, StringComparison.Ordinal);

        now += 8 * Stopwatch.Frequency; // 11 s after the first line
        Assert.False(limit.TryAcquire("NVMe/RDMA", "y"));
        Assert.Equal(2, logs.Lines.Count);
        Assert.Contains("NVMe/RDMA connection from y refused", logs.Lines[1], StringComparison.Ordinal);
        Assert.Contains("3 refused since the last", logs.Lines[1], StringComparison.Ordinal); // x1, x2 and y
        Assert.Equal(4, limit.Refused);

        limit.Release();
        Assert.Equal(1, limit.Open);
        Assert.True(limit.TryAcquire("NVMe/TCP", "h3"));
        Assert.Equal(2, limit.Open);
    }

    // ------------------------------------------------------------------ TCP keep-alive

    [Fact]
    public void KeepAliveSettingsFollowTheKey()
    {
        Assert.Null(TcpKeepAlive.For(0));
        Assert.Equal(new TcpKeepAlive(30, 5, 3, 45_000), TcpKeepAlive.For(30));
        Assert.Equal(new TcpKeepAlive(1, 5, 3, 16_000), TcpKeepAlive.For(1));
        Assert.Equal(new TcpKeepAlive(7200, 5, 3, 7_215_000), TcpKeepAlive.For(7200));
        Assert.Throws<ArgumentOutOfRangeException>(() => TcpKeepAlive.For(-1));
    }

    /// <summary>
    /// The node's side of every connection it accepted carries the keep-alive timer (seen in /proc/net/tcp: timer 2,
    /// due within the configured idle time), and the node serves I/O on them.
    /// </summary>
    [Fact]
    public void AcceptedConnectionsProbeAVanishedHostAfterTheIdleTime()
    {
        using var node = new TestNode(new() { ["Target:TcpKeepAliveSeconds"] = "30" });
        using NvmeHost host = node.Connect(new NvmeHostOptions { SendKeepAlive = false });
        ServeOneWrite(host);
        List<ProcTcp> mine = WaitForIdleServerSockets(node.Endpoint.Port, 2);
        foreach (ProcTcp s in mine) output.WriteLine(s.ToString());
        foreach (ProcTcp s in mine)
        {
            Assert.Equal(2, s.Timer); // keep-alive timer armed
            // Due within 30 s (USER_HZ = 100 ticks per second); the kernel's default idle time would be 7200 s.
            Assert.InRange(s.WhenTicks, 1, 30 * 100);
        }
    }

    [Fact]
    public void WithKeepAliveOffAcceptedConnectionsHaveNoTimerAndAreServed()
    {
        using var node = new TestNode(new() { ["Target:TcpKeepAliveSeconds"] = "0" });
        using NvmeHost host = node.Connect(new NvmeHostOptions { SendKeepAlive = false });
        ServeOneWrite(host);
        List<ProcTcp> mine = WaitForIdleServerSockets(node.Endpoint.Port, 2);
        foreach (ProcTcp s in mine) output.WriteLine(s.ToString());
        Assert.All(mine, s => Assert.Equal(0, s.Timer));
    }

    // ------------------------------------------------------------------ configuration

    [Theory]
    [InlineData("Target:MaxConnections", "0")]
    [InlineData("Target:MaxConnections", "65537")]
    [InlineData("Target:MaxConnections", "many")]
    [InlineData("Target:TcpKeepAliveSeconds", "-1")]
    [InlineData("Target:TcpKeepAliveSeconds", "7201")]
    [InlineData("Target:TcpKeepAliveSeconds", "soon")]
    public void BadLimitsNameTheirKey(string key, string value)
    {
        var d = ConfigTests.Valid();
        d[key] = value;
        ConfigException e = Assert.Throws<ConfigException>(() => ConfigTests.Load(d));
        Assert.Equal(key, e.Key);
        Assert.Contains(key, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LimitsHaveDefaultsAndTheirRangeEnds()
    {
        NodeConfig c = ConfigTests.Load(ConfigTests.Valid());
        Assert.Equal(1024, c.Target.MaxConnections);
        Assert.Equal(30, c.Tcp.KeepAliveSeconds);
        var d = ConfigTests.Valid();
        d["Target:MaxConnections"] = "1";
        d["Target:TcpKeepAliveSeconds"] = "0";
        c = ConfigTests.Load(d);
        Assert.Equal(1, c.Target.MaxConnections);
        Assert.Equal(0, c.Tcp.KeepAliveSeconds);
        d["Target:MaxConnections"] = "65536";
        d["Target:TcpKeepAliveSeconds"] = "7200";
        c = ConfigTests.Load(d);
        Assert.Equal(65536, c.Target.MaxConnections);
        Assert.Equal(7200, c.Tcp.KeepAliveSeconds);
    }

    // ------------------------------------------------------------------ helpers

    private static IEnumerable<string> LimitLines(TestNode node) => node.Logs.Lines.Where(l => l.Contains("Target:MaxConnections =", StringComparison.Ordinal));

    private static Socket RawConnect(IPEndPoint ep)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveTimeout = 5000 };
        s.Connect(ep);
        return s;
    }

    /// <summary>A blocking receive ends with the node's FIN or reset, not with the 5 s timeout.</summary>
    private static void AssertClosedByNode(Socket s)
    {
        var buf = new byte[64];
        try
        {
            Assert.Equal(0, s.Receive(buf));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
        }
    }

    private static void ServeOneWrite(NvmeHost host)
    {
        var data = new byte[4096];
        Random.Shared.NextBytes(data);
        Assert.True(host.IoQueues[0].Write(1, 64, 8, data).IsSuccess);
        var back = new byte[4096];
        Assert.True(host.IoQueues[0].Read(1, 64, 8, back).IsSuccess);
        Assert.Equal(data, back);
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed > TimeSpan.FromSeconds(10)) throw new TimeoutException($"timed out waiting for {what}");
            Thread.Sleep(10);
        }
    }

    /// <summary>One socket of /proc/net/tcp: its ports, state, send queue and pending timer (tr, tm->when in clock ticks).</summary>
    private readonly record struct ProcTcp(int LocalPort, int RemotePort, int State, long TxQueue, int Timer, long WhenTicks);

    /// <summary>
    /// The node's side of its established connections on <paramref name="port"/> (at least <paramref name="count"/>),
    /// once everything they sent is acknowledged (no retransmission timer pending), within 10 s.
    /// </summary>
    private static List<ProcTcp> WaitForIdleServerSockets(int port, int count)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            List<ProcTcp> mine = ReadProcTcp().Where(s => s.LocalPort == port && s.State == 1).ToList();
            if (mine.Count >= count && mine.All(s => s.TxQueue == 0 && s.Timer != 1)) return mine;
            if (sw.Elapsed > TimeSpan.FromSeconds(10))
                throw new TimeoutException($"{mine.Count} established connection(s) on port {port}, not {count} idle ones: {string.Join("; ", mine)}");
            Thread.Sleep(20);
        }
    }

    private static IEnumerable<ProcTcp> ReadProcTcp()
    {
        foreach (string line in File.ReadAllLines("/proc/net/tcp").Skip(1))
        {
            string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            // sl local rem st tx:rx tr:when ...
            int Port(string addr) => int.Parse(addr.AsSpan(addr.IndexOf(':') + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            string[] q = f[4].Split(':');
            string[] t = f[5].Split(':');
            yield return new ProcTcp(Port(f[1]), Port(f[2]), int.Parse(f[3], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                long.Parse(q[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture), int.Parse(t[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                long.Parse(t[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
        }
    }
}
