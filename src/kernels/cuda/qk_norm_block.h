// The per-head RMSNorm of q and k (cuda_qk_norm.cu, which describes the launch shapes) as block
// programs (see block_program.h), so that the CPU tests run the same code through the SIMT
// emulator (test_qk_norm_emulated) against the CPU backend. Elem is float or uint16_t (bf16
// bits): computed in fp32 (the sums of squares and Σ g·x̂ in double, as the CPU's), each output
// rounded once (accumulating: round(old + gradient)).
//  - forward / backward_input: one warp per head-row, a warp-stride loop over the N·(NH + 2·NKV)
//    head-rows (the v heads copied, or their gradient dout's); the lanes stride over the hd
//    values, the sums are warp butterflies. Each lane reads an element of dout before it writes
//    the same element of dqkv and touches no other lane's, so the backward may run in place.
//  - weight_partials: per-slice column sums of dout·x̂ over the head-rows of the q heads (matrix
//    0: dwq) and of the k heads (matrix 1: dwk), in a fixed order; column_sum_finish
//    (cuda_reduce.cu) then adds the slices.
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::qk_norm_block {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kColumns = 32;   // columns (of a head's hd) per block in the weight-gradient pass
constexpr int kRowGroups = 8;  // head-rows summed in parallel per column there
static_assert(kColumns * kRowGroups == kThreads, "one thread per (column, row group)");

// weight_partials' shared memory: [kRowGroups][kColumns + 1] floats.
TRIAD_BLOCK_SIZE size_t partials_smem() { return column_sums_smem<kColumns, kRowGroups, 1>(); }

// The shape of one call: hd values per head, W per row, heads per row (q, k, v).
struct Heads {
  int NH, NKV, hd;
  size_t W;
  TRIAD_BLOCK_SIZE int normed() const { return NH + NKV; }     // q and k heads: rstd's width
  TRIAD_BLOCK_SIZE int total() const { return NH + 2 * NKV; }  // with the v heads: W / hd
};

// out = each q head's x·r·wq, each k head's x·r·wk, v copied; rstd[r][j] = r of head j (q then
// k). Warp w of block b is warp b·kWarpsPerBlock + w of the grid's `warps`, which stride over
// the head-rows.
template <class X, class Elem>
TRIAD_BLOCK_FN void forward(X& x, Elem* out, float* rstd, const Elem* qkv, const Elem* wq,
                            const Elem* wk, Heads h, size_t head_rows, float eps, size_t warps) {
  const int lane = x.thread() % 32;
  for (size_t k = size_t(x.block_x()) * kWarpsPerBlock + size_t(x.thread() / 32); k < head_rows;
       k += warps) {
    const int j = int(k % size_t(h.total()));  // head j of row r, at column j·hd
    const size_t r = k / size_t(h.total());
    const size_t at = r * h.W + size_t(j) * h.hd;
    const Elem* in = qkv + at;
    Elem* o = out + at;
    if (j >= h.normed()) {  // a v head: copied
      for (int c = lane; c < h.hd; c += 32) o[c] = in[c];
      continue;
    }
    const Elem* w = j < h.NH ? wq : wk;
    double sq = 0.0;  // in double, as the CPU backend (and the LayerNorms)
    for (int c = lane; c < h.hd; c += 32) {
      const double v = load(x, in + c);
      sq += v * v;
    }
    sq = warp_sum(x, sq);
    const float rs = float(1.0 / x.sqrt(sq / h.hd + double(eps)));
    for (int c = lane; c < h.hd; c += 32) store(x, o + c, load(x, in + c) * rs * load(x, w + c));
    if (lane == 0) rstd[r * h.normed() + j] = rs;
  }
}

// dx = r·(g − x̂·mean(g·x̂)), g = dout·w, x̂ = x·r; a v head's dx is dout. Written over dqkv or
// added to it; dqkv may be dout (overwriting). Warps as forward's.
template <class X, class Elem>
TRIAD_BLOCK_FN void backward_input(X& x, Elem* dqkv, const Elem* dout, const Elem* qkv,
                                   const Elem* wq, const Elem* wk, const float* rstd, Heads h,
                                   size_t head_rows, bool accumulate, size_t warps) {
  const int lane = x.thread() % 32;
  for (size_t k = size_t(x.block_x()) * kWarpsPerBlock + size_t(x.thread() / 32); k < head_rows;
       k += warps) {
    const int j = int(k % size_t(h.total()));
    const size_t r = k / size_t(h.total());
    const size_t at = r * h.W + size_t(j) * h.hd;
    const Elem* d = dout + at;
    Elem* dx = dqkv + at;
    if (j >= h.normed()) {  // a v head
      for (int c = lane; c < h.hd; c += 32) {
        if (accumulate)
          store(x, dx + c, load(x, dx + c) + load(x, d + c));
        else
          dx[c] = d[c];
      }
      continue;
    }
    const Elem* in = qkv + at;
    const Elem* w = j < h.NH ? wq : wk;
    const float rs = rstd[r * h.normed() + j];
    double gx = 0.0;
    for (int c = lane; c < h.hd; c += 32)
      gx += double(load(x, d + c) * load(x, w + c) * (load(x, in + c) * rs));
    gx = warp_sum(x, gx);
    const float gx_mean = float(gx / h.hd);
    for (int c = lane; c < h.hd; c += 32) {
      const float xhat = load(x, in + c) * rs;
      const float v = rs * (load(x, d + c) * load(x, w + c) - xhat * gx_mean);
      store(x, dx + c, accumulate ? load(x, dx + c) + v : v);
    }
  }
}

// Per-slice partial sums of dwq (matrix 0) and dwk (matrix 1): matrix z's rows m are the
// head-rows of its heads (m = r·heads + i: row r, head i), column c of row m dout·x̂ at that
// head's value c. Block (x, y): columns [kColumns·x, +kColumns) of slice y % slices_max of matrix
// y / slices_max (a slice of `rows` rows); thread t: column t % kColumns, rows t / kColumns +
// kRowGroups·i of the slice, the row groups then added in order into partials[slice][c].
template <class X, class Elem>
TRIAD_BLOCK_FN void weight_partials(X& x, float* pq, float* pk, const Elem* dout, const Elem* qkv,
                                    const float* rstd, Heads h, int N, int slices_q, int slices_k,
                                    int rows_q, int rows_k, int slices_max) {
  const bool is_q = x.block_y() < slices_max;
  const int slice = x.block_y() % slices_max;
  if (slice >= (is_q ? slices_q : slices_k)) return;  // the whole block
  const int heads = is_q ? h.NH : h.NKV;
  const size_t col0 = is_q ? 0 : size_t(h.NH) * h.hd;  // the first k head's column is C
  const int head0 = is_q ? 0 : h.NH;                   // its r at rstd[row][NH + i]
  const int rows = is_q ? rows_q : rows_k;
  const size_t M = size_t(N) * heads;
  const int c = x.block_x() * kColumns + x.thread() % kColumns;
  const size_t lo = size_t(slice) * rows, hi = lo + rows < M ? lo + rows : M;
  float total[1];
  if (column_group_sums<kColumns, kRowGroups>(
          x, reinterpret_cast<float*>(x.smem()), lo, hi, c < h.hd,
          [&](size_t m, float(&sum)[1]) {
            const size_t r = m / heads;
            const int i = int(m % heads);
            const size_t at = r * h.W + col0 + size_t(i) * h.hd + c;
            sum[0] += load(x, dout + at) * (load(x, qkv + at) * rstd[r * h.normed() + head0 + i]);
          },
          total))
    (is_q ? pq : pk)[size_t(slice) * h.hd + c] = total[0];
}

}  // namespace triad::qk_norm_block
