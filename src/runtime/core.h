// The runtime behind homa::Endpoint: one engine, one UDP socket, and the event loop that
// connects them, run by whichever thread is waiting (leader/follower), with a fallback
// background thread.
//
// Locking: `mu_` guards the engine, the driver's transmit side, and all bookkeeping.
// The loop token (loopBusy_) lets one thread at a time read the socket; it reads without
// `mu_`, then takes `mu_` to feed the engine. Callbacks run without `mu_`.
//
// Counters: the engine's and those of the runtime updated under `mu_` are plain
// integers (one writer at a time, ordered by `mu_`); those updated by application code
// outside `mu_` (handlers, callbacks) are per-thread (ThreadCounters). See
// docs/observability.md.
#pragma once

#include <absl/container/flat_hash_map.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "driver/udp_driver.h"
#include "engine/engine.h"
#include <memory>

#include "homa/endpoint.h"
#include "runtime/adaptive_poll.h"
#include "runtime/clock.h"
#include "runtime/publisher.h"
#include "runtime/thread_counters.h"

namespace homa::runtime {

class Core : public engine::PacketSink, public std::enable_shared_from_this<Core> {
  public:
    static std::shared_ptr<Core> create(const EndpointOptions& options, Status* error);
    ~Core() override;

    Address address() const { return driver_->localAddress(); }

    /// With `owned` (see takeOutgoing()), `request` is sent from that buffer, no copy.
    /// With `cannotStart`, the call fails with that status (counted as a failed call).
    Response call(const Address& server, std::span<const uint8_t> request, const CallOptions& options,
                  engine::OutgoingBuffer owned = {}, const Status* cannotStart = nullptr);
    /// With `cannotStart`, the call fails with that status (its callback from the loop).
    RpcId callAsync(const Address& server, std::span<const uint8_t> request, Endpoint::Callback done,
                    const CallOptions& options, engine::OutgoingBuffer owned = {},
                    const Status* cannotStart = nullptr);
    /// An OutgoingMessage of `length` bytes (empty, with the reason, on failure).
    OutgoingMessage allocate(size_t length, Status* error);
    /// Takes the buffer out of `m` for a call or response (m is then empty); fails if `m`
    /// is empty or another endpoint's, leaving it as it was.
    Status takeOutgoing(OutgoingMessage& m, std::span<const uint8_t>* bytes, engine::OutgoingBuffer* owned);
    /// Used by OutgoingMessage: returns an unsent message's memory.
    void releaseOutgoing(uint8_t* data, uint32_t capacity);
    Status abort(RpcId id);
    Status serve(Endpoint::Handler handler, int threads);
    /// `worker`: called by a worker of serve(), which counts as busy (busyWorkers_) from
    /// when it gets a request until it asks for the next.
    std::optional<ServerRequest> receive(int64_t timeoutNs, bool worker = false);
    void poll(int64_t timeoutNs);
    MetricsSnapshot metrics();
    std::vector<RpcSnapshot> rpcs();
    Status sendFreeze(const Address& peer);
    uint16_t prometheusPort() const { return publishedPort_; }
    std::string metricsSocketPath() const { return publishedPath_; }
    void shutdown();

    // Used by Message and ServerRequest.
    void release(uint8_t* data, uint32_t length, uint32_t capacity);
    /// Called by the endpoint's destructor: while messages the core made are still held,
    /// `self` keeps the core alive (until the last one is released).
    void outliveEndpoint(std::shared_ptr<Core> self);
    /// Called by the endpoint's methods that may run callbacks or handlers, after the
    /// core's: drops the cores this application thread kept while inside them (endpoints
    /// it destroyed from one of their own callbacks), once it is inside none.
    static void afterApplicationCall();
    Status respond(const Address& client, RpcId id, std::span<const uint8_t> response,
                   engine::OutgoingBuffer owned = {});
    void dropRequest(const Address& client, RpcId id);

