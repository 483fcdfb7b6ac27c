// The parameter layout of each rank of a tensor × pipeline grid (gpt_rank_layout): every element of
// the model is owned by exactly one rank (replicas aside), shards are the Megatron splits of
// DESIGN.md §3, and per-rank parameters shrink as 1/(tp·pp) for the transformer layers and 1/tp for
// the embeddings.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <numeric>

#include "triad/core/error.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

const GptShape kGpt2{12, 12, 768, 1024, 50257, 50304};  // padded for tp up to 3 (128·3 | 50304)

GptShape padded_for(int tp, GptShape s = kGpt2) {
  const int q = 128 * tp;
  s.padded_vocab_size = (s.vocab_size + q - 1) / q * q;
  return s;
}

ModelParallel grid(int tp, int tp_rank, int pp, int pp_rank, int v = 1) {
  ModelParallel mp;
  mp.tp = tp;
  mp.tp_rank = tp_rank;
  mp.pp = pp;
  mp.pp_rank = pp_rank;
  mp.virtual_stages = v;
  return mp;
}

TEST(ModelLayout, EveryElementOwnedOnceAndShardsReassembleTheModel) {
  for (int tp : {1, 2, 4})
    for (int pp : {1, 2, 3, 4})
      for (int v : {1, 2}) {
        if (12 % (pp * v) != 0 || (v > 1 && pp == 1)) continue;
        // A narrow model with GPT-2's depth and heads keeps this fast; with two multi-token
        // prediction modules on the last stage when v = 1 (eh_proj's columns split in two
        // blocks, its e and h halves).
        GptShape shape = padded_for(tp, GptShape{12, 12, 96, 64, 1000, 0});
        shape.mtp_depth = v == 1 ? 2 : 0;
        const auto full = gpt_parameter_layout(shape);
        std::map<std::string, std::vector<float>> model, rebuilt;
        float x = 0;
        for (const auto& s : full) {
          auto& t = model[s.name];
          t.resize(s.numel);
          for (auto& e : t) e = x++;  // distinct values
          rebuilt[s.name].assign(s.numel, -1.0f);
        }
        std::map<std::string, size_t> owned;
        for (int p = 0; p < pp; ++p)
          for (int r = 0; r < tp; ++r) {
            const auto mine = gpt_rank_layout(shape, grid(tp, r, pp, p, v));
            for (const auto& s : mine) {
              std::vector<float> local(s.numel);
              extract_shard(s, model[s.name].data(), local.data());
              if (s.replica) {
                // A replica holds the same values as its owner's shard (a whole tensor, or the
                // same part of a split one).
                ParamSpec owner_spec = s;
                if (s.split_axis < 0) owner_spec.split_part = 0;
                std::vector<float> owner(s.numel);
                extract_shard(owner_spec, model[s.name].data(), owner.data());
                EXPECT_EQ(local, owner) << s.name;
                continue;
              }
              owned[s.name] += s.numel;
              insert_shard(s, local.data(), rebuilt[s.name].data());
            }
          }
        const std::string what =
            "tp=" + std::to_string(tp) + " pp=" + std::to_string(pp) + " v=" + std::to_string(v);
        for (const auto& s : full) {
          EXPECT_EQ(owned[s.name], s.numel) << what << " " << s.name;
          EXPECT_EQ(rebuilt[s.name], model[s.name]) << what << " " << s.name;
        }
      }
}

