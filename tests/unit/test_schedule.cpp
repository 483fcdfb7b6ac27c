// LR schedules and clipping against the formulas of DESIGN.md §4, written out independently.
#include <gtest/gtest.h>

#include <cmath>

#include "triad/optim/optimizer.h"

namespace triad {
namespace {

TrainConfig base(const std::string& schedule) {
  TrainConfig t;
  t.steps = 100;
  t.lr = 1e-3;
  t.warmup_steps = 10;
  t.min_lr_ratio = 0.1;
  t.schedule = schedule;
  t.decay_fraction = 0.2;
  return t;
}

TEST(Schedule, Warmup) {
  const auto t = base("cosine");
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 1e-3 * 1 / 10);
  EXPECT_DOUBLE_EQ(lr_at(t, 9), 1e-3);
}

TEST(Schedule, Cosine) {
  const auto t = base("cosine");
  for (int s : {10, 37, 55, 99}) {
    const double expect =
        1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + std::cos(M_PI * double(s - 10) / double(100 - 10)));
    EXPECT_NEAR(lr_at(t, s), expect, 1e-15) << s;
  }
  EXPECT_DOUBLE_EQ(lr_at(t, 10), 1e-3);
}

TEST(Schedule, LinearConstantWsd) {
  EXPECT_NEAR(lr_at(base("linear"), 55), 1e-3 - (1e-3 - 1e-4) * 45.0 / 90.0, 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(base("constant"), 77), 1e-3);
  const auto w = base("wsd");
  EXPECT_DOUBLE_EQ(lr_at(w, 79), 1e-3);  // decay starts at 100 - 20 = 80
  EXPECT_NEAR(lr_at(w, 90), 1e-3 - (1e-3 - 1e-4) * 10.0 / 20.0, 1e-15);
}

}  // namespace
}  // namespace triad
