// Forward and backward of the GPT as a sequence of Backend ops (DESIGN.md §3), for the chunk
// of layers a rank holds, with Megatron's tensor parallelism: c_attn and c_fc column-parallel
// (local heads / hidden units), attn.c_proj and mlp.c_proj row-parallel (partial sums
// all-reduced over the tensor-parallel group, bias added once), so each layer all-reduces two
// activations in forward and two input gradients in backward. Embedding and cross-entropy are
// vocabulary-parallel. Backward ops accumulate into their outputs, so the residual-stream
// gradient flows through one buffer (dresidual) that each layer's branches add into.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "gpt_activations.h"
#include "triad/core/error.h"
#include "triad/kernels/dropout_mask.h"
#include "triad/model/attention_mask.h"
#include "triad/model/gpt.h"
#include "triad/model/preference_loss.h"

namespace triad {

void Gpt::tp_all_reduce(float* x, size_t n) {
  if (mp_.tp > 1) mp_.tp_comm->all_reduce_sum(x, n);
}

// bf16: summed in fp32 (widened, all-reduced, rounded once).
void Gpt::tp_all_reduce(bf16_t* x, size_t n) {
  if (mp_.tp == 1) return;
  float* w = acts<bf16_t>().reduce_wide;
  be_.convert(w, x, n);
  mp_.tp_comm->all_reduce_sum(w, n);
  be_.convert(x, w, n);
}

// The rows this rank holds of a micro-batch of N rows: all of them, or 1/tp under sequence
// parallelism.
int Gpt::local_rows(int N) const { return mp_.split_rows() ? N / mp_.tp : N; }

// Partial sums over all N rows (src) → this rank's rows, complete (dst): a reduce-scatter under
// sequence parallelism, else an all-reduce (src == dst).
template <class A>
void Gpt::reduce_rows(A* src, A* dst, int N) {
  const size_t C = size_t(shape_.n_embd);
  if (mp_.split_rows()) {
    const size_t n = size_t(local_rows(N)) * C;
    if constexpr (std::is_same_v<A, float>) {
      mp_.tp_comm->reduce_scatter_sum(src, dst, n);
    } else {  // in fp32, as tp_all_reduce
      float* w = acts<bf16_t>().reduce_wide;
      be_.convert(w, src, size_t(N) * C);
      mp_.tp_comm->reduce_scatter_sum(w, w + size_t(N) * C, n);
      be_.convert(dst, w + size_t(N) * C, n);
    }
  } else {
    TRIAD_ASSERT(src == dst);
    tp_all_reduce(dst, size_t(N) * C);
  }
}

// This rank's rows (src) → all N rows (dst) under sequence parallelism; else src itself.
template <class A>
const A* Gpt::gather_rows(const A* src, A* dst, int N) {
  if (!mp_.split_rows()) return src;
  mp_.tp_comm->all_gather(words(src), words(dst),
                          word_count<A>(size_t(local_rows(N)) * shape_.n_embd));
  return dst;
}

template <class A>
const A* Gpt::keep_rows(const A* src, A* dst, int N) {
  if (mp_.split_rows()) return gather_rows(src, dst, N);
  be_.copy(words(dst), words(src), word_count<A>(size_t(N) * shape_.n_embd));
  return dst;
}

// LayerNorm backward on this rank's rows. Under sequence parallelism its weight and bias
// gradients are partial sums over the group's rows: they are formed apart, all-reduced and
// then accumulated, so that accumulation over micro-batches counts each once.
template <class A, class F>
void Gpt::tp_summed_grads(float* da, float* db, size_t n, F&& form) {
  float* g = acts<A>().ln_grads;
  const size_t total = db != nullptr ? 2 * n : n;
  be_.zero(g, total);
  form(g, db != nullptr ? g + n : nullptr);
  tp_all_reduce(g, total);
  be_.accumulate(da, g, n);
  if (db != nullptr) be_.accumulate(db, g + n, n);
}

template <class A>
void Gpt::layernorm_backward(A* dinp, float* dw, float* db, const A* dout, const A* inp, const A* w,
                             const float* mean, const float* rstd, int rows) {
  const int C = shape_.n_embd;
  if (!mp_.split_rows()) {
    be_.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, rows, C);
    return;
  }
  tp_summed_grads<A>(dw, db, size_t(C), [&](float* gw, float* gb) {  // RMSNorm: no bias, gb null
    be_.layernorm_backward(dinp, gw, gb, dout, inp, w, mean, rstd, rows, C);
  });
}

template <class A>
void Gpt::pre_norm_forward(A* out, float* mean, float* rstd, const A* x, const A* w, const A* b,
                           int rows) {
  const int C = shape_.n_embd;
  if (shape_.pre_norm)
    be_.layernorm_forward(out, mean, rstd, x, w, b, rows, C, shape_.norm_eps);
  else
    be_.copy(words(out), words(x), word_count<A>(size_t(rows) * C));
}

template <class A>
void Gpt::residual_pre_norm_forward(A* residual, A* out, float* mean, float* rstd, const A* a,
                                    const A* y, const A* w, const A* b, int rows) {
  const int C = shape_.n_embd;
  if (shape_.pre_norm) {
    be_.residual_layernorm_forward(residual, out, mean, rstd, a, y, w, b, rows, C, shape_.norm_eps);
    return;
  }
  be_.add(residual, a, y, size_t(rows) * C);
  be_.copy(words(out), words(residual), word_count<A>(size_t(rows) * C));
}

template <class A>
void Gpt::pre_norm_backward(A* dinp, float* dw, float* db, const A* dout, const A* inp, const A* w,
                            const float* mean, const float* rstd, int rows) {
  if (shape_.pre_norm)
    layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, rows);
  else
    be_.add(dinp, dinp, dout, size_t(rows) * size_t(shape_.n_embd));
}

// This rank's rows of the micro-batch in its row order: the N rows of its sequences (two pieces
// of each under context parallelism), of which sequence parallelism holds block tp_rank.
void Gpt::set_dropout_rows(int64_t first, int B) {
  if (!dropping() && !attention_dropping()) return;
  TRIAD_ASSERT(first >= 0);
  std::vector<int32_t>& keys = host_dropout_keys_;
  if (attention_dropping()) {  // every row of the whole sequences, [B, T]
    TRIAD_ASSERT(d_attention_dropout_keys_ != nullptr);
    const int T = shape_.seq_len;
    keys.resize(2 * size_t(B) * size_t(T));
    dropout_row_key_words(keys.data(), dropout_seed_, uint64_t(first), B, T);
    be_.copy_ints_from_host(d_attention_dropout_keys_, keys.data(), keys.size());
  }
  if (!dropping()) return;
  TRIAD_ASSERT(d_dropout_keys_ != nullptr);
  const int Tl = mp_.seq_rows(shape_.seq_len);
  keys.resize(2 * size_t(B) * size_t(Tl));
  for_each_piece(B, Tl, [&](size_t at, int rows, int p0) {
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < rows; ++i) {
        const uint64_t k = dropout_row_key(dropout_seed_, uint64_t(first + b), uint32_t(p0 + i));
        const size_t r = at + size_t(b) * size_t(rows) + size_t(i);
        keys[2 * r] = int32_t(uint32_t(k));
        keys[2 * r + 1] = int32_t(uint32_t(k >> 32));
      }
  });
  be_.copy_ints_from_host(d_dropout_keys_, keys.data(), keys.size());
}

AttentionDropout Gpt::attention_dropout(int layer) const {
  if (!attention_dropping()) return {};
  // This rank's key/value heads from tp_rank·NKV/tp on, with the query heads that read them.
  const int kv = shape_.kv_heads();
  return AttentionDropout{d_attention_dropout_keys_, shape_.attention_dropout, uint32_t(layer),
                          mp_.tp_rank * (kv / mp_.tp), kv};
}

template <class A>
void Gpt::drop_rows(A* x, int rows, uint32_t site) {
  if (!dropping()) return;
  const size_t first_row = mp_.split_rows() ? size_t(mp_.tp_rank) * size_t(rows) : 0;
  be_.dropout(x, d_dropout_keys_ + 2 * first_row, rows, shape_.n_embd, site, shape_.hidden_dropout);
}

template <class A>
const A* Gpt::branch_output(A* y, float* mean, float* rstd, const A* w, const A* b, int rows,
                            uint32_t site) {
  const size_t n = size_t(rows) * size_t(shape_.n_embd);
  A* out = y;
  if (shape_.branch_norm) {
    out = acts<A>().proj;
    be_.layernorm_forward(out, mean, rstd, y, w, b, rows, shape_.n_embd, shape_.norm_eps);
  }
  if (shape_.residual_scale != 1.0f) be_.scale_cap_logits(out, n, shape_.residual_scale, 0.0f);
  drop_rows(out, rows, site);
  return out;
}

