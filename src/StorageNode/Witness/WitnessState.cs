using System.Globalization;
using StorageNode.Support;

namespace StorageNode.Witness;

/// <summary>What the witness keeps of a group (durably): its term and owner, and whether that owner served alone.</summary>
public sealed record WitnessRecord(ulong Term, string Owner, bool Alone, ulong AloneGeneration);

/// <summary>
/// The witness's answer to one request and what it changes: the record to keep (durably, before the answer goes; null:
/// unchanged) and whether the requester holds the lease from the request's arrival.
/// </summary>
public readonly record struct WitnessDecision(WitnessKey Key, WitnessAnswer Answer, WitnessRecord? Keep, bool Lease, string? Log, string? Asked = null, long? AskedSince = null);

/// <summary>
/// The witness of one or more pairs (docs/ha.md, "The witness"): a state machine with no sockets, files or clock, which
/// <see cref="WitnessService"/> runs. Per group it keeps the term and owner and whether the owner served alone (its
/// partner's replica lacking acknowledged writes), and grants one lease: the owner's, renewed by its requests. A group
/// is granted to the other node of the pair (<see cref="WitnessVerb.Take"/>) only at a newer term, once the owner's
/// lease has run out on the witness's clock (from the arrival of its last renewal), never while the owner served
/// alone (unless forced), and never before a lease has passed since the witness started (it forgot who held one).
/// Leases are measured on each side's own monotonic clock: the owner counts its lease from the send time of the request
/// that renewed it, minus a margin, so it ends on the owner before the witness lets the partner have it.
/// Not thread-safe: the service runs it on one thread.
/// </summary>
public sealed class WitnessState
{
    private readonly long _leaseTicks;
    private readonly long _startTicks;
    private readonly long _ticksPerMs;
    private readonly Dictionary<WitnessKey, WitnessRecord> _records = [];
    // When (the witness's clock) the owner last renewed its lease on the group; absent: not since the witness started.
    private readonly Dictionary<WitnessKey, long> _renewed = [];
    // A take refused, by whom, since when and when last (the witness's clock), until a lease is granted to anyone.
    private readonly record struct Asking(string Node, long Since, long Last);
    private readonly Dictionary<WitnessKey, Asking> _asked = [];
    // The two nodes of each pair, as they first spoke: a third name is refused.
    private readonly Dictionary<string, List<string>> _members = new(StringComparer.Ordinal);

    public WitnessState(TimeSpan lease, long startTicks, long ticksPerSecond, IEnumerable<KeyValuePair<WitnessKey, WitnessRecord>> kept)
    {
        _ticksPerMs = ticksPerSecond / 1000;
        _leaseTicks = (long)(lease.TotalMilliseconds * _ticksPerMs);
        _startTicks = startTicks;
        LeaseMs = (uint)lease.TotalMilliseconds;
        foreach ((WitnessKey k, WitnessRecord r) in kept)
        {
            _records[k] = r;
            Member(k.Cluster, r.Owner);
        }
    }

    public uint LeaseMs { get; }

    public IReadOnlyDictionary<WitnessKey, WitnessRecord> Records => _records;

    /// <summary>Whether <paramref name="key"/>'s owner holds its lease now (renewed less than a lease ago).</summary>
    public bool LeaseHeld(WitnessKey key, long now) => _renewed.TryGetValue(key, out long at) && now - at < _leaseTicks;

    private bool Member(string cluster, string node)
    {
        if (!_members.TryGetValue(cluster, out List<string>? nodes)) _members[cluster] = nodes = [];
        if (nodes.Contains(node)) return true;
        if (nodes.Count >= 2) return false;
        nodes.Add(node);
        return true;
    }

