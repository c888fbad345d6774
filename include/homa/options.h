// Protocol parameters shared by the engine, the runtime and the tools. Defaults are the
// Linux module's reference values unless a comment says otherwise.
//
// Thread safety: a plain value type.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace homa {

struct ProtocolOptions {
    /// Longest message accepted or sent: at most 3.5 GiB (3,758,096,384 bytes; the wire
    /// format allows up to 4 GB). The pools must be able to hold one message of this size.
    uint32_t maxMessageLength = 1'000'000;
    // ---- Unscheduled bytes and priorities
    /// Bytes of each message sent before any grant (rounded up to whole packets).
    uint32_t unschedBytes = 40'000;
    /// cutoffs[i]: the longest message whose unscheduled bytes go at priority i. Levels
    /// whose cutoff is 0 are for scheduled bytes. Published to senders by CUTOFFS.
    std::array<uint32_t, 8> unschedCutoffs = {0, 0, 0, 0, 1'000'000, 15'000, 2'800, 200};
    uint16_t cutoffVersion = 1;
    /// Priority of control packets (GRANT, RESEND, BUSY, ACK, ...).
    uint8_t controlPriority = 7;

    // ---- Grants (receiver side)
    uint32_t maxIncoming = 400'000;  ///< granted-but-not-received bytes, all messages
    int maxOvercommit = 8;           ///< messages granted to at once
    int maxRpcsPerPeer = 1;          ///< of those, at most this many from one peer
    uint32_t window = 0;             ///< bytes granted ahead of received; 0 = dynamic
    double grantFifoFraction = 0.05; ///< share of granted bytes given to the oldest message
    uint32_t fifoGrantIncrement = 50'000;

    // ---- Sender: pacing
    uint32_t linkMbps = 25'000;
    /// Defer while the estimated NIC backlog exceeds this; a sender whose passes come
    /// further apart is allowed up to twice as much (docs/design.md, "The pacer's allowance").
    int64_t maxNicQueueNs = 5'000;
    uint32_t deferMinBytes = 1'000;  ///< messages shorter than this are never deferred
    double pacerFifoFraction = 0.05; ///< share of sent bytes given to the oldest message

    // ---- Loss recovery and acks
    int64_t tickNs = 1'000'000;
    int resendTicks = 5;
    int resendInterval = 5;
    int timeoutTicks = 100;
    int requestAckTicks = 2;
    /// NEED_ACKs a server sends for a fully sent response before it gives up and frees
    /// the RPC. (Those asking about a response that waits for grants do not count: that
    /// wait ends with the timeout.)
    int needAckLimit = 50;
    /// RPCs of one peer that one tick may send a RESEND or NEED_ACK for, oldest RPCs
    /// first; the others wait for later ticks. Many silent RPCs at one peer mean that the
    /// peer is loaded, and a RESEND for each of them would load it more (with thousands
    /// of RPCs outstanding, RESENDs, BUSYs and NEED_ACKs crowded out the requests
    /// themselves). While an RPC waits its turn and the peer is still heard from, its
    /// silent ticks do not count towards the timeout. (Our own parameter; the 2019 Linux
    /// module sent one RESEND per peer per resend interval.)
    int timerPacketsPerPeer = 16;

    // ---- Memory bounds
    /// Bytes of incoming-message buffers (in reassembly or held by the application).
    uint64_t maxBufferBytes = 64ull << 20;
    /// Share of maxBufferBytes only single-packet messages may use (0 to 0.5), so that a
    /// pool filled by large messages never makes a small one wait or lose its packet.
    double smallMessageReserve = 1.0 / 16;
    /// Bytes of outgoing messages held by the engine.
    uint64_t maxOutgoingBytes = 256ull << 20;
    /// Peers kept without RPCs are evicted once the table holds more than this many...
    uint32_t peerGcThreshold = 5'000;
    /// ...and they have been idle this long.
    int64_t peerIdleNs = 10'000'000'000;
    /// Hard cap on the peer table; packets from new peers beyond it are dropped.
    uint32_t maxPeers = 100'000;
    /// How many client ids per peer the server remembers exactly (the at-most-once window).
    /// A request below it is admitted only when the client, asking about it, is told to
    /// send it again (it never ran here; see docs/design.md, at-most-once).
    uint32_t seenIdWindow = 8192;

    /// Client RPCs with one server that may be under way at once (request being sent,
    /// response awaited). Calls beyond it wait in the engine, in the order they were
    /// made, sending nothing and not timed by the silence timers, and start as earlier
    /// ones to that server end. Without a bound, a client that makes tens of thousands of
    /// calls at once overruns the server's socket buffer and queues more work there than
    /// the server finishes within the resend interval: its silence timers then fire for
    /// requests that are only waiting their turn, and the RESENDs and losses that follow
    /// collapse the rate (100,000 calls at once on loopback ran at 0 calls/s after two
    /// seconds, and most of them timed out). Our own parameter; 0 = no bound.
    uint32_t maxClientRpcsPerServer = 4096;

    // ---- Overload
    /// Requests being received or served (delivered, not yet answered) at once. Beyond
    /// this, packets that would start a new request are dropped before any state is
    /// made for them (counted as "overload"); their clients retry later. 0 = no limit.
    uint32_t maxPendingRequests = 0;

    /// The highest priority that carries scheduled data (levels below the unscheduled ones).
    int maxSchedPriority() const;
};

}  // namespace homa
