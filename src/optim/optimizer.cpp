#include "triad/optim/optimizer.h"

#include <fnmatch.h>

#include <algorithm>
#include <cmath>

#include "triad/core/comma_list.h"
#include "triad/core/error.h"
#include "triad/optim/muon.h"

namespace triad {

double lr_at(const TrainConfig& t, const SchedulePoint& p) {
  // In steps every quantity is a whole number below 2^53 (and in sequences a count of them), so
  // the sums and differences are exact and the quotients those of the integers.
  const double lr = t.lr, min_lr = t.lr * t.min_lr_ratio;
  if (p.done + p.step <= p.warmup) return lr * (p.done + p.step) / p.warmup;
  if (t.schedule == "inverse_sqrt") {
    // Megatron's inverse-square-root: the peak times √(W / n) after n steps (or sequences) of a
    // warmup of W, at least one step (by sequences: one full batch, so that a ramp's growing
    // steps do not move it), the run's length aside; between min_lr and the peak.
    const double one_step = t.lr_by == "sequences" ? double(t.batch_size) : 1.0;
    const double w = std::max(p.warmup, one_step);
    return std::clamp(lr * std::sqrt(w / (p.done + p.step)), min_lr, lr);
  }
  const double decay = p.total - p.warmup;
  if (t.schedule == "constant" || decay <= 0) return lr;
  // A step across the warmup's end (by sequences) takes the peak: progress 0, not below.
  const double progress = std::min(1.0, std::max(0.0, p.done - p.warmup) / decay);
  if (t.schedule == "cosine")
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
  if (t.schedule == "linear") return lr - (lr - min_lr) * progress;
  if (t.schedule == "wsd") {
    // Warmup-stable-decay: constant, then down to min_lr over the last decay_fraction of the
    // run, in train.decay_shape.
    const double decay_len = t.decay_fraction * p.total;
    const double decay_start = p.total - decay_len;
    if (p.done < decay_start || decay_len <= 0) return lr;
    const double f = std::min(1.0, (p.done - decay_start) / decay_len);
    if (t.decay_shape == "1-sqrt") return min_lr + (lr - min_lr) * (1.0 - std::sqrt(f));
    if (t.decay_shape == "cosine") return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * f));
    return lr - (lr - min_lr) * f;
  }
  fail("internal error: unknown schedule ", t.schedule);
}

double weight_decay_at(const OptimConfig& o, const SchedulePoint& p) {
  if (o.weight_decay_schedule == "constant" || p.total <= 0) return o.weight_decay;
  const double r = std::min(1.0, (p.done + p.step) / p.total);
  const double c = o.weight_decay_schedule == "linear" ? r : 0.5 * (1.0 - std::cos(M_PI * r));
  return o.weight_decay + c * (o.weight_decay_end - o.weight_decay);
}

double lr_at(const TrainConfig& t, int64_t step) {
  return lr_at(t, SchedulePoint{double(step), 1.0, double(t.steps), double(t.warmup_steps)});
}

double muon_lr_at(const TrainConfig& t, const OptimConfig& o, const SchedulePoint& p) {
  TrainConfig m = t;
  m.lr = o.muon_lr;
  return lr_at(m, p);
}