    void transmit(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
                  std::span<const uint8_t> payload) override;

    /// A batch of this thread's work on this endpoint (callbacks, a handler, an
    /// Endpoint::CallBatch): until it ends, the packets the thread queues here wait for
    /// one flush, and the buffers it releases here for one locked step. beginBatch()
    /// returns the batch it is nested in, for endBatch(), which returns the buffers and
    /// flushes (unless nested in a batch of this endpoint).
    const Core* beginBatch();
    void endBatch(const Core* outer);

  private:
    /// A thread waiting in call() or receive().
    struct Waiter {
        std::condition_variable cv;
        bool wantsRequest = false;  // receive(): any request will do
        bool worker = false;        // a worker of serve() (counted in busyWorkers_ once it has a request)
        bool done = false;          // its item has arrived
        bool sleeping = false;
        Response response;          // call()
        std::optional<ServerRequest> request;  // receive()
    };
    struct Call {
        RpcId id = 0;               // 0: a free entry
        Waiter* waiter = nullptr;   // synchronous
        Endpoint::Callback callback;
        uint64_t context = 0;
        int64_t deadline = 0;       // 0: none
    };
    /// The calls in flight by id: entries reused from a free list, found through the
    /// engine's direct-mapped index (ids are this endpoint's own, 2 apart and in order),
    /// so that a call costs no hash insert, lookup or erase.
    class CallTable {
      public:
        Call* add(RpcId id);
        Call* find(RpcId id) const { return index_.find(id); }
        /// Frees `c`, which must be in the table (its fields are left moved-from or reset).
        void remove(Call* c);
        size_t size() const { return index_.size(); }
        /// Every call in flight, in no particular order; `f` must not add or remove.
        template <class F>
        void forEach(F&& f) {
            for (auto& c : storage_)
                if (c->id != 0) f(*c);
        }
        void clear();

      private:
        engine::ClientRpcIndex<Call> index_{4096, engine::kOwnCallsMaxSlots};
        std::vector<std::unique_ptr<Call>> storage_;
        std::vector<Call*> free_;
    };

