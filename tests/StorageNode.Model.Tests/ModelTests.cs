using StorageNode.Model.Tests.Model;

namespace StorageNode.Model.Tests;

/// <summary>
/// The pair's protocol explored systematically (docs/ha.md, "The model"): the correct protocol under each failure mix finds
/// no violation; each seeded bug is found, and the invariant it breaks named.
/// </summary>
public sealed class ModelTests
{
    private static readonly uint Iterations = uint.TryParse(Environment.GetEnvironmentVariable("MODEL_ITERATIONS"), out uint n) ? n : 30;

    private static void NoViolation(string name, Faults faults, uint seed, uint? schedules = null, bool checkServed = false)
    {
        uint iterations = schedules ?? Iterations;
        ModelResult r = ModelRunner.Explore(name, faults, SeededBug.None, iterations, seed, stopAtFirstBug: true, checkServed);
        Assert.True(r.Bugs == 0, $"{name}: {string.Join("\n\n", r.Reports)}");
        Assert.Equal((int)iterations, r.Schedules);
    }

    private static void Finds(string name, Faults faults, SeededBug bug, string invariant, uint seed, uint iterations = 300, bool checkServed = false)
    {
        ModelResult r = ModelRunner.Explore(name, faults, bug, iterations, seed, stopAtFirstBug: true, checkServed);
        Assert.True(r.Bugs > 0, $"{name}: the seeded bug {bug} was not found in {r.Schedules} schedules");
        Assert.True(r.Reports.Any(x => x.StartsWith(invariant, StringComparison.Ordinal)), $"{name}: expected {invariant}, found: {string.Join("\n\n", r.Reports)}");
    }

    /// <summary>
    /// With the end-of-run availability check (L): an owner that restarts while its partner asks the witness for the group
    /// (heard again, its restart resets the keeper's knowledge only once the ask is over) does not make the partner
    /// decline a grant the witness keeps — without the freeze (ReplicaKnowledge.BeginTake) it does, at the 7th schedule.
    /// </summary>
    [Fact] public void TheOwnerCrashesAndComesBack() => NoViolation(nameof(TheOwnerCrashesAndComesBack), Faults.OwnerCrash | Faults.Heal, 11, checkServed: true);
    [Fact] public void TheOwnerCrashes() => NoViolation(nameof(TheOwnerCrashes), Faults.OwnerCrash, 12);
    [Fact] public void ThePairIsPartitionedBothReachTheWitness() => NoViolation(nameof(ThePairIsPartitionedBothReachTheWitness), Faults.PairPartition | Faults.Heal, 13);
    [Fact] public void ThePairIsPartitionedOnlyTheOwnerReachesTheWitness() => NoViolation(nameof(ThePairIsPartitionedOnlyTheOwnerReachesTheWitness), Faults.PairPartition | Faults.KeeperWitnessPartition | Faults.Heal, 15);
    [Fact] public void TheWitnessIsLostAndTheInterconnectToo() => NoViolation(nameof(TheWitnessIsLostAndTheInterconnectToo), Faults.WitnessCrash | Faults.InterconnectOnly | Faults.Heal, 16);
    [Fact] public void TheKeeperCrashesAndComesBack() => NoViolation(nameof(TheKeeperCrashesAndComesBack), Faults.KeeperCrash | Faults.Heal, 17);
    [Fact] public void BothCrashInTurn() => NoViolation(nameof(BothCrashInTurn), Faults.OwnerCrash | Faults.KeeperCrash | Faults.Heal, 18);

    [Fact] public void FindsAnOwnerThatNeverFencesItself() => Finds(nameof(FindsAnOwnerThatNeverFencesItself), Faults.PairPartition | Faults.OwnerWitnessPartition, SeededBug.NeverFence, "(2)", 21);
    [Fact] public void FindsAWitnessThatGrantsEarly() => Finds(nameof(FindsAWitnessThatGrantsEarly), Faults.PairPartition | Faults.OwnerWitnessPartition, SeededBug.WitnessGrantsEarly, "(", 22);
    [Fact] public void FindsAnOwnerAloneWithoutTheWitness() => Finds(nameof(FindsAnOwnerAloneWithoutTheWitness), Faults.PairPartition | Faults.OwnerWitnessPartition, SeededBug.AloneWithoutWitness, "(", 23);
    [Fact] public void FindsAKeeperThatTakesAnotherIncarnationsWord() => Finds(nameof(FindsAKeeperThatTakesAnotherIncarnationsWord), Faults.OwnerCrash | Faults.Heal, SeededBug.KeeperTakesOtherIncarnation, "(", 24);

    /// <summary>
    /// The product defect the model found, fixed (docs/ha.md, "The model"): B asks the witness for the group while the pair
    /// is partitioned and A is cut off from the witness, and the witness grants it just as the partition heals. Before the
    /// fix B then declined the grant (A's datagrams heard again: its replica no longer "whole when the partner was last
    /// heard") while the witness kept B's term, and nobody served the group. Now B's knowledge is frozen while it asks and
    /// the grant is checked as of A's last sign of life before asking: the same mix and seed end with the group served
    /// (the end-of-run availability check (L)), and nothing else broken.
    /// </summary>
    [Fact] public void TheGrantIsNotDeclinedWhenThePartitionHealsDuringTheAsk() => NoViolation(nameof(TheGrantIsNotDeclinedWhenThePartitionHealsDuringTheAsk), Faults.PairPartition | Faults.OwnerWitnessPartition | Faults.Heal, 14, 30, checkServed: true);

    /// <summary>The takeover as it was before the fix (no freeze during the ask, the grant checked as of now): the group served by nobody, found again.</summary>
    [Fact] public void FindsTheGroupServedByNobodyWithoutTheFreeze() => Finds(nameof(FindsTheGroupServedByNobodyWithoutTheFreeze), Faults.PairPartition | Faults.OwnerWitnessPartition | Faults.Heal, SeededBug.NoFreezeDuringTake, "(L)", 14, 300, checkServed: true);

    /// <summary>
    /// A defect the model found in the fix's first step (docs/ha.md, "The model"): A crashes; B asks the witness; A starts
    /// again during the ask and connects to B, whose descriptor (still A's term) confirms it: A serves, its mirror out of
    /// sync, and acknowledges writes the replica lacks — counting on B resetting its knowledge when it hears the new
    /// incarnation, a reset that now waits for the end of the ask; the witness grants B and B serves its replica as whole
    /// at A's death. The product refuses the partner's new associations their descriptor while it asks: no write lost.
    /// </summary>
    [Fact] public void NoWriteIsLostWhenTheOwnerRestartsDuringTheAsk() => NoViolation(nameof(NoWriteIsLostWhenTheOwnerRestartsDuringTheAsk), Faults.OwnerCrash | Faults.Heal, 34, 30);

    /// <summary>The same without the refusal (the seeded bug): the acknowledged write lost, found.</summary>
    [Fact] public void FindsAWriteLostWithoutTheRefusal() => Finds(nameof(FindsAWriteLostWithoutTheRefusal), Faults.OwnerCrash | Faults.Heal, SeededBug.NoRefusalDuringTake, "(3)", 34, 300);
}