template <class A>
const A* Gpt::branch_output_backward(float* dw, float* db, const A* dout, const A* y, const A* w,
                                     const float* mean, const float* rstd, int rows,
                                     uint32_t site) {
  const size_t n = size_t(rows) * size_t(shape_.n_embd);
  auto& a = acts<A>();
  if (shape_.residual_scale != 1.0f || dropping()) {  // the branch's share, in a buffer of its own
    A* scaled = shape_.branch_norm ? a.dscaled : a.dbranch;
    be_.copy(words(scaled), words(dout), word_count<A>(n));
    if (shape_.residual_scale != 1.0f) be_.scale_cap_logits(scaled, n, shape_.residual_scale, 0.0f);
    drop_rows(scaled, rows, site);
    dout = scaled;
  }
  if (!shape_.branch_norm) return dout;
  be_.zero(a.dbranch, n);  // the op adds to its input's gradient
  layernorm_backward(a.dbranch, dw, db, dout, y, w, mean, rstd, rows);
  return a.dbranch;
}

template <class A>
void Gpt::mlp_output(typename Set<A>::Layer& L, const LayerTensors<const A>& w, int l, int N) {
  A* fcproj = mp_.split_rows() ? acts<A>().full : L.fcproj;
  if (shape_.moe_layer(l))
    moe_output<A>(L, l, fcproj, w, N);
  else
    linear_forward(fp8_site(l, 3), fcproj, L.fch_gelu, w.fcprojw,
                   mp_.tp_rank == 0 ? w.fcprojb : nullptr, N, shape_.dense_hidden() / mp_.tp,
                   shape_.n_embd);  // (the bias added once)
  if (fuses_branches(l))            // the attention's partial sums join before the one reduction
    be_.add(fcproj, fcproj, acts<A>().branch_partial, size_t(N) * size_t(shape_.n_embd));
  reduce_rows(fcproj, L.fcproj, N);
}

template <class A>
void Gpt::qk_norm_forward(A* dst, float* rstd, const A* qkv_pre, const A* wq, const A* wk, int N) {
  const int Al = shape_.attn_width() / mp_.tp, NHl = shape_.n_head / mp_.tp;
  const int NKVl = shape_.kv_heads() / mp_.tp;
  if (!shape_.qk_norm_full) {
    be_.qk_norm_forward(dst, rstd, qkv_pre, wq, wk, N, Al, NHl, NKVl, shape_.norm_eps);
    return;
  }
  float* sums = acts<A>().qk_sums;
  be_.qk_full_norm_sums(sums, qkv_pre, nullptr, nullptr, nullptr, nullptr, N, Al, NHl, NKVl);
  tp_all_reduce(sums, 2 * size_t(N));  // each row's whole q and k, over the group's heads
  be_.qk_full_norm_forward(dst, rstd, qkv_pre, sums, wq, wk, N, Al, NHl, NKVl, shape_.attn_width(),
                           shape_.kv_heads() * shape_.hd(), shape_.norm_eps);
}

template <class A>
void Gpt::qk_norm_backward(A* dqkv, float* dwq, float* dwk, const A* qkv_pre, const A* wq,
                           const A* wk, const float* rstd, int N) {
  const int Al = shape_.attn_width() / mp_.tp, NHl = shape_.n_head / mp_.tp;
  const int NKVl = shape_.kv_heads() / mp_.tp, hd = shape_.hd();
  constexpr GradMode kSet = GradMode::overwrite;
  if (shape_.qk_norm_full) {
    float* dots = acts<A>().qk_sums;
    be_.qk_full_norm_sums(dots, qkv_pre, dqkv, wq, wk, rstd, N, Al, NHl, NKVl);
    tp_all_reduce(dots, 2 * size_t(N));
    be_.qk_full_norm_backward(dqkv, dwq, dwk, dqkv, qkv_pre, wq, wk, rstd, dots, N, Al, NHl, NKVl,
                              shape_.attn_width(), shape_.kv_heads() * hd, kSet);
    return;
  }
  auto backward = [&](float* gq, float* gk) {
    be_.qk_norm_backward(dqkv, gq, gk, dqkv, qkv_pre, wq, wk, rstd, N, Al, NHl, NKVl, kSet);
  };
  if (mp_.tp == 1)
    backward(dwq, dwk);
  else
    tp_summed_grads<A>(dwq, dwk, size_t(hd), backward);
}

// Token ids as this rank's slice of the vocabulary sees them: id − vocab_begin inside the
// slice, −1 (held by another rank) outside. With tp = 1 they are the ids themselves.
void Gpt::upload_local_ids(const int32_t* ids, int32_t* dev, int N) {
  // A negative (masked) target becomes kIgnoredTarget on every rank: no loss, no gradient; an id
  // another rank holds, -1.
  for (int i = 0; i < N; ++i) {
    const int32_t t = ids[i] - vocab_begin_;
    host_ids_[size_t(i)] = ids[i] < 0 ? kIgnoredTarget : t >= 0 && t < vocab_valid_ ? t : -1;
  }
  be_.copy_ints_from_host(dev, host_ids_.data(), size_t(N));
}

void Gpt::upload_ids(const int32_t* inputs, const int32_t* targets, int N) {
  if (inputs) upload_local_ids(inputs, d_inputs_, N);
  if (targets) upload_local_ids(targets, d_targets_, N);
}

void Gpt::set_attention_mask(const int32_t* inputs, int B, int T, bool documents) {
  key_begin_ = key_begin_full_ = nullptr;
  positions_ = nullptr;
  const int32_t token = documents ? shape_.document_token : -1;
  const bool window = shape_.sliding_window > 0 && shape_.sliding_window < T;
  if (inference_ || (token < 0 && !window)) return;
  TRIAD_ASSERT(inputs != nullptr && d_key_begin_ != nullptr);
  const size_t n = size_t(B) * size_t(T);
  host_key_begin_.resize(n);
  document_key_begin(host_key_begin_.data(), inputs, B, T, token, shape_.sliding_window);
  be_.copy_ints_from_host(d_key_begin_, host_key_begin_.data(), n);
  key_begin_ = d_key_begin_;
  if (!window) {  // the window cuts nothing: every layer applies the document mask
    key_begin_full_ = key_begin_;
  } else if (documents && shape_.masks_full_layers()) {  // full layers: documents only
    TRIAD_ASSERT(d_key_begin_full_ != nullptr);
    host_key_begin_full_.resize(n);
    document_key_begin(host_key_begin_full_.data(), inputs, B, T, token, 0);
    be_.copy_ints_from_host(d_key_begin_full_, host_key_begin_full_.data(), n);
    key_begin_full_ = d_key_begin_full_;
  }
  if (!documents || !shape_.reset_positions) return;
  // Each row's distance from its document's first token (the sequence's first token where it
  // began inside a document), laid out as this rank's rows: [B][T], or its two pieces
  // [2][B][T/(2·cp)] under context parallelism.
  std::vector<int32_t>& start = host_document_start_;
  start.resize(n);
  document_key_begin(start.data(), inputs, B, T, token, 0);
  host_positions_.resize(size_t(B) * size_t(mp_.seq_rows(T)));
  for_each_piece(B, mp_.seq_rows(T), [&](size_t at, int rows, int p0) {
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < rows; ++i) {
        const size_t t = size_t(b) * size_t(T) + size_t(p0 + i);
        host_positions_[at + size_t(b) * size_t(rows) + size_t(i)] = int32_t(p0 + i) - start[t];
      }
  });
  be_.copy_ints_from_host(d_positions_, host_positions_.data(), host_positions_.size());
  positions_ = d_positions_;
}

// The MLP's activation of N rows of c_fc's outputs (pre) into c_proj's input (act, `width`
// units): GELU, SwiGLU's silu(gate)·up, GeGLU's gelu(gate)·up or the squared ReLU (what
// train.recompute = gelu recomputes).
template <class A>
void Gpt::mlp_activation(A* act, const A* pre, int N, int width) {
  if (shape_.swiglu)
    be_.swiglu_forward(act, pre, N, width, shape_.glu());
  else if (shape_.geglu)
    be_.geglu_forward(act, pre, N, width);
  else if (!shape_.gelu_in_product())
    be_.activation_forward(shape_.pointwise(), act, pre, size_t(N) * size_t(width));
  else
    be_.gelu_forward(act, pre, size_t(N) * size_t(width));
}

template <class A>
void Gpt::mlp_activation_backward(A* dpre, const A* pre, const A* dact, int N, int width) {
  if (shape_.swiglu)
    be_.swiglu_backward(dpre, pre, dact, N, width, GradMode::overwrite, shape_.glu());
  else if (shape_.geglu)
    be_.geglu_backward(dpre, pre, dact, N, width, GradMode::overwrite);
  else if (!shape_.gelu_in_product())
    be_.activation_backward(shape_.pointwise(), dpre, pre, dact, size_t(N) * size_t(width),
                            GradMode::overwrite);
  else
    be_.gelu_backward(dpre, pre, dact, size_t(N) * size_t(width), GradMode::overwrite);
}

// Rotary positions (shape_.rope) on the q and k of N rows of q|k|v, row r at position
// pos0 + r % T (positions[r] where given); inverse: the backward pass on their gradient. Nothing
// without rope, nor in a layer that does not rotate (shape_.rotates: model.nope_every).
template <class A>
void Gpt::rotate(int layer, A* qkv, int N, int T, int pos0, bool inverse,
                 const int32_t* positions) {
  if (!shape_.rotates(layer)) return;
  be_.rope(qkv, shape_.local_rope(layer) ? rope_local_table_ : rope_table_, N, T, pos0,
           shape_.attn_width() / mp_.tp, shape_.n_head / mp_.tp, shape_.kv_heads() / mp_.tp,
           inverse, positions, shape_.rotary_dim);
}

