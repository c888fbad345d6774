// TCP baseline for homa-perf: the same request/response messages as the Homa transport,
// framed on TCP streams as a 4-byte big-endian length followed by the message bytes.
//
// Both sides run epoll threads over non-blocking sockets. Each connection keeps one
// output buffer that is written with a single send() per batch, and incoming bytes are
// parsed as a stream without holding whole messages: only the lengths (and, on the
// server, the first 4 bytes of a request) matter, so message bodies are skipped as they
// arrive. Buffers are reused, so the steady state does not allocate per message.
#include "perf/transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

namespace homa::perf {
namespace {

// Large reads amortise syscalls when many small messages are queued on a connection.
constexpr size_t kReadChunk = 256 * 1024;
// The server stops parsing a connection's requests while this many response bytes wait
// to be sent, so a client that sends without reading cannot make the server buffer
// without bound.
constexpr size_t kOutputHighWater = 1 << 20;
// Output buffers above this size are released once drained, so a single huge message
// does not pin memory on a connection forever.
constexpr size_t kKeepCapacity = 8 << 20;
constexpr int kMaxEvents = 128;
// A read that finishes at least half of a connection's calls, and at least this many,
// sends the calls their completions start in two halves (see TcpClient::parse).
constexpr size_t kMinSplitCalls = 8;

std::string errnoText(int e) { return std::system_category().message(e); }

// Appends a thread's state with its epoll set and a wake-up eventfd registered in it.
// The state is appended even on failure, so the owner's destructor closes what opened.
template <typename Thread>
bool addEpollThread(std::vector<std::unique_ptr<Thread>>& threads, std::string* error) {
    auto t = std::make_unique<Thread>();
    t->epoll = epoll_create1(EPOLL_CLOEXEC);
    t->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    bool ok = t->epoll >= 0 && t->wake >= 0;
    if (ok) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = &t->wakeSource;
        epoll_ctl(t->epoll, EPOLL_CTL_ADD, t->wake, &ev);
    } else {
        *error = "cannot create epoll/eventfd: " + errnoText(errno);
    }
    threads.push_back(std::move(t));
    return ok;
}

uint32_t loadBe32(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

void storeBe32(uint8_t* p, uint32_t v) { putResponseLength(p, v); }

/// A growable byte queue: append at the tail, consume from the head. Memory is zeroed
/// only when allocated, so appendRaw() hands out initialised (if stale) bytes that can
/// serve as filler without a memset per message.
class ByteBuffer {
  public:
    size_t size() const { return end_ - begin_; }
    bool empty() const { return end_ == begin_; }
    const uint8_t* data() const { return data_.get() + begin_; }

    uint8_t* appendRaw(size_t n) {
        reserveTail(n);
        uint8_t* p = data_.get() + end_;
        end_ += n;
        return p;
    }
    void append(const void* p, size_t n) {
        if (n != 0) std::memcpy(appendRaw(n), p, n);
    }
    void consume(size_t n) {
        begin_ += n;
        if (begin_ == end_) begin_ = end_ = 0;
    }
    void clear() { begin_ = end_ = 0; }
    void releaseIfLarge() {
        if (empty() && capacity_ > kKeepCapacity) {
            data_.reset();
            capacity_ = begin_ = end_ = 0;
        }
    }
    void swap(ByteBuffer& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(capacity_, other.capacity_);
        std::swap(begin_, other.begin_);
        std::swap(end_, other.end_);
    }

  private:
    void reserveTail(size_t n) {
        if (capacity_ - end_ >= n) return;
        size_t live = size();
        // Sliding the live bytes down is cheaper than growing when they are few.
        if (capacity_ - live >= n && live <= capacity_ / 2) {
            std::memmove(data_.get(), data_.get() + begin_, live);
            begin_ = 0;
            end_ = live;
            return;
        }
        size_t cap = std::max({capacity_ * 2, live + n, size_t{4096}});
        std::unique_ptr<uint8_t[]> bigger(new uint8_t[cap]());
        if (live != 0) std::memcpy(bigger.get(), data_.get() + begin_, live);
        data_ = std::move(bigger);
        capacity_ = cap;
        begin_ = 0;
        end_ = live;
    }

    std::unique_ptr<uint8_t[]> data_;
    size_t capacity_ = 0;
    size_t begin_ = 0;
    size_t end_ = 0;
};

union SockAddr {
    sockaddr sa;
    sockaddr_in v4;
    sockaddr_in6 v6;
};

socklen_t toSockAddr(const Address& a, SockAddr* out) {
    std::memset(out, 0, sizeof(*out));
    if (a.isIpv4()) {
        out->v4.sin_family = AF_INET;
        out->v4.sin_port = htons(a.port);
        out->v4.sin_addr.s_addr = htonl(a.ipv4Host());
        return sizeof(sockaddr_in);
    }
    out->v6.sin6_family = AF_INET6;
    out->v6.sin6_port = htons(a.port);
    std::memcpy(&out->v6.sin6_addr, a.ip.data(), 16);
    return sizeof(sockaddr_in6);
}

void setNoDelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void signalEventFd(int fd) {
    uint64_t one = 1;
    // A failed write can only mean the counter is saturated, which still wakes the reader.
    [[maybe_unused]] ssize_t r = ::write(fd, &one, sizeof(one));
}

void drainEventFd(int fd) {
    uint64_t v;
    [[maybe_unused]] ssize_t r = ::read(fd, &v, sizeof(v));
}

/// What an epoll registration points at.
/// Writes as much of `out` as the socket takes (the rest waits for EPOLLOUT). False on a
/// socket error.
bool sendQueued(int fd, ByteBuffer& out) {
    while (!out.empty()) {
        ssize_t r = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return false;
        }
        size_t wanted = out.size();
        out.consume(static_cast<size_t>(r));
        if (static_cast<size_t>(r) < wanted) break;  // socket buffer full
    }
    out.releaseIfLarge();
    return true;
}

struct Source {
    enum class Kind { Wake, Listener, Conn };
    explicit Source(Kind k) : kind(k) {}
    Kind kind;
};

// ============================================================================ server

struct ServerConn : Source {
    ServerConn() : Source(Kind::Conn) {}
    int fd = -1;
    uint32_t interest = 0;  ///< events currently registered with epoll
    // Request parser: frame length, then the first 4 body bytes (the response length),
    // then the rest of the body, which is skipped.
    uint8_t header[4] = {};
    uint32_t headerHave = 0;
    bool inBody = false;
    uint32_t bodyRemaining = 0;
    uint8_t first[4] = {};
    uint32_t firstHave = 0;
    ByteBuffer out;
    /// Received bytes not yet parsed because the output buffer was full.
    std::vector<uint8_t> pendingIn;
};

struct Listener : Source {
    Listener() : Source(Kind::Listener) {}
    int fd = -1;
};

struct ServerThread {
    ServerThread() : wakeSource(Source::Kind::Wake) {}
    int epoll = -1;
    int wake = -1;
    Source wakeSource;
    std::thread thread;
    std::mutex mu;
    std::vector<int> inbox;  ///< accepted sockets handed over by a listener's thread (mu)
    bool stop = false;       ///< (mu)
    // Thread-owned:
    std::unordered_map<ServerConn*, std::unique_ptr<ServerConn>> conns;
    std::vector<uint8_t> scratch;
};

class TcpServer final : public ServerTransport {
  public:
    explicit TcpServer(const TcpOptions& options) : options_(options) {}
    ~TcpServer() override {
        stop();
        for (auto& l : listeners_)
            if (l->fd >= 0) ::close(l->fd);
        for (auto& t : threads_) {
            if (t->epoll >= 0) ::close(t->epoll);
            if (t->wake >= 0) ::close(t->wake);
        }
        if (spareFd_ >= 0) ::close(spareFd_);
    }

