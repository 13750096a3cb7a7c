using System.Diagnostics.Metrics;
using System.Text.Json.Nodes;
using StorageNode.Control;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests;

/// <summary>
/// What each bdev has done, as the node reports it: SPDK's <c>bdev_get_iostat</c> over the management RPC, and the
/// same counts through System.Diagnostics.Metrics (meter <c>StorageNode</c>).
/// </summary>
public sealed class IoStatsTests
{
    /// <summary>A known mix of commands on NSID 1 (Malloc0, 512-byte blocks).</summary>
    private static void RunMix(NvmeHost host)
    {
        IoQueue q = host.IoQueues[0];
        var block = new byte[4096];
        new Random(7).NextBytes(block);
        for (int i = 0; i < 3; i++) Assert.True(q.Write(1, (ulong)i * 8, 8, block).IsSuccess);            // 3 writes, 12 KiB
        for (int i = 0; i < 5; i++) Assert.True(q.Read(1, 0, 8, new byte[4096]).IsSuccess);                // 5 reads, 20 KiB
        Assert.True(q.WriteZeroes(1, 100, 16).IsSuccess);                                                    // 8 KiB zeroed
        Assert.True(q.Deallocate(1, [(200UL, 4u), (300UL, 4u)]).IsSuccess);                                 // 4 KiB unmapped
        Assert.True(q.Copy(1, 400, [(0UL, 8u), (8UL, 2u)]).IsSuccess);                                     // 5 KiB copied
        Assert.True(q.Flush(1).IsSuccess);
        Assert.True(q.Compare(1, 0, 8, block).IsSuccess);
        NvmeStatus mismatch = q.Compare(1, 0, 8, new byte[4096]);                                            // an error
        Assert.Equal((StatusCodeType.MediaDataIntegrity, MediaStatus.CompareFailure), (mismatch.Type, (byte)mismatch.Code));
        Assert.Equal(GenericStatus.LbaOutOfRange, (byte)q.Read(1, ulong.MaxValue - 1, 1, new byte[512]).Code); // refused before it reaches the bdev: not counted
        Assert.True(q.Read(2, 0, 1, new byte[4096]).IsSuccess);                                             // Malloc1
    }

    [Fact]
    public void BdevGetIostatCountsWhatCompletedByKind()
    {
        using var node = new TestNode(rpc: true);
        using RpcClient rpc = node.Rpc();
        using NvmeHost host = node.Connect();
        RunMix(host);

        JsonObject all = rpc.Call("bdev_get_iostat")!.AsObject();
        Assert.Equal(System.Diagnostics.Stopwatch.Frequency, all["tick_rate"]!.GetValue<long>());
        Assert.Equal(2, all["bdevs"]!.AsArray().Count);
        JsonObject m0 = rpc.Call("bdev_get_iostat", new JsonObject { ["name"] = "Malloc0" })!["bdevs"]!.AsArray().Single()!.AsObject();
        long F(string name) => m0[name]!.GetValue<long>();
        Assert.Equal("Malloc0", m0["name"]!.GetValue<string>());
        Assert.Equal((5, 5 * 4096), (F("num_read_ops"), F("bytes_read")));
        Assert.Equal((3, 3 * 4096), (F("num_write_ops"), F("bytes_written")));
        Assert.Equal((1, 16 * 512), (F("num_write_zeroes_ops"), F("bytes_zeroed")));
        Assert.Equal((1, 8 * 512), (F("num_unmap_ops"), F("bytes_unmapped")));
        Assert.Equal((1, 10 * 512), (F("num_copy_ops"), F("bytes_copied")));
        Assert.Equal((1, 1), (F("num_flush_ops"), F("num_compare_ops")));
        Assert.Equal(1, F("io_error"));
        JsonObject m1 = rpc.Call("bdev_get_iostat", new JsonObject { ["name"] = "Malloc1" })!["bdevs"]!.AsArray().Single()!.AsObject();
        Assert.Equal((1, 4096), (m1["num_read_ops"]!.GetValue<long>(), m1["bytes_read"]!.GetValue<long>()));
        Assert.Equal(RpcException.NoSuchDevice, Assert.Throws<RpcException>(() => rpc.Call("bdev_get_iostat", new JsonObject { ["name"] = "Nope" })).Code);
    }

    [Fact]
    public void TheStorageNodeMeterReportsTheSameCountsAndTheControllers()
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect();
        RunMix(host);

        var seen = new Dictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter == node.Host.Metrics!.Meter) l.EnableMeasurementEvents(instrument);
        };
        void Record(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
            => seen[instrument.Name + string.Concat(tags.ToArray().Select(t => $"|{t.Key}={t.Value}"))] = value;
        listener.SetMeasurementEventCallback<long>((i, v, t, _) => Record(i, v, t));
        listener.SetMeasurementEventCallback<int>((i, v, t, _) => Record(i, v, t));
        listener.Start();
        listener.RecordObservableInstruments();

        Assert.Equal(5, seen["storagenode.bdev.operations|bdev=Malloc0|kind=read"]);
        Assert.Equal(3 * 4096, seen["storagenode.bdev.bytes|bdev=Malloc0|kind=write"]);
        Assert.Equal(10 * 512, seen["storagenode.bdev.bytes|bdev=Malloc0|kind=copy"]);
        Assert.Equal(1, seen["storagenode.bdev.operations|bdev=Malloc0|kind=compare"]);
        Assert.Equal(1, seen["storagenode.bdev.errors|bdev=Malloc0"]);
        Assert.Equal(1, seen["storagenode.bdev.operations|bdev=Malloc1|kind=read"]);
        Assert.Equal(1, seen[$"storagenode.subsystem.controllers|nqn={TestNode.Nqn}"]);
        Assert.DoesNotContain(seen.Keys, k => k.StartsWith("storagenode.pair.relayed", StringComparison.Ordinal)); // not in a pair
    }
}
