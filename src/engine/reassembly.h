// Reassembly of a message from DATA packets that may arrive out of order, twice, or
// overlapping: the received bytes are everything below `highest` except the gaps.
#pragma once

#include <absl/container/inlined_vector.h>

#include <algorithm>
#include <cstdint>

namespace homa::engine {

class GapList {
  public:
    struct Range {
        uint32_t start;
        uint32_t end;  // exclusive
    };

    /// Records [offset, offset + length) as received. Calls `fresh(start, end)` for each
    /// sub-range not received before (so only new bytes are copied) and returns how many
    /// bytes were new. The caller guarantees offset + length does not overflow.
    template <typename F>
    uint32_t add(uint32_t offset, uint32_t length, F&& fresh) {
        const uint32_t end = offset + length;
        uint32_t added = 0;
        if (end > highest_) {
            uint32_t from = std::max(offset, highest_);
            if (offset > highest_) gaps_.push_back({highest_, offset});
            fresh(from, end);
            added += end - from;
            highest_ = end;
        }
        // The part below the old highest byte can only fill gaps: from the first gap that
        // ends above `offset` (found by bisection: a message may have many gaps).
        uint32_t lowEnd = std::min(end, highest_);
        for (size_t i = firstGapEndingAbove(offset); i < gaps_.size() && offset < lowEnd;) {
            Range& g = gaps_[i];
            if (g.end <= offset) { ++i; continue; }
            if (g.start >= lowEnd) break;
            uint32_t s = std::max(g.start, offset);
            uint32_t e = std::min(g.end, lowEnd);
            if (s >= e) { ++i; continue; }
            fresh(s, e);
            added += e - s;
            if (s == g.start && e == g.end) {
                gaps_.erase(gaps_.begin() + static_cast<ptrdiff_t>(i));
            } else if (s == g.start) {
                g.start = e;
                ++i;
            } else if (e == g.end) {
                g.end = s;
                ++i;
            } else {
                Range tail{e, g.end};
                g.end = s;
                gaps_.insert(gaps_.begin() + static_cast<ptrdiff_t>(i) + 1, tail);
                i += 2;
            }
        }
        return added;
    }

    /// Whether adding [offset, offset + length) would make one more gap: data past a
    /// hole beyond the highest byte, or strictly inside a gap (splitting it).
    bool wouldAddGap(uint32_t offset, uint32_t length) const {
        if (offset > highest_) return true;
        const size_t i = firstGapEndingAbove(offset);
        return i < gaps_.size() && gaps_[i].start < offset && offset + length < gaps_[i].end;
    }

    uint32_t highest() const { return highest_; }
    const absl::InlinedVector<Range, 4>& gaps() const { return gaps_; }
    void reset() {
        gaps_.clear();
        highest_ = 0;
    }

  private:
    size_t firstGapEndingAbove(uint32_t offset) const {
        return static_cast<size_t>(
            std::partition_point(gaps_.begin(), gaps_.end(), [&](const Range& g) { return g.end <= offset; }) -
            gaps_.begin());
    }

    absl::InlinedVector<Range, 4> gaps_;  // sorted, disjoint, all below highest_
    uint32_t highest_ = 0;
};

}  // namespace homa::engine
