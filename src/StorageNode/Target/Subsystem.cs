using System.Collections.Frozen;
using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;

namespace StorageNode.Target;

public enum SubsystemKind { Nvm, Discovery }

/// <summary>Whether the partner's ANA groups can be reached through the interconnect.</summary>
public enum PartnerAccess { Unavailable, Transitioning, Available }

/// <summary>An NVM subsystem (or the discovery subsystem) as this node exports it.</summary>
public sealed class Subsystem
{
    private readonly object _lock = new();
    private readonly Dictionary<ushort, Controller> _controllers = [];
    private ushort _nextCntlid;
    private Namespace?[] _namespaces;
    // ANA groups: whether this node owns each (the owner holds the data), and administrative overrides. Changed under
    // the lock (control path); the I/O path reads the published snapshot, with no lock.
    private readonly Dictionary<uint, bool> _groupIsLocal = [];
    // Groups this node took over from its partner: served on its proxy ports as well (the hosts' paths to it).
    private readonly HashSet<uint> _takenOver = [];
    private readonly Dictionary<uint, AnaState> _overrides = [];
    // Groups held inaccessible, and by what (the pair's mirrors: docs/ha.md, "An owner that lost its data").
    private readonly Dictionary<uint, HashSet<object>> _holds = [];
    private volatile AnaSnapshot _ana = AnaSnapshot.Empty;

    /// <summary>
    /// The subsystem's ANA configuration at one moment: immutable, replaced whole (one reference swap) whenever it
    /// changes, so that <see cref="GetAnaState"/> on the I/O path takes no lock.
    /// </summary>
    private sealed class AnaSnapshot(FrozenDictionary<uint, (bool Local, AnaState? Forced, bool TakenOver)> groups, uint[] ids, PartnerAccess partner, ulong changeCount,
        FrozenSet<uint>? held = null)
    {
        public static readonly AnaSnapshot Empty = new(FrozenDictionary<uint, (bool, AnaState?, bool)>.Empty, [], PartnerAccess.Unavailable, 1);
        public readonly FrozenDictionary<uint, (bool Local, AnaState? Forced, bool TakenOver)> Groups = groups;
        public readonly FrozenSet<uint> Held = held ?? FrozenSet<uint>.Empty;
        public readonly uint[] Ids = ids;
        public readonly PartnerAccess Partner = partner;
        public readonly ulong ChangeCount = changeCount;
    }

    /// <summary>
    /// Publishes a new snapshot from the group tables (under the lock): the partner's access as given, the change count
    /// one more when <paramref name="changed"/>.
    /// </summary>
    private void PublishAna(PartnerAccess partner, bool changed)
    {
        var groups = new Dictionary<uint, (bool, AnaState?, bool)>();
        foreach (var kv in _groupIsLocal)
            groups[kv.Key] = (kv.Value, _overrides.TryGetValue(kv.Key, out AnaState f) ? f : null, kv.Value && _takenOver.Contains(kv.Key));
        foreach (var kv in _overrides) groups.TryAdd(kv.Key, (false, kv.Value, false));
        uint[] ids = [.. _groupIsLocal.Keys];
        Array.Sort(ids);
        _ana = new AnaSnapshot(groups.ToFrozenDictionary(), ids, partner, _ana.ChangeCount + (changed ? 1UL : 0),
            _holds.Where(kv => kv.Value.Count > 0).Select(kv => kv.Key).ToFrozenSet());
        AnaPublished?.Invoke();
    }

    /// <summary>
    /// Test hook: runs after each snapshot is published (under the subsystem's lock, on the control path; never on the
    /// I/O path), so that a test sees every ANA state the subsystem ever had, in order.
    /// </summary>
    internal Action? AnaPublished;

    public string Nqn { get; }
    public SubsystemKind Kind { get; }
    public string SerialNumber { get; }
    public string ModelNumber { get; }
    public string FirmwareRevision { get; }
    public ushort MinCntlid { get; }
    public ushort MaxCntlid { get; }
    public uint MaxNamespaces { get; }
    /// <summary>Whether any host may connect (changed at run time by <see cref="SetAllowAnyHost"/>).</summary>
    public bool AllowAnyHost => _allowAnyHost;
    /// <summary>The hosts allowed by NQN (an immutable snapshot; changed at run time by <see cref="AddHost"/> / <see cref="RemoveHost"/>).</summary>
    public IReadOnlySet<string> AllowedHosts => _allowedHosts;
    private volatile bool _allowAnyHost;
    private volatile FrozenSet<string> _allowedHosts;

