# Two-guest mode (run-pair.sh): the HA pair with one node per guest, the interconnect over soft-RoCE (rxe on
# eth1), and the Linux kernel NVMe/TCP host (native multipath) in guest b.
#  Node A (guest a, 192.168.100.1) owns NSID 1; node B (guest b, 192.168.100.2) owns NSID 2 and serves NSID 1
#  through its proxy: B's proxy queues run NVMe/RDMA to A, so A moves relayed data with RDMA READ/WRITE straight
#  in and out of B's registered buffer pools.
#  For every transport in HA_TRANSPORTS (default "rdma"; "rdma tcp" for the comparison) one pair runs, pair k on
#  ports 4420+k (hosts), 4430+k (interconnect), 4440+k (heartbeats), subsystem nqn.2026-11.io.storagenode:ha-T,
#  with Cluster:InterconnectTransport = T.
#  b: waits for each B's "interconnect ... up over NVMe/T" line, then on pair 0 (as a Linux host):
#   1. only B's (non-optimized) path connected: 128 KiB sequential writes + read-back verify of 16 MiB, all
#      relayed; then B's counters (SIGUSR1): zero-copy bytes >= 32 MiB, nothing copied, nothing registered per
#      command (HA_COPY_CHECK=0 skips that for a TCP pair 0);
#   2. with BENCH_ROUNDS=N: N interleaved rounds over the pairs of 4 KiB random reads through B's proxy path,
#      QD1 and QD16 (BENCH_SECONDS each), one "BENCH transport qd iops mean_us" line per run;
#   3. (unless FAILOVER=0) A's path through a local forwarder (socat on 127.0.0.1:5420 -> 192.168.100.1:4420):
#      two paths (optimized + non-optimized); fio crc32c verify on NSID 1 while the owner path is cut (the
#      forwarder killed, kept cut CUT_SECONDS), 0 errors, 0 verify failures, the path back afterwards.
#   4. with MIRROR=1 (Cluster:Mirror; each node keeps its replica of the partner's namespace in a file,
#      /tmp/replica-K.img, on io_uring): B's replica of NSID 1 whole (B's cluster_get_status), then equal to NSID 1
#      as the host reads it through B's path, which B relays to A (md5 of all 64 MiB: every write above, relayed or
#      not, is on it); a checks that
#      its writes' copies went with no copy on A: the keeper read them from A's registered pools (zero-copy bytes,
#      nothing in-capsule, nothing copied).
#  a: runs node(s) A until b reports (a TCP line on DONE_PORT), then both stop with SIGTERM: exit 0, no
#     fail:/crit: in their logs ($RIG_OUT/node-*.log).
#  Clocks: each guest prints its uptime (CLOCK_MONOTONIC since its boot) and wall clock at the start ("START ...");
#  each node's "partner P's clock reads +X s from this node's" line (logged when its interconnect comes up) is
#  printed; with STAGGER_EXPECT=S (run-pair.sh's RIG_STAGGER starts b later, so the guests' monotonic clocks
#  differ) b checks that B sees A's clock at least S s away, and a that A sees B's (partner-clock-offset-T,
#  node-AK-partner-clock-offset).
# Env: NODE_DLL (a path visible in the guests), HA_TRANSPORTS, FIO_RUNTIME (40), CUT_SECONDS (8), BENCH_ROUNDS (0),
#      BENCH_SECONDS (10), FAILOVER (1), POLL_MODE (adaptive: the nodes' Node:PollMode),
#      MIRROR (0), RDMA_ACK_TIMEOUT (0: rdma_cm's default; else Cluster:RdmaAckTimeout of the rdma pairs), DONE_PORT (7999),
#      WAIT_DONE (600; a waits RIG_STAGGER s longer), STAGGER_EXPECT (0: no clock offset check; whole seconds).
export SUBNQN=${SUBNQN:-nqn.2026-11.io.storagenode:ha-rdma}
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
export DOTNET_CLI_HOME=/tmp HOME=/tmp
read -r UP0 _ < /proc/uptime
echo "START $RIG_NODE uptime ${UP0} s, wall clock $(date +%s.%N) s (RIG_STAGGER ${RIG_STAGGER:-0} s, STAGGER_EXPECT ${STAGGER_EXPECT:-0} s)"
D=${DONE_PORT:-7999}
IPA=192.168.100.1 IPB=192.168.100.2
read -r -a TRS <<< "${HA_TRANSPORTS:-rdma}"
if rdma link add rxe0 type rxe netdev eth1; then ok rxe "rxe0 on eth1 $(ip -br -4 addr show eth1 | awk '{print $3}')"
else fail rxe "(rdma link add failed)"; finish; fi

