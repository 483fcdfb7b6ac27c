// Optimizer updates, one fused elementwise pass over parameters, gradients and state (PyTorch
// semantics; the formulas are spelled out in backend.h and match the CPU backend's).
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, float lr,
                             float beta1, float beta2, float eps, float wd, float bc1, float bc2) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    const float grad = g[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * grad;
    const float vi = beta2 * v[i] + (1.0f - beta2) * grad * grad;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / bc1;
    const float v_hat = vi / bc2;
    const float pi = p[i];
    p[i] = pi - lr * (wd * pi + m_hat / (sqrtf(v_hat) + eps));
  }
}

__global__ void sgd_kernel(float* p, const float* g, float* buf, size_t n, float lr, float momentum,
                           float wd) {
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    const float pi = p[i];
    const float grad = g[i] + wd * pi;
    const float b = momentum * buf[i] + grad;
    buf[i] = b;
    p[i] = pi - lr * b;
  }
}

}  // namespace

void adamw_update(cudaStream_t s, float* p, const float* g, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float wd, float bc1, float bc2) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n), kBlock, 0, s>>>(p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void sgd_update(cudaStream_t s, float* p, const float* g, float* buf, size_t n, float lr,
                float momentum, float wd) {
  if (n == 0) return;
  sgd_kernel<<<grid_for(n), kBlock, 0, s>>>(p, g, buf, n, lr, momentum, wd);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace triad::cuda
