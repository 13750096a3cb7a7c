# Helpers for the rig's guest scripts (sourced; run-guest.sh ships this folder to the guest and names
# this file $RIG_LIB). Every script prints "CHECK name: ok [detail]" or "CHECK name: FAIL detail"
# lines and ends with finish, which exits non-zero when any check failed.
#
# The target: $TARGET_ADDR:$TARGET_PORT, subsystem $SUBNQN, over $TRANSPORT (tcp, the default, or rdma). TARGET_ADDR defaults to 10.0.2.100, QEMU's
# guestfwd address: with run-guest.sh -p 4420:HPORT a guest connection to 10.0.2.100:4420 reaches a
# target listening on the host's 127.0.0.1:HPORT, each connection through its own socat. For Linux
# nvmet inside the guest (nvmet-setup.sh) use TARGET_ADDR=127.0.0.1.
# Bounds: CMD_TIMEOUT (seconds for one nvme/fio/mkfs command, default 120), TARGET_WAIT (seconds to
# wait for the target to answer discovery, default 90).
set -u
A=${TARGET_ADDR:-10.0.2.100}
P=${TARGET_PORT:-4420}
N=${SUBNQN:?SUBNQN is required}
TR=${TRANSPORT:-tcp}
T=${CMD_TIMEOUT:-120}
FAILS=0 CHECKS=0
MNT=/tmp/rig-mnt

# run COMMAND...: COMMAND with a time limit (exit 124 when it is hit); a shell function runs as it is
# (the commands in it are bounded themselves).
run() { if [ "$(type -t "$1")" = function ]; then "$@"; else timeout -k 5 "$T" "$@"; fi; }
ok() { CHECKS=$((CHECKS + 1)); echo "CHECK $1: ok${2:+ ($2)}"; }
fail() { CHECKS=$((CHECKS + 1)); FAILS=$((FAILS + 1)); echo "CHECK $1: FAIL ${2:-}"; }
# check NAME COMMAND...: runs COMMAND (bounded); ok when it exits 0, else FAIL with its last output.
check() {
  local name=$1; shift
  if run "$@" > /tmp/check.out 2>&1; then ok "$name"
  else local rc=$?; fail "$name" "(exit $rc: $(tail -n 3 /tmp/check.out | tr '\n' ' '))"; fi
}
# expect_eq NAME ACTUAL EXPECTED / expect_ge NAME ACTUAL MIN / expect_true NAME DETAIL TEST...
expect_eq() { if [ "$2" = "$3" ]; then ok "$1" "$2"; else fail "$1" "(got '$2', expected '$3')"; fi; }
expect_ge() {
  if [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ]; then ok "$1" "$2"; else fail "$1" "(got '$2', expected >= $3)"; fi
}
expect_true() { local name=$1 detail=$2; shift 2; if "$@"; then ok "$name" "$detail"; else fail "$name" "($detail)"; fi; }
# need NAME COMMAND...: like check, but the script cannot go on without it: finish at once on failure.
need() { local before=$FAILS; check "$@"; [ "$FAILS" -eq "$before" ] || finish; }

# Waits until the target answers discovery; the log page is left in /tmp/disc.txt. (A guest connect
# to 10.0.2.100 succeeds even when nothing listens on the host: slirp accepts, then the forwarder
# fails and the guest sees EOF. So "up" means discovery answered.)
wait_target() {
  local port=${1:-$P} end=$((SECONDS + ${TARGET_WAIT:-90}))
  while [ $SECONDS -lt $end ]; do
    timeout -k 5 30 nvme discover -t "$TR" -a "$A" -s "$port" > /tmp/disc.txt 2>&1 && return 0
    sleep 1
  done
  echo "target at $A:$port did not answer discovery within ${TARGET_WAIT:-90} s:"; cat /tmp/disc.txt
  return 1
}

# The controllers (nvmeX) of subsystem $N, the first one, and a namespace's block device (the
# multipath head nvmeXnNSID). (Shell built-ins only: every process costs in the emulated guest.)
ctrls_of() { local c q; for c in /sys/class/nvme/nvme*; do
  [ -r "$c/subsysnqn" ] && q=$(< "$c/subsysnqn") && [ "$q" = "$N" ] && echo "${c##*/}"; done; return 0; }
ctrl_of() { local c; for c in $(ctrls_of); do echo "$c"; return 0; done; return 1; }
ns_dev() {
  local s d q; for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ -r "$s/subsysnqn" ] && q=$(< "$s/subsysnqn") && [ "$q" = "$N" ] || continue
    for d in "$s"/nvme*n"$1"; do [ -b "/dev/${d##*/}" ] && { echo "/dev/${d##*/}"; return 0; }; done
  done; return 1
}
# wait_ns NSID [SECONDS]: until the namespace's block device exists.
wait_ns() { local end=$((SECONDS + ${2:-20})); while [ $SECONDS -lt $end ]; do ns_dev "$1" > /dev/null && return 0; sleep 0.2; done; return 1; }
# wait_no_ctrl [SECONDS]: until no controller of $N is left (after a disconnect).
wait_no_ctrl() { local end=$((SECONDS + ${1:-20})); while [ $SECONDS -lt $end ]; do [ -z "$(ctrls_of)" ] && return 0; sleep 0.2; done; return 1; }
# wait_live CTRL [SECONDS]: until /sys/class/nvme/CTRL/state is "live".
wait_live() { local end=$((SECONDS + ${2:-20})); while [ $SECONDS -lt $end ]; do
  [ "$(< "/sys/class/nvme/$1/state")" = live ] 2>/dev/null && return 0; sleep 0.2; done; return 1; }

