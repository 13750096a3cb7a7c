using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using StorageNode.Nvme.Spec;

namespace StorageNode.Pair;

/// <summary>
/// The vendor-specific admin commands of the interconnect (accepted only on interconnect associations). As for every
/// NVMe opcode, the low two bits give the data direction: 01 host to controller, 10 controller to host, 00 none.
/// </summary>
public static class InterconnectOpcode
{
    /// <summary>The version both nodes must speak (compared in the cluster descriptors).</summary>
    public const int ProtocolVersion = 10;

    /// <summary>Register a host for relayed commands. Data: <see cref="HostIdentity"/>. DW0: its handle (the same one again for a host already registered on this association).</summary>
    public const byte RegisterHost = 0xC1;
    /// <summary>The node's cluster descriptor (JSON). Data (controller to host). DW0: its length.</summary>
    public const byte GetDescriptor = 0xC2;
    /// <summary>Heartbeat. DW0/DW1: the responder's <see cref="PairClock"/> wire clock (10 µs units).</summary>
    public const byte Heartbeat = 0xC4;
    /// <summary>
    /// Heartbeat that also renews leases (<see cref="MirrorLease"/>): CDW10 "until", on the responder's clock; the data
    /// lists (NSID, sequence number) of the sender's "in sync" words it renews. Answered as <see cref="Heartbeat"/>.
    /// </summary>
    public const byte HeartbeatRenewing = 0xC5;
    /// <summary>
    /// Relay drain, from the owner to the proxy: close the host's relay and say what was relayed. CDW10-13: the
    /// <see cref="HostKey"/>; CDW14/15: the drain id. Data (controller to host): a <see cref="DrainAnswer"/>.
    /// </summary>
    public const byte RelayDrain = 0xC6;
    /// <summary>
    /// Relay open, from the proxy to the owner, before the first relayed command after a drain. CDW10: the handle;
    /// CDW11/12: the last drain id the proxy installed for the host; CDW13/14: the proxy's incarnation. DW0: the
    /// owner's last drain id; DW1: when the host's last command through its own associations arrived at the owner (the
    /// owner's wire clock, 10 µs units modulo 2^32; 0: never) — the proxy relays nothing that may have arrived before
    /// it. Status <see cref="InterconnectStatus.FenceFirst"/> (DW0: the drain id to install) or <see cref="InterconnectStatus.NotNow"/>.
    /// </summary>
    public const byte RelayOpen = 0xC8;
    /// <summary>Unregister a host (its last association on the proxy ended). CDW10: the handle.</summary>
    public const byte UnregisterHost = 0xCC;
    /// <summary>
    /// Reservation notice, from a namespace's owner to the partner: a reservation notification for a host's controllers
    /// there, and the namespace's Persist Through Power Loss state (<see cref="ReservationNoticeFields"/>).
    /// </summary>
    public const byte ReservationNotice = 0xD0;
    /// <summary>
    /// Replica state, from a namespace's owner to the partner (<c>Cluster:Mirror</c>; <see cref="ReplicaStateFields"/>):
    /// what the partner's replica is now (out of sync, resyncing, in sync), with the owner's incarnation, the epoch and a
    /// sequence number. Completed once applied (or found stale).
    /// </summary>
    public const byte ReplicaState = 0xD4;
    /// <summary>
    /// Giveback, from a group's owner to the partner (<see cref="GivebackFields"/>): the owner has stopped serving the
    /// group and drained it, and the partner's replicas are in sync; the partner owns the group from the term given once
    /// it has kept that term. DW0: a <see cref="GivebackAnswer"/>.
    /// </summary>
    public const byte Giveback = 0xD5;

    public static bool IsVendor(byte opcode) => opcode is RegisterHost or GetDescriptor or Heartbeat or HeartbeatRenewing or RelayDrain or RelayOpen or UnregisterHost
        or ReservationNotice or ReplicaState or Giveback;
}

/// <summary>Vendor-specific statuses (SCT 7) of the interconnect's commands.</summary>
public static class InterconnectStatus
{
    /// <summary>Relay open refused until the proxy installed the drain fence whose id is in DW0/DW1.</summary>
    public static readonly NvmeStatus FenceFirst = NvmeStatus.Make(StatusCodeType.VendorSpecific, 0x01);
    /// <summary>Relay open refused for now (the owner is switching the host back to a direct path); ask again.</summary>
    public static readonly NvmeStatus NotNow = NvmeStatus.Make(StatusCodeType.VendorSpecific, 0x02);
}

