# Persistent reservations across an HA pair with nvme-cli, as two clustered hosts use them: host 1 reaches node A
# (the namespace's owner) and host 2 node B (which relays to A), each with its own host NQN and host ID, from this
# one guest. Commands go to one controller each (the controller's character device: NVME_IOCTL_IO_CMD, so the
# subsystem must have one namespace). Then nvme compare, get-feature for every feature with every select, and
# get-log for the log pages, through each node.
# Env: SUBNQN, TARGET_PORT (node A), TARGET_PORT_B (node B) (see lib.sh).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
PB=${TARGET_PORT_B:?TARGET_PORT_B is required}
H1=nqn.2014-08.org.nvmexpress:uuid:11111111-1111-4111-8111-111111111111 I1=11111111-1111-4111-8111-111111111111
H2=nqn.2014-08.org.nvmexpress:uuid:22222222-2222-4222-8222-222222222222 I2=22222222-2222-4222-8222-222222222222

wait_target "$P" || { fail discover-a; finish; }
wait_target "$PB" || { fail discover-b; finish; }
need connect-host1-to-a nvme connect -t tcp -a "$A" -s "$P" -n "$N" --hostnqn="$H1" --hostid="$I1"
need connect-host2-to-b nvme connect -t tcp -a "$A" -s "$PB" -n "$N" --hostnqn="$H2" --hostid="$I2"
wait_ns 1 || { fail namespace; finish; }
C1= C2=
for c in $(ctrls_of); do
  case "$(< "/sys/class/nvme/$c/hostnqn")" in "$H1") C1=/dev/$c ;; "$H2") C2=/dev/$c ;; esac
done
expect_true controllers "host 1: $C1, host 2: $C2" test -n "$C1" -a -n "$C2"
[ "$FAILS" -eq 0 ] || finish
head -c 512 /dev/urandom > /tmp/blk

# write NAME CTRL [expect=ok|conflict]: a one-block write to LBA 0 through CTRL.
write() {
  run nvme io-passthru "$2" --opcode=0x01 --namespace-id=1 --data-len=512 --write --input-file=/tmp/blk --cdw10=0 --cdw12=0 > /tmp/w.out 2>&1
  local rc=$?
  if [ "${3:-ok}" = ok ]; then expect_true "$1" "exit $rc: $(tail -n 1 /tmp/w.out)" test "$rc" = 0
  else expect_true "$1" "exit $rc: $(tail -n 1 /tmp/w.out)" grep -qi "reservation.conflict" /tmp/w.out; fi
}
# report CTRL: the Reservation Report (extended) as "rtype regctl holder-hostid"
report() {
  run nvme resv-report "$1" --namespace-id=1 --eds -o json > /tmp/r.json 2>/tmp/r.err || { echo "error $(head -c 100 /tmp/r.err)"; return; }
  jq -r '"\(.rtype) \(.regctl) \([.regctlext[]? | select(.rcsts == 1) | .hostid] | join(","))"' /tmp/r.json 2>/dev/null
}

check register-1 nvme resv-register "$C1" --namespace-id=1 --nrkey=0x1111 --rrega=0
check register-2 nvme resv-register "$C2" --namespace-id=1 --nrkey=0x2222 --rrega=0
check register-2-other-key-conflicts bash -c "! nvme resv-register $C2 --namespace-id=1 --nrkey=0x3333 --rrega=0"
check acquire-1-write-exclusive nvme resv-acquire "$C1" --namespace-id=1 --crkey=0x1111 --rtype=1 --racqa=0
r1=$(report "$C1") r2=$(report "$C2")
echo "  report through A: $r1; through B: $r2"
expect_eq report-through-a "$(echo "$r1" | cut -d' ' -f1-2)" "1 2"
expect_eq report-same-through-both-nodes "$r2" "$r1"
check report-eds0-refused bash -c "! nvme resv-report $C1 --namespace-id=1 > /dev/null 2>&1"
write write-holder-through-a "$C1"
write write-registrant-through-b-conflicts "$C2" conflict
check acquire-2-conflicts bash -c "! nvme resv-acquire $C2 --namespace-id=1 --crkey=0x2222 --rtype=1 --racqa=0"
check preempt-by-2-through-b nvme resv-acquire "$C2" --namespace-id=1 --crkey=0x2222 --prkey=0x1111 --rtype=1 --racqa=1
write write-preempted-through-a-conflicts "$C1" conflict
write write-new-holder-through-b "$C2"
expect_eq report-after-preempt "$(report "$C1" | cut -d' ' -f1-2)" "1 1"
run nvme get-log "$C1" --log-id=0x80 --log-len=64 -b > /tmp/n.bin 2>/dev/null
expect_eq notification-registration-preempted "$(od -An -tu1 -j8 -N1 /tmp/n.bin | tr -d ' ')" 1
check release-2 nvme resv-release "$C2" --namespace-id=1 --crkey=0x2222 --rtype=1 --rrela=0
expect_eq report-after-release "$(report "$C2" | cut -d' ' -f1-2)" "0 1"
check register-1-again nvme resv-register "$C1" --namespace-id=1 --nrkey=0x1111 --rrega=0
check clear-by-1 nvme resv-release "$C1" --namespace-id=1 --crkey=0x1111 --rrela=1
expect_eq report-after-clear "$(report "$C2" | cut -d' ' -f1-2)" "0 0"
write write-after-clear-through-b "$C2"

# nvme compare on the namespace (either path): the data just written matches, other data does not.
DEV=$(ns_dev 1)
check compare-matches nvme compare "$DEV" --start-block=0 --block-count=0 --data-size=512 --data=/tmp/blk
head -c 512 /dev/zero > /tmp/zero
check compare-mismatch-fails bash -c "! nvme compare $DEV --start-block=0 --block-count=0 --data-size=512 --data=/tmp/zero > /tmp/cmp.out 2>&1"
expect_true compare-mismatch-status "$(tail -n 1 /tmp/cmp.out)" grep -qi "compare" /tmp/cmp.out

# get-feature: every feature, every select, through each node; get-log: every page the node lists.
for c in "$C1" "$C2"; do
  node=a; [ "$c" = "$C2" ] && node=b
  bad=
  for f in 0x01 0x02 0x04 0x05 0x06 0x07 0x08 0x09 0x0a 0x0b 0x0f 0x81 0x82 0x83; do
    for s in 0 1 2 3; do
      case $f in
        0x81) run nvme get-feature "$c" --feature-id=$f --sel=$s --cdw11=1 --data-len=16 > /dev/null 2>&1 || bad="$bad $f/$s" ;;
        0x82|0x83) run nvme get-feature "$c" --feature-id=$f --sel=$s --namespace-id=1 > /dev/null 2>&1 || bad="$bad $f/$s" ;;
        *) run nvme get-feature "$c" --feature-id=$f --sel=$s > /dev/null 2>&1 || bad="$bad $f/$s" ;;
      esac
    done
  done
  expect_true "get-feature-every-fid-and-select-$node" "failed:${bad:- none}" test -z "$bad"
  bad=
  for l in 0x00 0x01 0x02 0x03 0x04 0x05 0x0c 0x80; do
    run nvme get-log "$c" --log-id=$l --log-len=64 -b > /dev/null 2>&1 || bad="$bad $l"
  done
  expect_true "get-log-pages-$node" "failed:${bad:- none}" test -z "$bad"
done
finish
