#include "perf/stats.h"

#include <algorithm>
#include <cmath>

namespace homa::perf {

uint64_t nearestRank(uint64_t n, double p) {
    if (n == 0) return 0;
    // p in millionths: exact for every percentile given with up to four decimals.
    const auto ppm = static_cast<uint64_t>(std::llround(std::clamp(p, 0.0, 100.0) * 10'000));
    // ceil(ppm * n / 10^6), in two parts so that no product overflows.
    const uint64_t rank = n / 1'000'000 * ppm + (n % 1'000'000 * ppm + 999'999) / 1'000'000;
    return std::max<uint64_t>(rank, 1);
}

double percentile(std::vector<double>& values, double p) {
    if (values.empty()) return 0;
    // Nearest rank: the smallest value with at least p% of values at or below it. A
    // selection, not a sort: the per-second report runs beside the load it measures.
    const size_t index = static_cast<size_t>(nearestRank(values.size(), p)) - 1;
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

ArrivalSchedule::ArrivalSchedule(double perSecond, uint64_t seed, int64_t startNs, int64_t endNs)
    : gap_(perSecond / 1e9), rng_(seed), end_(endNs), last_(startNs) {}

bool ArrivalSchedule::next(int64_t* atNs) {
    if (done_) return false;
    // (Compared as a double first: a tiny load's gap may not fit in an int64_t.)
    const double g = gap_(rng_);
    if (g >= static_cast<double>(end_ - last_)) {
        done_ = true;
        return false;
    }
    last_ += static_cast<int64_t>(g);
    pending_ = true;
    *atNs = last_;
    return true;
}

void ArrivalSchedule::handled(int64_t nowNs, bool issued) {
    pending_ = false;
    ++(issued ? issued_ : skipped_);
    ++handled_;
    const int64_t lag = std::max<int64_t>(nowNs - last_, 0);
    lagMaxNs_ = std::max(lagMaxNs_, lag);
    lagSumNs_ += static_cast<double>(lag);
}

void ArrivalSchedule::finish(int64_t stopNs) {
    const int64_t stop = std::min(stopNs, end_);
    if (pending_ && last_ < stop) ++late_;
    pending_ = false;
    // The arrivals after the last one drawn, up to the stop: a Poisson process forgets
    // its past, so their number is Poisson of the rate times the time that remains.
    if (!done_ && last_ < stop) {
        const double mean = gap_.lambda() * static_cast<double>(stop - last_);
        if (mean > 0 && std::isfinite(mean))
            late_ += static_cast<uint64_t>(std::poisson_distribution<int64_t>(mean)(rng_));
    }
    done_ = true;
}

bool tooManyErrors(uint64_t errors, uint64_t ended, double maxErrorRate) {
    if (errors == 0) return false;
    return static_cast<double>(errors) > maxErrorRate * static_cast<double>(ended);
}

}  // namespace homa::perf
