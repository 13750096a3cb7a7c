using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Nvme.Spec;

namespace StorageNode.Nvme.Host;

/// <summary>The NVMe-oF transport an <see cref="NvmeHost"/> connects with.</summary>
public enum HostTransport
{
    Tcp,
    Rdma,
}

public sealed record NvmeHostOptions
{
    public HostTransport Transport { get; init; } = HostTransport.Tcp;
    /// <summary>NVMe/RDMA: the protection domain for the resolved device (see <see cref="RdmaHostQueueOptions.ProtectionDomainFor"/>).</summary>
    public Func<IntPtr, StorageNode.Rdma.ProtectionDomain?>? RdmaProtectionDomainFor { get; init; }
    /// <summary>NVMe/RDMA: the queues' local ACK timeout exponent (0: rdma_cm's default; see <see cref="RdmaHostQueueOptions.AckTimeout"/>).</summary>
    public int RdmaAckTimeout { get; init; }
    /// <summary>NVMe/RDMA I/O queues: completion channel (for a reactor that sleeps) and batched sends.</summary>
    public bool RdmaReactorQueues { get; init; }
    public Guid HostId { get; init; } = Guid.NewGuid();
    public string? HostNqn { get; init; }
    public bool HeaderDigest { get; init; }
    public bool DataDigest { get; init; }
    public int IoQueues { get; init; } = 1;
    public int IoQueueDepth { get; init; } = 128;
    public int AdminQueueDepth { get; init; } = 32;
    public uint KatoMs { get; init; } = 30_000;
    /// <summary>Send Keep Alive from a background timer (every KATO/3).</summary>
    public bool SendKeepAlive { get; init; } = true;
    /// <summary>Largest in-capsule write; further limited by the controller's IOCCSZ. 0: always R2T.</summary>
    public uint InCapsuleDataSize { get; init; } = 8192;
    public TimeSpan CommandTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>Ask the controller to disable SQ flow control (lets it use the C2HData SUCCESS flag).</summary>
    public bool DisableSqFlowControl { get; init; } = true;
    public int MaxR2T { get; init; } = 4;
    /// <summary>NVMe/TCP: the local address the connections leave from (null: the system chooses).</summary>
    public IPAddress? LocalAddress { get; init; }
    /// <summary>
    /// As Linux does: enable ANA change notices and keep one Asynchronous Event Request outstanding; after each ANA
    /// notice read the ANA log (which lets the controller report the next one) and send the request again. Completions
    /// are taken as they come, as Linux takes them (an interrupt): every few milliseconds once events are armed (also by
    /// <see cref="NvmeHost.EnableAsyncEvents"/>), and whenever the admin queue is polled (<see cref="NvmeHost.PollAdmin"/>
    /// or any admin command). A host that gave the association up (<see cref="NvmeHost.StopKeepAlive"/>) takes none and
    /// sends no request again.
    /// </summary>
    public bool AsyncEvents { get; init; }

    public string EffectiveHostNqn => HostNqn ?? $"nqn.2014-08.org.nvmexpress:uuid:{HostId}";
}

/// <summary>A command that completed with an error status.</summary>
public sealed class NvmeCommandException(string what, NvmeStatus status, uint dw0)
    : Exception($"{what} failed: {status}")
{
    public NvmeStatus Status { get; } = status;
    public uint Dw0 { get; } = dw0;
}

/// <summary>
/// An NVMe-oF host controller association over TCP or RDMA: the admin queue (thread-safe, synchronous commands,
/// keep-alive in the background) and the I/O queues (each for one thread at a time).
/// </summary>
public sealed unsafe class NvmeHost : IDisposable
{
    private readonly object _adminLock = new();
    private readonly IHostQueue _admin;
    private readonly SyncWaiter _adminWaiter = new();
    private readonly Dictionary<long, AdminWaiter> _adminWaiting = [];
    private readonly AdminCompletions _adminCompletions;
    private long _lastAdminToken = 1;
    private volatile string? _adminTimedOut;
    private readonly Timer? _keepAlive;
    private Timer? _eventPoll;
    private volatile bool _keepAliveStopped;
    private readonly object _eventPollLock = new(); // (not the admin lock: an admin command may hold that for its timeout)
    private readonly List<IoQueue> _ioQueues = [];
    private readonly ConcurrentQueue<uint> _events = new();
    private readonly AerCallback _aerCallback;
    private bool _disposed;

