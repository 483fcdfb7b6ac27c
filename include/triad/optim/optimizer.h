// Optimizers, LR schedules and gradient clipping with the exact semantics of DESIGN.md §4.
// State lives in contiguous buffers shaped like the parameter buffer, so a checkpoint stores
// it per parameter name and a ZeRO shard is a contiguous slice.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/parallel/comm.h"
#include "triad/train/config.h"

namespace triad {

// Learning rate of the step at p (ScheduleClock, config.h): linear warmup lr·(done + step) /
// warmup while done + step <= warmup, then train.schedule over max(0, done − warmup) / (total −
// warmup) (a step across the warmup's end takes the peak), or wsd's decay over the last
// decay_fraction of total, or inverse_sqrt's lr·√(W / (done + step)) with W = max(warmup, one
// step: 1, or by sequences train.batch_size), within [min_lr, lr].
double lr_at(const TrainConfig& t, const SchedulePoint& p);
// ... of 0-based step s counted in steps (train.lr_by = steps; DESIGN.md §4).
double lr_at(const TrainConfig& t, int64_t step);
// Muon's matrix learning rate: train.schedule's shape with peak optim.muon_lr.
double muon_lr_at(const TrainConfig& t, const OptimConfig& o, const SchedulePoint& p);

// The weight decay of the step at p (optim.weight_decay_schedule, Megatron's): constant
// optim.weight_decay; else from it (wd0) to optim.weight_decay_end (wd1) at the progress
// r = min(1, (done + step) / total) the step reaches: wd0 + c·(wd1 − wd0), c = r (linear) or
// (1 − cos(π r)) / 2 (cosine).
double weight_decay_at(const OptimConfig& o, const SchedulePoint& p);

// Gradient clipping (DESIGN.md §4): the factor the gradient is scaled by, clip / (norm + 1e-6)
// where the global L2 norm `norm` of the whole gradient is above clip (> 0), else 1. The
// optimizer applies it as it reads the gradient (Optimizer::update's grad_scale).
float clip_scale(double norm, double clip);

class MuonMatrices;

// Each tensor's learning rate relative to the schedule's (train.lr's) under AdamW and SGD: μP's
// hidden matrices at 1/m (GptShape::mup_base_width; Muon's matrices keep their own), the
// embeddings wte and wpe at optim.embedding_lr / train.lr, an untied head's lm_head/* at
// optim.head_lr / train.lr (each 1 where its key is 0). Every schedule is linear in its peak
// (min_lr is a ratio of it), so a constant factor is that schedule with the other peak.
struct LrScales {
  float hidden = 1.0f, embedding = 1.0f, head = 1.0f;
  float of(const std::string& name) const;
};
LrScales lr_scales(const Config& cfg, double mup_mult);

// train.freeze: whether a parameter name matches one of its comma-separated globs (fnmatch: *
// matches any characters, '/' too).
bool frozen_tensor(const std::string& freeze, const std::string& name);
// The specs the optimizer updates: those train.freeze leaves trainable. Throws triad::Error
// naming the key when a pattern matches no tensor of `layout` (the whole model's, so a pattern
// for another pipeline stage's layers is not an error) or when every tensor is frozen.
std::vector<ParamSpec> trainable_specs(const std::vector<ParamSpec>& specs,
                                       const std::vector<ParamSpec>& layout,
                                       const std::string& freeze);

// Updates the parameters of the flat range [begin, end) of the parameter buffer: the whole
// buffer without ZeRO, this data-parallel rank's slice with ZeRO 1, 2 or 3 (then the optimizer
// state exists only for that slice, and shrinks as 1/dp; zero_slice says so). optim.name = muon:
// Muon on the hidden matrices (optim/muon.h), AdamW on the rest; it gathers whole matrices over
// tp (the tensor-parallel group) and shares its Newton–Schulz work out over dp (the
// data-parallel group, which also holds the other ZeRO slices). scales: each tensor's learning
// rate relative to update()'s lr (LrScales). expert_dp: under expert parallelism
// without ZeRO, the expert replicas, which share out Muon's work on the experts' matrices.
class Optimizer {
 public:
  Optimizer(const OptimConfig& cfg, const std::vector<ParamSpec>& specs, size_t begin, size_t end,
            Backend& be, Comm* dp = nullptr, Comm* tp = nullptr, bool zero_slice = false,
            const LrScales& scales = {}, Comm* expert_dp = nullptr);
  ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Applies one update with learning rate lr to the range [begin, end) of the parameter buffer,
  // held at params[0 .. end-begin) (a sharded master holds no more), from grads holding the
  // gradient of that range at grads[0 .. end-begin); `step` counts updates including this one
  // (1-based, for Adam's bias correction). With `copy` (a bf16 buffer holding the range as params
  // does), the same pass writes the updated range rounded to bf16 there. The gradient enters
  // multiplied by grad_scale (clip_scale()). Muon: matrix_lr is the matrices' learning rate;
  // when [begin, end) is a ZeRO slice the update is collective over the data-parallel group.
  void update(float* params, const float* grads, double lr, int64_t step, bf16_t* copy = nullptr,
              float grad_scale = 1.0f, double matrix_lr = kNoMatrixLr);
  // matrix_lr's default: no value (Muon refuses it rather than freeze its matrices silently).
  static constexpr double kNoMatrixLr = -1.0;
  // optim.ema_decay: the moving average (the last slot) set to the weights of the range, held at
  // params[0 .. end-begin) as update() takes them: at a fresh start, after --init-from, and on
  // resuming from a checkpoint without one. Nothing without a moving average.
  void start_ema(const float* params);
  bool ema() const { return cfg_.ema_decay > 0; }
  size_t ema_slot() const { return slots_.size() - 1; }
  // The weight decay of the next updates (weight_decay_at), on the tensors that decay.
  void set_weight_decay(double wd);

