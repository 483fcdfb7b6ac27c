// The CPU backend's mixture-of-experts ops (backend.h, "mixture of experts") against independent
// definitions: top-k by a full sort of each row, the dispatch order by a stable sort of the
// choices, and every gradient by central finite differences in double of a scalar function of the
// forward ops' outputs. The bf16 variants against the fp32 ops on the widened values.
// (tests/python/test_moe.py compares whole models with a PyTorch reference.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "triad/core/bf16.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

Vec random_vec(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, scale);
  Vec v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// The central difference (loss(x + h) − loss(x − h)) / 2h at element x, restored after.
template <class F>
double central_difference(float& x, float h, F&& loss) {
  const float keep = x;
  x = keep + h;
  const double up = loss();
  x = keep - h;
  const double down = loss();
  x = keep;
  return (up - down) / (2 * h);
}

struct Routed {
  Vec probs, gate, lse;
  Ints expert, slot;
  std::vector<int> counts;
  Vec sums;
};

Routed route(Backend& be, const Vec& logits, int N, int E, int k, bool normalize) {
  Routed r{Vec(size_t(N) * E),  Vec(size_t(N) * k),          Vec(size_t(N)), Ints(size_t(N) * k),
           Ints(size_t(N) * k), std::vector<int>(size_t(E)), Vec(size_t(E))};
  be.moe_route(r.probs.data(), r.expert.data(), r.gate.data(), logits.data(), N, E, k, normalize,
               r.lse.data());
  be.moe_dispatch(r.slot.data(), r.counts.data(), r.sums.data(), r.expert.data(), r.probs.data(), N,
                  E, k);
  return r;
}

class MoeOps : public ::testing::TestWithParam<std::tuple<int, int, int, bool>> {};

TEST_P(MoeOps, RouteAndDispatchMatchSortedReference) {
  const auto [N, E, k, normalize] = GetParam();
  auto be = make_cpu_backend();
  Vec logits = random_vec(size_t(N) * E, 1);
  if (E > 1) logits[1] = logits[0];  // a tie: the lower column comes first
  const Routed r = route(*be, logits, N, E, k, normalize);
  for (int n = 0; n < N; ++n) {
    const float* z = &logits[size_t(n) * E];
    const double mx = *std::max_element(z, z + E);
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += std::exp(double(z[e]) - mx);
    std::vector<int> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
    double picked = 0;
    for (int j = 0; j < k; ++j) picked += std::exp(double(z[order[size_t(j)]]) - mx) / sum;
    for (int e = 0; e < E; ++e)
      EXPECT_NEAR(r.probs[size_t(n) * E + e], std::exp(double(z[e]) - mx) / sum, 1e-6);
    EXPECT_NEAR(r.lse[size_t(n)], mx + std::log(sum), 1e-5);
    for (int j = 0; j < k; ++j) {
      const int e = order[size_t(j)];
      EXPECT_EQ(r.expert[size_t(n) * k + j], e) << "row " << n << " choice " << j;
      const double p = std::exp(double(z[e]) - mx) / sum;
      EXPECT_NEAR(r.gate[size_t(n) * k + j], normalize ? p / picked : p, 1e-6);
    }
  }
  // Dispatch: the choices stably sorted by expert.
  std::vector<int> order(size_t(N) * k);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return r.expert[size_t(a)] < r.expert[size_t(b)]; });
  for (size_t place = 0; place < order.size(); ++place)
    EXPECT_EQ(r.slot[size_t(order[place])], int(place));
  for (int e = 0; e < E; ++e) {
    EXPECT_EQ(r.counts[size_t(e)], std::count(r.expert.begin(), r.expert.end(), e));
    double s = 0;
    for (int n = 0; n < N; ++n) s += r.probs[size_t(n) * E + e];
    EXPECT_NEAR(r.sums[size_t(e)], s, 1e-5);
  }
}

