using System.Diagnostics;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// One host association (dynamic controller model): created by an admin-queue Connect, destroyed when the
/// admin queue goes away, the host shuts it down, or keep-alive expires. Control state is guarded by a lock;
/// the I/O path reads only immutable fields and <see cref="Enabled"/>.
/// </summary>
public sealed class Controller
{
    /// <summary>
    /// AERL + 1. One, as Linux's host keeps (SPDK's keeps AERL + 1): a host that keeps as many as it may answers the
    /// question of <see cref="ProveHostStillHere"/> after one notice (events wait in order for the next request).
    /// </summary>
    public const int MaxOutstandingAers = 1;
    private const int ErrorLogEntries = 64;

    private readonly object _lock = new();
    private readonly QueuePair?[] _ioQueues;
    private readonly Queue<NvmfRequest> _aers = new();
    private readonly List<uint> _pendingEvents = [];
    private readonly HashSet<byte> _maskedLogPages = [];
    private readonly ErrorLogEntry[] _errors = new ErrorLogEntry[ErrorLogEntries];
    private ulong _errorCount;
    private long _lastKeepAlive;
    private volatile bool _enabled;
    private volatile bool _destroyed;

    public NvmfTarget Target { get; }
    public Subsystem Subsystem { get; }
    public ushort Cntlid { get; }
    public string HostNqn { get; }
    public Guid HostId { get; }
    public QueuePair AdminQueue { get; }
    /// <summary>Role of the listener the association was made through.</summary>
    public ListenerRole Role => AdminQueue.Listener.Role;
    /// <summary>True for the partner's proxy association on the interconnect listener.</summary>
    public bool IsInterconnect => Role == ListenerRole.Interconnect;

    /// <summary>What the HA pair keeps for this association (opaque to the target; null on a standalone node).</summary>
    public object? PairState { get; set; }
    /// <summary>Stopwatch timestamp of the admin Connect that created the association.</summary>
    public long CreatedTicks { get; } = Stopwatch.GetTimestamp();

    public uint Cc { get; private set; }
    public uint Csts { get; private set; }
    public uint KatoMs { get; private set; }
    public int IoQueuesAllowed { get; private set; }
    public uint AsyncEventConfig { get; set; }
    public bool VolatileWriteCacheEnabled { get; set; } = true;
    /// <summary>The features set by the host that have no home elsewhere (Get/Set Features).</summary>
    public FeatureValues FeatureValues { get; }

    public bool Enabled => _enabled;
    public bool Destroyed => _destroyed;
    public DateTime CreatedUtc { get; } = DateTime.UtcNow;

    internal Controller(NvmfTarget target, Subsystem subsystem, ushort cntlid, string hostNqn, Guid hostId, QueuePair adminQueue, uint katoMs)
    {
        Target = target;
        Subsystem = subsystem;
        Cntlid = cntlid;
        HostNqn = hostNqn;
        HostId = hostId;
        AdminQueue = adminQueue;
        KatoMs = katoMs;
        IoQueuesAllowed = subsystem.IsDiscovery ? 0 : target.Options.MaxIoQueues;
        _ioQueues = new QueuePair?[target.Options.MaxIoQueues + 1];
        FeatureValues = new FeatureValues(target.Options.MaxIoQueues + 1);
        TouchKeepAlive();
    }

    public void TouchKeepAlive() => Volatile.Write(ref _lastKeepAlive, Stopwatch.GetTimestamp());

    /// <summary>Stopwatch timestamp of the last Keep Alive (or of the Connect, before the first).</summary>
    public long LastKeepAliveTicks => Volatile.Read(ref _lastKeepAlive);

    /// <summary>True when KATO is set and no Keep Alive arrived within it (plus one KAS unit of slack).</summary>
    public bool KeepAliveExpired(long now)
    {
        uint kato = KatoMs;
        if (kato == 0) return false;
        long limit = (kato + Target.Options.KeepAliveGranularityMs) * Stopwatch.Frequency / 1000;
        return now - Volatile.Read(ref _lastKeepAlive) > limit;
    }

    public void SetKato(uint ms)
    {
        KatoMs = ms;
        TouchKeepAlive();
    }

