// homa-perf: options, statistics, JSON output, and local runs end to end.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "perf/perf.h"
#include "perf/stats.h"
#include "perf/transport.h"
#include "common/slowdown_plot.h"

namespace homa::perf {
namespace {

bool parse(std::vector<std::string> args, PerfOptions* o, std::string* error) {
    std::vector<char*> argv;
    static std::string name = "homa-perf";
    argv.push_back(name.data());
    for (auto& a : args) argv.push_back(a.data());
    bool help = false;
    return parseOptions(static_cast<int>(argv.size()), argv.data(), o, error, &help);
}

TEST(PerfOptions, ClientOptionsAreParsed) {
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"client", "--servers", "10.0.0.2:4000,10.0.0.3:4000", "--workload", "w4", "--client-max",
                       "32", "--duration", "2.5", "--protocol", "tcp", "--one-way", "--json", "x.json"},
                      &o, &e))
        << e;
    EXPECT_EQ(o.role, "client");
    EXPECT_EQ(o.servers.size(), 2u);
    EXPECT_EQ(o.workload, "w4");
    EXPECT_EQ(o.clientMax, 32);
    EXPECT_DOUBLE_EQ(o.duration, 2.5);
    EXPECT_EQ(o.protocol, "tcp");
    EXPECT_TRUE(o.oneWay);
    EXPECT_EQ(o.json, "x.json");
    PerfOptions h;
    ASSERT_TRUE(parse({"local", "--unsched-bytes", "10000", "--max-incoming", "100000", "--overcommit", "2",
                       "--buffer-mb", "256"},
                      &h, &e))
        << e;
    EXPECT_EQ(h.bufferMb, 256u);
    EXPECT_EQ(h.unschedBytes, 10'000u);
    EXPECT_EQ(h.maxIncoming, 100'000u);
    EXPECT_EQ(h.overcommit, 2);
    EXPECT_EQ(h.adaptivePollUs, 50u) << "the endpoint's default";
    PerfOptions a;
    ASSERT_TRUE(parse({"local", "--adaptive-poll-us", "0"}, &a, &e)) << e;
    EXPECT_EQ(a.adaptivePollUs, 0u);
    EXPECT_DOUBLE_EQ(a.linkGbps, EndpointOptions::defaultProtocolOptions().linkMbps / 1000.0)
        << "slowdowns and the pacer assume the library's link unless told otherwise";
    EXPECT_DOUBLE_EQ(a.nicQueueUs, 0.0) << "the library's default";
    PerfOptions l;
    ASSERT_TRUE(parse({"server", "--link-gbps", "100", "--nic-queue-us", "2.5"}, &l, &e)) << e;
    EXPECT_DOUBLE_EQ(l.linkGbps, 100.0) << "a server paces its responses too";
    EXPECT_DOUBLE_EQ(l.nicQueueUs, 2.5);
}

TEST(PerfOptions, BadOptionsGiveOneLineErrors) {
    const std::vector<std::vector<std::string>> bad = {
        {"client"},                                                // no --servers
        {"client", "--servers", "nonsense"},                       // not an address
        {"client", "--servers", "1.2.3.4"},                        // no port
        {"client", "--servers", "1.2.3.4:5", "--protocol", "udp"}, // unknown protocol
        {"client", "--servers", "1.2.3.4:5", "--duration", "-1"},
        {"client", "--servers", "1.2.3.4:5", "--client-max", "0"},
        {"server", "--bind", "300.1.1.1"},
        {"local", "--max-length", "2"},
        {"local", "--busy-poll-us", "2000000"},
        {"local", "--busy-poll-us", "soon"},
        {"local", "--adaptive-poll-us", "2000000"},
        {"local", "--adaptive-poll-us", "-1"},
        {"local", "--adaptive-poll-us", "briefly"},
        {"local", "--no-engine-cpu-time=maybe"},
        {"local", "--calls", "sometimes"},
        {"local", "--unsched-bytes", "0"},
        {"local", "--max-incoming", "-5"},
        {"local", "--overcommit", "65"},
        {"local", "--buffer-mb", "0"},
        {"local", "--send-buffer-mb", "0"},
        {"local", "--send-buffer-mb", "lots"},
        {"local", "--send-buffer-mb", "-1"},
        {"local", "--drain", "-1"},
        {"local", "--drain", "3601"},
        {"local", "--drain", "later"},
        {"local", "--link-gbps", "0"},
        {"local", "--link-gbps", "fast"},
        {"local", "--link-gbps", "20000"},
        {"server", "--link-gbps", "-1"},
        {"local", "--nic-queue-us", "0"},
        {"local", "--nic-queue-us", "-5"},
        {"local", "--nic-queue-us", "short"},
        {"local", "--calls", "sync", "--protocol", "tcp"},  // the TCP baseline is event driven
        {"local", "--calls", "sync", "--gbps", "1"},        // synchronous calls are a closed loop
        {"local", "--calls", "sync", "--client-max", "1025"},  // a thread per call: at most 1,024
        // NaN passes a plain range check (every comparison with it is false): a NaN
        // duration aborted (std::length_error), a NaN rate made undefined conversions.
        {"local", "--duration", "nan"},
        {"local", "--gbps", "nan"},
        {"local", "--drain", "nan"},
        {"local", "--link-gbps", "nan"},
        {"local", "--nic-queue-us", "nan"},
        {"local", "--base-rtt-us", "nan"},
        {"local", "--duration", "inf"},
        {"client", "--servers", "127.0.0.1:4000,[::1]:4000"},  // one socket: one address family
        {"client", "--servers", "[::1]:4000,127.0.0.1:4000"},
        {"server", "--port", "65535", "--server-ports", "3"},  // ports past 65535
        {"server", "--port", "65000", "--server-ports", "537"},
        {"server", "--max-length", "3"},
        {"frobnicate"},
        {},
    };
    for (const auto& args : bad) {
        PerfOptions o;
        std::string e;
        EXPECT_FALSE(parse(args, &o, &e)) << "accepted: " << ::testing::PrintToString(args);
        EXPECT_FALSE(e.empty());
        EXPECT_EQ(e.find('\n'), std::string::npos) << "not one line: " << e;
    }
}

// An open loop's cap on calls in flight only bounds memory: unless it is given, it is
// high enough not to skip arrivals in usual runs (it was the closed loop's 16, which skipped
// a seventh of a W4 load at 2 Gbps). A server takes --max-length: the largest message
// it accepts.
TEST(PerfOptions, OpenLoopCapAndServerMessageLimit) {
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"local", "--gbps", "2"}, &o, &e)) << e;
    EXPECT_EQ(o.clientMax, kOpenLoopMaxInFlight);
    PerfOptions capped;
    ASSERT_TRUE(parse({"local", "--gbps", "2", "--client-max", "8"}, &capped, &e)) << e;
    EXPECT_EQ(capped.clientMax, 8);
    PerfOptions closed;
    ASSERT_TRUE(parse({"client", "--servers", "10.0.0.1:4000"}, &closed, &e)) << e;
    EXPECT_EQ(closed.clientMax, 16);
    PerfOptions server;
    ASSERT_TRUE(parse({"server", "--max-length", "4000000", "--server-threads", "3"}, &server, &e)) << e;
    EXPECT_EQ(server.maxLength, 4'000'000u);
    EXPECT_EQ(server.serverThreads, 3);
}

