// Memory for message bytes, bounded by a byte limit.
//
// Buffers come in size classes (four per power of two, so at most 25% is wasted) and
// freed buffers are kept for reuse, so a steady stream of similar messages allocates
// nothing from the heap. The limit counts the capacity of buffers handed out; cached
// free buffers are given back to the heap when an allocation would otherwise exceed it.
// The last `reserve` bytes of the limit are for small buffers only (see allocate()).
// A new buffer of kPrefaultBytes or more has its pages mapped in when it is made, not at
// its first touches (see buffer_pool.cc).
#pragma once

#include <cstdint>
#include <vector>

namespace homa::engine {

class BufferPool {
  public:
    struct Buffer {
        uint8_t* data = nullptr;
        uint32_t capacity = 0;
        explicit operator bool() const { return data != nullptr; }
    };

    explicit BufferPool(uint64_t limitBytes, uint64_t reserveBytes = 0);
    ~BufferPool();
    BufferPool(const BufferPool&) = delete;
    BufferPool& operator=(const BufferPool&) = delete;

    /// A buffer of at least `length` bytes (length >= 1), or an empty Buffer when
    /// the limit would be exceeded. Only a `small` buffer may use the reserve.
    Buffer allocate(uint32_t length, bool small = false);
    /// allocate() for a caller with another way to place the message when this fails:
    /// a failure here is not counted in allocationFailures().
    Buffer tryAllocate(uint32_t length, bool small = false);
    void release(Buffer buffer);

    /// Whether a buffer of `length` bytes could be allocated now.
    bool canAllocate(uint32_t length, bool small = false) const;
    uint64_t bytesInUse() const { return inUse_; }
    uint64_t bytesCached() const { return cached_; }
    uint64_t limit() const { return limit_; }
    uint64_t allocationFailures() const { return failures_; }

    static uint32_t classSize(uint32_t length);
    /// New buffers at least this large have their pages mapped in when they are made.
    static constexpr uint64_t kPrefaultBytes = 32 * 1024;

  private:
    static int classIndex(uint32_t length);
    static uint64_t sizeOfClass(int index);
    /// Whether a buffer of `size` bytes (classSize(length)) could be allocated now.
    bool fits(uint32_t length, uint32_t size, bool small) const;
    void trimCache(uint64_t needed);

    uint64_t limit_;
    uint64_t reserve_;
    uint64_t inUse_ = 0;
    uint64_t cached_ = 0;
    uint64_t failures_ = 0;
    std::vector<std::vector<uint8_t*>> freeLists_;
};

}  // namespace homa::engine
