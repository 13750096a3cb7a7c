using StorageNode.Transport.Rdma;
using StorageNode.Transport.Tcp;

namespace StorageNode.Transport;

/// <summary>The fabric transports this node has, by the name a listener's configuration gives (<c>Listeners:N:Transport</c>).</summary>
public static class Transports
{
    public static IReadOnlyList<string> Names { get; } = [TcpTransport.TransportName, RdmaTransport.TransportName];

    /// <summary>Why the transport named <paramref name="name"/> cannot run on this machine; null when it can.</summary>
    public static string? UnavailableReason(string name) => name == RdmaTransport.TransportName ? StorageNode.Rdma.RdmaDevices.UnavailableReason() : null;
}
