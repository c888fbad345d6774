#include "driver/udp_driver.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <algorithm>
#include <map>

namespace homa::driver {
namespace {

const Address kLoopback = Address::ipv4(0x7f000001, 0);

std::unique_ptr<UdpDriver> open(UdpDriverOptions o = {}, Address a = kLoopback) {
    Status e;
    auto d = UdpDriver::open(a, o, &e);
    EXPECT_TRUE(d) << e.toString();
    return d;
}

// Receives until `want` packets arrived or a second passed.
std::vector<std::vector<uint8_t>> drain(UdpDriver& d, size_t want) {
    std::vector<std::vector<uint8_t>> got;
    for (int i = 0; i < 100 && got.size() < want; ++i) {
        d.wait(10'000'000, -1);
        for (const RxPacket& p : d.receive()) got.emplace_back(p.bytes.begin(), p.bytes.end());
    }
    return got;
}

TEST(UdpDriver, BindsAndReportsItsAddressAndPacketSize) {
    auto d = open();
    EXPECT_NE(d->localAddress().port, 0);
    EXPECT_EQ(d->maxPacketBytes(), 1500u - 20 - 8);
    UdpDriverOptions jumbo;
    jumbo.mtu = 9000;
    EXPECT_EQ(open(jumbo)->maxPacketBytes(), 9000u - 28);
}

TEST(UdpDriver, RejectsBadOptionsAndAddressesClearly) {
    Status e;
    UdpDriverOptions o;
    o.mtu = 100;
    EXPECT_FALSE(UdpDriver::open(kLoopback, o, &e));
    EXPECT_NE(e.message().find("mtu"), std::string::npos);
    auto d = open();
    EXPECT_FALSE(UdpDriver::open(d->localAddress(), {}, &e)) << "port already bound";
    EXPECT_NE(e.message().find("cannot bind"), std::string::npos);
}

// A long run of full-size packets to one peer goes out as GSO batches, each within the
// 64 KB datagram limit: nothing may be lost to EMSGSIZE.
TEST(UdpDriver, LongRunsOfFullPacketsAllArrive) {
    auto a = open(), b = open();
    std::vector<uint8_t> payload(a->maxPacketBytes() - 8);
    const int n = 150;
    for (int i = 0; i < n; ++i) {
        uint8_t header[8] = {static_cast<uint8_t>(i), 1, 2, 3, 4, 5, 6, 7};
        a->queue(b->localAddress(), 3, header, payload);
    }
    a->flush();
    EXPECT_EQ(a->stats().sendErrors, 0u) << "errno " << a->stats().lastSendErrno;
    auto got = drain(*b, n);
    ASSERT_EQ(got.size(), static_cast<size_t>(n));
    std::map<int, int> seen;
    for (auto& p : got) {
        ASSERT_EQ(p.size(), a->maxPacketBytes());
        ++seen[p[0]];
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(n)) << "every packet once, headers intact";
}

// Small packets of one size (many small RPCs to one peer) also go out as GSO batches:
// each arrives whole and separate, in order, at a receiver with GRO (which reads them in
// a few buffers) and at one without (the kernel splits them).
TEST(UdpDriver, RunsOfEqualSmallPacketsGoAsOneBatchAndArriveSeparately) {
    for (bool gro : {true, false}) {
        SCOPED_TRACE(gro ? "receiver with GRO" : "receiver without GRO");
        UdpDriverOptions ro;
        ro.gro = gro;
        auto a = open(), b = open(ro);
        const int n = 40;
        for (int i = 0; i < n; ++i) {
            // 39 packets of 120 bytes and a shorter last one.
            std::vector<uint8_t> p(i + 1 < n ? 120 : 77, static_cast<uint8_t>(i));
            a->queue(b->localAddress(), 2, std::span<const uint8_t>(p).first(8), std::span<const uint8_t>(p).subspan(8));
        }
        a->flush();
        EXPECT_EQ(a->stats().sendErrors, 0u) << "errno " << a->stats().lastSendErrno;
        if (a->gsoEnabled()) {
            EXPECT_EQ(a->stats().gsoBatches, 1u);
            EXPECT_EQ(a->stats().sendCalls, 1u);
        }
        EXPECT_EQ(a->stats().packetsSent, static_cast<uint64_t>(n));
        EXPECT_EQ(a->stats().bytesSent, 39u * 120 + 77);
        auto got = drain(*b, n);
        ASSERT_EQ(got.size(), static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) {
            EXPECT_EQ(got[static_cast<size_t>(i)].size(), i + 1 < n ? 120u : 77u);
            EXPECT_TRUE(std::all_of(got[static_cast<size_t>(i)].begin(), got[static_cast<size_t>(i)].end(),
                                    [i](uint8_t v) { return v == static_cast<uint8_t>(i); }))
                << "packet " << i;
        }
    }
}

TEST(UdpDriver, MixedSizesAndDestinations) {
    auto a = open(), b = open(), c = open();
    for (int i = 0; i < 40; ++i) {
        std::vector<uint8_t> p(static_cast<size_t>(1 + i * 37), static_cast<uint8_t>(i));
        a->queue((i % 2 ? b : c)->localAddress(), static_cast<uint8_t>(i % 8), p, {});
    }
    a->flush();
    auto gb = drain(*b, 20), gc = drain(*c, 20);
    EXPECT_EQ(gb.size(), 20u);
    EXPECT_EQ(gc.size(), 20u);
    for (auto& p : gb) EXPECT_EQ(p.size(), static_cast<size_t>(1 + p[0] * 37));
}

TEST(UdpDriver, PriorityIsCarriedInTheTosByte) {
    auto a = open();
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_RECVTOS, &one, sizeof(one));
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(0x7f000001);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
    socklen_t len = sizeof(sin);
    getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    uint8_t byte = 9;
    a->queue(Address::ipv4(0x7f000001, ntohs(sin.sin_port)), 5, std::span(&byte, 1), {});
    a->flush();
    pollfd pfd{fd, POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 1000), 1);
    uint8_t buf[16], control[64];
    iovec iov{buf, sizeof(buf)};
    msghdr h{};
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    h.msg_control = control;
    h.msg_controllen = sizeof(control);
    ASSERT_EQ(recvmsg(fd, &h, 0), 1);
    int tos = -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c))
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS) tos = *CMSG_DATA(c);
    EXPECT_EQ(tos, 5 << 5);
    close(fd);
}