// L(y, gate) = Σ w·combine(y, gate): its gradients by the backward op and by differences.
TEST_P(MoeOps, CombineBackwardMatchesFiniteDifferences) {
  const auto [N, E, k, normalize] = GetParam();
  const int C = 5;
  auto be = make_cpu_backend();
  const Routed r = route(*be, random_vec(size_t(N) * E, 2), N, E, k, normalize);
  Vec y = random_vec(size_t(N) * k * C, 3), w = random_vec(size_t(N) * C, 4);
  Vec gate = r.gate;
  auto loss = [&]() {
    Vec out(size_t(N) * C);
    be->moe_combine(out.data(), y.data(), r.slot.data(), gate.data(), N, k, C);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += double(w[i]) * out[i];
    return s;
  };
  Vec dy(y.size()), dgate(gate.size());
  be->moe_combine_backward(dy.data(), dgate.data(), w.data(), y.data(), r.slot.data(), gate.data(),
                           N, k, C);
  const float h = 1e-2f;
  for (size_t i = 0; i < y.size(); i += 7)
    EXPECT_NEAR(dy[i], central_difference(y[i], h, loss), 2e-3) << "dy " << i;
  for (size_t i = 0; i < gate.size(); ++i)
    EXPECT_NEAR(dgate[i], central_difference(gate[i], h, loss), 2e-3) << "dgate " << i;
  // Without gates, combine sums a token's k copies: gather then combine is k·x.
  Vec x = random_vec(size_t(N) * C, 5), xp(size_t(N) * k * C), back(x.size());
  be->moe_gather(xp.data(), x.data(), r.slot.data(), N, k, C);
  be->moe_combine(back.data(), xp.data(), r.slot.data(), nullptr, N, k, C);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_FLOAT_EQ(back[i], float(k) * x[i]);
}

// L(logits) = Σ c·gate + Σ aux[e]·probs[n,e] + z·Σ lse² (the router z-loss) at fixed choices
// (small steps keep the top k).
TEST_P(MoeOps, RouteBackwardMatchesFiniteDifferences) {
  const auto [N, E, k, normalize] = GetParam();
  auto be = make_cpu_backend();
  Vec logits = random_vec(size_t(N) * E, 6, 2.0f);
  const Routed r = route(*be, logits, N, E, k, normalize);
  const Vec c = random_vec(size_t(N) * k, 7), aux = random_vec(size_t(E), 8);
  const float z = 0.3f;
  auto loss = [&]() {
    Routed q = route(*be, logits, N, E, k, normalize);
    EXPECT_EQ(q.expert, r.expert) << "a step changed the routing";
    double s = 0;
    for (size_t i = 0; i < q.gate.size(); ++i) s += double(c[i]) * q.gate[i];
    for (int n = 0; n < N; ++n)
      for (int e = 0; e < E; ++e) s += double(aux[size_t(e)]) * q.probs[size_t(n) * E + e];
    for (int n = 0; n < N; ++n) s += z * double(q.lse[size_t(n)]) * q.lse[size_t(n)];
    return s;
  };
  Vec dlogits(logits.size());
  be->moe_route_backward(dlogits.data(), c.data(), r.probs.data(), r.expert.data(), aux.data(), N,
                         E, k, normalize, r.lse.data(), z);
  const float h = 1e-3f;
  for (size_t i = 0; i < logits.size(); i += 3)
    EXPECT_NEAR(dlogits[i], central_difference(logits[i], h, loss), 2e-3) << "dlogits " << i;
}

// bf16: the fp32 ops on the widened values, each output rounded once.
TEST_P(MoeOps, Bf16IsFp32OfWidenedValuesRoundedOnce) {
  const auto [N, E, k, normalize] = GetParam();
  const int C = 6;
  auto be = make_cpu_backend();
  auto round_trip = [](const Vec& v) {
    Vec o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = to_float(to_bf16(v[i]));
    return o;
  };
  auto to_b = [](const Vec& v) {
    std::vector<bf16_t> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = to_bf16(v[i]);
    return o;
  };
  const Vec logits = round_trip(random_vec(size_t(N) * E, 9));
  const Routed r = route(*be, logits, N, E, k, normalize);
  Routed rb = r;
  be->moe_route(rb.probs.data(), rb.expert.data(), rb.gate.data(), to_b(logits).data(), N, E, k,
                normalize);
  EXPECT_EQ(rb.probs, r.probs);
  EXPECT_EQ(rb.expert, r.expert);
  EXPECT_EQ(rb.gate, r.gate);
  const Vec y = round_trip(random_vec(size_t(N) * k * C, 10));
  const Vec d = round_trip(random_vec(size_t(N) * C, 11));
  Vec out(size_t(N) * C), dy(y.size()), dg(size_t(N) * k), dz(logits.size());
  be->moe_combine(out.data(), y.data(), r.slot.data(), r.gate.data(), N, k, C);
  be->moe_combine_backward(dy.data(), dg.data(), d.data(), y.data(), r.slot.data(), r.gate.data(),
                           N, k, C);
  be->moe_route_backward(dz.data(), dg.data(), r.probs.data(), r.expert.data(), nullptr, N, E, k,
                         normalize);
  std::vector<bf16_t> outb(out.size()), dyb(dy.size()), dzb(dz.size());
  Vec dgb(dg.size());
  be->moe_combine(outb.data(), to_b(y).data(), r.slot.data(), r.gate.data(), N, k, C);
  be->moe_combine_backward(dyb.data(), dgb.data(), to_b(d).data(), to_b(y).data(), r.slot.data(),
                           r.gate.data(), N, k, C);
  be->moe_route_backward(dzb.data(), dg.data(), r.probs.data(), r.expert.data(), nullptr, N, E, k,
                         normalize);
  EXPECT_EQ(dgb, dg);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(outb[i].bits, to_bf16(out[i]).bits);
  for (size_t i = 0; i < dy.size(); ++i) EXPECT_EQ(dyb[i].bits, to_bf16(dy[i]).bits);
  for (size_t i = 0; i < dz.size(); ++i) EXPECT_EQ(dzb[i].bits, to_bf16(dz[i]).bits);
}

