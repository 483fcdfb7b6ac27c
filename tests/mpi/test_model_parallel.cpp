// Tensor and pipeline parallelism against one rank (run under mpiexec -np 8): every grid
// dp×tp×pp from 1×1×1 to 2×2×2, with ZeRO-1, accumulation and each pipeline schedule, gives the
// per-step losses and final weights of the single-rank run to fp32 rounding; checkpoints saved
// on one grid resume on another; the tensor- and pipeline-parallel traffic of a step follows
// the formulas of docs/parallelism.md; per-rank memory shrinks with the grid.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <tuple>

#include "../support/mpi_test_helpers.h"
#include "../support/mpi_test_main.h"
#include "../support/trainer_runs.h"
#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/parallel/process_grid.h"
#include "triad/train/run_plan.h"
#include "triad/train/trainer.h"

namespace triad {
namespace {

using triad::testing::world_rank;
using triad::testing::world_size;

// Model: 4 layers (pp up to 4, or 2 × 2 virtual stages), 4 heads (tp up to 4), and a vocabulary
// of 300 padded to 384 (tp 1), 512 (tp 2, 4): at tp = 4 the last rank holds only padding.
constexpr int kLayers = 4, kHeads = 4, kEmbd = 32, kSeq = 16, kVocab = 300, kBatch = 16;

using triad::testing::expect_same_training;
using triad::testing::run_trainer;
using Result = triad::testing::RunResult;

std::string shared_dir(const std::string& name) {
  return triad::testing::shared_token_dir("triad_mp_" + name, kVocab, 6000, 5);
}

struct Grid {
  int dp = 1, tp = 1, pp = 1;
  int zero = 0, accum = 1;
  std::string schedule = "1f1b";
  int v = 1;
  bool sp = false;  // sequence parallelism
  int cp = 1;       // context parallelism
  std::string name() const {
    return std::to_string(dp) + "x" + std::to_string(tp) + "x" + std::to_string(pp) + "_z" +
           std::to_string(zero) + "_a" + std::to_string(accum) + "_" + schedule +
           (v > 1 ? "_v" + std::to_string(v) : "") + (sp ? "_sp" : "") +
           (cp > 1 ? "_cp" + std::to_string(cp) : "");
  }
  int ranks() const { return dp * tp * pp * cp; }
};

// triad-train's command line for grid g: the small model, then "--key value" pairs of `extra`
// replacing the defaults or adding to them (default: --resume none). A run writes its final
// checkpoint only, unless `extra` asks for the step-3 one that a later run resumes from
// (step3_kept): with 8 ranks on 2 cores a checkpoint's collective writes take longer than the
// run's 6 steps, and most runs are compared by their losses and weights alone.
std::vector<std::string> grid_args(const std::string& dir, const std::string& name, const Grid& g,
                                   std::vector<std::string> extra = {}) {
  std::vector<std::string> args = triad::testing::small_run_args(
      dir, name, {kLayers, kHeads, kEmbd, kSeq, kVocab}, kBatch, kBatch / (g.dp * g.accum));
  args.insert(
      args.end(),
      {"--run.threads", "1", "--parallel.zero", std::to_string(g.zero), "--parallel.tp",
       std::to_string(g.tp), "--parallel.pp", std::to_string(g.pp), "--parallel.schedule",
       g.schedule, "--parallel.virtual_stages", std::to_string(g.v), "--parallel.sequence_parallel",
       g.sp ? "true" : "false", "--parallel.cp", std::to_string(g.cp)});
  if (extra.empty()) extra = {"--resume", "none"};
  *(std::find(args.begin(), args.end(), "--checkpoint.every") + 1) = "0";
  // Extra "--key value" pairs replace the defaults above or add to them.
  for (size_t i = 0; i + 1 < extra.size(); i += 2) {
    auto it = std::find(args.begin(), args.end(), extra[i]);
    if (it != args.end()) {
      *(it + 1) = extra[i + 1];
    } else {
      args.push_back(extra[i]);
      args.push_back(extra[i + 1]);
    }
  }
  return args;
}

// `extra` with the step-3 checkpoint kept for a later run to resume from.
std::vector<std::string> step3_kept(std::vector<std::string> extra) {
  extra.insert(extra.end(), {"--checkpoint.every", "3"});
  return extra;
}

// Runs triad-train's loop on the first g.ranks() ranks of the world; the others wait.
Result run(const std::string& dir, const std::string& name, const Grid& g,
           std::vector<std::string> extra = {}) {
  return run_trainer(g.ranks(), grid_args(dir, name, g, std::move(extra)));
}

// The config of a triad-train command line.
Config config_of(const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_train_command_line(int(argv.size()), argv.data()).config;
}

// What --plan says this rank holds on its backend for the run of `args` on grid g.
size_t planned_bytes(const std::vector<std::string>& args, const Grid& g) {
  const RunPlan plan = plan_run(config_of(args), g.ranks());
  return plan.stages[size_t((world_rank() / (g.tp * g.cp)) % g.pp)].total();
}

// Runs `name` (6 steps) on g, then again resumed from its checkpoint of step 3: the resumed steps'
// losses, the validation loss and the final weights must be the uninterrupted run's, bit for bit.
// Returns the uninterrupted run.
Result expect_resumes_exactly(const std::string& dir, const std::string& name, const Grid& g) {
  const Result full = run(dir, name, g, step3_kept({"--resume", "none"}));
  const Result resumed = run(dir, name + "_resumed", g,
                             {"--resume", dir + "/runs/" + name + "/ckpt/step_00000003.h5"});
  EXPECT_EQ(full.losses.size(), 6u) << name;
  if (full.losses.size() != 6u) return full;
  EXPECT_EQ(resumed.losses, std::vector<double>(full.losses.begin() + 3, full.losses.end()))
      << name;
  EXPECT_EQ(resumed.val_loss, full.val_loss) << name;
  EXPECT_EQ(resumed.params, full.params) << name << ": weights differ";
  return full;
}

// Muon needs whole matrices: tensor parallelism gathers the shards (by rows for c_attn and c_fc,
// by columns for the c_proj), ZeRO (1, 2 and 3) the data-parallel slices of each matrix first.
// Every grid follows the single-rank run to fp32 rounding (the sums over a gathered matrix go in
// another order).
TEST(ModelParallel, MuonMatchesOneRankOnEveryGrid) {
  const std::string dir = shared_dir("grid");
  const std::vector<std::string> muon = {"--resume",        "none", "--optim.name", "muon",
                                         "--optim.muon_lr", "0.02"};
  const Result ref = run(dir, "muon_ref", Grid{}, muon);
  ASSERT_EQ(ref.losses.size(), 6u);
  const std::vector<Grid> grids = {
      {2, 1, 1, 1, 2, "1f1b", 1},        {2, 1, 1, 0, 1, "1f1b", 1},
      {1, 2, 1, 0, 1, "1f1b", 1},        {1, 4, 1, 1, 2, "1f1b", 1},
      {1, 1, 2, 0, 4, "1f1b", 1},        {2, 2, 1, 1, 2, "1f1b", 1},
      {2, 2, 2, 1, 2, "interleaved", 2}, {1, 2, 2, 0, 2, "1f1b", 1, true},
      {4, 2, 1, 1, 1, "1f1b", 1},        {2, 1, 1, 2, 2, "1f1b", 1},
      {2, 1, 1, 3, 1, "1f1b", 1},        {2, 2, 1, 2, 1, "1f1b", 1},
      {4, 2, 1, 3, 1, "1f1b", 1}};
  for (const Grid& g : grids) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(dir, "muon_" + g.name(), g, muon), ref, "muon " + g.name());
  }
  // Rounds of unequal matrices (a round's all-gather count above some members' size) and a
  // last round with idle ranks: uneven stages (3 + 1 layers) at dp 2, and dp 3 (16 matrices in
  // rounds of 3) at a batch of 12.
  {
    std::vector<std::string> uneven = muon;
    uneven.insert(uneven.end(), {"--parallel.stage_layers", "3,1"});
    const Grid g{2, 1, 2, 1, 2, "1f1b", 1};
    if (g.ranks() <= world_size())
      expect_same_training(run(dir, "muon_uneven_" + g.name(), g, uneven), ref,
                           "muon stages 3+1 " + g.name());
  }
  std::vector<std::string> b12 = muon;
  b12.insert(b12.end(), {"--train.batch_size", "12", "--train.micro_batch_size", "4"});
  const Result ref12 = run(dir, "muon_ref12", Grid{}, b12);
  for (const int zero : {0, 1, 2, 3}) {
    const Grid g{3, 1, 1, zero, 1, "1f1b", 1};
    if (g.ranks() <= world_size())
      expect_same_training(run(dir, "muon_b12_" + g.name(), g, b12), ref12, "muon " + g.name());
  }
}

// Expert parallelism: each rank of an expert-parallel group holds its own experts, under ZeRO-3
// in packed slices over their replicas (Gpt::packed_experts). The losses and the weights the
// trainer assembles from every rank (Trainer::parameters: the packed slices over edp) at ep 2 on
// dp 2 and 4, without ZeRO and under ZeRO-1 and 3, are one rank's to fp32 rounding. (No
// balancing term: it is each micro-batch's, whose size differs by grid here.)
TEST(ModelParallel, ExpertParallelWeightsAreOneRanks) {
  const std::string dir = shared_dir("grid");
  const std::vector<std::string> moe = {
      "--resume",           "none", "--model.moe_experts",       "4",  "--model.moe_top_k",    "2",
      "--model.mlp_hidden", "16",   "--model.moe_shared_hidden", "16", "--train.moe_aux_loss", "0"};
  const Result ref = run(dir, "moe_ref", Grid{}, moe);
  ASSERT_EQ(ref.losses.size(), 6u);
  std::vector<std::string> ep = moe;
  ep.insert(ep.end(), {"--parallel.ep", "2"});
  for (const Grid& g : {Grid{2, 1, 1, 0, 1, "1f1b", 1}, Grid{2, 1, 1, 3, 1, "1f1b", 1},
                        Grid{4, 1, 1, 1, 1, "1f1b", 1}, Grid{4, 1, 1, 3, 1, "1f1b", 1}}) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(dir, "moe_ep2_" + g.name(), g, ep), ref, "ep 2 " + g.name());
  }
}

// Muon's state (momentum of the matrices, m and v of the rest) resumes bit for bit on the grid
// that saved it and reshards onto others (ZeRO-2 and 3 too), like AdamW's.
TEST(ModelParallel, MuonResumesExactlyAndReshards) {
  const std::string dir = shared_dir("muon_reshard");
  const Grid big{2, 2, 2, 1, 2, "1f1b", 1};
  if (big.ranks() > world_size()) GTEST_SKIP() << "needs 8 ranks";
  const std::vector<std::string> muon = {"--optim.name", "muon", "--optim.muon_lr", "0.02"};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), muon.begin(), muon.end());
    return a;
  };
  const Result full = run(dir, "full", big, with(step3_kept({"--resume", "none"})));
  const std::string ckpt = dir + "/runs/full/ckpt/step_00000003.h5";
  Result tail = full;
  tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
  const Result same = run(dir, "same", big, with({"--resume", ckpt}));
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(same.losses[i], tail.losses[i]) << "same grid";
  EXPECT_EQ(same.params, full.params) << "same grid: bit-identical";
  for (const Grid& g : std::vector<Grid>{{1, 1, 1, 0, 1, "1f1b", 1},
                                         {1, 4, 1, 1, 1, "1f1b", 1, true},
                                         {4, 1, 1, 2, 1, "1f1b", 1},
                                         {4, 2, 1, 3, 1, "1f1b", 1}}) {
    const Result r = run(dir, "from222_" + g.name(), g, with({"--resume", ckpt}));
    ASSERT_EQ(r.losses.size(), 3u) << g.name();
    expect_same_training(r, tail, "muon from 2x2x2 to " + g.name());
  }
}

TEST(ModelParallel, EveryGridMatchesOneRank) {
  const std::string dir = shared_dir("grid");
  const Result ref = run(dir, "ref", Grid{});
  ASSERT_EQ(ref.losses.size(), 6u);
  // dp, tp, pp, zero, accum, schedule, v
  const std::vector<Grid> grids = {
      {2, 1, 1, 1, 2, "1f1b", 1},
      {1, 2, 1, 0, 1, "1f1b", 1},
      {1, 2, 1, 1, 2, "1f1b", 1},
      {1, 4, 1, 0, 2, "1f1b", 1},
      {1, 1, 2, 0, 4, "1f1b", 1},
      {1, 1, 2, 0, 4, "gpipe", 1},
      {1, 1, 2, 1, 4, "interleaved", 2},
      {1, 1, 4, 0, 4, "1f1b", 1},
      {1, 1, 4, 1, 4, "gpipe", 1},
      {2, 2, 1, 1, 2, "1f1b", 1},
      {2, 1, 2, 1, 2, "1f1b", 1},
      {2, 1, 2, 0, 2, "gpipe", 1},
      {1, 2, 2, 0, 2, "1f1b", 1},
      {1, 2, 2, 1, 2, "interleaved", 2},
      {2, 2, 2, 1, 2, "1f1b", 1},
      {2, 2, 2, 0, 4, "gpipe", 1},
      {2, 2, 2, 1, 2, "interleaved", 2},
      {1, 1, 4, 0, 4, "zb-h1", 1},
      {2, 1, 2, 1, 4, "zb-h1", 1},
      // Sequence parallelism: LayerNorm regions split by rows over the tp group.
      {1, 2, 1, 0, 2, "1f1b", 1, true},
      {1, 4, 1, 1, 1, "1f1b", 1, true},
      {2, 2, 2, 1, 2, "1f1b", 1, true},
      {1, 2, 2, 0, 2, "interleaved", 2, true}};
  for (const Grid& g : grids) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(dir, g.name(), g), ref, g.name());
  }
}

void expect_close_losses(const Result& a, const Result& b, double rel, const std::string& what);

// train.batch_rampup "4, 4, 24" under the full batch of 16: steps of 4, 4, 8, 12, 16 and 16
// sequences (Megatron's rule: an increment at each of 3 equal shares of the first 24), the lr
// schedule counted in sequences, so each
// grid runs 1 to 4 micro-batches per rank as the batch grows, and pipelines switch between their
// schedules of as many. Every grid follows the single-rank ramp to fp32 rounding; a run resumed
// from its checkpoint of step 3 (16 sequences trained, the next batch 12) continues it bit for
// bit, and on another grid to fp32 rounding.
TEST(ModelParallel, BatchRampupMatchesOneRankAndResumesExactly) {
  const std::string dir = shared_dir("rampup");
  // The schedule by sequences: warmup over the first 12, the decay to the run's 60 (a resumed
  // run finds where it was from the checkpoint's tokens_seen).
  const std::vector<std::string> ramp = {"--train.batch_rampup",
                                         "4, 4, 24",
                                         "--train.lr_by",
                                         "sequences",
                                         "--train.warmup_steps",
                                         "0",
                                         "--train.warmup_sequences",
                                         "12"};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), ramp.begin(), ramp.end());
    return a;
  };
  const Result ref = run(dir, "ref", Grid{1, 1, 1, 0, 4}, with({"--resume", "none"}));
  ASSERT_EQ(ref.losses.size(), 6u);
  // Not the full batch's training: the first steps see fewer sequences.
  const Result plain = run(dir, "plain", Grid{1, 1, 1, 0, 4});
  EXPECT_NE(plain.losses[1], ref.losses[1]);
  // dp, tp, pp, zero, accum (at the full batch), schedule, v
  const std::vector<Grid> grids = {{2, 1, 1, 1, 4, "1f1b", 1},        {2, 1, 1, 3, 4, "1f1b", 1},
                                   {1, 2, 1, 0, 4, "1f1b", 1, true},  {1, 1, 2, 0, 4, "1f1b", 1},
                                   {1, 1, 2, 1, 8, "interleaved", 2}, {2, 1, 2, 0, 4, "zb-h1", 1},
                                   {1, 1, 2, 0, 4, "zb-v", 2},        {2, 2, 2, 1, 4, "1f1b", 1}};
  for (const Grid& g : grids) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(dir, g.name(), g, with({"--resume", "none"})), ref, g.name());
  }
  const Grid pipe{2, 1, 2, 1, 4, "1f1b", 1};
  if (pipe.ranks() > world_size()) return;
  const Result full = run(dir, "full", pipe, with(step3_kept({"--resume", "none"})));
  const std::string ckpt = dir + "/runs/full/ckpt/step_00000003.h5";
  Result tail = full;
  tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
  const Result same = run(dir, "same", pipe, with({"--resume", ckpt}));
  EXPECT_EQ(same.losses, tail.losses) << "resumed mid-ramp on the same grid";
  EXPECT_EQ(same.params, full.params) << "resumed mid-ramp on the same grid: bit-identical";
  const Result one = run(dir, "one", Grid{1, 1, 1, 0, 4}, with({"--resume", ckpt}));
  expect_same_training(one, tail, "resumed mid-ramp on one rank");
}

