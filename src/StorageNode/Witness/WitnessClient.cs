using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Pair;

namespace StorageNode.Witness;

/// <summary>
/// A node's side of the witness (<c>Cluster:Witness</c>; docs/ha.md, "The witness"): renews the lease of every group the
/// node serves as its owner every heartbeat interval, on a thread of its own (nothing the pair's control thread waits
/// for delays a renewal), and asks the witness on behalf of the pair (<see cref="Ask"/>). A lease counts on this node
/// from the send time of the request the witness answered, for the lease the witness gave less a margin (rate drift
/// between the clocks, and a heartbeat interval for whoever checks it): it ends here before the witness lets the
/// partner have the group. Every answer is also handed to <see cref="Answered"/> (the witness's word on a group's
/// owner), on the receiving thread.
/// </summary>
public sealed class WitnessClient : IDisposable
{
    private readonly ClusterConfig _cfg;
    private readonly IPEndPoint _witness;
    private readonly ILogger _log;
    private readonly Socket _udp;
    private readonly Thread _receiver;
    private readonly Thread _renewer;
    private readonly Func<IReadOnlyList<(string Nqn, uint Group, ulong Term)>> _owned;
    private readonly ConcurrentDictionary<ulong, Pending> _pending = new();
    private readonly ConcurrentDictionary<(string Nqn, uint Group), Lease> _leases = new();
    private long _nextId = Random.Shared.NextInt64(1, long.MaxValue / 2);
    private long _lastAnswer;
    private int _shortLeaseSaid;
    private volatile bool _stop;
    private volatile bool _silenced;

    private sealed record Pending(WitnessRequest Request, long SentTicks, TaskCompletionSource<WitnessAnswer>? Waiter);

    /// <summary>A lease this node holds: at <see cref="Term"/>, until <see cref="UntilTicks"/> (this node's clock).</summary>
    public readonly record struct Lease(ulong Term, long UntilTicks);

    /// <summary>An answer from the witness (receiving thread): the group, the request it answers, the answer.</summary>
    public event Action<WitnessKey, WitnessRequest, WitnessAnswer>? Answered;

    public WitnessClient(ClusterConfig cfg, Func<IReadOnlyList<(string Nqn, uint Group, ulong Term)>> owned, ILogger log)
    {
        _cfg = cfg;
        _witness = cfg.Witness ?? throw new ArgumentException("no Cluster:Witness", nameof(cfg));
        _owned = owned;
        _log = log;
        _udp = new Socket(_witness.AddressFamily, SocketType.Dgram, ProtocolType.Udp) { ReceiveTimeout = 200 };
        _receiver = new Thread(Receive) { IsBackground = true, Name = $"witness {cfg.LocalNode}" };
        _renewer = new Thread(Renew) { IsBackground = true, Name = $"witness renew {cfg.LocalNode}" };
    }

    public void Start()
    {
        // From the heartbeat channel's address: the witness sees the node where its partner's datagrams come from.
        _udp.Bind(new IPEndPoint(_cfg.Heartbeat.AddressFamily == _witness.AddressFamily ? _cfg.Heartbeat.Address : _witness.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0));
        _receiver.Start();
        _renewer.Start();
    }

    public IPEndPoint Endpoint => _witness;

    /// <summary>When the witness last answered (Stopwatch ticks; 0: never).</summary>
    public long LastAnswerTicks => Interlocked.Read(ref _lastAnswer);

    /// <summary>Test hook: nothing is sent to the witness or taken from it (a witness this node cannot reach).</summary>
    public bool Silenced
    {
        get => _silenced;
        set => _silenced = value;
    }

    /// <summary>The margin a lease loses on this node: a twentieth of it and a millisecond (rate drift), and a heartbeat interval.</summary>
    public long MarginTicks(uint leaseMs)
    {
        long lease = leaseMs * Stopwatch.Frequency / 1000;
        return Support.LeaseMargin.Ticks(lease) + (long)(_cfg.HeartbeatInterval.TotalSeconds * Stopwatch.Frequency);
    }

    /// <summary>The lease this node holds on the group at <paramref name="term"/> now.</summary>
    public bool LeaseHeld(string nqn, uint group, ulong term, long now)
        => _leases.TryGetValue((nqn, group), out Lease l) && l.Term == term && now < l.UntilTicks;

    /// <summary>The lease last granted on the group (default: none).</summary>
    public Lease LeaseOf(string nqn, uint group) => _leases.TryGetValue((nqn, group), out Lease l) ? l : default;

    private WitnessRequest Request(WitnessVerb verb, string nqn, uint group, ulong term, ulong arg)
        => new((ulong)Interlocked.Increment(ref _nextId), verb, new WitnessKey(_cfg.Name, nqn, group), _cfg.LocalNode, term, arg);

