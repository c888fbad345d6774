// homa-sim only (not the library, not the tests): large byte arrays are all one buffer.
//
// The engines copy every message into a buffer of their pool (new uint8_t[n]) at the
// sender and reassemble it into another at the receiver. In the simulator the contents
// are never looked at, yet the buffers of the messages in flight on 144 hosts, plus the
// pools' caches, add up to gigabytes, and touching fresh memory costs more than the
// simulation itself. So, once enabled, every array allocation of at least kSharedMin
// bytes returns the same block (grown when a larger one is asked for; never freed).
// Everything the engines do with the bytes still happens (copies, reassembly); only
// their values are meaningless, and deterministic. The engines never identify a buffer
// by its address (the pool keeps free lists of addresses only). The only arrays that
// large in homa-sim are message buffers: the network allocates its packet chunks with
// scalar new. --real-payload-memory turns this off; tests check both give the same
// results.
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "payload_memory.h"

namespace {

constexpr size_t kSharedMin = 16 << 10;

bool enabled = false;
uint8_t* block = nullptr;
size_t blockSize = 0;
std::vector<uint8_t*>* retired = nullptr;  // earlier, smaller blocks (still handed out)

bool ours(void* p) {
    if (p == block && block != nullptr) return true;
    if (retired)
        for (uint8_t* b : *retired)
            if (b == p) return true;
    return false;
}

void* arrayNew(size_t n) {
    if (enabled && n >= kSharedMin) {
        if (n > blockSize) {
            const size_t len = (n + (2u << 20) - 1) / (2u << 20) * (2u << 20);
            void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p != MAP_FAILED) {
                if (block) {
                    if (!retired) retired = new std::vector<uint8_t*>;
                    retired->push_back(block);
                }
                block = static_cast<uint8_t*>(p);
                blockSize = len;
            }
        }
        if (n <= blockSize) return block;
    }
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}

void arrayDelete(void* p) {
    if (!p || ours(p)) return;
    std::free(p);
}

}  // namespace

namespace homa::simtool {
void setPayloadSharing(bool on) { enabled = on; }
uint64_t sharedPayloadBytes() { return blockSize; }
}  // namespace homa::simtool

void* operator new[](size_t n) { return arrayNew(n); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
    try {
        return arrayNew(n);
    } catch (...) {
        return nullptr;
    }
}
void operator delete[](void* p) noexcept { arrayDelete(p); }
void operator delete[](void* p, size_t) noexcept { arrayDelete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { arrayDelete(p); }
