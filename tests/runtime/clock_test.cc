// The runtime's clock against CLOCK_MONOTONIC.
#include "runtime/clock.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace homa::runtime {
namespace {

// Every read falls between CLOCK_MONOTONIC read just before and just after it (within the
// scale's error), across many anchors; and most reads come from an anchor, not a fresh
// clock_gettime. (Being preempted between the three reads only widens the window.)
TEST(Clock, AgreesWithClockMonotonicAcrossAnchors) {
    constexpr int64_t kSlackNs = 20'000;
    const uint64_t anchorsBefore = clock_detail::anchorsTaken();
    const int64_t start = monotonicNs();
    uint64_t reads = 0;
    while (monotonicNs() - start < 30 * kClockAnchorNs) {
        const int64_t before = monotonicNs();
        const int64_t now = nowNs();
        const int64_t after = monotonicNs();
        ASSERT_GE(now, before - kSlackNs) << "read " << reads;
        ASSERT_LE(now, after + kSlackNs) << "read " << reads;
        ++reads;
    }
    const uint64_t anchors = clock_detail::anchorsTaken() - anchorsBefore;
    EXPECT_GE(anchors, 10u);  // the run spans many anchors
    EXPECT_LT(anchors * 20, reads) << anchors << " anchors for " << reads << " reads";
}

TEST(Clock, NeverGoesBackwardsOnOneThread) {
    auto run = [](int64_t* backwards) {
        int64_t last = nowNs();
        for (int i = 0; i < 500'000; ++i) {
            const int64_t now = nowNs();
            if (now < last) ++*backwards;
            last = now;
        }
    };
    int64_t backwards[2] = {0, 0};
    std::thread a(run, &backwards[0]), b(run, &backwards[1]);
    a.join();
    b.join();
    EXPECT_EQ(backwards[0], 0);
    EXPECT_EQ(backwards[1], 0);
}

}  // namespace
}  // namespace homa::runtime
