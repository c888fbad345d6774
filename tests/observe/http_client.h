// A raw HTTP exchange with a server on 127.0.0.1 for the observability tests: sends
// `request` as given (well-formed or not) and returns everything the server wrote back
// before closing, or "connect failed". A server that says nothing for 10 s ends the
// exchange (what arrived so far is returned), so a test of a stuck server fails instead
// of hanging.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace homa::test_http {

/// A connected TCP socket to 127.0.0.1:port (-1 if the connection failed).
inline int connectLoopback(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

inline std::string httpExchange(uint16_t port, const std::string& request) {
    const int fd = connectLoopback(port);
    if (fd < 0) return "connect failed";
    timeval limit{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
    ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    std::string out;
    char buf[8192];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return out;
}

}  // namespace homa::test_http
