// Per-thread counters and metrics snapshots.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "homa/metrics.h"
#include "runtime/thread_counters.h"

namespace homa {
namespace {

TEST(ThreadCounters, SumsWhatEveryThreadAdded) {
    runtime::ThreadCounters<3> c;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&c, t] {
            for (int i = 0; i < 10'000; ++i) {
                c.add(0, 1);
                c.add(1, static_cast<uint64_t>(t));
            }
        });
    // Reading while threads count is allowed; a read never exceeds the final total.
    EXPECT_LE(c.sum(0), 40'000u);
    for (auto& t : threads) t.join();
    EXPECT_EQ(c.sum(0), 40'000u);
    EXPECT_EQ(c.sum(1), 10'000u * (0 + 1 + 2 + 3));
    EXPECT_EQ(c.sum(2), 0u);
    EXPECT_LE(c.blocks(), 4u);
}

TEST(ThreadCounters, ThreadsThatComeAndGoReuseBlocksAndKeepTotals) {
    runtime::ThreadCounters<2> c;
    for (int i = 0; i < 100; ++i) {
        std::thread t([&c] { c.add(0, 2); });
        t.join();
    }
    EXPECT_EQ(c.sum(0), 200u);
    EXPECT_EQ(c.blocks(), 1u) << "one thread at a time: one block, handed from thread to thread";
    // Counters that outlive their owner's threads, and threads that outlive the owner.
    auto owned = std::make_unique<runtime::ThreadCounters<1>>();
    std::thread longLived([&owned] { owned->add(0, 1); });
    longLived.join();
    owned.reset();  // a block handed back later finds the owner gone: nothing happens
    std::thread after([] {
        runtime::ThreadCounters<1> fresh;
        fresh.add(0, 3);
        EXPECT_EQ(fresh.sum(0), 3u);
    });
    after.join();
}

TEST(ThreadCounters, EachObjectCountsSeparately) {
    // More objects than a thread's cache holds, used in turn from one thread.
    std::vector<std::unique_ptr<runtime::ThreadCounters<1>>> objs;
    for (int i = 0; i < 10; ++i) objs.push_back(std::make_unique<runtime::ThreadCounters<1>>());
    for (int round = 0; round < 3; ++round)
        for (size_t i = 0; i < objs.size(); ++i) objs[i]->add(0, i + 1);
    for (size_t i = 0; i < objs.size(); ++i) {
        EXPECT_EQ(objs[i]->sum(0), 3 * (i + 1));
        EXPECT_EQ(objs[i]->blocks(), 1u) << "one block per thread, found again after cache misses";
    }
    // A new object at a destroyed one's address starts from zero.
    objs[0].reset();
    objs[0] = std::make_unique<runtime::ThreadCounters<1>>();
    EXPECT_EQ(objs[0]->sum(0), 0u);
    objs[0]->add(0, 5);
    EXPECT_EQ(objs[0]->sum(0), 5u);
}

}  // namespace
}  // namespace homa
