using System.Buffers.Binary;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>A reservation notification for every controller of one host (by Host Identifier) on one namespace.</summary>
public readonly record struct ReservationNotice(Guid HostId, uint Nsid, byte Type);

/// <summary>What a reservation command did: its status and the notifications it owes other hosts.</summary>
public readonly record struct ReservationOutcome(NvmeStatus Status, IReadOnlyList<ReservationNotice> Notices)
{
    public static ReservationOutcome Done => new(NvmeStatus.Success, []);
    public static ReservationOutcome Conflict => new(NvmeStatus.Generic(GenericStatus.ReservationConflict), []);
    public static ReservationOutcome InvalidField => new(NvmeStatus.Generic(GenericStatus.InvalidField), []);
}

/// <summary>
/// One namespace's persistent reservation (NVMe Base Specification, "Reservations"): the registrants, keyed by Host
/// Identifier (every controller of a host shares its registration), and the reservation, if any, with its type and
/// holder. In an HA pair the namespace's owner keeps it; the partner relays reservation commands and the I/O they
/// govern to the owner, so both nodes answer from this one state.
/// <para>
/// Changes run under a lock (reservation commands are rare); the I/O path reads an immutable <see cref="View"/>, swapped
/// whole on every change, with no lock, and with nothing at all to check while no reservation is held.
/// </para>
/// </summary>
public sealed class ReservationState
{
    /// <summary>Registrants one namespace keeps; a registration beyond it fails with Internal Error (as SPDK's target does).</summary>
    public const int MaxRegistrants = 1024;

    private readonly object _lock = new();
    private readonly List<Registrant> _registrants = [];
    private ReservationType _type;
    /// <summary>The holder of a reservation of type 1-4 (for types 5 and 6 every registrant holds it).</summary>
    private Guid _holder;
    private uint _generation;
    private bool _ptpl;
    private volatile View? _view;

    public ReservationState(uint nsid) => Nsid = nsid;

    public uint Nsid { get; }

    /// <summary>Persist Through Power Loss can be set: the node has somewhere to keep the state (Node:StateDirectory).</summary>
    public bool PtplCapable { get; internal set; }

    /// <summary>Raised (under no lock) after every change of the state, for persistence.</summary>
    public event Action<ReservationState>? Changed;

    private record struct Registrant(Guid HostId, ulong Key);

    /// <summary>What the I/O path needs: the type, the holder, the registrants. Null while no reservation is held.</summary>
    private sealed class View(ReservationType type, Guid holder, Guid[] registrants)
    {
        public readonly ReservationType Type = type;
        public readonly Guid Holder = holder;
        public readonly Guid[] Registrants = registrants;
    }

    public bool Ptpl
    {
        get { lock (_lock) return _ptpl; }
    }

    /// <summary>A reservation is held: I/O must be checked (<see cref="Allows"/>). I/O path, no lock.</summary>
    public bool Held => _view != null;

    /// <summary>
    /// Whether a command of <paramref name="host"/> may run now: commands of the write group (Write, Write Zeroes,
    /// Dataset Management, Flush) are excluded by every reservation type from non-holders (types 1-2) or
    /// non-registrants (3-6); those of the read group (Read) only by the Exclusive Access types. I/O path, no lock.
    /// </summary>
    public bool Allows(Guid host, bool writeGroup)
    {
        View? v = _view;
        if (v == null) return true;
        bool excluded = writeGroup || v.Type is ReservationType.ExclusiveAccess or ReservationType.ExclusiveAccessRegistrantsOnly
            or ReservationType.ExclusiveAccessAllRegistrants;
        if (!excluded) return true;
        if (v.Type is ReservationType.WriteExclusive or ReservationType.ExclusiveAccess) return host == v.Holder;
        return Array.IndexOf(v.Registrants, host) >= 0;
    }

    /// <summary>The write group of the reservation rules (the rest that touch data are the read group).</summary>
    public static bool IsWriteGroup(byte opcode)
        => opcode is IoOpcode.Write or IoOpcode.WriteZeroes or IoOpcode.DatasetManagement or IoOpcode.Flush or IoOpcode.WriteUncorrectable
            or IoOpcode.Copy;

    private static bool AllRegistrantsHold(ReservationType t) => t is ReservationType.WriteExclusiveAllRegistrants or ReservationType.ExclusiveAccessAllRegistrants;

