// Elementwise ops: GELU (tanh approximation) forward/backward, residual add, accumulate, scale,
// the logits' soft cap, and the float ↔ bf16 conversions. Memory-bound grid-stride loops; the
// formulas are those of the CPU backend (src/kernels/cpu/cpu_elementwise.cpp) with the accurate
// tanhf. Templated on the storage type (float or bf16): always computed in fp32, each output
// rounded once.
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

// gelu(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
template <typename Elem>
__global__ void gelu_forward_kernel(Elem* out, const Elem* inp, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    const float x = widen(inp[i]);
    const float t = tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
    out[i] = narrow<Elem>(0.5f * x * (1.0f + t));
  }
}

// d gelu/dx = ½(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²);  dinp += that · dout
template <typename Elem>
__global__ void gelu_backward_kernel(Elem* dinp, const Elem* inp, const Elem* dout, size_t n,
                                     bool accumulate) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    const float x = widen(inp[i]);
    const float t = tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
    const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
    const float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du_dx;
    const float g = grad * widen(dout[i]);
    dinp[i] = narrow<Elem>(accumulate ? widen(dinp[i]) + g : g);
  }
}

template <typename Elem>
__global__ void add_kernel(Elem* out, const Elem* a, const Elem* b, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) { out[i] = narrow<Elem>(widen(a[i]) + widen(b[i])); }
}

template <typename Elem>
__global__ void accumulate_kernel(Elem* dst, const Elem* src, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) { dst[i] = narrow<Elem>(widen(dst[i]) + widen(src[i])); }
}

// x = c·tanh(mult·x/c), or mult·x with c = 0 (model.logit_softcap, μP's output multiplier; the
// backward is in the cross-entropy kernels).
template <typename Elem>
__global__ void scale_cap_logits_kernel(Elem* x, size_t n, float mult, float c) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    const float y = mult * widen(x[i]);
    x[i] = narrow<Elem>(c > 0.0f ? c * tanhf(y / c) : y);
  }
}

__global__ void scale_kernel(float* x, float factor, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) { x[i] *= factor; }
}

template <typename Dst, typename Src>
__global__ void convert_kernel(Dst* dst, const Src* src, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) { dst[i] = narrow<Dst>(widen(src[i])); }
}

}  // namespace

template <typename Elem>
void gelu_forward(cudaStream_t s, Elem* out, const Elem* inp, size_t n) {
  if (n == 0) return;
  gelu_forward_kernel<<<grid_for(n), kBlock, 0, s>>>(out, inp, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void gelu_backward(cudaStream_t s, Elem* dinp, const Elem* inp, const Elem* dout, size_t n,
                   bool accumulate) {
  if (n == 0) return;
  gelu_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(dinp, inp, dout, n, accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void add(cudaStream_t s, Elem* out, const Elem* a, const Elem* b, size_t n) {
  if (n == 0) return;
  add_kernel<<<grid_for(n), kBlock, 0, s>>>(out, a, b, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void accumulate(cudaStream_t s, Elem* dst, const Elem* src, size_t n) {
  if (n == 0) return;
  accumulate_kernel<<<grid_for(n), kBlock, 0, s>>>(dst, src, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void scale_cap_logits(cudaStream_t s, Elem* x, size_t n, float mult, float c) {
  if (n == 0) return;
  scale_cap_logits_kernel<<<grid_for(n), kBlock, 0, s>>>(x, n, mult, c);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void scale(cudaStream_t s, float* x, float factor, size_t n) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kBlock, 0, s>>>(x, factor, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Dst, typename Src>
void convert(cudaStream_t s, Dst* dst, const Src* src, size_t n) {
  if (n == 0) return;
  convert_kernel<<<grid_for(n), kBlock, 0, s>>>(dst, src, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

#define TRIAD_INSTANTIATE_ELEMENTWISE(Elem)                                                       \
  template void gelu_forward<Elem>(cudaStream_t, Elem*, const Elem*, size_t);                     \
  template void gelu_backward<Elem>(cudaStream_t, Elem*, const Elem*, const Elem*, size_t, bool); \
  template void add<Elem>(cudaStream_t, Elem*, const Elem*, const Elem*, size_t);                 \
  template void accumulate<Elem>(cudaStream_t, Elem*, const Elem*, size_t);                       \
  template void scale_cap_logits<Elem>(cudaStream_t, Elem*, size_t, float, float);
TRIAD_INSTANTIATE_ELEMENTWISE(float)
TRIAD_INSTANTIATE_ELEMENTWISE(bf16)
#undef TRIAD_INSTANTIATE_ELEMENTWISE

template void convert<bf16, float>(cudaStream_t, bf16*, const float*, size_t);
template void convert<float, bf16>(cudaStream_t, float*, const bf16*, size_t);

}  // namespace triad::cuda
