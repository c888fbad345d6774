#include "workload/workload.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

namespace homa::workload {
namespace {

class Published : public ::testing::TestWithParam<const char*> {};

// The CDF's own mean matches the published one, and sampling reproduces it within 1%.
TEST_P(Published, SamplingReproducesTheMean) {
    std::string error;
    auto d = Distribution::named(GetParam(), &error);
    ASSERT_TRUE(d) << error;
    EXPECT_NEAR(d->mean(), d->publishedMean(), d->publishedMean() * 0.005) << GetParam();
    const uint64_t seed = 2024;
    std::mt19937_64 rng(seed);
    const int draws = 3'000'000;
    double sum = 0;
    for (int i = 0; i < draws; ++i) sum += d->sample(rng);
    double mean = sum / draws;
    EXPECT_NEAR(mean, d->publishedMean(), d->publishedMean() * 0.01)
        << GetParam() << " seed " << seed << " draws " << draws;
}

INSTANTIATE_TEST_SUITE_P(Workloads, Published, ::testing::Values("w1", "w2", "w3", "w4", "w5"));

TEST(Workload, CappingChangesTheMeanAndSaysSo) {
    auto w4 = Distribution::named("w4", nullptr);
    ASSERT_TRUE(w4);
    auto c = w4->capped(1'000'000);
    EXPECT_TRUE(c.isCapped());
    EXPECT_LE(c.maxSize(), 1'000'000u);
    EXPECT_NEAR(c.mean(), 60'000, 6'000);  // about 60 KB once capped
    EXPECT_FALSE(w4->capped(20'000'000).isCapped());
}

TEST(Workload, StepFunctionSampling) {
    auto d = Distribution::parse("15\n10 0.5\n20 1\n", nullptr);
    ASSERT_TRUE(d);
    EXPECT_DOUBLE_EQ(d->mean(), 15);
    std::mt19937_64 rng(1);
    int tens = 0;
    for (int i = 0; i < 10000; ++i) {
        uint32_t s = d->sample(rng);
        ASSERT_TRUE(s == 10 || s == 20);
        tens += s == 10;
    }
    EXPECT_NEAR(tens, 5000, 300);
}

TEST(Workload, MalformedFilesGiveOneLineReasons) {
    std::string e;
    EXPECT_FALSE(Distribution::parse("", &e));
    EXPECT_NE(e.find("empty"), std::string::npos);
    EXPECT_FALSE(Distribution::parse("abc\n1 1\n", &e));
    EXPECT_NE(e.find("line 1"), std::string::npos);
    EXPECT_FALSE(Distribution::parse("10\n5 0.5\n4 1\n", &e));
    EXPECT_NE(e.find("line 3"), std::string::npos);
    EXPECT_FALSE(Distribution::parse("10\n5 0.5\n6 0.9\n", &e));
    EXPECT_NE(e.find("last"), std::string::npos);
    EXPECT_FALSE(Distribution::parse("10\n5 2\n", &e));
    EXPECT_FALSE(Distribution::parse("10\n0 1\n", &e));
    EXPECT_FALSE(Distribution::parse("10\n5 1 extra\n", &e));
    EXPECT_FALSE(Distribution::named("w9", &e));
    EXPECT_NE(e.find("w9"), std::string::npos);
    EXPECT_FALSE(Distribution::load("/nonexistent/file", &e));
}

// A path that is not a regular file is a one-line error: /dev/zero used to be read until
// memory ran out, a FIFO without a writer to block for good.
TEST(Workload, OnlyRegularFilesAreRead) {
    std::string e;
    EXPECT_FALSE(Distribution::load("/dev/zero", &e));
    EXPECT_NE(e.find("/dev/zero: a character device, not a regular file"), std::string::npos) << e;
    EXPECT_FALSE(Distribution::load("/tmp", &e));
    EXPECT_NE(e.find("a directory"), std::string::npos) << e;
    const std::string fifo = "/tmp/homa-workload-fifo-" + std::to_string(::getpid());
    ::unlink(fifo.c_str());
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_FALSE(Distribution::load(fifo, &e));
    EXPECT_NE(e.find("a FIFO"), std::string::npos) << e;
    ::unlink(fifo.c_str());
}

TEST(Workload, FixedSize) {
    auto d = Distribution::fixed(64);
    std::mt19937_64 rng(3);
    EXPECT_EQ(d.sample(rng), 64u);
    EXPECT_DOUBLE_EQ(d.mean(), 64);
}

}  // namespace
}  // namespace homa::workload
