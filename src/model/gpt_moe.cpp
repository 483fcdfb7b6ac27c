// The mixture of experts' MLP (GptShape::moe): routing, the experts' products over their rows in
// expert order, and the gated sum back to the tokens; its backward with the load-balancing loss.
// Each expert's rows are one contiguous block, so an expert is one plain product of the backend
// (dropless: no capacity, no padding; the host learns the blocks' sizes from moe_dispatch).
// Under tensor parallelism every rank routes all rows alike (the router is replicated) and holds
// 1/tp of every expert's hidden units, as the dense MLP's column- and row-parallel pair.
#include <algorithm>
#include <vector>

#include "gpt_activations.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

// f(e, row, n) for each expert e with n > 0 rows, its block starting at `row` in expert order.
template <class F>
void for_each_expert(const std::vector<int>& counts, F&& f) {
  size_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] > 0) f(e, row, counts[e]);
    row += size_t(counts[e]);
  }
}

}  // namespace

template <class A>
void Gpt::moe_front(typename Set<A>::Layer& L, const A* ln2, const LayerTensors<const A>& w,
                    int N) {
  const int C = shape_.n_embd, E = shape_.moe_experts, k = shape_.moe_top_k;
  const size_t Fl = size_t(shape_.fc_rows() / mp_.tp);
  auto& a = acts<A>();
  be_.matmul_forward(a.moe_logits, ln2, w.routerw, nullptr, N, C, E);
  be_.moe_route(L.moe_probs, L.moe_expert, L.moe_gate, a.moe_logits, N, E, k, shape_.moe_normalize,
                L.moe_lse);
  L.moe_counts.resize(size_t(E));
  moe_host_.resize(size_t(E));
  be_.moe_dispatch(L.moe_slot, L.moe_counts.data(), moe_host_.data(), L.moe_expert, L.moe_probs, N,
                   E, k);
  if (!recomputing_) {
    double balance = 0;
    int most = 0;
    for (int e = 0; e < E; ++e) {
      balance += double(L.moe_counts[size_t(e)]) * moe_host_[size_t(e)];
      most = std::max(most, L.moe_counts[size_t(e)]);
    }
    moe_stats_.balance += balance * E / (double(N) * k * N);
    moe_stats_.max_load += double(most) * E / (double(N) * k);
    if (moe_z_loss_ > 0.0f) moe_stats_.z += be_.sum_squares(L.moe_lse, size_t(N)) / N;
    ++moe_stats_.count;
  }
  be_.moe_gather(L.moe_x, ln2, L.moe_slot, N, k, C);
  for_each_expert(L.moe_counts, [&](size_t e, size_t row, int n) {
    be_.matmul_forward(L.fch + row * Fl, L.moe_x + row * C, w.fcw + e * Fl * C, nullptr, n, C,
                       int(Fl));
  });
  mlp_activation(L.fch_gelu, L.fch, N * k, shape_.hidden() / mp_.tp);
  if (w.shfcw != nullptr) {
    be_.matmul_forward(L.sh_fch, ln2, w.shfcw, nullptr, N, C, shape_.shared_fc_rows() / mp_.tp);
    mlp_activation(L.sh_act, L.sh_fch, N, shape_.moe_shared_hidden / mp_.tp);
  }
}

template <class A>
void Gpt::moe_output(typename Set<A>::Layer& L, A* out, const LayerTensors<const A>& w, int N) {
  const int C = shape_.n_embd, k = shape_.moe_top_k;
  const size_t Hl = size_t(shape_.hidden() / mp_.tp);
  for_each_expert(L.moe_counts, [&](size_t e, size_t row, int n) {
    be_.matmul_forward(L.moe_y + row * C, L.fch_gelu + row * Hl, w.fcprojw + e * C * Hl, nullptr, n,
                       int(Hl), C);
  });
  if (out == nullptr) return;
  be_.moe_combine(out, L.moe_y, L.moe_slot, L.moe_gate, N, k, C);
  if (w.shprojw != nullptr) {  // the shared experts' output joins the routed ones'
    A* sh = acts<A>().sh_out;
    be_.matmul_forward(sh, L.sh_act, w.shprojw, nullptr, N, shape_.moe_shared_hidden / mp_.tp, C);
    be_.accumulate(out, sh, size_t(N) * C);
  }
}

