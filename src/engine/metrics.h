// Counters kept by one engine. An engine is single-threaded, so these are plain integers;
// the runtime sums the engines' counters when they are read.
#pragma once

#include <array>
#include <cstdint>

#include "wire/wire.h"

namespace homa::engine {

enum class DropReason : uint8_t {
    Malformed,       ///< failed wire validation
    WrongPort,       ///< destination port is not this endpoint's
    UnknownRpc,      ///< no state for the RPC and the packet cannot create it
    StaleRequest,    ///< request for an RPC this server already finished
    NoBuffer,        ///< no buffer space for the message yet (will be resent)
    PeerTableFull,   ///< the peer table is at its hard cap
    Inconsistent,    ///< contradicts what we already know (e.g. another message length)
    Duplicate,       ///< data we already had
    Overload,        ///< a new request while maxPendingRequests are pending
    Scattered,       ///< would leave the message in more pieces than allowed (will be resent)
    Count_
};
const char* toString(DropReason reason);

struct EngineMetrics {
    static constexpr size_t kTypes = 9;  // packet types 0x10..0x18
    std::array<uint64_t, kTypes> packetsSent{}, bytesSent{}, packetsReceived{}, bytesReceived{};
    std::array<uint64_t, 8> packetsByPriority{}, bytesByPriority{};
    std::array<uint64_t, static_cast<size_t>(DropReason::Count_)> dropped{};
    std::array<uint64_t, static_cast<size_t>(wire::DecodeError::Count_)> decodeErrors{};

    uint64_t clientRpcsStarted = 0, clientRpcsCompleted = 0, clientRpcsTimedOut = 0,
             clientRpcsAborted = 0, clientRestarts = 0, clientRpcsRefusedStale = 0,
             clientIdSkips = 0;
    /// Client RPCs that waited for their turn (ProtocolOptions::maxClientRpcsPerServer).
    uint64_t clientRpcsWaited = 0;
    uint64_t serverRequestsReceived = 0, serverResponsesSent = 0, serverRpcsAcked = 0,
             serverRpcsAbandoned = 0, serverRpcsTimedOut = 0, serverRpcsAborted = 0;
    /// Requests below the at-most-once window that a client asked about and this server
    /// never ran: permits to send them again, and copies admitted under one.
    uint64_t requestPermits = 0, requestsReadmitted = 0;
    uint64_t grantsSent = 0, grantedBytes = 0, fifoGrantBytes = 0;
    uint64_t resendsSent = 0, retransmittedPackets = 0, retransmittedBytes = 0;
    uint64_t busySent = 0, rpcUnknownSent = 0, needAcksSent = 0, ackPacketsSent = 0,
             acksReceived = 0, acksPiggybacked = 0, cutoffsSent = 0;
    /// RESENDs and NEED_ACKs put off to a later tick by timerPacketsPerPeer (one per RPC
    /// put off, however many ticks it waits).
    uint64_t timerPacketsDeferred = 0;
    uint64_t pacerDeferrals = 0, bufferWaits = 0;
    uint64_t peersCreated = 0, peersEvicted = 0;
    uint64_t deliveries = 0;

    static size_t typeIndex(wire::PacketType t) { return static_cast<size_t>(t) - 0x10; }
};

}  // namespace homa::engine
