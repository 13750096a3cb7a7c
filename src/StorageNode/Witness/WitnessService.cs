using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Support;

namespace StorageNode.Witness;

/// <summary>
/// <c>storagenode witness</c> (docs/ha.md, "The witness"): answers the pairs' nodes on one UDP endpoint, running
/// <see cref="WitnessState"/> on one thread; a change of a group's record is kept durably
/// (<c>STATE-DIRECTORY/witness.state</c>, <see cref="StateFile"/>) before its answer goes, and a request whose change
/// cannot be kept is refused. A datagram that is not a request is ignored and logged (at most every 10 s).
/// </summary>
public sealed class WitnessService : IDisposable
{
    private static readonly long UnexpectedLogTicks = 10 * Stopwatch.Frequency;
    private readonly WitnessConfig _cfg;
    private readonly ILogger _log;
    private readonly Socket _udp;
    private readonly Thread _thread;
    private readonly WitnessState _state;
    private readonly string _path;
    private volatile bool _stop;
    private long _lastUnexpectedLog;

    /// <summary>Datagrams ignored (not a witness request).</summary>
    public long Ignored;

    /// <summary>Throws <see cref="InvalidDataException"/> for a state file that is not one, <see cref="IOException"/> when it cannot be read.</summary>
    public WitnessService(WitnessConfig cfg, ILogger log)
    {
        _cfg = cfg;
        _log = log;
        Dictionary<WitnessKey, WitnessRecord> kept = [];
        Directory.CreateDirectory(cfg.StateDirectory);
        _path = Path.Combine(cfg.StateDirectory, "witness.state");
        if (File.Exists(_path)) kept = WitnessState.Parse(File.ReadAllText(_path), _path);
        _state = new WitnessState(cfg.Lease, Stopwatch.GetTimestamp(), Stopwatch.Frequency, kept);
        _udp = new Socket(cfg.Listen.AddressFamily, SocketType.Dgram, ProtocolType.Udp) { ReceiveTimeout = 200 };
        _thread = new Thread(Run) { IsBackground = true, Name = "witness" };
    }

    /// <summary>The endpoint it answers on (the configured one; its port once bound when 0 was configured).</summary>
    public IPEndPoint Endpoint => (IPEndPoint)_udp.LocalEndPoint!;

    public void Start()
    {
        _udp.Bind(_cfg.Listen);
        _log.LogInformation("witness on udp {Endpoint}: lease {Lease} ms, {Groups} group(s) kept in {Path}", Endpoint, _state.LeaseMs, _state.Records.Count, _path);
        _thread.Start();
    }

    private void Run()
    {
        var buf = new byte[WitnessProtocol.MaxBytes + 1];
        while (!_stop)
        {
            EndPoint from = new IPEndPoint(_cfg.Listen.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
            int n;
            try { n = _udp.ReceiveFrom(buf, ref from); }
            catch (SocketException) { continue; }
            catch (ObjectDisposedException) { return; }
            if (!WitnessProtocol.TryParseRequest(buf.AsSpan(0, n), out WitnessRequest request, out string error))
            {
                Unexpected(from, error);
                continue;
            }
            WitnessAnswer answer = Handle(request);
            try { _udp.SendTo(answer.Encode(), from); }
            catch (SocketException) { /* the node asks again */ }
            catch (ObjectDisposedException) { return; }
        }
    }

    /// <summary>Decides one request, keeps what it changes, and makes it so; returns the answer.</summary>
    internal WitnessAnswer Handle(in WitnessRequest request)
    {
        long now = Stopwatch.GetTimestamp();
        WitnessDecision d = _state.Decide(request, now);
        if (d.Keep != null)
        {
            var next = new Dictionary<WitnessKey, WitnessRecord>(_state.Records) { [d.Key] = d.Keep };
            try { StateFile.Replace(_path, System.Text.Encoding.UTF8.GetBytes(WitnessState.Format(next))); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                _log.LogError("{Key}: cannot keep the record ({Error}): the request is refused", d.Key, e.Message);
                return d.Answer with { Result = WitnessResult.Refused, LeaseMs = 0, Reason = "the witness cannot keep its record: " + e.Message.ReplaceLineEndings(" ") };
            }
        }
        _state.Apply(d, now);
        if (d.Log != null) _log.LogWarning("{Change}", d.Log);
        else if (d.Answer.Result == WitnessResult.Refused && request.Verb == WitnessVerb.Take)
            _log.LogDebug("{Key}: not granted to {Node} at term {Term}: {Reason}", d.Key, request.Node, request.Term, d.Answer.Reason);
        return d.Answer;
    }

    private void Unexpected(EndPoint from, string error)
    {
        Interlocked.Increment(ref Ignored);
        long now = Stopwatch.GetTimestamp();
        if (_lastUnexpectedLog != 0 && now - _lastUnexpectedLog < UnexpectedLogTicks) return;
        _lastUnexpectedLog = now;
        _log.LogWarning("ignored a datagram from {From}: {Error}", from, error);
    }

    public void Dispose()
    {
        _stop = true;
        _udp.Close();
        if (_thread.IsAlive) _thread.Join(TimeSpan.FromSeconds(2));
    }
}
