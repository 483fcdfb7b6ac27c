// The RMSNorm of q and k over all their heads (model.qk_norm_full; cuda_qk_full_norm.cu, which
// describes the launch shapes) as block programs (see block_program.h), so that the CPU tests run
// the same code through the SIMT emulator (test_qk_full_norm_emulated) against the CPU backend.
// Elem is float or uint16_t (bf16 bits): computed in fp32 (the row sums in double, as the CPU's),
// each output rounded once (accumulating: round(old + gradient)).
//  - sums: one warp per vector (a row's q values or its k values), a warp-stride loop over the
//    2·N vectors; the lanes stride over the values, the sum is a warp butterfly in double.
//  - forward / backward_input: one thread per element of qkv [N, W] (a grid-stride loop); each
//    reads its row's r (or the backward's dot) and its column's weight. An element of dout is read
//    by the thread that then writes the same element of dqkv, so the backward may run in place.
//  - weight_partials: per-slice column sums of dout·x̂ over the rows, of the q columns (matrix 0:
//    dwq) and of the k columns (matrix 1: dwk), in a fixed order; column_sum_finish
//    (cuda_reduce.cu) then adds the slices.
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::qk_full_norm_block {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kColumns = 32;   // columns per block in the weight-gradient pass
constexpr int kRowGroups = 8;  // rows summed in parallel per column there
static_assert(kColumns * kRowGroups == kThreads, "one thread per (column, row group)");

// weight_partials' shared memory: [kRowGroups][kColumns + 1] floats.
TRIAD_BLOCK_SIZE size_t partials_smem() { return column_sums_smem<kColumns, kRowGroups, 1>(); }

// One call's shape: q's C values, then k's K, then v's K, W = C + 2·K per row.
struct Shape {
  int C, K;
  size_t W;
  TRIAD_BLOCK_SIZE int width(int s) const { return s == 0 ? C : K; }
  TRIAD_BLOCK_SIZE size_t column0(int s) const { return s == 0 ? 0 : size_t(C); }
};

// r of a vector D wide whose squares sum to `sum` (the CPU backend's expression).
template <class X>
TRIAD_BLOCK_FN float rstd_of(X& x, float sum, int D, float eps) {
  return float(1.0 / x.sqrt(double(sum) / D + double(eps)));
}

// out[k] for vector k = 2·row + s: Σ x² (dout null) or Σ dout·w·(x·r), r = rstd[k]. Warp w of
// block b is warp b·kWarpsPerBlock + w of the grid's `warps`, which stride over the vectors.
template <class X, class Elem>
TRIAD_BLOCK_FN void sums(X& x, float* out, const Elem* qkv, const Elem* dout, const Elem* wq,
                         const Elem* wk, const float* rstd, Shape h, size_t vectors, size_t warps) {
  const int lane = x.thread() % 32;
  for (size_t k = size_t(x.block_x()) * kWarpsPerBlock + size_t(x.thread() / 32); k < vectors;
       k += warps) {
    const int s = int(k % 2), width = h.width(s);
    const size_t at = (k / 2) * h.W + h.column0(s);
    const Elem* in = qkv + at;
    double sum = 0.0;
    if (dout == nullptr) {
      for (int c = lane; c < width; c += 32) {
        const double v = load(x, in + c);
        sum += v * v;
      }
    } else {
      const Elem* d = dout + at;
      const Elem* w = s == 0 ? wq : wk;
      const float r = rstd[k];
      for (int c = lane; c < width; c += 32)
        sum += double(load(x, d + c)) * load(x, w + c) * (load(x, in + c) * r);
    }
    sum = warp_sum(x, sum);
    if (lane == 0) out[k] = float(sum);
  }
}

// out = x·r·w for q and k (r from sums, over Dq and Dk values), v copied; rstd[2·row + s] = r.
// Thread t of block b takes element b·kThreads + t and every `stride` after it.
template <class X, class Elem>
TRIAD_BLOCK_FN void forward(X& x, Elem* out, float* rstd, const Elem* qkv, const float* sums,
                            const Elem* wq, const Elem* wk, Shape h, int Dq, int Dk, float eps,
                            size_t total, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, kThreads, stride) {
    const size_t row = i / h.W, c = i % h.W;
    if (c >= size_t(h.C) + size_t(h.K)) {  // v: copied
      out[i] = qkv[i];
      continue;
    }
    const int s = c < size_t(h.C) ? 0 : 1;
    const size_t col = c - h.column0(s);
    const float r = rstd_of(x, sums[2 * row + size_t(s)], s == 0 ? Dq : Dk, eps);
    if (col == 0) rstd[2 * row + size_t(s)] = r;
    store(x, out + i, load(x, qkv + i) * r * load(x, (s == 0 ? wq : wk) + col));
  }
}

