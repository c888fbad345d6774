#include "sim/engine_host.h"

namespace homa::sim {

Address hostAddress(HostId id, uint16_t port) { return Address::ipv4(0x0a000000u + id + 1, port); }

HostId hostOf(const Address& address) { return address.ipv4Host() - 0x0a000000u - 1; }

EngineHost::EngineHost(Network& net, HostId id, const engine::Config& config)
    : net_(net), id_(id), engine_(std::make_unique<engine::Engine>(config, *this)) {}

EngineHost::~EngineHost() = default;

Status EngineHost::call(HostId server, std::span<const uint8_t> request, uint64_t cookie, uint64_t* id) {
    Status s = engine_->startRequest(hostAddress(server, engine_->config().port), request, cookie, net_.now(), id);
    settle();
    return s;
}

Status EngineHost::respond(const engine::ServerRpcId& rpc, std::span<const uint8_t> response) {
    Status s = engine_->sendResponse(rpc, response, net_.now());
    settle();
    return s;
}

void EngineHost::release(const engine::ReceivedMessage& message) {
    engine_->releaseMessage(message, net_.now());
    settle();
}

void EngineHost::settle() {
    if (settling_) return;  // a handler's own engine calls end up here too
    settling_ = true;
    engine::Delivery d;
    while (engine_->pollDelivery(d)) {
        if (handler_) {
            handler_(*this, d);
        } else if (d.message.data) {
            engine_->releaseMessage(d.message, net_.now());
        }
    }
    engine_->sendDueAcks();
    settling_ = false;
    engine::Time t = engine_->nextWakeup();
    if (t != engine::kNever) net_.wakeAt(id_, std::max(t, net_.now()));
}

void EngineHost::onPacket(const Packet& p, Time now) {
    engine_->receive(hostAddress(p.src, engine_->config().port), p.bytes, now);
    settle();
}

void EngineHost::onWakeup(Time now) {
    engine_->advance(now);
    settle();
}

void EngineHost::transmit(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
                          std::span<const uint8_t> payload) {
    net_.send(id_, hostOf(dest), priority, header, payload);
}

}  // namespace homa::sim