    public IPEndPoint Endpoint { get; }
    public string SubsystemNqn { get; }
    public NvmeHostOptions Options { get; }
    public ushort Cntlid { get; private set; }
    public byte[] IdentifyControllerData { get; private set; } = [];
    public IReadOnlyList<IoQueue> IoQueues => _ioQueues;
    public ulong Cap { get; private set; }

    public string SerialNumber => ReadField(4, 20);
    public string ModelNumber => ReadField(24, 40);
    public string FirmwareRevision => ReadField(64, 8);
    public uint MaxTransferSize
    {
        get
        {
            byte mdts = IdentifyControllerData[77];
            return mdts == 0 ? 1u << 30 : 4096u << mdts;
        }
    }
    public uint NamespaceCount => BitConverter.ToUInt32(IdentifyControllerData, 516);
    public uint Ioccsz => BitConverter.ToUInt32(IdentifyControllerData, 1792);

    private string ReadField(int offset, int length) => SpecText.ReadPadded(IdentifyControllerData.AsSpan(offset, length));

    private NvmeHost(IPEndPoint ep, string subnqn, NvmeHostOptions options, IHostQueue admin)
    {
        Endpoint = ep;
        SubsystemNqn = subnqn;
        Options = options;
        _admin = admin;
        _aerCallback = new AerCallback(this);
        _adminCompletions = new AdminCompletions(this);
        if (options.SendKeepAlive && options.KatoMs > 0)
        {
            int period = (int)Math.Max(100, options.KatoMs / 3);
            _keepAlive = new Timer(_ => SendKeepAliveSafe(), null, period, period);
        }
    }

