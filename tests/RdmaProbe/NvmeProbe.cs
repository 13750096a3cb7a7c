using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Interop;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Rdma;
using StorageNode.Nvme.Spec;
using StorageNode.Rdma;
using static Checks;

/// <summary>
/// RdmaProbe nvme ADDRESS PORT SUBNQN: an NVMe/RDMA target (StorageNode in the rig's guest a) through the managed
/// initiator queue (src/Nvme/Host/RdmaHostQueue): admin and I/O queues, keyed and in-capsule data, then bad input
/// the target must answer with an NVMe status or a connection manager reject, or survive by closing only that
/// connection: bad private data, a Connect for another queue, unsupported SGL descriptors, a transfer beyond
/// MDTS, a capsule that overflows its receive buffer, a capsule shorter than an SQE, a wrong remote key. The
/// node must still serve afterwards.
/// </summary>
internal static unsafe class NvmeProbe
{
    private static readonly TimeSpan T = TimeSpan.FromSeconds(30);
    private static string _addr = "";
    private static int _port;
    private static string _nqn = "";
    private static readonly string HostNqn = $"nqn.2014-08.org.nvmexpress:uuid:{Guid.NewGuid()}";
    private static readonly Guid HostId = Guid.NewGuid();

    private static string Status(in CompletionQueueEntry c) => c.StatusField.ToString();

    private static bool Is(in CompletionQueueEntry c, StatusCodeType type, byte code) => c.StatusField.Type == type && c.StatusField.Code == code;

    public static int Run(string[] args)
    {
        if (args.Length < 4) { Console.Error.WriteLine("usage: RdmaProbe nvme ADDRESS PORT SUBNQN"); return 2; }
        _addr = args[1];
        _port = int.Parse(args[2]);
        _nqn = args[3];
        return Checks.Run(Probe);
    }

