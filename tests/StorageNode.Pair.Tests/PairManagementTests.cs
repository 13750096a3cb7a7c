using System.Text.Json.Nodes;
using StorageNode.Control;
using StorageNode.Testing;

namespace StorageNode.Pair.Tests;

/// <summary>
/// What the management RPC may change on a node of a pair: a paired subsystem's namespaces and hosts are the same on
/// both nodes, so one node alone refuses to change them (-1); its own bdevs it may create and delete.
/// </summary>
public sealed class PairManagementTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sn-pairrpc-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void OneNodeOfAPairRefusesToChangeThePairedSubsystemsNamespacesAndHosts()
    {
        string socket = Path.Combine(_dir, "a.sock");
        using var pair = new TestPair(new() { ["Control:RpcSocket"] = socket });
        using var rpc = new RpcClient(socket);
        int Code(string method, JsonObject p) => Assert.Throws<RpcException>(() => rpc.Call(method, p)).Code;
        string host = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-4000-8000-000000000001";

        Assert.Equal("Spare", rpc.Call("bdev_malloc_create", new JsonObject { ["name"] = "Spare", ["num_blocks"] = 64, ["block_size"] = 512 })!.GetValue<string>());
        Assert.Equal(RpcException.NotPermitted, Code("nvmf_subsystem_add_ns",
            new JsonObject { ["nqn"] = TestPair.Nqn, ["namespace"] = new JsonObject { ["bdev_name"] = "Spare" } }));
        Assert.Equal(RpcException.NotPermitted, Code("nvmf_subsystem_remove_ns", new JsonObject { ["nqn"] = TestPair.Nqn, ["nsid"] = 1 }));
        Assert.Equal(RpcException.NotPermitted, Code("nvmf_subsystem_add_host", new JsonObject { ["nqn"] = TestPair.Nqn, ["host"] = host }));
        Assert.Equal(RpcException.NotPermitted, Code("nvmf_subsystem_remove_host", new JsonObject { ["nqn"] = TestPair.Nqn, ["host"] = host }));
        Assert.Equal(RpcException.NotPermitted, Code("nvmf_subsystem_allow_any_host", new JsonObject { ["nqn"] = TestPair.Nqn, ["allow_any_host"] = false }));
        JsonObject sub = rpc.Call("nvmf_get_subsystems", new JsonObject { ["nqn"] = TestPair.Nqn })!.AsArray().Single()!.AsObject();
        Assert.True(sub["allow_any_host"]!.GetValue<bool>());
        Assert.Equal(2, sub["namespaces"]!.AsArray().Count);
        Assert.True(rpc.Call("bdev_malloc_delete", new JsonObject { ["name"] = "Spare" })!.GetValue<bool>());
    }

    [Fact]
    public void RelayedCommandsCountOnTheProxysPartnerBdevAndOnTheOwnersBdev()
    {
        string socketB = Path.Combine(_dir, "b.sock");
        using var pair = new TestPair(overridesB: new() { ["Control:RpcSocket"] = socketB });
        pair.WaitHealthy();
        using var rpcB = new RpcClient(socketB);
        using Nvme.Host.NvmeHost host = pair.Connect(pair.EndpointB, Guid.NewGuid());
        var data = new byte[4096];
        for (int i = 0; i < 4; i++) Assert.True(host.IoQueues[0].Write(1, (ulong)i * 8, 8, data).IsSuccess); // NSID 1 is A's: relayed by B

        JsonObject partner = rpcB.Call("bdev_get_iostat", new JsonObject { ["name"] = "partner:1" })!["bdevs"]!.AsArray().Single()!.AsObject();
        Assert.Equal((4, 4 * 4096), (partner["num_write_ops"]!.GetValue<long>(), partner["bytes_written"]!.GetValue<long>()));
        Bdevs.IoStats owner = pair.A.GetBdev(pair.A.Config.Subsystems[0].Namespaces.Single(n => n.Nsid == 1).Bdev!).Stats;
        Assert.Equal((4, 4 * 4096), (owner[Bdevs.IoStat.WriteOps], owner[Bdevs.IoStat.BytesWritten]));
        Assert.Equal(4, pair.Relayed('B'));
    }
}
