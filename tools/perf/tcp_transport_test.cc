// Tests for the TCP baseline transport: framing, pipelining, multiple ports and threads,
// connection failures, rejection of malformed frames, and shutdown with calls in flight.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "common/descriptor_limit.h"
#include "perf/homa_transport.h"
#include "perf/perf.h"
#include "perf/transport.h"

namespace homa::perf {
namespace {

using namespace std::chrono_literals;

const Address kLoopback = Address::ipv4(0x7f000001, 0);

/// A request of `size` bytes asking for `responseLength` bytes back.
std::vector<uint8_t> makeRequest(size_t size, uint32_t responseLength) {
    std::vector<uint8_t> r(size, 0xab);
    putResponseLength(r.data(), responseLength);
    return r;
}

/// Counts completions and lets the test wait for a number of them.
class Completions {
  public:
    void add(const CallResult& r) {
        std::lock_guard<std::mutex> lock(mu_);
        ++count_;
        if (!r.ok) {
            ++failed_;
            lastError_ = r.error;
        }
        cv_.notify_all();
    }
    bool waitFor(size_t n, std::chrono::milliseconds timeout = 10s) {
        std::unique_lock<std::mutex> lock(mu_);
        return cv_.wait_for(lock, timeout, [&] { return count_ >= n; });
    }
    size_t count() {
        std::lock_guard<std::mutex> lock(mu_);
        return count_;
    }
    size_t failed() {
        std::lock_guard<std::mutex> lock(mu_);
        return failed_;
    }
    std::string lastError() {
        std::lock_guard<std::mutex> lock(mu_);
        return lastError_;
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    size_t count_ = 0;
    size_t failed_ = 0;
    std::string lastError_;
};

std::unique_ptr<ServerTransport> startServer(const Address& bind, int ports, const TcpOptions& options) {
    std::string error;
    auto server = makeTcpServer(bind, ports, options, &error);
    EXPECT_NE(server, nullptr) << error;
    return server;
}

std::unique_ptr<ClientTransport> startClient(const std::vector<Address>& servers, const TcpOptions& options) {
    std::string error;
    auto client = makeTcpClient(servers, options, 2000, &error);
    EXPECT_NE(client, nullptr) << error;
    return client;
}

/// One synchronous call; the result, or a failure if nothing came back in time.
CallResult callAndWait(ClientTransport& client, size_t server, const std::vector<uint8_t>& request) {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    CallResult result;
    client.call(server, request, [&](CallResult r) {
        std::lock_guard<std::mutex> lock(mu);
        result = std::move(r);
        done = true;
        cv.notify_all();
    });
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, 10s, [&] { return done; })) {
        result.ok = false;
        result.error = "test timed out";
        // The callback still refers to our locals: it must not run after we return.
        ADD_FAILURE() << "call did not complete";
        cv.wait(lock, [&] { return done; });
    }
    return result;
}

/// A raw TCP socket connected to `a`, for sending hand-made frames.
int rawConnect(const Address& a) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(a.port);
    sa.sin_addr.s_addr = htonl(a.ipv4Host());
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/// A listening socket on 127.0.0.1 that never answers (the kernel still completes
/// handshakes and buffers requests). Returns its fd and sets *port.
int silentListener(uint16_t* port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(fd, 16) != 0) {
        close(fd);
        return -1;
    }
    socklen_t len = sizeof(sa);
    getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    *port = ntohs(sa.sin_port);
    return fd;
}

/// A client of one server that never answers: a listener whose first connection (the
/// client's) is accepted and left unread.
struct SilentServer {
    int listener = -1, accepted = -1;
    uint16_t port = 0;
    std::unique_ptr<ClientTransport> client;
    SilentServer() {
        listener = silentListener(&port);
        if (listener < 0) return;
        client = startClient({Address::ipv4(0x7f000001, port)}, TcpOptions{});
        if (client) accepted = accept(listener, nullptr, nullptr);
    }
    ~SilentServer() {
        if (client) client->stop();
        if (accepted >= 0) close(accepted);
        if (listener >= 0) close(listener);
    }
    bool ready() const { return client != nullptr && accepted >= 0; }
    /// Hangs up the accepted connection.
    void hangUp() {
        close(accepted);
        accepted = -1;
    }
};