    /// <summary>Handles a CC write; returns the new CSTS.</summary>
    public void WriteCc(uint value)
    {
        lock (_lock)
        {
            uint old = Cc;
            Cc = value;
            bool en = (value & CcRegister.Enable) != 0;
            bool wasEn = (old & CcRegister.Enable) != 0;
            if (en && !wasEn)
            {
                // I/O queue entry sizes must be 64/16 bytes (6 and 4 as powers of two) for an I/O controller.
                bool sizesOk = Subsystem.IsDiscovery || (CcRegister.Iosqes(value) == 6 && CcRegister.Iocqes(value) == 4);
                if (!sizesOk || CcRegister.Mps(value) != 0 || CcRegister.Css(value) != 0)
                {
                    Csts |= CstsRegister.Fatal;
                }
                else
                {
                    Csts = (Csts & ~CstsRegister.ShutdownMask) | CstsRegister.Ready;
                    _enabled = true;
                }
            }
            else if (!en && wasEn)
            {
                // Controller reset: I/O queues are gone, the host must reconnect them; outstanding AERs are aborted.
                _enabled = false;
                while (_aers.TryDequeue(out NvmfRequest? aer))
                {
                    _aersCompleted++;
                    aer.Fail(NvmeStatus.Generic(GenericStatus.AbortedSqDeletion));
                }
                Csts &= ~(CstsRegister.Ready | CstsRegister.Fatal);
                DisconnectIoQueues("controller reset (CC.EN cleared)");
            }
            uint shn = CcRegister.Shn(value);
            if (shn != 0 && CcRegister.Shn(old) == 0)
            {
                // Normal or abrupt shutdown: stop I/O, report completion at once (RAM state has nothing to flush).
                _enabled = false;
                Csts = (Csts & ~CstsRegister.ShutdownMask) | CstsRegister.ShutdownComplete;
                DisconnectIoQueues("controller shutdown");
            }
            else if (shn == 0 && CcRegister.Shn(old) != 0)
            {
                Csts &= ~CstsRegister.ShutdownMask;
            }
        }
    }

    public bool TryAddIoQueue(ushort qid, QueuePair qp, out string? error)
    {
        lock (_lock)
        {
            error = null;
            if (_destroyed) error = "controller is being destroyed";
            else if (!_enabled) error = "controller is not enabled (CC.EN = 0)";
            else if (qid == 0 || qid > IoQueuesAllowed) error = $"QID {qid} is outside 1..{IoQueuesAllowed}";
            else if (_ioQueues[qid] != null) error = $"QID {qid} is already connected";
            if (error != null) return false;
            _ioQueues[qid] = qp;
            return true;
        }
    }

    public void RemoveIoQueue(QueuePair qp)
    {
        lock (_lock)
        {
            if (qp.Qid < _ioQueues.Length && _ioQueues[qp.Qid] == qp) _ioQueues[qp.Qid] = null;
        }
    }

    /// <summary>The I/O queue with this QID, or null.</summary>
    public QueuePair? IoQueue(ushort qid)
    {
        lock (_lock) return qid < _ioQueues.Length ? _ioQueues[qid] : null;
    }

    public IReadOnlyList<QueuePair> IoQueues
    {
        get
        {
            lock (_lock)
            {
                var list = new List<QueuePair>();
                foreach (QueuePair? q in _ioQueues) if (q != null) list.Add(q);
                return list;
            }
        }
    }

    /// <summary>Number of queues feature: grants min(requested, configured) and fixes it for the association.</summary>
    public int SetIoQueueCount(int requested)
    {
        lock (_lock)
        {
            IoQueuesAllowed = Math.Min(requested, Target.Options.MaxIoQueues);
            return IoQueuesAllowed;
        }
    }

    private void DisconnectIoQueues(string reason)
    {
        for (int i = 1; i < _ioQueues.Length; i++)
        {
            QueuePair? q = _ioQueues[i];
            _ioQueues[i] = null;
            q?.Disconnect(reason);
        }
    }

    private QueuePair[] _queuesAtDestroy = [];

    /// <summary>
    /// True once the association was destroyed and every queue pair it had is closed: nothing more can arrive on
    /// it (commands already received may still be executing).
    /// </summary>
    public bool QueuesClosed
    {
        get
        {
            if (!_destroyed) return false;
            foreach (QueuePair q in Volatile.Read(ref _queuesAtDestroy)) if (!q.IsClosed) return false;
            return AdminQueue.IsClosed;
        }
    }

