// Muon's pieces on the CPU backend against plain double-precision code written from the
// algorithm (optim/muon.h): the Newton–Schulz iteration for wide, square, tall and column-
// blocked matrices, the element-wise momentum and step, which tensors Muon takes, and the lr
// factor. The whole optimizer is compared with a float64 PyTorch Muon in
// tests/python/test_reference_model.py and across grids in tests/mpi/test_model_parallel.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../support/random_data.h"
#include "triad/kernels/backend.h"
#include "triad/optim/muon.h"

namespace triad {
namespace {

using Mat = std::vector<double>;  // row-major

// a [r, k] · b [k, c]
Mat matmul(const Mat& a, const Mat& b, int r, int k, int c) {
  Mat out(size_t(r) * c, 0.0);
  for (int i = 0; i < r; ++i)
    for (int p = 0; p < k; ++p)
      for (int j = 0; j < c; ++j)
        out[size_t(i) * c + j] += a[size_t(i) * k + p] * b[size_t(p) * c + j];
  return out;
}

Mat transpose(const Mat& a, int r, int c) {
  Mat t(a.size());
  for (int i = 0; i < r; ++i)
    for (int j = 0; j < c; ++j) t[size_t(j) * r + i] = a[size_t(i) * c + j];
  return t;
}

// The iteration as torch.optim.Muon documents it, in double.
Mat newton_schulz_reference(Mat g, int m, int n, int steps) {
  const bool tall = m > n;
  if (tall) {
    g = transpose(g, m, n);
    std::swap(m, n);
  }
  double norm = 0;
  for (double v : g) norm += v * v;
  norm = std::max(std::sqrt(norm), 1e-7);
  for (double& v : g) v /= norm;
  for (int it = 0; it < steps; ++it) {
    const Mat a = matmul(g, transpose(g, m, n), m, n, m);
    const Mat a2 = matmul(a, a, m, m, m);
    Mat b(a.size());
    for (size_t i = 0; i < b.size(); ++i) b[i] = -4.7750 * a[i] + 2.0315 * a2[i];
    const Mat bx = matmul(b, g, m, m, n);
    for (size_t i = 0; i < g.size(); ++i) g[i] = 3.4445 * g[i] + bx[i];
  }
  return tall ? transpose(g, m, n) : g;
}

// The matrix [m, n] as `blocks` column blocks of [m, n/blocks], one after the other.
std::vector<float> to_blocks(const std::vector<float>& x, int m, int n, int blocks) {
  const int nb = n / blocks;
  std::vector<float> out;
  for (int b = 0; b < blocks; ++b)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < nb; ++j) out.push_back(x[size_t(i) * n + b * nb + j]);
  return out;
}

struct Shape {
  int m, n, blocks;
};

TEST(Muon, NewtonSchulzMatchesTheDoubleReference) {
  auto be = make_cpu_backend();
  for (const Shape s :
       {Shape{24, 40, 1}, Shape{32, 32, 1}, Shape{48, 16, 1}, Shape{16, 64, 4}, Shape{20, 20, 2}}) {
    SCOPED_TRACE(::testing::Message() << s.m << "x" << s.n << " in " << s.blocks << " blocks");
    const size_t mn = size_t(s.m) * s.n, k = size_t(std::min(s.m, s.n));
    const std::vector<float> g = triad::testing::random_vec(mn, 7 + s.m + s.n, -0.3f, 0.3f);
    const Mat want = newton_schulz_reference(Mat(g.begin(), g.end()), s.m, s.n, 5);
    float* x = be->alloc(mn);
    float *y = be->alloc(mn), *a = be->alloc(k * k), *a2 = be->alloc(k * k);
    const std::vector<float> blocked = to_blocks(g, s.m, s.n, s.blocks);
    be->copy_from_host(x, blocked.data(), mn);
    newton_schulz(*be, x, y, a, a2, s.m, s.n, s.blocks, 5);
    std::vector<float> got(mn);
    be->copy_to_host(got.data(), x, mn);
    const std::vector<float> want_blocked =
        to_blocks(std::vector<float>(want.begin(), want.end()), s.m, s.n, s.blocks);
    double worst = 0;
    for (size_t i = 0; i < mn; ++i)
      worst = std::max(worst, std::abs(double(got[i]) - double(want_blocked[i])));
    EXPECT_LT(worst, 2e-5);
    // What Muon is for: the result is close to orthogonal (singular values near 1), here
    // checked as the Frobenius norm: sqrt(min(m, n)) within the quintic's band [0.7, 1.2].
    double fro = 0;
    for (float v : got) fro += double(v) * v;
    fro = std::sqrt(fro / double(k));
    EXPECT_GT(fro, 0.6);
    EXPECT_LT(fro, 1.25);
    for (float* p : {x, y, a, a2}) be->free(p);
  }
}

TEST(Muon, ZeroMatrixStaysZero) {
  auto be = make_cpu_backend();
  float *x = be->alloc(12), *y = be->alloc(12), *a = be->alloc(9), *a2 = be->alloc(9);
  newton_schulz(*be, x, y, a, a2, 3, 4, 1, 5);
  std::vector<float> got(12, 1.0f);
  be->copy_to_host(got.data(), x, 12);
  for (float v : got) EXPECT_EQ(v, 0.0f);
  for (float* p : {x, y, a, a2}) be->free(p);
}

TEST(Muon, MomentumAndStepFollowTheFormulas) {
  auto be = make_cpu_backend();
  const size_t n = 1001;
  std::vector<float> buf = triad::testing::random_vec(n, 1), g = triad::testing::random_vec(n, 2);
  std::vector<float> p = triad::testing::random_vec(n, 3), o = triad::testing::random_vec(n, 4);
  for (bool nesterov : {true, false}) {
    std::vector<float> b = buf, u(n), q = p;
    std::vector<bf16_t> copy(n);
    be->muon_momentum(b.data(), u.data(), g.data(), n, 0.9f, nesterov, 0.5f);
    be->muon_apply(q.data(), o.data(), n, 0.02f, 0.1f, 1.5f, copy.data());
    for (size_t i = 0; i < n; ++i) {
      const double gi = 0.5 * g[i], bi = 0.9 * buf[i] + gi;
      EXPECT_NEAR(b[i], bi, 1e-6);
      EXPECT_NEAR(u[i], nesterov ? gi + 0.9 * bi : bi, 1e-6);
      EXPECT_NEAR(q[i], p[i] * (1 - 0.02 * 0.1) - 0.02 * 1.5 * o[i], 1e-6);
      EXPECT_EQ(copy[i].bits, to_bf16(q[i]).bits);
    }
  }
}

TEST(Muon, TakesTheHiddenMatricesOnly) {
  for (const char* n :
       {"h/0/attn/c_attn/weight", "h/11/attn/c_proj/weight", "h/3/mlp/c_fc/weight",
        "h/3/mlp/c_proj/weight", "h/1/mlp/experts/c_fc/weight", "h/1/mlp/experts/c_proj/weight",
        "h/1/mlp/shared/c_fc/weight", "h/1/mlp/shared/c_proj/weight"})
    EXPECT_TRUE(muon_updates(n)) << n;
  for (const char* n : {"wte/weight", "wpe/weight", "h/0/attn/c_attn/bias", "h/0/ln_1/weight",
                        "h/2/mlp/c_proj/bias", "ln_f/weight", "h/1/mlp/router/weight",
                        "h/1/mlp/shared/gate/weight", "lm_head/weight"})
    EXPECT_FALSE(muon_updates(n)) << n;
  EXPECT_DOUBLE_EQ(muon_lr_scale("original", 3072, 768), 2.0);
  EXPECT_DOUBLE_EQ(muon_lr_scale("original", 768, 3072), 1.0);
  EXPECT_DOUBLE_EQ(muon_lr_scale("match_rms_adamw", 768, 3072), 0.2 * std::sqrt(3072.0));
}

// An expert tensor [E, rows, cols] is one matrix per expert this rank holds (here 2 of 4, split
// by columns over tp 2), each in its place; under expert parallelism their rounds are apart from
// the dense matrices' and of the expert replicas' size.
TEST(Muon, EachExpertIsAMatrixOfItsOwn) {
  ParamSpec dense, experts;
  dense.name = "h/0/attn/c_proj/weight";
  dense.shape = dense.local = {8, 8};
  dense.numel = 64;
  experts.name = "h/0/mlp/experts/c_proj/weight";
  experts.shape = {4, 8, 6};
  experts.local = {2, 8, 3};
  experts.offset = 64;
  experts.numel = 48;
  experts.split_axis = 2;
  experts.split_parts = 2;
  experts.expert_parallel = true;
  const std::vector<MuonMatrix> list = muon_matrices({dense, experts});
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].offset, 0u);
  EXPECT_EQ(list[0].numel, 64u);
  EXPECT_FALSE(list[0].split);
  for (size_t e = 1; e < 3; ++e) {
    EXPECT_EQ(list[e].spec, 1u);
    EXPECT_EQ(list[e].offset, 64 + (e - 1) * 24);
    EXPECT_EQ(list[e].numel, 24u);
    EXPECT_EQ(list[e].rows, 8);
    EXPECT_EQ(list[e].cols, 6);
    EXPECT_TRUE(list[e].split && list[e].by_columns && list[e].expert_parallel);
  }
  const std::vector<MuonRound> together = muon_rounds(list, 2);
  ASSERT_EQ(together.size(), 2u);
  EXPECT_EQ(together[0].matrices, (std::vector<size_t>{0, 1}));
  EXPECT_EQ(together[0].count, 64u);
  const std::vector<MuonRound> apart = muon_rounds(list, 4, 2);
  ASSERT_EQ(apart.size(), 2u);
  EXPECT_EQ(apart[0].matrices, (std::vector<size_t>{0}));
  EXPECT_FALSE(apart[0].experts);
  EXPECT_EQ(apart[1].matrices, (std::vector<size_t>{1, 2}));
  EXPECT_TRUE(apart[1].experts);
  EXPECT_EQ(apart[1].count, 24u);
}

}  // namespace
}  // namespace triad
