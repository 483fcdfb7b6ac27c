// Shared by the CUDA backend's .cu files: the error macros, launch helpers and deterministic
// block reductions. Internal to src/kernels/cuda.
//
// Determinism: no kernel here uses floating-point atomics. Every reduction has a fixed order
// that depends only on the shapes (a fixed number of threads, each summing a fixed subset in
// index order, combined by a fixed shuffle tree), so results are bit-identical run to run.
#pragma once

#include <cublas_v2.h>
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

}  // namespace triad::cuda
