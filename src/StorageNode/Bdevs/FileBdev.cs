using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using StorageNode.Interop;
using StorageNode.Reactors;

namespace StorageNode.Bdevs;

public enum DirectIoMode { Auto, On, Off }

/// <summary>
/// A bdev backed by a regular file (or block device). I/O goes through io_uring (via libsnshim) with one
/// ring per reactor, using O_DIRECT where the file system allows it; without the shim it falls back to
/// synchronous pread/pwrite on the reactor thread.
/// </summary>
public sealed unsafe class FileBdev : Bdev
{
    private readonly ILogger _log;
    public string Path { get; }
    public int Fd { get; }
    public bool Direct { get; }
    public bool UsesUring { get; }

    public override bool HasVolatileCache => true;

    private FileBdev(string name, string path, int fd, bool direct, uint blockSize, ulong blockCount, ILogger log)
        : base(name, blockSize, blockCount)
    {
        Path = path;
        Fd = fd;
        Direct = direct;
        _log = log;
        UsesUring = Shim.Has(Shim.FeatureUring);
    }

    /// <summary>Opens (creating and sizing it if <paramref name="sizeBytes"/> is given) the backing file.</summary>
    public static FileBdev Open(string name, string path, uint blockSize, ulong? sizeBytes, DirectIoMode mode, ILogger log)
    {
        bool exists = File.Exists(path);
        if (!exists && sizeBytes is null)
            throw new FileNotFoundException($"bdev {name}: file '{path}' does not exist and no size was given to create it", path);
        int flags = FileIo.O_RDWR | FileIo.O_CLOEXEC | (exists ? 0 : FileIo.O_CREAT);
        int fd = -1;
        bool direct = false;
        if (mode != DirectIoMode.Off)
        {
            fd = FileIo.Open(path, flags | FileIo.O_DIRECT, 0x1B6);
            direct = fd >= 0;
            if (fd < 0 && mode == DirectIoMode.On)
                throw new IOException($"bdev {name}: open '{path}' with O_DIRECT failed: {Libc.StrError(Libc.Errno)}");
        }
        if (fd < 0) fd = FileIo.Open(path, flags, 0x1B6);
        if (fd < 0) throw new IOException($"bdev {name}: open '{path}' failed: {Libc.StrError(Libc.Errno)}");

        long length = new FileInfo(path).Length;
        if (sizeBytes is ulong want && (ulong)length < want)
        {
            if (FileIo.FTruncate(fd, (long)want) < 0)
            {
                int e = Libc.Errno;
                Libc.Close(fd);
                throw new IOException($"bdev {name}: cannot size '{path}' to {want} bytes: {Libc.StrError(e)}");
            }
            length = (long)want;
        }
        ulong usable = sizeBytes ?? (ulong)length;
        ulong blocks = usable / blockSize;
        if (blocks == 0)
        {
            Libc.Close(fd);
            throw new IOException($"bdev {name}: '{path}' is smaller than one {blockSize}-byte block");
        }

        if (direct && !ProbeDirect(fd, blockSize))
        {
            if (mode == DirectIoMode.On)
            {
                Libc.Close(fd);
                throw new IOException($"bdev {name}: O_DIRECT I/O of {blockSize}-byte blocks is not possible on '{path}'");
            }
            Libc.Close(fd);
            fd = FileIo.Open(path, FileIo.O_RDWR | FileIo.O_CLOEXEC, 0);
            direct = false;
        }
        var bdev = new FileBdev(name, path, fd, direct, blockSize, blocks, log);
        log.LogInformation("bdev {Name}: file {Path}, {Blocks} x {BlockSize} B, {Direct}, {Engine}", name, path, blocks, blockSize,
            direct ? "O_DIRECT" : "buffered (O_DIRECT not available here)",
            bdev.UsesUring ? "io_uring" : $"synchronous pread/pwrite ({Shim.UnavailableReason})");
        return bdev;
    }

    private static bool ProbeDirect(int fd, uint blockSize)
    {
        void* buf = NativeMemory.AlignedAlloc(blockSize, 4096);
        try
        {
            nint n = FileIo.PRead(fd, buf, blockSize, 0);
            return n >= 0;
        }
        finally
        {
            NativeMemory.AlignedFree(buf);
        }
    }

