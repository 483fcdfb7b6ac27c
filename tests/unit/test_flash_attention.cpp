// The fused bf16 flash attention (src/kernels/cuda/flash_attention.cu) against a naive causal
// attention in double on the same bf16-rounded inputs: out, lse and dqkv (each of dq, dk, dv
// separately), error = max|got − want| / max|want| <= 1e-2, lse within 1e-3; no NaN; the
// backward overwrites dqkv, or accumulates into it on request; with a document mask too. Both
// kernels (mma, wgmma) and
// every backward way: the deterministic and ordered ones agree with themselves bit for bit run to
// run; the atomic one (dQ added in fp32 with atomics) does so for dK and dV.
// Skips without a usable CUDA device and in builds without CUDA.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../support/attention_reference.h"
#include "triad/core/error.h"
#include "triad/kernels/cuda_backend.h"

#ifdef TRIAD_HAVE_CUDA
#include <cuda_runtime.h>

#include "../../src/kernels/cuda/flash_attention.cuh"
#endif

namespace triad {
namespace {

#ifdef TRIAD_HAVE_CUDA

using namespace attention_reference;

template <typename T>
T* device_copy(const std::vector<T>& h) {
  T* d = nullptr;
  TRIAD_CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * sizeof(T)));
  TRIAD_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> host_copy(const T* d, size_t n) {
  std::vector<T> h(n);
  TRIAD_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// Device buffers of one problem: inputs uploaded, outputs starting as NaN bit patterns (0xFFFF)
// so anything left unwritten shows, dqkv as given (the accumulate test's old values).
struct DeviceProblem {
  int B, T, C, NH;
  cuda::FlashKernel kernel;
  cuda::FlashBackward mode;
  cuda::bf16 *qkv, *dout, *out, *dqkv;
  float *lse, *ws;
  int32_t* key_begin = nullptr;

  DeviceProblem(int B_, int T_, int NH_, int hd, cuda::FlashKernel k, cuda::FlashBackward bw,
                const Bits& qkv_bits, const Bits& dout_bits, const Bits& dqkv_bits,
                const std::vector<int32_t>* kb = nullptr)
      : B(B_), T(T_), C(NH_ * hd), NH(NH_), kernel(k), mode(bw) {
    if (kb != nullptr) key_begin = device_copy(*kb);
    qkv = reinterpret_cast<cuda::bf16*>(device_copy(qkv_bits));
    dout = reinterpret_cast<cuda::bf16*>(device_copy(dout_bits));
    out = reinterpret_cast<cuda::bf16*>(device_copy(Bits(size_t(B) * T * C, 0xFFFFu)));
    dqkv = reinterpret_cast<cuda::bf16*>(device_copy(dqkv_bits));
    lse = device_copy(std::vector<float>(size_t(B) * NH * T, NAN));
    ws = device_copy(
        std::vector<float>(cuda::flash_attention_workspace_floats(B, T, C, NH, mode), NAN));
  }
  ~DeviceProblem() {
    for (void* p : {static_cast<void*>(qkv), static_cast<void*>(dout), static_cast<void*>(out),
                    static_cast<void*>(dqkv), static_cast<void*>(lse), static_cast<void*>(ws),
                    static_cast<void*>(key_begin)})
      cudaFree(p);
  }
  void forward() {
    cuda::flash_attention_forward(out, lse, qkv, B, T, C, NH, key_begin, nullptr, kernel);
  }
  void backward(bool accumulate) {
    cuda::flash_attention_backward(dqkv, dout, qkv, out, lse, ws, B, T, C, NH, key_begin, nullptr,
                                   accumulate, kernel, mode);
  }
  Bits get(const cuda::bf16* p, size_t n) const {
    TRIAD_CUDA_CHECK(cudaDeviceSynchronize());
    return host_copy(reinterpret_cast<const uint16_t*>(p), n);
  }
};

// The kernel and the backward way of a parametrized case.
struct FlashCase {
  cuda::FlashKernel kernel;
  cuda::FlashBackward backward;
};

// key_begin: a document mask, or none.
void check_shape(int B, int T, int NH, int hd, FlashCase fc,
                 const std::vector<int32_t>* key_begin = nullptr) {
  const int C = NH * hd;
  SCOPED_TRACE(::testing::Message()
               << cuda::flash_kernel_name(fc.kernel) << " "
               << cuda::flash_backward_name(fc.backward) << " B=" << B << " T=" << T << " NH=" << NH
               << " hd=" << hd << (key_begin ? " documents" : ""));
  const Problem p = random_problem(B, T, C, NH, 1234u + T, 999u + T, key_begin);
  const Reference& want = p.want;

  DeviceProblem d(B, T, NH, hd, fc.kernel, fc.backward, p.qkv, p.dout,
                  Bits(size_t(B) * T * 3 * C, 0xFFFFu), key_begin);
  d.forward();
  d.backward(false);
  const Bits out = d.get(d.out, size_t(B) * T * C);
  const std::vector<float> lse = host_copy(d.lse, size_t(B) * NH * T);
  const Bits dqkv = d.get(d.dqkv, size_t(B) * T * 3 * C);
  d.backward(false);  // a second backward: bit-identical (dK, dV at least)
  const Bits dqkv2 = d.get(d.dqkv, size_t(B) * T * 3 * C);

  const size_t rows = size_t(B) * T;
  EXPECT_LE(rel_error(out, want.out, rows, C, 0, C), 1e-2) << "out";
  double lse_err = 0.0;
  for (size_t x = 0; x < lse.size(); ++x) {
    const double e = std::abs(double(lse[x]) - want.lse[x]);
    lse_err = std::isfinite(e) ? std::max(lse_err, e) : INFINITY;
  }
  EXPECT_LE(lse_err, 1e-3) << "lse";
  EXPECT_LE(rel_error(dqkv, want.dqkv, rows, 3 * size_t(C), 0, C), 1e-2) << "dq";
  EXPECT_LE(rel_error(dqkv, want.dqkv, rows, 3 * size_t(C), C, C), 1e-2) << "dk";
  EXPECT_LE(rel_error(dqkv, want.dqkv, rows, 3 * size_t(C), 2 * size_t(C), C), 1e-2) << "dv";
  if (fc.backward != cuda::FlashBackward::atomic) {
    EXPECT_TRUE(dqkv == dqkv2) << "backward is not deterministic";
  } else {
    for (size_t r = 0; r < rows; ++r)
      ASSERT_TRUE(std::equal(dqkv.begin() + r * 3 * C + C, dqkv.begin() + (r + 1) * 3 * C,
                             dqkv2.begin() + r * 3 * C + C))
          << "dK or dV of row " << r << " differs between two runs";
  }
}

// The backward's accumulate mode (the Backend's += contract): dqkv holds random values before,
// and each element becomes round(old + gradient).
void check_accumulate(int B, int T, int NH, int hd, FlashCase fc) {
  const int C = NH * hd;
  const Problem p = random_problem(B, T, C, NH, 21u, 22u);
  Bits old_bits;
  std::vector<double> old;
  random_bf16(size_t(B) * T * 3 * C, 23u, old_bits, old);
  DeviceProblem d(B, T, NH, hd, fc.kernel, fc.backward, p.qkv, p.dout, old_bits);
  d.forward();
  d.backward(true);
  EXPECT_LE(accumulate_error(d.get(d.dqkv, size_t(B) * T * 3 * C), old, p.want.dqkv), 1.0);
}

#define SKIP_WITHOUT_DEVICE() \
  if (!cuda_device_available()) GTEST_SKIP() << "no usable CUDA device"

using cuda::FlashBackward;
using cuda::FlashKernel;

// Each case for every kernel and both backward ways: mma (mma.sync + ldmatrix) runs on every GPU
// of sm_80 and later; wgmma (from shared memory) and tma (wgmma, tiles loaded by bulk tensor
// copies) need a compute capability 9.0 GPU and sm_90a code.
class FlashKernels : public ::testing::TestWithParam<FlashCase> {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no usable CUDA device";
    if (GetParam().kernel != FlashKernel::mma && !cuda::flash_wgmma_available())
      GTEST_SKIP() << cuda::flash_kernel_name(GetParam().kernel)
                   << " needs a compute capability 9.0 GPU and sm_90a code ("
                   << cuda_device_description() << ")";
  }
};

// The kernel's building blocks one by one (each product form, the tile load), before the
// attention cases: when those fail, these name the primitive the hardware reads differently.
class FlashPrimitives : public ::testing::TestWithParam<FlashKernel> {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no usable CUDA device";
    if (GetParam() != FlashKernel::mma && !cuda::flash_wgmma_available())
      GTEST_SKIP() << cuda::flash_kernel_name(GetParam())
                   << " needs a compute capability 9.0 GPU and sm_90a code ("
                   << cuda_device_description() << ")";
  }
};

