// What the kernels written as block programs share: a block program is what one thread block
// of a kernel does, written as a function template over a thread context X (thread and block
// indices, barriers, warp and warpgroup instructions, shared memory). The GPU runs it with
// DeviceThread (device_thread.cuh); the CPU tests run the same code through the SIMT emulator
// (tests/support/simt_emulator.h). This header is plain C++ and needs no CUDA header.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TRIAD_BLOCK_FN __device__ __forceinline__
#define TRIAD_BLOCK_SIZE __host__ __device__ constexpr
#define TRIAD_UNROLL _Pragma("unroll")
#else
#define TRIAD_BLOCK_FN inline
#define TRIAD_BLOCK_SIZE constexpr
#define TRIAD_UNROLL
#endif

namespace triad {

// 16 bytes of memory as four 32-bit words (8 bf16: element e in word e/2, even e low).
struct Vec16 {
  uint32_t w[4];
};

}  // namespace triad
