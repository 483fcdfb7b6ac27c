// Multi-head latent attention (GptShape::mla; DeepSeek-V2's MLA) as the layers train it: the
// latents and their up-projections form every head's q, k and v, assembled into the q|k|v rows
// c_attn would give, so that the rotation, the attention (every kernel, context parallelism, the
// key/value cache of generation) and c_proj run as for any multi-head attention. A head's q and
// k are [rope | nope]: the first qk_rope_head_dim values rotate (GptShape::rotary_dim), k's
// being the rotated key every head shares; heads are hd() = max(q·k's width, v's) wide, the
// narrower part zero (adding nothing to a score or an output), and the scores scaled by
// 1/sqrt(q·k's width) (GptShape::scores_scale).
//
// Under tensor parallelism each rank holds its heads' rows of q_b and kv_b (column-parallel) and
// c_proj's matching input columns; q_a, kv_a and the latents' norms are replicated, every rank
// forming the same latents from all rows (ln_1's output gathered, as c_attn reads it). In the
// backward pass the latents' gradients (partial sums over the heads) and the shared key's are
// all-reduced over the group, so the replicated weights' gradients come out alike on every rank
// and ln_1's gradient through them is added once, on the group's rank 0.
//
// Under run.fp8 the four projections (q_a, q_b, kv_a, kv_b) are the layer's c_attn site: each an
// FP8 product at its operands' tensorwise scales (gpt_fp8.cpp), the replicated ones' amax alike
// on every rank of the group; every rank takes part in each product's amax reduction, also where
// it forms neither of a replicated projection's gradients.
//
// The rows move as 32-bit words (bf16 in pairs: every MLA size is even, config_validate.cpp).
#include "gpt_activations.h"
#include "triad/model/gpt.h"

