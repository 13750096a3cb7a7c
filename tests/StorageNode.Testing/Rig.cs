using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace StorageNode.Testing;

/// <summary>What one guest (or each guest of a pair, <see cref="Rig.StartPair"/>) runs, with what environment,
/// connected how, for how long.</summary>
public sealed record GuestOptions
{
    /// <param name="script">A script in tests/rig/guest (by file name, e.g. "steps.sh") or a path to one.</param>
    public GuestOptions(string script) => Script = script;

    /// <summary>A guest running <paramref name="bash"/> (it can call the guest scripts as bash "$RIG_GUEST/NAME.sh").</summary>
    public static GuestOptions Inline(string bash) => new(string.Empty) { InlineScript = bash };

    public string Script { get; }
    public string? InlineScript { get; init; }

    /// <summary>Prefix of the guest's output lines and of its run folder ([A-Za-z0-9._-]); a pair's guests print as
    /// "a| " and "b| ", and this names only the pair's run folder.</summary>
    public string Name { get; init; } = "guest";

    /// <summary>Exported to the script inside the guest (values may hold anything but a line break).</summary>
    public IReadOnlyDictionary<string, string> Env { get; init; } = new Dictionary<string, string>();

    /// <summary>Guest → host (run-guest.sh -p): a guest connection to 10.0.2.100:GuestPort reaches the host's
    /// 127.0.0.1:HostPort, each through its own forwarder process (see <see cref="RigGuest.KillForwarders"/>).</summary>
    public IReadOnlyList<(int GuestPort, int HostPort)> Forwards { get; init; } = [];

    /// <summary>Host → guest (run-guest.sh -f): the host's 127.0.0.1:HostPort reaches the guest's eth0 (10.0.2.15)
    /// GuestPort. Single guests only.</summary>
    public IReadOnlyList<(int HostPort, int GuestPort)> HostForwards { get; init; } = [];

    /// <summary>The whole guest, boot included: run-guest.sh stops it then (exit status 124). For a pair, each guest's
    /// (a's is longer by the stagger).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(10);

    public int? Cpus { get; init; }
    public int? MemoryMiB { get; init; }

    /// <summary>A pair's guest a, powered off (<see cref="RigGuest.PowerOff"/>), can be booted again
    /// (<see cref="RigGuest.PowerOn"/>; run-pair.sh's RIG_RESTART_A): a fresh QEMU on the same link.</summary>
    public bool RestartA { get; init; }
}

/// <summary>One "CHECK name: ok|FAIL detail" line of a guest script.</summary>
public sealed record RigCheck(string Name, bool Ok, string Detail)
{
    /// <summary>The guest that printed it: the guest's name, or "a" / "b" in a pair.</summary>
    public string Guest { get; init; } = "";
}

/// <summary>One "STEP name: ok|FAIL|not run" line of steps.sh.</summary>
public sealed record RigStep(string Name, string Status, TimeSpan? Took)
{
    public bool Ok => Status == "ok";
}

/// <summary>How a guest ended.</summary>
public sealed class GuestResult
{
    /// <summary>The guest script's exit status; 124: timed out; 125: the guest died without a status.</summary>
    public required int ExitCode { get; init; }
    public required string Output { get; init; }
    public required string RunFolder { get; init; }
    /// <summary>The guest's serial console log (a pair: guest a's).</summary>
    public required string SerialLog { get; init; }
    /// <summary>Every guest's serial console log (a pair: a's and b's).</summary>
    public IReadOnlyList<string> SerialLogs { get; init; } = [];
    public required TimeSpan Elapsed { get; init; }
    /// <summary>Guest uptime when the script started (kernel boot + /init).</summary>
    public double? BootSeconds { get; init; }
    public string? KernelRelease { get; init; }
    public IReadOnlyList<RigCheck> Checks { get; init; } = [];
    public IReadOnlyList<RigStep> Steps { get; init; } = [];

    public bool TimedOut => ExitCode == 124;
    public IEnumerable<RigCheck> FailedChecks => Checks.Where(c => !c.Ok);
    public RigCheck? Check(string name) => Checks.LastOrDefault(c => c.Name == name);
    public RigStep? Step(string name) => Steps.LastOrDefault(s => s.Name == name);
}