    public override BdevChannel CreateChannel(Reactor reactor)
    {
        if (UsesUring)
        {
            try
            {
                return new UringChannel(this, reactor);
            }
            catch (Exception e)
            {
                _log.LogWarning("bdev {Name}: io_uring unavailable on reactor {Reactor} ({Error}); using synchronous I/O", Name, reactor.Name, e.Message);
            }
        }
        return new SyncChannel(this);
    }

    public override void Dispose() => Libc.Close(Fd);

    private static int Errno() => -Libc.Errno;

    private const int EOPNOTSUPP = 95;

    /// <summary>
    /// The file system has no FALLOC_FL_ZERO_RANGE (tmpfs, for one: found by the rig, whose replicas live in a guest's
    /// /tmp): Write Zeroes punches a hole instead (with KEEP_SIZE), which reads back as zeroes just the same. Learned from
    /// the first Write Zeroes that got EOPNOTSUPP; any reactor.
    /// </summary>
    private volatile bool _noZeroRange;

    /// <summary>The fallocate mode of a Write Zeroes on this file.</summary>
    private int ZeroMode => _noZeroRange ? Uring.FallocPunchHole | Uring.FallocKeepSize : Uring.FallocZeroRange | Uring.FallocKeepSize;

    /// <summary>A Write Zeroes in <paramref name="mode"/> failed with <paramref name="result"/>: true when it should go again as a hole.</summary>
    private bool RetryAsHole(int mode, int result)
    {
        if (result != -EOPNOTSUPP || (mode & Uring.FallocZeroRange) == 0) return false;
        _noZeroRange = true;
        return true;
    }

    private sealed class SyncChannel(FileBdev bdev) : BdevChannel
    {
        public override void Read(ulong offset, byte* buffer, uint length, IBdevCompletion completion)
            => completion.OnBdevComplete(Transfer(false, offset, buffer, length));

        public override void Write(ulong offset, byte* buffer, uint length, bool fua, IBdevCompletion completion)
        {
            int rc = Transfer(true, offset, buffer, length);
            if (rc == 0 && fua && FileIo.FDataSync(bdev.Fd) < 0) rc = Errno();
            completion.OnBdevComplete(rc);
        }

        private int Transfer(bool write, ulong offset, byte* buffer, uint length)
        {
            uint done = 0;
            while (done < length)
            {
                nint n = write
                    ? FileIo.PWrite(bdev.Fd, buffer + done, length - done, (long)(offset + done))
                    : FileIo.PRead(bdev.Fd, buffer + done, length - done, (long)(offset + done));
                if (n < 0)
                {
                    if (Libc.Errno == Libc.EINTR) continue;
                    return Errno();
                }
                if (n == 0)
                {
                    // Past the end of a sparse/short file: the rest reads as zeroes.
                    if (!write) NativeMemory.Clear(buffer + done, length - done);
                    return write ? -5 : 0;
                }
                done += (uint)n;
            }
            return 0;
        }

        public override void Flush(IBdevCompletion completion) => completion.OnBdevComplete(FileIo.FDataSync(bdev.Fd) < 0 ? Errno() : 0);

        public override void WriteZeroes(ulong offset, ulong length, IBdevCompletion completion)
        {
            int mode = bdev.ZeroMode;
            int rc = FileIo.FAllocate(bdev.Fd, mode, (long)offset, (long)length) < 0 ? Errno() : 0;
            if (bdev.RetryAsHole(mode, rc)) rc = FileIo.FAllocate(bdev.Fd, bdev.ZeroMode, (long)offset, (long)length) < 0 ? Errno() : 0;
            completion.OnBdevComplete(rc);
        }

        public override void Deallocate(ulong offset, ulong length, IBdevCompletion completion)
            => completion.OnBdevComplete(FileIo.FAllocate(bdev.Fd, Uring.FallocPunchHole | Uring.FallocKeepSize, (long)offset, (long)length) < 0 ? Errno() : 0);
    }

    /// <summary>
    /// One io_uring per (bdev, reactor). Operations are queued as SQEs during a reactor iteration and
    /// submitted together when the reactor flushes this source; completions wake the reactor via an eventfd.
    /// </summary>
    private sealed class UringChannel : BdevChannel
    {
        /// <summary>The channel's face towards the reactor: its eventfd in epoll, its submit at flush time.</summary>
        private sealed class Source(UringChannel channel) : ReactorSource
        {
            public override int Fd => channel._eventFd;
            public override int OnReady(uint events) => channel.Reap();
            public override int Flush() => channel.SubmitPending();
        }

