// The fused softmax + cross-entropy of one row of bf16 logits as a block program (see
// block_program.h): the GPU kernel of cuda_crossentropy.cu for bf16 logits whose padded width
// Vp is a multiple of 8, and the CPU test test_crossentropy_emulated.
//
// One pass over memory: the block loads its row once with 16-byte loads into registers (kVec
// vectors of 8 per thread), finds the row max and first argmax, sums exp(x − max) in double,
// and writes dloss/dlogits back over the row from the registers. The arithmetic is that of the
// other cross-entropy kernels (cuda_crossentropy.cu):
//   loss    = log Σ_j e^{x_j − max} − (x_target − max)      (the sum in double)
//   dlogits = e^{x_j − max} · (s / Σ) − dloss_scale · [j = target],  0 for j >= V, where
//             s = dloss_scale, times (1 + 2·z_loss·log Z) with a z-loss (log Z = max + log Σ)
//             and with a softcap c > 0 every value times 1 − (x_j/c)² (the logits were capped)
//   correct = 1 where the first index of the maximum equals the target
// A negative target (kIgnored, backend.h's kIgnoredTarget: a masked target) makes the row's
// loss, hit and gradient 0.
#pragma once

#include <climits>
#include <cmath>  // INFINITY
#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::crossentropy {

constexpr int32_t kIgnored = INT32_MIN;  // backend.h's kIgnoredTarget (asserted where both meet)

// Shared memory the block programs need (cross-warp partials of the reductions: 32 doubles of
// block_sum's, then block_argmax's 32 values and 32 indices).
TRIAD_BLOCK_SIZE size_t row_smem() { return 32 * sizeof(double) + 32 * (sizeof(float) + 4); }

// The cap's derivative at logit y for capped logits (model.logit_softcap = c > 0), 1 without.
TRIAD_BLOCK_FN float cap_slope(float y, float c) {
  if (c <= 0.0f) return 1.0f;
  const float t = y / c;
  return 1.0f - t * t;
}

// The softmax term's scale: dloss_scale, times 1 + 2c·log Z with a z-loss of coefficient c
// (exactly dloss_scale without one). The row kernels of cuda_crossentropy.cu use it too.
TRIAD_BLOCK_FN double z_loss_scale(float dloss_scale, float z_loss, double log_z) {
  return z_loss == 0.0f ? double(dloss_scale)
                        : double(dloss_scale) * (1.0 + 2.0 * double(z_loss) * log_z);
}

// Max with the first index on ties, over the warp (a shuffle butterfly); every lane gets it.
template <class X>
TRIAD_BLOCK_FN void warp_argmax(X& x, float& v, int& idx) {
  TRIAD_UNROLL
  for (int o = 16; o > 0; o /= 2) {
    const float ov = x.shfl_xor(v, o);
    const int oi = x.shfl_xor(idx, o);
    if (ov > v || (ov == v && oi < idx)) {
      v = ov;
      idx = oi;
    }
  }
}

// The same over the block; every thread gets the result.
template <int kThreads, class X>
TRIAD_BLOCK_FN void block_argmax(X& x, float& v, int& idx) {
  warp_argmax(x, v, idx);
  float* sv = reinterpret_cast<float*>(x.smem() + 32 * sizeof(double));
  int* si = reinterpret_cast<int*>(sv + 32);
  const int lane = x.thread() % 32, warp = x.thread() / 32;
  x.sync_threads();  // an earlier reduction's partials are consumed
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = idx;
  }
  x.sync_threads();
  v = lane < kThreads / 32 ? sv[lane] : -INFINITY;
  idx = lane < kThreads / 32 ? si[lane] : INT_MAX;
  warp_argmax(x, v, idx);
}

