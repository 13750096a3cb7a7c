using System.Net;
using Microsoft.Extensions.Logging;
using StorageNode.Bdevs;
using StorageNode.Config;
using StorageNode.Interop;
using StorageNode.Pair;
using StorageNode.Rdma;
using StorageNode.Reactors;
using StorageNode.Support;
using StorageNode.Target;
using StorageNode.Transport;
using StorageNode.Transport.Rdma;
using StorageNode.Transport.Tcp;

namespace StorageNode;

/// <summary>
/// One StorageNode: reactors, bdevs, the NVMe-oF target with its subsystems, and the transports. Built from a
/// validated <see cref="NodeConfig"/>; usable in-process (tests, benchmarks) or from the executable.
/// </summary>
public sealed class Node : IDisposable
{
    private readonly List<Reactor> _reactors = [];
    private readonly BdevRegistry _registry = new();
    // Replicas of the partner's namespaces (Cluster:Mirror), written only by the partner's mirrored writes.
    private readonly List<Bdev> _replicas = [];
    private ReservationStore? _store;
    private readonly ILogger _log;
    private bool _started;
    private bool _disposed;

    public NodeConfig Config { get; }
    public NvmfTarget Target { get; }
    public TcpTransport Tcp { get; }
    /// <summary>The NVMe/RDMA transport (null unless a listener is configured with Transport "rdma").</summary>
    public RdmaTransport? Rdma { get; }
    /// <summary>This node's part of an HA pair (null on a standalone node).</summary>
    public PairNode? Pair { get; }
    public IReadOnlyList<Reactor> Reactors => _reactors;
    public IReadOnlyList<IPEndPoint> TcpEndpoints { get; private set; } = [];
    public IReadOnlyList<IPEndPoint> RdmaEndpoints { get; private set; } = [];
    public IPEndPoint? InterconnectEndpoint { get; private set; }
    /// <summary>The NVMe/RDMA interconnect listener's endpoint (null: the interconnect is NVMe/TCP only).</summary>
    public IPEndPoint? InterconnectRdmaEndpoint { get; private set; }
    public ILoggerFactory LoggerFactory { get; }

