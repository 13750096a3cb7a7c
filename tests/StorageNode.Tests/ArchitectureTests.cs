using System.Text.RegularExpressions;

namespace StorageNode.Tests;

/// <summary>
/// The node's folders use each other in one direction only (docs/architecture.md, "Folders and what they use"): a type
/// declared in one folder of src/StorageNode and named in a file of another is a use. Read from the sources with the
/// heuristics below (the compiler keeps the projects acyclic, not the folders of one project).
/// </summary>
public sealed partial class ArchitectureTests
{
    // A member that has a folder's type name (a string property called Node, ListenerInfo.Transport).
    private static readonly HashSet<(string File, string Word)> NotAType = [("ClusterDescriptor.cs", "Node"), ("NvmfTarget.cs", "Transport")];

    [GeneratedRegex(@"^\s*(?:\[[^\]]*\]\s*)?(?:(?:public|internal|private|protected|file|sealed|static|abstract|readonly|unsafe|partial|ref)\s+)*(?:class|interface|struct|record struct|record class|record|enum)\s+([A-Za-z_]\w*)", RegexOptions.Multiline)]
    private static partial Regex Declaration();

    [GeneratedRegex(@"(?:\bStorageNode\.|(?<![\w.]))([A-Z]\w*)\.[A-Z]\w*")]
    private static partial Regex Qualified();

    [GeneratedRegex(@"\b[A-Z]\w*\b")]
    private static partial Regex Word();

    private static string FolderOf(string root, string file)
    {
        string[] parts = Path.GetRelativePath(root, file).Split(Path.DirectorySeparatorChar);
        return parts.Length > 1 ? parts[0] : "Node";
    }

    /// <summary>Folder → the folders it uses, each with one file and name that shows the use.</summary>
    internal static Dictionary<string, Dictionary<string, string>> Uses()
    {
        string root = Path.Combine(Repo.Root ?? throw new InvalidOperationException("repository root not found"), "src", "StorageNode");
        string[] files = Directory.EnumerateFiles(root, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"))
            .ToArray();
        var declaredIn = new Dictionary<string, HashSet<string>>();
        var text = new Dictionary<string, string>();
        foreach (string f in files)
        {
            text[f] = File.ReadAllText(f);
            foreach (Match m in Declaration().Matches(text[f]))
            {
                if (!declaredIn.TryGetValue(m.Groups[1].Value, out HashSet<string>? set)) declaredIn[m.Groups[1].Value] = set = [];
                set.Add(FolderOf(root, f));
            }
        }
        HashSet<string> folders = [.. declaredIn.Values.SelectMany(s => s)];
        var uses = new Dictionary<string, Dictionary<string, string>>();
        void Use(string from, string to, string why)
        {
            if (from == to) return;
            if (!uses.TryGetValue(from, out Dictionary<string, string>? u)) uses[from] = u = [];
            u.TryAdd(to, why);
        }
        foreach ((string f, string t) in text)
        {
            string from = FolderOf(root, f), name = Path.GetFileName(f);
            string body = Regex.Replace(t, @"//.*", "");
            body = Regex.Replace(body, "\"(?:\\\\.|[^\"\\\\])*\"", "\"\"");
            foreach (Match m in Qualified().Matches(body))
                if (folders.Contains(m.Groups[1].Value) && !NotAType.Contains((name, m.Groups[1].Value))) Use(from, m.Groups[1].Value, $"{name}: {m.Value}");
            body = Regex.Replace(body, @"\.\s*[A-Z]\w*", ".x"); // member access
            body = Regex.Replace(body, @"\b(string|int|uint|long|ulong|bool|byte|TimeSpan)\??\s+[A-Z]\w*", "x"); // simple-typed members
            body = Regex.Replace(body, @"(?m)^(\s*)[A-Z]\w*\s*=(?!=)", "$1x ="); // initializers, assignments
            foreach (string w in Word().Matches(body).Select(m => m.Value).Distinct())
            {
                if (NotAType.Contains((name, w)) || !declaredIn.TryGetValue(w, out HashSet<string>? where) || where.Contains(from)) continue;
                foreach (string to in where) Use(from, to, $"{name}: {w}");
            }
        }
        return uses;
    }

    [Fact]
    public void NoFolderOfTheNodeUsesOneThatUsesItBack()
    {
        Dictionary<string, Dictionary<string, string>> uses = Uses();
        Assert.True(uses.Count >= 8, $"only {uses.Count} folders use another: the reading found too little ({string.Join(", ", uses.Keys)})");
        // Any cycle, not only two folders using each other: a depth-first search for a way back.
        var cycles = new List<string>();
        foreach (string start in uses.Keys)
        {
            var stack = new Stack<List<string>>();
            stack.Push([start]);
            var seen = new HashSet<string>();
            while (stack.Count > 0)
            {
                List<string> path = stack.Pop();
                foreach (string next in uses.TryGetValue(path[^1], out Dictionary<string, string>? u) ? u.Keys : Enumerable.Empty<string>())
                {
                    if (next == start)
                    {
                        cycles.Add(string.Join(" -> ", path.Append(next).Zip(path.Append(next).Skip(1), (a, b) => $"{a} ({uses[a][b]})")) + $" -> {start}");
                        continue;
                    }
                    if (seen.Add(next)) stack.Push([.. path, next]);
                }
            }
        }
        Assert.True(cycles.Count == 0, "folders that use each other:\n" + string.Join("\n", cycles.Distinct()));
    }

    [Fact]
    public void TheReadingSeesAUseThatIsThere()
    {
        // The heuristics find what they must: the target names no transport, the transports name the target.
        Dictionary<string, Dictionary<string, string>> uses = Uses();
        Assert.Contains("Target", uses["Transport"].Keys);
        Assert.DoesNotContain("Transport", uses["Target"].Keys);
        Assert.Contains("Control", uses["Hosting"].Keys);
        Assert.DoesNotContain("Control", uses["Node"].Keys);
    }
}
