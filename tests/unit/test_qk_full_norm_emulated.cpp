// The CUDA backend's RMSNorm of q and k over all their heads (src/kernels/cuda/
// qk_full_norm_block.h, as cuda_qk_full_norm.cu launches it), run on the CPU through the SIMT
// emulator, against the CPU backend's qk_full_norm ops: the sums (of squares, and the backward's
// dots), out and rstd with the whole vectors wider than this call's (a tensor-parallel rank's
// share: Dq, Dk > C, K), the input gradient (overwritten, accumulated, and in place over dout)
// and the weight gradients (the per-slice partials added in slice order, as column_sum_finish
// does), within 1e-5 (fp32) or 1e-2 (bf16 outputs) of the largest magnitude. Widths that are
// not a multiple of 32, grouped k/v, fewer threads than elements (the stride loops). Needs no
// GPU; test_cuda_bf16 and test_cuda_backend run the kernels on one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../../src/kernels/cuda/qk_full_norm_block.h"
#include "../support/block_data.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using testing::as_bf16;
using testing::widened;
using Vec = std::vector<float>;
using Bits = testing::Bf16Bits;
namespace qb = qk_full_norm_block;
using Data = testing::BothViews;
using testing::both_views;
double rel_error(const Vec& got, const Vec& want) { return testing::max_rel_error(got, want); }

template <class Body>
void launch(int grid_x, int grid_y, size_t smem, Body body) {
  simt::launch(grid_x, grid_y, qb::kThreads, smem, simt::CopyTiming::at_issue, body);
}

// Data's fp32 or bf16 view, as the kernels take it.
template <bool kBf16>
auto view(const Data& d) {
  if constexpr (kBf16)
    return d.b.data();
  else
    return d.f.data();
}