// The shared experts' gate (moe_shared_gate): s = 1/(1 + e^−x) in double; its backward against
// the central difference of L(x) = Σ c·s(x); bf16 logits read widened, the gradient rounded once.
TEST(MoeSharedGate, SigmoidAndItsGradient) {
  auto be = make_cpu_backend();
  const int N = 11;
  Vec x = random_vec(N, 12, 3.0f), c = random_vec(N, 13), s(N), ds(N);
  x[0] = 40.0f;  // saturated both ways: 1 and a tiny positive number, no NaN
  x[1] = -40.0f;
  be->moe_shared_gate(s.data(), x.data(), N);
  for (int n = 0; n < N; ++n) EXPECT_NEAR(s[n], 1.0 / (1.0 + std::exp(-double(x[n]))), 1e-7) << n;
  be->moe_shared_gate_backward(ds.data(), c.data(), s.data(), N);
  auto loss = [&]() {
    Vec t(N);
    be->moe_shared_gate(t.data(), x.data(), N);
    double sum = 0;
    for (int n = 0; n < N; ++n) sum += double(c[n]) * t[n];
    return sum;
  };
  for (int n = 2; n < N; ++n) EXPECT_NEAR(ds[n], central_difference(x[n], 1e-2f, loss), 2e-4) << n;
  EXPECT_EQ(s[0], 1.0f);
  EXPECT_GT(s[1], 0.0f);
  std::vector<bf16_t> xb(N), dsb(N);
  for (int n = 0; n < N; ++n) xb[n] = to_bf16(x[n]);
  Vec sb(N), sw(N), xw(N);
  for (int n = 0; n < N; ++n) xw[n] = to_float(xb[n]);
  be->moe_shared_gate(sb.data(), xb.data(), N);
  be->moe_shared_gate(sw.data(), xw.data(), N);
  EXPECT_EQ(sb, sw);
  be->moe_shared_gate_backward(dsb.data(), c.data(), s.data(), N);
  for (int n = 0; n < N; ++n) EXPECT_EQ(dsb[n].bits, to_bf16(ds[n]).bits) << n;
}

// DeepSeek-V3's routing (MoeRouting: sigmoid scores, a bias that chooses but does not weigh,
// scaled gates) against its definition in double: scores 1/(1 + e^−z), the k largest of
// score + bias by a full sort (ties: the lower column), gates the chosen scores (over their sum
// when normalized) times the scale.
class SigmoidRouting : public ::testing::TestWithParam<bool> {};

