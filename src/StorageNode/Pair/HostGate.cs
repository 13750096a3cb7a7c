using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using StorageNode.Nvme.Spec;
using StorageNode.Target;

namespace StorageNode.Pair;

/// <summary>Which way a host's commands reach the namespaces this node owns: its own associations here, or the partner's relay.</summary>
public enum GatePath : byte
{
    None,
    /// <summary>The host's associations on this node (however many, through whichever ports).</summary>
    Local,
    /// <summary>The partner's relay.</summary>
    Relay,
}

/// <summary>Commands received one way and not yet completed.</summary>
internal sealed class PathCounter(GateEntry entry, GatePath path)
{
    public readonly GateEntry Entry = entry;
    public readonly GatePath Path = path;
    public int Outstanding;
}

/// <summary>
/// The owner's state for one host (host NQN + host ID) in one subsystem: which way its commands run, what is held
/// while that changes, and the fences. See docs/ha.md for the state machine this implements.
/// </summary>
public sealed class GateEntry
{
    internal readonly object Lock = new();
    internal readonly PathCounter LocalPath;
    internal readonly PathCounter RelayPath;
    internal readonly List<NvmfRequest> Held = [];
    /// <summary>Relay open commands waiting for the switch to the relay to finish.</summary>
    internal readonly List<NvmfRequest> PendingOpens = [];
    internal int ActiveValue;
    /// <summary>0, or the path being switched to.</summary>
    internal int SwitchingTo;
    internal int Generation;
    /// <summary>The host's associations here created no later than this (Stopwatch ticks) may carry old copies: fenced.</summary>
    internal long LocalFencedAt;
    /// <summary>The last drain this owner started; a relay opens only after the proxy installed its fence.</summary>
    internal long LastDrainId;
    /// <summary>The partner's incarnation that drain was for (0: unknown, which counts as any).</summary>
    internal long LastDrainIncarnation;
    /// <summary>When the host's last command through its own associations arrived here (Stopwatch ticks; 0: never).</summary>
    internal long LastLocalArrival;
    internal int Associations;
    internal int Bindings;
    internal bool Removed;
    /// <summary>The host's associations here from the relay's time, running nothing until the host shows it still uses them.</summary>
    internal readonly List<UnprovenAssociation> Unproven = [];
    /// <summary><see cref="Unproven"/>'s count, read without the lock by the fast path.</summary>
    internal int UnprovenCount;

    public Subsystem Subsystem { get; }
    public string HostNqn { get; }
    public Guid HostId { get; }
    public HostKey Key { get; }
    /// <summary>Completed switches between the host's own associations and the relay.</summary>
    public long Switches;

    internal GateEntry(Subsystem subsystem, string hostNqn, Guid hostId, HostKey key)
    {
        Subsystem = subsystem;
        HostNqn = hostNqn;
        HostId = hostId;
        Key = key;
        LocalPath = new PathCounter(this, GatePath.Local);
        RelayPath = new PathCounter(this, GatePath.Relay);
    }

    public GatePath Active => (GatePath)Volatile.Read(ref ActiveValue);
    public GatePath Switching => (GatePath)Volatile.Read(ref SwitchingTo);
    public int LocalOutstanding => Volatile.Read(ref LocalPath.Outstanding);
    public int RelayOutstanding => Volatile.Read(ref RelayPath.Outstanding);

    internal bool Idle => Associations == 0 && Bindings == 0 && SwitchingTo == 0 && Held.Count == 0 && PendingOpens.Count == 0
                          && Unproven.Count == 0 && LocalOutstanding == 0 && RelayOutstanding == 0;

    public override string ToString() => $"{HostNqn} ({HostId}) on {Subsystem.Nqn}";
}

