using StorageNode.Pair;
using StorageNode.Target;
using StorageNode.Witness;

namespace StorageNode.Model.Tests.Model;

/// <summary>Where a message travels: each has its own failures.</summary>
public enum Channel
{
    /// <summary>The interconnect: one association (<see cref="Msg.Conn"/>), in order each way; cut by a partition, late otherwise.</summary>
    Interconnect,
    /// <summary>The heartbeat datagrams (UDP): lost, late, reordered.</summary>
    Datagram,
    /// <summary>A node and the witness (UDP): lost, late, reordered.</summary>
    Witness,
    /// <summary>A host and a node: late, reordered, never lost while the node lives.</summary>
    Host,
}

/// <summary>Endpoints: the two nodes, the witness, the host.</summary>
public static class Ep
{
    public const int A = 0, B = 1, Witness = 2, Host = 3;
    public static string Name(int e) => e switch { A => "A", B => "B", Witness => "W", _ => "H" };
}

/// <summary>A message in flight: from, to, channel, association (interconnect), when it may arrive first, and what it says.</summary>
public sealed record Msg(long Seq, int From, int To, Channel Channel, long Conn, long NotBefore, object Body)
{
    public override string ToString() => $"#{Seq} {Ep.Name(From)}->{Ep.Name(To)} {Channel}{(Conn != 0 ? $"/c{Conn}" : "")} {Body}";
}

// The interconnect (on one association).
public sealed record Connect(long Incarnation, GroupTerm Term);
public sealed record ConnectOk(long Incarnation, GroupTerm Term);
public sealed record Reset();
public sealed record HeartbeatReq(long Id, long T0Wire, uint RenewSequence, OwnerDeadline Until);
public sealed record HeartbeatAns(long Id, long PartnerWire);
public sealed record WordReq(long Id, long Incarnation, ReplicaWord Word, uint Epoch, uint Sequence, long Generation);
public sealed record WordAns(long Id, ReplicaAnswer Answer);
public sealed record CopyReq(long Id, uint Epoch, int Block, int Version);
public sealed record CopyAns(long Id, bool Ok);

// The heartbeat channel.
public sealed record Datagram(long Incarnation);

// The witness.
public sealed record ToWitness(WitnessRequest Request);
public sealed record FromWitness(WitnessAnswer Answer);

// Hosts.
public sealed record HostWrite(long Op, int Block, int Version);
public sealed record HostRead(long Op, int Block);
public sealed record HostReply(long Op, bool Ok, int Version, string Why);
