#include "runtime/core.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>

namespace homa::runtime {

namespace {
// Client ids must grow across restarts of a client (servers remember ids they served):
// start from the real-time clock, which a restarted process finds further on.
uint64_t clockSeededFirstId() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
    return ns & ~uint64_t{1};
}
// now + timeout, held at the largest time: a timeout of nanoseconds::max() ("forever")
// must not wrap into the past.
int64_t deadlineAfter(int64_t now, int64_t timeoutNs) {
    return timeoutNs > INT64_MAX - now ? INT64_MAX : now + timeoutNs;
}
constexpr int64_t kMaxPollWaitNs = 100'000'000;  // bounds a timed wait
constexpr int64_t kShortestSleepNs = 20'000;     // see iterate()
constexpr int64_t kMaxResponseHoldNs = 20'000;   // see serve()
constexpr size_t kMinCallbackFlush = 8;          // see runCallbacks()
constexpr int64_t kUntilTimer = INT64_MAX;       // sleep until packets, a poke or the tick timer

// The endpoint whose batch this thread runs now (its callbacks inside the loop, a handler,
// an Endpoint::CallBatch; see Core::Batch): packets queued on that endpoint meanwhile go
// out together in one sendmmsg at the end instead of one system call each, and buffers
// released for it go back in one locked step. Only that endpoint's: a call the code makes
// on another endpoint (a middle tier's handler calling a backend) is sent at once, since
// nothing would flush it before that endpoint's next loop pass or tick.
thread_local const Core* tBatchFor = nullptr;
// Buffers released by this thread during a batch, returned by releaseDeferred().
struct DeferredRelease {
    const Core* core;
    uint8_t* data;
    uint32_t length, capacity;
};
thread_local std::vector<DeferredRelease> tReleases;
// The endpoints whose iterate() (the loop, and callbacks inside it) this thread is
// inside, outermost first: a callback may call on another endpoint, or on its own, and
// run a loop nested in the first.
thread_local std::vector<const Core*> tLoopsRunning;
// Cores this thread keeps alive until it ends: the endpoint was destroyed from inside one
// of its own callbacks or handlers, or the last message of a destroyed endpoint went back
// while this thread held the core's lock (see outliveEndpoint, releaseDeferred).
thread_local std::vector<std::shared_ptr<Core>> tCoresToDrop;
// The batches of callbacks this thread is running (runCallbacks), innermost last, each
// with the callbacks of the calls they started on their endpoint once it was shut down:
// those run after the batch's own (see Core::callAsync), not nested in the callback.
struct CallbackFrame {
    const Core* core;
    std::vector<std::pair<Endpoint::Callback, Response>>* later;
};
thread_local std::vector<CallbackFrame> tCallbackFrames;
// The core whose poll thread or worker this thread is (null for application threads).
thread_local const Core* tThreadOf = nullptr;
// The core whose poll thread this thread is.
thread_local const Core* tPollThreadOf = nullptr;
// How many shutdown() calls (of any core) this thread is inside.
thread_local int tShutdownDepth = 0;
// The core whose handler this thread is running (serve()'s workers, in the handler).
thread_local const Core* tInHandlerOf = nullptr;
// This thread's waits for packets, for adaptive polling (of whichever endpoint it waits on).
thread_local AdaptivePoll tPoll;
// Whether this thread may run on more than one CPU, looked up at its first wait. A thread
// held to one CPU never polls adaptively: whatever it waits for must then mostly run on
// that CPU too (both ends of a ping-pong pinned to one CPU), and spinning only delays it.
bool canRunOnSeveralCpus() {
    thread_local const bool several = [] {
        cpu_set_t set;
        CPU_ZERO(&set);
        if (sched_getaffinity(0, sizeof(set), &set) != 0) return true;
        return CPU_COUNT(&set) > 1;
    }();
    return several;
}
// How long the poll thread sleeps at most while an application thread owns the loop: a
// safety net only. What it must wake for has its own signal, the tick timer, which goes
// off when the owner stops running the engine's timers or leaves the loop (releaseLoop
// starts it if it was stopped). Without a timer (timerfd_create failed) it looks every
// tick instead.
constexpr int64_t kPollThreadSafetyNetNs = 100'000'000;
// How long the poll thread leaves the loop to a server's workers, all of them running
// handlers, before it concludes a handler is slow and runs the loop itself (see
// pollThreadMain).
constexpr int64_t kWorkerGraceNs = 200'000;

// Names a thread "<what>:<port>" (cut to the kernel's 15 characters), so that top -H,
// perf and /proc/<pid>/task/*/comm tell an endpoint's threads apart. Named by the thread
// that starts it, so the name is there when the call that started it returns.
void nameThread(std::thread& t, const char* what, uint16_t port) {
    char name[16];
    std::snprintf(name, sizeof(name), "%s:%u", what, static_cast<unsigned>(port));
    pthread_setname_np(t.native_handle(), name);
}

timespec toTimespec(int64_t ns) {
    return {static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}
}  // namespace

std::shared_ptr<Core> Core::create(const EndpointOptions& options, Status* error) {
    if (options.busyPollUs > 1'000'000) {
        if (error) *error = Status(StatusCode::InvalidArgument, "busyPollUs must be at most 1000000");
        return nullptr;
    }
    if (options.adaptivePollUs > 1'000'000) {
        if (error) *error = Status(StatusCode::InvalidArgument, "adaptivePollUs must be at most 1000000");
        return nullptr;
    }
    std::shared_ptr<Core> core(new Core());
    core->options_ = options;
    core->adaptiveSpinNs_ = static_cast<int64_t>(options.adaptivePollUs) * 1000;
    driver::UdpDriverOptions d;
    d.mtu = options.mtu;
    d.gso = options.gso;
    d.gro = options.gro;
    Status s;
    core->driver_ = driver::UdpDriver::open(options.address, d, &s);
    if (!core->driver_) {
        if (error) *error = s;
        return nullptr;
    }
    engine::Config cfg;
    static_cast<ProtocolOptions&>(cfg) = options.protocol;
    cfg.port = core->driver_->localAddress().port;
    cfg.maxPayload = core->driver_->maxPacketBytes() - static_cast<uint32_t>(wire::kDataHeaderSize);
    cfg.wireOverheadBytes = (options.address.isIpv4() ? 20 : 40) + 8 + 14 + 4 + 8 + 12;
    cfg.firstClientId = clockSeededFirstId();
    std::string invalid = cfg.validate();
    if (!invalid.empty()) {
        if (error) *error = Status(StatusCode::InvalidArgument, invalid);
        return nullptr;
    }
    core->engine_ = std::make_unique<engine::Engine>(cfg, *core);
    // (Without them, pokes would be lost: a loop owner or the poll thread would sleep
    // through work meant for it.)
    core->wakeFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (core->wakeFd_ >= 0) core->pollThreadFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (core->wakeFd_ < 0 || core->pollThreadFd_ < 0) {
        if (error) *error = Status(StatusCode::InvalidArgument, std::string("eventfd: ") + strerror(errno));
        return nullptr;
    }
    // Without a timer (it cannot fail in practice) every wait carries a timeout instead.
    core->tickFd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (options.pollThread && options.busyPollUs == 0 && core->tickFd_ >= 0) {
        // The wake-up datagram must reach the socket (it cannot where loopback is down).
        // A peer's packet arriving meanwhile proves nothing, and goes to the engine.
        const uint64_t before = core->driver_->stats().emptyDatagrams;
        const int64_t until = nowNs() + 100'000'000;
        bool sent = core->driver_->wakeReceiver();
        for (int64_t left; sent && core->driver_->stats().emptyDatagrams == before && (left = until - nowNs()) > 0;) {
            // (One clock read: a negative wait is no time limit at all.)
            if (!core->driver_->wait(left, -1)) continue;
            const int64_t now = nowNs();
            const auto packets = core->driver_->receive();
            for (const driver::RxPacket& p : packets) core->engine_->handlePacket(p.source, p.bytes, now);
            if (!packets.empty()) core->engine_->finishBatch(now);
            core->driver_->flush();
        }
        core->blockingReceive_ = core->driver_->stats().emptyDatagrams > before;
    }
    // After the probe above, which feeds the engine without the lock that the
    // publisher's thread takes to read it.
    Status published = core->startPublisher();
    if (!published.isOk()) {
        if (error) *error = published;
        return nullptr;
    }
    if (options.pollThread) {
        core->threadsStarted_ = true;  // (no thread runs yet: no lock needed)
        core->pollThread_ = std::thread([c = core.get()] { c->pollThreadMain(); });
        nameThread(core->pollThread_, "homa-poll", core->driver_->localAddress().port);
    }
    return core;
}

Status Core::startPublisher() {
    std::string path = options_.metricsSocket;
    bool fromEnvironment = false;
    if (path.empty()) {
        const char* env = std::getenv("HOMA_METRICS_SOCKET");
        if (env) path = env;
        fromEnvironment = !path.empty();
    }
    if (path.empty() && !options_.prometheus) return {};
    uint16_t port = driver_->localAddress().port;
    Publisher::Sources sources;
    // The publisher is stopped (its thread joined) in shutdown(), before the Core goes.
    sources.metricsText = [this] {
        MetricsSnapshot m = metrics();
        return "# time_ns " + std::to_string(m.timeNs) + "\n" + m.toText();
    };
    sources.rpcsText = [this] { return formatRpcs(rpcs()); };
    std::string labels = "endpoint=\"" + driver_->localAddress().toString() + "\"";
    sources.prometheusText = [this, labels] { return metrics().toPrometheus(labels); };
    Status error;
    publisher_ = Publisher::start(expandPath(path, port), options_.prometheus, options_.prometheusPort, sources,
                                  &error);
    if (!publisher_ && fromEnvironment) {
        // The environment variable is an aid to watching a program: it must not stop the
        // program from working (e.g. a second endpoint given the same path).
        std::fprintf(stderr, "homa: HOMA_METRICS_SOCKET: %s; endpoint %s not published\n", error.message().c_str(),
                     driver_->localAddress().toString().c_str());
        if (!options_.prometheus) return {};
        publisher_ = Publisher::start("", true, options_.prometheusPort, sources, &error);
    }
    if (!publisher_) return error;
    threadsStarted_ = true;  // (its thread, stopped by shutdown() as the others are)
    publishedPath_ = publisher_->socketPath();
    publishedPort_ = publisher_->httpPort();
    return {};
}

Core::~Core() {
    shutdown();
    if (wakeFd_ >= 0) ::close(wakeFd_);
    if (pollThreadFd_ >= 0) ::close(pollThreadFd_);
    if (tickFd_ >= 0) ::close(tickFd_);
}

void Core::transmit(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
                    std::span<const uint8_t> payload) {
    driver_->queue(dest, priority, header, payload);
}

Message Core::makeMessage(const engine::ReceivedMessage& m) {
    Message msg;
    msg.core_ = this;
    if (m.data != nullptr) ++liveMessages_;  // (Message::reset releases only non-null data)
    msg.data_ = m.data;
    msg.length_ = m.length;
    msg.capacity_ = m.capacity;
    return msg;
}

// ---------------------------------------------------------------- the loop

void Core::maybeFlush() {
    if (tBatchFor != this) driver_->flush();
}

void Core::pokeLoop() {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wakeFd_, &one, sizeof(one));
}

