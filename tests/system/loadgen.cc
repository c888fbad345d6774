// Test load generator for the system tests (separate processes, real sockets).
//
//   loadgen server ADDRESS:PORT [--threads N] [--service-us N] [--max-pending N]
//       [--seen-id-window N]
//       Answers each request with a response whose length is in the request; remembers
//       every request token and counts any token seen twice (an RPC executed twice).
//       On SIGTERM/SIGINT prints "served N duplicates N dropped_overload N" and exits
//       (status 3 if there were duplicates).
//   loadgen client SERVER:PORT [--workload w1..w5|BYTES] [--count N] [--concurrency N]
//       [--seed N] [--timeout-ms N]
//       Runs COUNT RPCs, CONCURRENCY at a time, sizes from the workload (capped at
//       1,000,000), checks every response byte, prints
//       "completed N failed N wrong N twice N" and exits 0 only if all completed
//       correctly and exactly once.
// Environment: NO_GRO=1 / NO_GSO=1 turn UDP receive/segmentation offload off (to test the
// fallbacks); HOMA_TEST_TIMEOUT_TICKS sets the protocol timeout (sanitizer builds).
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_set>

#include "homa/endpoint.h"
#include "workload/workload.h"

namespace {

volatile std::sig_atomic_t stopFlag = 0;

uint64_t get64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
    return v;
}
void put64(uint8_t* p, uint64_t v) {
    for (int i = 7; i >= 0; --i) {
        p[i] = static_cast<uint8_t>(v);
        v >>= 8;
    }
}
uint8_t fill(uint64_t token, size_t i) { return static_cast<uint8_t>((token * 2654435761u) >> 7 ^ i * 131); }

// Request: token (8) + response length (8) + filler. Response: token (8) + filler.
std::vector<uint8_t> makeRequest(uint64_t token, uint32_t length, uint32_t responseLength) {
    std::vector<uint8_t> v(std::max<uint32_t>(length, 16));
    put64(v.data(), token);
    put64(v.data() + 8, std::max<uint32_t>(responseLength, 8));
    for (size_t i = 16; i < v.size(); ++i) v[i] = fill(token, i);
    return v;
}

