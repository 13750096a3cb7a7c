using Microsoft.Extensions.Configuration;
using StorageNode.Config;
using StorageNode.Support;
using StorageNode.Witness;

namespace StorageNode.Pair.Tests;

/// <summary>The witness's state machine (docs/ha.md, "The witness") on its own: no sockets, no files; its clock is given (ticks of 1 ms).</summary>
public sealed class WitnessStateTests
{
    private const long Ms = 1;
    private static readonly WitnessKey Key = new("pair", "nqn.2026-11.io.storagenode:pair", 1);
    private ulong _id;

    private static WitnessState New(long start = 0, IEnumerable<KeyValuePair<WitnessKey, WitnessRecord>>? kept = null)
        => new(TimeSpan.FromMilliseconds(1000), start, 1000, kept ?? []);

    private WitnessAnswer Ask(WitnessState w, long now, WitnessVerb verb, string node, ulong term, ulong arg = 0)
    {
        WitnessDecision d = w.Decide(new WitnessRequest(++_id, verb, Key, node, term, arg), now);
        w.Apply(d, now);
        Assert.Equal(_id, d.Answer.Id);
        return d.Answer;
    }

    [Fact]
    public void TheOwnersLeaseKeepsThePartnerOutUntilItRunsOutOnTheWitnessClock()
    {
        WitnessState w = New();
        WitnessAnswer a = Ask(w, 10 * Ms, WitnessVerb.Renew, "A", 0);
        Assert.Equal((WitnessResult.Ok, 0UL, "A", 1000U), (a.Result, a.Term, a.Owner, a.LeaseMs));
        a = Ask(w, 1500 * Ms, WitnessVerb.Renew, "A", 0); // renewed at 1500: held until 2500
        Assert.Equal(WitnessResult.Ok, a.Result);

        a = Ask(w, 2499 * Ms, WitnessVerb.Take, "B", 1);
        Assert.Equal(WitnessResult.Refused, a.Result);
        Assert.Contains("holds its lease", a.Reason);
        Assert.Equal((0UL, "A"), (a.Term, a.Owner));

        a = Ask(w, 2500 * Ms, WitnessVerb.Take, "B", 1);
        Assert.Equal((WitnessResult.Ok, 1UL, "B", 1000U), (a.Result, a.Term, a.Owner, a.LeaseMs));
        // The old owner learns it on its next renewal: no lease, the new term named.
        a = Ask(w, 2600 * Ms, WitnessVerb.Renew, "A", 0);
        Assert.Equal((WitnessResult.Superseded, 1UL, "B", 0U), (a.Result, a.Term, a.Owner, a.LeaseMs));
        a = Ask(w, 2600 * Ms, WitnessVerb.Alone, "A", 0);
        Assert.Equal(WitnessResult.Superseded, a.Result);
        Assert.False(a.Alone);
        // The new owner holds the lease from its take: the old one cannot take it back before it runs out.
        a = Ask(w, 3000 * Ms, WitnessVerb.Take, "A", 2);
        Assert.Equal(WitnessResult.Refused, a.Result);
        // A retried take that was granted is granted again (its first answer may have been lost).
        a = Ask(w, 3000 * Ms, WitnessVerb.Take, "B", 1);
        Assert.Equal((WitnessResult.Ok, 1UL, "B"), (a.Result, a.Term, a.Owner));
    }

    [Fact]
    public void AnOwnerThatServedAloneIsNotReplacedByAStaleReplicaUnlessForced()
    {
        WitnessState w = New();
        Ask(w, 0, WitnessVerb.Renew, "A", 3);
        WitnessAnswer a = Ask(w, 100 * Ms, WitnessVerb.Alone, "A", 3);
        Assert.Equal((WitnessResult.Ok, true, 1UL), (a.Result, a.Alone, a.AloneGeneration));
        // Its lease long gone, the owner served alone: the partner's replica lacks acknowledged writes.
        a = Ask(w, 60_000 * Ms, WitnessVerb.Take, "B", 4);
        Assert.Equal(WitnessResult.Refused, a.Result);
        Assert.Contains("served alone", a.Reason);
        a = Ask(w, 60_000 * Ms, WitnessVerb.Take, "B", 4, arg: WitnessProtocol.TakeArgument(force: true, TimeSpan.Zero));
        Assert.Equal((WitnessResult.Ok, 4UL, "B", false), (a.Result, a.Term, a.Owner, a.Alone));
    }

