// Muon (momentum orthogonalized by Newton–Schulz, torch.optim.Muon's semantics) for the hidden
// layers' weight matrices; the Optimizer (optimizer.h) runs AdamW on every other tensor.
//
// Per matrix W [m, n] and step: buf = mu buf + g;  u = g + mu buf (Nesterov) or buf;
// O = NS_k(u): X = u / max(‖u‖_F, 1e-7), then k times X = a X + (b A + c A²) X with A = X Xᵀ
// (computed on Xᵀ when m > n), (a, b, c) = (3.4445, −4.7750, 2.0315);
// W = W (1 − lr wd) − lr · s · O with s = sqrt(max(1, m/n)) (original) or 0.2 sqrt(max(m, n))
// (match_rms_adamw).
//
// NS needs the whole matrix. Under tensor parallelism each rank gathers the tp shards of u (its
// rank's rows or columns) and runs NS on the whole (every rank the same work; a matrix split by
// rows is gathered in a row order of its own, which NS does not mind: it commutes with row and
// column permutations). Under ZeRO-1 the data-parallel slices of u are gathered first. Each rank
// then applies O to the part of W it updates.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/parallel/comm.h"
#include "triad/train/config.h"

namespace triad {

// The tensors Muon updates: the weight matrices of attention and MLP (c_attn, c_proj, c_fc).
// Embeddings (wte, wpe, also the tied head), LayerNorms and biases stay with AdamW.
bool muon_updates(const std::string& name);

// Newton–Schulz in place on the matrix X [m, n] held as `blocks` column blocks of [m, n/blocks]
// one after the other (blocks > 1: the column shards of a matrix split by columns). y is
// scratch of m·n floats, a and a2 of min(m, n)² each. A matrix with m > n is one block.
void newton_schulz(Backend& be, float* x, float* y, float* a, float* a2, int64_t m, int64_t n,
                   int blocks, int steps);

// The learning-rate factor s of a [rows, cols] matrix (optim.muon_adjust_lr).
double muon_lr_scale(const std::string& adjust, int64_t rows, int64_t cols);

class MuonMatrices {
 public:
  // The matrices of `specs` (one rank's layout) with elements inside [begin, end) of the
  // parameter buffer. dp: the data-parallel group when [begin, end) is this rank's ZeRO slice
  // (else nullptr); tp: the tensor-parallel group (nullptr or size 1: whole matrices).
  MuonMatrices(const OptimConfig& cfg, const std::vector<ParamSpec>& specs, size_t begin,
               size_t end, Backend& be, Comm* dp, Comm* tp);
  ~MuonMatrices();
  MuonMatrices(const MuonMatrices&) = delete;
  MuonMatrices& operator=(const MuonMatrices&) = delete;

  // The parts of [begin, end) it updates, relative to begin, sorted.
  const std::vector<Backend::UpdateRun>& runs() const { return runs_; }

  // One step with learning rate lr. grads, momentum and u hold the range [begin, end) (u is
  // scratch shaped like it). params and copy (bf16, may be null) are whole buffers. workspace:
  // a whole parameter buffer's worth of floats that may be overwritten (needed with dp).
  void update(float* params, const float* grads, float* momentum, float* u, double lr, bf16_t* copy,
              float grad_scale, float* workspace);

  // Floats of scratch it allocates for these specs at tensor-parallel size tp (the run plan).
  static size_t scratch_floats(const std::vector<ParamSpec>& specs, int tp);

 private:
  struct Matrix {
    const ParamSpec* spec;
    size_t lo, hi;  // its elements inside [begin, end), as buffer offsets
    int blocks;     // column blocks of the gathered matrix
    float scale;    // muon_lr_scale
  };
  OptimConfig cfg_;
  size_t begin_, end_;
  Backend& be_;
  Comm* dp_;
  Comm* tp_;
  std::vector<ParamSpec> specs_;
  std::vector<Matrix> matrices_;
  std::vector<Backend::UpdateRun> runs_;
  float *x_ = nullptr, *y_ = nullptr, *a_ = nullptr, *a2_ = nullptr;
};

}  // namespace triad
