// LayerNorm over the last dimension (eps 1e-5), with mean and 1/std saved for backward; RMSNorm
// where mean is null (backend.h): no centering, no bias.
#include <algorithm>
#include <cmath>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {
namespace {

constexpr int kColumnSlice = 64;  // channels per task in the parameter-gradient pass

}  // namespace

// Two passes per row (mean, then the variance of x − mean) in double: the rows are short, so
// the accuracy costs nothing, and the two-pass form avoids E[x²] − E[x]² cancellation.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + size_t(n) * C;
    double sum = 0.0;
    if (mean != nullptr) {
#pragma omp simd reduction(+ : sum)
      for (int c = 0; c < C; ++c) sum += x[c];
    }
    const double mu = sum / C;  // 0 for RMSNorm
    double sq = 0.0;
#pragma omp simd reduction(+ : sq)
    for (int c = 0; c < C; ++c) sq += (x[c] - mu) * (x[c] - mu);
    const float m = float(mu);
    const float s = float(1.0 / std::sqrt(sq / C + double(eps)));
    float* o = out + size_t(n) * C;
    if (bias != nullptr) {
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    } else {
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c];
    }
    if (mean != nullptr) mean[n] = m;
    rstd[n] = s;
  }
}

// With x̂ = (x − μ)·r and g = dout·w:
//   dx = r·(g − mean(g) − x̂·mean(g·x̂)),   dw = Σ_rows dout·x̂,   db = Σ_rows dout.
// RMSNorm (mean null): μ = 0 and no mean(g) term (the output does not depend on the row's mean
// through a centering), dx = r·(g − x̂·mean(g·x̂)); no db.
// dx is computed row-parallel. dw and db are column sums over rows; to keep them deterministic
// without atomics they are a second pass parallel over column slices, each slice summing its
// rows serially (x̂ is recomputed there, cheaper than storing it).
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  const bool parallel = size_t(N) * C >= kParallelMin;
#pragma omp parallel for schedule(static) if (parallel)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + size_t(n) * C;
    const float* d = dout + size_t(n) * C;
    const float m = mean != nullptr ? mean[n] : 0.0f;
    const float r = rstd[n];
    double g_sum = 0.0;
    double gx_sum = 0.0;
#pragma omp simd reduction(+ : g_sum, gx_sum)
    for (int c = 0; c < C; ++c) {
      const float g = d[c] * weight[c];
      g_sum += g;
      gx_sum += g * ((x[c] - m) * r);
    }
    const float g_mean = mean != nullptr ? float(g_sum / C) : 0.0f;
    const float gx_mean = float(gx_sum / C);
    float* dx = dinp + size_t(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) {
      const float xhat = (x[c] - m) * r;
      dx[c] += r * (d[c] * weight[c] - g_mean - xhat * gx_mean);
    }
  }

  const int n_slices = (C + kColumnSlice - 1) / kColumnSlice;
#pragma omp parallel for schedule(static) if (parallel)
  for (int s = 0; s < n_slices; ++s) {
    const int c0 = s * kColumnSlice;
    const int width = std::min(C, c0 + kColumnSlice) - c0;
    float dw[kColumnSlice] = {};
    float db[kColumnSlice] = {};
    for (int n = 0; n < N; ++n) {
      const float* x = inp + size_t(n) * C + c0;
      const float* d = dout + size_t(n) * C + c0;
      const float m = mean != nullptr ? mean[n] : 0.0f;
      const float r = rstd[n];
#pragma omp simd
      for (int c = 0; c < width; ++c) {
        dw[c] += d[c] * ((x[c] - m) * r);
        db[c] += d[c];
      }
    }
    for (int c = 0; c < width; ++c) {
      dweight[c0 + c] += dw[c];
      if (dbias != nullptr) dbias[c0 + c] += db[c];
    }
  }
}

}  // namespace triad::cpu