// dx = r·(dout·w − x̂·dots/D), x̂ = x·r; v's dx is dout. Written over dqkv or added to it; dqkv
// may be dout (overwriting). Threads as forward's.
template <class X, class Elem>
TRIAD_BLOCK_FN void backward_input(X& x, Elem* dqkv, const Elem* dout, const Elem* qkv,
                                   const Elem* wq, const Elem* wk, const float* rstd,
                                   const float* dots, Shape h, int Dq, int Dk, bool accumulate,
                                   size_t total, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, kThreads, stride) {
    const size_t row = i / h.W, c = i % h.W;
    if (c >= size_t(h.C) + size_t(h.K)) {  // v
      if (accumulate)
        store(x, dqkv + i, load(x, dqkv + i) + load(x, dout + i));
      else
        dqkv[i] = dout[i];
      continue;
    }
    const int s = c < size_t(h.C) ? 0 : 1;
    const size_t col = c - h.column0(s);
    const float r = rstd[2 * row + size_t(s)];
    const float mean = float(double(dots[2 * row + size_t(s)]) / (s == 0 ? Dq : Dk));
    const float v =
        r * (load(x, dout + i) * load(x, (s == 0 ? wq : wk) + col) - (load(x, qkv + i) * r) * mean);
    store(x, dqkv + i, accumulate ? load(x, dqkv + i) + v : v);
  }
}

// Per-slice partial sums of dwq (matrix 0: the q columns) and dwk (matrix 1: the k columns), the
// rows of both the N rows of qkv. Block (x, y): columns [kColumns·x, +kColumns) of slice
// y % slices_max of matrix y / slices_max (slices of `rows` rows); thread t: column t % kColumns,
// rows t / kColumns + kRowGroups·i of the slice, the row groups then added in order into
// partials[slice][c].
template <class X, class Elem>
TRIAD_BLOCK_FN void weight_partials(X& x, float* pq, float* pk, const Elem* dout, const Elem* qkv,
                                    const float* rstd, Shape h, int N, int slices, int rows,
                                    int slices_max) {
  const int s = x.block_y() < slices_max ? 0 : 1;
  const int slice = x.block_y() % slices_max;
  if (slice >= slices) return;  // the whole block
  const int width = h.width(s);
  const int c = x.block_x() * kColumns + x.thread() % kColumns;
  const size_t lo = size_t(slice) * rows, hi = lo + rows < size_t(N) ? lo + rows : size_t(N);
  float total[1];
  if (column_group_sums<kColumns, kRowGroups>(
          x, reinterpret_cast<float*>(x.smem()), lo, hi, c < width,
          [&](size_t m, float(&sum)[1]) {
            const size_t at = m * h.W + h.column0(s) + size_t(c);
            sum[0] += load(x, dout + at) * (load(x, qkv + at) * rstd[2 * m + size_t(s)]);
          },
          total))
    (s == 0 ? pq : pk)[size_t(slice) * width + c] = total[0];
}

}  // namespace triad::qk_full_norm_block
