// homa-perf: options, statistics, JSON output, and local runs end to end.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include "perf/perf.h"
#include "perf/stats.h"
#include "perf/transport.h"
#include "common/slowdown_plot.h"
#include "workload/workload.h"

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
        {"local", "--port", "70000"},
        {"local", "--port", "x"},
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

// Ranks are worked out in integers: 99.9 % of 1,000 values is the 999th (a double's
// ceil(0.999 * 1000) is 1,000, since 99.9 / 100 is a hair above 0.999).
TEST(PerfStats, PercentileRanksAreExactForMultiplesOfAThousand) {
    for (uint64_t n : {1000u, 5000u, 100000u}) {
        std::vector<double> v(n);
        std::iota(v.begin(), v.end(), 1.0);  // the value is its rank
        std::shuffle(v.begin(), v.end(), std::mt19937_64(n));
        EXPECT_EQ(percentile(v, 99.9), static_cast<double>(n / 1000 * 999)) << n;
        EXPECT_EQ(percentile(v, 99), static_cast<double>(n / 100 * 99)) << n;
        EXPECT_EQ(percentile(v, 50), static_cast<double>(n / 2)) << n;
        EXPECT_EQ(percentile(v, 100), static_cast<double>(n)) << n;
        EXPECT_EQ(nearestRank(n, 99.9), n / 1000 * 999) << n;
    }
    EXPECT_EQ(nearestRank(1001, 99.9), 1000u);  // ceil(999.999)
    EXPECT_EQ(nearestRank(10, 0), 1u);
    EXPECT_EQ(nearestRank(0, 50), 0u);
    EXPECT_EQ(nearestRank(3, 50), 2u);
}