/// <summary>
/// An association of a host made while its commands ran through the partner's relay, when they switch back here: it
/// may carry commands the host sent before it gave the association up and retried through the relay, so it runs
/// nothing until the host shows it still uses it (<see cref="Controller.ProveHostStillHere"/>).
/// </summary>
internal sealed class UnprovenAssociation(Controller controller, AssociationState state)
{
    public readonly Controller Controller = controller;
    public readonly AssociationState State = state;
    /// <summary>Its commands that arrived meanwhile (under the entry's lock).</summary>
    public readonly List<NvmfRequest> Held = [];
    public readonly Stopwatch Since = Stopwatch.StartNew();
    /// <summary>No answer within the drain limit: it is being closed (under the entry's lock).</summary>
    public bool TimedOut;
}

/// <summary>The owner's record of one host the partner relays for, on one of the partner's associations.</summary>
public sealed class RelayBinding(uint handle, GateEntry entry, Controller association)
{
    public uint Handle { get; } = handle;
    public GateEntry Entry { get; } = entry;
    /// <summary>The partner's association the handle is valid on.</summary>
    public Controller Association { get; } = association;
    /// <summary>Relayed commands received under this handle.</summary>
    public long Received;
}

/// <summary>
/// The owner side's guarantee against stale writes (docs/ha.md, <see cref="IIoGate"/>): a host's commands to the
/// namespaces this node owns run one way at a time — through the host's own associations here, or through the
/// partner's relay — and a switch between the two waits until nothing sent the old way can still run. Paths within
/// one node are one way: a host may spread its I/O over several associations here with no barrier.
/// </summary>
public sealed class HostGate : IIoGate
{
    /// <summary>Registrations the partner may hold on one of its associations.</summary>
    public const int MaxBindingsPerAssociation = 4096;

    private readonly PairNode _pair;
    private readonly ILogger _log;
    private readonly ConcurrentDictionary<(Subsystem, HostKey), GateEntry> _entries = new();
    private readonly ConcurrentDictionary<uint, RelayBinding> _bindings = new();
    private readonly ConcurrentDictionary<Controller, int> _bindingsPerAssociation = new();
    private int _nextHandle;

    internal HostGate(PairNode pair, ILogger log)
    {
        _pair = pair;
        _log = log;
        DrainLimit = 2 * pair.Config.RelayTimeout + TimeSpan.FromSeconds(1);
    }

    /// <summary>
    /// How long a switch may keep new commands waiting; past it they fail with ANA Transition (the host retries)
    /// while the gate goes on waiting. Never does a switch proceed before the old way drained.
    /// </summary>
    public TimeSpan DrainLimit { get; set; }

    /// <summary>Test hook: the gate admits everything and never switches (what the stale-write detector must catch).</summary>
    public bool DisabledForTest { get; set; }

    public IReadOnlyCollection<GateEntry> Entries => [.. _entries.Values];

    public GateEntry? Find(Subsystem s, string hostNqn, Guid hostId)
        => _entries.TryGetValue((s, HostKey.For(hostNqn, hostId)), out GateEntry? e) ? e : null;

    public RelayBinding? FindBinding(uint handle) => _bindings.TryGetValue(handle, out RelayBinding? b) ? b : null;

    public int BindingCount => _bindings.Count;

    /// <summary>The partner's registrations of one host (status and tests).</summary>
    public IReadOnlyList<RelayBinding> BindingsOf(GateEntry e)
    {
        var list = new List<RelayBinding>();
        foreach (RelayBinding b in _bindings.Values) if (b.Entry == e) list.Add(b);
        return list;
    }

    // ------------------------------------------------------------------ entries (control path)

    /// <summary>The entry of a host in a subsystem, with one more reference (association or binding).</summary>
    private GateEntry Acquire(Subsystem s, string hostNqn, Guid hostId, bool association)
    {
        HostKey key = HostKey.For(hostNqn, hostId);
        while (true)
        {
            GateEntry e = _entries.GetOrAdd((s, key), k => new GateEntry(k.Item1, hostNqn, hostId, k.Item2));
            lock (e.Lock)
            {
                if (e.Removed) continue;
                if (association) e.Associations++;
                else e.Bindings++;
                return e;
            }
        }
    }

