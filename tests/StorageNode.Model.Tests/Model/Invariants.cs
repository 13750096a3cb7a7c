
using Monitor = Microsoft.Coyote.Specifications.Monitor;

namespace StorageNode.Model.Tests.Model;

/// <summary>A node executed a host's write as the group's owner at <paramref name="Term"/> (it will complete it once the mirror lets it).</summary>
public sealed class WriteAccepted(int node, ulong term, int block, int version, long at) : Monitor.Event
{
    public int Node { get; } = node;
    public ulong Term { get; } = term;
    public int Block { get; } = block;
    public int Version { get; } = version;
    public long At { get; } = at;
}

/// <summary>A node completed (acknowledged to its host) a write at <paramref name="Term"/>.</summary>
public sealed class WriteAcked(int node, ulong term, int block, int version, long at) : Monitor.Event
{
    public int Node { get; } = node;
    public ulong Term { get; } = term;
    public int Block { get; } = block;
    public int Version { get; } = version;
    public long At { get; } = at;
}

/// <summary>A node served a host's read of a block: <paramref name="Version"/> is what it returned.</summary>
public sealed class ReadServed(int node, int block, int version, long at) : Monitor.Event
{
    public int Node { get; } = node;
    public int Block { get; } = block;
    public int Version { get; } = version;
    public long At { get; } = at;
}

/// <summary>
/// A node's blocks at a moment the invariants look at them: <paramref name="Why"/> is <c>serves</c> (it started to serve the
/// group), <c>whole</c> (it is the keeper and calls its replica whole now: <see cref="Target.ReplicaKnowledge.IsWhole"/>) or
/// <c>taken</c> (it took the group over, calling the replica whole when the owner was last heard: WholeAtDeath).
/// </summary>
public sealed class Blocks(int node, string why, int[] store, long at, string detail) : Monitor.Event
{
    public int Node { get; } = node;
    public string Why { get; } = why;
    public int[] Store { get; } = store;
    public long At { get; } = at;
    public string Detail { get; } = detail;
}

/// <summary>A node started to serve the group (optimized, a write would run) while the other node serves it too.</summary>
public sealed class BothServe(int node, ulong term, ulong otherTerm, long at) : Monitor.Event
{
    public int Node { get; } = node;
    public ulong Term { get; } = term;
    public ulong OtherTerm { get; } = otherTerm;
    public long At { get; } = at;
}

/// <summary>The run ended with every fault healed long before and both nodes up, and nobody serves the group.</summary>
public sealed class NobodyServes(string detail) : Monitor.Event
{
    public string Detail { get; } = detail;
}

/// <summary>The iteration's trace so far, for the report of a violation.</summary>
public sealed class TraceSource(Func<string> trace) : Monitor.Event
{
    public Func<string> Trace { get; } = trace;
}

/// <summary>
/// The invariants of docs/ha.md, checked at every step of every explored schedule:
/// (1) no acknowledged write lost — every read a node serves, and every node's blocks when it starts to serve the group,
/// hold each block's last acknowledged version or a later one;
/// (2) at most one node accepts (executes or completes) writes for the group at any instant — in the order the model runs
/// them, no write is accepted or completed at a term older than one another node already accepted writes at, nor by two
/// nodes at one term;
/// (3) the keeper never calls its replica whole when it lacks a write an owner acknowledged — neither while its lease runs
/// (checked whenever it applies a word or a renewal, and whenever the owner acknowledges a write) nor when a takeover
/// serves it as whole at the owner's death.
/// With <see cref="WorldInit.CheckServed"/>, also (L): a run whose faults all healed long before its end, both nodes up,
/// ends with one node serving the group (an availability check, not one of the three safety invariants).
/// </summary>
public sealed class Invariants : Monitor
{
    private readonly int[] _acked = new int[P.Blocks];
    private ulong _maxTerm;
    private int _maxTermNode = -1;
    private Func<string> _trace = () => "";

    [Start]
    [OnEventDoAction(typeof(TraceSource), nameof(OnTrace))]
    [OnEventDoAction(typeof(WriteAccepted), nameof(OnAccepted))]
    [OnEventDoAction(typeof(WriteAcked), nameof(OnAcked))]
    [OnEventDoAction(typeof(ReadServed), nameof(OnRead))]
    [OnEventDoAction(typeof(Blocks), nameof(OnBlocks))]
    [OnEventDoAction(typeof(BothServe), nameof(OnBothServe))]
    [OnEventDoAction(typeof(NobodyServes), nameof(OnNobodyServes))]
    private sealed class Watching : State
    {
    }

    private void OnTrace(Event e) => _trace = ((TraceSource)e).Trace;

    private void Fail(string what) => Assert(false, what + "\ntrace (last steps):\n" + (Sim.Current?.TraceText() ?? _trace()));

    private void Accepting(int node, ulong term, string what, long at)
    {
        if (term < _maxTerm || (term == _maxTerm && _maxTermNode >= 0 && node != _maxTermNode))
            Fail($"(2) two nodes accept writes: {Ep.Name(node)} {what} at term {term} at {at / P.Ms(1)} ms, after {Ep.Name(_maxTermNode)} accepted writes at term {_maxTerm}");
        if (term > _maxTerm || _maxTermNode < 0)
        {
            _maxTerm = term;
            _maxTermNode = node;
        }
    }

    private void OnBothServe(Event e)
    {
        var b = (BothServe)e;
        Fail($"(2) two nodes accept writes: {Ep.Name(b.Node)} starts to serve the group at term {b.Term} at {b.At / P.Ms(1)} ms while {Ep.Name(1 - b.Node)} serves it at term {b.OtherTerm}");
    }

    private void OnNobodyServes(Event e) => Fail($"(L) nobody serves the group: {((NobodyServes)e).Detail}");

    private void OnAccepted(Event e)
    {
        var w = (WriteAccepted)e;
        Accepting(w.Node, w.Term, $"executed block {w.Block} v{w.Version}", w.At);
    }

    private void OnAcked(Event e)
    {
        var w = (WriteAcked)e;
        Accepting(w.Node, w.Term, $"acknowledged block {w.Block} v{w.Version}", w.At);
        if (w.Version > _acked[w.Block]) _acked[w.Block] = w.Version;
    }

    private void OnRead(Event e)
    {
        var r = (ReadServed)e;
        if (r.Version < _acked[r.Block])
            Fail($"(1) acknowledged write lost: {Ep.Name(r.Node)} served a read of block {r.Block} at {r.At / P.Ms(1)} ms with v{r.Version}, but v{_acked[r.Block]} was acknowledged");
    }

    private void OnBlocks(Event e)
    {
        var b = (Blocks)e;
        for (int i = 0; i < P.Blocks; i++)
        {
            if (b.Store[i] >= _acked[i]) continue;
            string invariant = b.Why switch
            {
                "serves" => $"(1) acknowledged write lost: {Ep.Name(b.Node)} serves the group at {b.At / P.Ms(1)} ms",
                "whole" => $"(3) the keeper calls a torn replica whole: {Ep.Name(b.Node)}'s replica is whole (its lease runs) at {b.At / P.Ms(1)} ms",
                _ => $"(3) the keeper calls a torn replica whole: {Ep.Name(b.Node)} took the group over at {b.At / P.Ms(1)} ms with its replica whole at the owner's death",
            };
            Fail($"{invariant}, but block {i} holds v{b.Store[i]} and v{_acked[i]} was acknowledged ({b.Detail})");
        }
    }
}
