using StorageNode.Rdma;

/// <summary>The probes' checks (a <c>CHECK name: ok|FAIL (detail)</c> line each) and the frame every probe runs in.</summary>
internal static class Checks
{
    public static int Failed => _fails;

    private static int _fails;

    public static void Check(string name, bool ok, string detail = "")
    {
        Console.WriteLine($"CHECK {name}: {(ok ? "ok" : "FAIL")}{(detail.Length > 0 ? $" ({detail})" : "")}");
        if (!ok) _fails++;
    }

    /// <summary>
    /// Runs <paramref name="probe"/> where RDMA is available: its checks, one for an exception it throws, then one that
    /// it left no verbs handle behind. The exit code: 0 when every check passed.
    /// </summary>
    public static int Run(Action probe)
    {
        string? why = RdmaDevices.UnavailableReason();
        Check("rdma-available", why == null, why ?? string.Join(",", RdmaDevices.List()));
        if (why != null) return 1;
        try
        {
            probe();
        }
        catch (Exception e)
        {
            Check("no-exception", false, e.ToString());
        }
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Check("no-leaked-handles", RdmaHandle.Live == 0, $"{RdmaHandle.Live} live");
        Console.WriteLine(_fails == 0 ? "ALL CHECKS PASSED" : $"{_fails} CHECK(S) FAILED");
        return _fails == 0 ? 0 : 1;
    }
}
