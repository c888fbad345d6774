#include "runtime/publisher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "homa/trace.h"

namespace homa::runtime {

namespace {

constexpr size_t kMaxRequest = 8192;
constexpr int kIoTimeoutMs = 1000;

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
    if (httpEnabled) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return fail(errnoText("prometheus socket"));
        p->httpFd_ = fd;
        int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(httpPort);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
            return fail(errnoText("cannot bind 127.0.0.1:" + std::to_string(httpPort) + " for prometheus"));
        if (::listen(fd, 16) != 0) return fail(errnoText("listen for prometheus"));
        socklen_t len = sizeof(a);
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
        p->httpPort_ = ntohs(a.sin_port);
    }
    p->stopFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->stopFd_ < 0) return fail(errnoText("eventfd"));
    p->thread_ = std::thread([raw = p.get()] { raw->run(); });
    return p;
}

Publisher::~Publisher() {
    if (thread_.joinable()) {
        uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(stopFd_, &one, sizeof(one));
        thread_.join();
    }
    if (unixFd_ >= 0) ::close(unixFd_);
    if (httpFd_ >= 0) ::close(httpFd_);
    if (stopFd_ >= 0) ::close(stopFd_);
    if (!socketPath_.empty()) ::unlink(socketPath_.c_str());
}

void Publisher::run() {
    while (true) {
        pollfd fds[3] = {{stopFd_, POLLIN, 0}, {unixFd_, POLLIN, 0}, {httpFd_, POLLIN, 0}};
        int n = ::poll(fds, 3, -1);
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
        if (fds[2].revents & POLLIN) {
            int c = ::accept4(httpFd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c >= 0) {
                serveHttp(c);
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

void Publisher::serveHttp(int fd) {
    setTimeouts(fd);
    std::string req = readRequest(fd, "\r\n\r\n");
    size_t eol = req.find("\r\n");
    std::string line = req.substr(0, eol);
    auto reply = [&](const char* status, const std::string& type, const std::string& body) {
        writeAll(fd, std::string("HTTP/1.0 ") + status + "\r\nContent-Type: " + type +
                         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
    };
    size_t sp1 = line.find(' ');
    size_t sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string::npos || !line.substr(sp2 + 1).starts_with("HTTP/")) {
        reply("400 Bad Request", "text/plain", "bad request\n");
        return;
    }
    std::string method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    if (method != "GET") {
        reply("405 Method Not Allowed", "text/plain", "only GET\n");
        return;
    }
    if (target != "/metrics") {
        reply("404 Not Found", "text/plain", "try /metrics\n");
        return;
    }
    reply("200 OK", "text/plain; version=0.0.4", sources_.prometheusText());
}

}  // namespace homa::runtime
