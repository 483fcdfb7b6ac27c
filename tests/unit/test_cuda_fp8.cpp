// The CUDA backend's FP8 linear layers (absmax, matmul_forward_fp8, matmul_backward_fp8) against
// the CPU backend's, which emulate backend.h's contract literally (cpu_fp8.cpp).
//  - Both quantize the same bf16 values with the same scales (core/fp8.h), so the products differ
//    only in the order of their fp32 sums: ‖got − want‖₂ / ‖want‖₂ <= 1e-2. absmax is exact.
//  - The casts are checked bit for bit through products that copy one operand: the other operand
//    an identity matrix (1 in e4m3 and e5m2 at its scale), every finite bf16 value quantized
//    once, at three scales, by each of the six casts (forward inp and W, the input gradient's Wᵀ
//    and dout, the weight gradient's inpᵀ and doutᵀ).
//  - Backward runs twice on the GPU and must agree bit for bit; accumulated gradients start from
//    nonzero values; a pass without dweight (or dinp) must leave it untouched.
// Every test skips when no CUDA device is usable (and in builds without CUDA).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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
using triad::testing::Bits;
using triad::testing::random_bits;
using triad::testing::random_vec;
using triad::testing::to_bits;
using triad::testing::to_floats;

constexpr double kTol = 1e-2;

// Relative L2 error of got against want (absolute where want is all zero); NaN in either fails.
::testing::AssertionResult rel_l2(const Vec& got, const Vec& want) {
  return triad::testing::close_l2(got, want, kTol);
}
::testing::AssertionResult rel_l2(const Bits& got, const Bits& want) {
  return rel_l2(to_floats(got), to_floats(want));
}

// The same values (+0 == -0; NaN only where NaN).
::testing::AssertionResult same_values(const Vec& got, const Vec& want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < got.size(); ++i) {
    const bool nan = std::isnan(got[i]) || std::isnan(want[i]);
    if (nan ? !(std::isnan(got[i]) && std::isnan(want[i])) : got[i] != want[i])
      return ::testing::AssertionFailure()
             << "first difference at " << i << ": got " << got[i] << ", want " << want[i];
  }
  return ::testing::AssertionSuccess();
}

template <typename T>
::testing::AssertionResult same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "not bit-identical";
}

struct Shape {
  int N, IC, OC;
};
// N not a multiple of 16 too (an expert's rows): the weight gradient pads its inner dimension.
constexpr Shape kShapes[] = {
    {64, 96, 160}, {16, 16, 16}, {1024, 768, 3072}, {23, 32, 48}, {1, 16, 16}};

// Every finite bf16 bit pattern once (NaNs replaced by zero: one NaN makes its whole row of a
// product NaN); ±inf stay (they saturate to ±fp8_max).
Bits every_bf16() {
  Bits b(65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    const bf16_t v{uint16_t(i)};
    b[i] = std::isnan(to_float(v)) ? to_bf16(0.0f) : v;
  }
  return b;
}

// The identity matrix [n, n] in bf16.
Bits identity(int n) {
  Vec v(size_t(n) * n, 0.0f);
  for (int i = 0; i < n; ++i) v[size_t(i) * n + i] = 1.0f;
  return to_bits(v);
}

class CudaFp8Test : public triad::testing::CudaVsCpuTest {
 protected:
  // amax of inp, weight and dout: on the GPU by its absmax (into three device floats), on the
  // CPU by the CPU's; they must be equal.
  struct Amax {
    Vec host;
    float* device;
  };
  Amax amax_of(const Bits& inp, const Bits& w, const Bits& dout, const bf16_t* d_inp,
               const bf16_t* d_w, const bf16_t* d_dout) {
    Amax a{Vec(3), dev_zeros(3)};
    cpu->absmax(&a.host[0], inp.data(), inp.size());
    cpu->absmax(&a.host[1], w.data(), w.size());
    cpu->absmax(&a.host[2], dout.data(), dout.size());
    gpu->absmax(a.device + 0, d_inp, inp.size());
    gpu->absmax(a.device + 1, d_w, w.size());
    gpu->absmax(a.device + 2, d_dout, dout.size());
    EXPECT_TRUE(same_bits(host(a.device, 3), a.host)) << "absmax";
    return a;
  }
};

