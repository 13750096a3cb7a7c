using System.Diagnostics;
using System.Text.Json.Nodes;
using StorageNode.Control;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Testing;
using static StorageNode.Pair.Tests.MirrorRig;

namespace StorageNode.Pair.Tests;

/// <summary>
/// An acknowledged write is never lost by a takeover (docs/ha.md, "Takeover"): the owner killed for real (SIGKILL) at a
/// random moment (0–1.5 s after each host's first acknowledged write) while hosts write through both nodes, its group taken over by the survivor (the witness's grant, or an
/// operator's <c>cluster_takeover</c>), everything acknowledged read back from the survivor. Iterations per mode:
/// <c>STORAGENODE_DURABILITY_ITERATIONS</c> (default 3).
/// </summary>
public sealed class DurabilityTests
{
    private const uint Lbas = 256; // each writer has LBAs of its own: A's writer 0..255, B's 256..511

    /// <summary>One host writing versioned blocks of NSID 1, one write at a time, until told to stop or a write fails.</summary>
    private sealed class Writer
    {
        private readonly NvmeHost _host;
        private readonly ulong _first;
        private readonly Random _rnd;
        private readonly Thread _thread;
        private volatile bool _stop;

        public readonly Dictionary<ulong, uint> Acked = [];
        /// <summary>The write under way when the writer stopped (not acknowledged: it may or may not be there).</summary>
        public (ulong Lba, uint Version)? Unacked;
        public string? Failure;
        public volatile int Writes;

        public Writer(NvmeHost host, ulong first, int seed)
        {
            (_host, _first, _rnd) = (host, first, new Random(seed));
            _thread = new Thread(Run) { IsBackground = true, Name = $"writer {first}" };
            _thread.Start();
        }

        public bool Running => Failure == null && _thread.IsAlive;

        private void Run()
        {
            var bound = Stopwatch.StartNew();
            for (uint v = 1; !_stop && bound.Elapsed < TimeSpan.FromSeconds(60); v++)
            {
                ulong lba = _first + (ulong)_rnd.Next((int)Lbas);
                Unacked = (lba, v);
                try
                {
                    NvmeStatus st = _host.IoQueues[0].Write(1, lba, 1, Block(v, lba));
                    if (!st.IsSuccess)
                    {
                        Failure = st.ToString();
                        return;
                    }
                }
                catch (Exception e)
                {
                    Failure = $"{e.GetType().Name}: {e.Message}";
                    return;
                }
                lock (Acked) Acked[lba] = v;
                Unacked = null;
                Writes++;
            }
        }

