using System.Net;
using Microsoft.Extensions.Logging;
using StorageNode.Nvme.Spec;
using StorageNode.Target;

namespace StorageNode.Pair;

/// <summary>
/// The interconnect listener's side of the pair (<see cref="IInterconnectHandler"/>): only the partner may connect (its
/// identity, from its configured address), the partner's associations are tracked per subsystem (a newer one replaces
/// an older), and the vendor-specific admin commands run here — as the owner (registrations, relay opens) and as the
/// proxy (drains of the relays this node sends).
/// </summary>
public sealed class InterconnectService : IInterconnectHandler
{
    private readonly PairNode _pair;
    private readonly ILogger _log;
    private readonly List<Controller> _inbound = [];

    internal InterconnectService(PairNode pair, ILogger log)
    {
        _pair = pair;
        _log = log;
    }

    /// <summary>The partner's associations into this node (a snapshot).</summary>
    public IReadOnlyList<Controller> Inbound
    {
        get { lock (_inbound) return [.. _inbound]; }
    }

    public string? RefusePartner(string hostNqn, Guid hostId, string peerAddress)
    {
        var cfg = _pair.Config;
        if (hostNqn != PairNode.IdentityNqn(cfg.Name, cfg.Partner) || hostId != PairNode.IdentityId(cfg.Name, cfg.Partner))
            return $"host '{hostNqn}' is not this node's partner";
        IPAddress? peer = PeerIp(peerAddress);
        IPAddress expected = cfg.PartnerInterconnect.Address;
        if (peer == null || !(peer.Equals(expected) || (peer.IsIPv4MappedToIPv6 && peer.MapToIPv4().Equals(expected))))
            return $"the partner's identity from {peerAddress}, but the partner's interconnect address is {expected} (Cluster:PartnerInterconnect)";
        return null;
    }

    private static IPAddress? PeerIp(string peer)
    {
        if (IPEndPoint.TryParse(peer, out IPEndPoint? ep)) return ep.Address;
        return IPAddress.TryParse(peer, out IPAddress? ip) ? ip : null;
    }

    public bool IsVendorCommand(byte opcode) => InterconnectOpcode.IsVendor(opcode);

    public void OnAssociationCreated(Controller association)
    {
        List<Controller> older;
        lock (_inbound)
        {
            older = _inbound.FindAll(c => c.Subsystem == association.Subsystem);
            _inbound.Add(association);
        }
        // A new association replaces the old: close the old one so nothing still in flight on it can arrive.
        foreach (Controller c in older) c.Destroy("replaced by a newer association from the partner");
    }

    /// <summary>Whether <paramref name="association"/> is the partner's newest association for its subsystem (a word on an older one is from before it reconnected).</summary>
    internal bool IsCurrent(Controller association)
    {
        lock (_inbound)
        {
            for (int i = _inbound.Count - 1; i >= 0; i--)
                if (_inbound[i].Subsystem == association.Subsystem) return _inbound[i] == association;
            return false;
        }
    }

    public void OnAssociationEnded(Controller association)
    {
        lock (_inbound) _inbound.Remove(association);
        _pair.Gate.RemoveAssociation(association);
    }

    /// <summary>
    /// Closes the partner's associations for a subsystem except the one with CNTLID <paramref name="keep"/> (0: all).
    /// Returns them: once their queues are closed (<see cref="Controller.QueuesClosed"/>) nothing more arrives on them.
    /// </summary>
    public IReadOnlyList<Controller> CloseInbound(Subsystem s, ushort keep, string reason) => CloseInbound(s, c => c.Cntlid != keep, reason);

    /// <summary>Closes the partner's associations for a subsystem made at or before <paramref name="madeUntil"/> (Stopwatch ticks).</summary>
    public IReadOnlyList<Controller> CloseInboundMadeUntil(Subsystem s, long madeUntil, string reason) => CloseInbound(s, c => c.CreatedTicks <= madeUntil, reason);

    private IReadOnlyList<Controller> CloseInbound(Subsystem s, Predicate<Controller> which, string reason)
    {
        List<Controller> close;
        lock (_inbound) close = _inbound.FindAll(c => c.Subsystem == s && which(c));
        foreach (Controller c in close)
        {
            _log.LogInformation("{Ctrl}: closing the partner's association: {Reason}", c, reason);
            c.Destroy(reason);
        }
        return close;
    }

