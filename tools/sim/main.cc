// homa-sim: the Homa engine on a simulated datacenter network. See docs/simulation.md.
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "payload_memory.h"
#include "simulator.h"

using namespace homa::simtool;

namespace {

bool writeFile(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
    f.close();  // (a small file is written only here: a full disk shows up now)
    return !f.fail();
}

/// A number not below `min` (CLI11's own range checks print the largest double in full).
/// What is not a number at all is left to the conversion, which says so.
CLI::Validator atLeast(double min) {
    return CLI::Validator(
        [min](std::string& s) {
            char* end = nullptr;
            const double v = std::strtod(s.c_str(), &end);
            if (end != s.c_str() && v < min) return fmt::format("must be at least {:g}, not {}", min, s);
            return std::string();
        },
        "");
}

/// Whether every output file can be opened for writing, checked before a run that may
/// take hours rather than after it. Files are opened to append, so none is emptied yet;
/// those the check itself created are removed again when another one cannot be opened.
/// Empty in *error when they all can.
bool outputsWritable(const std::vector<std::string>& paths, std::string* error) {
    std::vector<std::string> created;
    for (const std::string& path : paths) {
        if (path.empty()) continue;
        const bool existed = access(path.c_str(), F_OK) == 0;
        FILE* f = std::fopen(path.c_str(), "a");
        if (f == nullptr) {
            *error = "cannot write " + path + ": " + std::strerror(errno);
            for (const std::string& c : created) std::remove(c.c_str());
            return false;
        }
        std::fclose(f);
        if (!existed) created.push_back(path);
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    SimOptions o;
    CLI::App app{"homa-sim: the Homa protocol engine on a simulated datacenter network"};
    app.set_help_all_flag("--help-all");
    std::string csv, jsonPath;
    bool quiet = false;
    bool realPayloadMemory = false;

    CLI::Option* workloadOpt =
        app.add_option("-w,--workload", o.workload, "w1..w5 or a size-distribution file")->capture_default_str();
    app.add_option("--size", o.fixedSize, "every message has this many bytes (instead of a workload)")
        ->check(atLeast(1))
        ->excludes(workloadOpt);
    CLI::Option* loadOpt = app.add_option("-l,--load", o.load, "offered load: fraction of host link bandwidth taken by DATA packets")
        ->capture_default_str();
    app.add_option("-s,--seed", o.seed, "random seed (same seed, same output)")->capture_default_str();
    CLI::Option* durationOpt = app.add_option("-d,--duration-ms", o.durationMs, "messages arrive during this much simulated time")
        ->capture_default_str();
    CLI::Option* warmupOpt = app.add_option("--warmup-ms", o.warmupMs, "messages arriving earlier are not measured (default: 10% of duration)")
        ->check(atLeast(0));
    app.add_option("-n,--messages", o.messages, "measure at most this many messages (solo: how many to send)");
    CLI::Option* drainOpt = app.add_option("--drain-ms", o.drainMs,
                   "after the duration, wait at most this long for measured messages; those unfinished then are "
                   "incomplete (default: = duration)")
        ->check(atLeast(0));
    CLI::Option* soloSenderOpt =
        app.add_option("--solo-sender", o.soloSender, "only this host sends, one message at a time on an idle network")
            ->check(atLeast(0));
    app.add_option("--solo-receiver", o.soloReceiver, "with --solo-sender: the destination (default: random)")
        ->check(atLeast(0))
        ->needs(soloSenderOpt);
    app.add_option("--buckets", o.buckets, "size buckets (quantiles of the message count)")->capture_default_str();

    app.add_option("--topology", o.topology, "twotier or star")->capture_default_str();
    app.add_option("--racks", o.racks, "twotier: racks")->capture_default_str();
    app.add_option("--hosts-per-rack", o.hostsPerRack, "twotier: hosts per rack")->capture_default_str();
    app.add_option("--agg-switches", o.aggSwitches, "twotier: aggregation switches")->capture_default_str();
    app.add_option("--hosts", o.hosts, "star: hosts")->capture_default_str();
    app.add_option("--host-gbps", o.hostGbps, "host link rate, Gbps (a whole number of Mbit/s)")
        ->capture_default_str();
    app.add_option("--agg-gbps", o.aggGbps, "top-of-rack to aggregation link rate, Gbps (a whole number of Mbit/s)")
        ->capture_default_str();
    app.add_option("--link-latency-ns", o.linkLatencyNs, "propagation delay of every link")->capture_default_str();
    app.add_option("--switch-delay-ns", o.switchDelayNs, "per-switch forwarding delay")->capture_default_str();
    app.add_option("--host-delay-ns", o.hostDelayNs, "software delay of every packet at its receiving host")
        ->capture_default_str();
    app.add_option("--wire-overhead", o.wireOverheadBytes, "bytes per packet beyond the Homa packet (framing)")
        ->capture_default_str();
    app.add_option("--switch-queue-limit", o.switchQueueLimitBytes, "drop-tail limit per switch port, 0 = none")
        ->capture_default_str();

    app.add_flag("--fifo-nics", o.fifoNics,
                 "host NICs send in arrival order (default: 8 strict-priority queues, like switch ports)");
    app.add_option("--rtt-bytes", o.rttBytes, "bytes of one round trip (default: from the topology)");
    app.add_option("--unsched-bytes", o.unschedBytes, "unscheduled bytes per message (default: rtt bytes)");
    app.add_option("--unsched-priorities", o.unschedPriorities,
                   "priority levels for unscheduled bytes (default: from the workload)");
    app.add_option("--cutoffs", o.cutoffs,
                   "unscheduled cutoffs, ascending (highest priority first): N cutoffs make N + 1 levels")
        ->delimiter(',');
    app.add_option("--overcommit", o.overcommit, "messages granted at once (default: scheduled levels)");
    app.add_option("--window", o.window, "bytes granted ahead of received per message (default: rtt bytes)");
    app.add_option("--max-incoming", o.maxIncoming, "granted-but-not-received bytes (default: overcommit x window)");
    app.add_option("--grant-fifo", o.grantFifoFraction, "share of grants given to the oldest message")
        ->capture_default_str();
    app.add_option("--pacer-fifo", o.pacerFifoFraction, "share of sent bytes given to the oldest message")
        ->capture_default_str();
    app.add_option("--max-nic-queue-ns", o.maxNicQueueNs, "sender pacing: NIC backlog bound")->capture_default_str();
    app.add_option("--pacer-rate", o.pacerRate,
                   "link rate the engines' pacers assume, as a fraction of the host link rate")
        ->capture_default_str();
    app.add_option("--tick-us", o.tickUs, "engine timer tick")->capture_default_str();
    app.add_option("--resend-ticks", o.resendTicks, "silent ticks before RESEND")->capture_default_str();
    app.add_option("--timeout-ticks", o.timeoutTicks, "silent ticks before an RPC fails")->capture_default_str();
    app.add_option("--timer-packets-per-peer", o.timerPacketsPerPeer,
                   "RPCs of one peer a tick may send RESEND or NEED_ACK for (the rest wait)")
        ->check(CLI::Range(1, 1 << 20))
        ->capture_default_str();
    CLI::Option* noSettleOpt = app.add_flag("!--no-settle", o.settle, "end at the drain limit without waiting for unmeasured messages");
    app.add_flag("--trace-hash", o.traceHash, "hash every delivered packet and print the hash");

    app.add_option("--csv", csv, "write the bucket table as CSV to this file");
    app.add_option("--json", jsonPath, "write everything as JSON to this file");
    app.add_flag("-q,--quiet", quiet, "no table on stdout");
    app.add_flag("--real-payload-memory", realPayloadMemory,
                 "give every message buffer its own memory (default: buffers of 16 KB or more share one)");

    // A solo sender sends its messages one after another, each on an idle network: there
    // is no offered load, arrival period or drain for these to set.
    for (CLI::Option* loaded : {loadOpt, durationOpt, warmupOpt, drainOpt, noSettleOpt}) soloSenderOpt->excludes(loaded);

    std::vector<std::string> plotInputs;
    std::string plotOutput = "homa-sim.png", plotTitle;
    CLI::App* plotCmd = app.add_subcommand("plot", "draw P99 slowdown against message size from --json files");
    plotCmd->add_option("inputs", plotInputs, "JSON files written with --json")->required()->check(CLI::ExistingFile);
    plotCmd->add_option("-o,--output", plotOutput, "PNG file to write")->capture_default_str();
    plotCmd->add_option("--title", plotTitle, "title of the plot");

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "homa-sim: %s\n", e.what());
        return 2;
    }

