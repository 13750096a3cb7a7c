using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Configuration;
using StorageNode.Bdevs;
using StorageNode.Reactors;
using StorageNode.Target;
using StorageNode.Transport;
using StorageNode.Transport.Rdma;
using StorageNode.Transport.Tcp;

namespace StorageNode.Config;

/// <summary>A configuration problem: <see cref="Key"/> is the full configuration path (e.g. Subsystems:0:Nqn).</summary>
public sealed class ConfigException(string key, string problem) : Exception($"{key}: {problem}")
{
    public string Key { get; } = key;
    public string Problem { get; } = problem;
}

/// <summary>How the HA pair's interconnect runs (<c>Cluster:InterconnectTransport</c>).</summary>
public enum InterconnectTransport
{
    /// <summary>NVMe/RDMA when this node has an RDMA device and the partner answers over RDMA, else NVMe/TCP.</summary>
    Auto,
    /// <summary>NVMe/TCP only.</summary>
    Tcp,
    /// <summary>NVMe/RDMA only (the node refuses to start without an RDMA device).</summary>
    Rdma,
}

public sealed record ListenerConfig(string Transport, IPAddress Address, int Port, string? AdvertiseAddress, ushort PortId, ListenerRole Role = ListenerRole.Combined,
    int RdmaAckTimeout = 0);

public sealed record BdevConfig(string Name, string Type, ulong SizeBytes, uint BlockSize, string? Path, DirectIoMode Direct);

/// <summary>
/// A namespace. <see cref="Bdev"/> backs it on the node that owns its ANA group; on the partner the namespace
/// is relayed and its geometry comes from <see cref="DeclaredBlockSize"/> / <see cref="DeclaredBlockCount"/>.
/// </summary>
public sealed record NamespaceConfig(uint Nsid, string? Bdev, byte[] Nguid, Guid Uuid, uint AnaGroup, uint? DeclaredBlockSize = null, ulong? DeclaredBlockCount = null,
    string? ReplicaBdev = null);

public sealed record AnaGroupConfig(uint Id, string Owner);

/// <summary>The HA pair this node belongs to (absent: a standalone node).</summary>
public sealed record ClusterConfig
{
    public required string Name { get; init; }
    public required string LocalNode { get; init; }
    public required string Partner { get; init; }
    public required IPEndPoint Interconnect { get; init; }
    public required IPEndPoint PartnerInterconnect { get; init; }
    public required IPEndPoint Heartbeat { get; init; }
    public required IPEndPoint PartnerHeartbeat { get; init; }
    public TimeSpan HeartbeatInterval { get; init; } = TimeSpan.FromMilliseconds(100);
    public TimeSpan HeartbeatTimeout { get; init; } = TimeSpan.FromMilliseconds(1000);
    public TimeSpan RelayTimeout { get; init; } = TimeSpan.FromSeconds(5);
    public TimeSpan ReconnectInterval { get; init; } = TimeSpan.FromMilliseconds(500);
    /// <summary>
    /// Each node keeps a RAM replica of the partner's namespaces, and the owner mirrors every write to it before the
    /// write completes (docs/ha.md, "Mirroring").
    /// </summary>
    public bool Mirror { get; init; }

    /// <summary>
    /// With <see cref="Mirror"/>: a group this node took over is given back to its configured owner as soon as that
    /// node's replicas of it are in sync (docs/ha.md, "Giveback"); otherwise only on <c>cluster_giveback</c>.
    /// </summary>
    public bool AutoGiveback { get; init; }

    /// <summary>
    /// How long a region of a mirrored namespace in a file stays marked in the dirty-region record after its last write
    /// (the replica holding it): shorter resyncs after a crash against fewer flushes of the record (docs/ha.md).
    /// </summary>
    public TimeSpan DirtyRecordClearAfter { get; init; } = TimeSpan.FromSeconds(5);
    public InterconnectTransport InterconnectTransport { get; init; } = InterconnectTransport.Auto;
    /// <summary>NVMe/RDMA interconnect: the QPs' local ACK timeout exponent, both directions (0: rdma_cm's default).</summary>
    public int RdmaAckTimeout { get; init; }
    /// <summary>Added to the clock this node shows its partner (<c>Cluster:ClockOffsetSeconds</c>; tests: two machines' clocks on one).</summary>
    public TimeSpan ClockOffset { get; init; }

    /// <summary>
    /// The witness (<c>Cluster:Witness</c>, a <c>storagenode witness</c> at ADDRESS:PORT; docs/ha.md, "The witness"): the
    /// owner of a group holds a lease there, serves alone only once it said so there, and the partner takes a group over
    /// on its own when the witness grants it. Null: no witness (takeover is manual).
    /// </summary>
    public IPEndPoint? Witness { get; init; }

    /// <summary>
    /// With a witness: an owner that hears neither its partner nor the witness stops serving its groups, and completes
    /// writes its partner's replica lacks only once the witness recorded it alone (docs/ha.md, "The witness"). False
    /// (<c>Cluster:SelfFence</c>) is unsafe, for tests that show what the fence prevents: split brain, lost writes.
    /// </summary>
    public bool SelfFence { get; init; } = true;
}

