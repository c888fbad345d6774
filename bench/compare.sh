#!/usr/bin/env bash
# Homa beside its baselines, measured in one run on loopback, printed as a table of ratios.
#
#   bench/compare.sh [--quick] [--build DIR] [--out DIR]
#
#   64 B round trip, P50/P99: homa-perf Homa, homa-perf TCP, sockperf UDP and TCP
#       ping-pong (--full-rtt), gRPC unary echo (bench/grpc); Homa and sockperf UDP also
#       with both ends pinned to one CPU, Homa without adaptive polling, and sockperf UDP
#       busy-polling (Homa, sockperf UDP and gRPC: medians of 3 runs)
#   small-RPC throughput (64 B, 64 outstanding): Homa, TCP (medians of 5, with each
#       round's Homa/TCP ratio and their geometric mean with its interval), gRPC; and
#       Homa and TCP with 1,024 outstanding, where each is nearer its saturation; and
#       bare UDP sockets with no protocol (bench/udp_ceiling.cc), the ceiling for any
#       transport over UDP here
#   1 MB one-way throughput: Homa (paced for the default 25 Gbps link, and for 100 Gbps,
#       above what loopback carries here), homa-perf TCP, iperf3 (medians of 3)
#   W3 and W4 at a fixed offered load (open loop): P99 slowdown of the smallest messages,
#       both protocols' slowdowns over one unloaded RTT (sockperf UDP's P50 of this run),
#       so that their ratio is that of their round trips
# --quick shortens every run (the README's first command uses it). JSON files and plots
# go to --out (default bench-results/).
set -euo pipefail
# A failure inside $(...) stops the script too (bash turns errexit off there otherwise).
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

secs=5
build=build-release
out=bench-results
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) secs=2 ;;
    --build|--out) [ $# -ge 2 ] || { echo "compare.sh: $1 needs a directory" >&2; exit 2; }
                   if [ "$1" = --build ]; then build=$2; else out=$2; fi; shift ;;
    *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
perf="$build/bin/homa-perf"
grpc="$build/bin/grpc-echo"
ceiling="$build/bin/udp-ceiling"
[ -x "$perf" ] || { echo "compare.sh: $perf not built (run scripts/run.sh or build $build)" >&2; exit 2; }
command -v jq >/dev/null || { echo "compare.sh: needs jq (scripts/install-deps.sh)" >&2; exit 2; }
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# median, geomean, ratio
# shellcheck source=bench/ratios.sh
source bench/ratios.sh
note() { printf '%s\n' "$*" >&2; }
# Every figure is checked to be a number as it is measured: a run that failed stops the
# script (after cleanup) rather than leaving a blank or wrong cell in the table.
die() { note "compare.sh: $*"; exit 1; }
isnum() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; }
port() { echo $((20000 + RANDOM % 30000)); }

# homa-perf local run; prints the JSON file name.
hp() {
  local name=$1; shift
  local pinned=(); [ -n "${cpus:-}" ] && pinned=(taskset -c "$cpus")
  # (A run in which more than one call in a thousand failed stops the comparison; fewer,
  # say a timeout in an overloaded open loop, are in its text file.)
  "${pinned[@]}" "$perf" local --quiet --duration "$secs" --max-error-rate 0.001 --json "$out/$name.json" "$@" > "$out/$name.txt" 2>&1 ||
    { note "homa-perf $name failed:"; cat "$out/$name.txt" >&2; exit 1; }
  echo "$out/$name.json"
}
# fig VAR FILE EXPR: sets VAR to the number at EXPR in a homa-perf JSON file, or stops.
fig() {
  local _v; _v=$(jq -r "$3" "$2" 2>/dev/null) || _v=
  isnum "$_v" || die "${2:-(no file)}: no figure at $3 (got '$_v')"
  printf -v "$1" %s "$_v"
}

