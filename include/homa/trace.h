// Time traces: a per-thread ring buffer of small records (timestamp-counter value, a
// static format string, up to four integer arguments), dumped to a text file on demand.
//
//   homa::trace::enable(true);
//   HOMA_TRACE("send DATA id %u offset %u", id, offset);   // ~10 ns when on
//   homa::trace::dump("/tmp/client.tt");
//
// Tracing is off by default. When off, HOMA_TRACE costs one predictable branch on a
// relaxed atomic load and evaluates none of its arguments. When on, a record is a few
// stores into the calling thread's own ring (no lock, no shared cache line): the
// newest kRecordsPerThread records of each thread are kept.
//
// Timestamps are raw TSC cycles; they are converted to nanoseconds of CLOCK_MONOTONIC_RAW
// (which NTP does not slew, so it ticks at the same rate as the TSC) by a calibration
// measured over the whole life of the process, so the conversion gets more precise the
// longer the process runs.
//
// The format string must be a string literal (or otherwise live forever): only its
// address is stored. It understands %u %d %x (with optional l/ll), and %% ; arguments
// are 64-bit integers.
//
// Thread safety: every function may be called from any thread. dump() may run while
// other threads record; records written during the dump may or may not appear in it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

namespace homa::trace {

inline constexpr size_t kRecordsPerThread = size_t{1} << 14;
inline constexpr int kMaxArgs = 4;

/// One record. Fields are relaxed atomics so that a concurrent dump is well defined;
/// on x86 these are plain stores.
struct Record {
    std::atomic<uint64_t> tsc{0};
    std::atomic<const char*> format{nullptr};
    std::atomic<uint64_t> args[kMaxArgs] = {};
};

namespace detail {
struct Ring {
    std::atomic<uint64_t> next{0};  ///< records ever written (the owner writes, dumps read)
    uint32_t index = 0;             ///< stable number of this ring, shown in dumps
    Record records[kRecordsPerThread];
};
// Bit 0: switched on (enable()); bit 1: held off while a dump copies the rings. Records
// are kept only when the value is exactly 1, so the hot path reads one byte.
inline constexpr uint8_t kSwitchedOn = 1, kDumping = 2;
inline std::atomic<uint8_t> gEnabled{0};
inline thread_local Ring* tRing = nullptr;
/// Gives the calling thread a ring (reusing one left by an exited thread).
Ring* attachThread();
}  // namespace detail

/// CLOCK_MONOTONIC_RAW, in nanoseconds.
int64_t monotonicRawNs();

/// The timestamp counter (TSC on x86; CLOCK_MONOTONIC_RAW nanoseconds elsewhere).
inline uint64_t readClock() {
#if defined(__x86_64__) || defined(__i386__)
    return __rdtsc();
#else
    return static_cast<uint64_t>(monotonicRawNs());
#endif
}

/// Whether records are being kept (switched on, and no dump copying the rings).
inline bool enabled() { return detail::gEnabled.load(std::memory_order_relaxed) == detail::kSwitchedOn; }
/// Whether tracing is switched on (it may be held off for the moment by a dump).
inline bool switchedOn() { return (detail::gEnabled.load(std::memory_order_relaxed) & detail::kSwitchedOn) != 0; }
/// Turns recording on or off, at any time (a dump in progress leaves the setting alone).
void enable(bool on);

/// Appends one record to this thread's ring, whether or not tracing is on. Use HOMA_TRACE.
inline void recordAlways(const char* format, uint64_t a0 = 0, uint64_t a1 = 0, uint64_t a2 = 0,
                         uint64_t a3 = 0) {
    detail::Ring* ring = detail::tRing;
    if (__builtin_expect(ring == nullptr, 0)) ring = detail::attachThread();
    uint64_t n = ring->next.load(std::memory_order_relaxed);
    Record& r = ring->records[n & (kRecordsPerThread - 1)];
    r.tsc.store(readClock(), std::memory_order_relaxed);
    r.format.store(format, std::memory_order_relaxed);
    r.args[0].store(a0, std::memory_order_relaxed);
    r.args[1].store(a1, std::memory_order_relaxed);
    r.args[2].store(a2, std::memory_order_relaxed);
    r.args[3].store(a3, std::memory_order_relaxed);
    ring->next.store(n + 1, std::memory_order_release);
}

/// Converts timestamp-counter cycles (a difference) to nanoseconds.
double cyclesPerNs();
inline int64_t cyclesToNs(uint64_t cycles) { return static_cast<int64_t>(static_cast<double>(cycles) / cyclesPerNs()); }
/// CLOCK_MONOTONIC_RAW nanoseconds at timestamp-counter value `tsc`.
int64_t toMonotonicRawNs(uint64_t tsc);

/// Writes every thread's records, oldest first, to `path` (see docs/observability.md for
/// the format). Recording is paused while the file is written and resumed afterwards if
/// it was on. False (with the reason in *error) if the file cannot be written.
bool dump(const std::string& path, std::string* error = nullptr);
/// The same text, as a string.
std::string dumpToString();
/// Forgets every record kept so far.
void clear();
/// Labels this process in dumps (default: the program's name and pid).
void setProcessName(const std::string& name);
/// Dumps to `path` when the process exits normally ("" cancels). The environment variable
/// HOMA_TRACE_FILE=path (where "%p" becomes the process id) turns tracing on at start-up
/// and dumps there at exit.
void dumpAtExit(const std::string& path);

/// Formats one record's message (exposed for tests and tools).
std::string formatMessage(const char* format, const uint64_t* args, int nargs = kMaxArgs);

}  // namespace homa::trace

/// Records an event if tracing is on; the arguments are not evaluated when it is off.
#define HOMA_TRACE_ARG_(x) static_cast<uint64_t>(x)
#define HOMA_TRACE(format, ...)                                                     \
    do {                                                                            \
        if (__builtin_expect(::homa::trace::enabled(), 0))                          \
            ::homa::trace::recordAlways(format HOMA_TRACE_ARGS_(__VA_ARGS__));      \
    } while (0)
// Up to four arguments, each converted to uint64_t.
#define HOMA_TRACE_ARGS_(...) __VA_OPT__(HOMA_TRACE_CAST_(__VA_ARGS__))
#define HOMA_TRACE_CAST_(...) HOMA_TRACE_PICK_(__VA_ARGS__, HOMA_TRACE_C4_, HOMA_TRACE_C3_, HOMA_TRACE_C2_, HOMA_TRACE_C1_, )(__VA_ARGS__)
#define HOMA_TRACE_PICK_(a, b, c, d, m, ...) m
#define HOMA_TRACE_C1_(a) , HOMA_TRACE_ARG_(a)
#define HOMA_TRACE_C2_(a, b) , HOMA_TRACE_ARG_(a), HOMA_TRACE_ARG_(b)
#define HOMA_TRACE_C3_(a, b, c) , HOMA_TRACE_ARG_(a), HOMA_TRACE_ARG_(b), HOMA_TRACE_ARG_(c)
#define HOMA_TRACE_C4_(a, b, c, d) \
    , HOMA_TRACE_ARG_(a), HOMA_TRACE_ARG_(b), HOMA_TRACE_ARG_(c), HOMA_TRACE_ARG_(d)
