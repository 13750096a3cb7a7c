using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace StorageNode.Control;

/// <summary>A JSON-RPC 2.0 client for a node's management socket, and the <c>storagenode rpc</c> command line.</summary>
public sealed class RpcClient : IDisposable
{
    public const string DefaultSocket = "/var/tmp/storagenode.sock";
    private readonly Socket _socket;
    private readonly TimeSpan _timeout;
    private int _nextId = 1;
    private byte[] _buf = new byte[64 * 1024];
    private int _have;

    public RpcClient(string path, TimeSpan? timeout = null)
    {
        _timeout = timeout ?? TimeSpan.FromSeconds(30);
        _socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            _socket.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch
        {
            _socket.Dispose();
            throw;
        }
        _socket.ReceiveTimeout = (int)_timeout.TotalMilliseconds;
        _socket.SendTimeout = (int)_timeout.TotalMilliseconds;
    }

    /// <summary>Calls <paramref name="method"/>; returns the result, throws <see cref="RpcException"/> for an error response.</summary>
    public JsonNode? Call(string method, JsonObject? parameters = null)
    {
        int id = _nextId++;
        var req = new JsonObject { ["jsonrpc"] = "2.0", ["id"] = id, ["method"] = method };
        if (parameters != null) req["params"] = parameters;
        JsonObject resp = SendRaw(Encoding.UTF8.GetBytes(req.ToJsonString())) as JsonObject
            ?? throw new InvalidDataException("the response is not a JSON object");
        if (resp["error"] is JsonObject e)
            throw new RpcException(e["code"]?.GetValue<int>() ?? RpcException.InternalError, e["message"]?.GetValue<string>() ?? "(no message)");
        if (resp["id"]?.GetValue<int>() != id) throw new InvalidDataException($"response for id {resp["id"]?.ToJsonString()}, expected {id}");
        return resp["result"];
    }

    /// <summary>Sends bytes as they are and reads one JSON value back (tests of the server's handling of bad input).</summary>
    public JsonNode? SendRaw(ReadOnlySpan<byte> request)
    {
        _socket.Send(request);
        return ReadOne();
    }

    /// <summary>Reads one JSON value; null when the server closed the connection first.</summary>
    public JsonNode? ReadOne()
    {
        while (true)
        {
            int skip = 0;
            while (skip < _have && _buf[skip] is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t') skip++;
            if (skip > 0)
            {
                Buffer.BlockCopy(_buf, skip, _buf, 0, _have - skip);
                _have -= skip;
            }
            int len = RpcServer.CompleteValueLength(_buf.AsSpan(0, _have), out bool invalid);
            if (invalid) throw new InvalidDataException("the server sent something that is not JSON");
            if (len > 0)
            {
                JsonNode? n = JsonNode.Parse(_buf.AsSpan(0, len));
                Buffer.BlockCopy(_buf, len, _buf, 0, _have - len);
                _have -= len;
                return n;
            }
            if (_have == _buf.Length) Array.Resize(ref _buf, _buf.Length * 2);
            int got = _socket.Receive(_buf, _have, _buf.Length - _have, SocketFlags.None);
            if (got == 0) return null;
            _have += got;
        }
    }

    public void Dispose() => _socket.Dispose();

    /// <summary>
    /// <c>storagenode rpc [-s SOCKET] [-t SECONDS] METHOD [PARAMS]</c>: PARAMS is one JSON object, or NAME=VALUE
    /// pairs (VALUE read as JSON when it is JSON, else as a string). Prints the result as indented JSON.
    /// Exit codes: 0 done, 1 the node answered with an error, 2 bad usage or no node on the socket.
    /// </summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        string socket = Environment.GetEnvironmentVariable("SN_RPC_SOCKET") is { Length: > 0 } env ? env : DefaultSocket;
        double seconds = 30;
        int i = 0;
        for (; i < args.Length; i++)
        {
            if (args[i] is "-s" or "--socket" && i + 1 < args.Length) socket = args[++i];
            else if (args[i] is "-t" or "--timeout" && i + 1 < args.Length)
            {
                if (!double.TryParse(args[++i], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out seconds) || seconds <= 0)
                {
                    stderr.WriteLine($"storagenode rpc: --timeout wants a number of seconds, not '{args[i]}'");
                    return 2;
                }
            }
            else if (args[i] is "-h" or "--help")
            {
                stdout.WriteLine("usage: storagenode rpc [-s SOCKET] [-t SECONDS] METHOD [PARAMS_JSON | NAME=VALUE ...]");
                stdout.WriteLine($"  SOCKET: the node's Control:RpcSocket (default $SN_RPC_SOCKET, else {DefaultSocket})");
                stdout.WriteLine("  'storagenode rpc rpc_get_methods' lists the methods; docs/management.md describes them.");
                return 0;
            }
            else if (args[i].StartsWith('-') && args[i] != "-")
            {
                stderr.WriteLine($"storagenode rpc: unknown option '{args[i]}' (--help)");
                return 2;
            }
            else break;
        }
        if (i >= args.Length)
        {
            stderr.WriteLine("storagenode rpc: no METHOD (--help)");
            return 2;
        }
        string method = args[i++];
        JsonObject? parameters = null;
        try
        {
            parameters = ParseParams(args.AsSpan(i));
        }
        catch (FormatException e)
        {
            stderr.WriteLine($"storagenode rpc: {e.Message}");
            return 2;
        }
        try
        {
            using var client = new RpcClient(socket, TimeSpan.FromSeconds(seconds));
            JsonNode? result = client.Call(method, parameters);
            stdout.WriteLine(result?.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) ?? "null");
            return 0;
        }
        catch (RpcException e)
        {
            stderr.WriteLine($"storagenode rpc: {method}: error {e.Code}: {e.Message}");
            return 1;
        }
        catch (SocketException e)
        {
            stderr.WriteLine($"storagenode rpc: cannot reach a node on {socket}: {e.Message}");
            return 2;
        }
        catch (InvalidDataException e)
        {
            stderr.WriteLine($"storagenode rpc: bad response from {socket}: {e.Message}");
            return 2;
        }
    }

    private static JsonObject? ParseParams(ReadOnlySpan<string> rest)
    {
        if (rest.IsEmpty) return null;
        if (rest.Length == 1 && rest[0].TrimStart().StartsWith('{'))
        {
            try
            {
                return JsonNode.Parse(rest[0]) as JsonObject ?? throw new FormatException("PARAMS must be a JSON object");
            }
            catch (JsonException e)
            {
                throw new FormatException($"PARAMS is not valid JSON: {e.Message}");
            }
        }
        var o = new JsonObject();
        foreach (string a in rest)
        {
            int eq = a.IndexOf('=');
            if (eq <= 0) throw new FormatException($"'{a}' is not NAME=VALUE (or pass one JSON object)");
            string name = a[..eq], value = a[(eq + 1)..];
            JsonNode? v;
            try
            {
                v = JsonNode.Parse(value);
            }
            catch (JsonException)
            {
                v = JsonValue.Create(value);
            }
            o[name] = v;
        }
        return o;
    }
}
