using System.Diagnostics;
using System.Runtime.InteropServices;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Testing;

/// <summary>
/// What the stale-write tests do as a host: tagged writes of a few blocks, submitted without waiting (so a test can
/// leave one in flight on a path it then abandons), and a read of the tag that landed last.
/// </summary>
public static class HostWrites
{
    public const ulong Lba = 2048;
    public const uint Blocks = 8;

    public sealed class Pending : IHostCompletion
    {
        public volatile bool Done;
        public CompletionQueueEntry Cqe;
        internal GCHandle Pin;

        public void OnHostComplete(long token, in CompletionQueueEntry cqe)
        {
            Cqe = cqe;
            Done = true;
        }

        public bool Succeeded => Done && Cqe.StatusField.IsSuccess;
    }

    public static byte[] Pattern(byte tag)
    {
        var b = new byte[Blocks * 512];
        Array.Fill(b, tag);
        return b;
    }

    /// <summary>Submits a write of <paramref name="tag"/> and returns at once (the buffer stays pinned for the test's life).</summary>
    public static unsafe Pending Submit(IoQueue q, byte tag, uint nsid = 1, ulong lba = Lba)
    {
        var p = new Pending();
        byte[] data = Pattern(tag);
        p.Pin = GCHandle.Alloc(data, GCHandleType.Pinned);
        Assert.True(q.Transport.TrySubmit(IoQueue.ReadWriteSqe(IoOpcode.Write, nsid, lba, Blocks), (byte*)p.Pin.AddrOfPinnedObject(),
            (uint)data.Length, DataDirection.HostToController, p, 1));
        return p;
    }

    /// <summary>Polls the queue (while it works) until <paramref name="done"/> or the limit.</summary>
    public static void PollUntil(IoQueue q, Func<bool> done, TimeSpan limit)
    {
        var sw = Stopwatch.StartNew();
        while (!done() && sw.Elapsed < limit)
        {
            if (!q.Transport.IsBroken)
            {
                try { q.Transport.Poll(); }
                catch (NvmeTransportException) { }
            }
            Thread.Sleep(1);
        }
    }

    public static NvmeStatus Write(IoQueue q, byte tag, uint nsid = 1, ulong lba = Lba) => q.Write(nsid, lba, Blocks, Pattern(tag));

    /// <summary>
    /// A write as a multipath host sends it: retried while it fails with a path status (e.g. the ANA Transition a node
    /// answers for a command it cannot yet tell from an old copy, or for a first relayed command whose relay took longer
    /// to open than its deadline; docs/ha.md), for at most <paramref name="patience"/> (default 10 s), 10 ms apart.
    /// </summary>
    public static NvmeStatus WriteRetryingPathErrors(IoQueue q, byte tag, uint nsid = 1, ulong lba = Lba, TimeSpan? patience = null)
    {
        var sw = Stopwatch.StartNew();
        TimeSpan limit = patience ?? TimeSpan.FromSeconds(10);
        while (true)
        {
            NvmeStatus st = Write(q, tag, nsid, lba);
            if (st.IsSuccess || st.Type != StatusCodeType.PathRelated || sw.Elapsed > limit) return st;
            Thread.Sleep(10);
        }
    }

    /// <summary>The tag the blocks hold (all blocks must agree).</summary>
    public static byte ReadTag(IoQueue q, uint nsid = 1, ulong lba = Lba)
    {
        var back = new byte[Blocks * 512];
        NvmeStatus st = q.Read(nsid, lba, Blocks, back);
        Assert.True(st.IsSuccess, $"read back: {st}");
        Assert.All(back, b => Assert.Equal(back[0], b));
        return back[0];
    }
}
