// Reading the files a user names (workloads, metrics snapshots, traces): only regular
// files, and no more than a bound, so that /dev/zero, a FIFO or a directory named by
// mistake is a one-line error rather than a hang or an unbounded allocation.
#pragma once

#include <cstdint>
#include <string>

namespace homa {

/// Whether `path` names a regular file (after symbolic links); false with a one-line
/// reason in *error ("PATH: not a regular file", "PATH: No such file or directory").
bool isRegularFile(const std::string& path, std::string* error);

/// Reads the whole of `path` into *out: it must be a regular file of at most `maxBytes`.
/// False, with a one-line reason in *error, otherwise.
bool readRegularFile(const std::string& path, uint64_t maxBytes, std::string* out, std::string* error);

}  // namespace homa
