// homa-perf's roles: server, client (closed or open loop), local, plot.
#include "perf/perf.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "common/slowdown_plot.h"
#include "perf/homa_transport.h"
#include "perf/transport.h"
#include "homa/trace.h"
#include "workload/workload.h"

namespace homa::perf {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

/// How long the closed loop waits, at most, before it starts a call in the place of one
/// that failed (the run loop's period).
constexpr int kRetryPauseMs = 10;
/// How long a server has to answer the client's first call before it is reported as not
/// answering (and a TCP server to accept the connection).
constexpr int kProbeTimeoutMs = 2000;

// Set by requestStop(), from a signal handler or any thread (lock-free: async-signal-safe).
std::atomic<int> interrupted{0};
static_assert(std::atomic<int>::is_always_lock_free);

int64_t nowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

/// A figure of an empty set of round trips is not 0: "n/a" in the text, null in the JSON.
std::string fixedOrNa(double v, bool none, int decimals) {
    if (none) return "n/a";
    char b[64];
    std::snprintf(b, sizeof(b), "%.*f", decimals, v);
    return b;
}
json orNull(double v, bool none) {
    return none ? json(nullptr) : json(v);
}

json machineInfo() {
    json m;
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    m["hostname"] = host;
    m["cpus"] = std::thread::hardware_concurrency();
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
        if (line.rfind("model name", 0) == 0) {
            m["cpu"] = line.substr(line.find(':') + 2);
            break;
        }
    }
    utsname u;
    if (uname(&u) == 0) m["kernel"] = std::string(u.sysname) + " " + u.release;
    return m;
}

/// The largest message an endpoint takes or sends (ProtocolOptions::maxMessageLength,
/// TcpOptions::maxMessageLength): a server's --max-length; for a client (and the server of
/// `local`), the workload's largest size, and at least 1 MB.
uint32_t messageLimit(const PerfOptions& o, const workload::Distribution* sizes) {
    if (!sizes) return o.maxLength;
    return std::max<uint32_t>(sizes->sizes().empty() ? 0 : sizes->sizes().back(), 1'000'000);
}

HomaTransportOptions homaOptions(const PerfOptions& o, uint32_t maxMessage) {
    HomaTransportOptions h;
    h.mtu = o.mtu;
    h.busyPollUs = o.busyPollUs;
    h.adaptivePollUs = o.adaptivePollUs;
    h.engineCpuTime = !o.noEngineCpuTime;
    h.protocol.maxMessageLength = maxMessage;
    h.serverWorkUs = o.serverWorkUs;
    if (o.maxPending > 0) h.protocol.maxPendingRequests = o.maxPending;
    if (o.unschedBytes > 0) h.protocol.unschedBytes = o.unschedBytes;
    if (o.maxIncoming > 0) h.protocol.maxIncoming = o.maxIncoming;
    if (o.overcommit > 0) h.protocol.maxOvercommit = o.overcommit;
    if (o.bufferMb > 0) h.protocol.maxBufferBytes = uint64_t{o.bufferMb} << 20;
    if (o.sendBufferMb > 0) h.protocol.maxOutgoingBytes = uint64_t{o.sendBufferMb} << 20;
    h.protocol.linkMbps = static_cast<uint32_t>(std::max(1.0, std::round(o.linkGbps * 1000)));
    if (o.nicQueueUs > 0) h.protocol.maxNicQueueNs = static_cast<int64_t>(std::round(o.nicQueueUs * 1000));
    return h;
}

/// The TCP baseline's options for its client, or (`server`) its server.
TcpOptions tcpOptions(const PerfOptions& o, uint32_t maxMessage, bool server) {
    TcpOptions t;
    t.connectionsPerServer = o.tcpConnections;
    t.threads = server ? o.serverThreads : o.tcpThreads;
    t.maxMessageLength = maxMessage;
    t.serverWorkUs = static_cast<uint32_t>(o.serverWorkUs);
    return t;
}

/// An endpoint's refusal of its memory options, with the homa-perf options that set them.
std::string withOptionHint(std::string error) {
    if (error.find("maxBufferBytes") != std::string::npos)
        error += " (raise --buffer-mb, or lower --max-length)";
    else if (error.find("maxOutgoingBytes") != std::string::npos)
        error += " (raise --send-buffer-mb, or lower --max-length)";
    return error;
}

struct ServerSide {
    std::unique_ptr<ServerTransport> transport;
    std::function<MetricsSnapshot()> metrics;
};

bool startServer(const PerfOptions& o, const Address& bind, uint32_t maxMessage, ServerSide* s, std::string* error) {
    if (o.protocol == "tcp") {
        s->transport = makeTcpServer(bind, o.serverPorts, tcpOptions(o, maxMessage, true), error);
    } else {
        s->transport = makeHomaServer(bind, o.serverPorts, o.serverThreads, homaOptions(o, maxMessage), error, &s->metrics);
    }
    if (!s->transport) *error = withOptionHint(*error);
    return s->transport != nullptr;
}

void printMetrics(const char* who, const MetricsSnapshot& diff) {
    std::printf("%s counters over the run (non-zero):\n", who);
    for (const auto& [name, value] : diff.counters)
        if (value != 0) std::printf("  %-32s %12lu\n", name.c_str(), static_cast<unsigned long>(value));
}

// ---------------------------------------------------------------- client

/// Whether the closed loop makes synchronous calls (see PerfOptions::callMode).
bool usesSyncCalls(const PerfOptions& o, const ClientTransport& t) {
    if (o.gbps > 0 || !t.hasSyncCalls()) return false;
    return o.callMode == "sync" || (o.callMode == "auto" && o.clientMax == 1);
}

/// The open loop's mean arrivals a second: requests of the workload's mean size (at
/// least 4 bytes) that offer o.gbps.
double arrivalsPerSecond(const PerfOptions& o, const workload::Distribution& d) {
    return o.gbps * 1e9 / 8.0 / std::max(4.0, d.mean());
}

class LoadGenerator {
  public:
    /// `bounds` and `model` make the table of round trips by message size (buckets).
    LoadGenerator(const PerfOptions& o, ClientTransport& t, const workload::Distribution& d, size_t servers,
                  std::vector<uint32_t> bounds, const SlowdownModel& model)
        : buckets(std::move(bounds), model, o.gbps > 0), o_(o), transport_(t), dist_(d), servers_(servers), rng_(o.seed),
          cyclesPerNs_(trace::cyclesPerNs()) {
        // As large as the largest request (the distribution is capped at --max-length
        // already): each synchronous caller keeps a copy.
        scratch_.assign(std::max<uint32_t>(std::min(o.maxLength, d.maxSize()), 8), 0x33);
        // Calls in flight never exceed clientMax (the closed loop starts that many; the
        // open loop skips arrivals that find no free slot).
        inFlight_.resize(static_cast<size_t>(o.clientMax));
        for (int i = o.clientMax - 1; i >= 0; --i) freeSlots_.push_back(static_cast<uint32_t>(i));
        // A call's token is its slot.
        transport_.onCompletion([this](uint64_t slot, CallResult r) {
            const InFlight f = inFlight_[slot];
            if (r.refused) {
                // The transport's memory is full of calls in flight. Closed loop: this
                // slot waits for one of them to finish (or for the run loop, if none is
                // in flight); reissuing at once would only be refused again, as fast as
                // the loop runs. Open loop: the arrival is dropped (see park()).
                park(static_cast<int64_t>(slot), f.call);
                return;
            }
            // One locked step records the call and, in the closed loop, draws the next
            // one for the same slot (and takes back a parked slot, if any): the lock is
            // the load generator's whole cost per call, so it is taken once.
            Call next;
            bool again, unparked = false;
            const int64_t rtt = sinceNs(f.startTsc);
            {
                std::lock_guard lk(mu_);
                again = record(f.call, r, rtt, f.lagNs);
                if (again && !r.ok) {
                    // (Its memory is free again: a parked slot may start too.)
                    if (parked_ > 0) {
                        --parked_;
                        ++failedSlots_;
                    }
                    // A failed call's slot is started again by the run loop (within
                    // kRetryPauseMs), not from here: a transport that fails calls at
                    // once (a dead connection) would otherwise fail the next one inside
                    // this completion, and so on, one stack frame deeper each time; and
                    // a closed loop against a dead server would spin on failures.
                    freeSlots_.push_back(static_cast<uint32_t>(slot));
                    ++failedSlots_;
                    if (outstanding_ == 0) cv_.notify_all();
                    return;
                }
                if (again) {
                    drawLocked(&next);
                    if (parked_ > 0) {
                        --parked_;
                        unparked = true;
                    }
                } else {
                    freeSlots_.push_back(static_cast<uint32_t>(slot));
                    if (outstanding_ == 0) cv_.notify_all();
                }
            }
            if (!again) return;
            send(next, static_cast<uint32_t>(slot));
            if (unparked) issue();
        });
    }

