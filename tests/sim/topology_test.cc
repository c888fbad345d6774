#include <gtest/gtest.h>

#include <set>

#include "sim/network.h"
#include "sim_test_util.h"

namespace homa::sim {
namespace {

using testing::RecordingHost;
using testing::tagged;

TEST(SimTopology, SerializationTimeIsExactAndRoundsUp) {
    EXPECT_EQ(serializationTime(1500, 10.0), 1200);
    EXPECT_EQ(serializationTime(1500, 40.0), 300);
    EXPECT_EQ(serializationTime(64, 40.0), 13);  // 12.8 ns
    EXPECT_EQ(serializationTime(1, 100.0), 1);   // 0.08 ns
    EXPECT_EQ(serializationTime(0, 10.0), 0);
    EXPECT_EQ(serializationTime(1000, 25.0), 320);
    EXPECT_THROW(serializationTime(1, 0.0), std::invalid_argument);
}

// Links count in whole Mbit/s: a rate between two is refused, not rounded (0.0015 Gbps
// ran at 2 Mbit/s).
TEST(SimTopology, RatesThatAreNotWholeMbpsAreRefused) {
    EXPECT_EQ(linkMbps(0.001), 1u);
    EXPECT_EQ(linkMbps(2.5), 2'500u);
    EXPECT_EQ(linkMbps(9.3), 9'300u);  // 9,299.999999999998 in doubles
    EXPECT_EQ(linkMbps(10'000), 10'000'000u);
    for (double gbps : {0.0015, 0.0005, 2.5005, 10.0000001})
        EXPECT_THROW(linkMbps(gbps), std::invalid_argument) << gbps;
    EXPECT_THROW(serializationTime(1500, 0.0015), std::invalid_argument);
    EXPECT_THROW(Network(1, TopologyConfig::star(2, 0.0015)), std::invalid_argument);
}

TEST(SimTopology, TwoTierDefaultShape) {
    const Topology t = Topology::build(TopologyConfig::twoTier());
    EXPECT_EQ(t.numHosts(), 144u);
    EXPECT_EQ(t.numNodes(), 144u + 9 + 4);
    // NIC + ToR downlink per host, plus ToR<->agg in both directions.
    EXPECT_EQ(t.numPorts(), 144u * 2 + 9 * 4 * 2);
    EXPECT_EQ(t.uplinkPorts().size(), 36u);
    for (HostId h = 0; h < t.numHosts(); ++h) {
        EXPECT_EQ(t.port(t.nicPort(h)).from, h);
        EXPECT_EQ(t.port(t.downlinkPort(h)).to, h);
        EXPECT_EQ(t.port(t.nicPort(h)).to, t.port(t.downlinkPort(h)).from);
    }
    // Same rack: one choice; other rack: one per aggregation switch.
    const NodeId tor0 = t.port(t.nicPort(0)).to;
    EXPECT_EQ(t.routes(tor0, 5).size(), 1u);
    EXPECT_EQ(t.routes(tor0, 16).size(), 4u);
}

TEST(SimTopology, StarOnePacketTimingIsExact) {
    Network net(1, TopologyConfig::star(2, 10.0, /*latency=*/500, /*switchDelay=*/100));
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    net.send(0, 1, 0, tagged(1, 1000));
    EXPECT_TRUE(net.runUntilIdle());
    ASSERT_EQ(b.packets.size(), 1u);
    // NIC 800 + link 500 + switch 100 + downlink 800 + link 500.
    EXPECT_EQ(b.packets[0].time, 2700);
    EXPECT_EQ(net.minOneWay(0, 1, 1000), 2700);
}

TEST(SimTopology, WireOverheadIsChargedPerHop) {
    TopologyConfig cfg = TopologyConfig::star(2, 10.0, 0, 0);
    cfg.wireOverheadBytes = 24;
    Network net(1, cfg);
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    net.send(0, 1, 0, tagged(1, 1000));
    net.runUntilIdle();
    ASSERT_EQ(b.packets.size(), 1u);
    EXPECT_EQ(b.packets[0].time, 2 * 820);  // 1024 B = 819.2 ns, rounded up per hop
    EXPECT_EQ(b.packets[0].bytes.size(), 1000u);  // overhead is never delivered
    EXPECT_EQ(net.minOneWay(0, 1, 1000), 2 * 820);
}

TEST(SimTopology, TwoTierSameRackTimingIsExact) {
    Network net(7, TopologyConfig::twoTier());
    std::vector<RecordingHost> hosts(144);
    for (auto& h : hosts) net.attach(&h);
    net.send(0, 1, 3, tagged(1, 1500));
    net.runUntilIdle();
    ASSERT_EQ(hosts[1].packets.size(), 1u);
    // 10G NIC 1200 + 100 + ToR 250 + 10G downlink 1200 + 100.
    EXPECT_EQ(hosts[1].packets[0].time, 2850);
    EXPECT_EQ(net.minOneWay(0, 1, 1500), 2850);
    for (PortId p : net.topology().uplinkPorts()) EXPECT_EQ(net.portStats(p).txPackets, 0u);
}

TEST(SimTopology, TwoTierCrossRackTimingIsExact) {
    Network net(7, TopologyConfig::twoTier());
    std::vector<RecordingHost> hosts(144);
    for (auto& h : hosts) net.attach(&h);
    const HostId dst = 5 * 16 + 3;
    net.send(0, dst, 3, tagged(1, 1500));
    net.runUntilIdle();
    ASSERT_EQ(hosts[dst].packets.size(), 1u);
    // NIC 1200+100, ToR 250 + 40G 300+100, agg 250 + 40G 300+100, ToR 250 + 1200+100.
    EXPECT_EQ(hosts[dst].packets[0].time, 4150);
    EXPECT_EQ(net.minOneWay(0, dst, 1500), 4150);
}

TEST(SimTopology, BackToBackPacketsPipelineAtLineRate) {
    Network net(1, TopologyConfig::star(2, 10.0, 500, 100));
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    for (uint32_t i = 0; i < 5; ++i) net.send(0, 1, 0, tagged(i, 1000));
    net.runUntilIdle();
    ASSERT_EQ(b.packets.size(), 5u);
    for (size_t i = 0; i < 5; ++i) {
        EXPECT_EQ(b.packets[i].time, 2700 + static_cast<Time>(i) * 800);
    }
}

// Links carry fractions of a nanosecond from one packet to the next: a long train of
// packets whose serialisation is not a whole number of ns keeps the nominal rate (each
// packet rounded up to a whole ns ran 0.78% slow at 100 Gbps, 5.7% at 1000 Gbps).
TEST(SimTopology, BackToBackPacketsKeepTheExactLineRate) {
    for (double gbps : {10.0, 100.0, 1000.0, 10000.0}) {
        TopologyConfig cfg = TopologyConfig::star(2, gbps, /*latency=*/100, /*switchDelay=*/250);
        cfg.wireOverheadBytes = 66;
        Network net(1, cfg);
        RecordingHost a, b;
        net.attach(&a);
        net.attach(&b);
        constexpr int kPackets = 1000;
        constexpr size_t kBytes = 1472;
        for (int i = 0; i < kPackets; ++i) net.send(0, 1, 0, tagged(static_cast<uint32_t>(i), kBytes));
        ASSERT_TRUE(net.runUntilIdle());
        ASSERT_EQ(b.packets.size(), static_cast<size_t>(kPackets));
        // Exact: the NIC sends the train back to back, then the last packet crosses the
        // switch and the downlink. Each hop may round up to the next whole ns once.
        const double tx = (kBytes + 66) * 8 / gbps;
        const double exact = kPackets * tx + 100 + 250 + tx + 100;
        const double last = static_cast<double>(b.packets.back().time);
        EXPECT_GE(last, exact - 1e-6) << gbps << " Gbps";
        EXPECT_LE(last, exact + 2) << gbps << " Gbps";
        EXPECT_LE(last, exact * 1.001) << gbps << " Gbps";
        for (size_t i = 1; i < b.packets.size(); ++i) ASSERT_GE(b.packets[i].time, b.packets[i - 1].time);
    }
}

// A packet that finds its port idle starts at once; one queued behind another starts
// exactly when that one ends, fractions of a ns included.
TEST(SimTopology, FractionsCarryOnlyAcrossBackToBackPackets) {
    TopologyConfig cfg = TopologyConfig::star(2, 100.0, 0, 0);
    Network net(1, cfg);
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    // 1001 bytes at 100 Gbps: 80.08 ns. Two back to back end at 160.16 (NIC), the
    // second is delivered at ceil(160.16) + 80.08 rounded up = 161 + 81.
    net.send(0, 1, 0, tagged(1, 1001));
    net.send(0, 1, 0, tagged(2, 1001));
    ASSERT_TRUE(net.runUntilIdle());
    ASSERT_EQ(b.packets.size(), 2u);
    EXPECT_EQ(b.packets[0].time, 81 + 81);
    EXPECT_EQ(b.packets[1].time, 161 + 81);
    // Later, on an idle network, a packet starts on a whole ns again.
    net.at(1000, [&] { net.send(0, 1, 0, tagged(3, 1001)); });
    ASSERT_TRUE(net.runUntilIdle());
    ASSERT_EQ(b.packets.size(), 3u);
    EXPECT_EQ(b.packets[2].time, 1000 + 81 + 81);
}

TEST(SimTopology, SprayingUsesEveryAggregationSwitchEvenly) {
    const uint64_t seed = testing::testSeed(42);
    SCOPED_TRACE(seed);
    Network net(seed, TopologyConfig::twoTier());
    std::vector<RecordingHost> hosts(144);
    for (auto& h : hosts) net.attach(&h);
    constexpr int kPackets = 8000;
    for (int i = 0; i < kPackets; ++i) net.send(i % 16, 16 + i % 16, 0, tagged(i, 100));
    ASSERT_TRUE(net.runUntilIdle());
    EXPECT_EQ(net.stats().delivered, static_cast<uint64_t>(kPackets));

    const NodeId tor0 = net.topology().port(net.topology().nicPort(0)).to;
    std::set<NodeId> aggsUsed;
    uint64_t total = 0;
    for (PortId p : net.topology().uplinkPorts()) {
        const uint64_t n = net.portStats(p).txPackets;
        if (net.topology().port(p).from != tor0) {
            EXPECT_EQ(n, 0u);
            continue;
        }
        aggsUsed.insert(net.topology().port(p).to);
        total += n;
        // Expected 2000 each; binomial sd ~39, so +-10% is ~5 sd.
        EXPECT_NEAR(static_cast<double>(n), kPackets / 4.0, kPackets / 40.0);
    }
    EXPECT_EQ(aggsUsed.size(), 4u);
    EXPECT_EQ(total, static_cast<uint64_t>(kPackets));
}

TEST(Topology, HostDelayIsAddedOncePerPacketAtTheReceiver) {
    TopologyConfig c = TopologyConfig::twoTier();
    const Topology plain = Topology::build(c);
    c.hostDelay = 1000;
    const Topology delayed = Topology::build(c);
    for (HostId dst : {1u, 17u, 143u}) {
        EXPECT_EQ(delayed.minOneWay(0, dst, 1500), plain.minOneWay(0, dst, 1500) + 1000) << dst;
    }
    EXPECT_EQ(delayed.port(delayed.downlinkPort(5)).latency, c.hostLatency + 1000);
    EXPECT_EQ(delayed.port(delayed.nicPort(5)).latency, c.hostLatency);
    c.hostDelay = -1;
    EXPECT_THROW(Topology::build(c), std::invalid_argument);
}

TEST(Network, CountsEventsItDispatches) {
    Network net(1, TopologyConfig::star(2));
    EXPECT_EQ(net.eventsProcessed(), 0u);
    int calls = 0;
    net.at(10, [&] { ++calls; });
    net.at(20, [&] { ++calls; });
    net.runUntilIdle();
    EXPECT_EQ(calls, 2);
    EXPECT_EQ(net.eventsProcessed(), 2u);
}

}  // namespace
}  // namespace homa::sim
