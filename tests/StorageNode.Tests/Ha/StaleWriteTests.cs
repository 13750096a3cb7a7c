using System.Diagnostics;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests.Ha;

/// <summary>
/// No stale writes (docs/ha.md): a write relayed through the partner is held in flight, the host's path to the
/// partner is killed, the host retries on the owner and writes again, then the old copy is released. The old
/// copy must never land after the host holds a completion for the retry.
/// </summary>
public class StaleWriteTests
{
    private const ulong Lba = 2048;
    private const uint Blocks = 8;

    private sealed class Pending : IHostCompletion
    {
        public volatile bool Done;
        public CompletionQueueEntry Cqe;
        public void OnHostComplete(long token, in CompletionQueueEntry cqe)
        {
            Cqe = cqe;
            Done = true;
        }
    }

    private static byte[] Pattern(byte tag)
    {
        var b = new byte[Blocks * 512];
        Array.Fill(b, tag);
        return b;
    }

    private static unsafe Pending SubmitWrite(IoQueue q, byte[] data, uint nsid = 1)
    {
        var p = new Pending();
        // The buffer must stay put until completion: pin it for the test's lifetime.
        var handle = System.Runtime.InteropServices.GCHandle.Alloc(data, System.Runtime.InteropServices.GCHandleType.Pinned);
        Assert.True(q.Queue.TrySubmit(IoQueue.ReadWriteSqe(IoOpcode.Write, nsid, Lba, Blocks), (byte*)handle.AddrOfPinnedObject(),
            (uint)data.Length, DataDirection.HostToController, p, 1));
        return p;
    }

    private static void PollUntil(IoQueue q, Func<bool> done, TimeSpan limit)
    {
        var sw = Stopwatch.StartNew();
        while (!done() && sw.Elapsed < limit)
        {
            if (!q.Queue.IsBroken) q.Queue.Poll();
            Thread.Sleep(1);
        }
    }

    private static byte ReadTag(IoQueue q)
    {
        var back = new byte[Blocks * 512];
        Assert.True(q.Read(1, Lba, Blocks, back).IsSuccess);
        Assert.All(back, b => Assert.Equal(back[0], b));
        return back[0];
    }

