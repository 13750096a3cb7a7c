# A node's death and return under the kernel host's native multipath: both paths of one subsystem, fio crc32c
# verify on both namespaces (NSID 1 owned by the node behind TARGET_PORT, NSID 2 by the one behind TARGET_PORT_B)
# while the host side kills the first node (SIGKILL), waits for the survivor to take its group over, starts it again
# and waits for the giveback. Env: SUBNQN, TARGET_PORT, TARGET_PORT_B, FIO_RUNTIME (default 45).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
PB=${TARGET_PORT_B:?}
wait_target "$P" || exit 1
wait_target "$PB" || exit 1
check connect-a nvme connect -t tcp -a "$A" -s "$P" -n "$N"
check connect-b nvme connect -t tcp -a "$A" -s "$PB" -n "$N"
wait_ns 1 || exit 1
wait_ns 2 || exit 1
sleep 2
dev1=$(ns_dev 1) dev2=$(ns_dev 2)
nvme list-subsys "$dev1" | tee /tmp/ls.txt
expect_eq two-paths "$(grep -c ' live ' /tmp/ls.txt)" 2
check a-optimized-for-nsid1 grep -q "trsvcid=$P.* live optimized" /tmp/ls.txt
expect_eq multipath-enabled "$(cat /sys/module/nvme_core/parameters/multipath)" Y

fio_through_failure "$dev1" "$dev2" "${FIO_RUNTIME:-45}"   # the host kills node A meanwhile, and starts it again

# Node A is back and owns NSID 1 again: its path is optimized once more.
check_optimized a-optimized-again "$dev1" "$P" 60
nvme disconnect -n "$N" >/dev/null 2>&1
finish
