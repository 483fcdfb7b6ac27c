// Parameter layout and initialization of the GPT; forward/backward live in gpt_step.cpp, the
// pipeline executor in gpt_pipeline.cpp.
#include "triad/model/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numbers>

#include "gpt_activations.h"
#include "triad/core/error.h"
#include "triad/core/rng.h"

namespace triad {
namespace {

size_t aligned(size_t n) { return (n + 15) / 16 * 16; }  // 64-byte aligned tensors

// The tensors of layer l in buffer order (DESIGN.md §3's 12, q_norm, k_norm, ..., sinks), as (name
// suffix, shape, split axis, blocks); axis -1 = replicated over the tensor-parallel group
// (DESIGN.md §3 splits).
struct LayerTensor {
  const char* name;
  std::vector<int64_t> shape;
  int axis, blocks;
};
std::vector<LayerTensor> all_layer_tensors(const GptShape& shape, bool moe) {
  // The experts' widths, or the dense MLP's (model.moe_dense_hidden among experts).
  const int64_t C = shape.n_embd, H = moe ? shape.hidden() : shape.dense_hidden();
  const int64_t F = moe ? shape.fc_rows() : shape.dense_fc_rows();
  const int fc_blocks = shape.gated() ? 2 : 1;  // gated: by units within each of gate and up
  // c_attn by heads within each of q, k, v, as NH/NKV + 2 blocks of NKV heads (the query heads
  // in NH/NKV blocks, then k, then v; 3 blocks without grouped-query attention): each rank holds
  // the same NKV/tp heads of every block, so its query heads h are those whose key/value heads
  // h % NKV it holds. attn.c_proj's input columns (one head's hd each) follow its query heads:
  // NH/NKV blocks (1 without grouped-query attention). A = NH·hd (C unless model.head_dim).
  const int64_t W = shape.qkv_rows(), hd = shape.hd(), A = shape.attn_width();
  const int64_t P = shape.proj_width();  // attn.c_proj's input columns (A but under MLA)
  const int q_blocks = shape.n_head / shape.kv_heads();
  // Multi-head latent attention's (kinds 22-27; GptShape::mla): q_b's and kv_b's rows split by
  // heads (each head's rows together), the latents' projections and norms replicated.
  const int64_t NH = shape.n_head, rq = shape.q_lora_rank, rkv = shape.kv_lora_rank;
  const std::vector<LayerTensor> mla = {
      {"attn/q_a/weight", {rq, C}, -1, 1},
      {"attn/q_a_norm/weight", {rq}, -1, 1},
      {"attn/q_b/weight", {NH * shape.mla_qk_dim(), rq > 0 ? rq : C}, 0, 1},
      {"attn/kv_a/weight", {rkv + shape.qk_rope_head_dim, C}, -1, 1},
      {"attn/kv_a_norm/weight", {rkv}, -1, 1},
      {"attn/kv_b/weight", {NH * (shape.qk_nope_head_dim + shape.v_head_dim), rkv}, 0, 1}};
  // model.qk_norm's weights: [hd] shared by the heads (replicated), or under qk_norm_full one
  // weight per q value (split as c_attn's q rows) and per k value (as its k rows).
  const LayerTensor q_norm = shape.qk_norm_full
                                 ? LayerTensor{"attn/q_norm/weight", {A}, 0, q_blocks}
                                 : LayerTensor{"attn/q_norm/weight", {hd}, -1, 1};
  const LayerTensor k_norm = shape.qk_norm_full
                                 ? LayerTensor{"attn/k_norm/weight", {shape.kv_heads() * hd}, 0, 1}
                                 : LayerTensor{"attn/k_norm/weight", {hd}, -1, 1};
  std::vector<LayerTensor> list;
  if (moe) {  // the experts' MLPs (biases under model.moe_bias, else has_tensor drops them)
    const int64_t E = shape.moe_experts;
    list = {{"ln_1/weight", {C}, -1, 1},
            {"ln_1/bias", {C}, -1, 1},
            {"attn/c_attn/weight", {W, C}, 0, q_blocks + 2},
            {"attn/c_attn/bias", {W}, 0, q_blocks + 2},
            q_norm,
            k_norm,
            {"attn/c_proj/weight", {C, P}, 1, q_blocks},
            {"attn/c_proj/bias", {C}, -1, 1},
            {"ln_2/weight", {C}, -1, 1},
            {"ln_2/bias", {C}, -1, 1},
            {"mlp/experts/c_fc/weight", {E, F, C}, 1, fc_blocks},
            {"mlp/experts/c_fc/bias", {E, F}, 1, fc_blocks},
            {"mlp/experts/c_proj/weight", {E, C, H}, 2, 1},
            {"mlp/experts/c_proj/bias", {E, C}, -1, 1},
            {"mlp/router/weight", {E, C}, -1, 1},  // replicated: every rank routes alike
            {"mlp/shared/c_fc/weight", {shape.shared_fc_rows(), C}, 0, fc_blocks},
            {"mlp/shared/c_proj/weight", {C, shape.moe_shared_hidden}, 1, 1},
            {"mlp/shared/gate/weight", {1, C}, -1, 1},  // replicated, as the router
            {"ln_attn_out/weight", {C}, -1, 1},
            {"ln_attn_out/bias", {C}, -1, 1},
            {"ln_mlp_out/weight", {C}, -1, 1},
            {"ln_mlp_out/bias", {C}, -1, 1}};
  } else {
    list = {{"ln_1/weight", {C}, -1, 1},
            {"ln_1/bias", {C}, -1, 1},
            {"attn/c_attn/weight", {W, C}, 0, q_blocks + 2},
            {"attn/c_attn/bias", {W}, 0, q_blocks + 2},
            q_norm,  // model.qk_norm: shared by the heads, or over all of them
            k_norm,
            {"attn/c_proj/weight", {C, P}, 1, q_blocks},  // row-parallel: input columns
            {"attn/c_proj/bias", {C}, -1, 1},             // added once, after the all-reduce
            {"ln_2/weight", {C}, -1, 1},
            {"ln_2/bias", {C}, -1, 1},
            {"mlp/c_fc/weight", {F, C}, 0, fc_blocks},
            {"mlp/c_fc/bias", {F}, 0, fc_blocks},
            {"mlp/c_proj/weight", {C, H}, 1, 1},
            {"mlp/c_proj/bias", {C}, -1, 1},
            {"ln_attn_out/weight", {C}, -1, 1},  // model.branch_norm (kinds 18-21: after 4 of
            {"ln_attn_out/bias", {C}, -1, 1},    // the experts' a dense layer does not have)
            {"ln_mlp_out/weight", {C}, -1, 1},
            {"ln_mlp_out/bias", {C}, -1, 1}};
  }
  list.insert(list.end(), mla.begin(), mla.end());
  // model.attn_sinks (kind 28): one logit per query head, split as c_attn's q heads.
  list.push_back({"attn/sinks", {NH}, 0, q_blocks});
  // model.moe_bias's router bias (kind 29), replicated as the router.
  if (moe) list.push_back({"mlp/router/bias", {shape.moe_experts}, -1, 1});
  return list;
}

// Whether a model of this shape has the tensor of a layer (or ln_f) with this name suffix.
bool has_tensor(const GptShape& shape, const std::string& suffix) {
  if (suffix.starts_with("attn/q_a")) return shape.mla() && shape.q_lora_rank > 0;
  if (suffix.starts_with("attn/q_b/") || suffix.starts_with("attn/kv_")) return shape.mla();
  if (suffix.starts_with("attn/c_attn/") && shape.mla()) return false;
  if (suffix.ends_with("_norm/weight") && suffix.starts_with("attn/")) return shape.qk_norm;
  if (suffix == "attn/sinks") return shape.attn_sinks;
  if (suffix.starts_with("mlp/experts/") || suffix == "mlp/router/bias")
    return !suffix.ends_with("/bias") || shape.moe_bias;
  if (suffix == "mlp/shared/gate/weight") return shape.moe_shared_gate;
  if (suffix.starts_with("mlp/shared/")) return shape.moe_shared_hidden > 0;
  if (suffix.starts_with("ln_attn_out/") || suffix.starts_with("ln_mlp_out/")) {
    if (!shape.branch_norm) return false;
  }
  if (suffix.starts_with("ln_2/") && shape.shared_norm) return false;  // ln_1 serves both
  if (suffix.starts_with("ln_1/") || suffix.starts_with("ln_2/")) {
    if (!shape.pre_norm) return false;  // model.pre_norm = false: no norms before the branches
  }
  if (!suffix.ends_with("/bias")) return true;
  if (!shape.bias)
    return (shape.qkv_bias && suffix == "attn/c_attn/bias") ||
           (shape.mlp_bias && (suffix == "mlp/c_fc/bias" || suffix == "mlp/c_proj/bias")) ||
           (shape.norm_bias && suffix.starts_with("ln_"));
  return !(shape.rmsnorm && suffix.starts_with("ln_"));
}

std::vector<LayerTensor> layer_tensor_list(const GptShape& shape, int l) {
  std::vector<LayerTensor> out;
  for (auto& t : all_layer_tensors(shape, shape.moe_layer(l)))
    if (has_tensor(shape, t.name)) out.push_back(std::move(t));
  return out;
}

class LayoutBuilder {
 public:
  explicit LayoutBuilder(const ModelParallel& mp)
      : tp_(mp.tp), tp_rank_(mp.tp_rank), ep_(mp.ep), ep_rank_(mp.ep_rank) {}
  void add(std::string name, std::vector<int64_t> shape, int axis, int blocks, bool replica) {
    ParamSpec s;
    s.name = std::move(name);
    s.shape = std::move(shape);
    s.local = s.shape;
    if (ep_ > 1 && is_expert_tensor(s.name)) {  // its experts [ep_rank·E/ep, (ep_rank+1)·E/ep)
      TRIAD_ASSERT(s.shape[0] % ep_ == 0);
      s.local[0] /= ep_;
      s.expert_parts = ep_;
      s.expert_part = ep_rank_;
      s.expert_parallel = true;
    }
    if (tp_ > 1 && axis >= 0) {
      s.local[size_t(axis)] /= tp_;
      s.split_axis = axis;
      s.split_blocks = blocks;
      s.split_parts = tp_;
      s.split_part = tp_rank_;
    }
    s.replica = replica || (tp_ > 1 && axis < 0 && tp_rank_ > 0);
    s.numel = 1;
    for (auto d : s.local) s.numel *= size_t(d);
    s.offset = n_floats_;
    s.decay = s.shape.size() >= 2 && !s.name.ends_with("/bias");  // (the experts' biases [E, ..])
    n_floats_ += aligned(s.numel);
    specs_.push_back(std::move(s));
  }
  std::vector<ParamSpec> take() { return std::move(specs_); }

