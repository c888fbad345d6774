#include "perf/stats.h"

#include <algorithm>
#include <bit>
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

size_t Histogram::bin(uint64_t units) {
    constexpr uint64_t kExact = uint64_t{1} << (kSubBits + 1);
    if (units < kExact) return static_cast<size_t>(units);
    // The top kSubBits + 1 bits of the value, and how far they were shifted down: bins
    // of width 2^shift, 2^kSubBits of them for each shift.
    const int shift = (63 - std::countl_zero(units)) - kSubBits;
    const uint64_t top = units >> shift;  // in [2^kSubBits, 2^(kSubBits + 1))
    return static_cast<size_t>((uint64_t(shift) << kSubBits) + top);
}

uint64_t Histogram::binLow(size_t bin) {
    constexpr uint64_t kExact = uint64_t{1} << (kSubBits + 1);
    if (bin < kExact) return bin;
    const uint64_t shift = (bin >> kSubBits) - 1;
    const uint64_t top = (bin & ((uint64_t{1} << kSubBits) - 1)) | (uint64_t{1} << kSubBits);
    return top << shift;
}

void Histogram::add(double value) {
    // (Bounded below 2^63 units: a double's conversion of anything larger is undefined.)
    constexpr double kLargest = 9.2e18;
    const double scaled = value / unit_;
    const uint64_t units = !(scaled > 0) ? 0 : scaled >= kLargest ? static_cast<uint64_t>(kLargest)
                                                                   : static_cast<uint64_t>(std::llround(scaled));
    const size_t b = bin(units);
    if (b >= counts_.size()) counts_.resize(b + 1);
    ++counts_[b];
    ++count_;
    minUnits_ = std::min(minUnits_, units);
    maxUnits_ = std::max(maxUnits_, units);
}

double Histogram::percentile(double p) const {
    const uint64_t rank = nearestRank(count_, p);
    if (rank == 0) return 0;
    uint64_t units = maxUnits_;
    if (rank == 1) {
        units = minUnits_;
    } else if (rank < count_) {
        uint64_t seen = 0;
        for (size_t b = 0; b < counts_.size(); ++b) {
            seen += counts_[b];
            if (seen >= rank) {
                // The bin's midpoint (its only value below 2^(kSubBits + 1) units), kept
                // within the values seen.
                const uint64_t low = binLow(b), width = binLow(b + 1) - low;
                units = std::clamp(low + (width - 1) / 2, minUnits_, maxUnits_);
                break;
            }
        }
    }
    return static_cast<double>(units) * unit_;
}

void Histogram::clear() {
    std::fill(counts_.begin(), counts_.end(), 0);
    count_ = 0;
    minUnits_ = UINT64_MAX;
    maxUnits_ = 0;
}

// Slowdowns are kept in thousandths: exact to 0.001 up to 8.191, and within 0.012 %
// above.
SizeBuckets::SizeBuckets(std::vector<uint32_t> bounds, const SlowdownModel& model, bool fromDue)
    : bounds_(std::move(bounds)), model_(model), rtts_(bounds_.size(), Histogram(1)),
      slowdowns_(bounds_.size(), Histogram(1e-3)) {
    if (fromDue) fromDue_.assign(bounds_.size(), Histogram(1));
}

void SizeBuckets::add(uint32_t size, uint32_t wireBytes, int64_t rttNs, int64_t fromDueNs) {
    if (bounds_.empty()) return;
    auto it = std::lower_bound(bounds_.begin(), bounds_.end(), size);
    if (it == bounds_.end()) --it;  // larger than every bound: the last bucket
    const size_t b = static_cast<size_t>(it - bounds_.begin());
    rtts_[b].add(static_cast<double>(rttNs));
    slowdowns_[b].add(static_cast<double>(rttNs) / 1e3 / model_.idealUs(wireBytes));
    if (fromDueNs >= 0 && !fromDue_.empty()) fromDue_[b].add(static_cast<double>(fromDueNs));
}

std::vector<Bucket> SizeBuckets::figures() const {
    std::vector<Bucket> out(bounds_.size());
    for (size_t b = 0; b < bounds_.size(); ++b) {
        out[b].maxSize = bounds_[b];
        out[b].count = rtts_[b].count();
        out[b].rttP50Us = rtts_[b].percentile(50) / 1e3;
        out[b].rttP99Us = rtts_[b].percentile(99) / 1e3;
        out[b].slowdownP50 = slowdowns_[b].percentile(50);
        out[b].slowdownP99 = slowdowns_[b].percentile(99);
        if (!fromDue_.empty()) {
            out[b].fromDueCount = fromDue_[b].count();
            out[b].fromDueP99Us = fromDue_[b].percentile(99) / 1e3;
        }
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
    : gap_(perSecond / 1e9), rng_(seed), start_(startNs), end_(endNs), last_(startNs) {}

bool ArrivalSchedule::next(int64_t* atNs) {
    if (done_) return false;
    // (Compared as a double first: a tiny load's gap may not fit in an int64_t.) The
    // times add up exactly, each rounded down to a whole nanosecond only when given:
    // rounding each gap instead lost half a nanosecond per arrival, more arrivals than
    // asked at high rates (gaps under a nanosecond all became 0).
    const double g = gap_(rng_);
    if (g >= static_cast<double>(end_ - start_) - offset_) {
        done_ = true;
        return false;
    }
    offset_ += g;
    last_ = start_ + static_cast<int64_t>(offset_);
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

void ArrivalSchedule::restartCounts() {
    issued_ = skipped_ = late_ = handled_ = 0;
    lagMaxNs_ = 0;
    lagSumNs_ = 0;
}

bool tooManyErrors(uint64_t errors, uint64_t ended, double maxErrorRate) {
    if (errors == 0) return false;
    return static_cast<double>(errors) > maxErrorRate * static_cast<double>(ended);
}

}  // namespace homa::perf
