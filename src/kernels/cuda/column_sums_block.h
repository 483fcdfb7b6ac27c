// Column sums over a slice of the rows of bf16 matrices as a block program (see
// block_program.h), with 16-byte loads: the first pass of the bias gradients (Σ_n dout[n, c])
// and of the LayerNorm parameter gradients (Σ_n dout·x̂ and Σ_n dout) in cuda_reduce.cu and
// cuda_layernorm.cu for bf16 rows with C % 8 == 0; column_sum_finish then adds the slices.
// The CPU test is test_column_sums_emulated.
//
// Block (x, y), kThreads threads: columns [256x, 256x + 256), each thread 8 consecutive columns
// (one vector) of every kRowGroups-th row of slice y (rows [y·rows, min(N, (y + 1)·rows))); the
// row groups are then added in a fixed order through shared memory, so the sums depend on the
// shapes only (deterministic).
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::colsum {

constexpr int kVectorsX = 32;  // column vectors per block: 256 columns
constexpr int kRowGroups = 8;
constexpr int kThreads = kVectorsX * kRowGroups;
constexpr int kColumns = 8 * kVectorsX;

TRIAD_BLOCK_SIZE size_t smem_bytes() { return 2 * size_t(kRowGroups) * kColumns * sizeof(float); }

// pb[y][c] = Σ dout[n, c] over the slice; with inp (LayerNorm), also pw[y][c] = Σ dout[n, c] ·
// (inp[n, c] − mean[n])·rstd[n] (mean null: RMSNorm, 0). dout, inp: [N, C] bf16 bits, 16-byte
// aligned, C % 8 == 0.
template <class X>
TRIAD_BLOCK_FN void partial_sums(X& x, float* pw, float* pb, const uint16_t* dout,
                                 const uint16_t* inp, const float* mean, const float* rstd, int N,
                                 int C, int rows) {
  const int tx = x.thread() % kVectorsX, ty = x.thread() / kVectorsX;
  const int c0 = x.block_x() * kColumns + 8 * tx;  // this thread's first column
  const int lo = x.block_y() * rows;
  const int hi = lo + rows < N ? lo + rows : N;
  const bool layernorm = inp != nullptr;
  float sw[8] = {}, sb[8] = {};
  if (c0 < C) {
    for (int n = lo + ty; n < hi; n += kRowGroups) {
      const size_t at = size_t(n) * C + c0;
      const Vec16 d = x.load16(dout + at);
      if (layernorm) {
        const Vec16 v = x.load16(inp + at);
        const float m = mean != nullptr ? mean[n] : 0.0f, r = rstd[n];
        TRIAD_UNROLL
        for (int e = 0; e < 8; ++e) {
          const float de = bf16_element(x, d, e);
          sw[e] += de * ((bf16_element(x, v, e) - m) * r);
          sb[e] += de;
        }
      } else {
        TRIAD_UNROLL
        for (int e = 0; e < 8; ++e) sb[e] += bf16_element(x, d, e);
      }
    }
  }
  float* part_w = reinterpret_cast<float*>(x.smem());  // [kRowGroups][kColumns]
  float* part_b = part_w + kRowGroups * kColumns;
  TRIAD_UNROLL
  for (int e = 0; e < 8; ++e) {
    part_w[ty * kColumns + 8 * tx + e] = sw[e];
    part_b[ty * kColumns + 8 * tx + e] = sb[e];
  }
  x.sync_threads();
  // Thread t adds the row groups of column t of the block, in order.
  const int col = x.thread(), c = x.block_x() * kColumns + col;
  if (c < C) {
    float tw = 0.0f, tb = 0.0f;
    for (int g = 0; g < kRowGroups; ++g) {
      tw += part_w[g * kColumns + col];
      tb += part_b[g * kColumns + col];
    }
    pb[size_t(x.block_y()) * C + c] = tb;
    if (layernorm) pw[size_t(x.block_y()) * C + c] = tw;
  }
}

}  // namespace triad::colsum
