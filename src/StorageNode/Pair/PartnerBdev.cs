using StorageNode.Bdevs;
using StorageNode.Reactors;
using StorageNode.Target;

namespace StorageNode.Pair;

/// <summary>
/// A namespace whose data lives on the partner (the partner virtual adapter seen from the proxy side): it has the
/// geometry both nodes agreed on, and its channels take whole commands (<see cref="ICommandChannel"/>), which the
/// reactor's <see cref="ProxyQueue"/> relays.
/// </summary>
public sealed class PartnerBdev(string name, uint blockSize, ulong blockCount, InterconnectLink link) : Bdev(name, blockSize, blockCount)
{
    public InterconnectLink Link { get; } = link;

    public override bool TakesWholeCommands => true;

    public override BdevChannel CreateChannel(Reactor reactor) => new PartnerChannel(Link, reactor.Id);

    private sealed unsafe class PartnerChannel(InterconnectLink link, int reactorId) : BdevChannel, ICommandChannel
    {
        public void Submit(NvmfRequest req)
        {
            ProxyQueue? q = link.QueueFor(reactorId);
            if (q == null)
            {
                req.PendingOps = 1;
                req.OnBdevComplete(BdevResult.FromStatus(link.UnavailableStatus));
                return;
            }
            q.Relay(req);
        }

        private static NotSupportedException NotBlock() => new("a relayed namespace takes whole commands (ICommandChannel.Submit)");
        public override void Read(ulong offset, byte* buffer, uint length, IBdevCompletion completion) => throw NotBlock();
        public override void Write(ulong offset, byte* buffer, uint length, bool fua, IBdevCompletion completion) => throw NotBlock();
        public override void Flush(IBdevCompletion completion) => throw NotBlock();
        public override void WriteZeroes(ulong offset, ulong length, IBdevCompletion completion) => throw NotBlock();
        public override void Deallocate(ulong offset, ulong length, IBdevCompletion completion) => throw NotBlock();
    }
}
