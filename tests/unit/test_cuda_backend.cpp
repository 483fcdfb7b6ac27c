// CUDA backend ops against the CPU reference backend (itself checked against naive double
// forwards and finite differences in test_cpu_kernels.cpp): the same random inputs go through
// both, the CUDA results are copied back and compared.
//  - Backward ops start from gradient buffers that already hold random values, so a kernel
//    that overwrites instead of accumulating (+=) fails.
//  - Tolerances: |got − want| <= rtol·|want| + ntol·max|want|. Elementwise, LayerNorm,
//    encoder and optimizer ops: rtol 1e-5; matmul and attention: rtol 1e-4 (fp32 sums in a
//    different order). TF32 would be ~1e-3 off; MatmulIsPlainFp32 catches it exactly.
//  - Determinism: the ops with reductions run twice and must agree bit for bit.
// Every test skips when no CUDA device is usable (and in builds without CUDA, where this file
// compiles against the public headers only).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../support/attention_reference.h"
#include "../support/cuda_test_fixture.h"
#include "../support/random_data.h"
#include "triad/core/error.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/kernels/dropout_mask.h"
#include "triad/model/gpt.h"
#include "triad/optim/muon.h"

namespace triad {
namespace {

using Vec = std::vector<float>;
using IVec = std::vector<int32_t>;

using triad::testing::random_ints;
using triad::testing::random_vec;

// |got[i] − want[i]| <= rtol·|want[i]| + ntol·max|want| for every i.
::testing::AssertionResult close(const Vec& got, const Vec& want, double rtol, double ntol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  double scale = 0.0;
  for (float w : want) scale = std::max(scale, std::abs(double(w)));
  size_t bad = 0, first = 0;
  double worst = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(double(got[i]) - double(want[i]));
    const double bound = rtol * std::abs(double(want[i])) + ntol * scale;
    if (!(err <= bound)) {  // also catches NaN
      if (bad == 0) first = i;
      ++bad;
      worst = std::max(worst, err);
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << want.size() << " elements differ; first at " << first << ": got "
         << got[first] << ", want " << want[first] << " (max|want| " << scale << ", worst error "
         << worst << ")";
}

::testing::AssertionResult bit_equal(const Vec& a, const Vec& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      return ::testing::AssertionFailure()
             << "first difference at " << i << ": " << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// The lower triangle (j <= i) of every T×T matrix of an [M, T, T] tensor.
Vec lower_triangle(const Vec& att, size_t M, int T) {
  Vec out;
  for (size_t m = 0; m < M; ++m)
    for (int i = 0; i < T; ++i)
      for (int j = 0; j <= i; ++j) out.push_back(att[(m * T + i) * T + j]);
  return out;
}

constexpr double kElemTol = 1e-5;  // elementwise, LayerNorm, encoder, optimizer
constexpr double kGemmTol = 1e-4;  // matmul, attention

TEST(CudaBackendNoDevice, MakeThrowsClearErrorWithoutDevice) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is available";
  EXPECT_THROW(make_cuda_backend(), Error);
  EXPECT_FALSE(cuda_device_description().empty());
}

struct CeShape;
// Needs no GPU. cuBLAS is not mapped into a process until it is asked for (the thousands of
// processes of a CPU test run each mapped its 600 MB when it was linked), then loads, or says why
// not, naming the library.
TEST(CudaCublas, LoadsWhenAskedForOrSaysWhy) {
  auto mapped = [] {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line))
      if (line.find("libcublas") != std::string::npos) return true;
    return false;
  };
  // On a machine with a GPU, other tests of this process may have made backends before.
  if (!cuda_device_available()) {
    EXPECT_FALSE(mapped()) << "cuBLAS was loaded at start-up";
  }
  const std::string why = cublas_status(), version = cublas_version();
  std::printf("cuBLAS: %s\n", why.empty() ? version.c_str() : why.c_str());
  if (why.empty()) {
    int major = 0, minor = 0, patch = 0;
    ASSERT_EQ(std::sscanf(version.c_str(), "%d.%d.%d", &major, &minor, &patch), 3) << version;
    EXPECT_GE(major, 12);
    EXPECT_TRUE(mapped());
  } else {
    EXPECT_EQ(version, "");
    EXPECT_TRUE(why.find("libcublas") != std::string::npos ||
                why.find("without CUDA") != std::string::npos)
        << why;
  }
}

class CudaBackendTest : public triad::testing::CudaVsCpuTest {
 protected:
  // The loss kernels on logits [s.N, s.Vp] (capped already where softcap > 0) against the CPU
  // backend's: the fused op (losses, log Z, dlogits) and the vocabulary-parallel backward from
  // the whole rows' statistics.
  void expect_loss_matches_cpu(const CeShape& s, const Vec& logits, const IVec& targets,
                               float dloss_scale, float z_loss, float softcap);
};

// ---- memory, errors ------------------------------------------------------------------------

TEST_F(CudaBackendTest, DescribesDeviceAndRejectsBadDevice) {
  EXPECT_STREQ(gpu->name(), "cuda");
  const std::string desc = cuda_device_description();
  EXPECT_NE(desc.find("sm_"), std::string::npos) << desc;
  EXPECT_THROW(make_cuda_backend(1000), Error);
  EXPECT_THROW(make_cuda_backend(-1), Error);
}

TEST_F(CudaBackendTest, AllocZeroedCopyRoundTripAndZero) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{17}, size_t{1000003}}) {
    float* d = gpu->alloc(n);
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(d) % 64, 0u);
    const Vec back = host(d, n);
    EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](float x) { return x == 0.0f; }));
    const Vec v = random_vec(n, 7);
    gpu->copy_from_host(d, v.data(), n);
    EXPECT_TRUE(bit_equal(host(d, n), v));
    if (n > 3) {
      gpu->zero(d + 1, n - 2);
      const Vec z = host(d, n);
      EXPECT_EQ(z[0], v[0]);
      EXPECT_EQ(z[n - 1], v[n - 1]);
      EXPECT_TRUE(std::all_of(z.begin() + 1, z.end() - 1, [](float x) { return x == 0.0f; }));
    }
    gpu->synchronize();
    gpu->free(d);
  }
  // copy_rows (one strided copy): a column block, every other element untouched.
  {
    const Vec src = random_vec(7 * 10, 3);
    float* d_src = dev(src);
    float* d_dst = dev(Vec(5 * 9, -1.0f));
    gpu->copy_rows(d_dst + 2, 9, d_src + 4, 10, 5, 6);
    const Vec got = host(d_dst, 5 * 9);
    for (int r = 0; r < 5; ++r)
      for (int c = 0; c < 9; ++c)
        EXPECT_EQ(got[size_t(r) * 9 + c], c >= 2 && c < 8 ? src[size_t(r) * 10 + c + 2] : -1.0f)
            << "copy_rows " << r << "," << c;
  }
  // int buffers: zero-filled, and uploads land (read back through encoder_forward with
  // wte[v, 0] = v, wpe = 0).
  const int V = 50, N = 9;
  int32_t* zeros = dev(IVec(N, 0));
  int32_t* fresh = gpu->alloc_ints(N);
  ASSERT_NE(fresh, nullptr);
  Vec wte(V);
  for (int v = 0; v < V; ++v) wte[v] = float(v);
  float* d_wte = dev(wte);
  float* d_wpe = dev_zeros(N);
  float* d_out = dev_zeros(N);
  gpu->encoder_forward(d_out, fresh, d_wte, d_wpe, 1, N, 1);
  EXPECT_TRUE(bit_equal(host(d_out, N), Vec(N, 0.0f)));
  const IVec ids = {3, 49, 0, 7, 7, 12, 1, 48, 25};
  gpu->copy_ints_from_host(zeros, ids.data(), N);
  gpu->encoder_forward(d_out, zeros, d_wte, d_wpe, 1, N, 1);
  const Vec got = host(d_out, N);
  for (int n = 0; n < N; ++n) EXPECT_EQ(got[n], float(ids[n])) << n;
  gpu->free_ints(fresh);
}

// ---- encoder -------------------------------------------------------------------------------

struct EncShape {
  int B, T, C, V;
};
const EncShape kEncShapes[] = {{2, 5, 12, 7}, {4, 64, 768, 100}, {3, 33, 130, 50304}};

TEST_F(CudaBackendTest, EncoderForward) {
  for (const EncShape& s : kEncShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C);
    const size_t N = size_t(s.B) * s.T;
    const IVec tokens = random_ints(N, 1, 0, s.V);
    const Vec wte = random_vec(size_t(s.V) * s.C, 2), wpe = random_vec(size_t(s.T) * s.C, 3);
    Vec want(N * s.C);
    cpu->encoder_forward(want.data(), tokens.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
    float* out = dev_zeros(N * s.C);
    gpu->encoder_forward(out, dev(tokens), dev(wte), dev(wpe), s.B, s.T, s.C);
    EXPECT_TRUE(close(host(out, N * s.C), want, kElemTol, 0.0));
  }
}

TEST_F(CudaBackendTest, EncoderBackwardAccumulatesDeterministically) {
  for (const EncShape& s : kEncShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C);
    const size_t N = size_t(s.B) * s.T;
    const IVec tokens = random_ints(N, 4, 0, s.V);  // small V: many repeated tokens
    const Vec dout = random_vec(N * s.C, 5);
    const Vec dwte0 = random_vec(size_t(s.V) * s.C, 6), dwpe0 = random_vec(size_t(s.T) * s.C, 7);
    Vec dwte = dwte0, dwpe = dwpe0;
    cpu->encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), s.B, s.T, s.C);
    int32_t* d_tok = dev(tokens);
    float* d_dout = dev(dout);
    Vec first_wte, first_wpe;
    for (int run = 0; run < 2; ++run) {
      float* g_wte = dev(dwte0);
      float* g_wpe = dev(dwpe0);
      gpu->encoder_backward(g_wte, g_wpe, d_dout, d_tok, s.B, s.T, s.C);
      const Vec got_wte = host(g_wte, dwte0.size()), got_wpe = host(g_wpe, dwpe0.size());
      if (run == 0) {
        EXPECT_TRUE(close(got_wte, dwte, kElemTol, 1e-7)) << "dwte";
        EXPECT_TRUE(close(got_wpe, dwpe, kElemTol, 1e-7)) << "dwpe";
        first_wte = got_wte;
        first_wpe = got_wpe;
      } else {
        EXPECT_TRUE(bit_equal(got_wte, first_wte)) << "dwte not deterministic";
        EXPECT_TRUE(bit_equal(got_wpe, first_wpe)) << "dwpe not deterministic";
      }
    }
  }
}

// Vocabulary-parallel form: tokens < 0 (another rank's ids) add nothing; wpe / dwpe may be null.
TEST_F(CudaBackendTest, EncoderNegativeTokensAndNullPositions) {
  for (const EncShape& s : kEncShapes) {
    const size_t N = size_t(s.B) * s.T;
    const IVec tokens = random_ints(N, 8, -s.V / 2 - 1, s.V);  // about a third held elsewhere
    const Vec wte = random_vec(size_t(s.V) * s.C, 9), wpe = random_vec(size_t(s.T) * s.C, 10);
    const Vec dout = random_vec(N * s.C, 11);
    const Vec dwte0 = random_vec(wte.size(), 12), dwpe0 = random_vec(wpe.size(), 13);
    int32_t* d_tok = dev(tokens);
    float *d_wte = dev(wte), *d_wpe = dev(wpe), *d_dout = dev(dout);
    for (bool with_pos : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C
                                        << (with_pos ? " wpe" : " wpe == nullptr"));
      Vec want(N * s.C);
      cpu->encoder_forward(want.data(), tokens.data(), wte.data(), with_pos ? wpe.data() : nullptr,
                           s.B, s.T, s.C);
      float* out = dev(Vec(N * s.C, 42.0f));
      gpu->encoder_forward(out, d_tok, d_wte, with_pos ? d_wpe : nullptr, s.B, s.T, s.C);
      EXPECT_TRUE(close(host(out, N * s.C), want, kElemTol, 0.0)) << "out";

      Vec dwte = dwte0, dwpe = dwpe0;
      cpu->encoder_backward(dwte.data(), with_pos ? dwpe.data() : nullptr, dout.data(),
                            tokens.data(), s.B, s.T, s.C);
      float *g_wte = dev(dwte0), *g_wpe = dev(dwpe0);
      gpu->encoder_backward(g_wte, with_pos ? g_wpe : nullptr, d_dout, d_tok, s.B, s.T, s.C);
      EXPECT_TRUE(close(host(g_wte, dwte0.size()), dwte, kElemTol, 1e-7)) << "dwte";
      EXPECT_TRUE(close(host(g_wpe, dwpe0.size()), dwpe, kElemTol, 1e-7)) << "dwpe";
      if (!with_pos) {
        EXPECT_TRUE(bit_equal(host(g_wpe, dwpe0.size()), dwpe0)) << "dwpe touched";
      }
    }
  }
}

