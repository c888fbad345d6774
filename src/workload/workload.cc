#include "workload/workload.h"

#include "common/read_file.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

namespace homa::workload {

namespace {
bool fileExists(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
}  // namespace

std::optional<Distribution> Distribution::parse(const std::string& text, std::string* error) {
    auto fail = [&](const std::string& why) -> std::optional<Distribution> {
        if (error) *error = why;
        return std::nullopt;
    };
    std::istringstream in(text);
    std::string line;
    Distribution d;
    if (!std::getline(in, line)) return fail("empty workload file");
    {
        std::istringstream first(line);
        if (!(first >> d.published_) || d.published_ <= 0) return fail("line 1: expected the mean size");
    }
    int lineNo = 1;
    while (std::getline(in, line)) {
        ++lineNo;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        std::istringstream ls(line);
        double size, p;
        std::string rest;
        if (!(ls >> size >> p) || (ls >> rest))
            return fail("line " + std::to_string(lineNo) + ": expected \"SIZE PROBABILITY\"");
        if (size < 1 || size > 4e9 || size != static_cast<double>(static_cast<uint64_t>(size)))
            return fail("line " + std::to_string(lineNo) + ": size must be a whole number of bytes >= 1");
        if (!(p >= 0 && p <= 1)) return fail("line " + std::to_string(lineNo) + ": probability must be in [0, 1]");
        if (!d.sizes_.empty() && (size < d.sizes_.back() || p < d.cum_.back()))
            return fail("line " + std::to_string(lineNo) + ": sizes and probabilities must not decrease");
        d.sizes_.push_back(static_cast<uint32_t>(size));
        d.cum_.push_back(p);
    }
    if (d.sizes_.empty()) return fail("no sizes in workload file");
    if (d.cum_.back() != 1.0) return fail("the last cumulative probability must be 1");
    return d;
}

namespace {
constexpr uint64_t kMaxWorkloadFileBytes = 16 << 20;
}  // namespace

std::optional<Distribution> Distribution::load(const std::string& path, std::string* error) {
    // (The largest of the workloads is a few KB; 16 MB leaves room for any made by hand.)
    std::string text, why;
    if (!readRegularFile(path, kMaxWorkloadFileBytes, &text, &why)) {
        if (error) *error = "cannot read workload file " + why;
        return std::nullopt;
    }
    auto d = parse(text, &why);
    if (!d) {
        if (error) *error = path + ": " + why;
        return std::nullopt;
    }
    auto slash = path.find_last_of('/');
    d->name_ = path.substr(slash == std::string::npos ? 0 : slash + 1);
    if (d->name_.size() > 4 && d->name_.ends_with(".txt")) d->name_.resize(d->name_.size() - 4);
    return d;
}

Distribution Distribution::fixed(uint32_t size) {
    Distribution d;
    d.sizes_ = {std::max<uint32_t>(size, 1)};
    d.cum_ = {1.0};
    d.name_ = std::to_string(size);
    return d;
}

std::optional<Distribution> Distribution::named(const std::string& name, std::string* error) {
    if (name.find('/') == std::string::npos && !fileExists(name)) {
        std::string path = findWorkloadFile(name);
        if (path.empty()) {
            if (error)
                *error = "unknown workload '" + name + "' (w1..w5 need the workloads directory; set HOMA_WORKLOAD_DIR)";
            return std::nullopt;
        }
        return load(path, error);
    }
    return load(name, error);
}

uint32_t Distribution::sample(std::mt19937_64& rng) const {
    double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    auto it = std::upper_bound(cum_.begin(), cum_.end(), u);
    if (it == cum_.end()) return sizes_.back();
    return sizes_[static_cast<size_t>(it - cum_.begin())];
}

double Distribution::mean() const {
    double m = 0, prev = 0;
    for (size_t i = 0; i < sizes_.size(); ++i) {
        m += sizes_[i] * (cum_[i] - prev);
        prev = cum_[i];
    }
    return m;
}

Distribution Distribution::capped(uint32_t max) const {
    Distribution d = *this;
    for (auto& s : d.sizes_) s = std::min(s, max);
    if (maxSize() > max) d.cappedAt_ = max;
    return d;
}

std::string findWorkloadFile(const std::string& name) {
    std::string file = name.ends_with(".txt") ? name : name + ".txt";
    std::vector<std::string> dirs;
    if (const char* env = std::getenv("HOMA_WORKLOAD_DIR")) dirs.push_back(env);
#ifdef HOMA_SOURCE_DIR
    dirs.push_back(std::string(HOMA_SOURCE_DIR) + "/../shared/workloads");
#endif
    dirs.push_back("../shared/workloads");
    dirs.push_back("shared/workloads");
    for (const auto& d : dirs)
        if (fileExists(d + "/" + file)) return d + "/" + file;
    return {};
}

}  // namespace homa::workload