    bool start(const Address& bind, int ports, std::string* error) {
        int nthreads = std::max(1, options_.threads);
        for (int i = 0; i < nthreads; ++i)
            if (!addEpollThread<ServerThread>(threads_, error)) return false;
        if (ports < 1) {
            *error = "the server needs at least one port";
            return false;
        }
        if (bind.port != 0 && bind.port + ports - 1 > 65535) {
            *error = "ports " + std::to_string(bind.port) + ".." + std::to_string(bind.port + ports - 1) +
                     " exceed 65535";
            return false;
        }
        for (int i = 0; i < ports; ++i) {
            Address a = bind;
            if (bind.port != 0) a.port = static_cast<uint16_t>(bind.port + i);
            auto l = std::make_unique<Listener>();
            if (!listen(a, l.get(), error)) return false;
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = l.get();
            // Listeners are spread over threads too, so accepting is not one thread's job.
            epoll_ctl(threads_[i % threads_.size()]->epoll, EPOLL_CTL_ADD, l->fd, &ev);
            listeners_.push_back(std::move(l));
        }
        for (auto& t : threads_) {
            ServerThread* tp = t.get();
            tp->thread = std::thread([this, tp] { run(*tp); });
            pthread_setname_np(tp->thread.native_handle(), "tcp-server");
        }
        return true;
    }

    std::vector<Address> addresses() const override { return addresses_; }
    uint64_t served() const override { return served_.load(std::memory_order_relaxed); }
    /// Connections closed because of a malformed or oversized frame.
    uint64_t rejected() const { return rejected_.load(std::memory_order_relaxed); }
    /// Connections closed at once because the process was out of descriptors.
    uint64_t shed() const { return shed_.load(std::memory_order_relaxed); }

    void stop() override {
        std::lock_guard<std::mutex> lock(stopMu_);
        for (auto& t : threads_) {
            if (!t->thread.joinable()) continue;
            {
                std::lock_guard<std::mutex> tl(t->mu);
                t->stop = true;
            }
            signalEventFd(t->wake);
        }
        for (auto& t : threads_)
            if (t->thread.joinable()) t->thread.join();
        for (auto& l : listeners_) {
            if (l->fd >= 0) ::close(l->fd);
            l->fd = -1;
        }
    }

  private:
    bool listen(const Address& a, Listener* l, std::string* error) {
        SockAddr sa;
        socklen_t len = toSockAddr(a, &sa);
        int fd = ::socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            *error = "cannot listen on " + a.toString() + ": " + errnoText(errno);
            return false;
        }
        int one = 1, zero = 0;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        // An IPv6 wildcard listener should also take IPv4 clients.
        if (sa.sa.sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        if (::bind(fd, &sa.sa, len) != 0 || ::listen(fd, 1024) != 0) {
            *error = "cannot listen on " + a.toString() + ": " + errnoText(errno);
            ::close(fd);
            return false;
        }
        SockAddr bound;
        socklen_t blen = sizeof(bound);
        getsockname(fd, &bound.sa, &blen);
        Address actual = a;
        actual.port = ntohs(bound.sa.sa_family == AF_INET ? bound.v4.sin_port : bound.v6.sin6_port);
        addresses_.push_back(actual);
        l->fd = fd;
        return true;
    }

