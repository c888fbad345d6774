#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "sim/event_queue.h"
#include "sim/host.h"
#include "sim/topology.h"

namespace homa::sim {

inline constexpr Time kForever = std::numeric_limits<Time>::max();

// Applied when a packet reaches its destination host, after it has used
// every link on its path.
struct Faults {
    double loss = 0;       // probability the packet is dropped
    double duplicate = 0;  // probability a second copy is delivered too
    double reorder = 0;    // probability a packet gets an extra delay
    Time reorderDelay = 0;  // max extra delay for reordered packets (uniform in [1, max])
    Time jitter = 0;       // uniform extra delay in [0, jitter] on every delivery
    double corrupt = 0;    // probability 1-3 distinct random bytes are flipped
};

// Invariant once idle: sent + duplicated == delivered + lost + partitionDropped
//   + crashDropped + queueDropped + noHostDropped.
struct Stats {
    uint64_t sent = 0;
    uint64_t delivered = 0;  // onPacket calls, duplicates included
    uint64_t lost = 0;
    uint64_t duplicated = 0;
    uint64_t reordered = 0;
    uint64_t corrupted = 0;
    uint64_t partitionDropped = 0;
    uint64_t crashDropped = 0;   // to or from a crashed host
    uint64_t queueDropped = 0;   // drop-tail at a full port
    uint64_t noHostDropped = 0;  // destination id has no Host attached
};

struct PortStats {
    uint64_t txPackets = 0;  // counted when serialisation starts
    uint64_t txBytes = 0;    // wire bytes, overhead included
    uint64_t queuedBytes = 0;  // waiting, excluding the packet on the wire
    uint64_t maxQueueBytes = 0;
    uint64_t queueDropped = 0;
    bool busy = false;
};

class Network {
public:
    Network(uint64_t seed, Topology topology);
    Network(uint64_t seed, const TopologyConfig& config);
    ~Network();
    Network(const Network&) = delete;
    Network& operator=(const Network&) = delete;

    const Topology& topology() const { return topo_; }
    uint32_t numHosts() const { return topo_.numHosts(); }
    uint64_t seed() const { return seed_; }

    // Hosts: attach(Host*) takes the lowest id with no host; attach(id, h)
    // requires the id to be free. replaceHost swaps the object silently.
    HostId attach(Host* host);
    void attach(HostId id, Host* host);
    void replaceHost(HostId id, Host* host);
    Host* host(HostId id) const { return hosts_.at(id).host; }

    // header and payload are copied into one packet and queued at src's NIC.
    void send(HostId src, HostId dst, uint8_t priority, std::span<const uint8_t> header,
              std::span<const uint8_t> payload = {});
    // Earliest pending request per host wins; t <= now runs at now, after
    // the current event.
    void wakeAt(HostId h, Time t);
    // t < now is treated as now.
    void at(Time t, std::function<void()> fn);

    Time now() const { return now_; }
    // Events dispatched so far (stale wake-ups excluded).
    uint64_t eventsProcessed() const { return eventsProcessed_; }
    bool step();
    // Runs every event with time <= t, then advances the clock to t.
    void runUntil(Time t);
    // Runs events while some exist at time <= limit; true if none remain.
    bool runUntilIdle(Time limit = kForever);
    bool idle() const { return liveEvents() == 0; }
    size_t liveEvents() const { return events_.size() - staleEvents_; }

    void setFaults(const Faults& f);
    void setFaults(HostId dst, const Faults& f);  // overrides the global set
    void clearFaults(HostId dst);
    const Faults& faults() const { return globalFaults_; }
    // Drops packets between a and b, both directions, arriving in [from, until).
    void partition(HostId a, HostId b, Time from, Time until);
    // No packets or wakeups reach the host; its NIC queue is flushed and its
    // sends are dropped until restart. A packet already on the wire continues.
    void crash(HostId h);
    void restart(HostId h, Host* newHost);
    bool crashed(HostId h) const { return hosts_.at(h).crashed; }

    const Stats& stats() const { return stats_; }
    PortStats portStats(PortId p) const;
    uint64_t maxQueueBytes(PortId p) const { return ports_.at(p).maxQueueBytes; }
    void setQueueLimit(PortId p, uint64_t bytes) { ports_.at(p).limit = bytes; }

