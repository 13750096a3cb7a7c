using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// The Copy command within one namespace (source range descriptor format 0): the source ranges are read, one after
/// the other, into one buffer, then written to the destination. The limits a host reads from Identify Namespace
/// (MSSRL, MCL, MSRC) keep that buffer at most 1 MiB. Not the I/O hot path: one object per command.
/// </summary>
internal sealed unsafe class CopyCommand : IBdevCompletion
{
    /// <summary>Source ranges one Copy may name (MSRC + 1).</summary>
    public const int MaxRanges = 16;
    private const uint MaxBytes = 1 << 20;

    /// <summary>MCL and MSSRL (blocks) for a block size: what 1 MiB holds.</summary>
    public static uint MaxBlocks(uint blockSize) => MaxBytes / blockSize;

    private readonly NvmfRequest _req;
    private readonly BdevChannel _ch;
    private readonly int _shift;
    private readonly (ulong Lba, uint Blocks)[] _ranges;
    private byte* _buf;
    private uint _bytes;
    private int _next;
    private uint _filled;
    private bool _writing;

    private CopyCommand(NvmfRequest req, (ulong, uint)[] ranges, uint blocks)
    {
        _req = req;
        _ch = req.Channel!;
        _shift = req.Namespace!.Bdev.BlockShift;
        _ranges = ranges;
        _bytes = blocks << _shift;
    }

    /// <summary>Checks the ranges against the limits and the namespace, then copies. Reactor thread.</summary>
    public static void Run(NvmfRequest req)
    {
        ref SubmissionQueueEntry sqe = ref req.Sqe;
        Bdev bdev = req.Namespace!.Bdev;
        uint max = MaxBlocks(bdev.BlockSize);
        ReadOnlySpan<byte> data = req.DataSpan;
        int n = sqe.SourceRanges();
        var ranges = new (ulong, uint)[n];
        ulong total = 0;
        for (int i = 0; i < n; i++)
        {
            (ulong lba, uint blocks) = CopyFields.Entry(data, i);
            if (blocks > max)
            {
                Fail(req, NvmeStatus.CommandSpecific(CommandSpecificStatus.CommandSizeLimitExceeded));
                return;
            }
            if (lba > bdev.BlockCount || blocks > bdev.BlockCount - lba)
            {
                Fail(req, NvmeStatus.Generic(GenericStatus.LbaOutOfRange));
                return;
            }
            ranges[i] = (lba, blocks);
            total += blocks;
        }
        ulong dest = sqe.DestinationLba();
        if (total > max)
        {
            Fail(req, NvmeStatus.CommandSpecific(CommandSpecificStatus.CommandSizeLimitExceeded));
            return;
        }
        if (dest > bdev.BlockCount || total > bdev.BlockCount - dest)
        {
            Fail(req, NvmeStatus.Generic(GenericStatus.LbaOutOfRange));
            return;
        }
        new CopyCommand(req, ranges, (uint)total).Start();
    }

    /// <summary>A Copy that failed before anything was written: DW0 0 (no source range was copied).</summary>
    private static void Fail(NvmfRequest req, NvmeStatus status)
    {
        req.PendingOps = 0;
        req.Cqe.Dw0 = 0;
        req.Fail(status);
    }

    private void Start()
    {
        _req.PendingOps = 1; // the slot stays allocated until the copy ends, even if the connection closes
        _buf = _req.Qpair.Reactor.Pools.Borrow(_bytes);
        ReadNext();
    }

    private void ReadNext()
    {
        (ulong lba, uint blocks) = _ranges[_next++];
        uint len = blocks << _shift, at = _filled;
        _filled += len; // before the read: a RAM namespace completes it (and starts the next) inside this call
        _ch.Read(lba << _shift, _buf + at, len, this);
    }

    public void OnBdevComplete(int result)
    {
        if (result != 0 || _writing)
        {
            // A replica's device that failed the copy's write: no base for an incremental resync any more, as for a Write
            // (IoCommands.Completed; docs/ha.md, "The dirty-region record").
            if (result != 0 && _writing && _req.ForReplica) _req.Namespace!.ReplicaKnowledge.DeviceFailed();
            _req.Qpair.Reactor.Pools.Release(_buf);
            _req.PendingOps = 0;
            // On a failure nothing, or all of it, may have reached the destination: DW0 0 says from range 0 on.
            _req.Cqe.Dw0 = 0;
            if (result == 0) _req.Complete();
            else _req.Fail(BdevResult.ToStatus(result));
            return;
        }
        if (_next < _ranges.Length)
        {
            ReadNext();
            return;
        }
        _writing = true;
        _ch.Write(_req.Sqe.DestinationLba() << _shift, _buf, _bytes, _req.Sqe.CopyFua(), this);
    }
}
