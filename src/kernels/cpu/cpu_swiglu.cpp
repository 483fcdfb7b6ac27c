// SwiGLU (backend.h swiglu_forward / swiglu_backward): out = silu(gate)·up over rows of
// [gate | up], and its gradient with respect to both halves. fp32, and bf16 computed in fp32
// with each output rounded once.
#include <cmath>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {
namespace {

inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

template <class E>
void forward_rows(E* out, const E* pre, int N, int H) {
#pragma omp parallel for schedule(static) if (size_t(N) * H >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const E* gate = pre + size_t(n) * 2 * H;
    const E* up = gate + H;
    E* o = out + size_t(n) * H;
    for (int j = 0; j < H; ++j) {
      const float g = load_elem(gate + j);
      store_elem(o + j, g * sigmoid(g) * load_elem(up + j));
    }
  }
}

// d gate = dout·up·silu'(g), silu'(g) = σ(g)·(1 + g·(1 − σ(g)));  d up = dout·silu(g).
template <class E>
void backward_rows(E* dpre, const E* pre, const E* dout, int N, int H, bool accumulate) {
#pragma omp parallel for schedule(static) if (size_t(N) * H >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const E* gate = pre + size_t(n) * 2 * H;
    const E* up = gate + H;
    const E* d = dout + size_t(n) * H;
    E* dg = dpre + size_t(n) * 2 * H;
    E* du = dg + H;
    for (int j = 0; j < H; ++j) {
      const float g = load_elem(gate + j), s = sigmoid(g), dj = load_elem(d + j);
      const float vg = dj * load_elem(up + j) * s * (1.0f + g * (1.0f - s)), vu = dj * g * s;
      store_elem(dg + j, accumulate ? load_elem(dg + j) + vg : vg);
      store_elem(du + j, accumulate ? load_elem(du + j) + vu : vu);
    }
  }
}

}  // namespace

void swiglu_forward(float* out, const float* pre, int N, int H) { forward_rows(out, pre, N, H); }
void swiglu_forward(bf16_t* out, const bf16_t* pre, int N, int H) { forward_rows(out, pre, N, H); }
void swiglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                     bool accumulate) {
  backward_rows(dpre, pre, dout, N, H, accumulate);
}
void swiglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                     bool accumulate) {
  backward_rows(dpre, pre, dout, N, H, accumulate);
}

}  // namespace triad::cpu