    private void Send(Pending p)
    {
        if (_silenced) return;
        try { _udp.SendTo(p.Request.Encode(), _witness); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { /* asked again */ }
    }

    /// <summary>
    /// Asks the witness and waits for its answer, asking again every heartbeat interval (each time as a new request, so
    /// that a lease counts from the send time of the one answered), up to <paramref name="timeout"/>. Null: no answer.
    /// </summary>
    public WitnessAnswer? Ask(WitnessVerb verb, string nqn, uint group, ulong term, ulong arg, TimeSpan timeout)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        var waiter = new TaskCompletionSource<WitnessAnswer>(TaskCreationOptions.RunContinuationsAsynchronously);
        var ids = new List<ulong>();
        try
        {
            while (!_stop)
            {
                var p = new Pending(Request(verb, nqn, group, term, arg), Stopwatch.GetTimestamp(), waiter);
                _pending[p.Request.Id] = p;
                ids.Add(p.Request.Id);
                Send(p);
                long left = deadline - Stopwatch.GetTimestamp();
                if (left <= 0) return null;
                TimeSpan wait = TimeSpan.FromTicks(Math.Min(_cfg.HeartbeatInterval.Ticks, left * TimeSpan.TicksPerSecond / Stopwatch.Frequency));
                if (waiter.Task.Wait(wait)) return waiter.Task.Result;
                if (Stopwatch.GetTimestamp() >= deadline) return null;
            }
            return null;
        }
        finally
        {
            foreach (ulong id in ids) _pending.TryRemove(id, out _);
        }
    }

    private void Renew()
    {
        long stale = 5 * Stopwatch.Frequency;
        while (!_stop)
        {
            long now = Stopwatch.GetTimestamp();
            foreach ((string nqn, uint group, ulong term) in _owned())
            {
                var p = new Pending(Request(WitnessVerb.Renew, nqn, group, term, 0), now, null);
                _pending[p.Request.Id] = p;
                Send(p);
            }
            // Renewals never answered (the witness away) are forgotten after a while.
            foreach ((ulong id, Pending p) in _pending)
                if (p.Waiter == null && now - p.SentTicks > stale) _pending.TryRemove(id, out _);
            Thread.Sleep(_cfg.HeartbeatInterval);
        }
    }

    private void Receive()
    {
        var buf = new byte[WitnessProtocol.MaxBytes + 1];
        while (!_stop)
        {
            EndPoint from = new IPEndPoint(_witness.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
            int n;
            try { n = _udp.ReceiveFrom(buf, ref from); }
            catch (SocketException) { continue; }
            catch (ObjectDisposedException) { return; }
            if (_silenced || !from.Equals(_witness) || !WitnessProtocol.TryParseAnswer(buf.AsSpan(0, n), out WitnessAnswer a)) continue;
            if (!_pending.TryRemove(a.Id, out Pending? p)) continue; // answered already, or forgotten
            Interlocked.Exchange(ref _lastAnswer, Stopwatch.GetTimestamp());
            WitnessRequest r = p.Request;
            if (a.Result == WitnessResult.Ok && a.LeaseMs > 0 && a.Owner == _cfg.LocalNode && a.Term == r.Term)
            {
                long until = p.SentTicks + a.LeaseMs * Stopwatch.Frequency / 1000 - MarginTicks(a.LeaseMs);
                // A lease that does not outlast the next renewal (a heartbeat interval) lapses between renewals: the
                // group would be fenced whenever the interconnect is down.
                if (until - p.SentTicks <= (long)(_cfg.HeartbeatInterval.TotalSeconds * Stopwatch.Frequency) && Interlocked.Exchange(ref _shortLeaseSaid, 1) == 0)
                    _log.LogError("the witness's lease ({Lease} ms) is too short for this node's heartbeat interval ({Interval} ms): it lapses between renewals; give the witness a longer Witness:LeaseMs (more than the heartbeat timeout)",
                        a.LeaseMs, _cfg.HeartbeatInterval.TotalMilliseconds);
                _leases.AddOrUpdate((r.Key.Nqn, r.Key.Group), new Lease(r.Term, until),
                    (_, old) => old.Term > r.Term || (old.Term == r.Term && old.UntilTicks >= until) ? old : new Lease(r.Term, until));
            }
            try { Answered?.Invoke(r.Key, r, a); }
            catch (Exception e) { _log.LogError(e, "witness: handling an answer for {Key} failed", r.Key); }
            p.Waiter?.TrySetResult(a);
        }
    }

    public void Dispose()
    {
        _stop = true;
        _udp.Close();
        if (_receiver.IsAlive) _receiver.Join(TimeSpan.FromSeconds(2));
        if (_renewer.IsAlive) _renewer.Join(TimeSpan.FromSeconds(2));
    }
}
