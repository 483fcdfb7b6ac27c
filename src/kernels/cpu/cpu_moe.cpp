// Mixture-of-experts routing, dispatch and combination (backend.h, "mixture of experts"): fp32,
// and bf16 computed in fp32 with each output rounded once. Every sum runs in a fixed order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {
namespace {

template <class E>
void route_rows(float* probs, int32_t* expert, float* gate, const E* logits, int N, int Ex, int k,
                const MoeRouting& routing, float* lse) {
  TRIAD_CHECK(groups_fit(routing, Ex, k), "moe_route: ", routing.groups, " groups (top ",
              routing.group_top_k, ") do not suit ", Ex, " experts and top ", k);
#pragma omp parallel for schedule(static) if (size_t(N) * Ex >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const E* z = logits + size_t(n) * Ex;
    float* p = probs + size_t(n) * Ex;
    float mx = -INFINITY;
    for (int e = 0; e < Ex; ++e) mx = std::max(mx, load_elem(z + e));
    float sum = 0.0f;
    for (int e = 0; e < Ex; ++e) sum += std::exp(load_elem(z + e) - mx);
    for (int e = 0; e < Ex; ++e)
      p[e] = routing.sigmoid ? 1.0f / (1.0f + std::exp(-load_elem(z + e)))
                             : std::exp(load_elem(z + e) - mx) / sum;
    if (lse != nullptr) lse[n] = mx + std::log(sum);
    // The picks' key: the score plus the bias (a NaN below every number).
    auto key = [&](int e) {
      const float v = p[e] + (routing.bias != nullptr ? routing.bias[e] : 0.0f);
      return std::isnan(v) ? -INFINITY : v;
    };
    // Node-limited routing: the columns of the group_top_k groups whose two largest keys sum
    // highest (larger first, equal sums the lower group first). Empty: every column.
    std::vector<uint8_t> allowed;
    if (routing.groups > 1) {
      const int G = routing.groups, S = Ex / G;
      std::vector<float> score(static_cast<size_t>(G));
      for (int q = 0; q < G; ++q) {
        int first = -1, second = -1;
        for (int e = q * S; e < (q + 1) * S; ++e)
          if (first < 0 || key(e) > key(first)) first = e;
        for (int e = q * S; e < (q + 1) * S; ++e)
          if (e != first && (second < 0 || key(e) > key(second))) second = e;
        score[size_t(q)] = routing.group_by_best ? key(first) : key(first) + key(second);
      }
      std::vector<uint8_t> chosen(static_cast<size_t>(G), 0);
      for (int j = 0; j < routing.group_top_k; ++j) {
        int best = -1;
        for (int q = 0; q < G; ++q)
          if (!chosen[size_t(q)] && (best < 0 || score[size_t(q)] > score[size_t(best)])) best = q;
        chosen[size_t(best)] = 1;
      }
      for (int e = 0; e < Ex; ++e) allowed.push_back(chosen[size_t(e / S)]);
    }
    int32_t* ex = expert + size_t(n) * k;
    float* g = gate + size_t(n) * k;
    float picked = 0.0f;
    for (int j = 0; j < k; ++j) {  // k passes of an arg-max over the columns not yet taken
      int best = -1;
      for (int e = 0; e < Ex; ++e) {
        if ((!allowed.empty() && !allowed[size_t(e)]) || std::find(ex, ex + j, e) != ex + j)
          continue;
        if (best < 0 || key(e) > key(best)) best = e;  // strictly larger: ties keep the lower
      }
      ex[j] = best;
      g[j] = p[best];
      picked += p[best];
    }
    for (int j = 0; j < k; ++j)
      g[j] = (routing.normalize ? g[j] / (picked + routing.floor()) : g[j]) * routing.scale;
  }
}

template <class E>
void gather_rows(E* out, const E* x, const int32_t* slot, int N, int k, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * k * C >= kParallelMin)
  for (int i = 0; i < N * k; ++i) std::copy_n(x + size_t(i / k) * C, C, out + size_t(slot[i]) * C);
}