TEST(PerfStats, BucketsAndSlowdownByHand) {
    // Base RTT 10 us, 8 Gbps link: 1,000 wire bytes take 1 us.
    SlowdownModel m{10, 8};
    SizeBuckets buckets({1000, 10000}, m);
    buckets.add(100, 1000, 11'000);   // ideal 11 us: slowdown 1.0
    buckets.add(100, 1000, 22'000);   // 2.0
    buckets.add(5000, 10000, 40'000); // ideal 20 us: 2.0
    buckets.add(5000, 10000, 80'000); // 4.0
    buckets.add(9000, 10000, 20'000); // 1.0
    buckets.add(20000, 10000, 30'000); // larger than every bound: the last bucket; 1.5
    auto b = buckets.figures();
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(b[0].maxSize, 1000u);
    EXPECT_EQ(b[0].count, 2u);
    EXPECT_DOUBLE_EQ(b[0].slowdownP50, 1.0);
    EXPECT_DOUBLE_EQ(b[0].slowdownP99, 2.0);
    EXPECT_DOUBLE_EQ(b[0].rttP50Us, 11.0);  // (the smallest and the largest are exact)
    EXPECT_DOUBLE_EQ(b[0].rttP99Us, 22.0);
    EXPECT_EQ(b[1].count, 4u);
    EXPECT_DOUBLE_EQ(b[1].slowdownP50, 1.5);
    EXPECT_DOUBLE_EQ(b[1].slowdownP99, 4.0);
    // A middle rank's round trip is its bin's midpoint: 30 us within 0.012 %.
    EXPECT_NEAR(b[1].rttP50Us, 30.0, 30.0 * 1.3e-4);
    EXPECT_DOUBLE_EQ(b[1].rttP99Us, 80.0);
    SizeBuckets none({1000}, m);
    EXPECT_EQ(none.figures()[0].count, 0u);
    EXPECT_EQ(none.figures()[0].rttP99Us, 0);
    EXPECT_EQ(b[0].fromDueCount, 0u) << "kept only when asked (the open loop)";
}

// The open loop's latency from the due time, bucket by bucket.
TEST(PerfStats, BucketsKeepTheLatencyFromTheDueTime) {
    SizeBuckets buckets({1000, 10000}, SlowdownModel{10, 8}, true);
    buckets.add(100, 1000, 11'000, 15'000);
    buckets.add(100, 1000, 22'000, 90'000);
    buckets.add(5000, 10000, 40'000, 40'000);
    auto b = buckets.figures();
    EXPECT_EQ(b[0].fromDueCount, 2u);
    EXPECT_DOUBLE_EQ(b[0].fromDueP99Us, 90.0);
    EXPECT_DOUBLE_EQ(b[0].rttP99Us, 22.0) << "the round trips are kept apart";
    EXPECT_EQ(b[1].fromDueCount, 1u);
    EXPECT_DOUBLE_EQ(b[1].fromDueP99Us, 40.0);
}

// The bins: exact below 2^13 units, then 4,096 to each doubling, each bin's values
// mapping to it and no other.
TEST(PerfStats, HistogramBinsCoverEveryValueOnce) {
    constexpr uint64_t kExact = uint64_t{1} << (Histogram::kSubBits + 1);
    for (uint64_t v = 0; v < kExact; ++v) ASSERT_EQ(Histogram::bin(v), v);
    EXPECT_EQ(Histogram::bin(kExact), kExact);
    EXPECT_EQ(Histogram::bin(kExact + 1), kExact);  // bins of width 2 from here
    EXPECT_EQ(Histogram::bin(kExact + 2), kExact + 1);
    EXPECT_EQ(Histogram::bin(2 * kExact), kExact + 4096);
    for (size_t b = 0; b < Histogram::bin(UINT64_MAX); ++b) {
        const uint64_t low = Histogram::binLow(b), next = Histogram::binLow(b + 1);
        ASSERT_LT(low, next) << b;
        ASSERT_EQ(Histogram::bin(low), b) << b;
        ASSERT_EQ(Histogram::bin(next - 1), b) << b;
        // Each bin narrower than 2^-12 of its values.
        ASSERT_LE((next - low) * 4096, std::max<uint64_t>(low, 4096)) << b;
    }
    EXPECT_EQ(Histogram::bin(UINT64_MAX), Histogram::bin(uint64_t{1} << 63) + 4095);
}

// Percentiles against those of the whole list of values (nearest rank): within half a
// bin (2^-13 of the value), exact at both ends and below 2^13 units. Bad values count as
// the nearest that the bins hold.
TEST(PerfStats, HistogramPercentilesMatchTheSortedValues) {
    // (HOMA_TEST_SEED=N runs it with seed N.)
    const char* fixed = std::getenv("HOMA_TEST_SEED");
    const uint64_t seed = fixed ? std::strtoull(fixed, nullptr, 10) : std::random_device{}();
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::printf("HistogramPercentilesMatchTheSortedValues seed %llu (HOMA_TEST_SEED)\n",
                static_cast<unsigned long long>(seed));
    std::mt19937_64 rng(seed);
    std::lognormal_distribution<double> rtt(std::log(20'000.0), 1.5);  // ns: 20 us, long tail
    for (int round = 0; round < 5; ++round) {
        Histogram h;
        std::vector<double> all;
        const size_t n = 1 + rng() % 200'000;
        for (size_t i = 0; i < n; ++i) {
            const double v = std::round(rtt(rng));
            all.push_back(v);
            h.add(v);
        }
        EXPECT_EQ(h.count(), n);
        for (double p : {0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
            const double exact = percentile(all, p);
            const double got = h.percentile(p);
            if (p == 0 || p == 100 || exact < 8192) {
                EXPECT_EQ(got, exact) << "n " << n << " p " << p;
            } else {
                EXPECT_LE(std::abs(got - exact), exact / 8192) << "n " << n << " p " << p;
            }
        }
        // Memory does not grow with the count: the bins made up front hold these values.
        EXPECT_EQ(h.bins(), Histogram::bin(Histogram::kPreparedUnits) + 1);
    }
    Histogram units(1e-3);  // thousandths
    units.add(1.0);
    units.add(2.5);
    units.add(-3);                             // below 0: 0
    units.add(std::numeric_limits<double>::quiet_NaN());  // 0
    units.add(1e300);                          // the largest value held (bins grow for it)
    EXPECT_EQ(units.count(), 5u);
    EXPECT_EQ(units.percentile(0), 0);
    EXPECT_DOUBLE_EQ(units.percentile(60), 1.0);
    EXPECT_DOUBLE_EQ(units.percentile(80), 2.5);
    EXPECT_GT(units.percentile(100), 9e15);
    units.clear();
    EXPECT_TRUE(units.empty());
    EXPECT_EQ(units.percentile(50), 0);
    units.add(7);
    EXPECT_DOUBLE_EQ(units.percentile(50), 7.0);
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

// The open loop's schedule counts every arrival due before the end: those the generator
// reached (started or skipped) and those it never reached, late (it once dropped those
// without a word), and how late it was with the ones it reached.
// Arrivals come at the rate asked, however short their gaps: each gap was rounded down
// to whole nanoseconds, so at a billion a second (gaps of 1 ns on average) there were
// about 1.7 times as many as asked.
TEST(PerfStats, ArrivalScheduleKeepsItsRateWhenGapsAreBelowANanosecond) {
    constexpr int64_t kMs = 1'000'000;
    for (double perSecond : {1e9, 1e8}) {
        ArrivalSchedule s(perSecond, 11, 0, kMs);
        uint64_t n = 0;
        int64_t at, before = -1;
        while (s.next(&at)) {
            ASSERT_GE(at, before);
            ASSERT_LT(at, kMs);
            before = at;
            ++n;
        }
        const double expected = perSecond / 1e3;  // in 1 ms
        EXPECT_NEAR(static_cast<double>(n), expected, 5 * std::sqrt(expected)) << perSecond << " a second";
    }
}

TEST(PerfStats, ArrivalScheduleCountsEveryArrivalDueBeforeTheEnd) {
    constexpr int64_t kSecond = 1'000'000'000;
    // A generator that keeps up: every arrival started when due, none late.
    ArrivalSchedule onTime(1000, 7, 0, kSecond);
    int64_t at;
    uint64_t drawn = 0;
    while (onTime.next(&at)) {
        ++drawn;
        onTime.handled(at, drawn % 4 != 0);
    }
    onTime.finish(kSecond);
    EXPECT_EQ(onTime.offered(), drawn);
    EXPECT_EQ(onTime.late(), 0u);
    EXPECT_EQ(onTime.skipped(), drawn / 4);
    EXPECT_EQ(onTime.lagMaxUs(), 0.0);
    EXPECT_GT(drawn, 900u);
    EXPECT_LT(drawn, 1100u);

    // A generator that takes 2 us per call against a million arrivals a second: it
    // reaches half of them by the end, and the other half are late.
    ArrivalSchedule behind(1e6, 7, 0, kSecond);
    int64_t now = 0;
    while (now < kSecond && behind.next(&at)) {
        now = std::max(now, at) + 2000;
        behind.handled(now, true);
    }
    behind.finish(kSecond);
    EXPECT_EQ(behind.offered(), behind.issued() + behind.skipped() + behind.late());
    EXPECT_NEAR(static_cast<double>(behind.offered()), 1e6, 5e3);
    EXPECT_NEAR(static_cast<double>(behind.issued()), 5e5, 1e3);
    EXPECT_NEAR(static_cast<double>(behind.late()), 5e5, 5e3);
    EXPECT_NEAR(behind.lagMaxUs(), 5e5, 5e3);   // the last one started: due at 0.5 s, started at 1 s
    EXPECT_NEAR(behind.lagMeanUs(), 2.5e5, 5e3);

    // Stopped early (an interrupt) with an arrival drawn but not handled: it is late if
    // it was due before the stop; nothing after the stop counts.
    ArrivalSchedule stopped(1e6, 9, 0, kSecond);
    uint64_t handled = 0;
    while (stopped.next(&at) && at < kSecond / 10) {
        stopped.handled(at, true);
        ++handled;
    }
    stopped.finish(kSecond / 10);
    EXPECT_EQ(stopped.late(), 0u) << "the arrival drawn was due after the stop";
    EXPECT_EQ(stopped.offered(), handled);
    ArrivalSchedule pending(1e6, 9, 0, kSecond);
    ASSERT_TRUE(pending.next(&at));
    pending.finish(kSecond / 10);
    EXPECT_NEAR(static_cast<double>(pending.late()), 1e5, 1.5e3);
    EXPECT_EQ(pending.issued(), 0u);

    // A load so small that no arrival falls within the run.
    ArrivalSchedule none(1e-9, 1, 0, kSecond);
    EXPECT_FALSE(none.next(&at));
    none.finish(kSecond);
    EXPECT_EQ(none.offered(), 0u);
}

// Any failed call fails the run, unless --max-error-rate allows that share of them.
TEST(PerfStats, TooManyErrorsFollowsTheAllowedRate) {
    EXPECT_FALSE(tooManyErrors(0, 0, 0));
    EXPECT_FALSE(tooManyErrors(0, 100, 0));
    EXPECT_TRUE(tooManyErrors(1, 100, 0));
    EXPECT_TRUE(tooManyErrors(1, 1, 0.5));
    EXPECT_FALSE(tooManyErrors(10, 100, 0.1));
    EXPECT_TRUE(tooManyErrors(11, 100, 0.1));
    EXPECT_FALSE(tooManyErrors(100, 100, 1));
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
    EXPECT_EQ(j["slowdown_bytes"], "request+response");
    EXPECT_EQ(j["options"]["protocol"], protocol);
    for (const char* k : {"machine", "base_rtt_us", "intervals", "totals", "buckets", "warmup"})
        EXPECT_TRUE(j.contains(k)) << k;
    EXPECT_GT(j["totals"]["rpcs"].get<uint64_t>(), 0u);
    EXPECT_EQ(j["totals"]["errors"].get<uint64_t>(), 0u);
    EXPECT_TRUE(j["totals"]["errors_by_kind"].is_object());
    EXPECT_TRUE(j["totals"]["errors_by_kind"].empty());
    uint64_t counted = 0;
    for (const auto& b : j["buckets"]) {
        for (const char* k : {"max_size", "count", "rtt_p50_us", "rtt_p99_us", "slowdown_p50", "slowdown_p99",
                              "latency_from_due_p99_us"})
            EXPECT_TRUE(b.contains(k)) << k;
        if (j["options"]["gbps"].get<double>() == 0) {
            EXPECT_TRUE(b["latency_from_due_p99_us"].is_null()) << "a closed loop's calls have no due time";
        }
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

// local's server listens on --port when it is given (it was ignored: always any port),
// and on any free port otherwise.
TEST(PerfLocal, TheServerListensOnTheGivenPort) {
    // A port free now: bound and let go.
    const int fd = socket(AF_INET, SOCK_DGRAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in at{};
    at.sin_family = AF_INET;
    at.sin_addr.s_addr = htonl(0x7f000001);
    socklen_t len = sizeof(at);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&at), sizeof(at)), 0);
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&at), &len), 0);
    close(fd);
    const std::string port = std::to_string(ntohs(at.sin_port));
    nlohmann::json j = runLocalJson({"--workload", "64", "--duration", "0.3", "--port", port}, "port");
    ASSERT_FALSE(j.is_null());
    EXPECT_EQ(j["options"]["servers"][0], "127.0.0.1:" + port);
    nlohmann::json any = runLocalJson({"--workload", "64", "--duration", "0.3"}, "any-port");
    ASSERT_FALSE(any.is_null());
    EXPECT_NE(any["options"]["servers"][0], "127.0.0.1:4000") << "a server's default port, not any";
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
    testing::internal::CaptureStderr();
    std::thread client([&] { rc = runClient(o); });
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    server->stop();  // (its threads close their connections)
    client.join();
    const std::string out = testing::internal::GetCapturedStderr();
    // Calls completed before the server went, and then many failed: the run fails (it
    // exited 0, and scripts took its figures for a good run's).
    EXPECT_EQ(rc, 1);
    EXPECT_NE(out.find("homa-perf: failed: "), std::string::npos) << out;
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

// TCP's server works on one connection's requests one at a time, Homa's threads on any
// request: with server work and fewer connections than server threads, `local` says so
// (the comparison was biased against TCP by up to the thread count, without a word).
TEST(PerfLocal, TcpServerWorkOnFewerConnectionsThanThreadsIsSaid) {
    struct Case {
        const char* protocol;
        const char* conns;
        bool note;
    };
    for (const Case& k : {Case{"tcp", "1", true}, Case{"tcp", "3", false}, Case{"homa", "1", false}}) {
        PerfOptions o;
        std::string e;
        ASSERT_TRUE(parse({"local", "--protocol", k.protocol, "--workload", "100", "--duration", "0.2", "--server-work-us",
                           "100", "--server-threads", "3", "--tcp-conns", k.conns, "--base-rtt-us", "20", "--quiet"},
                          &o, &e))
            << e;
        testing::internal::CaptureStdout();
        const int rc = runLocal(o);
        const std::string out = testing::internal::GetCapturedStdout();
        EXPECT_EQ(rc, 0) << out;
        const bool said = out.find("with 1 connection, at most 1 of the 3 server threads work at once") != std::string::npos;
        EXPECT_EQ(said, k.note) << k.protocol << " --tcp-conns " << k.conns << ": " << out;
    }
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

// A client transport of the test's own: each call is answered at once, on the calling
// thread, as `answer` says for the n-th call (from 0). It counts the calls, and the most
// that were ever being started at once.
class FakeTransport : public ClientTransport {
  public:
    using Answer = std::function<CallResult(uint64_t n, std::span<const uint8_t> request)>;
    explicit FakeTransport(Answer answer) : answer_(std::move(answer)) {}
    void issue(size_t, std::span<const uint8_t> request, uint64_t token) override {
        const int now = ++inIssue_;
        int most = maxConcurrent.load();
        while (now > most && !maxConcurrent.compare_exchange_weak(most, now)) {
        }
        CallResult r = answer_(calls++, request);
        if (r.refused) ++refusals;
        if (!r.ok && !r.refused) ++failures;
        complete(token, std::move(r));
        --inIssue_;
    }
    void stop() override {}

    std::atomic<uint64_t> calls{0}, refusals{0}, failures{0};
    std::atomic<int> maxConcurrent{0};

  private:
    Answer answer_;
    std::atomic<int> inIssue_{0};
};

CallResult answered(std::span<const uint8_t> request) {
    CallResult r;
    r.ok = true;
    r.responseLength = responseLengthOf(request);
    return r;
}
CallResult refusedCall() {
    CallResult r;
    r.refused = true;
    r.error = "out of buffers: the send memory is full";
    return r;
}

struct FakeRun {
    int rc = -1;
    nlohmann::json j;
    std::string out, err;
};
// A client run of `args` (after "client --servers 127.0.0.1:1", with --json, --quiet
// and --base-rtt-us 10) through `t`, with 64-byte messages.
FakeRun runFake(FakeTransport& t, std::vector<std::string> args, const std::string& name,
                const workload::Distribution& sizes = workload::Distribution::fixed(64)) {
    const std::string path = tempPath(name.c_str());
    std::vector<std::string> all = {"client", "--servers", "127.0.0.1:1", "--workload", "64", "--base-rtt-us", "10",
                                    "--json", path, "--quiet"};
    all.insert(all.end(), args.begin(), args.end());
    PerfOptions o;
    std::string e;
    EXPECT_TRUE(parse(all, &o, &e)) << e;
    FakeRun r;
    testing::internal::CaptureStdout();
    testing::internal::CaptureStderr();
    r.rc = runClientWith(o, t, {*Address::parse("127.0.0.1:1")}, sizes);
    r.out = testing::internal::GetCapturedStdout();
    r.err = testing::internal::GetCapturedStderr();
    r.j = readJson(path);
    return r;
}

// An open loop whose calls take longer to start than its arrivals' gaps falls behind
// its schedule: the arrivals it never reached before the end are counted (as late), with
// how late it was, and the run warns that the load offered was below the one asked. (They
// were dropped without a word: "skipped arrivals 0" for a run that started a third of
// them.) Each call here takes at least 200 us to start, against a million arrivals a
// second (64 B at 0.512 Gbps) for 0.3 s: at most 1,500 of about 300,000 start, on any
// machine.
TEST(PerfOpenLoop, ArrivalsTheGeneratorNeverReachedAreCountedAsLate) {
    FakeTransport t([](uint64_t, std::span<const uint8_t> request) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        return answered(request);
    });
    const FakeRun r = runFake(t, {"--gbps", "0.512", "--duration", "0.3"}, "late");
    EXPECT_EQ(r.rc, 0) << r.err;
    ASSERT_TRUE(r.j.is_object());
    const auto& tot = r.j["totals"];
    const uint64_t due = tot["arrivals_due"].get<uint64_t>();
    const uint64_t late = tot["late_arrivals"].get<uint64_t>();
    const uint64_t skipped = tot["skipped_arrivals"].get<uint64_t>();
    EXPECT_NEAR(static_cast<double>(due), 3e5, 6e3) << "a Poisson count of mean 300,000";
    EXPECT_EQ(t.calls.load() + skipped + late, due) << "every arrival due is started, skipped or late";
    EXPECT_LE(t.calls.load(), 1501u);
    EXPECT_GT(late, due / 2);
    EXPECT_EQ(tot["refused_arrivals"], 0);
    EXPECT_EQ(tot["dropped_arrivals"].get<uint64_t>(), skipped + late);
    EXPECT_GT(tot["generator_lag_max_us"].get<double>(), 1000.0) << "the tenth call starts 2 ms late";
    EXPECT_GT(tot["generator_lag_mean_us"].get<double>(), 0.0);
    EXPECT_NE(r.out.find("late (due before the end, never reached)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("warning: the load offered was well below 0.512 Gbps"), std::string::npos) << r.out;
}

// Calls due while the generator is held up start late, together: their round trips, timed
// from the start, leave that wait out. The latency from each arrival's due time has it.
// Here every 100th call holds the generator for 2 ms after it completed (a transport
// whose send blocks now and then): about a fifth of the calls start late, by up to 2 ms,
// while every round trip stays a few microseconds.
TEST(PerfOpenLoop, LatencyFromTheDueTimeCountsHowLateCallsStarted) {
    class Stalling : public FakeTransport {
      public:
        using FakeTransport::FakeTransport;
        void issue(size_t server, std::span<const uint8_t> request, uint64_t token) override {
            FakeTransport::issue(server, request, token);
            if (calls.load() % 100 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    };
    Stalling t([](uint64_t, std::span<const uint8_t> request) { return answered(request); });
    const FakeRun r = runFake(t, {"--gbps", "0.00512", "--duration", "1"}, "from-due");  // 10,000 a second
    EXPECT_EQ(r.rc, 0) << r.err;
    ASSERT_TRUE(r.j.is_object());
    const auto& tot = r.j["totals"];
    EXPECT_GT(tot["rpcs"].get<uint64_t>(), 5'000u);
    EXPECT_LT(tot["rtt_p99_us"].get<double>(), 1'000.0);
    EXPECT_GT(tot["latency_from_due_p99_us"].get<double>(), 1'000.0) << "the wait for the generator is left out";
    // Bucket by bucket too (64-byte calls: one bucket), beside the round trips.
    ASSERT_EQ(r.j["buckets"].size(), 1u);
    EXPECT_GT(r.j["buckets"][0]["latency_from_due_p99_us"].get<double>(), 1'000.0);
    EXPECT_LT(r.j["buckets"][0]["rtt_p99_us"].get<double>(), 1'000.0);
    EXPECT_GE(tot["latency_from_due_p50_us"].get<double>(), tot["rtt_p50_us"].get<double>());
    EXPECT_NE(r.out.find("latency from each arrival's due time"), std::string::npos) << r.out;
}

// A call the transport refuses (its send memory full) in the open loop is an arrival
// dropped: counted as such, not started again (the run loop restarted such calls now and
// then, beside the schedule, while the summary said they all were and the skipped
// arrivals stayed 0).
TEST(PerfOpenLoop, RefusedCallsAreDroppedArrivalsNotStartedAgain) {
    FakeTransport t([](uint64_t n, std::span<const uint8_t> request) {
        return n % 2 == 1 ? refusedCall() : answered(request);
    });
    const FakeRun r = runFake(t, {"--gbps", "0.01024", "--duration", "0.5"}, "refused-open");  // 20,000 a second
    EXPECT_EQ(r.rc, 0) << r.err;
    ASSERT_TRUE(r.j.is_object());
    const auto& tot = r.j["totals"];
    const uint64_t due = tot["arrivals_due"].get<uint64_t>();
    const uint64_t skipped = tot["skipped_arrivals"].get<uint64_t>();
    const uint64_t late = tot["late_arrivals"].get<uint64_t>();
    const uint64_t refused = tot["refused_arrivals"].get<uint64_t>();
    EXPECT_GT(t.refusals.load(), 0u);
    EXPECT_EQ(refused, t.refusals.load());
    EXPECT_EQ(tot["refused"].get<uint64_t>(), t.refusals.load());
    EXPECT_EQ(t.calls.load(), due - skipped - late) << "a call was started that was no arrival's";
    EXPECT_EQ(tot["dropped_arrivals"].get<uint64_t>(), skipped + late + refused);
    EXPECT_EQ(tot["rpcs"].get<uint64_t>() + tot["completed_after_end"].get<uint64_t>(), t.calls.load() - refused);
    EXPECT_NE(r.out.find("dropped, not started again"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("started again as calls finished"), std::string::npos) << r.out;
}

// A closed loop whose large calls are refused while another large one is in flight (the
// send memory full) starts each refused call again at its size: the calls that complete
// keep the workload's mix. The refused size was thrown away and a new one drawn, so the
// calls that fit, the small ones, took over: here under a third of the calls completed
// were large, of a 50/50 mix.
TEST(PerfClosedLoop, RefusedCallsKeepTheirSize) {
    class OneLargeAtATime : public FakeTransport {
      public:
        using FakeTransport::FakeTransport;
        bool hasSyncCalls() const override { return true; }
        bool callSync(size_t, std::span<const uint8_t> request, CallResult* r) override {
            const bool large = request.size() >= 1000;
            if (large && largeInFlight_.fetch_add(1) > 0) {
                --largeInFlight_;
                *r = refusedCall();
                return true;
            }
            std::this_thread::sleep_for(std::chrono::microseconds(300));
            *r = answered(request);
            ++(large ? largeDone : smallDone);
            if (large) --largeInFlight_;
            return true;
        }
        std::atomic<uint64_t> largeDone{0}, smallDone{0};

      private:
        std::atomic<int> largeInFlight_{0};
    };
    OneLargeAtATime t([](uint64_t, std::span<const uint8_t> request) { return answered(request); });
    std::string error;
    const auto mix = workload::Distribution::parse("550\n100 0.5\n1000 1\n", &error);
    ASSERT_TRUE(mix) << error;
    const FakeRun r = runFake(t, {"--calls", "sync", "--client-max", "8", "--duration", "0.5"}, "refused-sizes", *mix);
    EXPECT_EQ(r.rc, 0) << r.err;
    ASSERT_TRUE(r.j.is_object());
    EXPECT_GT(r.j["totals"]["refused"].get<uint64_t>(), 0u) << "nothing was refused: the test shows nothing";
    const double large = static_cast<double>(t.largeDone.load()), all = large + static_cast<double>(t.smallDone.load());
    ASSERT_GT(all, 100.0);
    EXPECT_GT(large / all, 0.4) << t.largeDone.load() << " large of " << all;
}

// With one call allowed in flight and calls refused, no second call is ever started
// beside the first: the open loop takes a slot in the same locked step that finds it
// free (the run loop could take the only slot between the two, and the generator then
// took one from an empty list).
TEST(PerfOpenLoop, NoMoreCallsThanTheCapAreEverStarted) {
    FakeTransport t([](uint64_t n, std::span<const uint8_t> request) {
        return n % 2 == 1 ? refusedCall() : answered(request);
    });
    const FakeRun r = runFake(t, {"--gbps", "0.512", "--duration", "0.5", "--client-max", "1"}, "cap-one");
    EXPECT_EQ(r.rc, 0) << r.err;
    ASSERT_TRUE(r.j.is_object());
    EXPECT_EQ(t.maxConcurrent.load(), 1);
    const auto& tot = r.j["totals"];
    EXPECT_EQ(t.calls.load(), tot["arrivals_due"].get<uint64_t>() - tot["skipped_arrivals"].get<uint64_t>() -
                                  tot["late_arrivals"].get<uint64_t>());
}

// The JSON says which bytes the slowdown's ideal time counts: both messages'.
TEST(PerfOpenLoop, TheJsonSaysTheSlowdownCountsRequestAndResponseBytes) {
    FakeTransport t([](uint64_t, std::span<const uint8_t> request) { return answered(request); });
    const FakeRun r = runFake(t, {"--gbps", "0.001", "--duration", "0.2"}, "slowdown-bytes");
    ASSERT_TRUE(r.j.is_object()) << r.err;
    EXPECT_EQ(r.j["slowdown_bytes"], "request+response");
    EXPECT_NE(r.out.find("(request + response bytes) * 8"), std::string::npos) << r.out;
}

// A run with failed calls exits 1 and says so in its last line, unless --max-error-rate
// allows their share (it exited 0 whatever failed, as long as one call completed).
TEST(PerfOpenLoop, FailedCallsFailTheRunUnlessAllowed) {
    auto everyTenthFails = [](uint64_t n, std::span<const uint8_t> request) {
        if (n % 10 != 9) return answered(request);
        CallResult f;
        f.error = "timeout: no response";
        return f;
    };
    struct Case {
        const char* maxRate;
        int rc;
    };
    for (const Case& k : {Case{nullptr, 1}, Case{"0.05", 1}, Case{"0.5", 0}}) {
        FakeTransport t(everyTenthFails);
        std::vector<std::string> args = {"--gbps", "0.01024", "--duration", "0.3"};
        if (k.maxRate) args.insert(args.end(), {"--max-error-rate", k.maxRate});
        const FakeRun r = runFake(t, args, "errors");
        const std::string what = k.maxRate ? k.maxRate : "(none)";
        ASSERT_GE(t.failures.load(), 1u) << what;
        EXPECT_EQ(r.rc, k.rc) << what << ": " << r.err;
        ASSERT_TRUE(r.j.is_object()) << "the JSON is written all the same";
        EXPECT_EQ(r.j["totals"]["errors"].get<uint64_t>(), t.failures.load());
        EXPECT_EQ(r.j["options"]["max_error_rate"].get<double>(), k.maxRate ? std::atof(k.maxRate) : 0.0);
        if (k.rc != 0) {
            EXPECT_NE(r.err.find("homa-perf: failed: " + std::to_string(t.failures.load()) + " of the "),
                      std::string::npos)
                << r.err;
            EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "one line: " << r.err;
        } else {
            EXPECT_TRUE(r.err.empty()) << r.err;
        }
    }
    PerfOptions o;
    std::string e;
    for (const char* bad : {"-0.1", "1.5", "nan", "some"})
        EXPECT_FALSE(parse({"local", "--max-error-rate", bad}, &o, &e)) << bad;
}

// A transport whose synchronous calls take 3 ms each for the first 250 ms after its
// first call (buffers being faulted in, say), then 200 us.
class SlowAtFirst : public FakeTransport {
  public:
    SlowAtFirst() : FakeTransport([](uint64_t, std::span<const uint8_t> request) { return answered(request); }) {}
    bool hasSyncCalls() const override { return true; }
    bool callSync(size_t, std::span<const uint8_t> request, CallResult* r) override {
        std::call_once(once_, [this] { first_ = std::chrono::steady_clock::now(); });
        const bool early = std::chrono::steady_clock::now() - first_ < std::chrono::milliseconds(250);
        std::this_thread::sleep_for(std::chrono::microseconds(early ? 3000 : 200));
        *r = answered(request);
        ++calls;
        return true;
    }

  private:
    std::once_flag once_;
    std::chrono::steady_clock::time_point first_;
};

// --warmup runs the load first for that long and leaves it out of every figure: the
// round trips, the rate, the per-second lines (the warm-up's are apart, marked), while
// the measured interval is still --duration long. Without it, the slow start is in the
// P99. A line's rate is of the time its interval really lasted: the warm-up's half second
// shows the same rate as the measured whole second (dividing by one second gave half).
TEST(PerfClosedLoop, TheWarmUpIsLeftOutOfEveryFigure) {
    SlowAtFirst cold;
    const FakeRun without = runFake(cold, {"--calls", "sync", "--client-max", "2", "--duration", "1"}, "no-warmup");
    ASSERT_EQ(without.rc, 0) << without.err;
    ASSERT_TRUE(without.j.is_object());
    EXPECT_GT(without.j["totals"]["rtt_p99_us"].get<double>(), 2500.0) << "the slow start is measured";
    EXPECT_EQ(without.j["warmup"]["rpcs"], 0);

    SlowAtFirst t;
    const FakeRun r = runFake(t, {"--calls", "sync", "--client-max", "2", "--duration", "1", "--warmup", "0.5"},
                              "warmup");
    ASSERT_EQ(r.rc, 0) << r.err;
    ASSERT_TRUE(r.j.is_object());
    const auto& tot = r.j["totals"];
    EXPECT_LT(tot["rtt_p99_us"].get<double>(), 2500.0) << "the warm-up's round trips are left out";
    EXPECT_NEAR(tot["seconds"].get<double>(), 1.0, 0.1) << "the measured interval is --duration long";
    const uint64_t warm = r.j["warmup"]["rpcs"].get<uint64_t>();
    EXPECT_GT(warm, 50u);
    EXPECT_EQ(tot["rpcs"].get<uint64_t>() + tot["completed_after_end"].get<uint64_t>() + warm, t.calls.load())
        << "every call is in the warm-up or in the measured figures, none in both";
    EXPECT_DOUBLE_EQ(r.j["options"]["warmup_s"].get<double>(), 0.5);
    ASSERT_EQ(r.j["warmup"]["intervals"].size(), 1u);
    ASSERT_EQ(r.j["intervals"].size(), 1u);
    const auto& w = r.j["warmup"]["intervals"][0];
    const auto& m = r.j["intervals"][0];
    EXPECT_TRUE(w["warmup"].get<bool>());
    EXPECT_FALSE(m.contains("warmup"));
    EXPECT_NEAR(w["seconds"].get<double>(), 0.5, 0.1);
    EXPECT_NEAR(m["seconds"].get<double>(), 1.0, 0.1);
    // (The warm-up's second half ran at the measured rate; its first, 15 times slower.)
    EXPECT_GT(w["kops"].get<double>(), 0.35 * m["kops"].get<double>()) << w.dump() << " against " << m.dump();
    EXPECT_NE(r.out.find("after 0.5 s of warm-up"), std::string::npos) << r.out;
    // The open loop's arrivals start counting where the measurement does. A warm-up of
    // 1.3 s has two lines, the second of 0.3 s (both were labelled "1 s").
    FakeTransport open([](uint64_t, std::span<const uint8_t> request) { return answered(request); });
    const FakeRun o2 = runFake(open, {"--gbps", "0.00512", "--duration", "0.5", "--warmup", "1.3"}, "warmup-open");
    ASSERT_EQ(o2.rc, 0) << o2.err;
    ASSERT_TRUE(o2.j.is_object());
    EXPECT_NEAR(o2.j["totals"]["arrivals_due"].get<double>(), 5'000.0, 400.0) << "10,000 a second for 0.5 s";
    EXPECT_NEAR(static_cast<double>(open.calls.load()), 18'000.0, 1'000.0) << "and 13,000 in the warm-up";
    const auto& lines = o2.j["warmup"]["intervals"];
    ASSERT_EQ(lines.size(), 2u) << lines.dump();
    EXPECT_EQ(lines[0]["t"], 1);
    EXPECT_EQ(lines[1]["t"], 2);
    EXPECT_NEAR(lines[1]["seconds"].get<double>(), 0.3, 0.05);
    EXPECT_TRUE(o2.j["warmup"]["completed"].get<bool>());
    PerfOptions o;
    std::string e;
    for (const char* bad : {"-1", "nan", "4000", "soon"}) EXPECT_FALSE(parse({"local", "--warmup", bad}, &o, &e)) << bad;
}

// A call that fails in the warm-up fails the run as any failed call does, and the calls
// that ended in the warm-up count in the share --max-error-rate allows (failures were
// counted from the whole run, completions from the measured part only). 10,000 calls a
// second: about 5,000 in the warm-up and 1,000 measured, one failed: 1 in 6,000 is
// within 0.0005, 1 in 1,000 was not.
TEST(PerfOpenLoop, TheWarmUpsFailuresCountAmongAllItsCalls) {
    for (const char* maxRate : {"0", "0.0005"}) {
        FakeTransport t([](uint64_t n, std::span<const uint8_t> request) {
            if (n != 3) return answered(request);
            CallResult f;
            f.error = "timeout: no response";
            return f;
        });
        const FakeRun r = runFake(t, {"--gbps", "0.00512", "--duration", "0.1", "--warmup", "0.5", "--max-error-rate",
                                      maxRate},
                                  std::string("warmup-errors-") + maxRate);
        ASSERT_TRUE(r.j.is_object()) << maxRate;
        EXPECT_EQ(r.j["warmup"]["errors"], 1) << maxRate;
        EXPECT_EQ(r.j["totals"]["errors"], 1) << maxRate;
        EXPECT_EQ(r.j["totals"]["failed"], 1) << maxRate;
        EXPECT_EQ(r.rc, std::string(maxRate) == "0" ? 1 : 0) << maxRate << ": " << r.err;
        EXPECT_NE(r.out.find("warm-up: 0.5 s; its calls are left out"), std::string::npos) << r.out;
    }
}

// Interrupted in the warm-up, the run measured nothing and says so; its CPU time and
// rate are of the run (the CPU was taken from the process's start, the time since boot).
TEST(PerfOpenLoop, AnInterruptInTheWarmUpMeasuresNothing) {
    FakeTransport t([](uint64_t, std::span<const uint8_t> request) { return answered(request); });
    FakeRun r;
    std::thread run([&] {
        r = runFake(t, {"--gbps", "0.00512", "--duration", "1", "--warmup", "10"}, "warmup-interrupted");
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    requestStop();
    run.join();
    EXPECT_EQ(r.rc, 1) << "nothing was measured";
    ASSERT_TRUE(r.j.is_object());
    EXPECT_FALSE(r.j["warmup"]["completed"].get<bool>());
    EXPECT_GT(r.j["warmup"]["rpcs"].get<uint64_t>(), 100u);
    EXPECT_EQ(r.j["totals"]["rpcs"], 0);
    EXPECT_LT(r.j["totals"]["cpu_user_s"].get<double>() + r.j["totals"]["cpu_system_s"].get<double>(), 2.0);
    EXPECT_NE(r.out.find("warm-up: interrupted, nothing was measured"), std::string::npos) << r.out;
}

// A transport whose server stops answering after its 20th call, while its connection
// stays up (a TCP server that stalls): calls are held until stop(), which ends them.
class StallsAfter20 : public ClientTransport {
  public:
    void issue(size_t, std::span<const uint8_t> request, uint64_t token) override {
        if (calls++ < 20) return complete(token, answered(request));
        std::lock_guard lk(mu_);
        held_.push_back(token);
    }
    void stop() override {
        std::vector<uint64_t> held;
        {
            std::lock_guard lk(mu_);
            held.swap(held_);
        }
        for (uint64_t t : held) {
            CallResult r;
            r.error = "stopped";
            complete(t, r);
        }
    }
    std::atomic<uint64_t> calls{0};

  private:
    std::mutex mu_;
    std::vector<uint64_t> held_;
};

// Calls still unanswered --drain seconds after the end fail the run, as a Homa call to a
// server that stops answering times out: they passed as "unfinished", exit status 0.
// With --drain 0 (no wait asked for) the calls in flight at the end are cut off, and
// --max-error-rate can allow them.
TEST(PerfClosedLoop, CallsStillUnansweredAfterTheDrainFailTheRun) {
    struct Case {
        const char* drain;
        const char* maxRate;
        int rc;
    };
    for (const Case& k : {Case{"0.2", nullptr, 1}, Case{"0", nullptr, 0}, Case{"0.2", "0.9", 0}}) {
        StallsAfter20 t;
        std::vector<std::string> args = {"--calls", "async", "--client-max", "4", "--duration", "0.3", "--drain",
                                         k.drain};
        if (k.maxRate) args.insert(args.end(), {"--max-error-rate", k.maxRate});
        const std::string path = tempPath("stalled");
        std::vector<std::string> all = {"client", "--servers", "127.0.0.1:1", "--workload", "64", "--base-rtt-us",
                                        "10", "--json", path, "--quiet"};
        all.insert(all.end(), args.begin(), args.end());
        PerfOptions o;
        std::string e;
        ASSERT_TRUE(parse(all, &o, &e)) << e;
        testing::internal::CaptureStdout();
        testing::internal::CaptureStderr();
        const int rc = runClientWith(o, t, {*Address::parse("127.0.0.1:1")}, workload::Distribution::fixed(64));
        const std::string out = testing::internal::GetCapturedStdout();
        const std::string err = testing::internal::GetCapturedStderr();
        const std::string what = std::string("--drain ") + k.drain + (k.maxRate ? " --max-error-rate" : "");
        EXPECT_EQ(rc, k.rc) << what << ": " << err;
        const nlohmann::json j = readJson(path);
        ASSERT_TRUE(j.is_object()) << what;
        EXPECT_EQ(j["totals"]["unfinished"], 4) << what;
        EXPECT_EQ(j["totals"]["errors"], 0) << what << ": still counted apart from the transport's errors";
        if (k.rc == 1) {
            EXPECT_NE(err.find("failed: 4 of the 24 calls that ended failed, 4 of them unanswered 0.2 s after the end"),
                      std::string::npos)
                << err;
        }
    }
}

// `local --bind ::` puts its server on ::1, as 0.0.0.0 puts it on 127.0.0.1 (the client
// was given [::]:port, which nothing answers).
TEST(PerfLocal, AWildcardBindMeansTheLoopbackOfItsFamily) {
    EXPECT_EQ(localServerBind("0.0.0.0"), "127.0.0.1");
    EXPECT_EQ(localServerBind("::"), "::1");
    EXPECT_EQ(localServerBind("0:0:0:0:0:0:0:0"), "::1");
    EXPECT_EQ(localServerBind("127.0.0.1"), "127.0.0.1");
    EXPECT_EQ(localServerBind("::1"), "::1");
    EXPECT_EQ(localServerBind("10.1.2.3"), "10.1.2.3");
    const int fd = ::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_loopback;
    const bool ipv6 = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
    if (fd >= 0) ::close(fd);
    if (!ipv6) GTEST_SKIP() << "no IPv6 loopback here";
    nlohmann::json j = runLocalJson({"--bind", "::", "--workload", "64", "--duration", "1.1", "--client-max", "2",
                                     "--base-rtt-us", "10"},
                                    "bind-any6");
    ASSERT_FALSE(j.is_null());
    checkSchema(j, "homa");
    ASSERT_EQ(j["options"]["servers"].size(), 1u);
    EXPECT_EQ(j["options"]["servers"][0].get<std::string>().rfind("[::1]:", 0), 0u) << j["options"]["servers"];
}

// Values a plot cannot show are refused with the file and the field named, in one line:
// a slowdown of 0 or less (gnuplot failed on it with "gnuplot failed"), a size of 0 (the
// point was dropped from the logarithmic axis without a word), a negative count (it
// wrapped to a huge unsigned one).
TEST(PerfPlot, OutOfRangeValuesAreOneLineErrorsNamingTheField) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(::testing::TempDir()) / ("perf-plot-range-" + std::to_string(getpid()));
    fs::create_directories(dir);
    struct Case {
        const char* bucket;
        const char* field;
    };
    const std::vector<Case> cases = {
        {R"({"count":3,"max_size":64,"slowdown_p99":0})", "buckets[1].slowdown_p99 is 0"},
        {R"({"count":3,"max_size":64,"slowdown_p99":-2.5})", "buckets[1].slowdown_p99 is -2.5"},
        {R"({"count":3,"max_size":0,"slowdown_p99":2})", "buckets[1].max_size is 0"},
        {R"({"count":0,"max_size":-64,"slowdown_p99":null})", "buckets[1].max_size is -64"},
        {R"({"count":-5,"max_size":64,"slowdown_p99":2})", "buckets[1].count is -5"},
        {R"({"count":2.5,"max_size":64,"slowdown_p99":2})", "buckets[1].count is 2.5"},
    };
    for (size_t i = 0; i < cases.size(); ++i) {
        const std::string in = (dir / "r").string() + std::to_string(i) + ".json";
        std::ofstream(in) << R"({"tool":"homa-perf","options":{},"buckets":[{"count":1,"max_size":10,)"
                          << R"("slowdown_p99":1.5},)" << cases[i].bucket << "]}";
        PerfOptions o;
        std::string e;
        ASSERT_TRUE(parse({"plot", in, "-o", (dir / "p.png").string()}, &o, &e)) << e;
        testing::internal::CaptureStderr();
        const int rc = runPlot(o);
        const std::string err = testing::internal::GetCapturedStderr();
        EXPECT_EQ(rc, 1) << cases[i].bucket;
        EXPECT_NE(err.find(in), std::string::npos) << err;
        EXPECT_NE(err.find(cases[i].field), std::string::npos) << err;
        EXPECT_EQ(err.find('\n'), err.size() - 1) << "not one line: " << err;
    }
    EXPECT_FALSE(fs::exists(dir / "p.png"));
    fs::remove_all(dir);
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
