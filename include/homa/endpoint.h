// The public API: a Homa endpoint on a UDP socket.
//
//   auto ep = homa::Endpoint::open({.address = *homa::Address::parse("127.0.0.1:4000")});
//   homa::Response r = ep->call(server, bytes);             // synchronous
//   ep->callAsync(server, bytes, [](homa::Response r) {...}); // callback
//   ep->serve([](homa::ServerRequest req) { req.respond(req.message().bytes()); });
//
// Threading model. An endpoint's protocol engine is driven by an event loop that runs on
// whichever thread is waiting for something: a thread blocked in call() or receive()
// (or a handler worker waiting for a request) runs the loop itself, so a small RPC costs
// no thread switch on either side. When no application thread waits, an optional
// background thread runs the loop (EndpointOptions::pollThread) so that callbacks and
// futures complete; without it the application must call poll().
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "homa/address.h"
#include "homa/message.h"
#include "homa/metrics.h"
#include "homa/options.h"
#include "homa/status.h"

namespace homa {

namespace runtime {
class Core;
}

struct EndpointOptions {
    /// Address and UDP port to bind; port 0 picks a free port (clients usually do).
    /// The default, 0.0.0.0:0, reaches any IPv4 peer; use "[::]:0" for IPv6.
    Address address = Address::ipv4(0, 0);
    /// Link MTU: sets the payload per packet. Jumbo frames (e.g. 9000) are fine.
    uint32_t mtu = 1500;
    /// Protocol parameters; linkMbps should match the host's link.
    ProtocolOptions protocol = defaultProtocolOptions();
    /// Run a background thread that drives the event loop when no application thread
    /// is waiting (needed for callbacks and futures unless the application calls poll()).
    /// Without it, the socket is read only while an application thread runs the loop: in
    /// call(), in receive() (one pass without waiting for a timeout of 0), in poll(), and
    /// in serve()'s workers while they wait for requests.
    bool pollThread = true;
    /// UDP segmentation/receive offload, when the kernel supports them.
    bool gso = true;
    bool gro = true;
    /// Busy polling: a thread about to sleep for packets first keeps looking at the socket
    /// for up to this many microseconds. Saves the wake-up (several microseconds on many
    /// machines, more in virtual machines) at the price of a busy CPU. 0 (default): off.
    uint32_t busyPollUs = 0;
    /// Adaptive polling: a thread whose last wait for packets was short (at most twice
    /// this) first looks at the socket for up to this many microseconds before sleeping;
    /// after a long wait it sleeps at once. Saves the wake-ups of a busy endpoint (on a
    /// loopback ping-pong in a virtual machine, about half of the round trip) while an
    /// idle one spins nothing. 0: off. Ignored when busyPollUs is set. At most 1,000,000.
    /// The default, 50, is the Linux module's spin before it sleeps; a busy endpoint whose
    /// waits are random (an open loop) then spends more CPU on looking (docs/design.md).
    uint32_t adaptivePollUs = 50;

    // ---- Observability (docs/observability.md)
    /// Publish metrics, the live RPCs and time-trace control on a unix socket at this path,
    /// for homa-metrics. "%p" becomes the process id and "%e" the endpoint's UDP port.
    /// Empty: the HOMA_METRICS_SOCKET environment variable's value, if it is set; else off.
    std::string metricsSocket;
    /// Serve Prometheus text at http://127.0.0.1:<prometheusPort>/metrics.
    bool prometheus = false;
    /// 0 picks a free port (Endpoint::prometheusPort() tells which).
    uint16_t prometheusPort = 0;
    /// When a FREEZE packet arrives while time tracing is on: stop tracing and dump the
    /// trace to this file ("%p", "%e" as above). Empty: FREEZE packets are only counted.
    std::string freezeTraceFile;
    /// Measure the CPU time spent in the engine (engine_cpu_ns): two timestamp-counter
    /// reads per engine call.
    bool engineCpuTime = true;

