using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Support;
using StorageNode.Target;

namespace StorageNode.Tests;

/// <summary>
/// Persistent reservations on one node, from several hosts (each its own Host Identifier) as clustered hosts use them:
/// registration, the six types and what each lets holders, registrants and others do, acquire, preempt, release,
/// clear, the report, the notifications and their mask, and Persist Through Power Loss across a restart.
/// </summary>
public sealed class ReservationTests : IDisposable
{
    private const uint Ns = 1;
    private const ulong KeyA = 0xA1, KeyB = 0xB2, KeyC = 0xC3;
    private readonly TestNode _node;
    private readonly Host _a, _b, _c;

    private sealed class Host : IDisposable
    {
        public readonly Guid Id = Guid.NewGuid();
        public readonly NvmeHost Nvme;
        public IoQueue Q => Nvme.IoQueues[0];

        public Host(TestNode node) => Nvme = node.Connect(new NvmeHostOptions { HostId = Id });

        public void Dispose() => Nvme.Dispose();

        public NvmeStatus Write(byte tag = 0x5A) => Q.Write(Ns, 0, 1, Enumerable.Repeat(tag, 512).ToArray());
        public NvmeStatus Read() => Q.Read(Ns, 0, 1, new byte[512]);
    }

    public ReservationTests()
    {
        _node = new TestNode();
        _a = new Host(_node);
        _b = new Host(_node);
        _c = new Host(_node);
    }

    public void Dispose()
    {
        _a.Dispose();
        _b.Dispose();
        _c.Dispose();
        _node.Dispose();
    }

    private static NvmeStatus Conflict => NvmeStatus.Generic(GenericStatus.ReservationConflict);
    private static NvmeStatus InvalidField => NvmeStatus.Generic(GenericStatus.InvalidField);

    private static void Ok(NvmeStatus st) => Assert.True(st.IsSuccess, st.ToString());

    private static void Is(NvmeStatus expected, NvmeStatus actual) => Assert.Equal((expected.Type, expected.Code), (actual.Type, actual.Code));

    [Fact]
    public void IdentifyAdvertisesReservations()
    {
        ushort oncs = BitConverter.ToUInt16(_a.Nvme.IdentifyControllerData, 520);
        Assert.NotEqual(0, oncs & IdentifyControllerBits.OncsReservations);
        byte rescap = _a.Nvme.Identify(Cns.Namespace, Ns)[31];
        // All six types and the NVMe 1.3 IEKEY rules; no PTPL without a state directory.
        Assert.Equal(0xFE, rescap);
    }

