// The CUDA backend's mixed-precision (bf16) ops against the CPU backend's bf16 ops (the literal
// form of backend.h's contract: widen, compute in fp32, round each bf16 output once). Both get
// the same bf16 inputs (random values rounded to bf16); the CUDA results are copied back and
// compared.
//  - Tolerance: ‖got − want‖₂ / ‖want‖₂ <= 1e-2 for bf16 outputs and for the fp32 outputs
//    computed from bf16 inputs (parameter gradients, LayerNorm statistics, losses, row
//    statistics, lse): one bf16 rounding is 2^-9 relative, and the two backends sum in
//    different orders (cuBLASLt / tensor cores, the flash kernels' bf16 probabilities).
//    Non-finite values must match exactly (e.g. −inf row maxima of an empty slice) and a NaN
//    or inf where the reference is finite fails.
//  - Backward ops start from gradient buffers that already hold values (of the size of the
//    gradient itself), so a kernel that overwrites instead of accumulating (+=) fails.
//  - Backward ops with reductions run twice on the GPU and must agree bit for bit.
// Every test skips when no CUDA device is usable (and in builds without CUDA, where this file
// compiles against the public headers only).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../support/attention_reference.h"
#include "../support/bf16_data.h"
#include "../support/cuda_test_fixture.h"
#include "../support/optimizer_step.h"
#include "../support/random_data.h"
#include "triad/core/bf16.h"
#include "triad/core/error.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

using Vec = std::vector<float>;
using triad::testing::Bits;
using triad::testing::optimizer_step;
using triad::testing::random_bits;
using triad::testing::to_bits;
using triad::testing::to_floats;
using IVec = std::vector<int32_t>;

using triad::testing::random_ints;
using triad::testing::random_vec;

constexpr double kTol = 1e-2;

double rms(const Vec& v) {
  double s = 0.0;
  for (float x : v) s += double(x) * double(x);
  return v.empty() ? 0.0 : std::sqrt(s / double(v.size()));
}

// Initial contents for an accumulated gradient whose contribution has RMS `scale`: uniform in
// [-scale, scale], so that overwriting instead of accumulating shows as an O(1) error.
Vec initial_grad(size_t n, uint32_t seed, double scale) {
  const float s = float(std::max(scale, 1e-3));
  return random_vec(n, seed, -s, s);
}
Bits initial_grad_bits(size_t n, uint32_t seed, double scale) {
  return to_bits(initial_grad(n, seed, scale));
}

// ‖got − want‖₂ / ‖want‖₂ <= tol (the absolute norm when want is all zero) over the finite
// entries of want; non-finite entries of want must be matched exactly, and got must be finite
// wherever want is.
::testing::AssertionResult close(const Vec& got, const Vec& want, double tol = kTol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  double diff2 = 0.0, ref2 = 0.0, worst = -1.0;
  size_t worst_at = 0, bad = 0, first_bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    if (!std::isfinite(w) || !std::isfinite(g)) {
      const bool same = g == w || (std::isnan(g) && std::isnan(w));
      if (!same && bad++ == 0) first_bad = i;
      continue;
    }
    diff2 += (g - w) * (g - w);
    ref2 += w * w;
    if (std::abs(g - w) > worst) {
      worst = std::abs(g - w);
      worst_at = i;
    }
  }
  if (bad > 0) {
    return ::testing::AssertionFailure()
           << bad << " of " << want.size()
           << " entries are non-finite in one result only; first at " << first_bad << ": got "
           << got[first_bad] << ", want " << want[first_bad];
  }
  const double err = ref2 > 0.0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << (ref2 > 0.0 ? "relative" : "absolute") << " error " << err << " > " << tol << " over "
         << want.size() << " entries; largest difference at " << worst_at << ": got "
         << got[worst_at] << ", want " << want[worst_at];
}

::testing::AssertionResult close(const Bits& got, const Bits& want, double tol = kTol) {
  return close(to_floats(got), to_floats(want), tol);
}

// Used both for determinism (two runs) and where the contract fixes the result bit for bit
// (GPU against CPU), so the message says where, not why.
::testing::AssertionResult bit_equal(const void* a, const void* b, size_t bytes) {
  if (bytes == 0 || std::memcmp(a, b, bytes) == 0) return ::testing::AssertionSuccess();
  const auto* x = static_cast<const unsigned char*>(a);
  const auto* y = static_cast<const unsigned char*>(b);
  size_t i = 0;
  while (x[i] == y[i]) ++i;
  return ::testing::AssertionFailure()
         << "not bit-identical: first difference at byte " << i << " of " << bytes;
}
::testing::AssertionResult bit_equal(const Bits& a, const Bits& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  return bit_equal(a.data(), b.data(), a.size() * sizeof(bf16_t));
}
::testing::AssertionResult bit_equal(const Vec& a, const Vec& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  return bit_equal(a.data(), b.data(), a.size() * sizeof(float));
}

// Columns [off, off + width) of every row of a row-major [rows, pitch] matrix.
template <typename V>
V columns(const V& m, size_t rows, size_t pitch, size_t off, size_t width) {
  V out;
  out.reserve(rows * width);
  for (size_t r = 0; r < rows; ++r)
    out.insert(out.end(), m.begin() + r * pitch + off, m.begin() + r * pitch + off + width);
  return out;
}

// One output of a backward op run twice on the GPU: in run 0 against the CPU's (and kept), in
// run 1 bit for bit against run 0's.
template <class V>
void check_run(int run, const V& got, const V& want, V& first, const char* what) {
  if (run == 0) {
    EXPECT_TRUE(close(got, want)) << what;
    first = got;
  } else {
    EXPECT_TRUE(bit_equal(got, first)) << what;
  }
}

TEST(CudaBf16NoDevice, MakeThrowsWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is available";
  EXPECT_THROW(make_cuda_backend(), Error);
}

struct CeShape;
class CudaBf16Test : public triad::testing::CudaVsCpuTest {
 protected:
  // The fused loss on bf16 logits [s.N, s.Vp] (capped already where softcap > 0) against the
  // CPU backend's: dlogits, losses and log Z.
  void expect_loss_matches_cpu(const CeShape& s, const Bits& logits, const IVec& targets,
                               float dloss_scale, float z_loss, float softcap);
};

// ---- memory and conversions ------------------------------------------------------------------

TEST_F(CudaBf16Test, ConvertRoundsToNearestEvenAndWidensExactly) {
  const float tiny = std::numeric_limits<float>::denorm_min();
  const float inf = std::numeric_limits<float>::infinity();
  // Ties (1 + 2^-8 → 1, 1 + 3·2^-8 → 1 + 2^-6), values just off a tie, signed zeros, a float
  // subnormal, the largest finite float (rounds to inf), ±inf, then random values of all
  // magnitudes.
  Vec src = {0.0f,
             -0.0f,
             1.0f,
             1.0f + 0x1p-8f,
             1.0f + 3 * 0x1p-8f,
             1.0f + 0x1p-8f + 0x1p-20f,
             -(1.0f + 0x1p-8f),
             3.14159265f,
             1e-40f,
             tiny,
             std::numeric_limits<float>::max(),
             inf,
             -inf};
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::uniform_int_distribution<int> expo(-30, 30);
  for (int i = 0; i < 1000; ++i)
    src.push_back((i % 2 ? -1.0f : 1.0f) * std::ldexp(mant(rng), expo(rng)));
  const size_t n = src.size();  // odd: the last bf16 shares its float with the padding

  Bits want(n);
  cpu->convert(want.data(), src.data(), n);
  bf16_t* d_bits = dev(Bits(n));
  gpu->convert(d_bits, dev(src), n);
  const Bits got = host(d_bits, n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(got[i].bits, to_bf16(src[i]).bits)
        << "float → bf16 of " << src[i] << " (index " << i << ")";
    EXPECT_EQ(got[i].bits, want[i].bits) << "CPU backend disagrees at index " << i;
  }
  // NaN stays NaN (the payload may differ).
  bf16_t* d_nan = dev(Bits(1));
  gpu->convert(d_nan, dev(Vec{std::numeric_limits<float>::quiet_NaN()}), 1);
  EXPECT_TRUE(std::isnan(to_float(host(d_nan, 1)[0])));

  // bf16 → float is exact, for every one of the 65536 patterns.
  Bits all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i].bits = uint16_t(i);
  float* d_wide = dev(Vec(all.size(), 7.0f));
  gpu->convert(d_wide, dev(all), all.size());
  const Vec wide = host(d_wide, all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    const float w = to_float(all[i]);
    if (std::isnan(w)) {
      EXPECT_TRUE(std::isnan(wide[i])) << "bf16 pattern " << i;
    } else {
      EXPECT_TRUE(std::memcmp(&wide[i], &w, sizeof w) == 0)
          << "bf16 pattern " << i << ": got " << wide[i] << ", want " << w;
    }
  }
}

// The squares of bf16 values (train.activations_every) in double: the CPU's sum within the sums'
// order, and the same bits run to run.
TEST_F(CudaBf16Test, SumSquaresOfBf16) {
  for (size_t n : {size_t{1}, size_t{257}, (size_t{1} << 22) + 3}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const Bits x = random_bits(n, 101, -3.0f, 3.0f);
    const double want = cpu->sum_squares(x.data(), n);
    bf16_t* d_x = dev(x);
    const double got = gpu->sum_squares(d_x, n);
    EXPECT_NEAR(got, want, 1e-12 * want);
    EXPECT_EQ(gpu->sum_squares(d_x, n), got);
  }
}

TEST_F(CudaBf16Test, AllocIsZeroedAndZeroClearsExactlyTheRange) {
  for (size_t n : {size_t{1}, size_t{7}, size_t{1001}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    bf16_t* fresh = gpu->alloc_bf16(n);
    ASSERT_NE(fresh, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(fresh) % 64, 0u);
    const Bits z = host(fresh, n);
    EXPECT_TRUE(std::all_of(z.begin(), z.end(), [](bf16_t b) { return b.bits == 0; }));
    gpu->synchronize();
    gpu->free_bf16(fresh);

    const Bits v = random_bits(n, 40, 1.0f, 2.0f);  // no zeros
    bf16_t* d = dev(v);
    if (n > 2) {
      gpu->zero(d + 1, n - 2);
      const Bits got = host(d, n);
      EXPECT_EQ(got[0].bits, v[0].bits);
      EXPECT_EQ(got[n - 1].bits, v[n - 1].bits);
      EXPECT_TRUE(
          std::all_of(got.begin() + 1, got.end() - 1, [](bf16_t b) { return b.bits == 0; }));
    } else {
      gpu->zero(d, n);
      const Bits got = host(d, n);
      EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](bf16_t b) { return b.bits == 0; }));
    }
  }
}

// ---- encoder ---------------------------------------------------------------------------------

struct EncShape {
  int B, T, C, V;
};
const EncShape kEncShapes[] = {{2, 5, 12, 7}, {4, 64, 768, 100}, {2, 33, 130, 50304}};