template <class F>
void Gpt::for_each_piece(int B, int T, F&& f) const {
  if (mp_.cp == 1) {
    f(size_t(0), T, 0);
    return;
  }
  const int P = T / 2;  // T: this rank's rows per sequence, two pieces
  for (int k = 0; k < 2; ++k)
    f(size_t(k) * B * P, P, mp_.piece_start(k, shape_.seq_len, mp_.cp_rank));
}

template <class A>
void Gpt::rotate_pieces(int layer, A* qkv, int B, int T, bool inverse) {
  if (positions_ != nullptr) {  // each row at its position in its document
    rotate(layer, qkv, B * T, T, 0, inverse, positions_);
    return;
  }
  const size_t Wl = size_t(shape_.qkv_rows() / mp_.tp);
  for_each_piece(B, T, [&](size_t at, int n, int pos0) {
    rotate(layer, qkv + at * Wl, B * n, n, pos0, inverse);
  });
}

template <class A, class Project>
void Gpt::decode_ring(typename Set<A>::Layer& L, int layer, int ring, const A* sinks, int B, int T,
                      int pos0, Project&& project) {
  const int Al = shape_.attn_width() / mp_.tp, NHl = shape_.n_head / mp_.tp;
  const int NKVl = shape_.kv_heads() / mp_.tp, Wl = shape_.qkv_rows() / mp_.tp;
  const int W = shape_.layer_window(layer), n = decode_new_rows_;
  TRIAD_ASSERT(ring >= 2 * W && n >= 1 && n <= T);
  const size_t row = word_count<A>(size_t(Wl));  // (kv_ring_rows: whole words)
  // Each sequence's window: the kept rows its first new row sees (positions pos0 − k ..
  // pos0 − 1), then its new rows. A query at position t sees keys t − W + 1 .. t, all in it.
  const int k = std::min(pos0, W - 1), stride = k + T;
  A* fresh = decode_scratch<A>();
  float* win = words(acts<A>().kv_window);
  float* kept = words(L.qkv);
  const size_t ring_ld = size_t(ring) * row, win_ld = size_t(stride) * row;
  project(fresh);
  rotate(layer, fresh, B * T, T, pos0, false);
  // Positions [from, from + count) of every sequence as runs of consecutive ring rows: f(the ring
  // row of the run's first position, the run's offset in the range, its length).
  auto runs = [ring](int from, int count, auto&& f) {
    for (int done = 0; done < count;) {
      const int at = (from + done) % ring, len = std::min(count - done, ring - at);
      f(at, done, len);
      done += len;
    }
  };
  runs(pos0 - k, k, [&](int at, int off, int len) {
    be_.copy_rows(win + size_t(off) * row, win_ld, kept + size_t(at) * row, ring_ld, size_t(B),
                  size_t(len) * row);
  });
  be_.copy_rows(win + size_t(k) * row, win_ld, words(fresh), size_t(T) * row, size_t(B),
                size_t(T) * row);
  be_.attention_decode(L.atty, acts<A>().kv_window, B, stride, k, T, Al, NHl, NKVl, W,
                       shape_.scores_scale(), shape_.attn_softcap, sinks);
  // The ring keeps the last `ring` real rows (a padding row would overwrite a kept row that the
  // next call's first query reads).
  const int keep = std::min(n, ring), first = pos0 + n - keep;
  runs(first, keep, [&](int at, int off, int len) {
    be_.copy_rows(kept + size_t(at) * row, ring_ld, win + size_t(k + first - pos0 + off) * row,
                  win_ld, size_t(B), size_t(len) * row);
  });
}

template <class A>
void Gpt::layer_front(Set<A>& S, int g, int i, int B, int T, int pos0) {
  layer_front_at(S.layers[size_t(i)], i == 0 ? S.input : S.layers[size_t(i - 1)].residual3,
                 mp_.first_layer(g, shape_.n_layer) + i, B, T, pos0);
}

template <class A>
void Gpt::layer_front_at(typename Set<A>::Layer& L, const A* x, int l, int B, int T, int pos0) {
  const int C = shape_.n_embd, Al = shape_.attn_width() / mp_.tp, NHl = shape_.n_head / mp_.tp;
  const int NKVl = shape_.kv_heads() / mp_.tp, Wl = shape_.qkv_rows() / mp_.tp;
  const int N = B * T, n = local_rows(N);
  size_t origin = 0;
  const A* base = layer_weight_base<A>(l, &origin);
  const LayerTensors<const A> w = layer_tensors(base, specs_, layer_[size_t(l)], slots(l), origin);
  const A* projb = mp_.tp_rank == 0 ? w.projb : nullptr;  // bias added once
  // Branches reduced as one: attn.c_proj's partial sums wait in branch_partial for the MLP's.
  const bool joined = fuses_branches(l);
  A* attproj = joined ? acts<A>().branch_partial : mp_.split_rows() ? acts<A>().full : L.attproj;
  const A* ln1 = gather_rows(L.ln1, L.ln1g, N);
  const int layer = l;  // of the whole model
  // c_attn into dst (N rows), through the q and k norms (model.qk_norm) or the clamp
  // (model.clip_qkv) from the kept qkv_pre.
  const bool kept = shape_.qk_norm || shape_.clip_qkv > 0;
  auto project = [&](A* dst) {
    if (shape_.mla()) return mla_project(L, l, dst, ln1, w, N);  // (its latents, not c_attn)
    linear_forward(fp8_site(l, 0), kept ? L.qkv_pre : dst, ln1, w.qkvw, w.qkvb, N, C, Wl);
    if (shape_.qk_norm)
      qk_norm_forward(dst, L.qk_rstd, L.qkv_pre, w.qnw, w.knw, N);
    else if (shape_.clip_qkv > 0)
      be_.clamp(dst, L.qkv_pre, size_t(N) * Wl, shape_.clip_qkv);
  };
  // A model for inference keeps a ring of rows in the layers kv_ring_rows names.
  const int ring = inference_ ? kv_ring_rows(shape_, mp_, precision_ == Precision::bf16, layer) : 0;
  if (!decoding_) {
    // (A ring layer's T rows may not fit its ring: they go through the decoding scratch. A pass
    // that does not decode drops the cache: the ring's rows are not needed any more.)
    A* qkv = ring > 0 ? decode_scratch<A>() : L.qkv;
    project(qkv);
    rotate_pieces(layer, qkv, B, T, false);
    // A model for inference keeps nothing for a backward pass: not even the probabilities (fp32)
    // or the log-sum-exp (bf16) the training attention saves. It generates and scores prompts,
    // each one document (set_attention_mask gives it no mask), the sliding window through
    // attention_decode's.
    if (inference_) {
      be_.attention_decode(L.atty, qkv, B, T, 0, T, Al, NHl, NKVl, shape_.layer_window(layer),
                           shape_.scores_scale(), shape_.attn_softcap, w.sinks);
    } else if (mp_.cp > 1) {
      cp_attention_forward(L.atty, L.att, L.qkv, B, layer, w.sinks);
    } else {
      be_.attention_forward(L.atty, L.att, L.qkv, B, T, Al, NHl, NKVl, layer_key_begin(layer), {},
                            shape_.scores_scale(), shape_.attn_softcap, attention_dropout(layer),
                            w.sinks);
    }
  } else if (ring > 0) {
    decode_ring<A>(L, layer, ring, w.sinks, B, T, pos0, project);
  } else {
    // Decoding: sequence b keeps its q|k|v in rows b·seq_len + t of L.qkv (the cache); the new
    // rows go after the kept ones, straight from the product for one sequence, through a scratch
    // for several.
    const int S_len = shape_.seq_len;
    const size_t row = size_t(Wl);
    if (B == 1) {
      project(L.qkv + size_t(pos0) * row);
      rotate(layer, L.qkv + size_t(pos0) * row, N, T, pos0, false);
    } else {
      A* fresh = decode_scratch<A>();
      project(fresh);
      rotate(layer, fresh, N, T, pos0, false);
      for (int b = 0; b < B; ++b)
        be_.copy(words(L.qkv + (size_t(b) * S_len + pos0) * row),
                 words(fresh + size_t(b) * T * row), word_count<A>(size_t(T) * row));
    }
    be_.attention_decode(L.atty, L.qkv, B, S_len, pos0, T, Al, NHl, NKVl,
                         shape_.layer_window(layer), shape_.scores_scale(), shape_.attn_softcap,
                         w.sinks);
  }
  // (Multi-head latent attention: each head's v_head_dim outputs of its hd().)
  const A* proj_in = shape_.mla() ? mla_output(L.atty, N) : L.atty;
  linear_forward(fp8_site(l, 1), attproj, proj_in, w.projw, projb, N, shape_.proj_width() / mp_.tp,
                 C);
  if (!joined) {
    reduce_rows(attproj, L.attproj, N);
    const A* att_out = branch_output(L.attproj, L.pn1_mean, L.pn1_rstd, w.aonw, w.aonb, n,
                                     shape_.attn_dropout_site(l));
    // train.activations_every: read here, as the MLP's output may take its buffer later (not
    // of a multi-token prediction module's block).
    if (l < shape_.n_layer) add_activation_sums<A>(1 + 3 * size_t(l), {att_out}, size_t(n) * C);
    if (shape_.parallel_residual)  // residual2 the first branch's sum
      be_.add(L.residual2, x, att_out, size_t(n) * C);
    else
      residual_pre_norm_forward(L.residual2, L.ln2, L.ln2_mean, L.ln2_rstd, x, att_out, w.ln2w,
                                w.ln2b, n);
  }  // (joined: no residual2; forward_chunk adds both branches' output to x)
  if (shape_.parallel_residual && !shape_.shared_norm)  // ln_2 of the layer's input (shared: ln_1)
    be_.layernorm_forward(L.ln2, L.ln2_mean, L.ln2_rstd, x, w.ln2w, w.ln2b, n, C, shape_.norm_eps);
  const A* ln2 = shape_.shared_norm ? ln1 : gather_rows(L.ln2, L.ln2g, N);
  const int Hl = shape_.dense_hidden() / mp_.tp;  // (a dense layer's)
  if (shape_.moe_layer(l)) {
    moe_front<A>(L, l, ln2, w, N);
  } else if (!shape_.gelu_in_product()) {  // the product, then the activation on its own
    linear_forward(fp8_site(l, 2), L.fch, ln2, w.fcw, w.fcb, N, C, shape_.dense_fc_rows() / mp_.tp);
    mlp_activation(L.fch_gelu, L.fch, N, Hl);
  } else {  // GELU in the product's epilogue
    linear_gelu_forward(fp8_site(l, 2), L.fch, L.fch_gelu, ln2, w.fcw, w.fcb, N, C, Hl);
  }
}

