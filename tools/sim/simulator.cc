#include "simulator.h"

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <unistd.h>

#include "common/slowdown_plot.h"
#include "engine/metrics.h"
#include "sim/engine_host.h"
#include "sim/network.h"
#include "wire/wire.h"

namespace homa::simtool {

using sim::Time;
using json = nlohmann::ordered_json;

namespace {

constexpr uint16_t kPort = 4000;

uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

uint64_t bounded(std::mt19937_64& rng, uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(rng()) * n) >> 64);
}

uint32_t packetsOf(uint32_t bytes, uint32_t payload) {
    return static_cast<uint32_t>(std::max<uint64_t>(1, (uint64_t{bytes} + payload - 1) / payload));
}

Time msToNs(double ms) { return static_cast<Time>(std::llround(ms * 1e6)); }

/// Whether `gbps` is a whole number of Mbit/s, at least one (within what doubles keep
/// of decimal fractions: 0.93 x 10,000 is 9,300.000000000002).
bool isWholeMbps(double gbps) {
    const double mbps = gbps * 1000;
    return std::isfinite(mbps) && mbps >= 1 - 1e-9 && std::abs(mbps - std::round(mbps)) <= 1e-6;
}

BucketStats summarize(uint32_t maxSize, std::vector<double>& v) {
    BucketStats b;
    b.maxSize = maxSize;
    b.count = v.size();
    if (v.empty()) return b;
    std::sort(v.begin(), v.end());
    double sum = 0;
    for (double x : v) sum += x;
    b.mean = sum / static_cast<double>(v.size());
    b.p50 = nearestRank(v, 50);
    b.p99 = nearestRank(v, 99);
    b.p999 = nearestRank(v, 99.9);
    b.min = v.front();
    b.max = v.back();
    return b;
}

}  // namespace

// ---------------------------------------------------------------- derived parameters

std::array<uint32_t, 8> deriveCutoffs(const workload::Distribution& d, uint32_t unschedBytes, int levels) {
    std::array<uint32_t, 8> c{};
    levels = std::clamp(levels, 1, 7);
    const auto& sizes = d.sizes();
    const auto& cum = d.cumulative();
    double total = 0, prev = 0;
    std::vector<double> acc(sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
        total += std::min(sizes[i], unschedBytes) * (cum[i] - prev);
        prev = cum[i];
        acc[i] = total;
    }
    // Level k (0 = highest priority) takes the sizes whose cumulative unscheduled bytes
    // fall in (k/levels, (k+1)/levels] of the total.
    size_t i = 0;
    uint32_t last = 0;
    for (int k = 0; k < levels - 1; ++k) {
        double target = total * (k + 1) / levels;
        while (i + 1 < sizes.size() && acc[i] < target * (1 - 1e-12)) ++i;
        uint32_t cut = std::max(sizes[i], last);
        c[static_cast<size_t>(7 - k)] = cut;
        last = cut;
    }
    c[static_cast<size_t>(8 - levels)] = std::numeric_limits<uint32_t>::max();
    return c;
}