// Rows at positions of their own (data.reset_positions: packed documents each from 0, several
// rows sharing a row of wpe): as the CPU backend, dwpe summed in row order (bit for bit).
TEST_F(CudaBackendTest, EncoderAtGivenPositions) {
  for (const EncShape& s : kEncShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C);
    const size_t N = size_t(s.B) * s.T;
    const IVec tokens = random_ints(N, 14, 0, s.V), positions = random_ints(N, 15, 0, s.T);
    const Vec wte = random_vec(size_t(s.V) * s.C, 16), wpe = random_vec(size_t(s.T) * s.C, 17);
    const Vec dout = random_vec(N * s.C, 18), dwpe0 = random_vec(wpe.size(), 19);
    Vec want(N * s.C);
    cpu->encoder_forward(want.data(), tokens.data(), wte.data(), wpe.data(), s.B, s.T, s.C,
                         positions.data());
    float* out = dev(Vec(N * s.C, 42.0f));
    const int32_t *d_tok = dev(tokens), *d_pos = dev(positions);
    gpu->encoder_forward(out, d_tok, dev(wte), dev(wpe), s.B, s.T, s.C, d_pos);
    EXPECT_TRUE(close(host(out, N * s.C), want, kElemTol, 0.0)) << "out";
    Vec dwte(wte.size(), 0.0f), dwpe = dwpe0;
    cpu->encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), s.B, s.T, s.C,
                          positions.data());
    float *g_wte = dev(Vec(wte.size(), 0.0f)), *g_wpe = dev(dwpe0);
    gpu->encoder_backward(g_wte, g_wpe, dev(dout), d_tok, s.B, s.T, s.C, d_pos);
    EXPECT_TRUE(bit_equal(host(g_wpe, dwpe.size()), dwpe)) << "dwpe";
    EXPECT_TRUE(bit_equal(host(g_wte, dwte.size()), dwte)) << "dwte";
  }
}

// ---- layernorm -----------------------------------------------------------------------------

struct NCShape {
  int N, C;
};
const NCShape kLnShapes[] = {{10, 12}, {256, 768}, {333, 1000}, {5, 1600}, {1030, 97}};

TEST_F(CudaBackendTest, LayerNormForward) {
  for (const NCShape& s : kLnShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const size_t NC = size_t(s.N) * s.C;
    const Vec inp = random_vec(NC, 10, -2.0f, 3.0f);
    const Vec w = random_vec(s.C, 11, 0.5f, 1.5f), b = random_vec(s.C, 12);
    Vec out(NC), mean(s.N), rstd(s.N);
    cpu->layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(),
                           s.N, s.C);
    float* g_out = dev_zeros(NC);
    float* g_mean = dev_zeros(s.N);
    float* g_rstd = dev_zeros(s.N);
    gpu->layernorm_forward(g_out, g_mean, g_rstd, dev(inp), dev(w), dev(b), s.N, s.C);
    EXPECT_TRUE(close(host(g_out, NC), out, kElemTol, 1e-6)) << "out";
    EXPECT_TRUE(close(host(g_mean, s.N), mean, kElemTol, 1e-6)) << "mean";
    EXPECT_TRUE(close(host(g_rstd, s.N), rstd, kElemTol, 0.0)) << "rstd";
  }
}

TEST_F(CudaBackendTest, LayerNormBackwardAccumulatesDeterministically) {
  for (const NCShape& s : kLnShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const size_t NC = size_t(s.N) * s.C;
    const Vec inp = random_vec(NC, 20, -2.0f, 3.0f);
    const Vec w = random_vec(s.C, 21, 0.5f, 1.5f), b = random_vec(s.C, 22);
    const Vec dout = random_vec(NC, 23);
    Vec out(NC), mean(s.N), rstd(s.N);
    cpu->layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(),
                           s.N, s.C);
    const Vec dinp0 = random_vec(NC, 24), dw0 = random_vec(s.C, 25), db0 = random_vec(s.C, 26);
    Vec dinp = dinp0, dw = dw0, db = db0;
    cpu->layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                            mean.data(), rstd.data(), s.N, s.C);
    float *d_dout = dev(dout), *d_inp = dev(inp), *d_w = dev(w);
    float *d_mean = dev(mean), *d_rstd = dev(rstd);
    Vec first[3];
    for (int run = 0; run < 2; ++run) {
      float *g_dinp = dev(dinp0), *g_dw = dev(dw0), *g_db = dev(db0);
      gpu->layernorm_backward(g_dinp, g_dw, g_db, d_dout, d_inp, d_w, d_mean, d_rstd, s.N, s.C);
      const Vec got[3] = {host(g_dinp, NC), host(g_dw, s.C), host(g_db, s.C)};
      if (run == 0) {
        EXPECT_TRUE(close(got[0], dinp, kElemTol, 1e-6)) << "dinp";
        // Column sums over N rows in another order: norm-relative 1e-5.
        EXPECT_TRUE(close(got[1], dw, kElemTol, 1e-5)) << "dweight";
        EXPECT_TRUE(close(got[2], db, kElemTol, 1e-5)) << "dbias";
        for (int k = 0; k < 3; ++k) first[k] = got[k];
      } else {
        for (int k = 0; k < 3; ++k) EXPECT_TRUE(bit_equal(got[k], first[k])) << "output " << k;
      }
    }
  }
}

// RMSNorm: the LayerNorm ops with mean and bias null, forward (plain and residual) and backward.
TEST_F(CudaBackendTest, RmsNorm) {
  for (const NCShape& s : kLnShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const size_t NC = size_t(s.N) * s.C;
    const Vec a = random_vec(NC, 30, -2.0f, 3.0f), b = random_vec(NC, 31);
    const Vec w = random_vec(s.C, 32, 0.5f, 1.5f), dout = random_vec(NC, 33);
    Vec sum(NC), out(NC), rstd(s.N);
    cpu->residual_layernorm_forward(sum.data(), out.data(), nullptr, rstd.data(), a.data(),
                                    b.data(), w.data(), nullptr, s.N, s.C);
    float *g_sum = dev_zeros(NC), *g_out = dev_zeros(NC), *g_rstd = dev_zeros(s.N);
    gpu->residual_layernorm_forward(g_sum, g_out, nullptr, g_rstd, dev(a), dev(b), dev(w), nullptr,
                                    s.N, s.C);
    EXPECT_TRUE(close(host(g_out, NC), out, kElemTol, 1e-6)) << "out";
    EXPECT_TRUE(close(host(g_rstd, s.N), rstd, kElemTol, 0.0)) << "rstd";
    const Vec dinp0 = random_vec(NC, 34), dw0 = random_vec(s.C, 35);
    Vec dinp = dinp0, dw = dw0;
    cpu->layernorm_backward(dinp.data(), dw.data(), nullptr, dout.data(), sum.data(), w.data(),
                            nullptr, rstd.data(), s.N, s.C);
    float *g_dinp = dev(dinp0), *g_dw = dev(dw0);
    gpu->layernorm_backward(g_dinp, g_dw, nullptr, dev(dout), dev(sum), dev(w), nullptr, dev(rstd),
                            s.N, s.C);
    EXPECT_TRUE(close(host(g_dinp, NC), dinp, kElemTol, 1e-6)) << "dinp";
    EXPECT_TRUE(close(host(g_dw, s.C), dw, kElemTol, 1e-5)) << "dweight";
  }
}

// ---- matmul --------------------------------------------------------------------------------

struct MmShape {
  int N, IC, OC;
};
const MmShape kMmShapes[] = {
    {10, 12, 36}, {333, 77, 129}, {256, 768, 2304}, {128, 3072, 768}, {1, 5, 3}};

TEST_F(CudaBackendTest, MatmulForward) {
  for (const MmShape& s : kMmShapes) {
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC << " bias=" << with_bias);
      const Vec inp = random_vec(size_t(s.N) * s.IC, 30), w = random_vec(size_t(s.OC) * s.IC, 31);
      const Vec b = random_vec(s.OC, 32);
      Vec out(size_t(s.N) * s.OC);
      cpu->matmul_forward(out.data(), inp.data(), w.data(), with_bias ? b.data() : nullptr, s.N,
                          s.IC, s.OC);
      // Garbage in the output buffer: forward overwrites.
      float* g_out = dev(random_vec(out.size(), 33, 100.0f, 200.0f));
      gpu->matmul_forward(g_out, dev(inp), dev(w), with_bias ? dev(b) : nullptr, s.N, s.IC, s.OC);
      EXPECT_TRUE(close(host(g_out, out.size()), out, kGemmTol, 1e-5));
    }
  }
}

TEST_F(CudaBackendTest, MatmulBackwardAccumulatesDeterministically) {
  for (const MmShape& s : kMmShapes) {
    for (int variant = 0; variant < 3; ++variant) {  // 0: all, 1: no dinp, 2: no dbias
      const bool with_dinp = variant != 1, with_dbias = variant != 2;
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC
                                        << " dinp=" << with_dinp << " dbias=" << with_dbias);
      const size_t nin = size_t(s.N) * s.IC, nw = size_t(s.OC) * s.IC, nout = size_t(s.N) * s.OC;
      const Vec inp = random_vec(nin, 40), w = random_vec(nw, 41), dout = random_vec(nout, 42);
      const Vec dinp0 = random_vec(nin, 43), dw0 = random_vec(nw, 44), db0 = random_vec(s.OC, 45);
      Vec dinp = dinp0, dw = dw0, db = db0;
      cpu->matmul_backward(with_dinp ? dinp.data() : nullptr, dw.data(),
                           with_dbias ? db.data() : nullptr, dout.data(), inp.data(), w.data(), s.N,
                           s.IC, s.OC);
      float *d_inp = dev(inp), *d_w = dev(w), *d_dout = dev(dout);
      Vec first[3];
      for (int run = 0; run < 2; ++run) {
        float *g_dinp = dev(dinp0), *g_dw = dev(dw0), *g_db = dev(db0);
        gpu->matmul_backward(with_dinp ? g_dinp : nullptr, g_dw, with_dbias ? g_db : nullptr,
                             d_dout, d_inp, d_w, s.N, s.IC, s.OC);
        const Vec got[3] = {host(g_dinp, nin), host(g_dw, nw), host(g_db, s.OC)};
        if (run == 0) {
          EXPECT_TRUE(close(got[0], dinp, kGemmTol, 1e-5)) << "dinp";
          EXPECT_TRUE(close(got[1], dw, kGemmTol, 1e-5)) << "dweight";
          EXPECT_TRUE(close(got[2], db, kElemTol, 1e-5)) << "dbias";  // column sums
          for (int k = 0; k < 3; ++k) first[k] = got[k];
        } else {
          for (int k = 0; k < 3; ++k) EXPECT_TRUE(bit_equal(got[k], first[k])) << "output " << k;
        }
      }
    }
  }
}

