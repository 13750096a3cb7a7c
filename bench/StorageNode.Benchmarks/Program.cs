using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Perfolizer.Horology;

// `--alloc-check`: every suite once with a short in-process job and MemoryDiagnoser; exits 1 when any
// benchmark (a hot path: PDU encode/decode, CRC32C, QD1 round trips direct and proxied) allocates.
// MemoryDiagnoser counts the whole process, so the in-process nodes' timers (heartbeats, keep-alive checks)
// show up as ~1 B per operation; an object per operation is at least 24 B. The check fails from 8 B per
// operation (one object every three I/Os). The exact per-I/O check on the reactor threads is AllocationTests.
// Anything else goes to BenchmarkDotNet's switcher (`--filter '*'`, `--job short`, ...).
if (args.Length > 0 && args[0] == "--alloc-check")
{
    IConfig config = ManualConfig.CreateMinimumViable()
        .AddDiagnoser(MemoryDiagnoser.Default)
        .AddJob(Job.Default
            .WithToolchain(InProcessEmitToolchain.Instance)
            .WithLaunchCount(1).WithWarmupCount(2).WithIterationCount(3)
            .WithIterationTime(TimeInterval.FromMilliseconds(100))
            .WithId("alloc-check"))
        .WithOptions(ConfigOptions.DisableOptimizationsValidator);
    Summary[] summaries = BenchmarkSwitcher.FromAssembly(typeof(StorageNode.Benchmarks.Crc32CBenchmarks).Assembly)
        .Run(args[1..].Contains("--filter") ? args[1..] : ["--filter", "*", .. args[1..]], config).ToArray();
    const long Threshold = 8;
    int failed = 0, checkedCount = 0;
    foreach (Summary s in summaries)
    {
        foreach (BenchmarkReport r in s.Reports)
        {
            checkedCount++;
            long? bytes = r.GcStats.GetBytesAllocatedPerOperation(r.BenchmarkCase);
            string name = r.BenchmarkCase.Descriptor.DisplayInfo + (r.BenchmarkCase.HasParameters ? $" [{r.BenchmarkCase.Parameters.PrintInfo}]" : "");
            if (!r.Success || bytes is null)
            {
                failed++;
                Console.WriteLine($"ALLOC-CHECK FAIL {name}: the benchmark did not run");
            }
            else if (bytes >= Threshold)
            {
                failed++;
                Console.WriteLine($"ALLOC-CHECK FAIL {name}: {bytes} B allocated per operation");
            }
            else
            {
                Console.WriteLine($"ALLOC-CHECK ok {name}: {bytes} B per operation (background included)");
            }
        }
    }
    if (checkedCount == 0) { Console.WriteLine("ALLOC-CHECK FAIL: no benchmark ran"); return 1; }
    Console.WriteLine($"ALLOC-CHECK: {checkedCount - failed} of {checkedCount} benchmarks allocate less than {Threshold} B per operation");
    return failed == 0 ? 0 : 1;
}

// `--all` is `--filter *` for callers whose shell would expand the `*` (PowerShell on Linux globs native arguments).
BenchmarkSwitcher.FromAssembly(typeof(StorageNode.Benchmarks.Crc32CBenchmarks).Assembly)
    .Run(args.SelectMany(a => a == "--all" ? new[] { "--filter", "*" } : [a]).ToArray());
return 0;