    /// <summary>Connects the admin queue, enables the controller, identifies it and connects the I/O queues.</summary>
    public static NvmeHost Connect(IPEndPoint endpoint, string subsystemNqn, NvmeHostOptions? options = null)
    {
        options ??= new NvmeHostOptions();
        bool discovery = subsystemNqn == WellKnownNqn.Discovery;
        bool rdma = options.Transport == HostTransport.Rdma;
        IHostQueue admin = rdma
            ? RdmaHostQueue.Connect(endpoint.Address.ToString(), endpoint.Port, 0, new RdmaHostQueueOptions
            {
                Depth = options.AdminQueueDepth,
                ConnectTimeout = options.ConnectTimeout,
                AckTimeout = options.RdmaAckTimeout,
            })
            : TcpHostQueue.Connect(endpoint, new HostQueueOptions
            {
                HeaderDigest = options.HeaderDigest,
                DataDigest = options.DataDigest,
                Depth = options.AdminQueueDepth,
                InCapsuleDataSize = 8192,
                ConnectTimeout = options.ConnectTimeout,
                MaxR2T = options.MaxR2T,
                LocalAddress = options.LocalAddress,
            });
        var host = new NvmeHost(endpoint, subsystemNqn, options with { SendKeepAlive = options.SendKeepAlive }, admin);
        try
        {
            host.Cntlid = host.FabricsConnect(admin, host._adminWaiter, 0, (ushort)(options.AdminQueueDepth - 1), ConnectField.AnyController, discovery ? 0 : options.KatoMs);
            host.Cap = host.PropertyGet(Property.Cap, 8);
            host.PropertySet(Property.Cc, CcRegister.Make(true));
            host.WaitReady(true);
            host.IdentifyControllerData = host.Identify(Cns.Controller, 0);
            if (!discovery && options.AsyncEvents) host.EnableAsyncEvents(AsyncEvent.ConfigAnaChange);
            if (!discovery && options.IoQueues > 0)
            {
                int granted = host.SetQueueCount(options.IoQueues);
                int depth = Math.Min(options.IoQueueDepth, CapRegister.Mqes(host.Cap) + 1);
                uint icd = Math.Min(options.InCapsuleDataSize, host.Ioccsz >= 4 ? (host.Ioccsz * 16) - 64 : 0);
                for (int q = 1; q <= Math.Min(granted, options.IoQueues); q++)
                {
                    if (rdma)
                    {
                        var rq = RdmaHostQueue.Connect(endpoint.Address.ToString(), endpoint.Port, (ushort)q, new RdmaHostQueueOptions
                        {
                            Depth = Math.Max(depth, 2),
                            InCapsuleDataSize = icd,
                            ConnectTimeout = options.ConnectTimeout,
                            EventMode = options.RdmaReactorQueues,
                            ProtectionDomainFor = options.RdmaProtectionDomainFor,
                            AckTimeout = options.RdmaAckTimeout,
                        });
                        var rio = new IoQueue(host, rq, (ushort)q);
                        host._ioQueues.Add(rio);
                        host.FabricsConnect(rq, rio.Waiter, (ushort)q, (ushort)(Math.Max(depth, 2) - 1), host.Cntlid, 0);
                        // Reactor-driven queues post their sends once per loop iteration (one doorbell for many).
                        if (options.RdmaReactorQueues) rq.BatchSends = true;
                        continue;
                    }
                    var tq = TcpHostQueue.Connect(endpoint, new HostQueueOptions
                    {
                        HeaderDigest = options.HeaderDigest,
                        DataDigest = options.DataDigest,
                        Depth = depth,
                        InCapsuleDataSize = icd,
                        ConnectTimeout = options.ConnectTimeout,
                        MaxR2T = options.MaxR2T,
                        LocalAddress = options.LocalAddress,
                    });
                    var io = new IoQueue(host, tq, (ushort)q);
                    host._ioQueues.Add(io);
                    // Connect data (1024 bytes) always goes through R2T or in-capsule as the queue allows.
                    tq.InCapsuleDataSize = Math.Max(icd, 1024);
                    // A queue has at least two entries (SQSIZE is 0-based and must be at least 1).
                    host.FabricsConnect(tq, io.Waiter, (ushort)q, (ushort)(Math.Max(depth, 2) - 1), host.Cntlid, 0);
                    tq.InCapsuleDataSize = icd;
                }
            }
            return host;
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    private ushort FabricsConnect(IHostQueue q, SyncWaiter waiter, ushort qid, ushort sqsize, ushort cntlid, uint kato)
    {
        ConnectData data = ConnectData.For(Options.HostId, cntlid, SubsystemNqn, Options.EffectiveHostNqn);
        ConnectCommand cmd = default;
        cmd.Opcode = AdminOpcode.FabricsCommand;
        cmd.FabricsType = FabricsCommandType.Connect;
        cmd.RecordFormat = 0;
        cmd.Qid = qid;
        cmd.SqSize = sqsize;
        cmd.Cattr = (byte)(Options.DisableSqFlowControl ? 0x4 : 0);
        cmd.Kato = kato;
        SubmissionQueueEntry sqe = Unsafe.As<ConnectCommand, SubmissionQueueEntry>(ref cmd);
        CompletionQueueEntry cqe = waiter.Execute(q, sqe, (byte*)&data, (uint)sizeof(ConnectData), DataDirection.HostToController, Options.CommandTimeout);
        Check("Connect", cqe);
        return (ushort)cqe.Dw0;
    }

    /// <summary>Throws <see cref="NvmeCommandException"/> when the completion carries an error status.</summary>
    public static void Check(string what, in CompletionQueueEntry cqe)
    {
        NvmeStatus st = cqe.StatusField;
        if (!st.IsSuccess) throw new NvmeCommandException(what, st, cqe.Dw0);
    }

    /// <summary>
    /// Runs one admin command synchronously and returns its completion (does not throw on an error status).
    /// Thread-safe: several threads may have commands outstanding at once, each matched to its own answer by a token
    /// of its own. A command that gets no answer within <paramref name="timeout"/> (default
    /// <see cref="NvmeHostOptions.CommandTimeout"/>) ends the association — the admin queue is closed, every other
    /// outstanding command fails with a transport error — so a late answer can never be taken for another command's.
    /// </summary>
    public CompletionQueueEntry AdminCommand(in SubmissionQueueEntry sqe, Span<byte> data, DataDirection direction, TimeSpan? timeout = null)
    {
        var w = new AdminWaiter();
        TimeSpan limit = timeout ?? Options.CommandTimeout;
        fixed (byte* p = data)
        {
            long token;
            lock (_adminLock)
            {
                if (_disposed || _admin.IsBroken)
                    throw new NvmeTransportException($"admin queue closed{(_admin.Error != null ? $": {_admin.Error}" : "")}");
                token = ++_lastAdminToken;
                _adminWaiting[token] = w;
                if (!_admin.TrySubmit(sqe, p, (uint)data.Length, direction, _adminCompletions, token))
                {
                    _adminWaiting.Remove(token);
                    throw new InvalidOperationException("admin queue full");
                }
            }
            long deadline = Stopwatch.GetTimestamp() + (long)(limit.TotalSeconds * Stopwatch.Frequency);
            int idle = 0;
            while (!w.Done)
            {
                int n = 0;
                lock (_adminLock)
                {
                    if (w.Done) break;
                    if (_admin.IsBroken)
                    {
                        _adminWaiting.Remove(token);
                        throw new NvmeTransportException($"admin queue failed: {_admin.Error}");
                    }
                    n = _admin.Poll();
                    if (!w.Done && n == 0 && Stopwatch.GetTimestamp() > deadline)
                    {
                        _adminWaiting.Remove(token);
                        // The command may still be answered later: end the association so the answer cannot land on
                        // another command, and so nothing pointing at this caller's buffer stays in flight.
                        _adminTimedOut = $"admin command opcode {sqe.Opcode:X2} got no answer within {limit.TotalSeconds:0.###} s";
                        _admin.Dispose();
                        throw new TimeoutException($"command opcode {sqe.Opcode:X2} timed out after {limit.TotalSeconds:0.###} s; association closed");
                    }
                }
                if (!w.Done && n == 0 && ++idle > 64) _admin.WaitReadable(1);
            }
            return w.Cqe;
        }
    }

    /// <summary>Why the admin queue was closed by a timeout (null if it was not).</summary>
    public string? TimeoutReason => _adminTimedOut;

    private sealed class AdminWaiter
    {
        public volatile bool Done;
        public CompletionQueueEntry Cqe;
    }

    /// <summary>Routes admin completions to their waiters by token (called under the admin lock, from Poll).</summary>
    private sealed class AdminCompletions(NvmeHost host) : IHostCompletion
    {
        public void OnHostComplete(long token, in CompletionQueueEntry cqe)
        {
            if (!host._adminWaiting.Remove(token, out AdminWaiter? w)) return; // its caller gave up: the queue is closing
            w.Cqe = cqe;
            w.Done = true;
        }
    }

    public ulong PropertyGet(uint offset, int size)
    {
        PropertyCommand cmd = default;
        cmd.Opcode = AdminOpcode.FabricsCommand;
        cmd.FabricsType = FabricsCommandType.PropertyGet;
        cmd.Attributes = (byte)(size == 8 ? 1 : 0);
        cmd.Offset = offset;
        CompletionQueueEntry cqe = AdminCommand(Unsafe.As<PropertyCommand, SubmissionQueueEntry>(ref cmd), default, DataDirection.None);
        Check($"Property Get {offset:X}", cqe);
        return cqe.Dw0 | ((ulong)cqe.Dw1 << 32);
    }

    public void PropertySet(uint offset, uint value)
    {
        PropertyCommand cmd = default;
        cmd.Opcode = AdminOpcode.FabricsCommand;
        cmd.FabricsType = FabricsCommandType.PropertySet;
        cmd.Offset = offset;
        cmd.Value = value;
        Check($"Property Set {offset:X}", AdminCommand(Unsafe.As<PropertyCommand, SubmissionQueueEntry>(ref cmd), default, DataDirection.None));
    }

    private void WaitReady(bool ready)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(Math.Max(1, (int)CapRegister.Timeout(Cap)) * 0.5 * Stopwatch.Frequency);
        while (true)
        {
            uint csts = (uint)PropertyGet(Property.Csts, 4);
            if ((csts & CstsRegister.Fatal) != 0) throw new InvalidOperationException("controller reports fatal status (CSTS.CFS)");
            if (((csts & CstsRegister.Ready) != 0) == ready) return;
            if (Stopwatch.GetTimestamp() > deadline) throw new TimeoutException($"CSTS.RDY did not become {(ready ? 1 : 0)}");
            Thread.Sleep(1);
        }
    }

    public byte[] Identify(byte cns, uint nsid, byte csi = 0)
    {
        var buf = new byte[4096];
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.Identify;
        sqe.Nsid = nsid;
        sqe.Cdw10 = cns;
        sqe.Cdw11 = (uint)csi << 24;
        Check($"Identify CNS {cns:X2}", AdminCommand(sqe, buf, DataDirection.ControllerToHost));
        return buf;
    }

    public byte[] GetLogPage(byte lid, int length, ulong offset = 0, byte lsp = 0, bool rae = false, uint nsid = 0xFFFFFFFF)
    {
        if (length % 4 != 0 || length == 0) throw new ArgumentException("length must be a non-zero multiple of 4", nameof(length));
        var buf = new byte[length];
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.GetLogPage;
        sqe.Nsid = nsid;
        sqe.SetLogPage(lid, (uint)(length / 4), offset, lsp, rae);
        Check($"Get Log Page {lid:X2}", AdminCommand(sqe, buf, DataDirection.ControllerToHost));
        return buf;
    }

    /// <summary>Get Features: Dword 0 of the completion; <paramref name="data"/> receives the feature's data structure, if any.</summary>
    public uint GetFeature(byte fid, FeatureSelect sel = FeatureSelect.Current, uint cdw11 = 0, byte[]? data = null, uint nsid = 0)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.GetFeatures;
        sqe.Nsid = nsid;
        sqe.Cdw10 = fid | ((uint)sel << 8);
        sqe.Cdw11 = cdw11;
        CompletionQueueEntry cqe = AdminCommand(sqe, data, data == null ? DataDirection.None : DataDirection.ControllerToHost);
        Check($"Get Features {fid:X2}", cqe);
        return cqe.Dw0;
    }

