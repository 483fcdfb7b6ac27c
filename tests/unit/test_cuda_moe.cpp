// The CUDA backend's mixture-of-experts ops (backend.h, "mixture of experts"; cuda_moe.cu)
// against the CPU backend's (cpu_moe.cpp), fp32 and bf16, on the same inputs (the CPU's routing
// feeds both sides of the later ops).
//  - Exact: the experts (same tie rule: rows with many equal logits included), the slots and
//    counts, the gathered rows.
//  - Probabilities and gates: each within 1e-5 relative (both computed in fp32, bf16 logits
//    widened first; only the softmax sum's order and exp's last bits differ); prob_sums within
//    1e-5 relative (different fixed summation orders).
//  - combine, combine_backward, route_backward: ‖got − want‖₂ / ‖want‖₂ <= 1e-5 for fp32
//    outputs (dgate also in the bf16 variant: an fp32 dot of bf16 values), 1e-2 for bf16 ones.
//  - Outputs start from garbage (the ops write, not accumulate), and every op runs twice on the
//    GPU: the runs must agree bit for bit.
// Every test skips when no CUDA device is usable (and in builds without CUDA).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../support/bf16_data.h"
#include "../support/cuda_test_fixture.h"
#include "../support/l2_error.h"
#include "../support/random_data.h"
#include "triad/core/bf16.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using Vec = std::vector<float>;
using triad::testing::close_l2;
using Ints = std::vector<int32_t>;
using triad::testing::Bits;
using triad::testing::random_ints;
using triad::testing::random_vec;
using triad::testing::to_bits;
using triad::testing::to_floats;

constexpr double kTolFp32 = 1e-5;
constexpr double kTolBf16 = 1e-2;

struct Shape {
  int N, E, k, C;
  bool normalize;
  bool sigmoid = false;  // DeepSeek-V3's routing: sigmoid scores, a bias, scaled gates
  int groups = 1;        // and node-limited: the experts of groups / 2 of these groups
};
// E = 1 (one lane busy), E = 256 to kMaxExperts (each lane loops over 8 and more columns); C:
// multiples of 16 bytes (moe_gather's 16-byte copies) and odd widths (its element copies).
constexpr Shape kShapes[] = {
    {37, 8, 2, 48, true},
    {37, 8, 2, 37, false},
    {64, 64, 6, 64, true},
    {64, 64, 6, 33, false},
    {5, 1, 1, 16, true},
    {5, 1, 1, 16, false},
    {40, 256, 8, 40, true},
    {23, 300, 3, 24, false},
    {37, 8, 2, 48, true, true},
    {23, 300, 3, 24, false, true},
    {40, 256, 8, 40, true, true, 8},
    {17, 384, 8, 32, true, true},  // Kimi K2's experts
    {9, kMaxExperts, 8, 16, true, true, 16},
};

// The routing of a shape; with sigmoid scores, the bias (host or device memory) chooses and the
// gates are scaled by 2.5.
MoeRouting routing_of(const Shape& s, const float* bias) {
  MoeRouting r(s.normalize);
  if (s.sigmoid) {
    r.sigmoid = true;
    r.scale = 2.5f;
    r.bias = bias;
    r.groups = s.groups;
    r.group_top_k = s.groups > 1 ? s.groups / 2 : 1;
  }
  return r;
}

::testing::Message describe(const Shape& s) {
  return ::testing::Message() << "N=" << s.N << " E=" << s.E << " k=" << s.k << " C=" << s.C
                              << " normalize=" << s.normalize << (s.sigmoid ? " sigmoid" : "")
                              << " groups=" << s.groups;
}

// |got[i] − want[i]| <= tol·|want[i]| for every i (NaN only where NaN).
::testing::AssertionResult close_each(const Vec& got, const Vec& want, double tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool ok = std::isnan(w) ? std::isnan(g) : std::abs(g - w) <= tol * std::abs(w);
    if (!ok)
      return ::testing::AssertionFailure()
             << "at " << i << " of " << got.size() << ": got " << got[i] << ", want " << want[i]
             << " (relative tolerance " << tol << ")";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult close_l2(const Bits& got, const Bits& want, double tol) {
  return close_l2(to_floats(got), to_floats(want), tol);
}

// The same bits (determinism, and the results the contract fixes exactly).
template <typename T>
::testing::AssertionResult same_bits(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      ::testing::AssertionResult r = ::testing::AssertionFailure();
      r << "first difference at " << i << " of " << got.size();
      if constexpr (std::is_same_v<T, bf16_t>)
        r << ": got " << to_float(got[i]) << ", want " << to_float(want[i]);
      else
        r << ": got " << got[i] << ", want " << want[i];
      return r;
    }
  return ::testing::AssertionSuccess();
}

