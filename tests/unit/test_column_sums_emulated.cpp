// The vectorized column-sum block program (src/kernels/cuda/column_sums_block.h), run on the CPU
// through the SIMT emulator, against the sums in double: per row slice, Σ dout (bias gradients)
// and, for LayerNorm, Σ dout·x̂; within 1e-5 of the sum of the terms' magnitudes. Widths that
// leave part of a block idle, slices of unequal length. Needs no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "../../src/kernels/cuda/column_sums_block.h"
#include "../support/simt_emulator.h"

namespace triad {
namespace {

using Buffer = simt::Bf16Buffer;

void check(int N, int C, int slices, bool layernorm) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C << " slices=" << slices
                                    << (layernorm ? " layernorm" : " bias"));
  Buffer dout = simt::random_bf16_buffer(size_t(N) * C, 1, -2.0f, 2.0f),
         inp = simt::random_bf16_buffer(size_t(N) * C, 2, -2.0f, 2.0f);
  std::vector<float> mean(N), rstd(N);
  for (int n = 0; n < N; ++n) {
    mean[n] = 0.1f * float(n % 7) - 0.3f;
    rstd[n] = 0.5f + 0.05f * float(n % 5);
  }
  const int rows = (N + slices - 1) / slices;
  std::vector<float> pw(size_t(slices) * C, NAN), pb(size_t(slices) * C, NAN);
  const int blocks_x = (C + colsum::kColumns - 1) / colsum::kColumns;
  simt::launch(blocks_x, slices, colsum::kThreads, colsum::smem_bytes(), simt::CopyTiming::at_issue,
               [&](simt::Thread& x) {
                 colsum::partial_sums(x, pw.data(), pb.data(), dout.data(),
                                      layernorm ? inp.data() : nullptr, mean.data(), rstd.data(), N,
                                      C, rows);
               });
  double worst = 0.0;
  for (int y = 0; y < slices; ++y)
    for (int c = 0; c < C; ++c) {
      double w = 0.0, b = 0.0, scale_w = 0.0, scale_b = 0.0;
      for (int n = y * rows; n < std::min(N, (y + 1) * rows); ++n) {
        const double d = dout.at(size_t(n) * C + c);
        const double term = d * (inp.at(size_t(n) * C + c) - mean[n]) * rstd[n];
        w += term;
        b += d;
        scale_w += std::abs(term);
        scale_b += std::abs(d);
      }
      const size_t i = size_t(y) * C + c;
      worst = std::max(worst, std::abs(pb[i] - b) / (1e-5 * scale_b + 1e-30));
      if (layernorm) worst = std::max(worst, std::abs(pw[i] - w) / (1e-5 * scale_w + 1e-30));
      if (!std::isfinite(pb[i]) || (layernorm && !std::isfinite(pw[i]))) worst = INFINITY;
    }
  EXPECT_LE(worst, 1.0);
}

TEST(ColumnSumsEmulated, BiasPartialBlockUnequalSlices) { check(37, 264, 3, false); }

TEST(ColumnSumsEmulated, LayerNormTwoBlocks) { check(50, 512, 4, true); }

TEST(ColumnSumsEmulated, FewerRowsThanRowGroups) { check(5, 64, 2, true); }

}  // namespace
}  // namespace triad
