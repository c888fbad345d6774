// For tests of what happens when a process runs out of file descriptors: lowers the
// process's limit so that only `room` more can be opened, and puts it back when
// destroyed. The limit is process-wide: for a test whose process opens and closes
// nothing else meanwhile (ctest runs each test in a process of its own).
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace homa::test {

class DescriptorLimit {
  public:
    explicit DescriptorLimit(int room) {
        const int lowestFree = open("/dev/null", O_RDONLY);  // (all below it are in use)
        if (lowestFree < 0 || getrlimit(RLIMIT_NOFILE, &old_) != 0) return;
        close(lowestFree);
        rlimit low = old_;
        low.rlim_cur = static_cast<rlim_t>(lowestFree + room);
        set_ = setrlimit(RLIMIT_NOFILE, &low) == 0;
    }
    ~DescriptorLimit() { restore(); }
    DescriptorLimit(const DescriptorLimit&) = delete;
    DescriptorLimit& operator=(const DescriptorLimit&) = delete;

    bool ok() const { return set_; }
    void restore() {
        if (set_) setrlimit(RLIMIT_NOFILE, &old_);
        set_ = false;
    }

  private:
    rlimit old_{};
    bool set_ = false;
};

}  // namespace homa::test
