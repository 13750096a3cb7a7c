using Microsoft.Extensions.Logging;
using StorageNode.Config;
using StorageNode.Control;

namespace StorageNode.Hosting;

/// <summary>
/// A node with what serves it to its operators: the management RPC (when <c>Control:RpcSocket</c> is set) and the
/// metrics (meter <c>StorageNode</c>). What <c>storagenode</c> runs and what tests start; the node knows neither.
/// </summary>
public sealed class NodeHost(Node node) : IDisposable
{
    private bool _started, _disposed;

    public Node Node { get; } = node;
    /// <summary>The management RPC server (null unless <c>Control:RpcSocket</c> is set, or before <see cref="Start()"/>).</summary>
    public RpcServer? Rpc { get; private set; }
    /// <summary>The node's metrics (null before <see cref="Start()"/>).</summary>
    public NodeMetrics? Metrics { get; private set; }

    /// <summary>Builds the node from <paramref name="config"/> and starts it (<see cref="Start()"/>).</summary>
    public static NodeHost Start(NodeConfig config, ILoggerFactory loggerFactory)
    {
        var host = new NodeHost(new Node(config, loggerFactory));
        host.Start();
        return host;
    }

    /// <summary>
    /// Starts the node. The management socket comes first: a path in use stops the node before anything else runs; calls
    /// are answered once the node runs (a restarted node's status shows its mirrors from the first call). Whatever
    /// fails, nothing is left running and the failure is what this throws. Once only.
    /// </summary>
    public void Start()
    {
        if (_started) throw new InvalidOperationException("node host already started");
        _started = true;
        try
        {
            // A configuration this machine cannot run is refused as such before anything binds (Node.Start checks it too).
            if (Node.UnavailableTransport(Node.Config) is { } unavailable) throw unavailable;
            if (!string.IsNullOrEmpty(Node.Config.RpcSocket))
                Rpc = new RpcServer(Node.Config.RpcSocket, NodeRpc.Methods(Node), Node.LoggerFactory.CreateLogger("rpc"));
            Metrics = new NodeMetrics(Node);
            Node.Start();
            Rpc?.Serve();
        }
        catch (Exception startFailed)
        {
            try
            {
                Dispose();
            }
            catch (Exception cleanup)
            {
                // What stopped the start is what the caller must see; the cleanup's own failure is logged.
                Node.LoggerFactory.CreateLogger("node").LogWarning(cleanup, "stopping after a failed start ({Why}) failed too", startFailed.Message);
            }
            throw;
        }
    }

    /// <summary>Stops serving operators, then the node. A second call does nothing more.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Metrics?.Dispose();
        Rpc?.Dispose();
        Node.Dispose();
    }
}
