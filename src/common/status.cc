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
    if (!message_.empty()) {
        s += ": ";
        s += message_;
    }
    return s;
}

}  // namespace homa
