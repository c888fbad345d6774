// homa-perf: the benchmark client/server. Options, roles and reports.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "homa/endpoint.h"
#include "perf/stats.h"

namespace homa::workload {
class Distribution;
}

namespace homa::perf {

class ClientTransport;

struct PerfOptions {
    std::string role;  ///< server, client, local, plot
    std::string protocol = "homa";

    // Server
    std::string bind = "0.0.0.0";
    uint16_t port = 4000;
    int serverPorts = 1;
    int serverThreads = 1;
    int serverWorkUs = 0;    ///< busy time per request
    uint32_t maxPending = 0;  ///< Homa server: maxPendingRequests (0: the default)

    // Client
    std::vector<std::string> servers;
    std::string workload = "w3";
    uint32_t maxLength = 1'000'000;
    int clientMax = 16;       ///< outstanding RPCs (closed loop; also the open-loop cap)
    double gbps = 0;          ///< open loop: offered request bytes per second, in Gbps
    /// Closed loop: "sync" (client-max threads each making synchronous calls), "async"
    /// (callbacks issue the next call), or "auto" (sync for one outstanding Homa RPC).
    std::string callMode = "auto";
    bool oneWay = false;      ///< responses of 8 bytes instead of the request's size
    double duration = 5;      ///< seconds of load
    /// Seconds of load before the measured `duration`, left out of every figure (round
    /// trips, rate, arrivals, CPU, counters): buffers and caches warm up meanwhile.
    double warmupS = 0;
    /// Seconds to wait after the load for the calls in flight; the rest end unfinished.
    double drainS = 10;
    /// The largest share (0..1) of the calls that ended that may fail with the run still
    /// succeeding (exit status 0); with 0, any failed call fails the run.
    double maxErrorRate = 0;
    int tcpConnections = 1;   ///< per server
    int tcpThreads = 1;       ///< TCP client's epoll threads (its server's: serverThreads)
    double baseRttUs = 0;     ///< 0: measure before the run
    /// The link's bandwidth: Homa's pacer sends at this rate (ProtocolOptions::linkMbps)
    /// and the slowdown's transfer time is computed with it.
    double linkGbps = EndpointOptions::defaultProtocolOptions().linkMbps / 1000.0;
    uint32_t mtu = 1500;
    uint32_t busyPollUs = 0;  ///< Homa endpoints' busy polling (EndpointOptions::busyPollUs)
    uint32_t adaptivePollUs = EndpointOptions{}.adaptivePollUs;  ///< EndpointOptions::adaptivePollUs
    // Homa protocol parameters (0: the library's default)
    uint32_t unschedBytes = 0;
    uint32_t maxIncoming = 0;
    int overcommit = 0;
    uint32_t bufferMb = 0;
    uint32_t sendBufferMb = 0;
    double nicQueueUs = 0;  ///< ProtocolOptions::maxNicQueueNs, in microseconds
    bool noEngineCpuTime = false;  ///< EndpointOptions::engineCpuTime = false
    uint64_t seed = 1;
    std::string json;
    bool metrics = false;
    bool quiet = false;       ///< no per-second lines

    // Plot
    std::vector<std::string> inputs;
    std::string output = "slowdown.png";
    std::string title;
};

/// Parses argv; on error returns false with a one-line message in *error. `--help`
/// puts the help text in *error and sets *help.
bool parseOptions(int argc, char** argv, PerfOptions* options, std::string* error, bool* help);

/// The kind of a failed call's error, for counting errors by kind: the text before the
/// first ": " ("timeout: no response ..." -> "timeout"), or the whole text if it has none.
std::string errorKind(const std::string& error);
/// The open loop's cap on calls in flight when --client-max is not given.
inline constexpr int kOpenLoopMaxInFlight = 1'000;
/// At most this many threads for --calls sync (one per outstanding call).
inline constexpr int kMaxSyncCallers = 1'024;
/// Most error kinds a run keeps apart; the rest count as "other".
inline constexpr size_t kMaxErrorKinds = 16;

/// Ends the run under way as an interrupt (SIGINT, SIGTERM) does: the load stops, the
/// wait for calls in flight ends, and the report is made of what was measured.
/// Async-signal-safe.
void requestStop();

int runServer(const PerfOptions& o);
int runClient(const PerfOptions& o);
int runLocal(const PerfOptions& o);
int runPlot(const PerfOptions& o);
/// What `client` runs once it has its transport (the base RTT, unless given, the load,
/// the report and the JSON), through a transport of the caller's made for `servers`;
/// returns the exit status.
int runClientWith(const PerfOptions& o, ClientTransport& transport, const std::vector<Address>& servers,
                  const workload::Distribution& sizes);

/// The address `local`'s server binds to for --bind `bind`: a wildcard address (0.0.0.0,
/// ::) becomes the loopback address of its family (the client is given the server's
/// address, and cannot send to a wildcard); any other is kept.
std::string localServerBind(const std::string& bind);

}  // namespace homa::perf
