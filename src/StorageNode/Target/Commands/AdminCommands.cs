using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// One admin command: its entry in the Commands Supported and Effects log, whether a discovery controller takes it, and
/// what it does. A new command is one entry of <see cref="AdminCommands"/>' table.
/// </summary>
internal readonly unsafe struct AdminCommand
{
    public string Name { get; init; }
    /// <summary>Its Commands Supported and Effects entry (<see cref="CommandEffects"/>).</summary>
    public uint Effects { get; init; }
    /// <summary>Taken by a discovery controller too.</summary>
    public bool OnDiscovery { get; init; }
    public delegate*<NvmfRequest, Controller, void> Run { get; init; }

    public bool Exists => Run != null;
}

/// <summary>Admin command set of I/O and discovery controllers.</summary>
internal static unsafe class AdminCommands
{
    public const byte Aerl = Controller.MaxOutstandingAers - 1;
    public const byte ErrorLogPageEntries = 64;

    /// <summary>The admin commands by opcode; an entry that does not <see cref="AdminCommand.Exists"/> is an invalid opcode.</summary>
    private static readonly AdminCommand[] Table = BuildTable();

    private static AdminCommand[] BuildTable()
    {
        const uint csupp = CommandEffects.Supported;
        var t = new AdminCommand[256];
        t[AdminOpcode.GetLogPage] = new() { Name = "Get Log Page", Effects = csupp, OnDiscovery = true, Run = &GetLogPage };
        t[AdminOpcode.Identify] = new() { Name = "Identify", Effects = csupp, OnDiscovery = true, Run = &Identify };
        t[AdminOpcode.Abort] = new() { Name = "Abort", Effects = csupp, Run = &Abort };
        t[AdminOpcode.SetFeatures] = new() { Name = "Set Features", Effects = csupp, OnDiscovery = true, Run = &Features.Set };
        t[AdminOpcode.GetFeatures] = new() { Name = "Get Features", Effects = csupp, OnDiscovery = true, Run = &Features.Get };
        t[AdminOpcode.AsyncEventRequest] = new() { Name = "Asynchronous Event Request", Effects = csupp, OnDiscovery = true, Run = &AsyncEventRequest };
        t[AdminOpcode.KeepAlive] = new() { Name = "Keep Alive", Effects = csupp, OnDiscovery = true, Run = &KeepAlive };
        return t;
    }

    /// <summary>A vendor-specific command (C0h and up) of the pair's interconnect, from the partner on the interconnect.</summary>
    private static bool IsInterconnectCommand(byte op, Controller ctrl)
        => op >= 0xC0 && ctrl.IsInterconnect && ctrl.Target.Interconnect?.IsVendorCommand(op) == true;

    public static NvmeStatus Validate(NvmfRequest req, Controller ctrl)
    {
        byte op = req.Sqe.Opcode;
        ref readonly AdminCommand cmd = ref Table[op];
        bool known = cmd.Exists ? cmd.OnDiscovery || !ctrl.Subsystem.IsDiscovery : IsInterconnectCommand(op, ctrl);
        if (!known) return NvmeStatus.Generic(GenericStatus.InvalidOpcode);
        // Everything but Fabrics commands needs an enabled controller.
        if (!ctrl.Enabled) return NvmeStatus.Generic(GenericStatus.CommandSequenceError);
        return NvmeStatus.Success;
    }

    public static void Execute(NvmfRequest req, Controller ctrl)
    {
        byte op = req.Sqe.Opcode;
        ref readonly AdminCommand cmd = ref Table[op];
        if (cmd.Exists) cmd.Run(req, ctrl);
        else if (IsInterconnectCommand(op, ctrl)) ctrl.Target.Interconnect!.Execute(req, ctrl);
        else req.Fail(NvmeStatus.Generic(GenericStatus.InvalidOpcode));
    }

    private static void AsyncEventRequest(NvmfRequest req, Controller ctrl)
    {
        if (!ctrl.TryQueueAer(req))
            req.Fail(NvmeStatus.CommandSpecific(CommandSpecificStatus.AsyncEventRequestLimitExceeded));
    }

