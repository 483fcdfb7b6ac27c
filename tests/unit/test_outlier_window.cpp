// The z-scores of update skipping (train/outlier_window.h) against numbers worked out here.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "triad/train/outlier_window.h"

namespace triad {
namespace {

TEST(OutlierWindow, ScoresAgainstThePreviousValuesOnly) {
  OutlierWindow w(4);
  for (double x : {1.0, 2.0, 3.0, 4.0}) EXPECT_TRUE(std::isnan(w.push(x)));  // filling up
  // Window {1, 2, 3, 4}: mean 2.5, population std sqrt(1.25).
  EXPECT_NEAR(w.push(10.0), (10.0 - 2.5) / std::sqrt(1.25), 1e-12);
  // Now {2, 3, 4, 10}: the spike is part of the window (mean 4.75, so 4.75 scores 0).
  EXPECT_NEAR(w.push(4.75), 0.0, 1e-12);
  EXPECT_EQ(w.values(), (std::vector<double>{3.0, 4.0, 10.0, 4.75}));
}

TEST(OutlierWindow, EqualValuesScoreZeroAndRestoreKeepsTheNewest) {
  OutlierWindow w(3);
  for (int i = 0; i < 3; ++i) w.push(2.0);
  EXPECT_EQ(w.push(100.0), 0.0);  // no spread to measure against
  OutlierWindow r(3);
  r.restore({9.0, 1.0, 2.0, 3.0});  // a longer saved window: its newest 3
  EXPECT_EQ(r.values(), (std::vector<double>{1.0, 2.0, 3.0}));
  EXPECT_NEAR(r.push(4.0), (4.0 - 2.0) / std::sqrt(2.0 / 3.0), 1e-12);
  OutlierWindow e(3);
  e.restore({1.0});  // a shorter one: still filling
  EXPECT_TRUE(std::isnan(e.push(1.0)));
}

}  // namespace
}  // namespace triad
