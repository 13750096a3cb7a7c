# Keep-alive: connected with a short keep-alive timeout (KATO), the controller stays idle for longer
# than KATO; the kernel host's keep-alives must keep it up: still the same live controller (no error
# recovery, no reconnect), and I/O works.
# Env: SUBNQN, TARGET_ADDR, TARGET_PORT (lib.sh); KATO (seconds, default 5); IDLE (seconds, default
#      15, at least 2 x KATO); NSID (1).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
K=${KATO:-5} I=${IDLE:-15}
[ "$I" -ge $((2 * K)) ] || { echo "IDLE ($I s) must be at least 2 x KATO ($K s)"; exit 2; }
if wait_target; then ok target "$A:$P"; else fail target "($A:$P did not answer)"; finish; fi
connect connect-kato "--keep-alive-tmo=$K"
kato=$(run nvme get-feature "/dev/$CTRL" -f 0x0f -H 2>/dev/null | sed -n 's/.*Keep Alive Timeout (KATO) in milliseconds: *\([0-9]*\).*/\1/p')
expect_eq kato-ms "${kato:-?}" $((K * 1000))
expect_eq kato-sysfs "$(cat "/sys/class/nvme/$CTRL/kato")" "$K"
cntlid=$(cat "/sys/class/nvme/$CTRL/cntlid")
mark=$(dmesg | wc -l)
echo "  idle for $I s (KATO $K s), controller $CTRL, cntlid $cntlid"
sleep "$I"
expect_eq still-live "$(cat "/sys/class/nvme/$CTRL/state" 2>/dev/null)" live
expect_eq same-controller "$(cat "/sys/class/nvme/$CTRL/cntlid" 2>/dev/null)" "$cntlid"
run nvme list-subsys "$DEV" > /tmp/list-subsys.txt 2>&1
sed 's/^/  /' /tmp/list-subsys.txt
expect_true list-subsys-live "$CTRL" grep -qE "$CTRL .*trsvcid=$P(,| ).* live( |$)" /tmp/list-subsys.txt
# What the host logs when keep-alive fails or the target drops the connection.
dmesg | tail -n +$((mark + 1)) | grep -iE "$CTRL.*(keep.?alive|error recovery|reconnect|reset|I/O .*timeout)" > /tmp/ka-events
expect_true no-error-recovery "$(head -n 2 /tmp/ka-events | tr '\n' ' ')" test ! -s /tmp/ka-events
dd if=/dev/urandom of=/tmp/ka-pattern bs=64k count=16 status=none
check io-after-idle-write dd if=/tmp/ka-pattern of="$DEV" bs=64k count=16 seek=32 oflag=direct status=none
check io-after-idle-read sh -c "dd if=$DEV bs=64k count=16 skip=32 iflag=direct status=none | cmp - /tmp/ka-pattern"
disconnect disconnect
finish