        private const uint Entries = 256;
        private enum Op : byte { Read, Write, Flush, WriteZeroes, Deallocate }

        private struct Pending
        {
            public Op Op;
            public bool Fua;
            public byte* Buffer;
            public ulong Offset;
            public ulong Length;
            public IBdevCompletion Completion;
        }

        private readonly FileBdev _bdev;
        private readonly Reactor _reactor;
        private readonly IntPtr _ring;
        private readonly int _eventFd;
        private readonly IBdevCompletion?[] _inflight = new IBdevCompletion?[Entries];
        // Expected byte count of each in-flight read/write (0 for other operations) and its buffer.
        private readonly uint[] _expect = new uint[Entries];
        private readonly nint[] _buffers = new nint[Entries];
        private readonly bool[] _isRead = new bool[Entries];
        // A Write Zeroes in flight: its fallocate mode, offset and length (to go again as a hole: RetryAsHole).
        private readonly int[] _zeroMode = new int[Entries];
        private readonly ulong[] _zeroOffset = new ulong[Entries];
        private readonly ulong[] _zeroLength = new ulong[Entries];
        private readonly int[] _freeSlots = new int[Entries];
        private int _freeCount;
        private readonly SnCompletion* _cqes;
        private Pending[] _backlog = new Pending[64];
        private int _backlogHead, _backlogCount;
        private int _unsubmitted;
        private readonly BufferPool[] _fixed;
        private readonly Source _source;

        public UringChannel(FileBdev bdev, Reactor reactor)
        {
            _bdev = bdev;
            _reactor = reactor;
            _ring = Uring.Create(Entries, 0, out int err);
            if (_ring == IntPtr.Zero) throw new IOException($"io_uring_queue_init: {Libc.StrError(-err)}");
            _eventFd = Libc.EventFd(0, Libc.EFD_NONBLOCK | Libc.EFD_CLOEXEC);
            Uring.RegisterEventFd(_ring, _eventFd);
            for (int i = 0; i < Entries; i++) _freeSlots[i] = (int)Entries - 1 - i;
            _freeCount = (int)Entries;
            _cqes = (SnCompletion*)NativeMemory.Alloc(64, (nuint)sizeof(SnCompletion));

            // Register the reactor's data pools as fixed buffers so reads and writes skip page pinning.
            BufferPool[] pools = [reactor.Pools.Small, reactor.Pools.Medium, reactor.Pools.Large];
            Libc.IoVec* iov = stackalloc Libc.IoVec[3];
            for (int i = 0; i < 3; i++) iov[i] = new Libc.IoVec { Base = pools[i].Base, Length = (nuint)pools[i].TotalBytes };
            _fixed = Uring.RegisterBuffers(_ring, iov, 3) == 0 ? pools : [];
            _source = new Source(this);
            reactor.Post(() => reactor.Register(_source));
        }

        private int FixedIndex(byte* buffer)
        {
            for (int i = 0; i < _fixed.Length; i++)
                if (_fixed[i].Owns(buffer)) return i;
            return -1;
        }

        public override void Read(ulong offset, byte* buffer, uint length, IBdevCompletion completion)
            => Submit(new Pending { Op = Op.Read, Offset = offset, Buffer = buffer, Length = length, Completion = completion });

        public override void Write(ulong offset, byte* buffer, uint length, bool fua, IBdevCompletion completion)
            => Submit(new Pending { Op = Op.Write, Offset = offset, Buffer = buffer, Length = length, Fua = fua, Completion = completion });

        public override void Flush(IBdevCompletion completion) => Submit(new Pending { Op = Op.Flush, Completion = completion });

        public override void WriteZeroes(ulong offset, ulong length, IBdevCompletion completion)
            => Submit(new Pending { Op = Op.WriteZeroes, Offset = offset, Length = length, Completion = completion });

        public override void Deallocate(ulong offset, ulong length, IBdevCompletion completion)
            => Submit(new Pending { Op = Op.Deallocate, Offset = offset, Length = length, Completion = completion });

