// Whole client/server exchanges between engines over the simulated network.
#include <gtest/gtest.h>

#include "cluster.h"

namespace homa::test {
namespace {

void expectClean(Cluster& c) {
    EXPECT_EQ(c.totalRpcs(), 0u) << "engines still hold RPC state";
    EXPECT_EQ(c.totalBuffersInUse(), 0u) << "buffers not returned";
}

struct RpcSizes {
    uint32_t request, response;
};

class SizesTest : public ::testing::TestWithParam<RpcSizes> {};

TEST_P(SizesTest, CompletesWithRightBytes) {
    Cluster c(2, testConfig());
    EchoServer server;
    server.install(c.host(1));
    Client client;
    client.install(c.host(0));
    ASSERT_TRUE(client.call(c.host(0), 1, 7, GetParam().request, GetParam().response).isOk());
    c.runToIdle();
    auto& o = client.rpcs[7];
    EXPECT_EQ(o.responses, 1);
    EXPECT_TRUE(o.correct);
    EXPECT_EQ(server.seen.size(), 1u);
    expectClean(c);
}

INSTANTIATE_TEST_SUITE_P(Engine, SizesTest,
                         ::testing::Values(RpcSizes{1, 1}, RpcSizes{64, 64}, RpcSizes{1416, 1417},
                                           RpcSizes{10'000, 30'000}, RpcSizes{100'000, 100},
                                           RpcSizes{1'000'000, 1'000'000}));

TEST(Scenario, SingleSmallRpcTakesOnePacketEachWay) {
    Cluster c(2, testConfig());
    EchoServer server;
    server.install(c.host(1));
    Client client;
    client.install(c.host(0));
    ASSERT_TRUE(client.call(c.host(0), 1, 1, 64, 64).isOk());
    c.runToIdle();
    auto data = engine::EngineMetrics::typeIndex(wire::PacketType::Data);
    EXPECT_EQ(c.engine(0).metrics().packetsSent[data], 1u);
    EXPECT_EQ(c.engine(1).metrics().packetsSent[data], 1u);
    EXPECT_EQ(c.engine(0).metrics().resendsSent + c.engine(1).metrics().resendsSent, 0u);
    EXPECT_EQ(client.rpcs[1].responses, 1);
    expectClean(c);
}

TEST(Scenario, SixteenMegabyteMessages) {
    engine::Config cfg = testConfig();
    cfg.maxMessageLength = 16'000'000;
    cfg.maxBufferBytes = 64ull << 20;
    cfg.maxOutgoingBytes = 64ull << 20;
    Cluster c(2, cfg);
    EchoServer server;
    server.install(c.host(1));
    Client client;
    client.install(c.host(0));
    ASSERT_TRUE(client.call(c.host(0), 1, 1, 16'000'000, 16'000'000).isOk());
    c.runToIdle();
    EXPECT_EQ(client.rpcs[1].responses, 1);
    EXPECT_TRUE(client.rpcs[1].correct);
    expectClean(c);
}

TEST(Scenario, TooLargeMessageIsRefused) {
    Cluster c(2, testConfig());
    std::vector<uint8_t> big(1'000'001);
    Status s = c.host(0).call(1, big, 1);
    EXPECT_EQ(s.code(), StatusCode::MessageTooLarge);
    EXPECT_NE(s.message().find("1000001"), std::string::npos);
    std::vector<uint8_t> empty;
    EXPECT_EQ(c.host(0).call(1, empty, 1).code(), StatusCode::InvalidArgument);
    EXPECT_EQ(c.totalRpcs(), 0u);
}

TEST(Scenario, ManyConcurrentRpcsBetweenOnePair) {
    Cluster c(2, testConfig());
    EchoServer server;
    server.install(c.host(1));
    Client client;
    client.install(c.host(0));
    const uint32_t sizes[] = {1, 100, 1500, 5000, 40'000, 120'000, 300'000};
    for (uint64_t i = 0; i < 300; ++i)
        ASSERT_TRUE(client.call(c.host(0), 1, i, sizes[i % 7], sizes[(i * 3) % 7]).isOk());
    c.runToIdle();
    for (auto& [k, o] : client.rpcs) {
        EXPECT_EQ(o.responses, 1) << "rpc " << k;
        EXPECT_TRUE(o.correct) << "rpc " << k;
    }
    EXPECT_EQ(server.duplicates, 0);
    expectClean(c);
}

// Three senders to one receiver: the shortest message finishes first, at most
// maxOvercommit messages hold grants at once, and granted-but-unreceived bytes stay
// within maxIncoming.
TEST(Scenario, SrptOrderOvercommitAndIncomingCap) {
    engine::Config cfg = testConfig();
    cfg.maxOvercommit = 2;
    cfg.maxIncoming = 60'000;
    cfg.unschedBytes = 10'000;
    cfg.grantFifoFraction = 0;
    Cluster c(4, cfg);
    // Host 3 is the receiver: it is the server of three requests of different sizes.
    std::vector<std::pair<uint32_t, sim::Time>> done;
    c.host(3).setDeliveryHandler([&](sim::EngineHost& h, engine::Delivery& d) {
        done.push_back({d.message.length, h.network().now()});
        h.release(d.message);
        h.respond(d.server, std::vector<uint8_t>(1, 0));
    });
    const uint32_t sizes[] = {600'000, 200'000, 400'000};
    for (uint32_t i = 0; i < 3; ++i)
        ASSERT_TRUE(c.host(i).call(3, pattern(i, sizes[i]), i).isOk());
    int maxActive = 0;
    uint64_t maxOutstanding = 0;
    while (c.net.step()) {
        maxActive = std::max(maxActive, c.engine(3).activeGrants());
        maxOutstanding = std::max(maxOutstanding, c.engine(3).incomingOutstanding());
    }
    ASSERT_EQ(done.size(), 3u);
    EXPECT_EQ(done[0].first, 200'000u);
    EXPECT_EQ(done[1].first, 400'000u);
    EXPECT_EQ(done[2].first, 600'000u);
    EXPECT_LE(maxActive, 2);
    EXPECT_EQ(maxActive, 2);
    EXPECT_LE(maxOutstanding, cfg.maxIncoming);
    expectClean(c);
}

// PVFS2: two large messages from one client to one server that can hold only one at a
// time and takes the second only after it has finished with the first. Both complete.
TEST(Scenario, Pvfs2SecondMessageWaitsForTheFirst) {
    engine::Config cfg = testConfig();
    cfg.maxBufferBytes = engine::BufferPool::classSize(1'000'000) + 200'000;
    Cluster c(2, cfg);
    std::vector<engine::Delivery> held;
    int served = 0;
    c.host(1).setDeliveryHandler([&](sim::EngineHost& h, engine::Delivery& d) {
        ++served;
        // Work on the request for 2 ms, then answer and give its buffer back.
        engine::Delivery copy = d;
        h.network().at(h.network().now() + 2'000'000, [&h, copy] {
            h.respond(copy.server, std::vector<uint8_t>(100, 1));
            h.release(copy.message);
        });
    });
    Client client;
    client.install(c.host(0));
    ASSERT_TRUE(client.call(c.host(0), 1, 1, 1'000'000, 10).isOk());
    ASSERT_TRUE(client.call(c.host(0), 1, 2, 900'000, 10).isOk());
    c.runToIdle();
    EXPECT_EQ(served, 2);
    EXPECT_EQ(client.rpcs[1].responses, 1);
    EXPECT_EQ(client.rpcs[2].responses, 1);
    EXPECT_GT(c.engine(1).metrics().bufferWaits, 0u) << "the scenario did not exercise buffer exhaustion";
    expectClean(c);
}

TEST(Scenario, ServerCrashGivesClientATimeout) {
    Cluster c(2, testConfig());
    EchoServer server;
    server.install(c.host(1));
    server.serviceTime = 50'000'000;  // never reached: the server crashes first
    Client client;
    client.install(c.host(0));
    ASSERT_TRUE(client.call(c.host(0), 1, 1, 500'000, 100).isOk());
    c.net.at(3'000'000, [&] { c.net.crash(1); });
    c.runToIdle();
    auto& o = client.rpcs[1];
    EXPECT_EQ(o.responses, 0);
    ASSERT_EQ(o.failures, 1);
    EXPECT_EQ(o.status.code(), StatusCode::Timeout);
    EXPECT_NE(o.status.message().find("10.0.0.2:4000"), std::string::npos) << o.status.toString();
    // About timeoutTicks after the last packet from the server, not a hang.
    EXPECT_LT(o.completedAt, 3'000'000 + 110 * c.config.tickNs);
    EXPECT_EQ(c.engine(0).rpcCount(), 0u);
}

TEST(Scenario, RestartedServerServesTheRetriedRequest) {
    Cluster c(2, testConfig());
    EchoServer server;
    server.install(c.host(1));
    Client client;
    client.install(c.host(0));
    server.serviceTime = 5'000'000;
    ASSERT_TRUE(client.call(c.host(0), 1, 1, 500'000, 100).isOk());
    // The server process dies while executing the request and a new one comes up on the
    // same address: it answers the client's RESEND with RPC_UNKNOWN, the client sends
    // the request again.
    c.net.at(1'000'000, [&] {
        c.net.crash(1);
        c.restart(1);
        server.install(c.host(1));
    });
    c.runToIdle();
    EXPECT_EQ(client.rpcs[1].responses, 1);
    EXPECT_TRUE(client.rpcs[1].correct);
    EXPECT_GT(c.engine(0).metrics().clientRestarts, 0u);
    EXPECT_GT(c.engine(1).metrics().rpcUnknownSent, 0u);
}

// A server restarted in the middle of receiving a request rebuilds it from the rest of
// the packets and RESENDs for the part it missed.
TEST(Scenario, ServerRestartedMidRequestRecoversTheMissingBytes) {
    Cluster c(2, testConfig());
    EchoServer server;
    server.install(c.host(1));
    Client client;
    client.install(c.host(0));
    ASSERT_TRUE(client.call(c.host(0), 1, 1, 500'000, 100).isOk());
    c.net.at(100'000, [&] {
        c.net.crash(1);
        c.restart(1);
        server.install(c.host(1));
    });
    c.runToIdle();
    EXPECT_EQ(client.rpcs[1].responses, 1);
    EXPECT_TRUE(client.rpcs[1].correct);
    EXPECT_GT(c.engine(1).metrics().resendsSent, 0u);
}

// The server gives up on a request that stopped arriving (its packets were lost for
// longer than the timeout, while the server's RESENDs kept the client waiting). The
// request was never executed, so when the client, told RPC_UNKNOWN, sends it again the
// server must take it as new: it once counted the id as served and dropped every packet
// of the retry as stale, and the client timed out.
TEST(Scenario, RequestAbandonedMidwayIsServedWhenTheClientRetries) {
    Cluster c(2, testConfig());
    EchoServer server;
    server.install(c.host(1));
    Client client;
    client.install(c.host(0));
    ASSERT_TRUE(client.call(c.host(0), 1, 1, 500'000, 100).isOk());
    const sim::Time start = 100'000;
    const sim::Time heal = start + static_cast<sim::Time>(c.config.timeoutTicks + 20) * c.config.tickNs;
    c.net.at(start, [&] { c.net.setFaults(1, sim::Faults{.loss = 1.0}); });  // nothing reaches the server
    c.net.at(heal, [&] { c.net.clearFaults(1); });
    c.runToIdle();
    EXPECT_GT(c.engine(1).metrics().serverRpcsTimedOut, 0u) << "the server never gave up on the request";
    EXPECT_EQ(client.rpcs[1].failures, 0) << client.rpcs[1].status.toString();
    EXPECT_EQ(client.rpcs[1].responses, 1);
    EXPECT_TRUE(client.rpcs[1].correct);
    EXPECT_GT(c.engine(0).metrics().clientRestarts, 0u);
    EXPECT_EQ(server.seen.size(), 1u);
    EXPECT_EQ(server.duplicates, 0);
    expectClean(c);
}

TEST(Scenario, SameSeedSameTrace) {
    auto run = [](uint64_t seed) {
        Cluster c(3, testConfig(), seed);
        c.net.setFaults({.loss = 0.05, .duplicate = 0.02, .reorder = 0.05, .reorderDelay = 20'000, .jitter = 500});
        EchoServer server;
        server.install(c.host(2));
        Client client;
        client.install(c.host(0));
        Client client2;
        client2.install(c.host(1));
        for (uint64_t i = 0; i < 50; ++i) {
            client.call(c.host(0), 2, i, static_cast<uint32_t>(1 + i * 997 % 200'000), 1000);
            client2.call(c.host(1), 2, i, static_cast<uint32_t>(1 + i * 331 % 100'000), 50'000);
        }
        c.runToIdle();
        return std::make_pair(c.net.traceHash(), c.net.now());
    };
    EXPECT_EQ(run(42), run(42));
    EXPECT_NE(run(42).first, run(43).first);
}

}  // namespace
}  // namespace homa::test

namespace homa::test {
namespace {

// Many large requests from one client to one server at once: with one granted message
// per peer, most requests and responses wait for grants for a long time; none may be
// given up while both ends are alive.
class ManyLarge : public ::testing::TestWithParam<double> {};

TEST_P(ManyLarge, ConcurrentRpcsFromOnePeerAllComplete) {
    Cluster c(2, testConfig(), 5, sim::TopologyConfig::star(0, 10.0, 200, 100));
    c.net.setFaults({.loss = GetParam()});
    EchoServer server;
    server.install(c.host(1));
    server.serviceTime = 50'000;
    Client client;
    client.install(c.host(0));
    for (uint64_t i = 0; i < 48; ++i)
        ASSERT_TRUE(client.call(c.host(0), 1, i, 1'000'000 - static_cast<uint32_t>(i) * 1000, 1'000'000).isOk());
    c.runToIdle();
    for (auto& [k, o] : client.rpcs) {
        EXPECT_EQ(o.responses, 1) << "rpc " << k << ": " << o.status.toString();
        EXPECT_TRUE(o.correct) << "rpc " << k;
    }
    EXPECT_EQ(c.engine(1).metrics().serverRpcsTimedOut, 0u);
    EXPECT_EQ(c.engine(1).metrics().serverRpcsAbandoned, 0u);
    EXPECT_EQ(server.duplicates, 0);
}

INSTANTIATE_TEST_SUITE_P(Scenario, ManyLarge, ::testing::Values(0.0, 0.01, 0.05));

}  // namespace
}  // namespace homa::test
