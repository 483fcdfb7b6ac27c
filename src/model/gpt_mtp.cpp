// Multi-token prediction (GptShape::mtp_depth; DeepSeek-V3's MTP modules): after the main loss
// of a micro-batch, each module's forward pass and loss, then their backward passes, on the last
// stage (over this rank's rows: its pieces of the sequences under context parallelism, whose
// attention the blocks' layer code runs as the layers'). Module j predicts target t + j + 1 of row
// t (the token j + 2 ahead of input t) from the previous hidden state and the embedding of input t
// + j + 1; rows whose token is past the sequence's end have no target. The previous hidden state
// is what the head reads: ln_f's output, then module j − 1's own ln_f output (Megatron's and
// DeepSeek-V3's definition, which their released modules were trained with). The modules run at
// once for the micro-batch: their activations are one set reused by every micro-batch, and what
// the layers below need of them joins the head's gradient of ln_f's output, S.dlnf.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "gpt_activations.h"
#include "triad/core/error.h"
#include "triad/model/gpt.h"

namespace triad {

template <class A>
void Gpt::mtp_step(Set<A>& S, const int32_t* inputs, const int32_t* targets, int B, int T,
                   float dloss_scale) {
  const int C = shape_.n_embd, D = shape_.mtp_depth, N = B * T, n = local_rows(N);
  const int Ch = C / mp_.tp;         // this rank's columns of each half of eh_proj's input
  const int whole = shape_.seq_len;  // the sequences' tokens (T of them this rank's rows)
  const size_t nC = size_t(n) * C, stride = size_t(max_batch_) * whole;
  TRIAD_ASSERT(D > 0 && d_mtp_ids_ != nullptr && T == mp_.seq_rows(whole));
  auto& a = acts<A>();
  constexpr GradMode kSet = GradMode::overwrite;
  // Module j's ids: input t + j + 1 (0 past the end: a row without a target, whose output no
  // earlier row reads) and target t + j + 1 of each position t of the whole sequences, then the
  // rows this rank holds (context parallelism: its pieces).
  mtp_host_targets_.resize(size_t(D) * stride);  // (the classifier counts them on the host)
  std::vector<int32_t>& ahead_ids = mtp_ahead_[0];
  std::vector<int32_t>& ahead_targets = mtp_ahead_[1];
  ahead_ids.resize(size_t(B) * whole);
  ahead_targets.resize(size_t(B) * whole);
  for (int j = 0; j < D; ++j) {
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < whole; ++t) {
        const size_t r = size_t(b) * whole + size_t(t), ahead = r + size_t(j) + 1;
        const bool inside = t + j + 1 < whole;
        ahead_ids[r] = inside ? inputs[ahead] : 0;
        ahead_targets[r] = inside ? targets[ahead] : -1;
      }
    int32_t* tgt = mtp_host_targets_.data() + size_t(j) * stride;
    upload_local_ids(cp_local_ids(ahead_ids.data(), 1, B, mtp_local_),
                     d_mtp_ids_ + size_t(j) * stride, N);
    std::copy_n(cp_local_ids(ahead_targets.data(), 1, B, mtp_local_), N, tgt);
    upload_local_ids(tgt, d_mtp_targets_ + size_t(j) * stride, N);
  }
  // The tensors of module j (indices into specs_): ln_e, ln_h (each with a bias where ln_f has
  // one), eh_proj, the block (layer_count of them), its ln_f.
  struct Module {
    int lne, lnh, proj, lnf;
  };
  auto module = [&](int j) {
    const int first = mtp_[size_t(j)], nb = lnf_bias_ ? 2 : 1, l = shape_.mtp_layer(j);
    return Module{first, first + nb, first + 2 * nb, layer_[size_t(l)] + layer_count(l)};
  };
  auto weight = [&](int index) { return weight_at<A>(specs_[size_t(index)].offset); };
  auto bias = [&](int index) { return lnf_bias_ ? weight(index + 1) : nullptr; };
  // The norms' gradients are formed with their input's even where train.freeze names them (as
  // the layers'); a frozen matrix's (eh_proj, wte) are not.
  auto grad = [&](int index) { return grad_at(specs_[size_t(index)].offset); };
  auto bias_grad = [&](int index) { return lnf_bias_ ? grad(index + 1) : nullptr; };
  auto matrix_grad = [&](int index) -> float* {
    return !frozen_.empty() && frozen_[size_t(index)] ? nullptr : grad(index);
  };
  // The embedding: the tied head's wte (or its copy), or wte itself beside an untied head.
  const int wte = shape_.tied ? head_ : wte_;
  TRIAD_ASSERT(wte >= 0);
  const A* wte_w = shape_.tied ? head_weight<A>() : weight(wte);
  auto block_weights = [&](int l) {
    size_t origin = 0;
    const A* base = layer_weight_base<A>(l, &origin);
    return layer_tensors(base, specs_, layer_[size_t(l)], slots(l), origin);
  };
  // The losses are the main loss's kind (no z-loss) at λ/D of its scale.
  struct Restore {
    float& z;
    float was;
    ~Restore() { z = was; }
  } restore{z_loss_, z_loss_};
  z_loss_ = 0.0f;
  const float scale = dloss_scale * mtp_weight_ / float(D);

