// Adaptive polling: whether a thread about to sleep for packets first spins on the socket.
//
// A sleeping thread costs whoever sends to it a wake-up (an inter-processor interrupt,
// several microseconds on many machines and more in virtual machines) and costs itself
// the switch back in: on a loopback round trip of ~20 us that is about half. A thread
// whose waits are short (its peers answer within a few microseconds: a closed loop, a
// ping-pong) therefore spins first, for at most the budget; one whose last wait was long
// (an idle or lightly used endpoint) sleeps at once, so the spinning costs CPU only while
// it is likely to pay. Every wait is measured, the ones that slept too; one ended by
// anything but packets (a timer, a poke) makes the next one sleep at once.
#pragma once

#include <cstdint>
#include <limits>

namespace homa::runtime {

class AdaptivePoll {
  public:
    static constexpr int64_t kLong = std::numeric_limits<int64_t>::max();

    /// How long to spin before sleeping, given the budget (0: off) and how long the
    /// thread's last wait lasted: the budget if that wait was at most twice the budget
    /// (a wait that slept includes the wake-up's latency), else 0.
    static int64_t spinFor(int64_t budgetNs, int64_t lastWaitNs) {
        return budgetNs > 0 && lastWaitNs <= 2 * budgetNs ? budgetNs : 0;
    }
    /// What the thread remembers of a wait that lasted `ns`: its length if packets ended
    /// it, otherwise kLong (a timer, a poke, or a spin that found nothing).
    static int64_t remember(int64_t ns, bool packetsArrived) { return packetsArrived ? ns : kLong; }
};

}  // namespace homa::runtime
