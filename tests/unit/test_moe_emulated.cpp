// The CUDA backend's mixture-of-experts kernels (src/kernels/cuda/moe_block.h, as cuda_moe.cu
// launches them), run on the CPU through the SIMT emulator, against the CPU backend's ops
// (themselves tested against independent definitions in test_cpu_moe): the same top-k picks,
// dispatch slots and counts; probabilities, gates, lse and every gradient within 1e-5 (fp32) or
// 1e-2 (bf16 outputs) of the largest magnitude. Rows that are not a multiple of 32 columns, up to
// 256 experts, ties, an all-NaN row, a dispatch long enough for several scan steps, experts with
// no choice. Needs no GPU; test_cuda_moe runs the kernels on one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "../../src/kernels/cuda/moe_block.h"
#include "../support/block_data.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using simt::CopyTiming;
using testing::as_bf16;
using testing::widened;
using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;
using Bits = testing::Bf16Bits;

// Uniform in [-scale, scale).
Vec random_vec(size_t n, uint32_t seed, float scale = 1.0f) {
  return testing::random_vec(n, seed, -scale, scale);
}
Bits to_bits(const Vec& v) { return testing::bf16_bits(v); }
double rel_error(const Vec& got, const Vec& want) { return testing::max_rel_error(got, want); }

int warp_blocks(int rows) {
  return (rows + moe_block::kWarpsPerBlock - 1) / moe_block::kWarpsPerBlock;
}

template <class Body>
void launch(int blocks, int threads, size_t smem, Body body) {
  simt::launch(blocks, 1, threads, smem, CopyTiming::at_issue, body);
}

struct Route {
  Vec probs, gate, lse;
  Ints expert;
};

// The logits: random, then row 1 all equal (ties: the lowest columns win) and, with `nan_row`,
// row 2 all NaN (its first k columns, as the CPU picks them).
Vec route_logits(int N, int E, uint32_t seed, bool nan_row) {
  Vec z = random_vec(size_t(N) * E, seed, 2.0f);
  if (N > 1) std::fill(z.begin() + E, z.begin() + 2 * E, 0.5f);
  if (nan_row && N > 2) std::fill(z.begin() + 2 * E, z.begin() + 3 * E, NAN);
  return z;
}

// What a routing adds to a test's trace.
std::string describe(const MoeRouting& r) {
  std::string s = r.normalize ? " normalized" : "";
  if (r.sigmoid) s += " sigmoid";
  if (r.scale != 1.0f) s += " scale " + std::to_string(r.scale);
  if (r.bias != nullptr) s += " bias";
  if (r.groups > 1)
    s += " groups " + std::to_string(r.group_top_k) + "/" + std::to_string(r.groups) +
         (r.group_by_best ? " by best" : "");
  return s;
}

void check_route(int N, int E, int k, MoeRouting routing, bool bf16) {
  const bool normalize = routing.normalize;
  SCOPED_TRACE(::testing::Message() << "N=" << N << " E=" << E << " k=" << k << describe(routing)
                                    << (bf16 ? " bf16" : ""));
  const bool nan_row = !normalize && N > 2;
  const Vec z32 = route_logits(N, E, 11u + E, nan_row);
  const Bits zb = to_bits(z32);
  auto be = make_cpu_backend();
  auto fresh = [&] {
    return Route{Vec(size_t(N) * E, NAN), Vec(size_t(N) * k, NAN), Vec(size_t(N), NAN),
                 Ints(size_t(N) * k, -7)};
  };
  Route want = fresh(), got = fresh();
  if (bf16)
    be->moe_route(want.probs.data(), want.expert.data(), want.gate.data(), as_bf16(zb), N, E, k,
                  routing, want.lse.data());
  else
    be->moe_route(want.probs.data(), want.expert.data(), want.gate.data(), z32.data(), N, E, k,
                  routing, want.lse.data());
  launch(warp_blocks(N), moe_block::kWarpThreads, 0, [&](simt::Thread& x) {
    if (bf16)
      moe_block::route_rows(x, got.probs.data(), got.expert.data(), got.gate.data(), zb.data(), N,
                            E, k, routing, got.lse.data());
    else
      moe_block::route_rows(x, got.probs.data(), got.expert.data(), got.gate.data(), z32.data(), N,
                            E, k, routing, got.lse.data());
  });
  EXPECT_EQ(got.expert, want.expert);
  auto finite_rows = [&](const Vec& v, size_t width) {  // without the NaN row
    Vec r;
    for (size_t n = 0; n < size_t(N); ++n)
      if (n != 2 || !nan_row) r.insert(r.end(), v.begin() + n * width, v.begin() + (n + 1) * width);
    return r;
  };
  EXPECT_LE(rel_error(finite_rows(got.probs, E), finite_rows(want.probs, E)), 1e-5) << "probs";
  EXPECT_LE(rel_error(finite_rows(got.gate, k), finite_rows(want.gate, k)), 1e-5) << "gate";
  EXPECT_LE(rel_error(finite_rows(got.lse, 1), finite_rows(want.lse, 1)), 1e-5) << "lse";
}

