using System.Runtime.InteropServices;
using StorageNode.Interop;

namespace StorageNode.Rdma;

/// <summary>Thrown when a verbs or rdma_cm call fails; <see cref="Errno"/> is the positive errno.</summary>
public sealed class RdmaException(string what, int errno)
    : Exception($"{what}: {(errno != 0 ? Libc.StrError(errno) : "failed")} (errno {errno})")
{
    public int Errno { get; } = errno;
}

/// <summary>
/// A native verbs / rdma_cm object. A child keeps its parent alive (AddRef on creation, Release when freed),
/// so release order is right even when the finalizer frees them: context → PD → MR/CQ/QP.
/// </summary>
public abstract class RdmaHandle : SafeHandle
{
    private static long _live;
    private readonly SafeHandle? _parent;

    /// <summary>Native objects created and not yet freed (all kinds): for leak checks.</summary>
    public static long Live => Interlocked.Read(ref _live);

    protected RdmaHandle(IntPtr handle, SafeHandle? parent) : base(IntPtr.Zero, ownsHandle: true)
    {
        if (parent != null)
        {
            bool added = false;
            parent.DangerousAddRef(ref added);
            _parent = parent;
        }
        SetHandle(handle);
        Interlocked.Increment(ref _live);
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected abstract int Free(IntPtr h);

    protected sealed override bool ReleaseHandle()
    {
        int rc = Free(handle);
        Interlocked.Decrement(ref _live);
        _parent?.DangerousRelease();
        return rc == 0;
    }
}

public sealed class CmChannelHandle(IntPtr h) : RdmaHandle(h, null)
{
    protected override int Free(IntPtr h)
    {
        Verbs.CmDestroyChannel(h);
        return 0;
    }
}

public sealed class CmIdHandle(IntPtr h, SafeHandle parent) : RdmaHandle(h, parent)
{
    protected override int Free(IntPtr h) => Verbs.CmDestroyId(h);
}

public sealed class PdHandle(IntPtr h, SafeHandle parent) : RdmaHandle(h, parent)
{
    protected override int Free(IntPtr h) => Verbs.DeallocPd(h);
}

public sealed class MrHandle(IntPtr h, SafeHandle parent) : RdmaHandle(h, parent)
{
    protected override int Free(IntPtr h) => Verbs.DeregMr(h);
}

public sealed class CompChannelHandle(IntPtr h, SafeHandle parent) : RdmaHandle(h, parent)
{
    protected override int Free(IntPtr h) => Verbs.DestroyCompChannel(h);
}

public sealed class CqHandle(IntPtr h, SafeHandle parent) : RdmaHandle(h, parent)
{
    protected override int Free(IntPtr h) => Verbs.DestroyCq(h);
}

/// <summary>A QP made by rdma_create_qp on a CM id: freed with rdma_destroy_qp; keeps its PD and CQs alive.</summary>
public sealed class QpHandle : RdmaHandle
{
    private readonly SafeHandle[] _also;
    private readonly IntPtr _cmId;

    public QpHandle(IntPtr qp, CmIdHandle id, SafeHandle pd, SafeHandle sendCq, SafeHandle recvCq) : base(qp, id)
    {
        _cmId = id.DangerousGetHandle();
        _also = [pd, sendCq, recvCq];
        foreach (SafeHandle h in _also)
        {
            bool added = false;
            h.DangerousAddRef(ref added);
        }
    }

    protected override int Free(IntPtr h)
    {
        Verbs.CmDestroyQp(_cmId);
        foreach (SafeHandle s in _also) s.DangerousRelease();
        return 0;
    }
}
