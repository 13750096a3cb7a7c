namespace StorageNode.Transport.Tcp;

/// <summary>
/// The NVMe/TCP transport's own options (SPDK's <c>nvmf_create_transport -t TCP</c> options; in the configuration under
/// <c>Target:</c>, docs/configuration.md).
/// </summary>
public sealed record TcpTransportOptions
{
    /// <summary>MAXH2CDATA: the largest H2CData PDU a host may send (ICResp).</summary>
    public uint MaxH2CDataSize { get; init; } = 128 * 1024;
    /// <summary>Upper bound on R2Ts outstanding per command (the host's MAXR2T may lower it).</summary>
    public int MaxR2TPerCommand { get; init; } = 4;
    /// <summary>Largest C2HData PDU sent; a read is split into PDUs of at most this size.</summary>
    public uint MaxC2HDataSize { get; init; } = 128 * 1024;
    /// <summary>Send the last C2HData PDU of a read with the SUCCESS flag instead of a response capsule.</summary>
    public bool C2HSuccess { get; init; } = true;
    /// <summary>Receive buffer per connection.</summary>
    public int ReceiveBufferSize { get; init; } = 128 * 1024;
    /// <summary>
    /// Idle seconds before TCP keep-alive probes an accepted connection whose host went silent (0: off); see
    /// <see cref="TcpKeepAlive"/>.
    /// </summary>
    public int KeepAliveSeconds { get; init; } = 30;
}
