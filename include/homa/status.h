// Errors reported by every layer of the library.
//
// Thread safety: Status is a plain value type.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace homa {

enum class StatusCode {
    Ok = 0,
    Timeout,          ///< the peer stopped answering for longer than the protocol's timeout
                      ///< (timeoutTicks), or the call's CallOptions::timeout passed
    PeerUnreachable,  ///< reserved: nothing returns it today. A failed send counts as packet
                      ///< loss, so a server that cannot be reached ends its calls with
                      ///< Timeout; an address the socket cannot send to gives InvalidArgument
    MessageTooLarge,  ///< a message longer than the configured maximum
    Shutdown,         ///< the endpoint is shutting down
    OutOfBuffers,     ///< no room: the send memory (maxOutgoingBytes) is full of messages in
                      ///< flight, or the peer table (maxPeers) is full; try again later
    InvalidArgument,  ///< an argument broke the API's contract
    NoSuchRpc,        ///< the RPC named does not exist (finished, aborted or never was)
    Aborted,          ///< the RPC was aborted by the application or by the peer (e.g. a
                      ///< server that used the request's id already: see docs/api.md)
};

/// Short lower-case name of a code, e.g. "timeout".
const char* toString(StatusCode code);

class Status {
  public:
    Status() = default;
    /// (An empty message is kept as none.)
    Status(StatusCode code, std::string message)
        : code_(code), message_(message.empty() ? nullptr : std::make_unique<std::string>(std::move(message))) {}
    Status(const Status& other) : code_(other.code_), message_(other.message_ ? std::make_unique<std::string>(*other.message_) : nullptr) {}
    Status& operator=(const Status& other) {
        if (this != &other) *this = Status(other);
        return *this;
    }
    Status(Status&&) noexcept = default;
    Status& operator=(Status&&) noexcept = default;

    static Status ok() { return {}; }
    bool isOk() const { return code_ == StatusCode::Ok; }
    explicit operator bool() const { return isOk(); }
    StatusCode code() const { return code_; }
    const std::string& message() const { return message_ ? *message_ : emptyMessage(); }
    /// "timeout: no packet from 10.0.0.2:4000 for 100 ms".
    std::string toString() const;

    friend bool operator==(const Status& a, const Status& b) { return a.code_ == b.code_; }

  private:
    static const std::string& emptyMessage();
    StatusCode code_ = StatusCode::Ok;
    // Held apart, so that a Status (an Ok one above all, carried by every response) is
    // one pointer to move, not a whole string.
    std::unique_ptr<std::string> message_;
};

}  // namespace homa
