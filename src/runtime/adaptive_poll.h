// Adaptive polling: whether a thread about to sleep for packets first spins on the socket.
//
// A sleeping thread costs whoever sends to it a wake-up (an inter-processor interrupt,
// several microseconds on many machines and more in virtual machines) and costs itself
// the switch back in: on a loopback round trip of ~20 us that is about half. A thread
// whose waits are short (its peers answer within a few microseconds: a closed loop, a
// ping-pong) therefore spins first, for at most the budget; one whose last wait was long
// (an idle or lightly used endpoint) sleeps at once. Every wait is measured, the ones that
// slept too; one ended by anything but packets (a timer, a poke) counts as long.
//
// Short waits do not always come in runs: with arrivals at random (an open loop) a short
// wait says little about the next, and a spin that runs out of budget is CPU spent for
// nothing. So a spin that finds nothing makes the next 1, 2, 4 ... 64 waits that would
// have spun sleep at once instead; a spin that finds packets starts the count again.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace homa::runtime {

class AdaptivePoll {
  public:
    static constexpr int64_t kLong = std::numeric_limits<int64_t>::max();
    static constexpr uint32_t kMaxSkip = 64;

    /// How long to spin before this wait sleeps, given the budget (0: off): the budget if
    /// the last wait was at most twice it (a wait that slept includes the wake-up's
    /// latency) and no miss is being sat out, else 0.
    int64_t spinFor(int64_t budgetNs) {
        if (budgetNs <= 0 || lastWaitNs_ > 2 * budgetNs) return 0;
        if (skip_ > 0) {
            --skip_;
            return 0;
        }
        return budgetNs;
    }
    /// The outcome of a spin: found packets, or ran out of budget.
    void spun(bool found) {
        if (found) {
            backoff_ = 1;
        } else {
            skip_ = backoff_;
            backoff_ = std::min(2 * backoff_, kMaxSkip);
        }
    }
    /// A wait that lasted `ns` ended, with packets or not.
    void waited(int64_t ns, bool packetsArrived) { lastWaitNs_ = packetsArrived ? ns : kLong; }

  private:
    int64_t lastWaitNs_ = kLong;
    uint32_t skip_ = 0;
    uint32_t backoff_ = 1;
};

}  // namespace homa::runtime
