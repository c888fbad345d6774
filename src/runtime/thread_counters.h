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
// concurrent reads well defined. When a thread exits, its blocks go back to their owners
// and the next new thread continues counting in them (totals are kept), so the memory is
// bounded by the number of threads alive at once, however many come and go.
//
// Thread safety: add() and sum() from any thread, while the object lives.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace homa::runtime {

namespace detail {
inline std::atomic<uint64_t> gCounterOwnerSerial{1};

/// What a thread's exit needs to know about an owner of blocks.
struct CounterOwner {
    virtual ~CounterOwner() = default;
    virtual void giveBack(void* block) = 0;
};

struct CounterCacheEntry {
    uint64_t owner = 0;
    void* block = nullptr;
};
inline constexpr size_t kCounterCacheEntries = 4;

/// Per thread: a cache of blocks (trivial type: no initialisation check on each access)...
inline thread_local CounterCacheEntry tCounterCache[kCounterCacheEntries];
inline thread_local unsigned tCounterCacheNext = 0;
/// ...and every block the thread holds, returned to its owner when the thread exits.
struct CounterThread {
    std::vector<std::pair<std::weak_ptr<CounterOwner>, void*>> held;
    ~CounterThread() {
        for (auto& [owner, block] : held)
            if (auto o = owner.lock()) o->giveBack(block);
    }
};
inline thread_local CounterThread tCounterThread;
}  // namespace detail

template <size_t N>
class ThreadCounters {
  public:
    ThreadCounters() : state_(std::make_shared<State>()) {}
    ThreadCounters(const ThreadCounters&) = delete;
    ThreadCounters& operator=(const ThreadCounters&) = delete;

    void add(size_t counter, uint64_t delta) {
        std::atomic<uint64_t>& v = local()->values[counter];
        v.store(v.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
    }
    uint64_t sum(size_t counter) const {
        std::lock_guard lk(state_->mu);
        uint64_t total = 0;
        for (const auto& b : state_->blocks) total += b->values[counter].load(std::memory_order_relaxed);
        return total;
    }
    /// How many blocks exist (at most the number of threads that counted at once).
    size_t blocks() const {
        std::lock_guard lk(state_->mu);
        return state_->blocks.size();
    }

  private:
    struct alignas(64) Block {
        std::atomic<uint64_t> values[N] = {};
    };
    struct State : detail::CounterOwner {
        std::mutex mu;
        std::vector<std::unique_ptr<Block>> blocks;
        std::vector<Block*> spare;  // left by threads that exited
        void giveBack(void* block) override {
            std::lock_guard lk(mu);
            spare.push_back(static_cast<Block*>(block));
        }
    };

    Block* local() {
        for (auto& e : detail::tCounterCache)
            if (e.owner == serial_) return static_cast<Block*>(e.block);
        return attach();
    }
    Block* attach() {
        detail::CounterThread& t = detail::tCounterThread;
        Block* b = nullptr;
        // This thread may already hold a block (it fell out of the small cache).
        for (auto& [owner, block] : t.held)
            if (owner.lock() == state_) b = static_cast<Block*>(block);
        if (!b) {
            {
                std::lock_guard lk(state_->mu);
                if (!state_->spare.empty()) {
                    b = state_->spare.back();
                    state_->spare.pop_back();
                } else {
                    state_->blocks.push_back(std::make_unique<Block>());
                    b = state_->blocks.back().get();
                }
            }
            // Forget blocks of owners that are gone, then remember this one.
            std::erase_if(t.held, [](const auto& h) { return h.first.expired(); });
            t.held.emplace_back(std::weak_ptr<detail::CounterOwner>(state_), b);
        }
        auto& e = detail::tCounterCache[detail::tCounterCacheNext++ % detail::kCounterCacheEntries];
        e.owner = serial_;
        e.block = b;
        return b;
    }

    const uint64_t serial_ = detail::gCounterOwnerSerial.fetch_add(1, std::memory_order_relaxed);
    std::shared_ptr<State> state_;
};

}  // namespace homa::runtime
