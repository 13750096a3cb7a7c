# Two-guest mode (run-pair.sh): the owner's machine loses power. Node A runs in guest a (192.168.100.1) and owns
# NSID 1 (ANA group 1); guest b (192.168.100.2) runs node B (owner of NSID 2, ANA group 2), the witness, and the Linux
# kernel NVMe/TCP host with native multipath. The interconnect is NVMe/TCP over eth1, Cluster:Mirror on (each node
# keeps its replica of the partner's namespace in RAM), both nodes' clocks their own guests' (b boots later).
#  b: waits for the interconnect and for B's replica of NSID 1 to be whole, connects the host to both nodes, runs fio
#     crc32c verify on both namespaces and creates $RIG_OUT/fio-started: the host side then powers guest a off (kills
#     its QEMU: no FIN, no reset, A's datagrams and witness renewals stop). B takes group 1 over on the witness's grant
#     and the host's I/O goes on through B. After fio: 0 I/O errors, 0 verify failures, each namespace verified; B
#     serves group 1 (term 1, granted by the witness) and its path is optimized for NSID 1; B's log holds no fail: or
#     crit: line (B never fenced its own group 2); B and the witness stop cleanly. Prints fio's longest I/O per
#     namespace ("MAX-LATENCY-MS nsidN MS"), every 250 ms window over 200 ms ("STALL nsidN AT-S MS", seconds since fio
#     started) and B's takeover lines.
#     While fio runs, a watcher creates $RIG_OUT/taken-over once B serves group 1 (the host side boots guest a again
#     then, with RESTART=1) and, with RESTART=1, $RIG_OUT/given-back once A owns it again ("WATCH what AT-S", seconds
#     since fio started).
#  a: runs node A until it is powered off; a guest a that is not powered off within WAIT_POWEROFF s fails.
#  With RESTART=1 guest a is booted again (run-pair.sh's RIG_RESTART_A; RIG_RESTARTED=1 in it): node A starts with its
#  RAM empty, learns B's term, keeps its namespace as B's replica, which B resyncs whole, and takes group 1 back
#  (Cluster:AutoGiveback) while fio runs; b then checks that A owns group 1 at term 2 and its path is optimized again,
#  prints the resync's rate, and tells a (TCP to A's DONE_PORT), which stops A: exit 0, no fail:/crit: in its log.
# Env: NODE_DLL (a path visible in the guests), FIO_RUNTIME (40), HEARTBEAT_INTERVAL_MS (200), HEARTBEAT_TIMEOUT_MS
#      (2000), WITNESS_LEASE_MS (3000), HOST_KATO (the host's keep-alive timeout in seconds, nvme connect
#      --keep-alive-tmo; empty: nvme-cli's default), WAIT_POWEROFF (600), RESTART (0), DONE_PORT (7999), WAIT_DONE (600).
export SUBNQN=${SUBNQN:-nqn.2026-11.io.storagenode:ha-poweroff}
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
export DOTNET_CLI_HOME=/tmp HOME=/tmp
IPA=192.168.100.1 IPB=192.168.100.2 PORT=4420 WPORT=4450 D=${DONE_PORT:-7999}
read -r UP0 _ < /proc/uptime
echo "START $RIG_NODE uptime ${UP0} s"
ME=$(echo "$RIG_NODE" | tr ab AB)

