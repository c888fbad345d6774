// Counters of an endpoint, read as a snapshot; the live RPCs of an endpoint.
//
// Most values are counters (they only grow); a few are gauges, levels read at the time of
// the snapshot (isGauge(): buffer_bytes_in_use, peers, rpcs, nic_queue_ns, ...). The
// difference of two snapshots subtracts counters and keeps the later value of gauges.
// docs/observability.md lists every name.
//
// Thread safety: plain value types.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace homa {

struct MetricsSnapshot {
    /// Steady-clock time of the snapshot, in nanoseconds.
    int64_t timeNs = 0;
    /// (name, value) in a fixed order; names are lower_snake_case, e.g. "packets_sent_data".
    std::vector<std::pair<std::string, uint64_t>> counters;

    /// The counter's value, 0 if there is no such counter.
    uint64_t get(std::string_view name) const;
    /// This snapshot minus an earlier one (counters missing from `earlier` count as 0;
    /// a counter lower than in `earlier` started again from zero, and keeps its value);
    /// gauges keep this snapshot's value. timeNs becomes the interval.
    MetricsSnapshot operator-(const MetricsSnapshot& earlier) const;
    /// "name value" lines.
    std::string toText() const;
    /// Whether `name` is a gauge (a level) rather than a counter.
    static bool isGauge(std::string_view name);

    /// Prometheus text exposition format (version 0.0.4): "homa_<name>_total" for counters,
    /// "homa_<name>" for gauges, each with a TYPE line. `labels` (e.g. `endpoint="a:1"`)
    /// go on every sample.
    std::string toPrometheus(std::string_view labels = {}) const;

    /// Parses toText() output, optionally preceded by a "# time_ns N" line; other '#'
    /// lines are ignored. nullopt, with the offending line in *error, otherwise.
    static std::optional<MetricsSnapshot> parse(std::string_view text, std::string* error = nullptr);

    /// A table of every counter (or only those that changed, unless `all`): name, value,
    /// change since `earlier` and that change per second. Gauges show their level.
    std::string ratesTable(const MetricsSnapshot& earlier, bool all = false) const;
};

/// One RPC as an endpoint sees it (Endpoint::rpcs()).
struct RpcSnapshot {
    std::string peer;       ///< the other end's address
    uint64_t id = 0;        ///< this end's id (even at a client, odd at a server)
    std::string state;      ///< client, client-waiting (for its turn: maxClientRpcsPerServer),
                            ///< server-incoming, server-in-service, server-outgoing
    uint32_t outLength = 0, outSent = 0, outGranted = 0;  ///< the message we send
    uint32_t inLength = 0, inReceived = 0, inGranted = 0; ///< the message we receive
    bool waitingForBuffer = false;
    int silentTicks = 0;    ///< timer ticks since the peer was last heard from for it
};

/// One RPC a line, with a header line.
std::string formatRpcs(const std::vector<RpcSnapshot>& rpcs);

}  // namespace homa
