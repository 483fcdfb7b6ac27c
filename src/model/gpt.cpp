// Parameter layout and initialization of the GPT; forward/backward live in gpt_step.cpp.
#include "triad/model/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gpt_activations.h"
#include "triad/core/error.h"
#include "triad/core/rng.h"

namespace triad {

std::vector<ParamSpec> gpt_parameter_layout(const GptShape& shape) {
  std::vector<ParamSpec> specs;
  size_t n_floats = 0;
  const int64_t C = shape.n_embd, Vp = shape.padded_vocab_size, T = shape.seq_len;
  auto add = [&](std::string name, std::vector<int64_t> shp) {
    ParamSpec s;
    s.name = std::move(name);
    s.shape = std::move(shp);
    s.numel = 1;
    for (auto d : s.shape) s.numel *= size_t(d);
    s.offset = n_floats;
    s.decay = s.shape.size() >= 2;
    // Keep every tensor 16-float (64-byte) aligned for vector loads.
    n_floats += (s.numel + 15) / 16 * 16;
    specs.push_back(std::move(s));
  };
  add("wte/weight", {Vp, C});
  add("wpe/weight", {T, C});
  for (int l = 0; l < shape.n_layer; ++l) {
    const std::string p = "h/" + std::to_string(l) + "/";
    add(p + "ln_1/weight", {C});
    add(p + "ln_1/bias", {C});
    add(p + "attn/c_attn/weight", {3 * C, C});
    add(p + "attn/c_attn/bias", {3 * C});
    add(p + "attn/c_proj/weight", {C, C});
    add(p + "attn/c_proj/bias", {C});
    add(p + "ln_2/weight", {C});
    add(p + "ln_2/bias", {C});
    add(p + "mlp/c_fc/weight", {4 * C, C});
    add(p + "mlp/c_fc/bias", {4 * C});
    add(p + "mlp/c_proj/weight", {C, 4 * C});
    add(p + "mlp/c_proj/bias", {C});
  }
  add("ln_f/weight", {C});
  add("ln_f/bias", {C});
  return specs;
}

Gpt::Gpt(const GptShape& shape, int max_batch, Backend& backend, int shards)
    : shape_(shape), max_batch_(max_batch), be_(backend) {
  TRIAD_ASSERT(shards >= 1);
  TRIAD_ASSERT(shape.n_embd % shape.n_head == 0 && max_batch >= 1);
  TRIAD_ASSERT(shape.padded_vocab_size >= shape.vocab_size);
  specs_ = gpt_parameter_layout(shape);
  n_floats_ = specs_.back().offset + (specs_.back().numel + 15) / 16 * 16;
  const size_t quantum = 16 * size_t(shards);
  buffer_floats_ = (n_floats_ + quantum - 1) / quantum * quantum;
  params_ = be_.alloc(buffer_floats_);
  grads_ = be_.alloc(buffer_floats_);
  acts_ = new Activations(shape_, max_batch_, be_);
  d_inputs_ = be_.alloc_ints(size_t(max_batch_) * shape_.seq_len);
  d_targets_ = be_.alloc_ints(size_t(max_batch_) * shape_.seq_len);
  // Host scratch for one row of logits (sampling) or the per-token losses and hits of a
  // micro-batch (the loss sum), whichever is larger.
  host_scratch_.resize(
      std::max(size_t(shape_.padded_vocab_size), 2 * size_t(max_batch_) * shape_.seq_len));
}

Gpt::~Gpt() {
  be_.free_ints(d_targets_);
  be_.free_ints(d_inputs_);
  delete acts_;
  be_.free(grads_);
  be_.free(params_);
}

const ParamSpec& Gpt::param(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name) return s;
  fail("internal error: no parameter named ", name);
}

int64_t Gpt::num_parameters() const {
  int64_t n = 0;
  for (const auto& s : specs_) n += int64_t(s.numel);
  // wte's padding rows are not parameters of the model.
  return n - int64_t(shape_.padded_vocab_size - shape_.vocab_size) * shape_.n_embd;
}

double Gpt::flops_per_token() const {
  return 6.0 * double(num_parameters()) +
         6.0 * shape_.n_layer * double(shape_.n_embd) * double(shape_.seq_len);
}

void Gpt::init(uint64_t seed) {
  // Initialize on the host in layout order with one seeded stream, then upload: the same seed
  // gives the same weights on every backend and grid.
  std::vector<float> host(buffer_floats_, 0.0f);
  Rng rng(seed);
  const double residual_std = 0.02 / std::sqrt(2.0 * shape_.n_layer);
  for (const auto& s : specs_) {
    float* p = host.data() + s.offset;
    const bool is_bias = s.name.ends_with("/bias");
    const bool is_norm = s.name.find("ln_") != std::string::npos;
    if (is_norm && !is_bias) {
      std::fill(p, p + s.numel, 1.0f);
    } else if (is_bias) {
      // zero
    } else {
      const bool residual = s.name.ends_with("c_proj/weight");
      const double std = residual ? residual_std : 0.02;
      size_t n = s.numel;
      if (s.name == "wte/weight") n = size_t(shape_.vocab_size) * shape_.n_embd;  // padding 0
      for (size_t i = 0; i < n; ++i) p[i] = float(std * rng.normal());
    }
  }
  be_.copy_from_host(params_, host.data(), buffer_floats_);
  zero_grads();
}

void Gpt::zero_grads() { be_.zero(grads_, buffer_floats_); }

}  // namespace triad