    /// <summary>Incremented on every ANA state change; reported in the ANA log page.</summary>
    public ulong AnaChangeCount => _ana.ChangeCount;

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
        _allowAnyHost = allowAnyHost;
        _allowedHosts = (allowedHosts ?? []).ToFrozenSet(StringComparer.Ordinal);
        _nextCntlid = minCntlid;
        _namespaces = new Namespace?[maxNamespaces];
    }

    public bool IsDiscovery => Kind == SubsystemKind.Discovery;

    public bool HostAllowed(string hostNqn) => _allowAnyHost || _allowedHosts.Contains(hostNqn);

    /// <summary>Allows a host by NQN; false when it already was.</summary>
    public bool AddHost(string hostNqn)
    {
        lock (_lock)
        {
            if (_allowedHosts.Contains(hostNqn)) return false;
            _allowedHosts = _allowedHosts.Append(hostNqn).ToFrozenSet(StringComparer.Ordinal);
            return true;
        }
    }

    /// <summary>
    /// Takes a host off the list; null when it was not on it, else the host's controllers at that moment (the caller
    /// closes them; none made later is of that host unless it is allowed again, see <see cref="CreateController"/>).
    /// </summary>
    public IReadOnlyList<Controller>? RemoveHost(string hostNqn)
    {
        lock (_lock)
        {
            if (!_allowedHosts.Contains(hostNqn)) return null;
            _allowedHosts = _allowedHosts.Where(h => h != hostNqn).ToFrozenSet(StringComparer.Ordinal);
            return [.. _controllers.Values.Where(c => !c.IsInterconnect && c.HostNqn == hostNqn)];
        }
    }

    /// <summary>Lets any host connect, or only the listed ones; associations already made stay.</summary>
    public void SetAllowAnyHost(bool allow) => _allowAnyHost = allow;

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
            if (_groupIsLocal.TryAdd(ns.AnaGroupId, !ns.IsRemote)) PublishAna(_ana.Partner, changed: false);
        }
    }

    /// <summary>Takes a namespace out (the I/O path no longer finds it); the removed namespace, or null when there is none.</summary>
    public Namespace? RemoveNamespace(uint nsid)
    {
        lock (_lock)
        {
            if (nsid - 1 >= (uint)_namespaces.Length || _namespaces[nsid - 1] is not Namespace ns) return null;
            var copy = (Namespace?[])_namespaces.Clone();
            copy[nsid - 1] = null;
            Volatile.Write(ref _namespaces, copy);
            return ns;
        }
    }

    /// <summary>Tells every host's controller that a namespace came or went (Changed Namespace List, event).</summary>
    public void NotifyNamespaceChanged(uint nsid)
    {
        foreach (Controller c in Controllers)
            if (!c.IsInterconnect) c.NotifyNamespaceChanged(nsid);
    }

    /// <summary>Declares an ANA group and whether this node owns it (before its namespaces are added).</summary>
    public void DefineAnaGroup(uint groupId, bool local)
    {
        lock (_lock)
        {
            _groupIsLocal[groupId] = local;
            PublishAna(_ana.Partner, changed: false);
        }
    }

    public bool IsLocalGroup(uint groupId) => _ana.Groups.TryGetValue(groupId, out var g) && g.Local;

    /// <summary>
    /// Moves a group to this node (<paramref name="local"/>) or to the partner at run time (a takeover, docs/ha.md); a
    /// group this node owns although the configuration names the partner (<paramref name="takenOver"/>) is optimized on
    /// its proxy ports too, where the hosts' paths to it end. The hosts are told (ANA change).
    /// </summary>
    public void SetGroupOwner(uint groupId, bool local, bool takenOver)
    {
        lock (_lock)
        {
            _groupIsLocal[groupId] = local;
            if (takenOver && local) _takenOver.Add(groupId);
            else _takenOver.Remove(groupId);
            PublishAna(_ana.Partner, changed: true);
        }
        NotifyAnaChange();
    }

    /// <summary>
    /// Puts <paramref name="ns"/> in place of the namespace with its NSID, at once (no Changed Namespace List: to the
    /// hosts it is the same namespace, served from elsewhere). The one it replaced, or null when there was none.
    /// </summary>
    internal Namespace? ReplaceNamespace(Namespace ns)
    {
        lock (_lock)
        {
            if (ns.Nsid == 0 || ns.Nsid > MaxNamespaces) throw new ArgumentOutOfRangeException(nameof(ns), $"NSID {ns.Nsid} is outside 1..{MaxNamespaces}");
            var copy = (Namespace?[])_namespaces.Clone();
            Namespace? old = copy[ns.Nsid - 1];
            copy[ns.Nsid - 1] = ns;
            Volatile.Write(ref _namespaces, copy);
            return old;
        }
    }

    /// <summary>How the partner's groups can be reached from here (set by the pair).</summary>
    public PartnerAccess PartnerAccess => _ana.Partner;

    public void SetPartnerAccess(PartnerAccess access)
    {
        lock (_lock)
        {
            if (_ana.Partner == access) return;
            PublishAna(access, changed: true);
        }
        NotifyAnaChange();
    }

    /// <summary>ANA group IDs in use, ascending.</summary>
    public IReadOnlyList<uint> AnaGroupIds => _ana.Ids;

    /// <summary>
    /// The ANA state of a group as seen through a listener of the given role (DESIGN.md section 1): the owner's
    /// ports are optimized, the partner's non-optimized through the proxy while the interconnect is up.
    /// </summary>
    public AnaState GetAnaState(uint groupId, ListenerRole role)
    {
        AnaSnapshot ana = _ana;
        if (!ana.Groups.TryGetValue(groupId, out var g) || ana.Held.Contains(groupId)) return AnaState.Inaccessible;
        if (g.Forced is AnaState forced) return forced;
        if (g.Local) return role == ListenerRole.Proxy && !g.TakenOver ? AnaState.Inaccessible : AnaState.Optimized;
        if (role is ListenerRole.Direct or ListenerRole.Interconnect) return AnaState.Inaccessible;
        return ana.Partner switch
        {
            PartnerAccess.Available => AnaState.NonOptimized,
            PartnerAccess.Transitioning => AnaState.Change,
            _ => AnaState.Inaccessible,
        };
    }

    /// <summary>
    /// Holds a group inaccessible on this node, through every port (the pair's relays too), until every holder has
    /// released it; over an administrative override. True when <paramref name="holder"/> did not hold it yet.
    /// </summary>
    public bool HoldGroup(uint groupId, object holder)
    {
        bool changed;
        lock (_lock)
        {
            if (!_holds.TryGetValue(groupId, out HashSet<object>? set)) _holds[groupId] = set = [];
            if (!set.Add(holder)) return false;
            changed = set.Count == 1;
            PublishAna(_ana.Partner, changed);
        }
        if (changed) NotifyAnaChange();
        return true;
    }

    /// <summary>Releases <see cref="HoldGroup"/>; true when <paramref name="holder"/> held it.</summary>
    public bool ReleaseGroup(uint groupId, object holder)
    {
        bool changed;
        lock (_lock)
        {
            if (!_holds.TryGetValue(groupId, out HashSet<object>? set) || !set.Remove(holder)) return false;
            changed = set.Count == 0;
            PublishAna(_ana.Partner, changed);
        }
        if (changed) NotifyAnaChange();
        return true;
    }

    /// <summary>Whether a group is held inaccessible (<see cref="HoldGroup"/>).</summary>
    public bool IsGroupHeld(uint groupId) => _ana.Held.Contains(groupId);

    /// <summary>Whether <paramref name="holder"/> holds a group (<see cref="HoldGroup"/>).</summary>
    internal bool IsGroupHeldBy(uint groupId, object holder)
    {
        lock (_lock) return _holds.TryGetValue(groupId, out HashSet<object>? set) && set.Contains(holder);
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
            PublishAna(_ana.Partner, changed: true);
        }
        NotifyAnaChange();
    }

    private void NotifyAnaChange()
    {
        foreach (Controller c in Controllers)
            c.RaiseAsyncEvent(AsyncEvent.TypeNotice, AsyncEvent.NoticeAnaChange, LogPageId.Ana, AsyncEvent.ConfigAnaChange);
    }

    /// <summary>
    /// Creates a controller with a free CNTLID; null when none is free, or when <paramref name="hostNqn"/> (unless null)
    /// is no longer allowed: checked under the lock <see cref="RemoveHost"/> takes, so a host taken off the list while it
    /// connects either is refused here or is among the controllers RemoveHost returns.
    /// </summary>
    internal Controller? CreateController(Func<ushort, Controller> factory, string? hostNqn = null)
    {
        lock (_lock)
        {
            if (hostNqn != null && !HostAllowed(hostNqn)) return null;
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

    /// <summary>
    /// Reservation notifications this node produced as a namespace's owner (the HA pair forwards them to the hosts
    /// connected through the partner). Raised on the thread that changed the reservation.
    /// </summary>
    public event Action<Subsystem, IReadOnlyList<ReservationNotice>>? ReservationNoticesRaised;

    /// <summary>Tells the hosts' controllers here, and whoever listens for the rest (<see cref="ReservationNoticesRaised"/>).</summary>
    public void RaiseReservationNotices(IReadOnlyList<ReservationNotice> notices)
    {
        if (notices.Count == 0) return;
        DeliverReservationNotices(notices);
        ReservationNoticesRaised?.Invoke(this, notices);
    }

    /// <summary>Logs each notice on every controller here of the host it is for.</summary>
    public void DeliverReservationNotices(IReadOnlyList<ReservationNotice> notices)
    {
        foreach (Controller c in Controllers)
        {
            if (c.IsInterconnect) continue;
            foreach (ReservationNotice n in notices)
                if (n.HostId == c.HostId) c.NotifyReservation(n.Nsid, n.Type);
        }
    }
}
