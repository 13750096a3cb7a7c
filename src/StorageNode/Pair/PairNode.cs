using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Nvme.Spec;
using StorageNode.Target;
using StorageNode.Transport.Rdma;

namespace StorageNode.Pair;

/// <summary>
/// This node's part of an HA pair (docs/ha.md), and where its pieces meet: membership and heartbeats
/// (<see cref="Membership"/>), the clocks (<see cref="PairClock"/>), one interconnect link per subsystem into the
/// partner (<see cref="InterconnectLink"/>, with the proxy's relay control), the owner's fence (<see cref="HostGate"/>),
/// and the interconnect listener's side (<see cref="InterconnectService"/>). It meets the target at two seams: the I/O
/// gate (<see cref="IIoGate"/>) and namespaces whose channels take whole commands (<see cref="PartnerBdev"/>). The
/// control work runs on one thread of its own.
/// </summary>
public sealed class PairNode : IDisposable
{
    private readonly ILogger _log;
    private readonly List<InterconnectLink> _links = [];
    private readonly Dictionary<string, Dictionary<uint, string>> _owners;
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

    public PairNode(ClusterConfig cfg, NvmfTarget target, IReadOnlyDictionary<Subsystem, IReadOnlyDictionary<uint, string>> groupOwners)
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
                if (Config.Mirror) link.AddMirror(ns);
                uint nsid = ns.Nsid;
                ns.Reservations.Changed += st => link.SendReservationNotice(Guid.Empty, nsid, ReservationNotification.Empty, st.Ptpl);
            }
        }
        Membership.Start();
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
    public void SilenceHeartbeatChannel() => Membership.Silence();

    internal ClusterDescriptor DescriptorFor(Subsystem s)
        => ClusterDescriptor.For(s, Config.Name, Config.LocalNode, Config.Partner, _owners.TryGetValue(s.Nqn, out var o) ? o : new Dictionary<uint, string>(),
            (int)Config.RelayTimeout.TotalMilliseconds, Incarnation, Config.Mirror);

    internal void Refuse(string reason)
    {
        if (!Membership.Refuse(reason)) return;
        foreach (InterconnectLink l in _links) l.Down("configuration mismatch");
        Refused?.Invoke(reason);
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
            foreach (InterconnectLink l in _links)
            {
                try { l.Tick(now); }
                catch (Exception e) { _log.LogError(e, "{Nqn}: interconnect link failed", l.Subsystem.Nqn); }
            }
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
        foreach (InterconnectLink l in _links) l.Down("node stopping");
        Workers.Dispose();
        Notices.Dispose();
        Membership.Dispose();
        _wake.Dispose();
    }
}