# config NODE K TRANSPORT > file
config() {
  local me=$1 k=$2 t=$3 partner mine theirs ns1 ns2 ids
  if [ "$me" = A ]; then partner=B mine=$IPA theirs=$IPB ids='"ControllerIdMin": 1, "ControllerIdMax": 32767'
  else partner=A mine=$IPB theirs=$IPA ids='"ControllerIdMin": 32768, "ControllerIdMax": 65519'; fi
  local local_ns='"Bdev": "Malloc0"' remote_ns='"SizeMiB": 64, "BlockSize": 4096' ack= mirror= replica=
  [ "$t" != tcp ] && [ "${RDMA_ACK_TIMEOUT:-0}" != 0 ] && ack=", \"RdmaAckTimeout\": $RDMA_ACK_TIMEOUT"
  if [ "${MIRROR:-0}" = 1 ]; then
    mirror=', "Mirror": true' remote_ns="$remote_ns, \"ReplicaBdev\": \"Replica\""
    replica=", { \"Name\": \"Replica\", \"Type\": \"file\", \"Path\": \"/tmp/replica-$k.img\", \"SizeMiB\": 64, \"BlockSize\": 4096 }"
  fi
  if [ "$me" = A ]; then ns1=$local_ns ns2=$remote_ns; else ns1=$remote_ns ns2=$local_ns; fi
  cat <<EOF
{
  "Node": { "Name": "$me", "Reactors": 1, "PollMode": "${POLL_MODE:-adaptive}",
            "Pools": { "SmallBufferCount": 256, "MediumBufferCount": 64, "LargeBufferCount": 8 } },
  "Cluster": { "Name": "ha$k", "Partner": "$partner", "InterconnectTransport": "$t",
               "Interconnect": "$mine:$((4430 + k))", "PartnerInterconnect": "$theirs:$((4430 + k))",
               "Heartbeat": "$mine:$((4440 + k))", "PartnerHeartbeat": "$theirs:$((4440 + k))",
               "HeartbeatIntervalMs": 250, "HeartbeatTimeoutMs": 3000$ack$mirror },
  "Control": { "RpcSocket": "/tmp/sn-$k.sock" },
  "Listeners": [ { "Transport": "tcp", "Address": "$mine", "Port": $((4420 + k)) } ],
  "Bdevs": [ { "Name": "Malloc0", "Type": "malloc", "SizeMiB": 64, "BlockSize": 4096 }$replica ],
  "Subsystems": [ { "Nqn": "nqn.2026-11.io.storagenode:ha-$t", "SerialNumber": "SNHA000$k", "ModelNumber": "StorageNode HA", $ids,
                    "AnaGroups": [ { "Id": 1, "Owner": "A" }, { "Id": 2, "Owner": "B" } ],
                    "Namespaces": [ { "Nsid": 1, "AnaGroup": 1, $ns1 }, { "Nsid": 2, "AnaGroup": 2, $ns2 } ] } ]
}
EOF
}

