// The GPT-2 model of DESIGN.md §3 on one rank: initialization, and forward/backward as a
// sequence of Backend ops over activations planned once for the micro-batch shape. Its shape is
// gpt_shape.h, its parameter layout (names, shapes and offsets into one contiguous buffer, and
// their tensor- and pipeline-parallel shards) gpt_layout.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt_layout.h"
#include "triad/model/gpt_shape.h"
#include "triad/model/preference_loss.h"
#include "triad/parallel/comm.h"
#include "triad/parallel/pipeline_schedule.h"

namespace triad {

// The arithmetic of the model (DESIGN.md §2). fp32: everything fp32 (the CPU reference).
// bf16: mixed precision — the weights the layers read are a bf16 copy of the fp32 master
// weights (params()), activations and their gradients are bf16, parameter gradients,
// optimizer state, LayerNorm statistics and the loss fp32.
enum class Precision { fp32, bf16 };
const char* precision_name(Precision p);

// Activation recomputation (activation checkpointing): what the forward pass keeps for the
// backward pass, trading compute for memory. Every mode computes the same gradients (on the CPU
// backend bit for bit: the recomputation runs the forward's own ops on the same inputs).
//   none  everything the backward pass reads is kept (fastest);
//   gelu  the MLP's GELU output (4C/tp per token and layer, a quarter of a layer's activations
//         at tp = 1) is not kept: the backward pass recomputes it from the kept pre-activation,
//         one elementwise pass (llm.c's recompute);
//   full  only each layer's output is kept (C per token; with the chunk's input that is all a
//         layer's backward needs): the backward pass reruns the layer's forward up to the MLP's
//         hidden activation — LayerNorms, c_attn, attention, c_proj with its tensor-parallel
//         reduction, c_fc — into one layer's scratch shared by every layer and micro-batch
//         (Megatron's full recompute, uniform over all layers). About 2/3 of a forward pass more
//         compute; activation memory independent of depth and of the micro-batches in flight
//         but for C per token and layer.
enum class Recompute { none, gelu, full };
const char* recompute_name(Recompute r);
// "none" | "gelu" | "full"; throws triad::Error naming `key` otherwise.
Recompute parse_recompute(const std::string& text, const std::string& key);

// The mode, in the first `layers` layers of every pipeline chunk (0: in all of them); the other
// layers keep everything (Megatron's "block" recompute method). Recomputing k layers of each
// chunk stops keeping k layers' buffers per chunk and micro-batch in flight, for one layer's
// scratch that serves them all and k layers' extra compute: `layers` sets memory and speed in
// steps of one layer.
struct Recomputation {
  Recompute mode = Recompute::none;
  int layers = 0;
  Recomputation(Recompute m = Recompute::none, int n = 0) : mode(m), layers(n) {}
  Recompute in_layer(int i) const { return layers == 0 || i < layers ? mode : Recompute::none; }
  int count(int per_chunk) const {  // layers that recompute of a chunk of per_chunk layers
    return mode == Recompute::none ? 0 : layers == 0 ? per_chunk : std::min(layers, per_chunk);
  }
  std::string describe(int per_chunk) const;  // "full", "full in 2 of 6 layers per chunk"
};

// How a Gpt trades compute or speed for activation memory; neither changes the model's math.
struct ActivationOptions {
  Recomputation recompute;
  // Tokens (rows) of logits the classifier forms at a time, in one buffer shared by every
  // micro-batch, rounded up to a multiple of 8 (aligned rows on a GPU); 0: a whole micro-batch. The
  // loss, its gradient and the head's backward run chunk by chunk right after the forward pass, so
  // an activation set keeps the C-wide gradient of the head's input instead of B·T × V/tp logits.
  // Chunks change only the order in which the head's weight gradient is summed.
  int logits_chunk = 0;
  // Forward passes only (generation, evaluation): no parameter gradients and no backward
  // buffers; every layer's internals in one shared scratch but its q|k|v (decode_logits' cache);
  // one activation set per chunk; attention through attention_decode, which keeps no T×T
  // probabilities (on a GPU it is slower than the flash kernel for long contexts without the
  // cache). triad-generate on a 124M fp32 model then holds its weights, 113 MB of keys and values
  // and one layer's internals: 0.88 GB in all instead of 3.1 GB. Training calls refuse it.
  bool inference = false;
  // With inference, on a model with multi-token prediction modules (one rank: tp = pp = 1):
  // module 0's decoding buffers and its block's own cache of keys and values, for drafting
  // tokens (Gpt::mtp_draft_logits; triad-generate --draft mtp).
  bool mtp_draft = false;
  ActivationOptions() = default;
  ActivationOptions(Recomputation r) : recompute(r) {}
  ActivationOptions(Recompute r) : recompute(r) {}
  // Explicit: {Recompute::full, 2} must not silently mean a chunk of 2 where a Recomputation
  // (full in 2 layers) was meant.
  explicit ActivationOptions(Recomputation r, int chunk) : recompute(r), logits_chunk(chunk) {}
};

// A mixture of experts' routing, summed over the layers and micro-batches a rank's forward
// passes routed (Gpt::take_moe_stats): Switch's balance E·Σ_e f_e·P_e and the busiest expert's
// load E·max_e f_e, both 1 when every expert gets its share.
template <class T>
struct LayerTensors;  // one layer's tensors in a parameter-shaped buffer (src/model)

struct MoeStats {
  double balance = 0, max_load = 0;
  double z = 0;  // with a router z-loss: the mean over the rows of lse² (Gpt::set_moe_z_loss)
  double dropped = 0;  // the fraction of the choices over capacity (model.moe_capacity_factor)
  int64_t count = 0;   // layer passes
  // The choices each expert of each layer got, [n_layer · E], summed over the passes (before a
  // capacity drops any; empty: no layer with experts ran). The ranks of a tensor-parallel group
  // route alike: only its rank 0 counts them, so that a sum over the ranks counts each once.
  std::vector<double> loads;
};

struct ForwardStats {
  double loss_sum = 0;  // sum of token cross-entropies (nats)
  double z_sum = 0;     // training with a z-loss (Gpt::set_z_loss): sum of (log Z)² per token
  int64_t correct = 0;  // top-1 hits among the first vocab_size logits
  int64_t tokens = 0;
  // Gpt::set_target_bytes: the loss of the counted targets that decode to bytes, and those bytes.
  double byte_loss_sum = 0;
  int64_t bytes = 0;
  // Gpt::set_preference (DPO): loss_sum is then the pairs' losses; the pairs, those whose chosen
  // reward exceeds the rejected one's, and the rewards' sums (β times a sequence's log-probability
  // less the reference's). Counted on one rank of each context-parallel group.
  int64_t pairs = 0, pairs_right = 0;
  double chosen_reward_sum = 0, rejected_reward_sum = 0;
};

// What ZeRO (parallel.zero) changes in what a training model holds; `shard` is this rank's
// slice of the `shards` the constructor cuts the buffers into.
//   master (ZeRO-1 and 2 in bf16, as Megatron's distributed optimizer): the fp32 master
//     weights exist for the slice only, the only ones its rank's optimizer updates; the layers
//     read the whole bf16 copy, which the ranks' updated slices are gathered into.
//   bucketed_grads (ZeRO-2, pp = 1): no whole gradient buffer. Each micro-batch's backward
//     forms the gradients in buckets, the embeddings' and the head's (with ln_f) kept for the
//     whole backward, each layer's in one of two buffers used in turn, and hands every bucket
//     to the grad-ready hook as soon as it is final, which reduces it into the slices; a layer's
//     buffer is reused once the request the hook returned for it has completed.
//   gathered_weights (ZeRO-3, with the two above, in fp32 too): no whole copy of the weights
//     either. The rank keeps its slice of the master weights (and in bf16 of their bf16 copy);
//     the layers read weights gathered from every rank's slice over `comm`: the embeddings',
//     ln_f's and the head's once after each update, each layer's before its forward and again
//     before its backward, into one of three layer buffers, the next layers' gathers running
//     while the current one computes.
//   expert_comm (ZeRO-3 with expert parallelism): the expert-parallel tensors differ between
//     data-parallel ranks (each expert-parallel rank holds other experts), so their slices are
//     not the data-parallel ones: their elements, packed one extent after the other
//     (ExpertPacking), are cut into expert_shards slices over the expert replicas expert_comm;
//     the rank keeps slice expert_shard (fp32, and in bf16 its bf16 copy), and the layers gather
//     the experts from there, the rest of each layer from the data-parallel slices.
struct ZeroOptions {
  int shard = -1;  // -1: none of the below
  bool master = false;
  bool bucketed_grads = false;
  bool gathered_weights = false;
  Comm* comm = nullptr;  // the group holding the other slices (ZeRO-3's gathers)
  Comm* expert_comm = nullptr;
  int expert_shard = 0, expert_shards = 1;
};

// The expert-parallel tensors' elements of a rank's parameter buffer packed together: extent k,
// buffer elements [lo, hi) (adjacent expert tensors merged, their alignment gaps included), at
// packed element `packed`; `floats` in all, padded to a multiple of 16·shards (equal 64-byte
// aligned slices, as the buffer's).
struct ExpertPacking {
  struct Extent {
    size_t lo = 0, hi = 0, packed = 0;
  };
  std::vector<Extent> extents;
  size_t floats = 0, padded = 0;
  // The packed element of buffer element `offset`, which lies in an extent.
  size_t packed(size_t offset) const;
};
ExpertPacking expert_packing(const std::vector<ParamSpec>& specs, size_t n_floats, int shards);

// What a Gpt allocates on its backend, in bytes (Gpt::memory_plan): everything it holds there,
// so the sum is the model's whole share of the device memory (the backend's own workspace and
// the optimizer's state come on top).
struct GptMemory {
  size_t weights = 0;        // fp32 parameters (the master weights under bf16), padded for ZeRO;
                             // one slice of them with a master_shard
  size_t weights_bf16 = 0;   // bf16 copy the layers read (bf16 precision); ZeRO-3: the slice's
                             // copy and the buffers the weights are gathered into (in fp32 those
                             // count in `weights`)
  size_t grads = 0;          // fp32 parameter gradients (none for inference; ZeRO-2: buckets)
  size_t activations = 0;    // the activation plan: kept sets, backward scratch, sends
  size_t other = 0;          // token ids and targets, the tied head's gradient exchange (pp > 1),
                             // the rope table
  size_t param_floats = 0;   // floats holding parameters (Gpt::num_floats)
  size_t buffer_floats = 0;  // the parameter buffer's length in floats (ZeRO cuts it in slices)
  std::vector<int> activation_sets;  // per local chunk: micro-batches kept in flight
  size_t total() const { return weights + weights_bf16 + grads + activations + other; }
};

// What a pipeline schedule needs of a stage's memory: activation sets per local chunk (the most
// micro-batches it keeps in flight on it; one without a schedule) and the buffers for outgoing
// gradients, reused in turn (grad_send_buffers: as many as the schedule needs not to wait, not
// one per send of the step). A schedule that splits the backward (zero bubble) keeps a set until
// the weight pass, which reads the output gradients the input-gradient pass leaves in it.
struct ActivationSlots {
  std::vector<int> slots;
  int grad_sends = 0;                           // buffers in all
  std::vector<std::pair<int, int>> grad_pools;  // (peer, buffers), in grad_sends' order
  bool split_backward = false;
  // Grows to hold `other`'s needs too (each chunk's sets, each peer's buffers: the most of both);
  // an empty one takes other's. Throws triad::Error where one splits the backward and one not.
  void cover(const ActivationSlots& other);
};

class Gpt {
 public:
  // Plans parameters, gradients and activations for micro-batches of up to max_batch
  // sequences of shape.seq_len tokens; all memory is allocated here, none in the step loop.
  // The parameter and gradient buffers are padded to a multiple of 16·shards floats so that
  // ZeRO can cut them into `shards` equal contiguous slices. `mp` says which part of the model
  // this rank holds. `schedule` (pp > 1) is the pipeline schedule pipeline_step() will run: it
  // sizes the activation sets (one per micro-batch a chunk keeps in flight) and the buffers of
  // outgoing gradients; without one, each chunk gets one activation set. `zero`: what ZeRO
  // keeps of the master weights and gradients (ZeroOptions). `also` (pp > 1): what the schedules
  // set_schedule may switch to need (a batch-size ramp's, of other micro-batch counts: their
  // schedule_slots covered), which the activation sets and gradient buffers hold as well.
  Gpt(const GptShape& shape, int max_batch, Backend& backend, int shards = 1,
      const ModelParallel& mp = {}, const PipelineSchedule* schedule = nullptr,
      Precision precision = Precision::fp32, ActivationOptions options = {}, ZeroOptions zero = {},
      const ActivationSlots* also = nullptr);
  ~Gpt();
  // What the constructor with these arguments allocates, without allocating it (planning a
  // grid's memory before a job runs); equal to the backend's allocations, tested.
  static GptMemory memory_plan(const GptShape& shape, int max_batch, int shards = 1,
                               const ModelParallel& mp = {},
                               const PipelineSchedule* schedule = nullptr,
                               Precision precision = Precision::fp32,
                               ActivationOptions options = {}, ZeroOptions zero = {},
                               const ActivationSlots* also = nullptr);
  // What `schedule` needs of the memory of the stage `mp` describes (pp > 1).
  static ActivationSlots schedule_slots(const ModelParallel& mp, const PipelineSchedule& schedule);
  // ZeRO-3: the buffer elements gathered in a training step of m micro-batches (after an update
  // nothing is held): the embeddings', ln_f's and the head's once; each layer's before its
  // forward and again before its backward, less those the three layer buffers still hold (the
  // backward starts with the forward's last three layers, the next forward with the backward's
  // first three). experts_only: those of the expert-parallel tensors (ep > 1), which come from
  // the experts' own replicas.
  static size_t gathered_per_step(const GptShape& shape, const ModelParallel& mp, int m,
                                  bool experts_only = false);
  Gpt(const Gpt&) = delete;
  Gpt& operator=(const Gpt&) = delete;

