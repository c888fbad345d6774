// Talking to an endpoint's metrics socket (see src/runtime/publisher.h), for homa-metrics
// and its tests.
#pragma once

#include <optional>
#include <string>

#include "homa/metrics.h"

namespace homa::metrics_tool {

/// Sends one command line to the unix socket at `path` and returns the whole answer.
/// nullopt, with the reason in *error, if the socket cannot be reached or the answer
/// starts with "error: ".
std::optional<std::string> query(const std::string& path, const std::string& command, std::string* error);

/// A snapshot from `source`: a metrics socket, or a file holding a saved snapshot.
std::optional<MetricsSnapshot> readSnapshot(const std::string& source, std::string* error);

}  // namespace homa::metrics_tool
