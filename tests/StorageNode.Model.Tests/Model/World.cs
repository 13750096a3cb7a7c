using Microsoft.Coyote.Actors;
using StorageNode.Witness;

namespace StorageNode.Model.Tests.Model;

/// <summary>One explored run's shared state: the logical clock, the nodes' clocks, the messages in flight, the partitions.</summary>
public sealed class Sim(IActorRuntime runtime, SeededBug bug, Faults faults, bool withWitness)
{
    public static readonly WitnessKey Key = new("pair", "nqn.2026-11.io.storagenode:model", 1);

    /// <summary>The run under way (runs are sequential within an engine): the invariants print its trace.</summary>
    private static volatile Sim? _last;
    public static Sim? Current
    {
        get => _last;
        set => _last = value;
    }

    public IActorRuntime Runtime { get; } = runtime;
    public SeededBug Bug { get; } = bug;
    public Faults Faults { get; } = faults;
    public bool WithWitness { get; } = withWitness;

    /// <summary>The logical clock (ticks of the Stopwatch's frequency since the run began): only the world advances it.</summary>
    public long Now { get; set; }
    // Each endpoint's monotonic clock: its own offset (anything) and rate (parts per million off the logical clock).
    public long[] Offset { get; } = new long[3];
    public long[] Ppm { get; } = new long[3];
    public NodeModel[] Nodes { get; private set; } = [];
    public WitnessModel Witness { get; private set; } = null!;

    public List<Msg> InFlight { get; } = [];
    public List<Msg> Unplaced { get; } = [];
    private long _msgSeq, _ids, _incarnations;
    public long ConnCounter { get; private set; }
    // Associations up to this one were broken by a partition of the interconnect.
    public long DeadConnFloor { get; set; }
    private readonly Dictionary<long, object> _assoc = [];

    public bool CutInterconnect { get; set; }
    public bool CutDatagrams { get; set; }
    public bool[] CutFromWitness { get; } = new bool[2];

    /// <summary>Events sent to the nodes and the witness that they have not handled yet: the clock moves only at zero.</summary>
    public int Pending { get; set; }

    private readonly Queue<string> _trace = new();
    private readonly HashSet<string> _said = [];

    public void Init()
    {
        Nodes = [new NodeModel(this, Ep.A), new NodeModel(this, Ep.B)];
        Witness = new WitnessModel(this);
    }

    public long Local(int ep) => Offset[ep] + Now + Now * Ppm[ep] / 1_000_000;

    /// <summary>The first logical time at which endpoint <paramref name="ep"/>'s clock reads <paramref name="local"/> or more.</summary>
    public long GlobalOf(int ep, long local)
    {
        long d = local - Offset[ep];
        if (d <= 0) return 0;
        long t = d * 1_000_000 / (1_000_000 + Ppm[ep]);
        while (Offset[ep] + t + t * Ppm[ep] / 1_000_000 < local) t++;
        return t;
    }

    public long NewId() => ++_ids;
    public long NewIncarnation() => ++_incarnations * 1000 + 7;
    public long NewConn() => ++ConnCounter;

    /// <summary>The object that stands for an association (the keeper compares them by reference).</summary>
    public object Assoc(long conn)
    {
        if (!_assoc.TryGetValue(conn, out object? o)) _assoc[conn] = o = new string($"association c{conn}");
        return o;
    }

    public bool Cut(int from, int to, Channel ch) => ch switch
    {
        Channel.Interconnect => CutInterconnect,
        Channel.Datagram => CutDatagrams,
        Channel.Witness => (from < 2 && CutFromWitness[from]) || (to < 2 && CutFromWitness[to]),
        _ => false,
    };

    /// <summary>Sends a message: the world decides when it arrives (or whether: datagrams may be lost) at its next step.</summary>
    public void Send(int from, int to, Channel ch, long conn, object body)
    {
        if (Cut(from, to, ch) || (ch == Channel.Interconnect && conn <= DeadConnFloor)) return;
        Unplaced.Add(new Msg(++_msgSeq, from, to, ch, conn, Now, body));
    }

