using StorageNode.Pair;
using StorageNode.Target;
using StorageNode.Witness;

namespace StorageNode.Model.Tests.Model;

/// <summary>What a node keeps across a crash: its blocks (a file: the namespace, or the replica), its replica's record, its term.</summary>
public sealed class Disk
{
    public int[] Store { get; } = new int[P.Blocks];
    public ReplicaHolds Holds { get; set; }
    public GroupTerm? Term { get; set; }
    /// <summary>The blocks are a replica of the partner's namespace (a keeper's), not this node's namespace.</summary>
    public bool IsReplica { get; set; }
}

/// <summary>
/// One node of the pair for one ANA group with one namespace (docs/ha.md): the owner's mirror (in sync, resyncing, leaving,
/// out of sync; words, copies, held writes, the keeper's lease and its margin), the keeper's side (the real
/// <see cref="ReplicaKnowledge"/>), terms (the real <see cref="GroupOwnership"/>), the clock estimate (the real
/// <see cref="PairClock"/>), membership (interconnect heartbeats, datagrams), the witness client (leases from the send
/// time less the margin, alone and synced records, the self-fence, confirmation after a restart) and the automatic
/// takeover with the witness's grant. Its clock is the one the world gives it; it has no sockets and no threads: the
/// world delivers its messages and wakes it at the times it asks (the control thread every heartbeat interval, the
/// fence thread every half interval).
/// </summary>
public sealed class NodeModel
{
    private const int OutOfSync = 0, Resyncing = 1, InSync = 2, Leaving = 3;
    private const uint Group = 1;

    private readonly Sim _sim;
    public int Me { get; }
    public int Partner => 1 - Me;
    public string Name => Ep.Name(Me);
    private string PartnerName => Ep.Name(Partner);
    public Disk Disk { get; } = new();
    public bool Up { get; private set; }

    // What a crash loses.
    public long Incarnation { get; private set; }
    public GroupOwnership Own { get; private set; } = null!;
    public PairClock Clock { get; private set; } = null!;
    public ReplicaKnowledge Knowledge { get; private set; } = null!;
    public long StartConnFloor { get; private set; }
    private long _witnessStarted;

    // The interconnect (one association at a time) and the heartbeat channel.
    public long Conn { get; private set; }
    private readonly HashSet<long> _closed = [];
    private long _connecting, _connectAsked, _nextConnect;
    private long _lastAnswer;
    public long LastHeartbeatAnsweredSent { get; private set; }
    private (long Id, long Sent)? _heartbeat;
    private long _lastHeard, _partnerIncarnation;
    private enum Status { Unknown, Healthy, InterconnectDown, PartnerDown }
    private Status _status;
    private long _nextInterval, _nextFence;

    // The owner's mirror (NamespaceMirror).
    private int _m;
    private bool _mayTrust, _trustAcked, _resyncRunning;
    private uint _epoch, _sequence, _trustSequence;
    private long _leaseSent;
    private (long Id, ReplicaWord Word, uint Epoch, uint Sequence)? _word;
    private int _resyncNext;
    private readonly Dictionary<long, Write?> _copies = [];
    private readonly List<Write> _held = [];

    // The witness client and the pair's witness side.
    private (ulong Term, long Until) _lease;
    private sealed class Ask(WitnessVerb verb, ulong term, ulong arg, long deadline, Action<WitnessAnswer?> done)
    {
        public WitnessVerb Verb { get; } = verb;
        public ulong Term { get; } = term;
        public ulong Arg { get; } = arg;
        public long Deadline { get; } = deadline;
        public Action<WitnessAnswer?> Done { get; } = done;
        public long NextSend { get; set; }
        public bool Finished { get; set; }
        public List<ulong> Ids { get; } = [];
    }
    private readonly Dictionary<ulong, (WitnessRequest Request, long Sent, Ask? Ask)> _pending = [];
    private readonly List<Ask> _asks = [];
    private bool _aloneRecorded, _aloneInFlight, _mustRecord;
    private ulong _aloneTerm, _aloneGeneration, _mustTerm;
    private (ulong Term, ulong Generation)? _witnessSaysAlone;
    public bool Fenced { get; private set; }
    private bool _confirming, _takeover;
    private long _takeStart, _takeRetryAt, _grantHoldUntil;
    private GroupTerm _asked;
    // PairNode.TakeOver: the knowledge frozen while the witness is asked (ReplicaKnowledge.BeginTake; null: none), and the
    // partner's last sign of life as counted before asking, which a grant is checked against.
    private ReplicaKnowledge? _frozen;
    private long _askedLastAlive;
    private bool _asking;
    private bool _wasServing;

    private sealed record Write(long Op, int Block, int Version);

    public NodeModel(Sim sim, int me)
    {
        _sim = sim;
        Me = me;
    }

    private long Now => _sim.Local(Me);
    private SeededBug Bug => _sim.Bug;
    private static long Interval => P.Interval;
    private static long Timeout => P.Timeout;
    private void Log(string s) => _sim.Trace($"{Name}: {s}");

