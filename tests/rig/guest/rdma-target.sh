# Two-guest mode (run-pair.sh): StorageNode's NVMe/RDMA target in guest a on soft-RoCE (rxe over eth1), the
# Linux kernel NVMe/RDMA host (nvme-rdma) in guest b.
#  a: starts the node (dotnet NODE_DLL --config NODE_CONFIG, an rdma listener on 192.168.100.1:TARGET_PORT),
#     waits (bounded) until b reports its result on 192.168.100.1:DONE_PORT, stops the node with SIGTERM and
#     checks that it started, stopped cleanly (exit 0) and logged no error. Its log lands in $RIG_OUT/node.log.
#     With RDMA_TARGET=nvmet, a runs Linux nvmet-rdma instead (nvmet-setup.sh): the same checks from b
#     against the kernel's own target, for comparison (run PROBE-less: the probe checks StorageNode's choices).
#  b: discovery over RDMA (the log entry: trtype rdma, ipv4, RDMA QP type connected, CM rdma-cm), then (with
#     PROBE) tests/RdmaProbe's nvme mode (managed initiator, bad input), then fio-verify.sh through nvme-rdma
#     (TRANSPORT=rdma), so fio also shows the node intact after the bad input; sends its status to a.
# Env: SUBNQN, NODE_DLL, NODE_CONFIG, PROBE (paths visible in the guests; PROBE optional: RdmaProbe.dll),
#      TARGET_PORT (4420), DONE_PORT (7999),
#      WAIT_DONE (seconds a waits for b, default 420), the fio-verify.sh variables (b).
export TARGET_ADDR=192.168.100.1 TRANSPORT=rdma
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
D=${DONE_PORT:-7999}
if rdma link add rxe0 type rxe netdev eth1; then ok rxe "rxe0 on eth1 $(ip -br -4 addr show eth1 | awk '{print $3}')"
else fail rxe "(rdma link add failed)"; finish; fi

if [ "$RIG_NODE" = a ] && [ "${RDMA_TARGET:-node}" = nvmet ]; then
  timeout -k 5 "${WAIT_DONE:-420}" socat -u TCP-LISTEN:"$D",reuseaddr,bind="$A" - > /tmp/done.txt 2>/tmp/done.err & waiter=$!
  NVMET_TRTYPE=rdma NVMET_ADDR=$A NVMET_SIZE_MIB=64 bash "$RIG_GUEST/nvmet-setup.sh"; rc=$?
  expect_eq nvmet-rdma-started "$rc" 0
  wait $waiter
  expect_eq host-result "$(head -c 200 /tmp/done.txt | tr -d '\n')" "b 0"
  finish
fi
if [ "$RIG_NODE" = a ]; then
  export DOTNET_CLI_HOME=/tmp HOME=/tmp
  # b's result arrives as one line on a TCP connection; listen from the start, bounded.
  timeout -k 5 "${WAIT_DONE:-420}" socat -u TCP-LISTEN:"$D",reuseaddr,bind="$A" - > /tmp/done.txt 2>/tmp/done.err & waiter=$!
  dotnet "${NODE_DLL:?}" --config "${NODE_CONFIG:?}" > /tmp/node.log 2>&1 & node=$!
  end=$((SECONDS + 120))
  while [ $SECONDS -lt $end ] && kill -0 $node 2>/dev/null && ! grep -q 'ready\.' /tmp/node.log; do sleep 0.5; done
  if grep -q 'ready\.' /tmp/node.log; then ok node-started "$(grep -m1 'NVMe/RDMA listening' /tmp/node.log)"
  else fail node-started "($(tail -n 5 /tmp/node.log | tr '\n' ' '))"; fi
  wait $waiter
  expect_eq host-result "$(head -c 200 /tmp/done.txt | tr -d '\n')" "b 0"
  kill -TERM $node 2>/dev/null
  end=$((SECONDS + 30)); while [ $SECONDS -lt $end ] && kill -0 $node 2>/dev/null; do sleep 0.2; done
  kill -0 $node 2>/dev/null && { kill -9 $node; echo "node did not stop within 30 s"; }
  wait $node; rc=$?
  expect_eq node-exit "$rc" 0
  cp /tmp/node.log "$RIG_OUT/node.log" 2>/dev/null
  # The console logger marks errors "fail:" and "crit:"; none may appear.
  expect_eq node-log-errors "$(grep -cE ' (fail|crit): |Unhandled exception' /tmp/node.log)" 0
  grep -E 'rdma|queue|connect|RDMA' /tmp/node.log | grep -v ' dbug: ' | tail -n 40 | sed 's/^/  node: /'
  grep -m 10 -E ' (fail|crit): |Unhandled exception' -A 5 /tmp/node.log | sed 's/^/  node: /'
  finish
fi

# b: report the result to a whatever happens.
report() {
  local rc=$1 i
  for i in $(seq 30); do echo "b $rc" | timeout 5 socat -u - TCP:"$A":"$D" 2>/dev/null && return 0; sleep 1; done
  echo "could not report to a"
}
if wait_target; then ok target "$A:$P answered discovery over RDMA"
else fail target "($A:$P did not answer)"; report 1; finish; fi
sed 's/^/  /' /tmp/disc.txt | head -n 40
check discovery-lists-subsystem grep -qE "subnqn: *$N\$" /tmp/disc.txt
check discovery-trtype-rdma grep -qE "^trtype: *rdma" /tmp/disc.txt
check discovery-adrfam-ipv4 grep -qE "^adrfam: *ipv4" /tmp/disc.txt
check discovery-rdma-qptype grep -qE "rdma_qptype: *connected" /tmp/disc.txt
check discovery-rdma-cms grep -qE "rdma_cms: *rdma-cm" /tmp/disc.txt
check discovery-traddr grep -qE "^traddr: *$A\$" /tmp/disc.txt
if [ -n "${PROBE:-}" ]; then
  # The managed initiator (tests/RdmaProbe nvme): keyed and in-capsule data, then bad input the node must
  # answer with a status or a reject, or survive by closing that connection alone.
  export DOTNET_CLI_HOME=/tmp HOME=/tmp
  timeout -k 5 240 dotnet "$PROBE" nvme "$A" "$P" "$N" > /tmp/probe.txt 2>&1; rc=$?
  sed 's/^/  /' /tmp/probe.txt; cp /tmp/probe.txt "$RIG_OUT/" 2>/dev/null
  expect_eq nvme-rdma-probe "$rc" 0
fi
# Known in this rig (TCG guests, rxe over QEMU's UDP link, kernel 6.1), with Linux nvmet-rdma as with StorageNode:
# now and then a burst of the host's commands never reaches the target (the target has nothing outstanding), those
# I/Os time out and the host reconnects; fio sees no error (the I/Os are retried). A 10 s I/O timeout instead of
# 30 s keeps one such stall from costing most of a minute. The count is reported below.
echo 10 > /sys/module/nvme_core/parameters/io_timeout 2>/dev/null
bash "$RIG_GUEST/fio-verify.sh"; rc=$?
expect_eq fio-verify "$rc" 0
echo "  host error recovery: $(dmesg | grep -cE 'QID [0-9]+ timeout') I/O timeout(s), $(dmesg | grep -c 'Reconnecting in') reconnect(s)"
dmesg | grep -iE 'nvme|rdma|rxe' | grep -vE 'requeuing I/O|Connect rejected: status 8|establishment failed' | tail -n 30 | sed 's/^/  dmesg: /'
report $((FAILS > 0 ? 1 : 0))
finish
