using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;

namespace StorageNode.Testing;

/// <summary>
/// Processes a test starts (nodes, rig runners) that never outlive the test process, however it ends (a crash or a
/// SIGKILL included): each starts through <c>setpriv --pdeathsig KILL</c>, so the kernel kills it when its parent goes.
/// The death signal fires when the parent <em>thread</em> that started the child ends, not only the process: every
/// child is therefore started from one thread that lives as long as the process. Each child also carries
/// <see cref="ParentVariable"/>; the first start in a process kills what an earlier, dead test process left behind
/// (its ports and CPU would otherwise go to whatever runs next).
/// </summary>
public static class ChildProcesses
{
    /// <summary>Set in every child's environment to the test process's PID.</summary>
    public const string ParentVariable = "STORAGENODE_TEST_PARENT"; // not SN_: the node reads SN_ variables as settings

    private static readonly BlockingCollection<(ProcessStartInfo Psi, TaskCompletionSource<Process> Done)> s_requests = new();
    private static readonly Lazy<IReadOnlyList<string>> s_orphans = new(KillOrphans, LazyThreadSafetyMode.ExecutionAndPublication);

    static ChildProcesses()
    {
        var launcher = new Thread(() =>
        {
            foreach ((ProcessStartInfo psi, TaskCompletionSource<Process> done) in s_requests.GetConsumingEnumerable())
            {
                try { done.SetResult(Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {psi.FileName}")); }
                catch (Exception e) { done.SetException(e); }
            }
        }) { IsBackground = true, Name = "child process launcher" };
        launcher.Start();
    }

    /// <summary>What the first start killed: processes an earlier test process left behind (for the test's output).</summary>
    public static IReadOnlyList<string> OrphansKilled => s_orphans.Value;

    /// <summary>
    /// Starts <paramref name="psi"/> (its file and <see cref="ProcessStartInfo.ArgumentList"/>; redirections and
    /// environment as given) so that it dies with this process.
    /// </summary>
    public static Process Start(ProcessStartInfo psi)
    {
        if (!string.IsNullOrEmpty(psi.Arguments)) throw new ArgumentException("use ArgumentList", nameof(psi));
        _ = s_orphans.Value;
        var wrapped = new ProcessStartInfo("setpriv")
        {
            UseShellExecute = false,
            RedirectStandardInput = psi.RedirectStandardInput,
            RedirectStandardOutput = psi.RedirectStandardOutput,
            RedirectStandardError = psi.RedirectStandardError,
            WorkingDirectory = psi.WorkingDirectory,
        };
        foreach (string a in (string[])["--pdeathsig", "KILL", "--", psi.FileName]) wrapped.ArgumentList.Add(a);
        foreach (string a in psi.ArgumentList) wrapped.ArgumentList.Add(a);
        foreach (KeyValuePair<string, string?> kv in psi.Environment) wrapped.Environment[kv.Key] = kv.Value;
        wrapped.Environment[ParentVariable] = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        var done = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        s_requests.Add((wrapped, done));
        return done.Task.GetAwaiter().GetResult();
    }

    /// <summary>Kills (SIGKILL) every process whose <see cref="ParentVariable"/> names a test process that no longer runs.</summary>
    private static IReadOnlyList<string> KillOrphans()
    {
        var killed = new List<string>();
        string prefix = ParentVariable + "=";
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid) || pid == Environment.ProcessId) continue;
            string environ;
            try { environ = File.ReadAllText(Path.Combine(dir, "environ")); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            foreach (string v in environ.Split('\0'))
            {
                if (!v.StartsWith(prefix, StringComparison.Ordinal)) continue;
                if (!int.TryParse(v.AsSpan(prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out int parent)) break;
                if (parent == Environment.ProcessId || Directory.Exists($"/proc/{parent}")) break;
                string cmd;
                try { cmd = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ').Trim(); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException) { cmd = "?"; }
                try
                {
                    using Process p = Process.GetProcessById(pid);
                    p.Kill();
                    killed.Add($"pid {pid} (left by test process {parent}, gone): {cmd}");
                }
                catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception) { }
                break;
            }
        }
        foreach (string k in killed) Console.Error.WriteLine($"test harness: killed a process an earlier test run left behind: {k}");
        return killed;
    }
}
