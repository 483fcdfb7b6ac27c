// Forward and backward of the GPT as a sequence of Backend ops (DESIGN.md §3). Backward ops
// accumulate into their outputs, so the residual-stream gradient flows through one buffer
// (dresidual) that each layer's branches add into.
#include <algorithm>

#include "gpt_activations.h"
#include "triad/core/error.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

// Pointers to one layer's tensors inside a parameter-shaped buffer (weights or gradients).
struct LayerTensors {
  float *ln1w, *ln1b, *qkvw, *qkvb, *projw, *projb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
};

LayerTensors layer_tensors(float* base, const std::vector<ParamSpec>& specs, int l) {
  // Layout: wte, wpe, then 12 tensors per layer in the order of the constructor.
  const size_t i = 2 + size_t(l) * 12;
  auto at = [&](size_t k) { return base + specs[i + k].offset; };
  return {at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10), at(11)};
}

}  // namespace

void Gpt::forward(const int32_t* inputs, int B, int T) {
  TRIAD_ASSERT(B >= 1 && B <= max_batch_ && T >= 1 && T <= shape_.seq_len);
  const int C = shape_.n_embd, NH = shape_.n_head;
  const int N = B * T;
  auto& a = *acts_;
  float* wte = params_ + specs_[0].offset;
  float* wpe = params_ + specs_[1].offset;
  be_.encoder_forward(a.encoded, inputs, wte, wpe, B, T, C);
  const float* x = a.encoded;
  for (int l = 0; l < shape_.n_layer; ++l) {
    auto& L = a.layers[size_t(l)];
    const LayerTensors w = layer_tensors(params_, specs_, l);
    be_.layernorm_forward(L.ln1, L.ln1_mean, L.ln1_rstd, x, w.ln1w, w.ln1b, N, C);
    be_.matmul_forward(L.qkv, L.ln1, w.qkvw, w.qkvb, N, C, 3 * C);
    be_.attention_forward(L.atty, L.att, L.qkv, B, T, C, NH);
    be_.matmul_forward(L.attproj, L.atty, w.projw, w.projb, N, C, C);
    be_.add(L.residual2, x, L.attproj, size_t(N) * C);
    be_.layernorm_forward(L.ln2, L.ln2_mean, L.ln2_rstd, L.residual2, w.ln2w, w.ln2b, N, C);
    be_.matmul_forward(L.fch, L.ln2, w.fcw, w.fcb, N, C, 4 * C);
    be_.gelu_forward(L.fch_gelu, L.fch, size_t(N) * 4 * C);
    be_.matmul_forward(L.fcproj, L.fch_gelu, w.fcprojw, w.fcprojb, N, 4 * C, C);
    be_.add(L.residual3, L.residual2, L.fcproj, size_t(N) * C);
    x = L.residual3;
  }
  const float* lnfw = params_ + specs_[specs_.size() - 2].offset;
  const float* lnfb = params_ + specs_[specs_.size() - 1].offset;
  be_.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, x, lnfw, lnfb, N, C);
}

ForwardStats Gpt::classifier(const int32_t* targets, int B, int T, float dloss_scale) {
  const int N = B * T, C = shape_.n_embd, V = shape_.vocab_size, Vp = shape_.padded_vocab_size;
  auto& a = *acts_;
  const float* wte = params_ + specs_[0].offset;
  be_.matmul_forward(a.logits, a.lnf, wte, nullptr, N, C, Vp);
  be_.crossentropy_forward_backward(a.logits, a.losses, a.correct, targets, N, V, Vp, dloss_scale);
  // Sum on the host in a fixed order (deterministic, independent of threads).
  float* host = host_scratch_.data();  // planned in the constructor: no allocation per step
  be_.copy_to_host(host, a.losses, size_t(N));
  be_.copy_to_host(host + N, a.correct, size_t(N));
  ForwardStats st;
  for (int i = 0; i < N; ++i) st.loss_sum += host[size_t(i)];
  for (int i = 0; i < N; ++i) st.correct += host[size_t(N + i)] > 0.5f ? 1 : 0;
  st.tokens = N;
  return st;
}

