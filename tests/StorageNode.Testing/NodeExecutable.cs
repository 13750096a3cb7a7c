using System.Diagnostics;

namespace StorageNode.Testing;

/// <summary>The <c>storagenode</c> executable built beside the tests, run as a user runs it.</summary>
public static class NodeExecutable
{
    /// <summary>
    /// Runs <c>storagenode --config FILE</c> with <paramref name="json"/> as FILE (in a folder of its own, deleted after)
    /// until it exits, within a minute; its exit code and what it wrote to standard output and standard error.
    /// </summary>
    public static (int ExitCode, string Stdout, string Stderr) RunWithConfig(string json)
    {
        string dir = Directory.CreateTempSubdirectory("sn-cfg-").FullName;
        string file = Path.Combine(dir, "node.json");
        File.WriteAllText(file, json);
        try
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "storagenode.dll"));
            psi.ArgumentList.Add("--config");
            psi.ArgumentList.Add(file);
            using Process p = ChildProcesses.Start(psi);
            Task<string> stdout = p.StandardOutput.ReadToEndAsync();
            string err = p.StandardError.ReadToEnd();
            if (!p.WaitForExit(60_000))
            {
                p.Kill(entireProcessTree: true);
                throw new TimeoutException($"storagenode --config {file} did not exit within 60 s");
            }
            return (p.ExitCode, stdout.Result, err);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
