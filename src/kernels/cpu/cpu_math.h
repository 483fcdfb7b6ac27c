// Small numeric helpers shared by the CPU kernels.
//
// exp and tanh are written with GCC/Clang vector extensions (8 floats, one AVX register)
// rather than as scalar functions in auto-vectorized loops: glibc's expf/tanhf only vectorize
// under -ffast-math (which we avoid, as it would also reorder our reductions), and GCC does not
// vectorize a hand-written scalar exp either, because jump threading turns its input clamp into
// branches. Without AVX the compiler lowers the same code to SSE or scalar instructions.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "triad/core/bf16.h"

namespace triad::cpu {

// An element of an fp32 or bf16 buffer as a float, and a float stored into one (bf16: rounded
// to nearest even): what elementwise kernels templated on the element type read and write.
inline float load_elem(const float* p) { return *p; }
inline float load_elem(const bf16_t* p) { return to_float(*p); }
inline void store_elem(float* p, float v) { *p = v; }
inline void store_elem(bf16_t* p, float v) { *p = triad::to_bf16(v); }

// Loops shorter than this run on one thread: starting an OpenMP team costs a few microseconds,
// more than the work of a bias- or LayerNorm-sized vector.
inline constexpr size_t kParallelMin = size_t{1} << 14;

using f32x8 = float __attribute__((vector_size(32)));
using i32x8 = int32_t __attribute__((vector_size(32)));

inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }
inline f32x8 splat8(float x) { return f32x8{} + x; }

// exp(x), relative error within ~2 ulp for x in [-87, 88]. Below −87 the result is exactly 0
// (true exp would be a denormal there or underflow soon after: denormals are not worth their
// 100x slowdown in the gemms that consume softmax probabilities); above 88 it saturates at
// e^88 instead of overflowing. Cody-Waite range reduction x = n·ln2 + r with |r| <= ~ln2/2,
// a degree-7 polynomial for e^r (Cephes coefficients), and 2^n assembled in the exponent bits.
inline f32x8 exp8(f32x8 x_in) {
  f32x8 x = x_in < -87.0f ? splat8(-87.0f) : x_in;
  x = x > 88.0f ? splat8(88.0f) : x;
  // n = round(x / ln2): adding 1.5·2^23 pushes the fraction bits out of the mantissa, and the
  // FPU rounds to nearest.
  constexpr float kRoundMagic = 12582912.0f;
  const f32x8 n = (x * 1.44269504088896341f + kRoundMagic) - kRoundMagic;
  f32x8 r = x - n * 0.693359375f;  // ln2 split into an exact high part ...
  r = r + n * 2.12194440e-4f;      // ... and the remainder
  f32x8 p = splat8(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const i32x8 biased = __builtin_convertvector(n, i32x8) + 127;
  const f32x8 result = p * std::bit_cast<f32x8>(biased << 23);
  return x_in < -87.0f ? splat8(0.0f) : result;
}

// tanh(u) = 1 − 2/(e^{2u} + 1). Absolute error ~1e-7 everywhere (the relative error near 0 is
// larger, but GELU only uses 1 ± tanh and 1 − tanh², where the absolute error is what counts).
// Saturates cleanly to ±1 because exp8 neither overflows nor returns denormals.
inline f32x8 tanh8(f32x8 u) { return 1.0f - 2.0f / (exp8(2.0f * u) + 1.0f); }

// Softmax outputs and their gradients below this magnitude are flushed to 0. Such values cannot
// change any float sum they enter next to the row's dominant entries (those are >= 1/T or
// 1/V times the same factors), but their products in the following gemms would be denormals,
// which the FPU handles ~100x slower: measured, attention backward went from 2.3 to 13 ms
// once the attention logits spanned a range of ~90.
inline constexpr float kFlushBelow = 1e-30f;

inline f32x8 flush_tiny8(f32x8 x) {
  return (x < kFlushBelow) & (x > -kFlushBelow) ? splat8(0.0f) : x;
}
inline float flush_tiny(float x) { return std::abs(x) < kFlushBelow ? 0.0f : x; }

// x[j] = flush_tiny(x[j] · s) for j < n.
inline void scale_flush_inplace(float* x, size_t n, float s) {
  const size_t n8 = n / 8 * 8;
  for (size_t j = 0; j < n8; j += 8) store8(x + j, flush_tiny8(load8(x + j) * s));
  for (size_t j = n8; j < n; ++j) x[j] = flush_tiny(x[j] * s);
}

// Scalar forms, bit-identical to the vector ones (used for loop tails and in tests).
inline float exp_approx(float x) { return exp8(splat8(x))[0]; }
inline float tanh_approx(float u) { return tanh8(splat8(u))[0]; }

// x[j] = exp(x[j] − shift) for j < n (softmax numerators).
inline void exp_shifted_inplace(float* x, size_t n, float shift) {
  const size_t n8 = n / 8 * 8;
  for (size_t j = 0; j < n8; j += 8) store8(x + j, exp8(load8(x + j) - shift));
  for (size_t j = n8; j < n; ++j) x[j] = exp_approx(x[j] - shift);
}

}  // namespace triad::cpu
