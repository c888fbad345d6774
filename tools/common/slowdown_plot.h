// The picture homa-perf and homa-sim draw from their JSON files: P99 slowdown against
// message size, both axes logarithmic, one line per run (gnuplot, pngcairo).
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

namespace homa::tools {

struct PlotLine {
    std::string label;
    std::vector<std::pair<double, double>> points;  ///< (bucket's largest size, P99 slowdown)
};

/// Writes `output` (PNG). Returns "" on success, or what went wrong (also when no line
/// has a point: gnuplot would fail on an empty range). Its working files
/// go in a directory under $TMPDIR (or /tmp) that is removed afterwards, unless gnuplot
/// fails: then the error names the script, which is kept for a look.
std::string plotSlowdown(const std::vector<PlotLine>& lines, const std::string& output, const std::string& title);

/// Reads a JSON file that `tool` ("homa-perf", "homa-sim") wrote with --json: the P99
/// slowdown of each bucket that holds messages into line->points, and the run's options
/// into *options (for the line's label). Every field is read with a type check, and
/// each bucket's values with a range check: a count is a whole number, 0 or more; a
/// max_size, and the slowdown_p99 of a bucket with messages, a number above 0. Returns
/// "" on success, else what is wrong, in one line naming the field if it is one (not
/// JSON, another tool's, a field missing, of the wrong type or out of range).
std::string readSlowdownJson(const std::string& path, const std::string& tool, PlotLine* line,
                             nlohmann::json* options);

/// `s` as a single-quoted gnuplot string (a quote inside is doubled).
std::string gnuplotQuoted(const std::string& s);

}  // namespace homa::tools