    /// Runs the load; the round trips of the RPCs that completed are then in rtts and
    /// buckets. `atMeasureStart` runs when the measured interval begins (after the
    /// warm-up, if any): the caller's own figures (CPU, counters) start there too.
    void run(const std::function<void()>& atMeasureStart = {}) {
        // Round trips go into histograms, whose memory does not grow with the number of
        // RPCs: an hour at two million RPCs a second would have been 115 GB of samples.
        startNs_ = nowNs();
        const int64_t warmupNs = static_cast<int64_t>(o_.warmupS * 1e9);
        const int64_t plannedStart = startNs_ + warmupNs;  // (the measurement's, as planned)
        measureStartNs_ = plannedStart;
        const int64_t end = plannedStart + static_cast<int64_t>(o_.duration * 1e9);
        bool warming = warmupNs > 0;
        {
            std::lock_guard lk(mu_);
            warming_ = warming;
            intervalStartNs_ = startNs_;
        }
        if (!warming && atMeasureStart) atMeasureStart();
        std::thread open;
        std::vector<std::thread> callers;
        if (o_.gbps > 0) {
            schedule_.emplace(arrivalsPerSecond(o_, dist_), o_.seed ^ 0x9e3779b97f4a7c15ull, startNs_, end);
            open = std::thread([this] { openLoop(); });
            pthread_setname_np(open.native_handle(), "perf-open-loop");
        } else if (syncCalls()) {
            for (int i = 0; i < o_.clientMax; ++i) {
                callers.emplace_back([this] { syncLoop(); });
                pthread_setname_np(callers.back().native_handle(), "perf-caller");
            }
        } else {
            for (int i = 0; i < o_.clientMax; ++i) issue();
        }
        // Per-second lines: each whole second of the warm-up (and what is left of it),
        // then each whole second of the measured interval.
        int64_t nextReport = startNs_ + 1'000'000'000;
        if (warming) nextReport = std::min(nextReport, plannedStart);
        for (;;) {
            // (Sleeps end at the end itself: the interval is not stretched by a late look.)
            const int64_t now = nowNs();
            if (now >= end || interrupted) break;
            const int64_t until = warming ? plannedStart : end;
            std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<int64_t>(kRetryPauseMs * 1'000'000, until - now)));
            if (nowNs() >= end) break;
            // (Closed loop only: the open loop neither parks refused calls nor restarts
            // failed ones, see park() and record().)
            if (unpark(true)) issue();  // nothing in flight to finish and make room
            for (int64_t n = takeFailedSlots(); n > 0; --n) issue();
            if (warming && nowNs() >= plannedStart) {
                report(true);  // the warm-up's last (part of a) second
                beginMeasurement();
                warming = false;
                if (atMeasureStart) atMeasureStart();
                nextReport = plannedStart + 1'000'000'000;  // (the seconds of the planned interval)
            } else if (nowNs() >= nextReport) {
                report(warming);
                nextReport += 1'000'000'000;
                if (warming) nextReport = std::min(nextReport, plannedStart);
            }
        }
        {
            // The measured interval ends here: calls that finish later count in the
            // round-trip figures (leaving them out would hide the slowest calls of an
            // overloaded run) but not in the rate. No call starts after it.
            std::lock_guard lk(mu_);
            ended_ = true;
            stopping_ = true;
            stopNs_ = nowNs();
            elapsedNs_ = stopNs_ - (warming_ ? startNs_ : measureStartNs_);
        }
        if (!warming && nextReport <= end && !interrupted) report(false);  // the last whole second
        if (open.joinable()) {
            open.join();
            // The arrivals due before the end that the generator never reached.
            schedule_->finish(stopNs_);
        }
        bool left;
        {
            std::unique_lock lk(mu_);
            // (In slices: an interrupt ends the wait too.)
            const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.drainS));
            while (outstanding_ > 0 && !interrupted && Clock::now() < until)
                cv_.wait_for(lk, std::min<Clock::duration>(until - Clock::now(), std::chrono::milliseconds(50)));
            // What is still in flight is ended by the transport's shutdown: unfinished,
            // not errors of the transport (see record()).
            drained_ = true;
            left = outstanding_ > 0;
        }
        // (Synchronous callers wait in their calls: only the shutdown ends those.)
        if (left) transport_.stop();
        for (auto& t : callers) t.join();
    }

    /// Calls never reported at all (after the transport stopped: none should be).
    uint64_t unreported() {
        std::lock_guard lk(mu_);
        return static_cast<uint64_t>(std::max<int64_t>(outstanding_, 0));
    }

    /// The round trips (ns) of every call that completed, in the measured interval or
    /// after it, and the same by message size.
    Histogram rtts;
    /// The open loop's latencies from each call's due time (its round trip plus how late
    /// the generator started it): what an arrival waited for its answer, which the round
    /// trips alone leave out when the generator falls behind (calls due during a stall all
    /// start when it ends). Empty for the closed loop.
    Histogram fromDue;
    SizeBuckets buckets;
    /// Calls that completed in the measured interval (the rate), and after it (while the
    /// run waited for the calls in flight: in the round trips, not in the rate).
    uint64_t completed = 0, completedAfterEnd = 0;
    /// Calls still in flight when the run stopped waiting for them (PerfOptions::drainS),
    /// however they ended after that.
    uint64_t unfinished = 0;
    uint64_t errors = 0;
    std::map<std::string, uint64_t> errorsByKind;
    /// Calls the transport refused for lack of memory (CallResult::refused): not errors,
    /// and not in the round trips. The closed loop then keeps fewer calls in flight; in the
    /// open loop each is an arrival dropped.
    uint64_t refused = 0;
    /// The open loop's arrivals and what became of them (after run()); null for the
    /// closed loop.
    const ArrivalSchedule* arrivals() const { return schedule_ ? &*schedule_ : nullptr; }
    std::string firstError;
    std::vector<json> intervals;
    /// The warm-up's per-second figures (not in `intervals`), and its completed calls.
    std::vector<json> warmupIntervals;
    /// Calls started in the warm-up: completed, failed (also in `errors`), refused.
    uint64_t warmupCalls = 0, warmupErrors = 0, warmupRefused = 0;
    /// Whether the measured interval began (false: interrupted in the warm-up).
    bool measured() const { return !warming_; }
    int64_t elapsedNs_ = 0;
    uint64_t bytesOut = 0, bytesIn = 0;

  private:
    bool syncCalls() const { return usesSyncCalls(o_, transport_); }

    struct Call {
        uint32_t size, reqLen, respLen;
        size_t server;
        bool warm = false;  ///< started in the warm-up: counted there, whenever it ends
    };
    /// Draws the next synchronous call and builds its request in `buffer` (`request` then
    /// views it); false once stopping.
    bool prepare(Call* c, std::vector<uint8_t>& buffer, std::span<const uint8_t>* request) {
        if (!draw(c, nullptr)) return false;
        *request = buildRequest(c, buffer);
        return true;
    }
    /// (Under mu_.) Draws the next call's size and counts it in flight.
    void drawLocked(Call* c) {
        if (!refusedSizes_.empty()) {
            c->size = refusedSizes_.front();
            refusedSizes_.pop_front();
        } else {
            c->size = dist_.sample(rng_);
        }
        c->warm = warming_;
        ++outstanding_;
    }
    /// Draws the next call, and takes it one of the clientMax slots of calls in flight if
    /// `slot`; false once stopping (or if no slot is free, which the closed loop's count
    /// of the calls it starts rules out).
    bool draw(Call* c, uint32_t* slot) {
        std::lock_guard lk(mu_);
        if (stopping_ || (slot && freeSlots_.empty())) return false;
        drawLocked(c);
        if (slot) {
            *slot = freeSlots_.back();
            freeSlots_.pop_back();
        }
        return true;
    }
    /// Fills in a drawn call (c->size) and builds its request in `buffer`, a thread's own:
    /// filled once with the largest request's bytes, each call only writes its response
    /// length at the front (copying the whole request for each call would cost a large
    /// message's worth of memory traffic in the tool, not the transport).
    std::span<const uint8_t> buildRequest(Call* c, std::vector<uint8_t>& buffer) {
        c->reqLen = std::max<uint32_t>(c->size, 4);
        c->respLen = o_.oneWay ? 8 : std::max<uint32_t>(c->size, 1);
        c->server = servers_ > 1 ? static_cast<size_t>(nextServer_++ % servers_) : 0;
        if (buffer.size() < scratch_.size()) buffer = scratch_;
        putResponseLength(buffer.data(), c->respLen);
        return {buffer.data(), c->reqLen};
    }
    /// Records a finished synchronous call; returns whether the closed loop goes on.
    bool finish(const Call& c, const CallResult& r, int64_t rtt) {
        std::lock_guard lk(mu_);
        const bool again = record(c, r, rtt);
        if (outstanding_ == 0) cv_.notify_all();
        return again;
    }
    /// (Under mu_.) Counts a finished call out and records its sample or error; returns
    /// whether the closed loop goes on.
    bool record(const Call& c, const CallResult& r, int64_t rtt, int64_t lagNs = 0) {
        --outstanding_;
        if (drained_) {
            ++unfinished;  // (ended by the shutdown, or finished after the run stopped waiting)
            return false;
        }
        if (r.ok) {
            // (Every call is in the per-second lines; one the warm-up started is in no
            // measured figure.)
            intervalRtts_.add(static_cast<double>(rtt));
            intervalOut_ += c.reqLen;
            intervalIn_ += r.responseLength;
            if (c.warm) {
                ++warmupCalls;
            } else {
                rtts.add(static_cast<double>(rtt));
                const int64_t fromDueNs = o_.gbps > 0 ? rtt + lagNs : -1;  // (open loop only)
                if (fromDueNs >= 0) fromDue.add(static_cast<double>(fromDueNs));
                buckets.add(c.size, c.reqLen + c.respLen, rtt, fromDueNs);
                if (!ended_) {
                    ++completed;
                    bytesOut += c.reqLen;
                    bytesIn += r.responseLength;
                } else {
                    ++completedAfterEnd;
                }
            }
        } else {
            // (A failure counts whenever it happens: the warm-up's too.)
            ++errors;
            if (c.warm) ++warmupErrors;
            if (firstError.empty()) firstError = r.error;
            std::string kind = errorKind(r.error);
            if (errorsByKind.size() >= kMaxErrorKinds && !errorsByKind.contains(kind)) kind = "other";
            ++errorsByKind[kind];
        }
        return !stopping_ && o_.gbps == 0;
    }
    /// Counts a refused call. Closed loop: its slot, if it has one, waits
    /// (see the completion function), and the next call started is of its size: drawing
    /// anew would favour the sizes that fit, the large ones being those refused. Open
    /// loop: the arrival is dropped, not started again (a later start would no longer be
    /// the arrival the schedule had), and its slot is free for the next arrival.
    void park(int64_t slot, const Call& c) {
        std::lock_guard lk(mu_);
        --outstanding_;
        ++(c.warm ? warmupRefused : refused);
        if (o_.gbps == 0) refusedSizes_.push_back(c.size);
        if (slot >= 0) {
            freeSlots_.push_back(static_cast<uint32_t>(slot));
            if (o_.gbps == 0) ++parked_;
        }
        if (outstanding_ == 0) cv_.notify_all();
    }
    /// Takes a parked slot back, if there is one (with `onlyIfIdle`, only when no call is
    /// in flight); the caller then issues a call.
    bool unpark(bool onlyIfIdle) {
        std::lock_guard lk(mu_);
        if (parked_ == 0 || stopping_ || (onlyIfIdle && outstanding_ > 0)) return false;
        --parked_;
        return true;
    }
    /// The slots whose call failed since the last look (the run loop starts them again).
    int64_t takeFailedSlots() {
        std::lock_guard lk(mu_);
        return stopping_ ? 0 : std::exchange(failedSlots_, 0);
    }
    /// Round trips are timed with the timestamp counter: a clock_gettime before and after
    /// each call would cost as much as a tenth of a small RPC's own work.
    int64_t sinceNs(uint64_t startTsc) const {
        return static_cast<int64_t>(static_cast<double>(trace::readClock() - startTsc) / cyclesPerNs_);
    }

    void issue() {
        Call c;
        uint32_t slot;
        if (draw(&c, &slot)) send(c, slot);
    }
    /// Builds a drawn call's request and starts it in `slot`, `lagNs` after its arrival
    /// was due (open loop).
    void send(Call c, uint32_t slot, int64_t lagNs = 0) {
        thread_local std::vector<uint8_t> buffer;
        const std::span<const uint8_t> request = buildRequest(&c, buffer);
        inFlight_[slot] = {c, trace::readClock(), lagNs};
        transport_.issue(c.server, request, slot);
    }

    void syncLoop() {
        Call c;
        std::vector<uint8_t> buffer;
        std::span<const uint8_t> request;
        CallResult r;
        while (prepare(&c, buffer, &request)) {
            const uint64_t start = trace::readClock();
            transport_.callSync(c.server, request, &r);
            if (r.refused) {
                // No memory to start it: wait for other callers' calls to finish.
                park(-1, c);
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                continue;
            }
            if (!finish(c, r, sinceNs(start))) break;
            // (As the asynchronous loop does: a call that failed is not followed at once
            // by the next, which against a dead server would fail as fast as it can.)
            if (!r.ok) std::this_thread::sleep_for(std::chrono::milliseconds(kRetryPauseMs));
        }
    }

    /// Starts the open loop's arrivals (schedule_) as they fall due. An arrival is
    /// started when the generator reaches it, which is late when starting the ones before
    /// took longer than their gaps: each call's round trip is timed from its start, and
    /// how late its start was is the generator's lag (in the summary and the JSON).
    void openLoop() {
        transport_.holdSends();
        int64_t at;
        while (!interrupted && schedule_->next(&at)) {
            // Sleep, never spin: a spinning generator takes a whole core from the client
            // and server it measures (on a 2-core machine they then share the other one
            // and stall each other for scheduler time slices, milliseconds). Arrivals due
            // during a sleep go out together when it ends (sleeps last at least the
            // kernel's timer slack, about 50 us), their packets in one system call.
            int64_t now = nowNs();
            if (now < at) {
                transport_.releaseSends();
                std::this_thread::sleep_for(std::chrono::nanoseconds(at - now));
                transport_.holdSends();
                now = nowNs();
            }
            if (!arrive(now, at)) break;  // (the run is over: the arrival is late, see finish())
        }
        transport_.releaseSends();
    }
    /// The open loop's arrival last drawn, handled at `now`: a call in a free slot, or
    /// skipped when --client-max calls are in flight. Whether a slot is free and the
    /// taking of it are one locked step (a slot freed by a completion can only be taken
    /// here). False, with the arrival left unhandled, once stopping.
    bool arrive(int64_t now, int64_t due) {
        Call c;
        uint32_t slot;
        {
            std::lock_guard lk(mu_);
            if (stopping_) return false;
            const bool free = !freeSlots_.empty();
            schedule_->handled(now, free);
            if (!free) return true;
            drawLocked(&c);
            slot = freeSlots_.back();
            freeSlots_.pop_back();
        }
        send(c, slot, std::max<int64_t>(now - due, 0));
        return true;
    }

    /// One per-second line: the round trips that finished since the last line, over the
    /// time that really passed since then (a line comes a little after its second is
    /// up), in the warm-up's lines or the measured interval's.
    void report(bool warmup) {
        // The interval's round trips come out in exchange for the histogram they were in
        // the second before (emptied; its bins already there), so the completing thread
        // never waits for memory.
        Histogram& rtts = spareRtts_;
        rtts.clear();
        uint64_t out, in;
        int64_t from, to;
        {
            std::lock_guard lk(mu_);
            std::swap(rtts, intervalRtts_);
            out = std::exchange(intervalOut_, 0);
            in = std::exchange(intervalIn_, 0);
            to = nowNs();
            from = std::exchange(intervalStartNs_, to);
        }
        const double secs = std::max(static_cast<double>(to - from) / 1e9, 1e-9);
        double kops = static_cast<double>(rtts.count()) / secs / 1e3;
        double p50 = rtts.percentile(50) / 1e3, p99 = rtts.percentile(99) / 1e3, p999 = rtts.percentile(99.9) / 1e3;
        // (Its phase's n-th line: the n-th second, or a warm-up's last part of one.)
        const double t = ++reportLines_;
        const bool none = rtts.empty();  // (no round trip finished in this second: no figures)
        json j = {{"t", t},
                  {"seconds", secs},
                  {"kops", kops},
                  {"gbps_out", out * 8 / secs / 1e9},
                  {"gbps_in", in * 8 / secs / 1e9},
                  {"rtt_p50_us", orNull(p50, none)},
                  {"rtt_p99_us", orNull(p99, none)},
                  {"rtt_p999_us", orNull(p999, none)}};
        if (warmup) {
            j["warmup"] = true;
            warmupIntervals.push_back(j);
        } else {
            intervals.push_back(j);
        }
        if (!o_.quiet)
            std::printf("%s%5.0f s %9.1f kops   out %6.2f Gbps   in %6.2f Gbps   rtt p50 %8s us  p99 %8s us  p99.9 %8s us\n",
                        warmup ? "warm-up " : "", t, kops, out * 8 / secs / 1e9, in * 8 / secs / 1e9,
                        fixedOrNa(p50, none, 1).c_str(), fixedOrNa(p99, none, 1).c_str(),
                        fixedOrNa(p999, none, 1).c_str());
        std::fflush(stdout);
    }

    /// The warm-up is over: the calls drawn from now on are measured. Those started in the
    /// warm-up count there whenever they finish (their failures count as failures, the
    /// warm-up's or not), and the open loop's arrivals are counted afresh.
    void beginMeasurement() {
        std::lock_guard lk(mu_);
        warming_ = false;
        measureStartNs_ = nowNs();  // (the calls drawn from here on are measured)
        if (schedule_) schedule_->restartCounts();
        reportLines_ = 0;
    }

    const PerfOptions& o_;
    ClientTransport& transport_;
    const workload::Distribution& dist_;
    size_t servers_;
    std::mt19937_64 rng_;
    const double cyclesPerNs_;
    std::vector<uint8_t> scratch_;
    struct InFlight {
        Call call;
        uint64_t startTsc = 0;
        int64_t lagNs = 0;  ///< how late the open loop started it
    };
    std::vector<InFlight> inFlight_;  ///< by slot; a slot's owner is the call given it
    std::vector<uint32_t> freeSlots_;  ///< (mu_)
    std::deque<uint32_t> refusedSizes_;  ///< closed loop: refused calls' sizes, to start again (mu_)
    std::mutex mu_;
    std::condition_variable cv_;
    int64_t outstanding_ = 0;
    bool ended_ = false;    ///< (mu_) the measured interval is over
    bool drained_ = false;  ///< (mu_) the run no longer waits for calls in flight
    int64_t parked_ = 0;  ///< (mu_) closed loop: slots whose call was refused, waiting to be reissued
    int64_t failedSlots_ = 0;  ///< (mu_) slots whose call failed, for the run loop to reissue
    std::optional<ArrivalSchedule> schedule_;  ///< the open loop's (its thread's, then run()'s)
    std::atomic<bool> stopping_{false};
    std::atomic<uint64_t> nextServer_{0};
    int64_t startNs_ = 0;
    int64_t measureStartNs_ = 0;  ///< the warm-up's end (startNs_ without one); then the measurement's real start
    int reportLines_ = 0;         ///< per-second lines of the current phase (the run loop's)
    int64_t stopNs_ = 0;          ///< when the load stopped
    bool warming_ = false;        ///< (mu_) in the warm-up
    int64_t intervalStartNs_ = 0;  ///< (mu_) when the current per-second interval began
    Histogram intervalRtts_;  ///< (mu_) ns
    Histogram spareRtts_;     ///< (the reporting thread's)
    uint64_t intervalOut_ = 0, intervalIn_ = 0;
};

