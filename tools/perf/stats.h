// Latency statistics for homa-perf: samples, percentiles, size buckets and slowdown.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace homa::perf {

struct Sample {
    uint32_t size = 0;       ///< message size (the request's; what the workload drew)
    uint32_t wireBytes = 0;  ///< request + response bytes moved by the RPC
    int64_t rttNs = 0;
};

/// The p-th percentile (0..100) of `values`, which this sorts; nearest-rank method.
double percentile(std::vector<double>& values, double p);

struct Bucket {
    uint32_t maxSize = 0;  ///< sizes in (previous bucket's maxSize, maxSize]
    uint64_t count = 0;
    double rttP50Us = 0, rttP99Us = 0;
    double slowdownP50 = 0, slowdownP99 = 0;
};

struct SlowdownModel {
    double baseRttUs = 0;   ///< unloaded round trip of a small message
    double linkGbps = 25;   ///< bandwidth used for the transfer-time part
    /// The best possible RTT for an RPC that moves `wireBytes`.
    double idealUs(uint32_t wireBytes) const { return baseRttUs + wireBytes * 8.0 / (linkGbps * 1e3); }
};

/// Groups samples into buckets with the given upper bounds (ascending; the last should
/// cover every size) and computes each bucket's figures. Empty buckets are kept (count 0).
std::vector<Bucket> bucketize(const std::vector<Sample>& samples, const std::vector<uint32_t>& bounds,
                              const SlowdownModel& model);

/// Bucket bounds at the deciles of a size distribution (duplicates removed).
std::vector<uint32_t> decileBounds(const std::vector<uint32_t>& sizes, const std::vector<double>& cumulative);

}  // namespace homa::perf
