// Probes of the flash-attention tile policies' building blocks, one at a time: each runs a single
// product (or a single tile load) of a policy on known 64-row inputs in one thread block and
// writes the result row-major to global memory, for a host reference to check. When a flash
// kernel fails on a new GPU, these say which primitive the hardware reads differently from the
// PTX definitions as the code understands them (a descriptor form, the swizzle, the register-A
// layout, the bulk copy), where the attention tests only say that something is off.
// flash_attention.cu runs them on the device (flash_probe_primitives); the emulated test runs the
// same block program on the CPU. Plain C++, like flash_attention_block.h.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "flash_attention_block.h"

namespace triad::flash {

// The probes. Inputs are row-major bf16: a [64][K] and y [64][HD] (K = HD for abt, 64 for the
// others), p [64][64] fp32 for pv.
//   abt        out[64][64] = a · yᵀ          Tiles::abt, both operands from shared memory
//   abt_held   out[64][64] = a · yᵀ          Tiles::abt with a's rows held in registers
//   pv         out[64][HD] = bf16(p) · y     Tiles::pv, p from registers
//   atb        out[64][HD] = aᵀ · y          Tiles::atb, a (a Square tile, [64][64]) from
//                                             shared memory, 64 columns of y at a time
//   load       out[64][HD] = y rows < rows, 0 beyond   the tile as the policy's pipe loads it
//                                             (the bulk copy for tma), read back through chunk()
enum class Probe { abt, abt_held, pv, atb, load };
constexpr int kProbes = 5;
inline const char* probe_name(Probe p) {
  switch (p) {
    case Probe::abt:
      return "abt (S = A·Yᵀ, both from shared memory)";
    case Probe::abt_held:
      return "abt held (S = A·Yᵀ, A in registers)";
    case Probe::pv:
      return "pv (O = P·Y, P in registers)";
    case Probe::atb:
      return "atb (dQ = (dSᵀ)ᵀ·K, both from shared memory)";
    default:
      return "load (tile through the pipe, rows past the end zero)";
  }
}

// Dynamic shared memory of the probe block: the a tile (as large as a y tile), the y tile, the
// pipe's barriers and the alignment slack.
template <class Tiles>
TRIAD_BLOCK_SIZE size_t probe_smem() {
  return 2 * tile_bytes<Tiles>() + smem_extra<Tiles>();
}

// One block of kThreads. y_map: y's tensor map for a tma policy (a [1][rows][HD] tensor).
// rows: y's valid rows (64 except for the load probe).
template <class Tiles, class X>
TRIAD_BLOCK_FN void probe_block(X& x, float* out, const uint16_t* a, const float* p,
                                const uint16_t* y, const void* y_map, int rows, Probe probe) {
  constexpr int HD = Tiles::kHD;
  unsigned char* smem = aligned_smem<Tiles>(x);
  uint16_t* sA = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sY = sA + Tiles::kElems;
  typename Tiles::template Pipe<X> pipe(
      x, reinterpret_cast<uint64_t*>(smem + 2 * tile_bytes<Tiles>()));
  const int warp = x.thread() / 32, lane = x.thread() % 32;
  const int g = lane >> 2, tc = (lane & 3) * 2;

  // y through the policy's pipe (batch 0); a, when used, by cp.async in its own layout.
  pipe.load(sY, TileSource{y, size_t(HD), y_map, 0, 0}, 0, rows, 0);
  pipe.commit(0);
  if (probe == Probe::atb)
    load_tile<typename Tiles::Square>(x, sA, a, 64, 0, 64);
  else if (probe != Probe::load && probe != Probe::pv)
    load_tile<Tiles>(x, sA, a, size_t(HD), 0, 64);
  x.cp_commit();
  x.template cp_wait<0>();
  Tiles::publish(x);
  pipe.template wait<0>(0);
  x.sync_threads();

  // The accumulator layout (mma.m16n8 C, per warp): element (n, e) of this thread is row
  // 16w + g + 8(e/2), column 8n + tc + e%2.
  auto row_of = [&](int e) { return warp * 16 + g + 8 * (e / 2); };
  if (probe == Probe::abt || probe == Probe::abt_held) {
    float s[8][4];
    zero(s);
    if (probe == Probe::abt) {
      Tiles::abt(x, s, sA, sY);
    } else {
      Held<HD> h;
      hold<Tiles>(x, h, sA);
      Tiles::abt(x, s, h, sY);
    }
    TRIAD_UNROLL
    for (int n = 0; n < 8; ++n) TRIAD_UNROLL
    for (int e = 0; e < 4; ++e) out[row_of(e) * 64 + 8 * n + tc + e % 2] = s[n][e];
  } else if (probe == Probe::pv || probe == Probe::atb) {
    float acc[HD / 8][4];
    zero(acc);
    if (probe == Probe::pv) {
      float pr[8][4];
      TRIAD_UNROLL
      for (int n = 0; n < 8; ++n) TRIAD_UNROLL
      for (int e = 0; e < 4; ++e) pr[n][e] = p[row_of(e) * 64 + 8 * n + tc + e % 2];
      Tiles::pv(x, acc, pr, sY);
    } else {
      TRIAD_UNROLL
      for (int c0 = 0; c0 < HD; c0 += 64) {  // as dkdv_block takes it
        float slice[8][4];
        zero(slice);
        Tiles::atb(x, slice, sA, sY, c0);
        TRIAD_UNROLL
        for (int n = 0; n < 8; ++n) TRIAD_UNROLL
        for (int e = 0; e < 4; ++e) acc[c0 / 8 + n][e] = slice[n][e];
      }
    }
    TRIAD_UNROLL
    for (int n = 0; n < HD / 8; ++n) TRIAD_UNROLL
    for (int e = 0; e < 4; ++e) out[row_of(e) * HD + 8 * n + tc + e % 2] = acc[n][e];
  } else {  // load: every element of the tile back through chunk()
    for (int i = x.thread(); i < 64 * HD; i += kThreads) {
      const int r = i / HD, c = i % HD;
      out[i] = x.bf16_float(sY[Tiles::chunk(r, c - c % 8) + c % 8]);
    }
  }
}

// The host reference of a probe, in double from the same bf16 inputs (abits, ybits: raw bf16;
// pv rounds p to bf16 first, as the fragments do). Returns max|got − want| / max(max|want|, 1e-30).
inline double probe_error(Probe probe, int HD, const std::vector<float>& got,
                          const std::vector<uint16_t>& abits, const std::vector<float>& p,
                          const std::vector<uint16_t>& ybits, int rows, float (*widen)(uint16_t),
                          float (*round_bf16)(float)) {
  const int cols = probe == Probe::abt || probe == Probe::abt_held ? 64 : HD;
  double err = 0.0, scale = 0.0;
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < cols; ++c) {
      double want = 0.0;
      switch (probe) {
        case Probe::abt:
        case Probe::abt_held:
          for (int k = 0; k < HD; ++k)
            want += double(widen(abits[size_t(r) * HD + k])) * widen(ybits[size_t(c) * HD + k]);
          break;
        case Probe::pv:
          for (int k = 0; k < 64; ++k)
            want += double(round_bf16(p[size_t(r) * 64 + k])) * widen(ybits[size_t(k) * HD + c]);
          break;
        case Probe::atb:
          for (int k = 0; k < 64; ++k)
            want += double(widen(abits[size_t(k) * 64 + r])) * widen(ybits[size_t(k) * HD + c]);
          break;
        case Probe::load:
          want = r < rows ? widen(ybits[size_t(r) * HD + c]) : 0.0;
          break;
      }
      const double g = got[size_t(r) * cols + c];
      const double e = std::fabs(g - want);
      err = std::isfinite(e) ? (e > err ? e : err) : INFINITY;
      scale = std::fabs(want) > scale ? std::fabs(want) : scale;
    }
  return err / (scale > 1e-30 ? scale : 1e-30);
}

}  // namespace triad::flash
