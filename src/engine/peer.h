// What an engine knows about one remote endpoint (address and port).
#pragma once

#include <absl/container/inlined_vector.h>

#include <array>
#include <memory>

#include "engine/client_rpc_index.h"
#include "engine/rpc.h"
#include "engine/seen_ids.h"
#include "homa/address.h"
#include "wire/wire.h"

namespace homa::engine {

/// Acks waiting to be sent, oldest first: the oldest go first, so that no finished RPC
/// waits at the server (which asks with NEED_ACK after a while) behind newer ones.
class AckQueue {
  public:
    bool empty() const { return head_ == entries_.size(); }
    size_t size() const { return entries_.size() - head_; }
    void push(const wire::AckEntry& a) {
        // Drop what was taken once it is at least half the storage: amortised O(1), and
        // the storage stays as large as the most acks ever pending at once.
        if (head_ > 0 && head_ * 2 >= entries_.size()) {
            entries_.erase(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
        entries_.push_back(a);
    }
    wire::AckEntry pop() {
        wire::AckEntry a = entries_[head_++];
        if (head_ == entries_.size()) {
            entries_.clear();
            head_ = 0;
        }
        return a;
    }

  private:
    absl::InlinedVector<wire::AckEntry, wire::kMaxAcksPerPacket> entries_;
    size_t head_ = 0;
};

struct Peer {
    Address address;
    uint64_t serial = 0;  ///< engine-unique creation number: breaks ties deterministically

    /// The peer's cutoffs, used to pick the priority of unscheduled bytes we send it.
    std::array<uint32_t, 8> cutoffs{};
    uint16_t cutoffVersion = 0;
    Time cutoffsSentAt = INT64_MIN;  ///< when we last sent the peer our cutoffs

    /// Acks for RPCs we ran as client against this peer, not yet sent.
    AckQueue pendingAcks;

    /// Client ids this peer used with us as server (created lazily).
    std::unique_ptr<SeenIds> seen;
    /// The RPCs we serve for this peer, by its ids (one slot at first: most peers are
    /// only servers to us; it grows with the peer's window of calls).
    ClientRpcIndex<Rpc> serverRpcs{1, 4096};

    uint32_t rpcCount = 0;
    /// Our client RPCs with this peer that are under way, and those waiting for their
    /// turn, first made first (ProtocolOptions::maxClientRpcsPerServer).
    uint32_t clientRpcsUnderWay = 0;
    RpcList waitingToStart;
    Time lastUsed = 0;
    Time lastHeard = INT64_MIN;  ///< when a packet about one of our RPCs last came from it

    /// RESENDs and NEED_ACKs sent to this peer in tick number budgetTick (see
    /// ProtocolOptions::timerPacketsPerPeer).
    uint64_t budgetTick = UINT64_MAX;
    int timerPackets = 0;
    /// This peer's RPCs whose RESEND or NEED_ACK waits for the budget, first put off first.
    DeferList deferred;

    /// Grantable incoming messages from this peer, best first.
    GrantSet grantable;
    SetHook grantPeersHook;  ///< in the engine's set of peers with grantable messages
    int activeGrants = 0;    ///< scratch for the grant decision

    ListHook lruHook;        ///< in the engine's list of idle peers (no RPCs), LRU first
    ListHook acksHook;       ///< in the list of peers with pending acks
    ListHook ackDueHook;     ///< in the list of peers with a full ACK packet's worth pending
    ListHook deferringHook;  ///< in the list of peers with RPCs in `deferred`
};

/// Peers with grantable messages, ordered by their best message.
struct GrantPeerOrder {
    bool operator()(const Peer& a, const Peer& b) const {
        const Rpc& ra = *a.grantable.begin();
        const Rpc& rb = *b.grantable.begin();
        if (GrantOrder{}(ra, rb)) return true;
        if (GrantOrder{}(rb, ra)) return false;
        return a.serial < b.serial;
    }
};

using GrantPeerSet =
    bi::multiset<Peer, bi::member_hook<Peer, SetHook, &Peer::grantPeersHook>, bi::compare<GrantPeerOrder>>;
using PeerLru = bi::list<Peer, bi::member_hook<Peer, ListHook, &Peer::lruHook>>;
using PeerAckList = bi::list<Peer, bi::member_hook<Peer, ListHook, &Peer::acksHook>>;
using PeerAckDueList = bi::list<Peer, bi::member_hook<Peer, ListHook, &Peer::ackDueHook>>;
using PeerDeferringList = bi::list<Peer, bi::member_hook<Peer, ListHook, &Peer::deferringHook>>;

}  // namespace homa::engine
