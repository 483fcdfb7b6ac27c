#include "triad/train/run_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <sstream>

#include "triad/core/error.h"
#include "triad/kernels/cuda_backend.h"  // cuda_flash_head_dim, cuda_flash_drops
#include "triad/optim/muon.h"
#include "triad/optim/optimizer.h"
#include "triad/parallel/pipeline_schedule.h"
#include "triad/train/noise_scale.h"

namespace triad {
namespace {

// The elements of spec s whose products a token of this rank costs: its own, or under expert
// parallelism those of all the experts of its tensor-parallel part (the rank's E/ep experts
// serve the tokens of ep ranks: per token of its own, the work of all E).
double token_numel(const ParamSpec& s) {
  return double(s.numel) * (s.expert_parallel ? s.expert_parts : 1);
}

// 6 FLOPs per weight of a matmul per token (2 forward, 4 backward), for the weights this rank
// multiplies with: every 2-D tensor but the position table, and wte where it is the head (the
// rank of the last chunk; on a first stage without the head it is only looked up).
double stage_flops_per_token(const std::vector<ParamSpec>& specs, const GptShape& shape,
                             const ModelParallel& mp, int layers) {
  double weights = 0;
  for (const auto& s : specs) {
    if (s.name == "wpe/weight") continue;
    // wte is only looked up where it is not the head (the first stages; every stage untied).
    if (s.name == "wte/weight" && (!mp.holds_head() || !shape.tied)) continue;
    weights += matmul_weights_per_token(size_t(token_numel(s)), s.name, s.shape.size(), shape);
  }
  // The multi-token prediction modules (their tensors counted above): the head once more each,
  // and their blocks' attention.
  if (mp.holds_head() && shape.mtp_depth > 0) {
    weights += double(shape.mtp_depth) * shape.padded_vocab_size / mp.tp * shape.n_embd;
    layers += shape.mtp_depth;
  }
  return 6.0 * weights + 6.0 * layers * shape.attn_flops_width() / mp.tp * double(shape.seq_len);
}

// 2 FLOPs per weight of the layers' linear layers per token: their weight gradients.
double weight_grad_flops_per_token(const std::vector<ParamSpec>& specs, const GptShape& shape) {
  double weights = 0;
  for (const auto& s : specs)
    if (s.name.starts_with("h/"))
      weights += matmul_weights_per_token(size_t(token_numel(s)), s.name, s.shape.size(), shape);
  return 2.0 * weights;
}

std::string megabytes(size_t bytes) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << double(bytes) / 1e6;
  return os.str();
}

}  // namespace

ModelShape model_shape(const Config& cfg) {
  const auto& c = cfg.model;
  ModelShape m{c.n_layer, c.n_head, c.n_embd, c.seq_len, c.vocab_size, cfg.padded_vocab_size()};
  m.position = c.position;
  m.rope_theta = c.position == "rope" ? c.rope_theta : 0.0;
  m.rope_local_theta = c.position == "rope" ? c.rope_local_theta : 0.0;
  if (c.rope_scaling == "llama3") {
    m.rope_scaling = "llama3";
    m.rope_scaling_factor = c.rope_scaling_factor;
    m.rope_low_freq_factor = c.rope_low_freq_factor;
    m.rope_high_freq_factor = c.rope_high_freq_factor;
    m.rope_original_positions = c.rope_original_positions;
  } else if (c.rope_scaling == "yarn") {
    m.rope_scaling = "yarn";
    m.rope_scaling_factor = c.rope_scaling_factor;
    m.rope_yarn_beta_fast = c.rope_yarn_beta_fast;
    m.rope_yarn_beta_slow = c.rope_yarn_beta_slow;
    m.rope_yarn_mscale = c.rope_yarn_mscale;
    m.rope_yarn_mscale_all_dim = c.rope_yarn_mscale_all_dim;
    m.rope_yarn_truncate = c.rope_yarn_truncate;
    m.rope_original_positions = c.rope_original_positions;
  } else if (c.rope_scaling == "linear") {  // (no original context: every frequency alike)
    m.rope_scaling = "linear";
    m.rope_scaling_factor = c.rope_scaling_factor;
  } else if (c.rope_scaling == "longrope") {
    m.rope_scaling = "longrope";
    m.rope_scaling_factor = c.rope_scaling_factor;
    m.rope_original_positions = c.rope_original_positions;
    const int pairs = c.rotated_pairs();
    m.rope_short_factor = parse_rope_factors(c.rope_short_factor, "model.rope_short_factor", pairs);
    m.rope_long_factor = parse_rope_factors(c.rope_long_factor, "model.rope_long_factor", pairs);
  }
  m.norm = c.norm;
  m.bias = c.bias;
  m.qkv_bias = c.qkv_bias;
  m.mlp_bias = c.mlp_bias;
  m.norm_bias = c.norm_bias;
  m.norm_weight = c.norm_weight;
  m.head_dim = c.head_dim;
  // All of a head's values rotating is plain rope: no attribute (0), whichever way it was said.
  m.rotary_dim = c.position == "rope" && c.rotary_dim < c.hd() ? c.rotary_dim : 0;
  m.nope_every = c.position == "rope" ? c.nope_every : 0;
  m.sliding_window = c.sliding_window;
  m.full_attention_every = c.full_attention_every;
  m.full_attention_first = c.full_attention_first;
  m.logit_softcap = c.logit_softcap;
  m.attn_softcap = c.attn_softcap;
  m.clip_qkv = c.clip_qkv;
  m.glu_alpha = c.glu_alpha;
  m.glu_limit = c.glu_limit;
  m.glu_offset = c.glu_offset;
  m.logit_scale = c.logit_scale;
  m.residual_scale = c.residual_scale;
  m.embed_scale = c.embed_scale;
  m.parallel_residual = c.parallel_residual;
  m.branch_norm = c.branch_norm;
  m.pre_norm = c.pre_norm;
  m.shared_norm = c.shared_norm;
  m.head_bias = c.head_bias;
  m.attn_scale = c.attn_scale;
  m.mup_base_width = c.mup_base_width;
  m.norm_eps = c.norm_eps;
  m.mlp = c.mlp;
  m.mlp_hidden = cfg.mlp_hidden_size();
  m.tied = c.tie_embeddings;
  m.n_kv_head = c.kv_heads();
  m.qk_norm = c.qk_norm;
  m.qk_norm_full = c.qk_norm_full;
  m.attn_sinks = c.attn_sinks;
  m.kv_lora_rank = c.kv_lora_rank;
  m.q_lora_rank = c.q_lora_rank;
  m.qk_nope_head_dim = c.qk_nope_head_dim;
  m.qk_rope_head_dim = c.qk_rope_head_dim;
  m.v_head_dim = c.v_head_dim;
  m.mla_norm_eps = c.mla_norm_eps;
  m.moe_experts = c.moe_experts;
  m.moe_top_k = c.moe_top_k;
  m.moe_normalize = c.moe_normalize;
  m.moe_score = c.moe_score;
  m.moe_routed_scale = c.moe_routed_scale;
  m.moe_groups = c.moe_groups;
  m.moe_group_top_k = c.moe_group_top_k;
  m.moe_group_score = c.moe_group_score;
  m.moe_shared_hidden = c.moe_shared_hidden;
  m.moe_shared_gate = c.moe_shared_gate;
  m.moe_bias = c.moe_bias;
  m.mtp_depth = c.mtp_depth;
  m.moe_first_dense = c.moe_first_dense;
  m.moe_every = c.moe_every;
  m.moe_dense_hidden = c.moe_dense_hidden;
  return m;
}

