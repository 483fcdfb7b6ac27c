// How a mixture of experts' router scores the experts and weighs its picks (Backend::moe_route
// and moe_route_backward; the model's keys model.moe_score, model.moe_normalize,
// model.moe_routed_scale and the router's bias, train.moe_bias_rate). Plain data: the CUDA
// kernels take it by value, and the block programs of src/kernels/cuda read it as the GPU does.
#pragma once

// floor() serves the CPU ops and the block programs alike.
#if defined(__CUDACC__)
#define TRIAD_MOE_ROUTING_FN __host__ __device__
#else
#define TRIAD_MOE_ROUTING_FN
#endif

namespace triad {

// model.moe_experts' largest value (Kimi K2's 384 experts and Qwen3-Next's 512 fit). The GPU's
// moe_route_backward takes the load-balancing coefficients as a kernel parameter: 2 KiB of the
// 4 KiB a launch may pass.
constexpr int kMaxExperts = 512;

struct MoeRouting {
  // The k gates divided by their sum (Mixtral, DeepSeek-V3); false: the scores themselves
  // (Switch).
  bool normalize = true;
  // Each expert's score: false, the softmax over the experts of the router's logits (Switch,
  // Mixtral); true, the sigmoid of each logit on its own (DeepSeek-V3).
  bool sigmoid = false;
  // The gates times this after the normalization (DeepSeek-V3's routed_scaling_factor).
  float scale = 1.0f;
  // [E] fp32 in the backend's memory, or null (none): added to the scores to choose the k
  // experts only; the gates are the scores without it (DeepSeek-V3's auxiliary-loss-free load
  // balancing, whose bias the trainer moves after each step: Gpt::balance_router_bias).
  const float* bias = nullptr;
  // Node-limited routing (DeepSeek-V3's n_group, topk_group): with groups = G > 1 the E experts
  // form G groups of E/G consecutive ones, each row's group_top_k groups whose two largest keys
  // (score + bias) sum highest are chosen (larger first, equal sums the lower group first), and
  // its k experts come from those groups only. 1: every expert may be chosen.
  int groups = 1, group_top_k = 1;
  // A group scored by its largest key alone (DeepSeek-V2's group_limited_greedy) instead of the
  // sum of its two largest.
  bool group_by_best = false;

  // From a bool: the routing of a model with softmax scores and no bias (normalized or not).
  constexpr MoeRouting(bool normalize_gates = true) : normalize(normalize_gates) {}
  // What the sums that sigmoid scores are divided by get added (DeepSeek-V3's 1e-20): k chosen
  // scores that all underflow to 0 give zero gates, not 0/0. The softmax's sums are at least
  // 1/E: none (0 keeps them bit for bit).
  TRIAD_MOE_ROUTING_FN constexpr float floor() const { return sigmoid ? 1e-20f : 0.0f; }
};

// Whether G groups, M of them chosen per row, suit E experts and k picks per row: no groups
// (G = M = 1), or G dividing E into groups of two experts or more, 1 <= M <= G, and k at most
// the chosen groups' experts. (The one statement of the rule: configs, checkpoint attributes and
// the backends' routing all ask it.)
constexpr bool group_settings_valid(long long E, long long G, long long M, long long k) {
  if (G == 1) return M == 1;
  return G > 1 && G <= E && E % G == 0 && E / G >= 2 && M >= 1 && M <= G && M * (E / G) >= k;
}

// Whether s can be model.moe_routed_scale: in (0, 1e6] (NaN and infinities not).
constexpr bool routed_scale_valid(double s) { return s > 0 && s <= 1e6; }

// Whether a routing's groups suit E experts and k picks per row (none: groups <= 1).
constexpr bool groups_fit(const MoeRouting& r, int E, int k) {
  return r.groups <= 1 || group_settings_valid(E, r.groups, r.group_top_k, k);
}

}  // namespace triad