# sockperf_pp proto(udp|tcp) [cpus]: sets pp50 and pp99 (us); cpus pins both ends (taskset).
# Called in this shell, not in $(...), so that its server is in pids for cleanup.
sockperf_pp() {
  # (With spin=1 both ends busy-poll: non-blocking sockets, epoll with a zero timeout.)
  local p; p=$(port)
  local flag=""; [ "$1" = tcp ] && flag="--tcp"
  [ "${spin:-0}" = 1 ] && flag="$flag --nonblocked --timeout 0"
  local pin=(); [ -n "${2:-}" ] && pin=(taskset -c "$2")
  "${pin[@]}" sockperf server $flag -i 127.0.0.1 -p "$p" > /dev/null 2>&1 &
  local server=$!
  pids+=("$server")
  sleep 0.5
  local o rc=0
  o=$("${pin[@]}" sockperf ping-pong $flag -i 127.0.0.1 -p "$p" -m 64 -t "$secs" --full-rtt 2>&1) || rc=$?
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  unset 'pids[-1]'
  pp50=$(awk '/percentile 50.000/ {print $NF}' <<< "$o")
  pp99=$(awk '/percentile 99.000/ {print $NF}' <<< "$o")
  if [ "$rc" -ne 0 ] || ! isnum "$pp50" || ! isnum "$pp99"; then
    note "$o"
    die "sockperf ping-pong ($1${2:+, CPU $2}${spin:+, busy-polling}) failed (status $rc)"
  fi
}

note "== 64 B round trip"
# Latency on a 2-core virtual machine depends on where the two ends run (waking a thread
# on the other, idle, CPU costs far more than on the same one), and runs vary: each
# figure is the median of $reps runs, Homa and sockperf UDP alternating, in two
# placements: as the scheduler likes, and both ends pinned to CPU 0. Homa polls
# adaptively by default (a thread whose last wait was short looks at the socket for up to
# 50 us before sleeping), sockperf blocks: so each is also measured the other way, Homa
# with --adaptive-poll-us 0 and sockperf busy-polling. (Fixed busy polling, --busy-poll-us,
# needs a spare core per polling thread; on two cores it is slower.)
reps=3
declare -a hd50 hd99 sd50 sd99 hp50 sp50 hn50 ss50
for r in $(seq "$reps"); do
  f=$(hp "lat-homa-$r" --workload 64 --client-max 1)
  fig v "$f" .totals.rtt_p50_us; hd50+=("$v"); fig v "$f" .totals.rtt_p99_us; hd99+=("$v")
  sockperf_pp udp; sd50+=("$pp50"); sd99+=("$pp99")
  f=$(cpus=0 hp "lat-homa-cpu0-$r" --workload 64 --client-max 1)
  fig v "$f" .totals.rtt_p50_us; hp50+=("$v")
  sockperf_pp udp 0; sp50+=("$pp50")
  f=$(hp "lat-homa-nopoll-$r" --workload 64 --client-max 1 --adaptive-poll-us 0)
  fig v "$f" .totals.rtt_p50_us; hn50+=("$v")
  spin=1 sockperf_pp udp; ss50+=("$pp50")
done
hl50=$(median "${hd50[@]}"); hl99=$(median "${hd99[@]}"); su50=$(median "${sd50[@]}"); su99=$(median "${sd99[@]}")
hpin50=$(median "${hp50[@]}"); spin50=$(median "${sp50[@]}"); hnp50=$(median "${hn50[@]}"); sspin50=$(median "${ss50[@]}")
tl=$(hp lat-tcp --protocol tcp --workload 64 --client-max 1)
fig tl50 "$tl" .totals.rtt_p50_us; fig tl99 "$tl" .totals.rtt_p99_us
sockperf_pp tcp; st50=$pp50
g50=n/a; g99=n/a; gk=n/a
if [ -x "$grpc" ]; then
  # gRPC's latency moves with where the scheduler puts its threads: the median of $reps
  # runs, as for Homa and sockperf.
  declare -a gd50 gd99
  for r in $(seq "$reps"); do
    gl=$("$grpc" local --mode latency --size 64 --duration "$secs") || die "grpc-echo --mode latency failed"
    a=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<< "$gl"); b=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<< "$gl")
    { isnum "$a" && isnum "$b"; } || die "grpc-echo gave no latency figures: $gl"
    gd50+=("$a"); gd99+=("$b")
  done
  g50=$(median "${gd50[@]}"); g99=$(median "${gd99[@]}")
  gt=$("$grpc" local --mode throughput --size 64 --outstanding 64 --duration "$secs") || die "grpc-echo --mode throughput failed"
  gk=$(sed -n 's/.*kops=\([0-9.]*\).*/\1/p' <<< "$gt")
  isnum "$gk" || die "grpc-echo gave no throughput figure: $gt"