GptShape gpt_shape(const ModelShape& m, int padded_vocab_size) {
  GptShape s{int(m.n_layer), int(m.n_head),     int(m.n_embd),
             int(m.seq_len), int(m.vocab_size), padded_vocab_size};
  s.rope = m.position == "rope";
  if (s.rope) s.rope_theta = m.rope_theta;
  if (s.rope) s.rope_local_theta = m.rope_local_theta;
  if (m.rope_scaling == "llama3") {
    s.rope_factor = m.rope_scaling_factor;
    s.rope_low_freq = m.rope_low_freq_factor;
    s.rope_high_freq = m.rope_high_freq_factor;
    s.rope_original_positions = int(m.rope_original_positions);
  } else if (m.rope_scaling == "yarn") {
    s.yarn = true;
    s.rope_factor = m.rope_scaling_factor;
    s.rope_beta_fast = m.rope_yarn_beta_fast;
    s.rope_beta_slow = m.rope_yarn_beta_slow;
    s.rope_mscale = m.rope_yarn_mscale;
    s.rope_mscale_all_dim = m.rope_yarn_mscale_all_dim;
    s.rope_yarn_truncate = m.rope_yarn_truncate;
    s.rope_original_positions = int(m.rope_original_positions);
  } else if (m.rope_scaling == "linear") {
    s.rope_linear = true;
    s.rope_factor = m.rope_scaling_factor;
  } else if (m.rope_scaling == "longrope") {
    s.rope_factor = m.rope_scaling_factor;
    s.rope_original_positions = int(m.rope_original_positions);
    // The model's context decides, as Hugging Face's Phi-3 decides by a call's length.
    s.rope_ext = m.seq_len > m.rope_original_positions ? m.rope_long_factor : m.rope_short_factor;
  }
  s.rmsnorm = m.norm == "rmsnorm";
  s.bias = m.bias;
  s.qkv_bias = m.qkv_bias;
  s.mlp_bias = m.mlp_bias;
  s.norm_bias = m.norm_bias;
  s.head_dim = int(m.head_dim);
  s.rotary_dim = int(m.rotary_dim);
  s.nope_every = int(m.nope_every);
  s.sliding_window = int(m.sliding_window);
  s.full_attention_every = int(m.full_attention_every);
  s.full_attention_first = m.full_attention_first;
  s.logit_softcap = float(m.logit_softcap);
  s.attn_softcap = float(m.attn_softcap);
  s.clip_qkv = float(m.clip_qkv);
  s.glu_alpha = float(m.glu_alpha);
  s.glu_limit = float(m.glu_limit);
  s.glu_offset = float(m.glu_offset);
  s.logit_scale = float(m.logit_scale);
  s.residual_scale = float(m.residual_scale);
  s.embed_scale = float(m.embed_scale);
  s.parallel_residual = m.parallel_residual;
  s.branch_norm = m.branch_norm;
  s.pre_norm = m.pre_norm;
  s.shared_norm = m.shared_norm;
  s.head_bias = m.head_bias;
  s.attn_scale = float(m.attn_scale);
  s.mup_base_width = int(m.mup_base_width);
  s.norm_eps = float(m.norm_eps);
  set_mlp(s, m.mlp);  // (checked by the config's validation, or when a checkpoint was read)
  s.mlp_hidden = int(m.mlp_hidden);
  s.tied = m.tied;
  s.n_kv_head = int(m.n_kv_head);
  s.qk_norm = m.qk_norm;
  s.qk_norm_full = m.qk_norm_full;
  s.attn_sinks = m.attn_sinks;
  s.kv_lora_rank = int(m.kv_lora_rank);
  s.q_lora_rank = int(m.q_lora_rank);
  s.qk_nope_head_dim = int(m.qk_nope_head_dim);
  s.qk_rope_head_dim = int(m.qk_rope_head_dim);
  s.v_head_dim = int(m.v_head_dim);
  s.mla_norm_eps = float(m.mla_norm_eps);
  // MLA rotates the first qk_rope_head_dim values of each assembled q and k head (Gpt::
  // mla_project's layout), as partial rotary would.
  if (s.mla()) s.rotary_dim = int(m.qk_rope_head_dim);
  s.moe_experts = int(m.moe_experts);
  s.moe_top_k = int(m.moe_top_k);
  s.moe_normalize = m.moe_normalize;
  s.moe_sigmoid = m.moe_score == "sigmoid";
  s.moe_routed_scale = float(m.moe_routed_scale);
  s.moe_groups = int(m.moe_groups);
  s.moe_group_top_k = int(m.moe_group_top_k);
  s.moe_group_by_best = m.moe_group_score == "max";
  s.moe_shared_hidden = int(m.moe_shared_hidden);
  s.moe_shared_gate = m.moe_shared_gate;
  s.moe_bias = m.moe_bias;
  s.mtp_depth = int(m.mtp_depth);
  s.moe_first_dense = int(m.moe_first_dense);
  s.moe_every = int(m.moe_every);
  s.moe_dense_hidden = int(m.moe_dense_hidden);
  return s;
}

