using System.Diagnostics;
using System.Runtime.InteropServices;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Perf;

public enum AccessPattern { Read, Write, RandRead, RandWrite, RandRw, Rw }

public enum HostPollMode { Busy, Adaptive }

public sealed record WorkloadOptions
{
    public AccessPattern Pattern { get; init; } = AccessPattern.RandRead;
    public int BlockSize { get; init; } = 4096;
    public int QueueDepth { get; init; } = 1;
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>Stop after this many I/Os (per queue) when set; otherwise after <see cref="Duration"/>.</summary>
    public long? IoCount { get; init; }
    public int ReadPercent { get; init; } = 50;
    public bool Verify { get; init; }
    public uint Nsid { get; init; } = 1;
    /// <summary>First LBA and number of LBAs of the region this queue works on.</summary>
    public ulong RegionLba { get; init; }
    public ulong RegionBlocks { get; init; }
    public uint LbaSize { get; init; } = 512;
    public int Seed { get; init; } = 1;
    public HostPollMode Poll { get; init; } = HostPollMode.Busy;
    /// <summary>Stop at the first failed command instead of counting it.</summary>
    public bool StopOnError { get; init; }
}

public sealed class WorkloadResult
{
    public long Reads;
    public long Writes;
    public long Bytes;
    public long Errors;
    public long VerifyFailures;
    public string? FirstError;
    public TimeSpan Elapsed;
    public readonly LatencyHistogram Latency = new();
    public readonly LatencyHistogram ReadLatency = new();
    public readonly LatencyHistogram WriteLatency = new();

    public long Ios => Reads + Writes;
    public double Iops => Elapsed.TotalSeconds > 0 ? Ios / Elapsed.TotalSeconds : 0;
    public double BytesPerSecond => Elapsed.TotalSeconds > 0 ? Bytes / Elapsed.TotalSeconds : 0;

    public void Add(WorkloadResult o)
    {
        Reads += o.Reads;
        Writes += o.Writes;
        Bytes += o.Bytes;
        Errors += o.Errors;
        VerifyFailures += o.VerifyFailures;
        FirstError ??= o.FirstError;
        Elapsed = o.Elapsed > Elapsed ? o.Elapsed : Elapsed;
        Latency.Add(o.Latency);
        ReadLatency.Add(o.ReadLatency);
        WriteLatency.Add(o.WriteLatency);
    }
}

/// <summary>
/// Drives one I/O queue from the calling thread: keeps <see cref="WorkloadOptions.QueueDepth"/> commands in
/// flight, records latency, and (with Verify) writes self-describing blocks and checks every read of a block
/// this run wrote. No two commands touch the same block at once, so verification is exact.
/// </summary>
public sealed unsafe class WorkloadRunner : IHostCompletion, IDisposable
{
    private const ulong Magic = 0x534E5045_52465631; // "SNPERFV1"

    private readonly IoQueue _queue;
    private readonly WorkloadOptions _o;
    private readonly byte*[] _buffers;
    private readonly long[] _start;
    private readonly long[] _unitOf;
    private readonly bool[] _isRead;
    private readonly int[] _freeSlots;
    private int _freeCount;
    private readonly uint[] _generation;
    private readonly bool[] _busy;
    private readonly ulong _units;
    private readonly uint _blocksPerIo;
    private ulong _seqNext;
    private ulong _rng;
    private readonly WorkloadResult _result = new();
    private long _issued;
    private volatile bool _stop;

    /// <summary>Live counters for progress lines (read from another thread).</summary>
    public long CompletedIos;

