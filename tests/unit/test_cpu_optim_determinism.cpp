// CPU backend: optimizer updates against PyTorch's formulas written out as scalar loops,
// the sum of squares, and reproducibility (bit-identical results run to run, and for the
// ops that do not go through BLAS, for any number of OpenMP threads).
#include <cblas.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "../support/random_data.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using Vec = std::vector<float>;

using triad::testing::random_vec;

class CpuOptim : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();
};

// torch.optim.AdamW (single tensor, not amsgrad, not maximize), step t = 1, 2, ...:
//   param.mul_(1 − lr·wd)
//   exp_avg.lerp_(grad, 1 − β1);  exp_avg_sq.mul_(β2).addcmul_(grad, grad, value=1 − β2)
//   denom = (exp_avg_sq.sqrt() / sqrt(bias_correction2)).add_(eps)
//   param.addcdiv_(exp_avg, denom, value=−lr / bias_correction1)
TEST_F(CpuOptim, AdamWMatchesPyTorchFormulas) {
  for (size_t n : {size_t{37}, size_t{50001}}) {  // serial and parallel paths
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    Vec p = random_vec(n, 1), m(n, 0.0f), v(n, 0.0f);
    std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
    for (int t = 1; t <= 4; ++t) {
      const Vec g = random_vec(n, 100 + t, -2.0f, 2.0f);
      const double bc1 = 1.0 - std::pow(double(b1), t), bc2 = 1.0 - std::pow(double(b2), t);
      be->adamw_update(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, float(bc1),
                       float(bc2));
      for (size_t i = 0; i < n; ++i) {
        rp[i] *= 1.0 - double(lr) * wd;
        rm[i] += (g[i] - rm[i]) * (1.0 - b1);
        rv[i] = rv[i] * b2 + (1.0 - b2) * double(g[i]) * g[i];
        const double denom = std::sqrt(rv[i]) / std::sqrt(bc2) + eps;
        rp[i] += -double(lr) / bc1 * rm[i] / denom;
      }
    }
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(m[i], rm[i], 1e-6) << i;
      ASSERT_NEAR(v[i], rv[i], 1e-6 * (1 + rv[i])) << i;
      ASSERT_NEAR(p[i], rp[i], 2e-6) << i;
    }
  }
}

// The clipping factor applied inside the update (grad_scale) gives what scaling the gradient
// first (the clip pass it replaces) and updating gives, up to the compiler contracting the
// products differently into multiply-adds: within a few ulp of the terms (m = β1 m + (1−β1) g
// can cancel, so relative to the result it is looser; hence the + 0.1).
TEST_F(CpuOptim, GradScaleEqualsScalingTheGradientFirst) {
  const size_t n = 50001;
  const float s = 0.37f;  // clip / (norm + 1e-6) for some norm above the clip
  const Vec g = random_vec(n, 7, -3.0f, 3.0f);
  Vec scaled = g;
  be->scale(scaled.data(), s, n);
  auto near = [n](const Vec& a, const Vec& b) {
    for (size_t i = 0; i < n; ++i)
      if (std::abs(a[i] - b[i]) > 1e-6f * (std::abs(b[i]) + 0.1f)) return false;
    return true;
  };
  for (bool adamw : {true, false}) {
    SCOPED_TRACE(adamw ? "adamw" : "sgd");
    Vec p1 = random_vec(n, 8), m1 = random_vec(n, 9, 0.0f, 0.1f),
        v1 = random_vec(n, 10, 0.0f, 0.1f);
    Vec p2 = p1, m2 = m1, v2 = v1;
    if (adamw) {
      be->adamw_update(p1.data(), g.data(), m1.data(), v1.data(), n, 1e-2f, 0.9f, 0.95f, 1e-8f,
                       0.1f, 0.5f, 0.4f, nullptr, s);
      be->adamw_update(p2.data(), scaled.data(), m2.data(), v2.data(), n, 1e-2f, 0.9f, 0.95f, 1e-8f,
                       0.1f, 0.5f, 0.4f);
    } else {
      be->sgd_update(p1.data(), g.data(), m1.data(), n, 0.05f, 0.9f, 1e-4f, nullptr, s);
      be->sgd_update(p2.data(), scaled.data(), m2.data(), n, 0.05f, 0.9f, 1e-4f);
    }
    EXPECT_TRUE(near(p1, p2)) << "params";
    EXPECT_TRUE(near(m1, m2)) << "first slot";
    EXPECT_TRUE(near(v1, v2)) << "second moment";
    EXPECT_FALSE(near(p1, random_vec(n, 8))) << "the update moved nothing";
  }
}