// The zero-bubble split in fp32 (cuBLAS): the input gradient alone, then the weight and bias
// gradients (dinp null), bit for bit one call's; the input pass leaves dweight and dbias alone.
TEST_F(CudaBackendTest, MatmulBackwardSplitsIntoInputAndWeightPasses) {
  for (const MmShape& s : kMmShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC);
    const size_t nin = size_t(s.N) * s.IC, nw = size_t(s.OC) * s.IC, nout = size_t(s.N) * s.OC;
    const Vec inp = random_vec(nin, 50), w = random_vec(nw, 51), dout = random_vec(nout, 52);
    const Vec dinp0 = random_vec(nin, 53), dw0 = random_vec(nw, 54), db0 = random_vec(s.OC, 55);
    float *d_inp = dev(inp), *d_w = dev(w), *d_dout = dev(dout);
    float *whole_dinp = dev(dinp0), *whole_dw = dev(dw0), *whole_db = dev(db0);
    gpu->matmul_backward(whole_dinp, whole_dw, whole_db, d_dout, d_inp, d_w, s.N, s.IC, s.OC);
    float *split_dinp = dev(dinp0), *split_dw = dev(dw0), *split_db = dev(db0);
    gpu->matmul_backward(split_dinp, nullptr, nullptr, d_dout, d_inp, d_w, s.N, s.IC, s.OC);
    EXPECT_TRUE(bit_equal(host(split_dw, nw), dw0)) << "the input pass wrote dweight";
    EXPECT_TRUE(bit_equal(host(split_db, s.OC), db0)) << "the input pass wrote dbias";
    gpu->matmul_backward(nullptr, split_dw, split_db, d_dout, d_inp, d_w, s.N, s.IC, s.OC);
    EXPECT_TRUE(bit_equal(host(split_dinp, nin), host(whole_dinp, nin))) << "dinp";
    EXPECT_TRUE(bit_equal(host(split_dw, nw), host(whole_dw, nw))) << "dweight";
    EXPECT_TRUE(bit_equal(host(split_db, s.OC), host(whole_db, s.OC))) << "dbias";
  }
}

// 1 + 2⁻¹² has 12 significant mantissa bits: TF32 (10 bits) rounds it to 1, fp32 keeps it, and
// every partial sum of these products is exact in fp32. So an fp32 sgemm gives exactly
// 64·(1 + 2⁻¹²) = 64.015625 and a TF32 one 64.
TEST_F(CudaBackendTest, MatmulIsPlainFp32) {
  const int N = 32, IC = 64, OC = 48;
  const float x = 1.0f + std::ldexp(1.0f, -12);
  const Vec inp(size_t(N) * IC, x), w(size_t(OC) * IC, 1.0f);
  float* g_out = dev_zeros(size_t(N) * OC);
  gpu->matmul_forward(g_out, dev(inp), dev(w), nullptr, N, IC, OC);
  const Vec out = host(g_out, size_t(N) * OC);
  EXPECT_TRUE(bit_equal(out, Vec(out.size(), 64.015625f)));
  // dinp = dout · W with dout = x, W = 1: Σ over OC = 48 → 48·x, exact in fp32.
  const Vec dout(size_t(N) * OC, x);
  float* g_dinp = dev_zeros(size_t(N) * IC);
  float* g_dw = dev_zeros(size_t(OC) * IC);
  gpu->matmul_backward(g_dinp, g_dw, nullptr, dev(dout), dev(Vec(size_t(N) * IC, 1.0f)), dev(w), N,
                       IC, OC);
  EXPECT_TRUE(bit_equal(host(g_dinp, size_t(N) * IC), Vec(size_t(N) * IC, 48.0f * x)));
  EXPECT_TRUE(bit_equal(host(g_dw, size_t(OC) * IC), Vec(size_t(OC) * IC, 32.0f * x)));
}

// ---- attention -----------------------------------------------------------------------------

struct AttShape {
  int B, T, C, NH, NKV;
};
// NKV < NH: grouped-query attention (the expanded-rows path), multi-query (NKV = 1) among them.
const AttShape kAttShapes[] = {{2, 5, 12, 3, 3},      {1, 64, 768, 12, 12}, {3, 100, 96, 4, 4},
                               {2, 256, 768, 12, 12}, {1, 1, 8, 2, 2},      {2, 5, 16, 4, 2},
                               {3, 100, 96, 4, 1},    {2, 256, 768, 12, 4}, {1, 1, 8, 2, 1}};

TEST_F(CudaBackendTest, AttentionForward) {
  for (const AttShape& s : kAttShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C
                                      << " NH=" << s.NH << " NKV=" << s.NKV);
    const size_t nqkv = size_t(s.B) * s.T * qkv_width(s.C, s.NH, s.NKV);
    const size_t nout = size_t(s.B) * s.T * s.C;
    const size_t M = size_t(s.B) * s.NH, natt = M * s.T * s.T;
    const Vec qkv = random_vec(nqkv, 50, -2.0f, 2.0f);
    Vec out(nout), att(natt, 0.0f);
    cpu->attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV);
    float* g_out = dev(random_vec(nout, 51));  // garbage: forward overwrites
    float* g_att = dev(random_vec(natt, 52));
    gpu->attention_forward(g_out, g_att, dev(qkv), s.B, s.T, s.C, s.NH, s.NKV);
    EXPECT_TRUE(close(host(g_out, nout), out, kGemmTol, 1e-5)) << "out";
    EXPECT_TRUE(close(lower_triangle(host(g_att, natt), M, s.T), lower_triangle(att, M, s.T),
                      kGemmTol, 1e-6))
        << "att";
  }
}

// Another score scale (model.attn_scale, μP's 1/hd) and soft-capped scores (model.attn_softcap,
// the usual scale): the fp32 forward, backward (which recomputes the uncapped scores) and
// decoding against the CPU backend's, MHA and grouped queries.
TEST_F(CudaBackendTest, AttentionOtherScaleAndSoftCap) {
  for (const AttShape& s : {AttShape{3, 100, 96, 4, 4}, AttShape{2, 5, 16, 4, 2}})
    for (const float cap : {0.0f, 1.5f}) {
      SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C
                                        << " NH=" << s.NH << " NKV=" << s.NKV << " cap " << cap);
      const float scale = cap > 0.0f ? 0.0f : float(s.NH) / float(s.C);  // 1/hd
      const size_t nqkv = size_t(s.B) * s.T * qkv_width(s.C, s.NH, s.NKV);
      const size_t nout = size_t(s.B) * s.T * s.C, natt = size_t(s.B) * s.NH * s.T * s.T;
      const Vec qkv = random_vec(nqkv, 53, -2.0f, 2.0f), dout = random_vec(nout, 54);
      Vec out(nout), att(natt, 0.0f), scr(natt), dqkv(nqkv, 0.0f), dec(size_t(s.B) * s.C);
      cpu->attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV,
                             nullptr, {}, scale, cap);
      cpu->attention_backward(dqkv.data(), scr.data(), dout.data(), qkv.data(), att.data(), s.B,
                              s.T, s.C, s.NH, s.NKV, GradMode::overwrite, nullptr, {}, scale, cap);
      cpu->attention_decode(dec.data(), qkv.data(), s.B, s.T, s.T - 1, 1, s.C, s.NH, s.NKV, 0,
                            scale, cap);
      float *g_qkv = dev(qkv), *g_out = dev(random_vec(nout, 55)), *g_att = dev(att);
      gpu->attention_forward(g_out, g_att, g_qkv, s.B, s.T, s.C, s.NH, s.NKV, nullptr, {}, scale,
                             cap);
      EXPECT_TRUE(close(host(g_out, nout), out, kGemmTol, 1e-5)) << "out";
      float* g_dqkv = dev(random_vec(nqkv, 56));
      gpu->attention_backward(g_dqkv, dev(Vec(natt)), dev(dout), g_qkv, dev(att), s.B, s.T, s.C,
                              s.NH, s.NKV, GradMode::overwrite, nullptr, {}, scale, cap);
      EXPECT_TRUE(close(host(g_dqkv, nqkv), dqkv, kGemmTol, 1e-6)) << "dqkv";
      float* g_dec = dev(random_vec(size_t(s.B) * s.C, 57));
      gpu->attention_decode(g_dec, g_qkv, s.B, s.T, s.T - 1, 1, s.C, s.NH, s.NKV, 0, scale, cap);
      EXPECT_TRUE(close(host(g_dec, size_t(s.B) * s.C), dec, kGemmTol, 1e-6)) << "decode";
    }
}

// Attention sinks (model.attn_sinks): the fp32 forward (the sinks in the softmax), backward (the
// sinks' gradient from the rows' terms, accumulated) and decoding against the CPU backend's, MHA
// and grouped queries, with a soft cap.
TEST_F(CudaBackendTest, AttentionSinks) {
  for (const AttShape& s : {AttShape{3, 100, 96, 4, 4}, AttShape{2, 5, 16, 4, 2}})
    for (const float cap : {0.0f, 1.5f}) {
      SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C
                                        << " NH=" << s.NH << " NKV=" << s.NKV << " cap " << cap);
      const size_t nqkv = size_t(s.B) * s.T * qkv_width(s.C, s.NH, s.NKV);
      const size_t nout = size_t(s.B) * s.T * s.C, natt = size_t(s.B) * s.NH * s.T * s.T;
      const Vec qkv = random_vec(nqkv, 63, -2.0f, 2.0f), dout = random_vec(nout, 64);
      const Vec z = {-1.0f, 0.5f, 2.0f, 3.5f};
      Vec out(nout), att(natt, 0.0f), scr(natt), dqkv(nqkv, 0.0f), dec(size_t(s.B) * s.C);
      Vec dz(z.size(), 0.5f);
      cpu->attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV,
                             nullptr, {}, 0.0f, cap, {}, z.data());
      cpu->attention_backward(dqkv.data(), scr.data(), dout.data(), qkv.data(), att.data(), s.B,
                              s.T, s.C, s.NH, s.NKV, GradMode::overwrite, nullptr, {}, 0.0f, cap,
                              {}, z.data(), dz.data());
      cpu->attention_decode(dec.data(), qkv.data(), s.B, s.T, s.T - 1, 1, s.C, s.NH, s.NKV, 0, 0.0f,
                            cap, z.data());
      float *g_qkv = dev(qkv), *g_out = dev(random_vec(nout, 65)), *g_att = dev(att);
      float* g_z = dev(z);
      gpu->attention_forward(g_out, g_att, g_qkv, s.B, s.T, s.C, s.NH, s.NKV, nullptr, {}, 0.0f,
                             cap, {}, g_z);
      EXPECT_TRUE(close(host(g_out, nout), out, kGemmTol, 1e-5)) << "out";
      float* g_dqkv = dev(random_vec(nqkv, 66));
      float* g_dz = dev(Vec(z.size(), 0.5f));
      gpu->attention_backward(g_dqkv, dev(Vec(natt)), dev(dout), g_qkv, dev(att), s.B, s.T, s.C,
                              s.NH, s.NKV, GradMode::overwrite, nullptr, {}, 0.0f, cap, {}, g_z,
                              g_dz);
      EXPECT_TRUE(close(host(g_dqkv, nqkv), dqkv, kGemmTol, 1e-6)) << "dqkv";
      EXPECT_TRUE(close(host(g_dz, z.size()), dz, kGemmTol, 1e-6)) << "dsinks";
      float* g_dec = dev(random_vec(size_t(s.B) * s.C, 67));
      gpu->attention_decode(g_dec, g_qkv, s.B, s.T, s.T - 1, 1, s.C, s.NH, s.NKV, 0, 0.0f, cap,
                            g_z);
      EXPECT_TRUE(close(host(g_dec, size_t(s.B) * s.C), dec, kGemmTol, 1e-6)) << "decode";
    }
}