 private:
  int tp_, tp_rank_, ep_, ep_rank_;
  size_t n_floats_ = 0;
  std::vector<ParamSpec> specs_;
};

// Floats holding a layout's parameters (each tensor 16-float aligned).
size_t layout_floats(const std::vector<ParamSpec>& specs) {
  return specs.back().offset + aligned(specs.back().numel);
}

// The parameter buffer's length: the layout padded to a multiple of 16·shards floats, so that
// ZeRO cuts it into equal 64-byte aligned slices.
size_t padded_buffer_floats(const std::vector<ParamSpec>& specs, int shards) {
  const size_t n = layout_floats(specs);
  const size_t quantum = 16 * size_t(shards);
  return (n + quantum - 1) / quantum * quantum;
}

ActivationSlots activation_slots(const ModelParallel& mp, const PipelineSchedule* schedule) {
  ActivationSlots a;
  a.slots.assign(size_t(mp.virtual_stages), 1);
  if (schedule == nullptr || mp.pp == 1) return a;
  a.split_backward = has_weight_pass(*schedule);
  const ActionKind release = releasing_action(*schedule);
  std::vector<int> live(a.slots.size(), 0);
  int forwards = 0;
  std::map<int, int> sends;  // per peer (ZB-V: two, or one and this rank itself)
  for (const Action& x : (*schedule)[size_t(mp.pp_rank)]) {
    if (x.kind == ActionKind::Forward) {
      ++forwards;
      a.slots[size_t(x.chunk)] = std::max(a.slots[size_t(x.chunk)], ++live[size_t(x.chunk)]);
    }
    if (x.kind == release) --live[size_t(x.chunk)];
    if (x.kind == ActionKind::SendGrad) ++sends[x.peer];
  }
  if (sends.empty()) return a;
  const int m = forwards / mp.virtual_stages;
  const int per_peer = grad_send_buffers(*schedule, mp.pp, m, mp.virtual_stages);
  for (const auto& [peer, n] : sends) {
    a.grad_pools.emplace_back(peer, std::min(n, per_peer));
    a.grad_sends += a.grad_pools.back().second;
  }
  return a;
}

// The activation sets and gradient buffers the constructor allocates: the schedule's, or with
// `also` the most of each chunk's sets and each peer's buffers of both.
ActivationSlots activation_slots(const ModelParallel& mp, const PipelineSchedule* schedule,
                                 const ActivationSlots* also) {
  ActivationSlots a = activation_slots(mp, schedule);
  if (schedule != nullptr && also != nullptr) a.cover(*also);
  return a;
}

// The buffer for the other copy's wte gradient (ModelParallel::tied_copy: the first stage and the
// head's, apart), floats.
// ZeRO-2's buckets (ZeroOptions::bucketed_grads) of a one-stage layout of n floats: the
// embeddings' [0, lo), the layers' between lo and hi, each within `layer` floats (the largest
// distance between the starts of two layers, alignment included), and ln_f's and an untied
// head's [hi, n).
struct GradBuckets {
  size_t lo = 0, hi = 0, n = 0, layer = 0;
  size_t ends() const { return lo + (n - hi); }
};

GradBuckets grad_buckets(const std::vector<ParamSpec>& specs, size_t n) {
  GradBuckets b;
  b.n = n;
  std::vector<size_t> starts;  // each layer's first offset, then ln_f's
  std::string layer;
  for (const auto& s : specs) {
    if (s.name.starts_with("h/")) {
      const std::string l = s.name.substr(0, s.name.find('/', 2));
      if (l != layer) starts.push_back(s.offset);
      layer = l;
    } else if (s.name == "ln_f/weight") {
      starts.push_back(s.offset);
    }
  }
  TRIAD_CHECK(!starts.empty() && specs.back().offset + specs.back().numel <= n,
              "internal error: gradient buckets need the whole model on one stage");
  b.lo = starts.front();
  b.hi = starts.back();
  for (size_t i = 0; i + 1 < starts.size(); ++i)
    b.layer = std::max(b.layer, starts[i + 1] - starts[i]);
  // Layers and ends start 16-float aligned: whole bf16 pairs everywhere.
  TRIAD_ASSERT(b.layer > 0 && b.lo % 2 == 0 && b.hi % 2 == 0 && b.layer % 2 == 0 && n % 2 == 0);
  return b;
}

}  // namespace

ExpertPacking expert_packing(const std::vector<ParamSpec>& specs, size_t n_floats, int shards) {
  ExpertPacking p;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (!specs[i].expert_parallel) continue;
    const size_t lo = specs[i].offset, hi = i + 1 < specs.size() ? specs[i + 1].offset : n_floats;
    if (!p.extents.empty() && p.extents.back().hi == lo)
      p.extents.back().hi = hi;
    else
      p.extents.push_back({lo, hi, p.floats});
    p.floats += hi - lo;
  }
  const size_t quantum = 16 * size_t(shards);
  p.padded = (p.floats + quantum - 1) / quantum * quantum;
  return p;
}