/// <summary>A witness's configuration (<c>storagenode witness</c>; docs/configuration.md, "Witness").</summary>
public sealed record WitnessConfig
{
    /// <summary>The UDP endpoint the witness answers on.</summary>
    public required IPEndPoint Listen { get; init; }
    /// <summary>Where the witness keeps its records (terms, owners, alone records): required.</summary>
    public required string StateDirectory { get; init; }
    /// <summary>How long a lease lasts on the witness's clock from the arrival of the request that renewed it.</summary>
    public TimeSpan Lease { get; init; } = TimeSpan.FromMilliseconds(1500);
}

public sealed record SubsystemConfig(
    string Nqn, string SerialNumber, string ModelNumber, string FirmwareRevision,
    ushort ControllerIdMin, ushort ControllerIdMax, uint MaxNamespaces, bool AllowAnyHost,
    IReadOnlyList<string> Hosts, IReadOnlyList<NamespaceConfig> Namespaces, IReadOnlyList<AnaGroupConfig> AnaGroups);

/// <summary>
/// The node's whole configuration, read from Microsoft.Extensions.Configuration and validated: every key
/// is known, every value in range. The reference is docs/configuration.md.
/// </summary>
public sealed record NodeConfig
{
    public string Name { get; init; } = "node";
    public int ReactorCount { get; init; } = 1;
    public PollMode PollMode { get; init; } = PollMode.Adaptive;
    public TimeSpan AdaptiveSpin { get; init; } = TimeSpan.FromMicroseconds(200);
    public PoolOptions Pools { get; init; } = new();
    public TargetOptions Target { get; init; } = new();
    /// <summary>The NVMe/TCP transport's options (keys under <c>Target:</c>).</summary>
    public TcpTransportOptions Tcp { get; init; } = new();
    public IReadOnlyList<ListenerConfig> Listeners { get; init; } = [];
    public IReadOnlyList<BdevConfig> Bdevs { get; init; } = [];
    public IReadOnlyList<SubsystemConfig> Subsystems { get; init; } = [];
    public ClusterConfig? Cluster { get; init; }
    /// <summary>Path of the management RPC's Unix socket (<c>Control:RpcSocket</c>); null or empty: no RPC server.</summary>
    public string? RpcSocket { get; init; }
    /// <summary>
    /// Where the node keeps state across restarts (<c>Node:StateDirectory</c>): reservations with Persist Through Power
    /// Loss. Null: nowhere (PTPL cannot be set).
    /// </summary>
    public string? StateDirectory { get; init; }
    /// <summary>
    /// <see cref="StateDirectory"/> is the default one (beside the configuration file), not configured: a node that
    /// cannot create it runs without it (and logs why) instead of refusing to start.
    /// </summary>
    public bool StateDirectoryIsDefault { get; init; }

    private static readonly string[] TopKeys = ["Node", "Target", "Listeners", "Bdevs", "Subsystems", "Cluster", "Control", "config"];
    private static readonly string[] ControlKeys = ["RpcSocket"];
    private static readonly string[] ClusterKeys = ["Name", "Partner", "Interconnect", "PartnerInterconnect", "Heartbeat", "PartnerHeartbeat",
        "HeartbeatIntervalMs", "HeartbeatTimeoutMs", "RelayTimeoutMs", "ReconnectIntervalMs", "InterconnectTransport", "RdmaAckTimeout", "ClockOffsetSeconds", "Mirror", "AutoGiveback", "DirtyRecordClearMs", "Witness", "SelfFence"];
    private static readonly string[] WitnessKeys = ["Listen", "StateDirectory", "LeaseMs"];
    private static readonly string[] AnaGroupKeys = ["Id", "Owner"];
    private static readonly string[] NodeKeys = ["Name", "Reactors", "PollMode", "AdaptiveSpinMicroseconds", "Pools", "StateDirectory"];
    private static readonly string[] PoolKeys = ["SmallBufferSize", "SmallBufferCount", "MediumBufferSize", "MediumBufferCount", "LargeBufferSize", "LargeBufferCount"];
    private static readonly string[] TargetKeys = ["MaxQueueDepth", "AdminQueueDepth", "MaxIoQueues", "MaxIoSize", "InCapsuleDataSize",
        "MaxH2CDataSize", "MaxR2TPerCommand", "MaxC2HDataSize", "C2HSuccess", "KeepAliveGranularityMs", "ReceiveBufferSize",
        "MaxConnections", "TcpKeepAliveSeconds"];
    private static readonly string[] ListenerKeys = ["Transport", "Address", "Port", "AdvertiseAddress", "PortId", "Role", "RdmaAckTimeout"];
    private static readonly string[] BdevKeys = ["Name", "Type", "SizeMiB", "BlockSize", "Path", "Direct"];
    private static readonly string[] SubsystemKeys = ["Nqn", "SerialNumber", "ModelNumber", "FirmwareRevision", "ControllerIdMin",
        "ControllerIdMax", "MaxNamespaces", "AllowAnyHost", "Hosts", "Namespaces", "AnaGroups"];
    private static readonly string[] NamespaceKeys = ["Nsid", "Bdev", "Nguid", "Uuid", "AnaGroup", "SizeMiB", "BlockSize", "ReplicaBdev"];

