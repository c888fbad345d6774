#include "engine/seen_ids.h"

#include <gtest/gtest.h>

namespace homa::engine {
namespace {

TEST(SeenIds, RemembersInsertedIdsOnly) {
    SeenIds s(1024);
    EXPECT_FALSE(s.contains(100));
    s.insert(100);
    EXPECT_TRUE(s.contains(100));
    EXPECT_FALSE(s.contains(102));
    EXPECT_FALSE(s.contains(98)) << "ids just below the first one may still arrive late";
}

TEST(SeenIds, SlidingForgetsNothingAsUnseen) {
    SeenIds s(128);
    for (uint64_t id = 2; id < 2000; id += 2) s.insert(id);
    for (uint64_t id = 2; id < 2000; id += 2) EXPECT_TRUE(s.contains(id)) << id;
    EXPECT_FALSE(s.contains(2000));
}

TEST(SeenIds, IdsBelowTheWindowCountAsSeen) {
    SeenIds s(128);
    s.insert(10'000);
    s.insert(10'000 + 2 * 1000);  // slides the window far up
    EXPECT_TRUE(s.contains(10'002)) << "never seen but below the window: refused";
    EXPECT_FALSE(s.contains(10'000 + 2 * 1001));
}

TEST(SeenIds, ARestartedClientWithClockSeededIdsIsServed) {
    SeenIds s(256);
    for (uint64_t id = 2; id < 100; id += 2) s.insert(id);
    const uint64_t restarted = 1'000'000'000'000;  // clock-based start of the new process
    EXPECT_FALSE(s.contains(restarted));
    s.insert(restarted);
    EXPECT_FALSE(s.contains(restarted + 2));
    EXPECT_TRUE(s.contains(50));
}

TEST(SeenIds, ForgetUnmarksOnlyThatIdAndOnlyInsideTheWindow) {
    SeenIds s(128);
    s.insert(1000);
    s.insert(1002);
    s.forget(1000);
    EXPECT_FALSE(s.contains(1000));
    EXPECT_TRUE(s.contains(1002));
    s.insert(1000 + 2 * 1000);  // slides the window past 1002
    s.forget(1002);
    EXPECT_TRUE(s.contains(1002)) << "ids below the window always count as seen";
}

// highest() is what an evicted peer leaves behind as served: a forgotten id (a request
// given up before it ran) must not stay in it.
TEST(SeenIds, ForgettingTheHighestIdLowersHighest) {
    SeenIds s(128);
    s.insert(1000);
    s.insert(1002);
    s.insert(1006);
    s.forget(1002);
    EXPECT_EQ(s.highest(), 1006u) << "forgetting a lower id changes nothing";
    s.forget(1006);
    EXPECT_EQ(s.highest(), 1000u);
    s.forget(1000);
    // Nothing left in the window: the top of the ids below it (1000 / 2 - 64 - 1), which
    // all count as seen.
    EXPECT_EQ(s.highest(), 870u);
    EXPECT_TRUE(s.contains(870));
    EXPECT_FALSE(s.contains(872));
}

// Below the window a new copy is refused (contains). For a client asking about an id,
// only the ids that left the window unseen never ran here; every other one may have:
// seen ones (run, and acked or not: a RESEND may arrive late, after the ack), and those
// below the floor (before the set began).
TEST(SeenIds, BelowTheWindowOnlyIdsThatLeftItUnseenNeverRan) {
    SeenIds s(128);
    EXPECT_FALSE(s.mayHaveRun(10'000)) << "nothing seen yet";
    s.insert(10'000);  // the floor: 10'000 less half the window
    s.insert(10'004);
    s.insert(10'000 + 2 * 1000);  // slides the window far up
    EXPECT_TRUE(s.belowWindow(10'002));
    EXPECT_FALSE(s.belowWindow(10'000 + 2 * 1000));
    EXPECT_TRUE(s.contains(10'002));
    EXPECT_FALSE(s.mayHaveRun(10'002)) << "never seen here";
    EXPECT_TRUE(s.mayHaveRun(10'000)) << "seen: it ran";
    EXPECT_TRUE(s.mayHaveRun(10'004));
    EXPECT_TRUE(s.mayHaveRun(10'000 - 2 * 64 - 2)) << "below the floor nothing is known";
    EXPECT_FALSE(s.mayHaveRun(10'000 - 2 * 64));
    EXPECT_FALSE(s.mayHaveRun(10'000 + 2 * 500)) << "passed over by the jump, never seen";
    EXPECT_TRUE(s.mayHaveRun(10'000 + 2 * 1000)) << "inside the window: seen";
    EXPECT_FALSE(s.mayHaveRun(10'000 + 2 * 999));
    EXPECT_EQ(s.unseenRanges(), 3u);  // below 10'000, between 10'000 and 10'004, above
}

TEST(SeenIds, SeenUpToPutsTheFloorAboveTheIdsServedBefore) {
    SeenIds s(128);
    s.seenUpTo(5'000);
    EXPECT_TRUE(s.mayHaveRun(5'000));
    EXPECT_TRUE(s.mayHaveRun(100));
    EXPECT_FALSE(s.mayHaveRun(5'002));
}

// The unseen record is bounded: when it is full the oldest ranges go, and their ids
// count as possibly run (a lost request among them ends as "id used"; nothing runs
// twice).
TEST(SeenIds, TheUnseenRecordIsBoundedAndWhatItDropsCountsAsRun) {
    SeenIds s(64);
    const uint64_t first = 1'000'000;
    // Every other id seen: each one missed is a range of its own once the window passes.
    for (uint64_t k = 0; k < 2 * (SeenIds::kMaxUnseenRanges + 10) + 64; ++k) s.insert(first + 4 * k);
    EXPECT_EQ(s.unseenRanges(), SeenIds::kMaxUnseenRanges);
    EXPECT_TRUE(s.mayHaveRun(first + 2)) << "its record made room";
    EXPECT_TRUE(s.mayHaveRun(first));
    const uint64_t recent = first + 4 * (2 * (SeenIds::kMaxUnseenRanges + 10)) + 2;
    ASSERT_TRUE(s.belowWindow(recent));
    EXPECT_FALSE(s.mayHaveRun(recent)) << "recent enough to be recorded";
    EXPECT_TRUE(s.mayHaveRun(recent + 2));
}

TEST(SeenIds, APermitIsUsedOnceAndOnlyBeforeItExpires) {
    SeenIds s(64);
    s.permit(100, 10, 20);
    EXPECT_FALSE(s.takePermit(102, 10));
    EXPECT_TRUE(s.takePermit(100, 20));
    EXPECT_FALSE(s.takePermit(100, 20)) << "used twice";
    s.permit(100, 10, 20);
    EXPECT_FALSE(s.takePermit(100, 21)) << "expired";
    EXPECT_EQ(s.permits(), 0u);
    s.permit(104, 10, 20);
    s.permit(104, 15, 30);  // renewed, not doubled
    EXPECT_EQ(s.permits(), 1u);
    EXPECT_TRUE(s.takePermit(104, 25));
}

// A flood of RESENDs cannot grow the permits without bound: expired ones make room
// first, then the one that expires soonest.
TEST(SeenIds, PermitsAreBounded) {
    SeenIds s(64);
    s.permit(2, 0, 5);  // expires first
    for (uint64_t k = 1; k < SeenIds::kMaxPermits; ++k) s.permit(2 + 2 * k, 0, 100 + k);
    EXPECT_EQ(s.permits(), SeenIds::kMaxPermits);
    s.permit(1'000'000, 10, 500);  // at tick 10 the first has expired: it makes room
    EXPECT_EQ(s.permits(), SeenIds::kMaxPermits);
    EXPECT_FALSE(s.takePermit(2, 4));
    s.permit(1'000'002, 10, 500);  // none expired: the one ending soonest goes
    EXPECT_EQ(s.permits(), SeenIds::kMaxPermits);
    EXPECT_FALSE(s.takePermit(4, 10));
    EXPECT_TRUE(s.takePermit(6, 10));
    EXPECT_TRUE(s.takePermit(1'000'000, 10));
    EXPECT_TRUE(s.takePermit(1'000'002, 10));
}

// A request readmitted below the window (with a permit) is seen from then on: a RESEND
// for it that arrives late, after its ack, finds it run and wins no second permit. One
// given up before it ran is unseen again.
TEST(SeenIds, ReadmittedIdsCountAsRunAndOnesGivenUpAsNeverRun) {
    SeenIds s(64);
    s.insert(10'000);
    s.insert(20'000);  // slides the window far up: 10'002 .. 19'998 unseen
    ASSERT_FALSE(s.mayHaveRun(12'000));
    s.insert(12'000);  // readmitted
    EXPECT_TRUE(s.mayHaveRun(12'000));
    EXPECT_FALSE(s.mayHaveRun(11'998));
    EXPECT_FALSE(s.mayHaveRun(12'002));
    EXPECT_EQ(s.unseenRanges(), 3u);  // split in two
    s.insert(12'002);
    s.forget(12'002);  // given up while it was still arriving
    EXPECT_FALSE(s.mayHaveRun(12'002));
    EXPECT_TRUE(s.mayHaveRun(12'000));
    EXPECT_EQ(s.unseenRanges(), 3u);
}

// A request run inside the window and acked, then passed by the window, still counts as
// run: a RESEND for it delayed in the network must not win a permit (a restarted copy,
// delayed likewise, would then run it a second time).
TEST(SeenIds, IdsRunInsideTheWindowStayRunAfterItMoves) {
    SeenIds s(64);
    for (uint64_t id = 2; id <= 400; id += 2) s.insert(id);
    for (uint64_t id = 2; id <= 200; id += 2) {
        ASSERT_TRUE(s.belowWindow(id));
        EXPECT_TRUE(s.mayHaveRun(id)) << id;
    }
    EXPECT_FALSE(s.mayHaveRun(0)) << "never seen";
}

}  // namespace
// A set made anew for a peer that was forgotten: everything up to the highest id it was
// served counts as seen; later ids are new.
TEST(SeenIds, SeenUpToMarksEverythingUpToAnIdAndRemembersTheHighest) {
    SeenIds s(64);
    EXPECT_EQ(s.highest(), 0u);
    s.seenUpTo(1000);
    EXPECT_EQ(s.highest(), 1000u);
    for (uint64_t id : {0, 2, 500, 998, 1000}) EXPECT_TRUE(s.contains(id)) << id;
    for (uint64_t id : {1002, 1004, 5000}) EXPECT_FALSE(s.contains(id)) << id;
    s.insert(1004);
    EXPECT_TRUE(s.contains(1004));
    EXPECT_FALSE(s.contains(1002));
    EXPECT_EQ(s.highest(), 1004u);
    SeenIds used(64);
    used.insert(10);
    used.seenUpTo(5000);  // only on a fresh set
    EXPECT_FALSE(used.contains(5000));
}

}  // namespace homa::engine
