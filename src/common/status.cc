#include "homa/status.h"

namespace homa {

const char* toString(StatusCode code) {
    switch (code) {
        case StatusCode::Ok: return "ok";
        case StatusCode::Timeout: return "timeout";
        case StatusCode::PeerUnreachable: return "peer unreachable";
        case StatusCode::MessageTooLarge: return "message too large";
        case StatusCode::Shutdown: return "shutdown";
        case StatusCode::OutOfBuffers: return "out of buffers";
        case StatusCode::InvalidArgument: return "invalid argument";
        case StatusCode::NoSuchRpc: return "no such rpc";
        case StatusCode::Aborted: return "aborted";
    }
    return "unknown";
}

std::string Status::toString() const {
    std::string s = homa::toString(code_);
    if (message_) {
        s += ": ";
        s += *message_;
    }
    return s;
}

const std::string& Status::emptyMessage() {
    static const std::string empty;
    return empty;
}

}  // namespace homa