TEST(MoeEmulated, RouteTopTwoNormalized) { check_route(37, 8, 2, true, false); }
TEST(MoeEmulated, RouteColumnsNotAMultipleOf32) { check_route(20, 40, 6, false, false); }
TEST(MoeEmulated, RouteTopOneFromBf16) { check_route(19, 64, 1, false, true); }
TEST(MoeEmulated, RouteMostExperts) { check_route(9, 256, 8, true, true); }

// DeepSeek-V3's routing: sigmoid scores, a bias that chooses (large enough to reorder the picks),
// scaled gates; normalized or not (then with the all-NaN row), fp32 and bf16 logits.
MoeRouting sigmoid_routing(bool normalize, const Vec& bias) {
  MoeRouting r(normalize);
  r.sigmoid = true;
  r.scale = 2.5f;
  r.bias = bias.data();
  return r;
}
TEST(MoeEmulated, RouteSigmoidWithBias) {
  const Vec bias8 = random_vec(8, 51, 0.3f), bias40 = random_vec(40, 52, 0.3f);
  check_route(37, 8, 2, sigmoid_routing(true, bias8), false);
  check_route(20, 40, 6, sigmoid_routing(false, bias40), false);
  check_route(19, 40, 3, sigmoid_routing(true, bias40), true);
}

// Node-limited routing: DeepSeek-V3's 8 groups of 256 experts (top 4 groups, top 8 experts), 8
// groups of 5 with the all-NaN row (every key −∞: the first groups, their first columns), and
// DeepSeek-V2's groups scored by their best expert.
TEST(MoeEmulated, RouteInGroups) {
  const Vec bias256 = random_vec(256, 55, 0.3f), bias40 = random_vec(40, 56, 0.3f);
  MoeRouting v3 = sigmoid_routing(true, bias256);
  v3.groups = 8;
  v3.group_top_k = 4;
  check_route(9, 256, 8, v3, true);
  MoeRouting small = sigmoid_routing(false, bias40);
  small.groups = 8;
  small.group_top_k = 3;
  check_route(20, 40, 6, small, false);
  MoeRouting softmax(true);  // softmax scores and no bias in groups
  softmax.groups = 4;
  softmax.group_top_k = 1;
  check_route(37, 8, 2, softmax, false);
  // DeepSeek-V2's: 160 experts in 8 groups scored by their best (top 3 groups, top 6 experts).
  MoeRouting v2(false);
  v2.scale = 16.0f;
  v2.groups = 8;
  v2.group_top_k = 3;
  v2.group_by_best = true;
  check_route(11, 160, 6, v2, false);
}

// Expert choices: random over E, expert `empty` never chosen.
Ints random_choices(int M, int E, int empty, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> d(0, E - 1);
  Ints ex(static_cast<size_t>(M));
  for (auto& e : ex) {
    do e = d(gen);
    while (e == empty);
  }
  return ex;
}

