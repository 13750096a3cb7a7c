# Namespaces that come and go while the kernel host is connected: the node tells the host (Namespace Attribute
# Changed event, Changed Namespace List), and the host's namespace device appears and goes away on the same
# controller, with no reset or reconnect; I/O works on the new namespace and on the one that stays.
# The test on the host side adds namespace $NEW_NSID (management RPC) once this script signals "connected", and
# removes it once it signals "added-seen".
# Env: SUBNQN, TARGET_ADDR, TARGET_PORT (lib.sh); NEW_NSID; EXPECT_NEW_SECTORS (its size in 512-byte sectors).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
: "${NEW_NSID:?}" "${EXPECT_NEW_SECTORS:?}" "${RIG_OUT:?}"
if wait_target; then ok target "$A:$P"; else fail target "($A:$P did not answer)"; finish; fi
connect connect
cntlid=$(cat "/sys/class/nvme/$CTRL/cntlid")
mark=$(dmesg | wc -l)
expect_true new-ns-absent-before "namespace $NEW_NSID" sh -c "! ls /sys/class/nvme-subsystem/*/ | grep -q 'n$NEW_NSID\$'"
touch "$RIG_OUT/connected"

if wait_ns "$NEW_NSID" 90; then NEW=$(ns_dev "$NEW_NSID"); ok new-ns-appeared "$NEW"
else fail new-ns-appeared "(namespace $NEW_NSID did not appear within 90 s)"; finish; fi
expect_eq same-controller-after-add "$(cat "/sys/class/nvme/$CTRL/cntlid" 2>/dev/null)" "$cntlid"
expect_eq new-ns-size "$(cat "/sys/block/${NEW#/dev/}/size")" "$EXPECT_NEW_SECTORS"
run nvme list-ns "/dev/$CTRL" > /tmp/list-ns.txt 2>&1
sed 's/^/  /' /tmp/list-ns.txt
expect_true list-ns-has-new "$(tr '\n' ' ' < /tmp/list-ns.txt)" grep -qiE "(0x0*$NEW_NSID|:$NEW_NSID)\$" /tmp/list-ns.txt
dd if=/dev/urandom of=/tmp/ns-pattern bs=64k count=16 status=none
check new-ns-write dd if=/tmp/ns-pattern of="$NEW" bs=64k count=16 seek=8 oflag=direct status=none
check new-ns-read sh -c "dd if=$NEW bs=64k count=16 skip=8 iflag=direct status=none | cmp - /tmp/ns-pattern"
touch "$RIG_OUT/added-seen"

end=$((SECONDS + 90))
while [ $SECONDS -lt $end ] && ns_dev "$NEW_NSID" > /dev/null; do sleep 0.2; done
if ns_dev "$NEW_NSID" > /dev/null; then fail new-ns-removed "(namespace $NEW_NSID still there after 90 s)"; else ok new-ns-removed; fi
expect_eq same-controller-after-remove "$(cat "/sys/class/nvme/$CTRL/cntlid" 2>/dev/null)" "$cntlid"
expect_eq still-live "$(cat "/sys/class/nvme/$CTRL/state" 2>/dev/null)" live
check ns1-still-writes dd if=/tmp/ns-pattern of="$DEV" bs=64k count=16 seek=4 oflag=direct status=none
check ns1-still-reads sh -c "dd if=$DEV bs=64k count=16 skip=4 iflag=direct status=none | cmp - /tmp/ns-pattern"
dmesg | tail -n +$((mark + 1)) > /tmp/ns-dmesg
sed 's/^/  dmesg: /' /tmp/ns-dmesg | tail -n 20
grep -iE "$CTRL.*(error recovery|reconnect|resetting|I/O .*timeout)" /tmp/ns-dmesg > /tmp/ns-bad
expect_true no-error-recovery "$(head -n 2 /tmp/ns-bad | tr '\n' ' ')" test ! -s /tmp/ns-bad
disconnect disconnect
finish
