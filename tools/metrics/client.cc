#include "client.h"

#include "common/read_file.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace homa::metrics_tool {

namespace {
// (The largest answer, a list of RPCs, is about 100 bytes per RPC.)
constexpr size_t kMaxAnswerBytes = size_t{256} << 20;
}  // namespace

std::optional<std::string> query(const std::string& path, const std::string& command, std::string* error) {
    auto fail = [&](const std::string& why) -> std::optional<std::string> {
        if (error) *error = why;
        return std::nullopt;
    };
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) return fail("socket path too long: " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail(std::string("socket: ") + std::strerror(errno));
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        std::string why = "cannot connect to " + path + ": " + std::strerror(errno);
        ::close(fd);
        return fail(why);
    }
    std::string line = command + "\n";
    if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
        ::close(fd);
        return fail("cannot send to " + path);
    }
    std::string answer;
    char buf[4096];
    while (true) {
        ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            ::close(fd);
            return fail("no answer from " + path + ": " + std::strerror(errno));
        }
        if (n == 0) break;
        if (answer.size() + static_cast<size_t>(n) > kMaxAnswerBytes) {
            ::close(fd);
            return fail(path + " answered with more than " + std::to_string(kMaxAnswerBytes) + " bytes");
        }
        answer.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    if (answer.starts_with("error: ")) {
        while (!answer.empty() && answer.back() == '\n') answer.pop_back();
        return fail(answer.substr(7));
    }
    return answer;
}

std::optional<MetricsSnapshot> readSnapshot(const std::string& source, std::string* error) {
    struct stat st;
    if (::stat(source.c_str(), &st) != 0) {
        if (error) *error = source + ": " + std::strerror(errno);
        return std::nullopt;
    }
    std::string text;
    if (S_ISSOCK(st.st_mode)) {
        auto answer = query(source, "metrics", error);
        if (!answer) return std::nullopt;
        text = std::move(*answer);
    } else {
        // (A snapshot is a few KB; 16 MB is far more than any could be.)
        if (!readRegularFile(source, 16 << 20, &text, error)) return std::nullopt;
    }
    std::string why;
    auto m = MetricsSnapshot::parse(text, &why);
    if (!m) {
        if (error) *error = source + ": " + why;
        return std::nullopt;
    }
    if (m->counters.empty()) {
        if (error) *error = source + ": no counters";
        return std::nullopt;
    }
    return m;
}

}  // namespace homa::metrics_tool
