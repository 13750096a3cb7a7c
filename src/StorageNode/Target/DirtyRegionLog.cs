using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using StorageNode.Interop;
using StorageNode.Nvme;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// The owner's dirty-region record of a mirrored namespace in a file (docs/ha.md, "The dirty-region record"): a
/// write-intent bitmap kept in the state directory, as DRBD's activity log and md's write-intent bitmap are. A region's
/// bit is on the device before any write to the region starts (a write to a region whose bit is not there yet waits
/// for the next flush of the record), and is cleared only once the region has had no write for a while and the replica
/// holds it. So after a crash of this node, every region where the namespace and its replica may differ is marked, and
/// a restart resyncs those, not everything — if the replica is still the one the record was kept against (the epoch
/// it names; the keeper decides) and the machine did not restart meanwhile (a power loss may have lost writes the
/// device had not flushed: then everything is resynced).
/// <para>
/// Writes enter (<see cref="Enter"/>: any reactor, no lock, no allocation once their regions are marked) and leave as
/// they complete; one thread per record writes the bitmap, flushes it and clears regions. A region is cleared only
/// while no write is inside it: the clearing thread marks it "being cleared" and then reads its count of writes; a
/// write counts itself and then reads the mark; each side's atomic operation comes before its read, so at least one of
/// the two sees the other (the write then waits for the region to be marked again).
/// </para>
/// </summary>
public sealed unsafe class DirtyRegionLog : IDisposable
{
    /// <summary>A region: 1 MiB (the mirror's dirty bitmap uses the same).</summary>
    public const int RegionShift = 20;
    private const int HeaderBytes = 4096;
    private const uint Magic = 0x4C52_4453; // "SDRL"
    private const uint Version = 1;
    private const byte Clean = 0, Marked = 1, Clearing = 2;

    private readonly string _path;
    private readonly int _fd;
    private readonly ILogger _log;
    private readonly long _generation;
    private readonly long _clearTicks;
    // Per region: whether its bit is on the device (Marked), being cleared, or clean; and how many writes are inside it.
    private readonly byte[] _state;
    private readonly int[] _inside;
    // Regions writes wait for, and regions entered since the last clearing pass (bitmaps, any thread).
    private readonly long[] _wanted;
    private readonly long[] _touched;
    // The bitmap as the thread writes it (the thread's own).
    private readonly byte[] _image;
    private readonly ConcurrentQueue<NvmfRequest> _parked = new();
    private readonly AutoResetEvent _wake = new(false);
    private readonly Thread _thread;
    private volatile bool _stop;
    private long _flushes, _cleared;

    private DirtyRegionLog(string path, int fd, long generation, int regions, TimeSpan clearAfter, ILogger log)
    {
        _path = path;
        _fd = fd;
        _generation = generation;
        Regions = regions;
        _clearTicks = (long)(clearAfter.TotalSeconds * Stopwatch.Frequency);
        _log = log;
        _state = new byte[regions];
        _inside = new int[regions];
        _wanted = new long[(regions + 63) / 64];
        _touched = new long[(regions + 63) / 64];
        _image = new byte[(regions + 7) / 8];
        LoadedRegions = new long[(regions + 63) / 64];
        _thread = new Thread(Run) { IsBackground = true, Name = "dirty-log" };
    }

    public int Regions { get; }

    /// <summary>
    /// Whether the record was kept (this node's data generation, this boot): then <see cref="Epoch"/> and
    /// <see cref="LoadedRegions"/> are what it says. Otherwise it starts empty and names no epoch (the first resync
    /// copies everything).
    /// </summary>
    public bool Loaded { get; private set; }

    /// <summary>The replica's epoch the record is kept against: the last resync the keeper applied (0: none).</summary>
    public uint Epoch { get; private set; }

    /// <summary>The regions the kept record marked (bits, as the mirror's <c>DirtyBitmap</c> holds them).</summary>
    public long[] LoadedRegions { get; }

    /// <summary>
    /// The regions marked now, or being marked for a write that waits (bits, as <see cref="LoadedRegions"/>): what the
    /// replica may lack once writes ran before the mirror was there to mark them missed (a restart's first writes).
    /// Nothing is cleared before <see cref="ReplicaHas"/> is set.
    /// </summary>
    public long[] MarkedNow()
    {
        var bits = new long[(Regions + 63) / 64];
        for (int r = 0; r < Regions; r++)
            if (Volatile.Read(ref _state[r]) != Clean) bits[r >> 6] |= 1L << (r & 63);
        for (int w = 0; w < bits.Length; w++) bits[w] |= Volatile.Read(ref _wanted[w]);
        return bits;
    }

