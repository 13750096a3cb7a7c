namespace StorageNode.Target;

/// <summary>
/// LBA range locks of one namespace, as SPDK's bdev layer has them for Compare and Write: while a range is locked, no
/// other command touching it runs on any reactor, and the lock is granted only once every command that was already
/// running on it has finished. Each reactor keeps its own view (<see cref="Channel"/>, touched only on that reactor):
/// the ranges locked, the commands parked behind them, and how many commands are running, counted in two epochs so
/// that a lock waits only for the commands that started before it. One lock at a time per namespace (they are rare:
/// a fused Compare and Write); the rest queue.
/// </summary>
public sealed class RangeLocks
{
    private readonly object _lock = new();
    private readonly Queue<(ulong Start, ulong End, Action Granted)> _waiting = new();
    private bool _held;
    private Channel[] _channels = [];
    private Reactors.Reactor[] _reactors = [];

    /// <summary>One reactor's part (reactor thread only).</summary>
    public sealed class Channel
    {
        internal ulong LockedStart, LockedEnd; // [start, end); end 0: nothing locked
        internal readonly List<NvmfRequest> Parked = [];
        internal int Epoch;
        internal readonly int[] Running = new int[2];
        internal Action? Drained;

        /// <summary>True when a command on [start, start+count) must wait for the lock (it is parked, and runs on unlock).</summary>
        internal bool MustWait(NvmfRequest req, ulong start, ulong count)
        {
            if (LockedEnd == 0 || start >= LockedEnd || start + count <= LockedStart) return false;
            req.PendingOps = 1; // the slot stays allocated while parked, even if the connection closes
            Parked.Add(req);
            return true;
        }

        /// <summary>Takes a parked command out (Abort); true when it was parked here.</summary>
        internal bool TryUnpark(NvmfRequest req) => Parked.Remove(req);

        /// <summary>A command starts: it counts until <see cref="Finished"/>.</summary>
        internal void Started(NvmfRequest req)
        {
            req.RangeLock.Channel = this;
            req.RangeLock.Epoch = Epoch;
            Running[Epoch]++;
        }

        internal void Finished(NvmfRequest req)
        {
            req.RangeLock.Channel = null;
            int e = req.RangeLock.Epoch;
            if (--Running[e] == 0 && e != Epoch && Drained is { } d)
            {
                Drained = null;
                d();
            }
        }
    }

    internal void Open(IReadOnlyList<Reactors.Reactor> reactors)
    {
        _reactors = [.. reactors];
        var ch = new Channel[reactors.Count];
        for (int i = 0; i < ch.Length; i++) ch[i] = new Channel();
        _channels = ch;
    }

    internal Channel For(int reactorId) => _channels[reactorId];

    /// <summary>
    /// Locks [start, end) on every reactor; <paramref name="granted"/> runs (on some reactor) once nothing that started
    /// before is still running on the range. Any thread.
    /// </summary>
    public void Lock(ulong start, ulong end, Action granted)
    {
        lock (_lock)
        {
            if (_held)
            {
                _waiting.Enqueue((start, end, granted));
                return;
            }
            _held = true;
        }
        Grant(start, end, granted);
    }

    private void Grant(ulong start, ulong end, Action granted)
    {
        int pending = _channels.Length;
        void Ack()
        {
            if (Interlocked.Decrement(ref pending) == 0) granted();
        }
        for (int i = 0; i < _channels.Length; i++)
        {
            Channel c = _channels[i];
            _reactors[i].Post(() =>
            {
                c.LockedStart = start;
                c.LockedEnd = end;
                int old = c.Epoch;
                c.Epoch ^= 1;
                if (c.Running[old] == 0) Ack();
                else c.Drained = Ack;
            });
        }
    }

    /// <summary>Unlocks the range: parked commands run (on their reactors), and the next lock, if any, is granted.</summary>
    public void Unlock()
    {
        for (int i = 0; i < _channels.Length; i++)
        {
            Channel c = _channels[i];
            _reactors[i].Post(() =>
            {
                c.LockedEnd = 0;
                if (c.Parked.Count == 0) return;
                NvmfRequest[] parked = [.. c.Parked];
                c.Parked.Clear();
                foreach (NvmfRequest r in parked) IoCommands.RunParked(r);
            });
        }
        (ulong, ulong, Action) next;
        lock (_lock)
        {
            if (!_waiting.TryDequeue(out next))
            {
                _held = false;
                return;
            }
        }
        Grant(next.Item1, next.Item2, next.Item3);
    }
}
