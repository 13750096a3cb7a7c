using StorageNode.Nvme.Host;

namespace StorageNode.Tests;

public class SmokeTests
{
    [Fact]
    public void WriteThenReadBack()
    {
        using var node = new TestNode();
        using NvmeHost host = node.Connect();
        IoQueue q = host.IoQueues[0];
        var data = new byte[4096];
        new Random(1).NextBytes(data);
        Assert.True(q.Write(1, 8, 8, data).IsSuccess);
        var back = new byte[4096];
        Assert.True(q.Read(1, 8, 8, back).IsSuccess);
        Assert.Equal(data, back);
    }
}