    public WorkloadRunner(IoQueue queue, WorkloadOptions options)
    {
        if (options.BlockSize % options.LbaSize != 0) throw new ArgumentException($"block size {options.BlockSize} is not a multiple of the LBA size {options.LbaSize}");
        _queue = queue;
        _o = options;
        _blocksPerIo = (uint)(options.BlockSize / options.LbaSize);
        _units = options.RegionBlocks / _blocksPerIo;
        if (_units < (ulong)options.QueueDepth) throw new ArgumentException("region too small for the queue depth");
        int qd = options.QueueDepth;
        _buffers = new byte*[qd];
        for (int i = 0; i < qd; i++) _buffers[i] = (byte*)NativeMemory.AlignedAlloc((nuint)options.BlockSize, 4096);
        _start = new long[qd];
        _unitOf = new long[qd];
        _isRead = new bool[qd];
        _freeSlots = new int[qd];
        for (int i = 0; i < qd; i++) _freeSlots[i] = i;
        _freeCount = qd;
        _generation = options.Verify ? new uint[_units] : [];
        _busy = new bool[_units];
        _rng = (ulong)options.Seed * 0x9E3779B97F4A7C15UL | 1;
    }

    public void Stop() => _stop = true;

    private ulong Next()
    {
        // xorshift64*
        _rng ^= _rng >> 12;
        _rng ^= _rng << 25;
        _rng ^= _rng >> 27;
        return _rng * 0x2545F4914F6CDD1DUL;
    }

    private long _begin, _end;
    private bool _started, _finished;

    /// <summary>True once the run's time or I/O count is reached and every I/O has completed.</summary>
    public bool Finished => _finished;

    /// <summary>The queue this runner drives (for blocking waits in adaptive mode).</summary>
    public IoQueue Queue => _queue;

    /// <summary>One poll: submits what the queue depth allows, reaps completions. Returns completions reaped.</summary>
    public int Step()
    {
        if (_finished) return 0;
        if (!_started)
        {
            _started = true;
            _begin = Stopwatch.GetTimestamp();
            _end = _begin + (long)(_o.Duration.TotalSeconds * Stopwatch.Frequency);
        }
        bool done = _stop || (_o.IoCount is long n ? _issued >= n : Stopwatch.GetTimestamp() >= _end)
            || (_o.StopOnError && _result.Errors > 0);
        if (!done)
        {
            while (_freeCount > 0 && !(_o.IoCount is long m && _issued >= m) && Submit()) { }
        }
        else if (_freeCount == _o.QueueDepth)
        {
            _finished = true;
            _result.Elapsed = Stopwatch.GetElapsedTime(_begin);
            return 0;
        }
        return _queue.Queue.Poll();
    }

    public WorkloadResult Run() => RunMany([this], _o.Poll)[0];

    /// <summary>
    /// Drives several runners (each its own queue, e.g. one per connection) from the calling thread, round
    /// robin, until all have finished. Adaptive polling yields the core while idle and then blocks briefly on
    /// one unfinished queue.
    /// </summary>
    public static WorkloadResult[] RunMany(WorkloadRunner[] runners, HostPollMode poll)
    {
        int idle = 0;
        while (true)
        {
            int completions = 0;
            WorkloadRunner? open = null;
            foreach (WorkloadRunner r in runners)
            {
                if (r._finished) continue;
                completions += r.Step();
                if (!r._finished) open ??= r;
            }
            if (open == null) break;
            if (completions > 0)
            {
                idle = 0;
            }
            else if (poll == HostPollMode.Adaptive)
            {
                // Spin politely for a while (yielding the core), then block until a socket is readable.
                if (++idle > 200)
                {
                    open._queue.Queue.WaitReadable(1);
                    idle = 0;
                }
                else
                {
                    Thread.Yield();
                }
            }
        }
        var results = new WorkloadResult[runners.Length];
        for (int i = 0; i < runners.Length; i++) results[i] = runners[i]._result;
        return results;
    }

