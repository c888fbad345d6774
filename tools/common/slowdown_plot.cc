#include "common/slowdown_plot.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace homa::tools {

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
