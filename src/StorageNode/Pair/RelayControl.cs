using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Target;

namespace StorageNode.Pair;

/// <summary>
/// The proxy's state of one host in one subsystem, across the link's associations: its current registration with the
/// owner, and the fence the owner's last drain installed (see <see cref="RelayControl.Quarantined"/>).
/// </summary>
public sealed class HostRelay(HostKey key, string hostNqn, Guid hostId)
{
    public HostKey Key { get; } = key;
    public string HostNqn { get; } = hostNqn;
    public Guid HostId { get; } = hostId;
    /// <summary>Stopwatch ticks of the last drain (0: none).</summary>
    internal long FencedAt;
    /// <summary>The id of the last drain the owner asked for (relay opens carry it).</summary>
    internal long LastFenceId;
    internal volatile ProxyRegistration? Registration;
    /// <summary>The host's associations on this node in the subsystem (under the lock).</summary>
    internal readonly List<Controller> Associations = [];
    internal bool Forgotten;

    public override string ToString() => HostNqn.Length == 0 ? $"a host with an empty Host NQN ({HostId})" : $"{HostNqn} ({HostId})";
}

/// <summary>
/// Proxy side: one of a host's associations here, from the host's relay opening (or another of its associations here
/// starting to relay) until the host shows it still uses it (<see cref="Controller.ProveHostStillHere"/>). It may carry
/// commands the host sent before it gave it up and retried elsewhere, held in the network on their way here; relayed
/// now, they would land over newer data. Nothing it carries is relayed meanwhile (docs/ha.md).
/// </summary>
internal sealed class RelayProof(Controller controller, AssociationState state, string why)
{
    public readonly Controller Controller = controller;
    public readonly AssociationState State = state;
    /// <summary>Why it is asked, for the logs ("since its relay opened", "since another of its associations here started relaying").</summary>
    public readonly string Why = why;
    public readonly Stopwatch Since = Stopwatch.StartNew();
    /// <summary>No answer within the limit: it is being closed (under the host's relay lock).</summary>
    public bool TimedOut;
}

/// <summary>
/// A host's registration on the proxy's current association into the owner. One word holds the relay's open bit and
/// the count of commands relayed under the handle, so a drain closes the relay and reads the count in one atomic step:
/// a reactor either counted its command before (the owner waits for it) or sees the relay closed (it asks to open).
/// </summary>
public sealed class ProxyRegistration(uint handle, HostRelay host, ushort associationCntlid)
{
    private const long OpenBit = 1L << 62;
    private long _word;
    // The latest deadline among what was relayed: bit 32 set once there is one, the deadline in the low 32 bits.
    private long _deadline;
    internal int Opening;
    /// <summary>
    /// From the owner's last open: when the host's last command through its own associations arrived there, at the
    /// latest, as a local Stopwatch timestamp (0: never). A command that may have reached this node before that may be
    /// an old copy the host has retried directly since: it is not relayed.
    /// </summary>
    internal long LocalBoundTicks;
    /// <summary>Relayed commands sent under the handle and not yet answered: while any are, the host is not forgotten.</summary>
    internal int InFlight;

    public uint Handle { get; } = handle;
    public HostRelay Host { get; } = host;
    /// <summary>The CNTLID the owner gave the association this handle belongs to.</summary>
    public ushort AssociationCntlid { get; } = associationCntlid;
    public bool IsOpen => (Volatile.Read(ref _word) & OpenBit) != 0;
    public long Sent => Volatile.Read(ref _word) & (OpenBit - 1);

    private const long HasDeadline = 1L << 32;

    /// <summary>
    /// Raises the latest deadline of what is relayed (before <see cref="TryCount"/>, so a drain never misses it). Any
    /// reactor: one compare-and-swap on one word, so of two reactors relaying for the host at once the later deadline
    /// stays (deadlines compare modulo 2^32, as the owner compares them).
    /// </summary>
    internal void NoteDeadline(OwnerDeadline d)
    {
        long next = HasDeadline | d.Units10Us;
        while (true)
        {
            long w = Volatile.Read(ref _deadline);
            if ((w & HasDeadline) != 0 && (int)(d.Units10Us - (uint)w) <= 0) return;
            if (Interlocked.CompareExchange(ref _deadline, next, w) == w) return;
        }
    }

