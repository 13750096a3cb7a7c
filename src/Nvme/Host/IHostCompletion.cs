using StorageNode.Nvme.Spec;

namespace StorageNode.Nvme.Host;

/// <summary>Receives command completions from a host queue (<see cref="TcpHostQueue"/>, <see cref="RdmaHostQueue"/>).</summary>
public interface IHostCompletion
{
    void OnHostComplete(long token, in CompletionQueueEntry cqe);
}
