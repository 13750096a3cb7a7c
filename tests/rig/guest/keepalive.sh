# Keep-alive: the kernel host's keep-alive keeps an idle controller up for longer than KATO.
# Env: SUBNQN, TARGET_PORT, IDLE (seconds, default 15).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
wait_target || exit 1
check connect-kato5 nvme connect -t tcp -a "$A" -s "$P" -n "$N" --keep-alive-tmo=5
wait_ns 1; c=$(ctrl_of); dev=$(ns_dev 1)
expect_eq kato "$(nvme get-feature "/dev/$c" -f 0x0f -H 2>/dev/null | grep -o 'Keep Alive Timeout (KATO) in milliseconds: [0-9]*' | grep -o '[0-9]*$')" 5000
echo "idle for ${IDLE:-15} s (KATO 5 s)"
sleep "${IDLE:-15}"
expect_eq still-live "$(cat /sys/class/nvme/$c/state)" live
check io-after-idle dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct status=none
check disconnect nvme disconnect -n "$N"
finish
