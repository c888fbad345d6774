#include "common/slowdown_plot.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace homa::tools {

namespace {

/// Whether `v` is a finite number above 0.
bool isPositive(const nlohmann::json& v) {
    return v.is_number() && std::isfinite(v.get<double>()) && v.get<double>() > 0;
}

}  // namespace

std::string readSlowdownJson(const std::string& path, const std::string& tool, PlotLine* line,
                             nlohmann::json* options) {
    using nlohmann::json;
    std::ifstream f(path);
    try {
        const json j = json::parse(f);
        if (!j.is_object() || j.value("tool", "") != tool || !j.contains("buckets") || !j.contains("options"))
            return "no buckets";
        if (!j.at("buckets").is_array() || !j.at("options").is_object()) return "buckets or options of the wrong type";
        line->points.clear();
        const json& buckets = j.at("buckets");
        for (size_t i = 0; i < buckets.size(); ++i) {
            // Each value is checked, not only its type: both axes are logarithmic, so a
            // size or slowdown of 0 or less would be dropped by gnuplot (or fail it), and
            // a negative count would wrap to a huge unsigned one.
            const json& b = buckets[i];
            const std::string field = "buckets[" + std::to_string(i) + "].";
            const json& count = b.at("count");
            if (!count.is_number_unsigned())
                return field + "count is " + count.dump() + ", not a count (a whole number, 0 or more)";
            const json& size = b.at("max_size");
            if (!isPositive(size)) return field + "max_size is " + size.dump() + ", not a positive size";
            if (count.get<uint64_t>() == 0) continue;
            const json& slowdown = b.at("slowdown_p99");
            if (!isPositive(slowdown))
                return field + "slowdown_p99 is " + slowdown.dump() + ", not a positive number";
            line->points.emplace_back(size.get<double>(), slowdown.get<double>());
        }
        *options = j.at("options");
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

std::string gnuplotQuoted(const std::string& s) {
    std::string q = "'";
    for (char c : s) {
        if (c == '\'') q += '\'';
        q += c;
    }
    return q + "'";
}

std::string plotSlowdown(const std::vector<PlotLine>& lines, const std::string& output, const std::string& title) {
    if (std::none_of(lines.begin(), lines.end(), [](const PlotLine& l) { return !l.points.empty(); }))
        return "nothing to plot: no message-size bucket has samples";
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) return "gnuplot not found (apt-get install gnuplot-nox)";
    const char* tmp = std::getenv("TMPDIR");
    std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/homa-plot-XXXXXX";
    if (!mkdtemp(dir.data())) return "cannot make a temporary directory under " + dir.substr(0, dir.rfind('/'));
    std::ostringstream script;
    script << "set terminal pngcairo size 1000,600 noenhanced\n"
           << "set output " << gnuplotQuoted(output) << "\n"
           << "set logscale x\nset logscale y\nset grid\n"
           << "set xlabel 'message size (bytes, bucket upper bound)'\nset ylabel 'P99 slowdown'\n"
           << "set key top left\n";
    if (!title.empty()) script << "set title " << gnuplotQuoted(title) << "\n";
    script << "plot ";
    for (size_t i = 0; i < lines.size(); ++i) {
        const std::string data = dir + "/" + std::to_string(i) + ".dat";
        std::ofstream d(data);
        for (const auto& [size, slowdown] : lines[i].points) d << size << " " << slowdown << "\n";
        script << (i ? ", " : "") << gnuplotQuoted(data) << " using 1:2 with linespoints lw 2 title "
               << gnuplotQuoted(lines[i].label);
    }
    script << "\n";
    const std::string scriptPath = dir + "/plot.gp";
    std::ofstream(scriptPath) << script.str();
    // (Quoted for the shell: $TMPDIR may hold spaces or worse.)
    std::string command = "gnuplot '";
    for (char c : scriptPath) command += c == '\'' ? std::string("'\\''") : std::string(1, c);
    if (std::system((command + "'").c_str()) != 0) return "gnuplot failed (script " + scriptPath + ")";
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
    return "";
}

}  // namespace homa::tools
