using StorageNode.Bdevs;
using StorageNode.Config;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;

namespace StorageNode.Target;

public enum SubsystemKind { Nvm, Discovery }

/// <summary>Whether the partner's ANA groups can be reached through the interconnect.</summary>
public enum PartnerAccess { Unavailable, Transitioning, Available }

/// <summary>A namespace: an NSID bound to a bdev, with the identifiers hosts use to recognise it.</summary>
public sealed class Namespace
{
    public uint Nsid { get; }
    public Bdev Bdev { get; }
    public byte[] Nguid { get; }
    public Guid Uuid { get; }
    public uint AnaGroupId { get; }

    /// <summary>
    /// True when the data lives elsewhere (the partner owns the namespace): I/O goes to the channel as whole
    /// commands (<see cref="ICommandChannel"/>).
    /// </summary>
    public bool IsRemote { get; }

    /// <summary>One channel per reactor, indexed by reactor id.</summary>
    internal BdevChannel[] Channels { get; private set; } = [];

    public Namespace(uint nsid, Bdev bdev, byte[] nguid, Guid uuid, uint anaGroupId)
    {
        if (nguid.Length != 16) throw new ArgumentException("NGUID must be 16 bytes", nameof(nguid));
        Nsid = nsid;
        Bdev = bdev;
        Nguid = nguid;
        Uuid = uuid;
        AnaGroupId = anaGroupId;
        IsRemote = bdev.TakesWholeCommands;
    }

    internal void OpenChannels(IReadOnlyList<Reactor> reactors)
    {
        var channels = new BdevChannel[reactors.Count];
        for (int i = 0; i < reactors.Count; i++) channels[i] = Bdev.CreateChannel(reactors[i]);
        Channels = channels;
    }

    internal void CloseChannels()
    {
        foreach (BdevChannel c in Channels) c.Dispose();
        Channels = [];
    }
}

/// <summary>An NVM subsystem (or the discovery subsystem) as this node exports it.</summary>
public sealed class Subsystem
{
    private readonly object _lock = new();
    private readonly Dictionary<ushort, Controller> _controllers = [];
    private ushort _nextCntlid;
    private Namespace?[] _namespaces;
    // ANA groups: whether this node owns each (the owner holds the data), and administrative overrides.
    private readonly Dictionary<uint, bool> _groupIsLocal = [];
    private readonly Dictionary<uint, AnaState> _overrides = [];
    private volatile PartnerAccess _partnerAccess = PartnerAccess.Unavailable;

    public string Nqn { get; }
    public SubsystemKind Kind { get; }
    public string SerialNumber { get; }
    public string ModelNumber { get; }
    public string FirmwareRevision { get; }
    public ushort MinCntlid { get; }
    public ushort MaxCntlid { get; }
    public uint MaxNamespaces { get; }
    public bool AllowAnyHost { get; }
    public IReadOnlySet<string> AllowedHosts { get; }

    /// <summary>Incremented on every ANA state change; reported in the ANA log page.</summary>
    public ulong AnaChangeCount { get; private set; } = 1;

    public Subsystem(string nqn, SubsystemKind kind, string serial, string model, string firmware,
        ushort minCntlid, ushort maxCntlid, uint maxNamespaces, bool allowAnyHost, IEnumerable<string>? allowedHosts = null)
    {
        Nqn = nqn;
        Kind = kind;
        SerialNumber = serial;
        ModelNumber = model;
        FirmwareRevision = firmware;
        MinCntlid = minCntlid;
        MaxCntlid = maxCntlid;
        MaxNamespaces = maxNamespaces;
        AllowAnyHost = allowAnyHost;
        AllowedHosts = new HashSet<string>(allowedHosts ?? [], StringComparer.Ordinal);
        _nextCntlid = minCntlid;
        _namespaces = new Namespace?[maxNamespaces];
    }

    public bool IsDiscovery => Kind == SubsystemKind.Discovery;

    public bool HostAllowed(string hostNqn) => AllowAnyHost || AllowedHosts.Contains(hostNqn);

    /// <summary>The namespace with this NSID, or null. Lock-free; safe from any reactor.</summary>
    public Namespace? GetNamespace(uint nsid)
    {
        Namespace?[] ns = Volatile.Read(ref _namespaces);
        return nsid - 1 < (uint)ns.Length ? ns[nsid - 1] : null;
    }

    public IReadOnlyList<Namespace> Namespaces
    {
        get
        {
            var list = new List<Namespace>();
            foreach (Namespace? n in Volatile.Read(ref _namespaces)) if (n != null) list.Add(n);
            return list;
        }
    }