// Decoding (KV cache): n new rows at positions p.. against the kept keys and values; with
// NKV < NH the compact grouped-query cache.
TEST_F(CudaBackendTest, AttentionDecode) {
  struct Case {
    int B, stride, p, n, C, NH, NKV, window = 0;
  };
  for (const Case& c :
       {Case{1, 5, 0, 5, 12, 3, 3}, Case{1, 201, 200, 1, 768, 12, 12}, Case{3, 70, 63, 3, 96, 4, 4},
        Case{2, 1024, 1023, 1, 256, 2, 2}, Case{1, 5, 0, 5, 16, 4, 2},
        Case{1, 201, 200, 1, 768, 12, 4}, Case{3, 70, 63, 3, 256, 4, 1},
        Case{3, 70, 63, 3, 96, 4, 2, 20}, Case{1, 40, 0, 40, 96, 4, 4, 9}}) {
    SCOPED_TRACE(::testing::Message()
                 << "B=" << c.B << " p=" << c.p << " n=" << c.n << " C=" << c.C << " NH=" << c.NH
                 << " NKV=" << c.NKV << " window=" << c.window);
    const size_t nqkv = size_t(c.B) * c.stride * qkv_width(c.C, c.NH, c.NKV);
    const size_t nout = size_t(c.B) * c.n * c.C;
    const Vec qkv = random_vec(nqkv, 53, -2.0f, 2.0f);
    Vec out(nout);
    cpu->attention_decode(out.data(), qkv.data(), c.B, c.stride, c.p, c.n, c.C, c.NH, c.NKV,
                          c.window);
    float* g_out = dev(random_vec(nout, 54));  // garbage: overwritten
    gpu->attention_decode(g_out, dev(qkv), c.B, c.stride, c.p, c.n, c.C, c.NH, c.NKV, c.window);
    EXPECT_TRUE(close(host(g_out, nout), out, kGemmTol, 1e-5)) << "out";
  }
}

// Rotary positions in place, forward and inverse (the backward), from position 0 and from a
// decoding position, on the 124M model's heads too; the table as the model builds it. NKV < NH:
// the q heads and the fewer k heads of grouped-query rows (v untouched).
TEST_F(CudaBackendTest, RopeForwardAndInverse) {
  struct Case {
    int N, T, pos0, C, NH, NKV, rot = 0;  // rot: partial rotary (0: every value of a head)
  };
  for (const Case& c :
       {Case{10, 5, 0, 24, 3, 3}, Case{2048, 1024, 0, 768, 12, 12}, Case{3, 1, 700, 768, 12, 12},
        Case{37, 37, 40, 128, 1, 1}, Case{10, 5, 0, 32, 4, 2}, Case{2048, 1024, 0, 768, 12, 4},
        Case{3, 1, 700, 768, 12, 1}, Case{64, 32, 3, 256, 4, 2, 16},
        Case{2048, 1024, 0, 768, 12, 12, 32}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << c.N << " pos0=" << c.pos0 << " C=" << c.C
                                      << " NH=" << c.NH << " NKV=" << c.NKV << " rot=" << c.rot);
    GptShape shape{1, c.NH, c.C, 1024, 8, 128};
    shape.rope = true;
    shape.rotary_dim = c.rot;
    const Vec table = rope_table(shape);
    const float* g_table = dev(table);
    const size_t n = size_t(c.N) * qkv_width(c.C, c.NH, c.NKV);
    for (bool inverse : {false, true}) {
      Vec qkv = random_vec(n, 56, -2.0f, 2.0f);
      float* g_qkv = dev(qkv);
      cpu->rope(qkv.data(), table.data(), c.N, c.T, c.pos0, c.C, c.NH, c.NKV, inverse, nullptr,
                c.rot);
      gpu->rope(g_qkv, g_table, c.N, c.T, c.pos0, c.C, c.NH, c.NKV, inverse, nullptr, c.rot);
      EXPECT_TRUE(close(host(g_qkv, n), qkv, kElemTol, 1e-6)) << (inverse ? "inverse" : "forward");
      // Each row at a position of its own (data.reset_positions), T and pos0 then unused.
      std::vector<int32_t> at(size_t(c.N));
      for (size_t r = 0; r < at.size(); ++r) at[r] = int32_t((r * 37 + 11) % 1024);
      const int32_t* g_at = dev(at);
      cpu->rope(qkv.data(), table.data(), c.N, 1, 0, c.C, c.NH, c.NKV, inverse, at.data(), c.rot);
      gpu->rope(g_qkv, g_table, c.N, 1, 0, c.C, c.NH, c.NKV, inverse, g_at, c.rot);
      EXPECT_TRUE(close(host(g_qkv, n), qkv, kElemTol, 1e-6)) << "at positions";
    }
  }
}

// ---- per-head RMSNorm of q and k (qk_norm) ---------------------------------------------------

// The shapes of the qk_norm tests: hd = C/NH of 16, 64 and 128, 40 (lanes partly idle on the
// second pass over a head) and 2; NKV == NH and NKV < NH; rows enough for many column-sum slices.
struct QkShape {
  int N, C, NH, NKV;
};
const QkShape kQkShapes[] = {{10, 48, 3, 3}, {37, 64, 4, 2}, {300, 768, 12, 4}, {2048, 768, 12, 12},
                             {5, 128, 1, 1}, {33, 80, 2, 1}, {7, 8, 4, 2}};

// One qk_norm test case: its sizes and random inputs (seeds from `seed` on).
struct QkCase {
  int hd;
  size_t n, nr;  // elements of qkv and of rstd
  Vec qkv, wq, wk;
  QkCase(const QkShape& s, uint32_t seed)
      : hd(s.C / s.NH),
        n(size_t(s.N) * qkv_width(s.C, s.NH, s.NKV)),
        nr(size_t(s.N) * (s.NH + s.NKV)),
        qkv(random_vec(n, seed, -2.0f, 2.0f)),
        wq(random_vec(size_t(hd), seed + 1, 0.5f, 1.5f)),
        wk(random_vec(size_t(hd), seed + 2, 0.5f, 1.5f)) {}
};

// Forward into NaN-filled buffers (every value of out, v included, and of rstd is written), from
// the same inputs as the CPU's.
TEST_F(CudaBackendTest, QkNormForward) {
  for (const QkShape& s : kQkShapes) {
    SCOPED_TRACE(::testing::Message()
                 << "N=" << s.N << " C=" << s.C << " NH=" << s.NH << " NKV=" << s.NKV);
    const QkCase c(s, 130);
    const size_t n = c.n, nr = c.nr;
    const Vec &qkv = c.qkv, &wq = c.wq, &wk = c.wk;
    Vec out(n), rstd(nr);
    cpu->qk_norm_forward(out.data(), rstd.data(), qkv.data(), wq.data(), wk.data(), s.N, s.C, s.NH,
                         s.NKV);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    float *g_out = dev(Vec(n, nan)), *g_rstd = dev(Vec(nr, nan));
    gpu->qk_norm_forward(g_out, g_rstd, dev(qkv), dev(wq), dev(wk), s.N, s.C, s.NH, s.NKV);
    EXPECT_TRUE(close(host(g_out, n), out, kElemTol, 1e-6)) << "out";
    EXPECT_TRUE(close(host(g_rstd, nr), rstd, kElemTol, 0.0)) << "rstd";
  }
}

// Backward from the CPU's rstd: accumulating onto random dqkv, dwq and dwk (twice, bit for bit
// alike), overwriting a NaN-filled dqkv, and overwriting in place (dqkv == dout); the weight
// gradients accumulate onto what they hold in every mode.
TEST_F(CudaBackendTest, QkNormBackward) {
  for (const QkShape& s : kQkShapes) {
    SCOPED_TRACE(::testing::Message()
                 << "N=" << s.N << " C=" << s.C << " NH=" << s.NH << " NKV=" << s.NKV);
    const QkCase c(s, 140);
    const int hd = c.hd;
    const size_t n = c.n, nr = c.nr;
    const Vec &qkv = c.qkv, &wq = c.wq, &wk = c.wk;
    const Vec dout = random_vec(n, 143);
    Vec out(n), rstd(nr);
    cpu->qk_norm_forward(out.data(), rstd.data(), qkv.data(), wq.data(), wk.data(), s.N, s.C, s.NH,
                         s.NKV);
    const Vec dqkv0 = random_vec(n, 144), dwq0 = random_vec(hd, 145), dwk0 = random_vec(hd, 146);
    Vec dqkv = dqkv0, dwq = dwq0, dwk = dwk0;
    cpu->qk_norm_backward(dqkv.data(), dwq.data(), dwk.data(), dout.data(), qkv.data(), wq.data(),
                          wk.data(), rstd.data(), s.N, s.C, s.NH, s.NKV);
    Vec fresh(n), dwq_fresh = dwq0, dwk_fresh = dwk0;
    cpu->qk_norm_backward(fresh.data(), dwq_fresh.data(), dwk_fresh.data(), dout.data(), qkv.data(),
                          wq.data(), wk.data(), rstd.data(), s.N, s.C, s.NH, s.NKV,
                          GradMode::overwrite);
    float *d_dout = dev(dout), *d_qkv = dev(qkv), *d_wq = dev(wq), *d_wk = dev(wk);
    float* d_rstd = dev(rstd);
    // Column sums over N·NH (N·NKV) head-rows in another order: norm-relative 1e-5.
    const auto check_dw = [&](float* g_dwq, float* g_dwk, const char* what) {
      EXPECT_TRUE(close(host(g_dwq, hd), dwq, kElemTol, 1e-5)) << "dwq " << what;
      EXPECT_TRUE(close(host(g_dwk, hd), dwk, kElemTol, 1e-5)) << "dwk " << what;
    };
    Vec first[3];
    for (int run = 0; run < 2; ++run) {
      float *g_dqkv = dev(dqkv0), *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_norm_backward(g_dqkv, g_dwq, g_dwk, d_dout, d_qkv, d_wq, d_wk, d_rstd, s.N, s.C, s.NH,
                            s.NKV);
      const Vec got[3] = {host(g_dqkv, n), host(g_dwq, hd), host(g_dwk, hd)};
      if (run == 0) {
        EXPECT_TRUE(close(got[0], dqkv, kElemTol, 1e-6)) << "dqkv (accumulated)";
        check_dw(g_dwq, g_dwk, "(accumulated)");
        for (int k = 0; k < 3; ++k) first[k] = got[k];
      } else {
        for (int k = 0; k < 3; ++k) EXPECT_TRUE(bit_equal(got[k], first[k])) << "output " << k;
      }
    }
    {
      float* g_nan = dev(Vec(n, std::numeric_limits<float>::quiet_NaN()));
      float *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_norm_backward(g_nan, g_dwq, g_dwk, d_dout, d_qkv, d_wq, d_wk, d_rstd, s.N, s.C, s.NH,
                            s.NKV, GradMode::overwrite);
      EXPECT_TRUE(close(host(g_nan, n), fresh, kElemTol, 1e-6)) << "dqkv (overwritten)";
      check_dw(g_dwq, g_dwk, "(overwriting)");
    }
    {
      float* g_inplace = dev(dout);
      float *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_norm_backward(g_inplace, g_dwq, g_dwk, g_inplace, d_qkv, d_wq, d_wk, d_rstd, s.N, s.C,
                            s.NH, s.NKV, GradMode::overwrite);
      EXPECT_TRUE(close(host(g_inplace, n), fresh, kElemTol, 1e-6)) << "dqkv (in place)";
      check_dw(g_dwq, g_dwk, "(in place)");
    }
  }
}

// ---- RMSNorm of q and k over all heads (qk_full_norm) -----------------------------------------

