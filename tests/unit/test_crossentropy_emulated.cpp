// The one-pass bf16 cross-entropy block program (src/kernels/cuda/crossentropy_block.h), run on
// the CPU through the SIMT emulator, against softmax cross-entropy in double on the same bf16
// logits: every gradient within bf16 rounding (2^-8 relative) of the exact one, zeros in the
// padded columns, the loss within 1e-5, the first index of the maximum for `correct`, a target
// at or beyond V contributing no −dloss_scale, and a negative (ignored) target giving a row of
// zeros, loss 0 and no hit; with a z-loss of coefficient c, the softmax term scaled by
// 1 + 2c·log Z and log Z written out (0 for an ignored row); with a softcap c (capped logits y),
// every gradient value times 1 − (y/c)². Needs no GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "../../src/kernels/cuda/crossentropy_block.h"
#include "../support/simt_emulator.h"

namespace triad {
namespace {

struct Case {
  int N, V, Vp;
  float scale;
  float z_loss = 0.0f;
  float softcap = 0.0f;
};

template <int kThreads, int kVec>
void check(const Case& c, std::vector<int32_t> targets, uint32_t seed, bool ties = false) {
  SCOPED_TRACE(::testing::Message() << "threads " << kThreads << " vec " << kVec << " N=" << c.N
                                    << " V=" << c.V << " Vp=" << c.Vp);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<uint16_t> logits(size_t(c.N) * c.Vp);
  for (auto& b : logits) b = to_bf16(dist(rng)).bits;
  if (ties)  // the row max twice: the first index must win
    for (int n = 0; n < c.N; ++n) {
      logits[size_t(n) * c.Vp + c.V / 3] = to_bf16(40.0f).bits;
      logits[size_t(n) * c.Vp + c.V / 2] = to_bf16(40.0f).bits;
    }
  std::vector<uint16_t> in = logits;
  // 16-byte aligned rows, as the GPU launcher requires.
  simt::Bf16Buffer storage(logits.size());
  uint16_t* data = storage.data();
  std::copy(logits.begin(), logits.end(), data);
  std::vector<float> losses(size_t(c.N), NAN), correct(size_t(c.N), NAN), log_z(size_t(c.N), NAN);

  simt::launch(c.N, 1, kThreads, crossentropy::row_smem(), simt::CopyTiming::at_issue,
               [&](simt::Thread& x) {
                 crossentropy::crossentropy_row<kThreads, kVec>(
                     x, data, losses.data(), correct.data(), targets.data(), c.V, c.Vp, c.scale,
                     c.z_loss, c.z_loss > 0 ? log_z.data() : nullptr, c.softcap);
               });

  for (int n = 0; n < c.N; ++n) {
    const uint16_t* row = &in[size_t(n) * c.Vp];
    const int t = targets[size_t(n)];
    if (t < 0) {  // ignored: everything 0
      EXPECT_EQ(losses[size_t(n)], 0.0f) << "row " << n;
      EXPECT_EQ(correct[size_t(n)], 0.0f) << "row " << n;
      if (c.z_loss > 0) {
        EXPECT_EQ(log_z[size_t(n)], 0.0f) << "row " << n;
      }
      for (int j = 0; j < c.Vp; ++j)
        ASSERT_EQ(data[size_t(n) * c.Vp + j], 0u) << "column " << j << " of ignored row " << n;
      continue;
    }
    double mx = -INFINITY;
    int first = 0;
    for (int j = 0; j < c.V; ++j) {
      const double v = to_float(bf16_t{row[j]});
      if (v > mx) {
        mx = v;
        first = j;
      }
    }
    double sum = 0.0;
    for (int j = 0; j < c.V; ++j) sum += std::exp(to_float(bf16_t{row[j]}) - mx);
    const bool valid = t < c.V;
    const double want_loss =
        std::log(sum) - ((valid ? double(to_float(bf16_t{row[t]})) : 0.0) - mx);
    EXPECT_NEAR(losses[size_t(n)], want_loss, 1e-5 * std::max(1.0, std::abs(want_loss)))
        << "row " << n;
    EXPECT_EQ(correct[size_t(n)], first == t ? 1.0f : 0.0f) << "row " << n;
    const double lz = mx + std::log(sum);
    if (c.z_loss > 0) {
      EXPECT_NEAR(log_z[size_t(n)], lz, 1e-5 * std::max(1.0, std::abs(lz)));
    }
    const double softmax_scale = c.scale * (1.0 + 2.0 * c.z_loss * lz);
    double worst = 0.0;
    for (int j = 0; j < c.Vp; ++j) {
      const double got = to_float(bf16_t{data[size_t(n) * c.Vp + j]});
      if (j >= c.V) {
        EXPECT_EQ(got, 0.0) << "padded column " << j << " of row " << n;
        continue;
      }
      const double y = to_float(bf16_t{row[j]});
      double want = std::exp(y - mx) / sum * softmax_scale;
      if (j == t) want -= c.scale;
      if (c.softcap > 0) want *= 1.0 - (y / c.softcap) * (y / c.softcap);
      const double allowed = std::ldexp(std::abs(want), -8) + 1e-12;
      worst = std::isfinite(got) ? std::max(worst, std::abs(got - want) / allowed) : INFINITY;
    }
    EXPECT_LE(worst, 1.0) << "gradient of row " << n;
  }
}

TEST(CrossEntropyEmulated, PaddedRowsSeveralVectorsPerThread) {
  check<64, 3>({3, 1000, 1024, 1.0f / 3}, {5, 999, 0}, 1u);
}

TEST(CrossEntropyEmulated, EveryVectorSlotUsed) {
  check<64, 3>({2, 1536, 1536, 0.5f}, {1535, 700}, 2u);
}

TEST(CrossEntropyEmulated, OneVectorPerThread) {
  check<128, 1>({2, 1019, 1024, 1.0f}, {3, 1018}, 3u);
}

TEST(CrossEntropyEmulated, TiesGoToTheFirstIndex) {
  // Row 0's target is the first copy of the maximum (correct = 1), row 1's the second (0).
  check<64, 2>({2, 900, 1024, 1.0f}, {300, 450}, 4u, /*ties=*/true);
}

TEST(CrossEntropyEmulated, TargetBeyondTheVocabulary) {
  check<64, 2>({2, 900, 1024, 1.0f}, {3, 950}, 5u);
}

TEST(CrossEntropyEmulated, IgnoredRowsGetNoLossAndNoGradient) {
  // Ignored rows between kept ones, in several vectors per thread and with padding.
  check<64, 3>({4, 1000, 1024, 0.25f}, {crossentropy::kIgnored, 7, -1, 998}, 6u);
}

TEST(CrossEntropyEmulated, ZLossScalesTheSoftmaxTerm) {
  // c = 0.05 on logits whose log Z is ~10: the softmax term twice as large, and log Z out.
  check<64, 3>({4, 1000, 1024, 0.25f, 0.05f}, {5, crossentropy::kIgnored, 999, 0}, 7u);
}

TEST(CrossEntropyEmulated, SoftcapScalesByTheCapsDerivative) {
  // Capped logits (|y| < 12; N(0, 3) draws): each value times 1 − (y/12)², a z-loss with it.
  check<64, 3>({3, 1000, 1024, 0.25f, 0.0f, 12.0f}, {5, 999, crossentropy::kIgnored}, 8u);
  check<64, 3>({2, 1000, 1024, 0.5f, 0.05f, 12.0f}, {17, 500}, 9u);
}

}  // namespace
}  // namespace triad
