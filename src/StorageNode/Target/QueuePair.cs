using StorageNode.Nvme.Spec;
using StorageNode.Reactors;

namespace StorageNode.Target;

public enum RequestState : byte
{
    Free,
    /// <summary>Capsule arrived; in-capsule data still being received.</summary>
    ReceivingCapsuleData,
    /// <summary>Waiting for a data buffer from the reactor's pool.</summary>
    NeedBuffer,
    /// <summary>Host-to-controller data being pulled (R2T / RDMA READ).</summary>
    TransferringHostData,
    /// <summary>Handed to the command handlers / bdev.</summary>
    Executing,
    /// <summary>Response (and controller-to-host data) queued to the transport.</summary>
    Completing,
}

/// <summary>
/// Transport-independent half of a queue pair: which controller and queue it serves, submission queue
/// head accounting, statistics. The transport subclass moves capsules and data.
/// </summary>
public abstract class QueuePair : ReactorSource
{
    public Reactor Reactor { get; }
    public NvmfTarget Target { get; }
    /// <summary>The listener this connection arrived on (its role decides what the controller may reach).</summary>
    public ListenerInfo Listener { get; }
    public Controller? Controller { get; internal set; }
    public ushort Qid { get; internal set; }
    /// <summary>Submission queue size (1-based) from Connect.</summary>
    public ushort SqSize { get; internal set; }
    public bool SqFlowControlDisabled { get; internal set; }
    public bool Connected => Controller != null;
    private ushort _sqHead;
    private readonly long _createdTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();

    // SMART counters, summed per controller on demand.
    /// <summary>The first command of a fused operation, until its second arrives (FusedCommands).</summary>
    internal NvmfRequest? FusedFirst;
    /// <summary>How the last first command failed as it arrived (its second, next, is aborted with it); success: it did not.</summary>
    internal Nvme.Spec.NvmeStatus FusedFirstFailed;

    public long ReadCommands;
    public long WriteCommands;
    public long BytesRead;
    public long BytesWritten;

    protected QueuePair(Reactor reactor, NvmfTarget target, ListenerInfo listener)
    {
        Reactor = reactor;
        Target = target;
        Listener = listener;
    }

    /// <summary>The SQHD value to report after consuming one more submission queue entry.</summary>
    public ushort AdvanceSqHead()
    {
        if (SqFlowControlDisabled) return 0xFFFF;
        if (SqSize == 0) return 0;
        _sqHead = (ushort)((_sqHead + 1) % SqSize);
        return _sqHead;
    }

    /// <summary>Largest in-capsule data this queue accepts.</summary>
    public abstract uint InCapsuleDataSize { get; }

    /// <summary>Queues the response (and any controller-to-host data). Reactor thread only.</summary>
    public abstract void CompleteRequest(NvmfRequest req);

    /// <summary>Closes the connection. Any thread; the work happens on the owning reactor.</summary>
    public abstract void Disconnect(string reason);

    /// <summary>Peer's address, for logs and discovery.</summary>
    public abstract string PeerAddress { get; }

    /// <summary>True once the connection is gone (commands still in a bdev complete into nothing).</summary>
    public abstract bool IsClosed { get; }

    /// <summary>Closes the connection and ends this queue. Reactor thread only.</summary>
    public abstract void Close(string reason);

    /// <summary>
    /// Abort: completes the command with this CID with Command Abort Requested if it has not started. True when it did.
    /// Reactor thread.
    /// </summary>
    internal abstract bool TryAbort(ushort cid);

    /// <summary>True when the connection has not completed Connect within <paramref name="ticks"/> (Stopwatch ticks).</summary>
    public bool ConnectOverdue(long now, long ticks) => !Connected && !IsClosed && now - _createdTimestamp > ticks;

    internal void OnCommandFailed(NvmfRequest req)
    {
        Controller?.RecordError(Qid, req.Sqe.Cid, req.Status, req.Sqe.Nsid, req.Sqe.Slba);
    }
}