TEST(PerfStats, PercentileIsNearestRank) {
    std::vector<double> v = {5, 1, 4, 2, 3, 10, 9, 8, 7, 6};
    EXPECT_EQ(percentile(v, 50), 5);
    EXPECT_EQ(percentile(v, 90), 9);
    EXPECT_EQ(percentile(v, 99), 10);
    EXPECT_EQ(percentile(v, 0), 1);
    std::vector<double> empty;
    EXPECT_EQ(percentile(empty, 50), 0);
}

TEST(PerfStats, BucketsAndSlowdownByHand) {
    // Base RTT 10 us, 8 Gbps link: 1,000 wire bytes take 1 us.
    SlowdownModel m{10, 8};
    std::vector<Sample> s = {
        {100, 1000, 11'000},   // ideal 11 us: slowdown 1.0
        {100, 1000, 22'000},   // 2.0
        {5000, 10000, 40'000}, // ideal 20 us: 2.0
        {5000, 10000, 80'000}, // 4.0
        {9000, 10000, 20'000}, // 1.0
    };
    auto b = bucketize(s, {1000, 10000}, m);
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(b[0].count, 2u);
    EXPECT_DOUBLE_EQ(b[0].slowdownP50, 1.0);
    EXPECT_DOUBLE_EQ(b[0].slowdownP99, 2.0);
    EXPECT_DOUBLE_EQ(b[0].rttP50Us, 11.0);
    EXPECT_EQ(b[1].count, 3u);
    EXPECT_DOUBLE_EQ(b[1].slowdownP50, 2.0);
    EXPECT_DOUBLE_EQ(b[1].slowdownP99, 4.0);
    EXPECT_DOUBLE_EQ(b[1].rttP99Us, 80.0);
}

// Errors are counted by kind: a library status's name, or a TCP error's text up to its
// first ": " (an address's colons do not count).
TEST(PerfStats, ErrorKindIsTheTextBeforeTheFirstColon) {
    EXPECT_EQ(errorKind("timeout: no response from 10.0.0.2:4000 for 100 ms"), "timeout");
    EXPECT_EQ(errorKind("aborted: the server will not serve this request: it has used its id"), "aborted");
    EXPECT_EQ(errorKind("stopped"), "stopped");
    EXPECT_EQ(errorKind("cannot connect to 10.0.0.2:4000: Connection refused"), "cannot connect to 10.0.0.2:4000");
    EXPECT_EQ(errorKind("cannot connect to [::1]:4000: Connection refused"), "cannot connect to [::1]:4000");
    EXPECT_EQ(errorKind(""), "unknown");
    EXPECT_EQ(errorKind(": nothing before"), "unknown");
}

TEST(PerfStats, DecileBoundsFollowTheCdf) {
    std::vector<uint32_t> sizes = {10, 20, 1000};
    std::vector<double> cum = {0.5, 0.95, 1.0};
    auto b = decileBounds(sizes, cum);
    std::vector<uint32_t> want = {10, 20, 1000};
    EXPECT_EQ(b, want);
}

std::string tempPath(const char* name) {
    return std::string(::testing::TempDir()) + "/" + name + "-" + std::to_string(getpid()) + ".json";
}

void checkSchema(const nlohmann::json& j, const std::string& protocol) {
    EXPECT_EQ(j["tool"], "homa-perf");
    EXPECT_EQ(j["schema"], 1);
    EXPECT_EQ(j["options"]["protocol"], protocol);
    for (const char* k : {"machine", "base_rtt_us", "intervals", "totals", "buckets"}) EXPECT_TRUE(j.contains(k)) << k;
    EXPECT_GT(j["totals"]["rpcs"].get<uint64_t>(), 0u);
    EXPECT_EQ(j["totals"]["errors"].get<uint64_t>(), 0u);
    EXPECT_TRUE(j["totals"]["errors_by_kind"].is_object());
    EXPECT_TRUE(j["totals"]["errors_by_kind"].empty());
    uint64_t counted = 0;
    for (const auto& b : j["buckets"]) {
        for (const char* k : {"max_size", "count", "rtt_p50_us", "rtt_p99_us", "slowdown_p50", "slowdown_p99"})
            EXPECT_TRUE(b.contains(k)) << k;
        counted += b["count"].get<uint64_t>();
    }
    EXPECT_EQ(counted, j["totals"]["rpcs"].get<uint64_t>() + j["totals"]["completed_after_end"].get<uint64_t>());
    EXPECT_GE(j["intervals"].size(), 1u);
}

// Runs `homa-perf local` with `args` plus --json and --quiet; returns the JSON it wrote
// (null if the run failed).
nlohmann::json runLocalJson(std::vector<std::string> args, const std::string& name) {
    std::string path = tempPath(name.c_str());
    args.insert(args.begin(), "local");
    for (std::string a : {"--json", path.c_str(), "--quiet"}) args.push_back(a);
    PerfOptions o;
    std::string e;
    EXPECT_TRUE(parse(args, &o, &e)) << e;
    const int status = runLocal(o);
    nlohmann::json j;
    if (status == 0) {
        std::ifstream f(path);
        j = nlohmann::json::parse(f);
    }
    std::remove(path.c_str());  // (each run of the suite would leave its files behind)
    return status == 0 ? j : nullptr;
}

TEST(PerfLocal, HomaEndToEndWritesJson) {
    nlohmann::json j = runLocalJson({"--workload", "w2", "--duration", "1.2", "--client-max", "8"}, "homa");
    ASSERT_FALSE(j.is_null());
    checkSchema(j, "homa");
    EXPECT_TRUE(j["options"]["capped"].get<bool>()) << "w2 reaches 3.5 MB: capped at 1 MB";
}

// --link-gbps is the link Homa's pacer sends at, not only the one slowdowns assume: one
// 1 MB message after another against a 0.5 Gbps link cannot move faster than that (the
// pacer lets 5 us of the link queue up, nothing more), however fast the machine. (It was
// only the slowdowns' link: the pacer stayed at 25 Gbps, which loopback reaches.)
TEST(PerfLocal, TheLinkBandwidthPacesHoma) {
    nlohmann::json j = runLocalJson({"--workload", "1000000", "--one-way", "--client-max", "1", "--duration", "1",
                                     "--link-gbps", "0.5", "--base-rtt-us", "20"},
                                    "paced");
    ASSERT_FALSE(j.is_null());
    EXPECT_DOUBLE_EQ(j["options"]["link_gbps"].get<double>(), 0.5);
    EXPECT_DOUBLE_EQ(j["options"]["nic_queue_us"].get<double>(), 5.0);
    EXPECT_GE(j["totals"]["rpcs"].get<uint64_t>(), 5u);
    EXPECT_LE(j["totals"]["gbps_out"].get<double>(), 0.5 * 1.02);
}

// Calls still in flight when the load ends: those that finish while the run waits for
// them count in the round trips but not in the rate; those still in flight when it stops
// waiting (--drain) are unfinished, not errors. (They were counted as errors, with the
// shutdown's status, and the late ones in the rate.) The server takes 40 ms per request
// on one thread, so four calls are always in flight. Synchronous callers too: the wait
// ends their calls (it waited for them however long they took).
TEST(PerfLocal, CallsInFlightAtTheEndAreNeitherInTheRateNorErrors) {
    struct Case {
        const char* drain;
        const char* calls;
    };
    for (const Case& k : {Case{"0", "async"}, Case{"2", "async"}, Case{"0", "sync"}}) {
        const std::string name = std::string("drain-") + k.drain + "-" + k.calls;
        nlohmann::json j = runLocalJson({"--workload", "100", "--duration", "1.1", "--client-max", "4", "--calls",
                                         k.calls, "--server-work-us", "40000", "--base-rtt-us", "20", "--drain",
                                         k.drain},
                                        name);
        ASSERT_FALSE(j.is_null()) << name;
        checkSchema(j, "homa");
        const auto& t = j["totals"];
        const uint64_t rpcs = t["rpcs"].get<uint64_t>();
        EXPECT_GE(rpcs, 3u) << name;
        EXPECT_LE(rpcs, 30u) << name << ": more than one thread's 40 ms requests fit in 1.1 s";
        // (No call starts after the end: the four in flight then are all there is.)
        EXPECT_EQ(t["completed_after_end"].get<uint64_t>() + t["unfinished"].get<uint64_t>(), 4u) << name;
        if (std::string(k.drain) == "0") {
            // (One may finish in the moment between the end and the end of the wait.)
            EXPECT_GE(t["unfinished"].get<uint64_t>(), 3u) << name;
        } else {
            EXPECT_EQ(t["unfinished"].get<uint64_t>(), 0u) << name << ": four 40 ms requests take 2 s?";
        }
        EXPECT_EQ(j["options"]["drain_s"].get<double>(), std::atof(k.drain));
    }
}

// One outstanding RPC: synchronous calls on one thread by default; --calls async keeps
// the callback-driven loop. The JSON says which ran, and both complete RPCs.
TEST(PerfLocal, OneOutstandingRpcUsesSynchronousCallsUnlessAsked) {
    for (const char* mode : {"auto", "async", "sync"}) {
        nlohmann::json j = runLocalJson({"--workload", "64", "--duration", "1.1", "--client-max", "1", "--calls", mode},
                                        std::string("calls-") + mode);
        ASSERT_FALSE(j.is_null()) << mode;
        checkSchema(j, "homa");
        EXPECT_EQ(j["options"]["calls"], std::string(mode) == "async" ? "async" : "sync") << mode;
        EXPECT_GT(j["totals"]["rpcs"].get<uint64_t>(), 10u) << mode;
    }
}

TEST(PerfLocal, TcpEndToEndWritesJson) {
    nlohmann::json j = runLocalJson({"--protocol", "tcp", "--workload", "1000", "--duration", "1.2", "--client-max",
                                     "8", "--tcp-conns", "2"},
                                    "tcp");
    ASSERT_FALSE(j.is_null());
    checkSchema(j, "tcp");
    // The unloaded round trip that slowdowns divide by is measured the same way for both
    // protocols, with synchronous calls (TCP's once went through its epoll thread and a
    // condition variable, which doubled it and halved every TCP slowdown).
    EXPECT_EQ(j["base_rtt_method"], "sync");
    nlohmann::json h = runLocalJson({"--workload", "1000", "--duration", "1.1", "--client-max", "8"}, "homa-base");
    ASSERT_FALSE(h.is_null());
    EXPECT_EQ(h["base_rtt_method"], "sync");
    nlohmann::json given = runLocalJson({"--protocol", "tcp", "--workload", "1000", "--duration", "1.1",
                                         "--base-rtt-us", "30"},
                                        "tcp-given");
    ASSERT_FALSE(given.is_null());
    EXPECT_EQ(given["base_rtt_method"], "given");
    EXPECT_EQ(given["base_rtt_us"], 30.0);
}

// A receive pool too small for the largest message is refused before any traffic, with
// the library's reason, and the run fails; one that holds it runs and says so in the JSON.
TEST(PerfLocal, BufferPoolTooSmallForTheLargestMessageIsRefused) {
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"local", "--workload", "64", "--duration", "0.3", "--buffer-mb", "1", "--quiet"}, &o, &e)) << e;
    testing::internal::CaptureStderr();
    EXPECT_NE(runLocal(o), 0);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("maxBufferBytes"), std::string::npos) << err;
    nlohmann::json j = runLocalJson({"--workload", "64", "--duration", "1.1", "--buffer-mb", "8"}, "pool8");
    ASSERT_FALSE(j.is_null());
    EXPECT_EQ(j["options"]["buffer_mb"], 8);
}

// More calls than the client's memory for messages in flight holds: the transport
// refuses the rest at once, and the closed loop starts them again as others finish. It
// once restarted each refused call from inside its own failure callback, which failed
// again at once: a recursion that overflowed the stack.
TEST(PerfLocal, CallsBeyondTheSendMemoryAreRefusedAndRetriedNotErrors) {
    nlohmann::json j = runLocalJson({"--workload", "100000", "--duration", "1.2", "--client-max", "64",
                                     "--send-buffer-mb", "1", "--max-length", "100000"},
                                    "refused");
    ASSERT_FALSE(j.is_null());
    checkSchema(j, "homa");
    EXPECT_EQ(j["options"]["send_buffer_mb"], 1);
    EXPECT_GT(j["totals"]["refused"].get<uint64_t>(), 0u);
}

// Send memory too small for the largest message is refused before any traffic, with the
// library's reason.
TEST(PerfLocal, SendMemoryTooSmallForTheLargestMessageIsRefused) {
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"local", "--workload", "4000000", "--max-length", "4000000", "--send-buffer-mb", "1",
                       "--duration", "0.3", "--quiet"},
                      &o, &e))
        << e;
    testing::internal::CaptureStderr();
    EXPECT_NE(runLocal(o), 0);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("maxOutgoingBytes"), std::string::npos) << err;
}

