// Publishes an endpoint's state to other processes: a unix-domain socket that answers
// one-line commands (what homa-metrics reads), and a Prometheus scrape endpoint over
// HTTP on 127.0.0.1. One background thread serves the socket, one short connection at a
// time; the HTTP side is a cpp-httplib server with its own listening thread and a pool of
// two workers.
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
// HTTP: GET (or HEAD) /metrics answers the Prometheus text; another path gets 404, another
// method 405, a malformed request 400 (cpp-httplib's parser). One request per connection.
//
// Thread safety: construction and destruction from one thread; the callbacks run on the
// publisher's threads, prometheusText possibly on two at once and alongside the others.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "homa/status.h"

namespace httplib {
class Server;
}

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

  private:
    Publisher() = default;
    void run();
    void serveUnix(int fd);
    /// Makes http_, binds it to 127.0.0.1:port. An empty string, or why it failed.
    std::string bindHttp(uint16_t port);
    void stopHttp();

    Sources sources_;
    std::string socketPath_;
    uint16_t httpPort_ = 0;
    int unixFd_ = -1, stopFd_ = -1;
    std::thread thread_;  // serves the unix socket
    std::unique_ptr<httplib::Server> http_;
    std::thread httpThread_;  // http_'s listening loop; it starts the worker pool
    std::atomic<bool> httpDone_{false};  // the listening loop has returned
};

/// Expands "%p" (process id) and "%e" (the endpoint's port) in a path.
std::string expandPath(const std::string& pattern, uint16_t port);

}  // namespace homa::runtime
