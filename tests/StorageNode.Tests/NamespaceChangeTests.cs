using System.Text.Json.Nodes;
using StorageNode.Control;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests;

/// <summary>
/// Namespaces added and removed while hosts are connected (SPDK's <c>bdev_malloc_create</c>,
/// <c>nvmf_subsystem_add_ns</c>, <c>nvmf_subsystem_remove_ns</c>): the hosts are told through the Changed Namespace List
/// and its Namespace Attribute Changed event, and a removal lets nothing reach the bdev afterwards.
/// </summary>
public sealed class NamespaceChangeTests
{
    private static TestNode Node() => new(rpc: true);

    private static JsonObject AddNs(string bdev, uint? nsid = null)
    {
        var ns = new JsonObject { ["bdev_name"] = bdev };
        if (nsid is uint n) ns["nsid"] = n;
        return new JsonObject { ["nqn"] = TestNode.Nqn, ["namespace"] = ns };
    }

    /// <summary>The next event must be a Namespace Attribute Changed notice, and the log must list exactly these NSIDs.</summary>
    private static void AssertToldOf(NvmeHost host, params uint[] nsids)
    {
        uint dw0 = host.WaitForEvent(TimeSpan.FromSeconds(5));
        Assert.Equal(AsyncEvent.TypeNotice, (byte)(dw0 & 0x7));
        Assert.Equal(AsyncEvent.NoticeNamespaceAttributeChanged, (byte)(dw0 >> 8));
        Assert.Equal(LogPageId.ChangedNamespaceList, AsyncEvent.LogPageOf(dw0));
        byte[] log = host.GetLogPage(LogPageId.ChangedNamespaceList, 4096);
        var listed = new List<uint>();
        for (int off = 0; off < log.Length && BitConverter.ToUInt32(log, off) != 0; off += 4) listed.Add(BitConverter.ToUInt32(log, off));
        Assert.Equal(nsids, listed);
        // Read without Retain Asynchronous Event: the list starts over.
        Assert.All(host.GetLogPage(LogPageId.ChangedNamespaceList, 4096), b => Assert.Equal(0, b));
    }

    [Fact]
    public void ANamespaceAddedAtRunTimeIsAnnouncedAndServesIo()
    {
        using TestNode node = Node();
        using RpcClient rpc = node.Rpc();
        using NvmeHost host = node.Connect();
        host.EnableAsyncEvents(AsyncEvent.ConfigNamespaceAttribute);
        Assert.Equal([1u, 2u], host.ActiveNamespaces());

        string bdev = rpc.Call("bdev_malloc_create", new JsonObject { ["num_blocks"] = 2048, ["block_size"] = 4096 })!.GetValue<string>();
        Assert.Equal("Malloc2", bdev); // the first free MallocN, as SPDK names them
        Assert.Equal(3u, rpc.Call("nvmf_subsystem_add_ns", AddNs(bdev))!.GetValue<uint>());

        AssertToldOf(host, 3);
        Assert.Equal([1u, 2u, 3u], host.ActiveNamespaces());
        NamespaceInfo info = host.IdentifyNamespace(3);
        Assert.Equal((2048ul, 4096u), (info.BlockCount, info.BlockSize));
        var data = new byte[8192];
        new Random(3).NextBytes(data);
        Assert.True(host.IoQueues[0].Write(3, 100, 2, data).IsSuccess);
        var back = new byte[8192];
        Assert.True(host.IoQueues[0].Read(3, 100, 2, back).IsSuccess);
        Assert.Equal(data, back);
        JsonObject sub = rpc.Call("nvmf_get_subsystems", new JsonObject { ["nqn"] = TestNode.Nqn })!.AsArray().Single()!.AsObject();
        Assert.Contains(sub["namespaces"]!.AsArray(), n => n!["nsid"]!.GetValue<uint>() == 3 && n["bdev_name"]!.GetValue<string>() == bdev);
    }

