#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "sim/network.h"

namespace homa::sim::testing {

struct Received {
    Time time;
    HostId src;
    uint8_t priority;
    uint64_t seq;
    std::vector<uint8_t> bytes;
};

// Records everything it is given; optional hooks let a test react in place.
class RecordingHost : public Host {
public:
    void onPacket(const Packet& p, Time now) override {
        packets.push_back(Received{now, p.src, p.priority, p.seq, p.bytes});
        if (packetHook) packetHook(p, now);
    }
    void onWakeup(Time now) override {
        wakeups.push_back(now);
        if (wakeHook) wakeHook(now);
    }

    std::vector<Received> packets;
    std::vector<Time> wakeups;
    std::function<void(const Packet&, Time)> packetHook;
    std::function<void(Time)> wakeHook;
};

// Payload whose first 4 bytes carry a tag, so tests can check ordering.
inline std::vector<uint8_t> tagged(uint32_t tag, size_t size) {
    std::vector<uint8_t> b(size < 4 ? 4 : size, 0xab);
    for (int i = 0; i < 4; ++i) b[i] = static_cast<uint8_t>(tag >> (8 * i));
    return b;
}

inline uint32_t tagOf(const std::vector<uint8_t>& b) {
    uint32_t t = 0;
    for (int i = 0; i < 4; ++i) t |= static_cast<uint32_t>(b[i]) << (8 * i);
    return t;
}

// Randomised tests use this: HOMA_SIM_SEED overrides the default so a
// failing run can be reproduced from the printed value.
inline uint64_t testSeed(uint64_t fallback) {
    uint64_t seed = fallback;
    if (const char* env = std::getenv("HOMA_SIM_SEED")) seed = std::strtoull(env, nullptr, 0);
    std::cout << "[ seed     ] HOMA_SIM_SEED=" << seed << std::endl;
    return seed;
}

inline bool conserved(const Stats& s) {
    return s.sent + s.duplicated == s.delivered + s.lost + s.partitionDropped + s.crashDropped +
                                         s.queueDropped + s.noHostDropped;
}

}  // namespace homa::sim::testing
