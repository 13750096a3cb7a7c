using BenchmarkDotNet.Running;

BenchmarkSwitcher.FromAssembly(typeof(StorageNode.Benchmarks.Crc32CBenchmarks).Assembly).Run(args);
