#include "driver/udp_driver.h"

#include "homa/trace.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/udp.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <utility>

namespace homa::driver {

namespace {
constexpr uint32_t kIpv4Header = 20, kIpv6Header = 40, kUdpHeader = 8;
constexpr int kMaxGsoSegments = 64;
// A GSO send is one UDP datagram before segmentation: its payload must fit in 16 bits.
constexpr size_t kMaxGsoBytes = 65'000;
constexpr size_t kGroBuffer = 65536;
// How long a send may go without progress for want of room in the socket buffer (waiting
// for room in steps of kSendWaitStepMs) before what is left of it is dropped.
constexpr int kMaxSendWaitMs = 50;
constexpr int kSendWaitStepMs = 10;

int64_t steadyMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

Status sysError(const std::string& what) {
    return {StatusCode::InvalidArgument, what + ": " + strerror(errno)};
}
}  // namespace

void toSockaddr(const Address& a, bool ipv6Socket, sockaddr_storage* out, socklen_t* len) {
    // (Only the part the kernel reads is cleared: this runs for every datagram sent.)
    if (!ipv6Socket) {
        auto* s = reinterpret_cast<sockaddr_in*>(out);
        std::memset(s, 0, sizeof(*s));
        s->sin_family = AF_INET;
        s->sin_port = htons(a.port);
        s->sin_addr.s_addr = htonl(a.ipv4Host());
        *len = sizeof(sockaddr_in);
        return;
    }
    auto* s = reinterpret_cast<sockaddr_in6*>(out);
    std::memset(s, 0, sizeof(*s));
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(a.port);
    std::memcpy(&s->sin6_addr, a.ip.data(), 16);
    *len = sizeof(sockaddr_in6);
}

Address fromSockaddr(const sockaddr_storage& s) {
    if (s.ss_family == AF_INET) {
        const auto* v4 = reinterpret_cast<const sockaddr_in*>(&s);
        return Address::ipv4(ntohl(v4->sin_addr.s_addr), ntohs(v4->sin_port));
    }
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&s);
    Address a;
    std::memcpy(a.ip.data(), &v6->sin6_addr, 16);
    a.port = ntohs(v6->sin6_port);
    return a;
}

