// The hidden dropout's mask (train.hidden_dropout), a pure function of where an element sits,
// written once for the CPU loops, the CUDA kernels and the host code that forms the row keys.
// No random state: the mask of residual-stream element (sequence, position, column) at site s
// depends on the run's seed and those four numbers only, so it is the same on every grid (the
// sequence is its absolute place in the data order, not a rank's micro-batch index), the same
// when a backward pass or a recomputation forms it again, and the same after a resume.
//
//   row key    k = mix(mix(seed ^ mix(sequence)) + position)
//   element    h = mix(k ^ (site << 32 | column));  kept iff (h >> 40) >= round(p·2^24)
//   kept value x · (1 / (1 − p)) (the factor in fp32, the product rounded once), dropped x · 0
//   (0, but a NaN or an infinity stays NaN, as PyTorch's x · mask: a divergence is not hidden)
//
// mix is SplitMix64's finaliser (its golden-ratio increment, then two xor-shift-multiply
// rounds). Sites: the embedding's output 0, layer l's attention branch 1 + 2l, its MLP branch
// 2 + 2l (both 2 + 2l under model.parallel_residual, whose branches join in one sum).
//
// The attention dropout (train.attention_dropout) zeroes attention probabilities the same way:
// probability P[i, j] of query head h in layer l, query i (row key k of i's position) and key j
// (its position in the sequence) is kept iff
//   head key   a = mix(k ^ ((2^31 | l) << 32 | h))     (h the global head index: any tp)
//   element    (mix(a ^ j) >> 40) >= round(p·2^24)
// and a kept probability is P·(1 / (1 − p)): the softmax's normalizer is the undropped one, as
// torch.nn.functional.dropout after torch.softmax (nanoGPT's attn_dropout, Megatron's
// attention_dropout).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define TRIAD_DROPOUT_FN __host__ __device__ inline
#else
#define TRIAD_DROPOUT_FN inline
#endif

namespace triad {

TRIAD_DROPOUT_FN uint64_t dropout_mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t dropout_row_key(uint64_t seed, uint64_t sequence, uint32_t position) {
  return dropout_mix(dropout_mix(seed ^ dropout_mix(sequence)) + position);
}

// The row keys of B whole sequences of T positions, sequences first, first + 1, .. of the data
// order, as a backend holds them ([B, T], two int32 words each, low first): out holds 2·B·T.
inline void dropout_row_key_words(int32_t* out, uint64_t seed, uint64_t first, int B, int T) {
  for (size_t r = 0; r < size_t(B) * size_t(T); ++r) {
    const uint64_t k = dropout_row_key(seed, first + r / size_t(T), uint32_t(r % size_t(T)));
    out[2 * r] = int32_t(uint32_t(k));
    out[2 * r + 1] = int32_t(uint32_t(k >> 32));
  }
}

// An element is dropped iff its 24-bit draw is below the threshold round(p·2^24).
inline uint32_t dropout_threshold(float p) {
  return uint32_t(std::llround(double(p) * 16777216.0));
}

// What a kept element is multiplied by, 1 / (1 − p) rounded to fp32.
inline float dropout_scale(float p) { return float(1.0 / (1.0 - double(p))); }

TRIAD_DROPOUT_FN bool dropout_keeps(uint64_t row_key, uint32_t site, uint32_t column,
                                    uint32_t threshold) {
  return uint32_t(dropout_mix(row_key ^ (uint64_t(site) << 32 | column)) >> 40) >= threshold;
}

// Attention dropout: the key of (query row key, layer, global head), then whether key j of it
// is kept.
TRIAD_DROPOUT_FN uint64_t attention_dropout_head_key(uint64_t row_key, uint32_t layer,
                                                     uint32_t head) {
  return dropout_mix(row_key ^ (uint64_t(0x80000000u | layer) << 32 | head));
}
TRIAD_DROPOUT_FN bool attention_dropout_keeps(uint64_t head_key, uint32_t key, uint32_t threshold) {
  return uint32_t(dropout_mix(head_key ^ key) >> 40) >= threshold;
}

// Row r's key from the two int32 words a backend holds it in (low word first).
TRIAD_DROPOUT_FN uint64_t dropout_key_of(const int32_t* keys, size_t r) {
  return uint64_t(uint32_t(keys[2 * r])) | uint64_t(uint32_t(keys[2 * r + 1])) << 32;
}

// One attention call's dropout as the kernels take it (Backend's AttentionDropout resolved):
// keys [B, T] row keys (nullptr: no dropout), the threshold and factor of its p, the layer, and
// where the call's query heads sit among the model's (global_head).
struct AttentionDropMask {
  const int32_t* keys = nullptr;
  uint32_t threshold = 0, layer = 0, head0 = 0;
  float scale = 1.0f;
  // kv_global > 0: the call's query head h is global head (h / kv_local)·kv_global + head0 +
  // h mod kv_local (tensor parallelism under grouped-query attention: a rank holds kv_local of
  // the kv_global key/value heads from head0 on, and the query heads that read them); 0: head0 + h.
  uint32_t kv_local = 0, kv_global = 0;
  TRIAD_DROPOUT_FN bool on() const { return keys != nullptr; }
  TRIAD_DROPOUT_FN uint32_t global_head(int h) const {
    if (kv_global == 0) return head0 + uint32_t(h);
    return (uint32_t(h) / kv_local) * kv_global + head0 + uint32_t(h) % kv_local;
  }
  // The head key of query i of sequence b (T rows each) and the call's query head h.
  TRIAD_DROPOUT_FN uint64_t head_key(size_t b, int T, int h, int i) const {
    return attention_dropout_head_key(dropout_key_of(keys, b * size_t(T) + size_t(i)), layer,
                                      global_head(h));
  }
  // What probability (b, h, i, j) is multiplied by: scale (kept) or 0 (dropped).
  TRIAD_DROPOUT_FN float factor(size_t b, int T, int h, int i, int j) const {
    return attention_dropout_keeps(head_key(b, T, h, i), uint32_t(j), threshold) ? scale : 0.0f;
  }
};

}  // namespace triad
