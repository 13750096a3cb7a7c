# Data integrity through the kernel NVMe/TCP host with fio and crc32c verification, in three phases,
# each job on its own region of namespace NSID:
#  1. fill: every 4 KiB block gets a verify header (sequential 128 KiB writes), so phase 3 can read all;
#  2. randwrite for FIO_RUNTIME seconds: FIO_JOBS jobs, iodepth FIO_IODEPTH, 4 KiB random writes, each
#     block read back and verified soon after it is written (verify_backlog) and after every pass;
#  3. verify: every block of every region read back; each must hold a valid crc32c block for its offset.
# Reports zero I/O errors and zero verify failures; disconnects.
# Env: SUBNQN, TARGET_ADDR, TARGET_PORT (lib.sh); FIO_RUNTIME (seconds, default 60); FIO_JOBS (4);
#      FIO_IODEPTH (16); FIO_SIZE_MIB (per job, default 8); NSID (1).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
R=${FIO_RUNTIME:-60} J=${FIO_JOBS:-4} Q=${FIO_IODEPTH:-16} S=${FIO_SIZE_MIB:-8}
T=$((R + ${CMD_TIMEOUT:-120}))   # the bound of each fio run (lib.sh's run)
if wait_target; then ok target "$A:$P"; else fail target "($A:$P did not answer)"; finish; fi
connect connect
bytes=$(blockdev --getsize64 "$DEV")
expect_true namespace-large-enough "$bytes bytes >= $J jobs x $S MiB" test "$bytes" -ge $((J * S * 1048576))
[ "$FAILS" -eq 0 ] || finish
echo "  fio on $DEV: $J jobs x $S MiB, iodepth $Q, ${R} s of random writes"

common=(--filename="$DEV" --ioengine=libaio --direct=1 --iodepth="$Q" --numjobs="$J" --size="${S}M"
        --offset_increment="${S}M" --verify=crc32c --verify_state_save=0 --group_reporting --eta=never
        --output-format=json)
# fiorun NAME OPTIONS...: fio (bounded); its JSON in /tmp/NAME.json, its messages in /tmp/NAME.err.
fiorun() {
  local name=$1; shift
  run fio --name="$name" "${common[@]}" --output=/tmp/"$name".out "$@" 2> /tmp/"$name".err
  local rc=$?
  sed -n '/^{/,$p' /tmp/"$name".out > /tmp/"$name".json   # (fio may print warnings before the JSON)
  sed -n '/^{/q;p' /tmp/"$name".out >> /tmp/"$name".err
  cp /tmp/"$name".json /tmp/"$name".err "$RIG_OUT/" 2>/dev/null
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    # The bound was hit: fio's I/O is stuck (no JSON). Say so, with what the kernel said last.
    echo "  fio $name did not finish within $T s and was killed (exit $rc): its I/O is stuck; the kernel's last words:"
    dmesg | tail -n 15 | sed 's/^/    /'
  fi
  return $rc
}
jobs_field() { jq -r ".jobs[0].$2" /tmp/"$1".json 2>/dev/null; }
# Verify failures fio reports (with --continue_on_error=verify it goes on and counts them).
vfails() { grep -cE "verify failed|bad (magic|header|pattern)|verify: " /tmp/"$1".err; }

fiorun fill --rw=write --bs=128k --verify_interval=4k --do_verify=0; rc=$?
expect_eq fill-exit "$rc" 0
expect_eq fill-written-KiB "$(jobs_field fill write.io_kbytes)" $((J * S * 1024))

fiorun randwrite --rw=randwrite --bs=4k --time_based --runtime="$R" --verify_backlog=64 --verify_fatal=1; rc=$?
jq -r '.jobs[0] | "  randwrite: \(.write.io_kbytes) KiB written, \(.write.iops | floor) IOPS; \(.read.io_kbytes) KiB verified; error \(.error)"' /tmp/randwrite.json 2>/dev/null
expect_eq randwrite-exit "$rc" 0
expect_eq randwrite-errors "$(jobs_field randwrite error)" 0
expect_eq randwrite-verify-failures "$(vfails randwrite)" 0
expect_true randwrite-wrote "$(jobs_field randwrite write.io_kbytes) KiB" test "$(jobs_field randwrite write.io_kbytes)" -gt 0
expect_true randwrite-verified "$(jobs_field randwrite read.io_kbytes) KiB read back" test "$(jobs_field randwrite read.io_kbytes)" -gt 0

fiorun verify --rw=read --bs=4k --continue_on_error=verify; rc=$?
jq -r '.jobs[0] | "  verify: \(.read.io_kbytes) KiB read, \(.read.iops | floor) IOPS; errors \(.total_err)"' /tmp/verify.json 2>/dev/null
expect_eq verify-exit "$rc" 0
expect_eq verify-read-KiB "$(jobs_field verify read.io_kbytes)" $((J * S * 1024))
expect_eq verify-errors "$(jobs_field verify total_err)/$(jobs_field verify error)" 0/0
expect_eq verify-failures "$(vfails verify)" 0
grep -m 5 -E "verify|error" /tmp/randwrite.err /tmp/verify.err | sed 's/^/  /'
disconnect disconnect
finish
