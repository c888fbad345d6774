// An in-memory PacketSink for benchmarks: copies each packet into a fixed set of slots
// that are reused from one batch to the next.
//
// The copy is deliberate. A real runtime must copy (or hand to the NIC) the header before
// transmit() returns, because the engine reuses its scratch header, so a zero-copy sink
// would flatter the engine. The slots are allocated once, up front, so the sink itself
// never touches the heap and cannot pollute the allocation counts of the benchmarks.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "engine/engine.h"
#include "homa/address.h"

namespace homa::bench {

class PacketQueue final : public engine::PacketSink {
  public:
    /// Large enough for a full-size DATA packet (56-byte header + 1444 payload bytes).
    static constexpr size_t kMaxPacket = 1600;

    struct Packet {
        Address dest;
        uint8_t priority = 0;
        uint32_t length = 0;
        std::array<uint8_t, kMaxPacket> bytes{};
        std::span<const uint8_t> view() const { return {bytes.data(), length}; }
    };

    explicit PacketQueue(size_t slots) : slots_(slots) {}

    void transmit(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
                  std::span<const uint8_t> payload) override {
        // Dropping (and remembering it) keeps the sink allocation-free; a benchmark that
        // overflows checks overflowed() and reports an error instead of a wrong figure.
        if (count_ == slots_.size() || header.size() + payload.size() > kMaxPacket) {
            ++overflowed_;
            return;
        }
        Packet& p = slots_[count_++];
        p.dest = dest;
        p.priority = priority;
        p.length = static_cast<uint32_t>(header.size() + payload.size());
        std::memcpy(p.bytes.data(), header.data(), header.size());
        if (!payload.empty()) std::memcpy(p.bytes.data() + header.size(), payload.data(), payload.size());
    }

    size_t size() const { return count_; }
    bool empty() const { return count_ == 0; }
    const Packet& operator[](size_t i) const { return slots_[i]; }
    void clear() { count_ = 0; }
    uint64_t overflowed() const { return overflowed_; }

  private:
    std::vector<Packet> slots_;
    size_t count_ = 0;
    uint64_t overflowed_ = 0;
};

}  // namespace homa::bench