else
  note "grpc-echo not built: gRPC columns are n/a"
fi

note "== small-RPC throughput"
# kops_at N: medians of $treps runs with N outstanding, in rounds of one Homa and one TCP
# run back to back (which goes first alternates); sets kh and kt (Homa's and TCP's
# medians), krounds (each round's Homa/TCP, comma-separated) and ksummary (their
# geometric mean with its 95 % interval, as bench/ab_pairs.sh): this machine's
# speed drifts between minutes by more than the difference being measured, and a ratio
# within a round, where both runs see the same machine, is the steadier figure.
treps=5  # (one run of each gave anything from 0.7x to 1.3x the median on this machine)
kops_at() {
  local hk=() tk=() rs=() h t f r
  homa_run() { f=$(hp "tput$1-homa-$r" --workload 64 --client-max "$1"); fig h "$f" .totals.kops; }
  tcp_run() { f=$(hp "tput$1-tcp-$r" --protocol tcp --workload 64 --client-max "$1"); fig t "$f" .totals.kops; }
  for r in $(seq "$treps"); do
    if [ $((r % 2)) -eq 1 ]; then homa_run "$1"; tcp_run "$1"; else tcp_run "$1"; homa_run "$1"; fi
    hk+=("$h") tk+=("$t")
    rs+=("$(awk -v a="$h" -v b="$t" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }')")
  done
  kh=$(median "${hk[@]}") kt=$(median "${tk[@]}") krounds=$(IFS=,; echo "${rs[*]}") ksummary=$(geomean "${rs[@]}")
}
kops_at 64; hkops=$kh tkops=$kt rounds=$krounds summary=$ksummary
# 64 outstanding is where Homa's and TCP's figures are usually quoted; with 1,024 both
# batch more per system call and per wake-up, so this row shows each nearer its own
# ceiling on this machine.
kops_at 1024; hkops1k=$kh tkops1k=$kt rounds1k=$krounds summary1k=$ksummary
# The same closed loop over bare UDP sockets, with no protocol at all (bench/udp_ceiling.cc,
# batched with GSO and GRO as Homa's driver is): what any transport built on UDP sockets
# could reach here. It splits the distance between Homa and TCP into what UDP costs on
# this machine and what Homa adds.
uk=n/a; uk1k=n/a
if [ -x "$ceiling" ]; then
  uk=$("$ceiling" --gso --outstanding 64 --seconds "$secs" | sed -n 's/^udp-ceiling: \([0-9.]*\) kops.*/\1/p') || uk=n/a
  uk1k=$("$ceiling" --gso --outstanding 1024 --seconds "$secs" | sed -n 's/^udp-ceiling: \([0-9.]*\) kops.*/\1/p') || uk1k=n/a
  [ -n "$uk" ] || uk=n/a; [ -n "$uk1k" ] || uk1k=n/a
fi

