#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "sim/network.h"
#include "sim_test_util.h"

namespace homa::sim {
namespace {

using testing::RecordingHost;
using testing::tagged;
using testing::tagOf;

struct Pair {
    explicit Pair(uint64_t seed, TopologyConfig cfg = TopologyConfig::star(3, 10.0, 100, 0))
        : net(seed, cfg), hosts(cfg.hosts) {
        for (auto& h : hosts) net.attach(&h);
    }
    Network net;
    std::vector<RecordingHost> hosts;
};

size_t inversions(const RecordingHost& h) {
    size_t n = 0;
    for (size_t i = 1; i < h.packets.size(); ++i) {
        if (tagOf(h.packets[i].bytes) < tagOf(h.packets[i - 1].bytes)) ++n;
    }
    return n;
}

TEST(SimFaults, LossOneDropsEverythingButUsesLinks) {
    Pair p(1);
    Faults f;
    f.loss = 1.0;
    p.net.setFaults(f);
    for (uint32_t i = 0; i < 50; ++i) p.net.send(0, 1, 0, tagged(i, 500));
    p.net.runUntilIdle();
    EXPECT_TRUE(p.hosts[1].packets.empty());
    EXPECT_EQ(p.net.stats().lost, 50u);
    EXPECT_EQ(p.net.stats().delivered, 0u);
    EXPECT_EQ(p.net.portStats(p.net.topology().nicPort(0)).txPackets, 50u);
    EXPECT_EQ(p.net.portStats(p.net.topology().downlinkPort(1)).txPackets, 50u);
    EXPECT_TRUE(testing::conserved(p.net.stats()));
}

TEST(SimFaults, PartialLossMatchesProbability) {
    const uint64_t seed = testing::testSeed(5);
    SCOPED_TRACE(seed);
    Pair p(seed);
    Faults f;
    f.loss = 0.3;
    p.net.setFaults(f);
    for (uint32_t i = 0; i < 4000; ++i) p.net.send(0, 1, 0, tagged(i, 64));
    p.net.runUntilIdle();
    // Expected 1200 lost; sd ~29.
    EXPECT_NEAR(static_cast<double>(p.net.stats().lost), 1200.0, 150.0);
    EXPECT_EQ(p.hosts[1].packets.size() + p.net.stats().lost, 4000u);
}

TEST(SimFaults, DuplicateOneDeliversEveryPacketTwice) {
    Pair p(1);
    Faults f;
    f.duplicate = 1.0;
    p.net.setFaults(f);
    for (uint32_t i = 0; i < 20; ++i) p.net.send(0, 1, 0, tagged(i, 300));
    p.net.runUntilIdle();
    ASSERT_EQ(p.hosts[1].packets.size(), 40u);
    std::map<uint64_t, int> perSeq;
    for (const auto& r : p.hosts[1].packets) ++perSeq[r.seq];
    EXPECT_EQ(perSeq.size(), 20u);
    for (const auto& [seq, n] : perSeq) EXPECT_EQ(n, 2) << "seq " << seq;
    EXPECT_EQ(p.net.stats().duplicated, 20u);
    EXPECT_EQ(p.net.stats().delivered, 40u);
    EXPECT_TRUE(testing::conserved(p.net.stats()));
}

TEST(SimFaults, JitterReordersButDeliversEverythingOnce) {
    const uint64_t seed = testing::testSeed(17);
    SCOPED_TRACE(seed);
    Pair p(seed);
    Faults f;
    f.jitter = 2000;
    p.net.setFaults(f);
    const Time base = p.net.minOneWay(0, 1, 100);
    for (uint32_t i = 0; i < 200; ++i) p.net.send(0, 1, 0, tagged(i, 100));
    p.net.runUntilIdle();
    ASSERT_EQ(p.hosts[1].packets.size(), 200u);
    std::set<uint32_t> seen;
    for (const auto& r : p.hosts[1].packets) {
        seen.insert(tagOf(r.bytes));
        const Time undisturbed = base + static_cast<Time>(tagOf(r.bytes)) * 80;
        EXPECT_GE(r.time, undisturbed);
        EXPECT_LE(r.time, undisturbed + 2000);
    }
    EXPECT_EQ(seen.size(), 200u);
    EXPECT_GT(inversions(p.hosts[1]), 0u);
    EXPECT_EQ(p.net.stats().reordered, 0u);
}

TEST(SimFaults, ReorderDelaysSomePacketsAndCountsThem) {
    const uint64_t seed = testing::testSeed(23);
    SCOPED_TRACE(seed);
    Pair p(seed);
    Faults f;
    f.reorder = 0.2;
    f.reorderDelay = 5000;
    p.net.setFaults(f);
    for (uint32_t i = 0; i < 500; ++i) p.net.send(0, 1, 0, tagged(i, 100));
    p.net.runUntilIdle();
    ASSERT_EQ(p.hosts[1].packets.size(), 500u);
    EXPECT_NEAR(static_cast<double>(p.net.stats().reordered), 100.0, 40.0);
    EXPECT_GT(inversions(p.hosts[1]), 10u);
    std::set<uint32_t> seen;
    for (const auto& r : p.hosts[1].packets) seen.insert(tagOf(r.bytes));
    EXPECT_EQ(seen.size(), 500u);
}

TEST(SimFaults, CorruptFlipsOneToThreeBytes) {
    const uint64_t seed = testing::testSeed(29);
    SCOPED_TRACE(seed);
    Pair p(seed);
    Faults f;
    f.corrupt = 1.0;
    p.net.setFaults(f);
    // Tag lives in the header; the payload is all zero so flips are visible.
    const std::vector<uint8_t> zeros(200, 0);
    for (uint32_t i = 0; i < 300; ++i) p.net.send(0, 1, 0, std::vector<uint8_t>{}, zeros);
    p.net.runUntilIdle();
    ASSERT_EQ(p.hosts[1].packets.size(), 300u);
    std::set<size_t> flipCounts;
    for (const auto& r : p.hosts[1].packets) {
        ASSERT_EQ(r.bytes.size(), 200u);
        const auto n = static_cast<size_t>(
            std::count_if(r.bytes.begin(), r.bytes.end(), [](uint8_t b) { return b != 0; }));
        EXPECT_GE(n, 1u);
        EXPECT_LE(n, 3u);
        flipCounts.insert(n);
    }
    EXPECT_EQ(flipCounts, (std::set<size_t>{1, 2, 3}));
    EXPECT_EQ(p.net.stats().corrupted, 300u);
}

TEST(SimFaults, PerDestinationFaultsOverrideGlobal) {
    Pair p(1);
    Faults drop;
    drop.loss = 1.0;
    p.net.setFaults(drop);
    p.net.setFaults(2, Faults{});
    for (uint32_t i = 0; i < 10; ++i) {
        p.net.send(0, 1, 0, tagged(i, 100));
        p.net.send(0, 2, 0, tagged(i, 100));
    }
    p.net.runUntilIdle();
    EXPECT_EQ(p.hosts[1].packets.size(), 0u);
    EXPECT_EQ(p.hosts[2].packets.size(), 10u);
    p.net.clearFaults(2);
    p.net.send(0, 2, 0, tagged(99, 100));
    p.net.runUntilIdle();
    EXPECT_EQ(p.hosts[2].packets.size(), 10u);
    EXPECT_EQ(p.net.stats().lost, 11u);
}

TEST(SimFaults, PartitionWindowBothDirectionsAndEnds) {
    // Judged by arrival time at the destination: [from, until). A fresh
    // network per probe keeps probes from queueing behind each other.
    auto probe = [](Time arrival) {
        Pair p(1, TopologyConfig::star(4, 10.0, 100, 0));
        Network& net = p.net;
        net.partition(0, 1, 10000, 20000);
        net.at(arrival - net.minOneWay(0, 1, 100), [&net] {
            net.send(0, 1, 0, tagged(1, 100));
            net.send(1, 0, 0, tagged(2, 100));
            net.send(2, 3, 0, tagged(3, 100));
        });
        net.runUntilIdle();
        EXPECT_EQ(p.hosts[3].packets.size(), 1u) << "bystanders unaffected";
        EXPECT_EQ(p.hosts[0].packets.size(), p.hosts[1].packets.size()) << "symmetric";
        for (HostId h : {0u, 1u}) {
            if (!p.hosts[h].packets.empty()) {
                EXPECT_EQ(p.hosts[h].packets[0].time, arrival);
            }
        }
        return std::make_pair(p.hosts[1].packets.size(), net.stats().partitionDropped);
    };
    using R = std::pair<size_t, uint64_t>;
    EXPECT_EQ(probe(5000), R(1, 0));
    EXPECT_EQ(probe(9999), R(1, 0));
    EXPECT_EQ(probe(10000), R(0, 2));
    EXPECT_EQ(probe(15000), R(0, 2));
    EXPECT_EQ(probe(19999), R(0, 2));
    EXPECT_EQ(probe(20000), R(1, 0));
    EXPECT_EQ(probe(25000), R(1, 0));
}

TEST(SimFaults, FaultDecisionsDoNotPerturbRouting) {
    // Spraying uses its own stream: adding faults must not change which
    // uplink each packet takes.
    auto uplinkCounts = [](bool faults) {
        Network net(77, TopologyConfig::twoTier());
        std::vector<RecordingHost> hosts(144);
        for (auto& h : hosts) net.attach(&h);
        if (faults) {
            Faults f;
            f.loss = 0.5;
            f.jitter = 100;
            net.setFaults(f);
        }
        for (uint32_t i = 0; i < 500; ++i) net.send(i % 16, 16 + i % 32, 0, tagged(i, 100));
        net.runUntilIdle();
        std::vector<uint64_t> out;
        for (PortId u : net.topology().uplinkPorts()) out.push_back(net.portStats(u).txPackets);
        return out;
    };
    EXPECT_EQ(uplinkCounts(false), uplinkCounts(true));
}

// Random traffic over the default datacenter with every fault enabled.
struct Outcome {
    uint64_t hash;
    Stats stats;
};

Outcome runScenario(uint64_t seed) {
    TopologyConfig cfg = TopologyConfig::twoTier();
    cfg.switchQueueLimitBytes = 20000;
    Network net(seed, cfg);
    std::vector<RecordingHost> hosts(144);
    for (auto& h : hosts) net.attach(&h);
    Faults f;
    f.loss = 0.02;
    f.duplicate = 0.02;
    f.reorder = 0.05;
    f.reorderDelay = 3000;
    f.jitter = 50;
    f.corrupt = 0.02;
    net.setFaults(f);
    net.partition(3, 40, 0, 200000);
    net.at(100000, [&] { net.crash(7); });
    net.at(300000, [&] { net.restart(7, &hosts[7]); });
    // Workload is drawn from a fixed stream so only the network's seed varies.
    std::mt19937_64 load(12345);
    for (uint32_t i = 0; i < 3000; ++i) {
        const Time t = static_cast<Time>(load() % 400000);
        const auto src = static_cast<HostId>(load() % 144);
        const auto dst = static_cast<HostId>(load() % 144);
        const auto prio = static_cast<uint8_t>(load() % 8);
        const size_t size = 64 + load() % 1400;
        net.at(t, [&net, src, dst, prio, size, i] { net.send(src, dst, prio, tagged(i, size)); });
    }
    EXPECT_TRUE(net.runUntilIdle());
    return Outcome{net.traceHash(), net.stats()};
}

TEST(SimFaults, SameSeedSameTraceDifferentSeedDifferentTrace) {
    const uint64_t seed = testing::testSeed(2024);
    SCOPED_TRACE(seed);
    const Outcome a = runScenario(seed);
    const Outcome b = runScenario(seed);
    const Outcome c = runScenario(seed + 1);
    EXPECT_EQ(a.hash, b.hash);
    EXPECT_EQ(a.stats.delivered, b.stats.delivered);
    EXPECT_EQ(a.stats.lost, b.stats.lost);
    EXPECT_NE(a.hash, c.hash);
}

TEST(SimFaults, EveryPacketIsAccountedForUnderAllFaults) {
    const uint64_t seed = testing::testSeed(99);
    SCOPED_TRACE(seed);
    const Outcome o = runScenario(seed);
    const Stats& s = o.stats;
    EXPECT_TRUE(testing::conserved(s))
        << "sent=" << s.sent << " dup=" << s.duplicated << " delivered=" << s.delivered
        << " lost=" << s.lost << " part=" << s.partitionDropped << " crash=" << s.crashDropped
        << " queue=" << s.queueDropped;
    EXPECT_EQ(s.sent, 3000u);
    EXPECT_GT(s.delivered, 2500u);
    EXPECT_GT(s.lost, 0u);
    EXPECT_GT(s.duplicated, 0u);
    EXPECT_GT(s.reordered, 0u);
    EXPECT_GT(s.corrupted, 0u);
    EXPECT_EQ(s.noHostDropped, 0u);
}

}  // namespace
}  // namespace homa::sim
