using System.Runtime.InteropServices;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests;

/// <summary>
/// Abort ends a command that has not started (as SPDK's target does): one waiting for a data buffer, one parked
/// behind a Compare and Write's range lock, the first of a fused pair waiting for its second, an Asynchronous Event
/// Request. It completes with Command Abort Requested and the Abort's DW0 bit 0 is clear; anything else runs on, and
/// DW0 bit 0 says it was not aborted.
/// </summary>
public sealed unsafe class AbortTests
{
    [Fact]
    public void ACommandWaitingForABufferIsAbortedAndTheOneHoldingItRunsOn()
    {
        // One large buffer: a write that holds it while its data is not sent, and a second that must wait for it.
        using var node = new TestNode(new() { ["Node:Pools:LargeBufferCount"] = "1" });
        using NvmeHost h = node.Connect();
        IoQueue q = h.IoQueues[0];
        const uint Blocks = 512; // 256 KiB: a large buffer, data by R2T
        byte[] a = new byte[Blocks * 512], b = new byte[Blocks * 512];
        Array.Fill(a, (byte)0xA1);
        Array.Fill(b, (byte)0xB2);
        GCHandle pa = GCHandle.Alloc(a, GCHandleType.Pinned), pb = GCHandle.Alloc(b, GCHandleType.Pinned);
        try
        {
            var first = new HostWrites.Pending();
            var second = new HostWrites.Pending();
            // Sent without receiving: the host does not answer the first write's R2T yet, so it keeps the buffer.
            Assert.True(q.Transport.TrySubmit(IoQueue.ReadWriteSqe(IoOpcode.Write, 1, 0, Blocks), (byte*)pa.AddrOfPinnedObject(), (uint)a.Length,
                DataDirection.HostToController, first, 0));
            q.Queue.SendPending();
            Thread.Sleep(300);
            Assert.True(q.Transport.TrySubmit(IoQueue.ReadWriteSqe(IoOpcode.Write, 1, Blocks, Blocks), (byte*)pb.AddrOfPinnedObject(), (uint)b.Length,
                DataDirection.HostToController, second, 0));
            ushort cid = q.Queue.LastCid;
            q.Queue.SendPending();
            Thread.Sleep(300);

            Assert.True(h.Abort(q.Qid, cid));
            HostWrites.PollUntil(q, () => first.Done && second.Done, TimeSpan.FromSeconds(10));
            Assert.True(second.Done);
            Assert.Equal((StatusCodeType.Generic, GenericStatus.AbortedByRequest), (second.Cqe.StatusField.Type, (byte)second.Cqe.StatusField.Code));
            Assert.True(first.Succeeded, first.Cqe.StatusField.ToString());
            // The aborted write wrote nothing; the other did.
            var back = new byte[Blocks * 512];
            Assert.True(q.Read(1, Blocks, Blocks, back).IsSuccess);
            Assert.All(back, x => Assert.Equal(0, x));
            Assert.True(q.Read(1, 0, Blocks, back).IsSuccess);
            Assert.All(back, x => Assert.Equal(0xA1, x));
            // A command that is done (or never was) is not aborted.
            Assert.False(h.Abort(q.Qid, cid));
            Assert.False(h.Abort(9, 0));
        }
        finally
        {
            pa.Free();
            pb.Free();
        }
    }

    [Fact]
    public void TheFirstOfAFusedPairWaitingForItsSecondIsAborted()
    {
        using var node = new TestNode();
        using NvmeHost h = node.Connect();
        IoQueue q = h.IoQueues[0];
        byte[] data = new byte[512];
        var first = new HostWrites.Pending();
        SubmissionQueueEntry cmp = IoQueue.ReadWriteSqe(IoOpcode.Compare, 1, 0, 1);
        cmp.Flags |= CommandFlags.FuseFirst;
        fixed (byte* p = data)
        {
            Assert.True(q.Transport.TrySubmit(cmp, p, 512, DataDirection.HostToController, first, 0));
            ushort cid = q.Queue.LastCid;
            HostWrites.PollUntil(q, () => first.Done, TimeSpan.FromMilliseconds(300));
            Assert.False(first.Done);
            Assert.True(h.Abort(q.Qid, cid));
            HostWrites.PollUntil(q, () => first.Done, TimeSpan.FromSeconds(5));
        }
        Assert.Equal(GenericStatus.AbortedByRequest, (byte)first.Cqe.StatusField.Code);
        // The queue goes on: the next command is not taken for the aborted one's second.
        Assert.True(q.Write(1, 0, 1, new byte[512]).IsSuccess);
    }
}
