#include "triad/optim/muon.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "triad/core/error.h"

namespace triad {

namespace {

constexpr float kNsA = 3.4445f, kNsB = -4.7750f, kNsC = 2.0315f;
constexpr double kNsEps = 1e-7;

}  // namespace

bool muon_updates(const std::string& name) {
  // (a layer's, or a multi-token prediction module's block's)
  if (!name.starts_with("h/") && !name.starts_with("mtp/")) return false;
  for (const char* m :
       {"/attn/c_attn/weight", "/attn/c_proj/weight", "/mlp/c_fc/weight", "/mlp/c_proj/weight",
        "/mlp/shared/c_fc/weight", "/mlp/shared/c_proj/weight", "/mlp/experts/c_fc/weight",
        "/mlp/experts/c_proj/weight"})
    if (name.ends_with(m)) return true;
  return false;
}

std::vector<MuonMatrix> muon_matrices(const std::vector<ParamSpec>& specs) {
  std::vector<MuonMatrix> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParamSpec& s = specs[i];
    if (!muon_updates(s.name)) continue;
    const size_t dims = s.shape.size();
    TRIAD_CHECK(dims == 2 || (dims == 3 && is_expert_tensor(s.name)),
                "internal error: Muon matrix ", s.name, " is neither 2-D nor an expert tensor");
    // A matrix split by columns arrives as the tp ranks' column shards one after the other.
    // (With split_blocks > 1, attn.c_proj under grouped-query attention, that is the matrix with
    // its columns permuted, as a row split with blocks gathers c_attn with its rows permuted.
    // Newton-Schulz commutes with both: X Xᵀ, and so the iteration's polynomial, is invariant
    // under a column permutation P, NS(X P) = NS(X) P, and NS(P X) = P NS(X); each rank takes
    // back its own rows or columns.)
    MuonMatrix m;
    m.spec = i;
    m.rows = s.shape[dims - 2];
    m.cols = s.shape[dims - 1];
    m.split = s.split_axis >= 0;
    m.by_columns = s.split_axis == int(dims) - 1;
    m.expert_parallel = s.expert_parallel;
    const int64_t count = dims == 3 ? s.local[0] : 1;  // this rank's experts
    m.numel = s.numel / size_t(count);
    for (int64_t e = 0; e < count; ++e) {
      m.offset = s.offset + size_t(e) * m.numel;
      out.push_back(m);
    }
  }
  return out;
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
// The scratch for a stage's Muon matrices (muon_matrices), sized for every one of them (the same on
// every rank of a stage, as the run plan counts it): the largest gathered matrix (x, y), the
// largest min(m, n)² (a, a2), and with dp > 1 the largest local shard (send, and dp of them
// received).
struct Scratch {
  size_t gathered = 0, square = 0, shard = 0;
  size_t floats(int dp) const {
    if (gathered == 0) return 0;
    return 2 * gathered + 2 * square + (dp > 1 ? shard * size_t(1 + dp) : 0);
  }
};

Scratch scratch_of(const std::vector<MuonMatrix>& matrices, int tp) {
  Scratch s;
  for (const MuonMatrix& m : matrices) {
    s.gathered = std::max(s.gathered, m.split ? m.numel * size_t(tp) : m.numel);
    const size_t k = size_t(std::min(m.rows, m.cols));
    s.square = std::max(s.square, k * k);
    s.shard = std::max(s.shard, m.numel);
  }
  return s;
}
}  // namespace

std::vector<MuonRound> muon_rounds(const std::vector<MuonMatrix>& matrices, int dp, int expert_dp) {
  std::vector<MuonRound> rounds;
  auto add = [&](bool experts, int size) {
    std::vector<size_t> order;
    for (size_t i = 0; i < matrices.size(); ++i)
      if (expert_dp <= 0 || matrices[i].expert_parallel == experts) order.push_back(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return matrices[a].numel > matrices[b].numel; });
    for (size_t i = 0; i < order.size(); i += size_t(size)) {
      MuonRound r;
      r.experts = experts;
      for (size_t j = i; j < std::min(order.size(), i + size_t(size)); ++j)
        r.matrices.push_back(order[j]);
      r.count = matrices[r.matrices.front()].numel;
      rounds.push_back(std::move(r));
    }
  };
  add(false, dp);
  if (expert_dp > 0) add(true, expert_dp);
  return rounds;
}

