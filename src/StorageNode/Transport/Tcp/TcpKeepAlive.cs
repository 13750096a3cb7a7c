using StorageNode.Interop;

namespace StorageNode.Transport.Tcp;

/// <summary>
/// TCP keep-alive of an accepted NVMe/TCP connection (<c>Target:TcpKeepAliveSeconds</c>): a host that vanishes without
/// closing its connection (a partition, a crash with the link down) would otherwise keep a controller with KATO 0
/// forever. After <see cref="IdleSeconds"/> without traffic the kernel probes every <see cref="IntervalSeconds"/>;
/// after <see cref="Probes"/> unanswered probes it resets the connection, which then closes through the receive-error
/// path like any other (the controller goes with its admin queue). <see cref="UserTimeoutMs"/> (TCP_USER_TIMEOUT) ends
/// the connection the same way when data it sent stays unacknowledged that long.
/// </summary>
public readonly record struct TcpKeepAlive(int IdleSeconds, int IntervalSeconds, int Probes, int UserTimeoutMs)
{
    public const int ProbeIntervalSeconds = 5;
    public const int ProbeCount = 3;

    /// <summary>The settings for <c>Target:TcpKeepAliveSeconds</c> = <paramref name="idleSeconds"/>; null when 0 (off).</summary>
    public static TcpKeepAlive? For(int idleSeconds)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(idleSeconds);
        if (idleSeconds == 0) return null;
        return new TcpKeepAlive(idleSeconds, ProbeIntervalSeconds, ProbeCount, (idleSeconds + ProbeCount * ProbeIntervalSeconds) * 1000);
    }

    /// <summary>Applies the settings to a connected socket; 0, or the errno of the first option that failed.</summary>
    public int ApplyTo(int fd) => NativeSocket.SetKeepAlive(fd, IdleSeconds, IntervalSeconds, Probes, UserTimeoutMs);

    public override string ToString() =>
        $"keep-alive after {IdleSeconds} s idle, {Probes} probes {IntervalSeconds} s apart, user timeout {UserTimeoutMs} ms";
}
