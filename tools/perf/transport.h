// What homa-perf needs from a transport, so that Homa and the TCP baseline run exactly
// the same workload through the same load generator and statistics.
//
// Message format shared by every transport: a request's first 4 bytes hold the response
// length (big-endian u32, at least 1); the rest is filler. The server answers each
// request with a response of that length, all filler. Requests are at least 4 bytes
// long. Filler is whatever the sender's memory holds: a transport writes the header
// and sends the rest of the message from memory of its own, uncopied (Homa builds each
// message in its endpoint's send memory, Endpoint::allocate(); TCP appends the message
// to its connection's output buffer), as the load generator itself writes only the
// header of each request.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "homa/address.h"

namespace homa::perf {

struct CallResult {
    bool ok = false;
    std::string error;         ///< when !ok
    uint32_t responseLength = 0;
    /// Not an RPC failure: the transport had no memory to start the call (its messages in
    /// flight fill it) and sent nothing. The caller should start fewer calls.
    bool refused = false;
};

/// Thread safety: calls may be started from any thread; each call's result is given
/// exactly once, on a transport thread (or the calling thread if the call fails at once).
class ClientTransport {
  public:
    /// Receives the result of every call started with issue(), with its token.
    using Completion = std::function<void(uint64_t token, CallResult)>;
    virtual ~ClientTransport() = default;
    /// Where the results of issue()'s calls go; set before the first one.
    void onCompletion(Completion completion) { completion_ = std::move(completion); }
    /// Sends `request` to server `server` (an index into the list given at creation); the
    /// result goes to the completion with `token` (below 2^63). A token instead of a
    /// callback per call: the load generator's hot path then stores no std::function.
    virtual void issue(size_t server, std::span<const uint8_t> request, uint64_t token) = 0;
    /// The same with a callback of the call's own (simple uses, tests): it waits in a
    /// table under a lock until the result comes.
    void call(size_t server, std::span<const uint8_t> request, std::function<void(CallResult)> done) {
        uint64_t slot;
        {
            std::lock_guard lk(parkedMu_);
            if (freeParked_.empty()) {
                slot = parked_.size();
                parked_.push_back(std::move(done));
            } else {
                slot = freeParked_.back();
                freeParked_.pop_back();
                parked_[slot] = std::move(done);
            }
        }
        issue(server, request, slot | kParked);
    }
    /// A synchronous call on the calling thread, if the transport has one (false if not,
    /// with nothing sent; true with the result, a failure included).
    virtual bool callSync(size_t server, std::span<const uint8_t> request, CallResult* result) {
        (void)server, (void)request, (void)result;
        return false;
    }
    /// Whether the load itself may be driven by callSync() (--calls sync). A transport may
    /// offer callSync() for measuring the unloaded round trip alone (TCP does).
    virtual bool hasSyncCalls() const { return false; }
    /// Between these, calls made on this thread may be held back and sent together at
    /// releaseSends() (the open-loop generator's arrivals due at once).
    virtual void holdSends() {}
    virtual void releaseSends() {}
    /// Stops: outstanding calls complete (with an error if need be) before this returns.
    virtual void stop() = 0;

  protected:
    /// Gives a call's result to whoever waits for it (transports call this).
    void complete(uint64_t token, CallResult result) {
        if ((token & kParked) == 0) return completion_(token, std::move(result));
        std::function<void(CallResult)> done;
        {
            std::lock_guard lk(parkedMu_);
            const uint64_t slot = token & ~kParked;
            done = std::move(parked_[slot]);
            parked_[slot] = nullptr;
            freeParked_.push_back(slot);
        }
        done(std::move(result));
    }

  private:
    static constexpr uint64_t kParked = uint64_t{1} << 63;  ///< marks call()'s tokens
    Completion completion_;
    std::mutex parkedMu_;
    std::vector<std::function<void(CallResult)>> parked_;  ///< call()'s callbacks (parkedMu_)
    std::vector<uint64_t> freeParked_;                      ///< (parkedMu_)
};

class ServerTransport {
  public:
    virtual ~ServerTransport() = default;
    /// The addresses the server listens on (one per port).
    virtual std::vector<Address> addresses() const = 0;
    /// Requests answered so far.
    virtual uint64_t served() const = 0;
    virtual void stop() = 0;
};

/// The bytes of a request that are not filler.
inline constexpr size_t kRequestHeaderBytes = 4;

/// Builds the 4-byte header of a request for a response of `responseLength` bytes.
inline void putResponseLength(uint8_t* p, uint32_t responseLength) {
    p[0] = static_cast<uint8_t>(responseLength >> 24);
    p[1] = static_cast<uint8_t>(responseLength >> 16);
    p[2] = static_cast<uint8_t>(responseLength >> 8);
    p[3] = static_cast<uint8_t>(responseLength);
}
/// The response length a request asks for (1 if the request is too short or asks for 0).
inline uint32_t responseLengthOf(std::span<const uint8_t> request) {
    if (request.size() < 4) return 1;
    uint32_t v = (uint32_t{request[0]} << 24) | (uint32_t{request[1]} << 16) | (uint32_t{request[2]} << 8) | request[3];
    return v == 0 ? 1 : v;
}

/// A server's work per request (--server-work-us): keeps this thread busy for `us`.
inline void busyFor(uint32_t us) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    while (std::chrono::steady_clock::now() < until) {
    }
}

// ---- TCP baseline (tcp_transport.cc)
struct TcpOptions {
    int connectionsPerServer = 1;  ///< client: connections to each server, used round robin
    int threads = 1;               ///< server: epoll threads; client: epoll threads
    uint32_t maxMessageLength = 1'000'000;
    uint32_t serverWorkUs = 0;     ///< server: busy time per request before its response
};
/// Connects to every server now; nullptr and a one-line reason if any cannot be reached
/// within `connectTimeoutMs`.
std::unique_ptr<ClientTransport> makeTcpClient(const std::vector<Address>& servers, const TcpOptions& options,
                                               int connectTimeoutMs, std::string* error);
/// Listens on `ports` consecutive ports from bind.port (0: any free ports).
std::unique_ptr<ServerTransport> makeTcpServer(const Address& bind, int ports, const TcpOptions& options,
                                               std::string* error);

}  // namespace homa::perf
