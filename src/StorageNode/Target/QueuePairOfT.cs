using StorageNode.Nvme.Spec;
using StorageNode.Reactors;

namespace StorageNode.Target;

/// <summary>
/// The transport-independent half of a queue pair, as SPDK's <c>transport.c</c> keeps it apart from each transport:
/// the preallocated request slots, commands waiting for a data buffer, a slot's release (the I/O gate, the data buffer),
/// and the teardown (the controller let go of, everything outside a bdev released, the transport's native memory freed
/// when the last slot comes back). A transport subclass moves capsules and data on its wire and nothing else.
/// Reactor thread only.
/// </summary>
public abstract unsafe class QueuePair<TRequest> : QueuePair where TRequest : NvmfRequest
{
    /// <summary>The command slots, indexed by <see cref="NvmfRequest.Slot"/>.</summary>
    protected readonly TRequest[] Requests;
    private readonly int[] _freeSlots;
    private int _freeCount;
    private readonly int[] _bufferWaiters;
    private int _waitHead;
    private int _waitCount;
    private bool _closed;
    private bool _freed;

    protected QueuePair(Reactor reactor, NvmfTarget target, ListenerInfo listener, int slots, Func<QueuePair, ushort, TRequest> newRequest)
        : base(reactor, target, listener)
    {
        Requests = new TRequest[slots];
        _freeSlots = new int[slots];
        _bufferWaiters = new int[slots];
        for (int i = 0; i < slots; i++)
        {
            Requests[i] = newRequest(this, (ushort)i);
            _freeSlots[i] = slots - 1 - i;
        }
        _freeCount = slots;
    }

    public sealed override bool IsClosed => _closed;
    public int OutstandingRequests => Requests.Length - _freeCount;
    /// <summary>Commands queued for a data buffer.</summary>
    protected int BufferWaiters => _waitCount;

    /// <summary>
    /// The largest number of commands a host may have outstanding on this queue: its submission queue size once
    /// Connect told it, bounded by <paramref name="capacity"/>.
    /// </summary>
    protected int CommandLimit(int capacity) => Connected && SqSize > 0 ? Math.Min(SqSize, capacity) : capacity;

    /// <summary>A free slot for a command that just arrived, reset; null when every slot is taken.</summary>
    protected TRequest? TakeRequest()
    {
        if (_freeCount == 0) return null;
        TRequest req = Requests[_freeSlots[--_freeCount]];
        req.Reset();
        return req;
    }

    // ====================================================================== data buffers

    /// <summary>
    /// True when the transport can send a read's data from any memory (a socket can; RDMA only from registered
    /// memory): then a read the command set can serve from memory it lends needs no pool buffer.
    /// </summary>
    protected virtual bool SendsFromAnyMemory => false;

    /// <summary>
    /// Gives a prepared command with data its buffer and starts its data phase (<see cref="BeginDataPhase"/>): a read
    /// the command set can serve from memory it lends runs at once (<see cref="SendsFromAnyMemory"/>); otherwise a pool
    /// buffer, or a place in the queue of commands waiting for one (commands already waiting go first, so large
    /// transfers are not starved).
    /// </summary>
    protected void StartDataPhase(TRequest req)
    {
        if (SendsFromAnyMemory && req.Direction == DataDirection.ControllerToHost && CommandDispatcher.TryLendReadData(req))
        {
            req.State = RequestState.Executing;
            CommandDispatcher.Execute(req);
            return;
        }
        byte* buf = _waitCount == 0 ? Reactor.Pools.Get(req.Length) : null;
        if (buf == null)
        {
            req.State = RequestState.NeedBuffer;
            _bufferWaiters[(_waitHead + _waitCount++) % _bufferWaiters.Length] = req.Slot;
            Reactor.MarkDirty(this);
            return;
        }
        BeginDataPhase(req, buf);
    }

    /// <summary>The command has its data buffer: move the host's data into it, or run it.</summary>
    protected abstract void BeginDataPhase(TRequest req, byte* buffer);

    /// <summary>Gives buffers to commands that waited for one, oldest first.</summary>
    protected void ServeBufferWaiters()
    {
        while (_waitCount > 0 && !_closed)
        {
            TRequest req = Requests[_bufferWaiters[_waitHead]];
            byte* buf = Reactor.Pools.Get(req.Length);
            if (buf == null) return;
            _waitHead = (_waitHead + 1) % _bufferWaiters.Length;
            _waitCount--;
            BeginDataPhase(req, buf);
        }
    }