/// <summary>A host's identity in the pair, sent with a registration: host NQN (256 bytes, NUL-padded) and host ID (16).</summary>
public static class HostIdentity
{
    public const int Length = 512;

    public static void Write(Span<byte> data, string hostNqn, Guid hostId)
    {
        data.Clear();
        SpecText.WriteNulPadded(data[..256], hostNqn);
        hostId.TryWriteBytes(data.Slice(256, 16), bigEndian: true, out _);
    }

    public static (string HostNqn, Guid HostId) Read(ReadOnlySpan<byte> data)
        => (SpecText.ReadNulTerminated(data[..256]), new Guid(data.Slice(256, 16), bigEndian: true));
}

/// <summary>
/// A host (host NQN + host ID) as a 128-bit key (the first half of SHA-256 over both) that fits in four command
/// dwords, so the owner can name the host in a drain that moves data the other way.
/// </summary>
public readonly record struct HostKey(ulong High, ulong Low)
{
    public static HostKey For(string hostNqn, Guid hostId)
    {
        Span<byte> input = stackalloc byte[Encoding.UTF8.GetMaxByteCount(hostNqn.Length) + 17];
        int n = Encoding.UTF8.GetBytes(hostNqn, input);
        input[n++] = 0;
        hostId.TryWriteBytes(input.Slice(n, 16), bigEndian: true, out _);
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(input[..(n + 16)], hash);
        return new HostKey(BinaryPrimitives.ReadUInt64BigEndian(hash), BinaryPrimitives.ReadUInt64BigEndian(hash[8..]));
    }

    public void WriteTo(ref SubmissionQueueEntry sqe)
    {
        sqe.Cdw10 = (uint)(High >> 32);
        sqe.Cdw11 = (uint)High;
        sqe.Cdw12 = (uint)(Low >> 32);
        sqe.Cdw13 = (uint)Low;
    }

    public static HostKey ReadFrom(in SubmissionQueueEntry sqe)
        => new(((ulong)sqe.Cdw10 << 32) | sqe.Cdw11, ((ulong)sqe.Cdw12 << 32) | sqe.Cdw13);

    public override string ToString() => $"{High:x16}{Low:x16}";
}

/// <summary>
/// A <see cref="InterconnectOpcode.ReservationNotice"/>'s dwords: CDW10-13 the Host Identifier the notification is for
/// (all zero: none, only the state), CDW14 the NSID, CDW15 bits 7:0 the notification type (0: none), bit 8 the
/// namespace's PTPL.
/// </summary>
/// <summary>
/// The replica state notice's fields: CDW10 NSID, CDW11 bits 7:0 the word (<see cref="Target.ReplicaWord"/>), bit 8
/// "overwrite" (an operator decided that the owner's data replaces what the replica holds), CDW12 the epoch, CDW13 the
/// sequence number, CDW14/15 the owner's incarnation, CDW2/3 the owner's data generation.
/// </summary>
public static class ReplicaStateFields
{
    public const uint Overwrite = 1u << 8;
    /// <summary>CDW11 bit 9: a resync the owner would make incremental: its dirty-region record is kept against the epoch in MPTR bits 31:0.</summary>
    public const uint Incremental = 1u << 9;

    public static void Set(ref SubmissionQueueEntry sqe, uint nsid, Target.ReplicaWord word, uint epoch, uint sequence, long incarnation, long generation, bool overwrite,
        uint? baseEpoch = null)
    {
        sqe.Opcode = InterconnectOpcode.ReplicaState;
        sqe.Cdw10 = nsid;
        sqe.Cdw11 = (uint)word | (overwrite ? Overwrite : 0) | (baseEpoch != null ? Incremental : 0);
        sqe.Mptr = baseEpoch ?? 0;
        sqe.Cdw12 = epoch;
        sqe.Cdw13 = sequence;
        sqe.Cdw14 = (uint)incarnation;
        sqe.Cdw15 = (uint)(incarnation >> 32);
        sqe.Cdw2 = (uint)generation;
        sqe.Cdw3 = (uint)(generation >> 32);
    }

