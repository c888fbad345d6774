#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "sim/host.h"

namespace homa::sim {

using NodeId = uint32_t;
using PortId = uint32_t;

enum class NodeKind : uint8_t {
    Host,         // node id == HostId
    Edge,         // star switch or top-of-rack switch
    Aggregation,  // twoTier spine
};

enum class TopologyKind : uint8_t { Star, TwoTier };

struct TopologyConfig {
    TopologyKind kind = TopologyKind::TwoTier;

    uint32_t hosts = 16;  // Star only

    uint32_t racks = 9;  // TwoTier only
    uint32_t hostsPerRack = 16;
    uint32_t aggSwitches = 4;

    double hostGbps = 10.0;  // host <-> edge switch, both directions
    Time hostLatency = 100;
    double aggGbps = 40.0;  // ToR <-> aggregation, both directions
    Time aggLatency = 100;
    Time switchDelay = 250;  // added at every switch before egress queueing
    // Software delay at a receiving host (stack, interrupt, thread wake-up): added to the
    // latency of every switch -> host link, so it is pipelined like propagation.
    Time hostDelay = 0;

    // Host NICs send in the order packets are handed to them (one FIFO) instead of by
    // priority; switch ports always have one queue per priority.
    bool fifoNics = false;

    // Extra bytes charged per packet on every link (preamble, framing, ...).
    uint32_t wireOverheadBytes = 0;
    // Drop-tail limits on queued (not in-transmission) bytes; 0 = unlimited.
    uint64_t hostQueueLimitBytes = 0;
    uint64_t switchQueueLimitBytes = 0;

    static TopologyConfig star(uint32_t hosts, double gbps = 10.0, Time latency = 100,
                               Time switchDelay = 0);
    static TopologyConfig twoTier();
};

// Unidirectional link driven by an egress port on `from`.
struct PortSpec {
    NodeId from = 0;
    NodeId to = 0;
    double gbps = 0;
    Time latency = 0;
    uint64_t queueLimitBytes = 0;  // 0 = unlimited
};

struct NodeSpec {
    NodeKind kind = NodeKind::Host;
    Time switchDelay = 0;        // ignored for hosts
    std::vector<PortId> ports;   // egress ports owned by this node
};

// Serialisation time of `wireBytes` at `gbps`, rounded up to a whole ns: the time one
// packet alone holds a link (see LinkClock for trains of packets).
// Integer arithmetic on Mbit/s so results are exact and platform independent.
Time serializationTime(uint64_t wireBytes, double gbps);

// A link's transmitter, exact to fractions of a nanosecond. Events happen on whole ns,
// so the link is seen free at `until`; it really ends its last packet `early` / mbps ns
// before that (0 <= early < mbps). A packet that waited for the one before it starts
// exactly when that one ends, so a train of packets keeps the nominal rate however its
// serialisation times round. Integer arithmetic: the same everywhere.
struct LinkClock {
    Time until = 0;
    uint64_t early = 0;

    // Sends a packet that is ready at `ready` (a whole ns): it starts then, or when the
    // packet before it ends if that is later. Returns the whole ns it is done by.
    Time send(Time ready, uint64_t wireBytes, uint64_t mbps) {
        if (ready >= until) {
            until = ready;
            early = 0;
        }
        return sendNext(wireBytes, mbps);
    }
    // Sends a packet straight after the one before it (it was waiting).
    Time sendNext(uint64_t wireBytes, uint64_t mbps) {
        // Units of 1/mbps ns: bits * 1000 / (Mbit/s) is ns.
        const uint64_t units = wireBytes * 8000;
        if (units <= early) {
            early -= units;
        } else {
            const uint64_t rest = units - early;
            const uint64_t ns = (rest + mbps - 1) / mbps;
            until += static_cast<Time>(ns);
            early = ns * mbps - rest;
        }
        return until;
    }
};

// The Mbit/s of a link of `gbps` (what LinkClock counts in); throws below 0.001 Gbps and
// for a rate that is not a whole number of Mbit/s.
uint64_t linkMbps(double gbps);

// Immutable after build except for the explicit tuning setters, which must be
// used before handing the topology to a Network.
class Topology {
public:
    static Topology build(const TopologyConfig& cfg);

    uint32_t numHosts() const { return numHosts_; }
    uint32_t numNodes() const { return static_cast<uint32_t>(nodes_.size()); }
    uint32_t numPorts() const { return static_cast<uint32_t>(ports_.size()); }
    const NodeSpec& node(NodeId n) const { return nodes_.at(n); }
    const PortSpec& port(PortId p) const { return ports_.at(p); }
    uint32_t wireOverheadBytes() const { return wireOverhead_; }
    const TopologyConfig& config() const { return cfg_; }

    // The host's NIC egress port.
    PortId nicPort(HostId h) const { return nodes_.at(h).ports.front(); }
    // The switch egress port that feeds host h (its receive-side queue).
    PortId downlinkPort(HostId h) const { return downlink_.at(h); }
    // Candidate egress ports at switch `sw` (not a host) towards host `dst`;
    // the network picks one uniformly at random when there are several.
    std::span<const PortId> routes(NodeId sw, HostId dst) const {
        const Route& r = routeTable_[static_cast<size_t>(switchIndex_[sw]) * numHosts_ + dst];
        return {routePorts_.data() + r.begin, r.count};
    }
    // All egress ports on edge switches that lead to an aggregation switch.
    std::vector<PortId> uplinkPorts() const;

    // Minimum one-way time for a packet of `bytes` (excluding wire overhead,
    // which is added per hop) from src to dst on an idle network.
    Time minOneWay(HostId src, HostId dst, uint64_t bytes) const;
    Time serializationTime(PortId p, uint64_t bytes) const {
        return sim::serializationTime(bytes + wireOverhead_, ports_.at(p).gbps);
    }

    void setSwitchDelay(NodeId sw, Time delay);
    void setQueueLimit(PortId p, uint64_t bytes);

private:
    struct Route {
        uint32_t begin = 0;
        uint32_t count = 0;
    };

    NodeId addNode(NodeKind kind, Time delay);
    PortId addPort(NodeId from, NodeId to, double gbps, Time latency, uint64_t limit);
    Route addRouteSet(std::span<const PortId> ports);
    Route& route(NodeId sw, HostId dst) {
        return routeTable_[static_cast<size_t>(switchIndex_[sw]) * numHosts_ + dst];
    }
    Time minFrom(NodeId n, HostId dst, uint64_t bytes, int depth) const;

    TopologyConfig cfg_;
    uint32_t numHosts_ = 0;
    uint32_t wireOverhead_ = 0;
    std::vector<NodeSpec> nodes_;
    std::vector<PortSpec> ports_;
    std::vector<PortId> downlink_;
    std::vector<uint32_t> switchIndex_;  // node -> row in routeTable_
    std::vector<Route> routeTable_;
    std::vector<PortId> routePorts_;
};

}  // namespace homa::sim
