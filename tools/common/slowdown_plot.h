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
/// into *options (for the line's label). Every field is read with a type check. Returns
/// "" on success, else what is wrong (not JSON, another tool's, a field missing or of
/// the wrong type).
std::string readSlowdownJson(const std::string& path, const std::string& tool, PlotLine* line,
                             nlohmann::json* options);

/// `s` as a single-quoted gnuplot string (a quote inside is doubled).
std::string gnuplotQuoted(const std::string& s);

}  // namespace homa::tools