template <class A>
void Gpt::forward_chunk(int chunk, Set<A>& S, int B, int T, int pos0) {
  TRIAD_ASSERT(B >= 1 && B <= max_batch_ && T >= 1 && pos0 >= 0 && pos0 + T <= shape_.seq_len);
  TRIAD_ASSERT(pos0 == 0 || decoding_);
  decoded_.clear();  // overwrites the first set's rows (decode_logits sets it again after)
  const int C = shape_.n_embd;
  const int N = B * T, n = local_rows(N);  // rows of the micro-batch, and of them held here
  const size_t nC = size_t(n) * C;
  const bool sp = mp_.split_rows();
  A* full = acts<A>().full;  // sequence parallel: partial sums over all rows
  const int g = mp_.global_chunk(chunk), per_chunk = mp_.chunk_layers(g, shape_.n_layer);
  const int first_layer = mp_.first_layer(g, shape_.n_layer);
  if (g == 0) {
    // Vocabulary-parallel embedding: each rank adds the rows it holds (zero elsewhere), one
    // rank adds wpe, and the reduction completes wte[tok] + wpe[pos].
    // (No wpe under rope: the positions enter each layer's attention instead.)
    const A* wpe = mp_.tp_rank == 0 && wpe_ >= 0
                       ? weight_at<A>(specs_[size_t(wpe_)].offset) + size_t(pos0) * C
                       : nullptr;
    A* out = sp ? full : S.input;
    const A* wte = weight_at<A>(specs_[size_t(wte_)].offset);
    if (positions_ != nullptr) {  // each row at its position in its document
      be_.encoder_forward(out, d_inputs_, wte, wpe, B, T, C, positions_);
    } else {
      for_each_piece(B, T, [&](size_t at, int n, int p0) {  // each piece at its own positions
        be_.encoder_forward(out + at * C, d_inputs_ + at, wte,
                            wpe != nullptr ? wpe + size_t(p0) * C : nullptr, B, n, C);
      });
    }
    reduce_rows(out, S.input, N);
    if (shape_.embed_scale != 1.0f)  // model.embed_scale (Gemma's √C)
      be_.scale_cap_logits(S.input, nC, shape_.embed_scale, 0.0f);
    drop_rows(S.input, n, 0);  // train.hidden_dropout (site 0: the embedding's output)
    add_activation_sums<A>(0, {S.input}, nC);  // train.activations_every
  }
  const bool last_chunk = g == mp_.chunks() - 1;
  const A* lnfw = last_chunk ? weight_at<A>(specs_[size_t(lnf_)].offset) : nullptr;
  const A* lnfb = last_chunk && lnf_bias_ ? weight_at<A>(specs_[size_t(lnf_) + 1].offset) : nullptr;
  auto layer_weights = [&](int i) {
    size_t origin = 0;
    const A* base = layer_weight_base<A>(first_layer + i, &origin);
    return layer_tensors(base, specs_, layer_[size_t(first_layer + i)], slots(first_layer + i),
                         origin);
  };
  // Each residual add is fused with the LayerNorm that reads its result: ln_2 in the layer,
  // the next layer's ln_1 (or ln_f) at its end. Only the chunk's first ln_1 stands alone.
  if (per_chunk > 0) {
    const LayerTensors<const A> w0 = layer_weights(0);
    pre_norm_forward(S.layers[0].ln1, S.layers[0].ln1_mean, S.layers[0].ln1_rstd, S.input, w0.ln1w,
                     w0.ln1b, n);
  } else if (last_chunk) {
    be_.layernorm_forward(S.lnf, S.lnf_mean, S.lnf_rstd, S.input, lnfw, lnfb, n, C,
                          shape_.norm_eps);
  }
  for (int i = 0; i < per_chunk; ++i) {
    auto& L = S.layers[size_t(i)];
    // ZeRO-3: the next two layers' weights gather while this one computes (their buffers held
    // layers already done); this layer's end reads the next one's ln_1.
    prefetch_layer_weights<A>(first_layer + i + 1);
    prefetch_layer_weights<A>(first_layer + i + 2);
    const LayerTensors<const A> w = layer_weights(i);
    layer_front(S, g, i, B, T, pos0);
    mlp_output(L, w, first_layer + i, N);
    const A* mlp_out = branch_output(L.fcproj, L.pn2_mean, L.pn2_rstd, w.monw, w.monb, n,
                                     GptShape::mlp_dropout_site(first_layer + i));
    // What the MLP's output joins: residual2, or the layer's input where it is both branches'.
    const A* res = fuses_branches(first_layer + i)
                       ? (i == 0 ? S.input : S.layers[size_t(i - 1)].residual3)
                       : L.residual2;
    if (i + 1 < per_chunk) {
      auto& next = S.layers[size_t(i + 1)];
      const LayerTensors<const A> wn = layer_weights(i + 1);
      residual_pre_norm_forward(L.residual3, next.ln1, next.ln1_mean, next.ln1_rstd, res, mlp_out,
                                wn.ln1w, wn.ln1b, n);
    } else if (last_chunk) {
      be_.residual_layernorm_forward(L.residual3, S.lnf, S.lnf_mean, S.lnf_rstd, res, mlp_out, lnfw,
                                     lnfb, n, C, shape_.norm_eps);
    } else {
      be_.add(L.residual3, res, mlp_out, nC);
    }
    add_activation_sums<A>(2 + 3 * size_t(first_layer + i), {mlp_out, L.residual3}, nC);
  }
  if (last_chunk) gather_rows(S.lnf, S.lnfg, N);
}