size_t ExpertPacking::packed(size_t offset) const {
  auto e = std::upper_bound(extents.begin(), extents.end(), offset,
                            [](size_t x, const Extent& k) { return x < k.lo; });
  TRIAD_ASSERT(e != extents.begin() && offset < (e - 1)->hi);
  --e;
  return e->packed + (offset - e->lo);
}

size_t Gpt::gathered_per_step(const GptShape& shape, const ModelParallel& mp, int m,
                              bool experts_only) {
  const auto specs = gpt_rank_layout(shape, mp);
  const GradBuckets gb = grad_buckets(specs, layout_floats(specs));
  const size_t n = size_t(shape.n_layer), held = std::min<size_t>(3, n);
  // The floats of the layers before each (they differ where layers with and without experts
  // mix): each layer's from its first tensor to the next layer's (ln_f's after the last), or its
  // expert-parallel tensors' extents alone.
  std::vector<size_t> start;
  if (experts_only) {
    start.assign(n + 1, 0);
    for (size_t i = 0; i < specs.size(); ++i)
      if (specs[i].expert_parallel) {  // to the next tensor, as the packing's extents
        const size_t next = i + 1 < specs.size() ? specs[i + 1].offset : layout_floats(specs);
        start[size_t(std::stoi(specs[i].name.substr(2))) + 1] += next - specs[i].offset;
      }
    for (size_t l = 0; l < n; ++l) start[l + 1] += start[l];
  } else {
    for (const auto& s : specs)  // each layer's first tensor (ln_1's, or c_attn's without it)
      if (s.name.starts_with("h/") && size_t(std::stoi(s.name.substr(2))) == start.size())
        start.push_back(s.offset);
    start.push_back(gb.hi);
  }
  auto floats = [&](size_t from, size_t to) {
    return start[to] - start[from];
  };  // layers [from, to)
  // A forward over every layer, its backward without the last `held` (still in the ring), then
  // for each further micro-batch a forward without the first `held` and a backward without the
  // last.
  const size_t all = floats(0, n), first = floats(held, n), last = floats(0, n - held);
  return (experts_only ? 0 : gb.ends()) + all + last + size_t(m - 1) * (first + last);
}

namespace {

size_t tied_scratch_floats(const GptShape& shape, const ModelParallel& mp) {
  if (!shape.tied || !mp.tied_copy()) return 0;
  return size_t(shape.padded_vocab_size / mp.tp) * size_t(shape.n_embd);
}

}  // namespace

// Calls f(full_offset, local_offset, count) for each contiguous run of the shard: the split's
// segments (see ParamSpec), of which an expert-parallel tensor holds the range of its experts.
template <class F>
void for_each_shard_run(const ParamSpec& s, F f) {
  const size_t first = s.expert_range_begin();  // within the split's local tensor
  if (s.split_axis < 0) {
    f(first, size_t(0), s.numel);
    return;
  }
  // View the tensor as [outer, dim, inner] around the split axis: segment k = o·blocks + b of
  // the local tensor is part split_part of block b of outer index o, `seg` contiguous elements.
  size_t inner = 1;
  for (size_t d = size_t(s.split_axis) + 1; d < s.shape.size(); ++d) inner *= size_t(s.shape[d]);
  const size_t dim = size_t(s.shape[size_t(s.split_axis)]), blocks = size_t(s.split_blocks);
  const size_t block = dim / blocks, part = block / size_t(s.split_parts), seg = part * inner;
  for (size_t x = first; x < first + s.numel;) {
    const size_t k = x / seg, r = x % seg, n = std::min(seg - r, first + s.numel - x);
    f(((k / blocks) * dim + (k % blocks) * block + size_t(s.split_part) * part) * inner + r,
      x - first, n);
    x += n;
  }
}

void extract_shard(const ParamSpec& s, const float* full, float* local) {
  for_each_shard_run(s, [&](size_t f, size_t l, size_t n) {
    std::memcpy(local + l, full + f, n * sizeof(float));
  });
}

void insert_shard(const ParamSpec& s, const float* local, float* full) {
  for_each_shard_run(s, [&](size_t f, size_t l, size_t n) {
    std::memcpy(full + f, local + l, n * sizeof(float));
  });
}

std::vector<ParamSpec> gpt_parameter_layout(const GptShape& shape) {
  return gpt_rank_layout(shape, ModelParallel{});
}

std::vector<ParamSpec> gpt_rank_layout(const GptShape& shape, const ModelParallel& mp) {
  const int64_t C = shape.n_embd, Vp = shape.padded_vocab_size, T = shape.seq_len;
  LayoutBuilder b(mp);
  if (mp.first_stage()) {
    b.add("wte/weight", {Vp, C}, 0, 1, false);
    if (!shape.rope) b.add("wpe/weight", {T, C}, -1, 1, false);
  }
  for (int c = 0; c < mp.virtual_stages; ++c) {
    const int g = mp.global_chunk(c), first = mp.first_layer(g, shape.n_layer);
    for (int l = first; l < first + mp.chunk_layers(g, shape.n_layer); ++l)
      for (const auto& t : layer_tensor_list(shape, l))
        b.add("h/" + std::to_string(l) + "/" + t.name, t.shape, t.axis, t.blocks, false);
  }
  if (mp.holds_head()) {
    b.add("ln_f/weight", {C}, -1, 1, false);
    if (has_tensor(shape, "ln_f/bias")) b.add("ln_f/bias", {C}, -1, 1, false);
    // The tied head's copy of wte (the first stage owns the values), or the untied head.
    if (!shape.tied) {
      b.add("lm_head/weight", {Vp, C}, 0, 1, false);
      if (shape.head_bias) b.add("lm_head/bias", {Vp}, 0, 1, false);
    } else if (!mp.first_stage()) {
      b.add("wte/weight", {Vp, C}, 0, 1, true);
    }
    // The multi-token prediction modules (GptShape::mtp_depth): the norms of the embedding and of
    // the hidden state, their projection (row-parallel: each rank the same 1/tp of the columns
    // of both halves, [e | h]), the block, its final norm.
    const bool norm_bias = has_tensor(shape, "ln_f/bias");
    for (int j = 0; j < shape.mtp_depth; ++j) {
      const std::string p = "mtp/" + std::to_string(j) + "/";
      for (const char* norm : {"ln_e", "ln_h"}) {
        b.add(p + norm + "/weight", {C}, -1, 1, false);
        if (norm_bias) b.add(p + norm + "/bias", {C}, -1, 1, false);
      }
      b.add(p + "eh_proj/weight", {C, 2 * C}, 1, 2, false);
      for (const auto& t : layer_tensor_list(shape, shape.mtp_layer(j)))
        b.add(p + t.name, t.shape, t.axis, t.blocks, false);
      b.add(p + "ln_f/weight", {C}, -1, 1, false);
      if (norm_bias) b.add(p + "ln_f/bias", {C}, -1, 1, false);
    }
  }
  return b.take();
}

