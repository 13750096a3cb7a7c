using Microsoft.Extensions.Logging.Abstractions;
using StorageNode.Interop;
using StorageNode.Reactors;

namespace StorageNode.Tests;

public unsafe class ReactorTests
{
    private static Reactor NewReactor(PollMode mode = PollMode.Adaptive)
        => new(0, "test-reactor", mode, TimeSpan.FromMicroseconds(50),
            new PoolOptions { SmallBufferCount = 16, MediumBufferCount = 2, LargeBufferCount = 1 }, NullLogger.Instance);

    /// <summary>An eventfd source whose behaviour a test scripts.</summary>
    private sealed class EventSource : ReactorSource, IDisposable
    {
        public readonly int EventFd = Libc.EventFd(0, Libc.EFD_NONBLOCK | Libc.EFD_CLOEXEC);
        public Func<int>? OnReadyAction;
        public Action? OnFlushAction;
        public volatile int Flushes;
        public volatile Exception? Faulted;
        public override int Fd => EventFd;

        public override int OnReady(uint events)
        {
            ulong v;
            Libc.Read(EventFd, &v, 8);
            return OnReadyAction?.Invoke() ?? 1;
        }

        public override int Flush()
        {
            Flushes++;
            OnFlushAction?.Invoke();
            return 0;
        }

        public override void OnFault(Exception e) => Faulted = e;

        public void Signal()
        {
            ulong one = 1;
            Libc.Write(EventFd, &one, 8);
        }

        public void Dispose() => Libc.Close(EventFd);
    }

    private static void WaitFor(Func<bool> condition, string what)
    {
        for (int i = 0; i < 500 && !condition(); i++) Thread.Sleep(10);
        Assert.True(condition(), $"timed out waiting for {what}");
    }

    [Theory]
    [InlineData(PollMode.Busy)]
    [InlineData(PollMode.Adaptive)]
    [InlineData(PollMode.Interrupt)]
    public void PostedWorkRunsOnTheReactorThreadInEveryMode(PollMode mode)
    {
        using Reactor r = NewReactor(mode);
        r.Start();
        Thread.Sleep(20); // let an adaptive/interrupt reactor fall asleep first
        bool onThread = false;
        using var done = new ManualResetEventSlim();
        r.Post(() => { onThread = r.IsCurrentThread; done.Set(); });
        Assert.True(done.Wait(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken));
        Assert.True(onThread);
    }

    [Fact]
    public void ReadySourcesAreFlushedAndTimersFire()
    {
        using Reactor r = NewReactor(PollMode.Interrupt);
        int ticks = 0;
        r.AddTimer(TimeSpan.FromMilliseconds(20), () => Interlocked.Increment(ref ticks));
        using var s = new EventSource();
        s.OnReadyAction = () => { r.MarkDirty(s); return 1; };
        r.Start();
        r.Post(() => r.Register(s));
        WaitFor(() => s.Token >= 0, "registration");
        s.Signal();
        WaitFor(() => s.Flushes >= 1, "flush after readiness");
        WaitFor(() => Volatile.Read(ref ticks) >= 3, "timer ticks");
    }

    [Fact]
    public void SourcesMarkedDuringAFlushNeitherDisplaceNorBreakTheOnesStillToBeFlushed()
    {
        // The pattern SPDK's host found (two connections, one relayed): flushing one source marks itself again and
        // marks another. Those marks must not overwrite the sources not yet flushed this round, nor leave a hole.
        using Reactor r = NewReactor(PollMode.Busy); // driven by hand on this thread, never started
        using EventSource a = new(), b = new(), c = new(), d = new();
        bool again = true;
        a.OnFlushAction = () =>
        {
            if (!again) return;
            again = false;
            r.MarkDirty(a);
            r.MarkDirty(d);
        };
        r.MarkDirty(a);
        r.MarkDirty(b);
        r.MarkDirty(c);
        r.RunOnce(0);
        Assert.Equal([1, 1, 1], new[] { a.Flushes, b.Flushes, c.Flushes });
        Assert.Equal(0, d.Flushes); // marked during the flush: next round
        r.RunOnce(0);
        Assert.Equal([2, 1, 1, 1], new[] { a.Flushes, b.Flushes, c.Flushes, d.Flushes });
        r.RunOnce(0);
        Assert.Equal([2, 1, 1, 1], new[] { a.Flushes, b.Flushes, c.Flushes, d.Flushes });
        r.MarkDirty(b); // b's mark was not lost: it can be marked (and flushed) again
        r.RunOnce(0);
        Assert.Equal(2, b.Flushes);
    }

    [Fact]
    public void AFailingSourceIsIsolated()
    {
        using Reactor r = NewReactor();
        using var bad = new EventSource { OnReadyAction = () => throw new InvalidOperationException("boom") };
        r.Start();
        r.Post(() => r.Register(bad));
        WaitFor(() => bad.Token >= 0, "registration");
        bad.Signal();
        WaitFor(() => bad.Faulted != null, "fault callback");
        Assert.Equal("boom", bad.Faulted!.Message);
        // The reactor keeps running.
        using var done = new ManualResetEventSlim();
        r.Post(done.Set);
        Assert.True(done.Wait(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken));
    }

    [Fact]
    public void BufferPoolHandsOutAlignedBuffersAndRefusesStrangers()
    {
        using var pool = new BufferPool(8192, 3);
        byte* a = pool.Get(), b = pool.Get(), c = pool.Get();
        Assert.True(a != null && b != null && c != null);
        Assert.True(pool.Get() == null);
        Assert.Equal(0, pool.Available);
        foreach (nint p in new[] { (nint)a, (nint)b, (nint)c }) Assert.Equal(0, p % 4096);
        pool.Return(b);
        Assert.True(pool.Get() == b);
        Assert.Throws<ArgumentException>(() => pool.Return(a + 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new BufferPool(1000, 1));
    }

    [Fact]
    public void SizeClassesPickTheSmallestFit()
    {
        using var pools = new DataBufferPools(new PoolOptions { SmallBufferCount = 2, MediumBufferCount = 2, LargeBufferCount = 1 });
        byte* s = pools.Get(4096), m = pools.Get(8193), l = pools.Get(1048576);
        Assert.True(pools.Small.Owns(s));
        Assert.True(pools.Medium.Owns(m));
        Assert.True(pools.Large.Owns(l));
        Assert.True(pools.Get(1048577) == null);
        Assert.True(pools.Get(1048576) == null); // large class exhausted
        pools.Return(l);
        Assert.Equal(1, pools.Large.Available);
        pools.Return(s);
        pools.Return(m);
    }
}
