// homa::Endpoint, homa::Message and homa::ServerRequest: thin handles on runtime::Core.
#include "homa/endpoint.h"

#include "runtime/core.h"

namespace homa {

void Message::reset() {
    if (core_ && data_) core_->release(data_, length_, capacity_);
    core_ = nullptr;
    data_ = nullptr;
    length_ = capacity_ = 0;
}

ServerRequest& ServerRequest::operator=(ServerRequest&& other) noexcept {
    if (this != &other) {
        if (message_.core_ && !answered_) dropUnanswered();
        message_ = std::move(other.message_);  // (leaves `other` without an endpoint: not valid)
        client_ = other.client_;
        id_ = other.id_;
        answered_ = other.answered_;
    }
    return *this;
}

void ServerRequest::dropUnanswered() {
    // (Called before the message goes: while it still holds the endpoint.)
    message_.core_->dropRequest(client_, id_);
}

Status ServerRequest::respond(std::span<const uint8_t> response) {
    if (!message_.core_) return Status(StatusCode::InvalidArgument, "not a request");
    if (answered_) return Status(StatusCode::InvalidArgument, "the request was already answered");
    Status s = message_.core_->respond(client_, id_, response);
    if (s.isOk()) answered_ = true;
    return s;
}

Status ServerRequest::respond(OutgoingMessage response) {
    if (!message_.core_) return Status(StatusCode::InvalidArgument, "not a request");
    if (answered_) return Status(StatusCode::InvalidArgument, "the request was already answered");
    std::span<const uint8_t> bytes;
    engine::OutgoingBuffer owned;
    Status s = message_.core_->takeOutgoing(response, &bytes, &owned);
    if (s.isOk()) s = message_.core_->respond(client_, id_, bytes, owned);
    if (s.isOk()) answered_ = true;
    return s;
}

void OutgoingMessage::reset() {
    if (core_ && data_) core_->releaseOutgoing(data_, capacity_);
    core_ = nullptr;
    data_ = nullptr;
    length_ = capacity_ = 0;
}

std::unique_ptr<Endpoint> Endpoint::open(const EndpointOptions& options, Status* error) {
    auto core = runtime::Core::create(options, error);
    if (!core) return nullptr;
    if (error) *error = Status();
    return std::unique_ptr<Endpoint>(new Endpoint(std::move(core)));
}

Endpoint::Endpoint(std::shared_ptr<runtime::Core> core) : core_(std::move(core)) {}

Endpoint::~Endpoint() {
    core_->shutdown();
    core_->outliveEndpoint(core_);
}

Address Endpoint::address() const { return core_->address(); }

// The methods that may run callbacks or handlers on the calling thread end with
// Core::afterApplicationCall(): one of those may have destroyed this endpoint (so `this`
// is not used after the core's call returns).

Response Endpoint::call(const Address& server, std::span<const uint8_t> request, CallOptions options) {
    Response r = core_->call(server, request, options);
    runtime::Core::afterApplicationCall();
    return r;
}

RpcId Endpoint::callAsync(const Address& server, std::span<const uint8_t> request, Callback done,
                          CallOptions options) {
    const RpcId id = core_->callAsync(server, request, std::move(done), options);
    runtime::Core::afterApplicationCall();
    return id;
}

OutgoingMessage Endpoint::allocate(size_t length, Status* error) { return core_->allocate(length, error); }

Response Endpoint::call(const Address& server, OutgoingMessage request, CallOptions options) {
    std::span<const uint8_t> bytes;
    engine::OutgoingBuffer owned;
    const Status s = core_->takeOutgoing(request, &bytes, &owned);
    Response r = core_->call(server, bytes, options, owned, s.isOk() ? nullptr : &s);
    runtime::Core::afterApplicationCall();
    return r;
}

RpcId Endpoint::callAsync(const Address& server, OutgoingMessage request, Callback done, CallOptions options) {
    std::span<const uint8_t> bytes;
    engine::OutgoingBuffer owned;
    const Status s = core_->takeOutgoing(request, &bytes, &owned);
    // (One that cannot start gets its callback from the loop, as any such call does.)
    const RpcId id = core_->callAsync(server, bytes, std::move(done), options, owned, s.isOk() ? nullptr : &s);
    runtime::Core::afterApplicationCall();
    return id;
}

namespace {
// A future and the callback that fulfils it: callFuture() is callAsync() with these.
std::pair<std::future<Response>, Endpoint::Callback> futureAndCallback() {
    auto promise = std::make_shared<std::promise<Response>>();
    auto future = promise->get_future();
    return {std::move(future), [promise](Response r) { promise->set_value(std::move(r)); }};
}
}  // namespace

std::future<Response> Endpoint::callFuture(const Address& server, std::span<const uint8_t> request,
                                           CallOptions options) {
    auto [future, done] = futureAndCallback();
    core_->callAsync(server, request, std::move(done), options);
    return std::move(future);
}

std::future<Response> Endpoint::callFuture(const Address& server, OutgoingMessage request, CallOptions options) {
    auto [future, done] = futureAndCallback();
    callAsync(server, std::move(request), std::move(done), options);
    return std::move(future);
}

Status Endpoint::abort(RpcId id) {
    Status s = core_->abort(id);
    runtime::Core::afterApplicationCall();
    return s;
}

Endpoint::CallBatch::CallBatch(Endpoint& endpoint)
    : core_(endpoint.core_.get()), outer_(core_->beginBatch()) {}

Endpoint::CallBatch::~CallBatch() {
    core_->endBatch(outer_);
    runtime::Core::afterApplicationCall();
}

Status Endpoint::serve(Handler handler, int threads) { return core_->serve(std::move(handler), threads); }

std::optional<ServerRequest> Endpoint::receive(std::chrono::nanoseconds timeout) {
    std::optional<ServerRequest> r = core_->receive(timeout.count());
    runtime::Core::afterApplicationCall();
    return r;
}

void Endpoint::poll(std::chrono::nanoseconds timeout) {
    core_->poll(timeout.count());
    runtime::Core::afterApplicationCall();
}

MetricsSnapshot Endpoint::metrics() const { return core_->metrics(); }

std::vector<RpcSnapshot> Endpoint::rpcs() const { return core_->rpcs(); }

uint16_t Endpoint::prometheusPort() const { return core_->prometheusPort(); }

std::string Endpoint::metricsSocketPath() const { return core_->metricsSocketPath(); }

Status Endpoint::sendFreeze(const Address& peer) { return core_->sendFreeze(peer); }

void Endpoint::shutdown() {
    core_->shutdown();
    runtime::Core::afterApplicationCall();
}

}  // namespace homa
