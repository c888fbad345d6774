#include "engine/reassembly.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace homa::engine {
namespace {

struct Recorder {
    std::vector<std::pair<uint32_t, uint32_t>> fresh;
    auto fn() {
        return [this](uint32_t s, uint32_t e) { fresh.push_back({s, e}); };
    }
};

TEST(GapList, InOrderHasNoGaps) {
    GapList g;
    Recorder r;
    EXPECT_EQ(g.add(0, 100, r.fn()), 100u);
    EXPECT_EQ(g.add(100, 50, r.fn()), 50u);
    EXPECT_TRUE(g.gaps().empty());
    EXPECT_EQ(g.highest(), 150u);
}

TEST(GapList, OutOfOrderMakesAndFillsAGap) {
    GapList g;
    Recorder r;
    g.add(200, 100, r.fn());
    ASSERT_EQ(g.gaps().size(), 1u);
    EXPECT_EQ(g.gaps()[0].start, 0u);
    EXPECT_EQ(g.gaps()[0].end, 200u);
    EXPECT_EQ(g.add(100, 100, r.fn()), 100u);  // splits nothing: trims the end
    ASSERT_EQ(g.gaps().size(), 1u);
    EXPECT_EQ(g.gaps()[0].end, 100u);
    EXPECT_EQ(g.add(0, 100, r.fn()), 100u);
    EXPECT_TRUE(g.gaps().empty());
}

TEST(GapList, DuplicateAddsNothing) {
    GapList g;
    Recorder r;
    g.add(0, 100, r.fn());
    r.fresh.clear();
    EXPECT_EQ(g.add(0, 100, r.fn()), 0u);
    EXPECT_EQ(g.add(10, 20, r.fn()), 0u);
    EXPECT_TRUE(r.fresh.empty());
}

TEST(GapList, PacketInTheMiddleOfAGapSplitsIt) {
    GapList g;
    Recorder r;
    g.add(900, 100, r.fn());
    EXPECT_EQ(g.add(400, 100, r.fn()), 100u);
    ASSERT_EQ(g.gaps().size(), 2u);
    EXPECT_EQ(g.gaps()[0].start, 0u);
    EXPECT_EQ(g.gaps()[0].end, 400u);
    EXPECT_EQ(g.gaps()[1].start, 500u);
    EXPECT_EQ(g.gaps()[1].end, 900u);
}

TEST(GapList, OverlappingPacketCopiesOnlyNewBytes) {
    GapList g;
    Recorder r;
    g.add(0, 100, r.fn());
    g.add(200, 100, r.fn());
    r.fresh.clear();
    EXPECT_EQ(g.add(50, 300, r.fn()), 150u);  // [100,200) and [300,350)
    std::vector<std::pair<uint32_t, uint32_t>> want = {{300, 350}, {100, 200}};
    EXPECT_EQ(r.fresh, want);
    EXPECT_TRUE(g.gaps().empty());
}

// Which packets would make one more gap: past a hole beyond the highest byte, or strictly
// inside a gap; not those that extend the highest byte, touch a gap's edge, or repeat.
TEST(GapList, KnowsWhichPacketsWouldAddAGap) {
    GapList g;
    Recorder r;
    EXPECT_FALSE(g.wouldAddGap(0, 100));
    EXPECT_TRUE(g.wouldAddGap(1, 100));
    g.add(0, 100, r.fn());
    g.add(500, 100, r.fn());  // gap [100, 500)
    g.add(800, 100, r.fn());  // gap [600, 800)
    EXPECT_FALSE(g.wouldAddGap(900, 10));
    EXPECT_TRUE(g.wouldAddGap(901, 10));
    EXPECT_FALSE(g.wouldAddGap(100, 50)) << "at a gap's start";
    EXPECT_FALSE(g.wouldAddGap(450, 50)) << "at a gap's end";
    EXPECT_FALSE(g.wouldAddGap(100, 400)) << "the whole gap";
    EXPECT_TRUE(g.wouldAddGap(200, 50));
    EXPECT_TRUE(g.wouldAddGap(700, 50));
    EXPECT_FALSE(g.wouldAddGap(0, 100)) << "a duplicate";
    EXPECT_FALSE(g.wouldAddGap(550, 300)) << "across a gap's end and beyond";
    EXPECT_EQ(g.gaps().size(), 2u);
}

// Many gaps: each packet finds its place by bisection, and the bytes are right.
TEST(GapList, ManyGapsFillInAnyOrder) {
    GapList g;
    Recorder r;
    constexpr uint32_t kGaps = 20'000;
    for (uint32_t i = 0; i < kGaps; ++i) g.add(2 * i + 1, 1, r.fn());
    EXPECT_EQ(g.gaps().size(), static_cast<size_t>(kGaps));
    uint32_t added = 0;
    for (uint32_t i = kGaps; i-- > 0;) added += g.add(2 * i, 1, r.fn());
    EXPECT_EQ(added, kGaps);
    EXPECT_TRUE(g.gaps().empty());
}

// Random arrival orders with duplicates always reassemble exactly the message.
TEST(GapList, RandomOrderWithDuplicatesReassemblesEverything) {
    const uint64_t seed = 12345;
    std::cout << "seed " << seed << "\n";
    std::mt19937_64 rng(seed);
    for (int round = 0; round < 200; ++round) {
        uint32_t length = 1 + static_cast<uint32_t>(rng() % 50'000);
        uint32_t seg = 1 + static_cast<uint32_t>(rng() % 1500);
        std::vector<uint32_t> offsets;
        for (uint32_t o = 0; o < length; o += seg) offsets.push_back(o);
        size_t n = offsets.size();
        for (size_t i = 0; i < n / 3; ++i) offsets.push_back(offsets[rng() % n]);
        std::shuffle(offsets.begin(), offsets.end(), rng);
        std::vector<int> covered(length, 0);
        GapList g;
        uint32_t total = 0;
        for (uint32_t o : offsets) {
            uint32_t len = std::min(seg, length - o);
            total += g.add(o, len, [&](uint32_t s, uint32_t e) {
                for (uint32_t i = s; i < e; ++i) ++covered[i];
            });
        }
        ASSERT_EQ(total, length) << "round " << round;
        ASSERT_TRUE(g.gaps().empty());
        for (uint32_t i = 0; i < length; ++i) ASSERT_EQ(covered[i], 1) << "byte " << i << " round " << round;
    }
}

}  // namespace
}  // namespace homa::engine
