using System.Buffers.Binary;

namespace StorageNode.Nvme.Rdma;

/// <summary>NVMe/RDMA connection manager reject status (RDMA transport binding, "RDMA_CM_REJECT Private Data").</summary>
public enum RdmaCmStatus : ushort
{
    Ok = 0,
    InvalidLength = 0x01,
    InvalidRecordFormat = 0x02,
    InvalidQid = 0x03,
    InvalidHsqSize = 0x04,
    InvalidHrqSize = 0x05,
    NoResources = 0x06,
    InvalidIrd = 0x07,
    InvalidOrd = 0x08,
    InvalidCntlid = 0x09,
}

/// <summary>RDMA_CM_REQUEST private data of an NVMe/RDMA host (32 bytes; HSQSIZE is 0's based).</summary>
public readonly record struct RdmaCmRequest(ushort RecordFormat, ushort Qid, ushort HrqSize, ushort HsqSize, ushort Cntlid = 0xFFFF);

/// <summary>What a target decided for one connect request.</summary>
public readonly record struct RdmaCmDecision(RdmaCmStatus Status, string Reason, int RecvDepth, int SendDepth)
{
    public bool Accepted => Status == RdmaCmStatus.Ok;
}

/// <summary>
/// The NVMe-oF RDMA transport binding's connection manager private data: the host's request (RECFMT, QID,
/// HRQSIZE, HSQSIZE, CNTLID), the controller's accept (RECFMT, CRQSIZE) and reject (RECFMT, STS). All fields are
/// little endian. Parsers never trust a length they did not check.
/// </summary>
public static class RdmaCm
{
    public const int RequestLength = 32;
    public const int AcceptLength = 32;
    public const int RejectLength = 4;
    public const ushort RecordFormat10 = 0;
    /// <summary>The admin queue's submission queue size a Linux host asks for (NVME_AQ_DEPTH).</summary>
    public const int AdminQueueDepth = 32;

    /// <summary>
    /// Parses a connect request's private data. rdma_cm pads private data (to 56 bytes on RoCE/InfiniBand), so
    /// only a short buffer is an error (<see cref="RdmaCmStatus.InvalidLength"/>).
    /// </summary>
    public static RdmaCmStatus TryParseRequest(ReadOnlySpan<byte> data, out RdmaCmRequest request)
    {
        request = default;
        if (data.Length < RequestLength) return RdmaCmStatus.InvalidLength;
        request = new RdmaCmRequest(
            BinaryPrimitives.ReadUInt16LittleEndian(data),
            BinaryPrimitives.ReadUInt16LittleEndian(data[2..]),
            BinaryPrimitives.ReadUInt16LittleEndian(data[4..]),
            BinaryPrimitives.ReadUInt16LittleEndian(data[6..]),
            BinaryPrimitives.ReadUInt16LittleEndian(data[8..]));
        return request.RecordFormat == RecordFormat10 ? RdmaCmStatus.Ok : RdmaCmStatus.InvalidRecordFormat;
    }

