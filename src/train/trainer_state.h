// The state of a training run and the operations the loop is built from (private to
// src/train): set-up of backend, model and optimizer; checkpoint groups, staging and
// save/load; evaluation and samples. trainer.cpp holds the loop itself.
#pragma once

#include <omp.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "triad/core/comma_list.h"
#include "triad/core/error.h"
#include "triad/core/rng.h"
#include "triad/core/timer.h"
#include "triad/data/blend.h"
#include "triad/data/choice_file.h"
#include "triad/data/loader.h"
#include "triad/data/tokenizer.h"
#include "triad/io/checkpoint.h"
#include "triad/io/metrics.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/cpu_backend.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/kernels/peak_flops.h"
#include "triad/model/gpt.h"
#include "triad/optim/optimizer.h"
#include "triad/parallel/process_grid.h"
#include "triad/train/hang_watchdog.h"
#include "triad/train/noise_scale.h"
#include "triad/train/outlier_window.h"
#include "triad/train/preference_data.h"
#include "triad/train/sampler.h"
#include "triad/train/trainer.h"

namespace triad {

// DPO's statistics of a step's micro-batches on one rank (ForwardStats' pair fields).
struct PairStats {
  int64_t right = 0;
  double chosen = 0, rejected = 0;
  void add(const ForwardStats& f) {
    right += f.pairs_right;
    chosen += f.chosen_reward_sum;
    rejected += f.rejected_reward_sum;
  }
};

struct Trainer::State {
  CommandLine cl;
  Config cfg;
  ProcessGrid grid;
  std::unique_ptr<Backend> be;
  std::unique_ptr<Gpt> model;
  std::unique_ptr<Optimizer> opt;
  std::unique_ptr<BlendedLoader> train_data;        // data.train (one dataset or a weighted blend)
  std::unique_ptr<PreferenceData> preferences;      // data.preferences instead (DPO)
  std::unique_ptr<PreferenceData> val_preferences;  // eval.preferences
  TrainingData& data() {
    if (preferences) return *preferences;
    return *train_data;
  }
  PreferenceLossSpec preference_loss() const {  // train.dpo_*
    return {parse_preference_loss(cfg.train.dpo_loss), cfg.train.dpo_beta,
            cfg.train.dpo_label_smoothing};
  }
  // DPO: the reference values of the rows the model trains on next (Gpt::set_preference).
  std::vector<double> preference_rows;
  // moe_scale: the routing terms' per-row weight, 1 / the batch's counted targets, as a language
  // model's (Gpt::set_preference).
  void use_preference_rows(int64_t position, int count, float moe_scale) {
    preference_rows.resize(size_t(count));
    preferences->reference_rows(position, count, preference_rows.data());
    model->set_preference(preference_loss(), preference_rows.data(), moe_scale);
  }
  // Forward passes over n sequences in micro-batches: micro-batch k goes to data-parallel rank
  // k mod dp, batch(i, b) running this rank's (its first sequence i, b of them). Under ZeRO-3
  // every rank takes part in every round's weight gathers, with a batch or without; under expert
  // parallelism in every round's token exchanges: a rank without a batch runs one sequence
  // (read_first fills its row) whose result it drops.
  void evaluation_rounds(int64_t n, const std::function<void(int32_t*, int32_t*)>& read_first,
                         const std::function<void(int64_t, int)>& batch);
  // Every sequence's log-probability of its counted targets under the model as it is (DPO's
  // reference before the first update, eval.preferences' scores), indexed as d.read(), each
  // data-parallel rank computing a share; the result on every rank. Collective.
  std::vector<double> sequence_logps(const PreferenceData& d, const char* phase);
  std::unique_ptr<SequenceSource> val_src;
  std::vector<std::pair<std::string, std::unique_ptr<SequenceSource>>> val_sets;  // eval.sets
  std::unique_ptr<MetricsWriter> metrics;
  // run.hang_minutes, while Trainer::run trains (its progress marks: watch()).
  std::unique_ptr<HangWatchdog> watchdog;
  void watch(const char* phase, int64_t at) {
    if (watchdog) watchdog->mark(phase, at);
  }
  void watch_untimed(const char* phase, int64_t at) {
    if (watchdog) watchdog->mark_untimed(phase, at);
  }
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<ChoiceExample> choices;  // eval.choices (the first eval.choice_examples)
  std::ofstream log;
  int run_lock = -1;     // rank 0's lock of the run directory (run_directory.h)
  int64_t step = 0;      // updates applied
  int64_t position = 0;  // absolute position of the next training sequence
  int64_t consumed = 0;  // sequences trained on (a checkpoint's tokens_seen / seq_len)
  // The z-scores of update skipping: the last train.skip_window losses and gradient norms.
  OutlierWindow loss_window{size_t(cfg.train.skip_window)},
      norm_window{size_t(cfg.train.skip_window)};
  int64_t skipped_in_a_row = 0;  // update skipping: a whole window of them means divergence
  // Data parallelism: this rank's slice [shard_lo, shard_hi) of the flat parameter buffer is
  // what it updates under ZeRO-1 and what it writes into checkpoints (always).
  // Data parallelism: dp ranks read different sequences (dp_rank's share); the parameters have
  // replicas = dp·cp copies (context-parallel ranks read the same sequences, hold the same
  // parameters), which reduce gradients and cut ZeRO slices and checkpoint writes among them.
  int dp = 1, dp_rank = 0, replicas = 1, replica_rank = 0;
  size_t shard_lo = 0, shard_hi = 0;
  // Expert parallelism (parallel.ep > 1): the expert tensors this rank holds have
  // expert_replicas copies (ProcessGrid::edp()), among which it is expert_replica_rank: it writes
  // their part within [expert_lo, expert_hi) into checkpoints, and counts them in the norms
  // when it is the first. Without it the expert tensors are replicated as the rest. The range is
  // of expert_coord's coordinates: the buffer's, or under ZeRO-3 the packed experts' (the
  // model's slice of them, Gpt::packed_experts).
  int expert_replica_rank = 0;
  size_t expert_lo = 0, expert_hi = 0;
  size_t expert_coord(size_t offset) const {
    return model->packed_experts() ? model->packing().packed(offset) : offset;
  }
  // ep > 1: the expert-parallel tensors' extents of the buffer (ExpertPacking's).
  std::vector<std::pair<size_t, size_t>> expert_extents;
  // Whether this rank counts the tensor in the gradient and weight norms (not a replica).
  bool counts_in_norms(const ParamSpec& s) const;
  float* grad_shard = nullptr;  // ZeRO-1: the reduce-scattered gradient of the slice
  // ZeRO with expert parallelism: the expert tensors' optimizer, over [expert_lo, expert_hi)
  // (opt then holds the other tensors), their reduce-scattered gradient and (ZeRO-1/2) the
  // weights' stash.
  std::unique_ptr<Optimizer> expert_opt;
  float* expert_grad_shard = nullptr;
  float* expert_stash = nullptr;
  // Ranges of the parameter buffer whose gradients count in the global norm (see setup_model);
  // under expert parallelism the expert tensors' apart (counted_experts).
  std::vector<std::pair<size_t, size_t>> counted, counted_experts;
  // The frozen tensors' extents of the buffer (train.freeze), merged as `counted` is: a gradient
  // bucket inside one of them is not reduced (its values are zeros no update reads).
  std::vector<std::pair<size_t, size_t>> frozen;
  bool all_frozen(size_t off, size_t n) const;
  // The frozen tensors' globs: train.freeze's, and under model.norm_weight = false the norms'
  // (frozen_globs).
  std::string freeze;
  // A device backend's parameters and optimizer state pass through host copies for I/O.
  bool on_device = false;
  std::string comm_desc = "mpi";  // how ranks communicate, for the start line
  std::string flash_desc;         // the flash-attention kernel (cuda, bf16), for the start line
  std::vector<float> host_params;
  std::vector<float> host_expert_params;  // ZeRO-3's packed experts (a device backend)
  std::vector<std::vector<float>> host_slots, host_expert_slots;
  std::vector<float> host_router_bias;  // the routers' biases on their way to a file
  double peak_flops = 0;
  std::vector<int32_t> inputs, targets;
  BatchRampup ramp;            // train.batch_rampup
  int schedule_m = 0;          // pp > 1: the micro-batches of the schedule the model runs
  WindowWarmup window_warmup;  // train.window_warmup