    // The size of the network comes from the options of its topology only: any other
    // would be ignored.
    const bool star = o.topology == "star";
    for (const char* name : {"--racks", "--hosts-per-rack", "--agg-switches", "--hosts"}) {
        const bool forStar = std::string(name) == "--hosts";
        if (app.count(name) > 0 && forStar != star) {
            std::fprintf(stderr, "homa-sim: %s is for --topology %s\n", name, forStar ? "star" : "twotier");
            return 2;
        }
    }

    if (plotCmd->parsed()) {
        std::string error;
        if (plot(plotInputs, plotOutput, plotTitle, &error) != 0) {
            std::fprintf(stderr, "homa-sim plot: %s\n", error.c_str());
            return 1;
        }
        std::printf("wrote %s\n", plotOutput.c_str());
        return 0;
    }

    std::string error;
    auto derived = derive(o, &error);
    if (!derived) {
        std::fprintf(stderr, "homa-sim: %s\n", error.c_str());
        return 2;
    }
    if (std::string why; !outputsWritable({csv, jsonPath}, &why)) {
        std::fprintf(stderr, "homa-sim: %s\n", why.c_str());
        return 1;
    }
    // Message buffers come and go by the million: keep them in the heap (no mmap per
    // buffer, no page faults on reuse, no trimming).
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    setPayloadSharing(!realPayloadMemory);
    const auto wallStart = std::chrono::steady_clock::now();
    Simulation sim(o, std::move(*derived));
    Results r = sim.run();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wallStart).count();

    if (!quiet) std::fputs(toText(o, sim.derived(), r).c_str(), stdout);
    // Each output is written even when another one fails.
    bool written = true;
    auto write = [&](const std::string& path, const std::function<std::string()>& text) {
        if (path.empty() || writeFile(path, text())) return;
        std::fprintf(stderr, "homa-sim: cannot write %s\n", path.c_str());
        written = false;
    };
    write(csv, [&] { return toCsv(r); });
    write(jsonPath, [&] { return toJson(o, sim.derived(), r); });
    if (!written) return 1;
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    std::printf("speed: %.2f s wall, %.3f ms simulated, %lu events (%.2f M/s), %lu packets (%.2f M/s), "
                "peak RSS %.1f MB\n",
                wall, double(r.endNs) / 1e6, static_cast<unsigned long>(r.events), double(r.events) / wall / 1e6,
                static_cast<unsigned long>(r.packetsSent), double(r.packetsSent) / wall / 1e6,
                double(ru.ru_maxrss) / 1024.0);
    // Exit status 3 when a measured message was lost without completing.
    return r.incomplete > 0 || r.failed > 0 ? 3 : 0;
}