    private int IndexOf(Guid host)
    {
        for (int i = 0; i < _registrants.Count; i++) if (_registrants[i].HostId == host) return i;
        return -1;
    }

    private bool Holds(Guid host) => _type != ReservationType.None && (AllRegistrantsHold(_type) ? IndexOf(host) >= 0 : _holder == host);

    // ------------------------------------------------------------------ commands

    /// <summary>For a partner-owned namespace: the owner's PTPL, as the owner last told (reported, never kept here).</summary>
    internal void MirrorPtpl(bool on)
    {
        lock (_lock) _ptpl = on;
    }

    /// <summary>Set Features Reservation Persistence: Persist Through Power Loss on or off (only where capable).</summary>
    public void SetPtpl(bool on)
    {
        lock (_lock)
        {
            if (_ptpl == on) return;
            _ptpl = on;
        }
        Changed?.Invoke(this);
    }

    /// <summary>Reservation Register: register, unregister or replace the host's key; CPTPL applies only if it succeeds.</summary>
    public ReservationOutcome Register(Guid host, byte action, bool ignoreExistingKey, byte cptpl, ulong currentKey, ulong newKey)
    {
        if (action > ReservationAction.Replace || cptpl == 1) return ReservationOutcome.InvalidField;
        if (cptpl != ChangePtpl.NoChange && !PtplCapable) return ReservationOutcome.InvalidField;
        var notices = new List<ReservationNotice>();
        lock (_lock)
        {
            int i = IndexOf(host);
            switch (action)
            {
                case ReservationAction.Register:
                    if (newKey == 0) return ReservationOutcome.InvalidField;
                    if (i >= 0)
                    {
                        if (_registrants[i].Key != newKey) return ReservationOutcome.Conflict;
                    }
                    else
                    {
                        if (_registrants.Count >= MaxRegistrants) return new(NvmeStatus.Generic(GenericStatus.InternalError), []);
                        _registrants.Add(new Registrant(host, newKey));
                    }
                    break;
                case ReservationAction.Unregister:
                    if (i < 0 || (!ignoreExistingKey && _registrants[i].Key != currentKey)) return ReservationOutcome.Conflict;
                    Remove(i, notices, notifyReleased: true);
                    break;
                default:
                    if (newKey == 0) return ReservationOutcome.InvalidField;
                    if (i < 0 || (!ignoreExistingKey && _registrants[i].Key != currentKey)) return ReservationOutcome.Conflict;
                    _registrants[i] = _registrants[i] with { Key = newKey };
                    break;
            }
            if (cptpl != ChangePtpl.NoChange) _ptpl = cptpl == ChangePtpl.Set;
            _generation++;
            Publish();
        }
        Changed?.Invoke(this);
        return new(NvmeStatus.Success, notices);
    }

    /// <summary>Reservation Acquire: acquire, preempt, or preempt and abort.</summary>
    public ReservationOutcome Acquire(Guid host, byte action, bool ignoreExistingKey, byte type, ulong currentKey, ulong preemptKey)
    {
        if (action > ReservationAction.PreemptAndAbort || ignoreExistingKey || type is 0 or > (byte)ReservationType.ExclusiveAccessAllRegistrants)
            return ReservationOutcome.InvalidField;
        var rtype = (ReservationType)type;
        var notices = new List<ReservationNotice>();
        lock (_lock)
        {
            int i = IndexOf(host);
            if (i < 0 || _registrants[i].Key != currentKey) return ReservationOutcome.Conflict;
            if (action == ReservationAction.Acquire)
            {
                // The holder acquiring what it holds: nothing changes.
                if (_type != ReservationType.None) return Holds(host) && _type == rtype ? ReservationOutcome.Done : ReservationOutcome.Conflict;
                _type = rtype;
                _holder = host;
                Publish();
            }
            else if (_type == ReservationType.None)
            {
                // Preempt (and abort) from here on. The abort is that nothing of a preempted host starts once this
                // completes: every command is checked against the state when it runs.
                if (RemoveByKey(preemptKey, host, notices) == 0) return ReservationOutcome.Conflict;
            }
            else if (AllRegistrantsHold(_type))
            {
                if (preemptKey == 0)
                {
                    for (int j = _registrants.Count - 1; j >= 0; j--)
                        if (_registrants[j].HostId != host) RemoveAt(j, notices, ReservationNotification.RegistrationPreempted);
                    _type = rtype;
                    _holder = host;
                }
                else if (RemoveByKey(preemptKey, host, notices) == 0)
                {
                    return ReservationOutcome.Conflict;
                }
            }
            else if (preemptKey == _registrants[IndexOf(_holder)].Key)
            {
                // The holder's reservation is preempted (by the holder itself: a change of type): the issuer holds it
                // now, every other registrant with that key is gone.
                ReservationType old = _type;
                for (int j = _registrants.Count - 1; j >= 0; j--)
                    if (_registrants[j].HostId != host && _registrants[j].Key == preemptKey) RemoveAt(j, notices, ReservationNotification.RegistrationPreempted);
                _type = rtype;
                _holder = host;
                if (old != rtype)
                {
                    foreach (Registrant r in _registrants)
                        if (r.HostId != host) notices.Add(new ReservationNotice(r.HostId, Nsid, ReservationNotification.ReservationReleased));
                }
            }
            else if (preemptKey != 0)
            {
                if (RemoveByKey(preemptKey, host, notices) == 0) return ReservationOutcome.Conflict;
            }
            else
            {
                return ReservationOutcome.InvalidField;
            }
            if (action != ReservationAction.Acquire)
            {
                _generation++;
                Publish();
            }
        }
        Changed?.Invoke(this);
        return new(NvmeStatus.Success, notices);
    }

