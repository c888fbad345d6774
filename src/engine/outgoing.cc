// The sender: which granted bytes go out next (SRPT, with a FIFO share for the oldest
// message), pacing against the NIC-queue estimate, and retransmission on RESEND.
#include "engine/engine.h"

namespace homa::engine {

// Re-files an RPC in the sender's sets after its send state changed.
void Engine::updateSendable(Rpc* rpc) {
    if (rpc->sendHook.is_linked()) sendable_.erase(sendable_.iterator_to(*rpc));
    if (rpc->sendFifoHook.is_linked()) sendFifo_.erase(sendFifo_.iterator_to(*rpc));
    const OutMessage& o = rpc->out;
    bool mayTransmit = rpc->state == RpcState::Client || rpc->state == RpcState::ServerOutgoing;
    if (mayTransmit && o.buffer && o.nextOffset < o.sendable()) {
        sendable_.insert(*rpc);
        sendFifo_.insert(*rpc);
    }
}

void Engine::sendDataPacket(Rpc* rpc, uint32_t offset, uint8_t priority, bool retransmit) {
    OutMessage& o = rpc->out;
    Peer* peer = rpc->peer;
    uint32_t length = std::min(cfg_.maxPayload, o.length - offset);
    wire::CommonHeader c;
    c.sport = cfg_.port;
    c.dport = peer->address.port;
    c.senderId = rpc->id;
    if (rpc->restartTick != UINT64_MAX) c.flags = wire::kFlagRestarted;  // (client RPCs only)
    wire::DataHeader d;
    d.messageLength = o.length;
    d.incoming = std::max(o.granted, o.unsched);
    if (!peer->pendingAcks.empty()) d.ack = popPendingAck(peer);
    d.cutoffVersion = peer->cutoffVersion;
    d.retransmit = retransmit;
    d.offset = offset;
    size_t n = wire::encodeData(scratch_, c, d);
    countSent(wire::PacketType::Data, priority, n + length);
    if (retransmit) {
        ++m_.retransmittedPackets;
        m_.retransmittedBytes += length;
    }
    HOMA_TRACE(kTraceSend[0], rpc->id, offset, length, priority);
    sink_.transmit(peer->address, priority, std::span(scratch_.data(), n),
                   std::span<const uint8_t>(o.buffer.data + offset, length));
}

// Sends the next packet of the message; returns its payload length.
uint32_t Engine::sendNextPacket(Rpc* rpc) {
    OutMessage& o = rpc->out;
    uint32_t offset = o.nextOffset;
    uint32_t length = std::min(cfg_.maxPayload, o.length - offset);
    uint8_t priority = offset < o.unsched ? o.unschedPriority : o.schedPriority;
    sendDataPacket(rpc, offset, priority, offset < o.retransmitBelow);
    o.nextOffset = offset + length;
    if (rpc->state == RpcState::ServerOutgoing) rpc->ackWaitTicks = 0;
    return length;
}

// The sender came back to a pacer that had deferred: how long after the wake-up it
// asked for? (The wake-up comes about one packet's time after a batch leaves, so this
// is about the time between the sender's passes.) A quarter of each new sample goes
// into the average; a sample counts at most as the largest allowance (a longer one is
// a stall, not the sender's pace). Passes before the wake-up send nothing and say
// nothing.
void Engine::notePacerLateness(Time now) {
    if (!pacerDeferred_ || sendable_.empty()) return;
    const Time wake = nic_.idleAt() - pacerAllowance();  // (nextPacerWakeup())
    if (now < wake) return;
    const Time sample = std::min<Time>(now - wake, kPacerAllowanceFactor * cfg_.maxNicQueueNs);
    pacerLateNs_ += (sample - pacerLateNs_) / 4;
}

void Engine::transmitData(Time now) {
    notePacerLateness(now);
    pacerDeferred_ = false;
    if (sendable_.empty()) {
        // Nothing to send, the usual case: return before the loop's set-up costs anything.
        pacerFifoCredit_ = 0;
        return;
    }
    while (!sendable_.empty()) {
        // Mostly shortest-remaining first; a small share goes to the oldest message.
        bool fifo = cfg_.pacerFifoFraction > 0 && pacerFifoCredit_ >= cfg_.maxPayload;
        Rpc* rpc = fifo ? &*sendFifo_.begin() : &*sendable_.begin();
        if (pacerDefers(rpc->out, now)) {
            pacerDeferred_ = true;
            ++m_.pacerDeferrals;
            HOMA_TRACE("pacer defer id %u backlog_ns %u sendable %u", rpc->id, nic_.backlog(now), sendable_.size());
            sendSmallMessages();
            return;
        }
        uint32_t length = sendNextPacket(rpc);
        if (fifo) {
            pacerFifoCredit_ -= length;
        } else if (cfg_.pacerFifoFraction > 0) {
            pacerFifoCredit_ += length * cfg_.pacerFifoFraction / (1.0 - cfg_.pacerFifoFraction);
        }
        // Sending a packet only shortens the message's remaining bytes: its place in the
        // FIFO set stands, and so does its place in the SRPT set when it was first there.
        // Re-file it only when it is done or may have to move up (updateSendable's result).
        const OutMessage& o = rpc->out;
        if (o.nextOffset >= o.sendable()) {
            updateSendable(rpc);
        } else if (fifo && rpc != &*sendable_.begin()) {
            sendable_.erase(sendable_.iterator_to(*rpc));
            sendable_.insert(*rpc);
        }
    }
    pacerFifoCredit_ = 0;  // no backlog: nothing to be fair about
}

// The message the pacer defers may come before small ones: a long message near its end
// has fewer bytes left (shortest-remaining order), and the FIFO share picks the oldest.
// Small messages are never deferred, so they go now. In shortest-remaining order they
// are among the first, before any message with deferMinBytes or more left.
void Engine::sendSmallMessages() {
    smallScratch_.clear();
    for (Rpc& r : sendable_) {
        if (r.out.length - r.out.nextOffset >= cfg_.deferMinBytes) break;
        if (r.out.length < cfg_.deferMinBytes) smallScratch_.push_back(&r);
    }
    for (Rpc* r : smallScratch_) {
        while (r->out.nextOffset < r->out.sendable()) sendNextPacket(r);
        updateSendable(r);
    }
}

// A new outgoing message (request or response) joins the sender. When no other message
// is waiting, transmitData() would pick this one at once; if it is a single packet the
// pacer lets through, it is then sent directly instead of being filed in the sender's
// two sets only to be taken out again, with the same packet and the same end state.
void Engine::startSending(Rpc* rpc, Time now) {
    const OutMessage& o = rpc->out;
    if (sendable_.empty() && singlePacket(o.length) && o.nextOffset < o.sendable() && !pacerDefers(o, now)) {
        pacerDeferred_ = false;
        sendNextPacket(rpc);
        pacerFifoCredit_ = 0;  // as transmitData() leaves it once nothing is sendable
        return;
    }
    updateSendable(rpc);
    transmitData(now);
}

void Engine::handleResend(Rpc* rpc, const wire::ResendHeader& r) {
    if (rpc->state == RpcState::ServerIncoming || rpc->state == RpcState::ServerInService) {
        if (r.length != wire::kResendAll) {
            // A range of a response we never started: the client holds response state
            // that did not come from us. Make it start over.
            sendControl(rpc->peer, rpc->id, wire::PacketType::RpcUnknown);
            return;
        }
        // The client asks for the response, which does not exist yet: say we are alive.
        // (Its asking is no progress on the request, so our own silence count goes on.)
        sendControl(rpc->peer, rpc->id, wire::PacketType::Busy);
        return;
    }
    OutMessage& o = rpc->out;
    if (r.length != wire::kResendAll && r.offset >= o.length) {
        // Asks for bytes past the end of our message: it describes some other message.
        // Neither an answer nor a sign of life.
        ++m_.dropped[static_cast<size_t>(DropReason::Inconsistent)];
        return;
    }
    rpc->silentTicks = 0;
    if (rpc->state == RpcState::ServerOutgoing) {
        // The client is alive and still wants bytes: not the silence NEED_ACK gives up on.
        rpc->ackWaitTicks = 0;
        rpc->needAcksSent = 0;
    }
    uint64_t end = r.length == wire::kResendAll ? o.nextOffset
                                                 : std::min<uint64_t>(o.length, uint64_t{r.offset} + r.length);
    // Asking for bytes means they are granted: this recovers from a lost GRANT.
    if (r.length != wire::kResendAll && end > o.granted) {
        o.granted = static_cast<uint32_t>(end);
        if (r.offset >= o.nextOffset) o.schedPriority = r.priority;
        updateSendable(rpc);
    }
    uint64_t sendEnd = std::min<uint64_t>(end, o.nextOffset);
    uint32_t start = r.offset - r.offset % cfg_.maxPayload;
    if (start >= sendEnd) {
        // Nothing sent yet to send again. Either we have nothing granted, or the bytes
        // wait in our queue behind shorter messages (SRPT); either way say we are alive,
        // or a receiver starved by our own sender would give up on the message.
        sendControl(rpc->peer, rpc->id, wire::PacketType::Busy);
        return;
    }
    // Bytes sent unscheduled go again at their own priority: the RESEND names the
    // receiver's scheduled level, below every unscheduled one, and a lost short message
    // would come back behind all the short messages' traffic.
    for (uint64_t offset = start; offset < sendEnd; offset += cfg_.maxPayload)
        sendDataPacket(rpc, static_cast<uint32_t>(offset),
                       offset < o.unsched ? std::max(o.unschedPriority, r.priority) : r.priority, true);
}

}  // namespace homa::engine