// The multi-token prediction modules' tensors follow the head on the last stage, and count in the
// model's FLOPs per token: their matrices (eh_proj [C, 2C] and a block's) and the head once more
// each (6 FLOPs per weight and token), and their blocks' attention.
TEST(ModelLayout, MultiTokenPredictionModulesFollowTheHead) {
  GptShape shape = kGpt2;
  shape.mtp_depth = 2;
  const auto specs = gpt_rank_layout(shape, grid(1, 0, 2, 1));
  std::vector<std::string> names;
  for (const auto& s : specs) names.push_back(s.name);
  const auto lnf = std::find(names.begin(), names.end(), "ln_f/weight");
  const auto first = std::find(names.begin(), names.end(), "mtp/0/ln_e/weight");
  ASSERT_NE(first, names.end());
  EXPECT_LT(lnf, first);
  EXPECT_EQ(names.back(), "mtp/1/ln_f/bias");
  EXPECT_TRUE(gpt_rank_layout(shape, grid(1, 0, 2, 0)).size() < specs.size());
  for (const auto& s : gpt_rank_layout(shape, grid(1, 0, 2, 0)))
    EXPECT_FALSE(s.name.starts_with("mtp/")) << s.name;
  GptShape plain = kGpt2;
  const double C = 768,
               layer = double(Gpt::num_parameters(kGpt2) -
                              Gpt::num_parameters(GptShape{11, 12, 768, 1024, 50257, 50304}));
  const double extra = Gpt::flops_per_token(shape) - Gpt::flops_per_token(plain);
  // Each module: a layer's parameters, eh_proj, three norms (weight and bias), and the head.
  const double module = layer + 2 * C * C + 6 * C + 50257 * C;
  EXPECT_DOUBLE_EQ(extra, 2 * (6 * module + 6 * C * 1024));
  // A model with modules allocates what its plan says (their activations, ids and targets, and
  // with experts in their blocks those routers' biases), in fp32 and bf16.
  for (int experts : {0, 4})
    for (Precision p : {Precision::fp32, Precision::bf16}) {
      GptShape small{2, 4, 64, 16, 300, 384};
      small.mtp_depth = 2;
      small.moe_experts = experts;
      small.moe_top_k = experts > 0 ? 2 : 0;
      auto be = make_cpu_backend();
      const size_t before = be->allocated_bytes();
      Gpt m(small, 2, *be, 1, {}, nullptr, p);
      EXPECT_EQ(be->allocated_bytes() - before,
                Gpt::memory_plan(small, 2, 1, {}, nullptr, p).total())
          << experts << " experts, " << precision_name(p);
    }
}

// Expert parallelism: each of the ep ranks holds a contiguous block of E/ep whole experts of
// every expert tensor (axis 0; with tp, of its tensor-parallel part), and the ranks' pieces
// reassemble the tensor, each element once; everything else as without experts.
TEST(ModelLayout, ExpertParallelRanksHoldWholeExpertsInBlocks) {
  GptShape shape = padded_for(2, GptShape{2, 4, 32, 16, 100, 0});
  shape.moe_experts = 4;
  shape.moe_top_k = 2;
  const auto full = gpt_parameter_layout(shape);
  for (int tp : {1, 2})
    for (int ep : {2, 4}) {
      std::map<std::string, std::vector<float>> rebuilt;
      for (int t = 0; t < tp; ++t)
        for (int r = 0; r < ep; ++r) {
          ModelParallel mp = grid(tp, t, 1, 0);
          mp.ep = ep;
          mp.ep_rank = r;
          const auto mine = gpt_rank_layout(shape, mp);
          ASSERT_EQ(mine.size(), full.size());
          for (size_t i = 0; i < mine.size(); ++i) {
            const ParamSpec& s = mine[i];
            ASSERT_EQ(s.name, full[i].name);
            EXPECT_EQ(s.shape, full[i].shape);
            EXPECT_EQ(s.expert_parallel, is_expert_tensor(s.name)) << s.name;
            if (!s.expert_parallel) continue;
            EXPECT_EQ(s.local[0], 4 / ep) << s.name;
            EXPECT_EQ(s.numel * size_t(ep * tp), full[i].numel) << s.name;
            EXPECT_EQ(s.expert_parts, ep);
            EXPECT_EQ(s.expert_part, r);
            EXPECT_EQ(s.split_parts, tp) << s.name;  // c_fc by rows, c_proj by columns
            // Element j of the full tensor holds j. Without tp rank r's block starts at
            // r·numel; every rank's elements are its experts' (E/ep of them from r·E/ep on).
            std::vector<float> whole(full[i].numel), local(s.numel);
            std::iota(whole.begin(), whole.end(), 0.0f);
            extract_shard(s, whole.data(), local.data());
            const size_t per_expert = full[i].numel / 4;
            if (tp == 1) {  // (braces: the assertion macro hides an else)
              EXPECT_EQ(local.front(), float(size_t(r) * s.numel)) << s.name;
            }
            EXPECT_EQ(size_t(local.front()) / per_expert, size_t(r * 4 / ep)) << s.name;
            EXPECT_EQ(size_t(local.back()) / per_expert, size_t((r + 1) * 4 / ep - 1)) << s.name;
            auto& u = rebuilt[s.name];
            u.resize(full[i].numel, -1.0f);
            std::vector<float> before = u;
            insert_shard(s, local.data(), u.data());
            size_t written = 0;
            for (size_t j = 0; j < u.size(); ++j)
              if (u[j] != before[j]) {
                EXPECT_EQ(before[j], -1.0f) << s.name << " element " << j << " written twice";
                ++written;
              }
            EXPECT_EQ(written, s.numel) << s.name;
          }
        }
      for (const auto& [name, u] : rebuilt)
        for (size_t j = 0; j < u.size(); ++j)
          ASSERT_EQ(u[j], float(j)) << name << " tp=" << tp << " ep=" << ep;
      EXPECT_EQ(rebuilt.size(), size_t(2 * shape.n_layer));  // c_fc and c_proj of every layer
    }
}

