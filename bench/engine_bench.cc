// CPU cost of the protocol engine alone: no sockets, no simulator, no clock reads.
//
// Engines are driven directly with packets held in memory (PacketQueue) and a virtual
// time that the benchmark moves forward itself, so what is measured is the engine's own
// work plus one copy of each packet, the least any runtime would add.
//
// Besides time, the engine benchmarks report heap allocations per operation, counted by
// the replaced operator new in alloc_counter.h after a warm-up: the engine is meant to
// reach a steady state in which it reuses RPCs, buffers and container capacity, and an
// allocation there is a regression even when the time still looks good.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "alloc_counter.h"
#include "engine/config.h"
#include "engine/engine.h"
#include "engine/nic_queue.h"
#include "homa/address.h"
#include "packet_queue.h"
#include "wire/wire.h"

namespace homa::bench {
namespace {

using engine::Config;
using engine::Delivery;
using engine::Engine;
using engine::Time;

// On a shared machine, other processes only ever add time: the fastest repetition is the
// best estimate of the engine's own cost, so it is reported next to the median.
double minimum(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

constexpr uint16_t kPort = 4000;

Address hostAddress(uint32_t i) { return Address::ipv4(0x0a000000u + i, kPort); }

// Page faults are counted next to allocations: a harness that touches fresh memory in
// its measured loop shows up here, and its figures would be the kernel's, not the engine's.
uint64_t minorFaults() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<uint64_t>(usage.ru_minflt);
}

Config benchConfig() {
    Config c;
    c.port = kPort;
    return c;
}

/// Hands every packet one engine queued to another as one receive batch, the way a
/// runtime hands over what one recvmmsg() returned.
void deliverBatch(PacketQueue& from, Engine& to, const Address& source, Time now) {
    if (from.empty()) return;
    for (size_t i = 0; i < from.size(); ++i) to.handlePacket(source, from[i].view(), now);
    from.clear();
    to.finishBatch(now);
}

// ------------------------------------------------------------------ small RPC

/// A client engine and a server engine joined back to back, with an application on
/// each side that answers and releases everything at once.
class RpcPair {
  public:
    /// Virtual time per RPC. With the default 1 ms tick, timers run every 1,000 RPCs,
    /// so the steady state includes tick work (ack flushing) at a realistic rate.
    static constexpr Time kStepNs = 1'000;
    static constexpr size_t kMessageBytes = 64;

    explicit RpcPair(const Config& config)
        : client_(config, clientOut_), server_(config, serverOut_) {
        for (size_t i = 0; i < kMessageBytes; ++i) {
            request_[i] = static_cast<uint8_t>(i);
            response_[i] = static_cast<uint8_t>(255 - i);
        }
    }

    /// One complete RPC, up to the client releasing the response. Returns false, with
    /// error() set, if the engines did anything but complete it. Out of line so that an
    /// instruction-counting profiler (callgrind) can attribute its cost per call.
    __attribute__((noinline)) bool oneRpc() {
        now_ += kStepNs;
        runDueTimers();

        uint64_t id = 0;
        if (!client_.startRequest(serverAddress_, request_, ++cookie_, now_, &id).isOk())
            return fail("startRequest failed");
        deliverBatch(clientOut_, server_, clientAddress_, now_);

        // Deliveries are read in place, as the runtime reads them.
        const Delivery* d = server_.peekDelivery();
        if (d == nullptr || d->kind != Delivery::Kind::Request) return fail("the server did not deliver the request");
        const engine::ReceivedMessage request = d->message;
        const engine::ServerRpcId rpc = d->server;
        server_.popDelivery();
        if (request.length != kMessageBytes) return fail("the request arrived with a wrong length");
        if (!server_.sendResponse(rpc, response_, now_).isOk()) return fail("sendResponse failed");
        server_.releaseMessage(request, now_);
        deliverBatch(serverOut_, client_, serverAddress_, now_);

        d = client_.peekDelivery();
        if (d == nullptr || d->kind != Delivery::Kind::Response || d->cookie != cookie_ || d->clientId != id)
            return fail("the client did not deliver the response");
        const engine::ReceivedMessage response = d->message;
        client_.popDelivery();
        if (response.length != kMessageBytes) return fail("the response arrived with a wrong length");
        client_.releaseMessage(response, now_);

        // Whatever else was sent (CUTOFFS, ACK, NEED_ACK) crosses over too.
        settle();
        if (client_.hasDeliveries() || server_.hasDeliveries()) return fail("unexpected delivery");
        return true;
    }

