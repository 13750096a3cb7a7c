using System.Text.Json.Nodes;
using StorageNode.Bdevs;
using StorageNode.Config;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Pair;
using StorageNode.Target;
using StorageNode.Testing;
using static StorageNode.Testing.HostWrites;
using static StorageNode.Pair.Tests.MirrorRig;

namespace StorageNode.Pair.Tests;

/// <summary>
/// The mirror's defects a review found (issue 23), one test each, each checked to fail before its fix: a replica that is
/// silently wrong while both nodes call it in sync is the one thing a takeover cannot survive.
/// </summary>
public sealed unsafe class MirrorDefectTests
{
    /// <summary>
    /// Defect 1: a write whose copy is on its way to the replica when its host's connection closes keeps its slot and
    /// its data buffer until the replica answers. Were they released, the next write on the reactor would get the same
    /// buffer (the pools hand out the last one returned), and the first write's copy would carry the second's bytes.
    /// </summary>
    [Fact]
    public void AWriteWhoseConnectionClosesWhileItsCopyIsOnItsWayStillSendsItsOwnData()
    {
        using TestPair pair = InSyncPair();
        ProxyQueue copies = pair.A.Pair!.Links[0].QueueFor(0)!;
        Bdev local = pair.A.GetBdev("Local");
        copies.StallMirrors = true;
        Guid id1 = Guid.NewGuid(), id2 = Guid.NewGuid();
        NvmeHost h1 = pair.Connect(pair.EndpointA, id1);
        using NvmeHost h2 = pair.Connect(pair.EndpointA, id2);
        try
        {
            Submit(h1.IoQueues[0], 0x55, lba: 100);
            bool OnA(ulong lba, byte tag) => Contents(pair.A, local, lba * 512, 4096).SequenceEqual(Fill(tag, 4096));
            PollUntil(h1.IoQueues[0], () => OnA(100, 0x55), TimeSpan.FromSeconds(10));
            Assert.True(OnA(100, 0x55), "host 1's write did not run on A");
            h1.Dispose(); // its write's copy is still held on A
            TestPair.WaitUntil(() => !pair.A.Target.FindSubsystem(TestPair.Nqn)!.Controllers.Any(c => c.HostId == id1), "host 1's controller gone on A");

            Pending second = Submit(h2.IoQueues[0], 0xAA, lba: 5000);
            PollUntil(h2.IoQueues[0], () => OnA(5000, 0xAA), TimeSpan.FromSeconds(10));
            Assert.True(OnA(5000, 0xAA), "host 2's write did not run on A");
            copies.StallMirrors = false;
            PollUntil(h2.IoQueues[0], () => second.Done, TimeSpan.FromSeconds(10));
            Assert.True(second.Succeeded, $"host 2's write: {second.Cqe.StatusField}");
            pair.WaitRelaysSettled();
        }
        finally
        {
            copies.StallMirrors = false;
            h1.Dispose();
        }
        Assert.True(MirrorOf(pair.A, 1).IsInSync);
        Assert.True(Contents(pair.B, Replica(pair.B, 1), 100 * 512, 4096).SequenceEqual(Fill(0x55, 4096)), "the replica's LBA 100 is not host 1's write");
        Assert.True(Contents(pair.B, Replica(pair.B, 1), 5000 * 512, 4096).SequenceEqual(Fill(0xAA, 4096)), "the replica's LBA 5000 is not host 2's write");
    }

    /// <summary>
    /// Defect 3: two overlapping writes run while the replica is out of sync (W1, then W2: A keeps W2) and complete
    /// after a resync began, W2 first. Mirrored as they completed, W1's copy would reach the replica last, and the
    /// resync, not knowing of either, would never repair it. A write is marked missed if it ran out of sync, whenever
    /// it completes: the resync (which waits for it) copies its region. Depends on the pair's reconnect interval
    /// (TestPair's 100 ms); each step waits for its condition.
    /// </summary>
    [Fact]
    public void WritesThatRanOutOfSyncAndCompleteDuringTheResyncAreResynced()
    {
        int place = 0;
        using var pair = new TestPair(Mirror, Mirror, reactors: 2, beforeStart: (a, _) => a.Target.PlaceConnection = _ => Volatile.Read(ref place));
        pair.WaitHealthy();
        NamespaceMirror mirror = MirrorOf(pair.A, 1);
        TestPair.WaitUntil(() => mirror.IsInSync && MirrorOf(pair.B, 2).IsInSync, "both replicas in sync", TimeSpan.FromSeconds(30));
        using NvmeHost h1 = pair.Connect(pair.EndpointA, Guid.NewGuid()); // A's reactor 0
        Volatile.Write(ref place, 1);
        using NvmeHost h2 = pair.Connect(pair.EndpointA, Guid.NewGuid()); // A's reactor 1
        var local = (MallocBdev)pair.A.GetBdev("Local");

        // Out of sync: A's link to B goes down and stays down.
        pair.InterconnectAtoB.Blocked = true;
        pair.InterconnectAtoB.Cut();
        TestPair.WaitUntil(() => mirror.State == "out_of_sync", "the replica out of sync");
        local.HoldWrites = true;
        Pending w1 = Submit(h1.IoQueues[0], 0x11, lba: 500);
        PollUntil(h1.IoQueues[0], () => local.HeldWrites == 1, TimeSpan.FromSeconds(10));
        Pending w2 = Submit(h2.IoQueues[0], 0x22, lba: 500);
        PollUntil(h2.IoQueues[0], () => local.HeldWrites == 2, TimeSpan.FromSeconds(10));
        Assert.Equal(2, local.HeldWrites);
        Assert.True(Contents(pair.A, local, 500 * 512, 4096).SequenceEqual(Fill(0x22, 4096)), "W2 ran after W1 on A");

        // The link returns and a resync begins (its whole-namespace lock waits for the two writes).
        pair.InterconnectAtoB.Blocked = false;
        TestPair.WaitUntil(() => mirror.State == "resyncing", "the resync to begin", TimeSpan.FromSeconds(20));
        local.HoldWrites = false;
        Assert.True(local.ReleaseHeldWrite(newest: true)); // W2 completes first
        PollUntil(h2.IoQueues[0], () => w2.Done, TimeSpan.FromSeconds(10));
        Assert.True(local.ReleaseHeldWrite());
        PollUntil(h1.IoQueues[0], () => w1.Done, TimeSpan.FromSeconds(10));
        Assert.True(w1.Succeeded && w2.Succeeded, $"W1 {w1.Cqe.StatusField}, W2 {w2.Cqe.StatusField}");
        TestPair.WaitUntil(() => mirror.IsInSync, "the resync to finish", TimeSpan.FromSeconds(30));
        Assert.True(Contents(pair.B, Replica(pair.B, 1), 500 * 512, 4096).SequenceEqual(Fill(0x22, 4096)), "the replica does not hold W2, the last write that ran on A");
    }

