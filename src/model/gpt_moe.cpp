// The mixture of experts' MLP (GptShape::moe): routing, the experts' products over their rows in
// expert order, and the gated sum back to the tokens; its backward with the load-balancing loss.
// Each expert's rows are one contiguous block, so an expert is one plain product of the backend
// (dropless: no capacity, no padding; the host learns the blocks' sizes from moe_dispatch).
// Under tensor parallelism every rank routes all rows alike (the router is replicated) and holds
// 1/tp of every expert's hidden units, as the dense MLP's column- and row-parallel pair.
// Under expert parallelism (ep > 1) each rank of a group holds El = E/ep whole experts and routes
// its own rows: the rows chosen for another rank's experts go there in one all-to-all and come
// back in another (forward, and the gradients the same way in the backward pass). Routing and
// the gated sum stay with the token's rank; only the experts' products move.
// run.fp8: each expert's products in FP8 at its own tensorwise scales (experts_fp8_amax), the
// shared experts' as the dense MLP's (linear_forward / linear_backward at the layer's c_fc and
// c_proj sites); the router and the shared experts' gate stay in bf16/fp32 (DeepSeek-V3's
// choice: they decide which rows go where).
#include <algorithm>
#include <numeric>
#include <vector>

#include "gpt_activations.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

int total(const std::vector<int>& rows) { return std::accumulate(rows.begin(), rows.end(), 0); }

// The router's scoring and weighing (bias: layer's [E] on the backend; null in the backward
// pass, which it does not enter).
MoeRouting routing(const GptShape& s, const float* bias) {
  MoeRouting r(s.moe_normalize);
  r.sigmoid = s.moe_sigmoid;
  r.scale = s.moe_routed_scale;
  r.bias = bias;
  r.groups = s.moe_groups;
  r.group_top_k = s.moe_group_top_k;
  r.group_by_best = s.moe_group_by_best;
  return r;
}

// f(e, row, n) for each of this rank's experts e that runs n > 0 rows, from `row` on the experts'
// side. ep = 1: its block of the choices in expert order, of which it takes the first kept[e]
// (all but those a capacity drops, which stay in the block as a gap); ep > 1: the rows it
// received, grouped by expert.
template <class Layer, class F>
void for_each_expert(const Layer& L, F&& f) {
  const bool ep = !L.moe_recv.empty();
  const std::vector<int>& block = ep ? L.moe_rows : L.moe_counts;
  const std::vector<int>& take = ep ? L.moe_rows : L.moe_kept;
  size_t row = 0;
  for (size_t e = 0; e < block.size(); ++e) {
    if (take[e] > 0) f(e, row, take[e]);
    row += size_t(block[e]);
  }
}

// An expert's product: in FP8 at the three amax of `amax` (experts_fp8_amax), else the plain one;
// b: its bias (model.moe_bias; null: none), db its gradient (only with dw).
template <class A>
void expert_forward(Backend& be, const float* amax, A* out, const A* inp, const A* w, const A* b,
                    int n, int IC, int OC) {
  if (amax != nullptr)
    be.matmul_forward_fp8(out, inp, w, b, n, IC, OC, amax);
  else
    be.matmul_forward(out, inp, w, b, n, IC, OC);
}
template <class A>
void expert_backward(Backend& be, const float* amax, A* dinp, float* dw, float* db, const A* dout,
                     const A* inp, const A* w, int n, int IC, int OC, GradMode mode) {
  if (amax != nullptr)
    be.matmul_backward_fp8(dinp, dw, db, dout, inp, w, n, IC, OC, amax, mode);
  else
    be.matmul_backward(dinp, dw, db, dout, inp, w, n, IC, OC, mode);
}
// Expert e's row of a bias [E, n] (null: none).
template <class T>
T* expert_row(T* bias, size_t e, size_t n) {
  return bias != nullptr ? bias + e * n : nullptr;
}
// Expert e's three amax within experts_fp8_amax's result (null: no FP8).
const float* expert_amax(const float* amax, size_t e) {
  return amax != nullptr ? amax + 3 * e : nullptr;
}

// f(row, n, b) for each block of n rows of a training micro-batch's N rows that belongs to
// sequence b: one per sequence, or its two pieces under context parallelism (rows
// [2][B][T/(2·cp)]).
template <class F>
void for_each_sequence_block(const ModelParallel& mp, int T, int N, F&& f) {
  const int Tl = mp.seq_rows(T), B = N / Tl, pieces = mp.cp > 1 ? 2 : 1, n = Tl / pieces;
  for (int piece = 0; piece < pieces; ++piece)
    for (int b = 0; b < B; ++b) f(size_t(piece * B + b) * size_t(n), n, b);
}