// Context parallelism (parallel.cp): each rank holds two pieces of every sequence and gathers the
// others' keys and values. Alone and with data (ZeRO-1), tensor (sequence parallel), pipeline
// (1F1B and zero bubble) parallelism, with full recomputation, for GPT-2's blocks and for Llama's
// (rotary positions, grouped-query attention) under a document mask and a sliding window, with
// μP's attention scale 1/hd (model.attn_scale) and soft-capped scores (model.attn_softcap): the
// losses and final weights of one rank to fp32 rounding; in bf16 close to one rank's bf16; a
// checkpoint of a context-parallel run resumes on one rank and one rank's on a context-parallel
// grid as the runs continued.
TEST(ModelParallel, ContextParallelMatchesOneRank) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const std::vector<Grid> grids = {
      {1, 1, 1, 0, 1, "1f1b", 1, false, 2}, {1, 1, 1, 0, 2, "1f1b", 1, false, 4},
      {2, 1, 1, 1, 2, "1f1b", 1, false, 2}, {1, 2, 1, 0, 2, "1f1b", 1, true, 2},
      {1, 1, 2, 0, 4, "1f1b", 1, false, 2}, {1, 1, 2, 0, 4, "zb-h1", 1, false, 2},
      {2, 2, 1, 1, 1, "1f1b", 1, true, 2},  {1, 2, 2, 0, 2, "1f1b", 1, false, 2}};
  const std::vector<std::vector<std::string>> variants = {
      {},
      {"--model.position", "rope", "--model.n_kv_head", "2", "--model.norm", "rmsnorm",
       "--model.mlp", "swiglu", "--data.document_mask", "7", "--model.sliding_window", "5",
       "--model.attn_scale", "0.0625", "--model.attn_softcap", "0.02"}};
  for (size_t k = 0; k < variants.size(); ++k) {
    const std::string name = "cp" + std::to_string(k);
    const std::string dir = shared_dir(name);
    auto with = [&](std::vector<std::string> a) {
      a.insert(a.begin(), variants[k].begin(), variants[k].end());
      return a;
    };
    // The checkpoints of step 3 that runs below resume from: one rank's and cp2's.
    const Grid cp2{1, 1, 1, 0, 1, "1f1b", 1, false, 2};
    const Result ref = run(dir, name + "_ref", Grid{}, with(step3_kept({"--resume", "none"})));
    ASSERT_EQ(ref.losses.size(), 6u);
    for (const Grid& g : grids) {
      if (g.ranks() > world_size()) continue;
      const std::vector<std::string> fresh = {"--resume", "none"};
      expect_same_training(run(dir, name + "_" + g.name(), g,
                               with(g.name() == cp2.name() ? step3_kept(fresh) : fresh)),
                           ref, name + " " + g.name());
    }
    expect_same_training(run(dir, name + "_full_" + cp2.name(), cp2,
                             with({"--resume", "none", "--train.recompute", "full"})),
                         ref, name + " recompute full " + cp2.name());
    const std::vector<std::string> bf16 = with({"--resume", "none", "--run.precision", "bf16"});
    const Result bf1 = run(dir, name + "_bf16_ref", Grid{}, bf16);
    expect_close_losses(run(dir, name + "_bf16_" + cp2.name(), cp2, bf16), bf1, 5e-4,
                        name + " bf16 " + cp2.name());
    // Checkpoints: written by the replicas (dp·cp ranks), read on any grid.
    Result tail = ref;
    tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
    const Grid cp4{1, 1, 1, 0, 2, "1f1b", 1, false, 4};
    if (cp4.ranks() <= world_size()) {
      const std::string from_one = dir + "/runs/" + name + "_ref/ckpt/step_00000003.h5";
      expect_same_training(
          run(dir, name + "_from1_" + cp4.name(), cp4, with({"--resume", from_one})), tail,
          name + " from one rank to " + cp4.name());
    }
    const std::string from_cp = dir + "/runs/" + name + "_" + cp2.name() + "/ckpt/step_00000003.h5";
    expect_same_training(run(dir, name + "_fromcp", Grid{}, with({"--resume", from_cp})), tail,
                         name + " from " + cp2.name() + " to one rank");
  }
}

// An architecture variant (its --model.* options) trained on every grid of `grids`, and with
// each recomputation mode of `recompute` on a sequence-parallel 1×2×2 grid, against one rank;
// in bf16 on 2×2×2 (sequence parallel when `sp`) against fp32 and one rank; and its 2×2×2 step-3
// checkpoint resumed on `resume_to` as the 2×2×2 run continued. Returns the one-rank run.
Result check_variant(const std::string& name, const std::vector<std::string>& options,
                     const std::vector<Grid>& grids, const std::vector<std::string>& recompute,
                     bool sp, const Grid& resume_to) {
  const std::string dir = shared_dir(name);
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.begin(), options.begin(), options.end());
    return a;
  };
  const std::vector<std::string> fresh = with({"--resume", "none"});
  const Result ref = run(dir, name + "_ref", Grid{}, fresh);
  EXPECT_EQ(ref.losses.size(), 6u) << name;
  for (const Grid& g : grids) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(dir, name + "_" + g.name(), g, fresh), ref, name + " " + g.name());
  }
  const Grid sp122{1, 2, 2, 0, 2, "1f1b", 1, true};
  for (const std::string& mode : recompute)
    if (sp122.ranks() <= world_size())
      expect_same_training(run(dir, name + "_" + mode + "_" + sp122.name(), sp122,
                               with({"--resume", "none", "--train.recompute", mode})),
                           ref, name + " recompute " + mode + " " + sp122.name());
  const Grid big{2, 2, 2, 1, 2, "1f1b", 1, sp};
  if (big.ranks() > world_size()) return ref;
  const std::vector<std::string> bf16 = with({"--resume", "none", "--run.precision", "bf16"});
  const Result bf1 = run(dir, name + "_bf16_ref", Grid{}, bf16);
  expect_close_losses(bf1, ref, 1e-3, name + " bf16 against fp32");
  expect_close_losses(run(dir, name + "_bf16_" + big.name(), big, bf16), bf1, 5e-4,
                      name + " bf16 " + big.name());
  Result tail = run(dir, name + "_full222", big, step3_kept(fresh));
  tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
  const std::string ckpt = dir + "/runs/" + name + "_full222/ckpt/step_00000003.h5";
  const Result r = run(dir, name + "_from222", resume_to, with({"--resume", ckpt}));
  EXPECT_EQ(r.losses.size(), 3u) << name;
  expect_same_training(r, tail, name + " from 2x2x2 to " + resume_to.name());
  return ref;
}

// Rotary positions (model.position = rope): no wpe on the first stage, q and k rotated in every
// layer on each rank's local heads (and the gradient rotated back), on any grid, with full
// recomputation (which rotates again), under zero bubble's split backward (the kept c_attn
// output gradient is the rotated-back one), and in bf16; a 2×2×2 checkpoint resumes on one rank.
// The same run with learned positions differs: the rotation is not a no-op.
TEST(ModelParallel, RotaryPositionsMatchOneRankOnEveryGrid) {
  const Result ref =
      check_variant("rope", {"--model.position", "rope", "--model.rope_theta", "100"},
                    {{2, 1, 1, 1, 2, "1f1b", 1},
                     {1, 2, 1, 0, 1, "1f1b", 1},
                     {1, 4, 1, 1, 2, "1f1b", 1},
                     {1, 1, 2, 0, 4, "1f1b", 1},
                     {1, 1, 2, 1, 4, "interleaved", 2},
                     {1, 2, 1, 0, 2, "1f1b", 1, true},
                     {2, 2, 2, 1, 2, "1f1b", 1},
                     {1, 1, 4, 0, 4, "zb-h1", 1}},
                    {"full"}, false, Grid{});
  const Result learned = run(shared_dir("rope"), "learned_ref", Grid{});
  ASSERT_FALSE(ref.losses.empty());
  EXPECT_GT(std::abs(learned.losses.back() - ref.losses.back()), 1e-3);
}

// RMSNorm (model.norm = rmsnorm): no LayerNorm biases and no means kept, on every grid; under
// sequence parallelism its weight gradients alone cross the tensor-parallel group. With rotary
// positions (Llama's combination).
TEST(ModelParallel, RmsNormMatchesOneRankOnEveryGrid) {
  check_variant("rmsnorm", {"--model.norm", "rmsnorm", "--model.position", "rope"},
                {{2, 1, 1, 1, 2, "1f1b", 1},
                 {1, 2, 1, 0, 1, "1f1b", 1},
                 {1, 2, 1, 1, 2, "1f1b", 1, true},
                 {1, 1, 2, 0, 4, "1f1b", 1},
                 {1, 1, 2, 1, 4, "interleaved", 2},
                 {2, 2, 2, 1, 2, "1f1b", 1, true},
                 {1, 1, 4, 0, 4, "zb-h1", 1}},
                {"full"}, true, Grid{1, 4, 1, 0, 2, "1f1b", 1});
}

// Soft-capped logits (model.logit_softcap, near this model's logits, so that tanh bends them):
// on tensor-parallel grids each rank caps its vocabulary slice and the vocabulary-parallel
// backward applies the cap's derivative; with another attention scale (model.attn_scale, μP's
// 1/hd) through the attention ops of every grid (the context-parallel ones: the cp test's second
// variant); under μP (model.mup_base_width: the logits' multiplier in the vocabulary-parallel
// loss, the hidden matrices' learning rate in each rank's and ZeRO slice's update runs). Every
// grid against one rank, recomputing, in bf16 and resumed across grids. The options change the
// run.
TEST(ModelParallel, SoftcapScaleAndMupMatchOneRankOnEveryGrid) {
  const Result ref = check_variant("softcap",
                                   {"--model.logit_softcap", "0.5", "--model.attn_scale", "0.0625",
                                    "--model.mup_base_width", "16"},
                                   {{2, 1, 1, 1, 2, "1f1b", 1},
                                    {1, 2, 1, 0, 1, "1f1b", 1},
                                    {1, 1, 2, 0, 4, "1f1b", 1},
                                    {2, 2, 2, 1, 2, "1f1b", 1, true}},
                                   {"full"}, true, Grid{1, 2, 1, 0, 2, "1f1b", 1});
  const Result plain = run(shared_dir("softcap"), "softcap_plain", Grid{}, {"--resume", "none"});
  ASSERT_FALSE(ref.losses.empty() || plain.losses.empty());
  EXPECT_GT(std::abs(plain.losses.back() - ref.losses.back()), 1e-4);
}

// FP8 products (run.fp8 = tensorwise, here on fp32 operands) on every grid against one rank
// running micro-batches of 4 sequences as the grids do (the scales are per micro-batch). Close
// rather than equal to fp32 rounding: a last-bit difference of the grids' sums can move an operand
// across an FP8 rounding boundary (an e5m2 gradient element by 25%): measured up to 1e-5 (tp, cp),
// 1e-9 where the sums are the same (dp, pp). The FP8 run differs from the plain one by more
// (5e-5), and resumes bit for bit. (The amax of a tensor split over tp or cp ranks is their
// maximum, as one rank's; with power-of-two scales a per-shard scale would change only the
// elements 2^15 below the amax, e4m3's subnormals, which these curves cannot resolve.)
TEST(ModelParallel, Fp8MatchesOneRankOnEveryGrid) {
  const std::string dir = shared_dir("fp8");
  const std::vector<std::string> fp8 = {"--resume", "none", "--run.fp8", "tensorwise"};
  const Result ref = run(dir, "fp8_ref", Grid{1, 1, 1, 0, 4}, step3_kept(fp8));
  const Result plain = run(dir, "fp8_plain", Grid{1, 1, 1, 0, 4});
  ASSERT_EQ(ref.losses.size(), 6u);
  double moved = 0;
  for (size_t i = 0; i < ref.losses.size(); ++i)
    moved = std::max(moved, std::abs(ref.losses[i] - plain.losses[i]) / plain.losses[i]);
  EXPECT_GT(moved, 1e-5) << "the FP8 products change the run";
  const std::vector<Grid> grids = {{2, 1, 1, 0, 2},
                                   {1, 2, 1, 0, 4},
                                   {1, 2, 1, 0, 4, "1f1b", 1, true},
                                   {1, 1, 2, 0, 4},
                                   {1, 1, 4, 0, 4, "zb-h1", 1},
                                   {1, 1, 1, 0, 4, "1f1b", 1, false, 2},
                                   {2, 2, 2, 1, 2, "1f1b", 1, true}};
  for (const Grid& g : grids) {
    if (g.ranks() > world_size()) continue;
    const Result r = run(dir, "fp8_" + g.name(), g, fp8);
    double worst = 0;
    for (size_t i = 0; i < r.losses.size() && i < ref.losses.size(); ++i)
      worst = std::max(worst, std::abs(r.losses[i] - ref.losses[i]) / ref.losses[i]);
    if (world_rank() == 0)
      std::printf("fp8 %s: largest loss difference %.2e\n", g.name().c_str(), worst);
    expect_close_losses(r, ref, 2e-5, "fp8 " + g.name());
  }
  // run.fp8_head: the vocabulary-parallel head's products too (its slices' amax over tp).
  std::vector<std::string> head = fp8;
  head.insert(head.end(), {"--run.fp8_head", "true"});
  const Result head_ref = run(dir, "fp8_head_ref", Grid{1, 1, 1, 0, 4}, head);
  ASSERT_EQ(head_ref.losses.size(), 6u);
  const auto largest = [](const Result& a, const Result& b) {
    double d = 0;
    for (size_t i = 0; i < a.losses.size() && i < b.losses.size(); ++i)
      d = std::max(d, std::abs(a.losses[i] - b.losses[i]) / b.losses[i]);
    return d;
  };
  const double by_head = largest(head_ref, ref);
  EXPECT_GT(by_head, 1e-5) << "the head's FP8 products change the run";
  for (const Grid& g : {Grid{1, 2, 1, 0, 4}, Grid{1, 1, 2, 0, 4}, Grid{2, 2, 2, 1, 2, "1f1b", 1}})
    if (g.ranks() <= world_size()) {
      const Result r = run(dir, "fp8_head_" + g.name(), g, head);
      // The vocabulary-parallel sums move an operand across an FP8 boundary after the first
      // updates; at which step depends on the BLAS kernels' fp32 rounding (measured: at step 3
      // with OpenBLAS's SkylakeX kernels, 9e-7 there and 2e-5 .. 4e-5 after; at step 2 with its
      // Cooperlake ones, 2.2e-5). The first loss (no update yet) to fp32 rounding, the rest
      // within 1e-4; and the grid's run moved by the head's FP8 as the one rank's is (9e-5).
      ASSERT_EQ(r.losses.size(), head_ref.losses.size());
      for (size_t i = 0; i < r.losses.size(); ++i)
        EXPECT_NEAR(r.losses[i], head_ref.losses[i], (i < 1 ? 1e-6 : 1e-4) * head_ref.losses[i])
            << "fp8 head " << g.name() << " step " << i;
      EXPECT_GT(largest(r, ref), 1e-5) << "the head's FP8 products change " << g.name();
    }
  // Full recomputation reruns the forward's FP8 products in the backward pass: the same values.
  std::vector<std::string> recompute = fp8;
  recompute.insert(recompute.end(), {"--train.recompute", "full"});
  expect_same_training(run(dir, "fp8_recompute", Grid{1, 1, 1, 0, 4}, recompute), ref,
                       "fp8 recompute full");
  // Resumed from step 3: the same steps 4..6, bit for bit (the scales come from the tensors).
  const Result resumed =
      run(dir, "fp8_resumed", Grid{1, 1, 1, 0, 4},
          {"--run.fp8", "tensorwise", "--resume", dir + "/runs/fp8_ref/ckpt/step_00000003.h5"});
  ASSERT_EQ(resumed.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(resumed.losses[i], ref.losses[i + 3]) << "step " << i;
}

// model.bias = false: no bias tensors at all (the row-parallel layers' bias "added once" is
// absent on every rank), LayerNorms centred without a bias; the buffer and the gradient hooks'
// per-layer ranges shrink accordingly. Every grid against one rank, and a Muon run.
TEST(ModelParallel, NoBiasMatchesOneRankOnEveryGrid) {
  const std::string dir = shared_dir("nobias");
  const std::vector<std::string> nb = {"--resume", "none", "--model.bias", "false"};
  const Result ref = run(dir, "nb_ref", Grid{}, nb);
  ASSERT_EQ(ref.losses.size(), 6u);
  for (const Grid& g : std::vector<Grid>{{2, 1, 1, 1, 2, "1f1b", 1},
                                         {2, 1, 1, 0, 1, "1f1b", 1},
                                         {1, 2, 1, 0, 2, "1f1b", 1, true},
                                         {1, 1, 2, 0, 4, "zb-h1", 1},
                                         {2, 2, 2, 1, 2, "interleaved", 2}}) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(dir, "nb_" + g.name(), g, nb), ref, "no bias " + g.name());
  }
  std::vector<std::string> muon = nb;
  muon.insert(muon.end(), {"--optim.name", "muon", "--optim.muon_lr", "0.02"});
  const Result mref = run(dir, "nb_muon_ref", Grid{}, muon);
  const Grid g{2, 2, 1, 1, 2, "1f1b", 1};
  if (g.ranks() <= world_size())
    expect_same_training(run(dir, "nb_muon_" + g.name(), g, muon), mref,
                         "no bias muon " + g.name());
}

