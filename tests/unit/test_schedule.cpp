// LR schedules and clipping against the formulas of DESIGN.md §4, written out independently.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "triad/optim/optimizer.h"
#include "triad/train/config.h"

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

// Megatron's inverse-square-root: after the warmup of 10, 1e-3·√(10 / (s + 1)) (continuous at
// the warmup's end), independent of the run's length, and not below min_lr (1e-4 from s = 999);
// without a warmup, 1e-3 / √(s + 1).
TEST(Schedule, InverseSqrt) {
  auto t = base("inverse_sqrt");
  EXPECT_DOUBLE_EQ(lr_at(t, 9), 1e-3);
  for (int s : {10, 39, 99, 500})
    EXPECT_NEAR(lr_at(t, s), 1e-3 * std::sqrt(10.0 / (s + 1)), 1e-15) << s;
  TrainConfig longer = t;
  longer.steps = 100000;
  EXPECT_EQ(lr_at(longer, 39), lr_at(t, 39));
  EXPECT_NEAR(lr_at(longer, 998), 1e-3 * std::sqrt(10.0 / 999), 1e-15);
  EXPECT_DOUBLE_EQ(lr_at(longer, 999), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(longer, 5000), 1e-4);
  t.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 1e-3);
  EXPECT_NEAR(lr_at(t, 3), 1e-3 / 2, 1e-18);
}

// train.decay_shape: wsd's decay (steps 80..99 of 100) as 1 − √f and ½(1 + cos πf), f = (s −
// 80) / 20; the stable part and the start of the decay unchanged.
TEST(Schedule, WsdDecayShapes) {
  auto w = base("wsd");
  w.decay_shape = "1-sqrt";
  EXPECT_DOUBLE_EQ(lr_at(w, 79), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(w, 80), 1e-3);
  for (int s : {85, 90, 99})
    EXPECT_NEAR(lr_at(w, s), 1e-4 + 9e-4 * (1 - std::sqrt((s - 80) / 20.0)), 1e-15) << s;
  w.decay_shape = "cosine";
  for (int s : {85, 90, 99})
    EXPECT_NEAR(lr_at(w, s), 1e-4 + 4.5e-4 * (1 + std::cos(M_PI * (s - 80) / 20.0)), 1e-15) << s;
  // 1-sqrt lies below linear all through the decay (it drops fast at first).
  auto lin = base("wsd");
  w.decay_shape = "1-sqrt";
  EXPECT_LT(lr_at(w, 85), lr_at(lin, 85));
}

// train.lr_by = sequences without a ramp: the same rates as by steps (warmup_sequences = 10
// steps of 32), the warmup's and the decay's bit for bit, wsd's within rounding.
TEST(Schedule, BySequencesWithoutARampIsBySteps) {
  for (const char* kind : {"cosine", "linear", "constant", "wsd", "inverse_sqrt"}) {
    TrainConfig steps = base(kind);
    steps.batch_size = 32;
    TrainConfig seqs = steps;
    seqs.lr_by = "sequences";
    seqs.warmup_steps = 0;
    seqs.warmup_sequences = 10 * 32;
    for (int64_t s = 0; s < steps.steps; ++s) {
      const SchedulePoint p = ScheduleClock(seqs).at(s, s * 32);
      EXPECT_EQ(p.done, double(s * 32));
      EXPECT_EQ(p.step, 32.0);
      EXPECT_EQ(p.total, 3200.0);
      if (std::string(kind) == "wsd")
        EXPECT_NEAR(lr_at(seqs, p), lr_at(steps, s), 1e-18) << kind << " " << s;
      else
        EXPECT_EQ(lr_at(seqs, p), lr_at(steps, s)) << kind << " " << s;
    }
  }
}

// ... and with a ramp (batches of 8, 16, 24 over the first 96 sequences, then 32): the warmup
// and the decay follow the sequences trained on, the run's total from its steps' batches.
// train.lr_by = sequences with a warmup of 40 sequences, a batch of `batch` reached through the
// ramp `rampup` (train.batch_rampup), over `steps` steps.
TrainConfig by_sequences(const std::string& schedule, int batch, const std::string& rampup,
                         int64_t steps) {
  TrainConfig t = base(schedule);
  t.batch_size = batch;
  t.batch_rampup = rampup;
  t.lr_by = "sequences";
  t.warmup_steps = 0;
  t.warmup_sequences = 40;
  t.steps = steps;
  return t;
}

TEST(Schedule, BySequencesFollowsARamp) {
  TrainConfig t = by_sequences("cosine", 32, "8, 8, 96", 20);
  // Before each step: 0 8 16 24 32 (8 each: 4·8 < 32), then 16s up to 64, 24s to 112 > 96, 32s.
  std::vector<int64_t> done = {0};
  for (int64_t b : {8, 8, 8, 8, 16, 16, 24, 24}) done.push_back(done.back() + b);
  ASSERT_EQ(done.back(), 112);
  const double total = 112 + 12 * 32;
  for (size_t s = 0; s < done.size(); ++s) {
    const SchedulePoint p = ScheduleClock(t).at(int64_t(s), done[s]);
    EXPECT_EQ(p.total, total);
    const double n = double(done[s]), b = p.step;
    const double want =
        n + b <= 40
            ? 1e-3 * (n + b) / 40
            : 1e-4 + 0.5 * 9e-4 * (1 + std::cos(M_PI * std::max(0.0, n - 40) / (total - 40)));
    EXPECT_NEAR(lr_at(t, p), want, 1e-15) << s;
  }
  // The step from 32 to 48 sequences crosses the warmup's end at 40: the peak, not above it.
  EXPECT_NEAR(lr_at(t, ScheduleClock(t).at(4, 32)), 1e-3, 1e-18);
  t.schedule = "linear";
  EXPECT_NEAR(lr_at(t, ScheduleClock(t).at(4, 32)), 1e-3, 1e-18);
  EXPECT_EQ(ScheduleClock(t).at(4, 32).step, 16.0);
  EXPECT_EQ(ScheduleClock(t).at(6, 64).step, 24.0);
  EXPECT_EQ(ScheduleClock(t).at(8, 112).step, 32.0);
}

