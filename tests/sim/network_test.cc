#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>

#include "sim/event_queue.h"
#include "sim/network.h"
#include "sim_test_util.h"

namespace homa::sim {
namespace {

using testing::RecordingHost;
using testing::tagged;
using testing::tagOf;

std::vector<uint32_t> tags(const RecordingHost& h) {
    std::vector<uint32_t> out;
    for (const auto& r : h.packets) out.push_back(tagOf(r.bytes));
    return out;
}

TEST(SimEventQueue, PopsInTimeThenInsertionOrder) {
    const uint64_t seed = testing::testSeed(3);
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    EventQueue q;
    std::vector<std::pair<Time, uint32_t>> expected;
    for (uint32_t i = 0; i < 5000; ++i) {
        const Time t = static_cast<Time>(rng() % 50);  // many ties
        q.push(t, 0, i, 0);
        expected.emplace_back(t, i);
    }
    std::stable_sort(expected.begin(), expected.end(),
                     [](const auto& x, const auto& y) { return x.first < y.first; });
    for (const auto& [t, i] : expected) {
        ASSERT_FALSE(q.empty());
        const Event e = q.pop();
        ASSERT_EQ(e.time, t);
        ASSERT_EQ(e.a, i);
    }
    EXPECT_TRUE(q.empty());
}

TEST(SimNetwork, HigherPriorityOvertakesAndFifoWithinPriority) {
    Network net(1, TopologyConfig::star(2, 10.0, 100, 0));
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    net.send(0, 1, 0, tagged(0, 1000));  // goes straight onto the wire
    for (uint32_t i = 0; i < 3; ++i) net.send(0, 1, 2, tagged(20 + i, 1000));
    for (uint32_t i = 0; i < 3; ++i) net.send(0, 1, 5, tagged(50 + i, 1000));
    for (uint32_t i = 0; i < 3; ++i) net.send(0, 1, 1, tagged(10 + i, 1000));
    net.runUntilIdle();
    const std::vector<uint32_t> want = {0, 50, 51, 52, 20, 21, 22, 10, 11, 12};
    EXPECT_EQ(tags(b), want);
    EXPECT_EQ(net.maxQueueBytes(net.topology().nicPort(0)), 9000u);
}

TEST(SimNetwork, FifoNicsSendInOrderButSwitchPortsStillUsePriorities) {
    TopologyConfig c = TopologyConfig::star(3, 10.0, 100, 0);
    c.fifoNics = true;
    Network net(1, c);
    RecordingHost a, b, d;
    net.attach(&a);
    net.attach(&b);
    net.attach(&d);
    net.send(0, 1, 0, tagged(0, 1000));
    for (uint32_t i = 0; i < 3; ++i) net.send(0, 1, 2, tagged(20 + i, 1000));
    for (uint32_t i = 0; i < 3; ++i) net.send(0, 1, 5, tagged(50 + i, 1000));
    net.runUntilIdle();
    EXPECT_EQ(tags(b), (std::vector<uint32_t>{0, 20, 21, 22, 50, 51, 52}));
    for (const auto& r : b.packets) {
        EXPECT_EQ(r.priority, r.bytes[0] >= 50 ? 5 : r.bytes[0] >= 20 ? 2 : 0);
    }
    // Two senders into one downlink: the switch port still serves priorities.
    b.packets.clear();
    net.send(0, 1, 0, tagged(1, 1000));
    for (uint32_t i = 0; i < 3; ++i) net.send(0, 1, 0, tagged(10 + i, 1000));
    net.runUntil(net.now() + 1500);  // the first low packets reach the switch
    net.send(2, 1, 6, tagged(60, 1000));
    net.runUntilIdle();
    const std::vector<uint32_t> got = tags(b);
    ASSERT_EQ(got.size(), 5u);
    EXPECT_EQ(got.back(), 12u);  // the high packet overtook at least the last low one
    EXPECT_NE(std::find(got.begin(), got.end(), 60u), got.end());
    EXPECT_LT(std::find(got.begin(), got.end(), 60u) - got.begin(), 4);
}

TEST(SimNetwork, HighPriorityOvertakesQueueAtCongestedSwitchPort) {
    Network net(1, TopologyConfig::star(4, 10.0, 500, 100));
    std::vector<RecordingHost> hosts(4);
    for (auto& h : hosts) net.attach(&h);
    // Two senders at line rate into one downlink: the switch queue grows.
    for (uint32_t i = 0; i < 10; ++i) {
        net.send(0, 3, 0, tagged(i, 1000));
        net.send(1, 3, 0, tagged(100 + i, 1000));
    }
    net.at(3000, [&] { net.send(2, 3, 7, tagged(999, 1000)); });
    net.runUntilIdle();
    const auto got = tags(hosts[3]);
    ASSERT_EQ(got.size(), 21u);
    // High arrives at the switch at 4400; the 4th low is on the wire until
    // 4600, so the high one is 5th and lands at 4600 + 800 + 500.
    EXPECT_EQ(got[4], 999u);
    EXPECT_EQ(hosts[3].packets[4].time, 5900);
    EXPECT_GT(net.maxQueueBytes(net.topology().downlinkPort(3)), 3000u);
    // Within one sender's lows order is preserved.
    std::vector<uint32_t> fromZero;
    for (uint32_t t : got) {
        if (t < 100) fromZero.push_back(t);
    }
    EXPECT_TRUE(std::is_sorted(fromZero.begin(), fromZero.end()));
}

TEST(SimNetwork, FifoWithinEachPriorityUnderRandomMix) {
    const uint64_t seed = testing::testSeed(11);
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    Network net(seed, TopologyConfig::star(3, 10.0, 100, 50));
    std::vector<RecordingHost> hosts(3);
    for (auto& h : hosts) net.attach(&h);
    for (uint32_t i = 0; i < 300; ++i) {
        const auto prio = static_cast<uint8_t>(rng() % 8);
        const HostId src = static_cast<HostId>(rng() % 2);
        net.send(src, 2, prio, tagged(i * 2 + src, 200 + rng() % 1000));
    }
    net.runUntilIdle();
    ASSERT_EQ(hosts[2].packets.size(), 300u);
    std::map<std::pair<HostId, uint8_t>, uint32_t> last;
    for (const auto& r : hosts[2].packets) {
        const auto key = std::make_pair(r.src, r.priority);
        const uint32_t t = tagOf(r.bytes);
        if (last.count(key)) {
            EXPECT_LT(last[key], t);
        }
        last[key] = t;
    }
}

TEST(SimNetwork, PacketFieldsAndUniqueSeq) {
    Network net(1, TopologyConfig::star(2));
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    const std::vector<uint8_t> hdr = {1, 2, 3};
    const std::vector<uint8_t> body = {4, 5};
    net.send(0, 1, 6, hdr, body);
    net.send(0, 1, 6, hdr);
    net.runUntilIdle();
    ASSERT_EQ(b.packets.size(), 2u);
    EXPECT_EQ(b.packets[0].bytes, (std::vector<uint8_t>{1, 2, 3, 4, 5}));
    EXPECT_EQ(b.packets[1].bytes, hdr);
    EXPECT_EQ(b.packets[0].src, 0u);
    EXPECT_EQ(b.packets[0].priority, 6);
    EXPECT_NE(b.packets[0].seq, b.packets[1].seq);
}

TEST(SimNetwork, SendFromInsideOnPacketPingPongs) {
    Network net(1, TopologyConfig::star(2, 10.0, 300, 50));
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    b.packetHook = [&](const Packet& p, Time) { net.send(1, 0, p.priority, p.bytes); };
    a.packetHook = [&](const Packet& p, Time) {
        const uint32_t n = tagOf(p.bytes);
        if (n < 9) net.send(0, 1, 0, tagged(n + 1, 500));
    };
    net.send(0, 1, 0, tagged(0, 500));
    ASSERT_TRUE(net.runUntilIdle());
    ASSERT_EQ(a.packets.size(), 10u);
    EXPECT_EQ(a.packets.back().time, 20 * net.minOneWay(0, 1, 500));
}

TEST(SimNetwork, PacketReferenceSurvivesPoolGrowthDuringCallback) {
    Network net(1, TopologyConfig::star(2));
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    std::vector<uint8_t> seenAfter;
    b.packetHook = [&](const Packet& p, Time) {
        if (tagOf(p.bytes) != 7) return;
        // Enough sends to allocate several new pool chunks.
        for (uint32_t i = 0; i < 5000; ++i) net.send(1, 0, 0, tagged(i, 64));
        seenAfter = p.bytes;
    };
    net.send(0, 1, 0, tagged(7, 100));
    net.runUntilIdle();
    EXPECT_EQ(seenAfter, tagged(7, 100));
    EXPECT_EQ(a.packets.size(), 5000u);
}

TEST(SimNetwork, WakeAtKeepsEarliestPendingRequest) {
    Network net(1, TopologyConfig::star(2));
    RecordingHost a;
    net.attach(&a);
    net.wakeAt(0, 5000);
    net.wakeAt(0, 3000);
    net.wakeAt(0, 8000);  // later than pending: ignored
    net.wakeAt(0, 3000);  // equal: ignored
    EXPECT_TRUE(net.runUntilIdle());
    EXPECT_EQ(a.wakeups, (std::vector<Time>{3000}));
    EXPECT_EQ(net.now(), 3000);
    // Once fired, a new request is accepted.
    net.wakeAt(0, 9000);
    EXPECT_TRUE(net.runUntilIdle());
    EXPECT_EQ(a.wakeups, (std::vector<Time>{3000, 9000}));
}

TEST(SimNetwork, WakeAtInPastRunsNowAfterCurrentEvent) {
    Network net(1, TopologyConfig::star(2));
    RecordingHost a;
    net.attach(&a);
    std::vector<std::string> log;
    a.wakeHook = [&](Time now) {
        log.push_back("wake@" + std::to_string(now));
        if (a.wakeups.size() < 3) net.wakeAt(0, now + 100);
    };
    net.at(1000, [&] {
        log.push_back("first");
        net.wakeAt(0, 10);
        log.push_back("first-done");
    });
    net.runUntilIdle();
    const std::vector<std::string> want = {"first", "first-done", "wake@1000", "wake@1100",
                                           "wake@1200"};
    EXPECT_EQ(log, want);
}

TEST(SimNetwork, AtRunsInTimeThenInsertionOrder) {
    Network net(1, TopologyConfig::star(1));
    std::vector<int> order;
    net.at(500, [&] { order.push_back(1); });
    net.at(500, [&] { order.push_back(2); });
    net.at(100, [&] {
        order.push_back(0);
        net.at(50, [&] { order.push_back(9); });  // past: runs at now
    });
    net.runUntilIdle();
    EXPECT_EQ(order, (std::vector<int>{0, 9, 1, 2}));
    EXPECT_EQ(net.now(), 500);
}

TEST(SimNetwork, RunUntilAdvancesClockAndRespectsLimits) {
    Network net(1, TopologyConfig::star(1));
    int fired = 0;
    net.at(1000, [&] { ++fired; });
    net.at(3000, [&] { ++fired; });
    net.runUntil(2000);
    EXPECT_EQ(fired, 1);
    EXPECT_EQ(net.now(), 2000);
    EXPECT_FALSE(net.runUntilIdle(2500));
    EXPECT_EQ(fired, 1);
    EXPECT_TRUE(net.step());
    EXPECT_EQ(fired, 2);
    EXPECT_EQ(net.now(), 3000);
    EXPECT_FALSE(net.step());
    EXPECT_TRUE(net.idle());
}

TEST(SimNetwork, NicQueueLimitDropsTail) {
    TopologyConfig cfg = TopologyConfig::star(2);
    cfg.hostQueueLimitBytes = 3000;
    Network net(1, cfg);
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    for (uint32_t i = 0; i < 10; ++i) net.send(0, 1, 0, tagged(i, 1000));
    net.runUntilIdle();
    // One on the wire, three fit in the queue, six are dropped.
    EXPECT_EQ(tags(b), (std::vector<uint32_t>{0, 1, 2, 3}));
    EXPECT_EQ(net.stats().queueDropped, 6u);
    const PortStats nic = net.portStats(net.topology().nicPort(0));
    EXPECT_EQ(nic.queueDropped, 6u);
    EXPECT_EQ(nic.maxQueueBytes, 3000u);
    EXPECT_EQ(nic.queuedBytes, 0u);
    EXPECT_TRUE(testing::conserved(net.stats()));
}

TEST(SimNetwork, SwitchQueueLimitDropsAtCongestedDownlink) {
    Network net(1, TopologyConfig::star(3, 10.0, 100, 0));
    std::vector<RecordingHost> hosts(3);
    for (auto& h : hosts) net.attach(&h);
    const PortId down = net.topology().downlinkPort(2);
    net.setQueueLimit(down, 2000);
    for (uint32_t i = 0; i < 20; ++i) {
        net.send(0, 2, 0, tagged(i, 1000));
        net.send(1, 2, 0, tagged(i, 1000));
    }
    net.runUntilIdle();
    const PortStats ps = net.portStats(down);
    EXPECT_GT(ps.queueDropped, 0u);
    EXPECT_LE(ps.maxQueueBytes, 2000u);
    EXPECT_EQ(net.stats().queueDropped, ps.queueDropped);
    EXPECT_EQ(hosts[2].packets.size() + ps.queueDropped, 40u);
}

TEST(SimNetwork, CrashStopsDeliveriesAndWakeupsRestartResumes) {
    Network net(1, TopologyConfig::star(2, 10.0, 100, 0));
    RecordingHost a, b, b2;
    net.attach(&a);
    net.attach(&b);
    net.send(0, 1, 0, tagged(1, 100));
    net.wakeAt(1, 30000);
    net.at(10000, [&] { net.crash(1); });
    net.at(20000, [&] { net.send(0, 1, 0, tagged(2, 100)); });
    net.at(20000, [&] { net.wakeAt(1, 25000); });  // ignored while crashed
    net.at(40000, [&] { net.restart(1, &b2); });
    net.at(50000, [&] {
        net.send(0, 1, 0, tagged(3, 100));
        net.wakeAt(1, 60000);
    });
    EXPECT_TRUE(net.runUntilIdle());
    EXPECT_EQ(tags(b), (std::vector<uint32_t>{1}));
    EXPECT_TRUE(b.wakeups.empty());
    EXPECT_EQ(tags(b2), (std::vector<uint32_t>{3}));
    EXPECT_EQ(b2.wakeups, (std::vector<Time>{60000}));
    EXPECT_EQ(net.stats().crashDropped, 1u);
    EXPECT_FALSE(net.crashed(1));
}

TEST(SimNetwork, CrashFlushesNicQueueAndDropsLaterSends) {
    Network net(1, TopologyConfig::star(2, 10.0, 100, 0));
    RecordingHost a, b;
    net.attach(&a);
    net.attach(&b);
    for (uint32_t i = 0; i < 10; ++i) net.send(0, 1, 0, tagged(i, 1000));
    net.at(100, [&] {
        net.crash(0);
        net.send(0, 1, 0, tagged(99, 1000));
    });
    net.runUntilIdle();
    // The packet already being serialised still goes out.
    EXPECT_EQ(tags(b), (std::vector<uint32_t>{0}));
    EXPECT_EQ(net.stats().crashDropped, 10u);
    EXPECT_EQ(net.portStats(net.topology().nicPort(0)).queuedBytes, 0u);
    EXPECT_TRUE(testing::conserved(net.stats()));
}

TEST(SimNetwork, RestartedHostSendsAtLineRateAfterFlush) {
    Network net(1, TopologyConfig::star(2, 10.0, 100, 0));
    RecordingHost a, b, a2;
    net.attach(&a);
    net.attach(&b);
    // Registered first so it runs before the NIC's completion event at 800,
    // exactly when the flushed port becomes free.
    net.at(800, [&] {
        net.restart(0, &a2);
        for (uint32_t i = 1; i <= 3; ++i) net.send(0, 1, 0, tagged(i, 1000));
    });
    for (uint32_t i = 0; i < 5; ++i) net.send(0, 1, 0, tagged(100 + i, 1000));
    net.at(100, [&] { net.crash(0); });
    // The switch would re-pace a NIC that started two packets at once, so
    // check the NIC itself: only 100 and 1 may have started by 1000.
    net.runUntil(1000);
    EXPECT_EQ(net.portStats(net.topology().nicPort(0)).txPackets, 2u);
    net.runUntilIdle();
    ASSERT_EQ(tags(b), (std::vector<uint32_t>{100, 1, 2, 3}));
    const std::vector<Time> want = {1800, 2600, 3400, 4200};
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(b.packets[i].time, want[i]) << i;
}

TEST(SimNetwork, UnattachedDestinationIsCounted) {
    Network net(1, TopologyConfig::star(3));
    RecordingHost a;
    net.attach(&a);
    net.send(0, 2, 0, tagged(1, 10));
    net.runUntilIdle();
    EXPECT_EQ(net.stats().noHostDropped, 1u);
    EXPECT_EQ(net.stats().delivered, 0u);
}

TEST(SimNetwork, RejectsInvalidArguments) {
    Network net(1, TopologyConfig::star(2));
    RecordingHost a, b;
    EXPECT_EQ(net.attach(&a), 0u);
    net.attach(1, &b);
    EXPECT_THROW(net.attach(1, &a), std::logic_error);
    EXPECT_THROW(net.attach(&a), std::length_error);
    const std::vector<uint8_t> x = {1};
    EXPECT_THROW(net.send(0, 1, 8, x), std::invalid_argument);
    EXPECT_THROW(net.send(0, 2, 0, x), std::out_of_range);
    EXPECT_THROW(net.wakeAt(5, 0), std::out_of_range);
    Faults bad;
    bad.loss = 1.5;
    EXPECT_THROW(net.setFaults(bad), std::invalid_argument);
    EXPECT_EQ(net.stats().sent, 0u);
}

}  // namespace
}  // namespace homa::sim
