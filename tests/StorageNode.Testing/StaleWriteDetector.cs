using System.Buffers.Binary;
using System.Diagnostics;
using StorageNode.Nvme;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Testing;

/// <summary>
/// A stale-write detector. One host with a path to each node of a pair writes versioned, self-describing blocks (each
/// 4 KiB unit holds its namespace, LBA, version and the path that wrote it, under a CRC) to both nodes' namespaces
/// and reads them back, while faults are injected at random: paths and the interconnect are cut (connections reset)
/// or partitioned (traffic held, nothing closed; the partition later heals, delivering what it held, or is cut).
/// The host behaves like a multipath host: it uses each namespace's owner path when it can and the other one
/// otherwise (now and then the other one anyway), gives a command up after <see cref="Options.IoTimeout"/>, then
/// abandons that association — closing it, or leaving it half open with its keep-alive stopped — and retries the same
/// version elsewhere before writing a newer one; it reconnects later. Like Linux it keeps an Asynchronous Event Request
/// with ANA change notices on each association it uses and takes its completions as they come (never again on one it
/// abandoned). The invariant: a block never goes back to an
/// older version than the host saw acknowledged or read (its "floor"). Every read checks it; so does a final read of
/// every unit after all faults healed and every relay deadline passed.
/// </summary>
public sealed unsafe class StaleWriteDetector : IDisposable
{
    public sealed record Options
    {
        /// <summary>4 KiB units per namespace.</summary>
        public int Units { get; init; } = 48;
        public uint[] Nsids { get; init; } = [1, 2];
        public int QueueDepth { get; init; } = 12;
        public TimeSpan IoTimeout { get; init; } = TimeSpan.FromSeconds(3);
        /// <summary>How many faults to inject before the final check.</summary>
        public int Faults { get; init; } = 100;
        /// <summary>Upper bound on the whole run (faults stop being injected when it is near).</summary>
        public TimeSpan Limit { get; init; } = TimeSpan.FromMinutes(4);
        public int Seed { get; init; } = 1;
        public uint KatoMs { get; init; } = 10_000;
        /// <summary>How long the nodes keep relayed commands alive (the final check waits past it).</summary>
        public TimeSpan RelayTimeout { get; init; } = TimeSpan.FromSeconds(2);
        /// <summary>Share of commands sent on the non-owner path although the owner path works (switches between nodes).</summary>
        public double OtherPathShare { get; init; } = 0.01;
        public bool StopAtFirstViolation { get; init; }
        /// <summary>
        /// Only partitions of the host's paths, each longer than the I/O timeout and healed (what was held is
        /// delivered): the case a fence is for, every time, rather than now and then.
        /// </summary>
        public bool PathPartitionsOnly { get; init; }

        /// <summary>
        /// The replicas' check (<c>Cluster:Mirror</c>): reads the bytes [offset, offset + length) of the replica its keeper
        /// holds of a namespace, and says whether the keeper called it whole both before and after the read. Every
        /// 100 ms, and once more at the end, each unit of a replica called whole must hold at least the newest version
        /// the host had acknowledged before the check began. Null: no replica check.
        /// </summary>
        public Func<uint, ulong, int, (bool Whole, byte[] Bytes)>? Replica { get; init; }

        /// <summary>
        /// With <see cref="Replica"/>: once the faults are done, the host goes on writing, with no more faults, until this
        /// many checks found a replica its keeper calls whole (how much of the run the replicas are whole depends on the
        /// machine's speed, not on the faults alone); bounded by <see cref="Limit"/>.
        /// </summary>
        public int MinWholeChecks { get; init; }

        /// <summary>
        /// Restarts a node (the caller says which and how) and says what it did. Every <see cref="RestartEvery"/>th fault
        /// (from the tenth on) partitions the interconnect both ways, and <see cref="RestartAfter"/> later, while the host
        /// keeps writing (the owners complete writes their replicas lack, once the keepers' leases ran out), restarts the
        /// node; the partitions heal half a second after. Null: none.
        /// </summary>
        public Func<string>? Restart { get; init; }
        public int RestartEvery { get; init; } = 20;
        public TimeSpan RestartAfter { get; init; } = TimeSpan.FromSeconds(4);
    }

