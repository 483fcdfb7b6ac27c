// FP8 (run.fp8 = tensorwise) on the CPU backend:
//  - fp8_round against an independent definition: the table of every finite value each format
//    encodes, decoded from its bits, and for each input the nearer of its two neighbours there
//    (ties to the even code), saturating at the largest; every bf16 value and 10^6 random floats.
//    (tests/python/test_fp8.py compares whole models with a PyTorch reference that casts
//    through ml_dtypes' float8 types.)
//  - fp8_scale: the largest power of two that keeps amax·s within the format.
//  - the FP8 products against double-precision sums of the independently rounded operands
//    (forward, both backward products, accumulation, the split backward's two passes), and that
//    they do differ from the bf16 products.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "../support/bf16_data.h"
#include "triad/core/bf16.h"
#include "triad/core/fp8.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using testing::Bits;
using testing::random_bits;
using testing::to_floats;

// Every finite non-negative value of the format, decoded from its 8 bits, with whether its code
// is even (ties round to it). e4m3fn: S EEEE MMM, bias 7, E=1111 M=111 is NaN, no infinities;
// e5m2: S EEEEE MM, bias 15, E=11111 is inf/NaN.
std::vector<std::pair<double, bool>> format_values(Fp8Format f) {
  const int ebits = f == Fp8Format::e4m3 ? 4 : 5, mbits = 7 - ebits;
  const int bias = f == Fp8Format::e4m3 ? 7 : 15;
  std::map<double, bool> values;
  for (int code = 0; code < 128; ++code) {
    const int e = code >> mbits, m = code & ((1 << mbits) - 1);
    if (f == Fp8Format::e4m3 && e == 15 && m == 7) continue;  // NaN
    if (f == Fp8Format::e5m2 && e == 31) continue;            // inf, NaN
    const double frac = double(m) / double(1 << mbits);
    const double v = e == 0 ? std::ldexp(frac, 1 - bias) : std::ldexp(1.0 + frac, e - bias);
    values[v] = (code & 1) == 0;
  }
  return {values.begin(), values.end()};
}

double reference_round(double v, const std::vector<std::pair<double, bool>>& table) {
  if (std::isnan(v)) return v;
  const double a = std::fabs(v), top = table.back().first;
  double r = top;  // saturating (the GPU's satfinite conversion)
  if (a < top) {
    auto hi = std::lower_bound(table.begin(), table.end(), std::make_pair(a, false));
    if (hi->first == a) {
      r = a;
    } else {
      auto lo = hi - 1;
      const double dl = a - lo->first, dh = hi->first - a;
      r = dl < dh ? lo->first : dh < dl ? hi->first : (lo->second ? lo->first : hi->first);
    }
  }
  return v < 0 ? -r : r;
}

class Fp8Rounding : public ::testing::TestWithParam<Fp8Format> {};

TEST_P(Fp8Rounding, EveryBf16ValueRoundsAsTheFormatsTable) {
  const Fp8Format f = GetParam();
  const auto table = format_values(f);
  ASSERT_EQ(table.back().first, double(fp8_max(f)));
  int checked = 0;
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float v = to_float(bf16_t{uint16_t(bits)});
    const float got = fp8_round(v, f);
    const double want = reference_round(v, table);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << v;
      continue;
    }
    ASSERT_EQ(double(got), want) << "input " << v << " (bf16 bits " << bits << ")";
    ++checked;
  }
  EXPECT_GT(checked, 65000);
}

TEST_P(Fp8Rounding, RandomFloatsRoundAsTheFormatsTable) {
  const Fp8Format f = GetParam();
  const auto table = format_values(f);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mant(0.5f, 1.0f);
  std::uniform_int_distribution<int> expo(-30, 18);
  for (int i = 0; i < 1000000; ++i) {
    const float v = std::ldexp(mant(rng), expo(rng)) * (i % 2 ? -1.0f : 1.0f);
    ASSERT_EQ(double(fp8_round(v, f)), reference_round(v, table)) << v;
  }
  // Ties: the midpoint between 1 and the next value goes to 1 (even code), the next one up.
  const float step = f == Fp8Format::e4m3 ? 0.125f : 0.25f;
  EXPECT_EQ(fp8_round(1.0f + step / 2, f), 1.0f);
  EXPECT_EQ(fp8_round(1.0f + 3 * step / 2, f), 1.0f + 2 * step);
  EXPECT_EQ(fp8_round(INFINITY, f), fp8_max(f));
  EXPECT_EQ(fp8_round(-1e30f, f), -fp8_max(f));
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8Rounding, ::testing::Values(Fp8Format::e4m3, Fp8Format::e5m2));