TEST_P(SigmoidRouting, ScoresPicksAndGatesMatchTheDefinition) {
  const bool normalize = GetParam();
  const int N = 7, E = 8, k = 3;
  auto be = make_cpu_backend();
  const Vec logits = random_vec(size_t(N) * E, 21, 1.5f);
  Vec bias = random_vec(size_t(E), 22, 0.2f);
  bias[3] = -5.0f;  // never chosen
  bias[6] = 5.0f;   // always chosen, first
  MoeRouting routing(normalize);
  routing.sigmoid = true;
  routing.scale = 2.5f;
  routing.bias = bias.data();
  Vec probs(size_t(N) * E), gate(size_t(N) * k);
  Ints expert(size_t(N) * k);
  be->moe_route(probs.data(), expert.data(), gate.data(), logits.data(), N, E, k, routing);
  for (int n = 0; n < N; ++n) {
    std::vector<double> s(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) {
      s[size_t(e)] = 1.0 / (1.0 + std::exp(-double(logits[size_t(n) * E + e])));
      EXPECT_NEAR(probs[size_t(n) * E + e], s[size_t(e)], 1e-6) << n << " " << e;
    }
    std::vector<int> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return s[size_t(a)] + bias[size_t(a)] > s[size_t(b)] + bias[size_t(b)];
    });
    double picked = 0;
    for (int j = 0; j < k; ++j) picked += s[size_t(order[size_t(j)])];
    EXPECT_EQ(expert[size_t(n) * k], 6) << n;
    for (int j = 0; j < k; ++j) {
      const int e = order[size_t(j)];
      EXPECT_EQ(expert[size_t(n) * k + j], e) << n << " " << j;
      EXPECT_NE(e, 3);
      const double g = (normalize ? s[size_t(e)] / picked : s[size_t(e)]) * 2.5;
      EXPECT_NEAR(gate[size_t(n) * k + j], g, 1e-6) << n << " " << j;
    }
  }
  // A zero bias chooses as none does, bit for bit.
  const Vec zero(size_t(E), 0.0f);
  Vec p0(probs.size()), g0(gate.size()), p1(probs.size()), g1(gate.size());
  Ints e0(expert.size()), e1(expert.size());
  routing.bias = nullptr;
  be->moe_route(p0.data(), e0.data(), g0.data(), logits.data(), N, E, k, routing);
  routing.bias = zero.data();
  be->moe_route(p1.data(), e1.data(), g1.data(), logits.data(), N, E, k, routing);
  EXPECT_EQ(e0, e1);
  EXPECT_EQ(g0, g1);
  EXPECT_NE(e0, expert);  // and the bias above did change the picks
}

// L(logits) = Σ c·gate + Σ_n Σ_e aux[e]·s[n,e] / Σ_e' s[n,e'] (the balancing loss on the scores
// over their row's sum, DeepSeek-V3's) at fixed choices, the bias choosing.
TEST_P(SigmoidRouting, BackwardMatchesFiniteDifferences) {
  const bool normalize = GetParam();
  const int N = 6, E = 8, k = 3;
  auto be = make_cpu_backend();
  Vec logits = random_vec(size_t(N) * E, 23, 2.0f);
  const Vec bias = random_vec(size_t(E), 24, 0.3f);
  MoeRouting routing(normalize);
  routing.sigmoid = true;
  routing.scale = 1.7f;
  routing.bias = bias.data();
  auto route_now = [&](Vec& probs, Vec& gate, Ints& expert) {
    probs.assign(size_t(N) * E, 0.0f);
    gate.assign(size_t(N) * k, 0.0f);
    expert.assign(size_t(N) * k, 0);
    be->moe_route(probs.data(), expert.data(), gate.data(), logits.data(), N, E, k, routing);
  };
  Vec probs, gate;
  Ints expert;
  route_now(probs, gate, expert);
  const Vec c = random_vec(size_t(N) * k, 25), aux = random_vec(size_t(E), 26);
  auto loss = [&]() {
    Vec p, g;
    Ints ex;
    route_now(p, g, ex);
    EXPECT_EQ(ex, expert) << "a step changed the routing";
    double s = 0;
    for (size_t i = 0; i < g.size(); ++i) s += double(c[i]) * g[i];
    for (int n = 0; n < N; ++n) {
      double q = 0;
      for (int e = 0; e < E; ++e) q += p[size_t(n) * E + e];
      for (int e = 0; e < E; ++e) s += double(aux[size_t(e)]) * p[size_t(n) * E + e] / q;
    }
    return s;
  };
  Vec dlogits(logits.size());
  be->moe_route_backward(dlogits.data(), c.data(), probs.data(), expert.data(), aux.data(), N, E, k,
                         routing);
  const float h = 1e-3f;
  for (size_t i = 0; i < logits.size(); ++i)
    EXPECT_NEAR(dlogits[i], central_difference(logits[i], h, loss), 2e-3) << "dlogits " << i;
  // The router z-loss is the softmax's: refused with sigmoid scores.
  EXPECT_THROW(be->moe_route_backward(dlogits.data(), c.data(), probs.data(), expert.data(),
                                      nullptr, N, E, k, routing, probs.data(), 0.1f),
               Error);
}

