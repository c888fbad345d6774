// What the tests over real sockets share: an endpoint's options on loopback, request
// bytes that tell one call from another, an echo server, and a peer that never answers.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "homa/endpoint.h"

namespace homa::test {

/// Options for an endpoint on 127.0.0.1 (port 0: any free one).
inline EndpointOptions loopback(uint16_t port = 0) {
    EndpointOptions o;
    o.address = Address::ipv4(0x7f000001, port);
    return o;
}

/// n bytes that depend on `seed`, so that a response can be matched to its request.
inline std::vector<uint8_t> bytesOf(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
    return v;
}

/// An endpoint whose `threads` workers answer each request with its own bytes (null, with
/// a test failure, if it cannot be opened).
inline std::unique_ptr<Endpoint> echoServer(int threads = 1, const EndpointOptions& options = loopback()) {
    Status err;
    auto server = Endpoint::open(options, &err);
    EXPECT_TRUE(server) << err.toString();
    if (server) {
        EXPECT_TRUE(server->serve([](ServerRequest r) { r.respond(r.message().bytes()); }, threads).isOk());
    }
    return server;
}

/// A bound UDP socket on loopback that swallows what it is sent and never answers.
class BlackHole {
  public:
    BlackHole() : fd_(socket(AF_INET, SOCK_DGRAM, 0)) {
        sockaddr_in at{};
        at.sin_family = AF_INET;
        at.sin_addr.s_addr = htonl(0x7f000001);
        socklen_t len = sizeof(at);
        if (bind(fd_, reinterpret_cast<sockaddr*>(&at), sizeof(at)) == 0 &&
            getsockname(fd_, reinterpret_cast<sockaddr*>(&at), &len) == 0)
            address_ = Address::ipv4(0x7f000001, ntohs(at.sin_port));
    }
    ~BlackHole() { close(fd_); }
    BlackHole(const BlackHole&) = delete;
    BlackHole& operator=(const BlackHole&) = delete;
    Address address() const { return address_; }  ///< port 0 if it could not bind

  private:
    int fd_;
    Address address_;
};

}  // namespace homa::test
