// The mixture of experts' MLP (GptShape::moe): routing, the experts' products over their rows in
// expert order, and the gated sum back to the tokens; its backward with the load-balancing loss.
// Each expert's rows are one contiguous block, so an expert is one plain product of the backend
// (dropless: no capacity, no padding; the host learns the blocks' sizes from moe_dispatch).
// Under tensor parallelism every rank routes all rows alike (the router is replicated) and holds
// 1/tp of every expert's hidden units, as the dense MLP's column- and row-parallel pair.
#include <algorithm>

#include "gpt_activations.h"
#include "triad/model/gpt.h"

namespace triad {

template <class A>
void Gpt::shared_activation(A* act, const A* pre, int N) {
  const int SHl = shape_.moe_shared_hidden / mp_.tp;
  if (shape_.swiglu)
    be_.swiglu_forward(act, pre, N, SHl);
  else
    be_.gelu_forward(act, pre, size_t(N) * size_t(SHl));
}

template <class A>
void Gpt::moe_front(typename Set<A>::Layer& L, const A* ln2, const MoeTensors<const A>& w, int N) {
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
  size_t row = 0;
  for (int e = 0; e < E; ++e) {
    const int n = L.moe_counts[size_t(e)];
    if (n > 0)
      be_.matmul_forward(L.fch + row * Fl, L.moe_x + row * C, w.fcw + size_t(e) * Fl * C, nullptr,
                         n, C, int(Fl));
    row += size_t(n);
  }
  mlp_activation(L.fch_gelu, L.fch, N * k);
  if (w.shfcw != nullptr) {
    be_.matmul_forward(L.sh_fch, ln2, w.shfcw, nullptr, N, C, shape_.shared_fc_rows() / mp_.tp);
    shared_activation(L.sh_act, L.sh_fch, N);
  }
}

template <class A>
void Gpt::moe_output(typename Set<A>::Layer& L, A* out, const MoeTensors<const A>& w, int N) {
  const int C = shape_.n_embd, E = shape_.moe_experts, k = shape_.moe_top_k;
  const size_t Hl = size_t(shape_.hidden() / mp_.tp);
  size_t row = 0;
  for (int e = 0; e < E; ++e) {
    const int n = L.moe_counts[size_t(e)];
    if (n > 0)
      be_.matmul_forward(L.moe_y + row * C, L.fch_gelu + row * Hl, w.fcprojw + size_t(e) * C * Hl,
                         nullptr, n, int(Hl), C);
    row += size_t(n);
  }
  if (out == nullptr) return;
  be_.moe_combine(out, L.moe_y, L.moe_slot, L.moe_gate, N, k, C);
  if (w.shprojw != nullptr) {  // the shared experts' output joins the routed ones'
    A* sh = acts<A>().sh_out;
    be_.matmul_forward(sh, L.sh_act, w.shprojw, nullptr, N, shape_.moe_shared_hidden / mp_.tp, C);
    be_.accumulate(out, sh, size_t(N) * C);
  }
}

template <class A>
void Gpt::moe_backward(typename Set<A>::Layer& L, A* dpart, const MoeTensors<float>& g,
                       const A* dres, const A* ln2, const MoeTensors<const A>& w, int N) {
  constexpr GradMode kSet = GradMode::overwrite;
  const int C = shape_.n_embd, E = shape_.moe_experts, k = shape_.moe_top_k;
  const size_t Fl = size_t(shape_.fc_rows() / mp_.tp), Hl = size_t(shape_.hidden() / mp_.tp);
  const int SFl = shape_.shared_fc_rows() / mp_.tp, SHl = shape_.moe_shared_hidden / mp_.tp;
  auto& a = acts<A>();
  // The shared experts' c_proj and activation first: dres may be dpart's buffer (sequence
  // parallel), which the routed experts' input gradient overwrites below.
  if (w.shprojw != nullptr) {
    be_.matmul_backward(a.sh_dact, g.shprojw, nullptr, dres, L.sh_act, w.shprojw, N, SHl, C, kSet);
    if (shape_.swiglu)
      be_.swiglu_backward(a.sh_dfch, L.sh_fch, a.sh_dact, N, SHl, kSet);
    else
      be_.gelu_backward(a.sh_dfch, L.sh_fch, a.sh_dact, size_t(N) * SHl, kSet);
  }
  // The gates' gradient reads the experts' outputs, partial sums over the group: summed there.
  be_.moe_combine_backward(a.moe_dy, a.moe_dgate, dres, L.moe_y, L.moe_slot, L.moe_gate, N, k, C);
  tp_all_reduce(a.moe_dgate, size_t(N) * k);
  size_t row = 0;
  for (int e = 0; e < E; ++e) {
    const int n = L.moe_counts[size_t(e)];
    if (n > 0)
      be_.matmul_backward(a.dfch_gelu + row * Hl,
                          g.fcprojw != nullptr ? g.fcprojw + size_t(e) * C * Hl : nullptr, nullptr,
                          a.moe_dy + row * C, L.fch_gelu + row * Hl, w.fcprojw + size_t(e) * C * Hl,
                          n, int(Hl), C, kSet);
    row += size_t(n);
  }
  if (shape_.swiglu)
    be_.swiglu_backward(a.dfch, L.fch, a.dfch_gelu, N * k, int(Hl), kSet);
  else
    be_.gelu_backward(a.dfch, L.fch, a.dfch_gelu, size_t(N) * k * Hl, kSet);
  row = 0;  // the experts' input gradients over moe_dy (their output gradients are spent)
  for (int e = 0; e < E; ++e) {
    const int n = L.moe_counts[size_t(e)];
    if (n > 0)
      be_.matmul_backward(
          a.moe_dy + row * C, g.fcw != nullptr ? g.fcw + size_t(e) * Fl * C : nullptr, nullptr,
          a.dfch + row * Fl, L.moe_x + row * C, w.fcw + size_t(e) * Fl * C, n, C, int(Fl), kSet);
    row += size_t(n);
  }
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

#define TRIAD_MOE_INSTANCES(A)                                                                \
  template void Gpt::moe_front<A>(Set<A>::Layer&, const A*, const MoeTensors<const A>&, int); \
  template void Gpt::moe_output<A>(Set<A>::Layer&, A*, const MoeTensors<const A>&, int);      \
  template void Gpt::moe_backward<A>(Set<A>::Layer&, A*, const MoeTensors<float>&, const A*,  \
                                     const A*, const MoeTensors<const A>&, int);
TRIAD_MOE_INSTANCES(float)
TRIAD_MOE_INSTANCES(bf16_t)
#undef TRIAD_MOE_INSTANCES

}  // namespace triad
