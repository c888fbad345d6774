#!/usr/bin/env bash
# bench/ab_pairs.sh against stand-ins for homa-perf: a failed run, or one that finished
# no call, stops the comparison with a line naming the round (it was a sample, or a
# Python traceback after all the rounds); good runs give their ratio.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d /tmp/homa-ab-XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
fake() {  # fake NAME CALLS STATUS: prints homa-perf's summary line, exits with STATUS
  printf '#!/bin/sh\necho "summary: %s RPCs in 1.00 s = 1.0 kops, errors 0"\nexit %s\n' "$2" "$3" > "$dir/$1"
  chmod +x "$dir/$1"
}
fake ok 1000 0
fake double 2000 0
fake failed 900 1
fake none 0 0
out=$("$root/bench/ab_pairs.sh" -n 2 "$dir/ok" "$dir/double" 2>&1) || fail "good runs: $out"
grep -q "geometric mean 2.000" <<<"$out" || fail "good runs' ratio: $out"
for bad in failed none; do
  if out=$("$root/bench/ab_pairs.sh" -n 2 "$dir/ok" "$dir/$bad" 2>&1); then fail "a $bad run was taken as a sample: $out"; fi
  grep -q "round 1: a run of '$dir/$bad' failed or finished no call" <<<"$out" || fail "no clear error for a $bad run: $out"
  if grep -q Traceback <<<"$out"; then fail "a $bad run ended in a traceback"; fi
done
echo PASS
