// The CPU backend's mixed-precision ops (the reference for the CUDA bf16 kernels) and the bf16
// model built on them:
//  - bf16 rounding against an independent definition (the nearest of the two neighbouring
//    bf16 values, ties to the even one, computed in double);
//  - the bf16 attention's log-sum-exp against a double-precision computation, and its output
//    and gradient against the fp32 attention on the same (bf16-valued) inputs;
//  - each op follows its contract: the fp32 op on the widened inputs, outputs rounded once
//    (an accumulated bf16 output: round(old + contribution));
//  - a bf16 Gpt's loss and fp32 parameter gradients against the fp32 Gpt from the same weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../support/attention_reference.h"
#include "../support/bf16_data.h"
#include "../support/optimizer_step.h"
#include "../support/random_data.h"
#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/optim/optimizer.h"
#include "triad/train/config.h"

namespace triad {
namespace {

using triad::testing::random_vec;
using Vec = std::vector<float>;
using triad::testing::Bits;
using triad::testing::optimizer_step;
using triad::testing::to_bits;
using triad::testing::to_floats;

Vec rounded(const Vec& v) { return to_floats(to_bits(v)); }

// ||a − b|| / ||b||
double rel_err(const Vec& a, const Vec& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return std::sqrt(d / std::max(n, 1e-300));
}

void expect_bits_equal(const Bits& a, const Bits& b, const char* what) {
  ASSERT_EQ(a.size(), b.size());
  size_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) bad += a[i].bits != b[i].bits;
  EXPECT_EQ(bad, 0u) << what;
}

TEST(Bf16, RoundsToNearestEvenLikeAnIndependentReference) {
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           1.0f,
                           -1.0f,
                           3.14159265f,
                           1e-30f,
                           -7.7e20f,
                           65504.0f,
                           std::numeric_limits<float>::denorm_min(),
                           std::numeric_limits<float>::max()};
  for (float x : random_vec(20000, 11, -1e4f, 1e4f)) xs.push_back(x);
  // Exact ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 (rounds to 1, the even one);
  // 1 + 3·2^-8 halfway between 1 + 2^-7 and 1 + 2^-6 (rounds up, to the even one).
  xs.push_back(1.0f + 1.0f / 256);
  xs.push_back(1.0f + 3.0f / 256);
  for (float x : xs) {
    if (std::isinf(x) || std::abs(x) >= 3.389e38f) continue;  // overflow checked below
    // Neighbours: truncations of x to 16 bits and the next value away from zero.
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const uint32_t lo_bits = u & 0xffff0000u, hi_bits = lo_bits + 0x10000u;
    float lo, hi;
    std::memcpy(&lo, &lo_bits, 4);
    std::memcpy(&hi, &hi_bits, 4);
    const double dl = std::abs(double(x) - lo), dh = std::abs(double(hi) - x);
    const float want = dl < dh ? lo : dh < dl ? hi : ((lo_bits >> 16) & 1u) ? hi : lo;
    EXPECT_EQ(round_bf16(x), want) << x;
  }
  EXPECT_EQ(round_bf16(1.0f + 1.0f / 256), 1.0f);
  EXPECT_EQ(round_bf16(1.0f + 3.0f / 256), 1.0f + 1.0f / 64);
  EXPECT_TRUE(std::isinf(round_bf16(std::numeric_limits<float>::max())));
  EXPECT_TRUE(std::isinf(round_bf16(-std::numeric_limits<float>::infinity())));
  EXPECT_TRUE(std::isnan(round_bf16(std::numeric_limits<float>::quiet_NaN())));
  // A NaN whose payload sits only in the low 16 bits must not become infinity.
  uint32_t nan_bits = 0x7f800001u;
  float low_nan;
  std::memcpy(&low_nan, &nan_bits, 4);
  EXPECT_TRUE(std::isnan(round_bf16(low_nan)));
}

class CpuBf16 : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();
  void check_model_follows_fp32(const GptShape& shape);
};

