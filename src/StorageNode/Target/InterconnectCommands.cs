using System.Buffers.Binary;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>Vendor-specific admin commands of the cluster interconnect (only on interconnect associations).</summary>
public static class InterconnectOpcode
{
    /// <summary>Register a host for relayed commands. Data (host to controller): host NQN (256) + host ID (16). DW0: handle.</summary>
    public const byte RegisterHost = 0xC1;
    /// <summary>The node's cluster descriptor (JSON). Data (controller to host). DW0: its length.</summary>
    public const byte GetDescriptor = 0xC2;
    /// <summary>Heartbeat. DW0/DW1: the responder's clock in 10 µs units.</summary>
    public const byte Heartbeat = 0xC4;
    /// <summary>
    /// Relay drain: the receiver drops the host's relayed commands whose host connection is gone and reports in
    /// DW0/DW1 how many of the host's commands it relayed on its current association. Data: as RegisterHost.
    /// </summary>
    public const byte RelayDrain = 0xC5;
    /// <summary>
    /// Relay open: the proxy announces it is about to relay the host's commands; the owner stops running the
    /// host's direct commands unfenced from then on. Sent before the first relayed command after a drain.
    /// Data: as RegisterHost.
    /// </summary>
    public const byte RelayOpen = 0xC9;

    public const int HostIdentityLength = 512;

    public static void WriteHostIdentity(Span<byte> data, string hostNqn, Guid hostId)
    {
        data.Clear();
        SpecText.WriteNulPadded(data[..256], hostNqn);
        hostId.TryWriteBytes(data.Slice(256, 16), bigEndian: true, out _);
    }

    public static (string HostNqn, Guid HostId) ReadHostIdentity(ReadOnlySpan<byte> data)
        => (SpecText.ReadNulTerminated(data[..256]), new Guid(data.Slice(256, 16), bigEndian: true));
}

/// <summary>What the target needs from the cluster manager to serve the partner's interconnect association.</summary>
public interface IInterconnectHandler
{
    /// <summary>True when the host NQN is the partner node's interconnect identity.</summary>
    bool IsPartnerIdentity(string hostNqn);

    /// <summary>A new association from the partner: older ones are fenced (closed).</summary>
    void OnPartnerAssociation(Controller association);

    /// <summary>An association from the partner ended (what was in flight on it is gone).</summary>
    void OnPartnerAssociationEnded(Controller association);

    byte[] Descriptor(Subsystem subsystem);

    /// <summary>This node's clock as the partner sees it (10 µs units), for heartbeat answers.</summary>
    long WireNow { get; }

    /// <summary>This node as the proxy: drop the host's orphaned relays, return how many it relayed on the current association.</summary>
    Task<long> DrainForPartnerAsync(Subsystem subsystem, string hostNqn, Guid hostId);
}

internal static unsafe class InterconnectCommands
{
    public static bool IsInterconnectOpcode(byte op) =>
        op is InterconnectOpcode.RegisterHost or InterconnectOpcode.GetDescriptor or InterconnectOpcode.Heartbeat
            or InterconnectOpcode.RelayDrain or InterconnectOpcode.RelayOpen;

    public static void Execute(NvmfRequest req, Controller ctrl)
    {
        IInterconnectHandler? ic = ctrl.Target.Interconnect;
        if (ic == null)
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidOpcode));
            return;
        }
        switch (req.Sqe.Opcode)
        {
            case InterconnectOpcode.RegisterHost:
            {
                if (req.Length < InterconnectOpcode.HostIdentityLength) { req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid)); return; }
                (string nqn, Guid id) = InterconnectOpcode.ReadHostIdentity(req.DataSpan);
                if (nqn.Length == 0) { req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField)); return; }
                RelayBinding b = ctrl.Target.RelayHosts.Register(ctrl, ctrl.Target.Gate.Get(nqn, id));
                req.Cqe.Dw0 = b.Handle;
                req.Complete();
                return;
            }
            case InterconnectOpcode.GetDescriptor:
            {
                byte[] json = ic.Descriptor(ctrl.Subsystem);
                if (json.Length > req.Length) { req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid)); return; }
                Span<byte> dest = req.DataSpan;
                dest.Clear();
                json.CopyTo(dest);
                req.Cqe.Dw0 = (uint)json.Length;
                req.Complete();
                return;
            }
            case InterconnectOpcode.Heartbeat:
            {
                ctrl.TouchKeepAlive();
                long now = ic.WireNow;
                req.Cqe.Dw0 = (uint)now;
                req.Cqe.Dw1 = (uint)(now >> 32);
                req.Complete();
                return;
            }
            case InterconnectOpcode.RelayOpen:
            {
                if (req.Length < InterconnectOpcode.HostIdentityLength) { req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid)); return; }
                (string nqn, Guid id) = InterconnectOpcode.ReadHostIdentity(req.DataSpan);
                ctrl.Target.Gate.OpenRelay(ctrl.Target.Gate.Get(nqn, id));
                req.Complete();
                return;
            }
            case InterconnectOpcode.RelayDrain:
            {
                if (req.Length < InterconnectOpcode.HostIdentityLength) { req.Fail(NvmeStatus.Generic(GenericStatus.DataSglLengthInvalid)); return; }
                (string nqn, Guid id) = InterconnectOpcode.ReadHostIdentity(req.DataSpan);
                Task<long> t = ic.DrainForPartnerAsync(ctrl.Subsystem, nqn, id);
                req.PendingOps = 1; // keeps the slot if the connection closes meanwhile
                t.ContinueWith(done => req.Qpair.Reactor.Post(() =>
                {
                    req.PendingOps = 0;
                    if (req.Qpair.IsClosed) req.Complete();
                    else if (done.IsCompletedSuccessfully)
                    {
                        req.Cqe.Dw0 = (uint)done.Result;
                        req.Cqe.Dw1 = (uint)(done.Result >> 32);
                        req.Complete();
                    }
                    else
                    {
                        req.Fail(NvmeStatus.Generic(GenericStatus.InternalError, dnr: false));
                    }
                }), TaskScheduler.Default);
                return;
            }
            default:
                req.Fail(NvmeStatus.Generic(GenericStatus.InvalidOpcode));
                return;
        }
    }
}
