// The Hopper tile policy of the flash-attention block programs (flash_attention_block.h): the
// products on wgmma.mma_async (sm_90a), the warpgroup (the block's 4 warps) multiplying all 64
// rows at once, both operands of S = A·Yᵀ and the B operand of P·Y read by the tensor cores
// straight from shared memory through matrix descriptors, P from registers.
//
// Layout: the no-swizzle canonical layout of 8×8 "core matrices" (8 rows of 16 bytes, 128
// contiguous bytes), column bands outermost: the 8 columns c/8 of all 64 rows are one contiguous
// 1 KB band, row r of it at byte 16·r, so core matrix (row band r/8, column band c/8) sits at
// byte (c/8)·1024 + (r/8)·128. A band is what one bulk tensor copy (TMA) of an 8-column × 64-row
// box writes (flash_attention_tma.h), and what the cp.async loads write too. A descriptor names a
// start address, LBO (bytes between core matrices adjacent along K) and SBO (along M or N), so
// the same tile serves
//   as a K-major operand (rows = M or N, K = the HD columns):   LBO = 1024, SBO = 128;
//   as an MN-major operand (K = the 64 rows, M or N = the columns): LBO = 128, SBO = 1024
//   (B of P·V; both operands of dQ = dS·K, where the tile holds dSᵀ).
// Shared memory written by cp.async or ordinary stores (the generic proxy) is made visible to
// wgmma (the async proxy) by fence.proxy.async in every writing thread before the barrier
// (publish); what the bulk tensor copies write is in the async proxy already.
#pragma once

#include <type_traits>

#include "flash_attention_block.h"
#include "flash_attention_tma.h"

namespace triad::flash {

// wgmma's shared-memory matrix descriptor, no swizzle: start address, LBO and SBO in 16-byte
// units in bits 0-13, 16-29 and 32-45; base offset and layout type (bits 49-51, 62-63) zero.
TRIAD_BLOCK_FN uint64_t wgmma_descriptor(uint32_t address, uint32_t lbo, uint32_t sbo) {
  return uint64_t((address & 0x3FFFFu) >> 4) | uint64_t((lbo & 0x3FFFFu) >> 4) << 16 |
         uint64_t((sbo & 0x3FFFFu) >> 4) << 32;
}

// Tma: tiles loaded by bulk tensor copies (TmaPipe) instead of cp.async (CpAsyncPipe).
template <int HD_, bool Tma = false>
struct WgmmaTiles {
  static constexpr int kHD = HD_;
  static constexpr int HD = HD_;
  static constexpr int kElems = kTile * HD;
  static constexpr uint32_t kBand = 16 * kTile;  // bytes of one 8-column band (all 64 rows)
  static constexpr uint32_t kCore = 128;         // bytes of one core matrix
  using Square = WgmmaTiles<64>;                 // a 64×64 tile (dS in the atomic-dQ backward)
  static constexpr bool kTma = Tma;
  static constexpr size_t kBarrierBytes = Tma ? 2 * sizeof(uint64_t) : 0;  // TmaPipe's barriers
  template <class X>
  using Pipe = std::conditional_t<Tma, TmaPipe<WgmmaTiles, X>, CpAsyncPipe<WgmmaTiles, X>>;

  TRIAD_BLOCK_FN static int chunk(int r, int c) { return (c / 8) * (8 * kTile) + r * 8; }

  template <class X>
  TRIAD_BLOCK_FN static void publish(X& x) {
    x.fence_proxy_async();
  }

  // s (rows 16w.. of the 64×64 product) += tile a · (tile y)ᵀ: HD/16 steps of m64n64k16, both
  // operands K-major; step kk starts 2 column bands (2 KB) further along K.
  template <class X>
  TRIAD_BLOCK_FN static void abt(X& x, float (&s)[8][4], const uint16_t* a, const uint16_t* y) {
    float* d = &s[0][0];
    fence_registers<32>(x, d);
    x.wgmma_fence();
    issue_abt(x, d, a, y);
    x.wgmma_commit();
    x.template wgmma_wait<0>();
    fence_registers<32>(x, d);
  }

  // Two independent products (s1 += a1·y1ᵀ, s2 += a2·y2ᵀ) in one wgmma group: the second is
  // issued while the first runs, and there is one wait for both.
  template <class X>
  TRIAD_BLOCK_FN static void abt2(X& x, float (&s1)[8][4], const uint16_t* a1, const uint16_t* y1,
                                  float (&s2)[8][4], const uint16_t* a2, const uint16_t* y2) {
    float* d1 = &s1[0][0];
    float* d2 = &s2[0][0];
    fence_registers<32>(x, d1);
    fence_registers<32>(x, d2);
    x.wgmma_fence();
    issue_abt(x, d1, a1, y1);
    issue_abt(x, d2, a2, y2);
    x.wgmma_commit();
    x.template wgmma_wait<0>();
    fence_registers<32>(x, d1);
    fence_registers<32>(x, d2);
  }