namespace {

// Pair i's frequency, rope_theta^(−2i/hd), under Llama 3.1's scaling when rope_factor != 1: with
// wavelength λ = 2π/f and L the original context, kept where λ < L/high, divided by the factor
// where λ > L/low, and between them (1 − s)·f/factor + s·f with s = (L/λ − low)/(high − low).
double rope_frequency(const GptShape& shape, int i, int hd) {
  const double f = std::pow(shape.rope_theta, -2.0 * i / hd);
  if (!shape.rope_ext.empty()) return f / shape.rope_ext[size_t(i)];  // longrope
  if (shape.rope_linear) return f / shape.rope_factor;
  if (shape.yarn) {
    // The pair index at which a frequency turns r times in the original context; the pairs
    // below floor(at(beta_fast)) keep f, those from ceil(at(beta_slow)) take f / factor
    // (unrounded under rope_yarn_truncate = false).
    auto at = [&](double r) {
      return hd * std::log(shape.rope_original_positions / (r * 2 * std::numbers::pi)) /
             (2 * std::log(shape.rope_theta));
    };
    const bool t = shape.rope_yarn_truncate;
    const double fast = at(shape.rope_beta_fast), slow = at(shape.rope_beta_slow);
    double low = std::max(0.0, t ? std::floor(fast) : fast);
    double high = std::min(double(hd - 1), t ? std::ceil(slow) : slow);
    if (low == high) high += 0.001;
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    return f / shape.rope_factor * ramp + f * (1 - ramp);
  }
  if (shape.rope_factor == 1.0) return f;
  const double L = shape.rope_original_positions, wavelength = 2 * std::numbers::pi / f;
  if (wavelength < L / shape.rope_high_freq) return f;
  if (wavelength > L / shape.rope_low_freq) return f / shape.rope_factor;
  const double s =
      (L / wavelength - shape.rope_low_freq) / (shape.rope_high_freq - shape.rope_low_freq);
  return (1 - s) * f / shape.rope_factor + s * f;
}

}  // namespace

std::vector<float> rope_table(const GptShape& shape, bool local) {
  if (local) {  // the windowed layers' base, unscaled
    GptShape plain = shape;
    plain.rope_theta = shape.rope_local_theta;
    plain.rope_factor = 1.0;
    plain.yarn = false;
    plain.rope_linear = false;
    plain.rope_ext.clear();
    return rope_table(plain);
  }
  const int hd = shape.rot(), half = hd / 2;  // the rotated values of a head
  TRIAD_CHECK(shape.rope_ext.empty() || shape.rope_ext.size() == size_t(half),
              "internal error: ", shape.rope_ext.size(), " LongRoPE factors for ", half,
              " rotated pairs");
  // YaRN and LongRoPE scale the rotated q and k (so their part of the scores by its square).
  double scale =
      shape.yarn ? shape.yarn_m(shape.rope_mscale) / shape.yarn_m(shape.rope_mscale_all_dim) : 1.0;
  if (!shape.rope_ext.empty() && shape.rope_factor > 1.0)
    scale = std::sqrt(1.0 + std::log(shape.rope_factor) /
                                std::log(double(shape.rope_original_positions)));
  std::vector<float> t(size_t(shape.seq_len) * size_t(hd));
  for (int p = 0; p < shape.seq_len; ++p)
    for (int i = 0; i < half; ++i) {
      const double angle = p * rope_frequency(shape, i, hd);
      t[size_t(p) * hd + i] = float(std::cos(angle) * scale);
      t[size_t(p) * hd + half + i] = float(std::sin(angle) * scale);
    }
  return t;
}

namespace {
// Floats of the rope table a model of this shape keeps on its backend (0 without rope).
size_t rope_table_floats(const GptShape& shape) {
  const size_t tables = shape.rope_local_theta > 0 ? 2 : 1;
  return shape.rope ? tables * size_t(shape.seq_len) * size_t(shape.rot()) : 0;
}
}  // namespace

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

const char* recompute_name(Recompute r) {
  return r == Recompute::full ? "full" : r == Recompute::gelu ? "gelu" : "none";
}

Recompute parse_recompute(const std::string& text, const std::string& key) {
  for (Recompute r : {Recompute::none, Recompute::gelu, Recompute::full})
    if (text == recompute_name(r)) return r;
  fail("config: ", key, " must be none, gelu or full (got '", text, "')");
}

std::string Recomputation::describe(int per_chunk) const {
  const int k = count(per_chunk);
  if (k == per_chunk || mode == Recompute::none) return recompute_name(mode);
  return std::string(recompute_name(mode)) + " in " + std::to_string(k) + " of " +
         std::to_string(per_chunk) + " layers per chunk";
}

