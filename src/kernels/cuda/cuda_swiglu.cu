// SwiGLU (backend.h swiglu_forward / swiglu_backward): one thread per hidden unit of a row,
// reading its gate and up values; the formulas of the CPU backend (cpu_swiglu.cpp) with the
// accurate expf, computed in fp32, each output rounded once. Memory-bound elementwise passes.
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename Elem>
__global__ void swiglu_forward_kernel(Elem* out, const Elem* pre, int H, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(k, n) {  // k = row·H + j
    const size_t row = k / size_t(H), j = k % size_t(H);
    const Elem* gate = pre + row * 2 * size_t(H);
    const float g = widen(gate[j]);
    out[k] = narrow<Elem>(g * sigmoid(g) * widen(gate[size_t(H) + j]));
  }
}

template <typename Elem>
__global__ void swiglu_backward_kernel(Elem* dpre, const Elem* pre, const Elem* dout, int H,
                                       size_t n, bool accumulate) {
  TRIAD_GRID_STRIDE_LOOP(k, n) {
    const size_t row = k / size_t(H), j = k % size_t(H);
    const size_t at = row * 2 * size_t(H) + j;
    const float g = widen(pre[at]), up = widen(pre[at + size_t(H)]), s = sigmoid(g);
    const float d = widen(dout[k]);
    const float vg = d * up * s * (1.0f + g * (1.0f - s)), vu = d * g * s;
    dpre[at] = narrow<Elem>(accumulate ? widen(dpre[at]) + vg : vg);
    dpre[at + size_t(H)] = narrow<Elem>(accumulate ? widen(dpre[at + size_t(H)]) + vu : vu);
  }
}

}  // namespace

template <typename Elem>
void swiglu_forward(cudaStream_t s, Elem* out, const Elem* pre, int N, int H) {
  const size_t n = size_t(N) * size_t(H);
  if (n == 0) return;
  swiglu_forward_kernel<<<grid_for(n), kBlock, 0, s>>>(out, pre, H, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void swiglu_backward(cudaStream_t s, Elem* dpre, const Elem* pre, const Elem* dout, int N, int H,
                     bool accumulate) {
  const size_t n = size_t(N) * size_t(H);
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(dpre, pre, dout, H, n, accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template void swiglu_forward<float>(cudaStream_t, float*, const float*, int, int);
template void swiglu_forward<bf16>(cudaStream_t, bf16*, const bf16*, int, int);
template void swiglu_backward<float>(cudaStream_t, float*, const float*, const float*, int, int,
                                     bool);
template void swiglu_backward<bf16>(cudaStream_t, bf16*, const bf16*, const bf16*, int, int, bool);

}  // namespace triad::cuda
