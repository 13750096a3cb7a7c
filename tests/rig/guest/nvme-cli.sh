# nvme-cli against the target: discover, connect (plain, then with header + data digests), nvme list,
# id-ctrl, id-ns, ns-descs, list-subsys, ana-log, get-log (smart, error, firmware, raw), get-feature,
# data written and read back, disconnect. The identify checks include what the Linux host needs for
# native multipath (docs: DESIGN section 5): CNTLID, CMIC, KAS, IOCCSZ/IORCSZ, ANA fields, NMIC, NGUID.
# Env: SUBNQN, TARGET_ADDR, TARGET_PORT (see lib.sh); EXPECT_SERIAL, EXPECT_MODEL (required);
#      EXPECT_NSZE (namespace 1 size in blocks), EXPECT_BLOCK_SIZE (bytes), EXPECT_NGUID (32 hex
#      digits), EXPECT_ANA_STATE (this path's ANA state): optional; without them the values are
#      checked against the kernel's view (sysfs) and against each other.
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
: "${EXPECT_SERIAL:?EXPECT_SERIAL is required}" "${EXPECT_MODEL:?EXPECT_MODEL is required}"
# isnum VALUE [MIN MAX]: VALUE is a decimal number (within MIN..MAX); rtrim: without trailing blanks.
isnum() { [[ ${1:-} =~ ^[0-9]+$ ]] && [ "$1" -ge "${2:-0}" ] && { [ -z "${3:-}" ] || [ "$1" -le "$3" ]; }; }
rtrim() { local v=$1; echo "${v%"${v##*[! ]}"}"; }

# --- discovery
if wait_target; then ok discover "$A:$P"; else fail discover "($A:$P did not answer within ${TARGET_WAIT:-90} s)"; finish; fi
grep -E "subtype|trsvcid|subnqn|traddr" /tmp/disc.txt | sed 's/^/  /'
expect_true discover-lists-subsystem "$N" grep -q "subnqn: *$N\$" /tmp/disc.txt
run nvme discover -t tcp -a "$A" -s "$P" -o json > /tmp/disc.json 2>/dev/null
expect_eq discover-entry-trtype "$(jq -r --arg n "$N" '[.records[] | select(.subnqn == $n)][0].trtype' /tmp/disc.json 2>/dev/null)" tcp

# --- connect, nvme list
connect connect
echo "  controller $CTRL, namespace head $DEV"
run nvme list -o json > /tmp/list.json 2>/dev/null
entry=$(jq -c --arg d "$DEV" '.Devices[] | select(.DevicePath == $d)' /tmp/list.json 2>/dev/null)
expect_true nvme-list "$DEV listed" test -n "$entry"
expect_eq nvme-list-serial "$(echo "$entry" | jq -r .SerialNumber 2>/dev/null)" "$EXPECT_SERIAL"
expect_eq nvme-list-model "$(echo "$entry" | jq -r .ModelNumber 2>/dev/null)" "$EXPECT_MODEL"

# --- id-ctrl (one jq per document: every process costs in the emulated guest)
run nvme id-ctrl "/dev/$CTRL" -o json > /tmp/id-ctrl.json 2>/tmp/id-ctrl.err
fields=$(jq -r '@sh "sn=\(.sn) mn=\(.mn) subnqn=\(.subnqn) cntlid=\(.cntlid) cmic=\(.cmic) kas=\(.kas) ioccsz=\(.ioccsz) iorcsz=\(.iorcsz) anagrpmax=\(.anagrpmax) nanagrpid=\(.nanagrpid) nn=\(.nn) mnan=\(.mnan)"' /tmp/id-ctrl.json 2>/dev/null)
expect_true id-ctrl "$(head -c 200 /tmp/id-ctrl.err)" test -n "$fields"
sn= mn= subnqn= cntlid= cmic= kas= ioccsz= iorcsz= anagrpmax= nanagrpid= nn= mnan=
eval "$fields"
expect_eq id-ctrl-sn "$(rtrim "$sn")" "$EXPECT_SERIAL"
expect_eq id-ctrl-mn "$(rtrim "$mn")" "$EXPECT_MODEL"
expect_eq id-ctrl-subnqn "$subnqn" "$N"
expect_eq id-ctrl-cntlid-is-connects "$cntlid" "$(< "/sys/class/nvme/$CTRL/cntlid")"
expect_true id-ctrl-cntlid-valid "cntlid $cntlid, not 0 or 0xFFF0-0xFFFF" isnum "$cntlid" 1 65519
expect_eq id-ctrl-cmic-multi-controller-and-ana "$(( $(isnum "$cmic" && echo "$cmic" || echo 0) & 0x0a ))" 10
expect_ge id-ctrl-kas "$kas" 1
expect_ge id-ctrl-ioccsz "$ioccsz" 4
expect_ge id-ctrl-iorcsz "$iorcsz" 1
expect_ge id-ctrl-anagrpmax "$anagrpmax" 1
expect_ge id-ctrl-nanagrpid "$nanagrpid" 1
expect_true id-ctrl-mnan "mnan $mnan, nn $nn: 1 <= mnan <= nn" isnum "$mnan" 1 "$(isnum "$nn" && echo "$nn" || echo 0)"

# --- id-ns, ns-descs
run nvme id-ns "$DEV" -o json > /tmp/id-ns.json 2>/tmp/id-ns.err
fields=$(jq -r '@sh "nsze=\(.nsze) ncap=\(.ncap) nmic=\(.nmic) nguid=\(.nguid) anagrpid=\(.anagrpid) ds=\(.lbafs[.flbas % 16].ds)"' /tmp/id-ns.json 2>/dev/null)
expect_true id-ns "$(head -c 200 /tmp/id-ns.err)" test -n "$fields"
nsze= ncap= nmic= nguid= anagrpid= ds=
eval "$fields"
isnum "$ds" 9 16 || ds=0
bs=$(( 1 << ds ))
blk=/sys/block/${DEV#/dev/}
sectors=$(< "$blk/size")   # 512-byte units: the kernel's view
expect_eq id-ns-nsze "$nsze" "${EXPECT_NSZE:-$(( sectors * 512 / bs ))}"
expect_true id-ns-ncap "ncap $ncap <= nsze $nsze" isnum "$ncap" 1 "$(isnum "$nsze" && echo "$nsze" || echo 0)"
expect_eq id-ns-lbaf-block-size "$bs" "${EXPECT_BLOCK_SIZE:-$(< "$blk/queue/logical_block_size")}"
expect_eq id-ns-size-matches-kernel "$(( $(isnum "$nsze" && echo "$nsze" || echo 0) * bs ))" "$(( sectors * 512 ))"
expect_eq id-ns-nmic-shared "$(( $(isnum "$nmic" && echo "$nmic" || echo 0) & 1 ))" 1
if [ -n "${EXPECT_NGUID:-}" ]; then expect_eq id-ns-nguid "$nguid" "$(echo "$EXPECT_NGUID" | tr -d ':-' | tr A-F a-f)"
else expect_true id-ns-nguid "$nguid, not zero" test -n "$nguid" -a "$nguid" != null -a "$nguid" != 00000000000000000000000000000000; fi
expect_true id-ns-anagrpid "anagrpid $anagrpid in 1..$anagrpmax" isnum "$anagrpid" 1 "$(isnum "$anagrpmax" && echo "$anagrpmax" || echo 0)"
run nvme ns-descs "$DEV" -o json > /tmp/ns-descs.json 2>/tmp/ns-descs.err
d_nguid=$(jq -r '[."ns-descs"[] | select(.type == "nguid")][0].nguid // "none"' /tmp/ns-descs.json 2>/dev/null)
expect_true ns-descs "$(head -c 200 /tmp/ns-descs.err)" test -n "$d_nguid"
expect_true ns-descs-nguid-matches-id-ns "$d_nguid" test "$d_nguid" = none -o "$d_nguid" = "$nguid"

# --- list-subsys, ana-log
run nvme list-subsys "$DEV" > /tmp/list-subsys.txt 2>&1
sed 's/^/  /' /tmp/list-subsys.txt
expect_true list-subsys-nqn "$N" grep -q "NQN=$N\$" /tmp/list-subsys.txt
path=$(grep -E "traddr=$A,trsvcid=$P(,| )" /tmp/list-subsys.txt)
expect_true list-subsys-path-live "$(echo $path)" grep -qE "traddr=$A,trsvcid=$P(,| ).* live( |$)" /tmp/list-subsys.txt
run nvme ana-log "/dev/$CTRL" -o json > /tmp/ana.json 2>/tmp/ana.err
expect_true ana-log "$(head -c 200 /tmp/ana.err)" grep -q '"ngrps"' /tmp/ana.json
grp= state=
eval "$(jq -r '[."ANA DESC LIST "[] | select(any(.NSIDS[]; .nsid == 1))][0] // empty | @sh "grp=\(.grpid) state=\(.state)"' /tmp/ana.json 2>/dev/null)"
expect_true ana-log-lists-nsid-1 "group ${grp:-none}" test -n "$grp"
expect_eq ana-log-group-is-id-ns-anagrpid "$grp" "$anagrpid"
if [ -n "${EXPECT_ANA_STATE:-}" ]; then expect_eq ana-log-state "$state" "$EXPECT_ANA_STATE"
else expect_true ana-log-state "$state: accessible" test "$state" = optimized -o "$state" = non-optimized; fi
expect_true list-subsys-shows-ana-state "$state" grep -qE "trsvcid=$P(,| ).* live $state\$" /tmp/list-subsys.txt

# --- get-log, get-feature
check smart-log nvme smart-log "/dev/$CTRL"
check error-log nvme error-log "/dev/$CTRL" -e 4
check fw-log nvme fw-log "/dev/$CTRL"
run nvme get-log "/dev/$CTRL" --log-id=2 --log-len=512 -b > /tmp/smart.bin 2>/dev/null
expect_eq get-log-raw-smart-bytes "$(stat -c %s /tmp/smart.bin)" 512
kato=$(run nvme get-feature "/dev/$CTRL" -f 0x0f -H 2>/dev/null | sed -n 's/.*Keep Alive Timeout (KATO) in milliseconds: *\([0-9]*\).*/\1/p')
expect_eq get-feature-kato "${kato:-?}" "$(( $(< "/sys/class/nvme/$CTRL/kato") * 1000 ))"

# --- data through the kernel host
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 status=none
check write-4MiB dd if=/tmp/pattern of="$DEV" bs=1M count=4 oflag=direct status=none
check read-back-4MiB sh -c "dd if=$DEV bs=1M count=4 iflag=direct status=none | cmp - /tmp/pattern"
disconnect disconnect

# --- again with header and data digests (CRC32C on every PDU); the data written above must be there
connect connect-digests --hdr-digest --data-digest
check digests-read-earlier-data sh -c "dd if=$DEV bs=1M count=4 iflag=direct status=none | cmp - /tmp/pattern"
dd if=/dev/urandom of=/tmp/pattern2 bs=128k count=8 status=none
check digests-write dd if=/tmp/pattern2 of="$DEV" bs=128k count=8 seek=64 oflag=direct status=none
check digests-read-back sh -c "dd if=$DEV bs=128k count=8 skip=64 iflag=direct status=none | cmp - /tmp/pattern2"
check digests-id-ctrl nvme id-ctrl "/dev/$CTRL"
disconnect disconnect-digests
finish
