// The Homa protocol engine: one endpoint's whole protocol state as a pure state machine.
//
// It performs no I/O, reads no clock and starts no thread. Inputs are packets (bytes, the
// sender's address, the time), timer calls (the time) and application calls. Outputs are
// packets handed to a PacketSink, deliveries (finished messages and failed RPCs) read with
// pollDelivery(), and nextWakeup(): the time by which advance() must be called again.
// The same engine runs under the UDP runtime, the simulator and the tests.
//
// Thread safety: none. One engine is used by one thread at a time; the runtime serialises.
//
// Where each mechanism lives:
//   engine.cc    application calls, packet dispatch, RPC and peer lifetime
//   incoming.cc  DATA reception, reassembly, buffers, delivery
//   grant.cc     the grant scheduler (SRPT, overcommit, max_incoming, FIFO grants)
//   outgoing.cc  the sender (SRPT, pacing with the NIC-queue estimate, retransmission)
//   timer.cc     silent ticks, RESEND, timeouts, NEED_ACK, ack flushing, peer eviction
//   ack.cc       acknowledgements and at-most-once bookkeeping
#pragma once

#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "engine/buffer_pool.h"
#include "engine/client_rpc_index.h"
#include "engine/config.h"
#include "engine/metrics.h"
#include "engine/nic_queue.h"
#include "engine/peer.h"
#include "engine/ring_queue.h"
#include "engine/rpc.h"
#include "homa/address.h"
#include "homa/status.h"
#include "homa/trace.h"
#include "wire/wire.h"

namespace homa::engine {

/// Where the engine's packets go. `header` and `payload` together form one packet; the
/// spans are valid only during the call, which must not call back into the engine.
class PacketSink {
  public:
    virtual ~PacketSink() = default;
    virtual void transmit(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
                          std::span<const uint8_t> payload) = 0;
};

/// A received message: a view of a buffer from the engine's pool. Give it back with
/// Engine::releaseMessage() exactly once.
struct ReceivedMessage {
    uint8_t* data = nullptr;
    uint32_t length = 0;
    uint32_t capacity = 0;
};

/// A buffer of the engine's send memory, handed to the application to fill
/// (Engine::allocateOutgoing()): an outgoing message built in place, sent without a copy.
struct OutgoingBuffer {
    uint8_t* data = nullptr;
    uint32_t capacity = 0;
    explicit operator bool() const { return data != nullptr; }
};

/// How the application names an RPC it serves.
struct ServerRpcId {
    Address client;
    uint64_t id = 0;  ///< the client's id (even)
    friend bool operator==(const ServerRpcId&, const ServerRpcId&) = default;
};

struct Delivery {
    enum class Kind : uint8_t { Request, Response, Failure };
    Kind kind = Kind::Request;
    uint64_t clientId = 0;   ///< Response, Failure: the id startRequest returned
    uint64_t cookie = 0;     ///< Response, Failure: the cookie given to startRequest
    ServerRpcId server;      ///< Request
    ReceivedMessage message; ///< Request, Response
    Status status;           ///< Failure
};

/// One RPC as shown by Engine::listRpcs().
struct RpcInfo {
    Address peer;
    uint64_t id = 0;
    RpcState state = RpcState::Client;
    uint32_t outLength = 0, outSent = 0, outGranted = 0;
    uint32_t inLength = 0, inReceived = 0, inGranted = 0;
    bool waitingForBuffer = false;
    bool waitingToStart = false;  ///< client: waits for its turn (maxClientRpcsPerServer)
    int silentTicks = 0;
};

class Engine {
  public:
    /// `config` must be valid (Config::validate() empty); the constructor throws
    /// std::invalid_argument otherwise.
    Engine(const Config& config, PacketSink& sink);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // ---- Application calls
    /// Starts an RPC: copies `request` and begins sending it. On success *id is the RPC's id.
    /// With `owned` (a buffer from allocateOutgoing() that `request` lies at the start of),
    /// sends from it without a copy; the engine takes the buffer, on failure too.
    Status startRequest(const Address& server, std::span<const uint8_t> request, uint64_t cookie,
                        Time now, uint64_t* id, OutgoingBuffer owned = {});
    /// Sends the response of a request that was delivered and not yet answered (`owned`
    /// as for startRequest()).
    Status sendResponse(const ServerRpcId& rpc, std::span<const uint8_t> response, Time now,
                        OutgoingBuffer owned = {});
    /// A buffer from the send memory for a message of `length` bytes, to be filled and
    /// passed to startRequest()/sendResponse() or returned with releaseOutgoing(); empty,
    /// with the reason, if the length is not one a message may have (InvalidArgument,
    /// MessageTooLarge) or the memory is full (OutOfBuffers).
    OutgoingBuffer allocateOutgoing(size_t length, Status* error);
    void releaseOutgoing(OutgoingBuffer buffer);
    /// Forgets a client RPC; nothing is delivered for it afterwards.
    Status abortClientRpc(uint64_t id, Time now);
    /// Drops a delivered request without answering; the client will see a failure.
    Status abortServerRpc(const ServerRpcId& rpc, Time now);
    /// Returns a delivered message's buffer to the pool (may resume granting).
    void releaseMessage(const ReceivedMessage& message, Time now);
    /// The same for several messages at once: returns each buffer, then resumes waiting
    /// messages and decides grants once for them all (what releaseMessage() does per
    /// message).
    void releaseMessages(std::span<const ReceivedMessage> messages, Time now);

