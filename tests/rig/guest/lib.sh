# Helpers for the rig's guest scripts (sourced). The target is reached at $TARGET_ADDR:$TARGET_PORT
# (10.0.2.100 is QEMU's guestfwd address: each guest connection gets its own host connection).
set -u
A=${TARGET_ADDR:-10.0.2.100}
P=${TARGET_PORT:-4420}
N=${SUBNQN:?SUBNQN is required}
FAILS=0

check() { # check NAME COMMAND...: runs COMMAND, prints CHECK NAME: ok|FAIL
  local name=$1; shift
  if "$@" >/tmp/check.out 2>&1; then echo "CHECK $name: ok"
  else echo "CHECK $name: FAIL ($(tail -n 3 /tmp/check.out | tr '\n' ' '))"; FAILS=$((FAILS + 1)); fi
}
expect_eq() { # expect_eq NAME ACTUAL EXPECTED
  if [ "$2" = "$3" ]; then echo "CHECK $1: ok ($2)"; else echo "CHECK $1: FAIL (got '$2', expected '$3')"; FAILS=$((FAILS + 1)); fi
}

# Waits until the target answers discovery (a guest connect succeeds even before the host listens:
# slirp accepts, then the forwarder fails and the guest sees EOF).
wait_target() {
  for i in $(seq 90); do nvme discover -t tcp -a "$A" -s "${1:-$P}" >/tmp/disc.txt 2>&1 && return 0; sleep 1; done
  echo "target at $A:${1:-$P} never answered"; cat /tmp/disc.txt; return 1
}

# The controller (nvmeX) and the namespace head (nvmeXnY) of subsystem $N.
ctrl_of() { for c in /sys/class/nvme/nvme*; do [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$N" ] && { basename "$c"; return 0; }; done; return 1; }
ns_dev() { # ns_dev NSID -> /dev/nvmeXnNSID (the multipath head)
  local s; for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ "$(cat "$s/subsysnqn")" = "$N" ] || continue
    for d in "$s"/nvme*n"$1"; do [ -e "$d" ] && { echo "/dev/$(basename "$d")"; return 0; }; done
  done; return 1
}
wait_ns() { for i in $(seq 50); do ns_dev "$1" >/dev/null && return 0; sleep 0.2; done; return 1; }

finish() {
  if [ "$FAILS" -eq 0 ]; then echo "ALL CHECKS PASSED"; exit 0; fi
  echo "$FAILS CHECK(S) FAILED"; exit 1
}