// v summed over comm's ranks in rank order (the same on every rank), through all_to_all: the
// one exchange every Comm takes host buffers for.
void sum_over(Comm& comm, std::vector<double>& v) {
  const size_t P = size_t(comm.size()), n = v.size();
  std::vector<double> send(P * n), recv(P * n);
  for (size_t p = 0; p < P; ++p) std::copy(v.begin(), v.end(), send.begin() + ptrdiff_t(p * n));
  const std::vector<size_t> bytes(P, n * sizeof(double));
  comm.all_to_all(send.data(), bytes, recv.data(), bytes);
  for (size_t i = 0; i < n; ++i) {
    v[i] = 0;
    for (size_t p = 0; p < P; ++p) v[i] += recv[p * n + i];
  }
}

// The rows on the experts' side (ep = 1: every choice, the dropped ones' gaps included).
template <class Layer>
int side_rows(const Layer& L) {
  return total(L.moe_recv.empty() ? L.moe_counts : L.moe_rows);
}

// ep = 1 under a capacity: zeroes the rows of the dropped choices in `rows` (rows of C in expert
// order: each block's rows after its kept ones), so that their outputs and input gradients add
// nothing.
template <class Layer, class A>
void zero_dropped(Backend& be, const Layer& L, A* rows, int C) {
  size_t row = 0;
  for (size_t e = 0; e < L.moe_counts.size(); ++e) {
    const int drop = L.moe_counts[e] - L.moe_kept[e];
    if (drop > 0) be.zero(rows + (row + size_t(L.moe_kept[e])) * size_t(C), size_t(drop) * C);
    row += size_t(L.moe_counts[e]);
  }
}

// Bytes of each rank's block of rows: counts [ranks][El] of rows of row_bytes.
std::vector<size_t> block_bytes(const std::vector<int>& counts, size_t ranks, size_t row_bytes) {
  const size_t El = counts.size() / ranks;
  std::vector<size_t> b(ranks, 0);
  for (size_t r = 0; r < ranks; ++r)
    for (size_t j = 0; j < El; ++j) b[r] += size_t(counts[r * El + j]) * row_bytes;
  return b;
}

// Rows arrive by source rank, each source's in expert order: recv[s·El + j] rows from rank s for
// local expert j. The experts run over them grouped by expert, each expert's by source: the
// place of every arrived row in that grouping.
std::vector<int32_t> grouped_places(const std::vector<int>& recv, size_t ranks) {
  const size_t El = recv.size() / ranks;
  std::vector<size_t> start(recv.size());
  size_t at = 0;
  for (size_t j = 0; j < El; ++j)
    for (size_t s = 0; s < ranks; ++s) {
      start[s * El + j] = at;
      at += size_t(recv[s * El + j]);
    }
  std::vector<int32_t> place;
  place.reserve(at);
  for (size_t i = 0; i < recv.size(); ++i)
    for (int r = 0; r < recv[i]; ++r) place.push_back(int32_t(start[i] + size_t(r)));
  return place;
}

}  // namespace

// Under a capacity only the kept rows travel: `local` compacted into moe_compact first (their rows
// listed in moe_keep) and spread back after, the dropped rows zero.
template <class A>
void Gpt::to_experts(typename Set<A>::Layer& L, A* grouped, const A* local) {
  Comm& ep = *mp_.ep_comm;
  const int C = shape_.n_embd;
  const size_t P = size_t(mp_.ep), row = size_t(C) * sizeof(A);
  auto& a = acts<A>();
  const int kept = total(L.moe_kept);
  const bool dropping = kept < total(L.moe_counts);
  if (dropping && kept > 0) be_.moe_combine(a.moe_compact, local, L.moe_keep, nullptr, kept, 1, C);
  ep.all_to_all(dropping ? a.moe_compact : local, block_bytes(L.moe_kept, P, row), a.moe_arrived,
                block_bytes(L.moe_recv, P, row));
  const int R = total(L.moe_rows);
  if (R > 0) be_.moe_gather(grouped, a.moe_arrived, L.moe_place, R, 1, C);
}

