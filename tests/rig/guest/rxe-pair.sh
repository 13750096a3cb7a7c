# Two-guest mode check (run-pair.sh): soft-RoCE (rxe) on the private link, ibv_rc_pingpong and rping
# between guest a (server) and b (client), and .NET running inside guest a (a node can run in a guest).
set -u
rdma link add rxe0 type rxe netdev eth1 || exit 1
gid=$(grep -l '^0000:0000:0000:0000:0000:ffff' /sys/class/infiniband/rxe0/ports/1/gids/* | head -1)
gid=${gid##*/}
echo "node $RIG_NODE: rxe0 on eth1 $(ip -br -4 addr show eth1 | awk '{print $3}'), gid index $gid"
server=192.168.100.1
retry() { for i in $(seq 60); do "$@" && return 0; sleep 1; done; return 1; }
if [ "$RIG_NODE" = a ]; then
  export DOTNET_CLI_HOME=/tmp HOME=/tmp
  dotnet --list-runtimes | grep -q Microsoft.NETCore.App; r0=$?
  echo "CHECK dotnet-in-guest: $([ $r0 = 0 ] && echo ok || echo FAIL)"
  timeout 120 ibv_rc_pingpong -d rxe0 -g "$gid" -n 200 -p 18516 > /tmp/pp.txt 2>&1; r1=$?
  timeout 120 rping -s -a $server -C 50 -S 4096 > /tmp/rping.txt 2>&1; r2=$?
else
  r0=0
  sleep 2
  retry timeout 120 ibv_rc_pingpong -d rxe0 -g "$gid" -n 200 -p 18516 $server > /tmp/pp.txt 2>&1; r1=$?
  retry timeout 120 rping -c -a $server -C 50 -S 4096 -v > /tmp/rping.txt 2>&1; r2=$?
  tail -2 /tmp/pp.txt
  echo "rping: $(grep -c '^ping data' /tmp/rping.txt) pings of 4096 bytes"
fi
echo "CHECK rc-pingpong: $([ $r1 = 0 ] && echo ok || echo FAIL)"
echo "CHECK rping: $([ $r2 = 0 ] && echo ok || echo FAIL)"
exit $((r0 | r1 | r2))
