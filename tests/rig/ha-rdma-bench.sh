#!/bin/bash
# ha-rdma-bench.sh [ROUNDS [SECONDS]]
# The HA pair's proxy path with the RDMA interconnect vs the TCP interconnect, measured in one rig run: two
# pairs side by side in the two guests (guest a: both A nodes, guest b: both B nodes + the kernel NVMe/TCP
# host), pair 0 with Cluster:InterconnectTransport=rdma, pair 1 with tcp. The host reads NSID 1 (owned by A)
# through B's proxy path only, 4 KiB random reads at QD1 and QD16, ROUNDS (default 3) interleaved rounds of
# SECONDS (default 10) per run; prints the medians and the RDMA/TCP ratios. Everything is emulated (TCG guests,
# soft-RoCE), so only the ratios mean anything. Needs the node built (dotnet pwsh ./build.ps1 build).
# Environment: as run-pair.sh (RIG_CACHE, ...); CONFIGURATION (Release).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=${1:-3} secs=${2:-10}
built=$root/src/StorageNode/bin/${CONFIGURATION:-Release}/net10.0
[ -f "$built/storagenode.dll" ] || { echo "the node is not built in $built (dotnet pwsh ./build.ps1 build)"; exit 2; }
cache=${RIG_CACHE:-/var/tmp/storagenode-rig}
"$here/build-guest.sh" || exit 2
copy=$cache/ha-bench-$$
mkdir -p "$copy" && cp "$built"/* "$copy"/ 2>/dev/null
trap 'rm -rf "$copy"' EXIT
out=$(mktemp)
RIG_TIMEOUT=${RIG_TIMEOUT:-1500} RIG_ENV="NODE_DLL=$copy/storagenode.dll
HA_TRANSPORTS=rdma tcp
BENCH_ROUNDS=$rounds
BENCH_SECONDS=$secs
FAILOVER=0
POLL_MODE=${POLL_MODE:-adaptive}
RDMA_ACK_TIMEOUT=${RDMA_ACK_TIMEOUT:-0}
WAIT_DONE=1400" "$here/run-pair.sh" "$here/guest/ha-rdma.sh" | tee "$out"
rc=${PIPESTATUS[0]}
echo
echo "== proxied 4 KiB random read, median of $rounds interleaved rounds (IOPS, mean latency µs)"
for qd in 1 16; do
  for t in rdma tcp; do
    # "BENCH round R T qd Q IOPS MEAN_US" (after run-pair.sh's "b| " prefix)
    iops=$(grep -oE "BENCH round [0-9]+ $t qd $qd [0-9]+ [0-9]+" "$out" | awk '{print $7}' | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}')
    lat=$(grep -oE "BENCH round [0-9]+ $t qd $qd [0-9]+ [0-9]+" "$out" | awk '{print $8}' | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}')
    echo "$t qd $qd: $iops IOPS, $lat µs"
    eval "i_${t}_$qd=$iops l_${t}_$qd=$lat"
  done
  awk -v a="$(eval echo \$i_rdma_$qd)" -v b="$(eval echo \$i_tcp_$qd)" -v la="$(eval echo \$l_rdma_$qd)" -v lb="$(eval echo \$l_tcp_$qd)" -v q=$qd \
    'BEGIN { if (b > 0 && lb > 0) printf "QD%d ratio of the medians RDMA/TCP: IOPS %.2f, mean latency %.2f\n", q, a / b, la / lb }'
  # The median of the rounds' own ratios (each round's RDMA run beside its TCP run: the machine's drift cancels).
  grep -oE "BENCH round [0-9]+ (rdma|tcp) qd $qd [0-9]+ [0-9]+" "$out" | awk -v q=$qd '
    { r = $3; if ($4 == "rdma") { ri[r] = $7; rl[r] = $8 } else { ti[r] = $7; tl[r] = $8 } }
    END { n = 0; for (r in ri) if ((r in ti) && ti[r] > 0 && tl[r] > 0) { n++; x[n] = ri[r] / ti[r]; y[n] = rl[r] / tl[r] }
          if (n == 0) exit
          for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) { if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t } if (y[j] < y[i]) { t = y[i]; y[i] = y[j]; y[j] = t } }
          m = int((n + 1) / 2); s = ""; for (i = 1; i <= n; i++) s = s sprintf(" %.2f", x[i])
          printf "QD%d median of %d paired ratios RDMA/TCP: IOPS %.2f (sorted:%s), mean latency %.2f\n", q, n, x[m], s, y[m] }'
done
rm -f "$out"
exit $rc
