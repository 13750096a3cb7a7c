using System.Text;
using StorageNode.Nvme;

namespace StorageNode.Nvme.Tests;

public class Crc32CTests
{
    private static uint Reference(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F63B78 : crc >> 1;
        }
        return crc ^ 0xFFFFFFFF;
    }

    [Fact]
    public void KnownVectors()
    {
        Assert.Equal(0xE3069283u, Crc32C.Compute(Encoding.ASCII.GetBytes("123456789")));
        Assert.Equal(0u, Crc32C.Compute([]));
        // RFC 3720 B.4: 32 bytes of zeroes and of 0xFF.
        Assert.Equal(0x8A9136AAu, Crc32C.Compute(new byte[32]));
        Assert.Equal(0x62A8AB43u, Crc32C.Compute(Enumerable.Repeat((byte)0xFF, 32).ToArray()));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(8)]
    [InlineData(1535)]
    [InlineData(1536)]
    [InlineData(1537)]
    [InlineData(4096)]
    [InlineData(4100)]
    [InlineData(131072)]
    [InlineData(1048576 + 13)]
    public void MatchesBitwiseReference(int length)
    {
        var data = new byte[length];
        new Random(length).NextBytes(data);
        Assert.Equal(Reference(data), Crc32C.Compute(data));
    }

    [Fact]
    public void IncrementalEqualsOneShot()
    {
        var data = new byte[10000];
        new Random(3).NextBytes(data);
        uint crc = Crc32C.Seed;
        crc = Crc32C.Update(crc, data.AsSpan(0, 1));
        crc = Crc32C.Update(crc, data.AsSpan(1, 4000));
        crc = Crc32C.Update(crc, data.AsSpan(4001));
        Assert.Equal(Crc32C.Compute(data), Crc32C.Finish(crc));
    }
}
