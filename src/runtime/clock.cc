#include "runtime/clock.h"

#include <time.h>

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HOMA_CLOCK_TSC 1
#endif

namespace homa::runtime {

int64_t monotonicNs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

namespace {

std::atomic<uint64_t> gAnchors{0};
std::atomic<uint64_t> gResets{0};
thread_local int64_t tLast = 0;  // the last value this thread was given

int64_t notBefore(int64_t ns) {
    if (ns < tLast) return tLast;
    tLast = ns;
    return ns;
}

#ifdef HOMA_CLOCK_TSC
// The anchor readers use, published under a sequence lock: gSeq is odd while a writer
// changes it. A zero span means "no scale yet": read CLOCK_MONOTONIC.
std::atomic<uint32_t> gSeq{0};
std::atomic<uint64_t> gTsc{0};
std::atomic<int64_t> gNs{0};
std::atomic<uint64_t> gMult{0};  // nanoseconds per cycle, times 2^32
std::atomic<uint64_t> gSpan{0};  // cycles an anchor serves

// The writer's own state (only the thread holding gSeq odd touches it; the acquire and
// release on gSeq order one writer after the next).
uint64_t wBaseTsc = 0;  // where the scale's measurement started
int64_t wBaseNs = 0;
uint64_t wTsc = 0;  // the published anchor
int64_t wNs = 0;
uint64_t wMult = 0;

int64_t scaled(uint64_t cycles, uint64_t mult) {
    return static_cast<int64_t>((static_cast<unsigned __int128>(cycles) * mult) >> 32);
}

void publish(uint64_t tsc, int64_t ns, uint64_t mult, uint64_t span) {
    wTsc = tsc;
    wNs = ns;
    wMult = mult;
    gTsc.store(tsc, std::memory_order_relaxed);
    gNs.store(ns, std::memory_order_relaxed);
    gMult.store(mult, std::memory_order_relaxed);
    gSpan.store(span, std::memory_order_relaxed);
}

// Takes a new anchor at (tsc, ns) and measures the scale again.
void reanchor(uint64_t tsc, int64_t ns) {
    gAnchors.fetch_add(1, std::memory_order_relaxed);
    bool restart = wBaseNs == 0 || tsc < wBaseTsc;
    if (!restart && wMult != 0) {
        // Where the scale puts this moment. Off by more than the scale's own error can
        // explain: the counter jumped or changed rate (a restored or migrated guest).
        const int64_t elapsed = ns - wNs;
        const int64_t allowed = 20'000 + elapsed / 1000;
        const int64_t predicted = tsc >= wTsc ? wNs + scaled(tsc - wTsc, wMult) : INT64_MIN / 2;
        if (std::llabs(predicted - ns) > allowed) {
            restart = true;
            gResets.fetch_add(1, std::memory_order_relaxed);
        }
    }
    if (restart) {
        wBaseTsc = tsc;
        wBaseNs = ns;
        publish(tsc, ns, 0, 0);
        return;
    }
    const int64_t spanNs = ns - wBaseNs;
    if (spanNs < kClockAnchorNs || tsc == wBaseTsc) {
        publish(tsc, ns, 0, 0);  // not measured over long enough yet
        return;
    }
    const double nsPerCycle = static_cast<double>(spanNs) / static_cast<double>(tsc - wBaseTsc);
    const auto mult = static_cast<uint64_t>(nsPerCycle * 4294967296.0);
    const auto span = static_cast<uint64_t>(static_cast<double>(kClockAnchorNs) / nsPerCycle);
    publish(tsc, ns, mult, span);
}

int64_t slowRead() {
    const uint64_t before = __rdtsc();
    const int64_t ns = monotonicNs();
    const uint64_t tsc = before + (__rdtsc() - before) / 2;
    uint32_t seq = gSeq.load(std::memory_order_relaxed);
    // One thread takes the new anchor; the others just use what they read.
    if ((seq & 1) == 0 && gSeq.compare_exchange_strong(seq, seq + 1, std::memory_order_acquire)) {
        // A reader that sees any of the new anchor's fields then sees the odd count.
        std::atomic_thread_fence(std::memory_order_release);
        reanchor(tsc, ns);
        gSeq.store(seq + 2, std::memory_order_release);
    }
    return ns;
}
#endif

}  // namespace

int64_t nowNs() {
#ifdef HOMA_CLOCK_TSC
    const uint32_t seq = gSeq.load(std::memory_order_acquire);
    if ((seq & 1) == 0) {
        const uint64_t tsc = gTsc.load(std::memory_order_relaxed);
        const int64_t ns = gNs.load(std::memory_order_relaxed);
        const uint64_t mult = gMult.load(std::memory_order_relaxed);
        const uint64_t span = gSpan.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (gSeq.load(std::memory_order_relaxed) == seq) {
            const uint64_t cycles = __rdtsc() - tsc;  // (a counter behind the anchor wraps)
            if (cycles < span) return notBefore(ns + scaled(cycles, mult));
        }
    }
    return notBefore(slowRead());
#else
    return notBefore(monotonicNs());
#endif
}

namespace clock_detail {
uint64_t anchorsTaken() { return gAnchors.load(std::memory_order_relaxed); }
uint64_t scaleResets() { return gResets.load(std::memory_order_relaxed); }
}  // namespace clock_detail

}  // namespace homa::runtime
