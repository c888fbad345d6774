// udp-ceiling: the most small-RPC throughput UDP sockets give on this host.
//
// A closed loop of fixed-size requests, each answered by an echo of the same size, with
// no protocol at all: no ids, no acks, no loss recovery, no per-message state. Two
// threads (client and server, as homa-perf's TCP mode has), each blocking in recvmmsg
// and answering a whole batch with one send: with --gso, one sendmsg carries every
// datagram of a batch (UDP_SEGMENT) and the receiver reads them as one (UDP_GRO), which
// is what Homa's driver does; without it, sendmmsg with one datagram per message.
//
// Any transport built on UDP sockets pays at least this; compare.sh prints it beside
// Homa and TCP, so that the distance between Homa and TCP splits into what UDP costs
// here and what Homa adds.
//
//   udp-ceiling [--outstanding N] [--size B] [--seconds S] [--gso]
//   prints one line: "udp-ceiling: <kops> kops, <N> outstanding, <B> B, gso <0|1>, dropped <D>"
//   (D: datagrams the sockets dropped for full receive buffers; then fewer calls were
//   outstanding than asked, and a warning says so)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int kBatch = 64;           // datagrams (or GRO buffers) per recvmmsg
constexpr size_t kGroBuffer = 65536;  // one GRO buffer holds up to 64 KB of datagrams
constexpr int kMaxSegments = 64;      // datagrams per GSO send (the kernel's limit is 64)
constexpr size_t kMaxDatagram = 65507;  // a GSO send is one UDP datagram: at most this long

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "udp-ceiling: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
}

int openSocket(bool gso, sockaddr_in* bound) {
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int size = 8 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    int one = 1;
    // The kernel's count of datagrams dropped for a full receive buffer comes with each
    // receive: a run that loses some has fewer calls outstanding than it says.
    ::setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one));
    // Bounds a wait: the echo thread's last one at the end, a lost datagram's.
    timeval tv{0, 100'000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (gso && ::setsockopt(fd, IPPROTO_UDP, UDP_GRO, &one, sizeof(one)) != 0) die("UDP_GRO");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) die("bind");
    socklen_t len = sizeof(a);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    *bound = a;
    return fd;
}

// Receive buffers for one recvmmsg of up to kBatch datagrams or GRO buffers.
struct Receiver {
    explicit Receiver(bool gso) : bufferSize(gso ? kGroBuffer : 2048), data(kBatch * bufferSize) {
        for (int i = 0; i < kBatch; ++i) {
            iov[i] = {data.data() + i * bufferSize, bufferSize};
            hdr[i].msg_hdr.msg_iov = &iov[i];
            hdr[i].msg_hdr.msg_iovlen = 1;
            hdr[i].msg_hdr.msg_name = &from[i];
            hdr[i].msg_hdr.msg_control = control[i];
        }
    }
    /// Blocks for at least one; returns how many messages of `size` bytes arrived, and
    /// the sender of the first (all come from one peer here).
    int receive(int fd, size_t size, sockaddr_in* source) {
        for (int i = 0; i < kBatch; ++i) {
            hdr[i].msg_hdr.msg_namelen = sizeof(from[i]);
            hdr[i].msg_hdr.msg_controllen = sizeof(control[i]);
        }
        int n = ::recvmmsg(fd, hdr, kBatch, MSG_WAITFORONE, nullptr);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) return 0;
            die("recvmmsg");
        }
        *source = from[0];
        int messages = 0;
        for (int i = 0; i < n; ++i) {
            messages += static_cast<int>((hdr[i].msg_len + size - 1) / size);
            for (cmsghdr* c = CMSG_FIRSTHDR(&hdr[i].msg_hdr); c; c = CMSG_NXTHDR(&hdr[i].msg_hdr, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
                    uint32_t dropped;
                    std::memcpy(&dropped, CMSG_DATA(c), sizeof(dropped));
                    drops = std::max<uint64_t>(drops, dropped);
                }
            }
        }
        return messages;
    }
    uint64_t drops = 0;  ///< datagrams the socket dropped so far (the kernel's count)
    size_t bufferSize;
    std::vector<char> data;
    iovec iov[kBatch];
    mmsghdr hdr[kBatch]{};
    sockaddr_in from[kBatch];
    alignas(cmsghdr) char control[kBatch][64];
};

