namespace StorageNode.Target;

/// <summary>What a listener serves in a pair (docs/configuration.md, "Listeners").</summary>
public enum ListenerRole
{
    /// <summary>Local ANA groups optimized, partner groups non-optimized through the proxy.</summary>
    Combined,
    /// <summary>Local ANA groups only; partner groups are inaccessible on this port.</summary>
    Direct,
    /// <summary>A proxy port: partner groups non-optimized through the proxy; local groups inaccessible here.</summary>
    Proxy,
    /// <summary>The cluster interconnect (internal; never in the discovery log).</summary>
    Interconnect,
}