    [Fact]
    public void SyncedClearsOnlyTheAloneRecordItNames()
    {
        WitnessState w = New();
        Ask(w, 0, WitnessVerb.Renew, "A", 0);
        ulong g0 = Ask(w, 5 * Ms, WitnessVerb.Alone, "A", 0).AloneGeneration;
        // Asked again (a retry, or said again): a new generation, so that a "synced" of the first, delayed past it,
        // clears nothing.
        ulong g1 = Ask(w, 10 * Ms, WitnessVerb.Alone, "A", 0).AloneGeneration;
        Assert.Equal(g0 + 1, g1);
        Assert.True(Ask(w, 15 * Ms, WitnessVerb.Synced, "A", 0, g0).Alone);
        Assert.Equal(g1, Ask(w, 20 * Ms, WitnessVerb.Renew, "A", 0).AloneGeneration);
        Assert.False(Ask(w, 30 * Ms, WitnessVerb.Synced, "A", 0, g1).Alone);
        ulong g2 = Ask(w, 40 * Ms, WitnessVerb.Alone, "A", 0).AloneGeneration;
        Assert.NotEqual(g1, g2);
        // A "synced" of the earlier episode, delayed past the new "alone", clears nothing.
        WitnessAnswer a = Ask(w, 50 * Ms, WitnessVerb.Synced, "A", 0, g1);
        Assert.True(a.Alone);
        Assert.Equal(WitnessResult.Refused, Ask(w, 5000 * Ms, WitnessVerb.Take, "B", 1).Result);
        // Only the owner at its term clears it.
        Assert.True(Ask(w, 60 * Ms, WitnessVerb.Synced, "B", 0, g2).Alone);
        Assert.False(Ask(w, 70 * Ms, WitnessVerb.Synced, "A", 0, g2).Alone);
    }

    [Fact]
    public void AWitnessThatStartedGrantsNothingBeforeALeaseHasPassed()
    {
        var kept = new Dictionary<WitnessKey, WitnessRecord> { [Key] = new(5, "A", false, 0) };
        WitnessState w = New(start: 100_000 * Ms, kept);
        WitnessAnswer a = Ask(w, 100_500 * Ms, WitnessVerb.Take, "B", 6);
        Assert.Equal(WitnessResult.Refused, a.Result);
        Assert.Contains("started", a.Reason);
        Assert.Equal((5UL, "A"), (a.Term, a.Owner));
        a = Ask(w, 101_000 * Ms, WitnessVerb.Take, "B", 6);
        Assert.Equal((WitnessResult.Ok, 6UL, "B"), (a.Result, a.Term, a.Owner));
    }

    [Fact]
    public void ATakeIsGrantedOnceTheTakerHasAskedForItsHeartbeatInterval()
    {
        // The owner fences itself (no lease) once its partner has answered none of its heartbeats for a heartbeat
        // timeout, checked every half interval; the taker asks once it has heard nothing for as long: granted once it has
        // asked for its interval.
        ulong every100 = WitnessProtocol.TakeArgument(force: false, TimeSpan.FromMilliseconds(100));
        WitnessState w = New();
        Ask(w, 0, WitnessVerb.Renew, "A", 0);
        WitnessAnswer a = Ask(w, 5000 * Ms, WitnessVerb.Take, "B", 1, every100);
        Assert.Equal(WitnessResult.Wait, a.Result);
        Assert.Contains("has asked for 0 ms", a.Reason);
        Assert.Equal(WitnessResult.Wait, Ask(w, 5099 * Ms, WitnessVerb.Take, "B", 1, every100).Result);
        Assert.Equal(WitnessResult.Ok, Ask(w, 5100 * Ms, WitnessVerb.Take, "B", 1, every100).Result);

        // Asks further apart than twice the interval start over; an owner's lease held counts as asking.
        w = New();
        Ask(w, 0, WitnessVerb.Renew, "A", 0);
        Assert.Equal(WitnessResult.Refused, Ask(w, 900 * Ms, WitnessVerb.Take, "B", 1, every100).Result); // A's lease
        Assert.Equal(WitnessResult.Ok, Ask(w, 1000 * Ms, WitnessVerb.Take, "B", 2, every100).Result); // asked since 900
        w = New();
        Ask(w, 0, WitnessVerb.Renew, "A", 0);
        Assert.Equal(WitnessResult.Wait, Ask(w, 5000 * Ms, WitnessVerb.Take, "B", 1, every100).Result);
        Assert.Equal(WitnessResult.Wait, Ask(w, 5500 * Ms, WitnessVerb.Take, "B", 1, every100).Result); // a new first ask
        Assert.Equal(WitnessResult.Ok, Ask(w, 5600 * Ms, WitnessVerb.Take, "B", 1, every100).Result);
        // The new owner's lease (renewed at 5700) ended at 6700: A, asking at 6800, waits its interval too.
        Assert.Equal(WitnessResult.Ok, Ask(w, 5700 * Ms, WitnessVerb.Renew, "B", 1).Result);
        Assert.Equal(WitnessResult.Wait, Ask(w, 6800 * Ms, WitnessVerb.Take, "A", 2, every100).Result);
        Assert.Equal(WitnessResult.Ok, Ask(w, 6900 * Ms, WitnessVerb.Take, "A", 2, every100).Result);
    }