note "== 1 MB one-way"
# Medians of $reps runs, Homa, homa-perf TCP and iperf3 alternating: one run of each
# moves with the machine's speed, which drifts by more than 10 % between minutes here.
# Homa's pacer sends at most the link's rate (25 Gbps by default, a datacenter NIC), and
# loopback has no link: TCP and iperf3 go as fast as the CPUs let them (15-45 Gbps on
# this machine). So Homa runs twice: paced for the default 25 Gbps NIC, which caps it
# near 24 Gbps whatever the CPUs could do, and paced for a 100 Gbps link, which on this
# machine no sender reaches, so that the CPUs are the limit for all three.
declare -a hbs hfs tbs ips
for r in $(seq "$reps"); do
  f=$(hp "big-homa-$r" --workload 1000000 --one-way --client-max 4); fig v "$f" .totals.gbps_out; hbs+=("$v")
  f=$(hp "big-homa-100g-$r" --workload 1000000 --one-way --client-max 4 --link-gbps 100); fig v "$f" .totals.gbps_out; hfs+=("$v")
  f=$(hp "big-tcp-$r" --protocol tcp --workload 1000000 --one-way --client-max 4); fig v "$f" .totals.gbps_out; tbs+=("$v")
  ip=$(port)
  iperf3 -s -1 -p "$ip" > /dev/null 2>&1 &
  pids+=($!)
  sleep 0.5
  v=$(iperf3 -c 127.0.0.1 -p "$ip" -t "$secs" -J | jq '.end.sum_received.bits_per_second / 1e9' 2>/dev/null) || v=
  isnum "$v" || die "iperf3 run $r gave no throughput"
  ips+=("$v")
done
hbig=$(median "${hbs[@]}"); hbig100=$(median "${hfs[@]}"); tbig=$(median "${tbs[@]}"); iperf=$(median "${ips[@]}")

note "== W3 and W4 at a fixed offered load"
# Slowdown divides a round trip by an unloaded one: left to measure its own, each
# protocol would divide by a different figure (Homa's 64 B round trip is about half of
# homa-perf TCP's here), and the ratio of the two slowdowns would not be that of the two
# round trips. Both use the raw UDP round trip measured above (each its own, should
# sockperf have given none).
base=(); [[ "$su50" =~ ^[0-9]+(\.[0-9]+)?$ ]] && base=(--base-rtt-us "$su50")
# A second of warm-up first, left out of the figures: the first second's calls meet
# message buffers the process has not touched yet, whose first use costs a page fault
# per 4 KB (about 12 us each on this kind of virtual machine), and the tails of a short
# run were those of that second (W4: Homa's P99 round trip 5-270 ms in it, 2-3 ms after).
base+=(--warmup 1)
h3=$(hp w3-homa --workload w3 --gbps 1 --client-max 200 "${base[@]}")
t3=$(hp w3-tcp --protocol tcp --workload w3 --gbps 1 --client-max 200 --tcp-conns 4 "${base[@]}")
h4=$(hp w4-homa --workload w4 --gbps 2 --client-max 200 "${base[@]}")
t4=$(hp w4-tcp --protocol tcp --workload w4 --gbps 2 --client-max 200 --tcp-conns 4 "${base[@]}")
"$perf" plot "$h3" "$t3" -o "$out/w3.png" --title "W3, 1 Gbps offered, loopback" > /dev/null 2>&1 || true
"$perf" plot "$h4" "$t4" -o "$out/w4.png" --title "W4, 2 Gbps offered, loopback" > /dev/null 2>&1 || true

smallest='[.buckets[] | select(.count > 0)][0].slowdown_p99'
fig s3h "$h3" "$smallest"; fig s3t "$t3" "$smallest"; fig s4h "$h4" "$smallest"; fig s4t "$t4" "$smallest"
# An arrival that started no call is dropped: skipped (it found 200 calls in flight),
# refused (the client's send memory was full) or late (the generator fell behind and
# never reached it). The load was then more than the pair carried, and the tails are
# those of an overload, not of the offered load.
skips() { local s n; fig s "$1" .totals.dropped_arrivals; fig n "$1" .totals.arrivals_due; echo "$s/$n"; }
k3h=$(skips "$h3"); k3t=$(skips "$t3"); k4h=$(skips "$h4"); k4t=$(skips "$t4")
# The round trips leave out how late the generator started each call; the latency from
# each arrival's due time (all sizes) does not.
fromdue() { local v; fig v "$1" .totals.latency_from_due_p99_us; printf %.0f "$v"; }
d3h=$(fromdue "$h3"); d3t=$(fromdue "$t3"); d4h=$(fromdue "$h4"); d4t=$(fromdue "$t4")