// The tied head and the loss of the last chunk, and with_grad the head's backward right away:
// the gradient of its input (this rank's rows, reduced over the tensor-parallel group) goes to
// S.dlnf for backward_chunk, the head's weight gradient is accumulated. The logits are formed
// logits_rows_ rows at a time in one shared buffer, so a micro-batch never holds all of them
// (B·T × V/tp, the largest activation of a small model) and an activation set keeps C values per
// token instead. d_targets_ holds this rank's local target ids (upload_ids); host_targets the
// global ones.
template <class A>
ForwardStats Gpt::classifier(Set<A>& S, const int32_t* host_targets, int B, int T,
                             float dloss_scale, bool with_grad, float* row_losses, bool fp8_head,
                             const int32_t* dev_targets) {
  const int N = B * T, C = shape_.n_embd, Vl = vocab_local_;
  // DPO (set_preference): the rows' losses first, without gradient, then each sequence's weight
  // from its pair's, with which the pass below forms the gradient (its chunks never span two
  // sequences' rows).
  const bool preference = with_grad && preference_reference_ != nullptr;
  ForwardStats pairs;
  if (preference) {
    preference_rows_.resize(size_t(N));
    (void)classifier(S, host_targets, B, T, 0.0f, false, preference_rows_.data(), fp8_head,
                     dev_targets);
    pairs = preference_weights(host_targets, B, T, dloss_scale);
  }
  const int run = mp_.cp == 1 ? T : T / 2;  // rows of one sequence in a row
  auto& a = acts<A>();
  A* logits = a.logits;
  // The head is column-parallel over the vocabulary: its input gradient is a partial sum over
  // the group, formed over all rows and then reduced into this rank's rows.
  A* dpart = mp_.split_rows() ? a.full : S.dlnf;
  const bool head_frozen = !frozen_.empty() && frozen_[size_t(head_)];  // train.freeze
  float* head_grad = with_grad && !head_frozen ? grad_at(specs_[size_t(head_)].offset) : nullptr;
  // model.head_bias's (the ops form a bias gradient only beside the weight's)
  float* head_bias_grad = head_grad != nullptr && head_bias_index_ >= 0 &&
                                  (frozen_.empty() || !frozen_[size_t(head_bias_index_)])
                              ? grad_at(specs_[size_t(head_bias_index_)].offset)
                              : nullptr;
  float* host = host_scratch_.data();  // planned in the constructor: no allocation per step
  // train.z_loss, in training only. The hit buffer holds log Z instead of the hits then (a
  // training step reads no accuracy), so the z-loss needs no memory of its own.
  const float z = with_grad ? z_loss_ : 0.0f;
  // The logits' multiplier (μP's, model.logit_scale): the gradient of the head's products is
  // the loss's times it.
  const float gscale = dloss_scale * shape_.head_mult();
  float* hits = z > 0.0f ? nullptr : S.correct;
  float* log_z = z > 0.0f ? S.correct : nullptr;
  ForwardStats st;
  for (int i = 0; i < N; ++i)
    st.tokens += host_targets[i] >= 0 ? 1 : 0;  // masked ones do not count
  // set_target_bytes: a counted target's loss and bytes, where it decodes to any.
  auto count_bytes = [&](int32_t target, double loss) {
    if (target < 0 || size_t(target) >= target_bytes_.size()) return;
    const int32_t b = target_bytes_[size_t(target)];
    if (b <= 0) return;
    st.byte_loss_sum += loss;
    st.bytes += b;
  };
  for (int r0 = 0; r0 < N;) {
    const int rows = std::min({logits_rows_, N - r0, preference ? run - r0 % run : N});
    // (the head's multiplier, μP's, as gscale)
    const float g = preference
                        ? preference_scale_[size_t(row_sequence(r0, B, T))] * shape_.head_mult()
                        : gscale;
    const A* x = S.lnfg + size_t(r0) * C;
    const int32_t* tgt = (dev_targets != nullptr ? dev_targets : d_targets_) + r0;
    head_logits(logits, x, rows, Vl, fp8_head);
    if (mp_.tp == 1) {
      be_.crossentropy_forward_backward(logits, S.losses + r0, hits ? hits + r0 : nullptr, tgt,
                                        rows, shape_.vocab_size, Vl, g, z,
                                        log_z ? log_z + r0 : nullptr, shape_.logit_softcap);
    } else {
      // Vocabulary-parallel cross-entropy: only per-row statistics cross the group, never
      // logits. stats: row max | argmax | sum exp | target logit, `rows` each.
      float* stats = a.ce_stats;
      float *hmax = host, *harg = host + rows, *hsum = host + 2 * rows, *htgt = host + 3 * rows;
      be_.logits_row_max(stats, stats + rows, logits, rows, vocab_valid_, Vl);
      be_.copy_to_host(host, stats, 2 * size_t(rows));
      // Global argmax = the smallest global column holding the global max: each rank offers
      // its first local column where its max is the global one, as −column, and the group
      // takes the max.
      float* cand = host_candidates_.data();
      for (int i = 0; i < rows; ++i) cand[i] = hmax[i];
      mp_.tp_comm->all_reduce_max(cand, size_t(rows));
      for (int i = 0; i < rows; ++i) {
        const bool mine = harg[i] >= 0 && hmax[i] == cand[i];
        hmax[i] = cand[i];
        harg[i] =
            mine ? -float(vocab_begin_ + int(harg[i])) : -std::numeric_limits<float>::infinity();
      }
      mp_.tp_comm->all_reduce_max(harg, size_t(rows));
      be_.copy_from_host(stats, hmax, size_t(rows));
      be_.softmax_partial_sums(stats + 2 * rows, stats + 3 * rows, logits, stats, tgt, rows,
                               vocab_valid_, Vl);
      be_.copy_to_host(hsum, stats + 2 * rows, 2 * size_t(rows));
      mp_.tp_comm->all_reduce_sum(hsum, 2 * size_t(rows));  // sums and target logits
      if (with_grad) {
        be_.copy_from_host(stats + 2 * rows, hsum, size_t(rows));
        be_.crossentropy_backward_partial(logits, stats, stats + 2 * rows, tgt, rows, vocab_valid_,
                                          Vl, g, z, shape_.logit_softcap);
      }
      for (int i = 0; i < rows; ++i) {
        if (host_targets[r0 + i] < 0) {  // masked: no loss (the kernels gave it no gradient)
          if (row_losses) row_losses[r0 + i] = 0.0f;
          continue;
        }
        const double loss = std::log(double(hsum[i])) + double(hmax[i]) - double(htgt[i]);
        st.loss_sum += loss;
        if (z > 0.0f) {  // log Z, as the kernel computes it from the same statistics
          const double lz = double(hmax[i]) + std::log(double(hsum[i]));
          st.z_sum += lz * lz;
        }
        if (row_losses) row_losses[r0 + i] = float(loss);
        count_bytes(host_targets[r0 + i], loss);
        st.correct += int(-harg[i]) == host_targets[r0 + i] ? 1 : 0;
      }
    }
    if (with_grad)  // dlogits sit in `logits`
      linear_backward<A>(fp8_head_site(), dpart + size_t(r0) * C, head_grad, head_bias_grad, logits,
                         x, head_weight<A>(), rows, C, Vl, GradMode::overwrite);
    r0 += rows;
  }
  if (with_grad) reduce_rows(dpart, S.dlnf, N);
  if (mp_.tp == 1) {
    // Sum on the host in a fixed order (deterministic, independent of threads).
    be_.copy_to_host(host, S.losses, size_t(N));
    be_.copy_to_host(host + N, S.correct, size_t(N));
    for (int i = 0; i < N; ++i) st.loss_sum += host[size_t(i)];
    if (!target_bytes_.empty())
      for (int i = 0; i < N; ++i) count_bytes(host_targets[i], host[size_t(i)]);
    if (row_losses) std::copy(host, host + N, row_losses);
    if (z > 0.0f) {  // log Z of each row (0 for a masked one)
      for (int i = 0; i < N; ++i) st.z_sum += double(host[size_t(N + i)]) * host[size_t(N + i)];
    } else {
      for (int i = 0; i < N; ++i) st.correct += host[size_t(N + i)] > 0.5f ? 1 : 0;
    }
  }
  if (preference) {  // the loss is the pairs' (the targets' counts and hits stay)
    pairs.tokens = st.tokens;
    pairs.correct = st.correct;
    return pairs;
  }
  return st;
}

ForwardStats Gpt::preference_weights(const int32_t* host_targets, int B, int T, float dloss_scale) {
  TRIAD_CHECK(B % 2 == 0, "internal error: DPO needs whole pairs in a micro-batch");
  // π of each sequence: minus its rows' cross-entropies (a masked row's is 0), and its counted
  // targets, of this rank's rows, then summed over the context-parallel group's pieces.
  std::vector<double> logp(size_t(B), 0.0), counted(size_t(B), 0.0);
  for (int r = 0; r < B * T; ++r) {
    logp[size_t(row_sequence(r, B, T))] -= double(preference_rows_[size_t(r)]);
    counted[size_t(row_sequence(r, B, T))] += host_targets[r] >= 0 ? 1.0 : 0.0;
  }
  if (mp_.cp > 1) {
    for (double& v : logp) v = mp_.cp_comm->all_reduce_sum(v);
    for (double& v : counted) v = mp_.cp_comm->all_reduce_sum(v);
  }
  const double* ref = preference_reference_ + preference_first_row_;
  preference_scale_.assign(size_t(B), 0.0f);
  ForwardStats st;
  for (int j = 0; j < B / 2; ++j) {
    const size_t c = size_t(2 * j), r = c + 1;
    const PairLoss p =
        preference_pair_loss(preference_, logp[c], ref[c], counted[c], logp[r], ref[r], counted[r]);
    // The classifier's gradient is that of the cross-entropy, −π: each sequence's rows take
    // −d loss / d π.
    preference_scale_[c] = float(-double(dloss_scale) * p.d_chosen);
    preference_scale_[r] = float(-double(dloss_scale) * p.d_rejected);
    if (mp_.cp_rank != 0) continue;  // the group's first rank counts the pair
    st.loss_sum += p.loss;
    st.pairs += 1;
    st.pairs_right += p.right() ? 1 : 0;
    st.chosen_reward_sum += p.chosen;
    st.rejected_reward_sum += p.rejected;
  }
  return st;
}

