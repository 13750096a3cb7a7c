using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace StorageNode.Target;

/// <summary>
/// The node's open connections against <c>Target:MaxConnections</c>, over every transport and listener (the pair's
/// interconnect listener included). A transport takes a slot before it builds a queue pair and gives it back when the
/// queue pair closes; at the limit the new connection is closed (NVMe/TCP) or rejected (NVMe/RDMA) at once. Refusals
/// are logged as one warning naming the limit and the key, at most every <see cref="WarningInterval"/>, with the number
/// refused since the last one.
/// </summary>
public sealed class ConnectionLimit
{
    /// <summary>Least time between two refusal warnings.</summary>
    public static readonly TimeSpan WarningInterval = TimeSpan.FromSeconds(10);

    private readonly ILogger _log;
    private readonly Func<long> _now;
    private readonly long _intervalTicks;
    private readonly object _warnLock = new();
    private int _open;
    private long _refused;
    private long _unreported;
    private bool _warned;
    private long _lastWarning;

    /// <param name="now">Stopwatch ticks (tests pass their own clock).</param>
    public ConnectionLimit(int max, ILogger log, Func<long>? now = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(max, 1);
        Max = max;
        _log = log;
        _now = now ?? Stopwatch.GetTimestamp;
        _intervalTicks = (long)(WarningInterval.TotalSeconds * Stopwatch.Frequency);
    }

    public int Max { get; }
    /// <summary>Connections holding a slot now.</summary>
    public int Open => Volatile.Read(ref _open);
    /// <summary>Connections refused since the node started.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>Takes a slot for a new connection; false (and the warning, rate-limited) at the limit. Any thread.</summary>
    public bool TryAcquire(string transport, string peer)
    {
        while (true)
        {
            int n = Volatile.Read(ref _open);
            if (n >= Max)
            {
                Refuse(transport, peer, n);
                return false;
            }
            if (Interlocked.CompareExchange(ref _open, n + 1, n) == n) return true;
        }
    }

    /// <summary>A connection that held a slot closed. Any thread.</summary>
    public void Release()
    {
        int n = Interlocked.Decrement(ref _open);
        Debug.Assert(n >= 0, "a connection slot was released twice");
    }

    private void Refuse(string transport, string peer, int open)
    {
        Interlocked.Increment(ref _refused);
        long count;
        lock (_warnLock)
        {
            _unreported++;
            long now = _now();
            if (_warned && now - _lastWarning < _intervalTicks) return;
            _warned = true;
            _lastWarning = now;
            count = _unreported;
            _unreported = 0;
        }
        _log.LogWarning("{Transport} connection from {Peer} refused: {Open} connection(s) open, the limit (Target:MaxConnections = {Max}); " +
                        "{Count} refused since the last such warning (at most one every {Seconds:0} s)",
            transport, peer, open, Max, count, WarningInterval.TotalSeconds);
    }
}
