// Tensor maps for the bulk tensor copies (TMA, sm_90): the driver's description of a global
// tensor that cp.async.bulk.tensor reads boxes of. A kernel takes one by value as a
// `const __grid_constant__ CUtensorMap` parameter. Internal to src/kernels/cuda.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace triad::cuda {

// A map of the bf16 tensor [seqs][rows][cols] at `base` (row-major, 16-byte aligned, cols a
// multiple of 8) read in boxes of box_cols × box_rows × 1, elements outside the tensor
// zero-filled; no swizzle (each box lands row after row, box_cols·2 bytes per row).
// The driver's cuTensorMapEncodeTiled, found through the runtime (no link against libcuda);
// throws triad::Error naming the problem when the driver lacks it or rejects the map.
CUtensorMap bf16_box_map(const void* base, uint64_t cols, uint64_t rows, uint64_t seqs,
                         uint32_t box_cols, uint32_t box_rows);

}  // namespace triad::cuda