    public sealed class Report
    {
        public long Writes, Reads, Retries, Reconnects, Abandoned, Faults;
        /// <summary>Replica checks run, and how many of them found the replica called whole (only those can find a violation).</summary>
        public long ReplicaChecks, ReplicaChecksWhole;
        public readonly Dictionary<string, int> FaultKinds = [];
        public readonly List<string> Violations = [];
        /// <summary>What the host and the fault injector did (the last 400 events), to read next to the nodes' logs.</summary>
        public readonly Queue<string> Events = new();
        public TimeSpan Elapsed;

        public override string ToString() =>
            $"{Writes} writes and {Reads} reads acknowledged, {Retries} retries, {Abandoned} associations abandoned, {Reconnects} reconnects, " +
            $"{Faults} faults ({string.Join(", ", FaultKinds.OrderBy(k => k.Key).Select(k => $"{k.Key} {k.Value}"))}), " +
            $"{ReplicaChecks} replica checks ({ReplicaChecksWhole} of replicas called whole), {Violations.Count} violation(s), " +
            $"{Elapsed.TotalSeconds:0.0} s";
    }

    private const int UnitBytes = 4096;
    private const uint BlocksPerUnit = UnitBytes / 512;
    private const ulong BaseLba = 4096;
    private const ulong Magic = 0x31454C4154534E53; // "SNSTALE1"

    private sealed class Unit(uint nsid, int index)
    {
        public readonly uint Nsid = nsid;
        public readonly int Index = index;
        public ulong Lba => BaseLba + (ulong)Index * BlocksPerUnit;
        /// <summary>The newest version written (issued).</summary>
        public ulong Issued;
        /// <summary>The oldest version the unit may hold: the newest acknowledged or read.</summary>
        public ulong Floor;
        /// <summary>The newest version a write of which was acknowledged (a replica called whole holds at least this).</summary>
        public ulong Acked;
        /// <summary>A write whose fate is unknown: it is retried with this version before any newer one.</summary>
        public ulong Retry;
        public bool Busy;
        /// <summary>The unit's last commands (issued, completed, abandoned), for the failure message of a violation on it.</summary>
        public readonly Queue<string> History = new();

        /// <summary>Every write of each version: when and where it was sent, and what became of it.</summary>
        public readonly Dictionary<ulong, string> Writes = [];

        public void Note(string what, ulong writeVersion = 0)
        {
            string line = $"{DateTime.UtcNow:HH:mm:ss.fff} {what}";
            if (History.Count == 32) History.Dequeue();
            History.Enqueue(line);
            if (writeVersion != 0) Writes[writeVersion] = Writes.TryGetValue(writeVersion, out string? before) ? before + "; " + line : line;
        }
    }

    private sealed class Op : IHostCompletion
    {
        public readonly byte[] Buffer = GC.AllocateArray<byte>(UnitBytes, pinned: true);
        public Unit Unit = null!;
        public bool IsWrite;
        public ulong Version;
        public ulong FloorAtIssue;
        public Path Path = null!;
        public NvmeHost Association = null!;
        public long Issued;
        public bool Done;
        public CompletionQueueEntry Cqe;

        public void OnHostComplete(long token, in CompletionQueueEntry cqe)
        {
            Cqe = cqe;
            Done = true;
        }
    }

    private sealed class Path(int index, string name, TcpForwarder forwarder)
    {
        public readonly int Index = index;
        public readonly string Name = name;
        public readonly TcpForwarder Forwarder = forwarder;
        public NvmeHost? Host;
        public Task<NvmeHost?>? Connecting;
        public long ReconnectAt;
        public long HealAt;
        public bool Partitioned;
        public bool DropOnHeal;
    }

