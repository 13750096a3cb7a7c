using System.Diagnostics;
using StorageNode.Bdevs;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;
using StorageNode.Target;

namespace StorageNode.Pair;

/// <summary>
/// One reactor's host queue into the partner's interconnect listener (the local virtual adapter), over NVMe/TCP
/// or NVMe/RDMA. Commands relay without allocation. The host's data buffer is used in place: over TCP it is
/// sent from and received into directly (no copy beyond the socket's); over RDMA it lies in this reactor's
/// registered pools, so the partner moves the data straight in and out of it with RDMA READ/WRITE (no copy at
/// all on this node; <see cref="RdmaHostQueue.BounceCopies"/> stays 0).
/// </summary>
public sealed unsafe class ProxyQueue : ReactorSource, IHostCompletion, IReactorPoller
{
    private static readonly long EventCheckTicks = Stopwatch.Frequency / 100;
    private readonly IHostQueue _q;
    private readonly RdmaHostQueue? _rdma;
    private long _nextEventCheck;
    private readonly Reactor _reactor;
    private readonly InterconnectLink _link;
    private readonly NvmfRequest?[] _inflight;
    private readonly ProxyRegistration?[] _inflightReg;
    private readonly int[] _free;
    private int _freeCount;
    private NvmfRequest?[] _backlog = new NvmfRequest?[256];
    // The hosts found waiting during one backlog pass (reused: no allocation once it has grown).
    private readonly List<HostRelay> _waitingHosts = [];
    private int _backlogHead;
    private int _backlogCount;
    private volatile bool _closed; // read by the pair's control thread (IsClosed)
    // Writes' copies for the partner's replicas (NamespaceMirror), sharing the queue's slots with relayed commands.
    private readonly MirrorOp?[] _inflightMirror;
    // When each slot's copy was sent (Stopwatch ticks; 0: none): the pair's control thread reads it to give up on a copy
    // the partner never answers (InterconnectLink.Tick).
    private readonly long[] _mirrorSentAt;
    private readonly Queue<MirrorOp> _mirrorBacklog = new();

    /// <summary>One write's copy for a replica, pooled per queue slot once made.</summary>
    private sealed class MirrorOp
    {
        public SubmissionQueueEntry Sqe;
        public byte* Data;
        public uint Length;
        public IMirrorCompletion? Done;
        public NamespaceMirror? Owner;
    }

    private readonly Stack<MirrorOp> _freeMirrorOps = new();
    private volatile bool _stallMirrors;
    private readonly int _mirrorReserve;

    /// <summary>Test hook: while set, this queue's writes' copies wait here instead of going to the replica.</summary>
    public bool StallMirrors
    {
        get => _stallMirrors;
        set
        {
            _stallMirrors = value;
            if (!value) _reactor.Post(Wake);
        }
    }

    public ProxyQueue(IHostQueue queue, Reactor reactor, InterconnectLink link)
    {
        _q = queue;
        _rdma = queue as RdmaHostQueue;
        _reactor = reactor;
        _link = link;
        _inflight = new NvmfRequest?[queue.Depth];
        _inflightReg = new ProxyRegistration?[queue.Depth];
        _inflightMirror = new MirrorOp?[queue.Depth];
        _mirrorSentAt = new long[queue.Depth];
        _mirrorReserve = link.MirrorEnabled ? Math.Max(1, queue.Depth / 8) : 0;
        for (int i = 0; i < queue.Depth; i++) _freeMirrorOps.Push(new MirrorOp());
        _free = new int[queue.Depth];
        for (int i = 0; i < _free.Length; i++) _free[i] = _free.Length - 1 - i;
        _freeCount = _free.Length;
    }

    public override int Fd => _q.Fd;
    public bool IsClosed => _closed;
    public int InFlight => _inflight.Length - _freeCount;
    public int Backlog => _backlogCount;
    public Reactor Reactor => _reactor;
    /// <summary>The interconnect queue (its transport and counters).</summary>
    public IHostQueue Queue => _q;
    public string? LastCloseReason { get; private set; }

    /// <summary>Registers with the reactor (as a poller too when the transport needs polling). Reactor thread.</summary>
    public void Attach()
    {
        _reactor.Register(this);
        if (_q.NeedsPolling) _reactor.AddPoller(this);
    }

    /// <summary>Reactor poller (RDMA): reaps completions, arms the CQ when idle, and now and then reads rdma_cm events.</summary>
    public int Poll()
    {
        if (_closed || _rdma == null) return 0;
        int n = _rdma.Progress();
        long now = Stopwatch.GetTimestamp();
        if (now >= _nextEventCheck)
        {
            _nextEventCheck = now + EventCheckTicks;
            _rdma.CheckConnection(TimeSpan.Zero);
        }
        if (_rdma.IsBroken) Close($"interconnect queue failed: {_rdma.Error}");
        else if (n > 0) _reactor.MarkDirty(this);
        return n;
    }

