using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Pair.Tests;

/// <summary>
/// A namespace's reservation is one state for the pair: its owner keeps it, the partner relays reservation commands and
/// the I/O they govern to it, both nodes report the same thing, and a host is told of what another host did through
/// whichever node it is connected to. Namespace 1 belongs to node A.
/// </summary>
public class ReservationPairTests
{
    private const uint Ns = 1;
    private const ulong Key1 = 0x1111, Key2 = 0x2222;

    private static void Ok(NvmeStatus st) => Assert.True(st.IsSuccess, st.ToString());

    private static void IsConflict(NvmeStatus st)
    {
        Assert.Equal((StatusCodeType.Generic, GenericStatus.ReservationConflict), (st.Type, (byte)st.Code));
        Assert.True(st.DoNotRetry);
    }

    private static byte[] Block(byte tag) => Enumerable.Repeat(tag, 512).ToArray();

    [Theory]
    [InlineData(PairRigs.OneProcess, 0)]
    [InlineData(PairRigs.TwoProcesses, 3 * 3600)]
    public void BothNodesKeepAndReportOneReservation(string kind, int clockOffsetB)
    {
        using IPairRig pair = PairRigs.Create(kind, clockOffsetB);
        pair.WaitHealthy();
        Guid h1 = Guid.NewGuid(), h2 = Guid.NewGuid();
        using NvmeHost viaA = pair.Connect(pair.EndpointA, h1);   // the owner's path
        using NvmeHost viaB = pair.Connect(pair.EndpointB, h2);   // relayed by B
        IoQueue a = viaA.IoQueues[0], b = viaB.IoQueues[0];

        Ok(a.ReservationRegister(Ns, ReservationAction.Register, 0, Key1));
        Ok(b.ReservationRegister(Ns, ReservationAction.Register, 0, Key2));
        Ok(a.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, Key1));
        // One state, reported the same through both nodes.
        ReservationStatus fromA = a.GetReservationStatus(Ns), fromB = b.GetReservationStatus(Ns);
        Assert.Equal((ReservationType.WriteExclusive, 2u), (fromA.Type, fromA.Generation));
        Assert.Equal(fromA.Registrants, fromB.Registrants);
        Assert.Equal((fromA.Type, fromA.Generation), (fromB.Type, fromB.Generation));
        Assert.Equal([(h1, Key1, true), (h2, Key2, false)], fromB.Registrants.Select(r => (r.HostId, r.Key, r.HoldsReservation)));