/// Waits until the peer closes `fd` (end of stream or reset), discarding data.
bool waitForClose(int fd, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    while (std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r <= 0) return true;
    }
    return false;
}

TEST(TcpTransport, EchoesEverySizeWithTheRequestedResponseLength) {
    TcpOptions options;
    options.maxMessageLength = 2 << 20;
    auto server = startServer(kLoopback, 1, options);
    ASSERT_NE(server, nullptr);
    auto client = startClient(server->addresses(), options);
    ASSERT_NE(client, nullptr);

    const std::vector<uint32_t> sizes = {4, 5, 7, 64, 1000, 1460, 4096, 65536, 100'000, 500'000, 1 << 20};
    uint64_t calls = 0;
    for (uint32_t size : sizes) {
        // Same size both ways, then small request / large response and the reverse.
        for (auto [req, resp] : {std::pair{size, size}, std::pair{4u, size}, std::pair{size, 1u}}) {
            CallResult r = callAndWait(*client, 0, makeRequest(req, resp));
            EXPECT_TRUE(r.ok) << r.error;
            EXPECT_EQ(r.responseLength, resp) << "request " << req;
            ++calls;
        }
    }
    // A request that asks for 0 bytes gets the minimum of 1.
    CallResult r = callAndWait(*client, 0, makeRequest(16, 0));
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.responseLength, 1u);
    ++calls;
    EXPECT_EQ(server->served(), calls);
    client->stop();
    server->stop();
}

/// Issues `total` calls at once from `callers` threads and checks each completes once,
/// successfully, with its own response length (so responses matched the right calls).
void pipelined(int connections, int clientThreads, int callers, int total) {
    TcpOptions options;
    options.connectionsPerServer = connections;
    options.threads = clientThreads;
    auto server = startServer(kLoopback, 1, options);
    ASSERT_NE(server, nullptr);
    auto client = startClient(server->addresses(), options);
    ASSERT_NE(client, nullptr);

    std::vector<std::atomic<int>> times(total);
    std::vector<std::atomic<bool>> right(total);
    Completions completions;
    std::vector<std::thread> threads;
    for (int t = 0; t < callers; ++t) {
        threads.emplace_back([&, t] {
            for (int i = t; i < total; i += callers) {
                uint32_t want = 1 + static_cast<uint32_t>(i * 37 % 3000);
                client->call(0, makeRequest(8 + i % 100, want), [&, i, want](CallResult r) {
                    times[i].fetch_add(1);
                    right[i].store(r.ok && r.responseLength == want);
                    completions.add(r);
                });
            }
        });
    }
    for (auto& th : threads) th.join();
    ASSERT_TRUE(completions.waitFor(total)) << completions.count() << " of " << total;
    std::this_thread::sleep_for(20ms);  // a duplicate completion would show up here
    for (int i = 0; i < total; ++i) {
        EXPECT_EQ(times[i].load(), 1) << "call " << i;
        EXPECT_TRUE(right[i].load()) << "call " << i;
    }
    EXPECT_EQ(completions.failed(), 0u) << completions.lastError();
    EXPECT_EQ(server->served(), static_cast<uint64_t>(total));
    client->stop();
    server->stop();
}

TEST(TcpTransport, ThousandPipelinedCallsOverOneConnection) { pipelined(1, 1, 1, 1000); }

TEST(TcpTransport, ThousandPipelinedCallsOverFourConnectionsFromFourThreads) { pipelined(4, 2, 4, 1000); }

TEST(TcpTransport, TwoPortsAndTwoServerThreads) {
    TcpOptions serverOptions;
    serverOptions.threads = 2;
    auto server = startServer(kLoopback, 2, serverOptions);
    ASSERT_NE(server, nullptr);
    auto addresses = server->addresses();
    ASSERT_EQ(addresses.size(), 2u);
    EXPECT_NE(addresses[0].port, addresses[1].port);

    TcpOptions clientOptions;
    clientOptions.connectionsPerServer = 3;
    clientOptions.threads = 2;
    auto client = startClient(addresses, clientOptions);
    ASSERT_NE(client, nullptr);
    Completions completions;
    std::atomic<int> wrong{0};
    const int perServer = 300;
    for (int i = 0; i < perServer; ++i) {
        for (size_t s = 0; s < 2; ++s) {
            uint32_t want = static_cast<uint32_t>(100 * (s + 1) + i);
            client->call(s, makeRequest(32, want), [&, want](CallResult r) {
                if (!r.ok || r.responseLength != want) wrong.fetch_add(1);
                completions.add(r);
            });
        }
    }
    ASSERT_TRUE(completions.waitFor(2 * perServer));
    EXPECT_EQ(wrong.load(), 0) << completions.lastError();
    EXPECT_EQ(server->served(), 2u * perServer);
    client->stop();
    server->stop();
}