TEST(UdpDriver, ReceivedPacketsAreCountedByTheirPriority) {
    auto a = open();
    auto b = open();
    uint8_t x[20] = {};
    // Runs of equal packets (sent as one GSO batch, received as one GRO buffer) and
    // single ones, at three priorities.
    for (int i = 0; i < 6; ++i) a->queue(b->localAddress(), 7, x, {});
    for (int i = 0; i < 3; ++i) a->queue(b->localAddress(), 2, std::span(x, 10), {});
    a->queue(b->localAddress(), 0, std::span(x, 5), {});
    a->flush();
    ASSERT_EQ(drain(*b, 10).size(), 10u);
    auto byPriority = b->stats().packetsReceivedByPriority;
    EXPECT_EQ(byPriority[7], 6u);
    EXPECT_EQ(byPriority[2], 3u);
    EXPECT_EQ(byPriority[0], 1u);
    EXPECT_EQ(byPriority[1] + byPriority[3] + byPriority[4] + byPriority[5] + byPriority[6], 0u);
    // Anyone's datagram, with any TOS byte (here all bits set, ECN included): counted by
    // its top three bits, delivered as bytes for the engine to judge.
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int tos = 0xff;
    setsockopt(fd, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(0x7f000001);
    to.sin_port = htons(b->localAddress().port);
    const char junk[] = "not a homa packet";
    ASSERT_EQ(sendto(fd, junk, sizeof(junk), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)),
              static_cast<ssize_t>(sizeof(junk)));
    close(fd);
    auto got = drain(*b, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].size(), sizeof(junk));
    EXPECT_EQ(b->stats().packetsReceivedByPriority[7], 7u);
}

// A read sets the control length of each header it fills to what that datagram's
// messages took: one that carried only the TOS byte leaves room for nothing more. The
// next read through the same header must still get a GRO buffer's segment size and its
// TOS (else the buffer would be taken for one packet and its priority lost).
TEST(UdpDriver, AReadAfterASmallerOneStillSeesGroSegmentsAndPriority) {
    auto a = open(), b = open();
    uint8_t x[16] = {};
    a->queue(b->localAddress(), 1, x, {});
    a->flush();
    ASSERT_EQ(drain(*b, 1).size(), 1u);
    for (int i = 0; i < 5; ++i) a->queue(b->localAddress(), 6, x, {});
    a->flush();
    auto got = drain(*b, 5);
    ASSERT_EQ(got.size(), 5u);
    for (auto& p : got) EXPECT_EQ(p.size(), sizeof(x));
    EXPECT_EQ(b->stats().packetsReceivedByPriority[1], 1u);
    EXPECT_EQ(b->stats().packetsReceivedByPriority[6], 5u);
    // And sources are read whole again, from several senders in one read.
    auto c = open();
    a->queue(b->localAddress(), 0, std::span(x, 3), {});
    c->queue(b->localAddress(), 0, std::span(x, 4), {});
    a->flush();
    c->flush();
    std::map<size_t, Address> from;
    for (int i = 0; i < 100 && from.size() < 2; ++i) {
        b->wait(10'000'000, -1);
        for (const RxPacket& p : b->receive()) from[p.bytes.size()] = p.source;
    }
    ASSERT_EQ(from.size(), 2u);
    EXPECT_EQ(from[3], a->localAddress());
    EXPECT_EQ(from[4], c->localAddress());
}

