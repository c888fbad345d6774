// homa-perf's Homa transport: the public homa::Endpoint API, nothing else.
#include "perf/homa_transport.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <optional>

namespace homa::perf {

namespace {

/// Messages from this size up are built in the endpoint's memory (Endpoint::allocate()).
constexpr size_t kBuildInPlaceBytes = 16 * 1024;

CallResult resultOf(const Response& r) {
    CallResult c;
    c.ok = r.status.isOk();
    if (!c.ok) c.error = r.status.toString();
    c.refused = r.status.code() == StatusCode::OutOfBuffers;
    c.responseLength = static_cast<uint32_t>(r.message.size());
    return c;
}

class HomaClient : public ClientTransport {
  public:
    HomaClient(std::unique_ptr<Endpoint> ep, std::vector<Address> servers)
        : ep_(std::move(ep)), servers_(std::move(servers)) {}
    void issue(size_t server, std::span<const uint8_t> request, uint64_t token) override {
        // The token rides in the call's context, so the endpoint's callback holds only
        // `this` and fits in std::function's own storage (no allocation per call).
        if (server >= servers_.size()) {
            CallResult c;
            c.error = "no server " + std::to_string(server) + " (have " + std::to_string(servers_.size()) + ")";
            return complete(token, std::move(c));
        }
        CallOptions options;
        options.context = token;
        auto done = [this](Response r) { complete(r.context, resultOf(r)); };
        // A large request is built in place in the endpoint's send memory and sent without
        // a copy: only the header is written, the rest is filler (see transport.h). (A
        // small one is copied: allocate() would cost a second lock of the endpoint for a
        // copy of a few cache lines. If there is no room, the copying call is refused in
        // the usual way.)
        OutgoingMessage m;
        if (request.size() >= kBuildInPlaceBytes) m = ep_->allocate(request.size());
        if (m.empty()) {
            ep_->callAsync(servers_[server], request, std::move(done), options);
            return;
        }
        std::memcpy(m.data(), request.data(), std::min(request.size(), kRequestHeaderBytes));
        ep_->callAsync(servers_[server], std::move(m), std::move(done), options);
    }
    bool callSync(size_t server, std::span<const uint8_t> request, CallResult* c) override {
        if (server >= servers_.size()) {
            *c = CallResult{};
            c->error = "no server " + std::to_string(server) + " (have " + std::to_string(servers_.size()) + ")";
            return true;
        }
        *c = resultOf(ep_->call(servers_[server], request));
        return true;
    }
    bool hasSyncCalls() const override { return true; }
    void holdSends() override { batch_.emplace(*ep_); }
    void releaseSends() override { batch_.reset(); }
    void stop() override { ep_->shutdown(); }
    Endpoint& endpoint() { return *ep_; }

  private:
    std::unique_ptr<Endpoint> ep_;
    std::vector<Address> servers_;
    std::optional<Endpoint::CallBatch> batch_;  ///< (the thread between holdSends and releaseSends)
};

class HomaServer : public ServerTransport {
  public:
    std::vector<Address> addresses() const override {
        std::vector<Address> a;
        for (auto& ep : endpoints_) a.push_back(ep->address());
        return a;
    }
    uint64_t served() const override { return served_.load(); }
    void stop() override {
        for (auto& ep : endpoints_) ep->shutdown();
    }
    std::vector<std::unique_ptr<Endpoint>> endpoints_;
    std::vector<uint8_t> filler_;
    std::atomic<uint64_t> served_{0};
};

}  // namespace

std::unique_ptr<ClientTransport> makeHomaClient(const std::vector<Address>& servers, const HomaTransportOptions& o,
                                                std::string* error, std::function<MetricsSnapshot()>* metrics) {
    EndpointOptions eo;
    eo.address = servers.empty() || servers[0].isIpv4() ? Address::ipv4(0, 0) : *Address::parse("[::]:0");
    eo.mtu = o.mtu;
    eo.busyPollUs = o.busyPollUs;
    eo.adaptivePollUs = o.adaptivePollUs;
    eo.engineCpuTime = o.engineCpuTime;
    eo.protocol = o.protocol;
    Status s;
    auto ep = Endpoint::open(eo, &s);
    if (!ep) {
        if (error) *error = s.toString();
        return nullptr;
    }
    // A server that is not there is reported now, not as a stream of failures.
    std::vector<uint8_t> probe(8, 0);
    putResponseLength(probe.data(), 1);
    for (const Address& server : servers) {
        Response r = ep->call(server, probe, {.timeout = std::chrono::milliseconds(o.probeTimeoutMs)});
        if (!r.status.isOk()) {
            if (error) *error = "server " + server.toString() + " is not answering: " + r.status.toString();
            return nullptr;
        }
    }
    auto client = std::make_unique<HomaClient>(std::move(ep), servers);
    if (metrics) {
        HomaClient* c = client.get();
        *metrics = [c] { return c->endpoint().metrics(); };
    }
    return client;
}

std::unique_ptr<ServerTransport> makeHomaServer(const Address& bind, int ports, int threads,
                                                const HomaTransportOptions& o, std::string* error,
                                                std::function<MetricsSnapshot()>* metrics) {
    auto server = std::make_unique<HomaServer>();
    server->filler_.assign(o.protocol.maxMessageLength, 0x5a);
    for (int i = 0; i < ports; ++i) {
        EndpointOptions eo;
        eo.address = bind;
        if (bind.port != 0) eo.address.port = static_cast<uint16_t>(bind.port + i);
        eo.mtu = o.mtu;
        eo.busyPollUs = o.busyPollUs;
        eo.adaptivePollUs = o.adaptivePollUs;
        eo.engineCpuTime = o.engineCpuTime;
        eo.protocol = o.protocol;
        Status s;
        auto ep = Endpoint::open(eo, &s);
        if (!ep) {
            if (error) *error = s.toString();
            return nullptr;
        }
        HomaServer* srv = server.get();
        Endpoint* endpoint = ep.get();
        const int workUs = o.serverWorkUs;
        Status st = ep->serve(
            [srv, endpoint, workUs](ServerRequest req) {
                if (workUs > 0) busyFor(static_cast<uint32_t>(workUs));
                uint32_t len = responseLengthOf(req.message().bytes());
                if (len > srv->filler_.size()) len = static_cast<uint32_t>(srv->filler_.size());
                // All filler: a large one is built in place, sent without a copy (as requests).
                OutgoingMessage response;
                if (len >= kBuildInPlaceBytes) response = endpoint->allocate(len);
                if (response.empty())
                    req.respond(std::span<const uint8_t>(srv->filler_.data(), len));
                else
                    req.respond(std::move(response));
                ++srv->served_;
            },
            threads);
        if (!st.isOk()) {
            if (error) *error = st.toString();
            return nullptr;
        }
        server->endpoints_.push_back(std::move(ep));
    }
    if (metrics) {
        HomaServer* srv = server.get();
        *metrics = [srv] {
            MetricsSnapshot total;
            for (auto& ep : srv->endpoints_) {
                MetricsSnapshot m = ep->metrics();
                if (total.counters.empty()) {
                    total = std::move(m);
                } else {
                    for (size_t i = 0; i < total.counters.size() && i < m.counters.size(); ++i)
                        total.counters[i].second += m.counters[i].second;
                }
            }
            return total;
        };
    }
    return server;
}

}  // namespace homa::perf