    /// The reference parameters, with overload protection on for servers.
    static ProtocolOptions defaultProtocolOptions() {
        ProtocolOptions p;
        p.maxPendingRequests = 10'000;
        return p;
    }
};

struct CallOptions {
    /// Fail the call with StatusCode::Timeout after this long (0: only the protocol's own
    /// timeout, which fires when the server stops answering; nanoseconds::max(): the same,
    /// in effect). A negative timeout is refused: the call fails at once with
    /// InvalidArgument.
    std::chrono::nanoseconds timeout{0};
    /// Comes back unchanged in the Response.
    uint64_t context = 0;
};

using RpcId = uint64_t;

/// The outcome of a call: a status and, when it is ok, the response message.
struct Response {
    Status status;
    Message message;
    RpcId id = 0;
    uint64_t context = 0;
};

/// A request delivered to a server. Answer it once with respond(), from any thread, now
/// or later. Destroying it unanswered drops the request: the client sees a failure.
/// Thread safety: one thread at a time per object; different objects freely.
class ServerRequest {
  public:
    ServerRequest() = default;
    ServerRequest(ServerRequest&& other) noexcept
        : message_(std::move(other.message_)), client_(other.client_), id_(other.id_), answered_(other.answered_) {}
    ServerRequest& operator=(ServerRequest&&) noexcept;
    /// An unanswered request is dropped (its client sees the RPC fail).
    ~ServerRequest() {
        if (message_.core_ && !answered_) dropUnanswered();
    }

    const Message& message() const { return message_; }
    const Address& client() const { return client_; }
    RpcId id() const { return id_; }
    bool valid() const { return message_.core_ != nullptr; }

    /// Sends the response. Errors: InvalidArgument (already answered, empty),
    /// MessageTooLarge, NoSuchRpc, Shutdown, OutOfBuffers (the endpoint's send memory,
    /// ProtocolOptions::maxOutgoingBytes, is full of messages in flight). After an error
    /// the request stays unanswered: respond() may be called again (say, once OutOfBuffers
    /// has passed), and destroying it drops it. NoSuchRpc: the endpoint no longer holds
    /// the RPC, which happens only when the client's side said it does not know the RPC
    /// (an RPC_UNKNOWN packet, which a client sends only in answer to a RESEND). A client
    /// that timed out, aborted its call or was destroyed tells the server nothing:
    /// respond() then returns ok and the response is sent, to be dropped by the client.
    /// So ok does not mean that the client still waits for the response.
    Status respond(std::span<const uint8_t> response);
    /// The same, sending a message built in place (Endpoint::allocate() of this request's
    /// endpoint) without copying it. The message is consumed whatever the outcome. Never
    /// OutOfBuffers: the message holds its send memory already.
    Status respond(OutgoingMessage response);

  private:
    friend class runtime::Core;
    void dropUnanswered();
    /// Also names the request's endpoint, which outlives it (see Message).
    Message message_;
    Address client_;
    RpcId id_ = 0;
    bool answered_ = false;
};

/// Thread safety: every method may be called from any thread concurrently, except that
/// the destructor must not race with other calls.
class Endpoint {
  public:
    using Callback = std::function<void(Response)>;
    using Handler = std::function<void(ServerRequest)>;

    /// Opens an endpoint; nullptr on error, with the reason in *error (set to ok on
    /// success).
    static std::unique_ptr<Endpoint> open(const EndpointOptions& options, Status* error = nullptr);
    /// Shuts down (see shutdown()). The UDP socket closes here, unless Messages or
    /// OutgoingMessages of the endpoint are still held (then when the last is released),
    /// or this runs inside one of the endpoint's own callbacks or handlers (then when
    /// that returns).
    ~Endpoint();

    Address address() const;