    private void Release(GateEntry e, bool association)
    {
        lock (e.Lock)
        {
            if (association) e.Associations--;
            else e.Bindings--;
        }
        Prune(e);
    }

    /// <summary>Forgets an entry nothing refers to any more (bounded tables).</summary>
    private void Prune(GateEntry e)
    {
        lock (e.Lock)
        {
            if (!e.Idle || e.Removed) return;
            e.Removed = true;
            _entries.TryRemove(new KeyValuePair<(Subsystem, HostKey), GateEntry>((e.Subsystem, e.Key), e));
        }
    }

    /// <summary>A host's association on this node was created (reactor thread).</summary>
    internal GateEntry Attach(Controller c) => Acquire(c.Subsystem, c.HostNqn, c.HostId, association: true);

    internal void Detach(GateEntry e) => Release(e, association: true);

    /// <summary>The partner registers a host on one of its associations; the same handle for the same host. Null past the limit.</summary>
    internal RelayBinding? Register(Controller association, string hostNqn, Guid hostId)
    {
        GateEntry e = Acquire(association.Subsystem, hostNqn, hostId, association: false);
        foreach (RelayBinding b in _bindings.Values)
        {
            if (b.Association == association && b.Entry == e)
            {
                Release(e, association: false);
                return b;
            }
        }
        int count = _bindingsPerAssociation.AddOrUpdate(association, 1, (_, n) => n + 1);
        if (count > MaxBindingsPerAssociation)
        {
            _bindingsPerAssociation.AddOrUpdate(association, 0, (_, n) => n - 1);
            Release(e, association: false);
            _log.LogWarning("{Assoc}: the partner registered more than {Max} hosts on one association; refusing {Host}", association, MaxBindingsPerAssociation, hostNqn);
            return null;
        }
        uint handle;
        do handle = (uint)Interlocked.Increment(ref _nextHandle);
        while (handle == 0);
        var binding = new RelayBinding(handle, e, association);
        _bindings[handle] = binding;
        return binding;
    }

    internal void Unregister(Controller association, uint handle)
    {
        if (!_bindings.TryGetValue(handle, out RelayBinding? b) || b.Association != association) return;
        if (!_bindings.TryRemove(new KeyValuePair<uint, RelayBinding>(handle, b))) return;
        _bindingsPerAssociation.AddOrUpdate(association, 0, (_, n) => n - 1);
        Release(b.Entry, association: false);
    }

    /// <summary>The partner's association ended: its handles are gone.</summary>
    internal void RemoveAssociation(Controller association)
    {
        foreach (RelayBinding b in _bindings.Values)
            if (b.Association == association) Unregister(association, b.Handle);
        _bindingsPerAssociation.TryRemove(association, out _);
    }

    // ------------------------------------------------------------------ IIoGate (reactor threads)

    public NvmeStatus Count(NvmfRequest req, Controller ctrl)
    {
        PathCounter path;
        if (ctrl.IsInterconnect)
        {
            RelayBinding? b = FindBinding(RelayFields.Handle(req.Sqe));
            if (b == null || b.Association != ctrl) return NvmeStatus.Generic(GenericStatus.InvalidField);
            req.Gate.Deadline = _pair.Clock.OwnDeadlineTicks(RelayFields.Deadline(req.Sqe), Stopwatch.GetTimestamp());
            Interlocked.Increment(ref b.Received);
            path = b.Entry.RelayPath;
        }
        else
        {
            if (ctrl.PairState is not AssociationState { Owner: { } e }) return NvmeStatus.Success;
            if (ctrl.CreatedTicks <= Volatile.Read(ref e.LocalFencedAt) && !DisabledForTest) return FenceLocal(ctrl, e);
            Volatile.Write(ref e.LastLocalArrival, Stopwatch.GetTimestamp());
            path = e.LocalPath;
        }
        req.Gate.Path = path;
        Interlocked.Increment(ref path.Outstanding);
        return NvmeStatus.Success;
    }