    Core() = default;
    /// Why a call with these arguments cannot start (ok if it may): a negative timeout,
    /// or a server address the socket cannot send to.
    Status checkCall(const Address& server, const CallOptions& options) const;
    /// Runs the loop on this thread until `w.done`, shutdown, or `deadline` (ns, 0 = none).
    void waitFor(Waiter& w, int64_t deadline);
    /// One loop iteration with the loop token held and `mu_` not held.
    /// Returns how long the loop may now sleep (0 if it should run again at once); it
    /// sleeps that long itself unless maxWaitNs is 0.
    int64_t iterate(int64_t maxWaitNs);
    /// Takes the engine's deliveries and due timeouts (under `mu_`); callbacks to run
    /// afterwards are appended to `ready`.
    void dispatch(std::vector<std::pair<Endpoint::Callback, Response>>& ready, int64_t now);
    void deliverRequest(engine::Delivery& d);
    void finishCall(RpcId id, Response r, std::vector<std::pair<Endpoint::Callback, Response>>& ready);
    void finishCall(Call* call, Response r, std::vector<std::pair<Endpoint::Callback, Response>>& ready);
    void wake(Waiter* w);
    void pokeLoop();
    /// Sends queued packets now, unless this thread is certain to flush soon (under mu_).
    void maybeFlush();
    void pokePollThread();
    /// Under mu_: has the loop run the callbacks in failedStarts_ soon.
    void wakeLoopForCallbacks();
    /// Under mu_: ends the wait of the application thread that owns the loop (its wake-up
    /// datagram if it is blocked in the socket; retried at the next tick if not sent).
    void wakeOwner(int64_t now);
    /// Whether this thread runs this endpoint's loop further up its stack.
    bool runsOurLoop() const;
    /// Whether this thread is one of the core's own, or runs its loop, callbacks or a
    /// batch: it returns into the core later, which must outlive it till then.
    bool threadIsInside() const;
    /// Waits up to waitNs for the socket or `fd` to be readable (true: the socket is);
    /// with busy polling, looks without sleeping first.
    bool waitForPackets(int64_t waitNs, int fd, bool* poked);
    /// Spinning: looks at the socket (and `fd` and, with `ticked`, the tick timer; see
    /// UdpDriver::wait) until one is ready or `until` (ns) has passed, yielding the CPU
    /// between looks if `yield`. Returns whether the socket is readable.
    bool lookUntil(int64_t until, bool yield, int fd, bool* poked, bool* ticked);
    /// Spinning before a blocking receive: reads the socket without blocking (keeping
    /// what it reads for the next receive) until it finds packets or `until` (ns) has
    /// passed, yielding the CPU between reads. Returns whether it found packets.
    bool readUntil(int64_t until);
    /// Counts an adaptive spin that found packets, or ran out of budget.
    void countSpin(bool found);
    /// How long an idle loop may sleep (under mu_): kUntilTimer when only the tick timer
    /// needs to wake it. Arms the tick timer while the engine has ticks due, disarms it
    /// once the engine has had none for a whole tick.
    int64_t sleepBudget(int64_t now);
    void setTickTimer(int64_t now, bool on);
    /// Called by a loop pass that ran the engine's timers (under mu_): when the armed tick
    /// timer is due within a quarter tick, moves its expiry to a whole tick from `now`.
    /// The timer then goes off only a tick after the timers last ran, so that while a
    /// thread keeps running the loop, it wakes nobody (the poll thread sleeps on it).
    void postponeTick(int64_t now);
    int64_t nextTimerExpiry(int64_t now) const;  // (under mu_, timer armed)
    /// Under mu_, after engine work done outside the loop (calls from other threads, the
    /// poll thread's timers): arms the tick timer if the engine now has ticks due, and
    /// ends the loop owner's wait if that work finished its call or left the pacer
    /// something to send.
    void afterEngineWork(int64_t now);
    /// For work started outside the loop while no thread runs it (callAsync; respond,
    /// abort and the like through outsideLoop): the poll thread, waiting in the socket, wakes for packets, a poke, or the
    /// end of the wait it worked out before this work came. It is poked when the work
    /// needs it sooner: packets the pacer put off, or a deadline before that end. With
    /// `always`, also when it is not waiting in the socket (it then takes the loop).
    void wakeFreeLoop(bool always);
    /// An engine call made outside the loop, under mu_: `call(now)` is timed into the
    /// engine's CPU time, what it queued is sent (unless a flush is certain soon), and
    /// the loop is told (afterEngineWork).
    template <class Call>
    void outsideLoop(Call&& call) {
        uint64_t engineStart;
        const int64_t now = nowAndEngineClock(&engineStart);
        call(now);
        countEngineTime(engineStart);
        maybeFlush();
        afterEngineWork(now);
        wakeFreeLoop(false);
    }
    /// The poll thread's job while an application thread runs the loop: runs the engine's
    /// timers and call deadlines (a thread blocked in a receive sees no timer).
    void runTimers(std::unique_lock<std::mutex>& lk);
    void releaseLoop(std::unique_lock<std::mutex>& lk);
    /// (mu_ held, the loop free.) One pass of the loop on this thread, waiting up to
    /// `timeoutNs` for packets: takes the loop, runs it with mu_ released, and hands it
    /// on (releaseLoop); returns with mu_ held again.
    void passOfLoop(int64_t timeoutNs);
    void pollThreadMain();
    Message makeMessage(const engine::ReceivedMessage& m);
    /// Runs callbacks collected under `mu_` (called without it), counting them; then, under
    /// `mu_`, returns the buffers they released, sends due acks and flushes.
    /// With `flushEvery`, what the callbacks send also leaves after every `flushEvery`
    /// callbacks (callbackFlushInterval()).
    void runCallbacks(std::vector<std::pair<Endpoint::Callback, Response>>& ready, size_t flushEvery = 0);
    static size_t callbackFlushInterval(size_t finished, size_t stillInFlight);
    /// The thread's batch (see beginBatch()) for a scope that returns the buffers and
    /// flushes itself before it ends (runCallbacks()).
    class Batch {
      public:
        explicit Batch(Core* core) : outer_(core->beginBatch()) {}
        ~Batch();
        Batch(const Batch&) = delete;
        Batch& operator=(const Batch&) = delete;

