// The time-trace recorder: per-thread rings, calibration, dumps.
#include "homa/trace.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <vector>

namespace homa::trace {

int64_t monotonicRawNs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

namespace {

// One (counter, clock) pair taken at start-up: calibration measures the counter's rate
// over everything since, so it needs no sleep and improves as the process runs.
struct Origin {
    uint64_t tsc;
    int64_t rawNs;
};
Origin takeOrigin() {
    int64_t a = monotonicRawNs();
    uint64_t t = readClock();
    int64_t b = monotonicRawNs();
    return {t, a + (b - a) / 2};
}
const Origin gOrigin = takeOrigin();

// Rings are never freed: a thread that exits leaves its ring for the next new thread,
// and dumps still show its records. The registry itself is never destroyed, so threads
// and atexit handlers may use it during shutdown.
struct Registry {
    std::mutex mu;
    std::vector<std::unique_ptr<detail::Ring>> rings;
    std::vector<detail::Ring*> unused;
    std::string processName;
    std::string exitPath;
    bool atexitRegistered = false;
};
Registry& registry() {
    static Registry* r = new Registry();
    return *r;
}

// Gives the ring back when its thread exits.
struct ThreadRelease {
    detail::Ring* ring = nullptr;
    ~ThreadRelease() {
        if (!ring) return;
        Registry& reg = registry();
        std::lock_guard lk(reg.mu);
        reg.unused.push_back(ring);
        detail::tRing = nullptr;
    }
};
thread_local ThreadRelease tRelease;

std::string defaultProcessName() {
    std::string name = "process";
    std::ifstream comm("/proc/self/comm");
    if (comm) std::getline(comm, name);
    return name + "." + std::to_string(::getpid());
}

void dumpAtExitHandler() {
    Registry& reg = registry();
    std::string path;
    {
        std::lock_guard lk(reg.mu);
        path = reg.exitPath;
    }
    if (path.empty()) return;
    std::string error;
    if (!dump(path, &error)) std::fprintf(stderr, "homa: time trace not written: %s\n", error.c_str());
}

// HOMA_TRACE_FILE=path: trace from start-up and dump there at exit ("%p": the pid).
struct EnvSetup {
    EnvSetup() {
        const char* path = std::getenv("HOMA_TRACE_FILE");
        if (path && *path) {
            std::string p = path;
            for (size_t at; (at = p.find("%p")) != std::string::npos;) p.replace(at, 2, std::to_string(::getpid()));
            dumpAtExit(p);
            enable(true);
        }
    }
} gEnvSetup;

}  // namespace

detail::Ring* detail::attachThread() {
    Registry& reg = registry();
    std::lock_guard lk(reg.mu);
    Ring* ring;
    if (!reg.unused.empty()) {
        ring = reg.unused.back();
        reg.unused.pop_back();
    } else {
        reg.rings.push_back(std::make_unique<Ring>());
        ring = reg.rings.back().get();
        ring->index = static_cast<uint32_t>(reg.rings.size() - 1);
    }
    tRing = ring;
    tRelease.ring = ring;
    return ring;
}

void enable(bool on) {
    if (on) {
        detail::gEnabled.fetch_or(detail::kSwitchedOn, std::memory_order_relaxed);
    } else {
        detail::gEnabled.fetch_and(static_cast<uint8_t>(~detail::kSwitchedOn), std::memory_order_relaxed);
    }
}

double cyclesPerNs() {
#if defined(__x86_64__) || defined(__i386__)
    // At least 10 ms of baseline: only the first call in a process's first 10 ms waits.
    int64_t rawNs;
    uint64_t tsc;
    do {
        int64_t a = monotonicRawNs();
        tsc = readClock();
        int64_t b = monotonicRawNs();
        rawNs = a + (b - a) / 2;
    } while (rawNs - gOrigin.rawNs < 10'000'000);
    return static_cast<double>(tsc - gOrigin.tsc) / static_cast<double>(rawNs - gOrigin.rawNs);
#else
    return 1.0;
#endif
}

int64_t toMonotonicRawNs(uint64_t tsc) {
    double perNs = cyclesPerNs();
    double delta = static_cast<double>(static_cast<int64_t>(tsc - gOrigin.tsc));
    return gOrigin.rawNs + static_cast<int64_t>(delta / perNs);
}

std::string formatMessage(const char* format, const uint64_t* args, int nargs) {
    std::string out;
    if (!format) return out;
    int used = 0;
    char buf[32];
    for (const char* p = format; *p; ++p) {
        if (*p != '%') {
            out += *p;
            continue;
        }
        const char* q = p + 1;
        if (*q == '%') {
            out += '%';
            p = q;
            continue;
        }
        while (*q == 'l' || *q == 'z' || *q == 'j') ++q;
        char conv = *q;
        if (conv != 'u' && conv != 'd' && conv != 'i' && conv != 'x') {
            out += '%';  // not ours: shown as written
            continue;
        }
        uint64_t v = used < nargs ? args[used] : 0;
        ++used;
        if (conv == 'x') {
            std::snprintf(buf, sizeof(buf), "%" PRIx64, v);
        } else if (conv == 'u') {
            std::snprintf(buf, sizeof(buf), "%" PRIu64, v);
        } else {
            std::snprintf(buf, sizeof(buf), "%" PRId64, static_cast<int64_t>(v));
        }
        out += buf;
        p = q;
    }
    return out;
}

std::string dumpToString() {
    struct Item {
        uint64_t tsc;
        uint32_t ring;
        const char* format;
        uint64_t args[kMaxArgs];
    };
    // Recording is held off while the rings are copied, apart from the on/off switch:
    // a switch thrown meanwhile (by another thread, or a FREEZE) stands. One dump at a
    // time holds it.
    static std::mutex dumpMu;
    std::unique_lock dumping(dumpMu);
    detail::gEnabled.fetch_or(detail::kDumping, std::memory_order_relaxed);
    std::vector<Item> items;
    std::string processName;
    {
        Registry& reg = registry();
        std::lock_guard lk(reg.mu);
        processName = reg.processName.empty() ? defaultProcessName() : reg.processName;
        for (const auto& ring : reg.rings) {
            uint64_t n = ring->next.load(std::memory_order_acquire);
            uint64_t first = n > kRecordsPerThread ? n - kRecordsPerThread : 0;
            for (uint64_t i = first; i < n; ++i) {
                const Record& r = ring->records[i & (kRecordsPerThread - 1)];
                Item it;
                it.format = r.format.load(std::memory_order_relaxed);
                if (!it.format) continue;
                it.tsc = r.tsc.load(std::memory_order_relaxed);
                it.ring = ring->index;
                for (int a = 0; a < kMaxArgs; ++a) it.args[a] = r.args[a].load(std::memory_order_relaxed);
                items.push_back(it);
            }
        }
    }
    detail::gEnabled.fetch_and(static_cast<uint8_t>(~detail::kDumping), std::memory_order_relaxed);
    dumping.unlock();
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.tsc < b.tsc; });

    double perNs = cyclesPerNs();
    uint64_t base = items.empty() ? readClock() : items.front().tsc;
    std::string s;
    char line[160];
    s += "# homa-trace 1\n";
    s += "# process " + processName + "\n";
    std::snprintf(line, sizeof(line), "# cycles_per_ns %.6f\n", perNs);
    s += line;
    std::snprintf(line, sizeof(line), "# base_ns %" PRId64 "\n", toMonotonicRawNs(base));
    s += line;
    std::snprintf(line, sizeof(line), "# records %zu\n", items.size());
    s += line;
    double prevUs = 0;
    for (const Item& it : items) {
        double us = static_cast<double>(it.tsc - base) / perNs / 1000.0;
        std::snprintf(line, sizeof(line), "%12.3f us (+%9.3f us) [t%02u] ", us, us - prevUs, it.ring);
        prevUs = us;
        s += line;
        s += formatMessage(it.format, it.args);
        s += '\n';
    }
    return s;
}