# check_optimized NAME DEV PORT SECONDS: checks (waiting up to SECONDS) that DEV's path through PORT is live and
# optimized; prints the last `nvme list-subsys` (in /tmp/ls2.txt) and the kernel's recent path events.
check_optimized() {
  local i
  for i in $(seq "$4"); do
    nvme list-subsys "$2" > /tmp/ls2.txt 2>&1
    grep -q "trsvcid=$3.* live optimized" /tmp/ls2.txt && break
    sleep 1
  done
  cat /tmp/ls2.txt
  check "$1" grep -q "trsvcid=$3.* live optimized" /tmp/ls2.txt
  dmesg | grep -iE "nvme.*(reconnect|failover|ANA|error)" | tail -8
}

# connect NAME [nvme connect options...]: connects to $A:$P/$N (bounded), waits for namespace 1,
# sets CTRL and DEV. Finishes the script when that fails: nothing else can be checked then.
connect() {
  local name=$1; shift
  need "$name" nvme connect -t "$TR" -a "$A" -s "$P" -n "$N" "$@"
  if wait_ns "${NSID:-1}"; then CTRL=$(ctrl_of); DEV=$(ns_dev "${NSID:-1}"); ok "$name-namespace" "$CTRL, $DEV"
  else fail "$name-namespace" "(namespace ${NSID:-1} did not appear within 20 s)"; finish; fi
}
# disconnect NAME: disconnects $N and checks that its controllers are gone.
disconnect() {
  check "$1" nvme disconnect -n "$N"
  expect_true "$1-gone" "controllers left: $(ctrls_of | tr '\n' ' ')" wait_no_ctrl 20
}

# fio_through_failure DEV1 DEV2 RUNTIME: fio crc32c verify on two namespaces while the host side fails a node: signals
# fio-started (the host side acts from then on) and fio-done, one job per namespace (reported apart: random 4 KiB
# writes, each verified as it is read back); checks 0 errors, data verified and fio's exit status; prints each job's
# longest I/O ("MAX-LATENCY-MS nsidN MS") and every 250 ms window whose longest I/O took over 200 ms ("STALL nsidN
# AT-S MS", AT-S in seconds since fio started; the host side prints its events on the same scale).
fio_through_failure() {
  local rc j f
  touch "$RIG_OUT/fio-started"
  fio --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 --size=32M --time_based --runtime="$3" \
      --verify=crc32c --verify_backlog=128 --verify_fatal=1 --eta=never --output-format=json --output=/tmp/fio.json \
      --write_lat_log=/tmp/lat --log_avg_msec=250 --log_max_value=1 \
      --name=nsid1 --filename="$1" --name=nsid2 --filename="$2"
  rc=$?
  touch "$RIG_OUT/fio-done"
  sed -n '/^{/,$p' /tmp/fio.json > /tmp/fio.clean && mv /tmp/fio.clean /tmp/fio.json
  cp /tmp/fio.json "$RIG_OUT/fio.json"
  for j in 0 1; do
    jq -r ".jobs[$j] | \"\(.jobname): write \(.write.io_kbytes) KiB, \(.write.iops|floor) IOPS, verified \(.read.io_kbytes) KiB, errors \(.error)\"" /tmp/fio.json
    echo "MAX-LATENCY-MS $(jq -r ".jobs[$j] | .jobname + \" \" + ([.write.lat_ns.max, .read.lat_ns.max] | max / 1000000 | floor | tostring)" /tmp/fio.json)"
    expect_eq "fio-errors-$(jq -r ".jobs[$j].jobname" /tmp/fio.json)" "$(jq -r ".jobs[$j].error" /tmp/fio.json)" 0
    check "fio-verified-$(jq -r ".jobs[$j].jobname" /tmp/fio.json)" sh -c "[ $(jq -r ".jobs[$j].read.io_kbytes" /tmp/fio.json) -gt 0 ]"
  done
  expect_eq fio-exit "$rc" 0
  for j in 1 2; do
    for f in /tmp/lat_clat."$j".log /tmp/lat_lat."$j".log; do [ -r "$f" ] && break; done
    [ -r "$f" ] && awk -F', *' -v n="nsid$j" '$2 > 200000000 { printf "STALL %s %.2f %d\n", n, $1 / 1000, $2 / 1000000 }' "$f"
  done
  return 0
}

# On exit, whatever happened: unmount and disconnect, so the next script in the same guest starts clean.
rig_cleanup() {
  mountpoint -q "$MNT" 2>/dev/null && timeout 30 umount "$MNT"
  [ -n "$(ctrls_of)" ] && timeout 30 nvme disconnect -n "$N" > /dev/null 2>&1
  return 0
}
trap rig_cleanup EXIT

finish() {
  if [ "$CHECKS" -eq 0 ]; then echo "NO CHECKS RAN"; exit 1; fi
  if [ "$FAILS" -eq 0 ]; then echo "ALL $CHECKS CHECKS PASSED"; exit 0; fi
  echo "$FAILS OF $CHECKS CHECKS FAILED"; exit 1
}