  State(MPI_Comm world, const CommandLine& c);

  // The global batch of the next step (train.batch_rampup) and its micro-batches per rank.
  int batch_size_now() const;
  int micro_batches(int batch) const { return batch / (cfg.train.micro_batch_size * dp); }
  // pp > 1: the model runs the schedule for m micro-batches from the next step on.
  void use_schedule(int m);
  // The attention window of the step after `updates` (train.window_warmup) for what runs next.
  void use_window(int64_t updates);

  bool root() const { return grid.is_root(); }

  void say(const std::string& line);  // rank 0: stdout and log.txt
  void setup_backend();
  // Wraps the grid's Comms for device buffers as parallel.comm asks (NCCL or MPI staging).
  void setup_device_comms(bool shares_gpu);
  GptShape model_shape() const;
  void setup_model();
  // ZeRO's grad-ready hook (pp = 1): bucket [off, off + n) of the gradient, at data, reduced
  // into the ranks' slices (grad_shard, zeroed at the step's start). ZeRO-2 and 3 reduce each
  // micro-batch's buckets (`accumulate`): this rank's piece first takes what its slice has
  // summed over the step's earlier micro-batches, so the reduction leaves the running sum
  // there. ZeRO-1 reduces the last micro-batch's, which its buffer has summed over the step.
  CommRequest reduce_bucket(size_t off, size_t n, float* data, bool accumulate);
  // Without ZeRO: the gradient [off, off + n) of the buffer, at data, summed over its replicas
  // in place (non-blocking): over dp(), and the parts of expert-parallel tensors over edp().
  CommRequest reduce_replicas(size_t off, size_t n, float* data);
  // One request that waits for all of reqs.
  static CommRequest joined(std::shared_ptr<std::vector<CommRequest>> reqs);
  // ZeRO-1/2 with expert parallelism (expert_opt): after the update, stash_experts() copies this
  // rank's slice [expert_lo, expert_hi) of the weights aside, and after the data-parallel gather
  // of the weights (which fills the expert extents with other expert-parallel ranks' experts)
  // gather_experts() gathers every expert extent again over edp() from the stashed slices.
  void stash_experts();
  void gather_experts();
  // The weights opt updates (its range of the buffer; under ZeRO this rank's slice), and
  // expert_opt's (the experts' slice; ZeRO-3: the model's packed one), as update() takes them.
  float* dense_update_weights();
  float* expert_update_weights();
  // optim.ema_decay: every optimizer's moving average set to the weights it updates.
  void start_ema();
  // After the optimizers wrote the weights they update (and, bf16, those weights' copy): under
  // ZeRO the other ranks' slices arrive, as bf16 where only the layers read them (half the
  // bytes, as llm.c gathers; zero_gathers_bf16), else in fp32 with the copy refreshed from
  // them (ZeRO-3: the layers gather what they read later); the tied embedding's two copies are
  // made one. Collective over the world.
  void publish_update();
  // eval.ema: use_moving_average() sets everything the layers read aside (the fp32 weights this
  // rank holds, their bf16 copy, ZeRO-3's packed experts) and puts every optimizer's moving
  // average in the place of the weights it updates, published as an update's weights are;
  // restore_weights() puts the set-aside ones back bit for bit. Both collective.
  struct SetAside {
    float* at;    // a buffer of the model (bf16 ones as pairs in fp32 words)
    float* copy;  // its copy (a backend buffer)
    size_t n;     // floats
  };
  std::vector<SetAside> use_moving_average();
  void restore_weights(const std::vector<SetAside>& set_aside);
  void zero_grad_shards();  // ZeRO: grad_shard (and expert_grad_shard) = 0
  // Global L2 norm of the gradient, from the part [lo, hi) of the buffer this rank holds at g.
  double grad_norm(const float* g, size_t lo, size_t hi);
  // The squares of buf's elements in `ranges` (buffer offsets) inside [from, to); buf holds
  // element `from` at buf[0].
  double range_squares(const std::vector<std::pair<size_t, size_t>>& ranges, const float* buf,
                       size_t from, size_t to) const;
  // Its running means (NoiseScale) for the log line.
  NoiseScale noise;
  // train.norms_every: the layers of the model ("wte", "wpe" (learned positions), "h0", ...,
  // "ln_f"; the same list on every rank) and their gradient and weight L2 norms, from this rank's
  // [lo, hi) of the gradient (g points at element lo) as grad_norm counts it, summed over the
  // world.
  std::vector<std::string> norm_groups() const;
  void layer_norms(const float* g, size_t lo, size_t hi, std::vector<double>& grad,
                   std::vector<double>& weight);
  ~State();