    [Fact]
    public void ARemovedNamespaceFailsWhatComesAfterAndFinishesWhatRan()
    {
        using TestNode node = Node();
        using RpcClient rpc = node.Rpc();
        using NvmeHost host = node.Connect();
        host.EnableAsyncEvents(AsyncEvent.ConfigNamespaceAttribute);

        // A writer keeps NSID 1 busy while it is removed: every write either ran or failed with Invalid Namespace.
        var statuses = new List<NvmeStatus>();
        int done = 0;
        var writer = new Thread(() =>
        {
            var block = new byte[512];
            for (int i = 0; i < 200_000; i++)
            {
                block[0] = (byte)i;
                BitConverter.TryWriteBytes(block.AsSpan(8), i);
                NvmeStatus st = host.IoQueues[0].Write(1, 7, 1, block);
                lock (statuses) statuses.Add(st);
                Volatile.Write(ref done, i + 1);
                if (!st.IsSuccess) return;
            }
        });
        writer.Start();
        for (int i = 0; i < 1000 && Volatile.Read(ref done) < 50; i++) Thread.Sleep(5);
        Assert.True(rpc.Call("nvmf_subsystem_remove_ns", new JsonObject { ["nqn"] = TestNode.Nqn, ["nsid"] = 1 })!.GetValue<bool>());
        Assert.True(writer.Join(TimeSpan.FromSeconds(30)), "the writer should have been stopped by Invalid Namespace");

        NvmeStatus last = statuses[^1];
        Assert.Equal((StatusCodeType.Generic, GenericStatus.InvalidNamespaceOrFormat), (last.Type, (byte)last.Code));
        Assert.All(statuses.Take(statuses.Count - 1), st => Assert.True(st.IsSuccess, st.ToString()));
        int lastWritten = statuses.Count - 2;
        Assert.True(lastWritten >= 49);

        AssertToldOf(host, 1);
        Assert.Equal([2u], host.ActiveNamespaces());
        NvmeStatus read = host.IoQueues[0].Read(1, 7, 1, new byte[512]);
        Assert.Equal(GenericStatus.InvalidNamespaceOrFormat, (byte)read.Code);
        JsonObject malloc0 = rpc.Call("bdev_get_bdevs", new JsonObject { ["name"] = "Malloc0" })!.AsArray().Single()!.AsObject();
        Assert.False(malloc0["claimed"]!.GetValue<bool>());

        // The bdev comes back as NSID 5: it holds the last write that succeeded, and nothing after it.
        Assert.Equal(5u, rpc.Call("nvmf_subsystem_add_ns", AddNs("Malloc0", 5))!.GetValue<uint>());
        AssertToldOf(host, 5);
        var back = new byte[512];
        Assert.True(host.IoQueues[0].Read(5, 7, 1, back).IsSuccess);
        Assert.Equal(lastWritten, BitConverter.ToInt32(back, 8));
    }

    [Fact]
    public void RunTimeNamespaceChangesAreRefusedWithReasons()
    {
        using TestNode node = Node();
        using RpcClient rpc = node.Rpc();
        int Code(string method, JsonObject p) => Assert.Throws<RpcException>(() => rpc.Call(method, p)).Code;

        Assert.Equal(RpcException.NoSuchDevice, Code("nvmf_subsystem_add_ns", AddNs("NoSuchBdev")));
        Assert.Equal(RpcException.Busy, Code("nvmf_subsystem_add_ns", AddNs("Malloc1")));         // already NSID 2
        rpc.Call("bdev_malloc_create", new JsonObject { ["name"] = "Extra", ["num_blocks"] = 64, ["block_size"] = 512 });
        Assert.Equal(RpcException.Busy, Code("bdev_malloc_create", new JsonObject { ["name"] = "Extra", ["num_blocks"] = 64, ["block_size"] = 512 }));
        Assert.Equal(RpcException.InvalidParams, Code("bdev_malloc_create", new JsonObject { ["num_blocks"] = 64, ["block_size"] = 1000 }));
        Assert.Equal(RpcException.InvalidParams, Code("bdev_malloc_create", new JsonObject { ["num_blocks"] = 0, ["block_size"] = 512 }));
        Assert.Equal(RpcException.Busy, Code("nvmf_subsystem_add_ns", AddNs("Extra", 2)));         // NSID in use
        Assert.Equal(RpcException.InvalidParams, Code("nvmf_subsystem_add_ns", AddNs("Extra", 999))); // beyond max_namespaces
        Assert.Equal(RpcException.InvalidParams, Code("nvmf_subsystem_add_ns",
            new JsonObject { ["nqn"] = TestNode.Nqn, ["namespace"] = new JsonObject { ["bdev_name"] = "Extra", ["size"] = 1 } }));
        Assert.Equal(RpcException.NoSuchDevice, Code("nvmf_subsystem_remove_ns", new JsonObject { ["nqn"] = TestNode.Nqn, ["nsid"] = 9 }));
        Assert.Equal(RpcException.NoSuchDevice, Code("nvmf_subsystem_add_ns",
            new JsonObject { ["nqn"] = "nqn.2026-11.io.storagenode:nope", ["namespace"] = new JsonObject { ["bdev_name"] = "Extra" } }));

        // Nothing changed, and the node still serves.
        using NvmeHost host = node.Connect();
        Assert.Equal([1u, 2u], host.ActiveNamespaces());
        Assert.True(host.IoQueues[0].Flush(1).IsSuccess);
    }
}
