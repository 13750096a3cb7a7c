using System.Net;

namespace StorageNode.Target;

/// <summary>
/// A fabric transport as the target sees it — SPDK's <c>spdk_nvmf_transport_ops</c>, Linux's <c>nvmet_fabrics_ops</c>:
/// its name and TRTYPE, what it sets in Identify Controller and in a discovery log entry, and listening. NVMe/TCP and
/// NVMe/RDMA (<c>Transport/</c>) implement it; nothing in <c>Target/</c> names either.
/// </summary>
public interface INvmfTransport : IDisposable
{
    /// <summary>The name in the configuration (<c>Listeners:N:Transport</c>) and, in upper case, the RPC's <c>trtype</c>.</summary>
    string Name { get; }

    /// <summary>TRTYPE of the discovery log entries and error log entries of its queues.</summary>
    byte TrType { get; }

    /// <summary>The SGL support bits it adds to Identify Controller's SGLS (NVMe/RDMA: keyed SGL data blocks).</summary>
    uint SglSupport { get; }

    /// <summary>Writes a discovery log entry's transport specific address subtype (TSAS, 256 bytes, zero on entry).</summary>
    void WriteTsas(Span<byte> tsas);

    /// <summary>Binds a listener and starts serving it; the bound endpoint (port 0 picks one).</summary>
    IPEndPoint Listen(ListenAddress address);
}

/// <summary>
/// A listener to open: where, its port ID in the discovery log, the address advertised there (null: the bound one), its
/// role in a pair and, for NVMe/RDMA, the local ACK timeout exponent of accepted queue pairs (0: rdma_cm's default).
/// </summary>
public sealed record ListenAddress(IPEndPoint Endpoint, ushort PortId, string? AdvertiseAddress = null, ListenerRole Role = ListenerRole.Combined,
    int RdmaAckTimeout = 0);