    void run(ServerThread& t) {
        t.scratch.resize(kReadChunk);
        epoll_event events[kMaxEvents];
        for (;;) {
            int n = epoll_wait(t.epoll, events, kMaxEvents, -1);
            if (n < 0) {
                if (errno == EINTR) continue;
                break;
            }
            bool stopNow = false;
            for (int i = 0; i < n; ++i) {
                auto* src = static_cast<Source*>(events[i].data.ptr);
                switch (src->kind) {
                    case Source::Kind::Wake: {
                        drainEventFd(t.wake);
                        std::vector<int> fds;
                        {
                            std::lock_guard<std::mutex> lock(t.mu);
                            fds.swap(t.inbox);
                            stopNow = t.stop;
                        }
                        for (int fd : fds) adopt(t, fd);
                        break;
                    }
                    case Source::Kind::Listener: acceptAll(t, static_cast<Listener*>(src)->fd); break;
                    case Source::Kind::Conn: handle(t, static_cast<ServerConn*>(src), events[i].events); break;
                }
            }
            if (stopNow) break;
        }
        for (auto& [c, owned] : t.conns) ::close(c->fd);
        t.conns.clear();
        // Sockets handed over after the last wake-up were never adopted.
        std::lock_guard<std::mutex> lock(t.mu);
        for (int fd : t.inbox) ::close(fd);
        t.inbox.clear();
    }

    void acceptAll(ServerThread& self, int listenFd) {
        for (;;) {
            int fd = accept4(listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if ((errno == EMFILE || errno == ENFILE) && shedConnection(listenFd)) continue;
                return;  // EAGAIN: retry on the next readiness event
            }
            setNoDelay(fd);
            ServerThread& target = *threads_[nextThread_++ % threads_.size()];
            if (&target == &self) {
                adopt(self, fd);
                continue;
            }
            {
                std::lock_guard<std::mutex> lock(target.mu);
                if (target.stop) {
                    ::close(fd);
                    continue;
                }
                target.inbox.push_back(fd);
            }
            signalEventFd(target.wake);
        }
    }

    // Out of descriptors, a connection waiting in the backlog would stay there, and its
    // listener, level-triggered, would wake the thread again at once, for good: a busy
    // loop, and a client whose calls hang. It is taken with the descriptor kept spare
    // for this and closed at once (the client sees the connection closed). Returns
    // whether one was shed.
    bool shedConnection(int listenFd) {
        std::lock_guard<std::mutex> lock(spareMu_);
        if (spareFd_ < 0) return false;
        ::close(spareFd_);
        const int fd = accept4(listenFd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) ::close(fd);
        spareFd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) shed_.fetch_add(1, std::memory_order_relaxed);
        return fd >= 0;
    }

    void adopt(ServerThread& t, int fd) {
        auto conn = std::make_unique<ServerConn>();
        conn->fd = fd;
        conn->interest = EPOLLIN;
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = conn.get();
        if (epoll_ctl(t.epoll, EPOLL_CTL_ADD, fd, &ev) != 0) {
            ::close(fd);
            return;
        }
        ServerConn* raw = conn.get();
        t.conns.emplace(raw, std::move(conn));
    }

    void close(ServerThread& t, ServerConn* c) {
        epoll_ctl(t.epoll, EPOLL_CTL_DEL, c->fd, nullptr);
        ::close(c->fd);
        t.conns.erase(c);
    }

    void handle(ServerThread& t, ServerConn* c, uint32_t events) {
        if (events & EPOLLERR) return close(t, c);
        if ((events & EPOLLOUT) && !flush(c)) return close(t, c);
        if (events & (EPOLLIN | EPOLLHUP)) {
            if (!c->pendingIn.empty()) {
                // Still backlogged; a hang-up means nobody will read the answers anyway.
                if (events & EPOLLHUP) return close(t, c);
            } else if (!readSome(t, c)) {
                return close(t, c);
            }
        }
        if (!pump(c)) return close(t, c);
        updateInterest(t, c);
    }

    /// Reads and parses what the socket has. Returns false when the connection must be
    /// closed (end of stream, socket error or protocol error).
    bool readSome(ServerThread& t, ServerConn* c) {
        for (int round = 0; round < 4; ++round) {
            ssize_t r = ::recv(c->fd, t.scratch.data(), t.scratch.size(), 0);
            if (r == 0) return false;
            if (r < 0) {
                if (errno == EINTR) continue;
                return errno == EAGAIN || errno == EWOULDBLOCK;
            }
            size_t consumed = 0;
            if (!parse(c, t.scratch.data(), static_cast<size_t>(r), &consumed)) return false;
            if (consumed < static_cast<size_t>(r)) {
                c->pendingIn.assign(t.scratch.data() + consumed, t.scratch.data() + r);
                return true;
            }
            if (static_cast<size_t>(r) < t.scratch.size()) return true;  // drained
        }
        return true;
    }

    /// Sends queued output and answers backlogged requests while there is room. On
    /// return either the backlog is empty or the output is above the high-water mark (so
    /// EPOLLOUT will bring us back): a connection is never left waiting on nothing.
    bool pump(ServerConn* c) {
        if (!flush(c)) return false;
        while (!c->pendingIn.empty() && c->out.size() < kOutputHighWater) {
            size_t consumed = 0;
            if (!parse(c, c->pendingIn.data(), c->pendingIn.size(), &consumed)) return false;
            if (consumed == 0) break;  // the socket would not take output: wait for EPOLLOUT
            c->pendingIn.erase(c->pendingIn.begin(), c->pendingIn.begin() + static_cast<ptrdiff_t>(consumed));
            if (!flush(c)) return false;
        }
        if (c->pendingIn.empty() && c->pendingIn.capacity() != 0) std::vector<uint8_t>().swap(c->pendingIn);
        return true;
    }

