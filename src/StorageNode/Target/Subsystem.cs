using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;

namespace StorageNode.Target;

public enum SubsystemKind { Nvm, Discovery }

/// <summary>A namespace: an NSID bound to a bdev, with the identifiers hosts use to recognise it.</summary>
public sealed class Namespace
{
    public uint Nsid { get; }
    public Bdev Bdev { get; }
    public byte[] Nguid { get; }
    public Guid Uuid { get; }
    public uint AnaGroupId { get; }

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
    private readonly Dictionary<uint, AnaState> _anaStates = [];

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
            if (!_anaStates.ContainsKey(ns.AnaGroupId)) _anaStates[ns.AnaGroupId] = AnaState.Optimized;
        }
    }

    /// <summary>ANA groups in use, in ascending order, with this node's state for each.</summary>
    public IReadOnlyList<(uint GroupId, AnaState State)> AnaGroups
    {
        get
        {
            lock (_lock)
            {
                var list = new List<(uint, AnaState)>();
                foreach (var kv in _anaStates) list.Add((kv.Key, kv.Value));
                list.Sort((a, b) => a.Item1.CompareTo(b.Item1));
                return list;
            }
        }
    }

    public AnaState GetAnaState(uint groupId)
    {
        lock (_lock) return _anaStates.TryGetValue(groupId, out AnaState s) ? s : AnaState.Inaccessible;
    }

    /// <summary>Changes a group's state and tells every controller (ANA change event).</summary>
    public void SetAnaState(uint groupId, AnaState state)
    {
        List<Controller> notify;
        lock (_lock)
        {
            if (_anaStates.TryGetValue(groupId, out AnaState old) && old == state) return;
            _anaStates[groupId] = state;
            AnaChangeCount++;
            notify = [.. _controllers.Values];
        }
        foreach (Controller c in notify)
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
