#include "perf/stats.h"

#include <algorithm>
#include <cmath>

namespace homa::perf {

double percentile(std::vector<double>& values, double p) {
    if (values.empty()) return 0;
    // Nearest rank: the smallest value with at least p% of values at or below it. A
    // selection, not a sort: the per-second report runs beside the load it measures.
    double rank = std::ceil(p / 100.0 * static_cast<double>(values.size()));
    size_t index = std::min(rank < 1 ? 0 : static_cast<size_t>(rank) - 1, values.size() - 1);
    auto nth = values.begin() + static_cast<std::ptrdiff_t>(index);
    std::nth_element(values.begin(), nth, values.end());
    return *nth;
}

std::vector<Bucket> bucketize(const std::vector<Sample>& samples, const std::vector<uint32_t>& bounds,
                              const SlowdownModel& model) {
    std::vector<std::vector<double>> rtts(bounds.size()), slowdowns(bounds.size());
    for (const Sample& s : samples) {
        auto it = std::lower_bound(bounds.begin(), bounds.end(), s.size);
        if (it == bounds.end()) --it;  // larger than every bound: the last bucket
        size_t b = static_cast<size_t>(it - bounds.begin());
        double us = static_cast<double>(s.rttNs) / 1e3;
        rtts[b].push_back(us);
        slowdowns[b].push_back(us / model.idealUs(s.wireBytes));
    }
    std::vector<Bucket> out(bounds.size());
    for (size_t b = 0; b < bounds.size(); ++b) {
        out[b].maxSize = bounds[b];
        out[b].count = rtts[b].size();
        out[b].rttP50Us = percentile(rtts[b], 50);
        out[b].rttP99Us = percentile(rtts[b], 99);
        out[b].slowdownP50 = percentile(slowdowns[b], 50);
        out[b].slowdownP99 = percentile(slowdowns[b], 99);
    }
    return out;
}

std::vector<uint32_t> decileBounds(const std::vector<uint32_t>& sizes, const std::vector<double>& cumulative) {
    std::vector<uint32_t> bounds;
    for (int d = 1; d <= 10; ++d) {
        double p = d / 10.0;
        auto it = std::lower_bound(cumulative.begin(), cumulative.end(), p - 1e-12);
        uint32_t size = it == cumulative.end() ? sizes.back() : sizes[static_cast<size_t>(it - cumulative.begin())];
        if (bounds.empty() || size > bounds.back()) bounds.push_back(size);
    }
    if (bounds.empty() || bounds.back() < sizes.back()) bounds.push_back(sizes.back());
    return bounds;
}

}  // namespace homa::perf
