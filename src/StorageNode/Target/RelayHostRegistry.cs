using System.Collections.Concurrent;
using System.Diagnostics;

namespace StorageNode.Target;

/// <summary>The owner side's record of one host the partner relays for, on one interconnect association.</summary>
public sealed class RelayBinding(uint handle, HostState host, Controller association)
{
    public uint Handle { get; } = handle;
    public HostState Host { get; } = host;
    /// <summary>The partner's interconnect association the handle is valid on.</summary>
    public Controller Association { get; } = association;
    /// <summary>Relayed commands received under this handle.</summary>
    public long Received;
}

/// <summary>Reads relay deadlines, which the partner wrote on this node's clock.</summary>
public interface IPartnerClock
{
    /// <summary>A deadline on this node's own clock (CDW3 of a relayed command) as a local Stopwatch timestamp.</summary>
    long LocalDeadline(uint ownerClockDeadline);
}

/// <summary>Handles the partner registered for the hosts whose commands it relays here.</summary>
public sealed class RelayHostRegistry
{
    private readonly ConcurrentDictionary<uint, RelayBinding> _bindings = new();
    private int _next;

    public IPartnerClock? Clock { get; set; }

    public RelayBinding Register(Controller association, HostState host)
    {
        uint handle = (uint)Interlocked.Increment(ref _next);
        var b = new RelayBinding(handle, host, association);
        _bindings[handle] = b;
        host.CurrentRelayBinding = b;
        return b;
    }

    public RelayBinding? Find(uint handle) => _bindings.TryGetValue(handle, out RelayBinding? b) ? b : null;

    /// <summary>Forgets the handles of an association that ended.</summary>
    public void RemoveAssociation(Controller association)
    {
        foreach (var kv in _bindings)
            if (kv.Value.Association == association) _bindings.TryRemove(kv.Key, out _);
    }

    /// <summary>A relayed command's deadline (0: no cluster, no deadline).</summary>
    public long LocalDeadline(uint ownerClockDeadline) => Clock?.LocalDeadline(ownerClockDeadline) ?? 0;
}