TEST(PerfPlot, QuotesAreEscapedForGnuplot) {
    EXPECT_EQ(tools::gnuplotQuoted("w1"), "'w1'");
    EXPECT_EQ(tools::gnuplotQuoted("Homa's W1"), "'Homa''s W1'");
}

// Two runs' JSON files make one PNG; the working files go (they were left in /tmp by
// every plot before), and a title with a quote in it does not break the script, nor a
// quote or a space in $TMPDIR.
TEST(PerfPlot, DrawsThePngAndLeavesNoWorkingFiles) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(::testing::TempDir()) / ("perf-plot-" + std::to_string(getpid()));
    const char* kTmp = "t'm p";  // a quote and a space: quoted for gnuplot and the shell
    fs::remove_all(dir);
    fs::create_directories(dir / kTmp);
    for (const char* protocol : {"homa", "tcp"}) {
        nlohmann::json j = {{"tool", "homa-perf"},
                            {"options", {{"protocol", protocol}, {"workload", "w1"}, {"client_max", 8}}},
                            {"buckets", nlohmann::json::array({{{"max_size", 64}, {"count", 10}, {"slowdown_p99", 2.5}},
                                                               {{"max_size", 1000}, {"count", 0}, {"slowdown_p99", 0}},
                                                               {{"max_size", 9000}, {"count", 5}, {"slowdown_p99", 4.0}}})}};
        std::ofstream((dir / (std::string(protocol) + ".json")).string()) << j.dump();
    }
    const char* oldTmp = std::getenv("TMPDIR");
    const std::string savedTmp = oldTmp ? oldTmp : "";
    setenv("TMPDIR", (dir / kTmp).c_str(), 1);
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"plot", (dir / "homa.json").string(), (dir / "tcp.json").string(), "-o",
                       (dir / "p.png").string(), "--title", "Homa's W1"},
                      &o, &e))
        << e;
    testing::internal::CaptureStdout();
    const int rc = runPlot(o);
    testing::internal::GetCapturedStdout();
    // Not homa-perf JSON: refused with its name.
    std::ofstream((dir / "bad.json").string()) << "{\"tool\": \"homa-sim\"}";
    PerfOptions bad;
    ASSERT_TRUE(parse({"plot", (dir / "bad.json").string(), "-o", (dir / "q.png").string()}, &bad, &e)) << e;
    testing::internal::CaptureStderr();
    const int badRc = runPlot(bad);
    const std::string badErr = testing::internal::GetCapturedStderr();
    if (oldTmp) setenv("TMPDIR", savedTmp.c_str(), 1); else unsetenv("TMPDIR");
    EXPECT_EQ(rc, 0);
    std::ifstream png((dir / "p.png").string(), std::ios::binary);
    char magic[4] = {};
    png.read(magic, 4);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG");
    EXPECT_TRUE(fs::is_empty(dir / kTmp)) << "working files left in " << (dir / kTmp);
    EXPECT_NE(badRc, 0);
    EXPECT_NE(badErr.find("bad.json"), std::string::npos) << badErr;
    EXPECT_FALSE(fs::exists(dir / "q.png"));
    fs::remove_all(dir);
}

