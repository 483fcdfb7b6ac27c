#include "triad/optim/muon.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "triad/core/error.h"

namespace triad {

namespace {

constexpr float kNsA = 3.4445f, kNsB = -4.7750f, kNsC = 2.0315f;
constexpr double kNsEps = 1e-7;

// Column blocks of the matrix a rank gathers for spec s: a matrix split by columns arrives as
// the tp ranks' column shards one after the other. (With split_blocks > 1, attn.c_proj under
// grouped-query attention, that is the matrix with its columns permuted, as a row split with
// blocks gathers c_attn with its rows permuted. Newton-Schulz commutes with both: X Xᵀ, and so
// the iteration's polynomial, is invariant under a column permutation P, NS(X P) = NS(X) P, and
// NS(P X) = P NS(X); each rank takes back its own rows or columns.)
int gathered_blocks(const ParamSpec& s, int tp) { return s.split_axis == 1 ? tp : 1; }

}  // namespace

bool muon_updates(const std::string& name) {
  return name.starts_with("h/") &&
         (name.ends_with("/attn/c_attn/weight") || name.ends_with("/attn/c_proj/weight") ||
          name.ends_with("/mlp/c_fc/weight") || name.ends_with("/mlp/c_proj/weight"));
}

double newton_schulz_flops(int64_t rows, int64_t cols, int steps) {
  const double a = double(std::min(rows, cols)), b = double(std::max(rows, cols));
  return double(steps) * (4 * a * a * b + 2 * a * a * a);
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
// The scratch for the Muon matrices of specs, sized for every one of them (the same on every
// rank of a stage, as the run plan counts it): the largest gathered matrix (x, y), the largest
// min(m, n)² (a, a2), and with dp > 1 the largest local shard (send, and dp of them received).
struct Scratch {
  size_t gathered = 0, square = 0, shard = 0;
  size_t floats(int dp) const {
    if (gathered == 0) return 0;
    return 2 * gathered + 2 * square + (dp > 1 ? shard * size_t(1 + dp) : 0);
  }
};

Scratch scratch_of(const std::vector<ParamSpec>& specs, int tp) {
  Scratch s;
  for (const auto& p : specs) {
    if (!muon_updates(p.name)) continue;
    s.gathered = std::max(s.gathered, p.split_axis >= 0 ? p.numel * size_t(tp) : p.numel);
    const size_t k = size_t(std::min(p.shape[0], p.shape[1]));
    s.square = std::max(s.square, k * k);
    s.shard = std::max(s.shard, p.numel);
  }
  return s;
}
}  // namespace

std::vector<MuonRound> muon_rounds(const std::vector<ParamSpec>& specs, int dp) {
  std::vector<size_t> order;
  for (size_t i = 0; i < specs.size(); ++i)
    if (muon_updates(specs[i].name)) order.push_back(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return specs[a].numel > specs[b].numel; });
  std::vector<MuonRound> rounds;
  for (size_t i = 0; i < order.size(); i += size_t(dp)) {
    MuonRound r;
    for (size_t j = i; j < std::min(order.size(), i + size_t(dp)); ++j) r.specs.push_back(order[j]);
    r.count = specs[r.specs.front()].numel;
    rounds.push_back(std::move(r));
  }
  return rounds;
}

size_t MuonMatrices::scratch_floats(const std::vector<ParamSpec>& specs, int tp, int dp) {
  return scratch_of(specs, tp).floats(dp);
}

MuonMatrices::MuonMatrices(const OptimConfig& cfg, const std::vector<ParamSpec>& specs,
                           size_t begin, size_t end, Backend& be, Comm* dp, Comm* tp,
                           bool zero_slice)
    : cfg_(cfg),
      begin_(begin),
      end_(end),
      be_(be),
      dp_(dp),
      tp_(tp),
      zero_slice_(zero_slice),
      specs_(specs) {
  const int tps = tp != nullptr ? tp->size() : 1, dps = dp != nullptr ? dp->size() : 1;
  TRIAD_CHECK(!zero_slice || dps > 1 || begin == 0, "internal error: a ZeRO slice needs its group");
  matrices_.assign(specs_.size(), Matrix{nullptr, 0, 0, 1, 1.0f});
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ParamSpec& s = specs_[i];
    if (!muon_updates(s.name)) continue;
    TRIAD_CHECK(s.shape.size() == 2, "internal error: Muon matrix ", s.name, " is not 2-D");
    const size_t lo = std::max(begin_, s.offset), hi = std::min(end_, s.offset + s.numel);
    Matrix mtx{&s, lo, std::max(lo, hi), gathered_blocks(s, tps),
               float(muon_lr_scale(cfg.muon_adjust_lr, s.shape[0], s.shape[1]))};
    TRIAD_CHECK(s.shape[0] <= s.shape[1] || mtx.blocks == 1, "internal error: Muon matrix ", s.name,
                " is split by columns and taller than wide");
    matrices_[i] = mtx;
    if (lo < hi) runs_.push_back({lo - begin_, hi - begin_, float(cfg.weight_decay)});
  }
  std::sort(
      runs_.begin(), runs_.end(),
      [](const Backend::UpdateRun& a, const Backend::UpdateRun& b) { return a.begin < b.begin; });
  rounds_ = muon_rounds(specs_, dps);
  const Scratch sc = scratch_of(specs_, tps);
  if (sc.gathered > 0) {
    x_ = be_.alloc(sc.gathered);
    y_ = be_.alloc(sc.gathered);
    a_ = be_.alloc(sc.square);
    a2_ = be_.alloc(sc.square);
    if (dps > 1) {
      send_ = be_.alloc(sc.shard);
      recv_ = be_.alloc(sc.shard * size_t(dps));
    }
  }
}