    [Fact]
    public void RegistrationsAreReportedByHostIdentifier()
    {
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        // A second association of host A is the same registrant.
        using NvmeHost a2 = _node.Connect(new NvmeHostOptions { HostId = _a.Id });
        Ok(a2.IoQueues[0].ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Is(Conflict, a2.IoQueues[0].ReservationRegister(Ns, ReservationAction.Register, 0, KeyA + 1));

        ReservationStatus st = _c.Q.GetReservationStatus(Ns);
        Assert.Equal(ReservationType.None, st.Type);
        Assert.Equal(2, st.RegisteredControllers);
        Assert.Equal(3u, st.Generation); // every successful Register counts
        Assert.Equal([(_a.Id, KeyA), (_b.Id, KeyB)], st.Registrants.Select(r => (r.HostId, r.Key)));
        Assert.All(st.Registrants, r => Assert.Equal(0xFFFF, r.Cntlid));
        Assert.All(st.Registrants, r => Assert.False(r.HoldsReservation));
        // The other namespace has its own registrations.
        Assert.Empty(_a.Q.GetReservationStatus(2).Registrants);
    }

    [Fact]
    public void RegisterUnregisterAndReplaceCheckTheKeys()
    {
        Is(InvalidField, _a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, 0));
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Is(Conflict, _a.Q.ReservationRegister(Ns, ReservationAction.Replace, KeyA + 1, KeyC));
        Is(InvalidField, _a.Q.ReservationRegister(Ns, ReservationAction.Replace, KeyA, 0));
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Replace, KeyA, KeyC));
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Replace, 0, KeyA, ignoreExistingKey: true));
        Is(Conflict, _b.Q.ReservationRegister(Ns, ReservationAction.Replace, 0, KeyB, ignoreExistingKey: true)); // not registered
        Is(Conflict, _a.Q.ReservationRegister(Ns, ReservationAction.Unregister, KeyB, 0));
        Is(Conflict, _b.Q.ReservationRegister(Ns, ReservationAction.Unregister, KeyB, 0));
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Unregister, KeyA, 0));
        Assert.Empty(_a.Q.GetReservationStatus(Ns).Registrants);
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Unregister, 0, 0, ignoreExistingKey: true));
        Is(InvalidField, _a.Q.ReservationRegister(Ns, 3, 0, KeyA));
        // PTPL cannot be set where the node keeps nothing (no state directory).
        Is(InvalidField, _a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA, cptpl: ChangePtpl.Set));
        Assert.Empty(_a.Q.GetReservationStatus(Ns).Registrants); // nothing of a failed command sticks
    }

    [Fact]
    public void ReportNeedsTheExtendedFormatAndTruncatesToWholeEntries()
    {
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        // 128-bit host identifiers have only the extended format (as SPDK's target and Linux nvmet answer).
        Is(NvmeStatus.Generic(GenericStatus.HostIdInconsistentFormat), _a.Q.ReservationReport(Ns, new byte[4096], extended: false));
        var room = new byte[ReservationReport.ExtendedHeaderSize + ReservationReport.ExtendedEntrySize + 32];
        Ok(_a.Q.ReservationReport(Ns, room));
        ReservationStatus st = ReservationStatus.Parse(room);
        Assert.Equal(2, st.RegisteredControllers); // all of them counted,
        Assert.Single(st.Registrants);             // one whole entry returned
        Assert.All(room[(ReservationReport.ExtendedHeaderSize + ReservationReport.ExtendedEntrySize)..], b => Assert.Equal(0, b));
        var header = new byte[8];
        Ok(_a.Q.ReservationReport(Ns, header));
        Assert.Equal(2u, BitConverter.ToUInt32(header, 0));
    }

    /// <summary>What each type lets a host do: (holder read, holder write, registrant read, registrant write, other read, other write).</summary>
    public static TheoryData<ReservationType, bool[]> Access => new()
    {
        { ReservationType.WriteExclusive, [true, true, true, false, true, false] },
        { ReservationType.ExclusiveAccess, [true, true, false, false, false, false] },
        { ReservationType.WriteExclusiveRegistrantsOnly, [true, true, true, true, true, false] },
        { ReservationType.ExclusiveAccessRegistrantsOnly, [true, true, true, true, false, false] },
        { ReservationType.WriteExclusiveAllRegistrants, [true, true, true, true, true, false] },
        { ReservationType.ExclusiveAccessAllRegistrants, [true, true, true, true, false, false] },
    };

    [Theory]
    [MemberData(nameof(Access))]
    public void EachTypeLetsHoldersRegistrantsAndOthersDoWhatTheSpecificationSays(ReservationType type, bool[] allowed)
    {
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        Ok(_a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, type, KeyA));
        Host[] who = [_a, _b, _c];
        for (int i = 0; i < 3; i++)
        {
            Assert.True(allowed[2 * i] == who[i].Read().IsSuccess, $"{type}: read by {"ABC"[i]}");
            NvmeStatus w = who[i].Write();
            Assert.True(allowed[2 * i + 1] == w.IsSuccess, $"{type}: write by {"ABC"[i]}: {w}");
            if (!w.IsSuccess)
            {
                Is(Conflict, w);
                Assert.True(w.DoNotRetry);
                Is(Conflict, who[i].Q.Flush(Ns));
                Is(Conflict, who[i].Q.WriteZeroes(Ns, 0, 1));
                Is(Conflict, who[i].Q.Deallocate(Ns, [(0UL, 1u)]));
            }
        }
        ReservationStatus st = _c.Q.GetReservationStatus(Ns);
        Assert.Equal(type, st.Type);
        bool all = type is ReservationType.WriteExclusiveAllRegistrants or ReservationType.ExclusiveAccessAllRegistrants;
        Assert.Equal([true, all], st.Registrants.Select(r => r.HoldsReservation));
        // The other namespace is not reserved.
        Ok(_c.Q.Write(2, 0, 1, new byte[4096]));
    }

    [Fact]
    public void AcquireIsForOneHolderAtATime()
    {
        Is(Conflict, _a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, KeyA)); // not registered
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        Is(Conflict, _a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, KeyB)); // wrong key
        Is(InvalidField, _a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.None, KeyA));
        Is(InvalidField, _a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, (ReservationType)7, KeyA));
        Ok(_a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, KeyA));
        Ok(_a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, KeyA)); // again: no change
        Is(Conflict, _a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.ExclusiveAccess, KeyA));
        Is(Conflict, _b.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, KeyB));
        Assert.Equal(2u, _a.Q.GetReservationStatus(Ns).Generation); // Acquire does not count
    }

    [Fact]
    public void PreemptTakesTheReservationAndTellsThePreempted()
    {
        _a.Nvme.EnableAsyncEvents(0, count: 2);
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        Ok(_a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, KeyA));
        Ok(_a.Write());
        Is(Conflict, _b.Write());
        Is(InvalidField, _b.Q.ReservationAcquire(Ns, ReservationAction.Preempt, ReservationType.WriteExclusive, KeyB, 0));
        Is(Conflict, _b.Q.ReservationAcquire(Ns, ReservationAction.Preempt, ReservationType.WriteExclusive, KeyB, 0x999)); // no such key
        Ok(_b.Q.ReservationAcquire(Ns, ReservationAction.Preempt, ReservationType.ExclusiveAccess, KeyB, KeyA));

        ReservationStatus st = _c.Q.GetReservationStatus(Ns);
        Assert.Equal(ReservationType.ExclusiveAccess, st.Type);
        Assert.Equal([(_b.Id, true)], st.Registrants.Select(r => (r.HostId, r.HoldsReservation)));
        Assert.Equal(3u, st.Generation);
        Is(Conflict, _a.Write());
        Is(Conflict, _a.Read());
        Ok(_b.Write());

        // Host A was told: an event for the Reservation Notification log, then the entry.
        uint dw0 = _a.Nvme.WaitForEvent(TimeSpan.FromSeconds(5));
        Assert.Equal(ReservationNotification.AsyncEventType, (byte)(dw0 & 0x7));
        Assert.Equal(LogPageId.ReservationNotification, AsyncEvent.LogPageOf(dw0));
        byte[] log = _a.Nvme.GetLogPage(LogPageId.ReservationNotification, ReservationNotification.Size);
        Assert.Equal(1ul, BitConverter.ToUInt64(log, ReservationNotification.LogPageCount));
        Assert.Equal(ReservationNotification.RegistrationPreempted, log[ReservationNotification.Type]);
        Assert.Equal(0, log[ReservationNotification.Available]);
        Assert.Equal(Ns, BitConverter.ToUInt32(log, ReservationNotification.Nsid));
        // Read: the log is empty again; host B, who preempted, was told nothing.
        Assert.All(_a.Nvme.GetLogPage(LogPageId.ReservationNotification, ReservationNotification.Size), b => Assert.Equal(0, b));
        Assert.All(_b.Nvme.GetLogPage(LogPageId.ReservationNotification, ReservationNotification.Size), b => Assert.Equal(0, b));
    }

    [Fact]
    public void PreemptAndAbortLeavesNothingOfThePreemptedToRun()
    {
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        Ok(_a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusiveRegistrantsOnly, KeyA));
        Ok(_b.Write(0x01));
        Ok(_b.Q.ReservationAcquire(Ns, ReservationAction.PreemptAndAbort, ReservationType.WriteExclusiveRegistrantsOnly, KeyB, KeyA));
        Is(Conflict, _a.Write(0x02));
        var back = new byte[512];
        Ok(_b.Q.Read(Ns, 0, 1, back));
        Assert.All(back, b => Assert.Equal(0x01, b));
    }

    [Fact]
    public void PreemptUnderAllRegistrantsRemovesTheOthers()
    {
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        Ok(_c.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyC));
        Ok(_a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusiveAllRegistrants, KeyA));
        // Every registrant holds it: B may acquire the same type (no change), and release does not end it for the others.
        Ok(_b.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusiveAllRegistrants, KeyB));
        Ok(_c.Q.ReservationAcquire(Ns, ReservationAction.Preempt, ReservationType.ExclusiveAccessAllRegistrants, KeyC, KeyB)); // B only
        ReservationStatus st = _a.Q.GetReservationStatus(Ns);
        Assert.Equal(ReservationType.WriteExclusiveAllRegistrants, st.Type);
        Assert.Equal([_a.Id, _c.Id], st.Registrants.Select(r => r.HostId));
        Ok(_c.Q.ReservationAcquire(Ns, ReservationAction.Preempt, ReservationType.ExclusiveAccessAllRegistrants, KeyC, 0)); // everyone else
        st = _a.Q.GetReservationStatus(Ns);
        Assert.Equal(ReservationType.ExclusiveAccessAllRegistrants, st.Type);
        Assert.Equal([(_c.Id, true)], st.Registrants.Select(r => (r.HostId, r.HoldsReservation)));
        // The last registrant leaving ends it.
        Ok(_c.Q.ReservationRegister(Ns, ReservationAction.Unregister, KeyC, 0));
        Assert.Equal(ReservationType.None, _a.Q.GetReservationStatus(Ns).Type);
        Ok(_a.Write());
    }

    [Fact]
    public void ReleaseAndClear()
    {
        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        Ok(_a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.ExclusiveAccessRegistrantsOnly, KeyA));
        Is(Conflict, _c.Q.ReservationRelease(Ns, ReservationAction.Release, ReservationType.ExclusiveAccessRegistrantsOnly, KeyC));
        Is(Conflict, _a.Q.ReservationRelease(Ns, ReservationAction.Release, ReservationType.ExclusiveAccessRegistrantsOnly, KeyB));
        Ok(_b.Q.ReservationRelease(Ns, ReservationAction.Release, ReservationType.ExclusiveAccessRegistrantsOnly, KeyB)); // not the holder: no-op
        Assert.Equal(ReservationType.ExclusiveAccessRegistrantsOnly, _c.Q.GetReservationStatus(Ns).Type);
        Is(InvalidField, _a.Q.ReservationRelease(Ns, ReservationAction.Release, ReservationType.WriteExclusive, KeyA));
        Is(Conflict, _c.Read());
        Ok(_a.Q.ReservationRelease(Ns, ReservationAction.Release, ReservationType.ExclusiveAccessRegistrantsOnly, KeyA));
        Assert.Equal(ReservationType.None, _c.Q.GetReservationStatus(Ns).Type);
        Ok(_c.Read());
        // B, a registrant of a registrants-only reservation, was told it was released.
        Assert.Equal(ReservationNotification.ReservationReleased, _b.Nvme.GetLogPage(LogPageId.ReservationNotification, 64)[ReservationNotification.Type]);

        Ok(_a.Q.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, KeyA));
        Ok(_b.Q.ReservationRelease(Ns, ReservationAction.Clear, ReservationType.None, KeyB));
        ReservationStatus st = _c.Q.GetReservationStatus(Ns);
        Assert.Equal((ReservationType.None, 0), (st.Type, st.RegisteredControllers));
        Ok(_c.Write());
        Assert.Equal(ReservationNotification.ReservationPreempted, _a.Nvme.GetLogPage(LogPageId.ReservationNotification, 64)[ReservationNotification.Type]);
        Assert.Equal(0, _b.Nvme.GetLogPage(LogPageId.ReservationNotification, 64)[ReservationNotification.Type]);
    }

    [Fact]
    public void TheNotificationMaskIsPerControllerAndNamespace()
    {
        Assert.Equal(0u, _a.Nvme.GetFeature(FeatureId.ReservationNotificationMask, nsid: Ns));
        Assert.Equal(FeatureCapabilities.Changeable | FeatureCapabilities.NamespaceSpecific,
            _a.Nvme.GetFeature(FeatureId.ReservationNotificationMask, FeatureSelect.SupportedCapabilities, nsid: Ns));
        Assert.Equal(GenericStatus.InvalidField, Assert.Throws<NvmeCommandException>(
            () => _a.Nvme.GetFeature(FeatureId.ReservationNotificationMask, nsid: 0xFFFFFFFF)).Status.Code);
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat, Assert.Throws<NvmeCommandException>(
            () => _a.Nvme.GetFeature(FeatureId.ReservationNotificationMask, nsid: 9)).Status.Code);
        Assert.Equal(GenericStatus.InvalidField, Assert.Throws<NvmeCommandException>(
            () => _a.Nvme.SetFeature(FeatureId.ReservationNotificationMask, 1, nsid: Ns)).Status.Code);
        uint mask = ReservationNotification.MaskBit(ReservationNotification.RegistrationPreempted);
        _a.Nvme.SetFeature(FeatureId.ReservationNotificationMask, mask, nsid: 0xFFFFFFFF);
        Assert.Equal(mask, _a.Nvme.GetFeature(FeatureId.ReservationNotificationMask, nsid: 2));
        Assert.Equal(0u, _b.Nvme.GetFeature(FeatureId.ReservationNotificationMask, nsid: Ns));

        Ok(_a.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyA));
        Ok(_b.Q.ReservationRegister(Ns, ReservationAction.Register, 0, KeyB));
        Ok(_b.Q.ReservationAcquire(Ns, ReservationAction.Preempt, ReservationType.WriteExclusive, KeyB, KeyA));
        Assert.Equal(0, _a.Nvme.GetLogPage(LogPageId.ReservationNotification, 64)[ReservationNotification.Type]); // masked
    }

    [Fact]
    public void ReservationPersistenceNeedsAStateDirectory()
    {
        Assert.Equal(0u, _a.Nvme.GetFeature(FeatureId.ReservationPersistence, nsid: Ns));
        Assert.Equal(FeatureCapabilities.NamespaceSpecific, _a.Nvme.GetFeature(FeatureId.ReservationPersistence, FeatureSelect.SupportedCapabilities, nsid: Ns));
        Assert.Equal(GenericStatus.InvalidField, Assert.Throws<NvmeCommandException>(
            () => _a.Nvme.SetFeature(FeatureId.ReservationPersistence, 1, nsid: Ns)).Status.Code);
    }
}