TEST(Fp8Scale, IsTheLargestPowerOfTwoThatFits) {
  for (Fp8Format f : {Fp8Format::e4m3, Fp8Format::e5m2}) {
    const float top = fp8_max(f);
    for (float amax : {1.0f, 448.0f, 449.0f, 57344.0f, 3.0e-3f, 0.7f, 1e5f, 1e-20f, 1e-37f}) {
      const float s = fp8_scale(amax, f);
      int e = 0;
      EXPECT_EQ(std::frexp(s, &e), 0.5f) << "a power of two: " << s;
      if (amax > 1e-35f) {
        EXPECT_LE(double(amax) * s, double(top)) << amax;
        EXPECT_GT(double(amax) * s * 2.0, double(top)) << amax;
      } else {
        EXPECT_EQ(s, std::ldexp(1.0f, 126)) << amax;  // capped: 1/s stays a normal float
      }
    }
    EXPECT_EQ(fp8_scale(0.0f, f), 1.0f);
    EXPECT_TRUE(std::isnan(fp8_scale(NAN, f)));
    EXPECT_TRUE(std::isnan(fp8_scale(INFINITY, f)));
  }
}

// The operand as the FP8 product sees it, from the independent table.
std::vector<double> through_fp8(const Bits& x, Fp8Format f) {
  const auto table = format_values(f);
  double amax = 0;
  for (bf16_t b : x) amax = std::max(amax, std::fabs(double(to_float(b))));
  const double s = std::exp2(std::floor(std::log2(double(fp8_max(f)) / amax)));
  std::vector<double> q(x.size());
  for (size_t i = 0; i < x.size(); ++i) q[i] = reference_round(to_float(x[i]) * s, table) / s;
  return q;
}

float amax_of(Backend& be, const Bits& x) {
  float a = -1;
  be.absmax(&a, x.data(), x.size());
  return a;
}

double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double d = 0, n = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    d += (got[i] - want[i]) * (got[i] - want[i]);
    n += want[i] * want[i];
  }
  return std::sqrt(d / n);
}

struct Problem {
  int N = 48, IC = 80, OC = 32;
  Bits inp = random_bits(size_t(N) * IC, 1, -3.0f, 3.0f);
  Bits w = random_bits(size_t(OC) * IC, 2, -0.05f, 0.05f);
  Bits b = random_bits(size_t(OC), 3);
  Bits dout = random_bits(size_t(N) * OC, 4, -1e-3f, 1e-3f);
  std::vector<double> qx = through_fp8(inp, Fp8Format::e4m3);
  std::vector<double> qw = through_fp8(w, Fp8Format::e4m3);
  std::vector<double> qd = through_fp8(dout, Fp8Format::e5m2);
  float amax[3];
  explicit Problem(Backend& be) : amax{amax_of(be, inp), amax_of(be, w), amax_of(be, dout)} {}
};

TEST(CpuFp8, AbsmaxIsTheLargestMagnitudeAndNaNGivesInfinity) {
  auto be = make_cpu_backend();
  Bits x = testing::to_bits({0.5f, -3.25f, 2.0f, 0.0f});
  EXPECT_EQ(amax_of(*be, x), 3.25f);
  EXPECT_EQ(amax_of(*be, testing::to_bits({0.0f, -0.0f})), 0.0f);
  x[2] = to_bf16(NAN);
  EXPECT_EQ(amax_of(*be, x), INFINITY);  // kept by a maximum over ranks; its scale is NaN
  EXPECT_TRUE(std::isnan(fp8_scale(amax_of(*be, x), Fp8Format::e4m3)));
}