/// One call through the transport's callback, waited for up to `timeoutMs`: its result,
/// or a failure saying that none came in time. (A late result goes to the call's own
/// state, shared with its callback, after this has returned.)
CallResult callAndWait(ClientTransport& t, size_t server, std::span<const uint8_t> request, int timeoutMs) {
    struct Wait {
        std::mutex mu;
        std::condition_variable cv;
        bool done = false;
        CallResult result;
    };
    auto w = std::make_shared<Wait>();
    t.call(server, request, [w](CallResult r) {
        std::lock_guard lk(w->mu);
        w->result = std::move(r);
        w->done = true;
        w->cv.notify_all();
    });
    std::unique_lock lk(w->mu);
    if (w->cv.wait_for(lk, std::chrono::milliseconds(timeoutMs), [&] { return w->done; })) return w->result;
    CallResult late;
    late.error = "no response within " + std::to_string(timeoutMs) + " ms";
    return late;
}

// Median RTT of sequential 100-byte RPCs: the "unloaded small message" for slowdown,
// with synchronous calls on this thread where the transport can make them (Homa's, and a
// blocking connection of TCP's own): a hand-over to a transport thread and back would add
// two wake-ups to the base, tens of microseconds on a virtual machine, and make every
// slowdown of that transport look smaller than it is.
/// 0, with the last failure in *error, if no call succeeded (or the run was interrupted).
double measureBaseRtt(ClientTransport& t, bool* synchronous, std::string* error) {
    *synchronous = true;
    std::vector<double> rtts;
    std::vector<uint8_t> req(100, 1);
    putResponseLength(req.data(), 100);
    int failedInARow = 0;
    for (int i = 0; i < 300 && failedInARow < 3 && !interrupted; ++i) {
        CallResult result;
        int64_t begin = nowNs();
        if (t.callSync(0, req, &result)) {
            if (result.ok) rtts.push_back(static_cast<double>(nowNs() - begin) / 1e3);
            failedInARow = result.ok ? 0 : failedInARow + 1;
            if (!result.ok) *error = result.error;
            continue;
        }
        *synchronous = false;
        const int64_t start = nowNs();
        const CallResult r = callAndWait(t, 0, req, 5000);
        if (r.ok) rtts.push_back(static_cast<double>(nowNs() - start) / 1e3);
        failedInARow = r.ok ? 0 : failedInARow + 1;
        if (!r.ok) *error = r.error;
    }
    if (rtts.empty() && error->empty()) *error = "interrupted";
    // (A server that stops answering: three failures in a row end the measurement, with
    // what it has; the load's own calls then report the failures.)
    return rtts.empty() ? 0.0 : percentile(rtts, 50);
}

