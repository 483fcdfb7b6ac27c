// The portable tile policy of the flash-attention block programs (flash_attention_block.h):
// tiles as rows padded to HD + 8 elements, products on mma.sync m16n8k16 with fragments loaded
// by ldmatrix (sm_80 and later). Each warp multiplies its own 16 rows.
//
// The pitch of HD + 8 elements keeps rows 16-byte aligned for ldmatrix and shifts each row by
// 4 banks, so the 8 row addresses of one 8×8 matrix hit 8 different bank quads (no conflicts).
#pragma once

#include "flash_attention_block.h"

namespace triad::flash {

template <int HD_>
struct MmaTiles {
  static constexpr int kHD = HD_;
  static constexpr int HD = HD_;
  static constexpr int kPitch = HD + 8;
  static constexpr int kElems = kTile * kPitch;
  using Square = MmaTiles<64>;  // a 64×64 tile (dS in the atomic-dQ backward)
  static constexpr bool kTma = false;
  static constexpr bool kHopper = false;
  static constexpr size_t kSmemAlign = 16;
  static constexpr size_t kBarrierBytes = 0;
  template <class X>
  using Pipe = CpAsyncPipe<MmaTiles, X>;

  TRIAD_BLOCK_FN static int chunk(int r, int c) { return r * kPitch + c; }

  template <class X>
  TRIAD_BLOCK_FN static void publish(X&) {}  // ldmatrix reads what the barrier publishes

  // s (the warp's 16×64) += rows 16w.. of the tile at a_tile · (tile y)ᵀ, or of the held
  // fragments a.
  template <class X>
  TRIAD_BLOCK_FN static void abt(X& x, float (&s)[8][4], const uint16_t* a_tile,
                                 const uint16_t* y) {
    const int lane = x.thread() % 32;
    const uint16_t* a = a_tile + (x.thread() / 32) * 16 * kPitch;  // this warp's 16 rows
    TRIAD_UNROLL
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t fa[4];  // A 16×16: matrices (rows 0-7 | 8-15) × (cols 0-7 | 8-15)
      x.ldsm_x4(fa, a + (lane & 15) * kPitch + kk * 16 + (lane >> 4) * 8);
      times_keys(x, s, fa, y, kk);
    }
  }
  template <class X>
  TRIAD_BLOCK_FN static void abt(X& x, float (&s)[8][4], const Held<HD>& a, const uint16_t* y) {
    TRIAD_UNROLL
    for (int kk = 0; kk < HD / 16; ++kk) times_keys(x, s, a.a[kk], y, kk);
  }

  // Two independent products, one after the other.
  template <class X, class A>
  TRIAD_BLOCK_FN static void abt2(X& x, float (&s1)[8][4], const A& a1, const uint16_t* y1,
                                  float (&s2)[8][4], const A& a2, const uint16_t* y2) {
    abt(x, s1, a1, y1);
    abt(x, s2, a2, y2);
  }

  // acc (the warp's 16×HD) += P[16][64] · tile y; P in the accumulator layout of s (rounded to
  // bf16 here).
  template <class X>
  TRIAD_BLOCK_FN static void pv(X& x, float (&acc)[HD / 8][4], const float (&p)[8][4],
                                const uint16_t* y) {
    TRIAD_UNROLL
    for (int kk = 0; kk < 4; ++kk) {  // 16 keys at a time
      uint32_t fa[4];
      p_fragment(x, p, kk, fa);
      times_rows(x, acc, fa, y, kk);
    }
  }

  // acc (the warp's 16×NB·8) += rows 16w.. of (square tile a)ᵀ · columns col0 .. col0+NB·8-1 of
  // tile y: a holds the A operand transposed (its rows are the K index), so its fragments come
  // through ldmatrix.trans.
  template <int NB, class X>
  TRIAD_BLOCK_FN static void atb(X& x, float (&acc)[NB][4], const uint16_t* a, const uint16_t* y,
                                 int col0 = 0) {
    constexpr int LA = Square::kPitch;
    const int lane = x.thread() % 32, col = (x.thread() / 32) * 16;
    TRIAD_UNROLL
    for (int kk = 0; kk < 4; ++kk) {
      // A 16×16: matrices (rows 0-7 | 8-15) × (k 0-7 | 8-15), each the transpose of the 8×8
      // block of a at rows (k) kk·16 + 0-7 | 8-15, columns (A rows) col + 0-7 | 8-15.
      uint32_t fa[4];
      x.ldsm_x4_t(fa,
                  a + (kk * 16 + (lane >> 4) * 8 + (lane & 7)) * LA + col + ((lane >> 3) & 1) * 8);
      times_rows(x, acc, fa, y + col0, kk);
    }
  }

  // Two independent products, one after the other.
  template <class X>
  TRIAD_BLOCK_FN static void pv2(X& x, float (&acc1)[HD / 8][4], const float (&p1)[8][4],
                                 const uint16_t* y1, float (&acc2)[HD / 8][4],
                                 const float (&p2)[8][4], const uint16_t* y2) {
    pv(x, acc1, p1, y1);
    pv(x, acc2, p2, y2);
  }

 private:
  // s += A (16×16, fragments fa: columns kk·16 ..) · (columns kk·16 .. of all 64 rows of y)ᵀ.
  template <class X>
  TRIAD_BLOCK_FN static void times_keys(X& x, float (&s)[8][4], const uint32_t (&fa)[4],
                                        const uint16_t* y, int kk) {
    const int lane = x.thread() % 32;
    TRIAD_UNROLL
    for (int np = 0; np < 4; ++np) {
      // Bᵀ rows are Y rows: matrices (keys np·16 + 0-7 | 8-15) × (cols kk·16 + 0-7 | 8-15),
      // lanes 0-7 / 8-15 the low / high columns of the first 8 keys, 16-31 the next 8 keys.
      uint32_t fb[4];
      x.ldsm_x4(fb, y + (np * 16 + ((lane >> 4) & 1) * 8 + (lane & 7)) * kPitch + kk * 16 +
                        ((lane >> 3) & 1) * 8);
      x.mma(s[2 * np], fa, fb[0], fb[1]);
      x.mma(s[2 * np + 1], fa, fb[2], fb[3]);
    }
  }

  // acc += A (16×16, fragments fa) · rows kk·16 .. kk·16+15 of tile y (its first NB·8 columns).
  template <int NB, class X>
  TRIAD_BLOCK_FN static void times_rows(X& x, float (&acc)[NB][4], const uint32_t (&fa)[4],
                                        const uint16_t* y, int kk) {
    constexpr int L = kPitch;
    const int lane = x.thread() % 32;
    TRIAD_UNROLL
    for (int np = 0; np < NB / 2; ++np) {
      // B = Y[rows kk·16..][cols np·16..] along its rows: transposed loads; matrices (rows 0-7 |
      // 8-15) × (cols 0-7 | 8-15).
      uint32_t fb[4];
      x.ldsm_x4_t(
          fb, y + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * L + np * 16 + (lane >> 4) * 8);
      x.mma(acc[2 * np], fa, fb[0], fb[1]);
      x.mma(acc[2 * np + 1], fa, fb[2], fb[3]);
    }
  }
};

}  // namespace triad::flash