template <class A>
void Gpt::from_experts(typename Set<A>::Layer& L, A* local, const A* grouped) {
  Comm& ep = *mp_.ep_comm;
  const int C = shape_.n_embd;
  const size_t P = size_t(mp_.ep), row = size_t(C) * sizeof(A);
  auto& a = acts<A>();
  const int R = total(L.moe_rows), kept = total(L.moe_kept), all = total(L.moe_counts);
  const bool dropping = kept < all;
  // Back into arrival order (row i from its place), then each block to the rank it came from.
  if (R > 0) be_.moe_combine(a.moe_arrived, grouped, L.moe_place, nullptr, R, 1, C);
  ep.all_to_all(a.moe_arrived, block_bytes(L.moe_recv, P, row), dropping ? a.moe_compact : local,
                block_bytes(L.moe_kept, P, row));
  if (!dropping) return;
  be_.zero(local, size_t(all) * C);
  if (kept > 0) be_.moe_gather(local, a.moe_compact, L.moe_keep, kept, 1, C);
}

template <class Layer>
void Gpt::moe_sequence_stats(Layer& L, int N) {
  // moe_dispatch on each block of a sequence's rows gives its choices per expert and its rows'
  // probability sums (writing the block's slots into the layer's, which moe_front's dispatch of
  // all the rows then overwrites); under context parallelism the other pieces come from the
  // group (the same sums, in rank order, on every rank of it).
  const int E = shape_.moe_experts, k = shape_.moe_top_k, B = N / mp_.seq_rows(shape_.seq_len);
  L.moe_seq.assign(2 * size_t(B) * E, 0.0);
  std::vector<int> counts(static_cast<size_t>(E));
  std::vector<float> sums(static_cast<size_t>(E));
  for_each_sequence_block(mp_, shape_.seq_len, N, [&](size_t row, int n, int b) {
    be_.moe_dispatch(L.moe_slot + row * k, counts.data(), sums.data(), L.moe_expert + row * k,
                     L.moe_probs + row * E, n, E, k);
    for (int e = 0; e < E; ++e) {
      L.moe_seq[size_t(b) * E + e] += counts[size_t(e)];
      L.moe_seq[size_t(B + b) * E + e] += sums[size_t(e)];
    }
  });
  if (mp_.cp > 1) sum_over(*mp_.cp_comm, L.moe_seq);
}