// The activations of a precision: fp32 (Vec) or bf16 (Bits) made from the same random floats.
struct Fp32 {
  using Act = Vec;
  static constexpr double kTol = kTolFp32;
  static Act make(const Vec& v) { return v; }
};
struct Bf16 {
  using Act = Bits;
  static constexpr double kTol = kTolBf16;
  static Act make(const Vec& v) { return to_bits(v); }
};

struct Routing {
  Vec probs, gate;
  Ints expert;
};
struct Dispatch {
  Ints slot;
  std::vector<int> counts;
  Vec sums;
};

class CudaMoeTest : public triad::testing::CudaVsCpuTest {
 protected:
  Ints host_ints(const int32_t* d, size_t n) {  // int32 and float move alike (same size, bits)
    const Vec raw = host(reinterpret_cast<const float*>(d), n);
    Ints h(n);
    if (n > 0) std::memcpy(h.data(), raw.data(), n * sizeof(int32_t));
    return h;
  }
  int32_t* dev_ints(size_t n) { return dev(Ints(n, -7)); }
  float* dev_garbage(size_t n, uint32_t seed) { return dev(random_vec(n, seed, 50.0f, 90.0f)); }
  bf16_t* dev_garbage_bf16(size_t n, uint32_t seed) {
    return dev(to_bits(random_vec(n, seed, 50.0f, 90.0f)));
  }
  template <class P>
  typename P::Act::value_type* dev_garbage_act(size_t n, uint32_t seed) {
    if constexpr (std::is_same_v<P, Fp32>)
      return dev_garbage(n, seed);
    else
      return dev_garbage_bf16(n, seed);
  }
  template <class P>
  typename P::Act host_act(const typename P::Act::value_type* d, size_t n) {
    return host(d, n);
  }

  // A sigmoid routing's bias: large enough to reorder the picks.
  static Vec router_bias(const Shape& s) { return random_vec(size_t(s.E), 61, -0.3f, 0.3f); }

  // The CPU's routing of logits (fp32 or bf16).
  template <class L>
  Routing cpu_route(const L& logits, const Shape& s) {
    Routing r{Vec(size_t(s.N) * s.E), Vec(size_t(s.N) * s.k), Ints(size_t(s.N) * s.k)};
    cpu->moe_route(r.probs.data(), r.expert.data(), r.gate.data(), logits.data(), s.N, s.E, s.k,
                   routing_of(s, router_bias(s).data()));
    return r;
  }
  template <class L>
  Routing gpu_route(const L& logits, const Shape& s) {
    const size_t NE = size_t(s.N) * s.E, Nk = size_t(s.N) * s.k;
    float* probs = dev_garbage(NE, 11);
    float* gate = dev_garbage(Nk, 12);
    int32_t* expert = dev_ints(Nk);
    gpu->moe_route(probs, expert, gate, dev(logits), s.N, s.E, s.k,
                   routing_of(s, dev(router_bias(s))));
    return {host(probs, NE), host(gate, Nk), host_ints(expert, Nk)};
  }

  // Routing on the GPU (twice: bit-identical) against the CPU's.
  template <class L>
  void expect_route_matches(const L& logits, const Shape& s) {
    const Routing want = cpu_route(logits, s);
    const Routing got = gpu_route(logits, s), again = gpu_route(logits, s);
    EXPECT_TRUE(same_bits(got.expert, want.expert)) << "expert";
    EXPECT_TRUE(close_each(got.probs, want.probs, kTolFp32)) << "probs";
    EXPECT_TRUE(close_each(got.gate, want.gate, kTolFp32)) << "gate";
    EXPECT_TRUE(same_bits(again.expert, got.expert)) << "expert, second run";
    EXPECT_TRUE(same_bits(again.probs, got.probs)) << "probs, second run";
    EXPECT_TRUE(same_bits(again.gate, got.gate)) << "gate, second run";
  }

