// The Hopper tile policy of the flash-attention block programs (flash_attention_block.h): the
// products on wgmma.mma_async (sm_90a), the warpgroup (the block's 4 warps) multiplying all 64
// rows at once, both operands of S = A·Yᵀ and the B operand of P·Y read by the tensor cores
// straight from shared memory through matrix descriptors, P from registers.
//
// Layout: the 128-byte-swizzle canonical layout, the one every bulk tensor copy with
// SWIZZLE_128B writes and wgmma reads at full speed. A tile is HD/64 panels of 64 rows × 64
// columns (8 KB each, one after the other); in a panel, row r is 128 contiguous bytes at 128·r,
// and its 16-byte chunk j (columns 8j .. 8j+7) sits at chunk position j XOR (r mod 8). The XOR
// is taken on shared-memory address bits (bits 4-6 ^= bits 7-9), so tiles start on 1 KB
// boundaries (kSmemAlign). wgmma descriptors (layout type 1, "128B"):
//   K-major operand (rows = M or N, K = the HD columns): SBO = 1024 (8-row groups), LBO unused;
//     the k16 step kk starts at panel kk/4, byte 32·(kk mod 4) of the row (the hardware applies
//     the XOR after adding it);
//   MN-major operand (K = the 64 rows, M or N = the columns; B of P·V, both operands of
//     dQ = dS·K where the tile holds dSᵀ): SBO = 1024 (8 rows along K), LBO = 8 KB (the next
//     64 columns along N); step kk starts 16 rows (2 KB) further.
// Shared memory written by cp.async or ordinary stores (the generic proxy) is made visible to
// wgmma (the async proxy) by fence.proxy.async in every writing thread before the barrier
// (publish); what the bulk tensor copies write is in the async proxy already. A held operand
// (Held) is read by ldmatrix (the generic proxy), after the wait that made the tile visible.
#pragma once

#include <type_traits>

#include "flash_attention_block.h"
#include "flash_attention_tma.h"

namespace triad::flash {

// wgmma's shared-memory matrix descriptor with the 128-byte swizzle: start address, LBO and SBO
// in 16-byte units in bits 0-13, 16-29 and 32-45; base offset (bits 49-51) zero, the swizzled
// pattern being anchored at 1 KB boundaries; layout type 1 (128B) in bits 62-63.
TRIAD_BLOCK_FN uint64_t wgmma_descriptor(uint32_t address, uint32_t lbo, uint32_t sbo) {
  return uint64_t((address & 0x3FFFFu) >> 4) | uint64_t((lbo & 0x3FFFFu) >> 4) << 16 |
         uint64_t((sbo & 0x3FFFFu) >> 4) << 32 | uint64_t(1) << 62;
}

// Tma: tiles loaded by bulk tensor copies (TmaPipe) instead of cp.async (CpAsyncPipe).
template <int HD_, bool Tma = false>
struct WgmmaTiles {
  static constexpr int kHD = HD_;
  static constexpr int HD = HD_;
  static constexpr int kElems = kTile * HD;
  static constexpr int kPanelElems = kTile * 64;  // one 64 × 64 panel (8 KB)
  static constexpr uint32_t kPanel = 2 * kPanelElems;
  static constexpr uint32_t kGroup = 1024;  // bytes of 8 rows of a panel (one swizzle period)
  static constexpr size_t kSmemAlign = 1024;
  using Square = WgmmaTiles<64>;  // a 64×64 tile (dS in the atomic-dQ backward)
  static constexpr bool kTma = Tma;
  static constexpr bool kHopper = true;  // runs only as sm_90a code
  static constexpr size_t kBarrierBytes = Tma ? 2 * sizeof(uint64_t) : 0;  // TmaPipe's barriers
  template <class X>
  using Pipe = std::conditional_t<Tma, TmaPipe<WgmmaTiles, X>, CpAsyncPipe<WgmmaTiles, X>>;

  TRIAD_BLOCK_FN static int chunk(int r, int c) {
    return (c / 64) * kPanelElems + r * 64 + (((c % 64) / 8) ^ (r % 8)) * 8;
  }

  template <class X>
  TRIAD_BLOCK_FN static void publish(X& x) {
    x.fence_proxy_async();
  }

  // s (rows 16w.. of the 64×64 product) += tile a · (tile y)ᵀ: HD/16 steps of m64n64k16, both
  // operands K-major.
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

  // The same with a's rows held in registers (Held): the register-A form, y from shared memory.
  template <class X>
  TRIAD_BLOCK_FN static void abt(X& x, float (&s)[8][4], const Held<HD>& a, const uint16_t* y) {
    float* d = &s[0][0];
    fence_registers<32>(x, d);
    keep_held(x, a);
    x.wgmma_fence();
    issue_abt(x, d, a, y);
    x.wgmma_commit();
    x.template wgmma_wait<0>();
    fence_registers<32>(x, d);
    keep_held(x, a);
  }

