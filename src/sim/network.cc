#include "sim/network.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace homa::sim {

namespace {

uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t fmix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

void absorb(uint64_t& h, uint64_t v) { h = fmix(h * 0x9e3779b97f4a7c15ULL + v + 1); }

uint64_t load64(const uint8_t* d) {
    uint64_t w;
    std::memcpy(&w, d, 8);
    return w;
}

// Four independent multiply-rotate lanes keep payload hashing off the
// critical path of large runs; fmix at the end spreads every bit.
uint64_t hashBytes(const uint8_t* d, size_t n) {
    constexpr uint64_t kMul = 0x9fb21c651e98df25ULL;
    uint64_t lane[4] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL, 0xa4093822299f31d0ULL,
                        0x082efa98ec4e6c89ULL};
    auto mixIn = [](uint64_t l, uint64_t w) { return std::rotl((l ^ w) * kMul, 29); };
    for (; n >= 32; n -= 32, d += 32) {
        for (int k = 0; k < 4; ++k) lane[k] = mixIn(lane[k], load64(d + 8 * k));
    }
    int k = 0;
    for (; n >= 8; n -= 8, d += 8, ++k) lane[k] = mixIn(lane[k], load64(d));
    if (n > 0) {
        uint64_t w = 0;
        std::memcpy(&w, d, n);
        lane[k] = mixIn(lane[k], w ^ (static_cast<uint64_t>(n) << 56));
    }
    return fmix(lane[0] ^ fmix(lane[1] ^ fmix(lane[2] ^ fmix(lane[3]))));
}

void validate(const Faults& f) {
    auto prob = [](double p) { return p >= 0.0 && p <= 1.0; };
    if (!prob(f.loss) || !prob(f.duplicate) || !prob(f.reorder) || !prob(f.corrupt)) {
        throw std::invalid_argument("sim: fault probabilities must be in [0, 1]");
    }
    if (f.reorderDelay < 0 || f.jitter < 0) {
        throw std::invalid_argument("sim: fault delays must be >= 0");
    }
}

}  // namespace

Network::Network(uint64_t seed, const TopologyConfig& config)
    : Network(seed, Topology::build(config)) {}

Network::Network(uint64_t seed, Topology topology)
    : seed_(seed),
      topo_(std::move(topology)),
      overhead_(topo_.wireOverheadBytes()),
      // Independent streams so changing fault settings does not perturb routing.
      faultRng_(splitmix(seed)),
      sprayRng_(splitmix(seed ^ 0x5eed5eed5eed5eedULL)) {
    ports_.resize(topo_.numPorts());
    for (PortId p = 0; p < topo_.numPorts(); ++p) {
        const PortSpec& spec = topo_.port(p);
        PortState& ps = ports_[p];
        for (uint8_t i = 0; i < kNumPriorities; ++i) ps.head[i] = ps.tail[i] = kNone;
        ps.to = spec.to;
        const NodeSpec& next = topo_.node(spec.to);
        ps.hopDelay = spec.latency + (next.kind == NodeKind::Host ? 0 : next.switchDelay);
        ps.mbps = linkMbps(spec.gbps);
        ps.limit = spec.queueLimitBytes;
        ps.fifo = topo_.config().fifoNics && topo_.node(spec.from).kind == NodeKind::Host;
    }
    hosts_.resize(topo_.numHosts());
    events_.reserve(1024);
}

Network::~Network() = default;

// ---------------------------------------------------------------- packet pool

uint32_t Network::allocSlot() {
    if (freeSlots_ != kNone) {
        const uint32_t i = freeSlots_;
        freeSlots_ = slot(i).next;
        slot(i).next = kNone;
        return i;
    }
    if ((slotCount_ & (kChunkSize - 1)) == 0) {
        // Chunks never move, so a Packet& handed to onPacket stays valid even
        // if the callback sends enough to grow the pool.
        chunks_.push_back(std::make_unique<std::array<Slot, kChunkSize>>());
    }
    return slotCount_++;
}

void Network::freeSlot(uint32_t i) {
    Slot& s = slot(i);
    s.pkt.bytes.clear();  // keep capacity for reuse
    s.next = freeSlots_;
    freeSlots_ = i;
}

uint32_t Network::cloneSlot(uint32_t i) {
    const uint32_t c = allocSlot();
    const Packet& src = slot(i).pkt;
    Packet& dst = slot(c).pkt;
    dst.src = src.src;
    dst.dst = src.dst;
    dst.priority = src.priority;
    dst.seq = src.seq;
    dst.bytes.assign(src.bytes.begin(), src.bytes.end());
    return c;
}