void Core::pokePollThread() {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(pollThreadFd_, &one, sizeof(one));
}

void Core::wake(Waiter* w) {
    if (w->sleeping) {
        ++wakeups_;
        w->cv.notify_one();
    }
}

void Core::releaseLoop(std::unique_lock<std::mutex>&) {
    // Someone else must read the socket now. The token goes straight to a sleeping
    // waiter (the most recent: its cache is warm), which wakes up owning it, so nobody
    // is ever woken to find the loop taken; with no sleeper, the poll thread takes over.
    if (!sleepers_.empty()) {
        ++loopPasses_;
        Waiter* next = sleepers_.back();
        loopBusy_ = true;
        loopOwner_ = next;
        next->cv.notify_one();
        return;
    }
    // No notification for the poll thread: an application thread that leaves the loop
    // usually comes back at once, and waking the poll thread for every RPC would cost a
    // context switch each time. It looks at the next tick instead, which nobody puts off
    // now (see postponeTick); the timer is started for it if it was stopped (an idle
    // endpoint's, or one whose only RPCs are with the application, as a worker's request).
    loopBusy_ = false;
    loopOwner_ = nullptr;
    if (!tickArmed_) setTickTimer(nowNs(), true);
}

void Core::waitFor(Waiter& w, int64_t deadline) {
    std::unique_lock lk(mu_, std::adopt_lock);
    ++appWaiters_;
    if (loopBusy_ && runsOurLoop()) {
        // A callback or handler waits on its own endpoint, whose loop this thread runs
        // further up its stack: nobody else can run it, so run it here, nested, as its
        // owner for the while (other threads wake us as they would the owner). Never in a
        // blocking receive: the poll thread, which ends such a wait at a tick, may be
        // this thread; waits are at most a tick, and the tick timer ends them.
        Waiter* outer = std::exchange(loopOwner_, &w);
        while (!w.done && !shutdown_) {
            const int64_t now = nowNs();
            if (deadline != 0 && now >= deadline) break;
            int64_t wait = options_.protocol.tickNs;
            if (deadline != 0) wait = std::min(wait, deadline - now);
            lk.unlock();
            iterate(wait);
            lk.lock();
        }
        loopOwner_ = outer;
        --appWaiters_;
        lk.release();  // the caller keeps holding mu_
        return;
    }
    // The poll thread waits here in a callback it runs from the engine's timers (a call
    // ended by a deadline or a protocol timeout while another thread owns the loop,
    // perhaps blocked in the socket's receive). It is the thread that runs those timers
    // meanwhile: it goes on running them, waking each tick, or nobody would (no RESEND,
    // no timeout: its own call, and every other, could wait for good).
    const bool runsTimers = tPollThreadOf == this;
    const int64_t tick = options_.protocol.tickNs;
    bool haveLoop = false;
    while (!w.done && !shutdown_) {
        int64_t now = nowNs();
        if (deadline != 0 && now >= deadline) break;
        if (!haveLoop && !loopBusy_) {
            loopBusy_ = true;
            loopOwner_ = &w;
            haveLoop = true;
            if (pollThreadWaiting_) pokePollThread();  // it would wake for our packets otherwise
        }
        if (haveLoop) {
            // (The poll thread, holding the loop here, never blocks in the socket for
            // longer than a tick: the tick timer it would otherwise serve is not read.)
            int64_t wait = deadline != 0 ? deadline - now : -1;
            if (runsTimers) wait = wait < 0 ? tick : std::min(wait, tick);
            lk.unlock();
            iterate(wait);
            lk.lock();
            continue;
        }
        w.sleeping = true;
        sleepers_.push_back(&w);
        int64_t sleepNs = deadline != 0 ? deadline - now : -1;
        if (runsTimers) sleepNs = sleepNs < 0 ? tick : std::min(sleepNs, tick);
        bool timedOut = false;
        if (sleepNs >= 0) {
            // (At most kMaxPollWaitNs at a time: the library's wait_for overflows for a
            // deadline near the end of time, as nanoseconds::max() gives, and returns at
            // once, for good.)
            timedOut = w.cv.wait_for(lk, std::chrono::nanoseconds(std::min(sleepNs, kMaxPollWaitNs))) ==
                       std::cv_status::timeout;
        } else {
            w.cv.wait(lk);
        }
        w.sleeping = false;
        sleepers_.erase(std::find(sleepers_.begin(), sleepers_.end(), &w));
        if (loopOwner_ == &w) {
            haveLoop = true;  // passed to us
        } else if (runsTimers) {
            if (!w.done && !shutdown_ && nowNs() - timersRunAt_.load(std::memory_order_relaxed) >= tick) runTimers(lk);
        } else if (!timedOut && !w.done && !shutdown_ && (deadline == 0 || nowNs() < deadline)) {
            ++emptyWakeups_;  // woken with nothing to do: must not happen
        }
    }
    if (haveLoop) releaseLoop(lk);
    --appWaiters_;
    lk.release();  // the caller keeps holding mu_
}