// The sums (of squares, and the backward's dots), the forward with the vectors twice as wide as
// this call's (a tensor-parallel rank's half: its sums doubled), and the backward accumulating
// (twice, bit for bit alike), overwriting a NaN-filled dqkv and in place, against the CPU's;
// the shapes of the per-head tests.
TEST_F(CudaBackendTest, QkFullNorm) {
  for (const QkShape& s : kQkShapes) {
    SCOPED_TRACE(::testing::Message()
                 << "N=" << s.N << " C=" << s.C << " NH=" << s.NH << " NKV=" << s.NKV);
    const int K = s.NKV * (s.C / s.NH), Dq = 2 * s.C, Dk = 2 * K;
    const size_t n = size_t(s.N) * qkv_width(s.C, s.NH, s.NKV), nr = 2 * size_t(s.N);
    const Vec qkv = random_vec(n, 160, -2.0f, 2.0f), dout = random_vec(n, 161);
    const Vec wq = random_vec(size_t(s.C), 162, 0.5f, 1.5f),
              wk = random_vec(size_t(K), 163, 0.5f, 1.5f);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    float *d_qkv = dev(qkv), *d_dout = dev(dout), *d_wq = dev(wq), *d_wk = dev(wk);
    Vec sums(nr), rstd(nr), out(n), dots(nr);
    cpu->qk_full_norm_sums(sums.data(), qkv.data(), nullptr, nullptr, nullptr, nullptr, s.N, s.C,
                           s.NH, s.NKV);
    float* g_sums = dev(Vec(nr, nan));
    gpu->qk_full_norm_sums(g_sums, d_qkv, nullptr, nullptr, nullptr, nullptr, s.N, s.C, s.NH,
                           s.NKV);
    EXPECT_TRUE(close(host(g_sums, nr), sums, kElemTol, 1e-6)) << "sums";
    for (float& v : sums) v *= 2.0f;  // the other half's
    cpu->qk_full_norm_forward(out.data(), rstd.data(), qkv.data(), sums.data(), wq.data(),
                              wk.data(), s.N, s.C, s.NH, s.NKV, Dq, Dk);
    float *g_out = dev(Vec(n, nan)), *g_rstd = dev(Vec(nr, nan)), *d_sums = dev(sums);
    gpu->qk_full_norm_forward(g_out, g_rstd, d_qkv, d_sums, d_wq, d_wk, s.N, s.C, s.NH, s.NKV, Dq,
                              Dk);
    EXPECT_TRUE(close(host(g_out, n), out, kElemTol, 1e-6)) << "out";
    EXPECT_TRUE(close(host(g_rstd, nr), rstd, kElemTol, 0.0)) << "rstd";
    cpu->qk_full_norm_sums(dots.data(), qkv.data(), dout.data(), wq.data(), wk.data(), rstd.data(),
                           s.N, s.C, s.NH, s.NKV);
    float *d_rstd = dev(rstd), *g_dots = dev(Vec(nr, nan));
    gpu->qk_full_norm_sums(g_dots, d_qkv, d_dout, d_wq, d_wk, d_rstd, s.N, s.C, s.NH, s.NKV);
    EXPECT_TRUE(close(host(g_dots, nr), dots, kElemTol, 1e-6)) << "dots";
    for (float& v : dots) v *= 2.0f;
    float* d_dots = dev(dots);
    const Vec dqkv0 = random_vec(n, 164), dwq0 = random_vec(size_t(s.C), 165),
              dwk0 = random_vec(size_t(K), 166);
    Vec dqkv = dqkv0, dwq = dwq0, dwk = dwk0, fresh(n), fq = dwq0, fk = dwk0;
    cpu->qk_full_norm_backward(dqkv.data(), dwq.data(), dwk.data(), dout.data(), qkv.data(),
                               wq.data(), wk.data(), rstd.data(), dots.data(), s.N, s.C, s.NH,
                               s.NKV, Dq, Dk);
    cpu->qk_full_norm_backward(fresh.data(), fq.data(), fk.data(), dout.data(), qkv.data(),
                               wq.data(), wk.data(), rstd.data(), dots.data(), s.N, s.C, s.NH,
                               s.NKV, Dq, Dk, GradMode::overwrite);
    const auto check_dw = [&](float* g_dwq, float* g_dwk, const char* what) {
      EXPECT_TRUE(close(host(g_dwq, size_t(s.C)), dwq, kElemTol, 1e-5)) << "dwq " << what;
      EXPECT_TRUE(close(host(g_dwk, size_t(K)), dwk, kElemTol, 1e-5)) << "dwk " << what;
    };
    Vec first;
    for (int run = 0; run < 2; ++run) {
      float *g_dqkv = dev(dqkv0), *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_full_norm_backward(g_dqkv, g_dwq, g_dwk, d_dout, d_qkv, d_wq, d_wk, d_rstd, d_dots,
                                 s.N, s.C, s.NH, s.NKV, Dq, Dk);
      const Vec got = host(g_dqkv, n);
      if (run == 0) {
        EXPECT_TRUE(close(got, dqkv, kElemTol, 1e-6)) << "dqkv (accumulated)";
        check_dw(g_dwq, g_dwk, "(accumulated)");
        first = got;
      } else {
        EXPECT_TRUE(bit_equal(got, first)) << "dqkv run to run";
      }
    }
    for (const bool in_place : {false, true}) {
      float* g_d = in_place ? dev(dout) : dev(Vec(n, nan));
      float *g_dwq = dev(dwq0), *g_dwk = dev(dwk0);
      gpu->qk_full_norm_backward(g_d, g_dwq, g_dwk, in_place ? g_d : d_dout, d_qkv, d_wq, d_wk,
                                 d_rstd, d_dots, s.N, s.C, s.NH, s.NKV, Dq, Dk,
                                 GradMode::overwrite);
      EXPECT_TRUE(close(host(g_d, n), fresh, kElemTol, 1e-6)) << "dqkv in place " << in_place;
      check_dw(g_dwq, g_dwk, in_place ? "(in place)" : "(overwriting)");
    }
  }
}

// Another epsilon (model.norm_eps; Qwen2's 1e-6) reaches the kernels: small inputs, whose mean
// square is near it, give the CPU's outputs and statistics (fp32; bf16 in test_cuda_bf16.cpp),
// LayerNorm, RMSNorm and QK-norm.
TEST_F(CudaBackendTest, NormsTakeTheirEpsilon) {
  const float eps = 1e-6f;
  for (const NCShape& s : kLnShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C);
    const size_t NC = size_t(s.N) * s.C;
    const Vec a = random_vec(NC, 40, -2e-3f, 2e-3f), b = random_vec(NC, 41, -1e-3f, 1e-3f);
    const Vec w = random_vec(s.C, 42, 0.5f, 1.5f), bias = random_vec(s.C, 43);
    for (const bool rms : {false, true}) {
      Vec sum(NC), out(NC), mean(s.N), rstd(s.N);
      cpu->residual_layernorm_forward(sum.data(), out.data(), rms ? nullptr : mean.data(),
                                      rstd.data(), a.data(), b.data(), w.data(),
                                      rms ? nullptr : bias.data(), s.N, s.C, eps);
      float *g_sum = dev_zeros(NC), *g_out = dev_zeros(NC), *g_mean = dev_zeros(s.N),
            *g_rstd = dev_zeros(s.N);
      gpu->residual_layernorm_forward(g_sum, g_out, rms ? nullptr : g_mean, g_rstd, dev(a), dev(b),
                                      dev(w), rms ? nullptr : dev(bias), s.N, s.C, eps);
      EXPECT_TRUE(close(host(g_out, NC), out, kElemTol, 1e-6)) << "out rms=" << rms;
      EXPECT_TRUE(close(host(g_rstd, s.N), rstd, kElemTol, 0.0)) << "rstd rms=" << rms;
    }
  }
  for (const QkShape& s : kQkShapes) {
    const QkCase c(s, 140);
    Vec qkv = c.qkv;
    for (float& x : qkv) x *= 1e-3f;
    Vec out(c.n), rstd(c.nr);
    cpu->qk_norm_forward(out.data(), rstd.data(), qkv.data(), c.wq.data(), c.wk.data(), s.N, s.C,
                         s.NH, s.NKV, eps);
    float *g_out = dev_zeros(c.n), *g_rstd = dev_zeros(c.nr);
    gpu->qk_norm_forward(g_out, g_rstd, dev(qkv), dev(c.wq), dev(c.wk), s.N, s.C, s.NH, s.NKV, eps);
    EXPECT_TRUE(close(host(g_out, c.n), out, kElemTol, 1e-6)) << "qk out";
    EXPECT_TRUE(close(host(g_rstd, c.nr), rstd, kElemTol, 0.0)) << "qk rstd";
  }
}

// Accumulating (+=) twice, bit for bit alike, then overwriting a NaN-filled gradient. With
// NKV < NH a key/value head's gradient sums over its query heads.
TEST_F(CudaBackendTest, AttentionBackwardAccumulatesDeterministically) {
  for (const AttShape& s : kAttShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C
                                      << " NH=" << s.NH << " NKV=" << s.NKV);
    const size_t nqkv = size_t(s.B) * s.T * qkv_width(s.C, s.NH, s.NKV);
    const size_t nout = size_t(s.B) * s.T * s.C;
    const size_t M = size_t(s.B) * s.NH, natt = M * s.T * s.T;
    const Vec qkv = random_vec(nqkv, 60, -2.0f, 2.0f), dout = random_vec(nout, 61);
    const Vec dqkv0 = random_vec(nqkv, 62);
    // CPU: its own forward probabilities.
    Vec out(nout), att(natt, 0.0f), scratch(natt, 0.0f), dqkv = dqkv0, fresh(nqkv);
    cpu->attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV);
    cpu->attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), s.B,
                            s.T, s.C, s.NH, s.NKV);
    cpu->attention_backward(fresh.data(), scratch.data(), dout.data(), qkv.data(), att.data(), s.B,
                            s.T, s.C, s.NH, s.NKV, GradMode::overwrite);
    // GPU: its own forward probabilities, with NaN above the diagonal (unspecified there by the
    // interface: backward must not read them).
    float* d_qkv = dev(qkv);
    float* g_out = dev_zeros(nout);
    float* g_att = dev_zeros(natt);
    gpu->attention_forward(g_out, g_att, d_qkv, s.B, s.T, s.C, s.NH, s.NKV);
    Vec poisoned = host(g_att, natt);
    for (size_t m = 0; m < M; ++m)
      for (int i = 0; i < s.T; ++i)
        for (int j = i + 1; j < s.T; ++j)
          poisoned[(m * s.T + i) * s.T + j] = std::numeric_limits<float>::quiet_NaN();
    gpu->copy_from_host(g_att, poisoned.data(), natt);
    float* d_dout = dev(dout);
    Vec first;
    for (int run = 0; run < 2; ++run) {
      float* g_dqkv = dev(dqkv0);
      float* g_scratch = dev(random_vec(natt, 63));  // garbage: the op may overwrite it
      gpu->attention_backward(g_dqkv, g_scratch, d_dout, d_qkv, g_att, s.B, s.T, s.C, s.NH, s.NKV);
      const Vec got = host(g_dqkv, nqkv);
      if (run == 0) {
        EXPECT_TRUE(close(got, dqkv, kGemmTol, 1e-5)) << "dqkv";
        first = got;
      } else {
        EXPECT_TRUE(bit_equal(got, first)) << "dqkv not deterministic";
      }
    }
    float* g_nan = dev(Vec(nqkv, std::numeric_limits<float>::quiet_NaN()));
    gpu->attention_backward(g_nan, dev(random_vec(natt, 64)), d_dout, d_qkv, g_att, s.B, s.T, s.C,
                            s.NH, s.NKV, GradMode::overwrite);
    EXPECT_TRUE(close(host(g_nan, nqkv), fresh, kGemmTol, 1e-5)) << "dqkv (overwritten)";
  }
}

// Document masks (key_begin): forward (out, probabilities) and backward against the CPU
// backend, with boundaries inside and at the edges of rows, and grouped-query heads.
TEST_F(CudaBackendTest, AttentionDocumentMask) {
  const AttShape shapes[] = {{2, 100, 96, 4, 4}, {2, 130, 96, 4, 2}};
  for (const AttShape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " NKV=" << s.NKV);
    const std::vector<int32_t> kb =
        attention_reference::key_begin_of_starts(s.B, s.T, {{0, 1, 50, 64, 99}, {0, 70}});
    const size_t nqkv = size_t(s.B) * s.T * qkv_width(s.C, s.NH, s.NKV);
    const size_t nout = size_t(s.B) * s.T * s.C;
    const size_t M = size_t(s.B) * s.NH, natt = M * s.T * s.T;
    const Vec qkv = random_vec(nqkv, 70, -2.0f, 2.0f), dout = random_vec(nout, 71);
    Vec out(nout), att(natt, 0.0f), scratch(natt, 0.0f), dqkv(nqkv, 0.0f);
    cpu->attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV,
                           kb.data());
    cpu->attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), s.B,
                            s.T, s.C, s.NH, s.NKV, GradMode::accumulate, kb.data());
    const int32_t* g_kb = dev(kb);
    float* d_qkv = dev(qkv);
    float* g_out = dev(random_vec(nout, 72));
    float* g_att = dev(random_vec(natt, 73));
    gpu->attention_forward(g_out, g_att, d_qkv, s.B, s.T, s.C, s.NH, s.NKV, g_kb);
    EXPECT_TRUE(close(host(g_out, nout), out, kGemmTol, 1e-5)) << "out";
    EXPECT_TRUE(close(lower_triangle(host(g_att, natt), M, s.T), lower_triangle(att, M, s.T),
                      kGemmTol, 1e-6))
        << "att (zero before each row's first key)";
    float* g_dqkv = dev_zeros(nqkv);
    gpu->attention_backward(g_dqkv, dev(random_vec(natt, 74)), dev(dout), d_qkv, g_att, s.B, s.T,
                            s.C, s.NH, s.NKV, GradMode::accumulate, g_kb);
    EXPECT_TRUE(close(host(g_dqkv, nqkv), dqkv, kGemmTol, 1e-5)) << "dqkv";
  }
}

