// A FIFO queue on a ring buffer that keeps its capacity, so a steady flow through it
// allocates nothing (std::deque allocates and frees blocks as it moves).
#pragma once

#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace homa::engine {

template <typename T>
class RingQueue {
    static_assert(std::is_nothrow_default_constructible_v<T>, "pop_front() rebuilds slots in place");

  public:
    bool empty() const { return size_ == 0; }
    size_t size() const { return size_; }
    void push_back(T value) { emplace_back() = std::move(value); }
    /// Appends an element and returns it, to be filled in place. Every free slot holds
    /// T{}, so the element starts out default-constructed and nothing is moved.
    T& emplace_back() {
        if (size_ == slots_.size()) grow();
        return slots_[(head_ + size_++) & mask_];
    }
    T& front() { return slots_[head_]; }
    void pop_front() {
        // Back to T{} (and its resources freed) by destroying and constructing in place,
        // which is cheaper than assigning a temporary.
        std::destroy_at(&slots_[head_]);
        std::construct_at(&slots_[head_]);
        head_ = (head_ + 1) & mask_;
        --size_;
    }

  private:
    void grow() {
        std::vector<T> bigger(slots_.empty() ? 8 : slots_.size() * 2);
        for (size_t i = 0; i < size_; ++i) bigger[i] = std::move(slots_[(head_ + i) & mask_]);
        slots_ = std::move(bigger);
        mask_ = slots_.size() - 1;
        head_ = 0;
    }
    std::vector<T> slots_;
    // The capacity is a power of two, so an index wraps with a mask, not a division.
    size_t mask_ = 0;
    size_t head_ = 0;
    size_t size_ = 0;
};

}  // namespace homa::engine
