using System.Net;
using System.Net.Sockets;

namespace StorageNode.Interop;

/// <summary>
/// Socket set-up on raw file descriptors. The data plane owns descriptors directly (non-blocking
/// recv / sendmsg from its poll loop) instead of going through System.Net.Sockets.
/// </summary>
public static unsafe class NativeSocket
{
    public static int CreateListener(IPEndPoint endpoint, int backlog = 128)
    {
        int family = endpoint.AddressFamily == AddressFamily.InterNetworkV6 ? Libc.AF_INET6 : Libc.AF_INET;
        int fd = Libc.Socket(family, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0) throw Error("socket");
        try
        {
            int one = 1;
            Check(Libc.SetSockOpt(fd, Libc.SOL_SOCKET, Libc.SO_REUSEADDR, &one, sizeof(int)), "setsockopt(SO_REUSEADDR)");
            WithSockAddr(endpoint, (addr, len) => Check(Libc.Bind(fd, addr, len), $"bind {endpoint}"));
            Check(Libc.Listen(fd, backlog), "listen");
            return fd;
        }
        catch
        {
            Libc.Close(fd);
            throw;
        }
    }

    /// <summary>Accepts one connection as a non-blocking, TCP_NODELAY socket; -1 when none is pending.</summary>
    public static int Accept(int listenFd, out IPEndPoint? peer)
    {
        byte* buf = stackalloc byte[128];
        uint len = 128;
        int fd = Libc.Accept4(listenFd, buf, &len, Libc.SOCK_NONBLOCK | Libc.SOCK_CLOEXEC);
        if (fd < 0)
        {
            peer = null;
            int e = Libc.Errno;
            if (e == Libc.EAGAIN || e == Libc.EINTR) return -1;
            throw new SocketException(e);
        }
        peer = ParseSockAddr(buf);
        SetNoDelay(fd);
        return fd;
    }

    /// <summary>
    /// Connects a blocking-free socket within the timeout; the returned socket is non-blocking. With
    /// <paramref name="localAddress"/>, the connection leaves from that address (any port).
    /// </summary>
    public static int Connect(IPEndPoint endpoint, TimeSpan timeout, IPAddress? localAddress = null)
    {
        int family = endpoint.AddressFamily == AddressFamily.InterNetworkV6 ? Libc.AF_INET6 : Libc.AF_INET;
        int fd = Libc.Socket(family, Libc.SOCK_STREAM | Libc.SOCK_NONBLOCK | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0) throw Error("socket");
        try
        {
            if (localAddress != null)
            {
                var local = new IPEndPoint(localAddress, 0);
                WithSockAddr(local, (addr, len) => Check(Libc.Bind(fd, addr, len), $"bind {local}"));
            }
            int rc = 0, err = 0;
            WithSockAddr(endpoint, (addr, len) => { rc = Libc.Connect(fd, addr, len); err = rc < 0 ? Libc.Errno : 0; });
            if (rc < 0 && err != Libc.EINPROGRESS) throw new SocketException(err);
            if (rc < 0)
            {
                Libc.PollFd p = new() { Fd = fd, Events = Libc.POLLOUT };
                int n = Libc.Poll(&p, 1, (int)timeout.TotalMilliseconds);
                if (n == 0) throw new TimeoutException($"connect to {endpoint} timed out after {timeout.TotalSeconds:0.#} s");
                if (n < 0) throw Error("poll");
                int soerr = 0;
                uint sl = sizeof(int);
                Check(Libc.GetSockOpt(fd, Libc.SOL_SOCKET, Libc.SO_ERROR, &soerr, &sl), "getsockopt(SO_ERROR)");
                if (soerr != 0) throw new SocketException(soerr);
            }
            SetNoDelay(fd);
            return fd;
        }
        catch
        {
            Libc.Close(fd);
            throw;
        }
    }

    public static void SetNoDelay(int fd)
    {
        int one = 1;
        Libc.SetSockOpt(fd, Libc.IPPROTO_TCP, Libc.TCP_NODELAY, &one, sizeof(int));
    }