    // ---- Client
    /// Synchronous call: runs the event loop in this thread until the response arrives.
    /// Fails at once with InvalidArgument for an empty request or a server address this
    /// endpoint cannot send to (see callAsync()), with MessageTooLarge for one over
    /// ProtocolOptions::maxMessageLength, and with OutOfBuffers when the endpoint's send
    /// memory (ProtocolOptions::maxOutgoingBytes) is full of messages in flight or its peer
    /// table is full (maxPeers peers, none idle long enough to be evicted). A refused call
    /// is not kept to start later: make it again later (say, once a call in flight ends).
    Response call(const Address& server, std::span<const uint8_t> request, CallOptions options = {});
    /// Asynchronous call: `done` runs exactly once, on the thread that runs the event loop
    /// (on the poll thread if a timer ends the call while an application thread waits in
    /// the socket; on the caller of abort()). Never inside callAsync: a call that cannot
    /// start (bad arguments; StatusCode::OutOfBuffers when the send memory or the peer
    /// table is full, as for call(); such a call is not kept to start later) gets its callback
    /// from the loop too, soon after, so a callback may start its call again without
    /// recursing (without the poll thread, at the next poll() or wait). Once the endpoint
    /// is shut down no loop runs: the callback (StatusCode::Shutdown) runs on this thread,
    /// at once, or, when callAsync is called from one of this endpoint's callbacks, right
    /// after that callback returns (so still without recursing; but a callback that starts
    /// its call again whatever the status keeps that thread restarting it for good: stop
    /// at Shutdown). Callbacks may therefore
    /// run on two threads at once. A callback may make a synchronous call() on any
    /// endpoint, this one included (the loop runs nested in this thread until that call
    /// ends). On another endpoint, the thread keeps this endpoint's loop while it waits:
    /// this endpoint's socket is not read until that call ends (and when the callback
    /// runs on this endpoint's poll thread, its timers do not run either), so its other
    /// calls wait for it too. Prefer callAsync() there, or keep such calls short. A
    /// callback the poll thread runs from the engine's timers (a call's deadline or
    /// timeout) while another thread owns the loop may see further such callbacks run
    /// nested inside its own synchronous call. A callback must never block waiting for
    /// the endpoint's loop in another way, as waiting on a future of this endpoint does
    /// (see callFuture()).
    /// Any number of calls may be in flight: beyond
    /// ProtocolOptions::maxClientRpcsPerServer with one server, they wait their turn in
    /// the endpoint (a timeout counts from here). Returns the RPC's id (0 if it did not
    /// start). An empty `done` is refused: 0, nothing runs, and the call is counted as
    /// failed with InvalidArgument. An exception thrown by `done` is caught and counted
    /// (metric `callback_exceptions`); the endpoint's other callbacks still run. A server
    /// address the endpoint's socket cannot send to (port 0; an IPv6 address from an
    /// endpoint bound to IPv4, or an IPv4 one from an endpoint bound to an IPv6 address)
    /// fails the call with InvalidArgument, as call() does.
    RpcId callAsync(const Address& server, std::span<const uint8_t> request, Callback done,
                    CallOptions options = {});
    /// Memory for an outgoing message of `length` bytes, from the endpoint's memory for
    /// messages being sent (ProtocolOptions::maxOutgoingBytes): fill it, then pass it to
    /// call(), callAsync() or ServerRequest::respond(), which send it without copying it
    /// (a large message then costs one copy less). Empty on error, with the reason in
    /// *error: InvalidArgument (0 bytes), MessageTooLarge, OutOfBuffers (the memory is
    /// full: messages in flight hold it), Shutdown.
    OutgoingMessage allocate(size_t length, Status* error = nullptr);
    /// call() and callAsync() sending a message from allocate() of this endpoint. The
    /// message is consumed whatever the outcome; an empty one, or another endpoint's,
    /// fails the call with InvalidArgument.
    Response call(const Address& server, OutgoingMessage request, CallOptions options = {});
    RpcId callAsync(const Address& server, OutgoingMessage request, Callback done, CallOptions options = {});
    /// Asynchronous call returning a future (needs the poll thread or poll()). Never wait
    /// on it inside a callback or handler of this endpoint: a callback runs on the thread
    /// that owns the endpoint's loop, which must run to fulfil the future, so the wait
    /// never ends (not even at the call's timeout, which the loop runs too); a handler's
    /// wait ends only if another thread runs the loop meanwhile (the poll thread, or a
    /// worker waiting for a request). There, make a synchronous call() (it runs the loop
    /// itself), or callAsync() and carry on from its callback.
    std::future<Response> callFuture(const Address& server, std::span<const uint8_t> request,
                                     CallOptions options = {});
    /// The same, sending a message from allocate() (see callAsync()).
    std::future<Response> callFuture(const Address& server, OutgoingMessage request, CallOptions options = {});
    /// Gives up on a call; its callback/future/caller gets StatusCode::Aborted.
    Status abort(RpcId id);
    /// While it exists, the packets of the asynchronous calls this thread starts on the
    /// endpoint wait, and leave together in one system call when it ends (a fan-out of
    /// calls to many servers, or a burst to one). Callbacks and handlers get this on
    /// their own. Keep it short: nothing the thread starts on this endpoint leaves before
    /// the end (a synchronous call() still sends at once). One thread; the endpoint
    /// must outlive it.
    class CallBatch {
      public:
        explicit CallBatch(Endpoint& endpoint);
        ~CallBatch();
        CallBatch(const CallBatch&) = delete;
        CallBatch& operator=(const CallBatch&) = delete;