    /// <summary>Ends the association: every queue pair is disconnected and the CNTLID is released. Any thread.</summary>
    public void Destroy(string reason)
    {
        lock (_lock)
        {
            if (_destroyed) return;
            var queues = new List<QueuePair>();
            foreach (QueuePair? q in _ioQueues) if (q != null) queues.Add(q);
            Volatile.Write(ref _queuesAtDestroy, [.. queues]);
            _destroyed = true;
            _enabled = false;
            DisconnectIoQueues(reason);
        }
        AdminQueue.Reactor.Post(() => FinishProof(HostProof.Ended));
        Subsystem.RemoveController(this);
        AdminQueue.Disconnect(reason);
        Target.OnControllerDestroyed(this, reason);
    }

    // ---- Asynchronous events (admin queue reactor only, except RaiseAsyncEvent) ----

    internal bool TryQueueAer(NvmfRequest req)
    {
        if (_aers.Count >= MaxOutstandingAers)
        {
            _aersCompleted++; // refused: the host gets a completion for it, so it may send another
            return false;
        }
        _aers.Enqueue(req);
        _aersAccepted++;
        if (_proofBound >= 0)
        {
            if (_aersAccepted > _proofBound) FinishProof(HostProof.Proven);
            else AskForProof();
        }
        DeliverEvents();
        return true;
    }

    /// <summary>Queues an event for the host; delivered on the admin queue's reactor. Any thread.</summary>
    public void RaiseAsyncEvent(byte type, byte info, byte logPage, uint configBit)
    {
        if ((AsyncEventConfig & configBit) == 0 && type == AsyncEvent.TypeNotice) return;
        uint dw0 = AsyncEvent.Dw0(type, info, logPage);
        AdminQueue.Reactor.Post(() =>
        {
            if (_destroyed) return;
            if (!_pendingEvents.Contains(dw0)) _pendingEvents.Add(dw0);
            DeliverEvents();
        });
    }

    /// <summary>A Get Log Page without RAE clears the mask set when an event for that log was reported.</summary>
    internal void LogPageRead(byte logPage, bool retainEvent)
    {
        if (retainEvent) return;
        if (_maskedLogPages.Remove(logPage)) DeliverEvents();
    }

    private void DeliverEvents()
    {
        for (int i = 0; i < _pendingEvents.Count && _aers.Count > 0;)
        {
            uint dw0 = _pendingEvents[i];
            byte logPage = AsyncEvent.LogPageOf(dw0);
            if (_maskedLogPages.Contains(logPage)) { i++; continue; }
            _pendingEvents.RemoveAt(i);
            _maskedLogPages.Add(logPage);
            CompleteAer(dw0);
        }
    }

    /// <summary>Completes the oldest outstanding AER with an event (counted for <see cref="ProveHostStillHere"/>).</summary>
    private void CompleteAer(uint dw0)
    {
        NvmfRequest aer = _aers.Dequeue();
        _aersCompleted++;
        aer.Cqe.Dw0 = dw0;
        aer.Complete();
    }

    /// <summary>Abort of an outstanding Asynchronous Event Request: it completes with Command Abort Requested. Admin reactor.</summary>
    internal bool TryAbortAer(ushort cid)
    {
        int n = _aers.Count;
        bool found = false;
        for (int i = 0; i < n; i++)
        {
            NvmfRequest aer = _aers.Dequeue();
            if (!found && aer.Sqe.Cid == cid)
            {
                found = true;
                _aersCompleted++;
                aer.Fail(NvmeStatus.Generic(GenericStatus.AbortedByRequest));
            }
            else
            {
                _aers.Enqueue(aer);
            }
        }
        return found;
    }

    /// <summary>Drops outstanding AERs (their queue pair is going away).</summary>
    internal void ClearAers()
    {
        _aersCompleted += _aers.Count; // the host may send as many again: counted as answered (ProveHostStillHere)
        _aers.Clear();
    }

    // ---- Evidence that the host still uses the association (admin queue reactor, except ProveHostStillHere) ----

    private long _aersAccepted, _aersCompleted;
    /// <summary>-1: no proof asked for; else the host has proved itself once more AERs than this were accepted.</summary>
    private long _proofBound = -1;
    private readonly List<Action<HostProof>> _proofWaiters = [];

