using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using StorageNode.Config;

namespace StorageNode.Control;

/// <summary>A JSON-RPC error: <see cref="Code"/> is the JSON-RPC 2.0 code (-32602 invalid params, ...).</summary>
public sealed class RpcException(int code, string message) : Exception(message)
{
    public const int ParseError = -32700;
    public const int InvalidRequest = -32600;
    public const int MethodNotFound = -32601;
    public const int InvalidParams = -32602;
    public const int InternalError = -32603;
    /// <summary>The request was well formed but names something that does not exist (SPDK uses -19, ENODEV).</summary>
    public const int NoSuchDevice = -19;
    /// <summary>The thing is in use or the change conflicts with what is there (SPDK's -EBUSY / -EEXIST sense).</summary>
    public const int Busy = -16;
    /// <summary>Not allowed on this node or subsystem (SPDK's -EPERM): e.g. changing a paired subsystem's namespaces.</summary>
    public const int NotPermitted = -1;

    public int Code { get; } = code;
}

/// <summary>
/// The management interface: JSON-RPC 2.0 over a Unix stream socket (SPDK's convention: a client writes one
/// request object, or a batch array, and reads the response; several requests may follow on one connection,
/// with or without newlines between them). Control plane only: its threads never touch a reactor's data; the
/// methods read the node through thread-safe views. Bad input gets a JSON-RPC error and never takes the node
/// down; a request that is not JSON, or one larger than <see cref="MaxRequestBytes"/>, ends its connection
/// after the error (the stream cannot be resynchronised).
/// </summary>
public sealed class RpcServer : IDisposable
{
    public const int MaxRequestBytes = 1 << 20;
    private const int MaxConnections = 32;

    private readonly Socket _listener;
    private readonly string _path;
    private readonly IReadOnlyDictionary<string, Func<JsonObject?, JsonNode?>> _methods;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private Task? _accepting;
    private int _connections;

    public string Path => _path;