  Dispatch cpu_dispatch(const Ints& expert, const Vec& probs, int N, int E, int k) {
    Dispatch d{Ints(size_t(N) * k), std::vector<int>(size_t(E)), Vec(size_t(E))};
    cpu->moe_dispatch(d.slot.data(), d.counts.data(), d.sums.data(), expert.data(), probs.data(), N,
                      E, k);
    return d;
  }
  Dispatch gpu_dispatch(const Ints& expert, const Vec& probs, int N, int E, int k) {
    Dispatch d{Ints(), std::vector<int>(size_t(E), -1), Vec(size_t(E), -1.0f)};
    int32_t* slot = dev_ints(size_t(N) * k);
    gpu->moe_dispatch(slot, d.counts.data(), d.sums.data(), dev(expert), dev(probs), N, E, k);
    d.slot = host_ints(slot, size_t(N) * k);
    return d;
  }
  // Dispatch on the GPU (twice: bit-identical) against the CPU's; prob_sums against `sums`
  // within tol (the CPU's by default).
  void expect_dispatch_matches(const Ints& expert, const Vec& probs, int N, int E, int k,
                               const Vec* sums = nullptr, double tol = kTolFp32) {
    const Dispatch want = cpu_dispatch(expert, probs, N, E, k);
    const Dispatch got = gpu_dispatch(expert, probs, N, E, k);
    const Dispatch again = gpu_dispatch(expert, probs, N, E, k);
    EXPECT_TRUE(same_bits(got.slot, want.slot)) << "slot";
    EXPECT_TRUE(same_bits(got.counts, want.counts)) << "counts";
    EXPECT_TRUE(close_each(got.sums, sums != nullptr ? *sums : want.sums, tol)) << "prob_sums";
    EXPECT_TRUE(same_bits(again.slot, got.slot)) << "slot, second run";
    EXPECT_TRUE(same_bits(again.counts, got.counts)) << "counts, second run";
    EXPECT_TRUE(same_bits(again.sums, got.sums)) << "prob_sums, second run";
    // Without prob_sums: the same slots and counts.
    std::vector<int> counts(size_t(E), -1);
    int32_t* slot = dev_ints(size_t(N) * k);
    gpu->moe_dispatch(slot, counts.data(), nullptr, dev(expert), dev(probs), N, E, k);
    EXPECT_TRUE(same_bits(host_ints(slot, size_t(N) * k), want.slot)) << "slot, no prob_sums";
    EXPECT_TRUE(same_bits(counts, want.counts)) << "counts, no prob_sums";
  }

  // The CPU's routing and dispatch of random logits of shape s: the inputs of the later ops.
  struct Routed {
    Routing r;
    Dispatch d;
  };
  Routed routed(const Shape& s, uint32_t seed) {
    const Routing r = cpu_route(random_vec(size_t(s.N) * s.E, seed, -4.0f, 4.0f), s);
    const Dispatch d = cpu_dispatch(r.expert, r.probs, s.N, s.E, s.k);
    return {r, d};
  }

  template <class P>
  void check_gather(const Shape& s) {
    const Routed rt = routed(s, 21);
    const auto x = P::make(random_vec(size_t(s.N) * s.C, 22));
    const size_t rows = size_t(s.N) * s.k;
    typename P::Act want(rows * size_t(s.C));
    cpu->moe_gather(want.data(), x.data(), rt.d.slot.data(), s.N, s.k, s.C);
    const int32_t* slot = dev(rt.d.slot);
    const auto* dx = dev(x);
    for (int run = 0; run < 2; ++run) {
      auto* out = dev_garbage_act<P>(rows * size_t(s.C), 23);
      gpu->moe_gather(out, dx, slot, s.N, s.k, s.C);
      EXPECT_TRUE(same_bits(host_act<P>(out, rows * size_t(s.C)), want)) << "run " << run;
    }
  }

  template <class P>
  void check_combine(const Shape& s, bool with_gate) {
    const Routed rt = routed(s, 31);
    const size_t rows = size_t(s.N) * s.k;
    const auto y = P::make(random_vec(rows * size_t(s.C), 32));
    const float* gate_h = with_gate ? rt.r.gate.data() : nullptr;
    typename P::Act want(size_t(s.N) * s.C);
    cpu->moe_combine(want.data(), y.data(), rt.d.slot.data(), gate_h, s.N, s.k, s.C);
    const int32_t* slot = dev(rt.d.slot);
    const float* gate = with_gate ? dev(rt.r.gate) : nullptr;
    const auto* dy = dev(y);
    typename P::Act first;
    for (int run = 0; run < 2; ++run) {
      auto* out = dev_garbage_act<P>(size_t(s.N) * s.C, 33);
      gpu->moe_combine(out, dy, slot, gate, s.N, s.k, s.C);
      const auto got = host_act<P>(out, size_t(s.N) * s.C);
      if (run == 0) {
        EXPECT_TRUE(close_l2(got, want, P::kTol)) << "out";
        first = got;
      } else {
        EXPECT_TRUE(same_bits(got, first)) << "out, second run";
      }
    }
  }

