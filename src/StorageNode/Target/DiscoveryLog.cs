using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using StorageNode.Nvme.Spec;

namespace StorageNode.Target;

/// <summary>Builds the discovery log page (LID 70h) of this node for one host.</summary>
internal static unsafe class DiscoveryLog
{
    public static byte[] Build(Controller ctrl)
    {
        NvmfTarget target = ctrl.Target;
        var listeners = new List<ListenerInfo>();
        foreach (ListenerInfo l in target.Listeners)
            if (l.Role != ListenerRole.Interconnect) listeners.Add(l);
        var entries = new List<(Subsystem? Sub, ListenerInfo L)>();
        foreach (ListenerInfo l in listeners)
        {
            // The discovery subsystem itself on every port (subtype 3, "current discovery subsystem").
            entries.Add((null, l));
        }
        foreach (Subsystem s in target.Subsystems)
        {
            if (s.IsDiscovery || !s.HostAllowed(ctrl.HostNqn)) continue;
            foreach (ListenerInfo l in listeners) entries.Add((s, l));
        }

        var log = new byte[sizeof(DiscoveryLogHeader) + entries.Count * sizeof(DiscoveryLogEntry)];
        ref DiscoveryLogHeader h = ref MemoryMarshal.AsRef<DiscoveryLogHeader>(log.AsSpan());
        h.GenerationCounter = target.DiscoveryGeneration;
        h.RecordCount = (ulong)entries.Count;
        h.RecordFormat = 0;
        int off = sizeof(DiscoveryLogHeader);
        foreach ((Subsystem? s, ListenerInfo l) in entries)
        {
            ref DiscoveryLogEntry e = ref MemoryMarshal.AsRef<DiscoveryLogEntry>(log.AsSpan(off));
            off += sizeof(DiscoveryLogEntry);
            e.TrType = l.TrType;
            e.AdrFam = l.AdrFam;
            e.SubType = s == null ? Discovery.SubTypeCurrentDiscovery : Discovery.SubTypeNvm;
            e.Treq = Discovery.TreqNotRequired;
            e.PortId = l.PortId;
            e.Cntlid = Discovery.CntlidDynamic;
            e.AsqSz = (ushort)target.Options.AdminQueueDepth;
            e.Eflags = s == null ? (ushort)(Discovery.EflagsDuplicateReturnedInfo | Discovery.EflagsExplicitPersistentConnection) : (ushort)0;
            SpecText.WriteNulPadded(new Span<byte>(Unsafe.AsPointer(ref e.TrSvcId[0]), 32), l.Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
            SpecText.WriteNulPadded(new Span<byte>(Unsafe.AsPointer(ref e.SubNqn[0]), 256), s?.Nqn ?? WellKnownNqn.Discovery);
            SpecText.WriteNulPadded(new Span<byte>(Unsafe.AsPointer(ref e.TrAddr[0]), 256), l.Address);
            l.Transport.WriteTsas(new Span<byte>(Unsafe.AsPointer(ref e.Tsas[0]), 256));
        }
        return log;
    }
}