    /// <summary>
    /// Defect 5: a fused Compare and Write whose Write fails on the owner may have changed its blocks: the replica is
    /// marked out of sync with them dirty, so the resync that follows brings them over (as for a plain Write).
    /// </summary>
    [Fact]
    public void AFusedCompareAndWriteWhoseWriteFailsMarksTheReplicaOutOfSync()
    {
        using TestPair pair = InSyncPair();
        using NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid());
        var local = (MallocBdev)pair.A.GetBdev("Local");
        int resyncs = MirrorOf(pair.A, 1).ResyncsDone;
        local.FailWrites = true; // the Write changes its blocks, then fails
        (NvmeStatus cmp, NvmeStatus wr) = h.IoQueues[0].CompareAndWrite(1, 3000, 8, new byte[4096], Fill(0x77, 4096));
        local.FailWrites = false;
        Assert.True(cmp.IsSuccess, $"compare: {cmp}");
        Assert.False(wr.IsSuccess, "the Write was meant to fail");
        Assert.True(Contents(pair.A, local, 3000 * 512, 4096).SequenceEqual(Fill(0x77, 4096)), "the failed Write changed A's blocks");
        // The replica went out of sync; a resync brings the blocks over.
        TestPair.WaitUntil(() => MirrorOf(pair.A, 1).ResyncsDone > resyncs && MirrorOf(pair.A, 1).IsInSync, "a resync after the failed Write", TimeSpan.FromSeconds(30));
        Assert.True(Contents(pair.B, Replica(pair.B, 1), 3000 * 512, 4096).SequenceEqual(Fill(0x77, 4096)), "the replica lacks what the failed Write left on A");
        pair.WaitLogged('A', "a fused Compare and Write's Write failed");
    }

    /// <summary>
    /// Defect 4: regions marked dirty while a resync takes the bitmap are never lost. In each of many rounds one thread
    /// marks all 64 regions of a small bitmap once while another takes it over and over, reading what it took at once (as
    /// the resync scans its work); the round ends when the takes together hold all 64. A region lost between a take and
    /// the marking (the old bitmap, swapped for a fresh array, lost bits set into the old one after it was read) leaves
    /// its round unfinished: the taker gives up after a second without progress.
    /// </summary>
    [Fact]
    public void RegionsMarkedWhileTheBitmapIsTakenAreNeverLost()
    {
        const int rounds = 5_000; // the old bitmap lost a region within the first 700 rounds in 4 tries of 5
        var bitmap = new DirtyBitmap(64);
        int finished = -1;  // the last round the taker saw whole
        bool stuck = false;
        var marker = new Thread(() =>
        {
            for (int round = 0; round < rounds && !Volatile.Read(ref stuck); round++)
            {
                for (ulong r = 0; r < 64; r++) bitmap.Mark(r, r);
                while (Volatile.Read(ref finished) < round && !Volatile.Read(ref stuck)) Thread.Yield();
            }
        });
        marker.Start();
        long union = 0;
        int takes = 0;
        var idle = System.Diagnostics.Stopwatch.StartNew();
        while (Volatile.Read(ref finished) < rounds - 1)
        {
            long w = bitmap.Take()[0]; // read at once, as a resync reads its work
            takes++;
            if (w == 0) Thread.Yield(); // nothing marked yet: let the marker run
            Assert.True((union & w) == 0, $"round {finished + 1}: a region taken twice");
            union |= w;
            if (union == -1L)
            {
                union = 0;
                Volatile.Write(ref finished, finished + 1);
                idle.Restart();
            }
            else if (idle.Elapsed > TimeSpan.FromSeconds(1) && Volatile.Read(ref finished) < rounds - 1 && bitmap.Count == 0)
            {
                // Nothing left to take, the round not whole: a region was lost (or the marker is starved: give it time).
                if (idle.Elapsed > TimeSpan.FromSeconds(5)) { Volatile.Write(ref stuck, true); break; }
            }
        }
        Assert.True(marker.Join(TimeSpan.FromSeconds(60)));
        Assert.False(stuck, $"round {finished + 1}: regions {~union:X16} were marked and never taken ({takes} takes)");
        Assert.Equal(rounds - 1, finished);
    }

    /// <summary>
    /// Defect 6: two reactors relaying for one host note their deadlines at once: the latest deadline never goes back
    /// (the owner's drain waits for the latest deadline of what was counted). Each racer checks, before every note, that
    /// the latest deadline is still at least the one it noted before.
    /// </summary>
    [Fact]
    public void TheLatestDeadlineOfARelayNeverGoesBackWhenTwoReactorsNoteTheirsAtOnce()
    {
        var reg = new ProxyRegistration(1, new HostRelay(default, "nqn.test", Guid.NewGuid()), 1);
        const uint notes = 2_000_000;
        int backwards = 0;
        using var go = new ManualResetEventSlim();
        Thread Racer(uint offset) => new(() =>
        {
            go.Wait();
            uint mine = 0;
            for (uint i = 0; i < notes; i++)
            {
                (bool has, uint latest) = reg.LatestDeadline;
                if (mine != 0 && (!has || (int)(latest - mine) < 0)) Interlocked.Increment(ref backwards);
                mine = 1000 + 2 * i + offset;
                reg.NoteDeadline(new OwnerDeadline(mine));
            }
        });
        Thread t1 = Racer(0), t2 = Racer(1);
        t1.Start();
        t2.Start();
        go.Set();
        Assert.True(t1.Join(TimeSpan.FromSeconds(120)) && t2.Join(TimeSpan.FromSeconds(120)));
        Assert.Equal(0, backwards);
        Assert.Equal((true, 1000 + 2 * (notes - 1) + 1), reg.LatestDeadline);
    }

    /// <summary>
    /// Defect 7: a host whose relay is not open (its opens held back here, as while the owner drains it) keeps its own
    /// commands waiting on the proxy's queue, not another host's: host 2's writes through the same reactor of B complete
    /// while host 1's first write still waits. Depends on TestPair's 3 s relay timeout: host 1's write waits that long at
    /// most; before the fix host 2's waited behind it until then.
    /// </summary>
    [Fact]
    public void AHostWhoseRelayIsNotOpenDoesNotHoldBackAnotherHostsRelays()
    {
        using var pair = new TestPair(); // one reactor per node: both hosts' commands share B's proxy queue
        pair.WaitHealthy();
        Guid id1 = Guid.NewGuid(), id2 = Guid.NewGuid();
        pair.B.Pair!.Links[0].Relays.HoldOpens = id => id == id1;
        using NvmeHost h1 = pair.Connect(pair.EndpointB, id1);
        using NvmeHost h2 = pair.Connect(pair.EndpointB, id2);
        Pending stuck = Submit(h1.IoQueues[0], 0x31, lba: 100);
        PollUntil(h1.IoQueues[0], () => pair.B.Pair.Links[0].QueuedRelays > 0 || stuck.Done, TimeSpan.FromSeconds(10));
        Assert.False(stuck.Done, $"host 1's write was meant to wait for its relay: {stuck.Cqe.StatusField}");
        for (int i = 0; i < 5; i++)
        {
            NvmeStatus st = Write(h2.IoQueues[0], (byte)(0x40 + i), lba: 4096);
            Assert.True(st.IsSuccess, $"host 2's write {i}: {st}");
        }
        Assert.False(stuck.Done, "host 2's writes waited behind host 1's until it aged out");
        Assert.Equal(0x44, ReadTag(h2.IoQueues[0], lba: 4096));
        // Once host 1's opens are let through, its write relays too (or, had it aged out meanwhile, its retry does).
        pair.B.Pair.Links[0].Relays.HoldOpens = null;
        PollUntil(h1.IoQueues[0], () => stuck.Done, TimeSpan.FromSeconds(20));
        Assert.True(stuck.Done);
        Assert.True(WriteRetryingPathErrors(h1.IoQueues[0], 0x32, lba: 100).IsSuccess);
    }

    /// <summary>
    /// Defect 2: with the owner's interconnect cut (its heartbeat datagrams still flowing), the owner acknowledged writes
    /// the replica never got while the keeper went on calling it in sync. Now, whenever the keeper calls its replica
    /// whole, every write the owner has acknowledged is on it: the owner holds writes the replica lacks until the keeper's
    /// lease (renewed by the owner's heartbeats, the heartbeat timeout long) has expired. Checked after every
    /// acknowledged write; the writes go on, none fails. Depends on TestPair's 2 s heartbeat timeout (the lease).
    /// </summary>
    [Fact]
    public void TheKeeperNeverCallsItsReplicaWholeWhileTheOwnerAcknowledgesWritesItLacks()
    {
        using TestPair pair = InSyncPair();
        using NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Namespace kept = pair.B.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(1)!;
        Bdev replica = Replica(pair.B, 1);
        TestPair.WaitUntil(() => kept.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()), "B to hold its replica whole");
        pair.InterconnectAtoB.Blocked = true; // A's association into B dies and stays dead; the heartbeat channel lives
        pair.InterconnectAtoB.Cut();
        var violations = new List<string>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int acked = 0;
        for (int i = 0; i < 300 && clock.Elapsed < TimeSpan.FromSeconds(60); i++)
        {
            ulong lba = (ulong)(i * 8);
            byte tag = (byte)(i % 250 + 1);
            NvmeStatus st = Write(h.IoQueues[0], tag, lba: lba);
            Assert.True(st.IsSuccess, $"write {i}: {st}");
            acked++;
            if (kept.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp())
                && !Contents(pair.B, replica, lba * 512, 4096).SequenceEqual(Fill(tag, 4096)))
                violations.Add($"{clock.ElapsedMilliseconds} ms: write {i} acknowledged by A, not on B's replica, which B calls whole");
        }
        Assert.True(violations.Count == 0, string.Join("\n", violations.Take(5)) + $"\n({violations.Count} in all)\n{pair.Problems()}");
        Assert.Equal(300, acked);
        Assert.Equal("out_of_sync", MirrorOf(pair.A, 1).State);
        Assert.False(kept.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()));
        pair.WaitLogged('A', "the partner no longer takes its replica for whole (the partner's lease expired)");
    }

    /// <summary>
    /// Defect 2: a copy fails while the interconnect stays up: the owner tells the keeper "out of sync" and holds the
    /// write until the keeper has acknowledged; the keeper's word changes before the write completes.
    /// </summary>
    [Fact]
    public void AFailedCopyCompletesOnlyOnceTheKeeperKnowsTheReplicaIsOutOfSync()
    {
        using TestPair pair = InSyncPair();
        using NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Namespace kept = pair.B.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(1)!;
        var replica = (MallocBdev)Replica(pair.B, 1);
        TestPair.WaitUntil(() => kept.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()), "B to hold its replica whole");
        NvmeStatus st = WhileFailingWrites(replica, () => Write(h.IoQueues[0], 0x66, lba: 700)); // the link is fine
        Assert.True(st.IsSuccess, $"the write (done on A): {st}");
        // When the host heard of it, B no longer called its replica whole (B had been told it is out of sync).
        Assert.Equal(ReplicaWord.OutOfSync, kept.ReplicaKnowledge.Word);
        Assert.False(kept.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()));
        pair.WaitLogged('A', "(the partner acknowledged)");
        // Then a resync brings it over, and B is told in sync again.
        TestPair.WaitUntil(() => MirrorOf(pair.A, 1).IsInSync && kept.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()), "the resync", TimeSpan.FromSeconds(30));
        Assert.True(Contents(pair.B, replica, 700 * 512, 4096).SequenceEqual(Fill(0x66, 4096)));
    }

    /// <summary>
    /// Found by reading (a leftover of the device-failure rule): a Copy's copy whose write the replica's device failed
    /// left the replica a base for an incremental resync (a Write's, Write Zeroes' or deallocate's failure did not): the
    /// Copy command completes its own way and never reached the check. A device that failed a write may have lost
    /// other pages too (a failed fsync drops them), so the next resync must copy everything — not only the Copy's
    /// blocks, which A's record of missed writes marks (without the fix the resync was incremental). The check is on the
    /// resync that follows (a review found the first version racy: the replica is a base again once that whole resync
    /// ends, which may be before the host's Copy returns).
    /// </summary>
    [Fact]
    public void AReplicaDeviceThatFailsACopysWriteIsNoBaseForAnIncrementalResync()
    {
        using TestPair pair = InSyncPair();
        using NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid());
        Namespace kept = pair.B.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(1)!;
        var replica = (MallocBdev)Replica(pair.B, 1);
        TestPair.WaitUntil(() => kept.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()), "B to hold its replica whole");
        Assert.True(Write(h.IoQueues[0], 0x67, lba: 1000).IsSuccess);
        Assert.True(kept.ReplicaKnowledge.Kept.Base, "after the first resync, B's replica is a base");
        NamespaceMirror mirror = MirrorOf(pair.A, 1);
        int resyncs = mirror.ResyncsDone;
        NvmeStatus st = WhileFailingWrites(replica, () => h.IoQueues[0].Copy(1, 2000, [(1000UL, 8u)])); // the link is fine
        Assert.True(st.IsSuccess, $"the Copy (done on A): {st}");
        // The resync that follows copies everything, and the Copy's blocks are there.
        TestPair.WaitUntil(() => mirror.ResyncsDone > resyncs && mirror.IsInSync && kept.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()), "the resync", TimeSpan.FromSeconds(30));
        Assert.True(mirror.LastResyncWhole, $"the resync after B's device failed a Copy's write was incremental ({mirror.ResyncedBytes} B copied)");
        Assert.True(Contents(pair.B, replica, 2000 * 512, 4096).SequenceEqual(Fill(0x67, 4096)));
    }

    /// <summary>
    /// Found by CI (the keeper no longer called its replica whole at the end of MirrorTests' writes): heartbeats that
    /// reach the keeper late — each well inside the heartbeat timeout, so the link stays up and the owner's send gaps
    /// stay under the lease — let the keeper's lease run out between two renewals. The keeper never renewed an expired
    /// lease and the owner, seeing no gap, never said "in sync" anew: the replica stayed untrusted for good. A renewal's
    /// deadline was fixed when it was sent, so renewing after a lapse is safe; the replica is whole again at once.
    /// </summary>
    [Fact]
    public void ALeaseThatLapsedOnASlowLinkIsRenewedAgain()
    {
        using TestPair pair = InSyncPair();
        Namespace kept = pair.B.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(1)!;
        static long Now() => System.Diagnostics.Stopwatch.GetTimestamp();
        TestPair.WaitUntil(() => kept.ReplicaKnowledge.IsWhole(Now()), "B to hold its replica whole");
        uint sequence = kept.ReplicaKnowledge.Sequence;
        // Each heartbeat reaches B 1.1 s after A sent it (A waits for the answer, then sends the next 0.1 s later): the
        // next renewal comes 2.3 s after the last one was sent, past its 2 s lease.
        pair.InterconnectAtoB.UpstreamDelayMs = 1100;
        bool lapsed = false;
        try
        {
            var slow = System.Diagnostics.Stopwatch.StartNew();
            while (slow.Elapsed < TimeSpan.FromSeconds(5))
            {
                if (!kept.ReplicaKnowledge.IsWhole(Now())) lapsed = true;
                Thread.Sleep(20);
            }
        }
        finally
        {
            pair.InterconnectAtoB.UpstreamDelayMs = 0;
        }
        Assert.True(lapsed, "the slow link let B's lease lapse");
        Assert.True(pair.A.Pair!.Links[0].IsUp && MirrorOf(pair.A, 1).IsInSync, $"the link stayed up and the replica in sync\n{pair.Log('A')}\n{pair.Log('B')}");
        TestPair.WaitUntil(() => kept.ReplicaKnowledge.IsWhole(Now()), "B to hold its replica whole again once heartbeats come on time", TimeSpan.FromSeconds(10));
        Assert.Equal(sequence, kept.ReplicaKnowledge.Sequence); // by renewals of the same word
    }

    /// <summary>Defect 2: a restarted owner's replicas are not whole on the keeper until it has resynced them and said so again.</summary>
    [Fact]
    public void AnOwnersRestartVoidsWhatItSaidBefore()
    {
        using TestPair pair = InSyncPair();
        Namespace keptByA = pair.A.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(2)!; // B owns NSID 2, A keeps its replica
        TestPair.WaitUntil(() => keptByA.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()), "A to hold B's replica whole");
        long before = keptByA.ReplicaKnowledge.OwnerIncarnation;
        pair.RestartB();
        TestPair.WaitUntil(() => keptByA.ReplicaKnowledge.OwnerIncarnation != before, "A to learn of B's new incarnation", TimeSpan.FromSeconds(20));
        // Until B has said otherwise, A's replica of NSID 2 is not whole (B's namespace restarted empty: RAM).
        Assert.NotEqual(ReplicaWord.InSync, keptByA.ReplicaKnowledge.Word);
        pair.WaitHealthy();
        // B's RAM namespace lost its data; A's replica holds it: B does not resync over it until told to.
        TestPair.WaitUntil(() => MirrorOf(pair.B, 2).State == "refused", "B to find A's replica holding data it lacks");
        Assert.Equal("refused resync retried with overwrite", MirrorOf(pair.B, 2).Discard());
        TestPair.WaitUntil(() => MirrorOf(pair.B, 2).IsInSync && keptByA.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()),
            "B to resync A's replica and say so", TimeSpan.FromSeconds(30));
        Assert.Equal(pair.B.Pair!.Incarnation, keptByA.ReplicaKnowledge.OwnerIncarnation);
    }

    /// <summary>
    /// An owner that restarts with a RAM namespace (its data gone) found the partner's replica whole and resynced its
    /// empty memory over it: the only copy of the data was wiped. Now the keeper refuses a resync of another data
    /// generation over a consistent copy; the owner's group stays inaccessible on both nodes (no write is acknowledged
    /// that either choice would lose) and says why, until an operator decides (cluster_replica_discard).
    /// </summary>
    [Fact]
    public void AnOwnerThatRestartsEmptyDoesNotResyncOverAReplicaThatHoldsItsData()
    {
        using TestPair pair = InSyncPair();
        Namespace keptByA = pair.A.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(2)!; // B owns NSID 2, A keeps its replica
        byte[] data = Fill(0x5D, 64 * 1024);
        using (NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid()))
            for (ulong lba = 0; lba < 4096; lba += 128) Assert.True(viaB.IoQueues[0].Write(2, lba, 128, data).IsSuccess);
        TestPair.WaitUntil(() => keptByA.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()), "A to hold B's replica whole");
        (long held, bool consistent) = keptByA.ReplicaKnowledge.Holds;
        Assert.True(consistent && held == pair.B.Target.FindSubsystem(TestPair.Nqn)!.GetNamespace(2)!.DataGeneration);

        pair.RestartB(); // B's NSID 2 starts empty, a new data generation
        TestPair.WaitUntil(() => MirrorOf(pair.B, 2).State == "refused", "B to find A's replica holding data it lacks", TimeSpan.FromSeconds(30));
        for (ulong lba = 0; lba < 4096; lba += 128)
            Assert.True(Contents(pair.A, Replica(pair.A, 2), lba * 512, data.Length).SequenceEqual(data), $"A's replica kept B's data at LBA {lba}");
        Assert.Equal(held, keptByA.ReplicaKnowledge.Holds.Generation);
        // The group is inaccessible on both nodes, through every port; a host's write is refused with a path error.
        Subsystem sA = pair.A.Target.FindSubsystem(TestPair.Nqn)!, sB = pair.B.Target.FindSubsystem(TestPair.Nqn)!;
        Assert.Equal(AnaState.Inaccessible, sB.GetAnaState(2, ListenerRole.Combined));
        Assert.Equal(AnaState.Inaccessible, sA.GetAnaState(2, ListenerRole.Combined));
        Assert.Equal(AnaState.Optimized, sA.GetAnaState(1, ListenerRole.Combined)); // the other group is served
        using (NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid()))
        {
            NvmeStatus st = viaB.IoQueues[0].Write(2, 0, 8, Fill(0x11, 4096));
            Assert.Equal(NvmeStatus.Path(PathStatus.AnaInaccessible), st);
        }
        pair.WaitLogged('B', "the partner refused the resync");
        pair.WaitLogged('A', "refused the owner's resync");
        var rpcB = StorageNode.Control.NodeRpc.Methods(pair.B);
        JsonObject mirror = rpcB["cluster_get_status"](null)!["links"]![0]!["mirrors"]!.AsArray().Single()!.AsObject();
        Assert.Equal("refused", mirror["state"]!.GetValue<string>());
        Assert.True(mirror["group_held"]!.GetValue<bool>());

        // The operator decides for B's (empty) data: the replica is overwritten, the group served again.
        rpcB["cluster_replica_discard"](JsonNode.Parse($"{{\"nqn\":\"{TestPair.Nqn}\",\"nsid\":2}}")!.AsObject()); // as it comes over the socket
        TestPair.WaitUntil(() => MirrorOf(pair.B, 2).IsInSync && keptByA.ReplicaKnowledge.IsWhole(System.Diagnostics.Stopwatch.GetTimestamp()),
            "B to resync A's replica after the operator's decision", TimeSpan.FromSeconds(30));
        Assert.Equal(AnaState.Optimized, sB.GetAnaState(2, ListenerRole.Combined));
        Assert.Equal(AnaState.NonOptimized, sA.GetAnaState(2, ListenerRole.Combined));
        Assert.True(Contents(pair.A, Replica(pair.A, 2), 0, 4096 * 512).SequenceEqual(new byte[4096 * 512]), "the replica now holds B's (empty) data");
        using (NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid()))
            Assert.True(WriteRetryingPathErrors(viaA.IoQueues[0], 0x22, lba: 8, nsid: 2).IsSuccess);
    }

    /// <summary>
    /// The keeper's rule for data generations alone: a resync of another generation over data the replica holds —
    /// consistent, or torn by a resync that never finished — is refused (changing nothing), unless an operator decided;
    /// the same generation, or an empty replica, is taken; a new owner incarnation leaves what the replica holds as it is.
    /// </summary>
    [Fact]
    public void TheKeeperRefusesAnotherGenerationOverDataItHolds()
    {
        var k = new ReplicaKnowledge();
        object a = new();
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 7, ReplicaWord.Resyncing, 1, 1, 7, generation: 50, overwrite: false)); // empty: taken
        Assert.Equal((50L, false), k.Holds);
        Assert.Equal(ReplicaAnswer.Refused, k.Offer(a, 8, ReplicaWord.Resyncing, 1, 1, 8, generation: 60, overwrite: false)); // torn data of 50
        Assert.Equal((50L, false), k.Holds);
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 8, ReplicaWord.Resyncing, 2, 2, 8, generation: 50, overwrite: false)); // 50 again: taken
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 8, ReplicaWord.InSync, 2, 3, 8, generation: 50, overwrite: false));
        Assert.Equal((50L, true), k.Holds);
        Assert.Equal(ReplicaAnswer.Refused, k.Offer(a, 9, ReplicaWord.Resyncing, 1, 1, 9, generation: 70, overwrite: false)); // consistent data of 50
        Assert.Equal(ReplicaWord.OutOfSync, k.Word); // the new incarnation reset the words, not the data
        Assert.Equal((50L, true), k.Holds);
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 9, ReplicaWord.Resyncing, 1, 2, 9, generation: 70, overwrite: true)); // an operator decided
        Assert.Equal((70L, false), k.Holds);
        var restored = new ReplicaKnowledge();
        restored.Restore(70, consistent: true);
        Assert.Equal(ReplicaAnswer.Refused, restored.Offer(a, 10, ReplicaWord.Resyncing, 1, 1, 10, generation: 80, overwrite: false));
    }

    /// <summary>
    /// The keeper's knowledge frozen while it asks the witness to take the replica over (docs/ha.md, "The partner's side"):
    /// the owner's words are answered NotNow and change nothing, renewals of its "in sync" still apply, a restart of the
    /// owner heard meanwhile is applied when the last ask ends, and words are applied again after it.
    /// </summary>
    [Fact]
    public void TheKeepersKnowledgeIsFrozenWhileItAsksToTakeTheReplicaOver()
    {
        var k = new ReplicaKnowledge();
        object a = new();
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 7, ReplicaWord.InSync, 1, 1, 7, generation: 0, overwrite: false));
        k.Renew(a, 1, 1000);
        k.BeginTake();
        k.BeginTake(); // two asks at once (an operator's and an automatic one)
        Assert.True(k.Taking);
        Assert.Equal(ReplicaAnswer.NotNow, k.Offer(a, 7, ReplicaWord.OutOfSync, 1, 2, 7, generation: 0, overwrite: false));
        Assert.Equal(ReplicaWord.InSync, k.Word);
        k.Renew(a, 1, 2000); // the lease still renews
        Assert.True(k.WholeAtDeath(1500));
        k.Reset(8); // the owner restarted: waits for the end of the asks
        Assert.True(k.IsWhole(1500));
        k.EndTake();
        Assert.True(k.Taking);
        Assert.Equal(ReplicaWord.InSync, k.Word);
        k.EndTake();
        Assert.False(k.Taking);
        Assert.Equal((8L, ReplicaWord.OutOfSync), (k.OwnerIncarnation, k.Word)); // the restart, applied now
        Assert.False(k.WholeAtDeath(1500));
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 8, ReplicaWord.InSync, 1, 1, 8, generation: 0, overwrite: false));
        k.EndTake(); // unmatched: nothing
        Assert.False(k.Taking);
    }

    /// <summary>
    /// The keeper's rule for incremental resyncs (docs/ha.md, "The dirty-region record"): only over the replica the
    /// owner's record is kept against — the same generation and epoch, a replica whose last resync was incremental or
    /// finished — is a resync incremental; an empty replica, another epoch, a whole resync that never finished, an
    /// operator's overwrite, or a record kept by another boot of the machine get a whole one.
    /// </summary>
    [Fact]
    public void TheKeeperAgreesToAnIncrementalResyncOnlyOverTheReplicaTheOwnersRecordIsKeptAgainst()
    {
        var k = new ReplicaKnowledge();
        object a = new();
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 7, ReplicaWord.Resyncing, 1, 1, 7, 50, false, baseEpoch: 0, out bool whole));
        Assert.True(whole); // empty
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 8, ReplicaWord.Resyncing, 2, 1, 8, 50, false, baseEpoch: 1, out whole));
        Assert.True(whole); // torn by a whole resync that never finished: torn anywhere
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 8, ReplicaWord.InSync, 2, 2, 8, 50, false));
        Assert.Equal(new ReplicaHolds(50, true, 2, true), k.Kept);
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 9, ReplicaWord.Resyncing, 3, 1, 9, 50, false, baseEpoch: 2, out whole));
        Assert.False(whole); // the owner restarted with its record kept against epoch 2
        Assert.Equal(new ReplicaHolds(50, false, 3, true), k.Kept); // torn only where the owner's record marks
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 9, ReplicaWord.Resyncing, 3, 2, 9, 50, false, baseEpoch: 2, out whole));
        Assert.False(whole); // the same resync announced again (its answer was lost)
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 10, ReplicaWord.Resyncing, 4, 1, 10, 50, false, baseEpoch: 3, out whole));
        Assert.False(whole); // and again, before that resync ended
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 11, ReplicaWord.Resyncing, 5, 1, 11, 50, false, baseEpoch: 3, out whole));
        Assert.True(whole); // a record that names an older epoch (the owner died before keeping epoch 4)
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 12, ReplicaWord.Resyncing, 6, 1, 12, 50, false, baseEpoch: 5, out whole));
        Assert.True(whole); // no base until that whole resync ends
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 12, ReplicaWord.InSync, 6, 2, 12, 50, false));
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 12, ReplicaWord.Resyncing, 7, 3, 12, 50, true, baseEpoch: 6, out whole));
        Assert.True(whole); // an operator's overwrite
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 12, ReplicaWord.InSync, 7, 4, 12, 50, false));
        Assert.Equal(ReplicaAnswer.Applied, k.Offer(a, 12, ReplicaWord.Resyncing, 8, 5, 12, 50, false, baseEpoch: null, out whole));
        Assert.True(whole); // the owner has no record

        // A copy the replica's device failed (a failed fsync may drop any page): no base until a whole resync ends, even
        // if the owner says "in sync" of the current epoch again; kept in the record at once.
        string kept = Path.Combine(Path.GetTempPath(), $"sn-holds-{Guid.NewGuid():N}.replica");
        var f = new ReplicaKnowledge { HoldsPath = kept };
        try
        {
            Assert.Equal(ReplicaAnswer.Applied, f.Offer(a, 20, ReplicaWord.Resyncing, 1, 1, 20, 50, false, baseEpoch: null, out whole));
            Assert.Equal(ReplicaAnswer.Applied, f.Offer(a, 20, ReplicaWord.InSync, 1, 2, 20, 50, false));
            Assert.True(f.Kept.Base);
            f.DeviceFailed();
            Assert.False(f.Kept.Base);
            Assert.Equal(new ReplicaHolds(50, true, 1, false), ReplicaHoldsFile.Load(kept));
            Assert.Equal(ReplicaAnswer.Applied, f.Offer(a, 20, ReplicaWord.InSync, 1, 3, 20, 50, false));
            Assert.False(f.Kept.Base);
            Assert.Equal(ReplicaAnswer.Applied, f.Offer(a, 20, ReplicaWord.Resyncing, 2, 4, 20, 50, false, baseEpoch: 1, out whole));
            Assert.True(whole);
            Assert.Equal(ReplicaAnswer.Applied, f.Offer(a, 20, ReplicaWord.InSync, 2, 5, 20, 50, false));
            Assert.True(f.Kept.Base); // the whole resync ended
        }
        finally
        {
            File.Delete(kept);
        }

        // Kept in a file: read back as written by this boot; a record of another boot is no base.
        string path = Path.Combine(Path.GetTempPath(), $"sn-holds-{Guid.NewGuid():N}.replica");
        try
        {
            ReplicaHoldsFile.Save(path, new ReplicaHolds(50, true, 7, true));
            Assert.Equal(new ReplicaHolds(50, true, 7, true), ReplicaHoldsFile.Load(path));
            File.WriteAllText(path, $"{50:x16} consistent 7 base {Guid.NewGuid()}\n");
            Assert.Equal(new ReplicaHolds(50, true, 7, false), ReplicaHoldsFile.Load(path));
            File.WriteAllText(path, $"{50:x16} consistent\n"); // an older record: what it holds, no base
            Assert.Equal(new ReplicaHolds(50, true, 0, false), ReplicaHoldsFile.Load(path));
            File.WriteAllText(path, $"{50:x16} consistent seven base x\n");
            Assert.Throws<InvalidDataException>(() => ReplicaHoldsFile.Load(path));
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Defect 2, the keeper's rules alone: stale words are ignored, a replaced incarnation's are refused, a new one resets, only the "in sync" word's own association and sequence number renew it, a resync is never whole, a lease expires and only a renewal with a later deadline renews it, copies only of the current epoch and association.</summary>
    [Fact]
    public void TheKeepersKnowledgeFollowsTheOwnersWordsInOrder()
    {
        var k = new ReplicaKnowledge();
        object a1 = new(), a2 = new();
        long now = System.Diagnostics.Stopwatch.GetTimestamp(), second = System.Diagnostics.Stopwatch.Frequency;
        Assert.False(k.IsWhole(now));
        Assert.True(k.Apply(a1, 7, ReplicaWord.Resyncing, 1, 1, knownIncarnation: 7));
        Assert.True(k.AcceptsCopy(a1, 1) && !k.AcceptsCopy(a2, 1) && !k.AcceptsCopy(a1, 0) && !k.AcceptsCopy(a1, 2));
        k.Renew(a1, 1, now + second);
        Assert.False(k.IsWhole(now)); // resyncing: never whole
        Assert.True(k.Apply(a1, 7, ReplicaWord.InSync, 1, 3, knownIncarnation: 7));
        Assert.False(k.IsWhole(now)); // not renewed yet
        k.Renew(a2, 3, now + second);
        Assert.False(k.IsWhole(now)); // another association's heartbeat does not renew it
        k.Renew(a1, 2, now + second);
        Assert.False(k.IsWhole(now)); // nor one that names another word
        k.Renew(a1, 3, now + second);
        Assert.True(k.IsWhole(now));
        Assert.False(k.IsWhole(now + 2 * second)); // the lease expired
        k.Renew(a1, 3, now + second / 2);
        Assert.False(k.IsWhole(now + 2 * second)); // a late renewal sent earlier does not bring it back
        k.Renew(a1, 3, now + 3 * second);
        Assert.True(k.IsWhole(now + 2 * second)); // a later one renews it (its deadline was fixed when it was sent)
        Assert.False(k.Apply(a1, 7, ReplicaWord.OutOfSync, 1, 2, knownIncarnation: 7)); // older than the last word: ignored
        Assert.Equal(ReplicaWord.InSync, k.Word);
        Assert.True(k.Apply(a1, 7, ReplicaWord.OutOfSync, 1, 4, knownIncarnation: 7));
        Assert.False(k.IsWhole(now));
        Assert.False(k.AcceptsCopy(a1, 1)); // out of sync: no copy runs
        Assert.False(k.Apply(a2, 5, ReplicaWord.InSync, 1, 9, knownIncarnation: 9)); // a replaced incarnation's word, late
        Assert.True(k.Apply(a2, 9, ReplicaWord.Resyncing, 1, 1, knownIncarnation: 9)); // a restarted owner starts over
        Assert.Equal(9, k.OwnerIncarnation);
        Assert.Equal(ReplicaWord.Resyncing, k.Word);
        k.Reset(11);
        Assert.Equal((ReplicaWord.OutOfSync, 0u, 11L), (k.Word, k.Epoch, k.OwnerIncarnation));
    }

    /// <summary>
    /// Defect 8: the keeper's reactor that runs the owner's copies stalls while its admin path stays healthy (heartbeats
    /// answered). A copy with no answer no longer holds the write for good: past the copy timeout (the longer of the
    /// heartbeat and relay timeouts: 3 s in TestPair) the owner takes the link down, the replica leaves sync, and once the
    /// keeper's lease (2 s) has expired the write completes, while the stall still lasts.
    /// </summary>
    [Fact]
    public void ACopyThePartnerNeverAnswersDoesNotHoldTheWriteForGood()
    {
        // B has two reactors: A's admin queue goes to reactor 0 (its heartbeats are answered), A's I/O queue (the copies)
        // to reactor 1 (A connects its admin queue first, then its one I/O queue).
        int interconnect = 0;
        var mirrorB = new Dictionary<string, string?>(Mirror) { ["Node:Reactors"] = "2" };
        using var pair = new TestPair(Mirror, mirrorB, reactors: 1, beforeStart: (_, b) => b.Target.PlaceConnection = l =>
            l.Role == ListenerRole.Interconnect ? (Interlocked.Increment(ref interconnect) % 2 == 1 ? 0 : 1) : 0);
        pair.WaitHealthy();
        NamespaceMirror mirror = MirrorOf(pair.A, 1);
        TestPair.WaitUntil(() => mirror.IsInSync, "A's replica on B in sync", TimeSpan.FromSeconds(30));
        using NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid());
        using var stalled = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        pair.B.Reactors[1].Post(() =>
        {
            stalled.Set();
            release.Wait(TimeSpan.FromSeconds(60)); // bounded: released below
        });
        NvmeStatus st = default;
        bool doneDuringStall;
        try
        {
            Assert.True(stalled.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "B's reactor 1 did not stall");
            var writer = new Thread(() => st = Write(h.IoQueues[0], 0x5A, lba: 900)) { IsBackground = true };
            writer.Start();
            doneDuringStall = writer.Join(TimeSpan.FromSeconds(30));
        }
        finally
        {
            release.Set();
        }
        Assert.True(doneDuringStall, "the write waited for the stalled keeper reactor");
        Assert.True(st.IsSuccess, $"the write: {st}");
        pair.WaitLogged('A', "a write's copy got no answer from the partner");
        // The link comes back, and a resync brings the write over.
        TestPair.WaitUntil(() => mirror.IsInSync, "the resync after the stall", TimeSpan.FromSeconds(30));
        Assert.True(Contents(pair.B, Replica(pair.B, 1), 900 * 512, 4096).SequenceEqual(Fill(0x5A, 4096)));
    }

    /// <summary>
    /// Defect 2 as two processes, B's clock three hours behind (B keeps A's replica of NSID 1 in a file, read from
    /// outside; B's word from cluster_get_status): with A's interconnect association into B cut for good and the
    /// heartbeats flowing, whenever B calls its replica whole, every write A has acknowledged is in it. Depends on the
    /// pair's 2 s heartbeat timeout (the lease) only through the writes' pace: none fails.
    /// </summary>
    [Fact]
    public void TwoProcessesTheKeeperNeverCallsItsReplicaWholeWhileTheOwnerAcknowledgesWritesItLacks()
    {
        WithFileReplica((pair, kept, WholeOnB, StateOnA) =>
        {
            using NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid());
            pair.InterconnectAtoB.Blocked = true; // A's association into B dies and stays dead; the heartbeat channel lives
            pair.InterconnectAtoB.Cut();
            var violations = new List<string>();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            int acked = 0;
            for (int i = 0; i < 200 && clock.Elapsed < TimeSpan.FromSeconds(60); i++)
            {
                ulong lba = (ulong)(i * 8);
                byte tag = (byte)(i % 250 + 1);
                NvmeStatus st = Write(h.IoQueues[0], tag, lba: lba);
                Assert.True(st.IsSuccess, $"write {i}: {st}");
                acked++;
                if (!WholeOnB()) continue;
                if (!FileBytes(kept, (long)lba * 512, 4096).AsSpan().SequenceEqual(Fill(tag, 4096)))
                    violations.Add($"{clock.ElapsedMilliseconds} ms: write {i} acknowledged by A, not in B's replica file, which B calls whole");
            }
            Assert.True(violations.Count == 0, string.Join("\n", violations.Take(5)) + $"\n({violations.Count} in all)\n{pair.Problems()}");
            Assert.Equal(200, acked);
            Assert.Equal("out_of_sync", StateOnA());
            Assert.False(WholeOnB());
            pair.WaitLogged('A', "the partner no longer takes its replica for whole");
        });
    }

    /// <summary>
    /// Defect 8 as two processes, B's clock three hours behind: A's copies to B are held on their way (the bytes of A's
    /// association into B wait in the forwarder; B's answers to the heartbeat datagrams, on their own channel, keep
    /// coming). The write waiting for its copy's answer completes, successfully, once the link is taken down — here by
    /// the interconnect association's own keep-alive (C5, 2 s), which the held bytes stall too, before the copy timeout
    /// (the longer of the heartbeat and relay timeouts, 3 s) — and B's lease (2 s) has run out; B then no longer calls
    /// its replica whole. When the bytes flow again the resync brings the write to B's replica. Bounded: 30 s for the
    /// write. (The copy timeout alone, with the admin path answering, is the in-process test above: only a hook can
    /// stall one reactor of another process.)
    /// </summary>
    [Fact]
    public void TwoProcessesACopyThePartnerNeverAnswersDoesNotHoldTheWriteForGood()
    {
        WithFileReplica((pair, kept, WholeOnB, StateOnA) =>
        {
            using NvmeHost h = pair.Connect(pair.EndpointA, Guid.NewGuid());
            NvmeStatus st = default;
            bool done;
            pair.InterconnectAtoB.PauseUpstream = true;
            try
            {
                var writer = new Thread(() => st = Write(h.IoQueues[0], 0x5A, lba: 900)) { IsBackground = true };
                writer.Start();
                done = writer.Join(TimeSpan.FromSeconds(30));
                Assert.True(done, "the write waited for a copy B never got");
                Assert.True(st.IsSuccess, $"the write: {st}");
                Assert.False(WholeOnB(), "B calls its replica whole without the acknowledged write");
                // Found by a stress run: the lines are read as A's process writes them, which may be after the host heard of
                // the write (A's console logger writes from a queue of its own): waited for, not read at once.
                pair.WaitLogged('A', "interconnect to B down");
                pair.WaitLogged('A', "the partner no longer takes its replica for whole (the partner's lease expired); 1 held write(s) complete");
            }
            finally
            {
                pair.InterconnectAtoB.PauseUpstream = false;
            }
            TestPair.WaitUntil(() => StateOnA() == "in_sync" && WholeOnB(), "the resync once the bytes flow again", TimeSpan.FromSeconds(30));
            Assert.True(FileBytes(kept, 900L * 512, 4096).AsSpan().SequenceEqual(Fill(0x5A, 4096)), "B's replica file lacks the write after the resync");
        });
    }

    /// <summary>A host's command run while <paramref name="replica"/> fails every write it gets (its copies fail on B).</summary>
    private static NvmeStatus WhileFailingWrites(MallocBdev replica, Func<NvmeStatus> command)
    {
        replica.FailWrites = true;
        try
        {
            return command();
        }
        finally
        {
            replica.FailWrites = false;
        }
    }

    /// <summary>
    /// Two processes, B's clock three hours behind, B keeping A's replica of NSID 1 in a file (<c>kept</c>, read from
    /// outside); the body gets B's word on it (whole, from cluster_get_status) and A's state of it, once both say it is
    /// in sync and whole.
    /// </summary>
    private static void WithFileReplica(Action<ProcessPair, string, Func<bool>, Func<string>> body)
    {
        string dir = Directory.CreateTempSubdirectory("sn-file-replica-").FullName;
        try
        {
            string kept = Path.Combine(dir, "b-keeps-1.img");
            using var pair = new ProcessPair(Mirror, With(Mirror, FileReplica(1, kept)), clockOffsetSecondsB: -3 * 3600);
            pair.WaitHealthy();
            bool WholeOnB() => pair.Rpc('B', "cluster_get_status")!["links"]![0]!["replicas"]!.AsArray().Single()!["whole"]!.GetValue<bool>();
            string StateOnA() => pair.Rpc('A', "cluster_get_status")!["links"]![0]!["mirrors"]!.AsArray().Single()!["state"]!.GetValue<string>();
            TestPair.WaitUntil(() => StateOnA() == "in_sync" && WholeOnB(), "A's replica on B in sync and whole", TimeSpan.FromSeconds(30));
            body(pair, kept, WholeOnB, StateOnA);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