Gpt::Gpt(const GptShape& shape, int max_batch, Backend& backend, int shards,
         const ModelParallel& mp, const PipelineSchedule* schedule, Precision precision,
         ActivationOptions options, ZeroOptions zero, const ActivationSlots* also)
    : shape_(shape),
      max_batch_(max_batch),
      be_(backend),
      mp_(mp),
      precision_(precision),
      recompute_(options.recompute),
      inference_(options.inference),
      mtp_draft_(options.mtp_draft),
      logits_rows_(logits_chunk_rows(options, max_batch, shape, mp.cp)) {
  TRIAD_ASSERT(shards >= 1 && zero.shard < shards);
  TRIAD_CHECK(!zero.master || (zero.shard >= 0 && !options.inference &&
                               (precision == Precision::bf16 || zero.gathered_weights)),
              "internal error: only bf16 training or ZeRO-3 keeps a slice of the master weights");
  TRIAD_CHECK(!zero.bucketed_grads || (zero.shard >= 0 && mp.pp == 1 && !options.inference),
              "internal error: gradient buckets need ZeRO, one pipeline stage and training");
  TRIAD_CHECK(
      !zero.gathered_weights || (zero.master && zero.bucketed_grads && zero.comm != nullptr &&
                                 zero.comm->size() == shards && zero.comm->rank() == zero.shard),
      "internal error: gathered weights need ZeRO-2's slices and their group");
  TRIAD_ASSERT((shape.head_dim > 0 || shape.n_embd % shape.n_head == 0) && max_batch >= 1);
  TRIAD_ASSERT(shape.padded_vocab_size >= shape.vocab_size);
  TRIAD_ASSERT(mp.tp >= 1 && shape.n_head % mp.tp == 0 && shape.padded_vocab_size % mp.tp == 0);
  TRIAD_CHECK(shape.kv_heads() >= 1 && shape.n_head % shape.kv_heads() == 0, "the model's ",
              shape.kv_heads(), " key/value heads do not divide its ", shape.n_head,
              " attention heads");
  TRIAD_CHECK(shape.kv_heads() % mp.tp == 0, "the model's ", shape.kv_heads(),
              " key/value heads do not split over tp = ", mp.tp);
  TRIAD_CHECK(!shape.reset_positions || shape.document_token >= 0,
              "positions that restart at each document need a document mask");
  TRIAD_CHECK(shape.hidden() % mp.tp == 0 && shape.dense_hidden() % mp.tp == 0, "the MLP's ",
              shape.hidden(), " (dense layers' ", shape.dense_hidden(),
              ") hidden units do not split over tp = ", mp.tp);
  TRIAD_CHECK(!shape.moe() || (shape.moe_top_k >= 1 && shape.moe_top_k <= shape.moe_experts),
              "a mixture of ", shape.moe_experts, " experts cannot route each token to ",
              shape.moe_top_k);
  TRIAD_CHECK(shape.moe_shared_hidden % mp.tp == 0 && (shape.moe() || !shape.moe_shared_hidden),
              "the shared experts' ", shape.moe_shared_hidden,
              " hidden units do not split over tp = ", mp.tp,
              " (or there is no mixture of experts)");
  TRIAD_CHECK(!shape.moe_shared_gate || shape.moe_shared_hidden > 0,
              "a gate of the shared experts needs shared experts (moe_shared_hidden > 0)");
  TRIAD_CHECK(!shape.rope || shape.hd() % 2 == 0,
              "rotary positions need an even head dimension (got ", shape.hd(), ")");
  TRIAD_CHECK(
      shape.rotary_dim == 0 || (shape.rope && shape.rotary_dim > 0 && shape.rotary_dim % 2 == 0 &&
                                shape.rotary_dim <= shape.hd()),
      "partial rotary needs rotary positions and an even rotary_dim of at most the head's ",
      shape.hd(), " values (got ", shape.rotary_dim, ")");
  TRIAD_ASSERT(mp.pp >= 1 && mp.virtual_stages >= 1);
  TRIAD_ASSERT(mp.stage_layers.empty()
                   ? shape.n_layer % mp.chunks() == 0
                   : mp.virtual_stages == 1 && int(mp.stage_layers.size()) == mp.pp &&
                         mp.first_layer(mp.pp, shape.n_layer) == shape.n_layer);
  TRIAD_ASSERT(mp.tp == 1 || mp.tp_comm != nullptr);
  if (mp.cp > 1) {
    TRIAD_ASSERT(mp.cp_comm != nullptr && mp.cp_rank >= 0 && mp.cp_rank < mp.cp);
    TRIAD_CHECK(!options.inference, "a model for inference runs without context parallelism");
    TRIAD_CHECK(shape.seq_len % (2 * mp.cp) == 0, "context parallelism over ", mp.cp,
                " ranks needs seq_len (", shape.seq_len, ") divisible by ", 2 * mp.cp);
    TRIAD_CHECK(precision == Precision::fp32 ||
                    (shape.attn_width() / mp.tp % 2 == 0 && shape.qkv_rows() / mp.tp % 2 == 0),
                "context parallelism in bf16 needs even widths of q and of q|k|v per rank");
  }
  TRIAD_ASSERT(mp.pp == 1 || (mp.pp_comm != nullptr && (schedule != nullptr || inference_)));
  specs_ = gpt_rank_layout(shape, mp);
  layer_.assign(size_t(shape.n_layer + shape.mtp_depth), -1);
  mtp_.assign(size_t(shape.mtp_depth), -1);
  for (size_t i = 0; i < specs_.size(); ++i) {
    const auto& n = specs_[i].name;
    if (n == "wte/weight") (specs_[i].replica && mp.pp > 1 ? head_ : wte_) = int(i);
    if (n == "lm_head/weight") head_ = int(i);
    if (n == "lm_head/bias") head_bias_index_ = int(i);
    if (n == "wpe/weight") wpe_ = int(i);
    if (n == "ln_f/weight") lnf_ = int(i);
    if (n.starts_with("h/")) {  // a layer's first tensor (ln_1's, or c_attn's without it)
      int& first = layer_[size_t(std::stoi(n.substr(2)))];
      if (first < 0) first = int(i);
    }
    if (const int j = mtp_module_of(n); j >= 0) {  // a module's first tensor (ln_e's), its block's
      if (mtp_[size_t(j)] < 0) mtp_[size_t(j)] = int(i);
      int& first = layer_[size_t(shape.mtp_layer(j))];
      const std::string t = n.substr(n.find('/', 4) + 1);
      const bool outside = t.starts_with("ln_e/") || t.starts_with("ln_h/") ||
                           t.starts_with("eh_proj/") || t.starts_with("ln_f/");
      if (first < 0 && !outside) first = int(i);
    }
  }
  if (shape.tied && mp.first_stage() && mp.holds_head()) head_ = wte_;  // one copy of wte
  {
    for (int moe = 0; moe < 2; ++moe) {
      const std::vector<LayerTensor> all = all_layer_tensors(shape, moe == 1);
      int at = 0;
      std::fill(std::begin(layer_slot_[moe]), std::end(layer_slot_[moe]), -1);  // no router
      for (size_t k = 0; k < all.size(); ++k) {  // a dense layer's list skips kinds 14-17
        const size_t kind = moe == 0 && k >= 14 ? k + 4 : k;
        layer_slot_[moe][kind] = has_tensor(shape, all[k].name) ? at++ : -1;
      }
      layer_count_[moe] = at;
    }
    lnf_bias_ = has_tensor(shape, "ln_f/bias");
  }
  n_floats_ = layout_floats(specs_);
  buffer_floats_ = padded_buffer_floats(specs_, shards);
  master_end_ = buffer_floats_;
  if (zero.master) {
    const size_t slice = buffer_floats_ / size_t(shards);
    master_begin_ = size_t(zero.shard) * slice;
    master_end_ = master_begin_ + slice;
  }
  params_ = be_.alloc(master_end_ - master_begin_);
  gathers_ = zero.gathered_weights;
  zero_comm_ = zero.comm;
  if (gathers_ && mp.ep > 1) {
    packing_ = expert_packing(specs_, n_floats_, zero.expert_shards);
    if (packing_.floats > 0) {
      TRIAD_ASSERT(zero.expert_comm != nullptr && zero.expert_comm->size() == zero.expert_shards);
      const size_t slice = packing_.padded / size_t(zero.expert_shards);
      expert_comm_ = zero.expert_comm;
      expert_begin_ = size_t(zero.expert_shard) * slice;
      expert_end_ = expert_begin_ + slice;
      expert_params_ = be_.alloc(slice);
      be_.zero(expert_params_, slice);  // the padding too: the optimizer's range holds it
      weight_bytes_ += slice * sizeof(float);
    }
  }
  bucketed_ = zero.bucketed_grads;
  if (bucketed_) {
    const GradBuckets gb = grad_buckets(specs_, n_floats_);
    grad_lo_ = gb.lo;
    grad_hi_ = gb.hi;
    layer_floats_ = gb.layer;
    grad_ends_ = be_.alloc(gb.ends());
    for (float*& r : grad_ring_) r = be_.alloc(layer_floats_);
    if (gathers_) {  // in words: bf16 pairs (every piece starts 16-float aligned, even)
      const size_t per_word = precision == Precision::bf16 ? 2 : 1;
      gw_ends_ = be_.alloc(gb.ends() / per_word);
      for (float*& r : gw_ring_) r = be_.alloc(layer_floats_ / per_word);
      weight_bytes_ += (gb.ends() + 3 * layer_floats_) / per_word * sizeof(float);
    }
  } else if (!inference_) {
    grads_ = be_.alloc(buffer_floats_);
  }
  if (precision_ == Precision::bf16) {
    // bf16 activation rows travel between ranks as pairs of bf16 in fp32 words.
    TRIAD_CHECK(shape.n_embd % 2 == 0, "bf16 precision needs an even n_embd (got ", shape.n_embd,
                ")");
    const size_t copy = gathers_ ? master_end_ - master_begin_ : buffer_floats_;
    params_bf16_ = be_.alloc_bf16(copy);
    weight_bytes_ += copy * sizeof(bf16_t);
    if (expert_params_) {
      expert_params_bf16_ = be_.alloc_bf16(expert_end_ - expert_begin_);
      weight_bytes_ += (expert_end_ - expert_begin_) * sizeof(bf16_t);
    }
  }
  weight_bytes_ += (master_end_ - master_begin_) * sizeof(float);
  vocab_local_ = shape.padded_vocab_size / mp.tp;
  vocab_begin_ = mp.tp_rank * vocab_local_;
  vocab_valid_ = std::clamp(shape.vocab_size - vocab_begin_, 0, vocab_local_);

  if (schedule != nullptr && mp.pp > 1) {
    TRIAD_CHECK(schedule->placement == mp.placement,
                "internal error: the pipeline schedule places the chunks otherwise than the model");
    schedule_ = *schedule;
  }
  // Drafting with module 0 (mtp_draft_logits): its block decodes as a layer, on one rank.
  TRIAD_CHECK(!mtp_draft_ || (inference_ && shape_.mtp_depth > 0),
              "drafting with a multi-token prediction module needs a model for inference with "
              "model.mtp_depth > 0 (this one has ",
              shape_.mtp_depth, ")");
  TRIAD_CHECK(!mtp_draft_ || (mp.tp == 1 && mp.pp == 1 && mp.cp == 1 && mp.ep == 1),
              "drafting with the multi-token prediction module runs on one rank (tp = pp = 1)");
  TRIAD_CHECK(!mtp_draft_ ||
                  kv_ring_rows(shape_, mp_, precision == Precision::bf16, shape_.mtp_layer(0)) == 0,
              "drafting with the multi-token prediction module: its block's sliding window (",
              shape_.layer_window(shape_.mtp_layer(0)),
              " positions) keeps a ring of keys and values, which it does not decode with");
  // Inference: one set per chunk, as without a schedule (forward passes run chunk by chunk).
  const ActivationSlots a = activation_slots(mp, inference_ ? nullptr : schedule, also);
  split_backward_ = a.split_backward;
  grad_pools_ = a.grad_pools;
  planned_slots_ = a.slots;
  // The weight pass reads each layer's matmul inputs from its activation set; full
  // recomputation keeps them only in a scratch layer that the next layer's recompute overwrites.
  TRIAD_CHECK(
      !split_backward_ || recompute_.mode != Recompute::full,
      "a pipeline schedule that splits the backward pass (zb-h1, zb-v) cannot recompute full "
      "layers: use train.recompute = gelu or none, or parallel.schedule = 1f1b");
  if (precision_ == Precision::bf16)
    acts_bf16_ =
        new Activations<bf16_t>(shape_, mp_, max_batch_, a.slots, a.grad_sends, recompute_,
                                logits_rows_, a.split_backward, inference_, mtp_draft_, &be_);
  else
    acts_fp32_ =
        new Activations<float>(shape_, mp_, max_batch_, a.slots, a.grad_sends, recompute_,
                               logits_rows_, a.split_backward, inference_, mtp_draft_, &be_);
  if (const size_t n = inference_ ? 0 : tied_scratch_floats(shape, mp); n > 0)
    tied_scratch_ = be_.alloc(n);
  if (shape_.moe()) {
    // (the multi-token prediction modules' blocks after the layers)
    router_bias_.assign(size_t(shape_.n_layer + shape_.mtp_depth) * size_t(shape_.moe_experts),
                        0.0f);
    router_bias_dev_ = be_.alloc(router_bias_.size());
  }
  if (shape_.rope) {
    auto upload = [&](const std::vector<float>& table) {
      float* d = be_.alloc(table.size());
      be_.copy_from_host(d, table.data(), table.size());
      return d;
    };
    rope_table_ = upload(rope_table(shape_));
    if (shape_.rope_local_theta > 0) rope_local_table_ = upload(rope_table(shape_, true));
  }
  d_inputs_ = be_.alloc_ints(size_t(max_batch_) * shape_.seq_len);
  if (shape_.mtp_depth > 0 && mp.holds_head() && !inference_) {  // the modules' (mtp_step)
    TRIAD_CHECK(shape_.n_embd % mp.tp == 0 &&
                    (precision_ == Precision::fp32 || shape_.n_embd / mp.tp % 2 == 0),
                "multi-token prediction needs n_embd (", shape_.n_embd,
                ") divisible by tp = ", mp.tp,
                (precision_ == Precision::bf16 ? " into even parts (bf16)" : ""));
    TRIAD_CHECK(shape_.tied || wte_ >= 0,
                "multi-token prediction with an untied head needs "
                "the embedding on the last stage (pp = 1)");
    const size_t n = size_t(shape_.mtp_depth) * size_t(max_batch_) * shape_.seq_len;
    d_mtp_ids_ = be_.alloc_ints(n);
    d_mtp_targets_ = be_.alloc_ints(n);
  }
  d_targets_ = be_.alloc_ints(size_t(max_batch_) * shape_.seq_len);
  if (shape_.masks_attention(shape_.seq_len))
    d_key_begin_ = be_.alloc_ints(size_t(max_batch_) * shape_.seq_len);
  if (shape_.masks_full_layers())
    d_key_begin_full_ = be_.alloc_ints(size_t(max_batch_) * shape_.seq_len);
  if (shape_.reset_positions) d_positions_ = be_.alloc_ints(size_t(max_batch_) * shape_.seq_len);
  if (shape_.hidden_dropout > 0.0f && !inference_)
    d_dropout_keys_ = be_.alloc_ints(2 * size_t(max_batch_) * shape_.seq_len);
  if (shape_.attention_dropout > 0.0f && !inference_)
    d_attention_dropout_keys_ = be_.alloc_ints(2 * size_t(max_batch_) * shape_.seq_len);
  host_ids_.resize(size_t(max_batch_) * shape_.seq_len);
  host_candidates_.resize(host_ids_.size());
  // Host scratch: one row of logits and its local slice (sampling), or the per-token losses and
  // hits of a micro-batch, or the vocabulary-parallel row statistics, whichever is largest.
  host_scratch_.resize(
      std::max(2 * size_t(shape_.padded_vocab_size), 4 * size_t(max_batch_) * shape_.seq_len));
}

