# A file system on namespace NSID: mkfs.ext4, mount, files written with their SHA-256 sums, unmount,
# disconnect, reconnect (a new controller), fsck, mount, every file checked against its sum.
# Env: SUBNQN, TARGET_ADDR, TARGET_PORT (lib.sh); NSID (1); FS_FILES (number of files, default 8).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
if wait_target; then ok target "$A:$P"; else fail target "($A:$P did not answer)"; finish; fi
connect connect
need mkfs.ext4 mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$DEV"
mkdir -p "$MNT"
need mount mount -t ext4 "$DEV" "$MNT"
# Files of growing sizes (256 KiB, 512 KiB, ...), a folder, a copy, a hard link.
write_files() {
  for i in $(seq "${FS_FILES:-8}"); do
    dd if=/dev/urandom of="$MNT/file$i" bs=64k count=$((i * 4)) status=none || return 1
  done
  mkdir "$MNT/dir" && cp "$MNT/file1" "$MNT/dir/copy" && ln "$MNT/file2" "$MNT/dir/link" || return 1
  (cd "$MNT" && find . -type f -not -path './lost+found/*' | sort | xargs sha256sum) > /tmp/sums
}
check write-files write_files
nfiles=$(wc -l < /tmp/sums)
echo "  $nfiles files, $(du -sh "$MNT" | cut -f1) on $DEV"
check sync sync -f "$MNT"
check umount umount "$MNT"
old_cntlid=$(cat "/sys/class/nvme/$CTRL/cntlid")
disconnect disconnect

connect reconnect
echo "  controller $CTRL (cntlid $(cat "/sys/class/nvme/$CTRL/cntlid"), before $old_cntlid), $DEV"
check fsck fsck.ext4 -f -n "$DEV"
need mount-again mount -t ext4 "$DEV" "$MNT"
check files-intact sh -c "cd $MNT && sha256sum -c --quiet /tmp/sums"
expect_eq file-count "$(find "$MNT" -type f -not -path "$MNT/lost+found/*" | wc -l)" "$nfiles"
check umount-again umount "$MNT"
disconnect disconnect-again
finish