// The optimizer's bf16 copy: the same pass writes exactly convert(updated weights), and the
// update itself is unchanged by writing it.
TEST_F(CpuBf16, OptimizerUpdateWritesTheRoundedCopy) {
  const size_t n = 70001;  // above the OpenMP threshold, odd
  for (const bool adam : {true, false}) {
    SCOPED_TRACE(adam ? "adamw" : "sgd");
    Vec p1 = random_vec(n, 21), m1 = random_vec(n, 22, -1e-2f, 1e-2f);
    Vec v1 = random_vec(n, 23, 0.0f, 1e-3f);
    Vec p2 = p1, m2 = m1, v2 = v1;
    std::vector<bf16_t> copy(n, bf16_t{0xffff}), want(n);
    for (int step = 1; step <= 2; ++step) {
      const Vec g = random_vec(n, 24 + uint32_t(step), -0.1f, 0.1f);
      optimizer_step(*be, adam, p1.data(), g.data(), m1.data(), v1.data(), n, step);
      optimizer_step(*be, adam, p2.data(), g.data(), m2.data(), v2.data(), n, step, copy.data());
    }
    EXPECT_EQ(p2, p1);  // exact (no NaN here)
    EXPECT_EQ(m2, m1);
    EXPECT_EQ(v2, v1);
    be->convert(want.data(), p1.data(), n);
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) differ += copy[i].bits != want[i].bits;
    EXPECT_EQ(differ, 0u);
  }
}

// NKV key/value heads: 4 (GPT-2's attention), 2 (grouped-query), 1 (multi-query); with a
// document mask (backend.h's key_begin) or without; every row or a range of them (QueryRows).
void check_attention_bf16(Backend& be_ref, int NKV, bool documents = false, QueryRows rows = {},
                          float cap = 0.0f) {
  Backend* be = &be_ref;
  const int B = 2, T = 37, C = 32, NH = 4, hd = C / NH;
  const std::vector<int32_t> key_begin =
      attention_reference::key_begin_of_starts(B, T, {{0, 5, 6, 30}, {0, 36}});
  const int32_t* kb = documents ? key_begin.data() : nullptr;
  const size_t W = size_t(qkv_width(C, NH, NKV));
  const Vec qkv = rounded(random_vec(size_t(B) * T * W, 3, -2.0f, 2.0f));
  const Bits qkv_h = to_bits(qkv);
  const int n = rows.rows(T), L = rows.keys(T), q0 = L - n;
  Bits out(size_t(B) * n * C);
  Vec lse(size_t(B) * NH * n);
  be->attention_forward(out.data(), lse.data(), qkv_h.data(), B, T, C, NH, NKV, kb, rows, 0.0f,
                        cap);
  // log-sum-exp in double (of the capped scores under a cap).
  double worst = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = q0; i < L; ++i) {
        double sum = 0;
        for (int j = kb ? kb[size_t(b) * T + i] : 0; j <= i; ++j) {
          double s = 0;
          for (int d = 0; d < hd; ++d)
            s += double(qkv[(size_t(b) * T + i) * W + h * hd + d]) *
                 qkv[(size_t(b) * T + j) * W + C + (h % NKV) * hd + d];
          s /= std::sqrt(double(hd));
          sum += std::exp(cap > 0.0f ? cap * std::tanh(s / cap) : s);
        }
        worst = std::max(worst, std::abs(std::log(sum) - lse[(size_t(b) * NH + h) * n + (i - q0)]));
      }
  EXPECT_LT(worst, 1e-5);
  // Output and gradient: the fp32 attention on the same values, rounded once.
  Vec out32(out.size()), att(size_t(B) * NH * n * L), scratch(att.size());
  be->attention_forward(out32.data(), att.data(), qkv.data(), B, T, C, NH, NKV, kb, rows, 0.0f,
                        cap);
  expect_bits_equal(out, to_bits(out32), "attention output = round(fp32 output)");
  const Vec dout = rounded(random_vec(out.size(), 4));
  const Vec dqkv0 = rounded(random_vec(qkv.size(), 5));  // accumulates onto these
  Bits dqkv = to_bits(dqkv0);
  be->attention_backward(dqkv.data(), to_bits(dout).data(), qkv_h.data(), out.data(), lse.data(), B,
                         T, C, NH, NKV, GradMode::accumulate, kb, rows, 0.0f, cap);
  Vec dqkv32 = dqkv0;
  be->attention_backward(dqkv32.data(), scratch.data(), dout.data(), qkv.data(), att.data(), B, T,
                         C, NH, NKV, GradMode::accumulate, kb, rows, 0.0f, cap);
  expect_bits_equal(dqkv, to_bits(dqkv32), "dqkv = round(dqkv0 + fp32 gradient)");
}