TEST_F(CudaFp8Test, AbsmaxIsExact) {
  const Bits x = random_bits(10007, 1, -3.0f, 2.0f);
  bf16_t* d = dev(x);
  float* out = dev_zeros(1);
  // Aligned (16-byte loads), misaligned (scalar) and short.
  for (size_t off : {size_t(0), size_t(1), size_t(8)}) {
    for (size_t n : {size_t(10007) - off, size_t(7), size_t(1), size_t(0)}) {
      SCOPED_TRACE(::testing::Message() << "offset " << off << " n " << n);
      float want = -1.0f;
      cpu->absmax(&want, x.data() + off, n);
      gpu->absmax(out, d + off, n);
      EXPECT_EQ(host(out, 1)[0], want);
    }
  }
  // All zero (and negative zero): 0.
  Bits zeros(4096, to_bf16(-0.0f));
  zeros[7] = to_bf16(0.0f);
  gpu->absmax(out, dev(zeros), zeros.size());
  EXPECT_EQ(host(out, 1)[0], 0.0f);
  // The largest magnitude is a negative value; inf wins over it; a NaN gives +inf too.
  Bits y = random_bits(4096, 2, -1.0f, 1.0f);
  y[3001] = to_bf16(-7.5f);
  gpu->absmax(out, dev(y), y.size());
  EXPECT_EQ(host(out, 1)[0], 7.5f);
  y[17] = to_bf16(-std::numeric_limits<float>::infinity());
  gpu->absmax(out, dev(y), y.size());
  EXPECT_EQ(host(out, 1)[0], std::numeric_limits<float>::infinity());
  for (size_t at : {size_t(5), size_t(4095)}) {
    Bits z = y;
    z[at] = to_bf16(std::numeric_limits<float>::quiet_NaN());
    gpu->absmax(out, dev(z), z.size());
    EXPECT_EQ(host(out, 1)[0], std::numeric_limits<float>::infinity()) << "NaN at " << at;
  }
}

// absmax_rows (a mixture of experts' per-expert amax, one launch for up to 256 segments) against
// the CPU backend's absmax of each range: 300 segments (two launches), empty ones, gaps between
// them, a row width that is not a multiple of 8 (scalar loads) and one that is; the maxima three
// floats apart, the words between left as they were.
TEST_F(CudaFp8Test, AbsmaxOfEachRowRangeIsExact) {
  for (size_t width : {size_t(48), size_t(20)}) {
    SCOPED_TRACE(::testing::Message() << "width " << width);
    const size_t rows = 2000;
    const Bits x = random_bits(rows * width, 3, -3.0f, 2.0f);
    std::vector<int64_t> begin, end;
    for (int64_t s = 0, r = 0; s < 300; ++s) {
      const int64_t n = s % 7 == 3 ? 0 : 1 + (s * 13) % 9;  // some segments empty
      begin.push_back(r);
      end.push_back(r + n);
      r += n + (s % 5 == 0 ? 2 : 0);  // gaps: rows in no segment
    }
    ASSERT_LE(end.back(), int64_t(rows));
    float* out = dev_zeros(3 * begin.size());
    gpu->absmax_rows(out, 3, dev(x), width, begin.data(), end.data(), int(begin.size()));
    const std::vector<float> got = host(out, 3 * begin.size());
    for (size_t s = 0; s < begin.size(); ++s) {
      float want = -1.0f;
      cpu->absmax(&want, x.data() + size_t(begin[s]) * width,
                  size_t(end[s] - begin[s]) * width);
      EXPECT_EQ(got[3 * s], want) << "segment " << s;
      EXPECT_EQ(got[3 * s + 1], 0.0f) << "segment " << s;
    }
  }
}

