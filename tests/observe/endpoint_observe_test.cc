// Observability of a live endpoint: metrics over its socket and HTTP, the RPC list,
// per-thread counters under concurrency, FREEZE.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <future>
#include <sstream>
#include <thread>

#include "client.h"
#include "common/loopback.h"
#include "http_client.h"
#include "homa/endpoint.h"
#include "homa/trace.h"
#include "trace/reader.h"

namespace homa {
namespace {

using namespace std::chrono_literals;

using test::loopback;

std::string tempPath(const std::string& name) {
    return "/tmp/homa-observe-ep-" + std::to_string(::getpid()) + "-" + name;
}

std::string httpGet(uint16_t port, const std::string& target) {
    return test_http::httpExchange(port, "GET " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

TEST(ObserveEndpoint, MetricsOverTheSocketAndHttp) {
    EndpointOptions so = loopback();
    so.metricsSocket = tempPath("%e.sock");
    so.prometheus = true;
    Status err;
    auto server = Endpoint::open(so, &err);
    ASSERT_TRUE(server) << err.toString();
    std::string path = server->metricsSocketPath();
    EXPECT_EQ(path, tempPath(std::to_string(server->address().port) + ".sock"));
    ASSERT_TRUE(server->serve([](ServerRequest r) { r.respond(r.message().bytes()); }, 2).isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    std::vector<uint8_t> req(3000, 7);
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(client->call(server->address(), req).status.isOk());

    std::string error;
    auto m = metrics_tool::readSnapshot(path, &error);
    ASSERT_TRUE(m) << error;
    EXPECT_EQ(m->get("server_requests_received"), 20u);
    EXPECT_EQ(m->get("server_responses_sent"), 20u);
    EXPECT_EQ(m->get("handler_calls"), 20u);
    EXPECT_GE(m->get("packets_received_data"), 60u);  // 3000 bytes: 3 packets each
    EXPECT_GT(m->get("engine_cpu_ns"), 0u);
    EXPECT_GT(m->timeNs, 0);
    MetricsSnapshot local = server->metrics();
    EXPECT_EQ(local.get("server_requests_received"), 20u);
    MetricsSnapshot c = client->metrics();
    EXPECT_EQ(c.get("client_rpcs_started"), 20u);
    EXPECT_EQ(c.get("client_rpcs_completed"), 20u);
    EXPECT_EQ(c.get("calls_in_flight"), 0u);

    ASSERT_NE(server->prometheusPort(), 0);
    std::string page = httpGet(server->prometheusPort(), "/metrics");
    EXPECT_TRUE(page.starts_with("HTTP/1.1 200 OK")) << page.substr(0, 200);
    EXPECT_NE(page.find("# TYPE homa_server_requests_received_total counter"), std::string::npos);
    std::string sample = "homa_server_requests_received_total{endpoint=\"" + server->address().toString() + "\"} 20\n";
    EXPECT_NE(page.find(sample), std::string::npos) << page.substr(0, 400);
    EXPECT_NE(page.find("# TYPE homa_peers gauge"), std::string::npos);

    server->shutdown();
    struct stat st;
    EXPECT_NE(::stat(path.c_str(), &st), 0) << "shutdown removes the socket";
}

// A handler or callback is counted before it runs, so that whoever learns of its effect
// (a client with its response, a caller told by the callback) finds it counted.
TEST(ObserveEndpoint, HandlersAndCallbacksAreCountedBeforeTheyRun) {
    auto server = Endpoint::open(loopback());
    ASSERT_TRUE(server);
    std::promise<uint64_t> inHandler;
    ASSERT_TRUE(server
                    ->serve(
                        [&](ServerRequest r) {
                            inHandler.set_value(server->metrics().get("handler_calls"));
                            r.respond(r.message().bytes());
                        },
                        1)
                    .isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    std::promise<uint64_t> inCallback;
    client->callAsync(server->address(), std::vector<uint8_t>(10, 1), [&](Response r) {
        EXPECT_TRUE(r.status.isOk());
        inCallback.set_value(client->metrics().get("callbacks_run"));
    });
    auto h = inHandler.get_future(), c = inCallback.get_future();
    ASSERT_EQ(h.wait_for(10s), std::future_status::ready);
    ASSERT_EQ(c.wait_for(10s), std::future_status::ready);
    EXPECT_EQ(h.get(), 1u);
    EXPECT_EQ(c.get(), 1u);
}

// The CPU-time counters are counters: read again and again on an idle endpoint, they
// never go down. (They are kept in timestamp-counter cycles and shown in ns at a rate
// measured afresh at each read, whose jitter made them go down by a few ns now and then,
// which a Prometheus server takes for a reset of the whole value.)
TEST(ObserveEndpoint, CpuTimeCountersNeverGoDown) {
    auto server = Endpoint::open(loopback());
    ASSERT_TRUE(server);
    ASSERT_TRUE(server->serve([](ServerRequest r) { r.respond(r.message().bytes()); }, 1).isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    for (int i = 0; i < 200; ++i) {
        std::promise<void> done;
        client->callAsync(server->address(), std::vector<uint8_t>(10, 1), [&](Response) { done.set_value(); });
        ASSERT_EQ(done.get_future().wait_for(10s), std::future_status::ready);
    }
    for (const char* name : {"engine_cpu_ns", "callback_ns"}) {
        uint64_t last = client->metrics().get(name);
        EXPECT_GT(last, 0u) << name;
        int downs = 0;
        for (int i = 0; i < 20'000; ++i) {
            const uint64_t now = client->metrics().get(name);
            downs += now < last;
            last = now;
        }
        EXPECT_EQ(downs, 0) << name;
    }
    uint64_t last = server->metrics().get("handler_ns");
    int downs = 0;
    for (int i = 0; i < 20'000; ++i) {
        const uint64_t now = server->metrics().get("handler_ns");
        downs += now < last;
        last = now;
    }
    EXPECT_EQ(downs, 0) << "handler_ns";
}

TEST(ObserveEndpoint, BadObservabilityOptionsAreClearErrors) {
    EndpointOptions o = loopback();
    o.metricsSocket = "/nonexistent-dir/homa.sock";
    Status err;
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_NE(err.message().find("/nonexistent-dir/homa.sock"), std::string::npos) << err.toString();
    o.metricsSocket = "/tmp/" + std::string(300, 'x');
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_EQ(err.code(), StatusCode::InvalidArgument);
}

TEST(ObserveEndpoint, EnvironmentVariablePublishesWithoutBreakingTheProgram) {
    std::string pattern = tempPath("env-%e.sock"), fixed = tempPath("env-fixed.sock");
    ASSERT_EQ(::setenv("HOMA_METRICS_SOCKET", pattern.c_str(), 1), 0);
    auto a = Endpoint::open(loopback());
    ASSERT_EQ(::setenv("HOMA_METRICS_SOCKET", fixed.c_str(), 1), 0);
    auto b = Endpoint::open(loopback());
    auto c = Endpoint::open(loopback());  // same path as b: opens, unpublished
    ::unsetenv("HOMA_METRICS_SOCKET");
    ASSERT_TRUE(a && b && c);
    EXPECT_EQ(a->metricsSocketPath(), tempPath("env-" + std::to_string(a->address().port) + ".sock"));
    EXPECT_EQ(b->metricsSocketPath(), fixed);
    EXPECT_EQ(c->metricsSocketPath(), "");
    std::string error;
    EXPECT_TRUE(metrics_tool::readSnapshot(a->metricsSocketPath(), &error)) << error;
    EXPECT_TRUE(metrics_tool::readSnapshot(fixed, &error)) << error;
    // An explicit option that cannot be honoured is an error, though.
    EndpointOptions o = loopback();
    o.metricsSocket = fixed;
    Status err;
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_NE(err.message().find("in use"), std::string::npos) << err.toString();
}

// A socket file whose owner is alive but does not accept (stopped, hung) with its
// backlog full: the check for a stale file blocked in connect(), and open() with it.
TEST(ObserveEndpoint, ASocketWhoseOwnerDoesNotAcceptIsInUseWithoutBlocking) {
    const std::string path = tempPath("stuck.sock");
    ::unlink(path.c_str());
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    ASSERT_LT(path.size(), sizeof(addr.sun_path));
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    const int listener = ::socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(listener, 0);
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(listener, 0), 0);
    std::vector<int> queued;  // connections nobody accepts, until the backlog is full
    for (int i = 0; i < 64; ++i) {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        ASSERT_GE(fd, 0);
        queued.push_back(fd);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) break;
    }
    ASSERT_EQ(errno, EAGAIN) << "the backlog never filled";
    EndpointOptions o = loopback();
    o.metricsSocket = path;
    Status err;
    EXPECT_FALSE(Endpoint::open(o, &err));
    EXPECT_NE(err.message().find("in use"), std::string::npos) << err.toString();
    struct stat st;
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << "the live socket's file was removed";
    for (int fd : queued) ::close(fd);
    ::close(listener);
    ::unlink(path.c_str());
}

TEST(ObserveEndpoint, LiveRpcsAreListed) {
    EndpointOptions so = loopback();
    so.metricsSocket = tempPath("rpcs.sock");
    auto server = Endpoint::open(so);
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(server && client);
    std::vector<uint8_t> req(5000, 1);
    std::atomic<bool> answered{false};
    RpcId id = client->callAsync(server->address(), req, [&](Response r) {
        EXPECT_TRUE(r.status.isOk());
        answered = true;
    });
    ASSERT_NE(id, 0u);
    // The server takes the request and holds it unanswered.
    auto request = server->receive(5s);
    ASSERT_TRUE(request);
    std::vector<RpcSnapshot> at = server->rpcs();
    ASSERT_EQ(at.size(), 1u);
    EXPECT_EQ(at[0].state, "server-in-service");
    EXPECT_EQ(at[0].id, id + 1);
    EXPECT_EQ(at[0].inLength, 5000u);
    EXPECT_EQ(at[0].inReceived, 5000u);
    EXPECT_EQ(at[0].peer, client->address().toString());
    std::vector<RpcSnapshot> ac = client->rpcs();
    ASSERT_EQ(ac.size(), 1u);
    EXPECT_EQ(ac[0].state, "client");
    EXPECT_EQ(ac[0].id, id);
    EXPECT_EQ(ac[0].outLength, 5000u);
    EXPECT_EQ(ac[0].outSent, 5000u);
    std::string error;
    auto text = metrics_tool::query(server->metricsSocketPath(), "rpcs", &error);
    ASSERT_TRUE(text) << error;
    EXPECT_NE(text->find("server-in-service"), std::string::npos) << *text;
    EXPECT_NE(text->find(std::to_string(id + 1)), std::string::npos) << *text;
    ASSERT_TRUE(request->respond(request->message().bytes()).isOk());
    for (int i = 0; i < 500 && !answered; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(answered);
}

TEST(ObserveEndpoint, PerThreadCountersAddUpUnderConcurrency) {
    auto server = Endpoint::open(loopback());
    ASSERT_TRUE(server);
    ASSERT_TRUE(server->serve([](ServerRequest r) { r.respond(r.message().bytes()); }, 4).isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    constexpr int kThreads = 4, kCalls = 200;
    std::atomic<int> callbacks{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&] {
            std::vector<uint8_t> req(100, 3);
            for (int i = 0; i < kCalls; ++i) {
                ASSERT_TRUE(client->call(server->address(), req).status.isOk());
                client->callAsync(server->address(), req, [&](Response r) {
                    EXPECT_TRUE(r.status.isOk());
                    ++callbacks;
                });
            }
        });
    for (auto& t : threads) t.join();
    for (int i = 0; i < 1000 && callbacks < kThreads * kCalls; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_EQ(callbacks, kThreads * kCalls);
    MetricsSnapshot s = server->metrics();
    EXPECT_EQ(s.get("handler_calls"), 2u * kThreads * kCalls);
    EXPECT_EQ(s.get("server_requests_received"), 2u * kThreads * kCalls);
    MetricsSnapshot c = client->metrics();
    EXPECT_EQ(c.get("callbacks_run"), 1u * kThreads * kCalls);
}

// In a real trace each message's "deliver" (the engine has it whole) comes before its
// "handoff" (the runtime gives it to the application), at both ends: homa-trace's
// handoff phases are the time between the two. (The engine used to trace a delivery as
// the runtime took it off its queue, after the handoff, and the client's handoff phase
// was always missing.)
TEST(ObserveEndpoint, MessagesAreDeliveredBeforeTheyAreHandedOff) {
    trace::clear();
    auto server = Endpoint::open(loopback());
    ASSERT_TRUE(server);
    ASSERT_TRUE(server->serve([](ServerRequest r) { r.respond(r.message().bytes()); }).isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    trace::enable(true);
    std::vector<uint8_t> req(100, 1);
    std::vector<RpcId> ids;
    for (int i = 0; i < 20; ++i) {
        Response r = client->call(server->address(), req);
        ASSERT_TRUE(r.status.isOk());
        ids.push_back(r.id);
    }
    trace::enable(false);
    trace::TraceFile t;
    std::string error;
    std::istringstream in(trace::dumpToString());
    ASSERT_TRUE(trace::parseTrace(in, t, &error)) << error;
    std::sort(t.events.begin(), t.events.end(), [](const trace::Event& a, const trace::Event& b) { return a.ns < b.ns; });
    for (RpcId id : ids) {
        const std::string idText = std::to_string(id);
        int64_t deliverRequest = -1, handoffRequest = -1, deliverResponse = -1, handoffResponse = -1;
        for (const auto& e : t.events) {
            auto at = [&](const std::string& prefix, int64_t* when) {
                if (*when < 0 && e.text.starts_with(prefix)) *when = e.ns;
            };
            at("deliver request id " + idText + " ", &deliverRequest);
            at("handoff request id " + idText + " ", &handoffRequest);
            at("deliver response id " + idText + " ", &deliverResponse);
            at("handoff response id " + idText + " ", &handoffResponse);
        }
        ASSERT_GE(deliverRequest, 0) << id;
        ASSERT_GE(deliverResponse, 0) << id;
        ASSERT_GE(handoffResponse, 0) << id;
        EXPECT_LE(deliverResponse, handoffResponse) << "response of " << id;
        if (handoffRequest >= 0) {
            EXPECT_LE(deliverRequest, handoffRequest) << "request of " << id;
        }
    }
}

TEST(ObserveEndpoint, FreezeDumpsTheTrace) {
    trace::clear();
    EndpointOptions so = loopback();
    std::string file = tempPath("freeze-%e.tt");
    so.freezeTraceFile = file;
    auto server = Endpoint::open(so);
    ASSERT_TRUE(server);
    ASSERT_TRUE(server->serve([](ServerRequest r) { r.respond(r.message().bytes()); }).isOk());
    auto client = Endpoint::open(loopback());
    ASSERT_TRUE(client);
    std::string expected = tempPath("freeze-" + std::to_string(server->address().port) + ".tt");
    std::remove(expected.c_str());
    trace::enable(true);
    std::vector<uint8_t> req(100, 1);
    Response r = client->call(server->address(), req);
    ASSERT_TRUE(r.status.isOk());
    ASSERT_TRUE(client->sendFreeze(server->address()).isOk());
    struct stat st;
    for (int i = 0; i < 500 && ::stat(expected.c_str(), &st) != 0; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_EQ(::stat(expected.c_str(), &st), 0) << "no dump at " << expected;
    EXPECT_FALSE(trace::enabled()) << "FREEZE stops tracing";
    EXPECT_EQ(server->metrics().get("packets_received_freeze"), 1u);
    trace::TraceFile t;
    std::string error;
    ASSERT_TRUE(trace::readTraceFile(expected, t, &error)) << error;
    bool start = false, deliver = false, freeze = false;
    std::string idText = std::to_string(r.id);
    for (const auto& e : t.events) {
        start |= e.text == "rpc start id " + idText + " len 100";
        deliver |= e.text == "deliver request id " + idText + " len 100";
        freeze |= e.text.starts_with("recv FREEZE");
    }
    EXPECT_TRUE(start && deliver && freeze) << "both ends' events (one process) and the FREEZE";
    std::vector<trace::Event> mine = trace::rpcEvents(t.events, r.id);
    EXPECT_GE(mine.size(), 6u);
    std::remove(expected.c_str());
    // Without freezeTraceFile a FREEZE is only counted.
    trace::enable(true);
    ASSERT_TRUE(server->sendFreeze(client->address()).isOk());
    for (int i = 0; i < 200 && client->metrics().get("packets_received_freeze") == 0; ++i)
        std::this_thread::sleep_for(10ms);
    EXPECT_EQ(client->metrics().get("packets_received_freeze"), 1u);
    EXPECT_TRUE(trace::enabled());
    trace::enable(false);
    trace::clear();
}

}  // namespace
}  // namespace homa