long arg(int argc, char** argv, const char* name, long def) {
    for (int i = 0; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return std::atol(argv[i + 1]);
    return def;
}
std::string sarg(int argc, char** argv, const char* name, const char* def) {
    for (int i = 0; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
    return def;
}

// Sanitizer builds run many times slower on shared machines: HOMA_TEST_TIMEOUT_TICKS
// lets their CI runs give peers longer before an RPC is declared dead.
void applyTestTimeout(homa::EndpointOptions& o) {
    if (std::getenv("NO_GRO")) o.gro = false;
    if (std::getenv("NO_GSO")) o.gso = false;
    if (const char* t = std::getenv("HOMA_TEST_TIMEOUT_TICKS")) o.protocol.timeoutTicks = std::atoi(t);
}

int server(const homa::Address& address, int argc, char** argv) {
    homa::EndpointOptions o;
    o.address = address;
    applyTestTimeout(o);
    long pending = arg(argc, argv, "--max-pending", 0);
    if (pending > 0) o.protocol.maxPendingRequests = static_cast<uint32_t>(pending);
    long window = arg(argc, argv, "--seen-id-window", 0);
    if (window > 0) o.protocol.seenIdWindow = static_cast<uint32_t>(window);
    homa::Status err;
    auto ep = homa::Endpoint::open(o, &err);
    if (!ep) {
        std::fprintf(stderr, "loadgen server: %s\n", err.toString().c_str());
        return 1;
    }
    long serviceUs = arg(argc, argv, "--service-us", 0);
    std::mutex mu;
    std::unordered_set<uint64_t> seen;
    std::atomic<uint64_t> served{0}, duplicates{0};
    ep->serve(
        [&](homa::ServerRequest req) {
            const homa::Message& m = req.message();
            if (m.size() < 16) return;  // not ours: drop
            uint64_t token = get64(m.data());
            uint64_t respLen = std::min<uint64_t>(get64(m.data() + 8), 1'000'000);
            {
                std::lock_guard g(mu);
                if (!seen.insert(token).second) ++duplicates;
            }
            if (serviceUs > 0) {  // busy: the server's processing budget
                auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(serviceUs);
                while (std::chrono::steady_clock::now() < until) {
                }
            }
            std::vector<uint8_t> resp(respLen);
            put64(resp.data(), token);
            for (size_t i = 8; i < resp.size(); ++i) resp[i] = fill(token ^ 0xabcdef, i);
            req.respond(resp);
            ++served;
        },
        static_cast<int>(arg(argc, argv, "--threads", 1)));
    std::printf("listening %s\n", ep->address().toString().c_str());
    std::fflush(stdout);
    std::signal(SIGTERM, [](int) { stopFlag = 1; });
    std::signal(SIGINT, [](int) { stopFlag = 1; });
    while (!stopFlag) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto m = ep->metrics();
    ep->shutdown();
    if (arg(argc, argv, "--print-metrics", 0))
        for (const auto& [name, value] : m.counters)
            if (value) std::printf("  %s %lu\n", name.c_str(), static_cast<unsigned long>(value));
    std::printf("served %lu duplicates %lu dropped_overload %lu dropped_malformed %lu\n",
                static_cast<unsigned long>(served.load()), static_cast<unsigned long>(duplicates.load()),
                static_cast<unsigned long>(m.get("dropped_overload")),
                static_cast<unsigned long>(m.get("dropped_malformed")));
    return duplicates.load() ? 3 : 0;
}

int client(const homa::Address& server, int argc, char** argv) {
    std::string wl = sarg(argc, argv, "--workload", "w3");
    std::string error;
    std::optional<homa::workload::Distribution> dist;
    if (!wl.empty() && std::isdigit(static_cast<unsigned char>(wl[0]))) {
        dist = homa::workload::Distribution::fixed(static_cast<uint32_t>(std::atol(wl.c_str())));
    } else {
        dist = homa::workload::Distribution::named(wl, &error);
    }
    if (!dist) {
        std::fprintf(stderr, "loadgen client: %s\n", error.c_str());
        return 2;
    }
    auto sizes = dist->capped(1'000'000);
    long count = arg(argc, argv, "--count", 1000);
    long concurrency = arg(argc, argv, "--concurrency", 16);
    long timeoutMs = arg(argc, argv, "--timeout-ms", 0);
    uint64_t seed = static_cast<uint64_t>(arg(argc, argv, "--seed", 1));
    std::printf("seed %lu workload %s%s\n", static_cast<unsigned long>(seed), wl.c_str(),
                sizes.isCapped() ? " (capped at 1000000 bytes)" : "");
    homa::Status err;
    homa::EndpointOptions co;
    applyTestTimeout(co);
    auto ep = homa::Endpoint::open(co, &err);
    if (!ep) {
        std::fprintf(stderr, "loadgen client: %s\n", err.toString().c_str());
        return 1;
    }
    std::mt19937_64 rng(seed);
    std::mutex mu;
    std::condition_variable cv;
    long inFlight = 0, started = 0;
    std::atomic<long> completed{0}, failed{0}, wrong{0}, twice{0};
    std::set<uint64_t> done;
    std::string firstError;
    uint64_t tokenBase = seed << 32;
    while (true) {
        std::unique_lock lk(mu);
        cv.wait(lk, [&] { return inFlight < concurrency; });
        if (started == count) {
            cv.wait(lk, [&] { return inFlight == 0; });
            break;
        }
        uint64_t token = tokenBase + static_cast<uint64_t>(started++);
        uint32_t reqLen = sizes.sample(rng), respLen = sizes.sample(rng);
        ++inFlight;
        lk.unlock();
        auto req = makeRequest(token, reqLen, respLen);
        homa::CallOptions co;
        co.timeout = std::chrono::milliseconds(timeoutMs);
        ep->callAsync(
            server, req,
            [&, token, respLen](homa::Response r) {
                std::lock_guard g(mu);
                if (!done.insert(token).second) ++twice;
                if (!r.status.isOk()) {
                    ++failed;
                    if (firstError.empty()) firstError = r.status.toString();
                } else {
                    bool ok = r.message.size() == std::max<uint32_t>(respLen, 8) && get64(r.message.data()) == token;
                    for (size_t i = 8; ok && i < r.message.size(); ++i) ok = r.message.data()[i] == fill(token ^ 0xabcdef, i);
                    (ok ? completed : wrong)++;
                }
                --inFlight;
                cv.notify_all();
            },
            co);
    }
    std::printf("completed %ld failed %ld wrong %ld twice %ld\n", completed.load(), failed.load(), wrong.load(),
                twice.load());
    if (!firstError.empty()) {
        std::printf("first error: %s\n", firstError.c_str());
        std::printf("client counters (non-zero):\n");
        for (const auto& [name, value] : ep->metrics().counters)
            if (value) std::printf("  %s %lu\n", name.c_str(), static_cast<unsigned long>(value));
    }
    return completed == count && twice == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: loadgen server|client ADDRESS:PORT [options]\n");
        return 2;
    }
    auto address = homa::Address::parse(argv[2]);
    if (!address) {
        std::fprintf(stderr, "loadgen: bad address %s\n", argv[2]);
        return 2;
    }
    std::string role = argv[1];
    if (role == "server") return server(*address, argc, argv);
    if (role == "client") return client(*address, argc, argv);
    std::fprintf(stderr, "loadgen: unknown role %s\n", role.c_str());
    return 2;
}