    /// <summary>Decides a request arriving at <paramref name="now"/>; <see cref="Apply"/> makes it so once its record is kept.</summary>
    public WitnessDecision Decide(in WitnessRequest r, long now)
    {
        WitnessKey key = r.Key;
        _records.TryGetValue(key, out WitnessRecord? rec);
        if (r.Verb != WitnessVerb.Query && !Member(key.Cluster, r.Node))
            return Refuse(r, rec, $"{r.Node} is not a node of pair {key.Cluster} ({string.Join(" and ", _members[key.Cluster])} are)");
        switch (r.Verb)
        {
            case WitnessVerb.Query:
                return new WitnessDecision(key, Answer(r, WitnessResult.State, rec, 0), null, false, null);

            case WitnessVerb.Renew:
            case WitnessVerb.Alone:
            {
                bool alone = r.Verb == WitnessVerb.Alone;
                if (rec != null && (r.Term < rec.Term || (r.Term == rec.Term && rec.Owner != r.Node)))
                    return new WitnessDecision(key, Answer(r, WitnessResult.Superseded, rec, 0), null, false, null);
                WitnessRecord next;
                string? log = null;
                if (rec == null || r.Term > rec.Term)
                {
                    // A term the witness has not seen, made without it (a giveback over the interconnect, a forced takeover
                    // while the witness was away): the owner that makes it knows it; a new term starts not alone.
                    next = new WitnessRecord(r.Term, r.Node, alone, alone ? (rec?.AloneGeneration ?? 0) + 1 : rec?.AloneGeneration ?? 0);
                    log = FormattableString.Invariant($"{key}: {r.Node} owns it at term {r.Term} (was {(rec == null ? "unknown here" : $"{rec.Owner} at term {rec.Term}")}){(alone ? ", alone" : "")}");
                }
                else if (alone)
                {
                    // Every "alone" is a new generation, recorded already or not: a "synced" of an earlier one, delayed
                    // past it, clears nothing the owner counts on.
                    next = rec with { Alone = true, AloneGeneration = rec.AloneGeneration + 1 };
                    if (!rec.Alone) log = FormattableString.Invariant($"{key}: {r.Node} serves alone at term {r.Term} (its partner's replica lacks what it writes from now on)");
                }
                else next = rec;
                return new WitnessDecision(key, Answer(r, WitnessResult.Ok, next, LeaseMs), ReferenceEquals(next, rec) ? null : next, true, log);
            }

            case WitnessVerb.Synced:
            {
                if (rec == null || r.Term != rec.Term || rec.Owner != r.Node)
                    return new WitnessDecision(key, Answer(r, rec == null ? WitnessResult.Refused : WitnessResult.Superseded, rec, 0, rec == null ? "no record of the group" : ""), null, false, null);
                // Only the alone record it names: one made since (a later episode) stands.
                if (!rec.Alone || rec.AloneGeneration != r.Arg)
                    return new WitnessDecision(key, Answer(r, WitnessResult.Ok, rec, LeaseMs), null, true, null);
                WitnessRecord next = rec with { Alone = false };
                return new WitnessDecision(key, Answer(r, WitnessResult.Ok, next, LeaseMs), next, true,
                    FormattableString.Invariant($"{key}: {r.Node}'s partner holds its replicas whole again at term {r.Term}"));
            }

            case WitnessVerb.Take:
            {
                (bool force, long intervalMs) = WitnessProtocol.ReadTakeArgument(r.Arg);
                // The taker asks once its partner has not heard it answer for a heartbeat timeout, and the owner fences
                // itself (no lease) once its partner has answered none of its heartbeats for as long — checked every half
                // interval: granted once the taker has asked for a heartbeat interval (its asks no further apart than
                // twice that, else this is a new first ask).
                long wait = intervalMs * _ticksPerMs;
                long since = _asked.TryGetValue(key, out Asking a) && a.Node == r.Node && now - a.Last <= 2 * wait + 50 * _ticksPerMs ? a.Since : now;
                if (rec != null && r.Term <= rec.Term)
                {
                    if (r.Term == rec.Term && rec.Owner == r.Node) // a retry of a take granted
                        return new WitnessDecision(key, Answer(r, WitnessResult.Ok, rec, LeaseMs), null, true, null);
                    return new WitnessDecision(key, Answer(r, WitnessResult.Superseded, rec, 0), null, false, null);
                }
                if (rec != null && rec.Owner != r.Node)
                {
                    if (LeaseHeld(key, now))
                        return Refuse(r, rec, FormattableString.Invariant($"{rec.Owner} holds its lease (renewed {(now - _renewed[key]) / _ticksPerMs} ms ago)"), asked: true, since: since);
                    if (rec.Alone && !force)
                        return Refuse(r, rec, FormattableString.Invariant($"{rec.Owner} served alone at term {rec.Term}: {r.Node}'s replica lacks writes it acknowledged"), asked: true, since: since);
                }
                if (now - _startTicks < _leaseTicks && !LeaseHeld(key, now))
                    return Refuse(r, rec, FormattableString.Invariant($"the witness started {(now - _startTicks) / _ticksPerMs} ms ago: it grants nothing before a lease ({LeaseMs} ms) has passed"), asked: true, since: since);
                if (now - since < wait)
                {
                    WitnessDecision notYet = Refuse(r, rec, FormattableString.Invariant($"{r.Node} has asked for {(now - since) / _ticksPerMs} ms: granted once it has asked for its heartbeat interval ({intervalMs} ms), by when the owner has fenced itself"), asked: true, since: since);
                    return notYet with { Answer = notYet.Answer with { Result = WitnessResult.Wait } };
                }
                var taken = new WitnessRecord(r.Term, r.Node, false, rec?.AloneGeneration ?? 0);
                return new WitnessDecision(key, Answer(r, WitnessResult.Ok, taken, LeaseMs), taken, true,
                    FormattableString.Invariant($"{key}: granted to {r.Node} at term {r.Term} (was {(rec == null ? "unknown here" : $"{rec.Owner} at term {rec.Term}{(rec.Alone ? ", alone" : "")}")}){(force && rec is { Alone: true } ? " by force" : "")}"));
            }
        }
        throw new ArgumentOutOfRangeException(nameof(r), r.Verb, "unknown verb");
    }

