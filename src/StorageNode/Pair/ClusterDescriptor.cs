using System.Text.Json;
using System.Text.Json.Serialization;
using StorageNode.Target;

namespace StorageNode.Pair;

/// <summary>
/// What one node says about a subsystem it exports as part of the pair. The two nodes exchange these over the
/// interconnect and refuse to pair when they disagree on anything a host would see.
/// </summary>
public sealed record ClusterDescriptor
{
    public required string Cluster { get; init; }
    public required string Node { get; init; }
    public required string Partner { get; init; }
    public required string Nqn { get; init; }
    public required string SerialNumber { get; init; }
    public required string ModelNumber { get; init; }
    public required string FirmwareRevision { get; init; }
    public required int ControllerIdMin { get; init; }
    public required int ControllerIdMax { get; init; }
    public required uint MaxNamespaces { get; init; }
    public required List<NamespaceDescriptor> Namespaces { get; init; }
    public required List<GroupDescriptor> Groups { get; init; }
    /// <summary>The interconnect protocol's version (<see cref="InterconnectOpcode.ProtocolVersion"/>): both nodes must speak the same.</summary>
    public int Protocol { get; init; }
    /// <summary>
    /// <c>Cluster:RelayTimeoutMs</c>: both nodes must agree, because an owner that cannot reach its partner bounds what
    /// may still arrive by the partner's relay deadlines.
    /// </summary>
    public int RelayTimeoutMs { get; init; }
    /// <summary>Cluster:Mirror: both nodes keep replicas, or neither.</summary>
    public bool Mirror { get; init; }
    /// <summary>The node's incarnation (random at each start): a new one means the partner restarted. Not compared.</summary>
    public long Incarnation { get; init; }

    public sealed record NamespaceDescriptor(uint Nsid, string Nguid, string Uuid, uint BlockSize, ulong BlockCount, uint AnaGroup);

    /// <summary>A group: its owner as configured (compared), and who owns it now as of which term (docs/ha.md, "Takeover"; not compared).</summary>
    public sealed record GroupDescriptor(uint Id, string Owner, ulong Term = 0, string? CurrentOwner = null);

    private static readonly JsonSerializerOptions Json = new() { DefaultIgnoreCondition = JsonIgnoreCondition.Never };

    public byte[] ToJson() => JsonSerializer.SerializeToUtf8Bytes(this, Json);

    public static ClusterDescriptor FromJson(ReadOnlySpan<byte> utf8)
        => JsonSerializer.Deserialize<ClusterDescriptor>(utf8, Json) ?? throw new JsonException("empty cluster descriptor");

    public static ClusterDescriptor For(Subsystem s, string cluster, string node, string partner, IReadOnlyDictionary<uint, string> groupOwners,
        int relayTimeoutMs, long incarnation, bool mirror = false, Func<uint, GroupTerm?>? terms = null)
    {
        var namespaces = new List<NamespaceDescriptor>();
        foreach (Namespace ns in s.Namespaces)
            namespaces.Add(new NamespaceDescriptor(ns.Nsid, Convert.ToHexString(ns.Nguid), ns.Uuid.ToString(), ns.Bdev.BlockSize, ns.Bdev.BlockCount, ns.AnaGroupId));
        var groups = new List<GroupDescriptor>();
        foreach (uint g in s.AnaGroupIds)
        {
            GroupTerm? t = terms?.Invoke(g);
            groups.Add(new GroupDescriptor(g, groupOwners.TryGetValue(g, out string? o) ? o : node, t?.Term ?? 0, t?.Owner));
        }
        return new ClusterDescriptor
        {
            Cluster = cluster,
            Node = node,
            Partner = partner,
            Nqn = s.Nqn,
            SerialNumber = s.SerialNumber,
            ModelNumber = s.ModelNumber,
            FirmwareRevision = s.FirmwareRevision,
            ControllerIdMin = s.MinCntlid,
            ControllerIdMax = s.MaxCntlid,
            MaxNamespaces = s.MaxNamespaces,
            Namespaces = namespaces,
            Groups = groups,
            Protocol = InterconnectOpcode.ProtocolVersion,
            RelayTimeoutMs = relayTimeoutMs,
            Incarnation = incarnation,
            Mirror = mirror,
        };
    }

