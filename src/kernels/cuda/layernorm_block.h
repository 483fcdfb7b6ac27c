// LayerNorm of bf16 rows, one warp per row, as block programs (see block_program.h): the GPU
// kernels of cuda_layernorm.cu for bf16 rows whose width C is a multiple of 8 (up to 8·32·kVec)
// with 16-byte aligned rows, and the CPU test test_layernorm_emulated.
//
// A warp holds its row in registers (lane l: the 8-element vectors l, l + 32, ...), so the row
// is read once and written once, and the sums are warp shuffles: no shared memory, no block
// barrier. The arithmetic is that of the other LayerNorm kernels (cuda_layernorm.cu, and the CPU
// backend): mean and variance as two passes in double, then in fp32
//   out = round((x − m)·r·w + b),  m = float(μ), r = float(1/sqrt(var + 1e-5))
//   dx  = round(dx + r·(g − mean(g) − x̂·mean(g·x̂))),  g = dout·w, x̂ = (x − m)·r
// with the means of g and g·x̂ summed in double. RMSNorm (backend.h: mean null, bias null): m = 0
// (μ not summed), no bias, and no mean(g) term.
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::layernorm {

constexpr int kWarps = 8;  // rows per block
constexpr int kThreads = 32 * kWarps;

// This lane's vectors of a row at p: v[i] = p[8·(lane + 32i) ..], for the nvec vectors of it.
template <int kVec, class X>
TRIAD_BLOCK_FN void load_row(X& x, Vec16 (&v)[kVec], const uint16_t* p, int nvec) {
  const int lane = x.thread() % 32;
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i)
    if (lane + 32 * i < nvec) v[i] = x.load16(p + 8 * size_t(lane + 32 * i));
}

// Forward of row blockIdx.x·kWarps + warp of inp [N, C] into out (bf16 bits), mean and rstd. With
// a != nullptr the row is first the sum round(a + b) of two rows, stored to inp (the residual
// stream of residual_layernorm_forward).
template <int kVec, class X>
TRIAD_BLOCK_FN void forward_row(X& x, uint16_t* out, float* mean, float* rstd, uint16_t* inp,
                                const uint16_t* a, const uint16_t* b, const uint16_t* weight,
                                const uint16_t* bias, int N, int C, float eps) {
  const int warp = x.thread() / 32, lane = x.thread() % 32;
  const int n = x.block_x() * kWarps + warp;
  if (n >= N) return;  // whole warps leave: no block barrier below
  const int nvec = C / 8;
  const size_t base = size_t(n) * C;
  Vec16 v[kVec];
  if (a != nullptr) {
    Vec16 va[kVec], vb[kVec];
    load_row(x, va, a + base, nvec);
    load_row(x, vb, b + base, nvec);
    TRIAD_UNROLL
    for (int i = 0; i < kVec; ++i) {
      if (lane + 32 * i >= nvec) continue;
      TRIAD_UNROLL
      for (int e = 0; e < 8; e += 2)
        v[i].w[e / 2] = x.pack_bf16(bf16_element(x, va[i], e) + bf16_element(x, vb[i], e),
                                    bf16_element(x, va[i], e + 1) + bf16_element(x, vb[i], e + 1));
      x.store16(inp + base + 8 * size_t(lane + 32 * i), v[i]);
    }
  } else {
    load_row(x, v, inp + base, nvec);
  }
  double sum = 0.0;
  if (mean != nullptr) {
    TRIAD_UNROLL
    for (int i = 0; i < kVec; ++i) {
      if (lane + 32 * i >= nvec) continue;
      TRIAD_UNROLL
      for (int e = 0; e < 8; ++e) sum += bf16_element(x, v[i], e);
    }
    sum = warp_sum(x, sum);
  }
  const double mu = sum / C;
  double sq = 0.0;
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i) {
    if (lane + 32 * i >= nvec) continue;
    TRIAD_UNROLL
    for (int e = 0; e < 8; ++e) {
      const double d = double(bf16_element(x, v[i], e)) - mu;
      sq += d * d;
    }
  }
  sq = warp_sum(x, sq);
  const float m = float(mu);
  const float r = float(1.0 / x.sqrt(sq / C + double(eps)));
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i) {
    const int j = lane + 32 * i;
    if (j >= nvec) continue;
    const Vec16 w = x.load16(weight + 8 * size_t(j));
    const Vec16 bb = bias != nullptr ? x.load16(bias + 8 * size_t(j)) : Vec16{{0, 0, 0, 0}};
    Vec16 o;
    TRIAD_UNROLL
    for (int e = 0; e < 8; e += 2) {
      const float o0 =
          (bf16_element(x, v[i], e) - m) * r * bf16_element(x, w, e) + bf16_element(x, bb, e);
      const float o1 = (bf16_element(x, v[i], e + 1) - m) * r * bf16_element(x, w, e + 1) +
                       bf16_element(x, bb, e + 1);
      o.w[e / 2] = x.pack_bf16(o0, o1);
    }
    x.store16(out + base + 8 * size_t(j), o);
  }
  if (lane == 0) {
    if (mean != nullptr) mean[n] = m;
    rstd[n] = r;
  }
}

// dinp of row blockIdx.x·kWarps + warp, accumulated (round(old + gradient)).
template <int kVec, class X>
TRIAD_BLOCK_FN void backward_dinp_row(X& x, uint16_t* dinp, const uint16_t* dout,
                                      const uint16_t* inp, const uint16_t* weight,
                                      const float* mean, const float* rstd, int N, int C) {
  const int warp = x.thread() / 32, lane = x.thread() % 32;
  const int n = x.block_x() * kWarps + warp;
  if (n >= N) return;
  const int nvec = C / 8;
  const size_t base = size_t(n) * C;
  Vec16 d[kVec], v[kVec];
  load_row(x, d, dout + base, nvec);
  load_row(x, v, inp + base, nvec);
  const float m = mean != nullptr ? mean[n] : 0.0f, r = rstd[n];
  double g_sum = 0.0, gx_sum = 0.0;
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i) {
    const int j = lane + 32 * i;
    if (j >= nvec) continue;
    const Vec16 w = x.load16(weight + 8 * size_t(j));
    TRIAD_UNROLL
    for (int e = 0; e < 8; ++e) {
      const float g = bf16_element(x, d[i], e) * bf16_element(x, w, e);
      g_sum += g;
      gx_sum += g * ((bf16_element(x, v[i], e) - m) * r);
    }
  }
  const float g_mean = mean != nullptr ? float(warp_sum(x, g_sum) / C) : 0.0f;
  const float gx_mean = float(warp_sum(x, gx_sum) / C);
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i) {
    const int j = lane + 32 * i;
    if (j >= nvec) continue;
    const Vec16 w = x.load16(weight + 8 * size_t(j));
    uint16_t* dx = dinp + base + 8 * size_t(j);
    const Vec16 old = x.load16(dx);
    Vec16 o;
    TRIAD_UNROLL
    for (int e = 0; e < 8; e += 2) {
      float pair[2];
      TRIAD_UNROLL
      for (int k = 0; k < 2; ++k) {
        const float xhat = (bf16_element(x, v[i], e + k) - m) * r;
        pair[k] = bf16_element(x, old, e + k) +
                  r * (bf16_element(x, d[i], e + k) * bf16_element(x, w, e + k) - g_mean -
                       xhat * gx_mean);
      }
      o.w[e / 2] = x.pack_bf16(pair[0], pair[1]);
    }
    x.store16(dx, o);
  }
}

}  // namespace triad::layernorm
