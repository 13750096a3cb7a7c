using System.Runtime.CompilerServices;
using StorageNode.Nvme.Spec;
using StorageNode.Nvme.Tcp;

namespace StorageNode.Nvme.Tests;

/// <summary>Sizes of every wire structure and offsets of the fields the specifications name.</summary>
public unsafe class LayoutTests
{
    private static int Off<T>(ref T s, ref byte field) where T : unmanaged
        => (int)Unsafe.ByteOffset(ref Unsafe.As<T, byte>(ref s), ref field);

    [Fact]
    public void StructSizes()
    {
        Assert.Equal(64, sizeof(SubmissionQueueEntry));
        Assert.Equal(16, sizeof(CompletionQueueEntry));
        Assert.Equal(16, sizeof(SglDescriptor));
        Assert.Equal(64, sizeof(ConnectCommand));
        Assert.Equal(64, sizeof(PropertyCommand));
        Assert.Equal(1024, sizeof(ConnectData));
        Assert.Equal(4096, sizeof(IdentifyController));
        Assert.Equal(4096, sizeof(IdentifyNamespace));
        Assert.Equal(64, sizeof(ErrorLogEntry));
        Assert.Equal(512, sizeof(SmartLog));
        Assert.Equal(512, sizeof(FirmwareSlotLog));
        Assert.Equal(16, sizeof(AnaLogHeader));
        Assert.Equal(32, sizeof(AnaGroupDescriptor));
        Assert.Equal(1024, sizeof(DiscoveryLogHeader));
        Assert.Equal(1024, sizeof(DiscoveryLogEntry));
        Assert.Equal(8, sizeof(CommonHeader));
        Assert.Equal(128, sizeof(ICReqPdu));
        Assert.Equal(128, sizeof(ICRespPdu));
        Assert.Equal(24, sizeof(TermReqPdu));
        Assert.Equal(72, sizeof(CapsuleCmdPdu));
        Assert.Equal(24, sizeof(CapsuleRespPdu));
        Assert.Equal(24, sizeof(H2CDataPdu));
        Assert.Equal(24, sizeof(C2HDataPdu));
        Assert.Equal(24, sizeof(R2TPdu));
    }

    [Fact]
    public void SubmissionAndCompletionEntries()
    {
        SubmissionQueueEntry s = default;
        Assert.Equal(0, Off(ref s, ref s.Opcode));
        Assert.Equal(1, Off(ref s, ref s.Flags));
        Assert.Equal(2, Off(ref s, ref Unsafe.As<ushort, byte>(ref s.Cid)));
        Assert.Equal(4, Off(ref s, ref Unsafe.As<uint, byte>(ref s.Nsid)));
        Assert.Equal(16, Off(ref s, ref Unsafe.As<ulong, byte>(ref s.Mptr)));
        Assert.Equal(24, Off(ref s, ref Unsafe.As<SglDescriptor, byte>(ref s.Dptr)));
        Assert.Equal(40, Off(ref s, ref Unsafe.As<uint, byte>(ref s.Cdw10)));
        Assert.Equal(44, Off(ref s, ref Unsafe.As<uint, byte>(ref s.Cdw11)));
        Assert.Equal(48, Off(ref s, ref Unsafe.As<uint, byte>(ref s.Cdw12)));
        Assert.Equal(60, Off(ref s, ref Unsafe.As<uint, byte>(ref s.Cdw15)));

        CompletionQueueEntry c = default;
        Assert.Equal(0, Off(ref c, ref Unsafe.As<uint, byte>(ref c.Dw0)));
        Assert.Equal(8, Off(ref c, ref Unsafe.As<ushort, byte>(ref c.SqHead)));
        Assert.Equal(10, Off(ref c, ref Unsafe.As<ushort, byte>(ref c.SqId)));
        Assert.Equal(12, Off(ref c, ref Unsafe.As<ushort, byte>(ref c.Cid)));
        Assert.Equal(14, Off(ref c, ref Unsafe.As<ushort, byte>(ref c.Status)));

        SglDescriptor g = default;
        Assert.Equal(8, Off(ref g, ref Unsafe.As<uint, byte>(ref g.Length)));
        Assert.Equal(15, Off(ref g, ref g.Identifier));
        Assert.Equal(0x01, SglDescriptor.InCapsuleDataBlock);
        Assert.Equal(0x5A, SglDescriptor.TransportDataBlock);
    }

