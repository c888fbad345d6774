// Metrics snapshots and their text formats; the publisher's socket and HTTP protocols.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "client.h"
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
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ::close(fd);
        return "connect failed";
    }
    ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return out;
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
    std::string ok = httpGet(p->httpPort(), "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    EXPECT_TRUE(ok.starts_with("HTTP/1.0 200 OK\r\n")) << ok;
    EXPECT_NE(ok.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << ok;
    EXPECT_NE(ok.find("\r\n\r\n# TYPE homa_peers gauge\nhoma_peers 1\n"), std::string::npos) << ok;
    EXPECT_TRUE(httpGet(p->httpPort(), "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 404")) ;
    EXPECT_TRUE(httpGet(p->httpPort(), "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.0 405"));
    EXPECT_TRUE(httpGet(p->httpPort(), "garbage\r\n\r\n").starts_with("HTTP/1.0 400"));
    // A port in use is a clear error.
    auto again = runtime::Publisher::start("", true, p->httpPort(), fakeSources(), &err);
    EXPECT_FALSE(again);
    EXPECT_NE(err.message().find("prometheus"), std::string::npos) << err.toString();
}

TEST(Publisher, PathPatterns) {
    EXPECT_EQ(runtime::expandPath("/tmp/homa-%p-%e.sock", 4000),
              "/tmp/homa-" + std::to_string(::getpid()) + "-4000.sock");
    EXPECT_EQ(runtime::expandPath("/tmp/a%%b%", 1), "/tmp/a%%b%");
}

}  // namespace
}  // namespace homa