template <class A>
void Gpt::moe_front(typename Set<A>::Layer& L, int l, const A* ln2, const LayerTensors<const A>& w,
                    int N) {
  const int C = shape_.n_embd, E = shape_.moe_experts, k = shape_.moe_top_k;
  const size_t Fl = size_t(shape_.fc_rows() / mp_.tp);
  auto& a = acts<A>();
  be_.matmul_forward(a.moe_logits, ln2, w.routerw, w.routerb, N, C, E);
  // μP: the router is a readout (its E outputs stay as the width grows): its logits times 1/m,
  // as the head's.
  const bool mup = shape_.mup_base_width > 0;
  if (mup) be_.scale_cap_logits(a.moe_logits, size_t(N) * E, shape_.logits_mult(), 0.0f);
  be_.moe_route(L.moe_probs, L.moe_expert, L.moe_gate, a.moe_logits, N, E, k,
                routing(shape_, router_bias_dev_ + size_t(l) * size_t(E)), L.moe_lse);
  // (Without a balancing coefficient nothing reads them, and the logged term is 0·term.)
  const bool per_sequence = moe_aux_per_sequence_ && training_ && moe_aux_loss_ > 0.0f;
  if (per_sequence) moe_sequence_stats(L, N);  // (its slots: the dispatch below overwrites them)
  L.moe_counts.resize(size_t(E));
  moe_host_.resize(size_t(E));
  be_.moe_dispatch(L.moe_slot, L.moe_counts.data(), moe_host_.data(), L.moe_expert, L.moe_probs, N,
                   E, k);
  if (!recomputing_) {
    double balance = 0, scores = 0;
    int most = 0;
    for (int e = 0; e < E; ++e) {
      balance += double(L.moe_counts[size_t(e)]) * moe_host_[size_t(e)];
      most = std::max(most, L.moe_counts[size_t(e)]);
      scores += moe_host_[size_t(e)];
    }
    // P_e: the mean probability; of sigmoid scores, their column's share of all the scores.
    if (!per_sequence) {
      moe_stats_.balance += balance * E / (double(N) * k * (shape_.moe_sigmoid ? scores : N));
    } else {  // the mean over the sequences of each one's term, over its T rows
      const int T = shape_.seq_len, B = N / mp_.seq_rows(T);
      const double* count = L.moe_seq.data();
      const double* sum = count + size_t(B) * E;
      double mean = 0;
      for (int b = 0; b < B; ++b) {
        double term = 0, total_b = 0;
        for (int e = 0; e < E; ++e) {
          term += count[size_t(b) * E + e] * sum[size_t(b) * E + e];
          total_b += sum[size_t(b) * E + e];
        }
        mean += term * E / (double(T) * k * (shape_.moe_sigmoid ? total_b : T)) / B;
      }
      moe_stats_.balance += mean;
    }
    moe_stats_.max_load += double(most) * E / (double(N) * k);
    if (moe_z_loss_ > 0.0f) moe_stats_.z += be_.sum_squares(L.moe_lse, size_t(N)) / N;
    ++moe_stats_.count;
    auto& loads = moe_stats_.loads;
    if (loads.empty())  // (the multi-token prediction modules' blocks after the layers)
      loads.assign(size_t(shape_.n_layer + shape_.mtp_depth) * size_t(E), 0.0);
    if (mp_.tp_rank == 0)
      for (int e = 0; e < E; ++e) loads[size_t(l) * E + size_t(e)] += L.moe_counts[size_t(e)];
  }
  // A capacity: each expert takes the first of its choices (in choice order, as dispatch ordered
  // them), the rest are dropped.
  const int capacity = shape_.moe_capacity(N);
  L.moe_kept.resize(size_t(E));
  for (size_t e = 0; e < size_t(E); ++e) L.moe_kept[e] = std::min(L.moe_counts[e], capacity);
  const int kept = total(L.moe_kept);
  if (!recomputing_) moe_stats_.dropped += double(N * k - kept) / (double(N) * k);
  if (mp_.ep == 1) {
    be_.moe_gather(L.moe_x, ln2, L.moe_slot, N, k, C);
  } else {
    // The plan: every rank tells every other how many rows it sends each of its experts.
    const size_t P = size_t(mp_.ep), El = size_t(E) / P;
    L.moe_recv.resize(P * El);
    const std::vector<size_t> counts(P, El * sizeof(int));
    mp_.ep_comm->all_to_all(L.moe_kept.data(), counts, L.moe_recv.data(), counts);
    if (kept < N * k) {  // the kept rows of each block, which travel
      std::vector<int32_t> keep;
      keep.reserve(size_t(kept));
      int32_t row = 0;
      for (size_t e = 0; e < size_t(E); ++e) {
        for (int r = 0; r < L.moe_kept[e]; ++r) keep.push_back(row + r);
        row += L.moe_counts[e];
      }
      be_.copy_ints_from_host(L.moe_keep, keep.data(), keep.size());
    }
    L.moe_rows.assign(El, 0);
    for (size_t i = 0; i < L.moe_recv.size(); ++i) L.moe_rows[i % El] += L.moe_recv[i];
    const std::vector<int32_t> place = grouped_places(L.moe_recv, P);
    be_.copy_ints_from_host(L.moe_place, place.data(), place.size());
    be_.moe_gather(a.moe_local, ln2, L.moe_slot, N, k, C);
    to_experts<A>(L, L.moe_x, a.moe_local);
  }
  const float* amax = experts_fp8_amax<A>(L, fp8_site(l, 2), L.moe_x, C, w.fcw, int(Fl), nullptr);
  for_each_expert(L, [&](size_t e, size_t row, int n) {
    expert_forward(be_, expert_amax(amax, e), L.fch + row * Fl, L.moe_x + row * C,
                   w.fcw + e * Fl * C, expert_row(w.fcb, e, Fl), n, C, int(Fl));
  });
  // (Over the gaps of dropped rows too: elementwise, and nothing reads them.)
  mlp_activation(L.fch_gelu, L.fch, side_rows(L), shape_.hidden() / mp_.tp);
  if (w.shfcw != nullptr) {
    linear_forward(fp8_site(l, 2), L.sh_fch, ln2, w.shfcw, static_cast<const A*>(nullptr), N, C,
                   shape_.shared_fc_rows() / mp_.tp);
    mlp_activation(L.sh_act, L.sh_fch, N, shape_.moe_shared_hidden / mp_.tp);
  }
  if (w.shgatew != nullptr) {  // their gate: every rank forms the same one, as the router
    be_.matmul_forward(a.sh_glogit, ln2, w.shgatew, nullptr, N, C, 1);
    if (mup) be_.scale_cap_logits(a.sh_glogit, size_t(N), shape_.logits_mult(), 0.0f);  // as above
    be_.moe_shared_gate(L.sh_gate, a.sh_glogit, N);
  }
}

