// The gradient noise scale's estimators (train/noise_scale.h) against numbers worked out here:
// with E|G_b|² = |G|² + tr(Σ)/b taken exactly, they give |G|² and tr(Σ) back.
#include <gtest/gtest.h>

#include <cmath>

#include "triad/train/noise_scale.h"

namespace triad {
namespace {

TEST(NoiseScale, EstimatesInvertTheExpectedNorms) {
  const double g_sq = 2.0, trace = 1000.0;
  for (const auto& [b, B] : {std::pair{100.0, 1000.0}, std::pair{17.0, 6528.0}}) {
    const NoiseEstimate e = noise_estimate(g_sq + trace / b, b, g_sq + trace / B, B);
    EXPECT_NEAR(e.g_sq, g_sq, 1e-12);
    EXPECT_NEAR(e.trace, trace, 1e-9);
  }
  // A small batch's norm below the big one's: a negative variance, kept (the means average it).
  EXPECT_LT(noise_estimate(1.0, 10, 2.0, 100).trace, 0.0);
}

TEST(NoiseScale, RatioOfTheRunningMeans) {
  NoiseScale n(0.5);
  EXPECT_FALSE(n.ready());
  n.add({2.0, 100.0});
  EXPECT_TRUE(n.ready());
  EXPECT_DOUBLE_EQ(n.b_simple(), 50.0);
  n.add({6.0, 100.0});  // means 0.5·(0.5·2) + 0.5·6 = 3.5 and 75: the ratio of the means
  EXPECT_DOUBLE_EQ(n.b_simple(), 75.0 / 3.5);
  NoiseScale negative(0.5);
  negative.add({-1.0, 100.0});  // no positive |G|² yet: no estimate
  EXPECT_FALSE(negative.ready());
}

}  // namespace
}  // namespace triad
