// The client RPC ids a server has ever created state for, per client endpoint. This is
// what makes execution at-most-once: a request packet for an id in this set that no
// longer has an RPC (finished, acknowledged and freed; or abandoned) is dropped, however
// late it arrives, instead of starting the RPC again. A request given up while it was
// still arriving (never executed) is forgotten, so that the client's retry is served.
//
// Client ids grow by 2 from a per-endpoint start, so the set is a sliding bitmap over
// the last `window` ids plus the rule that every id below the window counts as seen.
// A client restarted with a start id from a clock lands above the window and slides it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace homa::engine {

class SeenIds {
  public:
    explicit SeenIds(uint32_t window) : bits_((std::max<uint32_t>(window, 64) + 63) / 64, 0) {}

    /// Whether `id` (an even client id) was seen.
    bool contains(uint64_t id) const {
        uint64_t i = id >> 1;
        if (!initialised_) return false;
        if (i < base_) return true;
        if (i >= base_ + capacity()) return false;
        return (bits_[(i % capacity()) / 64] >> (i % 64)) & 1;
    }

    /// Marks `id` as seen.
    void insert(uint64_t id) {
        uint64_t i = id >> 1;
        highest_ = std::max(highest_, id);
        if (!initialised_) {
            // Leave room below the first id for concurrent RPCs that arrive out of order.
            base_ = i > capacity() / 2 ? i - capacity() / 2 : 0;
            initialised_ = true;
        }
        if (i < base_) return;
        if (i >= base_ + capacity()) slide(i - capacity() + 1);
        bits_[(i % capacity()) / 64] |= uint64_t{1} << (i % 64);
    }

    /// Unmarks `id` (a request given up before it was executed may come again). Ids
    /// below the window stay seen.
    void forget(uint64_t id) {
        uint64_t i = id >> 1;
        if (!initialised_ || i < base_ || i >= base_ + capacity()) return;
        bits_[(i % capacity()) / 64] &= ~(uint64_t{1} << (i % 64));
        if (id != highest_) return;
        // highest() must not name an id that was never executed (an evicted peer leaves
        // it behind as served): the next id down still seen, or the top of the ids below
        // the window (which all count as seen), or none.
        highest_ = base_ > 0 ? (base_ - 1) << 1 : 0;
        for (uint64_t j = i; j-- > base_;)
            if ((bits_[(j % capacity()) / 64] >> (j % 64)) & 1) {
                highest_ = j << 1;
                break;
            }
    }

    uint64_t capacity() const { return bits_.size() * 64; }

    /// The highest id seen and not forgotten (0 if none): what must stay seen when this
    /// set is dropped (see Engine::evictPeer).
    uint64_t highest() const { return highest_; }

    /// Marks every id up to and including `id` as seen (a set made anew for a peer that
    /// was forgotten: its old ids must not run again). Only on a fresh set.
    void seenUpTo(uint64_t id) {
        if (initialised_) return;
        base_ = (id >> 1) + 1;
        highest_ = id;
        initialised_ = true;
    }

  private:
    void slide(uint64_t newBase) {
        if (newBase - base_ >= capacity()) {
            std::fill(bits_.begin(), bits_.end(), 0);
        } else {
            for (uint64_t i = base_; i < newBase; ++i)
                bits_[(i % capacity()) / 64] &= ~(uint64_t{1} << (i % 64));
        }
        base_ = newBase;
    }

    std::vector<uint64_t> bits_;
    uint64_t base_ = 0;
    uint64_t highest_ = 0;
    bool initialised_ = false;
};

}  // namespace homa::engine
