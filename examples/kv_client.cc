// Key-value client.
//   kv_client SERVER:PORT get KEY
//   kv_client SERVER:PORT put KEY VALUE      (VALUE "@N" = N bytes of filler, 1 <= N <= 1 MB)
//   kv_client SERVER:PORT del KEY
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "homa/endpoint.h"
#include "kv_protocol.h"

int main(int argc, char** argv) {
    auto usage = [] {
        std::fprintf(stderr, "usage: kv_client SERVER:PORT get|put|del KEY [VALUE|@BYTES] (values up to %u bytes)\n",
                     kv::kMaxValue);
        return 2;
    };
    if (argc < 4) return usage();
    auto server = homa::Address::parse(argv[1]);
    std::string cmd = argv[2], key = argv[3];
    if (!server || server->port == 0 || key.empty() || key.size() > 65535) return usage();
    std::vector<uint8_t> request;
    if (cmd == "get") {
        request = kv::request('G', key);
    } else if (cmd == "del") {
        request = kv::request('D', key);
    } else if (cmd == "put" && argc >= 5) {
        std::string value = argv[4];
        if (value.size() > 1 && value[0] == '@') {
            uint32_t n = 0;
            const char* end = value.data() + value.size();
            auto [rest, ec] = std::from_chars(value.data() + 1, end, n);
            if (ec != std::errc() || rest != end || n == 0 || n > kv::kMaxValue) return usage();
            value.assign(n, 'v');
        }
        if (value.size() > kv::kMaxValue) return usage();
        request = kv::request('P', key, value);
    } else {
        return usage();
    }
    homa::Status error;
    homa::EndpointOptions options;
    options.protocol.maxMessageLength = kv::kMaxMessage;
    auto endpoint = homa::Endpoint::open(options, &error);
    if (!endpoint) {
        std::fprintf(stderr, "kv_client: %s\n", error.toString().c_str());
        return 1;
    }
    homa::Response r = endpoint->call(*server, request, {.timeout = std::chrono::seconds(5)});
    if (!r.status.isOk()) {
        std::fprintf(stderr, "kv_client: %s\n", r.status.toString().c_str());
        return 1;
    }
    std::string_view reply = r.message.view();
    if (reply.empty() || reply[0] == 'E') {
        std::fprintf(stderr, "kv_client: the server refused the request\n");
        return 1;
    }
    if (reply[0] == 'N') {
        std::printf("not found\n");
        return 3;
    }
    if (cmd == "get") {
        std::fwrite(reply.data() + 1, 1, reply.size() - 1, stdout);
        if (reply.size() - 1 < 200) std::printf("\n");
    } else {
        std::printf("ok\n");
    }
    return 0;
}
