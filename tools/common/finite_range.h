// A command-line check for floating-point options: a finite number within [min, max].
// CLI::Range alone lets "nan" through (every comparison with NaN is false), and a NaN
// duration or rate then turns into undefined conversions further on.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>

namespace homa::tools {

inline CLI::Validator FiniteRange(double min, double max) {
    std::ostringstream range;
    range << "[" << min << " - " << max << "]";
    const std::string bounds = range.str();
    return CLI::Validator(
        [min, max, bounds](std::string& text) -> std::string {
            char* end = nullptr;
            const double v = std::strtod(text.c_str(), &end);
            if (end == text.c_str() || *end != '\0') return "not a number: " + text;
            if (!std::isfinite(v) || v < min || v > max) return "value " + text + " not in range " + bounds;
            return {};
        },
        "FLOAT in " + bounds);
}

}  // namespace homa::tools