    /// Moves time past the next tick so that pending acks are flushed and the server can
    /// free the last RPC: after this, a correct engine pair holds no RPC at all.
    void drain() {
        for (int i = 0; i < 3; ++i) {
            now_ += client_.config().tickNs;
            client_.advance(now_);
            server_.advance(now_);
            settle();
        }
    }

    Engine& client() { return client_; }
    Engine& server() { return server_; }
    const std::string& error() const { return error_; }
    uint64_t sinkOverflows() const { return clientOut_.overflowed() + serverOut_.overflowed(); }

  private:
    // A runtime calls advance() once the engine's wake-up time has passed; so do we.
    void runDueTimers() {
        if (now_ >= client_.nextWakeup()) client_.advance(now_);
        if (now_ >= server_.nextWakeup()) server_.advance(now_);
        settle();
    }

    void settle() {
        // Bounded: a ping-pong that never ends would be a protocol bug, not a workload.
        for (int round = 0; round < 8 && !(clientOut_.empty() && serverOut_.empty()); ++round) {
            deliverBatch(clientOut_, server_, clientAddress_, now_);
            deliverBatch(serverOut_, client_, serverAddress_, now_);
        }
    }

    bool fail(const char* what) {
        if (error_.empty()) error_ = what;
        return false;
    }

    PacketQueue clientOut_{16};
    PacketQueue serverOut_{16};
    Engine client_;
    Engine server_;
    const Address clientAddress_ = hostAddress(1);
    const Address serverAddress_ = hostAddress(2);
    std::array<uint8_t, kMessageBytes> request_{};
    std::array<uint8_t, kMessageBytes> response_{};
    Delivery delivery_;
    Time now_ = 1'000'000'000;
    uint64_t cookie_ = 0;
    std::string error_;
};

void BM_SmallRpc(benchmark::State& state) {
    RpcPair pair(benchConfig());
    // Long enough to cross many ticks, so one-off growth (hash tables, free lists, the
    // buffer pool's cache, the at-most-once window) is behind us when counting starts.
    for (int i = 0; i < 50'000; ++i) {
        if (!pair.oneRpc()) {
            state.SkipWithError(("warm-up: " + pair.error()).c_str());
            return;
        }
    }
    const engine::EngineMetrics serverBefore = pair.server().metrics();
    const uint64_t faultsBefore = minorFaults();
    const uint64_t allocsBefore = allocationCount();
    {
        AllocHookScope hook;
        for (auto _ : state) {
            if (!pair.oneRpc()) {
                state.SkipWithError(pair.error().c_str());
                return;
            }
        }
    }
    const uint64_t allocs = allocationCount() - allocsBefore;
    const uint64_t faults = minorFaults() - faultsBefore;
    const engine::EngineMetrics& server = pair.server().metrics();
    const double rpcs = static_cast<double>(state.iterations());

    state.SetItemsProcessed(state.iterations());
    state.counters["allocs_per_rpc"] = benchmark::Counter(static_cast<double>(allocs), benchmark::Counter::kAvgIterations);
    state.counters["faults_per_rpc"] = benchmark::Counter(static_cast<double>(faults), benchmark::Counter::kAvgIterations);
    // acks_freed: server RPCs freed by an ack, per RPC (1 when nothing leaks).
    // acks_piggybacked: acks that rode on the next request rather than in an ACK packet
    // sent at a tick.
    state.counters["acks_piggybacked"] = static_cast<double>(server.acksPiggybacked - serverBefore.acksPiggybacked) / rpcs;
    state.counters["acks_freed"] = static_cast<double>(server.serverRpcsAcked - serverBefore.serverRpcsAcked) / rpcs;
    // State left after the measured RPCs, before and after a final tick: the steady state
    // is real only if nothing accumulates.
    state.counters["server_rpcs_open"] = static_cast<double>(pair.server().rpcCount());
    pair.drain();
    state.counters["rpcs_left_after_tick"] = static_cast<double>(pair.client().rpcCount() + pair.server().rpcCount());
    // The server's admission-control count of requests not yet answered: must return to 0.
    state.counters["pending_left_after_tick"] = static_cast<double>(pair.server().pendingRequests());
    if (pair.sinkOverflows() != 0) state.SkipWithError("the packet queue overflowed");
}
BENCHMARK(BM_SmallRpc)->ComputeStatistics("min", minimum);

// ------------------------------------------------------------------ large message

/// One RPC with a 1 MB request and an 8-byte response (homa-perf --one-way): the cost of
/// the data path per DATA packet, on both sides, with grants and pacing.
class LargeRpc {
  public:
    static constexpr size_t kRequestBytes = 1'000'000;
    /// Virtual time per exchange of batches: the pacer releases what the link carried.
    static constexpr Time kStepNs = 5'000;