// Vocabulary-parallel form included: about a third of the tokens are < 0 (held by another rank);
// wpe / dwpe may be nullptr.
TEST_F(CudaBf16Test, EncoderForwardBackward) {
  for (const EncShape& s : kEncShapes) {
    const size_t N = size_t(s.B) * s.T;
    const IVec tokens = random_ints(N, 1, -s.V / 2 - 1, s.V);
    const Bits wte = random_bits(size_t(s.V) * s.C, 2), wpe = random_bits(size_t(s.T) * s.C, 3);
    const Bits dout = random_bits(N * s.C, 4);
    int32_t* d_tok = dev(tokens);
    bf16_t *d_wte = dev(wte), *d_wpe = dev(wpe), *d_dout = dev(dout);
    for (bool with_pos : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C
                                        << (with_pos ? " wpe" : " wpe == nullptr"));
      Bits want(N * s.C);
      cpu->encoder_forward(want.data(), tokens.data(), wte.data(), with_pos ? wpe.data() : nullptr,
                           s.B, s.T, s.C);
      bf16_t* out = dev(to_bits(Vec(N * s.C, 42.0f)));
      gpu->encoder_forward(out, d_tok, d_wte, with_pos ? d_wpe : nullptr, s.B, s.T, s.C);
      EXPECT_TRUE(bit_equal(host(out, N * s.C), want)) << "out: one fp32 add, rounded once";

      // Accumulation: the contributions per dwte row are sums of up to N values of size ~0.5.
      const Vec dwte0 = initial_grad(wte.size(), 5, 1.0), dwpe0 = initial_grad(wpe.size(), 6, 1.0);
      Vec dwte = dwte0, dwpe = dwpe0;
      cpu->encoder_backward(dwte.data(), with_pos ? dwpe.data() : nullptr, dout.data(),
                            tokens.data(), s.B, s.T, s.C);
      Vec first_wte, first_wpe;
      for (int run = 0; run < 2; ++run) {
        float *g_wte = dev(dwte0), *g_wpe = dev(dwpe0);
        gpu->encoder_backward(g_wte, with_pos ? g_wpe : nullptr, d_dout, d_tok, s.B, s.T, s.C);
        const Vec got_wte = host(g_wte, wte.size()), got_wpe = host(g_wpe, wpe.size());
        if (run == 0) {
          EXPECT_TRUE(close(got_wte, dwte)) << "dwte";
          EXPECT_TRUE(close(got_wpe, dwpe)) << "dwpe";
          if (!with_pos) {
            EXPECT_TRUE(bit_equal(got_wpe, dwpe0)) << "dwpe touched";
          }
          first_wte = got_wte;
          first_wpe = got_wpe;
        } else {
          EXPECT_TRUE(bit_equal(got_wte, first_wte)) << "dwte";
          EXPECT_TRUE(bit_equal(got_wpe, first_wpe)) << "dwpe";
        }
      }
    }
  }
}

// ---- layernorm -------------------------------------------------------------------------------

struct NCShape {
  int N, C;
};
// The last two have many rows: the parameter gradients' column sums then run in several row
// slices (20, and the maximum of 64 with a short last slice).
// {9, 300}: the block-per-row kernels; the others one warp per row, with 1 (C = 96, 40), 3
// (768), 7 (1600) and 8 (2048) vectors per lane.
const NCShape kLnShapes[] = {{9, 300}, {256, 768}, {5, 1600}, {8, 2048}, {5000, 96}, {17000, 40}};

TEST_F(CudaBf16Test, LayerNormForwardBackward) {
  for (const NCShape& s : kLnShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const size_t NC = size_t(s.N) * s.C;
    const Bits inp = random_bits(NC, 10, -2.0f, 3.0f);
    const Bits w = random_bits(s.C, 11, 0.5f, 1.5f), b = random_bits(s.C, 12);
    Bits out(NC);
    Vec mean(s.N), rstd(s.N);
    cpu->layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(),
                           s.N, s.C);
    bf16_t *d_inp = dev(inp), *d_w = dev(w), *d_b = dev(b);
    bf16_t* g_out = dev(Bits(NC));
    float *g_mean = dev(Vec(s.N)), *g_rstd = dev(Vec(s.N));
    gpu->layernorm_forward(g_out, g_mean, g_rstd, d_inp, d_w, d_b, s.N, s.C);
    EXPECT_TRUE(close(host(g_out, NC), out)) << "out";
    EXPECT_TRUE(close(host(g_mean, s.N), mean)) << "mean";
    EXPECT_TRUE(close(host(g_rstd, s.N), rstd)) << "rstd";

    // Backward from the CPU's statistics (identical inputs on both sides).
    const Bits dout = random_bits(NC, 13);
    Bits dinp_zero(NC);
    {
      Vec dw(s.C), db(s.C);
      cpu->layernorm_backward(dinp_zero.data(), dw.data(), db.data(), dout.data(), inp.data(),
                              w.data(), mean.data(), rstd.data(), s.N, s.C);
    }
    const Bits dinp0 = initial_grad_bits(NC, 14, rms(to_floats(dinp_zero)));
    const Vec dw0 = initial_grad(s.C, 15, std::sqrt(double(s.N))),
              db0 = initial_grad(s.C, 16, std::sqrt(double(s.N)));
    Bits dinp = dinp0;
    Vec dw = dw0, db = db0;
    cpu->layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                            mean.data(), rstd.data(), s.N, s.C);
    bf16_t* d_dout = dev(dout);
    float *d_mean = dev(mean), *d_rstd = dev(rstd);
    Bits first_dinp;
    Vec first_dw, first_db;
    for (int run = 0; run < 2; ++run) {
      bf16_t* g_dinp = dev(dinp0);
      float *g_dw = dev(dw0), *g_db = dev(db0);
      gpu->layernorm_backward(g_dinp, g_dw, g_db, d_dout, d_inp, d_w, d_mean, d_rstd, s.N, s.C);
      check_run(run, host(g_dinp, NC), dinp, first_dinp, "dinp");
      check_run(run, host(g_dw, s.C), dw, first_dw, "dweight");
      check_run(run, host(g_db, s.C), db, first_db, "dbias");
    }
  }
}

// RMSNorm (mean and bias null) in bf16: the warp-per-row kernels where C allows, the row kernels
// elsewhere; forward (residual form) and the accumulated backward, against the CPU.
TEST_F(CudaBf16Test, RmsNorm) {
  for (const NCShape& s : kLnShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const size_t NC = size_t(s.N) * s.C;
    const Bits a = random_bits(NC, 40, -2.0f, 3.0f), b = random_bits(NC, 41);
    const Bits w = random_bits(s.C, 42, 0.5f, 1.5f), dout = random_bits(NC, 43);
    Bits sum(NC), out(NC);
    Vec rstd(s.N);
    cpu->residual_layernorm_forward(sum.data(), out.data(), nullptr, rstd.data(), a.data(),
                                    b.data(), w.data(), nullptr, s.N, s.C);
    bf16_t *g_sum = dev(Bits(NC)), *g_out = dev(Bits(NC));
    float* g_rstd = dev(Vec(s.N));
    gpu->residual_layernorm_forward(g_sum, g_out, nullptr, g_rstd, dev(a), dev(b), dev(w), nullptr,
                                    s.N, s.C);
    EXPECT_TRUE(bit_equal(host(g_sum, NC), sum)) << "sum";
    EXPECT_TRUE(close(host(g_out, NC), out)) << "out";
    EXPECT_TRUE(close(host(g_rstd, s.N), rstd)) << "rstd";
    const Bits dinp0 = random_bits(NC, 44);
    const Vec dw0 = initial_grad(s.C, 45, std::sqrt(double(s.N)));
    Bits dinp = dinp0;
    Vec dw = dw0;
    cpu->layernorm_backward(dinp.data(), dw.data(), nullptr, dout.data(), sum.data(), w.data(),
                            nullptr, rstd.data(), s.N, s.C);
    bf16_t* g_dinp = dev(dinp0);
    float* g_dw = dev(dw0);
    gpu->layernorm_backward(g_dinp, g_dw, nullptr, dev(dout), dev(sum), dev(w), nullptr, dev(rstd),
                            s.N, s.C);
    EXPECT_TRUE(close(host(g_dinp, NC), dinp)) << "dinp";
    EXPECT_TRUE(close(host(g_dw, s.C), dw)) << "dweight";
  }
}

TEST_F(CudaBf16Test, ResidualLayerNormForward) {
  for (const NCShape& s : kLnShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const size_t NC = size_t(s.N) * s.C;
    const Bits a = random_bits(NC, 20, -2.0f, 3.0f), b = random_bits(NC, 21);
    const Bits w = random_bits(s.C, 22, 0.5f, 1.5f), bias = random_bits(s.C, 23);
    Bits sum(NC), out(NC);
    Vec mean(s.N), rstd(s.N);
    cpu->residual_layernorm_forward(sum.data(), out.data(), mean.data(), rstd.data(), a.data(),
                                    b.data(), w.data(), bias.data(), s.N, s.C);
    bf16_t *g_sum = dev(Bits(NC)), *g_out = dev(Bits(NC));
    float *g_mean = dev(Vec(s.N)), *g_rstd = dev(Vec(s.N));
    gpu->residual_layernorm_forward(g_sum, g_out, g_mean, g_rstd, dev(a), dev(b), dev(w), dev(bias),
                                    s.N, s.C);
    EXPECT_TRUE(bit_equal(host(g_sum, NC), sum)) << "sum: one fp32 add, rounded once";
    EXPECT_TRUE(close(host(g_out, NC), out)) << "out";
    EXPECT_TRUE(close(host(g_mean, s.N), mean)) << "mean";
    EXPECT_TRUE(close(host(g_rstd, s.N), rstd)) << "rstd";
  }
}

// Another epsilon (model.norm_eps): rows whose mean square is near it, through the warp-per-row
// kernels (C a multiple of 8) and the block-per-row ones, LayerNorm and RMSNorm.
TEST_F(CudaBf16Test, NormsTakeTheirEpsilon) {
  const float eps = 1e-6f;
  for (const NCShape& s : kLnShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const size_t NC = size_t(s.N) * s.C;
    const Bits a = random_bits(NC, 50, -2e-3f, 2e-3f), b = random_bits(NC, 51, -1e-3f, 1e-3f);
    const Bits w = random_bits(s.C, 52, 0.5f, 1.5f), bias = random_bits(s.C, 53);
    for (const bool rms : {false, true}) {
      Bits sum(NC), out(NC);
      Vec mean(s.N), rstd(s.N);
      cpu->residual_layernorm_forward(sum.data(), out.data(), rms ? nullptr : mean.data(),
                                      rstd.data(), a.data(), b.data(), w.data(),
                                      rms ? nullptr : bias.data(), s.N, s.C, eps);
      bf16_t *g_sum = dev(Bits(NC)), *g_out = dev(Bits(NC));
      float *g_mean = dev(Vec(s.N)), *g_rstd = dev(Vec(s.N));
      gpu->residual_layernorm_forward(g_sum, g_out, rms ? nullptr : g_mean, g_rstd, dev(a), dev(b),
                                      dev(w), rms ? nullptr : dev(bias), s.N, s.C, eps);
      EXPECT_TRUE(close(host(g_out, NC), out)) << "out rms=" << rms;
      EXPECT_TRUE(close(host(g_rstd, s.N), rstd)) << "rstd rms=" << rms;
    }
  }
}

// ---- matmul ----------------------------------------------------------------------------------

struct MmShape {
  int N, IC, OC;
};
// Aligned GPT-2 shapes, odd sizes (no vector alignment anywhere) and a single row.
const MmShape kMmShapes[] = {{64, 96, 128},
                             {256, 768, 2304},
                             {37, 29, 45},
                             {1, 64, 24},
                             {6000, 64, 72}};  // many rows: the bias sum in row slices