// Attention dropout (train.attention_dropout): the fp32 forward and backward against the CPU
// backend's under the same mask, with a document mask, grouped queries and head 0 of the call at
// global head 2; the probabilities kept in att are the undropped ones.
TEST_F(CudaBackendTest, AttentionDropout) {
  const AttShape shapes[] = {{2, 100, 96, 4, 4}, {2, 130, 96, 4, 2}};
  for (const AttShape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " NKV=" << s.NKV);
    const std::vector<int32_t> kb =
        attention_reference::key_begin_of_starts(s.B, s.T, {{0, 1, 50, 64, 99}, {0, 70}});
    const std::vector<int32_t> keys = attention_reference::dropout_row_keys(s.B, s.T, 11, 3);
    const AttentionDropout drop{keys.data(), 0.25f, 3, 2};
    const size_t nqkv = size_t(s.B) * s.T * qkv_width(s.C, s.NH, s.NKV);
    const size_t nout = size_t(s.B) * s.T * s.C;
    const size_t M = size_t(s.B) * s.NH, natt = M * s.T * s.T;
    const Vec qkv = random_vec(nqkv, 75, -2.0f, 2.0f), dout = random_vec(nout, 76);
    Vec out(nout), att(natt, 0.0f), scratch(natt, 0.0f), dqkv(nqkv, 0.0f);
    cpu->attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV,
                           kb.data(), {}, 0.0f, 0.0f, drop);
    cpu->attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), s.B,
                            s.T, s.C, s.NH, s.NKV, GradMode::overwrite, kb.data(), {}, 0.0f, 0.0f,
                            drop);
    const AttentionDropout g_drop{dev(keys), drop.p, drop.layer, drop.head0};
    const int32_t* g_kb = dev(kb);
    float* d_qkv = dev(qkv);
    float* g_out = dev(random_vec(nout, 77));
    float* g_att = dev(random_vec(natt, 78));
    gpu->attention_forward(g_out, g_att, d_qkv, s.B, s.T, s.C, s.NH, s.NKV, g_kb, {}, 0.0f, 0.0f,
                           g_drop);
    EXPECT_TRUE(close(host(g_out, nout), out, kGemmTol, 1e-5)) << "out";
    EXPECT_TRUE(close(lower_triangle(host(g_att, natt), M, s.T), lower_triangle(att, M, s.T),
                      kGemmTol, 1e-6))
        << "att (the undropped probabilities)";
    float* g_dqkv = dev(random_vec(nqkv, 79));
    gpu->attention_backward(g_dqkv, dev(random_vec(natt, 80)), dev(dout), d_qkv, g_att, s.B, s.T,
                            s.C, s.NH, s.NKV, GradMode::overwrite, g_kb, {}, 0.0f, 0.0f, g_drop);
    EXPECT_TRUE(close(host(g_dqkv, nqkv), dqkv, kGemmTol, 1e-5)) << "dqkv";
  }
}

// ---- elementwise ---------------------------------------------------------------------------

const size_t kElemSizes[] = {1, 1000, (size_t{1} << 20) + 3};

TEST_F(CudaBackendTest, GeluForwardBackward) {
  for (size_t n : kElemSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const Vec inp = random_vec(n, 70, -5.0f, 5.0f), dout = random_vec(n, 71);
    const Vec dinp0 = random_vec(n, 72);
    Vec out(n), dinp = dinp0;
    cpu->gelu_forward(out.data(), inp.data(), n);
    cpu->gelu_backward(dinp.data(), inp.data(), dout.data(), n);
    float* d_inp = dev(inp);
    float* g_out = dev_zeros(n);
    float* g_dinp = dev(dinp0);
    gpu->gelu_forward(g_out, d_inp, n);
    gpu->gelu_backward(g_dinp, d_inp, dev(dout), n);
    // The CPU's tanh has an absolute error of ~1e-7; in the backward it is multiplied by up to
    // |x·du/dx| ≈ 20 where 1 − t² is tiny, hence the absolute floors.
    EXPECT_TRUE(close(host(g_out, n), out, kElemTol, 1e-6)) << "out";
    EXPECT_TRUE(close(host(g_dinp, n), dinp, kElemTol, 1e-5)) << "dinp";
  }
}

// The squared ReLU, the exact GELU and the ReLU.
TEST_F(CudaBackendTest, PointwiseActivations) {
  for (Activation f : {Activation::relu2, Activation::gelu_exact, Activation::relu})
    for (size_t n : kElemSizes) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " activation " << int(f));
      const Vec inp = random_vec(n, 77, -5.0f, 5.0f), dout = random_vec(n, 78);
      const Vec dinp0 = random_vec(n, 79);
      Vec out(n), dinp = dinp0;
      cpu->activation_forward(f, out.data(), inp.data(), n);
      cpu->activation_backward(f, dinp.data(), inp.data(), dout.data(), n);
      float* d_inp = dev(inp);
      float* g_out = dev_zeros(n);
      float* g_dinp = dev(dinp0);
      gpu->activation_forward(f, g_out, d_inp, n);
      gpu->activation_backward(f, g_dinp, d_inp, dev(dout), n);
      EXPECT_TRUE(close(host(g_out, n), out, kElemTol, 1e-6)) << "out";
      EXPECT_TRUE(close(host(g_dinp, n), dinp, kElemTol, 1e-6)) << "dinp";
    }
}

// SwiGLU and GeGLU.
TEST_F(CudaBackendTest, SwigluForwardBackward) {
  for (const MmShape& s : {MmShape{64, 0, 2048}, MmShape{37, 0, 176}, MmShape{3, 0, 5}})
    for (int kind : {0, 1, 2}) {  // SwiGLU, GeGLU, gpt-oss's SwiGLU (model.glu_*)
      const bool gelu = kind == 1;
      const GluShape glu = kind == 2 ? GluShape{1.702f, 2.5f, 1.0f} : GluShape{};
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " H=" << s.OC << (gelu ? " geglu" : "")
                                        << (kind == 2 ? " clamped" : ""));
      const int N = s.N, H = s.OC;
      const size_t n = size_t(N) * H;
      const Vec pre = random_vec(2 * n, 74, -6.0f, 6.0f), dout = random_vec(n, 75);
      const Vec d0 = random_vec(2 * n, 76);
      Vec out(n), d = d0;
      auto fwd = [&](Backend& be, float* o, const float* p) {
        gelu ? be.geglu_forward(o, p, N, H) : be.swiglu_forward(o, p, N, H, glu);
      };
      auto bwd = [&](Backend& be, float* dp, const float* p, const float* dy) {
        gelu ? be.geglu_backward(dp, p, dy, N, H)
             : be.swiglu_backward(dp, p, dy, N, H, GradMode::accumulate, glu);
      };
      fwd(*cpu, out.data(), pre.data());
      bwd(*cpu, d.data(), pre.data(), dout.data());
      float *g_out = dev_zeros(n), *g_d = dev(d0);
      fwd(*gpu, g_out, dev(pre));
      bwd(*gpu, g_d, dev(pre), dev(dout));
      EXPECT_TRUE(close(host(g_out, n), out, kElemTol, 1e-6)) << "out";
      EXPECT_TRUE(close(host(g_d, 2 * n), d, kElemTol, 1e-6)) << "dpre";
    }
}

TEST_F(CudaBackendTest, AddAccumulateScale) {
  for (size_t n : kElemSizes) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const Vec a = random_vec(n, 80), b = random_vec(n, 81);
    Vec sum(n), acc = a, scaled = b;
    cpu->add(sum.data(), a.data(), b.data(), n);
    cpu->accumulate(acc.data(), b.data(), n);
    cpu->scale(scaled.data(), 0.37f, n);
    float *d_a = dev(a), *d_b = dev(b);
    float* g_sum = dev_zeros(n);
    gpu->add(g_sum, d_a, d_b, n);
    gpu->accumulate(d_a, d_b, n);  // a += b
    gpu->scale(d_b, 0.37f, n);
    EXPECT_TRUE(close(host(g_sum, n), sum, kElemTol, 0.0)) << "add";
    EXPECT_TRUE(close(host(d_a, n), acc, kElemTol, 0.0)) << "accumulate";
    EXPECT_TRUE(close(host(d_b, n), scaled, kElemTol, 0.0)) << "scale";
  }
}

// ---- cross-entropy -------------------------------------------------------------------------

struct CeShape {
  int N, V, Vp;
};
const CeShape kCeShapes[] = {{5, 37, 64}, {64, 50257, 50304}, {7, 128, 128}, {33, 1000, 1024}};

TEST_F(CudaBackendTest, CrossEntropyForwardBackward) {
  for (const CeShape& s : kCeShapes) {
    for (bool with_correct : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp << " correct=" << with_correct);
      const size_t total = size_t(s.N) * s.Vp;
      Vec logits = random_vec(total, 90, -4.0f, 4.0f);  // padded columns hold garbage
      IVec targets = random_ints(s.N, 91, 0, s.V);
      // Every other row: the target is the clear maximum (correct = 1).
      for (int n = 0; n < s.N; n += 2) logits[size_t(n) * s.Vp + targets[n]] += 10.0f;
      // Ties: row 1 has its maximum at two columns and the target at the first (correct = 1),
      // row 3 at two columns and the target at the second (correct = 0).
      for (int n : {1, 3}) {
        if (n >= s.N) continue;
        float* row = logits.data() + size_t(n) * s.Vp;
        const int a = s.V / 3, b = s.V / 3 + 5;
        row[a] = row[b] = 20.0f;
        targets[n] = n == 1 ? a : b;
      }
      const int ignored = s.N > 4 ? s.N - 1 : -1;  // a masked target: zeros, loss 0, no hit
      if (ignored >= 0) targets[ignored] = kIgnoredTarget;
      const float dloss_scale = 1.0f / float(s.N);
      Vec want = logits, losses(s.N), correct(s.N, -1.0f);
      cpu->crossentropy_forward_backward(want.data(), losses.data(),
                                         with_correct ? correct.data() : nullptr, targets.data(),
                                         s.N, s.V, s.Vp, dloss_scale);
      float* g_logits = dev(logits);
      float* g_losses = dev_zeros(s.N);
      float* g_correct = dev(Vec(s.N, -1.0f));
      int32_t* g_targets = dev(targets);
      gpu->crossentropy_forward_backward(g_logits, g_losses, with_correct ? g_correct : nullptr,
                                         g_targets, s.N, s.V, s.Vp, dloss_scale);
      const Vec got = host(g_logits, total);
      EXPECT_TRUE(close(host(g_losses, s.N), losses, kElemTol, 1e-7)) << "losses";
      // Absolute floor: 1e-7 of the largest gradient (dloss_scale at the targets).
      EXPECT_TRUE(close(got, want, kElemTol, 1e-7)) << "dlogits";
      for (int n = 0; n < s.N; ++n)
        for (int j = s.V; j < s.Vp; ++j)
          ASSERT_EQ(got[size_t(n) * s.Vp + j], 0.0f) << n << "," << j;
      const Vec got_correct = host(g_correct, s.N);
      if (with_correct) {
        EXPECT_TRUE(bit_equal(got_correct, correct)) << "correct";
        for (int n = 0; n < s.N; n += 2) EXPECT_EQ(got_correct[n], n == ignored ? 0.0f : 1.0f) << n;
        if (s.N > 3) {
          EXPECT_EQ(got_correct[1], 1.0f);
          EXPECT_EQ(got_correct[3], 0.0f);
        }
      } else {
        EXPECT_TRUE(bit_equal(got_correct, Vec(s.N, -1.0f))) << "correct written though null";
      }
      // Determinism.
      float* g_logits2 = dev(logits);
      float* g_losses2 = dev_zeros(s.N);
      gpu->crossentropy_forward_backward(g_logits2, g_losses2, nullptr, g_targets, s.N, s.V, s.Vp,
                                         dloss_scale);
      EXPECT_TRUE(bit_equal(host(g_logits2, total), got));
      EXPECT_TRUE(bit_equal(host(g_losses2, s.N), host(g_losses, s.N)));
    }
  }
}

