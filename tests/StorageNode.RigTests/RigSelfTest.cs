using System.Net;
using System.Net.Sockets;
using StorageNode.Testing;

namespace StorageNode.RigTests;

/// <summary>
/// The rig checks itself, without StorageNode: the guest scripts (tests/rig/guest) against Linux nvmet
/// started inside the same guest (nvmet-setup.sh), and the harness's contract (exit status, timeout,
/// nothing left running). Each test is one guest boot; the tests of this class run one after the other
/// (one collection; xunit.runner.json turns parallelization off too): one guest at a time.
/// </summary>
[Trait("Category", "Rig")]
public sealed class RigSelfTest(ITestOutputHelper output) : IDisposable
{
    private const string Nqn = "nqn.2026-11.io.storagenode:rig-selftest";
    private readonly Rig _rig = new(output);

    public void Dispose() => _rig.Dispose();

    /// <summary>The in-guest target: 256 MiB RAM-backed, 4 KiB blocks, known identity.</summary>
    private static Dictionary<string, string> NvmetEnv(string steps) => new()
    {
        ["RIG_STEPS"] = steps,
        ["SUBNQN"] = Nqn,
        ["NVMET_SIZE_MIB"] = "256",
        ["NVMET_BLOCK_SIZE"] = "4096",
        ["EXPECT_SERIAL"] = "RIGSELF0001",
        ["EXPECT_MODEL"] = "Linux nvmet rig self-test",
        ["EXPECT_NGUID"] = "5a1f0e5e1f7e57005a1f0e5e1f7e5700",
        ["EXPECT_NSZE"] = (256 * 1024 / 4).ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["EXPECT_BLOCK_SIZE"] = "4096",
        ["EXPECT_ANA_STATE"] = "optimized",
    };

    private static void AssertPassed(GuestResult r, string[] steps, string[] checks)
    {
        Assert.False(r.TimedOut, "the guest timed out");
        Assert.Empty(r.FailedChecks);
        foreach (string s in steps)
            Assert.True(r.Step(s)?.Ok == true, $"step {s}: {r.Step(s)?.Status ?? "missing"}");
        foreach (string c in checks)
            Assert.True(r.Check(c)?.Ok == true, $"check {c}: {(r.Check(c) is { } k ? "FAIL " + k.Detail : "missing")}");
        Assert.Equal(0, r.ExitCode);
    }

    [Fact]
    public void NvmeCliPassesAgainstLinuxNvmetInTheGuest()
    {
        RigImage image = _rig.Require();
        Dictionary<string, string> env = NvmetEnv("nvmet-setup.sh nvme-cli.sh");
        env["TARGET_ADDR"] = "127.0.0.1";
        env["TARGET_PORT"] = "4420";
        // After the steps, in the same boot: the checks must bite. nvme-cli.sh against a subsystem the target
        // does not have must fail, naming the check, with a non-zero status.
        GuestResult r = _rig.Run(GuestOptions.Inline("""
            bash "$RIG_GUEST/steps.sh" || exit $?
            SUBNQN=nqn.2026-11.io.storagenode:absent bash "$RIG_GUEST/nvme-cli.sh" > /tmp/negative.txt 2>&1
            echo "NEGATIVE exit $?: $(grep -c ': FAIL' /tmp/negative.txt) failed: $(grep -m 1 -o 'CHECK discover-lists-subsystem: [A-Z]*' /tmp/negative.txt)"
            """) with { Name = "selftest", Env = env, Timeout = TimeSpan.FromMinutes(5) });
        AssertPassed(r, ["nvmet-setup.sh", "nvme-cli.sh"],
        [
            "nvmet-listening", "discover", "discover-lists-subsystem", "connect", "nvme-list-serial", "nvme-list-model",
            "id-ctrl-sn", "id-ctrl-mn", "id-ctrl-subnqn", "id-ctrl-cntlid-is-connects", "id-ctrl-cmic-multi-controller-and-ana",
            "id-ns-nsze", "id-ns-lbaf-block-size", "id-ns-nguid", "ns-descs-nguid-matches-id-ns", "list-subsys-path-live",
            "ana-log-state", "list-subsys-shows-ana-state", "smart-log", "error-log", "fw-log", "get-log-raw-smart-bytes",
            "read-back-4MiB", "disconnect-gone", "connect-digests", "digests-read-earlier-data", "digests-read-back",
            "disconnect-digests-gone",
        ]);
        Assert.Equal(image.KernelRelease, r.KernelRelease);
        Assert.Matches(@"selftest\| NEGATIVE exit 1: [1-9]\d* failed: CHECK discover-lists-subsystem: FAIL", r.Output);
    }

