// The hand-written kernels of the fp32 attention (cuda_attention.cu, which describes the path:
// cuBLAS products around a causal softmax) as block programs (see block_program.h), so that the
// CPU tests run the same code through the SIMT emulator (test_attention_fp32_emulated):
//  - the permutations between [B,T,width] rows and per-head [B,NH,T,hd] matrices (grid-stride);
//  - the causal softmax of att [B·NH·T, T] in place, one block per row, keys lo..i (lo the row's
//    first key under a document mask) and exact zeros elsewhere, with the row's log-sum-exp (of
//    the scores soft-capped first under a cap);
//  - its backward dS = P ⊙ (dP − Σ_j P dP) in place over dP, one block per row (times
//    1 − tanh²(s / cap) of the uncapped scores s under a cap);
//  - the causal copy of P with zeros outside each row's keys;
// and the attention dropout's mask (AttentionDropMask, dropout_mask.h) where one is given: the
// causal copy multiplied by it (P' for the products with V), and dP' multiplied by it in the
// softmax backward before anything else.
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"
#include "triad/kernels/dropout_mask.h"

namespace triad::attention_fp32_block {

constexpr int kSoftmaxThreads = 128;  // threads per attention row

// softmax's and its backward's shared memory: a value per warp (a double for the sinks' sums).
TRIAD_BLOCK_SIZE size_t softmax_smem() { return 32 * sizeof(double); }

// Index helpers for the [B,NH,T,hd] ↔ [B,T,NH·hd] permutations: idx runs over [B,NH,T,hd];
// row_offset is the offset of the same element in a [B,T,width] row-major tensor whose head h
// starts at column h·hd.
struct HeadLayout {
  int NH, T, hd;
  TRIAD_BLOCK_SIZE size_t row_offset(size_t idx, size_t width) const {
    const size_t d = idx % hd;
    const size_t t = (idx / hd) % T;
    const size_t h = (idx / (size_t(hd) * T)) % NH;
    const size_t b = idx / (size_t(hd) * T * NH);
    return (b * T + t) * width + h * hd + d;
  }
};

// q/k/v [B,NH,T,hd] ← qkv [B,T,3C]
template <class X>
TRIAD_BLOCK_FN void split_qkv(X& x, float* q, float* k, float* v, const float* qkv, HeadLayout L,
                              int C, size_t total, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) {
    const size_t src = L.row_offset(i, size_t(3) * C);
    q[i] = qkv[src];
    k[i] = qkv[src + C];
    v[i] = qkv[src + 2 * size_t(C)];
  }
}

// dst [B,NH,T,hd] ← src [B,T,C]
template <class X>
TRIAD_BLOCK_FN void to_heads(X& x, float* dst, const float* src, HeadLayout L, int C, size_t total,
                             int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) { dst[i] = src[L.row_offset(i, C)]; }
}

// dst [B,T,C] ← src [B,NH,T,hd]
template <class X>
TRIAD_BLOCK_FN void from_heads(X& x, float* dst, const float* src, HeadLayout L, int C,
                               size_t total, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) { dst[L.row_offset(i, C)] = src[i]; }
}

// dqkv [B,T,3C] += dq | dk | dv [B,NH,T,hd]
template <class X>
TRIAD_BLOCK_FN void accumulate_dqkv(X& x, float* dqkv, const float* dq, const float* dk,
                                    const float* dv, HeadLayout L, int C, size_t total, int threads,
                                    size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) {
    const size_t dst = L.row_offset(i, size_t(3) * C);
    dqkv[dst] += dq[i];
    dqkv[dst + C] += dk[i];
    dqkv[dst + 2 * size_t(C)] += dv[i];
  }
}

// The first key query row r of att [B·NH·T, T] sees: key_begin[b·T + r mod T] (b = r / (NH·T)),
// or 0 without a document mask.
TRIAD_BLOCK_FN int row_first_key(const int32_t* key_begin, size_t r, int T, int NH) {
  if (key_begin == nullptr) return 0;
  return key_begin[r / (size_t(NH) * T) * T + r % size_t(T)];
}

// Block r (kSoftmaxThreads): row r of att, query position i = r mod T, first key lo. In place:
// S → P over keys lo..i, exact zeros for the others. Each thread touches the same j's in every
// loop. lse (may be null): lse[r] = max + ln Σ exp(S − max), the log of the row's denominator.
// cap > 0: S ← cap·tanh(S / cap) first (Backend's softcap). sinks (may be null): [NH] logits, head
// h's exp(sinks[h]) a term of its rows' denominators (Backend's attention sinks; in lse too).
template <class X>
TRIAD_BLOCK_FN void causal_softmax(X& x, float* att, float* lse, int T, int NH,
                                   const int32_t* key_begin, float cap = 0.0f,
                                   const float* sinks = nullptr) {
  float* part = reinterpret_cast<float*>(x.smem());
  const size_t r = size_t(x.block_x());
  const int i = int(r % size_t(T)), lo = row_first_key(key_begin, r, T, NH);
  float* row = att + r * T;
  if (cap > 0.0f)
    for (int j = lo + x.thread(); j <= i; j += kSoftmaxThreads) row[j] = cap * x.tanh(row[j] / cap);
  float max_val = -__builtin_huge_valf();
  for (int j = lo + x.thread(); j <= i; j += kSoftmaxThreads)
    max_val = row[j] > max_val ? row[j] : max_val;
  max_val = block_max(x, max_val, part, kSoftmaxThreads);
  const float sink = sinks != nullptr ? sinks[r / size_t(T) % size_t(NH)] : 0.0f;
  if (sinks != nullptr && sink > max_val) max_val = sink;
  float sum = 0.0f;
  for (int j = lo + x.thread(); j <= i; j += kSoftmaxThreads) {
    const float e = x.exp(row[j] - max_val);
    row[j] = e;
    sum += e;
  }
  sum = block_sum(x, sum, part, kSoftmaxThreads);
  if (sinks != nullptr) sum += x.exp(sink - max_val);
  const float inv = 1.0f / sum;
  for (int j = x.thread(); j < T; j += kSoftmaxThreads)
    row[j] = j <= i && j >= lo ? row[j] * inv : 0.0f;
  if (lse != nullptr && x.thread() == 0) lse[r] = max_val + float(x.log(double(sum)));
}