template <class A>
void Gpt::moe_output(typename Set<A>::Layer& L, int l, A* out, const LayerTensors<const A>& w,
                     int N) {
  const int C = shape_.n_embd, k = shape_.moe_top_k;
  const size_t Hl = size_t(shape_.hidden() / mp_.tp);
  // Expert parallelism: the outputs form grouped by expert, then go back to their tokens' ranks.
  A* y = mp_.ep == 1 ? L.moe_y : acts<A>().moe_grouped;
  const float* amax =
      experts_fp8_amax<A>(L, fp8_site(l, 3), L.fch_gelu, int(Hl), w.fcprojw, C, nullptr);
  // The outputs are partial sums over the tensor-parallel group: its rank 0 adds the bias.
  const A* bias = mp_.tp_rank == 0 ? w.fcprojb : nullptr;
  for_each_expert(L, [&](size_t e, size_t row, int n) {
    expert_forward(be_, expert_amax(amax, e), y + row * C, L.fch_gelu + row * Hl,
                   w.fcprojw + e * C * Hl, expert_row(bias, e, size_t(C)), n, int(Hl), C);
  });
  if (mp_.ep > 1)
    from_experts<A>(L, L.moe_y, y);
  else
    zero_dropped(be_, L, y, C);  // a dropped choice's output is zero
  if (out == nullptr) return;
  be_.moe_combine(out, L.moe_y, L.moe_slot, L.moe_gate, N, k, C);
  if (w.shprojw != nullptr) {  // the shared experts' output joins the routed ones'
    auto& a = acts<A>();
    linear_forward(fp8_site(l, 3), a.sh_out, L.sh_act, w.shprojw, static_cast<const A*>(nullptr), N,
                   shape_.moe_shared_hidden / mp_.tp, C);
    if (w.shgatew != nullptr) {  // scaled by each row's gate (a partial sum scales alike)
      be_.moe_combine(a.sh_gated, a.sh_out, a.row_order, L.sh_gate, N, 1, C);
      be_.accumulate(out, a.sh_gated, size_t(N) * C);
    } else {
      be_.accumulate(out, a.sh_out, size_t(N) * C);
    }
  }
}