// The poll thread drives the loop only while no application thread waits, and it never
// blocks holding the loop: it waits for the socket without it, so an application thread
// that starts waiting takes the loop at once instead of waiting for a hand-over.
void Core::pollThreadMain() {
    tThreadOf = this;
    tPollThreadOf = this;
    std::unique_lock lk(mu_);
    uint64_t handlersSeen = 0;  // handlersDone_ when this thread last stood aside for the workers
    bool safetyNetExpired = false;  // its last wait ended by kPollThreadSafetyNetNs
    while (!shutdown_) {
        // A server whose workers are all running handlers, each going back to the loop
        // when its handler ends: this thread stands aside as long as handlers keep ending
        // (one did within the last kWorkerGraceNs), since taking the loop meanwhile would
        // mean a thread switch and a hand-over of the requests it reads, for every batch
        // (the loop's lock going back and forth between two CPUs). A handler that runs
        // longer than that leaves the loop to this thread until a worker is back.
        const bool workersBusy = !workers_.empty() && busyWorkers_ == workers_.size();
        const bool standAside = workersBusy && handlersDone_ != handlersSeen;
        if (appWaiters_ > 0 || loopBusy_ || standAside) {
            // An application thread runs the loop, perhaps blocked in a receive that no
            // timer ends: this thread runs the engine's timers meanwhile, when the tick
            // timer goes off. An owner that keeps running them puts the timer off (see
            // postponeTick), so this thread sleeps while the loop runs; the timer goes off
            // a tick after the owner stops running them: blocked in the socket, in a long
            // callback, or gone from the loop (releaseLoop).
            const int64_t waitNs = standAside  ? kWorkerGraceNs
                                   : tickFd_ >= 0 ? kPollThreadSafetyNetNs
                                                 : options_.protocol.tickNs;
            if (standAside) {
                handlersSeen = handlersDone_;
                ++pollThreadStoodAside_;
            }
            // Without a timer (timerfd_create failed) this wait is a tick long, and its
            // end is the tick, not a safety net.
            const bool waitIsTick = tickFd_ < 0 && !standAside;
            lk.unlock();
            bool ticked;
            for (;;) {
                pollfd fds[2] = {{pollThreadFd_, POLLIN, 0}, {tickFd_, POLLIN, 0}};
                const timespec ts = toTimespec(waitNs);
                int r = ::ppoll(fds, 2, &ts, nullptr);
                pollThreadWakeups_.fetch_add(1, std::memory_order_relaxed);
                if (!standAside) safetyNetExpired = r == 0 && !waitIsTick;  // (a grace that follows keeps it)
                uint64_t count;
                const bool poked = r > 0 && (fds[0].revents & POLLIN);
                if (poked) [[maybe_unused]] auto n = ::read(pollThreadFd_, &count, sizeof(count));
                const bool timerFired = r > 0 && (fds[1].revents & POLLIN);
                if (timerFired) [[maybe_unused]] auto n = ::read(tickFd_, &count, sizeof(count));
                ticked = timerFired || (waitIsTick && r == 0);
                // A tick that the loop's owner has run itself within the last tick period
                // (it runs the engine's timers on every pass, see iterate): nothing to do,
                // and the lock is not taken. Running them here as well, on the other CPU,
                // took the engine's lock and state away from a busy owner once per tick,
                // which cost a server about 5 % of its small-RPC throughput. (Only the
                // loop's runs count, not this thread's: see timersRunAt_.)
                if (ticked && !poked && nowNs() - timersRunAt_.load(std::memory_order_relaxed) < options_.protocol.tickNs)
                    continue;
                break;
            }
            lk.lock();
            if (ticked && !shutdown_) runTimers(lk);
            continue;
        }
        // Found the loop free when the safety net ended the wait, with no tick coming:
        // whoever left it gave no signal, and the socket may have sat unread meanwhile.
        if (std::exchange(safetyNetExpired, false) && !tickArmed_) ++pollThreadLateTakeovers_;
        loopBusy_ = true;
        loopOwner_ = nullptr;
        lk.unlock();
        int64_t waitNs = iterate(0);
        lk.lock();
        if (!sleepers_.empty()) {
            releaseLoop(lk);
        } else {
            loopBusy_ = false;
        }
        if (waitNs < kShortestSleepNs || appWaiters_ > 0 || shutdown_) continue;  // see iterate()
        pollThreadWaiting_ = true;
        if (waitNs != kUntilTimer) {
            pollThreadWaitEnd_ = nowNs() + waitNs;
        } else {
            pollThreadWaitEnd_ = tickArmed_ ? nextTimerExpiry(nowNs()) : engine::kNever;
        }
        ++pollThreadSocketWaits_;
        lk.unlock();
        bool poked = false;
        if (waitForPackets(waitNs, pollThreadFd_, &poked)) socketReadable_ = true;
        if (poked) {
            uint64_t count;
            [[maybe_unused]] auto n = ::read(pollThreadFd_, &count, sizeof(count));
        }
        lk.lock();
        pollThreadWaiting_ = false;
    }
}

void Core::runTimers(std::unique_lock<std::mutex>& lk) {
    ++timerRuns_;
    std::vector<std::pair<Endpoint::Callback, Response>> ready;
    uint64_t engineStart;
    const int64_t now = nowAndEngineClock(&engineStart);
    if (now >= engine_->nextWakeup()) engine_->advance(now);
    countEngineTime(engineStart);
    dispatch(ready, now);
    driver_->flush();
    sleepBudget(now);  // disarms the timer once the engine has no more ticks due
    afterEngineWork(now);
    if (ready.empty()) return;
    lk.unlock();
    runCallbacks(ready);
    lk.lock();
}

void Core::afterEngineWork(int64_t now) {
    if (!tickArmed_ && engine_->nextTickDue() != engine::kNever) setTickTimer(now, true);
    // (A thread that runs our loop is the owner; one that runs another endpoint's loop,
    // from a callback of that one, is not.)
    if (!loopBusy_ || runsOurLoop() || loopOwner_ == nullptr) return;
    // What the owner must wake for: its own call finished, the pacer has packets to send,
    // or a call deadline falls before the tick timer's next expiry (the owner's wait
    // must then be timed for it).
    bool wake = loopOwner_->done || engine_->nextPacerWakeup() != engine::kNever;
    if (!wake && !deadlines_.empty())
        wake = !tickArmed_ || deadlines_.begin()->first < nextTimerExpiry(now);
    if (wake) wakeOwner(now);
}

void Core::wakeFreeLoop(bool always) {
    if (loopBusy_) return;  // (its owner is told by afterEngineWork)
    if (!pollThreadWaiting_) {
        if (always) pokePollThread();
        return;
    }
    int64_t due = engine_->nextPacerWakeup();
    if (!deadlines_.empty()) due = std::min<int64_t>(due, deadlines_.begin()->first);
    if (due < pollThreadWaitEnd_) pokePollThread();
}

void Core::wakeOwner(int64_t now) {
    if (!ownerBlocked_) {
        pokeLoop();
    } else if (!driver_->wakeReceiver()) {
        // Not sent (e.g. the send buffer is full): try again at the next tick, with the
        // timer kept running for it (see sleepBudget).
        ownerWakeFailed_ = true;
        if (!tickArmed_) setTickTimer(now, true);
    }
}

bool Core::runsOurLoop() const {
    return std::find(tLoopsRunning.begin(), tLoopsRunning.end(), this) != tLoopsRunning.end();
}

bool Core::threadIsInside() const { return tThreadOf == this || tBatchFor == this || runsOurLoop(); }

int64_t Core::nextTimerExpiry(int64_t now) const {
    const int64_t period = options_.protocol.tickNs;
    return tickArmedAt_ + ((now - tickArmedAt_) / period + 1) * period;
}

