// Messages in an endpoint's memory.
//
// Message: a received message, a read-only view into the endpoint's buffer pool (zero
// copy). The buffer goes back to the pool when the Message is destroyed; while the pool
// is full, the endpoint stops granting (backpressure) rather than dropping accepted data.
//
// OutgoingMessage: a message built in place for sending (see below).
//
// Thread safety: one thread at a time per object; may be destroyed on any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <utility>

namespace homa {

namespace runtime {
class Core;
}
class ServerRequest;

namespace detail {
/// What a Message and an OutgoingMessage hold: a buffer of an endpoint's memory and the
/// endpoint's core, which counts the messages it made that are still held and outlives
/// its endpoint until the last one is released. Moves leave the source empty.
/// (Moves and the destructor of an empty message are inline: a message changes hands a
/// few times on its way, and most of them are moves.)
class BufferHandle {
  protected:
    BufferHandle() = default;
    BufferHandle(BufferHandle&& other) noexcept { take(other); }
    BufferHandle(const BufferHandle&) = delete;
    BufferHandle& operator=(const BufferHandle&) = delete;
    ~BufferHandle() = default;
    /// Takes `other`'s buffer; this one's must have been released.
    void take(BufferHandle& other) noexcept {
        core_ = std::exchange(other.core_, nullptr);
        data_ = std::exchange(other.data_, nullptr);
        length_ = std::exchange(other.length_, 0);
        capacity_ = std::exchange(other.capacity_, 0);
    }

    runtime::Core* core_ = nullptr;
    uint8_t* data_ = nullptr;
    uint32_t length_ = 0;
    uint32_t capacity_ = 0;
};
}  // namespace detail

class Message : private detail::BufferHandle {
  public:
    Message() = default;
    Message(Message&& other) noexcept = default;
    Message& operator=(Message&& other) noexcept {
        if (this != &other) {
            if (data_ != nullptr) reset();
            take(other);
        }
        return *this;
    }
    ~Message() {
        if (data_ != nullptr) reset();
    }

    std::span<const uint8_t> bytes() const { return {data_, length_}; }
    const uint8_t* data() const { return data_; }
    size_t size() const { return length_; }
    bool empty() const { return length_ == 0; }
    std::string_view view() const { return {reinterpret_cast<const char*>(data_), length_}; }
    /// Returns the buffer to the pool now.
    void reset();

  private:
    friend class runtime::Core;
    friend class ServerRequest;  // (a request's endpoint is its message's)
};

/// An outgoing message built in place: a buffer of the endpoint's memory for messages
/// being sent (Endpoint::allocate()), which the application fills and then passes to
/// Endpoint::call()/callAsync() or ServerRequest::respond(), which send it without
/// copying it. Its bytes start unspecified (not zeroed: fill all of them). Destroyed
/// unsent, it returns its memory. Movable, not copyable; after a move or a send it is
/// empty.
///
/// Thread safety: one thread at a time per object; may be destroyed on any thread.
class OutgoingMessage : private detail::BufferHandle {
  public:
    OutgoingMessage() = default;
    OutgoingMessage(OutgoingMessage&& other) noexcept = default;
    OutgoingMessage& operator=(OutgoingMessage&& other) noexcept {
        if (this != &other) {
            if (data_ != nullptr) reset();
            take(other);
        }
        return *this;
    }
    ~OutgoingMessage() {
        if (data_ != nullptr) reset();
    }

    std::span<uint8_t> bytes() { return {data_, length_}; }
    uint8_t* data() { return data_; }
    size_t size() const { return length_; }
    bool empty() const { return length_ == 0; }
    /// Returns the memory now, unsent.
    void reset();

  private:
    friend class runtime::Core;
};

}  // namespace homa