bool frozen_tensor(const std::string& freeze, const std::string& name) {
  if (trim_blanks(freeze).empty()) return false;
  for (const std::string& p : split_comma_list(freeze))
    if (fnmatch(p.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

std::vector<ParamSpec> trainable_specs(const std::vector<ParamSpec>& specs,
                                       const std::vector<ParamSpec>& layout,
                                       const std::string& freeze) {
  if (trim_blanks(freeze).empty()) return specs;
  size_t kept = 0;
  for (const std::string& p : split_comma_list(freeze)) {
    bool any = false;
    for (const auto& s : layout) any = any || fnmatch(p.c_str(), s.name.c_str(), 0) == 0;
    TRIAD_CHECK(any, "config: train.freeze: pattern '", p,
                "' matches no tensor of the model (names as in a checkpoint's /model, e.g. "
                "h/0/attn/c_attn/weight)");
  }
  for (const auto& s : layout) kept += frozen_tensor(freeze, s.name) ? 0 : 1;
  TRIAD_CHECK(kept > 0, "config: train.freeze '", freeze, "' freezes every tensor of the model");
  std::vector<ParamSpec> out;
  for (const auto& s : specs)
    if (!frozen_tensor(freeze, s.name)) out.push_back(s);
  return out;
}

namespace {
// The token and position embeddings (optim.embedding_lr's and optim.decay_embeddings' tensors).
bool is_embedding(const std::string& name) { return name == "wte/weight" || name == "wpe/weight"; }
}  // namespace

float LrScales::of(const std::string& name) const {
  if (muon_updates(name)) return hidden;
  if (is_embedding(name)) return embedding;
  if (name.starts_with("lm_head/")) return head;
  return 1.0f;
}

LrScales lr_scales(const Config& cfg, double mup_mult) {
  const double lr = cfg.train.lr;
  auto ratio = [lr](double rate) { return rate > 0 ? float(rate / lr) : 1.0f; };
  return {float(1.0 / mup_mult), ratio(cfg.optim.embedding_lr), ratio(cfg.optim.head_lr)};
}

float clip_scale(double norm, double clip) {
  return clip > 0 && norm > clip ? float(clip / (norm + 1e-6)) : 1.0f;
}

namespace {
// momentum (SGD) | m (Lion) | m, v (AdamW; Muon: momentum and m, v); then the weights' moving
// average (optim.ema_decay).
size_t slots_of(const OptimConfig& cfg) {
  return (cfg.name == "sgd" || cfg.name == "lion" ? 1 : 2) + (cfg.ema_decay > 0 ? 1 : 0);
}
}  // namespace

size_t Optimizer::state_bytes_for(const OptimConfig& cfg, size_t n,
                                  const std::vector<ParamSpec>& specs, int tp, int dp) {
  const size_t scratch = cfg.name == "muon" ? MuonMatrices::scratch_floats(specs, tp, dp) : 0;
  return (slots_of(cfg) * std::max<size_t>(1, n) + scratch) * sizeof(float);
}

Optimizer::Optimizer(const OptimConfig& cfg, const std::vector<ParamSpec>& specs, size_t begin,
                     size_t end, Backend& be, Comm* dp, Comm* tp, bool zero_slice,
                     const LrScales& scales, Comm* expert_dp)
    : cfg_(cfg), begin_(begin), end_(end), be_(be) {
  TRIAD_ASSERT(begin <= end);
  for (size_t i = 0; i < slots_of(cfg); ++i)
    slots_.push_back(be_.alloc(std::max<size_t>(1, end - begin)));
  const bool muon = cfg.name == "muon";
  if (muon) {
    muon_ =
        std::make_unique<MuonMatrices>(cfg, specs, begin, end, be, dp, tp, zero_slice, expert_dp);
    scratch_bytes_ = MuonMatrices::scratch_floats(specs, tp != nullptr ? tp->size() : 1,
                                                  dp != nullptr ? dp->size() : 1) *
                     sizeof(float);
  }
  std::vector<std::pair<Backend::UpdateRun, bool>> runs;
  for (const auto& s : specs) {
    if (muon && muon_updates(s.name)) continue;
    const size_t lo = std::max(begin_, s.offset), hi = std::min(end_, s.offset + s.numel);
    // Weight decay only on matrices (wte, wpe, linear weights), as DESIGN.md §4 says; not on
    // the embeddings with optim.decay_embeddings = false.
    if (lo < hi)
      runs.push_back({{lo - begin_, hi - begin_, 0.0f, scales.of(s.name)},
                      s.decay && (cfg_.decay_embeddings || !is_embedding(s.name))});
  }
  std::sort(runs.begin(), runs.end(),
            [](const auto& a, const auto& b) { return a.first.begin < b.first.begin; });
  for (const auto& [run, decays] : runs) {
    runs_.push_back(run);
    decays_.push_back(decays);
  }
  set_weight_decay(cfg_.weight_decay);
}

void Optimizer::set_weight_decay(double wd) {
  cfg_.weight_decay = wd;
  for (size_t i = 0; i < runs_.size(); ++i) runs_[i].wd = decays_[i] ? float(wd) : 0.0f;
  if (muon_) muon_->set_weight_decay(wd);
}

Optimizer::~Optimizer() {
  muon_.reset();
  for (float* p : slots_) be_.free(p);
}

std::vector<Optimizer::StateGroup> Optimizer::state_groups() const {
  std::vector<StateGroup> g;
  if (cfg_.name == "adamw")
    g = {{"m", 0, Holds::all}, {"v", 1, Holds::all}};
  else if (cfg_.name == "sgd")
    g = {{"momentum", 0, Holds::all}};
  else if (cfg_.name == "lion")
    g = {{"m", 0, Holds::all}};
  else
    g = {{"momentum", 0, Holds::muon_matrices}, {"m", 0, Holds::others}, {"v", 1, Holds::others}};
  if (ema()) g.push_back({"ema", ema_slot(), Holds::all});
  return g;
}

void Optimizer::start_ema(const float* params) {
  if (ema()) be_.copy(slots_[ema_slot()], params, end_ - begin_);
}

bool Optimizer::group_holds(Holds h, const std::string& tensor) {
  if (h == Holds::all) return true;
  return muon_updates(tensor) == (h == Holds::muon_matrices);
}

void Optimizer::reset() {
  for (float* p : slots_) be_.zero(p, std::max<size_t>(1, end_ - begin_));
}

void Optimizer::update(float* params, const float* grads, double lr, int64_t step, bf16_t* copy,
                       float grad_scale, double matrix_lr) {
  update_weights(params, grads, lr, step, copy, grad_scale, matrix_lr);
  // The moving average follows every update, frozen tensors (unchanged) and padding included.
  if (ema()) be_.ema_update(slots_[ema_slot()], params, end_ - begin_, float(1.0 - cfg_.ema_decay));
}

void Optimizer::update_weights(float* params, const float* grads, double lr, int64_t step,
                               bf16_t* copy, float grad_scale, double matrix_lr) {
  TRIAD_ASSERT(step >= 1);
  const double bc1 = 1.0 - std::pow(cfg_.beta1, double(step));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, double(step));
  if (cfg_.name == "adamw" || cfg_.name == "muon") {
    if (!runs_.empty())
      be_.adamw_update_runs(params, grads, slots_[0], slots_[1], runs_.data(), runs_.size(),
                            float(lr), float(cfg_.beta1), float(cfg_.beta2), float(cfg_.eps),
                            float(bc1), float(bc2), copy, grad_scale);
    // Muon's momentum lives in slot 0 and its u (scratch) in slot 1, in the matrices' elements,
    // which AdamW leaves alone.
    TRIAD_CHECK(!muon_ || matrix_lr >= 0, "internal error: Muon's update needs its matrix_lr");
    if (muon_) muon_->update(params, grads, slots_[0], slots_[1], matrix_lr, copy, grad_scale);
    return;
  }
  if (cfg_.name == "lion") {
    for (const auto& r : runs_)  // element-wise updates make any cut exact
      be_.lion_update(params + r.begin, grads + r.begin, slots_[0] + r.begin, r.end - r.begin,
                      float(lr) * r.lr_scale, float(cfg_.beta1), float(cfg_.beta2), r.wd,
                      copy != nullptr ? copy + r.begin : nullptr, grad_scale);
    return;
  }
  for (const auto& r : runs_) {  // element-wise updates make any cut exact
    be_.sgd_update(params + r.begin, grads + r.begin, slots_[0] + r.begin, r.end - r.begin,
                   float(lr) * r.lr_scale, float(cfg_.momentum), r.wd,
                   copy != nullptr ? copy + r.begin : nullptr, grad_scale);
  }
}

}  // namespace triad