// Inputs whose buckets are all empty, and a $TMPDIR that is not there: one-line errors,
// no PNG, and no working files left (gnuplot failed on an empty range and kept them).
TEST(PerfPlot, NothingToPlotAndNoTemporaryDirectoryAreClearErrors) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(::testing::TempDir()) / ("perf-plot-bad-" + std::to_string(getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir / "tmp");
    nlohmann::json j = {{"tool", "homa-perf"},
                        {"options", {{"protocol", "homa"}, {"workload", "w1"}, {"client_max", 8}}},
                        {"buckets", nlohmann::json::array({{{"max_size", 64}, {"count", 0}, {"slowdown_p99", 0}}})}};
    std::ofstream((dir / "empty.json").string()) << j.dump();
    const char* oldTmp = std::getenv("TMPDIR");
    const std::string savedTmp = oldTmp ? oldTmp : "";
    auto plot = [&](const std::string& tmp, std::string* err) {
        setenv("TMPDIR", tmp.c_str(), 1);
        PerfOptions o;
        std::string e;
        EXPECT_TRUE(parse({"plot", (dir / "empty.json").string(), "-o", (dir / "p.png").string()}, &o, &e)) << e;
        testing::internal::CaptureStderr();
        const int rc = runPlot(o);
        *err = testing::internal::GetCapturedStderr();
        return rc;
    };
    std::string err;
    const int emptyRc = plot((dir / "tmp").string(), &err);
    const std::string emptyErr = err;
    // (A JSON with samples, so that only the missing directory stops it.)
    j["buckets"][0]["count"] = 5;
    j["buckets"][0]["slowdown_p99"] = 2.0;
    std::ofstream((dir / "empty.json").string()) << j.dump();
    const int noDirRc = plot((dir / "missing").string(), &err);
    if (oldTmp) setenv("TMPDIR", savedTmp.c_str(), 1); else unsetenv("TMPDIR");
    EXPECT_NE(emptyRc, 0);
    EXPECT_NE(emptyErr.find("no message-size bucket has samples"), std::string::npos) << emptyErr;
    EXPECT_TRUE(fs::is_empty(dir / "tmp"));
    EXPECT_NE(noDirRc, 0);
    EXPECT_NE(err.find("cannot make a temporary directory under " + (dir / "missing").string()), std::string::npos)
        << err;
    EXPECT_FALSE(fs::exists(dir / "p.png"));
    fs::remove_all(dir);
}