    /// <summary>
    /// Binds <paramref name="path"/> (a stale socket file nobody listens on is replaced); calls are answered from
    /// <see cref="Serve"/> on (a client that connects sooner waits in the listen queue).
    /// </summary>
    public RpcServer(string path, IReadOnlyDictionary<string, Func<JsonObject?, JsonNode?>> methods, ILogger log)
    {
        _path = path;
        _methods = methods;
        _log = log;
        RemoveStaleSocket(path);
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            _listener.Bind(new UnixDomainSocketEndPoint(path));
            _listener.Listen(16);
        }
        catch (SocketException e)
        {
            _listener.Dispose();
            throw new ConfigException("Control:RpcSocket", $"cannot listen on {path}: {e.Message}");
        }
        _log.LogInformation("management RPC (JSON-RPC 2.0) listening on {Path}", path);
    }

    /// <summary>Starts answering calls (the node calls it once it has started: what a call reads is the started node).</summary>
    public void Serve() => _accepting ??= Task.Run(AcceptLoop);

    private static void RemoveStaleSocket(string path)
    {
        if (Directory.Exists(path)) throw new ConfigException("Control:RpcSocket", $"{path} is a directory");
        if (!File.Exists(path)) return;
        if (IsRegularFile(path)) throw new ConfigException("Control:RpcSocket", $"{path} exists and is not a socket");
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException)
        {
            File.Delete(path); // left behind by a node that did not stop cleanly: nobody listens on it
            return;
        }
        throw new ConfigException("Control:RpcSocket", $"{path} is in use (another process listens on it)");
    }

    /// <summary>A regular file opens for reading; a socket does not (ENXIO).</summary>
    private static bool IsRegularFile(string path)
    {
        try
        {
            using FileStream f = File.OpenRead(path);
            return true;
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return true;
        }
    }

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket s;
            try
            {
                s = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                _log.LogWarning("management RPC: accept failed: {Error}", e.Message);
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }
            if (Interlocked.Increment(ref _connections) > MaxConnections)
            {
                Interlocked.Decrement(ref _connections);
                await SendAndClose(s, Error(null, RpcException.InternalError, $"too many management connections (at most {MaxConnections})")).ConfigureAwait(false);
                continue;
            }
            _ = Task.Run(async () =>
            {
                try
                {
                    await Serve(s).ConfigureAwait(false);
                }
                finally
                {
                    Interlocked.Decrement(ref _connections);
                    s.Dispose();
                }
            });
        }
    }

    private static async Task SendAndClose(Socket s, JsonNode response)
    {
        try
        {
            await s.SendAsync(Encode(response), SocketFlags.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        s.Dispose();
    }

    private async Task Serve(Socket s)
    {
        var buf = new byte[64 * 1024];
        int have = 0;
        while (!_stop.IsCancellationRequested)
        {
            // Answer every complete request already buffered.
            while (have > 0)
            {
                int len = CompleteValueLength(buf.AsSpan(0, have), out bool invalid);
                if (invalid)
                {
                    await TrySend(s, Error(null, RpcException.ParseError, "parse error: the request is not JSON")).ConfigureAwait(false);
                    return;
                }
                if (len == 0) break;
                JsonNode? response = Handle(buf.AsMemory(0, len));
                if (response != null && !await TrySend(s, response).ConfigureAwait(false)) return;
                Buffer.BlockCopy(buf, len, buf, 0, have - len);
                have -= len;
                have -= SkipWhitespace(buf, have);
            }
            if (have == buf.Length)
            {
                if (buf.Length >= MaxRequestBytes)
                {
                    await TrySend(s, Error(null, RpcException.InvalidRequest, $"request larger than {MaxRequestBytes} bytes")).ConfigureAwait(false);
                    return;
                }
                Array.Resize(ref buf, Math.Min(buf.Length * 2, MaxRequestBytes));
            }
            int n;
            try
            {
                n = await s.ReceiveAsync(buf.AsMemory(have), SocketFlags.None, _stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            if (n == 0) return;
            have += n;
            have -= SkipWhitespace(buf, have);
        }
    }

    private static int SkipWhitespace(byte[] buf, int have)
    {
        int i = 0;
        while (i < have && buf[i] is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t') i++;
        if (i > 0) Buffer.BlockCopy(buf, i, buf, 0, have - i);
        return i;
    }

    private async Task<bool> TrySend(Socket s, JsonNode response)
    {
        try
        {
            byte[] bytes = Encode(response);
            int sent = 0;
            while (sent < bytes.Length)
                sent += await s.SendAsync(bytes.AsMemory(sent), SocketFlags.None, _stop.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            return false;
        }
    }

    private static byte[] Encode(JsonNode response) => Encoding.UTF8.GetBytes(response.ToJsonString() + "\n");

    /// <summary>
    /// The length of the first complete JSON value in <paramref name="data"/> (an object or an array), 0 when
    /// more bytes are needed; <paramref name="invalid"/> when the bytes cannot be JSON.
    /// </summary>
    public static int CompleteValueLength(ReadOnlySpan<byte> data, out bool invalid)
    {
        invalid = false;
        var reader = new Utf8JsonReader(data, isFinalBlock: false, state: default);
        try
        {
            if (!reader.Read()) return 0;
            if (reader.TokenType is not (JsonTokenType.StartObject or JsonTokenType.StartArray))
            {
                invalid = true;
                return 0;
            }
            if (!reader.TrySkip()) return 0;
            return (int)reader.BytesConsumed;
        }
        catch (JsonException)
        {
            invalid = true;
            return 0;
        }
    }

    /// <summary>Answers one request or batch (null: only notifications, nothing to send). Never throws.</summary>
    public JsonNode? Handle(ReadOnlyMemory<byte> request)
    {
        JsonNode? parsed;
        try
        {
            parsed = JsonNode.Parse(request.Span);
        }
        catch (JsonException e)
        {
            return Error(null, RpcException.ParseError, $"parse error: {e.Message}");
        }
        if (parsed is JsonArray batch)
        {
            if (batch.Count == 0) return Error(null, RpcException.InvalidRequest, "empty batch");
            var answers = new JsonArray();
            foreach (JsonNode? item in batch)
            {
                JsonNode? a = HandleOne(item);
                if (a != null) answers.Add(a);
            }
            return answers.Count > 0 ? answers : null;
        }
        return HandleOne(parsed);
    }

    private JsonNode? HandleOne(JsonNode? node)
    {
        if (node is not JsonObject req) return Error(null, RpcException.InvalidRequest, "a request is a JSON object");
        JsonNode? id = req["id"]?.DeepClone();
        bool notification = !req.ContainsKey("id");
        if (id != null && id.GetValueKind() is not (JsonValueKind.Number or JsonValueKind.String))
            return Error(null, RpcException.InvalidRequest, "id must be a number, a string or null");
        if (req["jsonrpc"] is not JsonValue v || v.GetValueKind() != JsonValueKind.String || v.GetValue<string>() != "2.0")
            return Error(id, RpcException.InvalidRequest, "\"jsonrpc\": \"2.0\" is required");
        if (req["method"] is not JsonValue m || m.GetValueKind() != JsonValueKind.String)
            return Error(id, RpcException.InvalidRequest, "method must be a string");
        string method = m.GetValue<string>();
        JsonNode? p = req["params"];
        if (p != null && p is not JsonObject)
            return Error(id, RpcException.InvalidParams, "params must be an object (named parameters)");
        if (!_methods.TryGetValue(method, out Func<JsonObject?, JsonNode?>? f))
            return notification ? null : Error(id, RpcException.MethodNotFound, $"method '{method}' not found (rpc_get_methods lists them)");
        JsonNode? result;
        try
        {
            result = f((JsonObject?)p);
        }
        catch (RpcException e)
        {
            return notification ? null : Error(id, e.Code, e.Message);
        }
        catch (Exception e)
        {
            _log.LogWarning(e, "management RPC: {Method} failed", method);
            return notification ? null : Error(id, RpcException.InternalError, $"{method} failed: {e.Message}");
        }
        if (notification) return null;
        return new JsonObject { ["jsonrpc"] = "2.0", ["id"] = id, ["result"] = result ?? JsonValue.Create(true) };
    }

    private static JsonObject Error(JsonNode? id, int code, string message) => new()
    {
        ["jsonrpc"] = "2.0",
        ["id"] = id,
        ["error"] = new JsonObject { ["code"] = code, ["message"] = message },
    };

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        try
        {
            _accepting?.Wait(TimeSpan.FromSeconds(2));
        }
        catch (AggregateException)
        {
        }
        try
        {
            File.Delete(_path);
        }
        catch (IOException)
        {
        }
        _stop.Dispose();
    }
}
