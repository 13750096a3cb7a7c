using System.Diagnostics;
using Microsoft.Extensions.Logging;
using StorageNode.Nvme.Spec;
using StorageNode.Target;
using StorageNode.Witness;

namespace StorageNode.Pair;

/// <summary>The pair's side of the witness (<c>Cluster:Witness</c>; docs/ha.md, "The witness").</summary>
public sealed partial class PairNode
{
    /// <summary>The witness this node asks (null: none configured; takeover is manual).</summary>
    public WitnessClient? Witness { get; private set; }

    /// <summary>Holds a group this node owns while it hears neither its partner nor the witness (self-fenced).</summary>
    internal object SelfFenceHold { get; } = new();

    // Per group this node owns: whether the witness recorded that it serves the group alone, at which term and
    // generation, and whether a word about it (alone, synced) is on its way — one at a time, so that a "synced" never
    // overtakes an "alone" sent after it. Under _aloneLock.
    private sealed class AloneState
    {
        public ulong Term;
        public ulong Generation;
        public bool Recorded;
        public bool InFlight;
        // Writes the partner's replica lacks have completed at this term: the witness must keep the record until a synced
        // clears it (said again, every heartbeat interval, while an answer shows it lacks it).
        public bool MustRecord;
        public ulong MustTerm;
    }

    private readonly object _aloneLock = new();
    private readonly Dictionary<(string Nqn, uint Group), AloneState> _alone = [];
    // What the witness said last of each group's alone record, from any answer: (term, generation), or absent.
    private readonly Dictionary<(string Nqn, uint Group), (ulong Term, ulong Generation)> _witnessSaysAlone = [];
    // Groups self-fenced now (changed on the control thread; status reads it).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(string Nqn, uint Group), bool> _fenced = new();
    // Automatic takeovers running: one at a time per group (under _ownershipLock).
    private readonly HashSet<(string Nqn, uint Group)> _autoTakeovers = [];
    private PairWorkers? _witnessWork;

    private long _witnessStarted;
    // Groups a restarted node owned that it has asked the witness about (control thread), and those it said it could not.
    private readonly HashSet<(string Nqn, uint Group)> _confirming = [];
    private readonly HashSet<(string Nqn, uint Group)> _unconfirmedSaid = [];

    private void StartWitness()
    {
        if (Config.Witness == null) return;
        _witnessStarted = Stopwatch.GetTimestamp();
        _witnessWork = new PairWorkers($"pair {Config.LocalNode} witness", _log);
        Witness = new WitnessClient(Config, () => [.. OwnedGroups().Select(g => (g.S.Nqn, g.Group, g.Term))], _log);
        Witness.Answered += OnWitnessAnswer;
        Witness.Start();
        _fenceThread = new Thread(FenceLoop) { IsBackground = true, Name = $"pair {Config.LocalNode} fence" };
        _fenceThread.Start();
        if (!Config.SelfFence)
            _log.LogCritical("cluster {Cluster}: Cluster:SelfFence is false: an owner cut off from its partner and the witness goes on serving, and both nodes may accept writes (for tests only)", Config.Name);
        _log.LogInformation("cluster {Cluster}: witness at udp {Witness}: leases renewed every {Interval} ms", Config.Name, Config.Witness, Config.HeartbeatInterval.TotalMilliseconds);
    }

    /// <summary>A group's witness state for status (null without a witness): the lease left here, fenced, alone recorded.</summary>
    internal WitnessGroupStatus? WitnessStatusOf(Subsystem s, uint group, GroupTerm current)
    {
        if (Witness == null) return null;
        WitnessClient.Lease l = Witness.LeaseOf(s.Nqn, group);
        long left = l.Term == current.Term && current.Owner == Config.LocalNode ? l.UntilTicks - Stopwatch.GetTimestamp() : 0;
        bool alone;
        lock (_aloneLock) alone = _witnessSaysAlone.TryGetValue((s.Nqn, group), out var says) && says.Term == current.Term;
        return new WitnessGroupStatus(Math.Max(0, left * 1000 / Stopwatch.Frequency), _fenced.ContainsKey((s.Nqn, group)), alone);
    }

    private void StopWitness()
    {
        _fenceStop = true;
        _fenceThread?.Join(TimeSpan.FromSeconds(2));
        Witness?.Dispose();
        _witnessWork?.Dispose();
    }

