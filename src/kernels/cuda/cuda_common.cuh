// Shared by the CUDA backend's .cu files: the error macros, launch helpers, deterministic
// block reductions, the bf16 storage helpers and the backend's grow-on-demand scratch memory.
// Internal to src/kernels/cuda.
//
// Determinism: no kernel here uses floating-point atomics. Every reduction has a fixed order
// that depends only on the shapes (a fixed number of threads, each summing a fixed subset in
// index order, combined by a fixed shuffle tree), so results are bit-identical run to run.
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

// Storage-type helpers of the kernels templated on float / bf16: values are loaded as float,
// computed in fp32 and rounded (to nearest even) once when stored. For float both are no-ops,
// so the fp32 instantiations compute exactly what they did before the templating.
__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T narrow(float x);
template <>
__device__ __forceinline__ float narrow<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 narrow<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// Threads per block of the elementwise kernels.
inline constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n elements with `block` threads each. Capped: the loops
// cover the rest, and the cap keeps gridDim.x far from its limit for any n. n must be > 0.
inline unsigned grid_for(size_t n, int block = kBlock) {
  const size_t blocks = (n + size_t(block) - 1) / size_t(block);
  return unsigned(std::min<size_t>(blocks, size_t{1} << 16));
}

// for (size_t i : grid-stride range over [0, n))
#define TRIAD_GRID_STRIDE_LOOP(i, n)                                            \
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < size_t(n); \
       i += size_t(gridDim.x) * blockDim.x)

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Butterfly reduction over the 32 lanes of a warp; every lane gets the same result (a+b and b+a
// are the same float, so the lanes agree bit for bit).
template <typename T, typename Op>
__device__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduction over the whole block; blockDim.x must be a multiple of 32 (≤ 1024) and blockDim.y
// = blockDim.z = 1. Every thread must call it (it contains __syncthreads) and every thread gets
// the result. May be called several times in a row.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int n_warps = blockDim.x / 32;
  v = warp_reduce(v, op);
  __syncthreads();  // a previous call may still be reading `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T r = lane < n_warps ? partial[lane] : identity;
  return warp_reduce(r, op);
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
