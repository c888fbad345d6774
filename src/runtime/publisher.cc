#include "runtime/publisher.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "homa/trace.h"

namespace homa::runtime {

namespace {

constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

int64_t steadyMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
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
            // (Without blocking: a live publisher that does not accept, stopped or hung, with
            // its backlog full, would hold the connect, and open(), for ever. A full backlog
            // is a live socket.)
            int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            bool live = probe >= 0 && (::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 ||
                                       errno == EAGAIN || errno == EINPROGRESS);
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
        std::string why = p->bindHttp(httpPort);
        if (!why.empty()) return fail(why);
    }
    if (p->unixFd_ >= 0 || p->httpFd_ >= 0) {
        p->stopFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->stopFd_ < 0) return fail(errnoText("eventfd"));
        p->thread_ = std::thread([raw = p.get()] { raw->run(); });
        pthread_setname_np(p->thread_.native_handle(), "homa-metrics");
    }
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

std::string Publisher::bindHttp(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return errnoText("prometheus socket");
    // SO_REUSEADDR (a port just freed can be bound again) but not SO_REUSEPORT, with
    // which a second endpoint could bind the same port and take a share of the scrapes.
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 64) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        std::string why = errnoText("cannot bind 127.0.0.1:" + std::to_string(port) + " for prometheus");
        ::close(fd);
        return why;
    }
    httpFd_ = fd;
    httpPort_ = ntohs(a.sin_port);
    return {};
}

// A client connection: the request read so far, then the answer being written, then
// (HTTP) what the client still sends until it closes, read and dropped, so that closing
// with unread bytes does not reset the connection under the answer.
struct Publisher::Connection {
    int fd = -1;
    bool http = false;
    enum class State { Reading, Writing, Draining } state = State::Reading;
    std::string in;
    std::string out;
    size_t written = 0;
    size_t drained = 0;
    int64_t deadlineMs = 0;
};

