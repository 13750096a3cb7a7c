using StorageNode.Bdevs;
using StorageNode.Reactors;

namespace StorageNode.Target;

/// <summary>A namespace: an NSID bound to a bdev, with the identifiers hosts use to recognise it.</summary>
public sealed class Namespace
{
    public uint Nsid { get; }
    public Bdev Bdev { get; }
    public byte[] Nguid { get; }
    public Guid Uuid { get; }
    public uint AnaGroupId { get; }

    /// <summary>The namespace's persistent reservation (kept by the owner; a partner-owned namespace's is unused).</summary>
    public ReservationState Reservations { get; }

    /// <summary>
    /// True when the data lives elsewhere (the partner owns the namespace): I/O goes to the channel as whole
    /// commands (<see cref="ICommandChannel"/>).
    /// </summary>
    public bool IsRemote { get; }

    /// <summary>
    /// Set when the namespace is taken out of its subsystem at run time: a command that reaches the bdev after that
    /// fails (Invalid Namespace or Format) instead of running.
    /// </summary>
    internal volatile bool Removed;

    /// <summary>
    /// Set when the namespace's group moved to the partner (a takeover) and another namespace took its place: a command
    /// that reaches it after that fails with ANA Inaccessible, which the host retries on the group's owner.
    /// </summary>
    internal volatile bool MovedAway;

    /// <summary>
    /// Set while the namespace's group is being given to the partner (a giveback): nothing starts on it (a command that
    /// reaches it fails with ANA Inaccessible, which the host retries), so that what ran before can drain.
    /// </summary>
    internal volatile bool Quiesced;

    /// <summary>LBA range locks (fused Compare and Write) over every reactor.</summary>
    public RangeLocks Locks { get; } = new();

    /// <summary>One channel per reactor, indexed by reactor id.</summary>
    internal BdevChannel[] Channels { get; private set; } = [];

    /// <summary>On the owner with <c>Cluster:Mirror</c>: the replica on the partner that every write reaches before it completes.</summary>
    public INamespaceMirror? Mirror { get; set; }

    /// <summary>On the owner with <c>Cluster:Mirror</c>, for a namespace in a file with a state directory: the dirty-region record (docs/ha.md).</summary>
    public DirtyRegionLog? DirtyLog { get; init; }

    /// <summary>
    /// On the owner with <c>Cluster:Mirror</c>: the lineage of this namespace's data (docs/ha.md, "An owner that lost its
    /// data"): kept across restarts for a bdev whose data survives them (a file, with a state directory), new at each
    /// start otherwise (RAM starts empty). 0: none (not mirrored).
    /// </summary>
    public long DataGeneration { get; init; }

    /// <summary>Whether <see cref="DataGeneration"/> is new data the partner's replica has not taken yet (RAM; a file first mirrored, or made anew).</summary>
    public bool DataGenerationIsNew { get; init; }

    /// <summary>Called once when the partner's replica has taken new data (a file namespace keeps that it did); null: nothing to keep.</summary>
    public Action? DataTaken { get; init; }

    /// <summary>While mirrored: overlapping writes reach the replica in the order they ran here.</summary>
    internal WriteOrder WriteOrder { get; } = new();

    /// <summary>
    /// On the partner with <c>Cluster:Mirror</c>: this node's replica of the owner's namespace (set before the channels
    /// open), written only by the owner's mirrored writes.
    /// </summary>
    public Bdev? Replica { get; init; }

    /// <summary>
    /// On the partner: what the owner said of this node's replica, and whether it is whole (every write the owner
    /// completed is on it). Not whole until the owner says otherwise (after this node started, the replica is empty
    /// until a resync).
    /// </summary>
    public ReplicaKnowledge ReplicaKnowledge { get; init; } = new();

    /// <summary>The replica's channels, one per reactor (empty without a replica).</summary>
    internal BdevChannel[] ReplicaChannels { get; private set; } = [];

    public Namespace(uint nsid, Bdev bdev, byte[] nguid, Guid uuid, uint anaGroupId)
    {
        if (nguid.Length != 16) throw new ArgumentException("NGUID must be 16 bytes", nameof(nguid));
        Nsid = nsid;
        Bdev = bdev;
        Nguid = nguid;
        Uuid = uuid;
        AnaGroupId = anaGroupId;
        IsRemote = bdev.TakesWholeCommands;
        Reservations = new ReservationState(nsid);
    }

    /// <summary>
    /// Serves from the replica channels of <paramref name="keeper"/>, the partner's namespace this one replaces (a takeover):
    /// the same bdev, and the channels its copies ran on, so nothing still running on them is closed under it.
    /// </summary>
    internal void TakeReplicaChannelsOf(Namespace keeper, IReadOnlyList<Reactor> reactors)
    {
        if (keeper.Replica != Bdev || keeper.ReplicaChannels.Length != reactors.Count)
            throw new InvalidOperationException($"NSID {Nsid}: the namespace replaced has no replica channels on bdev {Bdev.Name}");
        Locks.Open(reactors);
        Channels = keeper.ReplicaChannels; // shared: the keeper, taken out, never closes them
    }

    /// <summary>
    /// Keeps the data of <paramref name="owned"/>, the namespace this one replaces (its partner took the group over), as
    /// this node's replica of the partner's: on that namespace's own channels (nothing that ran on them is closed under it),
    /// with channels of its own to the partner.
    /// </summary>
    internal void KeepChannelsOf(Namespace owned, IReadOnlyList<Reactor> reactors)
    {
        if (Replica != owned.Bdev || owned.Channels.Length != reactors.Count)
            throw new InvalidOperationException($"NSID {Nsid}: the namespace replaced has no channels on bdev {owned.Bdev.Name}");
        var channels = new BdevChannel[reactors.Count];
        for (int i = 0; i < reactors.Count; i++) channels[i] = Bdev.CreateChannel(reactors[i]);
        Locks.Open(reactors);
        ReplicaChannels = owned.Channels; // shared: the namespace replaced, taken out, never closes them
        Channels = channels;
    }

    internal void OpenChannels(IReadOnlyList<Reactor> reactors)
    {
        var channels = new BdevChannel[reactors.Count];
        for (int i = 0; i < reactors.Count; i++) channels[i] = Bdev.CreateChannel(reactors[i]);
        if (Replica != null)
        {
            var replica = new BdevChannel[reactors.Count];
            for (int i = 0; i < reactors.Count; i++) replica[i] = Replica.CreateChannel(reactors[i]);
            ReplicaChannels = replica;
        }
        Locks.Open(reactors);
        Channels = channels;
    }

    /// <summary>Closes each channel on its own reactor (a namespace removed or replaced at run time, once nothing uses it).</summary>
    internal void CloseChannelsOnTheirReactors(IReadOnlyList<Reactor> reactors)
    {
        BdevChannel[] channels = Channels;
        Channels = [];
        for (int i = 0; i < channels.Length; i++) reactors[i].Post(channels[i].Dispose);
    }

    internal void CloseChannels()
    {
        foreach (BdevChannel c in Channels) c.Dispose();
        Channels = [];
        foreach (BdevChannel c in ReplicaChannels) c.Dispose();
        ReplicaChannels = [];
    }
}