        private void Submit(in Pending op)
        {
            if (_backlogCount > 0 || !TryPrep(op))
            {
                if (_backlogCount == _backlog.Length)
                {
                    var grown = new Pending[_backlog.Length * 2];
                    for (int i = 0; i < _backlogCount; i++) grown[i] = _backlog[(_backlogHead + i) % _backlog.Length];
                    _backlog = grown;
                    _backlogHead = 0;
                }
                _backlog[(_backlogHead + _backlogCount++) % _backlog.Length] = op;
            }
            _reactor.MarkDirty(_source);
        }

        private bool TryPrep(in Pending op)
        {
            if (_freeCount == 0) return false;
            int slot = _freeSlots[_freeCount - 1];
            int fd = _bdev.Fd;
            int zeroMode = op.Op == Op.WriteZeroes ? _bdev.ZeroMode : 0;
            int rc = op.Op switch
            {
                Op.Read => Uring.PrepRead(_ring, fd, op.Buffer, (uint)op.Length, op.Offset, FixedIndex(op.Buffer), (ulong)slot),
                Op.Write => Uring.PrepWrite(_ring, fd, op.Buffer, (uint)op.Length, op.Offset, FixedIndex(op.Buffer), op.Fua ? Uring.RwfDsync : 0, (ulong)slot),
                Op.Flush => Uring.PrepFsync(_ring, fd, Uring.FsyncDataSync, (ulong)slot),
                Op.WriteZeroes => Uring.PrepFallocate(_ring, fd, zeroMode, op.Offset, op.Length, (ulong)slot),
                _ => Uring.PrepFallocate(_ring, fd, Uring.FallocPunchHole | Uring.FallocKeepSize, op.Offset, op.Length, (ulong)slot),
            };
            if (rc != 0) return false;
            _freeCount--;
            _inflight[slot] = op.Completion;
            _expect[slot] = op.Op is Op.Read or Op.Write ? (uint)op.Length : 0;
            _buffers[slot] = (nint)op.Buffer;
            _isRead[slot] = op.Op == Op.Read;
            _zeroMode[slot] = zeroMode;
            _zeroOffset[slot] = op.Offset;
            _zeroLength[slot] = op.Length;
            _unsubmitted++;
            return true;
        }

        private int SubmitPending()
        {
            while (_backlogCount > 0 && TryPrep(_backlog[_backlogHead]))
            {
                _backlog[_backlogHead] = default;
                _backlogHead = (_backlogHead + 1) % _backlog.Length;
                _backlogCount--;
            }
            if (_unsubmitted == 0) return 0;
            int n = Uring.Submit(_ring);
            if (n > 0) _unsubmitted -= n;
            if (_unsubmitted > 0 || _backlogCount > 0) _reactor.MarkDirty(_source);
            return 1;
        }

        private int Reap()
        {
            ulong v;
            Libc.Read(_eventFd, &v, 8);
            int total = 0;
            int n;
            while ((n = Uring.Reap(_ring, _cqes, 64)) > 0)
            {
                for (int i = 0; i < n; i++)
                {
                    int slot = (int)_cqes[i].UserData;
                    IBdevCompletion c = _inflight[slot]!;
                    _inflight[slot] = null;
                    _freeSlots[_freeCount++] = slot;
                    int res = _cqes[i].Result;
                    if (res >= 0 && (uint)res < _expect[slot])
                    {
                        // A short transfer: reads past the end of the file are zeroes, a short write is an error.
                        if (_isRead[slot]) NativeMemory.Clear((byte*)_buffers[slot] + res, _expect[slot] - (uint)res);
                        else res = -5;
                    }
                    if (_bdev.RetryAsHole(_zeroMode[slot], res))
                    {
                        Submit(new Pending { Op = Op.WriteZeroes, Offset = _zeroOffset[slot], Length = _zeroLength[slot], Completion = c });
                        continue;
                    }
                    c.OnBdevComplete(res < 0 ? res : 0);
                }
                total += n;
            }
            if (_backlogCount > 0) _reactor.MarkDirty(_source);
            return total;
        }

        public override void Dispose()
        {
            // On its own reactor (a namespace removed at run time) the eventfd leaves epoll before it is closed; from
            // elsewhere (the node stopping) the reactor drops it later.
            if (_reactor.IsCurrentThread) _reactor.Unregister(_source);
            else _reactor.Post(() => _reactor.Unregister(_source));
            Uring.Destroy(_ring);
            Libc.Close(_eventFd);
            NativeMemory.Free(_cqes);
        }
    }
}
