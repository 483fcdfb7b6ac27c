// The cross-entropy kernels of cuda_crossentropy.cu that read their row with a thread stride, as
// block programs (see block_program.h), for any storage type Elem (float, or uint16_t bf16
// bits), so that the CPU test test_crossentropy_rows_emulated runs the same code through the
// SIMT emulator against the CPU backend. One block of kThreads per row (row blockIdx.x):
//  - fused_row: the fused softmax + cross-entropy for the logits the one-pass program of
//    crossentropy_block.h does not take (fp32, a padded width that is not a multiple of 8,
//    misaligned rows, rows longer than it holds in registers);
//  - the vocabulary-parallel form (backend.h), between whose steps the caller reduces over the
//    tensor-parallel ranks: row_max (row max and first argmax), partial_sums (Σ exp in double
//    and the target logit) and backward_partial (the gradient).
// The arithmetic is that of crossentropy_block.h, which states it; here the rows are read from
// memory in every pass instead of held in registers.
#pragma once

#include <climits>
#include <cmath>  // INFINITY
#include <cstddef>
#include <cstdint>

#include "block_program.h"
#include "crossentropy_block.h"

namespace triad::crossentropy {

// The largest of this thread's columns t, t + kThreads, ... below V, with the first index of it;
// then over the block (every thread gets the result; idx INT_MAX where no column is finite).
template <int kThreads, class X, class Elem>
TRIAD_BLOCK_FN void row_argmax(X& x, const Elem* row, int V, float& best, int& idx) {
  best = -INFINITY;
  idx = INT_MAX;
  for (int j = x.thread(); j < V; j += kThreads) {
    const float v = load(x, row + j);
    if (v > best) {  // j increases: keeps this thread's first maximum
      best = v;
      idx = j;
    }
  }
  block_argmax<kThreads>(x, best, idx);
}

// Σ_j exp(row[j] − mx) over j < V, in double, over the block.
template <int kThreads, class X, class Elem>
TRIAD_BLOCK_FN double row_sum_exp(X& x, const Elem* row, int V, float mx) {
  double sum = 0.0;
  for (int j = x.thread(); j < V; j += kThreads) sum += double(x.exp(load(x, row + j) - mx));
  return block_sum(x, sum, reinterpret_cast<double*>(x.smem()), kThreads);
}

// The row's gradient over itself (columns < V; zeros in V..Vp) from its max and Σ exp.
template <int kThreads, class X, class Elem>
TRIAD_BLOCK_FN void row_gradient(X& x, Elem* row, int V, int Vp, int target, float mx, double sum,
                                 float dloss_scale, float z_loss, float softcap) {
  const double lz = double(mx) + x.log(sum);
  const float factor = float(z_loss_scale(dloss_scale, z_loss, lz) / sum);
  for (int j = x.thread(); j < V; j += kThreads) {
    const float y = load(x, row + j);
    float g = x.exp(y - mx) * factor;
    if (j == target) g -= dloss_scale;
    store(x, row + j, g * cap_slope(y, softcap));
  }
  for (int j = (V > 0 ? V : 0) + x.thread(); j < Vp; j += kThreads) store(x, row + j, 0.0f);
}

template <int kThreads, class X, class Elem>
TRIAD_BLOCK_FN void zero_row(X& x, Elem* row, int Vp) {
  for (int j = x.thread(); j < Vp; j += kThreads) store(x, row + j, 0.0f);
}

// The fused form: the row of logits [N, Vp] replaced by its gradient; losses[n], correct[n] and
// log_z[n] (each if non-null). 0 < V <= Vp.
template <int kThreads, class X, class Elem>
TRIAD_BLOCK_FN void fused_row(X& x, Elem* logits, float* losses, float* correct,
                              const int32_t* targets, int V, int Vp, float dloss_scale,
                              float z_loss, float* log_z, float softcap) {
  const size_t n = size_t(x.block_x());
  Elem* row = logits + n * size_t(Vp);
  const int target = targets[n];
  if (target < 0) {  // an ignored row, the same branch in every thread: zeros, loss 0, no hit
    zero_row<kThreads>(x, row, Vp);
    if (x.thread() == 0) {
      losses[n] = 0.0f;
      if (correct != nullptr) correct[n] = 0.0f;
      if (log_z != nullptr) log_z[n] = 0.0f;
    }
    return;
  }
  // Read before the first barrier, so before any thread writes the row.
  const float target_logit = target < V ? load(x, row + target) : 0.0f;
  float mx;
  int idx;
  row_argmax<kThreads>(x, row, V, mx, idx);
  // Its barriers order every read of the row before the writes of row_gradient.
  const double sum = row_sum_exp<kThreads>(x, row, V, mx);
  row_gradient<kThreads>(x, row, V, Vp, target, mx, sum, dloss_scale, z_loss, softcap);
  if (x.thread() == 0) {
    const double log_sum = x.log(sum);
    losses[n] = float(log_sum - double(target_logit - mx));
    if (log_z != nullptr) log_z[n] = float(double(mx) + log_sum);
    if (correct != nullptr) {
      const int argmax = idx == INT_MAX ? 0 : idx;  // all −inf (or NaN): index 0
      correct[n] = argmax == target ? 1.0f : 0.0f;
    }
  }
}

// row_max[n] and argmax[n] (as a float; the first index of the maximum, 0 where no logit is
// finite) of this rank's V columns; V = 0: −inf and −1.
template <int kThreads, class X, class Elem>
TRIAD_BLOCK_FN void row_max(X& x, float* row_max, float* argmax, const Elem* logits, int V,
                            int Vp) {
  const size_t n = size_t(x.block_x());
  float mx;
  int idx;
  row_argmax<kThreads>(x, logits + n * size_t(Vp), V, mx, idx);
  if (x.thread() == 0) {
    row_max[n] = mx;
    argmax[n] = V <= 0 ? -1.0f : float(idx == INT_MAX ? 0 : idx);
  }
}

// sum_exp[n] = Σ exp(x − row_max[n]) over this rank's columns; target_logit[n] the target's
// logit where it is one of them (0 otherwise: another rank's, or ignored).
template <int kThreads, class X, class Elem>
TRIAD_BLOCK_FN void partial_sums(X& x, float* sum_exp, float* target_logit, const Elem* logits,
                                 const float* row_max, const int32_t* targets, int V, int Vp) {
  const size_t n = size_t(x.block_x());
  const Elem* row = logits + n * size_t(Vp);
  const double sum = row_sum_exp<kThreads>(x, row, V, row_max[n]);
  if (x.thread() == 0) {
    sum_exp[n] = float(sum);
    const int target = targets[n];
    target_logit[n] = target >= 0 && target < V ? load(x, row + target) : 0.0f;
  }
}

// The gradient of this rank's columns from the global row max and Σ exp; targets are local
// column indices (negative or >= V: another rank's, no −dloss_scale here), kIgnored a row of
// zeros.
template <int kThreads, class X, class Elem>
TRIAD_BLOCK_FN void backward_partial(X& x, Elem* logits, const float* row_max, const float* sum_exp,
                                     const int32_t* targets, int V, int Vp, float dloss_scale,
                                     float z_loss, float softcap) {
  const size_t n = size_t(x.block_x());
  Elem* row = logits + n * size_t(Vp);
  const int target = targets[n];
  if (target == kIgnored) {  // the same branch in every thread
    zero_row<kThreads>(x, row, Vp);
    return;
  }
  row_gradient<kThreads>(x, row, V, Vp, target, row_max[n], double(sum_exp[n]), dloss_scale, z_loss,
                         softcap);
}

}  // namespace triad::crossentropy
