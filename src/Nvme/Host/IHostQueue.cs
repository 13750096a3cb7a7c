using StorageNode.Nvme.Spec;

namespace StorageNode.Nvme.Host;

/// <summary>
/// One host-side queue of an NVMe-oF association, whatever the transport (<see cref="TcpHostQueue"/>,
/// <see cref="RdmaHostQueue"/>). One thread submits and polls. A command's data buffer must stay valid (pinned)
/// until its completion is delivered.
/// </summary>
public unsafe interface IHostQueue : IDisposable
{
    /// <summary>"tcp" or "rdma".</summary>
    string Transport { get; }
    int Depth { get; }
    /// <summary>Largest write sent in-capsule (0: none).</summary>
    uint InCapsuleDataSize { get; set; }
    bool IsBroken { get; }
    string? Error { get; }
    /// <summary>
    /// A descriptor that becomes readable when the queue has work: the socket (TCP), or the completion channel
    /// once the queue armed it (RDMA in event mode); -1 when there is none.
    /// </summary>
    int Fd { get; }
    /// <summary>True when the queue must be polled every reactor iteration (its descriptor alone is not enough).</summary>
    bool NeedsPolling { get; }

    /// <summary>Queues a command; false when every slot is busy (the caller keeps it). Never blocks.</summary>
    bool TrySubmit(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, IHostCompletion callback, long token);
    /// <summary>Sends what is queued and delivers what completed. Throws once broken.</summary>
    int Poll();
    /// <summary>The descriptor was readable: process what arrived; never throws.</summary>
    int OnReadable();
    /// <summary>Hands what is queued to the transport; never throws (a failure breaks the queue).</summary>
    int SendPending();
    bool HasPendingSends { get; }
    /// <summary>Blocks up to <paramref name="timeoutMs"/> for something to process (idle waits of synchronous callers).</summary>
    void WaitReadable(int timeoutMs);
}