    private static RdmaHostQueue ConnectWithRetry(ushort qid, RdmaHostQueueOptions o)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            try { return RdmaHostQueue.Connect(_addr, _port, qid, o); }
            catch (Exception e) when (e is RdmaException or TimeoutException && sw.Elapsed < TimeSpan.FromSeconds(60)) { Thread.Sleep(500); }
        }
    }

    private static void Probe()
    {
        // 1. The admin queue: Connect (its 1024 bytes pulled by the target's RDMA READ), Identify (RDMA WRITE).
        using RdmaHostQueue admin = ConnectWithRetry(0, new RdmaHostQueueOptions { Depth = 32 });
        Check("admin-accepted", admin.ControllerReceiveQueueSize == 32, $"CRQSIZE {admin.ControllerReceiveQueueSize}");
        CompletionQueueEntry c = admin.FabricsConnect(_nqn, HostNqn, HostId, 0xFFFF, 31, 0, T);
        Check("admin-connect", c.StatusField.IsSuccess, $"{Status(c)}, CNTLID {c.Dw0}");
        ushort cntlid = (ushort)c.Dw0;
        if (!c.StatusField.IsSuccess) return;
        PropertySet(admin, Property.Cc, CcRegister.Enable | (6u << 16) | (4u << 20));
        var ready = Stopwatch.StartNew();
        while ((PropertyGet(admin, Property.Csts) & CstsRegister.Ready) == 0 && ready.Elapsed < T) Thread.Sleep(10);
        Check("controller-ready", (PropertyGet(admin, Property.Csts) & CstsRegister.Ready) != 0);
        SubmissionQueueEntry id = default;
        id.Opcode = AdminOpcode.Identify;
        id.Cdw10 = 1;
        c = admin.Execute(id, admin.Scratch, 4096, DataDirection.ControllerToHost, admin.ScratchRegion, T);
        ref IdentifyController ic = ref Unsafe.AsRef<IdentifyController>(admin.Scratch);
        uint icd = ic.Ioccsz * 16 - 64;
        uint mdts = 4096u << ic.Mdts;
        Check("identify-controller", c.StatusField.IsSuccess && ic.Cntlid == cntlid, $"{Status(c)}, SGLS {ic.Sgls:X8}, IOCCSZ {ic.Ioccsz}, MDTS {mdts} B");
        Check("identify-keyed-sgls", (ic.Sgls & IdentifyControllerBits.SglsKeyed) != 0 && (ic.Sgls & IdentifyControllerBits.SglsOffset) != 0);
        id.Cdw10 = 0;
        id.Nsid = 1;
        c = admin.Execute(id, admin.Scratch, 4096, DataDirection.ControllerToHost, admin.ScratchRegion, T);
        ref IdentifyNamespace ns = ref Unsafe.AsRef<IdentifyNamespace>(admin.Scratch);
        int lbads = (int)((ns.Lbaf[ns.Flbas & 0xF] >> 16) & 0xFF);
        uint bs = 1u << lbads;
        Check("identify-namespace", c.StatusField.IsSuccess && ns.Nsze > 1024, $"{ns.Nsze} blocks of {bs} B");
        if (Failed > 0) return; // nothing below means anything without these

        // 2. An I/O queue: keyed writes and reads (RDMA READ / WRITE), and in-capsule writes.
        using RdmaHostQueue io = ConnectWithRetry(1, new RdmaHostQueueOptions { Depth = 32, InCapsuleDataSize = icd });
        c = io.FabricsConnect(_nqn, HostNqn, HostId, cntlid, 31, 0, T);
        Check("io-connect", c.StatusField.IsSuccess, Status(c));
        const int Size = 1 << 20;
        byte* buf = (byte*)NativeMemory.AlignedAlloc(Size, 4096);
        byte* back = (byte*)NativeMemory.AlignedAlloc(Size, 4096);
        using MemoryRegion bufMr = io.Register(buf, Size);
        using MemoryRegion backMr = io.Register(back, Size);
        for (int i = 0; i < Size; i++) buf[i] = (byte)(i * 7 + 3);
        uint big = 128 * 1024;
        c = io.Execute(IoQueue.ReadWriteSqe(IoOpcode.Write, 1, 0, big / bs), buf, big, DataDirection.HostToController, bufMr, T);
        Check("keyed-write", c.StatusField.IsSuccess, Status(c));
        c = io.Execute(IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 0, big / bs), back, big, DataDirection.ControllerToHost, backMr, T);
        Check("keyed-read-matches", c.StatusField.IsSuccess && new Span<byte>(buf, (int)big).SequenceEqual(new Span<byte>(back, (int)big)), Status(c));
        ulong lba = 1024 * 1024 / bs;
        c = io.Execute(IoQueue.ReadWriteSqe(IoOpcode.Write, 1, lba, 1), buf + 8192, bs, DataDirection.HostToController, bufMr, T);
        Check("in-capsule-write", c.StatusField.IsSuccess && bs <= icd, $"{Status(c)}, {bs} B in-capsule (ICD {icd})");
        NativeMemory.Clear(back, bs);
        c = io.Execute(IoQueue.ReadWriteSqe(IoOpcode.Read, 1, lba, 1), back, bs, DataDirection.ControllerToHost, backMr, T);
        Check("in-capsule-read-back", c.StatusField.IsSuccess && new Span<byte>(buf + 8192, (int)bs).SequenceEqual(new Span<byte>(back, (int)bs)), Status(c));
        // Full MDTS read (one RDMA WRITE of MDTS bytes).
        c = io.Execute(IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 0, mdts / bs), back, mdts, DataDirection.ControllerToHost, backMr, T);
        Check("mdts-read", c.StatusField.IsSuccess && new Span<byte>(buf, (int)big).SequenceEqual(new Span<byte>(back, (int)big)), $"{Status(c)}, {mdts} B");

        // 3. Bad SGLs on a working queue: an NVMe error status each, and the queue goes on.
        SubmissionQueueEntry rd = IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 0, 1);
        rd.Flags = 0x40;
        rd.Dptr = SglDescriptor.Transport(bs);
        c = io.ExecuteRaw(rd, default, T);
        Check("sgl-transport-type-refused", Is(c, StatusCodeType.Generic, GenericStatus.SglDescriptorTypeInvalid), Status(c));
        rd.Dptr = new SglDescriptor { Length = bs, Identifier = (SglType.KeyedDataBlock << 4) | SglSubtype.Offset };
        c = io.ExecuteRaw(rd, default, T);
        Check("sgl-keyed-subtype-refused", Is(c, StatusCodeType.Generic, GenericStatus.SglDescriptorTypeInvalid), Status(c));
        rd.Dptr = SglDescriptor.InCapsule(bs);
        c = io.ExecuteRaw(rd, new byte[bs], T);
        Check("in-capsule-read-refused", Is(c, StatusCodeType.Generic, GenericStatus.SglDescriptorTypeInvalid), Status(c));
        SubmissionQueueEntry wr = IoQueue.ReadWriteSqe(IoOpcode.Write, 1, 0, 1);
        wr.Flags = 0x40;
        wr.Dptr = SglDescriptor.InCapsule(bs);
        c = io.ExecuteRaw(wr, new byte[bs / 2], T);
        Check("in-capsule-short-data-refused", Is(c, StatusCodeType.Generic, GenericStatus.DataSglLengthInvalid), Status(c));
        SubmissionQueueEntry huge = IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 0, 2 * mdts / bs);
        huge.Flags = 0x40;
        huge.Dptr = RdmaSgl.Keyed((ulong)back, 2 * mdts, backMr.Rkey, invalidate: false);
        c = io.ExecuteRaw(huge, default, T);
        Check("beyond-mdts-refused", !c.StatusField.IsSuccess, Status(c));
        c = io.Execute(IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 0, 1), back, bs, DataDirection.ControllerToHost, backMr, T);
        Check("queue-works-after-bad-sgls", c.StatusField.IsSuccess && !io.IsBroken, Status(c));

        // 4. Connection manager: bad private data is rejected with the binding's status.
        ExpectReject("cm-reject-record-format", Request(recfmt: 1, qid: 1, hrq: 32, hsq: 31), RdmaCmStatus.InvalidRecordFormat);
        ExpectReject("cm-reject-qid", Request(0, 999, 32, 31), RdmaCmStatus.InvalidQid);
        ExpectReject("cm-reject-admin-hsqsize", Request(0, 0, 256, 255), RdmaCmStatus.InvalidHsqSize);
        ExpectReject("cm-reject-hrqsize", Request(0, 2, 0, 31), RdmaCmStatus.InvalidHrqSize);

        // 5. A Connect for another queue than the connection was made for.
        using (RdmaHostQueue q2 = ConnectWithRetry(2, new RdmaHostQueueOptions { Depth = 16 }))
        {
            c = q2.FabricsConnect(_nqn, HostNqn, HostId, cntlid, 15, 0, T, qid: 3);
            Check("connect-qid-mismatch-refused", Is(c, StatusCodeType.CommandSpecific, FabricsStatus.ConnectInvalidParameters) && c.Dw0 == 42, $"{Status(c)}, DW0 {c.Dw0}");
            c = q2.FabricsConnect(_nqn, HostNqn, HostId, cntlid, 31, 0, T);
            Check("connect-sqsize-beyond-hsqsize-refused", Is(c, StatusCodeType.CommandSpecific, FabricsStatus.ConnectInvalidParameters) && c.Dw0 == 44, $"{Status(c)}, DW0 {c.Dw0}");
        }

        // 6. Capsules the transport cannot take: the target closes that connection only.
        using (RdmaHostQueue q = ConnectWithRetry(2, new RdmaHostQueueOptions { Depth = 8, CapsuleBufferSize = 64 + (int)icd + 4096 }))
        {
            SubmissionQueueEntry w = IoQueue.ReadWriteSqe(IoOpcode.Write, 1, 0, 1);
            w.Flags = 0x40;
            w.Dptr = SglDescriptor.InCapsule(icd + 64);
            q.TrySubmitRaw(w, new byte[icd + 64], new Ignore(), 0);
            Check("receive-overflow-closes-connection", WaitGone(q), q.Error ?? "disconnected");
        }
        using (RdmaHostQueue q = ConnectWithRetry(2, new RdmaHostQueueOptions { Depth = 8 }))
        {
            q.SendRawBytes(new byte[32]);
            Check("short-capsule-closes-connection", WaitGone(q), q.Error ?? "disconnected");
        }
        using (RdmaHostQueue q = ConnectWithRetry(2, new RdmaHostQueueOptions { Depth = 16 }))
        {
            c = q.FabricsConnect(_nqn, HostNqn, HostId, cntlid, 15, 0, T);
            Check("second-io-connect", c.StatusField.IsSuccess, Status(c));
            SubmissionQueueEntry w = IoQueue.ReadWriteSqe(IoOpcode.Write, 1, 0, 64 * 1024 / bs);
            w.Flags = 0x40;
            w.Dptr = RdmaSgl.Keyed((ulong)buf, 64 * 1024, bufMr.Rkey ^ 0x5A5A00, invalidate: false);
            q.TrySubmitRaw(w, default, new Ignore(), 0);
            Check("bad-remote-key-closes-connection", WaitGone(q), q.Error ?? "disconnected");
        }

        // 7. The node still serves the first queues, and the data written first is intact.
        NativeMemory.Clear(back, big);
        c = io.Execute(IoQueue.ReadWriteSqe(IoOpcode.Read, 1, 0, big / bs), back, big, DataDirection.ControllerToHost, backMr, T);
        Check("node-still-serves", c.StatusField.IsSuccess && new Span<byte>(buf, (int)big).SequenceEqual(new Span<byte>(back, (int)big)), Status(c));
        using (RdmaHostQueue again = ConnectWithRetry(0, new RdmaHostQueueOptions { Depth = 32 }))
        {
            c = again.FabricsConnect(_nqn, HostNqn, HostId, 0xFFFF, 31, 0, T);
            Check("new-association-after-bad-input", c.StatusField.IsSuccess, Status(c));
        }
        bufMr.Dispose();
        backMr.Dispose();
        io.Dispose();
        admin.Dispose();
        NativeMemory.AlignedFree(buf);
        NativeMemory.AlignedFree(back);
    }

    private static byte[] Request(ushort recfmt, ushort qid, ushort hrq, ushort hsq)
    {
        byte[] b = RdmaCm.BuildRequest(qid, hrq, hsq);
        b[0] = (byte)recfmt;
        return b;
    }

    private static void ExpectReject(string name, byte[] privateData, RdmaCmStatus expected)
    {
        try
        {
            using RdmaHostQueue q = RdmaHostQueue.Connect(_addr, _port, 1, privateData);
            Check(name, false, "accepted");
        }
        catch (NvmeRdmaRejectedException e)
        {
            Check(name, e.Status == expected, e.Message);
        }
    }

    /// <summary>True once the target closed the connection (a completion error or DISCONNECTED), bounded.</summary>
    private static bool WaitGone(RdmaHostQueue q)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < T)
        {
            q.Progress();
            if (q.IsBroken) return true;
            CmEvent? e = q.Connection.PollEvent(TimeSpan.FromMilliseconds(50));
            if (e?.Type == Verbs.CmDisconnected) return true;
        }
        return false;
    }

    private sealed class Ignore : IHostCompletion
    {
        public void OnHostComplete(long token, in CompletionQueueEntry cqe) { }
    }

    private static ulong PropertyGet(RdmaHostQueue q, uint offset)
    {
        PropertyCommand cmd = default;
        cmd.Opcode = AdminOpcode.FabricsCommand;
        cmd.FabricsType = FabricsCommandType.PropertyGet;
        cmd.Offset = offset;
        CompletionQueueEntry c = q.Execute(Unsafe.As<PropertyCommand, SubmissionQueueEntry>(ref cmd), null, 0, DataDirection.None, null, T);
        return c.Dw0 | ((ulong)c.Dw1 << 32);
    }

    private static void PropertySet(RdmaHostQueue q, uint offset, uint value)
    {
        PropertyCommand cmd = default;
        cmd.Opcode = AdminOpcode.FabricsCommand;
        cmd.FabricsType = FabricsCommandType.PropertySet;
        cmd.Offset = offset;
        cmd.Value = value;
        CompletionQueueEntry c = q.Execute(Unsafe.As<PropertyCommand, SubmissionQueueEntry>(ref cmd), null, 0, DataDirection.None, null, T);
        Check("property-set", c.StatusField.IsSuccess, Status(c));
    }
}