// SwiGLU (model.mlp = swiglu): c_fc's rows are two blocks (gate, up), each split over the
// tensor-parallel ranks, so every rank pairs its own gate and up units; c_proj is split by its
// input columns as before. Llama's blocks (rope, RMSNorm, no biases, SwiGLU with 80 hidden
// units) on every grid against one rank, recomputing the layer or the activation, with Muon
// (which gathers the blocked rows), in bf16, and resumed across grids.
TEST(ModelParallel, SwigluMatchesOneRankOnEveryGrid) {
  const std::vector<std::string> llama = {"--model.mlp",  "swiglu",  "--model.mlp_hidden", "80",
                                          "--model.norm", "rmsnorm", "--model.position",   "rope",
                                          "--model.bias", "false"};
  check_variant("swiglu", llama,
                {{2, 1, 1, 1, 2, "1f1b", 1},
                 {1, 2, 1, 0, 1, "1f1b", 1},
                 {1, 4, 1, 1, 2, "1f1b", 1, true},
                 {1, 1, 2, 0, 4, "zb-h1", 1},
                 {2, 2, 2, 1, 2, "interleaved", 2}},
                {"full", "gelu"}, false, Grid{1, 4, 1, 0, 2, "1f1b", 1});
  std::vector<std::string> muon = llama;
  muon.insert(muon.end(), {"--resume", "none", "--optim.name", "muon", "--optim.muon_lr", "0.02"});
  const std::string dir = shared_dir("swiglu");
  const Result mref = run(dir, "sw_muon_ref", Grid{}, muon);
  const Grid tp2{2, 2, 1, 1, 2, "1f1b", 1};
  if (tp2.ranks() <= world_size())
    expect_same_training(run(dir, "sw_muon_" + tp2.name(), tp2, muon), mref,
                         "swiglu muon " + tp2.name());
}

// The grids a variant of the blocks runs on against one rank: data parallel under ZeRO-1, tensor
// parallel, a zero-bubble pipeline, and all three with interleaved stages.
std::vector<Grid> block_variant_grids() {
  return {{2, 1, 1, 1, 2, "1f1b", 1},
          {1, 2, 1, 0, 1, "1f1b", 1},
          {1, 1, 2, 0, 4, "zb-h1", 1},
          {2, 2, 2, 1, 2, "interleaved", 2}};
}

// The squared ReLU (model.mlp = relu2): c_fc and c_proj split as GELU's, the activation a pass
// of its own over each rank's hidden units (not the product's epilogue). Every grid, recomputing
// the layer or the activation (the zero-bubble weight pass reads it), against one rank.
TEST(ModelParallel, SquaredReluMatchesOneRankOnEveryGrid) {
  check_variant(
      "relu2", {"--model.mlp", "relu2"},
      {{2, 1, 1, 1, 2, "1f1b", 1}, {1, 1, 2, 0, 4, "zb-h1", 1}, {2, 2, 2, 1, 2, "interleaved", 2}},
      {"full", "gelu"}, false, Grid{1, 1, 2, 0, 4, "zb-h1", 1});
}

// Gemma's MLP and embedding: GeGLU (model.mlp = geglu: c_fc's gate and up blocks split as
// SwiGLU's) and the embedding's output times 8 (model.embed_scale: each rank scales the rows it
// holds, and the first stage the gradient into wte). Every grid, recomputing the layer or the
// activation, bf16 and resumed across grids, against one rank.
TEST(ModelParallel, GegluAndEmbedScaleMatchOneRankOnEveryGrid) {
  check_variant("geglu",
                {"--model.mlp", "geglu", "--model.mlp_hidden", "80", "--model.embed_scale", "8",
                 "--model.norm", "rmsnorm", "--model.position", "rope", "--model.bias", "false"},
                block_variant_grids(), {"full", "gelu"}, true, Grid{1, 2, 2, 0, 2, "1f1b", 1});
}

// The grids of parallel branches: block_variant_grids, and tensor parallel ones with sequence
// parallelism (the branches' partial sums reduce-scattered as one, their output gradient
// gathered once), one of them under the zero-bubble split (whose weight pass reads that one
// gradient for both c_proj).
std::vector<Grid> parallel_branch_grids() {
  std::vector<Grid> grids = block_variant_grids();
  grids.push_back({1, 4, 1, 1, 2, "1f1b", 1, true});
  grids.push_back({1, 2, 2, 0, 4, "zb-h1", 1, true});
  return grids;
}

// Parallel attention and MLP (model.parallel_residual): ln_2 reads the layer's input, whose
// gradient takes ln_2's share after attn.c_proj's backward has read the output's; under tensor
// parallelism both branches' partial sums are reduced as one. Every grid, both recomputations,
// the zero-bubble split, bf16 and resumed across grids, against one rank.
TEST(ModelParallel, ParallelResidualMatchesOneRankOnEveryGrid) {
  check_variant("parallel", {"--model.parallel_residual", "true"}, parallel_branch_grids(),
                {"full", "gelu"}, true, Grid{1, 2, 2, 0, 2, "1f1b", 1});
}

// One norm for both parallel branches (model.shared_norm): the MLP reads ln_1's output (gathered
// once under sequence parallelism), and ln_1's backward takes the sum of both branches' input
// gradients, reduced once over the tensor-parallel group (c_attn's backward adds its partial
// sums to c_fc's). The same grids.
TEST(ModelParallel, SharedNormMatchesOneRankOnEveryGrid) {
  check_variant("sharednorm", {"--model.parallel_residual", "true", "--model.shared_norm", "true"},
                parallel_branch_grids(), {"full", "gelu"}, true, Grid{1, 2, 2, 0, 2, "1f1b", 1});
}

// Norms on the branches' outputs (model.branch_norm, Gemma 2's sandwich norms; LayerNorms with
// biases here): replicated tensors whose gradients are partial sums over the rows a
// sequence-parallel rank holds, and branch outputs each layer keeps for their backward (the MLP's
// recomputed with the layer under full recomputation); with Gemma 2's soft-capped attention
// scores (model.attn_softcap at 0.05, the scores scaled by 1 to reach it: the cap moves the
// validation loss by 4e-4 here), which each rank caps on its own heads. Every grid, ZeRO-3's
// gathered weights, both recomputations, the zero-bubble split, bf16 and resumed across grids,
// against one rank.
TEST(ModelParallel, BranchNormAndSoftCapMatchOneRankOnEveryGrid) {
  std::vector<Grid> grids = block_variant_grids();
  grids.push_back({2, 1, 1, 3, 2, "1f1b", 1});
  check_variant(
      "branchnorm",
      {"--model.branch_norm", "true", "--model.attn_scale", "1", "--model.attn_softcap", "0.05"},
      grids, {"full", "gelu"}, true, Grid{1, 2, 2, 0, 2, "1f1b", 1});
}

// Granite's multipliers: each branch's output times 0.3 before its residual add
// (model.residual_scale; its gradient scaled into a buffer of its own) and the logits times 0.5
// (model.logit_scale, on each rank's vocabulary slice), without and with branch norms (whose
// backward then reads the scaled gradient). Data, tensor and pipeline grids, both
// recomputations, the zero-bubble split, bf16 and resumed across grids, against one rank.
TEST(ModelParallel, ResidualAndLogitScalesMatchOneRankOnEveryGrid) {
  check_variant("granite", {"--model.residual_scale", "0.3", "--model.logit_scale", "0.5"},
                block_variant_grids(), {"full", "gelu"}, true, Grid{1, 2, 2, 0, 2, "1f1b", 1});
  check_variant("granitebn",
                {"--model.residual_scale", "0.3", "--model.logit_scale", "0.5",
                 "--model.branch_norm", "true"},
                {{1, 2, 1, 0, 1, "1f1b", 1}, {1, 1, 2, 0, 4, "zb-h1", 1}}, {"full"}, false,
                Grid{1, 1, 2, 0, 4, "zb-h1", 1});
}

// An untied output layer (model.tie_embeddings = false): lm_head, vocabulary-parallel, on the
// last stage only; no wte copy there and no gradient exchange between the first and the last
// stage. Every grid, recomputation, bf16 and resharding against one rank.
TEST(ModelParallel, UntiedHeadMatchesOneRankOnEveryGrid) {
  check_variant("untied", {"--model.tie_embeddings", "false"},
                {{2, 1, 1, 1, 2, "1f1b", 1},
                 {1, 4, 1, 1, 2, "1f1b", 1},
                 {1, 1, 2, 0, 4, "1f1b", 1},
                 {1, 1, 4, 1, 4, "gpipe", 1},
                 {1, 1, 2, 1, 4, "interleaved", 2},
                 {2, 1, 2, 1, 4, "zb-h1", 1},
                 {2, 2, 2, 1, 2, "1f1b", 1, true}},
                {"full"}, false, Grid{1, 1, 4, 0, 4, "1f1b", 1});
}

// A bias on the untied head's logits (model.head_bias): lm_head/bias split over the
// tensor-parallel ranks as lm_head's rows, its gradient the column sums of each rank's logits'
// gradients. Tensor, pipeline and 2×2×2 grids (sequence parallel), bf16, resumed across grids.
TEST(ModelParallel, HeadBiasMatchesOneRankOnEveryGrid) {
  check_variant("headbias", {"--model.tie_embeddings", "false", "--model.head_bias", "true"},
                {{1, 4, 1, 1, 2, "1f1b", 1}, {1, 1, 2, 0, 4, "zb-h1", 1}}, {"full"}, true,
                Grid{1, 4, 1, 0, 2, "1f1b", 1});
}

// GPT-J's blocks: parallel branches on one LayerNorm, an MLP with biases beside bias-free
// attention projections (model.mlp_bias: c_fc's bias split with its rows, mlp.c_proj's added by
// tp rank 0 alone), rope on half of each head, an untied head with a bias. Tensor, sequence
// parallel and zero-bubble grids, bf16, resumed across grids, against one rank.
TEST(ModelParallel, GptjBlocksMatchOneRankOnEveryGrid) {
  check_variant("gptj",
                {"--model.position", "rope", "--model.rotary_dim", "4", "--model.bias", "false",
                 "--model.mlp_bias", "true", "--model.norm_bias", "true",
                 "--model.parallel_residual", "true", "--model.shared_norm", "true",
                 "--model.tie_embeddings", "false", "--model.head_bias", "true"},
                {{1, 2, 1, 0, 1, "1f1b", 1},
                 {1, 4, 1, 1, 2, "1f1b", 1, true},
                 {1, 2, 2, 0, 4, "zb-h1", 1, true}},
                {"full"}, true, Grid{1, 4, 1, 0, 2, "1f1b", 1});
}

// Grouped-query attention (model.n_kv_head = 2 of 4 heads): c_attn is 4 blocks of 2 heads (two
// of query heads, then k, then v), each split over the tensor-parallel ranks, so that a rank
// holds the key/value heads of its query heads. Llama's blocks on every grid against one rank,
// with recomputation, in bf16, resumed across grids, and with Muon at tp = 2; multi-query
// attention (one key/value head, which tp cannot split) on data and pipeline grids.
TEST(ModelParallel, GroupedQueryAttentionMatchesOneRankOnEveryGrid) {
  const std::vector<std::string> llama = {
      "--model.n_kv_head", "2",    "--model.mlp",  "swiglu", "--model.norm", "rmsnorm",
      "--model.position",  "rope", "--model.bias", "false"};
  check_variant("gqa", llama,
                {{2, 1, 1, 1, 2, "1f1b", 1},
                 {1, 2, 1, 0, 1, "1f1b", 1},
                 {1, 2, 1, 1, 2, "1f1b", 1, true},
                 {1, 1, 2, 0, 4, "zb-h1", 1},
                 {2, 2, 2, 1, 2, "interleaved", 2}},
                {"full"}, false, Grid{1, 2, 1, 0, 2, "1f1b", 1});
  const std::string dir = shared_dir("gqa");
  std::vector<std::string> muon = llama;
  muon.insert(muon.end(), {"--resume", "none", "--optim.name", "muon", "--optim.muon_lr", "0.02"});
  const Result mref = run(dir, "gqa_muon_ref", Grid{}, muon);
  const Grid tp2{2, 2, 1, 1, 2, "1f1b", 1};
  if (tp2.ranks() <= world_size())
    expect_same_training(run(dir, "gqa_muon_" + tp2.name(), tp2, muon), mref,
                         "gqa muon " + tp2.name());
  const std::vector<std::string> mqa = {"--resume", "none", "--model.n_kv_head", "1"};
  const Result qref = run(dir, "mqa_ref", Grid{}, mqa);
  for (const Grid& g : std::vector<Grid>{{2, 1, 2, 1, 2, "1f1b", 1}, {1, 1, 4, 0, 4, "zb-h1", 1}})
    if (g.ranks() <= world_size())
      expect_same_training(run(dir, "mqa_" + g.name(), g, mqa), qref, "mqa " + g.name());
}

// Qwen2's blocks: c_attn's bias alone (model.qkv_bias, split over the tensor-parallel ranks with
// c_attn's rows) and an RMSNorm epsilon of 1e-6, with grouped-query attention, on the grids
// against one rank, recomputing, in bf16 and resumed across grids. The epsilon changes the run.
TEST(ModelParallel, Qwen2BlocksMatchOneRankOnEveryGrid) {
  const std::vector<std::string> opts = {
      "--model.bias",      "false", "--model.qkv_bias", "true", "--model.norm_eps", "1e-6",
      "--model.n_kv_head", "2",     "--model.position", "rope", "--model.norm",     "rmsnorm",
      "--model.mlp",       "swiglu"};
  const Result ref = check_variant("qwen2", opts,
                                   {{2, 1, 1, 1, 2, "1f1b", 1},
                                    {1, 2, 1, 0, 1, "1f1b", 1},
                                    {1, 2, 2, 0, 2, "1f1b", 1, true},
                                    {2, 2, 2, 1, 2, "interleaved", 2}},
                                   {"full"}, true, Grid{1, 2, 1, 0, 2, "1f1b", 1});
  std::vector<std::string> other = opts;
  other[5] = "1e-5";
  other.insert(other.end(), {"--resume", "none"});
  const Result plain = run(shared_dir("qwen2"), "qwen2_eps_ref", Grid{}, other);
  ASSERT_FALSE(ref.losses.empty() || plain.losses.empty());
  EXPECT_GT(std::abs(plain.losses.back() - ref.losses.back()), 1e-6);
}

// Heads wider than n_embd / n_head (model.head_dim, Qwen3's shape: q and the attention output
// n_head·head_dim wide, attn.c_proj's input columns split by those heads), with QK-norm and
// grouped-query attention, on the grids against one rank, recomputing, in bf16 and resumed.
TEST(ModelParallel, WideHeadsMatchOneRankOnEveryGrid) {
  const std::vector<std::string> opts = {
      "--model.head_dim", "24",   "--model.qk_norm", "true",    "--model.n_kv_head", "2",
      "--model.position", "rope", "--model.norm",    "rmsnorm", "--model.mlp",       "swiglu",
      "--model.bias",     "false"};
  check_variant("headdim", opts,
                {{2, 1, 1, 1, 2, "1f1b", 1},
                 {1, 2, 1, 0, 1, "1f1b", 1},
                 {1, 2, 2, 0, 2, "1f1b", 1, true},
                 {2, 2, 2, 1, 2, "interleaved", 2}},
                {"full"}, true, Grid{1, 2, 1, 0, 2, "1f1b", 1});
}

