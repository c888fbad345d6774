#pragma once

#include <functional>

#include "homa/endpoint.h"
#include "perf/transport.h"

namespace homa::perf {

struct HomaTransportOptions {
    uint32_t mtu = 1500;
    ProtocolOptions protocol = EndpointOptions::defaultProtocolOptions();
    int probeTimeoutMs = 2000;
    int serverWorkUs = 0;  ///< server: busy time per request (a processing budget)
    uint32_t busyPollUs = 0;
    uint32_t adaptivePollUs = EndpointOptions{}.adaptivePollUs;
    bool engineCpuTime = true;
};

/// Opens a client endpoint and checks that every server answers; nullptr and a
/// one-line reason otherwise. *metrics (if given) reads the endpoint's counters.
std::unique_ptr<ClientTransport> makeHomaClient(const std::vector<Address>& servers, const HomaTransportOptions& o,
                                                std::string* error, std::function<MetricsSnapshot()>* metrics);
/// `ports` endpoints on consecutive ports from bind.port (any free ports if 0), each with
/// `threads` handler threads.
std::unique_ptr<ServerTransport> makeHomaServer(const Address& bind, int ports, int threads,
                                                const HomaTransportOptions& o, std::string* error,
                                                std::function<MetricsSnapshot()>* metrics);

}  // namespace homa::perf
