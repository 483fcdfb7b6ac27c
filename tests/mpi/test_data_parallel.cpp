// Data parallelism and ZeRO against one rank (run under mpiexec -np 4): every dp in {1, 2, 4}
// × ZeRO in {0, 1, 2, 3} × accumulation in {1, 4} gives the per-step losses and final weights of
// the single-rank run to fp32 rounding; checkpoints saved on one grid resume on another.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>

#include "../support/mpi_test_helpers.h"
#include "../support/mpi_test_main.h"
#include "../support/trainer_runs.h"
#include "triad/train/run_plan.h"
#include "triad/train/trainer.h"

namespace triad {
namespace {

using triad::testing::world_rank;
using triad::testing::world_size;

using triad::testing::expect_same_training;
using triad::testing::run_trainer;
using Result = triad::testing::RunResult;

std::string shared_dir(const std::string& name) {
  return triad::testing::shared_token_dir("triad_dp_" + name, 256, 5000, 11);
}

// Runs triad-train's loop on the first `dp` ranks of the world; the others wait.
Result run(const std::string& dir, const std::string& name, int dp, int zero, int accum,
           std::vector<std::string> extra = {}) {
  const int batch = 16;
  std::vector<std::string> args =
      triad::testing::small_run_args(dir, name, {2, 2, 32, 16, 256}, batch, batch / (dp * accum));
  args.insert(args.end(), {"--parallel.zero", std::to_string(zero)});
  if (extra.empty()) extra = {"--resume", "none"};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_trainer(dp, args);
}

TEST(DataParallel, EveryGridMatchesOneRank) {
  const std::string dir = shared_dir("grid");
  const Result ref = run(dir, "ref", 1, 0, 1);
  ASSERT_EQ(ref.losses.size(), 6u);
  for (int dp : {1, 2, 4}) {
    if (dp > world_size()) continue;
    for (int zero : {0, 1, 2, 3})
      for (int accum : {1, 4}) {
        if (dp == 1 && zero == 0 && accum == 1) continue;
        const std::string name =
            "dp" + std::to_string(dp) + "_z" + std::to_string(zero) + "_a" + std::to_string(accum);
        expect_same_training(run(dir, name, dp, zero, accum), ref, name);
      }
  }
}

// The traffic of the data-parallel communicator per step, as docs/parallelism.md states it:
// without ZeRO one all-reduce of the whole gradient (in per-layer buckets); with ZeRO-1 one
// reduce-scatter of the padded gradient buffer and one all-gather of this rank's slice.
TEST(DataParallel, CommunicationVolumeMatchesTheFormulas) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const std::string dir = shared_dir("traffic");
  const int steps = 6, dp = 2;
  for (int zero : {0, 1, 2}) {
    const Result r = run(dir, "traffic_z" + std::to_string(zero), dp, zero, 2);
    if (world_rank() != 0) continue;  // the result struct's traffic is rank 0's
    const CommStats& t = r.out.dp_traffic;
    const uint64_t grad = r.out.param_floats * 4, buffer = r.out.buffer_floats * 4;
    if (zero == 0) {
      EXPECT_EQ(t.bytes[CommStats::kAllReduce], steps * grad);
      // buckets: ln_f, 2 layers, embeddings
      EXPECT_EQ(t.calls[CommStats::kAllReduce], uint64_t(steps * 4));
      EXPECT_EQ(t.bytes[CommStats::kReduceScatter], 0u);
      EXPECT_EQ(t.bytes[CommStats::kAllGather], 0u);
    } else if (zero == 1) {
      // The last micro-batch's 4 buckets, unpadded, into the slices.
      EXPECT_EQ(t.bytes[CommStats::kAllReduce], 0u);
      EXPECT_EQ(t.bytes[CommStats::kReduceScatter], steps * grad);
      EXPECT_EQ(t.calls[CommStats::kReduceScatter], uint64_t(steps * 4));
      EXPECT_EQ(t.bytes[CommStats::kAllGather], steps * buffer / dp);
    } else {
      // ZeRO-2: each of the 2 micro-batches' 4 buckets, unpadded, into the slices.
      EXPECT_EQ(t.bytes[CommStats::kAllReduce], 0u);
      EXPECT_EQ(t.bytes[CommStats::kReduceScatter], steps * 2 * grad);
      EXPECT_EQ(t.calls[CommStats::kReduceScatter], uint64_t(steps * 2 * 4));
      EXPECT_EQ(t.bytes[CommStats::kAllGather], steps * buffer / dp);
    }
    EXPECT_EQ(t.bytes[CommStats::kSend] + t.bytes[CommStats::kRecv], 0u);
  }
}

// Expert parallelism's traffic (docs/parallelism.md): per layer with experts and micro-batch of
// N rows, each rank sends the others its E/ep counts for each, then its rows four times (the
// inputs and the outputs' gradients to the experts' ranks, the outputs and the inputs'
// gradients back): over the group 4·ep·N·k rows of C floats, and 5 all-to-alls on each rank.
// The experts' gradients are all-reduced over their replicas (edp), the rest over dp: together
// the whole gradient, each element once.
TEST(DataParallel, ExpertParallelTrafficMatchesTheFormulas) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const std::string dir = shared_dir("traffic");
  const int steps = 6, dp = 2, ep = 2, accum = 2, E = 4, k = 2, H = 64, L = 2, C = 32, T = 16;
  std::vector<std::string> args =
      triad::testing::small_run_args(dir, "traffic_ep", {L, 2, C, T, 256}, 16, 16 / (dp * accum));
  // No evaluations: their forward passes would exchange rows too.
  *(std::find(args.begin(), args.end(), "--eval.sequences") + 1) = "0";
  args.insert(args.end(), {"--resume", "none", "--model.moe_experts", std::to_string(E),
                           "--model.moe_top_k", std::to_string(k), "--model.mlp_hidden",
                           std::to_string(H), "--parallel.ep", std::to_string(ep)});
  const Result r = run_trainer(dp, args);
  // r.out is this rank's own (run_trainer broadcasts only the losses and weights).
  const bool in = world_rank() < dp;
  const CommStats& t = r.out.ep_traffic;
  uint64_t group = in ? t.bytes[CommStats::kAllToAll] : 0;
  MPI_Allreduce(MPI_IN_PLACE, &group, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  const uint64_t N = uint64_t(16 / (dp * accum)) * T, passes = uint64_t(steps) * accum * L;
  EXPECT_EQ(group, passes * (ep * E * 4 + 4 * ep * N * k * C * 4));
  // triad-train --plan says the same: what each rank hands in without a capacity.
  std::vector<const char*> argv;
  for (auto& a : args) argv.push_back(a.c_str());
  const RunPlan plan = plan_run(parse_train_command_line(int(argv.size()), argv.data()).config, dp);
  EXPECT_EQ(group, uint64_t(steps) * ep * plan.stages[0].ep_all_to_all);
  if (!in) return;
  EXPECT_EQ(t.calls[CommStats::kAllToAll], passes * 5);
  // Each rank's experts: E/ep of [H, C] and [C, H] per layer (16-float aligned already).
  const uint64_t experts = uint64_t(L) * 2 * (E / ep) * H * C;
  EXPECT_EQ(r.out.edp_traffic.bytes[CommStats::kAllReduce], steps * experts * 4);
  EXPECT_EQ(r.out.dp_traffic.bytes[CommStats::kAllReduce] +
                r.out.edp_traffic.bytes[CommStats::kAllReduce],
            steps * r.out.param_floats * 4);
}

// train.freeze: a bucket of frozen tensors only is not reduced. With the embeddings (wte
// [256, 32], wpe [16, 32]: 8704 floats) and the first layer frozen (12 tensors of C = 32, each
// 16-float aligned: 12704 floats), each step's reduction leaves out both buckets: 2 of the 4
// travel (ln_f's, the second layer's), with and without ZeRO-1.
TEST(DataParallel, FrozenBucketsAreNotReduced) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const std::string dir = shared_dir("traffic");
  const int steps = 6, dp = 2;
  for (int zero : {0, 1}) {
    const Result all = run(dir, "frozen_all_z" + std::to_string(zero), dp, zero, 2);
    const Result r = run(dir, "frozen_z" + std::to_string(zero), dp, zero, 2,
                         {"--resume", "none", "--train.freeze", "wte/weight, wpe/weight, h/0/*"});
    if (world_rank() != 0) continue;
    const int kind = zero == 0 ? CommStats::kAllReduce : CommStats::kReduceScatter;
    const CommStats& t = r.out.dp_traffic;
    const uint64_t grad = r.out.param_floats * 4, frozen = (8704 + 12704) * 4;
    EXPECT_EQ(all.out.dp_traffic.bytes[kind], steps * grad) << "zero " << zero;
    EXPECT_EQ(t.calls[kind], uint64_t(steps * 2)) << "zero " << zero;
    EXPECT_EQ(t.bytes[kind], steps * (grad - frozen)) << "zero " << zero;
  }
}

