// Reading time-trace dumps: parse, align the clocks of several processes, merge them onto
// one timeline, follow one RPC, and explain where slow RPCs spent their time. Used by
// homa-trace and its tests.
#pragma once

#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace homa::trace {

struct Event {
    int64_t ns = 0;       ///< on the trace's own clock (CLOCK_MONOTONIC_RAW of its host)
    uint32_t thread = 0;
    int trace = 0;        ///< index of the trace it came from (set by merge)
    std::string text;
};

struct TraceFile {
    std::string label;    ///< how it is shown: the process name, else the file name
    int64_t baseNs = 0;
    std::vector<Event> events;
};

/// Parses a dump written by homa::trace::dump(). False, with a reason naming the line, on
/// anything else.
bool parseTrace(std::istream& in, TraceFile& out, std::string* error);
bool readTraceFile(const std::string& path, TraceFile& out, std::string* error);

/// "send|recv TYPE id N [offset M]" events.
struct PacketEvent {
    bool send = false;
    std::string type;
    uint64_t id = 0;
    uint64_t offset = 0;
};
std::optional<PacketEvent> parsePacketEvent(std::string_view text);
/// The RPC an event concerns ("id N" anywhere in the text), as the client's id (even).
std::optional<uint64_t> eventRpcId(std::string_view text);

/// Clock offsets: offsetNs[i] is added to trace i's times to put them on trace 0's clock.
/// Estimated from packets seen sent in one trace and received in another, assuming the
/// fastest delivery takes as long in both directions (as NTP does). Traces with no packet
/// in common with the others keep offset 0 (right for processes of the same host, whose
/// clocks are the same CLOCK_MONOTONIC_RAW).
struct Alignment {
    std::vector<int64_t> offsetNs;
    std::vector<std::string> notes;  ///< how each offset was found
};
Alignment alignClocks(const std::vector<TraceFile>& traces);

/// All events of all traces on one timeline (offsets applied), in time order.
std::vector<Event> mergeTraces(const std::vector<TraceFile>& traces, const std::vector<int64_t>& offsetNs);

/// Text of a merged timeline: "time us (+delta us) [label tNN] message"; times relative
/// to the first event shown.
std::string formatTimeline(const std::vector<Event>& events, const std::vector<TraceFile>& traces);

/// The events of one RPC (either end), in order.
std::vector<Event> rpcEvents(const std::vector<Event>& merged, uint64_t rpcId);

/// Where the time of one client RPC went, from the events of both ends.
struct RpcPhases {
    uint64_t id = 0;
    int64_t totalNs = -1;  ///< start to the application getting the response; -1 unknown
    /// Durations of the phases (kPhaseNames order); -1 where an event is missing.
    std::vector<int64_t> phaseNs;
};
extern const std::vector<std::string> kPhaseNames;
std::vector<RpcPhases> rpcPhases(const std::vector<Event>& merged);

/// The slowest `fraction` of RPCs (at least one) against the median RPC, phase by phase.
std::string slowSummary(const std::vector<Event>& merged, double fraction, size_t listTop);

}  // namespace homa::trace