    public Node(NodeConfig config, ILoggerFactory loggerFactory)
    {
        Config = config;
        LoggerFactory = loggerFactory;
        _log = loggerFactory.CreateLogger("node");
        try
        {
            for (int i = 0; i < config.ReactorCount; i++)
                _reactors.Add(new Reactor(i, $"{config.Name}-reactor{i}", config.PollMode, config.AdaptiveSpin, config.Pools, loggerFactory.CreateLogger($"reactor{i}")));
            Target = new NvmfTarget(config.Name, config.Target, _reactors, loggerFactory);
            Tcp = new TcpTransport(Target, config.Tcp);
            bool rdmaInterconnect = config.Cluster != null && config.Cluster.InterconnectTransport != InterconnectTransport.Tcp;
            if (config.Listeners.Any(l => l.Transport == RdmaTransport.TransportName) || (rdmaInterconnect && RdmaDevices.UnavailableReason() == null))
                Rdma = new RdmaTransport(Target);

            foreach (BdevConfig b in config.Bdevs)
            {
                // A file about to be made holds none of the data a kept generation names: that record goes first, before
                // the file exists (whatever stops this start later, the next one finds the file and no record: new data).
                if (b.Type == "file" && !File.Exists(b.Path)) ForgetGenerations(config, b.Name);
                _registry.Add(CreateBdev(b));
            }
            var subsystems = new List<(Subsystem S, SubsystemConfig C)>();
            var owners = new Dictionary<Subsystem, IReadOnlyDictionary<uint, string>>();
            foreach (SubsystemConfig sc in config.Subsystems)
            {
                var s = new Subsystem(sc.Nqn, SubsystemKind.Nvm, sc.SerialNumber, sc.ModelNumber, sc.FirmwareRevision,
                    sc.ControllerIdMin, sc.ControllerIdMax, sc.MaxNamespaces, sc.AllowAnyHost, sc.Hosts);
                var groupOwners = new Dictionary<uint, string>();
                foreach (AnaGroupConfig g in sc.AnaGroups) groupOwners[g.Id] = g.Owner;
                foreach (NamespaceConfig nc in sc.Namespaces)
                    if (!groupOwners.ContainsKey(nc.AnaGroup)) groupOwners[nc.AnaGroup] = config.Name;
                subsystems.Add((s, sc));
                owners[s] = groupOwners;
            }
            if (config.Cluster != null)
            {
                Pair = new PairNode(config.Cluster, Target, owners, config.StateDirectory);
                Target.CommandQuiesceTimeMs = (ushort)Math.Min(ushort.MaxValue, config.Cluster.RelayTimeout.TotalMilliseconds);
            }
            // Each group is this node's as its kept ownership says (a takeover), else as configured.
            foreach ((Subsystem s, SubsystemConfig sc) in subsystems)
                foreach (AnaGroupConfig g in sc.AnaGroups)
                {
                    GroupOwnership? own = Pair?.OwnershipOf(s, g.Id);
                    s.DefineAnaGroup(g.Id, own?.OwnedHere ?? g.Owner == config.Name);
                    if (own is { OwnedHere: true, TakenOver: true }) s.SetGroupOwner(g.Id, local: true, takenOver: true);
                }
            ReservationStore? store = null;
            if (config.StateDirectory != null)
            {
                try
                {
                    Directory.CreateDirectory(config.StateDirectory);
                    store = new ReservationStore(config.StateDirectory, config.Name, loggerFactory.CreateLogger("reservations"));
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    if (!config.StateDirectoryIsDefault) throw new ConfigException("Node:StateDirectory", $"cannot be created: {e.Message}");
                    _log.LogWarning("no state directory ({Dir}: {Error}): reservations cannot persist through power loss (set Node:StateDirectory)",
                        config.StateDirectory, e.Message);
                }
            }
            _store = store;
            foreach ((Subsystem s, SubsystemConfig sc) in subsystems)
            {
                for (int i = 0; i < sc.Namespaces.Count; i++)
                {
                    NamespaceConfig nc = sc.Namespaces[i];
                    Bdev bdev;
                    // A group this node took over from its partner is served from the replica this node kept of it.
                    GroupOwnership? own = Pair?.OwnershipOf(s, nc.AnaGroup);
                    // (A replica in RAM started empty with this node: nothing to serve.)
                    bool fromReplica = nc.Bdev == null && own is { OwnedHere: true } && config.Cluster!.Mirror && nc.ReplicaBdev != null
                                       && _registry.Get(nc.ReplicaBdev) is FileBdev;
                    if (fromReplica)
                    {
                        bdev = _registry.Get(nc.ReplicaBdev!);
                        _log.LogWarning("{Nqn}: NSID {Nsid} is served from replica bdev {Bdev}: this node took ANA group {Group} over ({Owner})",
                            s.Nqn, nc.Nsid, nc.ReplicaBdev, nc.AnaGroup, own!.Current);
                    }
                    else if (nc.Bdev != null && own is { OwnedHere: false } && config.Cluster!.Mirror)
                    {
                        // The partner took this node's group over (a kept term): its data is this node's replica now, and
                        // what this node kept as its owner (its data's generation, its dirty-region record) no longer holds.
                        bdev = new PartnerBdev($"partner:{nc.Nsid}", _registry.Get(nc.Bdev).BlockSize, _registry.Get(nc.Bdev).BlockCount, Pair!.LinkFor(s)!);
                        _log.LogWarning("{Nqn}: NSID {Nsid} is relayed to {Owner}, which took ANA group {Group} over; bdev {Bdev} keeps its replica",
                            s.Nqn, nc.Nsid, own.Current, nc.AnaGroup, nc.Bdev);
                    }
                    else if (nc.Bdev != null)
                    {
                        bdev = _registry.Get(nc.Bdev);
                        string key = $"Subsystems:{i}:Namespaces";
                        if (nc.DeclaredBlockCount is ulong blocks && blocks * (nc.DeclaredBlockSize ?? bdev.BlockSize) != bdev.SizeBytes)
                            throw new ConfigException(key, $"NSID {nc.Nsid}: SizeMiB differs from bdev '{nc.Bdev}' ({bdev.SizeBytes >> 20} MiB)");
                    }
                    else
                    {
                        bdev = new PartnerBdev($"partner:{nc.Nsid}", nc.DeclaredBlockSize ?? 512, nc.DeclaredBlockCount ?? 0, Pair!.LinkFor(s)!);
                    }
                    // With Cluster:Mirror this node keeps a replica of the partner's namespace (docs/ha.md, "Mirroring"):
                    // the bdev its ReplicaBdev names, or one in RAM.
                    Bdev? replica = null;
                    if (bdev is PartnerBdev && own is { OwnedHere: true })
                    {
                        // Taken over, but the replica was in RAM: it went with this node's restart.
                        _log.LogError("{Nqn}: this node took ANA group {Group} over ({Owner}), but NSID {Nsid}'s replica was in RAM and is gone: the group is held "
                            + "inaccessible here. If the partner kept its data, stop this node and run cluster_takeover there", s.Nqn, nc.AnaGroup, own.Current, nc.Nsid);
                        s.HoldGroup(nc.AnaGroup, Pair!.LostReplicaHold);
                    }
                    if (bdev is PartnerBdev && config.Cluster!.Mirror)
                    {
                        if (nc.Bdev != null)
                            replica = _registry.Get(nc.Bdev); // this node's own data, kept as the replica (above)
                        else if (nc.ReplicaBdev != null)
                        {
                            replica = _registry.Get(nc.ReplicaBdev);
                            if (replica.BlockSize != bdev.BlockSize || replica.BlockCount != bdev.BlockCount)
                                throw new ConfigException($"Subsystems:{subsystems.IndexOf((s, sc))}:Namespaces:{i}:ReplicaBdev",
                                    $"bdev '{nc.ReplicaBdev}' is {replica.BlockCount} blocks of {replica.BlockSize} bytes, the namespace {bdev.BlockCount} of {bdev.BlockSize}");
                        }
                        else
                        {
                            replica = new MallocBdev($"replica:{nc.Nsid}", bdev.BlockSize, bdev.BlockCount);
                            _replicas.Add(replica);
                        }
                    }
                    if (bdev is PartnerBdev && replica != null) KeptAsReplica(config, s, nc.Nsid, replica);
                    (long generation, bool generationIsNew) = bdev is not PartnerBdev && config.Cluster is { Mirror: true }
                        ? DataGeneration(config, s, nc.Nsid, bdev)
                        : (0L, false);
                    var ns = new Namespace(nc.Nsid, bdev, nc.Nguid, nc.Uuid, nc.AnaGroup)
                    {
                        Replica = replica,
                        ReplicaKnowledge = KnowledgeOf(config, s, nc.Nsid, replica),
                        DataGeneration = generation,
                        DataGenerationIsNew = generationIsNew,
                        DataTaken = DataTakenFor(config, s, nc.Nsid, bdev, generation, generationIsNew),
                        DirtyLog = DirtyLogFor(config, s, nc.Nsid, bdev, generation),
                    };
                    // New data (RAM starts empty) is not served until the partner's replica has taken it (the mirror releases
                    // this hold): held before any listener opens (docs/ha.md, "An owner that lost its data").
                    if (generationIsNew) s.HoldGroup(ns.AnaGroupId, ns);
                    // The owner keeps a namespace's reservations; the partner's are kept by the partner.
                    if (store != null && !ns.IsRemote) store.Attach(s, ns);
                    else if (store != null) ns.Reservations.PtplCapable = true; // answers with the owner's PTPL
                    s.AddNamespace(ns);
                }
                // A group this node owned when it stopped, or whose data it holds while the partner owns it, waits for the partner's view.
                Pair?.HoldUntilConfirmed(s);
                Target.AddSubsystem(s);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// A mirrored namespace's data generation (docs/ha.md, "An owner that lost its data"): for a file bdev, the one kept
    /// in the state directory (<c>GENERATION new|taken</c>: made the first time, or when the file was made anew; "new"
    /// until the partner's replica has taken the data, so that a restart before that still holds the group); otherwise
    /// — RAM, whose data a restart loses, or no state directory — a new one. Whether it is new.
    /// </summary>
    private (long Generation, bool IsNew) DataGeneration(NodeConfig config, Subsystem s, uint nsid, Bdev bdev)
    {
        long fresh = Random.Shared.NextInt64(1, long.MaxValue);
        if (bdev is not FileBdev || config.StateDirectory == null || !Directory.Exists(config.StateDirectory)) return (fresh, true);
        string path = GenerationPath(config, s.Nqn, nsid);
        try
        {
            string[] kept = File.Exists(path) ? File.ReadAllText(path).Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries) : [];
            if (kept.Length is 1 or 2 && long.TryParse(kept[0], System.Globalization.NumberStyles.HexNumber, null, out long g) && g != 0)
                return (g, kept.Length == 2 && kept[1] == "new");
            WriteGeneration(path, fresh, taken: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log.LogWarning("NSID {Nsid}: the data generation cannot be kept in {Path} ({Error}): a restart of this node will count as new data", nsid, path, e.Message);
        }
        return (fresh, true);
    }

    private static string GenerationPath(NodeConfig config, string nqn, uint nsid)
        => DataGenerationFile.PathOf(config.StateDirectory!, config.Name, nqn, nsid);

    private static void WriteGeneration(string path, long generation, bool taken) => DataGenerationFile.Write(path, generation, taken);

    /// <summary>
    /// A namespace this node keeps a replica of (the partner owns it) whose data this node owned before (its own data, or
    /// a replica a takeover served): what it kept as the owner no longer holds. Its data's generation, if a keeper had taken
    /// it, becomes what the replica holds (unless the replica's own record says otherwise): a resync of other data over it
    /// is refused as ever. Then the owner's records go.
    /// </summary>
    private static void KeptAsReplica(NodeConfig config, Subsystem s, uint nsid, Bdev replica)
    {
        if (replica is not FileBdev || config.StateDirectory == null || !Directory.Exists(config.StateDirectory)) return;
        string generation = GenerationPath(config, s.Nqn, nsid), dirty = StateFile.PathOf(config.StateDirectory, config.Name, s.Nqn, nsid, "dirty");
        string holds = StateFile.PathOf(config.StateDirectory, config.Name, s.Nqn, nsid, "replica");
        try
        {
            if (!File.Exists(generation) && !File.Exists(dirty)) return;
            string[] kept = File.Exists(generation) ? File.ReadAllText(generation).Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries) : [];
            if (!File.Exists(holds) && kept.Length == 2 && kept[1] == "taken" && long.TryParse(kept[0], System.Globalization.NumberStyles.HexNumber, null, out long g) && g != 0)
                ReplicaHoldsFile.Save(holds, new ReplicaHolds(g, true, 0, false));
            StateFile.Delete(generation);
            StateFile.Delete(dirty);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigException("Node:StateDirectory", $"cannot turn what this node kept as the owner of {s.Nqn} NSID {nsid} into its replica's record: {e.Message}");
        }
    }

    /// <summary>The file of bdev <paramref name="bdevName"/> is gone: the generations kept for the namespaces on it no longer hold.</summary>
    private static void ForgetGenerations(NodeConfig config, string bdevName)
    {
        if (config.StateDirectory == null || config.Cluster is not { Mirror: true }) return;
        foreach (SubsystemConfig sc in config.Subsystems)
            foreach (NamespaceConfig nc in sc.Namespaces)
            {
                // A namespace's own data, or a replica (which a takeover may have served as the data): what was kept of
                // its contents — its generation, and what the replica held — went with the file.
                if (nc.Bdev != bdevName && nc.ReplicaBdev != bdevName) continue;
                // (Either may have served as the other: a takeover serves a replica, a keeper keeps its own data.)
                foreach (string kind in new[] { "generation", "replica", "dirty" })
                {
                    string path = StateFile.PathOf(config.StateDirectory, config.Name, sc.Nqn, nc.Nsid, kind);
                    try { StateFile.Delete(path); }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                    {
                        throw new ConfigException("Node:StateDirectory", $"bdev '{bdevName}''s file is gone, and what was kept of it in {path} cannot be removed: {e.Message}");
                    }
                }
            }
    }

    /// <summary>
    /// The dirty-region record of a mirrored namespace this node owns in a file (<c>&lt;node&gt;-&lt;subsystem&gt;-ns&lt;N&gt;.dirty</c>
    /// in the state directory): a restart resyncs the regions it marks, not everything (docs/ha.md, "The dirty-region
    /// record"). None for RAM (its data does not survive a restart) or without a state directory.
    /// </summary>
    private DirtyRegionLog? DirtyLogFor(NodeConfig config, Subsystem s, uint nsid, Bdev bdev, long generation)
    {
        if (bdev is not FileBdev || config.Cluster is not { Mirror: true } cluster || config.StateDirectory == null || !Directory.Exists(config.StateDirectory)) return null;
        string path = StateFile.PathOf(config.StateDirectory, config.Name, s.Nqn, nsid, "dirty");
        int regions = (int)((bdev.SizeBytes + (1UL << DirtyRegionLog.RegionShift) - 1) >> DirtyRegionLog.RegionShift);
        try
        {
            DirtyRegionLog log = DirtyRegionLog.Open(path, generation, regions, cluster.DirtyRecordClearAfter, _log);
            _dirtyLogs.Add(log);
            if (log.Loaded)
                _log.LogInformation("{Nqn}: NSID {Nsid}: the dirty-region record ({Path}) marks {Regions} region(s) of 1 MiB against the replica's epoch {Epoch}",
                    s.Nqn, nsid, path, log.MarkedRegions, log.Epoch);
            return log;
        }
        catch (IOException e)
        {
            throw new ConfigException("Node:StateDirectory", $"cannot keep the dirty-region record of {s.Nqn} NSID {nsid}: {e.Message}");
        }
    }

    private readonly List<DirtyRegionLog> _dirtyLogs = [];

    /// <summary>The partner's replica has taken a file namespace's new data: a restart no longer holds the group for it.</summary>
    private Action? DataTakenFor(NodeConfig config, Subsystem s, uint nsid, Bdev bdev, long generation, bool isNew)
    {
        if (!isNew || bdev is not FileBdev || config.StateDirectory == null || !Directory.Exists(config.StateDirectory)) return null;
        string path = GenerationPath(config, s.Nqn, nsid);
        return () =>
        {
            try { WriteGeneration(path, generation, taken: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                _log.LogWarning("NSID {Nsid}: cannot note in {Path} that the partner took the data ({Error}): a restart will hold the group until it does again", nsid, path, e.Message);
            }
        };
    }

    /// <summary>
    /// The keeper's knowledge of a replica: for one in a file, with a state directory, what it holds is kept there
    /// (<c>&lt;node&gt;-&lt;subsystem&gt;-ns&lt;N&gt;.replica</c>) and restored here; a RAM replica starts empty.
    /// </summary>
    private ReplicaKnowledge KnowledgeOf(NodeConfig config, Subsystem s, uint nsid, Bdev? replica)
    {
        if (replica is not FileBdev || config.StateDirectory == null || !Directory.Exists(config.StateDirectory)) return new ReplicaKnowledge();
        string path = StateFile.PathOf(config.StateDirectory, config.Name, s.Nqn, nsid, "replica");
        var k = new ReplicaKnowledge { HoldsPath = path };
        try
        {
            ReplicaHolds held = ReplicaHoldsFile.Load(path);
            k.Restore(held);
            if (held.Generation != 0)
                _log.LogInformation("{Nqn}: NSID {Nsid}: this node's replica ({Bdev}) holds the owner's data generation {Generation:x16}, {State}, epoch {Epoch}{Base}",
                    s.Nqn, nsid, replica.Name, held.Generation, held.Consistent ? "consistent" : "torn (its last resync did not finish)", held.Epoch,
                    held.Base ? "" : " (the next resync copies everything)");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            throw new ConfigException("Node:StateDirectory", $"cannot read what the replica of {s.Nqn} NSID {nsid} holds: {e.Message}");
        }
        return k;
    }


    private Bdev CreateBdev(BdevConfig b) => b.Type switch
    {
        "malloc" => new MallocBdev(b.Name, b.BlockSize, b.SizeBytes / b.BlockSize),
        "null" => new NullBdev(b.Name, b.BlockSize, b.SizeBytes / b.BlockSize),
        "file" => FileBdev.Open(b.Name, b.Path!, b.BlockSize, b.SizeBytes == 0 ? null : b.SizeBytes, b.Direct, LoggerFactory.CreateLogger("bdev")),
        _ => throw new ConfigException("Bdevs", $"unknown type {b.Type}"),
    };

    public Bdev GetBdev(string name)
    {
        return _registry.Get(name);
    }

    /// <summary>The namespaces a bdev backs (it is claimed while there is one).</summary>
    public IEnumerable<(Subsystem Subsystem, Namespace Namespace)> NamespacesOn(Bdev bdev)
    {
        foreach (Subsystem s in Target.Subsystems)
            foreach (Namespace ns in s.Namespaces)
                if (ns.Bdev == bdev) yield return (s, ns);
    }

    /// <summary>What claims a bdev: the namespace it backs, or the partner's namespace it keeps the replica of; null: nothing.</summary>
    public string? ClaimOf(Bdev bdev)
    {
        foreach (Subsystem s in Target.Subsystems)
            foreach (Namespace ns in s.Namespaces)
            {
                if (ns.Bdev == bdev) return $"{s.Nqn} nsid {ns.Nsid}";
                if (ns.Replica == bdev) return $"the replica of {s.Nqn} nsid {ns.Nsid}";
            }
        return null;
    }

    // ------------------------------------------------------------------ run-time changes (management RPC)

    /// <summary>Creates a RAM bdev (SPDK's <c>bdev_malloc_create</c>); its name (a free <c>MallocN</c> when none is given).</summary>
    public string CreateMallocBdev(string? name, uint blockSize, ulong blockCount)
    {
        string made = _registry.CreateMalloc(name, blockSize, blockCount).Name;
        _log.LogInformation("bdev {Name} created: {Blocks} blocks of {BlockSize} bytes in RAM", made, blockCount, blockSize);
        return made;
    }

    /// <summary>
    /// Adds a namespace to a running standalone subsystem (SPDK's <c>nvmf_subsystem_add_ns</c>); its NSID (the lowest
    /// free one when none, or 0, is given). The hosts are told through the Changed Namespace List and its event.
    /// </summary>
    public uint AddNamespace(Subsystem s, string bdevName, uint? nsid, byte[]? nguid, Guid? uuid, uint? anaGroup)
    {
        RefuseWhenPaired(s);
        lock (_registry.SyncRoot)
        {
            if (!_registry.TryGet(bdevName, out Bdev? bdev)) throw new KeyNotFoundException($"bdev '{bdevName}' not found");
            if (ClaimOf(bdev) is string claim) throw new InvalidOperationException($"bdev '{bdevName}' is already {claim}");
            if (_registry.IsDraining(bdev)) throw new InvalidOperationException($"bdev '{bdevName}' is still finishing the commands of its last namespace");
            // Checked here as well as in Subsystem.AddNamespace: before any channel is opened for it.
            uint id = nsid ?? 0;
            if (id == 0)
            {
                for (uint i = 1; i <= s.MaxNamespaces && id == 0; i++)
                    if (s.GetNamespace(i) == null) id = i;
                if (id == 0) throw new InvalidOperationException($"{s.Nqn} has no free NSID (max_namespaces {s.MaxNamespaces})");
            }
            else if (id > s.MaxNamespaces) throw new ArgumentException($"nsid {id} is outside 1..{s.MaxNamespaces}");
            else if (s.GetNamespace(id) != null) throw new InvalidOperationException($"nsid {id} is already in use in {s.Nqn}");
            uint group = anaGroup ?? id;
            if (group == 0 || group > s.MaxNamespaces) throw new ArgumentException($"anagrpid {group} is outside 1..{s.MaxNamespaces}");
            // Identifiers derived from the bdev too: another bdev under a reused NSID is another namespace to the host.
            nguid ??= NodeConfig.DerivedId($"nguid:{bdevName}", s.Nqn, id);
            if (nguid.Length != 16 || nguid.All(b => b == 0)) throw new ArgumentException("nguid must be 16 bytes, not all zero");
            var ns = new Namespace(id, bdev, nguid, uuid ?? NodeConfig.DerivedUuid($"uuid:{bdevName}", s.Nqn, id), group);
            _store?.Attach(s, ns);
            Target.AddNamespace(s, ns);
            return id;
        }
    }

    /// <summary>
    /// Takes a namespace out of a running standalone subsystem (SPDK's <c>nvmf_subsystem_remove_ns</c>). Returns once
    /// the commands that had reached its bdev have finished (at most <paramref name="wait"/>; false if they had not yet).
    /// </summary>
    public bool RemoveNamespace(Subsystem s, uint nsid, TimeSpan wait)
    {
        RefuseWhenPaired(s);
        var drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_registry.SyncRoot)
        {
            Bdev bdev = s.GetNamespace(nsid)?.Bdev ?? throw new KeyNotFoundException($"{s.Nqn} has no namespace {nsid}");
            _registry.Draining(bdev);
            if (Target.RemoveNamespace(s, nsid, () =>
                {
                    _registry.Drained(bdev);
                    drained.TrySetResult();
                }) == null)
            {
                _registry.Drained(bdev);
                throw new KeyNotFoundException($"{s.Nqn} has no namespace {nsid}");
            }
        }
        if (drained.Task.Wait(wait)) return true;
        _log.LogWarning("{Nqn}: namespace {Nsid} is removed, but commands that reached its bdev are still running after {Wait}; the bdev stays busy until they finish",
            s.Nqn, nsid, wait);
        return false;
    }

    /// <summary>
    /// Deletes a RAM bdev (SPDK's <c>bdev_malloc_delete</c>) that backs no namespace; its memory is freed. Unlike SPDK,
    /// a bdev that backs a namespace is refused (remove the namespace first) rather than hot-removed from under it.
    /// </summary>
    public void DeleteMallocBdev(string name)
    {
        Bdev bdev = _registry.RemoveMalloc(name, ClaimOf);
        bdev.Dispose();
        _log.LogInformation("bdev {Name} deleted", name);
    }

    /// <summary>Allows a host on a running standalone subsystem (SPDK's <c>nvmf_subsystem_add_host</c>).</summary>
    public void AllowHost(Subsystem s, string hostNqn)
    {
        RefuseHostChangesWhenPaired(s);
        if (NodeConfig.NqnProblem(hostNqn) is string problem) throw new ArgumentException($"host: {problem}");
        if (!s.AddHost(hostNqn)) throw new InvalidOperationException($"host '{hostNqn}' is already allowed on {s.Nqn}");
        Target.NotifyDiscoveryChanged(hostNqn);
        _log.LogInformation("{Nqn}: host {Host} allowed", s.Nqn, hostNqn);
    }

    /// <summary>
    /// Takes a host off a running standalone subsystem's list and closes its associations, as SPDK's
    /// <c>nvmf_subsystem_remove_host</c> does; how many were closed.
    /// </summary>
    public int DisallowHost(Subsystem s, string hostNqn)
    {
        RefuseHostChangesWhenPaired(s);
        IReadOnlyList<Controller> closing = s.RemoveHost(hostNqn) ?? throw new KeyNotFoundException($"host '{hostNqn}' is not on {s.Nqn}'s list");
        foreach (Controller c in closing) c.Destroy("the host was taken off the subsystem's allowed hosts");
        Target.NotifyDiscoveryChanged(hostNqn);
        _log.LogInformation("{Nqn}: host {Host} no longer allowed; {Count} association(s) closed", s.Nqn, hostNqn, closing.Count);
        return closing.Count;
    }

    /// <summary>Lets any host connect to a running standalone subsystem, or only the listed ones (SPDK's <c>nvmf_subsystem_allow_any_host</c>).</summary>
    public void SetAllowAnyHost(Subsystem s, bool allow)
    {
        RefuseHostChangesWhenPaired(s);
        s.SetAllowAnyHost(allow);
        Target.NotifyDiscoveryChanged(null);
        _log.LogInformation("{Nqn}: {Who} may connect", s.Nqn, allow ? "any host" : "only the listed hosts");
    }

    /// <summary>
    /// Which hosts may reach a paired subsystem must be the same on both nodes: a host refused on the owner but allowed
    /// on the partner would reach the owner's namespaces through the partner's proxy. It is set in both nodes'
    /// configuration (changing it at run time needs the pair to agree, not built yet).
    /// </summary>
    private void RefuseHostChangesWhenPaired(Subsystem s)
    {
        if (s.IsDiscovery) throw new ArgumentException("the discovery subsystem has no host list");
        if (Pair != null)
            throw new NotSupportedException($"{s.Nqn} is served by the HA pair: its hosts are set in both nodes' configuration, not at run time");
    }

    /// <summary>
    /// A paired subsystem's namespaces are the same on both nodes and each belongs to an ANA group one node owns: they
    /// are set in both nodes' configuration (changing them at run time needs the pair to agree, not built yet).
    /// </summary>
    private void RefuseWhenPaired(Subsystem s)
    {
        if (s.IsDiscovery) throw new InvalidOperationException("the discovery subsystem has no namespaces");
        if (Pair != null)
            throw new NotSupportedException($"{s.Nqn} is served by the HA pair: its namespaces are set in both nodes' configuration, not at run time");
    }

    /// <summary>Every bdev: the configured ones, then the partner bdevs of relayed namespaces, then the replicas of the partner's (Cluster:Mirror).</summary>
    public IReadOnlyList<Bdev> Bdevs
    {
        get
        {
            List<Bdev> list = _registry.Snapshot();
            foreach (Subsystem s in Target.Subsystems)
                foreach (Namespace ns in s.Namespaces)
                    if (ns.IsRemote && !list.Contains(ns.Bdev)) list.Add(ns.Bdev);
            list.AddRange(_replicas);
            return list;
        }
    }

    /// <summary>
    /// A transport the configuration asks for that this machine cannot run (a listener's, or the interconnect's when it
    /// must be NVMe/RDMA), as the configuration problem it is; null when every one can run. <see cref="Start"/> refuses
    /// such a configuration; <c>storagenode</c> asks before it starts anything.
    /// </summary>
    public static ConfigException? UnavailableTransport(NodeConfig config)
    {
        for (int i = 0; i < config.Listeners.Count; i++)
        {
            string name = config.Listeners[i].Transport;
            if (Transports.UnavailableReason(name) is string why)
                return new ConfigException($"Listeners:{i}:Transport", $"{name}, but {name.ToUpperInvariant()} is unavailable on this machine: {why}");
        }
        if (config.Cluster?.InterconnectTransport == InterconnectTransport.Rdma && Transports.UnavailableReason(RdmaTransport.TransportName) is string no)
            return new ConfigException("Cluster:InterconnectTransport", $"rdma, but RDMA is unavailable on this machine: {no}");
        return null;
    }

    /// <summary>Starts reactors, then listeners. Returns the bound TCP endpoints.</summary>
    public void Start()
    {
        if (_started) throw new InvalidOperationException("node already started");
        _started = true;
        if (!Shim.IsAvailable) _log.LogWarning("native shim unavailable: {Reason}", Shim.UnavailableReason);
        if (UnavailableTransport(Config) is { } unavailable) throw unavailable;
        string? noRdma = RdmaDevices.UnavailableReason();
        if (noRdma != null) _log.LogInformation("RDMA unavailable: {Reason}", noRdma);
        foreach (Reactor r in _reactors) r.Start();
        Target.Start();
        var eps = new List<IPEndPoint>();
        var rdmaEps = new List<IPEndPoint>();
        foreach (ListenerConfig l in Config.Listeners)
        {
            INvmfTransport transport = l.Transport == RdmaTransport.TransportName ? Rdma! : Tcp;
            IPEndPoint bound = transport.Listen(new ListenAddress(new IPEndPoint(l.Address, l.Port), l.PortId, l.AdvertiseAddress, l.Role, l.RdmaAckTimeout));
            (transport == Tcp ? eps : rdmaEps).Add(bound);
        }
        TcpEndpoints = eps;
        RdmaEndpoints = rdmaEps;
        if (Pair != null)
        {
            ClusterConfig cc = Config.Cluster!;
            // NVMe/TCP always listens: the fallback when this node or the partner has no RDMA.
            InterconnectEndpoint = Tcp.Listen(cc.Interconnect, 0xFFFE, null, ListenerRole.Interconnect);
            if (cc.InterconnectTransport != InterconnectTransport.Tcp && Rdma != null)
            {
                try
                {
                    InterconnectRdmaEndpoint = Rdma.Listen(cc.Interconnect, 0xFFFE, null, ListenerRole.Interconnect, cc.RdmaAckTimeout);
                    Pair.Rdma = Rdma;
                }
                catch (RdmaException e) when (cc.InterconnectTransport == InterconnectTransport.Auto)
                {
                    _log.LogWarning("no NVMe/RDMA interconnect listener on {Endpoint} ({Error}): the interconnect runs over NVMe/TCP", cc.Interconnect, e.Message);
                }
            }
            else if (cc.InterconnectTransport == InterconnectTransport.Auto)
            {
                _log.LogInformation("interconnect over NVMe/TCP: {Reason}", noRdma ?? "RDMA transport not created");
            }
            Pair.Start();
        }
        _log.LogInformation("node {Name} up: {Reactors} reactor(s), poll mode {Mode}, {Subsystems} subsystem(s), pools {Pools} MiB per reactor",
            Config.Name, _reactors.Count, Config.PollMode.ToString().ToLowerInvariant(), Config.Subsystems.Count,
            _reactors.Count > 0 ? _reactors[0].Pools.TotalBytes >> 20 : 0);
    }

    /// <summary>Stops the node; a second call does nothing (native resources are freed once).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Pair?.Dispose();
        Tcp?.Dispose();
        Rdma?.Dispose();
        Target?.Dispose();
        // Give reactors a moment to run the posted disconnects before they stop.
        if (_started) Thread.Sleep(50);
        foreach (Reactor r in _reactors) r.Stop();
        foreach (Subsystem s in Target?.Subsystems ?? [])
            foreach (Namespace ns in s.Namespaces) ns.CloseChannels();
        foreach (DirtyRegionLog l in _dirtyLogs) l.Dispose(); // its thread posts to reactors
        foreach (Reactor r in _reactors) r.Dispose();
        _registry.Dispose();
        foreach (Bdev b in _replicas) b.Dispose();
    }
}
