namespace StorageNode.Pair.Tests;

/// <summary>The group ownership state machine (docs/ha.md, "Takeover") on its own: no sockets, no files.</summary>
public sealed class GroupOwnershipTests
{
    private static GroupOwnership New(string local = "B", GroupTerm? kept = null, bool mayChange = true) => new(1, local, "A", kept, mayChange);

    [Fact]
    public void ANodeServesAGroupItOwnsOnlyOnceItHasHeardItsPartner()
    {
        GroupOwnership a = New("A");
        Assert.True(a.OwnedHere);
        Assert.False(a.Confirmed);
        Assert.False(a.MayServe);
        Assert.Equal(OwnershipLearned.Agreed, a.Learn(new GroupTerm(0, "A")));
        Assert.True(a.MayServe);
        Assert.False(a.TakenOver);
    }

    [Fact]
    public void WithoutAReplicaTheConfiguredOwnerServesAtOnce()
    {
        GroupOwnership a = New("A", mayChange: false);
        Assert.True(a.MayServe);
    }

    [Fact]
    public void TheHigherTermIsTheTruth()
    {
        GroupOwnership a = New("A");
        Assert.Equal(OwnershipLearned.Adopted, a.Learn(new GroupTerm(1, "B")));
        Assert.Equal(new GroupTerm(1, "B"), a.Current);
        Assert.False(a.OwnedHere);
        Assert.False(a.MayServe);
        Assert.True(a.TakenOver);

        GroupOwnership b = New("B", kept: new GroupTerm(1, "B"));
        Assert.False(b.MayServe); // kept from before its restart: the partner may have moved on
        Assert.Equal(OwnershipLearned.PartnerBehind, b.Learn(new GroupTerm(0, "A")));
        Assert.True(b.MayServe);
    }

    [Fact]
    public void ATakeoverMakesTheNextTermAndCannotGoBack()
    {
        GroupOwnership b = New("B");
        GroupTerm next = b.NextTerm;
        Assert.Equal(new GroupTerm(1, "B"), next);
        b.TookOver(next);
        Assert.True(b.MayServe);
        Assert.Throws<InvalidOperationException>(() => b.TookOver(next));
        Assert.Throws<InvalidOperationException>(() => b.TookOver(new GroupTerm(5, "A")));
    }

    /// <summary>
    /// A giveback offers the next term to the partner; taken (the partner's view at that term) it is the partner's; a
    /// takeover while the offer is unsettled goes past the term offered (the partner may hold it); one offer at a time.
    /// </summary>
    [Fact]
    public void AGivebackOffersTheNextTermAndATakeoverMeanwhileGoesPastIt()
    {
        GroupOwnership b = New("B");
        b.Learn(new GroupTerm(0, "A"));
        Assert.Throws<InvalidOperationException>(() => b.Offer("A")); // not B's to give
        b.TookOver(b.NextTerm);
        GroupTerm offered = b.Offer("A");
        Assert.Equal(new GroupTerm(2, "A"), offered);
        Assert.Throws<InvalidOperationException>(() => b.Offer("A"));
        Assert.Equal(new GroupTerm(3, "B"), b.NextTerm);
        Assert.Equal(OwnershipLearned.Adopted, b.Learn(offered));
        Assert.Null(b.Offered);
        Assert.False(b.OwnedHere);

        GroupOwnership b2 = New("B");
        b2.Learn(new GroupTerm(0, "A"));
        b2.TookOver(b2.NextTerm);
        b2.Offer("A");
        b2.TookOver(b2.NextTerm); // the partner vanished with the offer unanswered: taken over past it
        Assert.Equal(new GroupTerm(3, "B"), b2.Current);
        Assert.Null(b2.Offered);
        Assert.True(b2.MayServe);
        b2.Offer("A");
        b2.OfferEnded(); // refused
        Assert.Equal(new GroupTerm(4, "B"), b2.NextTerm);
    }

    [Fact]
    public void OneTermWithTwoOwnersIsAConflictNeitherNodeServesUntilANewerTerm()
    {
        GroupOwnership b = New("B");
        b.TookOver(b.NextTerm);
        Assert.Equal(OwnershipLearned.Conflict, b.Learn(new GroupTerm(1, "A")));
        Assert.NotNull(b.Conflict);
        Assert.False(b.MayServe);
        Assert.Equal(OwnershipLearned.Conflict, b.Learn(new GroupTerm(1, "A")));
        // Hearing the same term again, or an older one, does not end it.
        Assert.Equal(OwnershipLearned.PartnerBehind, b.Learn(new GroupTerm(0, "A")));
        Assert.False(b.MayServe);
        // A newer term (an operator's takeover on either node) does.
        b.TookOver(b.NextTerm);
        Assert.True(b.MayServe);
        Assert.Null(b.Conflict);
    }

    [Fact]
    public void TheKeptRecordReadsBackAndRefusesAnythingElse()
    {
        string dir = Directory.CreateTempSubdirectory("sn-owner-").FullName;
        try
        {
            string path = GroupOwnershipFile.PathOf(dir, "B", "nqn.2026-11.io.storagenode:x", 3);
            Assert.EndsWith("B-nqn.2026-11.io.storagenode_x-group3.owner", path, StringComparison.Ordinal);
            Assert.Null(GroupOwnershipFile.Load(path));
            GroupOwnershipFile.Save(path, new GroupTerm(7, "node b"));
            Assert.Equal(new GroupTerm(7, "node b"), GroupOwnershipFile.Load(path));
            foreach (string bad in new[] { "", "7", "x B", "-1 B", "7 " })
            {
                File.WriteAllText(path, bad);
                Assert.Throws<InvalidDataException>(() => GroupOwnershipFile.Load(path));
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
