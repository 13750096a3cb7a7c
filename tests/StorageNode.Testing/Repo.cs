namespace StorageNode.Testing;

/// <summary>The checkout the tests run from: its root and the build output of its projects.</summary>
public static class Repo
{
    /// <summary>The folder holding StorageNode.slnx above the test's output folder (or the working folder); null when
    /// the tests do not run from a checkout.</summary>
    public static string? Root { get; } = FindRoot();

    /// <summary>The build output folder of a project built like the calling tests (same configuration and target
    /// framework), e.g. "src/StorageNode" → src/StorageNode/bin/Release/net10.0.</summary>
    public static string BuiltOutput(string project)
    {
        string root = Root ?? throw new InvalidOperationException($"no checkout (StorageNode.slnx) above {AppContext.BaseDirectory}");
        var output = new DirectoryInfo(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)); // bin/<Configuration>/<framework>
        return Path.Combine(root, project, "bin", output.Parent!.Name, output.Name);
    }

    private static string? FindRoot()
    {
        foreach (string start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
            for (string? d = start; d != null; d = Path.GetDirectoryName(d))
                if (File.Exists(Path.Combine(d, "StorageNode.slnx"))) return d;
        return null;
    }
}
