using System.Text.Json;
using System.Text.Json.Nodes;
using StorageNode.Bdevs;
using StorageNode.Pair;
using StorageNode.Config;
using StorageNode.Nvme.Spec;
using StorageNode.Reactors;
using StorageNode.Target;
namespace StorageNode.Control;

/// <summary>
/// The management methods of a node, named and shaped as SPDK's JSON-RPC where SPDK has the same thing
/// (<c>nvmf_get_subsystems</c>, <c>bdev_get_bdevs</c>, <c>framework_get_reactors</c>, ...), plus the pair's
/// own (<c>cluster_get_status</c>). docs/management.md is the reference.
/// </summary>
public static class NodeRpc
{
    public static IReadOnlyDictionary<string, Func<JsonObject?, JsonNode?>> Methods(Node node)
    {
        var m = new SortedDictionary<string, Func<JsonObject?, JsonNode?>>(StringComparer.Ordinal);
        m["rpc_get_methods"] = p =>
        {
            NoParams(p, "rpc_get_methods");
            var a = new JsonArray();
            foreach (string k in m.Keys) a.Add(k);
            return a;
        };
        m["storagenode_get_version"] = p =>
        {
            NoParams(p, "storagenode_get_version");
            return new JsonObject
            {
                ["version"] = $"StorageNode {ThisAssembly.FirmwareRevision}",
                ["node"] = node.Config.Name,
                ["runtime"] = System.Runtime.InteropServices.RuntimeInformation.FrameworkDescription,
                ["uptime_s"] = (long)(DateTime.UtcNow - node.Target.StartedUtc).TotalSeconds,
            };
        };
        m["framework_get_reactors"] = p => { NoParams(p, "framework_get_reactors"); return Reactors(node); };
        m["bdev_get_bdevs"] = p =>
        {
            Allow(p, "name");
            string? name = OptionalString(p, "name");
            if (name != null && node.Bdevs.All(b => b.Name != name)) throw new RpcException(RpcException.NoSuchDevice, $"bdev '{name}' not found");
            var a = new JsonArray();
            foreach (Bdev b in node.Bdevs)
                if (name == null || b.Name == name) a.Add(BdevJson(b, node));
            return a;
        };
        m["bdev_get_iostat"] = p =>
        {
            Allow(p, "name");
            string? name = OptionalString(p, "name");
            IReadOnlyList<Bdev> bdevs = node.Bdevs;
            if (name != null && bdevs.All(b => b.Name != name)) throw new RpcException(RpcException.NoSuchDevice, $"bdev '{name}' not found");
            var a = new JsonArray();
            foreach (Bdev b in bdevs)
                if (name == null || b.Name == name) a.Add(IoStatJson(b));
            return new JsonObject
            {
                ["tick_rate"] = System.Diagnostics.Stopwatch.Frequency,
                ["ticks"] = System.Diagnostics.Stopwatch.GetTimestamp(),
                ["bdevs"] = a,
            };
        };
        m["nvmf_get_subsystems"] = p =>
        {
            Allow(p, "nqn");
            string? nqn = OptionalString(p, "nqn");
            var a = new JsonArray();
            if (nqn != null) a.Add(SubsystemJson(node, FindSubsystem(node, nqn)));
            else foreach (Subsystem s in node.Target.Subsystems) a.Add(SubsystemJson(node, s));
            return a;
        };
        m["nvmf_subsystem_get_controllers"] = p =>
        {
            Allow(p, "nqn");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            var a = new JsonArray();
            foreach (Controller c in s.Controllers)
            {
                if (c.IsInterconnect) continue;
                a.Add(new JsonObject
                {
                    ["cntlid"] = c.Cntlid,
                    ["hostnqn"] = c.HostNqn,
                    ["hostid"] = c.HostId.ToString(),
                    ["num_io_qpairs"] = c.IoQueues.Count,
                    ["kato_ms"] = c.KatoMs,
                    ["listen_address"] = AddressJson(c.AdminQueue.Listener),
                    ["peer_address"] = c.AdminQueue.PeerAddress,
                });
            }
            return a;
        };
        m["nvmf_subsystem_get_listeners"] = p =>
        {
            Allow(p, "nqn");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            var a = new JsonArray();
            foreach (ListenerInfo l in node.Target.Listeners)
            {
                if (l.Role == ListenerRole.Interconnect) continue;
                var states = new JsonArray();
                if (!s.IsDiscovery)
                    foreach (uint g in s.AnaGroupIds)
                        states.Add(new JsonObject { ["ana_group"] = g, ["ana_state"] = AnaName(s.GetAnaState(g, l.Role)) });
                a.Add(new JsonObject
                {
                    ["address"] = AddressJson(l),
                    ["role"] = l.Role.ToString().ToLowerInvariant(),
                    ["ana_states"] = states,
                });
            }
            return a;
        };
        m["nvmf_subsystem_set_ana_state"] = p =>
        {
            Allow(p, "nqn", "anagrpid", "ana_state");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            if (s.IsDiscovery) throw new RpcException(RpcException.InvalidParams, "the discovery subsystem has no ANA groups");
            uint group = RequiredUInt(p, "anagrpid");
            if (!s.AnaGroupIds.Contains(group)) throw new RpcException(RpcException.NoSuchDevice, $"ANA group {group} not found in {s.Nqn}");
            string state = RequiredString(p, "ana_state");
            AnaState? forced = state switch
            {
                "optimized" => AnaState.Optimized,
                "non_optimized" => AnaState.NonOptimized,
                "inaccessible" => AnaState.Inaccessible,
                "persistent_loss" => AnaState.PersistentLoss,
                "change" => AnaState.Change,
                "auto" => null,
                _ => throw new RpcException(RpcException.InvalidParams,
                    $"ana_state '{state}' is not one of optimized, non_optimized, inaccessible, persistent_loss, change, auto"),
            };
            s.SetAnaState(group, forced);
            return JsonValue.Create(true);
        };
        m["bdev_malloc_create"] = p =>
        {
            Allow(p, "name", "num_blocks", "block_size");
            uint blockSize = RequiredUInt(p, "block_size");
            ulong blocks = RequiredUInt(p, "num_blocks");
            return Changing(() => JsonValue.Create(node.CreateMallocBdev(OptionalString(p, "name"), blockSize, blocks)));
        };
        m["nvmf_subsystem_add_ns"] = p =>
        {
            Allow(p, "nqn", "namespace");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            if (p!["namespace"] is not JsonObject n) throw new RpcException(RpcException.InvalidParams, "namespace is required (an object with bdev_name)");
            Allow(n, "bdev_name", "nsid", "nguid", "uuid", "anagrpid");
            string bdev = RequiredString(n, "bdev_name");
            uint? nsid = n.ContainsKey("nsid") ? RequiredUInt(n, "nsid") : null;
            uint? group = n.ContainsKey("anagrpid") ? RequiredUInt(n, "anagrpid") : null;
            byte[]? nguid = null;
            if (OptionalString(n, "nguid") is string ng)
            {
                try { nguid = Convert.FromHexString(ng.Replace("-", "", StringComparison.Ordinal)); }
                catch (FormatException) { throw new RpcException(RpcException.InvalidParams, $"nguid '{ng}' is not hexadecimal"); }
            }
            Guid? uuid = null;
            if (OptionalString(n, "uuid") is string us)
                uuid = Guid.TryParse(us, out Guid u) ? u : throw new RpcException(RpcException.InvalidParams, $"uuid '{us}' is not a UUID");
            return Changing(() => JsonValue.Create(node.AddNamespace(s, bdev, nsid, nguid, uuid, group)));
        };
        m["nvmf_subsystem_remove_ns"] = p =>
        {
            Allow(p, "nqn", "nsid");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            uint nsid = RequiredUInt(p, "nsid");
            return Changing(() =>
            {
                node.RemoveNamespace(s, nsid, TimeSpan.FromSeconds(30)); // removed at once; waits for what was running
                return JsonValue.Create(true);
            });
        };
        m["bdev_malloc_delete"] = p =>
        {
            Allow(p, "name");
            string name = RequiredString(p, "name");
            return Changing(() =>
            {
                node.DeleteMallocBdev(name);
                return JsonValue.Create(true);
            });
        };
        m["nvmf_subsystem_add_host"] = p => HostChange(node, p, node.AllowHost);
        m["nvmf_subsystem_remove_host"] = p => HostChange(node, p, (s, host) => node.DisallowHost(s, host));
        m["nvmf_subsystem_allow_any_host"] = p =>
        {
            Allow(p, "nqn", "allow_any_host");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            bool allow = RequiredBool(p, "allow_any_host");
            return Changing(() =>
            {
                node.SetAllowAnyHost(s, allow);
                return JsonValue.Create(true);
            });
        };
        m["cluster_get_status"] = p => { NoParams(p, "cluster_get_status"); return ClusterJson(node); };
        m["cluster_takeover"] = p =>
        {
            // On the survivor: serve an ANA group of the dead partner from this node's replicas (docs/ha.md, "Takeover").
            Allow(p, "nqn", "anagrpid", "force");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            uint group = RequiredUInt(p, "anagrpid");
            bool force = p != null && p.ContainsKey("force") && RequiredBool(p, "force");
            PairNode pair = node.Pair ?? throw new RpcException(RpcException.InvalidParams, "this node is not part of a pair (Cluster)");
            if (pair.OwnershipOf(s, group) == null) throw new RpcException(RpcException.NoSuchDevice, $"ANA group {group} of {s.Nqn} is not a paired group");
            TakeoverResult r;
            try { r = pair.TakeOver(s, group, force); }
            catch (InvalidOperationException e) { throw new RpcException(RpcException.InvalidParams, e.Message); }
            catch (KeyNotFoundException e) { throw new RpcException(RpcException.NoSuchDevice, e.Message); }
            return new JsonObject
            {
                ["owner"] = r.Term.Owner,
                ["term"] = r.Term.Term,
                ["from_replica"] = new JsonArray([.. r.FromReplica.Select(n => (JsonNode)n)]),
                ["risks"] = new JsonArray([.. r.Risks.Select(x => (JsonNode)x)]),
            };
        };
        m["cluster_giveback"] = p =>
        {
            // On the node that took a group over: hand it back to its configured owner, whose replicas are in sync
            // (docs/ha.md, "Giveback").
            Allow(p, "nqn", "anagrpid");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            uint group = RequiredUInt(p, "anagrpid");
            PairNode pair = node.Pair ?? throw new RpcException(RpcException.InvalidParams, "this node is not part of a pair (Cluster)");
            if (pair.OwnershipOf(s, group) == null) throw new RpcException(RpcException.NoSuchDevice, $"ANA group {group} of {s.Nqn} is not a paired group");
            GroupTerm term;
            try { term = pair.GiveBack(s, group); }
            catch (InvalidOperationException e) { throw new RpcException(RpcException.InvalidParams, e.Message); }
            catch (KeyNotFoundException e) { throw new RpcException(RpcException.NoSuchDevice, e.Message); }
            return new JsonObject { ["owner"] = term.Owner, ["term"] = term.Term };
        };
        m["cluster_replica_discard"] = p =>
        {
            // On a namespace's owner: its data is the truth; the partner's replica is overwritten (docs/ha.md, "An owner
            // that lost its data").
            Allow(p, "nqn", "nsid");
            Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
            uint nsid = RequiredUInt(p, "nsid");
            if (s.GetNamespace(nsid) == null) throw new RpcException(RpcException.NoSuchDevice, $"namespace {nsid} not found in {s.Nqn}");
            NamespaceMirror m = node.Pair?.LinkFor(s)?.Mirrors.FirstOrDefault(x => x.Nsid == nsid)
                ?? throw new RpcException(RpcException.InvalidParams, $"namespace {nsid} of {s.Nqn} is not mirrored from this node (Cluster:Mirror, on the node that owns its ANA group)");
            return JsonValue.Create(m.Discard());
        };
        return m;
    }

