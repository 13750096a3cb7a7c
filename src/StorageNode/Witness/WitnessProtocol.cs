using System.Globalization;
using System.Text;
using StorageNode.Support;

namespace StorageNode.Witness;

/// <summary>What a node asks the witness (docs/ha.md, "The witness").</summary>
public enum WitnessVerb
{
    /// <summary>The owner renews its lease on a group at its term.</summary>
    Renew,
    /// <summary>The owner is about to complete writes its partner's replica lacks: recorded (durably) before the first one.</summary>
    Alone,
    /// <summary>The owner's replicas of the group are in sync again, and the keeper knows: clears the alone record of the generation given.</summary>
    Synced,
    /// <summary>A node asks to own the group at a term past the witness's (an automatic or a manual takeover).</summary>
    Take,
    /// <summary>Who owns the group, as the witness knows: changes nothing.</summary>
    Query,
}

/// <summary>The witness's word on a request.</summary>
public enum WitnessResult
{
    /// <summary>The requester owns the group at the term it named and holds the lease (for <see cref="WitnessAnswer.LeaseMs"/> from its send time).</summary>
    Ok,
    /// <summary>The witness knows a newer term, or another owner at this one: the answer names them.</summary>
    Superseded,
    /// <summary>Not granted; the answer says why (the owner's lease still runs, it served alone, the witness has just started).</summary>
    Refused,
    /// <summary>An answer to <see cref="WitnessVerb.Query"/>.</summary>
    State,
    /// <summary>A take not granted yet: ask again every heartbeat interval (the reason says until when).</summary>
    Wait,
}

/// <summary>The key of a group at the witness: one cluster (a pair), one subsystem, one ANA group.</summary>
public readonly record struct WitnessKey(string Cluster, string Nqn, uint Group)
{
    public override string ToString() => FormattableString.Invariant($"{Cluster} {Nqn} group {Group}");
}

/// <summary>One request datagram: <c>SNW1 ID VERB CLUSTER NODE NQN GROUP TERM [ARG]</c>.</summary>
public readonly record struct WitnessRequest(ulong Id, WitnessVerb Verb, WitnessKey Key, string Node, ulong Term, ulong Arg = 0)
{
    public byte[] Encode() => Encoding.UTF8.GetBytes(FormattableString.Invariant(
        $"{WitnessProtocol.Magic} {Id} {Verb.ToString().ToLowerInvariant()} {Key.Cluster} {Node} {Key.Nqn} {Key.Group} {Term} {Arg}"));
}

/// <summary>
/// One answer datagram: <c>SNW1 ID RESULT TERM OWNER ALONE ALONE-GENERATION LEASE-MS [REASON...]</c>: the group's term and
/// owner as the witness records them after the request, whether its owner served alone (and the generation of that
/// record), and the lease the requester holds from now (0: none).
/// </summary>
public readonly record struct WitnessAnswer(ulong Id, WitnessResult Result, ulong Term, string Owner, bool Alone, ulong AloneGeneration, uint LeaseMs, string Reason = "")
{
    public byte[] Encode() => Encoding.UTF8.GetBytes(FormattableString.Invariant(
        $"{WitnessProtocol.Magic} {Id} {Result.ToString().ToLowerInvariant()} {Term} {(Owner.Length == 0 ? "-" : Owner)} {(Alone ? 1 : 0)} {AloneGeneration} {LeaseMs}{(Reason.Length > 0 ? " " + Reason : "")}"));
}

/// <summary>The witness's datagrams: UTF-8 text, one line, at most <see cref="MaxBytes"/>.</summary>
public static class WitnessProtocol
{
    public const string Magic = "SNW1";
    public const int MaxBytes = 1024;

    /// <summary>
    /// A take's argument: bit 0 force, the rest the taker's heartbeat interval in ms — how often it asks, and how late the
    /// owner's self-fence may run (the witness grants once the taker has asked for at least that long).
    /// </summary>
    public static ulong TakeArgument(bool force, TimeSpan heartbeatInterval) => (force ? 1UL : 0) | ((ulong)heartbeatInterval.TotalMilliseconds << 1);

    public static (bool Force, long IntervalMs) ReadTakeArgument(ulong arg) => ((arg & 1) != 0, (long)Math.Min(arg >> 1, 600_000));

    public static bool TryParseRequest(ReadOnlySpan<byte> datagram, out WitnessRequest request, out string error)
    {
        request = default;
        if (datagram.Length > MaxBytes) { error = "longer than " + MaxBytes.ToString(CultureInfo.InvariantCulture) + " bytes"; return false; }
        string[] f = Encoding.UTF8.GetString(datagram).Split(' ');
        if (f.Length != 9 || f[0] != Magic) { error = "not a witness request (SNW1 ID VERB CLUSTER NODE NQN GROUP TERM ARG)"; return false; }
        if (!ulong.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out ulong id)) { error = $"bad request id '{f[1]}'"; return false; }
        WitnessVerb? verb = f[2] switch
        {
            "renew" => WitnessVerb.Renew,
            "alone" => WitnessVerb.Alone,
            "synced" => WitnessVerb.Synced,
            "take" => WitnessVerb.Take,
            "query" => WitnessVerb.Query,
            _ => null,
        };
        if (verb == null) { error = $"unknown verb '{f[2]}'"; return false; }
        if (!WireName.IsWord(f[3]) || !WireName.IsWord(f[4]) || !WireName.IsWord(f[5])) { error = "a cluster, node or subsystem name is empty, too long or not printable ASCII"; return false; }
        if (!uint.TryParse(f[6], NumberStyles.None, CultureInfo.InvariantCulture, out uint group) || group == 0) { error = $"bad ANA group '{f[6]}'"; return false; }
        if (!ulong.TryParse(f[7], NumberStyles.None, CultureInfo.InvariantCulture, out ulong term)) { error = $"bad term '{f[7]}'"; return false; }
        if (!ulong.TryParse(f[8], NumberStyles.None, CultureInfo.InvariantCulture, out ulong arg)) { error = $"bad argument '{f[8]}'"; return false; }
        request = new WitnessRequest(id, verb.Value, new WitnessKey(f[3], f[5], group), f[4], term, arg);
        error = "";
        return true;
    }

    public static bool TryParseAnswer(ReadOnlySpan<byte> datagram, out WitnessAnswer answer)
    {
        answer = default;
        if (datagram.Length > MaxBytes) return false;
        string[] f = Encoding.UTF8.GetString(datagram).Split(' ', 9);
        if (f.Length < 8 || f[0] != Magic) return false;
        WitnessResult? result = f[2] switch
        {
            "ok" => WitnessResult.Ok,
            "superseded" => WitnessResult.Superseded,
            "refused" => WitnessResult.Refused,
            "state" => WitnessResult.State,
            "wait" => WitnessResult.Wait,
            _ => null,
        };
        if (result == null
            || !ulong.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out ulong id)
            || !ulong.TryParse(f[3], NumberStyles.None, CultureInfo.InvariantCulture, out ulong term)
            || f[5] is not ("0" or "1")
            || !ulong.TryParse(f[6], NumberStyles.None, CultureInfo.InvariantCulture, out ulong aloneGeneration)
            || !uint.TryParse(f[7], NumberStyles.None, CultureInfo.InvariantCulture, out uint leaseMs))
            return false;
        answer = new WitnessAnswer(id, result.Value, term, f[4] == "-" ? "" : f[4], f[5] == "1", aloneGeneration, leaseMs, f.Length > 8 ? f[8] : "");
        return true;
    }
}