// A spin's reads that find nothing leave the headers as they were: the datagrams of the
// next read that finds some arrive whole, with their GRO segments and priority, and are
// kept for the next receive().
TEST(UdpDriver, ReadsThatFindNothingLeaveTheNextReadIntact) {
    auto a = open(), b = open();
    uint8_t x[16] = {};
    a->queue(b->localAddress(), 1, std::span(x, 3), {});
    a->flush();
    ASSERT_EQ(drain(*b, 1).size(), 1u);
    for (int i = 0; i < 3; ++i) EXPECT_FALSE(b->readNow()) << "nothing was sent";
    for (int i = 0; i < 5; ++i) a->queue(b->localAddress(), 6, x, {});
    a->flush();
    bool read = false;
    for (int i = 0; i < 1000 && !read; ++i) read = b->readNow();
    ASSERT_TRUE(read);
    std::vector<std::vector<uint8_t>> got;
    for (const RxPacket& p : b->receive()) got.emplace_back(p.bytes.begin(), p.bytes.end());
    if (got.size() < 5) {
        auto rest = drain(*b, 5 - got.size());
        got.insert(got.end(), rest.begin(), rest.end());
    }
    ASSERT_EQ(got.size(), 5u);
    for (auto& p : got) EXPECT_EQ(p.size(), sizeof(x));
    EXPECT_EQ(b->stats().packetsReceivedByPriority[6], 5u);
}

TEST(UdpDriver, Ipv6WorksWhereAvailable) {
    Status e;
    auto a = UdpDriver::open(*Address::parse("[::1]:0"), {}, &e);
    if (!a) GTEST_SKIP() << "no IPv6 loopback: " << e.toString();
    auto b = UdpDriver::open(*Address::parse("[::1]:0"), {}, &e);
    ASSERT_TRUE(b);
    EXPECT_EQ(a->maxPacketBytes(), 1500u - 40 - 8);
    uint8_t x[3] = {1, 2, 3};
    a->queue(b->localAddress(), 3, x, {});
    a->flush();
    Address from;
    std::vector<std::vector<uint8_t>> got;
    for (int i = 0; i < 100 && got.empty(); ++i) {
        b->wait(10'000'000, -1);
        for (const RxPacket& p : b->receive()) {
            from = p.source;
            got.emplace_back(p.bytes.begin(), p.bytes.end());
        }
    }
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(from, a->localAddress());
    EXPECT_EQ(b->stats().packetsReceivedByPriority[3], 1u);  // read from the traffic class
}

// A socket bound to the IPv6 wildcard also talks to IPv4 peers (through IPv4-mapped
// addresses). The kernel sends those as IPv4, where a traffic-class cmsg is not read:
// the priority must go as the IPv4 TOS byte, or every packet to an IPv4 peer (grants,
// unscheduled data) would leave at priority 0.
TEST(UdpDriver, ADualStackSocketCarriesThePriorityToIpv4Peers) {
    Status e;
    auto a = UdpDriver::open(*Address::parse("[::]:0"), {}, &e);
    if (!a) GTEST_SKIP() << "no IPv6: " << e.toString();
    auto b = open();
    const Address to = Address::ipv4(0x7f000001, b->localAddress().port);
    uint8_t x[20] = {};
    a->queue(to, 5, x, {});
    a->flush();
    for (int i = 0; i < 3; ++i) a->queue(to, 6, x, {});  // one GSO send
    a->flush();
    ASSERT_EQ(drain(*b, 4).size(), 4u);
    const auto byPriority = b->stats().packetsReceivedByPriority;
    EXPECT_EQ(byPriority[5], 1u);
    EXPECT_EQ(byPriority[6], 3u);
    EXPECT_EQ(byPriority[0], 0u);
    EXPECT_EQ(a->stats().sendErrors, 0u);
}