    public uint SetFeature(byte fid, uint cdw11, uint nsid = 0)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.SetFeatures;
        sqe.Nsid = nsid;
        sqe.Cdw10 = fid;
        sqe.Cdw11 = cdw11;
        CompletionQueueEntry cqe = AdminCommand(sqe, default, DataDirection.None);
        Check($"Set Features {fid:X2}", cqe);
        return cqe.Dw0;
    }

    private int SetQueueCount(int n)
    {
        return QueueCount.Decode(SetFeature(FeatureId.NumberOfQueues, QueueCount.Encode(n)));
    }

    /// <summary>Abort of command <paramref name="cid"/> on queue <paramref name="sqid"/>: true when the controller aborted it (DW0 bit 0 clear).</summary>
    public bool Abort(ushort sqid, ushort cid)
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.Abort;
        sqe.Cdw10 = sqid | ((uint)cid << 16);
        CompletionQueueEntry cqe = AdminCommand(sqe, default, DataDirection.None);
        Check("Abort", cqe);
        return (cqe.Dw0 & 1) == 0;
    }

    public void KeepAlive()
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.KeepAlive;
        Check("Keep Alive", AdminCommand(sqe, default, DataDirection.None));
    }

    private void SendKeepAliveSafe()
    {
        try
        {
            if (!_disposed && !_admin.IsBroken) KeepAlive();
        }
        catch (Exception)
        {
            // The association is gone; the next explicit command reports it.
        }
    }

    /// <summary>Identify Namespace (CNS 00h) parsed into the fields hosts use.</summary>
    public NamespaceInfo IdentifyNamespace(uint nsid)
    {
        byte[] d = Identify(Cns.Namespace, nsid);
        IdentifyNamespace id = MemoryMarshal.Read<IdentifyNamespace>(d);
        return new NamespaceInfo(nsid, id.Nsze, id.FormattedBlockSize, id.Nmic, id.Anagrpid, new ReadOnlySpan<byte>(id.Nguid, 16).ToArray());
    }

    public IReadOnlyList<uint> ActiveNamespaces()
    {
        byte[] d = Identify(Cns.ActiveNamespaceList, 0);
        var list = new List<uint>();
        for (int i = 0; i < 1024; i++)
        {
            uint n = BitConverter.ToUInt32(d, i * 4);
            if (n == 0) break;
            list.Add(n);
        }
        return list;
    }

    /// <summary>Reads the whole discovery log (header first, then all records), as nvme-cli does.</summary>
    public IReadOnlyList<DiscoveryEntry> GetDiscoveryLog()
    {
        for (int attempt = 0; attempt < 5; attempt++)
        {
            byte[] hdr = GetLogPage(LogPageId.Discovery, 1024, nsid: 0);
            ulong gen = BitConverter.ToUInt64(hdr, 0);
            ulong count = BitConverter.ToUInt64(hdr, 8);
            if (count == 0) return [];
            byte[] all = GetLogPage(LogPageId.Discovery, (int)(1024 + count * 1024), nsid: 0);
            if (BitConverter.ToUInt64(all, 0) != gen) continue;
            var list = new List<DiscoveryEntry>();
            for (ulong i = 0; i < count; i++)
            {
                ReadOnlySpan<byte> e = all.AsSpan((int)(1024 + i * 1024), 1024);
                list.Add(new DiscoveryEntry(e[0], e[1], e[2], BitConverter.ToUInt16(e[4..]), BitConverter.ToUInt16(e[6..]),
                    SpecText.ReadNulTerminated(e.Slice(32, 32)).Trim(), SpecText.ReadNulTerminated(e.Slice(256, 256)),
                    SpecText.ReadNulTerminated(e.Slice(512, 256)).Trim()));
            }
            return list;
        }
        throw new InvalidOperationException("discovery log kept changing while being read");
    }

    /// <summary>Arms asynchronous event requests; completed events are queued for <see cref="TryGetEvent"/>.</summary>
    public void EnableAsyncEvents(uint config, int count = 1)
    {
        SetFeature(FeatureId.AsyncEventConfiguration, config);
        lock (_adminLock)
        {
            for (int i = 0; i < count; i++) SubmitAer();
            _admin.Poll();
        }
        // Events are taken as they come while the host keeps the association (Linux: an interrupt).
        lock (_eventPollLock)
        {
            if (!_keepAliveStopped && !_disposed && _eventPoll == null)
                _eventPoll = new Timer(_ => PollAdmin(), null, EventPollMs, EventPollMs);
        }
    }

    private void SubmitAer()
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.AsyncEventRequest;
        _admin.TrySubmit(sqe, null, 0, DataDirection.None, _aerCallback, 0);
    }

    /// <summary>Waits (bounded) for the next asynchronous event; its completion DW0.</summary>
    public uint WaitForEvent(TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < timeout)
        {
            if (TryGetEvent(out uint dw0)) return dw0;
            Thread.Sleep(10);
        }
        throw new TimeoutException($"no asynchronous event within {timeout.TotalSeconds:0.#} s");
    }

    /// <summary>Polls the admin queue for completed asynchronous events (completion DW0).</summary>
    public bool TryGetEvent(out uint dw0)
    {
        lock (_adminLock) _admin.Poll();
        return _events.TryDequeue(out dw0);
    }

    /// <summary>Takes the admin queue's completions (asynchronous events) if no other thread is using it; never blocks.</summary>
    public void PollAdmin()
    {
        if (!Monitor.TryEnter(_adminLock)) return;
        try
        {
            if (!_disposed && !_admin.IsBroken) _admin.Poll();
        }
        catch (NvmeTransportException)
        {
            // The association is gone; the next explicit command reports it.
        }
        finally
        {
            Monitor.Exit(_adminLock);
        }
    }

    private readonly byte[] _anaLog = GC.AllocateArray<byte>(4096, pinned: true);
    private readonly IgnoreCompletion _ignore = new();

    /// <summary>Reads the ANA log without waiting for it (admin lock held): reading it lets the controller report the next ANA change.</summary>
    private void ReadAnaLogInBackground()
    {
        SubmissionQueueEntry sqe = default;
        sqe.Opcode = AdminOpcode.GetLogPage;
        sqe.Nsid = 0xFFFFFFFF;
        sqe.SetLogPage(LogPageId.Ana, (uint)(_anaLog.Length / 4), 0, 0, false);
        fixed (byte* p = _anaLog) _admin.TrySubmit(sqe, p, (uint)_anaLog.Length, DataDirection.ControllerToHost, _ignore, 0);
    }

    private sealed class IgnoreCompletion : IHostCompletion
    {
        public void OnHostComplete(long token, in CompletionQueueEntry cqe) { }
    }

    private sealed class AerCallback(NvmeHost host) : IHostCompletion
    {
        public void OnHostComplete(long token, in CompletionQueueEntry cqe)
        {
            if (!cqe.StatusField.IsSuccess) return;
            if (host._events.Count < 1024) host._events.Enqueue(cqe.Dw0);
            // A host that gave the association up answers nothing more on it (a keep-alive already waiting on the admin
            // queue when it did may still take this completion).
            if (host._keepAliveStopped) return;
            if (host.Options.AsyncEvents && AsyncEvent.LogPageOf(cqe.Dw0) == LogPageId.Ana) host.ReadAnaLogInBackground();
            host.SubmitAer();
        }
    }

    /// <summary>
    /// Gives up ownership of the I/O queues (another thread will drive and dispose them); <see cref="Dispose"/>
    /// then closes only the admin queue.
    /// </summary>
    public IReadOnlyList<IoQueue> DetachIoQueues()
    {
        IoQueue[] list = [.. _ioQueues];
        _ioQueues.Clear();
        return list;
    }

    private const int EventPollMs = 5;

    /// <summary>Stops sending Keep Alive and taking asynchronous events (a host that abandoned the association without closing it).</summary>
    public void StopKeepAlive()
    {
        lock (_eventPollLock)
        {
            _keepAliveStopped = true;
            _keepAlive?.Dispose();
            _eventPoll?.Dispose();
        }
    }

    /// <summary>True once the admin queue's connection failed.</summary>
    public bool AdminBroken => _admin.IsBroken;

    /// <summary>Normal shutdown (CC.SHN), then closes every queue.</summary>
    public void Shutdown()
    {
        try
        {
            PropertySet(Property.Cc, CcRegister.Make(true, shn: 1));
            long deadline = Stopwatch.GetTimestamp() + 2 * Stopwatch.Frequency;
            while (((uint)PropertyGet(Property.Csts, 4) & CstsRegister.ShutdownMask) != CstsRegister.ShutdownComplete
                   && Stopwatch.GetTimestamp() < deadline)
                Thread.Sleep(1);
        }
        finally
        {
            Dispose();
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _keepAlive?.Dispose();
        lock (_eventPollLock) _eventPoll?.Dispose();
        foreach (IoQueue q in _ioQueues) q.Transport.Dispose();
        lock (_adminLock) _admin.Dispose();
    }
}