TEST_F(CpuBf16, AttentionLogSumExpAndOutputs) { check_attention_bf16(*be, 4); }
TEST_F(CpuBf16, AttentionGroupedQuery) { check_attention_bf16(*be, 2); }
TEST_F(CpuBf16, AttentionSoftCapDocumentsQueryRows) {
  check_attention_bf16(*be, 2, true, QueryRows{10, 20}, 1.0f);
}
TEST_F(CpuBf16, AttentionMultiQuery) { check_attention_bf16(*be, 1); }
TEST_F(CpuBf16, AttentionDocumentMask) { check_attention_bf16(*be, 2, true); }
// Rows 10 .. 29 of each sequence (context parallelism's query ranges), as the fp32 range.
TEST_F(CpuBf16, AttentionQueryRows) { check_attention_bf16(*be, 2, true, QueryRows{10, 20}); }

TEST_F(CpuBf16, OpsRoundTheFp32ResultOnce) {
  const int N = 24, C = 16, OC = 40;
  const Vec x = rounded(random_vec(size_t(N) * C, 1)), w = rounded(random_vec(size_t(OC) * C, 2));
  const Vec b = rounded(random_vec(size_t(OC), 3)), dy = rounded(random_vec(size_t(N) * OC, 4));
  // matmul forward and backward (dinp accumulated in bf16, dW and db in fp32).
  Bits y(size_t(N) * OC);
  be->matmul_forward(y.data(), to_bits(x).data(), to_bits(w).data(), to_bits(b).data(), N, C, OC);
  Vec y32(y.size());
  be->matmul_forward(y32.data(), x.data(), w.data(), b.data(), N, C, OC);
  expect_bits_equal(y, to_bits(y32), "matmul forward");
  const Vec dx0 = rounded(random_vec(x.size(), 5)), dw0 = random_vec(w.size(), 6);
  Bits dx = to_bits(dx0);
  Vec dw = dw0, db(size_t(OC), 0.5f), dx32 = dx0, dw32 = dw0, db32(size_t(OC), 0.5f);
  be->matmul_backward(dx.data(), dw.data(), db.data(), to_bits(dy).data(), to_bits(x).data(),
                      to_bits(w).data(), N, C, OC);
  be->matmul_backward(dx32.data(), dw32.data(), db32.data(), dy.data(), x.data(), w.data(), N, C,
                      OC);
  expect_bits_equal(dx, to_bits(dx32), "matmul dinp");
  EXPECT_EQ(dw, dw32);
  EXPECT_EQ(db, db32);
  // The fused first FFN layer: pre and gelu(pre).
  Bits pre(y.size()), act(y.size());
  be->matmul_gelu_forward(pre.data(), act.data(), to_bits(x).data(), to_bits(w).data(),
                          to_bits(b).data(), N, C, OC);
  expect_bits_equal(pre, y, "matmul_gelu_forward pre");
  Vec g32(y.size());
  be->gelu_forward(g32.data(), to_floats(y).data(), g32.size());
  expect_bits_equal(act, to_bits(g32), "matmul_gelu_forward out");
  // LayerNorm.
  const Vec lw = rounded(random_vec(size_t(C), 7, 0.5f, 1.5f)), lb = rounded(random_vec(C, 8));
  Bits ln(x.size());
  Vec mean(N), rstd(N), ln32(x.size()), mean32(N), rstd32(N);
  be->layernorm_forward(ln.data(), mean.data(), rstd.data(), to_bits(x).data(), to_bits(lw).data(),
                        to_bits(lb).data(), N, C);
  be->layernorm_forward(ln32.data(), mean32.data(), rstd32.data(), x.data(), lw.data(), lb.data(),
                        N, C);
  expect_bits_equal(ln, to_bits(ln32), "layernorm forward");
  EXPECT_EQ(mean, mean32);
  EXPECT_EQ(rstd, rstd32);
  // Residual add and accumulate round once per call.
  Bits s(x.size());
  be->add(s.data(), to_bits(x).data(), to_bits(dx0).data(), s.size());
  for (size_t i = 0; i < s.size(); ++i) ASSERT_EQ(s[i].bits, to_bf16(x[i] + dx0[i]).bits);
  // Cross-entropy over bf16 logits: losses from the widened logits, gradient rounded.
  const int V = 37, Vp = 48;
  const Vec logits = rounded(random_vec(size_t(N) * Vp, 9, -3.0f, 3.0f));
  std::vector<int32_t> tgt(N);
  for (int i = 0; i < N; ++i) tgt[size_t(i)] = (i * 7) % V;
  Bits lh = to_bits(logits);
  Vec l32 = logits, loss(N), loss32(N), hit(N), hit32(N);
  be->crossentropy_forward_backward(lh.data(), loss.data(), hit.data(), tgt.data(), N, V, Vp,
                                    0.25f);
  be->crossentropy_forward_backward(l32.data(), loss32.data(), hit32.data(), tgt.data(), N, V, Vp,
                                    0.25f);
  EXPECT_EQ(loss, loss32);
  EXPECT_EQ(hit, hit32);
  expect_bits_equal(lh, to_bits(l32), "dlogits");
  // SwiGLU forward, and backward added into a bf16 gradient: each output rounded once.
  {
    const int SN = 5, SH = 24;
    const Vec pre = rounded(random_vec(size_t(SN) * 2 * SH, 11, -4.0f, 4.0f));
    const Vec d = rounded(random_vec(size_t(SN) * SH, 12)),
              g0 = rounded(random_vec(pre.size(), 13));
    Bits o(size_t(SN) * SH), gh = to_bits(g0);
    Vec o32(o.size()), g32 = g0;
    be->swiglu_forward(o.data(), to_bits(pre).data(), SN, SH);
    be->swiglu_forward(o32.data(), pre.data(), SN, SH);
    expect_bits_equal(o, to_bits(o32), "swiglu forward");
    be->swiglu_backward(gh.data(), to_bits(pre).data(), to_bits(d).data(), SN, SH);
    be->swiglu_backward(g32.data(), pre.data(), d.data(), SN, SH);
    expect_bits_equal(gh, to_bits(g32), "swiglu backward");
  }
  // Rotary positions, forward and inverse, in place: each element rounded once.
  const int R = 6, RC = 16, RNH = 2;
  Vec table(size_t(R + 3) * (RC / RNH));
  for (size_t i = 0; i < table.size(); ++i) table[i] = std::cos(0.37f * float(i));
  for (bool inverse : {false, true}) {
    const Vec q = rounded(random_vec(size_t(R) * 3 * RC, 10));
    Bits qh = to_bits(q);
    Vec q32 = q;
    be->rope(qh.data(), table.data(), R, 3, 2, RC, RNH, RNH, inverse);
    be->rope(q32.data(), table.data(), R, 3, 2, RC, RNH, RNH, inverse);
    expect_bits_equal(qh, to_bits(q32), "rope");
    const std::vector<int32_t> at = {8, 0, 1, 0, 5, 2};  // each row's own position
    qh = to_bits(q);
    q32 = q;
    be->rope(qh.data(), table.data(), R, 3, 2, RC, RNH, RNH, inverse, at.data());
    be->rope(q32.data(), table.data(), R, 3, 2, RC, RNH, RNH, inverse, at.data());
    expect_bits_equal(qh, to_bits(q32), "rope at positions");
  }
  // Per-head RMSNorm of q and k (4 query heads over 2 key/value heads): forward, and backward
  // accumulating and in place; the weight gradients in fp32 as the fp32 op's.
  {
    const int QN = 5, QC = 32, QH = 4, QKV = 2, hd = QC / QH, QW = qkv_width(QC, QH, QKV);
    const Vec x = rounded(random_vec(size_t(QN) * QW, 11)), d = rounded(random_vec(x.size(), 12));
    const Vec wq = rounded(random_vec(size_t(hd), 13)), wk = rounded(random_vec(size_t(hd), 14));
    Bits o(x.size());
    Vec o32(x.size()), r(size_t(QN) * (QH + QKV)), r32(r.size());
    be->qk_norm_forward(o.data(), r.data(), to_bits(x).data(), to_bits(wq).data(),
                        to_bits(wk).data(), QN, QC, QH, QKV);
    be->qk_norm_forward(o32.data(), r32.data(), x.data(), wq.data(), wk.data(), QN, QC, QH, QKV);
    expect_bits_equal(o, to_bits(o32), "qk_norm forward");
    EXPECT_EQ(r, r32);
    const Vec old = rounded(random_vec(x.size(), 15));
    Bits g = to_bits(old);
    Vec g32 = old, dq(size_t(hd), 0.5f), dk(size_t(hd), 0.5f), dq32 = dq, dk32 = dk;
    be->qk_norm_backward(g.data(), dq.data(), dk.data(), to_bits(d).data(), to_bits(x).data(),
                         to_bits(wq).data(), to_bits(wk).data(), r.data(), QN, QC, QH, QKV);
    be->qk_norm_backward(g32.data(), dq32.data(), dk32.data(), d.data(), x.data(), wq.data(),
                         wk.data(), r32.data(), QN, QC, QH, QKV);
    expect_bits_equal(g, to_bits(g32), "qk_norm backward");
    EXPECT_EQ(dq, dq32);
    EXPECT_EQ(dk, dk32);
    Bits in_place = to_bits(d);
    Vec fresh(x.size(), 0.0f);
    be->qk_norm_backward(in_place.data(), dq.data(), dk.data(), in_place.data(), to_bits(x).data(),
                         to_bits(wq).data(), to_bits(wk).data(), r.data(), QN, QC, QH, QKV,
                         GradMode::overwrite);
    be->qk_norm_backward(fresh.data(), dq32.data(), dk32.data(), d.data(), x.data(), wq.data(),
                         wk.data(), r32.data(), QN, QC, QH, QKV);
    expect_bits_equal(in_place, to_bits(fresh), "qk_norm backward in place");
  }
}