// One layer's backward pass (backward_chunk's, and a multi-token prediction module's block):
// dresidual holds the gradient of its output and gets that of its input x_in; the weights w, the
// gradients formed into gr (split: the input gradients only, the rest left in L for the weight
// pass); recompute: what the forward pass did not keep.
template <class A>
void Gpt::layer_backward(typename Set<A>::Layer& L, const A* x_in, int l,
                         const LayerTensors<const A>& w, const LayerTensors<float>& gr,
                         Recompute recompute, bool split, int B, int T) {
  const int C = shape_.n_embd, Al = shape_.attn_width() / mp_.tp, NHl = shape_.n_head / mp_.tp;
  const int NKVl = shape_.kv_heads() / mp_.tp, Wl = shape_.qkv_rows() / mp_.tp;
  const int N = B * T, n = local_rows(N);
  auto& a = acts<A>();
  // Each activation gradient below is formed by one op, which writes over the buffer (no
  // zeroing pass); the residual stream's gradient (dresidual) accumulates its branches.
  constexpr GradMode kSet = GradMode::overwrite;
  // Input gradients of column-parallel layers are partial sums over all rows: formed in
  // `dpart` (dln itself without sequence parallelism), then reduced into this rank's dln rows.
  A* dpart = mp_.split_rows() ? a.full : a.dln;
  if (recompute == Recompute::full) {
    // The layer's internals sit in the shared scratch layer: rerun its forward from its input
    // (the same ops on the same values as the forward pass: ln_1 reads x_in as stored, as
    // the fused residual add + LayerNorm did).
    pre_norm_forward(L.ln1, L.ln1_mean, L.ln1_rstd, x_in, w.ln1w, w.ln1b, n);
    recomputing_ = true;  // the routing statistics were counted by the forward pass
    layer_front_at(L, x_in, l, B, T, 0);
    recomputing_ = false;
    if (shape_.branch_norm) {  // ln_mlp_out's backward reads the MLP's output, and its stats
      mlp_output(L, w, l, N);
      be_.layernorm_forward(acts<A>().proj, L.pn2_mean, L.pn2_rstd, L.fcproj, w.monw, w.monb, n, C,
                            shape_.norm_eps);
    } else if (shape_.moe_layer(l)) {  // the gates' gradient reads the experts' outputs
      moe_output<A>(L, l, nullptr, w, N);
    }
  } else if (recompute == Recompute::gelu && !split) {  // split: only the weight pass reads it
    mlp_activation(L.fch_gelu, L.fch, mlp_rows(L, N, l), shape_.layer_hidden(l) / mp_.tp);
  }
  // Split: no weight or bias gradients here, and the output gradients kept in the set.
  auto wgrad = [split](float* p) { return split ? nullptr : p; };
  A* dfch = split ? L.dfch : a.dfch;
  A* dqkv = split && !shape_.mla() ? L.dqkv : a.dqkv;  // (MLA keeps its products' own)
  // MLP branch: residual3 = residual2 + c_proj(gelu(c_fc(ln_2(residual2)))) (through
  // ln_mlp_out under model.branch_norm). The row-parallel c_proj sees the gradient of all
  // rows, so its bias gradient is complete.
  // Branches reduced as one (fuses_branches): the layer output's gradient is both branches'
  // output gradient, gathered once (into the weight pass's dproj, which reads it for both).
  const bool joined = fuses_branches(l);
  const A* dmlp = branch_output_backward(gr.monw, gr.monb, a.dresidual, L.fcproj, w.monw,
                                         L.pn2_mean, L.pn2_rstd, n, GptShape::mlp_dropout_site(l));
  const A* dres = joined
                      ? split ? keep_rows(dmlp, L.dproj, N) : gather_rows(dmlp, a.branch_partial, N)
                  : split && shape_.weight_pass_reads_mlp_output(l) ? keep_rows(dmlp, L.dfcproj, N)
                                                                    : gather_rows(dmlp, a.full, N);
  const int Hl = shape_.dense_hidden() / mp_.tp, Fl = shape_.dense_fc_rows() / mp_.tp;
  if (shape_.moe_layer(l)) {
    moe_backward<A>(L, l, dpart, gr, dres, L.ln2g, w, N, split);
  } else if (!shape_.gelu_in_product()) {  // c_proj's input gradient, then through the
    // activation into c_fc's
    linear_backward(fp8_site(l, 3), a.dfch_gelu, wgrad(gr.fcprojw), wgrad(gr.fcprojb), dres,
                    L.fch_gelu, w.fcprojw, N, Hl, C, kSet);
    mlp_activation_backward(dfch, L.fch, a.dfch_gelu, N, Hl);
  } else {
    linear_backward_gelu(fp8_site(l, 3), dfch, a.dfch_gelu, wgrad(gr.fcprojw), wgrad(gr.fcprojb),
                         dres, L.fch_gelu, L.fch, w.fcprojw, N, Hl, C, kSet);
  }
  if (!shape_.moe_layer(l))
    linear_backward(fp8_site(l, 2), dpart, wgrad(gr.fcw), wgrad(gr.fcb), dfch, L.ln2g, w.fcw, N, C,
                    Fl, kSet);
  // model.shared_norm: the gradient of the norm's output, the MLP's part, waits for the
  // attention's before the one norm's backward: as partial sums in dpart, which c_attn's
  // backward adds to, where the branches are reduced as one; else reduced, in dln_mlp.
  const bool one_input_grad = joined && shape_.shared_norm;
  if (!one_input_grad) reduce_rows(dpart, a.dln, N);
  if (shape_.shared_norm && !one_input_grad)
    be_.copy(words(a.dln_mlp), words(a.dln), word_count<A>(size_t(n) * C));
  // ln_2's backward adds its input's gradient to dresidual: that of residual2, or under
  // parallel_residual of x, which the attention branch's output gradient must not see (both
  // branches' is the layer output's): it runs after attn.c_proj's backward has read it.
  auto ln2_backward = [&] {
    if (shape_.shared_norm) return;
    pre_norm_backward(a.dresidual, gr.ln2w, gr.ln2b, a.dln,
                      shape_.parallel_residual ? x_in : L.residual2, w.ln2w, L.ln2_mean, L.ln2_rstd,
                      n);
  };
  if (!shape_.parallel_residual) ln2_backward();
  // Attention branch: residual2 = x + c_proj(attn(c_attn(ln_1(x)))) (through ln_attn_out).
  if (!joined) {
    const A* datt = branch_output_backward(gr.aonw, gr.aonb, a.dresidual, L.attproj, w.aonw,
                                           L.pn1_mean, L.pn1_rstd, n, shape_.attn_dropout_site(l));
    dres = split ? keep_rows(datt, L.dproj, N) : gather_rows(datt, a.full, N);
  }
  if (shape_.mla()) {  // c_proj read each head's v_head_dim outputs: the rest's gradient 0
    const int dv = shape_.v_head_dim, hd = shape_.hd();
    linear_backward(fp8_site(l, 1), a.mla_do, wgrad(gr.projw), wgrad(gr.projb), dres,
                    mla_output(L.atty, N), w.projw, N, shape_.proj_width() / mp_.tp, C, kSet);
    if (dv < hd) be_.zero(a.datty, size_t(N) * Al);
    be_.copy_rows(words(a.datty), word_count<A>(size_t(hd)), words(a.mla_do),
                  word_count<A>(size_t(dv)), size_t(N) * size_t(NHl), word_count<A>(size_t(dv)));
  } else {
    linear_backward(fp8_site(l, 1), a.datty, wgrad(gr.projw), wgrad(gr.projb), dres, L.atty,
                    w.projw, N, Al, C, kSet);
  }
  if (shape_.parallel_residual) ln2_backward();
  // The sinks' gradient (model.attn_sinks) is formed here, in the input-gradient pass of a
  // split backward too, as the norms' are: it needs the attention's output gradient only.
  if (mp_.cp > 1)
    cp_attention_backward(dqkv, a.datt_scratch, a.datty, L.qkv, L.atty, L.att, B, l, w.sinks,
                          gr.sinks);
  else if constexpr (std::is_same_v<A, float>)
    be_.attention_backward(dqkv, a.datt_scratch, a.datty, L.qkv, L.att, B, T, Al, NHl, NKVl, kSet,
                           layer_key_begin(l), {}, shape_.scores_scale(), shape_.attn_softcap,
                           attention_dropout(l), w.sinks, gr.sinks);
  else  // flash style: probabilities recomputed from qkv and the saved log-sum-exp
    be_.attention_backward(dqkv, a.datty, L.qkv, L.atty, L.att, B, T, Al, NHl, NKVl, kSet,
                           layer_key_begin(l), {}, shape_.scores_scale(), shape_.attn_softcap,
                           attention_dropout(l), w.sinks, gr.sinks);
  // The gradient of the normalized q|k|v, before the rotation ...
  rotate_pieces(l, dqkv, B, T, true);
  if (shape_.qk_norm)  // ... and of c_attn's output, before the norm
    qk_norm_backward(dqkv, gr.qnw, gr.knw, L.qkv_pre, w.qnw, w.knw, L.qk_rstd, N);
  else if (shape_.clip_qkv > 0)  // ... or before the clamp
    be_.clamp_backward(dqkv, L.qkv_pre, size_t(N) * Wl, shape_.clip_qkv);
  if (shape_.mla())
    mla_backward(L, l, dpart, gr, dqkv, L.ln1g, w, N, one_input_grad ? GradMode::accumulate : kSet,
                 split);
  else
    linear_backward(fp8_site(l, 0), dpart, wgrad(gr.qkvw), wgrad(gr.qkvb), dqkv, L.ln1g, w.qkvw, N,
                    C, Wl, one_input_grad ? GradMode::accumulate : kSet);
  reduce_rows(dpart, a.dln, N);
  if (shape_.shared_norm && !one_input_grad) be_.add(a.dln, a.dln, a.dln_mlp, size_t(n) * C);
  pre_norm_backward(a.dresidual, gr.ln1w, gr.ln1b, a.dln, x_in, w.ln1w, L.ln1_mean, L.ln1_rstd, n);
}