    /// <summary>A (re)start: new incarnation, RAM empty; the disk's term, blocks and replica record as they were.</summary>
    public void Start()
    {
        Up = true;
        Incarnation = _sim.NewIncarnation();
        Own = new GroupOwnership(Group, Name, "A", Disk.Term, mayChange: true);
        Clock = new PairClock();
        Knowledge = new ReplicaKnowledge();
        Knowledge.Restore(Disk.Holds);
        StartConnFloor = _sim.ConnCounter;
        long now = Now;
        _witnessStarted = now;
        Conn = 0;
        _closed.Clear();
        _connecting = 0;
        _nextConnect = now;
        _lastAnswer = 0;
        LastHeartbeatAnsweredSent = 0;
        _heartbeat = null;
        _lastHeard = 0;
        _partnerIncarnation = 0;
        _status = Status.Unknown;
        _nextInterval = now + Interval / 10;
        _nextFence = now + Interval / 2;
        ResetMirror();
        _lease = default;
        _pending.Clear();
        _asks.Clear();
        _aloneRecorded = _aloneInFlight = _mustRecord = false;
        _aloneTerm = _aloneGeneration = _mustTerm = 0;
        _witnessSaysAlone = null;
        Fenced = false;
        _confirming = _takeover = false;
        _frozen = null;
        _askedLastAlive = 0;
        _asking = false;
        _grantHoldUntil = 0;
        _takeRetryAt = 0;
        _wasServing = false;
        Log($"started (incarnation {Incarnation}, term {Own.Current}, blocks [{string.Join(",", Disk.Store)}])");
    }

    public void Crash()
    {
        Up = false;
        Log("crashed");
    }

    private void ResetMirror()
    {
        _m = OutOfSync;
        _mayTrust = _trustAcked = _resyncRunning = false;
        _epoch = _sequence = _trustSequence = 0;
        _leaseSent = 0;
        _word = null;
        _resyncNext = 0;
        _copies.Clear();
        _held.Clear();
    }

    /// <summary>Whether a host's I/O to the group is served here now (optimized, not held).</summary>
    public bool Serving => Up && Own.MayServe && !Disk.IsReplica && !Fenced && (_grantHoldUntil == 0 || Now >= _grantHoldUntil);

    /// <summary>The next time (this node's clock) it wants to be woken.</summary>
    public long NextWake => Math.Min(_nextInterval, _nextFence);

    /// <summary>After each step: a node that starts to serve must hold every acknowledged write.</summary>
    public void AfterStep()
    {
        bool serving = Serving;
        if (serving && !_wasServing)
        {
            Log($"serves the group at {Own.Current}");
            NodeModel other = _sim.Nodes[Partner];
            if (other.Up && other.Serving)
                _sim.Check(new BothServe(Me, Own.Current.Term, other.Own.Current.Term, _sim.Now));
            _sim.Check(new Blocks(Me, "serves", [.. Disk.Store], _sim.Now, $"term {Own.Current}"));
        }
        _wasServing = serving;
    }

    // ---- Timers ----

    public void Wake()
    {
        long now = Now;
        if (now >= _nextFence)
        {
            _nextFence = now + Interval / 2;
            FenceCheck(now);
        }
        if (now >= _nextInterval)
        {
            _nextInterval = now + Interval;
            ControlTick(now);
        }
    }

    private void ControlTick(long now)
    {
        bool heard = _lastHeard != 0 && now - _lastHeard < Timeout;
        _status = Conn != 0 ? Status.Healthy : heard ? Status.InterconnectDown : _status == Status.Unknown ? Status.Unknown : Status.PartnerDown;
        if (Conn != 0)
        {
            if (_heartbeat is { } hb && now - hb.Sent > Timeout) LinkDown("the interconnect heartbeat was not answered within the timeout", sendReset: true);
            else if (_heartbeat == null) SendHeartbeat(now);
        }
        else if (now >= _nextConnect)
        {
            _nextConnect = now + P.Ms(P.ReconnectMs) * (_status == Status.PartnerDown ? 10 : 1);
            _connecting = _sim.NewConn();
            _connectAsked = now;
            _sim.Send(Me, Partner, Channel.Interconnect, _connecting, new Connect(Incarnation, Own.Current));
        }
        MirrorTick(now);
        WitnessTick(now);
        _sim.Send(Me, Partner, Channel.Datagram, 0, new Datagram(Incarnation));
        // The witness client's renewer and its asks (each ask again every interval, as a new request, until its deadline).
        if (Own.MayServe && _sim.WithWitness) SendToWitness(WitnessVerb.Renew, Own.Current.Term, 0, null, now);
        foreach (Ask a in _asks.ToList())
        {
            if (a.Finished) continue;
            if (now >= a.Deadline) Finish(a, null);
            else if (now >= a.NextSend) Resend(a, now);
        }
        _asks.RemoveAll(a => a.Finished);
        if (_takeover && _takeRetryAt != 0 && now >= _takeRetryAt)
        {
            _takeRetryAt = 0;
            AskTake(now);
        }
    }

