// Pipeline schedules (issue 5 item 4): every generated schedule is consistent (check_schedule)
// and runs to the end (simulate), 1F1B and ZB-H1 bound the live activations, the simulated
// bubble matches the formulas, and broken schedules are caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>

#include "triad/core/error.h"
#include "triad/parallel/pipeline_schedule.h"

namespace triad {
namespace {

bool valid_shape(ScheduleKind kind, int pp, int m, int v) {
  if (kind == ScheduleKind::ZeroBubbleV) return pp >= 2 && v == 2;
  if (kind == ScheduleKind::Interleaved) return v >= 2 && m % pp == 0;
  if (kind == ScheduleKind::ZeroBubble) return v == 1 || m % pp == 0;
  return v == 1;
}

// Index of the nth action of `kind` on `rank`, -1 if none.
int find(const PipelineSchedule& s, int rank, ActionKind kind, int nth = 0) {
  for (size_t i = 0; i < s[rank].size(); ++i) {
    if (s[rank][i].kind == kind && nth-- == 0) return int(i);
  }
  return -1;
}

constexpr ScheduleKind kKinds[] = {ScheduleKind::GPipe, ScheduleKind::OneFOneB,
                                   ScheduleKind::Interleaved, ScheduleKind::ZeroBubble,
                                   ScheduleKind::ZeroBubbleV};

// The most (micro-batch, chunk c) pairs rank s keeps from forward to W at once (what the trainer
// allocates activation sets for, chunk by chunk).
int chunk_peak(const PipelineSchedule& s, int rank, int c) {
  int live = 0, most = 0;
  for (const Action& a : s[size_t(rank)]) {
    if (a.chunk != c) continue;
    if (a.kind == ActionKind::Forward) most = std::max(most, ++live);
    if (a.kind == ActionKind::BackwardWeight) --live;
  }
  return most;
}

// The chunks per rank each kind is tested with where one shape serves.
int v_of(ScheduleKind kind) {
  return kind == ScheduleKind::Interleaved || kind == ScheduleKind::ZeroBubbleV ? 2 : 1;
}

TEST(PipelineSchedule, AllShapesCheckAndSimulate) {
  int n = 0;
  for (ScheduleKind kind : kKinds) {
    for (int pp = 1; pp <= 8; ++pp) {
      for (int m = 1; m <= 16; ++m) {
        for (int v = 1; v <= 3; ++v) {
          if (!valid_shape(kind, pp, m, v)) continue;
          SCOPED_TRACE(std::string(schedule_kind_name(kind)) + " pp=" + std::to_string(pp) +
                       " m=" + std::to_string(m) + " v=" + std::to_string(v));
          const PipelineSchedule s = make_schedule(kind, pp, m, v);
          ASSERT_NO_THROW(check_schedule(s, pp, m, v));
          SimResult r;
          ASSERT_NO_THROW(r = simulate(s, pp, m, v));
          for (int st = 0; st < pp; ++st) EXPECT_NEAR(r.busy[st], 3.0 * m, 1e-9);  // 1 + 2 per mb
          const double theory = theoretical_bubble(kind, pp, m, v);
          if (kind == ScheduleKind::GPipe) {
            for (int st = 0; st < pp; ++st) EXPECT_EQ(r.peak_live[st], m);
            EXPECT_NEAR(r.bubble, theory, 1e-9);
          } else if (kind == ScheduleKind::OneFOneB) {
            for (int st = 0; st < pp; ++st) EXPECT_LE(r.peak_live[st], std::min(pp - st, m));
            EXPECT_NEAR(r.bubble, theory, 1e-9);
          } else if (kind == ScheduleKind::ZeroBubble) {
            // Never more in flight than the unsplit schedule on its stage 0 (1F1B: min(pp, m)
            // micro-batches); B = W = 1 meets the formulas.
            const ScheduleKind base = v == 1 ? ScheduleKind::OneFOneB : ScheduleKind::Interleaved;
            const SimResult plain = simulate(make_schedule(base, pp, m, v), pp, m, v);
            const int most = *std::max_element(plain.peak_live.begin(), plain.peak_live.end());
            for (int st = 0; st < pp; ++st) EXPECT_LE(r.peak_live[st], most);
            EXPECT_NEAR(r.bubble, theory, 1e-9);
            EXPECT_LE(r.bubble, plain.bubble + 1e-12);
          } else if (kind == ScheduleKind::ZeroBubbleV) {
            // 1F1B's stage-0 memory on every rank: 2·pp (micro-batch, chunk) pairs of half a
            // stage; the bound 6m + pp − 1 chunk units (of t_fwd / 2), met up to pp = 4 and
            // nearly met beyond (m ≥ pp), and less idle than ZB-H1 with the same memory.
            for (int st = 0; st < pp; ++st) EXPECT_LE(r.peak_live[st], 2 * std::min(pp, m));
            // With m a multiple of pp, pp per chunk: the sets allocated per chunk are 2·pp too.
            for (int st = 0; st < pp && m % pp == 0; ++st) {
              EXPECT_LE(chunk_peak(s, st, 0), pp);
              EXPECT_LE(chunk_peak(s, st, 1), pp);
            }
            EXPECT_GE(r.bubble, theory - 1e-9);
            if (m >= pp) {
              EXPECT_LE(r.makespan, (6.0 * m + pp - 1 + (pp <= 4 ? 0 : 4)) / 2 + 1e-9);
              const SimResult h1 =
                  simulate(make_schedule(ScheduleKind::ZeroBubble, pp, m, 1), pp, m, 1);
              EXPECT_LT(r.bubble, h1.bubble);
            }
          } else {
            const SimResult plain =
                simulate(make_schedule(ScheduleKind::OneFOneB, pp, m, 1), pp, m, 1);
            EXPECT_LE(r.bubble, plain.bubble + 1e-12);
            // With buffered sends Megatron's order meets its formula exactly, the m = pp
            // all-warm-up case included.
            EXPECT_NEAR(r.bubble, theory, 1e-9);
          }
          ++n;
        }
      }
    }
  }
  EXPECT_GT(n, 400);
}

// ZB-V's V: rank s holds global chunks s and 2·pp − 1 − s, so rank 0 both embeds and computes
// the loss, and rank pp − 1 hands its chunk 0's output to its chunk 1 (and the gradient back)
// through transfers addressed to itself.
TEST(PipelineSchedule, ZeroBubbleVRunsDownAndBackUp) {
  EXPECT_EQ(chunk_placement(ScheduleKind::ZeroBubbleV), ChunkPlacement::V);
  EXPECT_EQ(chunk_placement(ScheduleKind::ZeroBubble), ChunkPlacement::Interleaved);
  for (int g = 0; g < 8; ++g) EXPECT_EQ(chunk_rank(ChunkPlacement::V, 4, g), g < 4 ? g : 7 - g);
  for (int s = 0; s < 4; ++s) {
    EXPECT_EQ(global_chunk_of(ChunkPlacement::V, 4, s, 0), s);
    EXPECT_EQ(global_chunk_of(ChunkPlacement::V, 4, s, 1), 7 - s);
    EXPECT_EQ(global_chunk_of(ChunkPlacement::Interleaved, 4, s, 1), 4 + s);
  }
  const int pp = 4, m = 6;
  const PipelineSchedule z = make_schedule(ScheduleKind::ZeroBubbleV, pp, m, 2);
  EXPECT_EQ(z.placement, ChunkPlacement::V);
  for (int s = 0; s < pp; ++s) {
    int fwd[2] = {0, 0}, bwd[2] = {0, 0}, local = 0;
    for (const Action& a : z[size_t(s)]) {
      if (a.kind == ActionKind::Forward) {
        EXPECT_EQ(a.microbatch, fwd[a.chunk]++);  // in order
      }
      if (a.kind == ActionKind::Backward) {
        EXPECT_EQ(a.microbatch, bwd[a.chunk]++);
      }
      if (a.peer == s) {
        ++local;
        EXPECT_EQ(s, pp - 1);
        // Out of chunk 0 into chunk 1, and the gradient back.
        const bool out_of_chunk_0 =
            a.kind == ActionKind::SendActivation || a.kind == ActionKind::RecvGrad;
        EXPECT_EQ(a.chunk, out_of_chunk_0 ? 0 : 1);
      }
      if (s == 0) {  // the loss is local, and nothing arrives before chunk 0
        EXPECT_FALSE(a.kind == ActionKind::RecvActivation && a.chunk == 0);
        EXPECT_FALSE(a.kind == ActionKind::RecvGrad && a.chunk == 1);
        EXPECT_FALSE(a.kind == ActionKind::SendActivation && a.chunk == 1);
      }
      if (a.peer >= 0 && a.peer != s) {
        EXPECT_EQ(std::abs(a.peer - s), 1);  // neighbours only
      }
    }
    EXPECT_EQ(local, s == pp - 1 ? 4 * m : 0);
  }
  // The right peer is enforced on the V too.
  PipelineSchedule bad = z;
  bad[1][size_t(find(bad, 1, ActionKind::SendActivation))].peer = 0;
  EXPECT_THROW(check_schedule(bad, pp, m, 2), Error);
  // Not on a single rank, and only with two chunks per rank.
  EXPECT_THROW(make_schedule(ScheduleKind::ZeroBubbleV, 1, 4, 2), Error);
  EXPECT_THROW(make_schedule(ScheduleKind::ZeroBubbleV, 4, 4, 1), Error);
  EXPECT_THROW(make_schedule(ScheduleKind::ZeroBubbleV, 4, 4, 3), Error);
  // Its order is not stuck on larger pipelines either, and keeps within the memory cap.
  for (int p : {12, 16})
    for (int mb : {1, 7, p, 3 * p + 1}) {
      const PipelineSchedule big = make_schedule(ScheduleKind::ZeroBubbleV, p, mb, 2);
      ASSERT_NO_THROW(check_schedule(big, p, mb, 2)) << p << " " << mb;
      const SimResult r = simulate(big, p, mb, 2);
      for (int st = 0; st < p; ++st) EXPECT_LE(r.peak_live[st], 2 * p);
      if (mb >= p) {
        EXPECT_LE(r.makespan, (6.0 * mb + p - 1 + 12) / 2 + 1e-9);
      }
    }
}

// Per-chunk times (the head's chunk heavier): each action takes its own chunk's time, a rank's
// busy time is their sum, and equal shares give the per-rank simulation exactly.
TEST(PipelineSchedule, ChunksTakeTheirOwnTimes) {
  for (ScheduleKind kind :
       {ScheduleKind::Interleaved, ScheduleKind::ZeroBubble, ScheduleKind::ZeroBubbleV}) {
    SCOPED_TRACE(schedule_kind_name(kind));
    const int pp = 3, m = 6, v = 2;
    const PipelineSchedule s = make_schedule(kind, pp, m, v);
    ChunkTimes even, uneven;
    for (int r = 0; r < pp; ++r) {
      even.fwd.push_back({0.5, 0.5});
      even.bwd.push_back({1.0, 1.0});
      even.wgt.push_back({0.5, 0.5});
      // The rank holding the last chunk carries the head there: 3x its other chunk's forward.
      const bool head = global_chunk_of(s.placement, pp, r, 1) == pp * v - 1;
      uneven.fwd.push_back(head ? std::vector<double>{0.25, 0.75} : std::vector<double>{0.5, 0.5});
      uneven.bwd.push_back({1.0, 1.0});
      uneven.wgt.push_back({0.5, 0.5});
    }
    const SimResult a = simulate(s, pp, m, v, even), b = simulate(s, pp, m, v);
    EXPECT_DOUBLE_EQ(a.makespan, b.makespan);
    EXPECT_DOUBLE_EQ(a.bubble, b.bubble);
    const SimResult u = simulate(s, pp, m, v, uneven);
    for (int r = 0; r < pp; ++r) {
      EXPECT_NEAR(u.busy[size_t(r)], 3.0 * m, 1e-9);
      for (const ComputeInterval& x : u.timeline[size_t(r)]) {
        const double want = x.kind == ActionKind::Forward ? uneven.fwd[size_t(r)][size_t(x.chunk)]
                            : x.kind == ActionKind::BackwardWeight
                                ? uneven.wgt[size_t(r)][size_t(x.chunk)]
                            : has_weight_pass(s) ? 1.0 - uneven.wgt[size_t(r)][size_t(x.chunk)]
                                                 : 1.0;
        EXPECT_NEAR(x.end - x.start, want, 1e-12);
      }
    }
    ChunkTimes bad = even;
    bad.fwd[1].pop_back();
    EXPECT_THROW(simulate(s, pp, m, v, bad), Error);
    bad = even;
    bad.wgt[0][1] = 2.0;  // a weight pass longer than its whole backward
    EXPECT_THROW(simulate(s, pp, m, v, bad), Error);
  }
}

TEST(PipelineSchedule, OneFOneBUsesLessMemoryThanGPipe) {
  const SimResult g = simulate(make_schedule(ScheduleKind::GPipe, 4, 8, 1), 4, 8, 1);
  const SimResult f = simulate(make_schedule(ScheduleKind::OneFOneB, 4, 8, 1), 4, 8, 1);
  for (int s = 0; s < 4; ++s) {
    EXPECT_EQ(g.peak_live[s], 8);
    EXPECT_EQ(f.peak_live[s], 4 - s);
  }
  EXPECT_DOUBLE_EQ(g.makespan, f.makespan);  // same bubble, (m + pp − 1)·(t_f + t_b)
  EXPECT_DOUBLE_EQ(f.makespan, (8 + 3) * 3.0);
}

// ZB-H1 against 1F1B at the same compute (forward 1, backward 2): the step is shorter by
// (pp−1)·2·t_W, for any split of the backward with t_W ≤ t_fwd (the paper's bound
// m·(t_F + t_B + t_W) + (pp−1)(t_F + t_B − t_W)), and every stage keeps at most pp micro-batches.
TEST(PipelineSchedule, ZeroBubbleMeetsItsBoundWithinOneFOneBsPeakMemory) {
  for (int pp : {2, 3, 4, 8})
    for (int m : {pp, 2 * pp, 4 * pp, pp + 1})
      for (double w : {0.5, 0.8, 1.0}) {
        SCOPED_TRACE("pp=" + std::to_string(pp) + " m=" + std::to_string(m) +
                     " t_W=" + std::to_string(w));
        const PipelineSchedule zb = make_schedule(ScheduleKind::ZeroBubble, pp, m, 1);
        const std::vector<double> f(size_t(pp), 1.0), b(size_t(pp), 2.0), wg(size_t(pp), w);
        const SimResult r = simulate(zb, pp, m, 1, f, b, 0, wg);
        EXPECT_NEAR(r.makespan, 3.0 * m + (pp - 1) * (1.0 + (2.0 - w) - w), 1e-9);
        const SimResult plain = simulate(make_schedule(ScheduleKind::OneFOneB, pp, m, 1), pp, m, 1);
        EXPECT_NEAR(plain.makespan - r.makespan, (pp - 1) * 2.0 * w, 1e-9);
        for (int s = 0; s < pp; ++s) {
          EXPECT_LE(r.peak_live[s], pp);
          // The order: 1F1B's forwards and Bs, stage s's W lagging its B by s micro-batches.
          int b_seen = 0, w_seen = 0;
          for (const Action& a : zb[size_t(s)]) {
            if (a.kind == ActionKind::Backward) ++b_seen;
            if (a.kind != ActionKind::BackwardWeight) continue;
            EXPECT_EQ(a.microbatch, w_seen++);
            EXPECT_TRUE(b_seen == m || b_seen - 1 - a.microbatch == s);
          }
        }
        EXPECT_EQ(r.peak_live[0], std::min(pp, m));  // stage 0 is 1F1B's, W right after B
      }
  // W takes half the backward unless told otherwise.
  const PipelineSchedule zb = make_schedule(ScheduleKind::ZeroBubble, 4, 8, 1);
  EXPECT_DOUBLE_EQ(simulate(zb, 4, 8, 1).makespan, 3.0 * 8 + 3.0);
  EXPECT_THROW(simulate(zb, 4, 8, 1, std::vector<double>(4, 1.0), std::vector<double>(4, 2.0), 0,
                        std::vector<double>(4, 2.5)),
               Error)
      << "a weight pass longer than the backward";
}

TEST(PipelineSchedule, MisplacedWeightPassesAreCaught) {
  auto error_of = [](const PipelineSchedule& s) {
    try {
      check_schedule(s, 4, 8, 1);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const PipelineSchedule s = make_schedule(ScheduleKind::ZeroBubble, 4, 8, 1);
  ASSERT_EQ(error_of(s), "");
  // The W of micro-batch 5 moved before its B.
  PipelineSchedule early = s;
  const int w = find(early, 2, ActionKind::BackwardWeight, 5);
  ASSERT_GE(w, 0);
  const Action moved = early[2][size_t(w)];
  early[2].erase(early[2].begin() + w);
  early[2].insert(early[2].begin() + find(early, 2, ActionKind::Forward, 6), moved);
  EXPECT_NE(error_of(early).find("weight pass before its backward"), std::string::npos)
      << error_of(early);
  // A W missing: the step would end without that micro-batch's weight gradients.
  PipelineSchedule missing = s;
  missing[1].erase(missing[1].begin() + find(missing, 1, ActionKind::BackwardWeight, 7));
  EXPECT_NE(error_of(missing).find("micro-batch 7 chunk 0 (global chunk 1): no weight pass"),
            std::string::npos)
      << error_of(missing);
  // A W repeated.
  PipelineSchedule twice = s;
  twice[3].push_back(twice[3][size_t(find(twice, 3, ActionKind::BackwardWeight, 2))]);
  EXPECT_NE(error_of(twice).find("second weight pass"), std::string::npos) << error_of(twice);
  // One W in 1F1B: the executor would then leave every backward's weights to a W, and the other
  // pairs have none.
  PipelineSchedule extra = make_schedule(ScheduleKind::OneFOneB, 4, 8, 1);
  extra[0].push_back({ActionKind::BackwardWeight, 0, 0, -1});
  EXPECT_NE(error_of(extra).find("no weight pass"), std::string::npos) << error_of(extra);
}

TEST(PipelineSchedule, UnevenStagesWaitForTheSlowestOne) {
  // GPipe on 2 stages, the second twice as slow (forward 1 and 2, backward 2 and 4), m = 4.
  // By hand: stage 1's forwards end at 1 + 4·2 = 9 (it waits for none after the first), its
  // backwards at 9 + 4·4 = 25; stage 0's last backward starts then and ends at 27. Busy 12 + 24
  // of 2 · 27: a third idle.
  const SimResult r =
      simulate(make_schedule(ScheduleKind::GPipe, 2, 4, 1), 2, 4, 1, {1.0, 2.0}, {2.0, 4.0});
  EXPECT_DOUBLE_EQ(r.makespan, 27.0);
  EXPECT_DOUBLE_EQ(r.busy[0], 12.0);
  EXPECT_DOUBLE_EQ(r.busy[1], 24.0);
  EXPECT_NEAR(r.bubble, 1.0 / 3.0, 1e-12);
  // Equal stages reproduce the uniform simulation.
  const auto s = make_schedule(ScheduleKind::Interleaved, 4, 8, 2);
  EXPECT_DOUBLE_EQ(
      simulate(s, 4, 8, 2, std::vector<double>(4, 1.5), std::vector<double>(4, 3.0)).makespan,
      simulate(s, 4, 8, 2, 1.5, 3.0).makespan);
  EXPECT_THROW(simulate(s, 4, 8, 2, {1.0, 1.0}, {2.0, 2.0}), Error) << "one time per rank";
}

// Outgoing gradients from K buffers reused in turn: a send waits until the message K earlier
// was received. A hand-made step where that deadlocks with one buffer: rank 1 (global chunk 1
// of pp = 2, v = 2) sends two gradients to chunk 0 and then an activation to chunk 2, and rank 0
// receives the activation first.
TEST(PipelineSchedule, GradientBuffersReusedInTurnCanDeadlockAndAreSizedToAvoidIt) {
  const PipelineSchedule hand = {{{ActionKind::RecvActivation, 2, 1, 1},
                                  {ActionKind::RecvGrad, 0, 0, 1},
                                  {ActionKind::RecvGrad, 1, 0, 1}},
                                 {{ActionKind::SendGrad, 0, 0, 0},
                                  {ActionKind::SendGrad, 1, 0, 0},
                                  {ActionKind::SendActivation, 2, 0, 0}}};
  const std::vector<double> t(2, 1.0);
  EXPECT_NO_THROW(simulate(hand, 2, 3, 2, t, t, 0));
  EXPECT_NO_THROW(simulate(hand, 2, 3, 2, t, t, 2));
  try {
    simulate(hand, 2, 3, 2, t, t, 1);
    FAIL() << "one buffer should deadlock";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deadlock"), std::string::npos) << e.what();
  }
  EXPECT_EQ(grad_send_buffers(hand, 2, 3, 2), 2);
  // The built-in schedules never wait with one buffer (each stage receives a gradient right
  // before the backward that needs it): two per rank (one spare), not one per micro-batch.
  for (ScheduleKind kind : kKinds)
    for (int pp : {2, 4, 8})
      for (int m : {8, 64}) {
        const int v = v_of(kind);
        const PipelineSchedule s = make_schedule(kind, pp, m, v);
        const std::vector<double> f(size_t(pp), 1.0), b(size_t(pp), 2.0);
        EXPECT_DOUBLE_EQ(simulate(s, pp, m, v, f, b, 1).makespan, simulate(s, pp, m, v).makespan)
            << schedule_kind_name(kind) << " pp " << pp << " m " << m;
        EXPECT_EQ(grad_send_buffers(s, pp, m, v), 2) << schedule_kind_name(kind);
      }
  EXPECT_EQ(grad_send_buffers(make_schedule(ScheduleKind::OneFOneB, 4, 1, 1), 4, 1, 1), 1)
      << "never more than the sends";
}

TEST(PipelineSchedule, EndpointsHaveNoOuterTransfers) {
  const PipelineSchedule s = make_schedule(ScheduleKind::Interleaved, 2, 4, 2);
  for (int rank = 0; rank < 2; ++rank) {
    for (const Action& a : s[rank]) {
      const int g = a.chunk * 2 + rank;
      if (g == 0) {
        EXPECT_NE(a.kind, ActionKind::RecvActivation);
        EXPECT_NE(a.kind, ActionKind::SendGrad);
      }
      if (g == 3) {
        EXPECT_NE(a.kind, ActionKind::SendActivation);
        EXPECT_NE(a.kind, ActionKind::RecvGrad);
      }
    }
  }
  // Rank 0 starts with the forward of micro-batch 0 on global chunk 0 and sends it to rank 1.
  EXPECT_EQ(s[0][0].kind, ActionKind::Forward);
  EXPECT_EQ(s[0][1].kind, ActionKind::SendActivation);
  EXPECT_EQ(s[0][1].peer, 1);
  // Rank 1's chunk 1 (global chunk 3) sends its activation back to nobody; its chunk 0 sends
  // to rank 0's chunk 1 (global chunk 2).
  EXPECT_EQ(s[1][0].kind, ActionKind::RecvActivation);
  EXPECT_EQ(s[1][0].peer, 0);
}

TEST(PipelineSchedule, ParsesNames) {
  EXPECT_EQ(parse_schedule_kind("gpipe"), ScheduleKind::GPipe);
  EXPECT_EQ(parse_schedule_kind("1f1b"), ScheduleKind::OneFOneB);
  EXPECT_EQ(parse_schedule_kind("interleaved"), ScheduleKind::Interleaved);
  EXPECT_EQ(parse_schedule_kind("zb-h1"), ScheduleKind::ZeroBubble);
  EXPECT_EQ(parse_schedule_kind("zb-v"), ScheduleKind::ZeroBubbleV);
  for (ScheduleKind k : kKinds) EXPECT_EQ(parse_schedule_kind(schedule_kind_name(k)), k);
  try {
    parse_schedule_kind("zero-bubble");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("zero-bubble"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("1f1b, gpipe, interleaved, zb-h1 or zb-v"),
              std::string::npos);
  }
  EXPECT_THROW(parse_schedule_kind(""), Error);
  EXPECT_THROW(parse_schedule_kind("GPipe"), Error);
}

TEST(PipelineSchedule, RejectsInvalidShapes) {
  EXPECT_THROW(make_schedule(ScheduleKind::Interleaved, 4, 8, 1), Error);  // v < 2
  EXPECT_THROW(make_schedule(ScheduleKind::Interleaved, 4, 6, 2), Error);  // m % pp != 0
  EXPECT_THROW(make_schedule(ScheduleKind::GPipe, 4, 8, 2), Error);
  EXPECT_THROW(make_schedule(ScheduleKind::OneFOneB, 4, 8, 2), Error);
  EXPECT_THROW(make_schedule(ScheduleKind::ZeroBubble, 4, 6, 2), Error);  // m % pp != 0
  EXPECT_THROW(make_schedule(ScheduleKind::OneFOneB, 0, 8, 1), Error);
  EXPECT_THROW(make_schedule(ScheduleKind::OneFOneB, 4, 0, 1), Error);
  EXPECT_THROW(theoretical_bubble(ScheduleKind::Interleaved, 4, 6, 2), Error);
  try {
    make_schedule(ScheduleKind::Interleaved, 4, 6, 2);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of pp"), std::string::npos) << e.what();
  }
}

TEST(PipelineSchedule, DroppedSendIsCaught) {
  for (ScheduleKind kind : kKinds) {
    const int v = v_of(kind);
    PipelineSchedule s = make_schedule(kind, 4, 8, v);
    const int i = find(s, 1, ActionKind::SendActivation);
    ASSERT_GE(i, 0);
    s[1].erase(s[1].begin() + i);
    EXPECT_THROW(check_schedule(s, 4, 8, v), Error);
    EXPECT_THROW(simulate(s, 4, 8, v), Error);  // its receiver waits forever
  }
}

TEST(PipelineSchedule, SwappedReceivesAreCaught) {
  for (ScheduleKind kind : kKinds) {
    const int v = v_of(kind);
    PipelineSchedule s = make_schedule(kind, 4, 8, v);
    const int a = find(s, 3, ActionKind::RecvActivation, 0);
    const int b = find(s, 3, ActionKind::RecvActivation, 1);
    ASSERT_GE(a, 0);
    ASSERT_GE(b, 0);
    std::swap(s[3][a], s[3][b]);
    EXPECT_THROW(check_schedule(s, 4, 8, v), Error);
    EXPECT_THROW(simulate(s, 4, 8, v), Error);
  }
}

// Consistent on paper, deadlocked in execution: rank 0 waits for the gradient of micro-batch 0
// before it sends rank 1 the activation that gradient needs.
TEST(PipelineSchedule, DeadlockIsDetected) {
  PipelineSchedule s = make_schedule(ScheduleKind::OneFOneB, 2, 4, 1);
  const int i = find(s, 0, ActionKind::RecvGrad);
  ASSERT_GE(i, 0);
  const Action recv = s[0][i];
  s[0].erase(s[0].begin() + i);
  s[0].insert(s[0].begin(), recv);
  EXPECT_NO_THROW(check_schedule(s, 2, 4, 1));
  try {
    simulate(s, 2, 4, 1);
    FAIL() << "no deadlock reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deadlock"), std::string::npos) << e.what();
  }
}

TEST(PipelineSchedule, MisdirectedAndMissingComputeAreCaught) {
  PipelineSchedule s = make_schedule(ScheduleKind::OneFOneB, 4, 8, 1);
  const int i = find(s, 1, ActionKind::SendActivation);
  s[1][i].peer = 3;
  EXPECT_THROW(check_schedule(s, 4, 8, 1), Error);

  s = make_schedule(ScheduleKind::GPipe, 4, 8, 1);
  s[2].erase(s[2].begin() + find(s, 2, ActionKind::Backward, 5));
  EXPECT_THROW(check_schedule(s, 4, 8, 1), Error);
}

}  // namespace
}  // namespace triad