template <class A>
void Gpt::backward_chunk(int chunk, Set<A>& S, int B, int T) {
  const int C = shape_.n_embd, N = B * T, n = local_rows(N);
  auto& a = acts<A>();
  const auto& sp = specs_;
  const int g = mp_.global_chunk(chunk), per_chunk = mp_.chunk_layers(g, shape_.n_layer);
  const int first_layer = mp_.first_layer(g, shape_.n_layer);
  const bool split = split_backward_;
  // A split pass leaves the layers' weight gradients to the weight pass, which reports them.
  if (g == mp_.chunks() - 1) {
    // The classifier ran its backward with the loss: ln_f's output gradient is in S.dlnf (with
    // the multi-token prediction modules' where mtp_step ran).
    be_.zero(a.dresidual, size_t(n) * C);
    const size_t lnf = sp[size_t(lnf_)].offset;
    layernorm_backward(a.dresidual, grad_at(lnf),
                       lnf_bias_ ? grad_at(sp[size_t(lnf_) + 1].offset) : nullptr, S.dlnf,
                       S.output(), weight_at<A>(lnf), S.lnf_mean, S.lnf_rstd, n);
    // (with an untied head, and the modules' tensors after it)
    grad_ready(lnf, n_floats_ - lnf, grad_at(lnf), nullptr);
  }
  // Otherwise the caller has put the gradient of the chunk's output into dresidual.
  for (int i = per_chunk - 1; i >= 0; --i) {
    auto& L = S.layers[size_t(i)];
    const int first = layer_[size_t(first_layer + i)];
    // ZeRO-3: the two layers below gather while this one computes (their buffers held layers
    // above it, done).
    prefetch_layer_weights<A>(first_layer + i - 1);
    prefetch_layer_weights<A>(first_layer + i - 2);
    size_t origin = 0;
    const A* base = layer_weight_base<A>(first_layer + i, &origin);
    const int l = first_layer + i;
    const LayerTensors<const A> w = layer_tensors(base, specs_, first, slots(l), origin);
    const size_t at = sp[size_t(first)].offset;
    float* bucket = layer_grad_bucket(first_layer + i, at);
    if (g == 0 && first_layer + i < frozen_layers_) {  // frozen, as everything below it
      if (!split)
        grad_ready(at, layer_end(first) - at, bucket,
                   bucketed_ ? &ring_pending_[(first_layer + i) % 2] : nullptr);
      continue;
    }
    const LayerTensors<float> gr = without_frozen(
        layer_tensors(bucket, specs_, first, slots(l), at), frozen_, first, slots(l));
    const A* x_in = i == 0 ? S.input : S.layers[size_t(i - 1)].residual3;
    layer_backward(L, x_in, l, w, gr, recompute_.in_layer(i), split, B, T);
    if (!split)
      grad_ready(at, layer_end(first) - at, bucket,
                 bucketed_ ? &ring_pending_[(first_layer + i) % 2] : nullptr);
  }
  if (g == 0) {
    // wpe is replicated: every rank accumulates the same gradient (of all rows); wte rows
    // only for the ids this rank holds.
    float* dwte = grad_at(sp[size_t(wte_)].offset);
    float* dwpe = wpe_ >= 0 ? grad_at(sp[size_t(wpe_)].offset) : nullptr;
    const bool frozen = !frozen_.empty() && frozen_[size_t(wte_)] &&
                        (wpe_ < 0 || frozen_[size_t(wpe_)]);  // train.freeze: nothing to form
    if (!frozen) {
      drop_rows(a.dresidual, n, 0);    // the embedding's output was dropped: so is its gradient
      if (shape_.embed_scale != 1.0f)  // the embedding's output was scaled: so is its gradient
        be_.scale_cap_logits(a.dresidual, size_t(n) * C, shape_.embed_scale, 0.0f);
      const A* dres = gather_rows(a.dresidual, a.full, N);
      if (positions_ != nullptr) {
        be_.encoder_backward(dwte, dwpe, dres, d_inputs_, B, T, C, positions_);
      } else {
        for_each_piece(B, T, [&](size_t at, int n, int p0) {
          be_.encoder_backward(dwte, dwpe != nullptr ? dwpe + size_t(p0) * C : nullptr,
                               dres + at * C, d_inputs_ + at, B, n, C);
        });
      }
    }
    // wte, wpe: up to the next tensor (a stage without layers or head may hold nothing else)
    const size_t next = size_t(std::max(wte_, wpe_)) + 1;
    grad_ready(0, next < sp.size() ? sp[next].offset : n_floats_, grad_at(0), nullptr);
  }
}

// The weight pass of a split backward: each linear layer's weight and bias gradients from the
// output gradients backward_chunk left in S and the inputs the forward pass kept, layer by layer
// in the backward's order (the same products, on the same values, as the unsplit backward: on
// the CPU backend the gradients are bit for bit those of 1F1B).
template <class A>
void Gpt::weight_chunk(int chunk, Set<A>& S, int B, int T) {
  TRIAD_ASSERT(split_backward_ && !bucketed_);
  const int C = shape_.n_embd, Al = shape_.attn_width() / mp_.tp, N = B * T;
  const int Wl = shape_.qkv_rows() / mp_.tp;
  const int g = mp_.global_chunk(chunk), per_chunk = mp_.chunk_layers(g, shape_.n_layer);
  const int first_layer = mp_.first_layer(g, shape_.n_layer);
  for (int i = per_chunk - 1; i >= 0; --i) {
    auto& L = S.layers[size_t(i)];
    const int l = first_layer + i, first = layer_[size_t(l)];
    const LayerTensors<const A> w = layer_tensors(weights<A>(), specs_, first, slots(l));
    const size_t at = specs_[size_t(first)].offset;
    if (g == 0 && l < frozen_layers_) {  // set_frozen
      grad_ready(at, layer_end(first) - at, grads_ + at, nullptr);
      continue;
    }
    const LayerTensors<float> gr =
        without_frozen(layer_tensors(grads_, specs_, first, slots(l)), frozen_, first, slots(l));
    if (recompute_.in_layer(i) == Recompute::gelu)  // mlp.c_proj's input, in the shared buffer
      mlp_activation(L.fch_gelu, L.fch, mlp_rows(L, N, l), shape_.layer_hidden(l) / mp_.tp);
    const int Hl = shape_.dense_hidden() / mp_.tp, Fl = shape_.dense_fc_rows() / mp_.tp;
    if (shape_.moe_layer(l)) {
      moe_weights<A>(L, l, gr, L.ln2g, w, N);
    } else {
      // (Branches reduced as one: their common output gradient is in dproj.)
      linear_backward<A>(fp8_site(l, 3), nullptr, gr.fcprojw, gr.fcprojb,
                         fuses_branches(l) ? L.dproj : L.dfcproj, L.fch_gelu, w.fcprojw, N, Hl, C);
      linear_backward<A>(fp8_site(l, 2), nullptr, gr.fcw, gr.fcb, L.dfch, L.ln2g, w.fcw, N, C, Fl);
    }
    if (shape_.mla()) {  // c_proj read each head's v_head_dim outputs
      linear_backward<A>(fp8_site(l, 1), nullptr, gr.projw, gr.projb, L.dproj,
                         mla_output(L.atty, N), w.projw, N, shape_.proj_width() / mp_.tp, C);
      mla_weights(L, l, gr, L.ln1g, w, N);
    } else {
      linear_backward<A>(fp8_site(l, 1), nullptr, gr.projw, gr.projb, L.dproj, L.atty, w.projw, N,
                         Al, C);
      linear_backward<A>(fp8_site(l, 0), nullptr, gr.qkvw, gr.qkvb, L.dqkv, L.ln1g, w.qkvw, N, C,
                         Wl);
    }
    grad_ready(at, layer_end(first) - at, grads_ + at, nullptr);
  }
}

