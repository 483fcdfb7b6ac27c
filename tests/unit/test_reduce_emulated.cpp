// The CUDA backend's deterministic reductions (src/kernels/cuda/reduce_block.h, as
// cuda_reduce.cu launches them), run on the CPU through the SIMT emulator: the two-pass column
// sums (fp32 and bf16 rows, slices of unequal length, widths that leave part of a block idle)
// onto existing values, and Σ x² in double over several blocks and then one, against sums in
// double: within 1e-5 (columns, fp32) and 1e-12 (squares, double) of the sum of the terms'
// magnitudes. Needs no GPU; test_cuda_backend runs the kernels on one.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../../src/kernels/cuda/reduce_block.h"
#include "../support/block_data.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"

namespace triad {
namespace {

using Vec = std::vector<float>;

void check_columns(int N, int C, int slices, bool bf16) {
  SCOPED_TRACE(::testing::Message()
               << "N=" << N << " C=" << C << " slices=" << slices << (bf16 ? " bf16" : " fp32"));
  const testing::Bf16Bits bits =
      testing::bf16_bits(testing::random_vec(size_t(N) * C, 1, -2.0f, 2.0f));
  const Vec src = testing::widened(bits);
  const Vec dst0 = testing::random_vec(size_t(C), 2);
  const int rows = (N + slices - 1) / slices;
  Vec partials(size_t(slices) * C, NAN), dst = dst0;
  const int bx = (C + reduce_block::kColumns - 1) / reduce_block::kColumns;
  simt::launch(bx, slices, reduce_block::kColumnThreads, reduce_block::column_smem(),
               simt::CopyTiming::at_issue, [&](simt::Thread& x) {
                 if (bf16)
                   reduce_block::column_partials(x, partials.data(), bits.data(), N, C, rows);
                 else
                   reduce_block::column_partials(x, partials.data(), src.data(), N, C, rows);
               });
  const int threads = 64;
  simt::launch((C + threads - 1) / threads, 1, threads, 0, simt::CopyTiming::at_issue,
               [&](simt::Thread& x) {
                 reduce_block::column_finish(x, dst.data(), partials.data(), C, slices, threads);
               });
  for (int c = 0; c < C; ++c) {
    double want = dst0[size_t(c)], scale = std::abs(want);
    for (int n = 0; n < N; ++n) {
      want += src[size_t(n) * C + c];
      scale += std::abs(src[size_t(n) * C + c]);
    }
    ASSERT_LE(std::abs(dst[size_t(c)] - want), 1e-5 * scale) << "column " << c;
  }
}

TEST(ReduceEmulated, ColumnSumsUnequalSlices) { check_columns(37, 150, 3, false); }
TEST(ReduceEmulated, ColumnSumsBf16) { check_columns(100, 64, 4, true); }

TEST(ReduceEmulated, SumOfSquares) {
  const size_t n = 5000;
  const testing::Bf16Bits bits = testing::bf16_bits(testing::random_vec(n, 3, -3.0f, 3.0f));
  const Vec v = testing::widened(bits);
  double want = 0.0;
  for (float e : v) want += double(e) * e;
  const int blocks = 3, threads = 128;
  for (bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    std::vector<double> partials(blocks, NAN);
    double got = NAN;
    simt::launch(blocks, 1, threads, reduce_block::sum_smem(), simt::CopyTiming::at_issue,
                 [&](simt::Thread& x) {
                   if (bf16)
                     reduce_block::sum_squares_partials(x, partials.data(), bits.data(), n, threads,
                                                        size_t(blocks) * threads);
                   else
                     reduce_block::sum_squares_partials(x, partials.data(), v.data(), n, threads,
                                                        size_t(blocks) * threads);
                 });
    simt::launch(1, 1, threads, reduce_block::sum_smem(), simt::CopyTiming::at_issue,
                 [&](simt::Thread& x) {
                   reduce_block::sum_partials(x, &got, partials.data(), blocks, threads);
                 });
    EXPECT_NEAR(got, want, 1e-12 * want);
  }
}

}  // namespace
}  // namespace triad