  // ---- checkpoints --------------------------------------------------------------------------
  // The tensors of a checkpoint as this rank holds them. `base` is a buffer laid out like the
  // parameter buffer whose element `first` sits at base[0]; a rank holding everything
  // (first = 0, whole = true) reads full tensors, and every rank writes only the part of each
  // tensor inside its slice [shard_lo, shard_hi), so each element is written once.
  std::vector<TensorRef> tensor_refs(float* base, size_t first, bool whole) const;

  // Host-addressable parameter / optimizer-state buffers (mirrors for a device backend).
  float* param_base();
  float* slot_base(size_t i, bool experts = false);  // experts: expert_opt's
  // ZeRO-3 with expert parallelism: where the packed experts' slice is read and written for I/O.
  float* expert_param_base();
  // refs (every tensor, as tensor_refs gives them) with the expert tensors' taken from this
  // rank's expert slice [expert_lo, expert_hi), its first element at base (ZeRO: the experts'
  // own optimizer state; ZeRO-3: their packed weights).
  void experts_from_their_slice(std::vector<TensorRef>& refs, float* base) const;
  void stage_to_host();
  void stage_to_device(bool with_optimizer);

  // for_save: slices (each element written once); loading: full parameters everywhere and the
  // optimizer state this rank keeps (its slice under ZeRO-1, everything otherwise). Saving a model
  // with experts, also the routers' biases (router_bias_group; a load reads them with
  // load_router_bias).
  std::vector<TensorGroup> groups(bool with_optimizer, bool for_save);

