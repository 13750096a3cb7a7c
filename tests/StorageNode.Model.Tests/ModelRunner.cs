using System.Diagnostics;
using Microsoft.Coyote;
using Microsoft.Coyote.Actors;
using Microsoft.Coyote.SystematicTesting;
using StorageNode.Model.Tests.Model;
using StorageNode.Support;

namespace StorageNode.Model.Tests;

/// <summary>What one exploration found: schedules explored, bugs (each with the invariant it broke), and how long it took.</summary>
public sealed record ModelResult(string Name, int Schedules, int Bugs, IReadOnlyList<string> Reports, TimeSpan Took)
{
    /// <summary>The invariant the first bug broke: "(1)", "(2)" or "(3)", or null.</summary>
    public string? Invariant => Reports.Count == 0 ? null : Reports[0].Length >= 3 && Reports[0][0] == '(' ? Reports[0][..3] : Reports[0].Split('\n')[0];
}

/// <summary>Runs the model under Coyote's testing engine: a fixed seed, a bounded number of schedules, each bounded in steps and logical time.</summary>
public static class ModelRunner
{
    /// <summary>Logical time one schedule runs (ms): the faults come between 500 and ~2000 ms.</summary>
    public const long EndMs = 3200;

    public static ModelResult Explore(string name, Faults faults, SeededBug bug, uint iterations, uint seed, bool stopAtFirstBug = true, bool checkServed = false)
    {
        Configuration config = Configuration.Create()
            .WithTestingIterations(iterations)
            .WithRandomGeneratorSeed(seed)
            .WithMaxSchedulingSteps(40_000)
            .WithPrioritizationStrategy(isFair: false, priorityChangeBound: 10)
            .WithPartiallyControlledConcurrencyAllowed(false)
            .WithTestIterationsRunToCompletion(!stopAtFirstBug)
            .WithTelemetryEnabled(false)
            .WithConsoleLoggingEnabled(false)
            .WithVerbosityEnabled(Microsoft.Coyote.Logging.VerbosityLevel.None);
        var sw = Stopwatch.StartNew();
        using TestingEngine engine = TestingEngine.Create(config, (IActorRuntime runtime) =>
        {
            runtime.RegisterMonitor<Invariants>();
            runtime.CreateActor(typeof(World), new WorldInit(runtime, bug, faults, withWitness: true, EndMs, checkServed));
        });
        engine.Run();
        sw.Stop();
        TestReport report = engine.TestReport;
        int schedules = report.NumOfExploredFairPaths + report.NumOfExploredUnfairPaths;
        var reports = report.BugReports.ToList();
        if (report.InternalErrors.Count > 0) reports.AddRange(report.InternalErrors.Select(e => "internal error: " + e));
        var result = new ModelResult(name, schedules, report.NumOfFoundBugs, reports, sw.Elapsed);
        Console.WriteLine($"[model] {name}: {schedules} schedules explored ({faults}, seeded bug: {bug}, seed {seed}), {(report.TotalExploredFairSteps + report.TotalExploredUnfairSteps) / Math.Max(1, schedules)} steps each, {result.Bugs} bug(s) found{(result.Bugs > 0 ? $": {result.Invariant}" : "")}, {sw.Elapsed.TotalSeconds:0.0} s");
        foreach (string r in reports.Take(1)) Console.WriteLine("[model]   " + r.Replace("\n", "\n[model]   ", StringComparison.Ordinal));
        return result;
    }
}