    /// <summary>
    /// Decides a connect request against the target's limits: the queue id, the host's submission queue size
    /// (HSQSIZE + 1 entries: the target's receive queue) and receive queue size (HRQSIZE, at least 1).
    /// <paramref name="readDepth"/> is the RDMA READ depth the host offers (its responder resources): a target
    /// pulls write data with RDMA READ, so 0 is refused.
    /// </summary>
    public static RdmaCmDecision Decide(ReadOnlySpan<byte> privateData, int maxIoQueues, int adminQueueDepth, int maxQueueDepth, int readDepth)
    {
        RdmaCmStatus st = TryParseRequest(privateData, out RdmaCmRequest r);
        if (st == RdmaCmStatus.InvalidLength) return Refuse(st, $"private data is {privateData.Length} bytes, less than {RequestLength}");
        if (st != RdmaCmStatus.Ok) return Refuse(st, $"record format {r.RecordFormat} is not 0");
        if (r.Qid > maxIoQueues) return Refuse(RdmaCmStatus.InvalidQid, $"queue id {r.Qid} is beyond the {maxIoQueues} I/O queues allowed");
        int limit = r.Qid == 0 ? adminQueueDepth : maxQueueDepth;
        int sq = r.HsqSize + 1;
        if (sq < 2 || sq > limit) return Refuse(RdmaCmStatus.InvalidHsqSize, $"HSQSIZE {r.HsqSize} ({sq} entries) is outside 2..{limit} for queue {r.Qid}");
        if (r.HrqSize == 0) return Refuse(RdmaCmStatus.InvalidHrqSize, "HRQSIZE is 0");
        if (readDepth <= 0) return Refuse(RdmaCmStatus.InvalidIrd, "the host serves no RDMA READ (responder resources 0)");
        // Receives: one per submission queue entry. Sends: up to two per command in flight (RDMA WRITE + the
        // response SEND), with twice the commands in flight so a response whose send completion is still
        // pending never holds up the host's next command.
        return new RdmaCmDecision(RdmaCmStatus.Ok, "", sq, 4 * sq);
    }

    private static RdmaCmDecision Refuse(RdmaCmStatus s, string why) => new(s, why, 0, 0);

    public static byte[] BuildRequest(ushort qid, ushort hrqSize, ushort hsqSize, ushort cntlid = 0xFFFF)
    {
        var b = new byte[RequestLength];
        BinaryPrimitives.WriteUInt16LittleEndian(b, RecordFormat10);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2), qid);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), hrqSize);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(6), hsqSize);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(8), cntlid);
        return b;
    }

    /// <summary>RDMA_CM_ACCEPT private data: RECFMT 0 and CRQSIZE (the controller's receive queue size).</summary>
    public static byte[] BuildAccept(ushort crqSize)
    {
        var b = new byte[AcceptLength];
        BinaryPrimitives.WriteUInt16LittleEndian(b, RecordFormat10);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2), crqSize);
        return b;
    }

    /// <summary>RDMA_CM_REJECT private data: RECFMT 0 and STS.</summary>
    public static byte[] BuildReject(RdmaCmStatus status)
    {
        var b = new byte[RejectLength];
        BinaryPrimitives.WriteUInt16LittleEndian(b, RecordFormat10);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2), (ushort)status);
        return b;
    }

    /// <summary>CRQSIZE from an accept, or null when the data is too short or of another record format.</summary>
    public static ushort? TryParseAccept(ReadOnlySpan<byte> data)
        => data.Length >= 4 && BinaryPrimitives.ReadUInt16LittleEndian(data) == RecordFormat10 ? BinaryPrimitives.ReadUInt16LittleEndian(data[2..]) : null;

    /// <summary>STS from a reject, or null when the data is too short or of another record format.</summary>
    public static RdmaCmStatus? TryParseReject(ReadOnlySpan<byte> data)
        => data.Length >= 4 && BinaryPrimitives.ReadUInt16LittleEndian(data) == RecordFormat10 ? (RdmaCmStatus)BinaryPrimitives.ReadUInt16LittleEndian(data[2..]) : null;

    public static string Describe(RdmaCmStatus s) => s switch
    {
        RdmaCmStatus.Ok => "ok",
        RdmaCmStatus.InvalidLength => "invalid length",
        RdmaCmStatus.InvalidRecordFormat => "invalid record format",
        RdmaCmStatus.InvalidQid => "invalid queue id",
        RdmaCmStatus.InvalidHsqSize => "invalid host submission queue size",
        RdmaCmStatus.InvalidHrqSize => "invalid host receive queue size",
        RdmaCmStatus.NoResources => "no resources",
        RdmaCmStatus.InvalidIrd => "invalid IRD",
        RdmaCmStatus.InvalidOrd => "invalid ORD",
        RdmaCmStatus.InvalidCntlid => "invalid controller id",
        _ => $"status {(ushort)s}",
    };
}