// GradMode::overwrite: the input gradient is written, whatever the buffer held (NaN here), and
// equals accumulating into zeros; parameter gradients still accumulate.
TEST_F(CpuBf16, OverwriteModeIgnoresTheOldInputGradient) {
  const int B = 2, T = 9, C = 16, NH = 2, N = B * T, OC = 24;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Vec x = rounded(random_vec(size_t(N) * C, 31)), w = rounded(random_vec(size_t(OC) * C, 32));
  const Vec dy = rounded(random_vec(size_t(N) * OC, 33));
  for (bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    Vec dw_a(w.size(), 0.25f), dw_b(w.size(), 0.25f);
    Vec want(x.size(), 0.0f), got(x.size(), nan);
    if (bf16) {
      Bits a = to_bits(want), b = to_bits(got);
      be->matmul_backward(a.data(), dw_a.data(), nullptr, to_bits(dy).data(), to_bits(x).data(),
                          to_bits(w).data(), N, C, OC);
      be->matmul_backward(b.data(), dw_b.data(), nullptr, to_bits(dy).data(), to_bits(x).data(),
                          to_bits(w).data(), N, C, OC, GradMode::overwrite);
      want = to_floats(a), got = to_floats(b);
    } else {
      be->matmul_backward(want.data(), dw_a.data(), nullptr, dy.data(), x.data(), w.data(), N, C,
                          OC);
      be->matmul_backward(got.data(), dw_b.data(), nullptr, dy.data(), x.data(), w.data(), N, C, OC,
                          GradMode::overwrite);
    }
    EXPECT_EQ(got, want) << "matmul dinp";
    EXPECT_EQ(dw_b, dw_a) << "dweight still accumulates";
    // GELU and attention.
    Vec g_want(x.size(), 0.0f), g_got(x.size(), nan);
    const Vec qkv = rounded(random_vec(size_t(N) * 3 * C, 34)),
              dout = rounded(random_vec(x.size(), 35));
    Vec q_want(qkv.size(), 0.0f), q_got(qkv.size(), nan);
    if (bf16) {
      Bits a = to_bits(g_want), b = to_bits(g_got);
      be->gelu_backward(a.data(), to_bits(x).data(), to_bits(dout).data(), x.size());
      be->gelu_backward(b.data(), to_bits(x).data(), to_bits(dout).data(), x.size(),
                        GradMode::overwrite);
      g_want = to_floats(a), g_got = to_floats(b);
      Bits out(x.size()), qa = to_bits(q_want), qb = to_bits(q_got);
      Vec lse(size_t(B) * NH * T);
      be->attention_forward(out.data(), lse.data(), to_bits(qkv).data(), B, T, C, NH, NH);
      be->attention_backward(qa.data(), to_bits(dout).data(), to_bits(qkv).data(), out.data(),
                             lse.data(), B, T, C, NH, NH);
      be->attention_backward(qb.data(), to_bits(dout).data(), to_bits(qkv).data(), out.data(),
                             lse.data(), B, T, C, NH, NH, GradMode::overwrite);
      q_want = to_floats(qa), q_got = to_floats(qb);
    } else {
      be->gelu_backward(g_want.data(), x.data(), dout.data(), x.size());
      be->gelu_backward(g_got.data(), x.data(), dout.data(), x.size(), GradMode::overwrite);
      Vec out(x.size()), att(size_t(B) * NH * T * T), scratch(att.size());
      be->attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH, NH);
      be->attention_backward(q_want.data(), scratch.data(), dout.data(), qkv.data(), att.data(), B,
                             T, C, NH, NH);
      be->attention_backward(q_got.data(), scratch.data(), dout.data(), qkv.data(), att.data(), B,
                             T, C, NH, NH, GradMode::overwrite);
    }
    EXPECT_EQ(g_got, g_want) << "gelu dinp";
    EXPECT_EQ(q_got, q_want) << "attention dqkv";
  }
}

