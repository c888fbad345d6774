#!/bin/sh
# Reproduces the W1-W5 tables and plot of docs/simulation.md on the default 144-host
# network. Usage: tools/sim/run_results.sh [homa-sim binary] [output directory]
set -eu
SIM=${1:-build/bin/homa-sim}
OUT=${2:-sim-results}
mkdir -p "$OUT"
# Simulated durations per workload: enough messages in every bucket for a P99, within a
# few minutes of wall time (small messages cost many packets per byte).
duration() {
    case $1 in
        w1) echo 2 ;;
        w2) echo 3 ;;
        w3) echo 10 ;;
        w4) echo 100 ;;
        w5) echo 300 ;;
    esac
}
for w in w1 w2 w3 w4 w5; do
    for load in 0.5 0.8; do
        d=$(duration $w)
        echo "== $w load $load, $d ms"
        # Exit status 3 means some measured message did not finish in the drain time;
        # the run's JSON says how many.
        "$SIM" -w $w -l $load -d "$d" --seed 1 --json "$OUT/$w-$load.json" --csv "$OUT/$w-$load.csv" \
            >"$OUT/$w-$load.txt" || [ $? -eq 3 ]
        tail -1 "$OUT/$w-$load.txt"
    done
done
for load in 0.5 0.8; do
    "$SIM" plot "$OUT"/w1-$load.json "$OUT"/w2-$load.json "$OUT"/w3-$load.json "$OUT"/w4-$load.json \
        "$OUT"/w5-$load.json -o "$OUT/p99-load-$load.png" --title "Homa engine, 144 hosts, load $load"
done