    private readonly IPairRig _pair;
    private readonly Options _o;
    private readonly Random _rng;
    private readonly Guid _hostId = Guid.NewGuid();
    private readonly Path[] _paths;
    private readonly List<Unit> _units = [];
    private readonly List<Op> _inflight = [];
    // Units to read first: after a partition heals, whatever it held lands at once; read everything before it is overwritten.
    private readonly Queue<Unit> _scan = new();
    private readonly Stack<Op> _free = new();
    // Abandoned associations and the commands still pointing at their buffers: disposed at the end.
    private readonly List<(NvmeHost Host, List<Op> Ops)> _abandoned = [];
    private readonly (TcpForwarder Forwarder, string Name)[] _interconnect;
    private readonly bool[] _icPartitioned = new bool[2];
    private readonly long[] _icHealAt = new long[2];
    private readonly Report _report = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    public StaleWriteDetector(IPairRig pair, Options options)
    {
        _pair = pair;
        _o = options;
        _rng = new Random(options.Seed);
        _paths = [new Path(0, "A", new TcpForwarder(pair.EndpointA)), new Path(1, "B", new TcpForwarder(pair.EndpointB))];
        _interconnect = [(pair.InterconnectAtoB, "A->B"), (pair.InterconnectBtoA, "B->A")];
        foreach (uint nsid in options.Nsids)
            for (int i = 0; i < options.Units; i++) _units.Add(new Unit(nsid, i));
        for (int i = 0; i < options.QueueDepth; i++) _free.Push(new Op());
    }

    private long Now => _clock.ElapsedMilliseconds;

    public Report Run()
    {
        long nextFault = Now + 1000;
        long faultStop = (long)(_o.Limit.TotalMilliseconds * 0.7);
        while (true)
        {
            long now = Now;
            // (faults go on past the count while a restart it owes has not been scheduled yet)
            bool faultsDone = (_report.Faults >= _o.Faults && _restartsScheduled >= RestartsDue(_o.Faults)) || now > faultStop;
            if (!faultsDone && now >= nextFault)
            {
                InjectFault(now);
                nextFault = now + _rng.Next(200, 450);
            }
            HealDue(now);
            if (_o.Replica != null && now >= _nextReplicaCheck)
            {
                CheckReplicas("");
                _nextReplicaCheck = now + 100;
            }
            if (faultsDone && NothingPartitioned() && _report.ReplicaChecksWhole >= _o.MinWholeChecks) break;
            if (_o.StopAtFirstViolation && _report.Violations.Count > 0) break;
            if (now > _o.Limit.TotalMilliseconds) throw new TimeoutException($"the detector ran past {_o.Limit.TotalSeconds} s: {_report}");
            Step(now, issue: true);
        }
        FinalCheck();
        _report.Elapsed = _clock.Elapsed;
        return _report;
    }

    // ------------------------------------------------------------------ the host

    /// <summary>One round of the host: paths, new commands, polling, completions, timeouts.</summary>
    private void Step(long now, bool issue)
    {
        foreach (Path p in _paths) Connect(p, now);
        if (issue) IssueCommands();
        int work = 0;
        foreach (Path p in _paths)
        {
            if (p.Host == null) continue;
            p.Host.PollAdmin(); // asynchronous events, as Linux takes them (an abandoned association is never polled again)
            try { work += p.Host.IoQueues[0].Transport.Poll(); }
            catch (NvmeTransportException) { }
            if (p.Host.IoQueues[0].Transport.IsBroken) Abandon(p, "connection lost", close: true);
        }
        Path? late = null;
        for (int i = _inflight.Count - 1; i >= 0; i--)
        {
            Op op = _inflight[i];
            if (op.Done)
            {
                _inflight.RemoveAt(i);
                Complete(op);
            }
            else if (now - op.Issued > _o.IoTimeout.TotalMilliseconds && op.Path.Host == op.Association)
            {
                late = op.Path;
            }
        }
        if (late != null) Abandon(late, "I/O timeout", close: _rng.Next(2) == 0);
        if (work == 0) Thread.Sleep(1);
    }