  template <class P>
  void check_combine_backward(const Shape& s) {
    const Routed rt = routed(s, 41);
    const size_t rows = size_t(s.N) * s.k;
    const auto dout = P::make(random_vec(size_t(s.N) * s.C, 42));
    const auto y = P::make(random_vec(rows * size_t(s.C), 43));
    typename P::Act want_dy(rows * size_t(s.C));
    Vec want_dgate(rows);
    cpu->moe_combine_backward(want_dy.data(), want_dgate.data(), dout.data(), y.data(),
                              rt.d.slot.data(), rt.r.gate.data(), s.N, s.k, s.C);
    const int32_t* slot = dev(rt.d.slot);
    const float* gate = dev(rt.r.gate);
    const auto* d_dout = dev(dout);
    const auto* d_y = dev(y);
    typename P::Act first_dy;
    Vec first_dgate;
    for (int run = 0; run < 2; ++run) {
      auto* dy = dev_garbage_act<P>(rows * size_t(s.C), 44);
      float* dgate = dev_garbage(rows, 45);
      gpu->moe_combine_backward(dy, dgate, d_dout, d_y, slot, gate, s.N, s.k, s.C);
      const auto got_dy = host_act<P>(dy, rows * size_t(s.C));
      const Vec got_dgate = host(dgate, rows);
      if (run == 0) {
        EXPECT_TRUE(close_l2(got_dy, want_dy, P::kTol)) << "dy";
        EXPECT_TRUE(close_l2(got_dgate, want_dgate, kTolFp32)) << "dgate";
        first_dy = got_dy;
        first_dgate = got_dgate;
      } else {
        EXPECT_TRUE(same_bits(got_dy, first_dy)) << "dy, second run";
        EXPECT_TRUE(same_bits(got_dgate, first_dgate)) << "dgate, second run";
      }
    }
  }

  template <class P>
  void check_route_backward(const Shape& s, bool with_aux) {
    const Routed rt = routed(s, 51);
    const Vec dgate = random_vec(size_t(s.N) * s.k, 52);
    const Vec aux = random_vec(size_t(s.E), 53, -0.1f, 0.1f);
    const float* aux_h = with_aux ? aux.data() : nullptr;
    typename P::Act want(size_t(s.N) * s.E);
    cpu->moe_route_backward(want.data(), dgate.data(), rt.r.probs.data(), rt.r.expert.data(), aux_h,
                            s.N, s.E, s.k, routing_of(s, nullptr));
    const float* d_dgate = dev(dgate);
    const float* probs = dev(rt.r.probs);
    const int32_t* expert = dev(rt.r.expert);
    typename P::Act first;
    for (int run = 0; run < 2; ++run) {
      auto* dlogits = dev_garbage_act<P>(size_t(s.N) * s.E, 54);
      // aux is host memory (backend.h): the GPU takes it by value.
      gpu->moe_route_backward(dlogits, d_dgate, probs, expert, aux_h, s.N, s.E, s.k,
                              routing_of(s, nullptr));
      const auto got = host_act<P>(dlogits, size_t(s.N) * s.E);
      if (run == 0) {
        EXPECT_TRUE(close_l2(got, want, P::kTol)) << "dlogits";
        first = got;
      } else {
        EXPECT_TRUE(same_bits(got, first)) << "dlogits, second run";
      }
    }
  }
};

TEST_F(CudaMoeTest, RouteFp32) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    expect_route_matches(random_vec(size_t(s.N) * s.E, 1, -4.0f, 4.0f), s);
  }
}

TEST_F(CudaMoeTest, RouteBf16) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    expect_route_matches(to_bits(random_vec(size_t(s.N) * s.E, 2, -4.0f, 4.0f)), s);
  }
}

// Logits of five values: many equal probabilities in every row, picked lower column first.
TEST_F(CudaMoeTest, RouteTiesKeepTheLowerColumn) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    const Ints levels = random_ints(size_t(s.N) * s.E, 3, -2, 3);
    Vec logits(levels.size());
    for (size_t i = 0; i < levels.size(); ++i) logits[i] = 0.5f * float(levels[i]);
    expect_route_matches(logits, s);
    expect_route_matches(to_bits(logits), s);
    // Every row constant: the first k columns, in order.
    const Vec flat(size_t(s.N) * s.E, 0.25f);
    expect_route_matches(flat, s);
  }
}