GptMemory Gpt::memory_plan(const GptShape& shape, int max_batch, int shards,
                           const ModelParallel& mp, const PipelineSchedule* schedule,
                           Precision precision, ActivationOptions options, ZeroOptions zero,
                           const ActivationSlots* also) {
  const int rows = logits_chunk_rows(options, max_batch, shape, mp.cp);
  GptMemory m;
  const auto specs = gpt_rank_layout(shape, mp);
  m.param_floats = layout_floats(specs);
  m.buffer_floats = padded_buffer_floats(specs, shards);
  m.grads = options.inference ? 0 : m.buffer_floats * sizeof(float);
  size_t gathered = 0;  // ZeRO-3's buffers of gathered weights
  if (zero.bucketed_grads) {
    const GradBuckets gb = grad_buckets(specs, m.param_floats);
    m.grads = (gb.ends() + 2 * gb.layer) * sizeof(float);
    if (zero.gathered_weights) {
      const size_t per_word = precision == Precision::bf16 ? 2 : 1;
      gathered = (gb.ends() + 3 * gb.layer) / per_word * sizeof(float);
    }
  }
  const size_t slice = m.buffer_floats / size_t(shards);
  m.weights = (zero.master ? slice : m.buffer_floats) * sizeof(float);
  size_t expert_slice = 0;  // ZeRO-3 with expert parallelism: the packed experts' slice
  if (zero.gathered_weights && mp.ep > 1) {
    const ExpertPacking p = expert_packing(specs, m.param_floats, zero.expert_shards);
    if (p.floats > 0) expert_slice = p.padded / size_t(zero.expert_shards);
  }
  m.weights += expert_slice * sizeof(float);
  const ActivationSlots a = activation_slots(mp, options.inference ? nullptr : schedule, also);
  m.activation_sets = a.slots;
  if (precision == Precision::bf16) {
    m.weights_bf16 =
        (zero.gathered_weights ? slice + expert_slice : m.buffer_floats) * sizeof(bf16_t) +
        gathered;
    m.activations =
        Activations<bf16_t>(shape, mp, max_batch, a.slots, a.grad_sends, options.recompute, rows,
                            a.split_backward, options.inference, options.mtp_draft, nullptr)
            .bytes();
  } else {
    m.weights += gathered;  // fp32: the gathered weights are what the layers read
    m.activations =
        Activations<float>(shape, mp, max_batch, a.slots, a.grad_sends, options.recompute, rows,
                           a.split_backward, options.inference, options.mtp_draft, nullptr)
            .bytes();
  }
  // (the multi-token prediction modules' routers' biases, and their ids and targets in training
  // on the last stage)
  const bool mtp_ids = shape.mtp_depth > 0 && mp.holds_head() && !options.inference;
  m.other =
      ((options.inference ? 0 : tied_scratch_floats(shape, mp)) + rope_table_floats(shape) +
       size_t(shape.n_layer + shape.mtp_depth) * size_t(shape.moe_experts)) *
          sizeof(float) +
      (2 + (shape.masks_attention(shape.seq_len) ? 1 : 0) + (shape.masks_full_layers() ? 1 : 0) +
       (shape.reset_positions ? 1 : 0) + (mtp_ids ? 2 * shape.mtp_depth : 0)) *
          size_t(max_batch) * size_t(shape.seq_len) * sizeof(int32_t);
  return m;
}

