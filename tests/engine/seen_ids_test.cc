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