TEST_F(CudaMoeTest, DispatchOfRoutedChoices) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    const Routing r = cpu_route(random_vec(size_t(s.N) * s.E, 4, -4.0f, 4.0f), s);
    expect_dispatch_matches(r.expert, r.probs, s.N, s.E, s.k);
  }
}

// Many choices (several steps of the rank pass), experts 12..15 never chosen, and no tokens.
TEST_F(CudaMoeTest, DispatchOfManyChoicesAndEmptyExperts) {
  const int N = 20000, E = 16, k = 4;
  const Ints expert = random_ints(size_t(N) * k, 5, 0, 12);
  const Vec probs = random_vec(size_t(N) * E, 6, 0.0f, 0.125f);
  // prob_sums against sums in double: the CPU's serial fp32 sum of 20000 terms drifts more than
  // 1e-5 allows.
  Vec sums(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) {
    double acc = 0.0;
    for (int n = 0; n < N; ++n) acc += probs[size_t(n) * E + e];
    sums[size_t(e)] = float(acc);
  }
  expect_dispatch_matches(expert, probs, N, E, k, &sums);

  std::vector<int> counts(size_t(E), -1);
  Vec prob_sums(size_t(E), -1.0f);
  gpu->moe_dispatch(dev_ints(1), counts.data(), prob_sums.data(), dev_ints(1), dev_garbage(1, 7), 0,
                    E, k);
  EXPECT_TRUE(same_bits(counts, std::vector<int>(size_t(E), 0))) << "counts, N = 0";
  EXPECT_TRUE(same_bits(prob_sums, Vec(size_t(E), 0.0f))) << "prob_sums, N = 0";
}

TEST_F(CudaMoeTest, Gather) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    check_gather<Fp32>(s);
    check_gather<Bf16>(s);
  }
}

TEST_F(CudaMoeTest, Combine) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    for (bool with_gate : {true, false}) {
      SCOPED_TRACE(with_gate ? "gate" : "no gate");
      check_combine<Fp32>(s, with_gate);
      check_combine<Bf16>(s, with_gate);
    }
  }
}

TEST_F(CudaMoeTest, CombineBackward) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    check_combine_backward<Fp32>(s);
    check_combine_backward<Bf16>(s);
  }
}

TEST_F(CudaMoeTest, RouteBackward) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    for (bool with_aux : {true, false}) {
      SCOPED_TRACE(with_aux ? "aux" : "no aux");
      check_route_backward<Fp32>(s, with_aux);
      check_route_backward<Bf16>(s, with_aux);
    }
  }
}

// The shared experts' gate: sigmoid of fp32 and bf16 logits (saturated ones too) and its
// gradient, against the CPU's.
TEST_F(CudaMoeTest, SharedGate) {
  for (int N : {1, 257, 5000}) {
    SCOPED_TRACE(N);
    Vec logits = random_vec(size_t(N), 61, -8.0f, 8.0f);
    logits[0] = 60.0f;
    if (N > 1) logits[1] = -60.0f;
    const Vec ds = random_vec(size_t(N), 62, -2.0f, 2.0f);
    const size_t n = size_t(N);
    Vec want(n), want_b(n);
    cpu->moe_shared_gate(want.data(), logits.data(), N);
    cpu->moe_shared_gate(want_b.data(), to_bits(logits).data(), N);
    float* s = dev_garbage(size_t(N), 63);
    gpu->moe_shared_gate(s, dev(logits), N);
    EXPECT_TRUE(close_l2(host(s, size_t(N)), want, kTolFp32)) << "fp32 sigmoid";
    gpu->moe_shared_gate(s, dev(to_bits(logits)), N);
    EXPECT_TRUE(close_l2(host(s, size_t(N)), want_b, kTolFp32)) << "bf16 sigmoid";
    Vec dz(n);
    cpu->moe_shared_gate_backward(dz.data(), ds.data(), want.data(), N);
    float* d = dev_garbage(size_t(N), 64);
    gpu->moe_shared_gate_backward(d, dev(ds), dev(want), N);
    EXPECT_TRUE(close_l2(host(d, size_t(N)), dz, kTolFp32)) << "fp32 gradient";
    bf16_t* db = dev_garbage_bf16(size_t(N), 65);
    gpu->moe_shared_gate_backward(db, dev(ds), dev(want), N);
    EXPECT_TRUE(close_l2(host(db, size_t(N)), to_bits(dz), kTolBf16)) << "bf16 gradient";
  }
}

}  // namespace
}  // namespace triad
