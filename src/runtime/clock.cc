#include "runtime/clock.h"

#include "homa/trace.h"

#include <time.h>

#include <atomic>
#include <cmath>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
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

constexpr int64_t kIdleNs = 100'000'000'000;  // see ClockScale::update
constexpr int64_t kMinSampleGapNs = 50'000;

int64_t scaled(uint64_t cycles, uint64_t mult) {
    return static_cast<int64_t>((static_cast<unsigned __int128>(cycles) * mult) >> 32);
}

}  // namespace

bool ClockScale::update(uint64_t tsc, int64_t ns) {
    if (givenUp()) return false;
    // Until a scale is trusted every read comes here; a measurement needs only a sample
    // now and then.
    if (!trusted_ && baseNs_ != 0 && ns >= ns_ && ns - ns_ < kMinSampleGapNs) return false;
    ++samples_;
    bool restart = baseNs_ == 0;
    bool fault = false;
    if (!restart && (tsc <= tsc_ || ns <= ns_)) {
        restart = fault = true;  // the counter went back
    } else if (!restart && trusted_) {
        const uint64_t cycles = tsc - tsc_;
        const int64_t elapsed = ns - ns_;
        if (elapsed >= kIdleNs) {
            restart = true;  // not read for minutes: measure again, nothing is wrong
        } else if (cycles >= (uint64_t{1} << 40)) {
            restart = fault = true;  // over 10 GHz since the last anchor: a jump
        } else {
            // Off by more than the scale's own error can explain: the counter jumped or
            // changed rate.
            const int64_t predicted = ns_ + scaled(cycles, mult_);
            restart = fault = std::llabs(predicted - ns) > 20'000 + elapsed / 1000;
        }
    }
    tsc_ = tsc;
    ns_ = ns;
    if (fault) ++resets_;
    if (restart) return restartMeasurement(tsc, ns);
    return measure(tsc, ns);
}

bool ClockScale::restartMeasurement(uint64_t tsc, int64_t ns) {
    baseTsc_ = tsc;
    baseNs_ = ns;
    trusted_ = false;
    candidate_ = 0;
    return false;
}

bool ClockScale::measure(uint64_t tsc, int64_t ns) {
    const int64_t spanNs = ns - baseNs_;
    if (spanNs < kClockAnchorNs) return false;  // (only while not trusted: the base is older)
    const double rate = static_cast<double>(spanNs) / static_cast<double>(tsc - baseTsc_);
    if (!(rate >= 0.05 && rate <= 20.0)) {
        ++resets_;
        return restartMeasurement(tsc, ns);
    }
    if (!trusted_) {
        const bool agrees = candidate_ != 0 && std::abs(rate - candidate_) <= candidate_ * 1e-3;
        if (!agrees) {
            candidate_ = rate;
            candidateNs_ = ns;
            return false;
        }
        if (ns - candidateNs_ < kClockAnchorNs) return false;
        trusted_ = true;
    }
    mult_ = static_cast<uint64_t>(rate * 4294967296.0);
    span_ = static_cast<uint64_t>(static_cast<double>(kClockAnchorNs) / rate);
    return true;
}

namespace {

thread_local int64_t tLast = 0;  // the last value this thread was given

int64_t notBefore(int64_t ns) {
    if (ns < tLast) return tLast;
    tLast = ns;
    return ns;
}

#ifdef HOMA_CLOCK_TSC
// Only a counter that runs at a constant rate in every power state (CPUID's "invariant
// TSC") can stand in for CLOCK_MONOTONIC.
bool invariantCounter() {
    unsigned a, b, c, d;
    return __get_cpuid(0x80000007, &a, &b, &c, &d) && (d & (1u << 8)) != 0;
}
// Cleared for good when the scale gives the counter up: reads then go straight to
// clock_gettime instead of sampling for an anchor each time.
std::atomic<bool> gCounterOk{invariantCounter()};  // (false until initialised)

// A sample whose two counter reads are further apart than this was interrupted (a
// preemption, a virtual machine exit): its midpoint may be anywhere in between.
constexpr uint64_t kMaxSampleCycles = 10'000;

// The anchor readers use, published under a sequence lock: gSeq is odd while a writer
// changes it. A zero span means "no trusted scale": read CLOCK_MONOTONIC.
std::atomic<uint32_t> gSeq{0};
std::atomic<uint64_t> gTsc{0};
std::atomic<int64_t> gNs{0};
std::atomic<uint64_t> gMult{0};
std::atomic<uint64_t> gSpan{0};
ClockScale gScale;  // (only the thread holding gSeq odd touches it)
std::atomic<uint64_t> gAnchors{0};  // gScale.samples(), for tests

int64_t slowRead() {
    uint32_t seq = gSeq.load(std::memory_order_relaxed);
    // One thread takes the new anchor (sampling after it has the lock, so the sample is
    // not older than the last anchor); the others just read the clock.
    if (!gCounterOk.load(std::memory_order_relaxed) || (seq & 1) != 0 ||
        !gSeq.compare_exchange_strong(seq, seq + 1, std::memory_order_acquire))
        return monotonicNs();
    // A reader that sees any of the new anchor's fields then sees the odd count.
    std::atomic_thread_fence(std::memory_order_release);
    const uint64_t before = __rdtsc();
    const int64_t ns = monotonicNs();
    const uint64_t after = __rdtsc();
    if (after >= before && after - before <= kMaxSampleCycles) {
        const bool serves = gScale.update(before + (after - before) / 2, ns);
        gTsc.store(gScale.anchorTsc(), std::memory_order_relaxed);
        gNs.store(gScale.anchorNs(), std::memory_order_relaxed);
        gMult.store(serves ? gScale.mult() : 0, std::memory_order_relaxed);
        gSpan.store(serves ? gScale.span() : 0, std::memory_order_relaxed);
        if (gScale.givenUp()) gCounterOk.store(false, std::memory_order_relaxed);
        gAnchors.store(gScale.samples(), std::memory_order_relaxed);
    }
    gSeq.store(seq + 2, std::memory_order_release);
    return ns;
}
#endif

}  // namespace

int64_t nowNs(uint64_t* counter) {
#ifdef HOMA_CLOCK_TSC
    const uint32_t seq = gSeq.load(std::memory_order_acquire);
    if ((seq & 1) == 0) {
        const uint64_t tsc = gTsc.load(std::memory_order_relaxed);
        const int64_t ns = gNs.load(std::memory_order_relaxed);
        const uint64_t mult = gMult.load(std::memory_order_relaxed);
        const uint64_t span = gSpan.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (gSeq.load(std::memory_order_relaxed) == seq) {
            const uint64_t now = __rdtsc();
            *counter = now;
            const uint64_t cycles = now - tsc;  // (a counter behind the anchor wraps)
            if (cycles < span) return notBefore(ns + scaled(cycles, mult));
        }
    }
    *counter = __rdtsc();
    return notBefore(slowRead());
#else
    *counter = trace::readClock();
    return notBefore(monotonicNs());
#endif
}

int64_t nowNs() {
    uint64_t counter;
    return nowNs(&counter);
}

namespace clock_detail {
uint64_t anchorsTaken() { return gAnchors.load(std::memory_order_relaxed); }
bool counterUsed() {
#ifdef HOMA_CLOCK_TSC
    return gCounterOk.load(std::memory_order_relaxed);
#else
    return false;
#endif
}
}  // namespace clock_detail

}  // namespace homa::runtime
