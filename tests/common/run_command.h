// Running a tool from a test: its exit status, what it printed, the files it wrote.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace homa::test {

/// Runs `command` through the shell with stderr joined to stdout; returns the exit
/// status (-1 if it could not run or did not exit) and puts the output in *out.
inline int runCommand(const std::string& command, std::string* out) {
    FILE* f = popen((command + " 2>&1").c_str(), "r");
    out->clear();
    if (!f) return -1;
    std::array<char, 512> buf;
    while (fgets(buf.data(), buf.size(), f)) *out += buf.data();
    const int status = pclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// The whole of the file at `path` ("" if it cannot be read).
inline std::string readFile(const std::string& path) {
    std::string s;
    FILE* f = fopen(path.c_str(), "r");
    if (!f) return s;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

}  // namespace homa::test
