// Grouped-query attention by expansion (cuda_grouped_heads.cu, which describes where it is used)
// as block programs (see block_program.h), so that the CPU tests run the same code through the
// SIMT emulator (test_grouped_heads_emulated). Compact rows qkv [N, W] (W = C + 2·NKV·hd: q, then
// NKV k heads, then NKV v heads) against expanded rows [N, 3C] (one k and v head per query head:
// expanded head h is kv head h % NKV). One thread per element of the written matrix, grid-stride;
// the reduction sums a kv head's NH/NKV gradients in increasing query-head order in fp32 and
// rounds once (deterministic, no atomics). Elem is float or uint16_t (bf16 bits).
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::grouped_heads_block {

// Compact column of expanded column col (0 .. 3C) of a row.
TRIAD_BLOCK_FN size_t compact_column(size_t col, int C, int hd, int NKV) {
  if (col < size_t(C)) return col;          // q
  const size_t kv = (col - C) / size_t(C);  // 0: k, 1: v
  const size_t within = (col - C) % size_t(C);
  const size_t h = within / size_t(hd), d = within % size_t(hd);
  return size_t(C) + kv * size_t(NKV) * hd + (h % size_t(NKV)) * hd + d;
}

// mha [N, 3C] ← qkv [N, W]; total = N·3C.
template <class X, class Elem>
TRIAD_BLOCK_FN void expand(X& x, Elem* mha, const Elem* qkv, int C, int hd, int NKV, size_t W,
                           size_t total, int threads, size_t stride) {
  const size_t ld = 3 * size_t(C);
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) {
    const size_t row = i / ld, col = i % ld;
    mha[i] = qkv[row * W + compact_column(col, C, hd, NKV)];
  }
}

// dmha [N, 3C]: q columns ← dqkv's (accumulate) or 0, k and v columns ← 0.
template <class X, class Elem>
TRIAD_BLOCK_FN void prepare_gradient(X& x, Elem* dmha, const Elem* dqkv, int C, size_t W,
                                     bool accumulate, size_t total, int threads, size_t stride) {
  const size_t ld = 3 * size_t(C);
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) {
    const size_t row = i / ld, col = i % ld;
    if (accumulate && col < size_t(C))
      dmha[i] = dqkv[row * W + col];
    else
      store(x, dmha + i, 0.0f);
  }
}

// dqkv [N, W] ← dmha [N, 3C]: q copied; k (v) of kv head g the sum over query heads
// h ≡ g (mod NKV), in increasing h, plus the old value with accumulate, rounded once; total = N·W.
template <class X, class Elem>
TRIAD_BLOCK_FN void reduce(X& x, Elem* dqkv, const Elem* dmha, int C, int hd, int NH, int NKV,
                           size_t W, bool accumulate, size_t total, int threads, size_t stride) {
  const size_t ld = 3 * size_t(C), kv_width = size_t(NKV) * hd;
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) {
    const size_t row = i / W, col = i % W;
    const Elem* src = dmha + row * ld;
    if (col < size_t(C)) {
      dqkv[i] = src[col];
      continue;
    }
    const size_t kv = (col - C) / kv_width;  // 0: k, 1: v
    const size_t within = (col - C) % kv_width;
    const int g = int(within / size_t(hd));
    const size_t d = within % size_t(hd);
    const Elem* part = src + size_t(C) * (1 + kv) + d;
    float sum = 0.0f;
    for (int h = g; h < NH; h += NKV) sum += load(x, part + size_t(h) * hd);
    store(x, dqkv + i, accumulate ? load(x, dqkv + i) + sum : sum);
  }
}

}  // namespace triad::grouped_heads_block
