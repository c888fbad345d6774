#include "homa/address.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>

namespace homa {

namespace {
constexpr std::array<uint8_t, 12> kV4Prefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
}

Address Address::ipv4(uint32_t addr, uint16_t port) {
    Address a;
    std::copy(kV4Prefix.begin(), kV4Prefix.end(), a.ip.begin());
    a.ip[12] = static_cast<uint8_t>(addr >> 24);
    a.ip[13] = static_cast<uint8_t>(addr >> 16);
    a.ip[14] = static_cast<uint8_t>(addr >> 8);
    a.ip[15] = static_cast<uint8_t>(addr);
    a.port = port;
    return a;
}

bool Address::isIpv4() const { return std::equal(kV4Prefix.begin(), kV4Prefix.end(), ip.begin()); }

uint32_t Address::ipv4Host() const {
    return (uint32_t{ip[12]} << 24) | (uint32_t{ip[13]} << 16) | (uint32_t{ip[14]} << 8) | ip[15];
}

std::optional<Address> Address::parse(std::string_view text) {
    std::string host;
    std::string_view portText;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        host = std::string(text.substr(1, close - 1));
        auto rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') return std::nullopt;
            portText = rest.substr(1);
            if (portText.empty()) return std::nullopt;
        }
    } else if (std::count(text.begin(), text.end(), ':') == 1) {
        auto colon = text.find(':');
        host = std::string(text.substr(0, colon));
        portText = text.substr(colon + 1);
        if (portText.empty()) return std::nullopt;
    } else {
        host = std::string(text);
    }
    uint16_t port = 0;
    if (!portText.empty()) {
        unsigned value = 0;
        auto [end, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), value);
        if (ec != std::errc() || end != portText.data() + portText.size() || value > 65535)
            return std::nullopt;
        port = static_cast<uint16_t>(value);
    }
    Address a;
    in_addr v4{};
    in6_addr v6{};
    if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
        return ipv4(ntohl(v4.s_addr), port);
    }
    if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
        std::memcpy(a.ip.data(), &v6, 16);
        a.port = port;
        return a;
    }
    return std::nullopt;
}

std::string Address::toString() const {
    char host[INET6_ADDRSTRLEN] = {};
    char out[INET6_ADDRSTRLEN + 10];
    if (isIpv4()) {
        in_addr v4{};
        v4.s_addr = htonl(ipv4Host());
        inet_ntop(AF_INET, &v4, host, sizeof(host));
        std::snprintf(out, sizeof(out), "%s:%u", host, port);
    } else {
        in6_addr v6{};
        std::memcpy(&v6, ip.data(), 16);
        inet_ntop(AF_INET6, &v6, host, sizeof(host));
        std::snprintf(out, sizeof(out), "[%s]:%u", host, port);
    }
    return out;
}

}  // namespace homa