  const GptShape& shape() const { return shape_; }
  const ModelParallel& parallel() const { return mp_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  size_t num_floats() const { return n_floats_; }          // floats holding parameters
  size_t buffer_floats() const { return buffer_floats_; }  // allocated, padded for sharding
  size_t activation_bytes() const;
  // What this rank holds of the weights, in bytes: its fp32 (master) weights, the bf16 copy and
  // ZeRO-3's buffers of gathered weights (GptMemory's weights + weights_bf16).
  size_t weight_bytes() const { return weight_bytes_; }
  // Parameters of the whole model counted as in DESIGN.md §5 (MFU): every tensor once, wte's
  // padding excluded, whatever part this rank holds.
  int64_t num_parameters() const { return num_parameters(shape_); }
  double flops_per_token() const { return flops_per_token(shape_); }  // 6·N + 6·n_layer·C·T
  static int64_t num_parameters(const GptShape& shape);
  // With a mixture of experts, N in flops_per_token counts the parameters a token uses: each
  // layer's k of E experts (active_parameters); otherwise num_parameters.
  static double flops_per_token(const GptShape& shape);
  static int64_t active_parameters(const GptShape& shape);
  // The FLOPs per token that full recomputation adds on this rank (its recomputing layers'
  // forward up to c_fc: 16·C²/tp + 2·C·T/tp each); 0 for none and gelu (elementwise only). MFU
  // counts the model's FLOPs only, as Megatron's and nanoGPT's do; this is what the hardware runs
  // on top.
  static double recompute_flops_per_token(const GptShape& shape, const ModelParallel& mp,
                                          Recomputation recompute);
  // The same for recomputing layer l on one rank (tp = 1).
  static double layer_recompute_flops_per_token(const GptShape& shape, int l);
  const Recomputation& recompute() const { return recompute_; }
  int logits_chunk() const { return logits_rows_; }  // rows of logits formed at a time
  // The rows of logits a model with these options forms at a time (the option rounded up to a
  // multiple of 8, at most and by default a micro-batch of max_batch sequences: the rows a rank
  // holds of them, 1/cp under context parallelism).
  static int logits_chunk_rows(const ActivationOptions& options, int max_batch,
                               const GptShape& shape, int cp = 1);

  Precision precision() const { return precision_; }
  // The fp32 parameters (master weights under bf16): elements [master_begin(), master_end())
  // of the parameter buffer at params()[0 ..), the whole buffer unless ZeroOptions::master.
  // And the fp32 gradients of the whole buffer (null for inference and with bucketed_grads).
  float* params() { return params_; }
  size_t master_begin() const { return master_begin_; }
  size_t master_end() const { return master_end_; }
  bool sharded_master() const { return master_end_ - master_begin_ < buffer_floats_; }
  float* grads() { return grads_; }
  // After anything writes params() (an optimizer update, a checkpoint load): refreshes the bf16
  // copy the layers read (bf16 precision; nothing to do in fp32). sync_tied_embedding() keeps
  // the copy of what it receives current itself. Not with a sharded master (the slice alone
  // cannot refresh the copy): there set_params() loads weights, and the trainer gathers the
  // updated slices into the bf16 copy.
  void params_updated();
  // Loads the whole buffer's weights from host memory (buffer_floats() floats, this rank's
  // layout): the master weights it keeps and the bf16 copy. Any model; the way to load one with
  // a sharded master, whose gradient buffer serves as the staging area (it holds zeros after).
  void set_params(const float* host);
  // The bf16 copy of the weights, for an optimizer update that writes it in the same pass:
  // elements [copy_begin(), ...) of the buffer at params_bf16()[0 ..), the whole buffer but
  // under ZeRO-3 (its slice); null in fp32.
  bf16_t* params_bf16() { return params_bf16_; }
  size_t copy_begin() const { return gathers_ ? master_begin_ : 0; }
  bool gathered_weights() const { return gathers_; }
  // ZeRO-3 with expert parallelism (ZeroOptions::expert_comm), on a rank holding experts: their
  // packed slice [expert_begin(), expert_end()) of packing()'s elements, its fp32 master weights
  // at expert_params() and (bf16) their copy at expert_params_bf16(). The master slice of
  // params() then holds no expert: its elements in the expert extents are never read.
  bool packed_experts() const { return expert_params_ != nullptr; }
  const ExpertPacking& packing() const { return packing_; }
  size_t expert_begin() const { return expert_begin_; }
  size_t expert_end() const { return expert_end_; }
  float* expert_params() { return expert_params_; }
  const float* expert_params() const { return expert_params_; }
  bf16_t* expert_params_bf16() { return expert_params_bf16_; }
  // ZeRO-3: the slices changed (an update): the gathered weights are stale.
  void weights_changed();
  // ZeRO-3: takes part in the weight gathers of one forward pass (as forward_chunk issues them)
  // without computing, for a data-parallel rank with no batch while the others evaluate one
  // (the gathers are collective over the group). Nothing to do without ZeRO-3.
  void join_forward_gathers();

  // Called during backward with (offset, count, data) of a contiguous range of the gradient
  // buffer, held at data[0 .. count), as soon as its gradients are final for this micro-batch
  // (ln_f and the head, then each layer from the last to the first, then wte/wpe; together all
  // of [0, num_floats())), so data-parallel reduction can overlap the backward. The hook may
  // change the data in place and returns the request of its reduction: the model waits for it
  // before it reuses the bucket and for all of them before forward_backward() or pipeline_step()
  // returns. Needed with bucketed_grads. pipeline_step (pp > 1) calls it for the gradients final
  // after the step's micro-batches: a chunk's during its last backward pass of the step (under a
  // zero-bubble schedule: ln_f's, the head's and the embeddings' then, each layer's during the
  // chunk's last weight pass), so the reduction runs while the pipeline drains; a range holding
  // a stage's copy of the tied wte gradient after the step has summed the two copies.
  using GradReadyHook = std::function<CommRequest(size_t offset, size_t count, float* data)>;
  void set_grad_ready_hook(GradReadyHook hook) { grad_hook_ = std::move(hook); }
  bool bucketed_grads() const { return bucketed_; }

  // Seeded init (DESIGN.md §3): N(0, 0.02) weights, residual projections
  // N(0, 0.02/sqrt(2·n_layer)), zero biases, LayerNorm weight 1; wte padding rows zero. Every
  // rank draws the whole model's stream and keeps its shard, so any grid gets the same weights.
  // `options` changes the deviation, the residual projections' scaling and the truncation
  // (model.init_std, model.init_scaled_residual, model.init_truncation).
  struct InitOptions {
    double std = 0.02;            // the embeddings' and matrices' deviation σ
    bool scaled_residual = true;  // attn.c_proj, mlp.c_proj: σ/sqrt(2·n_layer); false: σ
    double truncation = 0;        // > 0: a value beyond ±truncation·σ is drawn again
  };
  void init(uint64_t seed, const InitOptions& options);
  void init(uint64_t seed) { init(seed, InitOptions{}); }
  void zero_grads();

  // One micro-batch (pp = 1): forward, loss, and backward with gradients ACCUMULATED into
  // grads(). inputs/targets are B×T token ids in host memory. dloss_scale weights each token's
  // loss in the gradient (1 / tokens of the global batch gives the mean). Collective over the
  // tensor-parallel group.
  ForwardStats forward_backward(const int32_t* inputs, const int32_t* targets, int B,
                                float dloss_scale);
  // One optimizer step's m micro-batches of B sequences (inputs/targets: m·B·T host ids) run
  // by the schedule given to the constructor: forwards, backwards and the transfers between
  // stages; then the tied wte gradient is summed between the first and the last stage.
  // Collective over the pipeline and tensor-parallel groups; the returned loss statistics are
  // those of all m micro-batches, on every rank.
  ForwardStats pipeline_step(const int32_t* inputs, const int32_t* targets, int m, int B,
                             float dloss_scale);
  // The next pipeline_step records its compute actions into *out (cleared first): kind,
  // micro-batch, chunk, and start and end in seconds from the step's start, which the pipeline
  // group passes a barrier to share; the backend is synchronized after each action so that its
  // end is when the device finished. One step only; null: none.
  void trace_next_step(std::vector<ComputeInterval>* out) { trace_ = out; }
  const PipelineSchedule& schedule() const { return schedule_; }  // pp > 1
  // pp > 1: the schedule the next pipeline_step calls run, for another number of micro-batches
  // (a batch-size ramp-up: one of the constructor's `also`). Throws triad::Error unless the
  // memory planned holds it: as many activation sets in flight per chunk at most, as many
  // outgoing gradient buffers per peer at least, the same kind of backward pass.
  void set_schedule(const PipelineSchedule& schedule);
  // The window the windowed layers keep to from the next forward pass on (train.window_warmup;
  // 0: none), in training, evaluation and generation alike: every layer of a model built without
  // one, the windowed layers of one built with one. Needs a shape with window_scheduled (the
  // attention mask's memory) unless it cuts nothing. Forgets the cached keys and values.
  void set_window(int window);
  // train.z_loss = c: training steps add c·(log Z)² per counted token to the loss they
  // differentiate (PaLM's z-loss; Z the softmax's normalizer over the vocabulary), and their
  // ForwardStats give Σ (log Z)²; the cross-entropy they report, and evaluation, stay as they
  // are. 0: none.
  void set_z_loss(float c) { z_loss_ = c; }
  // Multi-token prediction (GptShape::mtp_depth = D): the training loss adds λ/D times each
  // module's cross-entropy summed over its targets, scaled as the main loss (dloss_scale of
  // forward_backward and pipeline_step: per target of the main loss). λ: train.mtp_loss_weight.
  void set_mtp_weight(float w) { mtp_weight_ = w; }
  // The modules' cross-entropy summed over their counted targets, and those targets (the D
  // modules' together), over the training passes of this rank since the last call (nonzero on
  // the last stage only, and under tensor parallelism on every rank of its group alike).
  std::pair<double, int64_t> take_mtp_stats() {
    return {std::exchange(mtp_loss_sum_, 0.0), std::exchange(mtp_tokens_, 0)};
  }
  // eval.bits_per_byte: each token id's length in bytes as the data's tokenizer decodes it (0 for
  // a special token or an id it does not have), by id; the passes' ForwardStats then also count
  // the loss and the bytes of their counted targets with bytes. Empty: off.
  void set_target_bytes(std::vector<int32_t> bytes) { target_bytes_ = std::move(bytes); }
  // shape.hidden_dropout, shape.attention_dropout: the run's seed and the place in the data order
  // (TrainState::position counting) of the first sequence of the next forward_backward, or of the
  // next pipeline_step's first micro-batch (the others follow on: sequence b of micro-batch m is
  // first + m·B + b). With the positions these key the masks, so every grid and a resumed run drop
  // alike.
  void set_dropout_sequence(uint64_t seed, int64_t first) {
    dropout_seed_ = seed;
    dropout_first_ = first;
  }
  // train.moe_aux_loss = α (model.moe_experts): training steps add α times Switch's
  // load-balancing loss E·Σ_e f_e·P_e of each layer and micro-batch (f_e: the share of the N·k
  // choices that went to expert e, P_e: its mean probability over the N rows; 1 when balanced)
  // for every row of it to the loss they differentiate; its gradient flows through the
  // probabilities only. 0: none.
  void set_moe_aux_loss(float a) { moe_aux_loss_ = a; }
  // The load-balancing term per sequence (train.moe_aux_scope = sequence: DeepSeek-V3's
  // sequence-wise loss, f_e and P_e of each sequence's rows, all of them under context
  // parallelism, the term their mean) rather than per micro-batch.
  void set_moe_aux_per_sequence(bool on) { moe_aux_per_sequence_ = on; }
  // train.moe_z_loss = c (ST-MoE's router z-loss): training steps add c·lse² for every row a
  // layer with experts routes, lse = log Σ_e exp(the row's router logits), weighed as the
  // load-balancing loss; it keeps the router's logits small. 0: none.
  void set_moe_z_loss(float c) { moe_z_loss_ = c; }
  // The routing statistics of the forward passes since the last call (not those a backward pass
  // reruns), and clears them.
  MoeStats take_moe_stats() { return std::exchange(moe_stats_, MoeStats{}); }
  // The routers' biases (model.moe_experts; DeepSeek-V3's auxiliary-loss-free balancing):
  // [n_layer · E] fp32, layer l's at l·E (zero for dense layers; every rank holds every
  // layer's), added to the router's scores to choose the experts, not to weigh them. Zero at
  // first; a checkpoint restores them (set_router_bias), the trainer moves them
  // (balance_router_bias). Empty for a dense model.
  const std::vector<float>& router_bias() const { return router_bias_; }
  void set_router_bias(const std::vector<float>& bias);
  // train.moe_bias_rate = u, after an update: loads[l·E + e] the choices expert e of layer l got
  // in the step over every rank (MoeStats::loads summed over the world); each layer with experts
  // moves b[e] by u·sign(mean_e' loads − loads[e]) (DeepSeek-V3's rule: down for an expert with
  // more than its share, up for one with less, unchanged at the mean).
  void balance_router_bias(const std::vector<double>& loads, float rate);
  // train.freeze: the tensors whose names `frozen` holds get no gradient. Their products in the
  // backward pass are left out: a linear layer's weight-gradient product where its weight is
  // frozen (and its bias too, or it has none), a bias sum where its bias is, the head's where it
  // is; and where the embeddings and the first layers are all frozen, the backward pass stops
  // above them on the first pipeline chunk (nothing below needs their input gradient). The norms'
  // weight gradients (and wte's with a trainable wpe) are still formed; nothing reads them: the
  // optimizer and the gradient norms leave frozen tensors out, and the trainer does not reduce
  // a bucket of frozen tensors only.
  void set_frozen(const std::function<bool(const std::string&)>& frozen);
  // The leading layers the backward pass leaves out (set_frozen).
  int frozen_layers() const { return frozen_layers_; }
  // run.fp8 = tensorwise: the products of the blocks' four linear layers (c_attn,
  // attn.c_proj, c_fc, mlp.c_proj) run in FP8 (Backend::matmul_forward_fp8 / _backward_fp8),
  // each operand at its tensorwise scale; the amax of a tensor split over the tensor- or
  // context-parallel ranks is their maximum, so every grid quantizes as one rank does. The head,
  // the attention and the norms stay bf16, as do decoding, an inference model and products whose
  // row count is not a multiple of 16. Needs every layer width (per tensor-parallel rank) a
  // multiple of 16; throws naming run.fp8 otherwise. (An fp32 model runs them on fp32 operands,
  // which only the CPU backend implements: the form the PyTorch reference checks.)
  // run.fp8_skip: `skip` names the layers that stay out (h/<i>/attn/c_attn, h/<i>/attn/c_proj,
  // h/<i>/mlp/c_fc, h/<i>/mlp/c_proj; empty: none). run.fp8_head: the head's products too (the
  // loss's forward and backward and forward_logits; the amax of its vocabulary slices, of the
  // logits' gradient and of ln_f's output over the tensor- and context-parallel ranks), where a
  // chunk's rows are a multiple of 16.
  void set_fp8(bool on, const std::function<bool(const std::string&)>& skip = {},
               bool head = false);
  bool fp8() const { return fp8_amax_ != nullptr; }
  // The names run.fp8_skip matches: the four linear layers of each block, in order (the
  // multi-token prediction modules' blocks after the layers', mtp/<j>/...), then the modules'
  // eh_proj (mtp/<j>/eh_proj).
  static std::vector<std::string> fp8_layer_names(const GptShape& shape);
  // The widths of the FP8 products on a tensor-parallel rank of tp, named as config errors name
  // them: each must be a multiple of 16 (the GPU's FP8 products take 16 at a time). Under
  // multi-head latent attention the latent projections' widths stand in for c_attn's.
  static std::vector<std::pair<std::string, int>> fp8_widths(const GptShape& shape, int tp);
  // The bytes of the GPU backend's FP8 operand scratch its largest product of the blocks needs
  // (cuda_fp8.cu: the quantized A and B operands of a forward or backward product, 256-byte
  // aligned after their inverse scales) on a tensor-parallel rank of tp, for micro-batches of
  // `rows` rows: every FP8 product a block runs (c_attn or the latent attention's projections,
  // attn.c_proj, the dense layers' MLP, the experts' and shared experts' products), an expert's
  // at up to ep·rows rows (the ranks of its expert-parallel group each handing it theirs).
  static double fp8_operand_bytes(const GptShape& shape, int tp, int ep, double rows);
  // The bytes one FP8 product of OC outputs from IC inputs over N rows takes (either pass).
  static double fp8_product_bytes(double OC, double IC, double N);
  // The floats set_fp8 allocates for the amax slots: three per expert held (experts_fp8_amax),
  // at least the three of one product. Not in memory_plan (run.fp8 is set after construction):
  // the run's plan adds them.
  static size_t fp8_amax_floats(const GptShape& shape, const ModelParallel& mp) {
    return 3 * size_t(std::max(1, shape.moe_experts / mp.ep));
  }
  // train.activations_every (μP's coordinate check): while `sums` is set (host, one double per
  // activation_names entry), each forward pass (not decoding) adds the sums of squares of the
  // activations this rank holds once: the embedding's output ("embed") and, per block, its
  // attention and MLP branches' outputs ("h<i>_attn", "h<i>_mlp": after c_proj and its
  // tensor-parallel reduction) and the residual stream after it ("h<i>_out"). "Once": the rows
  // of this rank's tokens (context parallelism), on tensor-parallel rank 0 unless sequence
  // parallelism splits the rows; the blocks this pipeline stage holds. Summed over a replica's
  // ranks, they are the whole micro-batch's. nullptr: off.
  void set_activation_sums(double* sums) { activation_sums_ = sums; }
  // eval.loss_by_position: while set (host arrays of seq_len, or null), evaluate() adds each
  // counted target's loss at its position in the sequence to sums[t] and 1 to counts[t], on the
  // ranks holding the loss once (the last stage's tensor-parallel rank 0; under context
  // parallelism each rank its pieces), so a sum over every rank counts each target once.
  void set_position_losses(double* sums, double* counts) {
    position_sums_ = sums;
    position_counts_ = counts;
  }
  // The reference pass of DPO (set_preference): while set (a host array of B values, or null),
  // evaluate() adds each sequence's summed log-probability of its counted targets to sums[b],
  // on the ranks holding the loss once, as set_position_losses.
  void set_sequence_logps(double* sums) { sequence_logps_ = sums; }
  // data.preferences (direct preference optimization): training steps differentiate a
  // preference loss (model/preference_loss.h, DPO's by default) instead of the cross-entropy.
  // The rows come in pairs, 2j the chosen sequence and 2j + 1 the rejected one (a micro-batch
  // holds whole pairs); with π a row's summed log-probability of its counted targets and ρ the
  // same under the reference model, pair j's loss is the spec's of the two, weighted dloss_scale
  // in the gradient. reference: ρ of each row of the step (pipeline_step's m·B rows in order;
  // forward_backward's B), read while the step runs; null: off. The head runs twice on the last
  // stage: a pass for π, then the gradient's at each sequence's weight. A mixture of experts'
  // routing terms (set_moe_aux_loss, set_moe_z_loss) take moe_scale per row instead of
  // dloss_scale (the language model's per-token scale: 1 / the batch's counted targets).
  void set_preference(const PreferenceLossSpec& spec, const double* reference,
                      float moe_scale = 0.0f) {
    preference_ = spec;
    preference_reference_ = reference;
    preference_moe_scale_ = moe_scale;
  }
  static std::vector<std::string> activation_names(int n_layer);
  // After an optimizer update (pp > 1): the first stage's wte overwrites the last stage's copy.
  // Both received the same summed gradient, but a data-parallel reduction may round the two
  // copies' gradients differently (they sit at different offsets of differently sized buffers),
  // so the first stage's values are made the only ones. Collective over the pipeline group.
  // master_current = false (after a ZeRO-1 step that gathered the bf16 copy, whose fp32 weights
  // are current only in this rank's slice): the bf16 copy the layers read is sent instead, and
  // the last stage's fp32 copy, a replica that no checkpoint, norm or layer reads, is left as
  // its own update made it.
  void sync_tied_embedding(bool master_current = true);
  // Forward and loss only (evaluation); collective over the pipeline and tensor-parallel
  // groups, the result on every rank.
  ForwardStats evaluate(const int32_t* inputs, const int32_t* targets, int B);
  // Forward only; copies the logits (first vocab_size of each row) to host_out [B, T, V].
  // One rank holding the whole model only.
  void forward_logits(const int32_t* inputs, int B, float* host_out);
  // Logits (first vocab_size) of the last of `len` tokens of one sequence (generation);
  // len <= seq_len. Collective like evaluate(); every rank gets the logits. Returns a host
  // pointer valid until the next call.
  const float* next_token_logits(const int32_t* tokens, int len);
  // The same logits for generation, with a cache of keys and values (the KV cache): every layer
  // keeps the keys and values of the tokens of the previous call, so a call whose tokens extend
  // that call's (one more token each time) runs its layers over the new tokens only, and its
  // attention reads the kept keys and values instead of recomputing them (a call sharing only a
  // prefix with the previous one reuses that prefix: the tokens after it are computed). Under
  // full recomputation outside inference (whose layers share one scratch) it computes every
  // token, as next_token_logits does. The cache lives in the first activation set of
  // each chunk, without memory of its own: any other use of the model (a step, an evaluation, an
  // update followed by params_updated()) drops it, and forget_decoded() drops it explicitly (call
  // it before a new sample: weights written without params_updated() would leave it stale).
  // Collective like next_token_logits. Equal to it up to rounding (sums in another order; in
  // bf16 that can move an activation by one bf16 step).
  const float* decode_logits(const int32_t* tokens, int len) {
    return decode_logits(tokens, 1, len);
  }
  // B sequences of len tokens each at once (tokens [B, len]), in lockstep: their logits [B,
  // vocab_size], each sequence's cache kept as above (all extend by the same count). The layers
  // run B rows per new token, so a step reads the weights once for all B, on any grid; B <= the
  // model's max_batch. On a training model the
  // first call with B > 1 allocates a scratch of max_batch·seq_len q|k|v rows (not in
  // memory_plan); a model for inference has it in its plan.
  const float* decode_logits(const int32_t* tokens, int B, int len);
  // decode_logits' logits of each sequence's last `last` positions, [B, last, vocab_size]: row j
  // the prediction after token len − last + j (1 <= last <= len; B·last <= max_batch · seq_len).
  // Speculative decoding checks a draft's tokens with them, all in one pass. The cache as
  // decode_logits' (a call whose tokens leave a previous call's at a position recomputes from
  // there: rejected draft tokens are overwritten).
  const float* decode_logits_last(const int32_t* tokens, int B, int len, int last);
  // Drafting with multi-token prediction module 0 (a model built with ActivationOptions::
  // mtp_draft): the module runs over positions from .. len − 2 of the sequence `tokens` (len of
  // them; one sequence), position t reading the hidden state the last decode_logits(_last) call
  // computed for it (that call's new rows must cover those positions) and token t + 1, and
  // keeps its block's keys and values there (positions before `from` kept by earlier calls);
  // returns its logits at position len − 2 [vocab_size], the draft of token len (the one after
  // the last), valid until the next call. 2 <= len <= seq_len; the module's cache must hold
  // positions before `from` (this call's caller keeps them in order).
  const float* mtp_draft_logits(const int32_t* tokens, int len, int from);
  // Scoring continuations (multiple-choice evaluation): the cross-entropy of each sequence's last
  // `last` positions' predictions, losses[b·last + j] = −log p(targets[b·last + j] | the tokens
  // of sequence b up to position len − last + j), on the host of every rank (valid until the
  // next call). With the cache of decode_logits: the layers run over the tokens after the prefix
  // shared with the previous call (at least the `last` positions asked for), and the classifier
  // over those rows, so a shared context is best passed first through decode_logits. Targets
  // below vocab_size; 1 <= last <= len. Collective like decode_logits. Not `cached`: every
  // position computed, as an evaluation's forward pass (in the activation plan), and the cache
  // dropped.
  const float* sequence_losses(const int32_t* tokens, int B, int len, int last,
                               const int32_t* targets, bool cached = true);
  int max_batch() const { return max_batch_; }
  void forget_decoded() { decoded_.clear(); }
  // Whether decode_logits keeps keys and values between calls (not under full recomputation
  // outside inference, whose layers share one qkv buffer).
  bool keeps_decoded() const { return inference_ || recompute_.mode != Recompute::full; }
  // Tokens per sequence whose keys and values the cache holds (the last decode_logits call's),
  // 0 if none.
  int decoded_tokens() const { return int(decoded_.size()) / decoded_batch_; }
  // The rows the last decode_logits call ran through the layers: the tokens it did not find kept
  // (padded to a multiple of tp under sequence parallelism).
  int last_decoded_rows() const { return last_decoded_rows_; }

 private:
  // Activation plans and sets per activation type A (float or bf16_t): gpt_activations.h.
  template <class A>
  struct Activations;
  template <class A>
  struct Set;
  template <class A>
  Activations<A>& acts();
  template <class A>
  const A* weights() const;  // the whole buffer of weights the layers read (not under ZeRO-3)
  // The weights the layers read, whole or gathered (ZeRO-3): the embeddings', ln_f's and the
  // head's at buffer element `offset`, and the base of global layer l's, holding buffer element
  // *origin at [0].
  template <class A>
  const A* weight_at(size_t offset);
  template <class A>
  const A* layer_weight_base(int l, size_t* origin);
  // ZeRO-3: starts gathering global layer l's weights (if it exists and is not held) into its
  // buffer, whose previous layer the caller is done with.
  template <class A>
  void prefetch_layer_weights(int l);
  template <class A>
  const A* head_weight() {
    return weight_at<A>(specs_[size_t(head_)].offset);
  }
  // The head's logits [rows, cols] (cols: this rank's vocabulary slice) for `rows` rows x of
  // ln_f's output, times head_mult() (μP's multiplier, model.logit_scale) and soft-capped under
  // model.logit_softcap. fp8: the
  // product in FP8 where run.fp8_head asks for it (the loss's and forward_logits' passes; never
  // decoding's).
  template <class A>
  void head_logits(A* logits, const A* x, int rows, int cols, bool fp8 = false) {
    const A* bias = head_bias_index_ >= 0 ? weight_at<A>(specs_[size_t(head_bias_index_)].offset)
                                          : nullptr;  // model.head_bias
    if (fp8)
      linear_forward<A>(fp8_head_site(), logits, x, head_weight<A>(), bias, rows, shape_.n_embd,
                        cols);
    else
      be_.matmul_forward(logits, x, head_weight<A>(), bias, rows, shape_.n_embd, cols);
    if (shape_.logit_softcap > 0.0f || shape_.head_mult() != 1.0f)
      be_.scale_cap_logits(logits, size_t(rows) * size_t(cols), shape_.head_mult(),
                           shape_.logit_softcap);
  }
  // The steps, for both activation types (explicitly instantiated in gpt_step.cpp and
  // gpt_pipeline.cpp); the public calls dispatch on precision_.
  template <class A>
  ForwardStats forward_backward_t(const int32_t* inputs, const int32_t* targets, int B,
                                  float dloss_scale);
  template <class A>
  ForwardStats pipeline_step_t(const int32_t* inputs, const int32_t* targets, int m, int B,
                               float dloss_scale);
  template <class A>
  ForwardStats evaluate_t(const int32_t* inputs, const int32_t* targets, int B);
  template <class A>
  void forward_logits_t(const int32_t* inputs, int B, float* host_out);
  template <class A>
  const float* next_token_logits_t(const int32_t* tokens, int B, int len, bool cached,
                                   int last = 1);
  template <class A>
  const float* sequence_losses_t(const int32_t* tokens, int B, int len, int last,
                                 const int32_t* targets, bool cached);
  // The forward pass of generation and scoring: B sequences of len tokens, the kept ones not
  // recomputed when `cached` (except the last `need` positions); sets n (new tokens per
  // sequence) and rows (n padded for sequence parallelism, the rows per sequence in the set).
  template <class A>
  Set<A>* decode_forward(const int32_t* tokens, int B, int len, bool cached, int need, int& n,
                         int& rows);
  template <class A>
  A* decode_scratch();  // decode_logits with B > 1: the new rows' q|k|v before they are placed
  // A model for inference, layer `layer` keeping a ring of `ring` rows per sequence
  // (kv_ring_rows in gpt_activations.h): its attention for the T new rows (of them the first
  // decode_new_rows_ real, the rest sequence parallelism's padding) at positions pos0 .. of each
  // of the B sequences, L.qkv the ring. project(dst) writes the new rows' q|k|v, [B, T]; the
  // attention reads them after their sequence's kept window (the keys the first new row sees),
  // and the ring keeps the real ones.
  template <class A, class Project>
  void decode_ring(typename Set<A>::Layer& L, int layer, int ring, const A* sinks, int B, int T,
                   int pos0, Project&& project);
  template <class A>
  void logits_to_host(float* host, const A* dev, size_t n);
  void upload_ids(const int32_t* inputs, const int32_t* targets, int N);
  // N global ids (host) as this rank's (upload_ids' rule) into the backend's ints at dev.
  void upload_local_ids(const int32_t* ids, int32_t* dev, int N);
  // The attention mask of B sequences of T input tokens (host ids) for the layers that run next:
  // their document mask (shape_.document_token, with `documents`) and sliding window on the
  // backend (key_begin_), or none where neither cuts anything. A model for inference attends
  // through attention_decode, which takes the window itself: none. With shape_.reset_positions
  // and `documents`, also each row's position in its document (positions_).
  void set_attention_mask(const int32_t* inputs, int B, int T, bool documents = true);
  // shape_.hidden_dropout in training: the keys of this rank's rows of the micro-batch whose
  // first sequence is `first` in the data order (its B sequences in this rank's row order), on
  // the backend; shape_.attention_dropout: those of the B whole sequences' rows ([B, T]: the
  // attention's queries); nothing otherwise.
  void set_dropout_rows(int64_t first, int B);
  bool dropping() const { return training_ && shape_.hidden_dropout > 0.0f; }
  bool attention_dropping() const { return training_ && shape_.attention_dropout > 0.0f; }
  // The attention dropout of layer `layer`'s attention calls (none outside training).
  AttentionDropout attention_dropout(int layer) const;
  // Hidden dropout of this rank's `rows` rows of the residual stream's width at `site`, in place
  // (nothing unless dropping()).
  template <class A>
  void drop_rows(A* x, int rows, uint32_t site);
  // Decoding (decoding_, set by decode_logits): the T rows of each of the B sequences are its
  // positions pos0 .. pos0 + T − 1; the layers' qkv buffers hold each sequence's earlier rows'
  // q|k|v (at rows b·seq_len + t, or in a ring: decode_ring) and the new ones are written after
  // them.
  template <class A>
  void forward_chunk(int chunk, Set<A>& S, int B, int T, int pos0 = 0);
  // The backward pass of a chunk; where the schedule splits it (split_backward_), only the input
  // gradients, leaving the linear layers' output gradients in S for weight_chunk, which forms
  // their weight and bias gradients (LayerNorm and embedding gradients stay in the first pass).
  template <class A>
  void backward_chunk(int chunk, Set<A>& S, int B, int T);
  template <class A>
  void weight_chunk(int chunk, Set<A>& S, int B, int T);
  // Rows of the residual stream's gradient kept over all rows in dst: gathered under sequence
  // parallelism, else copied.
  template <class A>
  const A* keep_rows(const A* src, A* dst, int N);
  // Layer i of global chunk g from its ln_1 output (in the layer's ln1, this rank's rows) up to
  // the MLP's hidden activation: attention, its projection and reduction, the residual add with
  // ln_2, and c_fc with GELU. The forward pass continues from there; full recomputation runs it
  // again (after ln_1) before the layer's backward.
  template <class A>
  void layer_front(Set<A>& S, int g, int i, int B, int T, int pos0 = 0);
  // The same for layer l of the whole model (a multi-token prediction module's block: l >=
  // n_layer) in L, from its input x.
  template <class A>
  void layer_front_at(typename Set<A>::Layer& L, const A* x, int l, int B, int T, int pos0);
  // One layer's backward pass (backward_chunk's, and a module's block's): dresidual holds the
  // gradient of the layer's output and gets that of its input x_in; w its weights, gr where its
  // gradients go (null: not formed); split: the input gradients only (the linear layers' output
  // gradients left in L for the weight pass); recompute: what the forward pass did not keep.
  template <class A>
  void layer_backward(typename Set<A>::Layer& L, const A* x_in, int l,
                      const LayerTensors<const A>& w, const LayerTensors<float>& gr,
                      Recompute recompute, bool split, int B, int T);
  template <class A>
  const float* mtp_draft_logits_t(const int32_t* tokens, int len, int from);
  // A multi-token prediction module's block (layer l: n_layer + j) on its input x, B sequences of
  // T rows at positions pos0 .. (under decoding_, into its cache), then its ln_f fused with the
  // residual add into lnf (mean, rstd kept): the forward pass mtp_step and mtp_draft_logits share.
  template <class A>
  void mtp_block_forward(typename Set<A>::Layer& L, const A* x, int l, A* lnf, float* mean,
                         float* rstd, int B, int T, int pos0);
  // Multi-token prediction of the micro-batch whose last chunk ran in S (inputs and targets the
  // host ids of its B whole sequences, [B, seq_len]; T this rank's rows of each, as the chunk's;
  // the main classifier done): every module's forward pass and loss, then their backward passes,
  // their gradients accumulated and the one of ln_f's output added to S.dlnf for backward_chunk.
  // Counts the losses in take_mtp_stats.
  template <class A>
  void mtp_step(Set<A>& S, const int32_t* inputs, const int32_t* targets, int B, int T,
                float dloss_scale);
  // (Layer `layer` of the whole model: its table, rope_local_table_ where shape_.local_rope.)
  template <class A>
  void rotate(int layer, A* qkv, int N, int T, int pos0, bool inverse,
              const int32_t* positions = nullptr);
  // The T rows per sequence this rank holds of B training sequences as runs of consecutive
  // positions: f(first row, rows per sequence, position of its rows' first) once for the whole
  // sequences, or under context parallelism once for each of its two pieces ([2][B][T/2] rows).
  template <class F>
  void for_each_piece(int B, int T, F&& f) const;
  // rotate() over those rows, each piece at its own positions.
  template <class A>
  void rotate_pieces(int layer, A* qkv, int B, int T, bool inverse);
  // Context parallelism (gpt_context.cpp): the attention of this rank's pieces of B sequences
  // (forward: into atty [2][B][piece] and att, from its rows' q|k|v; backward: dqkv written over)
  // with the keys and values of the whole sequences gathered from the context-parallel group.
  template <class A>
  void cp_attention_forward(A* atty, float* att, const A* qkv, int B, int layer, const A* sinks);
  template <class A>
  void cp_attention_backward(A* dqkv, float* scratch, const A* datty, const A* qkv, const A* atty,
                             const float* att, int B, int layer, const A* sinks, float* dsinks);
  template <class A>
  void cp_gather_qkv(const A* qkv, int B);  // into the whole-sequence buffer cp_qkv
  size_t cp_att_offset(int piece, int B, bool probabilities) const;
  // The ids of m micro-batches of B sequences ([m][B][seq_len], host) in the order of this rank's
  // rows: the ids themselves, or under context parallelism its pieces ([m][2][B][piece]) copied
  // into `out`.
  const int32_t* cp_local_ids(const int32_t* ids, int m, int B, std::vector<int32_t>& out) const;
  // The MLP's activation (GELU, or SwiGLU) of N rows of `width` units, and its backward (dpre
  // written).
  template <class A>
  void mlp_activation(A* act, const A* pre, int N, int width);
  template <class A>
  void mlp_activation_backward(A* dpre, const A* pre, const A* dact, int N, int width);
  // The mixture of experts' MLP (gpt_moe.cpp) of layer L, on N rows over all ranks' rows (ln2:
  // ln_2's output). moe_front routes the rows, gathers each expert's and runs c_fc and the
  // activation (into L.fch, L.fch_gelu); moe_output the experts' c_proj (into L.moe_y) and the
  // gated sum into out (partial sums over tp, as the dense c_proj's; null: none, the experts'
  // outputs alone for a backward pass that recomputes them); moe_backward, from out's gradient
  // dres, writes ln_2 output's gradient into dpart (partial sums) and accumulates the experts' and
  // the router's weight gradients (null: not formed). The MLP's rows: mlp_rows. Shared experts
  // run beside the routed ones: c_fc and the activation in moe_front, c_proj added into out in
  // moe_output, their backward in moe_backward. w: the layer's weights, g: their gradients.
  // A split backward (zero-bubble schedules; moe_backward's split): moe_backward forms no weight
  // gradient and leaves the output gradients in L's set (Layer::dexperts ...), from which
  // moe_weights, in the weight pass, forms them.
  template <class A>
  void moe_front(typename Set<A>::Layer& L, int l, const A* ln2, const LayerTensors<const A>& w,
                 int N);
  template <class A>
  void moe_output(typename Set<A>::Layer& L, int l, A* out, const LayerTensors<const A>& w, int N);
  template <class A>
  void moe_backward(typename Set<A>::Layer& L, int l, A* dpart, const LayerTensors<float>& g,
                    const A* dres, const A* ln2, const LayerTensors<const A>& w, int N, bool split);
  template <class A>
  void moe_weights(typename Set<A>::Layer& L, int l, const LayerTensors<float>& g, const A* ln2,
                   const LayerTensors<const A>& w, int N);
  // run.fp8 on the routed experts' products at `site` (their layer's c_fc or c_proj): each
  // expert's product is a tensor of its own, scaled by the amax of its rows of inp [.., IC], of
  // its matrix (w + e·OC·IC) and of its rows of dout [.., OC] (each given where the product reads
  // it; null: not read). Forms them for every expert this rank holds into fp8_amax_ + 3e (zeros
  // where no row reached it here) and takes their maximum over the tensor- and context-parallel
  // ranks in one all-reduce, which every rank of those groups joins whatever rows it routed.
  // Returns fp8_amax_, expert e's three at + 3e; null where FP8 does not apply (then nothing).
  template <class A>
  const float* experts_fp8_amax(typename Set<A>::Layer& L, int site, const A* inp, int IC,
                                const A* w, int OC, const A* dout);
  // DeepSeek-V3's sequence-wise balance (set_moe_aux_per_sequence), in a training step: each
  // sequence's counts and probability sums into L.moe_seq (moe_front, after the routing).
  template <class Layer>
  void moe_sequence_stats(Layer& L, int N);
  // Expert parallelism (mp_.ep > 1): the choices' rows travel to the ranks of their experts and
  // back over mp_.ep_comm, L's plan of the pass (moe_counts, moe_recv, moe_place) saying where.
  // to_experts: this rank's rows `local` [N·k, C] in expert order to the experts' side, `grouped`
  // (the rows this rank's experts received, grouped by expert); from_experts the reverse.
  template <class A>
  void to_experts(typename Set<A>::Layer& L, A* grouped, const A* local);
  template <class A>
  void from_experts(typename Set<A>::Layer& L, A* local, const A* grouped);
  // The rows of layer l's MLP activations (L.fch): N, a layer with experts' N·k choices, or
  // under expert parallelism the rows its experts received (set by moe_front).
  template <class Layer>
  int mlp_rows(const Layer& L, int N, int l) const {
    if (!shape_.moe_layer(l)) return N;
    if (mp_.ep == 1) return N * shape_.moe_top_k;
    return std::accumulate(L.moe_rows.begin(), L.moe_rows.end(), 0);
  }
  // A block's linear layer (gpt_fp8.cpp), `site` = fp8_site(global layer, k) with k = 0 c_attn,
  // 1 attn.c_proj, 2 c_fc, 3 mlp.c_proj: the FP8 products under set_fp8 where fp8_at(site, N),
  // else the backend's matmul_forward / matmul_backward. The GELU variants run the product, then
  // the GELU (its forward or backward) as its own op under FP8.
  template <class A>
  void linear_forward(int site, A* out, const A* inp, const A* w, const A* b, int N, int IC,
                      int OC);
  template <class A>
  void linear_gelu_forward(int site, A* pre, A* out, const A* inp, const A* w, const A* b, int N,
                           int IC, int OC);
  template <class A>
  void linear_backward(int site, A* dinp, float* dw, float* db, const A* dout, const A* inp,
                       const A* w, int N, int IC, int OC, GradMode mode = GradMode::accumulate);
  template <class A>
  void linear_backward_gelu(int site, A* dpre, A* dact, float* dw, float* db, const A* dout,
                            const A* act, const A* pre, const A* w, int N, int IC, int OC,
                            GradMode mode = GradMode::accumulate);
  static int fp8_site(int layer, int k) { return 4 * layer + k; }
  // After the blocks' (the modules' too): the head's, then each module's eh_proj.
  int fp8_head_site() const { return fp8_site(shape_.n_layer + shape_.mtp_depth, 0); }
  int fp8_eh_proj_site(int j) const { return fp8_head_site() + 1 + j; }
  bool fp8_at(int site, int N) const {
    return fp8_amax_ != nullptr && !decoding_ && N % 16 == 0 && !fp8_skipped_[size_t(site)];
  }
  // The experts' products take any number of rows (the GPU's pads the weight gradient's).
  bool fp8_experts_at(int site) const {
    return fp8_amax_ != nullptr && !decoding_ && !fp8_skipped_[size_t(site)];
  }
  // The amax of each operand given (null: not needed), maximal over the ranks holding parts.
  template <class A>
  void fp8_amax(const A* inp, size_t ni, const A* w, size_t nw, const A* dout, size_t nd);
  // row_losses (optional, host, B·T): each row's cross-entropy.
  template <class A>
  // fp8_head: run.fp8_head's FP8 head products apply (not in scoring, a decoding pass).
  ForwardStats classifier(Set<A>& S, const int32_t* host_targets, int B, int T, float dloss_scale,
                          bool with_grad, float* row_losses = nullptr, bool fp8_head = true,
                          const int32_t* dev_targets = nullptr);
  // Forward of one micro-batch through every chunk in order (no pipelining: evaluation and
  // generation); returns the last chunk's activation set on the ranks holding it, else null.
  template <class A>
  Set<A>* forward_pipeline(const int32_t* inputs, int B, int T, int pos0 = 0);
  ForwardStats share_from_last_stage(ForwardStats st);
  // set_preference: from the rows' losses of a micro-batch (preference_rows_, B sequences of T
  // local rows each), each sequence's gradient weight into preference_scale_ (dloss_scale times
  // the derivative of the pair's loss by the sequence's cross-entropy) and the pairs' statistics.
  // Collective over the context-parallel group.
  ForwardStats preference_weights(const int32_t* host_targets, int B, int T, float dloss_scale);
  // The sequence (0 .. B − 1) of local row r of a micro-batch of B sequences, T local rows each
  // (under context parallelism each sequence's two pieces, (k·B + b)·T/2 + j).
  int row_sequence(int r, int B, int T) const { return mp_.cp == 1 ? r / T : (r / (T / 2)) % B; }
  void sum_tied_embedding_grads();
  void tp_all_reduce(float* x, size_t n);
  void tp_all_reduce(bf16_t* x, size_t n);
  int local_rows(int N) const;
  template <class A>
  void reduce_rows(A* src, A* dst, int N);
  template <class A>
  const A* gather_rows(const A* src, A* dst, int N);
  // A branch's input from `rows` rows of the residual stream x: ln_1's or ln_2's output (weight
  // w, bias b; statistics kept), or under model.pre_norm = false a copy of x. The residual form
  // first adds the two rows a + y into residual (fused with the norm where there is one).
  template <class A>
  void pre_norm_forward(A* out, float* mean, float* rstd, const A* x, const A* w, const A* b,
                        int rows);
  template <class A>
  void residual_pre_norm_forward(A* residual, A* out, float* mean, float* rstd, const A* a,
                                 const A* y, const A* w, const A* b, int rows);
  // Their backward: the norm's (dinp += its input gradient; dw, db accumulated), or dinp += dout.
  template <class A>
  void pre_norm_backward(A* dinp, float* dw, float* db, const A* dout, const A* inp, const A* w,
                         const float* mean, const float* rstd, int rows);
  template <class A>
  void layernorm_backward(A* dinp, float* dw, float* db, const A* dout, const A* inp, const A* w,
                          const float* mean, const float* rstd, int rows);
  // What a branch adds to the residual stream from its output y (this rank's rows): y through its
  // norm (model.branch_norm; weight w, bias b) into the shared proj buffer, times
  // model.residual_scale; the buffer is returned, or y itself where neither applies. (Without a
  // norm y is the shared proj buffer, which the scale takes in place.)
  // Then, in training, the hidden dropout at `site` (train.hidden_dropout), in place.
  template <class A>
  const A* branch_output(A* y, float* mean, float* rstd, const A* w, const A* b, int rows,
                         uint32_t site);
  // Its backward: the gradient dout of what the branch added into that of y, in the dbranch
  // scratch, which is returned (the norm's weight gradients accumulate); dout itself where
  // neither applies (no scale, no norm, no dropout at `site`).
  template <class A>
  const A* branch_output_backward(float* dw, float* db, const A* dout, const A* y, const A* w,
                                  const float* mean, const float* rstd, int rows, uint32_t site);
  // The MLP's output (dense or the experts') of layer l, reduced into L.fcproj: in the forward
  // pass, and again before the backward pass of a fully recomputed layer with branch norms. In a
  // layer whose branches join before their reduction (fuses_branches), both branches' output.
  template <class A>
  void mlp_output(typename Set<A>::Layer& L, const LayerTensors<const A>& w, int l, int N);
  // Whether layer l's parallel branches are reduced as one (GptShape::joins_branches): the
  // partial sums of attn.c_proj's and mlp.c_proj's row-parallel products are added before a
  // single reduction (GPT-NeoX's and PaLM's), and the backward pass gathers their common output
  // gradient once and, with one norm (model.shared_norm), reduces the sum of both input
  // gradients once. Not while the branches' activations are measured apart
  // (set_activation_sums: that evaluation pass reduces each branch on its own).
  bool fuses_branches(int l) const {
    return shape_.joins_branches(l, mp_.tp) && activation_sums_ == nullptr;
  }
  // The gradients of a replicated pair of tensors (n floats each; db null: only one) that are
  // partial sums over the tensor-parallel group: form(ga, gb) writes them into zeroed scratch,
  // where they are all-reduced, then accumulated into da and db, so that accumulation over
  // micro-batches counts each once.
  template <class A, class F>
  void tp_summed_grads(float* da, float* db, size_t n, F&& form);
  // model.qk_norm of N rows of c_attn's output (qkv_pre) into dst, keeping rstd; per head, or
  // under qk_norm_full over all heads, with the sums of squares all-reduced over the
  // tensor-parallel group.
  template <class A>
  void qk_norm_forward(A* dst, float* rstd, const A* qkv_pre, const A* wq, const A* wk, int N);
  // Multi-head latent attention (GptShape::mla; gpt_mla.cpp). mla_project: from ln1 (N rows, all
  // of them) the q|k|v rows of this rank's heads into dst [N, qkv_rows()/tp] as c_attn's would
  // be (each head hd() wide: q and k [rope | nope], v, zeros where narrower), before the
  // rotation; L keeps the latents the backward reads. mla_output: the attention's output atty
  // [N, attn_width()/tp] as c_proj reads it, each head's v_head_dim values ([N, proj_width()/tp],
  // a shared buffer). mla_backward: from dqkv (the gradient of dst after the rotation's
  // backward) the weights' gradients (g) and ln1's gradient into dpart in `mode` (partial sums
  // over the tensor-parallel group, as c_attn's: the replicated projections' part on its rank 0).
  // `l`: the global layer, whose c_attn site (fp8_site(l, 0)) the four projections share. A split
  // backward (`split`, zero-bubble schedules) forms no product's weight gradient but leaves their
  // output gradients in L (Layer::mla_dq ...), from which mla_weights, in the weight pass, forms
  // the four matrices' (the latents' norms' come with the input gradients).
  template <class A>
  void mla_project(typename Set<A>::Layer& L, int l, A* dst, const A* ln1,
                   const LayerTensors<const A>& w, int N);
  template <class A>
  const A* mla_output(const A* atty, int N);
  template <class A>
  void mla_backward(typename Set<A>::Layer& L, int l, A* dpart, const LayerTensors<float>& g,
                    const A* dqkv, const A* ln1, const LayerTensors<const A>& w, int N,
                    GradMode mode, bool split);
  template <class A>
  void mla_weights(typename Set<A>::Layer& L, int l, const LayerTensors<float>& g, const A* ln1,
                   const LayerTensors<const A>& w, int N);
  // model.qk_norm's backward in place on dqkv (the rotated-back gradient of the normalized q|k|v
  // becomes that of c_attn's output); the per-head weights' gradients, partial sums over this
  // rank's heads under tensor parallelism, are all-reduced before they accumulate (qk_norm_full's
  // weights split with the heads: their gradients are complete here; its Σ dout·w·x̂ is reduced).
  template <class A>
  void qk_norm_backward(A* dqkv, float* dwq, float* dwk, const A* qkv_pre, const A* wq, const A* wk,
                        const float* rstd, int N);

  GptShape shape_;
  float z_loss_ = 0.0f;        // set_z_loss
  float mtp_weight_ = 0.1f;    // set_mtp_weight
  double mtp_loss_sum_ = 0.0;  // take_mtp_stats
  int64_t mtp_tokens_ = 0;
  // The modules' token ids and targets (module j's at j·max_batch·seq_len), this rank's as
  // upload_ids makes them, and the targets on the host (the classifier counts them there).
  int32_t *d_mtp_ids_ = nullptr, *d_mtp_targets_ = nullptr;
  std::vector<int32_t> mtp_host_targets_;
  std::vector<int32_t> mtp_ahead_[2], mtp_local_;  // the whole sequences' ids, and cp's copy
  std::vector<int32_t> target_bytes_;              // set_target_bytes
  float moe_aux_loss_ = 0.0f;                      // set_moe_aux_loss
  bool moe_aux_per_sequence_ = false;              // set_moe_aux_per_sequence
  bool training_ = false;                          // within forward_backward or pipeline_step
  float moe_z_loss_ = 0.0f;                        // set_moe_z_loss
  float dloss_scale_ = 0.0f;          // the training step's (the load-balancing gradient's)
  bool recomputing_ = false;          // a backward pass reruns a layer's forward
  MoeStats moe_stats_;                // take_moe_stats
  std::vector<float> moe_host_;       // the router's per-expert sums and coefficients (host)
  std::vector<float> router_bias_;    // router_bias (host)
  float* router_bias_dev_ = nullptr;  // and on the backend
  float* fp8_amax_ = nullptr;  // set_fp8: three floats of the backend (inp, weight, dout) per
                               // expert held (at least three)
  size_t fp8_amax_floats_ = 0;
  double* activation_sums_ = nullptr;                             // set_activation_sums
  double *position_sums_ = nullptr, *position_counts_ = nullptr;  // set_position_losses
  std::vector<float> position_rows_;                              // their pass's row losses
  double* sequence_logps_ = nullptr;                              // set_sequence_logps
  PreferenceLossSpec preference_;                                 // set_preference
  const double* preference_reference_ = nullptr;                  // (null: off)
  float preference_moe_scale_ = 0.0f;
  int preference_first_row_ = 0;  // the micro-batch's first row among the step's (pipeline)
  std::vector<float> preference_rows_, preference_scale_;  // its row losses, sequence weights
  // Adds the sums of squares of xs (n of this rank's elements each) at activation_sums_[at ..]
  // while set_activation_sums is on and the pass is not decoding; nothing otherwise.
  template <class A>
  void add_activation_sums(size_t at, std::initializer_list<const A*> xs, size_t n);
  std::vector<char> fp8_skipped_;  // set_fp8: per fp8_site, 1 where run.fp8_skip names it
  // set_frozen: per spec, 1 where frozen (empty: none); the global layers 0 .. frozen_layers_ − 1
  // are skipped by the backward pass.
  std::vector<char> frozen_;
  int frozen_layers_ = 0;
  int max_batch_;
  Backend& be_;
  ModelParallel mp_;
  std::vector<ParamSpec> specs_;
  size_t n_floats_ = 0, buffer_floats_ = 0;
  // Indices into specs_ (-1: not held): wte (embedding), wpe, ln_f, the head's wte, and the
  // first of the tensors of each global layer (layer_count_ of them).
  int wte_ = -1, wpe_ = -1, lnf_ = -1, head_ = -1;
  int head_bias_index_ = -1;     // lm_head/bias (model.head_bias) where this rank holds the head
  float* rope_table_ = nullptr;  // rope_table(shape_) on the backend (shape_.rope)
  float* rope_local_table_ = nullptr;  // rope_table(shape_, true) (shape_.rope_local_theta > 0)
  std::vector<int> layer_;  // [n_layer + mtp_depth]: the modules' blocks after the layers
  // The multi-token prediction modules' first tensors (their ln_e's; -1: not held).
  std::vector<int> mtp_;
  // Where each of a layer's kLayerTensorKinds possible tensors (DESIGN.md §3's 12, q_norm and
  // k_norm, the mixture of experts' router, shared experts and their gate, the branch norms,
  // multi-head latent attention's six, the attention sinks, the router's bias) sits in its run of
  // specs_ (-1: not in this model, a bias or norm it does not have), and how many it has. [0]: a
  // dense layer's, [1]: one with experts' (GptShape::moe_layer). Kind 29, the router's bias, is
  // last of the latter.
  static constexpr int kLayerTensorKinds = 30;
  int layer_slot_[2][kLayerTensorKinds] = {};
  int layer_count_[2] = {kLayerTensorKinds, kLayerTensorKinds};
  using LayerSlots = int[kLayerTensorKinds];
  const LayerSlots& slots(int l) const { return layer_slot_[shape_.moe_layer(l) ? 1 : 0]; }
  int layer_count(int l) const { return layer_count_[shape_.moe_layer(l) ? 1 : 0]; }
  bool lnf_bias_ = true;  // ln_f has a bias (LayerNorm with biases)
  int vocab_begin_ = 0, vocab_local_ = 0, vocab_valid_ = 0;  // this rank's slice of wte rows
  GradReadyHook grad_hook_;
  int32_t* d_inputs_ = nullptr;  // this rank's local token ids on the backend's device
  int32_t* d_targets_ = nullptr;
  int32_t* d_key_begin_ = nullptr;      // the attention mask's buffer (document mask, window)
  const int32_t* key_begin_ = nullptr;  // the mask the attention applies now (null: none)
  // The full-attention layers' mask (shape_.full_attention_every): the document mask alone.
  int32_t* d_key_begin_full_ = nullptr;
  const int32_t* key_begin_full_ = nullptr;
  // Each row's position in its document (shape_.reset_positions), in this rank's row order; set
  // with the attention mask (null: positions count from each sequence's start).
  int32_t* d_positions_ = nullptr;
  const int32_t* positions_ = nullptr;
  // The hidden dropout's row keys (set_dropout_rows): two int32 words per row, this rank's rows
  // of the micro-batch in its row order; the seed and first sequence set_dropout_sequence gave.
  int32_t* d_dropout_keys_ = nullptr;
  // The attention dropout's row keys: two int32 words per row of the B whole sequences.
  int32_t* d_attention_dropout_keys_ = nullptr;
  std::vector<int32_t> host_dropout_keys_;
  uint64_t dropout_seed_ = 0;
  int64_t dropout_first_ = 0;
  // The mask layer `layer` (of the whole model) applies.
  const int32_t* layer_key_begin(int layer) const {
    return shape_.windowed(layer) ? key_begin_ : key_begin_full_;
  }
  std::vector<int32_t> host_ids_, padded_, host_key_begin_, host_key_begin_full_;
  std::vector<int32_t> host_document_start_, host_positions_;  // set_attention_mask's positions
  std::vector<int32_t> cp_inputs_, cp_targets_;                // cp_local_ids' copies
  // decode_logits: the tokens whose q|k|v rows the first activation set of every chunk holds.
  // Cleared by every forward pass and by params_updated(); set again by decode_logits.
  std::vector<int32_t> decoded_;
  int decoded_batch_ = 1;  // sequences in decoded_, each decoded_.size() / decoded_batch_ long
  int last_decoded_rows_ = 0;
  bool decoding_ = false;    // within decode_logits: the layers read and extend the cache
  int decode_new_rows_ = 0;  // ... and the new tokens per sequence (the rows less any padding)
  // The rows of the rings a model for inference keeps in its windowed layers (kv_ring_rows; 2·W
  // in each of them), 0 where none does.
  int ring_rows() const;
  float* decode_scratch_fp32_ = nullptr;
  bf16_t* decode_scratch_bf16_ = nullptr;
  Precision precision_ = Precision::fp32;
  Recomputation recompute_;
  bool split_backward_ = false;  // the schedule has weight passes (zero bubble)
  // The outgoing gradients' buffers per peer (peer, count), in the activations' grad_sends order.
  std::vector<std::pair<int, int>> grad_pools_;
  std::vector<int> planned_slots_;      // activation sets per chunk (the constructor's schedule)
  bool inference_ = false;              // ActivationOptions::inference
  bool mtp_draft_ = false;              // ActivationOptions::mtp_draft
  std::vector<float> mtp_host_logits_;  // mtp_draft_logits' row
  int logits_rows_ = 0;      // the classifier's chunk: ActivationOptions::logits_chunk, resolved
  float* params_ = nullptr;  // master weights [master_begin_, master_end_) of the buffer
  size_t master_begin_ = 0, master_end_ = 0;
  size_t weight_bytes_ = 0;
  float* grads_ = nullptr;
  // ZeRO-2's buckets (ZeroOptions::bucketed_grads): the gradients of [0, grad_lo_) (wte, wpe)
  // then of [grad_hi_, n_floats_) (ln_f, an untied head) in grad_ends_; each layer's, of
  // layer_floats_, in grad_ring_[its index % 2], whose last reduction is ring_pending_.
  bool bucketed_ = false;
  size_t grad_lo_ = 0, grad_hi_ = 0, layer_floats_ = 0;
  float* grad_ends_ = nullptr;
  float* grad_ring_[2] = {};
  // ZeRO-3's gathered weights (ZeroOptions::gathered_weights), of the model's precision: the
  // ends as grad_ends_, each layer's in ring slot l % 3, which holds layer ring_layer_[k] (-1:
  // none) once ring_gather_[k] has completed; ends_current_ while the ends are gathered.
  bool gathers_ = false;
  Comm* zero_comm_ = nullptr;
  float* gw_ends_ = nullptr;  // fp32, or bf16 pairs as words
  float* gw_ring_[3] = {};
  int ring_layer_[3] = {-1, -1, -1};
  CommRequest ring_gather_[3];
  bool ends_current_ = false;
  template <class A>
  CommRequest gather_weights(size_t lo, size_t hi, A* dst);
  // Buffer elements [lo, hi), outside the expert extents, from the data-parallel slices.
  template <class A>
  CommRequest gather_dense(size_t lo, size_t hi, A* dst);
  // ZeRO-3 with expert parallelism: the packed expert slice (ZeroOptions::expert_comm).
  ExpertPacking packing_;
  Comm* expert_comm_ = nullptr;
  size_t expert_begin_ = 0, expert_end_ = 0;
  float* expert_params_ = nullptr;
  bf16_t* expert_params_bf16_ = nullptr;
  CommRequest ring_pending_[2];
  std::vector<CommRequest> grad_pending_;  // the hook's other requests of this backward
  // Where the gradient of buffer element `offset` outside the layers is (all layouts).
  float* grad_at(size_t offset);
  // The ends (ZeRO-2's embedding and head buckets, ZeRO-3's gathered ends): buffer element
  // `offset` outside the layers sits at this index of them; ends_floats() of them in all.
  size_t ends_index(size_t offset) const;
  size_t ends_floats() const { return grad_lo_ + (n_floats_ - grad_hi_); }
  // The buffer offset just past the layer whose tensors start at spec `first` (the next spec's
  // offset, or the layout's end).
  size_t layer_end(int first) const;  // first: the spec of a layer's first tensor
  // Where global layer l's gradients go, its first element at [0]: with bucketed_grads its
  // buffer, once the reduction of the layer that used it before has completed, zeroed (the
  // backward accumulates); else the gradient buffer at the layer's offset `at`.
  float* layer_grad_bucket(int l, size_t at);
  // Hands [offset, offset + count) at data to the hook, keeping its request in `into`, when the
  // pass in progress leaves it final (final_pass_); a range holding a copy of the tied wte
  // (pp > 1) goes to after_tied_sum_ instead.
  void grad_ready(size_t offset, size_t count, float* data, CommRequest* into);
  // pipeline_step: false during a chunk's backward or weight pass that is not its last of the
  // step (more micro-batches add to its gradients); true otherwise.
  bool final_pass_ = true;
  struct ReadyRange {
    size_t offset, count;
    float* data;
  };
  std::vector<ReadyRange> after_tied_sum_;   // ranges for the hook once the tied sum is done
  bf16_t* params_bf16_ = nullptr;            // bf16 precision: the copy the layers read
  Activations<float>* acts_fp32_ = nullptr;  // the plan of the model's precision (one of them)
  Activations<bf16_t>* acts_bf16_ = nullptr;
  PipelineSchedule schedule_;
  std::vector<ComputeInterval>* trace_ = nullptr;  // trace_next_step
  float* tied_scratch_ = nullptr;                  // the other stage's wte gradient (pp > 1)
  std::vector<float> host_scratch_, host_candidates_;
  std::vector<int32_t> scored_targets_;  // sequence_losses: targets of every new row
  std::vector<float> scored_losses_;     // and their losses
};

}  // namespace triad