int64_t Core::iterate(int64_t maxWaitNs) {
    // The callbacks this pass finished. One list per nesting level: a callback may make a
    // synchronous call on another endpoint, whose loop then runs on this thread while
    // this pass is still running its callbacks (and must not run them again). A deque,
    // so that a deeper level's list never moves an outer one's.
    thread_local std::deque<std::vector<std::pair<Endpoint::Callback, Response>>> readyLists;
    const size_t depth = tLoopsRunning.size();
    if (readyLists.size() == depth) readyLists.emplace_back();
    std::vector<std::pair<Endpoint::Callback, Response>>& ready = readyLists[depth];
    struct Nesting {
        explicit Nesting(const Core* core) { tLoopsRunning.push_back(core); }
        ~Nesting() { tLoopsRunning.pop_back(); }
    } nesting(this);
    thread_local std::vector<uint8_t> deferred;  // rx[i] starts a new request: handled last
    std::span<const driver::RxPacket> rx;
    // Bounded work per iteration: one receive batch. Skipped right after a read that
    // emptied the socket, when the next step is to wait anyway (saves a system call per
    // packet); the wait then says whether there is more. But a pass that ran callbacks
    // reads again first (see below).
    // The readable flag is consumed on every pass: left set, it would cost a read that
    // finds nothing on the pass after the one that emptied the socket.
    const bool readable = socketReadable_.exchange(false);
    if (!justDrained_ || readable) rx = driver_->receive();
    if (std::exchange(readAfterCallbacks_, false) && !readable) readAfterCallbacksMisses_.tried(!rx.empty());
    justDrained_ = !rx.empty() && driver_->drained();
    int64_t waitNs = 0;
    bool idle = false;
    bool block = false;
    bool freeze = false;
    size_t flushEvery = 0;  // see runCallbacks()
    if (!rx.empty()) HOMA_TRACE("loop rx %u packets", rx.size());
    {
        std::lock_guard lk(mu_);
        ++loopIterations_;
        // A callback or handler that runs the loop itself (a nested call) first returns
        // what it released so far: its own call may need the room.
        releaseDeferred();
        uint64_t engineStart;
        const int64_t now = nowAndEngineClock(&engineStart);
        // Receive livelock: work already accepted (data of RPCs in progress, grants,
        // acks) goes first; packets that would start new requests come last, so when
        // the engine refuses new work (maxPendingRequests) it has finished what it could.
        // The second pass takes exactly the packets the first one put aside: asking again
        // would skip every packet but the first of a new multi-packet request, since the
        // first one creates the RPC (they were lost until a RESEND). While the batch could
        // not reach the limit even if every packet started a request, the order changes
        // nothing and one pass does (sorting costs two more table lookups per packet).
        const uint32_t limit = options_.protocol.maxPendingRequests;
        const bool sort = limit != 0 && engine_->pendingRequests() + rx.size() >= limit;
        bool anyNew = false;
        if (sort) deferred.assign(rx.size(), 0);
        for (size_t i = 0; i < rx.size(); ++i) {
            if (sort && engine_->isNewRequest(rx[i].source, rx[i].bytes)) {
                deferred[i] = 1;
                anyNew = true;
                continue;
            }
            engine_->handlePacket(rx[i].source, rx[i].bytes, now);
        }
        if (anyNew)
            for (size_t i = 0; i < rx.size(); ++i)
                if (deferred[i]) engine_->handlePacket(rx[i].source, rx[i].bytes, now);
        if (!rx.empty()) engine_->finishBatch(now);
        if (now >= engine_->nextWakeup()) engine_->advance(now);
        timersRunAt_.store(now, std::memory_order_relaxed);
        postponeTick(now);
        countEngineTime(engineStart);
        const size_t refusedStarts = failedStarts_.size();  // (never in flight: dispatch moves them first)
        dispatch(ready, now);
        flushEvery = callbackFlushInterval(ready.size() - refusedStarts, calls_.size());
        freeze = engine_->takeFreeze();
        // Acks wait for the callbacks when there are any: the requests they start carry
        // them (Engine::sendDueAcks).
        if (ready.empty()) engine_->sendDueAcks();
        driver_->flush();
        // (A timer may have finished the owner's own call: then it must not wait.)
        idle = rx.empty() && ready.empty() && !shutdown_ && !(loopOwner_ && loopOwner_->done);
        if (idle) {
            waitNs = sleepBudget(now);
            if (maxWaitNs > 0) waitNs = std::min(waitNs, maxWaitNs);
            block = blockingReceive_ && maxWaitNs < 0 && waitNs == kUntilTimer && loopOwner_ != nullptr;
            ownerWakeFailed_ = false;
            if (block) {
                ownerBlocked_ = true;
                ++blockingReceives_;
            } else if (maxWaitNs != 0 && waitNs >= kShortestSleepNs && loopOwner_ != nullptr) {
                ++socketWaits_;
            }
        }
    }
    if (freeze) freezeTrace();
    // While callbacks run, calls in flight may be answered (a closed loop's peers answer
    // the first half while the second runs, see callbackFlushInterval): the socket
    // drained before them is then no longer known empty, and reading it at once costs one
    // system call where waiting first, to be told it is readable, costs two. (A pass with
    // callbacks never waits: the next one reads.) When such a read finds nothing (one call
    // at a time: its answer is still on the way), it costs one more, so after a miss the
    // next 1, 2, 4 ... 64 passes with callbacks wait first as before.
    if (!ready.empty() && justDrained_ && readAfterCallbacksMisses_.tryNow()) {
        justDrained_ = false;
        readAfterCallbacks_ = true;
    }
    runCallbacks(ready, flushEvery);
    if (idle && maxWaitNs != 0) {
        bool poked = false;
        // A sleep shorter than the kernel's timer slack (~50 us) oversleeps by that much;
        // the pacer's waits are a few microseconds, so for those only look at the socket.
        if (waitNs < kShortestSleepNs) waitNs = 0;
        if (block) {
            HOMA_TRACE("loop blocks in receive");
            const int64_t start = nowNs();
            bool spun = false;
            if (const int64_t spin = canRunOnSeveralCpus() ? tPoll.spinFor(adaptiveSpinNs_) : 0) {
                // (The owner is marked blocked meanwhile: wakeOwner() sends it the wake-up
                // datagram, which the spin finds like any packet. Nothing else ends it early.)
                spun = readUntil(start + spin);
                countSpin(spun);
            }
            socketReadable_ = spun || driver_->blockForPackets();
            tPoll.waited(nowNs() - start, socketReadable_);
            ownerBlocked_ = false;  // (ownerWakeFailed_ is cleared at the next decision)
        } else {
            socketReadable_ = waitForPackets(waitNs, wakeFd_, &poked);
        }
        // A wait that ends without packets (a timer is due) leaves the socket known empty.
        if (!socketReadable_) justDrained_ = true;
        if (poked) {
            uint64_t count;
            [[maybe_unused]] auto n = ::read(wakeFd_, &count, sizeof(count));
        }
    }
    return idle ? waitNs : 0;
}

// When most of an endpoint's calls finish in one pass (a closed loop whose peers
// answered a whole batch together), the calls their callbacks start go out in two
// halves, so the peers work on the first while this thread runs the second; in one
// batch, each side would idle while the other works (see docs/design.md). Returns the
// number of callbacks after which to flush, 0 for one batch at the end.
size_t Core::callbackFlushInterval(size_t finished, size_t stillInFlight) {
    const size_t half = (finished + stillInFlight) / 2;
    return half >= kMinCallbackFlush && finished > half ? half : 0;
}

void Core::runCallbacks(std::vector<std::pair<Endpoint::Callback, Response>>& ready, size_t flushEvery) {
    if (ready.empty()) return;
    // Counted before they run: whoever a callback tells that its call finished must find
    // that call counted.
    threadCounters_.add(kCallbacksRun, ready.size());
    const uint64_t start = trace::readClock();
    Batch batch(this);
    std::vector<std::pair<Endpoint::Callback, Response>> later;  // see tCallbackFrames
    tCallbackFrames.push_back({this, &later});
    struct PopFrame {
        ~PopFrame() { tCallbackFrames.pop_back(); }
    } popFrame;
    auto run = [this](Endpoint::Callback& callback, Response& response) {
        HOMA_TRACE("callback id %u", response.id);
        try {
            callback(std::move(response));
        } catch (...) {
            // The application's exception, not ours to handle: counted, and the other
            // callbacks of the batch still run (one thrown through here would have lost
            // them, and left the loop marked as running for good).
            callbackExceptions_.fetch_add(1, std::memory_order_relaxed);
        }
    };
    size_t ran = 0;
    for (auto& [callback, response] : ready) {
        run(callback, response);
        if (flushEvery != 0 && ++ran % flushEvery == 0 && ran < ready.size()) {
            // (Acks wait for the end: the requests the other callbacks start carry them.)
            std::lock_guard lk(mu_);
            releaseDeferred();
            driver_->flush();
        }
    }
    ready.clear();
    // The callbacks of calls that these callbacks started once the endpoint was shut
    // down, and of those that those started, ...: one after another, here.
    while (!later.empty()) {
        std::vector<std::pair<Endpoint::Callback, Response>> next;
        next.swap(later);
        threadCounters_.add(kCallbacksRun, next.size());
        for (auto& [callback, response] : next) run(callback, response);
    }
    threadCounters_.add(kCallbackCycles, trace::readClock() - start);
    std::lock_guard lk(mu_);
    releaseDeferred();
    // Acks waited for the requests the callbacks started (Engine::sendDueAcks); what
    // the callbacks sent leaves in one batch.
    engine_->sendDueAcks();
    driver_->flush();
}

void Core::freezeTrace() {
    if (options_.freezeTraceFile.empty() || !trace::switchedOn()) return;
    HOMA_TRACE("freeze: trace stopped");
    trace::enable(false);
    std::string path = expandPath(options_.freezeTraceFile, driver_->localAddress().port);
    std::string error;
    if (!trace::dump(path, &error)) std::fprintf(stderr, "homa: FREEZE: %s\n", error.c_str());
}

int64_t Core::sleepBudget(int64_t now) {
    const int64_t period = options_.protocol.tickNs;
    const int64_t tick = engine_->nextTickDue();
    int64_t precise = engine_->nextPacerWakeup();
    if (!deadlines_.empty()) precise = std::min<int64_t>(precise, deadlines_.begin()->first);
    if (tick != engine::kNever) {
        tickIdleSince_ = 0;
        if (!tickArmed_) setTickTimer(now, true);
    } else if (tickArmed_ && ownerWakeFailed_ && ownerBlocked_) {
        tickIdleSince_ = 0;  // a blocked owner still has to be woken: keep ticking
    } else if (tickArmed_) {
        // Disarmed lazily: an endpoint between two RPCs would otherwise arm and disarm
        // the timer for each.
        if (tickIdleSince_ == 0) {
            tickIdleSince_ = now;
        } else if (now - tickIdleSince_ >= period) {
            setTickTimer(now, false);
        }
    }
    int64_t until = precise;
    if (tickArmed_) {
        if (precise >= nextTimerExpiry(now)) return kUntilTimer;  // the timer ends the wait in time
    } else {
        until = std::min(until, tick);
    }
    // Nothing due at all: only packets or other threads (which poke the loop, or arm the
    // timer: afterEngineWork) can give the loop work.
    if (until == engine::kNever) return kUntilTimer;
    return std::clamp<int64_t>(until - now, 0, kMaxPollWaitNs);
}

void Core::postponeTick(int64_t now) {
    const int64_t period = options_.protocol.tickNs;
    if (!tickArmed_ || nextTimerExpiry(now) - now >= period / 4) return;
    itimerspec its{};
    its.it_interval = toTimespec(period);
    its.it_value = toTimespec(now + period);
    if (timerfd_settime(tickFd_, TFD_TIMER_ABSTIME, &its, nullptr) != 0) return;
    tickArmedAt_ = now;
    ++tickPostponements_;
}

void Core::setTickTimer(int64_t now, bool on) {
    tickIdleSince_ = 0;
    if (tickFd_ < 0) return;
    const int64_t period = options_.protocol.tickNs;
    itimerspec its{};
    if (on) {
        its.it_interval = toTimespec(period);
        its.it_value = toTimespec(now + period);  // absolute: nowNs() reads CLOCK_MONOTONIC
    }
    if (timerfd_settime(tickFd_, on ? TFD_TIMER_ABSTIME : 0, &its, nullptr) != 0) return;
    HOMA_TRACE("tick timer %u", on ? 1 : 0);
    tickArmed_ = on;
    tickArmedAt_ = now;
}

