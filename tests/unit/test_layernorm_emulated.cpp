// The warp-per-row bf16 LayerNorm block programs (src/kernels/cuda/layernorm_block.h), run on
// the CPU through the SIMT emulator, against LayerNorm in double on the same bf16 inputs:
// outputs within bf16 rounding (2^-8 relative, plus 1e-6 of the row's scale) of the exact ones,
// mean and rstd within 1e-6, the residual sum round(a + b) bit for bit, and the accumulating
// input gradient within the same allowance. Row counts that leave part of a block idle, and
// several vectors per lane. And RMSNorm (mean and bias null) against its definition in double.
// Needs no GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "../../src/kernels/cuda/layernorm_block.h"
#include "../support/simt_emulator.h"

namespace triad {
namespace {

using Bits = std::vector<uint16_t>;

using Buffer = simt::Bf16Buffer;
using simt::random_bf16_buffer;

// |got − want| <= 2^-8·|want| + 1e-6·scale, as a ratio (<= 1 passes).
double excess(double got, double want, double scale) {
  const double allowed = std::ldexp(std::abs(want), -8) + 1e-6 * scale;
  return std::isfinite(got) ? std::abs(got - want) / allowed : INFINITY;
}

template <int kVec>
void check(int N, int C, bool residual, bool rms = false, float eps = 1e-5f) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C << (residual ? " residual" : "")
                                    << (rms ? " rmsnorm" : "") << " eps=" << eps);
  const size_t NC = size_t(N) * C;
  Buffer a = random_bf16_buffer(NC, 1, -2.0f, 3.0f), b = random_bf16_buffer(NC, 2, -1.0f, 1.0f);
  Buffer inp = random_bf16_buffer(NC, 3, -2.0f, 3.0f), w = random_bf16_buffer(C, 4, 0.5f, 1.5f),
         bias = random_bf16_buffer(C, 5, -0.5f, 0.5f), out(NC);
  std::vector<float> mean(N, NAN), rstd(N, NAN);
  const int blocks = (N + layernorm::kWarps - 1) / layernorm::kWarps;
  simt::launch(blocks, 1, layernorm::kThreads, 0, simt::CopyTiming::at_issue, [&](simt::Thread& x) {
    layernorm::forward_row<kVec>(x, out.data(), rms ? nullptr : mean.data(), rstd.data(),
                                 inp.data(), residual ? a.data() : nullptr,
                                 residual ? b.data() : nullptr, w.data(),
                                 rms ? nullptr : bias.data(), N, C, eps);
  });
  double worst = 0.0;
  for (int n = 0; n < N; ++n) {
    std::vector<double> xs(C);
    for (int c = 0; c < C; ++c) {
      const size_t i = size_t(n) * C + c;
      if (residual) {
        const uint16_t want = to_bf16(float(a.at(i) + b.at(i))).bits;
        ASSERT_EQ(inp.data()[i], want) << "residual sum, row " << n << " column " << c;
      }
      xs[c] = inp.at(i);
    }
    double mu = 0.0, var = 0.0;
    for (double v : xs) mu += v;
    mu = rms ? 0.0 : mu / C;
    for (double v : xs) var += (v - mu) * (v - mu);
    var /= C;
    const double r = 1.0 / std::sqrt(var + double(eps));
    if (rms)
      EXPECT_TRUE(std::isnan(mean[n])) << "RMSNorm wrote a mean";
    else
      EXPECT_NEAR(mean[n], mu, 1e-6 * (1 + std::abs(mu))) << "row " << n;
    EXPECT_NEAR(rstd[n], r, 1e-6 * r) << "row " << n;
    for (int c = 0; c < C; ++c)
      worst = std::max(worst, excess(out.at(size_t(n) * C + c),
                                     (xs[c] - mu) * r * w.at(c) + (rms ? 0.0 : bias.at(c)), 3.0));
  }
  EXPECT_LE(worst, 1.0) << "out";

  // Backward: dinp += LayerNorm's input gradient, from the forward's statistics.
  Buffer dout = random_bf16_buffer(NC, 6, -1.0f, 1.0f),
         dinp = random_bf16_buffer(NC, 7, -1.0f, 1.0f);
  Buffer dinp0 = dinp;
  simt::launch(blocks, 1, layernorm::kThreads, 0, simt::CopyTiming::at_issue, [&](simt::Thread& x) {
    layernorm::backward_dinp_row<kVec>(x, dinp.data(), dout.data(), inp.data(), w.data(),
                                       rms ? nullptr : mean.data(), rstd.data(), N, C);
  });
  worst = 0.0;
  for (int n = 0; n < N; ++n) {
    const double m = rms ? 0.0 : mean[n], r = rstd[n];
    double g_mean = 0.0, gx_mean = 0.0;
    for (int c = 0; c < C; ++c) {
      const size_t i = size_t(n) * C + c;
      const double g = dout.at(i) * w.at(c);
      g_mean += g;
      gx_mean += g * (inp.at(i) - m) * r;
    }
    g_mean = rms ? 0.0 : g_mean / C;
    gx_mean /= C;
    for (int c = 0; c < C; ++c) {
      const size_t i = size_t(n) * C + c;
      const double xhat = (inp.at(i) - m) * r;
      const double want = dinp0.at(i) + r * (dout.at(i) * w.at(c) - g_mean - xhat * gx_mean);
      worst = std::max(worst, excess(dinp.at(i), want, 1.0 + r));
    }
  }
  EXPECT_LE(worst, 1.0) << "dinp";
}

TEST(LayerNormEmulated, OneVectorPerLanePartialBlock) { check<1>(11, 256, false); }

TEST(LayerNormEmulated, Gpt2WidthResidual) { check<3>(9, 768, true); }

TEST(LayerNormEmulated, LanesWithoutALastVector) { check<2>(8, 320, true); }

TEST(LayerNormEmulated, RmsNorm) {
  check<1>(11, 256, false, true);
  check<3>(9, 768, true, true);
}

// Another epsilon (model.norm_eps; Qwen2's 1e-6): rstd is checked to 1e-6 relative, finer than
// the 4.5e-6 an epsilon of 1e-5 would make at these variances.
TEST(LayerNormEmulated, OtherEpsilon) {
  check<3>(9, 768, true, true, 1e-6f);
  check<2>(8, 320, false, false, 1e-6f);
}

}  // namespace
}  // namespace triad