// ---- vocabulary-parallel cross-entropy -----------------------------------------------------

// Per-rank slices [N, Vp] with V real columns: padding, none, a slice of only padding (V = 0),
// a GPT-2 vocabulary split over two ranks.
const CeShape kSliceShapes[] = {{5, 37, 64}, {7, 128, 128},    {6, 0, 16},
                                {3, 1, 8},   {33, 1000, 1024}, {16, 25152, 25152}};

// Random logits with garbage (1000) in the padding, ties in rows 1 and 2; targets in the
// slice, held elsewhere (-1) or past the real columns; the shift is the local max plus an
// offset (a global max from another rank).
struct SliceInputs {
  Vec logits, row_max;
  IVec targets;
};
SliceInputs slice_inputs(const CeShape& s, uint32_t seed) {
  SliceInputs in;
  in.logits = random_vec(size_t(s.N) * s.Vp, seed, -4.0f, 4.0f);
  in.targets = random_ints(s.N, seed + 1, 0, std::max(s.V, 1));
  in.row_max.resize(s.N);
  for (int n = 0; n < s.N; ++n) {
    float* row = in.logits.data() + size_t(n) * s.Vp;
    for (int j = s.V; j < s.Vp; ++j) row[j] = 1000.0f;
    if (s.V >= 2 && (n == 1 || n == 2)) row[s.V / 3] = row[s.V - 1] = 9.0f;
    if (s.V == 0 || n % 3 == 1) in.targets[n] = -1;
    if (n == 5) in.targets[n] = s.V;
    const float local = s.V > 0 ? *std::max_element(row, row + s.V) : -3.0f;
    in.row_max[n] = local + 0.5f * float(n % 2);
  }
  return in;
}

TEST_F(CudaBackendTest, LogitsRowMax) {
  for (const CeShape& s : kSliceShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    const SliceInputs in = slice_inputs(s, 130);
    Vec row_max(s.N), argmax(s.N);
    cpu->logits_row_max(row_max.data(), argmax.data(), in.logits.data(), s.N, s.V, s.Vp);
    float *g_max = dev(Vec(s.N, 7.0f)), *g_arg = dev(Vec(s.N, 7.0f));
    gpu->logits_row_max(g_max, g_arg, dev(in.logits), s.N, s.V, s.Vp);
    EXPECT_TRUE(bit_equal(host(g_max, s.N), row_max)) << "row_max";
    EXPECT_TRUE(bit_equal(host(g_arg, s.N), argmax)) << "argmax";
    if (s.V >= 2 && s.N > 2) {
      EXPECT_EQ(host(g_arg, s.N)[1], float(s.V / 3));  // a tie: the first column
    }
  }
}

TEST_F(CudaBackendTest, SoftmaxPartialSums) {
  for (const CeShape& s : kSliceShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    const SliceInputs in = slice_inputs(s, 140);
    Vec sum_exp(s.N), target_logit(s.N);
    cpu->softmax_partial_sums(sum_exp.data(), target_logit.data(), in.logits.data(),
                              in.row_max.data(), in.targets.data(), s.N, s.V, s.Vp);
    float *g_sum = dev(Vec(s.N, 7.0f)), *g_tl = dev(Vec(s.N, 7.0f));
    const float* g_logits = dev(in.logits);
    const float* g_max = dev(in.row_max);
    const int32_t* g_targets = dev(in.targets);
    gpu->softmax_partial_sums(g_sum, g_tl, g_logits, g_max, g_targets, s.N, s.V, s.Vp);
    const Vec got = host(g_sum, s.N);
    EXPECT_TRUE(close(got, sum_exp, kElemTol, 0.0)) << "sum_exp";
    EXPECT_TRUE(bit_equal(host(g_tl, s.N), target_logit)) << "target_logit";
    // Determinism.
    gpu->softmax_partial_sums(g_sum, g_tl, g_logits, g_max, g_targets, s.N, s.V, s.Vp);
    EXPECT_TRUE(bit_equal(host(g_sum, s.N), got));
  }
}

TEST_F(CudaBackendTest, CrossEntropyBackwardPartial) {
  for (const CeShape& s : kSliceShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    SliceInputs in = slice_inputs(s, 150);
    in.targets[0] = kIgnoredTarget;  // a masked target: a row of zeros
    // Global sums: this slice's terms plus other ranks' (1.0 + 0.3 n).
    Vec sum_exp(s.N), target_logit(s.N);
    cpu->softmax_partial_sums(sum_exp.data(), target_logit.data(), in.logits.data(),
                              in.row_max.data(), in.targets.data(), s.N, s.V, s.Vp);
    for (int n = 0; n < s.N; ++n) sum_exp[n] += 1.0f + 0.3f * float(n);
    const float dloss_scale = 1.0f / float(s.N);
    Vec want = in.logits;
    cpu->crossentropy_backward_partial(want.data(), in.row_max.data(), sum_exp.data(),
                                       in.targets.data(), s.N, s.V, s.Vp, dloss_scale);
    const size_t total = size_t(s.N) * s.Vp;
    float* g_logits = dev(in.logits);
    const float* g_max = dev(in.row_max);
    const float* g_sum = dev(sum_exp);
    const int32_t* g_targets = dev(in.targets);
    gpu->crossentropy_backward_partial(g_logits, g_max, g_sum, g_targets, s.N, s.V, s.Vp,
                                       dloss_scale);
    const Vec got = host(g_logits, total);
    EXPECT_TRUE(close(got, want, kElemTol, 1e-7)) << "dlogits";
    for (int n = 0; n < s.N; ++n)
      for (int j = s.V; j < s.Vp; ++j) ASSERT_EQ(got[size_t(n) * s.Vp + j], 0.0f) << n << "," << j;
    // Determinism.
    float* g_logits2 = dev(in.logits);
    gpu->crossentropy_backward_partial(g_logits2, g_max, g_sum, g_targets, s.N, s.V, s.Vp,
                                       dloss_scale);
    EXPECT_TRUE(bit_equal(host(g_logits2, total), got));
  }
}

void CudaBackendTest::expect_loss_matches_cpu(const CeShape& s, const Vec& logits,
                                              const IVec& targets, float dloss_scale, float z_loss,
                                              float softcap) {
  const size_t total = size_t(s.N) * s.Vp;
  Vec want = logits, losses(s.N), log_z(s.N);
  cpu->crossentropy_forward_backward(want.data(), losses.data(), nullptr, targets.data(), s.N, s.V,
                                     s.Vp, dloss_scale, z_loss, log_z.data(), softcap);
  float* g_logits = dev(logits);
  float *g_losses = dev_zeros(s.N), *g_log_z = dev(Vec(s.N, 7.0f));
  int32_t* g_targets = dev(targets);
  gpu->crossentropy_forward_backward(g_logits, g_losses, nullptr, g_targets, s.N, s.V, s.Vp,
                                     dloss_scale, z_loss, g_log_z, softcap);
  EXPECT_TRUE(close(host(g_losses, s.N), losses, kElemTol, 1e-7)) << "losses";
  EXPECT_TRUE(close(host(g_log_z, s.N), log_z, kElemTol, 1e-7)) << "log Z";
  EXPECT_TRUE(close(host(g_logits, total), want, kElemTol, 1e-7)) << "dlogits";
  // The vocabulary-parallel backward from the whole row's statistics: the same dlogits.
  Vec row_max(s.N), argmax(s.N), sum_exp(s.N), target_logit(s.N);
  cpu->logits_row_max(row_max.data(), argmax.data(), logits.data(), s.N, s.V, s.Vp);
  cpu->softmax_partial_sums(sum_exp.data(), target_logit.data(), logits.data(), row_max.data(),
                            targets.data(), s.N, s.V, s.Vp);
  Vec want_partial = logits;
  cpu->crossentropy_backward_partial(want_partial.data(), row_max.data(), sum_exp.data(),
                                     targets.data(), s.N, s.V, s.Vp, dloss_scale, z_loss, softcap);
  float* g_partial = dev(logits);
  gpu->crossentropy_backward_partial(g_partial, dev(row_max), dev(sum_exp), g_targets, s.N, s.V,
                                     s.Vp, dloss_scale, z_loss, softcap);
  EXPECT_TRUE(close(host(g_partial, total), want_partial, kElemTol, 1e-7)) << "partial";
}

// train.z_loss: the fused op and the vocabulary-parallel backward with c > 0 against the CPU
// backend's (the softmax term scaled by 1 + 2c·log Z, log Z written out, 0 for a masked row).
TEST_F(CudaBackendTest, CrossEntropyZLossMatchesCpu) {
  for (const CeShape& s : kCeShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    IVec targets = random_ints(s.N, 96, 0, s.V);
    if (s.N > 2) targets[1] = kIgnoredTarget;
    expect_loss_matches_cpu(s, random_vec(size_t(s.N) * s.Vp, 95, -4.0f, 4.0f), targets,
                            1.0f / float(s.N), 0.05f, 0.0f);
  }
}

// model.logit_softcap: the cap on raw logits past it (tanhf against the CPU's series and exp
// forms), then the fused op and the vocabulary-parallel backward with the cap's derivative (and
// a z-loss) against the CPU backend's.
TEST_F(CudaBackendTest, LogitSoftcapAndItsCrossEntropyMatchCpu) {
  const float cap = 15.0f;
  for (const CeShape& s : kCeShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
    const size_t total = size_t(s.N) * s.Vp;
    Vec capped = random_vec(total, 97, -40.0f, 40.0f);
    float* g_logits = dev(capped);
    cpu->scale_cap_logits(capped.data(), total, 1.0f, cap);
    gpu->scale_cap_logits(g_logits, total, 1.0f, cap);
    EXPECT_TRUE(close(host(g_logits, total), capped, kElemTol, 1e-7)) << "capped logits";
    IVec targets = random_ints(s.N, 98, 0, s.V);
    if (s.N > 2) targets[1] = kIgnoredTarget;
    expect_loss_matches_cpu(s, capped, targets, 1.0f / float(s.N), 0.01f, cap);
  }
}

// model.clip_qkv: the clamp (out of place and in place) and its gradient, bit for bit the CPU
// backend's (a comparison and a copy per element).
TEST_F(CudaBackendTest, ClampAndItsGradientMatchCpu) {
  const size_t n = 100003;  // not a multiple of the block
  const Vec in = random_vec(n, 171, -3.0f, 3.0f), grad = random_vec(n, 172, -1.0f, 1.0f);
  Vec out(n), d = grad;
  float* g_in = dev(in);
  float* g_out = dev(out);
  float* g_d = dev(grad);
  cpu->clamp(out.data(), in.data(), n, 1.5f);
  gpu->clamp(g_out, g_in, n, 1.5f);
  EXPECT_EQ(host(g_out, n), out) << "clamped";
  cpu->clamp_backward(d.data(), in.data(), n, 1.5f);
  gpu->clamp_backward(g_d, g_in, n, 1.5f);
  EXPECT_EQ(host(g_d, n), d) << "gradient";
  gpu->clamp(g_in, g_in, n, 1.5f);  // in place
  EXPECT_EQ(host(g_in, n), out) << "in place";
}