void check_dispatch(int N, int E, int k) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " E=" << E << " k=" << k);
  const int M = N * k;
  const Ints expert = random_choices(M, E, E / 2, 5u + M);
  const Vec probs(size_t(N) * E, 1.0f / float(E));
  auto be = make_cpu_backend();
  Ints want_slot(size_t(M), -1), got_slot(size_t(M), -1);
  std::vector<int> want_counts(size_t(E), -1), got_counts(size_t(E), -1);
  Vec sums(static_cast<size_t>(E));
  be->moe_dispatch(want_slot.data(), want_counts.data(), sums.data(), expert.data(), probs.data(),
                   N, E, k);
  launch(E, moe_block::kDispatchThreads, moe_block::dispatch_smem(), [&](simt::Thread& x) {
    moe_block::dispatch_block(x, got_slot.data(), got_counts.data(), expert.data(), M);
  });
  EXPECT_EQ(got_counts, want_counts);
  EXPECT_EQ(got_slot, want_slot);
}

TEST(MoeEmulated, DispatchOneScanStep) { check_dispatch(150, 8, 2); }
TEST(MoeEmulated, DispatchSeveralScanSteps) { check_dispatch(2600, 6, 2); }

// Gather, combine (with gates and without) and the combine's backward, fp32 or bf16.
void check_combine(int N, int k, int C, bool bf16) {
  SCOPED_TRACE(::testing::Message()
               << "N=" << N << " k=" << k << " C=" << C << (bf16 ? " bf16" : ""));
  const int M = N * k;
  // slot: a permutation of the choices (what dispatch gives).
  Ints slot(static_cast<size_t>(M));
  for (int i = 0; i < M; ++i) slot[size_t(i)] = i;
  std::shuffle(slot.begin(), slot.end(), std::mt19937(3));
  const Vec x32 = random_vec(size_t(N) * C, 21), y32 = random_vec(size_t(M) * C, 22),
            dout32 = random_vec(size_t(N) * C, 23), gate = random_vec(size_t(M), 24);
  const Bits xb = to_bits(x32), yb = to_bits(y32), doutb = to_bits(dout32);
  auto be = make_cpu_backend();
  const int blocks = std::min(M, 5), threads = 64;  // loops over rows and columns
  for (const float* g : {gate.data(), static_cast<const float*>(nullptr)}) {
    SCOPED_TRACE(g ? "gated" : "ungated");
    if (!bf16) {
      Vec want(size_t(M) * C, NAN), got(size_t(M) * C, NAN);
      be->moe_gather(want.data(), x32.data(), slot.data(), N, k, C);
      launch(blocks, threads, 0, [&](simt::Thread& x) {
        moe_block::gather_rows(x, got.data(), x32.data(), slot.data(), M, k, C, blocks, threads);
      });
      EXPECT_EQ(got, want) << "gather";
      Vec want_out(size_t(N) * C, NAN), got_out(size_t(N) * C, NAN);
      be->moe_combine(want_out.data(), y32.data(), slot.data(), g, N, k, C);
      launch(std::min(N, 5), threads, 0, [&](simt::Thread& x) {
        moe_block::combine_rows(x, got_out.data(), y32.data(), slot.data(), g, N, k, C,
                                std::min(N, 5), threads);
      });
      EXPECT_LE(rel_error(got_out, want_out), 1e-5) << "combine";
      if (g == nullptr) continue;  // the backward always has gates (backend.h)
      Vec want_dy(size_t(M) * C, NAN), got_dy(size_t(M) * C, NAN), want_dg(size_t(M), NAN),
          got_dg(size_t(M), NAN);
      be->moe_combine_backward(want_dy.data(), want_dg.data(), dout32.data(), y32.data(),
                               slot.data(), g, N, k, C);
      launch(warp_blocks(M), moe_block::kWarpThreads, 0, [&](simt::Thread& x) {
        moe_block::combine_backward_rows(x, got_dy.data(), got_dg.data(), dout32.data(), y32.data(),
                                         slot.data(), g, M, k, C);
      });
      EXPECT_LE(rel_error(got_dy, want_dy), 1e-5) << "dy";
      EXPECT_LE(rel_error(got_dg, want_dg), 1e-5) << "dgate";
    } else {
      Bits want(size_t(M) * C, 0xFFFFu), got(size_t(M) * C, 0xFFFFu);
      be->moe_gather(as_bf16(want), as_bf16(xb), slot.data(), N, k, C);
      launch(blocks, threads, 0, [&](simt::Thread& x) {
        moe_block::gather_rows(x, got.data(), xb.data(), slot.data(), M, k, C, blocks, threads);
      });
      EXPECT_EQ(got, want) << "gather";
      Bits want_out(size_t(N) * C, 0xFFFFu), got_out(size_t(N) * C, 0xFFFFu);
      be->moe_combine(as_bf16(want_out), as_bf16(yb), slot.data(), g, N, k, C);
      launch(std::min(N, 5), threads, 0, [&](simt::Thread& x) {
        moe_block::combine_rows(x, got_out.data(), yb.data(), slot.data(), g, N, k, C,
                                std::min(N, 5), threads);
      });
      EXPECT_LE(rel_error(widened(got_out), widened(want_out)), 1e-2) << "combine";
      if (g == nullptr) continue;
      Bits want_dy(size_t(M) * C, 0xFFFFu), got_dy(size_t(M) * C, 0xFFFFu);
      Vec want_dg(size_t(M), NAN), got_dg(size_t(M), NAN);
      be->moe_combine_backward(as_bf16(want_dy), want_dg.data(), as_bf16(doutb), as_bf16(yb),
                               slot.data(), g, N, k, C);
      launch(warp_blocks(M), moe_block::kWarpThreads, 0, [&](simt::Thread& x) {
        moe_block::combine_backward_rows(x, got_dy.data(), got_dg.data(), doutb.data(), yb.data(),
                                         slot.data(), g, M, k, C);
      });
      EXPECT_LE(rel_error(widened(got_dy), widened(want_dy)), 1e-2) << "dy";
      EXPECT_LE(rel_error(got_dg, want_dg), 1e-5) << "dgate";
    }
  }
}