struct CpuTimes {
    double userS = 0, systemS = 0;
    CpuTimes operator-(const CpuTimes& o) const { return {userS - o.userS, systemS - o.systemS}; }
};

CpuTimes processCpu() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
    return {s(u.ru_utime), s(u.ru_stime)};
}

/// The workload's message sizes, capped by --max-length (saying so); nullopt, with the
/// reason printed, if the workload is not one.
std::optional<workload::Distribution> workloadSizes(const PerfOptions& o) {
    std::string error;
    std::optional<workload::Distribution> dist;
    bool fixed = !o.workload.empty() && std::all_of(o.workload.begin(), o.workload.end(), ::isdigit);
    if (fixed) {
        long size = std::atol(o.workload.c_str());
        if (size < 1) {
            std::fprintf(stderr, "homa-perf: --workload: a fixed size must be at least 1 byte\n");
            return std::nullopt;
        }
        dist = workload::Distribution::fixed(static_cast<uint32_t>(std::min<long>(size, UINT32_MAX)));
    } else {
        dist = workload::Distribution::named(o.workload, &error);
    }
    if (!dist) {
        std::fprintf(stderr, "homa-perf: --workload: %s\n", error.c_str());
        return std::nullopt;
    }
    workload::Distribution sizes = dist->capped(o.maxLength);
    if (sizes.isCapped())
        std::printf("note: workload %s capped at %u bytes by --max-length%s (mean %.0f -> %.0f bytes)\n",
                    o.workload.c_str(), o.maxLength, o.maxLength == PerfOptions{}.maxLength ? " (its default)" : "",
                    dist->mean(), sizes.mean());
    return sizes;
}