// check_variant on the grids of the QK-norm family (dp with ZeRO-1, tp, tp with sequence
// parallelism, zb-h1, 2 x 2 x 2 interleaved), recomputing the layer, in bf16 and resumed at tp 2.
Result check_norm_variant(const std::string& name, const std::vector<std::string>& opts) {
  return check_variant(name, opts,
                       {{2, 1, 1, 1, 2, "1f1b", 1},
                        {1, 2, 1, 0, 1, "1f1b", 1},
                        {1, 2, 1, 1, 2, "1f1b", 1, true},
                        {1, 1, 2, 0, 4, "zb-h1", 1},
                        {2, 2, 2, 1, 2, "interleaved", 2}},
                       {"full"}, true, Grid{1, 2, 1, 0, 2, "1f1b", 1});
}

// The one-rank run `label` of opts with opts[at] = value (another model) ends more than `differ`
// away from ref's last loss.
void expect_other_model(const std::string& name, std::vector<std::string> opts, size_t at,
                        const char* value, const std::string& label, const Result& ref,
                        double differ) {
  opts[at] = value;
  opts.insert(opts.end(), {"--resume", "none"});
  const Result other = run(shared_dir(name), label, Grid{}, opts);
  ASSERT_FALSE(ref.losses.empty() || other.losses.empty());
  EXPECT_GT(std::abs(other.losses.back() - ref.losses.back()), differ);
}

// QK-norm (model.qk_norm): q_norm and k_norm are replicated over the tensor-parallel group
// while each rank normalizes its own heads, so their gradients are all-reduced there; with
// grouped-query attention and Llama's blocks, on every grid against one rank, recomputing the
// layer (which normalizes again), in bf16, resumed across grids, and with Muon at tp = 2.
TEST(ModelParallel, QkNormMatchesOneRankOnEveryGrid) {
  const std::vector<std::string> opts = {
      "--model.qk_norm", "true",    "--model.n_kv_head", "2",     "--model.position", "rope",
      "--model.norm",    "rmsnorm", "--model.mlp",       "swiglu"};
  const Result ref = check_norm_variant("qknorm", opts);
  std::vector<std::string> muon = opts;
  muon.insert(muon.end(), {"--resume", "none", "--optim.name", "muon", "--optim.muon_lr", "0.02"});
  const std::string dir = shared_dir("qknorm");
  const Result mref = run(dir, "qk_muon_ref", Grid{}, muon);
  const Grid tp2{2, 2, 1, 1, 2, "1f1b", 1};
  if (tp2.ranks() <= world_size())
    expect_same_training(run(dir, "qk_muon_" + tp2.name(), tp2, muon), mref,
                         "qk_norm muon " + tp2.name());
  // The norms change the model: the same run without them differs.
  expect_other_model("qknorm", opts, 1, "false", "qk_off_ref", ref, 1e-4);
}

// QK-norm over all heads (model.qk_norm_full: OLMo-2's, OLMoE's): q_norm and k_norm split with
// the heads over the tensor-parallel group, each row's sums of squares (and the backward's sums)
// all-reduced there; q 96 and k 48 wide (heads of 24, grouped queries), on every grid against one
// rank (sequence parallel, zero-bubble and interleaved among them), recomputing the layer, in bf16
// and resumed across grids. Per-head norms of the same weights' shapes cannot be compared, so the
// same run with per-head norms (another model) must differ.
TEST(ModelParallel, QkNormFullMatchesOneRankOnEveryGrid) {
  const std::vector<std::string> opts = {
      "--model.qk_norm",  "true",   "--model.qk_norm_full", "true", "--model.n_kv_head", "2",
      "--model.head_dim", "24",     "--model.position",     "rope", "--model.norm",      "rmsnorm",
      "--model.mlp",      "swiglu", "--model.bias",         "false"};
  const Result ref = check_norm_variant("qknormfull", opts);
  expect_other_model("qknormfull", opts, 3, "false", "qk_per_head_ref", ref, 1e-5);
}

// gpt-oss's attention on Llama's blocks: sinks (the value at index 1), grouped queries, a window.
const std::vector<std::string> kSinksOptions = {
    "--model.attn_sinks", "true",   "--model.n_kv_head",      "2",
    "--model.position",   "rope",   "--model.norm",           "rmsnorm",
    "--model.mlp",        "swiglu", "--model.sliding_window", "5"};

// Attention sinks (model.attn_sinks: a logit per query head, split over the tensor-parallel
// group as the query heads, each rank forming its own heads' gradients) on gpt-oss's blocks
// (grouped queries, rope, RMSNorm, SwiGLU, a sliding window), on every grid against one rank
// (sequence parallel, zero-bubble and interleaved among them, and context parallel, where each
// rank adds its rows' share of the gradient), recomputing the layer, in bf16 and resumed across
// grids. The same run without them (another model, no attn/sinks) must differ.
TEST(ModelParallel, AttentionSinksMatchOneRankOnEveryGrid) {
  const std::vector<std::string>& opts = kSinksOptions;
  const Result ref = check_norm_variant("sinks", opts);
  std::vector<std::string> fresh = opts;
  fresh.insert(fresh.end(), {"--resume", "none"});
  for (const Grid& g :
       {Grid{1, 1, 1, 0, 2, "1f1b", 1, false, 2}, Grid{1, 2, 1, 0, 2, "1f1b", 1, true, 2}}) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(shared_dir("sinks"), "sinks_" + g.name(), g, fresh), ref,
                         "sinks " + g.name());
  }
  expect_other_model("sinks", opts, 1, "false", "sinks_off_ref", ref, 1e-4);
}

// gpt-oss's blocks: attention sinks, windowed layers beside global ones, a mixture of SwiGLU
// experts in its shape (model.glu_*: the gate's g·σ(1.702·g), the up projection plus 1,
// elementwise on each rank's hidden units) with biases on the router's logits and the experts'
// products (model.moe_bias: c_proj's added by tp rank 0 alone), on every grid against one rank,
// expert parallel too (each rank its experts' biases), recomputing the
// layer, in bf16 and resumed across grids (no balancing term: it is each micro-batch's, whose
// size differs by grid here). The clamps are gpt-oss's 7, which these small activations never
// reach: at 0.1, where many do, a value that lands on the other side of the clamp on a grid whose
// sums round differently takes a gradient of 0 instead of 1 or the reverse, and the runs part
// (seen: 3e-3 in a weight after 4 steps); test_reference_model's gptoss case holds the clamps to
// PyTorch's. The same run with plain SwiGLU (another model) must differ.
TEST(ModelParallel, GptOssBlocksMatchOneRankOnEveryGrid) {
  // SwiGLU's shape first (its values at indices 1, 3 and 5), then the sinks' options.
  std::vector<std::string> opts = {"--model.glu_limit",  "7", "--model.glu_alpha", "1.702",
                                   "--model.glu_offset", "1"};
  opts.insert(opts.end(), kSinksOptions.begin(), kSinksOptions.end());
  opts.insert(opts.end(),
              {"--model.full_attention_every", "2", "--model.moe_experts", "4", "--model.moe_top_k",
               "2", "--train.moe_aux_loss", "0", "--model.moe_bias", "true"});
  const Result ref = check_norm_variant("gptoss", opts);
  std::vector<std::string> ep = opts;
  ep.insert(ep.end(), {"--resume", "none", "--parallel.ep", "2"});
  for (const Grid& g : {Grid{2, 1, 1, 0, 2, "1f1b", 1}, Grid{2, 2, 1, 3, 1, "1f1b", 1}}) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(shared_dir("gptoss"), "gptoss_ep2_" + g.name(), g, ep), ref,
                         "gptoss ep 2 " + g.name());
  }
  std::vector<std::string> plain = opts;
  plain[3] = "1";  // glu_alpha
  plain[5] = "0";  // glu_offset
  expect_other_model("gptoss", plain, 1, "0", "gptoss_plain_ref", ref, 1e-4);
  // Without the biases (another model: no mlp/router/bias nor the experts') it differs too.
  expect_other_model("gptoss", opts, opts.size() - 1, "false", "gptoss_nobias_ref", ref, 1e-4);
}

// Multi-token prediction (model.mtp_depth = 2, DeepSeek-V3's modules): on the last stage, embedding
// with the tied head's wte (the first stage's copy, its gradient summed with the embedding's),
// eh_proj row-parallel over tp (its input's columns split, its output's rows reduced), on every
// grid against one rank (sequence parallel, zero bubble, whose split backward leaves the modules'
// whole, interleaved, ZeRO-1 to 3 and context parallel among them: the rows of the tokens ahead
// are the pieces' own), recomputing the layers, in bf16 and resumed across grids. With one module
// (another model) the run differs.
TEST(ModelParallel, MultiTokenPredictionMatchesOneRankOnEveryGrid) {
  const std::vector<std::string> opts = {"--model.mtp_depth", "2", "--train.mtp_loss_weight",
                                         "0.3"};
  const Result ref = check_norm_variant("mtp", opts);
  std::vector<std::string> fresh = opts;
  fresh.insert(fresh.end(), {"--resume", "none"});
  for (const Grid& g :
       {Grid{2, 1, 1, 2, 1, "1f1b", 1}, Grid{2, 2, 1, 3, 1, "1f1b", 1, true},
        Grid{1, 1, 1, 0, 1, "1f1b", 1, false, 2}, Grid{1, 2, 2, 0, 2, "1f1b", 1, true, 2}}) {
    if (g.ranks() > world_size()) continue;
    expect_same_training(run(shared_dir("mtp"), "mtp_" + g.name(), g, fresh), ref,
                         "mtp " + g.name());
  }
  expect_other_model("mtp", opts, 1, "1", "mtp_one_ref", ref, 1e-4);
}

// Multi-token prediction after layers with experts (DeepSeek-V3's: the first layer dense, the
// others' and the module's block's experts with shared experts; no balancing term, which is each
// micro-batch's and their size differs by grid here): the module's router and experts on every
// grid against one rank, expert parallel ones (its experts split with the layers', under ZeRO-3 in
// packed slices) among them.
TEST(ModelParallel, MultiTokenPredictionWithExpertsMatchesOneRank) {
  const std::vector<std::string> opts = {"--resume",
                                         "none",
                                         "--model.mtp_depth",
                                         "1",
                                         "--model.moe_experts",
                                         "4",
                                         "--model.moe_top_k",
                                         "2",
                                         "--model.moe_first_dense",
                                         "1",
                                         "--model.mlp_hidden",
                                         "16",
                                         "--model.moe_shared_hidden",
                                         "16",
                                         "--train.moe_aux_loss",
                                         "0"};
  const std::string dir = shared_dir("mtp");
  const Result ref = run(dir, "mtp_moe_ref", Grid{}, opts);
  ASSERT_EQ(ref.losses.size(), 6u);
  std::vector<std::string> ep = opts;
  ep.insert(ep.end(), {"--parallel.ep", "2"});
  for (const auto& [g, o] : std::vector<std::pair<Grid, std::vector<std::string>>>{
           {Grid{1, 2, 1, 0, 1, "1f1b", 1, true}, opts},
           {Grid{1, 1, 2, 0, 4, "zb-h1", 1}, opts},
           {Grid{2, 2, 2, 1, 2, "interleaved", 2}, opts},
           {Grid{2, 1, 1, 0, 1, "1f1b", 1}, ep},
           {Grid{4, 1, 1, 3, 1, "1f1b", 1}, ep},
           {Grid{2, 2, 1, 3, 1, "1f1b", 1}, ep}}) {
    if (g.ranks() > world_size()) continue;
    const bool by_ep = o.size() > opts.size();
    expect_same_training(run(dir, std::string("mtp_moe_") + (by_ep ? "ep2_" : "") + g.name(), g, o),
                         ref, "mtp experts " + std::string(by_ep ? "ep 2 " : "") + g.name());
  }
}

// Multi-head latent attention's options on Llama's blocks: latents of kv and q values (q 0:
// queries from the token), q·k over nope + rope values a head, v v wide. The sizes' values sit at
// indices 1, 3, 5, 7 and 9.
std::vector<std::string> mla_options(int kv, int q, int nope, int rope, int v) {
  return {"--model.kv_lora_rank",
          std::to_string(kv),
          "--model.q_lora_rank",
          std::to_string(q),
          "--model.qk_nope_head_dim",
          std::to_string(nope),
          "--model.qk_rope_head_dim",
          std::to_string(rope),
          "--model.v_head_dim",
          std::to_string(v),
          "--model.position",
          "rope",
          "--model.norm",
          "rmsnorm",
          "--model.mlp",
          "swiglu",
          "--model.bias",
          "false"};
}

// Multi-head latent attention (model.kv_lora_rank: DeepSeek-V2's MLA): the latents' projections
// and norms replicated over the tensor-parallel group (their gradients alike on every rank: the
// latents' and the shared rotated key's gradients are all-reduced there, ln_1's through them added
// on its rank 0), q_b's and kv_b's rows and c_proj's input columns split with the heads. Queries
// through their latent, heads 12 wide (q·k 8 + 4 rotated, v 8 padded), on every grid against one
// rank (sequence, pipeline, interleaved, zero-bubble and context parallel among them), recomputing
// the layer, in bf16 and resumed across grids; then queries from the token (q_b reading ln_1: its
// input gradient partial sums on every rank) with v wider than q·k. Without the latent norms'
// weights and the rotated key the model would not train alike on tensor-parallel grids.
TEST(ModelParallel, LatentAttentionMatchesOneRankOnEveryGrid) {
  std::vector<std::string> opts = mla_options(16, 12, 8, 4, 8);
  check_variant("mla", opts,
                {{2, 1, 1, 1, 2, "1f1b", 1},
                 {1, 2, 1, 0, 1, "1f1b", 1},
                 {1, 2, 1, 1, 2, "1f1b", 1, true},
                 {1, 1, 2, 0, 4, "1f1b", 1},
                 {2, 2, 2, 1, 2, "interleaved", 2},
                 {1, 1, 1, 0, 4, "1f1b", 1, false, 2},
                 {1, 2, 1, 0, 4, "1f1b", 1, true, 2},
                 {1, 2, 2, 0, 4, "zb-h1", 1, true},
                 {1, 1, 2, 0, 4, "zb-v", 2}},
                {"full"}, true, Grid{1, 2, 1, 0, 2, "1f1b", 1});
  opts[3] = "0";   // q_b from ln_1
  opts[9] = "16";  // v_head_dim: q and k padded
  check_variant("mla_noq", opts,
                {{1, 2, 1, 0, 1, "1f1b", 1},
                 {1, 2, 1, 1, 2, "1f1b", 1, true},
                 {1, 1, 1, 0, 4, "1f1b", 1, false, 2}},
                {}, true, Grid{1, 2, 1, 0, 2, "1f1b", 1});
}

