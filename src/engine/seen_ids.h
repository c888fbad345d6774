// The client RPC ids a server has ever created state for, per client endpoint. This is
// what makes execution at-most-once: a request packet for an id in this set that no
// longer has an RPC (finished, acknowledged and freed; or abandoned) is dropped, however
// late it arrives, instead of starting the RPC again. A request given up while it was
// still arriving (never executed) is forgotten, so that the client's retry is served.
//
// Client ids grow by 2 from a per-endpoint start, so the set is a sliding bitmap over
// the last `window` ids plus the rule that every id below the window counts as seen.
// A client restarted with a start id from a clock lands above the window and slides it.
//
// Below the window a new request is never admitted on its own. But a client that asks
// about such an id (a RESEND: it is still waiting) may have lost its request (or had it
// refused under overload), which then never ran here. So the ids that slide out of the
// window without having been seen, and ids below it given up before they ran, are kept
// (`unseen`, as ranges: a client's ids to other servers make long runs of them); every
// other id below the window, and every id below `floor` (those before this set began),
// counts as possibly run. A client asking about an unseen id gets a permit: the next
// copy of the request it sends again (a DATA packet flagged as restarted) before the
// permit expires (Engine::permitTicks) is admitted once, and the id is seen from then
// on. The record is bounded: when it is full, the oldest ranges go, and their ids count
// as possibly run: a lost request may then end as "id used" (its call fails), but no
// request ever runs twice, however late and reordered its packets and RESENDs arrive.
//
// Bounds per client: the bitmap (window / 8 bytes), at most kMaxPermits permits and
// kMaxUnseenRanges ranges (about 8 KB in all).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
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

    /// Whether the server may have run `id`'s request already, for a client asking about
    /// an id it has no RPC for: inside the window, whether it was seen (and not
    /// forgotten); below it, unless it is recorded as never run (unseen).
    bool mayHaveRun(uint64_t id) const {
        uint64_t i = id >> 1;
        if (!initialised_) return false;
        if (i < base_) return !unseen(i);
        if (i >= base_ + capacity()) return false;
        return (bits_[(i % capacity()) / 64] >> (i % 64)) & 1;
    }

    /// Whether `id` lies more than a window below the floor, i.e. far before anything
    /// this set knows of its client: a client whose ids are behind an earlier process's
    /// at the same address (a paused client asking about an RPC it had, even one whose
    /// peer was evicted, is near the floor, not far below it).
    bool farBelowFloor(uint64_t id) const { return initialised_ && (id >> 1) + capacity() < floor_; }

    /// Whether `id` is below the window (so a new copy of its request is dropped unless
    /// it holds a permit).
    bool belowWindow(uint64_t id) const { return initialised_ && (id >> 1) < base_; }

    /// Lets the next restarted copy of `id`'s request (below the window) in, from tick
    /// `nowTick` until tick `untilTick`. At most `kMaxPermits` are kept: when full,
    /// expired ones make room, or else the one that expires soonest.
    void permit(uint64_t id, uint64_t nowTick, uint64_t untilTick) {
        for (auto& [pid, until] : permits_)
            if (pid == id) {
                until = untilTick;
                return;
            }
        if (permits_.size() >= kMaxPermits) {
            std::erase_if(permits_, [&](const auto& p) { return p.second < nowTick; });
            if (permits_.size() >= kMaxPermits)
                permits_.erase(std::min_element(permits_.begin(), permits_.end(),
                                                [](const auto& x, const auto& y) { return x.second < y.second; }));
        }
        permits_.emplace_back(id, untilTick);
    }

    /// Uses up `id`'s permit, if it holds one that has not expired at tick `nowTick`.
    /// (Permits are given only below the window, which only moves up: a permit's id
    /// stays below it.)
    bool takePermit(uint64_t id, uint64_t nowTick) {
        for (size_t k = 0; k < permits_.size(); ++k)
            if (permits_[k].first == id) {
                const bool valid = permits_[k].second >= nowTick;
                permits_[k] = permits_.back();
                permits_.pop_back();
                return valid;
            }
        return false;
    }
    size_t permits() const { return permits_.size(); }

    static constexpr size_t kMaxPermits = 256;
    static constexpr size_t kMaxUnseenRanges = 256;

    /// Marks `id` as seen.
    void insert(uint64_t id) {
        uint64_t i = id >> 1;
        highest_ = std::max(highest_, id);
        if (!initialised_) {
            // Leave room below the first id for concurrent RPCs that arrive out of order.
            base_ = i > capacity() / 2 ? i - capacity() / 2 : 0;
            floor_ = base_;  // (what came before this set is not known)
            initialised_ = true;
        }
        if (i < base_) {
            removeUnseen(i);  // (a request readmitted below the window: it may run now)
            return;
        }
        if (i >= base_ + capacity()) slide(i - capacity() + 1);
        bits_[(i % capacity()) / 64] |= uint64_t{1} << (i % 64);
    }

    /// Unmarks `id` (a request given up before it was executed may come again): below
    /// the window it is recorded as unseen, so that the client can have a permit.
    void forget(uint64_t id) {
        uint64_t i = id >> 1;
        if (!initialised_ || i >= base_ + capacity()) return;
        if (i < base_) {
            if (i >= floor_) addUnseen(i, i + 1);
            return;
        }
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
        floor_ = base_;
        highest_ = id;
        initialised_ = true;
    }

    /// The ranges of ids (>> 1) below the window recorded as never run (for tests).
    size_t unseenRanges() const { return unseen_.size(); }

  private:
    void slide(uint64_t newBase) {
        // What leaves the window unseen is recorded: the clear bits, and everything above
        // the window that the new base passes over (a jump: a client restarted with ids
        // from its clock, or one busy with other servers).
        const uint64_t top = std::min(newBase, base_ + capacity());
        for (uint64_t i = base_; i < top; ++i)
            if (!((bits_[(i % capacity()) / 64] >> (i % 64)) & 1)) addUnseen(i, i + 1);
        if (newBase > top) addUnseen(top, newBase);
        if (newBase - base_ >= capacity()) {
            std::fill(bits_.begin(), bits_.end(), 0);
        } else {
            for (uint64_t i = base_; i < newBase; ++i)
                bits_[(i % capacity()) / 64] &= ~(uint64_t{1} << (i % 64));
        }
        base_ = newBase;
    }

    /// The unseen range holding index `i`, or end.
    std::vector<std::pair<uint64_t, uint64_t>>::const_iterator findUnseen(uint64_t i) const {
        auto it = std::upper_bound(unseen_.begin(), unseen_.end(), i,
                                   [](uint64_t v, const auto& r) { return v < r.first; });
        if (it == unseen_.begin()) return unseen_.end();
        --it;
        return i < it->second ? it : unseen_.end();
    }
    bool unseen(uint64_t i) const { return findUnseen(i) != unseen_.end(); }

    /// Records [lo, hi) as unseen (disjoint from what is recorded), merging neighbours;
    /// the oldest ranges make room.
    void addUnseen(uint64_t lo, uint64_t hi) {
        // (The usual case: the window slides, and what leaves it joins the newest range.)
        if (!unseen_.empty() && unseen_.back().second == lo) {
            unseen_.back().second = hi;
            return;
        }
        if (unseen_.empty() || unseen_.back().second < lo) {
            unseen_.emplace_back(lo, hi);
            if (unseen_.size() > kMaxUnseenRanges) unseen_.erase(unseen_.begin());
            return;
        }
        auto it = std::upper_bound(unseen_.begin(), unseen_.end(), lo,
                                   [](uint64_t v, const auto& r) { return v < r.first; });
        if (it != unseen_.begin() && std::prev(it)->second >= lo) {
            auto prev = std::prev(it);
            prev->second = std::max(prev->second, hi);
            if (it != unseen_.end() && it->first <= prev->second) {
                prev->second = std::max(prev->second, it->second);
                unseen_.erase(it);
            }
        } else if (it != unseen_.end() && it->first <= hi) {
            it->first = lo;
            it->second = std::max(it->second, hi);
        } else {
            unseen_.insert(it, {lo, hi});
        }
        if (unseen_.size() > kMaxUnseenRanges) unseen_.erase(unseen_.begin());
    }

    /// Takes index `i` out of the unseen record (it may run now).
    void removeUnseen(uint64_t i) {
        auto c = findUnseen(i);
        if (c == unseen_.end()) return;
        auto it = unseen_.begin() + (c - unseen_.cbegin());
        const uint64_t lo = it->first, hi = it->second;
        if (lo == i && hi == i + 1) {
            unseen_.erase(it);
        } else if (lo == i) {
            it->first = i + 1;
        } else if (hi == i + 1) {
            it->second = i;
        } else {
            it->second = i;
            unseen_.insert(it + 1, {i + 1, hi});
            if (unseen_.size() > kMaxUnseenRanges) unseen_.erase(unseen_.begin());
        }
    }

    std::vector<uint64_t> bits_;
    uint64_t base_ = 0;
    uint64_t floor_ = 0;  // ids (>> 1) below: before this set began
    std::vector<std::pair<uint64_t, uint64_t>> unseen_;  // [first, end) of ids (>> 1) below the window never run; sorted
    std::vector<std::pair<uint64_t, uint64_t>> permits_;  // id, last tick it is valid
    uint64_t highest_ = 0;
    bool initialised_ = false;
};

}  // namespace homa::engine
