using System.Diagnostics;
using StorageNode.Bdevs;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;
using StorageNode.Target;

namespace StorageNode.Proxy;

/// <summary>
/// The partner virtual adapter seen from the proxy side: a namespace whose data lives on the partner. It has
/// the geometry both nodes agreed on; its I/O is relayed as whole NVMe commands by <see cref="ProxyQueue"/>.
/// </summary>
public sealed class PartnerBdev(string name, uint blockSize, ulong blockCount, RelayLink link) : Bdev(name, blockSize, blockCount)
{
    public RelayLink Link { get; } = link;

    public override BdevChannel CreateChannel(Reactor reactor) => new PartnerChannel(Link, reactor.Id);

    /// <summary>Block-level calls never reach a relayed namespace: the I/O path hands whole commands to <see cref="Relay"/>.</summary>
    private sealed unsafe class PartnerChannel(RelayLink link, int reactorId) : BdevChannel, IRelayChannel
    {
        public void Relay(NvmfRequest req)
        {
            ProxyQueue? q = link.QueueFor(reactorId);
            if (q == null)
            {
                req.PendingOps = 0;
                req.Fail(link.UnavailableStatus);
                return;
            }
            q.Relay(req);
        }

        private static NotSupportedException NotBlock() => new("a relayed namespace takes whole commands (IRelayChannel.Relay)");
        public override void Read(ulong offset, byte* buffer, uint length, IBdevCompletion completion) => throw NotBlock();
        public override void Write(ulong offset, byte* buffer, uint length, bool fua, IBdevCompletion completion) => throw NotBlock();
        public override void Flush(IBdevCompletion completion) => throw NotBlock();
        public override void WriteZeroes(ulong offset, ulong length, IBdevCompletion completion) => throw NotBlock();
        public override void Deallocate(ulong offset, ulong length, IBdevCompletion completion) => throw NotBlock();
    }
}

/// <summary>A channel that relays whole commands to the partner.</summary>
public interface IRelayChannel
{
    void Relay(NvmfRequest req);
}

/// <summary>
/// What a proxy queue needs from the cluster: the per-reactor queues, the host registrations, the relay
/// deadline and the partner's clock.
/// </summary>
public abstract class RelayLink
{
    private volatile ProxyQueue?[] _queues = [];

    public ProxyQueue? QueueFor(int reactorId)
    {
        ProxyQueue?[] q = _queues;
        return (uint)reactorId < (uint)q.Length ? q[reactorId] : null;
    }

    protected void SetQueues(ProxyQueue?[] queues) => _queues = queues;

    protected ProxyQueue?[] Queues => _queues;

    /// <summary>The installed proxy queues (a snapshot; for status and tests).</summary>
    public IReadOnlyList<ProxyQueue> ProxyQueues => [.. _queues.OfType<ProxyQueue>()];

    /// <summary>Status for commands that cannot be relayed now (link down, or coming up).</summary>
    public abstract NvmeStatus UnavailableStatus { get; }

    /// <summary>How long a relayed command may live, in Stopwatch ticks.</summary>
    public abstract long RelayTimeoutTicks { get; }

    /// <summary>A local deadline on the partner's clock (the one conversion; false while the partner's clock is unknown).</summary>
    public abstract bool TryPartnerDeadline(long localDeadline, out StorageNode.Pair.OwnerDeadline deadline);

    /// <summary>Announces the host's relay to the owner; sets the registration Active (and wakes the queues) once acknowledged.</summary>
    public abstract void RequestOpen(RelayRegistration reg);

    /// <summary>Marks every proxy queue for a flush (after a relay open was acknowledged).</summary>
    protected void WakeQueues()
    {
        foreach (ProxyQueue? q in _queues)
        {
            if (q == null) continue;
            ProxyQueue pq = q;
            pq.Reactor.Post(() => pq.Wake());
        }
    }

    private volatile bool _stallSends;

    /// <summary>Test hook: while set, relayed commands queue up on this node instead of being sent.</summary>
    public bool StallSends
    {
        get => _stallSends;
        set
        {
            _stallSends = value;
            if (!value) WakeQueues();
        }
    }

    /// <summary>Relayed commands submitted to the partner over this link (statistics).</summary>
    public long Relayed;