// torch.optim.SGD with momentum, dampening 0, not nesterov:
//   d_p = grad + wd·param;  buf = d_p (first step) else buf.mul_(μ).add_(d_p);  param −= lr·buf
TEST_F(CpuOptim, SgdMatchesPyTorchFormulas) {
  for (size_t n : {size_t{37}, size_t{50001}}) {
    const float lr = 0.05f, mu = 0.9f, wd = 0.01f;
    Vec p = random_vec(n, 2), buf(n, 0.0f);
    std::vector<double> rp(p.begin(), p.end()), rbuf(n, 0.0);
    for (int t = 1; t <= 4; ++t) {
      const Vec g = random_vec(n, 200 + t);
      be->sgd_update(p.data(), g.data(), buf.data(), n, lr, mu, wd);
      for (size_t i = 0; i < n; ++i) {
        const double d_p = g[i] + double(wd) * rp[i];
        rbuf[i] = t == 1 ? d_p : rbuf[i] * mu + d_p;
        rp[i] -= double(lr) * rbuf[i];
      }
    }
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(buf[i], rbuf[i], 1e-5) << i;
      ASSERT_NEAR(p[i], rp[i], 1e-6) << i;
    }
  }
}

TEST_F(CpuOptim, SumSquaresInDouble) {
  for (size_t n : {size_t{0}, size_t{7}, size_t{200003}}) {  // empty, serial, several chunks
    const Vec x = random_vec(n, 3, -3.0f, 3.0f);
    double want = 0.0;
    for (float v : x) want += double(v) * v;
    EXPECT_NEAR(be->sum_squares(x.data(), n), want, 1e-12 * (1.0 + want)) << n;
  }
  // bf16 values (train.activations_every): the sum of their widened values, bit for bit.
  {
    const Vec x = random_vec(200003, 4, -3.0f, 3.0f);
    std::vector<bf16_t> b(x.size());
    Vec wide(x.size());
    for (size_t i = 0; i < x.size(); ++i) wide[i] = to_float(b[i] = to_bf16(x[i]));
    EXPECT_EQ(be->sum_squares(b.data(), b.size()), be->sum_squares(wide.data(), wide.size()));
  }
  // Values whose float squares would lose the small ones next to the large one.
  Vec x(1000, 1e-4f);
  x[0] = 1e4f;
  EXPECT_NEAR(be->sum_squares(x.data(), x.size()), 1e8 + 999 * 1e-8, 1e-6);
}

// ---- reproducibility -------------------------------------------------------------------------

// Everything a transformer block and the head compute, forward and backward, on one set of
// buffers. Sizes exceed the kernels' parallel thresholds so the threaded paths run.
struct BlockRun {
  static constexpr int B = 4, T = 70, C = 96, NH = 4, V = 301, Vp = 384;
  static constexpr int N = B * T;

  std::vector<float> outputs;  // every output and gradient, concatenated

  void run(Backend& be, bool with_blas) {
    outputs.clear();
    auto keep = [&](const Vec& v) { outputs.insert(outputs.end(), v.begin(), v.end()); };
    std::vector<int32_t> tokens(N), targets(N);
    for (int n = 0; n < N; ++n) {
      tokens[n] = (n * 7) % V;
      targets[n] = (n * 13 + 5) % V;
    }
    const Vec wte = random_vec(size_t(Vp) * C, 1), wpe = random_vec(size_t(T) * C, 2);
    const Vec lnw = random_vec(C, 3, 0.5f, 1.5f), lnb = random_vec(C, 4);
    Vec x(size_t(N) * C), ln(x.size()), mean(N), rstd(N);
    be.encoder_forward(x.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    be.layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), lnw.data(), lnb.data(), N,
                         C);
    keep(ln);

    Vec qkv = random_vec(size_t(N) * 3 * C, 5, -2.0f, 2.0f);
    if (with_blas) {
      const Vec w = random_vec(size_t(3) * C * C, 6, -0.2f, 0.2f), b = random_vec(3 * C, 7);
      be.matmul_forward(qkv.data(), ln.data(), w.data(), b.data(), N, C, 3 * C);
      keep(qkv);
    }
    Vec att_out(size_t(N) * C), att(size_t(B) * NH * T * T, 0.0f);
    be.attention_forward(att_out.data(), att.data(), qkv.data(), B, T, C, NH, NH);
    keep(att_out);
    Vec g(att_out.size());
    be.gelu_forward(g.data(), att_out.data(), g.size());
    keep(g);

    Vec logits = random_vec(size_t(N) * Vp, 8, -5.0f, 5.0f), losses(N), correct(N);
    be.crossentropy_forward_backward(logits.data(), losses.data(), correct.data(), targets.data(),
                                     N, V, Vp, 1.0f / N);
    keep(logits);
    keep(losses);
    keep(correct);