template <class A>
ForwardStats Gpt::forward_backward_t(const int32_t* inputs, const int32_t* targets, int B,
                                     float dloss_scale) {
  TRIAD_CHECK(!inference_, "internal error: a model for inference cannot train");
  TRIAD_CHECK(mp_.pp == 1, "internal error: forward_backward with pp > 1 (use pipeline_step)");
  TRIAD_CHECK(!bucketed_ || grad_hook_,
              "internal error: gradient buckets without a hook to reduce them");
  // A bucket holds one micro-batch's gradient: the ends start from zero (each layer's bucket is
  // zeroed as its backward begins).
  if (bucketed_) be_.zero(grad_ends_, ends_floats());
  dloss_scale_ = preference_reference_ != nullptr ? preference_moe_scale_ : dloss_scale;
  struct Training {  // (an error leaves the flag as it found it too)
    bool& on;
    ~Training() { on = false; }
  } training{training_ = true};
  const int T = shape_.seq_len, Tl = mp_.seq_rows(T);  // rows per sequence here: Tl
  TRIAD_ASSERT(B >= 1 && B <= max_batch_);
  Set<A>& S = acts<A>().sets[0][0];
  const int32_t* in = cp_local_ids(inputs, 1, B, cp_inputs_);
  const int32_t* tg = cp_local_ids(targets, 1, B, cp_targets_);
  upload_ids(in, tg, B * Tl);
  set_attention_mask(inputs, B, T);  // over the whole sequences
  set_dropout_rows(dropout_first_, B);
  forward_chunk(0, S, B, Tl);
  preference_first_row_ = 0;
  ForwardStats st = classifier(S, tg, B, Tl, dloss_scale, true);
  if (shape_.mtp_depth > 0) mtp_step(S, inputs, targets, B, Tl, dloss_scale);
  backward_chunk(0, S, B, Tl);
  // The reductions the hook started, complete (their buckets are free for the next backward).
  for (auto& r : grad_pending_) r.wait();
  grad_pending_.clear();
  for (auto& r : ring_pending_) r.wait();
  return st;
}

template <class A>
ForwardStats Gpt::evaluate_t(const int32_t* inputs, const int32_t* targets, int B) {
  TRIAD_ASSERT(B >= 1 && B <= max_batch_);
  const int T = shape_.seq_len, Tl = mp_.seq_rows(T);
  ForwardStats st;
  set_attention_mask(inputs, B, T);
  const int32_t* in = cp_local_ids(inputs, 1, B, cp_inputs_);
  if (Set<A>* last = forward_pipeline<A>(in, B, Tl)) {
    const int32_t* tg = cp_local_ids(targets, 1, B, cp_targets_);
    upload_ids(nullptr, tg, B * Tl);
    const bool by_position = position_sums_ != nullptr && mp_.tp_rank == 0;
    const bool by_sequence = sequence_logps_ != nullptr && mp_.tp_rank == 0;
    if (by_position || by_sequence) position_rows_.assign(size_t(B) * Tl, 0.0f);
    st = classifier(*last, tg, B, Tl, 0.0f, false,
                    by_position || by_sequence ? position_rows_.data() : nullptr);
    if (by_sequence)  // (a masked row's loss is 0)
      for (int r = 0; r < B * Tl; ++r)
        sequence_logps_[row_sequence(r, B, Tl)] -= double(position_rows_[size_t(r)]);
    if (by_position) {
      // Local row r: sequence b's position j, or under context parallelism piece k's row j of
      // sequence b at (k·B + b)·P + j, at the piece's start in the sequence.
      const int P = mp_.cp == 1 ? T : T / (2 * mp_.cp);
      for (int r = 0; r < B * Tl; ++r) {
        if (tg[r] < 0) continue;  // masked: not counted
        const int t = mp_.cp == 1 ? r % T : mp_.piece_start(r / (B * P), T, mp_.cp_rank) + r % P;
        position_sums_[t] += double(position_rows_[size_t(r)]);
        position_counts_[t] += 1.0;
      }
    }
  }
  return share_from_last_stage(st);
}

// n logits (fp32 or bf16) from the backend to host floats; bf16 rows are widened one row at a
// time through the planned row scratch.
template <class A>
void Gpt::logits_to_host(float* host, const A* dev, size_t n) {
  if constexpr (std::is_same_v<A, float>) {
    be_.copy_to_host(host, dev, n);
  } else {
    float* row = acts<bf16_t>().row_wide;
    const size_t w = size_t(shape_.padded_vocab_size);
    for (size_t i = 0; i < n; i += w) {
      const size_t k = std::min(w, n - i);
      be_.convert(row, dev + i, k);
      be_.copy_to_host(host + i, row, k);
    }
  }
}

template <class A>
void Gpt::forward_logits_t(const int32_t* inputs, int B, float* host_out) {
  TRIAD_CHECK(mp_.tp == 1 && mp_.pp == 1 && mp_.cp == 1,
              "forward_logits needs the whole model on one rank");
  const int T = shape_.seq_len, C = shape_.n_embd, V = shape_.vocab_size;
  const int Vp = shape_.padded_vocab_size;
  Set<A>& S = acts<A>().sets[0][0];
  upload_ids(inputs, nullptr, B * T);
  set_attention_mask(inputs, B, T);
  forward_chunk(0, S, B, T);
  std::vector<float> rows(size_t(logits_rows_) * Vp);
  for (int r0 = 0; r0 < B * T; r0 += logits_rows_) {
    const int n = std::min(logits_rows_, B * T - r0);
    head_logits(acts<A>().logits, S.lnf + size_t(r0) * C, n, Vp, true);
    logits_to_host(rows.data(), acts<A>().logits, size_t(n) * Vp);
    for (size_t i = 0; i < size_t(n); ++i)
      std::copy_n(rows.data() + i * Vp, V, host_out + (size_t(r0) + i) * V);
  }
}

ForwardStats Gpt::forward_backward(const int32_t* inputs, const int32_t* targets, int B,
                                   float dloss_scale) {
  return precision_ == Precision::bf16 ? forward_backward_t<bf16_t>(inputs, targets, B, dloss_scale)
                                       : forward_backward_t<float>(inputs, targets, B, dloss_scale);
}

ForwardStats Gpt::evaluate(const int32_t* inputs, const int32_t* targets, int B) {
  return precision_ == Precision::bf16 ? evaluate_t<bf16_t>(inputs, targets, B)
                                       : evaluate_t<float>(inputs, targets, B);
}

void Gpt::forward_logits(const int32_t* inputs, int B, float* host_out) {
  if (precision_ == Precision::bf16)
    forward_logits_t<bf16_t>(inputs, B, host_out);
  else
    forward_logits_t<float>(inputs, B, host_out);
}

// The chunk steps are used by the pipeline executor (gpt_pipeline.cpp) too.
template void Gpt::forward_chunk<float>(int, Set<float>&, int, int, int);
template void Gpt::forward_chunk<bf16_t>(int, Set<bf16_t>&, int, int, int);
template void Gpt::backward_chunk<float>(int, Set<float>&, int, int);
template void Gpt::backward_chunk<bf16_t>(int, Set<bf16_t>&, int, int);
template void Gpt::weight_chunk<float>(int, Set<float>&, int, int);
template void Gpt::weight_chunk<bf16_t>(int, Set<bf16_t>&, int, int);
template void Gpt::layer_front<float>(Set<float>&, int, int, int, int, int);
template void Gpt::layer_front<bf16_t>(Set<bf16_t>&, int, int, int, int, int);
template const float* Gpt::gather_rows<float>(const float*, float*, int);
template const bf16_t* Gpt::gather_rows<bf16_t>(const bf16_t*, bf16_t*, int);
template void Gpt::pre_norm_forward<float>(float*, float*, float*, const float*, const float*,
                                           const float*, int);
template void Gpt::pre_norm_forward<bf16_t>(bf16_t*, float*, float*, const bf16_t*, const bf16_t*,
                                            const bf16_t*, int);
template void Gpt::layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                             const float*, const float*, const float*, int);
template void Gpt::layernorm_backward<bf16_t>(bf16_t*, float*, float*, const bf16_t*, const bf16_t*,
                                              const bf16_t*, const float*, const float*, int);
template void Gpt::layer_front_at<float>(Set<float>::Layer&, const float*, int, int, int, int);
template void Gpt::layer_front_at<bf16_t>(Set<bf16_t>::Layer&, const bf16_t*, int, int, int, int);
template ForwardStats Gpt::classifier<float>(Set<float>&, const int32_t*, int, int, float, bool,
                                             float*, bool, const int32_t*);
template ForwardStats Gpt::classifier<bf16_t>(Set<bf16_t>&, const int32_t*, int, int, float, bool,
                                              float*, bool, const int32_t*);
template void Gpt::layer_backward<float>(Set<float>::Layer&, const float*, int,
                                         const LayerTensors<const float>&,
                                         const LayerTensors<float>&, Recompute, bool, int, int);
template void Gpt::layer_backward<bf16_t>(Set<bf16_t>::Layer&, const bf16_t*, int,
                                          const LayerTensors<const bf16_t>&,
                                          const LayerTensors<float>&, Recompute, bool, int, int);
template void Gpt::mlp_activation<float>(float*, const float*, int, int);
template void Gpt::mlp_activation<bf16_t>(bf16_t*, const bf16_t*, int, int);
template void Gpt::mlp_activation_backward<float>(float*, const float*, const float*, int, int);
template void Gpt::mlp_activation_backward<bf16_t>(bf16_t*, const bf16_t*, const bf16_t*, int, int);
template void Gpt::logits_to_host<float>(float*, const float*, size_t);
template void Gpt::logits_to_host<bf16_t>(float*, const bf16_t*, size_t);

}  // namespace triad
