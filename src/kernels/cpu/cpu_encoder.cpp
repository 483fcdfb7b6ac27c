// Token + position embedding.
#include <algorithm>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C) {
  const int N = B * T;
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const float* tok_row = wte + size_t(tokens[n]) * C;
    const float* pos_row = wpe + size_t(n % T) * C;
    float* o = out + size_t(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = tok_row[c] + pos_row[c];
  }
}

// Several positions may hold the same token, so rows of dwte receive several contributions.
// Instead of atomics we split the channels: each thread owns a slice of columns and walks all
// tokens in order, which makes every sum serial (deterministic) and race-free.
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                      int T, int C) {
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
        float* wte_row = dwte + size_t(tokens[n]) * C;
        float* wpe_row = dwpe + size_t(t) * C;
#pragma omp simd
        for (int c = c0; c < c1; ++c) {
          wte_row[c] += d[c];
          wpe_row[c] += d[c];
        }
      }
    }
  }
}

}  // namespace triad::cpu