TEST(PerfClient, AMissingServerIsAClearErrorWithinSeconds) {
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"client", "--servers", "127.0.0.1:9", "--duration", "1"}, &o, &e)) << e;
    auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(runClient(o), 1);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

nlohmann::json readJson(const std::string& path) {
    std::ifstream f(path);
    nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
    std::remove(path.c_str());
    return j;
}

// The TCP baseline fails a call at once on a connection its server closed, on the
// calling thread. The closed loop started the next call from inside that failure's
// completion, which failed at once too, and so on until the stack overflowed: a crash
// moments after a server went away. Failed calls are now counted by kind, and their
// slots start again from the run loop (at most one failure per slot per 10 ms).
TEST(PerfClient, ATcpServerThatGoesAwayGivesErrorsByKindNotACrash) {
    std::string err;
    std::unique_ptr<ServerTransport> server = makeTcpServer(*Address::parse("127.0.0.1:0"), 1, TcpOptions{}, &err);
    ASSERT_TRUE(server) << err;
    const std::string path = tempPath("tcp-gone");
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"client", "--protocol", "tcp", "--servers", server->addresses()[0].toString(), "--workload",
                       "100", "--duration", "1.5", "--base-rtt-us", "20", "--json", path, "--quiet"},
                      &o, &e))
        << e;
    int rc = -1;
    std::thread client([&] { rc = runClient(o); });
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    server->stop();  // (its threads close their connections)
    client.join();
    EXPECT_EQ(rc, 0) << "calls completed before the server went";
    const nlohmann::json j = readJson(path);
    ASSERT_TRUE(j.is_object());
    const auto& t = j["totals"];
    const uint64_t errors = t["errors"].get<uint64_t>();
    EXPECT_GT(t["rpcs"].get<uint64_t>(), 0u);
    EXPECT_GT(errors, 0u);
    uint64_t byKind = 0;
    for (const auto& [kind, n] : t["errors_by_kind"].items()) {
        EXPECT_FALSE(kind.empty());
        byKind += n.get<uint64_t>();
    }
    EXPECT_EQ(byKind, errors);
    // 16 slots, one failure each per 10 ms for the last second at most (with room).
    EXPECT_LE(errors, 16u * 150u) << "failed calls are started again as fast as they fail";
}

