// Acknowledgements, which let a server free a finished RPC. Until then the server keeps
// the response so that a retried request is answered from it, never executed again.
//
// A client queues one ack per completed RPC on the server's peer; acks ride on DATA
// packets to that peer, and go out in ACK packets when a packet's worth (five) are
// pending at the end of a batch of work (sendDueAcks), at the end of the batch in which
// a tick passed (all of them), or when the server asks with NEED_ACK. Waiting for the
// end of the batch lets the requests that the application starts on receiving responses
// carry their acks: a client that keeps many small RPCs going then sends no ACK packets
// at all, where sending one per five responses cost both ends a packet, and the server
// a wake-up of its own.
#include "engine/engine.h"

namespace homa::engine {

void Engine::queueAck(Peer* peer, uint64_t clientId) {
    peer->pendingAcks.push({clientId, peer->address.port});
    if (!peer->acksHook.is_linked()) peersWithAcks_.push_back(*peer);
    if (peer->pendingAcks.size() >= wire::kMaxAcksPerPacket && !peer->ackDueHook.is_linked())
        peersAckDue_.push_back(*peer);
}

wire::AckEntry Engine::popPendingAck(Peer* peer) {
    wire::AckEntry a = peer->pendingAcks.pop();
    if (peer->pendingAcks.size() < wire::kMaxAcksPerPacket && peer->ackDueHook.is_linked())
        peersAckDue_.erase(peersAckDue_.iterator_to(*peer));
    if (peer->pendingAcks.empty() && peer->acksHook.is_linked())
        peersWithAcks_.erase(peersWithAcks_.iterator_to(*peer));
    return a;
}

void Engine::sendDueAcks() {
    if (ackFlushRequested_) {
        ackFlushRequested_ = false;
        flushAcks();
        return;
    }
    while (!peersAckDue_.empty()) sendAckPacket(&peersAckDue_.front(), 0);
}

// Sends the peer's pending acks, plus `extraClientId` if non-zero.
void Engine::sendAckPacket(Peer* peer, uint64_t extraClientId) { sendAckTo(peer->address, extraClientId, peer); }

void Engine::sendAckTo(const Address& to, uint64_t extraClientId, Peer* peer) {
    wire::CommonHeader c;
    c.sport = cfg_.port;
    c.dport = to.port;
    wire::AckHeader h;
    if (extraClientId != 0) h.acks[h.numAcks++] = {extraClientId, to.port};
    while (peer && !peer->pendingAcks.empty() && h.numAcks < wire::kMaxAcksPerPacket)
        h.acks[h.numAcks++] = popPendingAck(peer);
    size_t n = wire::encodeAck(scratch_, c, h);
    ++m_.ackPacketsSent;
    countSent(wire::PacketType::Ack, cfg_.controlPriority, n);
    HOMA_TRACE(kTraceSend[EngineMetrics::typeIndex(wire::PacketType::Ack)], 0, h.numAcks, h.acks[0].clientId);
    sink_.transmit(to, cfg_.controlPriority, std::span(scratch_.data(), n), {});
}

void Engine::flushAcks() {
    while (!peersWithAcks_.empty()) sendAckPacket(&peersWithAcks_.front(), 0);
}

void Engine::handleAckEntry(Peer* peer, const wire::AckEntry& ack) {
    ++m_.acksReceived;
    if (ack.serverPort != cfg_.port) return;
    Rpc* rpc = findServerRpc(peer, ack.clientId & ~uint64_t{1});
    if (!rpc) return;
    // Only a client that has the whole response acks; anything else is stale or hostile.
    if (rpc->state != RpcState::ServerOutgoing) return;
    ++m_.serverRpcsAcked;
    freeRpc(rpc);
}

void Engine::handleNeedAck(Peer* peer, const Address& source, uint64_t clientId) {
    Rpc* rpc = peer ? findClientRpcUnderWay(clientId) : nullptr;
    if (rpc && rpc->peer == peer) {
        // Our copy of the response is incomplete: ask for the rest. (Not a reset of our
        // silence count: only the bytes themselves, or BUSY, show progress; otherwise a
        // server that cannot supply them and a client that keeps asking would keep
        // each other alive forever.)
        requestMissing(rpc);
        return;
    }
    // Finished (or forgotten) here: the server may free it. (An unknown server has no
    // acks of ours waiting to go with this one, and gets no peer made for asking.)
    if (peer) {
        sendAckPacket(peer, clientId);
    } else {
        sendAckTo(source, clientId);
    }
}

}  // namespace homa::engine