    /// <summary>
    /// Asks the host for evidence that it still uses this association now: a command it can only have sent after it
    /// received a completion this controller sent after the call. The completion is of an outstanding Asynchronous
    /// Event Request (an ANA change notice; sent even while an earlier one's mask is on, the ANA log unchanged); the
    /// evidence is an AER accepted past the most the host could have sent before that: one more than the AERs completed
    /// so far plus AERL + 1, the most a host may have outstanding. A host that keeps fewer outstanding than that would be
    /// asked again, one notice per AER it sends back, until it gets there. <paramref name="done"/> runs on the admin
    /// queue's reactor: <see cref="HostProof.Proven"/>; <see cref="HostProof.CannotAsk"/> when the host did not enable
    /// ANA change notices; <see cref="HostProof.Ended"/> when the association ends first. Any thread.
    /// </summary>
    public void ProveHostStillHere(Action<HostProof> done)
    {
        AdminQueue.Reactor.Post(() =>
        {
            if (_destroyed)
            {
                done(HostProof.Ended);
                return;
            }
            if ((AsyncEventConfig & AsyncEvent.ConfigAnaChange) == 0)
            {
                done(HostProof.CannotAsk);
                return;
            }
            _proofWaiters.Add(done);
            // A later request raises the bound for every waiter: the evidence must postdate the newest request.
            _proofBound = _aersCompleted + MaxOutstandingAers;
            AskForProof();
        });
    }

    private void AskForProof()
    {
        uint dw0 = AsyncEvent.Dw0(AsyncEvent.TypeNotice, AsyncEvent.NoticeAnaChange, LogPageId.Ana);
        if (_maskedLogPages.Contains(LogPageId.Ana))
        {
            // The host has not read the ANA log since the last ANA notice (Linux without native multipath never reads
            // it): the question goes anyway rather than wait for a read that may never come.
            if (_aers.Count > 0) CompleteAer(dw0); // else asked again when the next request arrives
            return;
        }
        if (!_pendingEvents.Contains(dw0)) _pendingEvents.Add(dw0);
        DeliverEvents();
    }

    private void FinishProof(HostProof result)
    {
        _proofBound = -1;
        if (_proofWaiters.Count == 0) return;
        Action<HostProof>[] waiters = [.. _proofWaiters];
        _proofWaiters.Clear();
        foreach (Action<HostProof> w in waiters) w(result);
    }

    // ---- Changed Namespace List (any thread) ----

    /// <summary>How many NSIDs the Changed Namespace List holds; past that it says 0xFFFFFFFF (more than 1024 changed).</summary>
    public const int ChangedNamespaceEntries = 1024;
    private readonly SortedSet<uint> _changedNamespaces = [];
    private bool _changedNamespacesOverflow;

    /// <summary>
    /// A namespace was added or removed: it goes in the Changed Namespace List (log page 04h) and a Namespace Attribute
    /// Changed notice is raised (if the host enabled it), as SPDK's target and nvmet do when a namespace comes or goes.
    /// </summary>
    public void NotifyNamespaceChanged(uint nsid)
    {
        lock (_changedNamespaces)
        {
            if (!_changedNamespacesOverflow && !_changedNamespaces.Contains(nsid))
            {
                if (_changedNamespaces.Count < ChangedNamespaceEntries) _changedNamespaces.Add(nsid);
                else _changedNamespacesOverflow = true;
            }
        }
        RaiseAsyncEvent(AsyncEvent.TypeNotice, AsyncEvent.NoticeNamespaceAttributeChanged, LogPageId.ChangedNamespaceList,
            AsyncEvent.ConfigNamespaceAttribute);
    }

    /// <summary>The Changed Namespace List (ascending NSIDs, zero-filled); read without RAE, it starts over.</summary>
    internal byte[] ReadChangedNamespaceList(bool retainEvent)
    {
        var page = new byte[ChangedNamespaceEntries * 4];
        lock (_changedNamespaces)
        {
            if (_changedNamespacesOverflow)
            {
                System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(page, uint.MaxValue);
            }
            else
            {
                int off = 0;
                foreach (uint nsid in _changedNamespaces)
                {
                    System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(page.AsSpan(off), nsid);
                    off += 4;
                }
            }
            if (!retainEvent)
            {
                _changedNamespaces.Clear();
                _changedNamespacesOverflow = false;
            }
        }
        return page;
    }

