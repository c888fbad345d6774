#include "homa/status.h"

#include <gtest/gtest.h>

#include <utility>

namespace homa {
namespace {

TEST(Status, OkHasNoMessageAndPrintsItsCode) {
    Status s;
    EXPECT_TRUE(s.isOk());
    EXPECT_TRUE(static_cast<bool>(s));
    EXPECT_EQ(s.message(), "");
    EXPECT_EQ(s.toString(), "ok");
    EXPECT_EQ(Status(StatusCode::Timeout, "").toString(), "timeout");
}

TEST(Status, CopiesAreDeepAndMovesLeaveNoMessageBehind) {
    Status a(StatusCode::PeerUnreachable, "no route to 10.0.0.9:4000");
    Status b = a;
    EXPECT_EQ(b.code(), StatusCode::PeerUnreachable);
    EXPECT_EQ(b.message(), a.message());
    EXPECT_NE(&b.message(), &a.message());  // its own string
    Status c(StatusCode::Aborted, "x");
    c = a;
    EXPECT_EQ(c.message(), "no route to 10.0.0.9:4000");
    c = c;  // (self-assignment keeps it)
    EXPECT_EQ(c.toString(), "peer unreachable: no route to 10.0.0.9:4000");
    Status d = std::move(a);
    EXPECT_EQ(d.message(), "no route to 10.0.0.9:4000");
    EXPECT_EQ(a.message(), "");  // NOLINT(bugprone-use-after-move): moved-from is valid
    Status e;
    e = std::move(d);
    EXPECT_EQ(e.toString(), "peer unreachable: no route to 10.0.0.9:4000");
    EXPECT_TRUE(e == Status(StatusCode::PeerUnreachable, "another text"));  // codes compare
}

}  // namespace
}  // namespace homa
