// Moving Homa packets over a UDP socket: one socket per endpoint, IPv4 or IPv6, batched
// system calls (sendmmsg / recvmmsg), the packet priority in the IP TOS / IPv6 traffic
// class (priority p -> p << 5, as the Linux module does), UDP GSO for runs of equal-sized
// packets to one destination and UDP GRO on receive, each with a fallback when the kernel
// refuses. Received packets are counted by the priority their TOS byte carries (so that
// one can see whether the network kept the marking). No protocol knowledge beyond "a
// packet is bytes with a priority".
//
// Thread safety: none; the runtime calls a driver from one thread at a time.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "homa/address.h"
#include "homa/status.h"

namespace homa::driver {

struct UdpDriverOptions {
    uint32_t mtu = 1500;
    bool gso = true;
    bool gro = true;
    int socketBufferBytes = 8 << 20;
    int batch = 32;  ///< packets per sendmmsg / recvmmsg
};

/// One received Homa packet: its sender and its bytes (in the driver's receive arena).
struct RxPacket {
    Address source;
    std::span<const uint8_t> bytes;
};

struct UdpDriverStats {
    /// sendErrors: packets lost to send errors. gsoBatches: GSO sends that went out.
    /// gsoFallbacks: runs that could not go as one GSO send and went packet by packet.
    uint64_t packetsSent = 0, bytesSent = 0, sendCalls = 0, gsoBatches = 0, sendErrors = 0, gsoFallbacks = 0;
    /// Packets refused at queue() for a destination this socket cannot send to (see
    /// canSendTo); counted in sendErrors too.
    uint64_t badDestinations = 0;
    int lastSendErrno = 0;
    uint64_t packetsReceived = 0, bytesReceived = 0, recvCalls = 0, groBuffers = 0, truncated = 0, emptyDatagrams = 0;
    uint64_t waitCalls = 0;  ///< ppoll calls made by wait()
    /// Packets received by the priority their IP TOS byte / traffic class carried (what
    /// the network delivered, where the sender set it: p << 5). Packets whose TOS could
    /// not be read are not counted here.
    std::array<uint64_t, 8> packetsReceivedByPriority{};
};

class UdpDriver {
  public:
    /// Opens and binds a socket; port 0 picks a free port.
    static std::unique_ptr<UdpDriver> open(const Address& bind, const UdpDriverOptions& options, Status* error);
    ~UdpDriver();
    UdpDriver(const UdpDriver&) = delete;
    UdpDriver& operator=(const UdpDriver&) = delete;

    const Address& localAddress() const { return local_; }
    int fd() const { return fd_; }
    /// Largest Homa packet (header + payload) that fits in one datagram at this MTU.
    uint32_t maxPacketBytes() const { return maxPacket_; }
    bool gsoEnabled() const { return gso_; }
    bool groEnabled() const { return gro_; }

    /// Whether this socket can send to `dest`: a port other than 0, and an address of a
    /// family it reaches (an IPv4 socket reaches IPv4 only; an IPv6 socket bound to the
    /// wildcard reaches both, one bound to an IPv6 address IPv6 only). InvalidArgument,
    /// naming the address, when not.
    Status canSendTo(const Address& dest) const;

    /// Queues a packet (copied); sent at flush() or when the batch is full. A packet for
    /// a destination canSendTo() refuses is dropped and counted.
    void queue(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
               std::span<const uint8_t> payload);
    void flush();
    size_t queued() const { return txCount_; }

    /// Receives what is waiting, up to one batch, without blocking. The packets (a GRO
    /// buffer split into its datagrams) stay valid until the next receive().
    std::span<const RxPacket> receive();
    /// Blocks until at least one datagram arrives and keeps what it read for the next
    /// receive(): one system call both waits and reads. Returns false without waiting for
    /// packets if it was interrupted (shutdownReceive(), a signal, an error).
    bool blockForPackets();
    /// The same without blocking: reads what is waiting, if anything, and keeps it for the
    /// next receive(). True if it read (or already held) datagrams. A spinning thread
    /// looks this way: a look that finds packets has read them (one system call, where
    /// asking whether the socket is readable and then reading it takes two).
    bool readNow();
    /// Wakes a thread blocked in blockForPackets() with an empty datagram sent to this
    /// socket (receive() counts and skips empty datagrams). False if it could not be sent.
    bool wakeReceiver();
    /// Ends every present and future blockForPackets() at once (used at shutdown).
    void shutdownReceive();
    /// Waits until the socket (or `extraFd`, if >= 0) is readable or `timeoutNs` passes
    /// (negative: forever). Returns true if the socket is readable; *extraReady tells
    /// whether `extraFd` is.
    bool wait(int64_t timeoutNs, int extraFd, bool* extraReady = nullptr);
    /// The same with two other descriptors (either may be -1).
    bool wait(int64_t timeoutNs, int extraFd, bool* extraReady, int secondFd, bool* secondReady);
    /// Whether the last receive() drained the socket (so reading again before waiting
    /// would only cost a system call).
    bool drained() const { return drained_; }

