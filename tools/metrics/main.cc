// homa-metrics: reads the counters and live RPCs of a running process through the socket
// its endpoint publishes (EndpointOptions::metricsSocket), or a saved snapshot.
//
//   homa-metrics /tmp/homa.sock                   # every non-zero counter
//   homa-metrics /tmp/homa.sock --interval 1      # value, change and rate per second
//   homa-metrics /tmp/homa.sock --save s.txt ; ... ; homa-metrics /tmp/homa.sock --since s.txt
//   homa-metrics /tmp/homa.sock --rpcs            # the RPCs in progress
//   homa-metrics /tmp/homa.sock --trace on | off | dump:/tmp/x.tt
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include <sys/stat.h>

#include "client.h"
#include "common/finite_range.h"

using namespace homa;

int main(int argc, char** argv) {
    CLI::App app{"homa-metrics: counters, rates and live RPCs of a running Homa endpoint", "homa-metrics"};
    std::string source, since, save, traceCmd;
    double interval = 0;
    int count = 1;
    bool all = false, rpcs = false, prometheus = false;
    app.add_option("source", source, "the endpoint's metrics socket, or a saved snapshot file")->required();
    auto* intervalOpt = app.add_option("--interval", interval, "read twice this many seconds apart and show rates")
                            ->check(homa::tools::FiniteRange(0.0, 86400.0));
    auto* countOpt = app.add_option("--count", count, "with --interval: how many intervals to show")
                         ->check(CLI::Range(1, 1'000'000));
    auto* sinceOpt = app.add_option("--since", since, "show the change since this saved snapshot");
    auto* saveOpt = app.add_option("--save", save, "save the (last) snapshot read to this file, for --since");
    auto* allOpt = app.add_flag("--all", all, "show counters that are zero or did not change too");
    auto* rpcsOpt = app.add_flag("--rpcs", rpcs, "list the RPCs in progress instead");
    auto* promOpt = app.add_flag("--prometheus", prometheus, "print the Prometheus text instead");
    auto* traceOpt = app.add_option("--trace", traceCmd, "time tracing in that process: on, off, or dump:PATH");
    // Options that would be ignored together are refused: --since compares with one
    // reading, --interval with the one before; --rpcs, --prometheus and --trace replace the
    // counters altogether.
    countOpt->needs(intervalOpt);
    sinceOpt->excludes(intervalOpt);
    for (CLI::Option* other : {rpcsOpt, promOpt, traceOpt}) {
        for (CLI::Option* counters : {intervalOpt, countOpt, sinceOpt, saveOpt, allOpt}) other->excludes(counters);
    }
    rpcsOpt->excludes(promOpt);
    rpcsOpt->excludes(traceOpt);
    promOpt->excludes(traceOpt);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    // A saved snapshot holds counters only, taken once.
    struct stat st;
    const bool snapshotFile = ::stat(source.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode);
    if (snapshotFile) {
        const char* needsSocket = rpcs ? "--rpcs" : prometheus ? "--prometheus" : !traceCmd.empty() ? "--trace"
                                : interval > 0                                     ? "--interval"
                                                                                   : nullptr;
        if (needsSocket) {
            std::fprintf(stderr, "homa-metrics: %s is a saved snapshot, not a metrics socket: %s needs the socket\n",
                         source.c_str(), needsSocket);
            return 2;
        }
    }
    std::string error;
    auto simple = [&](const std::string& command) {
        auto answer = metrics_tool::query(source, command, &error);
        if (!answer) {
            std::fprintf(stderr, "homa-metrics: %s\n", error.c_str());
            return 1;
        }
        std::fwrite(answer->data(), 1, answer->size(), stdout);
        return 0;
    };
    if (!traceCmd.empty()) {
        if (traceCmd == "on" || traceCmd == "off") return simple("trace " + traceCmd);
        if (traceCmd.starts_with("dump:") && traceCmd.size() > 5) return simple("trace dump " + traceCmd.substr(5));
        std::fprintf(stderr, "homa-metrics: --trace takes on, off or dump:PATH, not '%s'\n", traceCmd.c_str());
        return 2;
    }
    if (rpcs) return simple("rpcs");
    if (prometheus) return simple("prometheus");

    auto read = [&]() -> std::optional<MetricsSnapshot> {
        auto m = metrics_tool::readSnapshot(source, &error);
        if (!m) std::fprintf(stderr, "homa-metrics: %s\n", error.c_str());
        return m;
    };
    std::optional<MetricsSnapshot> earlier;
    if (!since.empty()) {
        earlier = metrics_tool::readSnapshot(since, &error);
        if (!earlier) {
            std::fprintf(stderr, "homa-metrics: %s\n", error.c_str());
            return 1;
        }
    }
    auto current = read();
    if (!current) return 1;
    if (interval <= 0 && earlier) {
        std::string table = current->ratesTable(*earlier, all);
        std::fwrite(table.data(), 1, table.size(), stdout);
    } else if (interval <= 0) {
        for (const auto& [name, value] : current->counters)
            if (all || value != 0) std::printf("%-32s %16llu\n", name.c_str(), static_cast<unsigned long long>(value));
    } else {
        for (int i = 0; i < count; ++i) {
            std::this_thread::sleep_for(std::chrono::duration<double>(interval));
            auto next = read();
            if (!next) return 1;
            std::string table = next->ratesTable(*current, all);
            if (i > 0) std::printf("\n");
            std::fwrite(table.data(), 1, table.size(), stdout);
            std::fflush(stdout);
            current = std::move(next);
        }
    }
    if (!save.empty()) {
        std::ofstream f(save);
        f << "# time_ns " << current->timeNs << "\n" << current->toText();
        if (!f.flush()) {
            std::fprintf(stderr, "homa-metrics: cannot write %s\n", save.c_str());
            return 1;
        }
    }
    return 0;
}
