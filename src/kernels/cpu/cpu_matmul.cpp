// Linear layers through OpenBLAS sgemm (row-major, weight [OC, IC]):
//   forward   out   = inp · Wᵀ + b
//   backward  dinp += dout · W,   dW += doutᵀ · inp,   db += Σ_rows dout
// The products go through parallel_sgemm (OpenMP over blocks of the output); the bias
// passes are OpenMP loops.
#include <algorithm>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int IC, int OC) {
  float beta = 0.0f;
  if (bias != nullptr) {
    // Start from the broadcast bias and let sgemm accumulate onto it (beta = 1): one write
    // pass instead of a read-modify-write pass after the product.
#pragma omp parallel for schedule(static) if (size_t(N) * OC >= kParallelMin)
    for (int n = 0; n < N; ++n) std::copy(bias, bias + OC, out + size_t(n) * OC);
    beta = 1.0f;
  }
  parallel_sgemm(false, true, N, OC, IC, 1.0f, inp, IC, weight, IC, beta, out, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC) {
  if (dinp != nullptr) {
    parallel_sgemm(false, false, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
  }
  if (dweight != nullptr)
    parallel_sgemm(true, false, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
  if (dbias != nullptr) bias_backward(dbias, dout, N, OC);
}

void bias_backward(float* dbias, const float* dout, int N, int OC) {
  // Column sums, parallel over column slices with each column summed serially over the rows
  // (deterministic, and every row access is a contiguous slice).
  constexpr int kSlice = 64;
  const int n_slices = (OC + kSlice - 1) / kSlice;
#pragma omp parallel for schedule(static) if (size_t(N) * OC >= kParallelMin)
  for (int s = 0; s < n_slices; ++s) {
    const int o0 = s * kSlice;
    const int width = std::min(OC, o0 + kSlice) - o0;
    float sum[kSlice] = {};
    for (int n = 0; n < N; ++n) {
      const float* d = dout + size_t(n) * OC + o0;
#pragma omp simd
      for (int o = 0; o < width; ++o) sum[o] += d[o];
    }
    for (int o = 0; o < width; ++o) dbias[o0 + o] += sum[o];
  }
}

}  // namespace triad::cpu
