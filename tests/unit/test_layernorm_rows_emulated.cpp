// The CUDA backend's block-per-row LayerNorm (src/kernels/cuda/layernorm_block.h's
// block_row_forward, block_row_backward_dinp and param_partials, as cuda_layernorm.cu launches
// them for the rows the warp-per-row programs do not take), run on the CPU through the SIMT
// emulator, against the CPU backend on the same inputs, fp32 and bf16: out, mean and rstd; the
// fused residual form (its sum bit for bit); the accumulated input gradient; and the weight and
// bias gradients, the per-slice partials added over the slices as cuda_reduce.cu's
// column_sum_finish does. Widths that are not multiples of 8 and wider than a block's threads;
// LayerNorm and RMSNorm (mean and bias null). Within 1e-5 (fp32) / 1e-2 (bf16) of the largest
// magnitude; mean and rstd within 1e-6. Needs no GPU; test_cuda_backend and test_cuda_bf16 run
// the kernels on one.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../../src/kernels/cuda/layernorm_block.h"
#include "../support/block_data.h"
#include "../support/simt_emulator.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using Vec = std::vector<float>;

template <bool kBf16>
void check(int N, int C, bool residual, bool rms) {
  using P = testing::Precision<kBf16>;
  SCOPED_TRACE(::testing::Message() << P::kName << " N=" << N << " C=" << C
                                    << (residual ? " residual" : "") << (rms ? " rmsnorm" : ""));
  const size_t NC = size_t(N) * C;
  auto data = [&](size_t n, uint32_t seed, float lo, float hi) {
    return P::from(testing::bf16_values(n, seed, lo, hi));
  };
  const auto a = data(NC, 1, -2.0f, 3.0f), b = data(NC, 2, -1.0f, 1.0f), w = data(C, 3, 0.5f, 1.5f),
             bias = data(C, 4, -0.5f, 0.5f), dout = data(NC, 5, -1.0f, 1.0f),
             dinp0 = data(NC, 6, -1.0f, 1.0f);
  auto be = make_cpu_backend();

  // Forward: residual sum round(a + b) then its LayerNorm, or the LayerNorm of a.
  auto want_in = a, got_in = a, want_out = a, got_out = a;
  Vec want_mean(N, NAN), got_mean(N, NAN), want_rstd(N, NAN), got_rstd(N, NAN);
  float* mean_w = rms ? nullptr : want_mean.data();
  float* mean_g = rms ? nullptr : got_mean.data();
  const auto* bias_c = rms ? nullptr : P::cpu(bias);
  const auto* bias_g = rms ? nullptr : bias.data();
  if (residual)
    be->residual_layernorm_forward(P::cpu(want_in), P::cpu(want_out), mean_w, want_rstd.data(),
                                   P::cpu(a), P::cpu(b), P::cpu(w), bias_c, N, C);
  else
    be->layernorm_forward(P::cpu(want_out), mean_w, want_rstd.data(), P::cpu(a), P::cpu(w), bias_c,
                          N, C);
  simt::launch(N, 1, layernorm::kRowThreads, layernorm::row_smem(), simt::CopyTiming::at_issue,
               [&](simt::Thread& x) {
                 layernorm::block_row_forward(x, got_out.data(), mean_g, got_rstd.data(),
                                              got_in.data(), residual ? a.data() : nullptr,
                                              residual ? b.data() : nullptr, w.data(), bias_g, C,
                                              kNormEps);
               });
  EXPECT_EQ(P::widen(got_in), P::widen(want_in)) << "the residual sum (or the untouched input)";
  EXPECT_LE(testing::max_rel_error(P::widen(got_out), P::widen(want_out)), P::kTol) << "out";
  for (int n = 0; n < N; ++n) {
    if (!rms) {
      EXPECT_NEAR(got_mean[n], want_mean[n], 1e-6 * (1 + std::abs(want_mean[n])));
    }
    EXPECT_NEAR(got_rstd[n], want_rstd[n], 1e-6 * want_rstd[n]) << "row " << n;
  }

  // Backward from the CPU backend's statistics: dinp accumulated; dweight and dbias added onto
  // what they held.
  auto want_dinp = dinp0, got_dinp = dinp0;
  Vec want_dw(C, 0.25f), want_db(C, -0.5f);
  be->layernorm_backward(P::cpu(want_dinp), want_dw.data(), rms ? nullptr : want_db.data(),
                         P::cpu(dout), P::cpu(want_in), P::cpu(w), mean_w, want_rstd.data(), N, C);
  simt::launch(N, 1, layernorm::kRowThreads, layernorm::row_smem(), simt::CopyTiming::at_issue,
               [&](simt::Thread& x) {
                 layernorm::block_row_backward_dinp(x, got_dinp.data(), dout.data(), want_in.data(),
                                                    w.data(), mean_w, want_rstd.data(), C);
               });
  EXPECT_LE(testing::max_rel_error(P::widen(got_dinp), P::widen(want_dinp)), P::kTol) << "dinp";

  const int slices = 3, rows = (N + slices - 1) / slices;
  const int bx = (C + layernorm::kColumns - 1) / layernorm::kColumns;
  Vec pw(size_t(slices) * C, NAN), pb(size_t(slices) * C, NAN);
  simt::launch(bx, slices, layernorm::kParamThreads, layernorm::param_smem(),
               simt::CopyTiming::at_issue, [&](simt::Thread& x) {
                 layernorm::param_partials(x, pw.data(), pb.data(), dout.data(), want_in.data(),
                                           mean_w, want_rstd.data(), N, C, rows);
               });
  Vec got_dw(C, 0.25f), got_db(C, -0.5f);
  for (int c = 0; c < C; ++c)
    for (int y = 0; y < slices; ++y) {
      got_dw[c] += pw[size_t(y) * C + c];
      got_db[c] += pb[size_t(y) * C + c];
    }
  EXPECT_LE(testing::max_rel_error(got_dw, want_dw), 1e-5) << "dweight";
  if (!rms) {
    EXPECT_LE(testing::max_rel_error(got_db, want_db), 1e-5) << "dbias";
  }
}

TEST(LayerNormRowsEmulated, Fp32) {
  check<false>(7, 771, false, false);  // 3 columns per thread and a partial last pass
  check<false>(5, 100, true, false);   // fewer columns than threads
}

TEST(LayerNormRowsEmulated, Bf16WidthsTheWarpProgramsDoNotTake) {
  check<true>(7, 771, true, false);
  check<true>(4, 2056, false, false);  // wider than the warp-per-row programs hold
}

TEST(LayerNormRowsEmulated, RmsNorm) {
  check<false>(6, 300, false, true);
  check<true>(6, 300, true, true);
}

}  // namespace
}  // namespace triad
