#pragma once

#include <cstdint>

namespace homa::engine {
/// Nanoseconds on a clock of the caller's choosing (real, virtual, or a test's).
/// The engine never reads a clock: every entry point is told the time.
using Time = int64_t;
inline constexpr Time kNever = INT64_MAX;
}  // namespace homa::engine
