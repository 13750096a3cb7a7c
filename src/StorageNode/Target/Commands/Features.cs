using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>
/// A controller's feature values that have no home elsewhere. They are set by the host and have no effect over fabrics:
/// one power state, no interrupts, no temperature sensors. Changed and read on the admin queue's reactor.
/// </summary>
public sealed class FeatureValues
{
    /// <summary>Arbitration: AB 2:0 = 111b (no burst limit), the priority weights 0.</summary>
    public const uint DefaultArbitration = 0x7;
    /// <summary>The composite temperature's over-temperature threshold: WCTEMP (343 K, 70 °C).</summary>
    public const ushort DefaultOverTemperature = 343;

    public uint Arbitration = DefaultArbitration;
    public uint PowerManagement;
    public ushort OverTemperature = DefaultOverTemperature;
    public ushort UnderTemperature;
    public uint ErrorRecovery;
    public uint InterruptCoalescing;
    public uint WriteAtomicityNormal;
    /// <summary>Coalescing Disable (CD) per interrupt vector (Interrupt Vector Configuration), vector 0 first.</summary>
    public readonly bool[] CoalescingDisabled;

    public FeatureValues(int vectors) => CoalescingDisabled = new bool[vectors];
}

/// <summary>
/// Get Features and Set Features: every mandatory and commonly queried feature, with the Select field as the
/// specification defines it: current, default, saved (nothing here is saveable, so the default) and supported
/// capabilities. Features the controller does not have fail with Invalid Field in Command.
/// </summary>
internal static class Features
{
    private const uint SupportedAsyncEvents = AsyncEvent.ConfigNamespaceAttribute | AsyncEvent.ConfigAnaChange;

    /// <summary>A temperature threshold's selectors from CDW11, or false when they name nothing (Fh, all, only to set).</summary>
    private static bool TryTemperature(uint cdw11, bool set, out uint tmpsel, out uint thsel)
    {
        tmpsel = FeatureFields.TemperatureSelect(cdw11);
        thsel = FeatureFields.ThresholdSelect(cdw11);
        bool sensor = tmpsel <= FeatureFields.TmpselLastSensor || (set && tmpsel == FeatureFields.TmpselAll);
        return sensor && thsel <= FeatureFields.ThselUnder;
    }

    /// <summary>True when this controller has the feature (an I/O controller has all; discovery a few).</summary>
    private static bool Has(byte fid, bool discovery) => fid switch
    {
        FeatureId.AsyncEventConfiguration or FeatureId.KeepAliveTimer => true,
        FeatureId.Arbitration or FeatureId.PowerManagement or FeatureId.TemperatureThreshold or FeatureId.ErrorRecovery
            or FeatureId.VolatileWriteCache or FeatureId.NumberOfQueues or FeatureId.InterruptCoalescing
            or FeatureId.InterruptVectorConfiguration or FeatureId.WriteAtomicityNormal or FeatureId.HostIdentifier
            or FeatureId.ReservationNotificationMask or FeatureId.ReservationPersistence => !discovery,
        _ => false,
    };

    /// <summary>Set Features may change it (Host Identifier is fixed by Connect over fabrics).</summary>
    private static bool Changeable(byte fid) => fid != FeatureId.HostIdentifier;