TEST(TcpTransport, ConsecutivePortsFromAGivenPort) {
    // Find two free consecutive ports; retry a few times since other tests run too.
    for (int attempt = 0; attempt < 20; ++attempt) {
        uint16_t port = 0;
        int probe = silentListener(&port);
        ASSERT_GE(probe, 0);
        close(probe);
        if (port >= 65535) continue;
        std::string error;
        auto server = makeTcpServer(Address::ipv4(0x7f000001, port), 2, TcpOptions{}, &error);
        if (server == nullptr) continue;
        auto addresses = server->addresses();
        ASSERT_EQ(addresses.size(), 2u);
        EXPECT_EQ(addresses[0].port, port);
        EXPECT_EQ(addresses[1].port, port + 1);
        auto client = startClient(addresses, TcpOptions{});
        ASSERT_NE(client, nullptr);
        EXPECT_TRUE(callAndWait(*client, 1, makeRequest(4, 10)).ok);
        return;
    }
    GTEST_SKIP() << "no two consecutive free ports found";
}

TEST(TcpTransport, ConnectingToAClosedPortFailsFastWithAClearError) {
    uint16_t port = 0;
    int probe = silentListener(&port);
    ASSERT_GE(probe, 0);
    close(probe);  // nothing listens there now
    std::string error;
    auto start = std::chrono::steady_clock::now();
    auto client = makeTcpClient({Address::ipv4(0x7f000001, port)}, TcpOptions{}, 5000, &error);
    auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(client, nullptr);
    EXPECT_EQ(error, "cannot connect to 127.0.0.1:" + std::to_string(port) + ": Connection refused");
    EXPECT_LT(elapsed, 1s);
}

TEST(TcpTransport, MalformedFramesCloseOnlyTheirConnection) {
    TcpOptions options;
    auto server = startServer(kLoopback, 1, options);
    ASSERT_NE(server, nullptr);
    auto client = startClient(server->addresses(), options);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(callAndWait(*client, 0, makeRequest(100, 100)).ok);

    // An absurd length, a length too short to hold the response length, and a valid
    // frame asking for an absurd response.
    std::vector<std::vector<uint8_t>> frames = {
        {0xff, 0xff, 0xff, 0xff},
        {0, 0, 0, 2, 1, 2},
        {0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff},
    };
    for (const auto& frame : frames) {
        int fd = rawConnect(server->addresses()[0]);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(send(fd, frame.data(), frame.size(), MSG_NOSIGNAL), static_cast<ssize_t>(frame.size()));
        EXPECT_TRUE(waitForClose(fd, 2s)) << "frame starting " << int{frame[3]};
        close(fd);
        // The well-behaved client keeps working throughout.
        CallResult r = callAndWait(*client, 0, makeRequest(64, 64));
        EXPECT_TRUE(r.ok) << r.error;
        EXPECT_EQ(r.responseLength, 64u);
    }
    client->stop();
    server->stop();
}

