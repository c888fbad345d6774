#!/usr/bin/env bash
# Compares two homa-perf configurations on small-RPC throughput, for changes of a few per
# cent that single runs cannot show on a noisy machine (here the same binary measures
# anywhere from 950 to 1,850 kops from one run to the next).
#
#   bench/ab_pairs.sh [-n PAIRS] [-m OUTSTANDING] [-d SECONDS] [-w WORKLOAD] "COMMAND A" "COMMAND B" ["COMMAND C" ...]
#
# Each command is a homa-perf binary with any options of its own, e.g.
#   bench/ab_pairs.sh -n 60 "build-a/bin/homa-perf" "build-b/bin/homa-perf"
#   bench/ab_pairs.sh "build/bin/homa-perf --protocol tcp" "build/bin/homa-perf"
# It runs PAIRS pairs of short `local` runs of 64 B calls (default 60 pairs of 1 s with 64
# outstanding; -w gives another --workload, e.g. -w 1000000 with --one-way in the commands
# for large messages, whose rate is then their throughput), A and B back to back, alternating which goes first, and prints the
# geometric mean of B/A over the pairs with its 95 % interval (two standard errors of the
# mean log ratio) and the median ratio. 60 pairs take about 3 minutes; their interval is
# about +-2 % on this machine. Nothing else should run meanwhile.
# Up to four more commands (C, D, ...) join each round, in turn first: each is then
# compared with A measured in the same rounds, e.g. a baseline against the code before and
# after a change:
#   bench/ab_pairs.sh "homa-perf --protocol tcp" "homa-perf-before" "homa-perf-after"
set -euo pipefail

usage() {
  echo "usage: $0 [-n PAIRS] [-m OUTSTANDING] [-d SECONDS] [-w WORKLOAD] \"COMMAND A\" \"COMMAND B\" [\"COMMAND C\" ...]" >&2
  exit 2
}
# A whole number in [1, max], or a one-line error and exit status 2.
count() {
  if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ] || [ "$2" -gt "$3" ]; then
    echo "ab_pairs.sh: $1 must be an integer in [1, $3], not '$2'" >&2
    exit 2
  fi
}
pairs=60 outstanding=64 seconds=1 workload=64
while getopts ":n:m:d:w:" opt; do
  case $opt in
    n) count -n "$OPTARG" 100000; pairs=$OPTARG ;;
    m) count -m "$OPTARG" 100000; outstanding=$OPTARG ;;
    d) count -d "$OPTARG" 3600; seconds=$OPTARG ;;
    w) [ -n "$OPTARG" ] && [[ $OPTARG != -* ]] || { echo "ab_pairs.sh: -w needs a workload (w1..w5, a file or a size in bytes)" >&2; exit 2; }
       workload=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] && [ $# -le 6 ] || usage
cmds=("$@")
for c in "${cmds[@]}"; do
  read -ra cmd <<<"$c"
  if [ ${#cmd[@]} -eq 0 ] || ! [ -x "${cmd[0]}" ]; then
    echo "ab_pairs.sh: '${cmd[0]:-}' is not an executable homa-perf" >&2
    exit 2
  fi
done

kops() {
  # (--base-rtt-us skips the unloaded round trip's measurement: slowdowns are not read.)
  local out cmd rc=0
  read -ra cmd <<<"$1"  # the binary, then its own options (after the role)
  out=$("${cmd[0]}" local --quiet --duration "$seconds" --workload "$workload" --client-max "$outstanding" \
    --base-rtt-us 20 "${cmd[@]:1}" 2>&1) || rc=$?
  # A run that failed (calls failed, say) prints its summary too: its rate is not a
  # sample. Nothing printed: the caller says so, with the run's own words.
  if [ "$rc" -ne 0 ]; then
    printf '%s\n' "$out" | tail -3 >&2
    return 0
  fi
  # (From the count, not the printed rate: that has one decimal, too coarse for large
  # messages. A run that finished no call has no rate either.)
  grep -o "[0-9]* RPCs in [0-9.]* s" <<<"$out" | awk '$1 > 0 && $4 > 0 {printf "%.4f\n", $1 / $4 / 1000}' || true
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
n=${#cmds[@]}
for i in $(seq "$pairs"); do
  # Each round runs every command once, starting with a different one each time (for
  # two commands: A B, then B A), so that a drift of the machine hits all alike.
  row=()
  for j in $(seq 0 $((n - 1))); do
    k=$(((i + j) % n))
    row[k]=$(kops "${cmds[k]}")
    if [ -z "${row[k]}" ]; then
      echo "round $i: a run of '${cmds[k]}' failed or finished no call (above: its last lines)" >&2
      exit 1
    fi
  done
  echo "${row[*]}" >>"$results"
done

python3 - "$results" "${cmds[@]}" <<'PY'
import math, statistics, sys
rows = [tuple(map(float, line.split())) for line in open(sys.argv[1])]
names = [chr(ord("A") + i) for i in range(len(sys.argv) - 2)]
for name, command in zip(names, sys.argv[2:]):
    print(f"{name}: {command}")
unit = "pairs" if len(names) == 2 else "rounds"
# Whole kops for small messages; three digits for large ones (1 MB: about 2 kops).
kops = lambda x: f"{x:.0f}" if x >= 100 else f"{x:.3g}"
print(f"{len(rows)} {unit}: " + ", ".join(
    f"{name} median {kops(statistics.median(r[i] for r in rows))} kops" for i, name in enumerate(names)))
for i, name in enumerate(names[1:], 1):
    logs = [math.log(r[i] / r[0]) for r in rows]
    mean = statistics.mean(logs)
    se = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("inf")
    print(f"{name}/A: geometric mean {math.exp(mean):.3f} (95 % interval {math.exp(mean - 2 * se):.3f}-"
          f"{math.exp(mean + 2 * se):.3f}), median {statistics.median(r[i] / r[0] for r in rows):.3f}")
PY
