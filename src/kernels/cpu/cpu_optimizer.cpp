// Optimizer updates, one fused pass over parameters, gradients and state (PyTorch semantics;
// the formulas are spelled out in backend.h).
#include "cpu_math.h"
#include "cpu_ops.h"
#include "triad/kernels/optimizer_math.h"

namespace triad::cpu {

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, float bc1, float bc2, bf16_t* copy,
                  float grad_scale) {
  if (copy == nullptr) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i)
      adamw_element(p[i], g[i] * grad_scale, m[i], v[i], lr, beta1, beta2, eps, wd, bc1, bc2);
  } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
      adamw_element(p[i], g[i] * grad_scale, m[i], v[i], lr, beta1, beta2, eps, wd, bc1, bc2);
      copy[i] = triad::to_bf16(p[i]);
    }
  }
}

void sgd_update(float* p, const float* g, float* buf, size_t n, float lr, float momentum, float wd,
                bf16_t* copy, float grad_scale) {
  if (copy == nullptr) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) sgd_element(p[i], g[i] * grad_scale, buf[i], lr, momentum, wd);
  } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
      sgd_element(p[i], g[i] * grad_scale, buf[i], lr, momentum, wd);
      copy[i] = triad::to_bf16(p[i]);
    }
  }
}

void lion_update(float* p, const float* g, float* m, size_t n, float lr, float beta1, float beta2,
                 float wd, bf16_t* copy, float grad_scale) {
  if (copy == nullptr) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i)
      lion_element(p[i], g[i] * grad_scale, m[i], lr, beta1, beta2, wd);
  } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
      lion_element(p[i], g[i] * grad_scale, m[i], lr, beta1, beta2, wd);
      copy[i] = triad::to_bf16(p[i]);
    }
  }
}

void muon_momentum(float* buf, float* u, const float* g, size_t n, float mu, bool nesterov,
                   float grad_scale) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i)
    muon_momentum_element(buf[i], u[i], g[i] * grad_scale, mu, nesterov);
}

void muon_apply(float* p, const float* o, size_t n, float lr, float wd, float scale, bf16_t* copy) {
  if (copy == nullptr) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) muon_apply_element(p[i], o[i], lr, wd, scale);
  } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
      muon_apply_element(p[i], o[i], lr, wd, scale);
      copy[i] = triad::to_bf16(p[i]);
    }
  }
}

}  // namespace triad::cpu
