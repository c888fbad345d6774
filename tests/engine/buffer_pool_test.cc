#include "engine/buffer_pool.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

namespace homa::engine {
namespace {

TEST(BufferPool, ClassSizesCoverTheRequestWithBoundedWaste) {
    for (uint32_t len : {1u, 255u, 256u, 257u, 1000u, 4096u, 65537u, 1'000'000u, 16'000'000u}) {
        uint32_t size = BufferPool::classSize(len);
        EXPECT_GE(size, len);
        EXPECT_LE(size, std::max<uint32_t>(256, len + len / 4 + 1)) << len;
        EXPECT_EQ(BufferPool::classSize(size), size) << "a class size is its own class";
    }
}

// How many of the whole pages inside [p, p + size) are resident (mapped in).
size_t residentPages(const uint8_t* p, size_t size, size_t* pages) {
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + size) & ~(page - 1);
    *pages = (end - begin) / page;
    std::vector<unsigned char> in(*pages);
    if (mincore(reinterpret_cast<void*>(begin), end - begin, in.data()) != 0) return 0;
    size_t n = 0;
    for (unsigned char c : in) n += c & 1;
    return n;
}

// A new large buffer arrives with its pages mapped in: each first touch of a page
// faulted (up to 12 us per 4 KB page on a virtual machine), in the middle of a message's
// reception. A small one is left to the heap as it is.
TEST(BufferPool, NewLargeBuffersArriveMappedIn) {
    // (The kernel must know MADV_POPULATE_WRITE, Linux 5.14 and later: Debian 12 has 6.1.)
    void* probe = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(probe, MAP_FAILED);
    const bool canPopulate = madvise(probe, 4096, 23 /* MADV_POPULATE_WRITE */) == 0;
    munmap(probe, 4096);
    if (!canPopulate) GTEST_SKIP() << "this kernel cannot map pages in ahead (MADV_POPULATE_WRITE, Linux 5.14)";

    BufferPool pool(64 << 20);
    for (uint32_t len : {40'000u, 1'000'000u, 3'000'000u}) {
        auto b = pool.allocate(len);
        ASSERT_TRUE(b);
        size_t pages = 0;
        const size_t resident = residentPages(b.data, b.capacity, &pages);
        EXPECT_GT(pages, 0u) << len;
        EXPECT_EQ(resident, pages) << len << "-byte buffer: pages not mapped in before their first touch";
        pool.release(b);
    }
}

TEST(BufferPool, RefusesBeyondTheLimitAndCountsFailures) {
    BufferPool pool(10'000);
    auto a = pool.allocate(6'000);
    ASSERT_TRUE(a);
    EXPECT_FALSE(pool.canAllocate(6'000));
    auto b = pool.allocate(6'000);
    EXPECT_FALSE(b);
    EXPECT_EQ(pool.allocationFailures(), 1u);
    pool.release(a);
    EXPECT_EQ(pool.bytesInUse(), 0u);
    auto c = pool.allocate(6'000);
    EXPECT_TRUE(c);
    pool.release(c);
}

// tryAllocate() refuses like allocate() but leaves the count to a caller that has
// another way to place the message (which counts the failure if that fails too).
TEST(BufferPool, TryAllocateRefusesWithoutCounting) {
    BufferPool pool(10'000);
    auto a = pool.tryAllocate(6'000);
    ASSERT_TRUE(a);
    EXPECT_EQ(pool.bytesInUse(), a.capacity);
    EXPECT_FALSE(pool.tryAllocate(6'000));
    EXPECT_EQ(pool.allocationFailures(), 0u);
    EXPECT_FALSE(pool.allocate(6'000));
    EXPECT_EQ(pool.allocationFailures(), 1u);
    pool.release(a);
    EXPECT_EQ(pool.bytesInUse(), 0u);
}

TEST(BufferPool, ReusesFreedBuffers) {
    BufferPool pool(1 << 20);
    auto a = pool.allocate(1000);
    uint8_t* p = a.data;
    pool.release(a);
    EXPECT_EQ(pool.bytesCached(), a.capacity);
    auto b = pool.allocate(900);  // same class
    EXPECT_EQ(b.data, p);
    EXPECT_EQ(pool.bytesCached(), 0u);
    pool.release(b);
}

TEST(BufferPool, CacheIsTrimmedToKeepTotalWithinLimit) {
    BufferPool pool(100'000);
    auto a = pool.allocate(60'000);
    pool.release(a);                 // 60k+ cached
    auto b = pool.allocate(90'000);  // needs the cache to be given back
    ASSERT_TRUE(b);
    EXPECT_LE(pool.bytesInUse() + pool.bytesCached(), 100'000u + 0u);
    pool.release(b);
}

TEST(BufferPool, ReserveIsForSmallBuffersOnly) {
    BufferPool pool(100'000, 20'000);
    auto big = pool.allocate(60'000);  // class 65,536: within the 80,000 outside the reserve
    ASSERT_TRUE(big);
    EXPECT_FALSE(pool.canAllocate(16'000)) << "a large buffer may not use the reserve";
    EXPECT_FALSE(pool.allocate(16'000));
    auto small = pool.allocate(16'000, true);
    EXPECT_TRUE(small) << "a small one may";
    EXPECT_LE(pool.bytesInUse(), pool.limit());
    pool.release(big);
    pool.release(small);
    BufferPool all(1'000, 5'000);  // a reserve larger than the pool is the whole pool
    EXPECT_FALSE(all.canAllocate(100));
    EXPECT_TRUE(all.canAllocate(100, true));
}

TEST(BufferPool, ZeroLengthIsRefused) {
    BufferPool pool(1000);
    EXPECT_FALSE(pool.canAllocate(0));
    EXPECT_FALSE(pool.allocate(0));
}

}  // namespace
}  // namespace homa::engine