/// <summary>Persist Through Power Loss: a namespace's reservation state outlives the node when PTPL is set, and only then.</summary>
public sealed class ReservationPersistenceTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sn-state-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private TestNode Start() => new(new() { ["Node:StateDirectory"] = _dir });

    [Fact]
    public void WithPtplTheStateSurvivesARestart()
    {
        Guid a = Guid.NewGuid(), b = Guid.NewGuid();
        using (TestNode node = Start())
        {
            using NvmeHost ha = node.Connect(new NvmeHostOptions { HostId = a });
            using NvmeHost hb = node.Connect(new NvmeHostOptions { HostId = b });
            Assert.Equal(0xFF, ha.Identify(Cns.Namespace, 1)[31]); // PTPL capable now
            Assert.True(ha.IoQueues[0].ReservationRegister(1, ReservationAction.Register, 0, 0xA, cptpl: ChangePtpl.Set).IsSuccess);
            Assert.True(hb.IoQueues[0].ReservationRegister(1, ReservationAction.Register, 0, 0xB).IsSuccess);
            Assert.True(ha.IoQueues[0].ReservationAcquire(1, ReservationAction.Acquire, ReservationType.WriteExclusiveRegistrantsOnly, 0xA).IsSuccess);
            Assert.True(hb.IoQueues[0].ReservationRegister(2, ReservationAction.Register, 0, 0xB).IsSuccess); // namespace 2: no PTPL
            Assert.Equal(1u, ha.GetFeature(FeatureId.ReservationPersistence, nsid: 1));
        }
        using (TestNode node = Start())
        {
            using NvmeHost hb = node.Connect(new NvmeHostOptions { HostId = b });
            using NvmeHost other = node.Connect();
            ReservationStatus st = hb.IoQueues[0].GetReservationStatus(1);
            Assert.True(st.Ptpl);
            Assert.Equal(ReservationType.WriteExclusiveRegistrantsOnly, st.Type);
            Assert.Equal([(a, 0xAul, true), (b, 0xBul, false)], st.Registrants.Select(r => (r.HostId, r.Key, r.HoldsReservation)));
            Assert.Equal(GenericStatus.ReservationConflict, other.IoQueues[0].Write(1, 0, 1, new byte[512]).Code);
            Assert.Empty(hb.IoQueues[0].GetReservationStatus(2).Registrants);
            // Clearing PTPL (Set Features) forgets the state at the next restart.
            hb.SetFeature(FeatureId.ReservationPersistence, 0, nsid: 1);
        }
        using (TestNode node = Start())
        {
            using NvmeHost h = node.Connect();
            Assert.Empty(h.IoQueues[0].GetReservationStatus(1).Registrants);
        }
    }

    [Fact]
    public void AnotherNamespaceUnderARemovedNsidDoesNotInheritItsKeptState()
    {
        using TestNode node = Start();
        Subsystem sub = node.Node.Target.FindSubsystem(TestNode.Nqn)!;
        byte[] nguid = sub.GetNamespace(1)!.Nguid;
        using NvmeHost h = node.Connect();
        Assert.True(h.IoQueues[0].ReservationRegister(1, ReservationAction.Register, 0, 0xA, cptpl: ChangePtpl.Set).IsSuccess);

        // NSID 1 is removed and given to another bdev: it starts with no reservation.
        Assert.True(node.Node.RemoveNamespace(sub, 1, TimeSpan.FromSeconds(10)));
        string other = node.Node.CreateMallocBdev(null, 512, 2048);
        Assert.Equal(1u, node.Node.AddNamespace(sub, other, 1, null, null, null));
        Assert.Empty(h.IoQueues[0].GetReservationStatus(1).Registrants);
        Assert.Contains(node.Logs.Lines, l => l.Contains("belongs to another namespace"));

        // The first namespace back under its own NGUID finds its state.
        Assert.True(node.Node.RemoveNamespace(sub, 1, TimeSpan.FromSeconds(10)));
        Assert.Equal(1u, node.Node.AddNamespace(sub, "Malloc0", 1, nguid, null, null));
        Assert.Equal([0xAul], h.IoQueues[0].GetReservationStatus(1).Registrants.Select(r => r.Key));
    }

    [Fact]
    public void ADamagedStateFileIsReportedAndIgnored()
    {
        string path;
        using (TestNode node = Start())
            path = Directory.GetFiles(_dir).SingleOrDefault() ?? Path.Combine(_dir, "test-nqn.2026-11.io.storagenode_test-ns1.reservation.json");
        File.WriteAllText(path, "{ not json");
        using TestNode again = Start();
        Assert.Contains(again.Logs.Lines, l => l.Contains("cannot be read"));
        using NvmeHost h = again.Connect();
        Assert.True(h.IoQueues[0].Write(1, 0, 1, new byte[512]).IsSuccess);
    }

    [Fact]
    public void AConfiguredStateDirectoryThatCannotBeMadeIsAnErrorTheDefaultOneIsNot()
    {
        // Under a regular file: no folder can be made there, even as root.
        string file = Path.Combine(_dir, "a-file");
        File.WriteAllText(file, "");
        string under = Path.Combine(file, "state");
        var e = Assert.Throws<StorageNode.Config.ConfigException>(() => new TestNode(new() { ["Node:StateDirectory"] = under }));
        Assert.Equal("Node:StateDirectory", e.Key);
        // The default one (beside the configuration file): the node runs without PTPL and says why.
        using var node = new TestNode(adjust: c => c with { StateDirectory = under, StateDirectoryIsDefault = true });
        Assert.Contains(node.Logs.Lines, l => l.Contains("reservations cannot persist through power loss"));
        using NvmeHost h = node.Connect();
        Assert.Equal(0xFE, h.Identify(Cns.Namespace, 1)[31]);
    }
}
