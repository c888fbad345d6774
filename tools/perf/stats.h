// Latency statistics for homa-perf: histograms, percentiles, size buckets and slowdown.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace homa::perf {

/// Counts of non-negative values in log-linear bins, so that a run of any length keeps a
/// bounded amount of memory: 4,096 bins (32 KB) per doubling of the largest value, not
/// more with the number of values; those up to kPreparedUnits (850 KB) are made at once.
/// Values are held as whole multiples of `unit`: exactly below 2^(kSubBits + 1) units,
/// above that in bins each narrower than 2^-kSubBits of the values in it. A percentile
/// is its bin's midpoint, so it is within 2^-(kSubBits + 1) (0.012 %) of the value the
/// whole list of values would give, and the extremes are exact.
class Histogram {
  public:
    static constexpr int kSubBits = 12;
    /// Bins for values up to 2^37 units (over two minutes in nanoseconds) are made up
    /// front, so that a run's adds allocate (and free) nothing. (Bins grown as values
    /// came, their old blocks freed, raised glibc's threshold for mapping blocks of their
    /// own, and with it changed how the transport's message buffers were allocated: W4's
    /// P99 slowdown came out three times worse, the tool measuring itself.)
    static constexpr uint64_t kPreparedUnits = uint64_t{1} << 37;
    explicit Histogram(double unit = 1) : unit_(unit), counts_(bin(kPreparedUnits) + 1, 0) {}
    /// Counts `value` (in the caller's units; a negative or NaN one counts as 0, a huge
    /// one as the largest value the bins hold).
    void add(double value);
    uint64_t count() const { return count_; }
    bool empty() const { return count_ == 0; }
    /// The p-th percentile (0..100), nearest rank (see nearestRank()); 0 when empty.
    double percentile(double p) const;
    /// Empties it (its bins' memory stays, for the next values).
    void clear();
    /// The bin of a value in units, and the lowest value (in units) of a bin.
    static size_t bin(uint64_t units);
    static uint64_t binLow(size_t bin);
    /// How many bins are in use (memory grows with the largest value, not the count).
    size_t bins() const { return counts_.size(); }

  private:
    double unit_;
    std::vector<uint64_t> counts_;
    uint64_t count_ = 0;
    uint64_t minUnits_ = UINT64_MAX, maxUnits_ = 0;
};

/// The p-th percentile (0..100) of `values`, which this sorts; nearest-rank method.
double percentile(std::vector<double>& values, double p);
/// The nearest rank (1-based) of the p-th percentile (0..100) of n values: the smallest
/// rank r with r >= p% of n, worked out in integers (p in millionths of the whole, so
/// 99.9 % of 1,000 values is rank 999, not the 1,000 that a double's 0.999 * 1000 rounds
/// up to); 1 for p = 0, and 0 for no values.
uint64_t nearestRank(uint64_t n, double p);

struct Bucket {
    uint32_t maxSize = 0;  ///< sizes in (previous bucket's maxSize, maxSize]
    uint64_t count = 0;
    double rttP50Us = 0, rttP99Us = 0;
    double slowdownP50 = 0, slowdownP99 = 0;
    /// Open loop: P99 of the latency from each call's due time (round trip plus how late
    /// the generator started it); fromDueCount calls had one (0 in a closed loop).
    uint64_t fromDueCount = 0;
    double fromDueP99Us = 0;
};

/// Slowdown = RTT / idealUs(request bytes + response bytes): the unloaded round trip
/// plus the time the link takes to carry the RPC's bytes both ways (for an echo of
/// `size` bytes, 2 * size * 8 / link bandwidth; with --one-way, (size + 8) * 8 / link
/// bandwidth).
struct SlowdownModel {
    double baseRttUs = 0;   ///< unloaded round trip of a small message
    double linkGbps = 25;   ///< bandwidth used for the transfer-time part
    /// The best possible RTT for an RPC that moves `wireBytes` (request + response).
    double idealUs(uint32_t wireBytes) const { return baseRttUs + wireBytes * 8.0 / (linkGbps * 1e3); }
};
/// What the JSON's "slowdown_bytes" says of the bytes in idealUs(): both messages.
inline constexpr const char* kSlowdownBytes = "request+response";

