// Context parallelism (ModelParallel::cp > 1; docs/parallelism.md): the attention of this rank's
// two pieces of every sequence against the keys and values of the whole sequence, in the
// all-gather form Llama 3 was trained with: every rank gathers the other ranks' keys and values
// (so any mask applies unchanged: documents, windows), computes the attention of its own queries,
// and in the backward pass the gradients of the gathered keys and values are summed back to their
// owners with a reduce-scatter. The early and the late piece of each rank (ModelParallel::
// piece_start) give every rank the same share of the causal attention's work.
//
// Layouts: this rank's rows are [2][B][piece] (piece = T / (2·cp)); whole sequences [B][T] in
// cp_qkv and cp_dqkv; the key and value columns (the last 2·NKVl·hd of a q|k|v row) travel packed,
// [rank][2][B][piece] rows of them. bf16 rows are copied and gathered as fp32 words (their widths
// are even, checked by the constructor). In bf16 each rank's key and value gradients come out of
// the bf16 attention backward (its two pieces' calls each adding into the bf16 buffer, one
// rounding each), and the ranks' partial sums are then added in fp32 and rounded once.
#include <algorithm>
#include <type_traits>

#include "gpt_activations.h"
#include "triad/core/error.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

// Each of rank r's pieces of each of B sequences of T tokens: f(at, from), `at` the piece's first
// row in the whole sequences ([B][T]) and `from` its first row among rank r's rows ([2][B][piece]).
template <class F>
void for_each_piece_of(const ModelParallel& mp, int r, int B, int T, F&& f) {
  const size_t P = size_t(T) / size_t(2 * mp.cp);
  for (int k = 0; k < 2; ++k)
    for (int b = 0; b < B; ++b)
      f(size_t(b) * T + size_t(mp.piece_start(k, T, r)), (size_t(k) * B + b) * P);
}

}  // namespace

size_t Gpt::cp_att_offset(int piece, int B, bool probabilities) const {
  if (piece == 0) return 0;
  const int T = shape_.seq_len, P = T / (2 * mp_.cp);
  const size_t per_head =
      probabilities ? size_t(P) * size_t(mp_.piece_start(0, T, mp_.cp_rank) + P) : size_t(P);
  return size_t(B) * size_t(shape_.n_head / mp_.tp) * per_head;
}

const int32_t* Gpt::cp_local_ids(const int32_t* ids, int m, int B,
                                 std::vector<int32_t>& out) const {
  if (mp_.cp == 1 || ids == nullptr) return ids;
  const int T = shape_.seq_len, P = T / (2 * mp_.cp);
  const size_t per_mb = size_t(B) * mp_.seq_rows(T);
  out.resize(size_t(m) * per_mb);
  for (int mb = 0; mb < m; ++mb) {
    const int32_t* whole = ids + size_t(mb) * B * T;
    int32_t* mine = out.data() + size_t(mb) * per_mb;
    for_each_piece_of(mp_, mp_.cp_rank, B, T, [&](size_t at, size_t from) {
      std::copy(whole + at, whole + at + P, mine + from);
    });
  }
  return out.data();
}

template <class A>
void Gpt::cp_gather_qkv(const A* qkv, int B) {
  auto& a = acts<A>();
  const int T = shape_.seq_len, P = T / (2 * mp_.cp);
  const size_t Wl = size_t(shape_.qkv_rows() / mp_.tp), Al = size_t(shape_.attn_width() / mp_.tp);
  const size_t KV = Wl - Al, local = size_t(2) * B * P;
  auto w = [](size_t n) { return word_count<A>(n); };
  be_.copy_rows(words(a.cp_send), w(KV), words(qkv + Al), w(Wl), local, w(KV));
  mp_.cp_comm->all_gather(words(a.cp_send), words(a.cp_recv), w(local * KV));
  // Every rank's pieces into their places in the whole sequences: the others' keys and values,
  // and this rank's whole rows (its queries too).
  for (int r = 0; r < mp_.cp; ++r)
    for_each_piece_of(mp_, r, B, T, [&](size_t at, size_t from) {
      if (r == mp_.cp_rank) {
        be_.copy(words(a.cp_qkv + at * Wl), words(qkv + from * Wl), w(size_t(P) * Wl));
      } else {
        be_.copy_rows(words(a.cp_qkv + at * Wl + Al), w(Wl),
                      words(a.cp_recv + (size_t(r) * local + from) * KV), w(KV), size_t(P), w(KV));
      }
    });
}

