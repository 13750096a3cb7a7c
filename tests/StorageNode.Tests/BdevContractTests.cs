using Microsoft.Extensions.Logging.Abstractions;
using StorageNode.Bdevs;
using StorageNode.Reactors;

namespace StorageNode.Tests;

/// <summary>
/// What every bdev promises the command set, run over each kind (as Tsavorite tests every IDevice): Malloc, Null, and
/// File with and without O_DIRECT. Each operation is issued on a real reactor from its pools' buffers, as the target
/// does, and must complete exactly once. A bdev that keeps data reads back what was written, wherever it sits and
/// through any reactor's channel; Null keeps nothing and never returns a buffer's old contents.
/// </summary>
public sealed unsafe class BdevContractTests : IDisposable
{
    private const uint BlockSize = 4096;
    private const ulong Blocks = 1024;
    private readonly List<Reactor> _reactors = [];
    private readonly string _dir = Path.Combine("/var/tmp", "sn-bdev-contract-" + Guid.NewGuid().ToString("N"));

    public static TheoryData<string> Kinds => ["malloc", "null", "file-direct", "file-buffered"];

    public void Dispose()
    {
        foreach (Reactor r in _reactors) r.Dispose();
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    private Bdev Create(string kind) => kind switch
    {
        "malloc" => new MallocBdev("m", BlockSize, Blocks),
        "null" => new NullBdev("n", BlockSize, Blocks),
        "file-direct" or "file-buffered" => OpenFile(kind == "file-direct" ? DirectIoMode.Auto : DirectIoMode.Off),
        _ => throw new ArgumentException(kind),
    };

    private FileBdev OpenFile(DirectIoMode mode)
    {
        Directory.CreateDirectory(_dir);
        return FileBdev.Open("f", Path.Combine(_dir, "disk.img"), BlockSize, BlockSize * Blocks, mode, NullLogger.Instance);
    }

    private Reactor NewReactor()
    {
        var r = new Reactor(_reactors.Count, $"contract-{_reactors.Count}", PollMode.Adaptive, TimeSpan.FromMicroseconds(50),
            new PoolOptions { SmallBufferCount = 64, MediumBufferCount = 4, LargeBufferCount = 1 }, NullLogger.Instance);
        _reactors.Add(r);
        r.Start();
        return r;
    }

    /// <summary>One reactor's channel and a pool buffer, driven from the test thread.</summary>
    private sealed class Lane(Reactor reactor, BdevChannel channel)
    {
        public readonly Reactor Reactor = reactor;
        public readonly BdevChannel Channel = channel;

        public T On<T>(Func<T> f)
        {
            var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
            Reactor.Post(() =>
            {
                try { done.SetResult(f()); }
                catch (Exception e) { done.SetException(e); }
            });
            Assert.True(done.Task.Wait(TimeSpan.FromSeconds(10)), "the reactor did not run the call");
            return done.Task.Result;
        }

        /// <summary>Issues one operation on the reactor and waits for its completion; returns its result.</summary>
        public int Do(Action<BdevChannel, IBdevCompletion> op)
        {
            var c = new Completion();
            On(() => { op(Channel, c); return 0; });
            return c.Wait();
        }

        public byte* Buffer(uint length) => On(() => (nint)Reactor.Pools.Get(length)) is var p && p != 0 ? (byte*)p : throw new InvalidOperationException("pool empty");

        public void Return(byte* buffer) => On(() => { Reactor.Pools.Return(buffer); return 0; });
    }

    /// <summary>Counts its completions: a bdev must complete each operation exactly once.</summary>
    private sealed class Completion : IBdevCompletion
    {
        private int _count;
        private int _result;
        private readonly ManualResetEventSlim _done = new();

        public void OnBdevComplete(int result)
        {
            _result = result;
            if (Interlocked.Increment(ref _count) == 1) _done.Set();
        }

        public int Wait()
        {
            Assert.True(_done.Wait(TimeSpan.FromSeconds(10)), "the operation never completed");
            Thread.Sleep(1);
            Assert.Equal(1, Volatile.Read(ref _count));
            return _result;
        }
    }

    private Lane NewLane(Bdev bdev)
    {
        Reactor r = NewReactor();
        return new Lane(r, bdev.CreateChannel(r));
    }

    private static bool KeepsData(Bdev b) => b is not NullBdev;

    private static void Fill(byte* p, uint length, int seed)
    {
        var rnd = new Random(seed);
        rnd.NextBytes(new Span<byte>(p, (int)length));
    }

    private static byte[] Pattern(uint length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void WhatIsWrittenReadsBackAtTheStartMiddleAndEnd(string kind)
    {
        using Bdev bdev = Create(kind);
        Lane lane = NewLane(bdev);
        byte* buf = lane.Buffer(4 * BlockSize);
        try
        {
            foreach ((ulong block, uint count, int seed) in new[] { (0UL, 1u, 1), (100UL, 4u, 2), (Blocks - 2, 2u, 3) })
            {
                uint len = count * BlockSize;
                ulong off = block * BlockSize;
                Fill(buf, len, seed);
                Assert.Equal(0, lane.Do((c, done) => c.Write(off, buf, len, fua: seed == 2, done)));
                new Span<byte>(buf, (int)len).Fill(0xAA);
                Assert.Equal(0, lane.Do((c, done) => c.Read(off, buf, len, done)));
                byte[] expected = KeepsData(bdev) ? Pattern(len, seed) : new byte[len];
                Assert.True(new Span<byte>(buf, (int)len).SequenceEqual(expected), $"{kind}: blocks {block}+{count} read back wrong");
            }
        }
        finally
        {
            lane.Return(buf);
        }
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void WriteZeroesAndDeallocateReadBackAsZeroes(string kind)
    {
        using Bdev bdev = Create(kind);
        Lane lane = NewLane(bdev);
        byte* buf = lane.Buffer(8 * BlockSize);
        try
        {
            Fill(buf, 8 * BlockSize, 9);
            Assert.Equal(0, lane.Do((c, done) => c.Write(10 * BlockSize, buf, 8 * BlockSize, false, done)));
            Assert.Equal(0, lane.Do((c, done) => c.WriteZeroes(11 * BlockSize, 2 * BlockSize, done)));
            Assert.Equal(0, lane.Do((c, done) => c.Deallocate(14 * BlockSize, 2 * BlockSize, done)));
            Assert.Equal(0, lane.Do((c, done) => c.Flush(done)));
            new Span<byte>(buf, (int)(8 * BlockSize)).Fill(0xAA);
            Assert.Equal(0, lane.Do((c, done) => c.Read(10 * BlockSize, buf, 8 * BlockSize, done)));
            byte[] pattern = Pattern(8 * BlockSize, 9);
            var got = new Span<byte>(buf, (int)(8 * BlockSize));
            for (int b = 0; b < 8; b++)
            {
                Span<byte> block = got.Slice(b * (int)BlockSize, (int)BlockSize);
                bool zeroed = b is 1 or 2 || (b is 4 or 5 && bdev.DeallocateReadsZeroes) || !KeepsData(bdev);
                if (zeroed) Assert.True(block.IndexOfAnyExcept((byte)0) < 0, $"{kind}: block {10 + b} is not zero");
                else Assert.True(block.SequenceEqual(pattern.AsSpan(b * (int)BlockSize, (int)BlockSize)), $"{kind}: block {10 + b} changed");
            }
        }
        finally
        {
            lane.Return(buf);
        }
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void EveryReactorsChannelSeesTheSameBlocks(string kind)
    {
        using Bdev bdev = Create(kind);
        Lane a = NewLane(bdev), b = NewLane(bdev);
        byte* wa = a.Buffer(BlockSize), rb = b.Buffer(BlockSize);
        try
        {
            Fill(wa, BlockSize, 21);
            Assert.Equal(0, a.Do((c, done) => c.Write(500 * BlockSize, wa, BlockSize, true, done)));
            Assert.Equal(0, b.Do((c, done) => c.Read(500 * BlockSize, rb, BlockSize, done)));
            byte[] expected = KeepsData(bdev) ? Pattern(BlockSize, 21) : new byte[BlockSize];
            Assert.True(new Span<byte>(rb, (int)BlockSize).SequenceEqual(expected));
        }
        finally
        {
            a.Return(wa);
            b.Return(rb);
        }
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void ManyOperationsInFlightEachCompleteOnceWithTheirOwnData(string kind)
    {
        using Bdev bdev = Create(kind);
        Lane lane = NewLane(bdev);
        const int n = 32;
        var bufs = new nint[n];
        for (int i = 0; i < n; i++) bufs[i] = (nint)lane.Buffer(BlockSize);
        try
        {
            // All writes issued in one reactor iteration (one submission for io_uring), then all reads.
            foreach (bool write in new[] { true, false })
            {
                var done = new Completion[n];
                for (int i = 0; i < n; i++) done[i] = new Completion();
                if (write) for (int i = 0; i < n; i++) Fill((byte*)bufs[i], BlockSize, 100 + i);
                else for (int i = 0; i < n; i++) new Span<byte>((byte*)bufs[i], (int)BlockSize).Fill(0x55);
                lane.On(() =>
                {
                    for (int i = 0; i < n; i++)
                    {
                        ulong off = (ulong)(i * 3) * BlockSize;
                        if (write) lane.Channel.Write(off, (byte*)bufs[i], BlockSize, false, done[i]);
                        else lane.Channel.Read(off, (byte*)bufs[i], BlockSize, done[i]);
                    }
                    return 0;
                });
                for (int i = 0; i < n; i++) Assert.Equal(0, done[i].Wait());
            }
            for (int i = 0; i < n; i++)
            {
                byte[] expected = KeepsData(bdev) ? Pattern(BlockSize, 100 + i) : new byte[BlockSize];
                Assert.True(new Span<byte>((byte*)bufs[i], (int)BlockSize).SequenceEqual(expected), $"{kind}: operation {i} read the wrong data");
            }
        }
        finally
        {
            for (int i = 0; i < n; i++) lane.Return((byte*)bufs[i]);
        }
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void AZeroCopyReadShowsWhatARegularReadReturns(string kind)
    {
        using Bdev bdev = Create(kind);
        Lane lane = NewLane(bdev);
        byte* buf = lane.Buffer(2 * BlockSize);
        try
        {
            Fill(buf, 2 * BlockSize, 31);
            Assert.Equal(0, lane.Do((c, done) => c.Write(40 * BlockSize, buf, 2 * BlockSize, false, done)));
            nint lent = lane.On(() => (nint)lane.Channel.ZeroCopyRead(40 * BlockSize, 2 * BlockSize));
            if (lent == 0) return; // this bdev has no memory to lend: the transport reads into a buffer instead
            Assert.Equal(0, lane.Do((c, done) => c.Read(40 * BlockSize, buf, 2 * BlockSize, done)));
            Assert.True(new Span<byte>((byte*)lent, (int)(2 * BlockSize)).SequenceEqual(new Span<byte>(buf, (int)(2 * BlockSize))));
        }
        finally
        {
            lane.Return(buf);
        }
    }
}