template <class A>
void Gpt::moe_backward(typename Set<A>::Layer& L, int l, A* dpart, const LayerTensors<float>& g,
                       const A* dres, const A* ln2, const LayerTensors<const A>& w, int N,
                       bool split) {
  constexpr GradMode kSet = GradMode::overwrite;
  const int C = shape_.n_embd, E = shape_.moe_experts, k = shape_.moe_top_k;
  const size_t Fl = size_t(shape_.fc_rows() / mp_.tp), Hl = size_t(shape_.hidden() / mp_.tp);
  const int SFl = shape_.shared_fc_rows() / mp_.tp, SHl = shape_.moe_shared_hidden / mp_.tp;
  auto& a = acts<A>();
  const bool mup = shape_.mup_base_width > 0;  // the router's and gate's logits times 1/m
  // Split (a zero-bubble schedule): no weight gradients here; each output gradient the weight
  // pass needs is formed into L's own buffer instead of the shared scratch (moe_weights).
  auto wgrad = [split](float* p) { return split ? nullptr : p; };
  // The shared experts' c_proj and activation first: dres may be dpart's buffer (sequence
  // parallel), which the routed experts' input gradient overwrites below.
  A* sh_dfch = split ? L.dshared_fc : a.sh_dfch;
  if (w.shprojw != nullptr) {
    const A* dsh = dres;
    if (w.shgatew != nullptr) {
      // The gate's gradient reads their output, formed again (partial sums over the group, as
      // the routed experts', summed there); their output's gradient is the gated dres.
      A* gated = split ? L.dshared : a.sh_gated;
      linear_forward(fp8_site(l, 3), a.sh_out, L.sh_act, w.shprojw, static_cast<const A*>(nullptr),
                     N, SHl, C);
      be_.moe_combine_backward(gated, a.sh_dgate, dres, a.sh_out, a.row_order, L.sh_gate, N, 1, C);
      tp_all_reduce(a.sh_dgate, size_t(N));
      A* dglogit = split ? L.dshared_gate : a.sh_glogit;
      be_.moe_shared_gate_backward(dglogit, a.sh_dgate, L.sh_gate, N);
      if (mup) be_.scale_cap_logits(dglogit, size_t(N), shape_.logits_mult(), 0.0f);
      dsh = gated;
    }
    linear_backward(fp8_site(l, 3), a.sh_dact, wgrad(g.shprojw), nullptr, dsh, L.sh_act, w.shprojw,
                    N, SHl, C, kSet);
    mlp_activation_backward(sh_dfch, L.sh_fch, a.sh_dact, N, SHl);
  }
  // The gates' gradient reads the experts' outputs, partial sums over the group: summed there.
  // dy: the experts' output gradients where their products ran (expert parallelism: sent
  // there); dx: their input gradients, the same buffer unless split keeps dy for the weight pass.
  const bool ep = mp_.ep > 1;
  A* dy = split && !ep ? L.dexperts : a.moe_dy;
  be_.moe_combine_backward(dy, a.moe_dgate, dres, L.moe_y, L.moe_slot, L.moe_gate, N, k, C);
  tp_all_reduce(a.moe_dgate, size_t(N) * k);
  A* dx = split && !ep ? a.moe_dy : dy;
  if (ep) {
    dy = split ? L.dexperts : a.moe_grouped;
    dx = a.moe_grouped;
    to_experts<A>(L, dy, a.moe_dy);
  }
  A* dfch = split ? L.dfch : a.dfch;
  const bool proj_grad = g.fcprojw != nullptr && !split, fc_grad = g.fcw != nullptr && !split;
  const float* amax = experts_fp8_amax<A>(L, fp8_site(l, 3), proj_grad ? L.fch_gelu : nullptr,
                                          int(Hl), w.fcprojw, C, dy);
  for_each_expert(L, [&](size_t e, size_t row, int n) {
    expert_backward(be_, expert_amax(amax, e), a.dfch_gelu + row * Hl,
                    proj_grad ? g.fcprojw + e * C * Hl : nullptr,
                    proj_grad ? expert_row(g.fcprojb, e, size_t(C)) : nullptr, dy + row * C,
                    L.fch_gelu + row * Hl, w.fcprojw + e * C * Hl, n, int(Hl), C, kSet);
  });
  mlp_activation_backward(dfch, L.fch, a.dfch_gelu, side_rows(L), int(Hl));
  // The experts' input gradients (over dy unless split: its values are spent), then back to the
  // tokens' ranks.
  amax =
      experts_fp8_amax<A>(L, fp8_site(l, 2), fc_grad ? L.moe_x : nullptr, C, w.fcw, int(Fl), dfch);
  for_each_expert(L, [&](size_t e, size_t row, int n) {
    expert_backward(be_, expert_amax(amax, e), dx + row * C, fc_grad ? g.fcw + e * Fl * C : nullptr,
                    fc_grad ? expert_row(g.fcb, e, Fl) : nullptr, dfch + row * Fl,
                    L.moe_x + row * C, w.fcw + e * Fl * C, n, C, int(Fl), kSet);
  });
  if (ep)
    from_experts<A>(L, a.moe_dy, dx);
  else
    zero_dropped(be_, L, dx, C);  // nor a gradient
  be_.moe_combine(dpart, a.moe_dy, L.moe_slot, nullptr, N, k, C);
  if (w.shfcw != nullptr)
    linear_backward(fp8_site(l, 2), dpart, wgrad(g.shfcw), nullptr, sh_dfch, ln2, w.shfcw, N, C,
                    SFl);
  // The load-balancing loss α·E·Σ_e f_e·P_e for each of the N rows: d/dprobs[n,e] = α·E·f_e
  // times the step's loss scale (P_e's 1/N cancels the N rows). Sequence-wise, the mean over
  // the B sequences of each one's term with f_{b,e} and P_{b,e} over its T rows: d/dprobs[n,e] =
  // α·E·f_{b,e}/(B·T), the loss scale's 1/(B·T) as before; each sequence's rows (each piece of
  // them) then take their sequence's aux. Host memory: the op reads it at the call.
  const bool balance = moe_aux_loss_ > 0.0f, per_sequence = balance && moe_aux_per_sequence_;
  const int T = shape_.seq_len, B = per_sequence ? N / mp_.seq_rows(T) : 1;
  moe_host_.resize(size_t(B) * E);
  TRIAD_ASSERT(!per_sequence || L.moe_seq.size() == 2 * size_t(B) * E);
  for (size_t i = 0; balance && i < size_t(B) * E; ++i)
    moe_host_[i] =
        float(double(dloss_scale_) * moe_aux_loss_ * E *
              (per_sequence ? L.moe_seq[i] / (double(T) * k) : L.moe_counts[i] / (double(N) * k)));
  // The router z-loss c·lse² for each row, weighed as the balancing loss: c times the loss scale.
  A* dlogits = split ? L.drouter : a.moe_logits;
  auto route_backward = [&](size_t row, int n, const float* aux) {
    be_.moe_route_backward(dlogits + row * E, a.moe_dgate + row * k, L.moe_probs + row * E,
                           L.moe_expert + row * k, aux, n, E, k, routing(shape_, nullptr),
                           L.moe_lse != nullptr ? L.moe_lse + row : nullptr,
                           dloss_scale_ * moe_z_loss_);
  };
  if (per_sequence)
    for_each_sequence_block(mp_, T, N, [&](size_t row, int n, int b) {
      route_backward(row, n, moe_host_.data() + size_t(b) * E);
    });
  else
    route_backward(0, N, balance ? moe_host_.data() : nullptr);
  if (mup) be_.scale_cap_logits(dlogits, size_t(N) * E, shape_.logits_mult(), 0.0f);  // μP's 1/m
  // The router's input gradient once over the group (every rank forms the same one), and the
  // shared experts' gate's.
  A* dinp = mp_.tp_rank == 0 ? dpart : nullptr;
  if (dinp != nullptr || wgrad(g.routerw) != nullptr)
    be_.matmul_backward(dinp, wgrad(g.routerw), wgrad(g.routerb), dlogits, ln2, w.routerw, N, C, E);
  if (w.shgatew != nullptr && (dinp != nullptr || wgrad(g.shgatew) != nullptr))
    be_.matmul_backward(dinp, wgrad(g.shgatew), nullptr, split ? L.dshared_gate : a.sh_glogit, ln2,
                        w.shgatew, N, C, 1);
}