    /// <summary>Makes a decision so (its record kept first), the lease counted from <paramref name="now"/>, the request's arrival.</summary>
    public void Apply(in WitnessDecision d, long now)
    {
        if (d.Keep != null) _records[d.Key] = d.Keep;
        if (d.Lease) _renewed[d.Key] = now;
        // A lease is the owner's: a new owner's starts now, an old owner's is gone.
        else if (d.Keep != null) _renewed.Remove(d.Key);
        // A take refused is remembered from its first ask (by the same node); a lease granted ends the asking.
        if (d.Asked != null) _asked[d.Key] = new Asking(d.Asked, d.AskedSince ?? now, now);
        else if (d.Lease) _asked.Remove(d.Key);
    }

    private static WitnessAnswer Answer(in WitnessRequest r, WitnessResult result, WitnessRecord? rec, uint leaseMs, string reason = "")
        => new(r.Id, result, rec?.Term ?? 0, rec?.Owner ?? "", rec?.Alone ?? false, rec?.AloneGeneration ?? 0, leaseMs, reason);

    /// <summary>A refusal; <paramref name="asked"/>: a take, which counts as asking (since its episode's first ask, or now).</summary>
    private WitnessDecision Refuse(in WitnessRequest r, WitnessRecord? rec, string reason, bool asked = false, long? since = null)
        => new(r.Key, Answer(r, WitnessResult.Refused, rec, 0, reason), null, false, null, asked ? r.Node : null, since);

    /// <summary>The records as kept in the witness's state file: one line per group, <c>CLUSTER NQN GROUP TERM OWNER ALONE GENERATION</c>.</summary>
    public static string Format(IReadOnlyDictionary<WitnessKey, WitnessRecord> records)
    {
        var sb = new System.Text.StringBuilder();
        foreach ((WitnessKey k, WitnessRecord r) in records.OrderBy(p => p.Key.Cluster, StringComparer.Ordinal).ThenBy(p => p.Key.Nqn, StringComparer.Ordinal).ThenBy(p => p.Key.Group))
            sb.Append(CultureInfo.InvariantCulture, $"{k.Cluster} {k.Nqn} {k.Group} {r.Term} {r.Owner} {(r.Alone ? 1 : 0)} {r.AloneGeneration}\n");
        return sb.ToString();
    }

    /// <summary>Reads a state file's text (<see cref="Format"/>). Throws <see cref="InvalidDataException"/> naming the line that is not a record.</summary>
    public static Dictionary<WitnessKey, WitnessRecord> Parse(string text, string path)
    {
        var records = new Dictionary<WitnessKey, WitnessRecord>();
        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].Trim();
            if (line.Length == 0) continue;
            string[] f = line.Split(' ');
            if (f.Length != 7 || !WireName.IsWord(f[0]) || !WireName.IsWord(f[1]) || !WireName.IsWord(f[4])
                || !uint.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out uint group) || group == 0
                || !ulong.TryParse(f[3], NumberStyles.None, CultureInfo.InvariantCulture, out ulong term)
                || f[5] is not ("0" or "1")
                || !ulong.TryParse(f[6], NumberStyles.None, CultureInfo.InvariantCulture, out ulong generation)
                || !records.TryAdd(new WitnessKey(f[0], f[1], group), new WitnessRecord(term, f[4], f[5] == "1", generation)))
                throw new InvalidDataException(FormattableString.Invariant($"{path}:{i + 1}: not a witness record (expected 'CLUSTER NQN GROUP TERM OWNER ALONE GENERATION', each group once)"));
        }
        return records;
    }
}
