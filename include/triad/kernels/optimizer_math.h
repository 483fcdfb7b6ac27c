// The per-element optimizer updates of backend.h (PyTorch semantics), written once for the CPU
// loops and the CUDA kernels, so the two backends cannot drift apart.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define TRIAD_HOST_DEVICE __host__ __device__
#else
#define TRIAD_HOST_DEVICE
#endif

namespace triad {

// AdamW: m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;
//        p -= lr (wd p + (m / bc1) / (sqrt(v / bc2) + eps))
TRIAD_HOST_DEVICE inline void adamw_element(float& p, float grad, float& m, float& v, float lr,
                                            float beta1, float beta2, float eps, float wd,
                                            float bc1, float bc2) {
  const float mi = beta1 * m + (1.0f - beta1) * grad;
  const float vi = beta2 * v + (1.0f - beta2) * grad * grad;
  m = mi;
  v = vi;
  const float m_hat = mi / bc1;
  const float v_hat = vi / bc2;
  p -= lr * (wd * p + m_hat / (sqrtf(v_hat) + eps));
}

// SGD with momentum (dampening 0): g' = g + wd p;  buf = mu buf + g';  p -= lr buf
TRIAD_HOST_DEVICE inline void sgd_element(float& p, float grad, float& buf, float lr,
                                          float momentum, float wd) {
  const float b = momentum * buf + (grad + wd * p);
  buf = b;
  p -= lr * b;
}

// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update's sign
// from c = b1 m + (1-b1) g;  p = p (1 - lr wd) - lr sign(c);  then m = b2 m + (1-b2) g. sign(0)
// is 0 and a NaN stays NaN, as torch.sign has them.
TRIAD_HOST_DEVICE inline void lion_element(float& p, float grad, float& m, float lr, float beta1,
                                           float beta2, float wd) {
  const float c = beta1 * m + (1.0f - beta1) * grad;
  const float s = c > 0.0f ? 1.0f : c < 0.0f ? -1.0f : c;
  p = p * (1.0f - lr * wd) - lr * s;
  m = beta2 * m + (1.0f - beta2) * grad;
}

// Muon's momentum (torch.optim.Muon): buf = mu buf + g; the update to orthogonalize is
// u = g + mu buf with Nesterov momentum, else buf.
TRIAD_HOST_DEVICE inline void muon_momentum_element(float& buf, float& u, float grad, float mu,
                                                    bool nesterov) {
  const float b = mu * buf + grad;
  buf = b;
  u = nesterov ? grad + mu * b : b;
}

// Muon's step with an orthogonalized update o: p = p (1 - lr wd) - lr scale o (decoupled weight
// decay; `scale` is the shape's learning-rate adjustment).
TRIAD_HOST_DEVICE inline void muon_apply_element(float& p, float o, float lr, float wd,
                                                 float scale) {
  p = p * (1.0f - lr * wd) - (lr * scale) * o;
}

}  // namespace triad
