// Probes of the flash-attention tile policies' building blocks, one at a time: each runs a single
// product (or a single tile load) of a policy on known 64-row inputs in one thread block and
// writes the result row-major to global memory, for a host reference to check. When a flash
// kernel fails on a new GPU, these say which primitive the hardware reads differently from the
// PTX definitions as the code understands them (a descriptor form, the swizzle, the register-A
// layout, the bulk copy), where the attention tests only say that something is off.
// flash_attention_kernels.cuh runs them on the device (flash_probe); the emulated test runs the
// same block program on the CPU. Plain C++, like flash_attention_block.h.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "flash_attention_block.h"

namespace triad::flash {

// The probes. Inputs are row-major bf16: a [64][K] and y [64][HD] (K = HD for the abt forms,
// 64 for atb), p [64][64] fp32 for the pv forms, and for the load probe wide [2][rows][3·HD] (a
// qkv-like matrix). Every probe writes out [2][64][N] fp32 (N = 64 for the abt forms, HD
// otherwise), the second half only for the two-product forms.
//   abt        out[0] = a · yᵀ                Tiles::abt, both operands from shared memory
//   abt_held   out[0] = a · yᵀ                Tiles::abt with a's rows held in registers
//   abt2       out[0] = a · yᵀ, out[1] = y · aᵀ    Tiles::abt2 (one wgmma group), from shared
//   memory abt2_held  the same with a's and y's rows held in registers pv         out[0] = bf16(p)
//   · y           Tiles::pv, p from registers pv2        out[0] = bf16(p) · y, out[1] = bf16(1 − p)
//   · y   Tiles::pv2 atb        out[0] = aᵀ · y                Tiles::atb, a (a Square tile) from
//   shared memory,
//                                             64 columns of y at a time
//   load       out[0] = wide[1][r][HD + c] for r < rows, 0 beyond: the middle HD columns of the
//                                             second sequence as the policy's pipe loads them (the
//                                             bulk copy for tma, at nonzero column and sequence
//                                             coordinates), read back through chunk()
enum class Probe { abt, abt_held, abt2, abt2_held, pv, pv2, atb, load };
constexpr int kProbes = 8;
inline const char* probe_name(Probe p) {
  switch (p) {
    case Probe::abt:
      return "abt (S = A·Yᵀ, both from shared memory)";
    case Probe::abt_held:
      return "abt held (S = A·Yᵀ, A in registers)";
    case Probe::abt2:
      return "abt2 (two S products in one group)";
    case Probe::abt2_held:
      return "abt2 held (two S products, A in registers)";
    case Probe::pv:
      return "pv (O = P·Y, P in registers)";
    case Probe::pv2:
      return "pv2 (two P·Y products in one group)";
    case Probe::atb:
      return "atb (dQ = (dSᵀ)ᵀ·K, both from shared memory)";
    default:
      return "load (a tile through the pipe, rows past the end zero)";
  }
}
TRIAD_BLOCK_SIZE bool probe_is_abt(Probe p) {
  return p == Probe::abt || p == Probe::abt_held || p == Probe::abt2 || p == Probe::abt2_held;
}
TRIAD_BLOCK_SIZE bool probe_is_dual(Probe p) {
  return p == Probe::abt2 || p == Probe::abt2_held || p == Probe::pv2;
}

// Dynamic shared memory of the probe block: the a tile (as large as a y tile), the y tile, the
// pipe's barriers and the alignment slack.
template <class Tiles>
TRIAD_BLOCK_SIZE size_t probe_smem() {
  return 2 * tile_bytes<Tiles>() + smem_extra<Tiles>();
}

// One block of kThreads. wide_map: the tensor map of wide for a tma policy ([2][rows][3·HD]).
template <class Tiles, class X>
TRIAD_BLOCK_FN void probe_block(X& x, float* out, const uint16_t* a, const float* p,
                                const uint16_t* y, const uint16_t* wide, const void* wide_map,
                                int rows, Probe probe) {
  constexpr int HD = Tiles::kHD;
  unsigned char* smem = aligned_smem<Tiles>(x);
  uint16_t* sA = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sY = sA + Tiles::kElems;
  typename Tiles::template Pipe<X> pipe(
      x, reinterpret_cast<uint64_t*>(smem + 2 * tile_bytes<Tiles>()));
  const int warp = x.thread() / 32, lane = x.thread() % 32;
  const int g = lane >> 2, tc = (lane & 3) * 2;

  // The load probe's tile through the policy's pipe (batch 0); the products' operands by
  // cp.async in their layouts.
  if (probe == Probe::load) {
    const size_t pitch = 3 * size_t(HD);
    pipe.load(sY, TileSource{wide + size_t(rows) * pitch + HD, pitch, wide_map, HD, 1}, 0, rows, 0);
    pipe.commit(0);
    pipe.template wait<0>(0);
  } else {
    load_tile<Tiles>(x, sY, y, size_t(HD), 0, 64);
    if (probe == Probe::atb)
      load_tile<typename Tiles::Square>(x, sA, a, 64, 0, 64);
    else if (probe_is_abt(probe))
      load_tile<Tiles>(x, sA, a, size_t(HD), 0, 64);
    x.cp_commit();
    x.template cp_wait<0>();
    Tiles::publish(x);
  }
  x.sync_threads();

  // The accumulator layout (mma.m16n8 C, per warp): element (n, e) of this thread is row
  // 16w + g + 8(e/2), column 8n + tc + e%2; part 1 of a two-product probe after part 0.
  auto at = [&](int part, int n, int e, int cols) {
    return size_t(part) * 64 * cols + size_t(warp * 16 + g + 8 * (e / 2)) * cols + 8 * n + tc +
           e % 2;
  };
  if (probe_is_abt(probe)) {
    float s1[8][4], s2[8][4];
    zero(s1);
    zero(s2);
    if (probe == Probe::abt) {
      Tiles::abt(x, s1, sA, sY);
    } else if (probe == Probe::abt2) {
      Tiles::abt2(x, s1, sA, sY, s2, sY, sA);
    } else {
      Held<HD> ha, hy;
      hold<Tiles>(x, ha, sA);
      hold<Tiles>(x, hy, sY);
      if (probe == Probe::abt_held)
        Tiles::abt(x, s1, ha, sY);
      else
        Tiles::abt2(x, s1, ha, sY, s2, hy, sA);
    }
    TRIAD_UNROLL
    for (int n = 0; n < 8; ++n) TRIAD_UNROLL
    for (int e = 0; e < 4; ++e) {
      out[at(0, n, e, 64)] = s1[n][e];
      if (probe_is_dual(probe)) out[at(1, n, e, 64)] = s2[n][e];
    }
  } else if (probe != Probe::load) {
    float acc1[HD / 8][4], acc2[HD / 8][4];
    zero(acc1);
    zero(acc2);
    if (probe == Probe::atb) {
      TRIAD_UNROLL
      for (int c0 = 0; c0 < HD; c0 += 64) {  // as dkdv_block takes it
        float slice[8][4];
        zero(slice);
        Tiles::atb(x, slice, sA, sY, c0);
        TRIAD_UNROLL
        for (int n = 0; n < 8; ++n) TRIAD_UNROLL
        for (int e = 0; e < 4; ++e) acc1[c0 / 8 + n][e] = slice[n][e];
      }
    } else {
      float p1[8][4], p2[8][4];
      TRIAD_UNROLL
      for (int n = 0; n < 8; ++n) TRIAD_UNROLL
      for (int e = 0; e < 4; ++e) {
        p1[n][e] = p[at(0, n, e, 64)];
        p2[n][e] = 1.0f - p1[n][e];
      }
      if (probe == Probe::pv)
        Tiles::pv(x, acc1, p1, sY);
      else
        Tiles::pv2(x, acc1, p1, sY, acc2, p2, sY);
    }
    TRIAD_UNROLL
    for (int n = 0; n < HD / 8; ++n) TRIAD_UNROLL
    for (int e = 0; e < 4; ++e) {
      out[at(0, n, e, HD)] = acc1[n][e];
      if (probe_is_dual(probe)) out[at(1, n, e, HD)] = acc2[n][e];
    }
  } else {  // load: every element of the tile back through chunk()
    for (int i = x.thread(); i < 64 * HD; i += kThreads) {
      const int r = i / HD, c = i % HD;
      out[i] = x.bf16_float(sY[Tiles::chunk(r, c - c % 8) + c % 8]);
    }
  }
}

// The inputs of one probe and its host reference, the same on the device (flash_probe) and in
// the emulated test: random values from a fixed seed, bf16 through to_bits (float → bf16 bits,
// round to nearest even) and widen (bits → float).
struct ProbeInputs {
  Probe probe;
  int HD;
  int rows;  // wide's rows per sequence: 50 for the load probe (a partial tile), else 64
  uint16_t (*to_bits)(float);
  float (*widen)(uint16_t);
  std::vector<uint16_t> a, y, wide;  // raw bf16
  std::vector<float> p;