config() {
  local me=$1 partner mine theirs ns1 ns2 ids
  if [ "$me" = A ]; then partner=B mine=$IPA theirs=$IPB ids='"ControllerIdMin": 1, "ControllerIdMax": 32767'
  else partner=A mine=$IPB theirs=$IPA ids='"ControllerIdMin": 32768, "ControllerIdMax": 65519'; fi
  local local_ns='"Bdev": "Malloc0"' remote_ns='"SizeMiB": 64, "BlockSize": 4096'
  if [ "$me" = A ]; then ns1=$local_ns ns2=$remote_ns; else ns1=$remote_ns ns2=$local_ns; fi
  cat <<EOF
{
  "Node": { "Name": "$me", "Reactors": 1 },
  "Cluster": { "Name": "poweroff", "Partner": "$partner", "InterconnectTransport": "tcp", "Mirror": true,
               "Interconnect": "$mine:4430", "PartnerInterconnect": "$theirs:4430",
               "Heartbeat": "$mine:4440", "PartnerHeartbeat": "$theirs:4440", "Witness": "$IPB:$WPORT", "AutoGiveback": true,
               "HeartbeatIntervalMs": ${HEARTBEAT_INTERVAL_MS:-200}, "HeartbeatTimeoutMs": ${HEARTBEAT_TIMEOUT_MS:-2000} },
  "Control": { "RpcSocket": "/tmp/sn.sock" },
  "Listeners": [ { "Transport": "tcp", "Address": "$mine", "Port": $PORT } ],
  "Bdevs": [ { "Name": "Malloc0", "Type": "malloc", "SizeMiB": 64, "BlockSize": 4096 } ],
  "Subsystems": [ { "Nqn": "$SUBNQN", "SerialNumber": "SNPOWEROFF01", "ModelNumber": "StorageNode HA", $ids,
                    "AnaGroups": [ { "Id": 1, "Owner": "A" }, { "Id": 2, "Owner": "B" } ],
                    "Namespaces": [ { "Nsid": 1, "AnaGroup": 1, $ns1 }, { "Nsid": 2, "AnaGroup": 2, $ns2 } ] } ]
}
EOF
}
# rpc METHOD: this guest's node's answer to a JSON-RPC call without parameters (bounded).
rpc() { echo "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\"}" | timeout 20 socat -t 10 - UNIX-CONNECT:/tmp/sn.sock; }
# started NAME LOG PID: waits (bounded) for the process's "ready." line.
started() {
  local end=$((SECONDS + 150))
  while [ $SECONDS -lt $end ] && kill -0 "$3" 2>/dev/null && ! grep -q 'ready\.' "$2"; do sleep 0.5; done
  if grep -q 'ready\.' "$2"; then ok "$1"; else fail "$1" "($(tail -n 5 "$2" | tr '\n' ' '))"; finish; fi
}

if [ "$RIG_NODE" = b ]; then
  mkdir -p /tmp/witness
  dotnet "${NODE_DLL:?}" witness --Witness:Listen="$IPB:$WPORT" --Witness:LeaseMs="${WITNESS_LEASE_MS:-3000}" \
    --Witness:StateDirectory=/tmp/witness > /tmp/witness.log 2>&1 & WPID=$!
fi
config "$ME" > /tmp/node.json
dotnet "${NODE_DLL:?}" --config /tmp/node.json > /tmp/node.log 2>&1 & NPID=$!
started "node-$ME-started" /tmp/node.log "$NPID"

if [ "$RIG_NODE" = a ] && [ -n "${RIG_RESTARTED:-}" ]; then
  # Booted again after the power cut: A runs (it learns B's term, is resynced and takes group 1 back) until b is done.
  timeout -k 5 "${WAIT_DONE:-600}" socat -u TCP-LISTEN:"$D",reuseaddr,bind="$IPA" - > /tmp/done.txt 2>/tmp/done.err
  expect_eq host-result "$(head -c 200 /tmp/done.txt | tr -d '\n')" "b 0"
  grep -E 'ANA group 1|resync|in sync' /tmp/node.log | tail -n 12 | sed 's/^/  node A: /'
  kill -TERM "$NPID"
  end=$((SECONDS + 30)); while [ $SECONDS -lt $end ] && kill -0 "$NPID" 2>/dev/null; do sleep 0.2; done
  kill -0 "$NPID" 2>/dev/null && kill -9 "$NPID"
  wait "$NPID"; expect_eq node-A-exit "$?" 0
  cp /tmp/node.log "$RIG_OUT/node-A.log"
  expect_eq node-A-log-errors "$(grep -cE ' (fail|crit): |Unhandled exception' /tmp/node.log)" 0
  grep -m 10 -E ' (fail|crit): |Unhandled exception' -A 3 /tmp/node.log | sed 's/^/  node A: /'
  finish