    /// <summary>
    /// Relays one command. Its deadline runs from when it reached this node (<see cref="NvmfRequest.ArrivedAfter"/>:
    /// time in a socket buffer or behind a stalled reactor counts). Reactor thread; completes through
    /// <see cref="NvmfRequest.OnBdevComplete"/>.
    /// </summary>
    public void Relay(NvmfRequest req)
    {
        req.PendingOps = 1;
        req.Gate.Deadline = req.ArrivedAfter + _link.RelayTimeoutTicks;
        if (_closed)
        {
            Finish(req, _link.UnavailableStatus);
            return;
        }
        if (_backlogCount > 0 || _link.StallSends || TrySubmit(req) != Submitted.Done) Enqueue(req);
        _reactor.MarkDirty(this);
    }

    /// <summary>
    /// Sends a write's copy to the partner's replica (<see cref="NamespaceMirror"/>). Reactor thread; <paramref name="done"/>
    /// is told on this reactor, through <see cref="NamespaceMirror.Completed"/>.
    /// </summary>
    internal void Mirror(NamespaceMirror owner, in SubmissionQueueEntry sqe, byte* data, uint length, IMirrorCompletion done)
    {
        if (_closed)
        {
            owner.Completed(_reactor.Id, _link.UnavailableStatus, done, sqe);
            return;
        }
        // As many copies wait as the queue has slots, each slot's object reused (more wait in new objects: rare).
        MirrorOp op = _freeMirrorOps.Count > 0 ? _freeMirrorOps.Pop() : new MirrorOp();
        op.Sqe = sqe;
        op.Data = data;
        op.Length = length;
        op.Done = done;
        op.Owner = owner;
        if (_mirrorBacklog.Count > 0 || _link.StallSends || _stallMirrors || _freeCount == 0) _mirrorBacklog.Enqueue(op);
        else SubmitMirror(op);
        _reactor.MarkDirty(this);
    }

    /// <summary>Hands a copy to the host queue (a slot is free; the caller no longer holds the op).</summary>
    private void SubmitMirror(MirrorOp op)
    {
        int token = _free[--_freeCount];
        // Over RDMA the keeper reads the write's data from this node's registered pools, small writes too: no copy here.
        if (!TrySend(op.Sqe, op.Data, op.Length, Opcodes.Direction(op.Sqe.Opcode), token, inPlace: true))
        {
            _free[_freeCount++] = token;
            FinishMirror(op, _link.UnavailableStatus);
            return;
        }
        _inflightMirror[token] = op;
        Volatile.Write(ref _mirrorSentAt[token], Stopwatch.GetTimestamp());
    }

    /// <summary>
    /// Hands a command to the host queue (<paramref name="inPlace"/>: over RDMA, data in a registered pool is read by the
    /// partner in place however small). False when it could not go — a broken queue or a registration that failed
    /// included (they throw): the caller fails the command then, so it is never lost between this queue's lists (found by a
    /// review); the queue closes at its next flush.
    /// </summary>
    private bool TrySend(in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection direction, int token, bool inPlace)
    {
        try
        {
            return inPlace && _rdma != null ? _rdma.TrySubmitInPlace(sqe, data, length, direction, this, token)
                : _q.TrySubmit(sqe, data, length, direction, this, token);
        }
        catch (Exception e) when (e is NvmeTransportException or StorageNode.Rdma.RdmaException)
        {
            return false;
        }
    }

    /// <summary>How long the oldest copy still unanswered has waited (0: none). Any thread: the control thread's watch.</summary>
    public long OldestCopyAgeTicks(long nowTicks)
    {
        long oldest = 0;
        for (int i = 0; i < _mirrorSentAt.Length; i++)
        {
            long sent = Volatile.Read(ref _mirrorSentAt[i]);
            if (sent != 0 && nowTicks - sent > oldest) oldest = nowTicks - sent;
        }
        return oldest;
    }

    private void FinishMirror(MirrorOp op, NvmeStatus status)
    {
        NamespaceMirror owner = op.Owner!;
        IMirrorCompletion done = op.Done!;
        SubmissionQueueEntry sqe = op.Sqe;
        op.Done = null;
        op.Owner = null;
        op.Data = null;
        _freeMirrorOps.Push(op);
        owner.Completed(_reactor.Id, status, done, sqe);
    }

    private void Enqueue(NvmfRequest req)
    {
        if (_backlogCount == _backlog.Length)
        {
            var grown = new NvmfRequest?[_backlog.Length * 2];
            for (int i = 0; i < _backlogCount; i++) grown[i] = _backlog[(_backlogHead + i) % _backlog.Length];
            _backlog = grown;
            _backlogHead = 0;
        }
        _backlog[(_backlogHead + _backlogCount++) % _backlog.Length] = req;
    }

