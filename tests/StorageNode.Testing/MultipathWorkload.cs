using System.Diagnostics;
using System.Runtime.InteropServices;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Testing;

/// <summary>
/// A multipath host in miniature: a bounded random write + read-verify workload on one namespace over several
/// paths. Commands go to the first usable path; a command that fails with a path-related status or a transport
/// error is retried on the next path (as Linux native multipath does), so the workload only sees errors that
/// no path could avoid.
/// </summary>
public sealed unsafe class MultipathWorkload : IHostCompletion, IDisposable
{
    private const ulong Magic = 0x4D50415448574B31;
    private readonly IoQueue[] _paths;
    private readonly uint _nsid;
    private readonly int _bs;
    private readonly int _qd;
    private readonly ulong _units;
    private readonly uint[] _gen;
    private readonly bool[] _busy;
    private readonly byte*[] _buf;
    private readonly ulong[] _unit;
    private readonly bool[] _read;
    private readonly int[] _attempts;
    private readonly int[] _pathOf;
    private readonly long[] _start;
    private readonly Stack<int> _free = new();
    // Commands waiting to be retried after a path error: (slot, when), like a host waiting out an ANA transition.
    private readonly List<(int Slot, long At)> _retry = [];
    private readonly long[] _firstFailure;
    private static readonly long RetryDelay = Stopwatch.Frequency / 200;     // 5 ms
    private static readonly long RetryBudget = Stopwatch.Frequency * 15;     // give up on a command after 15 s
    private ulong _rng = 88172645463325252UL;

    public long Completed;
    public long Retries;
    public long Errors;
    public long VerifyFailures;
    public string? FirstError;
    public long MaxStallMs;
    private long _lastCompletionTicks;

    public MultipathWorkload(IoQueue[] paths, uint nsid, int blockSize, int qd, ulong regionBytes)
    {
        _paths = paths;
        _nsid = nsid;
        _bs = blockSize;
        _qd = qd;
        _units = regionBytes / (ulong)blockSize;
        _gen = new uint[_units];
        _busy = new bool[_units];
        _buf = new byte*[qd];
        _unit = new ulong[qd];
        _read = new bool[qd];
        _attempts = new int[qd];
        _pathOf = new int[qd];
        _start = new long[qd];
        _firstFailure = new long[qd];
        for (int i = 0; i < qd; i++)
        {
            _buf[i] = (byte*)NativeMemory.AlignedAlloc((nuint)blockSize, 4096);
            _free.Push(i);
        }
    }

    private ulong Next()
    {
        _rng ^= _rng << 13;
        _rng ^= _rng >> 7;
        _rng ^= _rng << 17;
        return _rng;
    }

    /// <summary>Runs <paramref name="ios"/> commands (bounded in time too); calls <paramref name="progress"/> after each poll.</summary>
    public void Run(long ios, TimeSpan limit, Action<long>? progress = null)
    {
        long issued = 0;
        var sw = Stopwatch.StartNew();
        _lastCompletionTicks = Stopwatch.GetTimestamp();
        while ((issued < ios || _free.Count < _qd) && sw.Elapsed < limit)
        {
            while (issued < ios && _free.Count > 0)
            {
                ulong u = Next() % _units;
                if (_busy[u]) continue;
                int slot = _free.Pop();
                _unit[slot] = u;
                _busy[u] = true;
                // Reads only of blocks written before, so every read verifies something.
                _read[slot] = _gen[u] != 0 && (Next() & 1) == 0;
                _attempts[slot] = 0;
                _firstFailure[slot] = 0;
                if (!_read[slot]) Fill(_buf[slot], u, _gen[u] + 1);
                _start[slot] = Stopwatch.GetTimestamp();
                Submit(slot, 0);
                issued++;
            }
            long now = Stopwatch.GetTimestamp();
            for (int i = _retry.Count - 1; i >= 0; i--)
            {
                if (_retry[i].At > now) continue;
                int slot = _retry[i].Slot;
                _retry.RemoveAt(i);
                Submit(slot, (_pathOf[slot] + 1) % _paths.Length);
            }
            int work = 0;
            foreach (IoQueue p in _paths)
                if (!p.Queue.IsBroken) work += p.Queue.Poll();
            long stall = (long)Stopwatch.GetElapsedTime(_lastCompletionTicks).TotalMilliseconds;
            if (_free.Count < _qd && stall > MaxStallMs) MaxStallMs = stall;
            progress?.Invoke(Completed);
            if (work == 0) Thread.Yield();
        }
        if (_free.Count < _qd) throw new TimeoutException($"{_qd - _free.Count} command(s) still outstanding after {limit.TotalSeconds} s");
    }

