using System.Net;
using System.Net.Sockets;

namespace StorageNode.Testing;

/// <summary>
/// A UDP relay on loopback for fault injection, between side A and side B: what arrives at <see cref="ForA"/> (sent by
/// side A) goes out of <see cref="ForB"/> to side B's endpoint, and what arrives at <see cref="ForB"/> goes out of
/// <see cref="ForA"/> to side A's endpoint (given, or the last one heard from: a client on an ephemeral port). Each
/// side sees the relay as its peer, at a fixed address. <see cref="Blocked"/> drops everything (a partition). Threads of
/// its own, never the thread pool.
/// </summary>
public sealed class UdpRelay : IDisposable
{
    private readonly Socket _forA, _forB;
    private readonly IPEndPoint _b;
    private IPEndPoint? _a;
    private readonly bool _learn;
    private readonly Thread _fromA, _fromB;
    private volatile bool _stop;

    public volatile bool Blocked;
    public long Dropped;

    public IPEndPoint ForA => (IPEndPoint)_forA.LocalEndPoint!;
    public IPEndPoint ForB => (IPEndPoint)_forB.LocalEndPoint!;

    /// <param name="a">Side A's endpoint; null: the last one heard from at <see cref="ForA"/>.</param>
    /// <param name="b">Side B's endpoint.</param>
    public UdpRelay(IPEndPoint? a, IPEndPoint b)
    {
        _a = a;
        _learn = a == null;
        _b = b;
        _forA = Bound();
        _forB = Bound();
        _fromA = new Thread(() => Pump(_forA, _forB, fromA: true)) { IsBackground = true, Name = "udp relay a->b" };
        _fromB = new Thread(() => Pump(_forB, _forA, fromA: false)) { IsBackground = true, Name = "udp relay b->a" };
        _fromA.Start();
        _fromB.Start();
    }

    private static Socket Bound()
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp) { ReceiveTimeout = 200 };
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return s;
    }

    private void Pump(Socket from, Socket to, bool fromA)
    {
        var buf = new byte[65536];
        while (!_stop)
        {
            EndPoint sender = new IPEndPoint(IPAddress.Any, 0);
            int n;
            try { n = from.ReceiveFrom(buf, ref sender); }
            catch (SocketException) { continue; }
            catch (ObjectDisposedException) { return; }
            if (fromA && _learn) Volatile.Write(ref _a, (IPEndPoint)sender);
            IPEndPoint? target = fromA ? _b : Volatile.Read(ref _a);
            if (Blocked || target == null)
            {
                Interlocked.Increment(ref Dropped);
                continue;
            }
            try { to.SendTo(buf.AsSpan(0, n), target); }
            catch (SocketException) { }
            catch (ObjectDisposedException) { return; }
        }
    }

    public void Dispose()
    {
        _stop = true;
        _forA.Close();
        _forB.Close();
        _fromA.Join(TimeSpan.FromSeconds(2));
        _fromB.Join(TimeSpan.FromSeconds(2));
    }
}