size_t MuonMatrices::scratch_floats(const std::vector<ParamSpec>& specs, int tp, int dp) {
  return scratch_of(muon_matrices(specs), tp).floats(dp);
}

MuonMatrices::MuonMatrices(const OptimConfig& cfg, const std::vector<ParamSpec>& specs,
                           size_t begin, size_t end, Backend& be, Comm* dp, Comm* tp,
                           bool zero_slice, Comm* expert_dp)
    : cfg_(cfg),
      begin_(begin),
      end_(end),
      be_(be),
      dp_(dp),
      tp_(tp),
      zero_slice_(zero_slice),
      expert_dp_(expert_dp) {
  const int tps = tp != nullptr ? tp->size() : 1, dps = dp != nullptr ? dp->size() : 1;
  TRIAD_CHECK(!zero_slice || dps > 1 || begin == 0, "internal error: a ZeRO slice needs its group");
  TRIAD_CHECK(!zero_slice || expert_dp == nullptr,
              "internal error: a ZeRO slice's experts have an optimizer of their own");
  TRIAD_CHECK(expert_dp == nullptr || expert_dp->size() <= dps,
              "internal error: more expert replicas than data-parallel ranks");
  const std::vector<MuonMatrix> list = muon_matrices(specs);
  for (const MuonMatrix& m : list) {
    TRIAD_CHECK(!m.expert_parallel || expert_dp != nullptr || zero_slice || dps == 1,
                "internal error: the data-parallel group would share out expert ",
                specs[m.spec].name, "'s matrices, whose peers hold other experts");
    TRIAD_CHECK(!m.split || (m.by_columns ? m.cols : m.rows) % tps == 0,
                "internal error: Muon matrix ", specs[m.spec].name, " does not split over tp");
    const size_t lo = std::max(begin_, m.offset), hi = std::min(end_, m.offset + m.numel);
    matrices_.push_back(
        Matrix{m, lo, std::max(lo, hi), float(muon_lr_scale(cfg.muon_adjust_lr, m.rows, m.cols))});
    if (lo < hi) runs_.push_back({lo - begin_, hi - begin_, float(cfg.weight_decay)});
  }
  // Runs of adjacent experts' matrices stay apart: the momentum pass does not mind.
  std::sort(
      runs_.begin(), runs_.end(),
      [](const Backend::UpdateRun& a, const Backend::UpdateRun& b) { return a.begin < b.begin; });
  rounds_ = muon_rounds(list, dps, expert_dp != nullptr ? expert_dp->size() : 0);
  const Scratch sc = scratch_of(list, tps);
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

const float* MuonMatrices::orthogonalize(const Matrix& mtx) {
  const MuonMatrix& m = mtx.m;
  const int tps = tp_ != nullptr ? tp_->size() : 1;
  const bool split = m.split && tps > 1;
  const int steps = cfg_.muon_ns_steps;
  if (split && m.by_columns && m.rows > m.cols) {
    // Tall and gathered as column blocks: NS runs on Xᵀ, which wants X row by row. Lay the
    // blocks out as [rows, cols] in y_, orthogonalize there (x_ the scratch), and take this
    // rank's columns back into x_.
    const size_t nb = size_t(m.cols) / size_t(tps), rows = size_t(m.rows), cols = size_t(m.cols);
    for (int b = 0; b < tps; ++b)
      be_.copy_rows(y_ + size_t(b) * nb, cols, x_ + size_t(b) * m.numel, nb, rows, nb);
    newton_schulz(be_, y_, x_, a_, a2_, m.rows, m.cols, 1, steps);
    be_.copy_rows(x_, nb, y_ + size_t(tp_->rank()) * nb, cols, rows, nb);
    return x_;
  }
  newton_schulz(be_, x_, y_, a_, a2_, m.rows, m.cols, split && m.by_columns ? tps : 1, steps);
  return x_ + (split ? size_t(tp_->rank()) * m.numel : 0);
}

void MuonMatrices::update(float* params, const float* grads, float* momentum, float* u, double lr,
                          bf16_t* copy, float grad_scale) {
  for (const auto& r : runs_)
    be_.muon_momentum(momentum + r.begin, u + r.begin, grads + r.begin, r.end - r.begin,
                      float(cfg_.muon_momentum), cfg_.muon_nesterov, grad_scale);
  const int tps = tp_ != nullptr ? tp_->size() : 1;
  for (const auto& round : rounds_) {
    // The group sharing the round out: the data-parallel one, or the expert replicas.
    Comm* group = round.experts ? expert_dp_ : dp_;
    const int dps = group != nullptr ? group->size() : 1;
    const bool sliced = zero_slice_ && dps > 1;
    const int k = dps > 1 ? group->rank() : 0;
    // This rank's matrix of the round, if the round has one for it; split: its tp shards are
    // gathered into x_ for NS, so its own shard must wait elsewhere (y_).
    const Matrix* mtx =
        size_t(k) < round.matrices.size() ? &matrices_[round.matrices[size_t(k)]] : nullptr;
    const bool split = mtx != nullptr && tps > 1 && mtx->m.split;
    float* mine_at = split ? y_ : x_;
    // Its u, whole on this rank. Under ZeRO one all-to-all per round: every rank sends the rank
    // that orthogonalizes each matrix of the round the piece of its u that its slice holds (packed
    // in rank order in recv_, free until the results come), and rank k receives its own matrix,
    // whose pieces in rank order are its elements in order, straight into Newton–Schulz's
    // scratch: no stage needs a whole buffer for it, and each piece travels to one rank only.
    const float* mine = nullptr;
    if (sliced) {
      const size_t slice = end_ - begin_;
      TRIAD_ASSERT(begin_ == size_t(k) * slice);
      std::vector<size_t> send_bytes(size_t(dps), 0), recv_bytes(size_t(dps), 0);
      size_t packed = 0;
      for (size_t i = 0; i < round.matrices.size(); ++i) {
        const Matrix& mx = matrices_[round.matrices[i]];
        if (mx.hi > mx.lo) be_.copy(recv_ + packed, u + (mx.lo - begin_), mx.hi - mx.lo);
        send_bytes[i] = (mx.hi - mx.lo) * sizeof(float);
        packed += mx.hi - mx.lo;
      }
      if (mtx != nullptr) {
        const std::vector<size_t> pieces =
            slice_pieces(mtx->m.offset, mtx->m.offset + mtx->m.numel, slice, dps);
        for (int r = 0; r < dps; ++r) recv_bytes[size_t(r)] = pieces[size_t(r)] * sizeof(float);
      }
      group->all_to_all(recv_, send_bytes, mine_at, recv_bytes);
      mine = mtx != nullptr ? mine_at : nullptr;
    } else if (mtx != nullptr) {
      mine = u + (mtx->m.offset - begin_);
    }
    // The whole matrix's NS, and this rank's tp shard of the result.
    const float* own = nullptr;
    if (mtx != nullptr) {
      if (split)
        tp_->all_gather(mine, x_, mtx->m.numel);
      else if (mine != x_)
        be_.copy(x_, mine, mtx->m.numel);
      own = orthogonalize(*mtx);
      if (dps > 1) be_.copy(send_, own, mtx->m.numel);
    }
    // Round matrix i's shard of O at results + i·stride.
    const float* results = own;
    size_t stride = 0;
    if (dps > 1) {
      group->all_gather(send_, recv_, round.count);
      results = recv_;
      stride = round.count;
    }
    for (size_t i = 0; i < round.matrices.size(); ++i) {
      const Matrix& mx = matrices_[round.matrices[i]];
      if (mx.lo >= mx.hi) continue;  // none of its elements in [begin, end)
      const float* o = results + i * stride + (mx.lo - mx.m.offset);
      be_.muon_apply(params + (mx.lo - begin_), o, mx.hi - mx.lo, float(lr),
                     float(cfg_.weight_decay), mx.scale,
                     copy != nullptr ? copy + (mx.lo - begin_) : nullptr);
    }
  }
}

}  // namespace triad
