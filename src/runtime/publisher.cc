#include "runtime/publisher.h"

#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>

#include "homa/trace.h"

namespace homa::runtime {

namespace {

constexpr size_t kMaxRequest = 8192;
constexpr int kIoTimeoutMs = 1000;
constexpr size_t kHttpWorkers = 2;
constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

void setTimeouts(int fd) {
    timeval tv{kIoTimeoutMs / 1000, (kIoTimeoutMs % 1000) * 1000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

void writeAll(int fd, const std::string& s) {
    size_t done = 0;
    while (done < s.size()) {
        ssize_t n = ::send(fd, s.data() + done, s.size() - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;  // the reader went away or stalled: give up on it
        done += static_cast<size_t>(n);
    }
}

// Reads until `terminator` is seen, the peer closes, kMaxRequest bytes, or the timeout.
std::string readRequest(int fd, std::string_view terminator) {
    std::string s;
    char buf[1024];
    while (s.size() < kMaxRequest && s.find(terminator) == std::string::npos) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        s.append(buf, static_cast<size_t>(n));
    }
    return s;
}

std::string errnoText(const std::string& what) { return what + ": " + std::strerror(errno); }

}  // namespace

std::string expandPath(const std::string& pattern, uint16_t port) {
    std::string out;
    for (size_t i = 0; i < pattern.size(); ++i) {
        if (pattern[i] == '%' && i + 1 < pattern.size()) {
            char c = pattern[i + 1];
            if (c == 'p') {
                out += std::to_string(::getpid());
                ++i;
                continue;
            }
            if (c == 'e') {
                out += std::to_string(port);
                ++i;
                continue;
            }
        }
        out += pattern[i];
    }
    return out;
}

std::unique_ptr<Publisher> Publisher::start(const std::string& socketPath, bool httpEnabled, uint16_t httpPort,
                                            Sources sources, Status* error) {
    std::unique_ptr<Publisher> p(new Publisher());
    p->sources_ = std::move(sources);
    auto fail = [&](const std::string& why) {
        if (error) *error = Status(StatusCode::InvalidArgument, why);
        return nullptr;
    };
    if (!socketPath.empty()) {
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        if (socketPath.size() >= sizeof(addr.sun_path))
            return fail("metrics socket path is longer than " + std::to_string(sizeof(addr.sun_path) - 1) +
                        " bytes: " + socketPath);
        std::memcpy(addr.sun_path, socketPath.c_str(), socketPath.size() + 1);
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return fail(errnoText("metrics socket"));
        p->unixFd_ = fd;
        // A socket file left by a process that died is replaced; a live one is not.
        struct stat st;
        if (::lstat(socketPath.c_str(), &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) return fail("metrics socket path exists and is not a socket: " + socketPath);
            int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            bool live = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
            if (probe >= 0) ::close(probe);
            if (live) return fail("metrics socket " + socketPath + " is in use by another process");
            ::unlink(socketPath.c_str());
        }
        if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
            return fail(errnoText("cannot bind metrics socket " + socketPath));
        p->socketPath_ = socketPath;
        if (::listen(fd, 16) != 0) return fail(errnoText("listen on " + socketPath));
    }
    if (p->unixFd_ >= 0) {
        p->stopFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->stopFd_ < 0) return fail(errnoText("eventfd"));
    }
    if (httpEnabled) {
        std::string why = p->bindHttp(httpPort);
        if (!why.empty()) return fail(why);
    }
    if (p->unixFd_ >= 0) {
        p->thread_ = std::thread([raw = p.get()] { raw->run(); });
        pthread_setname_np(p->thread_.native_handle(), "homa-metrics");
    }
    if (p->http_) {
        p->httpThread_ = std::thread([raw = p.get()] {
            // The library writes with plain send(): a scraper that goes away mid-answer
            // would raise SIGPIPE. It is blocked in this thread, which starts the worker
            // pool, so the workers inherit the mask and such a write just fails (EPIPE).
            sigset_t pipe;
            sigemptyset(&pipe);
            sigaddset(&pipe, SIGPIPE);
            pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
            raw->http_->listen_after_bind();
            raw->httpDone_ = true;
        });
        pthread_setname_np(p->httpThread_.native_handle(), "homa-http");
    }
    return p;
}

Publisher::~Publisher() {
    stopHttp();
    if (thread_.joinable()) {
        uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(stopFd_, &one, sizeof(one));
        thread_.join();
    }
    if (unixFd_ >= 0) ::close(unixFd_);
    if (stopFd_ >= 0) ::close(stopFd_);
    if (!socketPath_.empty()) ::unlink(socketPath_.c_str());
}

std::string Publisher::bindHttp(uint16_t port) {
    // httplib::Server's constructor sets SIGPIPE to SIG_IGN for the whole process. The
    // endpoint must not change how its program handles signals, so the disposition is put
    // back (the server's own threads block SIGPIPE instead, see start()). The lock keeps
    // endpoints opened at once on several threads from saving one another's SIG_IGN.
    {
        static std::mutex sigpipeMu;
        std::lock_guard lk(sigpipeMu);
        struct sigaction saved {};
        ::sigaction(SIGPIPE, nullptr, &saved);
        http_ = std::make_unique<httplib::Server>();
        ::sigaction(SIGPIPE, &saved, nullptr);
    }
    httplib::Server& s = *http_;
    s.new_task_queue = [] { return new httplib::ThreadPool(kHttpWorkers); };
    // One request per connection and short timeouts: a stalled client holds a worker, and
    // delays shutdown, for a second or two at most.
    s.set_keep_alive_max_count(1);
    s.set_keep_alive_timeout(1);
    s.set_read_timeout(std::chrono::milliseconds(kIoTimeoutMs));
    s.set_write_timeout(std::chrono::milliseconds(kIoTimeoutMs));
    s.set_payload_max_length(kMaxRequest);
    // The library's default sets SO_REUSEPORT, with which a second endpoint could bind the
    // same port and take a share of its scrapes. SO_REUSEADDR only, as for any server.
    // (This applies to the listening socket only; the library accepts connections with
    // plain accept(), so those are not close-on-exec.)
    s.set_socket_options([](int fd) {
        int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    });
    // Methods are checked before paths, and before any request body is read.
    s.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
        if (req.method == "GET" || req.method == "HEAD") return httplib::Server::HandlerResponse::Unhandled;
        res.status = 405;
        res.set_header("Allow", "GET, HEAD");
        res.set_content("only GET\n", "text/plain");
        return httplib::Server::HandlerResponse::Handled;
    });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(sources_.prometheusText(), kPrometheusContentType);
    });
    s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
        if (!res.body.empty()) return;
        if (res.status == 404) res.set_content("try /metrics\n", "text/plain");
        if (res.status == 400) res.set_content("bad request\n", "text/plain");
    });
    errno = 0;
    bool bound;
    if (port == 0) {
        int any = s.bind_to_any_port("127.0.0.1");
        bound = any > 0;
        if (bound) port = static_cast<uint16_t>(any);
    } else {
        bound = s.bind_to_port("127.0.0.1", port);
    }
    if (!bound) {
        std::string why = "cannot bind 127.0.0.1:" + std::to_string(port) + " for prometheus";
        if (errno != 0) why += std::string(": ") + std::strerror(errno);
        http_.reset();
        return why;
    }
    httpPort_ = port;
    return {};
}

