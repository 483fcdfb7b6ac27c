// The CUDA backend's per-head RMSNorm of q and k (src/kernels/cuda/qk_norm_block.h, as
// cuda_qk_norm.cu launches it), run on the CPU through the SIMT emulator, against the CPU
// backend's qk_norm ops: out and rstd, the input gradient (overwritten, accumulated, and in place
// over dout) and the weight gradients (the per-slice partials added in slice order, as
// column_sum_finish does), within 1e-5 (fp32) or 1e-2 (bf16 outputs) of the largest magnitude.
// Head dims that are not a multiple of 32, grouped and multi-head k/v, fewer warps than head-rows
// (the stride loop). Needs no GPU; test_cuda_bf16 runs the kernels on one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "../../src/kernels/cuda/qk_norm_block.h"
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
using Data = testing::BothViews;
using testing::both_views;
double rel_error(const Vec& got, const Vec& want) { return testing::max_rel_error(got, want); }

template <class Body>
void launch(int grid_x, int grid_y, size_t smem, Body body) {
  simt::launch(grid_x, grid_y, qk_norm_block::kThreads, smem, simt::CopyTiming::at_issue, body);
}

void check(int N, int NH, int NKV, int hd, bool bf16) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " NH=" << NH << " NKV=" << NKV << " hd=" << hd
                                    << (bf16 ? " bf16" : " fp32"));
  const int C = NH * hd;
  const qk_norm_block::Heads h{NH, NKV, hd, size_t(C + 2 * NKV * hd)};
  const size_t W = h.W, total = size_t(N) * W, head_rows = size_t(N) * h.total();
  const double tol = bf16 ? 1e-2 : 1e-5;
  const Data qkv = both_views(total, 1), dout = both_views(total, 2),
             wq = both_views(size_t(hd), 3, 0.5f, 1.5f), wk = both_views(size_t(hd), 4, 0.5f, 1.5f),
             old = both_views(total, 5);
  auto be = make_cpu_backend();
  const int blocks = 2;  // 16 warps for more head-rows: the stride loop
  const size_t warps = size_t(blocks) * qk_norm_block::kWarpsPerBlock;
  ASSERT_GT(head_rows, warps);

  // Forward.
  Vec want_rstd(size_t(N) * h.normed(), NAN), got_rstd(want_rstd.size(), NAN);
  Vec want_out, got_out;
  if (bf16) {
    Bits w(total, 0xFFFFu), g(total, 0xFFFFu);
    be->qk_norm_forward(as_bf16(w), want_rstd.data(), as_bf16(qkv.b), as_bf16(wq.b), as_bf16(wk.b),
                        N, C, NH, NKV);
    launch(blocks, 1, 0, [&](simt::Thread& x) {
      qk_norm_block::forward(x, g.data(), got_rstd.data(), qkv.b.data(), wq.b.data(), wk.b.data(),
                             h, head_rows, kNormEps, warps);
    });
    want_out = widened(w);
    got_out = widened(g);
  } else {
    want_out.assign(total, NAN);
    got_out.assign(total, NAN);
    be->qk_norm_forward(want_out.data(), want_rstd.data(), qkv.f.data(), wq.f.data(), wk.f.data(),
                        N, C, NH, NKV);
    launch(blocks, 1, 0, [&](simt::Thread& x) {
      qk_norm_block::forward(x, got_out.data(), got_rstd.data(), qkv.f.data(), wq.f.data(),
                             wk.f.data(), h, head_rows, kNormEps, warps);
    });
  }
  EXPECT_LE(rel_error(got_out, want_out), tol) << "out";
  EXPECT_LE(rel_error(got_rstd, want_rstd), 1e-5) << "rstd";

  // The input gradient: overwritten, accumulated onto old values, and in place over dout.
  for (int way = 0; way < 3; ++way) {
    SCOPED_TRACE(way == 0 ? "overwrite" : way == 1 ? "accumulate" : "in place");
    const bool accumulate = way == 1;
    const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
    Vec dwq(size_t(hd), 0.0f), dwk(size_t(hd), 0.0f);
    Vec want_dx, got_dx;
    if (bf16) {
      Bits w = way == 1 ? old.b : way == 2 ? dout.b : Bits(total, 0xFFFFu);
      Bits g = w;
      be->qk_norm_backward(as_bf16(w), dwq.data(), dwk.data(),
                           way == 2 ? as_bf16(w) : as_bf16(dout.b), as_bf16(qkv.b), as_bf16(wq.b),
                           as_bf16(wk.b), want_rstd.data(), N, C, NH, NKV, mode);
      const uint16_t* d = way == 2 ? g.data() : dout.b.data();
      launch(blocks, 1, 0, [&](simt::Thread& x) {
        qk_norm_block::backward_input(x, g.data(), d, qkv.b.data(), wq.b.data(), wk.b.data(),
                                      want_rstd.data(), h, head_rows, accumulate, warps);
      });
      want_dx = widened(w);
      got_dx = widened(g);
    } else {
      want_dx = way == 1 ? old.f : way == 2 ? dout.f : Vec(total, NAN);
      got_dx = want_dx;
      be->qk_norm_backward(want_dx.data(), dwq.data(), dwk.data(),
                           way == 2 ? want_dx.data() : dout.f.data(), qkv.f.data(), wq.f.data(),
                           wk.f.data(), want_rstd.data(), N, C, NH, NKV, mode);
      const float* d = way == 2 ? got_dx.data() : dout.f.data();
      launch(blocks, 1, 0, [&](simt::Thread& x) {
        qk_norm_block::backward_input(x, got_dx.data(), d, qkv.f.data(), wq.f.data(), wk.f.data(),
                                      want_rstd.data(), h, head_rows, accumulate, warps);
      });
    }
    EXPECT_LE(rel_error(got_dx, want_dx), tol) << "dqkv";
    if (way != 0) continue;

    // The weight gradients (the CPU's dwq, dwk above, from zero): 3 slices of the q heads'
    // head-rows and 2 of the k heads', each block 32 columns.
    const int Mq = N * NH, Mk = N * NKV, slices_q = 3, slices_k = 2, slices_max = 3;
    const int rows_q = (Mq + slices_q - 1) / slices_q, rows_k = (Mk + slices_k - 1) / slices_k;
    Vec pq(size_t(slices_q) * hd, NAN), pk(size_t(slices_k) * hd, NAN);
    const int bx = (hd + qk_norm_block::kColumns - 1) / qk_norm_block::kColumns;
    launch(bx, 2 * slices_max, qk_norm_block::partials_smem(), [&](simt::Thread& x) {
      if (bf16)
        qk_norm_block::weight_partials(x, pq.data(), pk.data(), dout.b.data(), qkv.b.data(),
                                       want_rstd.data(), h, N, slices_q, slices_k, rows_q, rows_k,
                                       slices_max);
      else
        qk_norm_block::weight_partials(x, pq.data(), pk.data(), dout.f.data(), qkv.f.data(),
                                       want_rstd.data(), h, N, slices_q, slices_k, rows_q, rows_k,
                                       slices_max);
    });
    Vec got_dwq(size_t(hd), 0.0f), got_dwk(size_t(hd), 0.0f);
    for (int c = 0; c < hd; ++c) {
      for (int s = 0; s < slices_q; ++s) got_dwq[size_t(c)] += pq[size_t(s) * hd + c];
      for (int s = 0; s < slices_k; ++s) got_dwk[size_t(c)] += pk[size_t(s) * hd + c];
    }
    EXPECT_LE(rel_error(got_dwq, dwq), 1e-5) << "dwq";
    EXPECT_LE(rel_error(got_dwk, dwk), 1e-5) << "dwk";
  }
}

TEST(QkNormEmulated, GroupedHeadsHeadDim40) { check(13, 4, 2, 40, false); }
TEST(QkNormEmulated, GroupedHeadsHeadDim40Bf16) { check(13, 4, 2, 40, true); }
TEST(QkNormEmulated, MultiHeadHeadDim128) { check(9, 2, 2, 128, false); }
TEST(QkNormEmulated, OneKvHeadHeadDim64Bf16) { check(11, 3, 1, 64, true); }

}  // namespace
}  // namespace triad
