// Network addresses of Homa endpoints.
//
// Thread safety: Address is a plain value type; distinct objects may be used from any
// threads, and a single object may be read concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace homa {

/// An endpoint address: an IP address (IPv4 is held as an IPv4-mapped IPv6 address,
/// ::ffff:a.b.c.d) and a UDP port. One endpoint owns exactly one port.
struct Address {
    std::array<uint8_t, 16> ip{};
    uint16_t port = 0;

    /// An IPv4 address given in host byte order, e.g. 0x7f000001 for 127.0.0.1.
    static Address ipv4(uint32_t addr, uint16_t port);
    /// Parses "1.2.3.4:80", "[::1]:80" or "host-less" forms "1.2.3.4" / "::1" (port 0).
    /// Returns nothing when the text is not an address.
    static std::optional<Address> parse(std::string_view text);

    bool isIpv4() const;
    /// Host byte order IPv4 address; only meaningful when isIpv4().
    uint32_t ipv4Host() const;
    /// "1.2.3.4:80" or "[::1]:80".
    std::string toString() const;

    friend bool operator==(const Address&, const Address&) = default;
    friend auto operator<=>(const Address&, const Address&) = default;

    template <typename H>
    friend H AbslHashValue(H h, const Address& a) {
        return H::combine(std::move(h), a.ip, a.port);
    }
};

}  // namespace homa