  // This rank's rows of an ln_f output (held over all rows under sequence parallelism).
  auto own_rows = [&](const A* all) {
    return mp_.split_rows() ? all + size_t(mp_.tp_rank) * nC : all;
  };
  // ---- forward, module by module, each with its loss (and the head's backward) ----
  const A* h = own_rows(S.lnfg);  // the previous hidden state: the model's ln_f output first
  for (int j = 0; j < D; ++j) {
    auto& M = a.mtp[size_t(j)];
    const int l = shape_.mtp_layer(j);
    const auto [lne, lnh, proj, lnf] = module(j);
    const int32_t* ids = d_mtp_ids_ + size_t(j) * stride;
    // The embedding (vocabulary-parallel: each rank its rows' ids, then the reduction).
    A* eout = mp_.split_rows() ? a.full : M.emb;
    be_.encoder_forward(eout, ids, wte_w, nullptr, B, T, C);
    reduce_rows(eout, M.emb, N);
    if (shape_.embed_scale != 1.0f) be_.scale_cap_logits(M.emb, nC, shape_.embed_scale, 0.0f);
    be_.layernorm_forward(M.en, M.en_mean, M.en_rstd, M.emb, weight(lne), bias(lne), n, C,
                          shape_.norm_eps);
    be_.layernorm_forward(M.hn, M.hn_mean, M.hn_rstd, h, weight(lnh), bias(lnh), n, C,
                          shape_.norm_eps);
    // eh_proj's input: this rank's columns of [norm(e) | norm(h)] over all rows.
    const A* halves[2] = {M.en, M.hn};
    for (int k = 0; k < 2; ++k) {
      const A* all = gather_rows(halves[k], a.full, N);
      be_.copy_rows(words(M.cat + size_t(k) * Ch), word_count<A>(2 * size_t(Ch)),
                    words(all + size_t(mp_.tp_rank) * Ch), word_count<A>(size_t(C)), size_t(N),
                    word_count<A>(size_t(Ch)));
    }
    // Row-parallel: partial sums over the group, reduced into this rank's rows.
    A* part = mp_.split_rows() ? a.full : M.in;
    linear_forward(fp8_eh_proj_site(j), part, M.cat, weight(proj), static_cast<const A*>(nullptr),
                   N, 2 * Ch, C);
    reduce_rows(part, M.in, N);
    // The block, then its ln_f fused with the residual add.
    auto& L = M.block;
    mtp_block_forward<A>(L, M.in, l, M.lnf, M.lnf_mean, M.lnf_rstd, B, T, 0);
    gather_rows(M.lnf, M.lnfg, N);
    // Its loss through the model's head, whose backward runs with it: M.dlnf.
    Set<A> view;
    view.lnfg = M.lnfg;
    view.dlnf = M.dlnf;
    view.losses = M.losses;
    view.correct = M.correct;
    const ForwardStats st =
        classifier(view, mtp_host_targets_.data() + size_t(j) * stride, B, T, scale, true, nullptr,
                   true, d_mtp_targets_ + size_t(j) * stride);
    mtp_loss_sum_ += st.loss_sum;
    mtp_tokens_ += st.tokens;
    h = own_rows(M.lnfg);
  }

