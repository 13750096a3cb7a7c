using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Nvme.Spec;
using StorageNode.Support;
using StorageNode.Target;
using StorageNode.Transport.Rdma;
using StorageNode.Witness;

namespace StorageNode.Pair;

/// <summary>
/// This node's part of an HA pair (docs/ha.md), and where its pieces meet: membership and heartbeats
/// (<see cref="Membership"/>), the clocks (<see cref="PairClock"/>), one interconnect link per subsystem into the
/// partner (<see cref="InterconnectLink"/>, with the proxy's relay control), the owner's fence (<see cref="HostGate"/>),
/// and the interconnect listener's side (<see cref="InterconnectService"/>). It meets the target at two seams: the I/O
/// gate (<see cref="IIoGate"/>) and namespaces whose channels take whole commands (<see cref="PartnerBdev"/>). The
/// control work runs on one thread of its own.
/// </summary>
public sealed partial class PairNode : IDisposable
{
    private readonly ILogger _log;
    private readonly List<InterconnectLink> _links = [];
    private readonly Dictionary<string, Dictionary<uint, string>> _owners;
    private readonly Dictionary<(string Nqn, uint Group), GroupOwnership> _ownership = [];
    private readonly object _ownershipLock = new();
    private readonly string? _stateDirectory;

    /// <summary>Holds a group this node owns whose replicas, which it served from, went with a restart (RAM).</summary>
    internal object LostReplicaHold { get; } = new();
    private readonly ConcurrentQueue<Action> _work = new();
    private readonly Thread _thread;
    private readonly AutoResetEvent _wake = new(false);
    private volatile bool _stop;

    public ClusterConfig Config { get; }
    public NvmfTarget Target { get; }
    public PairClock Clock { get; }
    public Membership Membership { get; }
    public HostGate Gate { get; }
    public InterconnectService Service { get; }
    /// <summary>Threads of the pair's own for control work that waits on the partner (never the shared thread pool): relay opens.</summary>
    public PairWorkers Workers { get; }
    /// <summary>The same for words to the partner (replica states, reservation notices) and drain queries: never behind relay opens.</summary>
    public PairWorkers Notices { get; }
    /// <summary>This run of the node (random at each start): the partner sees a new one after a restart.</summary>
    public long Incarnation { get; } = Random.Shared.NextInt64(1, long.MaxValue);
    public IReadOnlyList<InterconnectLink> Links => _links;
    public PartnerStatus Status => Membership.Status;
    public string? RefusedReason => Membership.RefusedReason;

    /// <summary>
    /// The node's NVMe/RDMA transport when the interconnect may use RDMA (set before <see cref="Start"/>): its
    /// interconnect PD and pool registrations serve the outbound queues. Null: NVMe/TCP only.
    /// </summary>
    public RdmaTransport? Rdma { get; set; }

    /// <summary>Raised once when the partner's configuration disagrees; the node stops (docs/configuration.md).</summary>
    public event Action<string>? Refused;

    /// <summary>The host NQN a node uses on the interconnect.</summary>
    public static string IdentityNqn(string cluster, string node) => $"nqn.2026-11.io.storagenode:cluster:{cluster}:node:{node}";