GptShape gpt_shape(const Config& cfg) {
  const auto& m = cfg.model;
  GptShape s = gpt_shape(model_shape(cfg), cfg.padded_vocab_size());
  // What the run adds to the checkpoint's model: the capacity, the documents, the window's
  // schedule, the dropout.
  s.moe_capacity_factor = m.moe_capacity_factor;
  s.document_token = parse_document_mask(cfg.data.document_mask, m.vocab_size);
  s.reset_positions = cfg.data.reset_positions;
  s.window_scheduled = parse_window_warmup(cfg.train.window_warmup, m).on();
  s.hidden_dropout = float(cfg.train.hidden_dropout);
  s.attention_dropout = float(cfg.train.attention_dropout);
  return s;
}

ModelParallel model_parallel(const Config& cfg, int pp_rank, int tp_rank) {
  ModelParallel mp;
  mp.stage_layers = stage_layers(cfg);
  mp.tp = cfg.parallel.tp;
  mp.tp_rank = tp_rank;
  mp.pp = cfg.parallel.pp;
  mp.pp_rank = pp_rank;
  mp.virtual_stages = cfg.parallel.virtual_stages;
  if (mp.pp > 1) mp.placement = chunk_placement(parse_schedule_kind(cfg.parallel.schedule));
  mp.sequence_parallel = cfg.parallel.sequence_parallel;
  mp.cp = cfg.parallel.cp;
  mp.ep = cfg.parallel.ep;
  return mp;
}

ActivationOptions activation_options(const Config& cfg) {
  return ActivationOptions(
      {parse_recompute(cfg.train.recompute, "train.recompute"), cfg.train.recompute_layers},
      cfg.train.logits_chunk);
}

// Expert parallelism keeps the whole fp32 master on every rank (its experts' slices and the
// rest's differ) and gathers it in fp32.
bool zero_gathers_bf16(const Config& cfg) { return cfg.bf16() && cfg.parallel.ep == 1; }

PipelineSchedule pipeline_schedule(const Config& cfg, int m) {
  const int pp = cfg.parallel.pp, v = cfg.parallel.virtual_stages;
  PipelineSchedule s = make_schedule(parse_schedule_kind(cfg.parallel.schedule), pp, m, v);
  check_schedule(s, pp, m, v);
  return s;
}

std::vector<int> micro_batch_counts(const Config& cfg, int dp) {
  std::vector<int> counts;
  for (int b : ramp_batch_sizes(parse_batch_rampup(cfg.train.batch_rampup, cfg.train.batch_size),
                                cfg.train.batch_size))
    counts.push_back(b / (cfg.train.micro_batch_size * dp));
  return counts;
}

std::unique_ptr<ActivationSlots> ramp_slots(const Config& cfg, const ModelParallel& mp, int dp) {
  const std::vector<int> counts = micro_batch_counts(cfg, dp);
  if (mp.pp == 1 || counts.size() == 1) return nullptr;
  auto slots = std::make_unique<ActivationSlots>();
  for (int m : counts) slots->cover(Gpt::schedule_slots(mp, pipeline_schedule(cfg, m)));
  return slots;
}

ZeroOptions zero_options(const Config& cfg, int shard, int replicas) {
  ZeroOptions z;
  if (cfg.parallel.zero == 0) return z;
  z.shard = shard;
  z.master = zero_gathers_bf16(cfg) || cfg.parallel.zero == 3;
  z.bucketed_grads = cfg.parallel.zero >= 2;
  z.gathered_weights = cfg.parallel.zero == 3;
  z.expert_shards = replicas / std::max(1, cfg.parallel.ep);
  return z;
}

size_t fp32_attention_scratch_bytes(const Config& cfg) {
  if (cfg.run.backend != "cuda") return 0;
  const ModelConfig& m = cfg.model;
  const int hd = m.hd();  // (multi-head latent attention's padded heads)
  const bool capped = m.attn_softcap > 0, dropping = cfg.train.attention_dropout > 0;
  // The flash kernels (bf16, the heads and dropout they take) keep no T×T matrix.
  const bool flash =
      cfg.bf16() && cuda_flash_head_dim(hd) && cuda_flash_drops(dropping, float(m.attn_softcap));
  if (flash) return 0;
  // One micro-batch's call at a time, this rank's heads (the fp32 path runs whole sequences,
  // no context parallelism).
  const double tt = double(m.seq_len) * m.seq_len;
  const double A =
      double(cfg.train.micro_batch_size) * (m.n_head / std::max(1, cfg.parallel.tp)) * tt;
  const double n = double(cfg.train.micro_batch_size) * m.seq_len * m.n_head /
                   std::max(1, cfg.parallel.tp) * hd;  // one widened [B,T,C_local] matrix
  // bf16 runs the fp32 attention on widened copies: 8n + 2A floats in the backward
  // (cuda_attention_bf16.cu's Widened); fp32 keeps its probabilities and their gradient among
  // the activations. Either adds A for the dropped copy and A for the uncapped scores.
  double floats = cfg.bf16() ? 8 * n + 2 * A : 0.0;
  if (dropping) floats += A;
  if (capped) floats += A;
  return size_t(floats * 4);
}