    [Fact]
    public void DataScriptsPassThroughHostForwards()
    {
        _rig.Require();
        // The guest reaches its own nvmet the way it will reach a target on the host: 10.0.2.100:4420 ->
        // a forwarder (socat) per connection -> host 127.0.0.1:hostPort -> QEMU's hostfwd -> guest eth0:4420.
        int hostPort = TestPair.FreeTcpPort();
        Dictionary<string, string> env = NvmetEnv("nvmet-setup.sh fio-verify.sh filesystem.sh keepalive.sh");
        env["NVMET_ADDR"] = "10.0.2.15";
        env["NVMET_PORT"] = "4420";
        env["TARGET_PORT"] = "4420";   // TARGET_ADDR: the default, 10.0.2.100
        env["FIO_RUNTIME"] = "10";
        env["FIO_SIZE_MIB"] = "4";     // 4 jobs x 4 MiB: filled and read back whole through the forwarders
        using RigGuest g = _rig.Start(new GuestOptions("steps.sh")
        {
            Name = "forwards",
            Env = env,
            Forwards = [(4420, hostPort)],
            HostForwards = [(hostPort, 4420)],
            Timeout = TimeSpan.FromMinutes(8),
        });
        int most = 0;
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (!g.HasExited && watch.Elapsed < TimeSpan.FromMinutes(9))
        {
            most = Math.Max(most, g.ForwarderPids(hostPort).Count);
            Thread.Sleep(250);
        }
        GuestResult r = g.WaitForExit();
        _rig.Report(r);
        output.WriteLine($"forwarders of host port {hostPort} at once: up to {most}");
        AssertPassed(r, ["nvmet-setup.sh", "fio-verify.sh", "filesystem.sh", "keepalive.sh"],
        [
            "randwrite-errors", "randwrite-verify-failures", "randwrite-verified", "verify-read-KiB", "verify-errors",
            "verify-failures", "files-intact", "fsck", "kato-ms", "still-live", "same-controller", "no-error-recovery",
            "io-after-idle-read",
        ]);
        // One host connection per guest connection: the admin queue and the I/O queues each had their own.
        Assert.True(most >= 2, $"at most {most} forwarder(s) at once: guest connections are not forwarded one by one");
    }

    [Fact]
    public void GuestExitStatusAndRunFolderReachTheCaller()
    {
        _rig.Require();
        using RigGuest g = _rig.Start(GuestOptions.Inline("""
            echo "kernel $(uname -r)"
            echo hello > "$RIG_OUT/note.txt"
            exit 7
            """) with { Name = "status", Timeout = TimeSpan.FromMinutes(2) });
        GuestResult r = g.WaitForExit();
        _rig.Report(r);
        Assert.Equal(7, r.ExitCode);
        Assert.Contains("status| kernel ", r.Output);
        Assert.Contains($"status| run folder: {g.RunFolder}", r.Output);
        Assert.True(File.Exists(r.SerialLog), "serial log kept");
        Assert.Equal("hello", File.ReadAllText(Path.Combine(g.RunFolder, "note.txt")).Trim());
        Assert.Equal("7", File.ReadAllText(Path.Combine(g.RunFolder, "exit")).Trim());
        AssertNothingLeft(g);
        Directory.Delete(g.RunFolder, recursive: true);   // kept for a failure; this one was expected
    }

