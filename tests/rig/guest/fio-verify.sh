# fio random writes with crc32c verification through the kernel host: several jobs, iodepth 16.
# Env: SUBNQN, TARGET_PORT, FIO_RUNTIME (seconds, default 60), NSID (default 1).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
wait_target || exit 1
nvme connect -t tcp -a "$A" -s "$P" -n "$N" || exit 1
wait_ns "${NSID:-1}" || exit 1
dev=$(ns_dev "${NSID:-1}")
echo "fio on $dev for ${FIO_RUNTIME:-60} s"
fio --name=verify --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --numjobs=4 --size=16M --offset_increment=16M --time_based --runtime="${FIO_RUNTIME:-60}" \
    --verify=crc32c --verify_backlog=256 --verify_fatal=1 --group_reporting --eta=never \
    --output-format=json --output=/tmp/fio.json
rc=$?
# fio may print a warning before the JSON document.
sed -n '/^{/,$p' /tmp/fio.json > /tmp/fio.clean && mv /tmp/fio.clean /tmp/fio.json
jq -r '.jobs[0] | "write: \(.write.io_kbytes) KiB, \(.write.iops|floor) IOPS; read (verify): \(.read.io_kbytes) KiB; errors: \(.error)"' /tmp/fio.json
cp /tmp/fio.json "$RIG_OUT/fio.json"
expect_eq fio-exit "$rc" 0
expect_eq fio-errors "$(jq -r '.jobs[0].error' /tmp/fio.json)" 0
check fio-verified-something sh -c "[ $(jq -r '.jobs[0].read.io_kbytes' /tmp/fio.json) -gt 0 ]"
check disconnect nvme disconnect -n "$N"
finish