// A valid request followed, in the same read, by a frame the server refuses: the valid
// one's response (counted as served) still reaches the client before the connection
// closes. It was queued and then dropped with the connection.
TEST(TcpTransport, ResponsesBeforeAMalformedFrameStillLeave) {
    TcpOptions options;
    auto server = startServer(kLoopback, 1, options);
    ASSERT_NE(server, nullptr);
    int fd = rawConnect(server->addresses()[0]);
    ASSERT_GE(fd, 0);
    // Frame 1: 8 bytes, asking for a 16-byte response; frame 2: an absurd length.
    const std::vector<uint8_t> bytes = {0, 0, 0, 8, 0, 0, 0, 16, 9, 9, 9, 9, 0xff, 0xff, 0xff, 0xff};
    ASSERT_EQ(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
    size_t got = 0;
    uint8_t buf[256];
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, 2000) <= 0) break;
        ssize_t r = recv(fd, buf + std::min<size_t>(got, 128), 128, 0);
        if (r <= 0) break;
        got += static_cast<size_t>(r);
    }
    close(fd);
    EXPECT_EQ(got, 20u) << "the first request's response (4-byte length and 16 bytes)";
    EXPECT_EQ(buf[3], 16);
    server->stop();
}

// Out of file descriptors, the server closes the connections it cannot take at once.
// They were left in the backlog, where the level-triggered listener woke the server's
// thread again at once, for good (a busy loop), and their clients' calls hung.
TEST(TcpTransport, ConnectionsBeyondTheDescriptorLimitAreClosedNotLeftHanging) {
    auto server = startServer(kLoopback, 1, TcpOptions{});
    ASSERT_NE(server, nullptr);
    const Address at = server->addresses()[0];
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(at.port);
    sa.sin_addr.s_addr = htonl(at.ipv4Host());
    // The clients' sockets are made first: once the limit is lowered, no new descriptor
    // can be opened in this process, the server's included.
    std::vector<int> fds;
    for (int i = 0; i < 3; ++i) fds.push_back(socket(AF_INET, SOCK_STREAM, 0));
    test::DescriptorLimit limit(0);
    ASSERT_TRUE(limit.ok());
    int closed = 0;
    for (int fd : fds) {
        if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) continue;
        if (waitForClose(fd, 2s)) ++closed;
    }
    limit.restore();
    for (int fd : fds) close(fd);
    EXPECT_EQ(closed, 3) << "connections the server could not take were left hanging";
    // With descriptors again, it serves as before.
    auto client = startClient(server->addresses(), TcpOptions{});
    ASSERT_NE(client, nullptr);
    CallResult r = callAndWait(*client, 0, makeRequest(64, 64));
    EXPECT_TRUE(r.ok) << r.error;
    client->stop();
    server->stop();
}

TEST(TcpTransport, ServerKeepsLimitedOutputForAClientThatDoesNotRead) {
    // Pipeline many large-response requests without reading, then read everything:
    // the server must pause and resume rather than drop or stall.
    TcpOptions options;
    auto server = startServer(kLoopback, 1, options);
    ASSERT_NE(server, nullptr);
    int fd = rawConnect(server->addresses()[0]);
    ASSERT_GE(fd, 0);
    const int requests = 100;
    const uint32_t responseLength = 500'000;
    std::vector<uint8_t> frames;
    for (int i = 0; i < requests; ++i) {
        uint8_t f[8];
        putResponseLength(f, 4);
        putResponseLength(f + 4, responseLength);
        frames.insert(frames.end(), f, f + 8);
    }
    ASSERT_EQ(send(fd, frames.data(), frames.size(), MSG_NOSIGNAL), static_cast<ssize_t>(frames.size()));
    // Wait until the server stops making progress: it must pause once the socket and
    // its output buffer are full, well before answering everything.
    uint64_t before = server->served();
    for (int i = 0; i < 40; ++i) {
        std::this_thread::sleep_for(100ms);
        uint64_t now = server->served();
        if (now == before && now != 0) break;
        before = now;
    }
    EXPECT_LT(server->served(), static_cast<uint64_t>(requests));
    size_t want = requests * (4 + size_t{responseLength});
    size_t got = 0;
    std::vector<char> buf(1 << 16);
    while (got < want) {
        pollfd p{fd, POLLIN, 0};
        ASSERT_GT(poll(&p, 1, 5000), 0) << "stalled after " << got << " of " << want << " bytes";
        ssize_t r = recv(fd, buf.data(), buf.size(), 0);
        ASSERT_GT(r, 0);
        got += static_cast<size_t>(r);
    }
    EXPECT_EQ(got, want);
    EXPECT_EQ(server->served(), static_cast<uint64_t>(requests));
    close(fd);
    server->stop();
}

