// Test support: several engines on the simulated network, with an echo-like server
// application and bookkeeping of what every RPC received.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "sim/engine_host.h"

namespace homa::test {

inline constexpr uint16_t kPort = 4000;

inline engine::Config testConfig() {
    engine::Config c;
    c.port = kPort;
    return c;
}

/// Deterministic message contents: byte i of message `key` (so corruption is caught).
inline std::vector<uint8_t> pattern(uint64_t key, uint32_t length) {
    std::vector<uint8_t> v(length);
    uint64_t x = key * 0x9E3779B97F4A7C15ull + 1;
    for (uint32_t i = 0; i < length; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v[i] = static_cast<uint8_t>(x);
    }
    return v;
}

struct Cluster {
    sim::Network net;
    std::vector<std::unique_ptr<sim::EngineHost>> hosts;
    engine::Config config;

    Cluster(uint32_t n, const engine::Config& cfg, uint64_t seed = 1,
            sim::TopologyConfig topo = sim::TopologyConfig::star(0, 25.0, 200, 100))
        : net(seed, withHosts(topo, n)), config(cfg) {
        for (uint32_t i = 0; i < n; ++i) {
            hosts.push_back(std::make_unique<sim::EngineHost>(net, i, cfg));
            net.attach(i, hosts.back().get());
        }
    }
    static sim::TopologyConfig withHosts(sim::TopologyConfig t, uint32_t n) {
        if (t.kind == sim::TopologyKind::Star) t.hosts = n;
        return t;
    }
    sim::EngineHost& host(uint32_t i) { return *hosts.at(i); }
    engine::Engine& engine(uint32_t i) { return hosts.at(i)->engine(); }

    /// Replaces host i by a fresh engine (a restarted process). The old one is kept (its
    /// application may still have timers pending), but the network no longer reaches it.
    void restart(uint32_t i) {
        auto fresh = std::make_unique<sim::EngineHost>(net, i, config);
        net.restart(i, fresh.get());
        crashed.push_back(std::move(hosts[i]));
        hosts[i] = std::move(fresh);
    }
    std::vector<std::unique_ptr<sim::EngineHost>> crashed;

    /// Runs until no event is left; fails the test if that takes past `limit`.
    void runToIdle(sim::Time limit = 10'000'000'000) {
        bool idle = net.runUntilIdle(limit);
        EXPECT_TRUE(idle) << "simulation still busy at " << net.now() << " ns";
    }
    size_t totalRpcs() {
        size_t n = 0;
        for (auto& h : hosts) n += h->engine().rpcCount();
        return n;
    }
    uint64_t totalBuffersInUse() {
        uint64_t n = 0;
        for (auto& h : hosts) n += h->engine().bufferPool().bytesInUse();
        return n;
    }
};

/// A server application: answers each request with pattern(responseKey(request), length)
/// where the length is in the request's first four bytes (or echoes short requests).
inline uint32_t responseLengthOf(const engine::ReceivedMessage& m) {
    if (m.length < 4) return m.length;
    uint32_t len = (uint32_t{m.data[0]} << 24) | (uint32_t{m.data[1]} << 16) | (uint32_t{m.data[2]} << 8) | m.data[3];
    return len == 0 ? 1 : len;
}
inline std::vector<uint8_t> makeRequest(uint64_t key, uint32_t length, uint32_t responseLength) {
    std::vector<uint8_t> v = pattern(key, length);
    if (length >= 4) {
        v[0] = static_cast<uint8_t>(responseLength >> 24);
        v[1] = static_cast<uint8_t>(responseLength >> 16);
        v[2] = static_cast<uint8_t>(responseLength >> 8);
        v[3] = static_cast<uint8_t>(responseLength);
    }
    return v;
}
/// The response for a request: keyed by the request's bytes so the client can check it.
inline std::vector<uint8_t> makeResponse(const engine::ReceivedMessage& request) {
    uint64_t key = request.length;
    for (uint32_t i = 0; i < std::min<uint32_t>(request.length, 16); ++i) key = key * 131 + request.data[i];
    return pattern(key, responseLengthOf(request));
}
inline std::vector<uint8_t> expectedResponse(const std::vector<uint8_t>& request) {
    engine::ReceivedMessage m{const_cast<uint8_t*>(request.data()), static_cast<uint32_t>(request.size()), 0};
    return makeResponse(m);
}

/// Installs the answering server application on a host; counts requests per (client, id).
struct EchoServer {
    std::map<std::pair<uint32_t, uint64_t>, int> seen;  // (client host, client id) -> deliveries
    int duplicates = 0;
    sim::Time serviceTime = 0;

    void install(sim::EngineHost& h) {
        h.setDeliveryHandler([this](sim::EngineHost& host, engine::Delivery& d) {
            ASSERT_EQ(d.kind, engine::Delivery::Kind::Request);
            auto key = std::make_pair(sim::hostOf(d.server.client), d.server.id);
            if (++seen[key] > 1) ++duplicates;
            std::vector<uint8_t> response = makeResponse(d.message);
            host.release(d.message);
            engine::ServerRpcId rpc = d.server;
            if (serviceTime == 0) {
                EXPECT_TRUE(host.respond(rpc, response).isOk());
            } else {
                host.network().at(host.network().now() + serviceTime, [&host, rpc, response] {
                    host.respond(rpc, response);
                });
            }
        });
    }
};

/// A client application recording each RPC's outcome.
struct Client {
    struct Outcome {
        std::vector<uint8_t> expected;
        int responses = 0;
        int failures = 0;
        bool correct = false;
        Status status;
        sim::Time completedAt = 0;
    };
    std::map<uint64_t, Outcome> rpcs;  // by cookie
    std::vector<uint64_t> completionOrder;

    void install(sim::EngineHost& h) {
        h.setDeliveryHandler([this](sim::EngineHost& host, engine::Delivery& d) {
            auto it = rpcs.find(d.cookie);
            ASSERT_NE(it, rpcs.end());
            Outcome& o = it->second;
            o.completedAt = host.network().now();
            completionOrder.push_back(d.cookie);
            if (d.kind == engine::Delivery::Kind::Response) {
                ++o.responses;
                o.correct = d.message.length == o.expected.size() &&
                            std::equal(o.expected.begin(), o.expected.end(), d.message.data);
                host.release(d.message);
            } else {
                ASSERT_EQ(d.kind, engine::Delivery::Kind::Failure);
                ++o.failures;
                o.status = d.status;
            }
            if (afterEach) afterEach();
        });
    }
    /// Runs after each call's outcome is recorded (a closed loop starts the next call).
    std::function<void()> afterEach;
    Status call(sim::EngineHost& h, uint32_t server, uint64_t cookie, uint32_t reqLen, uint32_t respLen) {
        std::vector<uint8_t> req = makeRequest(cookie, reqLen, respLen);
        rpcs[cookie].expected = expectedResponse(req);
        return h.call(server, req, cookie);
    }
    int completed() const {
        int n = 0;
        for (auto& [k, o] : rpcs) n += o.responses;
        return n;
    }
};

}  // namespace homa::test