TEST(ModelLayout, MegatronSplits) {
  const GptShape shape = padded_for(2);
  const auto mine = gpt_rank_layout(shape, grid(2, 1, 1, 0));
  auto find = [&](const std::string& n) {
    for (const auto& s : mine)
      if (s.name == n) return s;
    ADD_FAILURE() << n;
    return ParamSpec{};
  };
  const int64_t C = 768;
  EXPECT_EQ(find("h/0/attn/c_attn/weight").local, (std::vector<int64_t>{3 * C / 2, C}));
  EXPECT_EQ(find("h/0/attn/c_attn/weight").split_blocks, 3);  // q | k | v, by heads
  EXPECT_EQ(find("h/0/attn/c_proj/weight").local, (std::vector<int64_t>{C, C / 2}));
  EXPECT_EQ(find("h/0/attn/c_proj/weight").split_axis, 1);  // row-parallel
  EXPECT_EQ(find("h/0/mlp/c_fc/weight").local, (std::vector<int64_t>{2 * C, C}));
  EXPECT_EQ(find("h/0/mlp/c_proj/weight").local, (std::vector<int64_t>{C, 2 * C}));
  EXPECT_EQ(find("wte/weight").local, (std::vector<int64_t>{shape.padded_vocab_size / 2, C}));
  EXPECT_TRUE(find("h/0/ln_1/weight").replica);  // tp rank 1's copy
  EXPECT_TRUE(find("h/0/attn/c_proj/bias").replica);
  EXPECT_FALSE(find("h/0/mlp/c_fc/bias").replica);
}