// The dropout factor of entry j of att row r (b = r / (NH·T), h = r / T mod NH, i = r mod T).
TRIAD_BLOCK_FN float drop_factor(const AttentionDropMask& drop, size_t r, int T, int NH, int j) {
  const size_t bh = r / size_t(T);
  return drop.factor(bh / size_t(NH), T, int(bh % size_t(NH)), int(r % size_t(T)), j);
}

// dst[r, j] = lo_r <= j <= (r mod T) ? att[r, j] : 0 over B·NH·T·T entries; under a dropout
// mask the kept entries times its factor, the dropped ones times 0.
template <class X>
TRIAD_BLOCK_FN void causal_mask_copy(X& x, float* dst, const float* att, int T, int NH,
                                     const int32_t* key_begin, size_t total, int threads,
                                     size_t stride, AttentionDropMask drop = {}) {
  TRIAD_BLOCK_STRIDE_LOOP(x, idx, total, threads, stride) {
    const size_t j = idx % size_t(T), r = idx / size_t(T);
    const size_t i = r % size_t(T);
    const bool key = j <= i && int(j) >= row_first_key(key_begin, r, T, NH);
    float v = key ? att[idx] : 0.0f;
    if (key && drop.on()) v *= drop_factor(drop, r, T, NH, int(j));
    dst[idx] = v;
  }
}

// Block r: dS = P ⊙ (dP − Σ_j P dP) over keys lo..i, in place over dP; zeros elsewhere (the dQ
// and dK products read the full rows). Reads att only at lo <= j <= i. cap > 0: dS times
// 1 − tanh²(s / cap), s the uncapped scores in raw (laid out as att). Under a dropout mask ds
// holds dP' (the gradient of the dropped probabilities) and dP = dP' times the mask's factor.
// sink_rows (may be null; attention sinks): sink_rows[r] = −(1 − Σ_j P_j)·Σ_j P dP, the row's
// term of its head's sink gradient (the sink's share of the row times the row's Σ P dP).
template <class X>
TRIAD_BLOCK_FN void causal_softmax_backward(X& x, float* ds, const float* att, int T, int NH,
                                            const int32_t* key_begin, const float* raw = nullptr,
                                            float cap = 0.0f, AttentionDropMask drop = {},
                                            float* sink_rows = nullptr) {
  float* part = reinterpret_cast<float*>(x.smem());
  const size_t r = size_t(x.block_x());
  const int i = int(r % size_t(T)), lo = row_first_key(key_begin, r, T, NH);
  float* drow = ds + r * T;
  const float* prow = att + r * T;
  if (drop.on()) {  // dP = dP' times the factors (block_sum's barriers order it before the
                    // last loop, whose threads read other threads' entries)
    const size_t bh = r / size_t(T);
    const uint64_t a = drop.head_key(bh / size_t(NH), T, int(bh % size_t(NH)), i);
    for (int j = lo + x.thread(); j <= i; j += kSoftmaxThreads)
      drow[j] *= attention_dropout_keeps(a, uint32_t(j), drop.threshold) ? drop.scale : 0.0f;
  }
  // The row's probability mass in double: 1 − mass, the sink's share, may be small.
  float dot = 0.0f;
  double mass = 0.0;
  for (int j = lo + x.thread(); j <= i; j += kSoftmaxThreads) {
    dot += prow[j] * drow[j];
    mass += double(prow[j]);
  }
  dot = block_sum(x, dot, part, kSoftmaxThreads);
  if (sink_rows != nullptr) {
    mass = block_sum(x, mass, reinterpret_cast<double*>(x.smem()), kSoftmaxThreads);
    if (x.thread() == 0) sink_rows[r] = -float(1.0 - mass) * dot;
  }
  for (int j = x.thread(); j < T; j += kSoftmaxThreads) {
    const bool key = j <= i && j >= lo;
    float g = key ? prow[j] * (drow[j] - dot) : 0.0f;
    if (key && cap > 0.0f) {
      const float t = x.tanh(raw[r * T + size_t(j)] / cap);
      g *= 1.0f - t * t;
    }
    drow[j] = g;
  }
}

}  // namespace triad::attention_fp32_block
