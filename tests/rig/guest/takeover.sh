# A node's death and return under the kernel host's native multipath: both paths of one subsystem, fio crc32c
# verify on both namespaces (NSID 1 owned by the node behind TARGET_PORT, NSID 2 by the one behind TARGET_PORT_B)
# while the host side kills the first node (SIGKILL), waits for the survivor to take its group over, starts it again
# and waits for the giveback. Env: SUBNQN, TARGET_PORT, TARGET_PORT_B, FIO_RUNTIME (default 45).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
PB=${TARGET_PORT_B:?}
wait_target "$P" || exit 1
wait_target "$PB" || exit 1
check connect-a nvme connect -t tcp -a "$A" -s "$P" -n "$N"
check connect-b nvme connect -t tcp -a "$A" -s "$PB" -n "$N"
wait_ns 1 || exit 1
wait_ns 2 || exit 1
sleep 2
dev1=$(ns_dev 1) dev2=$(ns_dev 2)
nvme list-subsys "$dev1" | tee /tmp/ls.txt
expect_eq two-paths "$(grep -c ' live ' /tmp/ls.txt)" 2
check a-optimized-for-nsid1 grep -q "trsvcid=$P.* live optimized" /tmp/ls.txt
expect_eq multipath-enabled "$(cat /sys/module/nvme_core/parameters/multipath)" Y

touch "$RIG_OUT/fio-started"   # the host kills node A from now on, and starts it again
# One job per namespace (reported apart): random 4 KiB writes, each verified (crc32c) as it is read back.
fio --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 --size=32M --time_based --runtime="${FIO_RUNTIME:-45}" \
    --verify=crc32c --verify_backlog=128 --verify_fatal=1 --eta=never --output-format=json --output=/tmp/fio.json \
    --write_lat_log=/tmp/lat --log_avg_msec=250 --log_max_value=1 \
    --name=nsid1 --filename="$dev1" --name=nsid2 --filename="$dev2"
rc=$?
touch "$RIG_OUT/fio-done"
sed -n '/^{/,$p' /tmp/fio.json > /tmp/fio.clean && mv /tmp/fio.clean /tmp/fio.json
cp /tmp/fio.json "$RIG_OUT/fio.json"
for j in 0 1; do
  jq -r ".jobs[$j] | \"\(.jobname): write \(.write.io_kbytes) KiB, \(.write.iops|floor) IOPS, verified \(.read.io_kbytes) KiB, errors \(.error)\"" /tmp/fio.json
  echo "MAX-LATENCY-MS $(jq -r ".jobs[$j] | .jobname + \" \" + ([.write.lat_ns.max, .read.lat_ns.max] | max / 1000000 | floor | tostring)" /tmp/fio.json)"
  expect_eq "fio-errors-$(jq -r ".jobs[$j].jobname" /tmp/fio.json)" "$(jq -r ".jobs[$j].error" /tmp/fio.json)" 0
  check "fio-verified-$(jq -r ".jobs[$j].jobname" /tmp/fio.json)" sh -c "[ $(jq -r ".jobs[$j].read.io_kbytes" /tmp/fio.json) -gt 0 ]"
done
expect_eq fio-exit "$rc" 0
# The stalls, each when it came: every 250 ms window of fio's run whose longest I/O took over 200 ms
# ("STALL nsidN AT-S MS", AT-S in seconds since fio started; the host side prints its events on the same scale).
for j in 1 2; do
  for f in /tmp/lat_clat."$j".log /tmp/lat_lat."$j".log; do [ -r "$f" ] && break; done
  [ -r "$f" ] && awk -F', *' -v n="nsid$j" '$2 > 200000000 { printf "STALL %s %.2f %d\n", n, $1 / 1000, $2 / 1000000 }' "$f"
done

# Node A is back and owns NSID 1 again: its path is optimized once more.
check_optimized a-optimized-again "$dev1" "$P" 60
nvme disconnect -n "$N" >/dev/null 2>&1
finish
