# One fixed list of nvme-cli commands, run against the node ($A:$P, $SUBNQN) and against Linux nvmet in this same
# guest (127.0.0.1:$NVMET_PORT, $NVMET_NQN: start it first with nvmet-setup.sh under that NQN): every command must
# succeed against both, except those marked "node": the mandatory features Linux nvmet (6.1) refuses to get, which
# the node must answer (nvmet's result is printed, not checked). Prints "LIST name: node=RC nvmet=RC" and a check each.
# Env: SUBNQN, TARGET_PORT (see lib.sh); NVMET_NQN, NVMET_PORT (required).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
NQ=${NVMET_NQN:?NVMET_NQN is required} NP=${NVMET_PORT:?NVMET_PORT is required}

wait_target "$P" || { fail discover-node; finish; }
need connect-node nvme connect -t tcp -a "$A" -s "$P" -n "$N"
need connect-nvmet nvme connect -t tcp -a 127.0.0.1 -s "$NP" -n "$NQ"
wait_ns 1 || { fail namespace-node; finish; }
# The controller and namespace head of each subsystem.
ctrl_ns() {
  local nqn=$1 c s d
  for c in /sys/class/nvme/nvme*; do [ "$(< "$c/subsysnqn")" = "$nqn" ] && { CT=/dev/${c##*/}; break; }; done
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ "$(< "$s/subsysnqn")" = "$nqn" ] || continue
    for d in "$s"/nvme*n1; do [ -b "/dev/${d##*/}" ] && NS=/dev/${d##*/}; done
  done
}
CT= NS=; ctrl_ns "$N"; NODE_C=$CT NODE_N=$NS
end=$((SECONDS + 20)); while [ $SECONDS -lt $end ]; do CT= NS=; ctrl_ns "$NQ"; [ -n "$NS" ] && break; sleep 0.2; done
NVMET_C=$CT NVMET_N=$NS
expect_true devices "node: $NODE_C $NODE_N; nvmet: $NVMET_C $NVMET_N" test -n "$NODE_C" -a -n "$NODE_N" -a -n "$NVMET_C" -a -n "$NVMET_N"
[ "$FAILS" -eq 0 ] || finish

# The list: NAME|both or node|the command, with C (a controller) and NS (a namespace) standing for the devices.
LIST='
id-ctrl|both|nvme id-ctrl C
id-ctrl-json|both|nvme id-ctrl C -o json
id-ns|both|nvme id-ns NS
list-ns|both|nvme list-ns C
ns-descs|both|nvme ns-descs NS
list-subsys|both|nvme list-subsys NS
smart-log|both|nvme smart-log C
error-log|both|nvme error-log C
fw-log|both|nvme fw-log C
effects-log|both|nvme effects-log C
ana-log|both|nvme ana-log C
get-log-smart|both|nvme get-log C --log-id=2 --log-len=512 -b
get-feature-arbitration|node|nvme get-feature C -f 1
get-feature-power|node|nvme get-feature C -f 2
get-feature-temperature|node|nvme get-feature C -f 4
get-feature-error-recovery|node|nvme get-feature C -f 5 -n 1
get-feature-write-cache|both|nvme get-feature C -f 6
get-feature-queues|both|nvme get-feature C -f 7
get-feature-coalescing|node|nvme get-feature C -f 8
get-feature-vector|node|nvme get-feature C -f 9 --cdw11=0
get-feature-atomicity|node|nvme get-feature C -f 0xa
get-feature-async-events|both|nvme get-feature C -f 0xb
get-feature-keep-alive|both|nvme get-feature C -f 0xf
get-feature-host-id|both|nvme get-feature C -f 0x81 --cdw11=1 --data-len=16
set-feature-keep-alive|both|nvme set-feature C -f 0xf --value=5000
get-property-cap|both|nvme get-property C --offset=0
get-property-csts|both|nvme get-property C --offset=0x1c
flush|both|nvme flush NS -n 1
write-zeroes|both|nvme write-zeroes NS -s 0 -c 0
read|both|nvme read NS -s 0 -c 0 -z 4096 -d /dev/null
'
while IFS='|' read -r name who cmd; do
  [ -n "$name" ] || continue
  c1=${cmd//NS/$NODE_N}; run ${c1//C/$NODE_C} > /dev/null 2>&1; r1=$?
  c2=${cmd//NS/$NVMET_N}; run ${c2//C/$NVMET_C} > /dev/null 2>&1; r2=$?
  echo "LIST $name: node=$r1 nvmet=$r2"
  if [ "$who" = both ]; then expect_true "list-$name" "node exit $r1, nvmet exit $r2" test "$r1" = 0 -a "$r2" = 0
  else expect_true "list-$name" "node exit $r1 (nvmet exit $r2)" test "$r1" = 0; fi
done <<< "$LIST"
finish
