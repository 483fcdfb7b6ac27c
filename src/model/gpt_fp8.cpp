// The blocks' linear layers, with run.fp8's FP8 products (Gpt::set_fp8): where they apply, each
// product takes its operands' tensorwise amax first (the maximum over the tensor- and
// context-parallel ranks, which hold pieces of the activations, gradients and weights), then
// runs through the backend's FP8 ops; elsewhere the backend's bf16/fp32 products.
//
// The amax of the forward's input and weight are taken again in the backward pass rather than
// kept: they are functions of tensors the backward reads anyway (the input kept for the weight
// gradient, the weight), so nothing per micro-batch has to be stored, pipelined or recomputed.
#include <algorithm>
#include <cmath>

#include "triad/core/error.h"
#include "triad/model/gpt.h"

namespace triad {

std::vector<std::string> Gpt::fp8_layer_names(const GptShape& shape) {
  std::vector<std::string> names;
  for (int l = 0; l < shape.n_layer + shape.mtp_depth; ++l)
    for (const char* k : {"attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"})
      names.push_back(layer_name(shape, l) + "/" + k);
  for (int j = 0; j < shape.mtp_depth; ++j)
    names.push_back("mtp/" + std::to_string(j) + "/eh_proj");
  return names;
}

std::vector<std::pair<std::string, int>> Gpt::fp8_widths(const GptShape& s, int tp) {
  std::vector<std::pair<std::string, int>> w = {{"model.n_embd", s.n_embd}};
  if (s.mla()) {
    if (s.q_lora_rank > 0) w.push_back({"model.q_lora_rank", s.q_lora_rank});
    w.push_back({"q_b's outputs n_head·(qk_nope_head_dim + qk_rope_head_dim)",
                 s.n_head * s.mla_qk_dim() / tp});
    w.push_back(
        {"kv_a's outputs kv_lora_rank + qk_rope_head_dim", s.kv_lora_rank + s.qk_rope_head_dim});
    w.push_back({"model.kv_lora_rank", s.kv_lora_rank});
    w.push_back({"kv_b's outputs n_head·(qk_nope_head_dim + v_head_dim)",
                 s.n_head * (s.qk_nope_head_dim + s.v_head_dim) / tp});
    w.push_back({"attn.c_proj's inputs n_head·v_head_dim", s.proj_width() / tp});
  } else {
    w.push_back({"c_attn's outputs", s.qkv_rows() / tp});
    w.push_back({"the attention's width", s.attn_width() / tp});
  }
  w.push_back({"c_fc's outputs", s.fc_rows() / tp});
  w.push_back({"the MLP's hidden units", s.hidden() / tp});
  if (s.moe_dense_hidden > 0) {
    w.push_back({"the dense layers' c_fc outputs", s.dense_fc_rows() / tp});
    w.push_back({"the dense layers' hidden units (model.moe_dense_hidden)", s.dense_hidden() / tp});
  }
  if (s.mtp_depth > 0)  // the multi-token prediction modules' eh_proj (its columns split)
    w.push_back({"eh_proj's inputs 2·n_embd", 2 * s.n_embd / tp});
  w.push_back({"the shared experts' c_fc outputs", s.shared_fc_rows() / tp});
  w.push_back(
      {"the shared experts' hidden units (model.moe_shared_hidden)", s.moe_shared_hidden / tp});
  return w;
}

double Gpt::fp8_product_bytes(double OC, double IC, double N) {
  // As cuda_fp8.cu carves the scratch: the forward's weight [OC, IC] and input [N, IC]; the
  // backward's larger of Wᵀ and the transposed input (its rows padded to 16), then the
  // transposed output gradient; each after the 256 bytes of inverse scales, 256-byte aligned.
  const double Np = std::ceil(N / 16) * 16;
  const auto aligned = [](double b) { return std::ceil(b / 256) * 256; };
  const double forward = aligned(OC * IC) + N * IC;
  const double backward = aligned(std::max(OC * IC, Np * IC)) + Np * OC;
  return 256 + std::max(forward, backward);
}

double Gpt::fp8_operand_bytes(const GptShape& s, int tp, int ep, double rows) {
  tp = std::max(1, tp);
  const double C = s.n_embd;
  double most = 0;
  const auto take = [&](double OC, double IC, double N) {
    most = std::max(most, fp8_product_bytes(OC, IC, N));
  };
  if (s.mla()) {
    const double q_in = s.q_lora_rank > 0 ? s.q_lora_rank : C;
    if (s.q_lora_rank > 0) take(s.q_lora_rank, C, rows);  // q_a, replicated
    take(double(s.n_head) * s.mla_qk_dim() / tp, q_in, rows);
    take(s.kv_lora_rank + s.qk_rope_head_dim, C, rows);  // kv_a, replicated
    take(double(s.n_head) * (s.qk_nope_head_dim + s.v_head_dim) / tp, s.kv_lora_rank, rows);
  } else {
    take(double(s.qkv_rows()) / tp, C, rows);
  }
  take(C, double(s.proj_width()) / tp, rows);      // attn.c_proj
  if (s.mtp_depth > 0) take(C, 2 * C / tp, rows);  // the modules' eh_proj
  if (!s.moe() || s.has_dense_layer(s.n_layer)) {
    take(double(s.dense_fc_rows()) / tp, C, rows);
    take(C, double(s.dense_hidden()) / tp, rows);
  }
  if (s.moe()) {
    const double expert_rows = std::ceil(rows * std::max(1, ep) / 16) * 16;
    take(double(s.fc_rows()) / tp, C, expert_rows);
    take(C, double(s.hidden()) / tp, expert_rows);
    if (s.moe_shared_hidden > 0) {
      take(double(s.shared_fc_rows()) / tp, C, rows);
      take(C, double(s.moe_shared_hidden) / tp, rows);
    }
  }
  return most;
}

void Gpt::set_fp8(bool on, const std::function<bool(const std::string&)>& skip, bool head) {
  const std::vector<std::string> names = fp8_layer_names(shape_);
  // The blocks' sites, then the head's, then the modules' eh_proj (names: after the blocks').
  const size_t blocks = size_t(fp8_head_site());
  fp8_skipped_.assign(names.size() + 1, 0);
  for (size_t i = 0; i < names.size(); ++i)
    fp8_skipped_[i < blocks ? i : i + 1] = skip && skip(names[i]) ? 1 : 0;
  fp8_skipped_[blocks] = head ? 0 : 1;
  if (!on) {
    if (fp8_amax_ != nullptr) be_.free(fp8_amax_);
    fp8_amax_ = nullptr;
    return;
  }
  TRIAD_CHECK(!inference_, "internal error: run.fp8 is for training models");
  for (const auto& [name, w] : fp8_widths(shape_, mp_.tp))
    TRIAD_CHECK(w % 16 == 0, "run.fp8 needs ", name, " (", w,
                mp_.tp > 1 ? " per tensor-parallel rank" : "", ") to be a multiple of 16");
  const size_t floats = fp8_amax_floats(shape_, mp_);
  if (fp8_amax_ != nullptr && fp8_amax_floats_ != floats) {
    be_.free(fp8_amax_);
    fp8_amax_ = nullptr;
  }
  if (fp8_amax_ == nullptr) fp8_amax_ = be_.alloc(floats);
  fp8_amax_floats_ = floats;
}

template <class A>
void Gpt::fp8_amax(const A* inp, size_t ni, const A* w, size_t nw, const A* dout, size_t nd) {
  if (inp != nullptr) be_.absmax(fp8_amax_ + 0, inp, ni);
  if (w != nullptr) be_.absmax(fp8_amax_ + 1, w, nw);
  if (dout != nullptr) be_.absmax(fp8_amax_ + 2, dout, nd);
  // Every rank of a group calls this in the same order (the same layers, the same schedule), so
  // the three floats are reduced together; a slot no one set this time is not read.
  if (mp_.tp > 1) mp_.tp_comm->all_reduce_max(fp8_amax_, 3);
  if (mp_.cp > 1) mp_.cp_comm->all_reduce_max(fp8_amax_, 3);
}

template <class A>
void Gpt::linear_forward(int site, A* out, const A* inp, const A* w, const A* b, int N, int IC,
                         int OC) {
  if (fp8_at(site, N)) {
    fp8_amax<A>(inp, size_t(N) * IC, w, size_t(OC) * IC, nullptr, 0);
    be_.matmul_forward_fp8(out, inp, w, b, N, IC, OC, fp8_amax_);
    return;
  }
  be_.matmul_forward(out, inp, w, b, N, IC, OC);
}

template <class A>
void Gpt::linear_gelu_forward(int site, A* pre, A* out, const A* inp, const A* w, const A* b, int N,
                              int IC, int OC) {
  if (fp8_at(site, N)) {
    linear_forward(site, pre, inp, w, b, N, IC, OC);
    be_.gelu_forward(out, pre, size_t(N) * size_t(OC));
    return;
  }
  be_.matmul_gelu_forward(pre, out, inp, w, b, N, IC, OC);
}

template <class A>
void Gpt::linear_backward(int site, A* dinp, float* dw, float* db, const A* dout, const A* inp,
                          const A* w, int N, int IC, int OC, GradMode mode) {
  if (fp8_at(site, N)) {
    const size_t ni = size_t(N) * IC, nw = size_t(OC) * IC, nd = size_t(N) * OC;
    // The weight's amax on every rank of a group where some rank may form the input gradient
    // and another not (a replicated projection's, added once: gpt_mla.cpp), so that the
    // reduction never combines a stale slot; a rank forming nothing only takes part in it.
    const bool w_amax = dinp != nullptr || mp_.tp > 1;
    fp8_amax<A>(dw != nullptr ? inp : nullptr, ni, w_amax ? w : nullptr, nw, dout, nd);
    if (dinp == nullptr && dw == nullptr && db == nullptr) return;
    be_.matmul_backward_fp8(dinp, dw, db, dout, inp, w, N, IC, OC, fp8_amax_, mode);
    return;
  }
  be_.matmul_backward(dinp, dw, db, dout, inp, w, N, IC, OC, mode);
}

template <class A>
void Gpt::linear_backward_gelu(int site, A* dpre, A* dact, float* dw, float* db, const A* dout,
                               const A* act, const A* pre, const A* w, int N, int IC, int OC,
                               GradMode mode) {
  if (fp8_at(site, N)) {
    linear_backward(site, dact, dw, db, dout, act, w, N, IC, OC, GradMode::overwrite);
    be_.gelu_backward(dpre, pre, dact, size_t(N) * size_t(IC), mode);
    return;
  }
  be_.matmul_backward_gelu(dpre, dact, dw, db, dout, act, pre, w, N, IC, OC, mode);
}

#define TRIAD_LINEAR(A)                                                                          \
  template void Gpt::fp8_amax<A>(const A*, size_t, const A*, size_t, const A*, size_t);          \
  template void Gpt::linear_forward<A>(int, A*, const A*, const A*, const A*, int, int, int);    \
  template void Gpt::linear_gelu_forward<A>(int, A*, A*, const A*, const A*, const A*, int, int, \
                                            int);                                                \
  template void Gpt::linear_backward<A>(int, A*, float*, float*, const A*, const A*, const A*,   \
                                        int, int, int, GradMode);                                \
  template void Gpt::linear_backward_gelu<A>(int, A*, A*, float*, float*, const A*, const A*,    \
                                             const A*, const A*, int, int, int, GradMode);
TRIAD_LINEAR(float)
TRIAD_LINEAR(bf16_t)
#undef TRIAD_LINEAR

}  // namespace triad
