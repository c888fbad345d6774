// Packet-level tests of the engine: two engines joined by a hand-operated wire, so each
// test controls exactly which packets arrive, when, and in what order.
#include "engine/engine.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include <cmath>
#include <functional>

#include <random>
#include <set>

namespace homa::engine {
namespace {

constexpr uint16_t kPort = 4000;
const Address kA = Address::ipv4(0x0a000001, kPort);
const Address kB = Address::ipv4(0x0a000002, kPort);

struct Sent {
    Address dest;
    uint8_t priority;
    std::vector<uint8_t> bytes;
    wire::Packet packet() const {
        wire::Packet p;
        EXPECT_EQ(wire::decode(bytes, 100'000'000, p), wire::DecodeError::Ok);
        return p;
    }
    wire::PacketType type() const { return packet().common.type; }
};

struct CaptureSink : PacketSink {
    std::vector<Sent> out;
    void transmit(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
                  std::span<const uint8_t> payload) override {
        Sent s{dest, priority, {header.begin(), header.end()}};
        s.bytes.insert(s.bytes.end(), payload.begin(), payload.end());
        out.push_back(std::move(s));
    }
    std::vector<Sent> take() { return std::exchange(out, {}); }
    const Sent& first(wire::PacketType t) const {
        for (auto& s : out)
            if (s.type() == t) return s;
        ADD_FAILURE() << "no packet of type " << wire::toString(t);
        static Sent none;
        return none;
    }
    size_t count(wire::PacketType t) const {
        size_t n = 0;
        for (auto& s : out) n += s.type() == t;
        return n;
    }
};

// Pacing off (an enormous NIC queue allowed) unless a test is about pacing, so that
// every test need not move time forward to see the unscheduled bytes go out.
Config baseConfig() {
    Config c;
    c.port = kPort;
    c.maxNicQueueNs = 1'000'000'000;
    return c;
}

// A server that remembers only 64 client ids exactly (its at-most-once window), and
// admits `maxPending` requests at a time (0: any number).
Config smallWindowServer(uint32_t maxPending = 0) {
    Config c = baseConfig();
    c.seenIdWindow = 64;
    c.maxPendingRequests = maxPending;
    return c;
}

// Two engines, A (normally the client) and B (normally the server).
struct Pair {
    Config cfgA, cfgB;
    CaptureSink sinkA, sinkB;
    Engine a, b;
    Time now = 1'000'000;

    explicit Pair(Config ca = baseConfig(), Config cb = baseConfig())
        : cfgA(ca), cfgB(cb), a(cfgA, sinkA), b(cfgB, sinkB) {}

    /// Delivers everything in flight, both ways, until quiet (or `limit` packets).
    int pump(int limit = 100'000) {
        int n = 0;
        while ((!sinkA.out.empty() || !sinkB.out.empty()) && n < limit) {
            for (auto& s : sinkA.take())
                if (s.dest == kB) { b.receive(kA, s.bytes, now); ++n; }
            for (auto& s : sinkB.take())
                if (s.dest == kA) { a.receive(kB, s.bytes, now); ++n; }
        }
        return n;
    }
    /// Delivers what A has sent so far to B, and nothing back (B's packets stay queued).
    void deliverAToB() {
        for (auto& s : sinkA.take())
            if (s.dest == kB) b.receive(kA, s.bytes, now);
    }
    /// Ticks and pumps until `done()` holds, at most `limit` ticks; returns the ticks run.
    template <class Done>
    int tickUntil(int limit, Done done) {
        int ticks = 0;
        while (ticks < limit && !done()) {
            tick();
            pump();
            ++ticks;
        }
        return ticks;
    }
    void tick(int ticks = 1) {
        for (int i = 0; i < ticks; ++i) {
            now += cfgA.tickNs;
            a.advance(now);
            b.advance(now);
            // As a host does at the end of each batch of work (acks due after a tick).
            a.sendDueAcks();
            b.sendDueAcks();
        }
    }
    uint64_t call(uint32_t length, uint64_t cookie = 0) {
        std::vector<uint8_t> req(length, 0xab);
        uint64_t id = 0;
        EXPECT_TRUE(a.startRequest(kB, req, cookie, now, &id).isOk());
        return id;
    }
    std::vector<Delivery> deliveries(Engine& e) {
        std::vector<Delivery> v;
        Delivery d;
        while (e.pollDelivery(d)) v.push_back(d);
        return v;
    }
    /// Pumps, then expects B to have been handed exactly one message, of `length`
    /// bytes, which it gives back.
    void expectOneMessageAtB(uint32_t length) {
        pump();
        auto d = deliveries(b);
        ASSERT_EQ(d.size(), 1u);
        EXPECT_EQ(d[0].message.length, length);
        b.releaseMessage(d[0].message, now);
    }
    /// Serves every pending request on B with a response of `length` bytes.
    int serveAll(uint32_t length) {
        int n = 0;
        for (auto& d : deliveries(b)) {
            EXPECT_EQ(d.kind, Delivery::Kind::Request);
            b.releaseMessage(d.message, now);
            std::vector<uint8_t> resp(length, 0xcd);
            EXPECT_TRUE(b.sendResponse(d.server, resp, now).isOk());
            ++n;
        }
        return n;
    }
    /// Runs `n` calls of `length` bytes each way to completion; returns the client's
    /// deliveries (their buffers still held).
    std::vector<Delivery> roundTrips(int n, uint32_t length) {
        for (int i = 0; i < n; ++i) call(length);
        pump();
        serveAll(length);
        pump();
        return deliveries(a);
    }
    /// Expects A to have been handed exactly `n` messages, all responses, which it gives back.
    void expectResponsesAtA(size_t n) {
        auto d = deliveries(a);
        EXPECT_EQ(d.size(), n);
        for (auto& x : d) {
            EXPECT_EQ(x.kind, Delivery::Kind::Response);
            if (x.message.data) a.releaseMessage(x.message, now);
        }
    }
    void releaseAll(Engine& e) {
        for (auto& d : deliveries(e))
            if (d.message.data) e.releaseMessage(d.message, now);
    }
    /// Pumps, then expects B to have been handed exactly one request, whose buffer it
    /// gives back; returns the request's id, for B's answer (or abort).
    ServerRpcId requestAtB() {
        pump();
        auto d = deliveries(b);
        EXPECT_EQ(d.size(), 1u);
        if (d.empty()) return {};
        b.releaseMessage(d[0].message, now);
        return d[0].server;
    }
    /// Answers the one request at B (10 bytes), pumps, and expects A to be handed that
    /// call's response (`clientId`), which it gives back.
    void answerAtB(uint64_t clientId) {
        ASSERT_TRUE(b.sendResponse(requestAtB(), std::vector<uint8_t>(10, 1), now).isOk());
        pump();
        auto done = deliveries(a);
        ASSERT_EQ(done.size(), 1u);
        ASSERT_EQ(done[0].clientId, clientId);
        a.releaseMessage(done[0].message, now);
    }
    /// Runs `n` calls one after another (so a server with room for one admits each).
    void oneAtATime(int n) {
        for (int i = 0; i < n; ++i) {
            call(100);
            pump();
            ASSERT_EQ(serveAll(50), 1) << i;
            pump();
            releaseAll(a);
        }
    }
    /// Ticks (at most timeoutTicks), answering every request B gets with 50 bytes, until
    /// A is handed something; returns what, and counts the ticks and requests served.
    std::vector<Delivery> tickUntilAnswered(int* ticks, int* served) {
        std::vector<Delivery> ended;
        *served = 0;
        *ticks = tickUntil(cfgA.timeoutTicks, [&] {
            *served += serveAll(50);
            return !(ended = deliveries(a)).empty();
        });
        return ended;
    }
};

// A client's DATA packet again, flagged as a request sent again (after RPC_UNKNOWN).
std::vector<uint8_t> restartedCopy(const Sent& original) {
    const wire::Packet pk = original.packet();
    wire::CommonHeader flagged = pk.common;
    flagged.flags = wire::kFlagRestarted;
    std::vector<uint8_t> bytes(wire::kMaxHeaderSize);
    bytes.resize(wire::encodeData(bytes, flagged, pk.data));
    bytes.insert(bytes.end(), pk.payload.begin(), pk.payload.end());
    return bytes;
}

std::vector<uint8_t> encode(const wire::CommonHeader& c, wire::PacketType t, uint32_t off = 0, uint32_t len = 0,
                            uint8_t prio = 0) {
    std::vector<uint8_t> buf(wire::kMaxHeaderSize);
    size_t n = 0;
    wire::CommonHeader h = c;
    h.type = t;
    if (t == wire::PacketType::Resend) n = wire::encodeResend(buf, h, {off, len, prio});
    else if (t == wire::PacketType::Grant) n = wire::encodeGrant(buf, h, {off, prio});
    else n = wire::encodeEmpty(buf, h);
    buf.resize(n);
    return buf;
}

wire::CommonHeader from(uint64_t senderId) {
    wire::CommonHeader c;
    c.sport = kPort;
    c.dport = kPort;
    c.senderId = senderId;
    return c;
}

// ---------------------------------------------------------------- sending

TEST(Engine, ClientIdsAreEvenAndUnique) {
    Pair p;
    uint64_t a = p.call(10), b = p.call(10), c = p.call(10);
    EXPECT_EQ(a % 2, 0u);
    EXPECT_LT(a, b);
    EXPECT_LT(b, c);
    EXPECT_EQ(b - a, 2u);
}

TEST(Engine, SmallRequestIsOneDataPacketAtTheTopUnscheduledPriority) {
    Pair p;
    uint64_t id = p.call(100);
    ASSERT_EQ(p.sinkA.out.size(), 1u);
    const Sent& s = p.sinkA.out[0];
    EXPECT_EQ(s.dest, kB);
    EXPECT_EQ(s.priority, 7);  // 100 <= cutoffs[7] = 200
    wire::Packet pk = s.packet();
    EXPECT_EQ(pk.common.type, wire::PacketType::Data);
    EXPECT_EQ(pk.common.senderId, id);
    EXPECT_EQ(pk.data.messageLength, 100u);
    EXPECT_EQ(pk.data.incoming, 100u);
    EXPECT_EQ(pk.data.offset, 0u);
    EXPECT_EQ(pk.payload.size(), 100u);
}

TEST(Engine, LargeRequestSendsOnlyUnscheduledBytesUntilGranted) {
    Pair p;
    p.call(100'000);
    const uint32_t payload = p.cfgA.maxPayload;
    const uint32_t unsched = (40'000 + payload - 1) / payload * payload;
    uint32_t bytes = 0;
    for (auto& s : p.sinkA.out) {
        wire::Packet pk = s.packet();
        EXPECT_EQ(s.priority, 4) << "100 KB messages use the cutoffs[4] level";
        EXPECT_EQ(pk.data.incoming, unsched);
        bytes += static_cast<uint32_t>(pk.payload.size());
    }
    EXPECT_EQ(bytes, unsched);
}

TEST(Engine, GrantsReleaseScheduledBytesAtTheGrantedPriority) {
    Pair p;
    p.call(300'000);
    auto first = p.sinkA.take();
    for (auto& s : first) p.b.handlePacket(kA, s.bytes, p.now);
    p.b.finishBatch(p.now);
    ASSERT_EQ(p.sinkB.count(wire::PacketType::Grant), 1u) << "one grant per batch, not per packet";
    wire::Packet g = p.sinkB.first(wire::PacketType::Grant).packet();
    EXPECT_LE(g.grant.priority, p.cfgB.maxSchedPriority());
    EXPECT_GT(g.grant.offset, 41'000u);
    EXPECT_LE(g.grant.offset - 0u, p.b.incomingOutstanding() + 41'064u);
    for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    ASSERT_FALSE(p.sinkA.out.empty());
    EXPECT_EQ(p.sinkA.out[0].priority, g.grant.priority);
    EXPECT_GE(p.sinkA.out[0].packet().data.offset, 41'000u);
}

// A grant window smaller than one packet (a small maxIncoming shared by the messages, or
// a small fixed window) still grants: a packet at a time, not never. (Grants of less than
// a packet were held back as dribbles, so the message stopped after its unscheduled
// bytes for good, each side's probes keeping the other from timing out.)
TEST(Engine, AGrantWindowSmallerThanAPacketStillGrants) {
    for (int fixed = 0; fixed < 2; ++fixed) {
        Config cb = baseConfig();
        if (fixed) {
            cb.window = 500;
        } else {
            cb.maxIncoming = 2'000;  // one active message: a window of 1,000 bytes
        }
        ASSERT_EQ(cb.validate(), "");
        Pair p(baseConfig(), cb);
        p.call(100'000);
        bool delivered = false;
        const int ticks = p.tickUntil(p.cfgA.timeoutTicks, [&] {
            auto d = p.deliveries(p.b);
            for (auto& x : d) p.b.releaseMessage(x.message, p.now);
            return delivered = !d.empty();
        });
        EXPECT_TRUE(delivered) << "fixed window " << fixed << ", after " << ticks << " ticks";
        EXPECT_GT(p.b.metrics().grantsSent, 0u) << fixed;
        EXPECT_LE(p.b.incomingOutstanding(), std::max(cb.maxIncoming, p.cfgB.maxPayload)) << fixed;
    }
}

TEST(Engine, WholeExchangeCompletesAndFreesBothSides) {
    Pair p;
    p.call(250'000, 77);
    p.pump();
    EXPECT_EQ(p.serveAll(180'000), 1);
    p.pump();
    auto d = p.deliveries(p.a);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].kind, Delivery::Kind::Response);
    EXPECT_EQ(d[0].cookie, 77u);
    EXPECT_EQ(d[0].message.length, 180'000u);
    EXPECT_EQ(d[0].message.data[179'999], 0xcd);
    p.a.releaseMessage(d[0].message, p.now);
    EXPECT_EQ(p.a.rpcCount(), 0u);
    EXPECT_EQ(p.b.rpcCount(), 1u) << "the server keeps the RPC until acknowledged";
    p.tick();  // pending acks are flushed after the tick
    p.pump();
    EXPECT_EQ(p.b.rpcCount(), 0u);
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 1u);
}

// A message whose first packet holds all of it is complete at once: delivered with its
// bytes, counted in no grant or incoming total, and a copy of that packet arriving later
// is a duplicate (server) or for an RPC already gone (client), never a second delivery.
TEST(Engine, AMessageInOnePacketIsDeliveredAtOnceAndItsCopiesAreDropped) {
    Pair p;
    std::vector<uint8_t> req(300);
    for (size_t i = 0; i < req.size(); ++i) req[i] = static_cast<uint8_t>(i);
    uint64_t id = 0;
    ASSERT_TRUE(p.a.startRequest(kB, req, 5, p.now, &id).isOk());
    ASSERT_EQ(p.sinkA.out.size(), 1u);
    const std::vector<uint8_t> requestPacket = p.sinkA.out[0].bytes;
    p.deliverAToB();
    auto requests = p.deliveries(p.b);
    ASSERT_EQ(requests.size(), 1u);
    ASSERT_EQ(requests[0].message.length, 300u);
    EXPECT_TRUE(std::equal(req.begin(), req.end(), requests[0].message.data));
    EXPECT_EQ(p.b.incomingOutstanding(), 0u);
    EXPECT_EQ(p.b.activeGrants(), 0);
    EXPECT_EQ(p.b.pendingRequests(), 1u);
    p.b.receive(kA, requestPacket, p.now);
    EXPECT_TRUE(p.deliveries(p.b).empty());
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::Duplicate)], 1u);
    std::vector<uint8_t> resp(200, 0x5c);
    p.b.releaseMessage(requests[0].message, p.now);
    ASSERT_TRUE(p.b.sendResponse(requests[0].server, resp, p.now).isOk());
    ASSERT_EQ(p.sinkB.count(wire::PacketType::Data), 1u);
    const std::vector<uint8_t> responsePacket = p.sinkB.first(wire::PacketType::Data).bytes;
    p.pump();
    auto responses = p.deliveries(p.a);
    ASSERT_EQ(responses.size(), 1u);
    EXPECT_EQ(responses[0].kind, Delivery::Kind::Response);
    EXPECT_EQ(responses[0].cookie, 5u);
    ASSERT_EQ(responses[0].message.length, 200u);
    EXPECT_EQ(responses[0].message.data[199], 0x5c);
    EXPECT_EQ(p.a.rpcCount(), 0u);
    EXPECT_EQ(p.a.incomingOutstanding(), 0u);
    p.a.receive(kB, responsePacket, p.now);
    EXPECT_TRUE(p.deliveries(p.a).empty());
    EXPECT_EQ(p.a.metrics().dropped[static_cast<size_t>(DropReason::UnknownRpc)], 1u);
    p.a.releaseMessage(responses[0].message, p.now);
    EXPECT_EQ(p.a.bufferPool().bytesInUse(), 0u);
}

// A server finds each RPC of a client through that client's own table, which grows with
// the client's window of calls and, past its largest size (4,096), overflows into a
// hash map: 5,000 requests in flight at once, answered in reverse order, all complete.
TEST(Engine, AServerFindsEveryRpcOfAWideWindowOfCalls) {
    Config cfg = baseConfig();
    cfg.maxPendingRequests = 0;
    cfg.maxClientRpcsPerServer = 0;  // (all 5,000 under way at once)
    Pair p(cfg, cfg);
    const int n = 5'000;
    for (int i = 0; i < n; ++i) p.call(1, static_cast<uint64_t>(i));
    p.pump();
    auto requests = p.deliveries(p.b);
    ASSERT_EQ(requests.size(), static_cast<size_t>(n));
    EXPECT_EQ(p.b.rpcCount(), static_cast<size_t>(n));
    std::vector<uint8_t> resp(3, 0xcd);
    for (auto it = requests.rbegin(); it != requests.rend(); ++it) {
        p.b.releaseMessage(it->message, p.now);
        ASSERT_TRUE(p.b.sendResponse(it->server, resp, p.now).isOk()) << it->server.id;
    }
    p.pump();
    auto responses = p.deliveries(p.a);
    ASSERT_EQ(responses.size(), static_cast<size_t>(n));
    std::vector<bool> seen(n);
    for (auto& d : responses) {
        ASSERT_LT(d.cookie, static_cast<uint64_t>(n));
        seen[d.cookie] = true;
        p.a.releaseMessage(d.message, p.now);
    }
    EXPECT_EQ(std::count(seen.begin(), seen.end(), true), n);
    p.tick();
    p.pump();
    EXPECT_EQ(p.b.rpcCount(), 0u) << "every RPC acknowledged and freed";
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, static_cast<uint64_t>(n));
}

// Deliveries read in place come in the same order as those moved out, and are gone once
// popped.
TEST(Engine, PeekedDeliveriesComeInOrderUntilPopped) {
    Pair p;
    EXPECT_EQ(p.b.peekDelivery(), nullptr);
    for (int i = 0; i < 3; ++i) p.call(10 + static_cast<uint32_t>(i));
    p.pump();
    for (uint32_t len = 10; len < 13; ++len) {
        Delivery* d = p.b.peekDelivery();
        ASSERT_NE(d, nullptr);
        EXPECT_EQ(d, p.b.peekDelivery()) << "peeking takes nothing";
        EXPECT_EQ(d->kind, Delivery::Kind::Request);
        EXPECT_EQ(d->message.length, len);
        const engine::ReceivedMessage m = d->message;
        p.b.popDelivery();
        p.b.releaseMessage(m, p.now);
    }
    EXPECT_EQ(p.b.peekDelivery(), nullptr);
    EXPECT_FALSE(p.b.hasDeliveries());
}

// ---------------------------------------------------------------- loss recovery

// Scheduled bytes go again at the priority the RESEND names; unscheduled ones at their
// own, which is higher.
TEST(Engine, ResendRetransmitsWithFlagAndRequestedPriority) {
    Pair p;
    uint64_t id = p.call(200'000);
    const std::vector<Sent> first = p.sinkA.take();
    ASSERT_GE(first.size(), 2u);
    const uint8_t unschedPriority = first[1].priority;
    const uint32_t unsched = static_cast<uint32_t>(first.size()) * 1416;
    // The grant of the whole message, whose scheduled bytes then go out.
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::Grant, 200'000, 1), p.now);
    p.sinkA.take();
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::Resend, unsched, 1416, 2), p.now);
    ASSERT_EQ(p.sinkA.out.size(), 1u);
    wire::Packet pk = p.sinkA.out[0].packet();
    EXPECT_EQ(pk.data.offset, unsched);
    EXPECT_TRUE(pk.data.retransmit);
    EXPECT_EQ(p.sinkA.out[0].priority, 2);
    p.sinkA.take();
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::Resend, 1416, 1416, 2), p.now);
    ASSERT_EQ(p.sinkA.out.size(), 1u);
    EXPECT_EQ(p.sinkA.out[0].packet().data.offset, 1416u);
    EXPECT_EQ(p.sinkA.out[0].priority, unschedPriority);
    EXPECT_GT(unschedPriority, 2);
    EXPECT_EQ(p.a.metrics().retransmittedPackets, 2u);
}

TEST(Engine, ResendBeyondTheGrantCountsAsAGrant) {
    Pair p;
    uint64_t id = p.call(100'000);
    p.sinkA.take();
    // The receiver's GRANT to 60,000 was lost; its RESEND for [41,064, 60,000) recovers.
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::Resend, 41'064, 60'000 - 41'064, 3), p.now);
    uint32_t top = 0;
    for (auto& s : p.sinkA.out) top = std::max<uint32_t>(top, s.packet().data.offset + 1416);
    EXPECT_GE(top, 60'000u);
}

TEST(Engine, ResendForAnUnknownRpcIsAnsweredWithRpcUnknown) {
    Pair p;
    p.b.receive(kA, encode(from(1234), wire::PacketType::Resend, 0, wire::kResendAll), p.now);
    ASSERT_EQ(p.sinkB.out.size(), 1u);
    wire::Packet pk = p.sinkB.out[0].packet();
    EXPECT_EQ(pk.common.type, wire::PacketType::RpcUnknown);
    EXPECT_EQ(pk.common.senderId, 1235u);
}

TEST(Engine, RpcUnknownMakesTheClientSendTheRequestAgain) {
    Pair p;
    uint64_t id = p.call(3000);
    p.sinkA.take();
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::RpcUnknown), p.now);
    ASSERT_EQ(p.sinkA.out.size(), 3u);
    EXPECT_EQ(p.sinkA.out[0].packet().data.offset, 0u);
    EXPECT_TRUE(p.sinkA.out[0].packet().data.retransmit);
    EXPECT_EQ(p.a.metrics().clientRestarts, 1u);
    // More RPC_UNKNOWNs in the same tick (answers to several RESENDs) change nothing.
    p.sinkA.take();
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::RpcUnknown), p.now);
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::RpcUnknown), p.now);
    EXPECT_TRUE(p.sinkA.out.empty());
    EXPECT_EQ(p.a.metrics().clientRestarts, 1u);
    p.tick();
    p.sinkA.take();
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::RpcUnknown), p.now);
    EXPECT_EQ(p.a.metrics().clientRestarts, 2u) << "a later tick may restart again";
}

