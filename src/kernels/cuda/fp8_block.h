// The FP8 operand kernels of cuda_fp8.cu (which describes the products they feed) as block
// programs (see block_program.h), so that the CPU tests run the same code through the SIMT
// emulator (test_fp8_emulated) against core/fp8.h's rounding. bf16 data as its bits; fp8 bytes
// from the thread context's conversion (x.fp8, x.fp8x2: round to nearest even, saturating to
// ±fp8_max, NaN kept: __nv_cvt_float_to_fp8 with __NV_SATFINITE on the GPU).
//  - absmax: max |x| over n bf16 values as float bits, into *out (zeroed before): each block's
//    maximum by one atomic max. On the bits of |x|: for non-negative floats (and bf16) the order
//    of the values is the order of their bit patterns as unsigned integers, and every NaN lies
//    above +inf, so the integer maximum is the float maximum, in which a NaN wins (written as
//    +inf: backend.h).
//  - absmax_segments: the same for each of several row ranges of one tensor at once (a mixture
//    of experts' rows grouped by expert, or its stacked matrices): block row y takes segment y,
//    rows [begin[y], end[y]) of `width` values, into out[y·out_stride] (zeroed before).
//  - cast: dst[i] = fp8(src[i]·s), layout kept, s = fp8_scale(*amax); vec: 8 values a time.
//  - cast_transposed: dst [C, ld] = fp8(src [R, C]·s)ᵀ through 32×32 tiles in shared memory, so
//    reads and writes both go along rows; the tile holds the bytes as words, so the transposed
//    reads hit 33 different banks. Columns [R, ld) of dst are zeros: the padding that makes a
//    product's inner dimension a multiple of 16 (the weight gradient over any number of rows).
// The first thread of block 0 of a cast also writes 1/s, the factor cuBLASLt multiplies the
// product by (exact: a power of two).
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"
#include "triad/core/fp8.h"

namespace triad::fp8_block {

constexpr int kTile = 32;
constexpr int kTileRows = 8;
constexpr int kTransposeThreads = kTile * kTileRows;

// absmax's shared memory (one word per warp), cast_transposed's (the tile).
TRIAD_BLOCK_SIZE size_t absmax_smem() { return 32 * sizeof(unsigned); }
TRIAD_BLOCK_SIZE size_t transpose_smem() { return size_t(kTile) * (kTile + 1) * sizeof(unsigned); }

// The larger magnitude of the two bf16 in a 32-bit word, as bf16 bits.
TRIAD_BLOCK_FN unsigned pair_abs_bits(unsigned w) {
  const unsigned a = w & 0x7fffu, b = (w >> 16) & 0x7fffu;
  return a > b ? a : b;
}
TRIAD_BLOCK_FN unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }

// `threads` per block (a multiple of 32), `stride` the grid's threads.
template <class X>
TRIAD_BLOCK_FN void absmax(X& x, unsigned* out, const uint16_t* v, size_t n, bool vec, int threads,
                           size_t stride) {
  unsigned m = 0;
  size_t tail = 0;
  if (vec) {  // v 16-byte aligned: 8 values a time up to the last whole group
    TRIAD_BLOCK_STRIDE_LOOP(x, i, n / 8, threads, stride) {
      const Vec16 q = x.load16(v + 8 * i);
      m = umax(m, umax(umax(pair_abs_bits(q.w[0]), pair_abs_bits(q.w[1])),
                       umax(pair_abs_bits(q.w[2]), pair_abs_bits(q.w[3]))));
    }
    tail = n / 8 * 8;
  }
  for (size_t i = tail + size_t(x.block_x()) * threads + x.thread(); i < n; i += stride)
    m = umax(m, unsigned(v[i]) & 0x7fffu);
  const auto warp_umax = [&x](unsigned u) {
    TRIAD_UNROLL
    for (int offset = 16; offset > 0; offset >>= 1) u = umax(u, x.shfl_xor(u, offset));
    return u;
  };
  m = block_reduce(x, m, reinterpret_cast<unsigned*>(x.smem()), threads, warp_umax, 0u);
  // bf16 bits → float bits; a NaN (above +inf's 0x7f80) as +inf
  if (x.thread() == 0 && m != 0) x.atomic_max(out, (m < 0x7f80u ? m : 0x7f80u) << 16);
}