fi
if [ "$RIG_NODE" = a ]; then
  # Until the host side powers this guest off: nothing after this loop should run.
  end=$((SECONDS + ${WAIT_POWEROFF:-600}))
  while [ $SECONDS -lt $end ] && kill -0 "$NPID" 2>/dev/null; do sleep 1; done
  cp /tmp/node.log "$RIG_OUT/node-A.log" 2>/dev/null
  tail -n 20 /tmp/node.log | sed 's/^/  node A: /'
  fail a-powered-off "(guest a still ran after ${WAIT_POWEROFF:-600} s, or node A ended on its own)"
  finish
fi

# ---- b: the witness, B and the Linux host
end=$((SECONDS + 180))
while [ $SECONDS -lt $end ] && ! grep -q "interconnect to A up over NVMe/TCP" /tmp/node.log; do sleep 1; done
need interconnect-up grep -q "interconnect to A up over NVMe/TCP" /tmp/node.log
# B's replica of NSID 1 whole (A's mirror in sync and its lease renewed): what the takeover will serve.
whole() { rpc cluster_get_status | jq -e '.result.links[0].replicas[] | select(.nsid == 1) | .whole' > /dev/null; }
end=$((SECONDS + 120)); while [ $SECONDS -lt $end ] && ! whole; do sleep 1; done
need replica-whole whole
A=$IPA
wait_target "$PORT" || { fail target-a "(A did not answer discovery)"; finish; }
kato=(); [ -n "${HOST_KATO:-}" ] && kato=(--keep-alive-tmo "$HOST_KATO")
need connect-a nvme connect -t tcp -a "$IPA" -s "$PORT" -n "$N" "${kato[@]}"
need connect-b nvme connect -t tcp -a "$IPB" -s "$PORT" -n "$N" "${kato[@]}"
wait_ns 1 || { fail nsid1 "(no namespace 1)"; finish; }
wait_ns 2 || { fail nsid2 "(no namespace 2)"; finish; }
sleep 2
dev1=$(ns_dev 1) dev2=$(ns_dev 2)
nvme list-subsys "$dev1" | tee /tmp/ls.txt
expect_eq two-paths "$(grep -c ' live ' /tmp/ls.txt)" 2
check a-optimized-for-nsid1 grep -q "traddr=$IPA.* live optimized" /tmp/ls.txt
for c in $(ctrls_of); do echo "  $c: $(< /sys/class/nvme/$c/address), kato $(cat /sys/class/nvme/$c/kato 2>/dev/null || echo ?) s"; done

# The watcher: when B serves group 1, and (RESTART=1) when A owns it again; bounded by fio's run and a minute.
group1() { rpc cluster_get_status | jq -c '.result.links[0].groups[] | select(.anagrpid == 1) | {owner, term, served_here}'; }
read -r T0 _ < /proc/uptime
(
  end=$((SECONDS + ${FIO_RUNTIME:-40} + 60)) taken=
  while [ $SECONDS -lt $end ]; do
    g=$(group1 2>/dev/null)
    read -r now _ < /proc/uptime
    if [ -z "$taken" ] && [ "$(jq -r .served_here <<< "$g" 2>/dev/null)" = true ]; then
      taken=1; touch "$RIG_OUT/taken-over"; echo "WATCH taken-over $(awk -v a="$now" -v b="$T0" 'BEGIN { printf "%.2f", a - b }')"
      [ "${RESTART:-0}" = 1 ] || break
    elif [ -n "$taken" ] && [ "$(jq -r '.owner + " " + (.term | tostring)' <<< "$g" 2>/dev/null)" = "A 2" ]; then
      touch "$RIG_OUT/given-back"; echo "WATCH given-back $(awk -v a="$now" -v b="$T0" 'BEGIN { printf "%.2f", a - b }')"; break
    fi
    sleep 0.5
  done
) & watcher=$!
fio_through_failure "$dev1" "$dev2" "${FIO_RUNTIME:-40}"   # the host side powers guest a off meanwhile (and boots it again)
given_back_during_fio=0; [ -f "$RIG_OUT/given-back" ] && given_back_during_fio=1
wait $watcher

