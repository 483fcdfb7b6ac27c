// A run's memory and compute before it starts (triad-train --plan): for the grid that a config
// and a number of ranks give, the bytes every rank of each pipeline stage allocates on its
// backend, by purpose, computed by the code that allocates them (Gpt::memory_plan; equal to
// the allocations, tested), and the step's compute per rank with the pipeline bubble of the
// chosen schedule simulated. No MPI, files or backend are needed: plan a 1,000-rank job on a
// laptop.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "triad/io/checkpoint.h"
#include "triad/model/gpt.h"
#include "triad/parallel/process_grid.h"
#include "triad/train/config.h"

namespace triad {

// The model a run of `cfg` builds, and the part of it that pipeline rank pp_rank, tensor rank
// tp_rank holds (without communicators: the trainer sets them). The trainer and the plan both
// build from these.
GptShape gpt_shape(const Config& cfg);
// The model's /model attributes (those a checkpoint records) for the config's model, and the
// model of such attributes on a vocabulary padded to padded_vocab_size (the part of
// gpt_shape(cfg) a checkpoint holds: no capacity, document mask or window schedule).
ModelShape model_shape(const Config& cfg);
GptShape gpt_shape(const ModelShape& m, int padded_vocab_size);
ModelParallel model_parallel(const Config& cfg, int pp_rank, int tp_rank);
// train.recompute, train.recompute_layers and train.logits_chunk
ActivationOptions activation_options(const Config& cfg);
// Under ZeRO-1, whether the trainer all-gathers the updated slices as the bf16 copy the layers
// read (bf16 precision) rather than as fp32 master weights (fp32). With a pipeline the tied
// embedding's two copies are then synchronized as bf16 too.
bool zero_gathers_bf16(const Config& cfg);
// What ZeRO (parallel.zero) keeps of the model on the rank of slice `shard` (ZeroOptions):
// under ZeRO-1 and 2 in bf16, where nothing reads the others' master weights, the fp32 master
// weights of its slice only, as in Megatron's distributed optimizer (4·(1 − 1/dp) bytes per
// parameter less); under ZeRO-2 gradient buckets instead of a whole gradient buffer. Under
// ZeRO-3 with expert parallelism the experts' packed slices are cut among the expert replicas
// of each expert (replicas / ep of the replicas data-parallel ranks; the comm is the caller's).
ZeroOptions zero_options(const Config& cfg, int shard, int replicas);
// parallel.schedule's pipeline schedule (checked) for m micro-batches per rank (pp > 1).
PipelineSchedule pipeline_schedule(const Config& cfg, int m);
// The micro-batches per rank of the run's global batches at dp data-parallel ranks: with
// train.batch_rampup each of the ramp's, smallest first; the full batch's last.
std::vector<int> micro_batch_counts(const Config& cfg, int dp);
// pp > 1 with train.batch_rampup: what the schedules of every count the ramp passes through need
// of the memory of the stage mp describes, covered (Gpt's `also`), each schedule built and
// dropped in turn; null without a ramp or a pipeline.
std::unique_ptr<ActivationSlots> ramp_slots(const Config& cfg, const ModelParallel& mp, int dp);

// One pipeline stage: every tensor- and data-parallel rank of it allocates the same sizes.
struct StageMemory {
  int stage = 0;           // pipeline rank
  int layers = 0;          // transformer layers held (all its chunks)
  int64_t parameters = 0;  // elements of this rank's shards (its replicated tensors included)
  GptMemory model;
  size_t optimizer = 0;   // AdamW m and v (SGD: momentum) over this rank's range: its ZeRO slice
  size_t grad_shard = 0;  // ZeRO-1: the slice of the gradient the reduce-scatter delivers
  // Matmul FLOPs of one token's forward + backward on a rank of this stage (6 per weight of its
  // linear layers and head, plus attention's 6·C·T/tp per layer).
  double flops_per_token = 0;
  // What full recomputation adds to the backward pass per token (Gpt::recompute_flops_per_token).
  double recompute_flops_per_token = 0;
  // The head's backward (4 FLOPs per weight and token, last stage): the classifier runs it with
  // the loss, so it belongs to the forward action in the pipeline's simulation.
  double head_backward_flops_per_token = 0;
  // The weight gradients of the layers' linear layers (2 FLOPs per weight and token): the part
  // of the backward a zero-bubble schedule moves into its weight pass.
  double weight_grad_flops_per_token = 0;
  // optim.name = muon: the Newton–Schulz FLOPs per step of the busiest data-parallel rank of the
  // stage (rank 0: it takes the largest matrix of every round; optim/muon.h), after the
  // backward pass, on the step's critical path.
  double optimizer_flops = 0;
  // optim.name = muon, tp > 1: the fp32 bytes that rank receives per step gathering its
  // Newton–Schulz matrices whole from the tensor-parallel group ((tp − 1) shards of each).
  size_t tp_muon_gather = 0;
  // Data-parallel payload per step that this rank hands in (CommStats bytes): the gradient
  // all-reduce, or under ZeRO-1 the reduce-scatter of the whole buffer and the all-gather of the
  // slice (in bf16 where the trainer gathers the bf16 copy; Muon adds a gather of its fp32
  // update); and what a ring moves over this rank's link for it: 2(dp-1)/dp of the buffer,
  // 1.5(dp-1)/dp with the bf16 gather. Under expert parallelism the experts' part goes over
  // their (dp/ep)·cp replicas (ProcessGrid::edp()): the payloads count both groups' (the
  // experts' extents gathered again under ZeRO-1 and 2), the wire each group's share.
  size_t dp_all_reduce = 0, dp_reduce_scatter = 0, dp_all_gather = 0;
  // optim.name = muon under ZeRO: the pieces of u this rank sends the ranks that orthogonalize
  // the matrices (CommStats all-to-all bytes; on average 1/dp of the matrices).
  size_t dp_all_to_all = 0;
  double dp_wire_bytes = 0;
  // Context parallelism (cp > 1): what this rank hands the context-parallel group per step
  // (CommStats bytes): each layer's gathers of its keys and values (forward, backward, and a
  // full recomputation's rerun; bf16 or fp32) and the reduce-scatter of their gradients (the
  // whole sequences', in fp32), for every micro-batch.
  size_t cp_all_gather = 0, cp_reduce_scatter = 0;
  // Expert parallelism (ep > 1): what this rank hands the expert-parallel group per step at most
  // (CommStats bytes): each layer with experts sends its micro-batch's n·k rows four times (to
  // the experts and back, forward and backward; a full recomputation reruns the forward's two)
  // and its E counts before each pass (a capacity sends only the kept rows: fewer).
  size_t ep_all_to_all = 0;
  size_t total() const { return model.total() + optimizer + grad_shard; }
};

struct RunPlan {
  GridShape grid;
  int micro_batches = 1;  // per step on each data-parallel rank
  int micro_batch_size = 1;
  Precision precision = Precision::fp32;
  Recomputation recompute;
  std::vector<StageMemory> stages;   // [pipeline rank]
  double model_flops_per_token = 0;  // the whole model (DESIGN.md §5): 6N + 6·L·C·T
  // The step's compute on its critical path, in FLOPs per rank (divided by a sustained rate:
  // the step time), and the pipeline's idle fraction: the schedule simulated with each stage's
  // own forward (its FLOPs / 3, plus the head's backward on the last stage, which runs with the
  // loss) and backward (the rest, plus any recomputation; zb-h1: of it the layers' weight
  // gradients in the weight pass) of a micro-batch. pp = 1: the micro-batches one after another,
  // no bubble.
  double critical_flops = 0;
  double bubble = 0;
  SimResult pipeline;  // pp > 1: that simulation, its times in FLOPs per rank
};

// Bytes of the T×T matrices the cuda backend's fp32 attention holds beyond the planned
// activations, per rank, for one micro-batch: none where the flash kernels run (bf16, and
// cuda_flash_head_dim, cuda_flash_drops: cuda_backend.h) or on the cpu backend; else the widened
// copies of bf16 (cuda_attention_bf16.cu), the dropped probabilities under train.attention_dropout
// and the uncapped scores under model.attn_softcap.
size_t fp32_attention_scratch_bytes(const Config& cfg);

// The plan of `cfg` on `world_size` ranks. Throws triad::Error (naming the key) for a config
// that no run could start with, as the run itself would (validate()).
RunPlan plan_run(const Config& cfg, int world_size);

// The plan as a table for people. tflops > 0: also the step time and tokens/s at that sustained
// rate per rank (a single-rank run's rate, or MFU × peak); gbps > 0: the data-parallel
// reduction's time at that bandwidth per rank (GB/s), if it were not overlapped.
std::string format_run_plan(const RunPlan& plan, const Config& cfg, double tflops, double gbps = 0);

// The activation-recomputation settings in order of the compute they add — none, gelu, full in
// the first 1, 2, ... layers of each pipeline chunk — each with its largest rank's total and
// (tflops > 0) step time, those that save nothing over a cheaper one left out; and the first
// whose largest rank fits in memory_gb GB (1e9 bytes), or that none does. The plan leaves out the
// GPU backend's workspace, NCCL's buffers and the CUDA context: the budget should leave room for
// them.
std::string format_recompute_fit(const Config& cfg, int world_size, double tflops,
                                 double memory_gb);

}  // namespace triad