TEST_F(CudaBf16Test, MatmulForward) {
  for (const MmShape& s : kMmShapes) {
    const size_t NI = size_t(s.N) * s.IC, NO = size_t(s.N) * s.OC;
    const Bits inp = random_bits(NI, 20), w = random_bits(size_t(s.OC) * s.IC, 21),
               b = random_bits(s.OC, 22);
    bf16_t *d_inp = dev(inp), *d_w = dev(w), *d_b = dev(b);
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC
                                        << (with_bias ? " bias" : " bias == nullptr"));
      Bits want(NO);
      cpu->matmul_forward(want.data(), inp.data(), w.data(), with_bias ? b.data() : nullptr, s.N,
                          s.IC, s.OC);
      bf16_t* out = dev(to_bits(Vec(NO, 42.0f)));
      gpu->matmul_forward(out, d_inp, d_w, with_bias ? d_b : nullptr, s.N, s.IC, s.OC);
      EXPECT_TRUE(close(host(out, NO), want)) << "out";
    }
  }
}

TEST_F(CudaBf16Test, MatmulBackwardAccumulatesDeterministically) {
  for (const MmShape& s : kMmShapes) {
    const size_t NI = size_t(s.N) * s.IC, NO = size_t(s.N) * s.OC, W = size_t(s.OC) * s.IC;
    const Bits inp = random_bits(NI, 30), w = random_bits(W, 31), dout = random_bits(NO, 32);
    bf16_t *d_inp = dev(inp), *d_w = dev(w), *d_dout = dev(dout);
    // Contribution sizes: dinp ~ sqrt(OC)/3, dweight ~ sqrt(N)/3, dbias ~ sqrt(N)/sqrt(3).
    const Bits dinp0 = initial_grad_bits(NI, 33, std::sqrt(double(s.OC)) / 3);
    const Vec dw0 = initial_grad(W, 34, std::sqrt(double(s.N)) / 3);
    const Vec db0 = initial_grad(s.OC, 35, std::sqrt(double(s.N)) / 2);
    for (bool with_dinp : {true, false}) {
      for (bool with_dbias : {true, false}) {
        SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC
                                          << (with_dinp ? " dinp" : " dinp == nullptr")
                                          << (with_dbias ? " dbias" : " dbias == nullptr"));
        Bits dinp = dinp0;
        Vec dw = dw0, db = db0;
        cpu->matmul_backward(with_dinp ? dinp.data() : nullptr, dw.data(),
                             with_dbias ? db.data() : nullptr, dout.data(), inp.data(), w.data(),
                             s.N, s.IC, s.OC);
        Bits first_dinp;
        Vec first_dw, first_db;
        for (int run = 0; run < 2; ++run) {
          bf16_t* g_dinp = dev(dinp0);
          float *g_dw = dev(dw0), *g_db = dev(db0);
          gpu->matmul_backward(with_dinp ? g_dinp : nullptr, g_dw, with_dbias ? g_db : nullptr,
                               d_dout, d_inp, d_w, s.N, s.IC, s.OC);
          const Bits got_dinp = host(g_dinp, NI);
          const Vec got_dw = host(g_dw, W), got_db = host(g_db, s.OC);
          check_run(run, got_dinp, dinp, first_dinp, "dinp");
          check_run(run, got_dw, dw, first_dw, "dweight");
          check_run(run, got_db, db, first_db, "dbias");
          if (!with_dinp) {
            EXPECT_TRUE(bit_equal(got_dinp, dinp0)) << "dinp touched";
          }
          if (!with_dbias) {
            EXPECT_TRUE(bit_equal(got_db, db0)) << "dbias touched";
          }
        }
      }
    }
  }
}

// The zero-bubble split on the GPU: the input gradient alone, then the weight and bias gradients
// (dinp null), bit for bit what one call forms, for the plain layer and the one through the GELU
// (its dGELU epilogue with no weight gradient after it).
TEST_F(CudaBf16Test, MatmulBackwardSplitsIntoInputAndWeightPasses) {
  for (const MmShape& s : kMmShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC);
    const size_t NI = size_t(s.N) * s.IC, NO = size_t(s.N) * s.OC, W = size_t(s.OC) * s.IC;
    const Bits inp = random_bits(NI, 40), w = random_bits(W, 41), dout = random_bits(NO, 42);
    const Bits dinp0 = initial_grad_bits(NI, 43, std::sqrt(double(s.OC)) / 3);
    const Vec dw0 = initial_grad(W, 44, std::sqrt(double(s.N)) / 3);
    const Vec db0 = initial_grad(s.OC, 45, std::sqrt(double(s.N)) / 2);
    bf16_t *d_inp = dev(inp), *d_w = dev(w), *d_dout = dev(dout);
    bf16_t* whole_dinp = dev(dinp0);
    float *whole_dw = dev(dw0), *whole_db = dev(db0);
    gpu->matmul_backward(whole_dinp, whole_dw, whole_db, d_dout, d_inp, d_w, s.N, s.IC, s.OC);
    bf16_t* split_dinp = dev(dinp0);
    float *split_dw = dev(dw0), *split_db = dev(db0);
    gpu->matmul_backward(split_dinp, nullptr, nullptr, d_dout, d_inp, d_w, s.N, s.IC, s.OC);
    EXPECT_TRUE(bit_equal(host(split_dw, W), dw0)) << "the input pass wrote dweight";
    EXPECT_TRUE(bit_equal(host(split_db, s.OC), db0)) << "the input pass wrote dbias";
    gpu->matmul_backward(nullptr, split_dw, split_db, d_dout, d_inp, d_w, s.N, s.IC, s.OC);
    EXPECT_TRUE(bit_equal(host(split_dinp, NI), host(whole_dinp, NI))) << "dinp";
    EXPECT_TRUE(bit_equal(host(split_dw, W), host(whole_dw, W))) << "dweight";
    EXPECT_TRUE(bit_equal(host(split_db, s.OC), host(whole_db, s.OC))) << "dbias";

    // Through the GELU: act = gelu(pre) is the layer's input.
    const Bits pre = random_bits(NI, 46);
    Bits act(NI);
    cpu->gelu_forward(act.data(), pre.data(), NI);
    bf16_t *d_pre = dev(pre), *d_act = dev(act);
    bf16_t *whole_dpre = dev(Bits(NI)), *split_dpre = dev(Bits(NI)), *dact = dev(Bits(NI));
    float *gw = dev(dw0), *gb = dev(db0), *sw = dev(dw0), *sb = dev(db0);
    gpu->matmul_backward_gelu(whole_dpre, dact, gw, gb, d_dout, d_act, d_pre, d_w, s.N, s.IC, s.OC,
                              GradMode::overwrite);
    gpu->matmul_backward_gelu(split_dpre, dact, nullptr, nullptr, d_dout, d_act, d_pre, d_w, s.N,
                              s.IC, s.OC, GradMode::overwrite);
    EXPECT_TRUE(bit_equal(host(sw, W), dw0)) << "the input pass wrote dweight (gelu)";
    EXPECT_TRUE(bit_equal(host(sb, s.OC), db0)) << "the input pass wrote dbias (gelu)";
    gpu->matmul_backward(nullptr, sw, sb, d_dout, d_act, d_w, s.N, s.IC, s.OC);
    EXPECT_TRUE(bit_equal(host(split_dpre, NI), host(whole_dpre, NI))) << "dpre";
    EXPECT_TRUE(bit_equal(host(sw, W), host(gw, W))) << "dweight (gelu)";
    EXPECT_TRUE(bit_equal(host(sb, s.OC), host(gb, s.OC))) << "dbias (gelu)";
  }
}

// A bias gradient alone (the column sums the FFN's first layer gets when no epilogue forms it).
TEST_F(CudaBf16Test, BiasBackwardAccumulatesDeterministically) {
  for (const MmShape& s : kMmShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " OC=" << s.OC);
    const Bits dout = random_bits(size_t(s.N) * s.OC, 36);
    const Vec db0 = initial_grad(s.OC, 37, std::sqrt(double(s.N)) / 2);
    Vec db = db0;
    cpu->bias_backward(db.data(), dout.data(), s.N, s.OC);
    bf16_t* d_dout = dev(dout);
    float *g_a = dev(db0), *g_b = dev(db0);
    gpu->bias_backward(g_a, d_dout, s.N, s.OC);
    gpu->bias_backward(g_b, d_dout, s.N, s.OC);
    const Vec a = host(g_a, s.OC);
    EXPECT_TRUE(close(a, db));
    EXPECT_TRUE(bit_equal(a, host(g_b, s.OC)));
  }
}

// OC a multiple of 8 takes cuBLASLt's GELU_AUX(_BIAS) epilogue, other OC the two-op fallback.
TEST_F(CudaBf16Test, MatmulGeluForward) {
  const MmShape shapes[] = {{64, 96, 64}, {256, 768, 3072}, {37, 48, 36}, {5, 29, 45}};
  for (const MmShape& s : shapes) {
    const size_t NI = size_t(s.N) * s.IC, NO = size_t(s.N) * s.OC;
    // Inputs large enough that pre covers the whole curved part of GELU.
    const Bits inp = random_bits(NI, 40), w = random_bits(size_t(s.OC) * s.IC, 41, -0.5f, 0.5f),
               b = random_bits(s.OC, 42);
    bf16_t *d_inp = dev(inp), *d_w = dev(w), *d_b = dev(b);
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC
                                        << (with_bias ? " bias" : " bias == nullptr"));
      Bits pre(NO), out(NO);
      cpu->matmul_gelu_forward(pre.data(), out.data(), inp.data(), w.data(),
                               with_bias ? b.data() : nullptr, s.N, s.IC, s.OC);
      bf16_t* g_pre = dev(to_bits(Vec(NO, 42.0f)));
      bf16_t* g_out = dev(to_bits(Vec(NO, 42.0f)));
      gpu->matmul_gelu_forward(g_pre, g_out, d_inp, d_w, with_bias ? d_b : nullptr, s.N, s.IC,
                               s.OC);
      EXPECT_TRUE(close(host(g_pre, NO), pre)) << "pre";
      EXPECT_TRUE(close(host(g_out, NO), out)) << "out";
    }
  }
}

