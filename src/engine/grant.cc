// The grant scheduler: the receiver decides which incoming messages may send scheduled
// bytes, how many, and at which priority.
//
// Grantable messages are kept per peer in SRPT order (fewest ungranted bytes, then
// oldest), and peers are kept ordered by their best message, so a decision walks only
// the peers it grants to: O(max_overcommit · log n), never all RPCs. Decisions are made
// once per batch of packets (finishBatch), not per packet.
#include <algorithm>
#include <cassert>

#include "engine/engine.h"

namespace homa::engine {

bool Engine::isGrantable(const Rpc* rpc) const {
    const InMessage& in = rpc->in;
    return in.started && !in.waitingForBuffer && in.granted < in.length && rpc->peer != nullptr;
}

void Engine::addGrantable(Rpc* rpc) {
    Peer* peer = rpc->peer;
    if (!peer->grantable.empty()) grantPeers_.erase(grantPeers_.iterator_to(*peer));
    peer->grantable.insert(*rpc);
    grantPeers_.insert(*peer);
    grantFifo_.insert(*rpc);
    grantsDirty_ = true;
}

void Engine::removeGrantable(Rpc* rpc) {
    if (!rpc->grantHook.is_linked()) return;
    Peer* peer = rpc->peer;
    grantPeers_.erase(grantPeers_.iterator_to(*peer));
    peer->grantable.erase(peer->grantable.iterator_to(*rpc));
    if (!peer->grantable.empty()) grantPeers_.insert(*peer);
    grantFifo_.erase(grantFifo_.iterator_to(*rpc));
    grantsDirty_ = true;
}

// Re-files an RPC after its grant state changed.
void Engine::updateGrantable(Rpc* rpc) {
    removeGrantable(rpc);
    if (isGrantable(rpc)) addGrantable(rpc);
}

// Keeps incomingOutstanding_ = sum over messages of (granted - received).
void Engine::recountIncoming(Rpc* rpc) {
    const InMessage& in = rpc->in;
    uint32_t now = (!in.waitingForBuffer && in.granted > in.received) ? in.granted - in.received : 0;
    incomingOutstanding_ = incomingOutstanding_ - in.counted + now;
    rpc->in.counted = now;
}

void Engine::sendGrant(Rpc* rpc, uint32_t newGranted, uint8_t priority) {
    InMessage& in = rpc->in;
    uint32_t added = newGranted - in.granted;
    in.granted = newGranted;
    in.priority = priority;
    recountIncoming(rpc);
    updateGrantable(rpc);
    m_.grantedBytes += added;
    ++m_.grantsSent;

    wire::CommonHeader c;
    c.sport = cfg_.port;
    c.dport = rpc->peer->address.port;
    c.senderId = rpc->id;
    wire::GrantHeader g{newGranted, priority};
    size_t n = wire::encodeGrant(scratch_, c, g);
    countSent(wire::PacketType::Grant, cfg_.controlPriority, n);
    HOMA_TRACE(kTraceSend[EngineMetrics::typeIndex(wire::PacketType::Grant)], rpc->id, newGranted, priority);
    sink_.transmit(rpc->peer->address, cfg_.controlPriority, std::span(scratch_.data(), n), {});
}

// Whether the grant sets are sorted by their keys as they stand (a key changed while its
// RPC was filed leaves a set out of order: SRPT then picks the wrong messages). For
// asserts: linear in the grantable messages.
bool Engine::grantSetsInOrder() const {
    if (!std::is_sorted(grantPeers_.begin(), grantPeers_.end(), GrantPeerOrder{})) return false;
    for (const Peer& peer : grantPeers_)
        if (!std::is_sorted(peer.grantable.begin(), peer.grantable.end(), GrantOrder{})) return false;
    return true;
}

void Engine::decideGrants(Time now) {
    (void)now;
    if (!grantsDirty_) return;
    grantsDirty_ = false;
    assert(grantSetsInOrder());
    activeScratch_.clear();
    // The active set: the best messages (SRPT order), at most maxRpcsPerPeer from any one
    // peer, kept sorted so that rank follows order. Peers come in the order of their best
    // message: once the set is full and a peer's best is no better than the set's worst,
    // no later peer has a better one. (A peer's second-best message may be worse than a
    // later peer's best: with maxRpcsPerPeer above 1 a message taken may be displaced.)
    const size_t cap = static_cast<size_t>(cfg_.maxOvercommit);
    const auto better = [](const Rpc* a, const Rpc* b) { return GrantOrder{}(*a, *b); };
    for (Peer& peer : grantPeers_) {
        if (activeScratch_.size() == cap && !better(&*peer.grantable.begin(), activeScratch_.back())) break;
        int taken = 0;
        for (Rpc& rpc : peer.grantable) {
            if (taken == cfg_.maxRpcsPerPeer) break;
            if (activeScratch_.size() == cap) {
                if (!better(&rpc, activeScratch_.back())) break;  // (its peer's later ones are worse still)
                activeScratch_.pop_back();
            }
            activeScratch_.insert(std::upper_bound(activeScratch_.begin(), activeScratch_.end(), &rpc, better), &rpc);
            ++taken;
        }
    }
    const int n = static_cast<int>(activeScratch_.size());
    lastActiveCount_ = n;
    HOMA_TRACE("grant decision active %u outstanding %u", n, incomingOutstanding_);
    if (n == 0) return;

    const uint32_t window = cfg_.window ? cfg_.window : cfg_.maxIncoming / static_cast<uint32_t>(n + 1);
    const uint64_t minGrant = std::min(cfg_.maxPayload, window);
    const int levels = maxSchedPriority_ + 1;
    uint64_t grantedNow = 0;
    for (int k = 0; k < n; ++k) {
        Rpc* rpc = activeScratch_[static_cast<size_t>(k)];
        InMessage& in = rpc->in;
        // Rank k gets the k-th highest scheduled level; with fewer active messages than
        // levels, use the lowest ones so that newly arriving shorter messages can preempt.
        int priority = n < levels ? n - 1 - k : maxSchedPriority_ - k;
        if (priority < 0) priority = 0;
        uint64_t target = std::min<uint64_t>(in.length, uint64_t{in.received} + window);
        if (target <= in.granted) continue;
        uint64_t room = cfg_.maxIncoming > incomingOutstanding_ ? cfg_.maxIncoming - incomingOutstanding_ : 0;
        uint64_t increment = std::min<uint64_t>(target - in.granted, room);
        // Avoid dribbles of sub-packet grants unless they finish the message, or the
        // window itself is less than a packet (then a grant of the whole window, which
        // the sender rounds up to a packet, is the most there will ever be room for).
        if (increment == 0 || (increment < minGrant && in.granted + increment < in.length)) continue;
        grantedNow += increment;
        sendGrant(rpc, static_cast<uint32_t>(in.granted + increment), static_cast<uint8_t>(priority));
    }

    // Against starvation: a fraction of granted bytes goes to the oldest message whose
    // sender has used what it was granted. (A message still owed a fifoGrantIncrement
    // or more is passed over: its sender is slow, or gone, and FIFO grants piled on it
    // would fill maxIncoming, which they do not count against, and stop every grant
    // until it timed out.) The credit is spent when it reaches one increment, or dropped
    // if no message may have it: credit saved up while there was nothing to grant would
    // later come out in a burst, far above the fraction.
    if (cfg_.grantFifoFraction > 0 && grantedNow > 0) {
        fifoGrantCredit_ += static_cast<double>(grantedNow) * cfg_.grantFifoFraction /
                            (1.0 - cfg_.grantFifoFraction);
        if (fifoGrantCredit_ >= cfg_.fifoGrantIncrement) {
            Rpc* oldest = nullptr;
            int looked = 0;
            for (Rpc& rpc : grantFifo_) {
                if (++looked > kFifoGrantCandidates) break;
                if (rpc.in.granted - rpc.in.received < cfg_.fifoGrantIncrement) {
                    oldest = &rpc;
                    break;
                }
            }
            if (oldest == nullptr) {
                fifoGrantCredit_ = 0;
                return;
            }
            InMessage& in = oldest->in;
            uint32_t target = static_cast<uint32_t>(
                std::min<uint64_t>(in.length, uint64_t{in.granted} + cfg_.fifoGrantIncrement));
            fifoGrantCredit_ = std::max(0.0, fifoGrantCredit_ - (target - in.granted));
            m_.fifoGrantBytes += target - in.granted;
            HOMA_TRACE("grant fifo id %u bytes %u", oldest->id, target - in.granted);
            sendGrant(oldest, target, static_cast<uint8_t>(maxSchedPriority_));
        }
    }
}

}  // namespace homa::engine
