using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using StorageNode.Config;

namespace StorageNode.Pair;

/// <summary>What this node knows of its partner.</summary>
public enum PartnerStatus
{
    /// <summary>Not heard from on either channel yet.</summary>
    Unknown,
    /// <summary>Interconnect up: the partner's groups are reachable through the proxy.</summary>
    Healthy,
    /// <summary>The interconnect is down but the partner answers on the heartbeat channel (link dead).</summary>
    InterconnectDown,
    /// <summary>Silent on both channels (partner dead).</summary>
    PartnerDown,
    /// <summary>The partner's configuration disagrees with this node's: no pairing.</summary>
    Refused,
}

/// <summary>
/// Membership: the second heartbeat channel (UDP datagrams between the <c>Cluster:Heartbeat</c> endpoints), the
/// partner's incarnation, and the partner's status from both channels. A datagram counts only when it comes from the
/// partner's configured heartbeat endpoint and names this cluster and the partner; anything else is ignored and
/// logged (at most every 10 s). A change of the partner's incarnation means it restarted.
/// </summary>
public sealed class Membership : IDisposable
{
    private static readonly long UnexpectedLogTicks = 10 * Stopwatch.Frequency;
    private readonly ClusterConfig _cfg;
    private readonly ILogger _log;
    private readonly Socket _udp;
    private readonly Thread _thread;
    private readonly Thread _sender;
    private readonly long _incarnation;
    private volatile bool _stop;
    private volatile bool _silenced;
    private long _lastHeard;
    private long _lastUnexpectedLog;
    private long _partnerIncarnation;

    public PartnerStatus Status { get; private set; } = PartnerStatus.Unknown;
    public string? RefusedReason { get; private set; }
    /// <summary>The partner's incarnation as last heard (0: not yet).</summary>
    public long PartnerIncarnation => Interlocked.Read(ref _partnerIncarnation);
    /// <summary>Datagrams ignored because of their sender or content.</summary>
    public long Ignored;

    /// <summary>Raised (any thread) when the partner's incarnation changes: old incarnation, new one.</summary>
    public event Action<long, long>? PartnerRestarted;

    public Membership(ClusterConfig cfg, long incarnation, ILogger log)
    {
        _cfg = cfg;
        _incarnation = incarnation;
        _log = log;
        _udp = new Socket(cfg.Heartbeat.AddressFamily, SocketType.Dgram, ProtocolType.Udp) { ReceiveTimeout = 200 };
        _thread = new Thread(Receive) { IsBackground = true, Name = $"heartbeat {cfg.LocalNode}" };
        _sender = new Thread(Send) { IsBackground = true, Name = $"heartbeat send {cfg.LocalNode}" };
    }

    public void Start()
    {
        _udp.Bind(_cfg.Heartbeat);
        _thread.Start();
        _sender.Start();
    }

    /// <summary>
    /// Sends a datagram every heartbeat interval, on a thread of its own: nothing the pair's control thread waits for
    /// (an interconnect heartbeat or registration the partner is slow to answer, a reconnect) silences this channel, so
    /// a slow interconnect is never taken for a dead node.
    /// </summary>
    private void Send()
    {
        while (!_stop)
        {
            if (Status != PartnerStatus.Refused) Beat();
            Thread.Sleep(_cfg.HeartbeatInterval);
        }
    }

    /// <summary>Test hook: stops (or, <paramref name="silenced"/> false, resumes) sending and hearing on the heartbeat channel (a dead partner, seen from the other node).</summary>
    public void Silence(bool silenced = true) => _silenced = silenced;

    private byte[] Datagram() => Encoding.UTF8.GetBytes(FormattableString.Invariant($"SNHB1 {_cfg.Name} {_cfg.LocalNode} {_incarnation}"));