    private void Submit(int slot, int firstPath)
    {
        for (int i = 0; i < _paths.Length; i++)
        {
            int p = (firstPath + i) % _paths.Length;
            TcpHostQueue q = _paths[p].Queue;
            if (q.IsBroken) continue;
            SubmissionQueueEntry sqe = IoQueue.ReadWriteSqe(_read[slot] ? IoOpcode.Read : IoOpcode.Write, _nsid,
                _unit[slot] * (ulong)(_bs / 512), (uint)(_bs / 512));
            if (q.TrySubmit(sqe, _buf[slot], (uint)_bs, _read[slot] ? DataDirection.ControllerToHost : DataDirection.HostToController, this, slot))
            {
                _pathOf[slot] = p;
                return;
            }
        }
        Fail(slot, "no usable path");
    }

    public void OnHostComplete(long token, in CompletionQueueEntry cqe)
    {
        int slot = (int)token;
        NvmeStatus st = cqe.StatusField;
        bool retryable = st.Type == StatusCodeType.PathRelated
            || (st.Type == StatusCodeType.Generic && st.Code == GenericStatus.TransientTransportError);
        if (!st.IsSuccess && retryable)
        {
            long now = Stopwatch.GetTimestamp();
            if (_firstFailure[slot] == 0) _firstFailure[slot] = now;
            if (now - _firstFailure[slot] < RetryBudget)
            {
                Retries++;
                _attempts[slot]++;
                _retry.Add((slot, now + RetryDelay));
                return;
            }
        }
        _lastCompletionTicks = Stopwatch.GetTimestamp();
        ulong u = _unit[slot];
        if (!st.IsSuccess)
        {
            Fail(slot, $"{(_read[slot] ? "read" : "write")} of unit {u} failed: {st}");
            return;
        }
        if (_read[slot])
        {
            if (!Check(_buf[slot], u, _gen[u]))
            {
                VerifyFailures++;
                FirstError ??= $"verify failed for unit {u} (generation {_gen[u]})";
            }
        }
        else
        {
            _gen[u]++;
        }
        Completed++;
        _busy[u] = false;
        _free.Push(slot);
    }

    private void Fail(int slot, string why)
    {
        Errors++;
        FirstError ??= why;
        _busy[_unit[slot]] = false;
        _free.Push(slot);
    }

    private void Fill(byte* b, ulong unit, uint gen)
    {
        ulong* p = (ulong*)b;
        p[0] = Magic;
        p[1] = unit;
        p[2] = gen;
        ulong x = unit * 0x9E3779B97F4A7C15UL ^ gen;
        for (int i = 3; i < _bs / 8; i++)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            p[i] = x;
        }
    }

    private bool Check(byte* b, ulong unit, uint gen)
    {
        ulong* p = (ulong*)b;
        if (p[0] != Magic || p[1] != unit || p[2] != gen) return false;
        ulong x = unit * 0x9E3779B97F4A7C15UL ^ gen;
        for (int i = 3; i < _bs / 8; i++)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if (p[i] != x) return false;
        }
        return true;
    }

    /// <summary>Reads every written unit back through the given path and counts mismatches.</summary>
    public long VerifyAll(IoQueue q, List<string>? problems = null)
    {
        long bad = 0;
        var data = new byte[_bs];
        fixed (byte* d = data)
        {
            for (ulong u = 0; u < _units; u++)
            {
                if (_gen[u] == 0) continue;
                NvmeStatus st = q.Read(_nsid, u * (ulong)(_bs / 512), (uint)(_bs / 512), data);
                // A path error (an ANA transition while the pair settles) is retried, as a host would.
                for (var sw = Stopwatch.StartNew(); st.Type == StatusCodeType.PathRelated && sw.Elapsed < TimeSpan.FromSeconds(15);)
                {
                    Thread.Sleep(5);
                    st = q.Read(_nsid, u * (ulong)(_bs / 512), (uint)(_bs / 512), data);
                }
                if (st.IsSuccess && Check(d, u, _gen[u])) continue;
                bad++;
                ulong* p = (ulong*)d;
                if (problems != null && problems.Count < 10)
                    problems.Add(st.IsSuccess ? $"unit {u}: expected gen {_gen[u]}, block holds magic {p[0]:X} unit {p[1]} gen {p[2]}" : $"unit {u}: read failed {st}");
            }
        }
        return bad;
    }

    public void Dispose()
    {
        foreach (byte* b in _buf) NativeMemory.AlignedFree(b);
    }
}
