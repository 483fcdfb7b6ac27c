// The hand-written kernels of the CUDA backend's fp32 attention (src/kernels/cuda/
// attention_fp32_block.h, as cuda_attention.cu launches them around its cuBLAS products), run on
// the CPU through the SIMT emulator, against references written here: the permutations between
// [B,T,3C] rows and per-head matrices (exact), the causal softmax with its log-sum-exp and its
// backward against double (1e-6 of the largest magnitude; exact zeros outside each row's keys),
// with and without a document mask, rows longer than a block, and under an attention dropout
// mask (the copy for the products with V dropped, dP' times the mask before the backward; the
// factors from dropout_mask.h's definition), and with attention sinks (in the denominators and
// lse; the backward's rows of their gradient). Needs no GPU; test_cuda_backend runs
// the whole attention on one against the CPU backend.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../../src/kernels/cuda/attention_fp32_block.h"
#include "../support/attention_reference.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"
#include "../support/strided_launch.h"

namespace triad {
namespace {

using attention_fp32_block::HeadLayout;
using Vec = std::vector<float>;
using testing::kStride;
using testing::launch_strided;
constexpr int kThreads = testing::kStridedThreads;

TEST(AttentionFp32Emulated, PermutationsRoundTrip) {
  const int B = 2, T = 5, NH = 3, hd = 4, C = NH * hd;
  const size_t total = size_t(B) * NH * T * hd;
  const HeadLayout L{NH, T, hd};
  const Vec qkv = testing::random_vec(size_t(B) * T * 3 * C, 1);
  Vec q(total, NAN), k(total, NAN), v(total, NAN);
  launch_strided([&](simt::Thread& x) {
    attention_fp32_block::split_qkv(x, q.data(), k.data(), v.data(), qkv.data(), L, C, total,
                                    kThreads, kStride);
  });
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t)
        for (int d = 0; d < hd; ++d) {
          const size_t head = ((size_t(b) * NH + h) * T + t) * hd + d;
          const size_t row = (size_t(b) * T + t) * 3 * C + size_t(h) * hd + d;
          ASSERT_EQ(q[head], qkv[row]);
          ASSERT_EQ(k[head], qkv[row + C]);
          ASSERT_EQ(v[head], qkv[row + 2 * size_t(C)]);
        }
  // from_heads(to_heads(rows)) gives the rows back; accumulate_dqkv adds q|k|v onto qkv.
  const Vec rows = testing::random_vec(size_t(B) * T * C, 2);
  Vec heads(total, NAN), back(rows.size(), NAN);
  launch_strided([&](simt::Thread& x) {
    attention_fp32_block::to_heads(x, heads.data(), rows.data(), L, C, total, kThreads, kStride);
  });
  launch_strided([&](simt::Thread& x) {
    attention_fp32_block::from_heads(x, back.data(), heads.data(), L, C, total, kThreads, kStride);
  });
  EXPECT_EQ(back, rows);
  Vec sum(qkv.size(), 0.0f);
  launch_strided([&](simt::Thread& x) {
    attention_fp32_block::accumulate_dqkv(x, sum.data(), q.data(), k.data(), v.data(), L, C, total,
                                          kThreads, kStride);
  });
  EXPECT_EQ(sum, qkv);
}

// att [B·NH·T, T] of random scores through the softmax, then dP through its backward; cap > 0:
// the scores soft-capped (model.attn_softcap), the backward reading the uncapped ones. drop > 0:
// an attention dropout of that probability (the call's head 0 is global head 2, layer 5).
// sinks: attention sinks, a logit per head in every row's denominator (in lse too), and the
// backward's per-row terms of their gradient, −p_sink·Σ_j P dP.
void check_softmax(int B, int NH, int T, bool documents, float cap = 0.0f, float drop = 0.0f,
                   bool sinks = false) {
  SCOPED_TRACE(::testing::Message()
               << "B=" << B << " NH=" << NH << " T=" << T << (documents ? " documents" : "")
               << " cap " << cap << " drop " << drop << (sinks ? " sinks" : ""));
  const std::vector<int32_t> keys = attention_reference::dropout_row_keys(B, T, 17, 40);
  AttentionDropMask mask;
  if (drop > 0.0f)
    mask = AttentionDropMask{keys.data(), dropout_threshold(drop), 5, 2, dropout_scale(drop)};
  // The factor of row r's key j, from the definition (dropout_mask.h's header).
  auto factor = [&](size_t r, int j) -> double {
    if (drop <= 0.0f) return 1.0;
    const size_t b = r / (size_t(NH) * T), h = (r / T) % NH, i = r % T;
    const uint64_t row_key = dropout_key_of(keys.data(), b * T + i);
    const uint64_t a = dropout_mix(row_key ^ (uint64_t(0x80000000u | 5u) << 32 | (2 + h)));
    return uint32_t(dropout_mix(a ^ uint64_t(j)) >> 40) >= dropout_threshold(drop)
               ? double(dropout_scale(drop))
               : 0.0;
  };
  std::vector<int32_t> key_begin;
  if (documents)  // documents starting at 0, T/3 and 2T/3 of every sequence
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        key_begin.push_back(t < T / 3 ? 0 : t < 2 * T / 3 ? T / 3 : 2 * T / 3);
  const int32_t* kb = documents ? key_begin.data() : nullptr;
  const size_t R = size_t(B) * NH * T;
  const Vec scores = testing::random_vec(R * T, 3, -6.0f, 6.0f), dp = testing::random_vec(R * T, 4);
  // Sinks from below the scores to above them (head h's 3h − 2).
  Vec z(static_cast<size_t>(NH), 0.0f);
  for (int h = 0; h < NH; ++h) z[size_t(h)] = 3.0f * float(h) - 2.0f;
  const float* zp = sinks ? z.data() : nullptr;
  Vec att = scores, lse(R, NAN), sink_rows(R, NAN);
  simt::launch(
      int(R), 1, attention_fp32_block::kSoftmaxThreads, attention_fp32_block::softmax_smem(),
      simt::CopyTiming::at_issue, [&](simt::Thread& x) {
        attention_fp32_block::causal_softmax(x, att.data(), lse.data(), T, NH, kb, cap, zp);
      });
  Vec ds = dp;
  simt::launch(int(R), 1, attention_fp32_block::kSoftmaxThreads,
               attention_fp32_block::softmax_smem(), simt::CopyTiming::at_issue,
               [&](simt::Thread& x) {
                 attention_fp32_block::causal_softmax_backward(x, ds.data(), att.data(), T, NH, kb,
                                                               scores.data(), cap, mask,
                                                               sinks ? sink_rows.data() : nullptr);
               });
  Vec masked(R * T, NAN);
  launch_strided([&](simt::Thread& x) {
    attention_fp32_block::causal_mask_copy(x, masked.data(), att.data(), T, NH, kb, R * T, kThreads,
                                           kStride, mask);
  });
  double p_err = 0, lse_err = 0, ds_err = 0, sink_err = 0;
  size_t kept = 0, entries = 0;
  // The capped score of element e, and the cap's derivative there.
  auto s = [&](size_t e) {
    return cap > 0.0f ? cap * std::tanh(double(scores[e]) / cap) : double(scores[e]);
  };
  auto slope = [&](size_t e) {
    const double t = cap > 0.0f ? std::tanh(double(scores[e]) / cap) : 0.0;
    return 1.0 - t * t;
  };
  for (size_t r = 0; r < R; ++r) {
    const int i = int(r % T), b = int(r / (size_t(NH) * T));
    const int lo = documents ? key_begin[size_t(b) * T + i] : 0;
    const double zr = sinks ? double(z[r / T % size_t(NH)]) : -INFINITY;
    double mx = zr, sum = 0, dot = 0;
    for (int j = lo; j <= i; ++j) mx = std::max(mx, s(r * T + j));
    for (int j = lo; j <= i; ++j) sum += std::exp(s(r * T + j) - mx);
    if (sinks) sum += std::exp(zr - mx);
    for (int j = lo; j <= i; ++j)
      dot += std::exp(s(r * T + j) - mx) / sum * dp[r * T + j] * factor(r, j);
    lse_err = std::max(lse_err, std::abs(lse[r] - (mx + std::log(sum))));
    if (sinks)  // the sink's share of the row times Σ P dP, negated
      sink_err = std::max(sink_err, std::abs(sink_rows[r] + std::exp(zr - mx) / sum * dot));
    for (int j = 0; j < T; ++j) {
      const size_t e = r * T + j;
      if (j < lo || j > i) {
        ASSERT_EQ(att[e], 0.0f) << "row " << r << " key " << j;
        ASSERT_EQ(ds[e], 0.0f) << "row " << r << " key " << j;
        ASSERT_EQ(masked[e], 0.0f);
        continue;
      }
      const double p = std::exp(s(e) - mx) / sum, f = factor(r, j);
      p_err = std::max(p_err, std::abs(att[e] - p));
      ds_err = std::max(ds_err, std::abs(ds[e] - p * (dp[e] * f - dot) * slope(e)));
      ASSERT_EQ(masked[e], att[e] * float(f));
      kept += f != 0.0;
      ++entries;
    }
  }
  EXPECT_LE(p_err, 1e-6);
  EXPECT_LE(lse_err, 1e-5);
  EXPECT_LE(ds_err, 1e-6);
  EXPECT_LE(sink_err, 1e-6);
  if (drop > 0.0f) {  // the mask drops about `drop` of the entries
    EXPECT_NEAR(1.0 - double(kept) / double(entries), drop, 0.05);
  }
}

TEST(AttentionFp32Emulated, CausalSoftmax) { check_softmax(2, 2, 20, false); }
TEST(AttentionFp32Emulated, CausalSoftmaxRowsLongerThanABlockWithDocuments) {
  check_softmax(1, 1, 300, true);
}
TEST(AttentionFp32Emulated, AttentionDropout) {
  check_softmax(2, 3, 40, false, 0.0f, 0.3f);
  check_softmax(1, 2, 300, true, 2.0f, 0.1f);
}
// Attention sinks (model.attn_sinks), alone and with documents, a cap and dropout.
TEST(AttentionFp32Emulated, Sinks) {
  check_softmax(2, 3, 20, false, 0.0f, 0.0f, true);
  check_softmax(1, 2, 300, true, 2.0f, 0.1f, true);
}
TEST(AttentionFp32Emulated, SoftCappedSoftmax) {
  check_softmax(2, 2, 20, false, 2.0f);
  check_softmax(1, 1, 300, true, 4.0f);
}

}  // namespace
}  // namespace triad