// A TCP server that takes connections but never answers is reported within seconds,
// before the run (the client waited out three 5 s timeouts, ran the load, waited 10 s
// more for calls in flight and exited with no word on why, "base RTT 0.0 us" included).
TEST(PerfClient, ATcpServerThatDoesNotAnswerIsAClearErrorWithinSeconds) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    ASSERT_EQ(::listen(fd, 16), 0);  // (connections complete in the backlog, nobody reads them)
    socklen_t len = sizeof(sa);
    ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"client", "--protocol", "tcp", "--servers", "127.0.0.1:" + std::to_string(ntohs(sa.sin_port)),
                       "--duration", "1", "--quiet"},
                      &o, &e))
        << e;
    const auto start = std::chrono::steady_clock::now();
    testing::internal::CaptureStderr();
    const int rc = runClient(o);
    const std::string out = testing::internal::GetCapturedStderr();
    EXPECT_EQ(rc, 1);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(6));
    EXPECT_NE(out.find("is not answering"), std::string::npos) << out;
    ::close(fd);
}

// The TCP server does the work --server-work-us asks of each request (it ignored it, so
// TCP answered in microseconds where Homa took the work's time), and runs --server-threads
// epoll threads (it ran one, whatever the banner said).
TEST(PerfLocal, TheTcpServerDoesTheWorkAndRunsTheThreadsAskedFor) {
    nlohmann::json j = runLocalJson({"--protocol", "tcp", "--workload", "100", "--duration", "1", "--client-max", "1",
                                     "--server-work-us", "3000", "--base-rtt-us", "20"},
                                    "tcp-work");
    ASSERT_FALSE(j.is_null());
    EXPECT_GE(j["totals"]["rtt_p50_us"].get<double>(), 3000.0);
    EXPECT_EQ(j["options"]["server"]["work_us"], 3000);

    auto serverThreads = [] {
        int n = 0;
        if (DIR* d = ::opendir("/proc/self/task")) {
            while (dirent* t = ::readdir(d)) {
                if (t->d_name[0] == '.') continue;
                std::ifstream comm(std::string("/proc/self/task/") + t->d_name + "/comm");
                std::string name;
                std::getline(comm, name);
                if (name == "tcp-server") ++n;
            }
            ::closedir(d);
        }
        return n;
    };
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"local", "--protocol", "tcp", "--workload", "100", "--duration", "1.2", "--server-threads", "3",
                       "--base-rtt-us", "20", "--quiet"},
                      &o, &e))
        << e;
    int rc = -1;
    std::thread run([&] { rc = runLocal(o); });
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    const int threads = serverThreads();
    run.join();
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(threads, 3);
}

