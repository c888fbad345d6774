#include "sim/topology.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace homa::sim {

namespace {

constexpr uint32_t kNoSwitch = std::numeric_limits<uint32_t>::max();

uint64_t toMbps(double gbps) {
    if (!(gbps >= 0.001) || !std::isfinite(gbps)) {
        throw std::invalid_argument("sim: link rate must be a finite value >= 0.001 Gbps");
    }
    // Links count in whole Mbit/s. Another rate would be rounded, and the network would
    // silently run at a rate its user did not ask for (1.5 Mbit/s as 2). The tolerance
    // covers decimal fractions that doubles do not hold exactly.
    const double mbps = gbps * 1000.0;
    if (std::abs(mbps - std::round(mbps)) > 1e-6) {
        throw std::invalid_argument("sim: link rate must be a whole number of Mbit/s");
    }
    return static_cast<uint64_t>(std::llround(mbps));
}

}  // namespace

uint64_t linkMbps(double gbps) { return toMbps(gbps); }

Time serializationTime(uint64_t wireBytes, double gbps) {
    const uint64_t mbps = toMbps(gbps);
    // ns = bits / (Gbit/s) = bits * 1000 / (Mbit/s)
    const uint64_t scaled = wireBytes * 8000;
    return static_cast<Time>((scaled + mbps - 1) / mbps);
}

TopologyConfig TopologyConfig::star(uint32_t hosts, double gbps, Time latency, Time switchDelay) {
    TopologyConfig c;
    c.kind = TopologyKind::Star;
    c.hosts = hosts;
    c.hostGbps = gbps;
    c.hostLatency = latency;
    c.switchDelay = switchDelay;
    return c;
}

TopologyConfig TopologyConfig::twoTier() { return TopologyConfig{}; }

NodeId Topology::addNode(NodeKind kind, Time delay) {
    nodes_.push_back(NodeSpec{kind, delay, {}});
    switchIndex_.push_back(kNoSwitch);
    return static_cast<NodeId>(nodes_.size() - 1);
}

PortId Topology::addPort(NodeId from, NodeId to, double gbps, Time latency, uint64_t limit) {
    toMbps(gbps);  // validate early
    if (latency < 0) throw std::invalid_argument("sim: negative link latency");
    ports_.push_back(PortSpec{from, to, gbps, latency, limit});
    const auto id = static_cast<PortId>(ports_.size() - 1);
    nodes_[from].ports.push_back(id);
    return id;
}

Topology::Route Topology::addRouteSet(std::span<const PortId> ports) {
    Route r{static_cast<uint32_t>(routePorts_.size()), static_cast<uint32_t>(ports.size())};
    routePorts_.insert(routePorts_.end(), ports.begin(), ports.end());
    return r;
}