// The weight pass of a split backward: the products moe_backward leaves out, in its order, from
// the output gradients it kept in L and the inputs the forward pass kept.
template <class A>
void Gpt::moe_weights(typename Set<A>::Layer& L, int l, const LayerTensors<float>& g, const A* ln2,
                      const LayerTensors<const A>& w, int N) {
  const int C = shape_.n_embd, E = shape_.moe_experts;
  const size_t Fl = size_t(shape_.fc_rows() / mp_.tp), Hl = size_t(shape_.hidden() / mp_.tp);
  const int SFl = shape_.shared_fc_rows() / mp_.tp, SHl = shape_.moe_shared_hidden / mp_.tp;
  constexpr GradMode kAdd = GradMode::accumulate;
  if (w.shprojw != nullptr && g.shprojw != nullptr)  // without a gate the output's is dres
    linear_backward(fp8_site(l, 3), static_cast<A*>(nullptr), g.shprojw, nullptr,
                    w.shgatew != nullptr ? L.dshared : L.dfcproj, L.sh_act, w.shprojw, N, SHl, C);
  if (g.fcprojw != nullptr) {
    const float* amax =
        experts_fp8_amax<A>(L, fp8_site(l, 3), L.fch_gelu, int(Hl), nullptr, C, L.dexperts);
    for_each_expert(L, [&](size_t e, size_t row, int n) {
      expert_backward(be_, expert_amax(amax, e), static_cast<A*>(nullptr), g.fcprojw + e * C * Hl,
                      expert_row(g.fcprojb, e, size_t(C)), L.dexperts + row * C,
                      L.fch_gelu + row * Hl, w.fcprojw + e * C * Hl, n, int(Hl), C, kAdd);
    });
  }
  if (g.fcw != nullptr) {
    const float* amax =
        experts_fp8_amax<A>(L, fp8_site(l, 2), L.moe_x, C, nullptr, int(Fl), L.dfch);
    for_each_expert(L, [&](size_t e, size_t row, int n) {
      expert_backward(be_, expert_amax(amax, e), static_cast<A*>(nullptr), g.fcw + e * Fl * C,
                      expert_row(g.fcb, e, Fl), L.dfch + row * Fl, L.moe_x + row * C,
                      w.fcw + e * Fl * C, n, C, int(Fl), kAdd);
    });
  }
  if (w.shfcw != nullptr && g.shfcw != nullptr)
    linear_backward(fp8_site(l, 2), static_cast<A*>(nullptr), g.shfcw, nullptr, L.dshared_fc, ln2,
                    w.shfcw, N, C, SFl);
  if (g.routerw != nullptr)
    be_.matmul_backward(nullptr, g.routerw, g.routerb, L.drouter, ln2, w.routerw, N, C, E);
  if (w.shgatew != nullptr && g.shgatew != nullptr)
    be_.matmul_backward(nullptr, g.shgatew, nullptr, L.dshared_gate, ln2, w.shgatew, N, C, 1);
}

