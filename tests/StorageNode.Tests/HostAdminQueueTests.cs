using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;

namespace StorageNode.Tests;

/// <summary>The managed host's admin queue: one slot per outstanding command, answers matched to their command.</summary>
public class HostAdminQueueTests
{
    [Fact]
    public void ATimedOutAdminCommandEndsTheAssociationInsteadOfShiftingLaterAnswers()
    {
        using var node = new TestNode();
        using NvmeHost h = NvmeHost.Connect(node.Endpoint, TestNode.Nqn, new NvmeHostOptions
        {
            IoQueues = 0, KatoMs = 30_000, SendKeepAlive = false, CommandTimeout = TimeSpan.FromMilliseconds(300),
        });
        h.SetFeature(FeatureId.AsyncEventConfiguration, AsyncEvent.ConfigAnaChange);
        // An Asynchronous Event Request completes only when an event happens: it times out here.
        SubmissionQueueEntry aer = default;
        aer.Opcode = AdminOpcode.AsyncEventRequest;
        Assert.Throws<TimeoutException>(() => h.AdminCommand(aer, default, DataDirection.None));
        // The event comes later; its completion must not be taken for the answer to a later command.
        node.Node.Target.FindSubsystem(TestNode.Nqn)!.SetAnaState(1, AnaState.Change);
        Thread.Sleep(200);
        uint? kato = null;
        Exception? error = null;
        try { kato = h.GetFeature(FeatureId.KeepAliveTimer); }
        catch (Exception e) { error = e; }
        Assert.True(error is NvmeTransportException, $"after a timed-out command the association must be gone; got KATO answer {kato:X8} ({error?.Message})");
        Assert.True(h.AdminBroken);
    }

    [Fact]
    public void ConcurrentAdminCommandsEachGetTheirOwnAnswer()
    {
        using var node = new TestNode();
        using NvmeHost h = NvmeHost.Connect(node.Endpoint, TestNode.Nqn, new NvmeHostOptions { IoQueues = 0, KatoMs = 30_000, SendKeepAlive = false });
        // Several threads ask different questions at once; each must read its own answer.
        var threads = new Thread[4];
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        for (int t = 0; t < threads.Length; t++)
        {
            int id = t;
            threads[t] = new Thread(() =>
            {
                for (int i = 0; i < 200; i++)
                {
                    try
                    {
                        if (id % 2 == 0)
                        {
                            uint kato = h.GetFeature(FeatureId.KeepAliveTimer);
                            if (kato != 30_000) failures.Enqueue($"KATO answered {kato}");
                        }
                        else
                        {
                            byte[] idc = h.Identify(Cns.Controller, 0);
                            if (SpecText.ReadPadded(idc.AsSpan(4, 20)) != "SNTEST0001") failures.Enqueue("Identify answered something else");
                        }
                    }
                    catch (Exception e)
                    {
                        failures.Enqueue(e.Message);
                    }
                }
            });
            threads[t].Start();
        }
        foreach (Thread t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(60)));
        Assert.Empty(failures);
    }
}
