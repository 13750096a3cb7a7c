using System.Diagnostics;
using StorageNode.Target;

namespace StorageNode.Transport;

/// <summary>
/// One transport's live queue pairs, per reactor. Each holds one of the node's connection slots
/// (<c>Target:MaxConnections</c>) from the time it is accepted until it closes. A queue pair that has not completed
/// Connect within <see cref="ConnectTimeout"/> is closed; each reactor checks its own queue pairs once a second.
/// </summary>
internal sealed class QueuePairRegistry<TQueuePair> where TQueuePair : QueuePair
{
    private readonly NvmfTarget _target;
    private readonly List<TQueuePair>[] _perReactor;

    public QueuePairRegistry(NvmfTarget target, TimeSpan connectTimeout)
    {
        _target = target;
        ConnectTimeout = connectTimeout;
        _perReactor = new List<TQueuePair>[target.Reactors.Count];
        for (int i = 0; i < _perReactor.Length; i++)
        {
            _perReactor[i] = [];
            int id = i;
            target.Reactors[i].AddTimer(TimeSpan.FromSeconds(1), () => CloseOverdue(id));
        }
    }

    /// <summary>A connection that has not completed Connect within this time is closed.</summary>
    public TimeSpan ConnectTimeout { get; set; }

    /// <summary>Live queue pairs on every reactor.</summary>
    public int Count
    {
        get
        {
            int n = 0;
            foreach (List<TQueuePair> l in _perReactor) lock (l) n += l.Count;
            return n;
        }
    }

    /// <summary>A queue pair accepted with a connection slot (already acquired) now lives on its reactor.</summary>
    public void Add(TQueuePair qp)
    {
        List<TQueuePair> list = _perReactor[qp.Reactor.Id];
        lock (list) list.Add(qp);
    }

    /// <summary>A queue pair closed (its reactor, once): its connection slot is free again.</summary>
    public void Remove(TQueuePair qp)
    {
        List<TQueuePair> list = _perReactor[qp.Reactor.Id];
        bool removed;
        lock (list) removed = list.Remove(qp);
        if (removed) _target.Connections.Release();
    }

    private void CloseOverdue(int reactorId)
    {
        // Runs on the reactor every second: allocation-free unless a connection is overdue.
        List<TQueuePair> list = _perReactor[reactorId];
        long now = Stopwatch.GetTimestamp();
        long limit = (long)(ConnectTimeout.TotalSeconds * Stopwatch.Frequency);
        List<TQueuePair>? overdue = null;
        lock (list)
        {
            foreach (TQueuePair qp in list)
                if (qp.ConnectOverdue(now, limit)) (overdue ??= []).Add(qp);
        }
        if (overdue == null) return;
        foreach (TQueuePair qp in overdue) qp.Close($"no Connect within {ConnectTimeout.TotalSeconds:0} s");
    }

    /// <summary>Asks every queue pair to disconnect (on its reactor).</summary>
    public void DisconnectAll(string reason)
    {
        foreach (List<TQueuePair> l in _perReactor)
        {
            TQueuePair[] snapshot;
            lock (l) snapshot = [.. l];
            foreach (TQueuePair qp in snapshot) qp.Disconnect(reason);
        }
    }
}
