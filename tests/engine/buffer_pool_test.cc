#include "engine/buffer_pool.h"

#include <gtest/gtest.h>

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