    /// <summary>Closes every association from the partner (it restarted: what it had in flight is gone).</summary>
    public void CloseAllInbound(string reason)
    {
        foreach (Controller c in Inbound) c.Destroy(reason);
    }

    /// <summary>
    /// A request whose answer makes the partner hear this node (a heartbeat, the descriptor): noted
    /// (<see cref="InterconnectLink.NotePartnerHeard"/>), or failed (true) on an association a takeover of one of the
    /// partner's groups refused — the partner no longer hears this node there (its link goes down; it reconnects and
    /// learns the new term).
    /// </summary>
    private bool RefusedAfterTakeover(NvmfRequest req, Controller association)
    {
        if (_pair.LinkFor(association.Subsystem) is not { } link || !link.NotePartnerHeard(association.CreatedTicks)) return false;
        req.Fail(NvmeStatus.Generic(GenericStatus.CommandSequenceError));
        return true;
    }

    public void Execute(NvmfRequest req, Controller association)
    {
        switch (req.Sqe.Opcode)
        {
            case InterconnectOpcode.RegisterHost:
            {
                if (req.Length < HostIdentity.Length) { req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid)); return; }
                (string nqn, Guid id) = HostIdentity.Read(req.DataSpan);
                // An empty Host NQN (SPDK's host sends one unless told otherwise) is accepted as Connect accepts it:
                // where any host is allowed; the host is then known by its Host Identifier.
                if (nqn.Length == 0 && !association.Subsystem.AllowAnyHost) { req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField)); return; }
                RelayBinding? b = _pair.Gate.Register(association, nqn, id);
                if (b == null) { req.Fail(NvmeStatus.Generic(GenericStatus.InternalError, dnr: false)); return; }
                req.Cqe.Dw0 = b.Handle;
                req.Complete();
                return;
            }
            case InterconnectOpcode.UnregisterHost:
                _pair.Gate.Unregister(association, req.Sqe.Cdw10);
                req.Complete();
                return;
            case InterconnectOpcode.GetDescriptor:
            {
                if (_pair.AskingToTakeOver(association.Subsystem))
                {
                    // The partner comes back while this node asks the witness for one of its groups: it learns the
                    // outcome once the ask is over (it connects again; PairNode.AskingToTakeOver).
                    req.Fail(NvmeStatus.Generic(GenericStatus.CommandSequenceError));
                    return;
                }
                // Answered, the descriptor makes the partner hear this node (its self-fence counts from its request), as
                // a heartbeat does.
                if (RefusedAfterTakeover(req, association)) return;
                byte[] json = _pair.DescriptorFor(association.Subsystem).ToJson();
                if (json.Length > req.Length) { req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid)); return; }
                Span<byte> dest = req.DataSpan;
                dest.Clear();
                json.CopyTo(dest);
                req.Cqe.Dw0 = (uint)json.Length;
                req.Complete();
                return;
            }
            case InterconnectOpcode.Heartbeat:
            case InterconnectOpcode.HeartbeatRenewing:
            {
                association.TouchKeepAlive();
                if (RefusedAfterTakeover(req, association)) return;
                if (req.Sqe.Opcode == InterconnectOpcode.HeartbeatRenewing && MirrorLease.TryRead(req.Sqe, out OwnerDeadline until))
                {
                    // This node as a keeper: the owner renews the "in sync" words it lists, said on this association.
                    long nowTicks = System.Diagnostics.Stopwatch.GetTimestamp();
                    long untilTicks = _pair.Clock.OwnDeadlineTicks(until, nowTicks);
                    // A deadline further ahead than any lease can be (the owner's heartbeat timeout, at most 120 s: the
                    // clock's ±5.9 h window wrapped, a heartbeat read hours late after a freeze) renews nothing.
                    if (untilTicks - nowTicks > MaxLeaseSeconds * System.Diagnostics.Stopwatch.Frequency)
                        untilTicks = 0;
                    ReadOnlySpan<byte> entries = req.DataSpan;
                    for (int at = 0; at + MirrorLease.EntryBytes <= entries.Length; at += MirrorLease.EntryBytes)
                    {
                        (uint nsid, uint sequence) = MirrorLease.ReadEntry(entries[at..]);
                        if (association.Subsystem.GetNamespace(nsid) is { IsRemote: true, Replica: not null } kept)
                            kept.ReplicaKnowledge.Renew(association, sequence, untilTicks);
                    }
                }
                long now = _pair.Clock.WireNow;
                req.Cqe.Dw0 = (uint)now;
                req.Cqe.Dw1 = (uint)(now >> 32);
                req.Complete();
                return;
            }
            case InterconnectOpcode.RelayOpen:
            {
                RelayBinding? b = _pair.Gate.FindBinding(req.Sqe.Cdw10);
                if (b == null || b.Association != association) { req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField)); return; }
                _pair.Gate.OnRelayOpen(req, b, req.Sqe.Cdw11 | ((long)req.Sqe.Cdw12 << 32), req.Sqe.Cdw13 | ((long)req.Sqe.Cdw14 << 32));
                return;
            }
            case InterconnectOpcode.RelayDrain:
            {
                // This node as the proxy: the partner owns what it asks about.
                if (req.Length < DrainAnswer.Size) { req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid)); return; }
                InterconnectLink? link = _pair.LinkFor(association.Subsystem);
                if (link == null) { req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField)); return; }
                DrainAnswer a = link.Relays.Drain(HostKey.ReadFrom(req.Sqe), req.Sqe.Cdw14 | ((long)req.Sqe.Cdw15 << 32));
                Span<byte> dest = req.DataSpan;
                dest.Clear();
                System.Runtime.InteropServices.MemoryMarshal.Write(dest, in a);
                req.Complete();
                return;
            }
            case InterconnectOpcode.ReservationNotice:
            {
                // This node as the proxy: the partner owns the namespace and keeps its reservation.
                (Guid host, uint nsid, byte type, bool ptpl) = ReservationNoticeFields.Read(req.Sqe);
                Namespace? ns = association.Subsystem.GetNamespace(nsid);
                if (ns is not { IsRemote: true } || type > ReservationNotification.ReservationPreempted)
                {
                    req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
                    return;
                }
                ns.Reservations.MirrorPtpl(ptpl);
                if (type != ReservationNotification.Empty) association.Subsystem.DeliverReservationNotices([new ReservationNotice(host, nsid, type)]);
                req.Complete();
                return;
            }
            case InterconnectOpcode.ReplicaState:
            {
                // This node as the replica's keeper: the partner owns the namespace.
                (uint nsid, uint word, bool overwrite, uint epoch, uint sequence, long incarnation, long generation) = ReplicaStateFields.Read(req.Sqe);
                Namespace? ns = association.Subsystem.GetNamespace(nsid);
                if (ns is not { IsRemote: true, Replica: not null } || word > (uint)ReplicaWord.InSync)
                {
                    req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
                    return;
                }
                ReplicaKnowledge k = ns.ReplicaKnowledge;
                if (!k.Ready)
                {
                    // Its data was this node's own namespace a moment ago: commands on it are still finishing (the owner
                    // tries again).
                    req.Fail(NvmeStatus.Generic(GenericStatus.CommandSequenceError));
                    return;
                }
                ReplicaWord before = k.Word;
                ReplicaHolds heldBefore = k.Kept;
                ReplicaAnswer answer = k.Offer(association, incarnation, (ReplicaWord)word, epoch, sequence, _pair.Membership.PartnerIncarnation, generation, overwrite,
                    ReplicaStateFields.BaseEpoch(req.Sqe), out bool whole);
                // (saved again when an earlier save failed: a device failure's "no base" may not be in it yet)
                if (k.HoldsPath != null && (k.Kept != heldBefore || k.SaveFailed != null) && !SaveHolds(ns, k))
                {
                    k.Restore(heldBefore); // as the record says
                    // Not answered as applied: the owner must not start copying over a replica whose record says it is
                    // consistent (it tries again).
                    req.Fail(NvmeStatus.Generic(GenericStatus.InternalError));
                    return;
                }
                if (answer == ReplicaAnswer.NotNow)
                {
                    // This node asks the witness for the group: the owner says it again once the ask is over.
                    req.Fail(NvmeStatus.Generic(GenericStatus.CommandSequenceError));
                    return;
                }
                if (answer == ReplicaAnswer.Refused)
                {
                    // The owner would resync data it did not have when this replica was whole over it: the group stays
                    // inaccessible here too until an operator decides (cluster_replica_discard on the owner).
                    (long held, _) = k.Holds;
                    if (association.Subsystem.HoldGroup(ns.AnaGroupId, k))
                        _log.LogWarning("{Nqn}: NSID {Nsid}: refused the owner's resync: this node's replica holds a consistent copy of its data generation {Held:x16}, the owner now has {Generation:x16} (it lost its data?); ANA group {Group} is inaccessible until an operator decides (cluster_replica_discard on the owner)",
                            association.Subsystem.Nqn, ns.Nsid, held, generation, ns.AnaGroupId);
                    req.Cqe.Dw0 = ReplicaStateFields.Refused;
                    req.Cqe.Dw1 = (uint)held;
                    req.Complete();
                    return;
                }
                if (answer == ReplicaAnswer.Applied && word == (uint)ReplicaWord.Resyncing && association.Subsystem.ReleaseGroup(ns.AnaGroupId, k))
                    _log.LogInformation("{Nqn}: NSID {Nsid}: the owner resyncs this node's replica (an operator decided); ANA group {Group} is accessible again",
                        association.Subsystem.Nqn, ns.Nsid, ns.AnaGroupId);
                if (answer == ReplicaAnswer.Applied && (before != k.Word || word == (uint)ReplicaWord.Resyncing))
                    _log.LogInformation("{Nqn}: NSID {Nsid}: the owner says this node's replica is {Word} (epoch {Epoch})", association.Subsystem.Nqn, ns.Nsid,
                        (ReplicaWord)word switch { ReplicaWord.InSync => "in sync", ReplicaWord.Resyncing => "resyncing", _ => "out of sync" }, epoch);
                // Answered either way: applied, or older than what is held (a newer word replaced it; its sender must not
                // take this answer for the keeper knowing).
                req.Cqe.Dw0 = answer != ReplicaAnswer.Applied ? 0
                    : ReplicaStateFields.Applied | (word == (uint)ReplicaWord.Resyncing && whole ? ReplicaStateFields.Whole : 0);
                req.Complete();
                return;
            }
            case InterconnectOpcode.Giveback:
            {
                // This node as the keeper of the group's replicas: the owner offers it back.
                (uint group, ulong term) = GivebackFields.Read(req.Sqe);
                if (req.Length % GivebackFields.EntryBytes != 0 || req.Length / GivebackFields.EntryBytes > association.Subsystem.MaxNamespaces)
                {
                    req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid));
                    return;
                }
                var entries = new List<(uint Nsid, long Generation)>();
                ReadOnlySpan<byte> data = req.DataSpan;
                for (int at = 0; at + GivebackFields.EntryBytes <= (int)req.Length; at += GivebackFields.EntryBytes) entries.Add(GivebackFields.ReadEntry(data[at..]));
                // On the pair's control thread (it changes namespaces over); answered on the request's reactor.
                req.PendingOps = 1;
                _pair.Enqueue(() =>
                {
                    uint dw0;
                    NvmeStatus status = NvmeStatus.Success;
                    try { dw0 = (uint)_pair.ReceiveGiveback(association, group, term, entries); }
                    catch (Exception e)
                    {
                        _log.LogError(e, "{Nqn}: ANA group {Group}: taking the giveback failed", association.Subsystem.Nqn, group);
                        dw0 = 0;
                        status = NvmeStatus.Generic(GenericStatus.InternalError, dnr: false);
                    }
                    req.Qpair.Reactor.Post(() =>
                    {
                        req.PendingOps = 0;
                        req.Cqe.Dw0 = dw0;
                        if (status.IsSuccess || req.Qpair.IsClosed) req.Complete();
                        else req.Fail(status);
                    });
                });
                return;
            }
            default:
                req.Fail(NvmeStatus.Generic(GenericStatus.InvalidOpcode));
                return;
        }
    }

    // Twice the longest heartbeat timeout a node accepts (Cluster:HeartbeatTimeoutMs, at most 120 s), whatever the partner's.
    private const long MaxLeaseSeconds = 240;

    /// <summary>
    /// Keeps what a replica in a file now holds (before the word is answered: a resync's copies start only after it, so
    /// a crash in between leaves the record as the replica is). False when it could not be written.
    /// </summary>
    private bool SaveHolds(Namespace ns, ReplicaKnowledge k)
    {
        try
        {
            ReplicaHolds kept = k.Kept;
            ReplicaHoldsFile.Save(k.HoldsPath!, kept);
            k.RecordSaved(kept);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log.LogError("NSID {Nsid}: cannot keep what this node's replica holds in {Path}: {Error}", ns.Nsid, k.HoldsPath, e.Message);
            return false;
        }
    }
}
