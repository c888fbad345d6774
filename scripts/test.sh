#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. release build (-O2, asserts off, as users build it), every test
#   2. AddressSanitizer + UndefinedBehaviorSanitizer build, every test
#   3. ThreadSanitizer build, the multithreaded tests (ctest label "threads")
#   4. libFuzzer targets (clang), each for HOMA_FUZZ_SECONDS (default 60)
# The sanitizer builds compile at -O1 with line tables only (-g1), which is enough for the
# sanitizers' stack traces and builds in half the time of -O2 -g, and with asserts on.
# Environment: HOMA_SKIP_FUZZ=1 skips step 4; HOMA_SOAK_SEEDS sets the soak's seed count.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

JOBS=$(nproc)
FUZZ_SECONDS=${HOMA_FUZZ_SECONDS:-60}

step() { printf '\n==== %s\n' "$*"; }

step "release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" >/dev/null
cmake --build build -j"$JOBS"
ctest --test-dir build --output-on-failure -j"$JOBS"

step "AddressSanitizer + UndefinedBehaviorSanitizer build and tests"
SANITIZER_FLAGS=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1")
cmake -S . -B build-asan -G Ninja "${SANITIZER_FLAGS[@]}" -DHOMA_SANITIZE=address -DHOMA_BENCH=OFF >/dev/null
cmake --build build-asan -j"$JOBS"
# Sanitized processes are several times slower: give peers longer before declaring an
# RPC dead in the multi-process tests (HOMA_TEST_TIMEOUT_TICKS, read by tests/system).
HOMA_TEST_TIMEOUT_TICKS=1000 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$JOBS"

if grep -rq 'LABELS threads' tests; then
  step "ThreadSanitizer build and multithreaded tests"
  cmake -S . -B build-tsan -G Ninja "${SANITIZER_FLAGS[@]}" -DHOMA_SANITIZE=thread -DHOMA_BENCH=OFF >/dev/null
  cmake --build build-tsan -j"$JOBS"
  HOMA_TEST_TIMEOUT_TICKS=1000 TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build-tsan --output-on-failure -L threads -j"$JOBS"
fi

if [ "${HOMA_SKIP_FUZZ:-0}" != 1 ]; then
  step "fuzzing, ${FUZZ_SECONDS}s per target"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DHOMA_FUZZ=ON -DHOMA_BENCH=OFF >/dev/null
  cmake --build build-fuzz -j"$JOBS" --target fuzzers
  echo "-- regression inputs (fuzz/crashes)"
  build-fuzz/bin/engine_fuzz fuzz/crashes/*.bin
  for f in build-fuzz/bin/*_fuzz; do
    name=$(basename "$f")
    corpus="build-fuzz/corpus/$name"
    mkdir -p "$corpus"
    seeds="fuzz/seeds/${name%_fuzz}"
    [ -d "$seeds" ] && cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true
    echo "-- $name"
    "$f" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 "$corpus" 2>&1 | tail -n 12
  done
fi

step "all tests passed"
