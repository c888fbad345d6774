#!/usr/bin/env bash
# Two network namespaces joined by a veth pair: the loopback test across them, then with
# nftables dropping 5% of the server's incoming packets at random. Every RPC must still
# complete exactly once. A second server remembers only 64 client ids exactly (its
# at-most-once window), so that lost requests fall below it before they are sent again:
# those must complete too, and none may run twice. Needs root (CI runs as root); exits
# 77 (skipped) otherwise.
set -euo pipefail
bin=$1
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || ! command -v nft >/dev/null; then
  echo "skipped: needs root, iproute2 and nftables"
  exit 77
fi
a=homa-a-$$
b=homa-b-$$
net="10.$((200 + RANDOM % 50)).$((RANDOM % 250)).0"
prefix=${net%.0}
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null || true
  [ -n "${server2:-}" ] && kill "$server2" 2>/dev/null || true
  # The veth pair starts in this namespace: deleted here if it never left (deleting one
  # end deletes both; once moved, it goes with the namespaces).
  ip link del "va$$" 2>/dev/null || true
  ip link del "vb$$" 2>/dev/null || true
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
}
trap cleanup EXIT
# A run killed outright (ctest's timeout sends SIGKILL) never reaches its cleanup: delete
# the namespaces of earlier runs whose process is gone, and end what still runs in them.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  [[ "$ns" =~ ^homa-[ab]-([0-9]+)$ ]] || continue
  kill -0 "${BASH_REMATCH[1]}" 2>/dev/null && continue
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
done
if ! ip netns add "$a" 2>/dev/null; then
  echo "skipped: cannot create network namespaces here"
  exit 77
fi
ip netns add "$b"
ip link add "va$$" type veth peer name "vb$$"
ip link set "va$$" netns "$a"
ip link set "vb$$" netns "$b"
ip -n "$a" addr add "$prefix.1/24" dev "va$$"
ip -n "$b" addr add "$prefix.2/24" dev "vb$$"
ip -n "$a" link set "va$$" up
ip -n "$b" link set "vb$$" up
ip -n "$a" link set lo up
ip -n "$b" link set lo up

port=4000
port2=4001
ip netns exec "$a" "$bin/loadgen" server "$prefix.1:$port" --threads 2 > server.out &
server=$!
ip netns exec "$a" "$bin/loadgen" server "$prefix.1:$port2" --seen-id-window 64 --print-metrics 1 > server2.out &
server2=$!
sleep 0.3
status=0
# Five client runs of at most 120 s each stay well inside the test's TIMEOUT (900 s),
# which, when reached, kills this script before its cleanup can run.
run() {
  timeout 120 ip netns exec "$b" "$bin/loadgen" client "$prefix.1:$port" "$@" || status=1
}
run2() {
  timeout 120 ip netns exec "$b" "$bin/loadgen" client "$prefix.1:$port2" "$@" || status=1
}
echo "== across namespaces"
run --workload w3 --count 2000 --concurrency 32 --seed 1
run --workload w4 --count 200 --concurrency 16 --seed 2

echo "== with 5% of packets dropped at random"
ip netns exec "$a" nft add table inet homatest
ip netns exec "$a" nft add chain inet homatest input '{ type filter hook input priority 0; }'
ip netns exec "$a" nft add rule inet homatest input udp dport "{ $port, $port2 }" numgen random mod 100 '<' 5 drop
ip netns exec "$a" nft add chain inet homatest output '{ type filter hook output priority 0; }'
ip netns exec "$a" nft add rule inet homatest output udp sport "{ $port, $port2 }" numgen random mod 100 '<' 5 drop
run --workload w3 --count 2000 --concurrency 32 --seed 3
run --workload w4 --count 200 --concurrency 16 --seed 4
echo "== lost requests below a 64-id window"
run2 --workload 100 --count 20000 --concurrency 64 --seed 5
ip netns exec "$a" nft list ruleset | grep -c drop >/dev/null

kill -TERM "$server" "$server2"
wait "$server" || status=1
wait "$server2" || status=1
server= server2=
cat server.out
grep -q "duplicates 0" server.out || status=1
grep -E "requests_readmitted|served" server2.out
grep -q "duplicates 0" server2.out || status=1
# (The run must have needed the permits: otherwise it tested nothing.)
grep -q "requests_readmitted" server2.out || { echo "no request was readmitted below the window"; status=1; }
exit $status