std::unique_ptr<UdpDriver> UdpDriver::open(const Address& bind, const UdpDriverOptions& options, Status* error) {
    auto fail = [&](Status s) -> std::unique_ptr<UdpDriver> {
        if (error) *error = std::move(s);
        return nullptr;
    };
    if (options.mtu < 576 || options.mtu > 65535)
        return fail({StatusCode::InvalidArgument, "mtu must be between 576 and 65535, not " + std::to_string(options.mtu)});
    if (options.batch < 1 || options.batch > 1024)
        return fail({StatusCode::InvalidArgument, "batch must be between 1 and 1024"});
    std::unique_ptr<UdpDriver> d(new UdpDriver());
    d->ipv6_ = !bind.isIpv4();
    d->fd_ = ::socket(d->ipv6_ ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (d->fd_ < 0) return fail(sysError("socket"));
    int size = options.socketBufferBytes;
    // As root the FORCE variants ignore the system-wide limits; otherwise take what we get.
    if (setsockopt(d->fd_, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) != 0)
        setsockopt(d->fd_, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    if (setsockopt(d->fd_, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) != 0)
        setsockopt(d->fd_, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    sockaddr_storage ss;
    socklen_t len;
    toSockaddr(bind, d->ipv6_, &ss, &len);
    if (::bind(d->fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0)
        return fail({StatusCode::InvalidArgument, "cannot bind " + bind.toString() + ": " + strerror(errno)});
    len = sizeof(ss);
    getsockname(d->fd_, reinterpret_cast<sockaddr*>(&ss), &len);
    d->local_ = fromSockaddr(ss);
    if (d->ipv6_) {
        // Only a socket bound to the wildcard and not IPv6-only (net.ipv6.bindv6only)
        // reaches IPv4 peers, through mapped addresses.
        int v6only = 0;
        socklen_t optLen = sizeof(v6only);
        getsockopt(d->fd_, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optLen);
        d->reachesIpv4_ = v6only == 0 && std::all_of(bind.ip.begin(), bind.ip.end(), [](uint8_t b) { return b == 0; });
    }
    d->maxPacket_ = options.mtu - (d->ipv6_ ? kIpv6Header : kIpv4Header) - kUdpHeader;
    d->batch_ = options.batch;
    if (options.gro) {
        int one = 1;
        d->gro_ = setsockopt(d->fd_, IPPROTO_UDP, UDP_GRO, &one, sizeof(one)) == 0;
    }
    {
        // The TOS byte / traffic class of received packets, for counting by priority (an
        // IPv6 socket also receives IPv4 packets, whose TOS comes as IP_TOS). Best effort.
        int one = 1;
        setsockopt(d->fd_, IPPROTO_IP, IP_RECVTOS, &one, sizeof(one));
        if (d->ipv6_) setsockopt(d->fd_, IPPROTO_IPV6, IPV6_RECVTCLASS, &one, sizeof(one));
    }
    d->gso_ = options.gso;  // confirmed (or given up) by the first GSO send
    // A whole datagram however it comes: a GRO buffer, or one packet of a peer with a
    // larger MTU than ours (the engine takes those; a smaller buffer truncated them).
    d->rxBufferSize_ = kGroBuffer;
    d->rxArena_.resize(d->rxBufferSize_ * static_cast<size_t>(d->batch_));
    d->rxPackets_.reserve(static_cast<size_t>(d->batch_) * 64);
    d->tx_.resize(static_cast<size_t>(d->batch_) * kMaxGsoSegments / 8 + 1);
    d->txArena_.resize(d->tx_.size() * d->maxPacket_);
    size_t batch = static_cast<size_t>(d->batch_);
    d->rxHdrs_.resize(batch);
    d->rxIovs_.resize(batch);
    d->rxSources_.resize(batch);
    d->rxControls_.resize(batch);
    d->txHdrs_.resize(d->tx_.size());
    d->txIovs_.resize(d->tx_.size());
    d->txControls_.resize(d->tx_.size());
    d->txDests_.resize(d->tx_.size());
    d->txMsgs_.reserve(d->tx_.size());
    return d;
}

UdpDriver::~UdpDriver() {
    if (fd_ >= 0) {
        flush();
        ::close(fd_);
    }
}

Status UdpDriver::canSendTo(const Address& dest) const {
    if (reaches(dest)) return {};
    if (dest.port == 0) return {StatusCode::InvalidArgument, "cannot send to " + dest.toString() + ": port 0"};
    return {StatusCode::InvalidArgument,
            "cannot send to " + dest.toString() + " from " + local_.toString() + ": " +
                (ipv6_ ? "this endpoint's IPv6 socket (bound to an IPv6 address, or IPv6-only) reaches IPv6 only"
                       : "an endpoint bound to an IPv4 address reaches IPv4 only")};
}

void UdpDriver::queue(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
                      std::span<const uint8_t> payload) {
    size_t length = header.size() + payload.size();
    if (length > maxPacket_) {
        ++stats_.sendErrors;  // the engine was configured for a larger MTU: a bug, not data
        return;
    }
    if (!reaches(dest)) {
        // (An IPv6 address on an IPv4 socket would be sent to its last four bytes taken
        // as an IPv4 address; port 0 the kernel refuses, and its EINVAL on a run would
        // read as "no GSO here".)
        ++stats_.sendErrors;
        ++stats_.badDestinations;
        return;
    }
    if (txCount_ == tx_.size() || txBytes_ + length > txArena_.size()) flush();
    TxPacket& p = tx_[txCount_];
    p.address = dest;
    p.priority = priority;
    // Packed back to back, not one maximum-sized slot each: a batch of small packets then
    // fills a few cache lines instead of one page-sized stride apiece, and a run of them
    // (a GSO send) leaves as one contiguous buffer (see sendRange).
    p.offset = static_cast<uint32_t>(txBytes_);
    p.length = static_cast<uint32_t>(length);
    txBytes_ += length;
    std::memcpy(txArena_.data() + p.offset, header.data(), header.size());
    if (!payload.empty()) std::memcpy(txArena_.data() + p.offset + header.size(), payload.data(), payload.size());
    ++txCount_;
}

void UdpDriver::flush() {
    if (txCount_ == 0) return;
    sendRange(0, txCount_);
    txCount_ = 0;
    txBytes_ = 0;
}

// Groups packets into datagram messages: with GSO, a run of packets to the same
// destination at the same priority, all of one size except perhaps a shorter last one,
// goes as one GSO send (one iovec per packet, so they need not be adjacent). Runs of
// small packets matter as much as runs of full ones: many small RPCs to one peer then
// cost the kernel one datagram's work, and a receiver with GRO reads them in one buffer.
void UdpDriver::sendRange(size_t begin, size_t end) {
    using Msg = TxMsg;
    std::vector<Msg>& msgs = txMsgs_;
    msgs.clear();
    for (size_t i = begin; i < end;) {
        size_t j = i + 1;
        if (gso_) {
            const size_t maxSegments = std::min<size_t>(kMaxGsoSegments, kMaxGsoBytes / std::max<uint32_t>(tx_[i].length, 1));
            while (j < end && j - i < maxSegments && tx_[j].address == tx_[i].address &&
                   tx_[j].priority == tx_[i].priority && tx_[j - 1].length == tx_[i].length &&
                   tx_[j].length <= tx_[i].length)
                ++j;
        }
        msgs.push_back({i, j - i, tx_[i].length});
        i = j;
    }
    constexpr size_t kCmsgSpace = CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint16_t));
    static_assert(kCmsgSpace <= kControlBytes);
    auto& hdrs = txHdrs_;
    auto& iovs = txIovs_;
    auto& controls = txControls_;
    size_t iov = 0;  // msgs[m] uses iovs[iov, iov + n): n <= count, in all <= tx_.size()
    for (size_t m = 0; m < msgs.size(); ++m) {
        const TxPacket& first = tx_[msgs[m].first];
        // A run's packets were queued one after another, so their bytes are contiguous in
        // the arena (queue packs them): one buffer for the whole run, which the kernel
        // copies in one piece and cuts into segments by size, as it would several.
        size_t n = 0;
        for (size_t k = 0; k < msgs[m].count; ++k) {
            const TxPacket& p = tx_[msgs[m].first + k];
            uint8_t* at = txArena_.data() + p.offset;
            if (n > 0) {
                iovec& last = iovs[iov + n - 1];
                if (static_cast<uint8_t*>(last.iov_base) + last.iov_len == at) {
                    last.iov_len += p.length;
                    continue;
                }
            }
            iovs[iov + n++] = {at, p.length};
        }
        msghdr& h = hdrs[m].msg_hdr;
        std::memset(&h, 0, sizeof(h));
        socklen_t destLen = 0;
        toSockaddr(first.address, ipv6_, &txDests_[m], &destLen);
        h.msg_name = &txDests_[m];
        h.msg_namelen = destLen;
        h.msg_iov = &iovs[iov];
        h.msg_iovlen = n;
        iov += n;
        h.msg_control = controls[m].data();
        h.msg_controllen = kCmsgSpace;
        std::memset(controls[m].data(), 0, kCmsgSpace);
        cmsghdr* c = CMSG_FIRSTHDR(&h);
        // An IPv6 socket sends to an IPv4-mapped address as IPv4, and then reads only
        // IPv4 cmsgs: its priority goes as the TOS byte, as from an IPv4 socket.
        const bool tclass = ipv6_ && !first.address.isIpv4();
        c->cmsg_level = tclass ? IPPROTO_IPV6 : IPPROTO_IP;
        c->cmsg_type = tclass ? IPV6_TCLASS : IP_TOS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        int tos = first.priority << 5;
        std::memcpy(CMSG_DATA(c), &tos, sizeof(tos));
        size_t used = CMSG_SPACE(sizeof(int));
        if (msgs[m].count > 1) {
            c = CMSG_NXTHDR(&h, c);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = static_cast<uint16_t>(msgs[m].segment);
            std::memcpy(CMSG_DATA(c), &seg, sizeof(seg));
            used += CMSG_SPACE(sizeof(uint16_t));
        }
        h.msg_controllen = used;
    }
    size_t done = 0;
    int64_t waitingSince = -1;  // ms, while sends make no progress for want of room
    while (done < msgs.size()) {
        ++stats_.sendCalls;
        HOMA_TRACE("udp sendmmsg %u datagrams", msgs.size() - done);
        int n = sendmmsg(fd_, hdrs.data() + done, static_cast<unsigned>(msgs.size() - done), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == ENOBUFS) {
                // The socket buffer is full: wait for room rather than drop. Not for long
                // without progress: the caller holds up everything else meanwhile, and a
                // queue that stays full (a stalled NIC) turns this into loss, which Homa
                // recovers from.
                const int64_t now = steadyMs();
                if (waitingSince < 0) waitingSince = now;
                if (now - waitingSince < kMaxSendWaitMs) {
                    pollfd pfd{fd_, POLLOUT, 0};
                    ::poll(&pfd, 1, kSendWaitStepMs);
                    continue;
                }
            }
            if (msgs[done].count > 1 && (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT || errno == EMSGSIZE)) {
                // This run could not go as one GSO send: no GSO here (old kernel, device
                // without checksum offload: then GSO is off from now on), or not on this
                // path (a path MTU below ours: EMSGSIZE, or EINVAL on older kernels).
                // Its packets go one by one, which the kernel fragments where it must;
                // GSO stays on for other runs once it has worked on this socket.
                ++stats_.gsoFallbacks;
                if (!gsoWorked_ && errno != EMSGSIZE) gso_ = false;
                const size_t first = msgs[done].first, rest = first + msgs[done].count;
                // (sendRange reuses the scratch vectors: what is left is sent from scratch.)
                const bool gso = std::exchange(gso_, false);
                sendRange(first, rest);
                gso_ = gso;
                sendRange(rest, end);
                return;
            }
            // E.g. an unreachable destination: loss, which Homa recovers from.
            stats_.sendErrors += msgs[done].count;
            stats_.lastSendErrno = errno;
            ++done;
            continue;
        }
        for (int k = 0; k < n; ++k) {
            const Msg& m = msgs[done + static_cast<size_t>(k)];
            stats_.packetsSent += m.count;
            if (m.count > 1) {
                ++stats_.gsoBatches;
                gsoWorked_ = true;
            }
            for (size_t q = 0; q < m.count; ++q) stats_.bytesSent += tx_[m.first + q].length;
        }
        done += static_cast<size_t>(n);
        waitingSince = -1;
    }
}

bool UdpDriver::wakeReceiver() {
    // To the bound address, or to loopback when bound to the wildcard address.
    Address to = local_;
    bool wildcard = true;
    for (uint8_t b : to.ip) wildcard = wildcard && b == 0;
    if (to.isIpv4() && to.ipv4Host() == 0) {
        to = Address::ipv4(0x7f000001, local_.port);
    } else if (wildcard) {
        to.ip[15] = 1;  // ::1
    }
    sockaddr_storage ss;
    socklen_t len;
    toSockaddr(to, ipv6_, &ss, &len);
    if (::sendto(fd_, "", 0, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&ss), len) == 0) return true;
    // A dual-stack socket on a host whose loopback has no IPv6 (common in containers):
    // through IPv4's loopback instead.
    if (!wildcard || !reachesIpv4_) return false;
    toSockaddr(Address::ipv4(0x7f000001, local_.port), ipv6_, &ss, &len);
    return ::sendto(fd_, "", 0, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&ss), len) == 0;
}

