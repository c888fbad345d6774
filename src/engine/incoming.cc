// Receiving messages: DATA packets, reassembly into pool buffers, and delivery.
#include <cstring>

#include "engine/engine.h"

namespace homa::engine {

void Engine::handleData(Peer* peer, const wire::Packet& p, Time now) {
    const wire::DataHeader& d = p.data;
    if (d.ack.clientId != 0) {
        ++m_.acksPiggybacked;
        handleAckEntry(peer, d.ack);
    }
    if (d.cutoffVersion != cfg_.cutoffVersion) sendCutoffs(peer, now);

    const bool fromClient = (p.common.senderId & 1) == 0;
    const uint64_t clientId = p.common.senderId & ~uint64_t{1};
    Rpc* rpc;
    if (fromClient) {
        rpc = findServerRpc(peer, clientId);
        if (!rpc) {
            // At-most-once: an id this peer already used is never served again, however
            // late a packet of it arrives.
            // The one exception: a request this server never ran, whose id fell below the
            // window, sent again by a client told to (a permit; see seen_ids.h).
            if (peer->seen && peer->seen->contains(clientId)) {
                if (!(p.common.flags & wire::kFlagRestarted) || !peer->seen->takePermit(clientId, tickCount_)) {
                    ++m_.dropped[static_cast<size_t>(DropReason::StaleRequest)];
                    HOMA_TRACE("drop DATA id %u offset %u reason %u", p.common.senderId, d.offset,
                               static_cast<unsigned>(DropReason::StaleRequest));
                    return;
                }
                ++m_.requestsReadmitted;
            }
            if (!peer->seen) peer->seen = std::make_unique<SeenIds>(cfg_.seenIdWindow);
            peer->seen->insert(clientId);
            rpc = newRpc(peer, clientId | 1, RpcState::ServerIncoming, now);
        }
        if (rpc->state != RpcState::ServerIncoming) {
            // The whole request arrived already; this is a retransmission.
            rpc->silentTicks = 0;
            ++m_.dropped[static_cast<size_t>(DropReason::Duplicate)];
            HOMA_TRACE("drop DATA id %u offset %u reason %u", p.common.senderId, d.offset,
                       static_cast<unsigned>(DropReason::Duplicate));
            return;
        }
    } else {
        rpc = findClientRpcUnderWay(clientId);
        if (!rpc || rpc->peer != peer) {
            ++m_.dropped[static_cast<size_t>(DropReason::UnknownRpc)];
            HOMA_TRACE("drop DATA id %u offset %u reason %u", p.common.senderId, d.offset,
                       static_cast<unsigned>(DropReason::UnknownRpc));
            return;
        }
    }
    peer->lastHeard = now;  // data for an RPC of ours (see holdSilence)
    InMessage& in = rpc->in;
    // (Whole in one packet, but longer than one of ours: a sender with a larger MTU. It
    // takes the general path, which gives it no share of the small messages' reserve.)
    if (!in.started && d.offset == 0 && p.payload.size() == d.messageLength && singlePacket(d.messageLength) &&
        receiveWhole(rpc, p.payload, now))
        return;
    if (!in.started) {
        startInMessage(rpc, d.messageLength, d.incoming, now);
    } else if (d.messageLength != in.length) {
        // Only consistent data shows the peer is working on this RPC: a packet that
        // contradicts what we know must not keep the RPC alive.
        ++m_.dropped[static_cast<size_t>(DropReason::Inconsistent)];
        HOMA_TRACE("drop DATA id %u offset %u reason %u", p.common.senderId, d.offset,
                   static_cast<unsigned>(DropReason::Inconsistent));
        return;
    }
    const uint32_t promised = believedPromise(d.incoming, in.length, in.granted);
    if (promised > in.granted) {
        in.granted = promised;
        updateGrantable(rpc);
        recountIncoming(rpc);
    }
    if (in.waitingForBuffer) {
        recountIncoming(rpc);
        ++m_.dropped[static_cast<size_t>(DropReason::NoBuffer)];
        HOMA_TRACE("drop DATA id %u offset %u reason %u", p.common.senderId, d.offset,
                   static_cast<unsigned>(DropReason::NoBuffer));
        return;
    }
    const auto payload = p.payload;
    // A message's holes are bounded (one per KB, at least 256): a sender of full packets
    // leaves fewer even when every other packet is lost, and packets of a few bytes at
    // scattered offsets must not grow the list, and the work per packet, without end.
    // Such a packet waits to be sent again once holes before it are filled.
    if (in.gaps.gaps().size() >= std::max<size_t>(256, in.length / 1024) &&
        in.gaps.wouldAddGap(d.offset, static_cast<uint32_t>(payload.size()))) {
        ++m_.dropped[static_cast<size_t>(DropReason::Scattered)];
        HOMA_TRACE("drop DATA id %u offset %u reason %u", p.common.senderId, d.offset,
                   static_cast<unsigned>(DropReason::Scattered));
        return;
    }
    uint32_t added = in.gaps.add(d.offset, static_cast<uint32_t>(payload.size()),
                                 [&](uint32_t s, uint32_t e) {
                                     std::memcpy(in.buffer.data + s, payload.data() + (s - d.offset), e - s);
                                 });
    if (added == 0) {
        ++m_.dropped[static_cast<size_t>(DropReason::Duplicate)];
        HOMA_TRACE("drop DATA id %u offset %u reason %u", p.common.senderId, d.offset,
                   static_cast<unsigned>(DropReason::Duplicate));
        return;
    }
    // Only new bytes show progress: a packet repeated over and over (a retransmission
    // we had already, or a peer's keep-alive) does not keep the RPC from timing out.
    rpc->silentTicks = 0;
    rpc->busyReplies = 0;
    in.received += added;
    if (in.received > in.granted) {
        // The sender rounds a grant up to a whole packet. The SRPT key (length - granted)
        // changes: re-file the message (changed in place, its grant sets fell out of order).
        in.granted = in.received;
        updateGrantable(rpc);
    }
    recountIncoming(rpc);
    grantsDirty_ = true;
    if (in.received == in.length) {
        HOMA_TRACE("message complete id %u len %u", rpc->id, in.length);
        completeInMessage(rpc, now);
    }
}

// The first packet of a message holds all of it, and it is a single-packet message by
// our MTU (most requests and responses of small RPCs): it is complete at once, so none
// of the grant and reassembly bookkeeping of startInMessage() and handleData() applies. The end state is theirs: a message started,
// granted and received in full, counted nowhere in incomingOutstanding_, then delivered
// (its gap list stays empty: only an incomplete message's RESENDs read it). False, with
// nothing changed, when no buffer is free: the general path then makes the RPC wait for
// one.
bool Engine::receiveWhole(Rpc* rpc, std::span<const uint8_t> payload, Time now) {
    InMessage& in = rpc->in;
    const auto length = static_cast<uint32_t>(payload.size());
    in.buffer = inPool_.tryAllocate(length, true);  // (the general path counts a failure)
    if (!in.buffer) return false;
    in.started = true;
    in.length = in.granted = in.received = length;
    in.birth = now;
    in.priority = static_cast<uint8_t>(maxSchedPriority_);
    std::memcpy(in.buffer.data, payload.data(), length);
    rpc->silentTicks = 0;
    rpc->busyReplies = 0;
    HOMA_TRACE("message complete id %u len %u", rpc->id, length);
    completeInMessage(rpc, now);
    return true;
}

void Engine::startInMessage(Rpc* rpc, uint32_t length, uint32_t incoming, Time now) {
    InMessage& in = rpc->in;
    in.started = true;
    in.length = length;
    in.granted = believedPromise(incoming, length, 0);
    in.birth = now;
    in.priority = static_cast<uint8_t>(maxSchedPriority_);
    // A large message does not pass older large ones waiting for space, even where it
    // would fit: they get buffers in order of arrival (see retryBufferWaiters()).
    const bool small = singlePacket(length);
    if (small || largeBufferWaiters_.empty()) in.buffer = inPool_.allocate(length, small);
    if (!in.buffer) {
        // No room: keep the (small) RPC state, grant nothing, drop its data, and ask for
        // the data again once buffers come back. Nothing accepted is ever dropped.
        in.waitingForBuffer = true;
        bufferWaitList(rpc).push_back(*rpc);
        ++m_.bufferWaits;
        HOMA_TRACE("buffer wait id %u len %u in_use %u", rpc->id, length, inPool_.bytesInUse());
        return;
    }
    updateGrantable(rpc);
}

void Engine::releaseInBuffer(Rpc* rpc) {
    if (rpc->in.buffer) {
        inPool_.release(rpc->in.buffer);
        rpc->in.buffer = {};
    }
}

WaitList& Engine::bufferWaitList(const Rpc* rpc) {
    return singlePacket(rpc->in.length) ? smallBufferWaiters_ : largeBufferWaiters_;
}

void Engine::cancelBufferWait(Rpc* rpc) {
    if (!rpc->waitHook.is_linked()) return;
    WaitList& list = bufferWaitList(rpc);
    list.erase(list.iterator_to(*rpc));
}

// Single-packet messages first, then large ones; each kind first come, first served,
// stopping at the first message of that kind that still does not fit. A small message
// thus never waits behind a large one (it may also use the reserve, which a large one
// may not). Large messages keep their order: no younger large message, waiting or new
// (see startInMessage()), gets a buffer before the oldest, so it gets one once enough
// comes back; only small messages, at most one packet's buffer each, pass it.
void Engine::retryBufferWaiters(Time now) {
    while (!smallBufferWaiters_.empty() && inPool_.canAllocate(smallBufferWaiters_.front().in.length, true))
        if (!resumeBufferWaiter(&smallBufferWaiters_.front(), true, now)) break;
    while (!largeBufferWaiters_.empty() && inPool_.canAllocate(largeBufferWaiters_.front().in.length))
        if (!resumeBufferWaiter(&largeBufferWaiters_.front(), false, now)) break;
}

// (The pool's limit has room, but the process may still be out of memory: the message
// then stays first in line, and a later try gets it.)
bool Engine::resumeBufferWaiter(Rpc* rpc, bool small, Time now) {
    InMessage& in = rpc->in;
    in.buffer = inPool_.allocate(in.length, small);
    if (!in.buffer) return false;
    bufferWaitList(rpc).pop_front();
    in.waitingForBuffer = false;
    in.birth = now;
    updateGrantable(rpc);
    recountIncoming(rpc);
    // Everything sent so far was dropped: ask for it again.
    HOMA_TRACE("buffer granted id %u len %u", rpc->id, in.length);
    sendResend(rpc, 0, in.granted, in.priority);
    grantsDirty_ = true;
    return true;
}

void Engine::completeInMessage(Rpc* rpc, Time now) {
    removeGrantable(rpc);
    incomingOutstanding_ -= rpc->in.counted;
    rpc->in.counted = 0;
    Delivery& d = deliveries_.emplace_back();
    d.message = {rpc->in.buffer.data, rpc->in.length, rpc->in.buffer.capacity};
    rpc->in.buffer = {};  // now the application's
    ++m_.deliveries;
    if (rpc->isClient()) {
        d.kind = Delivery::Kind::Response;
        d.clientId = rpc->id;
        d.cookie = rpc->cookie;
        ++m_.clientRpcsCompleted;
        traceDelivery(d);
        queueAck(rpc->peer, rpc->id);
        freeRpc(rpc);
        return;
    }
    d.kind = Delivery::Kind::Request;
    d.server = {rpc->peer->address, rpc->clientId()};
    traceDelivery(d);
    // The application has it now: nothing for the timer to do until the response starts.
    allRpcs_.erase(allRpcs_.iterator_to(*rpc));
    inServiceRpcs_.push_back(*rpc);
    rpc->state = RpcState::ServerInService;
    rpc->silentTicks = 0;
    ++m_.serverRequestsReceived;
    (void)now;
}

}  // namespace homa::engine
