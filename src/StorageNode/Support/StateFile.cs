using StorageNode.Interop;

namespace StorageNode.Support;

/// <summary>
/// The small files a node keeps in its state directory (reservations, data generations, replica records): named after
/// the node, the subsystem and the namespace, and replaced whole and durably — written to <c>PATH.tmp</c>, flushed to
/// the device, renamed over <c>PATH</c>, and the folder's entry flushed too, so that a crash or a power loss leaves the
/// old contents or the new, never neither and never a torn file.
/// </summary>
internal static class StateFile
{
    /// <summary><c>DIR/NODE-NQN-nsNSID.KIND</c>, the NQN's characters other than letters, digits, '.' and '-' as '_'.</summary>
    public static string PathOf(string directory, string node, string nqn, uint nsid, string kind)
        => PathOf(directory, node, nqn, FormattableString.Invariant($"ns{nsid}"), kind);

    /// <summary><c>DIR/NODE-NQN-ITEM.KIND</c> (ITEM: <c>nsN</c> for a namespace, <c>groupG</c> for an ANA group), the NQN as above.</summary>
    public static string PathOf(string directory, string node, string nqn, string item, string kind)
    {
        var safe = new System.Text.StringBuilder(nqn.Length);
        foreach (char c in nqn) safe.Append(char.IsAsciiLetterOrDigit(c) || c is '.' or '-' ? c : '_');
        return Path.Combine(directory, $"{node}-{safe}-{item}.{kind}");
    }

    /// <summary>Replaces the file's contents durably (see the class). Throws <see cref="IOException"/> on failure.</summary>
    public static void Replace(string path, ReadOnlySpan<byte> contents)
    {
        string tmp = path + ".tmp";
        using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            f.Write(contents);
            f.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
        SyncFolderOf(path);
    }

    /// <summary>Deletes the file, durably (the folder's entry flushed), if it exists.</summary>
    public static void Delete(string path)
    {
        if (!File.Exists(path)) return;
        File.Delete(path);
        SyncFolderOf(path);
    }

    /// <summary>Flushes the folder holding <paramref name="path"/> (its entries: a rename or a new file survives a power loss).</summary>
    public static void SyncFolderOf(string path)
    {
        string folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
        int fd = FileIo.Open(folder, FileIo.O_RDONLY | FileIo.O_DIRECTORY | FileIo.O_CLOEXEC, 0);
        if (fd < 0) throw new IOException($"{folder}: cannot open the folder to flush it (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
        try
        {
            if (FileIo.FSync(fd) != 0) throw new IOException($"{folder}: fsync of the folder failed (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
        }
        finally
        {
            FileIo.Close(fd);
        }
    }
}

/// <summary>
/// A mirrored namespace's data generation kept by its owner (docs/ha.md, "An owner that lost its data"):
/// <c>NODE-NQN-nsN.generation</c>, <c>GENERATION new|taken</c>.
/// </summary>
internal static class DataGenerationFile
{
    public static string PathOf(string directory, string node, string nqn, uint nsid) => StateFile.PathOf(directory, node, nqn, nsid, "generation");

    public static void Write(string path, long generation, bool taken)
        => StateFile.Replace(path, System.Text.Encoding.ASCII.GetBytes($"{generation:x16} {(taken ? "taken" : "new")}\n"));
}
