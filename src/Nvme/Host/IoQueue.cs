using StorageNode.Nvme.Spec;

namespace StorageNode.Nvme.Host;

/// <summary>An I/O queue of an <see cref="NvmeHost"/>: raw asynchronous access and synchronous helpers.</summary>
public sealed unsafe class IoQueue
{
    internal readonly SyncWaiter Waiter = new();

    private readonly TcpHostQueue? _tcp;

    public NvmeHost Host { get; }
    /// <summary>The queue, whatever its transport.</summary>
    public IHostQueue Transport { get; }
    /// <summary>The NVMe/TCP queue (throws for an NVMe/RDMA queue: use <see cref="Transport"/> or <see cref="Rdma"/>).</summary>
    public TcpHostQueue Queue => _tcp ?? throw new InvalidOperationException("an NVMe/RDMA queue has no TcpHostQueue");
    /// <summary>The NVMe/RDMA queue, or null for NVMe/TCP.</summary>
    public RdmaHostQueue? Rdma => Transport as RdmaHostQueue;
    public ushort Qid { get; }

    internal IoQueue(NvmeHost host, IHostQueue queue, ushort qid)
    {
        Host = host;
        Transport = queue;
        _tcp = queue as TcpHostQueue;
        Qid = qid;
    }

    /// <summary>Runs one command synchronously; returns its completion (does not throw on an error status).</summary>
    public CompletionQueueEntry Execute(in SubmissionQueueEntry sqe, Span<byte> data, DataDirection direction)
    {
        fixed (byte* p = data)
            return Waiter.Execute(Transport, sqe, p, (uint)data.Length, direction, Host.Options.CommandTimeout);
    }