  // ---- backward, the last module first ----
  float* dwte = matrix_grad(wte);
  for (int j = D - 1; j >= 0; --j) {
    auto& M = a.mtp[size_t(j)];
    const int l = shape_.mtp_layer(j);
    const auto [lne, lnh, proj, lnf] = module(j);
    auto& L = M.block;
    // The output's gradient through ln_f (M.dlnf: the loss's, and module j + 1's ln_h's).
    be_.zero(a.dresidual, nC);
    layernorm_backward(a.dresidual, grad(lnf), bias_grad(lnf), M.dlnf, L.residual3, weight(lnf),
                       M.lnf_mean, M.lnf_rstd, n);
    const LayerTensors<const A> w = block_weights(l);
    const int at_block = layer_[size_t(l)];
    const size_t at = specs_[size_t(at_block)].offset;
    const LayerTensors<float> gr = without_frozen(
        layer_tensors(grad_at(at), specs_, at_block, slots(l), at), frozen_, at_block, slots(l));
    layer_backward(L, M.in, l, w, gr, Recompute::none, false, B, T);
    // eh_proj: the block's input gradient over all rows; its input's, this rank's columns.
    const A* dy = gather_rows(a.dresidual, a.full, N);
    linear_backward<A>(fp8_eh_proj_site(j), a.mtp_dcat, matrix_grad(proj), nullptr, dy, M.cat,
                       weight(proj), N, 2 * Ch, C, kSet);
    // One half's gradient, complete on this rank's rows: its columns here, the others' summed in.
    auto half_grad = [&](int k) -> A* {
      A* d = a.mtp_dpart;
      if (mp_.tp > 1) be_.zero(d, size_t(N) * C);
      be_.copy_rows(words(d + size_t(mp_.tp_rank) * Ch), word_count<A>(size_t(C)),
                    words(a.mtp_dcat + size_t(k) * Ch), word_count<A>(2 * size_t(Ch)), size_t(N),
                    word_count<A>(size_t(Ch)));
      if (mp_.tp == 1) return d;
      A* dst = mp_.split_rows() ? a.mtp_dnorm : d;
      reduce_rows(d, dst, N);
      return dst;
    };
    // The previous hidden state's, added to the head's gradient of it (the norms' backward
    // accumulates): module j − 1's ln_f output, whose backward comes next, or the model's.
    const bool first = j == 0;
    layernorm_backward(first ? S.dlnf : a.mtp[size_t(j - 1)].dlnf, grad(lnh), bias_grad(lnh),
                       half_grad(1), own_rows(first ? S.lnfg : a.mtp[size_t(j - 1)].lnfg),
                       weight(lnh), M.hn_mean, M.hn_rstd, n);
    // The embedding's, into wte's gradient (the head's where tied).
    be_.zero(a.mtp_demb, nC);
    layernorm_backward(a.mtp_demb, grad(lne), bias_grad(lne), half_grad(0), M.emb, weight(lne),
                       M.en_mean, M.en_rstd, n);
    if (dwte != nullptr) {
      if (shape_.embed_scale != 1.0f)
        be_.scale_cap_logits(a.mtp_demb, nC, shape_.embed_scale, 0.0f);
      const A* de = gather_rows(a.mtp_demb, a.full, N);
      be_.encoder_backward(dwte, nullptr, de, d_mtp_ids_ + size_t(j) * stride, B, T, C);
    }
  }
}

template <class A>
void Gpt::mtp_block_forward(typename Set<A>::Layer& L, const A* x, int l, A* lnf, float* mean,
                            float* rstd, int B, int T, int pos0) {
  const int N = B * T, n = local_rows(N);
  size_t origin = 0;
  const A* base = layer_weight_base<A>(l, &origin);
  const LayerTensors<const A> w = layer_tensors(base, specs_, layer_[size_t(l)], slots(l), origin);
  const int norm = layer_[size_t(l)] + layer_count(l);  // the module's ln_f, after its block
  const A* norm_w = weight_at<A>(specs_[size_t(norm)].offset);
  const A* norm_b = lnf_bias_ ? weight_at<A>(specs_[size_t(norm) + 1].offset) : nullptr;
  pre_norm_forward(L.ln1, L.ln1_mean, L.ln1_rstd, x, w.ln1w, w.ln1b, n);
  layer_front_at(L, x, l, B, T, pos0);
  mlp_output(L, w, l, N);
  const A* mlp_out = branch_output(L.fcproj, L.pn2_mean, L.pn2_rstd, w.monw, w.monb, n,
                                   GptShape::mlp_dropout_site(l));
  const A* res = fuses_branches(l) ? x : L.residual2;
  be_.residual_layernorm_forward(L.residual3, lnf, mean, rstd, res, mlp_out, norm_w, norm_b, n,
                                 shape_.n_embd, shape_.norm_eps);
}

