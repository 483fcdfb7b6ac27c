// What the kernels written as block programs share: a block program is what one thread block
// of a kernel does, written as a function template over a thread context X (thread and block
// indices, barriers, warp and warpgroup instructions, shared memory). The GPU runs it with
// DeviceThread (device_thread.cuh); the CPU tests run the same code through the SIMT emulator
// (tests/support/simt_emulator.h). This header is plain C++ and needs no CUDA header.
//
// Determinism: the reductions here have an order fixed by the shapes (a fixed number of threads
// each summing a fixed subset in index order, a fixed shuffle tree, the warps' results in
// order) and no floating-point atomics, so their results are bit-identical run to run.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define TRIAD_BLOCK_FN __device__ __forceinline__
#define TRIAD_BLOCK_SIZE __host__ __device__ constexpr
#define TRIAD_UNROLL _Pragma("unroll")
#define TRIAD_UNROLL8 _Pragma("unroll 8")
#else
#define TRIAD_BLOCK_FN inline
#define TRIAD_BLOCK_SIZE constexpr
#define TRIAD_UNROLL
#define TRIAD_UNROLL8
#endif

namespace triad {

// 16 bytes of memory as four 32-bit words (8 bf16: element e in word e/2, even e low).
struct Vec16 {
  uint32_t w[4];
};

// The float whose bit pattern is w (a word of a Vec16 holding floats).
TRIAD_BLOCK_FN float float_from_bits(uint32_t w) {
  float f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}

// Element e (0..7) of a vector of 8 bf16, widened by the context x.
template <class X>
TRIAD_BLOCK_FN float bf16_element(X& x, const Vec16& v, int e) {
  const uint32_t w = v.w[e / 2];
  return x.bf16_float(uint16_t(e % 2 ? w >> 16 : w & 0xffffu));
}

// An element of a block program's fp32 or bf16 (uint16_t bits) data, widened to float; a float
// stored into one (bf16: rounded to nearest even).
template <class X>
TRIAD_BLOCK_FN float load(X&, const float* p) {
  return *p;
}
template <class X>
TRIAD_BLOCK_FN float load(X& x, const uint16_t* p) {
  return x.bf16_float(*p);
}
template <class X>
TRIAD_BLOCK_FN void store(X&, float* p, float v) {
  *p = v;
}
template <class X>
TRIAD_BLOCK_FN void store(X& x, uint16_t* p, float v) {
  *p = uint16_t(x.pack_bf16(v, 0.0f) & 0xffffu);
}

// The sum of v over the 32 lanes of a warp by a butterfly (a fixed tree): every lane gets the
// same bits. T: int, float or double.
template <class X, class T>
TRIAD_BLOCK_FN T warp_sum(X& x, T v) {
  TRIAD_UNROLL
  for (int offset = 16; offset > 0; offset >>= 1) v += x.shfl_xor(v, offset);
  return v;
}

// The largest of v over the 32 lanes of a warp by a butterfly (a NaN from another lane is
// ignored, as fmaxf does).
template <class X>
TRIAD_BLOCK_FN float warp_max(X& x, float v) {
  TRIAD_UNROLL
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float o = x.shfl_xor(v, offset);
    v = o > v ? o : v;
  }
  return v;
}

// A reduction of v over a block of `threads` threads (a multiple of 32; every thread calls it and
// gets the result): warp_op's butterfly in each warp, then over the warps' results (identity
// where a lane has no warp). part: 32 values of shared memory; it starts with a barrier, so part
// may be reused right after a previous call. block_sum and block_max are its two uses.
template <class X, class T, class WarpOp>
TRIAD_BLOCK_FN T block_reduce(X& x, T v, T* part, int threads, WarpOp warp_op, T identity) {
  const int lane = x.thread() % 32, warp = x.thread() / 32;
  v = warp_op(v);
  x.sync_threads();
  if (lane == 0) part[warp] = v;
  x.sync_threads();
  return warp_op(lane < threads / 32 ? part[lane] : identity);
}
template <class X, class T>
TRIAD_BLOCK_FN T block_sum(X& x, T v, T* part, int threads) {
  return block_reduce(
      x, v, part, threads, [&x](T u) { return warp_sum(x, u); }, T(0));
}
// The largest of v over the block, as block_sum (-inf where the block holds no value).
template <class X>
TRIAD_BLOCK_FN float block_max(X& x, float v, float* part, int threads) {
  return block_reduce(
      x, v, part, threads, [&x](float u) { return warp_max(x, u); }, -__builtin_huge_valf());
}

// The per-slice column sums of the deterministic two-pass reductions (reduce_block.h,
// layernorm_block.h, qk_norm_block.h), in a block of kColumns·kGroups threads: thread t takes
// column t % kColumns and, where `active` (its column exists), the rows lo + t / kColumns +
// kGroups·i below hi, calling term(row, sum) to add that row's kTerms values into sum in order.
// Then each thread t < kColumns with an active column adds the kGroups partial sums of every
// term in order into total and returns true; the others return false. part: column_sums_smem
// bytes of shared memory.
template <int kColumns, int kGroups, int kTerms>
TRIAD_BLOCK_SIZE size_t column_sums_smem() {
  return size_t(kTerms) * kGroups * (kColumns + 1) * sizeof(float);
}
template <int kColumns, int kGroups, int kTerms, class X, class Row, class Term>
TRIAD_BLOCK_FN bool column_group_sums(X& x, float* part, Row lo, Row hi, bool active, Term term,
                                      float (&total)[kTerms]) {
  const int tx = x.thread() % kColumns, ty = x.thread() / kColumns;
  float sum[kTerms];
  TRIAD_UNROLL
  for (int k = 0; k < kTerms; ++k) sum[k] = 0.0f;
  if (active)
    for (Row m = lo + Row(ty); m < hi; m += Row(kGroups)) term(m, sum);
  TRIAD_UNROLL
  for (int k = 0; k < kTerms; ++k) part[(k * kGroups + ty) * (kColumns + 1) + tx] = sum[k];
  x.sync_threads();
  if (ty != 0 || !active) return false;
  TRIAD_UNROLL
  for (int k = 0; k < kTerms; ++k) {
    float t = 0.0f;
    for (int g = 0; g < kGroups; ++g) t += part[(k * kGroups + g) * (kColumns + 1) + tx];
    total[k] = t;
  }
  return true;
}

// The grid-stride loop of the elementwise block programs: thread t of block b takes element
// i = b·threads + t, then every `stride` (the grid's threads) after it, below n.
#define TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride)                                        \
  for (size_t i = size_t((x).block_x()) * size_t(threads) + size_t((x).thread()); i < size_t(n); \
       i += size_t(stride))

// Calls f(std::integral_constant<int, k>{}) for k = vec (1..8; larger values run as 8): picks
// the instantiation of a kernel templated on its vectors per thread at run time.
template <class F>
void with_vectors(int vec, F f) {
  switch (vec) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    case 5:
      f(std::integral_constant<int, 5>{});
      break;
    case 6:
      f(std::integral_constant<int, 6>{});
      break;
    case 7:
      f(std::integral_constant<int, 7>{});
      break;
    default:
      f(std::integral_constant<int, 8>{});
      break;
  }
}

}  // namespace triad