// The FFN's second layer backward through the GELU (on the GPU: the DGELU epilogue where IC is a
// multiple of 8, the two ops elsewhere), against the CPU's two ops: dpre overwritten, dweight and
// dbias accumulated (dbias by the dW product's BGRADB epilogue unless cuBLASLt declines it, which
// stderr then says). Run twice: bit-identical.
TEST_F(CudaBf16Test, MatmulBackwardGelu) {
  const MmShape shapes[] = {{64, 96, 64}, {256, 3072, 768}, {37, 48, 36}, {5, 45, 29}, {3, 64, 40}};
  for (const MmShape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC);
    const size_t NI = size_t(s.N) * s.IC, NO = size_t(s.N) * s.OC, W = size_t(s.OC) * s.IC;
    // pre beyond ±3: GELU's saturated tails too.
    const Bits pre = random_bits(NI, 80, -4.0f, 4.0f), dout = random_bits(NO, 81),
               w = random_bits(W, 82, -0.5f, 0.5f);
    Bits act(NI);
    cpu->gelu_forward(act.data(), pre.data(), NI);
    const Vec dw0 = initial_grad(W, 83, std::sqrt(double(s.N)) / 3);
    const Vec db0 = initial_grad(s.OC, 84, std::sqrt(double(s.N)) / 2);
    Bits dpre(NI), dact(NI);
    Vec dw = dw0, db = db0;
    cpu->matmul_backward_gelu(dpre.data(), dact.data(), dw.data(), db.data(), dout.data(),
                              act.data(), pre.data(), w.data(), s.N, s.IC, s.OC,
                              GradMode::overwrite);
    Bits first_dpre;
    Vec first_dw, first_db;
    for (int run = 0; run < 2; ++run) {
      bf16_t* g_dpre = dev(to_bits(Vec(NI, 42.0f)));
      bf16_t* g_dact = dev(to_bits(Vec(NI, 42.0f)));
      float* g_dw = dev(dw0);
      float* g_db = dev(db0);
      gpu->matmul_backward_gelu(g_dpre, g_dact, g_dw, g_db, dev(dout), dev(act), dev(pre), dev(w),
                                s.N, s.IC, s.OC, GradMode::overwrite);
      check_run(run, host(g_dpre, NI), dpre, first_dpre, "dpre");
      check_run(run, host(g_dw, W), dw, first_dw, "dweight");
      check_run(run, host(g_db, size_t(s.OC)), db, first_db, "dbias");
      if (run == 0) {
        // The DGELU epilogue never writes dact; the two-op fallback does. Not a failure either
        // way: the log says which path this GPU's cuBLASLt took.
        const Bits dact_after = host(g_dact, NI);
        std::printf("MatmulBackwardGelu N=%d IC=%d OC=%d: %s\n", s.N, s.IC, s.OC,
                    bit_equal(dact_after, to_bits(Vec(NI, 42.0f))) ? "DGELU epilogue" : "two ops");
      }
    }
  }
}

// ---- attention -------------------------------------------------------------------------------

struct AttShape {
  int B, T, NH, hd, NKV;
};
// hd 64 / 128 / 192: the flash kernels, with partial 64-row tiles (T = 100) and a single token;
// hd 16 and 32: the fp32 fallback. NKV < NH: grouped-query attention (the flash kernels read the
// key/value heads in place, the fallback expands them), multi-query (NKV = 1) among them.
const AttShape kAttShapes[] = {{2, 100, 2, 64, 2}, {1, 100, 2, 128, 2}, {1, 100, 2, 192, 1},
                               {1, 1, 2, 64, 2},   {2, 256, 4, 64, 4},  {2, 37, 3, 16, 3},
                               {1, 100, 2, 32, 2}, {2, 100, 4, 64, 2},  {1, 100, 4, 128, 1},
                               {1, 1, 4, 64, 2},   {2, 37, 4, 16, 2},   {1, 33, 4, 16, 1}};

TEST_F(CudaBf16Test, AttentionForwardBackward) {
  for (const AttShape& s : kAttShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " NH=" << s.NH
                                      << " hd=" << s.hd << " NKV=" << s.NKV);
    const int C = s.NH * s.hd, W = qkv_width(C, s.NH, s.NKV);
    const size_t rows = size_t(s.B) * s.T, BTC = rows * C, BTW = rows * W;
    const size_t L = size_t(s.B) * s.NH * s.T;
    // Scores of a few units: softmax neither uniform nor one-hot.
    const Bits qkv = random_bits(BTW, 50, -1.5f, 1.5f);
    Bits out(BTC);
    Vec lse(L);
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, C, s.NH, s.NKV);
    bf16_t* d_qkv = dev(qkv);
    bf16_t* g_out = dev(to_bits(Vec(BTC, 42.0f)));
    float* g_lse = dev(Vec(L, 42.0f));
    gpu->attention_forward(g_out, g_lse, d_qkv, s.B, s.T, C, s.NH, s.NKV);
    EXPECT_TRUE(close(host(g_out, BTC), out)) << "out";
    EXPECT_TRUE(close(host(g_lse, L), lse)) << "lse";

    // Backward from the CPU forward's out and lse (identical inputs on both sides). First from
    // zero, each of dq, dk, dv on its own; then accumulating onto values of the same size.
    const Bits dout = random_bits(BTC, 51);
    bf16_t *d_dout = dev(dout), *d_out = dev(out);
    float* d_lse = dev(lse);
    Bits fresh(BTW);
    cpu->attention_backward(fresh.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            C, s.NH, s.NKV);
    bf16_t* g_fresh = dev(Bits(BTW));
    gpu->attention_backward(g_fresh, d_dout, d_qkv, d_out, d_lse, s.B, s.T, C, s.NH, s.NKV);
    const Bits got_fresh = host(g_fresh, BTW);
    const char* names[] = {"dq", "dk", "dv"};
    const size_t kv_width = size_t(W - C) / 2;
    const size_t offsets[] = {0, size_t(C), size_t(C) + kv_width};
    const size_t widths[] = {size_t(C), kv_width, kv_width};
    for (int part = 0; part < 3; ++part) {
      EXPECT_TRUE(close(columns(got_fresh, rows, size_t(W), offsets[part], widths[part]),
                        columns(fresh, rows, size_t(W), offsets[part], widths[part])))
          << names[part] << " (from zero)";
    }

    const Bits dqkv0 = initial_grad_bits(BTW, 52, rms(to_floats(fresh)));
    Bits dqkv = dqkv0;
    cpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            C, s.NH, s.NKV);
    Bits first;
    for (int run = 0; run < 2; ++run) {
      bf16_t* g_dqkv = dev(dqkv0);
      gpu->attention_backward(g_dqkv, d_dout, d_qkv, d_out, d_lse, s.B, s.T, C, s.NH, s.NKV);
      const Bits got = host(g_dqkv, BTW);
      if (run == 0) {
        EXPECT_TRUE(close(got, dqkv)) << "dqkv (accumulated)";
        first = got;
      } else {
        EXPECT_TRUE(bit_equal(got, first)) << "dqkv";
      }
    }
  }
}

// Document masks (key_begin) against the CPU backend: the flash kernels (hd 64 and 128, documents
// long enough that whole tiles are skipped, grouped-query heads) and the fp32 fallback (hd 16).
TEST_F(CudaBf16Test, AttentionDocumentMask) {
  const AttShape shapes[] = {{2, 300, 2, 64, 2}, {1, 200, 4, 128, 2}, {2, 37, 3, 16, 3}};
  for (const AttShape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " NH=" << s.NH
                                      << " hd=" << s.hd << " NKV=" << s.NKV);
    std::vector<std::vector<int>> starts = {{0, 1, 30, 63, 64, 65, 200, 299}, {0, 130}};
    for (auto& seq : starts)
      seq.erase(std::remove_if(seq.begin(), seq.end(), [&](int t) { return t >= s.T; }), seq.end());
    const std::vector<int32_t> kb = attention_reference::key_begin_of_starts(s.B, s.T, starts);
    const int C = s.NH * s.hd, W = qkv_width(C, s.NH, s.NKV);
    const size_t rows = size_t(s.B) * s.T, BTC = rows * C, BTW = rows * W;
    const size_t L = size_t(s.B) * s.NH * s.T;
    const Bits qkv = random_bits(BTW, 80, -1.5f, 1.5f), dout = random_bits(BTC, 81);
    Bits out(BTC), dqkv(BTW);
    Vec lse(L);
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, C, s.NH, s.NKV, kb.data());
    cpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            C, s.NH, s.NKV, GradMode::overwrite, kb.data());
    const int32_t* g_kb = dev(kb);
    bf16_t* d_qkv = dev(qkv);
    bf16_t* g_out = dev(to_bits(Vec(BTC, 42.0f)));
    float* g_lse = dev(Vec(L, 42.0f));
    gpu->attention_forward(g_out, g_lse, d_qkv, s.B, s.T, C, s.NH, s.NKV, g_kb);
    EXPECT_TRUE(close(host(g_out, BTC), out)) << "out";
    EXPECT_TRUE(close(host(g_lse, L), lse)) << "lse";
    bf16_t* g_dqkv = dev(to_bits(Vec(BTW, 42.0f)));
    gpu->attention_backward(g_dqkv, dev(dout), d_qkv, dev(out), dev(lse), s.B, s.T, C, s.NH, s.NKV,
                            GradMode::overwrite, g_kb);
    EXPECT_TRUE(close(host(g_dqkv, BTW), dqkv)) << "dqkv";
  }
}

// Another score scale (model.attn_scale: μP's 1/hd, and 0.3) and soft-capped scores
// (model.attn_softcap: 1, and 0.5 with the scale 0.3) against the CPU backend: the flash kernels
// (hd 64, 128; grouped queries), the fp32 fallback (hd 16) and the decoding kernel.
TEST_F(CudaBf16Test, AttentionOtherScalesAndSoftCaps) {
  const AttShape shapes[] = {{2, 100, 2, 64, 2}, {1, 130, 4, 128, 2}, {2, 37, 3, 16, 3}};
  for (const AttShape& s : shapes)
    for (auto [scale, cap] : {std::pair{1.0f / float(s.hd), 0.0f}, std::pair{0.3f, 0.0f},
                              std::pair{0.0f, 1.0f}, std::pair{0.3f, 0.5f}}) {
      SCOPED_TRACE(::testing::Message()
                   << "B=" << s.B << " T=" << s.T << " NH=" << s.NH << " hd=" << s.hd
                   << " NKV=" << s.NKV << " scale " << scale << " cap " << cap);
      const int C = s.NH * s.hd, W = qkv_width(C, s.NH, s.NKV);
      const size_t rows = size_t(s.B) * s.T, BTC = rows * C, BTW = rows * W;
      const size_t L = size_t(s.B) * s.NH * s.T;
      const Bits qkv = random_bits(BTW, 82, -1.5f, 1.5f), dout = random_bits(BTC, 83);
      Bits out(BTC), dqkv(BTW), dec(size_t(s.B) * C);
      Vec lse(L);
      cpu->attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, C, s.NH, s.NKV, nullptr,
                             {}, scale, cap);
      cpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B,
                              s.T, C, s.NH, s.NKV, GradMode::overwrite, nullptr, {}, scale, cap);
      cpu->attention_decode(dec.data(), qkv.data(), s.B, s.T, s.T - 1, 1, C, s.NH, s.NKV, 0, scale,
                            cap);
      bf16_t* d_qkv = dev(qkv);
      bf16_t* g_out = dev(to_bits(Vec(BTC, 42.0f)));
      float* g_lse = dev(Vec(L, 42.0f));
      gpu->attention_forward(g_out, g_lse, d_qkv, s.B, s.T, C, s.NH, s.NKV, nullptr, {}, scale,
                             cap);
      EXPECT_TRUE(close(host(g_out, BTC), out)) << "out";
      EXPECT_TRUE(close(host(g_lse, L), lse)) << "lse";
      bf16_t* g_dqkv = dev(to_bits(Vec(BTW, 42.0f)));
      gpu->attention_backward(g_dqkv, dev(dout), d_qkv, dev(out), dev(lse), s.B, s.T, C, s.NH,
                              s.NKV, GradMode::overwrite, nullptr, {}, scale, cap);
      EXPECT_TRUE(close(host(g_dqkv, BTW), dqkv)) << "dqkv";
      bf16_t* g_dec = dev(to_bits(Vec(size_t(s.B) * C, 42.0f)));
      gpu->attention_decode(g_dec, d_qkv, s.B, s.T, s.T - 1, 1, C, s.NH, s.NKV, 0, scale, cap);
      EXPECT_TRUE(close(host(g_dec, size_t(s.B) * C), dec)) << "decode";
    }
}