    explicit LargeRpc(const Config& config)
        : request_(kRequestBytes), client_(config, clientOut_), server_(config, serverOut_) {
        for (size_t i = 0; i < kRequestBytes; ++i) request_[i] = static_cast<uint8_t>(i * 7);
    }

    __attribute__((noinline)) bool oneRpc() {
        uint64_t id = 0;
        if (!client_.startRequest(serverAddress_, request_, ++cookie_, now_, &id).isOk())
            return fail("startRequest failed");
        for (int round = 0; round < 100'000; ++round) {
            deliverBatch(clientOut_, server_, clientAddress_, now_);
            while (server_.pollDelivery(delivery_)) {
                if (delivery_.kind != Delivery::Kind::Request || delivery_.message.length != kRequestBytes)
                    return fail("the server delivered something else");
                const engine::ReceivedMessage request = delivery_.message;
                if (!server_.sendResponse(delivery_.server, response_, now_).isOk())
                    return fail("sendResponse failed");
                server_.releaseMessage(request, now_);
            }
            deliverBatch(serverOut_, client_, serverAddress_, now_);
            while (client_.pollDelivery(delivery_)) {
                if (delivery_.kind != Delivery::Kind::Response || delivery_.clientId != id)
                    return fail("the client delivered something else");
                client_.releaseMessage(delivery_.message, now_);
                return true;
            }
            now_ += kStepNs;
            if (now_ >= client_.nextWakeup()) client_.advance(now_);
            if (now_ >= server_.nextWakeup()) server_.advance(now_);
        }
        return fail("the RPC did not complete");
    }

    Engine& server() { return server_; }
    const std::string& error() const { return error_; }
    uint64_t sinkOverflows() const { return clientOut_.overflowed() + serverOut_.overflowed(); }

  private:
    bool fail(const char* what) {
        if (error_.empty()) error_ = what;
        return false;
    }