RunPlan plan_run(const Config& cfg, int world_size) {
  TRIAD_CHECK(world_size >= 1, "--plan-ranks must be >= 1 (got ", world_size, ")");
  validate(cfg, world_size);
  RunPlan p;
  p.grid.tp = cfg.parallel.tp;
  p.grid.pp = cfg.parallel.pp;
  p.grid.cp = cfg.parallel.cp;
  p.grid.ep = cfg.parallel.ep;
  p.grid.dp = world_size / (p.grid.tp * p.grid.pp * p.grid.cp);
  // The parameters' replicas: data- and context-parallel ranks alike (ProcessGrid::dp()).
  const int replicas = p.grid.dp * p.grid.cp;
  p.micro_batch_size = cfg.train.micro_batch_size;
  p.micro_batches = cfg.train.batch_size / (p.micro_batch_size * p.grid.dp);
  p.precision = cfg.bf16() ? Precision::bf16 : Precision::fp32;
  const ActivationOptions options = activation_options(cfg);
  p.recompute = options.recompute;
  const GptShape shape = gpt_shape(cfg);
  const int v = cfg.parallel.virtual_stages;
  PipelineSchedule schedule;
  if (p.grid.pp > 1) schedule = pipeline_schedule(cfg, p.micro_batches);
  for (int stage = 0; stage < p.grid.pp; ++stage) {
    const ModelParallel mp = model_parallel(cfg, stage, 0);  // every tp rank holds the same sizes
    StageMemory m;
    m.stage = stage;
    m.layers = mp.rank_layers(shape.n_layer);
    const auto specs = gpt_rank_layout(shape, mp);
    for (const auto& s : specs) m.parameters += int64_t(s.numel);
    m.model = Gpt::memory_plan(
        shape, p.micro_batch_size, replicas, mp, p.grid.pp > 1 ? &schedule : nullptr, p.precision,
        options, zero_options(cfg, 0, replicas), ramp_slots(cfg, mp, p.grid.dp).get());
    if (cfg.run.fp8 != "off") m.model.other += Gpt::fp8_amax_floats(shape, mp) * sizeof(float);
    // eval.ema: the weights set aside while the moving average is scored (at most the weights'
    // and their bf16 copy's buffers; Trainer::State::use_moving_average).
    if (cfg.eval.ema) m.model.other += m.model.weights + m.model.weights_bf16;
    // train.noise_every under context or expert parallelism: the summing copy on its steps.
    if (cfg.train.noise_every > 0 && (cfg.parallel.cp > 1 || cfg.parallel.ep > 1))
      m.model.other += std::min(kNoiseSumFloats, m.model.buffer_floats) * sizeof(float);
    // The trainer's optimizer and ZeRO slice (Trainer::State::setup_model).
    const bool zero = cfg.parallel.zero >= 1;
    const size_t range = zero ? m.model.buffer_floats / size_t(replicas) : m.model.buffer_floats;
    // The optimizer's matrices (Muon's scratch and rounds): the trainable ones (train.freeze).
    const auto trained = trainable_specs(specs, gpt_parameter_layout(shape), cfg.train.freeze);
    m.optimizer = Optimizer::state_bytes_for(cfg.optim, range, trained, p.grid.tp, replicas);
    m.grad_shard = zero ? range * sizeof(float) : 0;
    if (zero && p.grid.ep > 1) {
      // ZeRO with expert parallelism (Trainer::State): the experts' state and gradient in
      // slices over their replicas apart, of the buffer and with a copy of the slice for the
      // gather (ZeRO-1/2), or of the packed experts (ZeRO-3).
      std::vector<ParamSpec> dense, experts;
      for (const auto& s : trained) (s.expert_parallel ? experts : dense).push_back(s);
      const int expert_replicas = replicas / p.grid.ep;
      const bool packed = cfg.parallel.zero == 3;
      const ExpertPacking pk = expert_packing(specs, m.model.param_floats, expert_replicas);
      const size_t expert_range =
          (packed ? pk.padded : m.model.buffer_floats) / size_t(expert_replicas);
      if (packed)
        for (auto& s : experts) s.offset = pk.packed(s.offset);
      m.optimizer = Optimizer::state_bytes_for(cfg.optim, range, dense, p.grid.tp, replicas);
      if (!experts.empty()) {
        m.optimizer += Optimizer::state_bytes_for(cfg.optim, expert_range, experts, p.grid.tp,
                                                  expert_replicas);
        m.grad_shard += (packed ? 1 : 2) * expert_range * sizeof(float);
      }
    }
    m.flops_per_token = stage_flops_per_token(specs, shape, mp, m.layers);
    m.recompute_flops_per_token = Gpt::recompute_flops_per_token(shape, mp, p.recompute);
    m.weight_grad_flops_per_token = weight_grad_flops_per_token(specs, shape);
    if (mp.holds_head())
      for (const auto& s : specs)
        if (s.name == (shape.tied ? "wte/weight" : "lm_head/weight"))  // (and the modules')
          m.head_backward_flops_per_token = 4.0 * double(s.numel) * (1 + shape.mtp_depth);
    // The trainer's reduction (Trainer::run): ZeRO reduce-scatters and gathers even on a group
    // of one (local copies, no wire): the buckets of the parameters (unpadded), ZeRO-1 those
    // final after the step's micro-batches, ZeRO-2 and 3 each micro-batch's; the all-reduce runs
    // for dp·cp > 1.
    const double d = replicas;
    if (zero) {
      const size_t reduced = cfg.parallel.zero == 1
                                 ? m.model.param_floats
                                 : m.model.param_floats * size_t(p.micro_batches);
      m.dp_reduce_scatter = reduced * sizeof(float);
      // The slices come back as the bf16 copy or as fp32 master weights (zero_gathers_bf16);
      // ZeRO-3 gathers layers instead, of the model's precision, each rank handing in its part
      // of each (on average 1/dp: the parts differ by rank, their sum over the group does not).
      const bool bf16 = cfg.parallel.zero == 3 ? cfg.bf16() : zero_gathers_bf16(cfg);
      const size_t elem = bf16 ? sizeof(bf16_t) : sizeof(float);
      // Expert parallelism: the experts' elements (x of the reduced and gathered ones) travel
      // over their de = (dp/ep)·cp replicas instead; ZeRO-1 and 2 gather the whole buffer over
      // dp and then the experts' extents again over edp (Trainer::State::gather_experts).
      const size_t expert_replicas = size_t(replicas / p.grid.ep);
      const double de = double(expert_replicas);
      const size_t x = expert_packing(specs, m.model.param_floats, 1).floats;
      const size_t x_reduced = reduced * x / m.model.param_floats * sizeof(float);
      // A ring moves (n−1)/n of what it reduce-scatters, and a gather brings the other n−1
      // ranks' parts, over each group of n.
      double gather_wire = 0;
      if (cfg.parallel.zero == 3) {
        const size_t gx = Gpt::gathered_per_step(shape, mp, p.micro_batches, true) * elem;
        const size_t g = Gpt::gathered_per_step(shape, mp, p.micro_batches) * elem - gx;
        m.dp_all_gather = g / size_t(replicas) + gx / expert_replicas;
        gather_wire = (d - 1) / d * double(g) + (de - 1) / de * double(gx);
      } else {
        const size_t gx = p.grid.ep > 1 ? x * sizeof(float) : 0;
        m.dp_all_gather = range * elem + gx / expert_replicas;
        gather_wire = (d - 1) * double(range * elem) + (de - 1) / de * double(gx);
      }
      m.dp_wire_bytes = (d - 1) / d * double(m.dp_reduce_scatter - x_reduced) +
                        (de - 1) / de * double(x_reduced) + gather_wire;
    } else if (replicas > 1) {
      m.dp_all_reduce = m.model.param_floats * sizeof(float);
      // Expert parallelism: the experts' part over their (dp/ep)·cp replicas.
      size_t experts = 0;
      for (const auto& s : specs)
        if (s.expert_parallel) experts += s.numel;
      const double de = d / p.grid.ep;
      m.dp_wire_bytes = 2 * (d - 1) / d * double(m.dp_all_reduce - experts * sizeof(float)) +
                        2 * (de - 1) / de * double(experts * sizeof(float));
    }
    if (cfg.optim.name == "muon") {
      // Muon (optim/muon.h): rank 0's Newton–Schulz, the first matrix of each round; with
      // dp > 1 under ZeRO each round's all-to-all of u from the slices to the ranks that take
      // the matrices (each rank sending its pieces, on average 1/dp of them: they differ by
      // rank, their sum over the group does not; each rank receives its matrix less its own
      // piece), then in each round the fp32 all-gather of the ranks' results (the round's
      // largest shard each).
      // Expert parallelism: the experts' matrices in rounds of their replicas, (dp/ep)·cp.
      const std::vector<MuonMatrix> list = muon_matrices(trained);
      const int sizes[2] = {replicas, replicas / p.grid.ep};
      size_t gathered[2] = {0, 0}, pieces[2] = {0, 0};
      for (const auto& r : muon_rounds(list, sizes[0], sizes[1])) {
        const MuonMatrix& first = list[r.matrices.front()];
        if (zero)
          for (size_t i : r.matrices) pieces[r.experts] += list[i].numel;
        m.optimizer_flops += newton_schulz_flops(first.rows, first.cols, cfg.optim.muon_ns_steps);
        if (p.grid.tp > 1 && first.split)
          m.tp_muon_gather += first.numel * size_t(p.grid.tp - 1) * sizeof(float);
        gathered[r.experts] += r.count;
      }
      for (int e = 0; e < 2; ++e) {
        if (sizes[e] <= 1) continue;
        const double g = sizes[e];
        m.dp_all_gather += gathered[e] * sizeof(float);
        m.dp_all_to_all += pieces[e] * sizeof(float) / size_t(sizes[e]);
        m.dp_wire_bytes += (g - 1) * double(gathered[e] * sizeof(float)) +
                           (g - 1) / (g * g) * double(pieces[e] * sizeof(float));
      }
    }
    if (p.grid.cp > 1) {
      // Each layer gathers its keys and values in the forward pass, again in the backward, and a
      // third time where full recomputation reruns the forward; one reduce-scatter of their
      // gradients (ModelParallel: gpt_context.cpp). Rows here: mbs·seq_len/cp per micro-batch.
      const auto& mc = cfg.model;
      const size_t hd = size_t(mc.head_dim > 0 ? mc.head_dim : mc.n_embd / mc.n_head);
      const size_t kv = 2 * size_t(mc.kv_heads()) * hd / size_t(p.grid.tp);
      const size_t local = size_t(p.micro_batch_size) * size_t(mc.seq_len / p.grid.cp) * kv;
      const size_t elem = p.precision == Precision::bf16 ? sizeof(bf16_t) : sizeof(float);
      int recomputed = 0;  // this stage's layers that rerun their forward
      if (p.recompute.mode == Recompute::full)
        for (int c = 0; c < mp.virtual_stages; ++c)
          recomputed += p.recompute.count(mp.chunk_layers(mp.global_chunk(c), mc.n_layer));
      const size_t mbs = size_t(p.micro_batches);
      m.cp_all_gather = (2 * size_t(m.layers) + size_t(recomputed)) * mbs * local * elem;
      m.cp_reduce_scatter = size_t(m.layers) * mbs * size_t(p.grid.cp) * local * sizeof(float);
    }
    if (p.grid.ep > 1) {
      // One micro-batch's exchanges: per layer with experts its forward's counts and two of
      // rows, the backward's two; a full recomputation reruns the forward's.
      size_t passes = 0, forwards = 0;
      for (int c = 0; c < mp.virtual_stages; ++c) {
        const int g = mp.global_chunk(c), first = mp.first_layer(g, shape.n_layer);
        for (int i = 0; i < mp.chunk_layers(g, shape.n_layer); ++i)
          if (shape.moe_layer(first + i)) {
            const size_t runs = p.recompute.in_layer(i) == Recompute::full ? 2 : 1;
            forwards += runs;
            passes += 2 * runs + 2;
          }
      }
      const size_t rows =
          size_t(p.micro_batch_size) * size_t(shape.seq_len / p.grid.cp) * size_t(shape.moe_top_k);
      const size_t elem = p.precision == Precision::bf16 ? sizeof(bf16_t) : sizeof(float);
      const size_t counts = forwards * size_t(shape.moe_experts) * sizeof(int);
      m.ep_all_to_all =
          size_t(p.micro_batches) * (passes * rows * size_t(shape.n_embd) * elem + counts);
    }
    p.stages.push_back(m);
  }
  p.model_flops_per_token = Gpt::flops_per_token(shape);
  // Tokens of a micro-batch on one rank: a context-parallel rank holds 1/cp of each sequence.
  const double tokens_mb = double(p.micro_batch_size) * shape.seq_len / p.grid.cp;
  if (p.grid.pp > 1) {
    // Each chunk's share of its stage's layers, and the head (forward 2, backward 4 FLOPs per
    // weight, both with the loss in the forward pass) on the chunk that holds it.
    ChunkTimes t;
    for (const auto& s : p.stages) {
      const ModelParallel mp = model_parallel(cfg, s.stage, 0);
      const double head_bwd = s.head_backward_flops_per_token, head = 1.5 * head_bwd;
      const double layers_fwd = (s.flops_per_token - head) / 3;
      std::vector<double> fwd, bwd, wgt;
      for (int c = 0; c < v; ++c) {
        const int g = mp.global_chunk(c);
        const double share =
            s.layers > 0 ? double(mp.chunk_layers(g, shape.n_layer)) / s.layers : 1.0 / v;
        const bool with_head = g == mp.chunks() - 1;
        fwd.push_back((layers_fwd * share + (with_head ? head : 0.0)) * tokens_mb);
        bwd.push_back((2 * layers_fwd + s.recompute_flops_per_token) * share * tokens_mb);
        wgt.push_back(s.weight_grad_flops_per_token * share * tokens_mb);
      }
      t.fwd.push_back(fwd);
      t.bwd.push_back(bwd);
      t.wgt.push_back(wgt);
    }
    const SimResult r = simulate(schedule, p.grid.pp, p.micro_batches, v, t);
    p.critical_flops = r.makespan;
    double opt = 0;  // the optimizer step follows the slowest stage's
    for (const auto& s : p.stages) opt = std::max(opt, s.optimizer_flops);
    p.critical_flops += opt;
    p.bubble = r.bubble;
    p.pipeline = r;
  } else {
    const auto& s = p.stages[0];
    p.critical_flops =
        p.micro_batches * (s.flops_per_token + s.recompute_flops_per_token) * tokens_mb +
        s.optimizer_flops;
  }
  return p;
}