TEST(CpuFp8, ForwardIsTheSumOfTheRoundedOperands) {
  auto be = make_cpu_backend();
  const Problem p(*be);
  Bits out(size_t(p.N) * p.OC), plain(out.size());
  be->matmul_forward_fp8(out.data(), p.inp.data(), p.w.data(), p.b.data(), p.N, p.IC, p.OC, p.amax);
  std::vector<double> want(out.size());
  for (int n = 0; n < p.N; ++n)
    for (int o = 0; o < p.OC; ++o) {
      double s = to_float(p.b[size_t(o)]);
      for (int k = 0; k < p.IC; ++k) s += p.qx[size_t(n) * p.IC + k] * p.qw[size_t(o) * p.IC + k];
      want[size_t(n) * p.OC + o] = s;
    }
  EXPECT_LT(rel_err(to_floats(out), want), 3e-3);  // one bf16 rounding of each output
  size_t exact = 0;
  for (size_t i = 0; i < out.size(); ++i) exact += out[i].bits == to_bf16(float(want[i])).bits;
  EXPECT_GT(exact, out.size() * 95 / 100) << "rounded once from (nearly) the exact sum";
  // FP8 is not bf16: the same product of the unrounded operands differs by e4m3's precision.
  be->matmul_forward(plain.data(), p.inp.data(), p.w.data(), p.b.data(), p.N, p.IC, p.OC);
  std::vector<double> bf(plain.size());
  for (size_t i = 0; i < bf.size(); ++i) bf[i] = to_float(plain[i]);
  EXPECT_GT(rel_err(to_floats(out), bf), 1e-2);
}

TEST(CpuFp8, BackwardProductsAreTheSumsOfTheRoundedOperands) {
  auto be = make_cpu_backend();
  const Problem p(*be);
  const size_t ni = size_t(p.N) * p.IC, nw = size_t(p.OC) * p.IC;
  const Bits dinp0 = random_bits(ni, 5, -1e-2f, 1e-2f);
  const std::vector<float> dw0 = testing::random_vec(nw, 6), db0 = testing::random_vec(p.OC, 7);
  Bits dinp = dinp0;
  std::vector<float> dw = dw0, db = db0;
  be->matmul_backward_fp8(dinp.data(), dw.data(), db.data(), p.dout.data(), p.inp.data(),
                          p.w.data(), p.N, p.IC, p.OC, p.amax, GradMode::accumulate);
  std::vector<double> want_di(ni), want_dw(nw), want_db(size_t(p.OC));
  for (int n = 0; n < p.N; ++n)
    for (int k = 0; k < p.IC; ++k) {
      double s = 0;
      for (int o = 0; o < p.OC; ++o) s += p.qd[size_t(n) * p.OC + o] * p.qw[size_t(o) * p.IC + k];
      want_di[size_t(n) * p.IC + k] = s;
    }
  for (int o = 0; o < p.OC; ++o) {
    for (int k = 0; k < p.IC; ++k) {
      double s = dw0[size_t(o) * p.IC + k];
      for (int n = 0; n < p.N; ++n) s += p.qd[size_t(n) * p.OC + o] * p.qx[size_t(n) * p.IC + k];
      want_dw[size_t(o) * p.IC + k] = s;
    }
    double s = db0[size_t(o)];  // from the bf16 gradient itself, not its e5m2 rounding
    for (int n = 0; n < p.N; ++n) s += to_float(p.dout[size_t(n) * p.OC + o]);
    want_db[size_t(o)] = s;
  }
  std::vector<double> with_old(ni);
  for (size_t i = 0; i < ni; ++i) with_old[i] = want_di[i] + to_float(dinp0[i]);
  EXPECT_LT(rel_err(to_floats(dinp), with_old), 3e-3);
  EXPECT_LT(rel_err(dw, want_dw), 1e-6);
  EXPECT_LT(rel_err(db, want_db), 1e-6);

  // Overwrite, and the split backward's two passes (input gradient, then the weights'): the
  // same values as one call.
  Bits fresh(ni);
  std::vector<float> dw_split = dw0, db_split = db0;
  be->matmul_backward_fp8(fresh.data(), nullptr, nullptr, p.dout.data(), p.inp.data(), p.w.data(),
                          p.N, p.IC, p.OC, p.amax, GradMode::overwrite);
  be->matmul_backward_fp8(nullptr, dw_split.data(), db_split.data(), p.dout.data(), p.inp.data(),
                          p.w.data(), p.N, p.IC, p.OC, p.amax);
  EXPECT_LT(rel_err(to_floats(fresh), want_di), 3e-3);
  EXPECT_EQ(dw_split, dw);
  EXPECT_EQ(db_split, db);
}

}  // namespace
}  // namespace triad