# clock_offset NAME PARTNER LOG: prints the node's last "partner PARTNER's clock reads +X s from this node's (within
# U us)"; with STAGGER_EXPECT > 0, checks |X| >= STAGGER_EXPECT (the guests' monotonic clocks differ by the stagger).
clock_offset() {
  local line off unc whole end=$((SECONDS + 10))   # the logger writes it a moment after the "up" line: bounded wait
  while [ $SECONDS -lt $end ] && ! grep -q "partner $2's clock reads " "$3"; do sleep 0.2; done
  line=$(grep "partner $2's clock reads " "$3" | tail -n 1)
  off=$(sed -nE 's/.*clock reads ([+-][0-9]+[.,][0-9]+) s from .*/\1/p' <<< "$line")
  unc=$(sed -nE 's/.*\(within (-?[0-9]+) us\).*/\1/p' <<< "$line")
  echo "  node $ME: partner $2's clock reads ${off:-?} s from this node's (within ${unc:-?} us); this guest's uptime: $(cut -d' ' -f1 /proc/uptime) s now, $UP0 s at the start"
  [ "${STAGGER_EXPECT:-0}" -gt 0 ] || return 0
  whole=${off#[+-]}; whole=${whole%%[.,]*}
  if [[ $whole =~ ^[0-9]+$ ]] && [ "$whole" -ge "$STAGGER_EXPECT" ]; then ok "$1" "$off s, within $unc us; |offset| >= $STAGGER_EXPECT s"
  elif [ -z "$line" ]; then fail "$1" "(no \"partner $2's clock reads\" line in the node's log)"
  else fail "$1" "(got '${off}' in '$line', expected |offset| >= $STAGGER_EXPECT s)"; fi
}
# cpu: this guest's CPU time so far ("user system softirq idle", in clock ticks), for a run's breakdown.
cpu() { awk '/^cpu /{print $2+$3, $4+$7, $8, $5+$6}' /proc/stat; }
# cpu_pct BEFORE AFTER: the shares of user, system, softirq and idle time between two cpu readings.
cpu_pct() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x); split(b, y); t = 0; for (i = 1; i <= 4; i++) { d[i] = y[i] - x[i]; t += d[i] }
  if (t > 0) printf "user %d%% sys %d%% softirq %d%% idle %d%%", 100*d[1]/t, 100*d[2]/t, 100*d[3]/t, 100*d[4]/t }'; }
# rxe_counts: this guest's soft-RoCE "retransmission-timeouts duplicates-received" so far.
rxe_counts() { rdma statistic show link rxe0/1 2>/dev/null | tr -s ' \n' ' ' | awk '{ for (i = 1; i < NF; i++) { if ($i == "completer_retry_err") r = $(i+1); if ($i == "duplicate_request") d = $(i+1) } } END { print r + 0, d + 0 }'; }
# field NAME LINE: the number after NAME in a counters line ("relayed 9, zero-copy 16384 B, ...").
field() { sed -nE "s/.*[ ,;]$1 ([0-9]+).*/\1/p" <<< "$2"; }
# rpc K METHOD: node K's answer to a JSON-RPC call without parameters (its management socket; bounded).
rpc() { echo "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$2\"}" | timeout 20 socat -t 10 - UNIX-CONNECT:"/tmp/sn-$1.sock"; }
ME=$(echo "$RIG_NODE" | tr ab AB)
PIDS=()
for k in "${!TRS[@]}"; do
  config "$ME" "$k" "${TRS[$k]}" > "/tmp/node-$k.json"
  dotnet "${NODE_DLL:?}" --config "/tmp/node-$k.json" > "/tmp/node-$k.log" 2>&1 & PIDS[$k]=$!
done
if [ "$RIG_NODE" = a ]; then
  timeout -k 5 "$((${WAIT_DONE:-600} + ${RIG_STAGGER:-0}))" socat -u TCP-LISTEN:"$D",reuseaddr,bind="$IPA" - > /tmp/done.txt 2>/tmp/done.err & waiter=$!
fi
for k in "${!TRS[@]}"; do
  end=$((SECONDS + 150))
  while [ $SECONDS -lt $end ] && kill -0 "${PIDS[$k]}" 2>/dev/null && ! grep -q 'ready\.' "/tmp/node-$k.log"; do sleep 0.5; done
  if grep -q 'ready\.' "/tmp/node-$k.log"; then ok "node-$ME$k-started" "${TRS[$k]} interconnect"
  else fail "node-$ME$k-started" "($(tail -n 5 "/tmp/node-$k.log" | tr '\n' ' '))"; fi
done