// Each result is printed as it comes, so a probe that faults (and stops the process) comes
// after the ones that ran.
TEST_P(FlashPrimitives, EachProductAndTheLoad) {
  for (int hd : {64, 128})
    for (int i = 0; i < cuda::flash_probe_count(); ++i) {
      std::printf("  %s hd=%d probe %d ...", cuda::flash_kernel_name(GetParam()), hd, i);
      std::fflush(stdout);
      const cuda::FlashProbeResult r = cuda::flash_probe(GetParam(), hd, i);
      std::printf(" %-50s error %.2e\n", r.name, r.error);
      std::fflush(stdout);
      EXPECT_LE(r.error, 1e-3) << cuda::flash_kernel_name(GetParam()) << " hd=" << hd << ": "
                               << r.name;
    }
}

INSTANTIATE_TEST_SUITE_P(Mma, FlashPrimitives, ::testing::Values(FlashKernel::mma),
                         [](const auto&) { return std::string("mma"); });
INSTANTIATE_TEST_SUITE_P(Wgmma, FlashPrimitives, ::testing::Values(FlashKernel::wgmma),
                         [](const auto&) { return std::string("wgmma"); });
INSTANTIATE_TEST_SUITE_P(Tma, FlashPrimitives, ::testing::Values(FlashKernel::tma),
                         [](const auto&) { return std::string("tma"); });