    /// Parses requests from [p, p+n) and queues their responses. Stops early (with
    /// *consumed < n) when the output buffer is full. Returns false on a protocol error.
    bool parse(ServerConn* c, const uint8_t* p, size_t n, size_t* consumed) {
        const uint32_t maxLen = options_.maxMessageLength;
        uint64_t answered = 0;
        size_t i = 0;
        bool ok = true;
        bool socketError = false;
        while (i < n) {
            if (!c->inBody) {
                if (c->headerHave == 0 && c->out.size() >= kOutputHighWater) {
                    if (!flush(c)) {
                        ok = false;
                        socketError = true;
                        break;
                    }
                    if (c->out.size() >= kOutputHighWater) break;
                }
                size_t take = std::min<size_t>(4 - c->headerHave, n - i);
                std::memcpy(c->header + c->headerHave, p + i, take);
                c->headerHave += static_cast<uint32_t>(take);
                i += take;
                if (c->headerHave < 4) break;
                c->headerHave = 0;
                uint32_t len = loadBe32(c->header);
                if (len < 4 || len > maxLen) {
                    ok = false;
                    break;
                }
                c->inBody = true;
                c->bodyRemaining = len;
                c->firstHave = 0;
            }
            if (c->firstHave < 4) {
                size_t take = std::min<size_t>(4 - c->firstHave, n - i);
                std::memcpy(c->first + c->firstHave, p + i, take);
                c->firstHave += static_cast<uint32_t>(take);
                c->bodyRemaining -= static_cast<uint32_t>(take);
                i += take;
                if (c->firstHave < 4) break;
            }
            size_t skip = std::min<size_t>(c->bodyRemaining, n - i);
            i += skip;
            c->bodyRemaining -= static_cast<uint32_t>(skip);
            if (c->bodyRemaining != 0) break;
            c->inBody = false;
            uint32_t responseLength = responseLengthOf(std::span<const uint8_t>(c->first, 4));
            if (responseLength > maxLen) {
                ok = false;
                break;
            }
            if (options_.serverWorkUs > 0) busyFor(options_.serverWorkUs);
            // The body is whatever the buffer held before: filler content is arbitrary.
            storeBe32(c->out.appendRaw(4 + size_t{responseLength}), responseLength);
            ++answered;
            // With work per request, each response leaves when its work is done, as a
            // Homa handler's does (not after the work of every request in the read).
            if (options_.serverWorkUs > 0 && !flush(c)) {
                ok = false;
                socketError = true;
                break;
            }
        }
        if (answered != 0) served_.fetch_add(answered, std::memory_order_relaxed);
        if (!ok) {
            if (!socketError) {
                rejected_.fetch_add(1, std::memory_order_relaxed);
                // The responses to the requests before the bad frame are served: they
                // leave before the connection closes (as far as the socket takes them
                // now; the rest of the stream is garbage to us).
                flush(c);
            }
            return false;
        }
        *consumed = i;
        return true;
    }

    static bool flush(ServerConn* c) { return sendQueued(c->fd, c->out); }

    void updateInterest(ServerThread& t, ServerConn* c) {
        uint32_t want = (c->pendingIn.empty() ? EPOLLIN : 0u) | (c->out.empty() ? 0u : EPOLLOUT);
        if (want == c->interest) return;
        epoll_event ev{};
        ev.events = want;
        ev.data.ptr = c;
        epoll_ctl(t.epoll, EPOLL_CTL_MOD, c->fd, &ev);
        c->interest = want;
    }

    TcpOptions options_;
    std::vector<std::unique_ptr<ServerThread>> threads_;
    std::vector<std::unique_ptr<Listener>> listeners_;
    std::vector<Address> addresses_;
    std::atomic<uint64_t> served_{0};
    std::atomic<uint64_t> rejected_{0};
    std::atomic<uint64_t> shed_{0};
    std::mutex spareMu_;
    int spareFd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // see shedConnection()
    std::atomic<size_t> nextThread_{0};
    std::mutex stopMu_;
};

// ============================================================================ client

CallResult failure(std::string error) {
    CallResult r;
    r.ok = false;
    r.error = std::move(error);
    return r;
}

struct ClientThread;

struct ClientConn : Source {
    ClientConn() : Source(Kind::Conn) {}
    int fd = -1;
    Address peer;
    ClientThread* owner = nullptr;
    /// Set once the connection has failed; lets call() skip it without locking.
    std::atomic<bool> dead{false};

    // Hand-off from callers to the owning thread.
    std::mutex mu;
    ByteBuffer staged;              ///< framed requests not yet taken by the thread (mu)
    std::vector<uint64_t> stagedTokens;  ///< their calls' tokens, in stream order (mu)
    bool queued = false;            ///< on the owner's ready list (mu)
    bool failed = false;            ///< (mu)
    std::string error;              ///< why it failed (mu)

