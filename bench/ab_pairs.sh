#!/usr/bin/env bash
# Compares two homa-perf configurations on small-RPC throughput, for changes of a few per
# cent that single runs cannot show on a noisy machine (here the same binary measures
# anywhere from 950 to 1,850 kops from one run to the next).
#
#   bench/ab_pairs.sh [-n PAIRS] [-m OUTSTANDING] [-d SECONDS] "COMMAND A" "COMMAND B"
#
# Each command is a homa-perf binary with any options of its own, e.g.
#   bench/ab_pairs.sh -n 60 "build-a/bin/homa-perf" "build-b/bin/homa-perf"
#   bench/ab_pairs.sh "build/bin/homa-perf --protocol tcp" "build/bin/homa-perf"
# It runs PAIRS pairs of short `local` runs of 64 B calls (default 60 pairs of 1 s with 64
# outstanding), A and B back to back, alternating which goes first, and prints the
# geometric mean of B/A over the pairs with its 95 % interval (two standard errors of the
# mean log ratio) and the median ratio. 60 pairs take about 3 minutes; their interval is
# about +-2 % on this machine. Nothing else should run meanwhile.
set -euo pipefail

usage() {
  echo "usage: $0 [-n PAIRS] [-m OUTSTANDING] [-d SECONDS] \"COMMAND A\" \"COMMAND B\"" >&2
  exit 2
}
# A whole number in [1, max], or a one-line error and exit status 2.
count() {
  if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ] || [ "$2" -gt "$3" ]; then
    echo "ab_pairs.sh: $1 must be an integer in [1, $3], not '$2'" >&2
    exit 2
  fi
}
pairs=60 outstanding=64 seconds=1
while getopts ":n:m:d:" opt; do
  case $opt in
    n) count -n "$OPTARG" 100000; pairs=$OPTARG ;;
    m) count -m "$OPTARG" 100000; outstanding=$OPTARG ;;
    d) count -d "$OPTARG" 3600; seconds=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || usage
a=$1 b=$2
for c in "$a" "$b"; do
  read -ra cmd <<<"$c"
  if [ ${#cmd[@]} -eq 0 ] || ! [ -x "${cmd[0]}" ]; then
    echo "ab_pairs.sh: '${cmd[0]:-}' is not an executable homa-perf" >&2
    exit 2
  fi
done

kops() {
  # (--base-rtt-us skips the unloaded round trip's measurement: slowdowns are not read.)
  local out cmd
  read -ra cmd <<<"$1"  # the binary, then its own options (after the role)
  out=$("${cmd[0]}" local --quiet --duration "$seconds" --workload 64 --client-max "$outstanding" \
    --base-rtt-us 20 "${cmd[@]:1}")
  grep -o "= [0-9.]* kops" <<<"$out" | awk '{print $2}'
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for i in $(seq "$pairs"); do
  if [ $((i % 2)) -eq 0 ]; then
    ka=$(kops "$a"); kb=$(kops "$b")
  else
    kb=$(kops "$b"); ka=$(kops "$a")
  fi
  if [ -z "$ka" ] || [ -z "$kb" ]; then
    echo "pair $i: a run printed no summary" >&2
    exit 1
  fi
  echo "$ka $kb" >>"$results"
done

python3 - "$results" "$a" "$b" <<'PY'
import math, statistics, sys
rows = [tuple(map(float, line.split())) for line in open(sys.argv[1])]
logs = [math.log(b / a) for a, b in rows]
mean = statistics.mean(logs)
se = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("inf")
print(f"A: {sys.argv[2]}\nB: {sys.argv[3]}")
print(f"{len(rows)} pairs: A median {statistics.median(a for a, _ in rows):.0f} kops, "
      f"B median {statistics.median(b for _, b in rows):.0f} kops")
print(f"B/A: geometric mean {math.exp(mean):.3f} (95 % interval {math.exp(mean - 2 * se):.3f}-"
      f"{math.exp(mean + 2 * se):.3f}), median {statistics.median(b / a for a, b in rows):.3f}")
PY
