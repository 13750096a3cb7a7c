using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;
using StorageNode.Interop;
using StorageNode.Rdma;
using static Checks;

// RdmaProbe server|client ADDRESS PORT (and RdmaProbe nvme ADDRESS PORT SUBNQN: NvmeProbe.cs): exercises src/Rdma between two hosts (the rig's two guests, rxe):
// send/receive, RDMA WRITE, RDMA READ, many queue pairs, completion errors after the peer disconnects, and
// no leaked handles. Prints "CHECK name: ok|FAIL ..." lines; exits non-zero on any failure.
return args.Length > 0 && args[0] == "nvme" ? NvmeProbe.Run(args) : Probe.Run(args);

internal static unsafe class Probe
{
    private const int Size = 1 << 20;
    private const int Pings = 1000;
    private const int ManyQps = 16;
    private static readonly TimeSpan T = TimeSpan.FromSeconds(60);

    public static int Run(string[] args)
    {
        if (args.Length < 3) { Console.Error.WriteLine("usage: RdmaProbe server|client ADDRESS PORT"); return 2; }
        return Checks.Run(() =>
        {
            if (args[0] == "server") Server(args[1], int.Parse(args[2]));
            else Client(args[1], int.Parse(args[2]));
        });
    }

    private static byte* Alloc(int size)
    {
        byte* p = (byte*)NativeMemory.AlignedAlloc((nuint)size, 4096);
        NativeMemory.Clear(p, (nuint)size);
        return p;
    }