    // Owned by the epoll thread.
    ByteBuffer out;
    std::vector<uint64_t> inflight;  ///< tokens of requests handed to `out`, oldest at inflightHead
    size_t inflightHead = 0;
    uint32_t interest = 0;
    uint8_t header[4] = {};
    uint32_t headerHave = 0;
    bool inBody = false;
    uint32_t bodyRemaining = 0;
    uint32_t bodyLength = 0;
};

struct ClientThread {
    ClientThread() : wakeSource(Source::Kind::Wake) {}
    int epoll = -1;
    int wake = -1;
    Source wakeSource;
    std::thread thread;
    std::mutex mu;
    std::vector<ClientConn*> ready;  ///< connections with staged requests (mu)
    bool stop = false;               ///< (mu)
    /// True while the thread may be blocked in epoll_wait with an empty ready list; only
    /// then do callers pay for an eventfd write.
    std::atomic<bool> sleeping{false};
    std::vector<ClientConn*> owned;
    std::vector<uint8_t> scratch;
};

struct ServerConns {
    std::vector<ClientConn*> conns;
    std::atomic<size_t> next{0};
};

/// Calls are framed into the chosen connection's staging buffer under its mutex; the
/// owning epoll thread later swaps that buffer with its output buffer and sends it in one
/// send(), so callers never touch sockets. stop() joins the epoll threads, so it must not
/// be called from a call's completion. A non-positive connect timeout waits for the kernel.
class TcpClient final : public ClientTransport {
  public:
    explicit TcpClient(const TcpOptions& options) : options_(options) {}
    ~TcpClient() override {
        stop();
        for (auto& c : conns_)
            if (c->fd >= 0) ::close(c->fd);
        for (auto& t : threads_) {
            if (t->epoll >= 0) ::close(t->epoll);
            if (t->wake >= 0) ::close(t->wake);
        }
    }

    bool start(const std::vector<Address>& servers, int connectTimeoutMs, std::string* error) {
        int perServer = std::max(1, options_.connectionsPerServer);
        servers_ = std::vector<ServerConns>(servers.size());
        for (size_t s = 0; s < servers.size(); ++s) {
            for (int k = 0; k < perServer; ++k) {
                auto c = std::make_unique<ClientConn>();
                c->peer = servers[s];
                servers_[s].conns.push_back(c.get());
                conns_.push_back(std::move(c));
            }
        }
        if (!connectAll(connectTimeoutMs, error)) return false;

        int nthreads = std::max(1, options_.threads);
        for (int i = 0; i < nthreads; ++i)
            if (!addEpollThread<ClientThread>(threads_, error)) return false;
        for (size_t i = 0; i < conns_.size(); ++i) {
            ClientConn* c = conns_[i].get();
            ClientThread* t = threads_[i % threads_.size()].get();
            c->owner = t;
            c->interest = EPOLLIN;
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = c;
            epoll_ctl(t->epoll, EPOLL_CTL_ADD, c->fd, &ev);
            t->owned.push_back(c);
        }
        for (auto& t : threads_) {
            ClientThread* tp = t.get();
            tp->thread = std::thread([this, tp] { run(*tp); });
            pthread_setname_np(tp->thread.native_handle(), "tcp-client");
        }
        return true;
    }

    void issue(size_t server, std::span<const uint8_t> request, uint64_t token) override {
        if (stopped_.load(std::memory_order_acquire)) return complete(token, failure("stopped"));
        if (server >= servers_.size())
            return complete(token, failure("no server " + std::to_string(server) + " (have " +
                                           std::to_string(servers_.size()) + ")"));
        if (request.size() < 4 || request.size() > options_.maxMessageLength)
            return complete(token, failure("request of " + std::to_string(request.size()) +
                                           " bytes is outside 4.." + std::to_string(options_.maxMessageLength)));
        ServerConns& sc = servers_[server];
        size_t n = sc.conns.size();
        size_t start = sc.next.fetch_add(1, std::memory_order_relaxed);
        std::string lastError;
        for (size_t k = 0; k < n; ++k) {
            ClientConn* c = sc.conns[(start + k) % n];
            if (c->dead.load(std::memory_order_relaxed)) continue;
            bool enqueue;
            {
                std::lock_guard<std::mutex> lock(c->mu);
                if (c->failed) {
                    lastError = c->error;
                    continue;
                }
                // The header only: the rest is filler (transport.h), sent from the
                // buffer as it is, as Homa's messages are.
                uint8_t* p = c->staged.appendRaw(4 + request.size());
                storeBe32(p, static_cast<uint32_t>(request.size()));
                std::memcpy(p + 4, request.data(), std::min(request.size(), kRequestHeaderBytes));
                c->stagedTokens.push_back(token);
                enqueue = !c->queued;
                c->queued = true;
            }
            if (enqueue) wakeFor(c);
            return;
        }
        if (lastError.empty()) {
            std::lock_guard<std::mutex> lock(sc.conns[start % n]->mu);
            lastError = sc.conns[start % n]->error;
        }
        complete(token, failure(lastError));
    }