void UdpDriver::shutdownReceive() {
    // On a UDP socket this marks the receive side shut and wakes every blocked reader
    // (it reports ENOTCONN for an unconnected socket, but does it all the same). A read
    // then returns at once with an empty datagram, and poll reports the socket readable
    // for good: only for shutdown.
    ::shutdown(fd_, SHUT_RD);
}

int UdpDriver::readBatch(bool block) {
    // UDP_GRO's segment size and the TOS byte (IP_TOS) or traffic class (IPV6_TCLASS).
    constexpr size_t kCmsgSpace = CMSG_SPACE(sizeof(int)) * 2;
    static_assert(kCmsgSpace <= kControlBytes);
    const size_t batch = static_cast<size_t>(batch_);
    auto& hdrs = rxHdrs_;
    // Every header is set up once; a read changes the lengths and flags of those it
    // fills, and only those are set back (a read of a few datagrams then costs a few
    // headers' work, not the whole batch's).
    if (rxDirty_ > batch) {
        auto& iovs = rxIovs_;
        for (size_t i = 0; i < batch; ++i) {
            iovs[i] = {rxArena_.data() + i * rxBufferSize_, rxBufferSize_};
            msghdr& h = hdrs[i].msg_hdr;
            std::memset(&h, 0, sizeof(h));
            h.msg_name = &rxSources_[i];
            h.msg_iov = &iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = rxControls_[i].data();
        }
        rxDirty_ = batch;
    }
    for (size_t i = 0; i < rxDirty_; ++i) {
        msghdr& h = hdrs[i].msg_hdr;
        h.msg_namelen = sizeof(sockaddr_storage);
        h.msg_controllen = kCmsgSpace;
        h.msg_flags = 0;
    }
    bump(rx_.calls);
    // The socket itself blocks: MSG_DONTWAIT makes every other read non-blocking.
    int n = recvmmsg(fd_, hdrs.data(), static_cast<unsigned>(batch), block ? MSG_WAITFORONE : MSG_DONTWAIT, nullptr);
    HOMA_TRACE("udp recvmmsg %u datagrams", n < 0 ? 0 : n);
    // (A read that found nothing touched no header: a spin's misses cost no resets. After
    // another error, which headers the kernel touched is unknown: all are set back.)
    if (n >= 0) {
        rxDirty_ = static_cast<size_t>(n);
    } else {
        rxDirty_ = errno == EAGAIN || errno == EWOULDBLOCK ? 0 : batch;
    }
    drained_ = n < static_cast<int>(batch);
    return n;
}

