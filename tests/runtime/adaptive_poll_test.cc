#include "runtime/adaptive_poll.h"

#include <gtest/gtest.h>

namespace homa::runtime {
namespace {

constexpr int64_t kBudget = 10'000;

TEST(MissBackoff, MissesLetGoOneTwoFourUpToSixtyFourChancesAndAHitForgivesThem) {
    MissBackoff b;
    EXPECT_TRUE(b.tryNow());
    for (uint32_t skip : {1u, 2u, 4u, 8u, 16u, 32u, 64u, 64u}) {
        b.tried(false);
        for (uint32_t i = 0; i < skip; ++i) EXPECT_FALSE(b.tryNow()) << "after a miss, chance " << i << " of " << skip;
        EXPECT_TRUE(b.tryNow());
    }
    b.tried(true);
    b.tried(false);
    EXPECT_FALSE(b.tryNow());
    EXPECT_TRUE(b.tryNow()) << "a hit starts again at one chance";
}

TEST(AdaptivePoll, TheFirstWaitSleeps) {
    AdaptivePoll p;
    EXPECT_EQ(p.spinFor(kBudget), 0);
}

TEST(AdaptivePoll, SpinsOnlyAfterAWaitOfAtMostTwiceTheBudget) {
    AdaptivePoll p;
    p.waited(20'000, true);
    EXPECT_EQ(p.spinFor(kBudget), kBudget);
    p.waited(20'001, true);
    EXPECT_EQ(p.spinFor(kBudget), 0);
    p.waited(0, true);
    EXPECT_EQ(p.spinFor(kBudget), kBudget);
}

TEST(AdaptivePoll, AWaitEndedByAnythingButPacketsCountsAsLong) {
    AdaptivePoll p;
    p.waited(1'000, false);  // a timer, a poke
    EXPECT_EQ(p.spinFor(kBudget), 0);
}

TEST(AdaptivePoll, ABudgetOfZeroNeverSpins) {
    AdaptivePoll p;
    p.waited(0, true);
    EXPECT_EQ(p.spinFor(0), 0);
}

// After a spin that found nothing, the next 1, 2, 4 ... 64 waits that would spin sleep;
// a spin that finds packets starts the count again.
TEST(AdaptivePoll, MissesAreSatOutForLongerAndLongerAndAHitForgivesThem) {
    AdaptivePoll p;
    p.waited(5'000, true);
    auto spinsIn = [&](int waits) {
        int spins = 0;
        for (int i = 0; i < waits; ++i) spins += p.spinFor(kBudget) > 0;
        return spins;
    };
    ASSERT_EQ(p.spinFor(kBudget), kBudget);
    for (uint32_t skip : {1u, 2u, 4u, 8u, 16u, 32u, 64u, 64u}) {
        p.spun(false);
        EXPECT_EQ(spinsIn(static_cast<int>(skip)), 0) << "after a miss, " << skip << " waits sleep";
        EXPECT_EQ(p.spinFor(kBudget), kBudget) << "then one spins again";
    }
    p.spun(true);
    p.spun(false);
    EXPECT_EQ(spinsIn(1), 0);
    EXPECT_EQ(p.spinFor(kBudget), kBudget) << "a hit starts the backoff again at one wait";
    // Waits too long to spin do not use up the misses' count.
    p.spun(false);  // (the second miss in a row: 2 waits sleep)
    p.waited(50'000, true);
    EXPECT_EQ(spinsIn(10), 0);
    p.waited(5'000, true);
    EXPECT_EQ(spinsIn(2), 0);
    EXPECT_EQ(p.spinFor(kBudget), kBudget);
}

TEST(AdaptivePoll, TheLargestBudgetDoesNotOverflow) {
    AdaptivePoll p;
    const int64_t budget = 1'000'000'000;  // EndpointOptions' limit, 1 s, in ns
    p.waited(2 * budget, true);
    EXPECT_EQ(p.spinFor(budget), budget);
    p.waited(AdaptivePoll::kLong, true);
    EXPECT_EQ(p.spinFor(budget), 0);
}

}  // namespace
}  // namespace homa::runtime
