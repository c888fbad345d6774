#pragma once

#include <cstdint>
#include <vector>

namespace homa::sim {

// Virtual time in nanoseconds.
using Time = int64_t;
// Dense host index, 0 .. numHosts-1. Hosts are also the first topology nodes.
using HostId = uint32_t;

inline constexpr uint8_t kNumPriorities = 8;
inline constexpr uint8_t kMaxPriority = kNumPriorities - 1;

// An opaque datagram. `seq` is assigned by the network at send time; a
// duplicate created by fault injection carries the same seq as its original.
struct Packet {
    HostId src = 0;
    HostId dst = 0;
    uint8_t priority = 0;
    std::vector<uint8_t> bytes;
    uint64_t seq = 0;
};

// Implemented by users. Both callbacks may call back into the Network
// (send, wakeAt, at, ...). The packet reference is only valid for the call.
class Host {
public:
    virtual ~Host() = default;
    virtual void onPacket(const Packet& p, Time now) = 0;
    virtual void onWakeup(Time now) = 0;
};

}  // namespace homa::sim
