// Fused softmax + cross-entropy over the first V of Vp logits per row; the logits are replaced
// by dloss/dlogits in place, which saves a [N, Vp] buffer (the largest activation).
//
// The vocabulary-parallel form splits the same computation into three per-row passes (row max,
// partial sums, backward) between which the caller reduces over the tensor-parallel ranks; it
// uses the same exp and flush helpers, so one slice holding the whole vocabulary gives the
// fused op's dlogits up to the rounding of the float sum_exp it is handed.
//
// Soft-capped logits (model.logit_softcap = c): scale_cap_logits caps them in place, and the
// gradient passes multiply each value by the cap's derivative 1 − (y/c)² at the logit y it
// replaces, so they read y before writing (the row is not turned into exponentials first).
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_math.h"
#include "cpu_ops.h"
#include "triad/kernels/backend.h"  // kIgnoredTarget

namespace triad::cpu {
namespace {

using f64x4 = double __attribute__((vector_size(32)));

// Σ_{j<n} exp_approx(x[j] − shift) in double, x left untouched. Eight lanes (two vectors of
// four doubles) in index order, combined in a fixed tree, then the tail: deterministic and
// independent of the thread count.
double sum_exp_shifted(const float* x, int n, float shift) {
  f64x4 lo = {}, hi = {};
  const int n8 = n / 8 * 8;
  for (int j = 0; j < n8; j += 8) {
    const f32x8 e = exp8(load8(x + j) - shift);
    lo += __builtin_convertvector(__builtin_shufflevector(e, e, 0, 1, 2, 3), f64x4);
    hi += __builtin_convertvector(__builtin_shufflevector(e, e, 4, 5, 6, 7), f64x4);
  }
  const f64x4 v = lo + hi;
  double sum = (v[0] + v[1]) + (v[2] + v[3]);
  for (int j = n8; j < n; ++j) sum += double(exp_approx(x[j] - shift));
  return sum;
}

// tanh(u) to ~2e-7 relative everywhere (tanh8's cancellation near 0 would cost a capped logit
// near 0 all of its digits): the odd Taylor series through u^17 for |u| < 0.5, where its
// first dropped term is below 1e-9 relative, and 1 − 2/(e^{2u} + 1) beyond (|tanh u| > 0.46 there,
// so its ~1e-7 absolute error is relative too).
f32x8 tanh_accurate8(f32x8 u) {
  const f32x8 u2 = u * u;
  f32x8 p = splat8(5.90027440e-4f);
  p = p * u2 - 1.45583438e-3f;
  p = p * u2 + 3.59212803e-3f;
  p = p * u2 - 8.86323552e-3f;
  p = p * u2 + 2.18694885e-2f;
  p = p * u2 - 5.39682540e-2f;
  p = p * u2 + 1.33333333e-1f;
  p = p * u2 - 3.33333333e-1f;
  const f32x8 series = u + u * u2 * p;
  return u2 < 0.25f ? series : tanh8(u);
}

// row[j] = flush_tiny(e^{row[j] − shift} · f) · (1 − (row[j]/c)²) for j < n: the softmax term
// of the gradient of capped logits (c > 0), times the cap's derivative.
void capped_softmax_grad(float* row, int n, float shift, float f, float c) {
  const int n8 = n / 8 * 8;
  for (int j = 0; j < n8; j += 8) {
    const f32x8 y = load8(row + j), t = y / c;
    store8(row + j, flush_tiny8(exp8(y - shift) * f) * (1.0f - t * t));
  }
  for (int j = n8; j < n; ++j) {
    const float t = row[j] / c;
    row[j] = flush_tiny(exp_approx(row[j] - shift) * f) * (1.0f - t * t);
  }
}

// The cap's derivative at logit y (1 without a cap).
float cap_slope(float y, float c) {
  if (c <= 0.0f) return 1.0f;
  const float t = y / c;
  return 1.0f - t * t;
}

// The softmax term's scale: dloss_scale, times 1 + 2c·log Z with a z-loss of coefficient c
// (exactly dloss_scale without one).
double z_loss_factor(float dloss_scale, float z_loss, double log_z) {
  if (z_loss == 0.0f) return double(dloss_scale);
  return double(dloss_scale) * (1.0 + 2.0 * double(z_loss) * log_z);
}

}  // namespace

void crossentropy_forward_backward(float* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float* log_z, float softcap) {
#pragma omp parallel for schedule(static) if (size_t(N) * Vp >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    float* row = logits + size_t(n) * Vp;
    const int target = targets[n];
    if (target < 0) {  // an ignored row (kIgnoredTarget): no loss, no gradient
      losses[n] = 0.0f;
      if (correct != nullptr) correct[n] = 0.0f;
      if (log_z != nullptr) log_z[n] = 0.0f;
      std::fill(row, row + Vp, 0.0f);
      continue;
    }

    float max_val = row[0];
#pragma omp simd reduction(max : max_val)
    for (int j = 0; j < V; ++j) max_val = std::max(max_val, row[j]);
    if (correct != nullptr) {
      int argmax = 0;  // the first index holding the maximum, as torch.argmax
      while (argmax < V - 1 && row[argmax] != max_val) ++argmax;  // bounded if NaN
      correct[n] = argmax == target ? 1.0f : 0.0f;
    }
    const float target_logit = row[target];

    // Shifted exponentials overwrite the row (capped logits: the row is kept for the gradient);
    // their sum is kept in double.
    double sum = 0.0;
    if (softcap > 0.0f) {
      sum = sum_exp_shifted(row, V, max_val);
    } else {
      exp_shifted_inplace(row, V, max_val);
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) sum += row[j];
    }
    // loss = logsumexp − logit[target] = log(Σ e) − (logit[target] − max)
    const double log_sum = std::log(sum);
    losses[n] = float(log_sum - double(target_logit - max_val));
    const double lz = double(max_val) + log_sum;  // log Z
    if (log_z != nullptr) log_z[n] = float(lz);

