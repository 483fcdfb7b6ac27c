// metrics.h5 (DESIGN.md §5): training curves written by rank 0. Groups /train and /val hold
// 1-D chunked, extendible datasets of equal length within each group:
//   /train/{step, loss, lr, grad_norm, tokens_per_sec, mfu, step_ms, tokens, skipped, z_loss,
//           moe_aux_loss, moe_max_load, moe_z_loss, moe_dropped}
//   /val/{step, loss, accuracy, choice_accuracy, choice_accuracy_by_sum, choice_accuracy_by_chars,
//         bpb}
//   /val_sets/<name>/{step, loss, accuracy, bpb}  (eval.sets: more validation sets)
//   /norms/{step, grad_<g>, weight_<g>}      (train.norms_every: per layer g = wte, wpe, h0, ...)
//   /activations/{step, <a>}                  (train.activations_every: root mean squares of the
//                                             activations a = embed, h0_attn, h0_mlp, h0_out, ...)
//   /moe_load/{step, h<l>}                   (train.moe_load_every: each layer l with experts, a
//                                             2-D [rows, E] dataset of each expert's share)
//   /val_positions/{step, loss}              (eval.loss_by_position: data.val's mean loss at
//                                             each position, a 2-D [rows, seq_len] dataset;
//                                             /val_set_positions/<name>/{step, loss} each of
//                                             eval.sets' likewise)
//   /noise/{step, small_sq, small_tokens, big_sq, big_tokens}  (train.noise_every: the squared
//                                             gradient norms of a small batch (one micro-batch;
//                                             under a pipeline a replica's share, under expert
//                                             parallelism the group's micro-batches) and the
//                                             batch)
//   /val_ema/<the columns of /val>           (eval.ema: the evaluation under the moving average
//                                             of the weights; /val_ema_sets/<name>/{step, loss,
//                                             accuracy, bpb} its eval.sets)
// step and tokens are int64, the rest float64. Root attributes: config, grid, n_params,
// flops_per_token, peak_flops.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace triad {

struct TrainRow {
  int64_t step = 0;  // 0-based index of the step whose batch gave `loss`
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_sec = 0, mfu = 0, step_ms = 0;
  int64_t tokens = 0;  // tokens seen after this step
  double skipped = 0;  // 1: the update was skipped (train.skip_*); NaN in rows of older files
  // The z-loss term's mean, c·(log Z)² (train.z_loss); NaN without one and in older files.
  double z_loss = std::numeric_limits<double>::quiet_NaN();
  // A mixture of experts (model.moe_experts): the load-balancing term's mean, α·E·Σ f_e·P_e
  // (train.moe_aux_loss), and the busiest expert's load E·max f_e (1: balanced), means over the
  // step's layers and micro-batches; NaN for a dense model and in older files.
  double moe_aux_loss = std::numeric_limits<double>::quiet_NaN();
  double moe_max_load = std::numeric_limits<double>::quiet_NaN();
  // The router z-loss term's mean, c·lse² (train.moe_z_loss); NaN without one and in older files.
  double moe_z_loss = std::numeric_limits<double>::quiet_NaN();
  // The fraction of the experts' choices over capacity and dropped (model.moe_capacity_factor),
  // the mean over the step's layers and micro-batches; NaN without a capacity and in older files.
  double moe_dropped = std::numeric_limits<double>::quiet_NaN();
  // Multi-token prediction (model.mtp_depth): the modules' mean cross-entropy over their
  // targets; NaN without modules and in older files.
  double mtp_loss = std::numeric_limits<double>::quiet_NaN();
  // DPO (data.preferences): the share of the step's pairs whose chosen reward exceeds the
  // rejected one's, and the mean margin between them (a reward: β times a sequence's
  // log-probability less the reference's); NaN otherwise and in older files.
  double dpo_accuracy = std::numeric_limits<double>::quiet_NaN();
  double dpo_margin = std::numeric_limits<double>::quiet_NaN();
};

struct ValRow {
  int64_t step = 0;  // updates applied when the evaluation ran
  double loss = 0, accuracy = 0;
  // eval.choices' accuracies (NaN: none; by_chars also where characters were not counted)
  double choice_accuracy = std::numeric_limits<double>::quiet_NaN();
  double choice_accuracy_by_sum = std::numeric_limits<double>::quiet_NaN();
  double choice_accuracy_by_chars = std::numeric_limits<double>::quiet_NaN();
  double bpb = std::numeric_limits<double>::quiet_NaN();  // eval.bits_per_byte (NaN: off)
  // eval.preferences: DPO's mean loss over the pairs, the share ranked right and the mean reward
  // margin (NaN: none)
  double dpo_loss = std::numeric_limits<double>::quiet_NaN();
  double dpo_accuracy = std::numeric_limits<double>::quiet_NaN();
  double dpo_margin = std::numeric_limits<double>::quiet_NaN();
};

