// homa-sim: the protocol engine on a simulated datacenter network, driven by a workload
// (W1-W5) with Poisson arrivals, measuring the slowdown of one-way messages.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/config.h"
#include "sim/topology.h"
#include "workload/workload.h"

namespace homa::simtool {

struct SimOptions {
    // ---- Traffic
    std::string workload = "w4";  ///< w1..w5 or a distribution file
    uint32_t fixedSize = 0;       ///< > 0: every message has this size (workload ignored)
    /// Fraction of host link bandwidth taken by DATA packets on the wire (headers and
    /// framing included): each message and its 1-byte response.
    double load = 0.5;
    uint64_t seed = 1;
    double durationMs = 10;       ///< messages arrive during [0, duration)
    double warmupMs = -1;         ///< not measured before this; < 0: 10% of the duration
    uint64_t messages = 0;        ///< > 0: measure at most this many messages
    /// After the duration, wait this long at most for the measured messages; those
    /// unfinished then are incomplete, whatever settling does afterwards. < 0: = duration.
    double drainMs = -1;
    /// Only this host sends (and then at most `messages` one at a time, each on an idle
    /// network). -1: every host sends.
    int soloSender = -1;
    int soloReceiver = -1;        ///< with soloSender: the destination (-1: random)
    uint32_t buckets = 10;        ///< size buckets at quantiles of the message-count CDF

    // ---- Network
    std::string topology = "twotier";  ///< twotier or star
    uint32_t racks = 9, hostsPerRack = 16, aggSwitches = 4;
    uint32_t hosts = 16;  ///< star only
    double hostGbps = 10, aggGbps = 40;
    int64_t linkLatencyNs = 100;
    int64_t switchDelayNs = 250;
    int64_t hostDelayNs = 1000;
    uint32_t wireOverheadBytes = 66;  ///< Ethernet + IP + UDP framing, preamble, gap
    uint64_t switchQueueLimitBytes = 0;  ///< 0: unlimited
    /// Host NICs send in the order the engine hands them packets (one FIFO); default: 8
    /// strict-priority queues like the switch ports.
    bool fifoNics = false;

    // ---- Homa (0 / -1 / empty: derived, see derive())
    uint32_t rttBytes = 0;       ///< bytes of one round trip; 0: from the topology
    uint32_t unschedBytes = 0;   ///< 0: rttBytes
    int unschedPriorities = 0;   ///< 0: from the workload's share of unscheduled bytes
    int overcommit = 0;          ///< 0: the number of scheduled priorities
    uint32_t window = 0;         ///< bytes granted ahead per message; 0: rttBytes
    uint32_t maxIncoming = 0;    ///< 0: overcommit * window
    std::vector<uint32_t> cutoffs;  ///< explicit unscheduled cutoffs, highest priority first
    double grantFifoFraction = 0.05;
    double pacerFifoFraction = 0.05;
    int64_t maxNicQueueNs = 2000;
    /// The link rate the engines' pacers assume, as a fraction of the host link rate.
    double pacerRate = 1.0;
    int64_t tickUs = 1000;
    int resendTicks = 5;
    int timeoutTicks = 100;
    int timerPacketsPerPeer = 16;

