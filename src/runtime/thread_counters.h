// Counters updated by many threads without sharing a cache line: each thread adds to its
// own block, and a read sums the blocks.
//
//   ThreadCounters<kCount> c;
//   c.add(kHandlerCalls, 1);        // any thread; no lock, no atomic read-modify-write
//   uint64_t total = c.sum(kHandlerCalls);
//
// A thread finds its block through a small thread-local cache keyed by the owning
// object's serial number (never reused), so a block is never looked up for a destroyed
// owner. Each value has one writer (its thread): it is a relaxed atomic updated with a
// plain load and store, which costs the same as an ordinary integer and makes
// concurrent reads well defined.
//
// Thread safety: add() and sum() from any thread. Blocks live as long as the object.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace homa::runtime {

namespace detail {
inline std::atomic<uint64_t> gCounterOwnerSerial{1};
struct CounterCacheEntry {
    uint64_t owner = 0;
    void* block = nullptr;
};
inline constexpr size_t kCounterCacheEntries = 4;
inline thread_local CounterCacheEntry tCounterCache[kCounterCacheEntries];
inline thread_local unsigned tCounterCacheNext = 0;
}  // namespace detail

template <size_t N>
class ThreadCounters {
  public:
    ThreadCounters() = default;
    ThreadCounters(const ThreadCounters&) = delete;
    ThreadCounters& operator=(const ThreadCounters&) = delete;

    void add(size_t counter, uint64_t delta) {
        std::atomic<uint64_t>& v = local()->values[counter];
        v.store(v.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
    }
    uint64_t sum(size_t counter) const {
        std::lock_guard lk(mu_);
        uint64_t total = 0;
        for (const auto& b : blocks_) total += b->values[counter].load(std::memory_order_relaxed);
        return total;
    }
    /// How many threads have counted so far.
    size_t threads() const {
        std::lock_guard lk(mu_);
        return blocks_.size();
    }

  private:
    struct alignas(64) Block {
        std::atomic<uint64_t> values[N] = {};
        std::thread::id thread;
    };

    Block* local() {
        for (auto& e : detail::tCounterCache)
            if (e.owner == serial_) return static_cast<Block*>(e.block);
        return attach();
    }
    Block* attach() {
        Block* b = nullptr;
        {
            std::lock_guard lk(mu_);
            auto me = std::this_thread::get_id();
            for (auto& blk : blocks_)
                if (blk->thread == me) b = blk.get();
            if (!b) {
                blocks_.push_back(std::make_unique<Block>());
                b = blocks_.back().get();
                b->thread = me;
            }
        }
        auto& e = detail::tCounterCache[detail::tCounterCacheNext++ % detail::kCounterCacheEntries];
        e.owner = serial_;
        e.block = b;
        return b;
    }

    const uint64_t serial_ = detail::gCounterOwnerSerial.fetch_add(1, std::memory_order_relaxed);
    mutable std::mutex mu_;
    std::vector<std::unique_ptr<Block>> blocks_;
};

}  // namespace homa::runtime