    /// <summary>
    /// The self-fence (its own thread, every half interval): a group this node serves is fenced while it holds no witness
    /// lease and its partner answered none of its interconnect heartbeats sent in the last heartbeat timeout.
    /// </summary>
    private void FenceCheck(long now)
    {
        if (!_sim.WithWitness) return;
        if (Own.MayServe)
        {
            long late = Bug == SeededBug.FenceOneIntervalLate ? Interval : 0;
            bool fence = Bug != SeededBug.NeverFence && !LeaseHeld(now) && now - LastHeartbeatAnsweredSent > Timeout + late;
            if (fence)
            {
                if (!Fenced) Log("fenced: no lease, no heartbeat answered within the timeout");
                Fenced = true;
                FailHeld("fenced");
            }
            else if (Fenced)
            {
                Fenced = false;
                Log("fence lifted");
            }
        }
        else if (Fenced)
        {
            Fenced = false;
        }
    }

    private bool LeaseHeld(long now) => _lease.Term == Own.Current.Term && now < _lease.Until;

    // ---- The interconnect ----

    private void SendHeartbeat(long now)
    {
        long sent = now;
        uint renew = 0;
        OwnerDeadline until = default;
        if (Own.OwnedHere && Clock.TryToPartner(sent + Timeout, out until))
        {
            // NamespaceMirror.RenewLease: only an in-sync replica the partner may trust; noted as sent now.
            if (_m == InSync && _mayTrust)
            {
                _leaseSent = sent;
                renew = _trustSequence;
            }
        }
        long id = _sim.NewId();
        _heartbeat = (id, sent);
        _sim.Send(Me, Partner, Channel.Interconnect, Conn, new HeartbeatReq(id, Clock.Wire(now), renew, until));
    }

    private void LinkDown(string why, bool sendReset)
    {
        if (Conn == 0) return;
        long c = Conn;
        Conn = 0;
        _closed.Add(c);
        if (sendReset) _sim.Send(Me, Partner, Channel.Interconnect, c, new Reset());
        _heartbeat = null;
        _word = null;
        _nextConnect = Now + P.Ms(P.ReconnectMs);
        Log($"interconnect c{c} down: {why}");
        if (!Own.OwnedHere) return;
        // The replica falls out of sync; the copies under way fail (held while leaving).
        Lost("the interconnect went down");
        foreach ((long id, Write? w) in _copies.ToList())
        {
            _copies.Remove(id);
            if (w == null) ResyncEnded(completed: false);
            else CopyFailed(w);
        }
    }

    /// <summary>A message for this node.</summary>
    public void Deliver(Msg m)
    {
        if (m.Channel == Channel.Interconnect)
        {
            if (_closed.Contains(m.Conn)) return;
            if (m.Conn <= StartConnFloor)
            {
                // An association from before this node started: gone (its peer hears a reset).
                if (m.Body is not Reset) _sim.Send(Me, Partner, Channel.Interconnect, m.Conn, new Reset());
                return;
            }
        }
        switch (m.Body)
        {
            case Connect c: OnConnect(m.Conn, c); break;
            case ConnectOk ok: OnConnectOk(m.Conn, ok); break;
            case Reset:
                _closed.Add(m.Conn);
                if (m.Conn == Conn) LinkDown("the partner closed the association", sendReset: false);
                break;
            case HeartbeatReq h: OnHeartbeat(m.Conn, h); break;
            case HeartbeatAns a: OnHeartbeatAnswer(m.Conn, a); break;
            case WordReq w: OnWord(m.Conn, w); break;
            case WordAns a: OnWordAnswer(m.Conn, a); break;
            case CopyReq c: OnCopy(m.Conn, c); break;
            case CopyAns a: OnCopyAnswer(a); break;
            case Datagram d:
                _lastHeard = Now;
                NoteIncarnation(d.Incarnation);
                break;
            case FromWitness f: OnWitnessAnswer(f.Answer); break;
            case HostWrite w: OnHostWrite(w); break;
            case HostRead r: OnHostRead(r); break;
        }
    }

    /// <summary>
    /// PairNode.AskingToTakeOver: this node asks the witness for the group; the partner's new interconnect associations get
    /// no descriptor meanwhile (InterconnectService, GetDescriptor: they connect again).
    /// </summary>
    public bool AskingToTakeOver => Up && _asking;

    private void OnConnect(long c, Connect req)
    {
        if (c <= Conn) return;
        // The one association stands for both of the pair's: none comes up while either node asks the witness — the
        // asking node refuses its descriptor to the partner's association into it, which the partner needs (it learns the
        // term from it, and its heartbeats, answered on it, lift its fence). The partner is refused and connects again.
        if (AskingToTakeOver || _sim.Nodes[Partner].AskingToTakeOver)
        {
            Log($"interconnect c{c} refused: {(AskingToTakeOver ? Name : PartnerName)} asks the witness for the group (no descriptor)");
            _sim.Send(Me, Partner, Channel.Interconnect, c, new Reset());
            return;
        }
        if (Conn != 0) LinkDown("the partner connected again", sendReset: false);
        Conn = c;
        _connecting = 0;
        _lastAnswer = Now;
        LastHeartbeatAnsweredSent = Now;
        Log($"interconnect c{c} up (the partner connected; it says {req.Term})");
        NoteIncarnation(req.Incarnation);
        _sim.Send(Me, Partner, Channel.Interconnect, c, new ConnectOk(Incarnation, Own.Current));
        Learn(req.Term);
    }

