# Native multipath against an HA pair: both paths of one subsystem, then fio verify on the namespace the
# first path's node owns while the host side cuts that path (it kills the path's forwarders from outside).
# Env: SUBNQN, TARGET_PORT (path to the owner), TARGET_PORT_B (path to the partner), FIO_RUNTIME (default 40).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
PB=${TARGET_PORT_B:?}
wait_target "$P" || exit 1
wait_target "$PB" || exit 1
check connect-owner nvme connect -t tcp -a "$A" -s "$P" -n "$N"
check connect-partner nvme connect -t tcp -a "$A" -s "$PB" -n "$N"
wait_ns 1 || exit 1
sleep 2
dev=$(ns_dev 1)
nvme list-subsys "$dev" | tee /tmp/ls.txt
expect_eq one-subsystem "$(grep -c '^nvme-subsys' /tmp/ls.txt)" 1
expect_eq two-paths "$(grep -c ' live ' /tmp/ls.txt)" 2
check owner-path-optimized grep -q "trsvcid=$P.* live optimized" /tmp/ls.txt
check partner-path-non-optimized grep -q "trsvcid=$PB.* live non-optimized" /tmp/ls.txt
expect_eq multipath-enabled "$(cat /sys/module/nvme_core/parameters/multipath)" Y

touch "$RIG_OUT/fio-started"   # the host cuts the owner path from now on
fio --name=failover --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --numjobs=2 --size=24M --offset_increment=24M --time_based --runtime="${FIO_RUNTIME:-40}" \
    --verify=crc32c --verify_backlog=256 --verify_fatal=1 --group_reporting --eta=never \
    --output-format=json --output=/tmp/fio.json
rc=$?
sed -n '/^{/,$p' /tmp/fio.json > /tmp/fio.clean && mv /tmp/fio.clean /tmp/fio.json
cp /tmp/fio.json "$RIG_OUT/fio.json"
jq -r '.jobs[0] | "write: \(.write.io_kbytes) KiB, \(.write.iops|floor) IOPS, verified \(.read.io_kbytes) KiB, max write latency \(.write.lat_ns.max / 1000000 | floor) ms, errors \(.error)"' /tmp/fio.json
echo "MAX-STALL-MS $(jq -r '[.jobs[0].write.lat_ns.max, .jobs[0].read.lat_ns.max] | max / 1000000 | floor' /tmp/fio.json)"
expect_eq fio-exit "$rc" 0
expect_eq fio-errors "$(jq -r '.jobs[0].error' /tmp/fio.json)" 0
check fio-verified-something sh -c "[ $(jq -r '.jobs[0].read.io_kbytes' /tmp/fio.json) -gt 0 ]"

# The cut has ended (the host stops killing forwarders when fio-done appears); the path comes back.
touch "$RIG_OUT/fio-done"
check_optimized owner-path-restored "$dev" "$P" 40
nvme disconnect -n "$N" >/dev/null 2>&1
finish
