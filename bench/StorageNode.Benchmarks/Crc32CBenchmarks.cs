using BenchmarkDotNet.Attributes;
using StorageNode.Nvme;

namespace StorageNode.Benchmarks;

/// <summary>CRC32C over the sizes NVMe/TCP digests cover: a PDU header, a 4 KiB block, a 128 KiB PDU.</summary>
[MemoryDiagnoser]
public class Crc32CBenchmarks
{
    private byte[] _data = [];

    [Params(24, 4096, 131072)]
    public int Size;

    [GlobalSetup]
    public void Setup()
    {
        _data = new byte[Size];
        new Random(1).NextBytes(_data);
    }

    [Benchmark]
    public uint Compute() => Crc32C.Compute(_data);
}
