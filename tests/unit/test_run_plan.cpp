// triad-train --plan (train/run_plan.h, Gpt::memory_plan): the planned bytes are what a model
// allocates on its backend, the activation plan follows the per-buffer formula of
// docs/parallelism.md, ZeRO and the grid shrink what they should, the compute per token is the
// count of the weights each stage multiplies with, and configs no run could start are refused
// naming the key. (Every grid's plan against the allocations of a real run: tests/mpi/
// test_model_parallel.cpp, MemoryPlanEqualsWhatEachRankAllocates.)
#include <gtest/gtest.h>

#include <cmath>
#include <iomanip>
#include <sstream>
#include <vector>

#include "triad/core/error.h"
#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/train/run_plan.h"

namespace triad {
namespace {

// n = B·T = 64 rows, C = 64, 4 heads, Vp = 512: every buffer a multiple of 64 bytes, so the
// plan's alignment adds nothing and the formula is exact.
const GptShape kSmall{2, 4, 64, 32, 500, 512};
constexpr int kB = 2;

TEST(GptMemoryPlan, EqualsTheBackendsAllocations) {
  auto be = make_cpu_backend();
  for (Precision p : {Precision::fp32, Precision::bf16})
    for (int shards : {1, 3}) {
      const size_t before = be->allocated_bytes();
      const GptMemory plan = Gpt::memory_plan(kSmall, kB, shards, {}, nullptr, p);
      {
        Gpt model(kSmall, kB, *be, shards, {}, nullptr, p);
        EXPECT_EQ(be->allocated_bytes() - before, plan.total()) << precision_name(p) << shards;
        EXPECT_EQ(model.buffer_floats(), plan.buffer_floats);
        EXPECT_EQ(model.activation_bytes(), plan.activations);
      }
      EXPECT_EQ(be->allocated_bytes(), before) << "freed with the model";
    }
  // A sharded master (bf16 ZeRO-1): the fp32 weights of one slice of three; with gradient
  // buckets (ZeRO-2) the embeddings' and head's gradients and two layers' instead of all.
  const GptMemory whole = Gpt::memory_plan(kSmall, kB, 3, {}, nullptr, Precision::bf16);
  for (const ZeroOptions z :
       {ZeroOptions{1, true, false}, ZeroOptions{1, true, true}, ZeroOptions{0, false, true}}) {
    const Precision p = z.master ? Precision::bf16 : Precision::fp32;
    const size_t before = be->allocated_bytes();
    const GptMemory plan = Gpt::memory_plan(kSmall, kB, 3, {}, nullptr, p, {}, z);
    EXPECT_EQ(plan.weights, plan.buffer_floats / (z.master ? 3 : 1) * sizeof(float));
    // wte 512·64, wpe 32·64 | 2 layers of 12·64² + 13·64 | ln_f 2·64 (kSmall).
    const size_t layer = 12 * 64 * 64 + 13 * 64, ends = 512 * 64 + 32 * 64 + 2 * 64;
    EXPECT_EQ(plan.grads, z.bucketed_grads ? (ends + 2 * layer) * sizeof(float) : whole.grads);
    {
      Gpt model(kSmall, kB, *be, 3, {}, nullptr, p, {}, z);
      EXPECT_EQ(be->allocated_bytes() - before, plan.total());
      EXPECT_EQ(model.weight_bytes(), plan.weights + plan.weights_bf16);
      EXPECT_EQ(model.bucketed_grads(), z.bucketed_grads);
    }
  }
}

// The model with a sharded master holds its slice of the weights the whole one holds, and the
// same bf16 copy of all of them, from init and from set_params; staged through the gradient
// buffer, which it leaves zero, or with ZeRO-2's buckets through one layer's bucket, piece by
// piece.
class ShardedMaster : public ::testing::TestWithParam<bool> {};

TEST_P(ShardedMaster, HoldsItsSliceOfTheSameWeights) {
  const bool bucketed = GetParam();
  auto be = make_cpu_backend();
  Gpt whole(kSmall, kB, *be, 3, {}, nullptr, Precision::bf16);
  Gpt part(kSmall, kB, *be, 3, {}, nullptr, Precision::bf16, {}, {2, true, bucketed});
  const size_t n = whole.buffer_floats(), slice = n / 3;
  ASSERT_EQ(part.master_begin(), 2 * slice);
  ASSERT_EQ(part.master_end(), n);
  EXPECT_TRUE(part.sharded_master());
  EXPECT_FALSE(whole.sharded_master());
  auto same = [&](const char* when) {
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(whole.params_bf16()[i].bits, part.params_bf16()[i].bits) << when << " " << i;
    for (size_t i = 0; i < slice; ++i)
      ASSERT_EQ(whole.params()[2 * slice + i], part.params()[i]) << when << " " << i;
    if (!bucketed) {  // (braces: the assertion macro hides an else)
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(part.grads()[i], 0.0f) << when << " " << i;
    }
  };
  whole.init(7);
  part.init(7);
  same("init");
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = float(std::sin(0.37 * double(i)));
  whole.set_params(host.data());
  part.set_params(host.data());
  same("set_params");
  EXPECT_EQ(part.params()[0], host[2 * slice]);
  EXPECT_THROW(part.params_updated(), Error) << "a slice cannot refresh the whole copy";
  EXPECT_EQ(part.grads() == nullptr, bucketed);
}

INSTANTIATE_TEST_SUITE_P(GptMemoryPlan, ShardedMaster, ::testing::Bool());

TEST(GptMemoryPlan, ActivationsFollowTheDocumentedFormula) {
  const size_t n = size_t(kB) * kSmall.seq_len, C = size_t(kSmall.n_embd), L = 2, NH = 4;
  const size_t T = size_t(kSmall.seq_len), Vp = size_t(kSmall.padded_vocab_size);
  // Kept per layer: ln1, qkv (3), attention output, residual2, ln2, MLP hidden and its GELU (4
  // each), residual3 = 16·n·C; plus the chunk input, ln_f and its output's gradient (the
  // classifier's result). Backward scratch: the residual, LayerNorm, attention-output, qkv (3)
  // and MLP (4, 4) gradients and the shared projection output = 15·n·C; the classifier's chunk
  // of logits (a whole micro-batch by default).
  const size_t act = n * C * (1 + 16 * L + 2 + 15) + n * Vp;
  // fp32 statistics: each LayerNorm's mean and rstd, ln_f's, the per-token loss and hit (the
  // vocabulary-parallel row statistics only at tp > 1); attention keeps its probabilities (fp32
  // model, and their gradient as scratch) or its log-sum-exp (bf16).
  const size_t stats = L * 4 * n + 2 * n + 2 * n;
  const size_t fp32 = 4 * (act + stats + L * n * NH * T + n * NH * T);
  const size_t bf16 = 2 * act + 4 * (stats + L * n * NH + Vp);  // + one widened row of logits
  EXPECT_EQ(Gpt::memory_plan(kSmall, kB).activations, fp32);
  EXPECT_EQ(Gpt::memory_plan(kSmall, kB, 1, {}, nullptr, Precision::bf16).activations, bf16);
}

// Grouped-query attention (one key/value head of 4, hd = 16): q|k|v rows are C + 2·16 = 1.5·C
// wide, kept per layer and as backward scratch; the plan still equals what the model allocates.
TEST(GptMemoryPlan, GroupedQueryAttentionKeepsNarrowerQkv) {
  GptShape mqa = kSmall;
  mqa.n_kv_head = 1;
  const size_t n = size_t(kB) * kSmall.seq_len, C = size_t(kSmall.n_embd), L = 2, NH = 4;
  const size_t T = size_t(kSmall.seq_len), Vp = size_t(kSmall.padded_vocab_size);
  const size_t act = n * C * (2 * (1 + 2) + 29 * L + 27) / 2 + n * Vp;  // 1.5 for each 3 above
  const size_t stats = L * 4 * n + 2 * n + 2 * n;
  EXPECT_EQ(Gpt::memory_plan(mqa, kB).activations, 4 * (act + stats + L * n * NH * T + n * NH * T));
  auto be = make_cpu_backend();
  for (Precision p : {Precision::fp32, Precision::bf16}) {
    const size_t before = be->allocated_bytes();
    const GptMemory plan = Gpt::memory_plan(mqa, kB, 1, {}, nullptr, p);
    Gpt model(mqa, kB, *be, 1, {}, nullptr, p);
    EXPECT_EQ(be->allocated_bytes() - before, plan.total()) << precision_name(p);
    EXPECT_EQ(model.activation_bytes(), plan.activations);
  }
}

// model.clip_qkv keeps c_attn's output before the clamp (n·W per layer: W = 3·C here), and the
// plan still equals the model's allocations.
TEST(GptMemoryPlan, ClipQkvKeepsThePreClampQkv) {
  GptShape clip = kSmall;
  clip.clip_qkv = 8.0f;
  const size_t n = size_t(kB) * kSmall.seq_len, C = size_t(kSmall.n_embd), L = 2;
  EXPECT_EQ(Gpt::memory_plan(clip, kB).activations,
            Gpt::memory_plan(kSmall, kB).activations + 4 * L * n * 3 * C);
  auto be = make_cpu_backend();
  for (Precision p : {Precision::fp32, Precision::bf16}) {
    const size_t before = be->allocated_bytes();
    const GptMemory plan = Gpt::memory_plan(clip, kB, 1, {}, nullptr, p);
    Gpt model(clip, kB, *be, 1, {}, nullptr, p);
    EXPECT_EQ(be->allocated_bytes() - before, plan.total()) << precision_name(p);
    EXPECT_EQ(model.activation_bytes(), plan.activations);
  }
}

// QK-norm keeps c_attn's output before the norm (W = 1.5·C per row here: 4 query heads, 1
// key/value head) and one 1/rms per row and q or k head (5, fp32); the plan still equals the
// model's allocations.
TEST(GptMemoryPlan, QkNormKeepsThePreNormQkv) {
  GptShape qk = kSmall;
  qk.n_kv_head = 1;
  qk.qk_norm = true;
  GptShape plain = qk;
  plain.qk_norm = false;
  const size_t n = size_t(kB) * kSmall.seq_len, C = size_t(kSmall.n_embd), L = 2;
  EXPECT_EQ(Gpt::memory_plan(qk, kB).activations,
            Gpt::memory_plan(plain, kB).activations + 4 * L * (n * C * 3 / 2 + n * 5));
  auto be = make_cpu_backend();
  for (Precision p : {Precision::fp32, Precision::bf16}) {
    const size_t before = be->allocated_bytes();
    const GptMemory plan = Gpt::memory_plan(qk, kB, 1, {}, nullptr, p);
    Gpt model(qk, kB, *be, 1, {}, nullptr, p);
    EXPECT_EQ(be->allocated_bytes() - before, plan.total()) << precision_name(p);
    EXPECT_EQ(model.activation_bytes(), plan.activations);
  }
}

Config gpt2_124m(int batch, int micro) {
  Config c;                // the defaults are GPT-2 124M
  c.run.backend = "cuda";  // bf16 by default
  c.train.batch_size = batch;
  c.train.micro_batch_size = micro;
  return c;
}

TEST(RunPlan, ShardsAndZeroShrinkWhatTheyShould) {
  const RunPlan one = plan_run(gpt2_124m(16, 16), 1);
  ASSERT_EQ(one.stages.size(), 1u);
  const StageMemory& s = one.stages[0];
  // GPT-2 124M with the vocabulary padded to 50304 (the padding rows are held, not counted).
  EXPECT_EQ(s.parameters, 124475904);
  EXPECT_DOUBLE_EQ(one.model_flops_per_token,
                   6.0 * (124475904.0 - 47 * 768) + 6.0 * 12 * 768 * 1024);
  EXPECT_EQ(s.model.weights, s.model.buffer_floats * 4);
  EXPECT_EQ(s.model.weights_bf16, s.model.buffer_floats * 2);
  EXPECT_EQ(s.optimizer, 2 * s.model.weights);  // AdamW m and v
  EXPECT_EQ(s.grad_shard, 0u);

  Config z = gpt2_124m(64, 8);
  z.parallel.zero = 1;
  const RunPlan dp8 = plan_run(z, 8);
  EXPECT_EQ(dp8.grid.dp, 8);
  EXPECT_EQ(dp8.micro_batches, 1);
  const StageMemory& d = dp8.stages[0];
  // bf16 ZeRO-1: the fp32 master weights, the AdamW state and the gradient's slice are 1/8.
  EXPECT_EQ(d.model.weights, d.model.grads / 8);
  EXPECT_EQ(d.optimizer, 2 * d.model.grads / 8);
  EXPECT_EQ(d.grad_shard, d.model.grads / 8);
  EXPECT_LT(d.model.activations, s.model.activations) << "micro-batch 8 instead of 16";
  // ZeRO-1's reduction: the whole fp32 gradient buffer reduce-scattered, the slice gathered as
  // its bf16 copy (bf16 precision, no pipeline); a ring moves 7/8 of the buffer and 7 bf16
  // slices over each link: 1.5·7/8 of the fp32 buffer. One rank without ZeRO: nothing.
  EXPECT_EQ(d.dp_reduce_scatter, d.model.param_floats * 4) << "the parameters' buckets";
  EXPECT_EQ(d.dp_all_gather, d.model.grads / 8 / 2);
  EXPECT_EQ(d.dp_all_reduce, 0u);
  EXPECT_DOUBLE_EQ(d.dp_wire_bytes,
                   7.0 / 8 * double(d.dp_reduce_scatter) + 7.0 / 8 * 0.5 * double(d.model.grads));
  // fp32: the slice gathered in fp32 into every rank's whole fp32 weights.
  Config zp = z;
  zp.run.precision = "fp32";
  const StageMemory& f = plan_run(zp, 8).stages[0];
  EXPECT_EQ(f.model.weights, f.model.grads);
  EXPECT_EQ(f.dp_all_gather, f.model.weights / 8);
  EXPECT_DOUBLE_EQ(f.dp_wire_bytes,
                   7.0 / 8 * double(f.dp_reduce_scatter) + 7.0 / 8 * double(f.model.weights));
  EXPECT_EQ(s.dp_reduce_scatter + s.dp_all_gather + s.dp_all_reduce, 0u);
  const std::string text = format_run_plan(dp8, z, 0, 100);
  std::ostringstream want;  // at 100 GB/s
  want << std::fixed << std::setprecision(1) << d.dp_wire_bytes / 100e9 * 1e3 << " ms at 100 GB/s";
  EXPECT_NE(text.find(want.str()), std::string::npos) << text;
  Config nz = z;
  nz.parallel.zero = 0;
  const StageMemory& a = plan_run(nz, 8).stages[0];
  EXPECT_EQ(a.dp_all_reduce, size_t(a.model.param_floats) * 4) << "every parameter, unpadded";
  EXPECT_EQ(a.dp_reduce_scatter + a.dp_all_gather, 0u);

  Config g = gpt2_124m(16, 1);
  g.parallel.tp = 2;
  g.parallel.pp = 2;
  const RunPlan grid = plan_run(g, 4);
  ASSERT_EQ(grid.stages.size(), 2u);
  // Stage 0: wte/2, wpe and layers 0-5 (their tp-split weights halved); stage 1: layers 6-11,
  // ln_f and the head's wte/2.
  // Layer: 4 LayerNorm vectors, c_attn (3C² + 3C), attention c_proj (C² + C), c_fc (4C² + 4C),
  // MLP c_proj (4C² + C) = 12C² + 13C. The vocabulary is padded to a multiple of 128·tp = 256.
  const int64_t C = 768, V2 = 50432 / 2, layer = 12 * C * C + 13 * C;
  const int64_t split = 6 * C;  // the LayerNorms and row-parallel biases stay whole
  const int64_t half_layer = (layer - split) / 2 + split;
  EXPECT_EQ(grid.stages[0].parameters, V2 * C + 1024 * C + 6 * half_layer);
  EXPECT_EQ(grid.stages[1].parameters, 6 * half_layer + 2 * C + V2 * C);
  EXPECT_EQ(grid.stages[0].model.activation_sets, std::vector<int>{2}) << "1F1B: pp - stage";
  EXPECT_EQ(grid.stages[1].model.activation_sets, std::vector<int>{1});
  EXPECT_GT(grid.bubble, 0.0);
  EXPECT_GT(grid.stages[1].model.other, 0u) << "the head's buffer for wte's gradient";
}

TEST(RunPlan, ComputePerTokenCountsTheWeightsEachStageMultipliesWith) {
  const RunPlan one = plan_run(gpt2_124m(16, 16), 1);
  const double C = 768, weights = 50304 * C + 12 * 12 * C * C;  // head + 12 layers' matmuls
  EXPECT_DOUBLE_EQ(one.stages[0].flops_per_token, 6 * weights + 6 * 12 * C * 1024);
  EXPECT_DOUBLE_EQ(one.critical_flops, 16384 * one.stages[0].flops_per_token);
  // At 400 TFLOP/s: 16384 tokens of 6·weights + attention FLOPs each.
  const std::string text = format_run_plan(one, gpt2_124m(16, 16), 400);
  const double ms = 16384 * one.stages[0].flops_per_token / 400e12 * 1e3;
  std::ostringstream want;
  want << std::fixed << std::setprecision(1) << ms << " ms";
  EXPECT_NE(text.find(want.str()), std::string::npos) << text;
}

// Muon's Newton–Schulz, k(4a²b + 2a³) per matrix, on the critical path of the busiest data-
// parallel rank (which takes the largest matrix of each round of dp), worked out here for
// GPT-2 124M: per layer c_attn [2304, 768], c_fc [3072, 768], mlp c_proj [768, 3072] and
// attn c_proj [768, 768].
TEST(RunPlan, MuonAddsItsNewtonSchulzToTheStep) {
  auto ns = [](double a, double b) { return 5 * (4 * a * a * b + 2 * a * a * a); };
  const double fc = ns(768, 3072), attn = ns(768, 2304), proj = ns(768, 768);
  Config c = gpt2_124m(16, 16);
  const RunPlan adamw = plan_run(c, 1);
  c.optim.name = "muon";
  const RunPlan one = plan_run(c, 1);
  EXPECT_DOUBLE_EQ(one.stages[0].optimizer_flops, 12 * (2 * fc + attn + proj));
  EXPECT_DOUBLE_EQ(one.critical_flops - adamw.critical_flops, 12 * (2 * fc + attn + proj));
  // dp = 2: rounds of two equal matrices, rank 0 takes half of each kind.
  c.train.micro_batch_size = 8;
  EXPECT_DOUBLE_EQ(plan_run(c, 2).stages[0].optimizer_flops, 6 * (2 * fc + attn + proj));
  // dp = 8: 48 matrices in 6 rounds, largest first: 24 mlp matrices (3 rounds), 12 c_attn and
  // 12 attn c_proj (1.5 rounds each: one round holds 4 c_attn and 4 c_proj, rank 0 a c_attn).
  c.train.micro_batch_size = 2;
  EXPECT_DOUBLE_EQ(plan_run(c, 8).stages[0].optimizer_flops, 3 * fc + 2 * attn + proj);
  EXPECT_EQ(plan_run(c, 8).stages[0].tp_muon_gather, 0u);
  // tp = 2: each matrix is gathered whole from its two shards, the other rank's half received
  // (c_attn 3C·C/2, attn c_proj C·C/2, c_fc and mlp c_proj 4C·C/2 each, fp32, 12 layers).
  c.parallel.tp = 2;
  c.train.micro_batch_size = 16;
  const size_t C = 768, half = 12 * (3 * C * C + C * C + 8 * C * C) / 2;
  EXPECT_EQ(plan_run(c, 2).stages[0].tp_muon_gather, half * sizeof(float));
}

// zb-h1 against 1f1b on 4 stages, 8 micro-batches. Stages of equal compute (16 layers of GPT-2
// 124M's width, a 512-token vocabulary): the weight pass takes the layers' weight gradients
// (2 FLOPs per weight) out of the backward on the critical path and the simulated bubble halves
// (1F1B: 27.7%, near the formula's 3/11; ZB-H1: 13.7%, the formula's 1/9 being for t_W = t_fwd,
// and here the weight pass is a little shorter than the forward). GPT-2 124M with its head on
// the last stage gains less (53.2% → 49.4%): most of its bubble is that stage's extra work, which
// no schedule hides.
// Every stage holds up to 4 activation sets (1F1B: 4 − s) with each layer's output gradients
// (9C per token at tp = 1), and the recomputation table leaves out full recomputation, which
// zb-h1 cannot run.
TEST(RunPlan, ZeroBubbleShrinksTheBubbleForActivations) {
  Config c = gpt2_124m(64, 8);
  c.parallel.pp = 4;
  c.model.vocab_size = 512;
  c.model.n_layer = 16;
  const RunPlan even = plan_run(c, 4);
  c.parallel.schedule = "zb-h1";
  const RunPlan even_zb = plan_run(c, 4);
  EXPECT_NEAR(even.bubble, 0.277, 0.001);  // 3/11 and the stages' small differences
  EXPECT_NEAR(even_zb.bubble, 0.137, 0.001);

  c = gpt2_124m(64, 8);
  c.parallel.pp = 4;
  const RunPlan plain = plan_run(c, 4);
  c.parallel.schedule = "zb-h1";
  const RunPlan zb = plan_run(c, 4);
  EXPECT_LT(zb.critical_flops, plain.critical_flops);
  EXPECT_NEAR(plain.bubble, 0.532, 0.001);
  EXPECT_NEAR(zb.bubble, 0.494, 0.001);
  const double C = 768, T = 1024;
  for (int s = 0; s < 4; ++s) {
    const auto& z = zb.stages[size_t(s)];
    EXPECT_DOUBLE_EQ(z.weight_grad_flops_per_token, 2 * 3 * 12 * C * C);
    EXPECT_EQ(z.model.activation_sets, std::vector<int>{4});
    EXPECT_EQ(plain.stages[size_t(s)].model.activation_sets, std::vector<int>{4 - s});
    EXPECT_GT(z.model.activations, plain.stages[size_t(s)].model.activations) << "stage " << s;
  }
  // Stage 0 keeps 4 sets either way: each gains 3 layers × 9C bf16 values per token (B·T = 8192),
  // and the shared c_fc and c_attn gradient scratch (7C) is gone.
  EXPECT_EQ(double(zb.stages[0].model.activations) - double(plain.stages[0].model.activations),
            (4 * 3 * 9 - 7) * C * 8 * T * sizeof(bf16_t));
  c.run.precision = "fp32";
  const std::string table = format_recompute_fit(c, 4, 0, 1000);
  EXPECT_EQ(table.find("full"), std::string::npos) << table;
  EXPECT_NE(table.find("gelu"), std::string::npos) << table;
}

// The cuda backend's fp32 attention keeps T×T matrices the activations do not count: none under
// the flash kernels (attention dropout included), the dropped copy and the uncapped scores
// (B·NH·T² floats each) in fp32, the widened copies too in bf16 with a head dim the flash kernels
// lack or with dropout of capped scores; the plan's text names them.
TEST(RunPlan, CountsTheFp32AttentionsScratch) {
  Config c = gpt2_124m(16, 2);  // bf16, hd 64, T 1024
  const double A = 2.0 * 12 * 1024 * 1024, n = 2.0 * 1024 * 768;
  EXPECT_EQ(fp32_attention_scratch_bytes(c), 0u);
  c.train.attention_dropout = 0.1f;
  EXPECT_EQ(fp32_attention_scratch_bytes(c), 0u);  // the flash kernels drop
  c.model.attn_softcap = 50.0f;                    // ... but not capped scores
  EXPECT_EQ(fp32_attention_scratch_bytes(c), size_t((8 * n + 4 * A) * 4));
  c.run.precision = "fp32";
  EXPECT_EQ(fp32_attention_scratch_bytes(c), size_t(2 * A * 4));
  c.parallel.tp = 2;  // this rank's 6 heads
  EXPECT_EQ(fp32_attention_scratch_bytes(c), size_t(A * 4));
  const std::string text = format_run_plan(plan_run(c, 2), c, 400);
  EXPECT_NE(text.find("(fp32, the dropped probabilities, the uncapped scores): 100.7 MB"),
            std::string::npos)
      << text;  // 2 matrices of 2 · 6 · 1024² floats
  c.run.backend = "cpu";
  EXPECT_EQ(fp32_attention_scratch_bytes(c), 0u);
}

TEST(RunPlan, RefusesGridsNoRunCouldStart) {
  Config c = gpt2_124m(16, 1);
  c.parallel.tp = 2;
  try {
    plan_run(c, 3);
    FAIL() << "3 ranks cannot hold tp = 2";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.tp"), std::string::npos) << e.what();
  }
  EXPECT_THROW(plan_run(gpt2_124m(16, 1), 0), Error);
  c.parallel.tp = 5;  // 12 heads
  EXPECT_THROW(plan_run(c, 5), Error);
}

// parallel.stage_layers = auto gives the last stage fewer layers, for the head: GPT-2 350M on 4
// stages 7,7,7,3 (the head is ~3.8 layers of compute); 124M 4,4,4,0 (~4.9 layers); the busiest
// stage and so the simulated step shrink. Explicit lists and bad ones.
TEST(RunPlan, AutoStageLayersBalanceTheHead) {
  Config c = gpt2_124m(64, 4);
  c.parallel.pp = 4;
  c.parallel.stage_layers = "auto";
  EXPECT_EQ(stage_layers(c), (std::vector<int>{4, 4, 4, 0}));
  const RunPlan balanced = plan_run(c, 4);
  c.parallel.stage_layers = "";
  const RunPlan even = plan_run(c, 4);
  EXPECT_LT(balanced.critical_flops, 0.9 * even.critical_flops);
  EXPECT_LT(balanced.bubble, even.bubble);
  EXPECT_EQ(balanced.stages[3].layers, 0);
  c.model.n_layer = 24;
  c.model.n_embd = 1024;
  c.model.n_head = 16;
  c.parallel.stage_layers = "auto";
  EXPECT_EQ(stage_layers(c), (std::vector<int>{7, 7, 7, 3}));
  // A multi-token prediction module on the last stage too: its block, its eh_proj and the head
  // again (~4.9 layers more) leave it none.
  c.model.mtp_depth = 1;
  EXPECT_EQ(stage_layers(c), (std::vector<int>{8, 8, 8, 0}));
  c.model.mtp_depth = 0;
  c.parallel.stage_layers = " 8, 8 ,8,0 ";  // spaces as INI files have them
  EXPECT_EQ(stage_layers(c), (std::vector<int>{8, 8, 8, 0}));
  // 5 stages: the busiest stage holds 6 layers whether the last holds 0, 1 or 2 (the head is
  // ~3.8 layers); the tie goes to the most on the last stage, and the extra layers to the stages
  // nearest the end, which keep the fewest micro-batches in flight.
  c.parallel.pp = 5;
  c.parallel.stage_layers = "auto";
  EXPECT_EQ(stage_layers(c), (std::vector<int>{5, 5, 6, 6, 2}));
  c.parallel.pp = 4;
  c.model.n_layer = 12;
  c.model.n_embd = 768;
  c.model.n_head = 12;
  // GPT-2 124M on 3 stages: the busiest holds 6 layers with 0 or 1 on the last (the head ~4.9
  // layers): 5,6,1. With full recomputation a layer costs 23% more and the head only ~4 of
  // them: 5,5,2.
  c.parallel.pp = 3;
  EXPECT_EQ(stage_layers(c), (std::vector<int>{5, 6, 1}));
  c.train.recompute = "full";
  EXPECT_EQ(stage_layers(c), (std::vector<int>{5, 5, 2}));
  c.train.recompute_layers = 99;
  EXPECT_THROW(validate(c, 3), Error) << "recompute_layers above the auto split's stages";
  c.train.recompute = "none";
  c.train.recompute_layers = 0;
  c.model.n_layer = 24;
  c.model.n_embd = 1024;
  c.model.n_head = 16;
  c.parallel.pp = 4;
  for (const char* bad : {"8,8,8", "8,8,8,1", "8,8,-8,16", "8,8,x,8", "8,,8,8", "12,0,12,0"}) {
    c.parallel.stage_layers = bad;
    EXPECT_THROW(validate(c, 4), Error) << bad;
  }
  c.parallel.stage_layers = "auto";
  c.parallel.schedule = "interleaved";
  c.parallel.virtual_stages = 2;
  EXPECT_THROW(validate(c, 4), Error) << "interleaved chunks are equal";
}

// A mixture of experts with dense layers first (model.moe_first_dense = 6 of 8, 8 experts, top
// 2): each stage is costed from its own layers. A dense layer of GPT-2 124M costs 80·C² per token
// (forward and backward, with the attention's T term), one with experts 128·C², the head ~393·C²:
// 7 layers and 1 (608 against 521) beat 6 and 2 (480 against 649), which a mean layer's cost
// (92·C²) would choose.
TEST(RunPlan, AutoStageLayersCostEachLayerOfAMixtureOfExperts) {
  Config c = gpt2_124m(64, 2);
  c.model.n_layer = 8;
  c.model.moe_experts = 8;
  c.model.moe_top_k = 2;
  c.model.moe_first_dense = 6;
  c.parallel.pp = 2;
  c.parallel.stage_layers = "auto";
  EXPECT_EQ(stage_layers(c), (std::vector<int>{7, 1}));
  c.model.moe_first_dense = 0;  // every layer with experts, 128·C² each: 6 and 2 (768, 649)
  EXPECT_EQ(stage_layers(c), (std::vector<int>{6, 2}));
}

}  // namespace
}  // namespace triad