// Attention sinks (model.attn_sinks) against the CPU backend: the flash kernels followed by the
// sinks' correction (hd 64, 128; grouped queries; a query range with dropout), the fp32 fallback
// (hd 16, whose softmax has them), the decoding kernel, and the sinks' gradient (accumulated).
TEST_F(CudaBf16Test, AttentionSinks) {
  struct Case {
    AttShape s;
    QueryRows rows;
    bool drop;
  };
  const Case cases[] = {{{2, 100, 2, 64, 2}, {}, false},
                        {{1, 130, 4, 128, 2}, {}, false},
                        {{2, 37, 3, 16, 3}, {}, false},
                        {{2, 256, 2, 64, 1}, {128, 128}, true}};
  for (const Case& c : cases) {
    const AttShape& s = c.s;
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " NH=" << s.NH << " hd="
                                      << s.hd << " NKV=" << s.NKV << " rows " << c.rows.first
                                      << " + " << c.rows.count << (c.drop ? " dropout" : ""));
    const int n = c.rows.whole(s.T) ? s.T : c.rows.count;
    const int C = s.NH * s.hd, W = qkv_width(C, s.NH, s.NKV);
    const size_t BnC = size_t(s.B) * n * C, BTW = size_t(s.B) * s.T * W;
    const size_t L = size_t(s.B) * s.NH * n;
    const std::vector<int32_t> keys = attention_reference::dropout_row_keys(s.B, s.T, 13, 2);
    const AttentionDropout drop =
        c.drop ? AttentionDropout{keys.data(), 0.2f, 1, 0, 0} : AttentionDropout{};
    Vec zf(size_t(s.NH));
    for (int h = 0; h < s.NH; ++h) zf[size_t(h)] = 1.5f * float(h) - 1.0f;
    const Bits z = to_bits(zf);
    const Bits qkv = random_bits(BTW, 86, -1.5f, 1.5f), dout = random_bits(BnC, 87);
    Bits out(BnC), dqkv(BTW), dec(size_t(s.B) * C);
    Vec lse(L), dz(size_t(s.NH), 0.5f);
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, C, s.NH, s.NKV, nullptr,
                           c.rows, 0.0f, 0.0f, drop, z.data());
    cpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            C, s.NH, s.NKV, GradMode::overwrite, nullptr, c.rows, 0.0f, 0.0f, drop,
                            z.data(), dz.data());
    const AttentionDropout g_drop =
        c.drop ? AttentionDropout{dev(keys), 0.2f, 1, 0, 0} : AttentionDropout{};
    bf16_t* d_qkv = dev(qkv);
    bf16_t* d_z = dev(z);
    bf16_t* g_out = dev(to_bits(Vec(BnC, 42.0f)));
    float* g_lse = dev(Vec(L, 42.0f));
    gpu->attention_forward(g_out, g_lse, d_qkv, s.B, s.T, C, s.NH, s.NKV, nullptr, c.rows, 0.0f,
                           0.0f, g_drop, d_z);
    EXPECT_TRUE(close(host(g_out, BnC), out)) << "out";
    EXPECT_TRUE(close(host(g_lse, L), lse)) << "lse";
    bf16_t* g_dqkv = dev(to_bits(Vec(BTW, 42.0f)));
    float* g_dz = dev(Vec(size_t(s.NH), 0.5f));
    gpu->attention_backward(g_dqkv, dev(dout), d_qkv, dev(out), dev(lse), s.B, s.T, C, s.NH, s.NKV,
                            GradMode::overwrite, nullptr, c.rows, 0.0f, 0.0f, g_drop, d_z, g_dz);
    EXPECT_TRUE(close(host(g_dqkv, BTW), dqkv)) << "dqkv";
    EXPECT_TRUE(close(host(g_dz, size_t(s.NH)), dz)) << "dsinks";
    if (c.rows.whole(s.T)) {
      cpu->attention_decode(dec.data(), qkv.data(), s.B, s.T, s.T - 1, 1, C, s.NH, s.NKV, 0, 0.0f,
                            0.0f, z.data());
      bf16_t* g_dec = dev(to_bits(Vec(size_t(s.B) * C, 42.0f)));
      gpu->attention_decode(g_dec, d_qkv, s.B, s.T, s.T - 1, 1, C, s.NH, s.NKV, 0, 0.0f, 0.0f, d_z);
      EXPECT_TRUE(close(host(g_dec, size_t(s.B) * C), dec)) << "decode";
    }
  }
}

// Attention dropout (train.attention_dropout): the bf16 ops against the CPU backend's, hd 64 and
// 128 (the flash kernels' dropout variants), grouped queries, head 0 at global head 1 or a
// tensor-parallel grouped mapping, a query range (context parallelism: the queries' positions
// key the mask), and soft-capped scores (the fp32 path, which drops those).
TEST_F(CudaBf16Test, AttentionDropout) {
  struct Case {
    AttShape s;
    QueryRows rows;
    int kv_heads;  // AttentionDropout's (0: head0 + h)
    float cap;
  };
  const Case cases[] = {{{2, 100, 2, 64, 2}, {}, 0, 0.0f},
                        {{1, 130, 4, 128, 2}, {}, 0, 0.0f},
                        {{1, 130, 4, 64, 2}, {}, 4, 0.0f},
                        {{2, 256, 2, 64, 2}, {128, 128}, 0, 0.0f},
                        {{1, 100, 2, 64, 2}, {}, 0, 0.5f}};
  for (const Case& c : cases) {
    const AttShape& s = c.s;
    SCOPED_TRACE(::testing::Message()
                 << "B=" << s.B << " T=" << s.T << " NH=" << s.NH << " hd=" << s.hd
                 << " NKV=" << s.NKV << " rows " << c.rows.first << " + " << c.rows.count
                 << " kv_heads " << c.kv_heads << " cap " << c.cap);
    const int n = c.rows.whole(s.T) ? s.T : c.rows.count;
    const int C = s.NH * s.hd, W = qkv_width(C, s.NH, s.NKV);
    const size_t BnC = size_t(s.B) * n * C, BTW = size_t(s.B) * s.T * W;
    const size_t L = size_t(s.B) * s.NH * n;
    const std::vector<int32_t> keys = attention_reference::dropout_row_keys(s.B, s.T, 11, 3);
    const AttentionDropout drop{keys.data(), 0.2f, 1, 1, c.kv_heads};
    const Bits qkv = random_bits(BTW, 84, -1.5f, 1.5f), dout = random_bits(BnC, 85);
    Bits out(BnC), dqkv(BTW);
    Vec lse(L);
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, C, s.NH, s.NKV, nullptr,
                           c.rows, 0.0f, c.cap, drop);
    cpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            C, s.NH, s.NKV, GradMode::overwrite, nullptr, c.rows, 0.0f, c.cap,
                            drop);
    const AttentionDropout g_drop{dev(keys), drop.p, drop.layer, drop.head0, drop.kv_heads};
    bf16_t* d_qkv = dev(qkv);
    bf16_t* g_out = dev(to_bits(Vec(BnC, 42.0f)));
    float* g_lse = dev(Vec(L, 42.0f));
    gpu->attention_forward(g_out, g_lse, d_qkv, s.B, s.T, C, s.NH, s.NKV, nullptr, c.rows, 0.0f,
                           c.cap, g_drop);
    EXPECT_TRUE(close(host(g_out, BnC), out)) << "out";
    EXPECT_TRUE(close(host(g_lse, L), lse)) << "lse";
    bf16_t* g_dqkv = dev(to_bits(Vec(BTW, 42.0f)));
    gpu->attention_backward(g_dqkv, dev(dout), d_qkv, dev(out), dev(lse), s.B, s.T, C, s.NH, s.NKV,
                            GradMode::overwrite, nullptr, c.rows, 0.0f, c.cap, g_drop);
    EXPECT_TRUE(close(host(g_dqkv, BTW), dqkv)) << "dqkv";
  }
}

// Query ranges (QueryRows, context parallelism) against the CPU backend's: the flash kernels for
// an early and a late piece of whole tiles, with a document mask and grouped-query heads, hd 64
// and 128; the backward overwriting (rows the range does not reach become zero) and accumulating.
TEST_F(CudaBf16Test, AttentionQueryRows) {
  struct Case {
    AttShape s;
    QueryRows rows;
    bool masked;
  };
  const Case cases[] = {{{2, 256, 2, 64, 2}, {64, 64}, false},
                        {{1, 256, 4, 64, 2}, {192, 64}, true},
                        {{2, 300, 2, 128, 1}, {128, 172}, true}};
  for (const Case& c : cases) {
    const AttShape& s = c.s;
    SCOPED_TRACE(::testing::Message()
                 << "B=" << s.B << " T=" << s.T << " NH=" << s.NH << " hd=" << s.hd
                 << " NKV=" << s.NKV << " rows " << c.rows.first << " + " << c.rows.count);
    const std::vector<int32_t> kb =
        attention_reference::key_begin_of_starts(s.B, s.T, {{0, 30, 100, 150}, {0, 200}});
    const int32_t* cpu_kb = c.masked ? kb.data() : nullptr;
    const int32_t* g_kb = c.masked ? dev(kb) : nullptr;
    const int C = s.NH * s.hd, W = qkv_width(C, s.NH, s.NKV), n = c.rows.count;
    const size_t BTW = size_t(s.B) * s.T * W, BnC = size_t(s.B) * n * C;
    const size_t L = size_t(s.B) * s.NH * n;
    const Bits qkv = random_bits(BTW, 90, -1.5f, 1.5f), dout = random_bits(BnC, 91);
    Bits out(BnC), dqkv(BTW);
    Vec lse(L);
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, C, s.NH, s.NKV, cpu_kb,
                           c.rows);
    cpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            C, s.NH, s.NKV, GradMode::overwrite, cpu_kb, c.rows);
    bf16_t* d_qkv = dev(qkv);
    bf16_t* g_out = dev(to_bits(Vec(BnC, 42.0f)));
    float* g_lse = dev(Vec(L, 42.0f));
    gpu->attention_forward(g_out, g_lse, d_qkv, s.B, s.T, C, s.NH, s.NKV, g_kb, c.rows);
    EXPECT_TRUE(close(host(g_out, BnC), out)) << "out";
    EXPECT_TRUE(close(host(g_lse, L), lse)) << "lse";
    bf16_t* g_dqkv = dev(to_bits(Vec(BTW, 42.0f)));
    gpu->attention_backward(g_dqkv, dev(dout), d_qkv, dev(out), dev(lse), s.B, s.T, C, s.NH, s.NKV,
                            GradMode::overwrite, g_kb, c.rows);
    EXPECT_TRUE(close(host(g_dqkv, BTW), dqkv)) << "dqkv (overwritten)";
    const Bits dqkv0 = initial_grad_bits(BTW, 92, rms(to_floats(dqkv)));
    Bits acc = dqkv0;
    cpu->attention_backward(acc.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            C, s.NH, s.NKV, GradMode::accumulate, cpu_kb, c.rows);
    bf16_t* g_acc = dev(dqkv0);
    gpu->attention_backward(g_acc, dev(dout), d_qkv, dev(out), dev(lse), s.B, s.T, C, s.NH, s.NKV,
                            GradMode::accumulate, g_kb, c.rows);
    EXPECT_TRUE(close(host(g_acc, BTW), acc)) << "dqkv (accumulated)";
  }
}