  // acc (rows 16w.. of the 64×HD product) += P · tile y: 4 steps of m64nHDk16 over 16 keys each,
  // P from registers, y MN-major; step kk starts 2 core matrices (16 rows, 256 bytes) further
  // along K.
  template <class X>
  TRIAD_BLOCK_FN static void pv(X& x, float (&acc)[HD / 8][4], const float (&p)[8][4],
                                const uint16_t* y) {
    uint32_t fa[4][4];
    fragments(x, p, fa);
    float* d = &acc[0][0];
    fence_registers<HD / 2>(x, d);
    x.wgmma_fence();
    issue_pv(x, d, fa, y);
    x.wgmma_commit();
    x.template wgmma_wait<0>();
    fence_registers<HD / 2>(x, d);
    keep_fragments(x, fa);  // the A registers live until the wait
  }

  // acc (rows 16w.. of the 64×HD product) += (square tile a)ᵀ · tile y: 4 steps of m64nHDk16
  // over 16 rows of a each, both operands MN-major (a's columns are the M index).
  template <class X>
  TRIAD_BLOCK_FN static void atb(X& x, float (&acc)[HD / 8][4], const uint16_t* a,
                                 const uint16_t* y) {
    const uint32_t sa = x.smem_address(a), sy = x.smem_address(y);
    float* d = &acc[0][0];
    fence_registers<HD / 2>(x, d);
    x.wgmma_fence();
    TRIAD_UNROLL
    for (int kk = 0; kk < 4; ++kk)
      x.template wgmma_ss<HD, 1, 1>(d, wgmma_descriptor(sa + 2 * kCore * kk, kCore, Square::kBand),
                                    wgmma_descriptor(sy + 2 * kCore * kk, kCore, kBand));
    x.wgmma_commit();
    x.template wgmma_wait<0>();
    fence_registers<HD / 2>(x, d);
  }

  // Two independent products (acc1 += P1·y1, acc2 += P2·y2) in one wgmma group.
  template <class X>
  TRIAD_BLOCK_FN static void pv2(X& x, float (&acc1)[HD / 8][4], const float (&p1)[8][4],
                                 const uint16_t* y1, float (&acc2)[HD / 8][4],
                                 const float (&p2)[8][4], const uint16_t* y2) {
    uint32_t fa1[4][4], fa2[4][4];
    fragments(x, p1, fa1);
    fragments(x, p2, fa2);
    float* d1 = &acc1[0][0];
    float* d2 = &acc2[0][0];
    fence_registers<HD / 2>(x, d1);
    fence_registers<HD / 2>(x, d2);
    x.wgmma_fence();
    issue_pv(x, d1, fa1, y1);
    issue_pv(x, d2, fa2, y2);
    x.wgmma_commit();
    x.template wgmma_wait<0>();
    fence_registers<HD / 2>(x, d1);
    fence_registers<HD / 2>(x, d2);
    keep_fragments(x, fa1);
    keep_fragments(x, fa2);
  }

 private:
  // The A registers of P for the 4 steps, pinned before the wgmma.fence (the conversions must
  // not move after it).
  template <class X>
  TRIAD_BLOCK_FN static void fragments(X& x, const float (&p)[8][4], uint32_t (&fa)[4][4]) {
    TRIAD_UNROLL
    for (int kk = 0; kk < 4; ++kk) p_fragment(x, p, kk, fa[kk]);
    keep_fragments(x, fa);
  }
  template <class X>
  TRIAD_BLOCK_FN static void keep_fragments(X& x, uint32_t (&fa)[4][4]) {
    TRIAD_UNROLL
    for (int kk = 0; kk < 4; ++kk) {
      TRIAD_UNROLL
      for (int i = 0; i < 4; ++i) x.keep(fa[kk][i]);
    }
  }
  template <class X>
  TRIAD_BLOCK_FN static void issue_pv(X& x, float* d, uint32_t (&fa)[4][4], const uint16_t* y) {
    const uint32_t sy = x.smem_address(y);
    TRIAD_UNROLL
    for (int kk = 0; kk < 4; ++kk)
      x.template wgmma_rs<HD, 1>(d, fa[kk], wgmma_descriptor(sy + 2 * kCore * kk, kCore, kBand));
  }
  template <class X>
  TRIAD_BLOCK_FN static void issue_abt(X& x, float* d, const uint16_t* a, const uint16_t* y) {
    const uint32_t sa = x.smem_address(a), sy = x.smem_address(y);
    TRIAD_UNROLL
    for (int kk = 0; kk < HD / 16; ++kk)
      x.template wgmma_ss<64, 0, 0>(d, wgmma_descriptor(sa + 2 * kBand * kk, kBand, kCore),
                                    wgmma_descriptor(sy + 2 * kBand * kk, kBand, kCore));
  }

  // Pins the n accumulators at this point: ordinary code touching them stays on its side of the
  // wgmma.fence (before) or wgmma.wait_group (after).
  template <int N, class X>
  TRIAD_BLOCK_FN static void fence_registers(X& x, float* d) {
    TRIAD_UNROLL
    for (int i = 0; i < N; ++i) x.keep(d[i]);
  }
};

}  // namespace triad::flash