# stop_nodes: SIGTERM, bounded wait, exit status and log checks for every node of this guest.
stop_nodes() {
  local k rc end
  # soft-RoCE's own counters (retransmissions, sequence errors, RNR): how the emulated link behaved.
  echo "  rxe0 statistics: $(rdma statistic show link rxe0/1 2>/dev/null | tr -s ' \n' ' ')"
  for k in "${!TRS[@]}"; do kill -TERM "${PIDS[$k]}" 2>/dev/null; done
  for k in "${!TRS[@]}"; do
    end=$((SECONDS + 30)); while [ $SECONDS -lt $end ] && kill -0 "${PIDS[$k]}" 2>/dev/null; do sleep 0.2; done
    kill -0 "${PIDS[$k]}" 2>/dev/null && { kill -9 "${PIDS[$k]}"; echo "node $ME$k did not stop within 30 s"; }
    wait "${PIDS[$k]}"; rc=$?
    expect_eq "node-$ME$k-exit" "$rc" 0
    cp "/tmp/node-$k.log" "$RIG_OUT/node-$ME$k.log" 2>/dev/null
    expect_eq "node-$ME$k-log-errors" "$(grep -cE ' (fail|crit): |Unhandled exception' "/tmp/node-$k.log")" 0
    grep -A1 -E '^(info|warn): (cluster|rdma)' "/tmp/node-$k.log" | grep -vE '^(info|warn|--)' | tail -n 25 | sed "s/^ */  node $ME$k: /"
    grep -E 'stats:|interconnect nqn' "/tmp/node-$k.log" | sed "s/^/  node $ME$k: /"
    grep -m 10 -E ' (fail|crit): |Unhandled exception' -A 5 "/tmp/node-$k.log" | sed "s/^/  node $ME$k: /"
  done
}

