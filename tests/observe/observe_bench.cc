// Costs of the observability primitives (not a test: prints numbers, asserts nothing).
//   build/bin/observe_bench
#include <chrono>
#include <cstdio>

#include "homa/trace.h"
#include "runtime/thread_counters.h"

namespace {

template <typename F>
double nsPer(F&& body, uint64_t n) {
    auto start = std::chrono::steady_clock::now();
    for (uint64_t i = 0; i < n; ++i) body(i);
    auto end = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(end - start).count() / static_cast<double>(n);
}

volatile uint64_t gSink;

}  // namespace

int main() {
    constexpr uint64_t kN = 20'000'000;
    homa::trace::enable(false);
    double empty = nsPer([](uint64_t i) { gSink = i; }, kN);
    double off = nsPer(
        [](uint64_t i) {
            HOMA_TRACE("send DATA id %u offset %u len %u prio %u", i, i * 1400, 1400, 3);
            gSink = i;
        },
        kN);
    homa::trace::enable(true);
    double on = nsPer(
        [](uint64_t i) {
            HOMA_TRACE("send DATA id %u offset %u len %u prio %u", i, i * 1400, 1400, 3);
            gSink = i;
        },
        kN);
    homa::trace::enable(false);
    homa::runtime::ThreadCounters<4> counters;
    double counter = nsPer(
        [&](uint64_t i) {
            counters.add(1, i);
            gSink = i;
        },
        kN);
    double clock = nsPer([](uint64_t) { gSink = homa::trace::readClock(); }, kN);
    std::printf("loop body alone           %6.2f ns\n", empty);
    std::printf("HOMA_TRACE, tracing off   %6.2f ns (%.2f ns more)\n", off, off - empty);
    std::printf("HOMA_TRACE, tracing on    %6.2f ns (%.2f ns more)\n", on, on - empty);
    std::printf("ThreadCounters::add       %6.2f ns (%.2f ns more)\n", counter, counter - empty);
    std::printf("readClock (TSC)           %6.2f ns\n", clock);
    std::printf("calibration: %.4f cycles per ns\n", homa::trace::cyclesPerNs());
    return 0;
}