Gpt::~Gpt() {
  if (d_key_begin_) be_.free_ints(d_key_begin_);
  if (d_key_begin_full_) be_.free_ints(d_key_begin_full_);
  if (d_positions_) be_.free_ints(d_positions_);
  if (d_dropout_keys_) be_.free_ints(d_dropout_keys_);
  if (d_attention_dropout_keys_) be_.free_ints(d_attention_dropout_keys_);
  if (fp8_amax_) be_.free(fp8_amax_);
  be_.free_ints(d_targets_);
  be_.free_ints(d_inputs_);
  if (d_mtp_ids_ != nullptr) be_.free_ints(d_mtp_ids_);
  if (d_mtp_targets_ != nullptr) be_.free_ints(d_mtp_targets_);
  if (tied_scratch_) be_.free(tied_scratch_);
  if (rope_table_) be_.free(rope_table_);
  if (rope_local_table_) be_.free(rope_local_table_);
  if (router_bias_dev_) be_.free(router_bias_dev_);
  delete acts_fp32_;
  delete acts_bf16_;
  if (params_bf16_) be_.free_bf16(params_bf16_);
  if (expert_params_bf16_) be_.free_bf16(expert_params_bf16_);
  if (expert_params_) be_.free(expert_params_);
  if (decode_scratch_fp32_) be_.free(decode_scratch_fp32_);
  if (decode_scratch_bf16_) be_.free_bf16(decode_scratch_bf16_);
  if (grads_) be_.free(grads_);
  if (grad_ends_) be_.free(grad_ends_);
  if (gw_ends_) be_.free(gw_ends_);
  for (float* r : gw_ring_)
    if (r != nullptr) be_.free(r);
  for (float* r : grad_ring_)
    if (r != nullptr) be_.free(r);
  be_.free(params_);
}

size_t Gpt::activation_bytes() const {
  return acts_bf16_ ? acts_bf16_->bytes() : acts_fp32_->bytes();
}

template <>
Gpt::Activations<float>& Gpt::acts<float>() {
  TRIAD_ASSERT(acts_fp32_ != nullptr);
  return *acts_fp32_;
}
template <>
Gpt::Activations<bf16_t>& Gpt::acts<bf16_t>() {
  TRIAD_ASSERT(acts_bf16_ != nullptr);
  return *acts_bf16_;
}
template <>
const float* Gpt::weights<float>() const {
  TRIAD_ASSERT(!gathers_ && !sharded_master());
  return params_;
}
template <>
const bf16_t* Gpt::weights<bf16_t>() const {
  TRIAD_ASSERT(!gathers_);
  return params_bf16_;
}

void ActivationSlots::cover(const ActivationSlots& other) {
  if (slots.empty()) {
    *this = other;
    return;
  }
  TRIAD_CHECK(other.split_backward == split_backward && other.slots.size() == slots.size(),
              "internal error: pipeline schedules of one model differ in their chunks or in "
              "splitting the backward pass");
  for (size_t c = 0; c < slots.size(); ++c) slots[c] = std::max(slots[c], other.slots[c]);
  for (const auto& [peer, n] : other.grad_pools) {
    auto it = std::find_if(grad_pools.begin(), grad_pools.end(),
                           [peer = peer](const auto& p) { return p.first == peer; });
    if (it == grad_pools.end())
      grad_pools.emplace_back(peer, n);
    else
      it->second = std::max(it->second, n);
  }
  grad_sends = 0;
  for (const auto& [peer, n] : grad_pools) grad_sends += n;
}

ActivationSlots Gpt::schedule_slots(const ModelParallel& mp, const PipelineSchedule& schedule) {
  return activation_slots(mp, &schedule);
}

int Gpt::ring_rows() const {
  if (!inference_) return 0;
  for (int l = 0; l < shape_.n_layer; ++l)
    if (const int r = kv_ring_rows(shape_, mp_, precision_ == Precision::bf16, l); r > 0) return r;
  return 0;
}

void Gpt::set_window(int window) {
  TRIAD_ASSERT(window >= 0);
  if (window == shape_.sliding_window) return;
  TRIAD_CHECK(ring_rows() == 0, "internal error: set_window on a model planned with rings of ",
              ring_rows(), " rows for its window of ", shape_.sliding_window);
  TRIAD_CHECK(shape_.window_scheduled || (window == 0 || window >= shape_.seq_len),
              "internal error: set_window needs a model planned for a changing window");
  // A model without a window of its own gets one in every layer: full_attention_every is 0 there.
  shape_.sliding_window = window;
  forget_decoded();  // keys and values cached under another window
}

void Gpt::set_frozen(const std::function<bool(const std::string&)>& frozen) {
  frozen_.assign(specs_.size(), 0);
  for (size_t i = 0; i < specs_.size(); ++i) frozen_[i] = frozen(specs_[i].name) ? 1 : 0;
  // With every embedding frozen, the leading layers whose tensors are all frozen need no
  // backward: layers 0, 1, .. of the first chunk (held here only on its stage: wte_ >= 0).
  frozen_layers_ = 0;
  if (wte_ < 0 || !frozen_[size_t(wte_)] || (wpe_ >= 0 && !frozen_[size_t(wpe_)])) return;
  const int held = mp_.chunk_layers(0, shape_.n_layer);
  for (int l = 0; l < held && layer_[size_t(l)] >= 0; ++l) {
    for (int k = 0; k < layer_count(l); ++k)
      if (!frozen_[size_t(layer_[size_t(l)] + k)]) return;
    ++frozen_layers_;
  }
}

void Gpt::set_schedule(const PipelineSchedule& schedule) {
  TRIAD_CHECK(
      mp_.pp > 1 && !inference_ && !schedule_.empty() && schedule.placement == mp_.placement,
      "internal error: set_schedule needs a training model of a pipeline, with the "
      "chunks placed alike");
  const ActivationSlots a = activation_slots(mp_, &schedule);
  TRIAD_CHECK(a.split_backward == split_backward_, "a pipeline schedule that ",
              a.split_backward ? "splits" : "does not split",
              " the backward pass cannot replace one that ", split_backward_ ? "does" : "does not");
  for (size_t c = 0; c < a.slots.size(); ++c)
    TRIAD_CHECK(a.slots[c] <= planned_slots_[c], "the pipeline schedule keeps ", a.slots[c],
                " micro-batches of chunk ", c, " in flight on stage ", mp_.pp_rank,
                ", more than the ", planned_slots_[c], " its memory was planned for");
  // The step takes each peer's buffers in turn as the constructor's schedule had them: at least
  // as many as this schedule was simulated with keeps it free of deadlock.
  for (const auto& [peer, n] : a.grad_pools) {
    const auto it = std::find_if(grad_pools_.begin(), grad_pools_.end(),
                                 [peer = peer](const auto& p) { return p.first == peer; });
    TRIAD_CHECK(it != grad_pools_.end() && it->second >= n, "the pipeline schedule sends ", n,
                " gradients to stage ", peer, " in flight from stage ", mp_.pp_rank,
                ", more than the buffers its memory was planned for");
  }
  schedule_ = schedule;
}

void Gpt::params_updated() {
  TRIAD_CHECK(!sharded_master(),
              "internal error: a slice of the master weights cannot refresh the bf16 copy");
  decoded_.clear();  // the kept keys and values came from the old weights
  if (params_bf16_) be_.convert(params_bf16_, params_, buffer_floats_);
}

