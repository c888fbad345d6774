// homa-trace: reads time-trace dumps of one or more processes (homa::trace::dump, or
// HOMA_TRACE_FILE at exit), puts them on one timeline and explains slow RPCs.
//
//   homa-trace merge client.tt server.tt            # one timeline, clocks aligned
//   homa-trace rpc 123456 client.tt server.tt       # every event of one RPC, both ends
//   homa-trace slow --fraction 0.01 client.tt server.tt   # where slow RPCs spent time
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>

#include "trace/reader.h"
#include "common/finite_range.h"

namespace {

using namespace homa::trace;

bool load(const std::vector<std::string>& paths, bool align, std::vector<TraceFile>& traces, Alignment& a) {
    for (const std::string& p : paths) {
        TraceFile t;
        std::string error;
        if (!readTraceFile(p, t, &error)) {
            std::fprintf(stderr, "homa-trace: %s\n", error.c_str());
            return false;
        }
        traces.push_back(std::move(t));
    }
    if (align) {
        a = alignClocks(traces);
    } else {
        a.offsetNs.assign(traces.size(), 0);
        a.notes.assign(traces.size(), "clock taken as is (--no-align)");
    }
    return true;
}

void printAlignment(const std::vector<TraceFile>& traces, const Alignment& a, std::FILE* out) {
    for (size_t i = 0; i < traces.size(); ++i)
        std::fprintf(out, "# %-24s offset %+.3f us: %s\n", traces[i].label.c_str(),
                     static_cast<double>(a.offsetNs[i]) / 1000.0, a.notes[i].c_str());
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"homa-trace: merge time traces of several processes and explain slow RPCs", "homa-trace"};
    app.require_subcommand(1);
    std::vector<std::string> files;
    bool noAlign = false;
    std::string output;
    uint64_t rpcId = 0;
    double fraction = 0.01;
    size_t top = 10;

    auto addFiles = [&](CLI::App* c) {
        c->add_option("files", files, "trace dumps")->required()->check(CLI::ExistingFile);
        c->add_flag("--no-align", noAlign, "keep each trace's own clock (same host: they already agree)");
    };
    CLI::App* merge = app.add_subcommand("merge", "all events of all traces on one timeline");
    merge->add_option("-o,--output", output, "write here instead of standard output");
    addFiles(merge);
    CLI::App* rpc = app.add_subcommand("rpc", "the timeline of one RPC at both ends");
    rpc->add_option("id", rpcId, "the RPC's id (the client's or the server's)")->required();
    addFiles(rpc);
    CLI::App* slow = app.add_subcommand("slow", "where the time of the slowest RPCs went");
    slow->add_option("--fraction", fraction, "the slowest fraction of RPCs to explain")->check(homa::tools::FiniteRange(0.0, 1.0));
    slow->add_option("--top", top, "list this many slowest RPCs")->check(CLI::Range(0, 1'000'000));
    addFiles(slow);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }

    std::vector<TraceFile> traces;
    Alignment a;
    if (!load(files, !noAlign, traces, a)) return 1;
    std::vector<Event> merged = mergeTraces(traces, a.offsetNs);

    if (merge->parsed()) {
        std::FILE* out = stdout;
        if (!output.empty()) {
            out = std::fopen(output.c_str(), "w");
            if (!out) {
                std::fprintf(stderr, "homa-trace: cannot write %s\n", output.c_str());
                return 1;
            }
        }
        printAlignment(traces, a, out);
        std::string text = formatTimeline(merged, traces);
        std::fwrite(text.data(), 1, text.size(), out);
        if (out != stdout && std::fclose(out) != 0) {
            std::fprintf(stderr, "homa-trace: error writing %s\n", output.c_str());
            return 1;
        }
        return 0;
    }
    if (rpc->parsed()) {
        std::vector<Event> events = rpcEvents(merged, rpcId);
        if (events.empty()) {
            std::fprintf(stderr, "homa-trace: no event of RPC %llu in the traces\n",
                         static_cast<unsigned long long>(rpcId));
            return 1;
        }
        printAlignment(traces, a, stdout);
        std::string text = formatTimeline(events, traces);
        std::fwrite(text.data(), 1, text.size(), stdout);
        return 0;
    }
    printAlignment(traces, a, stdout);
    std::string text = slowSummary(merged, fraction, top);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
}