// Decoding (KV cache): n new rows at positions p.. against the kept keys and values; with
// NKV < NH the compact grouped-query cache.
TEST_F(CudaBf16Test, AttentionDecode) {
  struct Case {
    int B, stride, p, n, NH, hd, NKV, window = 0;
  };
  for (const Case& c :
       {Case{1, 5, 0, 5, 2, 64, 2}, Case{1, 301, 300, 1, 12, 64, 12}, Case{2, 80, 63, 3, 2, 128, 2},
        Case{4, 1024, 1023, 1, 3, 16, 3}, Case{1, 5, 0, 5, 4, 64, 2},
        Case{1, 301, 300, 1, 12, 64, 4}, Case{2, 80, 63, 3, 4, 128, 1},
        Case{4, 1024, 1023, 1, 6, 16, 3}, Case{2, 80, 63, 3, 4, 64, 2, 17}}) {
    SCOPED_TRACE(::testing::Message()
                 << "B=" << c.B << " p=" << c.p << " n=" << c.n << " hd=" << c.hd << " NH=" << c.NH
                 << " NKV=" << c.NKV << " window=" << c.window);
    const int C = c.NH * c.hd;
    const size_t nqkv = size_t(c.B) * c.stride * qkv_width(C, c.NH, c.NKV);
    const size_t nout = size_t(c.B) * c.n * C;
    const Bits qkv = random_bits(nqkv, 55, -1.5f, 1.5f);
    Bits out(nout);
    cpu->attention_decode(out.data(), qkv.data(), c.B, c.stride, c.p, c.n, C, c.NH, c.NKV,
                          c.window);
    bf16_t* g_out = dev(to_bits(Vec(nout, 42.0f)));
    gpu->attention_decode(g_out, dev(qkv), c.B, c.stride, c.p, c.n, C, c.NH, c.NKV, c.window);
    EXPECT_TRUE(close(host(g_out, nout), out)) << "out";
  }
}

// ---- GradMode::overwrite -------------------------------------------------------------------

// The input gradient is written over whatever the buffer holds (NaN here: the β = 0 product, the
// overwriting GELU and flash stores must not read it) and equals the CPU's gradient from zero.
// Rotary positions on bf16 q|k|v in place, forward and inverse: each element computed in fp32
// and rounded once, as on the CPU; NKV < NH: the q heads and the fewer k heads.
TEST_F(CudaBf16Test, Rope) {
  struct Case {
    int N, T, pos0, C, NH, NKV, rot = 0;  // rot: partial rotary (0: every value of a head)
  };
  for (const Case& c :
       {Case{10, 5, 0, 24, 3, 3}, Case{2048, 1024, 0, 768, 12, 12}, Case{3, 1, 700, 768, 12, 12},
        Case{10, 5, 0, 32, 4, 2}, Case{2048, 1024, 0, 768, 12, 4}, Case{3, 1, 700, 768, 12, 1},
        Case{64, 32, 3, 256, 4, 2, 16}, Case{2048, 1024, 0, 768, 12, 12, 32}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << c.N << " pos0=" << c.pos0 << " C=" << c.C
                                      << " NH=" << c.NH << " NKV=" << c.NKV << " rot=" << c.rot);
    GptShape shape{1, c.NH, c.C, 1024, 8, 128};
    shape.rope = true;
    shape.rotary_dim = c.rot;
    const Vec table = rope_table(shape);
    const float* g_table = dev(table);
    const size_t n = size_t(c.N) * qkv_width(c.C, c.NH, c.NKV);
    for (bool inverse : {false, true}) {
      Bits qkv = random_bits(n, 57, -2.0f, 2.0f);
      bf16_t* g_qkv = dev(qkv);
      cpu->rope(qkv.data(), table.data(), c.N, c.T, c.pos0, c.C, c.NH, c.NKV, inverse, nullptr,
                c.rot);
      gpu->rope(g_qkv, g_table, c.N, c.T, c.pos0, c.C, c.NH, c.NKV, inverse, nullptr, c.rot);
      EXPECT_TRUE(close(host(g_qkv, n), qkv)) << (inverse ? "inverse" : "forward");
      // Each row at a position of its own (data.reset_positions), T and pos0 then unused.
      std::vector<int32_t> at(size_t(c.N));
      for (size_t r = 0; r < at.size(); ++r) at[r] = int32_t((r * 37 + 11) % 1024);
      const int32_t* g_at = dev(at);
      cpu->rope(qkv.data(), table.data(), c.N, 1, 0, c.C, c.NH, c.NKV, inverse, at.data(), c.rot);
      gpu->rope(g_qkv, g_table, c.N, 1, 0, c.C, c.NH, c.NKV, inverse, g_at, c.rot);
      EXPECT_TRUE(close(host(g_qkv, n), qkv)) << "at positions";
    }
  }
}

// Per-head RMSNorm of q and k (qk_norm) in bf16: hd 16, 64, 128, 40 and 2; NKV == NH and
// NKV < NH. Forward into NaN-filled buffers (the v heads copied bit for bit); backward from the
// CPU's rstd, accumulating (twice, bit for bit alike), overwriting a NaN-filled dqkv and
// overwriting in place (dqkv == dout); dwq and dwk accumulate onto what they hold in every mode.
TEST_F(CudaBf16Test, QkNorm) {
  struct Case {
    int N, C, NH, NKV;
  };
  for (const Case& c :
       {Case{10, 48, 3, 3}, Case{37, 64, 4, 2}, Case{300, 768, 12, 4}, Case{2048, 768, 12, 12},
        Case{5, 128, 1, 1}, Case{33, 80, 2, 1}, Case{7, 8, 4, 2}}) {
    SCOPED_TRACE(::testing::Message()
                 << "N=" << c.N << " C=" << c.C << " NH=" << c.NH << " NKV=" << c.NKV);
    const int hd = c.C / c.NH, W = qkv_width(c.C, c.NH, c.NKV);
    const size_t n = size_t(c.N) * W, nr = size_t(c.N) * (c.NH + c.NKV);
    const Bits qkv = random_bits(n, 150, -2.0f, 2.0f);
    const Bits wq = random_bits(hd, 151, 0.5f, 1.5f), wk = random_bits(hd, 152, 0.5f, 1.5f);
    const Bits nan = to_bits(Vec(1, std::numeric_limits<float>::quiet_NaN()));
    Bits out(n);
    Vec rstd(nr);
    cpu->qk_norm_forward(out.data(), rstd.data(), qkv.data(), wq.data(), wk.data(), c.N, c.C, c.NH,
                         c.NKV);
    bf16_t *d_qkv = dev(qkv), *d_wq = dev(wq), *d_wk = dev(wk);
    bf16_t* g_out = dev(Bits(n, nan[0]));
    float* g_rstd = dev(Vec(nr, std::numeric_limits<float>::quiet_NaN()));
    gpu->qk_norm_forward(g_out, g_rstd, d_qkv, d_wq, d_wk, c.N, c.C, c.NH, c.NKV);
    const Bits got_out = host(g_out, n);
    EXPECT_TRUE(close(got_out, out)) << "out";
    const size_t v0 = size_t(c.C) + size_t(c.NKV) * hd, vw = size_t(c.NKV) * hd;
    EXPECT_TRUE(bit_equal(columns(got_out, c.N, W, v0, vw), columns(qkv, c.N, W, v0, vw)))
        << "v copied";
    EXPECT_TRUE(close(host(g_rstd, nr), rstd)) << "rstd";

    const Bits dout = random_bits(n, 153);
    const double dw_scale = std::sqrt(double(c.N) * c.NH);
    const Vec dwq0 = initial_grad(hd, 154, dw_scale), dwk0 = initial_grad(hd, 155, dw_scale);
    Bits fresh(n);
    Vec dwq = dwq0, dwk = dwk0;
    cpu->qk_norm_backward(fresh.data(), dwq.data(), dwk.data(), dout.data(), qkv.data(), wq.data(),
                          wk.data(), rstd.data(), c.N, c.C, c.NH, c.NKV, GradMode::overwrite);
    const Bits dqkv0 = initial_grad_bits(n, 156, rms(to_floats(fresh)));
    Bits dqkv = dqkv0;
    {
      Vec tq = dwq0, tk = dwk0;  // as dwq, dwk
      cpu->qk_norm_backward(dqkv.data(), tq.data(), tk.data(), dout.data(), qkv.data(), wq.data(),
                            wk.data(), rstd.data(), c.N, c.C, c.NH, c.NKV);
    }
    bf16_t* d_dout = dev(dout);
    float* d_rstd = dev(rstd);
    Bits first_dqkv;
    Vec first_dwq, first_dwk;
    for (int run = 0; run < 2; ++run) {
      bf16_t* g_dqkv = dev(dqkv0);
      float *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_norm_backward(g_dqkv, g_dwq, g_dwk, d_dout, d_qkv, d_wq, d_wk, d_rstd, c.N, c.C, c.NH,
                            c.NKV);
      check_run(run, host(g_dqkv, n), dqkv, first_dqkv, "dqkv (accumulated)");
      check_run(run, host(g_dwq, hd), dwq, first_dwq, "dwq");
      check_run(run, host(g_dwk, hd), dwk, first_dwk, "dwk");
    }
    for (const bool in_place : {false, true}) {
      SCOPED_TRACE(in_place ? "overwriting in place" : "overwriting NaN");
      bf16_t* g_dqkv = in_place ? dev(dout) : dev(Bits(n, nan[0]));
      float *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_norm_backward(g_dqkv, g_dwq, g_dwk, in_place ? g_dqkv : d_dout, d_qkv, d_wq, d_wk,
                            d_rstd, c.N, c.C, c.NH, c.NKV, GradMode::overwrite);
      EXPECT_TRUE(close(host(g_dqkv, n), fresh)) << "dqkv";
      EXPECT_TRUE(close(host(g_dwq, hd), dwq)) << "dwq";
      EXPECT_TRUE(close(host(g_dwk, hd), dwk)) << "dwk";
    }
  }
}