// A bf16 model against the fp32 model with the same master weights: the loss to bf16
// precision, the fp32 parameter gradients to a few bf16 ulps in norm.
TEST_F(CpuBf16, ModelLossAndGradientsFollowFp32) {
  // GPT-2; rope; rope with RMSNorm; no biases; SwiGLU
  for (int variant = 0; variant < 5; ++variant) {
    const char* names[] = {"GPT-2", "rope", "rope + rmsnorm", "no biases", "swiglu"};
    SCOPED_TRACE(names[variant]);
    GptShape shape{2, 4, 64, 32, 200, 256};
    shape.rope = variant == 1 || variant == 2;
    shape.rmsnorm = variant == 2;
    shape.bias = variant != 3;
    shape.swiglu = variant == 4;
    shape.mlp_hidden = variant == 4 ? 176 : 0;
    check_model_follows_fp32(shape);
  }
}

void CpuBf16::check_model_follows_fp32(const GptShape& shape) {
  const int B = 3, N = B * shape.seq_len;
  std::vector<int32_t> in(N), tg(N);
  for (int i = 0; i < N; ++i) {
    in[size_t(i)] = (i * 37 + 11) % shape.vocab_size;
    tg[size_t(i)] = (i * 53 + 5) % shape.vocab_size;
  }
  Gpt f(shape, B, *be, 1, {}, nullptr, Precision::fp32);
  Gpt h(shape, B, *be, 1, {}, nullptr, Precision::bf16);
  f.init(7);
  h.init(7);
  ASSERT_EQ(f.buffer_floats(), h.buffer_floats());
  const ForwardStats sf = f.forward_backward(in.data(), tg.data(), B, 1.0f / float(N));
  const ForwardStats sh = h.forward_backward(in.data(), tg.data(), B, 1.0f / float(N));
  EXPECT_NEAR(sh.loss_sum / N, sf.loss_sum / N, 1e-2 * sf.loss_sum / N);
  EXPECT_NE(sh.loss_sum, sf.loss_sum) << "the bf16 model computed in fp32";
  // Gradients per tensor: relative error in norm.
  for (const auto& s : f.specs()) {
    Vec gf(f.grads() + s.offset, f.grads() + s.offset + s.numel);
    Vec gh(h.grads() + s.offset, h.grads() + s.offset + s.numel);
    EXPECT_LT(rel_err(gh, gf), 3e-2) << s.name;
  }
  // evaluate() and the logits agree as well.
  const ForwardStats ef = f.evaluate(in.data(), tg.data(), B);
  const ForwardStats eh = h.evaluate(in.data(), tg.data(), B);
  EXPECT_NEAR(eh.loss_sum, ef.loss_sum, 1e-2 * ef.loss_sum);
  const float* lf = f.next_token_logits(in.data(), 20);
  Vec row_f(lf, lf + shape.vocab_size);
  const float* lh = h.next_token_logits(in.data(), 20);
  Vec row_h(lh, lh + shape.vocab_size);
  EXPECT_LT(rel_err(row_h, row_f), 2e-2);
}