    // ---- Network and time inputs
    /// Processes one packet of a batch. Grant decisions and new DATA wait for finishBatch().
    void handlePacket(const Address& source, std::span<const uint8_t> packet, Time now);
    /// Ends a batch of packets: decides grants once and transmits what is allowed.
    void finishBatch(Time now);
    /// Sends an ACK packet to each server for which a packet's worth of acks (finished
    /// client RPCs) is pending. Call once the application has seen the batch's
    /// deliveries: requests it starts meanwhile carry pending acks in their DATA packets
    /// for free. Fewer pending acks wait for such a request, or for the first call after
    /// a tick, which sends them all (without calls, the tick after sends them).
    void sendDueAcks();
    /// Whether `packet` would start a new server RPC (a request we hold no state for).
    /// Cheap, reads only the header: lets a runtime serve work in progress before new
    /// requests when it is behind.
    bool isNewRequest(const Address& source, std::span<const uint8_t> packet) const;
    /// handlePacket() + finishBatch().
    void receive(const Address& source, std::span<const uint8_t> packet, Time now);
    /// Runs timers and the pacer. Call no later than nextWakeup().
    void advance(Time now);
    /// When advance() is next needed (kNever when the engine is idle).
    Time nextWakeup() const;
    /// The two parts of nextWakeup(). The tick is coarse: running it up to one tick late
    /// only delays RESENDs and timeouts by that much, so a host may drive it from a
    /// periodic timer. The pacer's wake-up is precise (a few microseconds ahead).
    Time nextTickDue() const;
    Time nextPacerWakeup() const;

    // ---- Outputs and inspection
    /// Moves the oldest delivery into `out`; false if there is none.
    bool pollDelivery(Delivery& out);
    /// The oldest delivery in place, or null: a host that reads a delivery's fields and
    /// moves nothing out saves pollDelivery()'s move. Valid until popDelivery() or the
    /// next engine call that may deliver.
    Delivery* peekDelivery() { return deliveries_.empty() ? nullptr : &deliveries_.front(); }
    /// Removes the delivery peekDelivery() returned (there must be one).
    void popDelivery();
    bool hasDeliveries() const { return !deliveries_.empty(); }
    const EngineMetrics& metrics() const { return m_; }
    const Config& config() const { return cfg_; }
    /// How long a permit to send a request again lasts (SeenIds::permit), in ticks.
    uint64_t permitTicks() const { return std::max<uint64_t>(4, static_cast<uint64_t>(cfg_.timeoutTicks)); }
    size_t rpcCount() const { return allRpcs_.size() + inServiceRpcs_.size() + rpcsWaitingToStart_; }
    /// Client RPCs waiting for their turn (ProtocolOptions::maxClientRpcsPerServer).
    size_t rpcsWaitingToStart() const { return rpcsWaitingToStart_; }
    size_t peerCount() const { return peers_.size(); }
    /// Server RPCs being received or served and not yet answered.
    uint32_t pendingRequests() const { return pendingRequests_; }
    uint64_t incomingOutstanding() const { return incomingOutstanding_; }
    const BufferPool& bufferPool() const { return inPool_; }
    /// The memory of messages being sent (and of OutgoingBuffers handed out).
    const BufferPool& sendPool() const { return outPool_; }
    const NicQueue& nicQueue() const { return nic_; }
    /// The NIC backlog the pacer allows now (see pacerAllowance()).
    Time pacerAllowanceNs() const { return pacerAllowance(); }
    /// Number of incoming messages currently granted to (the active set of the last decision).
    int activeGrants() const { return lastActiveCount_; }
    void listRpcs(std::vector<RpcInfo>& out) const;
    /// Sends a FREEZE packet to `peer`: asks it to stop its time trace where it is.
    void sendFreeze(const Address& peer, Time now);
    /// Whether a FREEZE packet arrived since the last call (the runtime then dumps the
    /// time trace, when asked to).
    bool takeFreeze() { return std::exchange(freezeReceived_, false); }

