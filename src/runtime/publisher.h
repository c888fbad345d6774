// Publishes an endpoint's state to other processes: a unix-domain socket that answers
// one-line commands (what homa-metrics reads), and a Prometheus scrape endpoint over
// HTTP on 127.0.0.1. One background thread serves both, every connection at once, each
// without blocking: a client that is slow, stalls, or sends without end holds up nobody.
//
// Socket protocol: the client sends one command line, the publisher answers with text
// and closes the connection.
//   metrics            "# time_ns N" then "name value" lines (MetricsSnapshot::toText)
//   rpcs               the live RPCs (formatRpcs)
//   prometheus         the Prometheus text
//   trace on|off       turns time tracing on or off (process-wide)
//   trace dump PATH    writes the time trace to PATH
// Anything else gets a line starting "error: ".
//
// HTTP/1.0 and 1.1: GET (or HEAD) /metrics answers the Prometheus text; another path gets
// 404, another method 405, a malformed request 400, a request whose headers pass
// kMaxRequest bytes 431. One request per connection (Connection: close).
//
// Limits: a request (command line, or HTTP request line and headers) is at most
// kMaxRequest bytes and must arrive within kConnectionMs of the accept; the answer must
// then be read within kConnectionMs of being ready; at most kMaxConnections are open at
// once, the rest wait in the kernel's backlog. So the publisher's memory and descriptors stay bounded, and its end
// (destruction) waits at most for one answer being computed.
//
// Thread safety: construction and destruction from one thread; the callbacks run on the
// publisher's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "homa/status.h"

namespace homa::runtime {

class Publisher {
  public:
    struct Sources {
        std::function<std::string()> metricsText;  ///< with the "# time_ns" line
        std::function<std::string()> rpcsText;
        std::function<std::string()> prometheusText;
    };
    /// Starts serving on `socketPath` ("" = no socket) and on 127.0.0.1:`httpPort`
    /// (`httpEnabled`; port 0 picks a free one). nullptr with *error on failure.
    static std::unique_ptr<Publisher> start(const std::string& socketPath, bool httpEnabled, uint16_t httpPort,
                                            Sources sources, Status* error);
    ~Publisher();

    const std::string& socketPath() const { return socketPath_; }
    /// The HTTP port actually bound (0 if none).
    uint16_t httpPort() const { return httpPort_; }

    /// The answer to one command line (exposed for tests).
    std::string answer(const std::string& command);
    /// The whole HTTP response to a request whose headers are complete, or that passed
    /// kMaxRequest bytes without being so (`tooLong`) (exposed for tests).
    std::string httpAnswer(std::string_view request, bool tooLong);

    static constexpr size_t kMaxRequest = 8192;
    static constexpr int kConnectionMs = 2000;
    static constexpr size_t kMaxConnections = 32;
    static constexpr int kAcceptPauseMs = 100;  ///< after an accept failed for want of descriptors

  private:
    struct Connection;
    Publisher() = default;
    void run();
    /// Accepts one connection from `listenFd` (the HTTP socket if `http`) into `conns`.
    /// False if it failed for want of descriptors or memory.
    bool accept(int listenFd, bool http, std::vector<Connection>& conns);
    /// Reads what the client sent; false once the connection is to be closed.
    bool readFrom(Connection& c);
    /// Writes what is left of the answer; false once the connection is to be closed.
    bool writeTo(Connection& c);
    /// Binds the HTTP socket to 127.0.0.1:port. An empty string, or why it failed.
    std::string bindHttp(uint16_t port);

    Sources sources_;
    std::string socketPath_;
    uint16_t httpPort_ = 0;
    int unixFd_ = -1, httpFd_ = -1, stopFd_ = -1;
    std::thread thread_;
};

/// Expands "%p" (process id) and "%e" (the endpoint's port) in a path.
std::string expandPath(const std::string& pattern, uint16_t port);

}  // namespace homa::runtime
