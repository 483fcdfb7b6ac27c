// validate(): every check of a resolved config against the model, the grid and the backend,
// each failure one message naming the key.

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <tuple>

#include "triad/core/comma_list.h"
#include "triad/core/error.h"
#include "triad/core/thread_count.h"
#include "triad/data/blend.h"
#include "triad/data/fim.h"
#include "triad/io/checkpoint.h"         // kMaxCheckpointStep
#include "triad/kernels/cuda_backend.h"  // cuda_flash_head_dim, cuda_flash_drops
#include "triad/kernels/moe_routing.h"
#include "triad/model/gpt.h"
#include "triad/optim/optimizer.h"  // frozen_tensor: a name against comma-separated globs
#include "triad/parallel/pipeline_schedule.h"
#include "triad/train/config.h"
#include "triad/train/run_plan.h"
#include "triad/train/sampler.h"

namespace triad {

namespace {

void check(bool ok, const std::string& key, const std::string& problem) {
  TRIAD_CHECK(ok, "config: ", key, " ", problem);
}

}  // namespace

std::vector<std::pair<std::string, std::string>> parse_val_sets(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> sets;
  if (text.find_first_not_of(" \t") == std::string::npos) return sets;
  for (const std::string& item : split_comma_list(text)) {
    check(!item.empty(), "eval.sets", "has an empty entry (two commas, or one at an end)");
    const auto eq = item.find('=');
    const std::string name = trim_blanks(item.substr(0, eq)),
                      glob = eq == std::string::npos ? "" : trim_blanks(item.substr(eq + 1));
    check(eq != std::string::npos && !glob.empty(), "eval.sets", "'" + item + "' is not name=GLOB");
    check(!name.empty() && name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS"
                                                  "TUVWXYZ0123456789_-") == std::string::npos,
          "eval.sets", "name '" + name + "' must be letters, digits, _ or -");
    for (const auto& [n, g] : sets) check(n != name, "eval.sets", "name '" + name + "' repeats");
    sets.emplace_back(name, glob);
  }
  return sets;
}

