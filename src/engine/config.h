// The engine's configuration: the protocol options plus what the runtime derives from
// its socket (port, payload size) and its clock (first client id).
#pragma once

#include <cstdint>
#include <string>

#include "engine/time.h"
#include "homa/options.h"

namespace homa::engine {

struct Config : ProtocolOptions {
    /// The longest maxMessageLength allowed: the largest buffer size class that fits in 32
    /// bits (the wire format allows up to 4 GB).
    static constexpr uint32_t kLongestMessage = 7u << 29;
    /// This endpoint's port: the source port of every packet it sends.
    uint16_t port = 0;
    /// Message bytes carried by one DATA packet (MTU minus IP, UDP and Homa headers).
    uint32_t maxPayload = 1500 - 20 - 8 - 56;
    /// Bytes on the wire per packet beyond the Homa packet itself (IP + UDP + Ethernet
    /// header, FCS, preamble, inter-frame gap); used by the NIC-queue estimator.
    uint32_t wireOverheadBytes = 20 + 8 + 14 + 4 + 8 + 12;

    /// First client RPC id (made even). Seed it from a clock that survives restarts, so a
    /// restarted client never reuses ids a server still remembers.
    uint64_t firstClientId = 2;

    /// Empty when the configuration is consistent, otherwise what is wrong.
    std::string validate() const;
    /// Bytes of the receive pool kept for single-packet messages.
    uint64_t smallBufferReserve() const {
        return smallMessageReserve > 0 && smallMessageReserve <= 0.5
                   ? static_cast<uint64_t>(static_cast<double>(maxBufferBytes) * smallMessageReserve)
                   : 0;
    }
};

}  // namespace homa::engine
