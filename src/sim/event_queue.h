#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "sim/host.h"

namespace homa::sim {

// A plain tagged event: no std::function, no allocation per event.
struct Event {
    Time time = 0;
    uint64_t order = 0;  // insertion sequence; breaks ties deterministically
    uint32_t kind = 0;
    uint32_t a = 0;
    uint32_t b = 0;
};

// Binary min-heap on (time, order). Written out by hand so the sift loops
// move a "hole" instead of swapping; pop dominates large simulations.
class EventQueue {
public:
    bool empty() const { return heap_.empty(); }
    size_t size() const { return heap_.size(); }
    const Event& top() const { return heap_.front(); }
    void reserve(size_t n) { heap_.reserve(n); }

    // Assigns the insertion sequence number; returns it.
    uint64_t push(Time time, uint32_t kind, uint32_t a, uint32_t b) {
        Event e{time, nextOrder_++, kind, a, b};
        heap_.push_back(e);
        size_t i = heap_.size() - 1;
        while (i > 0) {
            const size_t parent = (i - 1) / 2;
            if (!less(e, heap_[parent])) break;
            heap_[i] = heap_[parent];
            i = parent;
        }
        heap_[i] = e;
        return e.order;
    }

    // Bottom-up pop: walk the hole to a leaf comparing only siblings, then
    // sift the former last element up. The last element is usually large, so
    // this needs about half the comparisons of the textbook version.
    Event pop() {
        Event result = heap_.front();
        const Event last = heap_.back();
        heap_.pop_back();
        const size_t n = heap_.size();
        if (n == 0) return result;
        size_t i = 0;
        for (;;) {
            size_t child = 2 * i + 1;
            if (child + 1 < n) {
                child += static_cast<size_t>(less(heap_[child + 1], heap_[child]));
            } else if (child >= n) {
                break;
            }
            heap_[i] = heap_[child];
            i = child;
        }
        while (i > 0) {
            const size_t parent = (i - 1) / 2;
            if (!less(last, heap_[parent])) break;
            heap_[i] = heap_[parent];
            i = parent;
        }
        heap_[i] = last;
        return result;
    }

private:
    static bool less(const Event& x, const Event& y) {
        // Non-short-circuit form lets the compiler avoid unpredictable branches.
        return (x.time < y.time) | ((x.time == y.time) & (x.order < y.order));
    }

    std::vector<Event> heap_;
    uint64_t nextOrder_ = 0;
};

}  // namespace homa::sim