template <class A>
const float* Gpt::experts_fp8_amax(typename Set<A>::Layer& L, int site, const A* inp, int IC,
                                   const A* w, int OC, const A* dout) {
  if (!fp8_experts_at(site)) return nullptr;
  const size_t held = size_t(shape_.moe_experts / mp_.ep);
  be_.zero(fp8_amax_, 3 * held);
  // Each expert's rows (none: an empty range, amax 0) and its matrix's, every expert's amax of
  // an operand in one absmax_rows (one pass on the GPU rather than one per expert).
  std::vector<int64_t> begin(held, 0), end(held, 0), w_begin(held), w_end(held);
  for_each_expert(L, [&](size_t e, size_t row, int n) {
    TRIAD_ASSERT(e < held);
    begin[e] = int64_t(row);
    end[e] = int64_t(row) + n;
  });
  for (size_t e = 0; e < held; ++e) {
    w_begin[e] = int64_t(e) * OC;
    w_end[e] = int64_t(e + 1) * OC;
  }
  const int n = int(held);
  if (inp != nullptr)
    be_.absmax_rows(fp8_amax_ + 0, 3, inp, size_t(IC), begin.data(), end.data(), n);
  if (w != nullptr)
    be_.absmax_rows(fp8_amax_ + 1, 3, w, size_t(IC), w_begin.data(), w_end.data(), n);
  if (dout != nullptr)
    be_.absmax_rows(fp8_amax_ + 2, 3, dout, size_t(OC), begin.data(), end.data(), n);
  // An expert's rows on a tp group are the same on every rank (its matrix split among them); on
  // a cp group each rank's tokens' (the same experts): the maximum is the whole tensor's.
  if (mp_.tp > 1) mp_.tp_comm->all_reduce_max(fp8_amax_, 3 * held);
  if (mp_.cp > 1) mp_.cp_comm->all_reduce_max(fp8_amax_, 3 * held);
  return fp8_amax_;
}

void Gpt::set_router_bias(const std::vector<float>& bias) {
  TRIAD_CHECK(bias.size() == router_bias_.size(), "set_router_bias: ", bias.size(),
              " values for a model with ", router_bias_.size());
  router_bias_ = bias;
  if (!bias.empty()) be_.copy_from_host(router_bias_dev_, bias.data(), bias.size());
}

void Gpt::balance_router_bias(const std::vector<double>& loads, float rate) {
  const size_t E = size_t(shape_.moe_experts);
  TRIAD_CHECK(loads.size() == router_bias_.size(), "balance_router_bias: ", loads.size(),
              " loads for a model with ", router_bias_.size(), " biases");
  for (int l = 0; l < shape_.n_layer + shape_.mtp_depth; ++l) {  // (and the modules' blocks)
    if (!shape_.moe_layer(l)) continue;
    const double* c = loads.data() + size_t(l) * E;
    const double mean = std::accumulate(c, c + E, 0.0) / double(E);
    float* b = router_bias_.data() + size_t(l) * E;
    for (size_t e = 0; e < E; ++e) b[e] += c[e] < mean ? rate : c[e] > mean ? -rate : 0.0f;
  }
  if (!router_bias_.empty())
    be_.copy_from_host(router_bias_dev_, router_bias_.data(), router_bias_.size());
}

#define TRIAD_MOE_INSTANCES(A)                                                                     \
  template void Gpt::to_experts<A>(Set<A>::Layer&, A*, const A*);                                  \
  template void Gpt::from_experts<A>(Set<A>::Layer&, A*, const A*);                                \
  template void Gpt::moe_front<A>(Set<A>::Layer&, int, const A*, const LayerTensors<const A>&,     \
                                  int);                                                            \
  template void Gpt::moe_output<A>(Set<A>::Layer&, int, A*, const LayerTensors<const A>&, int);    \
  template void Gpt::moe_backward<A>(Set<A>::Layer&, int, A*, const LayerTensors<float>&,          \
                                     const A*, const A*, const LayerTensors<const A>&, int, bool); \
  template void Gpt::moe_weights<A>(Set<A>::Layer&, int, const LayerTensors<float>&, const A*,     \
                                    const LayerTensors<const A>&, int);                            \
  template const float* Gpt::experts_fp8_amax<A>(Set<A>::Layer&, int, const A*, int, const A*,     \
                                                 int, const A*);
TRIAD_MOE_INSTANCES(float)
TRIAD_MOE_INSTANCES(bf16_t)
#undef TRIAD_MOE_INSTANCES

}  // namespace triad