/// <summary>The guest image (build-guest.sh) or why it cannot be had.</summary>
public sealed record RigImage(bool Available, string Reason, TimeSpan BuildTime, string? KernelRelease, string BuildLog);

/// <summary>
/// Drives tests/rig, for every rig test project: ensures the cached guest image (once per process), boots QEMU
/// guests (one, or a pair joined by a private link) that run a guest script, and collects their exit status,
/// output and checks. When QEMU or the image cannot be had, <see cref="Require"/> fails the test under CI=true
/// and skips it, with the reason, elsewhere. Everything a guest started is killed when the guest (or this
/// object) is disposed or times out.
/// </summary>
public sealed partial class Rig(ITestOutputHelper output) : IDisposable
{
    private static readonly Lazy<RigImage> ImageLazy = new(BuildImage, LazyThreadSafetyMode.ExecutionAndPublication);
    private static int s_guests;
    private readonly List<RigGuest> _guests = [];

    public static string RigDir => Path.Combine(Repo.Root ?? ".", "tests", "rig");
    public static string GuestDir => Path.Combine(RigDir, "guest");
    public static string Cache => Environment.GetEnvironmentVariable("RIG_CACHE") is { Length: > 0 } c ? c : "/var/tmp/storagenode-rig";
    public static bool IsCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);
    /// <summary>RIG_KEEP=1: keep every run folder, not only those of failed guests.</summary>
    public static bool KeepRunFolders => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("RIG_KEEP"));

    /// <summary>The image, built (or found up to date) on first use.</summary>
    public static RigImage Image => ImageLazy.Value;

    public ITestOutputHelper Output => output;

    /// <summary>Ensures the guest image; when it cannot be had, fails the test (CI=true) or skips it, printing why.</summary>
    public RigImage Require()
    {
        RigImage image = Image;
        if (image.Available)
        {
            output.WriteLine($"rig: guest kernel {image.KernelRelease}, image ready in {image.BuildTime.TotalSeconds:0.0} s ({Cache})");
            return image;
        }
        string reason = $"rig unavailable: {image.Reason}";
        output.WriteLine(reason);
        if (IsCi) Assert.Fail(reason + " (CI=true: the rig is required)");
        Assert.Skip(reason);
        return image;
    }

    /// <summary>Boots a guest; it runs in the background until <see cref="RigGuest.WaitForExit"/>.</summary>
    public RigGuest Start(GuestOptions options) => Launch(options, stagger: null);

    /// <summary>Boots two guests, a (192.168.100.1) and b (192.168.100.2), joined by a private link (run-pair.sh),
    /// both running <paramref name="options"/>' script ($RIG_NODE tells which); the result's exit status is a's when
    /// not 0, else b's. With a <paramref name="stagger"/> (whole seconds; RIG_STAGGER) b starts that long after a, so
    /// the guests' monotonic clocks differ by at least that much; a's timeout and the whole run's are longer by it.</summary>
    public RigGuest StartPair(GuestOptions options, TimeSpan stagger = default)
    {
        if (options.HostForwards.Count > 0) throw new ArgumentException("run-pair.sh has no host → guest forwards", nameof(options));
        return Launch(options, stagger);
    }

    private RigGuest Launch(GuestOptions options, TimeSpan? stagger)
    {
        if (!Regex.IsMatch(options.Name, "^[A-Za-z0-9._-]+$")) throw new ArgumentException($"bad guest name '{options.Name}'", nameof(options));
        int n = Interlocked.Increment(ref s_guests);
        string id = $"{options.Name}-{Environment.ProcessId}-{n}";
        var guest = new RigGuest(options, Path.Combine(Cache, "runs", id), $"rig-{id}", stagger, output);
        lock (_guests) _guests.Add(guest);
        return guest;
    }

    /// <summary>
    /// Copies a build output folder (files only) into <paramref name="to"/> (created): guests cannot see a checkout
    /// under /tmp, so what they run travels through the rig cache (on the host's /var/tmp, which guests see).
    /// </summary>
    public static void CopyFiles(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)), overwrite: true);
    }

    /// <summary>Boots a guest, waits for it, reports it (<see cref="Report"/>) and disposes it (its run folder
    /// is removed after a success: use <see cref="Start"/> to read files the script left in $RIG_OUT).</summary>
    public GuestResult Run(GuestOptions options)
    {
        using RigGuest guest = Start(options);
        GuestResult result = guest.WaitForExit();
        Report(result);
        return result;
    }

    /// <summary>Writes the guest's output and timing to the test output; after a failure also the end of
    /// the serial console log and the run folder's path (kept).</summary>
    public void Report(GuestResult r)
    {
        output.WriteLine(r.Output);
        string steps = string.Join(", ", r.Steps.Select(s => $"{s.Name} {s.Status}{(s.Took is { } t ? $" {t.TotalSeconds:0.0} s" : "")}"));
        output.WriteLine($"guest exit {r.ExitCode}{(r.TimedOut ? " (timed out)" : r.ExitCode == 125 ? " (guest died)" : "")}, " +
                         $"{r.Elapsed.TotalSeconds:0.0} s wall, boot {r.BootSeconds?.ToString("0.0", CultureInfo.InvariantCulture) ?? "?"} s, " +
                         $"kernel {r.KernelRelease ?? "?"}, {r.Checks.Count} checks ({r.FailedChecks.Count()} failed)" +
                         (steps.Length > 0 ? $"; steps: {steps}" : ""));
        if (r.ExitCode == 0) return;
        output.WriteLine($"run folder (kept): {r.RunFolder}");
        foreach (string serial in r.SerialLogs.Count > 0 ? r.SerialLogs : [r.SerialLog])
        {
            if (File.Exists(serial))
            {
                string[] lines = File.ReadAllLines(serial);
                output.WriteLine($"serial console {serial}, last {Math.Min(lines.Length, 120)} of {lines.Length} lines:");
                foreach (string l in lines.TakeLast(120)) output.WriteLine("  " + l.TrimEnd('\r'));
            }
            else output.WriteLine($"no serial console log at {serial}");
        }
    }

    public void Dispose()
    {
        lock (_guests)
        {
            foreach (RigGuest g in _guests) g.Dispose();
            _guests.Clear();
        }
    }

    private static RigImage BuildImage()
    {
        var sw = Stopwatch.StartNew();
        RigImage Unavailable(string reason, string log = "") => new(false, reason, sw.Elapsed, null, log);
        if (!OperatingSystem.IsLinux()) return Unavailable("the rig needs Linux (QEMU, 9p, bash)");
        if (Repo.Root is null || !File.Exists(Path.Combine(RigDir, "run-guest.sh")))
            return Unavailable($"tests/rig/run-guest.sh not found above {AppContext.BaseDirectory}");
        (int code, string log) = ProcessRunner.Run("bash", [Path.Combine(RigDir, "build-guest.sh")],
            new Dictionary<string, string> { ["RIG_CACHE"] = Cache }, TimeSpan.FromMinutes(20));
        string tail = string.Join('\n', log.Split('\n').TakeLast(15)).Trim();
        if (code == -1) return Unavailable($"build-guest.sh did not finish within 20 minutes: {tail}", log);
        if (code != 0) return Unavailable($"build-guest.sh failed (exit {code}): {tail}", log);
        if (!ProcessRunner.OnPath("qemu-system-x86_64")) return Unavailable("qemu-system-x86_64 is not on PATH", log);
        string kver = Path.Combine(Cache, "kver");
        if (!File.Exists(kver) || !File.Exists(Path.Combine(Cache, "initrd.gz"))) return Unavailable($"no guest image in {Cache} after build-guest.sh", log);
        return new RigImage(true, "", sw.Elapsed, File.ReadAllText(kver).Trim(), log);
    }
}