    /// <summary>Reads and validates; throws <see cref="ConfigException"/> naming the first bad key.</summary>
    public static NodeConfig Load(IConfiguration root)
    {
        CheckKeys(root, "", TopKeys);
        IConfigurationSection node = root.GetSection("Node");
        CheckKeys(node, "Node", NodeKeys);
        IConfigurationSection pools = node.GetSection("Pools");
        CheckKeys(pools, "Node:Pools", PoolKeys);
        IConfigurationSection target = root.GetSection("Target");
        CheckKeys(target, "Target", TargetKeys);

        var defaults = new PoolOptions();
        var poolOptions = new PoolOptions
        {
            SmallBufferSize = Int(pools, "SmallBufferSize", defaults.SmallBufferSize, 4096, 1 << 20, multipleOf: 4096),
            SmallBufferCount = Int(pools, "SmallBufferCount", defaults.SmallBufferCount, 16, 1 << 20),
            MediumBufferSize = Int(pools, "MediumBufferSize", defaults.MediumBufferSize, 4096, 16 << 20, multipleOf: 4096),
            MediumBufferCount = Int(pools, "MediumBufferCount", defaults.MediumBufferCount, 1, 1 << 16),
            LargeBufferSize = Int(pools, "LargeBufferSize", defaults.LargeBufferSize, 4096, 64 << 20, multipleOf: 4096),
            LargeBufferCount = Int(pools, "LargeBufferCount", defaults.LargeBufferCount, 1, 1 << 16),
        };
        if (poolOptions.MediumBufferSize < poolOptions.SmallBufferSize)
            throw new ConfigException("Node:Pools:MediumBufferSize", "must not be smaller than SmallBufferSize");
        if (poolOptions.LargeBufferSize < poolOptions.MediumBufferSize)
            throw new ConfigException("Node:Pools:LargeBufferSize", "must not be smaller than MediumBufferSize");

        var td = new TargetOptions();
        var targetOptions = new TargetOptions
        {
            MaxQueueDepth = Int(target, "MaxQueueDepth", td.MaxQueueDepth, 2, 4096),
            AdminQueueDepth = Int(target, "AdminQueueDepth", td.AdminQueueDepth, 32, 4096),
            MaxIoQueues = Int(target, "MaxIoQueues", td.MaxIoQueues, 1, 1024),
            MaxIoSize = (uint)Int(target, "MaxIoSize", (int)td.MaxIoSize, 4096, 64 << 20, powerOfTwo: true),
            InCapsuleDataSize = (uint)Int(target, "InCapsuleDataSize", (int)td.InCapsuleDataSize, 0, 1 << 20, multipleOf: 16),
            KeepAliveGranularityMs = (uint)Int(target, "KeepAliveGranularityMs", (int)td.KeepAliveGranularityMs, 100, 60000, multipleOf: 100),
            MaxConnections = Int(target, "MaxConnections", td.MaxConnections, 1, 65536),
        };
        // The NVMe/TCP transport's own options, under Target: as before they were the transport's.
        var tcpd = new TcpTransportOptions();
        var tcpOptions = new TcpTransportOptions
        {
            MaxH2CDataSize = (uint)Int(target, "MaxH2CDataSize", (int)tcpd.MaxH2CDataSize, 4096, 16 << 20, multipleOf: 4),
            MaxR2TPerCommand = Int(target, "MaxR2TPerCommand", tcpd.MaxR2TPerCommand, 1, 64),
            MaxC2HDataSize = (uint)Int(target, "MaxC2HDataSize", (int)tcpd.MaxC2HDataSize, 4096, 16 << 20),
            C2HSuccess = Bool(target, "C2HSuccess", tcpd.C2HSuccess),
            ReceiveBufferSize = Int(target, "ReceiveBufferSize", tcpd.ReceiveBufferSize, 16384, 64 << 20),
            KeepAliveSeconds = Int(target, "TcpKeepAliveSeconds", tcpd.KeepAliveSeconds, 0, 7200),
        };
        if (targetOptions.MaxIoSize > poolOptions.LargeBufferSize)
            throw new ConfigException("Target:MaxIoSize", $"{targetOptions.MaxIoSize} exceeds Node:Pools:LargeBufferSize ({poolOptions.LargeBufferSize})");
        uint icd = Math.Max(targetOptions.InCapsuleDataSize, targetOptions.AdminInCapsuleDataSize);
        if (icd > (uint)poolOptions.SmallBufferSize)
            throw new ConfigException("Target:InCapsuleDataSize", $"{icd} exceeds Node:Pools:SmallBufferSize ({poolOptions.SmallBufferSize})");

        string name = Str(node, "Name", "node");
        if (name.Length == 0 || name.Length > 64) throw new ConfigException("Node:Name", "must be 1 to 64 characters");

        ClusterConfig? cluster = LoadCluster(root.GetSection("Cluster"), name);
        IConfigurationSection control = root.GetSection("Control");
        CheckKeys(control, "Control", ControlKeys);
        string? rpcSocket = control["RpcSocket"];
        if (!string.IsNullOrEmpty(rpcSocket))
        {
            if (!Path.IsPathFullyQualified(rpcSocket)) throw new ConfigException("Control:RpcSocket", $"'{rpcSocket}' is not an absolute path");
            // sockaddr_un holds 108 bytes with the terminating NUL.
            if (System.Text.Encoding.UTF8.GetByteCount(rpcSocket) > 107) throw new ConfigException("Control:RpcSocket", "is longer than a Unix socket path may be (107 bytes)");
            string? dir = Path.GetDirectoryName(rpcSocket);
            if (dir != null && !Directory.Exists(dir)) throw new ConfigException("Control:RpcSocket", $"folder {dir} does not exist");
        }
        string? stateDir = node["StateDirectory"];
        if (!string.IsNullOrEmpty(stateDir) && !Path.IsPathFullyQualified(stateDir))
            throw new ConfigException("Node:StateDirectory", $"'{stateDir}' is not an absolute path");
        var cfg = new NodeConfig
        {
            Name = name,
            StateDirectory = string.IsNullOrEmpty(stateDir) ? null : stateDir,
            Cluster = cluster,
            RpcSocket = string.IsNullOrEmpty(rpcSocket) ? null : rpcSocket,
            ReactorCount = Int(node, "Reactors", 1, 1, 64),
            PollMode = Enum<PollMode>(node, "PollMode", PollMode.Adaptive),
            AdaptiveSpin = TimeSpan.FromMicroseconds(Int(node, "AdaptiveSpinMicroseconds", 200, 0, 1_000_000)),
            Pools = poolOptions,
            Target = targetOptions,
            Tcp = tcpOptions,
            Listeners = LoadListeners(root.GetSection("Listeners"), cluster),
            Bdevs = LoadBdevs(root.GetSection("Bdevs")),
        };
        return cfg with { Subsystems = LoadSubsystems(root.GetSection("Subsystems"), cfg.Bdevs, name, cluster) };
    }