TEST(Engine, ClientResendsAfterSilenceAndTimesOutWithAClearError) {
    Pair p;
    p.call(100, 9);
    p.sinkA.take();  // the request is lost; the server never answers
    p.tick(p.cfgA.resendTicks - 1);
    EXPECT_EQ(p.sinkA.count(wire::PacketType::Resend), 0u);
    p.tick();
    ASSERT_EQ(p.sinkA.count(wire::PacketType::Resend), 1u);
    wire::Packet r = p.sinkA.out[0].packet();
    EXPECT_EQ(r.resend.offset, 0u);
    EXPECT_EQ(r.resend.length, wire::kResendAll);
    p.sinkA.take();
    p.tick(p.cfgA.timeoutTicks - p.cfgA.resendTicks - 1);
    EXPECT_TRUE(p.deliveries(p.a).empty());
    p.tick();
    auto d = p.deliveries(p.a);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].kind, Delivery::Kind::Failure);
    EXPECT_EQ(d[0].cookie, 9u);
    EXPECT_EQ(d[0].status.code(), StatusCode::Timeout);
    EXPECT_EQ(d[0].status.toString(), "timeout: no response from 10.0.0.2:4000 for 100 ms");
    EXPECT_EQ(p.a.rpcCount(), 0u);
    EXPECT_EQ(p.a.nextWakeup(), kNever) << "an idle engine needs no timer";
}

// ---------------------------------------------------------------- the timer's per-peer budget

std::vector<uint64_t> resendIds(const CaptureSink& sink) {
    std::vector<uint64_t> ids;
    for (auto& s : sink.out)
        if (s.type() == wire::PacketType::Resend) ids.push_back(s.packet().common.senderId);
    return ids;
}

// A pair whose engines send RESENDs and NEED_ACKs for at most `budget` RPCs per peer and
// tick, with `calls` calls of 100 bytes started by A (their ids in `ids`, oldest first).
struct BudgetPair : Pair {
    std::vector<uint64_t> ids;
    BudgetPair(int budget, int calls) : Pair(withBudget(budget), withBudget(budget)) {
        for (int i = 0; i < calls; ++i) ids.push_back(call(100));
    }
    static Config withBudget(int budget) {
        Config c = baseConfig();
        c.timerPacketsPerPeer = budget;
        return c;
    }
};

TEST(Engine, OneTickSendsAtMostTheBudgetOfResendsToAPeerOldestFirst) {
    BudgetPair p(4, 10);
    const std::vector<uint64_t>& ids = p.ids;
    p.sinkA.take();  // every request is lost
    p.tick(p.cfgA.resendTicks);
    EXPECT_EQ(resendIds(p.sinkA), std::vector<uint64_t>(ids.begin(), ids.begin() + 4));
    p.sinkA.take();
    p.tick();  // the ones put off go on the next ticks, without waiting for the interval
    EXPECT_EQ(resendIds(p.sinkA), std::vector<uint64_t>(ids.begin() + 4, ids.begin() + 8));
    p.sinkA.take();
    p.tick();
    EXPECT_EQ(resendIds(p.sinkA), std::vector<uint64_t>(ids.begin() + 8, ids.end()));
    p.sinkA.take();
    p.tick();
    EXPECT_TRUE(resendIds(p.sinkA).empty()) << "each RPC waits its interval again after its RESEND";
    EXPECT_EQ(p.a.metrics().timerPacketsDeferred, 6u) << "each put off once";
}

TEST(Engine, RpcsWaitingForTheBudgetDoNotTimeOutWhileThePeerAnswers) {
    // 150 calls to a server that holds them all: one RESEND a tick reaches each RPC only
    // every 150 ticks, one and a half timeouts, yet BUSY answers keep coming from the
    // server.
    BudgetPair p(1, 150);
    p.pump();
    ASSERT_EQ(p.b.rpcCount(), 150u);
    for (int i = 0; i < 4 * p.cfgA.timeoutTicks; ++i) {
        p.tick();
        p.pump();
    }
    EXPECT_EQ(p.a.metrics().clientRpcsTimedOut, 0u);
    EXPECT_GT(p.b.metrics().busySent, 0u);
    EXPECT_LE(p.a.metrics().resendsSent, static_cast<uint64_t>(4 * p.cfgA.timeoutTicks)) << "one a tick at most";
    EXPECT_EQ(p.serveAll(10), 150);
    p.pump();
    auto d = p.deliveries(p.a);
    EXPECT_EQ(d.size(), 150u);
    for (auto& x : d) p.a.releaseMessage(x.message, p.now);
}

TEST(Engine, SilenceIsHeldForTheBudgetHoweverLongTheQueue) {
    // 400 calls, one RESEND a tick: RPCs at the back of the queue wait 400 ticks, four
    // timeouts, for theirs. While the server answers the others their silence is held,
    // so none times out (they used to, after twice the timeout, though the server held
    // them all); one whose request the server never got is found when its turn comes.
    BudgetPair p(1, 400);
    std::vector<Sent> requests = p.sinkA.take();
    ASSERT_EQ(requests.size(), 400u);
    for (size_t i = 0; i + 1 < requests.size(); ++i) p.b.receive(kA, requests[i].bytes, p.now);  // the last is lost
    p.pump();
    std::set<uint64_t> asked;
    for (int i = 0; i < 6 * p.cfgA.timeoutTicks; ++i) {
        p.tick();
        for (uint64_t id : resendIds(p.sinkA)) asked.insert(id);
        p.pump();
    }
    EXPECT_EQ(p.a.metrics().clientRpcsTimedOut, 0u);
    EXPECT_EQ(asked.size(), 400u) << "every RPC had its turn";
    EXPECT_EQ(p.b.metrics().rpcUnknownSent, 1u) << "the lost request was found, and sent again";
    EXPECT_EQ(p.serveAll(10), 400);
    p.pump();
    p.expectResponsesAtA(400);
}

TEST(Engine, PacketsAboutUnknownRpcsDoNotHoldSilence) {
    // The server's address keeps sending, but nothing about our RPCs: the peer is not
    // shown to be working on them, and they time out on time.
    BudgetPair p(1, 20);
    p.sinkA.take();  // every request is lost
    for (int i = 0; i < p.cfgA.timeoutTicks; ++i) {
        p.a.receive(kB, encode(from(999'999), wire::PacketType::Busy), p.now);  // an id A never used
        p.tick();
        p.sinkA.take();
    }
    EXPECT_EQ(p.a.metrics().clientRpcsTimedOut, 20u);
}

TEST(Engine, RpcsWaitingForTheBudgetStillTimeOutWhenThePeerIsSilent) {
    BudgetPair p(1, 20);
    p.sinkA.take();  // the server is gone
    p.tick(p.cfgA.timeoutTicks);
    auto d = p.deliveries(p.a);
    EXPECT_EQ(d.size(), 20u) << "a silent peer's RPCs time out on time, budget or not";
    for (auto& x : d) EXPECT_EQ(x.status.code(), StatusCode::Timeout);
}

TEST(Engine, OneTickSendsAtMostTheBudgetOfNeedAcksToAPeer) {
    // Five RPCs ask for acks every second tick, two NEED_ACKs fit in a tick: those put
    // off go first on the next ticks, so none of the five waits behind older RPCs that
    // come due again.
    BudgetPair p(2, 5);
    p.pump();
    EXPECT_EQ(p.serveAll(100), 5);
    p.sinkB.take();  // the responses are lost: no acks will come
    p.tick(p.cfgB.requestAckTicks - 1);
    std::set<uint64_t> asked;
    for (int t = 0; t < 3; ++t) {
        p.tick();
        EXPECT_EQ(p.sinkB.count(wire::PacketType::NeedAck), 2u) << "tick " << t;
        for (auto& s : p.sinkB.take()) asked.insert(s.packet().common.senderId);
    }
    EXPECT_EQ(asked.size(), 5u) << "every RPC asked within three ticks";
    // And the server still gives up on acks that never come.
    for (int i = 0; i < 10'000 && p.b.rpcCount() > 0; ++i) {
        p.tick();
        p.sinkB.take();
    }
    EXPECT_EQ(p.b.rpcCount(), 0u);
    EXPECT_EQ(p.b.metrics().serverRpcsAbandoned, 5u);
}

TEST(Engine, AServerExecutingRequestsNeedsNoTimerUntilItResponds) {
    Pair p;
    p.call(100);
    p.call(100);
    p.pump();
    ASSERT_EQ(p.b.rpcCount(), 2u);
    EXPECT_EQ(p.b.nextWakeup(), kNever) << "the application has both requests: no ticks";
    std::vector<RpcInfo> rpcs;
    p.b.listRpcs(rpcs);
    EXPECT_EQ(rpcs.size(), 2u) << "still listed";
    p.now += 50 * p.cfgB.tickNs;  // the application takes its time
    EXPECT_EQ(p.serveAll(100), 2);
    EXPECT_EQ(p.b.nextWakeup(), p.now + p.cfgB.tickNs) << "a whole tick after the response starts";
    p.pump();
    p.releaseAll(p.a);
    p.tick();
    p.pump();
    EXPECT_EQ(p.b.rpcCount(), 0u);
}

TEST(Engine, ServerRpcsFreedWhileTheApplicationHasThemLeaveNoTrace) {
    Pair p;
    p.call(100);
    p.call(100);
    p.call(100);
    p.pump();
    auto reqs = p.deliveries(p.b);
    ASSERT_EQ(reqs.size(), 3u);
    for (auto& d : reqs) p.b.releaseMessage(d.message, p.now);
    p.b.abortServerRpc(reqs[0].server, p.now);  // the application drops one
    EXPECT_EQ(p.b.rpcCount(), 2u);
    // The client restarts another one: RPC_UNKNOWN makes the server discard it.
    p.b.receive(kA, encode(from(reqs[1].server.id), wire::PacketType::RpcUnknown), p.now);
    EXPECT_EQ(p.b.rpcCount(), 1u);
    std::vector<RpcInfo> rpcs;
    p.b.listRpcs(rpcs);
    ASSERT_EQ(rpcs.size(), 1u);
    EXPECT_EQ(rpcs[0].id, reqs[2].server.id | 1);
    std::vector<uint8_t> resp(10, 1);
    EXPECT_TRUE(p.b.sendResponse(reqs[2].server, resp, p.now).isOk());
    p.pump();
    p.releaseAll(p.a);
    p.tick();
    p.pump();
    EXPECT_EQ(p.b.rpcCount(), 0u);
    p.b.listRpcs(rpcs);
    EXPECT_TRUE(rpcs.empty());
}

TEST(Engine, TimerPacketsPerPeerMustBePositive) {
    Config c = baseConfig();
    c.timerPacketsPerPeer = 0;
    EXPECT_EQ(c.validate(), "timerPacketsPerPeer must be at least 1");
}

TEST(Engine, BusyKeepsALongRunningRpcAlive) {
    Pair p;
    uint64_t id = p.call(100);
    p.pump();
    for (int i = 0; i < 3 * p.cfgA.timeoutTicks; ++i) {
        p.tick();
        p.pump();  // the client's RESENDs reach the server, which answers BUSY
    }
    EXPECT_GT(p.b.metrics().busySent, 0u);
    EXPECT_TRUE(p.deliveries(p.a).empty()) << "no timeout while the server says it is busy";
    EXPECT_EQ(p.serveAll(10), 1);
    p.pump();
    auto d = p.deliveries(p.a);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].clientId, id);
    EXPECT_EQ(d[0].kind, Delivery::Kind::Response);
    p.a.releaseMessage(d[0].message, p.now);
}

// An RPC's state is reused for the next one: a call told BUSY many times, then aborted,
// must not pass its backoff on. The next call, whose request is lost, asks after
// resendTicks (it waited resendTicks << busyReplies, 12 ticks instead of 5).
TEST(Engine, ANewRpcDoesNotInheritAnAbortedOnesBusyBackoff) {
    Pair p;
    const uint64_t slow = p.call(100);
    p.pump();
    for (int i = 0; i < p.cfgA.timeoutTicks; ++i) {
        p.tick();
        p.pump();  // RESENDs answered with BUSY: the backoff grows
    }
    ASSERT_GE(p.b.metrics().busySent, 3u);
    for (auto& d : p.deliveries(p.b))
        if (d.message.data) p.b.releaseMessage(d.message, p.now);
    p.a.abortClientRpc(slow, p.now);
    p.deliveries(p.a);
    const uint64_t next = p.call(100);
    p.sinkA.take();  // its request is lost
    int firstResend = -1;
    for (int i = 1; i <= 4 * p.cfgA.resendTicks && firstResend < 0; ++i) {
        p.tick();
        for (auto& s : p.sinkA.take())
            if (s.type() == wire::PacketType::Resend && s.packet().common.senderId == next) firstResend = i;
    }
    EXPECT_EQ(firstResend, p.cfgA.resendTicks);
    p.a.abortClientRpc(next, p.now);
}

// SRPT by ungranted bytes when data goes past a grant: the sender sends whole packets,
// so the last packet of a grant of 10,664 bytes ends at 11,328. The message's key in the
// grant sets (ungranted bytes) changes with it: it must be re-filed. X (100,000 bytes)
// is granted to 10,664 (89,336 ungranted); Y (94,700) then arrives with 89,036 and takes
// the grants (one message per peer). X's granted packets arrive, the last one leaving X
// 88,672 ungranted: X must get the next grant. Left where it was filed, X stayed behind
// Y, and nobody was granted.
TEST(Engine, DataPastAGrantReordersTheMessagesForSrpt) {
    Config ca = baseConfig();
    ca.unschedBytes = 5'000;  // sent as four packets: 5,664 bytes
    Config cb = baseConfig();
    cb.window = 5'000;  // not a whole number of packets
    Pair p(ca, cb);
    const uint64_t x = p.call(100'000);
    const uint64_t y = p.call(94'700);
    auto dataOf = [](const std::vector<Sent>& sent, uint64_t id) {
        std::vector<Sent> d;
        for (auto& s : sent)
            if (s.type() == wire::PacketType::Data && s.packet().common.senderId == id) d.push_back(s);
        return d;
    };
    auto grantsFor = [&](uint64_t id) {
        std::vector<wire::GrantHeader> g;
        for (auto& s : p.sinkB.out)
            if (s.type() == wire::PacketType::Grant && (s.packet().common.senderId & ~uint64_t{1}) == id)
                g.push_back(s.packet().grant);
        return g;
    };
    const auto unscheduled = p.sinkA.take();
    for (auto& s : dataOf(unscheduled, x)) p.b.receive(kA, s.bytes, p.now);
    ASSERT_FALSE(grantsFor(x).empty());
    ASSERT_EQ(grantsFor(x).back().offset, 10'664u);
    for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    const auto granted = dataOf(p.sinkA.take(), x);
    ASSERT_FALSE(granted.empty());
    const wire::Packet last = granted.back().packet();
    ASSERT_EQ(last.data.offset + granted.back().bytes.size() - wire::kDataHeaderSize, 11'328u)
        << "the last packet goes past the grant";
    p.b.receive(kA, dataOf(unscheduled, y).front().bytes, p.now);  // Y's first packet
    for (auto& s : granted) p.b.receive(kA, s.bytes, p.now);
    const auto g = grantsFor(x);
    ASSERT_EQ(g.size(), 1u) << "X is granted next";
    EXPECT_EQ(g[0].offset, 11'328u + 5'000u);
    EXPECT_TRUE(grantsFor(y).empty());
    p.a.abortClientRpc(x, p.now);
    p.a.abortClientRpc(y, p.now);
}

TEST(Engine, ReceiverAsksForEveryGapAndTheUngrantedTail) {
    Pair p;
    p.call(20'000);
    auto pkts = p.sinkA.take();
    ASSERT_EQ(pkts.size(), 15u);
    // Lose packets 2 and 5..6 and the last one.
    for (size_t i = 0; i < pkts.size(); ++i)
        if (i != 2 && i != 5 && i != 6 && i != 14) p.b.receive(kA, pkts[i].bytes, p.now);
    p.sinkB.take();
    p.tick(p.cfgB.resendTicks);
    std::vector<std::pair<uint32_t, uint32_t>> ranges;
    for (auto& s : p.sinkB.out)
        if (s.type() == wire::PacketType::Resend) ranges.push_back({s.packet().resend.offset, s.packet().resend.length});
    std::vector<std::pair<uint32_t, uint32_t>> want = {{2 * 1416, 1416}, {5 * 1416, 2 * 1416}, {14 * 1416, 20'000 - 14 * 1416}};
    EXPECT_EQ(ranges, want);
}

// ---------------------------------------------------------------- acks and at-most-once

TEST(Engine, ServerAsksForAMissingAckAndTheClientAnswers) {
    Pair p;
    p.call(100);
    p.pump();
    p.serveAll(100);
    // The response reaches the client, but we drop the client's ack.
    for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    p.releaseAll(p.a);
    p.tick();
    p.sinkA.take();  // the flushed ACK is lost
    p.tick(p.cfgB.requestAckTicks);
    ASSERT_GE(p.sinkB.count(wire::PacketType::NeedAck), 1u);
    p.pump();  // NEED_ACK -> ACK
    EXPECT_EQ(p.b.rpcCount(), 0u);
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 1u);
}

TEST(Engine, ServerGivesUpOnAnAckEventually) {
    Pair p;
    p.call(100);
    p.pump();
    p.serveAll(100);
    p.sinkB.take();  // the client vanished
    int ticks = 0;
    while (p.b.rpcCount() > 0 && ticks < 10'000) {
        p.tick();
        ++ticks;
    }
    EXPECT_EQ(p.b.rpcCount(), 0u);
    EXPECT_EQ(p.b.metrics().serverRpcsAbandoned, 1u);
    EXPECT_EQ(p.b.metrics().needAcksSent, static_cast<uint64_t>(p.cfgB.needAckLimit));
}

// Seed 001: a request packet delayed in a slow path, arriving after its RPC was served,
// acknowledged and freed, must not run the RPC again.
TEST(Engine, LateRequestPacketForAFinishedRpcIsNeverDeliveredAgain) {
    Pair p;
    p.call(100);
    std::vector<uint8_t> request = p.sinkA.out[0].bytes;
    p.pump();
    EXPECT_EQ(p.serveAll(100), 1);
    p.pump();
    p.releaseAll(p.a);
    p.tick();
    p.pump();
    ASSERT_EQ(p.b.rpcCount(), 0u);
    p.b.receive(kA, request, p.now);  // the delayed copy
    EXPECT_TRUE(p.deliveries(p.b).empty());
    EXPECT_EQ(p.b.rpcCount(), 0u);
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::StaleRequest)], 1u);
    EXPECT_EQ(p.b.metrics().serverRequestsReceived, 1u);
}

TEST(Engine, DuplicateRequestWhileInServiceIsNotDeliveredTwice) {
    Pair p;
    p.call(100);
    std::vector<uint8_t> request = p.sinkA.out[0].bytes;
    p.pump();
    p.b.receive(kA, request, p.now);
    p.b.receive(kA, request, p.now);
    auto d = p.deliveries(p.b);
    EXPECT_EQ(d.size(), 1u);
    for (auto& x : d) p.b.releaseMessage(x.message, p.now);
}

TEST(Engine, RetriedRequestAfterTheServerGaveUpIsNotExecutedAgain) {
    Pair p;
    p.call(100);
    std::vector<uint8_t> request = p.sinkA.out[0].bytes;
    p.pump();
    p.serveAll(100);
    p.sinkB.take();
    while (p.b.rpcCount() > 0) p.tick();  // abandoned after NEED_ACKs
    p.b.receive(kA, request, p.now);
    EXPECT_TRUE(p.deliveries(p.b).empty());
}

TEST(Engine, AcksRideOnDataToTheSamePeer) {
    Pair p;
    p.call(100);
    p.pump();
    p.serveAll(100);
    p.pump();
    p.releaseAll(p.a);
    // Before the tick flushes it, the ack goes out on the next request's DATA.
    p.call(100);
    ASSERT_EQ(p.sinkA.out.size(), 1u);
    EXPECT_NE(p.sinkA.out[0].packet().data.ack.clientId, 0u);
    p.pump();
    EXPECT_EQ(p.b.metrics().acksPiggybacked, 1u);
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 1u);
    p.releaseAll(p.b);
}

TEST(Engine, AcksOfABatchOfResponsesRideOnTheRequestsThatFollowOldestFirst) {
    // A client that starts a request for each response it gets (a closed loop) sends no
    // ACK packet: each request carries one ack, the oldest pending first.
    Pair p;
    std::vector<uint64_t> completed;
    for (auto& d : p.roundTrips(8, 64)) {
        completed.push_back(d.clientId);
        p.a.releaseMessage(d.message, p.now);
    }
    ASSERT_EQ(completed.size(), 8u);
    EXPECT_EQ(p.a.metrics().ackPacketsSent, 0u);  // more than a packet's worth, still held
    for (int i = 0; i < 8; ++i) p.call(64);
    p.a.sendDueAcks();
    ASSERT_EQ(p.sinkA.out.size(), 8u);
    for (size_t i = 0; i < 8; ++i) {
        ASSERT_EQ(p.sinkA.out[i].type(), wire::PacketType::Data);
        EXPECT_EQ(p.sinkA.out[i].packet().data.ack.clientId, completed[i]) << i;
    }
    p.pump();
    EXPECT_EQ(p.a.metrics().ackPacketsSent, 0u);
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 8u);
    p.releaseAll(p.b);
}

TEST(Engine, PendingAcksGoOutInFullPacketsAtTheEndOfABatchAndTheRestAfterATick) {
    Pair p;
    for (auto& d : p.roundTrips(7, 64)) p.a.releaseMessage(d.message, p.now);
    EXPECT_EQ(p.sinkA.count(wire::PacketType::Ack), 0u);
    // No request follows: one full ACK packet now, the two left wait.
    p.a.sendDueAcks();
    ASSERT_EQ(p.sinkA.count(wire::PacketType::Ack), 1u);
    EXPECT_EQ(p.sinkA.first(wire::PacketType::Ack).packet().ack.numAcks, 5u);
    p.pump();
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 5u);
    p.a.sendDueAcks();
    EXPECT_TRUE(p.sinkA.out.empty());
    // A tick asks for the rest; the end of the next batch sends them.
    p.now += p.cfgA.tickNs;
    p.a.advance(p.now);
    EXPECT_TRUE(p.sinkA.out.empty());
    p.a.sendDueAcks();
    ASSERT_EQ(p.sinkA.count(wire::PacketType::Ack), 1u);
    EXPECT_EQ(p.sinkA.first(wire::PacketType::Ack).packet().ack.numAcks, 2u);
    p.pump();
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 7u);
    EXPECT_EQ(p.a.metrics().ackPacketsSent, 2u);
}

