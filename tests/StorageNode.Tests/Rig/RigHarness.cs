using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace StorageNode.Tests.Rig;

/// <summary>
/// Drives tests/rig: builds (once per process) the cached guest image, boots QEMU guests that run a guest
/// script against nodes on this host, and reports their exit status and output. When QEMU or the image
/// cannot be had, rig tests fail under CI=true and are skipped, with the reason, elsewhere.
/// </summary>
public static partial class RigHarness
{
    private static readonly Lazy<(bool Ok, string Reason, TimeSpan Took)> Image = new(BuildImage);

    public static string RepoRoot { get; } = FindRepoRoot();
    public static string RigDir => Path.Combine(RepoRoot, "tests", "rig");
    public static string GuestDir => Path.Combine(RigDir, "guest");
    public static string Cache => Environment.GetEnvironmentVariable("RIG_CACHE") ?? "/var/tmp/storagenode-rig";

    private static string FindRepoRoot()
    {
        for (string? d = AppContext.BaseDirectory; d != null; d = Path.GetDirectoryName(d))
            if (File.Exists(Path.Combine(d, "build.ps1")) && Directory.Exists(Path.Combine(d, "tests", "rig"))) return d;
        return Directory.GetCurrentDirectory();
    }

    private static (bool, string, TimeSpan) BuildImage()
    {
        var sw = Stopwatch.StartNew();
        string script = Path.Combine(RigDir, "build-guest.sh");
        if (!File.Exists(script)) return (false, $"{script} not found", sw.Elapsed);
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(script);
        psi.Environment["RIG_CACHE"] = Cache;
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(900_000))
        {
            p.Kill(true);
            return (false, "build-guest.sh did not finish within 15 minutes", sw.Elapsed);
        }
        string all = output + err.Result;
        if (p.ExitCode != 0) return (false, $"build-guest.sh failed (exit {p.ExitCode}): {all.Trim()}", sw.Elapsed);
        return (true, all.Trim(), sw.Elapsed);
    }

    /// <summary>Ensures the guest image; fails (CI) or skips (elsewhere) the calling test when it cannot be had.</summary>
    public static TimeSpan RequireImage()
    {
        (bool ok, string reason, TimeSpan took) = Image.Value;
        if (ok) return took;
        string msg = $"rig unavailable: {reason}";
        if (Environment.GetEnvironmentVariable("CI") == "true") Assert.Fail(msg);
        Assert.Skip(msg);
        return took;
    }

    /// <summary>Starts one guest running a script from tests/rig/guest.</summary>
    public static GuestRun Start(string name, string script, IReadOnlyDictionary<string, string> env,
        IEnumerable<(int GuestPort, int HostPort)> forwards, TimeSpan timeout, string? forwarderTag = null)
    {
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = RepoRoot };
        psi.ArgumentList.Add(Path.Combine(RigDir, "run-guest.sh"));
        psi.ArgumentList.Add("-n");
        psi.ArgumentList.Add(name);
        foreach ((int g, int h) in forwards)
        {
            psi.ArgumentList.Add("-p");
            psi.ArgumentList.Add($"{g}:{h}");
        }
        psi.ArgumentList.Add(Path.Combine(GuestDir, script));
        var lines = new StringBuilder();
        foreach (var kv in env) lines.Append(kv.Key).Append('=').Append(kv.Value).Append('\n');
        psi.Environment["RIG_ENV"] = lines.ToString();
        psi.Environment["RIG_CACHE"] = Cache;
        psi.Environment["RIG_TIMEOUT"] = ((int)timeout.TotalSeconds).ToString();
        psi.Environment["RIG_FWD_TAG"] = forwarderTag ?? $"sn-{name}-{Environment.ProcessId}";
        return new GuestRun(Process.Start(psi)!, name, psi.Environment["RIG_FWD_TAG"]!, timeout);
    }

    /// <summary>The build output folder of a project (same configuration as these tests), e.g. "src/StorageNode".</summary>
    public static string BuiltOutput(string project)
    {
        string config = new DirectoryInfo(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)).Parent!.Name; // bin/<Configuration>/net10.0
        return Path.Combine(RepoRoot, project, "bin", config, "net10.0");
    }

    /// <summary>
    /// Copies a build output folder into <paramref name="to"/> (created): guests cannot see a checkout under /tmp,
    /// so what they run travels through the rig cache (on the host's /var/tmp, which guests see).
    /// </summary>
    public static void CopyFiles(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)), overwrite: true);
    }

    /// <summary>
    /// Starts two guests, a and b, joined by a private link (run-pair.sh), both running <paramref name="script"/>.
    /// <paramref name="timeout"/> is each guest's (RIG_TIMEOUT). With a <paramref name="stagger"/> (whole seconds; RIG_STAGGER)
    /// b starts that long after a, so the guests' monotonic clocks differ by at least that much; a's timeout and the
    /// whole run's are longer by it.
    /// </summary>
    public static GuestRun StartPair(string script, IReadOnlyDictionary<string, string> env, TimeSpan timeout, TimeSpan stagger = default)
    {
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = RepoRoot };
        psi.ArgumentList.Add(Path.Combine(RigDir, "run-pair.sh"));
        psi.ArgumentList.Add(Path.Combine(GuestDir, script));
        var lines = new StringBuilder();
        foreach (var kv in env) lines.Append(kv.Key).Append('=').Append(kv.Value).Append('\n');
        psi.Environment["RIG_ENV"] = lines.ToString();
        psi.Environment["RIG_CACHE"] = Cache;
        psi.Environment["RIG_TIMEOUT"] = ((int)timeout.TotalSeconds).ToString();
        int staggerSeconds = (int)Math.Ceiling(stagger.TotalSeconds);
        if (staggerSeconds > 0) psi.Environment["RIG_STAGGER"] = staggerSeconds.ToString();
        return new GuestRun(Process.Start(psi)!, "pair", "sn-pair", timeout + TimeSpan.FromSeconds(Math.Max(staggerSeconds, 0)));
    }
}