    public bool Admit(NvmfRequest req)
    {
        var p = (PathCounter)req.Gate.Path!;
        GateEntry e = p.Entry;
        // Count (a full fence) came first; a switch publishes SwitchingTo before it reads the counts. So either this
        // command sees the switch, or the switch sees this command.
        if (Volatile.Read(ref e.SwitchingTo) == 0 && Volatile.Read(ref e.ActiveValue) == (int)p.Path && Volatile.Read(ref e.UnprovenCount) == 0)
            return p.Path != GatePath.Relay || InTime(req);
        if (DisabledForTest) return p.Path != GatePath.Relay || InTime(req);
        return AdmitSlow(req, p, e);
    }

    public Guid RelayedHostId(NvmfRequest req)
        => req.Gate.Path is PathCounter { Path: GatePath.Relay } p ? p.Entry.HostId : Guid.Empty;

    public void Done(NvmfRequest req)
    {
        if (req.Gate.Path is not PathCounter p) return;
        req.Gate.Path = null;
        // The last command of a host nothing refers to any more (its associations and bindings went while it ran or
        // was held): the entry goes now, or never would.
        if (Interlocked.Decrement(ref p.Outstanding) == 0 && Volatile.Read(ref p.Entry.Associations) == 0 && Volatile.Read(ref p.Entry.Bindings) == 0)
            Prune(p.Entry);
    }

    /// <summary>A relayed command past its deadline never starts: the host may already have retried it elsewhere.</summary>
    private bool InTime(NvmfRequest req)
    {
        if (Stopwatch.GetTimestamp() <= req.Gate.Deadline) return true;
        req.Fail(NvmeStatus.Path(PathStatus.AnaTransition));
        return false;
    }

    // Kept apart from Admit: a lambda or a lock here would cost every command.
    private bool AdmitSlow(NvmfRequest req, PathCounter p, GateEntry e)
    {
        lock (e.Lock)
        {
            var switching = (GatePath)e.SwitchingTo;
            var active = (GatePath)e.ActiveValue;
            if (p.Path == GatePath.Relay)
            {
                // While the relay drains, relayed commands are the old copies being waited for: they run now, before
                // the commands held for the host's own path. Otherwise a relay that is not open runs nothing.
                if (switching == GatePath.Local || (switching == GatePath.None && active == GatePath.Relay)) return InTime(req);
                req.Fail(NvmeStatus.Path(PathStatus.AnaTransition));
                return false;
            }
            Controller ctrl = req.Qpair.Controller!;
            if (ctrl.CreatedTicks <= e.LocalFencedAt)
            {
                req.Fail(FenceLocal(ctrl, e));
                return false;
            }
            if (ctrl.PairState is AssociationState { Unproven: { } unproven })
            {
                req.PendingOps = 1;
                unproven.Held.Add(req);
                return false;
            }
            switch (switching)
            {
                case GatePath.None when active != GatePath.Relay:
                    Volatile.Write(ref e.ActiveValue, (int)GatePath.Local);
                    return true;
                case GatePath.None:
                    Hold(req, e);
                    StartSwitchToLocal(e);
                    return false;
                case GatePath.Local:
                    Hold(req, e);
                    return false;
                default:
                    // Switching to the relay, and this association is newer than the relay's fence: the host is back
                    // on its own path. The relay open loses; the command runs.
                    CancelSwitchToRelay(e, "the host came back on a newer association");
                    Volatile.Write(ref e.ActiveValue, (int)GatePath.Local);
                    return true;
            }
        }
    }

    private static void Hold(NvmfRequest req, GateEntry e)
    {
        req.PendingOps = 1; // the slot stays allocated even if its connection closes while held
        e.Held.Add(req);
    }

    /// <summary>
    /// A command arrived on an association of the host from before its relay opened: it may be an old copy the host
    /// already retried through the partner. It does not run; the association closes, so nothing else sent on it runs
    /// either (the host reconnects).
    /// </summary>
    private NvmeStatus FenceLocal(Controller ctrl, GateEntry e)
    {
        if (!ctrl.Destroyed)
        {
            _log.LogWarning("{Ctrl}: I/O arrived on an association from before {Host} moved to the partner's relay; it may be an old copy: closing the association",
                ctrl, e);
            ctrl.Destroy("fenced: the host moved to the partner's relay after this association was made");
        }
        return NvmeStatus.Generic(GenericStatus.AbortedSqDeletion);
    }