  // Two independent products (s1 += a1·y1ᵀ, s2 += a2·y2ᵀ; a1, a2 tiles or Held) in one wgmma
  // group: the second is issued while the first runs, and there is one wait for both.
  template <class X, class A>
  TRIAD_BLOCK_FN static void abt2(X& x, float (&s1)[8][4], const A& a1, const uint16_t* y1,
                                  float (&s2)[8][4], const A& a2, const uint16_t* y2) {
    float* d1 = &s1[0][0];
    float* d2 = &s2[0][0];
    fence_registers<32>(x, d1);
    fence_registers<32>(x, d2);
    keep_held(x, a1);
    keep_held(x, a2);
    x.wgmma_fence();
    issue_abt(x, d1, a1, y1);
    issue_abt(x, d2, a2, y2);
    x.wgmma_commit();
    x.template wgmma_wait<0>();
    fence_registers<32>(x, d1);
    fence_registers<32>(x, d2);
    keep_held(x, a1);
    keep_held(x, a2);
  }

  // acc (rows 16w.. of the 64×HD product) += P · tile y: 4 steps of m64nHDk16 over 16 keys each,
  // P from registers, y MN-major.
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

  // acc (rows 16w.. of the 64×NB·8 product) += (square tile a)ᵀ · columns col0 .. of tile y
  // (col0 a multiple of 64: a panel boundary): 4 steps of m64n(NB·8)k16 over 16 rows of a each,
  // both operands MN-major (a's columns are the M index).
  template <int NB, class X>
  TRIAD_BLOCK_FN static void atb(X& x, float (&acc)[NB][4], const uint16_t* a, const uint16_t* y,
                                 int col0 = 0) {
    const uint32_t sa = x.smem_address(a), sy = x.smem_address(y) + (col0 / 64) * kPanel;
    float* d = &acc[0][0];
    fence_registers<NB * 4>(x, d);
    x.wgmma_fence();
    TRIAD_UNROLL
    for (int kk = 0; kk < 4; ++kk)
      x.template wgmma_ss<NB * 8, 1, 1>(d, mn_major(sa, kk), mn_major(sy, kk));
    x.wgmma_commit();
    x.template wgmma_wait<0>();
    fence_registers<NB * 4>(x, d);
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
  // m64nHDk16 for HD <= 128; wider heads (192) as m64n128k16 over the first two panels and
  // m64n(HD−128)k16 over the rest: the accumulator's n8 blocks in column order either way, so
  // the second product's start at d + 64 (those columns' panel at 2·kPanel).
  template <class X>
  TRIAD_BLOCK_FN static void issue_pv(X& x, float* d, uint32_t (&fa)[4][4], const uint16_t* y) {
    const uint32_t sy = x.smem_address(y);
    TRIAD_UNROLL
    for (int kk = 0; kk < 4; ++kk) {
      if constexpr (HD <= 128) {
        x.template wgmma_rs<HD, 1>(d, fa[kk], mn_major(sy, kk));
      } else {
        static_assert(HD - 128 == 64, "heads wider than 128 values: 192 only");
        x.template wgmma_rs<128, 1>(d, fa[kk], mn_major(sy, kk));
        x.template wgmma_rs<64, 1>(d + 64, fa[kk], mn_major(sy + 2 * kPanel, kk));
      }
    }
  }
  template <class X>
  TRIAD_BLOCK_FN static void issue_abt(X& x, float* d, const uint16_t* a, const uint16_t* y) {
    const uint32_t sa = x.smem_address(a), sy = x.smem_address(y);
    TRIAD_UNROLL
    for (int kk = 0; kk < HD / 16; ++kk)
      x.template wgmma_ss<64, 0, 0>(d, k_major(sa, kk), k_major(sy, kk));
  }
  template <class X>
  TRIAD_BLOCK_FN static void issue_abt(X& x, float* d, const Held<HD>& a, const uint16_t* y) {
    const uint32_t sy = x.smem_address(y);
    TRIAD_UNROLL
    for (int kk = 0; kk < HD / 16; ++kk) x.template wgmma_rs<64, 0>(d, a.a[kk], k_major(sy, kk));
  }

  // The descriptors of k16 step kk of the tile at shared-memory address t, as a K-major operand
  // (K along its columns) or an MN-major one (K along its rows).
  TRIAD_BLOCK_FN static uint64_t k_major(uint32_t t, int kk) {
    return wgmma_descriptor(t + (kk / 4) * kPanel + (kk % 4) * 32, 16, kGroup);
  }
  TRIAD_BLOCK_FN static uint64_t mn_major(uint32_t t, int kk) {
    return wgmma_descriptor(t + kk * 2 * kGroup, kPanel, kGroup);
  }

  // Pins held A registers at this point, as fence_registers does the accumulators (the wgmma
  // reads them until its wait); nothing for an operand in shared memory.
  template <class X>
  TRIAD_BLOCK_FN static void keep_held(X& x, const Held<HD>& a) {
    TRIAD_UNROLL
    for (int kk = 0; kk < HD / 16; ++kk) {
      TRIAD_UNROLL
      for (int i = 0; i < 4; ++i) x.keep(const_cast<uint32_t&>(a.a[kk][i]));
    }
  }
  template <class X>
  TRIAD_BLOCK_FN static void keep_held(X&, const uint16_t*) {}

  // Pins the n accumulators at this point: ordinary code touching them stays on its side of the
  // wgmma.fence (before) or wgmma.wait_group (after).
  template <int N, class X>
  TRIAD_BLOCK_FN static void fence_registers(X& x, float* d) {
    TRIAD_UNROLL
    for (int i = 0; i < N; ++i) x.keep(d[i]);
  }
};

}  // namespace triad::flash