  // The state: slots, each holding the range [begin, end) of a parameter-shaped buffer, stored
  // in checkpoints as groups /optimizer/<name>/<tensor>: AdamW {m, v}, SGD {momentum}, Muon
  // {momentum} for its matrices and {m, v} for the other tensors (slot 0 holds the momentum
  // and m, each in its own tensors); then {ema} with optim.ema_decay (the last slot).
  enum class Holds { all, muon_matrices, others };
  struct StateGroup {
    std::string name;  // "m", "v", "momentum"
    size_t slot;
    Holds tensors;
  };
  std::vector<StateGroup> state_groups() const;
  static bool group_holds(Holds h, const std::string& tensor);
  size_t slot_count() const { return slots_.size(); }
  float* slot(size_t i) { return slots_[i]; }
  size_t begin() const { return begin_; }
  size_t end() const { return end_; }
  size_t state_bytes() const {
    return slots_.size() * (end_ - begin_) * sizeof(float) + scratch_bytes_;
  }
  // What an optimizer of this config over a range of n floats of a rank's layout `specs` at
  // tensor-parallel size tp and data-parallel size dp allocates (the run plan's number).
  static size_t state_bytes_for(const OptimConfig& cfg, size_t n,
                                const std::vector<ParamSpec>& specs, int tp, int dp);
  void reset();  // zero the state (fresh optimizer)

 private:
  void update_weights(float* params, const float* grads, double lr, int64_t step, bf16_t* copy,
                      float grad_scale, double matrix_lr);

  OptimConfig cfg_;
  size_t begin_, end_;
  Backend& be_;
  std::vector<float*> slots_;
  // The parts of the tensors inside [begin, end), relative to begin, with their weight decay:
  // the whole AdamW update is one adamw_update_runs call (Muon: the tensors it leaves to AdamW).
  std::vector<Backend::UpdateRun> runs_;
  std::vector<bool> decays_;  // per run: its tensor takes weight decay
  std::unique_ptr<MuonMatrices> muon_;
  size_t scratch_bytes_ = 0;  // Muon's Newton–Schulz scratch
};

}  // namespace triad
