#!/usr/bin/env bash
# Installs dependencies, builds (Release), and runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$(nproc)"
if [ -x build-release/bin/homa-perf ]; then
  exec build-release/bin/homa-perf compare "$@"
fi
exec build-release/bin/engine_bench --benchmark_min_time=0.2 "$@"