// inverse_sqrt by sequences through that ramp, with a warmup (40) shorter than the full batch
// (32... then 64 here): W is the larger, the full batch, whatever the step's own batch, so the
// rate never rises as the batches grow, and never exceeds the peak.
TEST(Schedule, InverseSqrtBySequencesThroughARamp) {
  const TrainConfig t = by_sequences("inverse_sqrt", 64, "16, 16, 160", 30);
  const ScheduleClock clock(t);
  double done = 0, before = 1e-3;
  for (int64_t s = 0; s < t.steps; ++s) {
    const SchedulePoint p = clock.at(s, int64_t(done));
    const double lr = lr_at(t, p);
    if (done + p.step > 40) {
      EXPECT_NEAR(lr, std::min(1e-3, 1e-3 * std::sqrt(64.0 / (done + p.step))), 1e-18) << s;
      EXPECT_LE(lr, before) << s;
      before = lr;
    }
    done += p.step;
  }
  EXPECT_GT(done, 160.0);  // past the ramp
}

// optim.embedding_lr and optim.head_lr scale the tensors' rates by rate / train.lr: that is the
// schedule with the other peak at every step, for every schedule (min_lr being a ratio).
TEST(Schedule, ARateOfItsOwnIsTheScheduleWithThatPeak) {
  for (const char* schedule : {"cosine", "linear", "constant", "wsd", "inverse_sqrt"}) {
    TrainConfig t;
    t.schedule = schedule;
    t.lr = 6e-4;
    t.min_lr_ratio = 0.1;
    t.steps = 50;
    t.warmup_steps = 5;
    t.decay_fraction = 0.3;
    Config c;
    c.train = t;
    c.optim.embedding_lr = 0.3;
    c.optim.head_lr = 4e-3;
    const LrScales scales = lr_scales(c, 2.0);
    TrainConfig emb = t, head = t;
    emb.lr = 0.3;
    head.lr = 4e-3;
    for (int64_t s = 0; s < t.steps; ++s) {
      EXPECT_NEAR(lr_at(t, s) * scales.of("wte/weight"), lr_at(emb, s), 1e-7 * lr_at(emb, s));
      EXPECT_NEAR(lr_at(t, s) * scales.of("lm_head/bias"), lr_at(head, s), 1e-7 * lr_at(head, s));
    }
  }
  Config c;
  c.optim.embedding_lr = 1e-2;
  c.train.lr = 1e-3;
  const LrScales s = lr_scales(c, 4.0);  // μP's m = 4; no head_lr: the head at train.lr
  EXPECT_FLOAT_EQ(s.of("wte/weight"), 10.0f);
  EXPECT_FLOAT_EQ(s.of("wpe/weight"), 10.0f);
  EXPECT_FLOAT_EQ(s.of("lm_head/weight"), 1.0f);
  EXPECT_FLOAT_EQ(s.of("h/3/mlp/c_fc/weight"), 0.25f);
  for (const char* other :
       {"h/0/ln_1/weight", "ln_f/bias", "h/1/attn/c_attn/bias", "h/0/mlp/router/weight"})
    EXPECT_FLOAT_EQ(s.of(other), 1.0f) << other;
}

// optim.weight_decay_schedule: Megatron's increments from the start's decay to the end's over
// the run, the step's own progress (done + step) / total reached as it updates.
TEST(Schedule, WeightDecaySchedules) {
  OptimConfig o;
  o.weight_decay = 0.1;
  EXPECT_EQ(weight_decay_at(o, SchedulePoint{7, 1, 10, 2}), 0.1);  // constant
  o.weight_decay_end = 0.5;
  o.weight_decay_schedule = "linear";
  EXPECT_NEAR(weight_decay_at(o, SchedulePoint{0, 1, 10, 2}), 0.14, 1e-15);
  EXPECT_NEAR(weight_decay_at(o, SchedulePoint{4, 1, 10, 2}), 0.3, 1e-15);
  EXPECT_NEAR(weight_decay_at(o, SchedulePoint{9, 1, 10, 2}), 0.5, 1e-15);
  EXPECT_NEAR(weight_decay_at(o, SchedulePoint{12, 1, 10, 2}), 0.5, 1e-15);  // past the end
  o.weight_decay_schedule = "cosine";
  EXPECT_NEAR(weight_decay_at(o, SchedulePoint{4, 1, 10, 2}), 0.3, 1e-15);  // the midpoint
  EXPECT_NEAR(weight_decay_at(o, SchedulePoint{1, 1, 10, 2}),
              0.1 + 0.4 * (1 - std::cos(M_PI * 0.2)) / 2, 1e-15);
  EXPECT_NEAR(weight_decay_at(o, SchedulePoint{9, 1, 10, 2}), 0.5, 1e-15);
  // By sequences: a step of 16 after 48 of 160 reaches 64 / 160; decreasing works alike.
  o.weight_decay = 0.5;
  o.weight_decay_end = 0.0;
  o.weight_decay_schedule = "linear";
  EXPECT_NEAR(weight_decay_at(o, SchedulePoint{48, 16, 160, 32}), 0.5 * (1 - 0.4), 1e-15);
}

}  // namespace
}  // namespace triad
