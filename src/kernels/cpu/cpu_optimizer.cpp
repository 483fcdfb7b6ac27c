// Optimizer updates, one fused pass over parameters, gradients and state (PyTorch semantics;
// the formulas are spelled out in backend.h).
#include <cmath>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, float bc1, float bc2) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const float grad = g[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * grad;
    const float vi = beta2 * v[i] + (1.0f - beta2) * grad * grad;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / bc1;
    const float v_hat = vi / bc2;
    p[i] -= lr * (wd * p[i] + m_hat / (std::sqrt(v_hat) + eps));
  }
}

void sgd_update(float* p, const float* g, float* buf, size_t n, float lr, float momentum,
                float wd) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const float grad = g[i] + wd * p[i];
    const float b = momentum * buf[i] + grad;
    buf[i] = b;
    p[i] -= lr * b;
  }
}

}  // namespace triad::cpu