void Gpt::set_params(const float* host) {
  if (gathers_) {  // ZeRO-3: the slice's master weights, and of them its bf16 copy
    const size_t slice = master_end_ - master_begin_;
    be_.copy_from_host(params_, host + master_begin_, slice);
    if (params_bf16_) be_.convert(params_bf16_, params_, slice);
    // The packed experts' slice from their extents.
    for (const auto& e : packing_.extents) {
      const size_t a = std::max(e.packed, expert_begin_);
      const size_t b = std::min(e.packed + (e.hi - e.lo), expert_end_);
      if (a < b)
        be_.copy_from_host(expert_params_ + (a - expert_begin_), host + e.lo + (a - e.packed),
                           b - a);
    }
    if (expert_params_bf16_)
      be_.convert(expert_params_bf16_, expert_params_, expert_end_ - expert_begin_);
    weights_changed();
    zero_grads();
    return;
  }
  if (!sharded_master()) {
    be_.copy_from_host(params_, host, buffer_floats_);
    params_updated();
    return;
  }
  // The whole buffer in pieces through gradient memory (zeroed before every step's backward):
  // the bf16 copy from all of it, the master weights from their slice.
  decoded_.clear();
  float* stage = bucketed_ ? grad_ring_[0] : grads_;
  const size_t piece = bucketed_ ? layer_floats_ : buffer_floats_;
  for (size_t at = 0; at < buffer_floats_; at += piece) {
    const size_t n = std::min(piece, buffer_floats_ - at);
    be_.copy_from_host(stage, host + at, n);
    be_.convert(params_bf16_ + at, stage, n);
    const size_t a = std::max(at, master_begin_), b = std::min(at + n, master_end_);
    if (a < b) be_.copy(params_ + (a - master_begin_), stage + (a - at), b - a);
  }
  zero_grads();
}

int64_t Gpt::num_parameters(const GptShape& shape) {
  int64_t n = 0;
  for (const auto& s : gpt_parameter_layout(shape)) n += int64_t(s.numel);
  // wte's padding rows (and an untied head's) are not parameters of the model.
  const int64_t pad = int64_t(shape.padded_vocab_size - shape.vocab_size) * shape.n_embd;
  return n - (shape.tied ? 1 : 2) * pad;
}

int64_t Gpt::active_parameters(const GptShape& shape) {
  int64_t idle = 0;  // the experts a token does not use
  for (const auto& s : gpt_parameter_layout(shape))
    if (is_expert_tensor(s.name))
      idle += int64_t(s.numel) / shape.moe_experts * (shape.moe_experts - shape.moe_top_k);
  return num_parameters(shape) - idle;
}

double Gpt::flops_per_token(const GptShape& shape) {
  // The multi-token prediction modules (their tensors among the parameters) use the head once
  // more each, and their blocks attend.
  const double heads = double(shape.mtp_depth) * shape.vocab_size * shape.n_embd;
  return 6.0 * (double(active_parameters(shape)) + heads) +
         6.0 * (shape.n_layer + shape.mtp_depth) * shape.attn_flops_width() * double(shape.seq_len);
}

// Rounded up to a multiple of 8 rows, so that every chunk's rows start 16-byte aligned for the
// GPU's vectorized loads and cuBLASLt.
int Gpt::logits_chunk_rows(const ActivationOptions& o, int max_batch, const GptShape& shape,
                           int cp) {
  const int all = max_batch * (shape.seq_len / cp);
  if (o.logits_chunk <= 0) return all;
  const int rows = std::min(o.logits_chunk, all);  // first: no overflow rounding a huge value
  return std::min((rows + 7) / 8 * 8, all);
}

double Gpt::recompute_flops_per_token(const GptShape& shape, const ModelParallel& mp,
                                      Recomputation recompute) {
  if (recompute.mode != Recompute::full) return 0;
  double layers = 0;  // the recomputing layers of this rank's chunks
  for (int c = 0; c < mp.virtual_stages; ++c) {
    const int g = mp.global_chunk(c), first = mp.first_layer(g, shape.n_layer);
    const int n = recompute.count(mp.chunk_layers(g, shape.n_layer));  // the chunk's first n
    for (int l = first; l < first + n; ++l) layers += layer_recompute_flops_per_token(shape, l);
  }
  // On this rank's 1/tp of the heads and hidden units.
  return layers / mp.tp;
}

double Gpt::layer_recompute_flops_per_token(const GptShape& shape, int l) {
  // c_attn, attn.c_proj and c_fc forward (2·(W + A + F)·C per token, W = c_attn's outputs: 3C
  // for GPT-2, A = the attention's width: C for GPT-2, F = c_fc's: 4C for GPT-2), attention
  // forward (2·A·T as in the model's 6·A·T).
  // A mixture of experts: k experts' c_fc per token, the router, the experts' c_proj (the
  // gates' gradient reads their outputs), and the shared experts' c_fc.
  // (Multi-head latent attention: its five products for c_attn's and c_proj's.)
  const double C = shape.n_embd, A = shape.attn_flops_width();
  const double fc = shape.moe_layer(l)
                        ? double(shape.fc_rows() + shape.hidden()) * shape.moe_top_k +
                              shape.moe_experts + shape.shared_fc_rows()
                        : double(shape.dense_fc_rows());
  return 2.0 * (shape.attn_weights_per_token() + fc * C) + 2.0 * A * shape.seq_len;
}

void Gpt::init(uint64_t seed, const InitOptions& options) {
  // Draw the whole model in layout order from one seeded stream on the host, keeping this
  // rank's shards: the same seed gives the same weights on every backend and grid.
  TRIAD_ASSERT(options.std > 0 && options.truncation >= 0);
  std::vector<float> host(buffer_floats_, 0.0f), full;
  Rng rng(seed);
  const double residual_std =
      options.scaled_residual ? options.std / std::sqrt(2.0 * shape_.n_layer) : options.std;
  // A standard normal draw, redrawn (the stream moves on) while beyond the truncation.
  auto draw = [&] {
    double z = rng.normal();
    while (options.truncation > 0 && std::abs(z) > options.truncation) z = rng.normal();
    return z;
  };
  // μP: the hidden matrices' deviation shrinks with the width, 1/sqrt(m) of the base model's.
  const double hidden = 1.0 / std::sqrt(shape_.mup_mult());
  for (const auto& t : gpt_parameter_layout(shape_)) {
    full.assign(t.numel, 0.0f);
    const bool is_bias = t.name.ends_with("/bias");
    const bool is_norm =
        t.name.find("ln_") != std::string::npos || t.name.ends_with("_norm/weight");
    if (is_norm && !is_bias) {
      std::fill(full.begin(), full.end(), 1.0f);
    } else if (!is_bias) {
      const bool residual = t.name.ends_with("c_proj/weight");
      // (The router and the shared experts' gate are readouts, of E and 1 outputs: μP leaves
      // their deviation, and multiplies their logits by 1/m instead.)
      const bool matrix = (t.name.starts_with("h/") || t.name.starts_with("mtp/")) &&
                          t.shape.size() >= 2 && !t.name.ends_with("/mlp/router/weight") &&
                          !t.name.ends_with("/mlp/shared/gate/weight");
      const double std = (residual ? residual_std : options.std) * (matrix ? hidden : 1.0);
      size_t n = t.numel;
      if (has_vocabulary_rows(t.name))  // padding rows 0
        n = size_t(shape_.vocab_size) * shape_.n_embd;
      for (size_t i = 0; i < n; ++i) full[i] = float(std * draw());
    }
    for (const auto& s : specs_)  // wte may be held twice (embedding and head)
      if (s.name == t.name) extract_shard(s, full.data(), &host[s.offset]);
  }
  set_params(host.data());
  if (!inference_) zero_grads();
}

void Gpt::zero_grads() {
  TRIAD_CHECK(!inference_, "internal error: a model for inference has no gradients");
  // Gradient buckets start from zero where they are filled (forward_backward's ends, each
  // layer's as its backward begins): nothing to clear between steps.
  if (!bucketed_) be_.zero(grads_, buffer_floats_);
}

}  // namespace triad