// ---------------------------------------------------------------- hosts

void Network::checkHost(HostId h) const {
    if (h >= hosts_.size()) throw std::out_of_range("sim: host id out of range");
}

HostId Network::attach(Host* host) {
    while (attachCursor_ < hosts_.size() && hosts_[attachCursor_].host != nullptr) {
        ++attachCursor_;
    }
    if (attachCursor_ >= hosts_.size()) throw std::length_error("sim: all host ids are taken");
    hosts_[attachCursor_].host = host;
    return attachCursor_;
}

void Network::attach(HostId id, Host* host) {
    checkHost(id);
    if (hosts_[id].host != nullptr) throw std::logic_error("sim: host id already attached");
    hosts_[id].host = host;
}

void Network::replaceHost(HostId id, Host* host) {
    checkHost(id);
    hosts_[id].host = host;
}

// ---------------------------------------------------------------- API

void Network::send(HostId src, HostId dst, uint8_t priority, std::span<const uint8_t> header,
                   std::span<const uint8_t> payload) {
    checkHost(src);
    checkHost(dst);
    if (priority > kMaxPriority) throw std::invalid_argument("sim: priority must be 0..7");
    ++stats_.sent;
    if (hosts_[src].crashed) {
        ++stats_.crashDropped;
        return;
    }
    const uint32_t i = allocSlot();
    Packet& p = slot(i).pkt;
    p.src = src;
    p.dst = dst;
    p.priority = priority;
    p.seq = ++nextSeq_;
    // The slot's vector is empty but keeps its old capacity: no allocation.
    p.bytes.reserve(header.size() + payload.size());
    p.bytes.insert(p.bytes.end(), header.begin(), header.end());
    p.bytes.insert(p.bytes.end(), payload.begin(), payload.end());
    enqueue(topo_.nicPort(src), i);
}

void Network::wakeAt(HostId h, Time t) {
    checkHost(h);
    HostState& hs = hosts_[h];
    if (hs.crashed) return;
    if (t < now_) t = now_;
    if (t >= hs.pendingWake) return;
    if (hs.pendingWake != kForever) ++staleEvents_;
    hs.pendingWake = t;
    events_.push(t, kWakeup, h, ++hs.wakeGen);
}

void Network::at(Time t, std::function<void()> fn) {
    if (t < now_) t = now_;
    uint32_t idx;
    if (!freeCallbacks_.empty()) {
        idx = freeCallbacks_.back();
        freeCallbacks_.pop_back();
        callbacks_[idx] = std::move(fn);
    } else {
        idx = static_cast<uint32_t>(callbacks_.size());
        callbacks_.push_back(std::move(fn));
    }
    events_.push(t, kCallback, idx, 0);
}

bool Network::step() {
    while (!events_.empty()) {
        const Event e = events_.pop();
        now_ = e.time;
        if (dispatch(e)) return true;
    }
    return false;
}

void Network::runUntil(Time t) {
    while (!events_.empty() && events_.top().time <= t) {
        const Event e = events_.pop();
        now_ = e.time;
        dispatch(e);
    }
    if (now_ < t) now_ = t;
}

bool Network::runUntilIdle(Time limit) {
    while (liveEvents() > 0 && events_.top().time <= limit) {
        const Event e = events_.pop();
        now_ = e.time;
        dispatch(e);
    }
    return idle();
}

// ---------------------------------------------------------------- faults

void Network::setFaults(const Faults& f) {
    validate(f);
    globalFaults_ = f;
}

void Network::setFaults(HostId dst, const Faults& f) {
    checkHost(dst);
    validate(f);
    hosts_[dst].faults = f;
    hosts_[dst].ownFaults = true;
}

void Network::clearFaults(HostId dst) {
    checkHost(dst);
    hosts_[dst].faults = Faults{};
    hosts_[dst].ownFaults = false;
}

void Network::partition(HostId a, HostId b, Time from, Time until) {
    checkHost(a);
    checkHost(b);
    partitions_.push_back(Partition{a, b, from, until});
}

bool Network::partitioned(HostId src, HostId dst) const {
    for (const Partition& p : partitions_) {
        if (now_ < p.from || now_ >= p.until) continue;
        if ((p.a == src && p.b == dst) || (p.a == dst && p.b == src)) return true;
    }
    return false;
}