// A destination the socket cannot send to (an IPv6 address from an IPv4 socket, whose
// last four bytes would have been taken for an IPv4 address; port 0) is refused and
// counted at queue time. It must not reach the kernel: its EINVAL on a run of packets
// was taken for "no GSO here" and turned GSO off for the endpoint's life.
TEST(UdpDriver, DestinationsTheSocketCannotReachAreRefusedAndCounted) {
    auto a = open(), b = open();
    EXPECT_TRUE(a->canSendTo(b->localAddress()).isOk());
    const Address v6 = *Address::parse("[::1]:4000");
    const Address port0 = Address::ipv4(0x7f000001, 0);
    for (const Address& bad : {v6, port0}) {
        const Status s = a->canSendTo(bad);
        EXPECT_EQ(s.code(), StatusCode::InvalidArgument) << bad.toString();
        EXPECT_NE(s.message().find(bad.toString()), std::string::npos) << s.message();
    }
    uint8_t x[20] = {};
    for (int i = 0; i < 3; ++i) a->queue(port0, 0, x, {});
    for (int i = 0; i < 3; ++i) a->queue(v6, 0, x, {});
    a->flush();
    EXPECT_EQ(a->stats().sendErrors, 6u);
    EXPECT_EQ(a->stats().badDestinations, 6u);
    EXPECT_EQ(a->stats().packetsSent, 0u);
    EXPECT_TRUE(a->gsoEnabled());
    for (int i = 0; i < 3; ++i) a->queue(b->localAddress(), 0, x, {});
    a->flush();
    EXPECT_EQ(drain(*b, 3).size(), 3u);
    if (a->gsoEnabled()) {  // (a kernel without GSO turns it off here)
        EXPECT_EQ(a->stats().gsoBatches, 1u);
    }
    Status e;
    auto six = UdpDriver::open(*Address::parse("[::1]:0"), {}, &e);
    if (!six) return;  // no IPv6 loopback
    EXPECT_TRUE(six->canSendTo(v6).isOk());
    EXPECT_FALSE(six->canSendTo(*Address::parse("[::1]:0")).isOk());
    // Bound to an IPv6 address, it cannot reach IPv4 (the kernel says ENETUNREACH); bound
    // to the wildcard, it can, through mapped addresses.
    EXPECT_FALSE(six->canSendTo(b->localAddress()).isOk());
    auto any = UdpDriver::open(*Address::parse("[::]:0"), {}, &e);
    ASSERT_TRUE(any) << e.toString();
    EXPECT_TRUE(any->canSendTo(b->localAddress()).isOk());
    EXPECT_TRUE(any->canSendTo(v6).isOk());
}

// Packets of a peer with a larger MTU arrive whole at a receiver without GRO (its
// buffers were sized for its own MTU: every one was truncated and dropped, resends too).
TEST(UdpDriver, PacketsLargerThanOurMtuArriveWholeWithoutGro) {
    UdpDriverOptions jumbo, plain;
    jumbo.mtu = 9000;
    plain.gro = false;
    auto a = open(jumbo), b = open(plain);
    const int n = 10;
    std::vector<uint8_t> payload(4000 - 8, 7);
    for (int i = 0; i < n; ++i) {
        uint8_t header[8] = {static_cast<uint8_t>(i)};
        a->queue(b->localAddress(), 0, header, payload);
    }
    a->flush();
    auto got = drain(*b, n);
    ASSERT_EQ(got.size(), static_cast<size_t>(n));
    for (auto& p : got) EXPECT_EQ(p.size(), 4000u);
    EXPECT_EQ(b->stats().truncated, 0u);
}

