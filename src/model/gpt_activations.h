// The activation plan of the GPT (private to src/model): every buffer the forward pass keeps
// for the backward pass, and the scratch the backward pass needs, carved out of ONE backend
// allocation sized for the largest micro-batch. Nothing is allocated in the step loop.
#pragma once

#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"

namespace triad {

struct Gpt::Activations {
  struct Layer {
    float *ln1, *ln1_mean, *ln1_rstd;  // ln_1(x)
    float *qkv, *att, *atty;           // attention internals
    float* attproj;                    // c_proj output
    float* residual2;                  // x + attn
    float *ln2, *ln2_mean, *ln2_rstd;  // ln_2(residual2)
    float *fch, *fch_gelu, *fcproj;    // MLP
    float* residual3;                  // residual2 + mlp: the layer's output
  };
  float* encoded;  // wte[tok] + wpe[pos]: the first residual
  std::vector<Layer> layers;
  float *lnf, *lnf_mean, *lnf_rstd;
  float* logits;  // [B*T, Vp]; overwritten in place by dlogits
  float *losses, *correct;
  // Backward scratch, reused by every layer.
  float *dresidual, *dln, *datty, *dqkv, *datt_scratch, *dfch, *dfch_gelu;

  Activations(const GptShape& s, int B, Backend& be) : be_(be) {
    const size_t BT = size_t(B) * s.seq_len, C = s.n_embd;
    const size_t att = size_t(B) * s.n_head * s.seq_len * s.seq_len;
    std::vector<std::pair<float**, size_t>> plan;
    auto want = [&plan](float*& p, size_t n) { plan.emplace_back(&p, n); };
    want(encoded, BT * C);
    layers.resize(size_t(s.n_layer));
    for (auto& L : layers) {
      want(L.ln1, BT * C);
      want(L.ln1_mean, BT);
      want(L.ln1_rstd, BT);
      want(L.qkv, BT * 3 * C);
      want(L.att, att);
      want(L.atty, BT * C);
      want(L.attproj, BT * C);
      want(L.residual2, BT * C);
      want(L.ln2, BT * C);
      want(L.ln2_mean, BT);
      want(L.ln2_rstd, BT);
      want(L.fch, BT * 4 * C);
      want(L.fch_gelu, BT * 4 * C);
      want(L.fcproj, BT * C);
      want(L.residual3, BT * C);
    }
    want(lnf, BT * C);
    want(lnf_mean, BT);
    want(lnf_rstd, BT);
    want(logits, BT * size_t(s.padded_vocab_size));
    want(losses, BT);
    want(correct, BT);
    want(dresidual, BT * C);
    want(dln, BT * C);
    want(datty, BT * C);
    want(dqkv, BT * 3 * C);
    want(datt_scratch, att);
    want(dfch, BT * 4 * C);
    want(dfch_gelu, BT * 4 * C);
    size_t total = 0;
    for (auto& [p, n] : plan) total += (n + 15) / 16 * 16;
    base_ = be.alloc(total);
    total_ = total;
    size_t off = 0;
    for (auto& [p, n] : plan) {
      *p = base_ + off;
      off += (n + 15) / 16 * 16;
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
