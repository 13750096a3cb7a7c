# A file system on a namespace: mkfs.ext4, files with checksums, unmount, disconnect, reconnect, check.
# Env: SUBNQN, TARGET_PORT.
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
wait_target || exit 1
nvme connect -t tcp -a "$A" -s "$P" -n "$N" || exit 1
wait_ns 1 || exit 1
dev=$(ns_dev 1)
check mkfs mkfs.ext4 -q -F "$dev"
mkdir -p /tmp/mnt
check mount mount "$dev" /tmp/mnt
mountpoint -q /tmp/mnt || { echo "CHECK mounted: FAIL"; exit 1; }
for i in $(seq 8); do dd if=/dev/urandom of=/tmp/mnt/file$i bs=64k count=$((i * 4)) status=none; done
mkdir /tmp/mnt/dir; cp /tmp/mnt/file1 /tmp/mnt/dir/copy
(cd /tmp/mnt && find . -type f | sort | xargs sha256sum) > /tmp/sums
check umount umount /tmp/mnt
check disconnect nvme disconnect -n "$N"
sleep 1
check reconnect nvme connect -t tcp -a "$A" -s "$P" -n "$N"
wait_ns 1; dev=$(ns_dev 1)
check fsck fsck.ext4 -n "$dev"
check mount-again mount "$dev" /tmp/mnt
mountpoint -q /tmp/mnt || { echo "CHECK mounted-again: FAIL"; exit 1; }
check files-intact sh -c "cd /tmp/mnt && sha256sum -c --quiet /tmp/sums"
expect_eq file-count "$(find /tmp/mnt -type f | wc -l)" 9
umount /tmp/mnt
check disconnect-again nvme disconnect -n "$N"
finish