bool UdpDriver::blockForPackets() { return readAndHold(true); }

bool UdpDriver::readNow() { return readAndHold(false); }

bool UdpDriver::readAndHold(bool block) {
    if (held_ > 0) return true;
    int n = readBatch(block);
    if (n <= 0) return false;  // nothing there, interrupted, or an error
    held_ = n;
    return true;
}

std::span<const RxPacket> UdpDriver::receive() {
    rxPackets_.clear();
    int n = held_;
    held_ = 0;
    if (n == 0) n = readBatch(false);
    if (n <= 0) return {};
    auto& hdrs = rxHdrs_;
    auto& sources = rxSources_;
    for (int i = 0; i < n; ++i) {
        const msghdr& h = hdrs[static_cast<size_t>(i)].msg_hdr;
        size_t len = hdrs[static_cast<size_t>(i)].msg_len;
        if (len == 0) {  // wakeReceiver(), or anyone's empty datagram: nothing to deliver
            bump(rx_.empty);
            continue;
        }
        if (h.msg_flags & MSG_TRUNC) {
            bump(rx_.truncated);
            continue;
        }
        uint32_t segment = 0;
        int tos = -1;
        for (const cmsghdr* c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(const_cast<msghdr*>(&h), const_cast<cmsghdr*>(c))) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                int s;
                std::memcpy(&s, CMSG_DATA(c), sizeof(s));
                segment = static_cast<uint32_t>(s);
            } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS) {
                tos = *CMSG_DATA(c);  // one byte
            } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_TCLASS) {
                int t;
                std::memcpy(&t, CMSG_DATA(c), sizeof(t));
                tos = t & 0xff;
            }
        }
        Address source = fromSockaddr(sources[static_cast<size_t>(i)]);
        const uint8_t* base = rxArena_.data() + static_cast<size_t>(i) * rxBufferSize_;
        if (segment == 0 || segment >= len) segment = static_cast<uint32_t>(len);
        else bump(rx_.groBuffers);
        // A GRO buffer holds several datagrams of `segment` bytes (the last may be shorter);
        // the kernel coalesces only datagrams with the same IP header, TOS included.
        if (tos >= 0) bump(rx_.byPriority[static_cast<size_t>(tos) >> 5], (len + segment - 1) / segment);
        const size_t first = rxPackets_.size();
        for (size_t off = 0; off < len; off += segment)
            rxPackets_.push_back({source, std::span<const uint8_t>(base + off, std::min<size_t>(segment, len - off))});
        bump(rx_.packets, rxPackets_.size() - first);
        bump(rx_.bytes, len);
    }
    return rxPackets_;
}

