using System.Text.Json.Nodes;
using StorageNode.Bdevs;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Pair;
using StorageNode.Testing;

namespace StorageNode.Pair.Tests;

/// <summary>What the mirror's tests share: a pair with <c>Cluster:Mirror</c>, its mirrors, and the RAM bdevs' bytes.</summary>
internal static unsafe class MirrorRig
{
    public static readonly Dictionary<string, string?> Mirror = new() { ["Cluster:Mirror"] = "true" };

    public static NamespaceMirror MirrorOf(Node owner, uint nsid) => owner.Pair!.Links[0].Mirrors.Single(m => m.Nsid == nsid);

    /// <summary>A pair with Cluster:Mirror on both nodes, healthy, both replicas in sync.</summary>
    public static TestPair InSyncPair(int reactors = 1, Dictionary<string, string?>? moreA = null, Dictionary<string, string?>? moreB = null)
    {
        var pair = new TestPair(With(Mirror, moreA), With(Mirror, moreB), reactors);
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

    public static Bdev Replica(Node node, uint nsid) => node.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(nsid)!.Replica!;

    public static Dictionary<string, string?> With(Dictionary<string, string?> a, Dictionary<string, string?>? b)
    {
        var d = new Dictionary<string, string?>(a);
        foreach (var kv in b ?? []) d[kv.Key] = kv.Value;
        return d;
    }

    /// <summary>
    /// A node's settings that keep its replica of the partner's namespace <paramref name="nsid"/> in a file (a file bdev,
    /// io_uring), <paramref name="path"/>, of the test pair's namespace size.
    /// </summary>
    public static Dictionary<string, string?> FileReplica(uint nsid, string path, string? stateDirectory = null) => new()
    {
        ["Node:StateDirectory"] = stateDirectory,
        ["Bdevs:1:Name"] = "Replica",
        ["Bdevs:1:Type"] = "file",
        ["Bdevs:1:Path"] = path,
        ["Bdevs:1:SizeMiB"] = "32",
        [$"Subsystems:0:Namespaces:{nsid - 1}:ReplicaBdev"] = "Replica",
    };

    /// <summary>Bytes of a file another process writes (a node's file bdev), read at an offset.</summary>
    public static byte[] FileBytes(string path, long offset, int length)
    {
        var bytes = new byte[length];
        using Microsoft.Win32.SafeHandles.SafeFileHandle f = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        for (int done = 0; done < length;)
        {
            int n = RandomAccess.Read(f, bytes.AsSpan(done), offset + done);
            if (n == 0) throw new EndOfStreamException($"{path}: {length} bytes at {offset} past its end");
            done += n;
        }
        return bytes;
    }

    /// <summary>A 512-byte block that says which version of which LBA it is (the takeover and giveback tests' writes).</summary>
    public static byte[] Block(uint version, ulong lba)
    {
        var b = new byte[512];
        BitConverter.TryWriteBytes(b.AsSpan(0), version);
        BitConverter.TryWriteBytes(b.AsSpan(8), lba);
        for (int i = 16; i < b.Length; i++) b[i] = (byte)(version * 31 + lba + (ulong)i);
        return b;
    }

    /// <summary>
    /// Writes versions <paramref name="first"/> to <paramref name="last"/> of NSID 1, each to a random LBA below 256, through
    /// <paramref name="hosts"/> in turn; each must be acknowledged, and is noted in <paramref name="acked"/> (LBA: version).
    /// </summary>
    public static void WriteVersions(Dictionary<ulong, uint> acked, Random rnd, uint first, uint last, string through, params NvmeHost[] hosts)
    {
        for (uint v = first; v <= last; v++)
        {
            ulong lba = (ulong)rnd.Next(0, 256);
            NvmeStatus st = hosts[(int)(v % (uint)hosts.Length)].IoQueues[0].Write(1, lba, 1, Block(v, lba));
            Assert.True(st.IsSuccess, $"write {v} {through}: {st}");
            acked[lba] = v;
        }
    }

    /// <summary>Reads every block in <paramref name="acked"/> of NSID 1 through <paramref name="h"/>: each must hold the version last acknowledged.</summary>
    public static void ReadBack(NvmeHost h, Dictionary<ulong, uint> acked, string when)
    {
        var buf = new byte[512];
        foreach ((ulong lba, uint v) in acked)
        {
            NvmeStatus st = h.IoQueues[0].Read(1, lba, 1, buf);
            Assert.True(st.IsSuccess, $"read LBA {lba} {when}: {st}");
            Assert.True(buf.AsSpan().SequenceEqual(Block(v, lba)), $"LBA {lba} {when}: not version {v}, the last acknowledged (version {BitConverter.ToUInt32(buf)})");
        }
    }

    /// <summary>An ANA group's ownership as a node of a process pair reports it (<c>cluster_get_status</c>).</summary>
    public static JsonObject Group(ProcessPair pair, char node, uint group)
        => pair.Rpc(node, "cluster_get_status")!["links"]![0]!["groups"]!.AsArray().Single(g => g!["anagrpid"]!.GetValue<uint>() == group)!.AsObject();

    /// <summary>A node's settings with <c>Cluster:Mirror</c> and the witness <paramref name="w"/>, and <paramref name="more"/>.</summary>
    public static Dictionary<string, string?> WithWitness(WitnessProcess w, Dictionary<string, string?>? more = null)
    {
        Dictionary<string, string?> s = With(Mirror, more);
        s[w.Setting.Key] = w.Setting.Value;
        return s;
    }

    /// <summary>A process pair's NSID 1 (A's) in sync on A and whole on B (its replica).</summary>
    public static void WaitInSync(ProcessPair pair)
    {
        JsonObject MirrorOfA() => pair.Rpc('A', "cluster_get_status")!["links"]![0]!["mirrors"]!.AsArray().Single(m => m!["nsid"]!.GetValue<uint>() == 1)!.AsObject();
        JsonObject ReplicaOnB() => pair.Rpc('B', "cluster_get_status")!["links"]![0]!["replicas"]!.AsArray().Single(r => r!["nsid"]!.GetValue<uint>() == 1)!.AsObject();
        TestPair.WaitUntil(() => MirrorOfA()["state"]!.GetValue<string>() == "in_sync" && ReplicaOnB()["whole"]!.GetValue<bool>(),
            "A's NSID 1 in sync and whole on B", TimeSpan.FromSeconds(60));
    }

    /// <summary>
    /// Both channels of an in-process pair partitioned (heartbeats silenced, the interconnect blocked and cut both ways)
    /// and group 1 taken over by B by force, as an operator who took the partition for A's death would: A still serves
    /// it alone. The partition stays; the subsystems of A and B are returned.
    /// </summary>
    public static (Target.Subsystem A, Target.Subsystem B) PartitionedAndTakenOverByB(TestPair pair)
    {
        pair.A.Pair!.SilenceHeartbeatChannel();
        pair.B.Pair!.SilenceHeartbeatChannel();
        pair.InterconnectAtoB.Blocked = pair.InterconnectBtoA.Blocked = true;
        pair.InterconnectAtoB.Cut();
        pair.InterconnectBtoA.Cut();
        TestPair.WaitUntil(() => pair.B.Pair!.Status == PartnerStatus.PartnerDown, "B to hear A on none of its channels", TimeSpan.FromSeconds(30));
        Target.Subsystem sa = pair.A.Target.FindSubsystem(TestPair.Nqn)!, sb = pair.B.Target.FindSubsystem(TestPair.Nqn)!;
        pair.B.Pair!.TakeOver(sb, 1, force: true);
        return (sa, sb);
    }

    public static byte[] Fill(byte b, int n) => [.. Enumerable.Repeat(b, n)];
}