    // ------------------------------------------------------------------ relay -> local

    private void StartSwitchToLocal(GateEntry e)
    {
        Interlocked.Exchange(ref e.SwitchingTo, (int)GatePath.Local);
        int gen = ++e.Generation;
        long drainId = ++e.LastDrainId;
        e.LastDrainIncarnation = _pair.Membership.PartnerIncarnation;
        _ = Task.Run(() => DrainRelayAsync(e, gen, drainId));
    }

    /// <summary>
    /// Asks the partner to close the host's relay and waits until nothing it relayed can still start here: every
    /// command it counted arrived (or its deadline passed), older associations of the partner closed, and whatever
    /// arrived completed. If the partner cannot answer, waits out the relay timeout instead (the partner's deadlines
    /// bound what it could still send) and makes the next relay open install the fence first.
    /// </summary>
    private async Task DrainRelayAsync(GateEntry e, int gen, long drainId)
    {
        var sw = Stopwatch.StartNew();
        string how;
        try
        {
            long started = Stopwatch.GetTimestamp();
            InterconnectLink? link = _pair.LinkFor(e.Subsystem);
            DrainAnswer? answer = link == null ? null : await link.QueryDrainAsync(e.Key, drainId);
            Func<bool> arrived;
            IReadOnlyList<Controller> closing = [];
            if (answer is { } any)
            {
                lock (e.Lock)
                {
                    if (e.LastDrainId == drainId) e.LastDrainIncarnation = any.Incarnation;
                }
            }
            if (answer is { Kind: DrainAnswer.KindKnown } a)
            {
                closing = _pair.Service.CloseInbound(e.Subsystem, a.Cntlid, "an older association of the partner (relay drain)");
                RelayBinding? b = a.Handle == 0 ? null : FindBinding(a.Handle);
                if (b != null && b.Association.Cntlid != a.Cntlid) b = null;
                how = $"the partner relayed {a.Sent} on handle {a.Handle}";
                arrived = () => b == null || Interlocked.Read(ref b.Received) >= (long)a.Sent || b.Association.QueuesClosed
                                || (a.HasDeadline != 0 && _pair.Clock.IsPast(new OwnerDeadline(a.LastDeadline), Stopwatch.GetTimestamp()));
            }
            else if (answer is { Kind: DrainAnswer.KindNoAssociation })
            {
                closing = _pair.Service.CloseInbound(e.Subsystem, 0, "the partner has no association for this subsystem any more (relay drain)");
                how = "the partner's link is down: its associations here closed";
                arrived = () => true;
            }
            else
            {
                long bound = started + (long)(_pair.Config.RelayTimeout.TotalSeconds * Stopwatch.Frequency);
                how = "the partner did not answer: waited out the relay timeout";
                arrived = () => Stopwatch.GetTimestamp() > bound;
            }
            await WaitAsync(e, () => arrived() && AllClosed(closing) && e.RelayOutstanding == 0, sw, "relay");
        }
        catch (Exception ex)
        {
            // Never switch on a failure: hold until the relay deadline bound passed.
            _log.LogError(ex, "{Entry}: relay drain failed; waiting out the relay timeout", e);
            how = "failed: waited out the relay timeout";
            long bound = Stopwatch.GetTimestamp() + (long)(_pair.Config.RelayTimeout.TotalSeconds * Stopwatch.Frequency);
            await WaitAsync(e, () => Stopwatch.GetTimestamp() > bound && e.RelayOutstanding == 0, sw, "relay");
        }
        Finish(e, gen, GatePath.Local, sw, how);
    }

    private static bool AllClosed(IReadOnlyList<Controller> closing)
    {
        foreach (Controller c in closing) if (!c.QueuesClosed) return false;
        return true;
    }