    public void Check(Microsoft.Coyote.Specifications.Monitor.Event e) => Runtime.Monitor<Invariants>(e);

    public void Trace(string s)
    {
        _trace.Enqueue($"{Now / P.Ms(1),5} ms {s}");
        while (_trace.Count > 150) _trace.Dequeue();
    }

    public void TraceOnce(string s)
    {
        if (_said.Add(s)) Trace(s);
    }

    public string TraceText() => string.Join("\n", _trace);
}

/// <summary>The witness: the real <see cref="WitnessState"/> on the witness's clock, its records kept across its crashes (its state file).</summary>
public sealed class WitnessModel(Sim sim)
{
    private readonly Dictionary<WitnessKey, WitnessRecord> _kept = [];
    private WitnessState? _state;

    public bool Up => _state != null;

    public void Start()
    {
        _state = new WitnessState(TimeSpan.FromMilliseconds(P.WitnessLeaseMs), sim.Local(Ep.Witness), P.F, _kept);
        sim.Trace("W: started");
    }

    public void Crash()
    {
        _state = null;
        sim.Trace("W: crashed");
    }

    public void Deliver(Msg m)
    {
        if (_state == null || m.Body is not ToWitness { Request: var r }) return;
        long now = sim.Local(Ep.Witness);
        // The seeded bug: the witness forgets the owner's lease when another node asks to take the group.
        if (sim.Bug == SeededBug.WitnessGrantsEarly && r.Verb == WitnessVerb.Take && _state.Records.TryGetValue(r.Key, out WitnessRecord? rec) && rec.Owner != r.Node)
            _state.Apply(new WitnessDecision(r.Key, default, rec, false, null), now);
        WitnessDecision d = _state.Decide(r, now);
        if (d.Keep != null) _kept[d.Key] = d.Keep;
        _state.Apply(d, now);
        if (d.Log != null) sim.Trace($"W: {d.Log}");
        sim.Send(Ep.Witness, m.From, Channel.Witness, 0, new FromWitness(d.Answer));
    }
}

public sealed class WorldInit(IActorRuntime runtime, SeededBug bug, Faults faults, bool withWitness, long endMs, bool checkServed = false) : Event
{
    /// <summary>At the end: with every fault healed a second before and both nodes up, one node must serve the group.</summary>
    public bool CheckServed { get; } = checkServed;
    public IActorRuntime Runtime { get; } = runtime;
    public SeededBug Bug { get; } = bug;
    public Faults Faults { get; } = faults;
    public bool WithWitness { get; } = withWitness;
    public long EndMs { get; } = endMs;
}

public sealed class Step : Event;
/// <summary>A node or the witness handled an event the world sent it.</summary>
public sealed class Done : Event;
public sealed class NodeInit(Sim sim, int ep, ActorId world) : Event
{
    public Sim Sim { get; } = sim;
    public ActorId World { get; } = world;
    public int Ep { get; } = ep;
}
public sealed class Deliver(Msg msg) : Event
{
    public Msg Msg { get; } = msg;
}
public sealed class WakeUp : Event;
public sealed class CrashNow : Event;
public sealed class StartNow : Event;

/// <summary>A node as a Coyote actor: its handlers run one at a time, in whatever order the scheduler picks across actors.</summary>
[OnEventDoAction(typeof(Deliver), nameof(OnDeliver))]
[OnEventDoAction(typeof(WakeUp), nameof(OnWake))]
[OnEventDoAction(typeof(CrashNow), nameof(OnCrash))]
[OnEventDoAction(typeof(StartNow), nameof(OnStart))]
public sealed class NodeActor : Actor
{
    private Sim _sim = null!;
    private NodeModel _node = null!;
    private ActorId _world = null!;