TEST(DataParallel, CheckpointsResumeOnOtherGrids) {
  const std::string dir = shared_dir("reshard");
  const int big = std::min(4, world_size());
  const Result full = run(dir, "full", big, 1, 1);  // writes steps 3 and 6
  const std::string ckpt = dir + "/runs/full/ckpt/step_00000003.h5";
  auto resumed = [&](const std::string& name, int dp, int zero) {
    Result r = run(dir, name, dp, zero, 1, {"--resume", ckpt});
    return r;
  };
  for (auto [dp, zero] : std::vector<std::pair<int, int>>{
           {big, 1}, {2, 0}, {1, 0}, {1, 1}, {big, 2}, {1, 2}, {big, 3}, {1, 3}}) {
    if (dp > world_size()) continue;
    const std::string name =
        "from" + std::to_string(big) + "_dp" + std::to_string(dp) + "_z" + std::to_string(zero);
    const Result r = resumed(name, dp, zero);
    ASSERT_EQ(r.losses.size(), 3u) << name;  // steps 3, 4, 5
    Result tail = full;
    tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
    if (dp == big && zero == 1) {
      // The same grid: bit-identical.
      for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r.losses[i], tail.losses[i]) << name;
      EXPECT_EQ(r.params, full.params) << name;
    } else {
      expect_same_training(r, tail, name);
    }
  }
  // And the reverse: saved on one rank without ZeRO, resumed on the big grid with ZeRO-1.
  const Result one = run(dir, "one", 1, 0, 1);
  const Result back =
      run(dir, "back", big, 1, 1, {"--resume", dir + "/runs/one/ckpt/step_00000003.h5"});
  Result tail = one;
  tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
  expect_same_training(back, tail, "from1_to_big");
}

}  // namespace
}  // namespace triad

int main(int argc, char** argv) { return triad::testing::run_mpi_tests(argc, argv); }
