// The state of one RPC at one end. An RPC owns at most one outgoing message (the
// request at a client, the response at a server) and one incoming message.
#pragma once

#include <boost/intrusive/list.hpp>
#include <boost/intrusive/set.hpp>

#include <cstdint>

#include "engine/buffer_pool.h"
#include "engine/reassembly.h"
#include "engine/time.h"

namespace homa::engine {

namespace bi = boost::intrusive;
struct Peer;

enum class RpcState : uint8_t {
    Client,          ///< client: sending the request and/or receiving the response
    ServerIncoming,  ///< server: receiving the request
    ServerInService, ///< server: request delivered, the application is working on it
    ServerOutgoing,  ///< server: sending the response, then waiting for the client's ack
};
const char* toString(RpcState state);

struct OutMessage {
    BufferPool::Buffer buffer;
    uint32_t length = 0;
    uint32_t nextOffset = 0;  ///< first byte never transmitted
    uint32_t granted = 0;     ///< bytes the receiver allows us to send
    uint32_t unsched = 0;     ///< bytes that need no grant
    uint8_t unschedPriority = 0;
    uint8_t schedPriority = 0;
    /// Bytes below this were sent before a restart; sending them again is a retransmission.
    uint32_t retransmitBelow = 0;
    Time birth = 0;

    uint32_t sendable() const { return std::min(granted, length); }
};

struct InMessage {
    bool started = false;       ///< first DATA packet seen: length is known
    bool waitingForBuffer = false;
    uint32_t length = 0;
    uint32_t received = 0;      ///< distinct bytes received
    uint32_t granted = 0;       ///< bytes the sender may send (unscheduled + our grants)
    uint32_t counted = 0;       ///< this message's share of the engine's incoming total
    uint8_t priority = 0;       ///< priority of our latest grant
    GapList gaps;
    BufferPool::Buffer buffer;
    Time birth = 0;
};

using SetHook = bi::set_member_hook<>;
using ListHook = bi::list_member_hook<>;

/// Most doublings of a client's RESEND interval after BUSY replies (see Rpc::busyReplies).
inline constexpr int kMaxBusyBackoff = 5;

enum class ClientTurn : uint8_t { None, Waiting, UnderWay };

struct Rpc {
    uint64_t id = 0;  ///< local id: the client's id (even) at a client, id ^ 1 (odd) at a server
    Peer* peer = nullptr;
    RpcState state = RpcState::Client;
    uint64_t cookie = 0;
    uint64_t serial = 0;  ///< engine-unique creation number: breaks ties deterministically
    Time birth = 0;
    OutMessage out;
    InMessage in;

    int silentTicks = 0;  ///< ticks since the peer last showed it is working on this RPC
    int ackWaitTicks = 0; ///< server: ticks since the response was fully sent
    int needAcksSent = 0;
    /// The tick that last sent a RESEND or NEED_ACK for this RPC.
    uint64_t timerPacketTick = UINT64_MAX;
    uint64_t restartTick = UINT64_MAX;  ///< client: the tick of the last restart
    /// Client: BUSY packets, before the response started, since the response last made
    /// progress. Each one doubles the wait before the next RESEND (up to kMaxBusyBackoff
    /// doublings): a server that says it is busy, or that refused the request for
    /// overload, is asked again less and less often.
    int busyReplies = 0;
    /// Client: where the RPC stands against its server's maxClientRpcsPerServer.
    /// Waiting: in the peer's waitingToStart list (through allHook), nothing sent yet,
    /// not timed. UnderWay: counted in Peer::clientRpcsUnderWay. None: neither (a server
    /// RPC, or a client RPC whose start failed).
    ClientTurn turn = ClientTurn::None;

    uint64_t clientId() const { return id & ~uint64_t{1}; }
    bool isClient() const { return (id & 1) == 0; }

    SetHook grantHook;      ///< in Peer::grantable (SRPT order)
    SetHook grantFifoHook;  ///< in the engine's oldest-first grantable set
    SetHook sendHook;       ///< in the sender's SRPT set
    SetHook sendFifoHook;   ///< in the sender's oldest-first set
    ListHook allHook;       ///< in the engine's list of all RPCs (for the timer), or in
                            ///< its peer's waitingToStart list
    ListHook waitHook;      ///< in the list of messages waiting for buffer space
    /// In its peer's list of RPCs whose RESEND or NEED_ACK waits for the per-tick budget
    /// (Peer::deferred, ProtocolOptions::timerPacketsPerPeer).
    ListHook deferHook;
};

/// Grant order: fewest ungranted bytes first, then oldest.
struct GrantOrder {
    bool operator()(const Rpc& a, const Rpc& b) const {
        uint32_t ra = a.in.length - a.in.granted, rb = b.in.length - b.in.granted;
        if (ra != rb) return ra < rb;
        if (a.in.birth != b.in.birth) return a.in.birth < b.in.birth;
        return a.serial < b.serial;
    }
};
struct GrantFifoOrder {
    bool operator()(const Rpc& a, const Rpc& b) const {
        if (a.in.birth != b.in.birth) return a.in.birth < b.in.birth;
        return a.serial < b.serial;
    }
};
/// Send order: fewest bytes left to transmit first, then oldest.
struct SendOrder {
    bool operator()(const Rpc& a, const Rpc& b) const {
        uint32_t ra = a.out.length - a.out.nextOffset, rb = b.out.length - b.out.nextOffset;
        if (ra != rb) return ra < rb;
        if (a.out.birth != b.out.birth) return a.out.birth < b.out.birth;
        return a.serial < b.serial;
    }
};
struct SendFifoOrder {
    bool operator()(const Rpc& a, const Rpc& b) const {
        if (a.out.birth != b.out.birth) return a.out.birth < b.out.birth;
        return a.serial < b.serial;
    }
};

using GrantSet = bi::multiset<Rpc, bi::member_hook<Rpc, SetHook, &Rpc::grantHook>, bi::compare<GrantOrder>>;
using GrantFifoSet = bi::multiset<Rpc, bi::member_hook<Rpc, SetHook, &Rpc::grantFifoHook>, bi::compare<GrantFifoOrder>>;
using SendSet = bi::multiset<Rpc, bi::member_hook<Rpc, SetHook, &Rpc::sendHook>, bi::compare<SendOrder>>;
using SendFifoSet = bi::multiset<Rpc, bi::member_hook<Rpc, SetHook, &Rpc::sendFifoHook>, bi::compare<SendFifoOrder>>;
using RpcList = bi::list<Rpc, bi::member_hook<Rpc, ListHook, &Rpc::allHook>>;
using WaitList = bi::list<Rpc, bi::member_hook<Rpc, ListHook, &Rpc::waitHook>>;
using DeferList = bi::list<Rpc, bi::member_hook<Rpc, ListHook, &Rpc::deferHook>>;

}  // namespace homa::engine
