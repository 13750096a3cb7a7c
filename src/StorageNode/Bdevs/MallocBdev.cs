using System.Runtime.InteropServices;
using StorageNode.Reactors;

namespace StorageNode.Bdevs;

/// <summary>RAM-backed bdev: one pinned, 4 KiB-aligned native allocation. Every operation completes inline.</summary>
public sealed unsafe class MallocBdev : Bdev
{
    private readonly byte* _data;

    public MallocBdev(string name, uint blockSize, ulong blockCount) : base(name, blockSize, blockCount)
    {
        nuint bytes = checked((nuint)(blockCount * blockSize));
        _data = (byte*)NativeMemory.AlignedAlloc(bytes, 4096);
        NativeMemory.Clear(_data, bytes);
    }

    /// <summary>
    /// Test hook (as SPDK's error bdev): while set, writes and write-zeroes change the blocks and then fail with EIO, as a
    /// device may fail a write it has partly done.
    /// </summary>
    public volatile bool FailWrites;

    /// <summary>
    /// Test hook (as SPDK's delay bdev, by hand): while set, writes change the blocks at once and their completions wait
    /// until <see cref="ReleaseHeldWrite"/>.
    /// </summary>
    public volatile bool HoldWrites;
    private readonly List<(Reactor Reactor, IBdevCompletion Completion)> _held = [];

    /// <summary>Writes whose completion is held now.</summary>
    public int HeldWrites
    {
        get { lock (_held) return _held.Count; }
    }

    /// <summary>Completes the oldest held write (the newest with <paramref name="newest"/>) on its reactor; false when none is held.</summary>
    public bool ReleaseHeldWrite(bool newest = false)
    {
        (Reactor Reactor, IBdevCompletion Completion) h;
        lock (_held)
        {
            if (_held.Count == 0) return false;
            int i = newest ? _held.Count - 1 : 0;
            h = _held[i];
            _held.RemoveAt(i);
        }
        h.Reactor.Post(() => h.Completion.OnBdevComplete(0));
        return true;
    }

    public override BdevChannel CreateChannel(Reactor reactor) => new Channel(this, reactor);

    public override void Dispose() => NativeMemory.AlignedFree(_data);

    private sealed class Channel(MallocBdev bdev, Reactor reactor) : BdevChannel
    {
        public override void Read(ulong offset, byte* buffer, uint length, IBdevCompletion completion)
        {
            Buffer.MemoryCopy(bdev._data + offset, buffer, length, length);
            completion.OnBdevComplete(0);
        }

        public override byte* ZeroCopyRead(ulong offset, uint length) => bdev._data + offset;

        public override void Write(ulong offset, byte* buffer, uint length, bool fua, IBdevCompletion completion)
        {
            Buffer.MemoryCopy(buffer, bdev._data + offset, length, length);
            if (bdev.HoldWrites)
            {
                lock (bdev._held) bdev._held.Add((reactor, completion));
            }
            else completion.OnBdevComplete(bdev.FailWrites ? -5 : 0);
        }

        public override void Flush(IBdevCompletion completion) => completion.OnBdevComplete(0);

        public override void WriteZeroes(ulong offset, ulong length, IBdevCompletion completion)
        {
            NativeMemory.Clear(bdev._data + offset, (nuint)length);
            completion.OnBdevComplete(bdev.FailWrites ? -5 : 0);
        }

        public override void Deallocate(ulong offset, ulong length, IBdevCompletion completion) => WriteZeroes(offset, length, completion);
    }
}
