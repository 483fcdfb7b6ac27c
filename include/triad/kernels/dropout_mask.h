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

// Row r's key from the two int32 words a backend holds it in (low word first).
TRIAD_DROPOUT_FN uint64_t dropout_key_of(const int32_t* keys, size_t r) {
  return uint64_t(uint32_t(keys[2 * r])) | uint64_t(uint32_t(keys[2 * r + 1])) << 32;
}

}  // namespace triad