check b-took-group1-over test -f "$RIG_OUT/taken-over"
check witness-granted grep -q "granted to B at term 1" /tmp/witness.log
if [ "${RESTART:-0}" = 1 ]; then
  # A, booted again, was resynced and took group 1 back while fio ran; its path is the optimized one again.
  expect_eq given-back-during-fio "$given_back_during_fio" 1
  expect_eq a-owns-group1-again "$(group1)" '{"owner":"A","term":2,"served_here":false}'
  check_optimized a-optimized-again "$dev1" "$PORT" 30
  grep -q "traddr=$IPA.* live optimized" /tmp/ls2.txt || fail a-path-is-the-optimized-one "($(grep -E 'traddr' /tmp/ls2.txt | tr '\n' ' '))"
  # The resync's rate: B's line once A's replica of NSID 1 was whole ("... in sync (N MiB copied in S s)").
  r=$(grep -m1 'NSID 1: the partner.s replica is in sync' /tmp/node.log | sed -nE 's/.*\(([0-9]+) MiB copied in ([0-9.,]+) s\).*/\1 \2/p')
  [ -n "$r" ] && echo "RESYNC-RATE $(awk -v m="${r% *}" -v t="${r#* }" 'BEGIN { gsub(",", ".", t); printf "%d MiB in %.2f s: %.1f MiB/s", m, t, (t > 0 ? m / t : 0) }')"
  check resync-done test -n "$r"
else
  # B owns group 1 now, granted by the witness, and the host's path to B is the optimized one for NSID 1.
  expect_eq b-serves-group1 "$(group1)" '{"owner":"B","term":1,"served_here":true}'
  check_optimized b-optimized-for-nsid1 "$dev1" "$PORT" 30
  grep -q "traddr=$IPB.* live optimized" /tmp/ls2.txt || fail b-path-is-the-optimized-one "($(grep -E 'traddr' /tmp/ls2.txt | tr '\n' ' '))"
fi
grep -E 'taken over|given back|silent|fenc|lease|witness|resync|in sync' /tmp/node.log | tail -n 20 | sed 's/^/  node B: /'
nvme disconnect -n "$N" > /dev/null 2>&1
if [ "${RESTART:-0}" = 1 ]; then
  for i in $(seq 30); do echo "b $FAILS" | timeout 5 socat -u - TCP:"$IPA":"$D" 2>/dev/null && break; sleep 1; done
fi

kill -TERM "$NPID" "$WPID" 2>/dev/null
for p in "$NPID" "$WPID"; do
  end=$((SECONDS + 30)); while [ $SECONDS -lt $end ] && kill -0 "$p" 2>/dev/null; do sleep 0.2; done
  kill -0 "$p" 2>/dev/null && kill -9 "$p"
done
wait "$NPID"; expect_eq node-B-exit "$?" 0
wait "$WPID"; expect_eq witness-exit "$?" 0
cp /tmp/node.log "$RIG_OUT/node-B.log"; cp /tmp/witness.log "$RIG_OUT/witness.log"
expect_eq node-B-log-errors "$(grep -cE ' (fail|crit): |Unhandled exception' /tmp/node.log)" 0
grep -m 10 -E ' (fail|crit): |Unhandled exception' -A 3 /tmp/node.log | sed 's/^/  node B: /'
finish
