// A small key-value server over Homa: get/put/delete, values up to 1 MB.
//   kv_server [ADDRESS:PORT] [THREADS]
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>

#include "homa/endpoint.h"
#include "kv_protocol.h"

namespace {
volatile std::sig_atomic_t stop = 0;
}

int main(int argc, char** argv) {
    auto address = homa::Address::parse(argc > 1 ? argv[1] : "127.0.0.1:4100");
    int threads = argc > 2 ? std::atoi(argv[2]) : 2;
    if (!address || threads < 1) {
        std::fprintf(stderr, "usage: kv_server [ADDRESS:PORT] [THREADS]\n");
        return 2;
    }
    homa::Status error;
    homa::EndpointOptions options;
    options.address = *address;
    options.protocol.maxMessageLength = kv::kMaxMessage;
    auto endpoint = homa::Endpoint::open(options, &error);
    if (!endpoint) {
        std::fprintf(stderr, "kv_server: %s\n", error.toString().c_str());
        return 1;
    }
    std::map<std::string, std::string, std::less<>> store;
    std::shared_mutex lock;
    homa::Status served = endpoint->serve(
        [&](homa::ServerRequest req) {
            kv::Parsed p = kv::parse(req.message().view());
            std::string reply;
            if (!p.ok) {
                reply.assign(1, 'E');
            } else if (p.op == 'G') {
                std::shared_lock g(lock);
                auto it = store.find(p.key);
                reply = it == store.end() ? "N" : "K" + it->second;
            } else if (p.op == 'P') {
                std::unique_lock g(lock);
                store.insert_or_assign(std::string(p.key), std::string(p.value));
                reply.assign(1, 'K');
            } else {
                std::unique_lock g(lock);
                reply.assign(1, store.erase(std::string(p.key)) ? 'K' : 'N');
            }
            // A response that cannot be sent (send memory full, the client gone) leaves the
            // request unanswered: it is dropped and the client's call fails.
            homa::Status s = req.respond(std::span(reinterpret_cast<const uint8_t*>(reply.data()), reply.size()));
            if (!s.isOk()) std::fprintf(stderr, "kv_server: respond: %s\n", s.toString().c_str());
        },
        threads);
    if (!served.isOk()) {
        std::fprintf(stderr, "kv_server: %s\n", served.toString().c_str());
        return 1;
    }
    std::printf("kv_server: serving on %s\n", endpoint->address().toString().c_str());
    std::fflush(stdout);
    std::signal(SIGINT, [](int) { stop = 1; });
    std::signal(SIGTERM, [](int) { stop = 1; });
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    endpoint->shutdown();
    return 0;
}