struct MetricsAttributes {
  std::string config, grid;
  int64_t n_params = 0;
  double flops_per_token = 0, peak_flops = 0;
};

class MetricsWriter {
 public:
  // Opens (creating if needed) path. On resume at `resume_step` (updates applied), rows of
  // /train and /val with step >= resume_step are dropped (datasets shrunk), so a resumed run,
  // which re-evaluates at resume_step when that is an evaluation step, continues the curves
  // without duplicates. A fresh run (resume_step < 0) replaces any existing file. On resume, a
  // file HDF5 cannot open (damaged by a crash between flushes) is renamed to path + ".damaged"
  // with a warning on stderr and a new file is started. Attributes are (re)written. Strings
  // are fixed-length (h5py returns bytes: .decode()). Throws triad::Error naming the file.
  // Rows are buffered: append() only stores them (writing every 4096 rows, or as flush_due
  // says), flush() and the destructor write them and H5Fflush, after which a reader (h5py)
  // sees them. The file is not locked, so readers may open it meanwhile (they see the state of
  // the last flush).
  // `val_sets` names the groups /val_sets/<name> (eval.sets), truncated on resume as /val.
  // `norm_groups` (non-empty: train.norms_every) the columns of /norms, `activations`
  // (non-empty: train.activations_every) those of /activations, `moe_layers` (non-empty:
  // train.moe_load_every) those of /moe_load, each of moe_experts values per row; positions > 0
  // (eval.loss_by_position: seq_len) the width of /val_positions/loss, truncated on resume as
  // /val; noise (train.noise_every) opens /noise, val_ema (eval.ema) /val_ema and, for each of
  // val_sets, /val_ema_sets/<name>; set_positions > 0 (eval.loss_by_position with eval.sets:
  // seq_len) for each of val_sets /val_set_positions/<name> of that width.
  MetricsWriter(const std::string& path, const MetricsAttributes& attrs, int64_t resume_step,
                const std::vector<std::string>& val_sets = {},
                const std::vector<std::string>& norm_groups = {},
                const std::vector<std::string>& activations = {},
                const std::vector<std::string>& moe_layers = {}, int moe_experts = 0,
                int positions = 0, bool noise = false, bool val_ema = false, int set_positions = 0);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  void append(const TrainRow& row);
  void append(const ValRow& row);
  // A row of validation set i (the order of val_sets).
  void append_set(size_t i, int64_t step, double loss, double accuracy,
                  double bpb = std::numeric_limits<double>::quiet_NaN());
  // A row of /norms: the gradient and weight norms of norm_groups, in their order.
  void append_norms(int64_t step, const std::vector<double>& grad,
                    const std::vector<double>& weight);
  // A row of /activations: the values of `activations`, in their order.
  void append_activations(int64_t step, const std::vector<double>& rms);
  // A row of /moe_load: moe_layers' shares, layer after layer (moe_experts each).
  void append_moe_load(int64_t step, const std::vector<double>& load);
  // A row of /val_positions: the loss at each of the `positions` positions.
  void append_position_losses(int64_t step, const std::vector<double>& loss);
  // A row of /val_set_positions/<name> for validation set i: its loss at each position.
  void append_set_position_losses(size_t i, int64_t step, const std::vector<double>& loss);
  // A row of /noise: small_sq, small_tokens, big_sq, big_tokens.
  void append_noise(int64_t step, const std::vector<double>& values);
  // A row of /val_ema: the evaluation's scores under the moving average of the weights (NaN:
  // not scored), and one of /val_ema_sets/<name> for validation set i.
  void append_ema(const ValRow& row);
  void append_ema_set(size_t i, int64_t step, double loss, double accuracy,
                      double bpb = std::numeric_limits<double>::quiet_NaN());
  void flush();  // writes the rows buffered and H5Fflush: before a checkpoint, at the end
  // At an evaluation: flush() unless the last write was under a second ago; then the rows are
  // written at the first training row appended a second after it (or by flush()). Training
  // rows are also written when half a minute has passed since the last write.
  void flush_due();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace triad
