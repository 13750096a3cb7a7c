using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>Connect, Property Get/Set and Disconnect.</summary>
internal static unsafe class FabricsCommands
{
    public static NvmeStatus Validate(NvmfRequest req)
    {
        QueuePair qp = req.Qpair;
        byte fctype = req.Sqe.FabricsType;
        switch (fctype)
        {
            case FabricsCommandType.Connect:
                if (qp.Connected) return NvmeStatus.Generic(GenericStatus.CommandSequenceError);
                if (req.Length != (uint)sizeof(ConnectData)) return NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid);
                return NvmeStatus.Success;
            case FabricsCommandType.PropertyGet:
            case FabricsCommandType.PropertySet:
                if (!qp.Connected) return NvmeStatus.Generic(GenericStatus.CommandSequenceError);
                if (qp.Qid != 0) return NvmeStatus.Generic(GenericStatus.InvalidOpcode);
                return NvmeStatus.Success;
            case FabricsCommandType.Disconnect:
                if (!qp.Connected) return NvmeStatus.Generic(GenericStatus.CommandSequenceError);
                if (qp.Qid == 0) return NvmeStatus.Generic(GenericStatus.InvalidOpcode);
                return NvmeStatus.Success;
            default:
                return qp.Connected ? NvmeStatus.Generic(GenericStatus.InvalidOpcode) : NvmeStatus.Generic(GenericStatus.CommandSequenceError);
        }
    }

    public static void Execute(NvmfRequest req)
    {
        switch (req.Sqe.FabricsType)
        {
            case FabricsCommandType.Connect: Connect(req); break;
            case FabricsCommandType.PropertyGet: PropertyGet(req); break;
            case FabricsCommandType.PropertySet: PropertySet(req); break;
            case FabricsCommandType.Disconnect:
                req.Complete();
                req.Qpair.Disconnect("host sent Disconnect");
                break;
            default: req.Fail(NvmeStatus.Generic(GenericStatus.InvalidOpcode)); break;
        }
    }

    private static void FailInvalidParameter(NvmfRequest req, bool inData, ushort offset)
    {
        req.Cqe.Dw0 = offset | (inData ? ConnectField.InData : 0);
        req.Fail(NvmeStatus.CommandSpecific(FabricsStatus.ConnectInvalidParameters));
    }

    private static void Connect(NvmfRequest req)
    {
        QueuePair qp = req.Qpair;
        NvmfTarget target = qp.Target;
        ref ConnectCommand cmd = ref Unsafe.As<SubmissionQueueEntry, ConnectCommand>(ref req.Sqe);
        ref ConnectData data = ref Unsafe.AsRef<ConnectData>(req.Data);

        if (cmd.RecordFormat != 0)
        {
            req.Fail(NvmeStatus.CommandSpecific(FabricsStatus.IncompatibleFormat));
            return;
        }
        string subNqn = SpecText.ReadNulTerminated(new ReadOnlySpan<byte>(Unsafe.AsPointer(ref data.SubNqn[0]), 256));
        string hostNqn = SpecText.ReadNulTerminated(new ReadOnlySpan<byte>(Unsafe.AsPointer(ref data.HostNqn[0]), 256));
        var hostId = new Guid(new ReadOnlySpan<byte>(Unsafe.AsPointer(ref data.HostId[0]), 16), bigEndian: true);

        Subsystem? subsystem = target.FindSubsystem(subNqn);
        if (subsystem == null)
        {
            target.Log.LogWarning("connect from {Peer}: unknown subsystem '{Nqn}'", qp.PeerAddress, subNqn);
            FailInvalidParameter(req, inData: true, offset: ConnectField.SubNqn);
            return;
        }
        bool interconnect = qp.Listener.Role == ListenerRole.Interconnect;
        if (interconnect)
        {
            string? why = subsystem.IsDiscovery ? "no discovery on the interconnect"
                : target.Interconnect == null ? "this node is not in a pair"
                : target.Interconnect.RefusePartner(hostNqn, hostId, qp.PeerAddress);
            if (why != null)
            {
                target.Log.LogWarning("interconnect connect from {Peer} refused: {Why}", qp.PeerAddress, why);
                req.Fail(NvmeStatus.CommandSpecific(FabricsStatus.ConnectInvalidHost));
                return;
            }
        }
        if (!interconnect && !subsystem.HostAllowed(hostNqn))
        {
            target.Log.LogWarning("connect from {Peer}: host '{Host}' is not allowed on {Nqn}", qp.PeerAddress, hostNqn, subNqn);
            req.Fail(NvmeStatus.CommandSpecific(FabricsStatus.ConnectInvalidHost));
            return;
        }

        uint sqSize = (uint)cmd.SqSize + 1;
        bool disableSqFlow = (cmd.Cattr & ConnectField.CattrDisableSqFlowControl) != 0;
        if (cmd.Qid == 0)
        {
            if (cmd.SqSize == 0 || sqSize > (uint)target.Options.AdminQueueDepth)
            {
                FailInvalidParameter(req, inData: false, offset: ConnectField.SqSize);
                return;
            }
            if (data.Cntlid != ConnectField.AnyController)
            {
                // Dynamic controller model only: the host must ask for "any controller".
                FailInvalidParameter(req, inData: true, offset: ConnectField.Cntlid);
                return;
            }
            uint kato = cmd.Kato;
            Controller? ctrl = subsystem.CreateController(id => new Controller(target, subsystem, id, hostNqn, hostId, qp, kato), interconnect ? null : hostNqn);
            if (ctrl == null && !interconnect && !subsystem.HostAllowed(hostNqn))
            {
                target.Log.LogWarning("connect from {Peer}: host '{Host}' is not allowed on {Nqn} (taken off while it connected)", qp.PeerAddress, hostNqn, subNqn);
                req.Fail(NvmeStatus.CommandSpecific(FabricsStatus.ConnectInvalidHost));
                return;
            }
            if (ctrl == null)
            {
                req.Fail(NvmeStatus.CommandSpecific(FabricsStatus.ControllerBusy));
                return;
            }
            qp.Qid = 0;
            qp.SqSize = (ushort)sqSize;
            qp.SqFlowControlDisabled = disableSqFlow;
            qp.Controller = ctrl;
            req.Cqe.Dw0 = ctrl.Cntlid;
            target.Log.LogInformation("{Peer}: admin queue connected: {Ctrl}, KATO {Kato} ms", qp.PeerAddress, ctrl, cmd.Kato);
            if (hostNqn.Length == 0)
            {
                // As SPDK's target and Linux nvmet do: SPDK's host (spdk_nvme_perf, spdk_nvme_identify) sends no Host NQN
                // unless given one. Such a host is allowed only where any host is, and is known by its Host Identifier.
                target.Log.LogInformation("{Peer}: {Ctrl}: the host sent an empty Host NQN; accepted (any host is allowed on {Nqn}), host ID {HostId}",
                    qp.PeerAddress, ctrl, subNqn, hostId);
            }
            // Before the Connect completes: the pair's state for the association exists before any of its I/O can.
            target.OnControllerCreated(ctrl);
            req.Complete();
            return;
        }

        Controller? owner = subsystem.FindController(data.Cntlid);
        if (owner == null || owner.Destroyed)
        {
            FailInvalidParameter(req, inData: true, offset: ConnectField.Cntlid);
            return;
        }
        if (owner.HostNqn != hostNqn)
        {
            FailInvalidParameter(req, inData: true, offset: ConnectField.HostNqn);
            return;
        }
        if (owner.HostId != hostId)
        {
            FailInvalidParameter(req, inData: true, offset: ConnectField.HostId);
            return;
        }
        if (owner.AdminQueue.Listener != qp.Listener)
        {
            // All queues of a controller go through the port its admin queue used.
            target.Log.LogWarning("{Peer}: I/O queue connect to {Ctrl} through another port ({Port})", qp.PeerAddress, owner, qp.Listener.Port);
            FailInvalidParameter(req, inData: true, offset: ConnectField.Cntlid);
            return;
        }
        if (cmd.SqSize == 0 || sqSize > (uint)target.Options.MaxQueueDepth)
        {
            FailInvalidParameter(req, inData: false, offset: ConnectField.SqSize);
            return;
        }
        qp.Qid = cmd.Qid;
        qp.SqSize = (ushort)sqSize;
        qp.SqFlowControlDisabled = disableSqFlow;
        if (!owner.TryAddIoQueue(cmd.Qid, qp, out string? error))
        {
            target.Log.LogWarning("{Peer}: I/O queue connect to {Ctrl} refused: {Error}", qp.PeerAddress, owner, error);
            if (!owner.Enabled) req.Fail(NvmeStatus.Generic(GenericStatus.CommandSequenceError));
            else FailInvalidParameter(req, inData: false, offset: ConnectField.Qid);
            qp.Qid = 0;
            return;
        }
        qp.Controller = owner;
        req.Cqe.Dw0 = owner.Cntlid;
        req.Complete();
    }

    private static void PropertyGet(NvmfRequest req)
    {
        ref PropertyCommand cmd = ref Unsafe.As<SubmissionQueueEntry, PropertyCommand>(ref req.Sqe);
        Controller ctrl = req.Qpair.Controller!;
        int size = cmd.Size;
        uint offset = cmd.Offset;
        if (Property.Size(offset) != size && !(offset == Property.Cap && size == 8))
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
            return;
        }
        TargetOptions o = req.Qpair.Target.Options;
        ulong value = offset switch
        {
            Property.Cap => CapRegister.Make((ushort)(o.MaxQueueDepth - 1), 15),
            Property.Vs => NvmeVersion.V1_4,
            Property.Cc => ctrl.Cc,
            Property.Csts => ctrl.Csts,
            _ => 0,
        };
        if (offset == Property.Nssr)
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
            return;
        }
        req.Cqe.Dw0 = (uint)value;
        req.Cqe.Dw1 = (uint)(value >> 32);
        req.Complete();
    }

    private static void PropertySet(NvmfRequest req)
    {
        ref PropertyCommand cmd = ref Unsafe.As<SubmissionQueueEntry, PropertyCommand>(ref req.Sqe);
        Controller ctrl = req.Qpair.Controller!;
        int size = cmd.Size;
        if (cmd.Offset != Property.Cc || size != 4)
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
            return;
        }
        ctrl.WriteCc((uint)cmd.Value);
        req.Complete();
    }
}
