#!/bin/bash
# name-rips.sh RUN_FOLDER...
# Names the code a hung guest's vCPU was running: each RIP=... that run-guest.sh's diagnosis sampled into
# RUN_FOLDER/monitor.txt (its registers, shortly before the guest's time ran out), as symbol+offset of the rig's
# kernel. Guests boot with nokaslr, so one guest's /proc/kallsyms names every guest's addresses; it is read once per
# image (a guest booted for it, about 30 s) and kept in $RIG_CACHE/kallsyms beside the image's stamp.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
RIG_CACHE=${RIG_CACHE:-/var/tmp/storagenode-rig}
[ $# -ge 1 ] || { sed -n '2p' "$0"; exit 2; }
if [ ! -s "$RIG_CACHE/kallsyms" ] || [ "$(cat "$RIG_CACHE/kallsyms.stamp" 2>/dev/null)" != "$(cat "$RIG_CACHE/stamp")" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo 'grep " [tT] " /proc/kallsyms > "$RIG_OUT/kallsyms"' > "$tmp/kallsyms.sh"
  RIG_RUN_DIR=$tmp/run RIG_KEEP=1 RIG_TIMEOUT=300 "$here/run-guest.sh" -n kallsyms "$tmp/kallsyms.sh" >/dev/null 2>&1 ||
    { echo "name-rips: the guest that reads /proc/kallsyms failed (run-guest.sh -n kallsyms)" >&2; exit 1; }
  sort "$tmp/run/kallsyms" > "$RIG_CACHE/kallsyms"; cp "$RIG_CACHE/stamp" "$RIG_CACHE/kallsyms.stamp"
fi
for run in "$@"; do
  echo "== $run"
  grep -ao 'RIP=[0-9a-f]*.*HLT=[01]' "$run/monitor.txt" | while read -r reg _ _ _ _ _ _ hlt; do
    rip=${reg#RIP=}
    read -r sym base < <(awk -v r="$rip" 'length($1) == length(r) && $1 <= r { s = $3; b = $1 }
      END { print (s == "" ? "? 0" : s " " b) }' "$RIG_CACHE/kallsyms")
    if [ "$sym" = "?" ]; then echo "$rip (not kernel text: user space?) $hlt"
    else printf '%s %s+0x%x %s\n' "$rip" "$sym" $(( 16#$rip - 16#$base )) "$hlt"; fi
  done
done