    // ------------------------------------------------------------------ local -> relay

    /// <summary>
    /// The partner asks to relay the host's commands (reactor thread of the partner's association). Completes
    /// <paramref name="req"/> now or when the switch is done: success (DW0: this node's last drain id; DW1: when the
    /// host's last command through its own associations arrived, on this node's wire clock, 0 for never), FenceFirst
    /// (DW0: the drain id whose fence the partner must install first), NotNow (the host is moving back here).
    /// </summary>
    internal void OnRelayOpen(NvmfRequest req, RelayBinding b, long proxyFenceId, long proxyIncarnation)
    {
        GateEntry e = b.Entry;
        lock (e.Lock)
        {
            // A restarted partner has no association from before the drain, so nothing to fence.
            bool sameRun = e.LastDrainIncarnation == 0 || e.LastDrainIncarnation == proxyIncarnation;
            if (sameRun && proxyFenceId < e.LastDrainId)
            {
                AnswerOpen(req, InterconnectStatus.FenceFirst, e.LastDrainId, e);
                return;
            }
            var switching = (GatePath)e.SwitchingTo;
            if (switching == GatePath.None && (GatePath)e.ActiveValue == GatePath.Relay)
            {
                AnswerOpen(req, NvmeStatus.Success, e.LastDrainId, e);
                return;
            }
            if (switching == GatePath.Local)
            {
                AnswerOpen(req, InterconnectStatus.NotNow, e.LastDrainId, e);
                return;
            }
            req.PendingOps = 1;
            e.PendingOpens.Add(req);
            if (switching == GatePath.Relay) return;
            // Every association of the host here that exists now may still deliver old copies: fence them (a command
            // on one closes it), then wait for what they started.
            Volatile.Write(ref e.LocalFencedAt, Stopwatch.GetTimestamp());
            Interlocked.Exchange(ref e.SwitchingTo, (int)GatePath.Relay);
            FenceUnproven(e); // (after the switch is published: the fast path never sees neither)
            int gen = ++e.Generation;
            _ = Task.Run(() => OpenRelayAsync(e, gen));
        }
    }

    private async Task OpenRelayAsync(GateEntry e, int gen)
    {
        var sw = Stopwatch.StartNew();
        bool drained = await WaitAsync(e, () => e.LocalOutstanding == 0 || Volatile.Read(ref e.Generation) != gen, sw, "local", failHeld: false);
        if (!drained)
        {
            lock (e.Lock)
            {
                if (e.Generation == gen) CancelSwitchToRelay(e, $"the host's commands here did not finish within {DrainLimit.TotalSeconds:0.#} s");
            }
            return;
        }
        Finish(e, gen, GatePath.Relay, sw, "the host's own associations fenced and drained");
    }

    /// <summary>
    /// The host's relay opens while associations of the relay's time have not shown the host still uses them: they are
    /// fenced with the rest, and what they hold never runs (entry lock held).
    /// </summary>
    private void FenceUnproven(GateEntry e)
    {
        foreach (UnprovenAssociation u in e.Unproven)
        {
            u.State.Unproven = null;
            FailLater(u.Held, NvmeStatus.Generic(GenericStatus.AbortedSqDeletion));
            u.Held.Clear();
            FenceLocal(u.Controller, e);
        }
        e.Unproven.Clear();
        PublishUnproven(e);
    }

    /// <summary>Mirrors the unproven list's count for Admit's fast path (entry lock held).</summary>
    private static void PublishUnproven(GateEntry e) => Interlocked.Exchange(ref e.UnprovenCount, e.Unproven.Count);

    // ------------------------------------------------------------------ after relay -> local: is the host still there?

