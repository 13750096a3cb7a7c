using System.Diagnostics;
using System.Globalization;
using System.Net;
using StorageNode.Nvme.Host;
using StorageNode.Nvme.Spec;
using StorageNode.Perf;

namespace StorageNode.Perf
{
    /// <summary>sn-perf: connects to an NVMe/TCP subsystem and runs a workload, fio-style.</summary>
    public static class PerfTool
    {
        private const string Usage = """
            usage: sn-perf [options]
              -a, --address ADDR      target address (default 127.0.0.1)
              -s, --port PORT         target port (default 4420)
              -n, --nqn NQN           subsystem NQN (default: the first one the discovery log lists)
                  --discover          list the discovery log of ADDR:PORT and exit
                  --identify          print the controller's and namespaces' identify data and exit
                  --nsid N            namespace (default 1)
              -w, --rw PATTERN        read | write | randread | randwrite | randrw | rw (default randread)
                  --mix PCT           read percentage for randrw / rw (default 50)
              -b, --bs SIZE           block size, e.g. 512, 4k, 128k, 1m (default 4k)
              -q, --qd N              queue depth per queue (default 1)
              -j, --queues N          I/O queues per connection (default 1)
              -c, --conns N           connections (controllers), each with its own queues and its own
                                      host ID (default 1)
                  --threads N         threads driving the queues round robin (default: one per queue with
                                      one connection, else 1)
              -t, --time SECONDS      run time (default 5)
                  --ios N             stop after N I/Os per queue instead of a time
                  --size SIZE         working set from LBA 0 (default: whole namespace)
                  --verify            write self-describing blocks, check every read of them
                  --hdgst, --ddgst    enable header / data digests
                  --poll busy|adaptive  host polling (default busy)
                  --icd SIZE          largest in-capsule write (default 8k; 0 = always R2T)
                  --hostnqn NQN       host NQN (default derived from a random host ID)
                  --quiet             no progress lines
                  --json              print the result as one JSON line (for scripts)
            """;

        public static int Main(string[] args) => Execute(args);