    private static ClusterConfig? LoadCluster(IConfigurationSection c, string localNode)
    {
        if (!c.Exists()) return null;
        CheckKeys(c, "Cluster", ClusterKeys);
        string name = Required(c, "Name");
        string partner = Required(c, "Partner");
        if (partner == localNode) throw new ConfigException("Cluster:Partner", $"'{partner}' is this node's own name (Node:Name)");
        IPEndPoint ic = Endpoint(c, "Interconnect");
        IPEndPoint pic = Endpoint(c, "PartnerInterconnect");
        IPEndPoint hb = Endpoint(c, "Heartbeat");
        IPEndPoint phb = Endpoint(c, "PartnerHeartbeat");
        if (ic.Equals(pic)) throw new ConfigException("Cluster:PartnerInterconnect", "is the same endpoint as Cluster:Interconnect");
        if (hb.Equals(phb)) throw new ConfigException("Cluster:PartnerHeartbeat", "is the same endpoint as Cluster:Heartbeat");
        int interval = Int(c, "HeartbeatIntervalMs", 100, 10, 10_000);
        int timeout = Int(c, "HeartbeatTimeoutMs", 1000, 50, 120_000);
        if (timeout < 3 * interval) throw new ConfigException("Cluster:HeartbeatTimeoutMs", $"{timeout} must be at least three heartbeat intervals ({3 * interval})");
        InterconnectTransport transport = Enum<InterconnectTransport>(c, "InterconnectTransport", InterconnectTransport.Auto);
        int ackTimeout = Int(c, "RdmaAckTimeout", 0, 0, 31);
        if (ackTimeout != 0 && transport == InterconnectTransport.Tcp)
            throw new ConfigException("Cluster:RdmaAckTimeout", "is for an NVMe/RDMA interconnect, and Cluster:InterconnectTransport is tcp");
        if (Bool(c, "AutoGiveback", false) && !Bool(c, "Mirror", false))
            throw new ConfigException("Cluster:AutoGiveback", "needs Cluster:Mirror = true (a group changes owner only with replicas)");
        IPEndPoint? witness = c["Witness"] is { Length: > 0 } ? Endpoint(c, "Witness") : null;
        if (witness != null && !Bool(c, "Mirror", false))
            throw new ConfigException("Cluster:Witness", "needs Cluster:Mirror = true (a group changes owner only with replicas)");
        if (witness != null && (witness.Equals(hb) || witness.Equals(phb) || witness.Equals(ic) || witness.Equals(pic)))
            throw new ConfigException("Cluster:Witness", $"{witness} is one of the pair's own endpoints: the witness is a third process (storagenode witness)");
        if (!Bool(c, "SelfFence", true) && witness == null)
            throw new ConfigException("Cluster:SelfFence", "is for a pair with a witness (Cluster:Witness)");
        if (witness != null)
            foreach ((string key, string value) in new[] { ("Cluster:Name", name), ("Cluster:Partner", partner), ("Node:Name", localNode) })
                if (!Support.WireName.IsWord(value))
                    throw new ConfigException(key, $"'{value}' has a space or a character that is not printable ASCII: the witness protocol carries it as one word");
        return new ClusterConfig
        {
            Name = name,
            LocalNode = localNode,
            Partner = partner,
            Interconnect = ic,
            PartnerInterconnect = pic,
            Heartbeat = hb,
            PartnerHeartbeat = phb,
            HeartbeatInterval = TimeSpan.FromMilliseconds(interval),
            HeartbeatTimeout = TimeSpan.FromMilliseconds(timeout),
            RelayTimeout = TimeSpan.FromMilliseconds(Int(c, "RelayTimeoutMs", 5000, 100, 600_000)),
            ReconnectInterval = TimeSpan.FromMilliseconds(Int(c, "ReconnectIntervalMs", 500, 50, 60_000)),
            InterconnectTransport = transport,
            RdmaAckTimeout = ackTimeout,
            ClockOffset = TimeSpan.FromSeconds(Int(c, "ClockOffsetSeconds", 0, -30 * 86400, 30 * 86400)),
            Mirror = Bool(c, "Mirror", false),
            AutoGiveback = Bool(c, "AutoGiveback", false),
            DirtyRecordClearAfter = TimeSpan.FromMilliseconds(Int(c, "DirtyRecordClearMs", 5000, 100, 3_600_000)),
            Witness = witness,
            SelfFence = Bool(c, "SelfFence", true),
        };
    }