      private:
        const Core* outer_;
    };
    /// Under mu_: returns a taken OutgoingMessage's buffer that will not be sent.
    void dropOutgoing(engine::OutgoingBuffer owned);
    /// Returns the buffers this thread deferred for this endpoint (under mu_).
    void releaseDeferred();
    /// Starts the metrics socket / Prometheus publisher if the options ask for one.
    Status startPublisher();
    /// A FREEZE arrived: stop tracing and dump it (options_.freezeTraceFile).
    void freezeTrace();
    /// Adds the time since `startTsc` to the engine's CPU time (under mu_).
    void countEngineTime(uint64_t startTsc) {
        if (startTsc != 0) engineCycles_ += trace::readClock() - startTsc;
    }
    /// nowNs(), and the counter from the same read as the start of an engine call to
    /// time (0 unless EndpointOptions::engineCpuTime).
    int64_t nowAndEngineClock(uint64_t* engineStart) const {
        uint64_t counter;
        const int64_t now = nowNs(&counter);
        *engineStart = options_.engineCpuTime ? counter : 0;
        return now;
    }

    EndpointOptions options_;
    std::unique_ptr<driver::UdpDriver> driver_;
    std::unique_ptr<engine::Engine> engine_;
    int wakeFd_ = -1;        // interrupts a loop owner's wait (shutdown)
    int pollThreadFd_ = -1;  // interrupts the poll thread's wait
    // The engine's ticks are driven by one periodic timer rather than by a timeout on
    // every wait: a wait with a timeout arms and cancels a kernel timer each time, which
    // costs microseconds per RPC on virtual machines. Only the pacer and call deadlines
    // (precise times) still give a wait a timeout. Fields under mu_.
    int tickFd_ = -1;
    bool tickArmed_ = false;
    int64_t tickArmedAt_ = 0;    // the timer expires at tickArmedAt_ + k * tickNs, k >= 1
    int64_t tickIdleSince_ = 0;  // armed with no tick due since then (0: a tick is due)
    std::atomic<bool> socketReadable_{false};  // set by the poll thread without the loop
    // When the loop last ran the engine's timers (and call deadlines): the poll thread
    // skips a tick whose timers a busy loop owner ran already. Only the loop's runs, not
    // the poll thread's own (runTimers): woken a little earlier in the period than the
    // time before, it took its own run a tick ago for the owner's and skipped the tick,
    // which nobody ran then (a thread blocked in the socket runs no timers).
    std::atomic<int64_t> timersRunAt_{0};
    // The poll thread's wake-ups while an application thread runs the loop (or it leaves
    // the loop to busy workers): for the timers, pokes, and to look.
    std::atomic<uint64_t> pollThreadWakeups_{0};
    // An application thread that runs the loop with nothing precise to wait for blocks in
    // the socket's receive (one system call to wait and read, as a plain UDP program
    // does) rather than in ppoll followed by a read. It needs the poll thread (timers)
    // and a working wake-up datagram, checked at creation.
    bool blockingReceive_ = false;
    std::atomic<bool> ownerBlocked_{false};  // the loop owner is in blockForPackets()
    bool ownerWakeFailed_ = false;  // a wake-up datagram could not be sent (under mu_)
    bool justDrained_ = false;                 // loop owner only: see iterate()
    // The read after callbacks (iterate()), loop owner only: whether the next pass makes
    // one, and when to stop making them after they find nothing.
    bool readAfterCallbacks_ = false;
    MissBackoff readAfterCallbacksMisses_;
    // Adaptive polling (adaptive_poll.h): the budget, and the spins that found packets
    // and that ran out (counted by the waiting threads, outside mu_).
    int64_t adaptiveSpinNs_ = 0;
    std::atomic<uint64_t> spinHits_{0}, spinMisses_{0};
    std::atomic<uint64_t> callbackExceptions_{0}, handlerExceptions_{0};  // thrown by the application
    bool pollThreadWaiting_ = false;           // the poll thread is in ppoll (under mu_)
    int64_t pollThreadWaitEnd_ = 0;            // when that wait ends at the latest (ns)

