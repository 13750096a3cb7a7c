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

    public override BdevChannel CreateChannel(Reactor reactor) => new Channel(this);

    public override void Dispose() => NativeMemory.AlignedFree(_data);

    private sealed class Channel(MallocBdev bdev) : BdevChannel
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
            completion.OnBdevComplete(bdev.FailWrites ? -5 : 0);
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

/// <summary>A bdev that stores nothing: writes are dropped, reads return zeroes. For measuring the data path.</summary>
public sealed unsafe class NullBdev(string name, uint blockSize, ulong blockCount) : Bdev(name, blockSize, blockCount)
{
    public override BdevChannel CreateChannel(Reactor reactor) => new Channel();

    private sealed class Channel : BdevChannel
    {
        // Buffers come from shared pools; clearing them keeps one host's old data from reaching another.
        public override void Read(ulong offset, byte* buffer, uint length, IBdevCompletion completion)
        {
            NativeMemory.Clear(buffer, length);
            completion.OnBdevComplete(0);
        }

        public override void Write(ulong offset, byte* buffer, uint length, bool fua, IBdevCompletion completion) => completion.OnBdevComplete(0);
        public override void Flush(IBdevCompletion completion) => completion.OnBdevComplete(0);
        public override void WriteZeroes(ulong offset, ulong length, IBdevCompletion completion) => completion.OnBdevComplete(0);
        public override void Deallocate(ulong offset, ulong length, IBdevCompletion completion) => completion.OnBdevComplete(0);
    }
}