    // ====================================================================== abort

    /// <summary>
    /// Aborts a command that has not started: one waiting for a data buffer (no data of it is on the way: the host's
    /// data is asked for only once it has a buffer), one parked behind a range lock, or the first command of a fused
    /// pair waiting for its second. Others (moving data, running, held by the HA gate) run to completion.
    /// </summary>
    internal sealed override bool TryAbort(ushort cid)
    {
        NvmeStatus aborted = NvmeStatus.Generic(GenericStatus.AbortedByRequest);
        foreach (TRequest req in Requests)
        {
            if (req.State == RequestState.Free || req.Sqe.Cid != cid) continue;
            if (req.State == RequestState.NeedBuffer)
            {
                RemoveBufferWaiter(req.Slot);
                req.Fail(aborted);
                return true;
            }
            if (req.State != RequestState.Executing) return false;
            if (req.Namespace is { } ns && !ns.IsRemote && ns.Locks.For(Reactor.Id).TryUnpark(req))
            {
                req.PendingOps = 0;
                req.Fail(aborted);
                return true;
            }
            return FusedCommands.TryAbortWaitingFirst(req, aborted);
        }
        return false;
    }

    private void RemoveBufferWaiter(ushort slot)
    {
        int kept = 0;
        for (int i = 0; i < _waitCount; i++)
        {
            int s = _bufferWaiters[(_waitHead + i) % _bufferWaiters.Length];
            if (s != slot) _bufferWaiters[(_waitHead + kept++) % _bufferWaiters.Length] = s;
        }
        _waitCount = kept;
    }

    // ====================================================================== release and teardown

    /// <summary>
    /// The command is done with its slot (its response sent, or its connection gone): the gate is told, its data
    /// buffer goes back to the pool (a lent one to nobody), and the slot is free again.
    /// </summary>
    protected void Release(TRequest req)
    {
        if (req.Gate.Path != null) Target.IoGate!.Done(req);
        // A write released without completing (a fused Write that waited for its Compare when the connection closed).
        if (req.Dirty.Logged) req.Namespace!.DirtyLog!.Leave(req);
        if (req.Data != null)
        {
            if (!req.DataBorrowed) Reactor.Pools.Return(req.Data);
            req.Data = null;
            req.DataBorrowed = false;
        }
        if (req.State == RequestState.Free) return;
        OnReleasing(req);
        req.State = RequestState.Free;
        _freeSlots[_freeCount++] = req.Slot;
        if (_closed && _freeCount == Requests.Length) FreeOnce();
    }

    /// <summary>A slot that was in use is about to be freed (still in its last state).</summary>
    protected virtual void OnReleasing(TRequest req) { }

    /// <summary>Marks the queue closed; false when it already was (the caller then does nothing).</summary>
    protected bool MarkClosed()
    {
        if (_closed) return false;
        _closed = true;
        return true;
    }

    /// <summary>
    /// After <see cref="MarkClosed"/> and the transport's own teardown: ends this queue's part in its controller (an
    /// admin queue takes the controller with it), releases every command not inside a bdev (bdev I/O releases its slot
    /// when it completes), and frees the transport's native memory once no slot points into it.
    /// </summary>
    protected void DetachAndRelease(string reason)
    {
        Controller? ctrl = Controller;
        if (ctrl != null)
        {
            if (Qid == 0)
            {
                ctrl.ClearAers();
                ctrl.Destroy($"admin queue closed ({reason})");
            }
            else
            {
                ctrl.RemoveIoQueue(this);
            }
        }
        _waitCount = 0;
        foreach (TRequest req in Requests)
        {
            if (req.State != RequestState.Free && req.PendingOps == 0) Release(req);
        }
        if (_freeCount == Requests.Length) FreeOnce();
    }

    /// <summary>Frees what the transport allocated natively: called once, when the queue is closed and every slot is free.</summary>
    protected abstract void FreeNativeMemory();

    /// <summary>Frees the native memory now (a queue abandoned before it ran: nothing points into it).</summary>
    protected void FreeOnce()
    {
        if (_freed) return;
        _freed = true;
        FreeNativeMemory();
    }

    public sealed override void OnFault(Exception e) => Close($"internal error: {e.Message}");

    public sealed override void Disconnect(string reason) => Reactor.Post(() => Close(reason));
}