    /// A call on the calling thread over a blocking connection of its own to the server
    /// (opened on first use), as Homa's synchronous call: no thread hand-over. homa-perf
    /// measures the unloaded round trip with it (hasSyncCalls() stays false, so the load
    /// itself goes through the epoll threads).
    bool callSync(size_t server, std::span<const uint8_t> request, CallResult* result) override {
        std::lock_guard<std::mutex> lock(syncMu_);
        *result = CallResult{};
        if (stopped_.load(std::memory_order_acquire) || server >= servers_.size()) return false;
        if (request.size() < 4 || request.size() > options_.maxMessageLength) return false;
        if (syncFds_.size() < servers_.size()) syncFds_.resize(servers_.size(), -1);
        int& fd = syncFds_[server];
        // stop() came before this call published its socket: nothing sent.
        auto stoppedBefore = [&] {
            setActiveSyncFd(-1);
            return false;
        };
        auto fail = [&](const std::string& why) {
            result->error = why + ": " + std::strerror(errno);
            if (syncInterrupted_.load(std::memory_order_acquire)) result->error = "stopped";  // stop() shut its socket
            setActiveSyncFd(-1);
            if (fd >= 0) ::close(fd);
            fd = -1;
            return true;
        };
        if (fd < 0) {
            SockAddr sa;
            const socklen_t len = toSockAddr(servers_[server].conns.front()->peer, &sa);
            fd = ::socket(sa.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) return fail("socket");
            timeval tv{5, 0};  // a server that stops answering fails the call, not hangs it
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            setActiveSyncFd(fd);
            if (stopped_.load(std::memory_order_acquire)) return stoppedBefore();
            if (::connect(fd, &sa.sa, len) != 0) return fail("connect");
            setNoDelay(fd);
        } else {
            setActiveSyncFd(fd);
            if (stopped_.load(std::memory_order_acquire)) return stoppedBefore();
        }
        std::vector<uint8_t> frame(4 + request.size());
        storeBe32(frame.data(), static_cast<uint32_t>(request.size()));
        std::memcpy(frame.data() + 4, request.data(), request.size());
        for (size_t done = 0; done < frame.size();) {
            ssize_t n = ::send(fd, frame.data() + done, frame.size() - done, MSG_NOSIGNAL);
            if (n <= 0) return fail("send");
            done += static_cast<size_t>(n);
        }
        auto readAll = [&](uint8_t* p, size_t want) {
            for (size_t got = 0; got < want;) {
                ssize_t n = ::recv(fd, p + got, want - got, 0);
                if (n == 0) errno = ECONNRESET;  // the server hung up (recv sets no errno)
                if (n <= 0) return false;
                got += static_cast<size_t>(n);
            }
            return true;
        };
        uint8_t header[4];
        if (!readAll(header, 4)) return fail("recv");
        const uint32_t length = loadBe32(header);
        if (length > options_.maxMessageLength) {
            errno = EMSGSIZE;
            return fail("response of " + std::to_string(length) + " bytes");
        }
        syncScratch_.resize(length);
        if (!readAll(syncScratch_.data(), length)) return fail("recv");
        setActiveSyncFd(-1);
        result->ok = true;
        result->responseLength = length;
        return true;
    }

    void stop() override {
        // Stopped first: a callSync waiting for syncMu_ then opens no new connection, and
        // one that publishes its socket afterwards sees it. One blocked in a send or a
        // receive is woken by shutting its socket down (it fails with "stopped").
        stopped_.store(true, std::memory_order_release);
        {
            std::lock_guard<std::mutex> lock(syncActiveMu_);
            if (syncActiveFd_ >= 0) {
                syncInterrupted_.store(true, std::memory_order_release);
                ::shutdown(syncActiveFd_, SHUT_RDWR);
            }
        }
        {
            std::lock_guard<std::mutex> lock(syncMu_);
            for (int& fd : syncFds_)
                if (fd >= 0) ::close(fd);
            syncFds_.clear();
        }
        std::lock_guard<std::mutex> lock(stopMu_);
        for (auto& t : threads_) {
            if (!t->thread.joinable()) continue;
            {
                std::lock_guard<std::mutex> tl(t->mu);
                t->stop = true;
            }
            signalEventFd(t->wake);
        }
        for (auto& t : threads_)
            if (t->thread.joinable()) t->thread.join();
    }