    const Vec dout = random_vec(size_t(N) * C, 9);
    Vec dg(g.size(), 0.0f);
    be.gelu_backward(dg.data(), att_out.data(), dout.data(), dg.size());
    keep(dg);
    Vec dqkv(qkv.size(), 0.0f), scratch(att.size());
    be.attention_backward(dqkv.data(), scratch.data(), dg.data(), qkv.data(), att.data(), B, T, C,
                          NH, NH);
    keep(dqkv);
    // Grouped-query attention (2 key/value heads: the backward sums query heads' dK and dV after
    // a parallel pass), behind QK-norm (its weight gradients summed over rows and heads).
    {
      const int NKV = 2, hd = C / NH, W = qkv_width(C, NH, NKV);
      const Vec pre = random_vec(size_t(N) * W, 10, -2.0f, 2.0f);
      const Vec wq = random_vec(hd, 11, 0.5f, 1.5f), wk = random_vec(hd, 12, 0.5f, 1.5f);
      Vec normed(pre.size()), r(size_t(N) * (NH + NKV)), o(size_t(N) * C), p(att.size());
      be.qk_norm_forward(normed.data(), r.data(), pre.data(), wq.data(), wk.data(), N, C, NH, NKV);
      be.attention_forward(o.data(), p.data(), normed.data(), B, T, C, NH, NKV);
      Vec d(pre.size(), 0.0f), dwq(hd, 0.0f), dwk(hd, 0.0f), s(att.size());
      be.attention_backward(d.data(), s.data(), dout.data(), normed.data(), p.data(), B, T, C, NH,
                            NKV);
      keep(d);
      be.qk_norm_backward(d.data(), dwq.data(), dwk.data(), d.data(), pre.data(), wq.data(),
                          wk.data(), r.data(), N, C, NH, NKV, GradMode::overwrite);
      keep(normed);
      keep(o);
      keep(d);
      keep(dwq);
      keep(dwk);
    }
    Vec dln(ln.size(), 0.0f);
    if (with_blas) {
      const Vec w = random_vec(size_t(3) * C * C, 6, -0.2f, 0.2f);
      Vec dw(w.size(), 0.0f), db(3 * C, 0.0f);
      be.matmul_backward(dln.data(), dw.data(), db.data(), dqkv.data(), ln.data(), w.data(), N, C,
                         3 * C);
      keep(dln);
      keep(dw);
      keep(db);
    } else {
      dln = dout;
    }
    Vec dx(x.size(), 0.0f), dlnw(C, 0.0f), dlnb(C, 0.0f);
    be.layernorm_backward(dx.data(), dlnw.data(), dlnb.data(), dln.data(), x.data(), lnw.data(),
                          mean.data(), rstd.data(), N, C);
    keep(dx);
    keep(dlnw);
    keep(dlnb);
    Vec dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
    be.encoder_backward(dwte.data(), dwpe.data(), dx.data(), tokens.data(), B, T, C);
    keep(dwte);
    keep(dwpe);
    outputs.push_back(float(be.sum_squares(dwte.data(), dwte.size())));
  }
};

bool bit_identical(const Vec& a, const Vec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST_F(CpuOptim, RunsAreBitIdentical) {
  BlockRun first, second;
  first.run(*be, true);
  second.run(*be, true);
  EXPECT_TRUE(bit_identical(first.outputs, second.outputs));
}

// The OpenMP kernels fix their reduction order independently of the team size.
TEST_F(CpuOptim, OpenMpKernelsIndependentOfThreadCount) {
  const int saved = omp_get_max_threads();
  BlockRun one, three;
  omp_set_num_threads(1);
  one.run(*be, false);
  omp_set_num_threads(3);
  three.run(*be, false);
  omp_set_num_threads(saved);
  EXPECT_TRUE(bit_identical(one.outputs, three.outputs));
}

// The backend parallelizes with OpenMP and keeps OpenBLAS single-threaded, even when someone
// raised OpenBLAS's thread count in between (a threaded OpenBLAS inside OpenMP teams would
// oversubscribe the cores); the results do not change.
TEST_F(CpuOptim, KeepsOpenBlasSingleThreaded) {
  EXPECT_EQ(openblas_get_num_threads(), 1);
  const int N = 200, IC = 96, OC = 160;
  const Vec x = random_vec(size_t(N) * IC, 11), w = random_vec(size_t(OC) * IC, 12);
  Vec a(size_t(N) * OC), b(a.size());
  be->matmul_forward(a.data(), x.data(), w.data(), nullptr, N, IC, OC);
  openblas_set_num_threads(2);
  be->matmul_forward(b.data(), x.data(), w.data(), nullptr, N, IC, OC);
  EXPECT_EQ(openblas_get_num_threads(), 1);
  EXPECT_TRUE(bit_identical(a, b));
}

}  // namespace
}  // namespace triad
