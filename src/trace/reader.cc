#include "trace/reader.h"

#include "common/read_file.h"

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <queue>
#include <sstream>
#include <unordered_map>

namespace homa::trace {

namespace {
// Largest base and event time taken (about 36 years in nanoseconds): a base plus an event
// time (at most 2^61), and the difference of two such sums (at most 2^62), stay inside an
// int64_t.
constexpr int64_t kMaxTraceNs = int64_t{1} << 60;
// Largest clock offset applied to a trace: its events (within 2^61 of zero) then stay
// within 3 * 2^60 of zero, and the difference of any two within an int64_t.
constexpr int64_t kMaxOffsetNs = int64_t{1} << 60;
}  // namespace

namespace {

bool parseInt(std::string_view s, int64_t& out) {
    if (s.empty()) return false;
    std::string tmp(s);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(tmp.c_str(), &end, 10);
    if (errno != 0 || end != tmp.c_str() + tmp.size()) return false;
    out = v;
    return true;
}

// The next whitespace-separated word of `s` from `pos`.
std::string_view word(std::string_view s, size_t& pos) {
    while (pos < s.size() && s[pos] == ' ') ++pos;
    size_t start = pos;
    while (pos < s.size() && s[pos] != ' ') ++pos;
    return s.substr(start, pos - start);
}

// Decimal digits only (no sign, no spaces), the whole string, no overflow.
bool parseUnsigned(std::string_view s, uint64_t& out) {
    if (s.empty() || s.front() < '0' || s.front() > '9') return false;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && end == s.data() + s.size();
}

}  // namespace

bool parseTrace(std::istream& in, TraceFile& out, std::string* error) {
    auto fail = [&](size_t lineNo, const std::string& why) {
        if (error) *error = "line " + std::to_string(lineNo) + ": " + why;
        return false;
    };
    out.events.clear();
    std::string line;
    size_t lineNo = 0;
    bool sawMagic = false, sawBase = false;
    while (std::getline(in, line)) {
        ++lineNo;
        if (line.empty()) continue;
        if (line[0] == '#') {
            std::string_view v(line);
            v.remove_prefix(1);
            size_t pos = 0;
            std::string_view key = word(v, pos);
            while (pos < v.size() && v[pos] == ' ') ++pos;
            std::string_view rest = v.substr(pos);
            if (key == "homa-trace") {
                if (rest != "1") return fail(lineNo, "unsupported trace version '" + std::string(rest) + "'");
                sawMagic = true;
            } else if (key == "process") {
                out.label = std::string(rest);
            } else if (key == "base_ns") {
                // (Bounded, as event times are: their sums must fit in an int64_t.)
                if (!parseInt(rest, out.baseNs) || out.baseNs > kMaxTraceNs || out.baseNs < -kMaxTraceNs)
                    return fail(lineNo, "bad base_ns");
                sawBase = true;
            }
            continue;
        }
        if (!sawMagic) return fail(lineNo, "not a homa time trace (no '# homa-trace 1' header)");
        // "%12.3f us (+%9.3f us) [tNN] message"
        const char* s = line.c_str();
        char* end = nullptr;
        double us = std::strtod(s, &end);
        if (end == s || !std::isfinite(us) || std::fabs(us) * 1000.0 > static_cast<double>(kMaxTraceNs))
            return fail(lineNo, "expected a time");
        std::string_view rest(end);
        size_t bracket = rest.find("[t");
        size_t close = bracket == std::string_view::npos ? bracket : rest.find(']', bracket);
        if (rest.substr(0, 3) != " us" || close == std::string_view::npos)
            return fail(lineNo, "expected 'us (+delta us) [tNN] message'");
        uint64_t thread = 0;
        if (!parseUnsigned(rest.substr(bracket + 2, close - bracket - 2), thread) || thread > UINT32_MAX)
            return fail(lineNo, "bad thread number");
        Event e;
        e.ns = static_cast<int64_t>(std::llround(us * 1000.0));
        e.thread = static_cast<uint32_t>(thread);
        std::string_view msg = rest.substr(close + 1);
        if (!msg.empty() && msg[0] == ' ') msg.remove_prefix(1);
        e.text = std::string(msg);
        out.events.push_back(std::move(e));
    }
    if (!sawMagic) return fail(lineNo, "not a homa time trace (no '# homa-trace 1' header)");
    if (!sawBase) return fail(lineNo, "no '# base_ns' header");
    for (Event& e : out.events) e.ns += out.baseNs;
    std::stable_sort(out.events.begin(), out.events.end(), [](const Event& a, const Event& b) { return a.ns < b.ns; });
    return true;
}

bool readTraceFile(const std::string& path, TraceFile& out, std::string* error) {
    // (A trace is read line by line: /dev/zero, say, would be one endless line.)
    if (!isRegularFile(path, error)) return false;
    std::ifstream f(path);
    if (!f) {
        if (error) *error = "cannot open " + path;
        return false;
    }
    std::string why;
    if (!parseTrace(f, out, &why)) {
        if (error) *error = path + ": " + why;
        return false;
    }
    if (out.label.empty()) out.label = path;
    return true;
}

std::optional<PacketEvent> parsePacketEvent(std::string_view text) {
    size_t pos = 0;
    std::string_view dir = word(text, pos);
    if (dir != "send" && dir != "recv") return std::nullopt;
    PacketEvent p;
    p.send = dir == "send";
    p.type = std::string(word(text, pos));
    if (p.type.empty() || word(text, pos) != "id" || !parseUnsigned(word(text, pos), p.id)) return std::nullopt;
    size_t save = pos;
    if (word(text, pos) == "offset") {
        if (!parseUnsigned(word(text, pos), p.offset)) return std::nullopt;
    } else {
        pos = save;
    }
    return p;
}

std::optional<uint64_t> eventRpcId(std::string_view text) {
    size_t pos = 0;
    bool prevId = false;
    while (pos < text.size()) {
        std::string_view w = word(text, pos);
        if (w.empty()) break;
        uint64_t v;
        if (prevId && parseUnsigned(w, v)) return v & ~uint64_t{1};
        prevId = w == "id";
    }
    return std::nullopt;
}

Alignment alignClocks(const std::vector<TraceFile>& traces) {
    const size_t n = traces.size();
    Alignment a;
    a.offsetNs.assign(n, 0);
    a.notes.assign(n, "");
    if (n == 0) return a;
    a.notes[0] = "reference clock";

    // Each packet (type, id, offset) seen exactly once as sent and once as received;
    // retransmitted or repeated packets are ambiguous and left out.
    struct Sighting {
        int sends = 0, recvs = 0;
        int sendTrace = -1, recvTrace = -1;
        int64_t sendNs = 0, recvNs = 0;
    };
    std::map<std::tuple<std::string, uint64_t, uint64_t>, Sighting> packets;
    for (size_t t = 0; t < n; ++t) {
        for (const Event& e : traces[t].events) {
            auto p = parsePacketEvent(e.text);
            if (!p) continue;
            Sighting& s = packets[{p->type, p->id, p->offset}];
            if (p->send) {
                ++s.sends;
                s.sendTrace = static_cast<int>(t);
                s.sendNs = e.ns;
            } else {
                ++s.recvs;
                s.recvTrace = static_cast<int>(t);
                s.recvNs = e.ns;
            }
        }
    }
    // minDelay[i][j]: the smallest (receive in j) - (send in i), on the two raw clocks.
    std::vector<std::vector<std::optional<int64_t>>> minDelay(n, std::vector<std::optional<int64_t>>(n));
    std::vector<std::vector<size_t>> count(n, std::vector<size_t>(n, 0));
    for (const auto& [key, s] : packets) {
        if (s.sends != 1 || s.recvs != 1 || s.sendTrace == s.recvTrace) continue;
        auto& m = minDelay[static_cast<size_t>(s.sendTrace)][static_cast<size_t>(s.recvTrace)];
        int64_t d = s.recvNs - s.sendNs;
        if (!m || d < *m) m = d;
        ++count[static_cast<size_t>(s.sendTrace)][static_cast<size_t>(s.recvTrace)];
    }
    // Breadth-first from trace 0 over pairs that exchanged packets.
    std::vector<bool> done(n, false), tooFar(n, false);
    done[0] = true;
    std::queue<size_t> todo;
    todo.push(0);
    while (!todo.empty()) {
        size_t i = todo.front();
        todo.pop();
        for (size_t j = 0; j < n; ++j) {
            if (done[j] || (!minDelay[i][j] && !minDelay[j][i])) continue;
            // clock_j - clock_i = c.  i->j: min = dmin + c;  j->i: min = dmin - c.
            // (Worked in 128 bits: each delay may be near 2^62, and offsets add up along
            // the chain of traces.)
            __int128 c;
            char note[200];
            if (minDelay[i][j] && minDelay[j][i]) {
                c = (static_cast<__int128>(*minDelay[i][j]) - *minDelay[j][i]) / 2;
                std::snprintf(note, sizeof(note),
                              "from %zu+%zu packets exchanged with %s; fastest one-way %.3f us",
                              count[i][j], count[j][i], traces[i].label.c_str(),
                              static_cast<double>(*minDelay[i][j] - c) / 1000.0);
            } else if (minDelay[i][j]) {
                c = *minDelay[i][j];
                std::snprintf(note, sizeof(note), "from %zu packets received from %s only (assumes 0 delay)",
                              count[i][j], traces[i].label.c_str());
            } else {
                c = -*minDelay[j][i];
                std::snprintf(note, sizeof(note), "from %zu packets sent to %s only (assumes 0 delay)",
                              count[j][i], traces[i].label.c_str());
            }
            const __int128 offset = a.offsetNs[i] - c;
            if (offset > kMaxOffsetNs || offset < -kMaxOffsetNs) {
                tooFar[j] = true;  // (perhaps aligned through another trace)
                continue;
            }
            a.offsetNs[j] = static_cast<int64_t>(offset);
            a.notes[j] = note;
            done[j] = true;
            todo.push(j);
        }
    }
    for (size_t j = 1; j < n; ++j)
        if (!done[j])
            a.notes[j] = tooFar[j] ? "clock more than 2^60 ns from the reference's: taken as is"
                                   : "no packets in common: clock taken as is";
    return a;
}

std::vector<Event> mergeTraces(const std::vector<TraceFile>& traces, const std::vector<int64_t>& offsetNs) {
    std::vector<Event> all;
    for (size_t t = 0; t < traces.size(); ++t) {
        int64_t off = t < offsetNs.size() ? offsetNs[t] : 0;
        for (const Event& e : traces[t].events) {
            Event c = e;
            c.ns += off;
            c.trace = static_cast<int>(t);
            all.push_back(std::move(c));
        }
    }
    std::stable_sort(all.begin(), all.end(), [](const Event& a, const Event& b) { return a.ns < b.ns; });
    return all;
}

std::string formatTimeline(const std::vector<Event>& events, const std::vector<TraceFile>& traces) {
    std::string s;
    if (events.empty()) return s;
    int64_t base = events.front().ns, prev = base;
    char line[256];
    for (const Event& e : events) {
        const std::string& label =
            e.trace >= 0 && static_cast<size_t>(e.trace) < traces.size() ? traces[static_cast<size_t>(e.trace)].label : "?";
        std::snprintf(line, sizeof(line), "%12.3f us (+%9.3f us) [%s t%02u] ", static_cast<double>(e.ns - base) / 1000.0,
                      static_cast<double>(e.ns - prev) / 1000.0, label.c_str(), e.thread);
        prev = e.ns;
        s += line;
        s += e.text;
        s += '\n';
    }
    return s;
}

std::vector<Event> rpcEvents(const std::vector<Event>& merged, uint64_t rpcId) {
    std::vector<Event> out;
    uint64_t want = rpcId & ~uint64_t{1};
    for (const Event& e : merged) {
        auto id = eventRpcId(e.text);
        if (id && *id == want) out.push_back(e);
    }
    return out;
}

const std::vector<std::string> kPhaseNames = {
    "client queue",       // start -> first request packet sent
    "request network",    // first request packet sent -> received by the server
    "request receive",    // first request packet received -> request delivered
    "server application", // request delivered -> response started
    "response queue",     // response started -> its first packet sent
    "response transfer",  // first response packet sent -> response complete at the client
    "client handoff",     // response complete -> handed to the application
};

namespace {
constexpr int64_t kNone = INT64_MIN;
}  // namespace

std::vector<RpcPhases> rpcPhases(const std::vector<Event>& merged) {
    struct Points {
        int64_t t[9];
        Points() { std::fill(std::begin(t), std::end(t), kNone); }
    };
    std::unordered_map<uint64_t, Points> rpcs;
    std::vector<uint64_t> order;
    auto setFirst = [](int64_t& slot, int64_t ns) {
        if (slot == kNone) slot = ns;
    };
    for (const Event& e : merged) {
        std::string_view text = e.text;
        auto id = eventRpcId(text);
        if (!id) continue;
        if (text.starts_with("rpc start ")) {
            auto [it, fresh] = rpcs.try_emplace(*id);
            if (fresh) order.push_back(*id);
            setFirst(it->second.t[0], e.ns);
            continue;
        }
        auto it = rpcs.find(*id);
        if (it == rpcs.end()) continue;
        Points& p = it->second;
        if (auto pk = parsePacketEvent(text); pk && pk->type == "DATA") {
            bool request = (pk->id & 1) == 0;
            if (pk->send && request) setFirst(p.t[1], e.ns);
            if (!pk->send && request) setFirst(p.t[2], e.ns);
            if (pk->send && !request) setFirst(p.t[5], e.ns);
        } else if (text.starts_with("deliver request ")) {
            setFirst(p.t[3], e.ns);
        } else if (text.starts_with("response start ")) {
            setFirst(p.t[4], e.ns);
        } else if (text.starts_with("deliver response ")) {
            setFirst(p.t[7], e.ns);
        } else if (text.starts_with("handoff response ")) {
            setFirst(p.t[8], e.ns);
        }
    }
    std::vector<RpcPhases> out;
    for (uint64_t id : order) {
        const Points& p = rpcs[id];
        if (p.t[0] == kNone || p.t[7] == kNone) continue;
        RpcPhases r;
        r.id = id;
        r.totalNs = (p.t[8] != kNone ? p.t[8] : p.t[7]) - p.t[0];
        auto span = [&](int a, int b) { return p.t[a] == kNone || p.t[b] == kNone ? int64_t{-1} : p.t[b] - p.t[a]; };
        r.phaseNs = {span(0, 1), span(1, 2), span(2, 3), span(3, 4), span(4, 5), span(5, 7), span(7, 8)};
        out.push_back(std::move(r));
    }
    return out;
}

std::string slowSummary(const std::vector<Event>& merged, double fraction, size_t listTop) {
    std::vector<RpcPhases> all = rpcPhases(merged);
    std::string s;
    char line[256];
    if (all.empty()) return "no complete client RPC in the traces (need 'rpc start' and 'deliver response')\n";
    std::sort(all.begin(), all.end(), [](const RpcPhases& a, const RpcPhases& b) { return a.totalNs < b.totalNs; });
    auto pct = [&](double q) {
        size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(all.size()))) - 1;
        return static_cast<double>(all[std::min(i, all.size() - 1)].totalNs) / 1000.0;
    };
    std::snprintf(line, sizeof(line), "%zu RPCs: latency P50 %.3f us, P90 %.3f us, P99 %.3f us, max %.3f us\n",
                  all.size(), pct(0.5), pct(0.9), pct(0.99), static_cast<double>(all.back().totalNs) / 1000.0);
    s += line;
    fraction = std::clamp(fraction, 0.0, 1.0);
    size_t k = std::max<size_t>(1, static_cast<size_t>(std::ceil(fraction * static_cast<double>(all.size()))));
    std::vector<const RpcPhases*> slow;
    for (size_t i = all.size() - k; i < all.size(); ++i) slow.push_back(&all[i]);

    std::snprintf(line, sizeof(line), "slowest %zu (%.1f%%) against all RPCs, mean per phase (us):\n", k,
                  100.0 * static_cast<double>(k) / static_cast<double>(all.size()));
    s += line;
    // A phase's share is of the total latency of the same slow RPCs its mean is over:
    // those whose trace shows the phase (an RPC without the server's trace has no
    // server phases, and its total must not weigh on their shares). "rpcs" says how many
    // of the slow ones that is.
    std::snprintf(line, sizeof(line), "  %-20s %12s %12s %12s %8s %9s\n", "phase", "slow mean", "all median",
                  "excess", "share", "rpcs");
    s += line;
    for (size_t ph = 0; ph < kPhaseNames.size(); ++ph) {
        double sum = 0, total = 0;
        size_t n = 0;
        for (const RpcPhases* r : slow)
            if (r->phaseNs[ph] >= 0) {
                sum += static_cast<double>(r->phaseNs[ph]);
                total += static_cast<double>(r->totalNs);
                ++n;
            }
        std::vector<int64_t> v;
        for (const RpcPhases& r : all)
            if (r.phaseNs[ph] >= 0) v.push_back(r.phaseNs[ph]);
        if (n == 0 || v.empty()) {
            std::snprintf(line, sizeof(line), "  %-20s %12s %12s %12s %8s %4zu/%-4zu\n", kPhaseNames[ph].c_str(), "-",
                          "-", "-", "-", n, k);
            s += line;
            continue;
        }
        std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
        double mean = sum / static_cast<double>(n) / 1000.0;
        double median = static_cast<double>(v[v.size() / 2]) / 1000.0;
        std::snprintf(line, sizeof(line), "  %-20s %12.3f %12.3f %12.3f %7.1f%% %4zu/%-4zu\n", kPhaseNames[ph].c_str(),
                      mean, median, mean - median, total > 0 ? 100.0 * sum / total : 0.0, n, k);
        s += line;
    }
    if (listTop > 0) {
        s += "slowest RPCs (us):\n";
        std::snprintf(line, sizeof(line), "  %-20s %10s", "id", "total");
        s += line;
        for (size_t ph = 0; ph < kPhaseNames.size(); ++ph) {
            std::snprintf(line, sizeof(line), " %9.9s", kPhaseNames[ph].c_str());
            s += line;
        }
        s += '\n';
        for (size_t i = 0; i < std::min(listTop, all.size()); ++i) {
            const RpcPhases& r = all[all.size() - 1 - i];
            std::snprintf(line, sizeof(line), "  %-20" PRIu64 " %10.3f", r.id, static_cast<double>(r.totalNs) / 1000.0);
            s += line;
            for (int64_t v : r.phaseNs) {
                if (v < 0) {
                    std::snprintf(line, sizeof(line), " %9s", "-");
                } else {
                    std::snprintf(line, sizeof(line), " %9.3f", static_cast<double>(v) / 1000.0);
                }
                s += line;
            }
            s += '\n';
        }
    }
    return s;
}

}  // namespace homa::trace