    std::vector<uint8_t> request_;
    PacketQueue clientOut_{1024};
    PacketQueue serverOut_{1024};
    Engine client_;
    Engine server_;
    const Address clientAddress_ = hostAddress(1);
    const Address serverAddress_ = hostAddress(2);
    std::array<uint8_t, 8> response_{};
    Delivery delivery_;
    Time now_ = 1'000'000'000;
    uint64_t cookie_ = 0;
    std::string error_;
};

void BM_LargeRpc(benchmark::State& state) {
    LargeRpc rpc(benchConfig());
    for (int i = 0; i < 20; ++i) {
        if (!rpc.oneRpc()) {
            state.SkipWithError(("warm-up: " + rpc.error()).c_str());
            return;
        }
    }
    const uint64_t packetsBefore = rpc.server().metrics().packetsReceived[0];
    for (auto _ : state) {
        if (!rpc.oneRpc()) {
            state.SkipWithError(rpc.error().c_str());
            return;
        }
    }
    const double packets = static_cast<double>(rpc.server().metrics().packetsReceived[0] - packetsBefore);
    state.SetItemsProcessed(state.iterations());
    // Both engines' work (and one copy of each packet) per DATA packet received.
    state.counters["ns_per_data_packet"] = benchmark::Counter(
        packets / static_cast<double>(state.iterations()), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
    state.counters["data_packets_per_rpc"] = packets / static_cast<double>(state.iterations());
    if (rpc.sinkOverflows() != 0) state.SkipWithError("the packet queue overflowed");
}
BENCHMARK(BM_LargeRpc)->ComputeStatistics("min", minimum);

// ------------------------------------------------------------------ grant decision

/// A receiving engine with many large incoming requests, fed by a model of their senders
/// that sends one packet per granted packet, the way Homa senders do.
///
/// The n messages start as a backlog of 1 MB requests. When a message completes, its
/// sender starts a shorter one (500 kB) in its place, so n stays constant however long
/// the benchmark runs, and SRPT keeps serving the replacements while the backlog mostly
/// waits.
/// Why not equal lengths: the scheduler would then work through the whole backlog
/// oldest-first, and each batch would copy its packet into a 1 MB buffer nobody had
/// touched yet; the benchmark would measure the kernel faulting in n MB of fresh pages
/// (several microseconds per batch here), not the grant decision.
class GrantBench {
  public:
    /// The senders modelled here never answer a RESEND, so the receiver must never drop
    /// their data for want of a buffer. When it does, the message it resumes later lacks
    /// the dropped bytes and never completes, and the RESEND itself is not a GRANT: both
    /// would be reported as errors of their own, so this, their cause, is reported first.
    static constexpr const char* kBufferWait = "a message waited for a receive buffer (the pool is too small)";
    static constexpr uint32_t kBacklogLength = 1'000'000;
    static constexpr uint32_t kReplacementLength = 500'000;
    // The low bits of a client id name the harness's slot, so a GRANT is mapped back to its
    // message without a lookup table; the high bits come from one counter, so ids still
    // grow for every client, as the at-most-once window expects.
    static constexpr int kSlotBits = 20;

    GrantBench(uint32_t messages, uint32_t peers)
        : config_(makeConfig(messages)), out_(64), rx_(config_, out_), slots_(messages), ready_(messages + 1) {
        for (uint32_t p = 0; p < peers; ++p) peers_.push_back(hostAddress(100 + p));
        for (size_t i = wire::kDataHeaderSize; i < packet_.size(); ++i) packet_[i] = static_cast<uint8_t>(i * 7);
        // Every message has sent its one unscheduled packet; nothing else is in flight, so
        // what follows is decided by the grant scheduler alone.
        for (uint32_t s = 0; s < messages; ++s) {
            startMessage(s, kBacklogLength);
            sendData(s);
        }
        rx_.finishBatch(now_);
        takeGrants();
    }

    /// One receive batch: the next DATA packet of a granted message, then the decision.
    /// Out of line for the same reason as RpcPair::oneRpc().
    __attribute__((noinline)) bool oneBatch() {
        if (readyCount_ == 0) return fail("no message may send: the scheduler stopped granting");
        uint32_t s = popReady();
        sendData(s);
        rx_.finishBatch(now_);
        takeGrants();
        if (slots_[s].sent == slots_[s].length) return replace(s);
        requeue(s);
        return true;
    }

    Engine& receiver() { return rx_; }
    bool bufferWaited() const { return rx_.metrics().bufferWaits != 0; }
    const std::string& error() const { return error_; }
    uint64_t completed() const { return completed_; }
    uint64_t otherPackets() const { return otherPackets_; }
    uint64_t sinkOverflows() const { return out_.overflowed(); }

  private:
    struct Slot {
        uint64_t clientId = 0;
        uint32_t length = 0;
        uint32_t sent = 0;
        uint32_t granted = 0;
        bool queued = false;
    };

    static Config makeConfig(uint32_t messages) {
        Config c = benchConfig();
        // Room for every message's buffer (1 MiB each) and some slack, so no message waits
        // for memory: a waiting message is not grantable and would shrink n, and the
        // RESEND that resumes it is not modelled (see kBufferWait). Large messages may not
        // use the share kept for single-packet ones, so the room is made outside it.
        const uint64_t room = (uint64_t{messages} + 64) << 20;
        c.maxBufferBytes = static_cast<uint64_t>(static_cast<double>(room) / (1 - c.smallMessageReserve));
        // The FIFO share would walk the backlog into fresh memory at 5% of the bytes (see
        // above). It costs one extra GRANT per ~700 batches when on; the ordered set it
        // needs (all n messages, oldest first) is maintained either way.
        c.grantFifoFraction = 0;
        return c;
    }

    void startMessage(uint32_t s, uint32_t length) {
        Slot& m = slots_[s];
        m.clientId = ((nextSequence_++ << kSlotBits) | s) << 1;
        m.length = length;
        m.sent = 0;
        m.granted = config_.maxPayload;  // the sender's unscheduled allowance: one packet
    }

    void sendData(uint32_t s) {
        Slot& m = slots_[s];
        const uint32_t length = std::min(config_.maxPayload, m.length - m.sent);
        wire::CommonHeader c;
        c.sport = kPort;
        c.dport = kPort;
        c.senderId = m.clientId;
        wire::DataHeader d;
        d.messageLength = m.length;
        d.incoming = m.granted;
        d.cutoffVersion = config_.cutoffVersion;
        d.offset = m.sent;
        // The header is rewritten in front of a payload that never changes.
        size_t n = wire::encodeData(std::span(packet_.data(), wire::kDataHeaderSize), c, d);
        rx_.handlePacket(peers_[s % peers_.size()], std::span<const uint8_t>(packet_.data(), n + length), now_);
        m.sent += length;
    }

    // The senders' side of the GRANTs the receiver just sent.
    void takeGrants() {
        for (size_t i = 0; i < out_.size(); ++i) {
            wire::Packet p;
            if (wire::decode(out_[i].view(), config_.maxMessageLength, p) != wire::DecodeError::Ok ||
                p.common.type != wire::PacketType::Grant) {
                ++otherPackets_;
                continue;
            }
            const uint64_t clientId = p.common.senderId ^ 1;
            Slot& m = slots_[(clientId >> 1) & ((uint64_t{1} << kSlotBits) - 1)];
            if (m.clientId != clientId) continue;  // for a message already replaced
            m.granted = std::max(m.granted, std::min(p.grant.offset, m.length));
            requeue(static_cast<uint32_t>(&m - slots_.data()));
        }
        out_.clear();
    }

    // A finished message is taken by the application and dropped unanswered (which frees
    // its RPC at once), and its sender starts the next one.
    bool replace(uint32_t s) {
        Delivery d;
        if (!rx_.pollDelivery(d) || d.kind != Delivery::Kind::Request) return fail("a complete message was not delivered");
        rx_.releaseMessage(d.message, now_);
        if (!rx_.abortServerRpc(d.server, now_).isOk()) return fail("abortServerRpc failed");
        ++completed_;
        startMessage(s, kReplacementLength);
        sendData(s);
        rx_.finishBatch(now_);
        takeGrants();
        requeue(s);
        return true;
    }

    void requeue(uint32_t s) {
        Slot& m = slots_[s];
        if (m.queued || m.granted <= m.sent) return;
        m.queued = true;
        ready_[readyTail_] = s;
        readyTail_ = (readyTail_ + 1) % ready_.size();
        ++readyCount_;
    }

    uint32_t popReady() {
        uint32_t s = ready_[readyHead_];
        readyHead_ = (readyHead_ + 1) % ready_.size();
        --readyCount_;
        slots_[s].queued = false;
        return s;
    }

    bool fail(const char* what) {
        if (error_.empty()) error_ = what;
        return false;
    }

    Config config_;
    PacketQueue out_;
    Engine rx_;
    std::vector<Address> peers_;
    std::vector<Slot> slots_;
    // Round-robin queue of messages with granted bytes not yet sent (each at most once).
    std::vector<uint32_t> ready_;
    size_t readyHead_ = 0, readyTail_ = 0, readyCount_ = 0;
    std::array<uint8_t, PacketQueue::kMaxPacket> packet_{};
    uint64_t nextSequence_ = 1;
    // Time stands still: timers (RESEND, timeouts), which would walk every RPC once per
    // tick by design, are not what this benchmark measures.
    Time now_ = 1'000'000'000;
    uint64_t completed_ = 0;
    uint64_t otherPackets_ = 0;
    std::string error_;
};

void BM_GrantDecision(benchmark::State& state) {
    const auto messages = static_cast<uint32_t>(state.range(0));
    const auto peers = static_cast<uint32_t>(state.range(1));
    GrantBench bench(messages, peers);
    for (int i = 0; i < 20'000; ++i) {
        if (!bench.oneBatch()) {
            state.SkipWithError(bench.bufferWaited() ? GrantBench::kBufferWait : ("warm-up: " + bench.error()).c_str());
            return;
        }
    }
    const uint64_t grantsBefore = bench.receiver().metrics().grantsSent;
    const uint64_t completedBefore = bench.completed();
    const uint64_t faultsBefore = minorFaults();
    const uint64_t allocsBefore = allocationCount();
    {
        AllocHookScope hook;
        for (auto _ : state) {
            if (!bench.oneBatch()) {
                state.SkipWithError(bench.bufferWaited() ? GrantBench::kBufferWait : bench.error().c_str());
                return;
            }
        }
    }
    const double batches = static_cast<double>(state.iterations());
    state.SetItemsProcessed(state.iterations());
    state.counters["allocs_per_batch"] = benchmark::Counter(static_cast<double>(allocationCount() - allocsBefore), benchmark::Counter::kAvgIterations);
    state.counters["faults_per_batch"] = benchmark::Counter(static_cast<double>(minorFaults() - faultsBefore), benchmark::Counter::kAvgIterations);
    state.counters["grants_per_batch"] = static_cast<double>(bench.receiver().metrics().grantsSent - grantsBefore) / batches;
    state.counters["msgs_done_per_batch"] = static_cast<double>(bench.completed() - completedBefore) / batches;
    // The active set of the last decision and the RPCs held: n must not have drifted.
    state.counters["active"] = bench.receiver().activeGrants();
    state.counters["rpcs"] = static_cast<double>(bench.receiver().rpcCount());
    state.counters["pending"] = static_cast<double>(bench.receiver().pendingRequests());
    if (bench.bufferWaited()) state.SkipWithError(GrantBench::kBufferWait);
    if (bench.receiver().rpcCount() != messages) state.SkipWithError("the number of incoming messages drifted");
    if (bench.otherPackets() != 0) state.SkipWithError("the receiver sent something other than GRANTs");
    if (bench.sinkOverflows() != 0) state.SkipWithError("the packet queue overflowed");
}
// {messages, peers}: one message per peer, and the same messages from ten peers (more than
// max_overcommit, so the active set is still full but each peer holds many messages).
BENCHMARK(BM_GrantDecision)
    ->Args({1'000, 1'000})
    ->Args({1'000, 10})
    ->Args({10'000, 10'000})
    ->Args({10'000, 10})
    ->ComputeStatistics("min", minimum);

// ------------------------------------------------------------------ NIC queue estimate

void BM_NicQueue(benchmark::State& state) {
    engine::NicQueue nic(25'000);
    Time now = 0;
    for (auto _ : state) {
        nic.sent(now, 1'538);
        benchmark::DoNotOptimize(nic.backlog(now));
        now += 400;  // a little faster than the link drains a full packet: a standing queue
    }
}
BENCHMARK(BM_NicQueue)->ComputeStatistics("min", minimum);

// ------------------------------------------------------------------ baselines
// Measured in the same run so that the engine's figures can be read as ratios on
// whatever machine runs them.

// What the sink adds per small RPC: copying two 120-byte DATA packets (56-byte header,
// 64-byte payload) into the reusable queue.
void BM_Baseline_SinkCopy2x120(benchmark::State& state) {
    PacketQueue queue(16);
    std::array<uint8_t, wire::kDataHeaderSize> header{};
    std::array<uint8_t, 64> payload{};
    const Address dest = hostAddress(2);
    for (auto _ : state) {
        queue.transmit(dest, 0, header, payload);
        queue.transmit(dest, 0, header, payload);
        benchmark::DoNotOptimize(queue[1].bytes.data());
        queue.clear();
        benchmark::ClobberMemory();
    }
}
BENCHMARK(BM_Baseline_SinkCopy2x120)->ComputeStatistics("min", minimum);

// A yardstick every C++ programmer has a feel for: one std::unordered_map insert and
// erase of a 64-bit key (one node allocation and free each time).
void BM_Baseline_UnorderedMapInsertErase(benchmark::State& state) {
    std::unordered_map<uint64_t, uint64_t> map;
    map.reserve(1024);
    for (uint64_t k = 0; k < 512; ++k) map.emplace(k * 2 + 1, k);  // a table that is not empty
    uint64_t key = 0;
    const uint64_t allocsBefore = allocationCount();
    for (auto _ : state) {
        key += 2;
        map.emplace(key, key);
        map.erase(key);
    }
    state.counters["allocs_per_op"] = benchmark::Counter(static_cast<double>(allocationCount() - allocsBefore), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_Baseline_UnorderedMapInsertErase)->ComputeStatistics("min", minimum);

}  // namespace
}  // namespace homa::bench

BENCHMARK_MAIN();
