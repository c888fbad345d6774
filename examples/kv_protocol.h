// The key-value example's message format (all integers big-endian):
//   request:  op (1 byte: 'G' get, 'P' put, 'D' delete), key length (2), key, value (put)
//   response: status (1 byte: 'K' ok, 'N' not found, 'E' bad request), value (get)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kv {

/// The largest value a put carries (kv_client refuses larger ones).
inline constexpr uint32_t kMaxValue = 1u << 20;
/// Values up to 1 MB plus the key and header: both ends raise the message limit to this.
inline constexpr uint32_t kMaxMessage = kMaxValue + 70'000;

inline std::vector<uint8_t> request(char op, std::string_view key, std::string_view value = {}) {
    std::vector<uint8_t> m;
    m.reserve(3 + key.size() + value.size());
    m.push_back(static_cast<uint8_t>(op));
    m.push_back(static_cast<uint8_t>(key.size() >> 8));
    m.push_back(static_cast<uint8_t>(key.size()));
    m.insert(m.end(), key.begin(), key.end());
    m.insert(m.end(), value.begin(), value.end());
    return m;
}

struct Parsed {
    char op = 0;
    std::string_view key, value;
    bool ok = false;
};

inline Parsed parse(std::string_view m) {
    Parsed p;
    if (m.size() < 3) return p;
    p.op = m[0];
    size_t klen = (static_cast<uint8_t>(m[1]) << 8) | static_cast<uint8_t>(m[2]);
    if (klen == 0 || 3 + klen > m.size()) return p;
    p.key = m.substr(3, klen);
    p.value = m.substr(3 + klen);
    p.ok = p.op == 'G' || p.op == 'P' || p.op == 'D';
    return p;
}

}  // namespace kv