template <class E>
void combine_rows(E* out, const E* y, const int32_t* slot, const float* gate, int N, int k, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * k * C >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    E* o = out + size_t(n) * C;
    for (int c = 0; c < C; ++c) {
      float s = 0.0f;
      for (int j = 0; j < k; ++j) {
        const int i = n * k + j;
        s += (gate != nullptr ? gate[i] : 1.0f) * load_elem(y + size_t(slot[i]) * C + c);
      }
      store_elem(o + c, s);
    }
  }
}

template <class E>
void combine_backward_rows(E* dy, float* dgate, const E* dout, const E* y, const int32_t* slot,
                           const float* gate, int N, int k, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * k * C >= kParallelMin)
  for (int i = 0; i < N * k; ++i) {
    const E* d = dout + size_t(i / k) * C;
    const E* yi = y + size_t(slot[i]) * C;
    E* dyi = dy + size_t(slot[i]) * C;
    float dot = 0.0f;
    for (int c = 0; c < C; ++c) {
      const float dc = load_elem(d + c);
      store_elem(dyi + c, gate[i] * dc);
      dot += dc * load_elem(yi + c);
    }
    dgate[i] = dot;
  }
}

// gate_j = scale·p[e_j] (/ S, S = Σ_j p[e_j], when normalized); the gradient of the scores is
// dgate's through that, plus the balancing loss's: aux[e] on the softmax's probabilities, or on
// the sigmoid scores over their row's sum Q, (aux[e] − Σ_e' aux[e']·p[e']/Q)/Q. Then the
// softmax's dz[e] = p[e]·(dp[e] − Σ p·dp), or the sigmoid's dz[e] = dp[e]·p[e]·(1 − p[e]).
template <class E>
void route_backward_rows(E* dlogits, const float* dgate, const float* probs, const int32_t* expert,
                         const float* aux, int N, int Ex, int k, const MoeRouting& routing,
                         const float* lse, float z_loss) {
  TRIAD_CHECK(!(routing.sigmoid && z_loss > 0.0f),
              "moe_route_backward: the router z-loss needs softmax scores");
#pragma omp parallel
  {
    std::vector<float> dp(static_cast<size_t>(Ex));
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      const float* p = probs + size_t(n) * Ex;
      const int32_t* ex = expert + size_t(n) * k;
      const float* dg = dgate + size_t(n) * k;
      for (int e = 0; e < Ex; ++e) dp[size_t(e)] = aux != nullptr ? aux[e] : 0.0f;
      if (aux != nullptr && routing.sigmoid) {
        float Q = 0.0f, dot = 0.0f;
        for (int e = 0; e < Ex; ++e) Q += p[e];
        Q += routing.floor();
        for (int e = 0; e < Ex; ++e) dot += aux[e] * (p[e] / Q);
        for (int e = 0; e < Ex; ++e) dp[size_t(e)] = (aux[e] - dot) / Q;
      }
      if (routing.normalize) {
        float S = 0.0f, dot = 0.0f;
        for (int j = 0; j < k; ++j) S += p[ex[j]];
        S += routing.floor();
        for (int j = 0; j < k; ++j) dot += routing.scale * dg[j] * (p[ex[j]] / S);
        for (int j = 0; j < k; ++j) dp[size_t(ex[j])] += (routing.scale * dg[j] - dot) / S;
      } else {
        for (int j = 0; j < k; ++j) dp[size_t(ex[j])] += routing.scale * dg[j];
      }
      E* dz = dlogits + size_t(n) * Ex;
      if (routing.sigmoid) {
        for (int e = 0; e < Ex; ++e) store_elem(dz + e, dp[size_t(e)] * p[e] * (1.0f - p[e]));
        continue;
      }
      float dot = 0.0f;
      for (int e = 0; e < Ex; ++e) dot += p[e] * dp[size_t(e)];
      const float zc = z_loss > 0.0f ? 2.0f * z_loss * lse[n] : 0.0f;  // d(c·lse²)/dz = 2c·lse·p
      for (int e = 0; e < Ex; ++e) store_elem(dz + e, p[e] * (dp[size_t(e)] - dot) + zc * p[e]);
    }
  }
}

}  // namespace