TEST(TcpTransport, StopFailsCallsInFlightExactlyOnce) {
    uint16_t port = 0;
    int silent = silentListener(&port);
    ASSERT_GE(silent, 0);
    TcpOptions options;
    options.connectionsPerServer = 2;
    options.threads = 2;
    auto client = startClient({Address::ipv4(0x7f000001, port)}, options);
    ASSERT_NE(client, nullptr);
    const int total = 200;
    std::vector<std::atomic<int>> times(total);
    std::atomic<int> stoppedErrors{0};
    for (int i = 0; i < total; ++i) {
        client->call(0, makeRequest(100, 10), [&, i](CallResult r) {
            times[i].fetch_add(1);
            if (!r.ok && r.error == "stopped") stoppedErrors.fetch_add(1);
        });
    }
    std::this_thread::sleep_for(50ms);
    client->stop();
    for (int i = 0; i < total; ++i) EXPECT_EQ(times[i].load(), 1) << "call " << i;
    EXPECT_EQ(stoppedErrors.load(), total);

    // Later calls fail at once, on the calling thread.
    bool called = false;
    client->call(0, makeRequest(4, 1), [&](CallResult r) {
        called = true;
        EXPECT_FALSE(r.ok);
        EXPECT_EQ(r.error, "stopped");
    });
    EXPECT_TRUE(called);
    client.reset();
    close(silent);
}

