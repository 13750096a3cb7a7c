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

/// <summary>Converts relay deadlines between this node's clock and the partner's.</summary>
public interface IPartnerClock
{
    /// <summary>A deadline the partner encoded in its clock, as a local Stopwatch timestamp (0: unknown).</summary>
    long LocalDeadline(uint partnerCode);
}

/// <summary>Handles the partner registered for the hosts whose commands it relays here.</summary>
public sealed class RelayHostRegistry
{
    private readonly ConcurrentDictionary<uint, RelayBinding> _bindings = new();
    private int _next;

    public IPartnerClock? Clock { get; set; }

    /// <summary>Fallback relay lifetime when the partner's clock is not known yet.</summary>
    public TimeSpan FallbackRelayTimeout { get; set; } = TimeSpan.FromSeconds(5);

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

    public long LocalDeadline(uint partnerCode)
    {
        long d = Clock?.LocalDeadline(partnerCode) ?? 0;
        return d != 0 ? d : Stopwatch.GetTimestamp() + (long)(FallbackRelayTimeout.TotalSeconds * Stopwatch.Frequency);
    }
}