    // Order-sensitive hash of every delivery (time, src, dst, seq, bytes).
    uint64_t traceHash() const { return traceHash_; }
    // Hashing payloads costs time in large runs; off leaves traceHash fixed.
    void setTraceHashing(bool on) { hashTrace_ = on; }

    Time minOneWay(HostId src, HostId dst, uint64_t bytes) const {
        return topo_.minOneWay(src, dst, bytes);
    }

private:
    static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
    static constexpr uint32_t kChunkBits = 10;
    static constexpr uint32_t kChunkSize = 1u << kChunkBits;

    enum EventKind : uint32_t { kTxDone, kArrive, kDeliver, kWakeup, kCallback };

    struct Slot {
        Packet pkt;
        uint32_t next = kNone;  // free list or port FIFO link
    };

    struct PortState {
        uint32_t head[kNumPriorities];
        uint32_t tail[kNumPriorities];
        uint8_t nonEmpty = 0;  // bit i set when priority i has packets
        // A port with an empty queue needs no completion event: the arrival at
        // the far end is scheduled when transmission starts. kTxDone is only
        // scheduled while packets wait, which roughly halves events per hop.
        bool txEventPending = false;
        LinkClock clock;  // seen busy until clock.until
        NodeId to = 0;
        Time hopDelay = 0;  // propagation + switch delay at `to`
        uint64_t mbps = 0;
        uint64_t limit = 0;
        bool fifo = false;  // one queue for every priority (a host NIC with fifoNics)
        uint64_t queuedBytes = 0;
        uint64_t maxQueueBytes = 0;
        uint64_t txPackets = 0;
        uint64_t txBytes = 0;
        uint64_t dropped = 0;
    };

    struct HostState {
        Host* host = nullptr;
        bool crashed = false;
        bool ownFaults = false;
        Time pendingWake = kForever;
        uint32_t wakeGen = 0;
        Faults faults;
    };

    struct Partition {
        HostId a, b;
        Time from, until;
    };

    Slot& slot(uint32_t i) { return (*chunks_[i >> kChunkBits])[i & (kChunkSize - 1)]; }
    uint32_t allocSlot();
    void freeSlot(uint32_t i);
    uint32_t cloneSlot(uint32_t i);

    bool dispatch(const Event& e);
    void enqueue(PortId p, uint32_t pkt);
    // `queued`: the packet waited for the one before it and starts exactly at its end.
    void startTx(PortState& ps, uint32_t pkt, bool queued);
    void onTxDone(PortId p);
    void flushQueues(PortState& ps);
    void onArrive(NodeId n, uint32_t pkt);
    void hostArrive(uint32_t pkt);
    void deliver(uint32_t pkt);
    void corrupt(Packet& p);
    bool partitioned(HostId src, HostId dst) const;
    uint64_t wireBytes(const Packet& p) const { return p.bytes.size() + overhead_; }
    void checkHost(HostId h) const;

    double uniform01();
    uint64_t bounded(std::mt19937_64& rng, uint64_t n);

    uint64_t seed_;
    Topology topo_;
    uint32_t overhead_;
    Time now_ = 0;
    EventQueue events_;
    size_t staleEvents_ = 0;
    uint64_t nextSeq_ = 0;
    uint64_t eventsProcessed_ = 0;

    // Fixed-size chunks allocated with scalar new: array new is left to message buffers
    // (homa-sim maps large array allocations onto shared pages).
    std::vector<std::unique_ptr<std::array<Slot, kChunkSize>>> chunks_;
    uint32_t freeSlots_ = kNone;
    uint32_t slotCount_ = 0;

    std::vector<PortState> ports_;
    std::vector<HostState> hosts_;
    uint32_t attachCursor_ = 0;

    std::vector<std::function<void()>> callbacks_;
    std::vector<uint32_t> freeCallbacks_;

    Faults globalFaults_;
    std::vector<Partition> partitions_;
    std::mt19937_64 faultRng_;
    std::mt19937_64 sprayRng_;

    Stats stats_;
    uint64_t traceHash_ = 0;
    bool hashTrace_ = true;
};

}  // namespace homa::sim