int64_t idealOneWay(const sim::Topology& t, const engine::Config& c, uint32_t src, uint32_t dst, uint32_t bytes) {
    const sim::PortId nic = t.nicPort(src), down = t.downlinkPort(dst);
    auto hopAfter = [&](sim::PortId p) {
        const sim::PortSpec& ps = t.port(p);
        const sim::NodeSpec& next = t.node(ps.to);
        return ps.latency + (next.kind == sim::NodeKind::Host ? 0 : next.switchDelay);
    };
    auto mbps = [&](sim::PortId p) { return sim::linkMbps(t.port(p).gbps); };
    const uint64_t overhead = t.wireOverheadBytes();
    // The sender's NIC sends the packets back to back. Between the first switch and the
    // last one (the one feeding dst) there are several ways across racks, one per
    // aggregation switch, and none on a star or within a rack. Packets take the ways in
    // turn: the switches spray them, and as the ways are alike, taking them in turn is the
    // best spraying can do. A packet waits there only when every way is busy, so the
    // message moves at the rate of the slowest link on its path (or of all the ways
    // together). More ways than are ever busy at once change nothing: only that many
    // (enough for a full packet to clear the slowest link of a way before its turn comes
    // again) are used, which also bounds the work per packet.
    const uint64_t fullPacket = wire::kDataHeaderSize + c.maxPayload;
    const Time nicFull = std::max<Time>(1, t.serializationTime(nic, fullPacket));
    size_t maxWays = std::numeric_limits<size_t>::max();
    std::vector<std::vector<sim::PortId>> ways;
    {
        std::vector<sim::PortId> way;
        std::function<void(sim::NodeId)> walk = [&](sim::NodeId n) {
            if (n == t.port(down).from) {
                ways.push_back(way);
                Time slowest = 0;
                for (sim::PortId p : way) slowest = std::max(slowest, t.serializationTime(p, fullPacket));
                maxWays = std::min(maxWays, static_cast<size_t>(slowest / nicFull + 2));
                return;
            }
            for (sim::PortId p : t.routes(n, dst)) {
                if (ways.size() >= maxWays) return;
                if (t.node(t.port(p).to).kind == sim::NodeKind::Host) continue;
                way.push_back(p);
                walk(t.port(p).to);
                way.pop_back();
            }
        };
        walk(t.port(nic).to);
    }
    if (ways.empty()) return std::numeric_limits<int64_t>::max();  // unreachable: never with star or twoTier
    absl::flat_hash_map<sim::PortId, sim::LinkClock> clocks;
    sim::LinkClock nicClock;
    // The last link serves packets in the order they reach it.
    const uint32_t npk = packetsOf(bytes, c.maxPayload);
    std::vector<std::pair<Time, uint64_t>> atLast;  // (time at the last switch, packet wire bytes)
    atLast.reserve(npk);
    for (uint32_t k = 0; k < npk; ++k) {
        const uint32_t len = std::min(c.maxPayload, bytes - k * c.maxPayload);
        const uint64_t wireBytes = wire::kDataHeaderSize + len + overhead;
        Time ready = nicClock.send(0, wireBytes, mbps(nic)) + hopAfter(nic);
        for (sim::PortId p : ways[k % ways.size()]) ready = clocks[p].send(ready, wireBytes, mbps(p)) + hopAfter(p);
        atLast.emplace_back(ready, wireBytes);
    }
    std::stable_sort(atLast.begin(), atLast.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    sim::LinkClock last;
    Time done = 0;
    for (const auto& [ready, wireBytes] : atLast) done = std::max(done, last.send(ready, wireBytes, mbps(down)) + hopAfter(down));
    return done;
}

double nearestRank(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0;
    // p x n first, then / 100: 99.9 / 100 x 1,000 came to 999.0000000000001 and took
    // the maximum (the small guard covers what rounding is left).
    const double x = p * static_cast<double>(sorted.size()) / 100.0;
    size_t rank = static_cast<size_t>(std::ceil(x - 1e-9 * std::max(1.0, x)));
    if (rank < 1) rank = 1;
    return sorted[std::min(rank, sorted.size()) - 1];
}

std::optional<Derived> derive(const SimOptions& o, std::string* error) {
    auto fail = [&](const std::string& why) -> std::optional<Derived> {
        *error = why;
        return std::nullopt;
    };
    Derived d;
    if (o.fixedSize > 0) {
        d.dist = workload::Distribution::fixed(o.fixedSize);
    } else {
        std::string why;
        auto dist = workload::Distribution::named(o.workload, &why);
        if (!dist) return fail(why);
        d.dist = *dist;
    }
    // Messages are at most 1 GB here: offsets and buffer sizes of 32 bits wrapped near 4 GB.
    if (d.dist.maxSize() > kMaxSimMessageBytes)
        return fail("messages must be at most " + std::to_string(kMaxSimMessageBytes) + " bytes, not " +
                    std::to_string(d.dist.maxSize()));
    if (!(o.load > 0 && o.load <= 1.5)) return fail("--load must be in (0, 1.5]");
    // (At most a million simulated milliseconds each: times are int64_t nanoseconds, and
    // NaN passes every comparison.)
    constexpr double kMaxMs = 1e6;
    if (!(o.durationMs > 0 && o.durationMs <= kMaxMs)) return fail("--duration-ms must be in (0, 1000000]");
    if (std::isnan(o.warmupMs) || o.warmupMs >= o.durationMs) return fail("--warmup-ms must be shorter than --duration-ms");
    if (std::isnan(o.drainMs) || o.drainMs > kMaxMs) return fail("--drain-ms must be at most 1000000");
    if (o.buckets < 1 || o.buckets > 1000) return fail("--buckets must be in 1..1000");
    // Links count in whole Mbit/s (sim::linkMbps): a rate between two would be rounded,
    // and the network simulated would not be the one the arrivals were computed for.
    for (const auto& [gbps, name] : {std::pair{o.hostGbps, "--host-gbps"}, std::pair{o.aggGbps, "--agg-gbps"}})
        if (!(gbps >= 0.001 && gbps <= 10000) || !isWholeMbps(gbps))
            return fail(
                fmt::format("{} must be a whole number of Mbit/s in [0.001, 10000] Gbps, not {:g}", name, gbps));
    // Delays of at most a second (larger ones overflowed the clock, int64_t nanoseconds).
    constexpr int64_t kMaxDelayNs = 1'000'000'000;
    for (const auto& [value, name] : {std::pair{o.linkLatencyNs, "--link-latency-ns"},
                                      std::pair{o.switchDelayNs, "--switch-delay-ns"},
                                      std::pair{o.hostDelayNs, "--host-delay-ns"}})
        if (value < 0 || value > kMaxDelayNs) return fail(std::string(name) + " must be in [0, 1000000000]");
    if (o.tickUs < 1 || o.tickUs > kMaxDelayNs / 1000) return fail("--tick-us must be in [1, 1000000]");
    if (o.wireOverheadBytes > kMaxWireOverheadBytes)
        return fail(fmt::format("--wire-overhead must be at most {} bytes", kMaxWireOverheadBytes));

    sim::TopologyConfig& t = d.topo;
    if (o.topology == "twotier") {
        if (o.racks < 1 || o.hostsPerRack < 1 || o.aggSwitches < 1)
            return fail("--racks, --hosts-per-rack and --agg-switches must be >= 1");
        t.kind = sim::TopologyKind::TwoTier;
        t.racks = o.racks;
        t.hostsPerRack = o.hostsPerRack;
        t.aggSwitches = o.aggSwitches;
    } else if (o.topology == "star") {
        t.kind = sim::TopologyKind::Star;
        t.hosts = o.hosts;
    } else {
        return fail("--topology must be twotier or star, not '" + o.topology + "'");
    }
    const uint64_t numHosts = t.kind == sim::TopologyKind::Star ? uint64_t{o.hosts} : uint64_t{o.racks} * o.hostsPerRack;
    if (numHosts < 2) return fail("the network needs at least 2 hosts");
    if (numHosts > 100'000) return fail("at most 100000 hosts");
    // Each switch keeps a route to every host.
    const uint64_t switches = t.kind == sim::TopologyKind::Star ? 1 : uint64_t{o.racks} + o.aggSwitches;
    if (switches * numHosts > kMaxRouteEntries)
        return fail("the network is too large: " + std::to_string(switches) + " switches x " + std::to_string(numHosts) +
                    " hosts routes (at most " + std::to_string(kMaxRouteEntries) + ")");
    t.hostGbps = o.hostGbps;
    t.aggGbps = o.aggGbps;
    t.hostLatency = t.aggLatency = o.linkLatencyNs;
    t.switchDelay = o.switchDelayNs;
    t.hostDelay = o.hostDelayNs;
    t.wireOverheadBytes = o.wireOverheadBytes;
    t.switchQueueLimitBytes = o.switchQueueLimitBytes;
    t.fifoNics = o.fifoNics;
    if (o.soloSender >= 0 && static_cast<uint64_t>(o.soloSender) >= numHosts) return fail("--solo-sender is not a host");
    if (o.soloReceiver >= 0 && (static_cast<uint64_t>(o.soloReceiver) >= numHosts || o.soloReceiver == o.soloSender))
        return fail("--solo-receiver must be another host");

    engine::Config& c = d.engine;
    c.port = kPort;
    c.wireOverheadBytes = o.wireOverheadBytes;
    if (!(o.pacerRate > 0.1 && o.pacerRate <= 1.0)) return fail("--pacer-rate must be in (0.1, 1]");
    // The engine's pacer, too, counts in whole Mbit/s.
    const double pacerMbps = std::round(o.hostGbps * 1000) * o.pacerRate;
    if (!isWholeMbps(pacerMbps / 1000))
        return fail(fmt::format("--pacer-rate {:g} of {:g} Mbit/s is {:g} Mbit/s: the pacers' rate must be a whole "
                                "number of Mbit/s, at least 1",
                                o.pacerRate, std::round(o.hostGbps * 1000), pacerMbps));
    c.linkMbps = static_cast<uint32_t>(std::llround(pacerMbps));
    c.maxMessageLength = std::max<uint32_t>(d.dist.maxSize(), 1);
    // Limits the engines never reach in these runs: loss of data for lack of memory
    // would be a property of the host, not of the protocol on this network.
    c.maxBufferBytes = uint64_t{1} << 40;
    c.maxOutgoingBytes = uint64_t{1} << 40;
    c.grantFifoFraction = o.grantFifoFraction;
    c.pacerFifoFraction = o.pacerFifoFraction;
    c.maxNicQueueNs = o.maxNicQueueNs;
    c.tickNs = o.tickUs * 1000;
    c.resendTicks = o.resendTicks;
    c.timeoutTicks = o.timeoutTicks;
    c.timerPacketsPerPeer = o.timerPacketsPerPeer;
    c.peerGcThreshold = static_cast<uint32_t>(std::min<uint64_t>(numHosts * 2, 1u << 30));

    // One round trip: a full DATA packet to the farthest host and a GRANT back.
    sim::Topology topo = sim::Topology::build(t);
    const uint32_t far = static_cast<uint32_t>(numHosts - 1);
    d.rttNs = topo.minOneWay(0, far, wire::kDataHeaderSize + c.maxPayload) + topo.minOneWay(far, 0, wire::kGrantSize);
    const Time perPacket = sim::serializationTime(wire::kDataHeaderSize + c.maxPayload + o.wireOverheadBytes, o.hostGbps);
    // (Rounded up to whole packets, byte counts near 4 GB wrapped.)
    for (const auto& [bytes, name] :
         {std::pair{o.rttBytes, "--rtt-bytes"}, std::pair{o.unschedBytes, "--unsched-bytes"}})
        if (bytes > kMaxSimMessageBytes) return fail(fmt::format("{} must be at most {}", name, kMaxSimMessageBytes));
    if (o.rttBytes) {
        d.rttBytes = o.rttBytes;
    } else {
        // Whole packets. Seconds of delay on a fast link are more bytes than 32 bits hold;
        // past the largest message, more unscheduled bytes or a larger window change
        // nothing (every message is then sent unscheduled), so the round trip is capped there.
        const uint64_t packets = static_cast<uint64_t>((d.rttNs + perPacket - 1) / perPacket);
        const uint64_t most = kMaxSimMessageBytes / c.maxPayload;
        d.rttBytes = static_cast<uint32_t>(std::min(packets, most) * c.maxPayload);
    }
    c.unschedBytes = o.unschedBytes ? o.unschedBytes : d.rttBytes;
    const uint32_t unschedRounded = (c.unschedBytes + c.maxPayload - 1) / c.maxPayload * c.maxPayload;

    // Wire bytes per message and the arrival rate.
    {
        double prev = 0;
        double unsched = 0, all = 0;
        for (size_t i = 0; i < d.dist.sizes().size(); ++i) {
            const uint32_t s = d.dist.sizes()[i];
            const double p = d.dist.cumulative()[i] - prev;
            prev = d.dist.cumulative()[i];
            d.meanWireBytes += p * (s + double(packetsOf(s, c.maxPayload)) * (wire::kDataHeaderSize + o.wireOverheadBytes));
            unsched += p * std::min(s, unschedRounded);
            all += p * s;
        }
        // Each message is answered by a 1-byte response (one more DATA packet the other
        // way); with uniform traffic every host link carries both, so the load counts it.
        d.meanWireBytes += 1 + wire::kDataHeaderSize + o.wireOverheadBytes;
        d.arrivalsPerSecPerHost = o.load * o.hostGbps * 1e9 / 8 / d.meanWireBytes;
        // At least one arrival expected in the whole network during the run: a smaller
        // load means gaps between arrivals past the end of the run (and past what
        // int64_t nanoseconds hold: they came out as 1 ns, a flood).
        if (o.soloSender < 0 && !(d.arrivalsPerSecPerHost * double(numHosts) * o.durationMs / 1e3 >= 1))
            return fail(fmt::format("--load {:g} is too small: not one message would arrive in {:g} ms", o.load,
                                    o.durationMs));
        d.unschedLevels = o.unschedPriorities
                              ? o.unschedPriorities
                              : std::clamp(static_cast<int>(std::lround(8.0 * unsched / all)), 1, 7);
    }
    if (!o.cutoffs.empty()) {
        // N cutoffs make N + 1 levels: messages up to the first cutoff take the highest
        // level, those above the last one the lowest unscheduled level.
        const size_t n = o.cutoffs.size();
        if (n > 6) return fail("--cutoffs: at most 6 (7 unscheduled levels; one level is kept for scheduled bytes)");
        for (size_t k = 0; k < n; ++k) {
            if (o.cutoffs[k] == 0 || o.cutoffs[k] > kMaxSimMessageBytes)
                return fail(fmt::format("--cutoffs must be in [1, {}], not {}", kMaxSimMessageBytes, o.cutoffs[k]));
            if (k > 0 && o.cutoffs[k] <= o.cutoffs[k - 1])
                return fail(fmt::format("--cutoffs must be strictly ascending (highest priority first), "
                                        "not {} after {}",
                                        o.cutoffs[k], o.cutoffs[k - 1]));
        }
        const int levels = static_cast<int>(n) + 1;
        if (o.unschedPriorities != 0 && o.unschedPriorities != levels)
            return fail(fmt::format("--unsched-priorities {} contradicts --cutoffs: {} cutoffs make {} unscheduled "
                                    "levels",
                                    o.unschedPriorities, n, levels));
        c.unschedCutoffs = {};
        for (size_t k = 0; k < n; ++k) c.unschedCutoffs[7 - k] = o.cutoffs[k];
        c.unschedCutoffs[7 - n] = std::numeric_limits<uint32_t>::max();
        d.unschedLevels = levels;
    } else {
        if (d.unschedLevels < 1 || d.unschedLevels > 7) return fail("--unsched-priorities must be in 1..7");
        c.unschedCutoffs = deriveCutoffs(d.dist, unschedRounded, d.unschedLevels);
    }
    const int schedLevels = 8 - d.unschedLevels;
    c.maxOvercommit = o.overcommit ? o.overcommit : schedLevels;
    if (c.maxOvercommit < 1) return fail("--overcommit must be >= 1");
    c.window = o.window ? o.window : d.rttBytes;
    c.maxIncoming = o.maxIncoming ? o.maxIncoming : static_cast<uint32_t>(std::min<uint64_t>(
                                                         uint64_t{c.window} * static_cast<uint64_t>(c.maxOvercommit),
                                                         std::numeric_limits<uint32_t>::max()));
    c.maxRpcsPerPeer = 1;
    std::string why = c.validate();
    if (!why.empty()) return fail("Homa parameters: " + why);

    // Buckets at quantiles of the message-count CDF.
    for (uint32_t k = 1; k <= o.buckets; ++k) {
        const double q = double(k) / o.buckets;
        const auto& cum = d.dist.cumulative();
        auto it = std::lower_bound(cum.begin(), cum.end(), q - 1e-9);
        uint32_t s = it == cum.end() ? d.dist.maxSize() : d.dist.sizes()[static_cast<size_t>(it - cum.begin())];
        if (k == o.buckets) s = d.dist.maxSize();
        if (d.bucketBounds.empty() || s > d.bucketBounds.back()) d.bucketBounds.push_back(s);
    }
    return d;
}

// ---------------------------------------------------------------- the run

namespace {

struct Pending {
    Time start = 0;
    uint32_t size = 0;
    uint32_t dst = 0;
    bool measured = false;
};

struct Sample {
    uint32_t size;
    float slowdown;
};

class Runner {
  public:
    Runner(const SimOptions& o, const Derived& d, const std::function<void()>& hook)
        : o_(o), d_(d), hook_(hook), net_(o.seed, sim::Topology::build(d.topo)),
          payload_(size_t{std::max<uint32_t>(d.dist.maxSize(), 1)} + 8192) {
        // Message contents (zeros) start half-way into a page: copies into page-aligned
        // buffers from a page-aligned source run several times slower on x86 (loads and
        // stores 4 KB apart look dependent).
        const auto addr = reinterpret_cast<uintptr_t>(payload_.data());
        payloadStart_ = payload_.data() + ((2048 - addr % 4096) + 4096) % 4096;
        net_.setTraceHashing(o.traceHash);
        const uint32_t n = net_.numHosts();
        hosts_.reserve(n);
        rngs_.reserve(n);
        for (uint32_t h = 0; h < n; ++h) {
            engine::Config c = d.engine;
            hosts_.push_back(std::make_unique<sim::EngineHost>(net_, h, c));
            net_.attach(h, hosts_.back().get());
            hosts_.back()->setDeliveryHandler(
                [this](sim::EngineHost& host, engine::Delivery& dl) { onDelivery(host, dl); });
            rngs_.emplace_back(splitmix(o.seed * 0x100000001b3ULL + h + 1));
        }
        sizeRng_.seed(splitmix(o.seed ^ 0xa5a5a5a5ULL));
        windowStart_ = msToNs(o.warmupMs < 0 ? o.durationMs / 10 : o.warmupMs);
        windowEnd_ = msToNs(o.durationMs);
        drainEnd_ = windowEnd_ + msToNs(o.drainMs < 0 ? o.durationMs : o.drainMs);
        meanGapNs_ = 1e9 / d.arrivalsPerSecPerHost;
    }

    Results run() {
        if (o_.soloSender >= 0) {
            runSolo();
        } else {
            runLoaded();
        }
        return finish();
    }

  private:
    uint64_t key(uint32_t src, uint64_t id) const { return (uint64_t{src} << 44) ^ id; }

    bool startMessage(uint32_t src, uint32_t dst, uint32_t size, bool measured) {
        uint64_t id = 0;
        const Time now = net_.now();
        Status s = hosts_[src]->call(dst, std::span<const uint8_t>(payloadStart_, size), 0, &id);
        ++r_.generated;
        if (measured) {
            ++r_.measured;
            r_.measuredBytes += size;
        }
        if (!s.isOk()) {
            // A measured message the sender refuses is measured and failed.
            ++r_.refused;
            if (measured) ++r_.failed;
            return false;
        }
        pending_[key(src, id)] = Pending{now, size, dst, measured};
        if (measured) ++measuredOutstanding_;
        return true;
    }

    void onDelivery(sim::EngineHost& host, engine::Delivery& dl) {
        switch (dl.kind) {
            case engine::Delivery::Kind::Request: {
                const uint32_t src = sim::hostOf(dl.server.client);
                auto it = pending_.find(key(src, dl.server.id));
                if (it == pending_.end()) {
                    ++r_.duplicateDeliveries;
                } else {
                    ++r_.deliveredAll;
                    const Pending& p = it->second;
                    if (p.measured) {
                        --measuredOutstanding_;
                        if (pastDrain_) {
                            // Unfinished at the drain limit, and its time was taken on a
                            // network emptying without arrivals: incomplete.
                            ++r_.incomplete;
                        } else {
                            const Time took = net_.now() - p.start;
                            const double slow = double(took) / double(ideal(src, p.dst, p.size));
                            samples_.push_back(Sample{p.size, static_cast<float>(slow)});
                            ++r_.completed;
                        }
                    }
                    pending_.erase(it);
                }
                host.release(dl.message);
                static const uint8_t one = 0;
                host.respond(dl.server, std::span<const uint8_t>(&one, 1));
                break;
            }
            case engine::Delivery::Kind::Response:
                host.release(dl.message);
                break;
            case engine::Delivery::Kind::Failure: {
                auto it = pending_.find(key(host.id(), dl.clientId));
                if (it != pending_.end()) {
                    ++r_.failedAll;
                    if (it->second.measured) {
                        // A failure after the drain limit: the message was incomplete then.
                        if (pastDrain_) {
                            ++r_.incomplete;
                        } else {
                            ++r_.failed;
                        }
                        --measuredOutstanding_;
                    } else {
                        ++r_.unmeasuredFailed;
                    }
                    pending_.erase(it);
                }
                break;
            }
        }
    }

    Time ideal(uint32_t src, uint32_t dst, uint32_t size) {
        // Paths differ only by whether they leave the rack.
        const sim::Topology& t = net_.topology();
        const bool sameEdge = t.port(t.nicPort(src)).to == t.port(t.nicPort(dst)).to;
        const uint64_t k = (uint64_t{size} << 1) | (sameEdge ? 1 : 0);
        auto it = idealCache_.find(k);
        if (it != idealCache_.end()) return it->second;
        const Time v = idealOneWay(t, d_.engine, src, dst, size);
        idealCache_.emplace(k, v);
        return v;
    }

    Time nextGap(std::mt19937_64& rng) const {
        const double u = uniform01(rng);
        const double gap = -std::log1p(-u) * meanGapNs_;
        // Past the end of arrivals: none is scheduled (and no rounding of huge values).
        if (!(gap < double(drainEnd_))) return drainEnd_ + 1;
        return std::max<Time>(1, static_cast<Time>(std::llround(gap)));
    }

    void arrival(uint32_t h) {
        if (stopArrivals_) return;
        std::mt19937_64& rng = rngs_[h];
        const uint32_t n = net_.numHosts();
        const uint32_t size = d_.dist.sample(rng);
        uint32_t dst = static_cast<uint32_t>(bounded(rng, n - 1));
        if (dst >= h) ++dst;
        const Time now = net_.now();
        bool measured = now >= windowStart_ && now < windowEnd_ && !quotaReached();
        startMessage(h, dst, size, measured);
        const Time next = now + nextGap(rng);
        if (next < drainEnd_) net_.at(next, [this, h] { arrival(h); });
    }

    bool quotaReached() const { return o_.messages > 0 && r_.measured >= o_.messages; }

    void runLoaded() {
        for (uint32_t h = 0; h < net_.numHosts(); ++h) {
            const Time first = nextGap(rngs_[h]);
            if (first < drainEnd_) net_.at(first, [this, h] { arrival(h); });
        }
        // The window ends at the duration or when the quota of measured messages started.
        const Time step = 100'000;
        Time t = 0;
        while (t < windowEnd_ && !quotaReached()) {
            t = std::min(t + step, windowEnd_);
            net_.runUntil(t);
            if (hook_) hook_();
        }
        // Traffic goes on (unmeasured) until the measured messages finish.
        while (measuredOutstanding_ > 0 && t < drainEnd_) {
            t = std::min(t + step, drainEnd_);
            net_.runUntil(t);
            if (hook_) hook_();
        }
        stopArrivals_ = true;
        // The drain limit ends the measurement: what finishes later is not measured.
        pastDrain_ = true;
        if (o_.settle) {
            // Arrivals already scheduled do nothing now; everything in flight drains, so
            // that every message started is delivered or failed and every engine is idle
            // (what the accounting and the counters at the end rely on). Measured
            // messages that finish now still count as incomplete (onDelivery).
            net_.runUntilIdle(net_.now() + 10'000'000'000);
            if (hook_) hook_();
        }
        r_.endNs = net_.now();
    }

    void runSolo() {
        const uint32_t src = static_cast<uint32_t>(o_.soloSender);
        const uint32_t n = net_.numHosts();
        const uint64_t count = o_.messages ? o_.messages : 100;
        for (uint64_t i = 0; i < count; ++i) {
            const uint32_t size = d_.dist.sample(sizeRng_);
            uint32_t dst;
            if (o_.soloReceiver >= 0) {
                dst = static_cast<uint32_t>(o_.soloReceiver);
            } else {
                dst = static_cast<uint32_t>(bounded(sizeRng_, n - 1));
                if (dst >= src) ++dst;
            }
            startMessage(src, dst, size, true);
            // Until every engine is idle (acks included), so the next message is alone.
            net_.runUntilIdle(net_.now() + 10'000'000'000);
            if (hook_) hook_();
        }
        r_.endNs = net_.now();
    }

    Results finish() {
        // (Those still unfinished at the end; those that finished after the drain limit
        // were counted as they did.)
        r_.incomplete += measuredOutstanding_;
        r_.pendingAtEnd = pending_.size();
        r_.networkIdle = net_.idle();
        // Buckets.
        std::vector<std::vector<double>> per(d_.bucketBounds.size());
        std::vector<double> all;
        all.reserve(samples_.size());
        for (const Sample& s : samples_) {
            size_t b = static_cast<size_t>(std::lower_bound(d_.bucketBounds.begin(), d_.bucketBounds.end(), s.size) -
                                           d_.bucketBounds.begin());
            b = std::min(b, per.size() - 1);
            per[b].push_back(s.slowdown);
            all.push_back(s.slowdown);
        }
        for (size_t b = 0; b < per.size(); ++b) r_.buckets.push_back(summarize(d_.bucketBounds[b], per[b]));
        r_.all = summarize(d_.dist.maxSize(), all);

        // Engine counters, summed.
        engine::EngineMetrics sum;
        for (auto& h : hosts_) {
            const engine::EngineMetrics& m = h->engine().metrics();
            auto add = [](auto& a, const auto& b) {
                for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
            };
            add(sum.packetsSent, m.packetsSent);
            add(sum.bytesSent, m.bytesSent);
            add(sum.packetsByPriority, m.packetsByPriority);
            add(sum.bytesByPriority, m.bytesByPriority);
            add(sum.dropped, m.dropped);
            add(sum.decodeErrors, m.decodeErrors);
#define HOMA_SUM(f) sum.f += m.f
            HOMA_SUM(clientRpcsStarted); HOMA_SUM(clientRpcsCompleted); HOMA_SUM(clientRpcsTimedOut);
            HOMA_SUM(serverRequestsReceived); HOMA_SUM(serverRpcsTimedOut); HOMA_SUM(serverRpcsAbandoned);
            HOMA_SUM(grantsSent); HOMA_SUM(grantedBytes); HOMA_SUM(fifoGrantBytes);
            HOMA_SUM(resendsSent); HOMA_SUM(retransmittedPackets); HOMA_SUM(retransmittedBytes);
            HOMA_SUM(busySent); HOMA_SUM(rpcUnknownSent); HOMA_SUM(needAcksSent); HOMA_SUM(ackPacketsSent); HOMA_SUM(timerPacketsDeferred);
            HOMA_SUM(cutoffsSent); HOMA_SUM(pacerDeferrals); HOMA_SUM(bufferWaits);
#undef HOMA_SUM
        }
        auto& c = r_.counters;
        c.emplace_back("client_rpcs_started", sum.clientRpcsStarted);
        c.emplace_back("client_rpcs_completed", sum.clientRpcsCompleted);
        c.emplace_back("client_rpcs_timed_out", sum.clientRpcsTimedOut);
        c.emplace_back("server_requests_received", sum.serverRequestsReceived);
        c.emplace_back("server_rpcs_timed_out", sum.serverRpcsTimedOut);
        c.emplace_back("server_rpcs_abandoned", sum.serverRpcsAbandoned);
        c.emplace_back("grants_sent", sum.grantsSent);
        c.emplace_back("granted_bytes", sum.grantedBytes);
        c.emplace_back("fifo_grant_bytes", sum.fifoGrantBytes);
        c.emplace_back("resends_sent", sum.resendsSent);
        c.emplace_back("retransmitted_packets", sum.retransmittedPackets);
        c.emplace_back("retransmitted_bytes", sum.retransmittedBytes);
        c.emplace_back("busy_sent", sum.busySent);
        c.emplace_back("rpc_unknown_sent", sum.rpcUnknownSent);
        c.emplace_back("need_acks_sent", sum.needAcksSent);
        c.emplace_back("timer_packets_deferred", sum.timerPacketsDeferred);
        c.emplace_back("ack_packets_sent", sum.ackPacketsSent);
        c.emplace_back("cutoffs_sent", sum.cutoffsSent);
        c.emplace_back("pacer_deferrals", sum.pacerDeferrals);
        c.emplace_back("buffer_waits", sum.bufferWaits);
        for (size_t i = 0; i < sum.dropped.size(); ++i)
            c.emplace_back(std::string("dropped_") + engine::toString(static_cast<engine::DropReason>(i)), sum.dropped[i]);
        uint64_t decode = 0;
        for (uint64_t v : sum.decodeErrors) decode += v;
        c.emplace_back("decode_errors", decode);
        for (size_t p = 0; p < 8; ++p) c.emplace_back(fmt::format("bytes_sent_priority_{}", p), sum.bytesByPriority[p]);
        uint64_t rpcsLeft = 0;
        for (auto& h : hosts_) rpcsLeft += h->engine().rpcCount();
        c.emplace_back("rpcs_alive_at_end", rpcsLeft);
        uint64_t outstanding = 0;
        for (auto& h : hosts_) outstanding += h->engine().incomingOutstanding();
        c.emplace_back("incoming_outstanding_at_end", outstanding);
        uint64_t inUse = 0, cached = 0;
        for (auto& h : hosts_) {
            inUse += h->engine().bufferPool().bytesInUse();
            cached += h->engine().bufferPool().bytesCached();
        }
        c.emplace_back("receive_buffer_bytes_in_use_at_end", inUse);
        c.emplace_back("receive_buffer_bytes_cached_at_end", cached);

        // Network.
        const sim::Topology& t = net_.topology();
        const sim::Stats& ns = net_.stats();
        r_.packetsSent = ns.sent;
        r_.packetsDelivered = ns.delivered;
        r_.queueDropped = ns.queueDropped;
        r_.otherDropped = ns.lost + ns.partitionDropped + ns.crashDropped + ns.noHostDropped;
        r_.events = net_.eventsProcessed();
        r_.traceHash = net_.traceHash();
        const char* names[] = {"host_nic", "edge_to_host", "edge_to_agg", "agg_to_edge"};
        std::array<PortClassStats, 4> cls;
        for (int i = 0; i < 4; ++i) cls[static_cast<size_t>(i)].name = names[i];
        r_.portMaxQueueBytes.resize(t.numPorts());
        for (sim::PortId p = 0; p < t.numPorts(); ++p) {
            const sim::PortSpec& ps = t.port(p);
            const sim::PortStats st = net_.portStats(p);
            r_.portMaxQueueBytes[p] = st.maxQueueBytes;
            const auto from = t.node(ps.from).kind, to = t.node(ps.to).kind;
            size_t k = from == sim::NodeKind::Host        ? 0
                       : to == sim::NodeKind::Host        ? 1
                       : to == sim::NodeKind::Aggregation ? 2
                                                          : 3;
            PortClassStats& pc = cls[k];
            ++pc.ports;
            pc.maxQueueBytes = std::max(pc.maxQueueBytes, st.maxQueueBytes);
            pc.meanMaxQueueBytes += double(st.maxQueueBytes);
            pc.txBytes += st.txBytes;
        }
        for (auto& pc : cls) {
            if (pc.ports == 0) continue;
            pc.meanMaxQueueBytes /= pc.ports;
            r_.portClasses.push_back(pc);
        }
        return r_;
    }

    const SimOptions& o_;
    const Derived& d_;
    const std::function<void()>& hook_;
    sim::Network net_;
    std::vector<uint8_t> payload_;
    const uint8_t* payloadStart_ = nullptr;
    std::vector<std::unique_ptr<sim::EngineHost>> hosts_;
    std::vector<std::mt19937_64> rngs_;
    std::mt19937_64 sizeRng_;
    absl::flat_hash_map<uint64_t, Pending> pending_;
    absl::flat_hash_map<uint64_t, Time> idealCache_;
    std::vector<Sample> samples_;
    uint64_t measuredOutstanding_ = 0;
    Time windowStart_ = 0, windowEnd_ = 0, drainEnd_ = 0;
    double meanGapNs_ = 0;
    bool stopArrivals_ = false;
    bool pastDrain_ = false;  ///< past the drain limit: measured messages finishing now are incomplete
    Results r_;
};

}  // namespace

Simulation::Simulation(const SimOptions& o, Derived d) : o_(o), d_(std::move(d)) {}

Results Simulation::run() {
    Runner r(o_, d_, hook_);
    return r.run();
}

// ---------------------------------------------------------------- output

namespace {

std::string cutoffsText(const engine::Config& c) {
    std::string s;
    for (int p = 7; p >= 0; --p) {
        uint32_t v = c.unschedCutoffs[static_cast<size_t>(p)];
        if (v == 0) break;
        if (!s.empty()) s += ',';
        s += v == std::numeric_limits<uint32_t>::max() ? std::string("max") : std::to_string(v);
    }
    return s;
}

/// A slowdown of an empty bucket is not 0: "n/a" in the text, an empty CSV field, null
/// in the JSON (as in homa-perf's outputs).
std::string figure(const BucketStats& b, double v, const char* none, int decimals) {
    return b.count == 0 ? std::string(none) : fmt::format("{:.{}f}", v, decimals);
}

std::string textRow(const std::string& label, const BucketStats& b) {
    auto f = [&](double v) { return figure(b, v, "n/a", 2); };
    return fmt::format("{:>12} {:>10} {:>8} {:>8} {:>8} {:>8}\n", label, b.count, f(b.mean), f(b.p50), f(b.p99),
                       f(b.p999));
}

}  // namespace

std::string toText(const SimOptions& o, const Derived& d, const Results& r) {
    std::string s;
    const uint32_t hosts = d.topo.kind == sim::TopologyKind::Star ? d.topo.hosts : d.topo.racks * d.topo.hostsPerRack;
    s += fmt::format("homa-sim: {} load {:.2f} seed {}, {} hosts ({}), {:g}/{:g} Gbps, {:.3f} ms\n",
                     o.fixedSize ? "fixed " + std::to_string(o.fixedSize) : d.dist.name(), o.load, o.seed, hosts,
                     o.topology, o.hostGbps, o.aggGbps, double(r.endNs) / 1e6);
    s += fmt::format("  rtt {} ns = {} bytes; unscheduled {} bytes; {} unscheduled levels, cutoffs {}; overcommit {}; "
                     "window {}; max incoming {}\n",
                     d.rttNs, d.rttBytes, d.engine.unschedBytes, d.unschedLevels, cutoffsText(d.engine),
                     d.engine.maxOvercommit, d.engine.window, d.engine.maxIncoming);
    s += fmt::format("  messages: generated {} measured {} completed {} failed {} incomplete {} refused {} "
                     "unknown-deliveries {}\n",
                     r.generated, r.measured, r.completed, r.failed, r.incomplete, r.refused, r.duplicateDeliveries);
    s += fmt::format("  all messages: delivered {} failed {} pending at end {}; network idle at end: {}\n",
                     r.deliveredAll, r.failedAll, r.pendingAtEnd, r.networkIdle ? "yes" : "no");
    s += fmt::format("{:>12} {:>10} {:>8} {:>8} {:>8} {:>8}\n", "size<=", "count", "mean", "p50", "p99", "p99.9");
    for (const BucketStats& b : r.buckets) s += textRow(std::to_string(b.maxSize), b);
    s += textRow("all", r.all);
    s += "  max queue per port (bytes):";
    for (const auto& pc : r.portClasses)
        s += fmt::format(" {} max {} mean-of-max {:.0f};", pc.name, pc.maxQueueBytes, pc.meanMaxQueueBytes);
    s += "\n  network: packets sent " + std::to_string(r.packetsSent) + " delivered " + std::to_string(r.packetsDelivered) +
         " queue-dropped " + std::to_string(r.queueDropped) + " other-dropped " + std::to_string(r.otherDropped) +
         " events " + std::to_string(r.events);
    if (o.traceHash) s += fmt::format(" trace {:016x}", r.traceHash);
    s += "\n  engines:";
    for (const auto& [k, v] : r.counters)
        if (v != 0 || k.starts_with("dropped") || k == "resends_sent") s += " " + k + "=" + std::to_string(v);
    s += "\n";
    return s;
}

std::string toCsv(const Results& r) {
    std::string s = "max_size,count,mean,p50,p99,p999,min,max\n";
    for (const BucketStats& b : r.buckets) {
        auto f = [&](double v) { return figure(b, v, "", 4); };
        s += fmt::format("{},{},{},{},{},{},{},{}\n", b.maxSize, b.count, f(b.mean), f(b.p50), f(b.p99), f(b.p999),
                         f(b.min), f(b.max));
    }
    return s;
}

std::string toJson(const SimOptions& o, const Derived& d, const Results& r) {
    json j;
    j["tool"] = "homa-sim";
    json& op = j["options"];
    op["workload"] = o.fixedSize ? "fixed-" + std::to_string(o.fixedSize) : d.dist.name();
    op["load"] = o.load;
    op["seed"] = o.seed;
    op["duration_ms"] = o.durationMs;
    op["topology"] = o.topology;
    op["hosts"] = d.topo.kind == sim::TopologyKind::Star ? d.topo.hosts : d.topo.racks * d.topo.hostsPerRack;
    op["host_gbps"] = o.hostGbps;
    op["agg_gbps"] = o.aggGbps;
    op["link_latency_ns"] = o.linkLatencyNs;
    op["switch_delay_ns"] = o.switchDelayNs;
    op["host_delay_ns"] = o.hostDelayNs;
    op["nic_queues"] = o.fifoNics ? "fifo" : "priority";
    op["pacer_rate"] = o.pacerRate;
    json& hp = j["homa"];
    hp["rtt_ns"] = d.rttNs;
    hp["rtt_bytes"] = d.rttBytes;
    hp["unsched_bytes"] = d.engine.unschedBytes;
    hp["unsched_levels"] = d.unschedLevels;
    hp["cutoffs"] = cutoffsText(d.engine);
    hp["overcommit"] = d.engine.maxOvercommit;
    hp["window"] = d.engine.window;
    hp["max_incoming"] = d.engine.maxIncoming;
    json& m = j["messages"];
    m["generated"] = r.generated;
    m["measured"] = r.measured;
    m["completed"] = r.completed;
    m["failed"] = r.failed;
    m["incomplete"] = r.incomplete;
    m["refused"] = r.refused;
    m["unknown_deliveries"] = r.duplicateDeliveries;
    m["delivered_all"] = r.deliveredAll;
    m["failed_all"] = r.failedAll;
    m["pending_at_end"] = r.pendingAtEnd;
    m["network_idle_at_end"] = r.networkIdle;
    m["end_ns"] = r.endNs;
    auto bucket = [](const BucketStats& b) {
        auto f = [&](double v) { return b.count == 0 ? json(nullptr) : json(std::round(v * 1e4) / 1e4); };
        json x;
        x["max_size"] = b.maxSize;
        x["count"] = b.count;
        x["slowdown_mean"] = f(b.mean);
        x["slowdown_p50"] = f(b.p50);
        x["slowdown_p99"] = f(b.p99);
        x["slowdown_p999"] = f(b.p999);
        x["slowdown_min"] = f(b.min);
        x["slowdown_max"] = f(b.max);
        return x;
    };
    j["buckets"] = json::array();
    for (const BucketStats& b : r.buckets) j["buckets"].push_back(bucket(b));
    j["all"] = bucket(r.all);
    json& c = j["engine_counters"];
    for (const auto& [k, v] : r.counters) c[k] = v;
    json& n = j["network"];
    n["packets_sent"] = r.packetsSent;
    n["packets_delivered"] = r.packetsDelivered;
    n["queue_dropped"] = r.queueDropped;
    n["other_dropped"] = r.otherDropped;
    n["events"] = r.events;
    if (o.traceHash) n["trace_hash"] = fmt::format("{:016x}", r.traceHash);
    for (const auto& pc : r.portClasses) {
        json x;
        x["ports"] = pc.ports;
        x["max_queue_bytes"] = pc.maxQueueBytes;
        x["mean_max_queue_bytes"] = std::round(pc.meanMaxQueueBytes);
        x["tx_bytes"] = pc.txBytes;
        n["port_classes"][pc.name] = x;
    }
    n["port_max_queue_bytes"] = r.portMaxQueueBytes;
    return j.dump(1) + "\n";
}

int plot(const std::vector<std::string>& inputs, const std::string& output, const std::string& title,
         std::string* error) {
    std::vector<tools::PlotLine> lines;
    for (const std::string& input : inputs) {
        tools::PlotLine line;
        nlohmann::json options;
        if (const std::string why = tools::readSlowdownJson(input, "homa-sim", &line, &options); !why.empty()) {
            *error = input + " is not homa-sim JSON (" + why + ")";
            return 1;
        }
        try {
            line.label = fmt::format("{} load {:.2f}", options.value("workload", "?"), options.value("load", 0.0));
        } catch (const std::exception& e) {
            *error = input + " is not homa-sim JSON (" + e.what() + ")";
            return 1;
        }
        lines.push_back(std::move(line));
    }
    *error = tools::plotSlowdown(lines, output, title);
    return error->empty() ? 0 : 1;
}

}  // namespace homa::simtool