namespace triad {

template <class A>
void Gpt::mla_project(typename Set<A>::Layer& L, int l, A* dst, const A* ln1,
                      const LayerTensors<const A>& w, int N) {
  auto& a = acts<A>();
  const int C = shape_.n_embd, NHl = shape_.n_head / mp_.tp, hd = shape_.hd();
  const int dq = shape_.mla_qk_dim(), dn = shape_.qk_nope_head_dim, dr = shape_.qk_rope_head_dim;
  const int dv = shape_.v_head_dim, rq = shape_.q_lora_rank, rkv = shape_.kv_lora_rank;
  const float eps = shape_.latent_norm_eps();
  auto w32 = [](size_t n) { return word_count<A>(n); };
  const int site = fp8_site(l, 0);
  // Queries: from the token, or from its normalized latent.
  const A* q_in = ln1;
  if (rq > 0) {
    linear_forward<A>(site, L.mla_cq, ln1, w.mqaw, nullptr, N, C, rq);
    be_.layernorm_forward(a.mla_cqn, nullptr, L.mla_cq_rstd, L.mla_cq, w.mqanw, nullptr, N, rq,
                          eps);
    q_in = a.mla_cqn;
  }
  linear_forward<A>(site, a.mla_q, q_in, w.mqbw, nullptr, N, rq > 0 ? rq : C, NHl * dq);
  // [latent | rotated key], the latent normalized, then each head's k values and v.
  linear_forward<A>(site, a.mla_ckv, ln1, w.mkvaw, nullptr, N, C, rkv + dr);
  be_.copy_rows(words(L.mla_lat), w32(rkv), words(a.mla_ckv), w32(rkv + dr), size_t(N), w32(rkv));
  be_.layernorm_forward(a.mla_latn, nullptr, L.mla_lat_rstd, L.mla_lat, w.mkvanw, nullptr, N, rkv,
                        eps);
  linear_forward<A>(site, a.mla_kv, a.mla_latn, w.mkvbw, nullptr, N, rkv, NHl * (dn + dv));
  // The q|k|v rows: head h of q at h·hd, of k at (NHl + h)·hd, of v at (2·NHl + h)·hd.
  const size_t row = size_t(3) * NHl * hd, kv_row = size_t(NHl) * (dn + dv);
  if (dq < hd || dv < hd) be_.zero(dst, size_t(N) * row);
  for (int h = 0; h < NHl; ++h) {
    A* q = dst + size_t(h) * hd;
    A* k = dst + size_t(NHl + h) * hd;
    A* v = dst + size_t(2 * NHl + h) * hd;
    be_.copy_rows(words(q), w32(row), words(a.mla_q + size_t(h) * dq), w32(size_t(NHl) * dq),
                  size_t(N), w32(dq));
    be_.copy_rows(words(k), w32(row), words(a.mla_ckv + rkv), w32(rkv + dr), size_t(N), w32(dr));
    const A* head_kv = a.mla_kv + size_t(h) * (dn + dv);
    if (dn > 0)
      be_.copy_rows(words(k + dr), w32(row), words(head_kv), w32(kv_row), size_t(N), w32(dn));
    be_.copy_rows(words(v), w32(row), words(head_kv + dn), w32(kv_row), size_t(N), w32(dv));
  }
}

template <class A>
const A* Gpt::mla_output(const A* atty, int N) {
  A* out = acts<A>().mla_o;
  const size_t hd = size_t(shape_.hd()), dv = size_t(shape_.v_head_dim);
  const size_t heads = size_t(N) * size_t(shape_.n_head / mp_.tp);
  // Rows of one head each: [N·NHl, hd] → [N·NHl, dv].
  be_.copy_rows(words(out), word_count<A>(dv), words(atty), word_count<A>(hd), heads,
                word_count<A>(dv));
  return out;
}

template <class A>
void Gpt::mla_backward(typename Set<A>::Layer& L, int l, A* dpart, const LayerTensors<float>& g,
                       const A* dqkv, const A* ln1, const LayerTensors<const A>& w, int N,
                       GradMode mode, bool split) {
  constexpr GradMode kSet = GradMode::overwrite;
  auto& a = acts<A>();
  const int C = shape_.n_embd, NHl = shape_.n_head / mp_.tp, hd = shape_.hd();
  const int dq = shape_.mla_qk_dim(), dn = shape_.qk_nope_head_dim, dr = shape_.qk_rope_head_dim;
  const int dv = shape_.v_head_dim, rq = shape_.q_lora_rank, rkv = shape_.kv_lora_rank;
  const float eps = shape_.latent_norm_eps();
  const size_t n = size_t(N);
  auto w32 = [](size_t k) { return word_count<A>(k); };
  const int site = fp8_site(l, 0);
  const bool fp8 = fp8_at(site, N);  // (every rank runs each product: its amax is collective)
  // Split: the matrices' gradients wait for mla_weights, which reads the products' output
  // gradients from L; else they come here and the output gradients go through the scratch.
  float* const gqa = split ? nullptr : g.mqaw;
  float* const gqb = split ? nullptr : g.mqbw;
  float* const gkva = split ? nullptr : g.mkvaw;
  float* const gkvb = split ? nullptr : g.mkvbw;
  // Each head's q, k and v gradients out of the rows (into q_b's and kv_b's output buffers);
  // the shared rotated key's summed over the heads, then over the group's.
  const size_t row = size_t(3) * NHl * hd, kv_row = size_t(NHl) * (dn + dv);
  A* dq_all = split ? L.mla_dq : a.mla_q;
  A* dkv_all = split ? L.mla_dkv : a.mla_kv;
  for (int h = 0; h < NHl; ++h) {
    const A* q = dqkv + size_t(h) * hd;
    const A* k = dqkv + size_t(NHl + h) * hd;
    const A* v = dqkv + size_t(2 * NHl + h) * hd;
    be_.copy_rows(words(dq_all + size_t(h) * dq), w32(size_t(NHl) * dq), words(q), w32(row), n,
                  w32(dq));
    A* head_kv = dkv_all + size_t(h) * (dn + dv);
    if (dn > 0) be_.copy_rows(words(head_kv), w32(kv_row), words(k + dr), w32(row), n, w32(dn));
    be_.copy_rows(words(head_kv + dn), w32(kv_row), words(v), w32(row), n, w32(dv));
    be_.copy_rows(words(h == 0 ? a.mla_dkpe : a.mla_tmp), w32(dr), words(k), w32(row), n, w32(dr));
    if (h > 0) be_.accumulate(a.mla_dkpe, a.mla_tmp, n * dr);
  }
  tp_all_reduce(a.mla_dkpe, n * dr);
  // kv_b (its input, the normalized latent, formed again), the latent's norm, kv_a's output.
  be_.layernorm_forward(a.mla_latn, nullptr, L.mla_lat_rstd, L.mla_lat, w.mkvanw, nullptr, N, rkv,
                        eps);
  linear_backward<A>(site, a.mla_dlatn, gkvb, nullptr, dkv_all, a.mla_latn, w.mkvbw, N, rkv,
                     NHl * (dn + dv), kSet);
  tp_all_reduce(a.mla_dlatn, n * rkv);
  be_.zero(a.mla_dlat, n * rkv);  // (the norm's backward adds to its input's gradient)
  be_.layernorm_backward(a.mla_dlat, g.mkvanw, nullptr, a.mla_dlatn, L.mla_lat, w.mkvanw, nullptr,
                         L.mla_lat_rstd, N, rkv);
  A* dckv = split ? L.mla_dckv : a.mla_ckv;  // [latent | rotated key]'s gradient
  be_.copy_rows(words(dckv), w32(rkv + dr), words(a.mla_dlat), w32(rkv), n, w32(rkv));
  be_.copy_rows(words(dckv + rkv), w32(rkv + dr), words(a.mla_dkpe), w32(dr), n, w32(dr));
  // ln_1's gradient through the replicated projections once over the group: on its rank 0.
  A* once = mp_.tp_rank == 0 ? dpart : nullptr;
  bool written = false;  // whether dpart holds this pass's gradient yet (else `mode` applies)
  if (rq > 0) {
    be_.layernorm_forward(a.mla_cqn, nullptr, L.mla_cq_rstd, L.mla_cq, w.mqanw, nullptr, N, rq,
                          eps);
    linear_backward<A>(site, a.mla_dcqn, gqb, nullptr, dq_all, a.mla_cqn, w.mqbw, N, rq, NHl * dq,
                       kSet);
    tp_all_reduce(a.mla_dcqn, n * size_t(rq));
    A* dcq = split ? L.mla_dcq : a.mla_dcq;
    be_.zero(dcq, n * size_t(rq));
    be_.layernorm_backward(dcq, g.mqanw, nullptr, a.mla_dcqn, L.mla_cq, w.mqanw, nullptr,
                           L.mla_cq_rstd, N, rq);
    if (once != nullptr || gqa != nullptr || fp8)
      linear_backward<A>(site, once, gqa, nullptr, dcq, ln1, w.mqaw, N, C, rq, mode);
    written = once != nullptr;
  } else {
    // q_b reads the token: column-parallel, its input gradient partial sums on every rank.
    linear_backward<A>(site, dpart, gqb, nullptr, dq_all, ln1, w.mqbw, N, C, NHl * dq, mode);
    written = true;
  }
  if (!written && mode == kSet) be_.zero(dpart, n * size_t(C));  // (ranks > 0: nothing of q's)
  if (once != nullptr || gkva != nullptr || fp8)
    linear_backward<A>(site, once, gkva, nullptr, dckv, ln1, w.mkvaw, N, C, rkv + dr,
                       written || mode != kSet ? GradMode::accumulate : kSet);
}

// The weight pass of a split backward: the four products' weight gradients from the output
// gradients mla_backward left in L and their inputs (the latents normalized again from L), the
// same products on the same values as an unsplit backward's.
template <class A>
void Gpt::mla_weights(typename Set<A>::Layer& L, int l, const LayerTensors<float>& g, const A* ln1,
                      const LayerTensors<const A>& w, int N) {
  auto& a = acts<A>();
  const int C = shape_.n_embd, NHl = shape_.n_head / mp_.tp, dq = shape_.mla_qk_dim();
  const int dn = shape_.qk_nope_head_dim, dr = shape_.qk_rope_head_dim, dv = shape_.v_head_dim;
  const int rq = shape_.q_lora_rank, rkv = shape_.kv_lora_rank;
  const float eps = shape_.latent_norm_eps();
  const int site = fp8_site(l, 0);
  const bool fp8 = fp8_at(site, N);  // a frozen matrix's product still joins the amax reduction
  auto weight_grad = [&](float* dw, const A* dout, const A* inp, const A* wt, int IC, int OC) {
    if (dw != nullptr || fp8)
      linear_backward<A>(site, nullptr, dw, nullptr, dout, inp, wt, N, IC, OC);
  };
  // In mla_backward's order: kv_b, q_b, q_a, kv_a.
  be_.layernorm_forward(a.mla_latn, nullptr, L.mla_lat_rstd, L.mla_lat, w.mkvanw, nullptr, N, rkv,
                        eps);
  weight_grad(g.mkvbw, L.mla_dkv, a.mla_latn, w.mkvbw, rkv, NHl * (dn + dv));
  if (rq > 0) {
    be_.layernorm_forward(a.mla_cqn, nullptr, L.mla_cq_rstd, L.mla_cq, w.mqanw, nullptr, N, rq,
                          eps);
    weight_grad(g.mqbw, L.mla_dq, a.mla_cqn, w.mqbw, rq, NHl * dq);
    weight_grad(g.mqaw, L.mla_dcq, ln1, w.mqaw, C, rq);
  } else {
    weight_grad(g.mqbw, L.mla_dq, ln1, w.mqbw, C, NHl * dq);
  }
  weight_grad(g.mkvaw, L.mla_dckv, ln1, w.mkvaw, C, rkv + dr);
}

#define TRIAD_MLA(A)                                                                           \
  template void Gpt::mla_project<A>(Set<A>::Layer&, int, A*, const A*,                         \
                                    const LayerTensors<const A>&, int);                        \
  template const A* Gpt::mla_output<A>(const A*, int);                                         \
  template void Gpt::mla_backward<A>(Set<A>::Layer&, int, A*, const LayerTensors<float>&,      \
                                     const A*, const A*, const LayerTensors<const A>&, int,    \
                                     GradMode, bool);                                          \
  template void Gpt::mla_weights<A>(Set<A>::Layer&, int, const LayerTensors<float>&, const A*, \
                                    const LayerTensors<const A>&, int);
TRIAD_MLA(float)
TRIAD_MLA(bf16_t)
#undef TRIAD_MLA

}  // namespace triad