    /// <summary>
    /// After the relay drained, the host's associations made while it relayed (made before the drain ended, after the
    /// last relay open) may carry commands the host sent before it gave them up and retried through the relay — the
    /// retries already ran, so these would land over newer data. The owner cannot order them by arrival. It runs nothing
    /// from such an association until the host answers something sent after the drain on it: then the host had not
    /// given it up when the relay closed, so nothing it sent there was retried through the relay (a later relay open
    /// fences it). Entry lock held; returns the associations to ask.
    /// </summary>
    private static List<UnprovenAssociation> MarkUnproven(GateEntry e, IReadOnlyList<Controller> controllers, long drained)
    {
        var ask = new List<UnprovenAssociation>();
        foreach (Controller c in controllers)
        {
            if (c.IsInterconnect || c.Destroyed || c.PairState is not AssociationState { Owner: { } owner } st || owner != e) continue;
            if (c.CreatedTicks <= e.LocalFencedAt || c.CreatedTicks > drained || st.Unproven != null) continue;
            var u = new UnprovenAssociation(c, st);
            st.Unproven = u;
            e.Unproven.Add(u);
            ask.Add(u);
        }
        PublishUnproven(e);
        return ask;
    }

    private void AskHost(GateEntry e, UnprovenAssociation u)
    {
        u.Controller.ProveHostStillHere(r => OnProof(e, u, r));
        _ = Task.Run(async () =>
        {
            await Task.Delay(DrainLimit);
            lock (e.Lock)
            {
                if (u.State.Unproven != u) return;
                u.TimedOut = true; // an answer from now on comes too late: it is closed
            }
            _log.LogWarning("{Ctrl}: {Host} has not shown within {Seconds:0.#} s that it still uses this association, made while it relayed; closing it (its held commands never run)",
                u.Controller, e, DrainLimit.TotalSeconds);
            u.Controller.Destroy("the host did not show it still uses this association after its relay closed");
            OnProof(e, u, HostProof.Ended); // (destroyed: nothing of it runs any more, held or new)
        });
    }

    private void OnProof(GateEntry e, UnprovenAssociation u, HostProof result)
    {
        List<NvmfRequest> held;
        lock (e.Lock)
        {
            if (u.State.Unproven != u) return; // fenced by a relay open meanwhile, or concluded already
            if (u.TimedOut && result != HostProof.Ended) return; // being closed
            u.State.Unproven = null;
            e.Unproven.Remove(u);
            PublishUnproven(e);
            held = [.. u.Held];
            u.Held.Clear();
        }
        switch (result)
        {
            case HostProof.Proven:
                _log.LogInformation("{Ctrl}: the host still uses this association (answered in {Ms:0.0} ms); {Held} held command(s) run",
                    u.Controller, u.Since.Elapsed.TotalMilliseconds, held.Count);
                foreach (NvmfRequest r in held) Post(r, CommandDispatcher.Resume);
                break;
            case HostProof.CannotAsk:
                _log.LogInformation("{Ctrl}: the host cannot be asked whether it still uses this association (ANA change notices off); {Held} held command(s) run",
                    u.Controller, held.Count);
                foreach (NvmfRequest r in held) Post(r, CommandDispatcher.Resume);
                break;
            default:
                _log.LogInformation("{Ctrl}: the association ended before the host showed it still uses it; {Held} held command(s) never run",
                    u.Controller, held.Count);
                FailLater(held, NvmeStatus.Generic(GenericStatus.AbortedSqDeletion));
                break;
        }
        Prune(e);
    }

    private void CancelSwitchToRelay(GateEntry e, string why)
    {
        e.Generation++;
        Interlocked.Exchange(ref e.SwitchingTo, 0);
        _log.LogInformation("{Entry}: relay open refused: {Why}", e, why);
        foreach (NvmfRequest open in e.PendingOpens) AnswerOpen(open, InterconnectStatus.NotNow, e.LastDrainId, e);
        e.PendingOpens.Clear();
    }

    // ------------------------------------------------------------------ both directions