        // The owner checks relayed I/O against the host the partner relays for.
        Ok(a.Write(Ns, 0, 1, Block(0x01)));
        IsConflict(b.Write(Ns, 0, 1, Block(0x02)));
        Ok(b.Read(Ns, 0, 1, new byte[512]));
        Is(b.ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusive, Key2), GenericStatus.ReservationConflict);

        // Host 2 preempts through B: host 1 loses its registration, and its writes through the owner now conflict.
        Ok(b.ReservationAcquire(Ns, ReservationAction.Preempt, ReservationType.WriteExclusive, Key2, Key1));
        IsConflict(a.Write(Ns, 0, 1, Block(0x03)));
        Ok(b.Write(Ns, 0, 1, Block(0x04)));
        var back = new byte[512];
        Ok(a.Read(Ns, 0, 1, back));
        Assert.All(back, x => Assert.Equal(0x04, x));
        Assert.Equal(ReservationNotification.RegistrationPreempted, viaA.GetLogPage(LogPageId.ReservationNotification, 64)[ReservationNotification.Type]);
        Assert.Equal([(h2, true)], a.GetReservationStatus(Ns).Registrants.Select(r => (r.HostId, r.HoldsReservation)));
    }

    private static void Is(NvmeStatus st, byte code) => Assert.Equal(code, (byte)st.Code);

    [Fact]
    public void AHostConnectedOnlyThroughThePartnerIsToldWhatTheOwnerDid()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        Guid h1 = Guid.NewGuid(), h2 = Guid.NewGuid();
        using NvmeHost viaB = pair.Connect(pair.EndpointB, h1);
        using NvmeHost viaA = pair.Connect(pair.EndpointA, h2);
        viaB.EnableAsyncEvents(0);
        Ok(viaB.IoQueues[0].ReservationRegister(Ns, ReservationAction.Register, 0, Key1));
        Ok(viaB.IoQueues[0].ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.ExclusiveAccess, Key1));
        Ok(viaA.IoQueues[0].ReservationRegister(Ns, ReservationAction.Register, 0, Key2));
        IsConflict(viaA.IoQueues[0].Read(Ns, 0, 1, new byte[512]));
        Ok(viaA.IoQueues[0].ReservationAcquire(Ns, ReservationAction.PreemptAndAbort, ReservationType.ExclusiveAccess, Key2, Key1));
        IsConflict(viaB.IoQueues[0].Read(Ns, 0, 1, new byte[512]));

        // Host 1's controller is on B: the owner told B, B logged it and raised the event.
        uint dw0 = viaB.WaitForEvent(TimeSpan.FromSeconds(5));
        Assert.Equal(LogPageId.ReservationNotification, AsyncEvent.LogPageOf(dw0));
        byte[] log = viaB.GetLogPage(LogPageId.ReservationNotification, 64);
        Assert.Equal(ReservationNotification.RegistrationPreempted, log[ReservationNotification.Type]);
        Assert.Equal(Ns, BitConverter.ToUInt32(log, ReservationNotification.Nsid));
    }

    [Fact]
    public void AReservationHoldsAcrossAPathSwitch()
    {
        using var pair = new TestPair();
        pair.WaitHealthy();
        Guid h1 = Guid.NewGuid(), h2 = Guid.NewGuid();
        using NvmeHost h1a = pair.Connect(pair.EndpointA, h1);
        using NvmeHost h1b = pair.Connect(pair.EndpointB, h1);
        using NvmeHost h2b = pair.Connect(pair.EndpointB, h2);
        Ok(h1a.IoQueues[0].ReservationRegister(Ns, ReservationAction.Register, 0, Key1));
        Ok(h1a.IoQueues[0].ReservationAcquire(Ns, ReservationAction.Acquire, ReservationType.WriteExclusiveRegistrantsOnly, Key1));
        // The holder moves to the partner's path (as after a path failure): still the holder there.
        Ok(HostWrites.WriteRetryingPathErrors(h1b.IoQueues[0], 0x10, Ns, lba: 8));
        IsConflict(h2b.IoQueues[0].Write(Ns, 8, 8, HostWrites.Pattern(0x20)));
        Ok(h2b.IoQueues[0].ReservationRegister(Ns, ReservationAction.Register, 0, Key2));
        Ok(h2b.IoQueues[0].Write(Ns, 8, 8, HostWrites.Pattern(0x21)));
        // And back to the owner's path, on a new association (the owner closes one made before the relay opened: docs/ha.md).
        using NvmeHost again = pair.Connect(pair.EndpointA, h1);
        Ok(HostWrites.WriteRetryingPathErrors(again.IoQueues[0], 0x11, Ns, lba: 8));
        ReservationStatus st = h2b.IoQueues[0].GetReservationStatus(Ns);
        Assert.Equal([h1, h2], st.Registrants.Select(r => r.HostId));
    }

    [Fact]
    public void ThePartnerReportsTheOwnersPersistThroughPowerLoss()
    {
        string dirA = Directory.CreateTempSubdirectory("sn-a-").FullName, dirB = Directory.CreateTempSubdirectory("sn-b-").FullName;
        try
        {
            using var pair = new TestPair(new() { ["Node:StateDirectory"] = dirA }, new() { ["Node:StateDirectory"] = dirB });
            pair.WaitHealthy();
            Guid h1 = Guid.NewGuid();
            using NvmeHost viaB = pair.Connect(pair.EndpointB, h1);
            Assert.Equal(0u, viaB.GetFeature(FeatureId.ReservationPersistence, nsid: Ns));
            // Set through B (relayed to the owner, which keeps the state in its directory).
            Ok(viaB.IoQueues[0].ReservationRegister(Ns, ReservationAction.Register, 0, Key1, cptpl: ChangePtpl.Set));
            TestPair.WaitUntil(() => viaB.GetFeature(FeatureId.ReservationPersistence, nsid: Ns) == 1, "B reports the owner's PTPL");
            Assert.True(viaB.IoQueues[0].GetReservationStatus(Ns).Ptpl);
            Assert.Single(Directory.GetFiles(dirA));
            Assert.Empty(Directory.GetFiles(dirB));
            // PTPL is set where the state is kept: Set Features through the partner is refused (Register's CPTPL is relayed).
            Assert.Throws<NvmeCommandException>(() => viaB.SetFeature(FeatureId.ReservationPersistence, 0, nsid: Ns));
        }
        finally
        {
            Directory.Delete(dirA, true);
            Directory.Delete(dirB, true);
        }
    }
}
