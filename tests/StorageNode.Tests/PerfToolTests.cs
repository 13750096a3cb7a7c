using StorageNode.Perf;

namespace StorageNode.Tests;

/// <summary>The sn-perf command line end to end against an in-process node.</summary>
public class PerfToolTests
{
    private static (int Code, string Output) Run(params string[] args)
    {
        var sw = new StringWriter();
        TextWriter old = Console.Out;
        Console.SetOut(sw);
        try
        {
            int code = PerfTool.Execute(args);
            return (code, sw.ToString());
        }
        finally
        {
            Console.SetOut(old);
        }
    }

    [Fact]
    public void DiscoverIdentifyAndVerifiedWorkload()
    {
        using var node = new TestNode();
        string port = node.Endpoint.Port.ToString();

        (int code, string output) = Run("-a", "127.0.0.1", "-s", port, "--discover");
        Assert.Equal(0, code);
        Assert.Contains($"trsvcid {port}", output);
        Assert.Contains(TestNode.Nqn, output);

        (code, output) = Run("-a", "127.0.0.1", "-s", port, "-n", TestNode.Nqn, "--identify");
        Assert.Equal(0, code);
        Assert.Contains("sn 'SNTEST0001'", output);
        Assert.Contains("namespace  2: 4096 x 4096 B", output);

        // Without -n the tool finds the subsystem through the discovery log.
        (code, output) = Run("-a", "127.0.0.1", "-s", port, "-w", "randrw", "-b", "8k", "-q", "8", "-j", "2", "--ios", "400",
            "--size", "8m", "--verify", "--quiet", "--poll", "adaptive", "--hdgst", "--ddgst");
        Assert.True(code == 0, output);
        Assert.Contains($"discovered {TestNode.Nqn}", output);
        Assert.Contains("errors: 0, verify failures: 0", output);
        Assert.Matches(@"result: [\d,]+ IOPS", output);
        Assert.Matches(@"latency \(us\): mean [\d.]+  p50 [\d.]+  p99 [\d.]+  p99\.9 [\d.]+  max [\d.]+", output);
    }

    [Fact]
    public void ManyConnectionsFromOneThreadVerifyAndReportJson()
    {
        using var node = new TestNode();
        string port = node.Endpoint.Port.ToString();
        // 6 connections x 2 queues driven round robin by 2 threads; every connection is a host of its own.
        (int code, string output) = Run("-a", "127.0.0.1", "-s", port, "-n", TestNode.Nqn, "-w", "randrw", "-q", "4", "-c", "6", "-j", "2",
            "--threads", "2", "--ios", "300", "--size", "8m", "--verify", "--json");
        Assert.True(code == 0, output);
        Assert.Contains("connections=6 queues=12", output);
        Assert.Matches("\"ops\": 3600, .*\"errors\": 0", output);
    }

    [Fact]
    public void BadArgumentsAreReported()
    {
        Assert.Equal(2, PerfTool.Execute(["--rw", "sideways"]));
        Assert.Equal(2, PerfTool.Execute(["--bs", "100"]));
        Assert.Equal(2, PerfTool.Execute(["--frobnicate"]));
        Assert.Equal(1024 * 1024, PerfTool.ParseSize("1m"));
        Assert.Equal(4096, PerfTool.ParseSize("4k"));
    }

    [Fact]
    public void QueueDepthBeyondTheControllerLimitIsRefused()
    {
        using var node = new TestNode(new() { ["Target:MaxQueueDepth"] = "16" });
        (int code, _) = Run("-a", "127.0.0.1", "-s", node.Endpoint.Port.ToString(), "-n", TestNode.Nqn, "-q", "64", "--ios", "10");
        Assert.Equal(2, code);
    }
}