/// Whether --json's file can be written: checked before the run, not after it. A file
/// made for the check is removed; one that was there is left as it is.
bool jsonWritable(const std::string& path) {
    if (path.empty()) return true;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ::close(fd);
        ::unlink(path.c_str());
        return true;
    }
    if (errno == EEXIST) fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
        ::close(fd);
        return true;
    }
    std::fprintf(stderr, "homa-perf: --json: cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
}

/// One 100-byte call to each server, each given `timeoutMs` to answer: a server that is
/// not there (or does not answer) is reported before the run, not as a stream of
/// failures or a hang. (The Homa client probes its servers itself, with its endpoint's
/// own timeout.)
bool probeServers(ClientTransport& t, const std::vector<Address>& servers, int timeoutMs, std::string* error) {
    std::vector<uint8_t> req(100, 1);
    putResponseLength(req.data(), 8);
    for (size_t i = 0; i < servers.size(); ++i) {
        const CallResult r = callAndWait(t, i, req, timeoutMs);
        if (!r.ok) {
            *error = "server " + servers[i].toString() + " is not answering: " + r.error;
            return false;
        }
    }
    return true;
}

int loadThrough(const PerfOptions& o, ClientTransport& transport, const std::vector<Address>& servers,
                const workload::Distribution& sizes, const std::function<MetricsSnapshot()>& metrics,
                const std::function<void()>& atMeasureStart = {});

/// `atMeasureStart`: see loadThrough().
int clientAgainst(const PerfOptions& o, const std::vector<Address>& servers, const workload::Distribution& sizes,
                  const std::function<void()>& atMeasureStart = {}) {
    std::string error;
    if (!jsonWritable(o.json)) return 1;
    std::unique_ptr<ClientTransport> transport;
    std::function<MetricsSnapshot()> metrics;
    if (o.protocol == "tcp") {
        transport = makeTcpClient(servers, tcpOptions(o, messageLimit(o, &sizes), false), kProbeTimeoutMs, &error);
        if (transport && !probeServers(*transport, servers, kProbeTimeoutMs, &error)) transport.reset();
    } else {
        transport = makeHomaClient(servers, homaOptions(o, messageLimit(o, &sizes)), &error, &metrics);
    }
    if (!transport) {
        std::fprintf(stderr, "homa-perf: %s\n", withOptionHint(error).c_str());
        return 1;
    }
    return loadThrough(o, *transport, servers, sizes, metrics, atMeasureStart);
}

