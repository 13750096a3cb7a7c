using Microsoft.Extensions.Logging;

namespace StorageNode.Pair;

/// <summary>
/// Threads of the pair's own for control work that blocks while the partner answers (relay opens, which may wait out
/// an owner's drain; drain queries; reservation and replica notices). Never the shared thread pool: there a few such
/// calls would hold every worker, and everything else queued there (timers, the drains' waits, the management RPC)
/// would wait for the pool to add threads, at about one a second (a relay open measured at well over a second on a
/// busy machine). Each item gets a thread of its own while it runs: an idle thread takes it, else a new one starts, up
/// to <see cref="MaxThreads"/> (then items wait their turn, in order); an idle thread ends after <see cref="IdleExit"/>.
/// </summary>
public sealed class PairWorkers : IDisposable
{
    public const int MaxThreads = 32;
    public static readonly TimeSpan IdleExit = TimeSpan.FromSeconds(10);

    private readonly string _name;
    private readonly ILogger _log;
    // Everything below under _lock: the queue, the threads, the idle ones (waiting in Monitor.Wait) and the wake-ups
    // already given to them (a pulsed thread has not yet taken its item: it must not be counted twice).
    private readonly object _lock = new();
    private readonly Queue<Action> _queue = new();
    private int _threads, _idle, _wakes, _started;
    private bool _stopping;

    public PairWorkers(string name, ILogger log)
    {
        _name = name;
        _log = log;
    }

    /// <summary>Threads running now (for tests and status).</summary>
    public int Threads
    {
        get { lock (_lock) return _threads; }
    }

    /// <summary>Runs <paramref name="work"/> on one of the pair's threads (any thread; returns at once). False: the node is stopping.</summary>
    public bool Run(Action work)
    {
        bool start;
        lock (_lock)
        {
            if (_stopping) return false;
            _queue.Enqueue(work);
            start = false;
            if (_idle - _wakes > 0)
            {
                _wakes++;
                Monitor.Pulse(_lock);
            }
            else if (_threads < MaxThreads)
            {
                _threads++;
                start = true;
            }
        }
        if (start) new Thread(Loop) { IsBackground = true, Name = $"{_name} {Interlocked.Increment(ref _started)}" }.Start();
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
            Action a;
            lock (_lock)
            {
                while (_queue.Count == 0)
                {
                    if (_stopping)
                    {
                        _threads--;
                        return;
                    }
                    _idle++;
                    bool woken = Monitor.Wait(_lock, IdleExit);
                    _idle--;
                    if (woken) _wakes--;
                    // A wake-up given to a thread that had just timed out reached nobody: the wake-ups still on their way
                    // are at most the threads still waiting.
                    _wakes = Math.Clamp(_wakes, 0, _idle);
                    if (!woken && _queue.Count == 0)
                    {
                        _threads--; // idle long enough
                        return;
                    }
                }
                a = _queue.Dequeue();
            }
            try { a(); }
            catch (Exception e) { _log.LogError(e, "pair work failed"); }
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _stopping = true;
            Monitor.PulseAll(_lock);
        }
    }
}
