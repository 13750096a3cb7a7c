using StorageNode.Model.Tests.Model;

namespace StorageNode.Model.Tests;

/// <summary>
/// The pair's protocol explored systematically (docs/ha.md, "The model"): the correct protocol under each failure mix finds
/// no violation; each seeded bug is found, and the invariant it breaks named.
/// </summary>
public sealed class ModelTests
{
    private static readonly uint Iterations = uint.TryParse(Environment.GetEnvironmentVariable("MODEL_ITERATIONS"), out uint n) ? n : 30;

    private static void NoViolation(string name, Faults faults, uint seed, uint? schedules = null)
    {
        uint iterations = schedules ?? Iterations;
        ModelResult r = ModelRunner.Explore(name, faults, SeededBug.None, iterations, seed, stopAtFirstBug: true);
        Assert.True(r.Bugs == 0, $"{name}: {string.Join("\n\n", r.Reports)}");
        Assert.Equal((int)iterations, r.Schedules);
    }

    private static void Finds(string name, Faults faults, SeededBug bug, string invariant, uint seed, uint iterations = 300, bool checkServed = false)
    {
        ModelResult r = ModelRunner.Explore(name, faults, bug, iterations, seed, stopAtFirstBug: true, checkServed);
        Assert.True(r.Bugs > 0, $"{name}: the seeded bug {bug} was not found in {r.Schedules} schedules");
        Assert.True(r.Reports.Any(x => x.StartsWith(invariant, StringComparison.Ordinal)), $"{name}: expected {invariant}, found: {string.Join("\n\n", r.Reports)}");
    }

    [Fact] public void TheOwnerCrashesAndComesBack() => NoViolation(nameof(TheOwnerCrashesAndComesBack), Faults.OwnerCrash | Faults.Heal, 11);
    [Fact] public void TheOwnerCrashes() => NoViolation(nameof(TheOwnerCrashes), Faults.OwnerCrash, 12);
    [Fact] public void ThePairIsPartitionedBothReachTheWitness() => NoViolation(nameof(ThePairIsPartitionedBothReachTheWitness), Faults.PairPartition | Faults.Heal, 13);
    [Fact] public void TheOwnerIsIsolated() => NoViolation(nameof(TheOwnerIsIsolated), Faults.PairPartition | Faults.OwnerWitnessPartition | Faults.Heal, 14);
    [Fact] public void ThePairIsPartitionedOnlyTheOwnerReachesTheWitness() => NoViolation(nameof(ThePairIsPartitionedOnlyTheOwnerReachesTheWitness), Faults.PairPartition | Faults.KeeperWitnessPartition | Faults.Heal, 15);
    [Fact] public void TheWitnessIsLostAndTheInterconnectToo() => NoViolation(nameof(TheWitnessIsLostAndTheInterconnectToo), Faults.WitnessCrash | Faults.InterconnectOnly | Faults.Heal, 16);
    [Fact] public void TheKeeperCrashesAndComesBack() => NoViolation(nameof(TheKeeperCrashesAndComesBack), Faults.KeeperCrash | Faults.Heal, 17);
    [Fact] public void BothCrashInTurn() => NoViolation(nameof(BothCrashInTurn), Faults.OwnerCrash | Faults.KeeperCrash | Faults.Heal, 18);

    [Fact] public void FindsAnOwnerThatNeverFencesItself() => Finds(nameof(FindsAnOwnerThatNeverFencesItself), Faults.PairPartition | Faults.OwnerWitnessPartition, SeededBug.NeverFence, "(2)", 21);
    [Fact] public void FindsAWitnessThatGrantsEarly() => Finds(nameof(FindsAWitnessThatGrantsEarly), Faults.PairPartition | Faults.OwnerWitnessPartition, SeededBug.WitnessGrantsEarly, "(", 22);
    [Fact] public void FindsAnOwnerAloneWithoutTheWitness() => Finds(nameof(FindsAnOwnerAloneWithoutTheWitness), Faults.PairPartition | Faults.OwnerWitnessPartition, SeededBug.AloneWithoutWitness, "(", 23);
    [Fact] public void FindsAKeeperThatTakesAnotherIncarnationsWord() => Finds(nameof(FindsAKeeperThatTakesAnotherIncarnationsWord), Faults.OwnerCrash | Faults.Heal, SeededBug.KeeperTakesOtherIncarnation, "(", 24);

    /// <summary>
    /// A product defect the model found (docs/ha.md, "The model"): a take the witness grants while the partition heals is
    /// then declined by the taker (it hears the owner's datagrams again, so its replica was not whole "at the owner's
    /// death"), but the witness keeps the taker as the owner at the new term; the old owner learns that term from the
    /// witness and steps down to keeper, the taker learns it from the descriptor with only a replica: held. Nobody serves
    /// the group until an operator acts. Safe (no invariant broken), but the group is lost to the hosts.
    /// </summary>
    [Fact] public void FindsTheGroupServedByNobodyAfterADeclinedGrant() => Finds(nameof(FindsTheGroupServedByNobodyAfterADeclinedGrant), Faults.PairPartition | Faults.OwnerWitnessPartition | Faults.Heal, SeededBug.None, "(L)", 14, 300, checkServed: true);
}
