using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// The seam through which the HA pair fences stale writes on the namespaces this node owns (docs/ha.md). The target
/// counts every I/O command for such a namespace with the gate when its capsule arrives, asks the gate before running
/// it, and tells the gate when it is done. The gate itself lives in the pair (src/StorageNode/Pair); a standalone
/// node has none.
/// </summary>
public interface IIoGate
{
    /// <summary>
    /// A command for a namespace this node owns arrived on <paramref name="ctrl"/> (before any data moves). Returns
    /// the status to fail it with, or success: the command then counts until <see cref="Done"/>. Reactor thread.
    /// </summary>
    NvmeStatus Count(NvmfRequest req, Controller ctrl);

    /// <summary>
    /// True when the command may run now. False when the gate took it: held (the gate hands it back to its reactor
    /// later through <see cref="CommandDispatcher.Resume"/>) or failed (the gate completed it). Reactor thread.
    /// </summary>
    bool Admit(NvmfRequest req);

    /// <summary>The command completed or left the gate: it no longer counts. Idempotent. Reactor thread.</summary>
    void Done(NvmfRequest req);

    /// <summary>The Host Identifier of the host a counted command from the partner's relay is for (Guid.Empty: none).</summary>
    Guid RelayedHostId(NvmfRequest req);
}

/// <summary>A command's state in the gate, kept in the request slot (no allocation per command); opaque to the target.</summary>
public struct GateTicket
{
    /// <summary>What the command counts against while it is in the gate (null: nothing).</summary>
    public object? Path;
    /// <summary>A deadline the gate keeps with the command (Stopwatch ticks; 0: none).</summary>
    public long Deadline;
}
