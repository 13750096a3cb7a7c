using System.Text.Json.Nodes;
using StorageNode.Control;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests;

/// <summary>
/// Which hosts may connect, changed at run time (SPDK's <c>nvmf_subsystem_add_host</c>, <c>nvmf_subsystem_remove_host</c>,
/// <c>nvmf_subsystem_allow_any_host</c>), and RAM bdevs deleted (<c>bdev_malloc_delete</c>).
/// </summary>
public sealed class HostAccessTests
{
    private static readonly Guid IdA = Guid.Parse("aaaaaaaa-0000-4000-8000-000000000001");
    private static readonly Guid IdB = Guid.Parse("bbbbbbbb-0000-4000-8000-000000000002");
    private static readonly Guid IdC = Guid.Parse("cccccccc-0000-4000-8000-000000000003");
    private static string NqnOf(Guid id) => $"nqn.2014-08.org.nvmexpress:uuid:{id}";

    /// <summary>A node where only hosts A and B may connect.</summary>
    private static TestNode ListedHostsNode() => new(new()
    {
        ["Subsystems:0:AllowAnyHost"] = "false",
        ["Subsystems:0:Hosts:0"] = NqnOf(IdA),
        ["Subsystems:0:Hosts:1"] = NqnOf(IdB),
    }, rpc: true);

    private static JsonObject Host(Guid id) => new() { ["nqn"] = TestNode.Nqn, ["host"] = NqnOf(id) };

    private static NvmeStatus Refused(TestNode node, Guid id)
        => Assert.Throws<NvmeCommandException>(() => node.Connect(new NvmeHostOptions { HostId = id })).Status;

    private static List<string> ControllerHosts(RpcClient rpc)
        => [.. rpc.Call("nvmf_subsystem_get_controllers", new JsonObject { ["nqn"] = TestNode.Nqn })!.AsArray().Select(c => c!["hostnqn"]!.GetValue<string>())];

    private static List<string> ListedHosts(RpcClient rpc)
        => [.. rpc.Call("nvmf_get_subsystems", new JsonObject { ["nqn"] = TestNode.Nqn })!.AsArray().Single()!["hosts"]!.AsArray().Select(h => h!["nqn"]!.GetValue<string>())];

    [Fact]
    public void AHostTakenOffTheListIsDisconnectedAndRefusedUntilAllowedAgain()
    {
        using TestNode node = ListedHostsNode();
        using RpcClient rpc = node.Rpc();
        using NvmeHost a = node.Connect(new NvmeHostOptions { HostId = IdA });
        using NvmeHost b = node.Connect(new NvmeHostOptions { HostId = IdB });
        Assert.Equal(FabricsStatus.ConnectInvalidHost, Refused(node, IdC).Code);

        Assert.True(rpc.Call("nvmf_subsystem_remove_host", Host(IdA))!.GetValue<bool>());
        Assert.Equal([NqnOf(IdB)], ListedHosts(rpc));
        // As SPDK's target does: the host's associations are closed, the other host's stay.
        Assert.Equal([NqnOf(IdB)], ControllerHosts(rpc));
        // Its connection is closed: its next command fails (a transport error status, or the queue reports it broken).
        string? cut = null;
        for (int i = 0; i < 100 && cut == null; i++)
        {
            try
            {
                NvmeStatus st = a.IoQueues[0].Flush(1);
                if (!st.IsSuccess) cut = st.ToString();
                else Thread.Sleep(20);
            }
            catch (Exception e) when (e is NvmeTransportException or TimeoutException or IOException or ObjectDisposedException or InvalidOperationException)
            {
                cut = e.Message;
            }
        }
        Assert.NotNull(cut);
        Assert.True(b.IoQueues[0].Flush(1).IsSuccess);
        Assert.Equal(FabricsStatus.ConnectInvalidHost, Refused(node, IdA).Code);
        Assert.Contains(node.Logs.Lines, l => l.Contains($"host {NqnOf(IdA)} no longer allowed; 1 association(s) closed", StringComparison.Ordinal));

        Assert.True(rpc.Call("nvmf_subsystem_add_host", Host(IdC))!.GetValue<bool>());
        Assert.True(rpc.Call("nvmf_subsystem_add_host", Host(IdA))!.GetValue<bool>());
        Assert.Equal([NqnOf(IdA), NqnOf(IdB), NqnOf(IdC)], ListedHosts(rpc));
        using NvmeHost again = node.Connect(new NvmeHostOptions { HostId = IdA });
        using NvmeHost c = node.Connect(new NvmeHostOptions { HostId = IdC });
        Assert.True(again.IoQueues[0].Flush(1).IsSuccess);
        Assert.True(c.IoQueues[0].Flush(1).IsSuccess);
    }

