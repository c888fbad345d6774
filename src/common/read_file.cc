#include "common/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace homa {

namespace {

bool regular(const struct stat& st, const std::string& path, std::string* error) {
    if (S_ISREG(st.st_mode)) return true;
    if (error) {
        const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                           : S_ISFIFO(st.st_mode) ? "a FIFO"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                           : S_ISCHR(st.st_mode)  ? "a character device"
                           : S_ISBLK(st.st_mode)  ? "a block device"
                                                  : "not a regular file";
        *error = path + ": " + kind + ", not a regular file";
    }
    return false;
}

}  // namespace

bool isRegularFile(const std::string& path, std::string* error) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
        if (error) *error = path + ": " + std::strerror(errno);
        return false;
    }
    return regular(st, path, error);
}

bool readRegularFile(const std::string& path, uint64_t maxBytes, std::string* out, std::string* error) {
    // Opened without blocking (a FIFO would wait for a writer), then checked through the
    // descriptor, so that the file read is the file checked.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (error) *error = path + ": " + std::strerror(errno);
        return false;
    }
    struct stat st;
    bool ok = ::fstat(fd, &st) == 0;
    if (!ok && error) *error = path + ": " + std::strerror(errno);
    ok = ok && regular(st, path, error);
    if (ok && static_cast<uint64_t>(st.st_size) > maxBytes) {
        if (error) *error = path + ": larger than " + std::to_string(maxBytes) + " bytes";
        ok = false;
    }
    out->clear();
    char buf[65536];
    while (ok) {
        const ssize_t n = ::read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            if (error) *error = path + ": " + std::strerror(errno);
            ok = false;
            break;
        }
        if (n == 0) break;
        if (out->size() + static_cast<size_t>(n) > maxBytes) {  // (it grew while read)
            if (error) *error = path + ": larger than " + std::to_string(maxBytes) + " bytes";
            ok = false;
            break;
        }
        out->append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    if (!ok) out->clear();
    return ok;
}

}  // namespace homa