// Grouped-query attention, 12 query heads over 4 key/value heads: c_attn [C + 2·4·hd, C] is 5
// blocks of 4 heads (three of queries, k, v). On every rank of tp = 2 and 4, each local query
// head hl reads local key/value head hl % (4/tp) (the ops' rule on the rank's own heads), and
// that must be the global key/value head of its global query head h, h % 4; and the rank's
// attn.c_proj input columns must be those of its query heads, in its local order.
TEST(ModelLayout, GroupedQueryShardsKeepEachQueryHeadsKeysAndValues) {
  GptShape shape{2, 12, 96, 16, 1000, 0};
  shape.n_kv_head = 4;
  const int hd = 8, NKV = 4;
  const auto full = gpt_parameter_layout(shape);
  for (const auto& spec : full) {
    if (spec.name == "h/0/attn/c_attn/weight") {
      EXPECT_EQ(spec.shape, (std::vector<int64_t>{96 + 2 * 4 * hd, 96}));
    }
  }
  for (int tp : {2, 4}) {
    const GptShape s = padded_for(tp, shape);
    for (int r = 0; r < tp; ++r) {
      ParamSpec c_attn, c_proj;
      for (const auto& spec : gpt_rank_layout(s, grid(tp, r, 1, 0))) {
        if (spec.name == "h/0/attn/c_attn/bias") c_attn = spec;
        if (spec.name == "h/0/attn/c_proj/weight") c_proj = spec;
      }
      std::vector<float> columns(size_t(96) * 96), proj(c_proj.numel);
      for (size_t i = 0; i < columns.size(); ++i) columns[i] = float(i % 96);
      extract_shard(c_proj, columns.data(), proj.data());
      ASSERT_EQ(c_attn.split_blocks, 5);
      std::vector<float> rows(size_t(c_attn.shape[0])), local(c_attn.numel);
      std::iota(rows.begin(), rows.end(), 0.0f);  // each element its row of the full tensor
      extract_shard(c_attn, rows.data(), local.data());
      const int NHl = 12 / tp, NKVl = NKV / tp;
      ASSERT_EQ(local.size(), size_t(NHl + 2 * NKVl) * hd);
      for (int hl = 0; hl < NHl; ++hl) {
        const int h = int(local[size_t(hl) * hd]) / hd;  // global query head
        const int k = (int(local[size_t(NHl + hl % NKVl) * hd]) - 96) / hd;
        const int v = (int(local[size_t(NHl + NKVl + hl % NKVl) * hd]) - 96) / hd - NKV;
        EXPECT_EQ(k, h % NKV) << "tp=" << tp << " rank " << r << " local head " << hl;
        EXPECT_EQ(v, h % NKV) << "tp=" << tp << " rank " << r << " local head " << hl;
        for (int e = 1; e < hd; ++e)  // whole heads
          EXPECT_EQ(local[size_t(hl) * hd + e], local[size_t(hl) * hd] + e);
        for (int e = 0; e < hd; ++e)  // c_proj reads local head hl's output as global head h's
          EXPECT_EQ(proj[size_t(hl) * hd + e], float(h * hd + e)) << "c_proj, local head " << hl;
      }
    }
  }
}

TEST(ModelLayout, PerRankParametersShrinkWithTheGrid) {
  const auto whole = gpt_parameter_layout(kGpt2);
  auto floats = [](const std::vector<ParamSpec>& specs, bool layers) {
    size_t n = 0;
    for (const auto& s : specs)
      if (s.name.starts_with("h/") == layers) n += s.numel;
    return n;
  };
  const size_t layers = floats(whole, true);
  for (int tp : {1, 2, 4})
    for (int pp : {1, 2, 4}) {
      const GptShape shape = padded_for(tp);
      for (int p = 0; p < pp; ++p) {
        const auto mine = gpt_rank_layout(shape, grid(tp, 0, pp, p));
        // Layers: the split tensors exactly 1/(tp·pp); LayerNorms and row-parallel biases (6·C
        // per layer) are replicated.
        const size_t replicated = size_t(12 / pp) * 6 * 768;
        EXPECT_EQ(floats(mine, true), (layers - 12 * 6 * 768) / size_t(tp * pp) + replicated)
            << "tp=" << tp << " pp=" << pp << " stage " << p;
        // Embeddings: wte/tp on the first and the last stage, wpe on the first, ln_f on the last.
        size_t emb = 0;
        if (p == 0) emb += size_t(shape.padded_vocab_size / tp) * 768 + 1024 * 768;
        if (p == pp - 1) emb += 2 * 768 + (pp > 1 ? size_t(shape.padded_vocab_size / tp) * 768 : 0);
        EXPECT_EQ(floats(mine, false), emb) << "tp=" << tp << " pp=" << pp << " stage " << p;
      }
    }
}

// Uneven stages (parallel.stage_layers): each stage holds its count of consecutive layers, zero
// included, and the stages together hold every layer once, in order.
TEST(ModelLayout, UnevenStagesHoldConsecutiveLayers) {
  for (const std::vector<int>& split :
       {std::vector<int>{4, 4, 4, 0}, {9, 3}, {12, 0}, {1, 2, 9, 0}, {0, 12}}) {
    const int pp = int(split.size());
    std::vector<int> seen;
    for (int p = 0; p < pp; ++p) {
      ModelParallel mp = grid(1, 0, pp, p);
      mp.stage_layers = split;
      EXPECT_EQ(mp.chunk_layers(p, 12), split[size_t(p)]);
      EXPECT_EQ(mp.rank_layers(12), split[size_t(p)]);
      int layers = 0;
      for (const auto& s : gpt_rank_layout(kGpt2, mp))
        if (s.name.ends_with("/ln_1/weight")) {
          seen.push_back(std::stoi(s.name.substr(2)));
          ++layers;
        }
      EXPECT_EQ(layers, split[size_t(p)]) << "stage " << p;
    }
    std::vector<int> all(12);
    for (int i = 0; i < 12; ++i) all[size_t(i)] = i;
    EXPECT_EQ(seen, all);
  }
}

}  // namespace
}  // namespace triad

