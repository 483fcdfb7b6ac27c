// The GPT-2 model of DESIGN.md §3 on one rank: the parameter layout (names, shapes and offsets
// into one contiguous buffer), initialization, and forward/backward as a sequence of Backend
// ops over activations planned once for the micro-batch shape.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "triad/kernels/backend.h"

namespace triad {

struct GptShape {
  int n_layer = 0, n_head = 0, n_embd = 0, seq_len = 0, vocab_size = 0, padded_vocab_size = 0;
};

struct ParamSpec {
  std::string name;            // DESIGN.md §3, e.g. "h/3/mlp/c_fc/weight"
  std::vector<int64_t> shape;  // full shape
  size_t offset = 0;           // into the parameter buffer, in floats
  size_t numel = 0;
  bool decay = false;  // weight decay applies (rank >= 2)
};

// The parameter layout of DESIGN.md §3 in buffer order (wte, wpe, 12 tensors per layer, ln_f),
// each tensor 16-float aligned. Tools that need names and shapes without a model use it too.
std::vector<ParamSpec> gpt_parameter_layout(const GptShape& shape);

struct ForwardStats {
  double loss_sum = 0;  // sum of token cross-entropies (nats)
  int64_t correct = 0;  // top-1 hits among the first vocab_size logits
  int64_t tokens = 0;
};

class Gpt {
 public:
  // Plans parameters, gradients and activations for micro-batches of up to max_batch
  // sequences of shape.seq_len tokens; all memory is allocated here, none in the step loop.
  // The parameter and gradient buffers are padded to a multiple of 16·shards floats so that
  // ZeRO can cut them into `shards` equal contiguous slices.
  Gpt(const GptShape& shape, int max_batch, Backend& backend, int shards = 1);
  ~Gpt();
  Gpt(const Gpt&) = delete;
  Gpt& operator=(const Gpt&) = delete;

  const GptShape& shape() const { return shape_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& param(const std::string& name) const;
  size_t num_floats() const { return n_floats_; }          // floats holding parameters
  size_t buffer_floats() const { return buffer_floats_; }  // allocated, padded for sharding
  // Parameters counted as in DESIGN.md §5 (MFU): every tensor once, wte's padding excluded.
  int64_t num_parameters() const;
  double flops_per_token() const;  // 6·N + 6·n_layer·C·T

  float* params() { return params_; }
  float* grads() { return grads_; }

  // Called during backward with (offset, count) of a contiguous range of the gradient buffer
  // as soon as its gradients are final for this micro-batch (ln_f, then each layer from the
  // last to the first, then wte/wpe), so data-parallel reduction can overlap the backward.
  using GradReadyHook = std::function<void(size_t offset, size_t count)>;
  void set_grad_ready_hook(GradReadyHook hook) { grad_hook_ = std::move(hook); }

  // Seeded init (DESIGN.md §3): N(0, 0.02) weights, residual projections
  // N(0, 0.02/sqrt(2·n_layer)), zero biases, LayerNorm weight 1; wte padding rows zero.
  void init(uint64_t seed);
  void zero_grads();

  // One micro-batch: forward, loss, and backward with gradients ACCUMULATED into grads().
  // inputs/targets are B×T token ids in host memory (uploaded to the backend here). dloss_scale
  // weights each token's loss in the gradient (1 / tokens of the global batch gives the mean).
  ForwardStats forward_backward(const int32_t* inputs, const int32_t* targets, int B,
                                float dloss_scale);
  // Forward and loss only (evaluation).
  ForwardStats evaluate(const int32_t* inputs, const int32_t* targets, int B);
  // Forward only; copies the logits (first vocab_size of each row) to host_out [B, T, V].
  void forward_logits(const int32_t* inputs, int B, float* host_out);
  // Logits (first vocab_size) of the last of `len` tokens of one sequence (generation);
  // len <= seq_len. Returns a host pointer valid until the next call.
  const float* next_token_logits(const int32_t* tokens, int len);

 private:
  void forward(const int32_t* inputs, int B, int T);
  void backward(const int32_t* inputs, int B, int T);
  ForwardStats classifier(const int32_t* targets, int B, int T, float dloss_scale);

  struct Activations;
  GptShape shape_;
  int max_batch_;
  Backend& be_;
  std::vector<ParamSpec> specs_;
  size_t n_floats_ = 0, buffer_floats_ = 0;
  GradReadyHook grad_hook_;
  int32_t* d_inputs_ = nullptr;  // token ids on the backend's device
  int32_t* d_targets_ = nullptr;
  float* params_ = nullptr;
  float* grads_ = nullptr;
  Activations* acts_ = nullptr;
  std::vector<float> host_scratch_;
};

}  // namespace triad
