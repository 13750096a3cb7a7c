using System.Runtime.InteropServices;
using StorageNode.Reactors;

namespace StorageNode.Bdevs;

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
