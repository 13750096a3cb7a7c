# Two-guest mode: src/Rdma between the guests over soft-RoCE (RdmaProbe: server in a, client in b).
# Env: PROBE (path of RdmaProbe.dll, visible in the guests).
set -u
rdma link add rxe0 type rxe netdev eth1 || exit 1
export DOTNET_CLI_HOME=/tmp HOME=/tmp
if [ "$RIG_NODE" = a ]; then
  timeout 240 dotnet "$PROBE" server 192.168.100.1 7471
else
  sleep 3
  timeout 240 dotnet "$PROBE" client 192.168.100.1 7471
fi
