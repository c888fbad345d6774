// Echo server: answers every request with its own bytes.
//   echo_server [ADDRESS:PORT] [THREADS]       default 127.0.0.1:4000, 1 thread
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "homa/endpoint.h"

namespace {
volatile std::sig_atomic_t stop = 0;
}

int main(int argc, char** argv) {
    const char* where = argc > 1 ? argv[1] : "127.0.0.1:4000";
    int threads = argc > 2 ? std::atoi(argv[2]) : 1;
    auto address = homa::Address::parse(where);
    if (!address || threads < 1) {
        std::fprintf(stderr, "usage: echo_server [ADDRESS:PORT] [THREADS]\n");
        return 2;
    }
    homa::EndpointOptions options;
    options.address = *address;
    homa::Status error;
    auto endpoint = homa::Endpoint::open(options, &error);
    if (!endpoint) {
        std::fprintf(stderr, "echo_server: %s\n", error.toString().c_str());
        return 1;
    }
    homa::Status served = endpoint->serve(
        [](homa::ServerRequest request) {
            // A response that cannot be sent (send memory full, the client gone) leaves the
            // request unanswered: it is dropped and the client's call fails.
            homa::Status s = request.respond(request.message().bytes());
            if (!s.isOk()) std::fprintf(stderr, "echo_server: respond: %s\n", s.toString().c_str());
        },
        threads);
    if (!served.isOk()) {
        std::fprintf(stderr, "echo_server: %s\n", served.toString().c_str());
        return 1;
    }
    std::printf("echo_server: serving on %s\n", endpoint->address().toString().c_str());
    std::fflush(stdout);
    std::signal(SIGINT, [](int) { stop = 1; });
    std::signal(SIGTERM, [](int) { stop = 1; });
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    endpoint->shutdown();
    return 0;
}