    [Fact]
    public void StatusFieldEncoding()
    {
        // SC in bits 8:1, SCT in 11:9, DNR in bit 15 of CQE DW3 upper half.
        var st = NvmeStatus.Make(StatusCodeType.PathRelated, PathStatus.AnaInaccessible, dnr: true);
        Assert.Equal((ushort)((0x02 << 1) | (3 << 9) | (1 << 15)), st.ToCqeStatus());
        var cqe = new CompletionQueueEntry { Status = st.ToCqeStatus() };
        Assert.Equal(StatusCodeType.PathRelated, cqe.StatusField.Type);
        Assert.Equal(PathStatus.AnaInaccessible, cqe.StatusField.Code);
        Assert.True(cqe.StatusField.DoNotRetry);
    }

    [Fact]
    public void FabricsCommands()
    {
        ConnectCommand c = default;
        Assert.Equal(4, Off(ref c, ref c.FabricsType));
        Assert.Equal(24, Off(ref c, ref Unsafe.As<SglDescriptor, byte>(ref c.Sgl1)));
        Assert.Equal(40, Off(ref c, ref Unsafe.As<ushort, byte>(ref c.RecordFormat)));
        Assert.Equal(42, Off(ref c, ref Unsafe.As<ushort, byte>(ref c.Qid)));
        Assert.Equal(44, Off(ref c, ref Unsafe.As<ushort, byte>(ref c.SqSize)));
        Assert.Equal(46, Off(ref c, ref c.Cattr));
        Assert.Equal(48, Off(ref c, ref Unsafe.As<uint, byte>(ref c.Kato)));

        PropertyCommand p = default;
        Assert.Equal(40, Off(ref p, ref p.Attributes));
        Assert.Equal(44, Off(ref p, ref Unsafe.As<uint, byte>(ref p.Offset)));
        Assert.Equal(48, Off(ref p, ref Unsafe.As<ulong, byte>(ref p.Value)));

        ConnectData d = default;
        Assert.Equal(0, Off(ref d, ref d.HostId[0]));
        Assert.Equal(16, Off(ref d, ref Unsafe.As<ushort, byte>(ref d.Cntlid)));
        Assert.Equal(256, Off(ref d, ref d.SubNqn[0]));
        Assert.Equal(512, Off(ref d, ref d.HostNqn[0]));
    }

