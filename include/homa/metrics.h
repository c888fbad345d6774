// Counters of an endpoint, read as a snapshot.
//
// Thread safety: a plain value type.
#pragma once

#include <cstdint>
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
    /// This snapshot minus an earlier one (counters missing from `earlier` count as 0).
    MetricsSnapshot operator-(const MetricsSnapshot& earlier) const;
    /// "name value" lines.
    std::string toText() const;
};

}  // namespace homa
