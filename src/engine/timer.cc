// Time-driven work, once per tick: silent ticks, RESEND, timeouts, NEED_ACK, flushing
// pending acks and evicting idle peers. Also the pacer's wake-ups.
//
// Who counts silent ticks: whoever expects to hear from the peer. A receiver of an
// incomplete message counts (and asks for what is missing, or probes with an empty
// RESEND when it has received everything it granted); a client always counts until its
// response is complete; a server counts while its response is incomplete at the client,
// the client's RESENDs and GRANTs keeping it alive (and asks a silent client with
// NEED_ACK while the response waits for grants). A server executing a request does not
// count: the client's RESENDs are answered with BUSY.
#include <algorithm>

#include "engine/engine.h"

namespace homa::engine {

Time Engine::nextWakeup() const { return std::min(nextTickDue(), nextPacerWakeup()); }

Time Engine::nextTickDue() const {
    if (!allRpcs_.empty() || !peersWithAcks_.empty() || peers_.size() > cfg_.peerGcThreshold) return nextTick_;
    return kNever;
}

Time Engine::nextPacerWakeup() const {
    if (pacerDeferred_ && !sendable_.empty()) return nic_.idleAt() - pacerAllowance();
    return kNever;
}

void Engine::advance(Time now) {
    now = clamp(now);
    if (now >= nextTick_) {
        runTick(now);
        // One tick per call, however late: a stalled caller must not cause a burst of
        // silent ticks (and false timeouts) when it resumes.
        nextTick_ += cfg_.tickNs;
        if (nextTick_ <= now) nextTick_ = now + cfg_.tickNs;
    }
    // Buffers may have come back without the application (an RPC timed out or was
    // aborted): messages waiting for space must not wait for the next releaseMessage().
    retryBufferWaiters(now);
    decideGrants(now);
    transmitData(now);
}

// An RPC the timer must look at from now on. The first one starts the tick clock afresh,
// so that its first tick is a whole tick away (the clock may have stopped long ago).
void Engine::joinTimerList(Rpc* rpc, Time now) {
    if (allRpcs_.empty() && nextTick_ <= now) nextTick_ = now + cfg_.tickNs;
    allRpcs_.push_back(*rpc);
}

void Engine::runTick(Time now) {
    ++tickCount_;
    sendDeferredTimerPackets();
    for (auto it = allRpcs_.begin(); it != allRpcs_.end();) {
        Rpc* rpc = &*it;
        ++it;  // checkRpc may free rpc
        checkRpc(rpc, now);
    }
    // Pending acks go out at the end of the batch of work this tick interrupts
    // (sendDueAcks), after the application has had its chance to start requests that
    // carry them; here only if the last tick's request to do so was not heard.
    if (ackFlushRequested_) flushAcks();
    ackFlushRequested_ = !peersWithAcks_.empty();
    collectPeers(now);
}

// The per-peer budget of RESENDs and NEED_ACKs (ProtocolOptions::timerPacketsPerPeer).
// Many silent RPCs at one peer mean the peer is loaded; one packet per RPC would load it
// more. A packet over the budget waits in the peer's `deferred` list, which the next
// ticks serve first, in the order they were put off, so every RPC gets its turn.
bool Engine::timerBudgetLeft(Peer* peer) {
    if (peer->budgetTick != tickCount_) {
        peer->budgetTick = tickCount_;
        peer->timerPackets = 0;
    }
    return peer->timerPackets < cfg_.timerPacketsPerPeer;
}

// The RPC's RESEND or NEED_ACK comes due this tick: sent now if the peer's budget
// allows, else put off. Nothing if one is already waiting, or went out this tick (the
// ones put off go first, before the RPCs are checked).
void Engine::timerPacketDue(Rpc* rpc) {
    if (rpc->deferHook.is_linked() || rpc->timerPacketTick == tickCount_) return;
    if (timerBudgetLeft(rpc->peer)) {
        sendTimerPacket(rpc);
        return;
    }
    Peer* peer = rpc->peer;
    peer->deferred.push_back(*rpc);
    if (!peer->deferringHook.is_linked()) peersDeferring_.push_back(*peer);
    ++m_.timerPacketsDeferred;
}

// Whether a packet put off is still wanted: progress since (new bytes, BUSY, a grant,
// a retransmission of the response) makes the RPC wait its interval again instead.
bool Engine::timerPacketStillDue(const Rpc* rpc) const {
    const OutMessage& o = rpc->out;
    switch (rpc->state) {
        case RpcState::ServerInService:
            return false;
        case RpcState::ServerOutgoing:
            if (o.nextOffset >= o.length) return rpc->ackWaitTicks != 0;
            return o.nextOffset >= o.sendable() && rpc->silentTicks != 0;  // waiting for grants
        case RpcState::ServerIncoming:
            return rpc->silentTicks != 0;
        case RpcState::Client:
            return rpc->silentTicks != 0 && o.nextOffset >= o.sendable();
    }
    return false;
}

// Sends the RPC's RESEND(s), or its NEED_ACK (or gives up on the ack). May free `rpc`.
void Engine::sendTimerPacket(Rpc* rpc) {
    // Only the NEED_ACKs for a fully sent response count towards giving up: those asking
    // about a response that waits for grants end with the timeout instead.
    const bool askingForAck = rpc->state == RpcState::ServerOutgoing && rpc->out.nextOffset >= rpc->out.length;
    if (askingForAck && rpc->needAcksSent >= cfg_.needAckLimit) {
        ++m_.serverRpcsAbandoned;
        HOMA_TRACE("server rpc abandoned id %u need_acks %u", rpc->id, rpc->needAcksSent);
        discardServerRpc(rpc);
        return;
    }
    ++rpc->peer->timerPackets;  // (timerBudgetLeft() was asked this tick)
    rpc->timerPacketTick = tickCount_;
    if (rpc->state == RpcState::ServerOutgoing) {
        if (askingForAck) ++rpc->needAcksSent;
        sendControl(rpc->peer, rpc->id, wire::PacketType::NeedAck);
        return;
    }
    HOMA_TRACE("resend due id %u silent %u received %u backoff %u", rpc->id, rpc->silentTicks, rpc->in.received,
               rpc->busyReplies);
    requestMissing(rpc);
}

void Engine::undeferTimerPacket(Rpc* rpc) {
    Peer* peer = rpc->peer;
    peer->deferred.erase(peer->deferred.iterator_to(*rpc));
    if (peer->deferred.empty()) peersDeferring_.erase(peersDeferring_.iterator_to(*peer));
}

// Per peer, the RPCs put off go first, up to the budget: the work is bounded by the
// budget, not by how many wait.
void Engine::sendDeferredTimerPackets() {
    for (auto it = peersDeferring_.begin(); it != peersDeferring_.end();) {
        Peer* peer = &*it;
        ++it;  // the peer leaves the list when its last RPC does
        while (!peer->deferred.empty()) {
            Rpc* rpc = &peer->deferred.front();
            const bool due = timerPacketStillDue(rpc);
            if (due && !timerBudgetLeft(peer)) break;
            undeferTimerPacket(rpc);
            if (due) sendTimerPacket(rpc);  // (may free rpc; the peer stays)
            if (!peer->deferringHook.is_linked()) break;
        }
    }
}

// Whether this tick leaves `rpc`'s silence count alone: its RESEND waits for the peer's
// budget while the peer is heard from about some RPC of ours, i.e. the peer is loaded,
// not gone. However long the queue: the RPC has not asked yet, and timing it out would
// fail a call the server is most likely working on (a server answering 1,000 calls a
// second with 4,000 outstanding lost nearly all of them to such timeouts while it worked
// through them). Its turn comes, in order, within (RPCs queued) / timerPacketsPerPeer
// ticks; then its silence counts again until the answer.
bool Engine::holdSilence(Rpc* rpc, Time now) {
    if (!rpc->deferHook.is_linked()) return false;
    return rpc->peer->lastHeard > now - static_cast<Time>(cfg_.resendInterval) * cfg_.tickNs;
}

// A server RPC's silent tick (unless held): at the timeout the RPC is discarded (a
// request still arriving was never run; a response's id is remembered as run) and this
// returns true.
bool Engine::serverSilenceTimesOut(Rpc* rpc, Time now) {
    if (!holdSilence(rpc, now)) ++rpc->silentTicks;
    if (rpc->silentTicks < cfg_.timeoutTicks) return false;
    ++m_.serverRpcsTimedOut;
    HOMA_TRACE("timeout server id %u state %u silent %u", rpc->id, static_cast<unsigned>(rpc->state),
               rpc->silentTicks);
    discardServerRpc(rpc);
    return true;
}

void Engine::checkRpc(Rpc* rpc, Time now) {
    const OutMessage& o = rpc->out;
    switch (rpc->state) {
        case RpcState::ServerInService:
            return;
        case RpcState::ServerOutgoing:
            if (o.nextOffset < o.sendable()) {
                rpc->silentTicks = 0;  // the next move is ours (pacing)
                return;
            }
            if (o.nextOffset >= o.length) {
                // Fully sent: wait for the client's ack, asking for it now and then, and
                // give up eventually (the client may be gone for good). Only NEED_ACKs
                // actually sent count towards giving up.
                ++rpc->ackWaitTicks;
                if (rpc->ackWaitTicks >= cfg_.requestAckTicks && rpc->ackWaitTicks % cfg_.requestAckTicks == 0)
                    timerPacketDue(rpc);
                return;
            }
            // Waiting for the client's grants: only its GRANTs and RESENDs show that it
            // still wants the rest, and a client with many such responses from us sends
            // its RESENDs through its per-peer budget, each one many ticks apart. So a
            // silent client is asked (NEED_ACK: a client still receiving answers with a
            // RESEND, one that has let the RPC go with an ACK), and the silence stops
            // counting while our question waits for our own budget and the client is
            // heard from. Without that, a server with more waiting responses than the
            // client's budget covers in a timeout timed them out, and the client's next
            // RESEND was told "id used": healthy calls ended as aborted.
            if (serverSilenceTimesOut(rpc, now)) return;
            // (From half the timeout: a client that is not short of budget keeps the
            // silence far below it with RESENDs every resendInterval.)
            if (const int askFrom = std::max(cfg_.resendTicks, cfg_.timeoutTicks / 2);
                rpc->silentTicks >= askFrom && (rpc->silentTicks - askFrom) % cfg_.resendInterval == 0)
                timerPacketDue(rpc);
            return;
        case RpcState::ServerIncoming:
            if (serverSilenceTimesOut(rpc, now)) return;
            break;
        case RpcState::Client:
            if (o.nextOffset < o.sendable()) {
                rpc->silentTicks = 0;  // still transmitting the request
                return;
            }
            if (!holdSilence(rpc, now)) ++rpc->silentTicks;
            if (rpc->silentTicks >= cfg_.timeoutTicks) {
                ++m_.clientRpcsTimedOut;
                HOMA_TRACE("timeout client id %u silent %u", rpc->id, rpc->silentTicks);
                Time ms = static_cast<Time>(cfg_.timeoutTicks) * cfg_.tickNs / 1'000'000;
                failRpc(rpc, Status(StatusCode::Timeout, "no response from " + rpc->peer->address.toString() +
                                                             " for " + std::to_string(ms) + " ms"));
                return;
            }
            break;
    }
    // A client told BUSY waits longer before each RESEND (BUSY also reset its silence, so
    // a server that stops answering still times out after timeoutTicks). The wait stays
    // within an eighth of the timeout: a server busy for long is asked about eight times
    // per timeout, so that a few RESENDs or BUSYs lost in a row do not end a call whose
    // server is alive (at half the timeout it was asked once, and one loss timed it out).
    const int backoff = std::min(rpc->busyReplies, kMaxBusyBackoff);
    const int cap = std::max(cfg_.resendTicks, cfg_.timeoutTicks / 8);
    // (Shifted in 64 bits: an interval near an int's range must not wrap to 0 or below.)
    const int first = static_cast<int>(std::min<int64_t>(int64_t{cfg_.resendTicks} << backoff, cap));
    const int every = static_cast<int>(
        std::min<int64_t>(int64_t{cfg_.resendInterval} << backoff, std::max(cfg_.resendInterval, cap)));
    if (rpc->silentTicks >= first && (rpc->silentTicks - first) % every == 0) timerPacketDue(rpc);
}

// Sends RESENDs for every gap and for the granted-but-missing tail of the incoming
// message; with nothing missing, an empty RESEND that the sender answers with BUSY.
void Engine::requestMissing(Rpc* rpc) {
    InMessage& in = rpc->in;
    if (!in.started) {
        sendResend(rpc, 0, wire::kResendAll, static_cast<uint8_t>(maxSchedPriority_));
        return;
    }
    if (in.waitingForBuffer) {
        sendResend(rpc, 0, 0, in.priority);
        return;
    }
    constexpr int kMaxRanges = 16;  // bounds the work; later ticks ask for the rest
    int sent = 0;
    for (const GapList::Range& g : in.gaps.gaps()) {
        if (sent == kMaxRanges) return;
        sendResend(rpc, g.start, g.end - g.start, in.priority);
        ++sent;
    }
    uint32_t highest = in.gaps.highest();
    if (in.granted > highest) {
        sendResend(rpc, highest, in.granted - highest, in.priority);
        ++sent;
    }
    if (sent == 0) sendResend(rpc, highest, 0, in.priority);
}

void Engine::collectPeers(Time now) {
    // Idle peers, least recently used first; stop at the first one used recently.
    while (peers_.size() > cfg_.peerGcThreshold && !idlePeers_.empty()) {
        Peer* p = &idlePeers_.front();
        if (now - p->lastUsed < cfg_.peerIdleNs) break;
        evictPeer(p);
    }
}

}  // namespace homa::engine
