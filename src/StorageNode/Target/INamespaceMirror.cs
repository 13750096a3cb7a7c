using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>Told when a write's copy reached (or could not reach) the namespace's replica on the partner. Reactor thread.</summary>
public interface IMirrorCompletion
{
    /// <summary>The copy was answered (or failed: the replica is then out of sync); the write completes with its own status.</summary>
    void OnMirrored(NvmeStatus status);

    /// <summary>
    /// The write ran here, its copy is not on the replica, and it may not complete as done (the replica's keeper may
    /// take the group over: this node fenced itself off it, or the group moved): it fails with <paramref name="status"/>,
    /// which the host retries on another path.
    /// </summary>
    void Abandon(NvmeStatus status);
}

/// <summary>
/// The owner's side of a namespace's replica on the partner (docs/ha.md, "Mirroring"), set by the pair on the
/// namespaces this node owns when <c>Cluster:Mirror</c> is on.
/// </summary>
public unsafe interface INamespaceMirror
{
    /// <summary>Whether a write that completes now must reach the replica before its host hears of it (in sync, or resyncing).</summary>
    bool Active { get; }

    /// <summary>In sync (not resyncing): the replica holds everything the namespace does.</summary>
    bool IsInSync { get; }

    /// <summary>The replica misses a write (or may): out of sync until a resync.</summary>
    void Lost(string why);

    /// <summary>A write completed here without reaching the replica (out of sync): its blocks must go in the next resync.</summary>
    void Missed(in SubmissionQueueEntry sqe);

    /// <summary>
    /// While the replica is leaving (out of sync, and the partner may still take it for whole): holds a write that
    /// completes without it until the partner no longer does; <paramref name="done"/> is then told on reactor
    /// <paramref name="reactorId"/> with <paramref name="status"/>. False when not leaving: the caller completes it now.
    /// </summary>
    bool HoldWhileLeaving(int reactorId, IMirrorCompletion done, NvmeStatus status);

    /// <summary>
    /// Sends the replica's copy of a write that completed here, on reactor <paramref name="reactorId"/>; <paramref name="done"/>
    /// is called on that reactor once the replica has it, or could not get it (the replica is then out of sync).
    /// </summary>
    void Send(int reactorId, in SubmissionQueueEntry sqe, byte* data, uint length, IMirrorCompletion done);
}