/// The client's run through `transport` (made for `servers`): the base RTT, the load, the
/// report and the JSON; the exit status. `atMeasureStart` runs when the measured interval
/// begins (after the warm-up): `local` takes its server's counters from there.
int loadThrough(const PerfOptions& o, ClientTransport& transport, const std::vector<Address>& servers,
                const workload::Distribution& sizes, const std::function<MetricsSnapshot()>& metrics,
                const std::function<void()>& atMeasureStart) {
    std::string error;
    SlowdownModel model;
    model.linkGbps = o.linkGbps;
    bool measured = o.baseRttUs <= 0;
    bool baseSynchronous = false;
    model.baseRttUs = measured ? measureBaseRtt(transport, &baseSynchronous, &error) : o.baseRttUs;
    if (interrupted) {
        std::fprintf(stderr, "homa-perf: interrupted while measuring the base RTT\n");
        return 1;
    }
    if (model.baseRttUs <= 0) {
        std::fprintf(stderr, "homa-perf: cannot measure the base RTT: %s (or give --base-rtt-us)\n", error.c_str());
        return 1;
    }
    const char* baseHow = !measured ? "given" : baseSynchronous ? "measured" : "measured through a callback";
    char openLoop[96];
    std::snprintf(openLoop, sizeof(openLoop), "open loop %g Gbps (at most %d in flight)", o.gbps, o.clientMax);
    char warmup[48] = "";
    if (o.warmupS > 0) std::snprintf(warmup, sizeof(warmup), " after %g s of warm-up", o.warmupS);
    std::printf("homa-perf client: %s, workload %s, %s, %.1f s%s, base RTT %.1f us (%s), link %g Gbps\n",
                o.protocol.c_str(), o.workload.c_str(),
                o.gbps > 0 ? openLoop
                           : ("closed loop, " + std::to_string(o.clientMax) + " outstanding" +
                              (usesSyncCalls(o, transport) ? " (synchronous calls)" : ""))
                                 .c_str(),
                o.duration, warmup, model.baseRttUs, baseHow, o.linkGbps);
    std::fflush(stdout);

    MetricsSnapshot before;
    std::vector<uint32_t> bounds = decileBounds(sizes.sizes(), sizes.cumulative());
    LoadGenerator gen(o, transport, sizes, servers.size(), bounds, model);
    // (Counters, CPU and the clock are taken again where the measured interval begins; an
    // interrupt in the warm-up leaves them as taken here.)
    if (metrics) before = metrics();
    if (atMeasureStart) atMeasureStart();
    CpuTimes cpuBefore = processCpu();
    int64_t runStart = nowNs();
    gen.run([&] {
        if (metrics) before = metrics();
        if (atMeasureStart) atMeasureStart();
        cpuBefore = processCpu();
        runStart = nowNs();
    });
    const CpuTimes cpu = processCpu() - cpuBefore;
    const double runSeconds = static_cast<double>(nowNs() - runStart) / 1e9;  // (the wait at the end included)
    MetricsSnapshot after;
    if (metrics) after = metrics();
    transport.stop();
    gen.unfinished += gen.unreported();
    // Calls still unanswered --drain seconds after the end are failures when a wait was
    // asked for, as a Homa call whose server stops answering times out. (A TCP server
    // that stalls keeps its connections up: its calls never failed, ended as unfinished,
    // and the run passed.) With --drain 0, or an interrupt, the calls in flight at the
    // end are just cut off. The warm-up's calls count among those that ended.
    const uint64_t stuck = o.drainS > 0 && !interrupted ? gen.unfinished : 0;
    const uint64_t failed = gen.errors + stuck;
    const uint64_t ended = gen.completed + gen.completedAfterEnd + gen.warmupCalls + failed;

    std::vector<Bucket> buckets = gen.buckets.figures();
    double seconds = static_cast<double>(gen.elapsedNs_) / 1e9;
    double kops = static_cast<double>(gen.completed) / seconds / 1e3;
    double p50 = gen.rtts.percentile(50) / 1e3, p99 = gen.rtts.percentile(99) / 1e3, p999 = gen.rtts.percentile(99.9) / 1e3;
    const bool none = gen.rtts.empty();

    // Open loop: the arrivals that started no call that ran (skipped at --client-max,
    // late, or refused by the transport), of those due before the end.
    const ArrivalSchedule* arrivals = gen.arrivals();
    const uint64_t refusedArrivals = arrivals ? gen.refused : 0;
    const uint64_t dropped = arrivals ? arrivals->skipped() + arrivals->late() + refusedArrivals : 0;
    std::printf("\nsummary: %zu RPCs in %.2f s = %.1f kops, out %.2f Gbps, in %.2f Gbps, errors %lu",
                static_cast<size_t>(gen.completed), seconds, kops, gen.bytesOut * 8 / seconds / 1e9,
                gen.bytesIn * 8 / seconds / 1e9, static_cast<unsigned long>(gen.errors));
    if (arrivals) std::printf(", dropped arrivals %lu", static_cast<unsigned long>(dropped));
    std::printf("\n");
    // (Said when it matters: a closed loop always ends with its calls in flight.)
    if (gen.unfinished > 0 || (gen.completedAfterEnd > 0 && gen.completedAfterEnd * 100 >= gen.completed))
        std::printf("after the measured %.2f s: %lu calls finished (in the round trips and the table below, not in "
                    "the rate), %lu were still in flight %s and ended unfinished%s\n",
                    seconds, static_cast<unsigned long>(gen.completedAfterEnd),
                    static_cast<unsigned long>(gen.unfinished),
                    interrupted ? "when the run was interrupted" : (fixedOrNa(o.drainS, false, 1) + " s later").c_str(),
                    stuck > 0 ? " (failures: they went unanswered)" : "");
    if (o.warmupS > 0)
        std::printf("warm-up: %s; its calls are left out of the figures above and below: %lu completed, %lu failed "
                    "(counted as failures), %lu refused\n",
                    gen.measured() ? (fixedOrNa(o.warmupS, false, 1) + " s").c_str() : "interrupted, nothing was measured",
                    static_cast<unsigned long>(gen.warmupCalls), static_cast<unsigned long>(gen.warmupErrors),
                    static_cast<unsigned long>(gen.warmupRefused));
    if (gen.refused > 0 && !arrivals)
        std::printf("refused %lu calls: the client's memory for messages in flight was full (they were started "
                    "again as calls finished)\n",
                    static_cast<unsigned long>(gen.refused));
    if (arrivals) {
        const double asked = arrivalsPerSecond(o, sizes);
        // (Refusals of calls started in the warm-up are counted there, not here.)
        const uint64_t started = arrivals->issued() - refusedArrivals;
        std::printf("arrivals: %lu due (%.0f a second asked), %lu started calls, %lu skipped (--client-max %d calls "
                    "in flight), %lu late (due before the end, never reached), %lu refused (the client's memory for "
                    "messages in flight was full; dropped, not started again)\n",
                    static_cast<unsigned long>(arrivals->offered()), asked,
                    static_cast<unsigned long>(started),
                    static_cast<unsigned long>(arrivals->skipped()), o.clientMax,
                    static_cast<unsigned long>(arrivals->late()), static_cast<unsigned long>(refusedArrivals));
        std::printf("generator lag (how late arrivals were started): mean %.1f us, max %.1f us\n",
                    arrivals->lagMeanUs(), arrivals->lagMaxUs());
        if (arrivals->offered() > 0 && static_cast<double>(started) < 0.95 * static_cast<double>(arrivals->offered()))
            std::printf("warning: the load offered was well below %g Gbps: %.1f%% of the arrivals started calls "
                        "(%.0f a second of the %.0f asked)\n",
                        o.gbps, 100.0 * static_cast<double>(started) / static_cast<double>(arrivals->offered()),
                        static_cast<double>(started) / seconds, asked);
    }
    std::printf("rtt p50 %s us, p99 %s us, p99.9 %s us\n", fixedOrNa(p50, none, 1).c_str(),
                fixedOrNa(p99, none, 1).c_str(), fixedOrNa(p999, none, 1).c_str());
    // (Open loop: the round trips leave out how late each call started; this does not.)
    const bool noDue = gen.fromDue.empty();
    const double d50 = gen.fromDue.percentile(50) / 1e3, d99 = gen.fromDue.percentile(99) / 1e3,
                 d999 = gen.fromDue.percentile(99.9) / 1e3;
    if (arrivals)
        std::printf("latency from each arrival's due time (rtt + generator lag): p50 %s us, p99 %s us, p99.9 %s us\n",
                    fixedOrNa(d50, noDue, 1).c_str(), fixedOrNa(d99, noDue, 1).c_str(), fixedOrNa(d999, noDue, 1).c_str());
    // The whole process: with `local`, the server's threads too.
    const double cpuUsPerRpc = gen.rtts.empty() ? 0 : (cpu.userS + cpu.systemS) * 1e6 / static_cast<double>(gen.rtts.count());
    std::printf("cpu %.2f us per RPC (process: user %.2f s, system %.2f s, %.0f%% of one core)\n", cpuUsPerRpc,
                cpu.userS, cpu.systemS, runSeconds > 0 ? (cpu.userS + cpu.systemS) / runSeconds * 100 : 0.0);
    if (gen.errors > 0) {
        std::printf("first error: %s\n", gen.firstError.c_str());
        std::string kinds;
        for (const auto& [kind, n] : gen.errorsByKind)
            kinds += (kinds.empty() ? "" : ", ") + kind + " " + std::to_string(n);
        std::printf("errors by kind: %s\n", kinds.c_str());
    }
    std::printf("%12s %10s %12s %12s %14s %14s\n", "size <=", "count", "rtt p50 us", "rtt p99 us", "slowdown p50",
                "slowdown p99");
    for (const Bucket& b : buckets)
        std::printf("%12u %10lu %12s %12s %14s %14s\n", b.maxSize, static_cast<unsigned long>(b.count),
                    fixedOrNa(b.rttP50Us, b.count == 0, 1).c_str(), fixedOrNa(b.rttP99Us, b.count == 0, 1).c_str(),
                    fixedOrNa(b.slowdownP50, b.count == 0, 2).c_str(), fixedOrNa(b.slowdownP99, b.count == 0, 2).c_str());
    std::printf("(slowdown = RTT / (base RTT + (request + response bytes) * 8 / %g Gbps))\n", o.linkGbps);
    MetricsSnapshot diff = after - before;
    if (o.metrics && metrics) printMetrics("client", diff);

    if (!o.json.empty()) {
        json j;
        j["tool"] = "homa-perf";
        j["schema"] = 1;
        std::vector<std::string> serverNames;
        for (const Address& a : servers) serverNames.push_back(a.toString());
        const HomaTransportOptions homa = homaOptions(o, messageLimit(o, &sizes));
        j["options"] = {{"role", o.role},
                        {"protocol", o.protocol},
                        {"workload", o.workload},
                        {"max_length", o.maxLength},
                        {"capped", sizes.isCapped()},
                        {"client_max", o.clientMax},
                        {"gbps", o.gbps},
                        {"calls", usesSyncCalls(o, transport) ? "sync" : "async"},
                        {"one_way", o.oneWay},
                        {"duration_s", o.duration},
                        {"warmup_s", o.warmupS},
                        {"drain_s", o.drainS},
                        {"max_error_rate", o.maxErrorRate},
                        {"tcp_conns", o.tcpConnections},
                        {"tcp_threads", o.tcpThreads},
                        {"mtu", o.mtu},
                        {"busy_poll_us", o.busyPollUs},
                        {"adaptive_poll_us", o.adaptivePollUs},
                        {"engine_cpu_time", homa.engineCpuTime},
                        {"unsched_bytes", o.unschedBytes},
                        {"max_incoming", o.maxIncoming},
                        {"overcommit", o.overcommit},
                        {"buffer_mb", o.bufferMb},
                        {"send_buffer_mb", o.sendBufferMb},
                        {"seed", o.seed},
                        {"servers", serverNames},
                        {"link_gbps", o.linkGbps},
                        {"nic_queue_us", homa.protocol.maxNicQueueNs / 1000.0}};
        // What the server of `local` ran with (a separate server's options are its own).
        if (o.role == "local")
            j["options"]["server"] = {{"ports", o.serverPorts},
                                      {"threads", o.serverThreads},
                                      {"work_us", o.serverWorkUs},
                                      {"max_pending", o.maxPending}};
        j["machine"] = machineInfo();
        j["base_rtt_us"] = model.baseRttUs;
        j["base_rtt_measured"] = measured;
        // How it was measured: "sync" (synchronous calls on the measuring thread) or
        // "callback" (through the transport's thread, two wake-ups more); "given".
        j["base_rtt_method"] = !measured ? "given" : baseSynchronous ? "sync" : "callback";
        // Slowdown = RTT / (base_rtt_us + these bytes * 8 / link_gbps): both messages.
        j["slowdown_bytes"] = kSlowdownBytes;
        j["intervals"] = gen.intervals;
        // The warm-up's per-second figures and calls, left out of every other figure.
        j["warmup"] = {{"seconds", o.warmupS},        {"completed", gen.measured()},
                       {"rpcs", gen.warmupCalls},      {"errors", gen.warmupErrors},
                       {"refused", gen.warmupRefused}, {"intervals", gen.warmupIntervals}};
        j["totals"] = {{"rpcs", gen.completed}, {"completed_after_end", gen.completedAfterEnd},
                       {"unfinished", gen.unfinished}, {"seconds", seconds}, {"kops", kops},
                       {"gbps_out", gen.bytesOut * 8 / seconds / 1e9}, {"gbps_in", gen.bytesIn * 8 / seconds / 1e9},
                       {"errors", gen.errors}, {"errors_by_kind", gen.errorsByKind},
                       // Errors plus calls unanswered --drain seconds after the end (see above).
                       {"failed", failed},
                       {"arrivals_due", arrivals ? json(arrivals->offered()) : json(nullptr)},
                       {"skipped_arrivals", arrivals ? arrivals->skipped() : 0},
                       {"late_arrivals", arrivals ? arrivals->late() : 0},
                       {"refused_arrivals", refusedArrivals}, {"dropped_arrivals", dropped},
                       {"generator_lag_mean_us", orNull(arrivals ? arrivals->lagMeanUs() : 0, !arrivals)},
                       {"generator_lag_max_us", orNull(arrivals ? arrivals->lagMaxUs() : 0, !arrivals)},
                       {"refused", gen.refused}, {"rtt_p50_us", orNull(p50, none)}, {"rtt_p99_us", orNull(p99, none)},
                       {"rtt_p999_us", orNull(p999, none)},
                       {"latency_from_due_p50_us", orNull(d50, noDue)},
                       {"latency_from_due_p99_us", orNull(d99, noDue)},
                       {"latency_from_due_p999_us", orNull(d999, noDue)}, {"cpu_us_per_rpc", cpuUsPerRpc},
                       {"cpu_user_s", cpu.userS}, {"cpu_system_s", cpu.systemS},
                       {"interrupted", interrupted != 0}};
        json jb = json::array();
        for (const Bucket& b : buckets) {
            const bool empty = b.count == 0;
            jb.push_back({{"max_size", b.maxSize}, {"count", b.count}, {"rtt_p50_us", orNull(b.rttP50Us, empty)},
                          {"rtt_p99_us", orNull(b.rttP99Us, empty)}, {"slowdown_p50", orNull(b.slowdownP50, empty)},
                          {"slowdown_p99", orNull(b.slowdownP99, empty)},
                          // (Open loop only: null for a closed loop, whose calls have no due time.)
                          {"latency_from_due_p99_us", orNull(b.fromDueP99Us, b.fromDueCount == 0)}});
        }
        j["buckets"] = jb;
        if (metrics) {
            json jm = json::object();
            for (const auto& [name, value] : diff.counters) jm[name] = value;
            j["metrics"] = jm;
        }
        std::ofstream f(o.json);
        if (!f) {
            std::fprintf(stderr, "homa-perf: cannot write %s\n", o.json.c_str());
            return 1;
        }
        f << j.dump(2) << "\n";
    }
    if (gen.rtts.empty()) {
        std::fprintf(stderr, "homa-perf: no call completed%s\n",
                     gen.errors > 0 ? (" (" + std::to_string(gen.errors) + " failed, first: " + gen.firstError + ")").c_str()
                                    : "");
        return 1;
    }
    if (tooManyErrors(failed, ended, o.maxErrorRate)) {
        char unanswered[96] = "";
        if (stuck > 0)
            std::snprintf(unanswered, sizeof(unanswered), ", %lu of them unanswered %g s after the end (--drain)",
                          static_cast<unsigned long>(stuck), o.drainS);
        std::fprintf(stderr,
                     "homa-perf: failed: %lu of the %lu calls that ended failed%s (%.2f%%; --max-error-rate %g)\n",
                     static_cast<unsigned long>(failed), static_cast<unsigned long>(ended), unanswered,
                     100.0 * static_cast<double>(failed) / static_cast<double>(ended), o.maxErrorRate);
        return 1;
    }
    return 0;
}

