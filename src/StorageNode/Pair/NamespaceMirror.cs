using System.Diagnostics;
using Microsoft.Extensions.Logging;
using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;
using StorageNode.Target;

namespace StorageNode.Pair;

/// <summary>
/// The owner's view of one namespace's replica on the partner (<c>Cluster:Mirror</c>; docs/ha.md, "Mirroring"). While
/// the replica is in sync or resyncing, every write to the namespace completes only once the replica has it too (the
/// copies go over the interconnect's queues, <see cref="ProxyQueue.Mirror"/>). A copy that fails, or the interconnect
/// going down, makes it out of sync: writes then complete here alone, and once the interconnect is up again a resync
/// copies the whole namespace over, one range-locked chunk at a time, while new writes are mirrored.
/// </summary>
public sealed unsafe class NamespaceMirror : INamespaceMirror
{
    private const int OutOfSync = 0, Resyncing = 1, InSync = 2;
    private const uint ChunkBytes = 128 * 1024;

    private readonly InterconnectLink _link;
    private readonly Namespace _ns;
    private readonly Reactor _reactor;
    private readonly ILogger _log;
    private volatile int _state = OutOfSync;
    private int _resyncRunning;
    private Resync? _resync;

    internal NamespaceMirror(InterconnectLink link, Namespace ns, Reactor resyncReactor, ILogger log)
    {
        _link = link;
        _ns = ns;
        _reactor = resyncReactor;
        _log = log;
    }

    public uint Nsid => _ns.Nsid;

    /// <summary><c>in_sync</c>, <c>resyncing</c> or <c>out_of_sync</c>.</summary>
    public string State => _state switch { InSync => "in_sync", Resyncing => "resyncing", _ => "out_of_sync" };

    public bool IsInSync => _state == InSync;
    public bool Active => _state != OutOfSync;

    /// <summary>Resyncs finished, and the bytes the last one has copied so far (statistics).</summary>
    public int ResyncsDone { get; private set; }
    public long ResyncedBytes => Volatile.Read(ref _resyncedBytes);
    private long _resyncedBytes;

    public void Send(int reactorId, in SubmissionQueueEntry sqe, byte* data, uint length, IMirrorCompletion done)
    {
        ProxyQueue? q = _link.QueueFor(reactorId);
        if (q == null)
        {
            Completed(_link.UnavailableStatus, done);
            return;
        }
        q.Mirror(this, sqe, data, length, done);
    }

    /// <summary>The replica answered a copy, or it could not be sent (reactor thread).</summary>
    internal void Completed(NvmeStatus status, IMirrorCompletion done)
    {
        if (!status.IsSuccess) Lost($"a write's copy failed ({status})");
        done.OnMirrored(status);
    }

    /// <summary>The replica misses (or may miss) a write: out of sync until a resync (the next once the link is up). Any thread.</summary>
    public void Lost(string why)
    {
        if (Interlocked.Exchange(ref _state, OutOfSync) == OutOfSync) return;
        _link.SendReplicaState(_ns.Nsid, inSync: false); // if the interconnect is up (a copy failed); else the partner lost us anyway
        _log.LogWarning("{Nqn}: NSID {Nsid}: the partner's replica is out of sync: {Why}; writes complete on this node alone until a resync",
                _link.Subsystem.Nqn, _ns.Nsid, why);
    }

    /// <summary>Starts a resync when the replica is out of sync and none runs (the pair's control thread, with the link up).</summary>
    internal void ResyncIfNeeded()
    {
        if (_state != OutOfSync || Interlocked.CompareExchange(ref _resyncRunning, 1, 0) != 0) return;
        // From here every write that completes is mirrored; each chunk is read under a range lock, after the writes that
        // were running on it finished, so a chunk and the writes around it reach the replica in the order they happened.
        _state = Resyncing;
        Volatile.Write(ref _resyncedBytes, 0);
        _log.LogInformation("{Nqn}: NSID {Nsid}: resyncing the partner's replica ({Size} MiB)", _link.Subsystem.Nqn, _ns.Nsid, _ns.Bdev.SizeBytes >> 20);
        _resync = new Resync(this);
        _reactor.Post(_resync.Start);
    }

    private void ResyncEnded(bool completed, long elapsedTicks)
    {
        _resync = null;
        if (completed && Interlocked.CompareExchange(ref _state, InSync, Resyncing) == Resyncing)
        {
            ResyncsDone++;
            _link.SendReplicaState(_ns.Nsid, inSync: true);
            _log.LogInformation("{Nqn}: NSID {Nsid}: the partner's replica is in sync ({Bytes} MiB copied in {Seconds:0.00} s)",
                _link.Subsystem.Nqn, _ns.Nsid, ResyncedBytes >> 20, (double)elapsedTicks / Stopwatch.Frequency);
        }
        Volatile.Write(ref _resyncRunning, 0);
    }

    /// <summary>One resync: chunk after chunk on one reactor, each read under a range lock and sent as a Write (or Write Zeroes).</summary>
    private sealed class Resync(NamespaceMirror m) : IBdevCompletion, IMirrorCompletion
    {
        private readonly long _startedAt = Stopwatch.GetTimestamp();
        private byte* _buffer;
        private ulong _next, _blocks;

        public void Start()
        {
            _buffer = m._reactor.Pools.Borrow(ChunkBytes);
            Next();
        }

        private void Next()
        {
            Namespace ns = m._ns;
            if (m._state != Resyncing || ns.Removed)
            {
                End(completed: false);
                return;
            }
            if (_next >= ns.Bdev.BlockCount)
            {
                End(completed: true);
                return;
            }
            _blocks = Math.Min(ChunkBytes >> ns.Bdev.BlockShift, ns.Bdev.BlockCount - _next);
            ns.Locks.Lock(_next, _next + _blocks, () => m._reactor.Post(Read));
        }

        private void Read()
        {
            Namespace ns = m._ns;
            ns.Channels[m._reactor.Id].Read(_next << ns.Bdev.BlockShift, _buffer, (uint)(_blocks << ns.Bdev.BlockShift), this);
        }

        public void OnBdevComplete(int result)
        {
            Namespace ns = m._ns;
            if (result != 0)
            {
                m.Lost($"reading block {_next} for the resync failed ({result})");
                ns.Locks.Unlock();
                End(completed: false);
                return;
            }
            uint length = (uint)(_blocks << ns.Bdev.BlockShift);
            bool zero = !new ReadOnlySpan<byte>(_buffer, (int)length).ContainsAnyExcept((byte)0);
            SubmissionQueueEntry sqe = default;
            sqe.Nsid = ns.Nsid;
            sqe.Cdw10 = (uint)_next;
            sqe.Cdw11 = (uint)(_next >> 32);
            sqe.Cdw12 = (uint)(_blocks - 1);
            sqe = MirrorCommands.CopyOf(sqe, zero ? IoOpcode.WriteZeroes : IoOpcode.Write);
            m.Send(m._reactor.Id, sqe, zero ? null : _buffer, zero ? 0 : length, this);
        }

        public void OnMirrored(NvmeStatus status)
        {
            m._ns.Locks.Unlock();
            if (!status.IsSuccess)
            {
                End(completed: false);
                return;
            }
            Interlocked.Add(ref m._resyncedBytes, (long)(_blocks << m._ns.Bdev.BlockShift));
            _next += _blocks;
            Next();
        }

        private void End(bool completed)
        {
            if (_buffer != null) m._reactor.Pools.Release(_buffer);
            _buffer = null;
            m.ResyncEnded(completed, Stopwatch.GetTimestamp() - _startedAt);
        }
    }
}
