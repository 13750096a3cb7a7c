using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.Logging;
using StorageNode.Interop;
using StorageNode.Reactors;
using StorageNode.Target;
namespace StorageNode.Transport.Tcp;

/// <summary>
/// The NVMe/TCP transport: listeners (an accept thread each, control plane) and the queue pairs, which
/// are handed to reactors round-robin and live there until they close.
/// </summary>
public sealed class TcpTransport : INvmfTransport
{
    public const string TransportName = "tcp";

    private readonly NvmfTarget _target;
    private readonly ILogger _log;
    private readonly List<TcpListenerThread> _listeners = [];
    private readonly QueuePairRegistry<TcpQueuePair> _queues;
    private readonly TcpKeepAlive? _keepAlive;
    private int _keepAliveFailures;
    private int _nextReactor;

    /// <summary>A connection that has not completed Connect within this time is closed.</summary>
    public TimeSpan ConnectTimeout { get => _queues.ConnectTimeout; init => _queues.ConnectTimeout = value; }

    public TcpTransport(NvmfTarget target, TcpTransportOptions? options = null)
    {
        _target = target;
        Options = options ?? new TcpTransportOptions();
        _log = target.LoggerFactory.CreateLogger("tcp");
        _queues = new QueuePairRegistry<TcpQueuePair>(target, TimeSpan.FromSeconds(10));
        _keepAlive = TcpKeepAlive.For(Options.KeepAliveSeconds);
    }

    public TcpTransportOptions Options { get; }

    public string Name => TransportName;
    public byte TrType => Nvme.Spec.Discovery.TrTypeTcp;
    /// <summary>Data in capsules and through R2T/H2CData: no keyed SGLs.</summary>
    public uint SglSupport => 0;

    /// <summary>TSAS of NVMe/TCP: SECTYPE 0 (no security).</summary>
    public void WriteTsas(Span<byte> tsas)
    {
    }

    IPEndPoint INvmfTransport.Listen(ListenAddress a) => Listen(a.Endpoint, a.PortId, a.AdvertiseAddress, a.Role);

    /// <summary>Binds and starts accepting; returns the bound endpoint (port 0 picks a free port).</summary>
    public IPEndPoint Listen(IPEndPoint endpoint, ushort portId, string? advertiseAddress = null, ListenerRole role = ListenerRole.Combined)
    {
        int fd = NativeSocket.CreateListener(endpoint);
        IPEndPoint bound = NativeSocket.LocalEndPoint(fd) ?? endpoint;
        var info = new ListenerInfo(this, advertiseAddress ?? bound.Address.ToString(), bound.Port, portId, role);
        var l = new TcpListenerThread(this, fd, bound, info);
        _listeners.Add(l);
        _target.AddListener(info);
        l.Start();
        _log.LogInformation("listening on {Endpoint} (NVMe/TCP, port id {PortId}, {Role}; {KeepAlive}; at most {Max} connections on the node)", bound, portId,
            role.ToString().ToLowerInvariant(), _keepAlive?.ToString() ?? "no TCP keep-alive", _target.Connections.Max);
        return bound;
    }

    /// <summary>Stops accepting on the listener bound to <paramref name="endpoint"/> (fault injection, shutdown).</summary>
    public void StopListening(IPEndPoint endpoint)
    {
        foreach (TcpListenerThread l in _listeners.ToArray())
        {
            if (!l.Endpoint.Equals(endpoint)) continue;
            l.Stop();
            _listeners.Remove(l);
        }
    }

    /// <summary>Number of live connections (all reactors).</summary>
    public int ConnectionCount => _queues.Count;

    /// <summary>
    /// A socket was accepted (listener thread): at the connection limit it is closed at once; otherwise it gets its
    /// keep-alive and goes to a reactor, holding a slot until its queue pair closes (<see cref="OnQueueClosed"/>).
    /// </summary>
    private void OnAccepted(int fd, IPEndPoint? peer, ListenerInfo listener)
    {
        string peerText = peer?.ToString() ?? "?";
        if (!_target.Connections.TryAcquire("NVMe/TCP", peerText))
        {
            Libc.Close(fd);
            return;
        }
        if (_keepAlive is TcpKeepAlive ka)
        {
            int err = ka.ApplyTo(fd);
            if (err != 0 && Interlocked.Exchange(ref _keepAliveFailures, 1) == 0)
                _log.LogWarning("{Peer}: cannot set TCP keep-alive (Target:TcpKeepAliveSeconds): {Error}; the connection runs without it (logged once)", peerText,
                    Libc.StrError(err));
        }
        Adopt(fd, peerText, listener);
    }

    private void Adopt(int fd, string peerText, ListenerInfo listener)
    {
        Reactor reactor = _target.ReactorFor(listener, ref _nextReactor);
        reactor.Post(() =>
        {
            TcpQueuePair qp;
            try
            {
                qp = new TcpQueuePair(fd, peerText, reactor, _target, listener, this, _log);
            }
            catch (Exception e)
            {
                _log.LogError("{Peer}: cannot set up the connection: {Error}", peerText, e.Message);
                Libc.Close(fd);
                _target.Connections.Release();
                return;
            }
            _queues.Add(qp);
            try
            {
                reactor.Register(qp);
            }
            catch (Exception e)
            {
                _log.LogError("{Peer}: cannot register connection: {Error}", peerText, e.Message);
                qp.Close("registration failed");
            }
        });
    }

    /// <summary>A queue pair closed (its reactor, once): its connection slot is free again.</summary>
    internal void OnQueueClosed(TcpQueuePair qp)
    {
        _queues.Remove(qp);
    }

    public void Dispose()
    {
        foreach (TcpListenerThread l in _listeners) l.Stop();
        _queues.DisconnectAll("node stopping");
    }

    private sealed class TcpListenerThread(TcpTransport owner, int fd, IPEndPoint endpoint, ListenerInfo info)
    {
        public IPEndPoint Endpoint => endpoint;

        private volatile bool _stop;
        private Thread? _running;

        public void Start()
        {
            _running = new Thread(Run) { IsBackground = true, Name = $"accept {endpoint}" };
            _running.Start();
        }

        private unsafe void Run()
        {
            while (!_stop)
            {
                Libc.PollFd p = new() { Fd = fd, Events = Libc.POLLIN };
                int n = Libc.Poll(&p, 1, 200);
                if (n <= 0 || _stop) continue;
                try
                {
                    int cfd = NativeSocket.Accept(fd, out IPEndPoint? peer);
                    if (cfd >= 0) owner.OnAccepted(cfd, peer, info);
                }
                catch (Exception e)
                {
                    owner._log.LogWarning("accept on {Endpoint} failed: {Error}", endpoint, e.Message);
                    Thread.Sleep(10);
                }
            }
        }

        public void Stop()
        {
            _stop = true;
            _running?.Join(TimeSpan.FromSeconds(2));
            Libc.Close(fd);
        }
    }
}