    protected override Task OnInitializeAsync(Event initialEvent)
    {
        var init = (NodeInit)initialEvent;
        _sim = init.Sim;
        _node = _sim.Nodes[init.Ep];
        _world = init.World;
        return Task.CompletedTask;
    }

    private void Done()
    {
        if (_node.Up) _node.AfterStep();
        SendEvent(_world, new Done());
    }

    private void OnDeliver(Event e)
    {
        if (_node.Up) _node.Deliver(((Deliver)e).Msg);
        Done();
    }

    private void OnWake()
    {
        if (_node.Up) _node.Wake();
        Done();
    }

    private void OnCrash()
    {
        _node.Crash();
        Done();
    }

    private void OnStart()
    {
        _node.Start();
        Done();
    }
}

[OnEventDoAction(typeof(Deliver), nameof(OnDeliver))]
public sealed class WitnessActor : Actor
{
    private Sim _sim = null!;
    private ActorId _world = null!;

    protected override Task OnInitializeAsync(Event initialEvent)
    {
        _sim = ((NodeInit)initialEvent).Sim;
        _world = ((NodeInit)initialEvent).World;
        return Task.CompletedTask;
    }

    private void OnDeliver(Event e)
    {
        _sim.Witness.Deliver(((Deliver)e).Msg);
        SendEvent(_world, new Done());
    }
}

/// <summary>
/// The world: the network, the logical clock, the faults and the host. Each of its steps (while the nodes still handle
/// events, it only delivers) picks — a choice Coyote controls — a message to deliver among those that may arrive now
/// (the interconnect in order per association and direction; datagrams, witness requests and host I/O in any order),
/// or, when every actor is idle, moves the clock to the next timer, message or fault. Each message sent gets a delay
/// (none, up to an interval, or up to two heartbeat timeouts), and a datagram may be lost.
/// </summary>
[OnEventDoAction(typeof(Step), nameof(OnStep))]
[OnEventDoAction(typeof(Done), nameof(OnDone))]
public sealed class World : Actor
{
    private Sim _sim = null!;
    private ActorId[] _nodes = [];
    private ActorId _witness = null!;
    private long _end;
    private bool _checkServed;
    private long _lastFault;
        private readonly List<(long At, string What)> _faults = [];
    // The host: one write at a time per block, versions rising; reads of any block through either node.
    private readonly int[] _issued = new int[P.Blocks];
    private readonly bool[] _busy = new bool[P.Blocks];
    private sealed record Op(long Id, int Node, int Block, bool Write, long DeliveredAt);
    private readonly Dictionary<long, Op> _ops = [];
    private long _nextHostOp;
    private long _opIds;

    protected override Task OnInitializeAsync(Event initialEvent)
    {
        var init = (WorldInit)initialEvent;
        _sim = new Sim(init.Runtime, init.Bug, init.Faults, init.WithWitness);
        _sim.Init();
        Sim.Current = _sim;
        _checkServed = init.CheckServed;
        _end = P.Ms(init.EndMs);
        Monitor<Invariants>(new TraceSource(_sim.TraceText));
        // Clocks: offsets anything (hours apart), rates within 5 % of each other (±2.4 % off the logical clock).
        long[] rates = [-24_000, 0, 24_000];
        for (int ep = 0; ep < 3; ep++)
        {
            _sim.Offset[ep] = P.Ms(10_000_000 + RandomInteger(7) * 1_800_000L + RandomInteger(1000));
            _sim.Ppm[ep] = rates[RandomInteger(3)];
        }
        _sim.Trace($"clocks: offsets {string.Join(", ", _sim.Offset.Select(o => o / P.Ms(1)))} ms, rates {string.Join(", ", _sim.Ppm)} ppm");
        _nodes = [CreateActor(typeof(NodeActor), new NodeInit(_sim, Ep.A, Id)), CreateActor(typeof(NodeActor), new NodeInit(_sim, Ep.B, Id))];
        _witness = CreateActor(typeof(WitnessActor), new NodeInit(_sim, Ep.Witness, Id));
        if (_sim.WithWitness) _sim.Witness.Start();
        _sim.Nodes[Ep.B].Disk.IsReplica = true;
        _sim.Nodes[Ep.A].Start();
        _sim.Nodes[Ep.B].Start();
        PlanFaults(init.Faults);
        _nextHostOp = P.Ms(50);
        _stepQueued = true;
        SendEvent(Id, new Step());
        return Task.CompletedTask;
    }