        public void Stop()
        {
            _stop = true;
            if (!_thread.Join(TimeSpan.FromSeconds(60))) throw new TimeoutException($"{_thread.Name} did not stop");
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TheOwnerKilledAtARandomMomentUnderWritesLosesNoAcknowledgedWrite(bool witness)
    {
        int iterations = int.TryParse(Environment.GetEnvironmentVariable("STORAGENODE_DURABILITY_ITERATIONS"), out int n) && n > 0 ? n : 3;
        var rnd = new Random();
        int acked = 0, later = 0;
        var served = new List<double>();
        for (int i = 0; i < iterations; i++)
        {
            int seed = rnd.Next();
            (int a, int l, double ms) = OneIteration(witness, (i % 2 == 0 ? 3 : -3) * 3600, seed, new Random(seed).Next(0, 1500));
            acked += a;
            later += l;
            served.Add(ms);
        }
        served.Sort();
        Console.WriteLine($"[durability] {(witness ? "witness" : "manual")}: {iterations} owners killed, {acked} acknowledged blocks read back, 0 lost "
            + $"({later} held a later unacknowledged write); B served group 1 a median {served[served.Count / 2]:0} ms after the kill (longest {served[^1]:0})");
    }

    /// <returns>the acknowledged blocks read back, those holding a later unacknowledged write, and the time from the kill to B serving group 1</returns>
    private static (int Acked, int Later, double ServedMs) OneIteration(bool useWitness, int clockOffsetB, int seed, int killAfterMs)
    {
        // The lease outlasts the heartbeat timeout (2 s in the test pair), as docs/ha.md advises.
        using WitnessProcess? witness = useWitness ? new WitnessProcess(leaseMs: 2500) : null;
        Dictionary<string, string?> settings = witness != null ? WithWitness(witness) : With(Mirror, null);
        using var pair = new ProcessPair(settings, new Dictionary<string, string?>(settings), clockOffsetB);
        string what = $"{(useWitness ? "witness" : "manual")}, seed {seed}, B's clock {clockOffsetB} s, A killed {killAfterMs} ms into the writes";
        pair.WaitHealthy();
        WaitInSync(pair);
        if (witness != null)
            TestPair.WaitUntil(() => Group(pair, 'A', 1)["witness_lease_ms"]!.GetValue<long>() > 0, "A to hold group 1's lease at the witness");

        var options = new NvmeHostOptions { CommandTimeout = TimeSpan.FromSeconds(20) };
        using NvmeHost viaA = pair.Connect(pair.EndpointA, Guid.NewGuid(), options);
        using NvmeHost viaB = pair.Connect(pair.EndpointB, Guid.NewGuid(), options);
        var writers = new[] { new Writer(viaA, 0, seed), new Writer(viaB, Lbas, seed + 1) };
        TestPair.WaitUntil(() => writers.All(w => w.Writes > 0 || !w.Running), "each writer's first acknowledged write");
        Thread.Sleep(killAfterMs); // the random moment (no correctness waits on it)
        foreach (Writer w in writers)
            Assert.True(w.Running, $"{what}: a writer stopped before the kill: {w.Failure}\n{pair.Problems()}");
        pair.Kill('A');
        var sinceKill = Stopwatch.StartNew();
        foreach (Writer w in writers) w.Stop();

        if (witness != null)
        {
            try { TestPair.WaitUntil(() => Group(pair, 'B', 1)["served_here"]!.GetValue<bool>(), "B to take group 1 over on the witness's grant", TimeSpan.FromSeconds(30)); }
            catch (TimeoutException) { throw new TimeoutException($"{what}: B did not take group 1 over\n{pair.Log('B')}\n{witness.Output}"); }
        }
        else
        {
            TestPair.WaitUntil(() => pair.Rpc('B', "cluster_get_status")!["partner_status"]!.GetValue<string>() == "partner_down", "B to find A dead",
                TimeSpan.FromSeconds(30));
            JsonNode took = pair.Rpc('B', "cluster_takeover", new JsonObject { ["nqn"] = TestPair.Nqn, ["anagrpid"] = 1 })!;
            Assert.Equal("[]", took["risks"]!.ToJsonString());
        }
        double servedMs = sinceKill.Elapsed.TotalMilliseconds;
        Assert.True(Group(pair, 'B', 1)["served_here"]!.GetValue<bool>(), what);

        // Every LBA of both writers read back from B: the version last acknowledged, or the writer's unacknowledged one
        // (written or not when A died); an LBA never written reads zeros.
        using NvmeHost reader = pair.Connect(pair.EndpointB, Guid.NewGuid());
        var buf = new byte[512];
        int acked = 0, later = 0;
        foreach (Writer w in writers)
        {
            for (ulong lba = w == writers[0] ? 0 : Lbas, end = lba + Lbas; lba < end; lba++)
            {
                NvmeStatus st = reader.IoQueues[0].Read(1, lba, 1, buf);
                Assert.True(st.IsSuccess, $"{what}: read LBA {lba} through B: {st}");
                bool isUnacked = w.Unacked is (ulong ul, uint uv) && ul == lba && buf.AsSpan().SequenceEqual(Block(uv, lba));
                if (w.Acked.TryGetValue(lba, out uint v))
                {
                    acked++;
                    if (isUnacked) later++;
                    else Assert.True(buf.AsSpan().SequenceEqual(Block(v, lba)),
                        $"{what}: LBA {lba} lost version {v}, the last acknowledged (it holds version {BitConverter.ToUInt32(buf)})");
                }
                else if (!isUnacked)
                    Assert.True(buf.AsSpan().IndexOfAnyExcept((byte)0) < 0, $"{what}: LBA {lba}, never written, holds version {BitConverter.ToUInt32(buf)}");
            }
        }
        return (acked, later, servedMs);
    }
}