    mutable std::mutex mu_;
    bool shutdown_ = false;
    bool loopBusy_ = false;
    Waiter* loopOwner_ = nullptr;       // null while the poll thread holds the loop
    int appWaiters_ = 0;                // application threads in waitFor()
    std::vector<Waiter*> sleepers_;     // waiters blocked on their condition variable
    std::vector<Waiter*> requestWaiters_;  // waiters that want a request, most recent last
    std::deque<ServerRequest> requests_;   // requests nobody was waiting for
    CallTable calls_;
    // Messages made (makeMessage) and not yet released; once the endpoint is gone, the
    // core keeps itself alive through keepAlive_ until this count drops to zero. A plain
    // count under mu_ (messages are made, and their buffers released, under it) instead
    // of a shared_ptr per message: two atomic operations fewer per message.
    uint64_t liveMessages_ = 0;
    std::shared_ptr<Core> keepAlive_;
    /// Counts `n` released messages (under mu_); returns the core's last reference when
    /// that was the last message of an endpoint already gone, to be dropped after mu_.
    std::shared_ptr<Core> messagesReleased(uint64_t n);
    /// Asynchronous calls that could not start: their callbacks wait for the loop.
    std::vector<std::pair<Endpoint::Callback, Response>> failedStarts_;
    std::set<std::pair<int64_t, RpcId>> deadlines_;
    std::thread pollThread_;
    std::vector<std::thread> workers_;
    bool serving_ = false;
    bool threadsStarted_ = false;  // a poll thread, workers or the publisher were started (mu_)
    bool threadsJoined_ = false;   // the first shutdown() has joined them (mu_)
    std::condition_variable threadsJoinedCv_;
    size_t busyWorkers_ = 0;     // workers running a handler (see pollThreadMain)
    uint64_t handlersDone_ = 0;  // handlers the workers have finished

    // Runtime counters (under mu_).
    uint64_t messagesDelivered_ = 0, handoffs_ = 0, wakeups_ = 0, emptyWakeups_ = 0, loopPasses_ = 0,
             callTimeouts_ = 0, loopIterations_ = 0, socketWaits_ = 0, blockingReceives_ = 0, timerRuns_ = 0,
             pollThreadSocketWaits_ = 0, pollThreadStoodAside_ = 0, tickPostponements_ = 0,
             pollThreadLateTakeovers_ = 0;
    uint64_t engineCycles_ = 0;  ///< timestamp-counter cycles inside engine calls
    uint64_t shownNs_[3] = {};   ///< engine, handler, callback ns last shown by metrics() (mu_)
    std::array<uint64_t, 16> callsFailed_{};  ///< by StatusCode
    // Counters of application code run outside mu_ (per thread).
    enum ThreadCounter : size_t { kHandlerCalls, kHandlerCycles, kCallbacksRun, kCallbackCycles, kThreadCounters };
    ThreadCounters<kThreadCounters> threadCounters_;
    std::unique_ptr<Publisher> publisher_;  // (under mu_ once the endpoint runs)
    std::string publishedPath_;              // set once at creation
    uint16_t publishedPort_ = 0;
};

}  // namespace homa::runtime
