// The gated MLP activations (backend.h swiglu_* and geglu_*; cuda_swiglu.cu launches them) as
// block programs (see block_program.h), so that the CPU tests run the same code through the SIMT
// emulator (test_swiglu_emulated) against the CPU backend. Over rows of [gate | up]: SwiGLU's
// silu(gate)·up and GeGLU's gelu(gate)·up (GELU's tanh approximation, Gemma's), and SwiGLU in
// gpt-oss's shape (ClampedSilu: backend.h's GluShape). One thread per
// hidden unit of a row, reading its gate and up values; the CPU backend's formulas
// (cpu_swiglu.cpp) with the accurate exp and tanh, computed in fp32, each output rounded once.
// Elem is float or uint16_t (bf16 bits).
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::swiglu_block {

template <class X>
TRIAD_BLOCK_FN float sigmoid(X& x, float g) {
  return 1.0f / (1.0f + x.exp(-g));
}

// silu(g) = g·σ(g); silu'(g) = σ(g)·(1 + g·(1 − σ(g))). times(a, g) = a·silu(g) and
// grad_times(a, g) = a·silu'(g), multiplied left to right (the CPU backend's order). up(u) is what
// multiplies the gate's activation and up_grad(u) its derivative: u and 1 but for ClampedSilu.
struct Silu {
  template <class X>
  TRIAD_BLOCK_FN static float value(X& x, float g) {
    return g * sigmoid(x, g);
  }
  template <class X>
  TRIAD_BLOCK_FN static float times(X& x, float a, float g) {
    return a * g * sigmoid(x, g);
  }
  template <class X>
  TRIAD_BLOCK_FN static float grad_times(X& x, float a, float g) {
    const float s = sigmoid(x, g);
    return a * s * (1.0f + g * (1.0f - s));
  }
  TRIAD_BLOCK_FN static float up(float u) { return u; }
  TRIAD_BLOCK_FN static float up_grad(float) { return 1.0f; }
};

// gpt-oss's SwiGLU (backend.h's GluShape, its fields copied here: this header needs no other):
// value(g) = g'·σ(alpha·g') with g' = min(g, limit), up(u) = clamp(u, −limit, limit) + offset
// (limit 0: no clamps); a clamped input's gradient is 0 (one at the limit passes).
struct ClampedSilu {
  float alpha, limit, offset;
  template <class X>
  TRIAD_BLOCK_FN float value(X& x, float g) const {
    const float c = limit > 0.0f && g > limit ? limit : g;
    return c * sigmoid(x, alpha * c);
  }
  template <class X>
  TRIAD_BLOCK_FN float times(X& x, float a, float g) const {
    return a * value(x, g);
  }
  template <class X>
  TRIAD_BLOCK_FN float grad_times(X& x, float a, float g) const {
    if (limit > 0.0f && g > limit) return 0.0f;
    const float s = sigmoid(x, alpha * g);
    return a * s * (1.0f + alpha * g * (1.0f - s));
  }
  TRIAD_BLOCK_FN float up(float u) const {
    const float c = limit > 0.0f ? (u > limit ? limit : u < -limit ? -limit : u) : u;
    return c + offset;
  }
  TRIAD_BLOCK_FN float up_grad(float u) const {
    return limit > 0.0f && (u > limit || u < -limit) ? 0.0f : 1.0f;
  }
};

// gelu(g) = ½·g·(1 + t), t = tanh(√(2/π)·(g + 0.044715·g³));
// gelu'(g) = ½(1 + t) + ½·g·(1 − t²)·√(2/π)·(1 + 3·0.044715·g²).
struct Gelu {
  static constexpr float kSqrt2OverPi = 0.7978845608028654f;
  static constexpr float kCubic = 0.044715f;
  template <class X>
  TRIAD_BLOCK_FN static float value(X& x, float g) {
    return 0.5f * g * (1.0f + x.tanh(kSqrt2OverPi * (g + kCubic * g * g * g)));
  }
  template <class X>
  TRIAD_BLOCK_FN static float times(X& x, float a, float g) {
    return a * value(x, g);
  }
  template <class X>
  TRIAD_BLOCK_FN static float grad_times(X& x, float a, float g) {
    const float t = x.tanh(kSqrt2OverPi * (g + kCubic * g * g * g));
    return a * (0.5f * (1.0f + t) +
                0.5f * g * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kCubic * g * g));
  }
  TRIAD_BLOCK_FN static float up(float u) { return u; }
  TRIAD_BLOCK_FN static float up_grad(float) { return 1.0f; }
};