    // ------------------------------------------------------------------ shapes

    private static JsonArray Reactors(Node node)
    {
        var a = new JsonArray();
        foreach (Reactor r in node.Reactors)
        {
            a.Add(new JsonObject
            {
                ["id"] = r.Id,
                ["name"] = r.Name,
                ["poll_mode"] = r.Mode.ToString().ToLowerInvariant(),
                ["iterations"] = Volatile.Read(ref r.Iterations),
                ["sleeps"] = Volatile.Read(ref r.Sleeps),
                ["pools_free"] = new JsonObject
                {
                    ["small"] = r.Pools.Small.Available,
                    ["medium"] = r.Pools.Medium.Available,
                    ["large"] = r.Pools.Large.Available,
                },
            });
        }
        return a;
    }

    /// <summary>SPDK's per-bdev fields of <c>bdev_get_iostat</c> (no latency ticks), and a few of this node's own.</summary>
    private static JsonObject IoStatJson(Bdev b)
    {
        var o = new JsonObject { ["name"] = b.Name };
        foreach ((string field, IoStat stat) in IoStatFields) o[field] = b.Stats[stat];
        return o;
    }

    /// <summary>SPDK's per-bdev fields of <c>bdev_get_iostat</c> (no latency ticks), then this node's own.</summary>
    private static readonly (string, IoStat)[] IoStatFields =
    [
        ("bytes_read", IoStat.BytesRead), ("num_read_ops", IoStat.ReadOps), ("bytes_written", IoStat.BytesWritten),
        ("num_write_ops", IoStat.WriteOps), ("bytes_unmapped", IoStat.BytesUnmapped), ("num_unmap_ops", IoStat.UnmapOps),
        ("bytes_copied", IoStat.BytesCopied), ("num_copy_ops", IoStat.CopyOps), ("io_error", IoStat.Errors),
        ("bytes_zeroed", IoStat.BytesZeroed), ("num_write_zeroes_ops", IoStat.WriteZeroesOps), ("num_flush_ops", IoStat.FlushOps),
        ("num_compare_ops", IoStat.CompareOps),
    ];

