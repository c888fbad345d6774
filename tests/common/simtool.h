// For the tests of homa-sim (tools/sim): its parameters derived without a failure, and
// the tool itself run on a command line. Test binaries that include this link
// homa_simtool and define HOMA_SIM_BIN (the tool's path).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "common/run_command.h"
#include "simulator.h"

namespace homa::simtool::test {

/// derive(o), failing the test (with the reason) if the options are refused.
inline Derived mustDerive(const SimOptions& o) {
    std::string error;
    auto d = derive(o, &error);
    EXPECT_TRUE(d.has_value()) << error;
    return d ? *d : Derived{};
}

#ifdef HOMA_SIM_BIN
/// Runs homa-sim with `args`; returns the exit status and the output (stdout and stderr).
inline int runTool(const std::string& args, std::string* out) {
    return homa::test::runCommand(std::string(HOMA_SIM_BIN) + " " + args, out);
}
#endif

}  // namespace homa::simtool::test