// No call finished: no figure is 0 us. The text says n/a, the JSON has nulls, and the
// failure says why (it exited 1 with nothing said, and slowdowns of 0.00).
TEST(PerfLocal, ARunWithNoCompletedCallReportsNoFiguresAndSaysWhy) {
    const std::string path = tempPath("none");
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"local", "--workload", "100", "--duration", "0.2", "--drain", "0", "--client-max", "1",
                       "--calls", "async", "--server-work-us", "400000", "--base-rtt-us", "10", "--json", path,
                       "--quiet"},
                      &o, &e))
        << e;
    testing::internal::CaptureStdout();
    testing::internal::CaptureStderr();
    const int rc = runLocal(o);
    const std::string out = testing::internal::GetCapturedStdout();
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(rc, 1);
    EXPECT_NE(err.find("no call completed"), std::string::npos) << err;
    EXPECT_NE(out.find("rtt p50 n/a us"), std::string::npos) << out;
    const nlohmann::json j = readJson(path);
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j["totals"]["rpcs"], 0);
    EXPECT_TRUE(j["totals"]["rtt_p50_us"].is_null());
    EXPECT_TRUE(j["totals"]["rtt_p99_us"].is_null());
    ASSERT_FALSE(j["buckets"].empty());
    for (const auto& b : j["buckets"]) {
        EXPECT_EQ(b["count"], 0);
        EXPECT_TRUE(b["slowdown_p99"].is_null());
        EXPECT_TRUE(b["rtt_p50_us"].is_null());
    }
}

// A --json file that cannot be written fails the run before it starts (it failed after
// the whole run, its figures lost).
TEST(PerfLocal, AnUnwritableJsonFileIsAnErrorBeforeTheRun) {
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"local", "--duration", "5", "--json", "/nonexistent-homa-perf-dir/x.json", "--quiet"}, &o, &e))
        << e;
    const auto start = std::chrono::steady_clock::now();
    testing::internal::CaptureStderr();
    const int rc = runLocal(o);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(rc, 1);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
    EXPECT_NE(err.find("--json: cannot write /nonexistent-homa-perf-dir/x.json"), std::string::npos) << err;
}