  private:
    // engine.cc
    Time clamp(Time now);
    static void traceDelivery(const Delivery& d);
    /// Packets come in batches, mostly from few peers: the last peer found is checked
    /// first, inline, and only a different peer costs a hash lookup.
    Peer* findPeer(const Address& address) {
        if (lastPeer_ != nullptr && sameAddress(lastPeer_->address, address)) return lastPeer_;
        return findPeerInTable(address);
    }
    Peer* findPeerInTable(const Address& address);
    /// Address equality, inline: Address::operator== calls memcmp() for the IP bytes.
    static bool sameAddress(const Address& a, const Address& b) {
        return a.port == b.port && std::memcmp(a.ip.data(), b.ip.data(), sizeof a.ip) == 0;
    }
    Peer* getPeer(const Address& address, Time now);
    void touchPeer(Peer* peer, Time now);
    void evictPeer(Peer* peer);
    /// Keeps the highest client id served to an evicted peer (see evictPeer()).
    void rememberServedIds(const Address& address, uint64_t highest);
    Rpc* newRpc(Peer* peer, uint64_t id, RpcState state, Time now);
    void freeRpc(Rpc* rpc);
    /// Frees a server RPC before its client acknowledged it (a timeout, NEED_ACK given up,
    /// the application dropping the request). If the request ran, its id is recorded as
    /// such (SeenIds::discarded): a client that asks about it is told it was used.
    void discardServerRpc(Rpc* rpc);
    Rpc* findClientRpc(uint64_t id);
    /// The same for packets from the network: an RPC waiting for its turn has sent
    /// nothing, so no packet can be about it.
    Rpc* findClientRpcUnderWay(uint64_t id) {
        Rpc* rpc = findClientRpc(id);
        return rpc && rpc->turn != ClientTurn::Waiting ? rpc : nullptr;
    }
    Rpc* findServerRpc(Peer* peer, uint64_t clientId);
    /// Copies the message; the caller then hands the RPC to startSending().
    Status setupOutMessage(Rpc* rpc, std::span<const uint8_t> data, Time now, OutgoingBuffer owned);
    /// The checks of a message's length that startRequest() and sendResponse() make.
    Status checkOutgoingLength(size_t length, const char* what) const;
    void failRpc(Rpc* rpc, Status status);
    void handleGrant(Rpc* rpc, const wire::Packet& p);
    void handleRpcUnknown(Rpc* rpc, uint8_t flags, Time now);
    void skipClientIdsAhead(uint64_t refusedId);
    void sendControl(Peer* peer, uint64_t senderId, wire::PacketType type, uint8_t flags = 0);
    void sendControl(const Address& to, uint64_t senderId, wire::PacketType type, uint8_t flags = 0);
    /// New requests are being refused (maxPendingRequests are pending).
    bool overloaded() const { return cfg_.maxPendingRequests != 0 && pendingRequests_ >= cfg_.maxPendingRequests; }
    void sendResend(Rpc* rpc, uint32_t offset, uint32_t length, uint8_t priority);
    void sendCutoffs(Peer* peer, Time now);
    void countSent(wire::PacketType type, uint8_t priority, size_t bytes);
    uint8_t unschedPriority(const Peer* peer, uint32_t length) const;

    // incoming.cc
    void handleData(Peer* peer, const wire::Packet& p, Time now);
    bool receiveWhole(Rpc* rpc, std::span<const uint8_t> payload, Time now);
    void startInMessage(Rpc* rpc, uint32_t length, uint32_t incoming, Time now);
    void completeInMessage(Rpc* rpc, Time now);
    /// Whether a message of `length` bytes fits in one packet (and may use the reserve).
    bool singlePacket(uint32_t length) const { return length <= cfg_.maxPayload; }
    WaitList& bufferWaitList(const Rpc* rpc);
    void cancelBufferWait(Rpc* rpc);
    void retryBufferWaiters(Time now);
    /// Gives the first waiter of its list its buffer and asks for its data again; false
    /// (it stays first in line) if the memory cannot be had.
    bool resumeBufferWaiter(Rpc* rpc, bool small, Time now);
    void releaseInBuffer(Rpc* rpc);