    public static (uint Nsid, uint Word, bool Overwrite, uint Epoch, uint Sequence, long Incarnation, long Generation) Read(in SubmissionQueueEntry sqe)
        => (sqe.Cdw10, sqe.Cdw11 & 0xFF, (sqe.Cdw11 & Overwrite) != 0, sqe.Cdw12, sqe.Cdw13, sqe.Cdw14 | ((long)sqe.Cdw15 << 32), sqe.Cdw2 | ((long)sqe.Cdw3 << 32));

    /// <summary>The epoch an incremental resync would be against (null: the owner asks for none).</summary>
    public static uint? BaseEpoch(in SubmissionQueueEntry sqe) => (sqe.Cdw11 & Incremental) != 0 ? (uint)sqe.Mptr : null;

    /// <summary>DW0 bit of the answer to a resync: it must copy everything (the replica is no base for an incremental one).</summary>
    public const uint Whole = 4;

    /// <summary>DW0 bit of the answer: a resync refused: the replica holds a consistent copy of another data generation (DW1: its low 32 bits).</summary>
    public const uint Refused = 2;

/// <summary>DW0 bit of the answer: the word was applied (clear: older than what the keeper holds, ignored).</summary>
    public const uint Applied = 1;
}

/// <summary>The partner's answer to a <see cref="InterconnectOpcode.Giveback"/> (DW0).</summary>
public enum GivebackAnswer : uint
{
    /// <summary>The partner kept the term and serves the group from its replicas (not 0: an unset DW0 says nothing).</summary>
    Taken = 3,
    /// <summary>A replica's knowledge is not "in sync" with the generation given yet (a word on its way): ask again.</summary>
    NotYet = 1,
    /// <summary>Refused, and never taken from this word: the term does not follow the partner's, a replica is missing, holds another generation, or the word came on an association that was replaced.</summary>
    Refused = 2,
}

/// <summary>
/// The fields of a <see cref="InterconnectOpcode.Giveback"/>: CDW10 the ANA group; CDW11/12 the term the partner owns it
/// from; the data one <see cref="EntryBytes"/> entry per namespace of the group (NSID, reserved, the owner's data
/// generation, which the partner's replica must hold).
/// </summary>
public static class GivebackFields
{
    public const int EntryBytes = 16;

    public static void Set(ref SubmissionQueueEntry sqe, uint group, ulong term)
    {
        sqe.Opcode = InterconnectOpcode.Giveback;
        sqe.Cdw10 = group;
        sqe.Cdw11 = (uint)term;
        sqe.Cdw12 = (uint)(term >> 32);
    }

    public static (uint Group, ulong Term) Read(in SubmissionQueueEntry sqe) => (sqe.Cdw10, sqe.Cdw11 | ((ulong)sqe.Cdw12 << 32));

    public static void WriteEntry(Span<byte> to, uint nsid, long generation)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(to, nsid);
        BinaryPrimitives.WriteUInt32LittleEndian(to[4..], 0);
        BinaryPrimitives.WriteInt64LittleEndian(to[8..], generation);
    }

    public static (uint Nsid, long Generation) ReadEntry(ReadOnlySpan<byte> from)
        => (BinaryPrimitives.ReadUInt32LittleEndian(from), BinaryPrimitives.ReadInt64LittleEndian(from[8..]));
}

/// <summary>
/// The owner's lease on its partner's trust in an in-sync replica (docs/ha.md, "The keeper's knowledge"): each
/// heartbeat sent while a replica may be trusted carries "in sync until send time + the lease" on the keeper's clock;
/// the owner does not complete a write the replica lacks before the last such deadline it sent has passed (with a
/// margin), unless the keeper has acknowledged that the replica is out of sync.
/// </summary>
public static class MirrorLease
{
    public const uint Renews = 1;
    /// <summary>One entry of a renewing heartbeat's data: the NSID, then the sequence number of the "in sync" word it renews.</summary>
    public const int EntryBytes = 8;