    private static void KeepAlive(NvmfRequest req, Controller ctrl)
    {
        ctrl.TouchKeepAlive();
        req.Complete();
    }

    // ---------------- Abort ----------------

    /// <summary>Abort (CDW10: SQID 15:0, CID 31:16): DW0 bit 0 clear when the command was aborted, set when it was not.</summary>
    private static void Abort(NvmfRequest req, Controller ctrl)
    {
        ushort sqid = (ushort)req.Sqe.Cdw10, cid = (ushort)(req.Sqe.Cdw10 >> 16);
        void Answer(bool aborted)
        {
            req.Cqe.Dw0 = aborted ? 0u : 1u;
            req.Complete();
        }
        if (sqid == 0)
        {
            // On the admin queue only an Asynchronous Event Request is waiting rather than running.
            Answer(ctrl.TryAbortAer(cid));
            return;
        }
        QueuePair? q = ctrl.IoQueue(sqid);
        if (q == null)
        {
            Answer(false);
            return;
        }
        q.Reactor.Post(() =>
        {
            bool aborted = !q.IsClosed && q.TryAbort(cid);
            req.Qpair.Reactor.Post(() => Answer(aborted));
        });
    }

    // ---------------- Identify ----------------

    private static void Identify(NvmfRequest req, Controller ctrl)
    {
        byte cns = req.Sqe.IdentifyCns();
        byte csi = req.Sqe.IdentifyCsi();
        uint nsid = req.Sqe.Nsid;
        Span<byte> page = stackalloc byte[4096];
        page.Clear();
        NvmeStatus status = NvmeStatus.Success;
        Subsystem s = ctrl.Subsystem;
        switch (cns)
        {
            case Cns.Controller:
                BuildIdentifyController(ctrl, page);
                break;
            case Cns.Namespace when !s.IsDiscovery:
                status = CheckNsid(s, nsid, allowInactive: true);
                if (status.IsSuccess && s.GetNamespace(nsid) is { } ns) BuildIdentifyNamespace(ns, page);
                break;
            case Cns.ActiveNamespaceList when !s.IsDiscovery:
                if (nsid >= 0xFFFFFFFE) { status = NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat); break; }
                BuildActiveNamespaceList(s, nsid, page);
                break;
            case Cns.NamespaceDescriptorList when !s.IsDiscovery:
                if (s.GetNamespace(nsid) is not { } dns) { status = NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat); break; }
                BuildNamespaceDescriptors(dns, page);
                break;
            case Cns.IoCommandSetNamespace when !s.IsDiscovery && csi == 0:
                // NVM command set specific namespace data: nothing beyond the defaults (all zero).
                status = CheckNsid(s, nsid, allowInactive: true);
                break;
            case Cns.IoCommandSetController when !s.IsDiscovery && csi == 0:
                // NVM command set specific controller data: no extra limits (all zero).
                break;
            case Cns.IoCommandSetActiveNamespaceList when !s.IsDiscovery && csi == 0:
                if (nsid >= 0xFFFFFFFE) { status = NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat); break; }
                BuildActiveNamespaceList(s, nsid, page);
                break;
            default:
                status = NvmeStatus.Generic(GenericStatus.InvalidField);
                break;
        }
        if (!status.IsSuccess)
        {
            req.Fail(status);
            return;
        }
        CopyOut(req, page, 0);
        req.Complete();
    }

    private static NvmeStatus CheckNsid(Subsystem s, uint nsid, bool allowInactive)
    {
        if (nsid == 0 || nsid > s.MaxNamespaces) return NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat);
        if (!allowInactive && s.GetNamespace(nsid) == null) return NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat);
        return NvmeStatus.Success;
    }

    /// <summary>Copies a built structure into the command's buffer from <paramref name="offset"/>, zero-filling the rest.</summary>
    private static void CopyOut(NvmfRequest req, ReadOnlySpan<byte> content, long offset)
    {
        Span<byte> dest = req.DataSpan;
        dest.Clear();
        if (offset < content.Length)
        {
            ReadOnlySpan<byte> src = content[(int)offset..];
            src[..Math.Min(src.Length, dest.Length)].CopyTo(dest);
        }
    }

    internal static void BuildIdentifyController(Controller ctrl, Span<byte> page)
    {
        ref IdentifyController id = ref MemoryMarshal.AsRef<IdentifyController>(page);
        Subsystem s = ctrl.Subsystem;
        TargetOptions o = ctrl.Target.Options;
        id.Vid = 0;
        id.Ssvid = 0;
        SpecText.WritePadded(new Span<byte>(Unsafe.AsPointer(ref id.Sn[0]), 20), s.SerialNumber);
        SpecText.WritePadded(new Span<byte>(Unsafe.AsPointer(ref id.Mn[0]), 40), s.ModelNumber);
        SpecText.WritePadded(new Span<byte>(Unsafe.AsPointer(ref id.Fr[0]), 8), s.FirmwareRevision);
        id.Rab = 6;
        id.Mdts = o.Mdts;
        id.Cntlid = ctrl.Cntlid;
        id.Ver = NvmeVersion.V1_4;
        id.Ctratt = IdentifyControllerBits.CtrattHostId128;
        id.Kas = (ushort)(o.KeepAliveGranularityMs / 100);
        id.Lpa = IdentifyControllerBits.LpaExtendedData;
        id.Sqes = (6 << 4) | 6;
        id.Cqes = (4 << 4) | 4;
        id.Maxcmd = (ushort)o.MaxQueueDepth;
        id.Aerl = Aerl;
        id.Elpe = ErrorLogPageEntries - 1;
        id.Sgls = IdentifyControllerBits.SglsSupported | IdentifyControllerBits.SglsOffset;
        id.Sgls |= ctrl.AdminQueue.Listener.Transport.SglSupport;
        SpecText.WriteNulPadded(new Span<byte>(Unsafe.AsPointer(ref id.Subnqn[0]), 256), s.Nqn);
        id.Msdbd = 1;
        id.Ioccsz = (64 + o.InCapsuleDataSize) / 16;
        id.Iorcsz = 16 / 16;
        id.Icdoff = 0;
        id.Fcatt = IdentifyControllerBits.FcattDynamic;

        if (s.IsDiscovery)
        {
            id.Cntrltype = IdentifyControllerBits.TypeDiscovery;
            id.Oaes = IdentifyControllerBits.OaesDiscoveryLogChange;
            id.Maxcmd = (ushort)o.AdminQueueDepth;
            return;
        }
        id.Cntrltype = IdentifyControllerBits.TypeIo;
        // Multi-controller and ANA reporting: every node exports the same subsystem (DESIGN.md section 5).
        id.Cmic = IdentifyControllerBits.CmicMultiPort | IdentifyControllerBits.CmicMultiController | IdentifyControllerBits.CmicAnaReporting;
        id.Oaes = IdentifyControllerBits.OaesNamespaceAttribute | IdentifyControllerBits.OaesAnaChange;
        id.Lpa |= IdentifyControllerBits.LpaCommandEffects;
        id.Acl = 3;
        id.Frmw = (1 << 1) | 1; // one slot, read-only
        id.Wctemp = 343;
        id.Cctemp = 373;
        id.Nn = s.MaxNamespaces;
        id.Mnan = s.MaxNamespaces;
        id.Oncs = IdentifyControllerBits.OncsDatasetManagement | IdentifyControllerBits.OncsWriteZeroes | IdentifyControllerBits.OncsSaveAndSelect
                  | IdentifyControllerBits.OncsReservations | IdentifyControllerBits.OncsCompare | IdentifyControllerBits.OncsVerify | IdentifyControllerBits.OncsCopy;
        id.Ocfs = IdentifyControllerBits.OcfsFormat0;
        id.Fuses = IdentifyControllerBits.FusesCompareAndWrite;
        id.Acwu = (ushort)(FusedCommands.MaxBlocks - 1);
        // Volatile write cache present; Flush with NSID FFFFFFFFh not supported (10b).
        id.Vwc = 0x1 | (0x2 << 1);
        id.Awun = 0;
        id.Awupf = 0;
        id.Anatt = 10;
        id.Anacap = IdentifyControllerBits.AnacapOptimized | IdentifyControllerBits.AnacapNonOptimized
            | IdentifyControllerBits.AnacapInaccessible | IdentifyControllerBits.AnacapChange
            | IdentifyControllerBits.AnacapGroupIdNotChanged | IdentifyControllerBits.AnacapNonZeroGroupId;
        id.Anagrpmax = s.MaxNamespaces;
        id.Cqt = ctrl.Target.CommandQuiesceTimeMs;
        id.Nanagrpid = s.MaxNamespaces;
        // Power state 0: 25 W max power (units of 0.01 W) so tools print something sane.
        BinaryPrimitives.WriteUInt16LittleEndian(new Span<byte>(Unsafe.AsPointer(ref id.Psd[0]), 2), 2500);
    }

    internal static void BuildIdentifyNamespace(Namespace ns, Span<byte> page)
    {
        ref IdentifyNamespace id = ref MemoryMarshal.AsRef<IdentifyNamespace>(page);
        ulong blocks = ns.Bdev.BlockCount;
        id.Nsze = blocks;
        id.Ncap = blocks;
        id.Nuse = blocks;
        id.Nsfeat = IdentifyNamespaceBits.NsfeatThinProvisioning | IdentifyNamespaceBits.NsfeatOptPerf;
        id.Nlbaf = 0;
        id.Flbas = 0;
        id.Nmic = IdentifyNamespaceBits.NmicShared;
        id.Rescap = (byte)(ReservationCapabilities.AllTypes | ReservationCapabilities.IgnoreExistingKey13
                           | (ns.Reservations.PtplCapable ? ReservationCapabilities.PersistThroughPowerLoss : 0));
        id.Dlfeat = ns.Bdev.DeallocateReadsZeroes ? (byte)(IdentifyNamespaceBits.DlfeatReadZeroes | IdentifyNamespaceBits.DlfeatWriteZeroesDeallocate) : (byte)0;
        // Preferred granularities (0-based, in blocks): 4 KiB.
        ushort per4k = (ushort)Math.Max(1, 4096 / ns.Bdev.BlockSize);
        id.Npwg = (ushort)(per4k - 1);
        id.Npwa = (ushort)(per4k - 1);
        id.Npdg = (ushort)(per4k - 1);
        id.Npda = (ushort)(per4k - 1);
        id.Nows = (ushort)(per4k - 1);
        id.Anagrpid = ns.AnaGroupId;
        id.Mssrl = (ushort)Math.Min(ushort.MaxValue, CopyCommand.MaxBlocks(ns.Bdev.BlockSize));
        id.Mcl = CopyCommand.MaxBlocks(ns.Bdev.BlockSize);
        id.Msrc = CopyCommand.MaxRanges - 1;
        ns.Nguid.CopyTo(new Span<byte>(Unsafe.AsPointer(ref id.Nguid[0]), 16));
        id.Lbaf[0] = IdentifyNamespace.LbaFormat(ns.Bdev.BlockShift);
        BinaryPrimitives.WriteUInt64LittleEndian(new Span<byte>(Unsafe.AsPointer(ref id.Nvmcap[0]), 8), ns.Bdev.SizeBytes);
    }

    private static void BuildActiveNamespaceList(Subsystem s, uint after, Span<byte> page)
    {
        int n = 0;
        foreach (Namespace ns in s.Namespaces)
        {
            if (ns.Nsid <= after) continue;
            if (n == 1024) break;
            BinaryPrimitives.WriteUInt32LittleEndian(page[(n * 4)..], ns.Nsid);
            n++;
        }
    }

    private static void BuildNamespaceDescriptors(Namespace ns, Span<byte> page)
    {
        int off = 0;
        void Add(Span<byte> p, byte type, ReadOnlySpan<byte> value)
        {
            p[off] = type;
            p[off + 1] = (byte)value.Length;
            value.CopyTo(p[(off + 4)..]);
            off += 4 + value.Length;
        }
        Add(page, NamespaceIdType.Nguid, ns.Nguid);
        Span<byte> uuid = stackalloc byte[16];
        ns.Uuid.TryWriteBytes(uuid, bigEndian: true, out _);
        Add(page, NamespaceIdType.Uuid, uuid);
        Add(page, NamespaceIdType.Csi, [0]);
    }

    // ---------------- Get Log Page ----------------

    private static void GetLogPage(NvmfRequest req, Controller ctrl)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        byte lid = sqe.LogPageId();
        byte lsp = sqe.LogSpecificField();
        bool rae = sqe.RetainAsyncEvent();
        ulong numd = sqe.LogPageDwords();
        ulong offset = sqe.LogPageOffset();
        if (numd * 4 != req.Length)
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid));
            return;
        }
        if ((offset & 3) != 0)
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
            return;
        }
        Subsystem s = ctrl.Subsystem;
        byte[]? log = (lid, s.IsDiscovery) switch
        {
            (LogPageId.SupportedLogPages, bool discovery) => BuildSupportedLogPages(discovery),
            (LogPageId.Discovery, true) => DiscoveryLog.Build(ctrl),
            (LogPageId.Error, _) => BuildErrorLog(ctrl),
            (LogPageId.Smart, false) => BuildSmartLog(ctrl),
            (LogPageId.FirmwareSlot, false) => BuildFirmwareLog(s),
            (LogPageId.ChangedNamespaceList, false) => ctrl.ReadChangedNamespaceList(rae),
            (LogPageId.CommandEffects, false) => BuildCommandEffects(),
            (LogPageId.Ana, false) => BuildAnaLog(ctrl, groupsOnly: (lsp & 1) != 0),
            (LogPageId.ReservationNotification, false) => offset == 0 ? ctrl.TakeReservationNotification() : new byte[ReservationNotification.Size],
            _ => null,
        };
        if (log == null)
        {
            req.Fail(NvmeStatus.CommandSpecific(CommandSpecificStatus.InvalidLogPage));
            return;
        }
        if (offset >= (ulong)log.Length && offset != 0)
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
            return;
        }
        CopyOut(req, log, (long)offset);
        ctrl.LogPageRead(lid, rae);
        req.Complete();
    }

    /// <summary>The log pages each kind of controller answers (and so what Supported Log Pages lists).</summary>
    private static readonly byte[] IoControllerLogPages =
        [LogPageId.SupportedLogPages, LogPageId.Error, LogPageId.Smart, LogPageId.FirmwareSlot, LogPageId.ChangedNamespaceList,
         LogPageId.CommandEffects, LogPageId.Ana, LogPageId.ReservationNotification];
    private static readonly byte[] DiscoveryControllerLogPages = [LogPageId.SupportedLogPages, LogPageId.Error, LogPageId.Discovery];

    private static byte[] BuildSupportedLogPages(bool discovery)
    {
        const uint lsupp = 1;
        var log = new byte[256 * 4];
        foreach (byte lid in discovery ? DiscoveryControllerLogPages : IoControllerLogPages)
            BinaryPrimitives.WriteUInt32LittleEndian(log.AsSpan(lid * 4), lsupp);
        return log;
    }

    private static byte[] BuildErrorLog(Controller ctrl)
    {
        var entries = new ErrorLogEntry[ErrorLogPageEntries];
        ctrl.CopyErrorLog(entries);
        return MemoryMarshal.AsBytes(entries.AsSpan()).ToArray();
    }

    private static byte[] BuildSmartLog(Controller ctrl)
    {
        long reads = 0, writes = 0, bytesRead = 0, bytesWritten = 0;
        foreach (QueuePair q in ctrl.IoQueues)
        {
            reads += Volatile.Read(ref q.ReadCommands);
            writes += Volatile.Read(ref q.WriteCommands);
            bytesRead += Volatile.Read(ref q.BytesRead);
            bytesWritten += Volatile.Read(ref q.BytesWritten);
        }
        SmartLog log = default;
        log.CompositeTemperature = 300;
        log.AvailableSpare = 100;
        log.AvailableSpareThreshold = 10;
        // Data units are thousands of 512-byte units, rounded up.
        log.DataUnitsRead = (ulong)((bytesRead / 512 + 999) / 1000);
        log.DataUnitsWritten = (ulong)((bytesWritten / 512 + 999) / 1000);
        log.HostReadCommands = (ulong)reads;
        log.HostWriteCommands = (ulong)writes;
        log.PowerCycles = 1;
        log.PowerOnHours = (ulong)(DateTime.UtcNow - ctrl.Target.StartedUtc).TotalHours;
        log.ErrorLogEntries = ctrl.ErrorCount;
        return MemoryMarshal.AsBytes(new ReadOnlySpan<SmartLog>(in log)).ToArray();
    }

    private static byte[] BuildFirmwareLog(Subsystem s)
    {
        FirmwareSlotLog log = default;
        log.Afi = 1;
        SpecText.WritePadded(new Span<byte>(Unsafe.AsPointer(ref log.Frs[0]), 8), s.FirmwareRevision);
        return MemoryMarshal.AsBytes(new ReadOnlySpan<FirmwareSlotLog>(in log)).ToArray();
    }

    /// <summary>Commands Supported and Effects (log 05h): the admin commands (ACS, from 0), then the I/O commands (IOCS, from 1024).</summary>
    private static byte[] BuildCommandEffects()
    {
        var log = new byte[4096];
        for (int op = 0; op < Table.Length; op++)
            if (Table[op].Exists) BinaryPrimitives.WriteUInt32LittleEndian(log.AsSpan(op * 4), Table[op].Effects);
        foreach ((byte op, uint effects) in IoCommands.Supported())
            BinaryPrimitives.WriteUInt32LittleEndian(log.AsSpan(1024 + op * 4), effects);
        return log;
    }

    internal static byte[] BuildAnaLog(Controller ctrl, bool groupsOnly)
    {
        Subsystem s = ctrl.Subsystem;
        var groups = new List<(uint GroupId, AnaState State)>();
        foreach (uint g in s.AnaGroupIds) groups.Add((g, ctrl.AnaState(g)));
        IReadOnlyList<Namespace> namespaces = s.Namespaces;
        int size = sizeof(AnaLogHeader) + groups.Count * sizeof(AnaGroupDescriptor) + (groupsOnly ? 0 : namespaces.Count * 4);
        var log = new byte[size];
        ref AnaLogHeader h = ref MemoryMarshal.AsRef<AnaLogHeader>(log.AsSpan());
        h.ChangeCount = s.AnaChangeCount;
        h.GroupCount = (ushort)groups.Count;
        int off = sizeof(AnaLogHeader);
        foreach ((uint gid, AnaState state) in groups)
        {
            ref AnaGroupDescriptor d = ref MemoryMarshal.AsRef<AnaGroupDescriptor>(log.AsSpan(off));
            off += sizeof(AnaGroupDescriptor);
            d.GroupId = gid;
            d.ChangeCount = s.AnaChangeCount;
            d.State = (byte)state;
            uint count = 0;
            foreach (Namespace ns in namespaces)
            {
                if (ns.AnaGroupId != gid) continue;
                count++;
                if (groupsOnly) continue;
                BinaryPrimitives.WriteUInt32LittleEndian(log.AsSpan(off), ns.Nsid);
                off += 4;
            }
            d.NamespaceCount = groupsOnly ? 0 : count;
        }
        return log;
    }
}