    /// <summary>What became of a command handed to <see cref="TrySubmit"/>.</summary>
    private enum Submitted : byte
    {
        /// <summary>Sent, or finished (failed): the caller no longer holds it.</summary>
        Done,
        /// <summary>Its host's relay is not ready (not registered or not open yet): it waits, other hosts' need not.</summary>
        HostWaits,
        /// <summary>The queue cannot send now (no slot, no clock estimate): everything waits.</summary>
        QueueWaits,
        /// <summary>Its association has not shown since the relay opened that the host still uses it: its commands wait.</summary>
        AssociationWaits,
    }

    /// <summary>Hands the command to the host queue, or says what it waits for (the caller keeps it then).</summary>
    private Submitted TrySubmit(NvmfRequest req)
    {
        Controller? ctrl = req.Qpair.Controller;
        if (req.Qpair.IsClosed || ctrl == null || ctrl.Destroyed)
        {
            // The host's connection is gone: this copy must never reach the owner (docs/ha.md).
            Finish(req, NvmeStatus.Path(PathStatus.CommandAbortedByHost));
            return Submitted.Done;
        }
        if (Stopwatch.GetTimestamp() > req.Gate.Deadline)
        {
            Finish(req, NvmeStatus.Path(PathStatus.AnaTransition));
            return Submitted.Done;
        }
        if (ctrl.PairState is not AssociationState { Relay: { } host } state)
        {
            Finish(req, _link.UnavailableStatus);
            return Submitted.Done;
        }
        if (RelayControl.Quarantined(ctrl, host, req.ArrivedAfter))
        {
            // It may be a copy the host sent before the owner's last drain and has retried there since: never relayed;
            // a path status makes the host retry (docs/ha.md).
            Interlocked.Increment(ref _link.DroppedBeforeFence);
            Finish(req, NvmeStatus.Path(PathStatus.AnaTransition));
            return Submitted.Done;
        }
        // The registration is made right after the host's admin queue connects (or the link comes up); a command
        // that races it waits here, bounded by its deadline.
        ProxyRegistration? reg = host.Registration;
        if (reg == null) return Submitted.HostWaits;
        if (!reg.IsOpen)
        {
            _link.Relays.RequestOpen(reg);
            return Submitted.HostWaits;
        }
        if (Volatile.Read(ref state.RelayStarted) == 0) _link.Relays.FirstRelayed(host, ctrl, state);
        // (Read after the open bit: an open marks the host's associations before it sets the bit.)
        if (Volatile.Read(ref state.RelayUnproven) != null) return Submitted.AssociationWaits;
        // With mirroring, relayed commands leave slots to the writes' copies: a relayed write may wait on the partner for
        // its own copy to this node, so copies must never wait behind relays (both nodes' queues full: a deadlock).
        if (_freeCount <= _mirrorReserve) return Submitted.QueueWaits;
        if (!_link.Clock.TryToPartner(req.Gate.Deadline, out OwnerDeadline deadline)) return Submitted.QueueWaits;
        if (req.ArrivedAfter <= Volatile.Read(ref reg.LocalBoundTicks))
        {
            // It may have reached this node before the host's last command to the owner through its own path: the host
            // may have retried it there. Never relayed; a path status makes the host retry (docs/ha.md).
            Interlocked.Increment(ref _link.DroppedBeforeFence);
            Finish(req, NvmeStatus.Path(PathStatus.AnaTransition));
            return Submitted.Done;
        }
        reg.NoteDeadline(deadline);
        if (!reg.TryCount())
        {
            _link.Relays.RequestOpen(reg); // a drain closed the relay meanwhile
            return Submitted.HostWaits;
        }
        if (Volatile.Read(ref state.RelayUnproven) != null)
        {
            // Marked between the check above and the count (a drain and a new open, or another association of the host
            // starting): counted but not sent (the owner's drain waits for it until its deadline, never sooner than
            // safe); it waits for the host's answer with the rest.
            return Submitted.AssociationWaits;
        }
        int token = _free[--_freeCount];
        SubmissionQueueEntry sqe = req.Sqe;
        RelayFields.Set(ref sqe, reg.Handle, deadline);
        Interlocked.Increment(ref reg.InFlight);
        if (!TrySend(sqe, req.Data, req.Length, req.Direction, token, inPlace: false))
        {
            // Counted but not sent: the owner's drain waits for it until its deadline (never sooner than safe).
            _free[_freeCount++] = token;
            Settle(reg);
            Finish(req, _link.UnavailableStatus);
            return Submitted.Done;
        }
        _inflight[token] = req;
        _inflightReg[token] = reg;
        _link.Relayed++;
        return Submitted.Done;
    }