    /// <summary>
    /// Set by the mirror: whether the replica holds region <c>r</c> as this node does now (in sync, and not marked
    /// missed). Called by the clearing thread for a region no write is inside; null: nothing is cleared.
    /// </summary>
    public Func<ulong, bool>? ReplicaHas { get; set; }

    /// <summary>Regions marked on the device now, flushes of the record, and regions cleared (status, tests).</summary>
    public int MarkedRegions
    {
        get
        {
            int n = 0;
            for (int r = 0; r < Regions; r++) n += Volatile.Read(ref _state[r]) != Clean ? 1 : 0;
            return n;
        }
    }

    public long Flushes => Interlocked.Read(ref _flushes);
    public long Cleared => Interlocked.Read(ref _cleared);

    /// <summary>
    /// Opens the record at <paramref name="path"/> for a namespace of <paramref name="regions"/> regions whose data is of
    /// generation <paramref name="generation"/>: kept when it names that generation, that many regions and this boot;
    /// otherwise made anew (empty, no epoch).
    /// </summary>
    public static DirtyRegionLog Open(string path, long generation, int regions, TimeSpan clearAfter, ILogger log)
    {
        int fd = FileIo.Open(path, FileIo.O_RDWR | FileIo.O_CREAT | FileIo.O_CLOEXEC, 0x180);
        if (fd < 0) throw new IOException($"{path}: cannot open the dirty-region record (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
        var l = new DirtyRegionLog(path, fd, generation, regions, clearAfter, log);
        try
        {
            string why = l.Load();
            if (!l.Loaded)
            {
                l.Epoch = 0;
                Array.Clear(l._image);
                l.WriteHeader();
                l.WriteBitmap();
                if (why.Length > 0) log.LogInformation("{Path}: the dirty-region record starts anew ({Why}): the next resync copies everything", path, why);
            }
        }
        catch
        {
            l.Dispose();
            throw;
        }
        l._thread.Start();
        return l;
    }

    /// <summary>Reads the kept record; why it is not kept (empty: there was none).</summary>
    private string Load()
    {
        byte[] header = new byte[HeaderBytes];
        if (ReadAt(header, 0) < HeaderBytes) return "";
        if (BinaryPrimitives.ReadUInt32LittleEndian(header) != Magic || BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4)) != Version
            || BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(44)) != Crc32C.Compute(header.AsSpan(0, 44)))
            return "not a dirty-region record";
        long generation = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(8));
        uint epoch = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(16));
        int regions = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(20));
        int shift = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(24));
        var boot = new Guid(header.AsSpan(28, 16));
        if (generation != _generation) return "it was kept for other data";
        if (regions != Regions || shift != RegionShift) return "the namespace's size changed";
        if (boot != BootId.Current || boot == Guid.Empty) return "the machine restarted since (or its boot cannot be told): writes its device had not flushed may be lost";
        if (ReadAt(_image, HeaderBytes) < _image.Length) return "its bitmap is cut short";
        for (int r = 0; r < Regions; r++)
        {
            if ((_image[r >> 3] & (1 << (r & 7))) == 0) continue;
            _state[r] = Marked;
            LoadedRegions[r >> 6] |= 1L << (r & 63);
        }
        Epoch = epoch;
        Loaded = true;
        return "";
    }

    /// <summary>
    /// Keeps <paramref name="epoch"/> as the one the record is kept against (the keeper applied a resync of it); the
    /// record names it once this returns. Notice thread; false when it could not be written (a restart then resyncs
    /// everything).
    /// </summary>
    public bool SetEpoch(uint epoch)
    {
        lock (_header)
        {
            Epoch = epoch;
            try
            {
                WriteHeader();
                return true;
            }
            catch (IOException e)
            {
                _log.LogError("{Path}: cannot keep the replica's epoch {Epoch} in the dirty-region record: {Error}; it names the epoch before (its regions are still marked: a restart resyncs them, or everything if the keeper's replica moved on)", _path, epoch, e.Message);
                return false;
            }
        }
    }

    private readonly object _header = new();

    private void WriteHeader()
    {
        byte[] header = new byte[HeaderBytes];
        BinaryPrimitives.WriteUInt32LittleEndian(header, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), Version);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(8), _generation);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(16), Epoch);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(20), Regions);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(24), RegionShift);
        BootId.Current.TryWriteBytes(header.AsSpan(28, 16));
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(44), Crc32C.Compute(header.AsSpan(0, 44)));
        WriteAt(header, 0);
        Sync();
    }

    /// <summary>Writes the bitmap (<see cref="_image"/>) and flushes it to the device.</summary>
    private void WriteBitmap()
    {
        WriteAt(_image, HeaderBytes);
        Sync();
        Interlocked.Increment(ref _flushes);
    }

    /// <summary>
    /// The regions a write touches (from the first its blocks touch to the last), or null for one that writes none:
    /// Write, Write Zeroes, a fused or relayed Compare and Write by their LBA range; a deallocating Dataset Management by
    /// its ranges and a Copy by its destination (both in its data, here when it runs; a range beyond the namespace, which
    /// the command then refuses, is clipped).
    /// </summary>
    public (int First, int Last)? RegionsOf(NvmfRequest req, int blockShift) => RegionsOf(req.Sqe, req.DataSpan, Regions, blockShift);

    /// <summary><see cref="RegionsOf(NvmfRequest, int)"/> for a command <paramref name="sqe"/> with data <paramref name="data"/>, of a namespace of <paramref name="regions"/> regions.</summary>
    internal static (int First, int Last)? RegionsOf(in SubmissionQueueEntry sqe, ReadOnlySpan<byte> data, int regions, int blockShift)
    {
        switch (sqe.Opcode)
        {
            case IoOpcode.Write or IoOpcode.WriteZeroes or FusedCommands.RelayedOpcode:
                return Span(sqe.Slba, sqe.BlockCount, regions, blockShift);
            case IoOpcode.DatasetManagement when (sqe.Cdw11 & DsmAttribute.Deallocate) != 0:
            {
                int ranges = (int)Math.Min(sqe.DsmRangeCount(), (uint)(data.Length / CommandFields.DsmRangeSize));
                int first = int.MaxValue, last = -1;
                for (int i = 0; i < ranges; i++)
                {
                    (ulong lba, uint nlb) = CommandFields.DsmRange(data, i);
                    if (nlb == 0) continue;
                    (int f, int l) = Span(lba, nlb, regions, blockShift);
                    first = Math.Min(first, f);
                    last = Math.Max(last, l);
                }
                return last < 0 ? null : (first, last);
            }
            case IoOpcode.Copy:
            {
                int n = Math.Min(sqe.SourceRanges(), data.Length / CopyFields.EntrySize);
                ulong blocks = 0;
                for (int i = 0; i < n; i++) blocks += CopyFields.Entry(data, i).Blocks;
                return blocks == 0 ? null : Span(sqe.DestinationLba(), blocks, regions, blockShift);
            }
            default:
                return null;
        }
    }

    private static (int First, int Last) Span(ulong slba, ulong blocks, int regions, int blockShift)
    {
        ulong max = (ulong)regions - 1;
        ulong first = slba >= (ulong.MaxValue >> blockShift) ? max : Math.Min((slba << blockShift) >> RegionShift, max);
        ulong end = slba + blocks;
        ulong last = end < slba || end - 1 >= (ulong.MaxValue >> blockShift) ? max : Math.Min(((end - 1) << blockShift) >> RegionShift, max);
        return ((int)first, (int)Math.Max(first, last));
    }

    /// <summary>
    /// A write enters regions <paramref name="first"/> to <paramref name="last"/> (its reactor): true when they are all
    /// marked on the device (it runs now). Otherwise it is parked (its slot held) and runs again
    /// (<see cref="IoCommands.RunParked"/>, on its reactor) once they are. Either way it counts inside them until
    /// <see cref="Leave"/>.
    /// </summary>
    public bool Enter(NvmfRequest req, int first, int last)
    {
        req.Dirty.First = first;
        req.Dirty.Last = last;
        req.Dirty.Logged = true;
        bool marked = true;
        for (int r = first; r <= last; r++)
        {
            Interlocked.Increment(ref _inside[r]);
            int w = (int)(r >> 6);
            long bit = 1L << (int)(r & 63);
            if ((Volatile.Read(ref _touched[w]) & bit) == 0) Interlocked.Or(ref _touched[w], bit);
            if (Volatile.Read(ref _state[r]) == Marked) continue;
            marked = false;
            Interlocked.Or(ref _wanted[w], bit);
        }
        if (marked) return true;
        req.PendingOps = 1; // the slot stays allocated while parked, even if the connection closes
        _parked.Enqueue(req);
        _wake.Set();
        return false;
    }

    /// <summary>The write completed (any thread): it no longer counts inside its regions.</summary>
    public void Leave(NvmfRequest req)
    {
        req.Dirty.Logged = false;
        for (int r = req.Dirty.First; r <= req.Dirty.Last; r++) Interlocked.Decrement(ref _inside[r]);
    }

    private void Run()
    {
        long lastClear = Stopwatch.GetTimestamp();
        int waitMs = (int)Math.Clamp(_clearTicks * 1000 / Stopwatch.Frequency / 4, 10, 1000);
        long[] taken = new long[_wanted.Length];
        while (!_stop)
        {
            _wake.WaitOne(waitMs);
            if (_stop) break;
            try
            {
                bool any = false;
                for (int w = 0; w < _wanted.Length; w++)
                {
                    taken[w] = Volatile.Read(ref _wanted[w]) != 0 ? Interlocked.Exchange(ref _wanted[w], 0) : 0;
                    any |= taken[w] != 0;
                }
                if (any)
                {
                    for (int w = 0; w < taken.Length; w++)
                        for (long bits = taken[w]; bits != 0; bits &= bits - 1)
                        {
                            int r = w * 64 + System.Numerics.BitOperations.TrailingZeroCount(bits);
                            _image[r >> 3] |= (byte)(1 << (r & 7));
                        }
                    WriteBitmap();
                    for (int w = 0; w < taken.Length; w++)
                        for (long bits = taken[w]; bits != 0; bits &= bits - 1)
                            Volatile.Write(ref _state[w * 64 + System.Numerics.BitOperations.TrailingZeroCount(bits)], Marked);
                }
                ResumeParked();
                long now = Stopwatch.GetTimestamp();
                if (now - lastClear >= _clearTicks)
                {
                    lastClear = now;
                    ClearIdle();
                }
            }
            catch (IOException e)
            {
                // Writes keep waiting for their regions (none runs unmarked); tried again at the next wake.
                _log.LogError("{Path}: writing the dirty-region record failed: {Error}; writes to regions not yet marked wait", _path, e.Message);
                Thread.Sleep(100);
            }
        }
    }

    /// <summary>Resumes the parked writes whose regions are all marked now; the others wait for the next flush.</summary>
    private void ResumeParked()
    {
        int n = _parked.Count;
        for (int i = 0; i < n && _parked.TryDequeue(out NvmfRequest? req); i++)
        {
            int first = req.Dirty.First, last = req.Dirty.Last;
            bool marked = true;
            for (int r = first; r <= last && marked; r++) marked = Volatile.Read(ref _state[r]) == Marked;
            if (marked)
            {
                NvmfRequest p = req;
                p.Qpair.Reactor.Post(() => IoCommands.RunParked(p));
                continue;
            }
            for (int r = first; r <= last; r++)
                if (Volatile.Read(ref _state[r]) != Marked) Interlocked.Or(ref _wanted[r >> 6], 1L << (int)(r & 63));
            _parked.Enqueue(req);
            _wake.Set();
        }
    }

    /// <summary>Clears the regions no write entered since the last pass, that no write is inside, and that the replica holds.</summary>
    private void ClearIdle()
    {
        Func<ulong, bool>? replicaHas = ReplicaHas;
        if (replicaHas == null) return;
        bool changed = false;
        for (int w = 0; w < _touched.Length; w++)
        {
            long touched = Interlocked.Exchange(ref _touched[w], 0);
            for (int b = 0; b < 64; b++)
            {
                int r = w * 64 + b;
                if (r >= Regions) break;
                if ((touched & (1L << b)) != 0 || Interlocked.CompareExchange(ref _state[r], Clearing, Marked) != Marked) continue;
                // Marked "being cleared" before the count is read (see the class comment); a write that enters now waits.
                bool clear = Volatile.Read(ref _inside[r]) == 0 && replicaHas((ulong)r);
                Volatile.Write(ref _state[r], clear ? Clean : Marked);
                if (!clear) continue;
                _image[r >> 3] &= (byte)~(1 << (r & 7));
                changed = true;
                Interlocked.Increment(ref _cleared);
            }
        }
        if (changed) WriteBitmap();
    }

    private int ReadAt(byte[] buffer, long offset)
    {
        fixed (byte* p = buffer)
        {
            nint n = FileIo.PRead(_fd, p, (nuint)buffer.Length, offset);
            if (n < 0) throw new IOException($"{_path}: read failed (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
            return (int)n;
        }
    }

    private void WriteAt(byte[] buffer, long offset)
    {
        fixed (byte* p = buffer)
        {
            nint n = FileIo.PWrite(_fd, p, (nuint)buffer.Length, offset);
            if (n != buffer.Length) throw new IOException($"{_path}: write failed (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
        }
    }

    private void Sync()
    {
        if (FileIo.FDataSync(_fd) != 0) throw new IOException($"{_path}: fdatasync failed (errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()})");
    }

    public void Dispose()
    {
        _stop = true;
        _wake.Set();
        if (_thread.IsAlive) _thread.Join();
        FileIo.Close(_fd);
        _wake.Dispose();
    }
}

/// <summary>This boot of the machine (<c>/proc/sys/kernel/random/boot_id</c>): records kept across a restart of the node say which boot wrote them, since a power loss may lose writes a device had not flushed.</summary>
public static class BootId
{
    public static Guid Current { get; } = Read();

    private static Guid Read()
    {
        try { return Guid.Parse(File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim()); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { return Guid.Empty; }
    }
}