TEST(TcpTransport, StopUnderClosedLoopLoadCompletesEveryCallOnce) {
    TcpOptions options;
    options.connectionsPerServer = 2;
    options.threads = 2;
    auto server = startServer(kLoopback, 1, options);
    ASSERT_NE(server, nullptr);
    auto client = startClient(server->addresses(), options);
    ASSERT_NE(client, nullptr);
    std::atomic<uint64_t> issued{0}, completed{0}, ok{0};
    const auto request = makeRequest(64, 64);
    // Each completion issues the next call, as a closed-loop load generator does.
    std::function<void(CallResult)> onDone = [&](CallResult r) {
        completed.fetch_add(1);
        if (r.ok) {
            ok.fetch_add(1);
            issued.fetch_add(1);
            client->call(0, request, onDone);
        }
    };
    for (int i = 0; i < 64; ++i) {
        issued.fetch_add(1);
        client->call(0, request, onDone);
    }
    // Let the loop run for a while; a lost wake-up would stall it below the target.
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (ok.load() < 5000 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    EXPECT_GE(ok.load(), 5000u);
    client->stop();
    EXPECT_EQ(completed.load(), issued.load());
    server->stop();
}

TEST(TcpTransport, ServerClosingTheConnectionFailsPendingCalls) {
    SilentServer silent;
    ASSERT_TRUE(silent.ready());
    ClientTransport* client = silent.client.get();
    Completions completions;
    for (int i = 0; i < 10; ++i) client->call(0, makeRequest(8, 8), [&](CallResult r) { completions.add(r); });
    // Read the first request, then hang up without answering.
    char buf[16];
    ASSERT_GT(recv(silent.accepted, buf, sizeof(buf), 0), 0);
    silent.hangUp();
    ASSERT_TRUE(completions.waitFor(10));
    EXPECT_EQ(completions.failed(), 10u);
    EXPECT_NE(completions.lastError().find("127.0.0.1:" + std::to_string(silent.port)), std::string::npos)
        << completions.lastError();
    // homa-perf counts errors by the text before the first ": " (at most 16 kinds): the
    // address comes after it, so one kind covers every server. (It came first: one kind
    // per server.)
    EXPECT_TRUE(errorKind(completions.lastError()) == "connection closed by the server" ||
                errorKind(completions.lastError()) == "connection failed")
        << errorKind(completions.lastError());
    // With its only connection gone, new calls fail at once with the same reason.
    CallResult r = callAndWait(*client, 0, makeRequest(8, 8));
    EXPECT_FALSE(r.ok);
    EXPECT_FALSE(r.error.empty());
    client->stop();
}

// A response that arrived before the server reset the connection completes its call.
// The client handled the error first and failed calls whose responses it had already
// received. Here the client's thread is held in the first call's completion while the
// second response and the reset arrive.
TEST(TcpTransport, ResponsesReceivedBeforeAResetStillComplete) {
    SilentServer silent;
    ASSERT_TRUE(silent.ready());
    ClientTransport* client = silent.client.get();
    Completions completions;
    std::atomic<bool> inFirst{false};
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    client->call(0, makeRequest(8, 8), [&](CallResult r) {
        completions.add(r);
        inFirst = true;
        released.wait_for(5s);
    });
    client->call(0, makeRequest(8, 8), [&](CallResult r) { completions.add(r); });
    uint8_t requests[24];
    size_t have = 0;
    while (have < sizeof(requests)) {
        ssize_t n = recv(silent.accepted, requests + have, sizeof(requests) - have, 0);
        ASSERT_GT(n, 0);
        have += static_cast<size_t>(n);
    }
    const uint8_t response[12] = {0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8};
    ASSERT_EQ(send(silent.accepted, response, sizeof(response), MSG_NOSIGNAL), 12);
    for (int i = 0; i < 5000 && !inFirst; ++i) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(inFirst);
    ASSERT_EQ(send(silent.accepted, response, sizeof(response), MSG_NOSIGNAL), 12);
    linger reset{1, 0};  // close with a reset
    setsockopt(silent.accepted, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    silent.hangUp();
    std::this_thread::sleep_for(50ms);  // (both have arrived: loopback)
    release.set_value();
    ASSERT_TRUE(completions.waitFor(2));
    EXPECT_EQ(completions.failed(), 0u) << completions.lastError();
    client->stop();
}

// As Homa's endpoint does: when a read finishes most of a connection's calls, the calls
// their completions start leave in two halves, so the server can work on the first while
// the client completes the rest. The 17th of 32 completions finds the 16 requests the
// first 16 started already at the server.
TEST(TcpTransport, CallsStartedByABurstOfCompletionsLeaveInTwoHalves) {
    constexpr int kCalls = 32;
    constexpr size_t kFrame = 4 + 64;  // a request or response of 64 bytes with its length
    // (Declared before the client, which may still complete calls as it is destroyed.)
    std::atomic<int> firstRound{0};
    std::atomic<ssize_t> atServerBefore17th{-1};
    Completions completions;
    SilentServer silent;
    ASSERT_TRUE(silent.ready());
    ClientTransport* client = silent.client.get();
    auto next = [&](CallResult r) { completions.add(r); };
    auto first = [&](CallResult r) {
        EXPECT_TRUE(r.ok) << r.error;
        if (++firstRound == kCalls / 2 + 1) {
            // The first half's requests were sent (the second half cannot be while this
            // completion holds the client's thread); give loopback time to deliver them.
            std::vector<char> peek(kCalls * kFrame);
            const auto deadline = std::chrono::steady_clock::now() + 2s;
            do {
                atServerBefore17th = recv(silent.accepted, peek.data(), peek.size(), MSG_PEEK | MSG_DONTWAIT);
                if (atServerBefore17th >= static_cast<ssize_t>(kCalls / 2 * kFrame)) break;
                std::this_thread::sleep_for(1ms);
            } while (std::chrono::steady_clock::now() < deadline);
        }
        client->call(0, makeRequest(64, 64), next);
        completions.add(r);
    };
    for (int i = 0; i < kCalls; ++i) client->call(0, makeRequest(64, 64), first);
    std::vector<char> in(kCalls * kFrame);
    for (size_t got = 0; got < in.size();) {
        ssize_t r = recv(silent.accepted, in.data() + got, in.size() - got, 0);
        ASSERT_GT(r, 0);
        got += static_cast<size_t>(r);
    }
    // All 32 responses in one write, so the client reads them at once.
    std::vector<uint8_t> out(kCalls * kFrame, 0x5a);
    for (int i = 0; i < kCalls; ++i) {
        uint8_t* p = out.data() + i * kFrame;
        p[0] = p[1] = p[2] = 0;
        p[3] = 64;
    }
    ASSERT_EQ(send(silent.accepted, out.data(), out.size(), 0), static_cast<ssize_t>(out.size()));
    ASSERT_TRUE(completions.waitFor(kCalls));
    EXPECT_EQ(atServerBefore17th.load(), static_cast<ssize_t>(kCalls / 2 * kFrame))
        << "the requests started by the first half of the completions waited for the second half";
    client->stop();  // fails the second round's calls
    ASSERT_TRUE(completions.waitFor(2 * kCalls));
}

TEST(TcpTransport, RejectsBadCallArgumentsAtOnce) {
    auto server = startServer(kLoopback, 1, TcpOptions{});
    ASSERT_NE(server, nullptr);
    auto client = startClient(server->addresses(), TcpOptions{});
    ASSERT_NE(client, nullptr);
    CallResult r = callAndWait(*client, 1, makeRequest(8, 8));
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.error.find("no server 1"), std::string::npos) << r.error;
    r = callAndWait(*client, 0, std::vector<uint8_t>(3, 0));
    EXPECT_FALSE(r.ok);
    r = callAndWait(*client, 0, makeRequest(TcpOptions{}.maxMessageLength + 1, 8));
    EXPECT_FALSE(r.ok);
    // The connection is still usable.
    EXPECT_TRUE(callAndWait(*client, 0, makeRequest(8, 8)).ok);
}

// callSync: on the calling thread, over a connection of its own (the unloaded round trip
// homa-perf divides by); the load's async calls go on beside it. Bad arguments send
// nothing; a server that hangs up fails the call with a reason, and the next call
// connects again.
TEST(TcpTransport, SynchronousCallsOnTheCallingThread) {
    auto server = startServer(kLoopback, 1, TcpOptions{});
    ASSERT_NE(server, nullptr);
    auto client = startClient(server->addresses(), TcpOptions{});
    ASSERT_NE(client, nullptr);
    EXPECT_FALSE(client->hasSyncCalls());  // the load still goes through the epoll threads
    CallResult r;
    for (uint32_t length : {1u, 100u, 70'000u, 1'000'000u}) {
        ASSERT_TRUE(client->callSync(0, makeRequest(100, length), &r));
        EXPECT_TRUE(r.ok) << r.error;
        EXPECT_EQ(r.responseLength, length);
    }
    EXPECT_TRUE(callAndWait(*client, 0, makeRequest(8, 8)).ok);
    EXPECT_FALSE(client->callSync(1, makeRequest(8, 8), &r));
    EXPECT_FALSE(client->callSync(0, std::vector<uint8_t>(3, 0), &r));
    EXPECT_FALSE(client->callSync(0, makeRequest(TcpOptions{}.maxMessageLength + 1, 8), &r));
    ASSERT_TRUE(client->callSync(0, makeRequest(8, 8), &r));
    EXPECT_TRUE(r.ok) << r.error;

    SilentServer silent;  // the load's connection accepted, never answered
    ASSERT_TRUE(silent.ready());
    ClientTransport* lonely = silent.client.get();
    std::thread hangUp([&] {
        int syncConnection = accept(silent.listener, nullptr, nullptr);
        char buf[16];
        recv(syncConnection, buf, sizeof(buf), 0);
        close(syncConnection);
    });
    ASSERT_TRUE(lonely->callSync(0, makeRequest(8, 8), &r));
    hangUp.join();
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.error.find("recv: Connection reset"), std::string::npos) << r.error;
    lonely->stop();
    EXPECT_FALSE(lonely->callSync(0, makeRequest(8, 8), &r));  // stopped
}

// stop() ends a callSync blocked waiting for a server that never answers at once, with
// "stopped", instead of leaving it to its 5 s receive timeout.
TEST(TcpTransport, StopEndsASynchronousCallWaitingForItsResponse) {
    std::atomic<bool> accepted{false};
    SilentServer silent;
    ASSERT_TRUE(silent.ready());
    ClientTransport* client = silent.client.get();
    std::thread server([&] {
        int syncConnection = accept(silent.listener, nullptr, nullptr);
        char buf[16];
        recv(syncConnection, buf, sizeof(buf), 0);  // the request arrived: the call waits
        accepted = true;
        char rest[16];
        recv(syncConnection, rest, sizeof(rest), 0);  // until the client closes
        close(syncConnection);
    });
    CallResult r;
    std::thread caller([&] { client->callSync(0, makeRequest(8, 8), &r); });
    while (!accepted) std::this_thread::sleep_for(1ms);
    client->stop();
    caller.join();
    server.join();
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "stopped");
}