TEST(Engine, PendingAcksGoOutAtTheSecondTickWhenNoBatchEnds) {
    // A host that never calls sendDueAcks() still sends every ack within two ticks.
    Pair p;
    for (auto& d : p.roundTrips(3, 64)) p.a.releaseMessage(d.message, p.now);
    p.now += p.cfgA.tickNs;
    p.a.advance(p.now);
    EXPECT_EQ(p.sinkA.count(wire::PacketType::Ack), 0u);
    p.now += p.cfgA.tickNs;
    p.a.advance(p.now);
    ASSERT_EQ(p.sinkA.count(wire::PacketType::Ack), 1u);
    EXPECT_EQ(p.sinkA.first(wire::PacketType::Ack).packet().ack.numAcks, 3u);
    p.pump();
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 3u);
}

TEST(Engine, AbortedClientRpcDeliversNothingAndTheServerIsReleased) {
    Pair p;
    uint64_t id = p.call(100);
    p.pump();
    EXPECT_TRUE(p.a.abortClientRpc(id, p.now).isOk());
    EXPECT_EQ(p.a.abortClientRpc(id, p.now).code(), StatusCode::NoSuchRpc);
    p.serveAll(100);
    p.pump();
    EXPECT_TRUE(p.deliveries(p.a).empty());
    for (int i = 0; i < 5 && p.b.rpcCount(); ++i) {
        p.tick();
        p.pump();
    }
    EXPECT_EQ(p.b.rpcCount(), 0u) << "NEED_ACK for a forgotten RPC is answered with ACK";
}

TEST(Engine, ResponseApiRejectsBadCalls) {
    Pair p;
    ServerRpcId nobody{kA, 42};
    std::vector<uint8_t> r(10);
    EXPECT_EQ(p.b.sendResponse(nobody, r, p.now).code(), StatusCode::NoSuchRpc);
    p.call(10);
    p.pump();
    auto d = p.deliveries(p.b);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(p.b.sendResponse(d[0].server, {}, p.now).code(), StatusCode::InvalidArgument);
    std::vector<uint8_t> huge(p.cfgB.maxMessageLength + 1);
    EXPECT_EQ(p.b.sendResponse(d[0].server, huge, p.now).code(), StatusCode::MessageTooLarge);
    EXPECT_TRUE(p.b.sendResponse(d[0].server, r, p.now).isOk());
    EXPECT_EQ(p.b.sendResponse(d[0].server, r, p.now).code(), StatusCode::InvalidArgument);
    p.b.releaseMessage(d[0].message, p.now);
}

// A buffer handed out for building a message in place is the engine's again once it is
// given to startRequest() or sendResponse(), whether the call is taken or refused: a
// refusal returns it to the send memory (it would otherwise be lost for good).
TEST(Engine, BuffersForMessagesBuiltInPlaceComeBackWhateverTheOutcome) {
    Pair p;
    Status err;
    EXPECT_FALSE(p.a.allocateOutgoing(0, &err));
    EXPECT_EQ(err.code(), StatusCode::InvalidArgument);
    EXPECT_FALSE(p.a.allocateOutgoing(p.cfgA.maxMessageLength + 1, &err));
    EXPECT_EQ(err.code(), StatusCode::MessageTooLarge);

    OutgoingBuffer b = p.a.allocateOutgoing(3000, &err);
    ASSERT_TRUE(b) << err.toString();
    EXPECT_GE(p.a.sendPool().bytesInUse(), 3000u);
    std::memset(b.data, 0x5c, 3000);
    uint64_t id = 0;
    ASSERT_TRUE(p.a.startRequest(kB, std::span<const uint8_t>(b.data, 3000), 0, p.now, &id, b).isOk());
    p.pump();
    auto d = p.deliveries(p.b);
    ASSERT_EQ(d.size(), 1u);
    ASSERT_EQ(d[0].message.length, 3000u);
    EXPECT_EQ(d[0].message.data[0], 0x5c);
    EXPECT_EQ(d[0].message.data[2999], 0x5c);

    // Refusals: the request is answered once; the second response's buffer comes back.
    OutgoingBuffer r1 = p.b.allocateOutgoing(10, &err);
    OutgoingBuffer r2 = p.b.allocateOutgoing(10, &err);
    ASSERT_TRUE(r1 && r2);
    EXPECT_TRUE(p.b.sendResponse(d[0].server, std::span<const uint8_t>(r1.data, 10), p.now, r1).isOk());
    EXPECT_EQ(p.b.sendResponse(d[0].server, std::span<const uint8_t>(r2.data, 10), p.now, r2).code(),
              StatusCode::InvalidArgument);
    OutgoingBuffer r3 = p.b.allocateOutgoing(10, &err);
    EXPECT_EQ(p.b.sendResponse({kA, 4242}, std::span<const uint8_t>(r3.data, 10), p.now, r3).code(),
              StatusCode::NoSuchRpc);
    OutgoingBuffer r4 = p.a.allocateOutgoing(10, &err);
    EXPECT_EQ(p.a.startRequest(kB, std::span<const uint8_t>(), 0, p.now, &id, r4).code(),
              StatusCode::InvalidArgument);
    p.b.releaseMessage(d[0].message, p.now);
    p.pump();
    auto responses = p.deliveries(p.a);
    ASSERT_EQ(responses.size(), 1u);
    EXPECT_EQ(responses[0].message.length, 10u);
    p.a.releaseMessage(responses[0].message, p.now);
    for (int i = 0; i < 10 && (p.a.sendPool().bytesInUse() != 0 || p.b.sendPool().bytesInUse() != 0); ++i) {
        p.tick();
        p.pump();
    }
    EXPECT_EQ(p.a.sendPool().bytesInUse(), 0u);
    EXPECT_EQ(p.b.sendPool().bytesInUse(), 0u);
}

// ---------------------------------------------------------------- hostile input

TEST(Engine, GarbageIsDroppedAndCountedWithoutDisturbingRpcs) {
    Pair p;
    p.call(50'000);
    auto pkts = p.sinkA.take();
    const uint64_t seed = 777;
    std::cout << "seed " << seed << "\n";
    std::mt19937_64 rng(seed);
    uint64_t malformed = 0;
    for (int i = 0; i < 5000; ++i) {
        std::vector<uint8_t> junk(rng() % 200);
        for (auto& b : junk) b = static_cast<uint8_t>(rng());
        wire::Packet tmp;
        if (wire::decode(junk, p.cfgB.maxMessageLength, tmp) != wire::DecodeError::Ok) ++malformed;
        p.b.receive(Address::ipv4(0x0a0000ff, 9999), junk, p.now);
    }
    // A DATA header claiming an absurd length, and a truncated copy of a real packet.
    std::vector<uint8_t> absurd = pkts[0].bytes;
    absurd[28] = 0xff;
    p.b.receive(kA, absurd, p.now);
    p.b.receive(kA, std::span(pkts[0].bytes.data(), 40), p.now);
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::Malformed)], malformed + 2);
    for (auto& s : pkts) p.b.receive(kA, s.bytes, p.now);
    p.pump();
    EXPECT_EQ(p.serveAll(10), 1) << "the real RPC is unaffected";
}

TEST(Engine, WrongDestinationPortIsDropped) {
    Pair p;
    p.call(100);
    std::vector<uint8_t> pkt = p.sinkA.take()[0].bytes;
    pkt[3] ^= 1;  // dport
    p.b.receive(kA, pkt, p.now);
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::WrongPort)], 1u);
    EXPECT_EQ(p.b.rpcCount(), 0u);
}

TEST(Engine, InconsistentMessageLengthIsDropped) {
    Pair p;
    p.call(5000);
    auto pkts = p.sinkA.take();
    p.b.receive(kA, pkts[0].bytes, p.now);
    std::vector<uint8_t> liar = pkts[1].bytes;
    liar[31] += 1;  // message_length low byte
    p.b.receive(kA, liar, p.now);
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::Inconsistent)], 1u);
}

