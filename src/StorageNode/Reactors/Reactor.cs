using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using StorageNode.Interop;

namespace StorageNode.Reactors;

public enum PollMode
{
    /// <summary>Spin on epoll_wait(0) forever: lowest latency, one core per reactor.</summary>
    Busy,
    /// <summary>Spin while there is work, sleep in epoll_wait after a quiet spell (the default).</summary>
    Adaptive,
    /// <summary>Always sleep in epoll_wait until a descriptor is ready.</summary>
    Interrupt,
}

/// <summary>A file descriptor a reactor polls: a connection, a completion queue's eventfd.</summary>
public abstract class ReactorSource
{
    /// <summary>The epoll token while registered, else -1.</summary>
    public int Token { get; internal set; } = -1;
    internal bool IsDirty;

    public abstract int Fd { get; }

    /// <summary>Called when epoll reports the descriptor ready.</summary>
    public abstract int OnReady(uint events);

    /// <summary>Called once at the end of a loop iteration in which the source was marked dirty.</summary>
    public abstract int Flush();

    /// <summary>
    /// An exception escaped <see cref="OnReady"/> or <see cref="Flush"/>: a bug, contained to this source. The
    /// default does nothing; connections close themselves so one bad connection cannot stop the reactor.
    /// </summary>
    public virtual void OnFault(Exception e) { }
}

/// <summary>Something polled every loop iteration regardless of descriptors (bdev completion queues).</summary>
public interface IReactorPoller
{
    int Poll();
}

/// <summary>
/// One poll-mode thread. Sources (connections) live on one reactor for their whole life; other threads talk
/// to a reactor only through <see cref="Post"/>. Everything a reactor owns is touched only by its thread.
/// </summary>
public sealed unsafe class Reactor : IDisposable
{
    private const int MaxEvents = 256;
    private const ulong WakeToken = ulong.MaxValue;

    private readonly ILogger _log;
    private readonly int _epfd;
    private readonly int _wakeFd;
    private readonly Thread _thread;
    private readonly ConcurrentQueue<Action> _messages = new();
    private readonly Libc.EpollEvent* _events;

    private ReactorSource?[] _sources = new ReactorSource?[64];
    private readonly Stack<int> _freeTokens = new();
    private int _nextToken;
    // Sources to visit again this iteration (flush pending sends, leftover parsed input). Two lists: the flush walks
    // one while sources it touches (a relay's completion marks the host's connection, a source marks itself again)
    // are added to the other, so nothing added during a flush overwrites an entry not yet visited.
    private ReactorSource?[] _dirty = new ReactorSource?[64];
    private ReactorSource?[] _flushing = new ReactorSource?[64];
    private int _dirtyCount;
    private IReactorPoller[] _pollers = [];
    private readonly List<(long PeriodTicks, Action Action)> _timerDefs = [];
    private long[] _timerNext = [];
    private volatile bool _stop;
    private int _sleeping;

    public int Id { get; }
    public string Name { get; }
    public PollMode Mode { get; }
    public long AdaptiveSpinTicks { get; }
    public DataBufferPools Pools { get; }

    /// <summary>Timestamp (Stopwatch ticks) taken at the top of the current loop iteration.</summary>
    public long Now { get; private set; }

    /// <summary>How many times the reactor has asked epoll what is ready (one per iteration).</summary>
    public long WaitRound { get; private set; }

    /// <summary>
    /// When the epoll wait before the current one began (Stopwatch ticks): a descriptor that wait did not report readable
    /// had nothing to read at some moment after this (level-triggered epoll), so what it holds now arrived after it.
    /// </summary>
    public long PreviousWaitStart { get; private set; } = Stopwatch.GetTimestamp();
    private long _waitStart = Stopwatch.GetTimestamp();

    /// <summary>The previous epoll wait reported every ready descriptor (it returned fewer events than it had room for).</summary>
    public bool PreviousWaitSawAll { get; private set; }
    private bool _waitSawAll;

    public long Iterations;
    public long Sleeps;