        public static int Execute(string[] args)
        {
            try
            {
                return Run(args);
            }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"sn-perf: {e.Message}");
                Console.Error.WriteLine(Usage);
                return 2;
            }
            catch (Exception e) when (e is NvmeTransportException or NvmeCommandException or TimeoutException or System.Net.Sockets.SocketException)
            {
                Console.Error.WriteLine($"sn-perf: {e.Message}");
                return 1;
            }
        }

        public static long ParseSize(string s)
        {
            s = s.Trim().ToLowerInvariant();
            long mult = 1;
            if (s.EndsWith('k')) { mult = 1024; s = s[..^1]; }
            else if (s.EndsWith('m')) { mult = 1024 * 1024; s = s[..^1]; }
            else if (s.EndsWith('g')) { mult = 1024L * 1024 * 1024; s = s[..^1]; }
            if (!long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) || v < 0)
                throw new ArgumentException($"'{s}' is not a size");
            return v * mult;
        }

        private static int Run(string[] args)
        {
            string address = "127.0.0.1";
            int port = 4420, qd = 1, queues = 1, mix = 50, conns = 1, threadCount = 0;
            string? nqn = null, hostNqn = null;
            uint nsid = 1;
            var pattern = AccessPattern.RandRead;
            long bs = 4096, icd = 8192;
            double seconds = 5;
            long? ios = null, size = null;
            bool verify = false, hdgst = false, ddgst = false, discoverOnly = false, quiet = false, identifyOnly = false, json = false;
            var poll = HostPollMode.Busy;
            for (int i = 0; i < args.Length; i++)
            {
                string a = args[i];
                string Val() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
                int IntVal() => int.TryParse(Val(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v >= 0 ? v : throw new ArgumentException($"{a} needs a non-negative integer");
                switch (a)
                {
                    case "-a": case "--address": address = Val(); break;
                    case "-s": case "--port": port = IntVal(); break;
                    case "-n": case "--nqn": nqn = Val(); break;
                    case "--discover": discoverOnly = true; break;
                    case "--identify": identifyOnly = true; break;
                    case "--nsid": nsid = (uint)IntVal(); break;
                    case "-w": case "--rw":
                        pattern = Val().ToLowerInvariant() switch
                        {
                            "read" => AccessPattern.Read, "write" => AccessPattern.Write, "randread" => AccessPattern.RandRead,
                            "randwrite" => AccessPattern.RandWrite, "randrw" => AccessPattern.RandRw, "rw" => AccessPattern.Rw,
                            var p => throw new ArgumentException($"unknown pattern '{p}'"),
                        };
                        break;
                    case "--mix": mix = Math.Clamp(IntVal(), 0, 100); break;
                    case "-b": case "--bs": bs = ParseSize(Val()); break;
                    case "-q": case "--qd": qd = IntVal(); break;
                    case "-j": case "--queues": queues = IntVal(); break;
                    case "-c": case "--conns": conns = IntVal(); break;
                    case "--threads": threadCount = IntVal(); break;
                    case "-t": case "--time": seconds = double.Parse(Val(), CultureInfo.InvariantCulture); break;
                    case "--ios": ios = IntVal(); break;
                    case "--size": size = ParseSize(Val()); break;
                    case "--verify": verify = true; break;
                    case "--hdgst": hdgst = true; break;
                    case "--ddgst": ddgst = true; break;
                    case "--poll": poll = Val() == "adaptive" ? HostPollMode.Adaptive : HostPollMode.Busy; break;
                    case "--icd": icd = ParseSize(Val()); break;
                    case "--hostnqn": hostNqn = Val(); break;
                    case "--quiet": quiet = true; break;
                    case "--json": json = true; quiet = true; break;
                    case "-h": case "--help": Console.WriteLine(Usage); return 0;
                    default: throw new ArgumentException($"unknown option '{a}'");
                }
            }
            if (qd < 1 || queues < 1 || conns < 1) throw new ArgumentException("--qd, --queues and --conns must be at least 1");
            if (threadCount < 0) throw new ArgumentException("--threads must be at least 1");
            if (bs < 512 || bs % 512 != 0) throw new ArgumentException("--bs must be a multiple of 512");

            var ep = new IPEndPoint(IPAddress.Parse(address), port);
            var baseOptions = new NvmeHostOptions { HostNqn = hostNqn, HeaderDigest = hdgst, DataDigest = ddgst };
            if (discoverOnly || nqn == null)
            {
                using NvmeHost disc = NvmeHost.Connect(ep, WellKnownNqn.Discovery, baseOptions with { IoQueues = 0 });
                IReadOnlyList<DiscoveryEntry> log = disc.GetDiscoveryLog();
                if (discoverOnly)
                {
                    Console.WriteLine($"Discovery log of {ep}: {log.Count} record(s)");
                    foreach (DiscoveryEntry e in log)
                        Console.WriteLine($"  subtype {e.SubType} trtype {(e.TrType == 3 ? "tcp" : e.TrType.ToString())} traddr {e.TrAddr} trsvcid {e.TrSvcId} portid {e.PortId} subnqn {e.SubNqn}");
                    return 0;
                }
                DiscoveryEntry? nvm = log.FirstOrDefault(e => e.SubType == Discovery.SubTypeNvm)
                    ?? throw new ArgumentException($"the discovery log of {ep} lists no NVM subsystem");
                nqn = nvm.SubNqn;
                ep = new IPEndPoint(IPAddress.Parse(nvm.TrAddr), int.Parse(nvm.TrSvcId, CultureInfo.InvariantCulture));
                Console.WriteLine($"discovered {nqn} at {ep}");
            }

            if (identifyOnly)
            {
                using NvmeHost idHost = NvmeHost.Connect(ep, nqn, baseOptions with { IoQueues = 0 });
                PrintIdentify(idHost);
                return 0;
            }

            var hosts = new List<NvmeHost>();
            try
            {
                for (int c = 0; c < conns; c++)
                {
                    // Each connection is a host of its own (host ID, and the NQN derived from it): connections of
                    // one host would be paths of one host, which an owner runs one at a time (docs/ha.md).
                    hosts.Add(NvmeHost.Connect(ep, nqn, baseOptions with
                    {
                        HostId = c == 0 ? baseOptions.HostId : Guid.NewGuid(),
                        IoQueues = queues,
                        IoQueueDepth = qd,
                        InCapsuleDataSize = (uint)icd,
                    }));
                }
                return RunWorkload(hosts, nqn, nsid, pattern, bs, qd, seconds, ios, size, mix, verify, hdgst, ddgst, poll, threadCount, quiet, json);
            }
            finally
            {
                foreach (NvmeHost h in hosts) h.Dispose();
            }
        }

        private static int RunWorkload(List<NvmeHost> hosts, string nqn, uint nsid, AccessPattern pattern, long bs, int qd, double seconds,
            long? ios, long? size, int mix, bool verify, bool hdgst, bool ddgst, HostPollMode poll, int threadCount, bool quiet, bool json)
        {
            NvmeHost host = hosts[0];
            if (host.IoQueues.Count == 0) throw new ArgumentException("the controller granted no I/O queue");
            if (host.IoQueues[0].Queue.Depth < qd) throw new ArgumentException($"--qd {qd} exceeds the controller's maximum queue size ({host.IoQueues[0].Queue.Depth})");
            NamespaceInfo ns = host.IdentifyNamespace(nsid);
            if (ns.BlockCount == 0) throw new ArgumentException($"namespace {nsid} is not active on {nqn}");
            if (bs % ns.BlockSize != 0) throw new ArgumentException($"--bs {bs} is not a multiple of the namespace block size {ns.BlockSize}");
            if (bs > host.MaxTransferSize) throw new ArgumentException($"--bs {bs} exceeds the controller's MDTS ({host.MaxTransferSize} B)");
            ulong regionBlocks = size is long sz ? Math.Min((ulong)sz / ns.BlockSize, ns.BlockCount) : ns.BlockCount;
            List<IoQueue> queueList = hosts.SelectMany(h => h.IoQueues).ToList();
            int nq = queueList.Count;
            Console.WriteLine($"{host.ModelNumber} (SN {host.SerialNumber}, FR {host.FirmwareRevision}), cntlid {host.Cntlid}, nsid {nsid}: {ns.BlockCount} x {ns.BlockSize} B");
            Console.WriteLine($"{pattern.ToString().ToLowerInvariant()} bs={bs} qd={qd} connections={hosts.Count} queues={nq}{(verify ? " verify" : "")}{(hdgst ? " hdgst" : "")}{(ddgst ? " ddgst" : "")} over {regionBlocks * ns.BlockSize >> 20} MiB");

            ulong perQueue = regionBlocks / (ulong)nq;
            var runners = new WorkloadRunner[nq];
            for (int i = 0; i < nq; i++)
            {
                runners[i] = new WorkloadRunner(queueList[i], new WorkloadOptions
                {
                    Pattern = pattern,
                    BlockSize = (int)bs,
                    QueueDepth = qd,
                    Duration = TimeSpan.FromSeconds(seconds),
                    IoCount = ios,
                    ReadPercent = mix,
                    Verify = verify,
                    Nsid = nsid,
                    RegionLba = perQueue * (ulong)i,
                    RegionBlocks = perQueue,
                    LbaSize = ns.BlockSize,
                    Seed = i + 1,
                    Poll = poll,
                });
            }
            int nt = Math.Min(nq, threadCount > 0 ? threadCount : hosts.Count == 1 ? nq : 1);
            var results = new WorkloadResult[nq];
            var threads = new Thread[nt];
            for (int t = 0; t < nt; t++)
            {
                // Thread t drives queues t, t + nt, t + 2nt, ...
                int[] mine = Enumerable.Range(0, nq).Where(i => i % nt == t).ToArray();
                WorkloadRunner[] group = mine.Select(i => runners[i]).ToArray();
                threads[t] = new Thread(() =>
                {
                    WorkloadResult[] r = WorkloadRunner.RunMany(group, poll);
                    for (int k = 0; k < mine.Length; k++) results[mine[k]] = r[k];
                }) { IsBackground = true, Name = $"perf t{t + 1}" };
            }
            var sw = Stopwatch.StartNew();
            foreach (Thread t in threads) t.Start();
            long last = 0;
            while (threads.Any(t => t.IsAlive))
            {
                threads[0].Join(1000);
                if (quiet || !threads.Any(t => t.IsAlive)) continue;
                long now = runners.Sum(r => Interlocked.Read(ref r.CompletedIos));
                Console.WriteLine($"  {sw.Elapsed.TotalSeconds,5:0.0}s  {now - last,10:N0} IOPS  {(now - last) * bs / 1048576.0,9:0.0} MiB/s");
                last = now;
            }
            var total = new WorkloadResult();
            foreach (WorkloadResult r in results) total.Add(r);
            foreach (WorkloadRunner r in runners) r.Dispose();
            if (json) PrintJson(total, qd, bs);
            else PrintReport(total);
            return total.Errors == 0 && total.VerifyFailures == 0 ? 0 : 3;
        }

        private static void PrintIdentify(NvmeHost h)
        {
            byte[] id = h.IdentifyControllerData;
            Console.WriteLine($"subsystem  {h.SubsystemNqn}");
            Console.WriteLine($"controller cntlid {h.Cntlid}  sn '{h.SerialNumber}'  mn '{h.ModelNumber}'  fr '{h.FirmwareRevision}'");
            Console.WriteLine($"           ver {id[82]}.{id[81]}  cmic 0x{id[76]:X2}  mdts {id[77]} ({h.MaxTransferSize} B)  kas {BitConverter.ToUInt16(id, 320)}  maxcmd {BitConverter.ToUInt16(id, 514)}");
            Console.WriteLine($"           nn {h.NamespaceCount}  mnan {BitConverter.ToUInt32(id, 540)}  oncs 0x{BitConverter.ToUInt16(id, 520):X}  vwc 0x{id[525]:X}  sgls 0x{BitConverter.ToUInt32(id, 536):X}");
            Console.WriteLine($"           ioccsz {h.Ioccsz}  iorcsz {BitConverter.ToUInt32(id, 1796)}  anacap 0x{id[343]:X2}  anagrpmax {BitConverter.ToUInt32(id, 344)}  nanagrpid {BitConverter.ToUInt32(id, 348)}");
            foreach (uint nsid in h.ActiveNamespaces())
            {
                NamespaceInfo ns = h.IdentifyNamespace(nsid);
                Console.WriteLine($"namespace  {nsid}: {ns.BlockCount} x {ns.BlockSize} B ({ns.SizeBytes >> 20} MiB)  nmic {ns.Nmic}  anagrpid {ns.AnaGroupId}  nguid {Convert.ToHexString(ns.Nguid).ToLowerInvariant()}");
            }
        }

        public static void PrintJson(WorkloadResult r, int qd, long bs)
        {
            static string Us(long ns) => (ns / 1000.0).ToString("0.00", CultureInfo.InvariantCulture);
            string F(double v) => v.ToString("0", CultureInfo.InvariantCulture);
            Console.WriteLine($"{{\"qd\": {qd}, \"bs\": {bs}, \"seconds\": {r.Elapsed.TotalSeconds.ToString("0.000", CultureInfo.InvariantCulture)}, \"ops\": {r.Ios}, " +
                $"\"iops\": {F(r.Iops)}, \"bytes_per_s\": {F(r.BytesPerSecond)}, \"mean_us\": {Us((long)r.Latency.MeanNs)}, \"p50_us\": {Us(r.Latency.Percentile(50))}, " +
                $"\"p99_us\": {Us(r.Latency.Percentile(99))}, \"p999_us\": {Us(r.Latency.Percentile(99.9))}, \"max_us\": {Us(r.Latency.MaxNs)}, \"errors\": {r.Errors}}}");
        }

        public static void PrintReport(WorkloadResult r)
        {
            static string Us(long ns) => (ns / 1000.0).ToString("0.0", CultureInfo.InvariantCulture);
            Console.WriteLine($"result: {r.Iops:N0} IOPS, {r.BytesPerSecond / 1048576.0:0.0} MiB/s over {r.Elapsed.TotalSeconds:0.00} s ({r.Reads:N0} reads, {r.Writes:N0} writes)");
            Console.WriteLine($"latency (us): mean {Us((long)r.Latency.MeanNs)}  p50 {Us(r.Latency.Percentile(50))}  p99 {Us(r.Latency.Percentile(99))}  p99.9 {Us(r.Latency.Percentile(99.9))}  max {Us(r.Latency.MaxNs)}");
            Console.WriteLine($"errors: {r.Errors}, verify failures: {r.VerifyFailures}{(r.FirstError != null ? $" (first: {r.FirstError})" : "")}");
        }
    }
}