    private bool Submit()
    {
        ulong unit;
        bool sequential = _o.Pattern is AccessPattern.Read or AccessPattern.Write or AccessPattern.Rw;
        int tries = 0;
        do
        {
            if (sequential)
            {
                unit = _seqNext;
                _seqNext = (_seqNext + 1) % _units;
            }
            else
            {
                unit = Next() % _units;
            }
            if (++tries > 64) return false;
        } while (_busy[unit]);

        bool read = _o.Pattern switch
        {
            AccessPattern.Read or AccessPattern.RandRead => true,
            AccessPattern.Write or AccessPattern.RandWrite => false,
            _ => (int)(Next() % 100) < _o.ReadPercent,
        };
        int slot = _freeSlots[--_freeCount];
        byte* buf = _buffers[slot];
        ulong lba = _o.RegionLba + unit * _blocksPerIo;
        if (!read && _o.Verify) FillPattern(buf, lba, _generation[unit] + 1);
        SubmissionQueueEntry sqe = IoQueue.ReadWriteSqe(read ? IoOpcode.Read : IoOpcode.Write, _o.Nsid, lba, _blocksPerIo);
        _busy[unit] = true;
        _unitOf[slot] = (long)unit;
        _isRead[slot] = read;
        _start[slot] = Stopwatch.GetTimestamp();
        if (!_queue.Queue.TrySubmit(sqe, buf, (uint)_o.BlockSize, read ? DataDirection.ControllerToHost : DataDirection.HostToController, this, slot))
        {
            _busy[unit] = false;
            _freeSlots[_freeCount++] = slot;
            return false;
        }
        _issued++;
        return true;
    }

    public void OnHostComplete(long token, in CompletionQueueEntry cqe)
    {
        int slot = (int)token;
        long ns = LatencyHistogram.TicksToNs(Stopwatch.GetTimestamp() - _start[slot]);
        ulong unit = (ulong)_unitOf[slot];
        bool read = _isRead[slot];
        NvmeStatus st = cqe.StatusField;
        if (!st.IsSuccess)
        {
            _result.Errors++;
            _result.FirstError ??= $"{(read ? "read" : "write")} of LBA {_o.RegionLba + unit * _blocksPerIo} failed: {st}";
        }
        else
        {
            _result.Bytes += _o.BlockSize;
            if (read)
            {
                _result.Reads++;
                _result.ReadLatency.Record(ns);
                if (_o.Verify && _generation[unit] != 0 && !CheckPattern(_buffers[slot], _o.RegionLba + unit * _blocksPerIo, _generation[unit], out string? why))
                {
                    _result.VerifyFailures++;
                    _result.FirstError ??= why;
                }
            }
            else
            {
                _result.Writes++;
                _result.WriteLatency.Record(ns);
                if (_o.Verify) _generation[unit]++;
            }
            _result.Latency.Record(ns);
        }
        _busy[unit] = false;
        _freeSlots[_freeCount++] = slot;
        Interlocked.Increment(ref CompletedIos);
    }

    private void FillPattern(byte* buf, ulong lba, uint gen)
    {
        // Every LBA-sized sector carries its own header so a misplaced sector is caught too.
        for (int off = 0; off < _o.BlockSize; off += (int)_o.LbaSize)
        {
            ulong sectorLba = lba + (ulong)(off / (int)_o.LbaSize);
            ulong* p = (ulong*)(buf + off);
            p[0] = Magic;
            p[1] = sectorLba;
            p[2] = gen;
            ulong x = sectorLba * 0x9E3779B97F4A7C15UL ^ gen;
            for (int i = 3; i < (int)_o.LbaSize / 8; i++)
            {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                p[i] = x;
            }
        }
    }

    private bool CheckPattern(byte* buf, ulong lba, uint gen, out string? why)
    {
        for (int off = 0; off < _o.BlockSize; off += (int)_o.LbaSize)
        {
            ulong sectorLba = lba + (ulong)(off / (int)_o.LbaSize);
            ulong* p = (ulong*)(buf + off);
            if (p[0] != Magic || p[1] != sectorLba || p[2] != gen)
            {
                why = $"verify: LBA {sectorLba}: header (magic {p[0]:X}, lba {p[1]}, gen {p[2]}), expected lba {sectorLba} gen {gen}";
                return false;
            }
            ulong x = sectorLba * 0x9E3779B97F4A7C15UL ^ gen;
            for (int i = 3; i < (int)_o.LbaSize / 8; i++)
            {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                if (p[i] != x)
                {
                    why = $"verify: LBA {sectorLba}: data mismatch at byte {off + i * 8}";
                    return false;
                }
            }
        }
        why = null;
        return true;
    }

    public void Dispose()
    {
        foreach (byte* b in _buffers) NativeMemory.AlignedFree(b);
    }
}
