// Optimizers, LR schedules and gradient clipping with the exact semantics of DESIGN.md §4.
// State lives in contiguous buffers shaped like the parameter buffer, so a checkpoint stores
// it per parameter name and a ZeRO shard is a contiguous slice.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/train/config.h"

namespace triad {

// Learning rate of 0-based step s (warmup, then train.schedule).
double lr_at(const TrainConfig& t, int64_t step);

// Gradient clipping (DESIGN.md §4): the factor the gradient is scaled by, clip / (norm + 1e-6)
// where the global L2 norm `norm` of the whole gradient is above clip (> 0), else 1. The
// optimizer applies it as it reads the gradient (Optimizer::update's grad_scale).
float clip_scale(double norm, double clip);

// Updates the parameters of the flat range [begin, end) of the parameter buffer: the whole
// buffer without ZeRO, this data-parallel rank's slice with ZeRO-1 (then the optimizer state
// exists only for that slice, and shrinks as 1/dp).
class Optimizer {
 public:
  Optimizer(const OptimConfig& cfg, const std::vector<ParamSpec>& specs, size_t begin, size_t end,
            Backend& be);
  ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Applies one update with learning rate lr to params[begin, end), from grads holding the
  // gradient of that range at grads[0 .. end-begin); `step` counts updates including this one
  // (1-based, for Adam's bias correction). With `copy` (a bf16 buffer laid out like params), the
  // same pass writes the updated range rounded to bf16 there. The gradient enters multiplied
  // by grad_scale (clip_scale()).
  void update(float* params, const float* grads, double lr, int64_t step, bf16_t* copy = nullptr,
              float grad_scale = 1.0f);

  // The state slots as stored in checkpoints: {"m", "v"} (AdamW) or {"momentum"} (SGD), each
  // holding the range [begin, end) of a parameter-shaped buffer.
  std::vector<std::string> slot_names() const;
  float* slot(size_t i) { return slots_[i]; }
  size_t begin() const { return begin_; }
  size_t end() const { return end_; }
  size_t state_bytes() const { return slots_.size() * (end_ - begin_) * sizeof(float); }
  // What an optimizer of this config over a range of n floats allocates (the run plan's number).
  static size_t state_bytes_for(const OptimConfig& cfg, size_t n);
  void reset();  // zero the state (fresh optimizer)

 private:
  OptimConfig cfg_;
  size_t begin_, end_;
  Backend& be_;
  std::vector<float*> slots_;
  // The parts of the tensors inside [begin, end), relative to begin, with their weight decay:
  // the whole AdamW update is one adamw_update_runs call.
  std::vector<Backend::UpdateRun> runs_;
};

}  // namespace triad