    private void Connect(Path p, long now)
    {
        if (p.Connecting is { IsCompleted: true } t)
        {
            p.Connecting = null;
            p.Host = t.IsCompletedSuccessfully ? t.Result : null;
            if (p.Host == null) p.ReconnectAt = now + 300;
            else
            {
                _report.Reconnects++;
                Event($"path {p.Name} connected: cntlid {p.Host.Cntlid}");
            }
        }
        if (p.Host != null || p.Connecting != null || now < p.ReconnectAt) return;
        var ep = p.Forwarder.Endpoint;
        var options = new NvmeHostOptions
        {
            HostId = _hostId, KatoMs = _o.KatoMs, SendKeepAlive = true, IoQueueDepth = _o.QueueDepth + 2, AsyncEvents = true,
            CommandTimeout = TimeSpan.FromSeconds(2), ConnectTimeout = TimeSpan.FromSeconds(2),
        };
        p.Connecting = Task.Run(() =>
        {
            try { return (NvmeHost?)_pair.Connect(ep, _hostId, options); }
            catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException or System.Net.Sockets.SocketException)
            {
                return null;
            }
        });
    }

    private Path? Choose(Unit u)
    {
        Path owner = _paths[u.Nsid == 1 ? 0 : 1], other = _paths[u.Nsid == 1 ? 1 : 0];
        if (owner.Host != null && (other.Host == null || _rng.NextDouble() >= _o.OtherPathShare)) return owner;
        return other.Host != null ? other : null;
    }

    private void IssueCommands()
    {
        int tries = 0;
        while (_free.Count > 0 && tries++ < 4 * _o.QueueDepth)
        {
            bool scan = _scan.Count > 0;
            Unit u = scan ? _scan.Dequeue() : _units[_rng.Next(_units.Count)];
            if (u.Busy)
            {
                if (scan) _scan.Enqueue(u);
                continue;
            }
            Path? p = Choose(u);
            if (p?.Host == null) return;
            Op op = _free.Pop();
            op.Unit = u;
            op.Path = p;
            op.Association = p.Host;
            op.Done = false;
            op.Issued = Now;
            op.FloorAtIssue = u.Floor;
            op.IsWrite = !scan && (u.Retry != 0 || _rng.Next(10) < 7);
            DataDirection dir;
            if (op.IsWrite)
            {
                op.Version = u.Retry != 0 ? u.Retry : ++u.Issued;
                Fill(op.Buffer, u, op.Version, p.Index);
                dir = DataDirection.HostToController;
            }
            else
            {
                Array.Clear(op.Buffer);
                dir = DataDirection.ControllerToHost;
            }
            SubmissionQueueEntry sqe = IoQueue.ReadWriteSqe(op.IsWrite ? IoOpcode.Write : IoOpcode.Read, u.Nsid, u.Lba, BlocksPerUnit);
            u.Note($"{(op.IsWrite ? $"write v{op.Version}" : "read")} sent on path {p.Name} cntlid {p.Host.Cntlid}", op.IsWrite ? op.Version : 0);
            fixed (byte* b = op.Buffer)
            {
                if (!p.Host.IoQueues[0].Transport.TrySubmit(sqe, b, UnitBytes, dir, op, 0))
                {
                    if (op.IsWrite && u.Retry == 0) u.Issued--;
                    _free.Push(op);
                    return;
                }
            }
            u.Busy = true;
            _inflight.Add(op);
        }
    }

    private void Complete(Op op)
    {
        Unit u = op.Unit;
        u.Busy = false;
        _free.Push(op);
        NvmeStatus st = op.Cqe.StatusField;
        u.Note($"{(op.IsWrite ? $"write v{op.Version}" : "read")} on path {op.Path.Name} cntlid {op.Association.Cntlid}: {(st.IsSuccess ? "done" : st.ToString())}"
            + (op.IsWrite || !st.IsSuccess ? "" : $" (v{Parse(op.Buffer, u, out _)})"), op.IsWrite ? op.Version : 0);
        if (op.IsWrite)
        {
            if (st.IsSuccess)
            {
                _report.Writes++;
                u.Retry = 0;
                u.Floor = Math.Max(u.Floor, op.Version);
                u.Acked = Math.Max(u.Acked, op.Version);
            }
            else
            {
                // Not done, as far as the host knows: the same version again, before anything newer.
                _report.Retries++;
                u.Retry = op.Version;
            }
            return;
        }
        if (!st.IsSuccess) return;
        _report.Reads++;
        ulong v = Parse(op.Buffer, u, out string? bad);
        if (bad != null) Violation($"read of {Describe(u)} through {op.Path.Name}: {bad}", u);
        else if (v < op.FloorAtIssue) Violation($"{Describe(u)} went back to version {v} (read through {op.Path.Name}) after version {op.FloorAtIssue} was acknowledged or read", u, v);
        else if (v > u.Issued) Violation($"{Describe(u)} holds version {v}, never written (newest {u.Issued})", u, v);
        else u.Floor = Math.Max(u.Floor, v);
    }

    /// <summary>
    /// The host gives up on an association, as after a command timed out: every command on it is abandoned (writes
    /// retried elsewhere), and the association is closed, or left half open with its keep-alive stopped.
    /// </summary>
    private void Abandon(Path p, string why, bool close)
    {
        NvmeHost? host = p.Host;
        if (host == null) return;
        Event($"abandon path {p.Name} cntlid {host.Cntlid} ({why}, {(close ? "closed" : "left half open")})");
        p.Host = null;
        p.ReconnectAt = Now + _rng.Next(200, 800);
        _report.Abandoned++;
        var ops = new List<Op>();
        for (int i = _inflight.Count - 1; i >= 0; i--)
        {
            Op op = _inflight[i];
            if (op.Association != host) continue;
            _inflight.RemoveAt(i);
            ops.Add(op);
            op.Unit.Busy = false;
            op.Unit.Note($"{(op.IsWrite ? $"write v{op.Version}" : "read")} on path {p.Name} cntlid {host.Cntlid}: abandoned ({why}, {(close ? "closed" : "left half open")})",
                op.IsWrite ? op.Version : 0);
            if (op.IsWrite)
            {
                op.Unit.Retry = op.Version;
                _report.Retries++;
            }
            _free.Push(new Op()); // the abandoned command keeps its buffer until its association is gone
        }
        if (close) host.Dispose();
        else host.StopKeepAlive();
        _abandoned.Add((host, ops));
    }

    // ------------------------------------------------------------------ faults

    private void InjectFault(long now)
    {
        int kind = _rng.Next(10);
        string name;
        // The restarts owed by now (one per RestartEvery faults, from the tenth on), each once the one before has run: a
        // restart is never scheduled over one still waiting for its time (faults come faster than RestartAfter at times).
        if (_restartAt == 0 && _restartsScheduled < RestartsDue(_report.Faults + 1))
        {
            _restartsScheduled++;
            name = "partition the interconnect both ways, then restart";
            long restartAt = now + (long)_o.RestartAfter.TotalMilliseconds;
            for (int d = 0; d < 2; d++)
            {
                if (!_icPartitioned[d]) _interconnect[d].Forwarder.Partition();
                _icPartitioned[d] = true;
                _icHealAt[d] = restartAt + 500;
            }
            _restartAt = restartAt;
        }
        else if (_o.PathPartitionsOnly)
        {
            Path p = _paths[_rng.Next(2)];
            if (p.Partitioned || _paths[1 - p.Index].Partitioned) return;
            name = $"partition path {p.Name}";
            p.Forwarder.Partition();
            p.Partitioned = true;
            p.DropOnHeal = false;
            p.HealAt = now + (long)_o.IoTimeout.TotalMilliseconds + _rng.Next(500, 2000);
        }
        else if (kind < 5)
        {
            Path p = _paths[_rng.Next(2)];
            if (p.Partitioned || kind < 2)
            {
                name = $"cut path {p.Name}";
                p.Forwarder.Cut();
            }
            else
            {
                name = $"partition path {p.Name}";
                p.Forwarder.Partition();
                p.Partitioned = true;
                p.DropOnHeal = _rng.Next(10) < 3;
                p.HealAt = now + _rng.Next(500, 4500);
            }
        }
        else
        {
            int d = _rng.Next(2);
            (TcpForwarder f, string ic) = _interconnect[d];
            if (_icPartitioned[d] || kind < 7)
            {
                name = $"cut interconnect {ic}";
                f.Cut();
            }
            else
            {
                name = $"partition interconnect {ic}";
                f.Partition();
                _icPartitioned[d] = true;
                _icHealAt[d] = now + _rng.Next(300, 2500);
            }
        }
        _report.Faults++;
        _report.FaultKinds[name] = _report.FaultKinds.GetValueOrDefault(name) + 1;
        Event(name);
    }

    // When the restart the last such fault scheduled is due (0: none).
    private long _restartAt;
    private int _restartsScheduled;

    /// <summary>Restarts due once <paramref name="faults"/> faults have been injected (the ones whose index is RestartEvery / 2 modulo RestartEvery).</summary>
    private int RestartsDue(long faults)
    {
        if (_o.Restart == null || _o.PathPartitionsOnly) return 0;
        int first = _o.RestartEvery / 2;
        return faults <= first ? 0 : (int)((faults - first - 1) / _o.RestartEvery + 1);
    }

    private void HealDue(long now)
    {
        if (_restartAt != 0 && now >= _restartAt)
        {
            _restartAt = 0;
            Event(_o.Restart!());
        }
        foreach (Path p in _paths)
        {
            if (!p.Partitioned || now < p.HealAt) continue;
            p.Partitioned = false;
            if (p.DropOnHeal) p.Forwarder.Cut();
            p.Forwarder.Heal();
            Event($"path {p.Name} {(p.DropOnHeal ? "cut" : "healed")}");
            if (!p.DropOnHeal && _scan.Count == 0) foreach (Unit u in _units) _scan.Enqueue(u);
        }
        for (int d = 0; d < 2; d++)
        {
            if (!_icPartitioned[d] || now < _icHealAt[d]) continue;
            _icPartitioned[d] = false;
            _interconnect[d].Forwarder.Heal();
            if (_scan.Count == 0) foreach (Unit u in _units) _scan.Enqueue(u);
        }
    }

    private bool NothingPartitioned() => !_paths[0].Partitioned && !_paths[1].Partitioned && !_icPartitioned[0] && !_icPartitioned[1] && _restartAt == 0;

    private long _nextReplicaCheck;

    /// <summary>
    /// Each replica its keeper calls whole (before and after it is read) holds, in every unit, at least the newest
    /// version the host had acknowledged when the check began (<see cref="Options.Replica"/>).
    /// </summary>
    private void CheckReplicas(string when)
    {
        foreach (uint nsid in _o.Nsids)
        {
            List<Unit> units = [.. _units.Where(u => u.Nsid == nsid)];
            ulong[] acked = [.. units.Select(u => u.Acked)];
            (bool whole, byte[] bytes) = _o.Replica!(nsid, BaseLba * 512, units.Count * UnitBytes);
            _report.ReplicaChecks++;
            if (!whole) continue;
            _report.ReplicaChecksWhole++;
            var buf = new byte[UnitBytes];
            for (int i = 0; i < units.Count; i++)
            {
                bytes.AsSpan(i * UnitBytes, UnitBytes).CopyTo(buf);
                ulong v = Parse(buf, units[i], out string? bad);
                // A replica in RAM read while a copy lands in it can show a torn unit: only at the end, with nothing in
                // flight, is that a fault.
                if (bad != null && when.Length == 0 && bad.StartsWith("torn", StringComparison.Ordinal)) continue;
                if (bad != null) Violation($"the replica of {Describe(units[i])}{when}, called whole: {bad}");
                else if (v < acked[i]) Violation($"the replica of {Describe(units[i])}{when} holds version {v}, called whole by its keeper, after version {acked[i]} was acknowledged");
            }
        }
    }

    // ------------------------------------------------------------------ the end

    /// <summary>
    /// With every fault healed: finish what is in flight, wait until every relay deadline and every held old copy has
    /// had its chance to land, then read every unit (each must be at or above its floor).
    /// </summary>
    private void FinalCheck()
    {
        foreach (Path p in _paths)
        {
            p.Partitioned = false;
            p.Forwarder.Heal();
        }
        foreach ((TcpForwarder f, _) in _interconnect) f.Heal();
        long settleUntil = Now + (long)(_o.IoTimeout.TotalMilliseconds + 2 * _o.RelayTimeout.TotalMilliseconds) + 3000;
        while (Now < settleUntil) Step(Now, issue: false);
        foreach ((NvmeHost host, _) in _abandoned) host.Dispose();
        Thread.Sleep((int)_o.RelayTimeout.TotalMilliseconds + 500);
        _pair.WaitHealthy(TimeSpan.FromSeconds(30));
        using NvmeHost reader = _pair.Connect(_pair.EndpointA, Guid.NewGuid());
        var buf = new byte[UnitBytes];
        foreach (Unit u in _units)
        {
            NvmeStatus st = reader.IoQueues[0].Read(u.Nsid, u.Lba, BlocksPerUnit, buf);
            if (!st.IsSuccess)
            {
                Violation($"final read of {Describe(u)}: {st}");
                continue;
            }
            ulong v = Parse(buf, u, out string? bad);
            if (bad != null) Violation($"final read of {Describe(u)}: {bad}", u);
            else if (v < u.Floor) Violation($"{Describe(u)} went back to version {v} after version {u.Floor} was acknowledged or read (final read)", u, v);
        }
        if (_o.Replica != null) CheckReplicas(" (at the end)");
    }

    private void Event(string what)
    {
        if (_report.Events.Count == 400) _report.Events.Dequeue();
        _report.Events.Enqueue($"{DateTime.UtcNow:HH:mm:ss.fff} {what}");
    }

    private void Violation(string what, Unit? u = null, ulong landed = 0)
    {
        Event("VIOLATION " + what);
        // Which association carried the version that landed and what became of it, and the unit's last commands.
        string history = u == null ? "" : (landed != 0 && u.Writes.TryGetValue(landed, out string? w) ? $"\n  version {landed}: {w}" : "")
            + "\n  its last commands:\n    " + string.Join("\n    ", u.History);
        _report.Violations.Add($"{_clock.Elapsed.TotalSeconds:0.000} s: {what}{history}");
    }

    private static string Describe(Unit u) => $"NSID {u.Nsid} LBA {u.Lba}";

    // ------------------------------------------------------------------ the block format

    private static void Fill(byte[] b, Unit u, ulong version, int path)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(b, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), u.Nsid);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(12), u.Lba);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(20), version);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(28), (uint)path);
        for (int i = 36; i < b.Length; i++) b[i] = (byte)(version * 31 + (ulong)i);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(32), Crc32C.Compute(b.AsSpan(36)) ^ Crc32C.Compute(b.AsSpan(0, 32)));
    }

    /// <summary>The version a unit holds (0: never written), or why it is not a block this detector wrote there.</summary>
    private static ulong Parse(byte[] b, Unit u, out string? bad)
    {
        bad = null;
        if (b.AsSpan().IndexOfAnyExcept((byte)0) < 0) return 0;
        if (BinaryPrimitives.ReadUInt64LittleEndian(b) != Magic) { bad = "not a detector block"; return 0; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(32)) != (Crc32C.Compute(b.AsSpan(36)) ^ Crc32C.Compute(b.AsSpan(0, 32)))) { bad = "torn or corrupt block (CRC)"; return 0; }
        uint nsid = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(8));
        ulong lba = BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(12));
        if (nsid != u.Nsid || lba != u.Lba) { bad = $"holds the block of NSID {nsid} LBA {lba}"; return 0; }
        return BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(20));
    }

    public void Dispose()
    {
        foreach (Path p in _paths)
        {
            p.Forwarder.Heal();
            p.Host?.Dispose();
            if (p.Connecting != null && p.Connecting.Wait(TimeSpan.FromSeconds(5)) && p.Connecting.Result is { } late) late.Dispose();
            p.Forwarder.Dispose();
        }
        foreach ((NvmeHost host, _) in _abandoned) host.Dispose();
        foreach ((TcpForwarder f, _) in _interconnect) f.Heal();
    }
}
