// The fixture of the suites that run a CUDA backend op beside the CPU backend's (test_cuda_backend
// fp32, test_cuda_bf16 mixed precision): skips without a usable device (and in builds without
// CUDA), makes both backends, and owns the device copies a test makes, freed after it. The CPU
// backend works on host memory, so its side of a comparison uses host vectors directly.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "bf16_data.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/cuda_backend.h"

namespace triad::testing {

class CudaVsCpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_available())
      GTEST_SKIP() << "needs a usable CUDA device; here: " << cuda_device_description();
    gpu = make_cuda_backend();
    cpu = make_cpu_backend();
  }

  void TearDown() override {
    if (!gpu) return;
    for (bf16_t* p : bf16_bufs_) gpu->free_bf16(p);
    for (float* p : float_bufs_) gpu->free(p);
    for (int32_t* p : int_bufs_) gpu->free_ints(p);
  }

  // Device copies of h. bf16 buffers get an even length so that they move as whole floats
  // through copy_from_host / copy_to_host.
  float* dev(const std::vector<float>& h) {
    float* d = dev_zeros(h.size());
    gpu->copy_from_host(d, h.data(), h.size());
    return d;
  }
  bf16_t* dev(const Bits& h) {
    const size_t padded = h.size() + (h.size() & 1);
    bf16_t* d = gpu->alloc_bf16(padded);
    bf16_bufs_.push_back(d);
    Bits tmp(h);
    tmp.resize(padded);
    gpu->copy_from_host(reinterpret_cast<float*>(d), reinterpret_cast<const float*>(tmp.data()),
                        padded / 2);
    return d;
  }
  int32_t* dev(const std::vector<int32_t>& h) {
    int32_t* d = gpu->alloc_ints(h.size());
    int_bufs_.push_back(d);
    gpu->copy_ints_from_host(d, h.data(), h.size());
    return d;
  }
  float* dev_zeros(size_t n) {  // alloc zero-fills
    float* d = gpu->alloc(n);
    float_bufs_.push_back(d);
    return d;
  }

  // Host copies of n values at d.
  std::vector<float> host(const float* d, size_t n) {
    std::vector<float> h(n);
    gpu->copy_to_host(h.data(), d, n);
    return h;
  }
  Bits host(const bf16_t* d, size_t n) {
    Bits h(n + (n & 1));
    gpu->copy_to_host(reinterpret_cast<float*>(h.data()), reinterpret_cast<const float*>(d),
                      h.size() / 2);
    h.resize(n);
    return h;
  }

  std::unique_ptr<Backend> gpu;
  std::unique_ptr<Backend> cpu;

 private:
  std::vector<bf16_t*> bf16_bufs_;
  std::vector<float*> float_bufs_;
  std::vector<int32_t*> int_bufs_;
};

}  // namespace triad::testing