  ProbeInputs(Probe probe_, int HD_, uint16_t (*to_bits_)(float), float (*widen_)(uint16_t))
      : probe(probe_),
        HD(HD_),
        rows(probe_ == Probe::load ? 50 : 64),
        to_bits(to_bits_),
        widen(widen_),
        a(64 * size_t(HD_)),
        y(64 * size_t(HD_)),
        wide(2 * size_t(rows) * 3 * HD_),
        p(64 * 64) {
    std::mt19937 rng(2024u + HD);
    std::uniform_real_distribution<float> sym(-1.0f, 1.0f), unit(0.0f, 1.0f);
    for (uint16_t& v : a) v = to_bits(sym(rng));
    for (uint16_t& v : y) v = to_bits(sym(rng));
    for (uint16_t& v : wide) v = to_bits(sym(rng));
    for (float& v : p) v = unit(rng);
  }
  // Floats of a probe's output ([2][64][max(64, HD)]).
  size_t out_size() const { return 2 * 64 * size_t(HD); }

  // The reference in double from the same bf16 inputs (the pv forms round p to bf16 first, as
  // the fragments do), over out[0] and, for the two-product forms, out[1]. Returns
  // max|got − want| / max(max|want|, 1e-30); INFINITY for a NaN.
  double error(const std::vector<float>& got) const {
    const int cols = probe_is_abt(probe) ? 64 : HD;
    double err = 0.0, scale = 0.0;
    for (int part = 0; part < (probe_is_dual(probe) ? 2 : 1); ++part)
      for (int r = 0; r < 64; ++r)
        for (int c = 0; c < cols; ++c) {
          const double want = reference(part, r, c);
          const double gv = got[size_t(part) * 64 * cols + size_t(r) * cols + c];
          const double e = std::fabs(gv - want);
          err = std::isfinite(e) ? (e > err ? e : err) : INFINITY;
          scale = std::fabs(want) > scale ? std::fabs(want) : scale;
        }
    return err / (scale > 1e-30 ? scale : 1e-30);
  }

 private:
  double reference(int part, int r, int c) const {
    double want = 0.0;
    if (probe_is_abt(probe)) {
      const std::vector<uint16_t>& l = part == 0 ? a : y;  // a·yᵀ, then y·aᵀ
      const std::vector<uint16_t>& rr = part == 0 ? y : a;
      for (int k = 0; k < HD; ++k)
        want += double(widen(l[size_t(r) * HD + k])) * widen(rr[size_t(c) * HD + k]);
    } else if (probe == Probe::pv || probe == Probe::pv2) {
      for (int k = 0; k < 64; ++k) {
        const float pk = part == 0 ? p[size_t(r) * 64 + k] : 1.0f - p[size_t(r) * 64 + k];
        want += double(widen(to_bits(pk))) * widen(y[size_t(k) * HD + c]);
      }
    } else if (probe == Probe::atb) {
      for (int k = 0; k < 64; ++k)
        want += double(widen(a[size_t(k) * 64 + r])) * widen(y[size_t(k) * HD + c]);
    } else {
      want = r < rows ? widen(wide[(size_t(rows) + r) * 3 * HD + HD + c]) : 0.0;
    }
    return want;
  }
};

}  // namespace triad::flash
