#!/bin/bash
# run-guest.sh [-p GPORT[:HPORT]]... [-f HPORT[:GPORT]]... [-l LPORT:RPORT:IP/NN] [-n NAME] SCRIPT [PORT...]
# Boots one rig guest (build it first with build-guest.sh) that runs SCRIPT with bash inside the
# host's root, shared read-only, and exits with SCRIPT's exit status (124: timed out, 125: no status).
#  -p GPORT[:HPORT]  a guest connection to 10.0.2.100:GPORT reaches the host's 127.0.0.1:HPORT
#                    (HPORT defaults to GPORT), through its own socat, one per guest connection.
#                    Each trailing PORT is the same as -p PORT.
#  -f HPORT[:GPORT]  the other way: the host's 127.0.0.1:HPORT reaches the guest's eth0 GPORT.
#  -l LPORT:RPORT:IP/NN  a second NIC, eth1 with address IP/NN, whose frames travel as UDP datagrams
#                    from 127.0.0.1:LPORT to 127.0.0.1:RPORT: the private link run-pair.sh uses.
#  -n NAME           prefix of the output lines and name of the run folder.
# Inside the guest: the host root is read-only; /tmp and /run are fresh tmpfs (so host /tmp is
# hidden); the working folder is the caller's; $RIG_OUT (/run/rig) is writable and is, on the host,
# the run folder $RIG_CACHE/runs/NAME-PID/ (with serial.log and the guest's dmesg.txt).
# Environment: RIG_CACHE, RIG_TIMEOUT (seconds, default 600), RIG_MEM (MiB, 2048), RIG_CPUS (2),
# RIG_KEEP=1 (keep the run folder after a success too), RIG_FWD_TAG (the forwarders run as
# "socat -lpTAG-HPORT - TCP:127.0.0.1:HPORT", default TAG rig-NAME: a test finds one path's
# forwarders in /proc/*/cmdline and kills them by PID to cut that path from outside),
# RIG_ENV (lines NAME=VALUE exported to SCRIPT inside the guest). A lib.sh beside SCRIPT is copied
# into the run folder and named by RIG_LIB for the script to source.
set -uo pipefail
RIG_CACHE=${RIG_CACHE:-/var/tmp/storagenode-rig}
ports=() net="user,id=n0,restrict=on" link="" name=guest extra=()
while getopts "p:f:l:n:" o; do case $o in
  p) ports+=("$OPTARG") ;;
  f) h=${OPTARG%%:*} g=${OPTARG#*:}; net+=",hostfwd=tcp:127.0.0.1:$h-:$g" ;;
  l) IFS=: read -r lp rp link <<< "$OPTARG"; o=${link%/*}; o=${o##*.}   # MAC ends in IP's last byte
     extra=(-netdev "socket,id=n1,udp=127.0.0.1:$rp,localaddr=127.0.0.1:$lp"
            -device "virtio-net-pci,netdev=n1,mac=52:54:00:00:01:$(printf %02x "$o")") ;;
  n) name=$OPTARG ;;
  *) exit 2 ;;
esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,3p' "$0"; exit 2; }
[ -f "$RIG_CACHE/initrd.gz" ] || { echo "run-guest: no guest in $RIG_CACHE: run build-guest.sh" >&2; exit 2; }
script=$1; shift; ports+=("$@")
# guestfwd's cmd: form: QEMU starts this command for each guest connection (the tcp: form would
# funnel all guest connections into one host connection).
for p in "${ports[@]}"; do g=${p%%:*} h=${p#*:}
  net+=",guestfwd=tcp:10.0.2.100:$g-cmd:socat -lp${RIG_FWD_TAG:-rig-$name}-$h - TCP:127.0.0.1:$h"
done

run=$RIG_CACHE/runs/$name-$$; rm -rf "$run"; mkdir -p "$run"
# The script, its RIG_ENV settings, and the guest library beside it (if any) go into the run folder:
# the guest sees that as /run/rig, whereas a caller's checkout under /tmp would be invisible to it.
[ -f "$(dirname "$script")/lib.sh" ] && cp "$(dirname "$script")/lib.sh" "$run/lib.sh"
{ echo "export RIG_LIB=/run/rig/lib.sh"
  printf '%s\n' "${RIG_ENV:-}" | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=\(.*\)$/export \1=\x27\2\x27/p'
  cat "$script"; } > "$run/script.sh"
pwd > "$run/cwd"
# -accel tcg: no usable KVM here. restrict=on: the guest reaches nothing but its guestfwd ports.
timeout -k 10 "${RIG_TIMEOUT:-600}" qemu-system-x86_64 -accel tcg -machine q35 -cpu max \
  -m "${RIG_MEM:-2048}" -smp "${RIG_CPUS:-2}" -display none -monitor none -no-reboot \
  -serial file:"$run/serial.log" -kernel "$RIG_CACHE/vmlinuz" -initrd "$RIG_CACHE/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 rig.node=$name ${link:+rig.eth1=$link}" \
  -fsdev local,id=root,path=/,readonly=on,security_model=none,multidevs=remap \
  -device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
  -fsdev local,id=io,path="$run",security_model=none \
  -device virtio-9p-pci,fsdev=io,mount_tag=rigio \
  -netdev "$net" -device virtio-net-pci,netdev=n0 "${extra[@]}" \
  < /dev/null & q=$!
trap 'kill $q 2>/dev/null' EXIT; trap 'exit 143' INT TERM   # no QEMU outlives this script
# The script's output (between the markers /init prints), live, each line prefixed with NAME.
tail -s 0.2 --pid=$q -F "$run/serial.log" 2>/dev/null |
  sed -nu "/^RIG-START/,/^RIG-EXIT/{s/\r//;s/^/$name| /;p}" &
wait $q; qrc=$?; wait
if [ -f "$run/exit" ]; then rc=$(cat "$run/exit")
else rc=125; [ "$qrc" = 124 ] && rc=124; echo "$name| run-guest: no exit status (qemu: $qrc)" >&2
fi
# The run folder is removed after a success unless RIG_KEEP=1; otherwise its path is printed.
[ "$rc" = 0 ] && [ -z "${RIG_KEEP:-}" ] && rm -rf "$run" || echo "$name| run folder: $run" >&2
exit "$rc"