    public Reactor(int id, string name, PollMode mode, TimeSpan adaptiveSpin, PoolOptions pools, ILogger log)
    {
        Id = id;
        Name = name;
        Mode = mode;
        AdaptiveSpinTicks = (long)(adaptiveSpin.TotalSeconds * Stopwatch.Frequency);
        _log = log;
        Pools = new DataBufferPools(pools);
        _epfd = Libc.EpollCreate1(Libc.EPOLL_CLOEXEC);
        if (_epfd < 0) throw new InvalidOperationException($"epoll_create1: {Libc.StrError(Libc.Errno)}");
        _wakeFd = Libc.EventFd(0, Libc.EFD_NONBLOCK | Libc.EFD_CLOEXEC);
        if (_wakeFd < 0) throw new InvalidOperationException($"eventfd: {Libc.StrError(Libc.Errno)}");
        Libc.EpollEvent ev = new() { Events = Libc.EPOLLIN, Data = WakeToken };
        Libc.EpollCtl(_epfd, Libc.EPOLL_CTL_ADD, _wakeFd, &ev);
        _events = (Libc.EpollEvent*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)(MaxEvents * sizeof(Libc.EpollEvent)));
        _thread = new Thread(Run) { Name = name, IsBackground = true };
    }

    public bool IsCurrentThread => Thread.CurrentThread == _thread;

    public void Start() => _thread.Start();

    /// <summary>Runs <paramref name="action"/> on the reactor thread. Any thread; allocates (control path only).</summary>
    public void Post(Action action)
    {
        _messages.Enqueue(action);
        if (Volatile.Read(ref _sleeping) != 0 || Mode == PollMode.Interrupt) Wake();
    }

    private void Wake()
    {
        ulong one = 1;
        Libc.Write(_wakeFd, &one, 8);
    }

    /// <summary>Adds a descriptor to this reactor's epoll set. Reactor thread only.</summary>
    public int Register(ReactorSource source, bool writable = false)
    {
        if (source.Token >= 0) throw new InvalidOperationException("source already registered");
        int token = _freeTokens.Count > 0 ? _freeTokens.Pop() : _nextToken++;
        if (token >= _sources.Length) Array.Resize(ref _sources, _sources.Length * 2);
        _sources[token] = source;
        Libc.EpollEvent ev = new() { Events = Libc.EPOLLIN | Libc.EPOLLRDHUP | (writable ? Libc.EPOLLOUT : 0), Data = (ulong)token };
        if (Libc.EpollCtl(_epfd, Libc.EPOLL_CTL_ADD, source.Fd, &ev) < 0)
        {
            _sources[token] = null;
            _freeTokens.Push(token);
            throw new InvalidOperationException($"epoll_ctl(ADD): {Libc.StrError(Libc.Errno)}");
        }
        source.Token = token;
        return token;
    }

    /// <summary>Asks epoll to also report the descriptor writable (a send could not complete).</summary>
    public void SetWritable(ReactorSource source, bool writable)
    {
        if (source.Token < 0) return;
        Libc.EpollEvent ev = new() { Events = Libc.EPOLLIN | Libc.EPOLLRDHUP | (writable ? Libc.EPOLLOUT : 0), Data = (ulong)source.Token };
        Libc.EpollCtl(_epfd, Libc.EPOLL_CTL_MOD, source.Fd, &ev);
    }

    /// <summary>Removes a descriptor; call before closing it. Reactor thread only.</summary>
    public void Unregister(ReactorSource source)
    {
        int token = source.Token;
        if (token < 0 || token >= _sources.Length || _sources[token] != source) return;
        Libc.EpollCtl(_epfd, Libc.EPOLL_CTL_DEL, source.Fd, null);
        _sources[token] = null;
        _freeTokens.Push(token);
        source.Token = -1;
    }

    /// <summary>Marks a source to be flushed at the end of this iteration (and polled again next time).</summary>
    public void MarkDirty(ReactorSource source)
    {
        if (source.IsDirty) return;
        source.IsDirty = true;
        if (_dirtyCount == _dirty.Length) Array.Resize(ref _dirty, _dirty.Length * 2);
        _dirty[_dirtyCount++] = source;
    }

    public void AddPoller(IReactorPoller poller) => Post(() => _pollers = [.. _pollers, poller]);

    public void RemovePoller(IReactorPoller poller) => Post(() => _pollers = Array.FindAll(_pollers, p => p != poller));

    /// <summary>Adds a periodic callback run on the reactor thread. Call before <see cref="Start"/>.</summary>
    public void AddTimer(TimeSpan period, Action action)
    {
        _timerDefs.Add(((long)(period.TotalSeconds * Stopwatch.Frequency), action));
    }

    private void Run()
    {
        _timerNext = new long[_timerDefs.Count];
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < _timerNext.Length; i++) _timerNext[i] = start + _timerDefs[i].PeriodTicks;
        long lastWork = start;
        try
        {
            while (!_stop)
            {
                Now = Stopwatch.GetTimestamp();
                Iterations++;
                int timeout = 0;
                if (Mode == PollMode.Interrupt || (Mode == PollMode.Adaptive && Now - lastWork > AdaptiveSpinTicks))
                    timeout = SleepTimeoutMs();
                int work = RunOnce(timeout);
                if (work > 0) lastWork = Now;
                // An adaptive reactor spins politely: with more runnable threads than cores (a node, its
                // partner and a client on two cores) a hard spin would hold the core the work needs.
                else if (Mode == PollMode.Adaptive && timeout == 0) Thread.Yield();
            }
        }
        catch (Exception e)
        {
            _log.LogCritical(e, "reactor {Name} failed", Name);
            throw;
        }
    }

    private int SleepTimeoutMs()
    {
        if (_dirtyCount > 0 || !_messages.IsEmpty) return 0;
        long next = long.MaxValue;
        foreach (long t in _timerNext) next = Math.Min(next, t);
        long ms = next == long.MaxValue ? 100 : (next - Now) * 1000 / Stopwatch.Frequency;
        return (int)Math.Clamp(ms, 0, 100);
    }

    /// <summary>One loop iteration; exposed for tests that drive a reactor by hand.</summary>
    internal int RunOnce(int timeoutMs)
    {
        int work = 0;
        if (timeoutMs != 0)
        {
            Volatile.Write(ref _sleeping, 1);
            // Re-check after publishing the flag so a Post that raced with us is not missed.
            if (!_messages.IsEmpty) timeoutMs = 0;
            Sleeps++;
        }
        PreviousWaitStart = _waitStart;
        PreviousWaitSawAll = _waitSawAll;
        _waitStart = Stopwatch.GetTimestamp();
        WaitRound++;
        int n = Libc.EpollWait(_epfd, _events, MaxEvents, timeoutMs);
        _waitSawAll = n < MaxEvents;
        if (timeoutMs != 0)
        {
            Volatile.Write(ref _sleeping, 0);
            Now = Stopwatch.GetTimestamp();
        }
        for (int i = 0; i < n; i++)
        {
            ulong token = _events[i].Data;
            if (token == WakeToken)
            {
                ulong v;
                Libc.Read(_wakeFd, &v, 8);
                continue;
            }
            ReactorSource? s = (int)token < _sources.Length ? _sources[(int)token] : null;
            if (s == null) continue;
            try
            {
                work += s.OnReady(_events[i].Events);
            }
            catch (Exception e)
            {
                Fault(s, e);
            }
        }

        while (_messages.TryDequeue(out Action? msg))
        {
            work++;
            try { msg(); }
            catch (Exception e) { _log.LogError(e, "reactor {Name}: message failed", Name); }
        }

        IReactorPoller[] pollers = _pollers;
        for (int i = 0; i < pollers.Length; i++) work += pollers[i].Poll();

        // Flush every source touched this iteration; a source that still has work marks itself again.
        int count = _dirtyCount;
        if (count > 0)
        {
            ReactorSource?[] flushing = _dirty;
            _dirty = _flushing;
            _flushing = flushing;
            _dirtyCount = 0;
            for (int i = 0; i < count; i++)
            {
                ReactorSource s = flushing[i]!;
                flushing[i] = null;
                s.IsDirty = false;
                try
                {
                    work += s.Flush();
                }
                catch (Exception e)
                {
                    Fault(s, e);
                }
            }
        }

        for (int i = 0; i < _timerNext.Length; i++)
        {
            if (Now >= _timerNext[i])
            {
                _timerNext[i] = Now + _timerDefs[i].PeriodTicks;
                try { _timerDefs[i].Action(); }
                catch (Exception e) { _log.LogError(e, "reactor {Name}: timer failed", Name); }
            }
        }
        return work;
    }

    private void Fault(ReactorSource s, Exception e)
    {
        _log.LogError(e, "reactor {Name}: {Source} failed", Name, s.GetType().Name);
        try { s.OnFault(e); }
        catch (Exception again) { _log.LogError(again, "reactor {Name}: cleanup after a failure failed too", Name); }
    }

    public void Stop()
    {
        _stop = true;
        Wake();
        if (_thread.IsAlive && !IsCurrentThread) _thread.Join(TimeSpan.FromSeconds(5));
    }

    public void Dispose()
    {
        Stop();
        Libc.Close(_epfd);
        Libc.Close(_wakeFd);
        System.Runtime.InteropServices.NativeMemory.Free(_events);
        Pools.Dispose();
    }
}