    /// <summary>The latest deadline noted (for tests): whether there is one, and it.</summary>
    internal (bool Has, uint Deadline) LatestDeadline
    {
        get
        {
            long w = Volatile.Read(ref _deadline);
            return ((w & HasDeadline) != 0, (uint)w);
        }
    }

    /// <summary>Counts one relayed command if the relay is open (reactor thread).</summary>
    internal bool TryCount()
    {
        while (true)
        {
            long w = Volatile.Read(ref _word);
            if ((w & OpenBit) == 0) return false;
            if (Interlocked.CompareExchange(ref _word, w + 1, w) == w) return true;
        }
    }

    internal void Open()
    {
        while (true)
        {
            long w = Volatile.Read(ref _word);
            if (Interlocked.CompareExchange(ref _word, w | OpenBit, w) == w) return;
        }
    }

    /// <summary>Closes the relay; returns what was counted and the latest deadline among it.</summary>
    internal (long Sent, bool HasDeadline, uint LastDeadline) Close()
    {
        while (true)
        {
            long w = Volatile.Read(ref _word);
            if (Interlocked.CompareExchange(ref _word, w & ~OpenBit, w) == w)
            {
                (bool has, uint last) = LatestDeadline;
                return (w & (OpenBit - 1), has, last);
            }
        }
    }
}

/// <summary>
/// The proxy side of relay control for one subsystem (docs/ha.md): the hosts connected here, their registrations with
/// the owner, relay opens, and the answers to the owner's drains. Drains are answered from atomics, never by waiting
/// for a reactor, so a stalled reactor delays only its own commands.
/// </summary>
public sealed class RelayControl
{
    private readonly InterconnectLink _link;
    private readonly ILogger _log;
    private readonly ConcurrentDictionary<HostKey, HostRelay> _hosts = new();

    internal RelayControl(InterconnectLink link, ILogger log)
    {
        _link = link;
        _log = log;
    }

    public IReadOnlyCollection<HostRelay> Hosts => [.. _hosts.Values];

    /// <summary>A host's association on this node was created (reactor thread).</summary>
    internal HostRelay Attach(Controller c)
    {
        HostKey key = HostKey.For(c.HostNqn, c.HostId);
        while (true)
        {
            HostRelay h = _hosts.GetOrAdd(key, k => new HostRelay(k, c.HostNqn, c.HostId));
            lock (h)
            {
                if (h.Forgotten) continue;
                h.Associations.Add(c);
                return h;
            }
        }
    }

    /// <summary>A host's association ended (any thread).</summary>
    internal void Detach(HostRelay h, Controller c)
    {
        lock (h) h.Associations.Remove(c);
        MaybeForget(h);
    }

    /// <summary>The last relayed command of a registration was answered (reactor thread).</summary>
    internal void Settled(HostRelay h) => MaybeForget(h);

    /// <summary>
    /// Forgets a host once it has no association here and nothing relayed in flight: until then the owner's drains
    /// must still count what it sent (its connection may be gone while its commands are not). Unregisters it.
    /// </summary>
    private void MaybeForget(HostRelay h)
    {
        ProxyRegistration? reg;
        lock (h)
        {
            reg = h.Registration;
            if (h.Forgotten || h.Associations.Count > 0 || (reg != null && Volatile.Read(ref reg.InFlight) > 0)) return;
            h.Forgotten = true;
            h.Registration = null;
            _hosts.TryRemove(new KeyValuePair<HostKey, HostRelay>(h.Key, h));
        }
        if (reg != null) _link.Unregister(reg);
    }

