// Application calls, packet dispatch, and the lifetime of RPCs and peers.
#include "engine/engine.h"

#include <cassert>
#include <cstring>
#include <deque>
#include <optional>
#include <stdexcept>

namespace homa::engine {

// Arguments: id (the sender's, as on the wire), then the type's fields. Every format
// starts "send|recv TYPE id N" and, where there is one, "offset M" (see trace/reader.h).
const char* const kTraceSend[EngineMetrics::kTypes] = {
    "send DATA id %u offset %u len %u prio %u", "send GRANT id %u offset %u prio %u",
    "send RESEND id %u offset %u len %u prio %u", "send RPC_UNKNOWN id %u", "send BUSY id %u",
    "send CUTOFFS id %u", "send FREEZE id %u", "send NEED_ACK id %u", "send ACK id %u acks %u first %u",
};
const char* const kTraceRecv[EngineMetrics::kTypes] = {
    "recv DATA id %u offset %u len %u retransmit %u", "recv GRANT id %u offset %u prio %u",
    "recv RESEND id %u offset %u len %u prio %u", "recv RPC_UNKNOWN id %u", "recv BUSY id %u",
    "recv CUTOFFS id %u", "recv FREEZE id %u", "recv NEED_ACK id %u", "recv ACK id %u acks %u first %u",
};

const char* toString(RpcState state) {
    switch (state) {
        case RpcState::Client: return "client";
        case RpcState::ServerIncoming: return "server-incoming";
        case RpcState::ServerInService: return "server-in-service";
        case RpcState::ServerOutgoing: return "server-outgoing";
    }
    return "?";
}

const char* toString(DropReason reason) {
    switch (reason) {
        case DropReason::Malformed: return "malformed";
        case DropReason::WrongPort: return "wrong_port";
        case DropReason::UnknownRpc: return "unknown_rpc";
        case DropReason::StaleRequest: return "stale_request";
        case DropReason::NoBuffer: return "no_buffer";
        case DropReason::PeerTableFull: return "peer_table_full";
        case DropReason::Inconsistent: return "inconsistent";
        case DropReason::Duplicate: return "duplicate";
        case DropReason::Overload: return "overload";
        case DropReason::Scattered: return "scattered";
        case DropReason::Count_: break;
    }
    return "?";
}

}  // namespace homa::engine

namespace homa {
int ProtocolOptions::maxSchedPriority() const {
    int levels = 0;
    while (levels < 8 && unschedCutoffs[static_cast<size_t>(levels)] == 0) ++levels;
    return levels > 0 ? levels - 1 : 0;
}
}  // namespace homa

