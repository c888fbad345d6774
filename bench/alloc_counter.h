// Counts heap allocations made through operator new, by replacing the global allocation
// functions of the program that includes this header.
//
// Include it from exactly one translation unit of a benchmark binary: the definitions
// below replace the standard library's, and a second copy would not link.
//
// Why replace operator new rather than malloc: the engine and the containers it uses
// (std::deque, std::vector, absl's hash maps) all allocate through operator new, and
// counting there needs no link tricks. Direct malloc calls (none in the engine today)
// would not be counted.
//
// To find where allocations come from, arm the hook and break on it in a debugger:
//   gdb -batch -ex 'break homa_bench_alloc_hook' -ex 'run' -ex 'bt' --args <binary> ...
// The hook is called only while armed (during measured loops), so the breakpoint does
// not fire for setup, warm-up or the benchmark library's own allocations.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace homa::bench {

// Relaxed atomics: the benchmarks are single-threaded, but the benchmark library may
// allocate from other threads and a torn count would be worse than a slow one.
inline std::atomic<uint64_t> gAllocations{0};
inline std::atomic<bool> gHookArmed{false};

inline uint64_t allocationCount() { return gAllocations.load(std::memory_order_relaxed); }

/// While armed, every allocation also calls homa_bench_alloc_hook (a breakpoint target).
class AllocHookScope {
  public:
    AllocHookScope() { gHookArmed.store(true, std::memory_order_relaxed); }
    ~AllocHookScope() { gHookArmed.store(false, std::memory_order_relaxed); }
    AllocHookScope(const AllocHookScope&) = delete;
    AllocHookScope& operator=(const AllocHookScope&) = delete;
};

}  // namespace homa::bench

// Out of line and with a side effect the optimiser must keep, so that a breakpoint on it
// catches every armed allocation.
extern "C" __attribute__((noinline)) void homa_bench_alloc_hook(std::size_t size) {
    asm volatile("" : : "r"(size) : "memory");
}

namespace homa::bench::detail {

inline void* countedAlloc(std::size_t size, std::size_t align, bool nothrow) {
    gAllocations.fetch_add(1, std::memory_order_relaxed);
    if (gHookArmed.load(std::memory_order_relaxed)) homa_bench_alloc_hook(size);
    if (size == 0) size = 1;  // operator new must return a distinct pointer
    void* p;
    if (align <= alignof(std::max_align_t)) {
        p = std::malloc(size);
    } else {
        // aligned_alloc wants a size that is a multiple of the alignment.
        p = std::aligned_alloc(align, (size + align - 1) / align * align);
    }
    if (!p && !nothrow) throw std::bad_alloc();
    return p;
}

}  // namespace homa::bench::detail

void* operator new(std::size_t n) { return homa::bench::detail::countedAlloc(n, 0, false); }
void* operator new[](std::size_t n) { return homa::bench::detail::countedAlloc(n, 0, false); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    return homa::bench::detail::countedAlloc(n, 0, true);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    return homa::bench::detail::countedAlloc(n, 0, true);
}
void* operator new(std::size_t n, std::align_val_t a) {
    return homa::bench::detail::countedAlloc(n, static_cast<std::size_t>(a), false);
}
void* operator new[](std::size_t n, std::align_val_t a) {
    return homa::bench::detail::countedAlloc(n, static_cast<std::size_t>(a), false);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return homa::bench::detail::countedAlloc(n, static_cast<std::size_t>(a), true);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return homa::bench::detail::countedAlloc(n, static_cast<std::size_t>(a), true);
}

void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