    /// <summary>Reservation Release: release the reservation, or clear it and every registration.</summary>
    public ReservationOutcome Release(Guid host, byte action, bool ignoreExistingKey, byte type, ulong currentKey)
    {
        if (action > ReservationAction.Clear || ignoreExistingKey) return ReservationOutcome.InvalidField;
        var notices = new List<ReservationNotice>();
        lock (_lock)
        {
            int i = IndexOf(host);
            if (i < 0 || _registrants[i].Key != currentKey) return ReservationOutcome.Conflict;
            if (action == ReservationAction.Release)
            {
                // Releasing what one does not hold is no error, and changes nothing.
                if (!Holds(host)) return ReservationOutcome.Done;
                if ((byte)_type != type) return ReservationOutcome.InvalidField;
                ReservationType old = _type;
                _type = ReservationType.None;
                _holder = Guid.Empty;
                if (old is not (ReservationType.WriteExclusive or ReservationType.ExclusiveAccess))
                {
                    foreach (Registrant r in _registrants)
                        if (r.HostId != host) notices.Add(new ReservationNotice(r.HostId, Nsid, ReservationNotification.ReservationReleased));
                }
                Publish();
            }
            else
            {
                foreach (Registrant r in _registrants)
                    if (r.HostId != host) notices.Add(new ReservationNotice(r.HostId, Nsid, ReservationNotification.ReservationPreempted));
                _registrants.Clear();
                _type = ReservationType.None;
                _holder = Guid.Empty;
                _generation++;
                Publish();
            }
        }
        Changed?.Invoke(this);
        return new(NvmeStatus.Success, notices);
    }