    private long Between(long fromMs, long toMs) => P.Ms(fromMs + RandomInteger((int)(toMs - fromMs + 1)));

    /// <summary>The faults of this run, at times the scheduler chooses (after the pair is in sync: 500 ms).</summary>
    private void PlanFaults(Faults f)
    {
        bool heal = f.HasFlag(Faults.Heal);
        long t = Between(500, 1300);
        if (f.HasFlag(Faults.OwnerCrash))
        {
            _faults.Add((t, "crash A"));
            if (heal) _faults.Add((t + Between(30, 1200), "start A"));
        }
        if (f.HasFlag(Faults.KeeperCrash))
        {
            long k = f.HasFlag(Faults.OwnerCrash) ? t + Between(100, 900) : t;
            _faults.Add((k, "crash B"));
            if (heal) _faults.Add((k + Between(30, 1200), "start B"));
        }
        if (f.HasFlag(Faults.PairPartition) || f.HasFlag(Faults.InterconnectOnly) || f.HasFlag(Faults.DatagramsOnly))
        {
            string what = f.HasFlag(Faults.PairPartition) ? "pair" : f.HasFlag(Faults.InterconnectOnly) ? "interconnect" : "datagrams";
            _faults.Add((t, $"cut {what}"));
            if (heal) _faults.Add((t + Between(200, 1500), $"heal {what}"));
        }
        if (f.HasFlag(Faults.OwnerWitnessPartition))
        {
            long w = t + Between(0, 600) - P.Ms(150);
            _faults.Add((w, "cut A-W"));
            if (heal) _faults.Add((w + Between(200, 1500), "heal A-W"));
        }
        if (f.HasFlag(Faults.KeeperWitnessPartition))
        {
            long w = t + Between(0, 300) - P.Ms(150);
            _faults.Add((w, "cut B-W"));
            if (heal) _faults.Add((w + Between(200, 1500), "heal B-W"));
        }
        if (f.HasFlag(Faults.WitnessCrash))
        {
            long w = t + Between(0, 600) - P.Ms(300);
            _faults.Add((w, "crash W"));
            if (heal) _faults.Add((w + Between(100, 1200), "start W"));
        }
        _faults.Sort((a, b) => a.At.CompareTo(b.At));
    }

    private void Apply(string what)
    {
        _sim.Trace($"fault: {what}");
        _lastFault = _sim.Now;
        switch (what)
        {
            case "crash A": Crash(Ep.A); break;
            case "crash B": Crash(Ep.B); break;
            case "start A": StartNode(Ep.A); break;
            case "start B": StartNode(Ep.B); break;
            case "cut pair": CutInterconnect(true); _sim.CutDatagrams = true; break;
            case "heal pair": CutInterconnect(false); _sim.CutDatagrams = false; break;
            case "cut interconnect": CutInterconnect(true); break;
            case "heal interconnect": CutInterconnect(false); break;
            case "cut datagrams": _sim.CutDatagrams = true; break;
            case "heal datagrams": _sim.CutDatagrams = false; break;
            case "cut A-W": _sim.CutFromWitness[Ep.A] = true; break;
            case "heal A-W": _sim.CutFromWitness[Ep.A] = false; break;
            case "cut B-W": _sim.CutFromWitness[Ep.B] = true; break;
            case "heal B-W": _sim.CutFromWitness[Ep.B] = false; break;
            case "crash W": _sim.Witness.Crash(); break;
            case "start W": _sim.Witness.Start(); break;
        }
    }