void moe_route(float* probs, int32_t* expert, float* gate, const float* logits, int N, int E, int k,
               const MoeRouting& routing, float* lse) {
  route_rows(probs, expert, gate, logits, N, E, k, routing, lse);
}
void moe_route(float* probs, int32_t* expert, float* gate, const bf16_t* logits, int N, int E,
               int k, const MoeRouting& routing, float* lse) {
  route_rows(probs, expert, gate, logits, N, E, k, routing, lse);
}

void moe_dispatch(int32_t* slot, int* counts, float* prob_sums, const int32_t* expert,
                  const float* probs, int N, int E, int k) {
  std::vector<int> next(size_t(E), 0);
  for (int i = 0; i < N * k; ++i) ++next[size_t(expert[i])];
  int at = 0;
  for (int e = 0; e < E; ++e) {  // each expert's first place
    counts[e] = next[size_t(e)];
    next[size_t(e)] = at;
    at += counts[e];
  }
  for (int i = 0; i < N * k; ++i) slot[i] = next[size_t(expert[i])]++;
  if (prob_sums == nullptr) return;
  std::fill(prob_sums, prob_sums + E, 0.0f);
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) prob_sums[e] += probs[size_t(n) * E + e];
}

void moe_gather(float* out, const float* x, const int32_t* slot, int N, int k, int C) {
  gather_rows(out, x, slot, N, k, C);
}
void moe_gather(bf16_t* out, const bf16_t* x, const int32_t* slot, int N, int k, int C) {
  gather_rows(out, x, slot, N, k, C);
}
void moe_combine(float* out, const float* y, const int32_t* slot, const float* gate, int N, int k,
                 int C) {
  combine_rows(out, y, slot, gate, N, k, C);
}
void moe_combine(bf16_t* out, const bf16_t* y, const int32_t* slot, const float* gate, int N, int k,
                 int C) {
  combine_rows(out, y, slot, gate, N, k, C);
}
void moe_combine_backward(float* dy, float* dgate, const float* dout, const float* y,
                          const int32_t* slot, const float* gate, int N, int k, int C) {
  combine_backward_rows(dy, dgate, dout, y, slot, gate, N, k, C);
}
void moe_combine_backward(bf16_t* dy, float* dgate, const bf16_t* dout, const bf16_t* y,
                          const int32_t* slot, const float* gate, int N, int k, int C) {
  combine_backward_rows(dy, dgate, dout, y, slot, gate, N, k, C);
}
void moe_route_backward(float* dlogits, const float* dgate, const float* probs,
                        const int32_t* expert, const float* aux, int N, int E, int k,
                        const MoeRouting& routing, const float* lse, float z_loss) {
  route_backward_rows(dlogits, dgate, probs, expert, aux, N, E, k, routing, lse, z_loss);
}
void moe_route_backward(bf16_t* dlogits, const float* dgate, const float* probs,
                        const int32_t* expert, const float* aux, int N, int E, int k,
                        const MoeRouting& routing, const float* lse, float z_loss) {
  route_backward_rows(dlogits, dgate, probs, expert, aux, N, E, k, routing, lse, z_loss);
}

// The shared experts' sigmoid gate: one number per row.
namespace {
template <class E>
void sigmoid_rows(float* s, const E* logits, int N) {
  for (int n = 0; n < N; ++n) s[n] = 1.0f / (1.0f + std::exp(-load_elem(logits + n)));
}
template <class E>
void sigmoid_backward_rows(E* dlogits, const float* ds, const float* s, int N) {
  for (int n = 0; n < N; ++n) store_elem(dlogits + n, ds[n] * s[n] * (1.0f - s[n]));
}
}  // namespace
void moe_shared_gate(float* s, const float* logits, int N) { sigmoid_rows(s, logits, N); }
void moe_shared_gate(float* s, const bf16_t* logits, int N) { sigmoid_rows(s, logits, N); }
void moe_shared_gate_backward(float* dlogits, const float* ds, const float* s, int N) {
  sigmoid_backward_rows(dlogits, ds, s, N);
}
void moe_shared_gate_backward(bf16_t* dlogits, const float* ds, const float* s, int N) {
  sigmoid_backward_rows(dlogits, ds, s, N);
}

}  // namespace triad::cpu
