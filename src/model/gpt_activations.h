// The activation plan of the GPT (private to src/model): every buffer the forward pass keeps
// for the backward pass, and the scratch the backward pass needs, carved out of ONE backend
// allocation sized for the largest micro-batch. Nothing is allocated in the step loop.
//
// A rank holds one or more chunks of layers (pipeline stages, virtual stages). Each chunk has
// `slots` activation sets, one per micro-batch the pipeline schedule keeps in flight on it;
// the backward scratch is shared by all. Widths are this rank's tensor-parallel shards:
// attention C/tp, MLP 4C/tp, vocabulary Vp/tp; the residual stream is full width C.
#pragma once

#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"

namespace triad {

struct Gpt::Set {
  struct Layer {
    float *ln1, *ln1_mean, *ln1_rstd;  // ln_1(x)
    float *ln1g, *ln2g;                // the same over all rows (sequence parallel; else aliases)
    float *qkv, *att, *atty;           // attention internals (local heads)
    float* attproj;                    // c_proj output (shared scratch: forward only)
    float* residual2;                  // x + attn
    float *ln2, *ln2_mean, *ln2_rstd;  // ln_2(residual2)
    float *fch, *fch_gelu, *fcproj;    // MLP (local hidden units; fcproj shared like attproj)
    float* residual3;                  // residual2 + mlp: the layer's output
  };
  float* input = nullptr;  // the chunk's input: wte[tok] + wpe[pos], or received
  std::vector<Layer> layers;
  // Last chunk only: final LayerNorm and this rank's slice of the logits (dlogits in place).
  float *lnf = nullptr, *lnf_mean = nullptr, *lnf_rstd = nullptr, *logits = nullptr;
  float* lnfg = nullptr;  // ln_f over all rows (sequence parallel; else an alias of lnf)
  float *losses = nullptr, *correct = nullptr;
  const float* output() const { return layers.empty() ? input : layers.back().residual3; }
};

struct Gpt::Activations {
  std::vector<std::vector<Set>> sets;  // [local chunk][slot]
  // Backward scratch, reused by every layer of every chunk.
  float *dresidual, *dln, *datty, *dqkv, *datt_scratch, *dfch, *dfch_gelu;
  float* ce_stats;  // [4·B·T]: vocabulary-parallel cross-entropy row statistics
  // Sequence parallel: partial sums over all rows before a reduce-scatter, gathered gradients,
  // and one LayerNorm's weight and bias gradients before their all-reduce.
  float *full = nullptr, *ln_grads = nullptr;
  float *proj = nullptr, *ln_local = nullptr;
  std::vector<float*> grad_sends;  // outgoing gradients of a pipeline step, one per send

  Activations(const GptShape& s, const ModelParallel& mp, int B, const std::vector<int>& slots,
              int n_grad_sends, Backend& be)
      : be_(be) {
    const size_t BT = size_t(B) * s.seq_len, C = s.n_embd;
    const bool sp = mp.split_rows();
    const size_t R = sp ? BT / size_t(mp.tp) : BT;  // rows of the residual stream here
    const size_t Cl = C / size_t(mp.tp), Vl = size_t(s.padded_vocab_size) / size_t(mp.tp);
    const size_t att = size_t(B) * size_t(s.n_head / mp.tp) * s.seq_len * s.seq_len;
    const int per_chunk = mp.layers_per_chunk(s.n_layer);
    std::vector<std::pair<float**, size_t>> plan;
    auto want = [&plan](float*& p, size_t n) { plan.emplace_back(&p, n); };
    sets.resize(slots.size());
    for (size_t c = 0; c < slots.size(); ++c) {
      const bool last = mp.global_chunk(int(c)) == mp.chunks() - 1;
      sets[c].resize(size_t(slots[c]));
      for (auto& S : sets[c]) {
        want(S.input, R * C);
        S.layers.resize(size_t(per_chunk));
        for (auto& L : S.layers) {
          if (!sp) want(L.ln1, R * C);  // backward reads it (as ln1g)
          want(L.ln1_mean, R);
          want(L.ln1_rstd, R);
          want(L.qkv, BT * 3 * Cl);
          want(L.att, att);
          want(L.atty, BT * Cl);
          want(L.residual2, R * C);
          if (!sp) want(L.ln2, R * C);
          want(L.ln2_mean, R);
          want(L.ln2_rstd, R);
          want(L.fch, BT * 4 * Cl);
          want(L.fch_gelu, BT * 4 * Cl);
          want(L.residual3, R * C);
          if (sp) {
            want(L.ln1g, BT * C);
            want(L.ln2g, BT * C);
          }
        }
        if (last) {
          if (!sp) want(S.lnf, R * C);
          want(S.lnf_mean, R);
          want(S.lnf_rstd, R);
          want(S.logits, BT * Vl);
          want(S.losses, BT);
          want(S.correct, BT);
          if (sp) want(S.lnfg, BT * C);
        }
      }
    }
    want(dresidual, R * C);
    want(dln, BT * C);
    want(datty, BT * Cl);
    want(dqkv, BT * 3 * Cl);
    want(datt_scratch, att);
    want(dfch, BT * 4 * Cl);
    want(dfch_gelu, BT * 4 * Cl);
    want(ce_stats, 4 * BT);
    // Forward-only results shared by every layer: the projections' outputs (consumed by the
    // residual add) and, under sequence parallelism, the local LayerNorm outputs (backward
    // reads the gathered ones).
    want(proj, R * C);
    if (sp) want(ln_local, R * C);
    if (sp) {
      want(full, BT * C);
      want(ln_grads, 2 * C);
    }
    grad_sends.resize(size_t(n_grad_sends));
    for (auto& g : grad_sends) want(g, R * C);
    size_t total = 0;
    for (auto& [p, n] : plan) total += (n + 15) / 16 * 16;
    base_ = be.alloc(total);
    total_ = total;
    size_t off = 0;
    for (auto& [p, n] : plan) {
      *p = base_ + off;
      off += (n + 15) / 16 * 16;
    }
    for (auto& chunk : sets)
      for (auto& S : chunk) {
        for (auto& L : S.layers) {
          L.attproj = L.fcproj = proj;
          if (sp) {
            L.ln1 = L.ln2 = ln_local;
          } else {  // the "over all rows" views are the buffers themselves
            L.ln1g = L.ln1;
            L.ln2g = L.ln2;
          }
        }
        if (sp && S.lnfg) S.lnf = ln_local;
        if (!sp) S.lnfg = S.lnf;
      }
  }
  ~Activations() { be_.free(base_); }
  size_t bytes() const { return total_ * sizeof(float); }

 private:
  Backend& be_;
  float* base_ = nullptr;
  size_t total_ = 0;
};

}  // namespace triad