    /// <summary>A witness's configuration (<c>storagenode witness</c>): the section <c>Witness</c> and nothing else.</summary>
    public static WitnessConfig LoadWitness(IConfiguration root)
    {
        CheckKeys(root, "", ["Witness", "config"]);
        IConfigurationSection w = root.GetSection("Witness");
        CheckKeys(w, "Witness", WitnessKeys);
        // Required: a witness that forgot an owner's alone record after a restart would grant its group to a partner whose
        // replica lacks writes the owner acknowledged (if the owner died meanwhile, nothing says it again).
        string dir = Required(w, "StateDirectory");
        if (!Path.IsPathFullyQualified(dir))
            throw new ConfigException("Witness:StateDirectory", $"'{dir}' is not an absolute path");
        return new WitnessConfig
        {
            Listen = Endpoint(w, "Listen"),
            StateDirectory = dir,
            Lease = TimeSpan.FromMilliseconds(Int(w, "LeaseMs", 1500, 200, 600_000)),
        };
    }

    private static IPEndPoint Endpoint(IConfigurationSection s, string key)
    {
        string text = Required(s, key);
        if (!IPEndPoint.TryParse(text, out IPEndPoint? ep) || ep.Port == 0)
            throw new ConfigException($"{s.Path}:{key}", $"'{text}' is not ADDRESS:PORT (an IP address and a non-zero port)");
        return ep;
    }

    private static List<ListenerConfig> LoadListeners(IConfigurationSection section, ClusterConfig? cluster)
    {
        var list = new List<ListenerConfig>();
        var seen = new HashSet<(string, string, int)>(); // TCP and RDMA (rdma_cm) ports are separate spaces
        foreach (IConfigurationSection l in Items(section))
        {
            CheckKeys(l, l.Path, ListenerKeys);
            string transport = Str(l, "Transport", "tcp").ToLowerInvariant();
            if (!Transports.Names.Contains(transport))
                throw new ConfigException($"{l.Path}:Transport", $"'{transport}' is not supported (supported: {string.Join(", ", Transports.Names)})");
            string addrText = Required(l, "Address");
            if (!IPAddress.TryParse(addrText, out IPAddress? addr)) throw new ConfigException($"{l.Path}:Address", $"'{addrText}' is not an IP address");
            int port = Int(l, "Port", 4420, 0, 65535);
            if (port != 0 && !seen.Add((transport, addr.ToString(), port))) throw new ConfigException($"{l.Path}:Port", $"{addr}:{port} is configured twice ({transport})");
            string? adv = l["AdvertiseAddress"];
            ushort portId = (ushort)Int(l, "PortId", list.Count + 1, 0, 0xFFFE);
            ListenerRole role = Enum<ListenerRole>(l, "Role", ListenerRole.Combined);
            if (role == ListenerRole.Interconnect)
                throw new ConfigException($"{l.Path}:Role", "the interconnect listener is configured as Cluster:Interconnect");
            if (role != ListenerRole.Combined && cluster == null)
                throw new ConfigException($"{l.Path}:Role", $"'{role.ToString().ToLowerInvariant()}' needs a Cluster section (a standalone node has no partner)");
            if (cluster != null && addr.Equals(cluster.Interconnect.Address) && port == cluster.Interconnect.Port)
                throw new ConfigException($"{l.Path}:Port", $"{addr}:{port} is the interconnect endpoint");
            int ackTimeout = Int(l, "RdmaAckTimeout", 0, 0, 31);
            if (ackTimeout != 0 && transport != RdmaTransport.TransportName) throw new ConfigException($"{l.Path}:RdmaAckTimeout", $"is for rdma listeners (this one is {transport})");
            list.Add(new ListenerConfig(transport, addr, port, string.IsNullOrEmpty(adv) ? null : adv, portId, role, ackTimeout));
        }
        return list;
    }

