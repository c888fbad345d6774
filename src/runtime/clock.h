// The runtime's clock: CLOCK_MONOTONIC in nanoseconds, cheap enough to read several times
// per RPC.
#pragma once

#include <cstdint>

namespace homa::runtime {

/// CLOCK_MONOTONIC, in nanoseconds. On x86 it is the timestamp counter scaled from an
/// anchor taken from CLOCK_MONOTONIC at most kClockAnchorNs earlier (a TSC read costs
/// about a third of a vDSO clock_gettime on a kvm-clock guest); the scale is measured
/// against CLOCK_MONOTONIC over the process's lifetime, so it follows NTP's rate too. A
/// counter that jumps (a virtual machine restored or moved) or changes rate is noticed at
/// the next anchor and measured again; meanwhile, and until the first measurement spans
/// kClockAnchorNs, every read is a clock_gettime. Never goes backwards on one thread.
int64_t nowNs();

/// CLOCK_MONOTONIC read directly, in nanoseconds.
int64_t monotonicNs();

/// How long an anchor serves before the next read takes a fresh one.
inline constexpr int64_t kClockAnchorNs = 1'000'000;

namespace clock_detail {
/// Anchors taken so far, and how many of them found the counter off its scale (tests).
uint64_t anchorsTaken();
uint64_t scaleResets();
}  // namespace clock_detail

}  // namespace homa::runtime