    public static void WriteEntry(Span<byte> to, uint nsid, uint sequence)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(to, nsid);
        BinaryPrimitives.WriteUInt32LittleEndian(to[4..], sequence);
    }

    public static (uint Nsid, uint Sequence) ReadEntry(ReadOnlySpan<byte> from)
        => (BinaryPrimitives.ReadUInt32LittleEndian(from), BinaryPrimitives.ReadUInt32LittleEndian(from[4..]));

    public static void Set(ref SubmissionQueueEntry sqe, OwnerDeadline until)
    {
        sqe.Cdw10 = until.Units10Us;
        sqe.Cdw11 |= Renews;
    }

    public static bool TryRead(in SubmissionQueueEntry sqe, out OwnerDeadline until)
    {
        until = new OwnerDeadline(sqe.Cdw10);
        return (sqe.Cdw11 & Renews) != 0;
    }
}

public static class ReservationNoticeFields
{
    private const uint PtplBit = 1u << 8;

    public static void Set(ref SubmissionQueueEntry sqe, Guid host, uint nsid, byte type, bool ptpl)
    {
        Span<byte> id = stackalloc byte[16];
        host.TryWriteBytes(id, bigEndian: true, out _);
        sqe.Cdw10 = BinaryPrimitives.ReadUInt32BigEndian(id);
        sqe.Cdw11 = BinaryPrimitives.ReadUInt32BigEndian(id[4..]);
        sqe.Cdw12 = BinaryPrimitives.ReadUInt32BigEndian(id[8..]);
        sqe.Cdw13 = BinaryPrimitives.ReadUInt32BigEndian(id[12..]);
        sqe.Cdw14 = nsid;
        sqe.Cdw15 = type | (ptpl ? PtplBit : 0);
    }

    public static (Guid Host, uint Nsid, byte Type, bool Ptpl) Read(in SubmissionQueueEntry sqe)
    {
        Span<byte> id = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32BigEndian(id, sqe.Cdw10);
        BinaryPrimitives.WriteUInt32BigEndian(id[4..], sqe.Cdw11);
        BinaryPrimitives.WriteUInt32BigEndian(id[8..], sqe.Cdw12);
        BinaryPrimitives.WriteUInt32BigEndian(id[12..], sqe.Cdw13);
        return (new Guid(id, bigEndian: true), sqe.Cdw14, (byte)sqe.Cdw15, (sqe.Cdw15 & PtplBit) != 0);
    }
}

/// <summary>
/// The fields a relayed command carries beyond the host's SQE, in dwords the NVM command set leaves reserved for
/// I/O commands: CDW2 the host's registration handle, CDW3 the deadline on the owner's clock.
/// </summary>
public static class RelayFields
{
    public static uint Handle(in SubmissionQueueEntry sqe) => sqe.Cdw2;
    public static OwnerDeadline Deadline(in SubmissionQueueEntry sqe) => new(sqe.Cdw3);

    public static void Set(ref SubmissionQueueEntry sqe, uint handle, OwnerDeadline deadline)
    {
        sqe.Cdw2 = handle;
        sqe.Cdw3 = deadline.Units10Us;
    }
}

/// <summary>The proxy's answer to a relay drain (32 bytes, controller to host).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct DrainAnswer
{
    public const int Size = 32;
    /// <summary>The proxy's outbound association for the subsystem is up: the other fields describe it.</summary>
    public const byte KindKnown = 1;
    /// <summary>The proxy has no outbound association for the subsystem: whatever the owner still has from it is stale.</summary>
    public const byte KindNoAssociation = 2;

    public byte Kind;
    /// <summary>1 when <see cref="LastDeadline"/> is valid (something was relayed).</summary>
    public byte HasDeadline;
    /// <summary>The CNTLID the owner gave the proxy's current association.</summary>
    public ushort Cntlid;
    /// <summary>The host's handle on that association (0: not registered there, nothing relayed).</summary>
    public uint Handle;
    /// <summary>Relayed commands of the host counted on that handle since it was registered.</summary>
    public ulong Sent;
    /// <summary>The latest deadline (owner's clock) among them: after it none of them can start.</summary>
    public uint LastDeadline;
    private uint _reserved0;
    /// <summary>The proxy's incarnation (<see cref="PairNode.Incarnation"/>): the fence belongs to this run of it.</summary>
    public long Incarnation;
}