    // grant.cc
    bool isGrantable(const Rpc* rpc) const;
    void addGrantable(Rpc* rpc);
    void removeGrantable(Rpc* rpc);
    void updateGrantable(Rpc* rpc);
    bool grantSetsInOrder() const;
    void recountIncoming(Rpc* rpc);
    void decideGrants(Time now);
    void sendGrant(Rpc* rpc, uint32_t newGranted, uint8_t priority);

    // outgoing.cc
    void updateSendable(Rpc* rpc);
    void transmitData(Time now);
    /// Sends every message shorter than deferMinBytes that waits in sendable_ (the pacer
    /// never defers them, even behind a long message it does defer).
    void sendSmallMessages();
    void startSending(Rpc* rpc, Time now);
    uint32_t sendNextPacket(Rpc* rpc);
    /// Whether the pacer holds the message back: the NIC queue is long, and the message
    /// is not short enough to pass anyway.
    bool pacerDefers(const OutMessage& o, Time now) const {
        return o.length >= cfg_.deferMinBytes && nic_.backlog(now) > pacerAllowance();
    }
    /// The NIC backlog the pacer allows: maxNicQueueNs, or how late the sender comes
    /// back to the pacer, whichever is more, up to kPacerAllowanceFactor times
    /// maxNicQueueNs. A sender whose passes come every 8 us (one send call costs ~5 us
    /// on some virtual machines) would otherwise let a link that drains its 5 us of
    /// queue idle for 3 us of every 8 (see docs/design.md, "The pacer's allowance").
    Time pacerAllowance() const {
        return std::clamp<Time>(pacerLateNs_, cfg_.maxNicQueueNs, kPacerAllowanceFactor * cfg_.maxNicQueueNs);
    }
    static constexpr Time kPacerAllowanceFactor = 2;
    /// How many of the oldest grantable messages a FIFO grant looks at for one whose
    /// sender has used its grants (bounds a decision's work; see decideGrants()).
    static constexpr int kFifoGrantCandidates = 8;
    void notePacerLateness(Time now);
    void sendDataPacket(Rpc* rpc, uint32_t offset, uint8_t priority, bool retransmit);
    void handleResend(Rpc* rpc, const wire::ResendHeader& r);

    // timer.cc
    void runTick(Time now);
    void checkRpc(Rpc* rpc, Time now);
    bool timerBudgetLeft(Peer* peer);
    void joinTimerList(Rpc* rpc, Time now);
    /// One of `peer`'s client RPCs under way ended: the first one waiting for its turn
    /// starts sending at once (its DATA carries the ack the ended one may have queued).
    void startWaitingRpc(Peer* peer);
    void sendTimerPacket(Rpc* rpc);
    void timerPacketDue(Rpc* rpc);
    void undeferTimerPacket(Rpc* rpc);
    bool timerPacketStillDue(const Rpc* rpc) const;
    bool serverSilenceTimesOut(Rpc* rpc, Time now);
    void sendDeferredTimerPackets();
    bool holdSilence(Rpc* rpc, Time now);
    void requestMissing(Rpc* rpc);
    void flushAcks();
    void collectPeers(Time now);

    // ack.cc
    void queueAck(Peer* peer, uint64_t clientId);
    /// Takes the oldest of the peer's pending acks (there must be one).
    wire::AckEntry popPendingAck(Peer* peer);
    void sendAckPacket(Peer* peer, uint64_t extraClientId);
    /// An ACK to `to` for `extraClientId` (0: none), with `peer`'s pending acks if given.
    void sendAckTo(const Address& to, uint64_t extraClientId, Peer* peer = nullptr);
    void handleAckEntry(Peer* peer, const wire::AckEntry& ack);
    /// A NEED_ACK from `source`, whose peer (if we know it) is `peer`.
    void handleNeedAck(Peer* peer, const Address& source, uint64_t clientId);