bool Core::readUntil(int64_t until) {
    do {
        if (driver_->readNow()) return true;
        sched_yield();  // (see lookUntil)
    } while (nowNs() < until);
    return false;
}

bool Core::lookUntil(int64_t until, bool yield, int fd, bool* poked, bool* ticked) {
    bool readable = false;
    bool done = false;
    do {
        readable = driver_->wait(0, fd, poked, ticked ? tickFd_ : -1, ticked);
        done = readable || (poked && *poked) || (ticked && *ticked);
        // An adaptive spin gives way to any thread waiting for this CPU: it may be the
        // peer whose answer the spin waits for (both ends on one CPU, or more threads than
        // CPUs), which spinning would hold off until the budget ran out.
        if (!done && yield) sched_yield();
    } while (!done && nowNs() < until);
    return readable;
}

void Core::countSpin(bool found) {
    (found ? spinHits_ : spinMisses_).fetch_add(1, std::memory_order_relaxed);
    tPoll.spun(found);
}

bool Core::waitForPackets(int64_t waitNs, int fd, bool* poked) {
    bool ticked = false;
    bool readable = false;
    bool done = false;
    const bool busy = options_.busyPollUs > 0;
    int64_t spinNs = 0;
    if (waitNs > 0) {  // (a wait of 0, the pacer's, only looks: it spins nothing)
        spinNs = busy                    ? static_cast<int64_t>(options_.busyPollUs) * 1000
                 : canRunOnSeveralCpus() ? tPoll.spinFor(adaptiveSpinNs_)
                                         : 0;
    }
    const int64_t start = nowNs();
    if (spinNs > 0) {
        readable = lookUntil(start + std::min(waitNs, spinNs), !busy, fd, poked, &ticked);
        done = readable || *poked || ticked;
        const int64_t now = nowNs();
        // (A spin ended by a poke, a tick or a nearer deadline is neither a hit nor a miss.)
        if (!busy && (readable || now - start >= spinNs)) countSpin(readable);
        if (waitNs != kUntilTimer) {
            waitNs -= now - start;
            done = done || waitNs <= 0;
        }
    }
    if (!done) readable = driver_->wait(waitNs == kUntilTimer ? -1 : waitNs, fd, poked, tickFd_, &ticked);
    // (A wait that slept is measured too: it says whether the next one should spin.)
    tPoll.waited(nowNs() - start, readable);
    if (ticked) {
        uint64_t expirations;
        [[maybe_unused]] auto n = ::read(tickFd_, &expirations, sizeof(expirations));
    }
    return readable;
}

void Core::dispatch(std::vector<std::pair<Endpoint::Callback, Response>>& ready, int64_t now) {
    for (auto& f : failedStarts_) ready.push_back(std::move(f));
    failedStarts_.clear();
    // (Read in place: a delivery's fields are copied into the Message or Response, so
    // moving the whole delivery out first would be wasted work.)
    for (engine::Delivery* dp; (dp = engine_->peekDelivery()) != nullptr; engine_->popDelivery()) {
        engine::Delivery& d = *dp;
        switch (d.kind) {
            case engine::Delivery::Kind::Request:
                if (shutdown_) {
                    // Read before the shutdown, handled after it: nobody will take it
                    // (shutdown() dropped the queue), and a request left queued would
                    // keep the core, its socket and its memory alive for good.
                    engine_->releaseMessage(d.message, now);
                    break;
                }
                ++messagesDelivered_;
                deliverRequest(d);
                break;
            case engine::Delivery::Kind::Response: {
                ++messagesDelivered_;
                Call* call = calls_.find(d.clientId);
                if (call == nullptr) {
                    engine_->releaseMessage(d.message, now);  // the caller gave up
                    break;
                }
                Response r;
                r.message = makeMessage(d.message);
                finishCall(call, std::move(r), ready);
                break;
            }
            case engine::Delivery::Kind::Failure: {
                Response r;
                r.status = std::move(d.status);
                finishCall(d.clientId, std::move(r), ready);
                break;
            }
        }
    }
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
        RpcId id = deadlines_.begin()->second;
        deadlines_.erase(deadlines_.begin());
        if (calls_.find(id) == nullptr) continue;
        engine_->abortClientRpc(id, now);
        ++callTimeouts_;
        Response r;
        r.status = Status(StatusCode::Timeout, "the call's timeout expired");
        finishCall(id, std::move(r), ready);
    }
}

void Core::finishCall(RpcId id, Response r, std::vector<std::pair<Endpoint::Callback, Response>>& ready) {
    if (Call* call = calls_.find(id)) finishCall(call, std::move(r), ready);
}

void Core::finishCall(Call* call, Response r, std::vector<std::pair<Endpoint::Callback, Response>>& ready) {
    const RpcId id = call->id;
    if (call->deadline != 0) deadlines_.erase({call->deadline, id});
    r.id = id;
    r.context = call->context;
    ++handoffs_;
    if (!r.status.isOk()) ++callsFailed_[static_cast<size_t>(r.status.code()) % callsFailed_.size()];
    HOMA_TRACE("handoff response id %u status %u", id, static_cast<unsigned>(r.status.code()));
    if (call->waiter) {
        call->waiter->response = std::move(r);
        call->waiter->done = true;
        wake(call->waiter);
    } else {
        ready.emplace_back(std::move(call->callback), std::move(r));
    }
    calls_.remove(call);
}

Core::Call* Core::CallTable::add(RpcId id) {
    Call* c;
    if (!free_.empty()) {
        c = free_.back();
        free_.pop_back();
    } else {
        storage_.push_back(std::make_unique<Call>());
        c = storage_.back().get();
    }
    c->id = id;
    index_.insert(id, c);
    return c;
}

void Core::CallTable::remove(Call* c) {
    // (Under mu_: callers move the callback out first, so that no application object it
    // holds, a Message of this core say, is destroyed here.)
    index_.erase(c->id);
    c->id = 0;
    c->waiter = nullptr;
    c->callback = nullptr;
    c->context = 0;
    c->deadline = 0;
    free_.push_back(c);
}

void Core::CallTable::clear() {
    for (auto& c : storage_)
        if (c->id != 0) remove(c.get());
}

void Core::deliverRequest(engine::Delivery& d) {
    ServerRequest req;
    req.message_ = makeMessage(d.message);
    req.client_ = d.server.client;
    req.id_ = d.server.id;
    if (requestWaiters_.empty()) {
        HOMA_TRACE("request queued id %u queue %u", req.id_, requests_.size());
        requests_.push_back(std::move(req));
        return;
    }
    // Hand it to exactly one waiting thread: the one running this loop if it wants a
    // request (no thread switch), otherwise the one that started waiting last.
    auto it = std::find(requestWaiters_.begin(), requestWaiters_.end(), loopOwner_);
    if (it == requestWaiters_.end()) it = requestWaiters_.end() - 1;
    Waiter* w = *it;
    requestWaiters_.erase(it);
    HOMA_TRACE("handoff request id %u other_thread %u", req.id_, w == loopOwner_ ? 0 : 1);
    w->request = std::move(req);
    w->done = true;
    if (w->worker) ++busyWorkers_;
    ++handoffs_;
    wake(w);
}

// ---------------------------------------------------------------- client

Status Core::checkCall(const Address& server, const CallOptions& options) const {
    if (options.timeout.count() < 0)
        return Status(StatusCode::InvalidArgument, "CallOptions::timeout is negative (" +
                                                       std::to_string(options.timeout.count()) +
                                                       " ns); 0 means no timeout of the call's own");
    return driver_->canSendTo(server);  // (read-only driver state: no lock needed)
}

Response Core::call(const Address& server, std::span<const uint8_t> request, const CallOptions& options,
                    engine::OutgoingBuffer owned, const Status* cannotStart) {
    Status refused;
    if (!cannotStart && !(refused = checkCall(server, options)).isOk()) cannotStart = &refused;
    Waiter w;
    mu_.lock();
    Response r;
    if (cannotStart && !shutdown_) {
        dropOutgoing(owned);
        ++callsFailed_[static_cast<size_t>(cannotStart->code()) % callsFailed_.size()];
        mu_.unlock();
        r.status = *cannotStart;
        r.context = options.context;
        return r;
    }
    if (shutdown_) {
        dropOutgoing(owned);
        mu_.unlock();
        r.status = Status(StatusCode::Shutdown, "the endpoint is shut down");
        r.context = options.context;
        return r;
    }
    uint64_t engineStart;
    const int64_t now = nowAndEngineClock(&engineStart);
    RpcId id = 0;
    if (owned) --liveMessages_;  // (the engine takes it, whatever the outcome)
    Status s = engine_->startRequest(server, request, 0, now, &id, owned);
    countEngineTime(engineStart);
    driver_->flush();
    if (!s.isOk()) {
        afterEngineWork(now);
        ++callsFailed_[static_cast<size_t>(s.code()) % callsFailed_.size()];
        mu_.unlock();
        r.status = s;
        r.context = options.context;
        return r;
    }
    Call& c = *calls_.add(id);
    c.waiter = &w;
    c.context = options.context;
    if (options.timeout.count() > 0) {
        c.deadline = deadlineAfter(now, options.timeout.count());
        deadlines_.insert({c.deadline, id});
    }
    // (After the deadline is in: an owner blocked in the socket must wake for it.)
    afterEngineWork(now);
    waitFor(w, 0);
    if (!w.done) {  // shut down while waiting
        if (Call* c = calls_.find(id)) calls_.remove(c);
        mu_.unlock();
        r.status = Status(StatusCode::Shutdown, "the endpoint is shut down");
        r.id = id;
        r.context = options.context;
        return r;
    }
    mu_.unlock();
    return std::move(w.response);
}

