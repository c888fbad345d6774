#include "runtime/adaptive_poll.h"

#include <gtest/gtest.h>

namespace homa::runtime {
namespace {

TEST(AdaptivePoll, SpinsOnlyAfterAWaitOfAtMostTwiceTheBudget) {
    EXPECT_EQ(AdaptivePoll::spinFor(10'000, 0), 10'000);
    EXPECT_EQ(AdaptivePoll::spinFor(10'000, 20'000), 10'000);
    EXPECT_EQ(AdaptivePoll::spinFor(10'000, 20'001), 0);
    EXPECT_EQ(AdaptivePoll::spinFor(10'000, AdaptivePoll::kLong), 0);
}

TEST(AdaptivePoll, ABudgetOfZeroNeverSpins) {
    EXPECT_EQ(AdaptivePoll::spinFor(0, 0), 0);
    EXPECT_EQ(AdaptivePoll::spinFor(0, 5), 0);
}

TEST(AdaptivePoll, OnlyWaitsEndedByPacketsAreRemembered) {
    EXPECT_EQ(AdaptivePoll::remember(7'000, true), 7'000);
    EXPECT_EQ(AdaptivePoll::remember(7'000, false), AdaptivePoll::kLong);
    // A wait ended by a timer or a poke makes the next one sleep at once.
    EXPECT_EQ(AdaptivePoll::spinFor(10'000, AdaptivePoll::remember(1'000, false)), 0);
}

TEST(AdaptivePoll, TheLargestBudgetDoesNotOverflow) {
    const int64_t budget = 1'000'000'000;  // EndpointOptions' limit, 1 s, in ns
    EXPECT_EQ(AdaptivePoll::spinFor(budget, 2 * budget), budget);
    EXPECT_EQ(AdaptivePoll::spinFor(budget, AdaptivePoll::kLong), 0);
}

}  // namespace
}  // namespace homa::runtime