// Row blockIdx.x of logits [N, Vp] (bf16 bits; 16-byte aligned rows, Vp % 8 == 0, Vp <= 8 ·
// kVec · kThreads, 0 < V <= Vp), replaced by its gradient; losses[n], correct[n] and log_z[n]
// (each if non-null).
template <int kThreads, int kVec, class X>
TRIAD_BLOCK_FN void crossentropy_row(X& x, uint16_t* logits, float* losses, float* correct,
                                     const int32_t* targets, int V, int Vp, float dloss_scale,
                                     float z_loss = 0.0f, float* log_z = nullptr,
                                     float softcap = 0.0f) {
  const size_t n = size_t(x.block_x());
  uint16_t* row = logits + n * size_t(Vp);
  const int t = x.thread(), nvec = Vp / 8;
  const int target = targets[n];
  if (target < 0) {  // an ignored row, the same branch in every thread: zeros, loss 0, no hit
    Vec16 zero;
    TRIAD_UNROLL
    for (int e = 0; e < 4; ++e) zero.w[e] = 0u;
    TRIAD_UNROLL
    for (int i = 0; i < kVec; ++i) {
      const int j = t + i * kThreads;
      if (j < nvec) x.store16(row + 8 * size_t(j), zero);
    }
    if (t == 0) {
      losses[n] = 0.0f;
      if (correct != nullptr) correct[n] = 0.0f;
      if (log_z != nullptr) log_z[n] = 0.0f;
    }
    return;
  }
  // Read before the first barrier, so before any thread writes the row.
  const float target_logit = target < V ? x.bf16_float(row[target]) : 0.0f;

  Vec16 v[kVec];
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i) {
    const int j = t + i * kThreads;
    if (j < nvec) v[i] = x.load16(row + 8 * size_t(j));
  }

  // This thread's columns increase with (i, e): a strict > keeps its first maximum.
  float best = -INFINITY;
  int best_idx = INT_MAX;
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i) {
    const int j = t + i * kThreads;
    TRIAD_UNROLL
    for (int e = 0; e < 8; ++e) {
      const int col = 8 * j + e;
      if (j < nvec && col < V) {
        const float val = bf16_element(x, v[i], e);
        if (val > best) {
          best = val;
          best_idx = col;
        }
      }
    }
  }
  block_argmax<kThreads>(x, best, best_idx);
  const float mx = best;

  double sum = 0.0;
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i) {
    const int j = t + i * kThreads;
    TRIAD_UNROLL
    for (int e = 0; e < 8; ++e)
      if (j < nvec && 8 * j + e < V) sum += double(x.exp(bf16_element(x, v[i], e) - mx));
  }
  sum = block_sum(x, sum, reinterpret_cast<double*>(x.smem()), kThreads);

  const double log_sum = x.log(sum), lz = double(mx) + log_sum;
  const float factor = float(z_loss_scale(dloss_scale, z_loss, lz) / sum);
  TRIAD_UNROLL
  for (int i = 0; i < kVec; ++i) {
    const int j = t + i * kThreads;
    if (j >= nvec) continue;
    Vec16 g;
    TRIAD_UNROLL
    for (int e = 0; e < 8; e += 2) {
      float pair[2];
      TRIAD_UNROLL
      for (int k = 0; k < 2; ++k) {
        const int col = 8 * j + e + k;
        float d = 0.0f;  // padded columns
        if (col < V) {
          const float y = bf16_element(x, v[i], e + k);
          d = x.exp(y - mx) * factor;
          if (col == target) d -= dloss_scale;
          d *= cap_slope(y, softcap);
        }
        pair[k] = d;
      }
      g.w[e / 2] = x.pack_bf16(pair[0], pair[1]);
    }
    x.store16(row + 8 * size_t(j), g);
  }
  if (t == 0) {
    losses[n] = float(log_sum - double(target_logit - mx));
    if (log_z != nullptr) log_z[n] = float(lz);
    if (correct != nullptr) {
      const int argmax = best_idx == INT_MAX ? 0 : best_idx;  // all −inf (or NaN): index 0
      correct[n] = argmax == target ? 1.0f : 0.0f;
    }
  }
}

}  // namespace triad::crossentropy