RpcId Core::callAsync(const Address& server, std::span<const uint8_t> request, Endpoint::Callback done,
                      const CallOptions& options, engine::OutgoingBuffer owned, const Status* cannotStart) {
    if (!done) {
        // Nothing to tell the outcome to: refused, and nothing runs.
        std::lock_guard lk(mu_);
        dropOutgoing(owned);
        ++callsFailed_[static_cast<size_t>(StatusCode::InvalidArgument) % callsFailed_.size()];
        return 0;
    }
    Status refused;  // (as in call())
    if (!cannotStart && !(refused = checkCall(server, options)).isOk()) cannotStart = &refused;
    Response r;
    r.context = options.context;
    {
        std::lock_guard lk(mu_);
        if (shutdown_) {
            dropOutgoing(owned);
            r.status = Status(StatusCode::Shutdown, "the endpoint is shut down");
        } else if (cannotStart) {
            dropOutgoing(owned);
            r.status = *cannotStart;
        } else {
            uint64_t engineStart;
            const int64_t now = nowAndEngineClock(&engineStart);
            RpcId id = 0;
            if (owned) --liveMessages_;  // (the engine takes it, whatever the outcome)
            Status s = engine_->startRequest(server, request, 0, now, &id, owned);
            countEngineTime(engineStart);
            maybeFlush();
            if (s.isOk()) {
                Call& c = *calls_.add(id);
                c.callback = std::move(done);
                c.context = options.context;
                if (options.timeout.count() > 0) {
                    c.deadline = deadlineAfter(now, options.timeout.count());
                    deadlines_.insert({c.deadline, id});
                }
                afterEngineWork(now);
                wakeFreeLoop(true);
                return id;
            }
            r.status = s;
        }
        ++callsFailed_[static_cast<size_t>(r.status.code()) % callsFailed_.size()];
        if (!shutdown_) {
            // The callback runs from the loop, never inside callAsync: an application that
            // starts the call again from its callback (a closed loop refused for lack of
            // memory) must not recurse once per refusal until its stack runs out.
            failedStarts_.emplace_back(std::move(done), std::move(r));
            wakeLoopForCallbacks();
            return 0;
        }
    }
    // Shut down: no loop will run again, so the callback runs on this thread. Called from
    // a callback of this endpoint, it runs once that one has returned (runCallbacks), not
    // nested in it: a callback that starts its call again, whatever the outcome, would
    // otherwise recurse once per call until its stack ran out.
    for (auto frame = tCallbackFrames.rbegin(); frame != tCallbackFrames.rend(); ++frame) {
        if (frame->core == this) {
            frame->later->emplace_back(std::move(done), std::move(r));
            return 0;
        }
    }
    std::vector<std::pair<Endpoint::Callback, Response>> ready;
    ready.emplace_back(std::move(done), std::move(r));
    runCallbacks(ready);
    return 0;
}

void Core::wakeLoopForCallbacks() {
    // The poll thread runs the loop whenever no application thread does (and looks within
    // a tick when one stops without telling it); an application thread that owns the loop
    // is woken as for a finished call of its own.
    pokePollThread();
    if (loopBusy_ && loopOwner_ != nullptr && !runsOurLoop()) wakeOwner(nowNs());
}

Status Core::abort(RpcId id) {
    std::vector<std::pair<Endpoint::Callback, Response>> ready;
    {
        std::lock_guard lk(mu_);
        if (calls_.find(id) == nullptr) return Status(StatusCode::NoSuchRpc, "no call " + std::to_string(id) + " in flight");
        const int64_t now = nowNs();
        engine_->abortClientRpc(id, now);
        Response r;
        r.status = Status(StatusCode::Aborted, "aborted by the application");
        finishCall(id, std::move(r), ready);
        afterEngineWork(now);
    }
    runCallbacks(ready);
    return {};
}

// ---------------------------------------------------------------- server

std::optional<ServerRequest> Core::receive(int64_t timeoutNs, bool worker) {
    mu_.lock();
    auto takeQueued = [&] {
        ServerRequest r = std::move(requests_.front());
        requests_.pop_front();
        ++handoffs_;
        if (worker) ++busyWorkers_;
        HOMA_TRACE("handoff request id %u from queue %u", r.id_, requests_.size());
        mu_.unlock();
        return r;
    };
    if (!requests_.empty()) return takeQueued();
    if (shutdown_) {
        mu_.unlock();
        return std::nullopt;
    }
    if (timeoutNs == 0) {
        // No wait, but one pass of the loop when no other thread runs it (as poll(0)
        // makes): without the poll thread, nobody else may ever read the socket.
        if (!loopBusy_) {
            passOfLoop(0);
            if (!requests_.empty() && !shutdown_) return takeQueued();
        }
        mu_.unlock();
        return std::nullopt;
    }
    Waiter w;
    w.wantsRequest = true;
    w.worker = worker;
    requestWaiters_.push_back(&w);
    waitFor(w, timeoutNs < 0 ? 0 : deadlineAfter(nowNs(), timeoutNs));
    if (!w.done) {
        auto it = std::find(requestWaiters_.begin(), requestWaiters_.end(), &w);
        if (it != requestWaiters_.end()) requestWaiters_.erase(it);
        mu_.unlock();
        return std::nullopt;
    }
    mu_.unlock();
    return std::move(w.request);
}

Status Core::serve(Endpoint::Handler handler, int threads) {
    std::lock_guard lk(mu_);
    if (threads < 1 || threads > 1024) return Status(StatusCode::InvalidArgument, "threads must be 1..1024");
    if (!handler) return Status(StatusCode::InvalidArgument, "the handler is empty");
    if (serving_) return Status(StatusCode::InvalidArgument, "serve() was already called");
    if (shutdown_) return Status(StatusCode::Shutdown, "the endpoint is shut down");
    serving_ = true;
    threadsStarted_ = true;
    for (int i = 0; i < threads; ++i) {
        workers_.emplace_back([this, handler] {
            tThreadOf = this;
            const auto maxHoldCycles = static_cast<uint64_t>(static_cast<double>(kMaxResponseHoldNs) * trace::cyclesPerNs());
            uint64_t holdingSince = 0;  // when the oldest unsent response's handler started
            std::optional<ServerRequest> request = receive(-1, true);
            while (request) {
                const Core* outer = beginBatch();
                // Counted before it runs: its response may reach the client (through
                // another thread's flush) before this thread is done.
                threadCounters_.add(kHandlerCalls, 1);
                const uint64_t start = trace::readClock();
                if (holdingSince == 0) holdingSince = start;
                tInHandlerOf = this;
                try {
                    handler(std::move(*request));
                } catch (...) {
                    // A throwing handler drops its request (the client sees a failure);
                    // the worker goes on serving.
                    handlerExceptions_.fetch_add(1, std::memory_order_relaxed);
                }
                tInHandlerOf = nullptr;
                request.reset();
                const uint64_t end = trace::readClock();
                threadCounters_.add(kHandlerCycles, end - start);
                // One lock: the request's buffer goes back, and the next queued request is
                // taken. Responses go out when this worker has no queued request left to
                // run (or when the driver's batch fills), so that the responses to one
                // burst of requests leave together in one sendmmsg; but a response waits
                // at most about kMaxResponseHoldNs of handler time for the others (slow
                // handlers would otherwise hold the first response of a burst until the
                // last one is done). A response held over the next handler waits for it,
                // however long it runs, unless someone else sends it: the poll thread,
                // which takes the loop when a handler runs past kWorkerGraceNs. Without a
                // poll thread nothing is held (a fast call queued in front of a slow one
                // timed out, its response sent only when the slow handler ended).
                std::unique_lock lk(mu_);
                releaseDeferred();
                tBatchFor = outer;  // the batch ends with this step
                ++handlersDone_;
                const bool more = !requests_.empty() && !shutdown_;
                if (!more || !options_.pollThread || end - holdingSince >= maxHoldCycles) {
                    driver_->flush();
                    holdingSince = 0;
                }
                if (more) {
                    request = std::move(requests_.front());
                    requests_.pop_front();
                    ++handoffs_;
                    HOMA_TRACE("handoff request id %u from queue %u", request->id_, requests_.size());
                    continue;
                }
                --busyWorkers_;
                lk.unlock();
                request = receive(-1, true);
            }
        });
        nameThread(workers_.back(), "homa-work", driver_->localAddress().port);
    }
    return {};
}

