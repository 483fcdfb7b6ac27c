// The flash attention kernels of head dimension 64: a translation unit of their own, so
// that nvcc compiles each head dimension's kernels in parallel with the others'
// (flash_attention_launch.h).
#include "flash_attention_kernels.cuh"

namespace triad::cuda {
template struct FlashHeadDim<64>;
template FlashProbeResult flash_probe_head_dim<64>(FlashKernel, int);
}  // namespace triad::cuda