const float* Gpt::mtp_draft_logits(const int32_t* tokens, int len, int from) {
  return precision_ == Precision::bf16 ? mtp_draft_logits_t<bf16_t>(tokens, len, from)
                                       : mtp_draft_logits_t<float>(tokens, len, from);
}

template <class A>
const float* Gpt::mtp_draft_logits_t(const int32_t* tokens, int len, int from) {
  const int C = shape_.n_embd, V = shape_.vocab_size, l = shape_.mtp_layer(0);
  TRIAD_CHECK(mtp_draft_,
              "mtp_draft_logits: the model was not built to draft "
              "(ActivationOptions::mtp_draft)");
  // The last decode call's new rows: positions first .. decoded_tokens() − 1.
  const int first = decoded_tokens() - last_decoded_rows_, N = len - 1 - from;
  TRIAD_CHECK(decoded_batch_ == 1 && len >= 2 && len <= shape_.seq_len && from >= first && N >= 1 &&
                  len - 1 <= decoded_tokens(),
              "mtp_draft_logits: positions ", from, " .. ", len - 2,
              " are not among the last decode call's (", first, " .. ", decoded_tokens() - 1, ")");
  auto& a = acts<A>();
  auto& M = a.mtp[0];
  auto& L = M.block;
  auto weight = [&](int index) { return weight_at<A>(specs_[size_t(index)].offset); };
  auto bias = [&](int index) { return lnf_bias_ ? weight(index + 1) : nullptr; };
  const int nb = lnf_bias_ ? 2 : 1, lne = mtp_[0], lnh = lne + nb, proj = lne + 2 * nb;
  const A* wte_w = shape_.tied ? head_weight<A>() : weight(wte_);
  // Its inputs: the hidden states of positions from .. len − 2 (the model's ln_f output, in the
  // last decode's rows), and the embedding of the token after each.
  const A* h = a.sets[0][0].lnfg + size_t(from - first) * C;
  upload_ids(tokens + from + 1, nullptr, N);
  be_.encoder_forward(M.emb, d_inputs_, wte_w, nullptr, 1, N, C);
  if (shape_.embed_scale != 1.0f)
    be_.scale_cap_logits(M.emb, size_t(N) * C, shape_.embed_scale, 0.0f);
  be_.layernorm_forward(M.en, M.en_mean, M.en_rstd, M.emb, weight(lne), bias(lne), N, C,
                        shape_.norm_eps);
  be_.layernorm_forward(M.hn, M.hn_mean, M.hn_rstd, h, weight(lnh), bias(lnh), N, C,
                        shape_.norm_eps);
  const A* halves[2] = {M.en, M.hn};
  for (int k = 0; k < 2; ++k)
    be_.copy_rows(words(M.cat + size_t(k) * C), word_count<A>(2 * size_t(C)), words(halves[k]),
                  word_count<A>(size_t(C)), size_t(N), word_count<A>(size_t(C)));
  be_.matmul_forward(M.in, M.cat, weight(proj), static_cast<const A*>(nullptr), N, 2 * C, C);
  // The block at positions from .. len − 2, its keys and values into its own cache.
  struct Decoding {
    bool& flag;
    ~Decoding() { flag = false; }
  } scope{decoding_};
  decoding_ = true;
  mtp_block_forward<A>(L, M.in, l, M.lnf, M.lnf_mean, M.lnf_rstd, 1, N, from);
  // The head on the last row: the draft's logits.
  head_logits(a.logits, M.lnf + size_t(N - 1) * C, 1, vocab_local_);
  mtp_host_logits_.resize(size_t(shape_.padded_vocab_size));
  logits_to_host(mtp_host_logits_.data(), a.logits, size_t(vocab_local_));
  mtp_host_logits_.resize(size_t(V));
  return mtp_host_logits_.data();
}

template void Gpt::mtp_step<float>(Set<float>&, const int32_t*, const int32_t*, int, int, float);
template void Gpt::mtp_step<bf16_t>(Set<bf16_t>&, const int32_t*, const int32_t*, int, int, float);

}  // namespace triad
