namespace StorageNode.Bdevs;

/// <summary>
/// The node's named bdevs (the configured ones and those made at run time), and which of them are still finishing the
/// commands of a namespace just removed. Control plane only; <see cref="SyncRoot"/> guards a change that must see the
/// registry and the subsystems together (a namespace added on a bdev, a bdev deleted).
/// </summary>
public sealed class BdevRegistry : IDisposable
{
    private readonly Dictionary<string, Bdev> _bdevs = new(StringComparer.Ordinal);
    // Bdevs whose namespace was removed and whose commands are still draining.
    private readonly HashSet<Bdev> _draining = [];

    /// <summary>Held by every method here; a caller holds it across checks that must stay true until its change is made.</summary>
    public object SyncRoot => _bdevs;

    /// <summary>The bdev named <paramref name="name"/>; <see cref="KeyNotFoundException"/> naming it when there is none.</summary>
    public Bdev Get(string name)
    {
        lock (SyncRoot) return _bdevs.TryGetValue(name, out Bdev? b) ? b : throw new KeyNotFoundException($"bdev '{name}' not found");
    }

    public bool TryGet(string name, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Bdev? bdev)
    {
        lock (SyncRoot) return _bdevs.TryGetValue(name, out bdev);
    }

    /// <summary>Adds a bdev under its name; a name in use is refused.</summary>
    public void Add(Bdev bdev)
    {
        lock (SyncRoot)
            if (!_bdevs.TryAdd(bdev.Name, bdev)) throw new InvalidOperationException($"bdev '{bdev.Name}' already exists");
    }

    /// <summary>Makes a RAM bdev (SPDK's <c>bdev_malloc_create</c>) named <paramref name="name"/>, or the first free <c>MallocN</c>.</summary>
    public MallocBdev CreateMalloc(string? name, uint blockSize, ulong blockCount)
    {
        if (blockSize is < 512 or > 65536 || (blockSize & (blockSize - 1)) != 0)
            throw new ArgumentException($"block_size {blockSize} must be a power of two in 512..65536");
        if (blockCount == 0 || blockCount > (1UL << 40) / blockSize)
            throw new ArgumentException($"num_blocks {blockCount} must be 1..{(1UL << 40) / blockSize} (at most 1 TiB)");
        lock (SyncRoot)
        {
            if (name == null)
                for (int i = 0; name == null || _bdevs.ContainsKey(name); i++) name = $"Malloc{i}";
            else if (name.Length == 0 || _bdevs.ContainsKey(name))
                throw new InvalidOperationException(name.Length == 0 ? "name must not be empty" : $"bdev '{name}' already exists");
            var bdev = new MallocBdev(name, blockSize, blockCount);
            _bdevs[name] = bdev;
            return bdev;
        }
    }

    /// <summary>
    /// Takes a RAM bdev out of the registry (the caller disposes it). Refused when it is not a RAM bdev, when
    /// <paramref name="claimOf"/> names what claims it, or while it drains.
    /// </summary>
    public Bdev RemoveMalloc(string name, Func<Bdev, string?> claimOf)
    {
        lock (SyncRoot)
        {
            if (!_bdevs.TryGetValue(name, out Bdev? b)) throw new KeyNotFoundException($"bdev '{name}' not found");
            if (b is not MallocBdev) throw new KeyNotFoundException($"bdev '{name}' is not a RAM (malloc) bdev");
            if (claimOf(b) is string claim) throw new InvalidOperationException($"bdev '{name}' is {claim}: remove the namespace first");
            if (_draining.Contains(b)) throw new InvalidOperationException($"bdev '{name}' is still finishing the commands of its last namespace");
            _bdevs.Remove(name);
            return b;
        }
    }

    /// <summary>The bdev's namespace was removed; it is busy until <see cref="Drained"/>.</summary>
    public void Draining(Bdev bdev)
    {
        lock (SyncRoot) _draining.Add(bdev);
    }

    public void Drained(Bdev bdev)
    {
        lock (SyncRoot) _draining.Remove(bdev);
    }

    public bool IsDraining(Bdev bdev)
    {
        lock (SyncRoot) return _draining.Contains(bdev);
    }

    /// <summary>The registered bdevs.</summary>
    public List<Bdev> Snapshot()
    {
        lock (SyncRoot) return [.. _bdevs.Values];
    }

    public void Dispose()
    {
        lock (SyncRoot)
        {
            foreach (Bdev b in _bdevs.Values) b.Dispose();
            _bdevs.Clear();
        }
    }
}
