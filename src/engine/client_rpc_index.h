// RPCs by their client's id: a direct-mapped table with a hash map for overflow.
//
// A client numbers its RPCs itself, 2 apart and in order, and most of them live for a few
// round trips: the RPCs in flight are a window of recent ids. Each id has one slot of the
// table, (id / 2) modulo its size, which every packet of the RPC finds with one load. An
// RPC whose slot is taken (one id the table's size further on is still in flight) makes
// the table double, up to its largest size, and after that goes to the overflow map. A
// lookup checks the slot and, only while the overflow holds anything, the map.
//
// Used for a client's own RPCs (the engine's, and the runtime's calls in flight) and, one
// per peer, for the RPCs a server runs for that peer (ids from one client endpoint).
#pragma once

#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace homa::engine {

/// The largest table for a client's own calls: they may be tens of thousands at once (all
/// but maxClientRpcsPerServer of them per server waiting for their turn), and with the
/// table at 4,096 slots most lookups then went to the overflow map, which cost the whole
/// loop 40 % of its rate with 100,000 calls at once. The table grows only as far as the
/// calls in flight need (16 bytes a slot).
inline constexpr size_t kOwnCallsMaxSlots = size_t{1} << 20;

template <class T>
class ClientRpcIndex {
  public:
    /// The table starts with `slots` slots and grows to at most `maxSlots` (both rounded
    /// up to a power of two).
    explicit ClientRpcIndex(size_t slots = 4096, size_t maxSlots = 0) {
        const size_t n = roundUp(slots);
        maxSlots_ = std::max(n, roundUp(maxSlots));
        mask_ = n - 1;
        table_.resize(n);
    }

    /// Adds `value` under `id`, which must not be present already.
    void insert(uint64_t id, T* value) {
        Slot* s = &table_[index(id)];
        while (s->value != nullptr && table_.size() < maxSlots_) {
            grow();
            s = &table_[index(id)];
        }
        if (s->value == nullptr) {
            *s = {id, value};
        } else {
            overflow_.emplace(id, value);
        }
        ++size_;
    }

    T* find(uint64_t id) const {
        const Slot& s = table_[index(id)];
        if (s.value != nullptr && s.id == id) return s.value;
        if (overflow_.empty()) return nullptr;
        auto it = overflow_.find(id);
        return it == overflow_.end() ? nullptr : it->second;
    }

    /// Removes `id`; returns whether it was present.
    bool erase(uint64_t id) {
        Slot& s = table_[index(id)];
        if (s.value != nullptr && s.id == id) {
            s = {};
            --size_;
            return true;
        }
        if (overflow_.erase(id) == 0) return false;
        --size_;
        return true;
    }

    size_t size() const { return size_; }
    size_t overflowSize() const { return overflow_.size(); }
    size_t slots() const { return table_.size(); }

  private:
    struct Slot {
        uint64_t id = 0;
        T* value = nullptr;
    };
    static size_t roundUp(size_t slots) {
        size_t n = 1;
        while (n < slots) n *= 2;
        return n;
    }
    size_t index(uint64_t id) const { return static_cast<size_t>(id >> 1) & mask_; }
    /// Doubles the table. (The overflow is empty: only a table at its largest fills it.)
    void grow() {
        std::vector<Slot> old(table_.size() * 2);
        old.swap(table_);
        mask_ = table_.size() - 1;
        for (const Slot& s : old)
            if (s.value != nullptr) table_[index(s.id)] = s;  // (no two collide: the mask grew)
    }
    // (A vector, not new[]: homa-sim hands out array allocations of 16 KB and more from
    // one shared block, as message payload that nobody reads.)
    std::vector<Slot> table_;
    size_t mask_ = 0;
    size_t maxSlots_ = 0;
    size_t size_ = 0;
    absl::flat_hash_map<uint64_t, T*> overflow_;
};

}  // namespace homa::engine
