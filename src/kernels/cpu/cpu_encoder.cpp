// Token + position embedding.
//
// Vocabulary-parallel form (backend.h): a token < 0 belongs to another rank's slice of wte and
// contributes nothing here (a zero row forward, no dwte update backward); wpe / dwpe ==
// nullptr leave out the position term. Valid tokens with a position table take the same
// arithmetic as before (bit-identical results). positions (data.reset_positions): row n's
// position is positions[n] instead of n % T.
#include <algorithm>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C, const int32_t* positions) {
  const int N = B * T;
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const int32_t tok = tokens[n];
    float* o = out + size_t(n) * C;
    const size_t p = positions != nullptr ? size_t(positions[n]) : size_t(n % T);
    const float* pos_row = wpe != nullptr ? wpe + p * C : nullptr;
    if (tok >= 0) {
      const float* tok_row = wte + size_t(tok) * C;
      if (pos_row != nullptr) {
#pragma omp simd
        for (int c = 0; c < C; ++c) o[c] = tok_row[c] + pos_row[c];
      } else {
#pragma omp simd
        for (int c = 0; c < C; ++c) o[c] = tok_row[c];
      }
    } else if (pos_row != nullptr) {
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = 0.0f + pos_row[c];  // a zero token row + position
    } else {
      std::fill(o, o + C, 0.0f);
    }
  }
}

// Several positions may hold the same token, so rows of dwte receive several contributions.
// Instead of atomics we split the channels: each thread owns a slice of columns and walks all
// tokens in order, which makes every sum serial (deterministic) and race-free.
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                      int T, int C, const int32_t* positions) {
  constexpr int kSlice = 64;  // channels per task: one cache line of each of 4 rows per step
  const int n_slices = (C + kSlice - 1) / kSlice;
#pragma omp parallel for schedule(static) if (size_t(B) * T * C >= kParallelMin)
  for (int s = 0; s < n_slices; ++s) {
    const int c0 = s * kSlice;
    const int c1 = std::min(C, c0 + kSlice);
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < T; ++t) {
        const size_t n = size_t(b) * T + t;
        const float* d = dout + n * C;
        const int32_t tok = tokens[n];
        const size_t p = positions != nullptr ? size_t(positions[n]) : size_t(t);
        if (tok >= 0 && dwpe != nullptr) {
          float* wte_row = dwte + size_t(tok) * C;
          float* wpe_row = dwpe + p * C;
#pragma omp simd
          for (int c = c0; c < c1; ++c) {
            wte_row[c] += d[c];
            wpe_row[c] += d[c];
          }
        } else if (tok >= 0) {
          float* wte_row = dwte + size_t(tok) * C;
#pragma omp simd
          for (int c = c0; c < c1; ++c) wte_row[c] += d[c];
        } else if (dwpe != nullptr) {
          float* wpe_row = dwpe + p * C;
#pragma omp simd
          for (int c = c0; c < c1; ++c) wpe_row[c] += d[c];
        }
      }
    }
  }
}

}  // namespace triad::cpu