void Network::crash(HostId h) {
    checkHost(h);
    HostState& hs = hosts_[h];
    if (hs.crashed) return;
    hs.crashed = true;
    if (hs.pendingWake != kForever) {
        hs.pendingWake = kForever;
        ++hs.wakeGen;
        ++staleEvents_;
    }
    flushQueues(ports_[topo_.nicPort(h)]);
}

void Network::restart(HostId h, Host* newHost) {
    checkHost(h);
    hosts_[h].crashed = false;
    hosts_[h].host = newHost;
}

PortStats Network::portStats(PortId p) const {
    const PortState& ps = ports_.at(p);
    return PortStats{ps.txPackets, ps.txBytes, ps.queuedBytes, ps.maxQueueBytes, ps.dropped,
                     now_ < ps.clock.until};
}

double Network::uniform01() {
    return static_cast<double>(faultRng_() >> 11) * 0x1.0p-53;
}

uint64_t Network::bounded(std::mt19937_64& rng, uint64_t n) {
    // Multiply-shift: exact enough and free of libstdc++ distribution details.
    return static_cast<uint64_t>((static_cast<unsigned __int128>(rng()) * n) >> 64);
}

// ---------------------------------------------------------------- engine

bool Network::dispatch(const Event& e) {
    ++eventsProcessed_;
    switch (e.kind) {
        case kTxDone:
            onTxDone(e.a);
            return true;
        case kArrive:
            onArrive(e.a, e.b);
            return true;
        case kDeliver:
            deliver(e.b);
            return true;
        case kWakeup: {
            HostState& hs = hosts_[e.a];
            if (e.b != hs.wakeGen) {  // superseded or cancelled by a crash
                --staleEvents_;
                --eventsProcessed_;
                return false;
            }
            hs.pendingWake = kForever;
            if (hs.host != nullptr) hs.host->onWakeup(now_);
            return true;
        }
        case kCallback: {
            // Move out first: the callback may call at() and grow the vector.
            std::function<void()> fn = std::move(callbacks_[e.a]);
            callbacks_[e.a] = nullptr;
            freeCallbacks_.push_back(e.a);
            fn();
            return true;
        }
    }
    return false;
}

void Network::enqueue(PortId p, uint32_t pkt) {
    PortState& ps = ports_[p];
    if (ps.nonEmpty == 0 && now_ >= ps.clock.until) {
        startTx(ps, pkt, false);
        return;
    }
    Slot& s = slot(pkt);
    const uint64_t wire = wireBytes(s.pkt);
    if (ps.limit != 0 && ps.queuedBytes + wire > ps.limit) {
        ++ps.dropped;
        ++stats_.queueDropped;
        freeSlot(pkt);
        return;
    }
    const uint8_t prio = ps.fifo ? 0 : s.pkt.priority;
    s.next = kNone;
    if (ps.tail[prio] == kNone) {
        ps.head[prio] = pkt;
    } else {
        slot(ps.tail[prio]).next = pkt;
    }
    ps.tail[prio] = pkt;
    ps.nonEmpty |= static_cast<uint8_t>(1u << prio);
    ps.queuedBytes += wire;
    if (ps.queuedBytes > ps.maxQueueBytes) ps.maxQueueBytes = ps.queuedBytes;
    if (!ps.txEventPending) {
        ps.txEventPending = true;
        events_.push(ps.clock.until, kTxDone, p, 0);
    }
}

void Network::startTx(PortState& ps, uint32_t pkt, bool queued) {
    const uint64_t wire = wireBytes(slot(pkt).pkt);
    // Serialisation ends on a fraction of a ns; the next hop sees the packet on the ns
    // after, and a packet waiting behind this one starts at the exact end.
    const Time done = queued && now_ == ps.clock.until ? ps.clock.sendNext(wire, ps.mbps)
                                                       : ps.clock.send(now_, wire, ps.mbps);
    ++ps.txPackets;
    ps.txBytes += wire;
    events_.push(done + ps.hopDelay, kArrive, ps.to, pkt);
}

void Network::onTxDone(PortId p) {
    PortState& ps = ports_[p];
    ps.txEventPending = false;
    if (ps.nonEmpty == 0) return;  // flushed by a crash
    if (now_ >= ps.clock.until) {
        const int prio = std::bit_width(static_cast<unsigned>(ps.nonEmpty)) - 1;
        const uint32_t pkt = ps.head[prio];
        Slot& s = slot(pkt);
        ps.head[prio] = s.next;
        if (s.next == kNone) {
            ps.tail[prio] = kNone;
            ps.nonEmpty &= static_cast<uint8_t>(~(1u << prio));
        }
        s.next = kNone;
        ps.queuedBytes -= wireBytes(s.pkt);
        startTx(ps, pkt, true);
    }
    // Still busy (a crash flush let a new packet start early) or more waiting.
    if (ps.nonEmpty != 0) {
        ps.txEventPending = true;
        events_.push(ps.clock.until, kTxDone, p, 0);
    }
}

