using System.Diagnostics;
using System.Net;
using System.Text;

namespace StorageNode.Testing;

/// <summary>
/// A <c>storagenode witness</c> process on loopback (docs/ha.md, "The witness"), as a pair's third vote would run on a
/// third machine: its own UDP port, lease and state directory. <see cref="Kill"/> kills it for real (SIGKILL),
/// <see cref="Start"/> starts it again on the same port and state.
/// </summary>
public sealed class WitnessProcess : IDisposable
{
    private readonly StringBuilder _out = new();
    private readonly int _leaseMs;
    private readonly string _stateDirectory;
    private readonly bool _ownDirectory;
    private Process? _process;

    public IPEndPoint Endpoint { get; }

    /// <summary>The setting a node of the pair takes to use it (<c>Cluster:Witness</c>).</summary>
    public KeyValuePair<string, string?> Setting => new("Cluster:Witness", Endpoint.ToString());

    /// <param name="stateDirectory">Where it keeps its records (null: a temporary folder, removed with it).</param>
    public WitnessProcess(int leaseMs = 1500, string? stateDirectory = null)
    {
        _leaseMs = leaseMs;
        _ownDirectory = stateDirectory == null;
        _stateDirectory = stateDirectory ?? Directory.CreateTempSubdirectory("sn-witness-state-").FullName;
        Endpoint = new IPEndPoint(IPAddress.Loopback, TestPair.FreeUdpPort());
        Start();
    }

    public void Start()
    {
        if (_process is { HasExited: false }) throw new InvalidOperationException("the witness is running");
        _process?.Dispose();
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(Repo.BuiltOutput("src/StorageNode"), "storagenode.dll"));
        psi.ArgumentList.Add("witness");
        psi.ArgumentList.Add($"--Witness:Listen={Endpoint}");
        psi.ArgumentList.Add($"--Witness:LeaseMs={_leaseMs}");
        psi.ArgumentList.Add($"--Witness:StateDirectory={_stateDirectory}");
        Process p = ChildProcesses.Start(psi);
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_out) _out.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_out) _out.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        _process = p;
        var sw = Stopwatch.StartNew();
        while (!Output.Contains("[witness] ready", StringComparison.Ordinal))
        {
            if (p.HasExited || sw.Elapsed > TimeSpan.FromSeconds(30))
                throw new InvalidOperationException($"the witness did not start (exit {(p.HasExited ? p.ExitCode : -1)}):\n{Output}");
            Thread.Sleep(20);
        }
    }

    /// <summary>Kills it for real (SIGKILL): the leases it granted are forgotten, its state directory is what it kept.</summary>
    public void Kill()
    {
        if (_process is not { HasExited: false } p) return;
        p.Kill();
        p.WaitForExit();
    }

    /// <summary>Everything it printed so far (every run).</summary>
    public string Output
    {
        get { lock (_out) return _out.ToString(); }
    }

    public void Dispose()
    {
        Kill();
        _process?.Dispose();
        if (_ownDirectory)
            try { Directory.Delete(_stateDirectory, recursive: true); } catch (IOException) { }
    }
}
