// The grid the emulated tests run elementwise block programs on (test_optimizer_emulated,
// test_swiglu_emulated, test_grouped_heads_emulated): fewer threads than elements, so that the
// grid-stride loops (TRIAD_BLOCK_STRIDE_LOOP) wrap.
#pragma once

#include <cstddef>

#include "simt_emulator.h"

namespace triad::testing {

constexpr int kStridedThreads = 64, kStridedBlocks = 3;
constexpr size_t kStride = size_t(kStridedThreads) * kStridedBlocks;

template <class Body>
void launch_strided(Body body) {
  simt::launch(kStridedBlocks, 1, kStridedThreads, 0, simt::CopyTiming::at_issue, body);
}

}  // namespace triad::testing