    public static Guid IdentityId(string cluster, string node)
        => new(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes($"{cluster}/{node}"))[..16]);

    /// <param name="stateDirectory">Where the groups' ownership is kept (null: nowhere; a takeover is then forgotten at a restart).</param>
    public PairNode(ClusterConfig cfg, NvmfTarget target, IReadOnlyDictionary<Subsystem, IReadOnlyDictionary<uint, string>> groupOwners, string? stateDirectory = null)
    {
        Config = cfg;
        Target = target;
        _log = target.LoggerFactory.CreateLogger("pair");
        Clock = new PairClock(cfg.ClockOffset);
        Membership = new Membership(cfg, Incarnation, _log);
        Membership.PartnerRestarted += (_, _) => Clock.ResetPartner();
        // A restarted owner's replicas here are not whole until it says so again (what it said before is void).
        Membership.PartnerRestarted += (_, incarnation) =>
        {
            foreach (InterconnectLink l in _links)
                foreach (Namespace ns in l.Subsystem.Namespaces)
                    if (ns is { IsRemote: true, Replica: not null }) ns.ReplicaKnowledge.Reset(incarnation);
        };
        Gate = new HostGate(this, target.LoggerFactory.CreateLogger("gate"));
        Service = new InterconnectService(this, _log);
        Workers = new PairWorkers($"pair {cfg.LocalNode} opens", _log);
        Notices = new PairWorkers($"pair {cfg.LocalNode} words", _log);
        _owners = groupOwners.ToDictionary(kv => kv.Key.Nqn, kv => kv.Value.ToDictionary(x => x.Key, x => x.Value));
        _stateDirectory = stateDirectory;
        foreach ((Subsystem s, IReadOnlyDictionary<uint, string> owners) in groupOwners)
            foreach ((uint g, string owner) in owners)
            {
                GroupTerm? kept = null;
                if (stateDirectory != null && Directory.Exists(stateDirectory))
                {
                    string path = GroupOwnershipFile.PathOf(stateDirectory, cfg.LocalNode, s.Nqn, g);
                    try { kept = GroupOwnershipFile.Load(path); }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
                    {
                        throw new ConfigException("Node:StateDirectory", $"cannot read who owns ANA group {g} of {s.Nqn}: {e.Message}");
                    }
                    if (kept is GroupTerm k && k.Owner != cfg.LocalNode && k.Owner != cfg.Partner)
                        throw new ConfigException("Node:StateDirectory", $"{path} names '{k.Owner}', neither this node nor its partner");
                }
                _ownership[(s.Nqn, g)] = new GroupOwnership(g, cfg.LocalNode, owner, kept, mayChange: cfg.Mirror);
            }
        foreach (Subsystem s in groupOwners.Keys) _links.Add(new InterconnectLink(this, s, target.LoggerFactory.CreateLogger("interconnect")));
        target.IoGate = Gate;
        target.Interconnect = Service;
        target.ControllerCreated += OnHostAssociation;
        target.ControllerDestroyed += OnHostAssociationEnded;
        _thread = new Thread(Run) { IsBackground = true, Name = $"pair {cfg.LocalNode}" };
    }

    public InterconnectLink? LinkFor(Subsystem s)
    {
        foreach (InterconnectLink l in _links) if (l.Subsystem == s) return l;
        return null;
    }

    public void Start()
    {
        // The owner's reservation notices for hosts connected through the partner, and its PTPL, go to the partner.
        foreach (InterconnectLink l in _links)
        {
            InterconnectLink link = l;
            link.Subsystem.ReservationNoticesRaised += (s, notices) =>
            {
                foreach (ReservationNotice n in notices)
                    link.SendReservationNotice(n.HostId, n.Nsid, n.Type, s.GetNamespace(n.Nsid)?.Reservations.Ptpl ?? false);
            };
            foreach (Namespace ns in link.Subsystem.Namespaces)
            {
                if (ns.IsRemote) continue;
                if (Config.Mirror && OwnershipOf(link.Subsystem, ns.AnaGroupId) is { OwnedHere: true }) link.AddMirror(ns);
                uint nsid = ns.Nsid;
                ns.Reservations.Changed += st => link.SendReservationNotice(Guid.Empty, nsid, ReservationNotification.Empty, st.Ptpl);
            }
        }
        Membership.Start();
        StartWitness();
        _thread.Start();
        _log.LogInformation("cluster {Cluster}: node {Node} (incarnation {Incarnation:x16}), partner {Partner} (interconnect {Ic}, heartbeat {Hb})",
            Config.Name, Config.LocalNode, Incarnation, Config.Partner, Config.PartnerInterconnect, Config.PartnerHeartbeat);
    }

    /// <summary>Runs <paramref name="a"/> on the pair's control thread.</summary>
    internal void Enqueue(Action a)
    {
        _work.Enqueue(a);
        _wake.Set();
    }

    /// <summary>Test hook: stops answering and sending on the heartbeat channel (simulates a dead partner with the interconnect).</summary>
    public void SilenceHeartbeatChannel(bool silenced = true) => Membership.Silence(silenced);

    internal ClusterDescriptor DescriptorFor(Subsystem s)
        => ClusterDescriptor.For(s, Config.Name, Config.LocalNode, Config.Partner, _owners.TryGetValue(s.Nqn, out var o) ? o : new Dictionary<uint, string>(),
            (int)Config.RelayTimeout.TotalMilliseconds, Incarnation, Config.Mirror, g => TermOf(s, g));

    /// <summary>A group's owner and term as this node knows them (read under the ownership lock: a takeover changes them under it).</summary>
    private GroupTerm? TermOf(Subsystem s, uint group)
    {
        lock (_ownershipLock) return _ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o) ? o.Current : null;
    }

    internal void Refuse(string reason)
    {
        if (!Membership.Refuse(reason)) return;
        foreach (InterconnectLink l in _links) l.Down("configuration mismatch");
        Refused?.Invoke(reason);
    }

    // ------------------------------------------------------------------ ownership (docs/ha.md, "Takeover")

    /// <summary>Who owns a group of a paired subsystem, as this node knows it (null: not a paired group).</summary>
    public GroupOwnership? OwnershipOf(Subsystem s, uint group)
    {
        lock (_ownershipLock) return _ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o) ? o : null;
    }

    /// <summary>The subsystem's groups' ownership at one moment (status).</summary>
    public IReadOnlyList<GroupStatus> GroupsOf(Subsystem s)
    {
        lock (_ownershipLock)
            return [.. _ownership.Where(kv => kv.Key.Nqn == s.Nqn).OrderBy(kv => kv.Key.Group)
                .Select(kv => new GroupStatus(kv.Key.Group, kv.Value.Current, kv.Value.ConfiguredOwner, kv.Value.Confirmed,
                    kv.Value.MayServe && !s.IsGroupHeld(kv.Key.Group), kv.Value.Conflict, kv.Value.Offered,
                    WitnessStatusOf(s, kv.Key.Group, kv.Value.Current)))];
    }

    /// <summary>Whether this node may serve the group as its owner now (false while it has not heard whether its partner took it over).</summary>
    public bool MayServe(Subsystem s, uint group)
    {
        lock (_ownershipLock) return _ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o) && o.MayServe;
    }

    /// <summary>
    /// At start, before any listener opens: a group this node owned when it stopped is held inaccessible until it has
    /// heard its partner's view (the partner may have taken it over meanwhile), and so is one the partner took over.
    /// </summary>
    internal void HoldUntilConfirmed(Subsystem s)
    {
        lock (_ownershipLock)
            foreach (((string nqn, uint g), GroupOwnership o) in _ownership)
                if (nqn == s.Nqn && !o.MayServe && (o.OwnedHere || HasLocalData(s, g))) s.HoldGroup(g, o);
    }

    /// <summary>Whether a namespace of the group is served from this node's own data (not relayed).</summary>
    private static bool HasLocalData(Subsystem s, uint group)
    {
        foreach (Namespace ns in s.Namespaces)
            if (ns.AnaGroupId == group && !ns.IsRemote) return true;
        return false;
    }

    /// <summary>
    /// The partner's view of the subsystem's groups (its descriptor, as the interconnect comes up): a higher term is
    /// kept and taken; a group this node owns is served from now on, or held when the partner owns it or both claim it.
    /// </summary>
    internal void LearnOwnership(Subsystem s, ClusterDescriptor theirs)
    {
        lock (_ownershipLock)
        {
            if (LinkFor(s) is InterconnectLink learning) learning.DescriptorsLearned++;
            foreach (ClusterDescriptor.GroupDescriptor pg in theirs.Groups)
            {
                if (!_ownership.TryGetValue((s.Nqn, pg.Id), out GroupOwnership? o)) continue;
                LearnGroup(s, o, new GroupTerm(pg.Term, pg.CurrentOwner ?? pg.Owner));
                // A giveback this node offered and had no answer to is settled by what the partner says now, on an
                // association that replaced the one the offer went on (the partner takes no word of that one any more).
                if (_givebacks.TryGetValue((s.Nqn, o.Group), out GivebackInFlight? gb)) SettleUnanswered(gb, o);
            }
        }
    }

    /// <summary>
    /// The partner's (or the witness's) view of one group (under the ownership lock): a higher term is kept and taken,
    /// one term with two owners held, and the group acted on as it is now.
    /// </summary>
    private void LearnGroup(Subsystem s, GroupOwnership o, GroupTerm partner)
    {
        bool owned = o.OwnedHere;
        GroupTerm before = o.Current;
        OwnershipLearned what = o.Learn(partner);
        switch (what)
        {
            case OwnershipLearned.Adopted:
                // Kept before acting on it; a record that cannot be written is logged (the one kept names an older
                // term, so at its next start this node holds the group again until it hears the partner).
                try { Keep(s, o); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    _log.LogError("{Nqn}: ANA group {Group}: cannot keep its owner {Owner}: {Error}", s.Nqn, o.Group, o.Current, e.Message);
                }
                _log.LogWarning("{Nqn}: ANA group {Group} is owned by {Owner} (was {Before} here): {What}", s.Nqn, o.Group, o.Current, before,
                    o.OwnedHere ? "served here" : owned ? "the partner took it over while this node was away" : "as this node knew");
                break;
            case OwnershipLearned.Conflict:
                _log.LogError("{Nqn}: {Conflict}: the group is held inaccessible on this node; stop one node and run cluster_takeover on the other", s.Nqn, o.Conflict);
                break;
            case OwnershipLearned.PartnerBehind:
                _log.LogInformation("{Nqn}: ANA group {Group}: the partner still says {Theirs}; it is {Owner}", s.Nqn, o.Group, partner, o.Current);
                break;
        }
        ActOn(s, o, owned);
    }

    /// <summary>
    /// Acts on a group's ownership as it is now (under the ownership lock), <paramref name="owned"/> saying whether this
    /// node owned it before: a group this node no longer owns whose data it holds is kept as the partner's replica; the
    /// group's ANA state follows its owner; it is held while this node may not serve it.
    /// </summary>
    private void ActOn(Subsystem s, GroupOwnership o, bool owned)
    {
        // The partner owns a group whose data this node holds (its own, from before the partner took the group over):
        // this node keeps that data as its replica of the partner's, which the partner resyncs.
        if (!o.OwnedHere && HasLocalData(s, o.Group)) BecomeKeeper(s, o);
        if (o.OwnedHere != owned) s.SetGroupOwner(o.Group, o.OwnedHere, o.TakenOver);
        if (o.MayServe || !(o.OwnedHere || HasLocalData(s, o.Group))) s.ReleaseGroup(o.Group, o);
        else s.HoldGroup(o.Group, o);
        if (!o.OwnedHere) s.ReleaseGroup(o.Group, LostReplicaHold); // not this node's to serve: nothing lost here
        // Owned here by a term this node had forgotten (no state directory), its replicas gone with a restart: nothing
        // here to serve.
        if (o.OwnedHere && s.Namespaces.Any(ns => ns.AnaGroupId == o.Group && ns.IsRemote) && s.HoldGroup(o.Group, LostReplicaHold))
            _log.LogError("{Nqn}: ANA group {Group} is this node's ({Owner}), but this node no longer has its replicas (they were lost with a restart): "
                + "held inaccessible. If the partner kept its data, stop this node and run cluster_takeover there", s.Nqn, o.Group, o.Current);
    }

    /// <summary>
    /// A manual takeover (<c>cluster_takeover</c>, docs/ha.md "Takeover"): this node becomes the group's owner at the next
    /// term and serves its namespaces — the partner's from this node's replicas, without a reconnect or a rescan on the
    /// hosts (an ANA change) — once it has kept that term. Refused while the partner answers on either channel; refused
    /// for a replica that was not whole when the partner was last heard, or for data of this node's that the partner's
    /// newer term replaced, unless <paramref name="force"/> (acknowledged writes may then be lost: logged). Throws
    /// <see cref="InvalidOperationException"/> with the reason; <see cref="KeyNotFoundException"/> for an unknown group.
    /// </summary>
    public TakeoverResult TakeOver(Subsystem s, uint group, bool force) => TakeOver(s, group, force, automatic: false);

    /// <summary>
    /// Test hook: runs in a takeover the witness has just granted, before the ownership lock is taken (the moment a
    /// partner that reconnects while the witness is asked comes back).
    /// </summary>
    internal Action<Subsystem, uint>? AfterWitnessGrant;

    /// <summary>
    /// A takeover, manual or (<paramref name="automatic"/>) on the witness's grant. With a witness the term is granted
    /// there first (outside the ownership lock): not while the owner holds its lease, nor (unless forced) after it served
    /// alone; with no answer from it, only by force. Once granted, the partner answering again stops nothing: the
    /// witness has let the owner's lease run out, and the partner learns the new term from this node.
    /// </summary>
    private TakeoverResult TakeOver(Subsystem s, uint group, bool force, bool automatic)
    {
        InterconnectLink link = LinkFor(s) ?? throw new KeyNotFoundException($"{s.Nqn} is not a paired subsystem");
        // With a witness, this node's knowledge of its replicas of the group is frozen while it asks (the owner's words
        // wait: ReplicaKnowledge.BeginTake), and a grant is checked as of the partner's last sign of life before asking:
        // a partner heard again during the ask (a partition that heals) neither changes what the replicas were when it
        // was last heard nor has its "out of sync" acknowledged meanwhile, so a grant is never declined for it.
        var ask = new TakeoverAsk();
        try { return TakeOver(s, link, group, force, automatic, ask); }
        finally
        {
            foreach (ReplicaKnowledge k in ask.Frozen) k.EndTake();
            if (ask.Asking)
                lock (_ownershipLock) _asking[s.Nqn]--;
        }
    }

    /// <summary>What a takeover that asks the witness has frozen (ended however the takeover ends).</summary>
    private sealed class TakeoverAsk
    {
        public readonly List<ReplicaKnowledge> Frozen = [];
        public bool Asking;
    }

    // Takeovers asking the witness now, per subsystem (under the ownership lock): the partner's new interconnect
    // associations get no descriptor meanwhile (InterconnectService, GetDescriptor).
    private readonly Dictionary<string, int> _asking = [];

    /// <summary>
    /// Whether this node is asking the witness to take a group of the subsystem over. The partner's interconnect
    /// association that starts meanwhile is refused its descriptor (it tries again): a partner that comes back during the
    /// ask — a partition that heals, or a restart — would otherwise learn the old term from it and serve (confirmed by
    /// it, its fence lifted by this node's answers) while this node is about to serve its replica, checked as of before
    /// the ask. It learns the new term, or serves on, once the ask is over.
    /// </summary>
    internal bool AskingToTakeOver(Subsystem s)
    {
        lock (_ownershipLock) return _asking.TryGetValue(s.Nqn, out int n) && n > 0;
    }

    private TakeoverResult TakeOver(Subsystem s, InterconnectLink link, uint group, bool force, bool automatic, TakeoverAsk ask)
    {
        string? witnessRisk = null;
        bool granted = false, reconnect = false, served = false;
        GroupTerm takenAt = default;
        long refusedUntil = 0;
        object? ownAssociation = null;
        TakeoverResult result;
        GroupTerm asked = default;
        long askedLastAlive = 0;
        if (Witness != null)
        {
            lock (_ownershipLock)
            {
                foreach (Namespace ns in s.Namespaces)
                    if (ns.AnaGroupId == group && ns.IsRemote)
                    {
                        ns.ReplicaKnowledge.BeginTake();
                        ask.Frozen.Add(ns.ReplicaKnowledge);
                    }
                // Set with the check below that the partner has no association into this node (PlanTakeover): one that
                // starts from now on gets no descriptor until the ask is over.
                _asking[s.Nqn] = _asking.GetValueOrDefault(s.Nqn) + 1;
                ask.Asking = true;
                askedLastAlive = LastAlive();
                asked = PlanTakeover(s, link, group, force, checkPartner: true, askedLastAlive).Term;
            }
            // Asked again while the witness says wait (it grants once this node has asked for a heartbeat interval).
            WitnessAnswer? a;
            var asking = Stopwatch.StartNew();
            while (true)
            {
                a = Witness.Ask(WitnessVerb.Take, s.Nqn, group, asked.Term, WitnessProtocol.TakeArgument(force, Config.HeartbeatInterval), Config.HeartbeatTimeout);
                if (a is not { Result: WitnessResult.Wait } || asking.Elapsed > Config.HeartbeatTimeout + 4 * Config.HeartbeatInterval) break;
                Thread.Sleep(Config.HeartbeatInterval);
            }
            if (a == null)
            {
                if (!force)
                    throw new InvalidOperationException($"the witness at {Witness.Endpoint} does not answer: refused (force: true takes the group over without it, and {Config.Partner} may then serve it too)");
                witnessRisk = $"the witness at {Witness.Endpoint} did not answer: {Config.Partner} may still hold its lease there and serve ANA group {group}, and, started again, may be told by the witness that it still owns it";
            }
            else if (a.Value.Result != WitnessResult.Ok || a.Value.Term != asked.Term || a.Value.Owner != Config.LocalNode)
            {
                throw new InvalidOperationException(a.Value.Result is WitnessResult.Refused or WitnessResult.Wait
                    ? $"the witness refused ANA group {group} at term {asked.Term}: {a.Value.Reason}"
                    : $"the witness says {a.Value.Owner} owns ANA group {group} at term {a.Value.Term}");
            }
            else
            {
                granted = true;
                AfterWitnessGrant?.Invoke(s, group);
            }
        }
        try
        {
            lock (_ownershipLock)
            {
                TakeoverPlan plan = PlanTakeover(s, link, group, force, checkPartner: !granted, granted ? askedLastAlive : LastAlive());
                if (Witness != null && plan.Term != asked)
                    throw new InvalidOperationException($"ANA group {group} changed while the witness was asked (now {plan.Ownership.Current}): try again");
                if (witnessRisk != null) plan.Risks.Add(witnessRisk);
                List<Namespace> remote = plan.Remote;
                List<string> risks = plan.Risks;
                GroupTerm term = plan.Term;
                // The partner's associations into this node, which read this node's descriptor before the new term, answer no
                // heartbeat from this check on (refused first: one answered after it would lift the partner's fence unseen;
                // one answered before counts) and are closed (below, outside the lock), so that it learns the term as it
                // reconnects — after any takeover: without a witness too, a partner that was only frozen would otherwise go on
                // on its old association, never told. Granted while the partner may still hear this node (it reconnected
                // while the witness was asked, or its association into this node carried a heartbeat lately), it may serve
                // the group until it learns the term or fences itself: the group is held here until it has (it holds no
                // lease) — a heartbeat timeout and two intervals after it last heard this node. Held before it is served
                // here: the group goes from this hold to the change-over's and back, never served in between (served once
                // the change-over's hold is released, it could be written through both nodes). A partner that connects from
                // now on reads this node's descriptor under this lock: it learns the new term. (A partner whose association
                // is silent — its machine lost power — is past that long ago, or nearly: no hold, or a short one.)
                (refusedUntil, long heardThere) = link.RefusePartnerAssociations();
                long heldFrom = Stopwatch.GetTimestamp();
                ownAssociation = link.IsUp ? link.Association : null;
                reconnect = link.IsUp || s.Controllers.Any(c => c.IsInterconnect);
                takenAt = term;
                long lastHeard = link.IsUp ? heldFrom : heardThere, holdUntil = 0;
                if (granted && lastHeard != 0) holdUntil = lastHeard + (long)(GrantHoldLength.TotalSeconds * Stopwatch.Frequency);
                if (holdUntil <= heldFrom) holdUntil = 0;
                if (holdUntil != 0) HoldAfterGrant(s, group, holdUntil);
                if (ServeReplicas(s, link, plan.Ownership, remote, plan.Generations, term) is string failed)
                {
                    // Nothing changed (the group is still the partner's here): the grant's hold goes with the takeover.
                    if (holdUntil != 0) UndoHoldAfterGrant(s, group);
                    if (granted)
                        _log.LogCritical("{Nqn}: ANA group {Group}: the witness granted {Term}, but this node cannot serve it: {Error}; nobody serves the group until an operator acts",
                            s.Nqn, group, term, failed);
                    throw new InvalidOperationException(failed);
                }
                // A giveback this node offered and had no answer to ends here: this node's term is past the one offered.
                if (_givebacks.TryGetValue((s.Nqn, group), out GivebackInFlight? gb)) Resume(gb);
                if (risks.Count > 0)
                    _log.LogCritical("{Nqn}: ANA group {Group} taken over by force ({Term}): {Risks}; writes the partner acknowledged may be lost", s.Nqn, group, term, string.Join("; ", risks));
                else
                    _log.LogWarning("{Nqn}: ANA group {Group} taken over{How} ({Term}): served here{From}{Kept}", s.Nqn, group,
                        automatic ? $" automatically ({Config.Partner} silent on both channels, the witness granted it)" : granted ? " (the witness granted it)" : "", term,
                        remote.Count > 0 ? $" from this node's replica of NSID {string.Join(", ", remote.Select(n => n.Nsid))}" : "",
                        Keeps ? "" : " (no state directory: a restart of this node forgets it)");
                result = new TakeoverResult(term, [.. remote.Select(n => n.Nsid)], risks);
                served = true;
            }
        }
        finally
        {
            // The partner's associations, refused from the check on, are closed whether the takeover then succeeded or
            // not (refused, they are of no use to it any more: it connects again and learns the term there is).
            // Only the associations refused (one made since read the new term) and this node's own association into the
            // partner as it was at the check (one made since learned it too).
            if (reconnect)
            {
                string what = served ? $"ANA group {group} taken over at {takenAt}" : $"the takeover of ANA group {group} at {takenAt} failed";
                Service.CloseInboundMadeUntil(s, refusedUntil, $"{what}: the partner learns the group's term as it reconnects");
                if (ownAssociation != null) Enqueue(() => { if (link.Association == ownAssociation) link.Down(what); });
            }
        }
        return result;
    }

    /// <summary>
    /// The partner's last sign of life as a takeover counts it: had it lived past its last datagram here until its
    /// replica's lease ended, it would have sent another within an interval (two, for the datagrams' delays); only then
    /// is it known to have died first.
    /// </summary>
    private long LastAlive() => Membership.LastHeardTicks + 2 * (long)(Config.HeartbeatInterval.TotalSeconds * Stopwatch.Frequency);

    /// <summary>
    /// Whether the partner's interconnect association into this node carries its heartbeats: it has one, and one of its
    /// heartbeats (or descriptor requests) arrived within the heartbeat timeout (a live partner sends one every interval,
    /// and its link goes down when one goes unanswered for the timeout). An association that carries nothing for that long does not count as the partner answering: after a
    /// power cut of the partner's machine (no FIN, no reset) it lives here until its keep-alive ends it — 4 × the
    /// heartbeat timeout — and a takeover held off by it would stall the partner's groups that much longer.
    /// </summary>
    private bool PartnerAssociationAnswers(Subsystem s, InterconnectLink link)
    {
        long heard = link.PartnerHeardTicks;
        return heard != 0 && Stopwatch.GetTimestamp() - heard <= (long)(Config.HeartbeatTimeout.TotalSeconds * Stopwatch.Frequency)
            && s.Controllers.Any(c => c.IsInterconnect && !c.Destroyed);
    }

    private sealed record TakeoverPlan(GroupOwnership Ownership, GroupTerm Term, List<Namespace> Remote, Dictionary<uint, long> Generations, List<string> Risks);

    /// <summary>
    /// What a takeover of the group would do now (under the ownership lock): the term, the namespaces served from
    /// replicas with their data generations, and what it risks. Throws with the reason when refused (a risk without
    /// <paramref name="force"/>; with <paramref name="checkPartner"/>, a partner that answers on either channel).
    /// </summary>
    private TakeoverPlan PlanTakeover(Subsystem s, InterconnectLink link, uint group, bool force, bool checkPartner, long lastAlive)
    {
        if (!_ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o)) throw new KeyNotFoundException($"{s.Nqn} has no ANA group {group}");
        if (o.MayServe && o.Offered == null) throw new InvalidOperationException($"ANA group {group} is served by this node already (owner {o.Current})");
        if (!Config.Mirror) throw new InvalidOperationException("a takeover needs Cluster:Mirror (this node's replicas of the partner's namespaces)");
        // Checked under the ownership lock, which the descriptor this node gives its partner is read under too: a
        // partner that connects from now on learns the new term before it serves anything.
        string? answers = !checkPartner ? null
            : link.IsUp ? "its interconnect is up"
            : Membership.PartnerHeard ? "its heartbeat datagrams arrive"
            : PartnerAssociationAnswers(s, link) ? "its interconnect association into this node carries its heartbeats"
            : null;
        if (answers != null)
            throw new InvalidOperationException($"partner {Config.Partner} answers ({answers}): a takeover is for a partner that is gone");
        var risks = new List<string>();
        if (!o.Confirmed)
            risks.Add($"this node has not heard {Config.Partner} since it started: it may have taken ANA group {group} over meanwhile");
        if (o.Offered is GroupTerm offered)
            risks.Add($"this node gave ANA group {group} back to {offered.Owner} (term {offered.Term}) and had no answer: {offered.Owner} may have served it since");
        var remote = new List<Namespace>();
        foreach (Namespace ns in s.Namespaces)
        {
            if (ns.AnaGroupId != group) continue;
            if (!ns.IsRemote)
            {
                // This node's own data: the latest unless the partner took the group over meanwhile.
                if (!o.OwnedHere) risks.Add($"NSID {ns.Nsid} here is this node's data from before {o.Current} took the group over");
                continue;
            }
            if (ns.Replica == null) throw new InvalidOperationException($"NSID {ns.Nsid} has no replica on this node");
            if (!ns.ReplicaKnowledge.Ready) throw new InvalidOperationException($"NSID {ns.Nsid}'s replica is still changing over from this node's own namespace: try again");
            if (!ns.ReplicaKnowledge.WholeAtDeath(lastAlive))
                risks.Add($"NSID {ns.Nsid}'s replica was not whole when the partner was last heard (the owner said {ns.ReplicaKnowledge.Word})");
            remote.Add(ns);
        }
        if (risks.Count > 0 && !force)
            throw new InvalidOperationException(string.Join("; ", risks) + ": refused (force: true serves it anyway, and writes the partner acknowledged may be lost)");
        // The data served is the lineage the replica holds (the owner's generation it was resynced from; a new one
        // when it holds none).
        var generations = new Dictionary<uint, long>();
        foreach (Namespace keeper in remote)
        {
            long g = keeper.ReplicaKnowledge.Holds.Generation;
            generations[keeper.Nsid] = g != 0 ? g : Random.Shared.NextInt64(1, long.MaxValue);
        }
        return new TakeoverPlan(o, o.NextTerm, remote, generations, risks);
    }

    /// <summary>
    /// Makes this node the group's owner at <paramref name="term"/> (under the ownership lock) and serves the group's
    /// namespaces relayed to the partner from this node's replicas (<paramref name="remote"/>), each with the data
    /// generation given — kept as this node's own for a replica in a file, with the term, before anything changes (a
    /// failure to keep them is returned, nothing changed; null: served). The group is held while the
    /// namespaces change over; each is mirrored to the partner's replica from then on.
    /// </summary>
    private string? ServeReplicas(Subsystem s, InterconnectLink link, GroupOwnership o, List<Namespace> remote, Dictionary<uint, long> generations, GroupTerm term)
    {
        uint group = o.Group;
        // The lineage, kept as this node's for a replica in a file; what was kept of the replica goes (it is the data
        // now). Before the term: a failure here changes nothing that matters.
        foreach (Namespace keeper in remote)
        {
            if (!Keeps || keeper.Replica is not Bdevs.FileBdev) continue;
            try
            {
                DataGenerationFile.Write(DataGenerationFile.PathOf(_stateDirectory!, Config.LocalNode, s.Nqn, keeper.Nsid), generations[keeper.Nsid], taken: true);
                // A dirty-region record left from an earlier time this node owned it marks nothing of what follows.
                StateFile.Delete(StateFile.PathOf(_stateDirectory!, Config.LocalNode, s.Nqn, keeper.Nsid, "dirty"));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return $"cannot keep NSID {keeper.Nsid}'s data generation: {e.Message}; nothing changed";
            }
        }
        try { Keep(s, group, term); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return $"cannot keep the new owner of ANA group {group} ({term}): {e.Message}; nothing changed";
        }
        o.TookOver(term);
        // What was kept of each replica no longer holds: it is the data now (a record left behind is read by no start
        // while this node owns the group, and one that becomes a keeper again resyncs whole: logged only).
        if (Keeps)
            foreach (Namespace keeper in remote)
            {
                string path = StateFile.PathOf(_stateDirectory!, Config.LocalNode, s.Nqn, keeper.Nsid, "replica");
                try { StateFile.Delete(path); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    _log.LogError("{Nqn}: NSID {Nsid}: cannot remove {Path} ({Error})", s.Nqn, keeper.Nsid, path, e.Message);
                }
            }
        // Held while its namespaces change over; commands meanwhile get ANA Inaccessible, which the hosts retry.
        s.HoldGroup(group, o);
        try
        {
            foreach (Namespace keeper in remote)
            {
                var served = new Namespace(keeper.Nsid, keeper.Replica!, keeper.Nguid, keeper.Uuid, group) { DataGeneration = generations[keeper.Nsid] };
                Target.ServeFromReplica(s, keeper, served);
                // A resync this node refused held the group (an operator decides): serving it is that decision.
                s.ReleaseGroup(group, keeper.ReplicaKnowledge);
                // Mirrored to the partner's replica once it keeps one again (out of sync until then: nothing waits).
                link.AddMirror(served);
            }
            s.SetGroupOwner(group, local: true, takenOver: o.TakenOver);
        }
        finally
        {
            s.ReleaseGroup(group, o);
        }
        return null;
    }

    /// <summary>
    /// Whether this node keeps its groups' owners across its restarts: with a state directory. (Kept whatever holds the
    /// data here: a node whose replica was in RAM must still know, after a restart, that it had taken the group over, or
    /// the partner's stale data would be served as the truth.)
    /// </summary>
    private bool Keeps => _stateDirectory != null && Directory.Exists(_stateDirectory);

    /// <summary>
    /// The partner owns the group (a newer term): each namespace of it this node served from its own data is relayed to
    /// the partner from now on, that data kept as this node's replica of the partner's — resynced whole by the partner
    /// (it may lack writes the partner took since, and hold writes the partner never had). Its mirror goes; writes it held
    /// fail with ANA Inaccessible (the host retries them on the owner). The group is held while the namespaces change over
    /// (the caller releases it). Under the ownership lock.
    /// </summary>
    private void BecomeKeeper(Subsystem s, GroupOwnership o)
    {
        InterconnectLink link = LinkFor(s)!;
        s.HoldGroup(o.Group, o);
        foreach (Namespace owned in s.Namespaces.Where(ns => ns.AnaGroupId == o.Group && !ns.IsRemote).ToList())
        {
            // First: the writes the mirror held complete (with ANA Inaccessible) only once they see the move.
            owned.MovedAway = true;
            // What the replica holds from now on: this node's data of that generation — a consistent copy, if a keeper
            // ever took it (a lineage), so that a resync of other data over it is refused as ever; nothing otherwise.
            bool lineage = owned.DataGeneration != 0 && (owned.Mirror is NamespaceMirror { DataTakenOnce: true } || !owned.DataGenerationIsNew);
            if (owned.Mirror is NamespaceMirror m) link.RetireMirror(m, NvmeStatus.Path(PathStatus.AnaInaccessible));
            var keeper = new Namespace(owned.Nsid, new PartnerBdev($"partner:{owned.Nsid}", owned.Bdev.BlockSize, owned.Bdev.BlockCount, link),
                owned.Nguid, owned.Uuid, o.Group)
            {
                Replica = owned.Bdev,
                ReplicaKnowledge = new ReplicaKnowledge
                {
                    HoldsPath = owned.Bdev is Bdevs.FileBdev && Keeps ? StateFile.PathOf(_stateDirectory!, Config.LocalNode, s.Nqn, owned.Nsid, "replica") : null,
                },
            };
            // What this node kept as the namespace's owner (its data's generation, its dirty-region record) no longer
            // holds: removed once nothing runs on it any more (no write of it marks the record again), before the replica
            // takes a word. A record that cannot be removed keeps the replica from taking words (retried).
            uint nsid = owned.Nsid;
            ReplicaKnowledge k = keeper.ReplicaKnowledge;
            if (lineage) k.Restore(new ReplicaHolds(owned.DataGeneration, true, 0, false));
            Target.KeepAsReplica(s, owned, keeper, () => Enqueue(() => ForgetOwnerRecords(s, nsid, k)));
            // What held the group for the namespace replaced (new data no replica had taken, a refused resync) is over.
            s.ReleaseGroup(o.Group, owned);
        }
        _log.LogWarning("{Nqn}: ANA group {Group} is owned by {Owner}: this node relays it there and keeps its data as the replica, which {Owner2} resyncs",
            s.Nqn, o.Group, o.Current, o.Current.Owner);
    }

    /// <summary>
    /// Removes the records this node kept as the owner of namespace <paramref name="nsid"/> (control thread), then lets its
    /// replica take the partner's words; retried at the next heartbeat interval when a record cannot be removed.
    /// </summary>
    private void ForgetOwnerRecords(Subsystem s, uint nsid, ReplicaKnowledge k)
    {
        // Taken over again meanwhile (this node serves the replica now, with records of its own): nothing to forget.
        if (s.GetNamespace(nsid)?.ReplicaKnowledge != k) return;
        if (Keeps)
        {
            try
            {
                // What the replica holds first (a crash between the two leaves both, and the next start takes the replica's).
                if (k.HoldsPath != null) ReplicaHoldsFile.Save(k.HoldsPath, k.Kept);
                foreach (string kind in new[] { "generation", "dirty" })
                    StateFile.Delete(StateFile.PathOf(_stateDirectory!, Config.LocalNode, s.Nqn, nsid, kind));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                _log.LogError("{Nqn}: NSID {Nsid}: cannot remove what this node kept as its owner ({Error}); its replica takes no resync until it can", s.Nqn, nsid, e.Message);
                _ = Task.Delay(Config.HeartbeatInterval).ContinueWith(_ => Enqueue(() => ForgetOwnerRecords(s, nsid, k)), TaskScheduler.Default);
                return;
            }
        }
        k.Ready = true;
    }

    /// <summary>Keeps a group's term in the state directory (before acting on it). Throws <see cref="IOException"/> when it cannot.</summary>
    private void Keep(Subsystem s, GroupOwnership o) => Keep(s, o.Group, o.Current);

    private void Keep(Subsystem s, uint group, GroupTerm term)
    {
        if (!Keeps) return;
        GroupOwnershipFile.Save(GroupOwnershipFile.PathOf(_stateDirectory!, Config.LocalNode, s.Nqn, group), term);
    }

    // ------------------------------------------------------------------ giveback (docs/ha.md, "Giveback")

    private readonly Dictionary<(string Nqn, uint Group), GivebackInFlight> _givebacks = [];

    /// <summary>
    /// Gives a group this node took over back to its configured owner, the partner (<c>cluster_giveback</c>, or
    /// <c>Cluster:AutoGiveback</c>; docs/ha.md "Giveback"): with the interconnect up and every replica of the group in
    /// sync (the partner acknowledged it), this node holds the group (new commands get ANA Inaccessible, which the
    /// hosts retry), waits until nothing runs on its namespaces (those that arrived before wait behind a lock), and
    /// offers the partner the next term. The partner keeps it and serves the group from its replicas; only then does
    /// this node keep that term and become the keeper of the partner's namespaces (what waited fails with ANA
    /// Inaccessible, and the hosts retry it on the new owner). A refusal serves the group here again. With no answer
    /// (the interconnect failed under it) the group stays held here until the next association says whether the
    /// partner took it. Blocks (the RPC's thread, or a pair worker); throws <see cref="InvalidOperationException"/> with
    /// the reason, <see cref="KeyNotFoundException"/> for an unknown group.
    /// </summary>
    public GroupTerm GiveBack(Subsystem s, uint group)
    {
        InterconnectLink link = LinkFor(s) ?? throw new KeyNotFoundException($"{s.Nqn} is not a paired subsystem");
        GivebackInFlight gb;
        object? association;
        var sw = Stopwatch.StartNew();
        lock (_ownershipLock)
        {
            if (!_ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o)) throw new KeyNotFoundException($"{s.Nqn} has no ANA group {group}");
            if (o.Offered is GroupTerm pending) throw new InvalidOperationException($"ANA group {group} is being given back to {pending.Owner} already (term {pending.Term})");
            if (!o.MayServe) throw new InvalidOperationException($"ANA group {group} is not served by this node (owner {o.Current}): a giveback runs on its owner");
            if (!o.TakenOver) throw new InvalidOperationException($"ANA group {group} is this node's by the configuration: nothing to give back");
            association = link.Association;
            if (!link.IsUp || association == null) throw new InvalidOperationException($"the interconnect to {Config.Partner} is down: a giveback needs it up");
            // The partner mirrors the group to this node from then on, over its own association into this node.
            if (!s.Controllers.Any(c => c.IsInterconnect))
                throw new InvalidOperationException($"{Config.Partner} has no interconnect association into this node: it could not mirror the group here");
            var namespaces = new List<Namespace>();
            foreach (Namespace ns in s.Namespaces)
            {
                if (ns.AnaGroupId != group) continue;
                if (ns.IsRemote || ns.Mirror is not NamespaceMirror m) throw new InvalidOperationException($"NSID {ns.Nsid} of ANA group {group} is not mirrored from this node");
                if (!m.PartnerKnowsInSync)
                    throw new InvalidOperationException($"NSID {ns.Nsid}'s replica on {Config.Partner} is {m.State}{(m.IsInSync ? " (the partner has not acknowledged it yet)" : "")}: a giveback waits until it is in sync");
                if (HasReservations(ns))
                    throw new InvalidOperationException($"NSID {ns.Nsid} has reservations (registrants or a holder): a giveback does not hand them over yet, and would drop them");
                namespaces.Add(ns);
            }
            if (namespaces.Count == 0) throw new InvalidOperationException($"ANA group {group} has no namespace to give back");
            gb = new GivebackInFlight(s, o, o.Offer(Config.Partner), namespaces);
            _givebacks[(s.Nqn, group)] = gb;
            // Held (commands that arrive get ANA Inaccessible) and quiesced (nothing starts on the namespaces: a command
            // that arrived before fails with ANA Inaccessible when it would start, as do Flush and reservation commands,
            // which no range lock stops), under the lock a takeover that ends this giveback takes too.
            s.HoldGroup(group, gb);
            foreach (Namespace ns in namespaces) ns.Quiesced = true;
        }
        // Locked whole: granted once what started before has finished (a mirrored write, once the partner has its copy).
        gb.Lock();
        TimeSpan drainLimit = Gate.DrainLimit;
        string? why = !gb.AllGranted.Wait(drainLimit) ? $"commands on the group did not finish within {drainLimit.TotalSeconds:0.#} s" : null;
        var entries = new List<(uint Nsid, long Generation)>();
        foreach (Namespace ns in gb.Namespaces)
        {
            entries.Add((ns.Nsid, ns.DataGeneration));
            if (why == null && ns.Mirror is not NamespaceMirror { PartnerKnowsInSync: true }) why = $"NSID {ns.Nsid}'s replica is {(ns.Mirror as NamespaceMirror)?.State ?? "gone"} now";
            else if (why == null && HasReservations(ns)) why = $"NSID {ns.Nsid} has reservations now";
        }
        if (why != null)
        {
            lock (_ownershipLock)
                if (IsCurrent(gb)) Resume(gb);
            throw new InvalidOperationException($"giveback of ANA group {group} abandoned: {why}; the group is served here again");
        }
        // Offered at most until the heartbeat timeout while the partner's replica knowledge catches up ("not yet").
        GivebackAnswer? answer;
        bool sent;
        long learnedAtSend;
        do
        {
            lock (_ownershipLock) learnedAtSend = link.DescriptorsLearned;
            answer = link.SendGiveback(association, group, gb.Offered.Term, entries, 2 * Config.HeartbeatTimeout, out sent);
            if (answer != GivebackAnswer.NotYet) break;
            Thread.Sleep(20);
        }
        while (sw.Elapsed < drainLimit + Config.HeartbeatTimeout);
        lock (_ownershipLock)
        {
            GroupOwnership o = gb.Ownership;
            if (!IsCurrent(gb)) throw new InvalidOperationException($"giveback of ANA group {group}: settled meanwhile (owner {o.Current})");
            if (answer == GivebackAnswer.Taken)
            {
                Given(gb, "the partner took it");
                return gb.Offered;
            }
            if (answer != null || !sent)
            {
                Resume(gb);
                throw new InvalidOperationException(answer == GivebackAnswer.NotYet
                    ? $"giveback of ANA group {group} abandoned: {Config.Partner} does not know its replicas are in sync yet; the group is served here again"
                    : !sent ? $"giveback of ANA group {group} abandoned: the interconnect changed before the offer went; the group is served here again"
                    : $"{Config.Partner} refused ANA group {group} at term {gb.Offered.Term} (see its log); the group is served here again");
            }
            // Offered, unanswered: the partner may have taken it. A descriptor learned since the offer went says which;
            // else the next one does (the link goes down now, and its next association says).
            gb.Unanswered = true;
            if (link.DescriptorsLearned > learnedAtSend) SettleUnanswered(gb, o);
            else Enqueue(() => { if (link.Association == association) link.Down($"ANA group {group}'s giveback got no answer"); });
            throw new InvalidOperationException($"giveback of ANA group {group}: {Config.Partner} did not answer; the group stays inaccessible here until the interconnect's next association says whether {Config.Partner} took it");
        }
    }

    private readonly Dictionary<(string Nqn, uint Group), long> _autoGivebackAfter = [];

    /// <summary>
    /// <c>Cluster:AutoGiveback</c> (control thread): each group this node took over whose replicas on its configured owner
    /// are in sync (the partner acknowledged it) is given back, on a pair worker; one that failed is tried again after
    /// ten heartbeat timeouts.
    /// </summary>
    private void StartAutoGivebacks(long now)
    {
        foreach (InterconnectLink link in _links)
        {
            if (!link.IsUp) continue;
            Subsystem s = link.Subsystem;
            lock (_ownershipLock)
                foreach (((string nqn, uint g), GroupOwnership o) in _ownership)
                {
                    if (nqn != s.Nqn || !o.MayServe || !o.TakenOver || o.Offered != null || o.ConfiguredOwner != Config.Partner) continue;
                    if (_autoGivebackAfter.TryGetValue((nqn, g), out long after) && now < after) continue;
                    bool ready = true, any = false;
                    foreach (Namespace ns in s.Namespaces)
                        if (ns.AnaGroupId == g)
                        {
                            any = true;
                            ready &= ns.Mirror is NamespaceMirror { PartnerKnowsInSync: true };
                        }
                    if (!ready || !any) continue;
                    // Not again until this one has ended (a failure waits ten heartbeat timeouts; a success ends the group here).
                    _autoGivebackAfter[(nqn, g)] = long.MaxValue;
                    uint group = g;
                    if (!Workers.Run(() => AutoGiveback(s, group))) _autoGivebackAfter.Remove((nqn, g));
                }
        }
    }

    private void AutoGiveback(Subsystem s, uint group)
    {
        long retry = 0;
        try
        {
            GroupTerm term = GiveBack(s, group);
            _log.LogInformation("{Nqn}: ANA group {Group} given back automatically (Cluster:AutoGiveback): {Term}", s.Nqn, group, term);
        }
        catch (Exception e)
        {
            _log.LogWarning("{Nqn}: automatic giveback of ANA group {Group}: {Error}; tried again in {Seconds:0.#} s", s.Nqn, group, e.Message,
                10 * Config.HeartbeatTimeout.TotalSeconds);
            retry = Stopwatch.GetTimestamp() + (long)(10 * Config.HeartbeatTimeout.TotalSeconds * Stopwatch.Frequency);
        }
        lock (_ownershipLock)
        {
            if (retry == 0) _autoGivebackAfter.Remove((s.Nqn, group));
            else _autoGivebackAfter[(s.Nqn, group)] = retry;
        }
    }

    /// <summary>Whether <paramref name="gb"/> is the giveback registered for its group (not settled yet). Under the ownership lock.</summary>
    private bool IsCurrent(GivebackInFlight gb) => _givebacks.TryGetValue((gb.Subsystem.Nqn, gb.Ownership.Group), out GivebackInFlight? g) && g == gb;

    /// <summary>Whether a namespace has reservation state (a registrant or a holder), which a giveback does not hand over yet.</summary>
    private static bool HasReservations(Namespace ns) => ns.Reservations.Held || ns.Reservations.Snapshot().Registrants.Length > 0;

    /// <summary>
    /// The partner took the group this node offered (the answer, or a descriptor at its term): this node keeps the term
    /// and becomes the keeper of its namespaces; what waited fails with ANA Inaccessible. Under the ownership lock.
    /// </summary>
    private void Given(GivebackInFlight gb, string how)
    {
        GroupOwnership o = gb.Ownership;
        Subsystem s = gb.Subsystem;
        try
        {
            if (o.Current != gb.Offered)
            {
                bool owned = o.OwnedHere;
                o.Learn(gb.Offered);
                try { Keep(s, o); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    _log.LogError("{Nqn}: ANA group {Group}: cannot keep its owner {Owner}: {Error}", s.Nqn, o.Group, o.Current, e.Message);
                }
                ActOn(s, o, owned);
            }
        }
        finally
        {
            // The namespaces replaced are moved away (what waited fails with ANA Inaccessible); released whatever happened.
            _givebacks.Remove((s.Nqn, o.Group));
            gb.End();
        }
        _log.LogWarning("{Nqn}: ANA group {Group} given back to {Owner} ({Term}; {How}): relayed there from now on, this node keeps its replica",
            s.Nqn, o.Group, gb.Offered.Owner, gb.Offered, how);
    }

    /// <summary>The giveback did not happen (refused, abandoned, or taken over by this node since): the group is served here again. Under the ownership lock.</summary>
    private void Resume(GivebackInFlight gb)
    {
        GroupOwnership o = gb.Ownership;
        if (o.Offered == gb.Offered) o.OfferEnded();
        _givebacks.Remove((gb.Subsystem.Nqn, o.Group));
        foreach (Namespace ns in gb.Namespaces) ns.Quiesced = false;
        gb.End();
        _log.LogWarning("{Nqn}: ANA group {Group}: not given back to {Partner}: served here again ({Owner})", gb.Subsystem.Nqn, o.Group, gb.Offered.Owner, o.Current);
    }

    /// <summary>
    /// An offer with no answer, settled by what the partner says on an association newer than the one the offer went on
    /// (the partner took no word of that one once the newer existed): its term, or one before it. Under the ownership lock.
    /// </summary>
    private void SettleUnanswered(GivebackInFlight gb, GroupOwnership o)
    {
        if (!gb.Unanswered) return; // the offer's sender settles it
        if (o.Current.Term >= gb.Offered.Term) Given(gb, "the partner's descriptor says so");
        else Resume(gb);
    }

    /// <summary>
    /// As the group's configured owner, the keeper of its replicas: the owner offers the group back at
    /// <paramref name="term"/> (<see cref="InterconnectOpcode.Giveback"/>, on <paramref name="association"/>). Taken when
    /// the offer came on the partner's current association, the term follows the one known here, and every replica of the
    /// group is known in sync with the owner's data generation: this node keeps the term and serves the group from its
    /// replicas before it answers. Control thread.
    /// </summary>
    internal GivebackAnswer ReceiveGiveback(Controller association, uint group, ulong term, IReadOnlyList<(uint Nsid, long Generation)> entries)
    {
        Subsystem s = association.Subsystem;
        InterconnectLink? link = LinkFor(s);
        lock (_ownershipLock)
        {
            string? refused = null;
            GivebackAnswer answer = GivebackAnswer.Refused;
            if (link == null || !_ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o)) refused = "not a paired group";
            else if (!Service.IsCurrent(association)) refused = "it came on an association the partner replaced";
            else if (o.Current.Owner != Config.Partner || term != o.Current.Term + 1) refused = $"term {term} does not follow {o.Current}";
            else
            {
                var remote = new List<Namespace>();
                var generations = new Dictionary<uint, long>();
                foreach (Namespace ns in s.Namespaces)
                {
                    if (ns.AnaGroupId != group) continue;
                    int at = -1;
                    for (int i = 0; i < entries.Count && at < 0; i++) if (entries[i].Nsid == ns.Nsid) at = i;
                    ReplicaKnowledge k = ns.ReplicaKnowledge;
                    if (!ns.IsRemote || ns.Replica == null) refused = $"NSID {ns.Nsid} has no replica here";
                    else if (at < 0) refused = $"the offer does not name NSID {ns.Nsid}";
                    else if (!k.Ready || k.Word != ReplicaWord.InSync || k.OwnerIncarnation != Membership.PartnerIncarnation) answer = GivebackAnswer.NotYet;
                    else if (k.Holds != (entries[at].Generation, true))
                        refused = $"NSID {ns.Nsid}'s replica holds data generation {k.Holds.Generation:x16}, the owner has {entries[at].Generation:x16}";
                    if (refused != null) break;
                    remote.Add(ns);
                    generations[ns.Nsid] = entries[at].Generation;
                }
                if (refused == null && remote.Count != entries.Count) refused = "the offer names namespaces not in the group here";
                if (refused == null && answer == GivebackAnswer.NotYet) return GivebackAnswer.NotYet;
                if (refused == null)
                {
                    GroupTerm taken = new(term, Config.LocalNode);
                    refused = ServeReplicas(s, link, o, remote, generations, taken);
                    if (refused == null)
                    {
                        _log.LogWarning("{Nqn}: ANA group {Group} given back by {Partner} ({Term}): served here from this node's replica of NSID {Nsids}",
                            s.Nqn, group, Config.Partner, taken, string.Join(", ", remote.Select(n => n.Nsid)));
                        return GivebackAnswer.Taken;
                    }
                }
            }
            _log.LogWarning("{Nqn}: refused ANA group {Group} at term {Term} from {Partner}: {Why}", s.Nqn, group, term, Config.Partner, refused);
            return GivebackAnswer.Refused;
        }
    }

    /// <summary>A giveback this node started: the group held here and each of its namespaces locked whole (nothing runs on them) until it is settled.</summary>
    private sealed class GivebackInFlight(Subsystem s, GroupOwnership o, GroupTerm offered, List<Namespace> namespaces)
    {
        /// <summary>The offer went and had no answer (under the ownership lock): the partner's next descriptor settles it.</summary>
        public bool Unanswered { get; set; }
        public Subsystem Subsystem { get; } = s;
        public GroupOwnership Ownership { get; } = o;
        public GroupTerm Offered { get; } = offered;
        public List<Namespace> Namespaces { get; } = namespaces;
        private readonly object _gate = new();
        private readonly List<Namespace> _granted = [];
        private bool _ended;
        public readonly ManualResetEventSlim AllGranted = new(false);

        /// <summary>Locks each namespace whole: <see cref="AllGranted"/> once nothing that started before runs on any of them.</summary>
        public void Lock()
        {
            foreach (Namespace n in Namespaces)
            {
                Namespace ns = n;
                ns.Locks.Lock(0, ulong.MaxValue, () =>
                {
                    bool ended;
                    lock (_gate)
                    {
                        _granted.Add(ns);
                        ended = _ended;
                        if (!ended && _granted.Count == Namespaces.Count) AllGranted.Set();
                    }
                    if (ended) ns.Locks.Unlock(); // settled before its grant
                });
            }
        }

        /// <summary>
        /// Releases the group and the namespaces' locks, once: commands parked behind them run (on a namespace that moved
        /// away they fail with ANA Inaccessible). A lock granted later is released at its grant.
        /// </summary>
        public void End()
        {
            List<Namespace> unlock;
            lock (_gate)
            {
                if (_ended) return;
                _ended = true;
                unlock = [.. _granted];
            }
            AllGranted.Set(); // (a sender still waiting finds it settled)
            Subsystem.ReleaseGroup(Ownership.Group, this);
            foreach (Namespace ns in unlock) ns.Locks.Unlock();
        }
    }

    // ------------------------------------------------------------------ hosts' associations

    /// <summary>A host's admin queue connected (reactor thread, before its Connect completes; must not block).</summary>
    private void OnHostAssociation(Controller c)
    {
        if (c.Subsystem.IsDiscovery) return;
        InterconnectLink? link = LinkFor(c.Subsystem);
        c.PairState = new AssociationState { Owner = Gate.Attach(c), Relay = link?.Relays.Attach(c) };
        if (link != null) Enqueue(() => { if (link.IsUp) link.Relays.RegisterAll(link.AssociationCntlid); });
    }

    private void OnHostAssociationEnded(Controller c)
    {
        if (c.PairState is not AssociationState st) return;
        if (st.Owner != null) Gate.Detach(st.Owner);
        if (st.Relay != null) LinkFor(c.Subsystem)?.Relays.Detach(st.Relay, c);
    }

    // ------------------------------------------------------------------ control thread

    private void Run()
    {
        long nextBeat = 0;
        while (!_stop)
        {
            _wake.WaitOne(TimeSpan.FromMilliseconds(Math.Max(5, Config.HeartbeatInterval.TotalMilliseconds / 2)));
            while (_work.TryDequeue(out Action? a))
            {
                try { a(); }
                catch (Exception e) { _log.LogError(e, "pair work item failed"); }
            }
            if (_stop) continue;
            if (Status == PartnerStatus.Refused)
            {
                // No pairing, but a replica that was leaving still lets its held writes go once its lease has expired.
                foreach (InterconnectLink l in _links) l.MirrorsTick(Stopwatch.GetTimestamp());
                continue;
            }
            long now = Stopwatch.GetTimestamp();
            if (now < nextBeat) continue;
            nextBeat = now + (long)(Config.HeartbeatInterval.TotalSeconds * Stopwatch.Frequency);
            // The witness's work first (its asks and records run on the witness's workers): a link's tick can hold this
            // thread for a heartbeat timeout (a heartbeat, or a connect to a partner whose machine lost power: no reset),
            // and a takeover or an alone record started after it would wait that long.
            WitnessTick(now);
            foreach (InterconnectLink l in _links)
            {
                try { l.Tick(now); }
                catch (Exception e) { _log.LogError(e, "{Nqn}: interconnect link failed", l.Subsystem.Nqn); }
            }
            if (Config.AutoGiveback) StartAutoGivebacks(now);
            bool up = _links.Count > 0;
            foreach (InterconnectLink l in _links) up &= l.IsUp;
            Membership.Update(up);
        }
    }

    public void Dispose()
    {
        _stop = true;
        _wake.Set();
        if (_thread.IsAlive) _thread.Join(TimeSpan.FromSeconds(5));
        // The fence first: with the links down it would fence every group this node owns as it stops.
        StopWitness();
        foreach (InterconnectLink l in _links) l.Down("node stopping");
        Workers.Dispose();
        Notices.Dispose();
        Membership.Dispose();
        _wake.Dispose();
    }
}

/// <summary>What a takeover did: the new term, the namespaces now served from this node's replicas, and what a forced one risked.</summary>
public sealed record TakeoverResult(GroupTerm Term, IReadOnlyList<uint> FromReplica, IReadOnlyList<string> Risks);

/// <summary>One group's ownership as <c>cluster_get_status</c> shows it.</summary>
public sealed record GroupStatus(uint Group, GroupTerm Current, string ConfiguredOwner, bool Confirmed, bool ServedHere, string? Conflict, GroupTerm? GivingBack,
    WitnessGroupStatus? Witness);