template <class A>
void Gpt::moe_backward(typename Set<A>::Layer& L, A* dpart, const LayerTensors<float>& g,
                       const A* dres, const A* ln2, const LayerTensors<const A>& w, int N) {
  constexpr GradMode kSet = GradMode::overwrite;
  const int C = shape_.n_embd, E = shape_.moe_experts, k = shape_.moe_top_k;
  const size_t Fl = size_t(shape_.fc_rows() / mp_.tp), Hl = size_t(shape_.hidden() / mp_.tp);
  const int SFl = shape_.shared_fc_rows() / mp_.tp, SHl = shape_.moe_shared_hidden / mp_.tp;
  auto& a = acts<A>();
  // The shared experts' c_proj and activation first: dres may be dpart's buffer (sequence
  // parallel), which the routed experts' input gradient overwrites below.
  if (w.shprojw != nullptr) {
    be_.matmul_backward(a.sh_dact, g.shprojw, nullptr, dres, L.sh_act, w.shprojw, N, SHl, C, kSet);
    mlp_activation_backward(a.sh_dfch, L.sh_fch, a.sh_dact, N, SHl);
  }
  // The gates' gradient reads the experts' outputs, partial sums over the group: summed there.
  be_.moe_combine_backward(a.moe_dy, a.moe_dgate, dres, L.moe_y, L.moe_slot, L.moe_gate, N, k, C);
  tp_all_reduce(a.moe_dgate, size_t(N) * k);
  for_each_expert(L.moe_counts, [&](size_t e, size_t row, int n) {
    be_.matmul_backward(
        a.dfch_gelu + row * Hl, g.fcprojw != nullptr ? g.fcprojw + e * C * Hl : nullptr, nullptr,
        a.moe_dy + row * C, L.fch_gelu + row * Hl, w.fcprojw + e * C * Hl, n, int(Hl), C, kSet);
  });
  mlp_activation_backward(a.dfch, L.fch, a.dfch_gelu, N * k, int(Hl));
  // The experts' input gradients over moe_dy (their output gradients are spent).
  for_each_expert(L.moe_counts, [&](size_t e, size_t row, int n) {
    be_.matmul_backward(a.moe_dy + row * C, g.fcw != nullptr ? g.fcw + e * Fl * C : nullptr,
                        nullptr, a.dfch + row * Fl, L.moe_x + row * C, w.fcw + e * Fl * C, n, C,
                        int(Fl), kSet);
  });
  be_.moe_combine(dpart, a.moe_dy, L.moe_slot, nullptr, N, k, C);
  if (w.shfcw != nullptr)
    be_.matmul_backward(dpart, g.shfcw, nullptr, a.sh_dfch, ln2, w.shfcw, N, C, SFl);
  // The load-balancing loss α·E·Σ_e f_e·P_e for each of the N rows: d/dprobs[n,e] = α·E·f_e
  // times the step's loss scale (P_e's 1/N cancels the N rows).
  const float* aux = nullptr;
  if (moe_aux_loss_ > 0.0f) {
    moe_host_.resize(size_t(E));
    for (int e = 0; e < E; ++e)
      moe_host_[size_t(e)] = float(double(dloss_scale_) * moe_aux_loss_ * E *
                                   L.moe_counts[size_t(e)] / (double(N) * k));
    aux = moe_host_.data();  // host memory: the op reads it at the call
  }
  // The router z-loss c·lse² for each row, weighed as the balancing loss: c times the loss scale.
  be_.moe_route_backward(a.moe_logits, a.moe_dgate, L.moe_probs, L.moe_expert, aux, N, E, k,
                         shape_.moe_normalize, L.moe_lse, dloss_scale_ * moe_z_loss_);
  // The router's input gradient once over the group (every rank forms the same one).
  A* dinp = mp_.tp_rank == 0 ? dpart : nullptr;
  if (dinp != nullptr || g.routerw != nullptr)
    be_.matmul_backward(dinp, g.routerw, nullptr, a.moe_logits, ln2, w.routerw, N, C, E);
}

#define TRIAD_MOE_INSTANCES(A)                                                                  \
  template void Gpt::moe_front<A>(Set<A>::Layer&, const A*, const LayerTensors<const A>&, int); \
  template void Gpt::moe_output<A>(Set<A>::Layer&, A*, const LayerTensors<const A>&, int);      \
  template void Gpt::moe_backward<A>(Set<A>::Layer&, A*, const LayerTensors<float>&, const A*,  \
                                     const A*, const LayerTensors<const A>&, int);
TRIAD_MOE_INSTANCES(float)
TRIAD_MOE_INSTANCES(bf16_t)
#undef TRIAD_MOE_INSTANCES

}  // namespace triad
