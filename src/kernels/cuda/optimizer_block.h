// The optimizer updates of cuda_optimizer.cu as block programs (see block_program.h), so that
// the CPU tests run the same code through the SIMT emulator (test_optimizer_emulated) against
// the CPU backend. One fused elementwise pass over parameters, gradients and state with the
// element formulas both backends share (optimizer_math.h); `copy` (may be null: bf16 bits)
// receives each updated parameter rounded once. Grid-stride loops: `threads` per block, `stride`
// the grid's threads. `copy` is uniform over the grid, so its test does not diverge.
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"
#include "triad/kernels/optimizer_math.h"

namespace triad::optimizer_block {

template <class X>
TRIAD_BLOCK_FN void adamw(X& x, float* p, const float* g, float* m, float* v, size_t n, float lr,
                          float beta1, float beta2, float eps, float wd, float bc1, float bc2,
                          uint16_t* copy, float grad_scale, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    adamw_element(p[i], g[i] * grad_scale, m[i], v[i], lr, beta1, beta2, eps, wd, bc1, bc2);
    if (copy != nullptr) store(x, copy + i, p[i]);
  }
}

// AdamW over the runs (sorted, disjoint; Run: begin, end, wd, lr_scale): element i belongs to
// the last run starting at or before it, if i is before that run's end; elements between runs
// are untouched. total = the last run's end.
template <class X, class Run>
TRIAD_BLOCK_FN void adamw_runs(X& x, float* p, const float* g, float* m, float* v, const Run* runs,
                               int nruns, size_t total, float lr, float beta1, float beta2,
                               float eps, float bc1, float bc2, uint16_t* copy, float grad_scale,
                               int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) {
    int lo = 0, hi = nruns - 1;
    while (lo < hi) {  // the last run with begin <= i (runs[0].begin <= i is not assumed)
      const int mid = (lo + hi + 1) / 2;
      if (runs[mid].begin <= i)
        lo = mid;
      else
        hi = mid - 1;
    }
    const Run r = runs[lo];
    if (i < r.begin || i >= r.end) continue;  // between runs: untouched
    adamw_element(p[i], g[i] * grad_scale, m[i], v[i], lr * r.lr_scale, beta1, beta2, eps, r.wd,
                  bc1, bc2);
    if (copy != nullptr) store(x, copy + i, p[i]);
  }
}

template <class X>
TRIAD_BLOCK_FN void sgd(X& x, float* p, const float* g, float* buf, size_t n, float lr,
                        float momentum, float wd, uint16_t* copy, float grad_scale, int threads,
                        size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    sgd_element(p[i], g[i] * grad_scale, buf[i], lr, momentum, wd);
    if (copy != nullptr) store(x, copy + i, p[i]);
  }
}

template <class X>
TRIAD_BLOCK_FN void lion(X& x, float* p, const float* g, float* m, size_t n, float lr, float beta1,
                         float beta2, float wd, uint16_t* copy, float grad_scale, int threads,
                         size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    lion_element(p[i], g[i] * grad_scale, m[i], lr, beta1, beta2, wd);
    if (copy != nullptr) store(x, copy + i, p[i]);
  }
}

template <class X>
TRIAD_BLOCK_FN void muon_momentum(X& x, float* buf, float* u, const float* g, size_t n, float mu,
                                  bool nesterov, float grad_scale, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    muon_momentum_element(buf[i], u[i], g[i] * grad_scale, mu, nesterov);
  }
}

template <class X>
TRIAD_BLOCK_FN void muon_apply(X& x, float* p, const float* o, size_t n, float lr, float wd,
                               float scale, uint16_t* copy, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    muon_apply_element(p[i], o[i], lr, wd, scale);
    if (copy != nullptr) store(x, copy + i, p[i]);
  }
}

}  // namespace triad::optimizer_block
