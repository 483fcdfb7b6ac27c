// LayerNorm as block programs (see block_program.h): the GPU kernels of cuda_layernorm.cu, and
// the CPU test test_layernorm_emulated.
//
// bf16 rows whose width C is a multiple of 8 (up to 8·32·kVec) with 16-byte aligned rows take
// one warp per row (forward_row, backward_dinp_row); every other row (fp32, other widths,
// unaligned buffers) one block per row (block_row_forward, block_row_backward_dinp). The weight
// and bias gradients are per-slice column sums (param_partials) finished as in cuda_reduce.cu.
//
// In the warp-per-row programs a warp holds its row in registers (lane l: the 8-element vectors l,
// l + 32, ...), so the row is read once and written once, and the sums are warp shuffles: no shared
// memory, no block barrier. The arithmetic is that of the other LayerNorm kernels
// (cuda_layernorm.cu, and the CPU backend): mean and variance as two passes in double, then in fp32
//   out = round((x − m)·r·w + b),  m = float(μ), r = float(1/sqrt(var + 1e-5))
//   dx  = round(dx + r·(g − mean(g) − x̂·mean(g·x̂))),  g = dout·w, x̂ = (x − m)·r
// with the means of g and g·x̂ summed in double. RMSNorm (backend.h: mean null, bias null): m = 0
// (μ not summed), no bias, and no mean(g) term.
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::layernorm {

constexpr int kWarps = 8;  // rows per block of the warp-per-row programs
constexpr int kThreads = 32 * kWarps;
constexpr int kRowThreads = 256;  // threads per row of the block-per-row programs
constexpr int kColumns = 64;      // columns per block of param_partials
constexpr int kRowGroups = 8;     // rows summed in parallel per column there
constexpr int kParamThreads = kColumns * kRowGroups;

// Shared memory of the block-per-row programs (the partial sums of block_sum) and of
// param_partials.
TRIAD_BLOCK_SIZE size_t row_smem() { return 32 * sizeof(double); }
TRIAD_BLOCK_SIZE size_t param_smem() { return column_sums_smem<kColumns, kRowGroups, 2>(); }

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

// ---- One block of kRowThreads per row (row blockIdx.x), any element type ----------------------
// Thread t handles the columns t + k·kRowThreads only, so it reads back only what it wrote.

// LayerNorm of the row of inp into out, mean (null: RMSNorm) and rstd.
template <class X, class Elem>
TRIAD_BLOCK_FN void block_row_norm(X& x, Elem* out, float* mean, float* rstd, const Elem* inp,
                                   const Elem* weight, const Elem* bias, int C, float eps) {
  const size_t row = size_t(x.block_x());
  const Elem* in = inp + row * C;
  double* part = reinterpret_cast<double*>(x.smem());
  double sum = 0.0;
  if (mean != nullptr) {  // uniform over the block: all threads reduce or none
    for (int c = x.thread(); c < C; c += kRowThreads) sum += load(x, in + c);
    sum = block_sum(x, sum, part, kRowThreads);
  }
  const double mu = sum / C;
  double sq = 0.0;
  for (int c = x.thread(); c < C; c += kRowThreads) {
    const double d = double(load(x, in + c)) - mu;
    sq += d * d;
  }
  sq = block_sum(x, sq, part, kRowThreads);
  const float m = float(mu);
  const float r = float(1.0 / x.sqrt(sq / C + double(eps)));
  Elem* o = out + row * C;
  for (int c = x.thread(); c < C; c += kRowThreads)
    store(x, o + c,
          (load(x, in + c) - m) * r * load(x, weight + c) +
              (bias != nullptr ? load(x, bias + c) : 0.0f));
  if (x.thread() == 0) {
    if (mean != nullptr) mean[row] = m;
    rstd[row] = r;
  }
}

// With a != nullptr the row is first the sum round(a + b), stored to inp (the residual stream of
// residual_layernorm_forward), read once from a and b instead of written and read again.
template <class X, class Elem>
TRIAD_BLOCK_FN void block_row_forward(X& x, Elem* out, float* mean, float* rstd, Elem* inp,
                                      const Elem* a, const Elem* b, const Elem* weight,
                                      const Elem* bias, int C, float eps) {
  if (a != nullptr) {
    const size_t base = size_t(x.block_x()) * C;
    for (int c = x.thread(); c < C; c += kRowThreads)
      store(x, inp + base + c, load(x, a + base + c) + load(x, b + base + c));
  }
  block_row_norm(x, out, mean, rstd, static_cast<const Elem*>(inp), weight, bias, C, eps);
}

// dinp = round(dinp + r·(g − mean(g) − x̂·mean(g·x̂))), g = dout·w, x̂ = (x − m)·r.
template <class X, class Elem>
TRIAD_BLOCK_FN void block_row_backward_dinp(X& x, Elem* dinp, const Elem* dout, const Elem* inp,
                                            const Elem* weight, const float* mean,
                                            const float* rstd, int C) {
  const size_t row = size_t(x.block_x());
  const Elem* in = inp + row * C;
  const Elem* d = dout + row * C;
  double* part = reinterpret_cast<double*>(x.smem());
  const float m = mean != nullptr ? mean[row] : 0.0f;
  const float r = rstd[row];
  double g_sum = 0.0, gx_sum = 0.0;
  for (int c = x.thread(); c < C; c += kRowThreads) {
    const float g = load(x, d + c) * load(x, weight + c);
    g_sum += g;
    gx_sum += g * ((load(x, in + c) - m) * r);
  }
  g_sum = block_sum(x, g_sum, part, kRowThreads);
  gx_sum = block_sum(x, gx_sum, part, kRowThreads);
  const float g_mean = mean != nullptr ? float(g_sum / C) : 0.0f;
  const float gx_mean = float(gx_sum / C);
  Elem* dx = dinp + row * C;
  for (int c = x.thread(); c < C; c += kRowThreads) {
    const float xhat = (load(x, in + c) - m) * r;
    store(x, dx + c,
          load(x, dx + c) + r * (load(x, d + c) * load(x, weight + c) - g_mean - xhat * gx_mean));
  }
}

// Per-slice partial sums of dweight (Σ dout·x̂) and dbias (Σ dout), kParamThreads per block:
// block (x, y) sums its kColumns columns over slice y ([y·rows, +rows) of the N rows) in a fixed
// order (block_program.h's column_group_sums) into pw[y][c] and pb[y][c]; cuda_reduce.cu's
// column_sum_finish adds the slices.
template <class X, class Elem>
TRIAD_BLOCK_FN void param_partials(X& x, float* pw, float* pb, const Elem* dout, const Elem* inp,
                                   const float* mean, const float* rstd, int N, int C, int rows) {
  const int c = x.block_x() * kColumns + x.thread() % kColumns;
  const int lo = x.block_y() * rows, hi = lo + rows < N ? lo + rows : N;
  float total[2];
  if (column_group_sums<kColumns, kRowGroups>(
          x, reinterpret_cast<float*>(x.smem()), lo, hi, c < C,
          [&](int n, float(&sum)[2]) {
            const size_t i = size_t(n) * C + c;
            const float d = load(x, dout + i);
            sum[0] += d * ((load(x, inp + i) - (mean != nullptr ? mean[n] : 0.0f)) * rstd[n]);
            sum[1] += d;
          },
          total)) {
    pw[size_t(x.block_y()) * C + c] = total[0];
    pb[size_t(x.block_y()) * C + c] = total[1];
  }
}

}  // namespace triad::layernorm