namespace triad {
namespace {

// μP (GptShape::mup_base_width, m = 4 here): the same draws, the hidden matrices (c_attn,
// attn.c_proj, c_fc, mlp.c_proj; the residual projections' 0.02/sqrt(2L) too) at 1/sqrt(m) = 1/2
// of the standard parametrization's values, every other tensor (embeddings, norms, biases) the
// same bits.
// The tensors of `sp` initialized under μP at m = 4 against the standard draws of the same seed:
// those `hidden` names halved, every other one the same bits. Returns how many were halved.
int mup_halved_tensors(const GptShape& sp, const std::function<bool(const std::string&)>& hidden) {
  GptShape mup = sp;
  mup.mup_base_width = sp.n_embd / 4;
  EXPECT_EQ(mup.mup_mult(), 4.0);
  auto be = make_cpu_backend();
  Gpt a(sp, 1, *be), b(mup, 1, *be);
  a.init(3);
  b.init(3);
  int halved = 0;
  for (const ParamSpec& s : a.specs()) {
    const float* x = a.params() + s.offset;
    const float* y = b.params() + s.offset;
    const bool h = hidden(s.name);
    halved += h ? 1 : 0;
    for (size_t i = 0; i < s.numel; ++i) {
      if (h)
        EXPECT_NEAR(y[i], 0.5f * x[i], 1e-7f * std::abs(x[i])) << s.name << " " << i;
      else
        EXPECT_EQ(y[i], x[i]) << s.name << " " << i;
      if (::testing::Test::HasFailure()) return halved;
    }
  }
  return halved;
}

TEST(ModelLayout, MupInitScalesTheHiddenMatrices) {
  const GptShape sp{2, 4, 256, 32, 300, 384};
  const int halved = mup_halved_tensors(sp, [&](const std::string& name) {
    return name.starts_with("h/") && name.ends_with("/weight") &&
           name.find("ln_") == std::string::npos;
  });
  EXPECT_EQ(halved, 8);
}

// ... and with a mixture of experts: the experts' and the shared experts' matrices are hidden
// (halved), the router [E, C] and the shared experts' gate [1, C] are readouts of a fixed
// width (their logits are multiplied by 1/m instead): the same bits.
TEST(ModelLayout, MupInitLeavesTheRouterAndGate) {
  GptShape sp{2, 4, 256, 32, 300, 384};
  sp.moe_experts = 4;
  sp.moe_top_k = 2;
  sp.moe_shared_hidden = 64;
  sp.moe_shared_gate = true;
  const int halved = mup_halved_tensors(sp, [](const std::string& name) {
    for (const char* m : {"attn/c_attn/weight", "attn/c_proj/weight", "experts/c_fc/weight",
                          "experts/c_proj/weight", "shared/c_fc/weight", "shared/c_proj/weight"})
      if (name.ends_with(m)) return true;
    return false;  // the router and the gate among them
  });
  EXPECT_EQ(halved, 12);
}

// A shape built by hand (tests, tools) gets the config's checks of partial rotary too: an odd
// count, one wider than the head or one without rope would read the wrong angles or past a head.
TEST(ModelLayout, PartialRotaryIsChecked) {
  auto be = make_cpu_backend();
  GptShape s{1, 2, 32, 8, 64, 128};  // heads of 16
  s.rope = true;
  for (int ok : {0, 2, 8, 16}) {
    s.rotary_dim = ok;
    EXPECT_NO_THROW(Gpt(s, 1, *be)) << ok;
  }
  for (int bad : {3, 18, -2}) {
    s.rotary_dim = bad;
    EXPECT_THROW(Gpt(s, 1, *be), triad::Error) << bad;
  }
  s.rope = false;
  s.rotary_dim = 8;
  EXPECT_THROW(Gpt(s, 1, *be), triad::Error);
}

}  // namespace
}  // namespace triad