// Each cast against fp8_round, through products in which the other operand is the identity: the
// result is the quantized value scaled back, exact in fp32 and in bf16.
TEST_F(CudaFp8Test, CastsMatchFp8RoundBitForBit) {
  const Bits all = every_bf16();  // 65536 = 4096 × 16 values
  const Bits eye = identity(16);
  bf16_t *d_all = dev(all), *d_eye = dev(eye);
  const int L = 4096;
  // Per case the amax of the operand under test; the identity's is 1 (scale: a power of two, at
  // which 1 is exact in both formats). 448 and 57344 give scale 1 in e4m3 and e5m2, 3 gives 128
  // (e4m3), larger values saturating.
  for (float amax : {448.0f, 57344.0f, 3.0f}) {
    SCOPED_TRACE(::testing::Message() << "amax " << amax);
    // forward, inp cast: inp [L, 16] · I → out [L, 16] = q(inp).
    {
      const Vec a = {amax, 1.0f, 1.0f};
      Bits want(all.size());
      cpu->matmul_forward_fp8(want.data(), all.data(), eye.data(), nullptr, L, 16, 16, a.data());
      bf16_t* out = dev(Bits(all.size()));
      gpu->matmul_forward_fp8(out, d_all, d_eye, nullptr, L, 16, 16, dev(a));
      EXPECT_TRUE(same_values(to_floats(host(out, all.size())), to_floats(want))) << "fwd inp";
    }
    // forward, weight cast: I · W[L, 16]ᵀ → out [16, L] = q(W)ᵀ.
    {
      const Vec a = {1.0f, amax, 1.0f};
      Bits want(all.size());
      cpu->matmul_forward_fp8(want.data(), eye.data(), all.data(), nullptr, 16, 16, L, a.data());
      bf16_t* out = dev(Bits(all.size()));
      gpu->matmul_forward_fp8(out, d_eye, d_all, nullptr, 16, 16, L, dev(a));
      EXPECT_TRUE(same_values(to_floats(host(out, all.size())), to_floats(want))) << "fwd weight";
    }
    // input gradient: dout [L, 16] · I → dinp = q5(dout) (plain e5m2 cast); dout = I, W [16, L]
    // → dinp [16, L] = q4(W) (the transposed e4m3 cast).
    for (bool of_dout : {true, false}) {
      const Vec a = of_dout ? Vec{1.0f, 1.0f, amax} : Vec{1.0f, amax, 1.0f};
      const int N = of_dout ? L : 16, IC = of_dout ? 16 : L;
      const Bits& dout = of_dout ? all : eye;
      const Bits& w = of_dout ? eye : all;
      Bits want(all.size());
      cpu->matmul_backward_fp8(want.data(), nullptr, nullptr, dout.data(), nullptr, w.data(), N, IC,
                               16, a.data(), GradMode::overwrite);
      bf16_t* dinp = dev(to_bits(Vec(all.size(), 5.0f)));
      gpu->matmul_backward_fp8(dinp, nullptr, nullptr, of_dout ? d_all : d_eye, nullptr,
                               of_dout ? d_eye : d_all, N, IC, 16, dev(a), GradMode::overwrite);
      EXPECT_TRUE(same_values(to_floats(host(dinp, all.size())), to_floats(want)))
          << (of_dout ? "dinp's dout" : "dinp's weight");
    }
    // weight gradient: doutᵀ · inp with dout = I [16, 16] → dW [16, L] = q4(inp [16, L]) (the
    // transposed e4m3 cast); with inp = I → dW [L, 16] = q5(dout [16, L])ᵀ (transposed e5m2).
    for (bool of_dout : {true, false}) {
      const Vec a = of_dout ? Vec{1.0f, 1.0f, amax} : Vec{amax, 1.0f, 1.0f};
      const int IC = of_dout ? 16 : L, OC = of_dout ? L : 16;
      const Bits& dout = of_dout ? all : eye;
      const Bits& inp = of_dout ? eye : all;
      Vec want(all.size(), 0.0f);
      cpu->matmul_backward_fp8(nullptr, want.data(), nullptr, dout.data(), inp.data(), nullptr, 16,
                               IC, OC, a.data());
      float* dw = dev_zeros(all.size());
      gpu->matmul_backward_fp8(nullptr, dw, nullptr, of_dout ? d_all : d_eye,
                               of_dout ? d_eye : d_all, nullptr, 16, IC, OC, dev(a));
      EXPECT_TRUE(same_values(host(dw, all.size()), want))
          << (of_dout ? "dweight's dout" : "dweight's inp");
    }
  }
}

