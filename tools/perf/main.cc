#include <cstdio>

#include "perf/perf.h"

int main(int argc, char** argv) {
    homa::perf::PerfOptions options;
    std::string error;
    bool help = false;
    if (!homa::perf::parseOptions(argc, argv, &options, &error, &help)) {
        if (help) {
            std::printf("%s", error.c_str());
            return 0;
        }
        std::fprintf(stderr, "homa-perf: %s\n", error.c_str());
        return 2;
    }
    if (options.role == "server") return homa::perf::runServer(options);
    if (options.role == "client") return homa::perf::runClient(options);
    if (options.role == "local") return homa::perf::runLocal(options);
    return homa::perf::runPlot(options);
}
