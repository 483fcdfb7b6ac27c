// Optimizer updates, one fused elementwise pass over parameters, gradients and state (PyTorch
// semantics; the formulas are spelled out in backend.h and match the CPU backend's).
#include "cuda_ops.cuh"
#include "triad/kernels/optimizer_math.h"

namespace triad::cuda {
namespace {

// `copy` is uniform over the grid, so its test does not diverge.
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, float lr,
                             float beta1, float beta2, float eps, float wd, float bc1, float bc2,
                             bf16* copy, float grad_scale) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    adamw_element(p[i], g[i] * grad_scale, m[i], v[i], lr, beta1, beta2, eps, wd, bc1, bc2);
    if (copy != nullptr) copy[i] = narrow<bf16>(p[i]);
  }
}

__global__ void sgd_kernel(float* p, const float* g, float* buf, size_t n, float lr, float momentum,
                           float wd, bf16* copy, float grad_scale) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    sgd_element(p[i], g[i] * grad_scale, buf[i], lr, momentum, wd);
    if (copy != nullptr) copy[i] = narrow<bf16>(p[i]);
  }
}

}  // namespace

void adamw_update(cudaStream_t s, float* p, const float* g, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float wd, float bc1, float bc2, bf16* copy,
                  float grad_scale) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n), kBlock, 0, s>>>(p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2,
                                              copy, grad_scale);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void sgd_update(cudaStream_t s, float* p, const float* g, float* buf, size_t n, float lr,
                float momentum, float wd, bf16* copy, float grad_scale) {
  if (n == 0) return;
  sgd_kernel<<<grid_for(n), kBlock, 0, s>>>(p, g, buf, n, lr, momentum, wd, copy, grad_scale);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace triad::cuda
