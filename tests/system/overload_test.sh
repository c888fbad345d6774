#!/usr/bin/env bash
# Overload, real: several client processes flood one server process whose processing
# budget is far below the offered load. It must keep answering, count the requests it
# refused, never execute a request twice, and shut down promptly when told.
set -euo pipefail
bin=$1
port=$((20000 + RANDOM % 20000))
"$bin/loadgen" server 127.0.0.1:$port --threads 1 --service-us 200 --max-pending 16 > server.out &
server=$!
pids=()
# The clients run under timeout(1), which passes SIGTERM on to its child (it cannot pass
# SIGKILL on).
cleanup() {
  kill -9 "$server" 2>/dev/null || true
  for p in "${pids[@]:-}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
sleep 0.3
for i in 1 2 3; do
  timeout 120 "$bin/loadgen" client 127.0.0.1:$port --workload 200 --count 3000 --concurrency 200 \
    --timeout-ms 300 --seed $((100 + i)) > client$i.out 2>&1 &
  pids+=($!)
done
sleep 2
# While flooded, a well-behaved client still gets answers.
timeout 60 "$bin/loadgen" client 127.0.0.1:$port --workload 100 --count 20 --concurrency 1 --seed 200 \
  > probe.out 2>&1 || true
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()  # (reaped: their ids may be reused)
cat client*.out probe.out
start=$(date +%s%N)
kill -TERM $server
wait $server
server=
stopped_ms=$(( ($(date +%s%N) - start) / 1000000 ))
cat server.out
echo "server stopped in ${stopped_ms} ms"
served=$(awk '/^served/ {print $2}' server.out)
refused=$(awk '/^served/ {print $6}' server.out)
probe_ok=$(awk '/^completed/ {print $2}' probe.out)
status=0
[ "$served" -gt 0 ] || { echo "FAIL: the server answered nothing"; status=1; }
[ "$refused" -gt 0 ] || { echo "FAIL: no refusals counted under 3x overload"; status=1; }
[ "${probe_ok:-0}" -gt 0 ] || { echo "FAIL: the probe client got no answer during the flood"; status=1; }
[ "$stopped_ms" -lt 5000 ] || { echo "FAIL: shutdown took ${stopped_ms} ms"; status=1; }
grep -q "duplicates 0" server.out || status=1
exit $status