    [Fact]
    public void ATermMadeWithoutTheWitnessIsLearnedFromItsOwnerAndAStaleOneIsNot()
    {
        WitnessState w = New();
        Ask(w, 0, WitnessVerb.Renew, "B", 1);
        // A giveback over the interconnect made term 2 (A's): A says so first.
        WitnessAnswer a = Ask(w, 100 * Ms, WitnessVerb.Renew, "A", 2);
        Assert.Equal((WitnessResult.Ok, 2UL, "A"), (a.Result, a.Term, a.Owner));
        WitnessAnswer old = Ask(w, 150 * Ms, WitnessVerb.Renew, "B", 1);
        Assert.Equal((WitnessResult.Superseded, 2UL, "A"), (old.Result, old.Term, old.Owner));
        // One term, two owners: the second is told the first's.
        a = Ask(w, 200 * Ms, WitnessVerb.Renew, "B", 2);
        Assert.Equal((WitnessResult.Superseded, 2UL, "A"), (a.Result, a.Term, a.Owner));
        // A take at a term not past the witness's is told the witness's.
        a = Ask(w, 10_000 * Ms, WitnessVerb.Take, "B", 2);
        Assert.Equal((WitnessResult.Superseded, 2UL, "A"), (a.Result, a.Term, a.Owner));
    }

    [Fact]
    public void AThirdNodeNameIsRefusedAndAQueryChangesNothing()
    {
        WitnessState w = New();
        Ask(w, 0, WitnessVerb.Renew, "A", 0);
        Ask(w, 0, WitnessVerb.Query, "C", 0); // a query makes nobody a member
        Assert.Equal(WitnessResult.Refused, Ask(w, 0, WitnessVerb.Take, "B", 1).Result); // A holds its lease; B is the pair's other node
        WitnessAnswer a = Ask(w, 5000 * Ms, WitnessVerb.Take, "C", 1);
        Assert.Equal(WitnessResult.Refused, a.Result);
        Assert.Contains("not a node of pair", a.Reason);
        a = Ask(w, 5000 * Ms, WitnessVerb.Query, "B", 0);
        Assert.Equal((WitnessResult.State, 0UL, "A", 0U), (a.Result, a.Term, a.Owner, a.LeaseMs));
        Assert.False(w.LeaseHeld(Key, 5000 * Ms));
        Assert.True(w.LeaseHeld(Key, 999 * Ms));
    }

    [Fact]
    public void RecordsSurviveTheStateFileAndABadFileIsNamed()
    {
        var records = new Dictionary<WitnessKey, WitnessRecord>
        {
            [Key] = new(7, "B", true, 3),
            [Key with { Group = 2 }] = new(0, "A", false, 0),
        };
        string text = WitnessState.Format(records);
        Dictionary<WitnessKey, WitnessRecord> back = WitnessState.Parse(text, "w.state");
        Assert.Equal(records.OrderBy(r => r.Key.Group), back.OrderBy(r => r.Key.Group));
        var e = Assert.Throws<InvalidDataException>(() => WitnessState.Parse(text + "pair nqn 3 x A 0 0\n", "w.state"));
        Assert.Contains("w.state:3", e.Message);
        Assert.Throws<InvalidDataException>(() => WitnessState.Parse(text + text, "w.state")); // a group twice
    }

    [Theory]
    [InlineData("SNW1 1 renew pair A nqn 1 0")]
    [InlineData("SNW1 x renew pair A nqn 1 0 0")]
    [InlineData("SNW1 1 steal pair A nqn 1 0 0")]
    [InlineData("SNW1 1 renew pair A nqn 0 0 0")]
    [InlineData("SNW1 1 renew pair A nqn 1 -1 0")]
    [InlineData("SNW2 1 renew pair A nqn 1 0 0")]
    [InlineData("")]
    public void AMalformedRequestIsRefusedWithAReason(string text)
    {
        Assert.False(WitnessProtocol.TryParseRequest(System.Text.Encoding.UTF8.GetBytes(text), out _, out string error));
        Assert.NotEmpty(error);
    }