    /// A copy of the counters. Send-side counters change under the caller's lock; the
    /// receive-side ones are written by whichever thread runs receive(), without it, so
    /// they are kept as relaxed atomics (plain loads and stores: one writer at a time)
    /// and may be read from any thread.
    UdpDriverStats stats() const {
        UdpDriverStats s = stats_;
        s.packetsReceived = rx_.packets.load(std::memory_order_relaxed);
        s.bytesReceived = rx_.bytes.load(std::memory_order_relaxed);
        s.recvCalls = rx_.calls.load(std::memory_order_relaxed);
        s.groBuffers = rx_.groBuffers.load(std::memory_order_relaxed);
        s.truncated = rx_.truncated.load(std::memory_order_relaxed);
        s.emptyDatagrams = rx_.empty.load(std::memory_order_relaxed);
        s.waitCalls = rx_.waits.load(std::memory_order_relaxed);
        for (size_t p = 0; p < 8; ++p) s.packetsReceivedByPriority[p] = rx_.byPriority[p].load(std::memory_order_relaxed);
        return s;
    }

  private:
    struct TxPacket {
        Address address;  // (made a sockaddr once per datagram message, in sendRange)
        uint8_t priority;
        uint32_t offset;  // into txArena_
        uint32_t length;
    };
    UdpDriver() = default;
    void sendRange(size_t begin, size_t end);
    /// One recvmmsg into the receive arena; returns the datagram count (<= 0: none).
    int readBatch(bool block);
    /// blockForPackets() and readNow(): one read, kept for the next receive().
    bool readAndHold(bool block);

    int fd_ = -1;
    bool ipv6_ = false;
    bool reachesIpv4_ = true;  // false for an IPv6 socket bound to an IPv6 address, or IPv6-only
    /// What canSendTo() says, without the message.
    bool reaches(const Address& dest) const { return dest.port != 0 && (dest.isIpv4() ? reachesIpv4_ : ipv6_); }
    bool gso_ = false;
    bool gsoWorked_ = false;  ///< a GSO send has gone out on this socket
    bool gro_ = false;
    bool drained_ = false;
    int held_ = 0;  // datagrams read by blockForPackets(), delivered by the next receive()
    size_t rxDirty_ = SIZE_MAX;  // receive headers the last read changed (more than the batch: none set up yet)
    Address local_;
    uint32_t maxPacket_ = 0;
    int batch_ = 32;
    std::vector<uint8_t> txArena_;
    std::vector<TxPacket> tx_;
    size_t txCount_ = 0;
    size_t txBytes_ = 0;  // of txArena_ in use: packets are packed back to back
    std::vector<uint8_t> rxArena_;
    std::vector<RxPacket> rxPackets_;  // what receive() returns
    size_t rxBufferSize_ = 0;
    // Scratch for the system calls, sized once so the hot path allocates nothing.
    static constexpr size_t kControlBytes = 64;
    std::vector<mmsghdr> rxHdrs_, txHdrs_;
    std::vector<iovec> rxIovs_, txIovs_;
    std::vector<sockaddr_storage> rxSources_;
    std::vector<std::array<uint8_t, kControlBytes>> rxControls_, txControls_;
    std::vector<sockaddr_storage> txDests_;  // one per datagram message of a send
    struct TxMsg {
        size_t first, count;
        uint32_t segment;
    };
    std::vector<TxMsg> txMsgs_;
    UdpDriverStats stats_;  // send side; the receive-side fields live in rx_
    struct RxCounters {
        std::atomic<uint64_t> packets{0}, bytes{0}, calls{0}, groBuffers{0}, truncated{0}, empty{0}, waits{0};
        std::array<std::atomic<uint64_t>, 8> byPriority{};
    } rx_;
    static void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
        c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
};

/// Socket address <-> Address conversions.
void toSockaddr(const Address& a, bool ipv6Socket, sockaddr_storage* out, socklen_t* len);
Address fromSockaddr(const sockaddr_storage& s);

}  // namespace homa::driver