void validate(const Config& c, int world_size) {
  const auto& m = c.model;
  // The grid first: the checks below divide by its sizes and multiply them (in int, which a
  // product of sizes larger than any job would overflow).
  for (const auto& [key, v] :
       {std::pair{"parallel.tp", c.parallel.tp}, std::pair{"parallel.pp", c.parallel.pp},
        std::pair{"parallel.cp", c.parallel.cp}, std::pair{"parallel.ep", c.parallel.ep}})
    check(v >= 1, key, "must be >= 1 (got " + std::to_string(v) + ")");
  const int64_t grid = int64_t(c.parallel.tp) * c.parallel.pp * c.parallel.cp;
  check(grid <= world_size && world_size % grid == 0, "parallel.tp",
        "· parallel.pp · parallel.cp (" + std::to_string(c.parallel.tp) + " · " +
            std::to_string(c.parallel.pp) + " · " + std::to_string(c.parallel.cp) +
            ") must divide the number of ranks (" + std::to_string(world_size) + ")");
  check(c.parallel.ep <= world_size, "parallel.ep",
        "= " + std::to_string(c.parallel.ep) + " must divide the data-parallel size, at most the " +
            "number of ranks (" + std::to_string(world_size) + ")");
  check(m.n_layer >= 1, "model.n_layer", "must be >= 1 (got " + std::to_string(m.n_layer) + ")");
  check(m.n_head >= 1, "model.n_head", "must be >= 1 (got " + std::to_string(m.n_head) + ")");
  check(m.n_embd >= 1, "model.n_embd", "must be >= 1 (got " + std::to_string(m.n_embd) + ")");
  // (gpt_shape.h's bounds, which checkpoints are read against too)
  for (const auto& [key, v, most] : {std::tuple{"model.n_layer", int64_t(m.n_layer), kMaxLayers},
                                     std::tuple{"model.n_head", int64_t(m.n_head), kMaxHeads},
                                     std::tuple{"model.n_embd", int64_t(m.n_embd), kMaxWidth},
                                     std::tuple{"model.seq_len", int64_t(m.seq_len), kMaxSeqLen}})
    check(v <= most, key,
          "must be <= " + std::to_string(most) + " (got " + std::to_string(v) + ")");
  check(m.mlp_hidden <= (1 << 24), "model.mlp_hidden",
        "must be <= 16777216 (got " + std::to_string(m.mlp_hidden) + ")");
  check(m.head_dim >= 0 && m.head_dim <= 4096, "model.head_dim",
        "must be in [0, 4096] (0: n_embd / n_head; got " + std::to_string(m.head_dim) + ")");
  check(m.head_dim > 0 || m.n_embd % m.n_head == 0, "model.n_head",
        "(" + std::to_string(m.n_head) + ") must divide model.n_embd (" + std::to_string(m.n_embd) +
            ")");
  check(m.kv_lora_rank >= 0 && m.q_lora_rank >= 0 && m.qk_nope_head_dim >= 0 &&
            m.qk_rope_head_dim >= 0 && m.v_head_dim >= 0,
        "model.kv_lora_rank",
        "and the other MLA sizes (q_lora_rank, qk_nope_head_dim, "
        "qk_rope_head_dim, v_head_dim) must be >= 0");
  if (m.mla()) {
    const std::string dims = "kv_lora_rank " + std::to_string(m.kv_lora_rank) + ", q_lora_rank " +
                             std::to_string(m.q_lora_rank) + ", qk_nope_head_dim " +
                             std::to_string(m.qk_nope_head_dim) + ", qk_rope_head_dim " +
                             std::to_string(m.qk_rope_head_dim) + ", v_head_dim " +
                             std::to_string(m.v_head_dim);
    // Even sizes: bf16 rows are moved as 32-bit words.
    check(m.qk_rope_head_dim > 0 && m.v_head_dim > 0 && m.kv_lora_rank % 2 == 0 &&
              m.q_lora_rank % 2 == 0 && m.qk_nope_head_dim % 2 == 0 &&
              m.qk_rope_head_dim % 2 == 0 && m.v_head_dim % 2 == 0,
          "model.kv_lora_rank",
          "> 0 (multi-head latent attention) needs model.qk_rope_head_dim and model.v_head_dim "
          "> 0 and every MLA size even (" +
              dims + ")");
    check(m.position == "rope", "model.kv_lora_rank",
          "> 0 (multi-head latent attention) needs model.position = rope (its rotated key)");
    check(m.head_dim == 0 && m.rotary_dim == 0, "model.kv_lora_rank",
          "> 0 sets the heads' widths itself: leave model.head_dim and model.rotary_dim at 0 (" +
              dims + ")");
    check(m.n_kv_head == 0 || m.n_kv_head == m.n_head, "model.n_kv_head",
          "must be 0 or model.n_head with multi-head latent attention (every head has its keys "
          "and values)");
    check(m.mla_norm_eps == 0 ||
              (std::isfinite(m.mla_norm_eps) && m.mla_norm_eps > 0 && m.mla_norm_eps <= 0.1),
          "model.mla_norm_eps", "must be 0 (model.norm_eps) or in (0, 0.1]");
    check(!m.qk_norm && m.clip_qkv == 0 && !m.qkv_bias, "model.kv_lora_rank",
          "> 0 (multi-head latent attention) is not built with model.qk_norm, model.clip_qkv or "
          "model.qkv_bias (it has no c_attn)");
  } else {
    check(m.q_lora_rank == 0 && m.qk_nope_head_dim == 0 && m.qk_rope_head_dim == 0 &&
              m.v_head_dim == 0 && m.mla_norm_eps == 0,
          "model.kv_lora_rank",
          "= 0: model.q_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim and "
          "mla_norm_eps are for multi-head latent attention (kv_lora_rank > 0)");
  }
  check(m.n_kv_head >= 0, "model.n_kv_head",
        "must be >= 0 (0: model.n_head; got " + std::to_string(m.n_kv_head) + ")");
  check(m.n_kv_head == 0 || m.n_head % m.n_kv_head == 0, "model.n_kv_head",
        "(" + std::to_string(m.n_kv_head) + ") must divide model.n_head (" +
            std::to_string(m.n_head) + ")");
  check(m.seq_len >= 1, "model.seq_len", "must be >= 1 (got " + std::to_string(m.seq_len) + ")");
  // Above 65536 the token shards must be the uint32 ones (each shard's header says which).
  check(m.vocab_size >= 2 && m.vocab_size <= kMaxVocab, "model.vocab_size",
        "must be in [2, " + std::to_string(kMaxVocab) + "] (got " + std::to_string(m.vocab_size) +
            ")");
  check(m.position == "learned" || m.position == "rope", "model.position",
        "must be learned or rope (got '" + m.position + "')");
  check(m.position == "rope" || m.rope_scaling == "none", "model.rope_scaling",
        "needs model.position = rope");
  check(m.position == "rope" || m.rotary_dim == 0, "model.rotary_dim",
        "needs model.position = rope");
  check(m.norm == "layernorm" || m.norm == "rmsnorm", "model.norm",
        "must be layernorm or rmsnorm (got '" + m.norm + "')");
  GptShape mlp_probe;
  check(set_mlp(mlp_probe, m.mlp), "model.mlp",
        "must be gelu, gelu_exact, swiglu, geglu, relu2 or relu (got '" + m.mlp + "')");
  check(std::isfinite(m.embed_scale) && m.embed_scale > 0 && m.embed_scale <= 1e4,
        "model.embed_scale", "must be in (0, 1e4] (1: none)");
  check(std::isfinite(m.norm_eps) && m.norm_eps > 0 && m.norm_eps <= 0.1, "model.norm_eps",
        "must be in (0, 0.1]");
  check(!(m.qkv_bias && m.bias), "model.qkv_bias",
        "applies with model.bias = false (with biases, c_attn has its bias anyway)");
  check(!(m.mlp_bias && m.bias), "model.mlp_bias",
        "applies with model.bias = false (with biases, the MLP has its biases anyway)");
  check(!(m.norm_bias && m.bias), "model.norm_bias",
        "applies with model.bias = false (with biases, the LayerNorms have theirs anyway)");
  check(!(m.norm_bias && m.norm == "rmsnorm"), "model.norm_bias",
        "needs model.norm = layernorm (an RMSNorm has no bias)");
  check(m.sliding_window >= 0, "model.sliding_window",
        "must be >= 0 (0: no window; got " + std::to_string(m.sliding_window) + ")");
  check(nope_every_built(m), "model.nope_every",
        "must be in [0, 2^30], and > 0 only with model.position = rope (the layers that do not "
        "rotate) and without multi-head latent attention (model.kv_lora_rank > 0)");
  check(m.full_attention_every >= 0, "model.full_attention_every",
        "must be >= 0 (0: every layer keeps to the window)");
  check(m.full_attention_every == 0 || m.sliding_window > 0, "model.full_attention_every",
        "needs model.sliding_window > 0 (the other layers' window)");
  check(!m.full_attention_first || m.full_attention_every > 0, "model.full_attention_first",
        "needs model.full_attention_every > 0 (which layers attend to the whole context)");
  check(std::isfinite(m.logit_softcap) && m.logit_softcap >= 0 && m.logit_softcap <= 1e4,
        "model.logit_softcap", "must be in [0, 1e4] (0: no cap)");
  check(std::isfinite(m.attn_softcap) && m.attn_softcap >= 0 && m.attn_softcap <= 1e4,
        "model.attn_softcap", "must be in [0, 1e4] (0: no cap)");
  check(std::isfinite(m.clip_qkv) && m.clip_qkv >= 0 && m.clip_qkv <= 1e4, "model.clip_qkv",
        "must be in [0, 1e4] (0: no clamp)");
  check(std::isfinite(m.glu_alpha) && m.glu_alpha > 0 && m.glu_alpha <= 100, "model.glu_alpha",
        "must be in (0, 100] (1: SiLU)");
  check(m.glu_limit == 0 || (m.glu_limit >= 1e-6 && m.glu_limit <= 1e4), "model.glu_limit",
        "must be 0 (no clamps) or in [1e-6, 1e4]");
  check(std::isfinite(m.glu_offset) && std::abs(m.glu_offset) <= 1e4, "model.glu_offset",
        "must be in [-1e4, 1e4] (0: none)");
  check(m.mlp == "swiglu" || (m.glu_alpha == 1 && m.glu_limit == 0 && m.glu_offset == 0),
        "model.glu_alpha, glu_limit and glu_offset",
        "shape SwiGLU's activation: they need model.mlp = swiglu (got " + m.mlp + ")");
  check(!m.qk_norm_full || m.qk_norm, "model.qk_norm_full", "needs model.qk_norm = true");
  check(m.clip_qkv == 0 || !m.qk_norm, "model.clip_qkv",
        "is not built with model.qk_norm (both would keep c_attn's output)");
  check(std::isfinite(m.logit_scale) && m.logit_scale > 0 && m.logit_scale <= 1e4,
        "model.logit_scale", "must be in (0, 1e4] (1: none)");
  check(std::isfinite(m.residual_scale) && m.residual_scale > 0 && m.residual_scale <= 1e4,
        "model.residual_scale", "must be in (0, 1e4] (1: none)");
  check(!m.head_bias || !m.tie_embeddings, "model.head_bias",
        "needs model.tie_embeddings = false (the bias belongs to an output layer of its own)");
  check(!m.shared_norm || m.parallel_residual, "model.shared_norm",
        "needs model.parallel_residual = true (one norm serves parallel branches only)");
  check(std::isfinite(m.init_std) && m.init_std > 0 && m.init_std <= 1, "model.init_std",
        "must be in (0, 1]");
  check(m.init_truncation == 0 || (m.init_truncation >= 1 && m.init_truncation <= 10),
        "model.init_truncation", "must be 0 (none) or in [1, 10] (multiples of σ)");
  check(m.pre_norm || m.branch_norm, "model.pre_norm",
        "= false needs model.branch_norm = true (a block must normalize somewhere)");
  check(m.pre_norm || !m.parallel_residual, "model.pre_norm",
        "= false is built for sequential blocks only (not with model.parallel_residual)");
  check(std::isfinite(m.attn_scale) && m.attn_scale >= 0 && m.attn_scale <= 100, "model.attn_scale",
        "must be in [0, 100] (0: 1/sqrt(head width))");
  check(m.mup_base_width >= 0 && m.mup_base_width <= (1 << 20), "model.mup_base_width",
        "must be in [0, 2^20] (0: no μP; got " + std::to_string(m.mup_base_width) + ")");
  check(m.mup_base_width == 0 || c.optim.name != "sgd", "model.mup_base_width",
        "μP's learning-rate rules here are Adam's (Muon's matrices keep Muon's own; Lion's "
        "sign update scales as Adam's): use optim.name = adamw, lion or muon, not sgd");
  check(m.moe_experts >= 0 && m.moe_experts <= kMaxExperts, "model.moe_experts",
        "must be in [0, " + std::to_string(kMaxExperts) + "] (0: a dense MLP; got " +
            std::to_string(m.moe_experts) + ")");
  check(m.moe_shared_hidden >= 0 && (m.moe_shared_hidden == 0 || m.moe_experts > 0),
        "model.moe_shared_hidden",
        "must be >= 0, and > 0 only with model.moe_experts (got " +
            std::to_string(m.moe_shared_hidden) + ")");
  check(!m.moe_shared_gate || m.moe_shared_hidden > 0, "model.moe_shared_gate",
        "gates the shared experts: it needs model.moe_shared_hidden > 0");
  check(!m.moe_bias || m.moe_experts > 0, "model.moe_bias",
        "gives the router and the experts biases: it needs model.moe_experts > 0");
  check(
      m.mtp_depth >= 0 && m.mtp_depth <= 16, "model.mtp_depth",
      "must be 0 .. 16 (multi-token prediction modules; got " + std::to_string(m.mtp_depth) + ")");
  check((m.moe_experts > 0 || (m.moe_first_dense == 0 && m.moe_every == 1)) &&
            m.moe_first_dense >= 0 && m.moe_every >= 1 &&
            (m.moe_experts == 0 || m.moe_first_dense + m.moe_every <= m.n_layer),
        "model.moe_first_dense",
        "and model.moe_every must leave a layer with experts: model.moe_experts > 0, "
        "moe_first_dense >= 0, moe_every >= 1 and moe_first_dense + moe_every <= n_layer (got " +
            std::to_string(m.moe_first_dense) + ", " + std::to_string(m.moe_every) + ", n_layer " +
            std::to_string(m.n_layer) + ")");
  check(m.moe_dense_hidden >= 0 &&
            (m.moe_dense_hidden == 0 ||
             (m.moe_experts > 0 && (m.moe_first_dense > 0 || m.moe_every > 1))),
        "model.moe_dense_hidden",
        "must be >= 0, and > 0 only with model.moe_experts and dense layers among the experts' "
        "(model.moe_first_dense > 0 or model.moe_every > 1; got " +
            std::to_string(m.moe_dense_hidden) + ")");
  check(!(m.mlp_bias && m.moe_experts > 0 && m.moe_first_dense == 0 && m.moe_every == 1),
        "model.mlp_bias", "has no MLP to give biases: every layer has experts, which have none");
  check(m.moe_capacity_factor >= 0 && (m.moe_capacity_factor == 0 || m.moe_experts > 0),
        "model.moe_capacity_factor",
        "must be >= 0, and > 0 only with model.moe_experts (0: dropless)");
  check(m.moe_score == "softmax" || m.moe_score == "sigmoid", "model.moe_score",
        "must be softmax or sigmoid (got \"" + m.moe_score + "\")");
  check(m.moe_score == "softmax" || m.moe_experts > 0, "model.moe_score",
        "= sigmoid scores a router: it needs model.moe_experts > 0");
  {
    const int E = m.moe_experts, G = m.moe_groups, M = m.moe_group_top_k;
    check(G >= 1 && (G == 1 || (E > 0 && E % G == 0 && E / G >= 2)), "model.moe_groups",
          "must be 1 (no groups), or with model.moe_experts divide its " + std::to_string(E) +
              " experts into groups of 2 or more (got " + std::to_string(G) + ")");
    const bool top_k_valid = m.moe_top_k >= 1 && m.moe_top_k <= E;  // else its own error below
    check(
        group_settings_valid(E, G, M, top_k_valid ? m.moe_top_k : 1), "model.moe_group_top_k",
        "must be 1 without model.moe_groups, else in [1, model.moe_groups = " + std::to_string(G) +
            "] with at least model.moe_top_k = " + std::to_string(m.moe_top_k) +
            " experts in that many groups (got " + std::to_string(M) + ")");
  }
  check(m.moe_group_score == "top2" || m.moe_group_score == "max", "model.moe_group_score",
        "must be top2 or max (got \"" + m.moe_group_score + "\")");
  check(m.moe_group_score == "top2" || m.moe_groups > 1, "model.moe_group_score",
        "= max scores groups of experts: it needs model.moe_groups > 1");
  check(routed_scale_valid(m.moe_routed_scale) && (m.moe_experts > 0 || m.moe_routed_scale == 1),
        "model.moe_routed_scale",
        "must be a number in (0, 1e6], and other than 1 only with model.moe_experts");
  if (m.moe_experts > 0) {
    check(m.moe_top_k >= 1 && m.moe_top_k <= m.moe_experts, "model.moe_top_k",
          "must be in [1, model.moe_experts = " + std::to_string(m.moe_experts) + "] (got " +
              std::to_string(m.moe_top_k) + ")");
    check(m.moe_top_k > 1 || !m.moe_normalize, "model.moe_normalize",
          "= true with model.moe_top_k = 1 makes every gate 1: the router would learn from the "
          "load-balancing loss alone; set model.moe_normalize = false (Switch's top-1: the gate is "
          "the router's probability)");
  }
  check(m.mlp_hidden >= 0, "model.mlp_hidden",
        "must be >= 0 (0: the default width; got " + std::to_string(m.mlp_hidden) + ")");
  if (m.position == "rope") {
    check(m.hd() % 2 == 0, "model.position",
          "rope needs an even head dimension (model.head_dim, or n_embd / n_head: " +
              std::to_string(m.hd()) + ")");
    check(std::isfinite(m.rope_theta) && m.rope_theta > 1, "model.rope_theta",
          "must be a finite number > 1");
    check(m.rope_local_theta == 0 || (std::isfinite(m.rope_local_theta) && m.rope_local_theta > 1),
          "model.rope_local_theta", "must be 0 or a finite number > 1");
    check(m.rope_local_theta == 0 || m.sliding_window > 0, "model.rope_local_theta",
          "needs model.sliding_window > 0 (the windowed layers whose base it is)");
    check(rope_local_theta_built(m), "model.rope_local_theta",
          "is not built with YaRN's score scale (model.rope_yarn_mscale_all_dim > 0) or "
          "multi-head latent attention (model.kv_lora_rank > 0)");
    check(m.rotary_dim >= 0 && m.rotary_dim % 2 == 0 && m.rotary_dim <= m.hd(), "model.rotary_dim",
          "must be even and in [0, " + std::to_string(m.hd()) +
              "] (the head's width; 0: every value rotates; got " + std::to_string(m.rotary_dim) +
              ")");
    check(m.rope_scaling == "none" || m.rope_scaling == "llama3" || m.rope_scaling == "yarn" ||
              m.rope_scaling == "longrope" || m.rope_scaling == "linear",
          "model.rope_scaling",
          "must be none, llama3, yarn, longrope or linear (got '" + m.rope_scaling + "')");
    if (m.rope_scaling == "linear")
      check(std::isfinite(m.rope_scaling_factor) && m.rope_scaling_factor >= 1,
            "model.rope_scaling_factor", "must be a finite number >= 1");
    if (m.rope_scaling == "longrope") {
      check(std::isfinite(m.rope_scaling_factor) && m.rope_scaling_factor >= 1,
            "model.rope_scaling_factor", "must be a finite number >= 1");
      check(m.rope_original_positions >= (m.rope_scaling_factor > 1 ? 2 : 1),
            "model.rope_original_positions",
            "must be >= 1, and >= 2 with model.rope_scaling_factor > 1 (the scale divides by its "
            "logarithm)");
      parse_rope_factors(m.rope_short_factor, "model.rope_short_factor", m.rotated_pairs());
      parse_rope_factors(m.rope_long_factor, "model.rope_long_factor", m.rotated_pairs());
    }
    if (m.rope_scaling == "yarn") {
      check(std::isfinite(m.rope_scaling_factor) && m.rope_scaling_factor >= 1,
            "model.rope_scaling_factor", "must be a finite number >= 1");
      check(std::isfinite(m.rope_yarn_beta_slow) && m.rope_yarn_beta_slow > 0,
            "model.rope_yarn_beta_slow", "must be a finite number > 0");
      // (Equal: the ramp is a step, as Kimi K2's 1 and 1.)
      check(std::isfinite(m.rope_yarn_beta_fast) && m.rope_yarn_beta_fast >= m.rope_yarn_beta_slow,
            "model.rope_yarn_beta_fast", "must be a finite number >= model.rope_yarn_beta_slow");
      check(m.rope_original_positions >= 1, "model.rope_original_positions", "must be >= 1");
      check(
          std::isfinite(m.rope_yarn_mscale) && m.rope_yarn_mscale >= 0 && m.rope_yarn_mscale <= 100,
          "model.rope_yarn_mscale", "must be a finite number in [0, 100]");
      check(std::isfinite(m.rope_yarn_mscale_all_dim) && m.rope_yarn_mscale_all_dim >= 0 &&
                m.rope_yarn_mscale_all_dim <= 100,
            "model.rope_yarn_mscale_all_dim", "must be a finite number in [0, 100]");
    }
    if (m.rope_scaling == "llama3") {
      check(std::isfinite(m.rope_scaling_factor) && m.rope_scaling_factor >= 1,
            "model.rope_scaling_factor", "must be a finite number >= 1");
      check(std::isfinite(m.rope_low_freq_factor) && m.rope_low_freq_factor > 0,
            "model.rope_low_freq_factor", "must be a finite number > 0");
      check(std::isfinite(m.rope_high_freq_factor) &&
                m.rope_high_freq_factor > m.rope_low_freq_factor,
            "model.rope_high_freq_factor", "must be a finite number > model.rope_low_freq_factor");
      check(m.rope_original_positions >= 1, "model.rope_original_positions", "must be >= 1");
    }
  }
  check(m.rope_yarn_truncate || (m.position == "rope" && m.rope_scaling == "yarn"),
        "model.rope_yarn_truncate", "false shapes YaRN's ramp: it needs model.rope_scaling = yarn");
  // YaRN's two scales mean nothing elsewhere: not a silent no-op.
  if (m.position != "rope" || m.rope_scaling != "yarn") {
    check(m.rope_yarn_mscale == 1.0, "model.rope_yarn_mscale",
          "is YaRN's: it needs model.position = rope and model.rope_scaling = yarn");
    check(m.rope_yarn_mscale_all_dim == 0.0, "model.rope_yarn_mscale_all_dim",
          "is YaRN's: it needs model.position = rope and model.rope_scaling = yarn");
  }
  const auto& t = c.train;
  // (A checkpoint's file name holds the step in 8 digits.)
  const std::string most = std::to_string(kMaxCheckpointStep);
  check(t.sequences <= 0 || t.steps <= kMaxCheckpointStep, "train.sequences",
        "= " + std::to_string(t.sequences) + " takes more than " + most + " steps at these " +
            "batch sizes (train.steps' bound: a checkpoint's name holds the step in 8 digits)");
  check(t.steps >= 0 && t.steps <= kMaxCheckpointStep, "train.steps",
        "must be in [0, " + most + "] (got " + std::to_string(t.steps) + ")");
  check(t.sequences >= 0, "train.sequences",
        "must be >= 0 (got " + std::to_string(t.sequences) + ")");
  check(t.batch_size >= 1, "train.batch_size",
        "must be >= 1 (got " + std::to_string(t.batch_size) + ")");
  check(t.micro_batch_size >= 1, "train.micro_batch_size",
        "must be >= 1 (got " + std::to_string(t.micro_batch_size) + ")");
  const int dp = int(world_size / grid);  // (grid divides world_size, checked first)
  check(t.batch_size % (int64_t(t.micro_batch_size) * dp) == 0, "train.batch_size",
        "(" + std::to_string(t.batch_size) + ") must be divisible by micro_batch_size · dp (" +
            std::to_string(t.micro_batch_size) + " · " + std::to_string(dp) + ")");
  // Every batch of a ramp is split as batch_size is: START and INCREMENT divisible like it.
  const BatchRampup ramp = parse_batch_rampup(t.batch_rampup, t.batch_size);
  if (ramp.on()) {
    const int64_t unit = int64_t(t.micro_batch_size) * dp;
    check(ramp.start % unit == 0 && ramp.increment % unit == 0, "train.batch_rampup",
          "'" + t.batch_rampup + "': START and INCREMENT must be multiples of micro_batch_size · " +
              "dp (" + std::to_string(t.micro_batch_size) + " · " + std::to_string(dp) +
              "), as every batch of the ramp is split into micro-batches on each rank");
  }
  parse_window_warmup(t.window_warmup, c.model);  // throws naming the key
  if (!trim_blanks(t.freeze).empty())
    for (const std::string& p : split_comma_list(t.freeze))
      check(!p.empty(), "train.freeze",
            "'" + t.freeze + "' holds an empty pattern (comma-separated globs of tensor names)");
  check(std::isfinite(t.lr) && t.lr >= 0, "train.lr", "must be a finite number >= 0");
  check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0");
  check(t.lr_by == "steps" || t.lr_by == "sequences", "train.lr_by",
        "must be steps or sequences (got '" + t.lr_by + "')");
  check(t.warmup_sequences >= 0, "train.warmup_sequences", "must be >= 0");
  check(t.lr_by == "sequences" || t.warmup_sequences == 0, "train.warmup_sequences",
        "counts for train.lr_by = sequences only (with steps, set train.warmup_steps)");
  check(t.lr_by == "steps" || t.warmup_steps == 0, "train.warmup_steps",
        "counts for train.lr_by = steps only (with sequences, set train.warmup_sequences)");
  check(t.schedule == "cosine" || t.schedule == "linear" || t.schedule == "constant" ||
            t.schedule == "wsd" || t.schedule == "inverse_sqrt",
        "train.schedule",
        "must be cosine, linear, constant, wsd or inverse_sqrt (got '" + t.schedule + "')");
  check(t.min_lr_ratio >= 0 && t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]");
  check(t.decay_shape == "linear" || t.decay_shape == "1-sqrt" || t.decay_shape == "cosine",
        "train.decay_shape", "must be linear, 1-sqrt or cosine (got '" + t.decay_shape + "')");
  check(t.decay_shape == "linear" || t.schedule == "wsd", "train.decay_shape",
        "shapes the decay of train.schedule = wsd only (the schedule is " + t.schedule + ")");
  check(t.decay_fraction >= 0 && t.decay_fraction <= 1, "train.decay_fraction",
        "must be in [0, 1]");
  check(std::isfinite(t.grad_clip) && t.grad_clip >= 0, "train.grad_clip",
        "must be >= 0 (0 disables clipping)");
  check(t.log_every >= 1, "train.log_every", "must be >= 1");
  parse_recompute(t.recompute, "train.recompute");  // none | gelu | full
  check(t.recompute_layers >= 0, "train.recompute_layers", "must be >= 0 (0: every layer)");
  check(t.logits_chunk >= 0, "train.logits_chunk", "must be >= 0 (0: a whole micro-batch)");
  check(t.profile_step >= 0, "train.profile_step", "must be >= 0 (0: no trace)");
  check(t.profile_step == 0 || c.parallel.pp > 1, "train.profile_step",
        "times the actions of a pipeline step and needs parallel.pp > 1");
  check(t.profile_step <= t.steps, "train.profile_step",
        "(" + std::to_string(t.profile_step) + ") must not exceed train.steps (" +
            std::to_string(t.steps) + ")");
  check(t.recompute_layers == 0 || t.recompute != "none", "train.recompute_layers",
        "needs train.recompute = gelu or full (it is none)");
  check(t.seed >= 0, "train.seed", "must be >= 0");
  check(c.eval.preferences.empty() || !c.data.preferences.empty(), "eval.preferences",
        "scores DPO's pairs against the run's reference and needs data.preferences");
  if (c.data.preferences.empty()) {
    parse_blend(c.data.train, c.data.train_weights);  // throws on a malformed blend
  } else {
    // DPO: pairs of rows in each micro-batch, and a loss of its own that the cross-entropy's
    // extra terms and data transformations do not apply to.
    check(c.data.train.empty() && c.data.train_weights.empty(), "data.preferences",
          "trains on preference pairs instead of data.train: give one of them");
    check(t.micro_batch_size % 2 == 0, "train.micro_batch_size",
          "must be even with data.preferences (a micro-batch holds whole pairs: a chosen and a "
          "rejected sequence)");
    check(std::isfinite(t.dpo_beta) && t.dpo_beta > 0 && t.dpo_beta <= 1000, "train.dpo_beta",
          "must be a number in (0, 1000]");
    parse_preference_loss(t.dpo_loss);
    check(t.dpo_label_smoothing >= 0 && t.dpo_label_smoothing < 0.5, "train.dpo_label_smoothing",
          "must be in [0, 0.5)");
    check(t.dpo_label_smoothing == 0 || t.dpo_loss == "sigmoid", "train.dpo_label_smoothing",
          "applies to train.dpo_loss = sigmoid only");
    for (const auto& [key, off] : std::initializer_list<std::pair<const char*, bool>>{
             {"train.z_loss", t.z_loss == 0},
             {"model.mtp_depth", c.model.mtp_depth == 0},
             {"data.fim_rate", c.data.fim_rate == 0},
             {"train.noise_every", t.noise_every == 0}})
      check(off, key, "does not apply to DPO's loss (data.preferences): leave it at 0");
  }
  parse_loss_mask(c.data.loss_mask);
  parse_document_mask(c.data.document_mask, c.model.vocab_size);
  parse_eod_mask_loss(c.data.eod_mask_loss, c.model.vocab_size);
  parse_fim(c.data, c.model.vocab_size, 0);
  check(!c.data.reset_positions || c.data.document_mask != "none", "data.reset_positions",
        "needs data.document_mask (the token that starts a document)");
  parse_val_sets(c.eval.sets);
  check(std::isfinite(t.skip_loss_z) && t.skip_loss_z >= 0, "train.skip_loss_z",
        "must be a finite number >= 0 (0: off)");
  check(std::isfinite(t.skip_norm_z) && t.skip_norm_z >= 0, "train.skip_norm_z",
        "must be a finite number >= 0 (0: off)");
  check(std::isfinite(t.z_loss) && t.z_loss >= 0 && t.z_loss <= 1, "train.z_loss",
        "must be a number in [0, 1] (PaLM's 1e-4; 0: none)");
  // A dropout probability, as the fp32 the model holds it: 1 - 1e-9 rounds to 1.
  for (const auto& [p, key] : {std::pair{t.hidden_dropout, "train.hidden_dropout"},
                               std::pair{t.attention_dropout, "train.attention_dropout"}})
    check(std::isfinite(p) && p >= 0 && float(p) < 1.0f, key,
          "must be a probability in [0, 1) (0: none)");
  check(std::isfinite(t.moe_aux_loss) && t.moe_aux_loss >= 0 && t.moe_aux_loss <= 1,
        "train.moe_aux_loss", "must be a number in [0, 1] (Switch's 0.01; 0: none)");
  check(std::isfinite(t.moe_z_loss) && t.moe_z_loss >= 0 && t.moe_z_loss <= 1, "train.moe_z_loss",
        "must be a number in [0, 1] (ST-MoE's 0.001; 0: none)");
  check(t.moe_aux_scope == "micro_batch" || t.moe_aux_scope == "sequence", "train.moe_aux_scope",
        "must be micro_batch or sequence (got '" + t.moe_aux_scope + "')");
  check(t.moe_aux_scope == "micro_batch" || c.model.moe_experts > 0, "train.moe_aux_scope",
        "= sequence needs model.moe_experts > 0 (a router to balance)");
  check(std::isfinite(t.moe_bias_rate) && t.moe_bias_rate >= 0 &&
            (t.moe_bias_rate == 0 || c.model.moe_experts > 0),
        "train.moe_bias_rate",
        "must be a finite number >= 0, and > 0 only with model.moe_experts (DeepSeek-V3's 0.001; "
        "0: none)");
  check(t.moe_z_loss == 0 || c.model.moe_score == "softmax", "train.moe_z_loss",
        "is the log-sum-exp of a softmax router's logits: it needs model.moe_score = softmax");
  check(t.norms_every >= 0, "train.norms_every", "must be >= 0 (0: never)");
  check(t.noise_every >= 0, "train.noise_every", "must be >= 0 (0: never)");
  if (t.noise_every > 0) {
    // The small batch's gradient must pass through its ranks' buffers before it is reduced (a
    // micro-batch's at the end of its backward pass, or under ZeRO-2/3 bucket by bucket; under
    // a pipeline, whose stages interleave the micro-batches, a replica's share of the step;
    // context-parallel ranks' parts summed). Under expert parallelism the experts see the
    // expert-parallel group's micro-batches: the small batch is the group's first ones, its
    // dense tensors' gradient summed over the group first (not with a pipeline, context
    // parallelism or ZeRO-3's packed experts).
    check(c.parallel.ep == 1 || (c.parallel.pp == 1 && c.parallel.cp == 1 && c.parallel.zero <= 2),
          "train.noise_every",
          "under expert parallelism (parallel.ep > 1) needs parallel.pp = 1, parallel.cp = 1 and "
          "parallel.zero <= 2");
    if (c.parallel.pp > 1) {
      check(dp >= 2, "train.noise_every",
            "under pipeline parallelism measures each data-parallel replica's share of the step "
            "against the whole batch: it needs two replicas or more (dp >= 2)");
    } else {
      const int64_t per_rank = int64_t(t.micro_batch_size) * dp;
      check(per_rank > 0 && t.batch_size >= 2 * per_rank, "train.noise_every",
            "needs at least two micro-batches per step on each rank (train.batch_size >= 2 · "
            "train.micro_batch_size · dp, the data-parallel ranks), so that one micro-batch's "
            "gradient is seen before the reduction");
    }
  }
  check(t.moe_load_every >= 0 && (t.moe_load_every == 0 || c.model.moe_experts > 0),
        "train.moe_load_every", "must be >= 0, and > 0 only with model.moe_experts (0: never)");
  check(t.activations_every >= 0, "train.activations_every", "must be >= 0 (0: never)");
  check(t.activations_every == 0 || !c.data.val.empty(), "train.activations_every",
        "needs data.val (the activations are those of its first micro-batch)");
  check(t.skip_window >= 2 && t.skip_window <= 1000000, "train.skip_window",
        "must be in [2, 1000000]");
  const auto& o = c.optim;
  check(o.name == "adamw" || o.name == "sgd" || o.name == "muon" || o.name == "lion", "optim.name",
        "must be adamw, sgd, muon or lion (got '" + o.name + "')");
  check(o.beta1 >= 0 && o.beta1 < 1, "optim.beta1", "must be in [0, 1)");
  check(o.beta2 >= 0 && o.beta2 < 1, "optim.beta2", "must be in [0, 1)");
  check(o.eps > 0 && std::isfinite(o.eps), "optim.eps", "must be a finite number > 0");
  check(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "optim.weight_decay",
        "must be a finite number >= 0");
  check(o.weight_decay_schedule == "constant" || o.weight_decay_schedule == "linear" ||
            o.weight_decay_schedule == "cosine",
        "optim.weight_decay_schedule",
        "must be constant, linear or cosine (got '" + o.weight_decay_schedule + "')");
  check(std::isfinite(o.ema_decay) && o.ema_decay >= 0 && o.ema_decay < 1, "optim.ema_decay",
        "must be in [0, 1) (0: no moving average)");
  check(std::isfinite(o.weight_decay_end) && o.weight_decay_end >= 0 &&
            (o.weight_decay_end == 0 || o.weight_decay_schedule != "constant"),
        "optim.weight_decay_end",
        "must be a finite number >= 0, and other than 0 only with a linear or cosine "
        "optim.weight_decay_schedule (constant keeps optim.weight_decay)");
  check(o.momentum >= 0 && o.momentum < 1, "optim.momentum", "must be in [0, 1)");
  check(std::isfinite(o.muon_lr) && o.muon_lr >= 0, "optim.muon_lr",
        "must be a finite number >= 0");
  check(o.muon_momentum >= 0 && o.muon_momentum < 1, "optim.muon_momentum", "must be in [0, 1)");
  check(o.muon_ns_steps >= 1 && o.muon_ns_steps <= 100, "optim.muon_ns_steps",
        "must be in [1, 100]");
  check(o.muon_adjust_lr == "original" || o.muon_adjust_lr == "match_rms_adamw",
        "optim.muon_adjust_lr",
        "must be original or match_rms_adamw (got '" + o.muon_adjust_lr + "')");
  for (const auto& [key, rate] :
       {std::pair{"optim.embedding_lr", o.embedding_lr}, std::pair{"optim.head_lr", o.head_lr}}) {
    check(std::isfinite(rate) && rate >= 0, key, "must be a finite number >= 0 (0: train.lr)");
    // The rate follows train.lr's schedule scaled by rate / train.lr.
    check(rate == 0 || t.lr > 0, key,
          "needs train.lr > 0: it follows train.lr's schedule, times its ratio to train.lr "
          "(train.freeze keeps tensors fixed)");
  }
  check(o.head_lr == 0 || !c.model.tie_embeddings, "optim.head_lr",
        "needs an untied head (model.tie_embeddings = false): the tied head is wte, whose rate "
        "is optim.embedding_lr");
  check(c.eval.every >= 0, "eval.every", "must be >= 0");
  check(c.eval.sequences >= 0, "eval.sequences", "must be >= 0");
  check(c.eval.choice_examples >= 0, "eval.choice_examples", "must be >= 0");
  check(c.eval.choice_mode == "batched" || c.eval.choice_mode == "cached", "eval.choice_mode",
        "must be batched or cached (got '" + c.eval.choice_mode + "')");
  for (const auto& [unset, key] :
       {std::pair{c.eval.choice_examples == EvalConfig{}.choice_examples, "eval.choice_examples"},
        std::pair{c.eval.choice_mode == EvalConfig{}.choice_mode, "eval.choice_mode"}})
    check(unset || !c.eval.choices.empty(), key,
          "needs eval.choices (the multiple-choice file it applies to)");
  check(c.checkpoint.every >= 0, "checkpoint.every", "must be >= 0");
  check(c.checkpoint.keep >= 0, "checkpoint.keep", "must be >= 0 (0 keeps all)");
  check(c.checkpoint.keep_every >= 0, "checkpoint.keep_every", "must be >= 0 (0: none)");
  check(c.checkpoint.keep_every == 0 || c.checkpoint.every == 0 ||
            c.checkpoint.keep_every % c.checkpoint.every == 0,
        "checkpoint.keep_every",
        "(" + std::to_string(c.checkpoint.keep_every) +
            ") must be a multiple of checkpoint.every (" + std::to_string(c.checkpoint.every) +
            "), or no checkpoint would fall on it but theirs in common");
  // (Blanks alone, or a control character such as a newline, make a directory no one can name
  // in a shell or a sweep's job arguments.)
  const bool printable =
      std::none_of(c.run.name.begin(), c.run.name.end(),
                   [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; }) &&
      c.run.name.find_first_not_of(' ') != std::string::npos;
  check(!c.run.name.empty() && c.run.name.find('/') == std::string::npos && c.run.name != "." &&
            c.run.name != ".." && printable,
        "run.name",
        "must be a non-empty name without '/' or control characters, not blanks alone, . or .. "
        "(got '" +
            c.run.name + "')");
  check(!c.run.dir.empty(), "run.dir", "must not be empty");
  check(c.run.backend == "cpu" || c.run.backend == "cuda", "run.backend",
        "must be cpu or cuda (got '" + c.run.backend + "')");
  check(c.run.precision == "auto" || c.run.precision == "fp32" || c.run.precision == "bf16",
        "run.precision", "must be auto, fp32 or bf16 (got '" + c.run.precision + "')");
  check(!c.bf16() || m.n_embd % 2 == 0, "model.n_embd",
        "(" + std::to_string(m.n_embd) + ") must be even for bf16 precision");
  check(valid_thread_count(c.run.threads), "run.threads",
        "must be in [0, " + std::to_string(kMaxThreads) + "] (0: one per core; got " +
            std::to_string(c.run.threads) + ")");
  check(c.run.peak_tflops >= 0 && std::isfinite(c.run.peak_tflops), "run.peak_tflops",
        "must be a finite number >= 0");
  check(!c.eval.loss_by_position ||
            ((!c.data.val.empty() || !c.eval.sets.empty()) && c.eval.sequences > 0),
        "eval.loss_by_position",
        "needs data.val or eval.sets, and eval.sequences > 0 (it scores their sequences)");
  check(!c.eval.fim || c.data.fim_rate > 0, "eval.fim", "needs data.fim_rate > 0");
  check(!c.eval.fim || (c.eval.sequences > 0 && (!c.data.val.empty() || !c.eval.sets.empty())),
        "eval.fim", "needs data.val or eval.sets, and eval.sequences > 0 (it rearranges them)");
  check(!c.eval.fim || !c.eval.bits_per_byte, "eval.bits_per_byte",
        "measures text per byte: not with eval.fim, whose sequences hold sentinels and moved "
        "spans");
  check(!c.eval.ema || c.optim.ema_decay > 0, "eval.ema",
        "needs optim.ema_decay > 0 (the moving average it scores)");
  check(!c.eval.ema || ((!c.data.val.empty() || !c.eval.sets.empty()) && c.eval.sequences > 0) ||
            !c.eval.choices.empty(),
        "eval.ema",
        "needs something to score: data.val or eval.sets with eval.sequences > 0, or "
        "eval.choices");
  check(!c.eval.bits_per_byte || !c.data.vocab.empty(), "eval.bits_per_byte",
        "needs data.vocab: the tokenizer of the validation data, whose bytes it counts");
  check(!c.checkpoint.best || (!c.data.val.empty() && c.eval.sequences > 0), "checkpoint.best",
        "needs a validation loss to compare: data.val and eval.sequences > 0");
  check(std::isfinite(c.run.max_minutes) && c.run.max_minutes >= 0, "run.max_minutes",
        "must be a number of minutes >= 0 (0: no budget)");
  check(std::isfinite(c.run.hang_minutes) && c.run.hang_minutes >= 0, "run.hang_minutes",
        "must be a number of minutes >= 0 (0: no watchdog)");
  if (c.model.mtp_depth > 0) {
    const ModelConfig& m = c.model;
    check(std::isfinite(c.train.mtp_loss_weight) && c.train.mtp_loss_weight >= 0,
          "train.mtp_loss_weight", "must be a finite number >= 0 (Megatron's 0.1)");
    check(m.tie_embeddings || c.parallel.pp == 1, "model.mtp_depth",
          "with an untied head needs parallel.pp = 1: the modules embed tokens on the last "
          "stage, which holds wte only as the tied head's copy");
  }
  check(c.parallel.zero >= 0 && c.parallel.zero <= 3, "parallel.zero", "must be 0, 1, 2 or 3");
  // ZeRO-2 and 3 reduce each micro-batch's gradient as the backward pass finishes it; a pipeline
  // accumulates every layer's over its micro-batches in flight, so it needs the whole buffer.
  const std::string stage = "= " + std::to_string(c.parallel.zero);
  check(c.parallel.zero < 2 || c.parallel.pp == 1, "parallel.zero",
        stage +
            " needs parallel.pp = 1 (a pipeline keeps every layer's gradient over its "
            "micro-batches; use parallel.zero = 1)");
  check(is_schedule_kind(c.parallel.schedule), "parallel.schedule",
        std::string("must be ") + kScheduleKindNames + " (got '" + c.parallel.schedule + "')");
  check(c.parallel.virtual_stages >= 1, "parallel.virtual_stages", "must be >= 1");
  check(c.parallel.comm == "auto" || c.parallel.comm == "mpi" || c.parallel.comm == "nccl",
        "parallel.comm", "must be auto, mpi or nccl (got '" + c.parallel.comm + "')");
  check(c.parallel.comm != "nccl" || c.run.backend == "cuda", "parallel.comm",
        "nccl needs run.backend = cuda (the cpu backend communicates through MPI)");
  // The grid must fit the job and the model (DESIGN.md §3 splits, §4 dp = world / (tp·pp·cp)).
  const auto& par = c.parallel;
  if (par.ep > 1) {
    const std::string ep = "= " + std::to_string(par.ep);
    check(m.moe_experts > 0 && m.moe_experts % par.ep == 0, "parallel.ep",
          ep + " needs a mixture of experts whose model.moe_experts (" +
              std::to_string(m.moe_experts) + ") it divides: each rank holds 1/ep of the experts");
    check(dp % par.ep == 0, "parallel.ep",
          ep + " must divide the data-parallel size (" + std::to_string(dp) +
              " = ranks / (parallel.tp · parallel.pp · parallel.cp)): experts are shared by "
              "groups of ep data-parallel ranks");
  }
  if (par.cp > 1) {
    check(m.seq_len % (2 * par.cp) == 0, "parallel.cp",
          "(" + std::to_string(par.cp) + ") needs model.seq_len (" + std::to_string(m.seq_len) +
              ") divisible by 2 · parallel.cp: each rank holds two equal chunks of a sequence");
    // On the GPU the pieces' attention runs on the flash kernels: bf16, their head dims, and
    // pieces of whole 64-row tiles.
    if (c.run.backend == "cuda") {
      const int hd = m.hd();
      check(c.bf16(), "parallel.cp",
            "> 1 on the cuda backend needs run.precision = bf16 (the flash kernels)");
      check(cuda_flash_head_dim(hd), "parallel.cp",
            "> 1 on the cuda backend needs a head dimension of 64, 128 or 192 (got " +
                std::to_string(hd) + ")");
      check(m.seq_len % (2 * par.cp * 64) == 0, "parallel.cp",
            "> 1 on the cuda backend needs model.seq_len (" + std::to_string(m.seq_len) +
                ") divisible by 2 · parallel.cp · 64: each piece whole 64-row tiles");
      check(cuda_flash_drops(c.train.attention_dropout > 0, float(m.attn_softcap)),
            "train.attention_dropout",
            "with parallel.cp > 1 and model.attn_softcap is not implemented by the cuda backend "
            "(its flash kernels, which context parallelism needs there, do not drop capped "
            "scores)");
    }
    // Generation and scoring decode prompts with the KV cache, a whole sequence on one rank.
    check(c.sample.length == 0, "sample.length",
          "must be 0 with parallel.cp > 1: samples are generated without context parallelism");
    check(c.eval.choices.empty(), "eval.choices",
          "cannot be scored with parallel.cp > 1 (scoring runs without context parallelism)");
    check(!par.sequence_parallel || (m.seq_len / par.cp) % par.tp == 0,
          "parallel.sequence_parallel",
          "with parallel.cp needs model.seq_len / parallel.cp (" +
              std::to_string(m.seq_len / par.cp) + ") divisible by parallel.tp (" +
              std::to_string(par.tp) + ")");
  }
  check(m.n_head % par.tp == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide model.n_head (" + std::to_string(m.n_head) +
            "): attention is split by heads");
  check(m.n_kv_head % par.tp == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide model.n_kv_head (" +
            std::to_string(m.n_kv_head) + "): each rank holds its query heads' keys and values");
  check(m.moe_shared_hidden % par.tp == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide the shared experts' hidden units (" +
            std::to_string(m.moe_shared_hidden) + ", model.moe_shared_hidden)");
  check(m.moe_dense_hidden % par.tp == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide the dense layers' hidden units (" +
            std::to_string(m.moe_dense_hidden) + ", model.moe_dense_hidden)");
  check(c.mlp_hidden_size() % par.tp == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide the MLP's hidden units (" +
            std::to_string(c.mlp_hidden_size()) + ", model.mlp_hidden)");
  check(c.run.fp8 == "off" || c.run.fp8 == "tensorwise", "run.fp8",
        "must be off or tensorwise (got '" + c.run.fp8 + "')");
  if (c.run.fp8 != "off") {
    check(c.bf16() || c.run.backend == "cpu", "run.fp8",
          "= " + c.run.fp8 +
              " on the cuda backend needs run.precision = bf16 (the FP8 products read bf16)");
    // The GPU's FP8 products need every dimension a multiple of 16: each linear layer's widths
    // on a tensor-parallel rank, and the rows of a micro-batch on a context-parallel rank (the
    // experts' products take any number of rows: the GPU pads their weight gradients').
    const GptShape s = gpt_shape(c);
    const int tp = par.tp;
    for (const auto& [name, w] : Gpt::fp8_widths(s, tp))
      check(w % 16 == 0, "run.fp8",
            "needs " + name + " (" + std::to_string(w) +
                (tp > 1 ? " per tensor-parallel rank" : "") + ") to be a multiple of 16");
    const int rows = t.micro_batch_size * m.seq_len / par.cp;
    check(rows % 16 == 0, "run.fp8",
          "needs the rows of a micro-batch (train.micro_batch_size · model.seq_len" +
              std::string(par.cp > 1 ? " / parallel.cp" : "") + " = " + std::to_string(rows) +
              ") to be a multiple of 16");
  }
  check(!c.run.fp8_head || c.run.fp8 != "off", "run.fp8_head", "needs run.fp8 (it is off)");
  check(!c.run.fp8_head || t.logits_chunk % 16 == 0, "run.fp8_head",
        "needs train.logits_chunk (" + std::to_string(t.logits_chunk) +
            ") to be a multiple of 16: the FP8 products take rows 16 at a time");
  if (!trim_blanks(c.run.fp8_skip).empty()) {
    check(c.run.fp8 != "off", "run.fp8_skip", "needs run.fp8 (it is off)");
    const std::vector<std::string> names = Gpt::fp8_layer_names(gpt_shape(c));
    for (const std::string& p : split_comma_list(c.run.fp8_skip)) {
      bool any = false;
      for (const std::string& n : names) any = any || frozen_tensor(p, n);
      check(!p.empty() && any, "run.fp8_skip",
            "pattern '" + p +
                "' matches no linear layer (names h/<i>/attn/c_attn, "
                "h/<i>/attn/c_proj, h/<i>/mlp/c_fc, h/<i>/mlp/c_proj; i < model.n_layer = " +
                std::to_string(m.n_layer) +
                (m.mtp_depth > 0 ? "; mtp/<j>/ the same and mtp/<j>/eh_proj, j < model.mtp_depth"
                                 : "") +
                ")");
    }
  }
  const int chunks = std::max(1, par.pp * par.virtual_stages);
  int most_layers = m.n_layer / chunks;  // the most layers of a pipeline chunk
  if (par.stage_layers.find_first_not_of(" \t") == std::string::npos) {  // equal chunks
    check(par.pp <= m.n_layer, "parallel.pp",
          "(" + std::to_string(par.pp) + ") must not exceed model.n_layer (" +
              std::to_string(m.n_layer) + "): every stage needs a layer");
    check(m.n_layer % chunks == 0, "model.n_layer",
          "(" + std::to_string(m.n_layer) + ") must be divisible by parallel.pp · " +
              "parallel.virtual_stages (" + std::to_string(par.pp) + " · " +
              std::to_string(par.virtual_stages) +
              "): every pipeline chunk holds as many layers (or set parallel.stage_layers)");
  } else {
    check(par.virtual_stages == 1, "parallel.stage_layers",
          "needs parallel.virtual_stages = 1 (interleaved chunks are equal)");
    const bool automatic = par.stage_layers.find("auto") != std::string::npos;
    if (automatic)
      check(par.pp <= m.n_layer + 1, "parallel.pp",
            "(" + std::to_string(par.pp) + ") must not exceed model.n_layer + 1 (" +
                std::to_string(m.n_layer + 1) +
                ") for parallel.stage_layers = auto: every stage but the last needs a layer");
    if (par.pp > 1 || !automatic) {
      most_layers = 0;
      const auto split =
          par.pp > 1 ? stage_layers(c) : parse_stage_layers(par.stage_layers, 1, m.n_layer);
      for (int n : split) most_layers = std::max(most_layers, n);
    }
  }
  check(t.recompute_layers <= most_layers, "train.recompute_layers",
        "(" + std::to_string(t.recompute_layers) + ") must not exceed the layers of a pipeline " +
            "chunk (" + std::to_string(most_layers) + ")");
  check(!par.sequence_parallel || m.seq_len % par.tp == 0, "parallel.sequence_parallel",
        "needs model.seq_len (" + std::to_string(m.seq_len) + ") divisible by parallel.tp (" +
            std::to_string(par.tp) + ")");
  // zb-h1 takes virtual stages too: it then splits the interleaved order.
  const bool interleaving =
      par.schedule == "interleaved" || (par.schedule == "zb-h1" && par.virtual_stages > 1);
  if (interleaving) {
    check(par.pp >= 2, "parallel.schedule",
          par.schedule + " with parallel.virtual_stages > 1 needs parallel.pp >= 2");
    check(par.virtual_stages >= 2, "parallel.virtual_stages",
          "must be >= 2 for parallel.schedule = interleaved");
    for (int b : ramp_batch_sizes(ramp, t.batch_size)) {
      const int accum = b / std::max(1, t.micro_batch_size * dp);
      check(accum % par.pp == 0, b == t.batch_size ? "train.batch_size" : "train.batch_rampup",
            "gives " + std::to_string(accum) + " micro-batches per step" +
                (b == t.batch_size ? "" : " at a batch of " + std::to_string(b)) + ", which " +
                par.schedule + " with virtual stages needs to be a multiple of parallel.pp (" +
                std::to_string(par.pp) + ")");
    }
  } else if (par.schedule == "zb-v") {
    check(par.pp >= 2, "parallel.schedule",
          "zb-v needs parallel.pp >= 2 (its V runs down the pipeline ranks and back up)");
    check(par.virtual_stages == 2, "parallel.virtual_stages",
          "must be 2 for parallel.schedule = zb-v (each rank holds two chunks of the V)");
  } else if (par.schedule != "zb-h1") {
    check(par.virtual_stages == 1, "parallel.virtual_stages",
          "must be 1 for parallel.schedule = " + par.schedule + " (use interleaved or zb-h1)");
  }
  // The weight pass reads each layer's matmul inputs, which full recomputation does not keep.
  const bool weight_pass = splits_backward(parse_schedule_kind(par.schedule));
  check(!weight_pass || par.pp == 1 || t.recompute != "full", "train.recompute",
        "full cannot be combined with parallel.schedule = " + par.schedule +
            " (its weight pass reads the layer inputs full recomputation discards): use gelu or "
            "none, or the 1f1b schedule");
  check(c.sample.length >= 0, "sample.length", "must be >= 0");
  const SampleRangeError bad = sample_range_error(sample_options(c.sample));
  check(bad.name.empty(), "sample." + bad.name, bad.rule);
  // Counted in floating point, where the sizes' products cannot wrap around: 2^50 parameters
  // (4.5 PB of fp32 weights) keep every element count and offset far inside int64.
  double params = 0;
  for (const ParamSpec& p : gpt_parameter_layout(gpt_shape(c))) {
    double n = 1;
    for (int64_t d : p.shape) n *= double(d);
    params += n;
  }
  std::ostringstream count;
  count << std::setprecision(3) << params;
  check(params <= std::ldexp(1.0, 50), "model",
        "has " + count.str() +
            " parameters, beyond the 2^50 (1.1e15) triad counts in 64-bit integers: check "
            "model.n_layer, n_embd, mlp_hidden, vocab_size and moe_experts");
}

}  // namespace triad