    /// <summary>Registers every host that has no registration on the current association (control thread).</summary>
    internal void RegisterAll(ushort cntlid)
    {
        foreach (HostRelay h in _hosts.Values)
        {
            if (h.Registration is { } r && r.AssociationCntlid == cntlid) continue;
            uint? handle = _link.Register(h);
            if (handle is not uint value) continue;
            bool installed;
            lock (h)
            {
                installed = h.Associations.Count > 0;
                if (installed) h.Registration = new ProxyRegistration(value, h, cntlid);
            }
            if (installed) continue;
            // The host left while its registration was on its way: nobody will use or give back this handle, and the
            // owner would keep it (and the host's gate entry) until this association ends. Given back now, before any
            // later registration of the same host (the owner answers one host on one association with one handle).
            _log.LogInformation("{Nqn}: {Host} left before its registration with the partner completed; giving handle {Handle} back",
                _link.Subsystem.Nqn, h, value);
            _link.UnregisterNow(value, cntlid, h);
        }
        _link.WakeQueues();
    }

    /// <summary>The link went down: registrations are gone with the association.</summary>
    internal void Clear()
    {
        foreach (HostRelay h in _hosts.Values) h.Registration = null;
    }

    /// <summary>
    /// The owner's drain (any thread, answered at once): fence the host's associations here, close its relay, and say
    /// which association counted how many of its commands.
    /// </summary>
    internal DrainAnswer Drain(HostKey key, long drainId)
    {
        DrainAnswer a = default;
        ushort cntlid = _link.AssociationCntlid;
        a.Kind = cntlid == 0 ? DrainAnswer.KindNoAssociation : DrainAnswer.KindKnown;
        a.Cntlid = cntlid;
        a.Incarnation = _link.Incarnation;
        if (!_hosts.TryGetValue(key, out HostRelay? h)) return a; // no association of the host here: nothing relayed, nothing to fence
        List<Controller>? quiet = null;
        lock (h)
        {
            InstallFence(h, drainId);
            long now = Stopwatch.GetTimestamp();
            foreach (Controller c in h.Associations)
            {
                if (!Quiet(c, now)) continue;
                (quiet ??= []).Add(c);
            }
            if (h.Registration is { } reg && reg.AssociationCntlid == cntlid && cntlid != 0)
            {
                (long sent, bool has, uint last) = reg.Close();
                a.Handle = reg.Handle;
                a.Sent = (ulong)sent;
                a.HasDeadline = (byte)(has ? 1 : 0);
                a.LastDeadline = last;
            }
        }
        _log.LogInformation("{Host}: relay drained by the owner (drain {Id}): {Sent} relayed on handle {Handle} of association {Cntlid}", h, drainId, a.Sent, a.Handle, cntlid);
        foreach (Controller c in quiet ?? [])
        {
            _log.LogWarning("{Ctrl}: no Keep Alive for {Ms:0} ms (KATO {Kato} ms) when the owner drained the host's relay: the path may be partitioned with old commands on it; closing the association",
                c, Stopwatch.GetElapsedTime(c.LastKeepAliveTicks).TotalMilliseconds, c.KatoMs);
            c.Destroy("fenced: silent when the owner drained the host's relay");
        }
        return a;
    }

    /// <summary>
    /// The proxy's fence after a drain: a relayed command that arrives on one of the host's associations from before
    /// the drain, no later than KATO + KAS + 1 s after it, is not relayed — it may be a copy the host sent before it
    /// moved to the owner and has retried there since (held in a socket buffer, behind a stalled reactor, or in the
    /// network). Later than that, such an association that was cut off from its host has been torn down by the
    /// keep-alive timer (it cannot deliver anything), and one that lives carries only what the host sent since.
    /// Associations made after the drain are not affected; a host coming back here within the quarantine on an old
    /// association sees its commands fail with ANA Transition (it retries) until the quarantine ends.
    /// </summary>
    internal static bool Quarantined(Controller ctrl, HostRelay host, long arrivedAfter)
    {
        long fencedAt = Volatile.Read(ref host.FencedAt);
        if (fencedAt == 0 || ctrl.CreatedTicks > fencedAt) return false;
        long quarantine = ((long)ctrl.KatoMs + ctrl.Target.Options.KeepAliveGranularityMs + 1000) * Stopwatch.Frequency / 1000;
        return arrivedAfter <= fencedAt + quarantine;
    }