    private static List<BdevConfig> LoadBdevs(IConfigurationSection section)
    {
        var list = new List<BdevConfig>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (IConfigurationSection b in Items(section))
        {
            CheckKeys(b, b.Path, BdevKeys);
            string name = Required(b, "Name");
            if (!names.Add(name)) throw new ConfigException($"{b.Path}:Name", $"bdev '{name}' is defined twice");
            string type = Required(b, "Type").ToLowerInvariant();
            if (type is not ("malloc" or "null" or "file"))
                throw new ConfigException($"{b.Path}:Type", $"'{type}' is not a bdev type (malloc, null, file)");
            uint blockSize = (uint)Int(b, "BlockSize", 512, 512, 65536, powerOfTwo: true);
            string? path = b["Path"];
            long sizeMiB = Long(b, "SizeMiB", type == "file" ? 0 : -1, 0, 1L << 24);
            if (type != "file" && sizeMiB <= 0) throw new ConfigException($"{b.Path}:SizeMiB", "is required (a size in MiB, at least 1)");
            if (type == "file" && string.IsNullOrWhiteSpace(path)) throw new ConfigException($"{b.Path}:Path", "is required for a file bdev");
            if (type != "file" && path != null) throw new ConfigException($"{b.Path}:Path", "is only valid for a file bdev");
            DirectIoMode direct = Enum<DirectIoMode>(b, "Direct", DirectIoMode.Auto);
            list.Add(new BdevConfig(name, type, (ulong)sizeMiB * 1024 * 1024, blockSize, path, direct));
        }
        return list;
    }