// model.qk_norm_full in bf16: the sums, the forward (v copied bit for bit) with the vectors three
// times as wide as this call's (a tensor-parallel rank's third), and the backward accumulating
// and overwriting in place, against the CPU backend's bf16 ops.
TEST_F(CudaBf16Test, QkFullNorm) {
  struct Case {
    int N, C, NH, NKV;
  };
  for (const Case& c : {Case{37, 64, 4, 2}, Case{300, 768, 12, 4}, Case{33, 80, 2, 1}}) {
    SCOPED_TRACE(::testing::Message()
                 << "N=" << c.N << " C=" << c.C << " NH=" << c.NH << " NKV=" << c.NKV);
    const int K = c.NKV * (c.C / c.NH), W = qkv_width(c.C, c.NH, c.NKV), Dq = 3 * c.C, Dk = 3 * K;
    const size_t n = size_t(c.N) * W, nr = 2 * size_t(c.N);
    const Bits qkv = random_bits(n, 170, -2.0f, 2.0f), dout = random_bits(n, 171);
    const Bits wq = random_bits(size_t(c.C), 172, 0.5f, 1.5f);
    const Bits wk = random_bits(size_t(K), 173, 0.5f, 1.5f);
    const float fnan = std::numeric_limits<float>::quiet_NaN();
    const Bits nan = to_bits(Vec(1, fnan));
    bf16_t *d_qkv = dev(qkv), *d_dout = dev(dout), *d_wq = dev(wq), *d_wk = dev(wk);
    Vec sums(nr), rstd(nr), dots(nr);
    cpu->qk_full_norm_sums(sums.data(), qkv.data(), nullptr, nullptr, nullptr, nullptr, c.N, c.C,
                           c.NH, c.NKV);
    float* g_sums = dev(Vec(nr, fnan));
    gpu->qk_full_norm_sums(g_sums, d_qkv, nullptr, nullptr, nullptr, nullptr, c.N, c.C, c.NH,
                           c.NKV);
    EXPECT_TRUE(close(host(g_sums, nr), sums)) << "sums";
    for (float& v : sums) v *= 3.0f;
    Bits out(n);
    cpu->qk_full_norm_forward(out.data(), rstd.data(), qkv.data(), sums.data(), wq.data(),
                              wk.data(), c.N, c.C, c.NH, c.NKV, Dq, Dk);
    bf16_t* g_out = dev(Bits(n, nan[0]));
    float* g_rstd = dev(Vec(nr, fnan));
    gpu->qk_full_norm_forward(g_out, g_rstd, d_qkv, dev(sums), d_wq, d_wk, c.N, c.C, c.NH, c.NKV,
                              Dq, Dk);
    const Bits got_out = host(g_out, n);
    EXPECT_TRUE(close(got_out, out)) << "out";
    const size_t v0 = size_t(c.C) + size_t(K);
    EXPECT_TRUE(
        bit_equal(columns(got_out, c.N, W, v0, size_t(K)), columns(qkv, c.N, W, v0, size_t(K))))
        << "v copied";
    EXPECT_TRUE(close(host(g_rstd, nr), rstd)) << "rstd";
    cpu->qk_full_norm_sums(dots.data(), qkv.data(), dout.data(), wq.data(), wk.data(), rstd.data(),
                           c.N, c.C, c.NH, c.NKV);
    float *d_rstd = dev(rstd), *g_dots = dev(Vec(nr, fnan));
    gpu->qk_full_norm_sums(g_dots, d_qkv, d_dout, d_wq, d_wk, d_rstd, c.N, c.C, c.NH, c.NKV);
    EXPECT_TRUE(close(host(g_dots, nr), dots)) << "dots";
    for (float& v : dots) v *= 3.0f;
    float* d_dots = dev(dots);
    const double dw_scale = std::sqrt(double(c.N));
    const Vec dwq0 = initial_grad(size_t(c.C), 174, dw_scale);
    const Vec dwk0 = initial_grad(size_t(K), 175, dw_scale);
    Bits fresh(n);
    Vec dwq = dwq0, dwk = dwk0;
    cpu->qk_full_norm_backward(fresh.data(), dwq.data(), dwk.data(), dout.data(), qkv.data(),
                               wq.data(), wk.data(), rstd.data(), dots.data(), c.N, c.C, c.NH,
                               c.NKV, Dq, Dk, GradMode::overwrite);
    const Bits dqkv0 = initial_grad_bits(n, 176, rms(to_floats(fresh)));
    Bits dqkv = dqkv0;
    {
      Vec tq = dwq0, tk = dwk0;
      cpu->qk_full_norm_backward(dqkv.data(), tq.data(), tk.data(), dout.data(), qkv.data(),
                                 wq.data(), wk.data(), rstd.data(), dots.data(), c.N, c.C, c.NH,
                                 c.NKV, Dq, Dk);
    }
    {
      bf16_t* g_dqkv = dev(dqkv0);
      float *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_full_norm_backward(g_dqkv, g_dwq, g_dwk, d_dout, d_qkv, d_wq, d_wk, d_rstd, d_dots,
                                 c.N, c.C, c.NH, c.NKV, Dq, Dk);
      EXPECT_TRUE(close(host(g_dqkv, n), dqkv)) << "dqkv (accumulated)";
      EXPECT_TRUE(close(host(g_dwq, size_t(c.C)), dwq)) << "dwq";
      EXPECT_TRUE(close(host(g_dwk, size_t(K)), dwk)) << "dwk";
    }
    {
      bf16_t* g_dqkv = dev(dout);
      float *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_full_norm_backward(g_dqkv, g_dwq, g_dwk, g_dqkv, d_qkv, d_wq, d_wk, d_rstd, d_dots,
                                 c.N, c.C, c.NH, c.NKV, Dq, Dk, GradMode::overwrite);
      EXPECT_TRUE(close(host(g_dqkv, n), fresh)) << "dqkv (in place)";
      EXPECT_TRUE(close(host(g_dwq, size_t(c.C)), dwq)) << "dwq (in place)";
    }
  }
}

TEST_F(CudaBf16Test, OverwriteModeIgnoresTheOldInputGradient) {
  const Bits nan_fill_small = to_bits(Vec(1, std::numeric_limits<float>::quiet_NaN()));
  auto nans = [&](size_t n) { return dev(Bits(n, nan_fill_small[0])); };
  {  // matmul dinp (the cuBLASLt product with β = 0)
    const int N = 256, IC = 768, OC = 2304;
    const Bits x = random_bits(size_t(N) * IC, 70), w = random_bits(size_t(OC) * IC, 71);
    const Bits dy = random_bits(size_t(N) * OC, 72);
    Bits want(x.size());
    Vec dw(w.size());
    cpu->matmul_backward(want.data(), dw.data(), nullptr, dy.data(), x.data(), w.data(), N, IC, OC);
    bf16_t* g = nans(x.size());
    gpu->matmul_backward(g, dev(Vec(w.size())), nullptr, dev(dy), dev(x), dev(w), N, IC, OC,
                         GradMode::overwrite);
    EXPECT_TRUE(close(host(g, x.size()), want)) << "matmul dinp";
  }
  {  // GELU
    const size_t n = 1001;
    const Bits x = random_bits(n, 73, -4.0f, 4.0f), dout = random_bits(n, 74);
    Bits want(n);
    cpu->gelu_backward(want.data(), x.data(), dout.data(), n);
    bf16_t* g = nans(n);
    gpu->gelu_backward(g, dev(x), dev(dout), n, GradMode::overwrite);
    EXPECT_TRUE(close(host(g, n), want)) << "gelu dinp";
  }
  // flash, fallback; each also grouped-query (NKV < NH: the reduction overwrites too)
  for (const AttShape& s : {AttShape{2, 100, 2, 64, 2}, AttShape{2, 37, 3, 16, 3},
                            AttShape{2, 100, 4, 64, 2}, AttShape{2, 37, 4, 16, 1}}) {
    SCOPED_TRACE(::testing::Message()
                 << "attention hd=" << s.hd << " NH=" << s.NH << " NKV=" << s.NKV);
    const int C = s.NH * s.hd;
    const size_t BTC = size_t(s.B) * s.T * C, L = size_t(s.B) * s.NH * s.T;
    const size_t BTW = size_t(s.B) * s.T * qkv_width(C, s.NH, s.NKV);
    const Bits qkv = random_bits(BTW, 75, -1.5f, 1.5f), dout = random_bits(BTC, 76);
    Bits out(BTC), want(BTW);
    Vec lse(L);
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, C, s.NH, s.NKV);
    cpu->attention_backward(want.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                            C, s.NH, s.NKV);
    bf16_t* g = nans(BTW);
    gpu->attention_backward(g, dev(dout), dev(qkv), dev(out), dev(lse), s.B, s.T, C, s.NH, s.NKV,
                            GradMode::overwrite);
    EXPECT_TRUE(close(host(g, BTW), want)) << "dqkv";
  }
}

// ---- elementwise -----------------------------------------------------------------------------

// The optimizer's bf16 copy, written in the update's pass: exactly the GPU's updated fp32
// weights rounded (as convert() rounds them), and the weights as the CPU update's within 1e-5.
TEST_F(CudaBf16Test, OptimizerUpdateWritesTheRoundedCopy) {
  const size_t n = 1000003;
  for (const bool adam : {true, false}) {
    SCOPED_TRACE(adam ? "adamw" : "sgd");
    Vec p = random_vec(n, 31), m = random_vec(n, 32, -1e-2f, 1e-2f);
    Vec v = random_vec(n, 33, 0.0f, 1e-3f);
    float *g_p = dev(p), *g_m = dev(m), *g_v = dev(v);
    bf16_t* g_copy = dev(Bits(n));
    for (int step = 1; step <= 2; ++step) {
      const Vec g = random_vec(n, 34 + uint32_t(step), -0.1f, 0.1f);
      optimizer_step(*cpu, adam, p.data(), g.data(), m.data(), v.data(), n, step);
      optimizer_step(*gpu, adam, g_p, dev(g), g_m, g_v, n, step, g_copy);
    }
    const Vec got = host(g_p, n);
    EXPECT_TRUE(close(got, p, 1e-5));
    EXPECT_TRUE(bit_equal(host(g_copy, n), to_bits(got)));
  }
}

// SwiGLU, GeGLU, and SwiGLU in gpt-oss's shape (model.glu_*: clamps at 2.5, alpha 1.702,
// offset 1).
TEST_F(CudaBf16Test, Swiglu) {
  for (const int H : {2048, 176, 5})
    for (int kind : {0, 1, 2}) {
      const bool gelu = kind == 1;
      const GluShape glu = kind == 2 ? GluShape{1.702f, 2.5f, 1.0f} : GluShape{};
      SCOPED_TRACE(::testing::Message()
                   << "H=" << H << (gelu ? " geglu" : "") << (kind == 2 ? " clamped" : ""));
      const int N = 33;
      const size_t n = size_t(N) * H;
      const Bits pre = random_bits(2 * n, 77, -6.0f, 6.0f), dout = random_bits(n, 78);
      const Bits d0 = random_bits(2 * n, 79);
      Bits out(n), d = d0;
      auto fwd = [&](Backend& be, bf16_t* o, const bf16_t* p) {
        gelu ? be.geglu_forward(o, p, N, H) : be.swiglu_forward(o, p, N, H, glu);
      };
      auto bwd = [&](Backend& be, bf16_t* dp, const bf16_t* p, const bf16_t* dy) {
        gelu ? be.geglu_backward(dp, p, dy, N, H)
             : be.swiglu_backward(dp, p, dy, N, H, GradMode::accumulate, glu);
      };
      fwd(*cpu, out.data(), pre.data());
      bwd(*cpu, d.data(), pre.data(), dout.data());
      bf16_t *g_out = dev(Bits(n)), *g_d = dev(d0);
      fwd(*gpu, g_out, dev(pre));
      bwd(*gpu, g_d, dev(pre), dev(dout));
      EXPECT_TRUE(close(host(g_out, n), out)) << "out";
      EXPECT_TRUE(close(host(g_d, 2 * n), d)) << "dpre";
    }
}

// The squared ReLU, the exact GELU and the ReLU.
TEST_F(CudaBf16Test, PointwiseActivations) {
  for (Activation f : {Activation::relu2, Activation::gelu_exact, Activation::relu})
    for (size_t n : {size_t{1}, size_t{1001}, size_t{1} << 20}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " activation " << int(f));
      const Bits pre = random_bits(n, 80, -6.0f, 6.0f), dout = random_bits(n, 81);
      const Bits d0 = random_bits(n, 82);
      Bits out(n), d = d0;
      cpu->activation_forward(f, out.data(), pre.data(), n);
      cpu->activation_backward(f, d.data(), pre.data(), dout.data(), n);
      bf16_t *g_out = dev(Bits(n)), *g_d = dev(d0);
      gpu->activation_forward(f, g_out, dev(pre), n);
      gpu->activation_backward(f, g_d, dev(pre), dev(dout), n);
      EXPECT_TRUE(close(host(g_out, n), out)) << "out";
      EXPECT_TRUE(close(host(g_d, n), d)) << "dpre";
    }
}

