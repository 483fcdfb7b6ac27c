// The fused bf16 flash attention (src/kernels/cuda/flash_attention.cu) against a naive causal
// attention in double on the same bf16-rounded inputs: out, lse and dqkv (each of dq, dk, dv
// separately), error = max|got − want| / max|want| <= 1e-2, lse within 1e-3; no NaN; the
// backward is deterministic (two runs agree bit for bit) and overwrites dqkv.
// Skips without a usable CUDA device and in builds without CUDA.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "triad/core/error.h"
#include "triad/kernels/cuda_backend.h"

#ifdef TRIAD_HAVE_CUDA
#include <cuda_runtime.h>

#include "../../src/kernels/cuda/flash_attention.cuh"
#endif

namespace triad {
namespace {

#ifdef TRIAD_HAVE_CUDA

using Bits = std::vector<uint16_t>;

// N(0,1) values rounded to bf16: the bits and their exact values.
void random_bf16(size_t n, uint32_t seed, Bits& bits, std::vector<double>& vals) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  bits.resize(n);
  vals.resize(n);
  for (size_t x = 0; x < n; ++x) {
    bits[x] = cuda::float_to_bf16_bits(dist(rng));
    vals[x] = cuda::bf16_bits_to_float(bits[x]);
  }
}

struct Reference {
  std::vector<double> out, lse, dqkv;
};

// Naive causal attention in double: forward and backward, one head at a time.
Reference reference(const std::vector<double>& qkv, const std::vector<double>& dout, int B, int T,
                    int C, int NH) {
  const int hd = C / NH;
  const double scale = 1.0 / std::sqrt(double(hd));
  Reference r;
  r.out.assign(size_t(B) * T * C, 0.0);
  r.lse.assign(size_t(B) * NH * T, 0.0);
  r.dqkv.assign(size_t(B) * T * 3 * C, 0.0);
  const size_t pitch = size_t(3) * C;
#pragma omp parallel for schedule(dynamic)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    auto q = [&](int t) { return &qkv[(size_t(b) * T + t) * pitch + size_t(h) * hd]; };
    auto k = [&](int t) { return q(t) + C; };
    auto v = [&](int t) { return q(t) + 2 * C; };
    auto dq = [&](int t) { return &r.dqkv[(size_t(b) * T + t) * pitch + size_t(h) * hd]; };
    auto o = [&](int t) { return &r.out[(size_t(b) * T + t) * C + size_t(h) * hd]; };
    auto dO = [&](int t) { return &dout[(size_t(b) * T + t) * C + size_t(h) * hd]; };
    std::vector<double> P(size_t(T) * T, 0.0);  // row i: keys 0..i
    for (int i = 0; i < T; ++i) {
      double* p = &P[size_t(i) * T];
      double mx = -INFINITY;
      for (int j = 0; j <= i; ++j) {
        double s = 0.0;
        for (int d = 0; d < hd; ++d) s += q(i)[d] * k(j)[d];
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      double sum = 0.0;
      for (int j = 0; j <= i; ++j) sum += std::exp(p[j] - mx);
      r.lse[size_t(bh) * T + i] = mx + std::log(sum);
      for (int j = 0; j <= i; ++j) p[j] = std::exp(p[j] - mx) / sum;
      for (int j = 0; j <= i; ++j)
        for (int d = 0; d < hd; ++d) o(i)[d] += p[j] * v(j)[d];
    }
    for (int i = 0; i < T; ++i) {
      const double* p = &P[size_t(i) * T];
      std::vector<double> dp(size_t(i) + 1);
      double Di = 0.0;
      for (int j = 0; j <= i; ++j) {
        double s = 0.0;
        for (int d = 0; d < hd; ++d) s += dO(i)[d] * v(j)[d];
        dp[j] = s;
        Di += p[j] * s;
      }
      for (int j = 0; j <= i; ++j) {
        const double ds = p[j] * (dp[j] - Di) * scale;
        for (int d = 0; d < hd; ++d) {
          dq(i)[d] += ds * k(j)[d];
          dq(j)[C + d] += ds * q(i)[d];
          dq(j)[2 * C + d] += p[j] * dO(i)[d];
        }
      }
    }
  }
  return r;
}

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

// max|got − want| / max|want| over the elements of [rows, width] blocks at column offset off
// within rows of `pitch`; NaN anywhere → infinity.
double rel_error(const Bits& got, const std::vector<double>& want, size_t rows, size_t pitch,
                 size_t off, size_t width) {
  double diff = 0.0, ref = 0.0;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = off; c < off + width; ++c) {
      const double g = cuda::bf16_bits_to_float(got[r * pitch + c]);
      if (!std::isfinite(g)) return INFINITY;
      diff = std::max(diff, std::abs(g - want[r * pitch + c]));
      ref = std::max(ref, std::abs(want[r * pitch + c]));
    }
  }
  return diff / std::max(ref, 1e-30);
}