/// Round trips grouped by message size into buckets with the given upper bounds
/// (ascending; the last should cover every size; a larger size counts in the last), with
/// each bucket's round trips and slowdowns kept in histograms.
class SizeBuckets {
  public:
    /// `fromDue`: keep each bucket's latencies from the due time too (open loop).
    SizeBuckets(std::vector<uint32_t> bounds, const SlowdownModel& model, bool fromDue = false);
    /// One RPC: the size the workload drew, the bytes it moved both ways, its round trip,
    /// and (open loop; negative: none) its latency from its due time.
    void add(uint32_t size, uint32_t wireBytes, int64_t rttNs, int64_t fromDueNs = -1);
    /// Each bucket's figures, empty buckets included (count 0).
    std::vector<Bucket> figures() const;

  private:
    std::vector<uint32_t> bounds_;
    SlowdownModel model_;
    std::vector<Histogram> rtts_, slowdowns_, fromDue_;
};

/// Bucket bounds at the deciles of a size distribution (duplicates removed).
std::vector<uint32_t> decileBounds(const std::vector<uint32_t>& sizes, const std::vector<double>& cumulative);

/// The open loop's arrivals: a Poisson process of `perSecond` arrivals over [start, end)
/// (nanoseconds on any clock), drawn one at a time, and what became of each arrival due
/// before the generator stopped: a call started (issued), skipped (--client-max calls in
/// flight), or late (due before the stop, never reached: the generator fell behind the
/// schedule, or stopped while it was due). offered() = issued + skipped + late. No clock
/// is read here: the generator says when it handles each arrival.
class ArrivalSchedule {
  public:
    ArrivalSchedule(double perSecond, uint64_t seed, int64_t startNs, int64_t endNs);
    /// The time of the next arrival; false when it falls at or after the end (none is
    /// left).
    bool next(int64_t* atNs);
    /// The arrival last given by next(), handled at `nowNs`: a call started (`issued`) or
    /// skipped. Its lag (nowNs - its time) counts in the generator's lag.
    void handled(int64_t nowNs, bool issued);
    /// The generator stopped at `stopNs` (the end, or earlier when interrupted): counts as
    /// late every arrival due before min(stopNs, end) that was not handled: the one last
    /// given by next() if it was not, and those after it (their number is drawn from the
    /// Poisson distribution of the time that remains; their times would not matter).
    /// Once only.
    void finish(int64_t stopNs);
    /// Forgets what became of the arrivals handled so far (the warm-up's): the counts and
    /// the lag start again from zero. The schedule itself goes on.
    void restartCounts();

    uint64_t issued() const { return issued_; }
    uint64_t skipped() const { return skipped_; }
    uint64_t late() const { return late_; }
    uint64_t offered() const { return issued_ + skipped_ + late_; }
    /// How far behind its schedule the generator handled arrivals (0 when it was on
    /// time): the largest and the mean over the arrivals handled; 0 if none was.
    double lagMaxUs() const { return static_cast<double>(lagMaxNs_) / 1e3; }
    double lagMeanUs() const { return handled_ == 0 ? 0 : lagSumNs_ / static_cast<double>(handled_) / 1e3; }

  private:
    std::exponential_distribution<double> gap_;  ///< per nanosecond
    std::mt19937_64 rng_;
    int64_t start_, end_;
    double offset_ = 0;     ///< the arrival last given by next(), ns after start_ (exact)
    int64_t last_;          ///< its time, whole nanoseconds
    bool pending_ = false;  ///< that arrival is not handled yet
    bool done_ = false;     ///< no arrival is left before the end
    uint64_t issued_ = 0, skipped_ = 0, late_ = 0, handled_ = 0;
    int64_t lagMaxNs_ = 0;
    double lagSumNs_ = 0;
};

/// Whether a run's failed calls are too many: more than `maxErrorRate` (0..1) of the
/// calls that ended with a result (`ended`: completed or failed). With 0, any failure is.
bool tooManyErrors(uint64_t errors, uint64_t ended, double maxErrorRate);

}  // namespace homa::perf
