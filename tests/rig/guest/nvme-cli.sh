# nvme-cli against the target: discover, connect (plain, then with digests), identify, logs, disconnect.
# Env: SUBNQN, TARGET_PORT, EXPECT_SERIAL, EXPECT_MODEL, EXPECT_NSZE (NSID 1 blocks), EXPECT_NGUID (32 hex).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
wait_target || exit 1
check discover-lists-subsystem grep -q "subnqn: *$N" /tmp/disc.txt
grep -E "trsvcid|subnqn|traddr" /tmp/disc.txt

check connect nvme connect -t tcp -a "$A" -s "$P" -n "$N"
wait_ns 1 || echo "namespace 1 did not appear"
c=$(ctrl_of); dev=$(ns_dev 1)
echo "controller $c, namespace head $dev"
check nvme-list nvme list
nvme list
id=$(nvme id-ctrl "/dev/$c" -o json)
expect_eq id-ctrl-sn "$(echo "$id" | jq -r .sn | sed 's/ *$//')" "$EXPECT_SERIAL"
expect_eq id-ctrl-mn "$(echo "$id" | jq -r .mn | sed 's/ *$//')" "$EXPECT_MODEL"
expect_eq id-ctrl-subnqn "$(echo "$id" | jq -r .subnqn)" "$N"
expect_eq id-ctrl-cntlid-matches-sysfs "$(echo "$id" | jq -r .cntlid)" "$(cat /sys/class/nvme/$c/cntlid)"
expect_eq id-ctrl-cmic "$(( $(echo "$id" | jq -r .cmic) & 0x0a ))" 10
ns=$(nvme id-ns "$dev" -o json)
expect_eq id-ns-nsze "$(echo "$ns" | jq -r .nsze)" "$EXPECT_NSZE"
expect_eq id-ns-nmic "$(echo "$ns" | jq -r .nmic)" 1
expect_eq id-ns-nguid "$(echo "$ns" | jq -r .nguid)" "$EXPECT_NGUID"
check list-subsys nvme list-subsys "$dev"
nvme list-subsys "$dev"
check ana-log nvme ana-log "/dev/$c"
nvme ana-log "/dev/$c" | head -20
check smart-log nvme smart-log "/dev/$c"
check error-log nvme error-log "/dev/$c" -e 4
check get-log-firmware nvme fw-log "/dev/$c"
check id-ns-descs nvme ns-descs "$dev"
# Data through the kernel host.
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 status=none
check write dd if=/tmp/pattern of="$dev" bs=1M count=4 oflag=direct status=none
check read-back-matches sh -c "dd if=$dev bs=1M count=4 iflag=direct status=none | cmp - /tmp/pattern"
check disconnect nvme disconnect -n "$N"
sleep 1

check connect-digests nvme connect -t tcp -a "$A" -s "$P" -n "$N" --hdr-digest --data-digest
wait_ns 1; dev=$(ns_dev 1)
check digests-read-back sh -c "dd if=$dev bs=1M count=4 iflag=direct status=none | cmp - /tmp/pattern"
dd if=/dev/urandom of=/tmp/pattern2 bs=128k count=8 status=none
check digests-write dd if=/tmp/pattern2 of="$dev" bs=128k count=8 seek=64 oflag=direct status=none
check digests-read sh -c "dd if=$dev bs=128k count=8 skip=64 iflag=direct status=none | cmp - /tmp/pattern2"
check disconnect-digests nvme disconnect -n "$N"
finish
