// Guesses the loop makes about the socket, and how it stops making them when they miss.
//
// MissBackoff: whether to try something that pays only when it finds packets (reading
// the socket before waiting on it; spinning on it before sleeping). After a try that
// finds nothing, the next 1, 2, 4 ... 64 chances are let go; a try that finds packets
// starts the count again.
//
// AdaptivePoll: whether a thread about to sleep for packets first spins on the socket.
// A sleeping thread costs whoever sends to it a wake-up (an inter-processor interrupt,
// several microseconds on many machines and more in virtual machines) and costs itself
// the switch back in: on a loopback round trip of ~20 us that is about half. A thread
// whose waits are short (its peers answer within a few microseconds: a closed loop, a
// ping-pong) therefore spins first, for at most the budget; one whose last wait was long
// (an idle or lightly used endpoint) sleeps at once. Every wait is measured, the ones that
// slept too; one ended by anything but packets (a timer, a poke) counts as long. Short
// waits do not always come in runs (with arrivals at random, as in an open loop, a short
// wait says little about the next), so spins that run out of budget back off as above.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace homa::runtime {

class MissBackoff {
  public:
    static constexpr uint32_t kMaxSkip = 64;

    /// Whether to try this time (a chance let go after a miss counts down).
    bool tryNow() {
        if (skip_ == 0) return true;
        --skip_;
        return false;
    }
    /// The outcome of a try.
    void tried(bool found) {
        if (found) {
            backoff_ = 1;
        } else {
            skip_ = backoff_;
            backoff_ = std::min(2 * backoff_, kMaxSkip);
        }
    }

  private:
    uint32_t skip_ = 0;
    uint32_t backoff_ = 1;
};

class AdaptivePoll {
  public:
    static constexpr int64_t kLong = std::numeric_limits<int64_t>::max();
    static constexpr uint32_t kMaxSkip = MissBackoff::kMaxSkip;

    /// How long to spin before this wait sleeps, given the budget (0: off): the budget if
    /// the last wait was at most twice it (a wait that slept includes the wake-up's
    /// latency) and no miss is being sat out, else 0.
    int64_t spinFor(int64_t budgetNs) {
        if (budgetNs <= 0 || lastWaitNs_ > 2 * budgetNs) return 0;
        return misses_.tryNow() ? budgetNs : 0;
    }
    /// The outcome of a spin: found packets, or ran out of budget.
    void spun(bool found) { misses_.tried(found); }
    /// A wait that lasted `ns` ended, with packets or not.
    void waited(int64_t ns, bool packetsArrived) { lastWaitNs_ = packetsArrived ? ns : kLong; }

  private:
    int64_t lastWaitNs_ = kLong;
    MissBackoff misses_;
};

}  // namespace homa::runtime
