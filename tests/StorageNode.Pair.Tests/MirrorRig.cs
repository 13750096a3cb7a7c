using StorageNode.Bdevs;
using StorageNode.Pair;
using StorageNode.Testing;

namespace StorageNode.Pair.Tests;

/// <summary>What the mirror's tests share: a pair with <c>Cluster:Mirror</c>, its mirrors, and the RAM bdevs' bytes.</summary>
internal static unsafe class MirrorRig
{
    public static readonly Dictionary<string, string?> Mirror = new() { ["Cluster:Mirror"] = "true" };

    public static NamespaceMirror MirrorOf(Node owner, uint nsid) => owner.Pair!.Links[0].Mirrors.Single(m => m.Nsid == nsid);

    /// <summary>A pair with Cluster:Mirror on both nodes, healthy, both replicas in sync.</summary>
    public static TestPair InSyncPair(int reactors = 1)
    {
        var pair = new TestPair(Mirror, Mirror, reactors);
        try
        {
            pair.WaitHealthy();
            TestPair.WaitUntil(() => MirrorOf(pair.A, 1).IsInSync && MirrorOf(pair.B, 2).IsInSync, "both replicas in sync", TimeSpan.FromSeconds(30));
            return pair;
        }
        catch
        {
            pair.Dispose();
            throw;
        }
    }

    /// <summary>The bytes of a RAM bdev (its memory, read in place: the bdev completes every operation inline).</summary>
    public static ReadOnlySpan<byte> Contents(Node node, Bdev bdev, ulong offset, int length)
        => new(bdev.CreateChannel(node.Reactors[0]).ZeroCopyRead(offset, (uint)length), length);

    public static Bdev Replica(Node node, uint nsid) => node.Bdevs.Single(b => b.Name == $"replica:{nsid}");

    public static byte[] Fill(byte b, int n) => [.. Enumerable.Repeat(b, n)];
}