    private void OnConnectOk(long c, ConnectOk ok)
    {
        if (c != _connecting || c <= Conn) return;
        if (Conn != 0) LinkDown("connected again", sendReset: false);
        Conn = c;
        _connecting = 0;
        _lastAnswer = Now;
        LastHeartbeatAnsweredSent = _connectAsked;
        Log($"interconnect c{c} up (it says {ok.Term})");
        NoteIncarnation(ok.Incarnation);
        Learn(ok.Term);
    }

    /// <summary>The partner said who it is (datagram or descriptor): a new incarnation resets what the keeper knew of it.</summary>
    private void NoteIncarnation(long incarnation)
    {
        long old = _partnerIncarnation;
        _partnerIncarnation = incarnation;
        if (old == 0 || old == incarnation) return;
        Log($"partner restarted (incarnation {old} -> {incarnation})");
        Clock.ResetPartner();
        if (Bug != SeededBug.KeeperTakesOtherIncarnation) Knowledge.Reset(incarnation);
    }

    /// <summary>The partner's view of the group (its descriptor).</summary>
    private void Learn(GroupTerm partner)
    {
        bool wasOwner = Own.OwnedHere;
        OwnershipLearned r = Own.Learn(partner);
        if (r == OwnershipLearned.Adopted) Adopt(wasOwner, "the partner's descriptor");
        else if (r == OwnershipLearned.Conflict) Log($"conflict: {Own.Conflict}");
    }

    private void Adopt(bool wasOwner, string from)
    {
        Disk.Term = Own.Current;
        Log($"learned {Own.Current} from {from}");
        if (wasOwner && !Own.OwnedHere) BecomeKeeper();
        // PairNode.ActOn: owned here by a term this node did not make, its namespace still the partner's replica: held.
        if (Own.OwnedHere && Disk.IsReplica) Log($"owns the group at {Own.Current} by the partner's word, but holds only a replica: held (LostReplicaHold)");
    }

    /// <summary>The partner took the group over: this node's data is its replica now, its mirror retired.</summary>
    private void BecomeKeeper()
    {
        foreach (Write w in _copies.Values.OfType<Write>()) Fail(w, "the partner owns the group now");
        FailHeld("the partner owns the group now");
        ResetMirror();
        Knowledge = new ReplicaKnowledge();
        Knowledge.Restore(new ReplicaHolds(P.Generation, true, 0, false));
        if (_partnerIncarnation != 0 && Bug != SeededBug.KeeperTakesOtherIncarnation) Knowledge.Reset(_partnerIncarnation);
        Disk.Holds = Knowledge.Kept;
        Disk.IsReplica = true;
        Fenced = false;
        _aloneRecorded = _mustRecord = false;
        Log("is the keeper now: its data is the replica");
    }

    private void OnHeartbeat(long c, HeartbeatReq h)
    {
        long now = Now;
        if (h.RenewSequence != 0 && !Own.OwnedHere)
        {
            long until = Clock.OwnDeadlineTicks(h.Until, now);
            if (until - now > 120 * P.F) until = 0;
            Knowledge.Renew(_sim.Assoc(c), h.RenewSequence, until);
            CheckWhole("a renewal");
        }
        _sim.Send(Me, Partner, Channel.Interconnect, c, new HeartbeatAns(h.Id, Clock.Wire(now)));
    }

    private void OnHeartbeatAnswer(long c, HeartbeatAns a)
    {
        if (c != Conn || _heartbeat is not { } hb || hb.Id != a.Id) return;
        long now = Now;
        Clock.Sample(Clock.Wire(hb.Sent), a.PartnerWire, Clock.Wire(now));
        LastHeartbeatAnsweredSent = hb.Sent;
        _lastAnswer = now;
        _heartbeat = null;
    }

    /// <summary>The keeper: whenever it calls its replica whole, the replica must hold every acknowledged write.</summary>
    public void CheckWhole(string after)
    {
        if (!Up || Own.OwnedHere || !Knowledge.IsWhole(Now)) return;
        _sim.Check(new Blocks(Me, "whole", [.. Disk.Store], _sim.Now,
            $"after {after}: the owner's word {Knowledge.Word} #{Knowledge.Sequence} of incarnation {Knowledge.OwnerIncarnation}, lease until {(Knowledge.WholeUntilTicks - Now) / P.Ms(1)} ms from now"));
    }

