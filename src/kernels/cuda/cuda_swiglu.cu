// The gated MLP activations (backend.h swiglu_* and geglu_*): the block programs of
// swiglu_block.h (which describes them), launched with DeviceThread. Memory-bound elementwise
// passes.
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "swiglu_block.h"

namespace triad::cuda {
namespace {

// The activation (Act: Silu, Gelu, or ClampedSilu with its shape) is passed by value.
template <class Act, typename E>
__global__ void gated_forward_kernel(E* out, const E* pre, int H, size_t n, Act act) {
  DeviceThread x;
  swiglu_block::gated_forward<Act>(x, out, pre, H, n, block_threads(), grid_threads(), act);
}

template <class Act, typename E>
__global__ void gated_backward_kernel(E* dpre, const E* pre, const E* dout, int H, size_t n,
                                      bool accumulate, Act act) {
  DeviceThread x;
  swiglu_block::gated_backward<Act>(x, dpre, pre, dout, H, n, accumulate, block_threads(),
                                    grid_threads(), act);
}

template <class Act, typename Elem>
void gated_forward(cudaStream_t s, Elem* out, const Elem* pre, int N, int H, Act act = {}) {
  const size_t n = size_t(N) * size_t(H);
  if (n == 0) return;
  gated_forward_kernel<Act><<<grid_for(n), kBlock, 0, s>>>(bits(out), bits(pre), H, n, act);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <class Act, typename Elem>
void gated_backward(cudaStream_t s, Elem* dpre, const Elem* pre, const Elem* dout, int N, int H,
                    bool accumulate, Act act = {}) {
  const size_t n = size_t(N) * size_t(H);
  if (n == 0) return;
  gated_backward_kernel<Act>
      <<<grid_for(n), kBlock, 0, s>>>(bits(dpre), bits(pre), bits(dout), H, n, accumulate, act);
  TRIAD_CUDA_CHECK_LAUNCH();
}

swiglu_block::ClampedSilu clamped(GluShape glu) {
  return swiglu_block::ClampedSilu{glu.alpha, glu.limit, glu.offset};
}

}  // namespace

template <typename Elem>
void swiglu_forward(cudaStream_t s, Elem* out, const Elem* pre, int N, int H, GluShape glu) {
  if (glu.plain())
    gated_forward<swiglu_block::Silu>(s, out, pre, N, H);
  else
    gated_forward(s, out, pre, N, H, clamped(glu));
}

template <typename Elem>
void swiglu_backward(cudaStream_t s, Elem* dpre, const Elem* pre, const Elem* dout, int N, int H,
                     bool accumulate, GluShape glu) {
  if (glu.plain())
    gated_backward<swiglu_block::Silu>(s, dpre, pre, dout, N, H, accumulate);
  else
    gated_backward(s, dpre, pre, dout, N, H, accumulate, clamped(glu));
}

template <typename Elem>
void geglu_forward(cudaStream_t s, Elem* out, const Elem* pre, int N, int H) {
  gated_forward<swiglu_block::Gelu>(s, out, pre, N, H);
}

template <typename Elem>
void geglu_backward(cudaStream_t s, Elem* dpre, const Elem* pre, const Elem* dout, int N, int H,
                    bool accumulate) {
  gated_backward<swiglu_block::Gelu>(s, dpre, pre, dout, N, H, accumulate);
}

#define TRIAD_INSTANTIATE_GATED(Elem)                                                          \
  template void swiglu_forward<Elem>(cudaStream_t, Elem*, const Elem*, int, int, GluShape);    \
  template void swiglu_backward<Elem>(cudaStream_t, Elem*, const Elem*, const Elem*, int, int, \
                                      bool, GluShape);                                         \
  template void geglu_forward<Elem>(cudaStream_t, Elem*, const Elem*, int, int);               \
  template void geglu_backward<Elem>(cudaStream_t, Elem*, const Elem*, const Elem*, int, int, bool);
TRIAD_INSTANTIATE_GATED(float)
TRIAD_INSTANTIATE_GATED(bf16)
#undef TRIAD_INSTANTIATE_GATED

}  // namespace triad::cuda
