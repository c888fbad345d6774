// homa-sim only: large message buffers are all one block (see payload_memory.cc).
#pragma once

#include <cstdint>

namespace homa::simtool {

/// Off until called: from then on array allocations of 16 KB or more share one block.
void setPayloadSharing(bool on);
/// Size of that block.
uint64_t sharedPayloadBytes();

}  // namespace homa::simtool