    /// <summary>
    /// TCP keep-alive: probes after <paramref name="idleSeconds"/> idle, every <paramref name="intervalSeconds"/>,
    /// <paramref name="probes"/> of them; TCP_USER_TIMEOUT <paramref name="userTimeoutMs"/>. Returns 0, or the errno of
    /// the first option that failed.
    /// </summary>
    public static int SetKeepAlive(int fd, int idleSeconds, int intervalSeconds, int probes, int userTimeoutMs)
    {
        int one = 1;
        // The timings first: SO_KEEPALIVE arms the timer with whatever idle time is set then.
        if (Libc.SetSockOpt(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPIDLE, &idleSeconds, sizeof(int)) < 0
            || Libc.SetSockOpt(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPINTVL, &intervalSeconds, sizeof(int)) < 0
            || Libc.SetSockOpt(fd, Libc.IPPROTO_TCP, Libc.TCP_KEEPCNT, &probes, sizeof(int)) < 0
            || Libc.SetSockOpt(fd, Libc.IPPROTO_TCP, Libc.TCP_USER_TIMEOUT, &userTimeoutMs, sizeof(int)) < 0
            || Libc.SetSockOpt(fd, Libc.SOL_SOCKET, Libc.SO_KEEPALIVE, &one, sizeof(int)) < 0)
            return Libc.Errno;
        return 0;
    }

    public static void SetBufferSizes(int fd, int bytes)
    {
        Libc.SetSockOpt(fd, Libc.SOL_SOCKET, Libc.SO_SNDBUF, &bytes, sizeof(int));
        Libc.SetSockOpt(fd, Libc.SOL_SOCKET, Libc.SO_RCVBUF, &bytes, sizeof(int));
    }

    /// <summary>Closes with an RST instead of a FIN (used to drop a misbehaving peer at once).</summary>
    public static void Abort(int fd)
    {
        Libc.Linger l = new() { OnOff = 1, Seconds = 0 };
        Libc.SetSockOpt(fd, Libc.SOL_SOCKET, Libc.SO_LINGER, &l, (uint)sizeof(Libc.Linger));
        Libc.Close(fd);
    }

    public static IPEndPoint? LocalEndPoint(int fd)
    {
        byte* buf = stackalloc byte[128];
        uint len = 128;
        return Libc.GetSockName(fd, buf, &len) == 0 ? ParseSockAddr(buf) : null;
    }

    public static IPEndPoint? RemoteEndPoint(int fd)
    {
        byte* buf = stackalloc byte[128];
        uint len = 128;
        return Libc.GetPeerName(fd, buf, &len) == 0 ? ParseSockAddr(buf) : null;
    }

    private delegate void SockAddrAction(void* addr, uint len);

    private static void WithSockAddr(IPEndPoint ep, SockAddrAction action)
    {
        if (ep.AddressFamily == AddressFamily.InterNetworkV6)
        {
            Libc.SockAddrIn6 sa = default;
            sa.Family = Libc.AF_INET6;
            sa.Port = Libc.HostToNetwork((ushort)ep.Port);
            ep.Address.TryWriteBytes(new Span<byte>(sa.Addr, 16), out _);
            sa.ScopeId = (uint)ep.Address.ScopeId;
            action(&sa, (uint)sizeof(Libc.SockAddrIn6));
        }
        else
        {
            Libc.SockAddrIn sa = default;
            sa.Family = Libc.AF_INET;
            sa.Port = Libc.HostToNetwork((ushort)ep.Port);
            uint a = 0;
            ep.Address.TryWriteBytes(new Span<byte>(&a, 4), out _);
            sa.Addr = a;
            action(&sa, (uint)sizeof(Libc.SockAddrIn));
        }
    }

    private static IPEndPoint? ParseSockAddr(byte* buf)
    {
        ushort family = *(ushort*)buf;
        if (family == Libc.AF_INET)
        {
            var sa = (Libc.SockAddrIn*)buf;
            return new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(&sa->Addr, 4)), Libc.HostToNetwork(sa->Port));
        }
        if (family == Libc.AF_INET6)
        {
            var sa = (Libc.SockAddrIn6*)buf;
            return new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(sa->Addr, 16), sa->ScopeId), Libc.HostToNetwork(sa->Port));
        }
        return null;
    }

    private static void Check(int rc, string what)
    {
        if (rc < 0) throw Error(what);
    }

    private static SocketException Error(string what)
    {
        int e = Libc.Errno;
        return new SocketException(e, $"{what}: {Libc.StrError(e)}");
    }
}