std::vector<Address> parseServers(const std::vector<std::string>& s) {
    std::vector<Address> v;
    for (const auto& x : s) v.push_back(*Address::parse(x));
    return v;
}

Address bindAddress(const PerfOptions& o) {
    Address a = *Address::parse(o.bind);
    a.port = o.port;
    return a;
}

}  // namespace

void requestStop() {
    interrupted = 1;
}

std::string errorKind(const std::string& error) {
    // (": ", not ':': addresses have colons of their own.)
    std::string kind = error.substr(0, error.find(": "));
    return kind.empty() ? "unknown" : kind;
}

/// TCP's server works on a connection's requests one at a time, on the epoll thread
/// that reads them; Homa's handler threads take any request. With server work and fewer
/// connections than server threads, TCP's work runs on fewer threads than Homa's: said,
/// not hidden. `connections`: the client's in all (0: unknown, a separate server).
void noteTcpServerWork(const PerfOptions& o, int connections) {
    if (o.protocol != "tcp" || o.serverWorkUs <= 0 || o.serverThreads <= 1) return;
    if (connections == 0) {
        std::printf("note: TCP works on each connection's requests one at a time: clients need %d connections in "
                    "all (--tcp-conns) to keep the %d server threads working, as Homa's handler threads are\n",
                    o.serverThreads, o.serverThreads);
    } else if (connections < o.serverThreads) {
        std::printf("note: TCP works on each connection's requests one at a time: with %d connection%s, at most %d "
                    "of the %d server threads work at once (Homa's handler threads take any request); "
                    "--tcp-conns %d evens it\n",
                    connections, connections == 1 ? "" : "s", connections, o.serverThreads,
                    (o.serverThreads + o.serverPorts - 1) / o.serverPorts);
    }
}

