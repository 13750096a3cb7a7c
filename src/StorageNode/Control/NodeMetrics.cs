using System.Diagnostics.Metrics;
using StorageNode.Bdevs;
using StorageNode.Target;

namespace StorageNode.Control;

/// <summary>
/// The node's metrics through System.Diagnostics.Metrics (meter <c>StorageNode</c>): what each bdev has done, the hosts'
/// controllers per subsystem, and in a pair the commands relayed to the partner. Every instrument is observable: it
/// reads counters the node keeps anyway when a listener collects (<c>dotnet-counters</c>, OpenTelemetry), so the I/O
/// path pays nothing for it.
/// </summary>
public sealed class NodeMetrics : IDisposable
{
    public const string MeterName = "StorageNode";
    private static readonly (string Kind, IoStat Ops, IoStat? Bytes)[] Kinds =
    [
        ("read", IoStat.ReadOps, IoStat.BytesRead), ("write", IoStat.WriteOps, IoStat.BytesWritten),
        ("write_zeroes", IoStat.WriteZeroesOps, IoStat.BytesZeroed), ("unmap", IoStat.UnmapOps, IoStat.BytesUnmapped),
        ("copy", IoStat.CopyOps, IoStat.BytesCopied), ("flush", IoStat.FlushOps, null), ("compare", IoStat.CompareOps, null),
    ];

    public Meter Meter { get; }

    public NodeMetrics(Node node)
    {
        Meter = new Meter(MeterName, Config.ThisAssembly.FirmwareRevision);
        Meter.CreateObservableCounter("storagenode.bdev.operations", () => PerBdev(node, bytes: false), "{operation}",
            "Commands that completed successfully, by bdev and kind (read, write, write_zeroes, unmap, copy, flush, compare)");
        Meter.CreateObservableCounter("storagenode.bdev.bytes", () => PerBdev(node, bytes: true), "By",
            "Bytes read, written, zeroed, unmapped and copied, by bdev and kind");
        Meter.CreateObservableCounter("storagenode.bdev.errors", () => Errors(node), "{operation}",
            "Commands that completed with an error status, by bdev");
        Meter.CreateObservableUpDownCounter("storagenode.subsystem.controllers", () => Controllers(node), "{controller}",
            "Hosts' controllers (associations) per subsystem; the partner's interconnect association is not counted");
        Meter.CreateObservableCounter("storagenode.pair.relayed", () => Relayed(node), "{operation}",
            "Commands relayed to the partner (this node as the proxy), per subsystem");
    }

    private static IEnumerable<Measurement<long>> PerBdev(Node node, bool bytes)
    {
        foreach (Bdev b in node.Bdevs)
            foreach ((string kind, IoStat ops, IoStat? byteCount) in Kinds)
            {
                if (!bytes) yield return new Measurement<long>(b.Stats[ops], new("bdev", b.Name), new("kind", kind));
                else if (byteCount is IoStat bc) yield return new Measurement<long>(b.Stats[bc], new("bdev", b.Name), new("kind", kind));
            }
    }

    private static IEnumerable<Measurement<long>> Errors(Node node)
    {
        foreach (Bdev b in node.Bdevs) yield return new Measurement<long>(b.Stats[IoStat.Errors], new KeyValuePair<string, object?>("bdev", b.Name));
    }

    private static IEnumerable<Measurement<int>> Controllers(Node node)
    {
        foreach (Subsystem s in node.Target.Subsystems)
            yield return new Measurement<int>(s.Controllers.Count(c => !c.IsInterconnect), new KeyValuePair<string, object?>("nqn", s.Nqn));
    }

    private static IEnumerable<Measurement<long>> Relayed(Node node)
    {
        if (node.Pair == null) yield break;
        foreach (Pair.InterconnectLink l in node.Pair.Links)
            yield return new Measurement<long>(Volatile.Read(ref l.Relayed), new KeyValuePair<string, object?>("nqn", l.Subsystem.Nqn));
    }

    public void Dispose() => Meter.Dispose();
}
