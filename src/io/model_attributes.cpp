// The /model attributes of a checkpoint: writing and validated reading (model_attributes.h).
#include "model_attributes.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "hdf5_handle.h"
#include "triad/kernels/moe_routing.h"
#include "triad/model/gpt_shape.h"

namespace triad::io {

int64_t require_int64_attr(hid_t loc, const std::string& where, const std::string& name) {
  const std::optional<int64_t> v = read_int64_attr(loc, name);
  TRIAD_CHECK(v.has_value(), "attribute ", name, " of ", where, " is missing");
  return *v;
}

void write_model_attributes(hid_t model, const ModelShape& m) {
  io::write_int64_attr(model, "n_layer", m.n_layer);
  io::write_int64_attr(model, "n_head", m.n_head);
  io::write_int64_attr(model, "n_embd", m.n_embd);
  io::write_int64_attr(model, "seq_len", m.seq_len);
  io::write_int64_attr(model, "vocab_size", m.vocab_size);
  io::write_int64_attr(model, "padded_vocab_size", m.padded_vocab_size);
  io::write_string_attr(model, "position", m.position);
  if (m.position == "rope") io::write_double_attr(model, "rope_theta", m.rope_theta);
  if (m.position == "rope" && m.rope_local_theta > 0)  // 0: rope_theta in every layer
    io::write_double_attr(model, "rope_local_theta", m.rope_local_theta);
  if (m.rope_scaling != "none") {  // every scaling's, then its own numbers
    io::write_string_attr(model, "rope_scaling", m.rope_scaling);
    io::write_double_attr(model, "rope_scaling_factor", m.rope_scaling_factor);
    if (m.rope_scaling != "linear")  // (linear's frequencies need no original context)
      io::write_int64_attr(model, "rope_original_positions", m.rope_original_positions);
  }
  if (m.rope_scaling == "yarn") {
    io::write_double_attr(model, "rope_yarn_beta_fast", m.rope_yarn_beta_fast);
    io::write_double_attr(model, "rope_yarn_beta_slow", m.rope_yarn_beta_slow);
    io::write_double_attr(model, "rope_yarn_mscale", m.rope_yarn_mscale);
    io::write_double_attr(model, "rope_yarn_mscale_all_dim", m.rope_yarn_mscale_all_dim);
    if (!m.rope_yarn_truncate) io::write_int64_attr(model, "rope_yarn_truncate", 0);
  }
  if (m.rope_scaling == "longrope") {
    io::write_doubles_attr(model, "rope_short_factor", m.rope_short_factor);
    io::write_doubles_attr(model, "rope_long_factor", m.rope_long_factor);
  }
  if (m.rope_scaling == "llama3") {
    io::write_double_attr(model, "rope_low_freq_factor", m.rope_low_freq_factor);
    io::write_double_attr(model, "rope_high_freq_factor", m.rope_high_freq_factor);
  }
  io::write_string_attr(model, "norm", m.norm);
  io::write_int64_attr(model, "bias", m.bias ? 1 : 0);
  io::write_int64_attr(model, "tie_embeddings", m.tied ? 1 : 0);
  io::write_string_attr(model, "mlp", m.mlp);
  if (m.mlp_hidden > 0)  // 0: not given (the default, 4·n_embd)
    io::write_int64_attr(model, "mlp_hidden", m.mlp_hidden);
  io::write_int64_attr(model, "qk_norm", m.qk_norm ? 1 : 0);
  if (m.qk_norm_full) io::write_int64_attr(model, "qk_norm_full", 1);
  if (m.attn_sinks) io::write_int64_attr(model, "attn_sinks", 1);
  io::write_int64_attr(model, "qkv_bias", m.qkv_bias ? 1 : 0);
  if (m.mlp_bias) io::write_int64_attr(model, "mlp_bias", 1);
  if (m.norm_bias) io::write_int64_attr(model, "norm_bias", 1);
  if (!m.norm_weight) io::write_int64_attr(model, "norm_weight", 0);
  io::write_double_attr(model, "norm_eps", m.norm_eps);
  if (m.head_dim > 0)  // 0: n_embd / n_head
    io::write_int64_attr(model, "head_dim", m.head_dim);
  if (m.kv_lora_rank > 0) {  // multi-head latent attention
    io::write_int64_attr(model, "kv_lora_rank", m.kv_lora_rank);
    io::write_int64_attr(model, "q_lora_rank", m.q_lora_rank);
    io::write_int64_attr(model, "qk_nope_head_dim", m.qk_nope_head_dim);
    io::write_int64_attr(model, "qk_rope_head_dim", m.qk_rope_head_dim);
    io::write_int64_attr(model, "v_head_dim", m.v_head_dim);
    if (m.mla_norm_eps > 0) io::write_double_attr(model, "mla_norm_eps", m.mla_norm_eps);
  }
  if (m.rotary_dim > 0)  // 0: every value of a head rotates
    io::write_int64_attr(model, "rotary_dim", m.rotary_dim);
  if (m.nope_every > 0)  // 0: every layer rotates
    io::write_int64_attr(model, "nope_every", m.nope_every);
  if (m.sliding_window > 0)  // 0: no window
    io::write_int64_attr(model, "sliding_window", m.sliding_window);
  if (m.full_attention_every > 0)  // 0: every layer keeps to the window
    io::write_int64_attr(model, "full_attention_every", m.full_attention_every);
  if (m.full_attention_first) io::write_int64_attr(model, "full_attention_first", 1);
  if (m.attn_scale > 0)  // 0: 1/sqrt(head width)
    io::write_double_attr(model, "attn_scale", m.attn_scale);
  if (m.mup_base_width > 0)  // 0: the standard parametrization
    io::write_int64_attr(model, "mup_base_width", m.mup_base_width);
  if (m.mtp_depth > 0) io::write_int64_attr(model, "mtp_depth", m.mtp_depth);
  if (m.moe_experts > 0) {  // 0: dense MLPs
    io::write_int64_attr(model, "moe_experts", m.moe_experts);
    io::write_int64_attr(model, "moe_top_k", m.moe_top_k);
    io::write_int64_attr(model, "moe_normalize", m.moe_normalize ? 1 : 0);
    if (m.moe_score != "softmax") io::write_string_attr(model, "moe_score", m.moe_score);
    if (m.moe_routed_scale != 1.0)
      io::write_double_attr(model, "moe_routed_scale", m.moe_routed_scale);
    if (m.moe_groups > 1) {
      io::write_int64_attr(model, "moe_groups", m.moe_groups);
      io::write_int64_attr(model, "moe_group_top_k", m.moe_group_top_k);
    }
    if (m.moe_group_score != "top2")
      io::write_string_attr(model, "moe_group_score", m.moe_group_score);
    if (m.moe_shared_hidden > 0)
      io::write_int64_attr(model, "moe_shared_hidden", m.moe_shared_hidden);
    if (m.moe_shared_gate) io::write_int64_attr(model, "moe_shared_gate", 1);
    if (m.moe_bias) io::write_int64_attr(model, "moe_bias", 1);
    if (m.moe_first_dense != 0 || m.moe_every != 1) {
      io::write_int64_attr(model, "moe_first_dense", m.moe_first_dense);
      io::write_int64_attr(model, "moe_every", m.moe_every);
    }
    if (m.moe_dense_hidden > 0) io::write_int64_attr(model, "moe_dense_hidden", m.moe_dense_hidden);
  }
  if (m.logit_softcap > 0)  // 0: no cap
    io::write_double_attr(model, "logit_softcap", m.logit_softcap);
  if (m.attn_softcap > 0)  // 0: no cap
    io::write_double_attr(model, "attn_softcap", m.attn_softcap);
  if (m.clip_qkv > 0)  // 0: no clamp
    io::write_double_attr(model, "clip_qkv", m.clip_qkv);
  if (m.glu_alpha != 1) io::write_double_attr(model, "glu_alpha", m.glu_alpha);
  if (m.glu_limit != 0) io::write_double_attr(model, "glu_limit", m.glu_limit);
  if (m.glu_offset != 0) io::write_double_attr(model, "glu_offset", m.glu_offset);
  if (m.logit_scale != 1)  // 1: none
    io::write_double_attr(model, "logit_scale", m.logit_scale);
  if (m.residual_scale != 1)  // 1: none
    io::write_double_attr(model, "residual_scale", m.residual_scale);
  if (m.embed_scale != 1)  // 1: none
    io::write_double_attr(model, "embed_scale", m.embed_scale);
  if (m.parallel_residual) io::write_int64_attr(model, "parallel_residual", 1);
  if (m.branch_norm) io::write_int64_attr(model, "branch_norm", 1);
  if (!m.pre_norm) io::write_int64_attr(model, "pre_norm", 0);
  if (m.shared_norm) io::write_int64_attr(model, "shared_norm", 1);
  if (m.head_bias) io::write_int64_attr(model, "head_bias", 1);
  if (m.n_kv_head > 0)  // 0: not given (n_head)
    io::write_int64_attr(model, "n_kv_head", m.n_kv_head);
}

ModelShape read_model_attributes(hid_t model) {
  ModelShape m;
  // The model's 0/1 switches, GPT-2's setting where absent (1, or `absent`).
  auto flag = [&](const char* name, int64_t absent = 1) {
    const int64_t v = io::read_int64_attr(model, name).value_or(absent);
    TRIAD_CHECK(v == 0 || v == 1, "attribute ", name, " of /model is ", v, ", not 0 or 1");
    return v == 1;
  };
  m.n_layer = require_int64_attr(model, "/model", "n_layer");
  m.n_head = require_int64_attr(model, "/model", "n_head");
  m.n_embd = require_int64_attr(model, "/model", "n_embd");
  m.seq_len = require_int64_attr(model, "/model", "seq_len");
  m.vocab_size = require_int64_attr(model, "/model", "vocab_size");
  m.padded_vocab_size = require_int64_attr(model, "/model", "padded_vocab_size");
  // A config's bounds (gpt_shape.h): a file is read without a config where triad-generate
  // samples from it, and its counts size every allocation.
  for (auto [name, v, most] :
       {std::tuple{"n_layer", m.n_layer, kMaxLayers}, std::tuple{"n_head", m.n_head, kMaxHeads},
        std::tuple{"n_embd", m.n_embd, kMaxWidth}, std::tuple{"seq_len", m.seq_len, kMaxSeqLen},
        std::tuple{"vocab_size", m.vocab_size, kMaxVocab}})
    TRIAD_CHECK(v >= 1 && v <= most, "attribute ", name, " of /model is ", v, ", not in [1, ", most,
                "]");
  // vocab_size rounded up for the saving run's grid (DESIGN.md §3: to a multiple of 128·tp; a
  // reader pads for its own grid, so only the order and the range are checked).
  TRIAD_CHECK(m.padded_vocab_size >= m.vocab_size &&
                  m.padded_vocab_size - m.vocab_size <= (int64_t(1) << 23),
              "attribute padded_vocab_size of /model is ", m.padded_vocab_size,
              ", not vocab_size (", m.vocab_size, ") rounded up for a grid");
  m.position = io::read_string_attr(model, "position").value_or("learned");
  TRIAD_CHECK(m.position == "learned" || m.position == "rope", "attribute position of /model is '",
              m.position, "', not learned or rope");
  if (m.position == "rope") {
    const std::optional<double> theta = io::read_double_attr(model, "rope_theta");
    TRIAD_CHECK(theta.has_value() && std::isfinite(*theta) && *theta > 1,
                "attribute rope_theta of /model is ",
                theta ? "not a finite number > 1" : "missing (position is rope)");
    m.rope_theta = *theta;
    m.rope_local_theta = io::read_double_attr(model, "rope_local_theta").value_or(0.0);
    TRIAD_CHECK(
        m.rope_local_theta == 0 || (std::isfinite(m.rope_local_theta) && m.rope_local_theta > 1),
        "attribute rope_local_theta of /model is ", m.rope_local_theta,
        ", not 0 or a finite number > 1");
    m.rope_scaling = io::read_string_attr(model, "rope_scaling").value_or("none");
    TRIAD_CHECK(m.rope_scaling == "none" || m.rope_scaling == "llama3" ||
                    m.rope_scaling == "yarn" || m.rope_scaling == "longrope" ||
                    m.rope_scaling == "linear",
                "attribute rope_scaling of /model is '", m.rope_scaling,
                "', not none, llama3, yarn, longrope or linear");
    // A scaling's numbers: finite doubles > 0, and the original context.
    auto positive = [&](const char* name) {
      const std::optional<double> v = io::read_double_attr(model, name);
      TRIAD_CHECK(v.has_value() && std::isfinite(*v) && *v > 0, "attribute ", name,
                  " of /model is ",
                  v ? std::string("not a finite number > 0")
                    : "missing (rope_scaling is " + m.rope_scaling + ")");
      return *v;
    };
    if (m.rope_scaling != "none") {
      m.rope_scaling_factor = positive("rope_scaling_factor");
      if (m.rope_scaling != "linear")
        m.rope_original_positions = require_int64_attr(model, "/model", "rope_original_positions");
    }
    TRIAD_CHECK(m.rope_scaling != "linear" || m.rope_scaling_factor >= 1,
                "attribute rope_scaling_factor of /model is ", m.rope_scaling_factor,
                ", below 1 (rope_scaling is linear)");
    if (m.rope_scaling == "yarn") {
      m.rope_yarn_beta_fast = positive("rope_yarn_beta_fast");
      m.rope_yarn_beta_slow = positive("rope_yarn_beta_slow");
      TRIAD_CHECK(m.rope_original_positions >= 1 && m.rope_yarn_beta_fast >= m.rope_yarn_beta_slow,
                  "attributes rope_original_positions and rope_yarn_beta_* of /model are "
                  "inconsistent (need >= 1 positions and fast >= slow)");
      m.rope_yarn_truncate = flag("rope_yarn_truncate", 1);
      // DeepSeek's form (absent: Qwen's, which files from before these attributes hold).
      m.rope_yarn_mscale = io::read_double_attr(model, "rope_yarn_mscale").value_or(1.0);
      m.rope_yarn_mscale_all_dim =
          io::read_double_attr(model, "rope_yarn_mscale_all_dim").value_or(0.0);
      TRIAD_CHECK(std::isfinite(m.rope_yarn_mscale) && m.rope_yarn_mscale >= 0 &&
                      m.rope_yarn_mscale <= 100 && std::isfinite(m.rope_yarn_mscale_all_dim) &&
                      m.rope_yarn_mscale_all_dim >= 0 && m.rope_yarn_mscale_all_dim <= 100,
                  "attributes rope_yarn_mscale (", m.rope_yarn_mscale,
                  ") and rope_yarn_mscale_all_dim (", m.rope_yarn_mscale_all_dim,
                  ") of /model are not both in [0, 100]");
    }
    if (m.rope_scaling == "longrope") {
      // One divisor per rotated pair in each list (checked below, with the head's width).
      auto divisors = [&](const char* name) {
        const std::optional<std::vector<double>> v = io::read_doubles_attr(model, name);
        TRIAD_CHECK(v.has_value() && !v->empty() &&
                        std::all_of(v->begin(), v->end(),
                                    [](double x) { return std::isfinite(x) && x > 0; }),
                    "attribute ", name, " of /model is ",
                    v ? "not a list of finite numbers > 0" : "missing (rope_scaling is longrope)");
        return *v;
      };
      m.rope_short_factor = divisors("rope_short_factor");
      m.rope_long_factor = divisors("rope_long_factor");
      // (The attention scale divides by ln L: a stretched context needs L >= 2.)
      TRIAD_CHECK(m.rope_original_positions >= 1 && m.rope_scaling_factor >= 1 &&
                      (m.rope_scaling_factor == 1 || m.rope_original_positions >= 2),
                  "attributes rope_* of /model are inconsistent (need >= 1 original positions, "
                  ">= 2 with a scaling factor > 1, and a scaling factor >= 1)");
    }
    if (m.rope_scaling == "llama3") {
      m.rope_low_freq_factor = positive("rope_low_freq_factor");
      m.rope_high_freq_factor = positive("rope_high_freq_factor");
      TRIAD_CHECK(
          m.rope_original_positions >= 1 && m.rope_high_freq_factor > m.rope_low_freq_factor,
          "attributes rope_original_positions and rope_*_freq_factor of /model are "
          "inconsistent (need >= 1 positions and high > low)");
    }
  }
  m.norm = io::read_string_attr(model, "norm").value_or("layernorm");
  TRIAD_CHECK(m.norm == "layernorm" || m.norm == "rmsnorm", "attribute norm of /model is '", m.norm,
              "', not layernorm or rmsnorm");
  m.bias = flag("bias");
  m.tied = flag("tie_embeddings");
  m.qk_norm = flag("qk_norm", 0);
  m.qk_norm_full = flag("qk_norm_full", 0);
  TRIAD_CHECK(m.qk_norm || !m.qk_norm_full,
              "attribute qk_norm_full of /model is 1 without qk_norm");
  m.attn_sinks = flag("attn_sinks", 0);
  m.qkv_bias = flag("qkv_bias", 0);
  TRIAD_CHECK(!(m.qkv_bias && m.bias),
              "attributes bias and qkv_bias of /model are both 1 (qkv_bias goes with bias 0)");
  m.mlp_bias = flag("mlp_bias", 0);
  TRIAD_CHECK(!(m.mlp_bias && m.bias),
              "attributes bias and mlp_bias of /model are both 1 (mlp_bias goes with bias 0)");
  m.norm_bias = flag("norm_bias", 0);
  m.norm_weight = flag("norm_weight", 1);
  m.parallel_residual = flag("parallel_residual", 0);
  m.branch_norm = flag("branch_norm", 0);
  m.pre_norm = flag("pre_norm", 1);
  TRIAD_CHECK(m.pre_norm || m.branch_norm,
              "attribute pre_norm of /model is 0 without branch_norm (no norm in the blocks)");
  m.shared_norm = flag("shared_norm", 0);
  m.head_bias = flag("head_bias", 0);
  TRIAD_CHECK(!m.head_bias || !m.tied,
              "attribute head_bias of /model is 1 with a tied head (tie_embeddings 1)");
  TRIAD_CHECK(!m.shared_norm || m.parallel_residual,
              "attribute shared_norm of /model is 1 without parallel_residual (one norm serves "
              "parallel branches only)");
  TRIAD_CHECK(!(m.norm_bias && m.bias),
              "attributes bias and norm_bias of /model are both 1 (norm_bias goes with bias 0)");
  TRIAD_CHECK(!(m.norm_bias && m.norm == "rmsnorm"),
              "attribute norm_bias of /model is 1 with norm rmsnorm (an RMSNorm has no bias)");
  m.norm_eps = io::read_double_attr(model, "norm_eps").value_or(1e-5);
  m.head_dim = io::read_int64_attr(model, "head_dim").value_or(0);
  m.kv_lora_rank = io::read_int64_attr(model, "kv_lora_rank").value_or(0);
  m.q_lora_rank = io::read_int64_attr(model, "q_lora_rank").value_or(0);
  m.qk_nope_head_dim = io::read_int64_attr(model, "qk_nope_head_dim").value_or(0);
  m.qk_rope_head_dim = io::read_int64_attr(model, "qk_rope_head_dim").value_or(0);
  m.v_head_dim = io::read_int64_attr(model, "v_head_dim").value_or(0);
  TRIAD_CHECK(m.kv_lora_rank >= 0 && m.q_lora_rank >= 0 && m.qk_nope_head_dim >= 0 &&
                  m.qk_rope_head_dim >= 0 && m.v_head_dim >= 0 &&
                  (m.kv_lora_rank > 0 ||
                   m.q_lora_rank + m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim == 0) &&
                  (m.kv_lora_rank == 0 || (m.qk_rope_head_dim > 0 && m.v_head_dim > 0)),
              "attributes kv_lora_rank, q_lora_rank, qk_nope_head_dim, qk_rope_head_dim and "
              "v_head_dim of /model do not describe a multi-head latent attention (",
              m.kv_lora_rank, ", ", m.q_lora_rank, ", ", m.qk_nope_head_dim, ", ",
              m.qk_rope_head_dim, ", ", m.v_head_dim, ")");
  // (gpt_shape.h's rule, which config_validate applies too: a model loaded without a config.)
  TRIAD_CHECK(rope_local_theta_built(m), "attribute rope_local_theta of /model is ",
              m.rope_local_theta, " beside YaRN's score scale (rope_yarn_mscale_all_dim ",
              m.rope_yarn_mscale_all_dim, ") or multi-head latent attention (kv_lora_rank ",
              m.kv_lora_rank, "), which triad does not build");
  m.mla_norm_eps = io::read_double_attr(model, "mla_norm_eps").value_or(0.0);
  TRIAD_CHECK(m.mla_norm_eps == 0 || (m.kv_lora_rank > 0 && std::isfinite(m.mla_norm_eps) &&
                                      m.mla_norm_eps > 0 && m.mla_norm_eps <= 0.1),
              "attribute mla_norm_eps of /model is ", m.mla_norm_eps,
              ", not 0 or in (0, 0.1] with multi-head latent attention");
  m.rotary_dim = io::read_int64_attr(model, "rotary_dim").value_or(0);
  {
    const int64_t hd = m.head_dim > 0 ? m.head_dim : m.n_embd / std::max<int64_t>(1, m.n_head);
    TRIAD_CHECK(m.rotary_dim >= 0 && m.rotary_dim % 2 == 0 && m.rotary_dim <= hd &&
                    (m.rotary_dim == 0 || m.position == "rope"),
                "attribute rotary_dim of /model is ", m.rotary_dim, ", not an even count in [0, ",
                hd, "] (the head's width; > 0 only with rope)");
    const size_t pairs = size_t(m.kv_lora_rank > 0 ? m.qk_rope_head_dim
                                : m.rotary_dim > 0 ? m.rotary_dim
                                                   : hd) /
                         2;
    TRIAD_CHECK(m.rope_scaling != "longrope" ||
                    (m.rope_short_factor.size() == pairs && m.rope_long_factor.size() == pairs),
                "attributes rope_short_factor and rope_long_factor of /model hold ",
                m.rope_short_factor.size(), " and ", m.rope_long_factor.size(),
                " factors, not one per rotated pair (", pairs, ")");
  }
  m.nope_every = io::read_int64_attr(model, "nope_every").value_or(0);
  TRIAD_CHECK(nope_every_built(m), "attribute nope_every of /model is ", m.nope_every,
              ", not in [0, 2^30] (and > 0 only with rope, without latent attention)");
  m.sliding_window = io::read_int64_attr(model, "sliding_window").value_or(0);
  TRIAD_CHECK(m.sliding_window >= 0 && m.sliding_window <= (int64_t(1) << 30),
              "attribute sliding_window of /model is ", m.sliding_window, ", not in [0, 2^30]");
  m.full_attention_every = io::read_int64_attr(model, "full_attention_every").value_or(0);
  TRIAD_CHECK(m.full_attention_every >= 0 && (m.full_attention_every == 0 || m.sliding_window > 0),
              "attribute full_attention_every of /model is ", m.full_attention_every,
              ", not >= 0 (and > 0 only with sliding_window)");
  m.full_attention_first = flag("full_attention_first", 0);
  TRIAD_CHECK(!m.full_attention_first || m.full_attention_every > 0,
              "attribute full_attention_first of /model is 1 without full_attention_every");
  m.attn_scale = io::read_double_attr(model, "attn_scale").value_or(0.0);
  TRIAD_CHECK(std::isfinite(m.attn_scale) && m.attn_scale >= 0 && m.attn_scale <= 100,
              "attribute attn_scale of /model is ", m.attn_scale, ", not in [0, 100]");
  m.mup_base_width = io::read_int64_attr(model, "mup_base_width").value_or(0);
  TRIAD_CHECK(m.mup_base_width >= 0 && m.mup_base_width <= (int64_t(1) << 20),
              "attribute mup_base_width of /model is ", m.mup_base_width, ", not in [0, 2^20]");
  m.mtp_depth = io::read_int64_attr(model, "mtp_depth").value_or(0);
  TRIAD_CHECK(m.mtp_depth >= 0 && m.mtp_depth <= 16, "attribute mtp_depth of /model is ",
              m.mtp_depth, ", not in [0, 16]");
  m.moe_experts = io::read_int64_attr(model, "moe_experts").value_or(0);
  TRIAD_CHECK(m.moe_experts >= 0 && m.moe_experts <= kMaxExperts,
              "attribute moe_experts of /model is ", m.moe_experts, ", not in [0, ", kMaxExperts,
              "]");
  if (m.moe_experts > 0) {
    m.moe_top_k = io::read_int64_attr(model, "moe_top_k").value_or(0);
    TRIAD_CHECK(m.moe_top_k >= 1 && m.moe_top_k <= m.moe_experts,
                "attribute moe_top_k of /model is ", m.moe_top_k, ", not in [1, ", m.moe_experts,
                "] (moe_experts)");
    m.moe_normalize = flag("moe_normalize");
    m.moe_score = io::read_string_attr(model, "moe_score").value_or("softmax");
    TRIAD_CHECK(m.moe_score == "softmax" || m.moe_score == "sigmoid",
                "attribute moe_score of /model is \"", m.moe_score, "\", not softmax or sigmoid");
    m.moe_routed_scale = io::read_double_attr(model, "moe_routed_scale").value_or(1.0);
    TRIAD_CHECK(routed_scale_valid(m.moe_routed_scale), "attribute moe_routed_scale of /model is ",
                m.moe_routed_scale, ", not in (0, 1e6]");
    m.moe_groups = io::read_int64_attr(model, "moe_groups").value_or(1);
    m.moe_group_top_k = io::read_int64_attr(model, "moe_group_top_k").value_or(1);
    {
      const int64_t E = m.moe_experts, G = m.moe_groups, M = m.moe_group_top_k;
      TRIAD_CHECK(group_settings_valid(E, G, M, m.moe_top_k), "attributes moe_groups (", G,
                  ") and moe_group_top_k (", M, ") of /model do not suit its ", E,
                  " experts and top ", m.moe_top_k);
    }
    m.moe_group_score = io::read_string_attr(model, "moe_group_score").value_or("top2");
    TRIAD_CHECK((m.moe_group_score == "top2" || m.moe_group_score == "max") &&
                    (m.moe_group_score == "top2" || m.moe_groups > 1),
                "attribute moe_group_score of /model is \"", m.moe_group_score,
                "\", not top2, or max with groups (moe_groups)");
    m.moe_shared_hidden = io::read_int64_attr(model, "moe_shared_hidden").value_or(0);
    m.moe_shared_gate = flag("moe_shared_gate", 0);
    TRIAD_CHECK(!m.moe_shared_gate || m.moe_shared_hidden > 0,
                "attribute moe_shared_gate of /model is 1 without shared experts "
                "(moe_shared_hidden)");
    m.moe_bias = flag("moe_bias", 0);
    TRIAD_CHECK(m.moe_shared_hidden >= 0 && m.moe_shared_hidden <= (int64_t(1) << 30),
                "attribute moe_shared_hidden of /model is ", m.moe_shared_hidden,
                ", not in [0, 2^30]");
    m.moe_first_dense = io::read_int64_attr(model, "moe_first_dense").value_or(0);
    m.moe_every = io::read_int64_attr(model, "moe_every").value_or(1);
    TRIAD_CHECK(
        m.moe_first_dense >= 0 && m.moe_every >= 1 && m.moe_first_dense + m.moe_every <= m.n_layer,
        "attributes moe_first_dense (", m.moe_first_dense, ") and moe_every (", m.moe_every,
        ") of /model leave no layer with experts among ", m.n_layer);
    m.moe_dense_hidden = io::read_int64_attr(model, "moe_dense_hidden").value_or(0);
    TRIAD_CHECK(m.moe_dense_hidden >= 0 && m.moe_dense_hidden <= (int64_t(1) << 30),
                "attribute moe_dense_hidden of /model is ", m.moe_dense_hidden,
                ", not in [0, 2^30]");
  }
  m.logit_softcap = io::read_double_attr(model, "logit_softcap").value_or(0.0);
  TRIAD_CHECK(std::isfinite(m.logit_softcap) && m.logit_softcap >= 0 && m.logit_softcap <= 1e4,
              "attribute logit_softcap of /model is ", m.logit_softcap, ", not in [0, 1e4]");
  for (auto [name, v] :
       {std::pair{"logit_scale", &m.logit_scale}, std::pair{"residual_scale", &m.residual_scale}}) {
    *v = io::read_double_attr(model, name).value_or(1.0);
    TRIAD_CHECK(std::isfinite(*v) && *v > 0 && *v <= 1e4, "attribute ", name, " of /model is ", *v,
                ", not in (0, 1e4]");
  }
  m.attn_softcap = io::read_double_attr(model, "attn_softcap").value_or(0.0);
  TRIAD_CHECK(std::isfinite(m.attn_softcap) && m.attn_softcap >= 0 && m.attn_softcap <= 1e4,
              "attribute attn_softcap of /model is ", m.attn_softcap, ", not in [0, 1e4]");
  m.clip_qkv = io::read_double_attr(model, "clip_qkv").value_or(0.0);
  TRIAD_CHECK(std::isfinite(m.clip_qkv) && m.clip_qkv >= 0 && m.clip_qkv <= 1e4,
              "attribute clip_qkv of /model is ", m.clip_qkv, ", not in [0, 1e4]");
  m.glu_alpha = io::read_double_attr(model, "glu_alpha").value_or(1.0);
  TRIAD_CHECK(std::isfinite(m.glu_alpha) && m.glu_alpha > 0 && m.glu_alpha <= 100,
              "attribute glu_alpha of /model is ", m.glu_alpha, ", not in (0, 100]");
  m.glu_limit = io::read_double_attr(model, "glu_limit").value_or(0.0);
  TRIAD_CHECK(m.glu_limit == 0 || (m.glu_limit >= 1e-6 && m.glu_limit <= 1e4),
              "attribute glu_limit of /model is ", m.glu_limit, ", not 0 or in [1e-6, 1e4]");
  m.glu_offset = io::read_double_attr(model, "glu_offset").value_or(0.0);
  TRIAD_CHECK(std::isfinite(m.glu_offset) && std::abs(m.glu_offset) <= 1e4,
              "attribute glu_offset of /model is ", m.glu_offset, ", not in [-1e4, 1e4]");
  m.embed_scale = io::read_double_attr(model, "embed_scale").value_or(1.0);
  TRIAD_CHECK(std::isfinite(m.embed_scale) && m.embed_scale > 0 && m.embed_scale <= 1e4,
              "attribute embed_scale of /model is ", m.embed_scale, ", not in (0, 1e4]");
  TRIAD_CHECK(m.head_dim >= 0 && m.head_dim <= 4096 &&
                  (m.head_dim > 0 || m.n_embd % std::max<int64_t>(1, m.n_head) == 0),
              "attribute head_dim of /model is ", m.head_dim,
              ", not in [0, 4096] (0 needs n_head to divide n_embd)");
  TRIAD_CHECK(std::isfinite(m.norm_eps) && m.norm_eps > 0 && m.norm_eps <= 0.1,
              "attribute norm_eps of /model is ", m.norm_eps, ", not in (0, 0.1]");
  m.mlp = io::read_string_attr(model, "mlp").value_or("gelu");
  TRIAD_CHECK(m.mlp == "gelu" || m.mlp == "gelu_exact" || m.mlp == "swiglu" || m.mlp == "geglu" ||
                  m.mlp == "relu2" || m.mlp == "relu",
              "attribute mlp of /model is '", m.mlp,
              "', not gelu, gelu_exact, swiglu, geglu, relu2 or relu");
  TRIAD_CHECK(m.mlp == "swiglu" || (m.glu_alpha == 1 && m.glu_limit == 0 && m.glu_offset == 0),
              "attributes glu_alpha, glu_limit, glu_offset of /model are ", m.glu_alpha, ", ",
              m.glu_limit, ", ", m.glu_offset, " with mlp ", m.mlp,
              ": they shape SwiGLU only (1, 0, 0 otherwise)");
  m.mlp_hidden = io::read_int64_attr(model, "mlp_hidden").value_or(4 * m.n_embd);
  TRIAD_CHECK(m.mlp_hidden >= 1, "attribute mlp_hidden of /model is ", m.mlp_hidden,
              ", not a positive count");
  m.n_kv_head = io::read_int64_attr(model, "n_kv_head").value_or(m.n_head);
  TRIAD_CHECK(m.n_kv_head >= 1 && m.n_head % m.n_kv_head == 0, "attribute n_kv_head of /model is ",
              m.n_kv_head, ", not a positive divisor of n_head (", m.n_head, ")");
  return m;
}

}  // namespace triad::io