void Publisher::stopHttp() {
    if (!httpThread_.joinable()) return;
    // stop() only acts once the listening loop is running: wait for that (or for the loop
    // to have ended by itself). Requests in progress finish (within the timeouts), then
    // the workers are joined.
    while (!http_->is_running() && !httpDone_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!httpDone_) http_->stop();
    httpThread_.join();
}

void Publisher::run() {
    while (true) {
        pollfd fds[2] = {{stopFd_, POLLIN, 0}, {unixFd_, POLLIN, 0}};
        int n = ::poll(fds, 2, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (fds[0].revents) return;
        if (fds[1].revents & POLLIN) {
            int c = ::accept4(unixFd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c >= 0) {
                serveUnix(c);
                ::close(c);
            }
        }
    }
}

std::string Publisher::answer(const std::string& command) {
    std::string cmd = command;
    while (!cmd.empty() && (cmd.back() == '\n' || cmd.back() == '\r' || cmd.back() == ' ')) cmd.pop_back();
    if (cmd == "metrics") return sources_.metricsText();
    if (cmd == "rpcs") return sources_.rpcsText();
    if (cmd == "prometheus") return sources_.prometheusText();
    if (cmd == "trace on") {
        trace::enable(true);
        return "tracing on\n";
    }
    if (cmd == "trace off") {
        trace::enable(false);
        return "tracing off\n";
    }
    if (cmd.starts_with("trace dump ")) {
        std::string path = cmd.substr(11);
        if (path.empty()) return "error: trace dump needs a path\n";
        std::string error;
        if (!trace::dump(path, &error)) return "error: " + error + "\n";
        return "trace written to " + path + "\n";
    }
    std::string shown = cmd.substr(0, 80);
    for (char& ch : shown)
        if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) > 0x7e) ch = '?';
    return "error: unknown command '" + shown +
           "' (metrics, rpcs, prometheus, trace on, trace off, trace dump PATH)\n";
}

void Publisher::serveUnix(int fd) {
    setTimeouts(fd);
    std::string req = readRequest(fd, "\n");
    size_t eol = req.find('\n');
    if (eol == std::string::npos && req.size() >= kMaxRequest) {
        writeAll(fd, "error: command too long\n");
        return;
    }
    writeAll(fd, answer(req.substr(0, eol)));
}

}  // namespace homa::runtime
