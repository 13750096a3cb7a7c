using StorageNode.Interop;
using StorageNode.Rdma;

namespace StorageNode.Tests;

/// <summary>src/Rdma on this host, which has no RDMA device: it says so clearly and fails cleanly.</summary>
public class RdmaTests
{
    [Fact]
    public void VerbsLibraryLoadsAndReportsWhyRdmaIsUnavailable()
    {
        // build.ps1 builds libsnverbs wherever rdma-core is installed (it installs it).
        Assert.True(Verbs.IsAvailable, Verbs.UnavailableReason);
        if (RdmaDevices.List().Count > 0) return; // a machine with RDMA: nothing to report
        string? why = RdmaDevices.UnavailableReason();
        Assert.NotNull(why);
        Assert.Contains("no RDMA device", why);
    }

    [Fact]
    public void ConnectingWithoutADeviceFailsWithAClearError()
    {
        if (RdmaDevices.List().Count > 0) return;
        Exception e = Assert.ThrowsAny<Exception>(() => RdmaConnection.Connect("127.0.0.1", 4791, [], new RdmaConnectionOptions { Timeout = TimeSpan.FromSeconds(2) }));
        Assert.True(e is RdmaException or TimeoutException, e.ToString());
        Assert.Equal(0, RdmaHandle.Live);
    }
}