namespace {

// ", 1.2 ms at 100 GB/s": `mb` megabytes over a link of gbps GB/s, in the stream's precision
// (nothing without a rate).
void write_transfer_time(std::ostream& os, double mb, double gbps) {
  if (gbps <= 0) return;
  os << ", " << mb / (gbps * 1e3) * 1e3 << " ms at " << std::defaultfloat << std::setprecision(4)
     << gbps << std::fixed << " GB/s";
}

}  // namespace

std::string format_run_plan(const RunPlan& p, const Config& cfg, double tflops, double gbps) {
  const auto& g = p.grid;
  std::ostringstream os;
  const int ranks = g.dp * g.pp * g.tp * g.cp;
  os << std::fixed << "plan: " << ranks << (ranks == 1 ? " rank" : " ranks") << " = dp " << g.dp
     << (g.ep > 1 ? " (expert-parallel groups of " + std::to_string(g.ep) + ")" : "") << " x pp "
     << g.pp << " x tp " << g.tp << (g.cp > 1 ? " x cp " + std::to_string(g.cp) : "") << " | "
     << precision_name(p.precision) << " on " << cfg.run.backend << " | batch "
     << cfg.train.batch_size << " x " << cfg.model.seq_len << " tokens: " << p.micro_batches
     << (p.micro_batches == 1 ? " micro-batch" : " micro-batches") << " of " << p.micro_batch_size
     << " sequences per data-parallel rank";
  // The memory holds every batch's schedule; the step time below is the full batch's.
  if (parse_batch_rampup(cfg.train.batch_rampup, cfg.train.batch_size).on())
    os << " (batch ramped up: " << cfg.train.batch_rampup << ")";
  // The step time below counts the attention of the model's own window, as after the warmup.
  if (parse_window_warmup(cfg.train.window_warmup, cfg.model).on())
    os << " (attention window warmup: " << cfg.train.window_warmup << ")";
  if (g.pp > 1)
    os << " | schedule " << cfg.parallel.schedule
       << (cfg.parallel.virtual_stages > 1
               ? " (" + std::to_string(cfg.parallel.virtual_stages) + " virtual stages)"
               : "");
  if (cfg.parallel.zero >= 1) os << " | ZeRO-" << cfg.parallel.zero;
  if (cfg.parallel.sequence_parallel && g.tp > 1) os << " | sequence parallel";
  if (const auto split = stage_layers(cfg); !split.empty()) {
    os << " | stage layers ";
    for (size_t s = 0; s < split.size(); ++s) os << (s > 0 ? "," : "") << split[s];
  }
  if (cfg.train.logits_chunk > 0)
    os << " | logits in chunks of "
       << Gpt::logits_chunk_rows(activation_options(cfg), p.micro_batch_size, gpt_shape(cfg),
                                 cfg.parallel.cp)
       << " tokens";
  if (p.recompute.mode != Recompute::none)
    os << " | recompute "
       << p.recompute.describe(model_parallel(cfg, 0, 0).most_chunk_layers(cfg.model.n_layer));
  os << "\n\nmemory of each rank, MB (1e6 bytes) allocated on the backend:\n";
  const char* head[] = {"stage",     "layers",    "parameters",  "weights", "bf16 copy",
                        "gradients", "optimizer", "activations", "other",   "total"};
  const int w[] = {5, 6, 12, 10, 10, 10, 10, 16, 8, 10};
  for (int i = 0; i < 10; ++i) os << std::setw(w[i]) << head[i] << (i < 9 ? "  " : "\n");
  for (const auto& s : p.stages) {
    std::ostringstream sets;
    for (size_t k = 0; k < s.model.activation_sets.size(); ++k)
      sets << (k > 0 ? "," : "") << s.model.activation_sets[k];
    const std::string cells[] = {
        std::to_string(s.stage),         std::to_string(s.layers),
        std::to_string(s.parameters),    megabytes(s.model.weights),
        megabytes(s.model.weights_bf16), megabytes(s.model.grads + s.grad_shard),
        megabytes(s.optimizer),          megabytes(s.model.activations) + " (" + sets.str() + ")",
        megabytes(s.model.other),        megabytes(s.total())};
    for (int i = 0; i < 10; ++i) os << std::setw(w[i]) << cells[i] << (i < 9 ? "  " : "\n");
  }
  os << "(activations: kept for the micro-batches in flight per chunk, in parentheses, plus the "
        "backward scratch; gradients include ZeRO's reduce-scattered slice, under ZeRO-2 with "
        "the buckets instead of the whole buffer";
  if (cfg.eval.ema) os << "; other includes the weights eval.ema sets aside at evaluations";
  if (cfg.run.backend == "cuda") {
    // Grouped-query attention outside the flash kernels (bf16, head dims 64, 128, 192) runs on
    // rows expanded to one key/value head per query head.
    const bool flash = cfg.bf16() && cuda_flash_head_dim(cfg.model.hd());
    os << "; on a GPU add the backend's workspace: cuBLASLt's 32 MiB and attention scratch"
       << (cfg.model.kv_heads() < cfg.model.n_head && !flash
               ? ", with grouped-query attention 2·B·T·3C expanded q|k|v elements"
               : "");
    const size_t t2 = fp32_attention_scratch_bytes(cfg);
    if (t2 > 0)
      os << ", and the fp32 attention's B·NH·T² matrices beyond the activations (" +
                std::string(cfg.bf16() ? "bf16 on widened copies" : "fp32") +
                (cfg.train.attention_dropout > 0 ? ", the dropped probabilities" : "") +
                (cfg.model.attn_softcap > 0 ? ", the uncapped scores" : "") +
                "): " + megabytes(t2) + " MB";
    if (cfg.run.fp8 != "off") {
      // The quantized operands of the largest FP8 product (Gpt::fp8_operand_bytes), N the
      // micro-batch's rows on this rank.
      const GptShape s = gpt_shape(cfg);
      const double rows =
          double(cfg.train.micro_batch_size) * cfg.model.seq_len / std::max(1, cfg.parallel.cp);
      double bytes = Gpt::fp8_operand_bytes(s, cfg.parallel.tp, cfg.parallel.ep, rows);
      if (cfg.run.fp8_head) {  // the head's, chunk by chunk: R rows of this rank's V slice
        const double C = s.n_embd,
                     R = Gpt::logits_chunk_rows(activation_options(cfg), cfg.train.micro_batch_size,
                                                s, cfg.parallel.cp),
                     V = double(cfg.padded_vocab_size()) / std::max(1, cfg.parallel.tp);
        bytes = std::max(bytes, Gpt::fp8_product_bytes(V, C, R));
      }
      os << ", FP8 operands " << megabytes(size_t(bytes)) << " MB";
    }
  }
  os << ")\n\ncompute: " << std::setprecision(3) << p.model_flops_per_token / 1e9
     << " GFLOP per token for the model (6N + 6LCT); per rank and token, stage";
  for (const auto& s : p.stages) os << " " << s.stage << ": " << s.flops_per_token / 1e9;
  os << " GFLOP";
  if (p.recompute.mode == Recompute::full) {
    os << "; full recomputation adds, stage";
    for (const auto& s : p.stages)
      os << " " << s.stage << ": " << s.recompute_flops_per_token / 1e9;
    os << " GFLOP (not counted in MFU)";
  }
  if (cfg.optim.name == "muon") {
    os << "\nMuon's Newton-Schulz per step on the busiest rank, stage";
    for (const auto& s : p.stages) os << " " << s.stage << ": " << s.optimizer_flops / 1e9;
    os << " GFLOP (on the step's critical path, not counted in MFU)";
    if (g.tp > 1) {
      os << "; its tensor-parallel gathers of the whole matrices per step, stage";
      for (const auto& s : p.stages)
        os << " " << s.stage << ": " << std::setprecision(1) << double(s.tp_muon_gather) / 1e6;
      os << " MB received";
    }
  }
  if (g.pp > 1)
    os << "\npipeline bubble (simulated with each stage's FLOPs, backward = 2 x forward"
       << (p.recompute.mode == Recompute::full ? " + recomputation" : "")
       << (splits_backward(parse_schedule_kind(cfg.parallel.schedule))
               ? " with the weight gradients in the weight pass"
               : "")
       << ", the head's backward with the loss): " << std::setprecision(1) << p.bubble * 100
       << "% of the stages' time";
  if (g.cp > 1) {
    // What a ring moves over a rank's link: (cp−1)/cp of each gather's and reduce-scatter's
    // whole-sequence payload (StageMemory::cp_all_gather: this rank's share of a gather, 1/cp).
    double most = 0;
    for (const auto& s : p.stages)
      most = std::max(most, double(g.cp - 1) * double(s.cp_all_gather) +
                                double(g.cp - 1) / g.cp * double(s.cp_reduce_scatter));
    const double mb = most / 1e6;
    os << "\ncontext-parallel key/value traffic per step and rank: " << std::setprecision(1) << mb
       << " MB";
    write_transfer_time(os, mb, gbps);
    os << " (not overlapped)";
  }
  if (g.ep > 1) {
    // On average (ep−1)/ep of what a rank hands in goes to other ranks.
    double most = 0;
    for (const auto& s : p.stages) most = std::max(most, double(s.ep_all_to_all));
    const double mb = most * (g.ep - 1) / g.ep / 1e6;
    os << "\nexpert-parallel token exchange per step and rank: up to " << std::setprecision(1) << mb
       << " MB over its link";
    write_transfer_time(os, mb, gbps);
    os << " (all-to-alls, not overlapped)";
  }
  if (g.dp * g.cp > 1) {
    double wire = 0;
    for (const auto& s : p.stages) wire = std::max(wire, s.dp_wire_bytes);
    os << "\ndata-parallel gradient reduction per step and rank (ring): " << std::setprecision(1)
       << wire / 1e6 << " MB over its link";
    write_transfer_time(os, wire / 1e6, gbps);
    if (gbps > 0)
      os << " ("
         << (p.grid.pp == 1 ? "overlapped with the backward pass"
                            : "overlapped with the last micro-batches' backward passes")
         << ")";
  }
  if (tflops > 0) {
    const double step = p.critical_flops / (tflops * 1e12);
    os << "\nstep time at " << std::defaultfloat << std::setprecision(4) << tflops << std::fixed
       << " TFLOP/s sustained per rank, compute only (communication not counted): "
       << std::setprecision(1) << step * 1e3 << " ms, " << std::setprecision(0)
       << double(cfg.train.batch_size) * cfg.model.seq_len / step << " tokens/s";
  }
  os << "\n";
  return os.str();
}