// Training: a model that learns (a repeating 10-token sequence, loss from ~5.3 to well below
// 1 in 40 AdamW steps) has the same curve in bf16 as in fp32, to bf16 precision.
TEST_F(CpuBf16, TrainingCurveFollowsFp32) {
  GptShape shape{2, 4, 64, 32, 200, 256};
  const int B = 4, N = B * shape.seq_len;
  std::vector<int32_t> in(N), tg(N);
  for (int i = 0; i < N; ++i) {
    in[size_t(i)] = 20 + (i * 3) % 10;
    tg[size_t(i)] = 20 + ((i + 1) * 3) % 10;
  }
  auto curve = [&](Precision p) {
    Gpt m(shape, B, *be, 1, {}, nullptr, p);
    m.init(3);
    Optimizer opt(OptimConfig{}, m.specs(), 0, m.buffer_floats(), *be);
    std::vector<double> losses;
    for (int step = 1; step <= 40; ++step) {
      m.zero_grads();
      losses.push_back(m.forward_backward(in.data(), tg.data(), B, 1.0f / float(N)).loss_sum / N);
      opt.update(m.params(), m.grads(), 3e-3, step);
      m.params_updated();
    }
    return losses;
  };
  const std::vector<double> f = curve(Precision::fp32), h = curve(Precision::bf16);
  EXPECT_GT(f.front(), 5.0);
  EXPECT_LT(f.back(), 1.0) << "the fp32 model learns the sequence";
  for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(h[i], f[i], 2e-2 * f[i] + 2e-2) << "step " << i;
}

// params_updated() is what makes an update visible to the bf16 layers.
TEST_F(CpuBf16, WeightsReachTheLayersOnlyThroughParamsUpdated) {
  GptShape shape{1, 2, 16, 8, 50, 128};
  std::vector<int32_t> in(8, 3), tg(8, 4);
  Gpt h(shape, 1, *be, 1, {}, nullptr, Precision::bf16);
  h.init(1);
  const double before = h.evaluate(in.data(), tg.data(), 1).loss_sum;
  be->scale(h.params(), 3.0f, h.num_floats());
  EXPECT_EQ(h.evaluate(in.data(), tg.data(), 1).loss_sum, before) << "stale copy expected";
  h.params_updated();
  EXPECT_NE(h.evaluate(in.data(), tg.data(), 1).loss_sum, before);
}

}  // namespace
}  // namespace triad