    /// <summary>Commands waiting in the proxy queues' backlogs (approximate; for tests and status).</summary>
    public int QueuedRelays
    {
        get
        {
            int n = 0;
            foreach (ProxyQueue? q in _queues) if (q != null) n += q.Backlog;
            return n;
        }
    }
}

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
    private readonly RelayLink _link;
    private readonly NvmfRequest?[] _inflight;
    private readonly int[] _free;
    private int _freeCount;
    private NvmfRequest?[] _backlog = new NvmfRequest?[256];
    private int _backlogHead;
    private int _backlogCount;
    private bool _closed;

    public ProxyQueue(IHostQueue queue, Reactor reactor, RelayLink link)
    {
        _q = queue;
        _rdma = queue as RdmaHostQueue;
        _reactor = reactor;
        _link = link;
        _inflight = new NvmfRequest?[queue.Depth];
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

    /// <summary>Relays one command. Reactor thread; completes through <see cref="NvmfRequest.OnBdevComplete"/>.</summary>
    public void Relay(NvmfRequest req)
    {
        req.PendingOps = 1;
        if (req.RelayDeadline == 0) req.RelayDeadline = Stopwatch.GetTimestamp() + _link.RelayTimeoutTicks;
        if (_closed)
        {
            Finish(req, _link.UnavailableStatus);
            return;
        }
        if (_backlogCount > 0 || _link.StallSends || !TrySubmit(req)) Enqueue(req);
        _reactor.MarkDirty(this);
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

    /// <summary>Hands the command to the host queue; false when no slot is free (the caller keeps it).</summary>
    private bool TrySubmit(NvmfRequest req)
    {
        if (req.Qpair.IsClosed || req.Qpair.Controller?.Destroyed != false)
        {
            // The host's connection is gone: this copy must never reach the owner (docs/ha.md).
            Finish(req, NvmeStatus.Path(PathStatus.CommandAbortedByHost));
            return true;
        }
        if (Stopwatch.GetTimestamp() > req.RelayDeadline)
        {
            Finish(req, NvmeStatus.Path(PathStatus.AnaTransition));
            return true;
        }
        // The host's registration with the partner is made right after its admin queue connects; a command
        // that races it waits here (bounded by its relay deadline).
        RelayRegistration? reg = req.Qpair.Controller.PartnerRegistration;
        if (reg == null) return false;
        if (Volatile.Read(ref reg.State) != RelayRegistration.Active)
        {
            if (Interlocked.CompareExchange(ref reg.State, RelayRegistration.Opening, RelayRegistration.Idle) == RelayRegistration.Idle)
                _link.RequestOpen(reg);
            return false;
        }
        if (_freeCount == 0) return false;
        if (!_link.TryPartnerDeadline(req.RelayDeadline, out StorageNode.Pair.OwnerDeadline deadline)) return false;
        int token = _free[--_freeCount];
        SubmissionQueueEntry sqe = req.Sqe;
        sqe.Cdw2 = reg.Handle;
        sqe.Cdw3 = deadline.Units10Us;
        if (!_q.TrySubmit(sqe, req.Data, req.Length, req.Direction, this, token))
        {
            _free[_freeCount++] = token;
            return false;
        }
        _inflight[token] = req;
        Interlocked.Increment(ref reg.Sent);
        _link.Relayed++;
        return true;
    }

    public void OnHostComplete(long token, in CompletionQueueEntry cqe)
    {
        NvmfRequest req = _inflight[token]!;
        _inflight[token] = null;
        _free[_freeCount++] = (int)token;
        NvmeStatus st = cqe.StatusField;
        // A broken interconnect (or a digest error on it) is a path problem for the host: retry elsewhere.
        if (st.Type == StatusCodeType.Generic && st.Code == GenericStatus.TransientTransportError)
            st = _link.UnavailableStatus;
        Finish(req, st);
    }

    private static void Finish(NvmfRequest req, NvmeStatus status) => req.OnBdevComplete(BdevResult.FromStatus(status));

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
            while (_backlogCount > 0)
            {
                NvmfRequest req = _backlog[_backlogHead]!;
                if (!TrySubmit(req)) break;
                _backlog[_backlogHead] = null;
                _backlogHead = (_backlogHead + 1) % _backlog.Length;
                _backlogCount--;
                work++;
            }
        }
        work += _q.SendPending();
        if (_q.IsBroken)
        {
            Close($"interconnect queue failed: {_q.Error}");
            return work;
        }
        if (_q.HasPendingSends || (_backlogCount > 0 && !_link.StallSends)) _reactor.MarkDirty(this);
        return work;
    }

    internal void Wake()
    {
        if (!_closed) _reactor.MarkDirty(this);
    }

    /// <summary>Completes queued commands whose host connection is gone, so they are never sent. Reactor thread.</summary>
    public int DropOrphans()
    {
        int dropped = 0;
        int n = _backlogCount;
        for (int i = 0; i < n; i++)
        {
            NvmfRequest req = _backlog[_backlogHead]!;
            _backlog[_backlogHead] = null;
            _backlogHead = (_backlogHead + 1) % _backlog.Length;
            _backlogCount--;
            if (req.Qpair.IsClosed || req.Qpair.Controller?.Destroyed != false)
            {
                Finish(req, NvmeStatus.Path(PathStatus.CommandAbortedByHost));
                dropped++;
            }
            else
            {
                Enqueue(req);
            }
        }
        return dropped;
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

    public string? LastCloseReason { get; private set; }
}

/// <summary>The proxy side's registration of one host with the partner (for one interconnect association).</summary>
public sealed class RelayRegistration(uint handle, string hostNqn, Guid hostId)
{
    public const int Idle = 0;
    public const int Opening = 1;
    public const int Active = 2;

    public uint Handle { get; } = handle;
    public string HostNqn { get; } = hostNqn;
    public Guid HostId { get; } = hostId;
    /// <summary>Commands of this host handed to the partner on this association.</summary>
    public long Sent;
    /// <summary>
    /// Idle until the owner acknowledged a relay open; a drain from the owner makes it idle again. Commands are
    /// only sent while Active, so the owner always knows of a relay before a relayed command can be in flight.
    /// </summary>
    public int State;
}
