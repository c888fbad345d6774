// Estimate of the NIC's transmit backlog, used by the pacer to keep the NIC queue short
// so that a newly arrived short message is not stuck behind a long queue of data.
#pragma once

#include <algorithm>
#include <cstdint>

#include "engine/time.h"

namespace homa::engine {

class NicQueue {
  public:
    explicit NicQueue(uint32_t linkMbps) : linkMbps_(linkMbps ? linkMbps : 1) {}

    /// Records `wireBytes` handed to the NIC at `now`.
    void sent(Time now, uint32_t wireBytes) {
        // Whole nanoseconds, carrying the remainder: rounding each packet's time down
        // would let the estimate run ahead of the real link, packet after packet.
        uint64_t scaled = uint64_t{wireBytes} * 8000 + remainder_;
        remainder_ = scaled % linkMbps_;
        idleAt_ = std::max(idleAt_, now) + static_cast<Time>(scaled / linkMbps_);
    }
    /// Time until the NIC would drain. A `now` older than the estimator's own idea of
    /// time yields a larger backlog, never an underflowed or empty one: the caller may
    /// read its clock before another thread that already fed the estimator.
    Time backlog(Time now) const { return idleAt_ > now ? idleAt_ - now : 0; }
    Time idleAt() const { return idleAt_; }
    Time transmitTime(uint32_t wireBytes) const {
        return static_cast<Time>(uint64_t{wireBytes} * 8000 / linkMbps_);
    }

  private:
    uint32_t linkMbps_;
    Time idleAt_ = 0;
    uint64_t remainder_ = 0;  ///< bit-times (in 1/linkMbps ns) not yet counted
};

}  // namespace homa::engine