void Publisher::run() {
    int64_t acceptPausedUntil = 0;
    std::vector<Connection> conns;
    conns.reserve(kMaxConnections);
    std::vector<pollfd> fds;
    while (true) {
        fds.clear();
        fds.push_back({stopFd_, POLLIN, 0});
        // Beyond kMaxConnections, new connections wait in the kernel's backlog; so they do
        // for a while after an accept failed for want of descriptors or memory (the
        // listening socket stays readable: polling it again at once would spin).
        int64_t now = steadyMs();
        const bool accepting = conns.size() < kMaxConnections && now >= acceptPausedUntil;
        fds.push_back({accepting ? unixFd_ : -1, POLLIN, 0});
        fds.push_back({accepting ? httpFd_ : -1, POLLIN, 0});
        int64_t wait = now < acceptPausedUntil ? acceptPausedUntil - now : -1;
        for (const Connection& c : conns) {
            fds.push_back({c.fd, static_cast<short>(c.state == Connection::State::Writing ? POLLOUT : POLLIN), 0});
            const int64_t left = std::max<int64_t>(0, c.deadlineMs - now);
            if (wait < 0 || left < wait) wait = left;
        }
        int n = ::poll(fds.data(), fds.size(), static_cast<int>(wait));
        if (n < 0 && errno != EINTR) break;
        if (n > 0 && fds[0].revents != 0) break;
        now = steadyMs();
        // Connections first: those accepted below have no poll entry yet.
        size_t kept = 0;
        for (size_t i = 0; i < conns.size(); ++i) {
            Connection& c = conns[i];
            const short ev = n > 0 ? fds[3 + i].revents : 0;
            bool open = now < c.deadlineMs;
            if (open && ev != 0) open = c.state == Connection::State::Writing ? writeTo(c) : readFrom(c);
            if (open) {
                if (kept != i) conns[kept] = std::move(c);
                ++kept;
            } else {
                ::close(c.fd);
            }
        }
        conns.resize(kept);
        for (int k : {1, 2}) {
            if (n <= 0 || !(fds[k].revents & POLLIN) || conns.size() >= kMaxConnections) continue;
            if (!accept(k == 1 ? unixFd_ : httpFd_, k == 2, conns)) acceptPausedUntil = now + kAcceptPauseMs;
        }
    }
    for (Connection& c : conns) ::close(c.fd);
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

std::string Publisher::httpAnswer(std::string_view request, bool tooLong) {
    auto reply = [](int status, std::string_view reason, std::string_view type, const std::string& body,
                    bool withBody, std::string_view extra = {}) {
        std::string r = "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\n";
        r += "Content-Type: " + std::string(type) + "\r\n";
        r += extra;
        r += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
        if (withBody) r += body;
        return r;
    };
    auto bad = [&] { return reply(400, "Bad Request", "text/plain", "bad request\n", true); };
    if (tooLong) return reply(431, "Request Header Fields Too Large", "text/plain", "request too long\n", true);
    // The request line: METHOD SP TARGET SP HTTP/1.x, ended by CRLF (or a bare LF).
    std::string_view line = request.substr(0, request.find('\n'));
    if (line.ends_with('\r')) line.remove_suffix(1);
    const size_t sp1 = line.find(' ');
    const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) return bad();
    const std::string_view method = line.substr(0, sp1);
    const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const std::string_view version = line.substr(sp2 + 1);
    if (version != "HTTP/1.1" && version != "HTTP/1.0") return bad();
    if (target.empty() || target.front() != '/') return bad();
    const bool head = method == "HEAD";
    if (method != "GET" && !head) {
        static constexpr std::string_view kOthers[] = {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"};
        if (std::find(std::begin(kOthers), std::end(kOthers), method) == std::end(kOthers)) return bad();
        return reply(405, "Method Not Allowed", "text/plain", "only GET\n", true, "Allow: GET, HEAD\r\n");
    }
    if (target.substr(0, target.find('?')) != "/metrics")
        return reply(404, "Not Found", "text/plain", "try /metrics\n", !head);
    return reply(200, "OK", kPrometheusContentType, sources_.prometheusText(), !head);
}

bool Publisher::accept(int listenFd, bool http, std::vector<Connection>& conns) {
    int fd = ::accept4(listenFd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return errno != EMFILE && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM;
    Connection c;
    c.fd = fd;
    c.http = http;
    c.deadlineMs = steadyMs() + kConnectionMs;
    conns.push_back(std::move(c));
    return true;
}

bool Publisher::readFrom(Connection& c) {
    char buf[4096];
    while (true) {
        ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
        if (c.state == Connection::State::Draining) {
            // Closed by the client once it has the answer; or it goes on sending more
            // than a request's worth, and is cut off.
            c.drained += static_cast<size_t>(n);
            if (n == 0 || c.drained > kMaxRequest) return false;
            continue;
        }
        const bool ended = n == 0;
        const size_t room = kMaxRequest - c.in.size();
        c.in.append(buf, std::min(static_cast<size_t>(n), room));
        bool complete, tooLong = false;
        if (c.http) {
            complete = c.in.find("\r\n\r\n") != std::string::npos || c.in.find("\n\n") != std::string::npos;
            tooLong = !complete && c.in.size() >= kMaxRequest;
            if (ended && !complete && !tooLong) return false;  // closed mid-request: nobody to answer
        } else {
            complete = ended || c.in.find('\n') != std::string::npos;
            tooLong = !complete && c.in.size() >= kMaxRequest;
        }
        if (!complete && !tooLong) continue;
        if (c.http) {
            c.out = httpAnswer(c.in, tooLong);
        } else if (tooLong) {
            c.out = "error: command too long\n";
        } else {
            c.out = answer(c.in.substr(0, c.in.find('\n')));
        }
        c.in.clear();
        c.in.shrink_to_fit();
        c.state = Connection::State::Writing;
        // The answer gets a whole connection's time of its own to be read in, however long
        // the request and the answer's making took: a unix-socket answer has no length, and
        // one cut short would be taken as whole.
        c.deadlineMs = steadyMs() + kConnectionMs;
        if (ended) ::shutdown(c.fd, SHUT_RD);
        return writeTo(c);
    }
}

bool Publisher::writeTo(Connection& c) {
    while (c.written < c.out.size()) {
        ssize_t n = ::send(c.fd, c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
        c.written += static_cast<size_t>(n);
    }
    // All written: the end of the answer is the end of the stream. What the client may
    // still send (an HTTP body, the rest of an overlong request) is read and dropped
    // until it closes, up to another kMaxRequest bytes and until the connection's time is
    // up.
    ::shutdown(c.fd, SHUT_WR);
    c.out.clear();
    c.out.shrink_to_fit();
    c.state = Connection::State::Draining;
    return readFrom(c);
}

}  // namespace homa::runtime