    public static SubmissionQueueEntry ReadWriteSqe(byte opcode, uint nsid, ulong lba, uint blocks)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = opcode;
        sqe.Nsid = nsid;
        sqe.Cdw10 = (uint)lba;
        sqe.Cdw11 = (uint)(lba >> 32);
        sqe.Cdw12 = (blocks - 1) & 0xFFFF;
        return sqe;
    }

    public NvmeStatus Read(uint nsid, ulong lba, uint blocks, Span<byte> buffer)
        => Execute(ReadWriteSqe(IoOpcode.Read, nsid, lba, blocks), buffer, DataDirection.ControllerToHost).StatusField;

    public NvmeStatus Write(uint nsid, ulong lba, uint blocks, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
            return Execute(ReadWriteSqe(IoOpcode.Write, nsid, lba, blocks), new Span<byte>(p, data.Length), DataDirection.HostToController).StatusField;
    }

    public NvmeStatus Flush(uint nsid)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = IoOpcode.Flush;
        sqe.Nsid = nsid;
        return Execute(sqe, default, DataDirection.None).StatusField;
    }

    public NvmeStatus WriteZeroes(uint nsid, ulong lba, uint blocks, bool deallocate = false)
    {
        SubmissionQueueEntry sqe = ReadWriteSqe(IoOpcode.WriteZeroes, nsid, lba, blocks);
        if (deallocate) sqe.Cdw12 |= IoCdw12.Deallocate;
        return Execute(sqe, default, DataDirection.None).StatusField;
    }

    /// <summary>Dataset Management with the deallocate attribute over the given (LBA, block count) ranges.</summary>
    public NvmeStatus Deallocate(uint nsid, ReadOnlySpan<(ulong Lba, uint Blocks)> ranges)
    {
        var buf = new byte[ranges.Length * 16];
        for (int i = 0; i < ranges.Length; i++)
        {
            BitConverter.TryWriteBytes(buf.AsSpan(i * 16 + 4), ranges[i].Blocks);
            BitConverter.TryWriteBytes(buf.AsSpan(i * 16 + 8), ranges[i].Lba);
        }
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = IoOpcode.DatasetManagement;
        sqe.Nsid = nsid;
        sqe.Cdw10 = (uint)(ranges.Length - 1);
        sqe.Cdw11 = DsmAttribute.Deallocate;
        return Execute(sqe, buf, DataDirection.HostToController).StatusField;
    }

    // ---------------- Reservations ----------------

    private NvmeStatus Reservation(byte opcode, uint nsid, uint cdw10, ulong first, ulong? second)
    {
        Span<byte> keys = stackalloc byte[second == null ? ReservationFields.OneKey : ReservationFields.TwoKeys];
        ReservationFields.WriteKeys(keys, first, second ?? 0);
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = opcode;
        sqe.Nsid = nsid;
        sqe.Cdw10 = cdw10;
        return Execute(sqe, keys, DataDirection.HostToController).StatusField;
    }

    /// <summary>Reservation Register (<see cref="ReservationAction"/> Register, Unregister or Replace).</summary>
    public NvmeStatus ReservationRegister(uint nsid, byte action, ulong currentKey, ulong newKey, bool ignoreExistingKey = false, byte cptpl = ChangePtpl.NoChange)
        => Reservation(IoOpcode.ReservationRegister, nsid, ReservationFields.Cdw10(action, ignoreExistingKey, cptpl: cptpl), currentKey, newKey);

    /// <summary>Reservation Acquire (<see cref="ReservationAction"/> Acquire, Preempt or PreemptAndAbort).</summary>
    public NvmeStatus ReservationAcquire(uint nsid, byte action, ReservationType type, ulong currentKey, ulong preemptKey = 0)
        => Reservation(IoOpcode.ReservationAcquire, nsid, ReservationFields.Cdw10(action, type: type), currentKey, preemptKey);

    /// <summary>Reservation Release (<see cref="ReservationAction"/> Release or Clear).</summary>
    public NvmeStatus ReservationRelease(uint nsid, byte action, ReservationType type, ulong currentKey)
        => Reservation(IoOpcode.ReservationRelease, nsid, ReservationFields.Cdw10(action, type: type), currentKey, null);

    /// <summary>Reservation Report into <paramref name="buffer"/> (its whole length; a multiple of 4 bytes).</summary>
    public NvmeStatus ReservationReport(uint nsid, Span<byte> buffer, bool extended = true)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = IoOpcode.ReservationReport;
        sqe.Nsid = nsid;
        sqe.SetReport((uint)buffer.Length, extended);
        return Execute(sqe, buffer, DataDirection.ControllerToHost).StatusField;
    }

    /// <summary>Reservation Report (extended format, room for <paramref name="entries"/> registrants), parsed; throws on an error status.</summary>
    public ReservationStatus GetReservationStatus(uint nsid, int entries = 16)
    {
        var buf = new byte[Spec.ReservationReport.ExtendedHeaderSize + entries * Spec.ReservationReport.ExtendedEntrySize];
        NvmeStatus st = ReservationReport(nsid, buf);
        if (!st.IsSuccess) throw new NvmeCommandException("Reservation Report", st, 0);
        return ReservationStatus.Parse(buf);
    }

    // ---------------- Compare, Compare and Write, Verify ----------------

    public NvmeStatus Compare(uint nsid, ulong lba, uint blocks, ReadOnlySpan<byte> expected)
    {
        fixed (byte* p = expected)
            return Execute(ReadWriteSqe(IoOpcode.Compare, nsid, lba, blocks), new Span<byte>(p, expected.Length), DataDirection.HostToController).StatusField;
    }

    public NvmeStatus Verify(uint nsid, ulong lba, uint blocks) => Execute(ReadWriteSqe(IoOpcode.Verify, nsid, lba, blocks), default, DataDirection.None).StatusField;

    private sealed class Half : IHostCompletion
    {
        public bool Done;
        public NvmeStatus Status;

        public void OnHostComplete(long token, in CompletionQueueEntry cqe)
        {
            Status = cqe.StatusField;
            Done = true;
        }
    }

    /// <summary>
    /// The fused Compare and Write: the blocks are replaced by <paramref name="data"/> only if they hold
    /// <paramref name="expected"/>, atomically. The two commands go out back to back on this queue.
    /// </summary>
    public (NvmeStatus Compare, NvmeStatus Write) CompareAndWrite(uint nsid, ulong lba, uint blocks, ReadOnlySpan<byte> expected, ReadOnlySpan<byte> data)
    {
        var c = new Half();
        var w = new Half();
        SubmissionQueueEntry first = ReadWriteSqe(IoOpcode.Compare, nsid, lba, blocks);
        first.Flags |= CommandFlags.FuseFirst;
        SubmissionQueueEntry second = ReadWriteSqe(IoOpcode.Write, nsid, lba, blocks);
        second.Flags |= CommandFlags.FuseSecond;
        fixed (byte* pc = expected)
        fixed (byte* pw = data)
        {
            if (!Transport.TrySubmit(first, pc, (uint)expected.Length, DataDirection.HostToController, c, 0)
                || !Transport.TrySubmit(second, pw, (uint)data.Length, DataDirection.HostToController, w, 0))
                throw new InvalidOperationException("queue full");
            long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + (long)(Host.Options.CommandTimeout.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
            while (!(c.Done && w.Done))
            {
                if (Transport.Poll() == 0)
                {
                    if (System.Diagnostics.Stopwatch.GetTimestamp() > deadline)
                    {
                        Transport.Dispose(); // nothing may land in the buffers once they are unpinned
                        throw new TimeoutException("Compare and Write timed out; queue closed");
                    }
                    Transport.WaitReadable(1);
                }
            }
        }
        return (c.Status, w.Status);
    }

    /// <summary>Copy (source range format 0) of <paramref name="ranges"/> to <paramref name="destination"/> in one namespace.</summary>
    public NvmeStatus Copy(uint nsid, ulong destination, ReadOnlySpan<(ulong Lba, uint Blocks)> ranges, bool fua = false)
    {
        var data = new byte[ranges.Length * CopyFields.EntrySize];
        for (int i = 0; i < ranges.Length; i++) CopyFields.WriteEntry(data, i, ranges[i].Lba, ranges[i].Blocks);
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = IoOpcode.Copy;
        sqe.Nsid = nsid;
        sqe.Set(destination, ranges.Length, fua);
        return Execute(sqe, data, DataDirection.HostToController).StatusField;
    }
}