    private static void Server(string addr, int port)
    {
        byte* region = Alloc(Size);
        byte* msg = Alloc(4096);
        using var listener = new RdmaListener(addr, port);
        Console.WriteLine($"server listening on {addr}:{listener.Port}");

        // 1. The main connection: its accept carries the region's address and rkey for RDMA.
        MemoryRegion? regionMr = null;
        using RdmaConnection? c = listener.Accept(T, hello =>
        {
            // rdma_cm pads a connect request's private data (56 bytes on RoCE/IB): the first 8 are ours.
            Check("connect-private-data", hello.Length >= 8 && BinaryPrimitives.ReadUInt64LittleEndian(hello) == 0x5EED, $"{hello.Length} bytes");
            return new byte[16];
        });
        Check("accept", c != null);
        if (c == null) return;
        regionMr = c.Register(region, Size, remoteRead: true, remoteWrite: true);
        using MemoryRegion mr = c.Register(msg, 4096);
        // Tell the client where the region is (first message), then serve pings.
        for (ulong i = 0; i < 4; i++) c.PostRecv(i, mr, msg + 64 * (int)i, 64);
        BinaryPrimitives.WriteUInt64LittleEndian(new Span<byte>(msg + 1024, 8), (ulong)region);
        BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(msg + 1032, 4), regionMr.Rkey);
        c.PostSend(100, mr, msg + 1024, 12);
        int pongs = 0, recvs = 0;
        bool written = false;
        var sw = Stopwatch.StartNew();
        Span<SnWorkCompletion> wc = stackalloc SnWorkCompletion[32];
        while ((pongs < Pings || !written) && sw.Elapsed < T)
        {
            int n = c.Cq.Poll(wc);
            for (int i = 0; i < n; i++)
            {
                if (wc[i].Status != 0) { Check("server-completion", false, $"status {wc[i].Status} opcode {wc[i].Opcode}"); return; }
                if (wc[i].Opcode != Verbs.WcRecv) continue;
                recvs++;
                byte* m = msg + 64 * (int)wc[i].WrId;
                uint kind = BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(m, 4));
                c.PostRecv(wc[i].WrId, mr, m, 64);
                if (kind == 1)
                {
                    pongs++;
                    *(uint*)(msg + 2048) = 2;
                    c.PostSend(200, mr, msg + 2048, 4, signaled: (pongs & 63) == 0);
                }
                else if (kind == 3)
                {
                    written = true;
                }
            }
            if (n == 0) Thread.Yield();
        }
        Check("server-pings", pongs == Pings, $"{pongs}");
        // The client RDMA-wrote a pattern into the region, then said so.
        bool good = written;
        for (int i = 0; i < Size && good; i += 4096) good = region[i] == (byte)(i / 4096 * 7 + 1) && region[i + 4095] == (byte)(i / 4096 * 7 + 1);
        Check("rdma-write-landed", good);
        // Change the region so the client's RDMA READ sees the server's data.
        for (int i = 0; i < Size; i++) region[i] = (byte)(i * 13);
        *(uint*)(msg + 2048) = 4;
        c.PostSend(300, mr, msg + 2048, 4);

        // 2. Many queue pairs: each gets one ping answered.
        int served = 0;
        var extra = new List<RdmaConnection>();
        for (int k = 0; k < ManyQps; k++)
        {
            RdmaConnection? q = listener.Accept(T, _ => []);
            if (q == null) break;
            extra.Add(q);
        }
        var mrs = extra.Select(q => q.Register(msg + 3072, 256)).ToList();
        for (int k = 0; k < extra.Count; k++) extra[k].PostRecv(1, mrs[k], msg + 3072, 64);
        for (int k = 0; k < extra.Count; k++)
        {
            SnWorkCompletion[] got = extra[k].WaitCompletions(1, T);
            if (got[0].Status == 0) served++;
            extra[k].PostSend(2, mrs[k], msg + 3072, 8);
            extra[k].WaitCompletions(1, T);
        }
        Check("many-qps", served == ManyQps, $"{served} of {ManyQps} connections");

        // 3. The client disconnects: DISCONNECTED arrives and the posted receives flush with an error status.
        while (c.Cq.Poll(wc) > 0) { }
        CmEvent? ev = c.PollEvent(T);
        Check("disconnect-event", ev?.Type == Verbs.CmDisconnected, ev?.TypeName ?? "none");
        SnWorkCompletion[] flushed = c.WaitCompletions(4, TimeSpan.FromSeconds(20));
        Check("flush-errors-after-peer-left", flushed.All(w => w.Status != 0), string.Join(",", flushed.Select(w => w.Status)));

        foreach (MemoryRegion m in mrs) m.Dispose();
        foreach (RdmaConnection q in extra) { q.Disconnect(); q.Dispose(); }
        regionMr.Dispose();
        NativeMemory.AlignedFree(region);
        NativeMemory.AlignedFree(msg);
    }

    private static void Client(string addr, int port)
    {
        byte* local = Alloc(Size);
        byte* msg = Alloc(4096);
        RdmaConnection? c = null;
        var sw = Stopwatch.StartNew();
        byte[] hello = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(hello, 0x5EED);
        while (c == null && sw.Elapsed < T)
        {
            try { c = RdmaConnection.Connect(addr, port, hello); }
            catch (Exception e) when (e is RdmaException or TimeoutException or RdmaRejectedException) { Thread.Sleep(500); }
        }
        Check("connect", c != null);
        if (c == null) return;
        using MemoryRegion mr = c.Register(msg, 4096);
        using MemoryRegion lmr = c.Register(local, Size);
        for (ulong i = 0; i < 8; i++) c.PostRecv(i, mr, msg + 64 * (int)i, 64);
        // The server's region.
        SnWorkCompletion first = c.WaitCompletions(1, T)[0];
        byte* m0 = msg + 64 * (int)first.WrId;
        ulong raddr = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(m0, 8));
        uint rkey = BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(m0 + 8, 4));
        c.PostRecv(first.WrId, mr, m0, 64);
        Check("region-advertised", first.Status == 0 && first.ByteLen == 12 && raddr != 0, $"addr {raddr:X} rkey {rkey:X}");

        // Send/receive ping-pong.
        var lat = Stopwatch.StartNew();
        int ok = 0;
        Span<SnWorkCompletion> wc = stackalloc SnWorkCompletion[32];
        for (int i = 0; i < Pings; i++)
        {
            *(uint*)(msg + 2048) = 1;
            c.PostSend(1000, mr, msg + 2048, 4, signaled: false, inline: true);
            bool got = false;
            while (!got && lat.Elapsed < T)
            {
                int n = c.Cq.Poll(wc);
                for (int k = 0; k < n; k++)
                {
                    if (wc[k].Opcode == Verbs.WcRecv && wc[k].Status == 0)
                    {
                        got = true;
                        c.PostRecv(wc[k].WrId, mr, msg + 64 * (int)wc[k].WrId, 64);
                    }
                }
            }
            if (got) ok++;
        }
        Check("send-recv-pingpong", ok == Pings, $"{ok} round trips, {lat.Elapsed.TotalMicroseconds / Math.Max(1, ok):0} us each");

        // RDMA WRITE of a pattern into the server's region, then a message saying it is there.
        for (int i = 0; i < Size; i += 4096) new Span<byte>(local + i, 4096).Fill((byte)(i / 4096 * 7 + 1));
        c.PostWrite(2000, lmr, local, Size, raddr, rkey);
        SnWorkCompletion w = c.WaitCompletions(1, T)[0];
        Check("rdma-write-completion", w.Status == 0 && w.Opcode == Verbs.WcRdmaWrite, $"status {w.Status}");
        *(uint*)(msg + 2048) = 3;
        c.PostSend(2001, mr, msg + 2048, 4);
        // Wait for the server's "region changed" message (kind 4), skipping the send completion.
        bool changed = false;
        var sw2 = Stopwatch.StartNew();
        while (!changed && sw2.Elapsed < T)
        {
            int n = c.Cq.Poll(wc);
            for (int k = 0; k < n; k++)
                if (wc[k].Opcode == Verbs.WcRecv && *(uint*)(msg + 64 * (int)wc[k].WrId) == 4) changed = true;
        }
        // RDMA READ of the whole region back.
        NativeMemory.Clear(local, Size);
        c.PostRead(3000, lmr, local, Size, raddr, rkey);
        SnWorkCompletion r = c.WaitCompletions(1, T)[0];
        bool same = r.Status == 0;
        for (int i = 0; i < Size && same; i++) same = local[i] == (byte)(i * 13);
        Check("rdma-read-matches", changed && same, $"status {r.Status}");

        // Many queue pairs.
        var extra = new List<RdmaConnection>();
        for (int k = 0; k < ManyQps; k++) extra.Add(RdmaConnection.Connect(addr, port, [], new RdmaConnectionOptions { SendQueueDepth = 8, RecvQueueDepth = 8 }));
        var mrs = extra.Select(q => q.Register(msg + 3072, 256)).ToList();
        int answered = 0;
        for (int k = 0; k < extra.Count; k++)
        {
            extra[k].PostRecv(1, mrs[k], msg + 3200, 64);
            extra[k].PostSend(2, mrs[k], msg + 3072, 8);
            SnWorkCompletion[] got = extra[k].WaitCompletions(2, T);
            if (got.All(g => g.Status == 0)) answered++;
        }
        Check("many-qps", answered == ManyQps, $"{answered} of {ManyQps}");
        Check("distinct-qp-numbers", extra.Select(q => q.QpNum).Distinct().Count() == ManyQps);

        // Disconnect: the server sees DISCONNECTED and its receives flush; ours flush too.
        c.Disconnect();
        CmEvent? ev = c.PollEvent(T);
        Check("disconnect", ev?.Type == Verbs.CmDisconnected, ev?.TypeName ?? "none");
        foreach (MemoryRegion m in mrs) m.Dispose();
        foreach (RdmaConnection q in extra) { q.Disconnect(); q.Dispose(); }
        mr.Dispose();
        lmr.Dispose();
        c.Dispose();
        NativeMemory.AlignedFree(local);
        NativeMemory.AlignedFree(msg);
    }
}