    private void OnWord(long c, WordReq w)
    {
        ReplicaAnswer answer;
        if (Own.OwnedHere) answer = ReplicaAnswer.Stale;
        else
        {
            long known = Bug == SeededBug.KeeperTakesOtherIncarnation ? 0 : _partnerIncarnation;
            answer = Knowledge.Offer(_sim.Assoc(c), w.Incarnation, w.Word, w.Epoch, w.Sequence, known, w.Generation, overwrite: false);
            if (answer == ReplicaAnswer.Applied) Disk.Holds = Knowledge.Kept;
            // InterconnectService: NotNow (this node asks the witness for the group) fails the word; the owner's answer
            // handler takes it as not applied, as any answer but Applied, and says the word again at its next tick.
            else if (answer == ReplicaAnswer.NotNow) Log($"not now: the word {w.Word} #{w.Sequence} waits for the end of the ask");
            CheckWhole($"the word {w.Word} #{w.Sequence}");
        }
        _sim.Send(Me, Partner, Channel.Interconnect, c, new WordAns(w.Id, answer));
    }

    private void OnCopy(long c, CopyReq r)
    {
        bool ok = !Own.OwnedHere && Knowledge.AcceptsCopy(_sim.Assoc(c), r.Epoch);
        if (ok) Disk.Store[r.Block] = r.Version;
        _sim.Send(Me, Partner, Channel.Interconnect, c, new CopyAns(r.Id, ok));
    }

    // ---- The owner's mirror ----

    private void MirrorTick(long now)
    {
        // A node that owns the group but holds only a replica has no mirror (its namespace is the partner's, relayed).
        if (!Own.OwnedHere || Disk.IsReplica) return;
        if (_m == Leaving)
        {
            long lease = Timeout;
            if (now - _leaseSent > lease + Support.LeaseMargin.Ticks(lease) && EnsureAlone())
                PartnerNoLongerTrusts("the partner's lease expired");
            else TellPartnerOutOfSync();
            return;
        }
        if (Conn == 0) return;
        if (_m == InSync)
        {
            if (_mayTrust && !_trustAcked) SayInSync();
            return;
        }
        if (_m == OutOfSync && Own.MayServe) StartResync();
    }

    private bool SendWord(ReplicaWord word, uint epoch, uint sequence)
    {
        long id = _sim.NewId();
        _word = (id, word, epoch, sequence);
        _sim.Send(Me, Partner, Channel.Interconnect, Conn, new WordReq(id, Incarnation, word, epoch, sequence, P.Generation));
        return true;
    }

    private bool CanSendWord => Conn != 0 && _word == null;

    private void TellPartnerOutOfSync()
    {
        if (!CanSendWord || _m != Leaving) return;
        SendWord(ReplicaWord.OutOfSync, _epoch, ++_sequence);
    }

    private void SayInSync()
    {
        if (!CanSendWord || _m != InSync || !_mayTrust) return;
        _trustSequence = ++_sequence;
        _trustAcked = false;
        SendWord(ReplicaWord.InSync, _epoch, _trustSequence);
    }

    private void StartResync()
    {
        if (_resyncRunning || !CanSendWord || _m != OutOfSync) return;
        SendWord(ReplicaWord.Resyncing, _epoch + 1, ++_sequence);
    }

    private void OnWordAnswer(long c, WordAns a)
    {
        if (c != Conn || _word is not { } w || w.Id != a.Id) return;
        _word = null;
        if (a.Answer != ReplicaAnswer.Applied || !Own.OwnedHere) return;
        switch (w.Word)
        {
            case ReplicaWord.OutOfSync:
                // An answer to a word older than the trust now given ends nothing.
                if (w.Sequence > _trustSequence) PartnerNoLongerTrusts("the partner acknowledged");
                break;
            case ReplicaWord.InSync:
                if (_trustSequence == w.Sequence) _trustAcked = true;
                break;
            case ReplicaWord.Resyncing:
                if (_m != OutOfSync || _resyncRunning) return;
                _epoch = w.Epoch;
                _m = Resyncing;
                _resyncRunning = true;
                _resyncNext = 0;
                Log($"resyncing (epoch {_epoch})");
                NextChunk();
                break;
        }
    }

    /// <summary>The resync copies every block (a whole resync), one chunk at a time, each read as it is sent.</summary>
    private void NextChunk()
    {
        if (_m != Resyncing)
        {
            ResyncEnded(completed: false);
            return;
        }
        if (_resyncNext >= P.Blocks)
        {
            ResyncEnded(completed: true);
            return;
        }
        if (Conn == 0)
        {
            Lost("the resync's copy could not be sent");
            ResyncEnded(completed: false);
            return;
        }
        long id = _sim.NewId();
        _copies[id] = null;
        _sim.Send(Me, Partner, Channel.Interconnect, Conn, new CopyReq(id, _epoch, _resyncNext, Disk.Store[_resyncNext]));
    }

    private void ResyncEnded(bool completed)
    {
        if (completed && _m == Resyncing)
        {
            _m = InSync;
            _mayTrust = true;
            _trustAcked = false;
            _leaseSent = 0;
            Log($"in sync (epoch {_epoch})");
            SayInSync();
        }
        _resyncRunning = false;
    }

