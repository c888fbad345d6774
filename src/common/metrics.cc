#include "homa/metrics.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cinttypes>
#include <cstdio>

namespace homa {

namespace {
constexpr std::array<std::string_view, 14> kGauges = {
    "buffer_bytes_in_use", "peers",          "rpcs",          "nic_queue_ns",     "pending_requests",
    "incoming_outstanding", "active_grants", "calls_in_flight", "requests_queued", "trace_enabled",
    "tick_timer_armed",    "client_rpcs_waiting", "pacer_allowance_ns", "send_bytes_in_use",
};

// Decimal digits only (no sign, no spaces), the whole string, no overflow.
bool parseUnsigned(std::string_view s, uint64_t& out) {
    if (s.empty() || s.front() < '0' || s.front() > '9') return false;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && end == s.data() + s.size();
}

bool validName(std::string_view n) {
    if (n.empty()) return false;
    for (char c : n)
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
    return true;
}
}  // namespace

bool MetricsSnapshot::isGauge(std::string_view name) {
    return std::find(kGauges.begin(), kGauges.end(), name) != kGauges.end();
}

uint64_t MetricsSnapshot::get(std::string_view name) const {
    for (const auto& [n, v] : counters)
        if (n == name) return v;
    return 0;
}

MetricsSnapshot MetricsSnapshot::operator-(const MetricsSnapshot& earlier) const {
    MetricsSnapshot d;
    d.timeNs = timeNs - earlier.timeNs;
    d.counters.reserve(counters.size());
    for (size_t i = 0; i < counters.size(); ++i) {
        const auto& [n, v] = counters[i];
        if (isGauge(n)) {
            d.counters.emplace_back(n, v);
            continue;
        }
        // Snapshots of one endpoint list counters in the same order: try that first.
        uint64_t before = i < earlier.counters.size() && earlier.counters[i].first == n ? earlier.counters[i].second
                                                                                        : earlier.get(n);
        // A counter that went down started again from zero (a restarted process, or
        // another endpoint's snapshot): what it counted since is its value.
        d.counters.emplace_back(n, v >= before ? v - before : v);
    }
    return d;
}

std::string MetricsSnapshot::toText() const {
    std::string s;
    for (const auto& [n, v] : counters) {
        s += n;
        s += ' ';
        s += std::to_string(v);
        s += '\n';
    }
    return s;
}

std::string MetricsSnapshot::toPrometheus(std::string_view labels) const {
    std::string s;
    std::string lab;
    if (!labels.empty()) {
        lab += '{';
        lab += labels;
        lab += '}';
    }
    for (const auto& [n, v] : counters) {
        bool gauge = isGauge(n);
        std::string name = "homa_" + n + (gauge ? "" : "_total");
        s += "# TYPE " + name + (gauge ? " gauge\n" : " counter\n");
        s += name + lab + " " + std::to_string(v) + "\n";
    }
    return s;
}

std::optional<MetricsSnapshot> MetricsSnapshot::parse(std::string_view text, std::string* error) {
    MetricsSnapshot m;
    size_t lineNo = 0;
    while (!text.empty()) {
        size_t eol = text.find('\n');
        std::string_view line = text.substr(0, eol);
        text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
        ++lineNo;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty()) continue;
        auto fail = [&](const char* why) -> std::optional<MetricsSnapshot> {
            if (error) *error = "line " + std::to_string(lineNo) + ": " + why + ": '" + std::string(line.substr(0, 80)) + "'";
            return std::nullopt;
        };
        if (line[0] == '#') {
            constexpr std::string_view kTime = "# time_ns ";
            if (line.starts_with(kTime)) {
                uint64_t t;
                if (!parseUnsigned(line.substr(kTime.size()), t) || t > INT64_MAX) return fail("bad time");
                m.timeNs = static_cast<int64_t>(t);
            }
            continue;
        }
        size_t sp = line.find(' ');
        if (sp == std::string_view::npos) return fail("expected 'name value'");
        std::string_view name = line.substr(0, sp);
        uint64_t v;
        if (!validName(name)) return fail("bad counter name");
        if (!parseUnsigned(line.substr(sp + 1), v)) return fail("bad value");
        m.counters.emplace_back(std::string(name), v);
    }
    return m;
}

std::string MetricsSnapshot::ratesTable(const MetricsSnapshot& earlier, bool all) const {
    std::string s;
    char line[200];
    double seconds = static_cast<double>(timeNs - earlier.timeNs) / 1e9;
    std::snprintf(line, sizeof(line), "%-32s %16s %14s %14s\n", "name", "value", "change",
                  seconds > 0 ? "per second" : "");
    s += line;
    for (size_t i = 0; i < counters.size(); ++i) {
        const auto& [n, v] = counters[i];
        if (isGauge(n)) {
            if (!all && v == 0) continue;
            std::snprintf(line, sizeof(line), "%-32s %16" PRIu64 " %14s %14s\n", n.c_str(), v, "(level)", "");
            s += line;
            continue;
        }
        uint64_t before = i < earlier.counters.size() && earlier.counters[i].first == n ? earlier.counters[i].second
                                                                                        : earlier.get(n);
        if (v < before) {
            // Started again from zero since the earlier snapshot: no change or rate to
            // speak of (the difference wrapped to 18446744073709551521).
            std::snprintf(line, sizeof(line), "%-32s %16" PRIu64 " %14s %14s\n", n.c_str(), v, "(reset)", "");
            s += line;
            continue;
        }
        uint64_t delta = v - before;
        if (!all && delta == 0) continue;
        char rate[32] = "";
        if (seconds > 0) std::snprintf(rate, sizeof(rate), "%.1f", static_cast<double>(delta) / seconds);
        std::snprintf(line, sizeof(line), "%-32s %16" PRIu64 " %14" PRIu64 " %14s\n", n.c_str(), v, delta, rate);
        s += line;
    }
    return s;
}

std::string formatRpcs(const std::vector<RpcSnapshot>& rpcs) {
    std::string s;
    char line[300];
    std::snprintf(line, sizeof(line), "%-28s %20s %-18s %10s %10s %10s %10s %10s %10s %6s\n", "peer", "id", "state",
                  "out_len", "out_sent", "out_grant", "in_len", "in_recv", "in_grant", "silent");
    s += line;
    for (const RpcSnapshot& r : rpcs) {
        std::snprintf(line, sizeof(line), "%-28s %20" PRIu64 " %-18s %10u %10u %10u %10u %10u %10u %6d%s\n",
                      r.peer.c_str(), r.id, r.state.c_str(), r.outLength, r.outSent, r.outGranted, r.inLength,
                      r.inReceived, r.inGranted, r.silentTicks, r.waitingForBuffer ? " waiting-for-buffer" : "");
        s += line;
    }
    return s;
}

}  // namespace homa
