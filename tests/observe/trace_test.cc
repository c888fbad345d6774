// Time traces: recording, dumping, parsing, clock alignment and merging, RPC phases.
#include "homa/trace.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <latch>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "trace/reader.h"

namespace homa::trace {
namespace {

// Tracing is process-wide: each test starts from an empty, disabled recorder.
class Trace : public ::testing::Test {
  protected:
    void SetUp() override {
        enable(false);
        clear();
    }
    void TearDown() override {
        enable(false);
        clear();
    }
    static TraceFile parse(const std::string& text) {
        std::istringstream in(text);
        TraceFile t;
        std::string error;
        EXPECT_TRUE(parseTrace(in, t, &error)) << error << "\n" << text;
        return t;
    }
};

TEST_F(Trace, FormatsIntegerArguments) {
    uint64_t args[4] = {42, 0xff, static_cast<uint64_t>(-3), 7};
    EXPECT_EQ(formatMessage("id %u hex %x signed %d %llu%%", args), "id 42 hex ff signed -3 7%");
    EXPECT_EQ(formatMessage("too many %u %u %u %u %u", args, 4), "too many 42 255 18446744073709551613 7 0");
    EXPECT_EQ(formatMessage("not ours %s and %", args), "not ours %s and %");
    EXPECT_EQ(formatMessage(nullptr, args), "");
}

TEST_F(Trace, NothingIsRecordedWhileOff) {
    int evaluated = 0;
    HOMA_TRACE("off %u", ++evaluated);
    EXPECT_EQ(evaluated, 0) << "arguments must not be evaluated when tracing is off";
    TraceFile t = parse(dumpToString());
    EXPECT_TRUE(t.events.empty());
}

TEST_F(Trace, RecordsAreDumpedInOrderWithArguments) {
    enable(true);
    HOMA_TRACE("first");
    HOMA_TRACE("second id %u offset %u", 12, 3000);
    HOMA_TRACE("third %u %u %u %u", 1, 2, 3, 4);
    enable(false);
    HOMA_TRACE("after");
    TraceFile t = parse(dumpToString());
    ASSERT_EQ(t.events.size(), 3u);
    EXPECT_EQ(t.events[0].text, "first");
    EXPECT_EQ(t.events[1].text, "second id 12 offset 3000");
    EXPECT_EQ(t.events[2].text, "third 1 2 3 4");
    EXPECT_LE(t.events[0].ns, t.events[1].ns);
    EXPECT_LE(t.events[1].ns, t.events[2].ns);
    // Times are on CLOCK_MONOTONIC_RAW: within a second of now.
    EXPECT_LT(std::llabs(t.events[2].ns - monotonicRawNs()), 1'000'000'000);
}

// Switching tracing on or off while another thread dumps the rings stands: the dump
// holds recording off only while it copies, apart from the switch. (It switched tracing
// off and back on, undoing a "trace off" given meanwhile.)
TEST_F(Trace, ASwitchThrownDuringADumpStands) {
    enable(true);
    for (int i = 0; i < 50'000; ++i) HOMA_TRACE("filler %u", i);  // (dumps take a while)
    std::atomic<bool> stop{false};
    std::thread dumper([&] {
        while (!stop) (void)dumpToString();
    });
    int undone = 0;
    for (int round = 0; round < 300; ++round) {
        const bool on = round % 2 == 0;
        enable(on);
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
        while (std::chrono::steady_clock::now() < until)
            if (switchedOn() != on) {
                ++undone;
                break;
            }
    }
    stop = true;
    dumper.join();
    EXPECT_EQ(undone, 0);
}

TEST_F(Trace, CalibrationMatchesTheRawClock) {
    double perNs = cyclesPerNs();
    EXPECT_GT(perNs, 0.01);
    EXPECT_LT(perNs, 100.0);
    // The counter's time and the raw clock agree to well within a millisecond.
    int64_t raw = monotonicRawNs();
    int64_t fromTsc = toMonotonicRawNs(readClock());
    EXPECT_LT(std::llabs(fromTsc - raw), 1'000'000);
}

TEST_F(Trace, RingKeepsTheNewestRecords) {
    enable(true);
    for (uint64_t i = 0; i < kRecordsPerThread + 100; ++i) HOMA_TRACE("n %u", i);
    enable(false);
    TraceFile t = parse(dumpToString());
    ASSERT_EQ(t.events.size(), kRecordsPerThread);
    EXPECT_EQ(t.events.front().text, "n 100");
    EXPECT_EQ(t.events.back().text, "n " + std::to_string(kRecordsPerThread + 99));
}

TEST_F(Trace, EachThreadHasItsOwnRing) {
    enable(true);
    std::vector<std::thread> threads;
    // All four live at once (a ring passes to a new thread only once its thread exits).
    std::latch alive(4);
    for (int k = 0; k < 4; ++k)
        threads.emplace_back([k, &alive] {
            for (int i = 0; i < 1000; ++i) HOMA_TRACE("thread %u record %u", k, i);
            alive.arrive_and_wait();
        });
    for (auto& t : threads) t.join();
    enable(false);
    TraceFile t = parse(dumpToString());
    ASSERT_EQ(t.events.size(), 4000u);
    std::map<uint32_t, std::set<std::string>> byRing;
    for (const Event& e : t.events) byRing[e.thread].insert(e.text.substr(0, 8));
    for (const auto& [ring, prefixes] : byRing) EXPECT_EQ(prefixes.size(), 1u) << "ring " << ring << " mixes threads";
}

TEST_F(Trace, DumpsWhileOtherThreadsRecordAreWellFormed) {
    enable(true);
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (int k = 0; k < 2; ++k)
        threads.emplace_back([k, &stop] {
            for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) HOMA_TRACE("thread %u record %u", k, i);
        });
    for (int d = 0; d < 5; ++d) {
        TraceFile t = parse(dumpToString());  // recording pauses while a dump is taken
        for (const Event& e : t.events) ASSERT_EQ(e.text.rfind("thread ", 0), 0u) << e.text;
    }
    EXPECT_TRUE(enabled()) << "a dump resumes recording";
    stop = true;
    for (auto& t : threads) t.join();
}

TEST_F(Trace, DumpWritesAFileAndReportsBadPaths) {
    enable(true);
    HOMA_TRACE("to a file %u", 5);
    std::string path = ::testing::TempDir() + "trace_test_" + std::to_string(::getpid()) + ".tt";
    std::string error;
    ASSERT_TRUE(dump(path, &error)) << error;
    TraceFile t;
    ASSERT_TRUE(readTraceFile(path, t, &error)) << error;
    ASSERT_EQ(t.events.size(), 1u);
    EXPECT_EQ(t.events[0].text, "to a file 5");
    std::remove(path.c_str());
    EXPECT_FALSE(dump("/nonexistent-dir/x.tt", &error));
    EXPECT_NE(error.find("/nonexistent-dir/x.tt"), std::string::npos);
    EXPECT_FALSE(readTraceFile("/nonexistent-dir/x.tt", t, &error));
}

// Dumps to one path from two threads at once (two publishers' commands, say): each
// writes under a name of its own and renames a whole file. (Under one shared temporary
// name, one dump's file was taken away or renamed under the other.)
TEST_F(Trace, DumpsToOnePathAtOnceEachWriteAWholeFile) {
    enable(true);
    HOMA_TRACE("shared path %u", 9);
    const std::string dir = ::testing::TempDir();
    const std::string name = "trace_shared_" + std::to_string(::getpid()) + ".tt";
    const std::string path = dir + name;
    std::atomic<int> failed{0};
    std::string firstError;
    std::mutex mu;
    auto dumper = [&] {
        for (int i = 0; i < 50; ++i) {
            std::string error;
            if (!dump(path, &error)) {
                std::lock_guard lk(mu);
                if (failed++ == 0) firstError = error;
            }
        }
    };
    std::thread a(dumper), b(dumper);
    a.join();
    b.join();
    EXPECT_EQ(failed.load(), 0) << firstError;
    TraceFile t;
    std::string error;
    ASSERT_TRUE(readTraceFile(path, t, &error)) << error;
    ASSERT_FALSE(t.events.empty());
    EXPECT_EQ(t.events.back().text, "shared path 9");
    std::remove(path.c_str());
    for (const auto& e : std::filesystem::directory_iterator(dir))
        EXPECT_NE(e.path().filename().string().rfind(name + ".partial", 0), 0u) << "left behind: " << e.path();
}

TEST_F(Trace, ParserRejectsOtherFiles) {
    std::string error;
    TraceFile t;
    std::istringstream notTrace("hello world\n");
    EXPECT_FALSE(parseTrace(notTrace, t, &error));
    EXPECT_NE(error.find("line 1"), std::string::npos) << error;
    std::istringstream badLine("# homa-trace 1\n# base_ns 5\n  1.000 us (+ 1.000 us) [tX] oops\n");
    EXPECT_FALSE(parseTrace(badLine, t, &error));
    EXPECT_NE(error.find("line 3"), std::string::npos) << error;
    std::istringstream version("# homa-trace 9\n");
    EXPECT_FALSE(parseTrace(version, t, &error));
    std::istringstream noBase("# homa-trace 1\n     1.000 us (+    1.000 us) [t00] x\n");
    EXPECT_FALSE(parseTrace(noBase, t, &error));
    // Times whose sums overflow an int64_t (base plus event time wrapped negative).
    std::istringstream hugeBase("# homa-trace 1\n# base_ns 9223372036854775807\n 1.000 us (+ 1.000 us) [t00] x\n");
    EXPECT_FALSE(parseTrace(hugeBase, t, &error));
    std::istringstream hugeTime("# homa-trace 1\n# base_ns 5\n 9e15 us (+ 1.000 us) [t00] x\n");
    EXPECT_FALSE(parseTrace(hugeTime, t, &error));
    // Only regular files are read (/dev/zero is one endless line).
    EXPECT_FALSE(readTraceFile("/dev/zero", t, &error));
    EXPECT_NE(error.find("/dev/zero: a character device, not a regular file"), std::string::npos) << error;
    EXPECT_FALSE(readTraceFile("/tmp", t, &error));
    EXPECT_NE(error.find("a directory"), std::string::npos) << error;
}

TEST_F(Trace, PacketEventsAndRpcIdsAreRecognised) {
    auto p = parsePacketEvent("send DATA id 42 offset 1400 len 1400 prio 3");
    ASSERT_TRUE(p);
    EXPECT_TRUE(p->send);
    EXPECT_EQ(p->type, "DATA");
    EXPECT_EQ(p->id, 42u);
    EXPECT_EQ(p->offset, 1400u);
    auto b = parsePacketEvent("recv BUSY id 43");
    ASSERT_TRUE(b);
    EXPECT_FALSE(b->send);
    EXPECT_EQ(b->offset, 0u);
    EXPECT_FALSE(parsePacketEvent("grant decision active 1"));
    EXPECT_FALSE(parsePacketEvent("send DATA id x"));
    EXPECT_EQ(eventRpcId("deliver request id 43 len 5"), 42u);
    EXPECT_EQ(eventRpcId("rpc start id 42 len 5"), 42u);
    EXPECT_FALSE(eventRpcId("grant decision active 1"));
}

// A synthetic client and server whose clocks differ by a known amount: the server's clock
// reads kSkew more than the client's. Packets take 3 us (+ up to 2 us of queueing) each way.
constexpr int64_t kSkew = 250'000;

std::string traceText(const std::string& name, int64_t base, const std::vector<std::pair<int64_t, std::string>>& ev) {
    std::string s = "# homa-trace 1\n# process " + name + "\n# base_ns " + std::to_string(base) + "\n";
    char line[200];
    for (const auto& [ns, text] : ev) {
        std::snprintf(line, sizeof(line), "%12.3f us (+%9.3f us) [t00] %s\n", static_cast<double>(ns - base) / 1000.0,
                      0.0, text.c_str());
        s += line;
    }
    return s;
}

struct SyntheticPair {
    TraceFile client, server;
};

// RPC i starts at i*100 us (client clock); request network 3 us + queueing q_i; server
// works 10 us (RPC 4: 500 us); response network 3 us + queueing.
SyntheticPair syntheticPair() {
    std::vector<std::pair<int64_t, std::string>> c, s;
    int64_t base = 1'000'000'000;
    for (int i = 0; i < 5; ++i) {
        uint64_t id = 1000 + 2 * static_cast<uint64_t>(i);
        std::string ids = std::to_string(id), sids = std::to_string(id + 1);
        int64_t t = base + i * 1'000'000;
        int64_t q = (i % 3) * 1000;  // 0, 1 or 2 us of queueing
        int64_t work = i == 4 ? 500'000 : 10'000;
        c.push_back({t, "rpc start id " + ids + " len 100"});
        c.push_back({t + 500, "send DATA id " + ids + " offset 0 len 100 prio 7"});
        int64_t arrive = t + 500 + 3000 + q + kSkew;
        s.push_back({arrive, "recv DATA id " + ids + " offset 0 len 100 retransmit 0"});
        s.push_back({arrive + 1000, "deliver request id " + ids + " len 100"});
        s.push_back({arrive + 1000 + work, "response start id " + sids + " len 100"});
        int64_t sent = arrive + 1000 + work + 200;
        s.push_back({sent, "send DATA id " + sids + " offset 0 len 100 prio 7"});
        int64_t back = sent - kSkew + 3000 + (2 - i % 3) * 1000;
        c.push_back({back, "recv DATA id " + sids + " offset 0 len 100 retransmit 0"});
        c.push_back({back + 300, "deliver response id " + ids + " len 100"});
        c.push_back({back + 800, "handoff response id " + ids});
    }
    std::sort(c.begin(), c.end());
    std::sort(s.begin(), s.end());
    SyntheticPair p;
    std::istringstream ci(traceText("client", base, c)), si(traceText("server", base + kSkew, s));
    std::string error;
    EXPECT_TRUE(parseTrace(ci, p.client, &error)) << error;
    EXPECT_TRUE(parseTrace(si, p.server, &error)) << error;
    return p;
}

// A chain of traces whose clocks each lie far from the last (packets sent at one end of
// a trace's time range and received at the other): offsets that add up beyond what the
// merged times can hold are not applied (they overflowed), and what is merged can be
// printed.
TEST_F(Trace, ClocksTooFarApartAreTakenAsTheyAre) {
    constexpr int64_t kFar = int64_t{1} << 60;
    std::vector<TraceFile> traces(10);
    for (size_t k = 0; k < traces.size(); ++k) {
        traces[k].label = "t" + std::to_string(k);
        const std::string in = "recv DATA id " + std::to_string(2 * k) + " offset 0 len 1 retransmit 0";
        const std::string out = "send DATA id " + std::to_string(2 * k + 2) + " offset 0 len 1 prio 7";
        if (k > 0) traces[k].events.push_back(Event{.ns = 2 * kFar, .text = in});  // received late...
        traces[k].events.push_back(Event{.ns = k == 0 ? -2 * kFar : 0, .text = out});  // ...sent early
        std::sort(traces[k].events.begin(), traces[k].events.end(),
                  [](const Event& a, const Event& b) { return a.ns < b.ns; });
    }
    Alignment a = alignClocks(traces);
    for (size_t k = 0; k < traces.size(); ++k) {
        EXPECT_LE(a.offsetNs[k], kFar) << k << ": " << a.notes[k];
        EXPECT_GE(a.offsetNs[k], -kFar) << k << ": " << a.notes[k];
    }
    EXPECT_NE(a.notes.back().find("taken as is"), std::string::npos) << a.notes.back();
    std::vector<Event> merged = mergeTraces(traces, a.offsetNs);
    for (size_t i = 1; i < merged.size(); ++i) EXPECT_LE(merged[i - 1].ns, merged[i].ns);
    EXPECT_FALSE(formatTimeline(merged, traces).empty());
}

TEST_F(Trace, TwoTracesWithAKnownOffsetMergeCorrectly) {
    SyntheticPair p = syntheticPair();
    std::vector<TraceFile> traces = {p.client, p.server};
    Alignment a = alignClocks(traces);
    ASSERT_EQ(a.offsetNs.size(), 2u);
    EXPECT_EQ(a.offsetNs[0], 0);
    // Fastest delivery is 3 us both ways, so the estimate is exact (to rounding).
    EXPECT_NEAR(static_cast<double>(a.offsetNs[1]), static_cast<double>(-kSkew), 2.0) << a.notes[1];
    std::vector<Event> merged = mergeTraces(traces, a.offsetNs);
    ASSERT_EQ(merged.size(), p.client.events.size() + p.server.events.size());
    // Causality holds on the merged timeline: every packet is received after it was sent.
    std::map<std::pair<uint64_t, bool>, int64_t> when;
    for (const Event& e : merged) {
        if (auto pk = parsePacketEvent(e.text)) when[{pk->id, pk->send}] = e.ns;
    }
    for (const auto& [key, ns] : when)
        if (key.second) {
            EXPECT_LT(ns, when.at({key.first, false})) << "packet of id " << key.first;
        }
    for (size_t i = 1; i < merged.size(); ++i) EXPECT_LE(merged[i - 1].ns, merged[i].ns);
    // Without alignment the server's events all land 250 us late and causality breaks.
    std::vector<Event> raw = mergeTraces(traces, {0, 0});
    EXPECT_EQ(rpcEvents(raw, 1000).at(1).text.substr(0, 9), "send DATA");
    EXPECT_EQ(rpcEvents(raw, 1000).at(2).text.substr(0, 9), "recv DATA");
}

TEST_F(Trace, OneRpcsTimelineSpansBothEnds) {
    SyntheticPair p = syntheticPair();
    std::vector<TraceFile> traces = {p.client, p.server};
    std::vector<Event> merged = mergeTraces(traces, alignClocks(traces).offsetNs);
    std::vector<Event> ev = rpcEvents(merged, 1003);  // the server's id names the same RPC
    ASSERT_EQ(ev.size(), 9u);
    EXPECT_EQ(ev.front().text, "rpc start id 1002 len 100");
    EXPECT_EQ(ev[2].trace, 1);
    EXPECT_EQ(ev.back().text, "handoff response id 1002");
    std::string text = formatTimeline(ev, traces);
    EXPECT_NE(text.find("[server t00] deliver request id 1002"), std::string::npos) << text;
}

TEST_F(Trace, SlowRpcsAreExplainedPhaseByPhase) {
    SyntheticPair p = syntheticPair();
    std::vector<TraceFile> traces = {p.client, p.server};
    std::vector<Event> merged = mergeTraces(traces, alignClocks(traces).offsetNs);
    std::vector<RpcPhases> phases = rpcPhases(merged);
    ASSERT_EQ(phases.size(), 5u);
    const RpcPhases& first = phases[0];
    EXPECT_EQ(first.id, 1000u);
    ASSERT_EQ(first.phaseNs.size(), kPhaseNames.size());
    EXPECT_EQ(first.phaseNs[0], 500);      // client queue
    EXPECT_NEAR(first.phaseNs[1], 3000, 2);  // request network
    EXPECT_EQ(first.phaseNs[2], 1000);     // request receive
    EXPECT_EQ(first.phaseNs[3], 10'000);   // server application
    EXPECT_EQ(first.phaseNs[4], 200);      // response queue
    EXPECT_EQ(first.phaseNs[6], 500);      // client handoff
    EXPECT_EQ(phases[4].phaseNs[3], 500'000);
    std::string summary = slowSummary(merged, 0.2, 3);
    EXPECT_NE(summary.find("5 RPCs"), std::string::npos) << summary;
    EXPECT_NE(summary.find("slowest 1 "), std::string::npos) << summary;
    // The slow RPC's excess is in the server application.
    std::istringstream lines(summary);
    std::string line;
    bool found = false;
    while (std::getline(lines, line))
        if (line.find("server application") != std::string::npos && line.find("500.000") != std::string::npos)
            found = true;
    EXPECT_TRUE(found) << summary;
    EXPECT_NE(slowSummary({}, 0.01, 0).find("no complete client RPC"), std::string::npos);
}

// A phase's share is of the latency of the RPCs that show it. Here the slower RPC has no
// server-side events (its server's trace is missing): its 101 us count in the client's
// phases, not in the server's, whose share is of the other RPC's 10 us alone (it was
// of the mean of both, 55.5 us).
TEST_F(Trace, PhaseSharesAreOfTheRpcsThatShowThePhase) {
    std::vector<Event> merged = {
        {0, 0, 0, "rpc start id 2000 len 100"},
        {0, 0, 0, "rpc start id 2002 len 100"},
        {1000, 0, 0, "send DATA id 2000 offset 0 len 100 prio 7"},
        {1000, 0, 0, "send DATA id 2002 offset 0 len 100 prio 7"},
        {2000, 0, 1, "recv DATA id 2001 offset 0 len 100 retransmit 0"},
        {3000, 0, 1, "deliver request id 2001 len 100"},
        {4000, 0, 1, "response start id 2001 len 100"},
        {5000, 0, 1, "send DATA id 2001 offset 0 len 100 prio 7"},
        {9000, 0, 0, "deliver response id 2000 len 100"},
        {10'000, 0, 0, "handoff response id 2000 status 0"},
        {100'000, 0, 0, "deliver response id 2002 len 100"},
        {101'000, 0, 0, "handoff response id 2002 status 0"},
    };
    std::vector<RpcPhases> phases = rpcPhases(merged);
    ASSERT_EQ(phases.size(), 2u);
    std::string summary = slowSummary(merged, 1.0, 0);
    auto lineOf = [&](const std::string& phase) {
        std::istringstream lines(summary);
        std::string line;
        while (std::getline(lines, line))
            if (line.find("  " + phase + " ") == 0) return line;
        return std::string();
    };
    // server application: 1 us of the 10 us of the one RPC that shows it.
    EXPECT_NE(lineOf("server application").find("10.0%"), std::string::npos) << summary;
    EXPECT_NE(lineOf("server application").find("1/2"), std::string::npos) << summary;
    // client queue: 1 us in each, of 111 us in all.
    EXPECT_NE(lineOf("client queue").find("1.8%"), std::string::npos) << summary;
    EXPECT_NE(lineOf("client queue").find("2/2"), std::string::npos) << summary;
}

}  // namespace
}  // namespace homa::trace