// out[row, j] = act(gate) · up, gate = pre[row, j], up = pre[row, H + j]; k = row·H + j < n.
template <class Act, class X, class Elem>
TRIAD_BLOCK_FN void gated_forward(X& x, Elem* out, const Elem* pre, int H, size_t n, int threads,
                                  size_t stride, const Act& act = {}) {
  TRIAD_BLOCK_STRIDE_LOOP(x, k, n, threads, stride) {
    const size_t row = k / size_t(H), j = k % size_t(H);
    const Elem* gate = pre + row * 2 * size_t(H);
    const float g = load(x, gate + j);
    store(x, out + k, act.value(x, g) * act.up(load(x, gate + size_t(H) + j)));
  }
}

// dpre's gate and up halves from dout (written, or added with accumulate):
// d gate = dout·up·act'(g), d up = dout·act(g) (times up's derivative).
template <class Act, class X, class Elem>
TRIAD_BLOCK_FN void gated_backward(X& x, Elem* dpre, const Elem* pre, const Elem* dout, int H,
                                   size_t n, bool accumulate, int threads, size_t stride,
                                   const Act& act = {}) {
  TRIAD_BLOCK_STRIDE_LOOP(x, k, n, threads, stride) {
    const size_t row = k / size_t(H), j = k % size_t(H);
    const size_t at = row * 2 * size_t(H) + j;
    const float g = load(x, pre + at), up = load(x, pre + at + size_t(H));
    const float d = load(x, dout + k);
    const float vg = act.grad_times(x, d * act.up(up), g);
    const float vu = act.times(x, d, g) * act.up_grad(up);
    store(x, dpre + at, accumulate ? load(x, dpre + at) + vg : vg);
    store(x, dpre + at + size_t(H), accumulate ? load(x, dpre + at + size_t(H)) + vu : vu);
  }
}

// SwiGLU.
template <class X, class Elem>
TRIAD_BLOCK_FN void forward(X& x, Elem* out, const Elem* pre, int H, size_t n, int threads,
                            size_t stride) {
  gated_forward<Silu>(x, out, pre, H, n, threads, stride);
}
template <class X, class Elem>
TRIAD_BLOCK_FN void backward(X& x, Elem* dpre, const Elem* pre, const Elem* dout, int H, size_t n,
                             bool accumulate, int threads, size_t stride) {
  gated_backward<Silu>(x, dpre, pre, dout, H, n, accumulate, threads, stride);
}

// gpt-oss's SwiGLU.
template <class X, class Elem>
TRIAD_BLOCK_FN void clamped_forward(X& x, Elem* out, const Elem* pre, int H, size_t n, int threads,
                                    size_t stride, ClampedSilu act) {
  gated_forward<ClampedSilu>(x, out, pre, H, n, threads, stride, act);
}
template <class X, class Elem>
TRIAD_BLOCK_FN void clamped_backward(X& x, Elem* dpre, const Elem* pre, const Elem* dout, int H,
                                     size_t n, bool accumulate, int threads, size_t stride,
                                     ClampedSilu act) {
  gated_backward<ClampedSilu>(x, dpre, pre, dout, H, n, accumulate, threads, stride, act);
}

// GeGLU.
template <class X, class Elem>
TRIAD_BLOCK_FN void geglu_forward(X& x, Elem* out, const Elem* pre, int H, size_t n, int threads,
                                  size_t stride) {
  gated_forward<Gelu>(x, out, pre, H, n, threads, stride);
}
template <class X, class Elem>
TRIAD_BLOCK_FN void geglu_backward(X& x, Elem* dpre, const Elem* pre, const Elem* dout, int H,
                                   size_t n, bool accumulate, int threads, size_t stride) {
  gated_backward<Gelu>(x, dpre, pre, dout, H, n, accumulate, threads, stride);
}

}  // namespace triad::swiglu_block
