// Echo client: sends COUNT requests of SIZE bytes and checks each echo.
//   echo_client SERVER:PORT [SIZE] [COUNT]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "homa/endpoint.h"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: echo_client SERVER:PORT [SIZE] [COUNT]\n");
        return 2;
    }
    auto server = homa::Address::parse(argv[1]);
    long size = argc > 2 ? std::atol(argv[2]) : 64;
    long count = argc > 3 ? std::atol(argv[3]) : 10;
    if (!server || server->port == 0 || size < 1 || count < 1) {
        std::fprintf(stderr, "echo_client: bad arguments (need SERVER:PORT, SIZE >= 1, COUNT >= 1)\n");
        return 2;
    }
    homa::Status error;
    auto endpoint = homa::Endpoint::open({}, &error);
    if (!endpoint) {
        std::fprintf(stderr, "echo_client: %s\n", error.toString().c_str());
        return 1;
    }
    std::vector<uint8_t> request(static_cast<size_t>(size));
    for (size_t i = 0; i < request.size(); ++i) request[i] = static_cast<uint8_t>(i * 31 + 7);
    for (long i = 0; i < count; ++i) {
        auto start = std::chrono::steady_clock::now();
        homa::Response r = endpoint->call(*server, request, {.timeout = std::chrono::seconds(5)});
        auto us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
        if (!r.status.isOk()) {
            std::fprintf(stderr, "echo_client: call %ld: %s\n", i, r.status.toString().c_str());
            return 1;
        }
        if (r.message.size() != request.size() ||
            !std::equal(request.begin(), request.end(), r.message.data())) {
            std::fprintf(stderr, "echo_client: call %ld: the echo differs from the request\n", i);
            return 1;
        }
        std::printf("call %ld: %ld bytes echoed in %.1f us\n", i, size, us);
    }
    return 0;
}