    private static List<SubsystemConfig> LoadSubsystems(IConfigurationSection section, IReadOnlyList<BdevConfig> bdevs, string localNode, ClusterConfig? cluster)
    {
        var list = new List<SubsystemConfig>();
        var nqns = new HashSet<string>(StringComparer.Ordinal);
        var usedBdevs = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (IConfigurationSection s in Items(section))
        {
            CheckKeys(s, s.Path, SubsystemKeys);
            string nqn = Required(s, "Nqn");
            ValidateNqn($"{s.Path}:Nqn", nqn);
            if (nqn == Nvme.Spec.WellKnownNqn.Discovery) throw new ConfigException($"{s.Path}:Nqn", "the discovery NQN is reserved");
            if (!nqns.Add(nqn)) throw new ConfigException($"{s.Path}:Nqn", $"subsystem '{nqn}' is defined twice");
            string serial = Str(s, "SerialNumber", DefaultSerial(nqn));
            if (serial.Length is 0 or > 20 || !IsPrintableAscii(serial)) throw new ConfigException($"{s.Path}:SerialNumber", "must be 1 to 20 printable ASCII characters");
            string model = Str(s, "ModelNumber", "StorageNode");
            if (model.Length is 0 or > 40 || !IsPrintableAscii(model)) throw new ConfigException($"{s.Path}:ModelNumber", "must be 1 to 40 printable ASCII characters");
            string fw = Str(s, "FirmwareRevision", ThisAssembly.FirmwareRevision);
            if (fw.Length is 0 or > 8 || !IsPrintableAscii(fw)) throw new ConfigException($"{s.Path}:FirmwareRevision", "must be 1 to 8 printable ASCII characters");
            int min = Int(s, "ControllerIdMin", 1, 1, 0xFFEF);
            int max = Int(s, "ControllerIdMax", 0xFFEF, 1, 0xFFEF);
            if (max < min) throw new ConfigException($"{s.Path}:ControllerIdMax", $"{max} is below ControllerIdMin ({min})");
            uint maxNs = (uint)Int(s, "MaxNamespaces", 32, 1, 1024);
            bool any = Bool(s, "AllowAnyHost", true);
            var hosts = new List<string>();
            foreach (IConfigurationSection h in Items(s.GetSection("Hosts")))
            {
                string hn = h.Value ?? "";
                ValidateNqn(h.Path, hn);
                hosts.Add(hn);
            }
            if (!any && hosts.Count == 0) throw new ConfigException($"{s.Path}:Hosts", "AllowAnyHost is false but no host is listed");

            var groups = new List<AnaGroupConfig>();
            foreach (IConfigurationSection g in Items(s.GetSection("AnaGroups")))
            {
                CheckKeys(g, g.Path, AnaGroupKeys);
                uint gid = (uint)Long(g, "Id", -1, 1, maxNs);
                if (gid == uint.MaxValue) throw new ConfigException($"{g.Path}:Id", "is required");
                if (groups.Any(x => x.Id == gid)) throw new ConfigException($"{g.Path}:Id", $"ANA group {gid} is listed twice");
                string owner = Required(g, "Owner");
                if (owner != localNode && owner != cluster?.Partner)
                    throw new ConfigException($"{g.Path}:Owner", $"'{owner}' is neither this node ('{localNode}') nor its partner{(cluster == null ? " (no Cluster section)" : $" ('{cluster.Partner}')")}");
                groups.Add(new AnaGroupConfig(gid, owner));
            }

            var namespaces = new List<NamespaceConfig>();
            var nsids = new HashSet<uint>();
            foreach (IConfigurationSection n in Items(s.GetSection("Namespaces")))
            {
                CheckKeys(n, n.Path, NamespaceKeys);
                uint nsid = (uint)Long(n, "Nsid", namespaces.Count + 1, 1, maxNs);
                if (!nsids.Add(nsid)) throw new ConfigException($"{n.Path}:Nsid", $"NSID {nsid} is used twice in {nqn}");
                uint group = (uint)Long(n, "AnaGroup", nsid, 1, maxNs);
                AnaGroupConfig? gc = groups.FirstOrDefault(x => x.Id == group);
                if (gc == null && cluster != null)
                    throw new ConfigException($"{n.Path}:AnaGroup", $"ANA group {group} has no owner: list it under {s.Path}:AnaGroups");
                bool local = gc == null || gc.Owner == localNode;
                string? bdev = n["Bdev"];
                string? replicaBdev = string.IsNullOrEmpty(n["ReplicaBdev"]) ? null : n["ReplicaBdev"]; // empty: none (an override can clear it)
                uint? declaredBlockSize = n["BlockSize"] != null ? (uint)Int(n, "BlockSize", 512, 512, 65536, powerOfTwo: true) : null;
                long declaredMiB = Long(n, "SizeMiB", -1, 1, 1L << 24);
                if (local)
                {
                    if (string.IsNullOrWhiteSpace(bdev)) throw new ConfigException($"{n.Path}:Bdev", "is required (this node owns the namespace's ANA group)");
                    BdevConfig? bc = bdevs.FirstOrDefault(b => b.Name == bdev);
                    if (bc == null) throw new ConfigException($"{n.Path}:Bdev", $"no bdev named '{bdev}' (see Bdevs)");
                    if (usedBdevs.TryGetValue(bdev, out string? other)) throw new ConfigException($"{n.Path}:Bdev", $"bdev '{bdev}' is already {other}");
                    usedBdevs[bdev] = $"the namespace {nqn} NSID {nsid}";
                    if (declaredBlockSize is uint dbs && dbs != bc.BlockSize)
                        throw new ConfigException($"{n.Path}:BlockSize", $"{dbs} differs from bdev '{bdev}' ({bc.BlockSize})");
                    if (declaredMiB > 0 && bc.SizeBytes != 0 && (ulong)declaredMiB * 1024 * 1024 != bc.SizeBytes)
                        throw new ConfigException($"{n.Path}:SizeMiB", $"{declaredMiB} differs from bdev '{bdev}' ({bc.SizeBytes >> 20} MiB)");
                    if (replicaBdev != null)
                        throw new ConfigException($"{n.Path}:ReplicaBdev", "must not be set on the node that owns the namespace's ANA group (the partner keeps the replica)");
                }
                else
                {
                    if (bdev != null) throw new ConfigException($"{n.Path}:Bdev", $"must not be set: ANA group {group} is owned by the partner '{gc!.Owner}', which holds the data");
                    if (declaredMiB <= 0) throw new ConfigException($"{n.Path}:SizeMiB", "is required for a namespace the partner owns (both nodes present the same size)");
                    declaredBlockSize ??= 512;
                    if (replicaBdev != null)
                    {
                        // The replica this node keeps of the partner's namespace (Cluster:Mirror): a bdev of this node's.
                        if (cluster is not { Mirror: true }) throw new ConfigException($"{n.Path}:ReplicaBdev", "needs Cluster:Mirror = true (without it no replica is kept)");
                        BdevConfig? rc = bdevs.FirstOrDefault(b => b.Name == replicaBdev);
                        if (rc == null) throw new ConfigException($"{n.Path}:ReplicaBdev", $"no bdev named '{replicaBdev}' (see Bdevs)");
                        if (rc.Type == "null") throw new ConfigException($"{n.Path}:ReplicaBdev", $"bdev '{replicaBdev}' is a null bdev: it keeps nothing");
                        if (usedBdevs.TryGetValue(replicaBdev, out string? other)) throw new ConfigException($"{n.Path}:ReplicaBdev", $"bdev '{replicaBdev}' is already {other}");
                        usedBdevs[replicaBdev] = $"the replica of {nqn} NSID {nsid}";
                        if (rc.BlockSize != declaredBlockSize)
                            throw new ConfigException($"{n.Path}:ReplicaBdev", $"bdev '{replicaBdev}' has {rc.BlockSize}-byte blocks, the namespace {declaredBlockSize}");
                        if (rc.SizeBytes != 0 && rc.SizeBytes != (ulong)declaredMiB * 1024 * 1024)
                            throw new ConfigException($"{n.Path}:ReplicaBdev", $"bdev '{replicaBdev}' is {rc.SizeBytes >> 20} MiB, the namespace {declaredMiB} MiB");
                    }
                }
                byte[] nguid = n["Nguid"] is { } ng ? ParseHex($"{n.Path}:Nguid", ng, 16) : DerivedId("nguid", nqn, nsid);
                Guid uuid;
                if (n["Uuid"] is { } us)
                {
                    if (!Guid.TryParse(us, out uuid)) throw new ConfigException($"{n.Path}:Uuid", $"'{us}' is not a UUID");
                }
                else
                {
                    uuid = DerivedUuid("uuid", nqn, nsid);
                }
                if (nguid.All(b => b == 0)) throw new ConfigException($"{n.Path}:Nguid", "must not be all zero");
                ulong? declaredBlocks = declaredMiB > 0 ? (ulong)declaredMiB * 1024 * 1024 / (declaredBlockSize ?? 512) : null;
                namespaces.Add(new NamespaceConfig(nsid, local ? bdev : null, nguid, uuid, group, declaredBlockSize, declaredBlocks, replicaBdev));
            }
            list.Add(new SubsystemConfig(nqn, serial, model, fw, (ushort)min, (ushort)max, maxNs, any, hosts, namespaces, groups));
        }
        return list;
    }

    /// <summary>Identifiers derived from the NQN and NSID, so every node of a pair computes the same ones.</summary>
    public static byte[] DerivedId(string kind, string nqn, uint nsid)
        => SHA256.HashData(Encoding.UTF8.GetBytes($"storagenode:{kind}:{nqn}:{nsid}"))[..16];