    private readonly record struct OwnedGroup(Subsystem S, InterconnectLink Link, uint Group, ulong Term);
    private volatile OwnedGroup[] _owned = [];
    private Thread? _fenceThread;
    private volatile bool _fenceStop;

    /// <summary>
    /// The groups this node serves as their owner, with their terms (their leases are renewed, their fence checked): as
    /// now, or — while the ownership lock is held longer than a few milliseconds (it is held across the fsyncs that keep a
    /// term) — as last seen, so that neither a renewal nor a fence waits on a disk.
    /// </summary>
    private OwnedGroup[] OwnedGroups()
    {
        if (!Monitor.TryEnter(_ownershipLock, 5)) return _owned;
        try
        {
            var owned = new List<OwnedGroup>();
            foreach (((string nqn, uint g), GroupOwnership o) in _ownership)
                if (o.MayServe && SubsystemOf(nqn) is Subsystem s && LinkFor(s) is InterconnectLink l) owned.Add(new OwnedGroup(s, l, g, o.Current.Term));
            return _owned = [.. owned];
        }
        finally
        {
            Monitor.Exit(_ownershipLock);
        }
    }

    /// <summary>
    /// The self-fence, on a thread of its own that waits on nothing (the control thread can block on the partner for a
    /// heartbeat timeout and more): every half heartbeat interval, with the clock read then, a group this node owns is
    /// fenced while it holds no lease and its partner has answered no interconnect heartbeat sent in the last heartbeat
    /// timeout, and served again when either comes back.
    /// </summary>
    private void FenceLoop()
    {
        var wait = TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond, Config.HeartbeatInterval.Ticks / 2));
        while (!_fenceStop)
        {
            try
            {
                OwnedGroup[] owned = OwnedGroups();
                long now = Stopwatch.GetTimestamp();
                long timeout = (long)(Config.HeartbeatTimeout.TotalSeconds * Stopwatch.Frequency);
                // Not heard by the partner for a heartbeat timeout: the partner may have stopped hearing this node as
                // long ago, and may ask the witness for the group from then on.
                foreach (OwnedGroup g in owned)
                    Fence(g.S, g.Link, g.Group, fence: Config.SelfFence && !Witness!.LeaseHeld(g.S.Nqn, g.Group, g.Term, now)
                        && now - g.Link.LastHeartbeatAnsweredTicks > timeout);
                // Fenced groups this node no longer owns are released (it learned a newer term: the group follows that).
                foreach ((string nqn, uint group) in _fenced.Keys)
                    if (!owned.Any(x => x.S.Nqn == nqn && x.Group == group) && SubsystemOf(nqn) is Subsystem s)
                        Fence(s, LinkFor(s)!, group, fence: false);
            }
            catch (Exception e) { _log.LogError(e, "the self-fence check failed"); }
            Thread.Sleep(wait);
        }
    }

    private Subsystem? SubsystemOf(string nqn)
    {
        foreach (InterconnectLink l in _links) if (l.Subsystem.Nqn == nqn) return l.Subsystem;
        return null;
    }

    /// <summary>An answer from the witness (its receiving thread): a newer term it knows is learned on the control thread.</summary>
    private void OnWitnessAnswer(WitnessKey key, WitnessRequest request, WitnessAnswer a)
    {
        if (key.Cluster != Config.Name || SubsystemOf(key.Nqn) is not Subsystem s || a.Term == 0 && a.Owner.Length == 0) return;
        var term = new GroupTerm(a.Term, a.Owner);
        GroupTerm? mine = TermOf(s, key.Group);
        if (mine is not GroupTerm m) return;
        // A term naming the partner is learned. One naming this node is its own take (whose caller serves the group
        // before it keeps the term) or one it forgot: learning it here would own the group without serving it.
        if (term.Owner == Config.Partner && (term.Term > m.Term || (term.Term == m.Term && term.Owner != m.Owner && a.Result == WitnessResult.Superseded)))
            Enqueue(() => LearnFromWitness(s, key.Group, term));
        lock (_aloneLock)
        {
            if (a.Alone) _witnessSaysAlone[(key.Nqn, key.Group)] = (a.Term, a.AloneGeneration);
            else _witnessSaysAlone.Remove((key.Nqn, key.Group));
        }
    }

    /// <summary>The witness knows a term this node did not (control thread): taken as the partner's view is.</summary>
    private void LearnFromWitness(Subsystem s, uint group, GroupTerm term)
    {
        lock (_ownershipLock)
        {
            if (!_ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o)) return;
            if (term.Term < o.Current.Term || term == o.Current) return;
            _log.LogWarning("{Nqn}: ANA group {Group}: the witness says {Term} (this node knew {Mine})", s.Nqn, group, term, o.Current);
            LearnGroup(s, o, term);
            if (_givebacks.TryGetValue((s.Nqn, group), out GivebackInFlight? gb)) SettleUnanswered(gb, o);
        }
    }

    /// <summary>
    /// Whether writes the partner's replica lacks may complete on this node for the group (a mirror whose lease ran out,
    /// control thread): always without a witness; with one, once it has recorded that this node serves the group alone
    /// at its term (asked here, answered on a worker: false until then).
    /// </summary>
    internal bool EnsureAlone(Subsystem s, uint group)
    {
        if (Witness == null || !Config.SelfFence) return true;
        GroupTerm? current = TermOf(s, group);
        if (current is not GroupTerm t || t.Owner != Config.LocalNode) return false;
        AloneState st;
        lock (_aloneLock)
        {
            if (!_alone.TryGetValue((s.Nqn, group), out st!)) _alone[(s.Nqn, group)] = st = new AloneState();
            if (st.Recorded && st.Term == t.Term) return true;
            if (st.InFlight) return false;
            st.InFlight = true;
        }
        WitnessClient w = Witness;
        if (!_witnessWork!.Run(() =>
            {
                WitnessAnswer? a = null;
                try { a = w.Ask(WitnessVerb.Alone, s.Nqn, group, t.Term, 0, Config.HeartbeatTimeout); }
                finally
                {
                    lock (_aloneLock)
                    {
                        st.InFlight = false;
                        if (a is { Result: WitnessResult.Ok, Alone: true } ok && ok.Term == t.Term && ok.Owner == Config.LocalNode)
                        {
                            st.Recorded = true;
                            st.Term = t.Term;
                            st.Generation = ok.AloneGeneration;
                            (st.MustRecord, st.MustTerm) = (true, t.Term);
                        }
                    }
                }
                if (a is { Result: WitnessResult.Ok, Alone: true })
                    _log.LogWarning("{Nqn}: ANA group {Group}: the witness recorded that this node serves it alone (term {Term}): writes the partner's replica lacks complete from now on",
                        s.Nqn, group, t.Term);
                else
                    _log.LogWarning("{Nqn}: ANA group {Group}: the witness did not record this node alone ({Answer}): writes the partner's replica lacks wait",
                        s.Nqn, group, a == null ? "no answer" : $"{a.Value.Result}: {a.Value.Owner} at term {a.Value.Term} {a.Value.Reason}".TrimEnd());
            }))
        {
            lock (_aloneLock) st.InFlight = false;
        }
        return false;
    }

    /// <summary>
    /// The witness's work on the control thread, every heartbeat interval (the fence has a thread of its own): the alone
    /// records of the groups this node owns are kept true (<see cref="WitnessAlone"/>); a group it owned when it stopped
    /// is confirmed by the witness when the partner is not heard; a group the partner owns is taken over when the partner
    /// is silent on both channels and the replicas here were whole when it was last heard (the witness decides).
    /// </summary>
    private void WitnessTick(long now)
    {
        if (Witness == null) return;
        ReleaseGrantHolds(now);
        foreach (InterconnectLink link in _links)
        {
            Subsystem s = link.Subsystem;
            var owned = new List<(uint Group, ulong Term)>();
            var partners = new List<uint>();
            var unconfirmed = new List<uint>();
            lock (_ownershipLock)
                foreach (((string nqn, uint g), GroupOwnership o) in _ownership)
                {
                    if (nqn != s.Nqn) continue;
                    if (o.MayServe) owned.Add((g, o.Current.Term));
                    else if (!o.OwnedHere && o.Conflict == null) partners.Add(g);
                    else if (o.OwnedHere && !o.Confirmed && o.Conflict == null) unconfirmed.Add(g);
                }
            // A group this node owned when it stopped, its partner not heard since this node started (a heartbeat timeout
            // and more): the witness says whether the partner took it over meanwhile, and records this node alone if not.
            if (!link.IsUp && !Membership.PartnerHeard && now - _witnessStarted > (long)(Config.HeartbeatTimeout.TotalSeconds * Stopwatch.Frequency))
                foreach (uint g in unconfirmed) ConfirmByWitness(s, g);
            foreach ((uint g, ulong term) in owned) WitnessAlone(s, g, term);
            if (Membership.Status == PartnerStatus.PartnerDown)
                foreach (uint g in partners) StartAutoTakeover(s, g);
        }
    }

    /// <summary>
    /// Asks the witness, on its worker, to record this node alone on a group it owned when it stopped and has not heard
    /// its partner about: granted, the group is served (the partner could have taken it over only through the witness);
    /// told a newer term, that is learned; with no answer the group stays held, said once.
    /// </summary>
    private void ConfirmByWitness(Subsystem s, uint group)
    {
        if (!_confirming.Add((s.Nqn, group))) return;
        GroupTerm? kept = TermOf(s, group);
        if (kept is not GroupTerm t) return;
        WitnessClient w = Witness!;
        if (_witnessWork!.Run(() =>
            {
                WitnessAnswer? a = null;
                try { a = w.Ask(WitnessVerb.Alone, s.Nqn, group, t.Term, 0, Config.HeartbeatTimeout); }
                finally { Enqueue(() => Confirmed(s, group, t, a)); }
            }))
            return;
        _confirming.Remove((s.Nqn, group));
    }

    private void Confirmed(Subsystem s, uint group, GroupTerm kept, WitnessAnswer? a)
    {
        _confirming.Remove((s.Nqn, group));
        lock (_ownershipLock)
        {
            if (!_ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o) || o.Confirmed) return;
            if (a is { Result: WitnessResult.Ok, Alone: true } ok && o.ConfirmByWitness(new GroupTerm(ok.Term, ok.Owner)))
            {
                lock (_aloneLock)
                {
                    if (!_alone.TryGetValue((s.Nqn, group), out AloneState? st)) _alone[(s.Nqn, group)] = st = new AloneState();
                    (st.Recorded, st.Term, st.Generation, st.MustRecord, st.MustTerm) = (true, ok.Term, ok.AloneGeneration, true, ok.Term);
                }
                _log.LogWarning("{Nqn}: ANA group {Group}: {Partner} not heard since this node started; the witness says this node owns it ({Term}) and recorded it alone: served",
                    s.Nqn, group, Config.Partner, kept);
                ActOn(s, o, owned: true);
                return;
            }
            // A newer term naming the partner is learned from the answer (OnWitnessAnswer); anything else leaves it held.
            if (_unconfirmedSaid.Add((s.Nqn, group)))
                _log.LogError("{Nqn}: ANA group {Group}: held inaccessible: this node owned it ({Term}) when it stopped, and has heard neither {Partner} nor the witness ({Answer}) since it started: either may know that {Partner} took it over",
                    s.Nqn, group, kept, Config.Partner, a == null ? "no answer" : $"{a.Value.Result}: {a.Value.Owner} at term {a.Value.Term} {a.Value.Reason}".TrimEnd(), Config.Partner);
        }
    }

    private void Fence(Subsystem s, InterconnectLink link, uint group, bool fence)
    {
        var key = (s.Nqn, group);
        if (fence)
        {
            bool first = _fenced.TryAdd(key, true);
            if (first) s.HoldGroup(group, SelfFenceHold);
            // Writes held for the replica fail (the hosts retry them on the partner, which may take the group over).
            int failed = 0;
            foreach (Namespace ns in s.Namespaces)
                if (ns.AnaGroupId == group && ns.Mirror is NamespaceMirror m) failed += m.FailHeld(NvmeStatus.Path(PathStatus.AnaInaccessible));
            if (first)
                _log.LogError("{Nqn}: ANA group {Group}: fenced: this node hears neither {Partner} (interconnect down) nor the witness at {Witness} (no lease): it serves nothing of the group until one comes back, before the witness may grant it to {Partner}{Failed}",
                    s.Nqn, group, Config.Partner, Witness!.Endpoint, Config.Partner, failed > 0 ? $"; {failed} held write(s) failed" : "");
        }
        else if (_fenced.TryRemove(key, out _))
        {
            s.ReleaseGroup(group, SelfFenceHold);
            _log.LogWarning("{Nqn}: ANA group {Group}: fence lifted ({Why})", s.Nqn, group, link.IsUp ? "the partner answers on the interconnect" : "the witness renewed the lease");
        }
    }

    /// <summary>
    /// The alone record of a group this node owns, kept true at the witness (control thread): said again when the witness
    /// no longer has it (a witness started again without its records), cleared once every replica of the group is in
    /// sync and the partner acknowledged it.
    /// </summary>
    private void WitnessAlone(Subsystem s, uint group, ulong term)
    {
        AloneState st;
        ulong generation;
        bool again;
        lock (_aloneLock)
        {
            if (!_alone.TryGetValue((s.Nqn, group), out st!)) _alone[(s.Nqn, group)] = st = new AloneState();
            if (st.InFlight) return;
            again = st.MustRecord && st.MustTerm == term && !(_witnessSaysAlone.TryGetValue((s.Nqn, group), out var has) && has.Term == term);
        }
        if (again && !InSync(s, group))
        {
            // Said again every heartbeat interval until the witness has it (a refusal or no answer leaves MustRecord).
            lock (_aloneLock)
            {
                if (st.Recorded)
                    _log.LogWarning("{Nqn}: ANA group {Group}: the witness no longer records this node alone (term {Term}): said again", s.Nqn, group, term);
                st.Recorded = false;
            }
            EnsureAlone(s, group);
            return;
        }
        lock (_aloneLock)
        {
            if (st.InFlight) return;
            if (st.Recorded && st.Term == term) generation = st.Generation;
            else if (_witnessSaysAlone.TryGetValue((s.Nqn, group), out var says) && says.Term == term) generation = says.Generation;
            else return;
            if (!InSync(s, group)) return;
            // Not alone from now on, before the word goes: a write that misses the replica from now on asks again.
            st.Recorded = false;
            st.InFlight = true;
        }
        WitnessClient w = Witness!;
        if (!_witnessWork!.Run(() =>
            {
                WitnessAnswer? a = null;
                try { a = w.Ask(WitnessVerb.Synced, s.Nqn, group, term, generation, Config.HeartbeatTimeout); }
                finally
                {
                    lock (_aloneLock)
                    {
                        st.InFlight = false;
                        if (a is { Alone: false }) _witnessSaysAlone.Remove((s.Nqn, group));
                        // Cleared: the replicas were in sync, and the partner knew, when the synced went.
                        if (a is { Result: WitnessResult.Ok, Alone: false }) st.MustRecord = false;
                    }
                }
                if (a is { Result: WitnessResult.Ok, Alone: false })
                    _log.LogInformation("{Nqn}: ANA group {Group}: the witness no longer records this node alone: its partner's replicas are whole (term {Term})", s.Nqn, group, term);
            }))
        {
            lock (_aloneLock) st.InFlight = false;
        }
    }

    // Groups taken over while the partner answered, held until it has fenced itself: when (Stopwatch ticks) each is released.
    private readonly Dictionary<(string Nqn, uint Group), long> _heldAfterGrant = [];
    internal object GrantHold { get; } = new();

    /// <summary>
    /// How long after the partner last heard this node a group granted meanwhile is held (<see cref="HoldAfterGrant"/>):
    /// a heartbeat timeout and two intervals, by when the partner, which holds no lease and whose heartbeats this node no
    /// longer answers, has fenced itself: it counts its heartbeat timeout from when it sent the request this node last
    /// answered (no later than its arrival here, which this node counts from), and checks every half interval; the rest
    /// is slack for its fence thread's scheduling.
    /// </summary>
    private TimeSpan GrantHoldLength => Config.HeartbeatTimeout + 2 * Config.HeartbeatInterval;

    /// <summary>
    /// Holds a group this node was granted while its partner may still hear it (under the ownership lock, before the
    /// group is served here) until <paramref name="untilTicks"/> (<see cref="ReleaseGrantHolds"/>): <see cref="GrantHoldLength"/>
    /// after the partner last heard this node.
    /// </summary>
    private void HoldAfterGrant(Subsystem s, uint group, long untilTicks)
    {
        s.HoldGroup(group, GrantHold);
        _heldAfterGrant[(s.Nqn, group)] = untilTicks;
        OnGrantHold?.Invoke(s, group, untilTicks);
        long ms = (untilTicks - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency;
        _log.LogWarning("{Nqn}: ANA group {Group}: granted while {Partner} may still hear this node (it reconnected while the witness was asked, or its heartbeats "
            + "arrived within {Hold} ms): the group is held here for {Ms} ms from now, by when {Partner2} has fenced itself, and served only then; its "
            + "associations are closed as this node takes the group over, so that it learns the new term",
            s.Nqn, group, Config.Partner, GrantHoldLength.TotalMilliseconds, ms, Config.Partner);
    }

    /// <summary>For tests: called (under the ownership lock) as a group granted is held, with until when (Stopwatch ticks).</summary>
    internal Action<Subsystem, uint, long>? OnGrantHold;

    /// <summary>A takeover that held the group for its grant failed before it changed anything (under the ownership lock): the hold goes.</summary>
    private void UndoHoldAfterGrant(Subsystem s, uint group)
    {
        _heldAfterGrant.Remove((s.Nqn, group));
        s.ReleaseGroup(group, GrantHold);
        _log.LogWarning("{Nqn}: ANA group {Group}: the takeover failed: the hold placed for its grant is released", s.Nqn, group);
    }

    private void ReleaseGrantHolds(long now)
    {
        lock (_ownershipLock)
            foreach (((string nqn, uint g), long until) in _heldAfterGrant.ToList())
            {
                if (now < until || SubsystemOf(nqn) is not Subsystem s) continue;
                _heldAfterGrant.Remove((nqn, g));
                s.ReleaseGroup(g, GrantHold);
            }
    }

    /// <summary>Whether every namespace of the group is this node's, mirrored, and in sync as its partner knows (at least one).</summary>
    private static bool InSync(Subsystem s, uint group)
    {
        bool any = false;
        foreach (Namespace ns in s.Namespaces)
        {
            if (ns.AnaGroupId != group) continue;
            if (ns.IsRemote || ns.Mirror is not NamespaceMirror { PartnerKnowsInSync: true }) return false;
            any = true;
        }
        return any;
    }

    /// <summary>Starts an automatic takeover of a group the partner owns, on the witness's worker; one at a time per group.</summary>
    private void StartAutoTakeover(Subsystem s, uint group)
    {
        lock (_ownershipLock)
            if (!_autoTakeovers.Add((s.Nqn, group))) return;
        if (_witnessWork!.Run(() => AutoTakeover(s, group))) return;
        lock (_ownershipLock) _autoTakeovers.Remove((s.Nqn, group));
    }

    private void AutoTakeover(Subsystem s, uint group)
    {
        try
        {
            // Tried again every interval here, on the witness's worker, while the partner stays silent (bounded: then the
            // next control tick starts it again): the control thread, which would start the next try, can be held for a
            // connect timeout by an attempt to reach a partner whose machine lost power (no reset), and the first tries
            // are refused while the partner's lease runs at the witness.
            var trying = Stopwatch.StartNew();
            TimeSpan bound = 2 * Config.HeartbeatTimeout + 10 * Config.HeartbeatInterval;
            while (true)
            {
                try
                {
                    TakeOver(s, group, force: false, automatic: true);
                    return;
                }
                catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException)
                {
                    SayNoTakeoverYet(s, group, e);
                    if (trying.Elapsed >= bound) return;
                }
                Thread.Sleep(Config.HeartbeatInterval);
                // Not again once the node stops, the partner is heard, or the group is this node's (an operator's
                // takeover, say).
                if (_fenceStop || Membership.Status != PartnerStatus.PartnerDown || Membership.PartnerHeard) return;
                lock (_ownershipLock)
                    if (!_ownership.TryGetValue((s.Nqn, group), out GroupOwnership? o) || o.OwnedHere) return;
            }
        }
        finally
        {
            lock (_ownershipLock) _autoTakeovers.Remove((s.Nqn, group));
        }
    }

    /// <summary>Why an automatic takeover was not made: tried every heartbeat interval while the partner is silent, said at most every ten seconds.</summary>
    private void SayNoTakeoverYet(Subsystem s, uint group, Exception e)
    {
        long now = Stopwatch.GetTimestamp();
        bool say;
        lock (_ownershipLock)
        {
            say = !_autoTakeoverSaid.TryGetValue((s.Nqn, group), out long said) || now - said > 10 * Stopwatch.Frequency;
            if (say) _autoTakeoverSaid[(s.Nqn, group)] = now;
        }
        if (say)
            _log.LogWarning("{Nqn}: ANA group {Group}: {Partner} is silent on both channels, and this node does not take the group over yet: {Reason}", s.Nqn, group, Config.Partner, e.Message);
    }

    private readonly Dictionary<(string Nqn, uint Group), long> _autoTakeoverSaid = [];
}

/// <summary>A group's witness state as <c>cluster_get_status</c> shows it: the lease left on this node (ms), fenced, alone recorded.</summary>
public sealed record WitnessGroupStatus(long LeaseMs, bool Fenced, bool Alone);