    [Fact]
    public void RequestsAndAnswersSurviveTheWire()
    {
        var r = new WitnessRequest(42, WitnessVerb.Synced, Key, "A", 9, 3);
        Assert.True(WitnessProtocol.TryParseRequest(r.Encode(), out WitnessRequest back, out _));
        Assert.Equal(r, back);
        var a = new WitnessAnswer(42, WitnessResult.Refused, 9, "B", true, 3, 0, "B holds its lease (renewed 5 ms ago)");
        Assert.True(WitnessProtocol.TryParseAnswer(a.Encode(), out WitnessAnswer ab));
        Assert.Equal(a, ab);
        var none = new WitnessAnswer(1, WitnessResult.State, 0, "", false, 0, 0);
        Assert.True(WitnessProtocol.TryParseAnswer(none.Encode(), out WitnessAnswer nb));
        Assert.Equal(none, nb);
    }

    private static Dictionary<string, string?> Cluster(Dictionary<string, string?> more)
    {
        Dictionary<string, string?> d = InterconnectTransportTests.Cluster(null);
        foreach (var kv in more) d[kv.Key] = kv.Value;
        return d;
    }

    private static IConfiguration Config(Dictionary<string, string?> d) => new ConfigurationBuilder().AddInMemoryCollection(d).Build();

    [Fact]
    public void TheWitnessSettingsAreCheckedWithTheKeyNamed()
    {
        ClusterConfig c = NodeConfig.Load(Config(Cluster(new() { ["Cluster:Mirror"] = "true", ["Cluster:Witness"] = "127.0.0.1:4460" }))).Cluster!;
        Assert.Equal("127.0.0.1:4460", c.Witness!.ToString());
        Assert.True(c.SelfFence);
        Assert.Null(NodeConfig.Load(Config(Cluster(new()))).Cluster!.Witness);

        string Bad(Dictionary<string, string?> more) => Assert.Throws<ConfigException>(() => NodeConfig.Load(Config(Cluster(more)))).Key;
        Assert.Equal("Cluster:Witness", Bad(new() { ["Cluster:Witness"] = "127.0.0.1:4460" })); // without Mirror
        Assert.Equal("Cluster:Witness", Bad(new() { ["Cluster:Mirror"] = "true", ["Cluster:Witness"] = "127.0.0.1:4441" })); // the partner's heartbeat
        Assert.Equal("Cluster:Witness", Bad(new() { ["Cluster:Mirror"] = "true", ["Cluster:Witness"] = "witness" }));
        Assert.Equal("Cluster:SelfFence", Bad(new() { ["Cluster:SelfFence"] = "false" })); // without a witness
        Assert.Equal("Cluster:Name", Bad(new() { ["Cluster:Mirror"] = "true", ["Cluster:Witness"] = "127.0.0.1:4460", ["Cluster:Name"] = "my pair" }));

        Dictionary<string, string?> Witness(Dictionary<string, string?> more)
        {
            var d = new Dictionary<string, string?> { ["Witness:Listen"] = "127.0.0.1:4460", ["Witness:StateDirectory"] = "/var/lib/sn-witness" };
            foreach (var kv in more) d[kv.Key] = kv.Value;
            return d;
        }
        WitnessConfig w = NodeConfig.LoadWitness(Config(Witness(new())));
        Assert.Equal((1500.0, "/var/lib/sn-witness"), (w.Lease.TotalMilliseconds, w.StateDirectory));
        string BadWitness(Dictionary<string, string?> d) => Assert.Throws<ConfigException>(() => NodeConfig.LoadWitness(Config(d))).Key;
        Assert.Equal("Witness:Listen", BadWitness(new() { ["Witness:StateDirectory"] = "/var/lib/sn-witness" }));
        Assert.Equal("Witness:StateDirectory", BadWitness(new() { ["Witness:Listen"] = "127.0.0.1:4460" })); // required
        Assert.Equal("Witness:LeaseMs", BadWitness(Witness(new() { ["Witness:LeaseMs"] = "100" })));
        Assert.Equal("Witness:StateDirectory", BadWitness(Witness(new() { ["Witness:StateDirectory"] = "relative" })));
        Assert.Equal("Witness:Lease", BadWitness(Witness(new() { ["Witness:Lease"] = "1" })));
        Assert.Equal("Cluster", BadWitness(Witness(new() { ["Cluster:Name"] = "c" })));
    }
}
