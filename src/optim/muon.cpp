#include "triad/optim/muon.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "triad/core/error.h"

namespace triad {

namespace {

constexpr float kNsA = 3.4445f, kNsB = -4.7750f, kNsC = 2.0315f;
constexpr double kNsEps = 1e-7;

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Column blocks of the matrix a rank gathers for spec s: a matrix split by columns arrives as
// the tp ranks' column shards one after the other.
int gathered_blocks(const ParamSpec& s, int tp) { return s.split_axis == 1 ? tp : 1; }

}  // namespace

bool muon_updates(const std::string& name) {
  return name.rfind("h/", 0) == 0 &&
         (ends_with(name, "/attn/c_attn/weight") || ends_with(name, "/attn/c_proj/weight") ||
          ends_with(name, "/mlp/c_fc/weight") || ends_with(name, "/mlp/c_proj/weight"));
}

double muon_lr_scale(const std::string& adjust, int64_t rows, int64_t cols) {
  if (adjust == "original") return std::sqrt(std::max(1.0, double(rows) / double(cols)));
  if (adjust == "match_rms_adamw") return 0.2 * std::sqrt(double(std::max(rows, cols)));
  fail("internal error: unknown optim.muon_adjust_lr ", adjust);
}

void newton_schulz(Backend& be, float* x, float* y, float* a, float* a2, int64_t m, int64_t n,
                   int blocks, int steps) {
  const bool tall = m > n;  // then NS runs on Xᵀ: A = XᵀX and X = a X + X B
  TRIAD_ASSERT(blocks >= 1 && n % blocks == 0 && (!tall || blocks == 1));
  const size_t mn = size_t(m) * size_t(n);
  const int64_t k = tall ? n : m, nb = n / blocks;
  const size_t block = size_t(m) * size_t(nb), kk = size_t(k) * size_t(k);
  const double norm = std::sqrt(be.sum_squares(x, mn));
  be.scale(x, float(1.0 / std::max(norm, kNsEps)), mn);
  for (int it = 0; it < steps; ++it) {
    // A = X Xᵀ (Σ over the column blocks) or XᵀX.
    if (tall) {
      be.zero(a, kk);
      be.matmul_backward(nullptr, a, nullptr, x, x, nullptr, int(m), int(n), int(n));
    } else {
      for (int b = 0; b < blocks; ++b) {
        const float* xb = x + size_t(b) * block;
        be.matmul_forward(b == 0 ? a : a2, xb, xb, nullptr, int(m), int(nb), int(m));
        if (b > 0) be.accumulate(a, a2, kk);
      }
    }
    // B = b A + c A² (A is symmetric: A² = A Aᵀ), into a.
    be.matmul_forward(a2, a, a, nullptr, int(k), int(k), int(k));
    be.scale(a, kNsB, kk);
    be.scale(a2, kNsC, kk);
    be.accumulate(a, a2, kk);
    // Y = B X per block (or X Bᵀ = X B), then X = a X + Y.
    if (tall) {
      be.matmul_forward(y, x, a, nullptr, int(m), int(n), int(n));
    } else {
      for (int b = 0; b < blocks; ++b)
        be.matmul_backward(y + size_t(b) * block, nullptr, nullptr, a, nullptr,
                           x + size_t(b) * block, int(m), int(nb), int(m), GradMode::overwrite);
    }
    be.scale(x, kNsA, mn);
    be.accumulate(x, y, mn);
  }
}

namespace {
// The largest gathered matrix and the largest min(m, n)² among the Muon matrices of specs.
std::pair<size_t, size_t> scratch_sizes(const std::vector<ParamSpec>& specs, int tp) {
  size_t most = 0, most_k = 0;
  for (const auto& s : specs) {
    if (!muon_updates(s.name)) continue;
    most = std::max(most, s.split_axis >= 0 ? s.numel * size_t(tp) : s.numel);
    const size_t k = size_t(std::min(s.shape[0], s.shape[1]));
    most_k = std::max(most_k, k * k);
  }
  return {most, most_k};
}
}  // namespace

size_t MuonMatrices::scratch_floats(const std::vector<ParamSpec>& specs, int tp) {
  const auto [most, most_k] = scratch_sizes(specs, tp);
  return most == 0 ? 0 : 2 * most + 2 * most_k;  // x, y, a, a2
}

MuonMatrices::MuonMatrices(const OptimConfig& cfg, const std::vector<ParamSpec>& specs,
                           size_t begin, size_t end, Backend& be, Comm* dp, Comm* tp)
    : cfg_(cfg), begin_(begin), end_(end), be_(be), dp_(dp), tp_(tp), specs_(specs) {
  const int tps = tp != nullptr ? tp->size() : 1;
  for (const auto& s : specs_) {
    if (!muon_updates(s.name)) continue;
    TRIAD_CHECK(s.shape.size() == 2, "internal error: Muon matrix ", s.name, " is not 2-D");
    TRIAD_CHECK(s.split_axis < 0 || (s.split_axis == 1 ? s.split_blocks == 1 : true),
                "internal error: Muon cannot gather ", s.name);
    const size_t lo = std::max(begin_, s.offset), hi = std::min(end_, s.offset + s.numel);
    if (lo >= hi) continue;
    Matrix mtx{&s, lo, hi, gathered_blocks(s, tps),
               float(muon_lr_scale(cfg.muon_adjust_lr, s.shape[0], s.shape[1]))};
    TRIAD_CHECK(s.shape[0] <= s.shape[1] || mtx.blocks == 1, "internal error: Muon matrix ", s.name,
                " is split by columns and taller than wide");
    matrices_.push_back(mtx);
    runs_.push_back({lo - begin_, hi - begin_, float(cfg.weight_decay)});
  }
  std::sort(
      runs_.begin(), runs_.end(),
      [](const Backend::UpdateRun& a, const Backend::UpdateRun& b) { return a.begin < b.begin; });
  // Sized for every matrix of the layout, not only those in [begin, end): the same on every
  // rank of a stage, as the run plan counts it.
  const auto [most, most_k] = scratch_sizes(specs_, tps);
  if (most > 0) {
    x_ = be_.alloc(most);
    y_ = be_.alloc(most);
    a_ = be_.alloc(most_k);
    a2_ = be_.alloc(most_k);
  }
}

MuonMatrices::~MuonMatrices() {
  for (float* p : {x_, y_, a_, a2_})
    if (p != nullptr) be_.free(p);
}

void MuonMatrices::update(float* params, const float* grads, float* momentum, float* u, double lr,
                          bf16_t* copy, float grad_scale, float* workspace) {
  for (const auto& r : runs_)
    be_.muon_momentum(momentum + r.begin, u + r.begin, grads + r.begin, r.end - r.begin,
                      float(cfg_.muon_momentum), cfg_.muon_nesterov, grad_scale);
  // Every local matrix's u, whole on this rank: its ZeRO slices gathered over dp (u is laid out
  // as [begin, end) of the parameter buffer, so the gather rebuilds the buffer's layout).
  const bool gathered = dp_ != nullptr && dp_->size() > 1;
  if (gathered) {
    TRIAD_CHECK(workspace != nullptr, "internal error: Muon under ZeRO needs a workspace");
    dp_->all_gather(u, workspace, end_ - begin_);
  }
  // u of the tensor at buffer offset o (whole: begin_ <= o when not gathered).
  auto local = [&](size_t o) -> const float* {
    return gathered ? workspace + o : u + (o - begin_);
  };
  const int tps = tp_ != nullptr ? tp_->size() : 1;
  for (const auto& mtx : matrices_) {
    const ParamSpec& s = *mtx.spec;
    const bool split = tps > 1 && s.split_axis >= 0;
    if (split)
      tp_->all_gather(local(s.offset), x_, s.numel);
    else
      be_.copy(x_, local(s.offset), s.numel);
    newton_schulz(be_, x_, y_, a_, a2_, s.shape[0], s.shape[1], split ? mtx.blocks : 1,
                  cfg_.muon_ns_steps);
    // This rank's shard of O is the tp_rank-th block of what was gathered.
    const float* o = x_ + (split ? size_t(tp_->rank()) * s.numel : 0) + (mtx.lo - s.offset);
    be_.muon_apply(params + mtx.lo, o, mtx.hi - mtx.lo, float(lr), float(cfg_.weight_decay),
                   mtx.scale, copy != nullptr ? copy + mtx.lo : nullptr);
  }
}

}  // namespace triad