bool dump(const std::string& path, std::string* error) {
    std::string text = dumpToString();
    // Written under a temporary name and renamed: whoever waits for the file (a test, a
    // script collecting traces) never reads half of it. The name is this dump's own (two
    // dumps to one path at once each rename a whole file), and whatever was left under
    // it (a file, a symlink, a FIFO whose open would block for want of a reader) is
    // replaced by a new regular file, created exclusively: the dump never blocks on it
    // and never writes through a link.
    static std::atomic<uint64_t> dumps{0};
    const std::string partial = path + ".partial." + std::to_string(::getpid()) + "." + std::to_string(dumps++);
    ::unlink(partial.c_str());
    const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        if (error) *error = "cannot write " + partial + ": " + std::strerror(errno);
        return false;
    }
    bool ok = true;
    for (size_t done = 0; ok && done < text.size();) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0;
        if (ok) done += static_cast<size_t>(n);
    }
    ok = (::close(fd) == 0) && ok;
    if (ok && std::rename(partial.c_str(), path.c_str()) != 0) {
        if (error) *error = "cannot rename " + partial + " to " + path + ": " + std::strerror(errno);
        std::remove(partial.c_str());
        return false;
    }
    if (!ok) {
        if (error) *error = "error writing " + partial;
        std::remove(partial.c_str());
    }
    return ok;
}

void clear() {
    Registry& reg = registry();
    std::lock_guard lk(reg.mu);
    for (auto& ring : reg.rings)
        for (auto& r : ring->records) r.format.store(nullptr, std::memory_order_relaxed);
}

void setProcessName(const std::string& name) {
    Registry& reg = registry();
    std::lock_guard lk(reg.mu);
    reg.processName = name;
}

void dumpAtExit(const std::string& path) {
    Registry& reg = registry();
    std::lock_guard lk(reg.mu);
    reg.exitPath = path;
    if (!reg.atexitRegistered) {
        reg.atexitRegistered = true;
        std::atexit(dumpAtExitHandler);
    }
}

}  // namespace homa::trace