    private static JsonObject BdevJson(Bdev b, Node node)
    {
        var claims = new JsonArray();
        if (node.ClaimOf(b) is string claim) claims.Add(claim);
        return new JsonObject
        {
            ["name"] = b.Name,
            ["product_name"] = b switch
            {
                MallocBdev => "Malloc disk",
                FileBdev => "File disk",
                NullBdev => "Null disk",
                PartnerBdev => "Partner (relayed)",
                _ => b.GetType().Name,
            },
            ["block_size"] = b.BlockSize,
            ["num_blocks"] = b.BlockCount,
            ["claimed"] = claims.Count > 0,
            ["claimed_by"] = claims,
        };
    }

    private static JsonObject AddressJson(ListenerInfo l) => new()
    {
        ["trtype"] = l.Transport.Name.ToUpperInvariant(),
        ["adrfam"] = l.AdrFam == Discovery.AdrFamIpv6 ? "IPv6" : "IPv4",
        ["traddr"] = l.Address,
        ["trsvcid"] = l.Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    private static JsonObject SubsystemJson(Node node, Subsystem s)
    {
        var listen = new JsonArray();
        foreach (ListenerInfo l in node.Target.Listeners)
            if (l.Role != ListenerRole.Interconnect) listen.Add(AddressJson(l));
        var hosts = new JsonArray();
        foreach (string h in s.AllowedHosts.Order(StringComparer.Ordinal)) hosts.Add(new JsonObject { ["nqn"] = h });
        var o = new JsonObject
        {
            ["nqn"] = s.Nqn,
            ["subtype"] = s.IsDiscovery ? "Discovery" : "NVMe",
            ["listen_addresses"] = listen,
            ["allow_any_host"] = s.AllowAnyHost,
            ["hosts"] = hosts,
        };
        if (s.IsDiscovery) return o;
        o["serial_number"] = s.SerialNumber;
        o["model_number"] = s.ModelNumber;
        o["max_namespaces"] = s.MaxNamespaces;
        o["min_cntlid"] = s.MinCntlid;
        o["max_cntlid"] = s.MaxCntlid;
        o["ana_reporting"] = true;
        var nss = new JsonArray();
        foreach (Namespace ns in s.Namespaces)
        {
            nss.Add(new JsonObject
            {
                ["nsid"] = ns.Nsid,
                ["bdev_name"] = ns.Bdev.Name,
                ["name"] = ns.Bdev.Name,
                ["nguid"] = Convert.ToHexString(ns.Nguid),
                ["uuid"] = ns.Uuid.ToString(),
                ["anagrpid"] = ns.AnaGroupId,
                ["relayed"] = ns.IsRemote,
            });
        }
        o["namespaces"] = nss;
        return o;
    }

    private static JsonNode ReplicaJson(Namespace ns)
    {
        ReplicaKnowledge k = ns.ReplicaKnowledge;
        long now = System.Diagnostics.Stopwatch.GetTimestamp(), until = k.WholeUntilTicks;
        return new JsonObject
        {
            ["nsid"] = ns.Nsid,
            ["bdev"] = ns.Replica?.Name,
            ["whole"] = k.IsWhole(now),
            ["taking"] = k.Taking,
            ["owner_says"] = k.Word switch { ReplicaWord.InSync => "in_sync", ReplicaWord.Resyncing => "resyncing", _ => "out_of_sync" },
            ["epoch"] = k.Epoch,
            ["since"] = k.SinceUtc == default ? null : k.SinceUtc.ToString("O"),
            ["lease_ms"] = until > now ? (long)((until - now) * 1000 / System.Diagnostics.Stopwatch.Frequency) : 0,
            ["holds_generation"] = k.Holds.Generation == 0 ? null : k.Holds.Generation.ToString("x16"),
            ["holds_consistent"] = k.Holds.Consistent,
            ["holds_epoch"] = k.Kept.Epoch,
            ["holds_base"] = k.Kept.Base,
            ["record_error"] = k.SaveFailed,
        };
    }

    private static JsonObject ClusterJson(Node node)
    {
        PairNode? c = node.Pair;
        if (c == null) return new JsonObject { ["clustered"] = false };
        var links = new JsonArray();
        foreach (InterconnectLink l in c.Links)
        {
            InterconnectCounters k = l.Counters;
            links.Add(new JsonObject
            {
                ["nqn"] = l.Subsystem.Nqn,
                ["up"] = l.IsUp,
                ["groups"] = new JsonArray([.. c.GroupsOf(l.Subsystem).Select(o => (JsonNode)new JsonObject
                {
                    ["anagrpid"] = o.Group,
                    ["owner"] = o.Current.Owner,
                    ["term"] = o.Current.Term,
                    ["configured_owner"] = o.ConfiguredOwner,
                    ["confirmed"] = o.Confirmed,
                    ["served_here"] = o.ServedHere,
                    ["conflict"] = o.Conflict,
                    // A giveback under way: the term offered to the partner (the group is held here until it is settled).
                    ["giving_back_at"] = o.GivingBack is GroupTerm g ? g.Term : null,
                    // With a witness: the lease this node holds on the group (ms left), whether it fenced itself off the
                    // group, and whether the witness records that the owner served it alone.
                    ["witness_lease_ms"] = o.Witness?.LeaseMs,
                    ["fenced"] = o.Witness?.Fenced,
                    ["alone"] = o.Witness?.Alone,
                })]),
                ["transport"] = l.Transport,
                ["connects"] = l.ConnectCount,
                ["proxy_queues"] = l.QueuesInstalled,
                ["rdma_fallback_reason"] = l.RdmaFallbackReason,
                ["partner_access"] = l.Subsystem.PartnerAccess.ToString().ToLowerInvariant(),
                ["relayed"] = k.Relayed,
                ["queued_relays"] = l.QueuedRelays,
                ["inflight"] = l.InFlight,
                ["zero_copy_bytes"] = k.ZeroCopyBytes,
                ["in_capsule_bytes"] = k.InCapsuleBytes,
                ["bounce_copies"] = k.BounceCopies,
                ["temporary_registrations"] = k.TemporaryRegistrations,
                ["send_doorbells"] = k.Doorbells,
                ["mirrors"] = new JsonArray([.. l.Mirrors.Select(m => (JsonNode)new JsonObject
                {
                    ["nsid"] = m.Nsid,
                    ["state"] = m.State,
                    ["refused_reason"] = m.RefusedReason,
                    ["group_held"] = m.GroupHeld,
                    ["generation"] = m.DataGeneration.ToString("x16"),
                    ["epoch"] = m.Epoch,
                    ["held"] = m.Held,
                    ["dirty_regions"] = m.DirtyRegions,
                    ["resyncs"] = m.ResyncsDone,
                    ["resynced_bytes"] = m.ResyncedBytes,
                    ["last_resync_whole"] = m.LastResyncWhole,
                    ["dirty_record"] = m.DirtyRecord is not { } r ? null : new JsonObject
                    {
                        ["marked_regions"] = r.MarkedRegions,
                        ["epoch"] = r.Epoch,
                        ["flushes"] = r.Flushes,
                        ["cleared"] = r.Cleared,
                    },
                })]),
                ["replicas"] = new JsonArray([.. l.Subsystem.Namespaces.Where(ns => ns.Replica != null).Select(ns => ReplicaJson(ns))]),
            });
        }
        ClusterConfig cfg = c.Config;
        return new JsonObject
        {
            ["clustered"] = true,
            ["cluster"] = cfg.Name,
            ["node"] = cfg.LocalNode,
            ["partner"] = cfg.Partner,
            ["partner_status"] = c.Status switch
            {
                PartnerStatus.Healthy => "healthy",
                PartnerStatus.InterconnectDown => "interconnect_down",
                PartnerStatus.PartnerDown => "partner_down",
                PartnerStatus.Refused => "refused",
                _ => "unknown",
            },
            ["refused_reason"] = c.RefusedReason,
            ["partner_heard"] = c.Membership.PartnerHeard,
            ["interconnect"] = cfg.Interconnect.ToString(),
            ["partner_interconnect"] = cfg.PartnerInterconnect.ToString(),
            ["interconnect_transport"] = cfg.InterconnectTransport.ToString().ToLowerInvariant(),
            ["witness"] = c.Witness is not { } w ? null : new JsonObject
            {
                ["address"] = w.Endpoint.ToString(),
                ["answered_ms_ago"] = w.LastAnswerTicks == 0 ? null : (long)System.Diagnostics.Stopwatch.GetElapsedTime(w.LastAnswerTicks).TotalMilliseconds,
            },
            ["links"] = links,
        };
    }

    private static string AnaName(AnaState s) => s switch
    {
        AnaState.Optimized => "optimized",
        AnaState.NonOptimized => "non_optimized",
        AnaState.Inaccessible => "inaccessible",
        AnaState.PersistentLoss => "persistent_loss",
        AnaState.Change => "change",
        _ => $"0x{(byte)s:x2}",
    };

    // ------------------------------------------------------------------ parameters

    /// <summary>Runs a change, giving its refusals their JSON-RPC codes.</summary>
    private static JsonNode? Changing(Func<JsonNode?> change)
    {
        try
        {
            return change();
        }
        catch (KeyNotFoundException e) { throw new RpcException(RpcException.NoSuchDevice, e.Message); }
        catch (NotSupportedException e) { throw new RpcException(RpcException.NotPermitted, e.Message); }
        catch (ArgumentException e) { throw new RpcException(RpcException.InvalidParams, e.Message); }
        catch (InvalidOperationException e) { throw new RpcException(RpcException.Busy, e.Message); }
    }

    /// <summary><c>nvmf_subsystem_add_host</c> / <c>remove_host</c>: a change of one host on one subsystem.</summary>
    private static JsonNode? HostChange(Node node, JsonObject? p, Action<Subsystem, string> change)
    {
        Allow(p, "nqn", "host");
        Subsystem s = FindSubsystem(node, RequiredString(p, "nqn"));
        string host = RequiredString(p, "host");
        return Changing(() =>
        {
            change(s, host);
            return JsonValue.Create(true);
        });
    }

    private static Subsystem FindSubsystem(Node node, string nqn)
        => node.Target.FindSubsystem(nqn) ?? throw new RpcException(RpcException.NoSuchDevice, $"subsystem '{nqn}' not found");

    private static void NoParams(JsonObject? p, string method)
    {
        if (p is { Count: > 0 }) throw new RpcException(RpcException.InvalidParams, $"{method} takes no parameters (got '{p.First().Key}')");
    }

    private static void Allow(JsonObject? p, params string[] names)
    {
        if (p == null) return;
        foreach (var kv in p)
            if (Array.IndexOf(names, kv.Key) < 0)
                throw new RpcException(RpcException.InvalidParams, $"unknown parameter '{kv.Key}' (this method takes: {string.Join(", ", names)})");
    }

    private static string? OptionalString(JsonObject? p, string name)
    {
        if (p == null || !p.TryGetPropertyValue(name, out JsonNode? v) || v == null) return null;
        if (v is JsonValue j && j.GetValueKind() == JsonValueKind.String) return j.GetValue<string>();
        throw new RpcException(RpcException.InvalidParams, $"{name} must be a string");
    }

    private static string RequiredString(JsonObject? p, string name)
        => OptionalString(p, name) ?? throw new RpcException(RpcException.InvalidParams, $"{name} is required");

    private static bool RequiredBool(JsonObject? p, string name)
    {
        if (p == null || !p.TryGetPropertyValue(name, out JsonNode? v) || v == null)
            throw new RpcException(RpcException.InvalidParams, $"{name} is required");
        return v is JsonValue j && j.GetValueKind() is JsonValueKind.True or JsonValueKind.False
            ? j.GetValue<bool>()
            : throw new RpcException(RpcException.InvalidParams, $"{name} must be true or false");
    }

    private static uint RequiredUInt(JsonObject? p, string name)
    {
        if (p == null || !p.TryGetPropertyValue(name, out JsonNode? v) || v == null)
            throw new RpcException(RpcException.InvalidParams, $"{name} is required");
        if (v is JsonValue j && j.GetValueKind() == JsonValueKind.Number && j.TryGetValue(out long n) && n is >= 0 and <= uint.MaxValue)
            return (uint)n;
        throw new RpcException(RpcException.InvalidParams, $"{name} must be a non-negative integer");
    }
}