  private:
    bool connectAll(int timeoutMs, std::string* error) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
        std::vector<ClientConn*> pending;
        auto fail = [&](ClientConn* c, const std::string& why) {
            *error = "cannot connect to " + c->peer.toString() + ": " + why;
            for (auto& cc : conns_) {
                if (cc->fd >= 0) ::close(cc->fd);
                cc->fd = -1;
            }
            return false;
        };
        // All connects proceed in parallel so the timeout bounds the whole set.
        for (auto& c : conns_) {
            SockAddr sa;
            socklen_t len = toSockAddr(c->peer, &sa);
            c->fd = ::socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (c->fd < 0) return fail(c.get(), errnoText(errno));
            if (::connect(c->fd, &sa.sa, len) == 0) continue;
            if (errno != EINPROGRESS) return fail(c.get(), errnoText(errno));
            pending.push_back(c.get());
        }
        std::vector<pollfd> pfds;
        while (!pending.empty()) {
            int waitMs = -1;
            if (timeoutMs > 0) {
                auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now());
                if (left.count() <= 0)
                    return fail(pending.front(), "timed out after " + std::to_string(timeoutMs) + " ms");
                waitMs = static_cast<int>(left.count()) + 1;
            }
            pfds.clear();
            for (ClientConn* c : pending) pfds.push_back(pollfd{c->fd, POLLOUT, 0});
            int r = ::poll(pfds.data(), pfds.size(), waitMs);
            if (r < 0 && errno != EINTR) return fail(pending.front(), errnoText(errno));
            std::vector<ClientConn*> still;
            for (size_t i = 0; i < pending.size(); ++i) {
                if (pfds[i].revents == 0) {
                    still.push_back(pending[i]);
                    continue;
                }
                int err = 0;
                socklen_t elen = sizeof(err);
                getsockopt(pending[i]->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
                if (err != 0) return fail(pending[i], errnoText(err));
            }
            pending.swap(still);
        }
        for (auto& c : conns_) setNoDelay(c->fd);
        return true;
    }

    static void wakeFor(ClientConn* c) {
        ClientThread& t = *c->owner;
        bool wake;
        {
            std::lock_guard<std::mutex> lock(t.mu);
            t.ready.push_back(c);
            wake = t.sleeping.exchange(false, std::memory_order_relaxed);
        }
        if (wake) signalEventFd(t.wake);
    }

    void run(ClientThread& t) {
        t.scratch.resize(kReadChunk);
        epoll_event events[kMaxEvents];
        std::vector<ClientConn*> work;
        int busyRounds = 0;
        for (;;) {
            {
                std::lock_guard<std::mutex> lock(t.mu);
                if (t.stop) break;
                work.swap(t.ready);
                // Set under the lock after seeing an empty list, so a caller that adds
                // work afterwards sees it and writes the eventfd.
                if (work.empty()) t.sleeping.store(true, std::memory_order_relaxed);
            }
            int timeout = -1;
            if (!work.empty()) {
                for (ClientConn* c : work) takeStaged(t, c);
                work.clear();
                // Keep sending while callers keep feeding us, but look at the sockets
                // every few rounds so responses are not starved.
                if (++busyRounds < 4) continue;
                timeout = 0;
            }
            busyRounds = 0;
            int n = epoll_wait(t.epoll, events, kMaxEvents, timeout);
            t.sleeping.store(false, std::memory_order_relaxed);
            if (n < 0) {
                if (errno == EINTR) continue;
                break;
            }
            for (int i = 0; i < n; ++i) {
                auto* src = static_cast<Source*>(events[i].data.ptr);
                if (src->kind == Source::Kind::Wake) {
                    drainEventFd(t.wake);
                    continue;
                }
                handle(t, static_cast<ClientConn*>(src), events[i].events);
            }
        }
        for (ClientConn* c : t.owned) fail(t, c, "stopped");
    }

    /// Sends the requests staged on the thread's connections.
    void sendStaged(ClientThread& t) {
        std::vector<ClientConn*> work;
        {
            std::lock_guard<std::mutex> lock(t.mu);
            work.swap(t.ready);
        }
        for (ClientConn* c : work) takeStaged(t, c);
    }

    /// Moves a connection's staged requests to its output buffer and sends them.
    void takeStaged(ClientThread& t, ClientConn* c) {
        {
            std::lock_guard<std::mutex> lock(c->mu);
            c->queued = false;
            if (c->failed) return;
            if (c->out.empty()) {
                c->out.swap(c->staged);  // the common case: no copy, buffers trade places
            } else {
                c->out.append(c->staged.data(), c->staged.size());
            }
            c->staged.clear();
            if (c->inflightHead == c->inflight.size()) {
                c->inflight.clear();
                c->inflightHead = 0;
                c->inflight.swap(c->stagedTokens);
            } else {
                c->inflight.insert(c->inflight.end(), c->stagedTokens.begin(), c->stagedTokens.end());
            }
            c->stagedTokens.clear();
        }
        if (!flush(c)) return failConnection(t, c, errno);
        updateInterest(t, c);
    }

    void handle(ClientThread& t, ClientConn* c, uint32_t events) {
        if (c->fd < 0) return;
        if (events & EPOLLERR) {
            // What arrived before the error is still readable: its responses complete
            // their calls first (a reset does not take back data already received). The
            // read then meets the error and fails the rest.
            if ((events & EPOLLIN) && !onReadable(t, c)) return;
            if (c->fd < 0) return;
            int err = 0;
            socklen_t len = sizeof(err);
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            return failConnection(t, c, err ? err : EIO);
        }
        if (events & EPOLLOUT) {
            if (!flush(c)) return failConnection(t, c, errno);
        }
        if (events & (EPOLLIN | EPOLLHUP)) {
            if (!onReadable(t, c)) return;
        }
        updateInterest(t, c);
    }

    /// Returns false if the connection failed.
    bool onReadable(ClientThread& t, ClientConn* c) {
        for (int round = 0; round < 4; ++round) {
            ssize_t r = ::recv(c->fd, t.scratch.data(), t.scratch.size(), 0);
            if (r == 0) {
                fail(t, c, "connection closed by the server: " + c->peer.toString());
                return false;
            }
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
                failConnection(t, c, errno);
                return false;
            }
            if (!parse(t, c, t.scratch.data(), static_cast<size_t>(r))) return false;
            if (static_cast<size_t>(r) < t.scratch.size()) return true;
        }
        return true;
    }

    /// Consumes response bytes, completing calls in order. False if the connection failed.
    /// As Homa's endpoint does (see Core::runCallbacks), once half of the connection's
    /// calls have finished in one read, the calls their completions started are sent
    /// before the rest complete, so the server works on them meanwhile instead of both
    /// sides taking turns.
    bool parse(ClientThread& t, ClientConn* c, const uint8_t* p, size_t n) {
        const size_t waiting = c->inflight.size() - c->inflightHead;
        const size_t half = waiting / 2 >= kMinSplitCalls ? waiting / 2 : 0;
        size_t finished = 0;
        size_t i = 0;
        while (i < n) {
            if (!c->inBody) {
                size_t take = std::min<size_t>(4 - c->headerHave, n - i);
                std::memcpy(c->header + c->headerHave, p + i, take);
                c->headerHave += static_cast<uint32_t>(take);
                i += take;
                if (c->headerHave < 4) break;
                c->headerHave = 0;
                c->bodyLength = loadBe32(c->header);
                if (c->bodyLength > options_.maxMessageLength) {
                    fail(t, c,
                         "protocol error: response of " + std::to_string(c->bodyLength) +
                             " bytes exceeds the limit of " + std::to_string(options_.maxMessageLength) +
                             " (from " + c->peer.toString() + ")");
                    return false;
                }
                c->bodyRemaining = c->bodyLength;
                c->inBody = true;
            }
            size_t skip = std::min<size_t>(c->bodyRemaining, n - i);
            i += skip;
            c->bodyRemaining -= static_cast<uint32_t>(skip);
            if (c->bodyRemaining != 0) break;
            c->inBody = false;
            if (c->inflightHead == c->inflight.size()) {
                fail(t, c, "protocol error: response without a request (from " + c->peer.toString() + ")");
                return false;
            }
            const uint64_t token = c->inflight[c->inflightHead];
            ++c->inflightHead;
            if (c->inflightHead == c->inflight.size()) {
                c->inflight.clear();
                c->inflightHead = 0;
            } else if (c->inflightHead >= 1024 && c->inflightHead * 2 >= c->inflight.size()) {
                // Compact now and then, so a never-empty pipeline does not grow forever.
                c->inflight.erase(c->inflight.begin(), c->inflight.begin() + static_cast<ptrdiff_t>(c->inflightHead));
                c->inflightHead = 0;
            }
            CallResult result;
            result.ok = true;
            result.responseLength = c->bodyLength;
            complete(token, std::move(result));
            if (++finished == half && finished < waiting) {
                sendStaged(t);
                if (c->fd < 0) return false;  // (the send failed this connection)
            }
        }
        return true;
    }

    static bool flush(ClientConn* c) { return sendQueued(c->fd, c->out); }

    static void updateInterest(ClientThread& t, ClientConn* c) {
        if (c->fd < 0) return;
        uint32_t want = EPOLLIN | (c->out.empty() ? 0u : EPOLLOUT);
        if (want == c->interest) return;
        epoll_event ev{};
        ev.events = want;
        ev.data.ptr = c;
        epoll_ctl(t.epoll, EPOLL_CTL_MOD, c->fd, &ev);
        c->interest = want;
    }

    /// fail() for a socket error `err`. (The peer goes after the kind, the text before the
    /// first ": ", by which homa-perf counts errors: one kind for every server.)
    void failConnection(ClientThread& t, ClientConn* c, int err) {
        fail(t, c, "connection failed: " + errnoText(err) + " (to " + c->peer.toString() + ")");
    }

    /// Closes the connection and fails every call on it, oldest first. Calls that arrive
    /// afterwards see `failed` and go to another connection or fail at once.
    void fail(ClientThread& t, ClientConn* c, const std::string& why) {
        std::vector<uint64_t> staged;
        {
            std::lock_guard<std::mutex> lock(c->mu);
            if (c->failed) return;
            c->failed = true;
            c->error = why;
            c->dead.store(true, std::memory_order_relaxed);
            staged.swap(c->stagedTokens);
            c->staged.clear();
        }
        if (c->fd >= 0) {
            epoll_ctl(t.epoll, EPOLL_CTL_DEL, c->fd, nullptr);
            ::close(c->fd);
            c->fd = -1;
        }
        std::vector<uint64_t> inflight;
        inflight.swap(c->inflight);
        size_t head = c->inflightHead;
        c->inflightHead = 0;
        c->out.clear();
        for (size_t i = head; i < inflight.size(); ++i) complete(inflight[i], failure(why));
        for (uint64_t token : staged) complete(token, failure(why));
    }

    TcpOptions options_;
    std::vector<std::unique_ptr<ClientConn>> conns_;
    std::vector<ServerConns> servers_;
    std::vector<std::unique_ptr<ClientThread>> threads_;
    std::atomic<bool> stopped_{false};
    std::mutex stopMu_;
    std::mutex syncMu_;              ///< callSync's connections and buffer
    std::vector<int> syncFds_;       ///< per server, -1 until first used (syncMu_)
    std::vector<uint8_t> syncScratch_;  ///< (syncMu_)
    std::mutex syncActiveMu_;
    int syncActiveFd_ = -1;  ///< the socket of the callSync in progress, for stop() (syncActiveMu_)
    std::atomic<bool> syncInterrupted_{false};  ///< stop() shut a callSync's socket down

    void setActiveSyncFd(int fd) {
        std::lock_guard<std::mutex> lock(syncActiveMu_);
        syncActiveFd_ = fd;
    }
};

}  // namespace

std::unique_ptr<ClientTransport> makeTcpClient(const std::vector<Address>& servers, const TcpOptions& options,
                                               int connectTimeoutMs, std::string* error) {
    std::string ignored;
    if (error == nullptr) error = &ignored;
    auto client = std::make_unique<TcpClient>(options);
    if (!client->start(servers, connectTimeoutMs, error)) return nullptr;
    return client;
}

std::unique_ptr<ServerTransport> makeTcpServer(const Address& bind, int ports, const TcpOptions& options,
                                               std::string* error) {
    std::string ignored;
    if (error == nullptr) error = &ignored;
    auto server = std::make_unique<TcpServer>(options);
    if (!server->start(bind, ports, error)) return nullptr;
    return server;
}

}  // namespace homa::perf