Status Core::respond(const Address& client, RpcId id, std::span<const uint8_t> response,
                     engine::OutgoingBuffer owned) {
    std::lock_guard lk(mu_);
    if (shutdown_) {
        dropOutgoing(owned);
        return Status(StatusCode::Shutdown, "the endpoint is shut down");
    }
    Status s;
    if (owned) --liveMessages_;  // (the engine takes it, whatever the outcome)
    outsideLoop([&](int64_t now) { s = engine_->sendResponse({client, id}, response, now, owned); });
    // A handler's response waits to leave with those of the requests queued behind it
    // (see serve()). With none queued nothing would join it: it leaves now, since the
    // handler may go on working after it has answered, for as long as it likes.
    if (tInHandlerOf == this && tBatchFor == this && requests_.empty()) driver_->flush();
    return s;
}

// ---------------------------------------------------------------- outgoing messages

OutgoingMessage Core::allocate(size_t length, Status* error) {
    OutgoingMessage m;
    Status s;
    {
        std::lock_guard lk(mu_);
        if (shutdown_) {
            s = Status(StatusCode::Shutdown, "the endpoint is shut down");
        } else {
            const engine::OutgoingBuffer b = engine_->allocateOutgoing(length, &s);
            if (b) {
                ++liveMessages_;
                m.core_ = this;
                m.data_ = b.data;
                m.length_ = static_cast<uint32_t>(length);
                m.capacity_ = b.capacity;
            }
        }
    }
    if (error) *error = s;
    return m;
}

Status Core::takeOutgoing(OutgoingMessage& m, std::span<const uint8_t>* bytes, engine::OutgoingBuffer* owned) {
    if (m.data_ == nullptr) return Status(StatusCode::InvalidArgument, "the message is empty (sent or moved from)");
    if (m.core_ != this) return Status(StatusCode::InvalidArgument, "the message was allocated by another endpoint");
    *bytes = {m.data_, m.length_};
    *owned = {m.data_, m.capacity_};
    m.core_ = nullptr;  // (the buffer is the caller's now: nothing to release)
    m.data_ = nullptr;
    m.length_ = m.capacity_ = 0;
    return {};
}

void Core::dropOutgoing(engine::OutgoingBuffer owned) {
    if (!owned) return;
    engine_->releaseOutgoing(owned);
    --liveMessages_;
}

void Core::releaseOutgoing(uint8_t* data, uint32_t capacity) {
    std::shared_ptr<Core> last;  // (declared first: dropped after the lock is released)
    std::lock_guard lk(mu_);
    engine_->releaseOutgoing({data, capacity});
    last = messagesReleased(1);
}

void Core::dropRequest(const Address& client, RpcId id) {
    std::lock_guard lk(mu_);
    outsideLoop([&](int64_t now) { engine_->abortServerRpc({client, id}, now); });
}

void Core::release(uint8_t* data, uint32_t length, uint32_t capacity) {
    if (tBatchFor == this) {
        tReleases.push_back({this, data, length, capacity});
        return;
    }
    std::shared_ptr<Core> last;  // (declared first: dropped after the lock is released)
    std::lock_guard lk(mu_);
    outsideLoop([&](int64_t now) { engine_->releaseMessage({data, length, capacity}, now); });
    last = messagesReleased(1);
}

std::shared_ptr<Core> Core::messagesReleased(uint64_t n) {
    liveMessages_ -= n;
    if (liveMessages_ != 0) return nullptr;
    return std::move(keepAlive_);
}

void Core::outliveEndpoint(std::shared_ptr<Core> self) {
    // Destroyed from one of its own callbacks or handlers, this thread goes back into the
    // core when that returns: it keeps the core until it has left it (the core's own
    // threads when they end, an application thread when its call on the endpoint returns,
    // see afterApplicationCall).
    if (threadIsInside()) tCoresToDrop.push_back(self);
    std::lock_guard lk(mu_);
    if (liveMessages_ > 0) keepAlive_ = std::move(self);
}

void Core::afterApplicationCall() {
    if (tCoresToDrop.empty() || tThreadOf != nullptr || tBatchFor != nullptr || !tLoopsRunning.empty()) return;
    std::vector<std::shared_ptr<Core>> last;
    last.swap(tCoresToDrop);
}

const Core* Core::beginBatch() { return std::exchange(tBatchFor, this); }

void Core::endBatch(const Core* outer) {
    if (outer != this) {  // (nested in a batch of its own, that one ends it)
        std::lock_guard lk(mu_);
        releaseDeferred();
        driver_->flush();
    }
    tBatchFor = outer;
}

Core::Batch::~Batch() { tBatchFor = outer_; }

void Core::releaseDeferred() {
    if (tReleases.empty()) return;
    // Entries of another endpoint (a batch of its own that this one's callbacks ran
    // inside) stay for their owner.
    thread_local std::vector<engine::ReceivedMessage> ours;
    ours.clear();
    size_t kept = 0;
    for (const DeferredRelease& r : tReleases) {
        if (r.core == this) {
            ours.push_back({r.data, r.length, r.capacity});
        } else {
            tReleases[kept++] = r;
        }
    }
    tReleases.resize(kept);
    const size_t released = ours.size();
    if (released > 0) outsideLoop([&](int64_t now) { engine_->releaseMessages(ours, now); });
    // The caller holds mu_: were this the core's last reference (its endpoint gone, as
    // when a handler destroys its own endpoint), dropping it here would destroy the core
    // under its own lock. This thread drops it when it ends instead.
    if (std::shared_ptr<Core> last = messagesReleased(released)) tCoresToDrop.push_back(std::move(last));
}

void Core::poll(int64_t timeoutNs) {
    mu_.lock();
    if (shutdown_ || loopBusy_) {
        mu_.unlock();
        return;
    }
    passOfLoop(std::max<int64_t>(0, timeoutNs));
    mu_.unlock();
}

void Core::passOfLoop(int64_t timeoutNs) {
    Waiter w;  // (the loop's owner while it runs; nobody waits on it)
    loopBusy_ = true;
    loopOwner_ = &w;
    mu_.unlock();
    iterate(timeoutNs);
    std::unique_lock lk(mu_);
    releaseLoop(lk);
    lk.release();  // (mu_ stays held)
}

// ---------------------------------------------------------------- state