      private:
        runtime::Core* core_;
        const runtime::Core* outer_;
    };

    // ---- Server
    /// Handler-based server: `threads` workers receive requests and run `handler` (which
    /// must not wait on a future of this endpoint: see callFuture()). A
    /// worker that is waiting runs the event loop, so a request is normally handled on
    /// the thread that received it. Call once. A response given inside a handler leaves
    /// with those of the requests queued behind it, as one batch, or at once when none
    /// are queued (a handler may go on working after it has answered). A handler that
    /// throws drops its request (the client's call fails); the exception is counted
    /// (metric `handler_exceptions`) and the worker goes on.
    Status serve(Handler handler, int threads = 1);
    /// Pull-style receive for applications with their own loop: the next request, or
    /// nothing when `timeout` passes (negative: wait forever) or the endpoint shuts down.
    /// A thread waiting here runs the event loop. With a timeout of 0 it does not wait: it
    /// takes a request already received, else runs one pass of the loop (as poll() does;
    /// none if another thread runs the loop) and takes one that this pass read. (Without
    /// the poll thread, only threads running the loop read the socket: see
    /// EndpointOptions::pollThread.)
    std::optional<ServerRequest> receive(std::chrono::nanoseconds timeout);

    // ---- Loop, state, shutdown
    /// Runs the event loop once from this thread, waiting at most `timeout` for work.
    /// Returns at once, without waiting, when another thread is running the loop (the
    /// poll thread, usually): then `while (!done) poll(1ms)` spins a core. With the poll
    /// thread on, wait on the call's future or callback instead.
    void poll(std::chrono::nanoseconds timeout = std::chrono::nanoseconds(0));
    MetricsSnapshot metrics() const;
    /// The RPCs the endpoint holds right now.
    std::vector<RpcSnapshot> rpcs() const;
    /// The Prometheus port bound (0 if EndpointOptions::prometheus is off).
    uint16_t prometheusPort() const;
    /// The metrics socket's path ("" if none).
    std::string metricsSocketPath() const;
    /// Sends a FREEZE packet to `peer` (see EndpointOptions::freezeTraceFile). Errors:
    /// InvalidArgument for an address the socket cannot send to (as for callAsync()),
    /// Shutdown.
    Status sendFreeze(const Address& peer);
    /// Fails every call in flight with StatusCode::Shutdown, wakes every waiting thread,
    /// stops the threads (and closes the metrics socket and the Prometheus port). The UDP
    /// socket's receive side is shut (shutdown(SHUT_RD), which wakes a blocked reader), but
    /// the socket stays open and its port bound until the endpoint is destroyed and every
    /// Message (of a Response or a ServerRequest included) and OutgoingMessage it handed
    /// out has been released; the last of these closes it. Until then, open() on the same
    /// port fails ("Address already in use"). Idempotent, and callable from any thread
    /// at once (each returns once the threads have stopped; from a callback or handler,
    /// its own thread stops by itself when it returns, and keeps the endpoint's insides
    /// until then, the socket included, so the endpoint may be destroyed at once).
    void shutdown();

  private:
    explicit Endpoint(std::shared_ptr<runtime::Core> core);
    std::shared_ptr<runtime::Core> core_;
};

}  // namespace homa