    /// <summary>
    /// An association whose host has sent no Keep Alive for longer than half its KATO (plus slack), or never will
    /// (KATO 0; no keep-alive timer will ever end it): a host on a working path sends one at least that often (Linux:
    /// every KATO / 2). Its connections may hold commands the host has given up on and retried at the owner, which a
    /// healed partition could deliver here later: it is closed now, so they never are.
    /// </summary>
    private static bool Quiet(Controller c, long now)
    {
        uint kato = c.KatoMs;
        if (kato == 0) return true;
        long limit = (kato / 2 + QuietSlackMs) * Stopwatch.Frequency / 1000;
        return now - c.LastKeepAliveTicks > limit;
    }

    private const long QuietSlackMs = 500;

    private static void InstallFence(HostRelay h, long drainId)
    {
        Volatile.Write(ref h.FencedAt, Stopwatch.GetTimestamp());
        if (drainId > h.LastFenceId) h.LastFenceId = drainId;
        h.Registration?.Close();
    }

    /// <summary>Test hook: while it says so for a host (by Host Identifier), that host's relay is not opened (its commands wait, bounded by their deadlines).</summary>
    public Func<Guid, bool>? HoldOpens { get; set; }

    /// <summary>Asks the owner to open the host's relay (once at a time; reactor thread, returns at once).</summary>
    internal void RequestOpen(ProxyRegistration reg)
    {
        if (HoldOpens?.Invoke(reg.Host.HostId) == true) return;
        if (Interlocked.CompareExchange(ref reg.Opening, 1, 0) != 0) return;
        if (!_link.Workers.Run(() => Open(reg))) Volatile.Write(ref reg.Opening, 0); // the node is stopping
    }

    /// <summary>Asks the owner to open a host's relay (one of the pair's threads: it may wait for the owner's drain).</summary>
    private void Open(ProxyRegistration reg)
    {
        HostRelay h = reg.Host;
        try
        {
            long fenceId;
            lock (h) fenceId = h.LastFenceId;
            CompletionQueueEntry cqe = _link.RelayOpen(reg.Handle, fenceId);
            NvmeStatus st = cqe.StatusField;
            long ownerDrainId = cqe.Dw0;
            List<RelayProof>? ask = null;
            lock (h)
            {
                if (st.IsSuccess)
                {
                    // A drain installed after the owner answered closes what this answer would open.
                    if (ownerDrainId >= h.LastFenceId && h.Registration == reg)
                    {
                        Volatile.Write(ref reg.LocalBoundTicks, cqe.Dw1 == 0 ? 0 : _link.Clock.FromPartnerLatest(cqe.Dw1, Stopwatch.GetTimestamp()));
                        ask = MarkUnproven(h, null, "since its relay opened"); // before the open bit: a reactor that counts a command under this open sees them
                        reg.Open();
                    }
                }
                else if (st == InterconnectStatus.FenceFirst)
                {
                    InstallFence(h, ownerDrainId);
                    _log.LogInformation("{Host}: the owner asked for drain {Id}'s fence before the relay opens", h, ownerDrainId);
                }
            }
            foreach (RelayProof p in ask ?? []) AskHost(h, p);
            if (!st.IsSuccess && st != InterconnectStatus.FenceFirst)
                Thread.Sleep(20); // NotNow or an error: the commands wait (bounded by their deadlines) and ask again
        }
        catch (Exception e) when (e is NvmeTransportException or TimeoutException or NvmeCommandException or InvalidOperationException)
        {
            _log.LogWarning("{Host}: relay open failed: {Error}", h, e.Message);
            Thread.Sleep(50);
        }
        Volatile.Write(ref reg.Opening, 0);
        _link.WakeQueues(); // waiting commands try again: relay, ask again, or meet the fence
    }

    // ------------------------------------------------------------------ after local -> relay: is the host still there?

