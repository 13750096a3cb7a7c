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
// allocate into every operation as long as it takes (on a loaded machine, 10 B per proxied read): a suite with nodes
// has a Background benchmark (time passing, no I/O) whose rate is subtracted in proportion to each benchmark's mean
// time. An object per operation is at least 24 B; the check fails from 8 B per operation (one object every three
// I/Os) in suites without nodes, and from 24 B (an object per I/O) in suites with them: their background, measured at
// another moment than the I/O, differs from it by more than 8 B per operation on a loaded machine (a fresh-clone CI
// run with other work beside it: 17.3 B measured, 8.4 B of it subtracted as the background, on a mirrored write that
// allocates nothing on its reactors). The exact per-I/O check on the reactor threads (0 B: direct, relayed and
// mirrored I/O) is AllocationTests.
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
    const long Threshold = 8, ThresholdWithNodes = 24;
    int failed = 0, checkedCount = 0;
    foreach (Summary s in summaries)
    {
        // A suite with in-process nodes has a Background benchmark (no I/O, just time passing): what the nodes' timers
        // allocate per nanosecond, subtracted from the others as their mean time says (measured in the same run).
        BenchmarkReport? bg = s.Reports.FirstOrDefault(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name == "Background");
        double bgPerNs = 0;
        if (bg is { Success: true, ResultStatistics.Mean: > 0 } && bg.GcStats.TotalOperations > 0)
        {
            bgPerNs = (bg.GcStats.GetTotalAllocatedBytes(false) ?? 0) / (double)bg.GcStats.TotalOperations / bg.ResultStatistics!.Mean;
            Console.WriteLine($"ALLOC-CHECK background of {s.Reports[0].BenchmarkCase.Descriptor.Type.Name}: {bgPerNs * 1e9:0} B/s (subtracted below)");
        }
        foreach (BenchmarkReport r in s.Reports)
        {
            if (r == bg) continue;
            checkedCount++;
            string name = r.BenchmarkCase.Descriptor.DisplayInfo + (r.BenchmarkCase.HasParameters ? $" [{r.BenchmarkCase.Parameters.PrintInfo}]" : "");
            if (!r.Success || r.GcStats.TotalOperations == 0 || r.ResultStatistics == null)
            {
                failed++;
                Console.WriteLine($"ALLOC-CHECK FAIL {name}: the benchmark did not run");
                continue;
            }
            double all = (r.GcStats.GetTotalAllocatedBytes(false) ?? 0) / (double)r.GcStats.TotalOperations;
            double background = bgPerNs * r.ResultStatistics.Mean;
            double bytes = Math.Max(0, all - background);
            if (bytes >= (bg != null ? ThresholdWithNodes : Threshold))
            {
                failed++;
                Console.WriteLine($"ALLOC-CHECK FAIL {name}: {bytes:0.0} B allocated per operation ({all:0.0} B, {background:0.0} B of it the background)");
            }
            else
            {
                Console.WriteLine($"ALLOC-CHECK ok {name}: {bytes:0.0} B per operation ({all:0.0} B, {background:0.0} B of it the background)");
            }
        }
    }
    if (checkedCount == 0) { Console.WriteLine("ALLOC-CHECK FAIL: no benchmark ran"); return 1; }
    Console.WriteLine($"ALLOC-CHECK: {checkedCount - failed} of {checkedCount} benchmarks allocate less than {Threshold} B per operation ({ThresholdWithNodes} B in suites with nodes)");
    return failed == 0 ? 0 : 1;
}

// `--all` is `--filter *` for callers whose shell would expand the `*` (PowerShell on Linux globs native arguments).
BenchmarkSwitcher.FromAssembly(typeof(StorageNode.Benchmarks.Crc32CBenchmarks).Assembly)
    .Run(args.SelectMany(a => a == "--all" ? new[] { "--filter", "*" } : [a]).ToArray());
return 0;