    [Fact]
    public void AGuestThatDiesWithoutAStatusGives125()
    {
        _rig.Require();
        using RigGuest g = _rig.Start(GuestOptions.Inline("""
            echo c > /proc/sysrq-trigger   # a kernel panic: the guest powers off without a status
            sleep 60
            """) with { Name = "died", Timeout = TimeSpan.FromMinutes(2) });
        GuestResult r = g.WaitForExit();
        _rig.Report(r);
        Assert.Equal(125, r.ExitCode);
        Assert.Contains("died| run-guest: the guest died without an exit status", r.Output);
        Assert.Contains("Kernel panic", File.ReadAllText(r.SerialLog));
        AssertNothingLeft(g);
        Directory.Delete(g.RunFolder, recursive: true);   // kept for a failure; this one was expected
    }

    [Fact]
    public void TimeoutEndsTheGuestWith124AndLeavesNothingRunning()
    {
        _rig.Require();
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        using RigGuest g = _rig.Start(GuestOptions.Inline("""
            exec 3<>/dev/tcp/10.0.2.100/4420 || exit 3   # through a forwarder to the test's listener
            echo connected; touch "$RIG_OUT/connected"
            sleep 600
            """) with { Name = "timeout", Forwards = [(4420, port)], Timeout = TimeSpan.FromSeconds(25) });
        using Socket accepted = AcceptWithin(listener, TimeSpan.FromSeconds(40));
        Assert.True(g.WaitForSignal("connected", TimeSpan.FromSeconds(40)), "the guest did not connect");
        Assert.Single(g.ForwarderPids(port));
        GuestResult r = g.WaitForExit();
        _rig.Report(r);
        Assert.Equal(124, r.ExitCode);
        Assert.True(r.TimedOut);
        Assert.Contains("timeout| run-guest: timed out", r.Output);
        AssertNothingLeft(g);
        accepted.ReceiveTimeout = 10_000;
        Assert.Equal(0, accepted.Receive(new byte[16]));   // the forwarder closed the host connection
        Directory.Delete(g.RunFolder, recursive: true);   // kept for a failure; this one was expected
    }

    [Fact]
    public void KillForwardersCutsAPathAndDisposeStopsARunningGuest()
    {
        _rig.Require();
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        RigGuest g = _rig.Start(GuestOptions.Inline("""
            exec 3<>/dev/tcp/10.0.2.100/4420 || exit 3
            touch "$RIG_OUT/connected"
            sleep 600
            """) with { Name = "dispose", Forwards = [(4420, port)], Timeout = TimeSpan.FromMinutes(5) });
        using Socket accepted = AcceptWithin(listener, TimeSpan.FromSeconds(60));
        Assert.True(g.WaitForSignal("connected", TimeSpan.FromSeconds(60)), "the guest did not connect");
        Assert.NotEmpty(g.LeftoverProcesses());   // QEMU and the forwarder, while it runs
        // Cutting the path from outside: its forwarder is killed by PID and the host side sees the end.
        Assert.Equal(1, g.KillForwarders(port));
        accepted.ReceiveTimeout = 10_000;
        Assert.Equal(0, accepted.Receive(new byte[16]));
        Assert.Empty(g.ForwarderPids(port));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        g.Dispose();
        output.WriteLine($"stopped in {watch.Elapsed.TotalSeconds:0.0} s");
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30), $"stopping took {watch.Elapsed.TotalSeconds:0} s");
        Assert.NotEqual(0, g.Result?.ExitCode);
        AssertNothingLeft(g);
        Assert.True(Directory.Exists(g.RunFolder), "the run folder of a guest that did not succeed is kept");
        Directory.Delete(g.RunFolder, recursive: true);
    }

    private void AssertNothingLeft(RigGuest g)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        IReadOnlyList<int> left = g.LeftoverProcesses();
        while (left.Count > 0 && watch.Elapsed < TimeSpan.FromSeconds(5))
        {
            Thread.Sleep(100);
            left = g.LeftoverProcesses();
        }
        Assert.True(left.Count == 0, $"left running: {string.Join(", ", left)}");
    }

    private static Socket AcceptWithin(TcpListener listener, TimeSpan timeout)
    {
        Task<Socket> accept = listener.AcceptSocketAsync(TestContext.Current.CancellationToken).AsTask();
        Assert.True(accept.Wait(timeout, TestContext.Current.CancellationToken), "no connection from the guest reached the host");
        return accept.Result;
    }
}
