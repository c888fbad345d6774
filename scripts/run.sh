#!/usr/bin/env bash
# The main job: installs dependencies, builds (Release), and prints Homa beside TCP,
# UDP, gRPC and iperf3 on this machine's loopback (bench/compare.sh --quick; a few
# minutes). Arguments go to bench/compare.sh (e.g. drop --quick by passing --full).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$(nproc)"
mode=--quick
if [ "${1:-}" = --full ]; then mode=""; shift; fi
exec bench/compare.sh $mode --build build-release "$@"
