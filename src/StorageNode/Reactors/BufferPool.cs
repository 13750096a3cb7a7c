using System.Runtime.InteropServices;

namespace StorageNode.Reactors;

/// <summary>
/// A fixed set of equally sized, 4 KiB-aligned, pinned buffers carved from one native allocation.
/// Owned by one reactor: Get/Return are not thread-safe and never allocate.
/// </summary>
public sealed unsafe class BufferPool : IDisposable
{
    private readonly byte* _base;
    private readonly int[] _free;
    private int _freeCount;

    public int BufferSize { get; }
    public int Count { get; }
    public int Available => _freeCount;
    public byte* Base => _base;
    public long TotalBytes => (long)BufferSize * Count;

    public BufferPool(int bufferSize, int count)
    {
        if (bufferSize <= 0 || bufferSize % 4096 != 0) throw new ArgumentOutOfRangeException(nameof(bufferSize), "must be a positive multiple of 4096");
        if (count <= 0) throw new ArgumentOutOfRangeException(nameof(count));
        BufferSize = bufferSize;
        Count = count;
        _base = (byte*)NativeMemory.AlignedAlloc((nuint)bufferSize * (nuint)count, 4096);
        _free = new int[count];
        for (int i = 0; i < count; i++) _free[i] = count - 1 - i;
        _freeCount = count;
    }

    /// <summary>A free buffer, or null when the pool is empty (the caller waits and retries).</summary>
    public byte* Get()
    {
        if (_freeCount == 0) return null;
        int idx = _free[--_freeCount];
        return _base + (nint)idx * BufferSize;
    }

    public void Return(byte* buffer)
    {
        long offset = buffer - _base;
        int idx = (int)(offset / BufferSize);
        if (offset < 0 || idx >= Count || offset % BufferSize != 0)
            throw new ArgumentException("buffer does not belong to this pool");
        _free[_freeCount++] = idx;
    }

    public bool Owns(byte* buffer) => buffer >= _base && buffer < _base + TotalBytes;

    public void Dispose() => NativeMemory.AlignedFree(_base);
}

/// <summary>The size classes one reactor hands out for command data.</summary>
public sealed unsafe class DataBufferPools : IDisposable
{
    public readonly BufferPool Small;
    public readonly BufferPool Medium;
    public readonly BufferPool Large;

    public DataBufferPools(PoolOptions o)
    {
        Small = new BufferPool(o.SmallBufferSize, o.SmallBufferCount);
        Medium = new BufferPool(o.MediumBufferSize, o.MediumBufferCount);
        Large = new BufferPool(o.LargeBufferSize, o.LargeBufferCount);
    }

    public int MaxBufferSize => Large.BufferSize;

    /// <summary>A buffer of at least <paramref name="length"/> bytes, or null when that class is exhausted.</summary>
    public byte* Get(uint length)
    {
        if (length <= (uint)Small.BufferSize) return Small.Get();
        if (length <= (uint)Medium.BufferSize) return Medium.Get();
        if (length <= (uint)Large.BufferSize) return Large.Get();
        return null;
    }

    public void Return(byte* buffer)
    {
        if (Small.Owns(buffer)) Small.Return(buffer);
        else if (Medium.Owns(buffer)) Medium.Return(buffer);
        else Large.Return(buffer);
    }

    /// <summary>
    /// For the rare commands that need a second buffer (Compare, Copy, a relayed Compare and Write): a pool buffer when
    /// one is free, else native memory; give it back with <see cref="Release"/>.
    /// </summary>
    public byte* Borrow(uint length) => Get(length) is var b && b != null ? b : (byte*)NativeMemory.AlignedAlloc(Math.Max(length, 1), 4096);

    /// <summary>Gives back what <see cref="Borrow"/> lent: to its pool, or to native memory.</summary>
    public void Release(byte* buffer)
    {
        if (Small.Owns(buffer) || Medium.Owns(buffer) || Large.Owns(buffer)) Return(buffer);
        else NativeMemory.AlignedFree(buffer);
    }

    public long TotalBytes => Small.TotalBytes + Medium.TotalBytes + Large.TotalBytes;

    public void Dispose()
    {
        Small.Dispose();
        Medium.Dispose();
        Large.Dispose();
    }
}

public sealed record PoolOptions
{
    public int SmallBufferSize { get; init; } = 8192;
    public int SmallBufferCount { get; init; } = 1024;
    public int MediumBufferSize { get; init; } = 128 * 1024;
    public int MediumBufferCount { get; init; } = 128;
    public int LargeBufferSize { get; init; } = 1024 * 1024;
    public int LargeBufferCount { get; init; } = 16;
}
