# Starts Linux nvmet (NVMe/TCP) INSIDE the guest: the stand-in target the rig's self-test points the
# other guest scripts at (TARGET_ADDR=127.0.0.1), so they can be checked without StorageNode. Run it
# first in the same guest (steps.sh: RIG_STEPS="nvmet-setup.sh nvme-cli.sh ..."); the target stays up
# until the guest powers off. Namespace 1 is a RAM-backed null_blk (it keeps its data).
# To reach it through the host instead (the path a target on the host is reached by): NVMET_ADDR=10.0.2.15
# (the guest's eth0) and run-guest.sh -f HPORT:NVMET_PORT -p TARGET_PORT:HPORT, TARGET_ADDR=10.0.2.100.
# NVMET_TRTYPE=rdma makes the port NVMe/RDMA (two-guest mode: NVMET_ADDR=192.168.100.1 on an rxe device).
# Env: SUBNQN (required); NVMET_ADDR (127.0.0.1); NVMET_PORT (TARGET_PORT, 4420); NVMET_TRTYPE (tcp); NVMET_SIZE_MIB (256);
#      NVMET_BLOCK_SIZE (4096); NVMET_SERIAL / NVMET_MODEL (default EXPECT_SERIAL / EXPECT_MODEL, else
#      "RIGNVMET0001" / "Linux nvmet rig"); NVMET_NGUID (32 hex digits, default EXPECT_NGUID, else
#      derived from SUBNQN); NVMET_UUID (default derived from SUBNQN); NVMET_ANA_STATE (optimized).
. "${RIG_LIB:?RIG_LIB must name tests/rig/guest/lib.sh}"
trap - EXIT   # (the target stays: no cleanup on exit)
C=/sys/kernel/config
ADDR=${NVMET_ADDR:-127.0.0.1} P=${NVMET_PORT:-$P} TRT=${NVMET_TRTYPE:-tcp}
h=$(printf %s "$N" | md5sum | cut -c1-32)
NGUID=${NVMET_NGUID:-${EXPECT_NGUID:-$h}}
UUID=${NVMET_UUID:-$(printf %s "uuid:$N" | md5sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')}

expect_true configfs "nvmet and null_blk in $C" test -d "$C/nvmet" -a -d "$C/nullb"
[ "$FAILS" -eq 0 ] || finish

# The backing disk: null_blk made through configfs, named after its configfs folder (/dev/NAME).
i=0; while [ -e "$C/nullb/rignull$i" ]; do i=$((i + 1)); done
disk=rignull$i B=$C/nullb/rignull$i
mkdir "$B" && echo "${NVMET_SIZE_MIB:-256}" > "$B/size" && echo 1 > "$B/memory_backed" &&
  echo "${NVMET_BLOCK_SIZE:-4096}" > "$B/blocksize" && echo 1 > "$B/power"
end=$((SECONDS + 10)); while [ $SECONDS -lt $end ] && [ ! -b "/dev/$disk" ]; do sleep 0.1; done
expect_true backing-disk "/dev/$disk, ${NVMET_SIZE_MIB:-256} MiB, ${NVMET_BLOCK_SIZE:-4096}-byte blocks" test -b "/dev/$disk"
[ "$FAILS" -eq 0 ] || finish

# The subsystem, its namespace and a TCP port.
S=$C/nvmet/subsystems/$N
setup() {
  mkdir "$S" || return 1
  echo 1 > "$S/attr_allow_any_host" || return 1
  echo "${NVMET_SERIAL:-${EXPECT_SERIAL:-RIGNVMET0001}}" > "$S/attr_serial" || return 1
  echo "${NVMET_MODEL:-${EXPECT_MODEL:-Linux nvmet rig}}" > "$S/attr_model" || return 1
  mkdir "$S/namespaces/1" || return 1
  echo "/dev/$disk" > "$S/namespaces/1/device_path" || return 1
  echo "$NGUID" > "$S/namespaces/1/device_nguid" || return 1
  echo "$UUID" > "$S/namespaces/1/device_uuid" || return 1
  echo 1 > "$S/namespaces/1/enable" || return 1
  local id=1; while [ -e "$C/nvmet/ports/$id" ]; do id=$((id + 1)); done
  PORT=$C/nvmet/ports/$id
  mkdir "$PORT" || return 1
  echo "$TRT" > "$PORT/addr_trtype"; echo ipv4 > "$PORT/addr_adrfam"
  echo "$ADDR" > "$PORT/addr_traddr"; echo "$P" > "$PORT/addr_trsvcid"
  ln -s "$S" "$PORT/subsystems/$N" || return 1
  echo "${NVMET_ANA_STATE:-optimized}" > "$PORT/ana_groups/1/ana_state" || return 1
}
expect_true nvmet-subsystem "$N, namespace 1 on /dev/$disk, nguid $NGUID, uuid $UUID" setup
expect_true nvmet-namespace-enabled "" test "$(cat "$S/namespaces/1/enable" 2>/dev/null)" = 1
listening() { [ "$TRT" != tcp ] || ss -Htln "sport = :$P" | grep -q "$ADDR:$P"; }
end=$((SECONDS + 10)); while [ $SECONDS -lt $end ] && ! listening; do sleep 0.1; done
expect_true nvmet-listening "$TRT $ADDR:$P" listening
expect_true nvmet-discovery "$ADDR:$P lists $N" sh -c "timeout 30 nvme discover -t $TRT -a $ADDR -s $P | grep -q 'subnqn: *$N\$'"
finish