    /// <summary>Sends one heartbeat datagram.</summary>
    private void Beat()
    {
        if (_silenced) return;
        try { _udp.SendTo(Datagram(), _cfg.PartnerHeartbeat); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { /* the partner's port may not exist yet */ }
    }

    private void Receive()
    {
        var buf = new byte[256];
        string expect = $"SNHB1 {_cfg.Name} {_cfg.Partner} ";
        while (!_stop)
        {
            try
            {
                EndPoint from = new IPEndPoint(_cfg.Heartbeat.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
                int n = _udp.ReceiveFrom(buf, ref from);
                if (n <= 0 || _silenced) continue;
                string text = Encoding.UTF8.GetString(buf, 0, n);
                if (!from.Equals(_cfg.PartnerHeartbeat) || !text.StartsWith(expect, StringComparison.Ordinal)
                    || !long.TryParse(text.AsSpan(expect.Length), NumberStyles.None, CultureInfo.InvariantCulture, out long incarnation) || incarnation == 0)
                {
                    Unexpected(from, text);
                    continue;
                }
                Interlocked.Exchange(ref _lastHeard, Stopwatch.GetTimestamp());
                NoteIncarnation(incarnation);
            }
            catch (SocketException) { }
            catch (ObjectDisposedException) { return; }
        }
    }

    private void Unexpected(EndPoint from, string text)
    {
        Interlocked.Increment(ref Ignored);
        long now = Stopwatch.GetTimestamp();
        long last = Interlocked.Read(ref _lastUnexpectedLog);
        if (last != 0 && now - last < UnexpectedLogTicks) return;
        Interlocked.Exchange(ref _lastUnexpectedLog, now);
        string shown = text.Length > 64 ? text[..64] + "..." : text;
        _log.LogWarning("heartbeat channel: ignored a datagram from {From} ('{Text}'): only {Partner} at {Endpoint} counts", from, shown.ReplaceLineEndings(" "),
            _cfg.Partner, _cfg.PartnerHeartbeat);
    }

    /// <summary>The partner said who it is (heartbeat datagram or interconnect descriptor).</summary>
    public void NoteIncarnation(long incarnation)
    {
        long old = Interlocked.Exchange(ref _partnerIncarnation, incarnation);
        if (old == 0 || old == incarnation) return;
        _log.LogWarning("partner {Partner} restarted (incarnation {Old:x16} -> {New:x16}): what it had in flight before is gone", _cfg.Partner, old, incarnation);
        PartnerRestarted?.Invoke(old, incarnation);
    }

    /// <summary>When the partner's last datagram arrived (Stopwatch ticks; 0: never).</summary>
    public long LastHeardTicks => Interlocked.Read(ref _lastHeard);

    /// <summary>True while datagrams arrive within the heartbeat timeout.</summary>
    public bool PartnerHeard
    {
        get
        {
            long last = Interlocked.Read(ref _lastHeard);
            return last != 0 && Stopwatch.GetElapsedTime(last) < _cfg.HeartbeatTimeout;
        }
    }

    /// <summary>Recomputes the status from both channels and logs a change (control thread). Returns it.</summary>
    public PartnerStatus Update(bool interconnectUp)
    {
        if (Status == PartnerStatus.Refused) return Status;
        bool heard = PartnerHeard;
        PartnerStatus next = interconnectUp ? PartnerStatus.Healthy
            : heard ? PartnerStatus.InterconnectDown
            : Status == PartnerStatus.Unknown ? PartnerStatus.Unknown : PartnerStatus.PartnerDown;
        if (next == Status) return Status;
        PartnerStatus old = Status;
        Status = next;
        switch (next)
        {
            case PartnerStatus.Healthy:
                _log.LogInformation("partner {Partner}: interconnect up (was {Old})", _cfg.Partner, old);
                break;
            case PartnerStatus.InterconnectDown:
                _log.LogWarning("partner {Partner}: interconnect lost, partner alive on the heartbeat channel (link dead)", _cfg.Partner);
                break;
            case PartnerStatus.PartnerDown:
                _log.LogWarning("partner {Partner}: silent on the interconnect and the heartbeat channel (partner dead); reconnecting less often", _cfg.Partner);
                break;
        }
        return Status;
    }

    /// <summary>The partner's configuration disagrees: no pairing from now on. False when already refused.</summary>
    public bool Refuse(string reason)
    {
        if (Status == PartnerStatus.Refused) return false;
        RefusedReason = reason; // first: whoever sees the status reads the reason
        Status = PartnerStatus.Refused;
        _log.LogCritical("partner {Partner} disagrees with this node's configuration: {Reason}", _cfg.Partner, reason);
        return true;
    }

    public void Dispose()
    {
        _stop = true;
        _udp.Close();
        if (_thread.IsAlive) _thread.Join(TimeSpan.FromSeconds(2));
        if (_sender.IsAlive) _sender.Join(TimeSpan.FromSeconds(2));
    }
}
