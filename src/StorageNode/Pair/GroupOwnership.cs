using System.Globalization;
using StorageNode.Support;

namespace StorageNode.Pair;

/// <summary>
/// Who owns an ANA group of a paired subsystem, as of which term. Term 0 is the configuration's owner; each takeover
/// makes the taker the owner at the next term. Of two views, the higher term is the truth.
/// </summary>
public readonly record struct GroupTerm(ulong Term, string Owner)
{
    public override string ToString() => FormattableString.Invariant($"{Owner} (term {Term})");
}

/// <summary>What a node did with its partner's view of a group (<see cref="GroupOwnership.Learn"/>).</summary>
public enum OwnershipLearned
{
    /// <summary>Both nodes say the same.</summary>
    Agreed,
    /// <summary>The partner's term is higher: this node took its view (the caller keeps it before acting on it).</summary>
    Adopted,
    /// <summary>This node's term is higher: the partner learns from this node's view.</summary>
    PartnerBehind,
    /// <summary>One term, two owners (each node took the group over while they could not see each other): neither serves it.</summary>
    Conflict,
}

/// <summary>
/// One ANA group's ownership on this node (docs/ha.md, "Takeover"): a state machine with no sockets, files or clock,
/// which the pair drives and keeps (<see cref="GroupOwnershipFile"/>). With <c>Cluster:Mirror</c> a group may change
/// owner, so a node that starts does not serve a group it owned when it stopped until it has heard the partner's view
/// (<see cref="Confirmed"/>): the partner may have taken it over meanwhile. Not thread-safe: the pair's control thread
/// and the management RPC take the pair's ownership lock.
/// </summary>
public sealed class GroupOwnership
{
    public GroupOwnership(uint group, string local, string configuredOwner, GroupTerm? kept, bool mayChange)
    {
        Group = group;
        Local = local;
        ConfiguredOwner = configuredOwner;
        Current = kept ?? new GroupTerm(0, configuredOwner);
        // Without a replica the group never changes owner: nothing to hear first.
        Confirmed = !mayChange;
    }

    public uint Group { get; }
    public string Local { get; }
    public string ConfiguredOwner { get; }
    public GroupTerm Current { get; private set; }

    /// <summary>
    /// This run of the node has heard the partner's view (or made the current term itself): the term is the latest
    /// there is, unless the partner moved on since, which it can do only once it no longer hears this node.
    /// </summary>
    public bool Confirmed { get; private set; }

    /// <summary>Why neither node may serve the group (one term, two owners), or null.</summary>
    public string? Conflict { get; private set; }

    public bool OwnedHere => Current.Owner == Local;

    /// <summary>The group is owned by the node the configuration does not name (it was taken over).</summary>
    public bool TakenOver => Current.Owner != ConfiguredOwner;

    /// <summary>This node may serve the group as its owner.</summary>
    public bool MayServe => OwnedHere && Confirmed && Conflict == null;

    /// <summary>The partner's view of the group, as it said when the interconnect came up.</summary>
    public OwnershipLearned Learn(GroupTerm partner)
    {
        if (partner.Term > Current.Term)
        {
            Current = partner;
            if (Offered is GroupTerm offered && offered.Term <= partner.Term) Offered = null;
            Confirmed = true;
            Conflict = null;
            return OwnershipLearned.Adopted;
        }
        if (partner.Term < Current.Term)
        {
            if (Conflict == null) Confirmed = true;
            return OwnershipLearned.PartnerBehind;
        }
        if (partner.Owner != Current.Owner)
        {
            Conflict = $"both nodes took ANA group {Group} over at term {Current.Term} ({Current.Owner} here, {partner.Owner} on the partner)";
            return OwnershipLearned.Conflict;
        }
        if (Conflict == null) Confirmed = true;
        return OwnershipLearned.Agreed;
    }

    /// <summary>
    /// The witness says this node owns the group at the term it kept, and has recorded that it serves it alone
    /// (docs/ha.md, "The witness"): as good as the partner's view — the partner could have taken the group over only
    /// through the witness. False (nothing changes) for any other term.
    /// </summary>
    public bool ConfirmByWitness(GroupTerm witness)
    {
        if (witness != Current || !OwnedHere || Conflict != null) return false;
        Confirmed = true;
        return true;
    }

    /// <summary>
    /// The term this node offered its partner in a giveback not yet settled (null: none): the partner may own the group
    /// from it, so this node serves nothing of the group meanwhile, and a takeover by this node goes past it.
    /// </summary>
    public GroupTerm? Offered { get; private set; }

    /// <summary>This node, the owner, offers the group to <paramref name="partner"/> at the next term (a giveback); settled by <see cref="Learn"/>, <see cref="TookOver"/> or <see cref="OfferEnded"/>.</summary>
    public GroupTerm Offer(string partner)
    {
        if (!MayServe || Offered != null || partner == Local) throw new InvalidOperationException($"ANA group {Group}: no giveback from {Current}");
        Offered = new GroupTerm(Current.Term + 1, partner);
        return Offered.Value;
    }

    /// <summary>The partner did not take the offered term and never will (it refused it, or said a lower one on a newer association).</summary>
    public void OfferEnded() => Offered = null;

    /// <summary>The term a takeover by this node makes (keep it, then <see cref="TookOver"/>): past one it offered, which the partner may hold.</summary>
    public GroupTerm NextTerm => new(Math.Max(Current.Term, Offered?.Term ?? 0) + 1, Local);

    /// <summary>This node made <paramref name="term"/> (from <see cref="NextTerm"/>, kept first): it owns the group from now on.</summary>
    public void TookOver(GroupTerm term)
    {
        if (term.Owner != Local || term.Term <= Current.Term)
            throw new InvalidOperationException($"ANA group {Group}: {term} does not follow {Current}");
        Current = term;
        Offered = null;
        Confirmed = true;
        Conflict = null;
    }
}

/// <summary>
/// A group's ownership kept in the state directory (<c>NODE-NQN-groupG.owner</c>: <c>TERM OWNER</c>), replaced durably
/// (<see cref="StateFile"/>) before the node acts on a new term.
/// </summary>
public static class GroupOwnershipFile
{
    public static string PathOf(string directory, string node, string nqn, uint group)
        => StateFile.PathOf(directory, node, nqn, FormattableString.Invariant($"group{group}"), "owner");

    /// <summary>The kept term, or null when none was kept. Throws <see cref="InvalidDataException"/> on a file that is not one.</summary>
    public static GroupTerm? Load(string path)
    {
        if (!File.Exists(path)) return null;
        string text = File.ReadAllText(path).Trim();
        int space = text.IndexOf(' ', StringComparison.Ordinal);
        if (space <= 0 || space == text.Length - 1 || !ulong.TryParse(text.AsSpan(0, space), NumberStyles.None, CultureInfo.InvariantCulture, out ulong term))
            throw new InvalidDataException($"{path}: not a group ownership record (expected 'TERM OWNER')");
        return new GroupTerm(term, text[(space + 1)..]);
    }

    public static void Save(string path, GroupTerm term)
        => StateFile.Replace(path, System.Text.Encoding.UTF8.GetBytes(FormattableString.Invariant($"{term.Term} {term.Owner}\n")));
}