// Sends `count` messages of `size` bytes to `to` in as few system calls as the mode allows.
struct Sender {
    Sender(bool gso, size_t size) : gso(gso), size(size), payload(size * kMaxSegments, 'x') {}
    void send(int fd, const sockaddr_in& to, int count) {
        while (count > 0) {
            int n = 0;
            if (gso) {
                const int segments = std::min({count, kMaxSegments, static_cast<int>(kMaxDatagram / size)});
                iovec v{payload.data(), size * static_cast<size_t>(segments)};
                msghdr m{};
                m.msg_name = const_cast<sockaddr_in*>(&to);
                m.msg_namelen = sizeof(to);
                m.msg_iov = &v;
                m.msg_iovlen = 1;
                alignas(cmsghdr) char control[CMSG_SPACE(sizeof(uint16_t))] = {};
                if (segments > 1) {
                    m.msg_control = control;
                    m.msg_controllen = sizeof(control);
                    cmsghdr* c = CMSG_FIRSTHDR(&m);
                    c->cmsg_level = SOL_UDP;
                    c->cmsg_type = UDP_SEGMENT;
                    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                    const uint16_t segment = static_cast<uint16_t>(size);
                    std::memcpy(CMSG_DATA(c), &segment, sizeof(segment));
                }
                if (::sendmsg(fd, &m, 0) < 0) die("sendmsg");
                n = segments;
            } else {
                const int k = std::min(count, kBatch);
                mmsghdr h[kBatch]{};
                iovec v[kBatch];
                for (int i = 0; i < k; ++i) {
                    v[i] = {payload.data(), size};
                    h[i].msg_hdr.msg_name = const_cast<sockaddr_in*>(&to);
                    h[i].msg_hdr.msg_namelen = sizeof(to);
                    h[i].msg_hdr.msg_iov = &v[i];
                    h[i].msg_hdr.msg_iovlen = 1;
                }
                n = ::sendmmsg(fd, h, static_cast<unsigned>(k), 0);
                if (n < 0) die("sendmmsg");
            }
            count -= n;
        }
    }
    bool gso;
    size_t size;
    std::string payload;
};

long parse(const char* text, const char* what, long low, long high) {
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < low || v > high) {
        std::fprintf(stderr, "udp-ceiling: %s must be an integer in [%ld, %ld], not '%s'\n", what, low, high, text);
        std::exit(2);
    }
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    long outstanding = 64, size = 64;
    double seconds = 2;
    bool gso = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "udp-ceiling: %s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--outstanding") {
            outstanding = parse(value(), "--outstanding", 1, 100000);
        } else if (a == "--size") {
            size = parse(value(), "--size", 1, 1400);
        } else if (a == "--seconds") {
            seconds = static_cast<double>(parse(value(), "--seconds", 1, 3600));
        } else if (a == "--gso") {
            gso = true;
        } else {
            std::fprintf(stderr, "udp-ceiling: unknown option %s\n", a.c_str());
            return 2;
        }
    }
    sockaddr_in serverAddress, clientAddress;
    const int server = openSocket(gso, &serverAddress);
    const int client = openSocket(gso, &clientAddress);
    std::atomic<bool> stop{false};
    Receiver echoRx(gso);
    std::thread echo([&] {
        Sender tx(gso, static_cast<size_t>(size));
        sockaddr_in from;
        while (!stop.load(std::memory_order_relaxed)) {
            int n = echoRx.receive(server, static_cast<size_t>(size), &from);
            if (n > 0) tx.send(server, from, n);
        }
    });
    Receiver rx(gso);
    Sender tx(gso, static_cast<size_t>(size));
    tx.send(client, serverAddress, static_cast<int>(outstanding));
    uint64_t done = 0;
    const auto start = std::chrono::steady_clock::now();
    const auto end = start + std::chrono::duration<double>(seconds);
    sockaddr_in from;
    while (std::chrono::steady_clock::now() < end) {
        int n = rx.receive(client, static_cast<size_t>(size), &from);
        done += static_cast<uint64_t>(n);
        if (n > 0) tx.send(client, serverAddress, n);
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    stop = true;  // the echo thread's receive times out within 100 ms
    echo.join();
    const uint64_t drops = rx.drops + echoRx.drops;
    std::printf("udp-ceiling: %.1f kops, %ld outstanding, %ld B, gso %d, dropped %llu\n",
                static_cast<double>(done) / elapsed / 1e3, outstanding, size, gso ? 1 : 0,
                static_cast<unsigned long long>(drops));
    if (drops > 0)
        std::fprintf(stderr, "udp-ceiling: the sockets dropped %llu datagrams (receive buffers full): fewer "
                             "calls were outstanding than asked\n",
                     static_cast<unsigned long long>(drops));
    ::close(server);
    ::close(client);
    return 0;
}