    [Fact]
    public void OldCopyHeldOnTheProxyIsDroppedWhenTheHostConnectionDies()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId);
        using NvmeHost viaB = pair.Connect(toB.Endpoint, hostId, new NvmeHostOptions { SendKeepAlive = false });
        IoQueue a = viaA.IoQueues[0], b = viaB.IoQueues[0];
        Assert.True(a.Write(1, Lba, Blocks, Pattern(0x10)).IsSuccess);

        pair.B.Pair!.Links[0].StallSends = true;           // the relayed write sits on B
        Pending old = SubmitWrite(b, Pattern(0x11));
        PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(300));
        Assert.False(old.Done);
        toB.Cut();                                             // the host's path to B dies
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(5));
        Assert.True(old.Done);
        Assert.False(old.Cqe.StatusField.IsSuccess);

        Assert.True(a.Write(1, Lba, Blocks, Pattern(0x11)).IsSuccess); // the retry, on the owner
        Assert.True(a.Write(1, Lba, Blocks, Pattern(0x12)).IsSuccess); // and a newer write
        pair.B.Pair!.Links[0].StallSends = false;          // release the old copy
        TestPair.WaitUntil(() => pair.B.Pair!.Links[0].QueuedRelays == 0, "B's proxy to settle");
        Thread.Sleep(200);
        Assert.Equal(0x12, ReadTag(a));
    }

    [Fact]
    public void OldCopyInFlightOnTheInterconnectLandsBeforeTheRetryCompletes()
    {
        using var pair = new TestPair(
            overridesA: new() { ["Cluster:HeartbeatTimeoutMs"] = "10000" },
            overridesB: new() { ["Cluster:HeartbeatTimeoutMs"] = "10000" });
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaB = pair.Connect(toB.Endpoint, hostId, new NvmeHostOptions { SendKeepAlive = false });
        IoQueue b = viaB.IoQueues[0];
        // Relay once so the relay is open, then freeze the interconnect from B to A.
        Assert.True(b.Write(1, Lba, Blocks, Pattern(0x20)).IsSuccess);
        // The host reaches the owner on an association made after its relay opened (as after a failover): one made
        // before would be closed at its first I/O, since it could still carry old copies (docs/ha.md).
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId);
        IoQueue a = viaA.IoQueues[0];
        pair.InterconnectBtoA.PauseUpstream = true;
        Pending old = SubmitWrite(b, Pattern(0x21));
        PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(300));
        Assert.False(old.Done);
        toB.Cut();
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(5));
        Assert.False(old.Cqe.StatusField.IsSuccess);

        // The retry on the owner waits for the old copy (it was sent: the drain counts it).
        Pending retry = SubmitWrite(a, Pattern(0x21));
        PollUntil(a, () => retry.Done, TimeSpan.FromMilliseconds(500));
        Assert.False(retry.Done, "the retry completed while the old copy was still in flight");
        pair.InterconnectBtoA.PauseUpstream = false;
        PollUntil(a, () => retry.Done, TimeSpan.FromSeconds(10));
        Assert.True(retry.Done);
        Assert.True(retry.Cqe.StatusField.IsSuccess);
        Assert.True(a.Write(1, Lba, Blocks, Pattern(0x22)).IsSuccess);
        Thread.Sleep(200);
        Assert.Equal(0x22, ReadTag(a));
        Assert.Contains(pair.LogsA.Lines, l => l.Contains("commands now run through"));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3 * 3600)]  // B's clock hours ahead of A's, as on two machines
    [InlineData(-3 * 3600)] // and hours behind
    public void OldCopyPastItsDeadlineNeverStarts(int clockOffsetB)
    {
        using var pair = new TestPair(
            overridesA: new() { ["Cluster:HeartbeatTimeoutMs"] = "20000", ["Cluster:RelayTimeoutMs"] = "800" },
            overridesB: new() { ["Cluster:HeartbeatTimeoutMs"] = "20000", ["Cluster:RelayTimeoutMs"] = "800", ["Cluster:ClockOffsetSeconds"] = clockOffsetB.ToString() });
        pair.WaitHealthy();
        using var toB = new TcpForwarder(pair.EndpointB);
        Guid hostId = Guid.NewGuid();
        using NvmeHost viaB = pair.Connect(toB.Endpoint, hostId, new NvmeHostOptions { SendKeepAlive = false });
        IoQueue b = viaB.IoQueues[0];
        Assert.True(b.Write(1, Lba, Blocks, Pattern(0x30)).IsSuccess);
        // The host reaches the owner on an association made after its relay opened (as after a failover): one made
        // before would be closed at its first I/O, since it could still carry old copies (docs/ha.md).
        using NvmeHost viaA = pair.Connect(pair.EndpointA, hostId);
        IoQueue a = viaA.IoQueues[0];
        pair.InterconnectBtoA.PauseUpstream = true;
        Pending old = SubmitWrite(b, Pattern(0x31));
        PollUntil(b, () => old.Done, TimeSpan.FromMilliseconds(200));
        toB.Cut();
        PollUntil(b, () => old.Done, TimeSpan.FromSeconds(5));

        // The drain waits at most the relay timeout; then the retry and a newer write go ahead.
        Pending retry = SubmitWrite(a, Pattern(0x31));
        PollUntil(a, () => retry.Done, TimeSpan.FromSeconds(10));
        Assert.True(retry.Cqe.StatusField.IsSuccess);
        Assert.True(a.Write(1, Lba, Blocks, Pattern(0x32)).IsSuccess);
        // Release the old copy long after its deadline: it must be refused, not executed.
        pair.InterconnectBtoA.PauseUpstream = false;
        Thread.Sleep(1000);
        Assert.Equal(0x32, ReadTag(a));
    }
}
