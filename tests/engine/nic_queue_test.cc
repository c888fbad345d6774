#include "engine/nic_queue.h"

#include <gtest/gtest.h>

namespace homa::engine {
namespace {

TEST(NicQueue, BacklogGrowsWithBytesAndDrainsWithTime) {
    NicQueue q(10'000);  // 10 Gbps: 0.8 ns per byte
    EXPECT_EQ(q.backlog(0), 0);
    q.sent(1000, 1250);  // 1 us of data
    EXPECT_EQ(q.backlog(1000), 1000);
    EXPECT_EQ(q.backlog(1500), 500);
    EXPECT_EQ(q.backlog(5000), 0);
    q.sent(5000, 1250);  // idle link: starts now, not at the old idle time
    EXPECT_EQ(q.idleAt(), 6000);
}

// Seed 002: an estimator given a time older than its own must not underflow into
// "empty queue" (which would let the sender flood the NIC).
TEST(NicQueue, StaleTimeReportsALargerBacklogNotAnEmptyOne) {
    NicQueue q(25'000);
    q.sent(1'000'000, 3125);  // 1 us
    Time backlogNow = q.backlog(1'000'000);
    EXPECT_EQ(backlogNow, 1000);
    EXPECT_GT(q.backlog(999'000), backlogNow);
    q.sent(999'000, 3125);  // stale time: queues behind what is already there
    EXPECT_EQ(q.idleAt(), 1'002'000);
}

// Per-packet times are whole nanoseconds, but the fractions add up: 1,000 back-to-back
// 1,538-byte packets at 10 Gbps take exactly 1,230,400 ns (1,230.4 each), not 1,230,000.
// Dropping the fractions let the estimate run ahead of the real link.
TEST(NicQueue, FractionsOfNanosecondsAreCarriedNotDropped) {
    NicQueue q(10'000);
    for (int i = 0; i < 1000; ++i) q.sent(0, 1538);
    EXPECT_EQ(q.idleAt(), 1'230'400);
}

}  // namespace
}  // namespace homa::engine