    /// <summary>A name-based UUID (version 8, RFC 4122 variant) from <see cref="DerivedId"/>.</summary>
    public static Guid DerivedUuid(string kind, string nqn, uint nsid)
    {
        byte[] u = DerivedId(kind, nqn, nsid);
        u[6] = (byte)((u[6] & 0x0F) | 0x80); // version 8 (name-based, custom hash)
        u[8] = (byte)((u[8] & 0x3F) | 0x80); // RFC 4122 variant
        return new Guid(u, bigEndian: true);
    }

    private static string DefaultSerial(string nqn)
        => "SN" + Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(nqn)))[..18];

    private static void ValidateNqn(string key, string nqn)
    {
        if (NqnProblem(nqn) is string problem) throw new ConfigException(key, problem);
    }

    /// <summary>What is wrong with an NQN as a configured name (null: nothing).</summary>
    public static string? NqnProblem(string nqn)
    {
        if (nqn.Length is < 11 or > 223) return $"'{nqn}' must be 11 to 223 characters";
        if (!nqn.StartsWith("nqn.", StringComparison.Ordinal)) return $"'{nqn}' must start with 'nqn.'";
        if (!IsPrintableAscii(nqn)) return "must be printable ASCII";
        return null;
    }

    private static bool IsPrintableAscii(string s)
    {
        foreach (char c in s) if (c < 0x20 || c > 0x7E) return false;
        return true;
    }

    private static byte[] ParseHex(string key, string text, int bytes)
    {
        string hex = text.Replace("-", "", StringComparison.Ordinal).Replace(":", "", StringComparison.Ordinal);
        if (hex.Length != bytes * 2) throw new ConfigException(key, $"'{text}' must be {bytes * 2} hex digits");
        try { return Convert.FromHexString(hex); }
        catch (FormatException) { throw new ConfigException(key, $"'{text}' is not hexadecimal"); }
    }

    private static IEnumerable<IConfigurationSection> Items(IConfigurationSection section)
    {
        var children = section.GetChildren().ToList();
        foreach (IConfigurationSection c in children)
            if (!int.TryParse(c.Key, NumberStyles.None, CultureInfo.InvariantCulture, out _))
                throw new ConfigException(c.Path, "is not a list index: this setting is a list (JSON array)");
        return children.OrderBy(c => int.Parse(c.Key, CultureInfo.InvariantCulture));
    }

    private static void CheckKeys(IConfiguration section, string path, string[] allowed)
    {
        foreach (IConfigurationSection c in section.GetChildren())
        {
            if (!allowed.Contains(c.Key, StringComparer.OrdinalIgnoreCase))
            {
                string full = path.Length == 0 ? c.Key : $"{path}:{c.Key}";
                throw new ConfigException(full, $"unknown setting (allowed here: {string.Join(", ", allowed.Where(a => a != "config"))})");
            }
        }
    }

    private static string Required(IConfigurationSection s, string key)
    {
        string? v = s[key];
        if (string.IsNullOrWhiteSpace(v)) throw new ConfigException($"{s.Path}:{key}", "is required");
        return v;
    }

    private static string Str(IConfigurationSection s, string key, string dflt) => s[key] ?? dflt;

    private static int Int(IConfigurationSection s, string key, int dflt, int min, int max, int multipleOf = 1, bool powerOfTwo = false)
        => (int)Long(s, key, dflt, min, max, multipleOf, powerOfTwo);

    private static long Long(IConfigurationSection s, string key, long dflt, long min, long max, int multipleOf = 1, bool powerOfTwo = false)
    {
        string? v = s[key];
        long value = dflt;
        string full = s.Path.Length == 0 ? key : $"{s.Path}:{key}";
        if (v != null)
        {
            bool ok = v.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
                ? long.TryParse(v.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out value)
                : long.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out value);
            if (!ok) throw new ConfigException(full, $"'{v}' is not an integer");
        }
        else if (dflt < min)
        {
            return dflt;
        }
        if (value < min || value > max) throw new ConfigException(full, $"{value} is outside {min}..{max}");
        if (value % multipleOf != 0) throw new ConfigException(full, $"{value} is not a multiple of {multipleOf}");
        if (powerOfTwo && (value & (value - 1)) != 0) throw new ConfigException(full, $"{value} is not a power of two");
        return value;
    }

    private static bool Bool(IConfigurationSection s, string key, bool dflt)
    {
        string? v = s[key];
        if (v == null) return dflt;
        if (bool.TryParse(v, out bool b)) return b;
        throw new ConfigException($"{s.Path}:{key}", $"'{v}' is not true or false");
    }

    private static T Enum<T>(IConfigurationSection s, string key, T dflt) where T : struct, System.Enum
    {
        string? v = s[key];
        if (v == null) return dflt;
        if (System.Enum.TryParse(v, ignoreCase: true, out T e) && System.Enum.IsDefined(e) && !int.TryParse(v, out _)) return e;
        throw new ConfigException($"{s.Path}:{key}", $"'{v}' is not one of {string.Join(", ", System.Enum.GetNames<T>().Select(n => n.ToLowerInvariant()))}");
    }
}

internal static class ThisAssembly
{
    public const string FirmwareRevision = "0.1";
}
