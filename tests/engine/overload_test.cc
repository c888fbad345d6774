// Receive livelock (seed 003), deterministic: on the simulated network in virtual time,
// clients offer up to 3x the requests a server's processing budget can serve. Goodput
// must stay at least 80% of its peak, admitted work must finish, and the overload
// counter must show where new requests were refused.
#include <gtest/gtest.h>

#include <deque>
#include <random>

#include "cluster.h"

namespace homa::test {
namespace {

struct OverloadResult {
    double goodput = 0;  // responses per second inside the measurement window
    uint64_t refused = 0;
    int admittedUnanswered = 0;
};

OverloadResult runOverload(double offeredFactor, uint32_t maxPending, uint64_t seed) {
    const sim::Time service = 20'000;  // 20 us per request: capacity 50,000 requests/s
    const double capacity = 1e9 / static_cast<double>(service);
    const sim::Time start = 5'000'000, end = 45'000'000;
    engine::Config cfg = testConfig();
    cfg.maxPendingRequests = maxPending;
    Cluster c(5, cfg, seed);
    const uint32_t serverHost = 4;

    // The server application: one request at a time, `service` each.
    std::deque<engine::ServerRpcId> queue;
    bool busy = false;
    int admitted = 0, answered = 0;
    std::function<void()> next = [&] {
        if (queue.empty()) {
            busy = false;
            return;
        }
        busy = true;
        engine::ServerRpcId id = queue.front();
        queue.pop_front();
        c.net.at(c.net.now() + service, [&, id] {
            c.host(serverHost).respond(id, std::vector<uint8_t>(100, 1));
            ++answered;
            next();
        });
    };
    c.host(serverHost).setDeliveryHandler([&](sim::EngineHost& h, engine::Delivery& d) {
        h.release(d.message);
        ++admitted;
        queue.push_back(d.server);
        if (!busy) next();
    });

    int completedInWindow = 0;
    for (uint32_t h = 0; h < 4; ++h)
        c.host(h).setDeliveryHandler([&](sim::EngineHost& host, engine::Delivery& d) {
            if (d.kind == engine::Delivery::Kind::Response) {
                sim::Time t = host.network().now();
                if (t >= start && t < end) ++completedInWindow;
                host.release(d.message);
            }
        });

    // Poisson arrivals over all clients at offeredFactor x capacity.
    std::mt19937_64 rng(seed);
    std::exponential_distribution<double> gap(offeredFactor * capacity / 1e9);
    for (sim::Time t = 0; t < end;) {
        t += static_cast<sim::Time>(gap(rng)) + 1;
        uint32_t client = static_cast<uint32_t>(rng() % 4);
        c.net.at(t, [&c, client, to = serverHost] { c.host(client).call(to, std::vector<uint8_t>(100, 2), 0); });
    }
    c.net.runUntil(end + 300'000'000);  // then let admitted work drain

    OverloadResult r;
    r.goodput = completedInWindow / (static_cast<double>(end - start) / 1e9);
    r.refused = c.engine(serverHost).metrics().dropped[static_cast<size_t>(engine::DropReason::Overload)];
    r.admittedUnanswered = admitted - answered;
    return r;
}

TEST(Overload, GoodputHoldsPastSaturationAndNewWorkIsRefusedEarly) {
    const uint64_t seed = 11;
    std::cout << "seed " << seed << "\n";
    double peak = 0;
    std::vector<std::pair<double, OverloadResult>> curve;
    for (double f : {0.5, 0.9, 1.0, 1.5, 2.0, 3.0}) {
        OverloadResult r = runOverload(f, 16, seed);
        curve.push_back({f, r});
        peak = std::max(peak, r.goodput);
        std::cout << "offered " << f << "x: goodput " << r.goodput << "/s, refused " << r.refused << "\n";
    }
    const OverloadResult& at3 = curve.back().second;
    EXPECT_GE(at3.goodput, 0.8 * peak);
    EXPECT_GT(at3.refused, 0u) << "overload must be refused at the door";
    EXPECT_EQ(curve.front().second.refused, 0u) << "no refusals below saturation";
    for (auto& [f, r] : curve) EXPECT_EQ(r.admittedUnanswered, 0) << "admitted work left unfinished at " << f << "x";
}

}  // namespace
}  // namespace homa::test
