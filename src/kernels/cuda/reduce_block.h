// The deterministic reductions of cuda_reduce.cu (which describes the two-pass column sums) as
// block programs (see block_program.h), so that the CPU tests run the same code through the SIMT
// emulator (test_reduce_emulated). No atomics: every sum has an order fixed by the shapes.
//  - column_partials: block (x, y) of kColumnThreads owns kColumns adjacent columns and slice y
//    of the rows; thread t sums column t % kColumns over rows t / kColumns + kRowGroups·i of the
//    slice in order, then the kRowGroups partial sums are added in order into partials[y][c].
//  - column_finish: one thread per column adds partials[0..slices)[c] in order onto dst[c].
//  - sum_squares_partials / sum_partials: Σ x² in double, a grid-stride slice per block reduced
//    through a fixed tree (block_program.h's block_sum), then one block adding the blocks'
//    sums.
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::reduce_block {

constexpr int kColumns = 64;
constexpr int kRowGroups = 8;
constexpr int kColumnThreads = kColumns * kRowGroups;

TRIAD_BLOCK_SIZE size_t column_smem() { return column_sums_smem<kColumns, kRowGroups, 1>(); }
TRIAD_BLOCK_SIZE size_t sum_smem() { return 32 * sizeof(double); }

// partials[y][c] = Σ src[n, c] over the rows [y·rows, min(N, (y + 1)·rows)).
template <class X, class Elem>
TRIAD_BLOCK_FN void column_partials(X& x, float* partials, const Elem* src, int N, int C,
                                    int rows) {
  const int c = x.block_x() * kColumns + x.thread() % kColumns;
  const int lo = x.block_y() * rows, hi = lo + rows < N ? lo + rows : N;
  float total[1];
  if (column_group_sums<kColumns, kRowGroups>(
          x, reinterpret_cast<float*>(x.smem()), lo, hi, c < C,
          [&](int n, float(&sum)[1]) { sum[0] += load(x, src + size_t(n) * C + c); }, total))
    partials[size_t(x.block_y()) * C + c] = total[0];
}

// dst[c] += Σ_y partials[y][c], y in order; `threads` per block.
template <class X>
TRIAD_BLOCK_FN void column_finish(X& x, float* dst, const float* partials, int C, int slices,
                                  int threads) {
  const int c = x.block_x() * threads + x.thread();
  if (c >= C) return;
  float total = 0.0f;
  for (int y = 0; y < slices; ++y) total += partials[size_t(y) * C + c];
  dst[c] += total;
}

// partials[block] = Σ v[i]² over the block's grid-stride slice.
template <class X, class Elem>
TRIAD_BLOCK_FN void sum_squares_partials(X& x, double* partials, const Elem* v, size_t n,
                                         int threads, size_t stride) {
  double sum = 0.0;
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const double e = load(x, v + i);
    sum += e * e;
  }
  sum = block_sum(x, sum, reinterpret_cast<double*>(x.smem()), threads);
  if (x.thread() == 0) partials[x.block_x()] = sum;
}

// *out = Σ partials[0..count) (one block).
template <class X>
TRIAD_BLOCK_FN void sum_partials(X& x, double* out, const double* partials, int count,
                                 int threads) {
  double sum = 0.0;
  for (int i = x.thread(); i < count; i += threads) sum += partials[i];
  sum = block_sum(x, sum, reinterpret_cast<double*>(x.smem()), threads);
  if (x.thread() == 0) *out = sum;
}

}  // namespace triad::reduce_block
