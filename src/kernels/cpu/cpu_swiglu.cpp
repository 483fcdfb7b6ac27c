// The gated MLP activations over rows of [gate | up] (backend.h swiglu_* and geglu_*):
// SwiGLU's out = silu(gate)·up and GeGLU's gelu(gate)·up (GELU's tanh approximation), and their
// gradients with respect to both halves; SwiGLU in gpt-oss's shape too (GluShape: a clamped
// gate's g·σ(α·g) times the clamped up plus an offset). fp32, and bf16 computed in fp32 with each
// output rounded once.
#include <algorithm>
#include <cmath>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {
namespace {

inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

// silu(g) = g·σ(g); silu'(g) = σ(g)·(1 + g·(1 − σ(g))). times(a, g) = a·silu(g) and
// grad_times(a, g) = a·silu'(g), multiplied left to right (as SwiGLU always was). up(u) is what
// multiplies the gate's activation, up_grad(u) its derivative: u and 1 but for ClampedSilu.
struct Silu {
  static float value(float g) { return g * sigmoid(g); }
  static float times(float a, float g) { return a * g * sigmoid(g); }
  static float grad_times(float a, float g) {
    const float s = sigmoid(g);
    return a * s * (1.0f + g * (1.0f - s));
  }
  static float up(float u) { return u; }
  static float up_grad(float) { return 1.0f; }
};

// gpt-oss's (GluShape): value(g) = g'·σ(α·g') with g' = min(g, limit), and up(u) =
// clamp(u, −limit, limit) + offset (limit 0: no clamps); a clamped input's gradient is 0.
struct ClampedSilu {
  GluShape s;
  float gate(float g) const { return s.limit > 0.0f && g > s.limit ? s.limit : g; }
  float value(float g) const {
    const float c = gate(g);
    return c * sigmoid(s.alpha * c);
  }
  float times(float a, float g) const { return a * value(g); }
  float grad_times(float a, float g) const {
    if (s.limit > 0.0f && g > s.limit) return 0.0f;
    const float sg = sigmoid(s.alpha * g);
    return a * sg * (1.0f + s.alpha * g * (1.0f - sg));
  }
  float up(float u) const {
    return (s.limit > 0.0f ? std::min(std::max(u, -s.limit), s.limit) : u) + s.offset;
  }
  float up_grad(float u) const { return s.limit > 0.0f && (u > s.limit || u < -s.limit) ? 0 : 1; }
};

// gelu(g) = ½·g·(1 + t), t = tanh(√(2/π)·(g + 0.044715·g³));
// gelu'(g) = ½(1 + t) + ½·g·(1 − t²)·√(2/π)·(1 + 3·0.044715·g²).
struct Gelu {
  static constexpr float kSqrt2OverPi = 0.7978845608028654f;
  static constexpr float kCubic = 0.044715f;
  static float value(float g) {
    return 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * (g + kCubic * g * g * g)));
  }
  static float times(float a, float g) { return a * value(g); }
  static float grad_times(float a, float g) {
    const float t = std::tanh(kSqrt2OverPi * (g + kCubic * g * g * g));
    return a * (0.5f * (1.0f + t) +
                0.5f * g * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kCubic * g * g));
  }
  static float up(float u) { return u; }
  static float up_grad(float) { return 1.0f; }
};

template <class Act, class E>
void forward_rows(E* out, const E* pre, int N, int H, const Act& act = {}) {
#pragma omp parallel for schedule(static) if (size_t(N) * H >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const E* gate = pre + size_t(n) * 2 * H;
    const E* up = gate + H;
    E* o = out + size_t(n) * H;
    for (int j = 0; j < H; ++j)
      store_elem(o + j, act.value(load_elem(gate + j)) * act.up(load_elem(up + j)));
  }
}

// d gate = dout·up·act'(g);  d up = dout·act(g) (times up's derivative).
template <class Act, class E>
void backward_rows(E* dpre, const E* pre, const E* dout, int N, int H, bool accumulate,
                   const Act& act = {}) {
#pragma omp parallel for schedule(static) if (size_t(N) * H >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const E* gate = pre + size_t(n) * 2 * H;
    const E* up = gate + H;
    const E* d = dout + size_t(n) * H;
    E* dg = dpre + size_t(n) * 2 * H;
    E* du = dg + H;
    for (int j = 0; j < H; ++j) {
      const float g = load_elem(gate + j), dj = load_elem(d + j), u = load_elem(up + j);
      const float vg = act.grad_times(dj * act.up(u), g), vu = act.times(dj, g) * act.up_grad(u);
      store_elem(dg + j, accumulate ? load_elem(dg + j) + vg : vg);
      store_elem(du + j, accumulate ? load_elem(du + j) + vu : vu);
    }
  }
}

}  // namespace

// SwiGLU as it always was unless the shape asks for another (bit for bit the same).
template <class E>
void swiglu_rows(E* out, const E* pre, int N, int H, GluShape glu) {
  if (glu.plain())
    forward_rows<Silu>(out, pre, N, H);
  else
    forward_rows(out, pre, N, H, ClampedSilu{glu});
}
template <class E>
void swiglu_backward_rows(E* dpre, const E* pre, const E* dout, int N, int H, bool accumulate,
                          GluShape glu) {
  if (glu.plain())
    backward_rows<Silu>(dpre, pre, dout, N, H, accumulate);
  else
    backward_rows(dpre, pre, dout, N, H, accumulate, ClampedSilu{glu});
}

void swiglu_forward(float* out, const float* pre, int N, int H, GluShape glu) {
  swiglu_rows(out, pre, N, H, glu);
}
void swiglu_forward(bf16_t* out, const bf16_t* pre, int N, int H, GluShape glu) {
  swiglu_rows(out, pre, N, H, glu);
}
void swiglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                     bool accumulate, GluShape glu) {
  swiglu_backward_rows(dpre, pre, dout, N, H, accumulate, glu);
}
void swiglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                     bool accumulate, GluShape glu) {
  swiglu_backward_rows(dpre, pre, dout, N, H, accumulate, glu);
}

void geglu_forward(float* out, const float* pre, int N, int H) {
  forward_rows<Gelu>(out, pre, N, H);
}
void geglu_forward(bf16_t* out, const bf16_t* pre, int N, int H) {
  forward_rows<Gelu>(out, pre, N, H);
}
void geglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                    bool accumulate) {
  backward_rows<Gelu>(dpre, pre, dout, N, H, accumulate);
}
void geglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                    bool accumulate) {
  backward_rows<Gelu>(dpre, pre, dout, N, H, accumulate);
}

}  // namespace triad::cpu
