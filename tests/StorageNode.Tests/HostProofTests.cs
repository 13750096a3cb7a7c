using System.Diagnostics;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Target;

namespace StorageNode.Tests;

/// <summary>
/// <see cref="Controller.ProveHostStillHere"/>: evidence that a host still uses an association, asked through its
/// Asynchronous Event Requests (the HA pair's owner asks it of associations made while the host relayed; docs/ha.md).
/// </summary>
public class HostProofTests : IDisposable
{
    private readonly TestNode _node = new();

    public void Dispose() => _node.Dispose();

    private Controller ControllerOf(NvmeHost h)
        => _node.Node.Target.FindSubsystem(TestNode.Nqn)!.Controllers.Single(c => c.Cntlid == h.Cntlid);

    /// <summary>Asks, polling the host's admin queue (when given) until the answer or the limit; null: no answer.</summary>
    private static HostProof? Ask(Controller c, NvmeHost? poll, TimeSpan limit)
    {
        HostProof? result = null;
        c.ProveHostStillHere(r => result = r);
        var sw = Stopwatch.StartNew();
        while (result == null && sw.Elapsed < limit)
        {
            poll?.PollAdmin();
            Thread.Sleep(1);
        }
        return result;
    }

    private static int AnaNotices(NvmeHost h)
    {
        int n = 0;
        while (h.TryGetEvent(out uint dw0))
            if ((byte)(dw0 >> 8) == AsyncEvent.NoticeAnaChange && AsyncEvent.LogPageOf(dw0) == LogPageId.Ana) n++;
        return n;
    }

    [Fact]
    public void AHostKeepingOneRequestLikeLinuxAnswersAfterOneNotice()
    {
        Assert.Equal(1, Controller.MaxOutstandingAers); // AERL 0: a host may keep one, so the request after a notice answers
        using NvmeHost host = _node.Connect(new NvmeHostOptions { AsyncEvents = true });
        Assert.Equal(HostProof.Proven, Ask(ControllerOf(host), host, TimeSpan.FromSeconds(10)));
        Assert.Equal(1, AnaNotices(host));
    }

    [Fact]
    public void AHostThatNeverReadsTheAnaLogIsAskedDespiteTheMask()
    {
        // Linux without native multipath enables ANA notices and sends its request again, but never reads the ANA log:
        // after one notice that log's events are masked. A second question still reaches it.
        using NvmeHost host = _node.Connect();
        host.EnableAsyncEvents(AsyncEvent.ConfigAnaChange);
        Controller c = ControllerOf(host);
        Assert.Equal(HostProof.Proven, Ask(c, host, TimeSpan.FromSeconds(10)));
        Assert.Equal(HostProof.Proven, Ask(c, host, TimeSpan.FromSeconds(10)));
        Assert.Equal(2, AnaNotices(host));
    }

    [Fact]
    public void AHostThatNoLongerTakesItsEventsNeverAnswersAndTheAssociationsEndSaysSo()
    {
        using NvmeHost host = _node.Connect(new NvmeHostOptions { AsyncEvents = true });
        host.StopKeepAlive(); // the host gives the association up: it takes no more events there
        Controller c = ControllerOf(host);
        HostProof? result = null;
        c.ProveHostStillHere(r => result = r);
        // The first notice completes its request; a host that gave the association up never sends another.
        Thread.Sleep(300);
        Assert.Null(result);
        c.Destroy("test: the association ends");
        var sw = Stopwatch.StartNew();
        while (result == null && sw.Elapsed < TimeSpan.FromSeconds(5)) Thread.Sleep(1);
        Assert.Equal(HostProof.Ended, result);
        // Asked after the end: answered at once.
        Assert.Equal(HostProof.Ended, Ask(c, null, TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void AHostWithoutAnaChangeNoticesCannotBeAsked()
    {
        using NvmeHost host = _node.Connect();
        host.EnableAsyncEvents(AsyncEvent.ConfigNamespaceAttribute);
        Assert.Equal(HostProof.CannotAsk, Ask(ControllerOf(host), host, TimeSpan.FromSeconds(5)));
    }
}