bool haveIpv6Loopback() {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) return false;
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_loopback;
    bool ok = bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
    close(fd);
    return ok;
}

TEST(TcpTransport, WorksOverIpv6) {
    if (!haveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback on this machine";
    auto bind = Address::parse("[::1]:0");
    ASSERT_TRUE(bind.has_value());
    auto server = startServer(*bind, 1, TcpOptions{});
    ASSERT_NE(server, nullptr);
    EXPECT_EQ(server->addresses()[0].toString().rfind("[::1]:", 0), 0u);
    auto client = startClient(server->addresses(), TcpOptions{});
    ASSERT_NE(client, nullptr);
    CallResult r = callAndWait(*client, 0, makeRequest(300, 5000));
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.responseLength, 5000u);
}

// Calls with tokens (the load generator's) and calls with callbacks of their own (the
// base-RTT probe's, tests') on one client: every result reaches the right one, once.
void tokensAndCallbacksMix(ClientTransport& client) {
    constexpr int kEach = 200;
    std::vector<std::atomic<int>> byToken(kEach), byCallback(kEach);
    std::atomic<int> wrong{0}, completions{0};
    client.onCompletion([&](uint64_t token, CallResult r) {
        if (token >= kEach || !r.ok || r.responseLength != 100 + token) ++wrong;
        else ++byToken[token];
        ++completions;
    });
    for (int i = 0; i < kEach; ++i) {
        client.issue(0, makeRequest(16, 100 + static_cast<uint32_t>(i)), static_cast<uint64_t>(i));
        client.call(0, makeRequest(16, 500 + static_cast<uint32_t>(i)), [&, i](CallResult r) {
            if (!r.ok || r.responseLength != 500u + static_cast<uint32_t>(i)) ++wrong;
            ++byCallback[i];
            ++completions;
        });
    }
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (completions.load() < 2 * kEach && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(20ms);  // (a second result for any call would show now)
    EXPECT_EQ(completions.load(), 2 * kEach);
    EXPECT_EQ(wrong.load(), 0);
    for (int i = 0; i < kEach; ++i) {
        EXPECT_EQ(byToken[i].load(), 1) << "token " << i;
        EXPECT_EQ(byCallback[i].load(), 1) << "callback " << i;
    }
}

TEST(TcpTransport, CallsWithTokensAndWithCallbacksMix) {
    auto server = startServer(kLoopback, 1, TcpOptions{});
    ASSERT_NE(server, nullptr);
    auto client = startClient(server->addresses(), TcpOptions{});
    ASSERT_NE(client, nullptr);
    tokensAndCallbacksMix(*client);
}

struct HomaPair {
    HomaPair() {
        std::string error;
        server = makeHomaServer(kLoopback, 1, 1, HomaTransportOptions{}, &error, nullptr);
        EXPECT_NE(server, nullptr) << error;
        if (server) client = makeHomaClient(server->addresses(), HomaTransportOptions{}, &error, nullptr);
        EXPECT_NE(client, nullptr) << error;
    }
    std::unique_ptr<ServerTransport> server;
    std::unique_ptr<ClientTransport> client;
};

TEST(HomaTransport, CallsWithTokensAndWithCallbacksMix) {
    HomaPair p;
    ASSERT_NE(p.client, nullptr);
    tokensAndCallbacksMix(*p.client);
}

// (It used to throw std::out_of_range from the caller's thread.)
TEST(HomaTransport, AnUnknownServerIsAClearError) {
    HomaPair p;
    ASSERT_NE(p.client, nullptr);
    CallResult r = callAndWait(*p.client, 1, makeRequest(8, 8));
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.error.find("no server 1 (have 1)"), std::string::npos) << r.error;
    // The same for a synchronous call (it threw std::out_of_range).
    CallResult s;
    EXPECT_TRUE(p.client->callSync(1, makeRequest(8, 8), &s));
    EXPECT_FALSE(s.ok);
    EXPECT_NE(s.error.find("no server 1 (have 1)"), std::string::npos) << s.error;
    EXPECT_TRUE(callAndWait(*p.client, 0, makeRequest(8, 8)).ok);
}

}  // namespace
}  // namespace homa::perf
