using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Configuration;
using StorageNode.Config;
using StorageNode.Control;
using StorageNode.Nvme.Host;

namespace StorageNode.Tests;

/// <summary>The management RPC (JSON-RPC 2.0 over a Unix socket) and the <c>storagenode rpc</c> command line.</summary>
public sealed class RpcTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sn-rpc-").FullName;

    private string Socket(string name = "node.sock") => Path.Combine(_dir, name);

    private TestNode Node() => new(new() { ["Control:RpcSocket"] = Socket() });

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static int Code(Action call) => Assert.Throws<RpcException>(call).Code;

    [Fact]
    public void MethodsDescribeTheNodeAsConfigured()
    {
        using TestNode node = Node();
        using var rpc = new RpcClient(Socket());
        JsonArray methods = rpc.Call("rpc_get_methods")!.AsArray();
        foreach (string m in new[] { "nvmf_get_subsystems", "bdev_get_bdevs", "framework_get_reactors", "cluster_get_status", "nvmf_subsystem_set_ana_state" })
            Assert.Contains(m, methods.Select(x => x!.GetValue<string>()));

        JsonObject sub = rpc.Call("nvmf_get_subsystems", new JsonObject { ["nqn"] = TestNode.Nqn })!.AsArray().Single()!.AsObject();
        Assert.Equal("NVMe", sub["subtype"]!.GetValue<string>());
        Assert.Equal("SNTEST0001", sub["serial_number"]!.GetValue<string>());
        Assert.Equal(node.Endpoint.Port.ToString(), sub["listen_addresses"]![0]!["trsvcid"]!.GetValue<string>());
        JsonArray nss = sub["namespaces"]!.AsArray();
        Assert.Equal(2, nss.Count);
        Assert.Equal("Malloc0", nss[0]!["bdev_name"]!.GetValue<string>());
        var ns1 = node.Node.Target.FindSubsystem(TestNode.Nqn)!.GetNamespace(1)!;
        Assert.Equal(Convert.ToHexString(ns1.Nguid), nss[0]!["nguid"]!.GetValue<string>());
        Assert.Equal(ns1.Uuid.ToString(), nss[0]!["uuid"]!.GetValue<string>());
        // Without a filter the discovery subsystem is listed too, as SPDK does.
        Assert.Equal(2, rpc.Call("nvmf_get_subsystems")!.AsArray().Count);

        JsonObject malloc1 = rpc.Call("bdev_get_bdevs", new JsonObject { ["name"] = "Malloc1" })!.AsArray().Single()!.AsObject();
        Assert.Equal(4096u, malloc1["block_size"]!.GetValue<uint>());
        Assert.Equal(16UL * 1024 * 1024 / 4096, malloc1["num_blocks"]!.GetValue<ulong>());
        Assert.True(malloc1["claimed"]!.GetValue<bool>());
        Assert.Single(rpc.Call("framework_get_reactors")!.AsArray());
        Assert.False(rpc.Call("cluster_get_status")!["clustered"]!.GetValue<bool>());

        // A connected host shows up with the CNTLID its Connect got and its I/O queues.
        var hostId = Guid.NewGuid();
        using NvmeHost host = node.Connect(new NvmeHostOptions { HostId = hostId, IoQueues = 2 });
        JsonObject ctrl = rpc.Call("nvmf_subsystem_get_controllers", new JsonObject { ["nqn"] = TestNode.Nqn })!.AsArray().Single()!.AsObject();
        Assert.Equal(host.Cntlid, ctrl["cntlid"]!.GetValue<ushort>());
        Assert.Equal(hostId.ToString(), ctrl["hostid"]!.GetValue<string>());
        Assert.Equal(2, ctrl["num_io_qpairs"]!.GetValue<int>());
    }

    [Fact]
    public void AnaStateOverrideReachesListenersAndCanBeUndone()
    {
        using TestNode node = Node();
        using var rpc = new RpcClient(Socket());
        var args = new JsonObject { ["nqn"] = TestNode.Nqn };
        string State() => rpc.Call("nvmf_subsystem_get_listeners", (JsonObject)args.DeepClone())!.AsArray()[0]!["ana_states"]![0]!["ana_state"]!.GetValue<string>();
        Assert.Equal("optimized", State());
        ulong before = node.Node.Target.FindSubsystem(TestNode.Nqn)!.AnaChangeCount;
        rpc.Call("nvmf_subsystem_set_ana_state", new JsonObject { ["nqn"] = TestNode.Nqn, ["anagrpid"] = 1, ["ana_state"] = "inaccessible" });
        Assert.Equal("inaccessible", State());
        Assert.True(node.Node.Target.FindSubsystem(TestNode.Nqn)!.AnaChangeCount > before);
        rpc.Call("nvmf_subsystem_set_ana_state", new JsonObject { ["nqn"] = TestNode.Nqn, ["anagrpid"] = 1, ["ana_state"] = "auto" });
        Assert.Equal("optimized", State());
        Assert.Equal(RpcException.InvalidParams, Code(() => rpc.Call("nvmf_subsystem_set_ana_state", new JsonObject { ["nqn"] = TestNode.Nqn, ["anagrpid"] = 1, ["ana_state"] = "fast" })));
        Assert.Equal(RpcException.NoSuchDevice, Code(() => rpc.Call("nvmf_subsystem_set_ana_state", new JsonObject { ["nqn"] = TestNode.Nqn, ["anagrpid"] = 9, ["ana_state"] = "optimized" })));
    }

    [Fact]
    public void BadRequestsGetJsonRpcErrorsAndTheNodeKeepsServing()
    {
        using TestNode node = Node();
        using var rpc = new RpcClient(Socket());
        Assert.Equal(RpcException.MethodNotFound, Code(() => rpc.Call("nvmf_delete_everything")));
        Assert.Equal(RpcException.InvalidParams, Code(() => rpc.Call("nvmf_subsystem_get_controllers")));                       // nqn missing
        Assert.Equal(RpcException.InvalidParams, Code(() => rpc.Call("nvmf_subsystem_get_controllers", new JsonObject { ["nqn"] = 5 })));
        Assert.Equal(RpcException.InvalidParams, Code(() => rpc.Call("bdev_get_bdevs", new JsonObject { ["nmae"] = "Malloc0" })));
        Assert.Equal(RpcException.InvalidParams, Code(() => rpc.Call("rpc_get_methods", new JsonObject { ["x"] = 1 })));
        Assert.Equal(RpcException.NoSuchDevice, Code(() => rpc.Call("nvmf_get_subsystems", new JsonObject { ["nqn"] = "nqn.2026-11.io.storagenode:none" })));

        static int ErrorCode(JsonNode? r) => r!["error"]!["code"]!.GetValue<int>();
        Assert.Equal(RpcException.InvalidRequest, ErrorCode(rpc.SendRaw("{\"id\":1,\"method\":\"rpc_get_methods\"}"u8)));            // no "jsonrpc"
        Assert.Equal(RpcException.InvalidRequest, ErrorCode(rpc.SendRaw("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":7}"u8)));
        Assert.Equal(RpcException.InvalidParams, ErrorCode(rpc.SendRaw("{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"bdev_get_bdevs\",\"params\":[1]}"u8)));
        Assert.Equal(RpcException.InvalidRequest, ErrorCode(rpc.SendRaw("[]"u8)));
        // A batch: the notification (no id) gets no answer, the call does; requests split across writes are fine.
        JsonNode? batch = rpc.SendRaw("[{\"jsonrpc\":\"2.0\",\"method\":\"rpc_get_methods\"},{\"jsonrpc\":\"2.0\",\"id\":\"b\",\"method\":\"framework_get_reactors\"}]"u8);
        Assert.Equal("b", batch!.AsArray().Single()!["id"]!.GetValue<string>());
        Assert.NotNull(rpc.Call("storagenode_get_version")!["version"]);

        // Not JSON: a parse error, then the connection ends (the stream cannot be resynchronised).
        using (var bad = new RpcClient(Socket()))
        {
            Assert.Equal(RpcException.ParseError, ErrorCode(bad.SendRaw("{\"jsonrpc\": nope}"u8)));
            Assert.Null(bad.ReadOne());
        }
        using (var bad = new RpcClient(Socket()))
        {
            Assert.Equal(RpcException.ParseError, ErrorCode(bad.SendRaw("hello\n"u8)));
        }
        // Larger than the limit: an error, the connection ends.
        using (var big = new RpcClient(Socket()))
        {
            byte[] huge = Encoding.ASCII.GetBytes("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{\"p\":\"" + new string('a', RpcServer.MaxRequestBytes) + "\"}}");
            JsonNode? r;
            try
            {
                r = big.SendRaw(huge);
            }
            catch (SocketException)
            {
                r = big.ReadOne(); // the server may close while we are still sending
            }
            Assert.Equal(RpcException.InvalidRequest, ErrorCode(r));
            Assert.Contains("larger", r!["error"]!["message"]!.GetValue<string>());
        }
        // A client that vanishes mid-request changes nothing.
        using (var gone = new RpcClient(Socket()))
            gone.SendRaw("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rpc_get_methods\"}"u8);
        using (var s = new System.Net.Sockets.Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            s.Connect(new UnixDomainSocketEndPoint(Socket()));
            s.Send("{\"jsonrpc\":\"2.0\",\"id\":1,\"met"u8);
        }

        // The first client and the data path still work.
        Assert.Equal(2, rpc.Call("nvmf_get_subsystems")!.AsArray().Count);
        using NvmeHost host = node.Connect();
        byte[] data = new byte[4096];
        Random.Shared.NextBytes(data);
        Assert.True(host.IoQueues[0].Write(1, 8, 8, data).IsSuccess);
        byte[] back = new byte[4096];
        Assert.True(host.IoQueues[0].Read(1, 8, 8, back).IsSuccess);
        Assert.Equal(data, back);
    }

    [Fact]
    public void TheSocketIsReplacedWhenStaleAndRefusedWhenInUseOrNotASocket()
    {
        // Stale: a socket file nobody listens on (a node that was killed) is replaced. (libc directly: .NET
        // removes the file of a socket it bound when the socket is disposed, a killed process does not.)
        BindAndForget(Socket());
        Assert.True(File.Exists(Socket()));
        using (TestNode node = Node())
        {
            using var rpc = new RpcClient(Socket());
            Assert.NotNull(rpc.Call("rpc_get_methods"));
            // In use: a second node on the same path is refused, naming the key; the first keeps its socket.
            ConfigException e = Assert.Throws<ConfigException>(() => new TestNode(new() { ["Control:RpcSocket"] = Socket() }));
            Assert.Equal("Control:RpcSocket", e.Key);
            Assert.Contains("in use", e.Problem);
            Assert.NotNull(rpc.Call("rpc_get_methods"));
        }
        Assert.False(File.Exists(Socket())); // removed when the node stops

        File.WriteAllText(Socket("file"), "not a socket");
        ConfigException f = Assert.Throws<ConfigException>(() => new TestNode(new() { ["Control:RpcSocket"] = Socket("file") }));
        Assert.Contains("not a socket", f.Problem);
        Assert.Equal("not a socket", File.ReadAllText(Socket("file")));
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)] private static extern int socket(int domain, int type, int protocol);
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)] private static extern int bind(int fd, byte[] addr, int len);
    [System.Runtime.InteropServices.DllImport("libc")] private static extern int close(int fd);

    private static void BindAndForget(string path)
    {
        int fd = socket(1 /* AF_UNIX */, 1 /* SOCK_STREAM */, 0);
        Assert.True(fd >= 0);
        var addr = new byte[110];
        addr[0] = 1; // sun_family = AF_UNIX (little-endian short)
        Encoding.UTF8.GetBytes(path).CopyTo(addr, 2);
        Assert.Equal(0, bind(fd, addr, addr.Length));
        close(fd);
    }

    /// <summary>
    /// A node host starts once: a second start is refused and leaves the running node, its management socket and its
    /// hosts alone (it used to fail on the socket in use and stop the node it was called on).
    /// </summary>
    [Fact]
    public void ASecondStartOfARunningNodeIsRefusedAndTheNodeServesOn()
    {
        using var node = new TestNode(rpc: true);
        Assert.Throws<InvalidOperationException>(node.Host.Start);
        using RpcClient rpc = node.Rpc();
        Assert.NotNull(rpc.Call("rpc_get_methods"));
        using NvmeHost host = node.Connect();
        Assert.True(host.IoQueues[0].Flush(1).IsSuccess);
    }

    [Fact]
    public void ControlSettingsAreValidated()
    {
        static ConfigException Bad(string key, string value) => Assert.Throws<ConfigException>(() =>
            NodeConfig.Load(new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { [key] = value }).Build()));
        Assert.Equal("Control:RpcSocket", Bad("Control:RpcSocket", "relative.sock").Key);
        Assert.Equal("Control:RpcSocket", Bad("Control:RpcSocket", "/no/such/folder/x.sock").Key);
        Assert.Equal("Control:RpcSocket", Bad("Control:RpcSocket", "/tmp/" + new string('s', 120)).Key);
        Assert.Equal("Control:Port", Bad("Control:Port", "1").Key);
        Assert.Null(NodeConfig.Load(new ConfigurationBuilder().Build()).RpcSocket);
    }

    [Fact]
    public void ClusterStatusShowsThePairAndItsInterconnect()
    {
        using var pair = new TestPair(overridesA: new() { ["Control:RpcSocket"] = Socket("a.sock") });
        pair.WaitHealthy();
        using var rpc = new RpcClient(Socket("a.sock"));
        JsonObject st = rpc.Call("cluster_get_status")!.AsObject();
        Assert.True(st["clustered"]!.GetValue<bool>());
        Assert.Equal("healthy", st["partner_status"]!.GetValue<string>());
        JsonObject link = st["links"]![0]!.AsObject();
        Assert.True(link["up"]!.GetValue<bool>());
        Assert.Equal("tcp", link["transport"]!.GetValue<string>());
        // The namespace A relays for B is a partner bdev, listed with the configured ones.
        JsonArray bdevs = rpc.Call("bdev_get_bdevs")!.AsArray();
        Assert.Contains(bdevs, b => b!["product_name"]!.GetValue<string>() == "Partner (relayed)");
    }

    [Fact]
    public void TheCommandLineCallsTheNodeAndSaysWhatWentWrong()
    {
        using TestNode node = Node();
        (int Rc, string Out, string Err) Run(params string[] args)
        {
            var o = new StringWriter();
            var e = new StringWriter();
            int rc = RpcClient.Run(args, o, e);
            return (rc, o.ToString(), e.ToString());
        }
        var ok = Run("-s", Socket(), "bdev_get_bdevs", "name=Malloc0");
        Assert.Equal(0, ok.Rc);
        Assert.Equal("Malloc0", JsonNode.Parse(ok.Out)!.AsArray().Single()!["name"]!.GetValue<string>());
        var json = Run("-s", Socket(), "nvmf_subsystem_set_ana_state", $"{{\"nqn\":\"{TestNode.Nqn}\",\"anagrpid\":1,\"ana_state\":\"change\"}}");
        Assert.Equal(0, json.Rc);
        Assert.Equal("true", json.Out.Trim());
        var numeric = Run("-s", Socket(), "nvmf_subsystem_set_ana_state", $"nqn={TestNode.Nqn}", "anagrpid=1", "ana_state=auto");
        Assert.Equal(0, numeric.Rc);

        var err = Run("-s", Socket(), "bdev_get_bdevs", "name=Nope");
        Assert.Equal(1, err.Rc);
        Assert.Contains("error -19", err.Err);
        Assert.Contains("Nope", err.Err);
        Assert.Equal(2, Run("-s", Socket("absent.sock"), "rpc_get_methods").Rc);
        Assert.Equal(2, Run("-s", Socket(), "bdev_get_bdevs", "{not json").Rc);
        Assert.Equal(2, Run("-s", Socket(), "bdev_get_bdevs", "novalue").Rc);
        Assert.Equal(2, Run("-s", Socket()).Rc);
        Assert.Equal(2, Run("--bogus").Rc);
        Assert.Equal(0, Run("--help").Rc);
    }
}
