// homa-sim's options: what the drain limit measures, cutoffs and levels, rates and byte
// counts the simulation can represent, options that would be ignored, the output files
// and the figures of empty buckets. Runs of the tool itself are tiny (2 or 4 hosts,
// fixed sizes, well under a millisecond of simulated arrivals) so that each takes a few
// milliseconds.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/simtool.h"

namespace homa::simtool {
namespace {

using test::mustDerive;

using test::runTool;

std::string readAll(const std::string& path) { return homa::test::readFile(path); }

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

struct BadCase {
    std::string args;
    std::string error;  ///< a part of the one-line error
};

// Each command line is refused with exit status 2 and one line on stderr naming the
// problem. (Every case is otherwise a run of a few milliseconds, in case it is accepted.)
void expectRefused(const std::vector<BadCase>& cases) {
    for (const BadCase& c : cases) {
        std::string out;
        EXPECT_EQ(runTool(c.args, &out), 2) << c.args << ": " << out;
        EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << c.args << ": " << out;
        EXPECT_EQ(out.rfind("homa-sim: ", 0), 0u) << c.args << ": " << out;
        EXPECT_NE(out.find(c.error), std::string::npos) << c.args << ": " << out;
    }
}

// A tiny network and fixed-size messages: no workload file, a few milliseconds per run.
const std::string kTiny = "--topology star --hosts 2 --size 1000 -d 0.05 -q ";

// ---------------------------------------------------------------- the drain limit

// Four hosts sending 50 KB messages at 80% load: with no drain time, the messages still
// under way when arrivals end (about one per host) are unfinished at the limit.
SimOptions busyStar() {
    SimOptions o;
    o.topology = "star";
    o.hosts = 4;
    o.fixedSize = 50'000;
    o.load = 0.8;
    o.durationMs = 0.5;
    o.drainMs = 0;
    o.seed = 3;
    return o;
}

uint64_t samples(const Results& r) {
    uint64_t n = 0;
    for (const BucketStats& b : r.buckets) n += b.count;
    return n;
}

// The drain limit ends the measurement whether or not the run then settles: a measured
// message finished while the network empties (no arrivals, so faster than under load)
// is incomplete and not in the slowdowns. Settling counted it as completed.
TEST(SimDrainLimit, MessagesUnfinishedAtTheLimitAreIncompleteEvenWhenTheRunSettles) {
    SimOptions o = busyStar();
    o.settle = false;
    Simulation stop(o, mustDerive(o));
    const Results a = stop.run();
    o.settle = true;
    Simulation settle(o, mustDerive(o));
    const Results b = settle.run();
    EXPECT_GT(a.incomplete, 0u);
    EXPECT_GT(a.completed, 0u);
    EXPECT_EQ(b.incomplete, a.incomplete);
    EXPECT_EQ(b.completed, a.completed);
    EXPECT_EQ(b.failed, a.failed);
    EXPECT_EQ(samples(b), b.completed);
    EXPECT_EQ(b.all.count, b.completed);
    EXPECT_EQ(b.measured, b.completed + b.failed + b.incomplete);
    // Settling still empties the network: every message started is accounted for.
    EXPECT_TRUE(b.networkIdle);
    EXPECT_EQ(b.pendingAtEnd, 0u);
    EXPECT_EQ(b.generated, b.deliveredAll + b.failedAll + b.refused);
    EXPECT_FALSE(a.networkIdle);
}

// Incomplete messages give exit status 3, with or without settling.
TEST(SimDrainLimit, IncompleteMessagesGiveExitStatus3) {
    for (const char* settle : {"", " --no-settle"}) {
        std::string out;
        EXPECT_EQ(runTool(std::string("--topology star --hosts 4 --size 50000 -l 0.8 -d 0.5 --seed 3 --drain-ms 0") +
                              settle,
                          &out),
                  3)
            << settle << ": " << out;
        EXPECT_EQ(out.find(" incomplete 0 "), std::string::npos) << settle << ": " << out;
    }
}

// ---------------------------------------------------------------- cutoffs

// N cutoffs make N + 1 unscheduled levels, the last for every size above the last cutoff
// (the last cutoff was overwritten by the catch-all: 1000,10000 gave 1000,max).
TEST(SimCutoffs, NCutoffsMakeNPlusOneLevels) {
    constexpr uint32_t kMax = std::numeric_limits<uint32_t>::max();
    SimOptions o;
    o.fixedSize = 1000;
    o.cutoffs = {1000, 10000};
    Derived d = mustDerive(o);
    EXPECT_EQ(d.unschedLevels, 3);
    EXPECT_EQ(d.engine.unschedCutoffs, (std::array<uint32_t, 8>{0, 0, 0, 0, 0, kMax, 10000, 1000}));
    EXPECT_EQ(d.engine.maxOvercommit, 5);
    o.cutoffs = {1000};
    d = mustDerive(o);
    EXPECT_EQ(d.unschedLevels, 2);
    EXPECT_EQ(d.engine.unschedCutoffs, (std::array<uint32_t, 8>{0, 0, 0, 0, 0, 0, kMax, 1000}));
    o.cutoffs = {1, 2, 3, 4, 5, 6};
    d = mustDerive(o);
    EXPECT_EQ(d.unschedLevels, 7);
    EXPECT_EQ(d.engine.unschedCutoffs, (std::array<uint32_t, 8>{0, kMax, 6, 5, 4, 3, 2, 1}));
    EXPECT_EQ(d.engine.maxOvercommit, 1);
    // --unsched-priorities agreeing with the cutoffs is accepted.
    o.cutoffs = {1000, 10000};
    o.unschedPriorities = 3;
    EXPECT_EQ(mustDerive(o).unschedLevels, 3);
    std::string out;
    EXPECT_EQ(runTool("--topology star --hosts 2 --size 1000 -d 0.05 --cutoffs 1000,10000", &out), 0) << out;
    EXPECT_NE(out.find("3 unscheduled levels, cutoffs 1000,10000,max"), std::string::npos) << out;
}

TEST(SimCutoffs, BadCutoffsAreRefused) {
    expectRefused({
        {kTiny + "--cutoffs 1,2,3,4,5,6,7", "--cutoffs: at most 6"},
        {kTiny + "--cutoffs 100,100", "strictly ascending"},
        {kTiny + "--cutoffs 200,100", "strictly ascending"},
        {kTiny + "--cutoffs 0", "--cutoffs must be in [1, "},
        {kTiny + "--cutoffs 100,0", "--cutoffs must be in [1, "},
        {kTiny + "--cutoffs -5", "--cutoffs"},
        {kTiny + "--cutoffs 100,4294967295", "--cutoffs must be in [1, "},
        // Levels are given either by the cutoffs or by their number: they must agree.
        {kTiny + "--cutoffs 1000 --unsched-priorities 3", "--unsched-priorities 3 contradicts --cutoffs"},
        {kTiny + "--cutoffs 1000,10000 --unsched-priorities 7", "--unsched-priorities 7 contradicts --cutoffs"},
    });
}

// ---------------------------------------------------------------- rates and byte counts

// Links count in whole Mbit/s: other rates were rounded (0.0015 Gbps ran at 2 Mbit/s
// while arrivals were computed for 1.5).
TEST(SimLinkRates, RatesThatAreNotWholeMbpsAreRefused) {
    expectRefused({
        {kTiny + "--host-gbps 0.0015", "--host-gbps must be a whole number of Mbit/s"},
        {kTiny + "--host-gbps 0.0005", "--host-gbps must be a whole number of Mbit/s"},
        {kTiny + "--host-gbps 10.0001", "--host-gbps must be a whole number of Mbit/s"},
        {kTiny + "--agg-gbps 2.5005", "--agg-gbps must be a whole number of Mbit/s"},
        {kTiny + "--agg-gbps 20000", "--agg-gbps must be a whole number of Mbit/s in [0.001, 10000] Gbps"},
        // The pacers too: 12.345% of 10 Gbps.
        {kTiny + "--pacer-rate 0.12345", "--pacer-rate 0.12345 of 10000 Mbit/s is 1234.5 Mbit/s"},
    });
    SimOptions o;
    o.fixedSize = 1000;
    o.hostGbps = 0.001;
    o.aggGbps = 2.5;
    o.load = 1;
    EXPECT_EQ(mustDerive(o).engine.linkMbps, 1u);
    o = SimOptions{};
    o.fixedSize = 1000;
    o.pacerRate = 0.93;
    EXPECT_EQ(mustDerive(o).engine.linkMbps, 9'300u);
}

// Byte counts near 4 GB wrapped 32-bit arithmetic (--unsched-bytes 4294966000 rounded
// up to whole packets came out as 0 and gave one level).
TEST(SimByteLimits, ByteCountsThatWouldWrapAreRefused) {
    expectRefused({
        {kTiny + "--unsched-bytes 4294966000", "--unsched-bytes must be at most 1000000000"},
        {kTiny + "--rtt-bytes 4294967295", "--rtt-bytes must be at most 1000000000"},
        {kTiny + "--unsched-bytes 1000000001", "--unsched-bytes must be at most"},
        {kTiny + "--wire-overhead 4294967295", "--wire-overhead must be at most 65535"},
        {kTiny + "--wire-overhead 65536", "--wire-overhead must be at most 65535"},
    });
    SimOptions o;
    o.fixedSize = 1000;
    o.unschedBytes = 1'000'000'000;
    o.wireOverheadBytes = 65'535;
    const Derived d = mustDerive(o);
    EXPECT_GE(d.engine.unschedBytes, 1'000'000'000u);
}

// A round trip of seconds on a fast link is more bytes than 32 bits hold: the derived
// value is capped at the largest message, not wrapped to an arbitrary smaller one.
TEST(SimByteLimits, DerivedRoundTripOfSecondsIsCappedNotWrapped) {
    SimOptions o;
    o.fixedSize = 1000;
    o.linkLatencyNs = o.switchDelayNs = o.hostDelayNs = 1'000'000'000;
    const Derived d = mustDerive(o);
    const uint32_t payload = d.engine.maxPayload;
    EXPECT_EQ(d.rttBytes, kMaxSimMessageBytes / payload * payload);
    EXPECT_EQ(d.engine.unschedBytes, d.rttBytes);
    EXPECT_EQ(d.engine.window, d.rttBytes);
}

// ---------------------------------------------------------------- ignored options

// Options that would have no effect are refused rather than silently ignored.
TEST(SimOptionErrors, OptionsThatWouldBeIgnoredAreRefused) {
    const std::string twoTier = "--racks 1 --hosts-per-rack 2 --agg-switches 1 --size 1000 -d 0.05 -q ";
    expectRefused({
        {kTiny + "--solo-receiver 1", "--solo-receiver requires --solo-sender"},
        {kTiny + "--solo-sender -1", "--solo-sender: must be at least 0, not -1"},
        {kTiny + "--solo-sender 0 --solo-receiver -1", "--solo-receiver: must be at least 0, not -1"},
        {twoTier + "--hosts 5", "--hosts is for --topology star"},
        {kTiny + "--racks 3", "--racks is for --topology twotier"},
        {kTiny + "--hosts-per-rack 3", "--hosts-per-rack is for --topology twotier"},
        {kTiny + "--agg-switches 3", "--agg-switches is for --topology twotier"},
        {"--topology star --hosts 2 -d 0.05 -q --size 0", "--size: must be at least 1, not 0"},
        {kTiny + "-w w3", "excludes"},
        {kTiny + "--warmup-ms -1", "--warmup-ms: must be at least 0, not -1"},
        {kTiny + "--drain-ms -0.5", "--drain-ms: must be at least 0, not -0.5"},
    });
    // A solo sender's messages go one at a time, each on an idle network: no load,
    // arrival period, warm-up or drain applies (they were ignored).
    const std::string solo = "--topology star --hosts 2 --size 1000 -n 1 -q --solo-sender 0 ";
    expectRefused({
        {solo + "-l 0.5", "excludes"},
        {solo + "-d 1", "excludes"},
        {solo + "--warmup-ms 0", "excludes"},
        {solo + "--drain-ms 1", "excludes"},
        {solo + "--no-settle", "excludes"},
    });
    // Their valid uses still run.
    std::string out;
    EXPECT_EQ(runTool("--topology star --hosts 3 --size 1000 -n 2 -q --solo-sender 0 --solo-receiver 2", &out), 0)
        << out;
    EXPECT_EQ(runTool(kTiny + "--warmup-ms 0 --drain-ms 1", &out), 0) << out;
    EXPECT_EQ(runTool("--racks 1 --hosts-per-rack 2 --agg-switches 1 --size 1000 -d 0.05 -q", &out), 0) << out;
}

// ---------------------------------------------------------------- outputs

// The output files are checked before the run, not after it (a run of hours was lost to
// a mistyped directory), and a file that cannot be written does not cost the other one:
// nothing is written or emptied.
TEST(SimOutputs, OutputFilesAreCheckedBeforeTheRun) {
    char dir[] = "/tmp/homa-sim-outputs-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    const std::string d = dir;
    const std::string run = "--topology star --hosts 2 --size 1000 -d 0.05 ";  // the table on stdout
    std::string out;
    EXPECT_EQ(runTool(run + "--csv " + d + "/no/such/dir/x.csv --json " + d + "/ok.json", &out), 1) << out;
    EXPECT_EQ(out, "homa-sim: cannot write " + d + "/no/such/dir/x.csv: No such file or directory\n");
    EXPECT_FALSE(exists(d + "/ok.json"));
    EXPECT_EQ(runTool(run + "--csv " + d + "/ok.csv --json " + d + "/no/such/dir/x.json", &out), 1) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    EXPECT_FALSE(exists(d + "/ok.csv"));
    // A file that exists keeps its contents.
    FILE* f = fopen((d + "/old.csv").c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs("keep\n", f);
    fclose(f);
    EXPECT_EQ(runTool(run + "--csv " + d + "/old.csv --json " + d + "/no/such/dir/x.json", &out), 1) << out;
    EXPECT_EQ(readAll(d + "/old.csv"), "keep\n");
    // Both writable: both written.
    EXPECT_EQ(runTool(run + "-q --csv " + d + "/old.csv --json " + d + "/ok.json", &out), 0) << out;
    EXPECT_EQ(readAll(d + "/old.csv").rfind("max_size,", 0), 0u);
    EXPECT_NE(readAll(d + "/ok.json").find("\"tool\": \"homa-sim\""), std::string::npos);
    std::system(("rm -rf " + d).c_str());
}

// A bucket without messages has no slowdown: "n/a" in the text, empty CSV fields and
// null in the JSON (they were 0.00, as if its messages had taken no time).
TEST(SimOutputs, EmptyBucketsHaveNoSlowdown) {
    SimOptions o;
    o.fixedSize = 1000;
    const Derived d = mustDerive(o);
    Results r;
    r.buckets.push_back(BucketStats{.maxSize = 500, .count = 0});
    r.buckets.push_back(
        BucketStats{.maxSize = 1000, .count = 2, .mean = 1.5, .p50 = 1, .p99 = 2, .p999 = 2, .min = 1, .max = 2});
    r.all = r.buckets.back();
    const std::string text = toText(o, d, r);
    EXPECT_NE(text.find("         500          0      n/a      n/a      n/a      n/a\n"), std::string::npos) << text;
    EXPECT_NE(text.find("        1000          2     1.50     1.00     2.00     2.00\n"), std::string::npos) << text;
    EXPECT_EQ(toCsv(r),
              "max_size,count,mean,p50,p99,p999,min,max\n"
              "500,0,,,,,,\n"
              "1000,2,1.5000,1.0000,2.0000,2.0000,1.0000,2.0000\n");
    const nlohmann::json j = nlohmann::json::parse(toJson(o, d, r));
    for (const char* k : {"slowdown_mean", "slowdown_p50", "slowdown_p99", "slowdown_p999", "slowdown_min",
                          "slowdown_max"}) {
        EXPECT_TRUE(j["buckets"][0][k].is_null()) << k;
        EXPECT_TRUE(j["buckets"][1][k].is_number()) << k;
    }
    EXPECT_EQ(j["buckets"][1]["slowdown_p99"], 2.0);
    // No message measured at all: the "all" row too.
    r = Results{};
    r.buckets.push_back(BucketStats{.maxSize = 1000, .count = 0});
    r.all = BucketStats{.maxSize = 1000, .count = 0};
    EXPECT_NE(toText(o, d, r).find("         all          0      n/a      n/a      n/a      n/a\n"), std::string::npos);
    EXPECT_TRUE(nlohmann::json::parse(toJson(o, d, r))["all"]["slowdown_p99"].is_null());
}

}  // namespace
}  // namespace homa::simtool