TEST(MoeEmulated, CombineFp32) { check_combine(13, 2, 70, false); }
TEST(MoeEmulated, CombineBf16) { check_combine(11, 3, 96, true); }

// The router's backward: through the gates' normalization (or not), with the load-balancing
// loss's coefficients and the router z-loss, fp32 or bf16 dlogits.
void check_route_backward(int N, int E, int k, MoeRouting routing, bool aux_on, float z_loss,
                          bool bf16) {
  SCOPED_TRACE(::testing::Message()
               << "N=" << N << " E=" << E << " k=" << k << describe(routing)
               << (aux_on ? " aux" : "") << " z_loss " << z_loss << (bf16 ? " bf16" : ""));
  auto be = make_cpu_backend();
  const Vec z = random_vec(size_t(N) * E, 31u + E, 1.5f);
  Vec probs(size_t(N) * E), gate(size_t(N) * k), lse(static_cast<size_t>(N));
  Ints expert(size_t(N) * k);
  be->moe_route(probs.data(), expert.data(), gate.data(), z.data(), N, E, k, routing, lse.data());
  const Vec dgate = random_vec(size_t(N) * k, 32), aux_v = random_vec(size_t(E), 33, 0.1f);
  moe_block::AuxCoefficients aux{};
  aux.on = aux_on;
  std::copy(aux_v.begin(), aux_v.end(), aux.v);
  const float* aux_host = aux_on ? aux_v.data() : nullptr;
  if (!bf16) {
    Vec want(size_t(N) * E, NAN), got(size_t(N) * E, NAN);
    be->moe_route_backward(want.data(), dgate.data(), probs.data(), expert.data(), aux_host, N, E,
                           k, routing, lse.data(), z_loss);
    launch(warp_blocks(N), moe_block::kWarpThreads, 0, [&](simt::Thread& x) {
      moe_block::route_backward_rows(x, got.data(), dgate.data(), probs.data(), expert.data(), aux,
                                     N, E, k, routing, lse.data(), z_loss);
    });
    EXPECT_LE(rel_error(got, want), 1e-5);
  } else {
    Bits want(size_t(N) * E, 0xFFFFu), got(size_t(N) * E, 0xFFFFu);
    be->moe_route_backward(as_bf16(want), dgate.data(), probs.data(), expert.data(), aux_host, N, E,
                           k, routing, lse.data(), z_loss);
    launch(warp_blocks(N), moe_block::kWarpThreads, 0, [&](simt::Thread& x) {
      moe_block::route_backward_rows(x, got.data(), dgate.data(), probs.data(), expert.data(), aux,
                                     N, E, k, routing, lse.data(), z_loss);
    });
    EXPECT_LE(rel_error(widened(got), widened(want)), 1e-2);
  }
}