// The --json check before the run leaves what is there as it was: a dangling symbolic
// link stays (the check once made its target and then removed the link), and an
// existing file keeps its bytes when the run fails.
TEST(PerfClient, TheJsonCheckLeavesExistingFilesAndLinksAlone) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(::testing::TempDir()) / ("perf-json-" + std::to_string(getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::create_symlink(dir / "target.json", dir / "link.json");
    std::ofstream(dir / "old.json") << "keep";
    for (const char* name : {"link.json", "old.json"}) {
        PerfOptions o;
        std::string e;
        ASSERT_TRUE(parse({"client", "--servers", "127.0.0.1:9", "--duration", "1", "--json", (dir / name).string()}, &o,
                          &e))
            << e;
        testing::internal::CaptureStderr();
        EXPECT_EQ(runClient(o), 1) << "nobody answers at port 9";
        testing::internal::GetCapturedStderr();
    }
    EXPECT_TRUE(fs::is_symlink(dir / "link.json"));
    EXPECT_FALSE(fs::exists(dir / "target.json"));
    std::ifstream old(dir / "old.json");
    std::string content;
    old >> content;
    EXPECT_EQ(content, "keep");
    fs::remove_all(dir);
}

// An interrupt ends the wait for calls in flight too (it waited --drain seconds for
// them, ignoring Ctrl-C): the call still in the server's hands is unfinished, and the
// JSON says the run was interrupted.
TEST(PerfLocal, AnInterruptEndsTheWaitForCallsInFlight) {
    const std::string path = tempPath("interrupted");
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"local", "--workload", "100", "--duration", "0.2", "--drain", "60", "--client-max", "1",
                       "--calls", "async", "--server-work-us", "1500000", "--base-rtt-us", "10", "--json", path,
                       "--quiet"},
                      &o, &e))
        << e;
    int rc = -1;
    std::thread run([&] { rc = runLocal(o); });
    // The client's first call (its check that the server answers) takes 1.5 s, the load's
    // one call 1.5 s more from then: at 2.3 s the load is over and the wait is on.
    std::this_thread::sleep_for(std::chrono::milliseconds(2300));
    requestStop();
    run.join();
    EXPECT_EQ(rc, 1) << "no call completed";
    const nlohmann::json j = readJson(path);
    ASSERT_TRUE(j.is_object());
    EXPECT_TRUE(j["totals"]["interrupted"].get<bool>());
    EXPECT_EQ(j["totals"]["unfinished"], 1);
    EXPECT_EQ(j["totals"]["completed_after_end"], 0);
}

// An offered load so small that the first arrival lies beyond the run sends nothing. Its
// gap, longer than an int64_t of nanoseconds, once wrapped into a huge negative step
// (undefined behaviour) and the generator sent calls back to back.
TEST(PerfLocal, ATinyOfferedLoadSendsNothing) {
    const std::string path = tempPath("tiny-load");
    PerfOptions o;
    std::string e;
    ASSERT_TRUE(parse({"local", "--workload", "64", "--gbps", "1e-18", "--duration", "0.3", "--drain", "0",
                       "--base-rtt-us", "10", "--json", path, "--quiet"},
                      &o, &e))
        << e;
    testing::internal::CaptureStderr();
    EXPECT_EQ(runLocal(o), 1);  // no call completed
    testing::internal::GetCapturedStderr();
    const nlohmann::json j = readJson(path);
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j["totals"]["rpcs"], 0);
    EXPECT_EQ(j["totals"]["skipped_arrivals"], 0);
}

// The largest message the endpoints take follows the workload, not --max-length: a cap
// far above w1's sizes asked the library for 64 MB messages, which its receive memory
// could not hold ("maxBufferBytes ... must hold at least one message").
TEST(PerfLocal, AHighLengthCapDoesNotMakeEndpointsAskForMemory) {
    nlohmann::json j = runLocalJson({"--workload", "w1", "--max-length", "64000000", "--duration", "1.1"}, "w1-cap");
    ASSERT_FALSE(j.is_null());
    checkSchema(j, "homa");
    EXPECT_FALSE(j["options"]["capped"].get<bool>());
    EXPECT_EQ(j["options"]["role"], "local");
}

// `plot` given JSON of another shape: a one-line error, not an abort.
TEST(PerfPlot, JsonOfTheWrongShapeIsAOneLineError) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(::testing::TempDir()) / ("perf-plot-shape-" + std::to_string(getpid()));
    fs::create_directories(dir);
    const std::vector<std::string> shapes = {
        "[1,2]",
        R"({"tool":"homa-perf","buckets":{"a":1},"options":{}})",
        R"({"tool":"homa-perf","buckets":[{"count":3,"max_size":"x","slowdown_p99":2}],"options":{}})",
        R"({"tool":"homa-perf","buckets":[{"count":3,"max_size":64,"slowdown_p99":null}],"options":{}})",
        R"({"tool":"homa-perf","buckets":[7],"options":{}})",
        R"({"tool":"homa-perf","buckets":[],"options":[1]})",
        R"({"tool":1,"buckets":[],"options":{}})",
    };
    for (size_t i = 0; i < shapes.size(); ++i) {
        const std::string in = (dir / "s").string() + std::to_string(i) + ".json";
        std::ofstream(in) << shapes[i];
        PerfOptions o;
        std::string e;
        ASSERT_TRUE(parse({"plot", in, "-o", (dir / "p.png").string()}, &o, &e)) << e;
        testing::internal::CaptureStderr();
        const int rc = runPlot(o);
        const std::string err = testing::internal::GetCapturedStderr();
        EXPECT_EQ(rc, 1) << shapes[i];
        EXPECT_NE(err.find("is not homa-perf JSON"), std::string::npos) << shapes[i] << ": " << err;
        EXPECT_EQ(err.find('\n'), err.size() - 1) << "not one line: " << err;
    }
    EXPECT_FALSE(fs::exists(dir / "p.png"));
    fs::remove_all(dir);
}

}  // namespace
}  // namespace homa::perf