    public static void Get(NvmfRequest req, Controller ctrl)
    {
        byte fid = req.Sqe.FeatureIdentifier();
        FeatureSelect sel = req.Sqe.FeatureSelect();
        req.DataSpan.Clear();
        if (!Has(fid, ctrl.Subsystem.IsDiscovery) || sel > FeatureSelect.SupportedCapabilities)
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
            return;
        }
        bool perNamespace = fid is FeatureId.ReservationNotificationMask or FeatureId.ReservationPersistence;
        Namespace? ns = null;
        if (perNamespace)
        {
            // A namespace-specific feature is read for one namespace (FFFFFFFFh names them all: only to set).
            NvmeStatus st = OneNamespace(ctrl, req.Sqe.Nsid, out ns);
            if (!st.IsSuccess)
            {
                req.Fail(st);
                return;
            }
        }
        if (sel == FeatureSelect.SupportedCapabilities)
        {
            // Not saveable; changeable unless fixed (PTPL only where the node can keep it).
            bool changeable = fid == FeatureId.ReservationPersistence ? ns!.Reservations.PtplCapable && !ns.IsRemote : Changeable(fid);
            req.Cqe.Dw0 = (changeable ? FeatureCapabilities.Changeable : 0) | (perNamespace ? FeatureCapabilities.NamespaceSpecific : 0);
            req.Complete();
            return;
        }
        // Nothing is saveable: the saved value is the default (as the specification has it for features that are not).
        bool dflt = sel != FeatureSelect.Current;
        uint cdw11 = req.Sqe.Cdw11;
        FeatureValues f = ctrl.FeatureValues;
        uint value;
        switch (fid)
        {
            case FeatureId.Arbitration: value = dflt ? FeatureValues.DefaultArbitration : f.Arbitration; break;
            case FeatureId.PowerManagement: value = dflt ? 0 : f.PowerManagement; break;
            case FeatureId.TemperatureThreshold:
            {
                if (!TryTemperature(cdw11, set: false, out uint tmpsel, out uint thsel))
                {
                    req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
                    return;
                }
                // Only the composite temperature has thresholds; the sensors 1-8 do not exist (their threshold reads 0).
                ushort th = tmpsel != FeatureFields.TmpselComposite ? (ushort)0
                    : thsel == FeatureFields.ThselOver ? (dflt ? FeatureValues.DefaultOverTemperature : f.OverTemperature)
                    : (dflt ? (ushort)0 : f.UnderTemperature);
                value = FeatureFields.TemperatureThreshold(th, tmpsel, thsel);
                break;
            }
            case FeatureId.ErrorRecovery: value = dflt ? 0 : f.ErrorRecovery; break;
            case FeatureId.VolatileWriteCache: value = dflt || ctrl.VolatileWriteCacheEnabled ? FeatureFields.Enable : 0u; break;
            case FeatureId.NumberOfQueues: value = QueueCount.Encode(dflt ? ctrl.Target.Options.MaxIoQueues : ctrl.IoQueuesAllowed); break;
            case FeatureId.InterruptCoalescing: value = dflt ? 0 : f.InterruptCoalescing; break;
            case FeatureId.InterruptVectorConfiguration:
            {
                uint iv = cdw11 & FeatureFields.InterruptVectorMask;
                if (iv >= (uint)f.CoalescingDisabled.Length)
                {
                    req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
                    return;
                }
                value = iv | (!dflt && f.CoalescingDisabled[iv] ? FeatureFields.CoalescingDisable : 0);
                break;
            }
            case FeatureId.WriteAtomicityNormal: value = dflt ? 0 : f.WriteAtomicityNormal; break;
            case FeatureId.AsyncEventConfiguration: value = dflt ? 0 : ctrl.AsyncEventConfig; break;
            case FeatureId.KeepAliveTimer: value = dflt ? 0 : ctrl.KatoMs; break;
            case FeatureId.HostIdentifier:
            {
                // Over fabrics the Host Identifier is the 128-bit one of Connect: EXHID must ask for it (as Linux nvmet).
                if ((cdw11 & FeatureFields.Enable) == 0 || req.Length < FeatureFields.ExtendedHostIdBytes)
                {
                    req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
                    return;
                }
                ctrl.HostId.TryWriteBytes(req.DataSpan[..FeatureFields.ExtendedHostIdBytes], bigEndian: true, out _);
                value = 0;
                break;
            }
            case FeatureId.ReservationNotificationMask: value = dflt ? 0 : ctrl.ReservationMask(ns!.Nsid); break;
            case FeatureId.ReservationPersistence: value = !dflt && ns!.Reservations.Ptpl ? FeatureFields.Enable : 0u; break;
            default:
                req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
                return;
        }
        req.Cqe.Dw0 = value;
        req.Complete();
    }

    public static void Set(NvmfRequest req, Controller ctrl)
    {
        byte fid = req.Sqe.FeatureIdentifier();
        uint cdw11 = req.Sqe.Cdw11;
        bool discovery = ctrl.Subsystem.IsDiscovery;
        if (!Has(fid, discovery))
        {
            req.Fail(NvmeStatus.Generic(GenericStatus.InvalidField));
            return;
        }
        if (req.Sqe.FeatureSave())
        {
            req.Fail(NvmeStatus.CommandSpecific(CommandSpecificStatus.FeatureIdNotSaveable));
            return;
        }
        FeatureValues f = ctrl.FeatureValues;
        NvmeStatus invalid = NvmeStatus.Generic(GenericStatus.InvalidField);
        switch (fid)
        {
            case FeatureId.Arbitration: f.Arbitration = cdw11; break;
            case FeatureId.PowerManagement:
                // One power state (NPSS 0): only PS 0.
                if ((cdw11 & FeatureFields.PowerStateMask) != 0) { req.Fail(invalid); return; }
                f.PowerManagement = cdw11 & 0xFF;
                break;
            case FeatureId.TemperatureThreshold:
            {
                if (!TryTemperature(cdw11, set: true, out uint tmpsel, out uint thsel)) { req.Fail(invalid); return; }
                if (tmpsel is FeatureFields.TmpselComposite or FeatureFields.TmpselAll)
                {
                    if (thsel == FeatureFields.ThselOver) f.OverTemperature = FeatureFields.Threshold(cdw11);
                    else f.UnderTemperature = FeatureFields.Threshold(cdw11);
                }
                break;
            }
            case FeatureId.ErrorRecovery:
                // Deallocated or unwritten blocks are not reported as errors (no DULBE): only TLER.
                if ((cdw11 & FeatureFields.Dulbe) != 0) { req.Fail(invalid); return; }
                f.ErrorRecovery = cdw11 & FeatureFields.TlerMask;
                break;
            case FeatureId.VolatileWriteCache: ctrl.VolatileWriteCacheEnabled = (cdw11 & FeatureFields.Enable) != 0; break;
            case FeatureId.NumberOfQueues:
            {
                uint nsqr = QueueCount.Submission(cdw11), ncqr = QueueCount.Completion(cdw11);
                if (nsqr == QueueCount.Invalid || ncqr == QueueCount.Invalid) { req.Fail(invalid); return; }
                if (ctrl.IoQueues.Count > 0) { req.Fail(NvmeStatus.Generic(GenericStatus.CommandSequenceError)); return; }
                req.Cqe.Dw0 = QueueCount.Encode(ctrl.SetIoQueueCount((int)Math.Min(nsqr, ncqr) + 1));
                break;
            }
            case FeatureId.InterruptCoalescing: f.InterruptCoalescing = cdw11 & 0xFFFF; break;
            case FeatureId.InterruptVectorConfiguration:
            {
                uint iv = cdw11 & FeatureFields.InterruptVectorMask;
                if (iv >= (uint)f.CoalescingDisabled.Length) { req.Fail(invalid); return; }
                f.CoalescingDisabled[iv] = (cdw11 & FeatureFields.CoalescingDisable) != 0;
                break;
            }
            case FeatureId.WriteAtomicityNormal: f.WriteAtomicityNormal = cdw11 & FeatureFields.Enable; break;
            case FeatureId.AsyncEventConfiguration:
                ctrl.AsyncEventConfig = cdw11 & (discovery ? AsyncEvent.ConfigDiscoveryLogChange : SupportedAsyncEvents);
                break;
            case FeatureId.KeepAliveTimer: ctrl.SetKato(cdw11); break;
            case FeatureId.HostIdentifier:
                // Fixed by Connect for the association's life (as Linux nvmet answers).
                req.Fail(NvmeStatus.Generic(GenericStatus.CommandSequenceError));
                return;
            case FeatureId.ReservationNotificationMask:
            {
                if ((cdw11 & ~ReservationNotification.MaskAll) != 0) { req.Fail(invalid); return; }
                NvmeStatus st = Namespaces(ctrl, req.Sqe.Nsid, out IReadOnlyList<Namespace> targets);
                if (!st.IsSuccess) { req.Fail(st); return; }
                foreach (Namespace n in targets) ctrl.SetReservationMask(n.Nsid, cdw11);
                req.Cqe.Dw0 = cdw11;
                break;
            }
            case FeatureId.ReservationPersistence:
            {
                NvmeStatus st = Namespaces(ctrl, req.Sqe.Nsid, out IReadOnlyList<Namespace> targets);
                if (!st.IsSuccess) { req.Fail(st); return; }
                // The owner keeps the state: a partner-owned namespace's is set through a relayed Reservation Register (CPTPL).
                if (targets.Any(n => n.IsRemote || !n.Reservations.PtplCapable)) { req.Fail(invalid); return; }
                foreach (Namespace n in targets) n.Reservations.SetPtpl((cdw11 & FeatureFields.Enable) != 0);
                break;
            }
            default:
                req.Fail(invalid);
                return;
        }
        req.Complete();
    }

    private const uint AllNamespaces = 0xFFFFFFFF;

    /// <summary>The one active namespace <paramref name="nsid"/> names (Get of a namespace-specific feature).</summary>
    private static NvmeStatus OneNamespace(Controller ctrl, uint nsid, out Namespace? ns)
    {
        ns = null;
        if (nsid is 0 or AllNamespaces) return NvmeStatus.Generic(GenericStatus.InvalidField);
        ns = ctrl.Subsystem.GetNamespace(nsid);
        return ns == null ? NvmeStatus.Generic(GenericStatus.InvalidNamespaceOrFormat) : NvmeStatus.Success;
    }

    /// <summary>The namespaces <paramref name="nsid"/> names for Set Features: one, or FFFFFFFFh for every one.</summary>
    private static NvmeStatus Namespaces(Controller ctrl, uint nsid, out IReadOnlyList<Namespace> list)
    {
        list = [];
        if (nsid == AllNamespaces)
        {
            list = ctrl.Subsystem.Namespaces;
            return NvmeStatus.Success;
        }
        NvmeStatus st = OneNamespace(ctrl, nsid, out Namespace? ns);
        if (st.IsSuccess) list = [ns!];
        return st;
    }
}