    public void OnHostComplete(long token, in CompletionQueueEntry cqe)
    {
        if (_inflightMirror[token] is MirrorOp op)
        {
            _inflightMirror[token] = null;
            Volatile.Write(ref _mirrorSentAt[token], 0);
            _free[_freeCount++] = (int)token;
            FinishMirror(op, cqe.StatusField);
            return;
        }
        NvmfRequest req = _inflight[token]!;
        ProxyRegistration reg = _inflightReg[token]!;
        _inflight[token] = null;
        _inflightReg[token] = null;
        _free[_freeCount++] = (int)token;
        Settle(reg);
        NvmeStatus st = cqe.StatusField;
        req.Cqe.Dw0 = cqe.Dw0;
        // A broken interconnect (or a digest error on it) is a path problem for the host: retry elsewhere.
        if (st.Type == StatusCodeType.Generic && st.Code == GenericStatus.TransientTransportError)
            st = _link.UnavailableStatus;
        Finish(req, st);
    }

    private static void Finish(NvmfRequest req, NvmeStatus status) => req.OnBdevComplete(BdevResult.FromStatus(status));

    /// <summary>One relayed command of the registration is answered (or was never sent): a departed host may be forgotten now.</summary>
    private void Settle(ProxyRegistration reg)
    {
        if (Interlocked.Decrement(ref reg.InFlight) == 0 && reg.Host.Associations.Count == 0) _link.Relays.Settled(reg.Host);
    }

    public override int OnReady(uint events)
    {
        if (_closed) return 0;
        int n = _q.OnReadable();
        if (_q.IsBroken) Close($"interconnect queue failed: {_q.Error}");
        else _reactor.MarkDirty(this);
        return n;
    }

    public override int Flush()
    {
        if (_closed) return 0;
        int work = 0;
        if (!_link.StallSends)
        {
            while (_mirrorBacklog.Count > 0 && !_stallMirrors && _freeCount > 0)
            {
                SubmitMirror(_mirrorBacklog.Dequeue());
                work++;
            }
            if (_backlogCount > 0) work += FlushBacklog();
        }
        work += _q.SendPending();
        if (_q.IsBroken)
        {
            Close($"interconnect queue failed: {_q.Error}");
            return work;
        }
        if (_q.HasPendingSends || ((_backlogCount > 0 || (_mirrorBacklog.Count > 0 && !_stallMirrors)) && !_link.StallSends)) _reactor.MarkDirty(this);
        return work;
    }

    /// <summary>
    /// Sends what waits in the backlog, in order, each host's commands in the order they came; a host whose relay is not
    /// ready keeps its own commands waiting and no other host's (the queue's own limits stop the pass). Reactor thread.
    /// </summary>
    private int FlushBacklog()
    {
        int n = _backlogCount, kept = 0, work = 0, len = _backlog.Length;
        bool stop = false;
        _waitingHosts.Clear();
        for (int i = 0; i < n; i++)
        {
            int at = (_backlogHead + i) % len;
            NvmfRequest req = _backlog[at]!;
            _backlog[at] = null;
            if (!stop)
            {
                HostRelay? host = req.Qpair.Controller?.PairState is AssociationState { Relay: { } h } ? h : null;
                if (host == null || !_waitingHosts.Contains(host))
                {
                    Submitted r = TrySubmit(req);
                    if (r == Submitted.Done)
                    {
                        work++;
                        continue;
                    }
                    if (r == Submitted.QueueWaits) stop = true;
                    else if (r == Submitted.HostWaits && host != null) _waitingHosts.Add(host);
                }
            }
            _backlog[(_backlogHead + kept++) % len] = req; // kept <= i: never over one not yet looked at
        }
        _backlogCount = kept;
        return work;
    }

    internal void Wake()
    {
        if (!_closed) _reactor.MarkDirty(this);
    }

    public override void OnFault(Exception e) => Close($"internal error: {e.Message}");

    /// <summary>Closes the queue: in-flight and queued commands complete with the link's path status. Reactor thread.</summary>
    public void Close(string reason)
    {
        if (_closed) return;
        _closed = true;
        _reactor.Unregister(this);
        if (_q.NeedsPolling) _reactor.RemovePoller(this);
        _q.Dispose(); // completes everything in flight with a transport error (mapped to a path status)
        while (_mirrorBacklog.Count > 0) FinishMirror(_mirrorBacklog.Dequeue(), _link.UnavailableStatus);
        while (_backlogCount > 0)
        {
            NvmfRequest req = _backlog[_backlogHead]!;
            _backlog[_backlogHead] = null;
            _backlogHead = (_backlogHead + 1) % _backlog.Length;
            _backlogCount--;
            Finish(req, _link.UnavailableStatus);
        }
        LastCloseReason = reason;
    }
}