    // ---- Reservation notifications (any thread) ----

    /// <summary>Notifications a controller keeps until the host reads them (Reservation Notification log page).</summary>
    public const int ReservationLogEntries = 64;
    private readonly List<(ulong Count, byte Type, uint Nsid)> _reservationLog = [];
    private readonly Dictionary<uint, uint> _reservationMask = [];
    private ulong _reservationLogCount;

    /// <summary>The Reservation Notification Mask (feature 82h) of a namespace on this controller.</summary>
    public uint ReservationMask(uint nsid)
    {
        lock (_reservationLog) return _reservationMask.TryGetValue(nsid, out uint m) ? m : 0;
    }

    internal void SetReservationMask(uint nsid, uint mask)
    {
        lock (_reservationLog) _reservationMask[nsid] = mask & ReservationNotification.MaskAll;
    }

    /// <summary>
    /// Logs a reservation notification (unless masked) and raises its asynchronous event. When the log is full the
    /// newest entry takes the newest count, so the host sees from the gap in Log Page Count that some were lost.
    /// </summary>
    public void NotifyReservation(uint nsid, byte type)
    {
        lock (_reservationLog)
        {
            if ((ReservationMask(nsid) & ReservationNotification.MaskBit(type)) != 0) return;
            if (++_reservationLogCount == 0) _reservationLogCount = 1;
            if (_reservationLog.Count < ReservationLogEntries) _reservationLog.Add((_reservationLogCount, type, nsid));
            else _reservationLog[^1] = _reservationLog[^1] with { Count = _reservationLogCount };
        }
        RaiseAsyncEvent(ReservationNotification.AsyncEventType, ReservationNotification.AsyncEventInfo, LogPageId.ReservationNotification, 0);
    }

    /// <summary>The oldest notification as a 64-byte log page (all zero when there is none); reading consumes it.</summary>
    internal byte[] TakeReservationNotification()
    {
        var page = new byte[ReservationNotification.Size];
        lock (_reservationLog)
        {
            if (_reservationLog.Count == 0) return page;
            var e = _reservationLog[0];
            _reservationLog.RemoveAt(0);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(page.AsSpan(ReservationNotification.LogPageCount), e.Count);
            page[ReservationNotification.Type] = e.Type;
            page[ReservationNotification.Available] = (byte)Math.Min(_reservationLog.Count, 255);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(page.AsSpan(ReservationNotification.Nsid), e.Nsid);
        }
        return page;
    }

    // ---- Error log ----

    internal void RecordError(ushort sqid, ushort cid, NvmeStatus status, uint nsid, ulong lba)
    {
        lock (_errors)
        {
            _errorCount++;
            ref ErrorLogEntry e = ref _errors[(int)(_errorCount % ErrorLogEntries)];
            e = default;
            e.ErrorCount = _errorCount;
            e.SqId = sqid;
            e.Cid = cid;
            e.Status = status.ToCqeStatus();
            e.ParameterErrorLocation = 0xFFFF;
            e.Lba = lba;
            e.Nsid = nsid;
            e.TrType = AdminQueue.Listener.TrType;
        }
    }

    public ulong ErrorCount { get { lock (_errors) return _errorCount; } }

    /// <summary>The error log, newest first.</summary>
    internal int CopyErrorLog(Span<ErrorLogEntry> dest)
    {
        lock (_errors)
        {
            int n = 0;
            for (ulong c = _errorCount; c > 0 && n < dest.Length && n < ErrorLogEntries; c--, n++)
                dest[n] = _errors[(int)(c % ErrorLogEntries)];
            return n;
        }
    }

    /// <summary>This controller's view of an ANA group.</summary>
    public AnaState AnaState(uint groupId) => Subsystem.GetAnaState(groupId, Role);

    public override string ToString() => $"{Subsystem.Nqn} cntlid {Cntlid} host {HostNqn}";
}

/// <summary>The answer to <see cref="Controller.ProveHostStillHere"/>.</summary>
public enum HostProof
{
    /// <summary>The host sent a command it could only have sent after the request: it still uses the association.</summary>
    Proven,
    /// <summary>The host gives no way to ask (ANA change notices disabled).</summary>
    CannotAsk,
    /// <summary>The association ended first.</summary>
    Ended,
}