// Multi-head latent attention under run.fp8 (here on fp32 operands): its four projections are
// FP8 products at c_attn's site, q_b's and kv_b's weights split over the tensor-parallel ranks
// (their amax the maximum over the pieces), q_a's and kv_a's replicated with every rank taking
// part in their amax reductions though only rank 0 forms ln_1's gradient through them. On each
// grid against one rank running micro-batches of 4 sequences as the grids do (the scales are per
// micro-batch); the FP8 run differs from the plain one (measured 1.7e-4). The first loss (no
// update yet) to fp32 rounding (measured 2e-9). After updates, a last-bit difference of the grids'
// sums can move a gradient element across an e5m2 rounding boundary (25%): measured 9e-6 where
// the sums are alike (dp, pp), checked to 2e-5 as Fp8MatchesOneRankOnEveryGrid; up to 9e-5 on
// the tensor-parallel grids (the latents' gradients summed over the heads' ranks) and 2.2e-5 on
// the context-parallel one (the latents' gradients summed over the keys' ranks; with the BLAS
// kernels of an AMD EPYC), whose narrow latents (16) make each flip count more: checked to 2e-4.
// Then queries from the token (q_b reading ln_1, its input gradient partial sums over the ranks) on
// tensor-parallel ranks. (The products' numbers are checked against PyTorch's FP8 reference in
// test_fp8.py.)
TEST(ModelParallel, LatentAttentionFp8MatchesOneRankOnEveryGrid) {
  const std::string dir = shared_dir("fp8");
  std::vector<std::string> opts = {"--resume", "none", "--run.fp8", "tensorwise"};
  for (const std::string& o : mla_options(16, 16, 16, 16, 16)) opts.push_back(o);
  for (const char* q_lora : {"16", "0"}) {
    opts[7] = q_lora;
    const std::string tag = std::string("mla_fp8_q") + q_lora;
    const Result ref = run(dir, tag + "_ref", Grid{1, 1, 1, 0, 4}, opts);
    std::vector<std::string> plain_opts = opts;
    plain_opts[3] = "off";
    const Result plain = run(dir, tag + "_plain", Grid{1, 1, 1, 0, 4}, plain_opts);
    ASSERT_EQ(ref.losses.size(), 6u);
    double moved = 0;
    for (size_t i = 0; i < ref.losses.size(); ++i)
      moved = std::max(moved, std::abs(ref.losses[i] - plain.losses[i]) / plain.losses[i]);
    EXPECT_GT(moved, 1e-5) << tag << ": the FP8 products change the run";
    std::vector<Grid> grids = {{1, 2, 1, 0, 4}, {1, 2, 1, 0, 4, "1f1b", 1, true}};
    if (q_lora[0] != '0')
      grids.insert(grids.end(),
                   {{2, 1, 1, 0, 2}, {1, 1, 2, 0, 4}, {1, 1, 1, 0, 4, "1f1b", 1, false, 2}});
    for (const Grid& g : grids) {
      if (g.ranks() > world_size()) continue;
      const Result r = run(dir, tag + "_" + g.name(), g, opts);
      double worst = 0;
      for (size_t i = 0; i < r.losses.size() && i < ref.losses.size(); ++i)
        worst = std::max(worst, std::abs(r.losses[i] - ref.losses[i]) / ref.losses[i]);
      if (world_rank() == 0)
        std::printf("%s %s: largest loss difference %.2e\n", tag.c_str(), g.name().c_str(), worst);
      ASSERT_EQ(r.losses.size(), ref.losses.size()) << tag << " " << g.name();
      const double later = g.tp > 1 || g.cp > 1 ? 2e-4 : 2e-5;
      for (size_t i = 0; i < r.losses.size(); ++i)
        EXPECT_NEAR(r.losses[i], ref.losses[i], (i < 1 ? 1e-7 : later) * ref.losses[i])
            << tag << " " << g.name() << " step " << i;
    }
  }
}

// OLMo-2's blocks: no norms before the branches (model.pre_norm = false: each reads the residual
// stream, whose gradient then gains the branch input's directly), RMSNorms on the branches'
// outputs and QK-norm over all heads, on every grid against one rank (sequence parallel,
// zero-bubble and interleaved among them), recomputing the layer, in bf16 and resumed across
// grids; the same blocks with norms before the branches too (Gemma 2's sandwich) differ.
TEST(ModelParallel, PostBranchNormsMatchOneRankOnEveryGrid) {
  const std::vector<std::string> opts = {
      "--model.pre_norm",  "false",   "--model.branch_norm",  "true",
      "--model.qk_norm",   "true",    "--model.qk_norm_full", "true",
      "--model.n_kv_head", "2",       "--model.position",     "rope",
      "--model.norm",      "rmsnorm", "--model.mlp",          "swiglu",
      "--model.bias",      "false"};
  const Result ref = check_norm_variant("olmo2", opts);
  expect_other_model("olmo2", opts, 1, "true", "olmo2_sandwich_ref", ref, 1e-5);
}

TEST(ModelParallel, CheckpointsReshardAcrossTensorAndPipelineGrids) {
  const std::string dir = shared_dir("reshard");
  const Grid big{2, 2, 2, 1, 2, "1f1b", 1};
  if (big.ranks() > world_size()) GTEST_SKIP() << "needs 8 ranks";
  const Result full = run(dir, "full", big, step3_kept({"--resume", "none"}));
  const std::string ckpt = dir + "/runs/full/ckpt/step_00000003.h5";
  Result tail = full;
  tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
  const Result same = run(dir, "same", big, {"--resume", ckpt});
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(same.losses[i], tail.losses[i]) << "same grid";
  EXPECT_EQ(same.params, full.params) << "same grid: bit-identical";
  for (const Grid& g : std::vector<Grid>{{1, 1, 1, 0, 1, "1f1b", 1},
                                         {1, 4, 1, 0, 1, "1f1b", 1},
                                         {1, 1, 4, 0, 4, "1f1b", 1},
                                         {2, 1, 2, 1, 2, "gpipe", 1}}) {
    const Result r = run(dir, "from222_" + g.name(), g, {"--resume", ckpt});
    ASSERT_EQ(r.losses.size(), 3u) << g.name();  // steps 3, 4, 5
    expect_same_training(r, tail, "from 2x2x2 to " + g.name());
  }
  // And back: saved on one rank, resumed on 2×2×2, 1×4×1 and 1×1×4.
  const Result one = run(dir, "one", Grid{}, step3_kept({"--resume", "none"}));
  Result one_tail = one;
  one_tail.losses.erase(one_tail.losses.begin(), one_tail.losses.begin() + 3);
  const std::string one_ckpt = dir + "/runs/one/ckpt/step_00000003.h5";
  for (const Grid& g :
       std::vector<Grid>{big, {1, 4, 1, 0, 1, "1f1b", 1}, {1, 1, 4, 0, 4, "1f1b", 1}})
    expect_same_training(run(dir, "back_" + g.name(), g, {"--resume", one_ckpt}), one_tail,
                         "from 1x1x1 to " + g.name());
}

