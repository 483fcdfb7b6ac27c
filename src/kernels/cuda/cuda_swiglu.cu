// SwiGLU (backend.h swiglu_forward / swiglu_backward): the block programs of swiglu_block.h
// (which describes them), launched with DeviceThread. Memory-bound elementwise passes.
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "swiglu_block.h"

namespace triad::cuda {
namespace {

template <typename E>
__global__ void swiglu_forward_kernel(E* out, const E* pre, int H, size_t n) {
  DeviceThread x;
  swiglu_block::forward(x, out, pre, H, n, block_threads(), grid_threads());
}

template <typename E>
__global__ void swiglu_backward_kernel(E* dpre, const E* pre, const E* dout, int H, size_t n,
                                       bool accumulate) {
  DeviceThread x;
  swiglu_block::backward(x, dpre, pre, dout, H, n, accumulate, block_threads(), grid_threads());
}

}  // namespace

template <typename Elem>
void swiglu_forward(cudaStream_t s, Elem* out, const Elem* pre, int N, int H) {
  const size_t n = size_t(N) * size_t(H);
  if (n == 0) return;
  swiglu_forward_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(out), bits(pre), H, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void swiglu_backward(cudaStream_t s, Elem* dpre, const Elem* pre, const Elem* dout, int N, int H,
                     bool accumulate) {
  const size_t n = size_t(N) * size_t(H);
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(dpre), bits(pre), bits(dout), H, n,
                                                        accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template void swiglu_forward<float>(cudaStream_t, float*, const float*, int, int);
template void swiglu_forward<bf16>(cudaStream_t, bf16*, const bf16*, int, int);
template void swiglu_backward<float>(cudaStream_t, float*, const float*, const float*, int, int,
                                     bool);
template void swiglu_backward<bf16>(cudaStream_t, bf16*, const bf16*, const bf16*, int, int, bool);

}  // namespace triad::cuda