    /// <summary>The first disagreement between this node's descriptor and the partner's, or null.</summary>
    public string? Disagreement(ClusterDescriptor partner)
    {
        if (partner.Protocol != Protocol) return $"interconnect protocol {partner.Protocol} (here {Protocol}): both nodes must run the same release";
        if (partner.Cluster != Cluster) return $"cluster name '{partner.Cluster}' (here '{Cluster}')";
        if (partner.RelayTimeoutMs != RelayTimeoutMs) return $"Cluster:RelayTimeoutMs {partner.RelayTimeoutMs} (here {RelayTimeoutMs})";
        if (partner.Mirror != Mirror) return $"Cluster:Mirror {partner.Mirror} (here {Mirror}): both nodes keep replicas, or neither";
        if (partner.Node != Partner) return $"partner calls itself '{partner.Node}', expected '{Partner}'";
        if (partner.Partner != Node) return $"partner expects its partner to be '{partner.Partner}', this node is '{Node}'";
        if (partner.Nqn != Nqn) return $"subsystem NQN '{partner.Nqn}' (here '{Nqn}')";
        if (partner.SerialNumber != SerialNumber) return $"{Nqn}: serial number '{partner.SerialNumber}' (here '{SerialNumber}')";
        if (partner.ModelNumber != ModelNumber) return $"{Nqn}: model number '{partner.ModelNumber}' (here '{ModelNumber}')";
        if (partner.MaxNamespaces != MaxNamespaces) return $"{Nqn}: MaxNamespaces {partner.MaxNamespaces} (here {MaxNamespaces})";
        if (partner.ControllerIdMin <= ControllerIdMax && ControllerIdMin <= partner.ControllerIdMax)
            return $"{Nqn}: controller ID ranges overlap ({partner.ControllerIdMin}-{partner.ControllerIdMax} there, {ControllerIdMin}-{ControllerIdMax} here)";
        foreach (GroupDescriptor g in Groups)
        {
            GroupDescriptor? pg = partner.Groups.Find(x => x.Id == g.Id);
            if (pg == null) return $"{Nqn}: ANA group {g.Id} is missing on the partner";
            if (pg.Owner != g.Owner) return $"{Nqn}: ANA group {g.Id} is owned by '{pg.Owner}' there, by '{g.Owner}' here";
        }
        foreach (GroupDescriptor pg in partner.Groups)
            if (!Groups.Exists(x => x.Id == pg.Id)) return $"{Nqn}: ANA group {pg.Id} exists only on the partner";
        foreach (NamespaceDescriptor n in Namespaces)
        {
            NamespaceDescriptor? pn = partner.Namespaces.Find(x => x.Nsid == n.Nsid);
            if (pn == null) return $"{Nqn}: namespace {n.Nsid} is missing on the partner";
            if (pn.Nguid != n.Nguid) return $"{Nqn}: namespace {n.Nsid} NGUID {pn.Nguid} there, {n.Nguid} here";
            if (pn.Uuid != n.Uuid) return $"{Nqn}: namespace {n.Nsid} UUID {pn.Uuid} there, {n.Uuid} here";
            if (pn.BlockSize != n.BlockSize || pn.BlockCount != n.BlockCount)
                return $"{Nqn}: namespace {n.Nsid} is {pn.BlockCount} x {pn.BlockSize} B there, {n.BlockCount} x {n.BlockSize} B here";
            if (pn.AnaGroup != n.AnaGroup) return $"{Nqn}: namespace {n.Nsid} is in ANA group {pn.AnaGroup} there, {n.AnaGroup} here";
        }
        foreach (NamespaceDescriptor pn in partner.Namespaces)
            if (!Namespaces.Exists(x => x.Nsid == pn.Nsid)) return $"{Nqn}: namespace {pn.Nsid} exists only on the partner";
        return null;
    }
}
