// Tensor maps for the bulk tensor copies (TMA, sm_90): the driver's description of a global
// tensor that cp.async.bulk.tensor reads boxes of. A kernel takes one by value as a
// `const __grid_constant__ CUtensorMap` parameter. Internal to src/kernels/cuda.
#pragma once

#include <cuda.h>

#include "box_map_shape.h"

namespace triad::cuda {

// The map of the bf16 tensor `shape` describes at `base` (16-byte aligned), elements outside the
// tensor zero-filled. The driver's cuTensorMapEncodeTiled, found through the runtime (no link
// against libcuda); throws triad::Error naming the problem when the driver lacks it or rejects
// the map.
CUtensorMap bf16_tensor_map(const void* base, const BoxMapShape& shape);

}  // namespace triad::cuda
