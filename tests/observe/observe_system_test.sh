#!/usr/bin/env bash
# homa-metrics and homa-trace against live processes: a homa-perf server published on a
# metrics socket (HOMA_METRICS_SOCKET) and traced (HOMA_TRACE_FILE), a client process
# traced too; then the two traces merged.
set -euo pipefail
bin=$1
dir=$(mktemp -d /tmp/homa-observe-XXXXXX)
port=$((20000 + RANDOM % 20000))
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

HOMA_METRICS_SOCKET="$dir/server-%e.sock" HOMA_TRACE_FILE="$dir/server.tt" \
  "$bin/homa-perf" server --port $port > "$dir/server.out" &
server=$!
sock="$dir/server-$port.sock"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || fail "no metrics socket at $sock"

echo "== before any load"
"$bin/homa-metrics" "$sock" --rpcs > "$dir/rpcs.txt"
head -1 "$dir/rpcs.txt" | grep -q "silent" || fail "--rpcs header"
"$bin/homa-metrics" "$sock" --prometheus > "$dir/prom.txt"
grep -q "^# TYPE homa_peers gauge" "$dir/prom.txt" || fail "--prometheus"
"$bin/homa-metrics" "$sock" --save "$dir/before.txt"

echo "== a traced client"
HOMA_TRACE_FILE="$dir/client.tt" "$bin/homa-perf" client --servers 127.0.0.1:$port --workload 100 \
  --client-max 4 --duration 1 --quiet > "$dir/client.out"
[ -s "$dir/client.tt" ] || fail "the client wrote no trace"

echo "== counters and rates"
"$bin/homa-metrics" "$sock" > "$dir/values.txt"
cat "$dir/values.txt"
requests=$(awk '$1 == "server_requests_received" {print $2}' "$dir/values.txt")
[ "${requests:-0}" -gt 100 ] || fail "server_requests_received is '${requests:-}'"
"$bin/homa-metrics" "$sock" --since "$dir/before.txt" > "$dir/since.txt"
grep -q "per second" "$dir/since.txt" || fail "--since shows no rates"
change=$(awk '$1 == "server_requests_received" {print $3}' "$dir/since.txt")
[ "${change:-0}" -eq "$requests" ] || fail "change since the saved snapshot: '${change:-}' != $requests"
"$bin/homa-metrics" "$sock" --interval 0.2 --count 2 --all > "$dir/interval.txt"
[ "$(grep -c "^server_requests_received" "$dir/interval.txt")" -eq 2 ] || fail "--interval --count 2"

echo "== bad input is refused"
if "$bin/homa-metrics" "$dir/nothing.sock" 2> "$dir/err.txt"; then fail "a missing socket was accepted"; fi
grep -q "nothing.sock" "$dir/err.txt" || fail "no clear error for a missing socket"
echo "garbage here" > "$dir/garbage.txt"
if "$bin/homa-metrics" "$dir/garbage.txt" 2> "$dir/err.txt"; then fail "a garbage snapshot was accepted"; fi
grep -q "line 1" "$dir/err.txt" || fail "no clear error for a garbage snapshot"
if "$bin/homa-metrics" "$sock" --trace sideways 2> /dev/null; then fail "a bad --trace was accepted"; fi
# Options that would be ignored together are refused, each with a line saying why.
refused() {
  if "$bin/homa-metrics" "$@" > /dev/null 2> "$dir/err.txt"; then fail "homa-metrics took $*"; fi
  [ -s "$dir/err.txt" ] || fail "no error for $*"
}
refused "$sock" --since "$dir/before.txt" --interval 0.1
refused "$sock" --count 3
refused "$sock" --rpcs --all
refused "$sock" --prometheus --save "$dir/never.txt"
[ ! -e "$dir/never.txt" ] || fail "a refused command wrote its --save file"
refused "$sock" --trace on --rpcs
# A saved snapshot is counters taken once: what needs the live process says so.
for opt in --rpcs --prometheus "--trace on" "--interval 0.1"; do
  # shellcheck disable=SC2086
  refused "$dir/before.txt" $opt
  grep -q "saved snapshot" "$dir/err.txt" || fail "$opt on a snapshot file: $(cat "$dir/err.txt")"
done
"$bin/homa-metrics" "$dir/before.txt" > /dev/null || fail "a saved snapshot cannot be read"
# NaN passes a plain range check (every comparison with it is false).
if "$bin/homa-metrics" "$sock" --interval nan > /dev/null 2>&1; then fail "homa-metrics took --interval nan"; fi

echo "== trace control over the socket"
"$bin/homa-metrics" "$sock" --trace "dump:$dir/ondemand.tt" > "$dir/dump.txt"
grep -q "trace written" "$dir/dump.txt" || fail "trace dump"
grep -q "^# homa-trace 1" "$dir/ondemand.tt" || fail "on-demand dump is not a trace"

kill -TERM $server
wait $server || fail "server exit status"
server=
[ ! -e "$sock" ] || fail "the socket file outlived the server"
[ -s "$dir/server.tt" ] || fail "the server wrote no trace at exit"

echo "== homa-trace"
"$bin/homa-trace" merge "$dir/client.tt" "$dir/server.tt" -o "$dir/merged.txt"
head -3 "$dir/merged.txt"
grep -q "packets exchanged" "$dir/merged.txt" || fail "clocks not aligned from packets"
grep -q "recv DATA" "$dir/merged.txt" || fail "no packets in the merged trace"
"$bin/homa-trace" slow --fraction 0.05 --top 3 "$dir/client.tt" "$dir/server.tt" | tee "$dir/slow.txt"
grep -q "RPCs: latency P50" "$dir/slow.txt" || fail "no slow-RPC summary"
id=$(grep -o "handoff response id [0-9]*" "$dir/client.tt" | tail -1 | awk "{print \$4}")
[ -n "$id" ] || fail "no completed RPC in the client trace"
"$bin/homa-trace" rpc "$id" "$dir/client.tt" "$dir/server.tt" > "$dir/rpc.txt"
grep -q "deliver request id $id" "$dir/rpc.txt" || fail "the RPC's timeline lacks the server side"
grep -q "handoff response id $id" "$dir/rpc.txt" || fail "the RPC's timeline lacks the client side"
if "$bin/homa-trace" merge "$dir/garbage.txt" 2> "$dir/err.txt"; then fail "homa-trace accepted garbage"; fi
grep -q "line 1" "$dir/err.txt" || fail "no clear error from homa-trace"
# NaN passes a plain range check (every comparison with it is false).
if "$bin/homa-trace" slow --fraction nan "$dir/client.tt" 2> /dev/null; then fail "homa-trace took --fraction nan"; fi
echo "PASS"