TEST_P(FlashKernels, SingleToken) { check_shape(2, 1, 2, 64, GetParam()); }

TEST_P(FlashKernels, PartialTiles) { check_shape(2, 77, 3, 64, GetParam()); }

TEST_P(FlashKernels, HeadDim128) { check_shape(1, 256, 2, 128, GetParam()); }

// Multi-head latent attention's heads (DeepSeek-V2's and V3's 128 + 64 query-key values).
TEST_P(FlashKernels, HeadDim192) { check_shape(1, 200, 2, 192, GetParam()); }

TEST_P(FlashKernels, Gpt2Shape) { check_shape(2, 1024, 12, 64, GetParam()); }

TEST_P(FlashKernels, BackwardAccumulates) { check_accumulate(2, 150, 3, 64, GetParam()); }

// Packed documents: boundaries inside tiles and on tile edges, one-token documents, a sequence
// of one document, and long documents whose queries skip whole key tiles (and key blocks whose
// later query tiles are skipped).
TEST_P(FlashKernels, DocumentMask) {
  const std::vector<int32_t> kb =
      key_begin_of_starts(2, 300, {{0, 1, 63, 64, 65, 200, 299}, {0, 130}});
  check_shape(2, 300, 2, 64, GetParam(), &kb);
}
TEST_P(FlashKernels, DocumentMaskHeadDim128) {
  const std::vector<int32_t> kb = key_begin_of_starts(1, 256, {{0, 100, 128, 129}});
  check_shape(1, 256, 2, 128, GetParam(), &kb);
  check_shape(1, 256, 2, 192, GetParam(), &kb);
}

std::string case_name(const ::testing::TestParamInfo<FlashCase>& info) {
  return std::string(cuda::flash_kernel_name(info.param.kernel)) + "_" +
         cuda::flash_backward_name(info.param.backward);
}
// Kernel k with each of the backward ways.
std::vector<FlashCase> every_backward(FlashKernel k) {
  return {
      {k, FlashBackward::deterministic}, {k, FlashBackward::atomic}, {k, FlashBackward::ordered}};
}
// One suite per kernel, so every mma case runs before any wgmma one, and those before the tma
// ones: a failure that poisons the CUDA context cannot hide an earlier kernel's results.
INSTANTIATE_TEST_SUITE_P(Mma, FlashKernels, ::testing::ValuesIn(every_backward(FlashKernel::mma)),
                         case_name);
INSTANTIATE_TEST_SUITE_P(Wgmma, FlashKernels,
                         ::testing::ValuesIn(every_backward(FlashKernel::wgmma)), case_name);
INSTANTIATE_TEST_SUITE_P(Tma, FlashKernels, ::testing::ValuesIn(every_backward(FlashKernel::tma)),
                         case_name);

TEST(FlashAttention, RejectsOtherHeadDims) {
  SKIP_WITHOUT_DEVICE();
  EXPECT_THROW(
      cuda::flash_attention_forward(nullptr, nullptr, nullptr, 1, 16, 96, 3, nullptr, nullptr),
      triad::Error);
}

// Sets the environment variable `name` to `value`, expects `resolve` to throw triad::Error
// naming the variable, and restores it.
template <class F>
void expect_env_refused(const char* name, const char* value, F resolve) {
  const char* old = std::getenv(name);
  const std::string saved = old ? old : "";
  setenv(name, value, 1);
  try {
    resolve();
    ADD_FAILURE() << name << "=" << value << " was accepted";
  } catch (const triad::Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  if (old)
    setenv(name, saved.c_str(), 1);
  else
    unsetenv(name);
}

// A bad TRIAD_FLASH_KERNEL or TRIAD_FLASH_BACKWARD is refused (before any device is touched, so
// this runs everywhere).
TEST(FlashAttention, RejectsABadKernelName) {
  expect_env_refused("TRIAD_FLASH_KERNEL", "tensor",
                     [] { cuda::flash_kernel_for_device(FlashKernel::automatic); });
}

TEST(FlashAttention, RejectsABadBackwardName) {
  expect_env_refused("TRIAD_FLASH_BACKWARD", "fast",
                     [] { cuda::flash_backward_mode(FlashBackward::automatic); });
}

#else

TEST(FlashAttention, NeedsCuda) { GTEST_SKIP() << "built without CUDA"; }

#endif

}  // namespace
}  // namespace triad
