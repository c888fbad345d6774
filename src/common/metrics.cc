#include "homa/metrics.h"

namespace homa {

uint64_t MetricsSnapshot::get(std::string_view name) const {
    for (const auto& [n, v] : counters)
        if (n == name) return v;
    return 0;
}

MetricsSnapshot MetricsSnapshot::operator-(const MetricsSnapshot& earlier) const {
    MetricsSnapshot d;
    d.timeNs = timeNs - earlier.timeNs;
    d.counters.reserve(counters.size());
    for (const auto& [n, v] : counters) d.counters.emplace_back(n, v - earlier.get(n));
    return d;
}

std::string MetricsSnapshot::toText() const {
    std::string s;
    for (const auto& [n, v] : counters) {
        s += n;
        s += ' ';
        s += std::to_string(v);
        s += '\n';
    }
    return s;
}

}  // namespace homa