    public void AddNamespace(Namespace ns)
    {
        lock (_lock)
        {
            if (ns.Nsid == 0 || ns.Nsid > MaxNamespaces)
                throw new ArgumentOutOfRangeException(nameof(ns), $"NSID {ns.Nsid} is outside 1..{MaxNamespaces}");
            var copy = (Namespace?[])_namespaces.Clone();
            if (copy[ns.Nsid - 1] != null) throw new InvalidOperationException($"NSID {ns.Nsid} is already in use in {Nqn}");
            copy[ns.Nsid - 1] = ns;
            Volatile.Write(ref _namespaces, copy);
            _groupIsLocal.TryAdd(ns.AnaGroupId, !ns.IsRemote);
        }
    }

    /// <summary>Declares an ANA group and whether this node owns it (before its namespaces are added).</summary>
    public void DefineAnaGroup(uint groupId, bool local)
    {
        lock (_lock) _groupIsLocal[groupId] = local;
    }

    public bool IsLocalGroup(uint groupId)
    {
        lock (_lock) return _groupIsLocal.TryGetValue(groupId, out bool l) && l;
    }

    /// <summary>How the partner's groups can be reached from here (set by the cluster manager).</summary>
    public PartnerAccess PartnerAccess => _partnerAccess;

    public void SetPartnerAccess(PartnerAccess access)
    {
        if (_partnerAccess == access) return;
        lock (_lock)
        {
            _partnerAccess = access;
            AnaChangeCount++;
        }
        NotifyAnaChange();
    }

    /// <summary>ANA group IDs in use, ascending.</summary>
    public IReadOnlyList<uint> AnaGroupIds
    {
        get
        {
            lock (_lock)
            {
                var list = new List<uint>(_groupIsLocal.Keys);
                list.Sort();
                return list;
            }
        }
    }

    /// <summary>
    /// The ANA state of a group as seen through a listener of the given role (DESIGN.md section 1): the owner's
    /// ports are optimized, the partner's non-optimized through the proxy while the interconnect is up.
    /// </summary>
    public AnaState GetAnaState(uint groupId, ListenerRole role)
    {
        bool local;
        lock (_lock)
        {
            if (_overrides.TryGetValue(groupId, out AnaState forced)) return forced;
            if (!_groupIsLocal.TryGetValue(groupId, out local)) return AnaState.Inaccessible;
        }
        if (local) return role == ListenerRole.Proxy ? AnaState.Inaccessible : AnaState.Optimized;
        if (role is ListenerRole.Direct or ListenerRole.Interconnect) return AnaState.Inaccessible;
        return _partnerAccess switch
        {
            PartnerAccess.Available => AnaState.NonOptimized,
            PartnerAccess.Transitioning => AnaState.Change,
            _ => AnaState.Inaccessible,
        };
    }

    /// <summary>Forces a group's state on this node (administrative; null removes the override).</summary>
    public void SetAnaState(uint groupId, AnaState? state)
    {
        lock (_lock)
        {
            if (state is AnaState st)
            {
                if (_overrides.TryGetValue(groupId, out AnaState old) && old == st) return;
                _overrides[groupId] = st;
            }
            else if (!_overrides.Remove(groupId))
            {
                return;
            }
            AnaChangeCount++;
        }
        NotifyAnaChange();
    }

    private void NotifyAnaChange()
    {
        foreach (Controller c in Controllers)
            c.RaiseAsyncEvent(AsyncEvent.TypeNotice, AsyncEvent.NoticeAnaChange, LogPageId.Ana, AsyncEvent.ConfigAnaChange);
    }

    internal Controller? CreateController(Func<ushort, Controller> factory)
    {
        lock (_lock)
        {
            int span = MaxCntlid - MinCntlid + 1;
            for (int i = 0; i < span; i++)
            {
                ushort id = _nextCntlid;
                _nextCntlid = id == MaxCntlid ? MinCntlid : (ushort)(id + 1);
                if (_controllers.ContainsKey(id)) continue;
                Controller c = factory(id);
                _controllers[id] = c;
                return c;
            }
            return null;
        }
    }

    internal Controller? FindController(ushort cntlid)
    {
        lock (_lock) return _controllers.TryGetValue(cntlid, out Controller? c) ? c : null;
    }

    internal void RemoveController(Controller c)
    {
        lock (_lock)
        {
            if (_controllers.TryGetValue(c.Cntlid, out Controller? cur) && cur == c) _controllers.Remove(c.Cntlid);
        }
    }

    public IReadOnlyList<Controller> Controllers
    {
        get { lock (_lock) return [.. _controllers.Values]; }
    }
}