// In a network namespace of its own whose loopback has a 1,280-byte MTU (a path MTU
// below ours, as behind a tunnel): a run of full packets cannot go as one GSO send
// (EMSGSIZE; EINVAL on older kernels). Its packets go one by one and all arrive, and GSO
// stays on for runs that fit. Packets lost to send errors are counted one by one.
// Runs in a child process (unshare); needs CAP_SYS_ADMIN.
TEST(UdpDriver, ARunTooLargeForThePathGoesPacketByPacketAndGsoStaysOn) {
    enum : int {
        kOk = 0, kNoNamespace = 77, kSetup = 10, kFirstRun, kFallback, kLost, kGsoOff, kSecondRun, kErrors, kWake,
        kFirstGsoTooLarge
    };
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (::unshare(CLONE_NEWNET) != 0) ::_exit(kNoNamespace);
        const int s = ::socket(AF_INET, SOCK_DGRAM, 0);
        ifreq ifr{};
        std::strcpy(ifr.ifr_name, "lo");
        ifr.ifr_mtu = 1280;
        if (s < 0 || ::ioctl(s, SIOCSIFMTU, &ifr) != 0) ::_exit(kSetup);
        if (::ioctl(s, SIOCGIFFLAGS, &ifr) != 0) ::_exit(kSetup);
        ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
        if (::ioctl(s, SIOCSIFFLAGS, &ifr) != 0) ::_exit(kSetup);
        Status e;
        auto a = UdpDriver::open(Address::ipv4(0, 0), {}, &e);
        auto b = UdpDriver::open(kLoopback, {}, &e);
        if (!a || !b) ::_exit(kSetup);
        const Address to = Address::ipv4(0x7f000001, b->localAddress().port);
        auto run = [&](const Address& dest, size_t bytes, int count) {
            std::vector<uint8_t> p(bytes, 1);
            for (int i = 0; i < count; ++i) a->queue(dest, 0, std::span<const uint8_t>(p).first(8), std::span<const uint8_t>(p).subspan(8));
            a->flush();
        };
        run(to, 500, 3);  // fits: one GSO send
        if (drain(*b, 3).size() != 3 || a->stats().gsoBatches != 1) ::_exit(kFirstRun);
        run(to, a->maxPacketBytes(), 3);  // 1,500-byte datagrams on a 1,280-byte path
        if (a->stats().gsoFallbacks != 1) ::_exit(kFallback);
        if (drain(*b, 3).size() != 3 || a->stats().sendErrors != 0) ::_exit(kLost);
        if (!a->gsoEnabled()) ::_exit(kGsoOff);
        run(to, 500, 3);
        if (drain(*b, 3).size() != 3 || a->stats().gsoBatches != 2) ::_exit(kSecondRun);
        run(Address::ipv4(0x0a010101, 9), 500, 4);  // 10.1.1.1: no route in this namespace
        if (a->stats().sendErrors != 4) ::_exit(kErrors);
        // A socket whose very first run is too large for the path: GSO stays on (the
        // error speaks of the path, not of GSO).
        auto c = UdpDriver::open(Address::ipv4(0, 0), {}, &e);
        if (!c) ::_exit(kSetup);
        std::vector<uint8_t> full(c->maxPacketBytes(), 2), small(500, 3);
        for (int i = 0; i < 3; ++i) c->queue(to, 0, std::span<const uint8_t>(full).first(8), std::span<const uint8_t>(full).subspan(8));
        c->flush();
        for (int i = 0; i < 3; ++i) c->queue(to, 0, std::span<const uint8_t>(small).first(8), std::span<const uint8_t>(small).subspan(8));
        c->flush();
        if (drain(*b, 6).size() != 6 || !c->gsoEnabled() || c->stats().gsoBatches != 1) ::_exit(kFirstGsoTooLarge);
        // With no IPv6 on loopback, a dual-stack socket still wakes its reader (by IPv4).
        std::FILE* f = std::fopen("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "w");
        if (f) {
            std::fputs("1", f);
            std::fclose(f);
            auto six = UdpDriver::open(*Address::parse("[::]:0"), {}, &e);
            if (six && !six->wakeReceiver()) ::_exit(kWake);
        }
        ::_exit(kOk);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    const int code = WEXITSTATUS(status);
    if (code == kNoNamespace || code == kSetup)
        GTEST_SKIP() << "no network namespace of its own with a loopback to set up (needs CAP_SYS_ADMIN and "
                        "CAP_NET_ADMIN)";
    const std::map<int, const char*> what = {
        {kFirstRun, "the first run of small packets"},
        {kFallback, "the run too large for the path was not sent packet by packet"},
        {kLost, "packets of the run too large for the path were lost"},
        {kGsoOff, "GSO was turned off for good"},
        {kSecondRun, "a later run of small packets did not go as one GSO send"},
        {kErrors, "packets lost to a send error were not counted one by one"},
        {kWake, "a dual-stack socket could not wake its reader without IPv6 on loopback"},
        {kFirstGsoTooLarge, "a first run too large for the path turned GSO off"}};
    EXPECT_EQ(code, kOk) << (what.count(code) ? what.at(code) : "exit code");
}

TEST(UdpDriver, OversizedPacketIsRefusedNotSent) {
    auto a = open(), b = open();
    std::vector<uint8_t> big(a->maxPacketBytes() + 1);
    a->queue(b->localAddress(), 0, big, {});
    a->flush();
    EXPECT_EQ(a->stats().sendErrors, 1u);
    EXPECT_EQ(a->stats().packetsSent, 0u);
}

}  // namespace
}  // namespace homa::driver