    bool traceHash = false;  ///< hash every delivered packet (slower) and report it
    /// At the end, stop arrivals and run until every engine is idle, so that every
    /// message started (measured or not) is accounted for. Nothing finishing then is
    /// measured: the drain limit has passed.
    bool settle = true;
};

/// Parameters derived from the options: what the engines really run with.
struct Derived {
    sim::TopologyConfig topo;
    engine::Config engine;
    workload::Distribution dist = workload::Distribution::fixed(1);
    uint32_t rttBytes = 0;
    int64_t rttNs = 0;
    int unschedLevels = 0;
    double meanWireBytes = 0;  ///< per message, its response included
    double arrivalsPerSecPerHost = 0;
    std::vector<uint32_t> bucketBounds;
};

/// One-line reason in *error when the options are inconsistent.
std::optional<Derived> derive(const SimOptions& o, std::string* error);

/// Largest message homa-sim simulates (sizes near 4 GB wrapped 32-bit arithmetic).
inline constexpr uint32_t kMaxSimMessageBytes = 1'000'000'000;
/// Largest framing per packet (--wire-overhead); real framing is tens of bytes, and
/// sums of near 4 GB wrapped 32-bit arithmetic.
inline constexpr uint32_t kMaxWireOverheadBytes = 65'535;
/// Most (switch, host) routes a network may need (8 bytes each).
inline constexpr uint64_t kMaxRouteEntries = 200'000'000;
/// Nearest-rank percentile `p` (0-100] of sorted values (0 for none).
double nearestRank(const std::vector<double>& sorted, double p);

/// Cutoffs (engine layout, index = priority) giving each of `levels` unscheduled levels an
/// equal share of the unscheduled bytes; smaller messages get higher levels.
std::array<uint32_t, 8> deriveCutoffs(const workload::Distribution& d, uint32_t unschedBytes, int levels);

/// Completion time of a `bytes` message alone on an idle network (src -> dst): every
/// DATA packet through store-and-forward hops, the sender's NIC never idle, the packets
/// taking the parallel ways across the fabric in turn; the message moves at the rate of
/// the slowest link on its path.
int64_t idealOneWay(const sim::Topology& t, const engine::Config& c, uint32_t src, uint32_t dst,
                    uint32_t bytes);

struct BucketStats {
    uint32_t maxSize = 0;
    uint64_t count = 0;
    double mean = 0, p50 = 0, p99 = 0, p999 = 0, min = 0, max = 0;
};

struct PortClassStats {
    std::string name;
    uint32_t ports = 0;
    uint64_t maxQueueBytes = 0;     ///< the largest any port of the class reached
    double meanMaxQueueBytes = 0;   ///< the mean of the ports' maxima
    uint64_t txBytes = 0;
};

struct Results {
    // message accounting
    uint64_t generated = 0;     ///< messages started (measured or not)
    uint64_t measured = 0;      ///< started inside the measurement window (refused ones too)
    uint64_t completed = 0;     ///< measured and delivered to the receiver
    uint64_t failed = 0;        ///< measured and failed (refused, or the engine reported an error)
    uint64_t incomplete = 0;    ///< measured, neither delivered nor failed by the drain limit
    uint64_t refused = 0;       ///< startRequest refused (out of buffers...), all messages
    uint64_t unmeasuredFailed = 0;
    uint64_t duplicateDeliveries = 0;  ///< a request delivered twice (must stay 0)
    // every message, measured or not: generated == delivered + failedAll + refused + pendingAtEnd
    uint64_t deliveredAll = 0;
    uint64_t failedAll = 0;
    uint64_t pendingAtEnd = 0;
    double measuredBytes = 0;
    int64_t endNs = 0;
    std::vector<BucketStats> buckets;
    BucketStats all;
    std::vector<PortClassStats> portClasses;
    std::vector<uint64_t> portMaxQueueBytes;  ///< every port
    // engine counters summed over hosts
    std::vector<std::pair<std::string, uint64_t>> counters;
    // network
    uint64_t packetsSent = 0, packetsDelivered = 0, queueDropped = 0, otherDropped = 0;
    bool networkIdle = false;  ///< no packet in flight and no engine waiting for time
    uint64_t events = 0;
    uint64_t traceHash = 0;
};

class Simulation {
  public:
    Simulation(const SimOptions& o, Derived d);
    Results run();
    const Derived& derived() const { return d_; }
    /// Called every 100 us of simulated time (e.g. to sample memory use).
    void setStepHook(std::function<void()> hook) { hook_ = std::move(hook); }

  private:
    SimOptions o_;
    Derived d_;
    std::function<void()> hook_;
};

/// Output (deterministic for a seed: no wall-clock figures).
std::string toText(const SimOptions& o, const Derived& d, const Results& r);
std::string toCsv(const Results& r);
std::string toJson(const SimOptions& o, const Derived& d, const Results& r);

/// P99 slowdown against size for several JSON result files, through gnuplot.
int plot(const std::vector<std::string>& inputs, const std::string& output, const std::string& title,
         std::string* error);

}  // namespace homa::simtool