template <bool kBf16>
void check(int N, int NH, int NKV, int hd, int tp) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " NH=" << NH << " NKV=" << NKV << " hd=" << hd
                                    << " tp=" << tp << (kBf16 ? " bf16" : " fp32"));
  const int C = NH * hd, K = NKV * hd, Dq = C * tp, Dk = K * tp;
  const qb::Shape h{C, K, size_t(C + 2 * K)};
  const size_t W = h.W, total = size_t(N) * W;
  const double tol = kBf16 ? 1e-2 : 1e-5;
  const Data qkv = both_views(total, 1), dout = both_views(total, 2),
             wq = both_views(size_t(C), 3, 0.5f, 1.5f), wk = both_views(size_t(K), 4, 0.5f, 1.5f),
             old = both_views(total, 5);
  auto be = make_cpu_backend();
  const int blocks = 2;
  const size_t warps = size_t(blocks) * qb::kWarpsPerBlock, threads = size_t(blocks) * qb::kThreads;
  ASSERT_GT(total, threads);
  ASSERT_GT(2 * size_t(N), warps);

  // The forward's sums: another rank's share added (here: the same again, tp - 1 times).
  Vec want_sums(2 * size_t(N), NAN), got_sums(want_sums.size(), NAN);
  if constexpr (kBf16)
    be->qk_full_norm_sums(want_sums.data(), as_bf16(qkv.b), nullptr, nullptr, nullptr, nullptr, N,
                          C, NH, NKV);
  else
    be->qk_full_norm_sums(want_sums.data(), qkv.f.data(), nullptr, nullptr, nullptr, nullptr, N, C,
                          NH, NKV);
  using E = std::conditional_t<kBf16, uint16_t, float>;
  launch(blocks, 1, 0, [&](simt::Thread& x) {
    qb::sums(x, got_sums.data(), view<kBf16>(qkv), static_cast<const E*>(nullptr),
             static_cast<const E*>(nullptr), static_cast<const E*>(nullptr), nullptr, h,
             2 * size_t(N), warps);
  });
  EXPECT_LE(rel_error(got_sums, want_sums), 1e-6) << "sums";
  for (float& s : want_sums) s *= float(tp);

  // Forward.
  Vec want_rstd(2 * size_t(N), NAN), got_rstd(want_rstd.size(), NAN), want_out, got_out;
  if constexpr (kBf16) {
    Bits w(total, 0xFFFFu), g(total, 0xFFFFu);
    be->qk_full_norm_forward(as_bf16(w), want_rstd.data(), as_bf16(qkv.b), want_sums.data(),
                             as_bf16(wq.b), as_bf16(wk.b), N, C, NH, NKV, Dq, Dk);
    launch(blocks, 1, 0, [&](simt::Thread& x) {
      qb::forward(x, g.data(), got_rstd.data(), qkv.b.data(), want_sums.data(), wq.b.data(),
                  wk.b.data(), h, Dq, Dk, kNormEps, total, threads);
    });
    want_out = widened(w);
    got_out = widened(g);
  } else {
    want_out.assign(total, NAN);
    got_out.assign(total, NAN);
    be->qk_full_norm_forward(want_out.data(), want_rstd.data(), qkv.f.data(), want_sums.data(),
                             wq.f.data(), wk.f.data(), N, C, NH, NKV, Dq, Dk);
    launch(blocks, 1, 0, [&](simt::Thread& x) {
      qb::forward(x, got_out.data(), got_rstd.data(), qkv.f.data(), want_sums.data(), wq.f.data(),
                  wk.f.data(), h, Dq, Dk, kNormEps, total, threads);
    });
  }
  EXPECT_LE(rel_error(got_out, want_out), tol) << "out";
  EXPECT_EQ(got_rstd, want_rstd) << "rstd";

  // The backward's dots (from the kept rstd), then tp times them as the group's sum.
  Vec want_dots(2 * size_t(N), NAN), got_dots(want_dots.size(), NAN);
  if constexpr (kBf16)
    be->qk_full_norm_sums(want_dots.data(), as_bf16(qkv.b), as_bf16(dout.b), as_bf16(wq.b),
                          as_bf16(wk.b), want_rstd.data(), N, C, NH, NKV);
  else
    be->qk_full_norm_sums(want_dots.data(), qkv.f.data(), dout.f.data(), wq.f.data(), wk.f.data(),
                          want_rstd.data(), N, C, NH, NKV);
  launch(blocks, 1, 0, [&](simt::Thread& x) {
    qb::sums(x, got_dots.data(), view<kBf16>(qkv), view<kBf16>(dout), view<kBf16>(wq),
             view<kBf16>(wk), want_rstd.data(), h, 2 * size_t(N), warps);
  });
  EXPECT_LE(rel_error(got_dots, want_dots), 1e-6) << "dots";
  for (float& s : want_dots) s *= float(tp);

  // The input gradient: overwritten, accumulated onto old values, and in place over dout.
  for (int way = 0; way < 3; ++way) {
    SCOPED_TRACE(way == 0 ? "overwrite" : way == 1 ? "accumulate" : "in place");
    const bool accumulate = way == 1;
    const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
    Vec dwq(size_t(C), 0.0f), dwk(size_t(K), 0.0f), want_dx, got_dx;
    if constexpr (kBf16) {
      Bits w = way == 1 ? old.b : way == 2 ? dout.b : Bits(total, 0xFFFFu);
      Bits g = w;
      be->qk_full_norm_backward(as_bf16(w), dwq.data(), dwk.data(),
                                way == 2 ? as_bf16(w) : as_bf16(dout.b), as_bf16(qkv.b),
                                as_bf16(wq.b), as_bf16(wk.b), want_rstd.data(), want_dots.data(), N,
                                C, NH, NKV, Dq, Dk, mode);
      const uint16_t* d = way == 2 ? g.data() : dout.b.data();
      launch(blocks, 1, 0, [&](simt::Thread& x) {
        qb::backward_input(x, g.data(), d, qkv.b.data(), wq.b.data(), wk.b.data(), want_rstd.data(),
                           want_dots.data(), h, Dq, Dk, accumulate, total, threads);
      });
      want_dx = widened(w);
      got_dx = widened(g);
    } else {
      want_dx = way == 1 ? old.f : way == 2 ? dout.f : Vec(total, NAN);
      got_dx = want_dx;
      be->qk_full_norm_backward(want_dx.data(), dwq.data(), dwk.data(),
                                way == 2 ? want_dx.data() : dout.f.data(), qkv.f.data(),
                                wq.f.data(), wk.f.data(), want_rstd.data(), want_dots.data(), N, C,
                                NH, NKV, Dq, Dk, mode);
      const float* d = way == 2 ? got_dx.data() : dout.f.data();
      launch(blocks, 1, 0, [&](simt::Thread& x) {
        qb::backward_input(x, got_dx.data(), d, qkv.f.data(), wq.f.data(), wk.f.data(),
                           want_rstd.data(), want_dots.data(), h, Dq, Dk, accumulate, total,
                           threads);
      });
    }
    EXPECT_LE(rel_error(got_dx, want_dx), tol) << "dqkv";
    if (way != 0) continue;

    // The weight gradients (the CPU's dwq, dwk above, from zero), in 3 row slices.
    const int slices = 3, rows = (N + slices - 1) / slices;
    Vec pq(size_t(slices) * C, NAN), pk(size_t(slices) * K, NAN);
    const int bx = (std::max(C, K) + qb::kColumns - 1) / qb::kColumns;
    launch(bx, 2 * slices, qb::partials_smem(), [&](simt::Thread& x) {
      qb::weight_partials(x, pq.data(), pk.data(), view<kBf16>(dout), view<kBf16>(qkv),
                          want_rstd.data(), h, N, slices, rows, slices);
    });
    Vec got_dwq(size_t(C), 0.0f), got_dwk(size_t(K), 0.0f);
    for (int s = 0; s < slices; ++s) {
      for (int c = 0; c < C; ++c) got_dwq[size_t(c)] += pq[size_t(s) * C + c];
      for (int c = 0; c < K; ++c) got_dwk[size_t(c)] += pk[size_t(s) * K + c];
    }
    EXPECT_LE(rel_error(got_dwq, dwq), 1e-5) << "dwq";
    EXPECT_LE(rel_error(got_dwk, dwk), 1e-5) << "dwk";
  }
}

TEST(QkFullNormEmulated, GroupedHeadsHeadDim40) { check<false>(13, 4, 2, 40, 1); }
TEST(QkFullNormEmulated, GroupedHeadsHeadDim40Bf16) { check<true>(13, 4, 2, 40, 1); }
TEST(QkFullNormEmulated, TensorParallelShareOfTwo) { check<false>(19, 2, 2, 24, 2); }
TEST(QkFullNormEmulated, OneKvHeadHeadDim64Bf16TpFour) { check<true>(11, 3, 1, 64, 4); }

}  // namespace
}  // namespace triad