    [Fact]
    public void IdentifyControllerFields()
    {
        IdentifyController id = default;
        (string Name, int Actual, int Spec)[] fields =
        [
            ("VID", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Vid)), 0),
            ("SN", Off(ref id, ref id.Sn[0]), 4),
            ("MN", Off(ref id, ref id.Mn[0]), 24),
            ("FR", Off(ref id, ref id.Fr[0]), 64),
            ("RAB", Off(ref id, ref id.Rab), 72),
            ("IEEE", Off(ref id, ref id.Ieee[0]), 73),
            ("CMIC", Off(ref id, ref id.Cmic), 76),
            ("MDTS", Off(ref id, ref id.Mdts), 77),
            ("CNTLID", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Cntlid)), 78),
            ("VER", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Ver)), 80),
            ("OAES", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Oaes)), 92),
            ("CTRATT", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Ctratt)), 96),
            ("CNTRLTYPE", Off(ref id, ref id.Cntrltype), 111),
            ("FGUID", Off(ref id, ref id.Fguid[0]), 112),
            ("OACS", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Oacs)), 256),
            ("ACL", Off(ref id, ref id.Acl), 258),
            ("AERL", Off(ref id, ref id.Aerl), 259),
            ("FRMW", Off(ref id, ref id.Frmw), 260),
            ("LPA", Off(ref id, ref id.Lpa), 261),
            ("ELPE", Off(ref id, ref id.Elpe), 262),
            ("NPSS", Off(ref id, ref id.Npss), 263),
            ("WCTEMP", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Wctemp)), 266),
            ("TNVMCAP", Off(ref id, ref id.Tnvmcap[0]), 280),
            ("KAS", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Kas)), 320),
            ("ANATT", Off(ref id, ref id.Anatt), 342),
            ("ANACAP", Off(ref id, ref id.Anacap), 343),
            ("ANAGRPMAX", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Anagrpmax)), 344),
            ("NANAGRPID", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Nanagrpid)), 348),
            ("SQES", Off(ref id, ref id.Sqes), 512),
            ("CQES", Off(ref id, ref id.Cqes), 513),
            ("MAXCMD", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Maxcmd)), 514),
            ("NN", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Nn)), 516),
            ("ONCS", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Oncs)), 520),
            ("FUSES", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Fuses)), 522),
            ("FNA", Off(ref id, ref id.Fna), 524),
            ("VWC", Off(ref id, ref id.Vwc), 525),
            ("AWUN", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Awun)), 526),
            ("AWUPF", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Awupf)), 528),
            ("SGLS", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Sgls)), 536),
            ("MNAN", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Mnan)), 540),
            ("SUBNQN", Off(ref id, ref id.Subnqn[0]), 768),
            ("IOCCSZ", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Ioccsz)), 1792),
            ("IORCSZ", Off(ref id, ref Unsafe.As<uint, byte>(ref id.Iorcsz)), 1796),
            ("ICDOFF", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Icdoff)), 1800),
            ("FCATT", Off(ref id, ref id.Fcatt), 1802),
            ("MSDBD", Off(ref id, ref id.Msdbd), 1803),
            ("OFCS", Off(ref id, ref Unsafe.As<ushort, byte>(ref id.Ofcs)), 1804),
            ("PSD0", Off(ref id, ref id.Psd[0]), 2048),
            ("VS", Off(ref id, ref id.Vs[0]), 3072),
        ];
        foreach (var (name, actual, spec) in fields) Assert.True(actual == spec, $"{name} at {actual}, spec says {spec}");
    }

    [Fact]
    public void IdentifyNamespaceFields()
    {
        IdentifyNamespace ns = default;
        Assert.Equal(0, Off(ref ns, ref Unsafe.As<ulong, byte>(ref ns.Nsze)));
        Assert.Equal(8, Off(ref ns, ref Unsafe.As<ulong, byte>(ref ns.Ncap)));
        Assert.Equal(16, Off(ref ns, ref Unsafe.As<ulong, byte>(ref ns.Nuse)));
        Assert.Equal(24, Off(ref ns, ref ns.Nsfeat));
        Assert.Equal(25, Off(ref ns, ref ns.Nlbaf));
        Assert.Equal(26, Off(ref ns, ref ns.Flbas));
        Assert.Equal(30, Off(ref ns, ref ns.Nmic));
        Assert.Equal(33, Off(ref ns, ref ns.Dlfeat));
        Assert.Equal(48, Off(ref ns, ref ns.Nvmcap[0]));
        Assert.Equal(64, Off(ref ns, ref Unsafe.As<ushort, byte>(ref ns.Npwg)));
        Assert.Equal(92, Off(ref ns, ref Unsafe.As<uint, byte>(ref ns.Anagrpid)));
        Assert.Equal(99, Off(ref ns, ref ns.Nsattr));
        Assert.Equal(104, Off(ref ns, ref ns.Nguid[0]));
        Assert.Equal(120, Off(ref ns, ref ns.Eui64[0]));
        Assert.Equal(128, Off(ref ns, ref Unsafe.As<uint, byte>(ref ns.Lbaf[0])));
        Assert.Equal(3712, Off(ref ns, ref ns.Vs[0]));
    }

    [Fact]
    public void LogPageFields()
    {
        ErrorLogEntry e = default;
        Assert.Equal(8, Off(ref e, ref Unsafe.As<ushort, byte>(ref e.SqId)));
        Assert.Equal(10, Off(ref e, ref Unsafe.As<ushort, byte>(ref e.Cid)));
        Assert.Equal(12, Off(ref e, ref Unsafe.As<ushort, byte>(ref e.Status)));
        Assert.Equal(16, Off(ref e, ref Unsafe.As<ulong, byte>(ref e.Lba)));
        Assert.Equal(24, Off(ref e, ref Unsafe.As<uint, byte>(ref e.Nsid)));
        Assert.Equal(29, Off(ref e, ref e.TrType));

        SmartLog s = default;
        Assert.Equal(1, Off(ref s, ref Unsafe.As<ushort, byte>(ref s.CompositeTemperature)));
        Assert.Equal(3, Off(ref s, ref s.AvailableSpare));
        Assert.Equal(32, Off(ref s, ref Unsafe.As<ulong, byte>(ref s.DataUnitsRead)));
        Assert.Equal(48, Off(ref s, ref Unsafe.As<ulong, byte>(ref s.DataUnitsWritten)));
        Assert.Equal(64, Off(ref s, ref Unsafe.As<ulong, byte>(ref s.HostReadCommands)));
        Assert.Equal(80, Off(ref s, ref Unsafe.As<ulong, byte>(ref s.HostWriteCommands)));
        Assert.Equal(128, Off(ref s, ref Unsafe.As<ulong, byte>(ref s.PowerOnHours)));
        Assert.Equal(176, Off(ref s, ref Unsafe.As<ulong, byte>(ref s.ErrorLogEntries)));

        FirmwareSlotLog f = default;
        Assert.Equal(8, Off(ref f, ref f.Frs[0]));

        AnaLogHeader ah = default;
        Assert.Equal(8, Off(ref ah, ref Unsafe.As<ushort, byte>(ref ah.GroupCount)));
        AnaGroupDescriptor ad = default;
        Assert.Equal(4, Off(ref ad, ref Unsafe.As<uint, byte>(ref ad.NamespaceCount)));
        Assert.Equal(8, Off(ref ad, ref Unsafe.As<ulong, byte>(ref ad.ChangeCount)));
        Assert.Equal(16, Off(ref ad, ref ad.State));

        DiscoveryLogHeader dh = default;
        Assert.Equal(8, Off(ref dh, ref Unsafe.As<ulong, byte>(ref dh.RecordCount)));
        Assert.Equal(16, Off(ref dh, ref Unsafe.As<ushort, byte>(ref dh.RecordFormat)));
        DiscoveryLogEntry de = default;
        Assert.Equal(2, Off(ref de, ref de.SubType));
        Assert.Equal(4, Off(ref de, ref Unsafe.As<ushort, byte>(ref de.PortId)));
        Assert.Equal(6, Off(ref de, ref Unsafe.As<ushort, byte>(ref de.Cntlid)));
        Assert.Equal(8, Off(ref de, ref Unsafe.As<ushort, byte>(ref de.AsqSz)));
        Assert.Equal(32, Off(ref de, ref de.TrSvcId[0]));
        Assert.Equal(256, Off(ref de, ref de.SubNqn[0]));
        Assert.Equal(512, Off(ref de, ref de.TrAddr[0]));
        Assert.Equal(768, Off(ref de, ref de.Tsas[0]));
    }

    [Fact]
    public void TcpPduFields()
    {
        CommonHeader ch = default;
        Assert.Equal(1, Off(ref ch, ref ch.Flags));
        Assert.Equal(2, Off(ref ch, ref ch.Hlen));
        Assert.Equal(3, Off(ref ch, ref ch.Pdo));
        Assert.Equal(4, Off(ref ch, ref Unsafe.As<uint, byte>(ref ch.Plen)));

        ICReqPdu icreq = default;
        Assert.Equal(8, Off(ref icreq, ref Unsafe.As<ushort, byte>(ref icreq.Pfv)));
        Assert.Equal(10, Off(ref icreq, ref icreq.Hpda));
        Assert.Equal(11, Off(ref icreq, ref icreq.Digest));
        Assert.Equal(12, Off(ref icreq, ref Unsafe.As<uint, byte>(ref icreq.MaxR2T)));
        ICRespPdu icresp = default;
        Assert.Equal(10, Off(ref icresp, ref icresp.Cpda));
        Assert.Equal(11, Off(ref icresp, ref icresp.Digest));
        Assert.Equal(12, Off(ref icresp, ref Unsafe.As<uint, byte>(ref icresp.MaxH2CData)));

        TermReqPdu t = default;
        Assert.Equal(8, Off(ref t, ref Unsafe.As<ushort, byte>(ref t.Fes)));
        Assert.Equal(10, Off(ref t, ref Unsafe.As<uint, byte>(ref t.Fei)));

        CapsuleCmdPdu cmd = default;
        Assert.Equal(8, Off(ref cmd, ref Unsafe.As<SubmissionQueueEntry, byte>(ref cmd.Sqe)));
        CapsuleRespPdu resp = default;
        Assert.Equal(8, Off(ref resp, ref Unsafe.As<CompletionQueueEntry, byte>(ref resp.Cqe)));

        H2CDataPdu h2c = default;
        Assert.Equal(8, Off(ref h2c, ref Unsafe.As<ushort, byte>(ref h2c.Cccid)));
        Assert.Equal(10, Off(ref h2c, ref Unsafe.As<ushort, byte>(ref h2c.Ttag)));
        Assert.Equal(12, Off(ref h2c, ref Unsafe.As<uint, byte>(ref h2c.Datao)));
        Assert.Equal(16, Off(ref h2c, ref Unsafe.As<uint, byte>(ref h2c.Datal)));
        C2HDataPdu c2h = default;
        Assert.Equal(8, Off(ref c2h, ref Unsafe.As<ushort, byte>(ref c2h.Cccid)));
        Assert.Equal(12, Off(ref c2h, ref Unsafe.As<uint, byte>(ref c2h.Datao)));
        Assert.Equal(16, Off(ref c2h, ref Unsafe.As<uint, byte>(ref c2h.Datal)));
        R2TPdu r2t = default;
        Assert.Equal(8, Off(ref r2t, ref Unsafe.As<ushort, byte>(ref r2t.Cccid)));
        Assert.Equal(10, Off(ref r2t, ref Unsafe.As<ushort, byte>(ref r2t.Ttag)));
        Assert.Equal(12, Off(ref r2t, ref Unsafe.As<uint, byte>(ref r2t.R2To)));
        Assert.Equal(16, Off(ref r2t, ref Unsafe.As<uint, byte>(ref r2t.R2Tl)));

        Assert.Equal(PduSize.CapsuleCmd, PduSize.HeaderLength(PduType.CapsuleCmd));
        Assert.Equal(0, PduSize.HeaderLength((PduType)0x0A));
    }
}