echo
echo "Homa vs baselines on loopback ($(date -u +%F), $(nproc) cpus, ${secs}s per run)"
printf '%-48s %12s %12s %10s\n' "measure" "Homa" "baseline" "Homa/base"
row() { printf '%-48s %12s %12s %10s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
row "64 B RTT P50 us vs sockperf UDP" "$(printf %.1f "$hl50")" "$su50"
row "64 B RTT P99 us vs sockperf UDP" "$(printf %.1f "$hl99")" "$su99"
row "  both ends on CPU 0: P50 vs sockperf UDP" "$(printf %.1f "$hpin50")" "$spin50"
row "  no adaptive polling: P50 vs sockperf UDP" "$(printf %.1f "$hnp50")" "$su50"
row "  P50 vs sockperf UDP, busy-polling" "$(printf %.1f "$hl50")" "$sspin50"
row "64 B RTT P50 us vs sockperf TCP" "$(printf %.1f "$hl50")" "$st50"
row "64 B RTT P50 us vs homa-perf TCP" "$(printf %.1f "$hl50")" "$(printf %.1f "$tl50")"
row "64 B RTT P99 us vs homa-perf TCP" "$(printf %.1f "$hl99")" "$(printf %.1f "$tl99")"
row "64 B RTT P50 us vs gRPC" "$(printf %.1f "$hl50")" "$g50"
row "64 B RTT P99 us vs gRPC" "$(printf %.1f "$hl99")" "$g99"
row "64 B kops (64 outstanding) vs homa-perf TCP" "$(printf %.1f "$hkops")" "$(printf %.1f "$tkops")"
printf '  (each round: %s; geometric mean %s)\n' "$rounds" "${summary//_/ }"
row "64 B kops (64 outstanding) vs gRPC" "$(printf %.1f "$hkops")" "$gk"
row "64 B kops (1,024 outstanding) vs homa-perf TCP" "$(printf %.1f "$hkops1k")" "$(printf %.1f "$tkops1k")"
printf '  (each round: %s; geometric mean %s)\n' "$rounds1k" "${summary1k//_/ }"
row "64 B kops (64 outstanding) vs bare UDP" "$(printf %.1f "$hkops")" "$uk"
row "64 B kops (1,024 outstanding) vs bare UDP" "$(printf %.1f "$hkops1k")" "$uk1k"
row "1 MB one-way Gbps vs homa-perf TCP" "$(printf %.2f "$hbig")" "$(printf %.2f "$tbig")"
row "1 MB one-way Gbps vs iperf3 TCP" "$(printf %.2f "$hbig")" "$(printf %.2f "$iperf")"
row "  paced for 100 Gbps: vs homa-perf TCP" "$(printf %.2f "$hbig100")" "$(printf %.2f "$tbig")"
row "  paced for 100 Gbps: vs iperf3 TCP" "$(printf %.2f "$hbig100")" "$(printf %.2f "$iperf")"
row "W3 1 Gbps: P99 slowdown, smallest msgs vs TCP" "$(printf %.2f "$s3h")" "$(printf %.2f "$s3t")"
row "W4 2 Gbps: P99 slowdown, smallest msgs vs TCP" "$(printf %.2f "$s4h")" "$(printf %.2f "$s4t")"
printf '  (arrivals dropped (skipped at 200 in flight, refused, late) / due: W3 Homa %s, TCP %s; W4 Homa %s, TCP %s)\n' \
  "$k3h" "$k3t" "$k4h" "$k4t"
printf '  (P99 latency from the due time, all sizes, us: W3 Homa %s, TCP %s; W4 Homa %s, TCP %s)\n' \
  "$d3h" "$d3t" "$d4h" "$d4t"
echo
echo "JSON, text and plots: $out/ (w3.png, w4.png)"