MuonMatrices::~MuonMatrices() {
  for (float* p : {x_, y_, a_, a2_, send_, recv_})
    if (p != nullptr) be_.free(p);
}

void MuonMatrices::update(float* params, const float* grads, float* momentum, float* u, double lr,
                          bf16_t* copy, float grad_scale) {
  for (const auto& r : runs_)
    be_.muon_momentum(momentum + r.begin, u + r.begin, grads + r.begin, r.end - r.begin,
                      float(cfg_.muon_momentum), cfg_.muon_nesterov, grad_scale);
  const int dps = dp_ != nullptr ? dp_->size() : 1, tps = tp_ != nullptr ? tp_->size() : 1;
  const bool sliced = zero_slice_ && dps > 1;
  const int k = dps > 1 ? dp_->rank() : 0;
  for (const auto& round : rounds_) {
    // This rank's matrix of the round, if the round has one for it; split: its tp shards are
    // gathered into x_ for NS, so its own shard must wait elsewhere (y_).
    const Matrix* mtx =
        size_t(k) < round.specs.size() ? &matrices_[round.specs[size_t(k)]] : nullptr;
    const bool split = mtx != nullptr && tps > 1 && mtx->spec->split_axis >= 0;
    float* mine_at = split ? y_ : x_;
    // Its u, whole on this rank. Under ZeRO each matrix of the round is gathered whole from the
    // slices holding its u, on every rank of the group (a collective; the rank whose matrix it
    // is keeps it, the others land in the other scratch): one matrix at a time in Newton–Schulz's
    // scratch, so no stage needs a whole buffer for it, and only the matrices' elements travel.
    const float* mine = nullptr;
    if (sliced) {
      const size_t slice = end_ - begin_;
      TRIAD_ASSERT(begin_ == size_t(k) * slice);
      for (size_t i = 0; i < round.specs.size(); ++i) {
        const ParamSpec& s = *matrices_[round.specs[i]].spec;
        const size_t a = std::clamp(s.offset, begin_, end_);
        float* into = i == size_t(k) ? mine_at : (split ? x_ : y_);
        dp_->iall_gather_pieces(u + (a - begin_), into,
                                slice_pieces(s.offset, s.offset + s.numel, slice, dps))
            .wait();
      }
      mine = mtx != nullptr ? mine_at : nullptr;
    } else if (mtx != nullptr) {
      mine = u + (mtx->spec->offset - begin_);
    }
    // The whole matrix's NS, and this rank's tp shard of the result (the tp_rank-th block of
    // what was gathered).
    const float* own = nullptr;
    if (mtx != nullptr) {
      const ParamSpec& s = *mtx->spec;
      if (split)
        tp_->all_gather(mine, x_, s.numel);
      else if (mine != x_)
        be_.copy(x_, mine, s.numel);
      newton_schulz(be_, x_, y_, a_, a2_, s.shape[0], s.shape[1], split ? mtx->blocks : 1,
                    cfg_.muon_ns_steps);
      own = x_ + (split ? size_t(tp_->rank()) * s.numel : 0);
      if (dps > 1) be_.copy(send_, own, s.numel);
    }
    // Round matrix i's shard of O at results + i·stride.
    const float* results = own;
    size_t stride = 0;
    if (dps > 1) {
      dp_->all_gather(send_, recv_, round.count);
      results = recv_;
      stride = round.count;
    }
    for (size_t i = 0; i < round.specs.size(); ++i) {
      const Matrix& mtx = matrices_[round.specs[i]];
      if (mtx.lo >= mtx.hi) continue;  // none of its elements in [begin, end)
      const float* o = results + i * stride + (mtx.lo - mtx.spec->offset);
      be_.muon_apply(params + (mtx.lo - begin_), o, mtx.hi - mtx.lo, float(lr),
                     float(cfg_.weight_decay), mtx.scale,
                     copy != nullptr ? copy + (mtx.lo - begin_) : nullptr);
    }
  }
}

}  // namespace triad