    /// <summary>
    /// Reservation Report in the extended format (the only one for 128-bit host identifiers: EDS = 0 fails with Host
    /// Identifier Inconsistent Format, as in SPDK's target and Linux nvmet). Fills <paramref name="dest"/> with as much
    /// of the data structure as fits (whole registrant entries; REGCTL counts them all).
    /// </summary>
    public NvmeStatus Report(Span<byte> dest, bool extended)
    {
        if (!extended) return NvmeStatus.Generic(GenericStatus.HostIdInconsistentFormat);
        dest.Clear();
        Span<byte> header = stackalloc byte[ReservationReport.ExtendedHeaderSize];
        header.Clear();
        lock (_lock)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(header[ReservationReport.Generation..], _generation);
            header[ReservationReport.Type] = (byte)_type;
            BinaryPrimitives.WriteUInt16LittleEndian(header[ReservationReport.RegisteredControllers..], (ushort)_registrants.Count);
            header[ReservationReport.PtplState] = _ptpl ? (byte)1 : (byte)0;
            header[..Math.Min(header.Length, dest.Length)].CopyTo(dest);
            int offset = ReservationReport.ExtendedHeaderSize;
            foreach (Registrant r in _registrants)
            {
                if (offset + ReservationReport.ExtendedEntrySize > dest.Length) break;
                Span<byte> e = dest.Slice(offset, ReservationReport.ExtendedEntrySize);
                BinaryPrimitives.WriteUInt16LittleEndian(e[ReservationReport.Cntlid..], ReservationReport.DynamicController);
                e[ReservationReport.Status] = Holds(r.HostId) ? ReservationReport.HoldsReservation : (byte)0;
                BinaryPrimitives.WriteUInt64LittleEndian(e[ReservationReport.Key..], r.Key);
                r.HostId.TryWriteBytes(e.Slice(ReservationReport.HostId, 16), bigEndian: true, out _);
                offset += ReservationReport.ExtendedEntrySize;
            }
        }
        return NvmeStatus.Success;
    }

    // ------------------------------------------------------------------ changes (under the lock)

    /// <summary>Removes every registrant with the key (the issuer too, if its key matches); the others are told.</summary>
    private int RemoveByKey(ulong key, Guid issuer, List<ReservationNotice> notices)
    {
        int removed = 0;
        for (int j = _registrants.Count - 1; j >= 0; j--)
        {
            if (_registrants[j].Key != key) continue;
            if (_registrants[j].HostId == issuer) Remove(j, notices, notifyReleased: false);
            else RemoveAt(j, notices, ReservationNotification.RegistrationPreempted);
            removed++;
        }
        return removed;
    }

    private void RemoveAt(int index, List<ReservationNotice> notices, byte notice)
    {
        notices.Add(new ReservationNotice(_registrants[index].HostId, Nsid, notice));
        Remove(index, notices, notifyReleased: false);
    }

    /// <summary>
    /// Removes a registrant. A holder's reservation of type 1-4 goes with it (the other registrants of a type 3 or 4 are
    /// told when <paramref name="notifyReleased"/>); one of type 5 or 6 lasts while any registrant does.
    /// </summary>
    private void Remove(int index, List<ReservationNotice> notices, bool notifyReleased)
    {
        Guid host = _registrants[index].HostId;
        _registrants.RemoveAt(index);
        if (_type == ReservationType.None) return;
        if (AllRegistrantsHold(_type))
        {
            if (_registrants.Count == 0) (_type, _holder) = (ReservationType.None, Guid.Empty);
            else if (_holder == host) _holder = _registrants[0].HostId;
            return;
        }
        if (_holder != host) return;
        ReservationType old = _type;
        (_type, _holder) = (ReservationType.None, Guid.Empty);
        if (notifyReleased && old is ReservationType.WriteExclusiveRegistrantsOnly or ReservationType.ExclusiveAccessRegistrantsOnly)
        {
            foreach (Registrant r in _registrants) notices.Add(new ReservationNotice(r.HostId, Nsid, ReservationNotification.ReservationReleased));
        }
    }

    private void Publish()
    {
        _view = _type == ReservationType.None ? null : new View(_type, _holder, [.. _registrants.Select(r => r.HostId)]);
    }

    // ------------------------------------------------------------------ persistence

    /// <summary>The state as it is kept on disk (Persist Through Power Loss).</summary>
    public sealed record Saved(uint Generation, ReservationType Type, Guid Holder, bool Ptpl, Saved.Entry[] Registrants, string? Nguid = null)
    {
        public sealed record Entry(Guid HostId, ulong Key);
    }

    public Saved Snapshot()
    {
        lock (_lock) return new Saved(_generation, _type, _holder, _ptpl, [.. _registrants.Select(r => new Saved.Entry(r.HostId, r.Key))]);
    }

    /// <summary>Restores a saved state (at start, before any host connects).</summary>
    public void Restore(Saved s)
    {
        lock (_lock)
        {
            _registrants.Clear();
            foreach (Saved.Entry e in s.Registrants.Take(MaxRegistrants)) _registrants.Add(new Registrant(e.HostId, e.Key));
            _generation = s.Generation;
            _ptpl = s.Ptpl;
            _type = s.Type is > ReservationType.None and <= ReservationType.ExclusiveAccessAllRegistrants ? s.Type : ReservationType.None;
            _holder = s.Holder;
            // A holder that is no registrant (a damaged file) holds nothing.
            if (_type != ReservationType.None && !AllRegistrantsHold(_type) && IndexOf(_holder) < 0) (_type, _holder) = (ReservationType.None, Guid.Empty);
            if (AllRegistrantsHold(_type) && _registrants.Count == 0) _type = ReservationType.None;
            Publish();
        }
    }
}
