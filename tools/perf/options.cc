// homa-perf's command line.
#include <CLI/CLI.hpp>

#include "homa/address.h"
#include "perf/perf.h"
#include "common/finite_range.h"

namespace homa::perf {

bool parseOptions(int argc, char** argv, PerfOptions* o, std::string* error, bool* help) {
    *help = false;
    CLI::App app{"homa-perf: Homa (and TCP) RPC benchmark", "homa-perf"};
    app.require_subcommand(1);
    app.fallthrough();

    auto addCommon = [o](CLI::App* c) {
        c->add_option("--protocol", o->protocol, "homa or tcp")->check(CLI::IsMember({"homa", "tcp"}));
        c->add_option("--mtu", o->mtu, "link MTU for Homa packets")->check(CLI::Range(576, 65535));
        c->add_flag("--metrics", o->metrics, "print the endpoint counters' change over the run");
        c->add_option("--busy-poll-us", o->busyPollUs, "Homa: look at the socket this long before sleeping")
            ->check(CLI::Range(0u, 1'000'000u));
        c->add_option("--adaptive-poll-us", o->adaptivePollUs,
                      "Homa: after a short wait, look at the socket this long before sleeping (0: off)")
            ->check(CLI::Range(0u, 1'000'000u));
        c->add_flag("--no-engine-cpu-time", o->noEngineCpuTime, "Homa: do not time engine calls (engine_cpu_ns)");
        c->add_option("--unsched-bytes", o->unschedBytes, "Homa: bytes of each message sent before a grant")
            ->check(CLI::Range(1u, 10'000'000u));
        c->add_option("--max-incoming", o->maxIncoming, "Homa: granted-but-not-received bytes, all messages")
            ->check(CLI::Range(1u, 1'000'000'000u));
        c->add_option("--overcommit", o->overcommit, "Homa: messages a receiver grants to at once")
            ->check(CLI::Range(1, 64));
        c->add_option("--buffer-mb", o->bufferMb, "Homa: receive buffer pool per endpoint, MB (default 64)")
            ->check(CLI::Range(1u, 1'000'000u));
        c->add_option("--send-buffer-mb", o->sendBufferMb,
                      "Homa: memory for messages being sent per endpoint, MB (default 256); calls beyond it are "
                      "refused (closed loop: started again as others finish; open loop: dropped arrivals)")
            ->check(CLI::Range(1u, 1'000'000u));
        c->add_option("--link-gbps", o->linkGbps,
                      "the link's bandwidth: Homa's pacer sends at this rate, and slowdowns are computed with it "
                      "(default 25)")
            ->check(homa::tools::FiniteRange(0.001, 10000.0));
        c->add_option("--nic-queue-us", o->nicQueueUs,
                      "Homa: estimated NIC backlog the pacer lets build up, microseconds (default 5; up to twice "
                      "that for a sender that comes back late)")
            ->check(homa::tools::FiniteRange(0.001, 1e6));
    };
    auto addServer = [o](CLI::App* c) {
        c->add_option("--bind", o->bind,
                      "address to listen on (local: a wildcard address, 0.0.0.0 or ::, means its family's loopback)");
        c->add_option("--port", o->port, "first server port (0: any)");
        c->add_option("--server-ports", o->serverPorts, "server ports (consecutive)")->check(CLI::Range(1, 64));
        c->add_option("--server-threads", o->serverThreads,
                      "threads per server port (Homa: handler threads; TCP: epoll threads, all ports)")
            ->check(CLI::Range(1, 256));
        c->add_option("--server-work-us", o->serverWorkUs, "busy time per request before its response")
            ->check(CLI::Range(0, 10'000'000));
        c->add_option("--max-pending", o->maxPending, "Homa server: requests pending before new ones are refused")
            ->check(CLI::Range(1u, 10'000'000u));
    };
    auto addClient = [o](CLI::App* c) {
        c->add_option("--workload", o->workload, "w1..w5, a workload file, or a fixed size in bytes");
        c->add_option("--max-length", o->maxLength, "cap on message sizes")->check(CLI::Range(4u, 64'000'000u));
        c->add_option("--client-max", o->clientMax,
                      "outstanding RPCs (closed loop, default 16; open loop: a cap, default 1000)")
            ->check(CLI::Range(1, 100'000));
        c->add_option("--gbps", o->gbps, "open loop: Poisson arrivals offering this many Gbps of requests")
            ->check(homa::tools::FiniteRange(0.0, 1000.0));
        c->add_option("--calls", o->callMode,
                      "closed loop: sync (--client-max threads making synchronous calls), async "
                      "(completion callbacks), auto (sync for --client-max 1 with Homa)")
            ->check(CLI::IsMember({"auto", "sync", "async"}));
        c->add_flag("--one-way", o->oneWay, "8-byte responses instead of the request's size");
        c->add_option("--duration", o->duration, "seconds of load")->check(homa::tools::FiniteRange(0.1, 86400.0));
        c->add_option("--warmup", o->warmupS,
                      "seconds of load before the measured --duration; the calls it starts are left out of the "
                      "figures (their failures count)")
            ->check(homa::tools::FiniteRange(0.0, 3600.0));
        c->add_option("--drain", o->drainS,
                      "seconds to wait after the load for calls in flight (they count in the round trips, not "
                      "the rate); the rest end unfinished, as failures unless this is 0")
            ->check(homa::tools::FiniteRange(0.0, 3600.0));
        c->add_option("--max-error-rate", o->maxErrorRate,
                      "largest share (0..1) of the calls that ended that may fail with the run still exiting 0 "
                      "(default 0: any failed call fails the run)")
            ->check(homa::tools::FiniteRange(0.0, 1.0));
        c->add_option("--tcp-conns", o->tcpConnections, "TCP connections per server")->check(CLI::Range(1, 1024));
        c->add_option("--tcp-threads", o->tcpThreads, "TCP client epoll threads")->check(CLI::Range(1, 64));
        c->add_option("--base-rtt-us", o->baseRttUs, "unloaded small-message RTT for slowdown (default: measure)")
            ->check(homa::tools::FiniteRange(0.0, 1e6));
        c->add_option("--seed", o->seed, "random seed for sizes and arrivals");
        c->add_option("--json", o->json, "write every figure to this JSON file");
        c->add_flag("--quiet", o->quiet, "no per-second lines");
    };

    CLI::App* server = app.add_subcommand("server", "serve requests until interrupted");
    addCommon(server);
    addServer(server);
    server->add_option("--max-length", o->maxLength, "largest request accepted, and response sent (default 1000000)")
        ->check(CLI::Range(4u, 64'000'000u));
    CLI::App* client = app.add_subcommand("client", "send load to servers");
    addCommon(client);
    addClient(client);
    client->add_option("--servers", o->servers, "server addresses, e.g. 10.0.0.2:4000 (comma separated)")
        ->delimiter(',')
        ->required();
    CLI::App* local = app.add_subcommand("local", "a server and a client on loopback, in one process");
    addCommon(local);
    addServer(local);
    addClient(local);
    CLI::App* plot = app.add_subcommand("plot", "draw P99 slowdown against message size from JSON files");
    plot->add_option("inputs", o->inputs, "JSON files written with --json")->required()->check(CLI::ExistingFile);
    plot->add_option("-o,--output", o->output, "PNG file to write");
    plot->add_option("--title", o->title, "title of the plot");

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        *help = true;
        *error = app.help();
        return false;
    } catch (const CLI::ParseError& e) {
        std::string what = e.what();
        if (what.empty()) what = e.get_name();
        *error = what;
        return false;
    }
    if (server->parsed()) o->role = "server";
    if (client->parsed()) o->role = "client";
    if (local->parsed()) o->role = "local";
    // local's server takes any free port unless one is given (4000 is a server's default).
    if (local->parsed() && local->count("--port") == 0) o->port = 0;
    if (plot->parsed()) o->role = "plot";
    CLI::App* loadRole = client->parsed() ? client : local->parsed() ? local : nullptr;
    // An open loop's cap is only there to bound memory: arrivals beyond it are skipped,
    // which offers less than was asked for. Unless the user sets one, it is high.
    if (loadRole && o->gbps > 0 && loadRole->get_option("--client-max")->count() == 0) o->clientMax = kOpenLoopMaxInFlight;
    for (size_t i = 0; i < o->servers.size(); ++i) {
        const std::string& s = o->servers[i];
        auto a = Address::parse(s);
        if (!a || a->port == 0) {
            *error = "--servers: '" + s + "' is not ADDRESS:PORT";
            return false;
        }
        // One socket serves every server, so they must share its address family.
        if (a->isIpv4() != Address::parse(o->servers[0])->isIpv4()) {
            *error = "--servers: '" + s + "' and '" + o->servers[0] +
                     "' are of different address families; give all IPv4 or all IPv6 addresses";
            return false;
        }
    }
    if (o->role == "server" && o->port != 0 && o->port + o->serverPorts - 1 > 65535) {  // (local picks free ports)
        *error = "--port " + std::to_string(o->port) + " with --server-ports " + std::to_string(o->serverPorts) +
                 " goes past port 65535";
        return false;
    }
    if ((o->role == "server" || o->role == "local") && !Address::parse(o->bind)) {
        *error = "--bind: '" + o->bind + "' is not an address";
        return false;
    }
    if (o->callMode == "sync" && o->protocol != "homa") {
        *error = "--calls sync: only Homa has synchronous calls (the TCP baseline is event driven)";
        return false;
    }
    if (o->callMode == "sync" && o->gbps > 0) {
        *error = "--calls sync: only for the closed loop (no --gbps)";
        return false;
    }
    if (o->callMode == "sync" && o->clientMax > kMaxSyncCallers) {
        *error = "--calls sync runs a thread per outstanding call: --client-max " + std::to_string(o->clientMax) +
                 " is more than " + std::to_string(kMaxSyncCallers) + " (use --calls async)";
        return false;
    }
    return true;
}

}  // namespace homa::perf