    /// <summary>
    /// The host's relay opened: each of its associations here may carry commands it sent before it gave the association
    /// up and retried on the owner, still on their way here (held in a partition; they reach this node after the host's
    /// last command to the owner, so <see cref="ProxyRegistration.LocalBoundTicks"/> cannot tell them). Nothing from such
    /// an association is relayed until the host answers something sent on it after the open: then it had not given the
    /// association up when the relay opened, so nothing it sent there was retried on the owner before (a later retry
    /// there drains the relay, and the drain's fence stops the rest). Host's relay lock held; returns the ones to ask.
    /// </summary>
    private static List<RelayProof> MarkUnproven(HostRelay h, Controller? except, string why)
    {
        var ask = new List<RelayProof>();
        foreach (Controller c in h.Associations)
        {
            // (An association whose state is not set yet is still connecting its admin queue: it carries no command.
            // One already asked is asked again: the answer must postdate this question.)
            if (c == except || c.Destroyed || c.PairState is not AssociationState st) continue;
            var p = new RelayProof(c, st, why);
            Volatile.Write(ref st.RelayUnproven, p);
            // An open starts every association anew: the first command of each to meet it asks the others again (an
            // association used before a drain and unused since may take the retries of another given up after it).
            if (except == null) Volatile.Write(ref st.RelayStarted, 0);
            ask.Add(p);
        }
        return ask;
    }

    /// <summary>
    /// The first command of one of the host's associations here to meet its open relay (reactor thread, once per
    /// association and open). The host's other associations here may carry commands it sent before it gave them up and
    /// retried on this one (a reconnection, or a second port it had not used since the open), held in the network on
    /// their way here; the relay being open already, nothing else would stop them. They relay nothing more until the
    /// host answers on them, as at an open — asked again if they were asked before: the answer must postdate this
    /// command.
    /// </summary>
    internal void FirstRelayed(HostRelay h, Controller ctrl, AssociationState st)
    {
        List<RelayProof> ask;
        lock (h)
        {
            if (st.RelayStarted != 0) return;
            ask = MarkUnproven(h, ctrl, "since another of its associations here started relaying");
            // Only after the marks: another command of this association (another queue's reactor) that sees it started
            // finds the others marked.
            Volatile.Write(ref st.RelayStarted, 1);
        }
        if (ask.Count == 0) return;
        _log.LogInformation("{Ctrl}: the host's first command on this association to meet its open relay; {Count} other association(s) of the host here relay once it shows it still uses them",
            ctrl, ask.Count);
        foreach (RelayProof p in ask) AskHost(h, p);
    }

    private void AskHost(HostRelay h, RelayProof p)
    {
        p.Controller.ProveHostStillHere(r => Concluded(h, p, r));
        TimeSpan limit = _link.ProofLimit;
        _ = Task.Run(async () =>
        {
            await Task.Delay(limit);
            lock (h)
            {
                // (Concluded already, or ended: nothing to close.)
                if (p.State.RelayUnproven != p || p.Controller.Destroyed) return;
                p.TimedOut = true; // an answer from now on comes too late: it is closed
            }
            _log.LogWarning("{Ctrl}: {Host} has not shown within {Seconds:0.#} s that it still uses this association {Why}; closing it (what it carries is never relayed)",
                p.Controller, h, limit.TotalSeconds, p.Why);
            p.Controller.Destroy($"the host did not show it still uses this association {p.Why}");
        });
    }

    /// <summary>The host answered, cannot be asked, or the association ended (admin queue's reactor).</summary>
    private void Concluded(HostRelay h, RelayProof p, HostProof result)
    {
        lock (h)
        {
            if (p.State.RelayUnproven != p || p.TimedOut) return;
            // An association that ended stays marked: nothing of it is ever relayed (its commands are dropped).
            if (result != HostProof.Ended) Volatile.Write(ref p.State.RelayUnproven, null);
        }
        switch (result)
        {
            case HostProof.Proven:
                _log.LogInformation("{Ctrl}: the host answered on this association {Why} ({Ms:0.0} ms); its commands are relayed",
                    p.Controller, p.Why, p.Since.Elapsed.TotalMilliseconds);
                break;
            case HostProof.CannotAsk:
                _log.LogInformation("{Ctrl}: the host cannot be asked whether it still uses this association (ANA change notices off); its commands are relayed",
                    p.Controller);
                break;
            default:
                _log.LogInformation("{Ctrl}: the association ended before the host showed it still uses it {Why}; what it carried is never relayed",
                    p.Controller, p.Why);
                break;
        }
        _link.WakeQueues();
    }
}
