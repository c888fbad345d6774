// A simulated host that runs the real protocol engine: the bridge between the
// protocol-agnostic network simulator and homa::engine::Engine. Used by the engine's
// scenario tests and by the large-scale simulator.
#pragma once

#include <functional>
#include <memory>

#include "engine/engine.h"
#include "sim/network.h"

namespace homa::sim {

/// The address a simulated host's engine uses: 10.x.y.z with z.. = host id + 1.
Address hostAddress(HostId id, uint16_t port);
/// The host behind an address made by hostAddress().
HostId hostOf(const Address& address);

class EngineHost : public Host, public engine::PacketSink {
  public:
    using DeliveryHandler = std::function<void(EngineHost&, engine::Delivery&)>;

    EngineHost(Network& net, HostId id, const engine::Config& config);
    ~EngineHost() override;

    HostId id() const { return id_; }
    Address address() const { return hostAddress(id_, engine_->config().port); }
    engine::Engine& engine() { return *engine_; }
    Network& network() { return net_; }

    /// Called for every delivery. The handler owns the message and must release it,
    /// now or later, with release(). Without a handler, messages are released at once.
    void setDeliveryHandler(DeliveryHandler handler) { handler_ = std::move(handler); }

    Status call(HostId server, std::span<const uint8_t> request, uint64_t cookie, uint64_t* id = nullptr);
    Status respond(const engine::ServerRpcId& rpc, std::span<const uint8_t> response);
    void release(const engine::ReceivedMessage& message);
    /// Hands deliveries to the handler and re-arms the wake-up; call after any direct
    /// use of engine().
    void settle();

    void onPacket(const Packet& p, Time now) override;
    void onWakeup(Time now) override;
    void transmit(const Address& dest, uint8_t priority, std::span<const uint8_t> header,
                  std::span<const uint8_t> payload) override;

  private:
    Network& net_;
    HostId id_;
    std::unique_ptr<engine::Engine> engine_;
    DeliveryHandler handler_;
    bool settling_ = false;
};

}  // namespace homa::sim