Topology Topology::build(const TopologyConfig& cfg) {
    Topology t;
    t.cfg_ = cfg;
    t.wireOverhead_ = cfg.wireOverheadBytes;
    if (cfg.switchDelay < 0) throw std::invalid_argument("sim: negative switch delay");
    if (cfg.hostDelay < 0) throw std::invalid_argument("sim: negative host delay");
    const Time downLatency = cfg.hostLatency + cfg.hostDelay;

    if (cfg.kind == TopologyKind::Star) {
        if (cfg.hosts == 0) throw std::invalid_argument("sim: star needs at least one host");
        t.numHosts_ = cfg.hosts;
        for (uint32_t h = 0; h < cfg.hosts; ++h) t.addNode(NodeKind::Host, 0);
        const NodeId sw = t.addNode(NodeKind::Edge, cfg.switchDelay);
        t.switchIndex_[sw] = 0;
        t.routeTable_.resize(t.numHosts_);
        t.downlink_.resize(t.numHosts_);
        for (HostId h = 0; h < cfg.hosts; ++h) {
            t.addPort(h, sw, cfg.hostGbps, cfg.hostLatency, cfg.hostQueueLimitBytes);
        }
        for (HostId h = 0; h < cfg.hosts; ++h) {
            const PortId p = t.addPort(sw, h, cfg.hostGbps, downLatency, cfg.switchQueueLimitBytes);
            t.downlink_[h] = p;
            t.route(sw, h) = t.addRouteSet({&p, 1});
        }
        return t;
    }

    if (cfg.racks == 0 || cfg.hostsPerRack == 0 || cfg.aggSwitches == 0) {
        throw std::invalid_argument("sim: twoTier needs racks, hostsPerRack and aggSwitches > 0");
    }
    const uint32_t hpr = cfg.hostsPerRack;
    t.numHosts_ = cfg.racks * hpr;
    for (uint32_t h = 0; h < t.numHosts_; ++h) t.addNode(NodeKind::Host, 0);
    std::vector<NodeId> tors(cfg.racks), aggs(cfg.aggSwitches);
    uint32_t nextIndex = 0;
    for (auto& n : tors) {
        n = t.addNode(NodeKind::Edge, cfg.switchDelay);
        t.switchIndex_[n] = nextIndex++;
    }
    for (auto& n : aggs) {
        n = t.addNode(NodeKind::Aggregation, cfg.switchDelay);
        t.switchIndex_[n] = nextIndex++;
    }
    t.routeTable_.resize(static_cast<size_t>(nextIndex) * t.numHosts_);
    t.downlink_.resize(t.numHosts_);

    for (HostId h = 0; h < t.numHosts_; ++h) {
        t.addPort(h, tors[h / hpr], cfg.hostGbps, cfg.hostLatency, cfg.hostQueueLimitBytes);
    }
    for (uint32_t r = 0; r < cfg.racks; ++r) {
        const NodeId tor = tors[r];
        for (uint32_t i = 0; i < hpr; ++i) {
            const HostId h = r * hpr + i;
            const PortId p =
                t.addPort(tor, h, cfg.hostGbps, downLatency, cfg.switchQueueLimitBytes);
            t.downlink_[h] = p;
            t.route(tor, h) = t.addRouteSet({&p, 1});
        }
        std::vector<PortId> ups;
        for (NodeId agg : aggs) {
            ups.push_back(
                t.addPort(tor, agg, cfg.aggGbps, cfg.aggLatency, cfg.switchQueueLimitBytes));
        }
        const Route upRoute = t.addRouteSet(ups);
        for (HostId h = 0; h < t.numHosts_; ++h) {
            if (h / hpr != r) t.route(tor, h) = upRoute;
        }
    }
    for (NodeId agg : aggs) {
        for (uint32_t r = 0; r < cfg.racks; ++r) {
            const PortId p =
                t.addPort(agg, tors[r], cfg.aggGbps, cfg.aggLatency, cfg.switchQueueLimitBytes);
            const Route down = t.addRouteSet({&p, 1});
            for (uint32_t i = 0; i < hpr; ++i) t.route(agg, r * hpr + i) = down;
        }
    }
    return t;
}

std::vector<PortId> Topology::uplinkPorts() const {
    std::vector<PortId> out;
    for (PortId p = 0; p < ports_.size(); ++p) {
        if (nodes_[ports_[p].from].kind == NodeKind::Edge &&
            nodes_[ports_[p].to].kind == NodeKind::Aggregation) {
            out.push_back(p);
        }
    }
    return out;
}

Time Topology::minFrom(NodeId n, HostId dst, uint64_t bytes, int depth) const {
    // Hosts never forward, so arriving at any host ends the walk.
    if (nodes_[n].kind == NodeKind::Host) {
        return n == dst ? 0 : std::numeric_limits<Time>::max();
    }
    if (depth > static_cast<int>(nodes_.size())) {
        throw std::logic_error("sim: routing loop");
    }
    Time best = std::numeric_limits<Time>::max();
    for (PortId p : routes(n, dst)) {
        const Time rest = minFrom(ports_[p].to, dst, bytes, depth + 1);
        if (rest == std::numeric_limits<Time>::max()) continue;
        best = std::min(best, serializationTime(p, bytes) + ports_[p].latency + rest);
    }
    if (best == std::numeric_limits<Time>::max()) return best;
    return nodes_[n].switchDelay + best;
}

Time Topology::minOneWay(HostId src, HostId dst, uint64_t bytes) const {
    if (src >= numHosts_ || dst >= numHosts_) throw std::out_of_range("sim: bad host id");
    const PortId nic = nicPort(src);
    const Time rest = minFrom(ports_[nic].to, dst, bytes, 0);
    if (rest == std::numeric_limits<Time>::max()) throw std::logic_error("sim: unreachable host");
    return serializationTime(nic, bytes) + ports_[nic].latency + rest;
}

void Topology::setSwitchDelay(NodeId sw, Time delay) {
    if (nodes_.at(sw).kind == NodeKind::Host) throw std::invalid_argument("sim: not a switch");
    if (delay < 0) throw std::invalid_argument("sim: negative switch delay");
    nodes_[sw].switchDelay = delay;
}

void Topology::setQueueLimit(PortId p, uint64_t bytes) { ports_.at(p).queueLimitBytes = bytes; }

}  // namespace homa::sim
