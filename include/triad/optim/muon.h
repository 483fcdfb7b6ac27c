// Muon (momentum orthogonalized by Newton–Schulz, torch.optim.Muon's semantics) for the hidden
// layers' weight matrices; the Optimizer (optimizer.h) runs AdamW on every other tensor.
//
// Per matrix W [m, n] and step: buf = mu buf + g;  u = g + mu buf (Nesterov) or buf;
// O = NS_k(u): X = u / max(‖u‖_F, 1e-7), then k times X = a X + (b A + c A²) X with A = X Xᵀ
// (computed on Xᵀ when m > n), (a, b, c) = (3.4445, −4.7750, 2.0315);
// W = W (1 − lr wd) − lr · s · O with s = sqrt(max(1, m/n)) (original) or 0.2 sqrt(max(m, n))
// (match_rms_adamw).
//
// NS needs the whole matrix. Under ZeRO (1, 2 or 3) each round's matrices' u first go to the
// ranks that orthogonalize them, from the data-parallel slices holding their pieces, in one
// all-to-all per round (each piece to one rank: 1/dp of what gathering every matrix on every
// rank would move).
// The data-parallel ranks share the NS work out: the matrices go in rounds of dp (largest
// first), rank k of the dp group takes the k-th of each round, and an all-gather over dp hands
// every rank the results of the round. For its matrix a rank gathers the tp shards of u (its
// tensor-parallel peers, which take the same matrix, do the same) and runs NS on the whole (a
// matrix split by rows is gathered in a row order of its own, which NS does not mind: it
// commutes with row and column permutations; a tall one split by columns is laid out row by row
// first); what it contributes to the all-gather is its own tp shard of O. Each rank then applies
// O to the part of W it updates. A mixture's expert tensor [E, rows, cols] is E matrices; under
// expert parallelism they go in rounds over the expert replicas, which hold the same experts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/parallel/comm.h"
#include "triad/train/config.h"

namespace triad {

// The tensors Muon updates: the weight matrices of attention and MLP (c_attn, c_proj, c_fc), of the
// shared experts (mlp/shared/c_fc, c_proj) and of the routed experts (mlp/experts/c_fc, c_proj:
// [E, rows, cols], each expert's matrix orthogonalized on its own, as each is its own linear
// map). Embeddings (wte, wpe, also the tied head), LayerNorms, biases, the router and the shared
// experts' gate stay with AdamW.
bool muon_updates(const std::string& name);

// Newton–Schulz in place on the matrix X [m, n] held as `blocks` column blocks of [m, n/blocks]
// one after the other (blocks > 1: the column shards of a matrix split by columns). y is
// scratch of m·n floats, a and a2 of min(m, n)² each. A matrix with m > n is one block.
void newton_schulz(Backend& be, float* x, float* y, float* a, float* a2, int64_t m, int64_t n,
                   int blocks, int steps);

// Newton–Schulz FLOPs of `steps` iterations on a [rows, cols] matrix: per iteration
// 4a²b + 2a³ with a = min, b = max (A = XXᵀ, A², B·X).
double newton_schulz_flops(int64_t rows, int64_t cols, int steps);

// The learning-rate factor s of a [rows, cols] matrix (optim.muon_adjust_lr).
double muon_lr_scale(const std::string& adjust, int64_t rows, int64_t cols);

// One matrix Muon orthogonalizes: a 2-D tensor of muon_updates, or one expert's [rows, cols] of
// an expert tensor (this rank's experts, in order).
struct MuonMatrix {
  size_t spec = 0;               // index into the specs
  size_t offset = 0, numel = 0;  // this rank's elements of it in the parameter buffer
  int64_t rows = 0, cols = 0;    // the whole matrix (every tensor-parallel shard)
  bool split = false;            // split over the tensor-parallel group ...
  bool by_columns = false;       // ... along its columns (gathered as column blocks)
  bool expert_parallel = false;  // its spec's experts are this rank's alone (ParamSpec)
};
std::vector<MuonMatrix> muon_matrices(const std::vector<ParamSpec>& specs);

// The rounds in which the data-parallel ranks share out NS (see above): indices into
// muon_matrices(specs), at most dp per round, largest local shard first; `count` is the largest
// local shard of the round (the all-gather's count per rank). expert_dp > 0: the
// expert-parallel matrices go in rounds of their own, of expert_dp (experts true): their
// data-parallel peers hold other experts, and only their expert replicas can share them.
struct MuonRound {
  std::vector<size_t> matrices;
  size_t count = 0;
  bool experts = false;
};
std::vector<MuonRound> muon_rounds(const std::vector<MuonMatrix>& matrices, int dp,
                                   int expert_dp = 0);

class MuonMatrices {
 public:
  // The matrices of `specs` (one rank's layout); it updates their elements inside [begin, end)
  // of the parameter buffer. dp: the data-parallel group (nullptr or size 1: no sharing);
  // zero_slice: [begin, end) is this rank's ZeRO slice (ZeRO-1, 2 or 3: slices of equal length in
  // rank order), the dp group's ranks holding the others; tp: the tensor-parallel group (nullptr or
  // size 1: whole matrices); expert_dp (not with zero_slice): the expert replicas that share the
  // expert-parallel matrices' NS (nullptr: dp shares every matrix, as when the specs hold no
  // expert-parallel tensor).
  MuonMatrices(const OptimConfig& cfg, const std::vector<ParamSpec>& specs, size_t begin,
               size_t end, Backend& be, Comm* dp, Comm* tp, bool zero_slice,
               Comm* expert_dp = nullptr);
  ~MuonMatrices();
  MuonMatrices(const MuonMatrices&) = delete;
  MuonMatrices& operator=(const MuonMatrices&) = delete;

  // The parts of [begin, end) it updates, relative to begin, sorted.
  const std::vector<Backend::UpdateRun>& runs() const { return runs_; }

  // One step with learning rate lr. params, grads, momentum, u (scratch shaped like it) and copy
  // (bf16, may be null) hold the range [begin, end). Under ZeRO (zero_slice) a collective over
  // dp: each round's matrices' u go from the slices to the ranks that orthogonalize them.
  void update(float* params, const float* grads, float* momentum, float* u, double lr, bf16_t* copy,
              float grad_scale);

  // Floats of scratch it allocates for these specs at tensor-parallel size tp and data-parallel
  // size dp (the run plan; an expert_dp is never larger).
  static size_t scratch_floats(const std::vector<ParamSpec>& specs, int tp, int dp);

  // The weight decay of the next updates (optim.weight_decay_schedule).
  void set_weight_decay(double wd) {
    cfg_.weight_decay = wd;
    for (auto& r : runs_) r.wd = float(wd);
  }

 private:
  struct Matrix {
    MuonMatrix m;
    size_t lo, hi;  // its elements inside [begin, end), as buffer offsets (may be empty)
    float scale;    // muon_lr_scale
  };
  // NS of the matrix whose u x_ holds (gathered over tp when split); returns this rank's shard of
  // the result, in x_.
  const float* orthogonalize(const Matrix& mtx);
  OptimConfig cfg_;
  size_t begin_, end_;
  Backend& be_;
  Comm* dp_;
  Comm* tp_;
  bool zero_slice_;
  Comm* expert_dp_;
  std::vector<Matrix> matrices_;  // muon_matrices(specs)
  std::vector<MuonRound> rounds_;
  std::vector<Backend::UpdateRun> runs_;
  float *x_ = nullptr, *y_ = nullptr, *a_ = nullptr, *a2_ = nullptr;
  float *send_ = nullptr, *recv_ = nullptr;  // the rounds' all-gather (dp > 1)
};

}  // namespace triad
