// The runtime's clock: CLOCK_MONOTONIC in nanoseconds, cheap enough to read several times
// per RPC.
#pragma once

#include <cstdint>

namespace homa::runtime {

/// CLOCK_MONOTONIC, in nanoseconds. On x86 with an invariant timestamp counter it is the
/// counter scaled from an anchor taken from CLOCK_MONOTONIC at most kClockAnchorNs
/// earlier (a counter read costs about a third of a vDSO clock_gettime on a kvm-clock
/// guest); the scale is measured against CLOCK_MONOTONIC over the process's lifetime, so
/// it follows NTP's rate too. See ClockScale for how a bad sample or a counter that
/// jumps is kept out. Never goes backwards on one thread.
int64_t nowNs();
/// The same, also giving the timestamp counter (trace::readClock()) it read, so that a
/// caller timing what follows needs no second read of the counter.
int64_t nowNs(uint64_t* counter);

/// CLOCK_MONOTONIC read directly, in nanoseconds.
int64_t monotonicNs();

/// How long an anchor serves before the next read takes a fresh one.
inline constexpr int64_t kClockAnchorNs = 1'000'000;

/// The scale from counter cycles to CLOCK_MONOTONIC nanoseconds, fed one (cycles, ns)
/// sample per anchor. The first scale is trusted only once two measurements at least
/// kClockAnchorNs apart agree within 0.1 % and give a rate between 0.05 and 20 ns per
/// cycle; later samples are checked against the scale's prediction (20 us plus 0.1 % of
/// the time since the last anchor), and one that misses (the counter jumped or changed
/// rate: a guest restored or moved) starts the measurement again, as does a sample after
/// 100 s without one (not counted as a fault). After kMaxResets faults the scale is never
/// trusted again: every read is a clock_gettime.
class ClockScale {
  public:
    static constexpr int kMaxResets = 8;
    /// Takes a sample (counter, CLOCK_MONOTONIC); returns whether the anchor may serve.
    /// Until a scale is trusted, samples less than 50 us after the last one are ignored.
    bool update(uint64_t tsc, int64_t ns);
    uint64_t anchorTsc() const { return tsc_; }
    int64_t anchorNs() const { return ns_; }
    uint64_t mult() const { return trusted_ ? mult_ : 0; }  ///< ns per cycle, times 2^32
    uint64_t span() const { return trusted_ ? span_ : 0; }  ///< cycles the anchor serves
    int resets() const { return resets_; }
    uint64_t samples() const { return samples_; }  ///< samples used (see update())
    /// Whether the counter was given up (kMaxResets faults): no sample will change that.
    bool givenUp() const { return resets_ >= kMaxResets; }

  private:
    bool measure(uint64_t tsc, int64_t ns);
    bool restartMeasurement(uint64_t tsc, int64_t ns);  ///< (returns false: nothing to serve)
    uint64_t baseTsc_ = 0;  // where the current measurement started
    int64_t baseNs_ = 0;
    uint64_t tsc_ = 0;  // the last sample
    int64_t ns_ = 0;
    uint64_t mult_ = 0, span_ = 0;
    double candidate_ = 0;  // an untrusted first rate, and when it was measured
    int64_t candidateNs_ = 0;
    bool trusted_ = false;
    int resets_ = 0;
    uint64_t samples_ = 0;
};

namespace clock_detail {
/// Samples the process's scale has used (anchors), and whether this machine's counter
/// is used at all (tests).
uint64_t anchorsTaken();
bool counterUsed();
}  // namespace clock_detail

}  // namespace homa::runtime