void Gpt::backward(const int32_t* inputs, int B, int T) {
  const int C = shape_.n_embd, NH = shape_.n_head, Vp = shape_.padded_vocab_size;
  const int N = B * T;
  const size_t NC = size_t(N) * C;
  auto& a = *acts_;
  const auto& sp = specs_;
  // Classifier (tied head): dlogits already sit in a.logits.
  be_.zero(a.dln, NC);
  be_.matmul_backward(a.dln, grads_ + sp[0].offset, nullptr, a.logits, a.lnf,
                      params_ + sp[0].offset, N, C, Vp);
  const float* x_last = shape_.n_layer > 0 ? a.layers.back().residual3 : a.encoded;
  be_.zero(a.dresidual, NC);
  be_.layernorm_backward(a.dresidual, grads_ + sp[sp.size() - 2].offset,
                         grads_ + sp[sp.size() - 1].offset, a.dln, x_last,
                         params_ + sp[sp.size() - 2].offset, a.lnf_mean, a.lnf_rstd, N, C);
  const size_t layer0 = sp[2].offset, lnf = sp[sp.size() - 2].offset;
  auto layer_begin = [&](int l) {
    return l < shape_.n_layer ? sp[2 + size_t(l) * 12].offset : lnf;
  };
  if (grad_hook_) grad_hook_(lnf, n_floats_ - lnf);
  for (int l = shape_.n_layer - 1; l >= 0; --l) {
    auto& L = a.layers[size_t(l)];
    const LayerTensors w = layer_tensors(params_, specs_, l);
    const LayerTensors g = layer_tensors(grads_, specs_, l);
    const float* x_in = l == 0 ? a.encoded : a.layers[size_t(l - 1)].residual3;
    // MLP branch: residual3 = residual2 + c_proj(gelu(c_fc(ln_2(residual2)))).
    be_.zero(a.dfch_gelu, NC * 4);
    be_.matmul_backward(a.dfch_gelu, g.fcprojw, g.fcprojb, a.dresidual, L.fch_gelu, w.fcprojw, N,
                        4 * C, C);
    be_.zero(a.dfch, NC * 4);
    be_.gelu_backward(a.dfch, L.fch, a.dfch_gelu, NC * 4);
    be_.zero(a.dln, NC);
    be_.matmul_backward(a.dln, g.fcw, g.fcb, a.dfch, L.ln2, w.fcw, N, C, 4 * C);
    be_.layernorm_backward(a.dresidual, g.ln2w, g.ln2b, a.dln, L.residual2, w.ln2w, L.ln2_mean,
                           L.ln2_rstd, N, C);
    // Attention branch: residual2 = x + c_proj(attn(c_attn(ln_1(x)))).
    be_.zero(a.datty, NC);
    be_.matmul_backward(a.datty, g.projw, g.projb, a.dresidual, L.atty, w.projw, N, C, C);
    be_.zero(a.dqkv, NC * 3);
    be_.attention_backward(a.dqkv, a.datt_scratch, a.datty, L.qkv, L.att, B, T, C, NH);
    be_.zero(a.dln, NC);
    be_.matmul_backward(a.dln, g.qkvw, g.qkvb, a.dqkv, L.ln1, w.qkvw, N, C, 3 * C);
    be_.layernorm_backward(a.dresidual, g.ln1w, g.ln1b, a.dln, x_in, w.ln1w, L.ln1_mean, L.ln1_rstd,
                           N, C);
    if (grad_hook_) grad_hook_(layer_begin(l), layer_begin(l + 1) - layer_begin(l));
  }
  be_.encoder_backward(grads_ + sp[0].offset, grads_ + sp[1].offset, a.dresidual, inputs, B, T, C);
  if (grad_hook_) grad_hook_(0, layer0);
}

ForwardStats Gpt::forward_backward(const int32_t* inputs, const int32_t* targets, int B,
                                   float dloss_scale) {
  const int T = shape_.seq_len;
  TRIAD_ASSERT(B >= 1 && B <= max_batch_);
  be_.copy_ints_from_host(d_inputs_, inputs, size_t(B) * T);
  be_.copy_ints_from_host(d_targets_, targets, size_t(B) * T);
  forward(d_inputs_, B, T);
  ForwardStats st = classifier(d_targets_, B, T, dloss_scale);
  backward(d_inputs_, B, T);
  return st;
}

ForwardStats Gpt::evaluate(const int32_t* inputs, const int32_t* targets, int B) {
  const int T = shape_.seq_len;
  TRIAD_ASSERT(B >= 1 && B <= max_batch_);
  be_.copy_ints_from_host(d_inputs_, inputs, size_t(B) * T);
  be_.copy_ints_from_host(d_targets_, targets, size_t(B) * T);
  forward(d_inputs_, B, T);
  return classifier(d_targets_, B, T, 0.0f);
}

void Gpt::forward_logits(const int32_t* inputs, int B, float* host_out) {
  const int T = shape_.seq_len, C = shape_.n_embd, V = shape_.vocab_size;
  const int Vp = shape_.padded_vocab_size;
  be_.copy_ints_from_host(d_inputs_, inputs, size_t(B) * T);
  forward(d_inputs_, B, T);
  auto& a = *acts_;
  be_.matmul_forward(a.logits, a.lnf, params_ + specs_[0].offset, nullptr, B * T, C, Vp);
  std::vector<float> row(size_t(B) * T * Vp);
  be_.copy_to_host(row.data(), a.logits, row.size());
  for (size_t i = 0; i < size_t(B) * T; ++i) std::copy_n(row.data() + i * Vp, V, host_out + i * V);
}

const float* Gpt::next_token_logits(const int32_t* tokens, int len) {
  TRIAD_ASSERT(len >= 1 && len <= shape_.seq_len);
  be_.copy_ints_from_host(d_inputs_, tokens, size_t(len));
  forward(d_inputs_, 1, len);
  const int C = shape_.n_embd, Vp = shape_.padded_vocab_size;
  auto& a = *acts_;
  // Only the last position's logits are needed: one row of the classifier.
  be_.matmul_forward(a.logits, a.lnf + size_t(len - 1) * C, params_ + specs_[0].offset, nullptr, 1,
                     C, Vp);
  be_.copy_to_host(host_scratch_.data(), a.logits, size_t(Vp));
  return host_scratch_.data();
}

}  // namespace triad