// bf16 mixed precision (run.precision = bf16) on the CPU backend, whose bf16 ops are the
// contract the CUDA kernels are tested against. Its losses follow the fp32 run to bf16
// precision (measured ~2e-5 relative on this model; 1e-3 allowed); every grid follows the
// one-rank bf16 run within 5e-4 (measured ~2e-5; tensor-parallel partial sums are added
// in fp32 and rounded once, so grids differ from one rank by bf16 roundings, not more); a bf16
// run resumes bit-exactly; bf16 and fp32 runs load each other's checkpoints (fp32 master
// weights).
void expect_close_losses(const Result& a, const Result& b, double rel, const std::string& what) {
  ASSERT_EQ(a.losses.size(), b.losses.size()) << what;
  for (size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_NEAR(a.losses[i], b.losses[i], rel * std::abs(b.losses[i])) << what << " step " << i;
  EXPECT_NEAR(a.val_loss, b.val_loss, rel * std::abs(b.val_loss)) << what << " val";
}

TEST(ModelParallel, Bf16FollowsFp32OnEveryGrid) {
  const std::string dir = shared_dir("bf16");
  const std::vector<std::string> bf16 = {"--run.precision", "bf16", "--resume", "none"};
  const Result fp32 = run(dir, "fp32", Grid{});
  const Result one = run(dir, "bf16", Grid{}, bf16);
  expect_close_losses(one, fp32, 1e-3, "bf16 vs fp32");
  // Not the same numbers: bf16 rounding is visible in the losses.
  double largest = 0;
  for (size_t i = 0; i < one.losses.size(); ++i)
    largest = std::max(largest, std::abs(one.losses[i] - fp32.losses[i]));
  EXPECT_GT(largest, 1e-6) << "the bf16 run computed in fp32";
  for (const Grid& g : std::vector<Grid>{{2, 1, 1, 1, 2, "1f1b", 1},
                                         {1, 2, 1, 0, 1, "1f1b", 1},
                                         {1, 1, 2, 0, 4, "1f1b", 1},
                                         {1, 2, 1, 0, 2, "1f1b", 1, true},
                                         {2, 2, 2, 1, 2, "interleaved", 2},
                                         {1, 2, 2, 0, 2, "gpipe", 1, true}}) {
    if (g.ranks() > world_size()) continue;
    expect_close_losses(run(dir, "bf16_" + g.name(), g, bf16), one, 5e-4, "bf16 " + g.name());
  }
}

// Muon in bf16: its step writes the bf16 copy of the matrices the layers read (and ZeRO-1
// gathers that copy), so the bf16 run follows the fp32 one on every grid.
TEST(ModelParallel, MuonInBf16FollowsFp32) {
  const std::string dir = shared_dir("bf16");
  const std::vector<std::string> muon = {"--optim.name", "muon",     "--optim.muon_lr",
                                         "0.02",         "--resume", "none"};
  std::vector<std::string> bf16 = muon;
  bf16.insert(bf16.end(), {"--run.precision", "bf16"});
  const Result fp32 = run(dir, "muon_fp32", Grid{}, muon);
  const Result one = run(dir, "muon_bf16", Grid{}, bf16);
  expect_close_losses(one, fp32, 1e-3, "muon bf16 vs fp32");
  for (const Grid& g : std::vector<Grid>{{2, 1, 1, 1, 2, "1f1b", 1},
                                         {1, 2, 1, 0, 1, "1f1b", 1},
                                         {2, 2, 2, 1, 2, "interleaved", 2}}) {
    if (g.ranks() > world_size()) continue;
    expect_close_losses(run(dir, "muon_bf16_" + g.name(), g, bf16), one, 5e-4,
                        "muon bf16 " + g.name());
  }
}

TEST(ModelParallel, Bf16ResumesExactlyAndSharesCheckpointsWithFp32) {
  const std::string dir = shared_dir("bf16ckpt");
  const Grid g{1, 2, 2, 0, 2, "1f1b", 1};
  if (g.ranks() > world_size()) GTEST_SKIP() << "needs 4 ranks";
  const Result full =
      run(dir, "full", g, step3_kept({"--run.precision", "bf16", "--resume", "none"}));
  const std::string ckpt = dir + "/runs/full/ckpt/step_00000003.h5";
  const Result resumed = run(dir, "resumed", g, {"--run.precision", "bf16", "--resume", ckpt});
  ASSERT_EQ(resumed.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(resumed.losses[i], full.losses[3 + i]) << i;
  EXPECT_EQ(resumed.params, full.params) << "bf16 resume: bit-identical master weights";
  // The fp32 model continues from the bf16 run's master weights (and one rank from four).
  const Result fp32 = run(dir, "fp32", Grid{}, {"--run.precision", "fp32", "--resume", ckpt});
  Result tail = full;
  tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
  expect_close_losses(fp32, tail, 1e-2, "fp32 resumed from a bf16 checkpoint");
}

// The first and the last stage hold copies of the tied wte. With more than two data-parallel
// replicas a reduction may round the copies' gradients differently (CTest forces Open MPI's
// ring all-reduce for this suite, which does); the copies must still stay identical, or a
// resume (which loads both from the first stage's values) would not continue bit-exactly.
TEST(ModelParallel, TiedEmbeddingCopiesStayIdenticalWithFourReplicas) {
  const Grid g{4, 1, 2, 0, 1, "1f1b", 1};
  if (g.ranks() > world_size()) GTEST_SKIP() << "needs 8 ranks";
  expect_resumes_exactly(shared_dir("tied"), "full", g);
}

// One step's traffic of the tensor- and pipeline-parallel groups, as docs/parallelism.md
// states it (evaluation off, so the counts are the training steps' alone).
TEST(ModelParallel, CommunicationVolumeMatchesTheFormulas) {
  if (world_size() < 4) GTEST_SKIP() << "needs 4 ranks";
  const std::string dir = shared_dir("traffic");
  const int steps = 6;
  const uint64_t N = kSeq * 4, C = kEmbd;  // tokens of a micro-batch of 4 sequences
  {
    const Grid g{1, 2, 1, 0, 4, "1f1b", 1};  // micro-batches of 4
    const Result r = run(dir, "tp_traffic", g, {"--resume", "none", "--eval.sequences", "0"});
    if (world_rank() == 0) {
      const CommStats& t = r.out.tp_traffic;
      const uint64_t mbs = uint64_t(steps) * 4;
      // Per micro-batch: embedding 1, each layer 2 forward + 2 backward, the head's input
      // gradient 1 (all N·C floats), and the cross-entropy's row max, argmax and sums (4N).
      EXPECT_EQ(t.calls[CommStats::kAllReduce], mbs * (2 + 4 * kLayers + 3));
      EXPECT_EQ(t.bytes[CommStats::kAllReduce], mbs * 4 * ((2 + 4 * kLayers) * N * C + 4 * N));
      EXPECT_EQ(t.bytes[CommStats::kSend] + t.bytes[CommStats::kRecv], 0u);
    }
  }
  {
    // Sequence parallelism: per layer and micro-batch 2 all-gathers and 2 reduce-scatters in
    // forward and in backward, plus one all-reduce of a LayerNorm's weight and bias gradients
    // (2C floats) per LayerNorm backward; the embedding reduce-scatters, the head gathers.
    const Grid g{1, 2, 1, 0, 4, "1f1b", 1, true};
    const Result r = run(dir, "sp_traffic", g, {"--resume", "none", "--eval.sequences", "0"});
    if (world_rank() == 0) {
      const CommStats& t = r.out.tp_traffic;
      const uint64_t mbs = uint64_t(steps) * 4, lns = 2 * kLayers + 1;
      // reduce-scatter: payload = the whole N·C input; all-gather: this rank's N/2·C block.
      EXPECT_EQ(t.calls[CommStats::kReduceScatter], mbs * (1 + 4 * kLayers + 1));
      EXPECT_EQ(t.bytes[CommStats::kReduceScatter], mbs * (2 + 4 * kLayers) * N * C * 4);
      // Gathers: ln_1, ln_2 per layer and ln_f forward; the residual gradient twice per layer
      // and once for the embedding backward.
      EXPECT_EQ(t.calls[CommStats::kAllGather], mbs * (4 * kLayers + 2));
      EXPECT_EQ(t.bytes[CommStats::kAllGather], mbs * (4 * kLayers + 2) * N / 2 * C * 4);
      EXPECT_EQ(t.calls[CommStats::kAllReduce], mbs * (lns + 3));
      EXPECT_EQ(t.bytes[CommStats::kAllReduce], mbs * 4 * (lns * 2 * C + 4 * N));
    }
  }
  {
    const Grid g{1, 1, 4, 0, 4, "1f1b", 1};
    const Result r = run(dir, "pp_traffic", g, {"--resume", "none", "--eval.sequences", "0"});
    if (world_rank() == 0) {  // the first stage: sends activations, receives gradients
      const CommStats& t = r.out.pp_traffic;
      const uint64_t act = N * C * 4, m = 4, wte = uint64_t(384) * C * 4;
      // + the tied wte gradient both ways, + the updated wte to the last stage.
      EXPECT_EQ(t.bytes[CommStats::kSend], steps * (m * act + 2 * wte));
      EXPECT_EQ(t.bytes[CommStats::kRecv], steps * (m * act + wte));
      EXPECT_EQ(t.calls[CommStats::kSend], uint64_t(steps) * (m + 2));
      EXPECT_EQ(t.bytes[CommStats::kAllReduce], 0u);
    }
  }
  {
    // dp = 2 × pp = 2 without ZeRO: each stage all-reduces its gradient bucket by bucket, less
    // the frozen tensors' extents (train.freeze: the embeddings and layer 0, the
    // first stage's wte [384, C], wpe [kSeq, C] and the first of its two layers).
    const Grid g{2, 1, 2, 0, 4, "1f1b", 1};
    const Result all = run(dir, "dppp_traffic", g, {"--resume", "none", "--eval.sequences", "0"});
    const Result r = run(dir, "dppp_frozen_traffic", g,
                         {"--resume", "none", "--eval.sequences", "0", "--train.freeze",
                          "wte/weight, wpe/weight, h/0/*"});
    if (world_rank() == 0) {  // the first stage
      const uint64_t floats = r.out.param_floats, embeddings = (384 + kSeq) * C;
      const uint64_t layer = (floats - embeddings) / 2;
      EXPECT_EQ(all.out.dp_traffic.bytes[CommStats::kAllReduce], steps * floats * 4);
      // One all-reduce per bucket as the last backward pass finishes it: layer 1, layer 0, and
      // after the tied sum the embeddings.
      EXPECT_EQ(all.out.dp_traffic.calls[CommStats::kAllReduce], uint64_t(steps) * 3);
      EXPECT_EQ(r.out.dp_traffic.bytes[CommStats::kAllReduce],
                steps * (floats - embeddings - layer) * 4);
      EXPECT_EQ(r.out.dp_traffic.calls[CommStats::kAllReduce], uint64_t(steps));
    }
  }
}

// Parallel branches (model.parallel_residual) under tensor parallelism are reduced as one: per
// layer one reduction forward (the sum of both c_proj's partial sums), and backward one gather of
// their common output gradient (sequence parallel) and, with one norm (model.shared_norm), one
// reduction of both input gradients; with two norms each is reduced (ln_2's and ln_1's).
TEST(ModelParallel, ParallelBranchesAreReducedAsOne) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const std::string dir = shared_dir("traffic");
  const uint64_t mbs = 6 * 4, N = kSeq * 4, C = kEmbd, L = kLayers;
  for (const bool shared : {false, true}) {
    const std::string tag = shared ? "shared" : "two";
    const std::vector<std::string> opts = {"--resume",
                                           "none",
                                           "--eval.sequences",
                                           "0",
                                           "--model.parallel_residual",
                                           "true",
                                           "--model.shared_norm",
                                           shared ? "true" : "false"};
    // The norms per layer: as many gathers of their outputs forward (sequence parallel) and
    // reductions of their input gradients backward.
    const uint64_t norms = shared ? 1 : 2;
    {
      const Result r = run(dir, "par_tp_" + tag, Grid{1, 2, 1, 0, 4, "1f1b", 1}, opts);
      if (world_rank() == 0) {
        const CommStats& t = r.out.tp_traffic;
        // Embedding 1, each layer 1 forward + `norms` backward, the head's input gradient 1 (all
        // N·C floats), and the cross-entropy's row statistics (3 calls, 4N floats).
        EXPECT_EQ(t.calls[CommStats::kAllReduce], mbs * (2 + (1 + norms) * L + 3)) << tag;
        EXPECT_EQ(t.bytes[CommStats::kAllReduce], mbs * 4 * ((2 + (1 + norms) * L) * N * C + 4 * N))
            << tag;
      }
    }
    {
      const Result r = run(dir, "par_sp_" + tag, Grid{1, 2, 1, 0, 4, "1f1b", 1, true}, opts);
      if (world_rank() == 0) {
        const CommStats& t = r.out.tp_traffic;
        EXPECT_EQ(t.calls[CommStats::kReduceScatter], mbs * (1 + (1 + norms) * L + 1)) << tag;
        EXPECT_EQ(t.bytes[CommStats::kReduceScatter], mbs * (2 + (1 + norms) * L) * N * C * 4)
            << tag;
        // Gathers: forward the norms' outputs and ln_f's; backward the layer output's gradient
        // once per layer and the embedding's once.
        const uint64_t gathers = mbs * ((norms + 1) * L + 2);
        EXPECT_EQ(t.calls[CommStats::kAllGather], gathers) << tag;
        EXPECT_EQ(t.bytes[CommStats::kAllGather], gathers * N / 2 * C * 4) << tag;
        // LayerNorm weight and bias gradients: each norm's, and ln_f's; the cross-entropy's.
        const uint64_t lns = norms * L + 1;
        EXPECT_EQ(t.calls[CommStats::kAllReduce], mbs * (lns + 3)) << tag;
        EXPECT_EQ(t.bytes[CommStats::kAllReduce], mbs * 4 * (lns * 2 * C + 4 * N)) << tag;
      }
    }
  }
}

// Parameters per rank shrink as 1/(tp·pp) for the transformer layers and 1/tp for the tied
// embedding (held by the first and the last stage); ZeRO-1 divides the optimizer state by dp.
TEST(ModelParallel, PerRankMemoryShrinksWithTheGrid) {
  const std::string dir = shared_dir("memory");
  const Result one = run(dir, "mem_one", Grid{}, {"--resume", "none", "--train.steps", "1"});
  const double whole = double(one.out.param_floats);
  for (const Grid& g : std::vector<Grid>{
           {2, 2, 2, 1, 2, "1f1b", 1}, {1, 4, 1, 0, 1, "1f1b", 1}, {2, 1, 4, 1, 2, "1f1b", 1}}) {
    if (g.ranks() > world_size()) continue;
    const Result r = run(dir, "mem_" + g.name(), g, {"--resume", "none", "--train.steps", "1"});
    if (world_rank() != 0) continue;
    const double part = double(r.out.param_floats);
    // Rank 0 is the first stage: its layers plus wte/tp plus replicated vectors.
    const double layers = whole - 384.0 * kEmbd - double(kSeq) * kEmbd;  // without wte, wpe
    const double vp = g.tp == 1 ? 384.0 : 512.0;                         // padded vocabulary
    const double expect = layers / (g.tp * g.pp) + vp * kEmbd / g.tp + kSeq * kEmbd;
    EXPECT_LT(part, expect * 1.10) << g.name() << ": " << part << " of " << whole;
    EXPECT_GT(part, expect * 0.90) << g.name();
    const size_t slots = 2;  // AdamW m, v
    EXPECT_EQ(r.out.optimizer_floats, slots * r.out.buffer_floats / size_t(g.zero ? g.dp : 1))
        << g.name();
  }
}

// triad-train --plan's numbers are what each rank's backend holds after a run: weights, bf16
// copy, gradients, ZeRO slice, optimizer state, activations (sets per schedule), token ids and
// the tied head's buffer, for every stage of each grid; and its data-parallel payload is what the
// step's reduction handed to the communicator.
TEST(ModelParallel, MemoryPlanEqualsWhatEachRankAllocates) {
  const std::string dir = shared_dir("plan");
  const std::vector<std::pair<Grid, std::string>> grids = {
      {{1, 1, 1, 0, 1, "1f1b", 1}, "fp32"},
      {{1, 1, 1, 0, 2, "1f1b", 1}, "bf16"},
      {{2, 1, 1, 1, 2, "1f1b", 1}, "bf16"},
      {{1, 2, 1, 0, 1, "1f1b", 1, true}, "bf16"},
      {{1, 1, 4, 0, 4, "gpipe", 1}, "fp32"},
      {{1, 1, 2, 1, 4, "interleaved", 2}, "bf16"},
      {{2, 2, 2, 1, 2, "1f1b", 1, true}, "bf16"},
      {{1, 2, 2, 0, 2, "interleaved", 2}, "fp32"},
      {{1, 1, 4, 1, 4, "1f1b", 1}, "bf16"},
      {{2, 2, 1, 0, 1, "1f1b", 1}, "bf16"},
      {{2, 1, 2, 0, 2, "gpipe", 1}, "fp32"},
      {{1, 2, 2, 0, 4, "zb-h1", 1, true}, "bf16"},
      {{1, 1, 4, 0, 4, "zb-h1", 1}, "fp32"},
      {{1, 1, 1, 0, 1, "1f1b", 1}, "muon"},
      {{2, 2, 1, 1, 1, "1f1b", 1}, "muon"},
      {{1, 2, 2, 0, 2, "1f1b", 1}, "muon"},
      {{2, 1, 2, 0, 2, "1f1b", 1}, "muon"},
      {{4, 1, 1, 1, 1, "1f1b", 1}, "muon"},
      {{1, 1, 1, 1, 1, "1f1b", 1}, "muon"},
      {{2, 1, 1, 2, 2, "1f1b", 1}, "muon"},
      {{2, 2, 1, 3, 1, "1f1b", 1}, "muon"},
      {{1, 2, 2, 0, 2, "1f1b", 1, true}, "rope"},
      {{2, 1, 2, 1, 2, "1f1b", 1}, "rmsnorm"},
      {{1, 2, 1, 0, 1, "1f1b", 1}, "swiglu"},
      {{1, 2, 2, 1, 2, "1f1b", 1}, "untied"},
      // Context parallelism: the whole-sequence q|k|v, its gradient and the packed keys and
      // values, and the pieces' probabilities (fp32).
      {{1, 1, 1, 0, 1, "1f1b", 1, false, 2}, "fp32"},
      {{2, 1, 1, 1, 2, "1f1b", 1, false, 2}, "bf16"},
      {{1, 2, 1, 0, 2, "1f1b", 1, true, 4}, "bf16"},
      {{1, 1, 2, 0, 4, "zb-h1", 1, false, 2}, "rope"},
      // ZeRO-2: the gradient buckets instead of the whole buffer, each micro-batch reduced.
      {{2, 1, 1, 2, 2, "1f1b", 1}, "bf16"},
      {{2, 2, 1, 2, 1, "1f1b", 1, true}, "fp32"},
      {{1, 1, 1, 2, 2, "1f1b", 1, false, 2}, "bf16"},
      {{2, 1, 1, 2, 2, "1f1b", 1}, "untied"},
      // ZeRO-3: the slices' weights and the buffers the layers' are gathered into.
      {{2, 1, 1, 3, 2, "1f1b", 1}, "bf16"},
      {{2, 2, 1, 3, 1, "1f1b", 1, true}, "fp32"},
      {{1, 1, 1, 3, 2, "1f1b", 1, false, 2}, "rope"},
      {{4, 1, 1, 3, 1, "1f1b", 1}, "untied"},
      // A batch-size ramp: the interleaved schedule of its first batch (2 micro-batches) keeps
      // more of chunk 1 in flight on stage 1 than the full batch's (8), fp32.
      {{1, 1, 2, 1, 8, "interleaved", 2}, "rampup"},
      // A mixture of experts (4 of 16 units, top 2; shared experts with their gate), bf16: the
      // zero-bubble sets' kept gradients of its layers; and fp32 under Muon (each expert's
      // matrix its own Newton–Schulz, gathered from the ZeRO slices), also with ep 2, whose
      // plan counts the experts' replicas (edp) in the data-parallel numbers: allocations only.
      {{1, 1, 2, 0, 4, "zb-h1", 1}, "moe"},
      {{1, 2, 2, 0, 2, "zb-h1", 1, true}, "moe"},
      {{1, 2, 1, 0, 1, "1f1b", 1}, "moemuon"},
      {{2, 1, 1, 1, 1, "1f1b", 1}, "moemuon"},
      {{2, 1, 1, 0, 1, "1f1b", 1}, "moemuonep"},
      {{2, 1, 1, 1, 1, "1f1b", 1}, "moemuonep"},
      // ZeRO-3 with ep 2: the experts' packed slices over their replicas (1 of 1, 1 of 2), bf16
      // ("moeep": AdamW, their bf16 copy) and fp32 under Muon.
      {{2, 1, 1, 3, 1, "1f1b", 1}, "moemuonep"},
      {{4, 1, 1, 3, 1, "1f1b", 1}, "moeep"}};
  for (const auto& [g, variant] : grids) {
    if (g.ranks() > world_size()) continue;
    const std::string name = "plan_" + g.name() + "_" + variant;
    // "muon": the Muon optimizer (its Newton–Schulz scratch, its ZeRO gather) in bf16; "rope":
    // rotary positions (no wpe, the angle table) in bf16; "rmsnorm": no biases, no means, fp32.
    const bool moe = variant.starts_with("moe"), ep = variant.ends_with("ep");
    const bool muon = variant == "muon" || variant.starts_with("moemuon");
    const bool rope = variant == "rope", rmsnorm = variant == "rmsnorm";
    const bool swiglu = variant == "swiglu";  // its wider c_fc outputs, bf16
    const bool untied = variant == "untied";  // lm_head, no tied-gradient scratch, fp32
    const bool rampup = variant == "rampup";
    const std::string precision =
        variant == "muon" || rope || swiglu || variant == "moe" || variant == "moeep" ? "bf16"
        : rmsnorm || untied || rampup || moe                                          ? "fp32"
                                                                                      : variant;
    const auto args = grid_args(
        dir, name, g,
        {"--resume", "none", "--train.steps", "1", "--run.precision", precision, "--optim.name",
         muon ? "muon" : "adamw", "--model.position", rope ? "rope" : "learned", "--model.norm",
         rmsnorm ? "rmsnorm" : "layernorm", "--model.mlp", swiglu ? "swiglu" : "gelu",
         "--model.tie_embeddings", untied ? "false" : "true", "--train.batch_rampup",
         rampup ? "4, 4, 24" : "",
         // Context parallel: no evaluation, whose forward passes gather keys too; nor
         // under ZeRO-3, whose gathers of the weights it would count.
         "--eval.sequences", g.cp > 1 || g.zero == 3 ? "0" : "20", "--model.moe_experts",
         moe ? "4" : "0", "--model.moe_top_k", "2", "--model.mlp_hidden", moe ? "16" : "0",
         "--model.moe_shared_hidden", moe ? "16" : "0", "--model.moe_shared_gate",
         moe ? "true" : "false", "--parallel.ep", ep ? "2" : "1"});
    std::vector<const char*> argv;
    for (const auto& a : args) argv.push_back(a.c_str());
    const RunPlan plan =
        plan_run(parse_train_command_line(int(argv.size()), argv.data()).config, g.ranks());
    ASSERT_EQ(plan.stages.size(), size_t(g.pp)) << name;
    const Result r = run_trainer(g.ranks(), args);
    // ZeRO-3's gathers: each rank hands in its part of every layer, which differs by rank; the
    // plan states the mean, and the world's sum is exact. So for Muon's gathers of its matrices
    // under ZeRO (the grids here with pp = 1, every stage's plan the same).
    // Expert parallelism: the experts' pieces over their replicas (edp), which the plan's
    // payloads count with the data-parallel ones.
    uint64_t gathered = r.out.dp_traffic.bytes[CommStats::kAllGather] +
                        (ep ? r.out.edp_traffic.bytes[CommStats::kAllGather] : 0);
    MPI_Allreduce(MPI_IN_PLACE, &gathered, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    // Muon under ZeRO: each rank sends its pieces of a round's matrices to the ranks that take
    // them, which differ by rank too.
    uint64_t sent = r.out.dp_traffic.bytes[CommStats::kAllToAll];
    MPI_Allreduce(MPI_IN_PLACE, &sent, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (world_rank() >= g.ranks()) continue;
    const int stage = (world_rank() / (g.tp * g.cp)) % g.pp;
    const StageMemory& m = plan.stages[size_t(stage)];
    EXPECT_EQ(r.out.allocated_bytes, m.total()) << name << " rank " << world_rank();
    EXPECT_EQ(r.out.buffer_floats, m.model.buffer_floats) << name;
    EXPECT_EQ(r.out.optimizer_floats * sizeof(float), m.optimizer) << name;
    if (ep && (g.zero != 3 || muon)) continue;  // (Muon's expert rounds: allocations only)
    // One step's data-parallel reduction (the evaluations move scalars only).
    const CommStats& dp = r.out.dp_traffic;
    EXPECT_EQ(dp.bytes[CommStats::kAllReduce], m.dp_all_reduce) << name;
    EXPECT_EQ(dp.bytes[CommStats::kReduceScatter] +
                  (ep ? r.out.edp_traffic.bytes[CommStats::kReduceScatter] : 0),
              m.dp_reduce_scatter)
        << name;
    if (g.zero == 3) {  // the gathers' pieces differ by rank
      // Each rank's mean rounded down: of both groups' under expert parallelism.
      EXPECT_NEAR(double(gathered), double(m.dp_all_gather * size_t(g.ranks())),
                  double((ep ? 2 : 1) * g.ranks()))
          << name;
      EXPECT_GT(gathered, 0u) << name;
    } else {
      EXPECT_EQ(dp.bytes[CommStats::kAllGather], m.dp_all_gather) << name;
    }
    EXPECT_NEAR(double(sent), double(m.dp_all_to_all * size_t(g.ranks())), double(g.ranks()))
        << name;
    if (muon && g.zero >= 1 && g.dp * g.cp > 1) {
      EXPECT_GT(sent, 0u) << name;
    }
    // And the context-parallel group's: the layers' key and value gathers and reduce-scatters.
    const CommStats& cp = r.out.cp_traffic;
    EXPECT_EQ(cp.bytes[CommStats::kAllGather], m.cp_all_gather) << name;
    EXPECT_EQ(cp.bytes[CommStats::kReduceScatter], m.cp_reduce_scatter) << name;
    if (g.cp > 1) {
      EXPECT_GT(m.cp_all_gather, 0u) << name;
    }
  }
}

// Activation recomputation on the grids: the recomputed forward runs the layer's tensor-parallel
// reductions (or sequence-parallel gathers and reduce-scatters) again, on every rank of the
// group in the same order, and the pipeline keeps only layer outputs for the micro-batches in
// flight. Each mode gives bit for bit the losses, weights and validation loss of the same grid
// keeping everything, and each rank allocates what --plan says.
TEST(ModelParallel, RecomputationChangesMemoryNotResults) {
  const std::string dir = shared_dir("recompute");
  // grid, precision, mode, train.recompute_layers (0: every layer of a chunk), model.n_layer
  // (8: two layers per interleaved chunk share its scratch)
  const std::vector<std::tuple<Grid, std::string, std::string, int, int>> cases = {
      {{1, 2, 1, 0, 2, "1f1b", 1, true}, "fp32", "full", 0, kLayers},
      {{1, 1, 2, 0, 4, "1f1b", 1}, "bf16", "full", 0, kLayers},
      {{1, 1, 2, 1, 4, "gpipe", 1}, "fp32", "full", 1, kLayers},
      {{1, 2, 2, 1, 2, "interleaved", 2, true}, "bf16", "full", 0, kLayers},
      {{1, 2, 2, 0, 2, "interleaved", 2, true}, "fp32", "full", 1, 8},
      {{1, 1, 2, 0, 4, "interleaved", 2}, "bf16", "gelu", 0, 8},
      {{2, 2, 2, 1, 2, "1f1b", 1}, "fp32", "gelu", 0, kLayers},
      {{2, 2, 2, 0, 4, "gpipe", 1, true}, "bf16", "full", 0, kLayers}};
  for (const auto& [g, precision, mode, layers, n_layer] : cases) {
    if (g.ranks() > world_size()) continue;
    auto args_for = [&](const std::string& recompute, int n) {
      return grid_args(dir,
                       "rc_" + g.name() + "_" + precision + "_" + recompute + std::to_string(n) +
                           "_l" + std::to_string(n_layer),
                       g,
                       {"--resume", "none", "--run.precision", precision, "--train.recompute",
                        recompute, "--train.recompute_layers", std::to_string(n), "--model.n_layer",
                        std::to_string(n_layer)});
    };
    const Result keep = run_trainer(g.ranks(), args_for("none", 0));
    const auto args = args_for(mode, layers);
    const Result r = run_trainer(g.ranks(), args);
    const std::string what = g.name() + " " + precision + " recompute " + mode + " layers " +
                             std::to_string(layers) + " of " + std::to_string(n_layer);
    EXPECT_EQ(r.losses, keep.losses) << what;
    EXPECT_EQ(r.val_loss, keep.val_loss) << what;
    ASSERT_EQ(r.params.size(), keep.params.size()) << what;
    EXPECT_EQ(std::memcmp(r.params.data(), keep.params.data(), r.params.size() * sizeof(float)), 0)
        << what << ": weights differ";
    if (world_rank() >= g.ranks()) continue;
    EXPECT_EQ(r.out.allocated_bytes, planned_bytes(args, g)) << what << " rank " << world_rank();
    EXPECT_LT(r.out.allocated_bytes, keep.out.allocated_bytes) << what;
  }
}

// The zero-bubble schedule splits each backward into the input-gradient pass and the weight pass
// and runs them at different times, but the products are the same calls on the same values, and
// each weight gradient still sums the micro-batches in order: on the CPU backend it trains bit for
// bit as 1F1B (with virtual stages: as interleaved) — losses, weights, validation — under tensor
// and sequence parallelism, ZeRO-1, bf16, GELU recomputation (redone in the weight pass), chunked
// logits and uneven stages. It holds more activation sets and the layers' output gradients,
// exactly what --plan says, and resumes exactly.
TEST(ModelParallel, ZeroBubbleTrainsBitForBitAsOneFOneB) {
  const std::string dir = shared_dir("zero_bubble");
  // grid (schedule set below), precision, extra options
  const std::vector<std::tuple<Grid, std::string, std::vector<std::string>>> cases = {
      {{1, 1, 2, 0, 4, "", 1}, "fp32", {}},
      {{1, 1, 4, 0, 8, "", 1}, "bf16", {}},
      {{1, 2, 2, 0, 4, "", 1, true}, "bf16", {"--train.recompute", "gelu"}},
      {{1, 2, 2, 1, 2, "", 1}, "fp32", {"--train.logits_chunk", "24"}},
      {{2, 2, 2, 1, 2, "", 1, true}, "bf16", {}},
      {{1, 1, 4, 0, 4, "", 1}, "fp32", {"--parallel.stage_layers", "2,1,1,0"}},
      {{1, 1, 4, 0, 4, "", 1}, "bf16", {"--parallel.stage_layers", "0,2,1,1"}},
      {{1, 1, 2, 0, 1, "", 1}, "fp32", {}},  // one micro-batch: B and W back to back
      {{2, 1, 4, 1, 2, "", 1}, "bf16", {"--train.recompute", "gelu"}},
      // Virtual stages: the interleaved order split, against interleaved.
      {{1, 1, 2, 0, 4, "", 2}, "fp32", {}},
      {{1, 2, 2, 1, 2, "", 2, true}, "bf16", {"--train.logits_chunk", "24"}},
      {{2, 2, 2, 0, 2, "", 2}, "bf16", {"--train.recompute", "gelu"}},
      // Multi-head latent attention: its four products' output gradients kept for the weight
      // pass (queries through their latent, tp with sequence parallelism, bf16), and from the
      // token with FP8 products (the weight pass's own amax), virtual stages, fp32.
      {{1, 2, 2, 0, 4, "", 1, true},
       "bf16",
       {"--model.kv_lora_rank", "16", "--model.q_lora_rank", "12", "--model.qk_nope_head_dim", "8",
        "--model.qk_rope_head_dim", "4", "--model.v_head_dim", "8", "--model.position", "rope"}},
      {{1, 1, 2, 0, 4, "", 2},
       "fp32",
       {"--model.kv_lora_rank", "16", "--model.qk_nope_head_dim", "16", "--model.qk_rope_head_dim",
        "16", "--model.v_head_dim", "16", "--model.position", "rope", "--run.fp8", "tensorwise"}}};
  for (const auto& [grid, precision, extra] : cases) {
    if (grid.ranks() > world_size()) continue;
    auto args_for = [&](const std::string& schedule) {
      Grid g = grid;
      g.schedule = schedule;
      std::vector<std::string> opts = {"--resume", "none", "--run.precision", precision};
      opts.insert(opts.end(), extra.begin(), extra.end());
      std::string tag;
      for (size_t i = 1; i < extra.size(); i += 2) tag += "_" + extra[i];
      return grid_args(dir, "zb_" + g.name() + "_" + precision + tag, g, opts);
    };
    Grid g = grid;
    g.schedule = "zb-h1";
    const std::string what = g.name() + " " + precision;
    const auto plain_args = args_for(g.v > 1 ? "interleaved" : "1f1b"), args = args_for("zb-h1");
    const Result plain = run_trainer(g.ranks(), plain_args);
    const Result zb = run_trainer(g.ranks(), args);
    EXPECT_EQ(zb.losses, plain.losses) << what;
    EXPECT_EQ(zb.val_loss, plain.val_loss) << what;
    ASSERT_EQ(zb.params.size(), plain.params.size()) << what;
    EXPECT_EQ(std::memcmp(zb.params.data(), plain.params.data(), zb.params.size() * sizeof(float)),
              0)
        << what << ": weights differ";
    // The split is real: the stages together hold more (a stage without layers the same).
    auto all_stages = [&](const std::vector<std::string>& a) {
      size_t sum = 0;
      for (const auto& st : plan_run(config_of(a), g.ranks()).stages) sum += st.total();
      return sum;
    };
    EXPECT_GT(all_stages(args), all_stages(plain_args)) << what;
    if (world_rank() >= g.ranks()) continue;
    EXPECT_EQ(zb.out.allocated_bytes, planned_bytes(args, g)) << what << " rank " << world_rank();
  }
  // A checkpoint of step 3 resumes bit for bit as the run continued.
  const Grid g{1, 2, 2, 0, 4, "zb-h1", 1, true};
  if (g.ranks() > world_size()) return;
  expect_resumes_exactly(dir, "zb_whole", g);
}

// ZB-V (parallel.schedule = zb-v): two chunks per rank placed as a V, rank 0 holding the
// embeddings and the head (the tied wte once: no copy to keep in step), rank pp − 1 handing
// activations and gradients between its two chunks itself. With ZeRO-1, tensor and sequence
// parallelism, GELU recomputation, chunked logits, an untied head, data and context parallelism
// it follows the one-rank run to fp32 rounding (the tied wte's two gradients, head and
// embedding, meet in another order), each rank allocating what --plan says; in bf16 close to one
// rank's bf16; a checkpoint of step 3 resumes bit for bit on the V and on one rank as the run
// continued.
TEST(ModelParallel, ZeroBubbleVMatchesOneRank) {
  const std::string dir = shared_dir("zero_bubble_v");
  const Result ref = run(dir, "ref", Grid{});
  const std::vector<std::pair<Grid, std::vector<std::string>>> cases = {
      {{1, 1, 2, 0, 4, "zb-v", 2}, {}},
      {{1, 1, 2, 0, 1, "zb-v", 2}, {}},  // one micro-batch
      {{1, 2, 2, 1, 2, "zb-v", 2, true}, {"--train.recompute", "gelu"}},
      {{1, 2, 2, 0, 2, "zb-v", 2}, {"--train.logits_chunk", "24"}},
      {{2, 1, 2, 1, 2, "zb-v", 2}, {}},
      {{2, 2, 2, 1, 2, "zb-v", 2, true}, {}},
      {{1, 1, 2, 0, 2, "zb-v", 2, false, 2}, {}}};  // and context parallelism
  for (const auto& [g, extra] : cases) {
    if (g.ranks() > world_size()) continue;
    std::vector<std::string> opts = {"--resume", "none"};
    opts.insert(opts.end(), extra.begin(), extra.end());
    std::string name = g.name();
    for (size_t i = 1; i < extra.size(); i += 2) name += "_" + extra[i];
    const auto args = grid_args(dir, name, g, opts);
    const Result r = run_trainer(g.ranks(), args);
    expect_same_training(r, ref, name);
    if (world_rank() >= g.ranks()) continue;
    EXPECT_EQ(r.out.allocated_bytes, planned_bytes(args, g)) << name;
  }
  const Grid v2{1, 1, 2, 0, 4, "zb-v", 2};
  if (v2.ranks() > world_size()) return;
  // The untied head sits on rank 0 with the embeddings.
  const std::vector<std::string> untied = {"--model.tie_embeddings", "false"};
  const Result untied_one =
      run(dir, "untied_ref", Grid{}, {"--resume", "none", untied[0], untied[1]});
  const Result untied_v = run(dir, "untied_v", v2, {"--resume", "none", untied[0], untied[1]});
  expect_same_training(untied_v, untied_one, "untied");
  const std::vector<std::string> bf16 = {"--resume", "none", "--run.precision", "bf16"};
  const Result bf16_one = run(dir, "bf16_ref", Grid{}, bf16);
  expect_close_losses(run(dir, "bf16_v", v2, bf16), bf16_one, 5e-4, "bf16");
  // Resumed bit for bit on the V, and from the V's checkpoint on one rank.
  const Result full = expect_resumes_exactly(dir, "v_whole", v2);
  const std::string ckpt = dir + "/runs/v_whole/ckpt/step_00000003.h5";
  Result tail = full;
  tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
  expect_same_training(run(dir, "v_to_one", Grid{}, {"--resume", ckpt}), tail, "zb-v to one rank");
}

// The classifier in chunks of logits on the grids: vocabulary-parallel cross-entropy chunk by
// chunk (its row statistics reduced per chunk), the head's input gradient reduced (or
// reduce-scattered under sequence parallelism) after the last chunk, and on a pipeline the last
// stage keeps that gradient instead of the logits. A chunk that divides no micro-batch (24 rows
// of 128 or 64) trains as the unchunked run to fp32 rounding (only the head's weight gradient is
// summed in another order), and each rank allocates what --plan says.
TEST(ModelParallel, LogitsChunksTrainAsTheWholeMicroBatch) {
  const std::string dir = shared_dir("logits_chunk");
  // dp 2 with pp 1 also reduces the gradient while the backward pass runs (the head's share
  // lands before it).
  const std::vector<std::pair<Grid, std::string>> grids = {
      {{1, 2, 1, 0, 2, "1f1b", 1}, "fp32"},
      {{1, 2, 2, 0, 2, "1f1b", 1, true}, "bf16"},
      {{2, 2, 2, 1, 2, "interleaved", 2, true}, "fp32"},
      {{1, 1, 2, 0, 4, "gpipe", 1}, "bf16"},
      {{2, 2, 1, 0, 2, "1f1b", 1}, "fp32"}};
  for (const auto& [g, precision] : grids) {
    if (g.ranks() > world_size()) continue;
    auto args_for = [&](int chunk) {
      return grid_args(dir, "lc_" + g.name() + "_" + precision + "_" + std::to_string(chunk), g,
                       {"--resume", "none", "--train.logits_chunk", std::to_string(chunk),
                        "--run.precision", precision});
    };
    const Result whole = run_trainer(g.ranks(), args_for(0));
    const auto args = args_for(24);
    const Result r = run_trainer(g.ranks(), args);
    const std::string what = g.name() + " " + precision + " logits_chunk 24";
    if (precision == "fp32") {
      expect_same_training(r, whole, what);
    } else {  // bf16 rounds the activations: the chunked run follows to bf16 precision
      ASSERT_EQ(r.losses.size(), whole.losses.size());
      for (size_t i = 0; i < r.losses.size(); ++i)
        EXPECT_NEAR(r.losses[i], whole.losses[i], 2e-3 * whole.losses[i]) << what << " step " << i;
    }
    if (world_rank() >= g.ranks()) continue;
    EXPECT_EQ(r.out.allocated_bytes, planned_bytes(args, g)) << what << " rank " << world_rank();
    // The option reaches the model: the rank holding the last chunk allocates less.
    if ((world_rank() / g.tp) % g.pp == g.pp - 1) {
      EXPECT_LT(r.out.allocated_bytes, whole.out.allocated_bytes) << what;
    }
  }
}

// Uneven pipeline stages (parallel.stage_layers): 3 + 1 layers, 4 + 0 (the last stage only ln_f
// and the head), 0 + 4 (the first only the embeddings), 1 + 2 + 1 + 0, and "auto" (3 + 1 here:
// the head weighs ~1.3 layers), with ZeRO-1, tensor and sequence parallelism, full recomputation
// and each schedule: the 1×1×1 run's losses, weights and validation loss, and the planned memory.
TEST(ModelParallel, UnevenStagesMatchOneRank) {
  const std::string dir = shared_dir("uneven");
  const Result ref = run(dir, "ref", Grid{});
  // grid, stage_layers, precision, recompute
  const std::vector<std::tuple<Grid, std::string, std::string>> cases = {
      {{1, 1, 2, 0, 4, "1f1b", 1}, "3,1", "none"},
      {{2, 1, 2, 1, 2, "gpipe", 1}, "4,0", "none"},
      {{1, 1, 4, 1, 4, "1f1b", 1}, "1,2,1,0", "full"},
      {{1, 2, 2, 0, 2, "1f1b", 1, true}, "auto", "none"},
      {{2, 2, 2, 1, 2, "gpipe", 1}, "0,4", "gelu"}};
  for (const auto& [g, split, recompute] : cases) {
    if (g.ranks() > world_size()) continue;
    const std::string name = g.name() + "_" + split + "_" + recompute;
    const auto args = grid_args(
        dir, "uneven_" + std::to_string(std::hash<std::string>{}(name)), g,
        {"--resume", "none", "--parallel.stage_layers", split, "--train.recompute", recompute});
    const Result r = run_trainer(g.ranks(), args);
    expect_same_training(r, ref, name);
    if (world_rank() >= g.ranks()) continue;
    EXPECT_EQ(r.out.allocated_bytes, planned_bytes(args, g)) << name;
    if (split == "auto") {
      EXPECT_EQ(stage_layers(config_of(args)), (std::vector<int>{3, 1})) << name;
    }
  }
  // Checkpoints hold whole tensors: one saved with stages of 4 + 0 layers (and sequence
  // parallelism) resumes on one rank and on 0 + 4 exactly as the uninterrupted run continues.
  const Grid sp{1, 2, 2, 0, 2, "1f1b", 1, true};
  if (sp.ranks() > world_size()) return;
  const Result full =
      run(dir, "split40", sp, step3_kept({"--resume", "none", "--parallel.stage_layers", "4,0"}));
  Result tail = full;
  tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
  const std::string ckpt = dir + "/runs/split40/ckpt/step_00000003.h5";
  expect_same_training(run(dir, "split40_to_one", Grid{}, {"--resume", ckpt}), tail,
                       "4,0 to one rank");
  expect_same_training(
      run(dir, "split40_to_04", sp, {"--resume", ckpt, "--parallel.stage_layers", "0,4"}), tail,
      "4,0 to 0,4");
}

// ZeRO-1 in bf16 gathers the updated slices as the bf16 copy (half the bytes of fp32 master
// weights), each rank keeping the fp32 master weights of its slice only; with a pipeline the tied
// embedding's copies are synchronized as bf16. With two data-parallel ranks a reduce-scatter and
// an all-reduce add the same two numbers, so without clipping (whose norm sums in another order)
// ZeRO-1 must train bit for bit as plain data parallelism, whose every rank updates all weights;
// its checkpoints (each rank writes its slice) must resume exactly, and the gather must move half
// the bytes.
TEST(ModelParallel, ZeroGathersTheBf16CopyExactly) {
  const std::string dir = shared_dir("zero_bf16");
  for (const auto& [tp, pp] : std::vector<std::pair<int, int>>{{1, 1}, {2, 1}, {1, 2}, {2, 2}}) {
    const Grid zero{2, tp, pp, 1, 2, "1f1b", 1}, plain{2, tp, pp, 0, 2, "1f1b", 1};
    if (zero.ranks() > world_size()) continue;
    const std::vector<std::string> bf16 = {"--resume",          "none", "--run.precision", "bf16",
                                           "--train.grad_clip", "0"};
    const Result a = run(dir, "plain_" + plain.name(), plain, bf16);
    const Result z = run(dir, "zero_" + zero.name(), zero, step3_kept(bf16));
    EXPECT_EQ(z.losses, a.losses) << zero.name();
    EXPECT_EQ(z.val_loss, a.val_loss) << zero.name();
    EXPECT_EQ(z.params, a.params) << zero.name() << ": master weights";
    const std::string ckpt = dir + "/runs/zero_" + zero.name() + "/ckpt/step_00000003.h5";
    std::vector<std::string> resume = bf16;
    resume[1] = ckpt;
    const Result r = run(dir, "resumed_" + zero.name(), zero, resume);
    ASSERT_EQ(r.losses.size(), 3u) << zero.name();
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r.losses[i], z.losses[3 + i]) << zero.name() << i;
    EXPECT_EQ(r.params, z.params) << zero.name() << ": resumed master weights";
    if (world_rank() < zero.ranks()) {
      // This rank's slice, gathered as bf16 at each of the resumed run's 3 steps.
      const size_t slice = r.out.buffer_floats / 2;
      EXPECT_EQ(r.out.dp_traffic.bytes[CommStats::kAllGather], 3 * slice * sizeof(bf16_t));
      // Its master weights: the slice, against all of them without ZeRO.
      EXPECT_EQ(r.out.master_floats, slice) << zero.name();
      EXPECT_EQ(a.out.master_floats, a.out.buffer_floats) << plain.name();
      EXPECT_EQ(a.out.allocated_bytes - z.out.allocated_bytes,
                slice * sizeof(float) /* master */ + 2 * slice * sizeof(float) /* m, v */ -
                    slice * sizeof(float) /* the gradient's slice */)
          << zero.name();
    }
  }
}

// ZeRO-2 reduces each micro-batch's gradient bucket by bucket (ln_f, each layer, the
// embeddings) into the slices as the backward pass finishes them, holding the embeddings' and
// head's buckets and two layers' instead of the whole gradient buffer. With two data-parallel
// ranks and one micro-batch each reduction adds the same two numbers as ZeRO-1's reduce-scatter,
// so it trains bit for bit as ZeRO-1 (clipped, at tp 1 and 2 with sequence parallelism, in
// fp32 and bf16), allocates exactly the gradient buffer less the buckets, and its checkpoints
// resume exactly, under ZeRO-2 and under ZeRO-1. Over micro-batches, within the grids'
// tolerance of one rank (the slices sum in another order).
TEST(ModelParallel, ZeroTwoTrainsAsZeroOne) {
  const std::string dir = shared_dir("zero2");
  for (const auto& [tp, precision] :
       std::vector<std::pair<int, std::string>>{{1, "fp32"}, {1, "bf16"}, {2, "bf16"}}) {
    const Grid one{2, tp, 1, 1, 1, "1f1b", 1, tp > 1}, two{2, tp, 1, 2, 1, "1f1b", 1, tp > 1};
    if (two.ranks() > world_size()) continue;
    const std::string tag = two.name() + "_" + precision;
    const std::vector<std::string> args = {"--resume", "none", "--run.precision", precision};
    const Result z1 = run(dir, "z1_" + tag, one, args);
    const Result z2 = run(dir, "z2_" + tag, two, step3_kept(args));
    EXPECT_EQ(z2.losses, z1.losses) << tag;
    EXPECT_EQ(z2.val_loss, z1.val_loss) << tag;
    EXPECT_EQ(z2.params, z1.params) << tag;
    if (world_rank() < two.ranks()) {
      EXPECT_EQ(z1.out.master_floats, z2.out.master_floats) << tag;
      // The gradient buffer against the buckets: wte (the padded vocabulary over tp) and wpe,
      // ln_f, and two of the model's layers (kLayers of them, all alike).
      const size_t C = kEmbd, Vp = (tp == 1 ? 384 : 512) / size_t(tp);
      const size_t ends = Vp * C + kSeq * C + 2 * C;
      const size_t layers = z1.out.param_floats - ends;
      EXPECT_EQ(z1.out.allocated_bytes - z2.out.allocated_bytes,
                (z1.out.buffer_floats - ends - 2 * layers / kLayers) * sizeof(float))
          << tag;
    }
    const std::string ckpt = dir + "/runs/z2_" + tag + "/ckpt/step_00000003.h5";
    for (const Grid& g : {two, one}) {
      std::vector<std::string> resume = args;
      resume[1] = ckpt;
      const Result r = run(dir, "resumed_z" + std::to_string(g.zero) + "_" + tag, g, resume);
      ASSERT_EQ(r.losses.size(), 3u) << tag;
      for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r.losses[i], z2.losses[3 + i]) << tag << i;
      EXPECT_EQ(r.params, z2.params) << tag << " resumed under ZeRO-" << g.zero;
    }
  }
  // Four micro-batches per rank, in bf16 at tp 2 with sequence parallelism, against one rank.
  const Grid acc{2, 2, 1, 2, 4, "1f1b", 1, true};
  if (acc.ranks() <= world_size()) {
    const std::vector<std::string> bf16 = {"--resume", "none", "--run.precision", "bf16"};
    expect_close_losses(run(dir, "acc_" + acc.name(), acc, bf16), run(dir, "acc_ref", Grid{}, bf16),
                        5e-4, "ZeRO-2 " + acc.name());
  }
}

// ZeRO-3 changes only where the layers' weights come from: gathered from the ranks' slices, bit
// for bit the values ZeRO-2 keeps whole. So on every grid it trains bit for bit as ZeRO-2 (the
// same reductions): over micro-batches, in fp32 and bf16, at tp 2 with sequence parallelism,
// under context parallelism, with full recomputation (which reads a layer's weights again in
// the backward pass) and Llama's blocks (rope, RMSNorm, SwiGLU, grouped queries, an untied
// head); the evaluations between updates (20 sequences in micro-batches of 4: the ranks have
// different numbers of batches, and the one without joins the others' gathers) give the same
// validation loss; each rank holds 1/dp of the master weights; a checkpoint resumes exactly
// under ZeRO-3 and, for one micro-batch on two ranks, under ZeRO-1 (else to fp32 rounding).
// Samples under ZeRO-3: tests/python/test_mpi_runs.py.
TEST(ModelParallel, ZeroThreeTrainsBitForBitAsZeroTwo) {
  const std::string dir = shared_dir("zero3");
  const std::vector<std::string> llama = {
      "--model.position",  "rope", "--model.norm",           "rmsnorm", "--model.mlp",  "swiglu",
      "--model.n_kv_head", "2",    "--model.tie_embeddings", "false",   "--model.bias", "false"};
  struct Case {
    Grid two;
    std::string precision;
    std::vector<std::string> extra;
  };
  const std::vector<Case> cases = {
      {{2, 1, 1, 2, 4, "1f1b", 1}, "fp32", {}},
      {{2, 2, 1, 2, 2, "1f1b", 1, true}, "bf16", {}},
      {{2, 1, 1, 2, 2, "1f1b", 1, false, 2}, "bf16", {}},
      {{4, 1, 1, 2, 1, "1f1b", 1}, "bf16", {"--train.recompute", "full"}},
      {{2, 1, 1, 2, 2, "1f1b", 1}, "bf16", llama}};
  for (const Case& c : cases) {
    if (c.two.ranks() > world_size()) continue;
    Grid three = c.two;
    three.zero = 3;
    const std::string tag = three.name() + "_" + c.precision + (c.extra.empty() ? "" : "_x");
    std::vector<std::string> args = {"--resume", "none", "--run.precision", c.precision};
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    const Result z2 = run(dir, "z2_" + tag, c.two, args);
    const Result z3 = run(dir, "z3_" + tag, three, step3_kept(args));
    EXPECT_EQ(z3.losses, z2.losses) << tag;
    EXPECT_EQ(z3.val_loss, z2.val_loss) << tag;
    EXPECT_EQ(z3.params, z2.params) << tag;
    if (world_rank() < three.ranks()) {
      const size_t slice = z3.out.buffer_floats / size_t(three.dp * three.cp);
      EXPECT_EQ(z3.out.master_floats, slice) << tag;
    }
    const std::string ckpt = dir + "/runs/z3_" + tag + "/ckpt/step_00000003.h5";
    Grid one = c.two;
    one.zero = 1;
    for (const Grid& g : {three, one}) {
      std::vector<std::string> resume = args;
      resume[1] = ckpt;
      const Result r = run(dir, "resumed_z" + std::to_string(g.zero) + "_" + tag, g, resume);
      ASSERT_EQ(r.losses.size(), 3u) << tag;
      // ZeRO-1 sums a rank's micro-batches before reducing them, and its reduce-scatter adds
      // more than two ranks' in another order: the same numbers only for one micro-batch on
      // two ranks, else the same training to fp32 rounding.
      if (g.zero == 1 && (c.two.accum > 1 || c.two.dp * c.two.cp > 2)) {
        Result tail = z3;
        tail.losses.erase(tail.losses.begin(), tail.losses.begin() + 3);
        if (c.precision == "fp32") expect_same_training(r, tail, tag + " under ZeRO-1");
        continue;
      }
      for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r.losses[i], z3.losses[3 + i]) << tag << i;
      EXPECT_EQ(r.params, z3.params) << tag << " resumed under ZeRO-" << g.zero;
    }
  }
}

}  // namespace
}  // namespace triad