int runServer(const PerfOptions& o) {
    interrupted = 0;
    ServerSide s;
    std::string error;
    if (!startServer(o, bindAddress(o), messageLimit(o, nullptr), &s, &error)) {
        std::fprintf(stderr, "homa-perf: %s\n", error.c_str());
        return 1;
    }
    std::printf("homa-perf server: %s on", o.protocol.c_str());
    for (const Address& a : s.transport->addresses()) std::printf(" %s", a.toString().c_str());
    if (o.protocol == "tcp")
        std::printf(" (%d epoll thread%s for all ports", o.serverThreads, o.serverThreads == 1 ? "" : "s");
    else
        std::printf(" (%d thread%s per port", o.serverThreads, o.serverThreads == 1 ? "" : "s");
    std::printf(", messages up to %u bytes)\n", o.maxLength);
    noteTcpServerWork(o, 0);
    std::fflush(stdout);
    MetricsSnapshot before;
    if (s.metrics) before = s.metrics();
    std::signal(SIGINT, [](int) { requestStop(); });
    std::signal(SIGTERM, [](int) { requestStop(); });
    while (!interrupted) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (o.metrics && s.metrics) printMetrics("server", s.metrics() - before);
    std::printf("homa-perf server: served %lu requests\n", static_cast<unsigned long>(s.transport->served()));
    s.transport->stop();
    return 0;
}

int runClient(const PerfOptions& o) {
    interrupted = 0;
    std::signal(SIGINT, [](int) { requestStop(); });
    const std::optional<workload::Distribution> sizes = workloadSizes(o);
    if (!sizes) return 2;
    return clientAgainst(o, parseServers(o.servers), *sizes);
}

int runClientWith(const PerfOptions& o, ClientTransport& transport, const std::vector<Address>& servers,
                  const workload::Distribution& sizes) {
    interrupted = 0;
    if (!jsonWritable(o.json)) return 1;
    return loadThrough(o, transport, servers, sizes, {});
}

std::string localServerBind(const std::string& bind) {
    const std::optional<Address> a = Address::parse(bind);
    if (!a) return bind;
    if (a->isIpv4()) return a->ipv4Host() == 0 ? "127.0.0.1" : bind;
    return std::all_of(a->ip.begin(), a->ip.end(), [](uint8_t b) { return b == 0; }) ? "::1" : bind;
}

int runLocal(const PerfOptions& o) {
    interrupted = 0;
    PerfOptions so = o;
    so.bind = localServerBind(o.bind);
    const std::optional<workload::Distribution> sizes = workloadSizes(o);
    if (!sizes) return 2;
    ServerSide s;
    std::string error;
    if (!startServer(so, bindAddress(so), messageLimit(o, &*sizes), &s, &error)) {
        std::fprintf(stderr, "homa-perf: %s\n", error.c_str());
        return 1;
    }
    std::signal(SIGINT, [](int) { requestStop(); });
    noteTcpServerWork(o, o.tcpConnections * o.serverPorts);
    MetricsSnapshot before;
    int rc = clientAgainst(o, s.transport->addresses(), *sizes, [&] {
        if (s.metrics) before = s.metrics();
    });
    if (o.metrics && s.metrics) printMetrics("server", s.metrics() - before);
    s.transport->stop();
    return rc;
}

namespace {

/// One run's line on the plot, from its JSON; false with the reason if it is not
/// homa-perf's JSON (of any shape: a value of the wrong type is an error, not a crash).
bool plotLineOf(const std::string& input, tools::PlotLine* line, std::string* why) {
    json options;
    *why = tools::readSlowdownJson(input, "homa-perf", line, &options);
    if (!why->empty()) return false;
    try {
        line->label = options.value("protocol", "?") + " " + options.value("workload", "?");
        char load[64];
        if (options.value("gbps", 0.0) > 0)
            std::snprintf(load, sizeof(load), " %.2f Gbps", options.value("gbps", 0.0));
        else
            std::snprintf(load, sizeof(load), " %d outstanding", options.value("client_max", 0));
        line->label += load;
    } catch (const json::exception& e) {
        *why = e.what();
        return false;
    }
    return true;
}

}  // namespace

int runPlot(const PerfOptions& o) {
    std::vector<tools::PlotLine> lines;
    for (const std::string& input : o.inputs) {
        tools::PlotLine line;
        std::string why;
        if (!plotLineOf(input, &line, &why)) {
            std::fprintf(stderr, "homa-perf plot: %s is not homa-perf JSON (%s)\n", input.c_str(), why.c_str());
            return 1;
        }
        lines.push_back(std::move(line));
    }
    const std::string error = tools::plotSlowdown(lines, o.output, o.title);
    if (!error.empty()) {
        std::fprintf(stderr, "homa-perf plot: %s\n", error.c_str());
        return 1;
    }
    std::printf("wrote %s\n", o.output.c_str());
    return 0;
}

}  // namespace homa::perf
