#include "engine/client_rpc_index.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <map>
#include <random>
#include <vector>

namespace homa::engine {
namespace {

struct Item {
    uint64_t id = 0;
};

TEST(ClientRpcIndex, FindsWhatWasInsertedAndNothingElse) {
    ClientRpcIndex<Item> index(8);
    Item a{2}, b{4};
    index.insert(a.id, &a);
    index.insert(b.id, &b);
    EXPECT_EQ(index.find(2), &a);
    EXPECT_EQ(index.find(4), &b);
    EXPECT_EQ(index.find(6), nullptr);
    // The same slot as 2 (8 slots, ids 2 apart), another id.
    EXPECT_EQ(index.find(2 + 16), nullptr);
    EXPECT_EQ(index.size(), 2u);
    EXPECT_TRUE(index.erase(2));
    EXPECT_FALSE(index.erase(2));
    EXPECT_EQ(index.find(2), nullptr);
    EXPECT_EQ(index.size(), 1u);
}

// An id whose slot is taken by an older RPC still in flight goes to the overflow map,
// and is found, and removed, there; the slot's owner is unaffected.
TEST(ClientRpcIndex, ASlotTakenByAnOlderRpcSendsTheNewOneToTheOverflow) {
    ClientRpcIndex<Item> index(8);
    Item old{10}, young{10 + 16}, younger{10 + 32};
    index.insert(old.id, &old);
    index.insert(young.id, &young);
    index.insert(younger.id, &younger);
    EXPECT_EQ(index.overflowSize(), 2u);
    EXPECT_EQ(index.find(old.id), &old);
    EXPECT_EQ(index.find(young.id), &young);
    EXPECT_EQ(index.find(younger.id), &younger);
    // The slot's owner leaves; the overflowed ones are still found, and a newcomer for
    // the free slot takes it.
    EXPECT_TRUE(index.erase(old.id));
    EXPECT_EQ(index.find(young.id), &young);
    Item next{10 + 48};
    index.insert(next.id, &next);
    EXPECT_EQ(index.overflowSize(), 2u);
    EXPECT_EQ(index.find(next.id), &next);
    EXPECT_TRUE(index.erase(young.id));
    EXPECT_TRUE(index.erase(younger.id));
    EXPECT_EQ(index.overflowSize(), 0u);
    EXPECT_EQ(index.find(young.id), nullptr);
    EXPECT_EQ(index.find(next.id), &next);
    EXPECT_EQ(index.size(), 1u);
}

TEST(ClientRpcIndex, SlotsAreRoundedUpToAPowerOfTwo) {
    ClientRpcIndex<Item> index(5);  // 8 slots
    Item a{0}, b{16};
    index.insert(a.id, &a);
    index.insert(b.id, &b);
    EXPECT_EQ(index.overflowSize(), 1u);
}

// A table that may grow doubles when an id's slot is taken, until its largest size; the
// entries already in it, and those of the overflow that then have a slot, are all found.
TEST(ClientRpcIndex, AGrowingTableDoublesOnACollisionUpToItsLargestSize) {
    ClientRpcIndex<Item> index(1, 8);
    EXPECT_EQ(index.slots(), 1u);
    std::vector<Item> items;
    for (uint64_t id = 2; id <= 40; id += 2) items.push_back(Item{id});
    for (size_t i = 0; i < 4; ++i) index.insert(items[i].id, &items[i]);  // ids 2..8
    EXPECT_EQ(index.slots(), 4u);
    EXPECT_EQ(index.overflowSize(), 0u);
    for (size_t i = 4; i < items.size(); ++i) index.insert(items[i].id, &items[i]);
    EXPECT_EQ(index.slots(), 8u);  // no further: 8 is the largest
    EXPECT_EQ(index.overflowSize(), items.size() - 8);
    for (const Item& item : items) EXPECT_EQ(index.find(item.id), &item) << item.id;
    EXPECT_EQ(index.size(), items.size());
}

// Random inserts and erases of a sliding window of ids (the way a client's RPCs come and
// go, with a few long-lived ones) against a std::map, in a table of a fixed size and in
// one that grows. HOMA_TEST_SEED=<n> repeats a run.
class ClientRpcIndexRandom : public ::testing::TestWithParam<std::pair<size_t, size_t>> {};
INSTANTIATE_TEST_SUITE_P(Sizes, ClientRpcIndexRandom,
                         ::testing::Values(std::pair<size_t, size_t>{64, 0}, std::pair<size_t, size_t>{1, 256}));

TEST_P(ClientRpcIndexRandom, AgreesWithAMapUnderRandomTraffic) {
    const char* fixed = std::getenv("HOMA_TEST_SEED");
    const unsigned seed = fixed ? static_cast<unsigned>(std::strtoul(fixed, nullptr, 10)) : std::random_device{}();
    std::printf("seed %u (HOMA_TEST_SEED=%u repeats this run)\n", seed, seed);
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    ClientRpcIndex<Item> index(GetParam().first, GetParam().second);
    std::map<uint64_t, Item*> model;
    std::vector<std::unique_ptr<Item>> items;
    uint64_t nextId = 1000;
    for (int step = 0; step < 200000; ++step) {
        const bool add = model.empty() || rng() % 100 < 52;
        if (add) {
            items.push_back(std::make_unique<Item>(Item{nextId}));
            index.insert(nextId, items.back().get());
            model[nextId] = items.back().get();
            nextId += 2;
        } else {
            // Mostly the oldest few; now and then any.
            auto it = model.begin();
            std::advance(it, static_cast<long>(rng() % 100 < 90 ? rng() % std::min<size_t>(model.size(), 4) : rng() % model.size()));
            ASSERT_TRUE(index.erase(it->first));
            model.erase(it);
        }
        const uint64_t probe = 1000 + 2 * (rng() % ((nextId - 1000) / 2 + 1));
        auto m = model.find(probe);
        ASSERT_EQ(index.find(probe), m == model.end() ? nullptr : m->second) << "step " << step << " id " << probe;
        ASSERT_EQ(index.size(), model.size());
    }
}

}  // namespace
}  // namespace homa::engine
