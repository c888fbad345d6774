#include "engine/buffer_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <new>

namespace homa::engine {

namespace {
constexpr uint32_t kMinClass = 256;

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels refuse it (EINVAL)
#endif

// New memory for a buffer of `size` bytes; null if there is none. The whole pages of a
// large one are mapped in here, in one system call, not by a page fault at each of its
// first touches: those cost up to 12 us per 4 KB page on a virtual machine (more than a
// packet's whole processing), and each new large message would pay them one by one in
// the middle of its reception. (A kernel without MADV_POPULATE_WRITE faults them in as
// before.)
uint8_t* newBuffer(uint64_t size) {
    auto* p = new (std::nothrow) uint8_t[size];
    if (p != nullptr && size >= BufferPool::kPrefaultBytes) {
        static const uintptr_t kPage = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
        const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
        const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + size) & ~(kPage - 1);
        if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
    }
    return p;
}
}  // namespace

BufferPool::BufferPool(uint64_t limitBytes, uint64_t reserveBytes)
    : limit_(limitBytes), reserve_(std::min(reserveBytes, limitBytes)), freeLists_(130) {}

BufferPool::~BufferPool() {
    for (auto& list : freeLists_)
        for (uint8_t* p : list) delete[] p;
}

int BufferPool::classIndex(uint32_t length) {
    if (length <= kMinClass) return 0;
    uint32_t v = length - 1;
    int e = std::bit_width(v) - 1;  // v in [2^e, 2^(e+1))
    uint32_t sub = (v >> (e - 2)) & 3;
    // kMinClass = 256 = 2^8 is class 0; each octave above has 4 classes.
    return (e - 8) * 4 + static_cast<int>(sub) + 1;
}

uint64_t BufferPool::sizeOfClass(int index) {
    if (index == 0) return kMinClass;
    int e = (index - 1) / 4 + 8;
    uint64_t sub = static_cast<uint64_t>((index - 1) % 4);
    return (5 + sub) << (e - 2);
}

uint32_t BufferPool::classSize(uint32_t length) {
    if (length <= kMinClass) return kMinClass;
    uint32_t v = length - 1;
    int e = std::bit_width(v) - 1;
    uint64_t sub = (v >> (e - 2)) & 3;
    uint64_t size = (4 + sub + 1) << (e - 2);
    return size > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(size);
}

bool BufferPool::fits(uint32_t length, uint32_t size, bool small) const {
    return length > 0 && inUse_ + size <= (small ? limit_ : limit_ - reserve_);
}

bool BufferPool::canAllocate(uint32_t length, bool small) const {
    return fits(length, classSize(length), small);
}

BufferPool::Buffer BufferPool::allocate(uint32_t length, bool small) {
    Buffer b = tryAllocate(length, small);
    if (!b) ++failures_;
    return b;
}

BufferPool::Buffer BufferPool::tryAllocate(uint32_t length, bool small) {
    const uint32_t size = classSize(length);
    if (!fits(length, size, small)) return {};
    int index = classIndex(length);
    auto& list = freeLists_[static_cast<size_t>(index)];
    uint8_t* p;
    if (!list.empty()) {
        p = list.back();
        list.pop_back();
        cached_ -= size;
    } else {
        trimCache(size);
        p = newBuffer(size);
        if (p == nullptr) return {};  // out of memory: as if over the limit
    }
    inUse_ += size;
    return {p, size};
}

void BufferPool::release(Buffer buffer) {
    if (!buffer) return;
    int index = classIndex(buffer.capacity);
    assert(classSize(buffer.capacity) == buffer.capacity);
    inUse_ -= buffer.capacity;
    freeLists_[static_cast<size_t>(index)].push_back(buffer.data);
    cached_ += buffer.capacity;
    // Releasing only moves bytes from in use to cached, so their sum (which allocate()
    // keeps within the limit) is unchanged: there is something to trim only if the limit
    // was exceeded already.
    if (inUse_ + cached_ > limit_) trimCache(0);
}

// Keeps in-use plus cached memory within the limit.
void BufferPool::trimCache(uint64_t needed) {
    for (size_t i = freeLists_.size(); i-- > 0 && inUse_ + cached_ + needed > limit_;) {
        auto& list = freeLists_[i];
        while (!list.empty() && inUse_ + cached_ + needed > limit_) {
            delete[] list.back();
            list.pop_back();
            cached_ -= sizeOfClass(static_cast<int>(i));
        }
    }
}

}  // namespace homa::engine