    // dlogits = softmax · scale (tiny values flushed to 0: they feed the LM-head gemms, see
    // kFlushBelow), minus scale at the target; the z-loss scales the softmax term, a cap's
    // derivative all of it.
    const float f = float(z_loss_factor(dloss_scale, z_loss, lz) / sum);
    if (softcap > 0.0f) {
      capped_softmax_grad(row, V, max_val, f, softcap);
    } else {
      scale_flush_inplace(row, size_t(V), f);
    }
    row[target] -= dloss_scale * cap_slope(target_logit, softcap);
    for (int j = V; j < Vp; ++j) row[j] = 0.0f;
  }
}

void logits_row_max(float* row_max, float* argmax, const float* logits, int N, int V, int Vp) {
#pragma omp parallel for schedule(static) if (size_t(N) * V >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    if (V <= 0) {
      row_max[n] = -std::numeric_limits<float>::infinity();
      argmax[n] = -1.0f;
      continue;
    }
    const float* row = logits + size_t(n) * Vp;
    float max_val = row[0];  // as crossentropy_forward_backward
#pragma omp simd reduction(max : max_val)
    for (int j = 0; j < V; ++j) max_val = std::max(max_val, row[j]);
    int first = 0;  // the first index holding the maximum, as torch.argmax
    while (first < V - 1 && row[first] != max_val) ++first;  // bounded if NaN
    row_max[n] = max_val;
    argmax[n] = float(first);
  }
}

void softmax_partial_sums(float* sum_exp, float* target_logit, const float* logits,
                          const float* row_max, const int32_t* targets, int N, int V, int Vp) {
#pragma omp parallel for schedule(static) if (size_t(N) * V >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const float* row = logits + size_t(n) * Vp;
    sum_exp[n] = V > 0 ? float(sum_exp_shifted(row, V, row_max[n])) : 0.0f;
    const int32_t target = targets[n];
    target_logit[n] = target >= 0 && target < V ? row[target] : 0.0f;
  }
}

void crossentropy_backward_partial(float* logits, const float* row_max, const float* sum_exp,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float softcap) {
#pragma omp parallel for schedule(static) if (size_t(N) * Vp >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    float* row = logits + size_t(n) * Vp;
    if (targets[n] == kIgnoredTarget) {
      std::fill(row, row + Vp, 0.0f);
      continue;
    }
    if (V > 0) {
      // As crossentropy_forward_backward: softmax · scale with tiny values flushed to 0, minus
      // scale at the target (when this slice holds it), all of it times a cap's derivative.
      const int32_t target = targets[n];
      const float target_logit = target >= 0 && target < V ? row[target] : 0.0f;
      const double lz = double(row_max[n]) + std::log(double(sum_exp[n]));
      const float f = float(z_loss_factor(dloss_scale, z_loss, lz) / double(sum_exp[n]));
      if (softcap > 0.0f) {
        capped_softmax_grad(row, V, row_max[n], f, softcap);
      } else {
        exp_shifted_inplace(row, size_t(V), row_max[n]);
        scale_flush_inplace(row, size_t(V), f);
      }
      if (target >= 0 && target < V) row[target] -= dloss_scale * cap_slope(target_logit, softcap);
    }
    for (int j = std::max(V, 0); j < Vp; ++j) row[j] = 0.0f;
  }
}

void scale_cap_logits(float* x, size_t n, float mult, float c) {
  const size_t n8 = n / 8 * 8;
  if (c <= 0.0f) {
    scale(x, mult, n);
    return;
  }
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t j = 0; j < n8; j += 8) store8(x + j, c * tanh_accurate8(mult * load8(x + j) / c));
  for (size_t j = n8; j < n; ++j) x[j] = c * tanh_accurate8(splat8(mult * x[j] / c))[0];
}

}  // namespace triad::cpu
