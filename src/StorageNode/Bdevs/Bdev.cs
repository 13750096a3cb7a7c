using StorageNode.Reactors;

namespace StorageNode.Bdevs;

/// <summary>
/// Result of a bdev operation: 0 on success, a negative errno on failure, or a positive NVMe status (the
/// 15-bit status field, see <see cref="BdevResult"/>) to return to the host as is (relayed commands).
/// </summary>
public interface IBdevCompletion
{
    void OnBdevComplete(int result);
}

public static class BdevResult
{
    public static int FromStatus(Nvme.Spec.NvmeStatus status) => status.IsSuccess ? 0 : status.Value;

    /// <summary>The NVMe status a result stands for (a negative errno: Internal Error, which the host may retry).</summary>
    public static Nvme.Spec.NvmeStatus ToStatus(int result) => result > 0 ? new Nvme.Spec.NvmeStatus((ushort)result)
        : result < 0 ? Nvme.Spec.NvmeStatus.Generic(Nvme.Spec.GenericStatus.InternalError, dnr: false) : Nvme.Spec.NvmeStatus.Success;
}

/// <summary>
/// A block device: fixed block size and count. I/O goes through a per-reactor <see cref="BdevChannel"/>.
/// </summary>
public abstract class Bdev : IDisposable
{
    public string Name { get; }
    public uint BlockSize { get; }
    public ulong BlockCount { get; }
    public int BlockShift { get; }
    public ulong SizeBytes => BlockCount * BlockSize;

    /// <summary>What the bdev has done (counted as commands complete; SPDK's <c>bdev_get_iostat</c>).</summary>
    public IoStats Stats { get; } = new();

    /// <summary>Deallocated blocks read back as zeroes.</summary>
    public virtual bool DeallocateReadsZeroes => true;

    /// <summary>Has a volatile cache that Flush makes durable.</summary>
    public virtual bool HasVolatileCache => false;

    /// <summary>
    /// The data lives elsewhere (the HA partner): the channels take whole NVMe commands
    /// (<see cref="Target.ICommandChannel"/>) instead of block operations, and the bdev gives only the geometry.
    /// </summary>
    public virtual bool TakesWholeCommands => false;

    protected Bdev(string name, uint blockSize, ulong blockCount)
    {
        if (blockSize is not (512 or 1024 or 2048 or 4096 or 8192 or 16384 or 32768 or 65536))
            throw new ArgumentOutOfRangeException(nameof(blockSize), $"block size {blockSize} is not a power of two from 512 to 65536");
        Name = name;
        BlockSize = blockSize;
        BlockCount = blockCount;
        BlockShift = System.Numerics.BitOperations.Log2(blockSize);
    }

    /// <summary>Creates the channel one reactor uses; called once per reactor, on any thread.</summary>
    public abstract BdevChannel CreateChannel(Reactor reactor);

    public virtual void Dispose() { }

    public override string ToString() => $"{GetType().Name} {Name} ({BlockCount} x {BlockSize} B)";
}

/// <summary>
/// One reactor's handle on a bdev. All calls come from that reactor's thread. Completion is reported through
/// <see cref="IBdevCompletion.OnBdevComplete"/>, possibly before the call returns. Offsets and lengths are in
/// bytes and already validated against the device size and block size.
/// </summary>
public abstract unsafe class BdevChannel : IDisposable
{
    public abstract void Read(ulong offset, byte* buffer, uint length, IBdevCompletion completion);

    /// <summary>
    /// Zero-copy read (SPDK's zcopy): where the bdev's data already sits in memory, the address of
    /// <paramref name="length"/> bytes at <paramref name="offset"/> for the transport to send from directly;
    /// null when the bdev cannot (the transport then reads into a buffer of its own).
    /// </summary>
    public virtual byte* ZeroCopyRead(ulong offset, uint length) => null;
    public abstract void Write(ulong offset, byte* buffer, uint length, bool fua, IBdevCompletion completion);
    public abstract void Flush(IBdevCompletion completion);
    public abstract void WriteZeroes(ulong offset, ulong length, IBdevCompletion completion);
    public abstract void Deallocate(ulong offset, ulong length, IBdevCompletion completion);
    public virtual void Dispose() { }
}