    /// <summary>Polls until drained; past the drain limit fails what is held (the host retries) and goes on waiting, or gives up when asked.</summary>
    private async Task<bool> WaitAsync(GateEntry e, Func<bool> drained, Stopwatch sw, string what, bool failHeld = true)
    {
        TimeSpan limit = DrainLimit;
        while (!drained())
        {
            if (sw.Elapsed > limit)
            {
                if (!failHeld) return false;
                _log.LogError("{Entry}: the {What} way has not drained after {Seconds:0.#} s; failing the commands held for the other way (the host retries) and waiting on",
                    e, what, sw.Elapsed.TotalSeconds);
                FailHeld(e);
                limit += DrainLimit;
            }
            await Task.Delay(1);
        }
        return true;
    }

    private void FailHeld(GateEntry e)
    {
        List<NvmfRequest> held;
        lock (e.Lock)
        {
            held = [.. e.Held];
            e.Held.Clear();
        }
        FailLater(held, NvmeStatus.Path(PathStatus.AnaTransition));
    }

    /// <summary>Fails held commands on their reactors (their slots were kept while held).</summary>
    private static void FailLater(List<NvmfRequest> held, NvmeStatus status)
    {
        Action<NvmfRequest> fail = x => { x.PendingOps = 0; x.Fail(status); }; // one delegate for the list
        foreach (NvmfRequest r in held) Post(r, fail);
    }

    private void Finish(GateEntry e, int gen, GatePath to, Stopwatch sw, string how)
    {
        List<NvmfRequest> release, opens;
        List<UnprovenAssociation> ask = [];
        long drained = Stopwatch.GetTimestamp();
        IReadOnlyList<Controller> controllers = to == GatePath.Local ? e.Subsystem.Controllers : [];
        lock (e.Lock)
        {
            if (e.Generation != gen) return;
            // Before the switch is published: a command that sees it sees these too (Admit's fast path).
            if (to == GatePath.Local) ask = MarkUnproven(e, controllers, drained);
            Volatile.Write(ref e.ActiveValue, (int)to);
            Interlocked.Exchange(ref e.SwitchingTo, 0);
            release = [.. e.Held];
            e.Held.Clear();
            opens = [.. e.PendingOpens];
            e.PendingOpens.Clear();
            e.Switches++;
            foreach (NvmfRequest open in opens) AnswerOpen(open, NvmeStatus.Success, e.LastDrainId, e);
        }
        _log.LogInformation("{Entry}: commands now run through {To}; barrier took {Ms:0.0} ms ({How}), {Held} command(s) held{Asking}",
            e, to == GatePath.Relay ? "the partner's relay" : "the host's own associations", sw.Elapsed.TotalMilliseconds, how, release.Count,
            ask.Count == 0 ? "" : $"; {ask.Count} association(s) made while it relayed run once the host shows it still uses them");
        foreach (UnprovenAssociation u in ask) AskHost(e, u);
        foreach (NvmfRequest r in release) Post(r, CommandDispatcher.Resume);
        Prune(e);
    }

    private void AnswerOpen(NvmfRequest req, NvmeStatus status, long drainId, GateEntry e)
    {
        long local = Volatile.Read(ref e.LastLocalArrival);
        uint lastLocal = local == 0 ? 0 : Math.Max(1u, (uint)_pair.Clock.Wire(local));
        Post(req, r =>
        {
            r.PendingOps = 0;
            r.Cqe.Dw0 = (uint)drainId;
            r.Cqe.Dw1 = lastLocal;
            if (r.Qpair.IsClosed) r.Complete();
            else r.Fail(status);
        });
    }

    private static void Post(NvmfRequest req, Action<NvmfRequest> action) => req.Qpair.Reactor.Post(() => action(req));
}

/// <summary>What the pair keeps for one association of a host on this node (<see cref="Controller.PairState"/>).</summary>
public sealed class AssociationState
{
    /// <summary>Owner side: the host's gate entry in the association's subsystem.</summary>
    public GateEntry? Owner { get; init; }
    /// <summary>Proxy side: the host's relay state in the subsystem.</summary>
    public HostRelay? Relay { get; init; }
    /// <summary>Owner side: set while the association, made while the host relayed, runs nothing (entry lock).</summary>
    internal UnprovenAssociation? Unproven;
}