  CheckpointState checkpoint_state() const;

  // Saves this step's checkpoint (none if it exists). checkpoint.async: once this rank's part is
  // copied aside, a thread of its own writes it (AsyncSave) while training goes on; one save at
  // a time, so a save first waits for the one before.
  void save_checkpoint();
  // Waits for the background save, if one is under way, reports it and rethrows its error. The
  // loop calls it when the save is done, before a preempted run stops and at the end.
  void finish_save();
  bool save_done() const;  // whether a background save has ended (true: none under way)
  struct AsyncSave;
  std::unique_ptr<AsyncSave> async_save;
  // checkpoint.async: a duplicate of the world communicator for the background saves, whose
  // collectives never meet the training's (MPI_COMM_NULL until the first).
  MPI_Comm save_comm = MPI_COMM_NULL;

  // Refuses a checkpoint whose model is not the config's. extend: positions may differ (a rotary
  // model's seq_len, rope_theta, rope scaling; --extend-positions with --init-from); returns
  // what differs in them, "" where nothing does. init_from: the multi-token prediction modules
  // may differ in number (--init-from: the config's modules that the checkpoint lacks start from
  // their initialization, those it has beyond the config's are left out).
  std::string check_model_shape(const CheckpointState& st, const std::string& path,
                                bool extend = false, bool init_from = false) const;

  // Loads weights (and optimizer state and loader position when resuming).
  void load_from(const std::string& path, bool resume);
  // Weights only (evaluation, --init-from): checks the shapes, returns the file's state.
  CheckpointState load_weights(const std::string& path);
  // Opens data.val and checks it holds eval.sequences sequences.
  void open_val();
  void open_choices();          // eval.choices, if set
  void open_val_preferences();  // eval.preferences, if set (read whole, checked)
  void load_tokenizer();        // data.vocab, once
  // data.fim_*'s rearrangement with this seed (character granularity: with the tokenizer).
  FimSpec fim(uint64_t seed);

  // ---- evaluation ---------------------------------------------------------------------------
  // The validation loss and the multiple-choice examples; by_position: data.val's loss at each
  // position too, under eval.loss_by_position.
  EvalResult evaluate(bool by_position = true);
  // train.activations_every: the root mean square of each Gpt::activation_names activation in a
  // forward pass of the first validation micro-batch (a fixed batch, so steps and runs compare),
  // the same on every rank.
  std::vector<double> activation_rms(int64_t step);
  EvalResult evaluate_val(bool by_position = true);  // the validation loss only
  // Loss and accuracy over the first eval.sequences sequences of src (sequences = 0: none);
  // by_position: the loss at each position too (eval.loss_by_position).
  EvalResult evaluate_source(const SequenceSource* src, bool by_position = false);

  void write_sample();

  void run_eval();
  EvalResult last_eval;
  // checkpoint.best: the lowest validation loss of an evaluation after step 0 (ckpt/best's, on
  // resuming), and what an evaluation that lowers it does: save the step's checkpoint, name it
  // in ckpt/best.
  double best_val = std::numeric_limits<double>::infinity();
  std::string best_name;  // the file ckpt/best names ("": none; rank 0's, which publishes)
  // The step whose weights are those of checkpoint_dir()/checkpoint_file_name(step) because this
  // run wrote that file or resumed from it (-1: none): the only file keep_if_best may name.
  int64_t own_file_step = -1;
  // At the start of a run: a resumed one takes its ckpt/best where that names a checkpoint of
  // the history it resumes (in this directory, at or before the resumed step, present); any other
  // ckpt/best (a new run's directory, a rolled-back or foreign resume) is removed. Collective.
  void load_best(const std::string& resumed_path);
  void keep_if_best();

  // train.profile_step: gathers the step's timed actions over the pipeline group (collective)
  // and rank 0 writes them with their simulation to the run directory.
  void write_pipeline_trace(const std::vector<ComputeInterval>& actions, int step, int m);
};

}  // namespace triad