TEST(Engine, ConfigErrorsAreReported) {
    Config c = baseConfig();
    c.maxOvercommit = 0;
    EXPECT_NE(c.validate(), "");
    CaptureSink sink;
    EXPECT_THROW(Engine(c, sink), std::invalid_argument);
    c = baseConfig();
    c.unschedCutoffs = {};
    EXPECT_NE(c.validate().find("unscheduled"), std::string::npos);
    c = baseConfig();
    c.maxBufferBytes = 1000;
    EXPECT_NE(c.validate(), "");
    for (double bad : {-0.1, 0.6, std::nan("")}) {
        c = baseConfig();
        c.smallMessageReserve = bad;
        EXPECT_NE(c.validate().find("smallMessageReserve"), std::string::npos) << bad;
    }
    c = baseConfig();
    c.maxBufferBytes = BufferPool::classSize(c.maxMessageLength) + 1000;  // the reserve leaves too little
    EXPECT_NE(c.validate().find("maxMessageLength"), std::string::npos);
    // Above 3.5 GiB a buffer's size class no longer fits in 32 bits (the pool's
    // accounting went wrong by 2^32 - 1), however large the pools.
    c = baseConfig();
    c.maxBufferBytes = c.maxOutgoingBytes = 16ull << 30;
    c.maxMessageLength = Config::kLongestMessage;
    EXPECT_EQ(c.validate(), "");
    for (uint32_t bad : {Config::kLongestMessage + 1, 4'000'000'000u, UINT32_MAX}) {
        c.maxMessageLength = bad;
        EXPECT_NE(c.validate().find("maxMessageLength"), std::string::npos) << bad;
    }
    for (double bad : {-0.1, 1.0, std::nan("")}) {
        c = baseConfig();
        c.grantFifoFraction = bad;
        EXPECT_NE(c.validate().find("FIFO"), std::string::npos) << bad;
        c = baseConfig();
        c.pacerFifoFraction = bad;
        EXPECT_NE(c.validate().find("FIFO"), std::string::npos) << bad;
    }
    c = baseConfig();
    c.fifoGrantIncrement = 0;  // (every decision with grants would send one that moves nothing)
    EXPECT_NE(c.validate().find("fifoGrantIncrement"), std::string::npos);
    c.grantFifoFraction = 0;
    EXPECT_EQ(c.validate(), "");
    for (int64_t bad : {int64_t{-1}, int64_t{1'000'000'001}, INT64_MAX}) {
        c = baseConfig();
        c.maxNicQueueNs = bad;  // (twice it bounds the pacer's allowance: it must not overflow)
        EXPECT_NE(c.validate().find("maxNicQueueNs"), std::string::npos) << bad;
    }
    c = baseConfig();
    c.unschedBytes = 0;  // (nothing would ever be sent: the receiver learns of no message)
    EXPECT_NE(c.validate().find("unschedBytes"), std::string::npos);
    for (int64_t bad : {int64_t{-1}, int64_t{0}, int64_t{60'000'000'001}}) {
        c = baseConfig();
        c.tickNs = bad;
        EXPECT_NE(c.validate().find("tickNs"), std::string::npos) << bad;
    }
    c = baseConfig();
    c.tickNs = 60'000'000'000;
    c.timeoutTicks = 1 << 30;  // the timeout's length overflows
    EXPECT_NE(c.validate().find("timeout"), std::string::npos);
    c = baseConfig();
    c.tickNs = 60'000'000'000;
    c.resendInterval = 1 << 30;  // (and so would the resend interval's)
    EXPECT_NE(c.validate().find("resend interval"), std::string::npos);
    EXPECT_EQ(baseConfig().validate(), "");
}

// Resend intervals and ticks that shifted by the BUSY backoff pass an int's range do not
// wrap (to 0: a division by zero; or negative). A long interval is a way to ask for few
// RESENDs.
TEST(Engine, LongResendIntervalsSurviveTheBusyBackoff) {
    Config ca = baseConfig();
    ca.resendInterval = 1 << 30;
    ca.resendTicks = 1 << 29;
    ca.timeoutTicks = (1 << 30) + 1;
    ASSERT_EQ(ca.validate(), "");
    ca.resendTicks = 2;  // (the first RESEND soon; the next ones a long way apart)
    ca.timeoutTicks = 40;
    ASSERT_EQ(ca.validate(), "");
    Pair p(ca, baseConfig());
    uint64_t id = p.call(100);
    p.sinkA.take();  // the request is lost
    for (int i = 0; i < 8; ++i) p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::Busy), p.now);
    for (int i = 0; i < 30; ++i) {
        p.tick();
        p.sinkA.take();
    }
    EXPECT_EQ(p.a.rpcCount(), 1u);
}

// ---------------------------------------------------------------- cutoffs

TEST(Engine, ReceiverPublishesCutoffsAndTheSenderUsesThem) {
    Config cb = baseConfig();
    cb.unschedCutoffs = {0, 0, 0, 0, 0, 0, 1'000'000, 50};
    cb.cutoffVersion = 9;
    Pair p(baseConfig(), cb);
    p.call(100);
    EXPECT_EQ(p.sinkA.out[0].priority, 7) << "before learning: the sender's own cutoffs";
    p.pump();
    EXPECT_EQ(p.b.metrics().cutoffsSent, 1u);
    p.serveAll(10);
    p.pump();
    p.releaseAll(p.a);
    p.call(100);
    EXPECT_EQ(p.sinkA.out[0].priority, 6) << "100 > 50: B's second level";
    EXPECT_EQ(p.sinkA.out[0].packet().data.cutoffVersion, 9);
    p.pump();
    EXPECT_EQ(p.b.metrics().cutoffsSent, 1u) << "no CUTOFFS once the versions match";
    p.releaseAll(p.b);
}

// ---------------------------------------------------------------- pacing

TEST(Engine, PacerKeepsTheNicQueueShortButNeverDefersSmallMessages) {
    Config ca = baseConfig();
    ca.linkMbps = 1000;        // 1 Gbps: a 1,500-byte packet takes 12 us
    ca.maxNicQueueNs = 20'000;
    Pair p(ca);
    p.call(40'000);
    size_t first = p.sinkA.out.size();
    EXPECT_LT(first, 5u);
    EXPECT_GT(p.a.metrics().pacerDeferrals, 0u);
    EXPECT_LE(p.a.nicQueue().backlog(p.now), ca.maxNicQueueNs + p.a.nicQueue().transmitTime(1600));
    Time wake = p.a.nextWakeup();
    EXPECT_GE(wake, p.now);
    EXPECT_LT(wake, p.now + 100'000);
    p.call(500);  // small: goes out despite the backlog
    EXPECT_EQ(p.sinkA.out.size(), first + 1);
    EXPECT_EQ(p.sinkA.out.back().packet().data.messageLength, 500u);
    p.now = p.a.nextWakeup();
    p.a.advance(p.now);
    EXPECT_GT(p.sinkA.out.size(), first + 1) << "the pacer resumes at its wake-up";
}

// A small message is not deferred behind a long one that is: here the long message's
// last packet (100 bytes left) comes first in shortest-remaining order, the pacer holds
// it, and the 800-byte message behind it goes out at once all the same.
TEST(Engine, ASmallMessageIsNotHeldBehindADeferredLongOne) {
    Config ca = baseConfig();
    ca.linkMbps = 1000;
    ca.maxNicQueueNs = 5'000;
    ca.unschedBytes = 1'000'000;  // (no grants needed)
    Pair p(ca);
    constexpr uint32_t kLong = 70 * 1'416 + 100;
    p.call(kLong);
    bool lastButOneSent = false;
    for (int i = 0; i < 1'000 && !lastButOneSent; ++i) {
        for (const Sent& s : p.sinkA.out)
            lastButOneSent |= s.type() == wire::PacketType::Data && s.packet().data.offset == 69u * 1'416;
        if (lastButOneSent) break;
        p.sinkA.take();
        p.now = std::max(p.now, p.a.nextWakeup());
        p.a.advance(p.now);
    }
    ASSERT_TRUE(lastButOneSent);
    p.sinkA.take();
    ASSERT_GT(p.a.nicQueue().backlog(p.now), ca.maxNicQueueNs) << "the long message's last packet waits";
    p.call(800);
    ASSERT_EQ(p.sinkA.out.size(), 1u);
    EXPECT_EQ(p.sinkA.out[0].packet().data.messageLength, 800u);
}

// Sends one 1 MB message (all of it unscheduled: no grants needed) from A, whose loop
// comes back to the pacer `gapNs` after its wake-up each time (0: exactly at it), for
// `passes` passes. Returns the largest backlog any of the last ten passes left.
Time pacedBacklog(Pair& p, Time gapNs, int passes) {
    p.call(1'000'000);
    Time worst = 0;
    for (int i = 0; i < passes; ++i) {
        p.now = std::max(p.now, p.a.nextWakeup()) + gapNs;
        p.a.advance(p.now);
        if (i >= passes - 10) worst = std::max(worst, p.a.nicQueue().backlog(p.now));
    }
    return worst;
}

Config pacedSender() {
    Config c = baseConfig();
    c.maxNicQueueNs = 5'000;  // (25 Gbps: a full packet takes about 0.5 us)
    c.unschedBytes = 1'000'000;
    return c;
}

// A sender whose passes come further apart than the pacer's allowed backlog would let the
// link idle for the difference each time: the allowance grows to cover the gap, up to
// twice maxNicQueueNs, so each batch keeps the link busy until the next. (With a fixed
// 5 us, a sender whose passes came every 6-8 us moved 1 MB at 13.7 Gbps on a modelled
// 25 Gbps link.)
TEST(Engine, ThePacersAllowanceCoversASenderThatComesBackLate) {
    const Time packet = Pair(pacedSender()).a.nicQueue().transmitTime(1500 + 66);
    {
        Pair p(pacedSender());
        EXPECT_EQ(p.a.pacerAllowanceNs(), 5'000);
        const Time backlog = pacedBacklog(p, 7'000, 40);
        EXPECT_GE(p.a.pacerAllowanceNs(), 6'500) << "about the sender's 7 us between passes";
        EXPECT_LE(p.a.pacerAllowanceNs(), 7'600);
        EXPECT_GT(backlog, 6'500) << "each batch lasts the link until the next pass";
        EXPECT_LE(backlog, p.a.pacerAllowanceNs() + packet);
    }
    {
        Pair p(pacedSender());
        const Time backlog = pacedBacklog(p, 50'000, 25);  // (about 31 KB a pass: 1 MB lasts 32)
        EXPECT_LE(p.a.pacerAllowanceNs(), 10'000) << "a stall counts as the largest allowance, no more";
        EXPECT_GE(p.a.pacerAllowanceNs(), 9'990);
        EXPECT_GT(backlog, 9'000);
        EXPECT_LE(backlog, 10'000 + packet);
    }
}

// A message the pacer was holding back that ends (aborted, timed out) leaves the pacer
// with nothing held: the next message, much later, is not taken for a sender that came
// back late. (The stale deferral made each such pass count as a stall: four of them
// raised the allowance from 5 to 6.8 us with no slow sender at all.)
TEST(Engine, AMessageThatEndsWhileHeldBackLeavesTheAllowanceAlone) {
    Pair p(pacedSender());
    for (int i = 0; i < 4; ++i) {
        const uint64_t deferrals = p.a.metrics().pacerDeferrals;
        const uint64_t id = p.call(1'000'000);
        ASSERT_GT(p.a.metrics().pacerDeferrals, deferrals) << "held back";
        ASSERT_TRUE(p.a.abortClientRpc(id, p.now).isOk());
        p.sinkA.take();
        p.now += 1'000'000;  // the next call comes much later
    }
    p.call(1'000'000);
    p.now = p.a.nextWakeup();
    p.a.advance(p.now);
    EXPECT_EQ(p.a.pacerAllowanceNs(), 5'000);
}

// A sender that comes back at the wake-up it asked for (as in the simulator) keeps the
// configured allowance.
TEST(Engine, ThePacersAllowanceStaysPutForASenderThatComesBackInTime) {
    Pair p(pacedSender());
    const Time backlog = pacedBacklog(p, 0, 200);
    EXPECT_EQ(p.a.pacerAllowanceNs(), 5'000);
    EXPECT_LE(backlog, 5'000 + p.a.nicQueue().transmitTime(1500 + 66));
    EXPECT_GT(p.a.metrics().pacerDeferrals, 100u);
}

TEST(Engine, SenderServesTheShortestRemainingMessageFirst) {
    Config ca = baseConfig();
    ca.linkMbps = 1000;
    ca.maxNicQueueNs = 5'000;
    ca.pacerFifoFraction = 0;
    Pair p(ca);
    p.call(30'000, 1);
    p.call(20'000, 2);
    p.call(10'000, 3);
    p.sinkA.take();
    std::vector<uint32_t> lengths;
    for (int i = 0; i < 200 && lengths.size() < 20; ++i) {
        p.now += 10'000;
        p.a.advance(p.now);
        for (auto& s : p.sinkA.take()) lengths.push_back(s.packet().data.messageLength);
    }
    ASSERT_GE(lengths.size(), 10u);
    // After the initial burst, the 10 KB message's packets all go before the others'.
    size_t lastShort = 0, firstLong = lengths.size();
    for (size_t i = 0; i < lengths.size(); ++i) {
        if (lengths[i] == 10'000) lastShort = i;
        if (lengths[i] == 30'000 && firstLong == lengths.size()) firstLong = i;
    }
    EXPECT_LT(lastShort, firstLong);
}

// ---------------------------------------------------------------- memory bounds

// A server engine for the buffer tests: messages up to 200 KB, a pool of `poolBytes` of
// which `reserve` is kept for single-packet messages.
Config smallPool(uint64_t poolBytes, double reserve) {
    Config c = baseConfig();
    c.maxMessageLength = 200'000;
    c.maxBufferBytes = poolBytes;
    c.smallMessageReserve = reserve;
    return c;
}

// B is handed messages of the `held` lengths, which the application keeps (filling B's
// pool), then A sends one of `waiting` bytes, which must wait for a buffer.
std::vector<Delivery> fillPoolThenWait(Pair& p, std::initializer_list<uint32_t> held, uint32_t waiting) {
    for (uint32_t length : held) p.call(length);
    p.pump();
    std::vector<Delivery> d = p.deliveries(p.b);
    EXPECT_EQ(d.size(), held.size());
    p.call(waiting);
    p.deliverAToB();
    EXPECT_EQ(p.b.metrics().bufferWaits, 1u);
    return d;
}

TEST(Engine, NoBufferMeansNoGrantsAndResumesWhenBuffersReturn) {
    Pair p(baseConfig(), smallPool(BufferPool::classSize(200'000) + 10'000, 0));
    auto first = fillPoolThenWait(p, {200'000}, 150'000);
    ASSERT_EQ(first.size(), 1u);
    EXPECT_EQ(p.sinkB.count(wire::PacketType::Grant), 0u) << "no grants without buffer space";
    EXPECT_GT(p.b.metrics().dropped[static_cast<size_t>(DropReason::NoBuffer)], 0u);
    p.b.releaseMessage(first[0].message, p.now);
    EXPECT_GE(p.sinkB.count(wire::PacketType::Resend), 1u) << "asks again for what it dropped";
    p.expectOneMessageAtB(150'000);
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
// The pool's limit has room for a waiting message, but the process has no memory for it:
// the message stays first in line and gets its buffer once memory can be had. (It was
// taken off the list with no buffer, and its data then copied to a null pointer.) In a
// child process whose address space is capped below what it uses, so that no new
// mapping can be made. (Not under the sanitizers: their allocators need mappings of
// their own.)
TEST(Engine, AWaiterWhoseMemoryCannotBeHadWaitsOn) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        // A waiting message above glibc's largest threshold for mapping blocks of their
        // own (32 MB), so that its buffer is a new mapping whatever the heap holds.
        constexpr uint32_t kWaiting = 40'000'000;
        Config c = smallPool(BufferPool::classSize(kWaiting) + 10'000, 0);
        c.maxMessageLength = kWaiting;
        Config a = baseConfig();
        a.maxMessageLength = kWaiting;
        a.maxOutgoingBytes = 4ull * kWaiting;
        Pair p(a, c);
        auto first = fillPoolThenWait(p, {200'000}, kWaiting);
        if (first.size() != 1) _exit(10);
        rlimit old{};
        if (getrlimit(RLIMIT_AS, &old) != 0) _exit(11);
        rlimit tight = old;
        tight.rlim_cur = 1 << 20;  // far below what the process maps already
        if (setrlimit(RLIMIT_AS, &tight) != 0) _exit(12);
        const size_t resendsBefore = p.sinkB.count(wire::PacketType::Resend);
        p.b.releaseMessage(first[0].message, p.now);  // room in the pool, none in the process
        const bool stillWaiting = p.sinkB.count(wire::PacketType::Resend) == resendsBefore;
        if (setrlimit(RLIMIT_AS, &old) != 0) _exit(13);
        if (!stillWaiting) _exit(14);  // it asked for data it has nowhere to put
        p.now += 1'000;
        p.b.advance(p.now);  // memory again: the next try gets it
        if (p.sinkB.count(wire::PacketType::Resend) == resendsBefore) _exit(15);
        p.pump();
        auto d = p.deliveries(p.b);
        _exit(d.size() == 1 && d[0].message.length == kWaiting ? 0 : 16);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "see the _exit codes in the test";
}
#endif

// Buffers given back together (the runtime returns a batch's messages in one step) are
// all back before the waiting message is looked at: it gets its buffer, asking once for
// what it dropped.
TEST(Engine, MessagesReleasedTogetherResumeAWaiterThatNeedsThemAll) {
    Pair p(baseConfig(), smallPool(BufferPool::classSize(100'000) * 2 + 10'000, 0));
    auto held = fillPoolThenWait(p, {100'000, 100'000}, 150'000);
    ASSERT_EQ(held.size(), 2u);
    ASSERT_FALSE(p.b.bufferPool().canAllocate(150'000)) << "one buffer back would not be enough";
    const ReceivedMessage both[] = {held[0].message, held[1].message};
    p.b.releaseMessages(both, p.now);
    EXPECT_EQ(p.sinkB.count(wire::PacketType::Resend), 1u) << "asks once for what it dropped";
    p.expectOneMessageAtB(150'000);
    EXPECT_EQ(p.b.bufferPool().bytesInUse(), 0u);
}

// A pool filled by a large message still takes a single-packet one: its share of the
// pool is kept for small messages (they once waited, their packet dropped, until the
// large message's buffer came back).
TEST(Engine, FullPoolStillTakesSmallMessages) {
    // 20 % reserved: the 200 KB message's buffer (229,376 bytes) just fits in the rest.
    Pair p(baseConfig(), smallPool(BufferPool::classSize(200'000) * 5 / 4 + 1'000, 0.2));
    p.call(200'000, 1);
    p.pump();
    auto first = p.deliveries(p.b);
    ASSERT_EQ(first.size(), 1u);  // held by the application
    // Without the reserve this one would take the rest of the pool and the next one,
    // a single packet, would wait (its packet dropped) until buffers came back.
    p.call(50'000, 2);
    p.call(1'000, 3);
    p.pump();
    auto small = p.deliveries(p.b);
    ASSERT_EQ(small.size(), 1u);
    EXPECT_EQ(small[0].message.length, 1'000u);
    EXPECT_EQ(p.b.metrics().bufferWaits, 1u) << "only the large message waited";
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::NoBuffer)] > 0, true);
    p.b.releaseMessage(small[0].message, p.now);
    p.b.releaseMessage(first[0].message, p.now);
    p.expectOneMessageAtB(50'000);
}

// A sender with a larger MTU (jumbo frames) sends an 8,000-byte message in one packet.
// It is whole on arrival, but not a single-packet message by the receiver's MTU: the
// reserve for small messages is not its to take.
TEST(Engine, AWholeMessageLargerThanOurPacketDoesNotTakeTheSmallReserve) {
    Config jumbo = baseConfig();
    jumbo.maxPayload = 9'000 - 20 - 8 - 56;
    Pair p(jumbo, smallPool(BufferPool::classSize(200'000) * 5 / 4 + 1'000, 0.2));
    p.call(200'000, 1);
    p.pump();
    auto first = p.deliveries(p.b);
    ASSERT_EQ(first.size(), 1u);  // held: the pool outside the reserve is full
    p.call(8'000, 2);
    p.pump();
    EXPECT_TRUE(p.deliveries(p.b).empty()) << "the 8,000-byte message took the reserve";
    EXPECT_EQ(p.b.metrics().bufferWaits, 1u);
    p.call(1'000, 3);
    p.pump();
    auto small = p.deliveries(p.b);
    ASSERT_EQ(small.size(), 1u) << "a single-packet message still finds room";
    EXPECT_EQ(small[0].message.length, 1'000u);
    p.b.releaseMessage(small[0].message, p.now);
    p.b.releaseMessage(first[0].message, p.now);
    p.expectOneMessageAtB(8'000);
}

// B's receive pool (20 % reserved) filled by messages its application holds: one of
// 200 KB (`held`), then 56 single-packet ones of 1,000 bytes (`smallHeld`) that take the
// rest, the reserve too.
struct FullPoolAtB {
    Pair p{baseConfig(), smallPool(BufferPool::classSize(200'000) * 5 / 4 + 1'000, 0.2)};
    std::vector<Delivery> held, smallHeld;

    void fill() {
        p.call(200'000, 1);
        p.pump();
        held = p.deliveries(p.b);
        ASSERT_EQ(held.size(), 1u);
        for (int i = 0; i < 56; ++i) p.call(1'000);
        p.pump();
        smallHeld = p.deliveries(p.b);
        ASSERT_EQ(smallHeld.size(), 56u);
        ASSERT_FALSE(p.b.bufferPool().canAllocate(1'000, true)) << "the pool must be full";
    }
};

// Buffers coming back go to every waiting single-packet message that fits, even one
// queued behind a large message still too big for the pool; the large one is served
// once its buffer fits.
TEST(Engine, WaitingSmallMessageIsNotHeldBackByALargerWaiter) {
    FullPoolAtB full;
    ASSERT_NO_FATAL_FAILURE(full.fill());
    Pair& p = full.p;
    auto& held = full.held;
    auto& smallHeld = full.smallHeld;
    p.call(1'000, 2);
    p.call(100'000, 3);
    p.call(1'000, 4);
    p.pump();
    EXPECT_EQ(p.b.metrics().bufferWaits, 3u);
    EXPECT_TRUE(p.deliveries(p.b).empty());
    // Room for both small messages, not for the large one between them.
    p.b.releaseMessage(smallHeld[0].message, p.now);
    p.b.releaseMessage(smallHeld[1].message, p.now);
    EXPECT_EQ(p.sinkB.count(wire::PacketType::Resend), 2u) << "both small waiters ask for their data";
    p.pump();
    auto small = p.deliveries(p.b);
    ASSERT_EQ(small.size(), 2u);
    EXPECT_EQ(small[0].message.length, 1'000u);
    EXPECT_EQ(small[1].message.length, 1'000u);
    // The large message gets its buffer once enough comes back.
    p.b.releaseMessage(held[0].message, p.now);
    p.expectOneMessageAtB(100'000);
    for (auto& d : small) p.b.releaseMessage(d.message, p.now);
    for (size_t i = 2; i < smallHeld.size(); ++i) p.b.releaseMessage(smallHeld[i].message, p.now);
    EXPECT_EQ(p.b.bufferPool().bytesInUse(), 0u);
}

// A single-packet message refused for lack of a buffer is one allocation failure, however
// many ways the engine tries to place it.
TEST(Engine, ARefusedSinglePacketMessageCountsOneAllocationFailure) {
    FullPoolAtB full;
    ASSERT_NO_FATAL_FAILURE(full.fill());
    Pair& p = full.p;
    const uint64_t before = p.b.bufferPool().allocationFailures();
    p.call(1'000, 2);
    p.deliverAToB();
    EXPECT_EQ(p.b.metrics().bufferWaits, 1u);
    EXPECT_EQ(p.b.bufferPool().allocationFailures() - before, 1u);
    for (auto& d : full.smallHeld) p.b.releaseMessage(d.message, p.now);
    p.b.releaseMessage(full.held[0].message, p.now);
    p.expectOneMessageAtB(1'000);
}

// Large messages get buffers in order of arrival: a younger one that would fit waits
// behind an older one that does not, or a stream of such messages could keep the
// older one waiting for ever.
TEST(Engine, LargeMessageWaitsBehindAnOlderLargeWaiter) {
    Pair p(baseConfig(), smallPool(BufferPool::classSize(200'000) + BufferPool::classSize(25'000) + 1'000, 0));
    p.call(200'000, 1);
    p.call(25'000, 2);
    p.pump();
    auto held = p.deliveries(p.b);
    ASSERT_EQ(held.size(), 2u);
    const Delivery& big = held[0].message.length == 200'000 ? held[0] : held[1];
    const Delivery& medium = held[0].message.length == 200'000 ? held[1] : held[0];
    p.call(150'000, 3);
    p.pump();
    EXPECT_EQ(p.b.metrics().bufferWaits, 1u);
    p.b.releaseMessage(medium.message, p.now);  // room for 20 KB, not for 150 KB
    p.sinkB.take();
    p.call(20'000, 4);
    p.pump();
    EXPECT_EQ(p.b.metrics().bufferWaits, 2u) << "the younger message waits although it fits";
    EXPECT_TRUE(p.deliveries(p.b).empty());
    p.b.releaseMessage(big.message, p.now);
    EXPECT_EQ(p.sinkB.count(wire::PacketType::Resend), 2u) << "both waiters get buffers";
    p.pump();
    auto done = p.deliveries(p.b);
    ASSERT_EQ(done.size(), 2u);
    EXPECT_EQ(done[0].message.length + done[1].message.length, 170'000u);
    for (auto& d : done) p.b.releaseMessage(d.message, p.now);
    EXPECT_EQ(p.b.bufferPool().bytesInUse(), 0u);
}

TEST(Engine, PeerTableIsBoundedAndEvictsIdlePeers) {
    Config cb = baseConfig();
    cb.maxPeers = 4;
    cb.peerGcThreshold = 2;
    cb.peerIdleNs = 5'000'000;
    Pair p(baseConfig(), cb);
    // B calls ten servers in turn and gives up on each call: a peer each, left idle.
    const std::vector<uint8_t> req(100, 1);
    int refused = 0;
    for (uint32_t i = 0; i < 10; ++i) {
        uint64_t id = 0;
        if (!p.b.startRequest(Address::ipv4(0x0b000000 + i, kPort), req, 0, p.now, &id).isOk()) {
            ++refused;
            continue;
        }
        ASSERT_TRUE(p.b.abortClientRpc(id, p.now).isOk());
        p.sinkB.take();
        p.deliveries(p.b);
    }
    EXPECT_EQ(refused, 6) << "beyond the cap, peers not yet idle for peerIdleNs stay";
    EXPECT_EQ(p.b.peerCount(), 4u);
    p.tick(10);
    EXPECT_LE(p.b.peerCount(), 2u) << "idle peers beyond the threshold are collected";
    EXPECT_GT(p.b.metrics().peersEvicted, 0u);
}

// Packets that need no state of ours (CUTOFFS, NEED_ACK, RESEND for an RPC we do not
// know, FREEZE) from addresses we do not know make no peers: spoofed, they once filled
// the peer table, and then no new client was served and no new server could be called
// for peerIdleNs. They are still answered where an answer is due.
TEST(Engine, PacketsFromUnknownAddressesThatNeedNoStateMakeNoPeers) {
    auto cutoffs = [] {
        wire::CutoffsHeader h;
        h.cutoffs = {0, 0, 0, 0, 1'000'000, 15'000, 2'800, 200};
        h.version = 1;
        std::vector<uint8_t> buf(wire::kMaxHeaderSize);
        buf.resize(wire::encodeCutoffs(buf, from(0), h));
        return buf;
    };
    const char* names[] = {"CUTOFFS", "NEED_ACK", "RESEND from a server", "RESEND from a client", "FREEZE"};
    for (int kind = 0; kind < 5; ++kind) {
        Config cb = baseConfig();
        cb.maxPeers = 16;
        Pair p(baseConfig(), cb);
        for (uint32_t i = 0; i < 100; ++i) {
            std::vector<uint8_t> pkt;
            switch (kind) {
                case 0: pkt = cutoffs(); break;
                case 1: pkt = encode(from(3), wire::PacketType::NeedAck); break;
                case 2: pkt = encode(from(3), wire::PacketType::Resend, 0, 100); break;
                case 3: pkt = encode(from(2), wire::PacketType::Resend, 0, 0); break;
                case 4: pkt = encode(from(2), wire::PacketType::Freeze); break;
            }
            p.b.receive(Address::ipv4(0x0c000000 + i, kPort), pkt, p.now);
        }
        EXPECT_EQ(p.b.peerCount(), 0u) << names[kind];
        EXPECT_FALSE(p.b.takeFreeze()) << names[kind];
        // Answers: an ACK for a NEED_ACK, RPC_UNKNOWN for a RESEND.
        const size_t answers = kind == 1 ? p.sinkB.count(wire::PacketType::Ack)
                               : (kind == 2 || kind == 3) ? p.sinkB.count(wire::PacketType::RpcUnknown)
                                                          : 100;
        EXPECT_EQ(answers, 100u) << names[kind];
        if (kind == 1) {
            const wire::Packet ack = p.sinkB.first(wire::PacketType::Ack).packet();
            ASSERT_EQ(ack.ack.numAcks, 1u);
            EXPECT_EQ(ack.ack.acks[0].clientId, 2u) << "acks the server's RPC (its client id)";
        }
        p.sinkB.take();
        // A client and a server that are new to B are served as ever.
        p.call(100);
        p.pump();
        auto served = p.deliveries(p.b);
        EXPECT_EQ(served.size(), 1u) << names[kind];
        for (auto& d : served) p.b.releaseMessage(d.message, p.now);
        uint64_t id;
        EXPECT_TRUE(p.b.startRequest(Address::ipv4(0x0d000001, kPort), std::vector<uint8_t>(100, 1), 0, p.now, &id)
                        .isOk())
            << names[kind];
    }
}


// At-most-once outlives an evicted peer (found by engine_fuzz): a request served, then
// dropped by the server's application, so the server holds nothing for its client. The
// client, paused longer than peerIdleNs (its silence counts one tick per timer call),
// asks again; the server, having forgotten the idle peer, answers RPC_UNKNOWN; the client
// sends the request again. It ran a second time; now the id is remembered as served.
TEST(Engine, ARequestServedBeforeItsPeerWasEvictedDoesNotRunAgain) {
    Config cb = baseConfig();
    cb.peerGcThreshold = 0;  // collect every idle peer
    cb.peerIdleNs = 5'000'000;
    Pair p(baseConfig(), cb);
    const uint64_t id = p.call(100);
    p.pump();
    auto served = p.deliveries(p.b);
    ASSERT_EQ(served.size(), 1u);
    p.b.releaseMessage(served[0].message, p.now);
    ASSERT_TRUE(p.b.abortServerRpc(served[0].server, p.now).isOk());
    // The client is paused: only B's timer runs, until A's peer is evicted.
    for (int i = 0; i < 10 && p.b.metrics().peersEvicted == 0; ++i) {
        p.now += cb.peerIdleNs;
        p.b.advance(p.now);
    }
    ASSERT_EQ(p.b.metrics().peersEvicted, 1u);
    ASSERT_EQ(p.b.peerCount(), 0u);
    // The client wakes up and asks (RESEND); the server, with the peer made anew, still
    // knows the id was served: RPC_UNKNOWN flagged "id used", and the call ends at once.
    // (Before the served ids outlived the peer, a plain RPC_UNKNOWN made the client send
    // its request again, and it ran twice.)
    std::vector<Delivery> ended;
    p.tickUntil(p.cfgA.resendTicks + 2, [&] { return !(ended = p.deliveries(p.a)).empty(); });
    EXPECT_TRUE(p.deliveries(p.b).empty()) << "the request ran twice";
    EXPECT_EQ(p.a.metrics().clientRestarts, 0u) << "the client sent its request again";
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].clientId, id);
    EXPECT_EQ(ended[0].status.code(), StatusCode::Aborted);
    EXPECT_EQ(p.a.metrics().clientRpcsRefusedStale, 1u);
    EXPECT_EQ(p.a.metrics().clientIdSkips, 0u) << "near what the server knows: not a client behind";
}

// A client restarted at the same address whose first id comes from a clock that now
// reads 4 s earlier: its ids are far below those the server remembers of that address.
// The calls in flight are refused ("id used": the server cannot tell them from stale
// copies; "ids behind": far below what it knows), and the ids then jump ahead, once for
// all of them: the next call is served. Every call was refused, for good.
TEST(Engine, AClientRestartedWithIdsBelowWhatTheServerRemembersIsServedAgain) {
    Config ca = baseConfig();
    ca.firstClientId = 1'000'000'000'000;
    Pair p(ca, baseConfig());
    for (auto& d : p.roundTrips(3, 100)) p.a.releaseMessage(d.message, p.now);
    p.tick(2);
    p.pump();
    // The restarted client, at A's address.
    Config ca2 = baseConfig();
    ca2.firstClientId = ca.firstClientId - 4'000'000'000;
    CaptureSink sinkA2;
    Engine a2(ca2, sinkA2);
    auto pump2 = [&] {
        for (int n = 0; n < 100 && (!sinkA2.out.empty() || !p.sinkB.out.empty()); ++n) {
            for (auto& x : sinkA2.take())
                if (x.dest == kB) p.b.receive(kA, x.bytes, p.now);
            for (auto& x : p.sinkB.take())
                if (x.dest == kA) a2.receive(kB, x.bytes, p.now);
        }
    };
    auto callsUntilEnded = [&](int calls, uint64_t* id) {
        std::vector<uint8_t> req(100, 0xab);
        for (int i = 0; i < calls; ++i) EXPECT_TRUE(a2.startRequest(kB, req, 0, p.now, id).isOk());
        pump2();
        std::vector<Delivery> ended;
        for (int t = 0; t < ca2.timeoutTicks + 5 && static_cast<int>(ended.size()) < calls; ++t) {
            for (auto& d : p.deliveries(p.b)) {  // B answers whatever reaches it
                p.b.releaseMessage(d.message, p.now);
                std::vector<uint8_t> resp(50, 0xcd);
                EXPECT_TRUE(p.b.sendResponse(d.server, resp, p.now).isOk());
            }
            pump2();
            for (auto& d : p.deliveries(a2)) ended.push_back(d);
            if (static_cast<int>(ended.size()) >= calls) break;
            p.now += ca2.tickNs;
            a2.advance(p.now);
            p.b.advance(p.now);
            a2.sendDueAcks();
            p.b.sendDueAcks();
            pump2();
            for (auto& d : p.deliveries(a2)) ended.push_back(d);
        }
        EXPECT_EQ(static_cast<int>(ended.size()), calls);
        std::vector<StatusCode> codes;
        for (auto& d : ended) {
            codes.push_back(d.status.code());
            if (d.message.data) a2.releaseMessage(d.message, p.now);
        }
        return codes;
    };
    uint64_t first = 0, second = 0, third = 0;
    for (StatusCode c : callsUntilEnded(5, &first)) EXPECT_EQ(c, StatusCode::Aborted) << "refused: the server cannot tell";
    EXPECT_EQ(a2.metrics().clientRpcsRefusedStale, 5u);
    EXPECT_EQ(a2.metrics().clientIdSkips, 1u) << "one jump for the calls under way at the restart";
    for (StatusCode c : callsUntilEnded(1, &second)) EXPECT_EQ(c, StatusCode::Ok) << "the next call was refused too";
    EXPECT_GT(second, ca.firstClientId + 6);
    for (StatusCode c : callsUntilEnded(1, &third)) EXPECT_EQ(c, StatusCode::Ok);
    EXPECT_EQ(third, second + 2);
    EXPECT_EQ(a2.metrics().clientIdSkips, 1u);
}

// Bad input: RPC_UNKNOWN with flag bits a server would not send so. "Ids behind" alone
// (without "id used") changes nothing: the client sends its request again, as for any
// RPC_UNKNOWN. Every bit set: the call ends as refused and the ids jump once; the next
// call is served all the same (a jump only ever moves ids up).
TEST(Engine, FlagBitsOnAnRpcUnknownOnlyEverMoveIdsUp) {
    Pair p;
    const uint64_t id = p.call(100);
    p.sinkA.take();  // (the request is lost)
    wire::CommonHeader c = from(id | 1);
    c.flags = wire::kFlagIdsBehind;
    p.a.receive(kB, encode(c, wire::PacketType::RpcUnknown), p.now);
    EXPECT_EQ(p.a.metrics().clientIdSkips, 0u);
    EXPECT_EQ(p.a.metrics().clientRestarts, 1u);
    p.pump();
    EXPECT_EQ(p.serveAll(10), 1);
    p.pump();
    p.expectResponsesAtA(1);
    const uint64_t id2 = p.call(100);
    p.sinkA.take();
    c = from(id2 | 1);
    c.flags = 0xff;
    p.a.receive(kB, encode(c, wire::PacketType::RpcUnknown), p.now);
    const auto ended = p.deliveries(p.a);
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].status.code(), StatusCode::Aborted);
    EXPECT_EQ(p.a.metrics().clientIdSkips, 1u);
    const uint64_t id3 = p.call(100);
    EXPECT_GT(id3, id2 + 2);
    p.pump();
    EXPECT_EQ(p.serveAll(10), 1);
    p.pump();
    p.expectResponsesAtA(1);
}

// The other side of the same rule: a request the server gave up on while it was still
// arriving was never executed, and stays servable when its peer is evicted meanwhile.
TEST(Engine, ARequestGivenUpWhileArrivingIsServedAfterItsPeerWasEvicted) {
    Config cb = baseConfig();
    cb.peerGcThreshold = 0;
    cb.peerIdleNs = 5'000'000;
    Pair p(baseConfig(), cb);
    p.call(5'000);
    auto packets = p.sinkA.take();
    ASSERT_GT(packets.size(), 1u);
    p.b.receive(kA, packets[0].bytes, p.now);  // only the first packet arrives
    // The client is paused: only B's timer runs. B gives the request up, then evicts the
    // idle peer.
    for (int i = 0; i < 20 * cb.timeoutTicks && p.b.metrics().peersEvicted == 0; ++i) {
        p.now += cb.tickNs;
        p.b.advance(p.now);
        p.sinkB.take();
    }
    ASSERT_EQ(p.b.metrics().serverRpcsTimedOut, 1u);
    ASSERT_EQ(p.b.metrics().peersEvicted, 1u);
    // The client wakes up and asks: RPC_UNKNOWN (not "id used"), and it sends the
    // request again, which is served.
    p.tickUntil(p.cfgA.resendTicks + 2, [&] { return p.a.metrics().clientRestarts != 0; });
    EXPECT_EQ(p.a.metrics().clientRpcsRefusedStale, 0u) << "a request that never ran was refused";
    EXPECT_EQ(p.a.metrics().clientRestarts, 1u);
    p.expectOneMessageAtB(5'000);
}

// A server with room for two peers, evicting those idle for 5 ms.
Config twoPeerServer(Config c = baseConfig()) {
    c.maxPeers = 2;
    c.peerIdleNs = 5'000'000;
    return c;
}

// A 100-byte call of A's whose request B runs and then drops unanswered (the
// application aborts it): its id `*x`, and the request's packets in `*request`.
void runAndDropAtB(Pair& p, uint64_t* x, std::vector<Sent>* request) {
    *x = p.call(100);
    *request = p.sinkA.take();
    ASSERT_EQ(request->size(), 1u);
    p.b.receive(kA, (*request)[0].bytes, p.now);
    auto served = p.deliveries(p.b);
    ASSERT_EQ(served.size(), 1u);
    p.b.releaseMessage(served[0].message, p.now);
    ASSERT_TRUE(p.b.abortServerRpc(served[0].server, p.now).isOk());
}

// A one-packet request of 100 bytes, id `id`, from `client`, reaches B and is handed to
// its application, which holds it (in service); returns it, for B to answer or drop.
ServerRpcId requestHeldAtB(Pair& p, const Address& client, uint64_t id) {
    wire::DataHeader d;
    d.messageLength = 100;
    d.incoming = 100;
    std::vector<uint8_t> pkt(wire::kDataHeaderSize);
    wire::encodeData(pkt, from(id), d);
    pkt.insert(pkt.end(), 100, 0x5a);
    p.b.receive(client, pkt, p.now);
    p.sinkB.take();
    auto d2 = p.deliveries(p.b);
    EXPECT_EQ(d2.size(), 1u);
    if (d2.empty()) return {};
    p.b.releaseMessage(d2[0].message, p.now);
    return d2[0].server;
}

// The answer B gives to a RESEND about `id` from `client` (an RPC it does not hold).
wire::Packet rpcUnknownForResend(Pair& p, const Address& client, uint64_t id) {
    p.sinkB.take();
    p.b.receive(client, encode(from(id), wire::PacketType::Resend, 0, 0), p.now);
    EXPECT_EQ(p.sinkB.count(wire::PacketType::RpcUnknown), 1u);
    return p.sinkB.first(wire::PacketType::RpcUnknown).packet();
}

// A client whose peer was evicted comes back at the cap of the peer table, its record of
// ids served the oldest kept. Making its peer evicts an idle one, whose own record, in a
// store bounded to maxPeers, pushes the oldest out: the client's record must be taken
// first, or the peer made anew knows nothing of what was served and a request that ran
// is invited to run again, and does.
TEST(Engine, AClientComingBackAtThePeerCapKeepsItsIdsServed) {
    const Config cb = twoPeerServer();
    Pair p(baseConfig(), cb);
    uint64_t x = 0;
    std::vector<Sent> request;
    ASSERT_NO_FATAL_FAILURE(runAndDropAtB(p, &x, &request));
    // Three more clients, each served once, peerIdleNs apart: the second evicts A's peer,
    // the third the first client's. B remembers two evicted peers (maxPeers): A's oldest.
    for (uint32_t i = 0; i < 3; ++i) {
        p.now += cb.peerIdleNs;
        const ServerRpcId other = requestHeldAtB(p, Address::ipv4(0x0b000001 + i, kPort), 2);
        ASSERT_TRUE(p.b.abortServerRpc(other, p.now).isOk());
    }
    ASSERT_EQ(p.b.metrics().peersEvicted, 2u);
    ASSERT_EQ(p.b.peerCount(), 2u);
    // A, paused all along, asks about its call: the peer made for it evicts the second
    // client's, and still knows x was served.
    p.now += cb.peerIdleNs;
    const wire::Packet answer = rpcUnknownForResend(p, kA, x);
    EXPECT_EQ(p.b.metrics().peersEvicted, 3u);
    EXPECT_EQ(p.b.peerCount(), 2u);
    EXPECT_TRUE(answer.common.flags & wire::kFlagIdUsed) << "the client was invited to send it again";
    EXPECT_EQ(p.b.metrics().requestPermits, 0u);
    // A late copy of the request (or one sent again) is dropped, not run a second time.
    p.b.receive(kA, request[0].bytes, p.now);
    p.b.receive(kA, restartedCopy(request[0]), p.now);
    EXPECT_TRUE(p.deliveries(p.b).empty()) << "the request ran twice";
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::StaleRequest)], 2u);
}

// A client whose peer was evicted asks about a request that ran, while the peer table is
// full of peers that may not be evicted yet: no peer is made for it, but its record of
// ids served still answers. It is told the id was used, not invited to send the request
// again; and the record stays for when the client can have a peer again.
TEST(Engine, AClientAskingAtAFullPeerTableIsStillToldItsIdWasUsed) {
    Config ca = baseConfig();
    ca.firstClientId = 1'000'000;
    const Config cb = twoPeerServer(smallWindowServer());
    Pair p(ca, cb);
    uint64_t x = 0;
    std::vector<Sent> request;
    ASSERT_NO_FATAL_FAILURE(runAndDropAtB(p, &x, &request));
    // Two other clients whose requests B is executing: the second evicts A's idle peer,
    // and neither peer may be evicted while it has an RPC.
    p.now += cb.peerIdleNs;
    const ServerRpcId busy = requestHeldAtB(p, Address::ipv4(0x0b000001, kPort), 2);
    requestHeldAtB(p, Address::ipv4(0x0b000002, kPort), 2);
    ASSERT_EQ(p.b.metrics().peersEvicted, 1u);
    ASSERT_EQ(p.b.peerCount(), 2u);
    p.now += cb.peerIdleNs;
    const wire::Packet answer = rpcUnknownForResend(p, kA, x);
    EXPECT_TRUE(answer.common.flags & wire::kFlagIdUsed) << "the client was invited to send it again";
    EXPECT_FALSE(answer.common.flags & wire::kFlagIdsBehind) << "near what B knows of the client";
    EXPECT_EQ(p.b.peerCount(), 2u);
    EXPECT_EQ(p.b.metrics().peersEvicted, 1u);
    // An id above those served was never run here: a plain RPC_UNKNOWN. One more than
    // B's window (64 ids) below them: "ids behind" as well.
    auto flagsFor = [&](uint64_t id) { return rpcUnknownForResend(p, kA, id).common.flags; };
    const uint8_t behind = wire::kFlagIdUsed | wire::kFlagIdsBehind;
    EXPECT_EQ(flagsFor(x + 2), 0u);
    EXPECT_EQ(flagsFor(x - 126), wire::kFlagIdUsed);
    EXPECT_EQ(flagsFor(x - 128), behind);
    EXPECT_EQ(p.b.peerCount(), 2u);
    // Once a peer is free to go, A gets one, which still knows x was served, and answers
    // as its record did.
    ASSERT_TRUE(p.b.abortServerRpc(busy, p.now).isOk());
    p.now += cb.peerIdleNs;
    p.b.receive(kA, request[0].bytes, p.now);
    EXPECT_EQ(p.b.metrics().peersEvicted, 2u);
    EXPECT_TRUE(p.deliveries(p.b).empty()) << "the request ran twice";
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::StaleRequest)], 1u);
    EXPECT_EQ(flagsFor(x), wire::kFlagIdUsed);
    EXPECT_EQ(flagsFor(x + 2), 0u);
    EXPECT_EQ(flagsFor(x - 126), wire::kFlagIdUsed);
    EXPECT_EQ(flagsFor(x - 128), behind);
    EXPECT_EQ(p.b.metrics().requestPermits, 0u);
}

// The same at a full peer table that is also overloaded (as many requests in service as
// maxPendingRequests allows): an id that ran is still said to be used, not answered with
// BUSY (which would keep the client waiting for a request that can never run again).
TEST(Engine, AnEvictedClientAskingUnderOverloadIsToldItsIdWasUsed) {
    Config cb = twoPeerServer();
    cb.maxPendingRequests = 2;
    Pair p(baseConfig(), cb);
    uint64_t x = 0;
    std::vector<Sent> request;
    ASSERT_NO_FATAL_FAILURE(runAndDropAtB(p, &x, &request));
    p.now += cb.peerIdleNs;
    requestHeldAtB(p, Address::ipv4(0x0b000001, kPort), 2);
    requestHeldAtB(p, Address::ipv4(0x0b000002, kPort), 2);
    ASSERT_EQ(p.b.metrics().peersEvicted, 1u);
    p.sinkB.take();
    p.b.receive(kA, encode(from(x), wire::PacketType::Resend, 0, 0), p.now);
    EXPECT_EQ(p.sinkB.count(wire::PacketType::Busy), 0u) << "told to wait for a request that ran";
    ASSERT_EQ(p.sinkB.count(wire::PacketType::RpcUnknown), 1u);
    EXPECT_TRUE(p.sinkB.first(wire::PacketType::RpcUnknown).packet().common.flags & wire::kFlagIdUsed);
    // An id never served is still asked to wait while the server is overloaded.
    p.sinkB.take();
    p.b.receive(kA, encode(from(x + 2), wire::PacketType::Resend, 0, 0), p.now);
    EXPECT_EQ(p.sinkB.count(wire::PacketType::Busy), 1u);
}

// The records of evicted clients are bounded to maxPeers, the oldest dropped first; a
// record taken back by a client that returned is no longer one of them. Here A's record
// and one other are all the server keeps, and A's must stay (it used to be dropped, the
// returned client's entry counted as a third).
TEST(Engine, RecordsOfReturnedClientsDoNotPushOutOthers) {
    const Config cb = twoPeerServer();
    Pair p(baseConfig(), cb);
    uint64_t x = 0;
    std::vector<Sent> request;
    ASSERT_NO_FATAL_FAILURE(runAndDropAtB(p, &x, &request));
    const Address c1 = Address::ipv4(0x0b000001, kPort), c2 = Address::ipv4(0x0b000002, kPort),
                  c3 = Address::ipv4(0x0b000003, kPort);
    auto serveOnce = [&](const Address& c, uint64_t id) {
        p.now += cb.peerIdleNs;
        const ServerRpcId r = requestHeldAtB(p, c, id);
        ASSERT_TRUE(p.b.abortServerRpc(r, p.now).isOk());
    };
    serveOnce(c1, 2);  // peers: A, c1
    serveOnce(c2, 2);  // evicts A: records A
    serveOnce(c3, 2);  // evicts c1: records A, c1
    serveOnce(c1, 4);  // c1 takes its record back and evicts c2: records A, c2
    ASSERT_EQ(p.b.metrics().peersEvicted, 3u);
    p.now += cb.peerIdleNs;
    const wire::Packet answer = rpcUnknownForResend(p, kA, x);
    EXPECT_TRUE(answer.common.flags & wire::kFlagIdUsed) << "A's record of ids served was dropped";
    EXPECT_EQ(p.b.metrics().requestPermits, 0u);
    p.b.receive(kA, restartedCopy(request[0]), p.now);
    EXPECT_TRUE(p.deliveries(p.b).empty()) << "the request ran twice";
}

// A request the server never ran, whose id fell below its at-most-once window while it
// was out of reach (its packet lost here; refused under overload in real life) and newer
// requests of the same client were served. The client's RESEND shows it is still
// waiting; the server, which never ran that id, tells it to send the request again and
// admits the copy (flagged as restarted): the call succeeds. (It used to end as
// Aborted: with 2 Mops to one server, 5 ms of silence are 10,000 newer ids.)
TEST(Engine, ALostRequestBelowTheServersWindowIsServedWhenTheClientAsks) {
    Pair p(baseConfig(), smallWindowServer());
    const uint64_t lost = p.call(100, 77);
    p.sinkA.take();  // never reaches the server
    for (auto& d : p.roundTrips(100, 100)) p.a.releaseMessage(d.message, p.now);  // 100 newer ids: the window slides past the first
    int ticks, served;
    const std::vector<Delivery> ended = p.tickUntilAnswered(&ticks, &served);
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].clientId, lost);
    EXPECT_EQ(ended[0].cookie, 77u);
    ASSERT_EQ(ended[0].kind, Delivery::Kind::Response) << ended[0].status.toString();
    EXPECT_EQ(ended[0].message.length, 50u);
    p.a.releaseMessage(ended[0].message, p.now);
    EXPECT_LE(ticks, p.cfgA.resendTicks + 2) << "the call waited for more than its first RESEND";
    EXPECT_EQ(served, 1);
    EXPECT_EQ(p.b.metrics().serverRequestsReceived, 101u);
    EXPECT_EQ(p.b.metrics().requestPermits, 1u);
    EXPECT_EQ(p.b.metrics().requestsReadmitted, 1u);
    EXPECT_EQ(p.a.metrics().clientRpcsRefusedStale, 0u);
    EXPECT_EQ(p.a.metrics().clientRestarts, 1u);
}

// The overload case: a request refused (BUSY) while the server was full, whose id fell
// below the window as newer calls went through one at a time, is served once the client
// asks again and the server has room.
TEST(Engine, ARequestRefusedUnderOverloadIsServedAfterTheWindowMovesPastIt) {
    Pair p(baseConfig(), smallWindowServer(1));
    p.call(100);
    p.deliverAToB();
    const uint64_t refused = p.call(100);
    p.pump();
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::Overload)], 1u);
    EXPECT_GE(p.a.metrics().packetsReceived[EngineMetrics::typeIndex(wire::PacketType::Busy)], 1u);
    EXPECT_EQ(p.serveAll(50), 1);
    p.pump();
    p.releaseAll(p.a);
    p.oneAtATime(100);  // each is admitted
    int ticks, served;
    const std::vector<Delivery> ended = p.tickUntilAnswered(&ticks, &served);
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].clientId, refused);
    ASSERT_EQ(ended[0].kind, Delivery::Kind::Response) << ended[0].status.toString();
    p.a.releaseMessage(ended[0].message, p.now);
    EXPECT_EQ(served, 1);
    EXPECT_EQ(p.b.metrics().requestsReadmitted, 1u);
}

// Bad input: flag bits on a request's DATA, "restarted" among them, change nothing for
// an id the server has not seen (it is served, once); and for an id it served, no flag
// gets a copy in.
TEST(Engine, FlagBitsOnARequestsDataAreIgnoredOutsideAPermit) {
    Pair p;
    const uint64_t id = p.call(100);
    std::vector<Sent> sent = p.sinkA.take();
    ASSERT_EQ(sent.size(), 1u);
    const wire::Packet pk = sent[0].packet();
    wire::CommonHeader c = pk.common;
    c.flags = 0xff;
    std::vector<uint8_t> flagged(wire::kMaxHeaderSize);
    flagged.resize(wire::encodeData(flagged, c, pk.data));
    flagged.insert(flagged.end(), pk.payload.begin(), pk.payload.end());
    p.b.receive(kA, flagged, p.now);
    ASSERT_NO_FATAL_FAILURE(p.answerAtB(id));
    p.tick();
    p.pump();  // the ack frees the server's RPC
    p.b.receive(kA, flagged, p.now);
    EXPECT_TRUE(p.deliveries(p.b).empty()) << "a served request ran again";
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::StaleRequest)], 1u);
    EXPECT_EQ(p.b.metrics().requestsReadmitted, 0u);
}

// A restarted copy refused for overload uses up its permit (permits left to expire
// would crowd out live ones); the client's next RESEND earns a new one.
TEST(Engine, ARestartedCopyRefusedForOverloadUsesUpItsPermit) {
    Pair p(baseConfig(), smallWindowServer(1));
    const uint64_t lost = p.call(100);
    std::vector<Sent> original = p.sinkA.take();
    ASSERT_EQ(original.size(), 1u);
    p.oneAtATime(100);
    const std::vector<uint8_t> restarted = restartedCopy(original[0]);
    auto resend = [&] { p.b.receive(kA, encode(from(lost), wire::PacketType::Resend, 0, wire::kResendAll), p.now); };
    resend();
    EXPECT_EQ(p.b.metrics().requestPermits, 1u);
    p.call(100);
    p.deliverAToB();  // the server is full again
    p.b.receive(kA, restarted, p.now);
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::Overload)], 1u);
    EXPECT_EQ(p.serveAll(50), 1);
    p.pump();
    p.releaseAll(p.a);
    const uint64_t stale = p.b.metrics().dropped[static_cast<size_t>(DropReason::StaleRequest)];
    p.b.receive(kA, restarted, p.now);
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::StaleRequest)], stale + 1) << "the permit outlived the refusal";
    resend();
    EXPECT_EQ(p.b.metrics().requestPermits, 2u);
    p.b.receive(kA, restarted, p.now);
    EXPECT_EQ(p.b.metrics().requestsReadmitted, 1u);
    EXPECT_EQ(p.serveAll(50), 1);
}

// At-most-once still holds below the window: a request the server ran and then dropped
// without the client's ack (here the application drops it) is never run again. The
// client asking about it, after the window moved past its id, is told the id was used and
// its call ends as Aborted (at its first RESEND, not at its timeout).
TEST(Engine, ARequestRunAndDroppedBelowTheWindowIsNeverRunAgain) {
    Pair p(baseConfig(), smallWindowServer());
    const uint64_t dropped = p.call(100);
    ASSERT_TRUE(p.b.abortServerRpc(p.requestAtB(), p.now).isOk());
    for (auto& d : p.roundTrips(100, 100)) p.a.releaseMessage(d.message, p.now);
    int ticks, served;
    const std::vector<Delivery> ended = p.tickUntilAnswered(&ticks, &served);
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].clientId, dropped);
    EXPECT_EQ(ended[0].status.code(), StatusCode::Aborted) << ended[0].status.toString();
    EXPECT_LE(ticks, p.cfgA.resendTicks + 1);
    EXPECT_EQ(served, 0) << "the request ran twice";
    EXPECT_EQ(p.a.metrics().clientRpcsRefusedStale, 1u);
    EXPECT_EQ(p.b.metrics().requestPermits, 0u);
}

// The permit admits only a copy the client sends again after being told to: a late copy
// of the original transmission (not flagged as restarted) stays stale, as does a flagged
// copy with no permit, or one that comes after its permit expired. And a permit admits
// one copy, once.
TEST(Engine, OnlyARestartedCopyWithALivePermitIsAdmittedBelowTheWindow) {
    Pair p(baseConfig(), smallWindowServer());
    const uint64_t lost = p.call(100);
    std::vector<Sent> original = p.sinkA.take();
    ASSERT_EQ(original.size(), 1u);
    for (auto& d : p.roundTrips(100, 100)) p.a.releaseMessage(d.message, p.now);
    const uint64_t stale = p.b.metrics().dropped[static_cast<size_t>(DropReason::StaleRequest)];
    auto staleDrops = [&] { return p.b.metrics().dropped[static_cast<size_t>(DropReason::StaleRequest)] - stale; };
    const std::vector<uint8_t> restarted = restartedCopy(original[0]);
    p.b.receive(kA, restarted, p.now);  // no permit yet
    EXPECT_EQ(staleDrops(), 1u);
    p.b.receive(kA, encode(from(lost), wire::PacketType::Resend, 0, wire::kResendAll), p.now);
    ASSERT_EQ(p.sinkB.count(wire::PacketType::RpcUnknown), 1u);
    EXPECT_EQ(p.sinkB.first(wire::PacketType::RpcUnknown).packet().common.flags, 0u) << "told the id was used";
    p.sinkB.take();
    p.b.receive(kA, original[0].bytes, p.now);  // a late copy of the original
    EXPECT_EQ(staleDrops(), 2u);
    p.tick(static_cast<int>(p.b.permitTicks()) + 1);
    p.sinkA.take();
    p.sinkB.take();
    p.b.receive(kA, restarted, p.now);  // the permit expired
    EXPECT_EQ(staleDrops(), 3u);
    EXPECT_TRUE(p.deliveries(p.b).empty());
    p.b.receive(kA, encode(from(lost), wire::PacketType::Resend, 0, wire::kResendAll), p.now);
    p.b.receive(kA, restarted, p.now);
    EXPECT_EQ(staleDrops(), 3u);
    ASSERT_TRUE(p.b.sendResponse(p.requestAtB(), std::vector<uint8_t>(10, 1), p.now).isOk());
    wire::AckEntry ack{lost, kPort};
    wire::CommonHeader c = from(lost);
    std::vector<uint8_t> buf(wire::kMaxHeaderSize);
    wire::AckHeader ah;
    ah.numAcks = 1;
    ah.acks[0] = ack;
    c.type = wire::PacketType::Ack;
    buf.resize(wire::encodeAck(buf, c, ah));
    const size_t rpcs = p.b.rpcCount();
    p.b.receive(kA, buf, p.now);
    EXPECT_EQ(p.b.rpcCount(), rpcs - 1) << "the ack did not end the served RPC";
    p.b.receive(kA, restarted, p.now);  // the permit was used up
    EXPECT_EQ(staleDrops(), 4u);
    EXPECT_TRUE(p.deliveries(p.b).empty());
    EXPECT_EQ(p.b.metrics().requestsReadmitted, 1u);
    // A late RESEND (sent before the response arrived, delivered after the ack) finds
    // the request run: no second permit, and a second restarted copy stays out.
    const uint64_t permits = p.b.metrics().requestPermits;
    p.sinkB.take();
    p.b.receive(kA, encode(from(lost), wire::PacketType::Resend, 0, wire::kResendAll), p.now);
    ASSERT_EQ(p.sinkB.count(wire::PacketType::RpcUnknown), 1u);
    EXPECT_EQ(p.sinkB.first(wire::PacketType::RpcUnknown).packet().common.flags, wire::kFlagIdUsed);
    EXPECT_EQ(p.b.metrics().requestPermits, permits);
    p.b.receive(kA, restarted, p.now);
    EXPECT_EQ(staleDrops(), 5u);
    EXPECT_TRUE(p.deliveries(p.b).empty());
}

// Ticks both engines, delivering what they send except every packet about RPC `id`
// (either way), until `done()` (at most 10,000 ticks).
void tickLosingEveryPacketOf(Pair& p, uint64_t id, const std::function<bool()>& done) {
    auto about = [&](const Sent& s) { return (s.packet().common.senderId & ~uint64_t{1}) == id; };
    for (int tick = 0; !done() && tick < 10'000; ++tick) {
        p.tick();
        for (int round = 0; round < 100 && (!p.sinkA.out.empty() || !p.sinkB.out.empty()); ++round) {
            for (auto& s : p.sinkA.take())
                if (!about(s)) p.b.receive(kA, s.bytes, p.now);
            for (auto& s : p.sinkB.take())
                if (!about(s)) p.a.receive(kB, s.bytes, p.now);
        }
    }
}

// Newer calls move B's window past `x`, whose call is still open at A; A's next RESEND
// about it must end it as Aborted (B ran it), without B running it again or granting a
// permit to send it again.
void expectToldTheIdWasUsed(Pair& p, uint64_t x) {
    for (auto& d : p.roundTrips(100, 100)) p.a.releaseMessage(d.message, p.now);
    int ticks, served;
    const std::vector<Delivery> ended = p.tickUntilAnswered(&ticks, &served);
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].clientId, x);
    EXPECT_EQ(ended[0].status.code(), StatusCode::Aborted) << ended[0].status.toString();
    EXPECT_EQ(served, 0) << "the request ran twice";
    EXPECT_EQ(p.b.metrics().requestPermits, 0u);
}

// A server that gives up waiting for the client's ack (NEED_ACK unanswered) records the
// request as run: when the client, which never got the response, asks about it after
// the window moved past it, it is told the id was used (Aborted), not to send it again.
TEST(Engine, ARequestWhoseAckWasGivenUpOnBelowTheWindowIsNeverRunAgain) {
    Config ca = baseConfig();
    ca.timeoutTicks = 1000;  // the client outlasts the server's NEED_ACKs (50 x 2 ticks)
    Pair p(ca, smallWindowServer());
    const uint64_t x = p.call(100);
    ASSERT_TRUE(p.b.sendResponse(p.requestAtB(), std::vector<uint8_t>(10, 1), p.now).isOk());
    p.sinkB.take();  // the response is lost
    // Until the server gives up, every packet about x is lost, both ways.
    tickLosingEveryPacketOf(p, x, [&] { return p.b.metrics().serverRpcsAbandoned != 0; });
    ASSERT_EQ(p.b.metrics().serverRpcsAbandoned, 1u);
    ASSERT_TRUE(p.deliveries(p.a).empty()) << "the call ended before the server gave up";
    // (Given up inside the window; now newer calls move it past x.)
    expectToldTheIdWasUsed(p, x);
}

// The same when the server gives up in the middle of its response (the client silent
// past the timeout while the server waits for its grants): the request ran, and the
// client, asking about it once the window has moved past it, is told the id was used.
TEST(Engine, ARequestWhoseResponseTimedOutBelowTheWindowIsNeverRunAgain) {
    Config ca = baseConfig();
    ca.timeoutTicks = 1000;  // the client outlasts the server's timeout (100 ticks)
    Pair p(ca, smallWindowServer());
    const uint64_t x = p.call(100);
    ASSERT_TRUE(p.b.sendResponse(p.requestAtB(), std::vector<uint8_t>(200'000, 1), p.now).isOk());
    p.sinkB.take();  // the unscheduled part of the response is lost
    tickLosingEveryPacketOf(p, x, [&] { return p.b.metrics().serverRpcsTimedOut != 0; });
    ASSERT_EQ(p.b.metrics().serverRpcsTimedOut, 1u);
    EXPECT_EQ(p.b.metrics().serverRpcsAbandoned, 0u) << "gave up on the ack, not on the response";
    ASSERT_TRUE(p.deliveries(p.a).empty()) << "the call ended before the server gave up";
    expectToldTheIdWasUsed(p, x);
}

// An RPC_UNKNOWN flagged "id used" for an id the client does not know (a late copy after
// the call finished) changes nothing; a plain one still restarts the request.
TEST(Engine, OnlyAFlaggedRpcUnknownEndsACall) {
    Pair p;
    const uint64_t id = p.call(100);
    p.sinkA.take();
    wire::CommonHeader c = from(id | 1);
    p.a.receive(kB, encode(c, wire::PacketType::RpcUnknown), p.now);
    EXPECT_EQ(p.a.metrics().clientRestarts, 1u);
    EXPECT_TRUE(p.deliveries(p.a).empty());
    wire::CommonHeader other = from((id + 2) | 1);
    other.flags = wire::kFlagIdUsed;
    p.a.receive(kB, encode(other, wire::PacketType::RpcUnknown), p.now);
    EXPECT_TRUE(p.deliveries(p.a).empty()) << "a call we never made ended";
    c.flags = wire::kFlagIdUsed;
    p.a.receive(kB, encode(c, wire::PacketType::RpcUnknown), p.now);
    auto ended = p.deliveries(p.a);
    ASSERT_EQ(ended.size(), 1u);
    EXPECT_EQ(ended[0].status.code(), StatusCode::Aborted);
}

// Bad input: flag bits the protocol does not define mean nothing (an RPC_UNKNOWN with all
// of them but "id used" still restarts the request), and "id used" on an RPC_UNKNOWN to
// a server's RPC only discards it, as a plain one does.
TEST(Engine, UndefinedRpcUnknownFlagsAreIgnored) {
    Pair p;
    const uint64_t id = p.call(100);
    p.sinkA.take();
    wire::CommonHeader c = from(id | 1);
    c.flags = static_cast<uint8_t>(~wire::kFlagIdUsed);
    p.a.receive(kB, encode(c, wire::PacketType::RpcUnknown), p.now);
    EXPECT_EQ(p.a.metrics().clientRestarts, 1u);
    EXPECT_TRUE(p.deliveries(p.a).empty());
    p.pump();
    auto requests = p.deliveries(p.b);
    ASSERT_EQ(requests.size(), 1u);
    p.b.releaseMessage(requests[0].message, p.now);
    wire::CommonHeader fromClient = from(id);
    fromClient.flags = 0xff;
    p.b.receive(kA, encode(fromClient, wire::PacketType::RpcUnknown), p.now);
    EXPECT_EQ(p.b.metrics().serverRpcsAborted, 1u);
    EXPECT_EQ(p.b.rpcCount(), 0u);
    EXPECT_EQ(p.a.metrics().clientRpcsRefusedStale, 0u);
}

// ---------------------------------------------------------------- grants

TEST(Engine, FifoGrantsReachTheOldestMessage) {
    Config cb = baseConfig();
    cb.grantFifoFraction = 0.5;
    cb.fifoGrantIncrement = 10'000;
    cb.maxOvercommit = 1;
    Pair p(baseConfig(), cb);
    p.call(900'000, 1);  // oldest, longest: never first in SRPT order
    p.call(300'000, 2);
    p.pump(200);
    EXPECT_GT(p.b.metrics().fifoGrantBytes, 0u);
}

TEST(Engine, DynamicWindowSplitsMaxIncomingAmongActiveMessages) {
    Pair p;
    p.call(1'000'000);
    auto pkts = p.sinkA.take();
    for (auto& s : pkts) p.b.handlePacket(kA, s.bytes, p.now);
    p.b.finishBatch(p.now);
    wire::Packet g = p.sinkB.first(wire::PacketType::Grant).packet();
    uint32_t received = static_cast<uint32_t>(pkts.size()) * p.cfgA.maxPayload;
    EXPECT_EQ(g.grant.offset, received + p.cfgB.maxIncoming / 2);
}

TEST(Engine, TimeGoingBackwardsIsHarmless) {
    Pair p;
    p.call(100'000);
    p.a.advance(p.now - 5'000'000);
    p.a.handlePacket(kB, encode(from(3), wire::PacketType::Busy), p.now - 10'000'000);
    EXPECT_EQ(p.a.rpcCount(), 1u);
    p.pump();
    EXPECT_EQ(p.serveAll(10), 1);
}

}  // namespace
}  // namespace homa::engine

namespace homa::engine {
namespace {

// Receive livelock (seed 003): past maxPendingRequests, new requests are dropped before
// any state exists for them, while work in progress goes on; the refused client retries.
// B admits one pending request at a time; A's first request fills it.
Config oneRequestServer() {
    Config cb = baseConfig();
    cb.maxPendingRequests = 1;
    return cb;
}
std::vector<Delivery> fillTheServer(Pair& p) {
    p.call(100, 1);
    p.pump();
    auto first = p.deliveries(p.b);
    EXPECT_EQ(first.size(), 1u);
    return first;
}

TEST(Engine, OverloadRefusesNewRequestsBeforeMakingStateAndTheyAreRetried) {
    Pair p(baseConfig(), oneRequestServer());
    auto first = fillTheServer(p);
    ASSERT_EQ(first.size(), 1u);
    p.call(100, 2);
    p.pump();
    EXPECT_TRUE(p.deliveries(p.b).empty());
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::Overload)], 1u);
    EXPECT_EQ(p.b.rpcCount(), 1u) << "no state for the refused request";
    // The first request is answered; the second client retries (RESEND -> RPC_UNKNOWN ->
    // request again) and is served.
    p.b.releaseMessage(first[0].message, p.now);
    ASSERT_TRUE(p.b.sendResponse(first[0].server, std::vector<uint8_t>(10), p.now).isOk());
    p.pump();
    for (int i = 0; i < 20 && p.serveAll(10) == 0; ++i) {
        p.tick();
        p.pump();
    }
    p.pump();
    p.expectResponsesAtA(2);
}

// A client told BUSY many times (a server holding its request for long) asks less often,
// but still several times within one timeout: with the backoff capped at half the
// timeout it asked once, and under 20 % loss each way one lost RESEND or BUSY (36 %)
// timed out a call whose server was alive (4-13 % of 1 MB calls with 16 outstanding).
TEST(Engine, ABackedOffClientStillAsksSeveralTimesBeforeItTimesOut) {
    Pair p;
    p.call(100);
    p.pump();
    auto held = p.deliveries(p.b);  // the server executes it for a long time: BUSY
    ASSERT_EQ(held.size(), 1u);
    for (int i = 0; i < 40 * p.cfgA.resendTicks; ++i) {
        p.tick();
        p.pump();
    }
    ASSERT_GE(p.b.metrics().busySent, static_cast<uint64_t>(kMaxBusyBackoff)) << "the backoff is at its cap";
    ASSERT_TRUE(p.deliveries(p.a).empty());
    // The server falls silent (or everything is lost): count the client's RESENDs until
    // it gives up.
    const uint64_t before = p.a.metrics().resendsSent;
    int ticks = 0;
    while (p.deliveries(p.a).empty() && ticks < 3 * p.cfgA.timeoutTicks) {
        p.tick();
        p.sinkA.take();
        p.sinkB.take();
        ++ticks;
    }
    EXPECT_LE(ticks, p.cfgA.timeoutTicks) << "it still times out in time";
    EXPECT_GE(p.a.metrics().resendsSent - before, 4u);
    EXPECT_EQ(p.a.metrics().clientRpcsTimedOut, 1u);
    p.b.releaseMessage(held[0].message, p.now);
}

// A response that waits for the client's own grants (the client grants one message at a
// time and another holds its grants) draws BUSY for each of the client's RESENDs. That
// BUSY is no reason to back off: those RESENDs are what keeps the server from timing the
// response out. Backing off there let servers time out responses under loss, and the
// clients then sent their requests again and timed out.
TEST(Engine, BusyForAResponseWaitingForOurGrantsDoesNotSlowOurResends) {
    Config ca = baseConfig();
    ca.maxOvercommit = 1;  // A grants to one response at a time
    Pair p(ca, baseConfig());
    const uint64_t first = p.call(100);
    const uint64_t second = p.call(100);
    p.pump();
    auto requests = p.deliveries(p.b);
    ASSERT_EQ(requests.size(), 2u);
    for (auto& r : requests) {
        p.b.releaseMessage(r.message, p.now);
        ASSERT_TRUE(p.b.sendResponse(r.server, std::vector<uint8_t>(500'000, 1), p.now).isOk());
    }
    // Both responses' unscheduled bytes arrive; A grants one of them, whose scheduled
    // bytes are then all lost, so it never completes and holds A's only grant slot.
    std::set<uint64_t> granted;
    auto deliverExceptScheduledData = [&] {
        for (int round = 0; round < 100 && (!p.sinkA.out.empty() || !p.sinkB.out.empty()); ++round) {
            for (auto& s : p.sinkA.take()) {
                if (s.type() == wire::PacketType::Grant) granted.insert(s.packet().common.senderId & ~uint64_t{1});
                p.b.receive(kA, s.bytes, p.now);
            }
            for (auto& s : p.sinkB.take()) {
                const wire::Packet pk = s.packet();
                if (pk.common.type == wire::PacketType::Data && pk.data.offset >= p.cfgB.unschedBytes) continue;
                p.a.receive(kB, s.bytes, p.now);
            }
        }
    };
    deliverExceptScheduledData();
    ASSERT_EQ(granted.size(), 1u);
    const uint64_t waiting = granted.count(first) ? second : first;
    // Within one timeout (the granted call, starved of its data, ends at the timeout).
    int resends = 0;
    const int ticks = p.cfgA.timeoutTicks - 10;
    for (int i = 0; i < ticks; ++i) {
        p.tick();
        for (auto& s : p.sinkA.out)
            resends += s.type() == wire::PacketType::Resend && (s.packet().common.senderId & ~uint64_t{1}) == waiting;
        deliverExceptScheduledData();
    }
    EXPECT_GT(p.b.metrics().busySent, 0u);
    // At the plain interval, not doubling after each BUSY: about ticks / resendInterval
    // (backing off, it was half that).
    EXPECT_GE(resends, ticks / p.cfgA.resendInterval - 2);
    EXPECT_TRUE(p.deliveries(p.a).empty());
    EXPECT_EQ(p.b.rpcCount(), 2u);
    p.a.abortClientRpc(first, p.now);
    p.a.abortClientRpc(second, p.now);
}

// A client with more responses waiting for its grants than its per-peer budget of
// RESENDs reaches within the server's timeout: each waiting response hears from the
// client only every (waiting / budget) ticks. The server asks the client (NEED_ACK,
// answered with a RESEND) instead of timing them out; it timed them out, and the
// client's next RESEND was told "id used": healthy calls failed as aborted.
TEST(Engine, ResponsesWaitingForGrantsOutliveTheClientsResendBudget) {
    Config ca = baseConfig();
    ca.maxOvercommit = 1;        // A grants to one response at a time
    ca.timerPacketsPerPeer = 1;  // and asks about one RPC per tick
    Config cb = baseConfig();
    cb.unschedBytes = 1'000;
    cb.timerPacketsPerPeer = 1;  // and so does B: its questions wait their turn too
    Pair p(ca, cb);
    constexpr int kCalls = 300;
    for (int i = 0; i < kCalls; ++i) p.call(100, static_cast<uint64_t>(i));
    p.pump();
    ASSERT_EQ(p.serveAll(30'000), kCalls);
    // Every response's scheduled data is lost: the one A grants to never completes, and
    // the rest wait for grants throughout.
    auto pumpLosingScheduledData = [&] {
        for (int round = 0; round < 1000 && (!p.sinkA.out.empty() || !p.sinkB.out.empty()); ++round) {
            for (auto& s : p.sinkA.take()) p.b.receive(kA, s.bytes, p.now);
            for (auto& s : p.sinkB.take()) {
                const wire::Packet pk = s.packet();
                if (pk.common.type == wire::PacketType::Data && pk.data.offset >= cb.unschedBytes) continue;
                p.a.receive(kB, s.bytes, p.now);
            }
        }
    };
    pumpLosingScheduledData();
    int timeouts = 0, aborted = 0;
    std::string firstAborted;
    const int ticks = 3 * cb.timeoutTicks;
    for (int t = 0; t < ticks; ++t) {
        p.tick();
        pumpLosingScheduledData();
        for (auto& d : p.deliveries(p.a)) {
            ASSERT_EQ(d.kind, Delivery::Kind::Failure);
            if (d.status.code() == StatusCode::Timeout) {
                ++timeouts;
            } else if (aborted++ == 0) {
                firstAborted = d.status.message();
            }
        }
    }
    std::printf("%d ticks: %d calls timed out (starved of data), %d others failed; B sent %llu NEED_ACKs\n", ticks,
                timeouts, aborted, static_cast<unsigned long long>(p.b.metrics().needAcksSent));
    EXPECT_EQ(aborted, 0) << "first: " << firstAborted;
    EXPECT_LE(timeouts, ticks / ca.timeoutTicks);
    // B let none of the responses go: not by timeout, by giving up on NEED_ACKs, or by an
    // ACK for a call that A still has.
    EXPECT_EQ(p.b.metrics().serverRpcsTimedOut, 0u);
    EXPECT_EQ(p.b.metrics().serverRpcsAbandoned, 0u);
    EXPECT_LE(p.b.metrics().serverRpcsAcked, static_cast<uint64_t>(timeouts));
    EXPECT_GE(p.b.rpcCount(), static_cast<size_t>(kCalls - timeouts));
    // A's calls still waiting: all of the rest.
    std::vector<RpcInfo> rpcs;
    p.a.listRpcs(rpcs);
    EXPECT_EQ(rpcs.size(), static_cast<size_t>(kCalls - timeouts));
}

// The other side of that question: a response that waits for grants from a call the
// client has let go (aborted) is freed when the client answers the NEED_ACK with an ACK,
// within the timeout.
TEST(Engine, AResponseWaitingForGrantsOfAnAbortedCallIsFreedByTheClientsAck) {
    Config cb = baseConfig();
    cb.unschedBytes = 1'000;
    Pair p(baseConfig(), cb);
    const uint64_t id = p.call(100);
    p.pump();
    ASSERT_EQ(p.serveAll(30'000), 1);
    // The unscheduled packet arrives; A's grants are lost.
    for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    p.sinkA.take();
    p.a.abortClientRpc(id, p.now);
    p.deliveries(p.a);
    ASSERT_EQ(p.b.rpcCount(), 1u);
    const int ticks = p.tickUntil(p.cfgB.timeoutTicks, [&] { return p.b.rpcCount() == 0; });
    EXPECT_LT(ticks, p.cfgB.timeoutTicks);
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 1u);
    EXPECT_GE(p.b.metrics().needAcksSent, 1u);
    EXPECT_EQ(p.b.metrics().serverRpcsTimedOut, 0u);
    EXPECT_EQ(p.b.rpcCount(), 0u);
}

// The questions about a response that waits for grants are not the ones that give up
// on an ack (needAckLimit): with a small limit, a client silent for a while (its answers
// lost) had its response given up long before the timeout.
TEST(Engine, QuestionsAboutAResponseWaitingForGrantsDoNotCountTowardsTheAckLimit) {
    Config cb = baseConfig();
    cb.unschedBytes = 1'000;
    cb.needAckLimit = 1;
    Pair p(baseConfig(), cb);
    const uint64_t id = p.call(100);
    p.pump();
    ASSERT_EQ(p.serveAll(30'000), 1);
    for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    // For most of a timeout, everything A sends is lost (B's NEED_ACKs reach A).
    for (int i = 0; i < p.cfgB.timeoutTicks - 10; ++i) {
        p.tick();
        p.sinkA.take();
        for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    }
    EXPECT_GE(p.b.metrics().needAcksSent, 2u);
    EXPECT_EQ(p.b.metrics().serverRpcsAbandoned, 0u);
    EXPECT_EQ(p.b.rpcCount(), 1u);
    p.a.abortClientRpc(id, p.now);
}

// A refused request's client is told BUSY: it neither times out while the server is
// alive nor floods it with RESENDs; each BUSY doubles its wait (up to an eighth of the
// timeout).
TEST(Engine, RefusedClientIsToldBusyAndBacksOffWithoutTimingOut) {
    Pair p(baseConfig(), oneRequestServer());
    auto first = fillTheServer(p);
    ASSERT_EQ(first.size(), 1u);
    uint64_t refused = p.call(100, 2);
    p.pump();
    EXPECT_EQ(p.b.metrics().busySent, 1u) << "the refusal is answered with BUSY";
    const int ticks = 3 * p.cfgA.timeoutTicks;
    for (int i = 0; i < ticks; ++i) {
        p.tick();
        p.pump();
    }
    EXPECT_TRUE(p.deliveries(p.a).empty()) << "no timeout while the server says it is busy";
    // Without backoff, each of the two RPCs would send a RESEND every resendInterval ticks.
    const uint64_t unbacked = 2u * static_cast<uint64_t>(ticks / p.cfgA.resendInterval);
    std::printf("RESENDs in %d ticks: %llu (without backoff about %llu)\n", ticks,
                static_cast<unsigned long long>(p.a.metrics().resendsSent), static_cast<unsigned long long>(unbacked));
    EXPECT_LE(p.a.metrics().resendsSent, unbacked / 2);
    // It asked again (RESEND) and was told BUSY each time, without sending the request
    // again while the server was still full.
    EXPECT_GE(p.b.metrics().busySent, 3u);
    EXPECT_EQ(p.b.metrics().rpcUnknownSent, 0u);
    EXPECT_EQ(p.a.metrics().clientRestarts, 0u);
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::Overload)], 1u);
    // Once the first request is answered, the refused one gets in and completes.
    p.b.releaseMessage(first[0].message, p.now);
    ASSERT_TRUE(p.b.sendResponse(first[0].server, std::vector<uint8_t>(10), p.now).isOk());
    p.pump();
    for (int i = 0; i < p.cfgA.timeoutTicks && p.serveAll(10) == 0; ++i) {
        p.tick();
        p.pump();
    }
    p.pump();
    auto responses = p.deliveries(p.a);
    ASSERT_EQ(responses.size(), 2u);
    bool sawRefused = false;
    for (auto& d : responses) {
        EXPECT_EQ(d.kind, Delivery::Kind::Response);
        sawRefused |= d.clientId == refused;
        if (d.message.data) p.a.releaseMessage(d.message, p.now);
    }
    EXPECT_TRUE(sawRefused);
}

// Control packets occupy the NIC too: the pacer's backlog estimate counts them (GRANTs
// and the like, uncounted, let the real NIC queue grow far past the estimate).
TEST(Engine, ControlPacketsCountInThePacersBacklogEstimate) {
    Config cb = baseConfig();
    cb.linkMbps = 1000;  // 1 Gbps: 8 ns per byte
    Pair p(baseConfig(), cb);
    p.call(200'000);  // B will grant
    for (auto& s : p.sinkA.take()) p.b.receive(kA, s.bytes, p.now);
    p.b.advance(p.now);
    auto out = p.sinkB.take();
    size_t wire = 0;
    for (auto& s : out) wire += s.bytes.size() + cb.wireOverheadBytes;
    ASSERT_FALSE(out.empty()) << "B sent grants";
    EXPECT_GE(p.b.nicQueue().idleAt(), p.now + static_cast<Time>(wire) * 8 - 1);
}

// The hard cap evicts an idle peer even when the least recently used peer is busy.
// An RPC_UNKNOWN from the client (forged, or a confused client) makes the server drop a
// request it has handed to its application: the request may have run, and is recorded
// so. Once the client's ids have moved its id below the window, a RESEND for it is told
// the id was used; it was taken for a request never run, and invited to send it again.
TEST(Engine, ARequestDroppedOnRpcUnknownAfterDeliveryCountsAsRun) {
    Pair p(baseConfig(), smallWindowServer());
    const uint64_t x = p.call(100);
    p.pump();
    auto held = p.deliveries(p.b);
    ASSERT_EQ(held.size(), 1u);
    p.b.releaseMessage(held[0].message, p.now);  // in service
    p.b.receive(kA, encode(from(x), wire::PacketType::RpcUnknown), p.now);
    EXPECT_EQ(p.b.metrics().serverRpcsAborted, 1u);
    // 200 more calls, served and acked: x falls far below B's 64-id window.
    for (auto& d : p.roundTrips(200, 100)) p.a.releaseMessage(d.message, p.now);
    p.tick(3);
    p.pump();
    p.sinkB.take();
    p.b.receive(kA, encode(from(x), wire::PacketType::Resend, 0, 0), p.now);
    ASSERT_EQ(p.sinkB.count(wire::PacketType::RpcUnknown), 1u);
    const wire::Packet answer = p.sinkB.first(wire::PacketType::RpcUnknown).packet();
    EXPECT_TRUE(answer.common.flags & wire::kFlagIdUsed) << "the client was invited to send it again";
    EXPECT_EQ(p.b.metrics().requestPermits, 0u);
}

TEST(Engine, PeerTableCapEvictsAnIdlePeerBehindABusyOne) {
    Config cb = baseConfig();
    cb.maxPeers = 3;
    Pair p(baseConfig(), cb);
    p.call(100);  // A's request: B now has a busy peer (A) until it answers
    p.pump();
    auto held = p.deliveries(p.b);
    ASSERT_EQ(held.size(), 1u);
    p.b.releaseMessage(held[0].message, p.now);  // the RPC stays in service
    // B calls two servers and gives up on both calls: two idle peers.
    const std::vector<uint8_t> req(100, 1);
    auto callFrom = [&](uint32_t host) {
        uint64_t id = 0;
        Status s = p.b.startRequest(Address::ipv4(host, kPort), req, 0, p.now, &id);
        if (s.isOk()) {
            EXPECT_TRUE(p.b.abortClientRpc(id, p.now).isOk());
        }
        p.sinkB.take();
        p.deliveries(p.b);
        return s.isOk();
    };
    ASSERT_TRUE(callFrom(0x0b000001));
    ASSERT_TRUE(callFrom(0x0b000002));
    ASSERT_EQ(p.b.peerCount(), 3u);
    EXPECT_FALSE(callFrom(0x0b000003));
    EXPECT_EQ(p.b.metrics().peersEvicted, 0u) << "idle peers are kept for peerIdleNs (at-most-once)";
    p.now += cb.peerIdleNs;
    EXPECT_TRUE(callFrom(0x0b000003));
    EXPECT_EQ(p.b.peerCount(), 3u);
    EXPECT_EQ(p.b.metrics().peersEvicted, 1u);
    EXPECT_EQ(p.b.rpcCount(), 1u) << "the busy peer's RPC is untouched";
}


// ---------------------------------------------------------------- liveness (found by engine_fuzz)

std::vector<uint8_t> forgedData(uint64_t senderId, uint32_t messageLength, uint32_t offset, uint32_t bytes,
                                uint32_t incoming = 40'000) {
    wire::CommonHeader c = from(senderId);
    wire::DataHeader d;
    d.messageLength = messageLength;
    d.incoming = std::min<uint32_t>(messageLength, incoming);
    d.offset = offset;
    d.cutoffVersion = 1;
    std::vector<uint8_t> pkt(wire::kDataHeaderSize);
    wire::encodeData(pkt, c, d);
    pkt.insert(pkt.end(), bytes, 0x77);
    return pkt;
}

// A first DATA packet that promises far more unscheduled bytes than the receiver allows
// ("incoming" = the whole megabyte), repeated as a keep-alive and followed by GRANTs to
// the server RPC it started, neither takes the receiver's room for grants nor keeps the
// bogus RPC alive: other clients' messages are granted, and the bogus RPC times out.
TEST(Engine, AnInflatedPromiseRepeatedAsAKeepAliveBlocksNoGrants) {
    Pair p;
    const Address h = Address::ipv4(0x0b000001, kPort);
    const std::vector<uint8_t> bogus = forgedData(2, 1'000'000, 0, 1'000, 1'000'000);
    p.b.receive(h, bogus, p.now);
    p.b.finishBatch(p.now);
    EXPECT_LE(p.b.incomingOutstanding(), p.cfgB.maxIncoming) << "the promise is capped";
    p.sinkB.take();
    p.call(200'000);
    bool delivered = false;
    p.tickUntil(p.cfgB.timeoutTicks + 10, [&] {
        p.b.receive(h, bogus, p.now);  // the same packet again: a duplicate
        p.b.receive(h, encode(from(2), wire::PacketType::Grant, 100'000), p.now);
        for (auto& d : p.deliveries(p.b)) {
            p.b.releaseMessage(d.message, p.now);
            delivered = true;
        }
        return false;  // (to the end: the bogus RPC must have timed out by then, once)
    });
    EXPECT_TRUE(delivered);
    // (Its next copy starts the same request afresh: it was never run.)
    EXPECT_EQ(p.b.metrics().serverRpcsTimedOut, 1u) << "the bogus RPC timed out";
}

// Packets of one byte at every other offset of a megabyte message would leave it in
// hundreds of thousands of pieces, each packet costing work in proportion: beyond a
// bound (one hole per KB), such packets are dropped and counted, and the message still
// completes from full packets.
TEST(Engine, ScatteredTinyPacketsCannotShredAMessage) {
    Pair p;
    constexpr uint32_t kLength = 1'000'000;
    for (uint32_t i = 0; i < 5'000; ++i) p.b.receive(kA, forgedData(2, kLength, 2 * i, 1), p.now);
    const uint64_t scattered = p.b.metrics().dropped[static_cast<size_t>(DropReason::Scattered)];
    EXPECT_GE(scattered, 5'000u - 1 - kLength / 1024);  // (the first packet leaves no hole)
    EXPECT_LE(scattered, 5'000u - 256);
    for (uint32_t off = 0; off < kLength; off += 1'416)
        p.b.receive(kA, forgedData(2, kLength, off, std::min<uint32_t>(1'416, kLength - off), kLength), p.now);
    auto d = p.deliveries(p.b);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].message.length, kLength);
    EXPECT_EQ(d[0].message.data[0], 0x77);
    EXPECT_EQ(d[0].message.data[kLength - 1], 0x77);
    p.b.releaseMessage(d[0].message, p.now);
}

// DATA that contradicts the known message length is no sign of life: the RPC still
// times out instead of living forever on rejected packets.
TEST(Engine, InconsistentDataDoesNotKeepAnRpcAlive) {
    Pair p;
    uint64_t id = p.call(100, 5);
    p.sinkA.take();
    p.a.receive(kB, forgedData(id ^ 1, 5000, 0, 1416), p.now);  // response: 5000 bytes
    for (int i = 0; i < p.cfgA.timeoutTicks + 5; ++i) {
        p.tick();
        p.a.receive(kB, forgedData(id ^ 1, 7000, 1416, 1416), p.now);  // contradicts it
    }
    auto d = p.deliveries(p.a);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].status.code(), StatusCode::Timeout);
}

// A RESEND for bytes past the end of our message is neither answered nor a sign of life.
TEST(Engine, ResendBeyondTheMessageIsIgnored) {
    Pair p;
    uint64_t id = p.call(100, 5);
    p.sinkA.take();
    for (int i = 0; i < p.cfgA.timeoutTicks + 5; ++i) {
        p.tick();
        p.sinkA.take();
        p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::Resend, 1416, 98'584, 0), p.now);
        if (p.a.rpcCount() == 0) break;  // timed out: from now on the RPC is unknown
        EXPECT_TRUE(p.sinkA.out.empty()) << "answered a RESEND for bytes we do not have: "
                                         << wire::toString(p.sinkA.out[0].type());
    }
    auto d = p.deliveries(p.a);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].status.code(), StatusCode::Timeout);
}

// A RESEND naming response bytes, at a server that never started the response, comes
// from a client holding phantom response state: it is told RPC_UNKNOWN so it starts over.
TEST(Engine, ResendForAResponseNotStartedGetsRpcUnknown) {
    Pair p;
    uint64_t id = p.call(100'000);
    auto pkts = p.sinkA.take();
    p.b.receive(kA, pkts[0].bytes, p.now);
    p.sinkB.take();
    p.b.receive(kA, encode(from(id), wire::PacketType::Resend, 1416, 10'000, 0), p.now);
    ASSERT_EQ(p.sinkB.out.size(), 1u);
    EXPECT_EQ(p.sinkB.out[0].type(), wire::PacketType::RpcUnknown);
    p.sinkB.take();
    p.b.receive(kA, encode(from(id), wire::PacketType::Resend, 0, wire::kResendAll, 0), p.now);
    ASSERT_EQ(p.sinkB.out.size(), 1u);
    EXPECT_EQ(p.sinkB.out[0].type(), wire::PacketType::Busy);
}

// Buffers freed by a timeout (not by the application) must reach a message waiting
// for buffer space.
TEST(Engine, BufferWaiterResumesWhenATimedOutRpcFreesItsBuffer) {
    Config ca = baseConfig();
    ca.maxMessageLength = 100'000;
    ca.maxBufferBytes = BufferPool::classSize(100'000) + 1000;
    ca.smallMessageReserve = 0;
    Pair p(ca);
    // A stranger's partial request fills A's pool, then goes silent.
    p.a.receive(Address::ipv4(0x0a000009, kPort), forgedData(2, 100'000, 0, 1416), p.now);
    uint64_t id = p.call(10);
    p.pump();
    ASSERT_EQ(p.serveAll(50'000), 1);
    p.pump();
    EXPECT_EQ(p.a.metrics().bufferWaits, 1u);
    for (int i = 0; i < 2 * p.cfgA.timeoutTicks && p.a.rpcCount() > 0; ++i) {
        p.tick();
        p.pump();
    }
    auto d = p.deliveries(p.a);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].clientId, id);
    EXPECT_EQ(d[0].kind, Delivery::Kind::Response);
    if (d[0].message.data) p.a.releaseMessage(d[0].message, p.now);
}

TEST(Engine, RecognisesPacketsThatWouldStartNewRequests) {
    Pair p;
    p.call(5000);
    auto pkts = p.sinkA.take();
    EXPECT_TRUE(p.b.isNewRequest(kA, pkts[0].bytes));
    p.b.receive(kA, pkts[0].bytes, p.now);
    EXPECT_FALSE(p.b.isNewRequest(kA, pkts[1].bytes)) << "the RPC exists now";
    EXPECT_TRUE(p.b.isNewRequest(Address::ipv4(0x0a0000ee, kPort), pkts[1].bytes)) << "unknown peer";
    EXPECT_FALSE(p.b.isNewRequest(kA, encode(from(2), wire::PacketType::Resend, 0, 0)));
    EXPECT_FALSE(p.b.isNewRequest(kA, std::span(pkts[0].bytes.data(), 10))) << "too short to tell";
    EXPECT_FALSE(p.b.isNewRequest(kA, forgedData(7, 100, 0, 100))) << "from a server";
}

// A sender whose bytes wait behind shorter messages (SRPT, pacing) is not silent: a
// RESEND for bytes it has not sent yet gets BUSY, or a starved receiver would give up.
TEST(Engine, ResendForBytesStillQueuedAtTheSenderGetsBusy) {
    Config ca = baseConfig();
    ca.linkMbps = 1000;
    ca.maxNicQueueNs = 5'000;
    Pair p(ca);
    uint64_t id = p.call(100'000);
    p.sinkA.take();  // the first few packets; the rest of the unscheduled bytes wait
    p.a.receive(kB, encode(from(id ^ 1), wire::PacketType::Resend, 30 * 1416 - 1416, 1416, 0), p.now);
    ASSERT_EQ(p.sinkA.out.size(), 1u);
    EXPECT_EQ(p.sinkA.out[0].type(), wire::PacketType::Busy);
}

// A duplicate DATA packet announcing more `incoming` raises what we count as granted,
// up to our own unscheduled bytes (whole packets): the incoming budget must count the
// raise too, or grants could exceed maxIncoming.
TEST(Engine, DuplicateDataWithLargerIncomingIsCountedInTheBudget) {
    Config cb = baseConfig();
    cb.unschedBytes = 60'000;  // 43 packets: 60,888 bytes
    Pair p(baseConfig(), cb);
    p.b.handlePacket(kA, forgedData(2, 100'000, 0, 1416), p.now);  // incoming 40,000
    EXPECT_EQ(p.b.incomingOutstanding(), 40'000u - 1416);
    auto again = forgedData(2, 100'000, 0, 1416);
    again[32] = 0x00; again[33] = 0x00; again[34] = 0xc3; again[35] = 0x50;  // incoming 50,000
    p.b.handlePacket(kA, again, p.now);
    EXPECT_EQ(p.b.incomingOutstanding(), 50'000u - 1416);
    again[32] = 0x00; again[33] = 0x01; again[34] = 0x80; again[35] = 0x00;  // incoming 98,304
    p.b.handlePacket(kA, again, p.now);
    EXPECT_EQ(p.b.incomingOutstanding(), 60'888u - 1416) << "believed up to our unscheduled bytes";
}


// ---------------------------------------------------------------- calls waiting for their turn

Config perServer(uint32_t limit) {
    Config c = baseConfig();
    c.maxClientRpcsPerServer = limit;
    return c;
}

// The RPCs whose DATA is among `packets`.
std::set<uint64_t> sendersOf(const std::vector<Sent>& packets) {
    std::set<uint64_t> ids;
    for (const Sent& s : packets)
        if (s.type() == wire::PacketType::Data) ids.insert(s.packet().common.senderId);
    return ids;
}

void releaseAllOf(Engine& e, const std::vector<Delivery>& ds, Time now) {
    for (const Delivery& d : ds)
        if (d.message.data) e.releaseMessage(d.message, now);
}

// With one turn per server: B (holding `first`'s request) answers it; `second` then starts,
// and is answered; A gets both responses, in that order.
void serveInTurn(Pair& p, uint64_t first, uint64_t second) {
    ASSERT_EQ(p.serveAll(10), 1);
    p.pump();
    ASSERT_EQ(p.serveAll(10), 1) << "the second call started when the first ended";
    p.pump();
    auto d = p.deliveries(p.a);
    ASSERT_EQ(d.size(), 2u);
    EXPECT_EQ(d[0].clientId, first);
    EXPECT_EQ(d[1].clientId, second);
    releaseAllOf(p.a, d, p.now);
}

// Beyond maxClientRpcsPerServer, calls to one server wait, sending nothing, and start in
// the order they were made as earlier ones end.
TEST(Engine, CallsBeyondTheLimitPerServerWaitTheirTurn) {
    Pair p(perServer(3));
    std::vector<uint64_t> ids;
    for (int i = 0; i < 5; ++i) ids.push_back(p.call(100, static_cast<uint64_t>(i)));
    EXPECT_EQ(sendersOf(p.sinkA.out), (std::set<uint64_t>{ids[0], ids[1], ids[2]}));
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 2u);
    EXPECT_EQ(p.a.rpcCount(), 5u);
    EXPECT_EQ(p.a.metrics().clientRpcsWaited, 2u);
    std::vector<RpcInfo> infos;
    p.a.listRpcs(infos);
    ASSERT_EQ(infos.size(), 5u);
    EXPECT_EQ(std::count_if(infos.begin(), infos.end(), [](const RpcInfo& i) { return i.waitingToStart; }), 2);

    p.pump();
    ASSERT_EQ(p.serveAll(10), 3);
    // The three responses end three calls: the two waiting ones start, in order.
    for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    EXPECT_EQ(sendersOf(p.sinkA.out), (std::set<uint64_t>{ids[3], ids[4]}));
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 0u);
    p.pump();
    EXPECT_EQ(p.serveAll(10), 2);
    p.pump();
    std::vector<uint64_t> cookies;
    for (auto& d : p.deliveries(p.a)) {
        EXPECT_EQ(d.kind, Delivery::Kind::Response);
        cookies.push_back(d.cookie);
        p.a.releaseMessage(d.message, p.now);
    }
    EXPECT_EQ(cookies, (std::vector<uint64_t>{0, 1, 2, 3, 4}));
    EXPECT_EQ(p.a.rpcCount(), 0u);
}

// A waiting call is not timed: however long the server takes with the calls under way
// (it says BUSY), the waiting ones neither send anything nor time out.
TEST(Engine, AWaitingCallNeverTimesOut) {
    Pair p(perServer(1));
    uint64_t first = p.call(100);
    uint64_t second = p.call(100);
    p.pump();  // B holds the first request, unanswered
    for (int i = 0; i < p.cfgA.timeoutTicks * 3; ++i) {
        p.tick();
        for (auto& s : p.sinkA.out) EXPECT_NE(s.packet().common.senderId, second);
        p.pump();
    }
    EXPECT_EQ(p.a.metrics().clientRpcsTimedOut, 0u);
    EXPECT_TRUE(p.deliveries(p.a).empty());
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 1u);
    serveInTurn(p, first, second);
}

// Aborting a call under way hands its turn to the first waiting call at once; aborting a
// waiting call just removes it.
TEST(Engine, AbortingACallPassesItsTurnOn) {
    Pair p(perServer(1));
    uint64_t first = p.call(100);
    uint64_t second = p.call(100);
    uint64_t third = p.call(100);
    p.sinkA.take();
    ASSERT_TRUE(p.a.abortClientRpc(third, p.now).isOk());
    EXPECT_TRUE(p.sinkA.out.empty()) << "a waiting call sent nothing, so it has nothing to stop";
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 1u);
    ASSERT_TRUE(p.a.abortClientRpc(first, p.now).isOk());
    EXPECT_EQ(sendersOf(p.sinkA.out), std::set<uint64_t>{second});
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 0u);
    p.pump();
    EXPECT_EQ(p.serveAll(10), 1);
    p.pump();
    auto d = p.deliveries(p.a);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].clientId, second);
    releaseAllOf(p.a, d, p.now);
}

// The limit is per server: calls to another server do not wait behind B's.
TEST(Engine, TheLimitIsPerServer) {
    const Address kC = Address::ipv4(0x0a000003, kPort);
    Pair p(perServer(1));
    p.call(100);
    std::vector<uint8_t> req(100, 1);
    uint64_t toC = 0;
    ASSERT_TRUE(p.a.startRequest(kC, req, 0, p.now, &toC).isOk());
    EXPECT_EQ(p.sinkA.out.size(), 2u);
    EXPECT_EQ(p.sinkA.out.back().dest, kC);
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 0u);
    p.call(100);
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 1u);
}

// No packet can be about a call that has sent nothing: a response to one (forged, or a
// stale id) is dropped, and the call still starts and completes normally.
TEST(Engine, APacketAboutAWaitingCallIsDropped) {
    Pair p(perServer(1));
    p.call(100);
    uint64_t waiting = p.call(100);
    const uint64_t unknownBefore = p.a.metrics().dropped[static_cast<size_t>(DropReason::UnknownRpc)];
    p.a.receive(kB, forgedData(waiting ^ 1, 100, 0, 100), p.now);
    p.a.receive(kB, encode(from(waiting ^ 1), wire::PacketType::Grant, 100, 0), p.now);
    EXPECT_TRUE(p.deliveries(p.a).empty());
    EXPECT_EQ(p.a.metrics().dropped[static_cast<size_t>(DropReason::UnknownRpc)], unknownBefore + 2);
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 1u);
    p.pump();
    p.serveAll(10);
    p.pump();
    p.serveAll(10);
    p.pump();
    auto d = p.deliveries(p.a);
    EXPECT_EQ(d.size(), 2u);
    releaseAllOf(p.a, d, p.now);
}

// A call that fails to start (no send memory) never held a turn: the count of calls
// under way stays right, so later calls neither jump the queue nor wait forever.
TEST(Engine, ACallThatFailsToStartTakesNoTurn) {
    Config ca = perServer(1);
    ca.maxMessageLength = 100'000;
    ca.maxOutgoingBytes = 150'000;
    Pair p(ca);
    std::vector<uint8_t> big(100'000, 1);
    uint64_t first = 0, refused = 0;
    ASSERT_TRUE(p.a.startRequest(kB, big, 0, p.now, &first).isOk());
    EXPECT_EQ(p.a.startRequest(kB, big, 0, p.now, &refused).code(), StatusCode::OutOfBuffers);
    uint64_t second = p.call(100);
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 1u) << "the first call still holds the only turn";
    p.pump();
    serveInTurn(p, first, second);
    p.call(100);
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 0u) << "with nothing under way, a call starts at once";
}

// 0 is no limit; an engine destroyed with calls still waiting frees them (ASan).
TEST(Engine, ZeroMeansNoLimitPerServer) {
    Pair p(perServer(0));
    for (int i = 0; i < 100; ++i) p.call(100);
    EXPECT_EQ(p.sinkA.out.size(), 100u);
    EXPECT_EQ(p.a.rpcsWaitingToStart(), 0u);
    Pair q(perServer(2));
    for (int i = 0; i < 10; ++i) q.call(50'000);
    EXPECT_EQ(q.a.rpcsWaitingToStart(), 8u);
}

// ---------------------------------------------------------------- grant scheduler

// With maxRpcsPerPeer above 1 the active set is still the best messages overall. Peer A
// has a 100 KB and a 900 KB message, peer C one of 150 KB, and two may be granted to:
// A's 100 KB and C's 150 KB (the set used to take both of A's, the best peer's, first).
TEST(Engine, TheActiveSetIsTheBestMessagesWhateverTheirPeers) {
    Config cb = baseConfig();
    cb.maxRpcsPerPeer = 2;
    cb.maxOvercommit = 2;
    Pair p(baseConfig(), cb);
    const Address kC = Address::ipv4(0x0a000003, kPort);
    p.b.handlePacket(kA, forgedData(2, 100'000, 0, 1416), p.now);
    p.b.handlePacket(kA, forgedData(4, 900'000, 0, 1416), p.now);
    p.b.handlePacket(kC, forgedData(2, 150'000, 0, 1416), p.now);
    p.sinkB.take();
    p.b.finishBatch(p.now);
    std::vector<Sent> grants;
    for (auto& sent : p.sinkB.out)
        if (sent.type() == wire::PacketType::Grant) grants.push_back(sent);
    ASSERT_EQ(grants.size(), 2u);
    bool cGranted = false, a900Granted = false;
    uint8_t aPriority = 0, cPriority = 0;
    for (auto& g : grants) {
        const wire::Packet pk = g.packet();
        if (g.dest == kC) {
            cGranted = true;
            cPriority = pk.grant.priority;
        }
        if (g.dest == kA && pk.common.senderId == 5) a900Granted = true;
        if (g.dest == kA && pk.common.senderId == 3) aPriority = pk.grant.priority;
    }
    EXPECT_TRUE(cGranted) << "C's 150 KB message got no grant";
    EXPECT_FALSE(a900Granted) << "A's 900 KB message was granted ahead of C's 150 KB one";
    EXPECT_GT(aPriority, cPriority) << "ranks follow SRPT order";
}

// FIFO grants go to the oldest message whose sender has used what it was granted. A
// client that sent the first packet of a 1 MB request and went silent has the oldest
// message; FIFO grants used to pile onto it (5 % of all that was granted) until its
// grants filled maxIncoming, and from then on no message was granted at all until it
// timed out: 20 requests of 1 MB from another client stopped after 3.
TEST(Engine, FifoGrantsPassOverASenderThatDoesNotSend) {
    Pair p;
    const Address kDead = Address::ipv4(0x0a000009, kPort);
    p.b.receive(kDead, forgedData(2, 1'000'000, 0, 1416), p.now);  // then silence
    p.sinkB.take();
    int completed = 0;
    for (int i = 0; i < 20; ++i) {
        p.call(1'000'000);
        p.pump();
        auto d = p.deliveries(p.b);
        if (d.empty()) break;
        ++completed;
        for (auto& x : d) p.b.releaseMessage(x.message, p.now);
        ASSERT_EQ(p.serveAll(0), 0);
    }
    EXPECT_EQ(completed, 20) << "requests stopped being granted while a silent sender's message held the budget";
    EXPECT_LE(p.b.incomingOutstanding(), p.cfgB.maxIncoming);
}

// FIFO credit earned while no message may have it is dropped, not saved up: fifty
// 100 KB messages, each granted to its end at once, used to bank enough for a burst of
// FIFO grants to the next long message, far above grantFifoFraction.
TEST(Engine, FifoCreditIsNotSavedUpWhileThereIsNothingToGrant) {
    Pair p;
    for (uint64_t i = 0; i < 50; ++i) {
        const uint64_t id = 2 + 2 * i;
        for (uint32_t off = 0; off < 100'000; off += 1416)
            p.b.receive(kA, forgedData(id, 100'000, off, std::min<uint32_t>(1416, 100'000 - off)), p.now);
        for (auto& d : p.deliveries(p.b)) p.b.releaseMessage(d.message, p.now);
    }
    EXPECT_EQ(p.b.metrics().fifoGrantBytes, 0u);
    p.b.receive(kA, forgedData(1000, 1'000'000, 0, 1416), p.now);
    EXPECT_EQ(p.b.metrics().fifoGrantBytes, 0u) << "a FIFO grant paid from credit earned by other messages";
}

// A lost short message comes back at the priority it first went at (its unscheduled
// level), not at the scheduled level the receiver's RESEND names, below every
// unscheduled level.
TEST(Engine, ALostShortMessageIsRetransmittedAtItsUnscheduledPriority) {
    Pair p;
    p.call(100);
    p.pump();
    ASSERT_EQ(p.serveAll(100), 1);
    ASSERT_EQ(p.sinkB.out.size(), 1u);
    const uint8_t original = p.sinkB.out[0].priority;
    p.sinkB.take();  // the response is lost
    p.tick(p.cfgA.resendTicks);
    ASSERT_EQ(p.sinkA.count(wire::PacketType::Resend), 1u);
    p.sinkB.take();
    p.deliverAToB();
    ASSERT_EQ(p.sinkB.count(wire::PacketType::Data), 1u);
    EXPECT_EQ(p.sinkB.first(wire::PacketType::Data).priority, original);
    p.pump();
    p.releaseAll(p.a);
}

// An ack riding on a request refused under overload is taken all the same: the client
// has let it go, and the RPC it frees used to keep its response until a NEED_ACK.
TEST(Engine, AnAckRidingOnARefusedRequestIsTaken) {
    Pair p(baseConfig(), smallWindowServer(1));
    const uint64_t done = p.call(100);
    p.pump();
    ASSERT_EQ(p.serveAll(10), 1);
    p.pump();
    p.releaseAll(p.a);  // the ack waits at A for a packet to B
    const Address kC = Address::ipv4(0x0a000003, kPort);  // another client fills B
    wire::CommonHeader c = from(1000);
    wire::DataHeader d;
    d.messageLength = d.incoming = 10;
    d.cutoffVersion = p.cfgB.cutoffVersion;
    std::vector<uint8_t> pkt(wire::kMaxHeaderSize);
    pkt.resize(wire::encodeData(pkt, c, d));
    pkt.insert(pkt.end(), 10, 7);
    p.b.receive(kC, pkt, p.now);
    ASSERT_EQ(p.b.pendingRequests(), 1u);
    for (auto& x : p.deliveries(p.b)) p.b.releaseMessage(x.message, p.now);  // (C's request stays in service)
    p.call(100);
    auto sent = p.sinkA.take();
    ASSERT_EQ(sent.size(), 1u);
    ASSERT_EQ(sent[0].packet().data.ack.clientId, done);
    p.b.receive(kA, sent[0].bytes, p.now);  // refused: overload
    EXPECT_EQ(p.b.metrics().dropped[static_cast<size_t>(DropReason::Overload)], 1u);
    EXPECT_EQ(p.b.metrics().serverRpcsAcked, 1u);
    EXPECT_EQ(p.b.rpcCount(), 1u);  // C's, in service
}

// At-most-once with late packets and no forgery: a RESEND delayed in the network, and a
// restarted copy of the request delayed likewise, arrive after the request ran (through
// a later restart), was acked, and the window moved past its id. The RESEND must win no
// permit, and the copy must not run. (The id, run inside the window, used to count as
// never run once the window had passed it: the RESEND won a permit and the copy ran.)
TEST(Engine, ADelayedResendAndRestartedCopyDoNotRunARequestTwice) {
    Pair p(baseConfig(), smallWindowServer());
    const uint64_t x = p.call(100);
    p.sinkA.take();  // the first transmission is lost
    auto onlyResend = [&]() {
        std::vector<Sent> s = p.sinkA.take();
        EXPECT_EQ(s.size(), 1u);
        EXPECT_EQ(s.at(0).type(), wire::PacketType::Resend);
        return s.at(0);
    };
    p.tick(p.cfgA.resendTicks);
    const Sent r1 = onlyResend();  // RESEND #1: delayed in the network
    p.tick(p.cfgA.resendInterval);
    const Sent r2 = onlyResend();  // RESEND #2 arrives: "no state" -> A restarts
    p.b.receive(kA, r2.bytes, p.now);
    ASSERT_EQ(p.sinkB.count(wire::PacketType::RpcUnknown), 1u);
    for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    std::vector<Sent> d1 = p.sinkA.take();  // restarted copy #1: delayed in the network
    ASSERT_EQ(d1.size(), 1u);
    ASSERT_EQ(d1[0].packet().common.flags, wire::kFlagRestarted);
    p.tick(p.cfgA.resendInterval);
    const Sent r3 = onlyResend();  // RESEND #3 arrives: A restarts again
    p.b.receive(kA, r3.bytes, p.now);
    for (auto& s : p.sinkB.take()) p.a.receive(kB, s.bytes, p.now);
    // Restarted copy #2 arrives; B runs x once, answers; A acks.
    ASSERT_NO_FATAL_FAILURE(p.answerAtB(x));
    p.tick(2);
    p.pump();
    ASSERT_EQ(p.b.rpcCount(), 0u) << "the ack freed x at B";
    // 100 newer calls: B's window (64 ids) moves past x.
    for (auto& d : p.roundTrips(100, 100)) p.a.releaseMessage(d.message, p.now);
    // The two delayed packets finally arrive, in the order they were sent.
    p.b.receive(kA, r1.bytes, p.now);
    p.b.receive(kA, d1[0].bytes, p.now);
    auto again = p.deliveries(p.b);
    EXPECT_TRUE(again.empty()) << "request " << x << " ran a second time; permits=" << p.b.metrics().requestPermits
                               << " readmitted=" << p.b.metrics().requestsReadmitted;
    EXPECT_EQ(p.b.metrics().serverRequestsReceived, 101u);
}

}  // namespace
}  // namespace homa::engine