/// <summary>A running (or finished) guest, or pair of guests: its output, its run folder ($RIG_OUT inside; a pair's
/// guests have a/ and b/ in it), its forwarders.</summary>
public sealed partial class RigGuest : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _log = new();
    private readonly ManualResetEventSlim _stdoutClosed = new(), _stderrClosed = new();
    private readonly Stopwatch _sw = Stopwatch.StartNew();
    private readonly TimeSpan _timeout;
    private readonly string? _inlineScript;
    /// <summary>Each guest's output prefix and run folder: this guest's own, or a pair's a and b.</summary>
    private readonly (string Name, string Folder)[] _guests;
    private GuestResult? _result;
    private bool _disposed;

    public string Name { get; }
    /// <summary>The run folder: the guest's $RIG_OUT, serial.log, dmesg.txt, the exit status (a pair: a/ and b/, each
    /// its guest's).</summary>
    public string RunFolder { get; }
    /// <summary>The guest's serial console log (a pair: guest a's).</summary>
    public string SerialLog => Path.Combine(_guests[0].Folder, "serial.log");
    /// <summary>The forwarders of host port P run as "socat -lp{ForwarderTag}-P - TCP:127.0.0.1:P".</summary>
    public string ForwarderTag { get; }
    public TimeSpan Elapsed => _sw.Elapsed;
    public bool HasExited => _process.HasExited;
    public GuestResult? Result => _result;

    /// <param name="stagger">Null: one guest (run-guest.sh); else a pair (run-pair.sh), b started that much after a.</param>
    internal RigGuest(GuestOptions o, string runFolder, string tag, TimeSpan? stagger, ITestOutputHelper? output)
    {
        Name = o.Name;
        RunFolder = runFolder;
        ForwarderTag = tag;
        int staggerSeconds = stagger is { } st ? Math.Max(0, (int)Math.Ceiling(st.TotalSeconds)) : 0;
        _timeout = o.Timeout + TimeSpan.FromSeconds(staggerSeconds);
        _guests = stagger is null ? [(o.Name, runFolder)] : [("a", Path.Combine(runFolder, "a")), ("b", Path.Combine(runFolder, "b"))];
        string script = o.Script;
        if (o.InlineScript != null)
        {
            _inlineScript = Path.Combine(Path.GetTempPath(), $"{tag}.sh");
            File.WriteAllText(_inlineScript, o.InlineScript);
            script = _inlineScript;
        }
        else if (!script.Contains('/')) script = Path.Combine(Rig.GuestDir, script);
        if (!File.Exists(script)) throw new FileNotFoundException($"guest script {script} not found", script);

        var psi = new ProcessStartInfo("bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Repo.Root ?? Directory.GetCurrentDirectory(),
        };
        string runner = stagger is null ? "run-guest.sh" : "run-pair.sh";
        psi.ArgumentList.Add(Path.Combine(Rig.RigDir, runner));
        if (stagger is null)
        {
            psi.ArgumentList.Add("-n");
            psi.ArgumentList.Add(o.Name);
        }
        foreach ((int g, int h) in o.Forwards)
        {
            psi.ArgumentList.Add("-p");
            psi.ArgumentList.Add($"{g}:{h}");
        }
        foreach ((int h, int g) in o.HostForwards)
        {
            psi.ArgumentList.Add("-f");
            psi.ArgumentList.Add($"{h}:{g}");
        }
        psi.ArgumentList.Add(script);
        var env = new StringBuilder();
        foreach ((string k, string v) in o.Env)
        {
            if (v.Contains('\n')) throw new ArgumentException($"environment value of {k} holds a line break", nameof(o));
            env.Append(k).Append('=').Append(v).Append('\n');
        }
        psi.Environment["RIG_ENV"] = env.ToString();
        psi.Environment["RIG_CACHE"] = Rig.Cache;
        psi.Environment["RIG_TIMEOUT"] = ((int)Math.Ceiling(o.Timeout.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
        psi.Environment["RIG_RUN_DIR"] = RunFolder;   // run-pair.sh: a's is RunFolder/a, b's RunFolder/b
        psi.Environment["RIG_KEEP"] = "1";   // this class removes the run folder after a success (Dispose)
        psi.Environment["RIG_FWD_TAG"] = tag;
        psi.Environment["RIG_GUEST_DIR"] = Rig.GuestDir;
        if (o.Cpus is { } cpus) psi.Environment["RIG_CPUS"] = cpus.ToString(CultureInfo.InvariantCulture);
        if (o.MemoryMiB is { } mem) psi.Environment["RIG_MEM"] = mem.ToString(CultureInfo.InvariantCulture);
        if (o.RestartA) psi.Environment["RIG_RESTART_A"] = "1";
        if (staggerSeconds > 0) psi.Environment["RIG_STAGGER"] = staggerSeconds.ToString(CultureInfo.InvariantCulture);

        output?.WriteLine($"rig: starting {(stagger is null ? "guest" : "pair")} {Name}: {o.Script}{(o.InlineScript != null ? "(inline)" : "")}, " +
                          $"forwards [{string.Join(", ", o.Forwards.Select(f => $"10.0.2.100:{f.GuestPort}->127.0.0.1:{f.HostPort}"))}], " +
                          $"timeout {o.Timeout.TotalSeconds:0} s{(staggerSeconds > 0 ? $", b {staggerSeconds} s after a" : "")}, run folder {RunFolder}");
        _process = ChildProcesses.Start(psi);
        _process.OutputDataReceived += (_, e) => Append(e.Data, _stdoutClosed);
        _process.ErrorDataReceived += (_, e) => Append(e.Data, _stderrClosed);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    private void Append(string? line, ManualResetEventSlim closed)
    {
        if (line == null) closed.Set();
        else lock (_log) _log.AppendLine(line);
    }

    /// <summary>Everything run-guest.sh (run-pair.sh) printed so far (the guest's lines are prefixed "NAME| ", a pair's
    /// "a| " and "b| ").</summary>
    public string Output
    {
        get { lock (_log) return _log.ToString(); }
    }

    /// <summary>True once the guest script (a pair: either guest's) created <paramref name="file"/> in $RIG_OUT.</summary>
    public bool Signalled(string file) => _guests.Any(g => File.Exists(Path.Combine(g.Folder, file)));

    /// <summary>Waits (bounded) until the guest script creates <paramref name="file"/> in $RIG_OUT; false when
    /// the guest ended or the time ran out first.</summary>
    public bool WaitForSignal(string file, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < timeout)
        {
            if (Signalled(file)) return true;
            if (HasExited) return Signalled(file);
            Thread.Sleep(100);
        }
        return false;
    }

    /// <summary>Creates <paramref name="file"/> in the run folder: the guest (a pair: each guest) sees it as $RIG_OUT/file.</summary>
    public void Signal(string file, string content = "")
    {
        foreach ((_, string folder) in _guests) File.WriteAllText(Path.Combine(folder, file), content);
    }

    /// <summary>
    /// Powers guest <paramref name="guest"/> off at once (a pair's "a" or "b"; one guest: its name): its QEMU is killed
    /// (SIGKILL), so the guest's connections end with no FIN and no reset and its datagrams stop, as when a machine loses
    /// power. run-guest.sh then reports the guest as ended on purpose (status 0): the test checks what the other guest saw.
    /// </summary>
    public void PowerOff(string guest)
    {
        string folder = _guests.Single(g => g.Name == guest).Folder;
        int pid = int.Parse(File.ReadAllText(Path.Combine(folder, "qemu.pid")).Trim(), CultureInfo.InvariantCulture);
        File.WriteAllText(Path.Combine(folder, "powered-off"), "");
        ProcessRunner.Run("kill", ["-KILL", pid.ToString(CultureInfo.InvariantCulture)], null, TimeSpan.FromSeconds(10));
    }

    /// <summary>
    /// Boots a pair's guest a again after <see cref="PowerOff"/> (the pair started with <see cref="GuestOptions.RestartA"/>):
    /// a fresh QEMU on the same link, its script told RIG_RESTARTED=1, its run folder RUN/a2.
    /// </summary>
    public void PowerOn(string guest)
    {
        if (guest != "a" || _guests.Length != 2) throw new ArgumentException("only a pair's guest a can be booted again", nameof(guest));
        File.WriteAllText(Path.Combine(_guests[0].Folder, "power-on"), "");
    }

    /// <summary>PIDs of the forwarders of host port <paramref name="hostPort"/> (all ports when null): one per open
    /// guest connection.</summary>
    public IReadOnlyList<int> ForwarderPids(int? hostPort = null)
    {
        string prefix = hostPort is { } p ? $"socat -lp{ForwarderTag}-{p} - TCP:127.0.0.1:{p} " : $"socat -lp{ForwarderTag}-";
        return ProcessRunner.FindProcesses(cmd => cmd.StartsWith(prefix, StringComparison.Ordinal));
    }

    /// <summary>Cuts the path to host port <paramref name="hostPort"/> from outside: kills its forwarders by PID.
    /// Transient: the kernel host reconnects through new forwarders while the target listens.</summary>
    public int KillForwarders(int hostPort) => ProcessRunner.KillAll(ForwarderPids(hostPort));

    /// <summary>Processes of this guest still alive: QEMU and helpers (their command line names the run folder)
    /// and forwarders (by tag). Empty once the guest is gone.</summary>
    public IReadOnlyList<int> LeftoverProcesses() => ProcessRunner.FindProcesses(cmd =>
        cmd.Contains(RunFolder + "/", StringComparison.Ordinal) || cmd.StartsWith($"socat -lp{ForwarderTag}-", StringComparison.Ordinal));

    /// <summary>Waits for the guest to end (bounded: its timeout plus a minute, then everything is killed and
    /// the result says 124) and returns how it ended.</summary>
    public GuestResult WaitForExit()
    {
        if (_result != null) return _result;
        bool exited = _process.WaitForExit(_timeout + TimeSpan.FromSeconds(60));
        if (!exited) Stop();
        _stdoutClosed.Wait(TimeSpan.FromSeconds(10));
        _stderrClosed.Wait(TimeSpan.FromSeconds(10));
        int code = exited ? _process.ExitCode : 124;
        if (!exited) Append($"{Name}| rig: no end after {(_timeout + TimeSpan.FromSeconds(60)).TotalSeconds:0} s: killed", _stderrClosed);
        _result = Parse(code);
        return _result;
    }

    /// <summary>Stops the guest now: TERM to run-guest.sh (which stops QEMU), then, after 10 s, KILL to its whole
    /// process tree; finally any process left that names this guest's run folder or forwarder tag.</summary>
    public void Stop()
    {
        if (!_process.HasExited)
        {
            ProcessRunner.Run("kill", ["-TERM", _process.Id.ToString(CultureInfo.InvariantCulture)], null, TimeSpan.FromSeconds(10));
            if (!_process.WaitForExit(TimeSpan.FromSeconds(10)))
            {
                try
                {
                    _process.Kill(entireProcessTree: true);
                }
                catch (InvalidOperationException)
                {
                    // it ended meanwhile
                }
                _process.WaitForExit(TimeSpan.FromSeconds(10));
            }
        }
        // Forwarders exit within a second of QEMU; anything left after 5 s is killed by PID.
        var sw = Stopwatch.StartNew();
        while (LeftoverProcesses().Count > 0 && sw.Elapsed < TimeSpan.FromSeconds(5)) Thread.Sleep(100);
        ProcessRunner.KillAll(LeftoverProcesses());
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (!_process.HasExited || LeftoverProcesses().Count > 0) Stop();
        _result ??= WaitForExit();
        if (_result.ExitCode == 0 && !Rig.KeepRunFolders)
        {
            try
            {
                Directory.Delete(RunFolder, recursive: true);
            }
            catch (DirectoryNotFoundException)
            {
                // already gone
            }
        }
        if (_inlineScript != null) File.Delete(_inlineScript);
        _process.Dispose();
        _stdoutClosed.Dispose();
        _stderrClosed.Dispose();
    }

    [GeneratedRegex(@"^CHECK (\S+): (ok|FAIL)\s*(.*)$")]
    private static partial Regex CheckLine();

    [GeneratedRegex(@"^STEP (\S+): (ok|FAIL|not run)(?:.*?(\d+) ms)?")]
    private static partial Regex StepLine();

    [GeneratedRegex(@"^RIG-START ([0-9.]+)s(?: kernel (\S+))?")]
    private static partial Regex StartLine();

    private GuestResult Parse(int code)
    {
        var checks = new List<RigCheck>();
        var steps = new List<RigStep>();
        double? boot = null;
        string? kernel = null;
        string output = Output;
        foreach (string raw in output.Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            string? guest = _guests.Select(g => g.Name).FirstOrDefault(g => line.StartsWith(g + "| ", StringComparison.Ordinal));
            if (guest is null) continue;
            line = line[(guest.Length + 2)..];
            Match m;
            if ((m = CheckLine().Match(line)).Success)
                checks.Add(new RigCheck(m.Groups[1].Value, m.Groups[2].Value == "ok", m.Groups[3].Value) { Guest = guest });
            else if ((m = StepLine().Match(line)).Success)
                steps.Add(new RigStep(m.Groups[1].Value, m.Groups[2].Value,
                    m.Groups[3].Success ? TimeSpan.FromMilliseconds(int.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture)) : null));
            else if ((m = StartLine().Match(line)).Success)
            {
                boot = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
                kernel = m.Groups[2].Success ? m.Groups[2].Value : null;
            }
        }
        return new GuestResult
        {
            ExitCode = code,
            Output = output,
            RunFolder = RunFolder,
            SerialLog = SerialLog,
            SerialLogs = [.. _guests.Select(g => Path.Combine(g.Folder, "serial.log"))],
            Elapsed = _sw.Elapsed,
            BootSeconds = boot,
            KernelRelease = kernel,
            Checks = checks,
            Steps = steps,
        };
    }
}

