# Runs several scripts of this folder, one after the other, in ONE guest (a boot costs 5-12 s: one
# boot covers many checks). Prints "STEP name: ok N ms" or "STEP name: FAIL exit N, N ms" for each;
# stops at the first failure (the rest: "STEP name: not run") and exits with its status.
# Env: RIG_STEPS (script names, e.g. "nvmet-setup.sh nvme-cli.sh fio-verify.sh"), and what the
#      scripts need (see each).
set -u
: "${RIG_STEPS:?RIG_STEPS must name the scripts to run}" "${RIG_GUEST:?}"
echo "guest: kernel $(uname -r), $(nproc) vCPU(s), $(nvme version | head -n 1), $(fio --version)"
rc=0
for s in $RIG_STEPS; do
  if [ "$rc" != 0 ]; then echo "STEP $s: not run"; continue; fi
  if [ ! -f "$RIG_GUEST/$s" ]; then echo "STEP $s: FAIL no such script in tests/rig/guest"; rc=2; continue; fi
  echo "STEP-BEGIN $s"
  t0=$(date +%s%N)
  bash "$RIG_GUEST/$s"; r=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ "$r" = 0 ]; then echo "STEP $s: ok $ms ms"; else echo "STEP $s: FAIL exit $r, $ms ms"; rc=$r; fi
done
exit "$rc"