    [Fact]
    public void AllowAnyHostOpensTheSubsystemAndClosingItKeepsWhatIsConnected()
    {
        using TestNode node = ListedHostsNode();
        using RpcClient rpc = node.Rpc();
        Assert.Equal(FabricsStatus.ConnectInvalidHost, Refused(node, IdC).Code);

        Assert.True(rpc.Call("nvmf_subsystem_allow_any_host", new JsonObject { ["nqn"] = TestNode.Nqn, ["allow_any_host"] = true })!.GetValue<bool>());
        Assert.True(rpc.Call("nvmf_get_subsystems", new JsonObject { ["nqn"] = TestNode.Nqn })!.AsArray().Single()!["allow_any_host"]!.GetValue<bool>());
        using NvmeHost stranger = node.Connect(new NvmeHostOptions { HostId = IdC });
        Assert.True(stranger.IoQueues[0].Flush(1).IsSuccess);

        // Closing the door refuses new associations of unlisted hosts; the ones made stay (as in SPDK's target).
        Assert.True(rpc.Call("nvmf_subsystem_allow_any_host", new JsonObject { ["nqn"] = TestNode.Nqn, ["allow_any_host"] = false })!.GetValue<bool>());
        Assert.Equal(FabricsStatus.ConnectInvalidHost, Refused(node, Guid.Parse("dddddddd-0000-4000-8000-000000000004")).Code);
        Assert.True(stranger.IoQueues[0].Flush(1).IsSuccess);
        using NvmeHost listed = node.Connect(new NvmeHostOptions { HostId = IdB });
        Assert.True(listed.IoQueues[0].Flush(1).IsSuccess);
    }

    [Fact]
    public void AHostsDiscoveryControllerIsToldWhenItGainsOrLosesTheSubsystem()
    {
        using TestNode node = ListedHostsNode();
        using RpcClient rpc = node.Rpc();
        using NvmeHost disc = node.Connect(new NvmeHostOptions { IoQueues = 0, HostId = IdC }, WellKnownNqn.Discovery);
        disc.EnableAsyncEvents(AsyncEvent.ConfigDiscoveryLogChange);
        bool Lists() => disc.GetDiscoveryLog().Any(e => e.SubNqn == TestNode.Nqn);
        Assert.False(Lists());

        foreach ((string method, bool listed) in new[] { ("nvmf_subsystem_add_host", true), ("nvmf_subsystem_remove_host", false) })
        {
            rpc.Call(method, Host(IdC));
            uint dw0 = disc.WaitForEvent(TimeSpan.FromSeconds(5));
            Assert.Equal(AsyncEvent.TypeNotice, (byte)(dw0 & 0x7));
            Assert.Equal(AsyncEvent.NoticeDiscoveryLogChange, (byte)(dw0 >> 8));
            Assert.Equal(LogPageId.Discovery, AsyncEvent.LogPageOf(dw0));
            Assert.Equal(listed, Lists());
            disc.EnableAsyncEvents(AsyncEvent.ConfigDiscoveryLogChange); // another request for the next event
        }
    }

    [Fact]
    public void HostAndBdevChangesAreRefusedWithReasons()
    {
        using TestNode node = ListedHostsNode();
        using RpcClient rpc = node.Rpc();
        int Code(string method, JsonObject p) => Assert.Throws<RpcException>(() => rpc.Call(method, p)).Code;

        Assert.Equal(RpcException.Busy, Code("nvmf_subsystem_add_host", Host(IdA)));                 // already listed
        Assert.Equal(RpcException.InvalidParams, Code("nvmf_subsystem_add_host", new JsonObject { ["nqn"] = TestNode.Nqn, ["host"] = "host-a" }));
        Assert.Equal(RpcException.InvalidParams, Code("nvmf_subsystem_add_host", new JsonObject { ["nqn"] = TestNode.Nqn, ["host"] = NqnOf(IdC), ["psk"] = "key0" }));
        Assert.Equal(RpcException.InvalidParams, Code("nvmf_subsystem_add_host", new JsonObject { ["nqn"] = WellKnownNqn.Discovery, ["host"] = NqnOf(IdC) }));
        Assert.Equal(RpcException.NoSuchDevice, Code("nvmf_subsystem_add_host", new JsonObject { ["nqn"] = "nqn.2026-11.io.storagenode:none", ["host"] = NqnOf(IdC) }));
        Assert.Equal(RpcException.NoSuchDevice, Code("nvmf_subsystem_remove_host", Host(IdC)));        // not listed
        Assert.Equal(RpcException.InvalidParams, Code("nvmf_subsystem_allow_any_host", new JsonObject { ["nqn"] = TestNode.Nqn, ["allow_any_host"] = "yes" }));
        Assert.Equal(RpcException.InvalidParams, Code("nvmf_subsystem_allow_any_host", new JsonObject { ["nqn"] = TestNode.Nqn }));
        Assert.Equal([NqnOf(IdA), NqnOf(IdB)], ListedHosts(rpc));

        Assert.Equal(RpcException.Busy, Code("bdev_malloc_delete", new JsonObject { ["name"] = "Malloc0" })); // NSID 1
        Assert.Equal(RpcException.NoSuchDevice, Code("bdev_malloc_delete", new JsonObject { ["name"] = "NoSuchBdev" }));
        Assert.Equal(RpcException.InvalidParams, Code("bdev_malloc_delete", new JsonObject()));
        rpc.Call("bdev_malloc_create", new JsonObject { ["name"] = "Spare", ["num_blocks"] = 64, ["block_size"] = 512 });
        Assert.True(rpc.Call("bdev_malloc_delete", new JsonObject { ["name"] = "Spare" })!.GetValue<bool>());
        Assert.DoesNotContain(rpc.Call("bdev_get_bdevs", null)!.AsArray(), b => b!["name"]!.GetValue<string>() == "Spare");
        // The name is free again, and the namespaces still serve I/O.
        Assert.Equal("Spare", rpc.Call("bdev_malloc_create", new JsonObject { ["name"] = "Spare", ["num_blocks"] = 64, ["block_size"] = 512 })!.GetValue<string>());
        using NvmeHost a = node.Connect(new NvmeHostOptions { HostId = IdA });
        Assert.True(a.IoQueues[0].Flush(1).IsSuccess);
    }
}