void Network::flushQueues(PortState& ps) {
    for (uint8_t prio = 0; prio < kNumPriorities; ++prio) {
        uint32_t i = ps.head[prio];
        while (i != kNone) {
            const uint32_t next = slot(i).next;
            ++stats_.crashDropped;
            freeSlot(i);
            i = next;
        }
        ps.head[prio] = ps.tail[prio] = kNone;
    }
    ps.nonEmpty = 0;
    ps.queuedBytes = 0;
}

void Network::onArrive(NodeId n, uint32_t pkt) {
    if (n < topo_.numHosts()) {
        hostArrive(pkt);
        return;
    }
    const std::span<const PortId> routes = topo_.routes(n, slot(pkt).pkt.dst);
    const PortId out =
        routes.size() == 1 ? routes[0] : routes[bounded(sprayRng_, routes.size())];
    enqueue(out, pkt);
}

void Network::hostArrive(uint32_t pkt) {
    Packet& p = slot(pkt).pkt;
    const HostState& hs = hosts_[p.dst];
    if (hs.crashed) {
        ++stats_.crashDropped;
        freeSlot(pkt);
        return;
    }
    if (!partitions_.empty() && partitioned(p.src, p.dst)) {
        ++stats_.partitionDropped;
        freeSlot(pkt);
        return;
    }
    const Faults& f = hs.ownFaults ? hs.faults : globalFaults_;
    if (f.loss > 0 && uniform01() < f.loss) {
        ++stats_.lost;
        freeSlot(pkt);
        return;
    }
    uint32_t copies[2] = {pkt, kNone};
    if (f.duplicate > 0 && uniform01() < f.duplicate) {
        ++stats_.duplicated;
        copies[1] = cloneSlot(pkt);
    }
    for (uint32_t c : copies) {
        if (c == kNone) continue;
        if (f.corrupt > 0 && uniform01() < f.corrupt && !slot(c).pkt.bytes.empty()) {
            ++stats_.corrupted;
            corrupt(slot(c).pkt);
        }
        Time delay = 0;
        if (f.jitter > 0) delay += static_cast<Time>(bounded(faultRng_, f.jitter + 1));
        if (f.reorder > 0 && f.reorderDelay > 0 && uniform01() < f.reorder) {
            ++stats_.reordered;
            delay += 1 + static_cast<Time>(bounded(faultRng_, f.reorderDelay));
        }
        if (delay == 0) {
            deliver(c);
        } else {
            events_.push(now_ + delay, kDeliver, 0, c);
        }
    }
}

void Network::corrupt(Packet& p) {
    const size_t n = p.bytes.size();
    const size_t flips = std::min<size_t>(1 + bounded(faultRng_, 3), n);
    size_t chosen[3];
    for (size_t k = 0; k < flips; ++k) {
        size_t pos;
        bool fresh;
        do {
            pos = bounded(faultRng_, n);
            fresh = true;
            for (size_t j = 0; j < k; ++j) fresh = fresh && chosen[j] != pos;
        } while (!fresh);
        chosen[k] = pos;
        // A non-zero mask guarantees the byte really changes.
        p.bytes[pos] ^= static_cast<uint8_t>(1 + bounded(faultRng_, 255));
    }
}

void Network::deliver(uint32_t pkt) {
    const Packet& p = slot(pkt).pkt;
    HostState& hs = hosts_[p.dst];
    if (hs.crashed) {
        ++stats_.crashDropped;
    } else if (hs.host == nullptr) {
        ++stats_.noHostDropped;
    } else {
        ++stats_.delivered;
        if (hashTrace_) {
            absorb(traceHash_, static_cast<uint64_t>(now_));
            absorb(traceHash_, (static_cast<uint64_t>(p.src) << 32) | p.dst);
            absorb(traceHash_, p.seq);
            absorb(traceHash_, p.bytes.size());
            absorb(traceHash_, hashBytes(p.bytes.data(), p.bytes.size()));
        }
        Host* h = hs.host;
        h->onPacket(p, now_);
    }
    freeSlot(pkt);
}

}  // namespace homa::sim
