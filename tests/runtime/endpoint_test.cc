// The public API over real UDP sockets on loopback, in one process.
#include "homa/endpoint.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "common/descriptor_limit.h"
#include "common/loopback.h"

// rename(2), wrapped (the test binary is linked with --wrap=rename): a test may hold it,
// to keep a trace dump, and the metrics publisher's thread that makes it, busy.
static std::atomic<bool> gRenameHeld{false}, gRenameWaiting{false};
extern "C" int __real_rename(const char* from, const char* to);
extern "C" int __wrap_rename(const char* from, const char* to) {
    if (gRenameHeld.load()) {
        gRenameWaiting = true;
        while (gRenameHeld.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return __real_rename(from, to);
}

namespace homa {
namespace {

using namespace std::chrono_literals;

using test::BlackHole;
using test::bytesOf;
using test::echoServer;
using test::loopback;

// Loopback without adaptive polling, for tests that count the loop's socket reads.
EndpointOptions noSpin() {
    EndpointOptions o = loopback();
    o.adaptivePollUs = 0;
    return o;
}

// A plain UDP socket sending raw datagrams to an endpoint's port on loopback.
class RawSender {
  public:
    explicit RawSender(uint16_t port) : fd_(socket(AF_INET, SOCK_DGRAM, 0)) {
        to_.sin_family = AF_INET;
        to_.sin_addr.s_addr = htonl(0x7f000001);
        to_.sin_port = htons(port);
    }
    ~RawSender() { close(fd_); }
    void send(std::span<const uint8_t> bytes = {}) {
        sendto(fd_, bytes.data(), bytes.size(), 0, reinterpret_cast<const sockaddr*>(&to_), sizeof(to_));
    }

  private:
    int fd_;
    sockaddr_in to_{};
};

TEST(Endpoint, SynchronousEchoOfManySizes) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    for (size_t size : {1, 64, 1400, 1500, 10'000, 100'000, 1'000'000}) {
        auto req = bytesOf(size, static_cast<uint8_t>(size));
        Response r = client->call(server->address(), req);
        ASSERT_TRUE(r.status.isOk()) << size << ": " << r.status.toString();
        ASSERT_EQ(r.message.size(), size);
        EXPECT_TRUE(std::equal(req.begin(), req.end(), r.message.data())) << size;
    }
}

// The endpoint's threads carry names that tell them apart in top -H, perf and /proc.
TEST(Endpoint, ThreadsAreNamedAfterTheirRoleAndPort) {
    auto server = echoServer(2);
    const std::string port = std::to_string(server->address().port);
    std::multiset<std::string> names;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream comm(task.path() / "comm");
        std::string name;
        std::getline(comm, name);
        names.insert(name);
    }
    EXPECT_EQ(names.count("homa-poll:" + port), 1u);
    EXPECT_EQ(names.count("homa-work:" + port), 2u);
}

// A callback may make a synchronous call on any endpoint, its own included: the thread
// then runs that endpoint's loop, nested, until the call ends. Each callback must still
// run exactly once and each nested call succeed. (On another endpoint, the two loops once
// shared one list of ready callbacks and the inner one ran the outer one's again; on its
// own endpoint, the call waited for a loop nobody could run, and timed out.)
TEST(Endpoint, ACallbackMayCallSynchronouslyOnAnotherEndpointOrItsOwn) {
    for (bool own : {false, true}) {
        SCOPED_TRACE(own ? "its own endpoint" : "another endpoint");
        auto server = echoServer();
        auto outer = Endpoint::open(loopback());
        auto other = own ? nullptr : Endpoint::open(loopback());
        Endpoint* inner = own ? outer.get() : other.get();
        ASSERT_TRUE(outer && inner);
        constexpr int kCalls = 4;
        std::atomic<int> runs{0}, innerOk{0};
        std::promise<void> all;
        auto req = bytesOf(64, 1);
        for (int i = 0; i < kCalls; ++i) {
            outer->callAsync(server->address(), req, [&](Response r) {
                EXPECT_TRUE(r.status.isOk()) << r.status.toString();
                Response ir = inner->call(server->address(), req);
                EXPECT_TRUE(ir.status.isOk()) << ir.status.toString();
                if (ir.status.isOk()) ++innerOk;
                if (++runs == kCalls) all.set_value();
            });
        }
        ASSERT_EQ(all.get_future().wait_for(10s), std::future_status::ready);
        std::this_thread::sleep_for(50ms);  // a repeated callback would show by now
        EXPECT_EQ(runs.load(), kCalls);
        EXPECT_EQ(innerOk.load(), kCalls);
    }
}

// Each small message is one datagram: the thread running the loop should read the socket
// once for it, not once more to find it empty (which cost a system call per RPC). Checked
// for both ways of waiting: synchronous calls, and a chain of callbacks run by the
// endpoint's poll thread (each completion starts the next call).
//
// Adaptive polling is off: its spins read the socket without blocking until the answer
// is there, which on a fast machine (a round trip within twice the budget) adds reads
// by design (AdaptivePollingSpinsAfterShortWaitsOnlyWhenOn); what is checked here is the
// loop's own reading.
TEST(Endpoint, SmallRpcsReadTheSocketOncePerPacket) {
    auto server = echoServer(1, noSpin());
    auto client = Endpoint::open(noSpin());
    ASSERT_TRUE(client);
    auto req = bytesOf(64, 3);
    ASSERT_TRUE(client->call(server->address(), req).status.isOk());
    constexpr int kRpcs = 300;
    auto readsPerRpc = [&](auto&& run) {
        MetricsSnapshot s0 = server->metrics(), c0 = client->metrics();
        run();
        MetricsSnapshot ds = server->metrics() - s0, dc = client->metrics() - c0;
        return std::pair{static_cast<double>(ds.get("udp_receive_calls")) / kRpcs,
                         static_cast<double>(dc.get("udp_receive_calls")) / kRpcs};
    };
    auto [syncServer, syncClient] = readsPerRpc([&] {
        for (int i = 0; i < kRpcs; ++i) ASSERT_TRUE(client->call(server->address(), req).status.isOk()) << i;
    });
    auto [chainServer, chainClient] = readsPerRpc([&] {
        std::promise<void> finished;
        std::atomic<int> left{kRpcs}, failures{0};
        std::function<void(Response)> next = [&](Response r) {
            if (!r.status.isOk()) ++failures;
            if (--left == 0) {
                finished.set_value();
                return;
            }
            client->callAsync(server->address(), req, next);
        };
        client->callAsync(server->address(), req, next);
        ASSERT_EQ(finished.get_future().wait_for(30s), std::future_status::ready);
        EXPECT_EQ(failures.load(), 0);
    });
    std::printf("socket reads per RPC: sync server %.3f client %.3f; callbacks server %.3f client %.3f\n",
                syncServer, syncClient, chainServer, chainClient);
    EXPECT_GE(syncServer, 0.99);
    EXPECT_LE(syncServer, 1.3);
    EXPECT_LE(syncClient, 1.3);
    EXPECT_LE(chainServer, 1.3);
    EXPECT_LE(chainClient, 1.3);
}

// 200,000 calls made at once to one server all complete. Only maxClientRpcsPerServer of
// them are under way at a time; the others wait in the client, sending nothing. Without
// that bound they all went out together, overflowing the server's socket buffer and
// queueing there more work than it finishes within the resend interval: some 30,000 of
// them timed out.
TEST(Endpoint, ABurstOf200000CallsAllComplete) {
    constexpr int kCalls = 200'000;
    // (Declared before the endpoints, which may still run callbacks as they close.)
    std::promise<void> finished;
    std::atomic<int> left{kCalls}, failures{0};
    std::mutex mu;
    std::string firstError;
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    auto req = bytesOf(64, 9);
    auto done = [&](Response r) {
        if (!r.status.isOk()) {
            if (failures++ == 0) {
                std::lock_guard lk(mu);
                firstError = r.status.toString();
            }
        }
        if (--left == 0) finished.set_value();
    };
    {
        Endpoint::CallBatch batch(*client);  // (sent together, as fast as the socket takes them)
        for (int i = 0; i < kCalls; ++i) client->callAsync(server->address(), req, done);
    }
    ASSERT_EQ(finished.get_future().wait_for(120s), std::future_status::ready) << left.load() << " calls left";
    std::lock_guard lk(mu);
    EXPECT_EQ(failures.load(), 0) << firstError;
    const MetricsSnapshot m = client->metrics();
    EXPECT_GT(m.get("client_rpcs_waited"), 0u);
    EXPECT_EQ(m.get("client_rpcs_waiting"), 0u);
    EXPECT_EQ(m.get("client_rpcs_timed_out"), 0u);
}

// Many callback chains at once, each completion starting the next call: the acks of a
// batch of responses ride on the requests the callbacks start (one per DATA packet),
// where they used to go out in ACK packets of five, before the callbacks ran.
TEST(Endpoint, ClosedLoopCallsCarryTheirAcksOnTheNextRequests) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    auto req = bytesOf(64, 5);
    ASSERT_TRUE(client->call(server->address(), req).status.isOk());
    constexpr int kChains = 32, kPerChain = 200, kRpcs = kChains * kPerChain;
    MetricsSnapshot s0 = server->metrics(), c0 = client->metrics();
    std::promise<void> finished;
    std::atomic<int> left{kRpcs}, failures{0};
    std::function<void(Response)> next = [&](Response r) {
        if (!r.status.isOk()) ++failures;
        const int n = --left;
        if (n == 0) finished.set_value();
        if (n >= kChains) client->callAsync(server->address(), req, next);
    };
    for (int i = 0; i < kChains; ++i) client->callAsync(server->address(), req, next);
    ASSERT_EQ(finished.get_future().wait_for(60s), std::future_status::ready);
    EXPECT_EQ(failures.load(), 0);
    // The last acks reach the server at the end of a batch or after a tick: then it holds
    // no RPC. (The warm-up call's ack may be counted here too.)
    for (int i = 0; i < 200 && !server->rpcs().empty(); ++i) std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(server->rpcs().empty());
    MetricsSnapshot ds = server->metrics() - s0, dc = client->metrics() - c0;
    std::printf("%d RPCs: %llu acked, %llu acks on DATA, %llu ACK packets, %llu NEED_ACKs\n", kRpcs,
                static_cast<unsigned long long>(ds.get("server_rpcs_acked")),
                static_cast<unsigned long long>(ds.get("acks_piggybacked")),
                static_cast<unsigned long long>(dc.get("ack_packets_sent")),
                static_cast<unsigned long long>(dc.get("packets_received_need_ack")));
    EXPECT_GE(ds.get("server_rpcs_acked"), static_cast<uint64_t>(kRpcs));
    EXPECT_GE(ds.get("acks_piggybacked"), static_cast<uint64_t>(kRpcs / 2));
    // Besides the answers to the server's NEED_ACKs (many when a sanitizer slows the
    // client past the server's two ticks), few ACK packets.
    EXPECT_LT(dc.get("ack_packets_sent"), dc.get("packets_received_need_ack") + kRpcs / 10);
}

// A worker sends the responses to a burst of requests together, once it has run out of
// queued requests; but with slow handlers a response must not wait for the handlers of
// the requests queued behind it (it used to: the answers to the requests a worker found
// queued left together once the last one was done). Without a poll thread nothing else
// flushes the worker's responses meanwhile.
// A server with one worker and no poll thread, serving `handler`.
std::unique_ptr<Endpoint> serverWithoutPollThread(Endpoint::Handler handler) {
    EndpointOptions so = loopback();
    so.pollThread = false;
    Status err;
    auto server = Endpoint::open(so, &err);
    EXPECT_TRUE(server) << err.toString();
    if (server) {
        EXPECT_TRUE(server->serve(std::move(handler)).isOk());
    }
    return server;
}

TEST(Endpoint, SlowHandlersDoNotHoldTheFirstResponseOfABurst) {
    auto server = serverWithoutPollThread([](ServerRequest r) {
        std::this_thread::sleep_for(3ms);
        r.respond(r.message().bytes());
    });
    ASSERT_TRUE(server);
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    constexpr int kBurst = 5;
    std::mutex mu;
    std::vector<std::chrono::steady_clock::time_point> answered;
    std::promise<void> all;
    for (int i = 0; i < kBurst; ++i)
        client->callAsync(server->address(), bytesOf(64, static_cast<uint8_t>(i)), [&](Response r) {
            EXPECT_TRUE(r.status.isOk()) << r.status.toString();
            std::lock_guard lk(mu);
            answered.push_back(std::chrono::steady_clock::now());
            if (answered.size() == kBurst) all.set_value();
        });
    ASSERT_EQ(all.get_future().wait_for(30s), std::future_status::ready);
    // One answer per 3 ms handler: every gap about 3 ms.
    int spaced = 0;
    for (size_t i = 1; i < answered.size(); ++i) {
        const auto gap = std::chrono::duration_cast<std::chrono::microseconds>(answered[i] - answered[i - 1]);
        std::printf("gap %zu: %lld us\n", i, static_cast<long long>(gap.count()));
        spaced += gap >= 1500us;
    }
    EXPECT_GE(spaced, kBurst - 2);
}

// A fast request queued in front of a slow one, without a poll thread: the fast one's
// response was held for the slow handler's whole run (the hold was checked only when a
// handler ended), so its call timed out (the protocol's 100 ms) although it was answered.
TEST(Endpoint, AResponseIsNotHeldOverTheNextSlowHandler) {
    // The first byte says what the handler does: 0 answers at once, 1 after 400 ms, 2
    // after 50 ms.
    auto server = serverWithoutPollThread([](ServerRequest r) {
        const uint8_t kind = r.message().bytes()[0];
        if (kind == 1) std::this_thread::sleep_for(400ms);
        if (kind == 2) std::this_thread::sleep_for(50ms);
        r.respond(r.message().bytes());
    });
    ASSERT_TRUE(server);
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    std::promise<void> blocked, slow;
    client->callAsync(server->address(), bytesOf(64, 2), [&](Response) { blocked.set_value(); });
    // While the worker runs that handler, nobody reads the server's socket: the fast and
    // the slow request wait there, and the worker reads them together when it is back,
    // the fast one first.
    std::this_thread::sleep_for(10ms);
    std::promise<std::pair<Status, std::chrono::steady_clock::duration>> fast;
    const auto start = std::chrono::steady_clock::now();
    client->callAsync(server->address(), bytesOf(64, 0), [&](Response r) {
        fast.set_value({r.status, std::chrono::steady_clock::now() - start});
    });
    client->callAsync(server->address(), bytesOf(64, 1), [&](Response) { slow.set_value(); });
    auto [status, took] = fast.get_future().get();
    EXPECT_TRUE(status.isOk()) << status.toString();
    EXPECT_LT(took, 300ms) << "the response waited for the slow handler";
    blocked.get_future().wait();
    slow.get_future().wait();  // (answered, or timed out: either way it ends)
}

// Buffers that callbacks and handlers release go back at the end of their batch: with
// pools that hold only two of the largest messages, a chain of large calls (each
// callback dropping its response and starting the next) keeps going on both sides, and
// both pools are empty at the end.
TEST(Endpoint, BuffersDroppedInCallbacksAndHandlersGoBackToThePool) {
    EndpointOptions so = loopback();
    so.protocol.maxBufferBytes = 2'500'000;
    Status err;
    auto server = Endpoint::open(so, &err);
    ASSERT_TRUE(server) << err.toString();
    ASSERT_TRUE(server->serve([](ServerRequest r) { r.respond(r.message().bytes()); }).isOk());
    EndpointOptions co = loopback();
    co.protocol.maxBufferBytes = 2'500'000;
    auto client = Endpoint::open(co, &err);
    ASSERT_TRUE(client) << err.toString();
    auto req = bytesOf(900'000, 9);
    constexpr int kCalls = 12;
    std::atomic<int> left{kCalls}, failures{0};
    std::promise<void> finished;
    std::function<void(Response)> next = [&](Response r) {
        if (!r.status.isOk() || r.message.size() != req.size()) ++failures;
        r.message.reset();
        if (--left == 0) {
            finished.set_value();
            return;
        }
        client->callAsync(server->address(), req, next, {.timeout = 10s});
    };
    client->callAsync(server->address(), req, next, {.timeout = 10s});
    const bool done = finished.get_future().wait_for(60s) == std::future_status::ready;
    if (!done) client->shutdown();  // (the chain's callbacks use this scope's variables)
    ASSERT_TRUE(done) << left.load() << " calls left";
    EXPECT_EQ(failures.load(), 0);
    for (int i = 0; i < 100 && (client->metrics().get("buffer_bytes_in_use") != 0 ||
                                server->metrics().get("buffer_bytes_in_use") != 0);
         ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_EQ(client->metrics().get("buffer_bytes_in_use"), 0u);
    EXPECT_EQ(server->metrics().get("buffer_bytes_in_use"), 0u);
}

// A handler or a callback of one endpoint that starts a call on another (a middle tier):
// that call's packets leave at once. (They used to wait in the other endpoint's queue
// for its next loop pass or tick, up to a millisecond, because the first endpoint's
// handler or callback batch deferred every flush made on its thread.)
TEST(Endpoint, CallsOnAnotherEndpointFromHandlersAndCallbacksLeaveAtOnce) {
    auto backend = echoServer();
    auto tier = Endpoint::open(loopback());  // the middle tier's client endpoint
    ASSERT_TRUE(tier);
    std::atomic<int> heldInHandler{0}, heldInCallback{0};
    auto sendsOf = [](Endpoint& e) { return e.metrics().get("udp_send_calls"); };
    Status err;
    auto front = Endpoint::open(loopback(), &err);
    ASSERT_TRUE(front) << err.toString();
    ASSERT_TRUE(front->serve([&](ServerRequest r) {
                         const uint64_t before = sendsOf(*tier);
                         auto req = std::make_shared<ServerRequest>(std::move(r));
                         tier->callAsync(backend->address(), req->message().bytes(),
                                         [req](Response resp) { req->respond(resp.message.bytes()); });
                         if (sendsOf(*tier) == before) ++heldInHandler;
                     }).isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    for (int i = 0; i < 20; ++i) {
        Response r = client->call(front->address(), bytesOf(64, static_cast<uint8_t>(i)), {.timeout = 10s});
        ASSERT_TRUE(r.status.isOk()) << r.status.toString();
    }
    EXPECT_EQ(heldInHandler.load(), 0) << "calls started by a handler waited in the queue";
    // The same from callbacks run by the client endpoint's loop.
    std::promise<void> done;
    std::atomic<int> left{20};
    std::function<void(Response)> next = [&](Response) {
        const uint64_t before = sendsOf(*tier);
        tier->callAsync(backend->address(), bytesOf(64, 1), [&](Response) {
            if (--left == 0) done.set_value();
        });
        if (sendsOf(*tier) == before) ++heldInCallback;
    };
    for (int i = 0; i < 20; ++i) client->callAsync(backend->address(), bytesOf(64, 2), next);
    ASSERT_EQ(done.get_future().wait_for(30s), std::future_status::ready);
    EXPECT_EQ(heldInCallback.load(), 0) << "calls started by a callback waited in the queue";
}

// Requests may outlive their endpoint (a request holds the endpoint through its message):
// reading, answering (Shutdown) and dropping them afterwards is safe, answered or not.
TEST(Endpoint, RequestsMayOutliveTheirEndpoint) {
    auto server = Endpoint::open(loopback());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    CallOptions o;
    o.timeout = 300ms;
    auto f1 = client->callFuture(server->address(), bytesOf(10, 1), o);
    auto f2 = client->callFuture(server->address(), bytesOf(20, 2), o);
    std::optional<ServerRequest> r1 = server->receive(5s), r2 = server->receive(5s);
    ASSERT_TRUE(r1 && r2);
    server.reset();
    EXPECT_TRUE(r1->valid());
    EXPECT_EQ(r1->message().size() + r2->message().size(), 30u);
    EXPECT_EQ(r1->message().bytes()[0] + r2->message().bytes()[0], 3);
    EXPECT_EQ(r1->respond(bytesOf(5, 0)).code(), StatusCode::Shutdown);
    ServerRequest moved = std::move(*r2);
    EXPECT_FALSE(r2->valid());
    r2.reset();
    EXPECT_TRUE(moved.valid());
    moved = ServerRequest();  // dropped by assignment
    EXPECT_FALSE(moved.valid());
    r1.reset();  // unanswered, and the endpoint's last holder
    EXPECT_FALSE(f1.get().status.isOk());
    EXPECT_FALSE(f2.get().status.isOk());
}

// A response's message may outlive its endpoint too: its bytes stay readable, and
// releasing it afterwards frees the endpoint's last remains (no leak, no use after free).
TEST(Endpoint, ResponsesMayOutliveTheirEndpoint) {
    Message kept;
    {
        auto server = echoServer();
        auto client = Endpoint::open(loopback());
        ASSERT_TRUE(client);
        Response r = client->call(server->address(), bytesOf(300, 7));
        ASSERT_TRUE(r.status.isOk()) << r.status.toString();
        Response other = client->call(server->address(), bytesOf(10, 8));
        ASSERT_TRUE(other.status.isOk());
        kept = std::move(r.message);
    }  // (`other` was released before its endpoint went)
    const std::vector<uint8_t> sent = bytesOf(300, 7);
    ASSERT_EQ(kept.size(), sent.size());
    EXPECT_TRUE(std::equal(sent.begin(), sent.end(), kept.data()));
    kept.reset();
    EXPECT_TRUE(kept.empty());
}

// A handler may destroy its own endpoint (the last owner) while it holds the request: the
// endpoint's core lives on until its worker thread is done with it. (It was freed while
// the request's buffer went back, and the worker then locked freed memory.)
// Held by a callback or handler: its future becomes ready when the last copy goes, that is
// when the endpoint's thread has let go of the function.
struct GoneSignal {
    std::promise<void> gone;
    ~GoneSignal() { gone.set_value(); }
};

TEST(Endpoint, AHandlerMayDestroyItsOwnEndpoint) {
    auto guard = std::make_shared<GoneSignal>();
    std::future<void> workerDone = guard->gone.get_future();
    std::promise<void> destroyed;
    std::unique_ptr<Endpoint> server = Endpoint::open(loopback());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    const Address address = server->address();
    ASSERT_TRUE(server->serve([&, guard](ServerRequest request) {
        EXPECT_EQ(request.message().size(), 16u);
        server.reset();  // from the endpoint's own worker thread
        EXPECT_EQ(request.message().size(), 16u);
        EXPECT_EQ(request.respond(bytesOf(4, 1)).code(), StatusCode::Shutdown);
        destroyed.set_value();
    }, 1).isOk());
    guard.reset();  // the worker's copy of the handler is now the only one
    CallOptions o;
    o.timeout = 300ms;
    Response r = client->call(address, bytesOf(16, 3), o);
    EXPECT_FALSE(r.status.isOk());
    ASSERT_EQ(destroyed.get_future().wait_for(10s), std::future_status::ready);
    // The worker ends by itself (its handler, and with it the guard, goes when it does).
    ASSERT_EQ(workerDone.wait_for(10s), std::future_status::ready);
}

// A callback may destroy its own endpoint too, even when its response holds no message
// (nothing else then kept the core alive while the poll thread went back into it).
TEST(Endpoint, ACallbackMayDestroyItsOwnEndpoint) {
    auto guard = std::make_shared<GoneSignal>();
    std::future<void> callbackGone = guard->gone.get_future();
    std::promise<StatusCode> seen;
    auto silent = Endpoint::open(loopback());  // never answers
    std::unique_ptr<Endpoint> client = Endpoint::open(loopback());
    ASSERT_TRUE(silent && client);
    CallOptions o;
    o.timeout = 50ms;
    client->callAsync(silent->address(), bytesOf(16, 1), [&, guard](Response r) {
        EXPECT_TRUE(r.message.empty());
        client.reset();  // from the endpoint's own poll thread
        seen.set_value(r.status.code());
    }, o);
    guard.reset();
    std::future<StatusCode> status = seen.get_future();
    ASSERT_EQ(status.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(status.get(), StatusCode::Timeout);
    ASSERT_EQ(callbackGone.wait_for(10s), std::future_status::ready);
}

// An application thread that destroys the endpoint from a callback it runs (in poll())
// leaves the endpoint's remains when poll() returns: its socket is closed then, and its
// port free again (not only when the thread ends).
TEST(Endpoint, AnEndpointDestroyedFromACallbackInPollIsGoneWhenPollReturns) {
    auto silent = Endpoint::open(loopback());  // never answers
    ASSERT_TRUE(silent);
    EndpointOptions o = loopback();
    o.pollThread = false;
    Status err;
    std::unique_ptr<Endpoint> client = Endpoint::open(o, &err);
    ASSERT_TRUE(client) << err.toString();
    const uint16_t port = client->address().port;
    bool ran = false;
    CallOptions c;
    c.timeout = 20ms;
    client->callAsync(silent->address(), bytesOf(16, 1), [&](Response r) {
        EXPECT_EQ(r.status.code(), StatusCode::Timeout);
        client.reset();
        ran = true;
    }, c);
    Endpoint* running = client.get();  // (the callback destroys it inside poll())
    for (int i = 0; i < 1000 && !ran; ++i) running->poll(10ms);
    ASSERT_TRUE(ran);
    EndpointOptions again = loopback();
    again.address.port = port;
    auto reopened = Endpoint::open(again, &err);
    EXPECT_TRUE(reopened) << "port " << port << " still bound: " << err.toString();
}

// A burst of asynchronous calls started inside a CallBatch leaves in one system call
// (or a few, if the endpoint's loop happens to flush meanwhile) instead of one per call.
TEST(Endpoint, CallBatchSendsABurstOfCallsTogether) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    ASSERT_TRUE(client->call(server->address(), bytesOf(64, 1)).status.isOk());
    constexpr int kCalls = 20;
    std::atomic<int> ok{0};
    std::promise<void> done;
    std::atomic<int> left{kCalls};
    auto count = [&](Response r) {
        ok += r.status.isOk();
        if (--left == 0) done.set_value();
    };
    const uint64_t before = client->metrics().get("udp_send_calls");
    {
        Endpoint::CallBatch batch(*client);
        for (int i = 0; i < kCalls; ++i) client->callAsync(server->address(), bytesOf(64, static_cast<uint8_t>(i)), count);
    }
    const uint64_t sends = client->metrics().get("udp_send_calls") - before;
    ASSERT_EQ(done.get_future().wait_for(30s), std::future_status::ready);
    EXPECT_EQ(ok.load(), kCalls);
    // (The poll thread's tick may flush part of the burst early on a loaded machine, as
    // under ThreadSanitizer with other tests running: a few more sends, not one per call.)
    EXPECT_GE(sends, 1u);
    EXPECT_LE(sends, 10u) << "one sendmmsg per call instead of one for the burst";
}

// A closed loop: `inFlight` calls, of which the server first answers `answered` in one
// burst (one GSO datagram, so the client reads them in one receive); each callback starts
// another call. Returns, for each callback of the burst in the order they ran, how many
// sendmmsg calls the client had made before it (and in `acksSeen`, how many ACK packets);
// empty if the burst did not reach the client in one receive (then the caller tries again).
std::vector<uint64_t> sendsSeenByCallbacksOfABurst(int inFlight, int answered, std::vector<uint64_t>* acksSeen = nullptr) {
    // (Declared before the endpoints, whose shutdown may still run callbacks.)
    std::mutex mu;
    std::vector<uint64_t> sends, receives, acks;
    std::atomic<int> secondRound{0};
    std::promise<void> burstDone;
    auto server = Endpoint::open(loopback());
    auto client = Endpoint::open(loopback());
    EXPECT_TRUE(server && client);
    if (!server || !client) return {};
    auto next = [&](Response) { ++secondRound; };
    auto first = [&](Response r) {
        EXPECT_TRUE(r.status.isOk()) << r.status.toString();
        MetricsSnapshot m = client->metrics();
        client->callAsync(server->address(), bytesOf(64, 2), next);
        std::lock_guard lk(mu);
        sends.push_back(m.get("udp_send_calls"));
        receives.push_back(m.get("udp_receive_calls"));
        acks.push_back(m.get("ack_packets_sent"));
        if (static_cast<int>(sends.size()) == answered) burstDone.set_value();
    };
    {
        Endpoint::CallBatch batch(*client);
        for (int i = 0; i < inFlight; ++i) client->callAsync(server->address(), bytesOf(64, 1), first);
    }
    std::deque<ServerRequest> held;
    auto take = [&](int n) {
        for (int i = 0; i < n; ++i) {
            std::optional<ServerRequest> r = server->receive(5s);
            EXPECT_TRUE(r) << "request " << i << " of " << n;
            if (r) held.push_back(std::move(*r));
        }
    };
    auto answer = [&](size_t n) {
        Endpoint::CallBatch batch(*server);
        for (size_t i = 0; i < n && !held.empty(); ++i, held.pop_front())
            EXPECT_TRUE(held.front().respond(bytesOf(64, 3)).isOk());
    };
    take(inFlight);
    answer(static_cast<size_t>(answered));
    EXPECT_EQ(burstDone.get_future().wait_for(10s), std::future_status::ready);
    take(answered);  // the calls the burst's callbacks started
    answer(held.size());
    take(inFlight - answered);  // the calls the other callbacks started
    answer(held.size());
    for (int i = 0; i < 1000 && secondRound < inFlight; ++i) std::this_thread::sleep_for(5ms);
    EXPECT_EQ(secondRound.load(), inFlight);
    std::lock_guard lk(mu);
    if (static_cast<int>(sends.size()) < answered) return {};
    sends.resize(static_cast<size_t>(answered));
    receives.resize(static_cast<size_t>(answered));
    acks.resize(static_cast<size_t>(answered));
    if (acksSeen) *acksSeen = acks;
    if (std::set<uint64_t>(receives.begin(), receives.end()).size() != 1) return {};
    return sends;
}

// When most of a client's calls finish together, the calls their callbacks start leave
// in two halves, so that the server works on the first half while the client runs the
// callbacks of the second (the pipelining that doubles a closed loop's rate on two
// cores); when only a few of its calls finish at once, they leave together.
TEST(Endpoint, CallsStartedByABurstOfCallbacksLeaveInTwoHalves) {
    constexpr int kCalls = 32;
    std::vector<uint64_t> sends, acks;
    // (Up to ten attempts: on a busy machine the server's answers may come in more than
    // one receive, when each attempt says nothing; five once all did.)
    for (int attempt = 0; attempt < 10 && sends.empty(); ++attempt)
        sends = sendsSeenByCallbacksOfABurst(kCalls, kCalls, &acks);
    ASSERT_EQ(sends.size(), size_t{kCalls}) << "the responses never reached the client in one receive";
    for (int i = 0; i < kCalls; ++i)
        EXPECT_EQ(sends[i], sends[0] + (i < kCalls / 2 ? 0 : 1)) << "callback " << i;
    // The acks of the burst's responses ride on the requests of both halves: the first
    // half's send carries no ACK packets for the rest.
    EXPECT_EQ(acks.back(), acks.front()) << "the first half's flush sent the second half's acks alone";
}

TEST(Endpoint, CallsStartedByAFewOfManyCallbacksLeaveTogether) {
    // Half of 64 calls finish together: their callbacks' calls leave in one batch.
    std::vector<uint64_t> sends;
    for (int attempt = 0; attempt < 5 && sends.empty(); ++attempt) sends = sendsSeenByCallbacksOfABurst(64, 32);
    ASSERT_EQ(sends.size(), 32u) << "the responses never reached the client in one receive";
    for (size_t i = 0; i < sends.size(); ++i) EXPECT_EQ(sends[i], sends[0]) << "callback " << i;
}

// A response that arrives while callbacks run is read at once after them, without first
// waiting for the socket to say it is readable (the read before the callbacks had emptied
// it; waiting then costs a system call that only says what the read would have found).
TEST(Endpoint, WhatArrivesWhileCallbacksRunIsReadWithoutAWait) {
    std::promise<void> inCallback, secondSent, secondDone;
    std::atomic<uint64_t> waitsAfterFirst{0}, waitsAtSecond{0};
    auto server = Endpoint::open(loopback());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    auto first = [&](Response r) {
        EXPECT_TRUE(r.status.isOk()) << r.status.toString();
        inCallback.set_value();
        // The second response is in the client's socket before this callback returns.
        EXPECT_EQ(secondSent.get_future().wait_for(30s), std::future_status::ready);
        waitsAfterFirst = client->metrics().get("udp_wait_calls");
    };
    auto second = [&](Response r) {
        EXPECT_TRUE(r.status.isOk()) << r.status.toString();
        waitsAtSecond = client->metrics().get("udp_wait_calls");
        secondDone.set_value();
    };
    client->callAsync(server->address(), bytesOf(64, 1), first);
    client->callAsync(server->address(), bytesOf(64, 2), second);
    std::optional<ServerRequest> r1 = server->receive(5s), r2 = server->receive(5s);
    ASSERT_TRUE(r1 && r2);
    if (r1->message().bytes()[0] != 1) std::swap(r1, r2);
    ASSERT_TRUE(r1->respond(bytesOf(8, 1)).isOk());
    ASSERT_EQ(inCallback.get_future().wait_for(30s), std::future_status::ready);
    // respond() from outside the loop sends before it returns, and loopback delivers
    // within the send.
    ASSERT_TRUE(r2->respond(bytesOf(8, 2)).isOk());
    secondSent.set_value();
    ASSERT_EQ(secondDone.get_future().wait_for(30s), std::future_status::ready);
    EXPECT_EQ(waitsAtSecond.load(), waitsAfterFirst.load()) << "the loop waited for a socket it could have read";
}

// A thread waiting for its own synchronous call, or for a request, with nothing timed to
// wait for, waits inside the socket's receive: one system call both waits and reads (a
// ppoll and then a read cost one more per packet, as much as the RPC's own send).
// (Adaptive polling off, as in SmallRpcsReadTheSocketOncePerPacket.)
TEST(Endpoint, SynchronousWaitersBlockInTheSocketItself) {
    auto server = echoServer(1, noSpin());
    auto client = Endpoint::open(noSpin());
    ASSERT_TRUE(client);
    auto req = bytesOf(64, 5);
    ASSERT_TRUE(client->call(server->address(), req).status.isOk());
    constexpr int kRpcs = 200;
    MetricsSnapshot s0 = server->metrics(), c0 = client->metrics();
    for (int i = 0; i < kRpcs; ++i) ASSERT_TRUE(client->call(server->address(), req).status.isOk()) << i;
    MetricsSnapshot ds = server->metrics() - s0, dc = client->metrics() - c0;
    for (auto* d : {&ds, &dc}) {
        const char* who = d == &ds ? "server" : "client";
        std::printf("%s: blocking receives %lu, socket waits %lu (poll thread %lu), receive calls %lu for %d RPCs\n",
                    who, static_cast<unsigned long>(d->get("blocking_receives")),
                    static_cast<unsigned long>(d->get("socket_waits")),
                    static_cast<unsigned long>(d->get("poll_thread_socket_waits")),
                    static_cast<unsigned long>(d->get("udp_receive_calls")), kRpcs);
        // (Bounds loose enough for sanitizer builds, where the poll thread takes the
        // loop more often while a slow worker runs its handler.)
        EXPECT_GE(d->get("blocking_receives"), kRpcs / 2) << who;
        EXPECT_LE(d->get("socket_waits"), kRpcs / 20) << who << ": application threads waited in ppoll";
        EXPECT_LE(d->get("udp_receive_calls"), kRpcs * 13 / 10) << who;
    }
}

// A server whose worker runs handlers back to back (its queue never empty) reads the
// socket itself between them: its poll thread stands aside rather than read the socket
// and hand each batch of requests over (a thread switch and the loop's lock moving
// between CPUs, for every batch).
// While a worker runs the server's loop without pause (a closed loop of calls), it runs
// the engine's timers on its passes, and the poll thread leaves the ticks to it instead of
// taking the engine's lock once per tick to run them again (poll_thread_timer_runs; it
// ran them on nearly every tick before). It still runs them when the owner stops, as in
// CallBlockedInTheSocketStillTimesOut.
TEST(Endpoint, PollThreadLeavesTheTicksToABusyLoopOwner) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    auto req = bytesOf(64, 5);
    ASSERT_TRUE(client->call(server->address(), req).status.isOk());
    // Under a sanitizer the worker's passes are slow enough to miss many postponements
    // (157 wake-ups in 302 ticks, once under ThreadSanitizer beside other tests): there
    // only "not at every tick" holds.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    constexpr double kWakeupsPerTick = 1.0;
#else
    constexpr double kWakeupsPerTick = 0.25;
#endif
    // 300 ms of eight calls in flight; the server's counters over them, and the ticks.
    // Also how long this process's threads waited for a CPU meanwhile (a worker that
    // waits for a CPU cannot put the tick off: on a machine busy with other work, 189 to
    // 262 wake-ups in 300 ticks): then only "not at every tick" holds, as under a
    // sanitizer.
    auto runQueueWaitNs = [] {
        uint64_t total = 0;
        std::error_code ec;
        for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
            std::ifstream f(task.path() / "schedstat");
            uint64_t running = 0, waiting = 0;
            if (f >> running >> waiting) total += waiting;
        }
        return total;
    };
    double contendedFraction = 0;
    auto measure = [&](double* ticks) {
        const uint64_t wait0 = runQueueWaitNs();
        constexpr int kWindow = 8;
        std::atomic<bool> stop{false};
        std::atomic<int> inFlight{0}, failed{0};
        std::function<void(Response)> again = [&](Response r) {
            if (!r.status.isOk()) ++failed;
            if (stop) {
                --inFlight;
                return;
            }
            client->callAsync(server->address(), req, again);
        };
        const MetricsSnapshot s0 = server->metrics();
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < kWindow; ++i) {
            ++inFlight;
            client->callAsync(server->address(), req, again);
        }
        std::this_thread::sleep_for(300ms);
        stop = true;
        *ticks = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 1e-3;
        contendedFraction = static_cast<double>(runQueueWaitNs() - wait0) / (*ticks * 1e6);
        for (int i = 0; i < 5000 && inFlight > 0; ++i) std::this_thread::sleep_for(1ms);
        EXPECT_EQ(inFlight.load(), 0);
        EXPECT_EQ(failed.load(), 0);
        const MetricsSnapshot d = server->metrics() - s0;
        std::printf("server: %lu poll-thread timer runs and %lu wake-ups in %.0f ticks (%lu postponed), %lu requests; "
                    "threads waited for a CPU %.0f %% of the time\n",
                    static_cast<unsigned long>(d.get("poll_thread_timer_runs")),
                    static_cast<unsigned long>(d.get("poll_thread_wakeups")), *ticks,
                    static_cast<unsigned long>(d.get("tick_postponements")),
                    static_cast<unsigned long>(d.get("server_requests_received")), contendedFraction * 100);
        return d;
    };
    // A worker preempted for a tick or more rightly leaves that tick to the poll thread,
    // as on a machine busy with other work (261 wake-ups in 300 ticks, once, while a
    // compiler and a soak test shared this test's two cores): up to three measurements,
    // of which one must hold. Before the fix this guards, every one failed (a wake-up at
    // every tick).
    double ticks = 0;
    MetricsSnapshot d;
    // (On a contended machine, waits for a CPU over a quarter of the window, summed over
    // this process's threads (3 % on an idle machine, 80-140 % beside two busy loops), the bound is the
    // sanitizers' one.)
    auto bound = [&] { return contendedFraction > 0.25 ? 1.0 : kWakeupsPerTick; };
    // The timer runs: those of the ticks the worker, preempted, has not run for a whole
    // tick (the poll thread runs those, every one: on a contended machine, about half of
    // the ticks), so there too only "not at every tick" holds.
    auto runsBound = [&] { return contendedFraction > 0.25 ? 1.0 : 0.5; };
    for (int attempt = 0; attempt < 3; ++attempt) {
        d = measure(&ticks);
        if (static_cast<double>(d.get("poll_thread_wakeups")) < ticks * bound() &&
            static_cast<double>(d.get("poll_thread_timer_runs")) < ticks * runsBound())
            break;
    }
    // (Loose: see above.)
    EXPECT_LT(static_cast<double>(d.get("poll_thread_timer_runs")), ticks * runsBound());
    // Nor is the poll thread woken to find the ticks done: the worker keeps putting the
    // tick timer off (it went off at every tick, about 1,000 wake-ups a second, and cost
    // a server about 8 % of its small-RPC throughput).
    EXPECT_LT(static_cast<double>(d.get("poll_thread_wakeups")), ticks * bound());
    EXPECT_GT(d.get("tick_postponements"), 0u);
    EXPECT_EQ(d.get("poll_thread_late_takeovers"), 0u);
}

// A worker that takes a request from an idle server (its tick timer stopped) leaves the
// loop for its handler with an RPC in the engine: it starts the tick timer, at whose
// first tick the poll thread takes the loop (here to read a second request while the
// handler still runs). Without the timer the poll thread slept on until its safety net.
TEST(Endpoint, AWorkerLeavingTheLoopForAHandlerStartsTheTickForThePollThread) {
    Status err;
    auto server = Endpoint::open(loopback(), &err);
    ASSERT_TRUE(server) << err.toString();
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<int> handled{0};
    ASSERT_TRUE(server
                    ->serve(
                        [&, released](ServerRequest r) {
                            if (handled++ == 1) released.wait_for(10s);  // the second request
                            r.respond(r.message().bytes());
                        },
                        1)
                    .isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    auto req = bytesOf(64, 12);
    ASSERT_TRUE(client->call(server->address(), req).status.isOk());
    for (int w = 0; w < 300 && server->metrics().get("tick_timer_armed") != 0; ++w) std::this_thread::sleep_for(2ms);
    ASSERT_EQ(server->metrics().get("tick_timer_armed"), 0u) << "the server never went idle";
    const MetricsSnapshot s0 = server->metrics();
    std::future<Response> blocked = client->callFuture(server->address(), req);
    for (int w = 0; w < 2000 && handled < 2; ++w) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(handled.load(), 2);
    std::future<Response> queued = client->callFuture(server->address(), req);
    bool read = false;
    for (int w = 0; w < 500 && !read; ++w) {
        read = server->metrics().get("requests_queued") == 1;
        if (!read) std::this_thread::sleep_for(1ms);
    }
    const MetricsSnapshot d = server->metrics() - s0;
    release.set_value();
    EXPECT_TRUE(read) << "nobody read the request that came while the handler ran";
    EXPECT_EQ(d.get("poll_thread_late_takeovers"), 0u) << "the poll thread took the loop only at its safety net";
    ASSERT_EQ(blocked.wait_for(5s), std::future_status::ready);
    EXPECT_TRUE(blocked.get().status.isOk());
    ASSERT_EQ(queued.wait_for(5s), std::future_status::ready);
    EXPECT_TRUE(queued.get().status.isOk());
}

TEST(Endpoint, PollThreadLeavesTheLoopToABusyWorker) {
    Status err;
    auto server = Endpoint::open(loopback(), &err);
    ASSERT_TRUE(server) << err.toString();
    ASSERT_TRUE(server
                    ->serve(
                        [](ServerRequest r) {
                            // ~20 us of work: requests queue up behind it.
                            const auto until = std::chrono::steady_clock::now() + 20us;
                            while (std::chrono::steady_clock::now() < until) {
                            }
                            r.respond(r.message().bytes());
                        },
                        1)
                    .isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    auto req = bytesOf(64, 9);
    ASSERT_TRUE(client->call(server->address(), req).status.isOk());
    constexpr int kCalls = 4000, kWindow = 32;
    std::atomic<int> done{0}, failed{0};
    std::function<void(Response)> onDone;
    std::atomic<int> started{0};
    onDone = [&](Response r) {
        if (!r.status.isOk()) ++failed;
        ++done;
        if (started.fetch_add(1) < kCalls) client->callAsync(server->address(), req, onDone);
    };
    MetricsSnapshot s0 = server->metrics();
    for (int i = 0; i < kWindow; ++i) {
        ++started;
        client->callAsync(server->address(), req, onDone);
    }
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    // (`started` counts the first window too: kCalls calls in all.)
    while (done < kCalls && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(done.load(), kCalls);
    EXPECT_EQ(failed.load(), 0);
    MetricsSnapshot d = server->metrics() - s0;
    std::printf("server: poll thread socket waits %lu, stood aside %lu, worker blocking receives %lu for %d calls\n",
                static_cast<unsigned long>(d.get("poll_thread_socket_waits")),
                static_cast<unsigned long>(d.get("poll_thread_stood_aside")),
                static_cast<unsigned long>(d.get("blocking_receives")), kCalls);
    // The poll thread stood aside, or never had to: the worker held the loop throughout
    // (3 runs in 21 on this machine one morning: no socket wait, nothing to stand
    // aside from).
    EXPECT_TRUE(d.get("poll_thread_stood_aside") > 0 || d.get("poll_thread_socket_waits") == 0);
    // Without standing aside the poll thread waits on the socket for most batches (3,128-
    // 3,445 times for these 4,000 calls in a release build). Loose, since a worker
    // preempted for longer than the grace period rightly gives the loop to the poll thread
    // for a while: under ThreadSanitizer with other tests running, 227 such waits were seen.
    EXPECT_LE(d.get("poll_thread_socket_waits"), static_cast<uint64_t>(kCalls / 4))
        << "the poll thread read the socket while the worker was about to";
}

// But a handler that runs long does not hold up the rest of the endpoint's traffic: the
// poll thread runs the loop meanwhile (here, to finish a call the server itself made).
TEST(Endpoint, SlowHandlerLeavesTheLoopToThePollThread) {
    auto backend = echoServer();
    Status err;
    auto server = Endpoint::open(loopback(), &err);
    ASSERT_TRUE(server) << err.toString();
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::promise<bool> calledBack;
    std::future<bool> calledBackFuture = calledBack.get_future();
    Endpoint* self = server.get();
    const Address backendAddress = backend->address();
    auto req = bytesOf(64, 10);
    ASSERT_TRUE(self->serve(
                        [&, self](ServerRequest r) {
                            // While this handler runs, the endpoint calls the backend:
                            // only the poll thread can finish that call.
                            self->callAsync(backendAddress, req,
                                            [&](Response resp) { calledBack.set_value(resp.status.isOk()); });
                            released.wait_for(10s);
                            r.respond(r.message().bytes());
                        },
                        1)
                    .isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    std::promise<Response> answer;
    std::future<Response> answerFuture = answer.get_future();
    client->callAsync(server->address(), req, [&](Response r) { answer.set_value(std::move(r)); });
    ASSERT_EQ(calledBackFuture.wait_for(5s), std::future_status::ready)
        << "the server's own call did not finish while its worker was busy";
    EXPECT_TRUE(calledBackFuture.get());
    release.set_value();
    ASSERT_EQ(answerFuture.wait_for(5s), std::future_status::ready);
    EXPECT_TRUE(answerFuture.get().status.isOk());
}

// The same after the endpoint has gone idle (its tick timer stopped): the first request
// after a pause is waited for in the socket too, not in a timed ppoll.
TEST(Endpoint, IdleWaitersBlockInTheSocketToo) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    auto req = bytesOf(64, 6);
    ASSERT_TRUE(client->call(server->address(), req).status.isOk());
    RawSender stray(server->address().port);
    constexpr int kPauses = 10;
    MetricsSnapshot s0 = server->metrics();
    for (int i = 0; i < kPauses; ++i) {
        for (int w = 0; w < 300 && server->metrics().get("tick_timer_armed") != 0; ++w)
            std::this_thread::sleep_for(2ms);
        ASSERT_EQ(server->metrics().get("tick_timer_armed"), 0u) << "the server never went idle";
        // An empty datagram turns the idle loop once: it must wait in the socket again.
        const uint64_t iterations = server->metrics().get("loop_iterations");
        stray.send();
        for (int w = 0; w < 300 && server->metrics().get("loop_iterations") == iterations; ++w)
            std::this_thread::sleep_for(1ms);
        std::this_thread::sleep_for(1ms);
        ASSERT_TRUE(client->call(server->address(), req).status.isOk()) << i;
    }
    MetricsSnapshot ds = server->metrics() - s0;
    std::printf("server after %d pauses: blocking receives %lu, socket waits %lu\n", kPauses,
                static_cast<unsigned long>(ds.get("blocking_receives")),
                static_cast<unsigned long>(ds.get("socket_waits")));
    EXPECT_GE(ds.get("blocking_receives"), static_cast<uint64_t>(kPauses));
    EXPECT_LE(ds.get("socket_waits"), 2u);
}

// A thread blocked in the socket sees no timer: the poll thread runs the engine's ticks
// for it, and wakes it when they end its call (here the engine's own timeout, as the
// server never answers and the call has no timeout of its own).
TEST(Endpoint, CallBlockedInTheSocketStillTimesOut) {
    BlackHole hole;  // swallows requests, answers nothing
    ASSERT_NE(hole.address().port, 0);
    EndpointOptions o = loopback();
    o.protocol.timeoutTicks = 30;
    auto client = Endpoint::open(o);
    ASSERT_TRUE(client);
    Response r = client->call(hole.address(), bytesOf(100, 1));
    EXPECT_EQ(r.status.code(), StatusCode::Timeout) << r.status.toString();
    MetricsSnapshot m = client->metrics();
    EXPECT_GE(m.get("blocking_receives"), 1u);
    EXPECT_GE(m.get("poll_thread_timer_runs"), 5u) << "the ticks came from somewhere else";
}

// Deadlines set outside the loop reach whoever waits for the socket. Each test makes the
// tick 200 ms long and gives its call a 5 ms timeout: a deadline noticed only at the next
// tick (as each was before) ends the call after about 200 ms, one seen at once after
// about 5. The bound, 100 ms, tells the two apart with room for a slow machine.
constexpr auto kLongTick = 200ms;
constexpr auto kShortTimeout = 5ms;
constexpr auto kTellsApart = 100ms;

EndpointOptions longTick() {
    EndpointOptions o = loopback();
    o.protocol.tickNs = std::chrono::nanoseconds(kLongTick).count();
    return o;
}

// The poll thread, waiting in the socket of an idle endpoint, was not told of a call
// started from another thread: its deadline waited for the tick.
TEST(Endpoint, ACallAsyncDeadlineOnAnIdleEndpointIsNotHeldToTheTick) {
    BlackHole hole;
    ASSERT_NE(hole.address().port, 0);
    auto client = Endpoint::open(longTick());
    ASSERT_TRUE(client);
    std::this_thread::sleep_for(20ms);  // (the poll thread waits in the socket by now)
    std::promise<std::chrono::steady_clock::duration> took;
    const auto start = std::chrono::steady_clock::now();
    ASSERT_NE(client->callAsync(hole.address(), bytesOf(100, 1),
                                [&](Response r) {
                                    EXPECT_EQ(r.status.code(), StatusCode::Timeout);
                                    took.set_value(std::chrono::steady_clock::now() - start);
                                },
                                {.timeout = kShortTimeout}),
              0u);
    EXPECT_LT(took.get_future().get(), kTellsApart);
}

// A synchronous call on an endpoint whose loop another thread holds, blocked in the
// socket (a receive() with no timeout): that owner was told of the call before its
// deadline was set, so it slept on until the tick.
TEST(Endpoint, ACallDeadlineReachesAnOwnerBlockedInTheSocket) {
    BlackHole hole;
    ASSERT_NE(hole.address().port, 0);
    auto endpoint = Endpoint::open(longTick());
    ASSERT_TRUE(endpoint);
    std::thread owner([&] { EXPECT_FALSE(endpoint->receive(-1ns).has_value()); });
    std::this_thread::sleep_for(20ms);  // (it holds the loop, blocked in the socket)
    const auto start = std::chrono::steady_clock::now();
    Response r = endpoint->call(hole.address(), bytesOf(100, 1), {.timeout = kShortTimeout});
    const auto took = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(r.status.code(), StatusCode::Timeout);
    EXPECT_LT(took, kTellsApart);
    endpoint->shutdown();
    owner.join();
}

// A call started on endpoint B from a callback of endpoint A: B's loop owner, blocked in
// B's socket, was not told (the thread ran a loop, A's, and was taken for B's owner).
TEST(Endpoint, ACallStartedFromAnotherEndpointsCallbackReachesTheOwner) {
    BlackHole hole;
    ASSERT_NE(hole.address().port, 0);
    auto server = echoServer();
    auto a = Endpoint::open(loopback());
    auto b = Endpoint::open(longTick());
    ASSERT_TRUE(server && a && b);
    std::thread owner([&] { EXPECT_FALSE(b->receive(-1ns).has_value()); });
    std::this_thread::sleep_for(20ms);
    std::promise<std::chrono::steady_clock::duration> took;
    a->callAsync(server->address(), bytesOf(10, 1), [&](Response r) {
        ASSERT_TRUE(r.status.isOk());
        const auto start = std::chrono::steady_clock::now();
        b->callAsync(hole.address(), bytesOf(100, 1),
                     [&took, start](Response r) {
                         EXPECT_EQ(r.status.code(), StatusCode::Timeout);
                         took.set_value(std::chrono::steady_clock::now() - start);
                     },
                     {.timeout = kShortTimeout});
    });
    EXPECT_LT(took.get_future().get(), kTellsApart);
    b->shutdown();
    owner.join();
}

// The tick timer runs while the engine has RPCs, and stops once it has had nothing to
// do for a tick: an idle endpoint does not wake up every millisecond.
TEST(Endpoint, IdleEndpointStopsItsTickTimer) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    std::promise<void> inFlight, release;
    auto released = release.get_future().share();
    auto slow = Endpoint::open(loopback());
    ASSERT_TRUE(slow);
    ASSERT_TRUE(slow->serve([&, released](ServerRequest r) {
                         inFlight.set_value();
                         released.wait();
                         r.respond(r.message().bytes());
                     }, 1)
                    .isOk());
    std::future<Response> pending = client->callFuture(slow->address(), bytesOf(10, 1));
    inFlight.get_future().wait();
    EXPECT_EQ(client->metrics().get("tick_timer_armed"), 1u) << "a call in flight needs ticks";
    release.set_value();
    ASSERT_TRUE(pending.get().status.isOk());
    ASSERT_TRUE(client->call(server->address(), bytesOf(10, 2)).status.isOk());
    for (auto* ep : {client.get(), server.get(), slow.get()}) {
        for (int i = 0; i < 300 && ep->metrics().get("tick_timer_armed") != 0; ++i) std::this_thread::sleep_for(10ms);
        EXPECT_EQ(ep->metrics().get("tick_timer_armed"), 0u);
        const MetricsSnapshot before = ep->metrics();
        std::this_thread::sleep_for(200ms);
        const MetricsSnapshot d = ep->metrics() - before;
        EXPECT_LE(d.get("loop_iterations"), 10u) << "an idle loop kept waking up";
        // Nor does the poll thread, beside a worker blocked in the socket (it looked every
        // millisecond: about 200 wake-ups here).
        EXPECT_LE(d.get("poll_thread_wakeups"), 10u) << "the poll thread of an idle endpoint kept waking up";
    }
}

// An application thread that leaves the loop does not wake the poll thread, which looks
// at the next tick: the timer must be started for it if it stopped while that thread
// owned the loop (the poll thread once slept for good: requests sat unread in the socket).
TEST(Endpoint, PollThreadReadsTheSocketAfterAnOwnerLeaves) {
    auto server = Endpoint::open(loopback());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    RawSender sender(server->address().port);
    for (int trial = 0; trial < 3; ++trial) {
        std::atomic<int> answered{0};
        client->callAsync(server->address(), bytesOf(10, 1), [&](Response r) { answered += r.status.isOk(); });
        auto first = server->receive(-1ns);
        ASSERT_TRUE(first);
        first->respond(first->message().bytes());
        // Own the loop for a while with no RPC left (the timer stops meanwhile); empty
        // datagrams keep the loop turning.
        std::atomic<bool> stop{false};
        std::thread stray([&] {
            while (!stop) {
                sender.send();
                std::this_thread::sleep_for(100us);
            }
        });
        EXPECT_FALSE(server->receive(100ms));
        stop = true;
        stray.join();
        // Nobody waits on the server now: only its poll thread can read the next request.
        client->callAsync(server->address(), bytesOf(10, 2), [&](Response r) { answered += r.status.isOk(); });
        // (Watched through the metrics, which never run the loop; receive(0) would make a
        // pass of its own, and read the request itself.)
        const uint64_t want = 2u * static_cast<uint64_t>(trial + 1);
        for (int i = 0; i < 2000 && server->metrics().get("server_requests_received") < want; ++i)
            std::this_thread::sleep_for(1ms);
        ASSERT_EQ(server->metrics().get("server_requests_received"), want)
            << "trial " << trial << ": the request was never read from the socket";
        std::optional<ServerRequest> second = server->receive(0ns);  // (queued: taken at once)
        ASSERT_TRUE(second);
        second->respond(second->message().bytes());
        for (int i = 0; i < 2000 && answered < 2; ++i) std::this_thread::sleep_for(1ms);
        EXPECT_EQ(answered.load(), 2);
    }
    // The poll thread found the loop free at a tick, not at its safety net.
    EXPECT_EQ(server->metrics().get("poll_thread_late_takeovers"), 0u);
}

// Every way of waiting at once on one endpoint (synchronous calls, callbacks, aborts,
// call timeouts to a peer that never answers, receive() with a timeout), with large and
// small messages: every call ends, none hangs.
TEST(Endpoint, MixedWaitersAllFinish) {
    BlackHole hole;
    ASSERT_NE(hole.address().port, 0);
    const Address silent = hole.address();
    // The claim is that every call ends, none hangs: the protocol's own timeout (100 ms
    // of silence by default) is set far above any scheduling stall, so that a server
    // starved of the CPU for a while on a loaded machine (the client's ticks count on
    // meanwhile) does not fail calls to it; the calls to the black hole still end by
    // their own 2-5 ms timeouts.
    EndpointOptions options = loopback();
    options.protocol.timeoutTicks = 2000;
    auto server = echoServer(2, options);
    auto client = Endpoint::open(options);
    ASSERT_TRUE(client);
    const uint64_t seed = 77;
    std::printf("seed %lu\n", static_cast<unsigned long>(seed));
    std::atomic<bool> stop{false};
    std::atomic<int> finished{0}, wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            std::mt19937_64 rng(seed + static_cast<uint64_t>(t));
            while (!stop) {
                const bool toSilent = rng() % 4 == 0;
                CallOptions o;
                if (toSilent) o.timeout = std::chrono::microseconds(2000 + rng() % 3000);
                const auto req = bytesOf(rng() % 3 == 0 ? 200'000 : 64, static_cast<uint8_t>(t));
                const Address to = toSilent ? silent : server->address();
                if (t == 3) {
                    std::promise<Response> p;
                    RpcId id = client->callAsync(to, req, [&](Response r) { p.set_value(std::move(r)); }, o);
                    if (rng() % 3 == 0 && id != 0) client->abort(id);
                    Response r = p.get_future().get();
                    if (r.status.isOk() && r.message.size() != req.size()) {
                        ++wrong;
                        ADD_FAILURE() << "thread 3: a response of " << r.message.size() << " bytes to " << req.size();
                    }
                } else {
                    const auto start = std::chrono::steady_clock::now();
                    Response r = client->call(to, req, o);
                    if ((!toSilent && !r.status.isOk()) || (toSilent && r.status.code() != StatusCode::Timeout)) {
                        ++wrong;
                        ADD_FAILURE() << "thread " << t << ": call of " << req.size() << " bytes to "
                                      << (toSilent ? "the black hole" : "the server") << " ended with "
                                      << r.status.toString() << " after "
                                      << std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::steady_clock::now() - start)
                                             .count()
                                      << " ms";
                    }
                }
                ++finished;
            }
        });
    threads.emplace_back([&] {
        while (!stop) EXPECT_FALSE(client->receive(3ms));  // nobody sends the client requests
    });
    std::this_thread::sleep_for(1500ms);
    stop = true;
    for (auto& th : threads) th.join();  // a hang shows as the test's timeout
    EXPECT_GT(finished.load(), 20);
    EXPECT_EQ(wrong.load(), 0);
    // However the loop changed hands, the poll thread never found it free only at its
    // safety net (a thread leaving it gave no signal).
    for (auto* ep : {client.get(), server.get()})
        EXPECT_EQ(ep->metrics().get("poll_thread_late_takeovers"), 0u) << ep->address().toString();
}

// The packets of a new multi-packet request usually arrive in one receive batch; every
// one of them must reach the engine (the runtime once kept only the first, and the rest
// came back only after a RESEND, milliseconds later: at least one per call). On loopback
// nothing is lost; only a thread stalled past the resend timeout (a sanitizer build on a
// loaded machine: one RESEND seen) makes a receiver ask again.
TEST(Endpoint, NewMultiPacketRequestsLoseNoPacketsInTheRuntime) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    for (int i = 0; i < 30; ++i) {
        auto req = bytesOf(static_cast<size_t>(20'000 + i * 500), static_cast<uint8_t>(i));
        Response r = client->call(server->address(), req);
        ASSERT_TRUE(r.status.isOk()) << r.status.toString();
        ASSERT_EQ(r.message.size(), req.size());
    }
    MetricsSnapshot s = server->metrics(), c = client->metrics();
    EXPECT_LE(s.get("resends_sent"), 2u) << "the server had to ask for request data again";
    EXPECT_LE(c.get("retransmitted_packets"), 60u);  // (at most two messages' packets)
}

// Counters may be read from any thread while the loop runs (the receive-side counters are
// written without the endpoint's lock; ThreadSanitizer checks this test).
TEST(Endpoint, MetricsCanBeReadWhileTrafficFlows) {
    auto server = echoServer(2);
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    std::atomic<bool> stop{false};
    std::atomic<int> nonMonotonic{0};
    std::thread reader([&] {
        uint64_t lastServer = 0, lastClient = 0;
        while (!stop) {
            uint64_t s = server->metrics().get("udp_receive_calls"), c = client->metrics().get("udp_receive_calls");
            if (s < lastServer || c < lastClient) ++nonMonotonic;
            lastServer = s;
            lastClient = c;
        }
    });
    std::vector<std::future<Response>> calls;
    for (int i = 0; i < 400; ++i) calls.push_back(client->callFuture(server->address(), bytesOf(64 + i, 1)));
    for (auto& f : calls) EXPECT_TRUE(f.get().status.isOk());
    stop = true;
    reader.join();
    EXPECT_EQ(nonMonotonic.load(), 0);
    EXPECT_GT(server->metrics().get("udp_receive_calls"), 0u);
}

TEST(Endpoint, BusyPollingServesCallsAndIsBounded) {
    EndpointOptions o = loopback();
    o.busyPollUs = 200;
    Status err;
    auto server = echoServer(1, o);
    ASSERT_TRUE(server);
    auto client = Endpoint::open(o, &err);
    ASSERT_TRUE(client) << err.toString();
    for (size_t size : {64, 5000, 200'000}) {
        auto req = bytesOf(size, 9);
        Response r = client->call(server->address(), req);
        ASSERT_TRUE(r.status.isOk()) << r.status.toString();
        EXPECT_TRUE(std::equal(req.begin(), req.end(), r.message.data()));
    }
    auto fut = client->callFuture(server->address(), bytesOf(100, 1));
    EXPECT_TRUE(fut.get().status.isOk());
    client->shutdown();  // a busy-polling loop still stops at once
    o.busyPollUs = 2'000'000;
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_EQ(err.code(), StatusCode::InvalidArgument);
}

// Adaptive polling: with a budget, threads whose last wait was short look at the socket
// before sleeping (here a budget of 100 ms, so that any wait between two RPCs of a
// ping-pong counts as short on every machine); with 0, or with busy polling set, it is
// off. Either way every call is served, and a bad budget is refused.
TEST(Endpoint, AdaptivePollingSpinsAfterShortWaitsOnlyWhenOn) {
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) < 2)
        GTEST_SKIP() << "held to one CPU: threads there never poll adaptively";
    auto spinsOf = [](const MetricsSnapshot& m) { return m.get("adaptive_poll_hits") + m.get("adaptive_poll_misses"); };
    for (uint32_t budgetUs : {0u, 100'000u}) {
        for (uint32_t busyUs : {0u, 50u}) {
            SCOPED_TRACE("adaptivePollUs " + std::to_string(budgetUs) + " busyPollUs " + std::to_string(busyUs));
            EndpointOptions o = loopback();
            o.adaptivePollUs = budgetUs;
            o.busyPollUs = busyUs;
            Status err;
            auto server = echoServer(1, o);
            ASSERT_TRUE(server);
            auto client = Endpoint::open(o, &err);
            ASSERT_TRUE(client) << err.toString();
            // (On a thread of its own: a thread's record of its waits, and of spins that
            // found nothing, is kept across endpoints, and this one's starts afresh.)
            const MetricsSnapshot c0 = client->metrics();
            std::thread caller([&] {
                for (int i = 0; i < 50; ++i) {
                    auto req = bytesOf(64, static_cast<uint8_t>(i));
                    Response r = client->call(server->address(), req);
                    ASSERT_TRUE(r.status.isOk()) << r.status.toString();
                    EXPECT_TRUE(std::equal(req.begin(), req.end(), r.message.data()));
                }
            });
            caller.join();
            const MetricsSnapshot sm = server->metrics(), cm = client->metrics();
            if (budgetUs == 0 || busyUs != 0) {
                EXPECT_EQ(spinsOf(sm), 0u);
                EXPECT_EQ(spinsOf(cm), 0u);
            } else {
                // (The first wait of each thread is long: it has no measure yet.)
                EXPECT_GE(sm.get("adaptive_poll_hits"), 10u);
                EXPECT_GE(cm.get("adaptive_poll_hits"), 10u);
                // The caller spins by reading the socket without blocking: a look that
                // finds packets has read them, and no look asks whether the socket is
                // readable (that took a ppoll per look, and a read after it). Asked of
                // the caller only: the poll thread looks with ppoll (it watches its timer
                // and wake-up descriptors too), and when the CPUs are busy with other work
                // it may find the loop free between two calls, take it, and spin there
                // (hundreds of ppolls). A run where it waited on the socket more than
                // twice during the calls says nothing about the caller.
                const MetricsSnapshot d = cm - c0;
                if (d.get("poll_thread_socket_waits") <= 2) {
                    EXPECT_LT(d.get("udp_wait_calls"), d.get("adaptive_poll_hits"))
                        << "poll thread socket waits " << d.get("poll_thread_socket_waits");
                }
            }
        }
    }
    EndpointOptions o = loopback();
    o.adaptivePollUs = 1'000'001;
    Status err;
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_EQ(err.code(), StatusCode::InvalidArgument);
    EXPECT_NE(err.message().find("adaptivePollUs"), std::string::npos) << err.toString();
}

// A thread allowed on only one CPU never spins: its peer may need that CPU to answer.
// Here every thread is: the endpoints are made on a thread held to one CPU, and their
// threads inherit that. With a budget of 100 ms a ping-pong would spin on every wait.
TEST(Endpoint, ThreadsHeldToOneCpuNeverPollAdaptively) {
    cpu_set_t all;
    CPU_ZERO(&all);
    ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
    int first = 0;
    while (first < CPU_SETSIZE && !CPU_ISSET(first, &all)) ++first;
    ASSERT_LT(first, CPU_SETSIZE);
    std::thread pinned([&] {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(first, &one);
        ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
        EndpointOptions o = loopback();
        o.adaptivePollUs = 100'000;
        auto server = echoServer(1, o);
        ASSERT_TRUE(server);
        auto client = Endpoint::open(o);
        ASSERT_TRUE(client);
        for (int i = 0; i < 50; ++i) {
            auto req = bytesOf(64, static_cast<uint8_t>(i));
            Response r = client->call(server->address(), req);
            ASSERT_TRUE(r.status.isOk()) << r.status.toString();
        }
        // They slept in the socket instead: in a loop owner's blocking receive, or in the
        // poll thread's wait when it held the loop (as it may for a whole run when the
        // scheduler has it run between the calls).
        for (const MetricsSnapshot& m : {server->metrics(), client->metrics()}) {
            EXPECT_EQ(m.get("adaptive_poll_hits") + m.get("adaptive_poll_misses"), 0u);
            EXPECT_GT(m.get("blocking_receives") + m.get("poll_thread_socket_waits"), 0u)
                << "blocking receives " << m.get("blocking_receives") << ", poll thread waits "
                << m.get("poll_thread_socket_waits");
        }
    });
    pinned.join();
}

TEST(Endpoint, AsyncCallbacksAndFutures) {
    auto server = echoServer(2);
    auto client = Endpoint::open(loopback());
    std::atomic<int> done{0};
    for (int i = 0; i < 100; ++i) {
        auto req = bytesOf(static_cast<size_t>(1 + i * 997 % 30'000), static_cast<uint8_t>(i));
        client->callAsync(
            server->address(), req,
            [&done, req, i](Response r) {
                EXPECT_TRUE(r.status.isOk()) << r.status.toString();
                EXPECT_EQ(r.context, static_cast<uint64_t>(i));
                EXPECT_EQ(r.message.size(), req.size());
                ++done;
            },
            {.context = static_cast<uint64_t>(i)});
    }
    auto f = client->callFuture(server->address(), bytesOf(5000, 1));
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(f.get().message.size(), 5000u);
    for (int i = 0; i < 1000 && done < 100; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(done.load(), 100);
}

TEST(Endpoint, PullStyleReceiveAndLateResponseFromAnotherThread) {
    auto server = Endpoint::open(loopback());
    auto client = Endpoint::open(loopback());
    std::thread t([&] {
        auto req = server->receive(5s);
        ASSERT_TRUE(req);
        std::string text(req->message().view());
        EXPECT_EQ(text, "ping");
        std::thread responder([r = std::move(*req)]() mutable {
            std::string pong = "pong";
            EXPECT_TRUE(r.respond(std::span(reinterpret_cast<const uint8_t*>(pong.data()), pong.size())).isOk());
            EXPECT_EQ(r.respond(std::span<const uint8_t>()).code(), StatusCode::InvalidArgument);
        });
        responder.join();
    });
    std::string ping = "ping";
    Response r = client->call(server->address(), std::span(reinterpret_cast<const uint8_t*>(ping.data()), 4));
    t.join();
    ASSERT_TRUE(r.status.isOk()) << r.status.toString();
    EXPECT_EQ(r.message.view(), "pong");
    EXPECT_FALSE(server->receive(0ms));
}

TEST(Endpoint, PerCallTimeoutAndAbort) {
    auto server = Endpoint::open(loopback());  // never answers
    auto client = Endpoint::open(loopback());
    auto start = std::chrono::steady_clock::now();
    Response r = client->call(server->address(), bytesOf(10, 0), {.timeout = 50ms});
    EXPECT_EQ(r.status.code(), StatusCode::Timeout);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
    std::atomic<int> aborted{0};
    RpcId id = client->callAsync(server->address(), bytesOf(10, 0), [&](Response r) {
        EXPECT_EQ(r.status.code(), StatusCode::Aborted);
        ++aborted;
    });
    ASSERT_NE(id, 0u);
    EXPECT_TRUE(client->abort(id).isOk());
    EXPECT_EQ(aborted.load(), 1);
    EXPECT_EQ(client->abort(id).code(), StatusCode::NoSuchRpc);
}

// A call that cannot start fails through its callback, but never inside callAsync: a
// callback that starts the call again (a closed loop whose calls are refused) must not
// recurse once per refusal. Both kinds of refusal: bad arguments, and send memory full of
// messages in flight (a server that never answers keeps them there).
TEST(Endpoint, ACallThatCannotStartFailsFromTheLoopNotInsideCallAsync) {
    auto server = Endpoint::open(loopback());  // never answers
    EndpointOptions o = loopback();
    o.protocol.maxMessageLength = 100'000;
    o.protocol.maxOutgoingBytes = 120'000;  // one message of 60,000 B (class 64 KiB), not two
    auto client = Endpoint::open(o);
    ASSERT_TRUE(client);
    ASSERT_NE(client->callAsync(server->address(), bytesOf(60'000, 1), [](Response) {}), 0u);
    struct Case {
        std::vector<uint8_t> request;
        StatusCode expected;
    };
    for (const Case& c : {Case{{}, StatusCode::InvalidArgument}, Case{bytesOf(60'000, 2), StatusCode::OutOfBuffers}}) {
        constexpr int kRetries = 20'000;
        thread_local int depth = 0;
        thread_local bool insideCallAsync = false;
        std::atomic<int> failures{0}, nested{0}, wrongStatus{0}, maxDepth{0};
        std::promise<void> finished;
        std::function<void(Response)> retry = [&](Response r) {
            if (insideCallAsync) ++nested;
            if (r.status.code() != c.expected || r.id != 0) ++wrongStatus;
            maxDepth = std::max(maxDepth.load(), ++depth);
            if (++failures == kRetries) {
                finished.set_value();
            } else if (failures < kRetries) {
                insideCallAsync = true;
                EXPECT_EQ(client->callAsync(server->address(), c.request, retry), 0u);
                insideCallAsync = false;
            }
            --depth;
        };
        insideCallAsync = true;
        EXPECT_EQ(client->callAsync(server->address(), c.request, retry), 0u);
        insideCallAsync = false;
        ASSERT_EQ(finished.get_future().wait_for(20s), std::future_status::ready) << failures.load();
        EXPECT_EQ(nested.load(), 0) << toString(c.expected);
        EXPECT_EQ(maxDepth.load(), 1) << toString(c.expected);
        EXPECT_EQ(wrongStatus.load(), 0) << toString(c.expected);
    }
    // Once shut down, no loop runs again: the callback runs at once, here.
    client->shutdown();
    bool ran = false;
    client->callAsync(server->address(), bytesOf(10, 0), [&](Response r) {
        EXPECT_EQ(r.status.code(), StatusCode::Shutdown);
        ran = true;
    });
    EXPECT_TRUE(ran);
}

// The same from the other places the loop runs: without a poll thread the callback waits
// for the application's poll() (and runs on its thread); with an application thread
// owning the loop, blocked in a synchronous call, a refusal on another thread is run soon,
// not left until that call ends.
TEST(Endpoint, ACallThatCannotStartFailsFromWhicheverThreadRunsTheLoop) {
    auto server = Endpoint::open(loopback());  // never answers
    EndpointOptions o = loopback();
    o.pollThread = false;
    auto client = Endpoint::open(o);
    std::atomic<int> ran{0};
    std::thread::id ranOn;
    EXPECT_EQ(client->callAsync(server->address(), std::span<const uint8_t>(), [&](Response r) {
        EXPECT_EQ(r.status.code(), StatusCode::InvalidArgument);
        ranOn = std::this_thread::get_id();
        ++ran;
    }), 0u);
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(ran.load(), 0) << "no poll thread: it waits for the application's loop";
    for (int i = 0; i < 3 && ran.load() == 0; ++i) client->poll(1ms);
    EXPECT_EQ(ran.load(), 1);
    EXPECT_EQ(ranOn, std::this_thread::get_id());

    auto owned = Endpoint::open(loopback());
    std::thread owner([&] {
        // Owns the loop, blocked waiting for a response that never comes.
        Response r = owned->call(server->address(), bytesOf(10, 1), {.timeout = 1500ms});
        EXPECT_EQ(r.status.code(), StatusCode::Timeout);
    });
    std::this_thread::sleep_for(50ms);
    std::promise<void> failed;
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(owned->callAsync(server->address(), std::span<const uint8_t>(), [&](Response r) {
        EXPECT_EQ(r.status.code(), StatusCode::InvalidArgument);
        failed.set_value();
    }), 0u);
    EXPECT_EQ(failed.get_future().wait_for(1s), std::future_status::ready);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 1s) << "it waited for the blocked call to end";
    owner.join();
}

TEST(Endpoint, ShutdownFailsCallsInFlightAndWakesWaiters) {
    auto server = Endpoint::open(loopback());  // never answers
    auto client = Endpoint::open(loopback());
    std::atomic<int> failed{0};
    client->callAsync(server->address(), bytesOf(10, 0), [&](Response r) {
        EXPECT_EQ(r.status.code(), StatusCode::Shutdown);
        ++failed;
    });
    std::thread sync([&] {
        Response r = client->call(server->address(), bytesOf(10, 0));
        EXPECT_EQ(r.status.code(), StatusCode::Shutdown);
        ++failed;
    });
    std::thread receiver([&] {
        std::vector<ServerRequest> held;  // never answered: the client keeps waiting
        while (auto r = server->receive(-1ns)) held.push_back(std::move(*r));
    });
    std::this_thread::sleep_for(50ms);
    client->shutdown();
    server->shutdown();
    sync.join();
    receiver.join();
    EXPECT_EQ(failed.load(), 2);
    EXPECT_EQ(client->call(server->address(), bytesOf(1, 0)).status.code(), StatusCode::Shutdown);
}

TEST(Endpoint, BadArgumentsGetClearErrors) {
    Status err;
    EndpointOptions o = loopback();
    o.mtu = 100;
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_EQ(err.code(), StatusCode::InvalidArgument);
    EXPECT_NE(err.message().find("mtu"), std::string::npos);
    o = loopback();
    o.protocol.maxOvercommit = 0;
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_NE(err.message().find("maxOvercommit"), std::string::npos);
    o = loopback();
    o.protocol.smallMessageReserve = 0.75;
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_EQ(err.code(), StatusCode::InvalidArgument);
    EXPECT_NE(err.message().find("smallMessageReserve"), std::string::npos);
    auto server = echoServer();
    EXPECT_EQ(server->serve([](ServerRequest) {}, 1).code(), StatusCode::InvalidArgument);
    auto client = Endpoint::open(loopback());
    EXPECT_EQ(client->call(server->address(), std::span<const uint8_t>()).status.code(), StatusCode::InvalidArgument);
    std::vector<uint8_t> huge(1'000'001);
    EXPECT_EQ(client->call(server->address(), huge).status.code(), StatusCode::MessageTooLarge);
    EXPECT_EQ(client->serve(nullptr, 1).code(), StatusCode::InvalidArgument);
}

// A server address the endpoint's socket cannot send to fails the call at once with
// InvalidArgument, naming the address: an IPv6 address from an IPv4 endpoint (whose last
// four bytes were taken for an IPv4 host: [2001:db8::c0a8:105] went to 192.168.1.5), and
// port 0. Both used to end in a Timeout, and the kernel's EINVAL for port 0 turned the
// endpoint's GSO off.
TEST(Endpoint, AServerAddressTheEndpointCannotReachFailsAtOnce) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    const Address v6 = *Address::parse("[2001:db8::c0a8:105]:4000");
    const Address port0 = Address::ipv4(0x7f000001, 0);
    for (const Address& bad : {v6, port0}) {
        Response r = client->call(bad, bytesOf(10, 1), {.timeout = 10s, .context = 7});
        EXPECT_EQ(r.status.code(), StatusCode::InvalidArgument) << bad.toString() << ": " << r.status.toString();
        EXPECT_NE(r.status.message().find(bad.toString()), std::string::npos) << r.status.message();
        EXPECT_EQ(r.context, 7u);
        std::promise<Response> p;
        EXPECT_EQ(client->callAsync(bad, bytesOf(10, 1), [&](Response x) { p.set_value(std::move(x)); }), 0u);
        EXPECT_EQ(p.get_future().get().status.code(), StatusCode::InvalidArgument);
        // A message from allocate() goes back to the endpoint's memory.
        Response m = client->call(bad, client->allocate(100));
        EXPECT_EQ(m.status.code(), StatusCode::InvalidArgument);
    }
    const MetricsSnapshot mm = client->metrics();
    EXPECT_EQ(mm.get("calls_failed_invalid_argument"), 6u);
    EXPECT_EQ(mm.get("udp_send_errors"), 0u) << "nothing reached the driver";
    EXPECT_EQ(mm.get("peers"), 0u);
    EXPECT_EQ(mm.get("send_bytes_in_use"), 0u) << "the allocated messages went back";
    Response ok = client->call(server->address(), bytesOf(3000, 2));
    EXPECT_TRUE(ok.status.isOk()) << ok.status.toString();
}

// callAsync with an empty callback is refused (0, nothing runs, counted): the loop
// would have called it and thrown std::bad_function_call there.
TEST(Endpoint, AnAsyncCallWithoutACallbackIsRefused) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    EXPECT_EQ(client->callAsync(server->address(), bytesOf(10, 1), Endpoint::Callback{}), 0u);
    EXPECT_EQ(client->callAsync(server->address(), client->allocate(10), Endpoint::Callback{}), 0u);
    EXPECT_EQ(client->metrics().get("calls_failed_invalid_argument"), 2u);
    EXPECT_EQ(client->metrics().get("calls_in_flight"), 0u);
    Response ok = client->call(server->address(), bytesOf(10, 2));
    EXPECT_TRUE(ok.status.isOk()) << ok.status.toString();
}

// A callback that throws does not take the others of its batch with it, nor the loop:
// the exception is counted and the endpoint goes on.
TEST(Endpoint, ACallbackThatThrowsLosesNothingElse) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    constexpr int kCalls = 20;
    std::atomic<int> ran{0};
    std::promise<void> all;
    {
        Endpoint::CallBatch batch(*client);  // (their responses tend to come back together)
        for (int i = 0; i < kCalls; ++i)
            client->callAsync(server->address(), bytesOf(10, static_cast<uint8_t>(i)), [&, i](Response r) {
                EXPECT_TRUE(r.status.isOk()) << r.status.toString();
                if (++ran == kCalls) all.set_value();
                if (i % 2 == 0) throw std::runtime_error("the application's");
            });
    }
    ASSERT_EQ(all.get_future().wait_for(10s), std::future_status::ready) << ran << " of " << kCalls << " ran";
    for (int i = 0; i < 100 && client->metrics().get("callback_exceptions") < kCalls / 2; ++i)
        std::this_thread::sleep_for(1ms);
    EXPECT_EQ(client->metrics().get("callback_exceptions"), static_cast<uint64_t>(kCalls / 2));
    Response ok = client->call(server->address(), bytesOf(10, 2));
    EXPECT_TRUE(ok.status.isOk()) << ok.status.toString();
}

// A timeout of nanoseconds::max() means "wait that long", not "fail now": now + timeout
// wrapped into the past.
TEST(Endpoint, TheLongestTimeoutsWaitInsteadOfFailingAtOnce) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    const auto forever = std::chrono::nanoseconds::max();
    Response r = client->call(server->address(), bytesOf(10, 1), {.timeout = forever});
    EXPECT_TRUE(r.status.isOk()) << r.status.toString();
    std::promise<Response> p;
    client->callAsync(server->address(), bytesOf(10, 1), [&](Response x) { p.set_value(std::move(x)); },
                      {.timeout = forever});
    EXPECT_TRUE(p.get_future().get().status.isOk());
    auto pull = Endpoint::open(loopback());
    ASSERT_TRUE(pull);
    std::thread caller([&] { client->call(pull->address(), bytesOf(10, 3), {.timeout = 5s}); });
    std::optional<ServerRequest> req = pull->receive(forever);
    EXPECT_TRUE(req) << "receive(nanoseconds::max()) returned at once";
    if (req) {
        EXPECT_TRUE(req->respond(req->message().bytes()).isOk());
    } else {
        pull->shutdown();
    }
    caller.join();
}

// shutdown() from two threads at once (the API allows any thread): each of the
// endpoint's threads is joined once. Both returned into joins of the same threads.
TEST(Endpoint, ShutdownFromTwoThreadsAtOnce) {
    for (int round = 0; round < 20; ++round) {
        auto server = echoServer(4);
        ASSERT_TRUE(server);
        std::atomic<int> ready{0};
        auto stop = [&] {
            ++ready;
            while (ready < 2) std::this_thread::yield();
            server->shutdown();
        };
        std::thread a(stop), b(stop);
        a.join();
        b.join();
    }
}

// shutdown() from two threads of an endpoint without a poll thread or workers, whose
// metrics publisher is busy (here writing a trace, held at its rename: see
// __wrap_rename): the second caller returns once the publisher's thread has stopped too,
// not at once. (It returned while the first caller still waited for that thread, which
// reads the core: destroying the endpoint then freed the core under it.)
TEST(Endpoint, AConcurrentShutdownWaitsForThePublisher) {
    const std::string base = "/tmp/homa-shutdown-" + std::to_string(::getpid());
    const std::string dumpPath = base + ".tt", sock = base + ".sock";
    EndpointOptions o = loopback();
    o.pollThread = false;
    o.metricsSocket = sock;
    Status err;
    auto ep = Endpoint::open(o, &err);
    ASSERT_TRUE(ep) << err.toString();
    int q = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, sock.c_str());
    ASSERT_EQ(::connect(q, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    gRenameWaiting = false;
    gRenameHeld = true;
    struct Release {
        ~Release() { gRenameHeld = false; }  // (whatever happens: later renames must not wait)
    } release;
    const std::string cmd = "trace dump " + dumpPath + "\n";
    ASSERT_EQ(::send(q, cmd.data(), cmd.size(), MSG_NOSIGNAL), static_cast<ssize_t>(cmd.size()));
    for (int i = 0; i < 500 && !gRenameWaiting; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_TRUE(gRenameWaiting) << "the publisher never came to write the dump";
    std::atomic<bool> released{false}, secondReturned{false}, releasedBeforeSecond{false};
    std::thread first([&] { ep->shutdown(); });
    std::this_thread::sleep_for(50ms);
    std::thread second([&] {
        ep->shutdown();
        releasedBeforeSecond = released.load();
        secondReturned = true;
    });
    std::this_thread::sleep_for(200ms);
    released = true;
    gRenameHeld = false;  // lets the publisher finish its answer, and end
    first.join();
    second.join();
    ::close(q);
    ::unlink(dumpPath.c_str());
    EXPECT_TRUE(secondReturned);
    EXPECT_TRUE(releasedBeforeSecond) << "the second shutdown() returned while the publisher still ran";
}

// A callback that shuts its endpoint down, after which the application destroys the
// endpoint at once: the poll thread, still returning from that callback, keeps the
// endpoint's core until it is out (under ASan this was a use after free).
TEST(Endpoint, AnEndpointShutDownByItsCallbackCanBeDestroyedAtOnce) {
    BlackHole hole;
    for (int round = 0; round < 20; ++round) {
        auto client = Endpoint::open(loopback());
        ASSERT_TRUE(client);
        std::atomic<bool> shut{false};
        Endpoint* ep = client.get();
        client->callAsync(hole.address(), bytesOf(10, 1),
                          [&, ep](Response) {
                              ep->shutdown();
                              shut = true;
                              std::this_thread::sleep_for(10ms);  // (destroyed meanwhile)
                          },
                          {.timeout = 1ms});
        while (!shut) std::this_thread::yield();
        client.reset();
    }
}

// A callback that the poll thread runs from its timers (a call's deadline passed while
// an application thread owns the loop, blocked in the socket's receive) makes a
// synchronous call: the poll thread, sleeping in that call, must still run the engine's
// timers, or nobody does, and the call (this one, and any other) never ends.
TEST(Endpoint, ASynchronousCallFromATimersCallbackStillTimesOut) {
    BlackHole hole;
    auto ep = Endpoint::open(loopback());
    ASSERT_TRUE(ep);
    std::thread owner([&] { ep->receive(-1ns); });  // owns the loop, blocked in the socket
    std::this_thread::sleep_for(20ms);
    std::promise<Response> inner;
    ep->callAsync(hole.address(), bytesOf(10, 1),
                  [&](Response outer) {
                      EXPECT_EQ(outer.status.code(), StatusCode::Timeout);
                      inner.set_value(ep->call(hole.address(), bytesOf(10, 2), {.timeout = 20ms}));
                  },
                  {.timeout = 5ms});
    auto f = inner.get_future();
    const bool ended = f.wait_for(5s) == std::future_status::ready;
    EXPECT_TRUE(ended) << "the nested call never ended";
    ep->shutdown();  // (ends the receive, and the nested call if it hung)
    owner.join();
    if (ended) {
        EXPECT_EQ(f.get().status.code(), StatusCode::Timeout);
    }
}

// The same, when the loop comes to the poll thread while it waits in that call: the
// thread that owned the loop finishes its own call and hands the loop to the sleeping
// poll thread. Holding the loop, it must not block in the socket beyond a tick (its call
// has no deadline of its own: only the protocol's timeout, which the timers run).
TEST(Endpoint, ASynchronousCallFromATimersCallbackTimesOutWithTheLoopHandedToIt) {
    BlackHole hole;
    auto server = Endpoint::open(loopback());
    ASSERT_TRUE(server);
    ASSERT_TRUE(server
                    ->serve(
                        [](ServerRequest r) {
                            std::this_thread::sleep_for(100ms);
                            r.respond(r.message().bytes());
                        },
                        1)
                    .isOk());
    auto ep = Endpoint::open(loopback());
    ASSERT_TRUE(ep);
    std::thread owner([&] { EXPECT_TRUE(ep->call(server->address(), bytesOf(10, 9)).status.isOk()); });
    std::this_thread::sleep_for(20ms);  // (the owner blocks in the socket for 100 ms)
    std::promise<Response> inner;
    ep->callAsync(hole.address(), bytesOf(10, 1),
                  [&](Response) { inner.set_value(ep->call(hole.address(), bytesOf(10, 2))); }, {.timeout = 5ms});
    auto f = inner.get_future();
    const bool ended = f.wait_for(10s) == std::future_status::ready;
    EXPECT_TRUE(ended) << "the nested call never ended";
    ep->shutdown();
    owner.join();
    if (ended) {
        EXPECT_EQ(f.get().status.code(), StatusCode::Timeout);
    }
}

// shutdown() from a callback, while another thread is woken by it and destroys the
// endpoint at once: the poll thread keeps the core from its shutdown() on (the other
// thread's call ended with Shutdown inside it, before it returned).
TEST(Endpoint, AnEndpointShutDownByACallbackWhileAnotherThreadWaitsCanBeDestroyedAtOnce) {
    BlackHole hole;
    for (int round = 0; round < 20; ++round) {
        auto client = Endpoint::open(loopback());
        ASSERT_TRUE(client);
        Endpoint* ep = client.get();
        std::atomic<bool> waiting{false};
        std::thread waiter([&] {
            waiting = true;
            Response r = ep->call(hole.address(), bytesOf(10, 2), {.timeout = 10s});
            EXPECT_EQ(r.status.code(), StatusCode::Shutdown);
            client.reset();  // at once, while the poll thread may still be in shutdown()
        });
        while (!waiting) std::this_thread::yield();
        std::this_thread::sleep_for(2ms);
        // Two calls ended together: the second's callback runs inside the first's
        // shutdown() (with Shutdown), and sleeps there.
        ep->callAsync(hole.address(), bytesOf(10, 1), [ep](Response) { ep->shutdown(); }, {.timeout = 1ms});
        ep->callAsync(hole.address(), bytesOf(10, 3), [](Response) { std::this_thread::sleep_for(10ms); },
                      {.timeout = 50ms});
        waiter.join();
    }
}

// shutdown() whose own callbacks (the calls it fails) shut the endpoint down again: the
// inner call returns. It waited for the outer one to join the threads, on the same
// thread, for good.
TEST(Endpoint, AShutdownWhoseCallbackShutsTheEndpointDownReturns) {
    BlackHole hole;
    auto ep = Endpoint::open(loopback());
    ASSERT_TRUE(ep);
    std::atomic<int> ran{0};
    ep->callAsync(hole.address(), bytesOf(10, 1),
                  [&](Response r) {
                      EXPECT_EQ(r.status.code(), StatusCode::Shutdown);
                      ep->shutdown();
                      ++ran;
                  },
                  {.timeout = 10s});
    ep->shutdown();  // (hung here)
    EXPECT_EQ(ran, 1);
}

// An application thread that owns the loop runs a callback that shuts the endpoint
// down, while another thread, woken with Shutdown, destroys the endpoint at once: the
// first keeps the core until its own call returns (a use after free under ASan).
TEST(Endpoint, AnEndpointShutDownByACallbackOnAnApplicationThreadCanBeDestroyedAtOnce) {
    BlackHole hole;
    for (int round = 0; round < 20; ++round) {
        EndpointOptions o = loopback();
        o.pollThread = false;  // (the application's threads run every callback)
        std::unique_ptr<Endpoint> client = Endpoint::open(o);
        ASSERT_TRUE(client);
        Endpoint* ep = client.get();
        std::atomic<bool> started{false};
        std::thread owner([&, ep] {
            started = true;
            ep->call(hole.address(), bytesOf(10, 1), {.timeout = 10s});  // owns the loop
        });
        while (!started) std::this_thread::yield();
        std::this_thread::sleep_for(2ms);
        std::thread destroyer([&] {
            Response r = ep->call(hole.address(), bytesOf(10, 2), {.timeout = 10s});
            EXPECT_EQ(r.status.code(), StatusCode::Shutdown);
            client.reset();
        });
        std::this_thread::sleep_for(2ms);
        ep->callAsync(hole.address(), bytesOf(10, 3),
                      [ep](Response) {
                          ep->shutdown();
                          std::this_thread::sleep_for(5ms);  // (destroyed meanwhile)
                      },
                      {.timeout = 1ms});
        owner.join();
        destroyer.join();
    }
}

// receive() with the longest timeout on a thread that does not own the loop sleeps; it
// returned at once, again and again (the library's wait_for overflowed): a busy loop.
TEST(Endpoint, TheLongestReceiveWaitSleeps) {
    auto server = Endpoint::open(loopback());
    ASSERT_TRUE(server);
    std::thread a([&] { server->receive(std::chrono::nanoseconds::max()); });
    std::thread b([&] { server->receive(std::chrono::nanoseconds::max()); });
    std::this_thread::sleep_for(300ms);
    // One of them owns the loop, blocked in the socket; the other sleeps.
    const uint64_t empty = server->metrics().get("empty_wakeups");
    server->shutdown();
    a.join();
    b.join();
    EXPECT_EQ(empty, 0u) << "a waiter woke with nothing to do";
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);  // (printed only: timing does not gate tests)
    std::cout << "process CPU " << ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 << " s user\n";
}

// A handler that answers and then goes on working: its response leaves when it is
// given, not when the handler ends (here the handler waits for the client to have it;
// without a poll thread, nothing else would have sent it).
TEST(Endpoint, AResponseLeavesWhileItsHandlerGoesOnWorking) {
    EndpointOptions so = loopback();
    so.pollThread = false;
    auto server = Endpoint::open(so);
    ASSERT_TRUE(server);
    std::promise<void> clientHasIt;
    std::atomic<bool> sawIt{false};
    ASSERT_TRUE(server
                    ->serve(
                        [&](ServerRequest r) {
                            r.respond(r.message().bytes());
                            sawIt = clientHasIt.get_future().wait_for(5s) == std::future_status::ready;
                        },
                        1)
                    .isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    Response r = client->call(server->address(), bytesOf(100, 1), {.timeout = 10s});
    EXPECT_TRUE(r.status.isOk()) << r.status.toString();
    clientHasIt.set_value();
    server->shutdown();  // (joins the worker)
    EXPECT_TRUE(sawIt) << "the response waited for the handler to end";
}

// An endpoint destroyed while requests pour in (no handler: they queue for receive())
// is freed, its port with it. A request read before the shutdown and handled after it
// was queued where nobody would take it, and kept the endpoint's core alive for good.
TEST(Endpoint, AnEndpointDestroyedUnderAFloodOfRequestsLetsItsPortGo) {
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    int leaked = 0;
    for (int round = 0; round < 600; ++round) {
        auto server = Endpoint::open(loopback());
        ASSERT_TRUE(server);
        const Address to = server->address();
        std::atomic<bool> stop{false};
        std::thread flood([&] {
            while (!stop) {
                Endpoint::CallBatch batch(*client);
                for (int i = 0; i < 64; ++i)
                    client->callAsync(to, bytesOf(20, static_cast<uint8_t>(i)), [](Response) {}, {.timeout = 50ms});
                std::this_thread::sleep_for(200us);
            }
        });
        std::this_thread::sleep_for(5ms);
        server.reset();
        stop = true;
        flood.join();
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        sockaddr_in at{};
        at.sin_family = AF_INET;
        at.sin_addr.s_addr = htonl(0x7f000001);
        at.sin_port = htons(to.port);
        if (bind(fd, reinterpret_cast<sockaddr*>(&at), sizeof(at)) != 0) ++leaked;
        close(fd);
    }
    // (The window is narrow: before the fix about 1 round in 100 leaked.)
    EXPECT_EQ(leaked, 0) << "endpoints whose port stayed bound after they were destroyed";
}

// Out of file descriptors after its socket, an endpoint is not opened half-made: its
// wake-up eventfd failed unnoticed, and every poke of a sleeping loop owner was lost.
TEST(Endpoint, OutOfDescriptorsOpenFailsWithTheReason) {
#if defined(__SANITIZE_ADDRESS__)
    // (UBSan's type checks open a pipe of their own to look at memory: out of
    // descriptors, they report every object as invalid.)
    GTEST_SKIP() << "the sanitizers' runtime needs descriptors of its own";
#endif
    test::DescriptorLimit limit(1);  // room for the socket alone
    ASSERT_TRUE(limit.ok());
    Status err;
    auto ep = Endpoint::open(loopback(), &err);
    limit.restore();
    EXPECT_FALSE(ep) << "opened without its eventfds";
    EXPECT_NE(err.message().find("eventfd"), std::string::npos) << err.toString();
    EXPECT_TRUE(Endpoint::open(loopback())) << "with descriptors again";
}

// Garbage datagrams are counted and dropped; RPCs in flight are unaffected.
TEST(Endpoint, GarbageDatagramsAreCountedAndIgnored) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    RawSender junkSender(server->address().port);
    const uint64_t seed = 4242;
    std::cout << "seed " << seed << "\n";
    std::mt19937_64 rng(seed);
    std::atomic<int> ok{0};
    for (int i = 0; i < 20; ++i)
        client->callAsync(server->address(), bytesOf(50'000, static_cast<uint8_t>(i)), [&](Response r) {
            if (r.status.isOk() && r.message.size() == 50'000) ++ok;
        });
    uint64_t empty = 0;
    for (int i = 0; i < 3000; ++i) {
        std::vector<uint8_t> junk(rng() % 100);
        if (junk.empty()) ++empty;
        for (auto& b : junk) b = static_cast<uint8_t>(rng());
        if (i % 3 == 0 && junk.size() >= 28) junk[11] = 0x10;  // claims to be DATA
        junkSender.send(junk);
    }
    for (int i = 0; i < 500 && ok < 20; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(ok.load(), 20);
    MetricsSnapshot m = server->metrics();
    EXPECT_GT(m.get("dropped_malformed"), 100u);
    // (The kernel may drop some of the flood when the socket's buffer is full, so the
    // counts are lower bounds of what was sent, not equal to it.)
    ASSERT_GT(empty, 0u);
    EXPECT_GT(m.get("udp_empty_datagrams"), 0u);
    Response r = client->call(server->address(), bytesOf(100, 3));
    EXPECT_TRUE(r.status.isOk());
}

// Seed 000: with several threads waiting on one endpoint, each message goes to exactly
// one of them, once; no thread is woken to find nothing.
TEST(Endpoint, ExactlyOnceHandoffToSeveralReceiverThreads) {
    auto server = Endpoint::open(loopback());
    std::atomic<int> served{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            while (auto req = server->receive(300ms)) {
                req->respond(req->message().bytes());
                ++served;
            }
        });
    auto client = Endpoint::open(loopback());
    const int kCalls = 2000;
    for (int i = 0; i < kCalls; ++i) {
        Response r = client->call(server->address(), bytesOf(64, static_cast<uint8_t>(i)));
        ASSERT_TRUE(r.status.isOk()) << r.status.toString();
    }
    MetricsSnapshot m = server->metrics();
    for (auto& t : threads) t.join();
    EXPECT_EQ(served.load(), kCalls);
    double ratio = static_cast<double>(m.get("handoffs")) / static_cast<double>(m.get("messages_delivered"));
    std::cout << "handoffs/messages = " << ratio << " (" << m.get("handoffs") << "/" << m.get("messages_delivered")
              << "), empty wakeups " << m.get("empty_wakeups") << "\n";
    EXPECT_EQ(m.get("handoffs"), static_cast<uint64_t>(kCalls));
    EXPECT_EQ(m.get("messages_delivered"), static_cast<uint64_t>(kCalls));
    EXPECT_EQ(m.get("empty_wakeups"), 0u);
}

// Zero-copy receive with backpressure: while the application holds messages that fill
// the pool, the sender is not granted more; released buffers let everything finish.
TEST(Endpoint, FullBufferPoolStopsGrantingAndResumes) {
    EndpointOptions so = loopback();
    // Room for two 900 KB messages (buffers come in size classes of about 917 KB here).
    so.protocol.maxBufferBytes = 2 * 917'504 + 100'000;
    so.protocol.smallMessageReserve = 0;
    auto server = Endpoint::open(so);
    auto client = Endpoint::open(loopback());
    std::atomic<int> ok{0};
    for (int i = 0; i < 6; ++i)
        client->callAsync(server->address(), bytesOf(900'000, static_cast<uint8_t>(i)), [&](Response r) {
            if (r.status.isOk()) ++ok;
        });
    std::vector<ServerRequest> held;
    while (held.size() < 2) {
        auto r = server->receive(5s);
        ASSERT_TRUE(r);
        held.push_back(std::move(*r));
    }
    std::this_thread::sleep_for(100ms);
    EXPECT_FALSE(server->receive(0ms)) << "the pool only holds two messages of this size";
    EXPECT_GT(server->metrics().get("buffer_waits"), 0u);
    for (auto& r : held) r.respond(std::vector<uint8_t>(1, 1));
    held.clear();
    int got = 2;
    while (got < 6) {
        auto r = server->receive(5s);
        ASSERT_TRUE(r) << "after " << got;
        r->respond(std::vector<uint8_t>(1, 1));
        ++got;
    }
    for (int i = 0; i < 500 && ok < 6; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(ok.load(), 6);
}

// ---------------------------------------------------------------- OutgoingMessage

// Messages built in place: a request from allocate() goes out as it was filled, by
// call() and callAsync(), and so does a response given to respond(); each one's send
// memory comes back once it is sent and acknowledged.
TEST(Endpoint, MessagesBuiltInPlaceAreSentAsFilled) {
    auto server = Endpoint::open(loopback());
    ASSERT_TRUE(server);
    Endpoint* srv = server.get();
    ASSERT_TRUE(server
                    ->serve(
                        [srv](ServerRequest req) {
                            // The response: the request's bytes reversed, built in place.
                            const auto in = req.message().bytes();
                            OutgoingMessage out = srv->allocate(in.size());
                            ASSERT_EQ(out.size(), in.size());
                            std::reverse_copy(in.begin(), in.end(), out.data());
                            EXPECT_TRUE(req.respond(std::move(out)).isOk());
                        },
                        1)
                    .isOk());
    auto client = Endpoint::open(loopback());
    for (size_t size : {size_t{1}, size_t{1400}, size_t{5000}, size_t{300'000}}) {
        Status err;
        OutgoingMessage m = client->allocate(size, &err);
        ASSERT_TRUE(err.isOk()) << err.toString();
        ASSERT_EQ(m.size(), size);
        for (size_t i = 0; i < size; ++i) m.data()[i] = static_cast<uint8_t>(i * 7 + size);
        std::vector<uint8_t> want(m.bytes().rbegin(), m.bytes().rend());
        Response r = client->call(server->address(), std::move(m), {.timeout = 10s});
        ASSERT_TRUE(r.status.isOk()) << size << ": " << r.status.toString();
        EXPECT_TRUE(std::equal(want.begin(), want.end(), r.message.bytes().begin(), r.message.bytes().end())) << size;

        OutgoingMessage a = client->allocate(size);
        for (size_t i = 0; i < size; ++i) a.data()[i] = static_cast<uint8_t>(i + 3);
        std::vector<uint8_t> wantAsync(a.bytes().rbegin(), a.bytes().rend());
        std::promise<Response> p;
        client->callAsync(server->address(), std::move(a), [&](Response rr) { p.set_value(std::move(rr)); },
                          {.timeout = 10s});
        Response ra = p.get_future().get();
        ASSERT_TRUE(ra.status.isOk()) << size << ": " << ra.status.toString();
        EXPECT_TRUE(std::equal(wantAsync.begin(), wantAsync.end(), ra.message.bytes().begin(),
                               ra.message.bytes().end()))
            << size;

        OutgoingMessage fm = client->allocate(size);
        std::fill(fm.data(), fm.data() + fm.size(), static_cast<uint8_t>(0x60 + size % 7));
        auto future = client->callFuture(server->address(), std::move(fm), {.timeout = 10s});
        ASSERT_EQ(future.wait_for(10s), std::future_status::ready);
        Response rf = future.get();
        ASSERT_TRUE(rf.status.isOk()) << size << ": " << rf.status.toString();
        ASSERT_EQ(rf.message.size(), size);
        EXPECT_EQ(rf.message.data()[0], static_cast<uint8_t>(0x60 + size % 7));
        EXPECT_EQ(rf.message.data()[size - 1], static_cast<uint8_t>(0x60 + size % 7));
    }
    for (int i = 0; i < 200 && (client->metrics().get("send_bytes_in_use") != 0 ||
                                server->metrics().get("send_bytes_in_use") != 0);
         ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_EQ(client->metrics().get("send_bytes_in_use"), 0u);
    EXPECT_EQ(server->metrics().get("send_bytes_in_use"), 0u);
}

// allocate() refuses what no message may be, and what the send memory cannot hold; an
// unsent message gives its memory back when destroyed; an empty message, or one of
// another endpoint, fails the call (the message is consumed either way).
TEST(Endpoint, BuiltInPlaceMessagesOfTheWrongKindFailClearly) {
    EndpointOptions o = loopback();
    o.protocol.maxOutgoingBytes = 4 << 20;
    auto client = Endpoint::open(o);
    ASSERT_TRUE(client);
    auto other = Endpoint::open(loopback());
    auto server = echoServer();
    Status err;
    EXPECT_TRUE(client->allocate(0, &err).empty());
    EXPECT_EQ(err.code(), StatusCode::InvalidArgument);
    EXPECT_TRUE(client->allocate(1'000'001, &err).empty());
    EXPECT_EQ(err.code(), StatusCode::MessageTooLarge);
    {
        std::vector<OutgoingMessage> held;
        for (int i = 0; i < 8; ++i) {
            held.push_back(client->allocate(1'000'000, &err));
            if (held.back().empty()) break;
        }
        EXPECT_TRUE(held.back().empty()) << "4 MB of send memory held eight 1 MB messages";
        EXPECT_EQ(err.code(), StatusCode::OutOfBuffers);
        EXPECT_GT(client->metrics().get("send_bytes_in_use"), 3u << 20);
    }
    EXPECT_EQ(client->metrics().get("send_bytes_in_use"), 0u) << "unsent messages keep their memory";
    OutgoingMessage m = client->allocate(1'000'000, &err);
    EXPECT_FALSE(m.empty()) << err.toString();
    m.reset();
    EXPECT_TRUE(m.empty());
    EXPECT_EQ(client->metrics().get("send_bytes_in_use"), 0u);

    const uint64_t failedBefore = client->metrics().get("calls_failed_invalid_argument");
    OutgoingMessage empty;
    Response r = client->call(server->address(), std::move(empty), {.context = 7});
    EXPECT_EQ(r.status.code(), StatusCode::InvalidArgument);
    EXPECT_EQ(r.context, 7u);
    OutgoingMessage foreign = other->allocate(100);
    r = client->call(server->address(), std::move(foreign));
    EXPECT_EQ(r.status.code(), StatusCode::InvalidArgument);
    EXPECT_EQ(client->metrics().get("calls_failed_invalid_argument"), failedBefore + 2)
        << "calls that could not start are counted as any others";
    EXPECT_NE(r.status.message().find("another endpoint"), std::string::npos) << r.status.toString();
    std::promise<Response> p;
    OutgoingMessage foreign2 = other->allocate(100);
    EXPECT_EQ(client->callAsync(server->address(), std::move(foreign2), [&](Response rr) { p.set_value(std::move(rr)); }),
              0u);
    auto f = p.get_future();
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    EXPECT_EQ(f.get().status.code(), StatusCode::InvalidArgument);
    // The same through callFuture: an empty (moved-from) message and another endpoint's.
    OutgoingMessage foreign3 = other->allocate(100);
    OutgoingMessage moved = client->allocate(100);
    OutgoingMessage taken = std::move(moved);
    for (OutgoingMessage* bad : {&foreign3, &moved}) {
        auto bf = client->callFuture(server->address(), std::move(*bad));
        ASSERT_EQ(bf.wait_for(5s), std::future_status::ready);
        EXPECT_EQ(bf.get().status.code(), StatusCode::InvalidArgument);
    }
    taken.reset();
    EXPECT_EQ(other->metrics().get("send_bytes_in_use"), 0u) << "the refused messages were returned";
    // After shutdown, a call fails and still returns its message's memory.
    OutgoingMessage shut = client->allocate(1000);
    client->shutdown();
    EXPECT_EQ(client->call(server->address(), std::move(shut)).status.code(), StatusCode::Shutdown);
    EXPECT_EQ(client->metrics().get("send_bytes_in_use"), 0u);
    EXPECT_TRUE(client->allocate(10, &err).empty());
    EXPECT_EQ(err.code(), StatusCode::Shutdown);
}

// respond() with a message built in place: refused, and its memory returned, when the
// request was answered already or the message is another endpoint's.
TEST(Endpoint, ARefusedResponseBuiltInPlaceReturnsItsMemory) {
    auto server = Endpoint::open(loopback());
    auto other = Endpoint::open(loopback());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && other && client);
    std::promise<Response> done;
    client->callAsync(server->address(), bytesOf(100, 1), [&](Response r) { done.set_value(std::move(r)); });
    std::optional<ServerRequest> req = server->receive(5s);
    ASSERT_TRUE(req);
    EXPECT_EQ(req->respond(other->allocate(50)).code(), StatusCode::InvalidArgument);
    EXPECT_EQ(other->metrics().get("send_bytes_in_use"), 0u);
    OutgoingMessage first = server->allocate(20);
    std::fill(first.data(), first.data() + first.size(), 0x42);
    EXPECT_TRUE(req->respond(std::move(first)).isOk());
    EXPECT_EQ(req->respond(server->allocate(30)).code(), StatusCode::InvalidArgument);
    auto f = done.get_future();
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    Response r = f.get();
    ASSERT_TRUE(r.status.isOk()) << r.status.toString();
    ASSERT_EQ(r.message.size(), 20u);
    EXPECT_EQ(r.message.data()[19], 0x42);
    req.reset();
    for (int i = 0; i < 200 && server->metrics().get("send_bytes_in_use") != 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(server->metrics().get("send_bytes_in_use"), 0u);
}

// A message built in place may outlive its endpoint: the endpoint's memory stays until
// the message is gone.
TEST(Endpoint, ABuiltInPlaceMessageMayOutliveItsEndpoint) {
    auto client = Endpoint::open(loopback());
    OutgoingMessage m = client->allocate(64 * 1024);
    ASSERT_FALSE(m.empty());
    client.reset();
    std::fill(m.data(), m.data() + m.size(), 0xab);  // (ASan: still the core's memory)
    m.reset();
}


// Once the endpoint is shut down, a callAsync from one of its callbacks gets its callback
// on the same thread after that callback returns, not nested in it: a closed loop whose
// callbacks start every finished call again, whatever its status, recursed inside
// shutdown() once per call until the stack ran out. Here four calls in flight at the
// shutdown start 100,000 more from their callbacks.
TEST(Endpoint, CallbacksStartingCallsAfterShutdownDoNotRecurse) {
    auto server = Endpoint::open(loopback());  // never answers: the calls stay in flight
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    constexpr int kInFlight = 4;
    constexpr int kRestarts = 100'000;
    constexpr int kDepthLimit = 64;  // (were they nested, the stack stays safe)
    thread_local int depth = 0;
    std::atomic<int> restarts{0}, finished{0}, notShutdown{0}, maxDepth{0};
    const auto req = bytesOf(10, 1);
    std::function<void(Response)> again = [&](Response r) {
        maxDepth = std::max(maxDepth.load(), ++depth);
        ++finished;
        if (r.status.code() != StatusCode::Shutdown) ++notShutdown;
        if (depth < kDepthLimit && restarts < kRestarts) {
            ++restarts;
            client->callAsync(server->address(), req, again);
        }
        --depth;
    };
    for (int i = 0; i < kInFlight; ++i) ASSERT_NE(client->callAsync(server->address(), req, again), 0u);
    client->shutdown();
    // (All of them ran inside shutdown(), on this thread, one after another.)
    EXPECT_EQ(finished.load(), kInFlight + kRestarts);
    EXPECT_EQ(notShutdown.load(), 0);
    EXPECT_LE(maxDepth.load(), 2);
    EXPECT_EQ(client->metrics().get("callbacks_run"), static_cast<uint64_t>(kInFlight + kRestarts));
}

// A call blocked in the socket runs no timers: the poll thread runs the engine's ticks,
// one at each expiry of the tick timer. (It skipped about 40 % of them, taking its own
// run of the previous tick for the loop owner's when it woke a little earlier in the
// period, so a call's protocol timeout of 100 ticks took 160 to 180 ms.) Counted without
// timing: each tick sends the silent call a RESEND (resendTicks = resendInterval = 1),
// and the poll thread wakes once per expiry.
TEST(Endpoint, ThePollThreadRunsATickAtEveryExpiryForACallBlockedInTheSocket) {
    BlackHole hole;  // swallows requests and RESENDs, answers nothing
    ASSERT_NE(hole.address().port, 0);
    EndpointOptions o = loopback();
    o.protocol.resendTicks = 1;
    o.protocol.resendInterval = 1;
    o.protocol.timeoutTicks = 1'000'000;  // (the call's own timeout ends it)
    auto client = Endpoint::open(o);
    ASSERT_TRUE(client);
    Response r = client->call(hole.address(), bytesOf(100, 1), {.timeout = 500ms});
    EXPECT_EQ(r.status.code(), StatusCode::Timeout) << r.status.toString();
    const MetricsSnapshot m = client->metrics();
    const auto ticks = static_cast<double>(m.get("resends_sent"));
    const auto wakeups = static_cast<double>(m.get("poll_thread_wakeups"));
    std::printf("%.0f ticks in %.0f poll-thread wake-ups (%lu timer runs)\n", ticks, wakeups,
                static_cast<unsigned long>(m.get("poll_thread_timer_runs")));
    EXPECT_GE(m.get("blocking_receives"), 1u);
    ASSERT_GE(wakeups, 50) << "the ticks came from somewhere else";
    EXPECT_GE(ticks, 0.85 * wakeups);
}

// respond() does not tell whether the client still waits: a client that aborted its call
// or was destroyed tells the server nothing, and the response is sent (and dropped).
TEST(Endpoint, RespondSucceedsAfterTheClientGaveUp) {
    auto server = Endpoint::open(loopback());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    std::atomic<int> aborted{0};
    const RpcId id = client->callAsync(server->address(), bytesOf(10, 1), [&](Response r) {
        EXPECT_EQ(r.status.code(), StatusCode::Aborted);
        ++aborted;
    });
    ASSERT_NE(id, 0u);
    std::optional<ServerRequest> first = server->receive(5s);
    ASSERT_TRUE(first);
    EXPECT_TRUE(client->abort(id).isOk());
    EXPECT_EQ(aborted.load(), 1);
    EXPECT_TRUE(first->respond(bytesOf(10, 2)).isOk());
    client->callAsync(server->address(), bytesOf(10, 3), [](Response) {});
    std::optional<ServerRequest> second = server->receive(5s);
    ASSERT_TRUE(second);
    client.reset();
    EXPECT_TRUE(second->respond(bytesOf(10, 4)).isOk());
}

// A call made after the shutdown still carries its context back, in every form (the
// synchronous ones came back with 0).
TEST(Endpoint, ACallAfterShutdownKeepsItsContext) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    OutgoingMessage m = client->allocate(100);
    ASSERT_FALSE(m.empty());
    client->shutdown();
    Response copied = client->call(server->address(), bytesOf(10, 1), {.context = 41});
    EXPECT_EQ(copied.status.code(), StatusCode::Shutdown);
    EXPECT_EQ(copied.context, 41u);
    Response built = client->call(server->address(), std::move(m), {.context = 42});
    EXPECT_EQ(built.status.code(), StatusCode::Shutdown);
    EXPECT_EQ(built.context, 42u);
    EXPECT_EQ(client->metrics().get("send_bytes_in_use"), 0u);
    uint64_t asyncContext = 0;
    client->callAsync(server->address(), bytesOf(10, 1), [&](Response r) { asyncContext = r.context; },
                      {.context = 43});
    EXPECT_EQ(asyncContext, 43u);
    auto f = client->callFuture(server->address(), bytesOf(10, 1), {.context = 44});
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    EXPECT_EQ(f.get().context, 44u);
}

// A negative timeout is refused with InvalidArgument, in every form of call (it was
// taken as "no timeout").
TEST(Endpoint, ANegativeTimeoutIsRefused) {
    auto server = echoServer();
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    const CallOptions negative{.timeout = -1ms, .context = 5};
    Response r = client->call(server->address(), bytesOf(10, 1), negative);
    EXPECT_EQ(r.status.code(), StatusCode::InvalidArgument) << r.status.toString();
    EXPECT_NE(r.status.message().find("timeout"), std::string::npos) << r.status.message();
    EXPECT_EQ(r.context, 5u);
    Response built = client->call(server->address(), client->allocate(10), negative);
    EXPECT_EQ(built.status.code(), StatusCode::InvalidArgument) << built.status.toString();
    std::promise<Response> p;
    EXPECT_EQ(client->callAsync(server->address(), bytesOf(10, 1), [&](Response x) { p.set_value(std::move(x)); },
                                negative),
              0u);
    auto pf = p.get_future();
    ASSERT_EQ(pf.wait_for(5s), std::future_status::ready);
    EXPECT_EQ(pf.get().status.code(), StatusCode::InvalidArgument);
    auto f = client->callFuture(server->address(), bytesOf(10, 1), negative);
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    EXPECT_EQ(f.get().status.code(), StatusCode::InvalidArgument);
    const MetricsSnapshot mm = client->metrics();
    EXPECT_EQ(mm.get("calls_failed_invalid_argument"), 4u);
    EXPECT_EQ(mm.get("send_bytes_in_use"), 0u) << "the allocated message went back";
    EXPECT_EQ(mm.get("client_rpcs_started"), 0u);
    Response ok = client->call(server->address(), bytesOf(10, 2), {.timeout = 0ns});
    EXPECT_TRUE(ok.status.isOk()) << ok.status.toString();
}

// sendFreeze() refuses an address the socket cannot send to, as a call does (it returned
// ok and sent nothing).
TEST(Endpoint, SendFreezeRefusesAnAddressTheEndpointCannotReach) {
    auto client = Endpoint::open(loopback());
    auto peer = Endpoint::open(loopback());
    ASSERT_TRUE(client && peer);
    const Address v6 = *Address::parse("[2001:db8::c0a8:105]:4000");
    const Address port0 = Address::ipv4(0x7f000001, 0);
    for (const Address& bad : {v6, port0}) {
        Status s = client->sendFreeze(bad);
        EXPECT_EQ(s.code(), StatusCode::InvalidArgument) << bad.toString() << ": " << s.toString();
        EXPECT_NE(s.message().find(bad.toString()), std::string::npos) << s.message();
    }
    EXPECT_EQ(client->metrics().get("packets_sent_freeze"), 0u);
    EXPECT_TRUE(client->sendFreeze(peer->address()).isOk());
    EXPECT_EQ(client->metrics().get("packets_sent_freeze"), 1u);
    client->shutdown();
    EXPECT_EQ(client->sendFreeze(peer->address()).code(), StatusCode::Shutdown);
}

// Without the poll thread, receive(0) makes a pass of the loop itself: a pull-style
// server that only ever asks without waiting gets its requests (it got none: nothing
// read the socket).
TEST(Endpoint, ReceiveWithoutWaitingReadsTheSocketWithoutAPollThread) {
    EndpointOptions o = loopback();
    o.pollThread = false;
    auto server = Endpoint::open(o);
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    std::promise<Response> done;
    client->callAsync(server->address(), bytesOf(100, 3), [&](Response r) { done.set_value(std::move(r)); });
    std::optional<ServerRequest> req;
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (!req && std::chrono::steady_clock::now() < until) {
        req = server->receive(0ns);
        if (!req) std::this_thread::sleep_for(1ms);
    }
    ASSERT_TRUE(req) << "receive(0) never read the socket";
    EXPECT_EQ(req->message().size(), 100u);
    EXPECT_TRUE(req->respond(req->message().bytes()).isOk());
    auto f = done.get_future();
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    Response r = f.get();
    EXPECT_TRUE(r.status.isOk()) << r.status.toString();
    EXPECT_EQ(r.message.size(), 100u);
    EXPECT_FALSE(server->receive(0ns));
}

// open() sets its error to ok on success: a Status reused from an earlier failure does
// not keep a stale error.
TEST(Endpoint, OpenClearsTheErrorOnSuccess) {
    Status err(StatusCode::InvalidArgument, "left from before");
    auto ep = Endpoint::open(loopback(), &err);
    ASSERT_TRUE(ep);
    EXPECT_TRUE(err.isOk()) << err.toString();
}

}  // namespace
}  // namespace homa