TEST_F(CudaFp8Test, MatmulForward) {
  for (const Shape& s : kShapes) {
    const size_t NI = size_t(s.N) * s.IC, NO = size_t(s.N) * s.OC, W = size_t(s.OC) * s.IC;
    const Bits inp = random_bits(NI, 10, -2.0f, 2.0f), w = random_bits(W, 11, -0.1f, 0.1f),
               b = random_bits(s.OC, 12), dout = random_bits(NO, 13);
    bf16_t *d_inp = dev(inp), *d_w = dev(w), *d_b = dev(b), *d_dout = dev(dout);
    const Amax a = amax_of(inp, w, dout, d_inp, d_w, d_dout);
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC
                                        << (with_bias ? " bias" : " no bias"));
      Bits want(NO);
      cpu->matmul_forward_fp8(want.data(), inp.data(), w.data(), with_bias ? b.data() : nullptr,
                              s.N, s.IC, s.OC, a.host.data());
      bf16_t* out = dev(to_bits(Vec(NO, 42.0f)));
      gpu->matmul_forward_fp8(out, d_inp, d_w, with_bias ? d_b : nullptr, s.N, s.IC, s.OC,
                              a.device);
      EXPECT_TRUE(rel_l2(host(out, NO), want)) << "out";
    }
  }
}

TEST_F(CudaFp8Test, MatmulBackwardAccumulatesDeterministically) {
  for (const Shape& s : kShapes) {
    const size_t NI = size_t(s.N) * s.IC, NO = size_t(s.N) * s.OC, W = size_t(s.OC) * s.IC;
    const Bits inp = random_bits(NI, 20), w = random_bits(W, 21, -0.1f, 0.1f),
               dout = random_bits(NO, 22, -1e-3f, 1e-3f);
    bf16_t *d_inp = dev(inp), *d_w = dev(w), *d_dout = dev(dout);
    const Amax a = amax_of(inp, w, dout, d_inp, d_w, d_dout);
    // Starting values of the size of each contribution, so that overwriting shows.
    const float gi = 1e-4f * std::sqrt(float(s.OC)), gw = 1e-3f * std::sqrt(float(s.N));
    const Bits dinp0 = to_bits(random_vec(NI, 23, -gi, gi));
    const Vec dw0 = random_vec(W, 24, -gw, gw), db0 = random_vec(s.OC, 25, -gw, gw);
    for (GradMode mode : {GradMode::accumulate, GradMode::overwrite}) {
      for (bool with_dbias : {true, false}) {
        SCOPED_TRACE(::testing::Message()
                     << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC
                     << (mode == GradMode::accumulate ? " accumulate" : " overwrite")
                     << (with_dbias ? " dbias" : " no dbias"));
        Bits want_dinp = dinp0;
        Vec want_dw = dw0, want_db = db0;
        cpu->matmul_backward_fp8(want_dinp.data(), want_dw.data(),
                                 with_dbias ? want_db.data() : nullptr, dout.data(), inp.data(),
                                 w.data(), s.N, s.IC, s.OC, a.host.data(), mode);
        Bits first_dinp;
        Vec first_dw, first_db;
        for (int run = 0; run < 2; ++run) {
          bf16_t* g_dinp = dev(dinp0);
          float *g_dw = dev(dw0), *g_db = dev(db0);
          gpu->matmul_backward_fp8(g_dinp, g_dw, with_dbias ? g_db : nullptr, d_dout, d_inp, d_w,
                                   s.N, s.IC, s.OC, a.device, mode);
          const Bits got_dinp = host(g_dinp, NI);
          const Vec got_dw = host(g_dw, W), got_db = host(g_db, s.OC);
          if (run == 0) {
            EXPECT_TRUE(rel_l2(got_dinp, want_dinp)) << "dinp";
            EXPECT_TRUE(rel_l2(got_dw, want_dw)) << "dweight";
            EXPECT_TRUE(rel_l2(got_db, want_db)) << "dbias";
            first_dinp = got_dinp;
            first_dw = got_dw;
            first_db = got_db;
          } else {
            EXPECT_TRUE(same_bits(got_dinp, first_dinp)) << "dinp, second run";
            EXPECT_TRUE(same_bits(got_dw, first_dw)) << "dweight, second run";
            EXPECT_TRUE(same_bits(got_db, first_db)) << "dbias, second run";
          }
        }
      }
    }
  }
}

