// An endpoint whose tick timer cannot be made (timerfd_create fails: out of descriptors,
// or a sandbox that forbids it) still works: its poll thread then looks at every tick
// instead of sleeping until the timer goes off. This binary is linked with
// -Wl,--wrap=timerfd_create, so the tests decide when the call fails.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <future>

#include "common/loopback.h"
#include "homa/endpoint.h"

namespace {
std::atomic<bool> gFailTimerfd{false};
std::atomic<int> gTimerfdRefused{0};
}  // namespace

extern "C" int __real_timerfd_create(int clockid, int flags);
extern "C" int __wrap_timerfd_create(int clockid, int flags) {
    if (gFailTimerfd.load()) {
        ++gTimerfdRefused;
        errno = EMFILE;
        return -1;
    }
    return __real_timerfd_create(clockid, flags);
}

namespace homa {
namespace {

using namespace std::chrono_literals;

using test::BlackHole;
using test::bytesOf;
using test::echoServer;
using test::loopback;

// Endpoints opened while timerfd_create fails.
class NoTimerfd : public ::testing::Test {
  protected:
    void SetUp() override {
        gTimerfdRefused = 0;
        gFailTimerfd = true;
    }
    void TearDown() override { gFailTimerfd = false; }
};

TEST_F(NoTimerfd, CallsOfEveryKindWork) {
    auto server = echoServer();
    ASSERT_TRUE(server);
    Status err;
    auto client = Endpoint::open(loopback(), &err);
    ASSERT_TRUE(client) << err.toString();
    EXPECT_GE(gTimerfdRefused.load(), 2) << "the endpoints never asked for a timer: the test tests nothing";

    for (int i = 0; i < 50; ++i) {
        const auto request = bytesOf(static_cast<size_t>(1 + i * 997), static_cast<uint8_t>(i));
        Response r = client->call(server->address(), request);
        ASSERT_TRUE(r.status.isOk()) << r.status.toString();
        ASSERT_EQ(r.message.size(), request.size());
        EXPECT_TRUE(std::equal(request.begin(), request.end(), r.message.bytes().begin()));
    }
    // Calls now and then: the poll thread finds the loop free after a tick-long wait.
    for (int i = 0; i < 10; ++i) {
        ASSERT_TRUE(client->call(server->address(), bytesOf(64, 9)).status.isOk());
        std::this_thread::sleep_for(3ms);
    }
    std::atomic<int> done{0}, ok{0};
    std::promise<void> all;
    constexpr int kAsync = 200;
    for (int i = 0; i < kAsync; ++i) {
        client->callAsync(server->address(), bytesOf(64, static_cast<uint8_t>(i)), [&](Response r) {
            if (r.status.isOk()) ++ok;
            if (++done == kAsync) all.set_value();
        });
    }
    ASSERT_EQ(all.get_future().wait_for(20s), std::future_status::ready);
    EXPECT_EQ(ok.load(), kAsync);
    for (auto* ep : {client.get(), server.get()}) {
        const MetricsSnapshot m = ep->metrics();
        EXPECT_EQ(m.get("tick_timer_armed"), 0u);
        // (Counted when the poll thread's wait ran out with no tick coming: without a
        // timer every such wait is a tick.)
        EXPECT_EQ(m.get("poll_thread_late_takeovers"), 0u);
    }
}

// Without a timer, no thread blocks in the socket: a waiting loop owner wakes at every
// tick and runs the engine's timers itself.
TEST_F(NoTimerfd, ACallToNobodyTimesOut) {
    BlackHole hole;
    ASSERT_NE(hole.address().port, 0);
    EndpointOptions o = loopback();
    o.protocol.timeoutTicks = 30;
    auto client = Endpoint::open(o);
    ASSERT_TRUE(client);
    Response r = client->call(hole.address(), bytesOf(100, 1));
    EXPECT_EQ(r.status.code(), StatusCode::Timeout) << r.status.toString();
    EXPECT_EQ(client->metrics().get("blocking_receives"), 0u) << "blocked in the socket with no timer to end it";
}

// While the thread that owns the loop runs a long callback, the poll thread runs the
// engine's timers. With a tick timer it sleeps until the timer goes off; without one it
// looks at every tick, and the end of that wait is the tick (it once woke at every tick
// and ran nothing, so that a call timing out after 30 ticks waited for the owner to come
// back from its callback).
TEST_F(NoTimerfd, ThePollThreadRunsTheTicksWhileTheOwnerIsInACallback) {
    BlackHole hole, otherHole;
    ASSERT_NE(hole.address().port, 0);
    ASSERT_NE(otherHole.address().port, 0);
    auto server = echoServer();
    ASSERT_TRUE(server);
    Status err;
    EndpointOptions o = loopback();
    o.protocol.timeoutTicks = 30;
    auto client = Endpoint::open(o, &err);
    ASSERT_TRUE(client) << err.toString();

    // Thread A owns the loop, waiting for a call that only its own deadline ends.
    std::thread owner([&] {
        CallOptions co;
        co.timeout = std::chrono::milliseconds(3000);
        client->call(hole.address(), bytesOf(10, 2), co);
    });
    for (int w = 0; w < 1000 && client->metrics().get("calls_in_flight") == 0; ++w) std::this_thread::sleep_for(1ms);
    // Its loop runs this call's callback, which takes a while.
    std::promise<void> started;
    std::atomic<bool> callbackDone{false};
    client->callAsync(server->address(), bytesOf(10, 3), [&](Response) {
        started.set_value();
        std::this_thread::sleep_for(1500ms);
        callbackDone = true;
    });
    ASSERT_EQ(started.get_future().wait_for(10s), std::future_status::ready);

    Response r = client->call(otherHole.address(), bytesOf(10, 4));
    EXPECT_EQ(r.status.code(), StatusCode::Timeout) << r.status.toString();
    EXPECT_FALSE(callbackDone.load()) << "the call timed out only once the owner was back from its callback";
    EXPECT_GE(client->metrics().get("poll_thread_timer_runs"), 5u);
    owner.join();
    EXPECT_EQ(client->metrics().get("poll_thread_late_takeovers"), 0u);
}

}  // namespace
}  // namespace homa
