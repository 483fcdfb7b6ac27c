// Elementwise ops: GELU (tanh approximation) forward/backward, residual add, accumulate, scale.
// Memory-bound grid-stride loops; the formulas are those of the CPU backend
// (src/kernels/cpu/cpu_elementwise.cpp) with the accurate tanhf.
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

// gelu(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
__global__ void gelu_forward_kernel(float* out, const float* inp, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    const float x = inp[i];
    const float t = tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
    out[i] = 0.5f * x * (1.0f + t);
  }
}

// d gelu/dx = ½(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²);  dinp += that · dout
__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    const float x = inp[i];
    const float t = tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
    const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
    const float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du_dx;
    dinp[i] += grad * dout[i];
  }
}

__global__ void add_kernel(float* out, const float* a, const float* b, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) { out[i] = a[i] + b[i]; }
}

__global__ void accumulate_kernel(float* dst, const float* src, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) { dst[i] += src[i]; }
}

__global__ void scale_kernel(float* x, float factor, size_t n) {
  TRIAD_GRID_STRIDE_LOOP(i, n) { x[i] *= factor; }
}

}  // namespace

void gelu_forward(cudaStream_t s, float* out, const float* inp, size_t n) {
  if (n == 0) return;
  gelu_forward_kernel<<<grid_for(n), kBlock, 0, s>>>(out, inp, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void gelu_backward(cudaStream_t s, float* dinp, const float* inp, const float* dout, size_t n) {
  if (n == 0) return;
  gelu_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(dinp, inp, dout, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void add(cudaStream_t s, float* out, const float* a, const float* b, size_t n) {
  if (n == 0) return;
  add_kernel<<<grid_for(n), kBlock, 0, s>>>(out, a, b, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void accumulate(cudaStream_t s, float* dst, const float* src, size_t n) {
  if (n == 0) return;
  accumulate_kernel<<<grid_for(n), kBlock, 0, s>>>(dst, src, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void scale(cudaStream_t s, float* x, float factor, size_t n) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kBlock, 0, s>>>(x, factor, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace triad::cuda