void check_shape(int B, int T, int NH, int hd) {
  const int C = NH * hd;
  SCOPED_TRACE(::testing::Message() << "B=" << B << " T=" << T << " NH=" << NH << " hd=" << hd);
  Bits qkv_bits, dout_bits;
  std::vector<double> qkv, dout;
  random_bf16(size_t(B) * T * 3 * C, 1234u + T, qkv_bits, qkv);
  random_bf16(size_t(B) * T * C, 999u + T, dout_bits, dout);
  const Reference want = reference(qkv, dout, B, T, C, NH);

  using cuda::bf16;
  bf16* d_qkv = reinterpret_cast<bf16*>(device_copy(qkv_bits));
  bf16* d_dout = reinterpret_cast<bf16*>(device_copy(dout_bits));
  // Output buffers start as NaN bit patterns (0xFFFF): anything left unwritten shows.
  bf16* d_out = reinterpret_cast<bf16*>(device_copy(Bits(size_t(B) * T * C, 0xFFFFu)));
  bf16* d_dqkv = reinterpret_cast<bf16*>(device_copy(Bits(size_t(B) * T * 3 * C, 0xFFFFu)));
  float* d_lse = device_copy(std::vector<float>(size_t(B) * NH * T, NAN));
  float* d_ws =
      device_copy(std::vector<float>(cuda::flash_attention_workspace_floats(B, T, C, NH), NAN));

  cuda::flash_attention_forward(d_out, d_lse, d_qkv, B, T, C, NH, nullptr);
  cuda::flash_attention_backward(d_dqkv, d_dout, d_qkv, d_out, d_lse, d_ws, B, T, C, NH, nullptr);
  TRIAD_CUDA_CHECK(cudaDeviceSynchronize());
  const Bits out = host_copy(reinterpret_cast<uint16_t*>(d_out), size_t(B) * T * C);
  const std::vector<float> lse = host_copy(d_lse, size_t(B) * NH * T);
  const Bits dqkv = host_copy(reinterpret_cast<uint16_t*>(d_dqkv), size_t(B) * T * 3 * C);
  // A second backward: bit-identical.
  cuda::flash_attention_backward(d_dqkv, d_dout, d_qkv, d_out, d_lse, d_ws, B, T, C, NH, nullptr);
  TRIAD_CUDA_CHECK(cudaDeviceSynchronize());
  const Bits dqkv2 = host_copy(reinterpret_cast<uint16_t*>(d_dqkv), size_t(B) * T * 3 * C);

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
  EXPECT_TRUE(dqkv == dqkv2) << "backward is not deterministic";

  for (void* p : {static_cast<void*>(d_qkv), static_cast<void*>(d_dout), static_cast<void*>(d_out),
                  static_cast<void*>(d_dqkv), static_cast<void*>(d_lse), static_cast<void*>(d_ws)})
    TRIAD_CUDA_CHECK(cudaFree(p));
}

#define SKIP_WITHOUT_DEVICE() \
  if (!cuda_device_available()) GTEST_SKIP() << "no usable CUDA device"

TEST(FlashAttention, SingleToken) {
  SKIP_WITHOUT_DEVICE();
  check_shape(2, 1, 2, 64);
}

TEST(FlashAttention, PartialTiles) {
  SKIP_WITHOUT_DEVICE();
  check_shape(2, 77, 3, 64);
}

TEST(FlashAttention, HeadDim128) {
  SKIP_WITHOUT_DEVICE();
  check_shape(1, 256, 2, 128);
}

TEST(FlashAttention, Gpt2Shape) {
  SKIP_WITHOUT_DEVICE();
  check_shape(2, 1024, 12, 64);
}

TEST(FlashAttention, RejectsOtherHeadDims) {
  SKIP_WITHOUT_DEVICE();
  EXPECT_THROW(cuda::flash_attention_forward(nullptr, nullptr, nullptr, 1, 16, 96, 3, nullptr),
               triad::Error);
}

#else

TEST(FlashAttention, NeedsCuda) { GTEST_SKIP() << "built without CUDA"; }

#endif

}  // namespace
}  // namespace triad