    private void CutInterconnect(bool cut)
    {
        _sim.CutInterconnect = cut;
        // Every association breaks (its messages in flight are gone; the nodes find out by their heartbeats' timeouts).
        if (cut) _sim.DeadConnFloor = _sim.ConnCounter;
    }

    private void Crash(int ep)
    {
        if (!_sim.Nodes[ep].Up) return;
        _sim.Pending++;
        SendEvent(_nodes[ep], new CrashNow());
        // The host's I/O through that node fails (its connection is gone; a write may or may not have run).
        foreach (Op op in _ops.Values.Where(o => o.Node == ep).ToList()) Answered(op.Id, ok: false);
    }

    private void StartNode(int ep)
    {
        if (_sim.Nodes[ep].Up) return;
        _sim.Pending++;
        SendEvent(_nodes[ep], new StartNow());
    }

    private void Answered(long id, bool ok)
    {
        if (!_ops.Remove(id, out Op? op)) return;
        if (op.Write) _busy[op.Block] = false;
    }

    /// <summary>Gives each new message its delay (or loses it): none, up to an interval, or up to two heartbeat timeouts.</summary>
    private void Place()
    {
        foreach (Msg m in _sim.Unplaced)
        {
            if ((m.Channel is Channel.Datagram or Channel.Witness) && RandomInteger(100) < 4) continue;
            int r = RandomInteger(100);
            long delay = r < 60 ? 0 : r < 92 ? P.Ms(1 + RandomInteger(P.IntervalMs)) : P.Ms(P.IntervalMs + RandomInteger(2 * P.TimeoutMs - P.IntervalMs));
            if (m.Channel == Channel.Host) delay = r < 70 ? 0 : P.Ms(1 + RandomInteger(P.IntervalMs));
            _sim.InFlight.Add(m with { NotBefore = m.NotBefore + delay });
        }
        _sim.Unplaced.Clear();
    }

    /// <summary>Messages that may arrive now: on the interconnect, only the first of its association and direction.</summary>
    private List<Msg> Deliverable()
    {
        var list = new List<Msg>();
        var seen = new HashSet<(long, int)>();
        foreach (Msg m in _sim.InFlight)
        {
            if (m.Channel == Channel.Interconnect && !seen.Add((m.Conn, m.From))) continue;
            if (m.NotBefore <= _sim.Now) list.Add(m);
        }
        return list;
    }

    private bool _stepQueued;
    private bool _checkedServed;

    private void OnDone()
    {
        _sim.Pending--;
        if (_stepQueued) return;
        _stepQueued = true;
        SendEvent(Id, new Step());
    }

    private void OnStep()
    {
        _stepQueued = false;
        Place();
        if (_sim.Now >= _end)
        {
            foreach (NodeModel n in _sim.Nodes) _sim.Trace($"end: {n.Name} up {n.Up}, serving {n.Up && n.Serving}, term {(n.Up ? n.Own.Current.ToString() : "-")}, blocks [{string.Join(",", n.Disk.Store)}]");
            if (_checkServed && !_checkedServed && _faults.Count == 0 && _sim.Now - _lastFault >= P.Ms(1000) && _sim.Nodes.All(n => n.Up) && _sim.Witness.Up
                && !_sim.CutInterconnect && !_sim.CutDatagrams && !_sim.CutFromWitness[0] && !_sim.CutFromWitness[1] && !_sim.Nodes.Any(n => n.Serving))
            {
                _checkedServed = true;
                Monitor<Invariants>(new NobodyServes($"every fault healed {(_sim.Now - _lastFault) / P.Ms(1)} ms before the end, both nodes up: " + string.Join("; ", _sim.Nodes.Select(n => $"{n.Name} at {n.Own.Current}{(n.Disk.IsReplica ? " holding a replica" : "")}{(n.Own.Conflict != null ? " (conflict)" : "")}"))));
            }
            return; // the run ends: nothing more is scheduled
        }
        List<Msg> deliverable = Deliverable();
        bool idle = _sim.Pending == 0;
        // Nothing to do until a node or the witness has handled what it was sent: its Done takes the next step.
        if (deliverable.Count == 0 && !idle) return;
        int pick = RandomInteger(deliverable.Count + (idle ? 1 : 0));
        if (pick < deliverable.Count) DeliverMsg(deliverable[pick]);
        else Advance();
        _stepQueued = true;
        SendEvent(Id, new Step());
    }

