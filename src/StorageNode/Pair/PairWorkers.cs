using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace StorageNode.Pair;

/// <summary>
/// Threads of the pair's own for control work that blocks while the partner answers (relay opens, which may wait out
/// an owner's drain; drain queries; reservation and replica notices). Never the shared thread pool: there a few such
/// calls would hold every worker, and everything else queued there (timers, the drains' waits, the management RPC)
/// would wait for the pool to add threads, at about one a second (a relay open measured at well over a second on a
/// busy machine). A thread is started when work arrives and none is idle, up to <see cref="MaxThreads"/> (then work
/// waits its turn); an idle thread ends after <see cref="IdleExit"/>.
/// </summary>
public sealed class PairWorkers : IDisposable
{
    public const int MaxThreads = 32;
    public static readonly TimeSpan IdleExit = TimeSpan.FromSeconds(10);

    private readonly string _name;
    private readonly ILogger _log;
    private readonly BlockingCollection<Action> _work = new(new ConcurrentQueue<Action>());
    private readonly object _lock = new();
    private int _threads;
    private int _idle;
    private int _started;

    public PairWorkers(string name, ILogger log)
    {
        _name = name;
        _log = log;
    }

    /// <summary>Threads running now (for tests and status).</summary>
    public int Threads => Volatile.Read(ref _threads);

    /// <summary>Runs <paramref name="work"/> on one of the pair's threads (any thread; returns at once). False: the node is stopping.</summary>
    public bool Run(Action work)
    {
        try
        {
            _work.Add(work);
        }
        catch (InvalidOperationException)
        {
            return false; // completed: the node is stopping
        }
        lock (_lock)
        {
            // Each queued item needs a thread of its own (it may block): one more while they outnumber the idle ones.
            if (_work.Count <= _idle || _threads >= MaxThreads) return true;
            _threads++;
            _idle++; // counted idle until it takes work
        }
        var t = new Thread(Loop) { IsBackground = true, Name = $"{_name} {Interlocked.Increment(ref _started)}" };
        t.Start();
        return true;
    }

    /// <summary>Runs <paramref name="work"/> on one of the pair's threads; its result completes the task (cancelled: the node is stopping).</summary>
    public Task<T> Run<T>(Func<T> work)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        bool queued = Run(() =>
        {
            try { done.SetResult(work()); }
            catch (Exception e) { done.SetException(e); }
        });
        if (!queued) done.SetCanceled();
        return done.Task;
    }

    private void Loop()
    {
        while (true)
        {
            Action? a;
            try
            {
                if (!_work.TryTake(out a, IdleExit)) a = null;
            }
            catch (ObjectDisposedException)
            {
                a = null;
            }
            lock (_lock)
            {
                if (a == null)
                {
                    // Idle for long enough (or stopping): this thread ends, unless work arrived just now that the other
                    // idle threads cannot all take.
                    if (!_work.IsAddingCompleted && _work.Count >= _idle) continue;
                    _idle--;
                    _threads--;
                    return;
                }
                _idle--;
            }
            try { a(); }
            catch (Exception e) { _log.LogError(e, "pair work failed"); }
            lock (_lock) _idle++;
        }
    }

    public void Dispose() => _work.CompleteAdding();
}