TEST_F(CudaBf16Test, GeluAddAccumulate) {
  for (size_t n : {size_t{1}, size_t{1001}, size_t{1} << 20}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const Bits x = random_bits(n, 60, -4.0f, 4.0f), y = random_bits(n, 61),
               dout = random_bits(n, 62);
    bf16_t *d_x = dev(x), *d_y = dev(y), *d_dout = dev(dout);

    Bits want(n);
    cpu->gelu_forward(want.data(), x.data(), n);
    bf16_t* g = dev(Bits(n));
    gpu->gelu_forward(g, d_x, n);
    EXPECT_TRUE(close(host(g, n), want)) << "gelu_forward";

    const Bits dinp0 = random_bits(n, 63);
    Bits dinp = dinp0;
    cpu->gelu_backward(dinp.data(), x.data(), dout.data(), n);
    bf16_t* g_dinp = dev(dinp0);
    gpu->gelu_backward(g_dinp, d_x, d_dout, n);
    EXPECT_TRUE(close(host(g_dinp, n), dinp)) << "gelu_backward";

    Bits sum(n);
    cpu->add(sum.data(), x.data(), y.data(), n);
    bf16_t* g_sum = dev(Bits(n));
    gpu->add(g_sum, d_x, d_y, n);
    EXPECT_TRUE(bit_equal(host(g_sum, n), sum)) << "add: one fp32 add, rounded once";

    Bits acc = x;
    cpu->accumulate(acc.data(), y.data(), n);
    bf16_t* g_acc = dev(x);
    gpu->accumulate(g_acc, d_y, n);
    EXPECT_TRUE(bit_equal(host(g_acc, n), acc)) << "accumulate: one fp32 add, rounded once";
  }
}

// ---- cross-entropy ---------------------------------------------------------------------------

struct CeShape {
  int N, V, Vp;
};
// {6, 50, 64} and {64, 50257, 50304}: the one-pass kernel with 1 and 7 vectors per thread,
// {4, 60000, 60000} with 8; {3, 17, 17}: the three-pass kernel.
const CeShape kCeShapes[] = {{6, 50, 64}, {64, 50257, 50304}, {4, 60000, 60000}, {3, 17, 17}};

TEST_F(CudaBf16Test, CrossEntropyForwardBackward) {
  for (const CeShape& s : kCeShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    const size_t NV = size_t(s.N) * s.Vp;
    // Padded columns hold values too: they must come back as zeros.
    const Bits logits = random_bits(NV, 70, -4.0f, 4.0f);
    IVec targets = random_ints(s.N, 71, 0, s.V);
    targets[size_t(s.N / 2)] = kIgnoredTarget;  // a masked target: zeros, loss 0, no hit
    const float scale = 1.0f / float(s.N);
    Bits want = logits;
    Vec losses(s.N), correct(s.N);
    cpu->crossentropy_forward_backward(want.data(), losses.data(), correct.data(), targets.data(),
                                       s.N, s.V, s.Vp, scale);
    int32_t* d_targets = dev(targets);
    for (bool with_correct : {true, false}) {
      SCOPED_TRACE(with_correct ? "correct" : "correct == nullptr");
      bf16_t* g_logits = dev(logits);
      float* g_losses = dev(Vec(s.N, 42.0f));
      float* g_correct = dev(Vec(s.N, 42.0f));
      gpu->crossentropy_forward_backward(g_logits, g_losses, with_correct ? g_correct : nullptr,
                                         d_targets, s.N, s.V, s.Vp, scale);
      const Bits got = host(g_logits, NV);
      EXPECT_TRUE(close(got, want)) << "dlogits";
      EXPECT_TRUE(close(host(g_losses, s.N), losses)) << "losses";
      if (with_correct) {
        EXPECT_TRUE(bit_equal(host(g_correct, s.N), correct)) << "correct";
      } else {
        EXPECT_TRUE(bit_equal(host(g_correct, s.N), Vec(s.N, 42.0f))) << "correct touched";
      }
      EXPECT_TRUE(
          bit_equal(columns(got, s.N, s.Vp, s.V, s.Vp - s.V), Bits(size_t(s.N) * (s.Vp - s.V))))
          << "padded columns are not zero";
    }
  }
}

void CudaBf16Test::expect_loss_matches_cpu(const CeShape& s, const Bits& logits,
                                           const IVec& targets, float dloss_scale, float z_loss,
                                           float softcap) {
  const size_t NV = size_t(s.N) * s.Vp;
  Bits want = logits;
  Vec losses(s.N), log_z(s.N);
  cpu->crossentropy_forward_backward(want.data(), losses.data(), nullptr, targets.data(), s.N, s.V,
                                     s.Vp, dloss_scale, z_loss, log_z.data(), softcap);
  bf16_t* g_logits = dev(logits);
  float *g_losses = dev(Vec(s.N, 42.0f)), *g_log_z = dev(Vec(s.N, 42.0f));
  gpu->crossentropy_forward_backward(g_logits, g_losses, nullptr, dev(targets), s.N, s.V, s.Vp,
                                     dloss_scale, z_loss, g_log_z, softcap);
  EXPECT_TRUE(close(host(g_logits, NV), want)) << "dlogits";
  EXPECT_TRUE(close(host(g_losses, s.N), losses)) << "losses";
  EXPECT_TRUE(close(host(g_log_z, s.N), log_z)) << "log Z";
}

// train.z_loss on bf16 logits (the one-pass kernel where Vp is a multiple of 8): dlogits, losses
// and log Z against the CPU backend's.
TEST_F(CudaBf16Test, CrossEntropyZLossMatchesCpu) {
  for (const CeShape& s : kCeShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    IVec targets = random_ints(s.N, 76, 0, s.V);
    targets[size_t(s.N / 2)] = kIgnoredTarget;
    expect_loss_matches_cpu(s, random_bits(size_t(s.N) * s.Vp, 75, -4.0f, 4.0f), targets,
                            1.0f / float(s.N), 0.05f, 0.0f);
  }
}

// model.logit_softcap on bf16 logits: the cap (computed in fp32, rounded once) against the CPU
// backend's, then the fused op with the cap's derivative on the capped logits, through the
// one-pass kernel where Vp is a multiple of 8 and the three-pass one otherwise.
TEST_F(CudaBf16Test, LogitSoftcapAndItsCrossEntropyMatchCpu) {
  const float cap = 30.0f;
  for (const CeShape& s : kCeShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    const size_t NV = size_t(s.N) * s.Vp;
    Bits capped = random_bits(NV, 77, -60.0f, 60.0f);
    bf16_t* g_logits = dev(capped);
    cpu->scale_cap_logits(capped.data(), NV, 1.0f, cap);
    gpu->scale_cap_logits(g_logits, NV, 1.0f, cap);
    EXPECT_TRUE(close(host(g_logits, NV), capped)) << "capped logits";
    IVec targets = random_ints(s.N, 78, 0, s.V);
    targets[0] = kIgnoredTarget;
    expect_loss_matches_cpu(s, capped, targets, 0.5f, 0.0f, cap);
  }
}

// model.clip_qkv in bf16: the clamp and its gradient bit for bit the CPU backend's (compared in
// fp32, the bound 1.5 exact in bf16).
TEST_F(CudaBf16Test, ClampAndItsGradientMatchCpu) {
  const size_t n = 100004;
  const Bits in = random_bits(n, 173, -3.0f, 3.0f), grad = random_bits(n, 174, -1.0f, 1.0f);
  Bits out(n), d = grad;
  bf16_t* g_in = dev(in);
  bf16_t* g_out = dev(out);
  bf16_t* g_d = dev(grad);
  cpu->clamp(out.data(), in.data(), n, 1.5f);
  gpu->clamp(g_out, g_in, n, 1.5f);
  auto same = [n](const Bits& a, const Bits& b) {
    return std::memcmp(a.data(), b.data(), n * sizeof(bf16_t)) == 0;
  };
  EXPECT_TRUE(same(host(g_out, n), out)) << "clamped";
  cpu->clamp_backward(d.data(), in.data(), n, 1.5f);
  gpu->clamp_backward(g_d, g_in, n, 1.5f);
  EXPECT_TRUE(same(host(g_d, n), d)) << "gradient";
}

// The three vocabulary-parallel steps, each fed the CPU's results of the previous one (what the
// caller's all-reduce would hand both backends). Targets < 0 belong to other ranks; V = 0 is a
// rank holding only padding columns.
TEST_F(CudaBf16Test, VocabParallelCrossEntropy) {
  const CeShape shapes[] = {{6, 50, 64}, {64, 50257, 50304}, {5, 0, 16}, {4, 24, 24}};
  for (const CeShape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    const size_t NV = size_t(s.N) * s.Vp;
    const Bits logits = random_bits(NV, 80, -4.0f, 4.0f);
    IVec targets = random_ints(s.N, 81, -std::max(s.V, 3), std::max(s.V, 1));
    targets[0] = kIgnoredTarget;  // a masked target: a row of zeros in the backward
    const float scale = 0.25f;
    bf16_t* d_logits = dev(logits);
    int32_t* d_targets = dev(targets);

    Vec row_max(s.N), argmax(s.N);
    cpu->logits_row_max(row_max.data(), argmax.data(), logits.data(), s.N, s.V, s.Vp);
    float *g_max = dev(Vec(s.N, 42.0f)), *g_arg = dev(Vec(s.N, 42.0f));
    gpu->logits_row_max(g_max, g_arg, d_logits, s.N, s.V, s.Vp);
    // The maximum of identical bf16 values and its first index: exact.
    EXPECT_TRUE(bit_equal(host(g_max, s.N), row_max)) << "row_max";
    EXPECT_TRUE(bit_equal(host(g_arg, s.N), argmax)) << "argmax";

    Vec sum_exp(s.N), target_logit(s.N);
    cpu->softmax_partial_sums(sum_exp.data(), target_logit.data(), logits.data(), row_max.data(),
                              targets.data(), s.N, s.V, s.Vp);
    float* d_row_max = dev(row_max);
    float *g_sum = dev(Vec(s.N, 42.0f)), *g_tl = dev(Vec(s.N, 42.0f));
    gpu->softmax_partial_sums(g_sum, g_tl, d_logits, d_row_max, d_targets, s.N, s.V, s.Vp);
    EXPECT_TRUE(close(host(g_sum, s.N), sum_exp)) << "sum_exp";
    EXPECT_TRUE(bit_equal(host(g_tl, s.N), target_logit)) << "target_logit";

    // A global sum as the all-reduce would give (≥ the local one; 1 where the slice is empty).
    Vec global_sum(s.N);
    for (int n = 0; n < s.N; ++n) global_sum[n] = sum_exp[n] * 1.5f + 1.0f;
    Bits want = logits;
    cpu->crossentropy_backward_partial(want.data(), row_max.data(), global_sum.data(),
                                       targets.data(), s.N, s.V, s.Vp, scale);
    gpu->crossentropy_backward_partial(d_logits, d_row_max, dev(global_sum), d_targets, s.N, s.V,
                                       s.Vp, scale);
    const Bits got = host(d_logits, NV);
    EXPECT_TRUE(close(got, want)) << "dlogits";
    EXPECT_TRUE(
        bit_equal(columns(got, s.N, s.Vp, s.V, s.Vp - s.V), Bits(size_t(s.N) * (s.Vp - s.V))))
        << "padded columns are not zero";
  }
}

}  // namespace
}  // namespace triad