int main(int argc, char** argv) { return triad::testing::run_mpi_tests(argc, argv); }

namespace triad {
namespace {

// Generation with the cache of keys and values on tensor and pipeline grids (dp = 1): fed one
// more token per call, through odd lengths (the sequence-parallel padding) and past the context,
// Gpt::decode_logits on the grid gives one rank's next_token_logits (same weights: the grid's
// padded vocabulary on both), and runs only the new token while the prefix is kept.
TEST(ModelParallel, DecodingMatchesOneRankOnEveryGrid) {
  if (world_size() < 4) GTEST_SKIP() << "needs 4 ranks";
  struct G {
    int tp, pp, v;
    bool sp;
    Precision precision;
    bool inference = false;  // ActivationOptions::inference on the grid
    bool rope = false;       // rotary positions: the new rows rotated at their positions
    bool rmsnorm = false;
    bool vee = false;  // ZB-V's placement of the chunks
  };
  for (const G& g :
       {G{2, 1, 1, false, Precision::fp32}, G{2, 1, 1, true, Precision::fp32},
        G{1, 2, 1, false, Precision::fp32}, G{1, 2, 2, false, Precision::fp32},
        G{2, 2, 1, true, Precision::fp32}, G{2, 2, 1, false, Precision::bf16},
        G{2, 2, 1, true, Precision::fp32, true}, G{1, 2, 2, false, Precision::bf16, true},
        G{2, 1, 1, true, Precision::fp32, false, true},
        G{1, 2, 2, false, Precision::bf16, true, true},
        G{2, 2, 1, false, Precision::fp32, false, true},
        G{2, 2, 1, true, Precision::bf16, true, true, true},
        G{1, 2, 2, false, Precision::fp32, false, false, false, true},
        G{2, 2, 2, true, Precision::bf16, true, false, false, true}}) {
    const int ranks = g.tp * g.pp;
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, world_rank() < ranks ? 0 : MPI_UNDEFINED, world_rank(), &sub);
    if (sub == MPI_COMM_NULL) continue;
    SCOPED_TRACE(::testing::Message()
                 << "tp=" << g.tp << " pp=" << g.pp << " v=" << g.v << (g.sp ? " sp " : " ")
                 << precision_name(g.precision) << (g.inference ? " inference" : "")
                 << (g.rope ? " rope" : "") << (g.rmsnorm ? " rmsnorm" : "")
                 << (g.vee ? " zb-v" : ""));
    const int q = 128 * g.tp, Vp = (kVocab + q - 1) / q * q;
    GptShape shape{kLayers, kHeads, kEmbd, kSeq, kVocab, Vp};
    shape.rope = g.rope;
    shape.rope_theta = 50;
    shape.rmsnorm = g.rmsnorm;
    shape.swiglu = g.rmsnorm;  // Llama's blocks: with RMSNorm, SwiGLU of 96 units too
    if (g.rmsnorm) shape.mlp_hidden = 96;
    shape.tied = !g.rmsnorm;  // and Llama's untied output layer
    auto be = make_cpu_backend();
    Gpt one(shape, 1, *be, 1, {}, nullptr, g.precision);
    one.init(3);
    {
      ProcessGrid grid(sub, g.tp, g.pp);
      ModelParallel mp;
      mp.tp = g.tp;
      mp.tp_rank = grid.tp_rank();
      mp.pp = g.pp;
      mp.pp_rank = grid.pp_rank();
      mp.virtual_stages = g.v;
      mp.sequence_parallel = g.sp;
      mp.tp_comm = &grid.tp();
      mp.pp_comm = &grid.pp();
      const ScheduleKind kind = g.vee     ? ScheduleKind::ZeroBubbleV
                                : g.v > 1 ? ScheduleKind::Interleaved
                                          : ScheduleKind::OneFOneB;
      mp.placement = chunk_placement(kind);
      const PipelineSchedule schedule = make_schedule(kind, g.pp, 2 * g.pp, g.v);
      ActivationOptions options;
      options.inference = g.inference;
      Gpt m(shape, 1, *be, 1, mp, g.pp > 1 ? &schedule : nullptr, g.precision, options);
      m.init(3);
      std::vector<int32_t> seq(size_t(kSeq) + 3);
      for (size_t i = 0; i < seq.size(); ++i) seq[i] = int32_t((i * 97 + 5) % kVocab);
      const double tol = g.precision == Precision::fp32 ? 1e-5 : 2e-2;
      m.forget_decoded();
      for (int end = 3; end <= kSeq + 3; ++end) {
        const int len = std::min(end, kSeq);
        const int32_t* ctx = seq.data() + (end - len);
        const float* got = m.decode_logits(ctx, len);
        const std::vector<float> a(got, got + kVocab);
        EXPECT_EQ(m.decoded_tokens(), len);
        // One token's row (tp of them under sequence parallelism) while the context grows.
        if (end > 3 && end <= kSeq) {
          EXPECT_EQ(m.last_decoded_rows(), g.sp ? g.tp : 1);
        }
        const float* want = one.next_token_logits(ctx, len);
        double d = 0, mx = 0;
        for (int i = 0; i < kVocab; ++i) {
          d = std::max(d, std::abs(double(a[size_t(i)]) - want[i]));
          mx = std::max(mx, std::abs(double(want[i])));
        }
        EXPECT_LE(d / mx, tol) << "tokens 0.." << end;
      }
      // Two sequences in lockstep (triad-generate --batch 2 on the grid): each follows its own
      // logits on one rank, within and past the context.
      Gpt two(shape, 2, *be, 1, mp, g.pp > 1 ? &schedule : nullptr, g.precision, options);
      two.init(3);
      std::vector<int32_t> other(seq.size()), window;
      for (size_t i = 0; i < other.size(); ++i) other[i] = int32_t((i * 31 + 17) % kVocab);
      for (int end = 3; end <= kSeq + 3; ++end) {
        const int len = std::min(end, kSeq);
        window.assign(seq.begin() + (end - len), seq.begin() + end);
        window.insert(window.end(), other.begin() + (end - len), other.begin() + end);
        const float* got = two.decode_logits(window.data(), 2, len);
        const std::vector<float> a(got, got + 2 * kVocab);
        if (end > 3 && end <= kSeq) {
          EXPECT_EQ(two.last_decoded_rows(), 2 * (g.sp ? g.tp : 1));
        }
        for (int b = 0; b < 2; ++b) {
          const float* want = one.next_token_logits(window.data() + size_t(b) * len, len);
          double d = 0, mx = 0;
          for (int i = 0; i < kVocab; ++i) {
            d = std::max(d, std::abs(double(a[size_t(b) * kVocab + i]) - want[i]));
            mx = std::max(mx, std::abs(double(want[i])));
          }
          EXPECT_LE(d / mx, tol) << "sequence " << b << " tokens 0.." << end;
        }
      }
    }
    MPI_Comm_free(&sub);
  }
}

}  // namespace
}  // namespace triad
