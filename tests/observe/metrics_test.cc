// Metrics snapshots and their text formats; the publisher's socket and HTTP protocols.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "client.h"
#include "common/descriptor_limit.h"
#include "http_client.h"
#include "homa/metrics.h"
#include "homa/trace.h"
#include "runtime/publisher.h"
#include "trace/reader.h"

namespace homa {
namespace {

MetricsSnapshot snap(int64_t t, std::vector<std::pair<std::string, uint64_t>> c) {
    MetricsSnapshot m;
    m.timeNs = t;
    m.counters = std::move(c);
    return m;
}

TEST(Metrics, DifferenceSubtractsCountersAndKeepsGauges) {
    MetricsSnapshot a = snap(1'000, {{"packets_sent_data", 10}, {"peers", 4}, {"grants_sent", 3}});
    MetricsSnapshot b = snap(3'000, {{"packets_sent_data", 25}, {"peers", 2}, {"grants_sent", 3}, {"new_one", 7}});
    MetricsSnapshot d = b - a;
    EXPECT_EQ(d.timeNs, 2'000);
    EXPECT_EQ(d.get("packets_sent_data"), 15u);
    EXPECT_EQ(d.get("peers"), 2u) << "a gauge keeps the later level";
    EXPECT_EQ(d.get("grants_sent"), 0u);
    EXPECT_EQ(d.get("new_one"), 7u) << "missing from the earlier snapshot counts as 0";
    EXPECT_EQ(d.get("no_such"), 0u);
    ASSERT_EQ(d.counters.size(), 4u);
    EXPECT_EQ(d.counters[3].first, "new_one");
    EXPECT_TRUE(MetricsSnapshot::isGauge("buffer_bytes_in_use"));
    EXPECT_TRUE(MetricsSnapshot::isGauge("nic_queue_ns"));
    EXPECT_TRUE(MetricsSnapshot::isGauge("pacer_allowance_ns"));
    EXPECT_TRUE(MetricsSnapshot::isGauge("send_bytes_in_use"));
    EXPECT_FALSE(MetricsSnapshot::isGauge("packets_sent_data"));
}

TEST(Metrics, TextRoundTrips) {
    MetricsSnapshot a = snap(123456789, {{"packets_sent_data", 10}, {"peers", 4}, {"big", UINT64_MAX}});
    std::string text = "# time_ns 123456789\n" + a.toText();
    EXPECT_EQ(a.toText(), "packets_sent_data 10\npeers 4\nbig 18446744073709551615\n");
    std::string error;
    auto b = MetricsSnapshot::parse(text, &error);
    ASSERT_TRUE(b) << error;
    EXPECT_EQ(b->timeNs, 123456789);
    EXPECT_EQ(b->counters, a.counters);
}

TEST(Metrics, ParseRejectsBadText) {
    std::string error;
    EXPECT_FALSE(MetricsSnapshot::parse("packets 1\nno_value\n", &error));
    EXPECT_NE(error.find("line 2"), std::string::npos) << error;
    EXPECT_FALSE(MetricsSnapshot::parse("x -1\n", &error));
    EXPECT_FALSE(MetricsSnapshot::parse("x 18446744073709551616\n", &error)) << "overflow";
    EXPECT_FALSE(MetricsSnapshot::parse("Bad-Name 1\n", &error));
    EXPECT_FALSE(MetricsSnapshot::parse("# time_ns abc\n", &error));
    auto empty = MetricsSnapshot::parse("# just a comment\n\n", &error);
    ASSERT_TRUE(empty);
    EXPECT_TRUE(empty->counters.empty());
}

TEST(Metrics, PrometheusText) {
    MetricsSnapshot a = snap(0, {{"packets_sent_data", 10}, {"peers", 4}});
    EXPECT_EQ(a.toPrometheus(),
              "# TYPE homa_packets_sent_data_total counter\nhoma_packets_sent_data_total 10\n"
              "# TYPE homa_peers gauge\nhoma_peers 4\n");
    std::string labelled = a.toPrometheus("endpoint=\"127.0.0.1:4000\"");
    EXPECT_NE(labelled.find("homa_peers{endpoint=\"127.0.0.1:4000\"} 4\n"), std::string::npos) << labelled;
}

TEST(Metrics, RatesTable) {
    MetricsSnapshot a = snap(1'000'000'000, {{"packets_sent_data", 100}, {"peers", 3}, {"idle", 5}});
    MetricsSnapshot b = snap(3'000'000'000, {{"packets_sent_data", 300}, {"peers", 3}, {"idle", 5}});
    std::string t = b.ratesTable(a);
    EXPECT_NE(t.find("per second"), std::string::npos) << t;
    std::istringstream lines(t);
    std::string line, data;
    while (std::getline(lines, line))
        if (line.starts_with("packets_sent_data")) data = line;
    std::istringstream fields(data);
    std::string name, value, change, rate;
    fields >> name >> value >> change >> rate;
    EXPECT_EQ(value, "300");
    EXPECT_EQ(change, "200");
    EXPECT_EQ(rate, "100.0");
    EXPECT_EQ(t.find("idle"), std::string::npos) << "unchanged counters are left out";
    EXPECT_NE(t.find("peers"), std::string::npos) << "gauges show their level";
    EXPECT_NE(b.ratesTable(a, true).find("idle"), std::string::npos);
}

// A counter lower than in the earlier snapshot started again from zero (a restarted
// process): the table says so, and the difference counts from zero. Both wrapped to
// about 1.8e19.
TEST(Metrics, ACounterThatWentDownIsAReset) {
    MetricsSnapshot a = snap(1'000'000'000, {{"packets_sent_data", 100}});
    MetricsSnapshot b = snap(2'000'000'000, {{"packets_sent_data", 5}});
    const std::string t = b.ratesTable(a);
    EXPECT_NE(t.find("(reset)"), std::string::npos) << t;
    EXPECT_EQ(t.find("18446744073709"), std::string::npos) << t;
    EXPECT_EQ((b - a).get("packets_sent_data"), 5u);
}

TEST(Metrics, RpcTable) {
    RpcSnapshot r;
    r.peer = "127.0.0.1:4000";
    r.id = 42;
    r.state = "client";
    r.outLength = 5000;
    r.outSent = 1400;
    r.silentTicks = 3;
    r.waitingForBuffer = true;
    std::string t = formatRpcs({r});
    std::istringstream lines(t);
    std::string header, row;
    std::getline(lines, header);
    std::getline(lines, row);
    EXPECT_NE(header.find("silent"), std::string::npos);
    std::istringstream f(row);
    std::string peer, id, state, outLen, outSent;
    f >> peer >> id >> state >> outLen >> outSent;
    EXPECT_EQ(peer, "127.0.0.1:4000");
    EXPECT_EQ(id, "42");
    EXPECT_EQ(state, "client");
    EXPECT_EQ(outLen, "5000");
    EXPECT_EQ(outSent, "1400");
    EXPECT_NE(row.find("waiting-for-buffer"), std::string::npos);
}

// ---------------------------------------------------------------- publisher

std::string tempPath(const std::string& name) {
    return "/tmp/homa-observe-" + std::to_string(::getpid()) + "-" + name;
}

runtime::Publisher::Sources fakeSources() {
    runtime::Publisher::Sources s;
    s.metricsText = [] { return std::string("# time_ns 77\npackets_sent_data 5\npeers 1\n"); };
    s.rpcsText = [] { return formatRpcs({}); };
    s.prometheusText = [] { return snap(0, {{"peers", 1}}).toPrometheus(); };
    return s;
}

std::string httpGet(uint16_t port, const std::string& request) {
    return test_http::httpExchange(port, request);
}

using test_http::connectLoopback;

// A connected socket to the unix socket at `path` (-1 if the connection failed).
int connectUnix(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

size_t openDescriptors() {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

// A snapshot file must be a regular file (or the publisher's socket): /dev/zero used to
// be read until memory ran out.
TEST(Metrics, SnapshotsAreReadOnlyFromRegularFiles) {
    std::string error;
    EXPECT_FALSE(metrics_tool::readSnapshot("/dev/zero", &error));
    EXPECT_NE(error.find("/dev/zero: a character device, not a regular file"), std::string::npos) << error;
    EXPECT_FALSE(metrics_tool::readSnapshot("/tmp", &error));
    EXPECT_NE(error.find("a directory"), std::string::npos) << error;
}

TEST(Publisher, AnswersCommandsOnItsSocket) {
    std::string path = tempPath("answers.sock");
    Status err;
    auto p = runtime::Publisher::start(path, false, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    std::string error;
    auto m = metrics_tool::readSnapshot(path, &error);
    ASSERT_TRUE(m) << error;
    EXPECT_EQ(m->timeNs, 77);
    EXPECT_EQ(m->get("packets_sent_data"), 5u);
    auto r = metrics_tool::query(path, "rpcs", &error);
    ASSERT_TRUE(r) << error;
    EXPECT_NE(r->find("silent"), std::string::npos);
    EXPECT_FALSE(metrics_tool::query(path, "frobnicate", &error));
    EXPECT_NE(error.find("unknown command 'frobnicate'"), std::string::npos) << error;
    EXPECT_FALSE(metrics_tool::query(path, "trace dump /nonexistent-dir/x.tt", &error));
    EXPECT_NE(error.find("/nonexistent-dir/x.tt"), std::string::npos) << error;
    // A command longer than the limit gets an error, and the publisher goes on serving.
    EXPECT_FALSE(metrics_tool::query(path, std::string(20'000, 'x'), &error));
    EXPECT_TRUE(metrics_tool::query(path, "metrics", &error)) << error;
    p.reset();
    struct stat st;
    EXPECT_NE(::stat(path.c_str(), &st), 0) << "the socket file is removed";
    EXPECT_FALSE(metrics_tool::query(path, "metrics", &error));
}

TEST(Publisher, TraceCommandsControlTracing) {
    std::string path = tempPath("trace.sock");
    Status err;
    auto p = runtime::Publisher::start(path, false, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    std::string error;
    trace::clear();
    ASSERT_TRUE(metrics_tool::query(path, "trace on", &error)) << error;
    EXPECT_TRUE(trace::enabled());
    HOMA_TRACE("publisher test %u", 99);
    std::string out = tempPath("dump.tt");
    ASSERT_TRUE(metrics_tool::query(path, "trace dump " + out, &error)) << error;
    ASSERT_TRUE(metrics_tool::query(path, "trace off", &error)) << error;
    EXPECT_FALSE(trace::enabled());
    trace::TraceFile t;
    ASSERT_TRUE(trace::readTraceFile(out, t, &error)) << error;
    bool found = false;
    for (const auto& e : t.events) found |= e.text == "publisher test 99";
    EXPECT_TRUE(found);
    std::remove(out.c_str());
    trace::clear();
}

TEST(Publisher, ReplacesAStaleSocketButNotALiveOne) {
    std::string path = tempPath("stale.sock");
    {
        // A socket file nobody listens on (its process died).
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strcpy(a.sun_path, path.c_str());
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
        ::close(fd);
    }
    Status err;
    auto p = runtime::Publisher::start(path, false, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    auto second = runtime::Publisher::start(path, false, 0, fakeSources(), &err);
    EXPECT_FALSE(second);
    EXPECT_NE(err.message().find("in use"), std::string::npos) << err.toString();
    std::string file = tempPath("regular");
    std::ofstream(file) << "x";
    EXPECT_FALSE(runtime::Publisher::start(file, false, 0, fakeSources(), &err));
    EXPECT_NE(err.message().find("not a socket"), std::string::npos) << err.toString();
    std::remove(file.c_str());
    EXPECT_FALSE(runtime::Publisher::start("/tmp/" + std::string(200, 'a'), false, 0, fakeSources(), &err));
    EXPECT_NE(err.message().find("longer than"), std::string::npos) << err.toString();
    EXPECT_FALSE(runtime::Publisher::start("/nonexistent-dir/x.sock", false, 0, fakeSources(), &err));
}

TEST(Publisher, ServesPrometheusOverHttp) {
    Status err;
    auto p = runtime::Publisher::start("", true, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    ASSERT_NE(p->httpPort(), 0);
    const std::string body = "# TYPE homa_peers gauge\nhoma_peers 1\n";
    ASSERT_EQ(snap(0, {{"peers", 1}}).toPrometheus(), body);
    std::string ok = httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    EXPECT_TRUE(ok.starts_with("HTTP/1.1 200 OK\r\n")) << ok;
    EXPECT_NE(ok.find("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), std::string::npos) << ok;
    EXPECT_NE(ok.find("\r\nContent-Length: " + std::to_string(body.size()) + "\r\n"), std::string::npos) << ok;
    EXPECT_NE(ok.find("\r\nConnection: close\r\n"), std::string::npos) << ok;
    EXPECT_TRUE(ok.ends_with("\r\n\r\n" + body)) << ok;
    // An HTTP/1.0 client and a query string get the same page.
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.0\r\n\r\n").ends_with("\r\n\r\n" + body));
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics?x=1 HTTP/1.1\r\n\r\n").ends_with("\r\n\r\n" + body));
    // HEAD: the headers without the body.
    std::string head = httpGet(p->httpPort(), "HEAD /metrics HTTP/1.1\r\n\r\n");
    EXPECT_TRUE(head.starts_with("HTTP/1.1 200 OK\r\n")) << head;
    EXPECT_TRUE(head.ends_with("\r\n\r\n")) << head;

    std::string other = httpGet(p->httpPort(), "GET /other HTTP/1.1\r\n\r\n");
    EXPECT_TRUE(other.starts_with("HTTP/1.1 404 Not Found\r\n")) << other;
    EXPECT_TRUE(other.ends_with("\r\n\r\ntry /metrics\n")) << other;
    // Methods are checked first: a POST without a length gets 405, not the library's 400
    // after waiting for a body.
    std::string post = httpGet(p->httpPort(), "POST /metrics HTTP/1.1\r\n\r\n");
    EXPECT_TRUE(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")) << post;
    EXPECT_NE(post.find("\r\nAllow: GET, HEAD\r\n"), std::string::npos) << post;
    EXPECT_TRUE(post.ends_with("\r\n\r\nonly GET\n")) << post;
    EXPECT_TRUE(httpGet(p->httpPort(), "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
                    .starts_with("HTTP/1.1 405"));
    EXPECT_TRUE(httpGet(p->httpPort(), "DELETE /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    // What the parser rejects: a malformed request line, an unknown method or version.
    std::string garbage = httpGet(p->httpPort(), "garbage\r\n\r\n");
    EXPECT_TRUE(garbage.starts_with("HTTP/1.1 400 Bad Request\r\n")) << garbage;
    EXPECT_TRUE(garbage.ends_with("\r\n\r\nbad request\n")) << garbage;
    EXPECT_TRUE(httpGet(p->httpPort(), "FROB /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/9.9\r\n\r\n").starts_with("HTTP/1.1 400"));
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics\r\n\r\n").starts_with("HTTP/1.1 400"));
    EXPECT_TRUE(httpGet(p->httpPort(), "GET metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    EXPECT_TRUE(httpGet(p->httpPort(), "GET  /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    // Bare line feeds are accepted; headers past the request limit get 431.
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\nHost: x\n\n").ends_with("\r\n\r\n" + body));
    std::string huge = httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\nX: " + std::string(10'000, 'a'));
    EXPECT_TRUE(huge.starts_with("HTTP/1.1 431 ")) << huge;
    // A port in use is a clear error.
    auto again = runtime::Publisher::start("", true, p->httpPort(), fakeSources(), &err);
    EXPECT_FALSE(again);
    EXPECT_NE(err.message().find("prometheus"), std::string::npos) << err.toString();
    EXPECT_NE(err.message().find(std::to_string(p->httpPort())), std::string::npos) << err.toString();
    // Freed at destruction: the port can be bound again.
    uint16_t port = p->httpPort();
    p.reset();
    EXPECT_EQ(httpGet(port, "GET /metrics HTTP/1.1\r\n\r\n"), "connect failed");
    auto rebound = runtime::Publisher::start("", true, port, fakeSources(), &err);
    ASSERT_TRUE(rebound) << err.toString();
    EXPECT_EQ(rebound->httpPort(), port);
    EXPECT_TRUE(httpGet(port, "GET /metrics HTTP/1.1\r\n\r\n").ends_with(body));
}

// The process's threads: id -> blocked-signal mask (from /proc).
std::map<int, uint64_t> threadMasks() {
    std::map<int, uint64_t> out;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream in(e.path() / "status");
        std::string line;
        while (std::getline(in, line))
            if (line.starts_with("SigBlk:")) out[std::stoi(e.path().filename())] = std::stoull(line.substr(7), nullptr, 16);
    }
    return out;
}

// Creates and joins one thread, so that threads a sanitizer's runtime starts with the
// process's first new thread exist before a test takes its census of threads.
void settleThreads() {
    std::thread([] {}).join();
}

TEST(Publisher, HttpUsesFewThreadsAndLeavesSigpipeAlone) {
    settleThreads();
    struct sigaction before {}, dfl {};
    dfl.sa_handler = SIG_DFL;
    ASSERT_EQ(::sigaction(SIGPIPE, &dfl, &before), 0);
    auto base = threadMasks();
    Status err;
    std::string path = tempPath("threads.sock");
    auto p = runtime::Publisher::start(path, true, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    struct sigaction now {};
    ::sigaction(SIGPIPE, nullptr, &now);
    EXPECT_EQ(now.sa_handler, SIG_DFL) << "the program's SIGPIPE handling is not changed";
    // One thread serves both sockets.
    ASSERT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    std::string error;
    ASSERT_TRUE(metrics_tool::query(path, "metrics", &error)) << error;
    EXPECT_EQ(threadMasks().size(), base.size() + 1);
    // Clients that go away before their answer is written (reset, with the request and
    // unread bytes behind it): with SIGPIPE at its default, a write raising it would end
    // this test's process.
    for (int i = 0; i < 20; ++i) {
        int fd = connectLoopback(p->httpPort());
        ASSERT_GE(fd, 0);
        const std::string req = "GET /metrics HTTP/1.1\r\n\r\n" + std::string(100'000, 'x');
        ::send(fd, req.data(), req.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        linger reset{1, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
        ::close(fd);
    }
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    p.reset();
    EXPECT_EQ(threadMasks().size(), base.size()) << "the publisher's thread is joined";
    ::sigaction(SIGPIPE, &before, nullptr);
}

TEST(Publisher, HttpStopsWithoutLeakingThreads) {
    settleThreads();
    // Stopped before its listening loop has started: no hang, no leaked thread.
    size_t base = threadMasks().size();
    for (int i = 0; i < 50; ++i) {
        Status err;
        auto p = runtime::Publisher::start(i % 2 ? tempPath("stop.sock") : "", true, 0, fakeSources(), &err);
        ASSERT_TRUE(p) << err.toString();
    }
    EXPECT_EQ(threadMasks().size(), base);
    // Stopped while clients hold connections open without finishing a request (the
    // publisher does not wait for them; no timing is asserted here).
    Status err;
    auto p = runtime::Publisher::start("", true, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    std::vector<int> idle;
    auto stall = [&](const char* partial) {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(p->httpPort());
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
        ::send(fd, partial, std::strlen(partial), MSG_NOSIGNAL);
        idle.push_back(fd);
    };
    // A stalled client holds up no other.
    stall("");
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    stall("GET /metr");
    stall("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    p.reset();
    EXPECT_EQ(threadMasks().size(), base);
    for (int fd : idle) ::close(fd);
}

// A request line that never ends is cut off at the request limit: the publisher neither
// keeps the bytes (memory) nor the connection.
TEST(Publisher, AnHttpRequestThatNeverEndsIsCutOff) {
    Status err;
    auto p = runtime::Publisher::start("", true, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    int fd = connectLoopback(p->httpPort());
    ASSERT_GE(fd, 0);
    timeval limit{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
    const std::string chunk(64 * 1024, 'a');
    size_t sent = 0;
    while (sent < (256u << 20)) {
        ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
        if (n <= 0) break;
        sent += static_cast<size_t>(n);
    }
    EXPECT_LT(sent, 256u << 20) << "the publisher read a 256 MB request line without cutting it off";
    // What came back: a 431, then the end of the stream (or a reset, the client's bytes
    // being left unread).
    timeval wait{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
    std::string answer;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) answer.append(buf, static_cast<size_t>(n));
    EXPECT_TRUE(n == 0 || errno == ECONNRESET) << std::strerror(errno);
    EXPECT_TRUE(answer.empty() || answer.starts_with("HTTP/1.1 431 ")) << answer.substr(0, 100);
    ::close(fd);
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
}

// Clients that send a byte now and then, never finishing a request, neither keep other
// clients from being answered nor hold up the publisher's end, on either socket.
TEST(Publisher, DribblingClientsHoldNeitherOtherClientsNorShutdown) {
    std::string path = tempPath("dribble.sock");
    Status err;
    auto p = runtime::Publisher::start(path, true, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    std::vector<int> fds;
    for (int i = 0; i < 4; ++i) {
        int fd = i % 2 ? connectUnix(path) : connectLoopback(p->httpPort());
        ASSERT_GE(fd, 0);
        fds.push_back(fd);
    }
    std::atomic<bool> stop{false};
    std::thread dribbler([&] {
        // A header byte every 100 ms, for 30 s at most (a test that fails must end).
        const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        ::send(fds[0], "GET /metrics HTTP/1.1\r\n", 23, MSG_NOSIGNAL);
        ::send(fds[2], "GET /metrics HTTP/1.1\r\n", 23, MSG_NOSIGNAL);
        while (!stop && std::chrono::steady_clock::now() < end) {
            for (int fd : fds) ::send(fd, "x", 1, MSG_NOSIGNAL);
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    // Answered while the dribblers go on (an exchange gives up after 10 s of silence).
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    std::string error;
    EXPECT_TRUE(metrics_tool::query(path, "metrics", &error)) << error;
    const auto before = std::chrono::steady_clock::now();
    p.reset();
    const auto took = std::chrono::steady_clock::now() - before;
    const bool dribbling = !stop;  // (the dribbler gives up by itself after 30 s)
    stop = true;
    dribbler.join();
    for (int fd : fds) ::close(fd);
    EXPECT_LT(took, std::chrono::seconds(20)) << "the publisher waited for the dribbling clients to stop";
    EXPECT_TRUE(dribbling);
}

// Idle connections beyond a small number wait in the kernel's backlog, not in the
// process's descriptor table.
TEST(Publisher, IdleConnectionsDoNotTakeTheProcessDescriptors) {
    Status err;
    auto p = runtime::Publisher::start("", true, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    ASSERT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    const size_t base = openDescriptors();
    std::vector<int> fds;
    // (More than the publisher serves at once, fewer than it and its backlog hold, so no
    // connect waits for a retried SYN.)
    for (size_t i = 0; i < 80; ++i) {
        int fd = connectLoopback(p->httpPort());
        if (fd < 0) break;
        fds.push_back(fd);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // time to accept them all
    const size_t used = openDescriptors() - base;
    EXPECT_LE(used, fds.size() + runtime::Publisher::kMaxConnections + 4) << "the publisher took " << used - fds.size() << " descriptors";
    for (int fd : fds) ::close(fd);
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
}

// The stat file of this process's thread named `name`, opened (-1 if none).
int openThreadStat(const std::string& name) {
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream comm(e.path() / "comm");
        std::string c;
        std::getline(comm, c);
        if (c == name) return ::open((e.path() / "stat").c_str(), O_RDONLY | O_CLOEXEC);
    }
    return -1;
}

// The CPU time (user and system, in clock ticks) in a thread's open stat file; read
// without opening anything, so that it works out of descriptors.
long threadTicks(int statFd) {
    char buf[1024];
    const ssize_t n = ::pread(statFd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    std::istringstream rest(std::string(buf).substr(std::string(buf).rfind(')') + 2));
    std::string field;
    long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stol(field);
        if (i == 15) stime = std::stol(field);
    }
    return utime + stime;
}

// Out of descriptors, a connection waiting to be accepted does not make the publisher
// spin (its listening socket stays readable while accept fails); once descriptors are
// back, the connection is served.
TEST(Publisher, OutOfDescriptorsItWaitsInsteadOfSpinning) {
#if defined(__SANITIZE_ADDRESS__)
    // (UBSan's type checks open a pipe of their own to look at memory: out of
    // descriptors, they report every object as invalid.)
    GTEST_SKIP() << "the sanitizers' runtime needs descriptors of its own";
#endif
    Status err;
    auto p = runtime::Publisher::start("", true, 0, fakeSources(), &err);
    ASSERT_TRUE(p) << err.toString();
    ASSERT_TRUE(httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(p->httpPort());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int stat = openThreadStat("homa-metrics");
    ASSERT_GE(stat, 0);
    long used;
    {
        test::DescriptorLimit limit(0);
        ASSERT_TRUE(limit.ok());
        ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);  // (in the backlog)
        const long before = threadTicks(stat);
        ASSERT_GE(before, 0);
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        used = threadTicks(stat) - before;
    }
    ::close(stat);
    EXPECT_LT(used, sysconf(_SC_CLK_TCK) / 10) << "ticks of CPU in 0.5 s out of descriptors";
    const std::string get = "GET /metrics HTTP/1.1\r\n\r\n";
    ASSERT_EQ(::send(fd, get.data(), get.size(), MSG_NOSIGNAL), static_cast<ssize_t>(get.size()));
    timeval wait{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
    char buf[64] = {};
    EXPECT_GT(::recv(fd, buf, sizeof(buf) - 1, 0), 0);
    EXPECT_TRUE(std::string(buf).starts_with("HTTP/1.1 200")) << buf;
    ::close(fd);
}

// An answer that took most of a connection's time to make is still read whole: the
// answer has a connection's time of its own. (The unix socket's answers have no length:
// one cut short would be taken for all of it.)
TEST(Publisher, ASlowAnswerIsReadWhole) {
    std::string path = tempPath("slow.sock");
    runtime::Publisher::Sources sources = fakeSources();
    const std::string big(1 << 20, 'm');
    sources.rpcsText = [&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(runtime::Publisher::kConnectionMs - 200));
        return big;
    };
    Status err;
    auto p = runtime::Publisher::start(path, false, 0, sources, &err);
    ASSERT_TRUE(p) << err.toString();
    int fd = connectUnix(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::send(fd, "rpcs\n", 5, MSG_NOSIGNAL), 5);
    timeval wait{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
    std::string answer;
    std::vector<char> buf(64 * 1024);
    ssize_t n;
    while ((n = ::recv(fd, buf.data(), buf.size(), 0)) > 0) {
        answer.append(buf.data(), static_cast<size_t>(n));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a slow reader: about 0.8 s
    }
    ::close(fd);
    EXPECT_EQ(answer.size(), big.size());
}

TEST(Publisher, PathPatterns) {
    EXPECT_EQ(runtime::expandPath("/tmp/homa-%p-%e.sock", 4000),
              "/tmp/homa-" + std::to_string(::getpid()) + "-4000.sock");
    EXPECT_EQ(runtime::expandPath("/tmp/a%%b%", 1), "/tmp/a%%b%");
}

}  // namespace
}  // namespace homa
