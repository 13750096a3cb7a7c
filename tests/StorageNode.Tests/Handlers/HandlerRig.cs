using System.Net;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging.Abstractions;
using StorageNode.Bdevs;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;
using StorageNode.Target;

namespace StorageNode.Tests.Handlers;

/// <summary>A transport that is only a description: what the target takes from a transport (TRTYPE, SGL bits, TSAS).</summary>
internal sealed class StubTransport(byte trType, uint sglSupport) : INvmfTransport
{
    public const byte TsasMark = 0x5A;

    public string Name => "stub";
    public byte TrType => trType;
    public uint SglSupport => sglSupport;
    public void WriteTsas(Span<byte> tsas) => tsas[0] = TsasMark;
    public IPEndPoint Listen(ListenAddress address) => throw new NotSupportedException("a stub transport has no wire");
    public void Dispose()
    {
    }
}

/// <summary>
/// A queue pair with no transport under it, as SPDK's <c>ctrlr_ut.c</c> tests its handlers: a test puts a command in a
/// slot and the dispatcher runs it as a transport would (<see cref="CommandDispatcher.Prepare"/>, the host's data into
/// a buffer, <see cref="CommandDispatcher.Execute"/>); the completion lands here, on the test's thread (RAM bdevs and
/// the admin and Fabrics handlers used here complete inline).
/// </summary>
internal sealed unsafe class StubQueuePair : QueuePair
{
    private readonly NvmfRequest _request;
    private bool _completed;
    private CompletionQueueEntry _cqe;

    public StubQueuePair(Reactor reactor, NvmfTarget target, ListenerInfo listener) : base(reactor, target, listener)
        => _request = new NvmfRequest(this, 0);

    public override uint InCapsuleDataSize => 8192;
    public override string PeerAddress => "stub";
    public override bool IsClosed => false;
    public override int Fd => -1;
    public override int OnReady(uint events) => 0;
    public override int Flush() => 0;
    public override void Disconnect(string reason)
    {
    }

    public override void Close(string reason)
    {
    }

    internal override bool TryAbort(ushort cid) => false;

    public override void CompleteRequest(NvmfRequest req)
    {
        _cqe = req.Cqe;
        _completed = true;
    }

    /// <summary>
    /// Runs one command with <paramref name="data"/> as its host buffer (its SGL length is the buffer's): copied to the
    /// controller before it runs, or filled from it after. The completion, which must have come before this returns.
    /// </summary>
    public CompletionQueueEntry Run(SubmissionQueueEntry sqe, Span<byte> data = default)
    {
        NvmfRequest req = _request;
        req.Reset();
        req.Sqe = sqe;
        req.Sqe.Flags |= CommandFlags.PsdtSgl;
        req.State = RequestState.Executing;
        _completed = false;
        byte* buffer = null;
        try
        {
            if (CommandDispatcher.Prepare(req, (uint)data.Length))
            {
                if (data.Length > 0)
                {
                    buffer = (byte*)NativeMemory.AlignedAlloc((nuint)data.Length, 4096);
                    data.CopyTo(new Span<byte>(buffer, data.Length));
                    req.Data = buffer;
                }
                CommandDispatcher.Execute(req);
            }
            else
            {
                req.Complete();
            }
            if (!_completed) throw new InvalidOperationException($"opcode {sqe.Opcode:X2} did not complete inline");
            if (req.Direction == DataDirection.ControllerToHost && buffer != null) new Span<byte>(buffer, data.Length).CopyTo(data);
            return _cqe;
        }
        finally
        {
            if (buffer != null) NativeMemory.AlignedFree(buffer);
        }
    }
}

/// <summary>
/// One subsystem with one RAM namespace (NSID 1, 2048 blocks of 512 bytes) on a target whose reactor never runs, a
/// listener on a <see cref="StubTransport"/>, and an admin and an I/O <see cref="StubQueuePair"/> of one host.
/// </summary>
internal sealed unsafe class HandlerRig : IDisposable
{
    public const string Nqn = "nqn.2026-12.io.storagenode:handlers";
    public const uint Blocks = 2048;

    public Reactor Reactor { get; }
    public NvmfTarget Target { get; }
    public MallocBdev Bdev { get; }
    public StubTransport Transport { get; }
    public ListenerInfo Listener { get; }
    public StubQueuePair Admin { get; }
    public StubQueuePair Io { get; }
    public Guid HostId { get; } = Guid.NewGuid();
    public string HostNqn { get; } = $"nqn.2014-08.org.nvmexpress:uuid:{Guid.NewGuid()}";

    public HandlerRig(byte trType = Discovery.TrTypeRdma, uint sglSupport = IdentifyControllerBits.SglsKeyed)
    {
        Reactor = new Reactor(0, "handlers", PollMode.Interrupt, TimeSpan.Zero,
            new PoolOptions { SmallBufferCount = 16, MediumBufferCount = 1, LargeBufferCount = 1 }, NullLogger.Instance);
        Target = new NvmfTarget("handlers", new TargetOptions(), [Reactor], NullLoggerFactory.Instance);
        Bdev = new MallocBdev("m", 512, Blocks);
        var s = new Subsystem(Nqn, SubsystemKind.Nvm, "SNHANDLERS", "StorageNode handlers", "1.0", 1, 0xFFEF, 32, allowAnyHost: true);
        byte[] nguid = Enumerable.Range(1, 16).Select(i => (byte)i).ToArray();
        s.AddNamespace(new Namespace(1, Bdev, nguid, Guid.NewGuid(), 1));
        Target.AddSubsystem(s);
        Transport = new StubTransport(trType, sglSupport);
        Listener = new ListenerInfo(Transport, "127.0.0.1", 4420, 1);
        Target.AddListener(Listener);
        Admin = new StubQueuePair(Reactor, Target, Listener);
        Io = new StubQueuePair(Reactor, Target, Listener);
    }

    /// <summary>Connects the admin queue to <paramref name="nqn"/>, enables the controller, connects the I/O queue (QID 1).</summary>
    public void Connect(string nqn = Nqn, bool enable = true, bool io = true)
    {
        ushort cntlid = (ushort)Check("Connect", Admin.Run(ConnectSqe(0, 31), ConnectData(nqn, 0xFFFF))).Dw0;
        if (enable)
        {
            PropertyCommand p = default;
            p.Opcode = AdminOpcode.FabricsCommand;
            p.FabricsType = FabricsCommandType.PropertySet;
            p.Offset = Property.Cc;
            p.Value = CcRegister.Make(true);
            Check("Property Set CC.EN", Admin.Run(Unsafe.As<PropertyCommand, SubmissionQueueEntry>(ref p)));
        }
        if (io) Check("I/O queue Connect", Io.Run(ConnectSqe(1, 31), ConnectData(nqn, cntlid)));
    }

    private static CompletionQueueEntry Check(string what, CompletionQueueEntry cqe)
        => cqe.StatusField.IsSuccess ? cqe : throw new InvalidOperationException($"{what}: {cqe.StatusField}");

    private static SubmissionQueueEntry ConnectSqe(ushort qid, ushort sqsize) => RawClient.ConnectSqe(0, qid, sqsize, inCapsule: true);

    private byte[] ConnectData(string nqn, ushort cntlid) => RawClient.Bytes(Nvme.Spec.ConnectData.For(HostId, cntlid, nqn, HostNqn));

    public void Dispose()
    {
        Target.Dispose();
        Reactor.Dispose();
        Bdev.Dispose();
    }
}