template <class A>
void Gpt::cp_attention_forward(A* atty, float* att, const A* qkv, int B, int layer,
                               const A* sinks) {
  cp_gather_qkv(qkv, B);
  const int T = shape_.seq_len, P = T / (2 * mp_.cp), Al = shape_.attn_width() / mp_.tp;
  const int NHl = shape_.n_head / mp_.tp, NKVl = shape_.kv_heads() / mp_.tp;
  constexpr bool kProbabilities = std::is_same_v<A, float>;
  for (int k = 0; k < 2; ++k) {
    const QueryRows rows{mp_.piece_start(k, T, mp_.cp_rank), P};
    be_.attention_forward(atty + size_t(k) * B * P * Al, att + cp_att_offset(k, B, kProbabilities),
                          acts<A>().cp_qkv, B, T, Al, NHl, NKVl, layer_key_begin(layer), rows,
                          shape_.scores_scale(), shape_.attn_softcap, attention_dropout(layer),
                          sinks);
  }
}

template <class A>
void Gpt::cp_attention_backward(A* dqkv, float* scratch, const A* datty, const A* qkv,
                                const A* atty, const float* att, int B, int layer, const A* sinks,
                                float* dsinks) {
  auto& a = acts<A>();
  cp_gather_qkv(qkv, B);  // again: one whole-sequence buffer serves every layer
  const int T = shape_.seq_len, P = T / (2 * mp_.cp), cp = mp_.cp;
  const int NHl = shape_.n_head / mp_.tp, NKVl = shape_.kv_heads() / mp_.tp;
  const size_t Wl = size_t(shape_.qkv_rows() / mp_.tp), Al = size_t(shape_.attn_width() / mp_.tp);
  const size_t KV = Wl - Al, local = size_t(2) * B * P;
  auto w = [](size_t n) { return word_count<A>(n); };
  be_.zero(a.cp_dqkv, size_t(B) * T * Wl);
  for (int k = 0; k < 2; ++k) {
    const QueryRows rows{mp_.piece_start(k, T, mp_.cp_rank), P};
    const size_t out = size_t(k) * B * P * Al;
    if constexpr (std::is_same_v<A, float>) {
      const size_t off = cp_att_offset(k, B, true);
      be_.attention_backward(a.cp_dqkv, scratch + off, datty + out, a.cp_qkv, att + off, B, T,
                             int(Al), NHl, NKVl, GradMode::accumulate, layer_key_begin(layer), rows,
                             shape_.scores_scale(), shape_.attn_softcap, attention_dropout(layer),
                             sinks, dsinks);
    } else {
      (void)scratch;
      be_.attention_backward(
          a.cp_dqkv, datty + out, a.cp_qkv, atty + out, att + cp_att_offset(k, B, false), B, T,
          int(Al), NHl, NKVl, GradMode::accumulate, layer_key_begin(layer), rows,
          shape_.scores_scale(), shape_.attn_softcap, attention_dropout(layer), sinks, dsinks);
    }
  }
  // The keys' and values' gradients go to their owners, summed over the group: packed by owner,
  // reduce-scattered (in fp32 for bf16).
  for (int r = 0; r < cp; ++r)
    for_each_piece_of(mp_, r, B, T, [&](size_t at, size_t from) {
      be_.copy_rows(words(a.cp_send + (size_t(r) * local + from) * KV), w(KV),
                    words(a.cp_dqkv + at * Wl + Al), w(Wl), size_t(P), w(KV));
    });
  const size_t all = size_t(cp) * local * KV;
  if constexpr (std::is_same_v<A, float>) {
    mp_.cp_comm->reduce_scatter_sum(a.cp_send, a.cp_recv, local * KV);
  } else {
    be_.convert(a.cp_wide, a.cp_send, all);
    mp_.cp_comm->reduce_scatter_sum(a.cp_wide, a.cp_wide + all, local * KV);
    be_.convert(a.cp_recv, a.cp_wide + all, local * KV);
  }
  be_.copy_rows(words(dqkv + Al), w(Wl), words(a.cp_recv), w(KV), local, w(KV));
  // This rank's queries' gradients, from their places in the whole sequences.
  for_each_piece_of(mp_, mp_.cp_rank, B, T, [&](size_t at, size_t from) {
    be_.copy_rows(words(dqkv + from * Wl), w(Wl), words(a.cp_dqkv + at * Wl), w(Wl), size_t(P),
                  w(Al));
  });
}

template void Gpt::cp_gather_qkv<float>(const float*, int);
template void Gpt::cp_gather_qkv<bf16_t>(const bf16_t*, int);
template void Gpt::cp_attention_forward<float>(float*, float*, const float*, int, int,
                                               const float*);
template void Gpt::cp_attention_forward<bf16_t>(bf16_t*, float*, const bf16_t*, int, int,
                                                const bf16_t*);
template void Gpt::cp_attention_backward<float>(float*, float*, const float*, const float*,
                                                const float*, const float*, int, int, const float*,
                                                float*);
template void Gpt::cp_attention_backward<bf16_t>(bf16_t*, float*, const bf16_t*, const bf16_t*,
                                                 const bf16_t*, const float*, int, int,
                                                 const bf16_t*, float*);

}  // namespace triad