// The zero-bubble split: the input gradient alone (dweight = dbias = nullptr), then the weight
// and bias gradients alone (dinp = nullptr); each leaves the others untouched and together they
// equal one call bit for bit.
TEST_F(CudaFp8Test, MatmulBackwardSplitsIntoInputAndWeightPasses) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC);
    const size_t NI = size_t(s.N) * s.IC, NO = size_t(s.N) * s.OC, W = size_t(s.OC) * s.IC;
    const Bits inp = random_bits(NI, 30), w = random_bits(W, 31), dout = random_bits(NO, 32);
    const Bits dinp0 = random_bits(NI, 33);
    const Vec dw0 = random_vec(W, 34), db0 = random_vec(s.OC, 35);
    bf16_t *d_inp = dev(inp), *d_w = dev(w), *d_dout = dev(dout);
    const Amax a = amax_of(inp, w, dout, d_inp, d_w, d_dout);
    bf16_t* whole_dinp = dev(dinp0);
    float *whole_dw = dev(dw0), *whole_db = dev(db0);
    gpu->matmul_backward_fp8(whole_dinp, whole_dw, whole_db, d_dout, d_inp, d_w, s.N, s.IC, s.OC,
                             a.device);
    bf16_t* split_dinp = dev(dinp0);
    float *split_dw = dev(dw0), *split_db = dev(db0);
    gpu->matmul_backward_fp8(split_dinp, nullptr, nullptr, d_dout, d_inp, d_w, s.N, s.IC, s.OC,
                             a.device);
    EXPECT_TRUE(same_bits(host(split_dw, W), dw0)) << "the input pass wrote dweight";
    EXPECT_TRUE(same_bits(host(split_db, s.OC), db0)) << "the input pass wrote dbias";
    // The input pass against the CPU's.
    Bits want_dinp = dinp0;
    cpu->matmul_backward_fp8(want_dinp.data(), nullptr, nullptr, dout.data(), inp.data(), w.data(),
                             s.N, s.IC, s.OC, a.host.data());
    EXPECT_TRUE(rel_l2(host(split_dinp, NI), want_dinp)) << "dinp alone";
    gpu->matmul_backward_fp8(nullptr, split_dw, split_db, d_dout, d_inp, d_w, s.N, s.IC, s.OC,
                             a.device);
    EXPECT_TRUE(same_bits(host(split_dinp, NI), host(whole_dinp, NI))) << "dinp";
    EXPECT_TRUE(same_bits(host(split_dw, W), host(whole_dw, W))) << "dweight";
    EXPECT_TRUE(same_bits(host(split_db, s.OC), host(whole_db, s.OC))) << "dbias";
    // The weight pass without a bias gradient against the CPU's.
    Vec want_dw = dw0;
    cpu->matmul_backward_fp8(nullptr, want_dw.data(), nullptr, dout.data(), inp.data(), w.data(),
                             s.N, s.IC, s.OC, a.host.data());
    float* dw_only = dev(dw0);
    gpu->matmul_backward_fp8(nullptr, dw_only, nullptr, d_dout, d_inp, d_w, s.N, s.IC, s.OC,
                             a.device);
    EXPECT_TRUE(rel_l2(host(dw_only, W), want_dw)) << "dweight alone";
  }
}

}  // namespace
}  // namespace triad