// Sigmoid scores that all underflow (logits of −200: 1/(1 + e^200) = 0 in fp32) give zero
// gates and a zero gradient, not 0/0 (DeepSeek-V3's 1e-20 on the sums they are divided by).
TEST(SigmoidScores, UnderflowingScoresGiveZeroGates) {
  const int N = 2, E = 4, k = 2;
  auto be = make_cpu_backend();
  const Vec logits(size_t(N) * E, -200.0f), c = random_vec(size_t(N) * k, 29);
  const Vec aux = random_vec(size_t(E), 30);
  MoeRouting routing(true);
  routing.sigmoid = true;
  Vec probs(size_t(N) * E), gate(size_t(N) * k), dlogits(logits.size());
  Ints expert(size_t(N) * k);
  be->moe_route(probs.data(), expert.data(), gate.data(), logits.data(), N, E, k, routing);
  for (float g : gate) EXPECT_EQ(g, 0.0f);
  be->moe_route_backward(dlogits.data(), c.data(), probs.data(), expert.data(), aux.data(), N, E, k,
                         routing);
  for (float d : dlogits) EXPECT_EQ(d, 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Normalized, SigmoidRouting, ::testing::Bool());

// Node-limited routing (MoeRouting::groups) against its definition: each group's score the sum of
// its two largest keys (score + bias; DeepSeek-V3's sigmoid scores with biases), or with
// group_by_best its largest alone (DeepSeek-V2's softmax scores, no bias), the group_top_k best
// groups by a stable sort, the k picks by a stable sort of the keys of those groups' experts.
// Groups that do not suit are refused.
class GroupRouting : public ::testing::TestWithParam<bool> {};

TEST_P(GroupRouting, PicksComeFromTheBestGroups) {
  const bool best = GetParam();
  const int N = 9, E = 12, k = 3, G = 4, M = 2, S = E / G;
  auto be = make_cpu_backend();
  const Vec logits = random_vec(size_t(N) * E, 27, 1.5f), bias = random_vec(size_t(E), 28, 0.3f);
  const Vec no_bias(size_t(E), 0.0f);
  MoeRouting routing(!best);
  routing.sigmoid = !best;
  routing.bias = best ? nullptr : bias.data();
  routing.groups = G;
  routing.group_top_k = M;
  routing.group_by_best = best;
  const Vec& b = best ? no_bias : bias;
  Vec probs(size_t(N) * E), gate(size_t(N) * k);
  Ints expert(size_t(N) * k), free_pick(size_t(N) * k);
  be->moe_route(probs.data(), expert.data(), gate.data(), logits.data(), N, E, k, routing);
  for (int n = 0; n < N; ++n) {
    std::vector<float> key(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) key[size_t(e)] = probs[size_t(n) * E + e] + b[size_t(e)];
    std::vector<float> score;
    for (int q = 0; q < G; ++q) {
      std::vector<float> g(key.begin() + q * S, key.begin() + (q + 1) * S);
      std::sort(g.begin(), g.end(), std::greater<>());
      score.push_back(best ? g[0] : g[0] + g[1]);
    }
    std::vector<int> groups(static_cast<size_t>(G));
    std::iota(groups.begin(), groups.end(), 0);
    std::stable_sort(groups.begin(), groups.end(),
                     [&](int a, int b) { return score[size_t(a)] > score[size_t(b)]; });
    std::vector<int> order;
    for (int e = 0; e < E; ++e)
      if (std::find(groups.begin(), groups.begin() + M, e / S) != groups.begin() + M)
        order.push_back(e);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return key[size_t(a)] > key[size_t(b)]; });
    for (int j = 0; j < k; ++j)
      EXPECT_EQ(expert[size_t(n) * k + j], order[size_t(j)]) << n << " " << j;
  }
  routing.groups = 1;  // without groups some row picks an expert of another group
  be->moe_route(probs.data(), free_pick.data(), gate.data(), logits.data(), N, E, k, routing);
  EXPECT_NE(free_pick, expert);
  for (auto [g, m] : {std::pair{5, 2}, std::pair{12, 1}, std::pair{4, 0}, std::pair{4, 5},
                      std::pair{4, 1}}) {  // 4 groups, top 1: 3 experts for k = 3 fit
    routing.groups = g;
    routing.group_top_k = m;
    const bool fits = g == 4 && m == 1;
    if (fits)
      EXPECT_NO_THROW(
          be->moe_route(probs.data(), expert.data(), gate.data(), logits.data(), N, E, k, routing));
    else
      EXPECT_THROW(
          be->moe_route(probs.data(), expert.data(), gate.data(), logits.data(), N, E, k, routing),
          Error)
          << g << " " << m;
  }
}

INSTANTIATE_TEST_SUITE_P(GroupScore, GroupRouting, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Max" : "TopTwoSum"; });

INSTANTIATE_TEST_SUITE_P(Shapes, MoeOps,
                         ::testing::Values(std::make_tuple(9, 4, 2, true),
                                           std::make_tuple(9, 4, 2, false),
                                           std::make_tuple(12, 8, 3, true),
                                           std::make_tuple(5, 1, 1, true)));

}  // namespace
}  // namespace triad
