#!/bin/bash
# run-guest.sh [-p GPORT[:HPORT]]... [-f HPORT[:GPORT]]... [-l LPORT:RPORT:IP/NN | -l listen|connect:SOCKET:IP/NN | -l dgram:LOCAL,REMOTE:IP/NN] [-n NAME] SCRIPT [PORT...]
# Boots one rig guest (build it first with build-guest.sh) that runs SCRIPT with bash inside the
# host's root, shared read-only, and exits with SCRIPT's exit status:
#   124 the guest did not finish within RIG_TIMEOUT; 125 the guest died without a status (panic,
#   bad image, QEMU failed); 2 bad arguments or no image. Anything else is SCRIPT's own status.
#  -p GPORT[:HPORT]  a guest connection to 10.0.2.100:GPORT reaches the host's 127.0.0.1:HPORT
#                    (HPORT defaults to GPORT), through its own socat, one per guest connection.
#                    Each trailing PORT is the same as -p PORT.
#  -f HPORT[:GPORT]  the other way: the host's 127.0.0.1:HPORT reaches the guest's eth0 GPORT.
#  -l LPORT:RPORT:IP/NN  a second NIC, eth1 with address IP/NN, whose frames travel as UDP datagrams
#                    from 127.0.0.1:LPORT to 127.0.0.1:RPORT (lossy: a burst can overflow the host's
#                    socket buffer); -l listen:SOCKET:IP/NN / -l connect:SOCKET:IP/NN: the frames travel
#                    over one Unix stream socket at path SOCKET (lossless; no Nagle delay as on TCP), the
#                    listening guest started first; -l dgram:LOCAL,REMOTE:IP/NN: each frame is one datagram
#                    on a Unix datagram socket bound at path LOCAL, sent to path REMOTE (lossless: a full
#                    receiver holds the sender back, like a RoCE fabric with PFC). Paths without ':' or ','.
#                    The private link run-pair.sh uses.
#  -n NAME           prefix of the output lines and name of the run folder ([A-Za-z0-9._-]).
# Output: SCRIPT's output, live, each line prefixed "NAME| " (kernel warnings appear among them).
# On failure (or with RIG_KEEP=1) the run folder is kept and "NAME| run folder: PATH" and
# "NAME| serial log: PATH" are printed on stderr; after a success it is removed.
# The guest's QEMU monitor (HMP) listens on $run/monitor.sock while it runs: e.g. to see where a hung guest is,
#   echo 'sendkey alt-sysrq-l' | socat - UNIX-CONNECT:RUN/monitor.sock   (backtraces of every CPU to the serial log;
# sysrq is enabled on the guest's command line; alt-sysrq-w: blocked tasks, alt-sysrq-t: every task).
# Inside the guest: the host root is read-only; /tmp and /run are fresh tmpfs (so host /tmp is
# hidden); the working folder is the caller's (if visible); $RIG_OUT (/run/rig) is writable and is,
# on the host, the run folder (with serial.log, the guest's dmesg.txt and the exit status).
# The guest scripts' folder (RIG_GUEST_DIR, or SCRIPT's own folder when it holds a lib.sh, as
# tests/rig/guest/ does) is copied into the run folder: the guest finds those scripts in $RIG_GUEST,
# the library as $RIG_LIB (so SCRIPT may be anywhere, even under the host's /tmp).
# Environment:
#  RIG_CACHE    image and run folders (default /var/tmp/storagenode-rig)
#  RIG_TIMEOUT  seconds the whole guest may take, boot included (default 600)
#  RIG_MEM, RIG_CPUS   guest memory in MiB (2048) and vCPUs (default: one fewer than the host's cores, at least 1)
#  RIG_BOOT_TIMEOUT  seconds a guest (not on a private link) may take to start its script before it is booted once
#               more (default 120; only the boot is retried, never the script)
#  RIG_ENV      lines NAME=VALUE, exported to SCRIPT inside the guest
#  RIG_GUEST_DIR  the guest scripts' folder to ship (see above)
#  RIG_RUN_DIR  the run folder (default $RIG_CACHE/runs/NAME-PID, PID of this script)
#  RIG_KEEP=1   keep the run folder after a success too
#  RIG_FWD_TAG  the forwarders run as "socat -lpTAG-HPORT - TCP:127.0.0.1:HPORT" (default TAG
#               rig-NAME-PID): a test finds one path's forwarders by that exact command line in
#               /proc/*/cmdline and kills them by PID to cut that path from outside.
set -uo pipefail
RIG_CACHE=${RIG_CACHE:-/var/tmp/storagenode-rig}
ports=() net="user,id=n0,restrict=on" link="" linkpaths="" name=guest extra=()
usage() { sed -n '2,6p' "$0" >&2; exit 2; }
while getopts "p:f:l:n:" o; do case $o in
  p) ports+=("$OPTARG") ;;
  f) h=${OPTARG%%:*} g=${OPTARG#*:}; net+=",hostfwd=tcp:127.0.0.1:$h-:$g" ;;
  l) IFS=: read -r lp rp link <<< "$OPTARG"; o=${link%/*}; o=${o##*.}   # MAC ends in IP's last byte
     case $lp in
       listen|connect) [ "$lp" = listen ] && srv=on || srv=off
                       nd="stream,id=n1,server=$srv,addr.type=unix,addr.path=$rp" ;;
       # (a socket left by a guest of this link that was powered off is replaced: a guest booted again binds it)
       dgram) rm -f "${rp%%,*}"; nd="dgram,id=n1,local.type=unix,local.path=${rp%%,*},remote.type=unix,remote.path=${rp#*,}" ;;
       *) nd="socket,id=n1,udp=127.0.0.1:$rp,localaddr=127.0.0.1:$lp" ;;
     esac
     extra=(-netdev "$nd"
            -device "virtio-net-pci,netdev=n1,id=eth1,mac=52:54:00:00:01:$(printf %02x "$o")")
     linkpaths=$rp ;;
  n) name=$OPTARG ;;
  *) usage ;;
esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
[[ $name =~ ^[A-Za-z0-9._-]+$ ]] || { echo "run-guest: bad name '$name'" >&2; exit 2; }
script=$1; shift; ports+=("$@")
[ -f "$script" ] || { echo "run-guest: no script $script" >&2; exit 2; }
for f in vmlinuz initrd.gz; do
  [ -f "$RIG_CACHE/$f" ] || { echo "run-guest: no guest image in $RIG_CACHE: run build-guest.sh" >&2; exit 2; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "run-guest: qemu-system-x86_64 not found: run build-guest.sh" >&2; exit 2; }
tag=${RIG_FWD_TAG:-rig-$name-$$}
# guestfwd's cmd: form: QEMU starts this command for each guest connection (the tcp: form would
# funnel all guest connections into one host connection, unusable for NVMe/TCP's queues).
for p in "${ports[@]}"; do g=${p%%:*} h=${p#*:}
  [[ $g =~ ^[0-9]+$ && $h =~ ^[0-9]+$ ]] || { echo "run-guest: bad port mapping '$p'" >&2; exit 2; }
  net+=",guestfwd=tcp:10.0.2.100:$g-cmd:socat -lp$tag-$h - TCP:127.0.0.1:$h"
done

run=${RIG_RUN_DIR:-$RIG_CACHE/runs/$name-$$}; rm -rf "$run"; mkdir -p "$run" || exit 2
# The script, its RIG_ENV settings, and the guest scripts beside it (if any) go into the run folder:
# the guest sees that as /run/rig, whereas a caller's checkout under /tmp would be invisible to it.
gdir=${RIG_GUEST_DIR:-}; [ -z "$gdir" ] && [ -f "$(dirname "$script")/lib.sh" ] && gdir=$(dirname "$script")
if [ -n "$gdir" ]; then mkdir "$run/guest" && cp "$gdir"/*.sh "$run/guest/" || exit 2; fi
{ echo "export RIG_GUEST=/run/rig/guest RIG_LIB=/run/rig/guest/lib.sh"
  while IFS= read -r line; do
    [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] &&
      printf 'export %s=%q\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
  done <<< "${RIG_ENV:-}"
  cat "$script"; } > "$run/script.sh"
pwd > "$run/cwd"
# -accel tcg: no usable KVM here. restrict=on: the guest reaches nothing but its forwarded ports.
# setpriv --pdeathsig: timeout dies with this script and QEMU with timeout, even when this script is killed
# (SIGKILL runs no trap), so no guest outlives its caller.
boot() {  # boot SECONDS: starts QEMU (in the background, $q) bounded by SECONDS
  setpriv --pdeathsig KILL timeout -k 10 "$1" setpriv --pdeathsig KILL qemu-system-x86_64 -accel tcg -machine q35 -cpu max \
    -m "${RIG_MEM:-2048}" -smp "$cpus" -display none -monitor unix:"$run/monitor.sock",server=on,wait=off -no-reboot \
    -pidfile "$run/qemu.pid" -serial file:"$run/serial.log" \
    -kernel "$RIG_CACHE/vmlinuz" -initrd "$RIG_CACHE/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 sysrq_always_enabled nokaslr rig.node=$name ${link:+rig.eth1=$link}" \
    -fsdev local,id=root,path=/,readonly=on,security_model=none,multidevs=remap \
    -device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
    -fsdev local,id=io,path="$run",security_model=none \
    -device virtio-9p-pci,fsdev=io,mount_tag=rigio \
    -netdev "$net" -device virtio-net-pci,netdev=n0 "${extra[@]}" \
    < /dev/null & q=$!
}
# vCPUs: RIG_CPUS, else one fewer than the host's cores (at least 1), so a TCG guest's vCPU threads leave the host a
# core for QEMU's own I/O thread and whatever the test runs beside it (a starved guest can stall its virtual NIC).
cpus=${RIG_CPUS:-$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))}
limit=${RIG_TIMEOUT:-600} started=$SECONDS
boot "$limit"
# A guest whose kernel has not started the script within RIG_BOOT_TIMEOUT (default 120 s) is booted once more (a
# boot that hangs under an emulated CPU); only the boot is retried, never the script. Not for a guest on a private
# link: its partner is joined to this QEMU's socket.
if [ -z "$link" ]; then
  while kill -0 "$q" 2>/dev/null && ! grep -q '^RIG-START' "$run/serial.log" 2>/dev/null; do
    if [ $((SECONDS - started)) -ge "${RIG_BOOT_TIMEOUT:-120}" ]; then
      echo "$name| run-guest: the guest did not start its script within ${RIG_BOOT_TIMEOUT:-120} s; booting it once more" >&2
      kill "$q" 2>/dev/null; wait "$q" 2>/dev/null
      mv "$run/serial.log" "$run/serial-first-boot.log" 2>/dev/null
      boot $((limit - (SECONDS - started)))
      break
    fi
    sleep 1
  done
fi

# No QEMU outlives this script: on any exit, stop timeout (it passes the signal on to QEMU), give
# QEMU 5 s, then kill it by its PID file.
stop_guest() {
  kill -0 "$q" 2>/dev/null || return 0
  kill "$q" 2>/dev/null
  local qp; qp=$(cat "$run/qemu.pid" 2>/dev/null)
  alive() { kill -0 "$q" 2>/dev/null || { [ -n "$qp" ] && kill -0 "$qp" 2>/dev/null; }; }
  for _ in $(seq 50); do alive || break; sleep 0.1; done
  [ -n "$qp" ] && kill -9 "$qp" 2>/dev/null
  kill -9 "$q" 2>/dev/null
}
# Before the limit ends the guest, what it was doing is recorded, so that a hang can be read afterwards: 20 s before
# QEMU's timeout, the guest's blocked tasks and every CPU's backtrace (sysrq w and l, on the serial console: printed
# with the script's output), and, for a guest on a private link, the link's state (see link_state)
# in the run folder's monitor.txt.
diagnose() {
  while kill -0 "$q" 2>/dev/null && [ $((SECONDS - started)) -lt $((limit - 20)) ]; do sleep 1; done
  kill -0 "$q" 2>/dev/null || return 0
  echo "$name| run-guest: $((SECONDS - started)) s, about to time out: the guest's blocked tasks and backtraces follow (sysrq w, l); QEMU's NICs and the link's state in $run/monitor.txt" >&2
  # The vCPU's registers three times, a second apart (a guest spinning with interrupts off answers no sysrq; its RIP
  # does not lie: name-rips.sh names them, HLT=1 is an idle vCPU), then the sysrq dumps.
  { printf 'info status\ninfo network\ninfo registers\n'; sleep 1; printf 'info registers\n'; sleep 1
    printf 'info registers\nsendkey alt-sysrq-w\n'; sleep 3; printf 'sendkey alt-sysrq-l\n'; sleep 3; } |
    socat - UNIX-CONNECT:"$run/monitor.sock" 2>&1 | tr -d '\r' | grep -av '^(qemu)' > "$run/monitor.txt"
  [ -n "$link" ] && link_state >> "$run/monitor.txt"
}
# link_state: the private link as QEMU and the host see it, twice, 2 s apart (what moves and what does not): eth1's
# virtqueues in QEMU (0 receive, 1 transmit: the device's avail/used indexes against the guest's), the link's
# sockets on the host (Recv-Q, Send-Q: ss names no process here, so the sockets are found by their paths), and the
# CPU time of each QEMU thread (a main loop spinning on a socket that never drains shows here).
link_state() {
  local qp i p; qp=$(cat "$run/qemu.pid" 2>/dev/null)
  for i in 1 2; do
    echo "== link state, sample $i ($(date +%T.%N | cut -c1-12))"
    { printf 'info virtio-queue-status /machine/peripheral/eth1/virtio-backend 0\n'
      printf 'info virtio-queue-status /machine/peripheral/eth1/virtio-backend 1\n'; sleep 1; } |
      socat - UNIX-CONNECT:"$run/monitor.sock" 2>&1 | tr -d '\r' | grep -av '^(qemu)\|^QEMU .* monitor'
    echo "-- host sockets of the link ($linkpaths)"
    for p in ${linkpaths//,/ }; do ss -xa 2>/dev/null | grep -F " $p " ; done
    echo "-- QEMU threads: name, user and system CPU ticks"
    [ -n "$qp" ] && for t in /proc/"$qp"/task/*; do
      printf '%s %s\n' "$(cat "$t/comm" 2>/dev/null)" "$(awk '{print $14, $15}' "$t/stat" 2>/dev/null)"; done
    [ "$i" = 1 ] && sleep 2
  done
}
diagnose & diagnoser=$!
trap 'stop_guest; [ -n "${tailer:-}" ] && kill $tailer 2>/dev/null; kill $diagnoser 2>/dev/null' EXIT
trap 'echo "$name| run-guest: interrupted; run folder: $run" >&2; exit 143' INT TERM HUP
# The script's output (between the markers /init prints), live, each line prefixed with NAME.
tail -s 0.2 --pid=$q -F "$run/serial.log" 2>/dev/null |
  sed -nu "/^RIG-START/,/^RIG-EXIT/{s/\r//;s/^/$name| /;p}" & tailer=$!
wait $q; qrc=$?; wait $tailer; tailer=
if [ -f "$run/exit" ]; then rc=$(cat "$run/exit")
elif [ -f "$run/powered-off" ]; then rc=0; echo "$name| run-guest: powered off as the test asked (its QEMU killed: $run/powered-off)" >&2
elif [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then rc=124; echo "$name| run-guest: timed out after ${RIG_TIMEOUT:-600} s" >&2
else rc=125; echo "$name| run-guest: the guest died without an exit status (qemu: $qrc)" >&2
fi
# The run folder is removed after a success unless RIG_KEEP=1; otherwise its path is printed.
if [ "$rc" = 0 ] && [ -z "${RIG_KEEP:-}" ]; then rm -rf "$run"
else echo "$name| run folder: $run" >&2; echo "$name| serial log: $run/serial.log" >&2
fi
exit "$rc"