TEST(MoeEmulated, RouteBackwardNormalizedWithAux) {
  check_route_backward(21, 8, 2, true, true, 0.0f, false);
}
TEST(MoeEmulated, RouteBackwardZLossWideRows) {
  check_route_backward(10, 72, 4, false, false, 0.01f, false);
}
TEST(MoeEmulated, RouteBackwardBf16) { check_route_backward(17, 40, 3, true, true, 0.001f, true); }
TEST(MoeEmulated, RouteBackwardSigmoid) {
  const Vec bias8 = random_vec(8, 53, 0.3f), bias72 = random_vec(72, 54, 0.3f);
  check_route_backward(21, 8, 2, sigmoid_routing(true, bias8), true, 0.0f, false);
  check_route_backward(10, 72, 4, sigmoid_routing(false, bias72), true, 0.0f, false);
  check_route_backward(17, 72, 3, sigmoid_routing(true, bias72), false, 0.0f, true);
}

// The most experts a model may have (kMaxExperts: every lane loops over 16 columns, the
// coefficients fill AuxCoefficients), and Kimi K2's 384: sigmoid scores with a bias, no groups,
// 8 per token, scaled by 2.827.
TEST(MoeEmulated, RouteAndBackwardAtTheExpertLimit) {
  const Vec bias = random_vec(kMaxExperts, 57, 0.3f);
  MoeRouting kimi = sigmoid_routing(true, bias);
  kimi.scale = 2.827f;
  check_route(9, 384, 8, kimi, true);
  check_route_backward(9, 384, 8, kimi, true, 0.0f, false);
  MoeRouting grouped = sigmoid_routing(true, bias);  // 16 groups of 32, the best 4
  grouped.groups = 16;
  grouped.group_top_k = 4;
  check_route(9, kMaxExperts, 8, grouped, false);
  check_route_backward(9, kMaxExperts, 8, grouped, true, 0.0f, true);
  check_route_backward(9, kMaxExperts, 8, true, true, 0.01f, false);
}

TEST(MoeEmulated, SharedGate) {
  const int N = 300;  // two blocks, the second partly idle
  auto be = make_cpu_backend();
  const Vec z = random_vec(size_t(N), 41, 2.0f), ds = random_vec(size_t(N), 42);
  const Bits zb = to_bits(z);
  const int blocks = (N + moe_block::kElementwiseThreads - 1) / moe_block::kElementwiseThreads;
  for (bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    Vec want(size_t(N), NAN), got(size_t(N), NAN);
    if (bf16)
      be->moe_shared_gate(want.data(), as_bf16(zb), N);
    else
      be->moe_shared_gate(want.data(), z.data(), N);
    launch(blocks, moe_block::kElementwiseThreads, 0, [&](simt::Thread& x) {
      if (bf16)
        moe_block::shared_gate(x, got.data(), zb.data(), N);
      else
        moe_block::shared_gate(x, got.data(), z.data(), N);
    });
    EXPECT_LE(rel_error(got, want), 1e-5) << "gate";
    if (bf16) {
      Bits want_d(size_t(N), 0xFFFFu), got_d(size_t(N), 0xFFFFu);
      be->moe_shared_gate_backward(as_bf16(want_d), ds.data(), want.data(), N);
      launch(blocks, moe_block::kElementwiseThreads, 0, [&](simt::Thread& x) {
        moe_block::shared_gate_backward(x, got_d.data(), ds.data(), want.data(), N);
      });
      EXPECT_LE(rel_error(widened(got_d), widened(want_d)), 1e-2) << "dlogits";
    } else {
      Vec want_d(size_t(N), NAN), got_d(size_t(N), NAN);
      be->moe_shared_gate_backward(want_d.data(), ds.data(), want.data(), N);
      launch(blocks, moe_block::kElementwiseThreads, 0, [&](simt::Thread& x) {
        moe_block::shared_gate_backward(x, got_d.data(), ds.data(), want.data(), N);
      });
      EXPECT_LE(rel_error(got_d, want_d), 1e-5) << "dlogits";
    }
  }
}

}  // namespace
}  // namespace triad