bool UdpDriver::wait(int64_t timeoutNs, int extraFd, bool* extraReady) {
    return wait(timeoutNs, extraFd, extraReady, -1, nullptr);
}

bool UdpDriver::wait(int64_t timeoutNs, int extraFd, bool* extraReady, int secondFd, bool* secondReady) {
    pollfd fds[3] = {{fd_, POLLIN, 0}, {extraFd, POLLIN, 0}, {secondFd, POLLIN, 0}};
    timespec ts;
    timespec* tp = nullptr;
    if (timeoutNs >= 0) {
        ts.tv_sec = timeoutNs / 1'000'000'000;
        ts.tv_nsec = timeoutNs % 1'000'000'000;
        tp = &ts;
    }
    // A negative descriptor is ignored by ppoll (its revents stay 0).
    // (Atomic: the poll thread waits while an application thread holds the loop.)
    rx_.waits.fetch_add(1, std::memory_order_relaxed);
    if (timeoutNs != 0) HOMA_TRACE("udp wait timeout_ns %u", timeoutNs);  // (not each look of a spin)
    int r = ::ppoll(fds, 3, tp, nullptr);
    if (timeoutNs != 0) HOMA_TRACE("udp woke socket %u", r > 0 && (fds[0].revents & POLLIN));
    if (extraReady) *extraReady = r > 0 && extraFd >= 0 && (fds[1].revents & POLLIN);
    if (secondReady) *secondReady = r > 0 && secondFd >= 0 && (fds[2].revents & POLLIN);
    return r > 0 && (fds[0].revents & POLLIN);
}

}  // namespace homa::driver
