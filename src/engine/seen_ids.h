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
// about such an id (a RESEND: it is still waiting) did not get its answer, so the server
// ran it only if it ran it and then dropped the RPC without the client's ack (a timeout,
// NEED_ACK given up, the application dropping the request). Those few ids are kept
// exactly (`discarded`); everything else below the window and above `floor` was never run
// here (lost, or refused under overload). Such a client gets a permit: the next copy of
// the request it sends again (a DATA packet flagged as restarted) before the permit
// expires (Engine::permitTicks) is admitted once. Below `floor` (ids before this set began, and ids whose discard record
// had to make room) nothing is known and everything counts as run. The ids of the last
// requests that ran below the window (readmitted ones, and ones that outlived the window)
// are kept too (`ranBelow`): a RESEND for one that arrives late, after the ack, must not
// win it a second permit.
//
// Bounds per client: the bitmap (window / 8 bytes), and at most kMaxPermits permits,
// kMaxDiscarded discard records and kRanBelow recent ids (about 8 KB in all).
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
    /// forgotten); below it, whether it is below the floor or recorded as run (discarded,
    /// or run below the window).
    bool mayHaveRun(uint64_t id) const {
        uint64_t i = id >> 1;
        if (!initialised_) return false;
        if (i < base_)
            return i < floor_ || std::binary_search(discarded_.begin(), discarded_.end(), i) ||
                   std::find(ranBelow_.begin(), ranBelow_.end(), i) != ranBelow_.end();
        // (Inside the window the bits are exact: the floor, which a full discard record
        // may raise into it, only speaks for ids below.)
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

    /// Records that `id`'s request ran and its RPC was dropped without the client's ack:
    /// the client may still ask about it, and must then be told the id was used. At most
    /// `kMaxDiscarded` are kept; making room raises the floor past the oldest.
    void discarded(uint64_t id) {
        uint64_t i = id >> 1;
        if (!initialised_ || i < floor_) return;
        auto at = std::lower_bound(discarded_.begin(), discarded_.end(), i);
        if (at != discarded_.end() && *at == i) return;
        discarded_.insert(at, i);
        if (discarded_.size() > kMaxDiscarded) {
            floor_ = discarded_.front() + 1;
            discarded_.erase(discarded_.begin());
        }
    }

    /// Records that `id`'s request ran and its RPC ended while the id was below the window
    /// (acked, or given up): kept among the last kRanBelow such ids, oldest forgotten.
    void ranBelowWindow(uint64_t id) {
        if (!belowWindow(id)) return;
        if (ranBelow_.size() < kRanBelow) {
            ranBelow_.push_back(id >> 1);
        } else {
            ranBelow_[ranBelowNext_] = id >> 1;
            ranBelowNext_ = (ranBelowNext_ + 1) % kRanBelow;
        }
    }

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

    static constexpr size_t kMaxDiscarded = 256;
    static constexpr size_t kMaxPermits = 256;
    static constexpr size_t kRanBelow = 256;

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
        floor_ = base_;
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
    uint64_t floor_ = 0;                         // ids (>> 1) below: may have run
    std::vector<uint64_t> discarded_;            // ids (>> 1) run, then dropped unacked; sorted
    std::vector<uint64_t> ranBelow_;             // ids (>> 1) run below the window; a ring
    size_t ranBelowNext_ = 0;
    std::vector<std::pair<uint64_t, uint64_t>> permits_;  // id, last tick it is valid
    uint64_t highest_ = 0;
    bool initialised_ = false;
};

}  // namespace homa::engine
