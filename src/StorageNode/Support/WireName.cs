namespace StorageNode.Support;

/// <summary>The names a line-based protocol (the witness's datagrams) carries as one word each.</summary>
public static class WireName
{
    /// <summary>A name the protocol carries (cluster, node, NQN): printable ASCII, no spaces, 1-223 bytes.</summary>
    public static bool IsWord(string s)
    {
        if (s.Length is 0 or > 223) return false;
        foreach (char c in s)
            if (c <= ' ' || c > '~') return false;
        return true;
    }
}