    private void OnCopyAnswer(CopyAns a)
    {
        if (!_copies.Remove(a.Id, out Write? w)) return;
        if (w == null)
        {
            if (!a.Ok)
            {
                Lost("a resync copy failed");
                ResyncEnded(completed: false);
                return;
            }
            _resyncNext++;
            NextChunk();
            return;
        }
        if (a.Ok) Complete(w);
        else CopyFailed(w);
    }

    private void CopyFailed(Write w)
    {
        if (_m is InSync or Resyncing) Lost("a write's copy failed");
        if (_m == Leaving)
        {
            _held.Add(w);
            return;
        }
        Complete(w);
    }

    /// <summary>The replica misses (or may miss) a write: leaving when the partner may trust it, else out of sync.</summary>
    private void Lost(string why)
    {
        if (_m is OutOfSync or Leaving) return;
        bool leaving = _mayTrust;
        _m = leaving ? Leaving : OutOfSync;
        if (!leaving) _mayTrust = false;
        Log($"replica out of sync ({why}){(leaving ? ": leaving, writes held" : "")}");
        if (leaving) TellPartnerOutOfSync();
    }

    private void PartnerNoLongerTrusts(string how)
    {
        if (_m != Leaving) return;
        _m = OutOfSync;
        _mayTrust = false;
        Log($"the partner no longer trusts the replica ({how}): {_held.Count} held write(s) complete");
        List<Write> release = [.. _held];
        _held.Clear();
        foreach (Write w in release) Complete(w);
    }

    private void FailHeld(string why)
    {
        List<Write> release = [.. _held];
        _held.Clear();
        foreach (Write w in release) Fail(w, why);
    }

    // ---- Hosts ----

    private void OnHostWrite(HostWrite h)
    {
        if (!Serving)
        {
            _sim.Send(Me, Ep.Host, Channel.Host, 0, new HostReply(h.Op, false, 0, "ANA inaccessible"));
            return;
        }
        var w = new Write(h.Op, h.Block, h.Version);
        Disk.Store[h.Block] = h.Version;
        _sim.Check(new WriteAccepted(Me, Own.Current.Term, h.Block, h.Version, _sim.Now));
        if (_m is InSync or Resyncing)
        {
            if (Conn == 0)
            {
                CopyFailed(w);
                return;
            }
            long id = _sim.NewId();
            _copies[id] = w;
            _sim.Send(Me, Partner, Channel.Interconnect, Conn, new CopyReq(id, _epoch, h.Block, h.Version));
            return;
        }
        if (_m == Leaving)
        {
            _held.Add(w);
            return;
        }
        Complete(w);
    }

    private void OnHostRead(HostRead r)
    {
        if (!Serving)
        {
            _sim.Send(Me, Ep.Host, Channel.Host, 0, new HostReply(r.Op, false, 0, "ANA inaccessible"));
            return;
        }
        _sim.Check(new ReadServed(Me, r.Block, Disk.Store[r.Block], _sim.Now));
        _sim.Send(Me, Ep.Host, Channel.Host, 0, new HostReply(r.Op, true, Disk.Store[r.Block], ""));
    }

    private void Complete(Write w)
    {
        Log($"acknowledges block {w.Block} v{w.Version} (term {Own.Current.Term})");
        _sim.Check(new WriteAcked(Me, Own.Current.Term, w.Block, w.Version, _sim.Now));
        _sim.Send(Me, Ep.Host, Channel.Host, 0, new HostReply(w.Op, true, w.Version, ""));
        _sim.Nodes[Partner].CheckWhole($"{Name} acknowledged block {w.Block} v{w.Version}");
    }

    private void Fail(Write w, string why)
    {
        Log($"fails block {w.Block} v{w.Version} ({why})");
        _sim.Send(Me, Ep.Host, Channel.Host, 0, new HostReply(w.Op, false, 0, why));
    }

    // ---- The witness ----

    private void SendToWitness(WitnessVerb verb, ulong term, ulong arg, Ask? ask, long now)
    {
        var r = new WitnessRequest((ulong)_sim.NewId(), verb, Sim.Key, Name, term, arg);
        _pending[r.Id] = (r, now, ask);
        ask?.Ids.Add(r.Id);
        _sim.Send(Me, Ep.Witness, Channel.Witness, 0, new ToWitness(r));
    }

    private void StartAsk(WitnessVerb verb, ulong term, ulong arg, Action<WitnessAnswer?> done)
    {
        long now = Now;
        var a = new Ask(verb, term, arg, now + Timeout, done) { NextSend = now + Interval };
        _asks.Add(a);
        SendToWitness(verb, term, arg, a, now);
    }

    private void Resend(Ask a, long now)
    {
        a.NextSend = now + Interval;
        SendToWitness(a.Verb, a.Term, a.Arg, a, now);
    }

    private void Finish(Ask a, WitnessAnswer? answer)
    {
        a.Finished = true;
        foreach (ulong id in a.Ids) _pending.Remove(id);
        a.Done(answer);
    }

