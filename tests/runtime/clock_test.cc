// The runtime's clock: its scale against chosen samples, and the real clock against
// CLOCK_MONOTONIC.
#include "runtime/clock.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace homa::runtime {
namespace {

// Samples of a 2 GHz counter (0.5 ns per cycle) starting at `tsc0` and `ns0`.
struct Counter {
    uint64_t tsc0 = 1'000'000;
    int64_t ns0 = 5'000'000'000;
    uint64_t tscAt(int64_t ns) const { return tsc0 + static_cast<uint64_t>((ns - ns0) * 2); }
};

// Feeds samples every 100 us from `from` to `to` (ns after ns0); returns how many served.
int feed(ClockScale& s, const Counter& c, int64_t from, int64_t to) {
    int served = 0;
    for (int64_t t = from; t <= to; t += 100'000) served += s.update(c.tscAt(c.ns0 + t), c.ns0 + t);
    return served;
}

TEST(ClockScale, TrustsTheFirstRateOnlyWhenTwoMeasurementsAMillisecondApartAgree) {
    ClockScale s;
    Counter c;
    // Samples closer than 50 us to the last one are not used before a scale is trusted.
    for (int64_t t = 0; t < 100'000; t += 10'000) EXPECT_FALSE(s.update(c.tscAt(c.ns0 + t), c.ns0 + t));
    EXPECT_EQ(s.samples(), 2u);  // at 0 and 50 us
    EXPECT_EQ(feed(s, c, 100'000, 1'900'000), 0);  // measured at 1 ms, confirmed no earlier than 2 ms
    EXPECT_EQ(s.span(), 0u);
    EXPECT_TRUE(s.update(c.tscAt(c.ns0 + 2'000'000), c.ns0 + 2'000'000));
    EXPECT_NEAR(static_cast<double>(s.mult()), 0.5 * 4294967296.0, 4294967296.0 * 1e-6);
    EXPECT_NEAR(static_cast<double>(s.span()), 2'000'000.0, 10.0);  // 1 ms of cycles
    EXPECT_EQ(s.resets(), 0);
}

TEST(ClockScale, ABadFirstSampleIsNotTrusted) {
    ClockScale s;
    Counter c;
    // The base sample's counter read came 200 us late (an interrupted sample): the first
    // measurements disagree with later ones, and no scale is trusted until two agree.
    EXPECT_FALSE(s.update(c.tscAt(c.ns0 + 200'000), c.ns0));
    int servedEarly = feed(s, c, 100'000, 2'000'000);
    EXPECT_EQ(servedEarly, 0);
    EXPECT_GT(feed(s, c, 2'100'000, 400'000'000), 0);
    // Once trusted, the rate is the counter's within 0.1 %.
    EXPECT_NEAR(static_cast<double>(s.mult()), 0.5 * 4294967296.0, 0.5 * 4294967296.0 * 1e-3);
}

TEST(ClockScale, ACounterThatJumpsStartsTheMeasurementAgain) {
    ClockScale s;
    Counter c;
    ASSERT_GT(feed(s, c, 0, 3'000'000), 0);
    // The counter jumps an hour ahead between two anchors a millisecond apart.
    const int64_t t = c.ns0 + 4'000'000;
    EXPECT_FALSE(s.update(c.tscAt(t) + 7'200'000'000'000ull, t));
    EXPECT_EQ(s.resets(), 1);
    EXPECT_EQ(s.span(), 0u);
    // Then it runs on from there: trusted again after two agreeing measurements.
    Counter jumped = c;
    jumped.tsc0 += 7'200'000'000'000ull;
    EXPECT_EQ(feed(s, jumped, 4'100'000, 5'900'000), 0);
    EXPECT_GT(feed(s, jumped, 6'000'000, 7'000'000), 0);
}

TEST(ClockScale, ACounterThatGoesBackOrChangesRateIsCaught) {
    ClockScale s;
    Counter c;
    ASSERT_GT(feed(s, c, 0, 3'000'000), 0);
    EXPECT_FALSE(s.update(c.tscAt(c.ns0 + 1'000'000), c.ns0 + 3'100'000));  // back
    EXPECT_EQ(s.resets(), 1);
    ClockScale r;
    ASSERT_GT(feed(r, c, 0, 3'000'000), 0);
    // Now 1 GHz: after 1 ms, the prediction is 0.5 ms off.
    const uint64_t at = c.tscAt(c.ns0 + 3'000'000);
    EXPECT_FALSE(r.update(at + 1'000'000, c.ns0 + 4'000'000));
    EXPECT_EQ(r.resets(), 1);
}

TEST(ClockScale, ALongIdleMeasuresAgainWithoutCountingAFault) {
    ClockScale s;
    Counter c;
    ASSERT_GT(feed(s, c, 0, 3'000'000), 0);
    const int64_t later = c.ns0 + 1'000'000'000'000;  // 1,000 s later
    EXPECT_FALSE(s.update(c.tscAt(later), later));
    EXPECT_EQ(s.resets(), 0);
}

TEST(ClockScale, AnAbsurdRateIsRefusedAndRepeatedFaultsEndTheCounter) {
    ClockScale s;
    Counter c;
    // One cycle per millisecond: not a timestamp counter.
    for (int i = 0; i <= 3; ++i) EXPECT_FALSE(s.update(c.tsc0 + static_cast<uint64_t>(i), c.ns0 + i * 1'000'000));
    EXPECT_GE(s.resets(), 1);
    ClockScale f;
    ASSERT_GT(feed(f, c, 0, 3'000'000), 0);
    uint64_t tsc = c.tscAt(c.ns0 + 3'000'000);
    // The counter steps back at each of the next anchors (100 us apart).
    for (int i = 0; i < ClockScale::kMaxResets; ++i)
        EXPECT_FALSE(f.update(tsc - 1'000 * (i + 1), c.ns0 + 4'000'000 + i * 100'000));
    EXPECT_EQ(f.resets(), ClockScale::kMaxResets);
    EXPECT_TRUE(f.givenUp());
    // A well-behaved counter from now on is never trusted again.
    Counter after = c;
    after.tsc0 = tsc;
    after.ns0 = c.ns0 + 5'000'000;
    EXPECT_EQ(feed(f, after, 0, 10'000'000), 0);
}

// Every read falls between CLOCK_MONOTONIC read just before and just after it (within the
// scale's error), across many anchors, on two threads at once; and most reads come from
// an anchor, not a fresh clock_gettime. (Being preempted between the three reads only
// widens the window.)
TEST(Clock, AgreesWithClockMonotonicAcrossAnchorsOnTwoThreads) {
    constexpr int64_t kSlackNs = 20'000;
    const uint64_t anchorsBefore = clock_detail::anchorsTaken();
    struct Result {
        uint64_t reads = 0, outside = 0;
        int64_t worst = 0;
    };
    auto run = [](Result* r) {
        const int64_t start = monotonicNs();
        while (monotonicNs() - start < 30 * kClockAnchorNs) {
            const int64_t before = monotonicNs();
            const int64_t now = nowNs();
            const int64_t after = monotonicNs();
            const int64_t off = now < before ? before - now : now > after ? now - after : 0;
            if (off > kSlackNs) ++r->outside;
            r->worst = std::max(r->worst, off);
            ++r->reads;
        }
    };
    Result a, b;
    std::thread ta(run, &a), tb(run, &b);
    ta.join();
    tb.join();
    EXPECT_EQ(a.outside, 0u) << "worst " << a.worst << " ns";
    EXPECT_EQ(b.outside, 0u) << "worst " << b.worst << " ns";
    if (!clock_detail::counterUsed()) GTEST_SKIP() << "no invariant counter: clock_gettime";
    const uint64_t anchors = clock_detail::anchorsTaken() - anchorsBefore;
    EXPECT_GE(anchors, 10u);  // the run spans many anchors
    EXPECT_LT(anchors * 20, a.reads + b.reads) << anchors << " anchors for " << a.reads + b.reads << " reads";
}

}  // namespace
}  // namespace homa::runtime
