// Attention sinks (model.attn_sinks; Backend::attention_forward's `sinks`) around the bf16 flash
// kernels, as block programs (see block_program.h) that the CPU test
// test_attention_sinks_emulated runs through the SIMT emulator. A sink is a logit z_h per query
// head in the softmax's denominator with no value, so with it a row's output and log-sum-exp are
// those of the attention without it, corrected afterwards:
//   lse' = ln(exp(lse) + exp(z_h)),   out' = out·exp(lse − lse')
// (the share of the row's attention its keys keep). The flash kernels' backward, handed out' and
// lse', recomputes the probabilities with the sink's term already in them and needs no change.
// The sink's own gradient is dL/dz_h = −Σ_rows exp(z_h − lse')·(dout·out'): the row's
// Σ_j P_j dP_j is dout·out', and exp(z_h − lse') is the sink's share of the row.
//  - scale_outputs: out' from out, lse and the sinks, elementwise (grid-stride);
//  - add_sinks_to_lse: lse' from lse, a thread per row (after scale_outputs has read lse);
//  - row_terms: each row's term of its head's gradient, a thread per row;
//  - reduce_terms: a block per head adds its rows' terms in an order fixed by the shapes (no
//    atomics: the gradient is bit-identical run to run) onto dsinks[h].
// Layouts as backend.h's with a query range of n rows per sequence: out and dout [B, n, C] (head
// h at columns h·hd .. (h+1)·hd), lse and the terms [B, NH, n]. E: float or uint16_t (bf16 bits).
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::attention_sinks_block {

constexpr int kReduceThreads = 256;

TRIAD_BLOCK_SIZE size_t reduce_smem() { return 32 * sizeof(float); }

// ln(exp(lse) + exp(z)), without overflow for either much larger than the other.
template <class X>
TRIAD_BLOCK_FN float with_sink(X& x, float lse, float z) {
  const float m = lse > z ? lse : z;
  return m + float(x.log(double(x.exp(lse - m)) + double(x.exp(z - m))));
}

// out[b, t, c] ×= exp(lse − lse') of its row's head h = c / (C / NH), over total = B·n·C elements.
template <class X, class E>
TRIAD_BLOCK_FN void scale_outputs(X& x, E* out, const float* lse, const E* sinks, int n, int C,
                                  int NH, size_t total, int threads, size_t stride) {
  const int hd = C / NH;
  TRIAD_BLOCK_STRIDE_LOOP(x, idx, total, threads, stride) {
    const size_t row = idx / size_t(C);  // b·n + t
    const int h = int(idx % size_t(C)) / hd;
    const size_t b = row / size_t(n), t = row % size_t(n);
    const float l = lse[(b * size_t(NH) + size_t(h)) * size_t(n) + t];
    const float keep = x.exp(l - with_sink(x, l, load(x, sinks + h)));
    store(x, out + idx, load(x, out + idx) * keep);
  }
}

// lse[r] ← ln(exp(lse[r]) + exp(z_h)) over rows = B·NH·n entries (h = r / n mod NH).
template <class X, class E>
TRIAD_BLOCK_FN void add_sinks_to_lse(X& x, float* lse, const E* sinks, int n, int NH, size_t rows,
                                     int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, r, rows, threads, stride) {
    const int h = int(r / size_t(n) % size_t(NH));
    lse[r] = with_sink(x, lse[r], load(x, sinks + h));
  }
}

// terms[r] = −exp(z_h − lse[r])·Σ_d dout·out over head h's hd values of row (b, t), for
// r = (b·NH + h)·n + t < rows = B·NH·n; lse and out with the sinks' terms (lse', out').
template <class X, class E>
TRIAD_BLOCK_FN void row_terms(X& x, float* terms, const E* out, const E* dout, const float* lse,
                              const E* sinks, int n, int C, int NH, size_t rows, int threads,
                              size_t stride) {
  const int hd = C / NH;
  TRIAD_BLOCK_STRIDE_LOOP(x, r, rows, threads, stride) {
    const size_t t = r % size_t(n), bh = r / size_t(n);
    const int h = int(bh % size_t(NH));
    const size_t b = bh / size_t(NH);
    const size_t at = (b * size_t(n) + t) * size_t(C) + size_t(h) * size_t(hd);
    float dot = 0.0f;
    for (int d = 0; d < hd; ++d) dot += load(x, dout + at + d) * load(x, out + at + d);
    terms[r] = -x.exp(load(x, sinks + h) - lse[r]) * dot;
  }
}

// Block h (kReduceThreads threads, reduce_smem()): dsinks[h] += Σ over b < B, t < n of
// terms[(b·NH + h)·n + t]; thread j adds entries j, j + kReduceThreads, ... of the head's B·n in
// order, then a fixed tree adds the threads' sums.
template <class X>
TRIAD_BLOCK_FN void reduce_terms(X& x, float* dsinks, const float* terms, int B, int n, int NH) {
  const int h = x.block_x();
  const size_t count = size_t(B) * size_t(n);
  float sum = 0.0f;
  for (size_t e = size_t(x.thread()); e < count; e += kReduceThreads) {
    const size_t b = e / size_t(n), t = e % size_t(n);
    sum += terms[(b * size_t(NH) + size_t(h)) * size_t(n) + t];
  }
  sum = block_sum(x, sum, reinterpret_cast<float*>(x.smem()), kReduceThreads);
  if (x.thread() == 0) dsinks[h] += sum;
}

}  // namespace triad::attention_sinks_block