// The row ranges of absmax_segments: segment s is rows [begin[s], end[s]) (passed by value to
// the kernel: at most kMaxSegments a launch, 2 KiB of its 4 KiB of parameters).
constexpr int kMaxSegments = 256;
struct RowSegments {
  uint32_t begin[kMaxSegments], end[kMaxSegments];
};

// Segment block_y() of `rows` with the grid's x blocks (`stride`: their threads). vec: every
// segment's start 16-byte aligned (the caller checks the base and the row width).
template <class X>
TRIAD_BLOCK_FN void absmax_segments(X& x, unsigned* out, size_t out_stride, const uint16_t* v,
                                    size_t width, const RowSegments& rows, bool vec, int threads,
                                    size_t stride) {
  const int s = x.block_y();
  const size_t b = rows.begin[s], e = rows.end[s];
  absmax(x, out + size_t(s) * out_stride, v + b * width, (e - b) * width, vec, threads, stride);
}

// The scale of the tensor whose max |x| is *amax; block 0's first thread writes its inverse.
template <class X>
TRIAD_BLOCK_FN float tensor_scale(X& x, const float* amax, float* inv_scale, Fp8Format f) {
  const float s = fp8_scale(*amax, f);
  if (x.block_x() == 0 && x.block_y() == 0 && x.thread() == 0) *inv_scale = 1.0f / s;
  return s;
}

// Four bf16 (two words, the first value in the low half of w0) times s, as four fp8 bytes (the
// first in the lowest byte: the order in memory).
template <class X>
TRIAD_BLOCK_FN uint32_t fp8x4(X& x, uint32_t w0, uint32_t w1, float s, Fp8Format f) {
  const auto pair = [&](uint32_t w) {
    return x.fp8x2(float_from_bits(w << 16) * s, float_from_bits(w & 0xffff0000u) * s, f);
  };
  return pair(w0) | (pair(w1) << 16);
}

// dst[i] = fp8(src[i]·s). vec: src 16-byte and dst 8-byte aligned, 8 values a time.
template <class X>
TRIAD_BLOCK_FN void cast(X& x, uint8_t* dst, float* inv_scale, const uint16_t* src, size_t n,
                         const float* amax, Fp8Format f, bool vec, int threads, size_t stride) {
  const float s = tensor_scale(x, amax, inv_scale, f);
  size_t tail = 0;
  if (vec) {
    TRIAD_BLOCK_STRIDE_LOOP(x, i, n / 8, threads, stride) {
      const Vec16 q = x.load16(src + 8 * i);
      x.store8(dst + 8 * i, fp8x4(x, q.w[0], q.w[1], s, f), fp8x4(x, q.w[2], q.w[3], s, f));
    }
    tail = n / 8 * 8;
  }
  for (size_t i = tail + size_t(x.block_x()) * threads + x.thread(); i < n; i += stride)
    dst[i] = x.fp8(x.bf16_float(src[i]) * s, f);
}

// dst [C, ld] = fp8(src [R, C]·s)ᵀ, zeros in columns [R, ld) (ld >= R). Block (x, y) of
// kTransposeThreads: rows [32x, +32) and columns [32y, +32) of src (rows up to ld: the grid
// covers the padding); thread t: lane t % 32, rows t / 32 + 8j of the tile.
template <class X>
TRIAD_BLOCK_FN void cast_transposed(X& x, uint8_t* dst, float* inv_scale, const uint16_t* src,
                                    int R, int C, int ld, const float* amax, Fp8Format f) {
  unsigned* tile = reinterpret_cast<unsigned*>(x.smem());  // [kTile][kTile + 1]
  const float s = tensor_scale(x, amax, inv_scale, f);
  const int r0 = x.block_x() * kTile, c0 = x.block_y() * kTile;
  const int t = x.thread() % kTile, ty = x.thread() / kTile;
  for (int j = ty; j < kTile; j += kTileRows) {
    const int r = r0 + j, c = c0 + t;
    // A padding row as +0 (the byte 0 in both formats).
    tile[j * (kTile + 1) + t] =
        r < R && c < C ? x.fp8(x.bf16_float(src[size_t(r) * C + c]) * s, f) : 0u;
  }
  x.sync_threads();
  for (int j = ty; j < kTile; j += kTileRows) {
    const int c = c0 + j, r = r0 + t;
    if (r < ld && c < C) dst[size_t(c) * ld + r] = uint8_t(tile[t * (kTile + 1) + j]);
  }
}

}  // namespace triad::fp8_block