    private void OnWitnessAnswer(WitnessAnswer a)
    {
        if (!_pending.Remove(a.Id, out var p)) return;
        WitnessRequest r = p.Request;
        if (a.Result == WitnessResult.Ok && a.LeaseMs > 0 && a.Owner == Name && a.Term == r.Term)
        {
            // WitnessClient: from the send time, for the lease less the margin (rate drift and a heartbeat interval).
            long lease = P.Ms(a.LeaseMs);
            long until = p.Sent + lease - (Support.LeaseMargin.Ticks(lease) + Interval);
            if (_lease.Term < r.Term || (_lease.Term == r.Term && until > _lease.Until)) _lease = (r.Term, until);
        }
        // PairNode.OnWitnessAnswer: a newer term naming the partner is learned; what the witness says of the alone record.
        if (!(a.Term == 0 && a.Owner.Length == 0))
        {
            var term = new GroupTerm(a.Term, a.Owner);
            GroupTerm m = Own.Current;
            if (term.Owner == PartnerName && (term.Term > m.Term || (term.Term == m.Term && term.Owner != m.Owner && a.Result == WitnessResult.Superseded)))
            {
                if (!(term.Term < Own.Current.Term || term == Own.Current))
                {
                    bool wasOwner = Own.OwnedHere;
                    OwnershipLearned learned = Own.Learn(term);
                    if (learned == OwnershipLearned.Adopted) Adopt(wasOwner, "the witness");
                }
            }
            _witnessSaysAlone = a.Alone ? (a.Term, a.AloneGeneration) : null;
        }
        if (p.Ask is { Finished: false } ask) Finish(ask, a);
    }

    /// <summary>Whether writes the partner's replica lacks may complete (the keeper's lease has expired): with a witness, once it records this node alone.</summary>
    private bool EnsureAlone()
    {
        if (!_sim.WithWitness || Bug == SeededBug.AloneWithoutWitness) return true;
        if (!Own.OwnedHere) return false;
        GroupTerm t = Own.Current;
        if (_aloneRecorded && _aloneTerm == t.Term) return true;
        if (_aloneInFlight) return false;
        _aloneInFlight = true;
        StartAsk(WitnessVerb.Alone, t.Term, 0, a =>
        {
            _aloneInFlight = false;
            if (a is { Result: WitnessResult.Ok, Alone: true } ok && ok.Term == t.Term && ok.Owner == Name)
            {
                _aloneRecorded = true;
                _aloneTerm = t.Term;
                _aloneGeneration = ok.AloneGeneration;
                (_mustRecord, _mustTerm) = (true, t.Term);
                Log($"the witness records it alone at term {t.Term}");
            }
        });
        return false;
    }

    private bool PartnerKnowsInSync => Own.OwnedHere && _m == InSync && _mayTrust && _trustAcked;

    private void WitnessTick(long now)
    {
        if (!_sim.WithWitness) return;
        if (_grantHoldUntil != 0 && now >= _grantHoldUntil) _grantHoldUntil = 0;
        bool heard = _lastHeard != 0 && now - _lastHeard < Timeout;
        if (Own.MayServe) WitnessAlone(Own.Current.Term);
        else if (!Own.OwnedHere && Own.Conflict == null)
        {
            if (_status == Status.PartnerDown) StartAutoTakeover(now);
        }
        else if (Own.OwnedHere && !Own.Confirmed && Own.Conflict == null && Conn == 0 && !heard && now - _witnessStarted > Timeout)
            ConfirmByWitness();
    }

    /// <summary>A group this node owned when it stopped, its partner not heard: the witness says whether it still owns it.</summary>
    private void ConfirmByWitness()
    {
        if (_confirming) return;
        _confirming = true;
        GroupTerm kept = Own.Current;
        StartAsk(WitnessVerb.Alone, kept.Term, 0, a =>
        {
            _confirming = false;
            if (Own.Confirmed) return;
            if (a is { Result: WitnessResult.Ok, Alone: true } ok && Own.ConfirmByWitness(new GroupTerm(ok.Term, ok.Owner)))
            {
                (_aloneRecorded, _aloneTerm, _aloneGeneration, _mustRecord, _mustTerm) = (true, ok.Term, ok.AloneGeneration, true, ok.Term);
                Log($"confirmed by the witness at {kept}, recorded alone");
            }
        });
    }

    /// <summary>The alone record kept true at the witness: said again when it lacks it, cleared once the partner knows the replica is in sync.</summary>
    private void WitnessAlone(ulong term)
    {
        if (_aloneInFlight) return;
        bool again = _mustRecord && _mustTerm == term && !(_witnessSaysAlone is { } has && has.Term == term);
        if (again && !PartnerKnowsInSync)
        {
            _aloneRecorded = false;
            EnsureAlone();
            return;
        }
        ulong generation;
        if (_aloneRecorded && _aloneTerm == term) generation = _aloneGeneration;
        else if (_witnessSaysAlone is { } says && says.Term == term) generation = says.Generation;
        else return;
        if (!PartnerKnowsInSync) return;
        _aloneRecorded = false;
        _aloneInFlight = true;
        StartAsk(WitnessVerb.Synced, term, generation, a =>
        {
            _aloneInFlight = false;
            if (a is { Alone: false }) _witnessSaysAlone = null;
            if (a is { Result: WitnessResult.Ok, Alone: false }) _mustRecord = false;
        });
    }