    private void DeliverMsg(Msg m)
    {
        _sim.InFlight.Remove(m);
        if (_sim.Cut(m.From, m.To, m.Channel) || (m.Channel == Channel.Interconnect && m.Conn <= _sim.DeadConnFloor)) return;
        switch (m.To)
        {
            case Ep.Host:
                if (m.Body is HostReply reply) Answered(reply.Op, reply.Ok);
                return;
            case Ep.Witness:
                if (!_sim.Witness.Up) return;
                _sim.Pending++;
                SendEvent(_witness, new Deliver(m));
                return;
            default:
                if (!_sim.Nodes[m.To].Up)
                {
                    if (m.Body is HostWrite w) Answered(w.Op, false);
                    if (m.Body is HostRead r) Answered(r.Op, false);
                    return;
                }
                if (m.Body is HostWrite hw && _ops.TryGetValue(hw.Op, out Op? op)) _ops[hw.Op] = op with { DeliveredAt = _sim.Now };
                _sim.Pending++;
                SendEvent(_nodes[m.To], new Deliver(m));
                return;
        }
    }

    /// <summary>Every actor is idle: the clock moves to the next thing that happens (a timer, a message due, a fault, the host).</summary>
    private void Advance()
    {
        long next = _end;
        foreach (NodeModel n in _sim.Nodes)
            if (n.Up) next = Math.Min(next, _sim.GlobalOf(n.Me, n.NextWake));
        foreach (Msg m in _sim.InFlight) if (m.NotBefore > _sim.Now) next = Math.Min(next, m.NotBefore);
        if (_faults.Count > 0) next = Math.Min(next, _faults[0].At);
        next = Math.Min(next, _nextHostOp);
        _sim.Now = Math.Max(_sim.Now, next);
        while (_faults.Count > 0 && _faults[0].At <= _sim.Now)
        {
            Apply(_faults[0].What);
            _faults.RemoveAt(0);
        }
        if (_sim.Now >= _nextHostOp)
        {
            HostOp();
            _nextHostOp = _sim.Now + P.Ms(10 + RandomInteger(60));
        }
        for (int i = 0; i < 2; i++)
        {
            NodeModel n = _sim.Nodes[i];
            if (!n.Up || _sim.Local(i) < n.NextWake) continue;
            _sim.Pending++;
            SendEvent(_nodes[i], new WakeUp());
        }
    }

    private void HostOp()
    {
        // A write the host has had no answer to long after its node got it is given up (it ran, or never will).
        foreach (Op stale in _ops.Values.Where(o => o.DeliveredAt != 0 && _sim.Now - o.DeliveredAt > 5 * P.Timeout).ToList()) Answered(stale.Id, false);
        int node = RandomInteger(2);
        int block = RandomInteger(P.Blocks);
        bool write = RandomInteger(3) != 0;
        long id = ++_opIds;
        if (write)
        {
            if (_busy[block]) return;
            _busy[block] = true;
            _ops[id] = new Op(id, node, block, true, 0);
            _sim.Send(Ep.Host, node, Channel.Host, 0, new HostWrite(id, block, ++_issued[block]));
        }
        else
        {
            _ops[id] = new Op(id, node, block, false, 0);
            _sim.Send(Ep.Host, node, Channel.Host, 0, new HostRead(id, block));
        }
    }
}
