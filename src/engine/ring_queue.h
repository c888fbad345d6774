// A FIFO queue on a ring buffer that keeps its capacity, so a steady flow through it
// allocates nothing (std::deque allocates and frees blocks as it moves).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace homa::engine {

template <typename T>
class RingQueue {
  public:
    bool empty() const { return size_ == 0; }
    size_t size() const { return size_; }
    void push_back(T value) {
        if (size_ == slots_.size()) grow();
        slots_[(head_ + size_) % slots_.size()] = std::move(value);
        ++size_;
    }
    T& front() { return slots_[head_]; }
    void pop_front() {
        slots_[head_] = T{};
        head_ = (head_ + 1) % slots_.size();
        --size_;
    }

  private:
    void grow() {
        std::vector<T> bigger(slots_.empty() ? 8 : slots_.size() * 2);
        for (size_t i = 0; i < size_; ++i) bigger[i] = std::move(slots_[(head_ + i) % slots_.size()]);
        slots_ = std::move(bigger);
        head_ = 0;
    }
    std::vector<T> slots_;
    size_t head_ = 0;
    size_t size_ = 0;
};

}  // namespace homa::engine