    /// <summary>PairNode.LastAlive: the partner's last sign of life as a takeover counts it (its last datagram and two intervals).</summary>
    private long LastAlive => _lastHeard + 2 * Interval;

    /// <summary>
    /// PairNode.TakeOver with a witness: the replica's knowledge frozen first (the owner's words answered NotNow until the
    /// attempt ends, however it ends: <see cref="EndTake"/>) and the partner's new associations refused
    /// (<see cref="AskingToTakeOver"/>), the partner's last sign of life captured, then the first check; with the seeded
    /// bug <see cref="SeededBug.NoFreezeDuringTake"/>, none of it (the defect the model found); with
    /// <see cref="SeededBug.NoRefusalDuringTake"/>, no refusal (the fix's first step, whose defect the model found too).
    /// </summary>
    private void StartAutoTakeover(long now)
    {
        if (_takeover) return;
        if (Bug != SeededBug.NoFreezeDuringTake)
        {
            _frozen = Knowledge;
            _frozen.BeginTake();
            _asking = Bug != SeededBug.NoRefusalDuringTake;
        }
        _askedLastAlive = LastAlive;
        if (PlanTakeover(checkPartner: true, _askedLastAlive, out GroupTerm term, out _) is string refused)
        {
            EndTake();
            _sim.TraceOnce($"{Name}: no takeover: {refused}");
            return;
        }
        _takeover = true;
        _asked = term;
        _takeStart = now;
        AskTake(now);
    }

    /// <summary>The takeover attempt ends (granted or not, served or declined): the knowledge thaws (an owner's restart heard meanwhile applies now), the partner may connect.</summary>
    private void EndTake()
    {
        _frozen?.EndTake();
        _frozen = null;
        _asking = false;
    }

    private void AskTake(long now) => StartAsk(WitnessVerb.Take, _asked.Term, WitnessProtocol.TakeArgument(false, TimeSpan.FromMilliseconds(P.IntervalMs)), a =>
    {
        long t = Now;
        if (a is { Result: WitnessResult.Wait } && t - _takeStart <= Timeout + 4 * Interval)
        {
            _takeRetryAt = t + Interval;
            return;
        }
        _takeover = false;
        try
        {
            if (a is not { Result: WitnessResult.Ok } ok || ok.Term != _asked.Term || ok.Owner != Name) return;
            // Granted: checked as of the partner's last sign of life before asking (the seeded bug: as of now).
            string? refused = PlanTakeover(checkPartner: false, Bug == SeededBug.NoFreezeDuringTake ? LastAlive : _askedLastAlive, out GroupTerm term, out bool whole);
            if (refused != null || term != _asked)
            {
                Log($"granted {_asked}, but the takeover no longer holds: {refused ?? "the group changed"}");
                return;
            }
            ServeReplica(term, whole);
        }
        finally
        {
            EndTake();
        }
    });

    /// <summary>PairNode.PlanTakeover: null when the takeover may go ahead (no force), else why not.</summary>
    private string? PlanTakeover(bool checkPartner, long lastAlive, out GroupTerm term, out bool whole)
    {
        term = Own.NextTerm;
        whole = false;
        if (Own.MayServe && Own.Offered == null) return "served here already";
        long now = Now;
        bool heard = _lastHeard != 0 && now - _lastHeard < Timeout;
        if (checkPartner && (Conn != 0 || heard)) return "the partner answers";
        if (!Own.Confirmed) return "the partner not heard since this node started";
        if (Own.OwnedHere) return "this node's data is from before the partner's term";
        whole = Knowledge.WholeAtDeath(lastAlive);
        if (!whole) return $"the replica was not whole when the partner was last heard (the owner said {Knowledge.Word})";
        return null;
    }

    /// <summary>PairNode.ServeReplicas: the term kept, the replica served as the namespace, mirrored (out of sync) to the partner from now on.</summary>
    private void ServeReplica(GroupTerm term, bool whole)
    {
        Disk.Holds = default;
        Disk.IsReplica = false;
        Own.TookOver(term);
        Disk.Term = term;
        ResetMirror();
        Fenced = false;
        Log($"took the group over at {term} (the witness granted it; replica whole at the owner's death: {whole})");
        if (whole) _sim.Check(new Blocks(Me, "taken", [.. Disk.Store], _sim.Now, $"term {term}"));
        if (Conn != 0)
        {
            _grantHoldUntil = Now + Timeout + 2 * Interval;
            LinkDown($"the group was taken over at {term}: the partner learns it as it reconnects", sendReset: true);
        }
    }
}