if [ "$RIG_NODE" = a ]; then
  if [ "${BENCH_ROUNDS:-0}" -gt 0 ]; then   # a's CPU shares every 5 s (uptime-stamped, to set beside b's BENCH lines)
    ( p=$(cpu); while kill -0 $waiter 2>/dev/null; do sleep 5; q=$(cpu); echo "  a cpu at $(cut -d' ' -f1 /proc/uptime)s: $(cpu_pct "$p" "$q"); rxe timeouts, duplicates so far: $(rxe_counts)"; p=$q; done ) &
  fi
  wait $waiter
  # A's side of the interconnect: its accepted QPs run with the configured ACK timeout too.
  for k in "${!TRS[@]}"; do
    if [ "${TRS[$k]}" = rdma ] && [ "${RDMA_ACK_TIMEOUT:-0}" != 0 ]; then
      expect_ge "node-A$k-interconnect-qps-ack-timeout" "$(grep -A1 'interconnect NVMe/RDMA queue' "/tmp/node-$k.log" | grep -c "QP ACK timeout $RDMA_ACK_TIMEOUT (")" 2
    fi
  done
  # A's view of B's clock (its own interconnect to B came up once B started).
  for k in "${!TRS[@]}"; do clock_offset "node-A$k-partner-clock-offset" B "/tmp/node-$k.log"; done
  expect_eq host-result "$(head -c 200 /tmp/done.txt | tr -d '\n')" "b 0"
  for k in "${!TRS[@]}"; do kill -USR1 "${PIDS[$k]}" 2>/dev/null; done; sleep 1
  if [ "${MIRROR:-0}" = 1 ] && [ "${TRS[0]}" = rdma ]; then
    # A's interconnect carried its writes' copies (and nothing else written: the host writes NSID 1 only): the keeper
    # read them in place from A's registered pools. The totals: the line A logs when its link to B goes down (b stops B
    # once it has reported), else A's counters now.
    end=$((SECONDS + 60))
    while [ $SECONDS -lt $end ] && ! grep -q 'RDMA interconnect counters:' /tmp/node-0.log; do sleep 0.5; done
    c=$(grep -E 'RDMA interconnect counters:|interconnect nqn' /tmp/node-0.log | grep -v ': down;' | tail -n 1)
    echo "  A's counters: ${c#*counters: }"
    expect_ge mirror-copies-zero-copy-bytes "$(field zero-copy "$c")" $((16 * 1024 * 1024))
    # (the interconnect's own control commands put a few hundred bytes in capsules; one 4 KiB copy would be more)
    n=$(field in-capsule "$c"); expect_true mirror-copies-in-capsule-bytes "${n:-?} B" test "${n:-4096}" -lt 4096
    expect_eq mirror-copies-copied "$(field copied "$c")" 0
    expect_eq mirror-copies-registered-per-command "$(field command "$c")" 0
  fi
  stop_nodes
  finish
fi

# ---- b: B's node(s) and the Linux host
report() {
  local rc=$1 i
  for i in $(seq 30); do echo "b $rc" | timeout 5 socat -u - TCP:"$IPA":"$D" 2>/dev/null && return 0; sleep 1; done
  echo "could not report to a"
}
for k in "${!TRS[@]}"; do
  t=${TRS[$k]} want=TCP; [ "$t" = rdma ] && want=RDMA
  end=$((SECONDS + 180))
  while [ $SECONDS -lt $end ] && ! grep -q "interconnect to A up over NVMe/$want" "/tmp/node-$k.log"; do sleep 1; done
  if grep -q "interconnect to A up over NVMe/$want" "/tmp/node-$k.log"; then
    ok "interconnect-$t" "$(grep -m1 -o "up over NVMe/$want.*" "/tmp/node-$k.log")"
    # The ACK timeout configured is the one the QPs run with (as the device reports it).
    if [ "$t" = rdma ] && [ "${RDMA_ACK_TIMEOUT:-0}" != 0 ]; then
      check "interconnect-$t-ack-timeout" grep -q "up over NVMe/RDMA.*QP ACK timeout $RDMA_ACK_TIMEOUT (" "/tmp/node-$k.log"
    fi
    # B's estimate of A's clock, logged right after the "up" line.
    clock_offset "partner-clock-offset-$t" A "/tmp/node-$k.log"
  else fail "interconnect-$t" "($(grep -E 'interconnect|partner' "/tmp/node-$k.log" | tail -n 3 | tr '\n' ' '))"; fi
done
if [ "$FAILS" -gt 0 ]; then report 1; stop_nodes; finish; fi

# counters K: B's interconnect counters line (SIGUSR1), e.g. "... rdma; relayed 9, zero-copy 16384 B, ..."
counters() {
  local before; before=$(grep -c 'interconnect nqn' "/tmp/node-$1.log")
  kill -USR1 "${PIDS[$1]}"
  local end=$((SECONDS + 20))
  while [ $SECONDS -lt $end ] && [ "$(grep -c 'interconnect nqn' "/tmp/node-$1.log")" -le "$before" ]; do sleep 0.2; done
  grep 'interconnect nqn' "/tmp/node-$1.log" | tail -n 1
}
# loops K: node K's reactor loop counts "iterations sleeps" (from its last stats; call counters first).
loops() { grep 'reactor .*: iterations=' "/tmp/node-$1.log" | tail -n 1 | sed -E 's/.*iterations=([0-9]+) sleeps=([0-9]+).*/\1 \2/'; }

# 1. Relayed only: B's path alone (non-optimized), 128 KiB writes and read-back verify, all through the proxy.
for k in "${!TRS[@]}"; do
  check "connect-proxy-path-${TRS[$k]}" nvme connect -t tcp -a "$IPB" -s $((4420 + k)) -n "nqn.2026-11.io.storagenode:ha-${TRS[$k]}"
done
N=nqn.2026-11.io.storagenode:ha-${TRS[0]}
if ! wait_ns 1 30; then fail proxy-namespace "(NSID 1 did not appear)"; report 1; stop_nodes; finish; fi
dev=$(ns_dev 1)
nvme list-subsys "$dev" | sed 's/^/  /'
check proxy-path-non-optimized sh -c "nvme list-subsys $dev | grep -q 'trsvcid=4420.* live non-optimized'"
c0=$(counters 0)
run fio --name=relayed128k --filename="$dev" --ioengine=libaio --direct=1 --rw=write --bs=128k --size=16M --iodepth=4 \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --eta=never --output-format=json --output=/tmp/fio128.json; rc=$?
sed -n '/^{/,$p' /tmp/fio128.json > /tmp/fio.clean && mv /tmp/fio.clean /tmp/fio128.json; cp /tmp/fio128.json "$RIG_OUT/" 2>/dev/null
expect_eq relayed-128k-fio "$rc" 0
expect_eq relayed-128k-errors "$(jq -r '.jobs[0].error' /tmp/fio128.json)" 0
expect_eq relayed-128k-verified-kib "$(jq -r '.jobs[0].read.io_kbytes' /tmp/fio128.json)" 16384
c1=$(counters 0)
echo "  B's counters before: ${c0#*: }"
echo "  B's counters after:  ${c1#*: }"
if [ "${TRS[0]}" = rdma ] && [ "${HA_COPY_CHECK:-1}" = 1 ]; then
  expect_ge relayed-zero-copy-bytes "$(( $(field zero-copy "$c1") - $(field zero-copy "$c0") ))" $((32 * 1024 * 1024))
  expect_eq relayed-bounce-copies "$(( $(field copied "$c1") - $(field copied "$c0") ))" 0
  expect_eq relayed-temporary-registrations "$(( $(field command "$c1") - $(field command "$c0") ))" 0
fi

# 2. The comparison: interleaved rounds of 4 KiB random reads through each pair's proxy path.
for r in $(seq "${BENCH_ROUNDS:-0}"); do
  for qd in 1 16; do
    for k in "${!TRS[@]}"; do
      N=nqn.2026-11.io.storagenode:ha-${TRS[$k]}; d=$(ns_dev 1)
      counters "$k" > /dev/null; l0=$(loops "$k")
      u0=$(cpu) t0=$(cut -d' ' -f1 /proc/uptime) x0=$(rxe_counts)
      run fio --name=bench --filename="$d" --ioengine=libaio --direct=1 --rw=randread --bs=4k --size=32M --iodepth=$qd \
          --time_based --runtime="${BENCH_SECONDS:-10}" --ramp_time=1 --eta=never --output-format=json --output=/tmp/b.json > /dev/null 2>&1
      sed -n '/^{/,$p' /tmp/b.json > /tmp/b.clean
      u1=$(cpu) x1=$(rxe_counts)
      counters "$k" > /dev/null; l1=$(loops "$k")
      per=$(awk -v a="$l0" -v b="$l1" -v n="$(jq -r '.jobs[0].read.total_ios' /tmp/b.clean)" 'BEGIN { split(a, x); split(b, y); if (n > 0) printf "%.1f iterations, %.2f sleeps", (y[1]-x[1])/n, (y[2]-x[2])/n }')
      echo "BENCH round $r ${TRS[$k]} qd $qd $(jq -r '.jobs[0].read | "\(.iops|floor) \(.lat_ns.mean/1000|floor)"' /tmp/b.clean) (b at ${t0}s: $(cpu_pct "$u0" "$u1"); B's reactor per I/O: $per; b's rxe: $(awk -v a="$x0" -v b="$x1" 'BEGIN { split(a, x); split(b, y); printf "%d timeouts, %d duplicates", y[1]-x[1], y[2]-x[2] }'))"
    done
  done
done
for k in "${!TRS[@]}"; do [ "$k" -gt 0 ] && timeout 30 nvme disconnect -n "nqn.2026-11.io.storagenode:ha-${TRS[$k]}" > /dev/null 2>&1; done
N=nqn.2026-11.io.storagenode:ha-${TRS[0]}

# 3. Failover: A's path through a local forwarder, cut while fio verifies.
if [ "${FAILOVER:-1}" = 1 ]; then
  fwd() { socat TCP-LISTEN:5420,bind=127.0.0.1,reuseaddr,fork TCP:"$IPA":4420 2>/dev/null & FWD=$!; }
  # cut: the listener and every connection it forked (children found by parent PID), never by name.
  cut() { local c; for c in $(ps -o pid= --ppid "$FWD" 2>/dev/null); do kill -9 "$c" 2>/dev/null; done; kill -9 "$FWD" 2>/dev/null; wait "$FWD" 2>/dev/null; }
  fwd; sleep 0.5
  check connect-owner-path nvme connect -t tcp -a 127.0.0.1 -s 5420 -n "$N"
  end=$((SECONDS + 30))
  while [ $SECONDS -lt $end ] && [ "$(nvme list-subsys "$dev" 2>/dev/null | grep -c ' live ')" -lt 2 ]; do sleep 0.5; done
  nvme list-subsys "$dev" | tee /tmp/ls.txt | sed 's/^/  /'
  expect_eq two-paths "$(grep -c ' live ' /tmp/ls.txt)" 2
  check owner-path-optimized grep -q "trsvcid=5420.* live optimized" /tmp/ls.txt
  check partner-path-non-optimized grep -q "trsvcid=4420.* live non-optimized" /tmp/ls.txt
  c2=$(counters 0)
  fio --name=failover --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
      --iodepth=16 --numjobs=2 --size=24M --offset_increment=24M --time_based --runtime="${FIO_RUNTIME:-40}" \
      --verify=crc32c --verify_backlog=256 --verify_fatal=1 --group_reporting --eta=never \
      --output-format=json --output=/tmp/fio.json & fio=$!
  sleep 6
  cut; echo "  owner path cut at $SECONDS s"
  sleep "${CUT_SECONDS:-8}"
  fwd; echo "  owner path back at $SECONDS s"
  end=$((SECONDS + ${FIO_RUNTIME:-40} + 120))
  while [ $SECONDS -lt $end ] && kill -0 $fio 2>/dev/null; do sleep 1; done
  kill -0 $fio 2>/dev/null && { kill -9 $fio; echo "fio did not end in time"; }
  wait $fio; rc=$?
  sed -n '/^{/,$p' /tmp/fio.json > /tmp/fio.clean && mv /tmp/fio.clean /tmp/fio.json; cp /tmp/fio.json "$RIG_OUT/fio.json" 2>/dev/null
  jq -r '.jobs[0] | "write: \(.write.io_kbytes) KiB, \(.write.iops|floor) IOPS, verified \(.read.io_kbytes) KiB, max write latency \(.write.lat_ns.max / 1000000 | floor) ms, errors \(.error)"' /tmp/fio.json
  echo "MAX-STALL-MS $(jq -r '[.jobs[0].write.lat_ns.max, .jobs[0].read.lat_ns.max] | max / 1000000 | floor' /tmp/fio.json)"
  expect_eq failover-fio-exit "$rc" 0
  expect_eq failover-fio-errors "$(jq -r '.jobs[0].error' /tmp/fio.json)" 0
  check failover-fio-verified-something sh -c "[ $(jq -r '.jobs[0].read.io_kbytes' /tmp/fio.json) -gt 0 ]"
  c3=$(counters 0)
  echo "  B's counters after the failover run: ${c3#*: }"
  expect_ge relayed-during-failover "$(( $(field relayed "$c3") - $(field relayed "$c2") ))" 1
  end=$((SECONDS + 40))
  while [ $SECONDS -lt $end ] && ! nvme list-subsys "$dev" 2>/dev/null | grep -q "trsvcid=5420.* live optimized"; do sleep 1; done
  nvme list-subsys "$dev" | tee /tmp/ls2.txt | sed 's/^/  /'
  check owner-path-restored grep -q "trsvcid=5420.* live optimized" /tmp/ls2.txt
  dmesg | grep -iE "nvme.*(reconnect|failover|ANA|error)" | tail -8 | sed 's/^/  dmesg: /'
  timeout 30 nvme disconnect -n "$N" > /dev/null 2>&1
  cut
fi
# 4. The replica: whole on B, and equal to what the host reads of NSID 1 (A's data).
if [ "${MIRROR:-0}" = 1 ]; then
  end=$((SECONDS + 120)) whole=
  while [ $SECONDS -lt $end ]; do
    whole=$(rpc 0 cluster_get_status | jq -r '.result.links[0].replicas[] | select(.nsid == 1) | .whole' 2>/dev/null)
    [ "$whole" = true ] && break; sleep 1
  done
  rpc 0 cluster_get_status | jq -c '.result.links[0].replicas[]' 2>/dev/null | sed 's/^/  B replica: /'
  expect_eq replica-whole "$whole" true
  timeout 30 nvme disconnect -n "$N" > /dev/null 2>&1; wait_no_ctrl 20   # (still connected when FAILOVER=0)
  check connect-for-compare nvme connect -t tcp -a "$IPB" -s 4420 -n "$N"
  wait_ns 1 30; dev=$(ns_dev 1)
  # (awk, not cut: this script's cut() cuts the owner path)
  sum_ns=$(run dd if="$dev" bs=1M count=64 iflag=direct 2>/dev/null | md5sum | awk '{print $1}')
  sum_rep=$(md5sum < /tmp/replica-0.img | awk '{print $1}')
  echo "  NSID 1 as the host reads it: $sum_ns; B's replica file: $sum_rep ($(stat -c %s /tmp/replica-0.img) B)"
  if [[ $sum_ns =~ ^[0-9a-f]{32}$ ]] && [ "$sum_ns" != d41d8cd98f00b204e9800998ecf8427e ]; then expect_eq replica-equals-namespace "$sum_rep" "$sum_ns"
  else fail replica-equals-namespace "(could not read NSID 1: '$sum_ns')"; fi
  timeout 30 nvme disconnect -n "$N" > /dev/null 2>&1
fi
report $((FAILS > 0 ? 1 : 0))
stop_nodes
finish