/// <summary>A running guest: its output, its run folder, and the way to cut one of its paths.</summary>
public sealed partial class GuestRun : IDisposable
{
    private readonly Process _p;
    private readonly StringBuilder _out = new();
    private readonly Stopwatch _sw = Stopwatch.StartNew();
    private readonly TimeSpan _timeout;

    public string Name { get; }
    public string ForwarderTag { get; }
    public string RunFolder => Path.Combine(RigHarness.Cache, "runs", $"{Name}-{_p.Id}");
    public TimeSpan Elapsed => _sw.Elapsed;

    internal GuestRun(Process p, string name, string tag, TimeSpan timeout)
    {
        _p = p;
        Name = name;
        ForwarderTag = tag;
        _timeout = timeout;
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_out) _out.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_out) _out.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
    }

    public string Output
    {
        get { lock (_out) return _out.ToString(); }
    }

    public bool HasExited => _p.HasExited;

    /// <summary>True once the guest script created <paramref name="file"/> in its run folder ($RIG_OUT).</summary>
    public bool Signalled(string file) => File.Exists(Path.Combine(RunFolder, file));

    /// <summary>Waits for the guest (bounded by its own timeout plus a margin); returns its exit status.</summary>
    public int Wait()
    {
        if (!_p.WaitForExit(_timeout + TimeSpan.FromSeconds(60)))
        {
            _p.Kill(true);
            _p.WaitForExit();
        }
        _p.WaitForExit(); // drain the output readers
        return _p.ExitCode;
    }

    /// <summary>Guest uptime when the script started (the boot time), from the RIG-START marker.</summary>
    public double? BootSeconds
    {
        get
        {
            Match m = BootRegex().Match(Output);
            return m.Success ? double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : null;
        }
    }

    [GeneratedRegex(@"RIG-START ([0-9.]+)s")]
    private static partial Regex BootRegex();

    /// <summary>Kills (by PID) the forwarders QEMU started for guest connections to host port <paramref name="hostPort"/>.</summary>
    public int KillForwarders(int hostPort)
    {
        string want = $"socat -lp{ForwarderTag}-{hostPort} - TCP:127.0.0.1:{hostPort} ";
        int killed = 0;
        foreach (string dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            string cmd;
            try { cmd = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' '); }
            catch (IOException) { continue; }
            catch (UnauthorizedAccessException) { continue; }
            if (cmd != want) continue;
            try
            {
                Process.GetProcessById(pid).Kill();
                killed++;
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
            {
                // already gone
            }
        }
        return killed;
    }

    public void Dispose()
    {
        if (!_p.HasExited) _p.Kill(true);
        _p.Dispose();
    }
}
