// Shared by the CUDA backend's .cu files: the error macros, launch helpers and the backend's
// grow-on-demand scratch memory. Internal to src/kernels/cuda. The kernels themselves are block
// programs (block_program.h holds what they share, its reductions included).
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "triad/core/error.h"
#include "triad/kernels/cuda_backend.h"

// After a kernel launch: reports a bad launch configuration (or an earlier asynchronous error)
// at the launch site.
#define TRIAD_CUDA_CHECK_LAUNCH() TRIAD_CUDA_CHECK(cudaGetLastError())

namespace triad::cuda {

// The device view of triad::bf16_t (same size and bits; backend.h buffers are shared).
using bf16 = __nv_bfloat16;

// Threads per block of the elementwise kernels.
inline constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n elements with `block` threads each. Capped: the loops
// cover the rest, and the cap keeps gridDim.x far from its limit for any n. n must be > 0.
inline unsigned grid_for(size_t n, int block = kBlock) {
  const size_t blocks = (n + size_t(block) - 1) / size_t(block);
  return unsigned(std::min<size_t>(blocks, size_t{1} << 16));
}

// Device memory a backend keeps between calls and grows on demand: a call that needs more than
// any call before it frees the old block and allocates the new size (in practice once, at the
// first step); otherwise no allocation. Freed by the destructor.
class DeviceScratch {
 public:
  DeviceScratch() = default;
  ~DeviceScratch() { release(); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;

  // At least `bytes` bytes of device memory (contents unspecified) for work queued on s.
  void* get(size_t bytes, cudaStream_t s) {
    if (bytes > bytes_) {
      // Work already queued on s may still read the old block.
      TRIAD_CUDA_CHECK(cudaStreamSynchronize(s));
      release();
      TRIAD_CUDA_CHECK(cudaMalloc(&p_, bytes));
      bytes_ = bytes;
    }
    return p_;
  }
  template <typename T>
  T* get_as(size_t count, cudaStream_t s) {
    return static_cast<T*>(get(count * sizeof(T), s));
  }

  // Errors are ignored: called from destructors.
  void release() noexcept {
    if (p_ != nullptr) cudaFree(p_);
    p_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Largest power of two (at most 256) dividing the address: what cuBLASLt and the vectorized
// kernels may assume about a pointer.
inline unsigned pointer_alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  return unsigned(std::min<uintptr_t>(a & (~a + 1), 256));
}

}  // namespace triad::cuda