public sealed record NamespaceInfo(uint Nsid, ulong BlockCount, uint BlockSize, byte Nmic, uint AnaGroupId, byte[] Nguid)
{
    public ulong SizeBytes => BlockCount * BlockSize;
}

public sealed record DiscoveryEntry(byte TrType, byte AdrFam, byte SubType, ushort PortId, ushort Cntlid, string TrSvcId, string SubNqn, string TrAddr);

/// <summary>
/// Synchronous execution on a host queue used by one thread: submit, then poll until the completion arrives. Each
/// command has a token of its own; a command that times out closes the queue, so its late answer cannot be taken
/// for a later command's.
/// </summary>
internal sealed unsafe class SyncWaiter : IHostCompletion
{
    private bool _done;
    private long _token = 1;
    private CompletionQueueEntry _cqe;

    public void OnHostComplete(long token, in CompletionQueueEntry cqe)
    {
        if (token != _token) return;
        _cqe = cqe;
        _done = true;
    }

    public CompletionQueueEntry Execute(IHostQueue q, in SubmissionQueueEntry sqe, byte* data, uint length, DataDirection dir, TimeSpan timeout)
    {
        _done = false;
        long token = ++_token;
        if (!q.TrySubmit(sqe, data, length, dir, this, token)) throw new InvalidOperationException("queue full");
        long deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        int idle = 0;
        while (!_done)
        {
            if (q.Poll() == 0 && !_done)
            {
                if (Stopwatch.GetTimestamp() > deadline)
                {
                    q.Dispose();
                    throw new TimeoutException($"command opcode {sqe.Opcode:X2} timed out after {timeout.TotalSeconds:0.###} s; queue closed");
                }
                if (++idle > 64) q.WaitReadable(1);
            }
        }
        return _cqe;
    }
}
