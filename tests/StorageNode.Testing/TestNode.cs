using System.Net;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Hosting;
using StorageNode.Nvme.Host;

namespace StorageNode.Testing;

/// <summary>A node running in-process on 127.0.0.1 with an ephemeral port, for integration tests.</summary>
public sealed class TestNode : IDisposable
{
    public const string Nqn = "nqn.2026-11.io.storagenode:test";

    public Node Node => Host.Node;
    /// <summary>The node with its management RPC and metrics.</summary>
    public NodeHost Host { get; }
    public IPEndPoint Endpoint => Node.TcpEndpoints[0];
    public StringWriterLoggerProvider Logs { get; } = new();
    private readonly ILoggerFactory _loggerFactory;
    private readonly string? _rpcDir;

    /// <summary>The management RPC socket (null unless made with <c>rpc: true</c>).</summary>
    public string? RpcSocket { get; }

    /// <param name="rpc">Serve the management RPC on a socket in a directory of its own (<see cref="Rpc"/>).</param>
    public TestNode(Dictionary<string, string?>? overrides = null, int reactors = 1, Func<NodeConfig, NodeConfig>? adjust = null, bool rpc = false)
    {
        var settings = new Dictionary<string, string?>
        {
            ["Node:Name"] = "test",
            ["Node:Reactors"] = reactors.ToString(),
            ["Node:PollMode"] = "adaptive",
            ["Node:Pools:SmallBufferCount"] = "256",
            ["Node:Pools:MediumBufferCount"] = "32",
            ["Node:Pools:LargeBufferCount"] = "8",
            ["Listeners:0:Address"] = "127.0.0.1",
            ["Listeners:0:Port"] = "0",
            ["Bdevs:0:Name"] = "Malloc0",
            ["Bdevs:0:Type"] = "malloc",
            ["Bdevs:0:SizeMiB"] = "64",
            ["Bdevs:0:BlockSize"] = "512",
            ["Bdevs:1:Name"] = "Malloc1",
            ["Bdevs:1:Type"] = "malloc",
            ["Bdevs:1:SizeMiB"] = "16",
            ["Bdevs:1:BlockSize"] = "4096",
            ["Subsystems:0:Nqn"] = Nqn,
            ["Subsystems:0:SerialNumber"] = "SNTEST0001",
            ["Subsystems:0:ModelNumber"] = "StorageNode test",
            ["Subsystems:0:Namespaces:0:Nsid"] = "1",
            ["Subsystems:0:Namespaces:0:Bdev"] = "Malloc0",
            ["Subsystems:0:Namespaces:1:Nsid"] = "2",
            ["Subsystems:0:Namespaces:1:Bdev"] = "Malloc1",
        };
        if (rpc)
        {
            _rpcDir = Directory.CreateTempSubdirectory("sn-rpc-").FullName;
            RpcSocket = settings["Control:RpcSocket"] = Path.Combine(_rpcDir, "rpc.sock");
        }
        if (overrides != null)
            foreach (var kv in overrides) settings[kv.Key] = kv.Value;
        IConfiguration cfg = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
        _loggerFactory = LoggerFactory.Create(b => b.AddProvider(Logs).SetMinimumLevel(LogLevel.Information));
        NodeConfig config = NodeConfig.Load(cfg);
        try
        {
            Host = NodeHost.Start(adjust == null ? config : adjust(config), _loggerFactory);
        }
        catch
        {
            _loggerFactory.Dispose();
            DeleteRpcDir();
            throw;
        }
    }

    /// <summary>A client of the node's management RPC (made with <c>rpc: true</c>).</summary>
    public Control.RpcClient Rpc() => new(RpcSocket ?? throw new InvalidOperationException("this test node was made without rpc: true"));

    private void DeleteRpcDir()
    {
        if (_rpcDir != null && Directory.Exists(_rpcDir)) Directory.Delete(_rpcDir, recursive: true);
    }

    public NvmeHost Connect(NvmeHostOptions? options = null, string nqn = Nqn)
        => NvmeHost.Connect(Endpoint, nqn, options ?? new NvmeHostOptions());

    public void Dispose()
    {
        Host.Dispose();
        _loggerFactory.Dispose();
        DeleteRpcDir();
    }
}

/// <summary>Collects log lines so tests can assert on them (and print them on failure).</summary>
public sealed class StringWriterLoggerProvider : ILoggerProvider
{
    private readonly List<string> _lines = [];

    public IReadOnlyList<string> Lines
    {
        get { lock (_lines) return [.. _lines]; }
    }

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose() { }

    private sealed class Logger(StringWriterLoggerProvider owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (owner._lines) owner._lines.Add($"{logLevel} {category}: {formatter(state, exception)} [{DateTime.UtcNow:HH:mm:ss.fff}]");
        }
    }
}
