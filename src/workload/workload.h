// Message-size distributions (W1-W5 and friends): loading, sampling, capping.
//
// File format: the first line is the published mean size in bytes; every following line
// is "SIZE CUMULATIVE_PROBABILITY" (probability that a message is at most SIZE), sizes
// non-decreasing, probabilities non-decreasing, the last one 1.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace homa::workload {

class Distribution {
  public:
    /// Parses a distribution file; nothing (and a one-line reason in *error) if malformed.
    static std::optional<Distribution> load(const std::string& path, std::string* error);
    static std::optional<Distribution> parse(const std::string& text, std::string* error);
    /// A distribution of one size.
    static Distribution fixed(uint32_t size);
    /// "w1".."w5" from the workloads directory (see findWorkloadFile), or a file path.
    static std::optional<Distribution> named(const std::string& name, std::string* error);

    /// Inverse-CDF sampling on the step function: the first size whose cumulative
    /// probability exceeds u ~ U[0,1).
    uint32_t sample(std::mt19937_64& rng) const;
    /// The mean of the distribution as stored (after any cap), computed from the CDF.
    double mean() const;
    /// The mean given on the file's first line (0 for fixed distributions).
    double publishedMean() const { return published_; }
    uint32_t maxSize() const { return sizes_.empty() ? 0 : sizes_.back(); }
    /// Sizes above `max` become `max` (as the Linux tools do at 1,000,000 bytes).
    Distribution capped(uint32_t max) const;
    bool isCapped() const { return cappedAt_ != 0; }
    const std::string& name() const { return name_; }

    const std::vector<uint32_t>& sizes() const { return sizes_; }
    const std::vector<double>& cumulative() const { return cum_; }

  private:
    std::string name_;
    std::vector<uint32_t> sizes_;
    std::vector<double> cum_;
    double published_ = 0;
    uint32_t cappedAt_ = 0;
};

/// Where "w1".."w5" live: $HOMA_WORKLOAD_DIR, else the shared/workloads directory beside
/// the source tree. Empty if not found.
std::string findWorkloadFile(const std::string& name);

}  // namespace homa::workload