    Config cfg_;
    PacketSink& sink_;
    int maxSchedPriority_;
    BufferPool inPool_;
    BufferPool outPool_;
    NicQueue nic_;
    /// unschedBytes rounded up to whole packets: what a message may send without grants.
    uint64_t unschedPackets_ = 0;
    /// What a message's sender is believed to send without further grants: its promise
    /// (DATA's `incoming`), up to the message and to what we granted or our own
    /// unscheduled bytes, whichever is more. A larger promise counts only as it arrives
    /// (one of a whole message would take the room of every other message's grants).
    uint32_t believedPromise(uint32_t incoming, uint32_t length, uint32_t granted) const {
        return static_cast<uint32_t>(
            std::min<uint64_t>({incoming, length, std::max<uint64_t>(granted, unschedPackets_)}));
    }

    absl::flat_hash_map<Address, std::unique_ptr<Peer>> peers_;
    /// Evicted peers' highest served client ids, at most maxPeers of them, oldest
    /// dropped first (forgottenOrder_, which may also hold entries of records taken back
    /// or replaced since: see rememberServedIds); taken back when the peer returns.
    struct ForgottenPeer {
        uint64_t highest = 0;
        uint64_t generation = 0;
    };
    absl::flat_hash_map<Address, ForgottenPeer> forgottenPeers_;
    std::deque<std::pair<Address, uint64_t>> forgottenOrder_;
    uint64_t forgottenGeneration_ = 0;
    Peer* lastPeer_ = nullptr;  ///< the last peer findPeer() found (a one-entry cache)
    ClientRpcIndex<Rpc> clientRpcs_{4096, kOwnCallsMaxSlots};
    RpcList allRpcs_;        ///< every RPC the timer looks at, in the order they joined
    size_t rpcsWaitingToStart_ = 0;  ///< in the peers' waitingToStart lists
    RpcList inServiceRpcs_;  ///< server RPCs the application is executing: no timer work
    WaitList smallBufferWaiters_;  ///< single-packet messages waiting for buffer space
    WaitList largeBufferWaiters_;  ///< larger ones, oldest first
    std::vector<std::unique_ptr<Rpc>> rpcStorage_;
    std::vector<Rpc*> freeRpcs_;
    PeerLru idlePeers_;  ///< peers without RPCs, least recently used first
    PeerAckList peersWithAcks_;
    PeerDeferringList peersDeferring_;  ///< peers with RESENDs or NEED_ACKs put off (Peer::deferred)
    PeerAckDueList peersAckDue_;  ///< peers holding at least kMaxAcksPerPacket pending acks
    bool ackFlushRequested_ = false;  ///< a tick asked sendDueAcks() to send every pending ack

    GrantPeerSet grantPeers_;
    GrantFifoSet grantFifo_;
    bool grantsDirty_ = false;
    uint64_t incomingOutstanding_ = 0;
    double fifoGrantCredit_ = 0;
    int lastActiveCount_ = 0;
    std::vector<Rpc*> activeScratch_;
    std::vector<Rpc*> smallScratch_;  // (sendSmallMessages)

    SendSet sendable_;
    SendFifoSet sendFifo_;
    double pacerFifoCredit_ = 0;
    bool pacerDeferred_ = false;
    Time pacerLateNs_ = 0;   ///< smoothed lateness of the sender's returns to the pacer

    uint32_t pendingRequests_ = 0;
    uint64_t nextClientId_;
    // See skipClientIdsAhead(): the next jump, and the first id given out after the last.
    static constexpr uint64_t kFirstIdSkip = uint64_t{1} << 36;  // ids from a clock: about 69 s
    static constexpr uint64_t kMaxIdSkip = uint64_t{1} << 52;
    static constexpr uint64_t kMaxIdBeforeSkips = uint64_t{1} << 62;
    uint64_t idSkip_ = kFirstIdSkip;
    uint64_t idsSkippedFrom_ = 0;
    uint64_t nextSerial_ = 1;
    Time lastNow_ = INT64_MIN;
    Time nextTick_ = 0;
    uint64_t tickCount_ = 0;  ///< ticks run so far

    RingQueue<Delivery> deliveries_;
    std::array<uint8_t, wire::kMaxHeaderSize> scratch_{};
    /// The packet being handled. decode() resets it; a local would be initialised twice.
    wire::Packet packet_;
    EngineMetrics m_;
    bool freezeReceived_ = false;
};

// Trace formats of packets sent and received, by type (homa-trace matches them up).
extern const char* const kTraceSend[EngineMetrics::kTypes];
extern const char* const kTraceRecv[EngineMetrics::kTypes];

}  // namespace homa::engine