namespace homa::engine {

std::string Config::validate() const {
    if (maxPayload == 0) return "maxPayload must be positive";
    if (maxMessageLength == 0 || maxMessageLength > kLongestMessage)
        return "maxMessageLength must be in [1, 3,758,096,384] (3.5 GiB, the largest buffer the pools keep)";
    if (!(smallMessageReserve >= 0 && smallMessageReserve <= 0.5)) return "smallMessageReserve must be in [0, 0.5]";
    if (maxBufferBytes - smallBufferReserve() < BufferPool::classSize(maxMessageLength))
        return "maxBufferBytes (less smallMessageReserve) must hold at least one message of maxMessageLength";
    if (maxOutgoingBytes < BufferPool::classSize(maxMessageLength))
        return "maxOutgoingBytes must hold at least one message of maxMessageLength";
    if (maxOvercommit < 1) return "maxOvercommit must be at least 1";
    if (maxRpcsPerPeer < 1) return "maxRpcsPerPeer must be at least 1";
    if (maxIncoming < maxPayload) return "maxIncoming must be at least one packet";
    if (linkMbps == 0) return "linkMbps must be positive";
    if (maxNicQueueNs < 0 || maxNicQueueNs > 1'000'000'000) return "maxNicQueueNs must be in [0, 1 s]";
    if (tickNs <= 0 || tickNs > 60'000'000'000) return "tickNs must be in (0, 60 s]";
    if (unschedBytes == 0) return "unschedBytes must be at least 1 (rounded up to a packet)";
    if (resendTicks < 1 || resendInterval < 1 || timeoutTicks <= resendTicks)
        return "need 1 <= resendTicks < timeoutTicks and resendInterval >= 1";
    if (static_cast<double>(std::max(timeoutTicks, resendInterval)) * static_cast<double>(tickNs) > 1e18)
        return "the timeout and the resend interval (x tickNs) must be at most 1e18 ns";
    if (requestAckTicks < 1 || needAckLimit < 1) return "requestAckTicks and needAckLimit must be >= 1";
    if (timerPacketsPerPeer < 1) return "timerPacketsPerPeer must be at least 1";
    if (!(grantFifoFraction >= 0 && grantFifoFraction < 1) || !(pacerFifoFraction >= 0 && pacerFifoFraction < 1))
        return "FIFO fractions must be in [0, 1)";
    if (grantFifoFraction > 0 && fifoGrantIncrement == 0)
        return "fifoGrantIncrement must be at least 1 when grantFifoFraction is above 0";
    if (controlPriority > 7) return "controlPriority must be 0..7";
    bool anyUnsched = false;
    for (uint32_t c : unschedCutoffs) anyUnsched |= c != 0;
    if (!anyUnsched) return "at least one priority level must carry unscheduled bytes";
    if (maxPeers < 1 || seenIdWindow < 64) return "maxPeers >= 1 and seenIdWindow >= 64";
    return {};
}

Engine::Engine(const Config& config, PacketSink& sink)
    : cfg_(config),
      sink_(sink),
      maxSchedPriority_(config.maxSchedPriority()),
      inPool_(config.maxBufferBytes, config.smallBufferReserve()),
      outPool_(config.maxOutgoingBytes),
      nic_(config.linkMbps),
      nextClientId_(std::max<uint64_t>(2, config.firstClientId & ~uint64_t{1})) {
    std::string error = cfg_.validate();
    if (!error.empty()) throw std::invalid_argument("homa engine config: " + error);
    unschedPackets_ = (uint64_t{cfg_.unschedBytes} + cfg_.maxPayload - 1) / cfg_.maxPayload * cfg_.maxPayload;
    activeScratch_.reserve(static_cast<size_t>(cfg_.maxOvercommit));
}

Engine::~Engine() {
    // Those waiting for their turn first: then freeing one under way starts none.
    for (auto& [address, peer] : peers_)
        while (!peer->waitingToStart.empty()) freeRpc(&peer->waitingToStart.front());
    while (!allRpcs_.empty()) freeRpc(&allRpcs_.front());
    while (!inServiceRpcs_.empty()) freeRpc(&inServiceRpcs_.front());
    peersDeferring_.clear();
    idlePeers_.clear();
    peersWithAcks_.clear();
    peersAckDue_.clear();
}

Time Engine::clamp(Time now) {
    // The engine's time never goes backwards, whatever its callers' clocks do.
    if (now < lastNow_) return lastNow_;
    lastNow_ = now;
    return now;
}

// ---------------------------------------------------------------- peers

Peer* Engine::findPeerInTable(const Address& address) {
    auto it = peers_.find(address);
    if (it == peers_.end()) return nullptr;
    lastPeer_ = it->second.get();
    return lastPeer_;
}

Peer* Engine::getPeer(const Address& address, Time now) {
    if (Peer* p = findPeer(address)) {
        touchPeer(p, now);
        return p;
    }
    // At the hard cap: evict the least recently used peer without RPCs, but only one
    // idle for peerIdleNs. A peer holds the ids it was served (at-most-once); evicting
    // it early would let a late copy of a finished request run again.
    const bool atCap = peers_.size() >= cfg_.maxPeers;
    if (atCap && (idlePeers_.empty() || now - idlePeers_.front().lastUsed < cfg_.peerIdleNs)) return nullptr;
    // Known before and forgotten: what it was served stays served. The record is taken
    // before the eviction, whose own record may push the oldest out of their bounded
    // store, and the oldest may be this one.
    uint64_t servedUpTo = 0;
    if (auto it = forgottenPeers_.find(address); it != forgottenPeers_.end()) {
        servedUpTo = it->second.highest;
        forgottenPeers_.erase(it);
    }
    if (atCap) evictPeer(&idlePeers_.front());
    auto peer = std::make_unique<Peer>();
    peer->address = address;
    peer->serial = nextSerial_++;
    peer->cutoffs = cfg_.unschedCutoffs;  // until the peer tells us its own
    peer->lastUsed = now;
    if (servedUpTo != 0) {
        peer->seen = std::make_unique<SeenIds>(cfg_.seenIdWindow);
        peer->seen->seenUpTo(servedUpTo);
    }
    Peer* p = peer.get();
    peers_.emplace(address, std::move(peer));
    idlePeers_.push_back(*p);
    ++m_.peersCreated;
    return p;
}

void Engine::touchPeer(Peer* peer, Time now) {
    peer->lastUsed = now;
    if (peer->lruHook.is_linked()) {
        idlePeers_.erase(idlePeers_.iterator_to(*peer));
        idlePeers_.push_back(*peer);
    }
}

void Engine::evictPeer(Peer* peer) {
    if (!peer->pendingAcks.empty()) sendAckPacket(peer, 0);
    if (peer->acksHook.is_linked()) peersWithAcks_.erase(peersWithAcks_.iterator_to(*peer));
    if (peer->ackDueHook.is_linked()) peersAckDue_.erase(peersAckDue_.iterator_to(*peer));
    if (peer->lruHook.is_linked()) idlePeers_.erase(idlePeers_.iterator_to(*peer));
    ++m_.peersEvicted;
    if (lastPeer_ == peer) lastPeer_ = nullptr;
    // At-most-once outlives the peer: the highest id it was served stays behind, so that
    // a request of that client that comes back later (a client paused for longer than
    // peerIdleNs asks about its RPC) is not run a second time: the peer made anew counts
    // the id as used (its RESEND gets RPC_UNKNOWN flagged "id used").
    if (peer->seen && peer->seen->highest() != 0) rememberServedIds(peer->address, peer->seen->highest());
    peers_.erase(peer->address);
}

void Engine::rememberServedIds(const Address& address, uint64_t highest) {
    const uint64_t generation = ++forgottenGeneration_;
    forgottenPeers_[address] = {highest, generation};
    forgottenOrder_.emplace_back(address, generation);
    // Bounded like the peer table: at most maxPeers records, the oldest dropped first.
    // The order also holds entries of records since taken back (the peer returned) or
    // replaced, which hold nothing and must not count: they are skipped at the front,
    // and cleared out all at once when they outnumber the records.
    auto live = [&](const std::pair<Address, uint64_t>& e) {
        auto it = forgottenPeers_.find(e.first);
        return it != forgottenPeers_.end() && it->second.generation == e.second;
    };
    if (forgottenOrder_.size() > 2 * forgottenPeers_.size() + 16)
        std::erase_if(forgottenOrder_, [&](const auto& e) { return !live(e); });
    while (forgottenPeers_.size() > cfg_.maxPeers) {
        const auto oldest = forgottenOrder_.front();
        forgottenOrder_.pop_front();
        if (live(oldest)) forgottenPeers_.erase(oldest.first);
    }
}

// ---------------------------------------------------------------- RPC lifetime

Rpc* Engine::newRpc(Peer* peer, uint64_t id, RpcState state, Time now) {
    Rpc* rpc;
    if (!freeRpcs_.empty()) {
        rpc = freeRpcs_.back();
        freeRpcs_.pop_back();
    } else {
        rpcStorage_.push_back(std::make_unique<Rpc>());
        rpc = rpcStorage_.back().get();
    }
    rpc->id = id;
    rpc->peer = peer;
    rpc->state = state;
    rpc->cookie = 0;
    rpc->serial = nextSerial_++;
    rpc->birth = now;
    rpc->out = OutMessage{};
    rpc->in.started = false;
    rpc->in.waitingForBuffer = false;
    rpc->in.length = rpc->in.received = rpc->in.granted = rpc->in.counted = 0;
    rpc->in.priority = 0;
    rpc->in.gaps.reset();
    rpc->in.buffer = {};
    rpc->in.birth = now;
    rpc->silentTicks = rpc->ackWaitTicks = rpc->needAcksSent = rpc->busyReplies = 0;
    rpc->timerPacketTick = UINT64_MAX;
    rpc->restartTick = UINT64_MAX;
    joinTimerList(rpc, now);
    if (peer->rpcCount++ == 0 && peer->lruHook.is_linked()) idlePeers_.erase(idlePeers_.iterator_to(*peer));
    if (rpc->isClient()) {
        clientRpcs_.insert(id, rpc);
    } else {
        peer->serverRpcs.insert(rpc->clientId(), rpc);
        ++pendingRequests_;
    }
    return rpc;
}

void Engine::discardServerRpc(Rpc* rpc) {
    // (An executed request's id stays seen: its client, asking about it, is told it was
    // used; see seen_ids.h.)
    freeRpc(rpc);
}

void Engine::freeRpc(Rpc* rpc) {
    Peer* const peer = rpc->peer;
    const ClientTurn turn = std::exchange(rpc->turn, ClientTurn::None);
    if (rpc->isClient()) {
        clientRpcs_.erase(rpc->id);
    } else {
        rpc->peer->serverRpcs.erase(rpc->clientId());
        if (rpc->state != RpcState::ServerOutgoing) --pendingRequests_;
        // Never delivered, so never executed: the client may send it again (after
        // RPC_UNKNOWN) and must then be served, not dropped as a repeat. (An executed
        // one stays seen, inside the window or below it.)
        if (rpc->peer->seen && rpc->state == RpcState::ServerIncoming) rpc->peer->seen->forget(rpc->clientId());
    }
    removeGrantable(rpc);
    if (rpc->sendHook.is_linked()) sendable_.erase(sendable_.iterator_to(*rpc));
    if (rpc->sendFifoHook.is_linked()) sendFifo_.erase(sendFifo_.iterator_to(*rpc));
    // Nothing left to send: the pacer holds nothing back. (Left set, the next message's
    // first pass would count the time since this deferral as the sender's lateness.)
    if (sendable_.empty()) pacerDeferred_ = false;
    cancelBufferWait(rpc);
    if (rpc->deferHook.is_linked()) undeferTimerPacket(rpc);
    if (turn == ClientTurn::Waiting) {
        peer->waitingToStart.erase(peer->waitingToStart.iterator_to(*rpc));
        --rpcsWaitingToStart_;
    } else {
        (rpc->state == RpcState::ServerInService ? inServiceRpcs_ : allRpcs_).erase(RpcList::s_iterator_to(*rpc));
    }
    incomingOutstanding_ -= rpc->in.counted;
    rpc->in.counted = 0;
    releaseInBuffer(rpc);
    outPool_.release(rpc->out.buffer);
    rpc->out.buffer = {};
    if (--rpc->peer->rpcCount == 0) idlePeers_.push_back(*rpc->peer);
    rpc->peer = nullptr;
    freeRpcs_.push_back(rpc);
    grantsDirty_ = true;
    if (turn == ClientTurn::UnderWay) {
        --peer->clientRpcsUnderWay;
        if (!peer->waitingToStart.empty()) startWaitingRpc(peer);
    }
}

void Engine::startWaitingRpc(Peer* peer) {
    Rpc* rpc = &peer->waitingToStart.front();
    peer->waitingToStart.pop_front();
    --rpcsWaitingToStart_;
    rpc->turn = ClientTurn::UnderWay;
    ++peer->clientRpcsUnderWay;
    HOMA_TRACE("rpc start id %u len %u", rpc->id, rpc->out.length);
    // (The time is the engine's latest: this runs inside whatever ended the other RPC.)
    const Time now = lastNow_ == INT64_MIN ? 0 : lastNow_;
    rpc->birth = rpc->out.birth = rpc->in.birth = now;
    joinTimerList(rpc, now);
    startSending(rpc, now);
}

Rpc* Engine::findClientRpc(uint64_t id) {
    return clientRpcs_.find(id);
}

Rpc* Engine::findServerRpc(Peer* peer, uint64_t clientId) {
    return peer->serverRpcs.find(clientId);
}

void Engine::failRpc(Rpc* rpc, Status status) {
    Delivery d;
    d.kind = Delivery::Kind::Failure;
    d.clientId = rpc->id;
    d.cookie = rpc->cookie;
    d.status = std::move(status);
    HOMA_TRACE("rpc failed id %u code %u", rpc->id, static_cast<unsigned>(d.status.code()));
    traceDelivery(d);
    deliveries_.push_back(std::move(d));
    ++m_.deliveries;
    freeRpc(rpc);
}

// ---------------------------------------------------------------- application calls

uint8_t Engine::unschedPriority(const Peer* peer, uint32_t length) const {
    int lowest = -1;
    for (int i = 7; i >= 0; --i) {
        uint32_t cutoff = peer->cutoffs[static_cast<size_t>(i)];
        if (cutoff == 0) continue;
        if (cutoff >= length) return static_cast<uint8_t>(i);
        lowest = i;
    }
    // Longer than every cutoff: the lowest unscheduled level.
    return static_cast<uint8_t>(lowest < 0 ? 0 : lowest);
}

Status Engine::checkOutgoingLength(size_t length, const char* what) const {
    if (length == 0) return {StatusCode::InvalidArgument, std::string("a ") + what + " must have at least 1 byte"};
    if (length > cfg_.maxMessageLength)
        return {StatusCode::MessageTooLarge, std::string(what) + " of " + std::to_string(length) +
                                                 " bytes exceeds the maximum of " +
                                                 std::to_string(cfg_.maxMessageLength)};
    return {};
}

OutgoingBuffer Engine::allocateOutgoing(size_t length, Status* error) {
    Status s = checkOutgoingLength(length, "message");
    BufferPool::Buffer b;
    if (s.isOk()) {
        b = outPool_.allocate(static_cast<uint32_t>(length));
        if (!b) s = {StatusCode::OutOfBuffers, "outgoing message memory is full"};
    }
    if (error) *error = s;
    return {b.data, b.capacity};
}

void Engine::releaseOutgoing(OutgoingBuffer buffer) {
    if (buffer) outPool_.release({buffer.data, buffer.capacity});
}

Status Engine::setupOutMessage(Rpc* rpc, std::span<const uint8_t> data, Time now, OutgoingBuffer owned) {
    BufferPool::Buffer buffer{owned.data, owned.capacity};
    assert(!owned || (data.data() == owned.data && data.size() <= owned.capacity));
    if (!owned) {
        buffer = outPool_.allocate(static_cast<uint32_t>(data.size()));
        if (!buffer) return {StatusCode::OutOfBuffers, "outgoing message memory is full"};
        std::memcpy(buffer.data, data.data(), data.size());
    }
    OutMessage& o = rpc->out;
    o.buffer = buffer;
    o.length = static_cast<uint32_t>(data.size());
    o.nextOffset = 0;
    o.unsched = static_cast<uint32_t>(std::min<uint64_t>(unschedPackets_, o.length));
    o.granted = o.unsched;
    o.unschedPriority = unschedPriority(rpc->peer, o.length);
    o.schedPriority = 0;
    o.birth = now;
    return {};
}

Status Engine::startRequest(const Address& server, std::span<const uint8_t> request, uint64_t cookie,
                            Time now, uint64_t* id, OutgoingBuffer owned) {
    now = clamp(now);
    if (Status s = checkOutgoingLength(request.size(), "request"); !s.isOk()) {
        releaseOutgoing(owned);
        return s;
    }
    Peer* peer = getPeer(server, now);
    if (!peer) {
        releaseOutgoing(owned);
        return {StatusCode::OutOfBuffers, "peer table is full"};
    }
    uint64_t rpcId = nextClientId_;
    Rpc* rpc = newRpc(peer, rpcId, RpcState::Client, now);
    rpc->cookie = cookie;
    Status s = setupOutMessage(rpc, request, now, owned);
    if (!s.isOk()) {
        freeRpc(rpc);
        return s;
    }
    nextClientId_ += 2;
    ++m_.clientRpcsStarted;
    if (id) *id = rpcId;
    if (cfg_.maxClientRpcsPerServer != 0 && peer->clientRpcsUnderWay >= cfg_.maxClientRpcsPerServer) {
        // Its turn comes when one of the peer's RPCs under way ends (freeRpc).
        HOMA_TRACE("rpc waits id %u len %u", rpcId, request.size());
        allRpcs_.erase(allRpcs_.iterator_to(*rpc));
        rpc->turn = ClientTurn::Waiting;
        peer->waitingToStart.push_back(*rpc);
        ++rpcsWaitingToStart_;
        ++m_.clientRpcsWaited;
        return {};
    }
    HOMA_TRACE("rpc start id %u len %u", rpcId, request.size());
    rpc->turn = ClientTurn::UnderWay;
    ++peer->clientRpcsUnderWay;
    startSending(rpc, now);
    return {};
}

Status Engine::sendResponse(const ServerRpcId& id, std::span<const uint8_t> response, Time now,
                            OutgoingBuffer owned) {
    now = clamp(now);
    Peer* peer = findPeer(id.client);
    Rpc* rpc = peer ? findServerRpc(peer, id.id) : nullptr;
    Status s;
    if (!rpc)
        s = {StatusCode::NoSuchRpc, "no request " + std::to_string(id.id) + " from " + id.client.toString()};
    else if (rpc->state != RpcState::ServerInService)
        s = {StatusCode::InvalidArgument, "the request was already answered"};
    else
        s = checkOutgoingLength(response.size(), "response");
    if (!s.isOk()) {
        releaseOutgoing(owned);
        return s;
    }
    s = setupOutMessage(rpc, response, now, owned);
    if (!s.isOk()) return s;
    inServiceRpcs_.erase(inServiceRpcs_.iterator_to(*rpc));
    rpc->state = RpcState::ServerOutgoing;
    joinTimerList(rpc, now);
    --pendingRequests_;
    rpc->silentTicks = 0;
    rpc->ackWaitTicks = 0;
    touchPeer(peer, now);
    ++m_.serverResponsesSent;
    HOMA_TRACE("response start id %u len %u", rpc->id, response.size());
    startSending(rpc, now);
    return {};
}

Status Engine::abortClientRpc(uint64_t id, Time now) {
    clamp(now);
    Rpc* rpc = findClientRpc(id);
    if (!rpc) return {StatusCode::NoSuchRpc, "no client RPC " + std::to_string(id)};
    ++m_.clientRpcsAborted;
    HOMA_TRACE("rpc aborted id %u", id);
    freeRpc(rpc);
    return {};
}

Status Engine::abortServerRpc(const ServerRpcId& id, Time now) {
    clamp(now);
    Peer* peer = findPeer(id.client);
    Rpc* rpc = peer ? findServerRpc(peer, id.id) : nullptr;
    if (!rpc) return {StatusCode::NoSuchRpc, "no request " + std::to_string(id.id) + " from " + id.client.toString()};
    ++m_.serverRpcsAborted;
    HOMA_TRACE("request dropped id %u", id.id);
    discardServerRpc(rpc);
    return {};
}

void Engine::releaseMessage(const ReceivedMessage& message, Time now) {
    releaseMessages(std::span(&message, 1), now);
}

void Engine::releaseMessages(std::span<const ReceivedMessage> messages, Time now) {
    now = clamp(now);
    for (const ReceivedMessage& m : messages) inPool_.release({m.data, m.capacity});
    retryBufferWaiters(now);
    decideGrants(now);
    transmitData(now);
}

// ---------------------------------------------------------------- packet input

bool Engine::isNewRequest(const Address& source, std::span<const uint8_t> packet) const {
    if (packet.size() < wire::kCommonHeaderSize || packet[11] != static_cast<uint8_t>(wire::PacketType::Data))
        return false;
    uint64_t senderId = 0;
    for (size_t i = 20; i < 28; ++i) senderId = (senderId << 8) | packet[i];
    if (senderId & 1) return false;  // from a server: one of our client RPCs
    const Peer* peer = lastPeer_;  // findPeer()'s cache, without updating it
    if (peer == nullptr || !sameAddress(peer->address, source)) {
        auto it = peers_.find(source);
        if (it == peers_.end()) return true;
        peer = it->second.get();
    }
    return peer->serverRpcs.find(senderId) == nullptr;
}

void Engine::receive(const Address& source, std::span<const uint8_t> packet, Time now) {
    handlePacket(source, packet, now);
    finishBatch(now);
}

void Engine::finishBatch(Time now) {
    now = clamp(now);
    retryBufferWaiters(now);
    decideGrants(now);
    transmitData(now);
}

void Engine::handlePacket(const Address& source, std::span<const uint8_t> bytes, Time now) {
    now = clamp(now);
    wire::Packet& p = packet_;
    wire::DecodeError err = wire::decode(bytes, cfg_.maxMessageLength, p);
    if (err != wire::DecodeError::Ok) {
        ++m_.decodeErrors[static_cast<size_t>(err)];
        ++m_.dropped[static_cast<size_t>(DropReason::Malformed)];
        return;
    }
    size_t t = EngineMetrics::typeIndex(p.common.type);
    ++m_.packetsReceived[t];
    m_.bytesReceived[t] += bytes.size();
    if (__builtin_expect(trace::enabled(), 0)) {
        switch (p.common.type) {
            case wire::PacketType::Data:
                trace::recordAlways(kTraceRecv[t], p.common.senderId, p.data.offset, p.payload.size(),
                                    p.data.retransmit);
                break;
            case wire::PacketType::Grant:
                trace::recordAlways(kTraceRecv[t], p.common.senderId, p.grant.offset, p.grant.priority);
                break;
            case wire::PacketType::Resend:
                trace::recordAlways(kTraceRecv[t], p.common.senderId, p.resend.offset, p.resend.length,
                                    p.resend.priority);
                break;
            case wire::PacketType::Ack:
                trace::recordAlways(kTraceRecv[t], p.common.senderId, p.ack.numAcks, p.ack.acks[0].clientId);
                break;
            default:
                trace::recordAlways(kTraceRecv[t], p.common.senderId);
                break;
        }
    }
    if (p.common.dport != cfg_.port) {
        ++m_.dropped[static_cast<size_t>(DropReason::WrongPort)];
        return;
    }

    // A packet from a client (even id) concerns an RPC we serve; from a server (odd id),
    // one of our client RPCs.
    const bool fromClient = (p.common.senderId & 1) == 0;
    const uint64_t clientId = p.common.senderId & ~uint64_t{1};

    if (p.common.type == wire::PacketType::Data) {
        if (fromClient && overloaded()) {
            // Overloaded: refuse new requests before making any state for them (not even
            // a peer), so work already accepted keeps the capacity. Clients retry later.
            Peer* known = findPeer(source);
            if (!known || !findServerRpc(known, clientId)) {
                ++m_.dropped[static_cast<size_t>(DropReason::Overload)];
                // The ack it carries is taken all the same: the client has let it go, and
                // the RPC it frees would otherwise wait for a NEED_ACK, holding its
                // response in memory, just when memory is short.
                if (known && p.data.ack.clientId != 0) {
                    ++m_.acksPiggybacked;
                    handleAckEntry(known, p.data.ack);
                }
                // Tell the client (once per attempt, on the first packet) that we are
                // alive but busy: it backs off instead of timing out or flooding us.
                if (p.data.offset == 0) sendControl(source, p.common.senderId ^ 1, wire::PacketType::Busy);
                // A restarted copy refused uses up its permit, if it had one: the client
                // asks again later and gets a new one. (Left to expire, such permits
                // would crowd out live ones: SeenIds keeps a bounded number.)
                if (known && known->seen && (p.common.flags & wire::kFlagRestarted))
                    known->seen->takePermit(clientId, tickCount_);
                return;
            }
        }
        Peer* peer = fromClient ? getPeer(source, now) : findPeer(source);
        if (!peer) {
            ++m_.dropped[static_cast<size_t>(fromClient ? DropReason::PeerTableFull : DropReason::UnknownRpc)];
            return;
        }
        handleData(peer, p, now);
        return;
    }

    Peer* peer = findPeer(source);
    Rpc* rpc = nullptr;
    if (peer) {
        touchPeer(peer, now);
        rpc = fromClient ? findServerRpc(peer, clientId) : findClientRpcUnderWay(clientId);
        if (rpc && rpc->peer != peer) rpc = nullptr;  // a client id is ours, but not with this peer
        // The peer is working with us (see holdSilence); packets about RPCs we do not
        // know prove nothing.
        if (rpc) peer->lastHeard = now;
    }

    switch (p.common.type) {
        case wire::PacketType::Grant:
            if (!rpc) break;
            handleGrant(rpc, p);
            return;
        case wire::PacketType::Resend:
            if (!rpc) {
                // A client asking about an id whose request we may have run already: a
                // new copy of it would be dropped as stale (at-most-once), so its call can
                // only end. Say so, rather than let it send the request again until it
                // times out.
                // A client evicted with ids served and not back yet is answered from its
                // record (see rememberServedIds), as a peer made anew from it would
                // answer (SeenIds::seenUpTo): every id up to the highest served may have
                // run. (A rare case: the record is read through a SeenIds of its own.)
                const SeenIds* seen = peer ? peer->seen.get() : nullptr;
                std::optional<SeenIds> record;
                if (!peer && fromClient) {
                    if (auto it = forgottenPeers_.find(source); it != forgottenPeers_.end()) {
                        record.emplace(cfg_.seenIdWindow);
                        record->seenUpTo(it->second.highest);
                        seen = &*record;
                    }
                }
                const bool used = fromClient && seen && seen->mayHaveRun(clientId);
                uint8_t flags = used ? wire::kFlagIdUsed : 0;
                if (used && seen->farBelowFloor(clientId)) flags |= wire::kFlagIdsBehind;
                if (!used && fromClient && overloaded()) {
                    // Probably a request we refused; it would be refused again now, so
                    // the client should wait (and back off), not send it again.
                    sendControl(source, p.common.senderId ^ 1, wire::PacketType::Busy);
                    return;
                }
                // We have no state: say so, so the peer can restart (client) or discard
                // (server). An unknown address gets no peer of its own for asking (a
                // stream of such packets, spoofed, would fill the peer table), unless it
                // is a client evicted with ids served: the peer made anew remembers them.
                // When none can be made (the table is full of peers that may not be
                // evicted yet), the answer comes from the record all the same, which
                // stays for the peer the client gets later.
                Peer* to = peer;
                if (!to && record) to = getPeer(source, now);
                if (!to) {
                    sendControl(source, p.common.senderId ^ 1, wire::PacketType::RpcUnknown, flags);
                    return;
                }
                if (!used && fromClient && to->seen && to->seen->belowWindow(clientId)) {
                    // Never run here (lost, or refused under overload) but below the
                    // window, where a new copy would be dropped: let the next one in.
                    to->seen->permit(clientId, tickCount_, tickCount_ + permitTicks());
                    ++m_.requestPermits;
                }
                sendControl(to, p.common.senderId ^ 1, wire::PacketType::RpcUnknown, flags);
                return;
            }
            handleResend(rpc, p.resend);
            return;
        case wire::PacketType::Busy:
            if (!rpc) break;
            rpc->silentTicks = 0;
            // Backoff is for a server that has not started the response (it is executing
            // the request, or refused it for overload). Once the response has started, a
            // BUSY only says the rest waits for our grants, or behind shorter responses:
            // our RESENDs then are what keeps the server from timing the response out, so
            // they keep their pace.
            if (rpc->isClient() && !rpc->in.started) ++rpc->busyReplies;
            return;
        case wire::PacketType::RpcUnknown:
            if (!rpc) break;
            handleRpcUnknown(rpc, p.common.flags, now);
            return;
        case wire::PacketType::Cutoffs:
            // Only a peer we send to needs its cutoffs; one made later starts from ours and
            // is sent new ones with the next data that carries an old version.
            if (!peer) break;
            peer->cutoffs = p.cutoffs.cutoffs;
            peer->cutoffVersion = p.cutoffs.version;
            return;
        case wire::PacketType::Freeze:
            // From a peer we know (the runtime may dump the time trace on it: not for
            // anyone who can send us a packet).
            if (!peer) break;
            freezeReceived_ = true;
            return;
        case wire::PacketType::NeedAck:
            if (fromClient) break;  // only servers ask for acks
            handleNeedAck(peer, source, clientId);
            return;
        case wire::PacketType::Ack:
            if (!peer) break;
            for (uint16_t i = 0; i < p.ack.numAcks; ++i) handleAckEntry(peer, p.ack.acks[i]);
            return;
        case wire::PacketType::Data:
            return;
    }
    ++m_.dropped[static_cast<size_t>(DropReason::UnknownRpc)];
}

void Engine::handleGrant(Rpc* rpc, const wire::Packet& p) {
    OutMessage& o = rpc->out;
    // A server that has not started its response has nothing to grant: such a GRANT is
    // no sign that the client is working on this RPC either.
    if (!o.buffer) return;
    rpc->silentTicks = 0;
    uint32_t offset = std::min(p.grant.offset, o.length);
    if (offset > o.granted) o.granted = offset;
    o.schedPriority = p.grant.priority;
    // A grant only adds sendable bytes: a message filed already keeps its place.
    if (!rpc->sendHook.is_linked()) updateSendable(rpc);
}

// Told "id used" with "ids behind": the server remembers this endpoint's address with
// ids far above ours, from an earlier process at the same address whose clock read
// later (the first id comes from the clock: see Config::firstClientId). Every call would
// be refused the same way, for good. Later ids jump ahead instead, further at each
// refusal of an id given out since the last jump (the calls already under way are
// refused one by one, and would otherwise each jump again), until they clear what the
// server remembers. Ids need only be unique and growing; a jump costs nothing else.
void Engine::skipClientIdsAhead(uint64_t refusedId) {
    if (refusedId < idsSkippedFrom_ || nextClientId_ >= kMaxIdBeforeSkips) return;
    nextClientId_ += idSkip_;
    idsSkippedFrom_ = nextClientId_;
    idSkip_ = std::min(idSkip_ * 2, kMaxIdSkip);
    ++m_.clientIdSkips;
    HOMA_TRACE("client ids skip ahead to %u", nextClientId_);
}

void Engine::handleRpcUnknown(Rpc* rpc, uint8_t flags, Time now) {
    if (!rpc->isClient()) {
        // The client no longer knows this RPC (it aborted or finished it): discard it. A
        // request already handed to the application may have run: recorded as such, so
        // that it is never invited to run again once the window has moved past its id.
        ++m_.serverRpcsAborted;
        discardServerRpc(rpc);
        return;
    }
    if (flags & wire::kFlagIdUsed) {
        // The server used this id already and will not serve it again: whether it ran the
        // request is unknown (it did if it answered and lost the response's state; it did
        // not if it refused the request until newer ones pushed the id below its window).
        ++m_.clientRpcsRefusedStale;
        if (flags & wire::kFlagIdsBehind) skipClientIdsAhead(rpc->id);
        failRpc(rpc, Status(StatusCode::Aborted,
                            "the server will not serve this request: it has used its id already (it may or may not have "
                            "executed it; under overload, newer calls to it moved past the id)"));
        return;
    }
    // The server lost the request (it never got it, or restarted): send it all again.
    // Silent ticks are not reset, so a server that keeps forgetting ends in a timeout.
    // One restart per tick at most: a burst of RPC_UNKNOWNs (one per RESEND we sent)
    // must not become a burst of whole requests.
    if (rpc->restartTick == tickCount_) return;
    rpc->restartTick = tickCount_;
    ++m_.clientRestarts;
    OutMessage& o = rpc->out;
    o.retransmitBelow = std::max(o.retransmitBelow, o.nextOffset);
    o.nextOffset = 0;
    o.granted = o.unsched;
    removeGrantable(rpc);
    releaseInBuffer(rpc);
    incomingOutstanding_ -= rpc->in.counted;
    rpc->in.counted = 0;
    cancelBufferWait(rpc);
    rpc->in.started = false;
    rpc->in.waitingForBuffer = false;
    rpc->in.received = rpc->in.granted = rpc->in.length = 0;
    rpc->in.gaps.reset();
    grantsDirty_ = true;  // its share of the incoming budget is free again
    updateSendable(rpc);
    transmitData(now);
}

// ---------------------------------------------------------------- control packets

// Every packet, control packets too, occupies the NIC: all of them feed the pacer's
// estimate of its backlog (otherwise GRANTs, ACKs and RESENDs make the real queue grow
// past the estimate).
void Engine::countSent(wire::PacketType type, uint8_t priority, size_t bytes) {
    nic_.sent(lastNow_ == INT64_MIN ? 0 : lastNow_, static_cast<uint32_t>(bytes + cfg_.wireOverheadBytes));
    size_t t = EngineMetrics::typeIndex(type);
    ++m_.packetsSent[t];
    m_.bytesSent[t] += bytes;
    ++m_.packetsByPriority[priority & 7];
    m_.bytesByPriority[priority & 7] += bytes;
}

void Engine::sendControl(Peer* peer, uint64_t senderId, wire::PacketType type, uint8_t flags) {
    sendControl(peer->address, senderId, type, flags);
}

void Engine::sendControl(const Address& to, uint64_t senderId, wire::PacketType type, uint8_t flags) {
    wire::CommonHeader c;
    c.sport = cfg_.port;
    c.dport = to.port;
    c.type = type;
    c.flags = flags;
    c.senderId = senderId;
    size_t n = wire::encodeEmpty(scratch_, c);
    if (type == wire::PacketType::Busy) ++m_.busySent;
    if (type == wire::PacketType::RpcUnknown) ++m_.rpcUnknownSent;
    if (type == wire::PacketType::NeedAck) ++m_.needAcksSent;
    countSent(type, cfg_.controlPriority, n);
    HOMA_TRACE(kTraceSend[EngineMetrics::typeIndex(type)], senderId);
    sink_.transmit(to, cfg_.controlPriority, std::span(scratch_.data(), n), {});
}

void Engine::sendFreeze(const Address& address, Time now) {
    now = clamp(now);
    Peer* peer = getPeer(address, now);
    if (peer) sendControl(peer, 0, wire::PacketType::Freeze);
}

void Engine::sendResend(Rpc* rpc, uint32_t offset, uint32_t length, uint8_t priority) {
    wire::CommonHeader c;
    c.sport = cfg_.port;
    c.dport = rpc->peer->address.port;
    c.senderId = rpc->id;
    wire::ResendHeader r{offset, length, priority};
    size_t n = wire::encodeResend(scratch_, c, r);
    ++m_.resendsSent;
    countSent(wire::PacketType::Resend, cfg_.controlPriority, n);
    HOMA_TRACE(kTraceSend[EngineMetrics::typeIndex(wire::PacketType::Resend)], rpc->id, offset, length, priority);
    sink_.transmit(rpc->peer->address, cfg_.controlPriority, std::span(scratch_.data(), n), {});
}

void Engine::sendCutoffs(Peer* peer, Time now) {
    // At most one CUTOFFS per peer per tick, however many stale packets arrive.
    if (peer->cutoffsSentAt != INT64_MIN && now - peer->cutoffsSentAt < cfg_.tickNs) return;
    peer->cutoffsSentAt = now;
    wire::CommonHeader c;
    c.sport = cfg_.port;
    c.dport = peer->address.port;
    wire::CutoffsHeader h;
    h.cutoffs = cfg_.unschedCutoffs;
    h.version = cfg_.cutoffVersion;
    size_t n = wire::encodeCutoffs(scratch_, c, h);
    ++m_.cutoffsSent;
    countSent(wire::PacketType::Cutoffs, cfg_.controlPriority, n);
    HOMA_TRACE(kTraceSend[EngineMetrics::typeIndex(wire::PacketType::Cutoffs)], 0);
    sink_.transmit(peer->address, cfg_.controlPriority, std::span(scratch_.data(), n), {});
}

// ---------------------------------------------------------------- outputs

bool Engine::pollDelivery(Delivery& out) {
    if (deliveries_.empty()) return false;
    out = std::move(deliveries_.front());
    deliveries_.pop_front();
    return true;
}

void Engine::popDelivery() { deliveries_.pop_front(); }

// Traced as the engine queues it (complete, or failed): the runtime may hand it to the
// application before it takes it off the queue, and "deliver" must come before
// "handoff" in a trace (homa-trace's client and server handoff phases lie between them).
void Engine::traceDelivery(const Delivery& d) {
    if (__builtin_expect(!trace::enabled(), 1)) return;
    switch (d.kind) {
        case Delivery::Kind::Request:
            trace::recordAlways("deliver request id %u len %u", d.server.id, d.message.length);
            break;
        case Delivery::Kind::Response:
            trace::recordAlways("deliver response id %u len %u", d.clientId, d.message.length);
            break;
        case Delivery::Kind::Failure:
            trace::recordAlways("deliver failure id %u code %u", d.clientId, static_cast<unsigned>(d.status.code()));
            break;
    }
}

void Engine::listRpcs(std::vector<RpcInfo>& out) const {
    out.clear();
    std::vector<const RpcList*> lists = {&allRpcs_, &inServiceRpcs_};
    if (rpcsWaitingToStart_ != 0)
        for (const auto& [address, peer] : peers_)
            if (!peer->waitingToStart.empty()) lists.push_back(&peer->waitingToStart);
    for (const RpcList* list : lists) {
        for (const Rpc& r : *list) {
            RpcInfo i;
            i.peer = r.peer->address;
            i.id = r.id;
            i.state = r.state;
            i.outLength = r.out.length;
            i.outSent = r.out.nextOffset;
            i.outGranted = r.out.granted;
            i.inLength = r.in.length;
            i.inReceived = r.in.received;
            i.inGranted = r.in.granted;
            i.waitingForBuffer = r.in.waitingForBuffer;
            i.waitingToStart = r.turn == ClientTurn::Waiting;
            i.silentTicks = r.silentTicks;
            out.push_back(i);
        }
    }
}

}  // namespace homa::engine