// train.hidden_dropout's op, bit for bit the CPU backend's (the same mask; one fp32 product):
// 3001 rows of 257 (not a multiple of the block), keys of arbitrary rows.
TEST_F(CudaBackendTest, DropoutMatchesCpu) {
  const int rows = 3001, C = 257;
  const size_t n = size_t(rows) * C;
  IVec keys(2 * size_t(rows));
  for (int r = 0; r < rows; ++r) {
    const uint64_t k = dropout_row_key(3, uint64_t(r / 100), uint32_t(r % 100));
    keys[2 * size_t(r)] = int32_t(uint32_t(k));
    keys[2 * size_t(r) + 1] = int32_t(uint32_t(k >> 32));
  }
  Vec x = random_vec(n, 173, -2.0f, 2.0f);
  float* g_x = dev(x);
  int32_t* g_keys = dev(keys);
  cpu->dropout(x.data(), keys.data(), rows, C, 9, 0.1f);
  gpu->dropout(g_x, g_keys, rows, C, 9, 0.1f);
  EXPECT_EQ(host(g_x, n), x);
}

// One slice holding the whole vocabulary: the three ops give the fused op's loss and dlogits.
TEST_F(CudaBackendTest, SingleSliceMatchesFusedCrossEntropy) {
  const int N = 8, V = 50257, Vp = 50304;
  const Vec logits = random_vec(size_t(N) * Vp, 160, -4.0f, 4.0f);
  const IVec targets = random_ints(N, 161, 0, V);
  const float dloss_scale = 1.0f / N;
  float* fused = dev(logits);
  float* losses = dev_zeros(N);
  int32_t* g_targets = dev(targets);
  gpu->crossentropy_forward_backward(fused, losses, nullptr, g_targets, N, V, Vp, dloss_scale);

  float* split = dev(logits);
  float *row_max = dev_zeros(N), *argmax = dev_zeros(N), *sum_exp = dev_zeros(N),
        *target_logit = dev_zeros(N);
  gpu->logits_row_max(row_max, argmax, split, N, V, Vp);
  gpu->softmax_partial_sums(sum_exp, target_logit, split, row_max, g_targets, N, V, Vp);
  gpu->crossentropy_backward_partial(split, row_max, sum_exp, g_targets, N, V, Vp, dloss_scale);
  const Vec mx = host(row_max, N), sum = host(sum_exp, N), tl = host(target_logit, N);
  Vec split_losses(N);
  for (int n = 0; n < N; ++n)
    split_losses[n] = float(std::log(double(sum[n])) + double(mx[n]) - double(tl[n]));
  EXPECT_TRUE(close(split_losses, host(losses, N), 1e-6, 0.0)) << "losses";
  EXPECT_TRUE(close(host(split, size_t(N) * Vp), host(fused, size_t(N) * Vp), kElemTol, 1e-7))
      << "dlogits";
}

// ---- reductions and optimizers -------------------------------------------------------------

TEST_F(CudaBackendTest, SumSquaresDeterministic) {
  EXPECT_EQ(gpu->sum_squares(dev_zeros(1), 0), 0.0);
  for (size_t n : {size_t{1}, size_t{1000}, size_t{255}, size_t{257}, (size_t{1} << 24) + 5}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    const Vec x = random_vec(n, 100, -3.0f, 3.0f);
    const double want = cpu->sum_squares(x.data(), n);
    float* d_x = dev(x);
    const double got = gpu->sum_squares(d_x, n);
    EXPECT_NEAR(got, want, 1e-12 * want);
    EXPECT_EQ(gpu->sum_squares(d_x, n), got);  // bit-identical (== on doubles)
  }
}

TEST_F(CudaBackendTest, AdamWUpdate) {
  for (size_t n : {size_t{1}, size_t{1000003}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    Vec p = random_vec(n, 110), m = random_vec(n, 111, -1e-2f, 1e-2f);
    Vec v = random_vec(n, 112, 0.0f, 1e-3f);
    float *g_p = dev(p), *g_m = dev(m), *g_v = dev(v);
    for (int step = 1; step <= 3; ++step) {
      const Vec g = random_vec(n, 113 + step, -0.1f, 0.1f);
      const float b1 = 0.9f, b2 = 0.95f;
      const float bc1 = 1.0f - std::pow(b1, float(step)), bc2 = 1.0f - std::pow(b2, float(step));
      // Step 2 clips: the gradient enters scaled by grad_scale.
      const float gs = step == 2 ? 0.37f : 1.0f;
      cpu->adamw_update(p.data(), g.data(), m.data(), v.data(), n, 6e-4f, b1, b2, 1e-8f, 0.1f, bc1,
                        bc2, nullptr, gs);
      gpu->adamw_update(g_p, dev(g), g_m, g_v, n, 6e-4f, b1, b2, 1e-8f, 0.1f, bc1, bc2, nullptr,
                        gs);
    }
    EXPECT_TRUE(close(host(g_p, n), p, kElemTol, 1e-7)) << "p";
    EXPECT_TRUE(close(host(g_m, n), m, kElemTol, 1e-7)) << "m";
    EXPECT_TRUE(close(host(g_v, n), v, kElemTol, 1e-7)) << "v";
  }
}

// The optimizer's whole update in one call: runs with their own weight decay, elements between
// runs untouched, the same as the CPU (which updates run by run).
TEST_F(CudaBackendTest, AdamWUpdateRuns) {
  const size_t n = 100003;
  const Backend::UpdateRun runs[] = {{3, 2000, 0.1f}, {2016, 70000, 0.0f}, {70016, 100003, 0.1f}};
  Vec p = random_vec(n, 130), m = random_vec(n, 131, -1e-2f, 1e-2f);
  Vec v = random_vec(n, 132, 0.0f, 1e-3f);
  const Vec p0 = p;
  float *g_p = dev(p), *g_m = dev(m), *g_v = dev(v);
  for (int step = 1; step <= 2; ++step) {
    const Vec g = random_vec(n, 133 + step, -0.1f, 0.1f);
    const float gs = step == 2 ? 0.5f : 1.0f;
    cpu->adamw_update_runs(p.data(), g.data(), m.data(), v.data(), runs, 3, 6e-4f, 0.9f, 0.95f,
                           1e-8f, 0.5f, 0.4f, nullptr, gs);
    gpu->adamw_update_runs(g_p, dev(g), g_m, g_v, runs, 3, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.5f, 0.4f,
                           nullptr, gs);
  }
  const Vec got = host(g_p, n);
  EXPECT_TRUE(close(got, p, kElemTol, 1e-7)) << "p";
  EXPECT_TRUE(close(host(g_m, n), m, kElemTol, 1e-7)) << "m";
  EXPECT_TRUE(close(host(g_v, n), v, kElemTol, 1e-7)) << "v";
  for (size_t i : {size_t{0}, size_t{2}, size_t{2000}, size_t{2015}, size_t{70015}})
    EXPECT_EQ(got[i], p0[i]) << "element " << i << " between runs was updated";
}

TEST_F(CudaBackendTest, SgdUpdate) {
  for (size_t n : {size_t{1}, size_t{1000003}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    Vec p = random_vec(n, 120), buf = random_vec(n, 121, -0.1f, 0.1f);
    float *g_p = dev(p), *g_buf = dev(buf);
    for (int step = 1; step <= 3; ++step) {
      const Vec g = random_vec(n, 122 + step, -0.1f, 0.1f);
      const float gs = step == 2 ? 0.37f : 1.0f;
      cpu->sgd_update(p.data(), g.data(), buf.data(), n, 0.05f, 0.9f, 1e-4f, nullptr, gs);
      gpu->sgd_update(g_p, dev(g), g_buf, n, 0.05f, 0.9f, 1e-4f, nullptr, gs);
    }
    EXPECT_TRUE(close(host(g_p, n), p, kElemTol, 1e-7)) << "p";
    EXPECT_TRUE(close(host(g_buf, n), buf, kElemTol, 1e-7)) << "buf";
  }
}

TEST_F(CudaBackendTest, LionUpdate) {
  for (size_t n : {size_t{1}, size_t{1000003}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    Vec p = random_vec(n, 130), m = random_vec(n, 131, -0.1f, 0.1f);
    float *g_p = dev(p), *g_m = dev(m);
    for (int step = 1; step <= 3; ++step) {
      const Vec g = random_vec(n, 132 + step, -0.1f, 0.1f);
      const float gs = step == 2 ? 0.37f : 1.0f;
      cpu->lion_update(p.data(), g.data(), m.data(), n, 1e-3f, 0.9f, 0.99f, 0.1f, nullptr, gs);
      gpu->lion_update(g_p, dev(g), g_m, n, 1e-3f, 0.9f, 0.99f, 0.1f, nullptr, gs);
    }
    EXPECT_TRUE(close(host(g_p, n), p, kElemTol, 1e-7)) << "p";
    EXPECT_TRUE(close(host(g_m, n), m, kElemTol, 1e-7)) << "m";
  }
}

// Muon's element-wise halves, and its Newton–Schulz iteration (cuBLAS products, the backend's
// reductions) on the shapes of its matrices: tall, wide, and column blocks.
TEST_F(CudaBackendTest, MuonMomentumAndStep) {
  const size_t n = 1000003;
  for (bool nesterov : {true, false}) {
    Vec buf = random_vec(n, 140), p = random_vec(n, 141), u(n);
    const Vec g = random_vec(n, 142, -0.1f, 0.1f), o = random_vec(n, 143);
    float *g_buf = dev(buf), *g_u = dev(u), *g_p = dev(p);
    bf16_t* g_copy = gpu->alloc_bf16(n);
    cpu->muon_momentum(buf.data(), u.data(), g.data(), n, 0.95f, nesterov, 0.37f);
    gpu->muon_momentum(g_buf, g_u, dev(g), n, 0.95f, nesterov, 0.37f);
    std::vector<bf16_t> copy(n);
    cpu->muon_apply(p.data(), o.data(), n, 0.02f, 0.1f, 1.7f, copy.data());
    gpu->muon_apply(g_p, dev(o), n, 0.02f, 0.1f, 1.7f, g_copy);
    EXPECT_TRUE(close(host(g_buf, n), buf, kElemTol, 1e-7)) << "buf";
    EXPECT_TRUE(close(host(g_u, n), u, kElemTol, 1e-7)) << "u";
    EXPECT_TRUE(close(host(g_p, n), p, kElemTol, 1e-7)) << "p";
    const auto got_copy = host(g_copy, n);
    size_t off = 0;  // the bf16 copy rounds p: equal where p is, at most one ulp apart else
    for (size_t i = 0; i < n; ++i) off += std::abs(int(got_copy[i].bits) - int(copy[i].bits)) > 1;
    EXPECT_EQ(off, 0u) << "bf16 copy";
    gpu->free_bf16(g_copy);
  }
}

TEST_F(CudaBackendTest, MuonNewtonSchulz) {
  struct Shape {
    int m, n, blocks;
  };
  for (const Shape s : {Shape{768, 2304, 1}, Shape{2304, 768, 1}, Shape{768, 768, 2},
                        Shape{768, 3072, 4}, Shape{100, 36, 1}}) {
    SCOPED_TRACE(::testing::Message() << s.m << "x" << s.n << " in " << s.blocks << " blocks");
    const size_t mn = size_t(s.m) * s.n, k = size_t(std::min(s.m, s.n));
    Vec x = random_vec(mn, 150 + s.m, -0.02f, 0.02f), y(mn), a(k * k), a2(k * k);
    float *g_x = dev(x), *g_y = dev(y), *g_a = dev(a), *g_a2 = dev(a2);
    newton_schulz(*cpu, x.data(), y.data(), a.data(), a2.data(), s.m, s.n, s.blocks, 5);
    newton_schulz(*gpu, g_x, g_y, g_a, g_a2, s.m, s.n, s.blocks, 5);
    EXPECT_TRUE(close(host(g_x, mn), x, kGemmTol, 1e-4));
  }
}

}  // namespace
}  // namespace triad
