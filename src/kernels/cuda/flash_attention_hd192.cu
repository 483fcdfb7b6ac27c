// The flash attention kernels of head dimension 192 (no probes: those run at 64 and 128): a
// translation unit of their own, so that nvcc compiles each head dimension's kernels in parallel
// with the others' (flash_attention_launch.h).
#include "flash_attention_kernels.cuh"

namespace triad::cuda {
template struct FlashHeadDim<192>;
}  // namespace triad::cuda