std::string format_recompute_fit(const Config& cfg, int world_size, double tflops,
                                 double memory_gb) {
  TRIAD_CHECK(memory_gb > 0, "--plan-memory-gb must be > 0 (got ", memory_gb, ")");
  const int per_chunk = model_parallel(cfg, 0, 0).most_chunk_layers(cfg.model.n_layer);
  std::vector<std::pair<std::string, int>> options = {{"none", 0}, {"gelu", 0}};
  // A zero-bubble weight pass reads the layer inputs that full recomputation discards
  // (validate()).
  const bool full_allowed =
      !splits_backward(parse_schedule_kind(cfg.parallel.schedule)) || cfg.parallel.pp == 1;
  for (int k = 1; k <= per_chunk && full_allowed; ++k)
    options.emplace_back("full", k == per_chunk ? 0 : k);
  std::ostringstream os;
  os << std::fixed << "\nactivation recomputation against " << std::setprecision(1) << memory_gb
     << " GB per rank (the largest rank's backend buffers"
     << (cfg.run.backend == "cuda" ? "; the GPU workspace, NCCL and the CUDA context come on top"
                                   : "")
     << "):\n";
  os << std::setw(44) << std::left << "  recompute" << std::right << std::setw(16)
     << "largest rank MB" << (tflops > 0 ? "      step ms" : "") << "\n";
  std::string fit;
  double base_ms = 0;
  size_t least = SIZE_MAX;  // the least memory of the cheaper settings listed before
  for (const auto& [mode, layers] : options) {
    Config c = cfg;
    c.train.recompute = mode;
    c.train.recompute_layers = layers;
    const RunPlan p = plan_run(c, world_size);
    size_t most = 0;
    for (const auto& s : p.stages) most = std::max(most, s.total());
    const double ms = p.critical_flops / (tflops * 1e12) * 1e3;
    if (mode == "none") base_ms = ms;
    // A setting that costs more compute than one listed before and saves nothing over it is
    // left out (full in few layers against gelu, or in 1 layer without a pipeline).
    if (most >= least) continue;
    least = most;
    const std::string name = p.recompute.describe(per_chunk);
    os << "  " << std::setw(42) << std::left << name << std::right << std::setw(16)
       << megabytes(most);
    if (tflops > 0) os << std::setw(13) << std::setprecision(1) << ms;
    os << "\n";
    if (fit.empty() && double(most) <= memory_gb * 1e9) {
      fit = (mode == "none" ? "fits without recomputation: --train.recompute none"
                            : "fits with --train.recompute " + mode) +
            " --train.recompute_layers " + std::to_string(layers);
      if (mode != "none" && tflops > 0) {
        std::ostringstream extra;
        extra << std::fixed << std::setprecision(1) << (ms / base_ms - 1) * 100;
        fit += " (step time +" + extra.str() + "%)";
      }
    }
  }
  if (fit.empty())
    fit = std::string(full_allowed ? "does not fit even with full recomputation"
                                   : "does not fit (" + cfg.parallel.schedule +
                                         " cannot recompute full layers: the 1f1b schedule can)") +
          ": more pipeline or tensor parallelism, ZeRO-1 over more data-parallel ranks, or a "
          "smaller train.micro_batch_size";
  os << fit << "\n";
  return os.str();
}

}  // namespace triad