/// <summary>Small process helpers: bounded runs, /proc scans, kills by PID.</summary>
internal static class ProcessRunner
{
    /// <summary>Runs a command to its end (bounded: killed after <paramref name="timeout"/>, exit -1); returns its exit
    /// status and its output (stdout and stderr together).</summary>
    public static (int Code, string Output) Run(string file, IEnumerable<string> args, IDictionary<string, string>? env, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        if (env != null)
            foreach ((string k, string v) in env) psi.Environment[k] = v;
        var log = new StringBuilder();
        using var outDone = new ManualResetEventSlim();
        using var errDone = new ManualResetEventSlim();
        Process p;
        try
        {
            p = Process.Start(psi)!;
        }
        catch (Win32Exception e)
        {
            return (127, $"cannot run {file}: {e.Message}");
        }
        using (p)
        {
            p.OutputDataReceived += (_, e) => { if (e.Data == null) outDone.Set(); else lock (log) log.AppendLine(e.Data); };
            p.ErrorDataReceived += (_, e) => { if (e.Data == null) errDone.Set(); else lock (log) log.AppendLine(e.Data); };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            if (!p.WaitForExit(timeout))
            {
                p.Kill(entireProcessTree: true);
                p.WaitForExit(TimeSpan.FromSeconds(10));
                lock (log) return (-1, log.ToString());
            }
            outDone.Wait(TimeSpan.FromSeconds(10));
            errDone.Wait(TimeSpan.FromSeconds(10));
            lock (log) return (p.ExitCode, log.ToString());
        }
    }

    public static bool OnPath(string command) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(d => File.Exists(Path.Combine(d, command)));

    /// <summary>PIDs of the processes whose command line (arguments joined by spaces) matches.</summary>
    public static IReadOnlyList<int> FindProcesses(Func<string, bool> match)
    {
        var found = new List<int>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == Environment.ProcessId) continue;
            string cmd;
            try
            {
                cmd = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;   // gone meanwhile
            }
            if (cmd.Length > 0 && match(cmd)) found.Add(pid);
        }
        return found;
    }

    public static int KillAll(IEnumerable<int> pids)
    {
        int killed = 0;
        foreach (int pid in pids)
        {
            try
            {
                using Process p = Process.GetProcessById(pid);
                p.Kill();
                killed++;
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or Win32Exception)
            {
                // already gone
            }
        }
        return killed;
    }
}