MetricsSnapshot Core::metrics() {
    std::lock_guard lk(mu_);
    MetricsSnapshot s;
    s.timeNs = nowNs();
    auto add = [&](std::string name, uint64_t v) { s.counters.emplace_back(std::move(name), v); };
    const engine::EngineMetrics& m = engine_->metrics();
    for (size_t t = 0; t < engine::EngineMetrics::kTypes; ++t) {
        std::string type = wire::toString(static_cast<wire::PacketType>(0x10 + t));
        for (auto& ch : type) ch = static_cast<char>(std::tolower(ch));
        add("packets_sent_" + type, m.packetsSent[t]);
        add("bytes_sent_" + type, m.bytesSent[t]);
        add("packets_received_" + type, m.packetsReceived[t]);
        add("bytes_received_" + type, m.bytesReceived[t]);
    }
    for (size_t p = 0; p < 8; ++p) {
        add("packets_priority_" + std::to_string(p), m.packetsByPriority[p]);
        add("bytes_priority_" + std::to_string(p), m.bytesByPriority[p]);
    }
    for (size_t r = 0; r < m.dropped.size(); ++r)
        add(std::string("dropped_") + engine::toString(static_cast<engine::DropReason>(r)), m.dropped[r]);
    add("client_rpcs_started", m.clientRpcsStarted);
    add("client_rpcs_completed", m.clientRpcsCompleted);
    add("client_rpcs_timed_out", m.clientRpcsTimedOut);
    add("client_rpcs_aborted", m.clientRpcsAborted);
    add("client_restarts", m.clientRestarts);
    add("client_rpcs_refused_stale", m.clientRpcsRefusedStale);
    add("client_id_skips", m.clientIdSkips);
    add("client_rpcs_waited", m.clientRpcsWaited);
    add("request_permits", m.requestPermits);
    add("requests_readmitted", m.requestsReadmitted);
    for (size_t code = 1; code <= static_cast<size_t>(StatusCode::Aborted); ++code) {
        std::string name = std::string("calls_failed_") + toString(static_cast<StatusCode>(code));
        std::replace(name.begin(), name.end(), ' ', '_');
        add(std::move(name), callsFailed_[code]);
    }
    add("server_requests_received", m.serverRequestsReceived);
    add("server_responses_sent", m.serverResponsesSent);
    add("server_rpcs_acked", m.serverRpcsAcked);
    add("server_rpcs_abandoned", m.serverRpcsAbandoned);
    add("server_rpcs_timed_out", m.serverRpcsTimedOut);
    add("server_rpcs_aborted", m.serverRpcsAborted);
    add("grants_sent", m.grantsSent);
    add("granted_bytes", m.grantedBytes);
    add("fifo_grant_bytes", m.fifoGrantBytes);
    add("resends_sent", m.resendsSent);
    add("retransmitted_packets", m.retransmittedPackets);
    add("retransmitted_bytes", m.retransmittedBytes);
    add("busy_sent", m.busySent);
    add("rpc_unknown_sent", m.rpcUnknownSent);
    add("need_acks_sent", m.needAcksSent);
    add("timer_packets_deferred", m.timerPacketsDeferred);
    add("ack_packets_sent", m.ackPacketsSent);
    add("acks_received", m.acksReceived);
    add("acks_piggybacked", m.acksPiggybacked);
    add("cutoffs_sent", m.cutoffsSent);
    add("pacer_deferrals", m.pacerDeferrals);
    add("nic_queue_ns", static_cast<uint64_t>(engine_->nicQueue().backlog(s.timeNs)));
    add("pacer_allowance_ns", static_cast<uint64_t>(engine_->pacerAllowanceNs()));
    add("buffer_waits", m.bufferWaits);
    add("buffer_bytes_in_use", engine_->bufferPool().bytesInUse());
    add("send_bytes_in_use", engine_->sendPool().bytesInUse());
    add("buffer_allocation_failures", engine_->bufferPool().allocationFailures());
    add("peers", engine_->peerCount());
    add("peers_created", m.peersCreated);
    add("peers_evicted", m.peersEvicted);
    add("rpcs", engine_->rpcCount());
    add("client_rpcs_waiting", engine_->rpcsWaitingToStart());
    add("pending_requests", engine_->pendingRequests());
    add("incoming_outstanding", engine_->incomingOutstanding());
    add("active_grants", static_cast<uint64_t>(engine_->activeGrants()));
    add("calls_in_flight", calls_.size());
    add("requests_queued", requests_.size());
    add("messages_delivered", messagesDelivered_);
    add("handoffs", handoffs_);
    add("thread_wakeups", wakeups_);
    add("empty_wakeups", emptyWakeups_);
    add("loop_passes", loopPasses_);
    add("loop_iterations", loopIterations_);
    add("call_timeouts", callTimeouts_);
    add("socket_waits", socketWaits_);
    add("poll_thread_socket_waits", pollThreadSocketWaits_);
    add("poll_thread_stood_aside", pollThreadStoodAside_);
    add("blocking_receives", blockingReceives_);
    add("poll_thread_timer_runs", timerRuns_);
    add("poll_thread_wakeups", pollThreadWakeups_.load(std::memory_order_relaxed));
    add("tick_postponements", tickPostponements_);
    add("poll_thread_late_takeovers", pollThreadLateTakeovers_);
    add("tick_timer_armed", tickArmed_ ? 1 : 0);
    // Cycles shown in ns at the counter's rate, measured afresh each time: its jitter
    // could show a counter a few ns below its last reading (to a Prometheus server, a
    // reset), so each is shown as at least what it was last.
    const double cyclesPerNs = trace::cyclesPerNs();
    auto ns = [&](uint64_t cycles, uint64_t& shown) {
        shown = std::max(shown, static_cast<uint64_t>(static_cast<double>(cycles) / cyclesPerNs));
        return shown;
    };
    add("engine_cpu_ns", ns(engineCycles_, shownNs_[0]));
    add("handler_calls", threadCounters_.sum(kHandlerCalls));
    add("handler_ns", ns(threadCounters_.sum(kHandlerCycles), shownNs_[1]));
    add("callbacks_run", threadCounters_.sum(kCallbacksRun));
    add("callback_ns", ns(threadCounters_.sum(kCallbackCycles), shownNs_[2]));
    add("callback_exceptions", callbackExceptions_.load(std::memory_order_relaxed));
    add("handler_exceptions", handlerExceptions_.load(std::memory_order_relaxed));
    add("trace_enabled", trace::switchedOn() ? 1 : 0);
    const driver::UdpDriverStats& ds = driver_->stats();
    add("udp_send_calls", ds.sendCalls);
    add("udp_receive_calls", ds.recvCalls);
    add("udp_gso_batches", ds.gsoBatches);
    add("udp_gso_fallbacks", ds.gsoFallbacks);
    add("udp_gro_buffers", ds.groBuffers);
    add("udp_send_errors", ds.sendErrors);
    add("udp_bad_destinations", ds.badDestinations);
    add("udp_empty_datagrams", ds.emptyDatagrams);
    add("udp_wait_calls", ds.waitCalls);
    add("adaptive_poll_hits", spinHits_.load(std::memory_order_relaxed));
    add("adaptive_poll_misses", spinMisses_.load(std::memory_order_relaxed));
    for (size_t p = 0; p < ds.packetsReceivedByPriority.size(); ++p)
        add("udp_received_priority_" + std::to_string(p), ds.packetsReceivedByPriority[p]);
    return s;
}

std::vector<RpcSnapshot> Core::rpcs() {
    std::vector<engine::RpcInfo> infos;
    {
        std::lock_guard lk(mu_);
        engine_->listRpcs(infos);
    }
    std::vector<RpcSnapshot> out;
    out.reserve(infos.size());
    for (const engine::RpcInfo& i : infos) {
        RpcSnapshot r;
        r.peer = i.peer.toString();
        r.id = i.id;
        r.state = i.waitingToStart ? "client-waiting" : engine::toString(i.state);
        r.outLength = i.outLength;
        r.outSent = i.outSent;
        r.outGranted = i.outGranted;
        r.inLength = i.inLength;
        r.inReceived = i.inReceived;
        r.inGranted = i.inGranted;
        r.waitingForBuffer = i.waitingForBuffer;
        r.silentTicks = i.silentTicks;
        out.push_back(std::move(r));
    }
    return out;
}

Status Core::sendFreeze(const Address& peer) {
    std::lock_guard lk(mu_);
    if (shutdown_) return Status(StatusCode::Shutdown, "the endpoint is shut down");
    // (As for a call: the socket cannot send there.)
    if (Status s = driver_->canSendTo(peer); !s.isOk()) return s;
    outsideLoop([&](int64_t now) { engine_->sendFreeze(peer, now); });
    return {};
}

void Core::shutdown() {
    // One of the core's own threads (from a callback or handler) keeps the core from here
    // until it has returned out of it: the application, told of the shutdown (woken from
    // a call with Shutdown, say), may destroy the endpoint while this thread still runs
    // the rest of this function and the loop it returns to. (Nothing to keep when this
    // runs in the core's destructor.)
    // The same for an application thread running this core's loop or callbacks (dropped
    // when its call on the endpoint returns, see afterApplicationCall).
    const bool inside = threadIsInside();
    if (inside)
        if (std::shared_ptr<Core> self = weak_from_this().lock()) tCoresToDrop.push_back(std::move(self));
    struct Depth {
        Depth() { ++tShutdownDepth; }
        ~Depth() { --tShutdownDepth; }
    } depth;
    std::vector<std::pair<Endpoint::Callback, Response>> ready;
    std::deque<ServerRequest> orphans;
    std::unique_ptr<Publisher> publisher;
    std::thread pollThread;
    std::vector<std::thread> workers;
    {
        std::lock_guard lk(mu_);
        if (!shutdown_) {
            shutdown_ = true;
            calls_.forEach([&](Call& call) {
                const RpcId id = call.id;
                Response r;
                r.status = Status(StatusCode::Shutdown, "the endpoint shut down");
                r.id = id;
                r.context = call.context;
                engine_->abortClientRpc(id, nowNs());
                if (call.waiter) {
                    call.waiter->response = std::move(r);
                    call.waiter->done = true;
                    wake(call.waiter);
                } else {
                    ready.emplace_back(std::move(call.callback), std::move(r));
                }
            });
            calls_.clear();
            deadlines_.clear();
            for (auto& f : failedStarts_) ready.push_back(std::move(f));
            failedStarts_.clear();
            for (Waiter* w : sleepers_) w->cv.notify_one();
            pokeLoop();
            if (driver_) driver_->shutdownReceive();  // a loop owner blocked in the socket
            pokePollThread();
            orphans.swap(requests_);
            publisher = std::move(publisher_);
        }
        // Whoever comes first takes the threads to join: shutdown() may be called from
        // two threads at once (one of them perhaps a worker), and a thread is joined once.
        pollThread = std::move(pollThread_);
        workers.swap(workers_);
    }
    const bool joins = pollThread.joinable() || !workers.empty() || publisher != nullptr;
    publisher.reset();  // joins its thread, which may be waiting for mu_
    runCallbacks(ready);
    orphans.clear();
    auto join = [](std::thread& t) {
        if (!t.joinable()) return;
        if (t.get_id() == std::this_thread::get_id()) {
            t.detach();  // shutdown() from a handler or callback: it ends by itself (above)
        } else {
            t.join();
        }
    };
    join(pollThread);
    for (auto& t : workers) join(t);
    std::unique_lock lk(mu_);
    if (joins) {
        threadsJoined_ = true;
        threadsJoinedCv_.notify_all();
    } else if (!inside && tShutdownDepth == 1) {
        // Another caller is joining the threads: "stopped" means stopped when this returns
        // too. Not from inside the core (a thread of its own may be one of those joined;
        // a callback may run inside the first caller's shutdown(), on its thread), nor
        // from inside another endpoint's shutdown() (two endpoints' callbacks shutting
        // each other down would wait for each other).
        threadsJoinedCv_.wait(lk, [&] { return threadsJoined_ || !threadsStarted_; });
    }
}

}  // namespace homa::runtime
