// bf16_t: the 16-bit brain-float storage type of the mixed-precision path (DESIGN.md §2). The
// top half of an IEEE float: 8 exponent bits, 7 stored mantissa bits. Arithmetic is never done
// on it: values are widened to float, computed in fp32 and rounded back (round to nearest
// even), which is what the GPU's bf16 conversions and tensor cores do. Layout-compatible with
// CUDA's __nv_bfloat16, so device buffers are shared between both views.
#pragma once

#include <cstdint>
#include <cstring>

namespace triad {

struct bf16_t {
  uint16_t bits = 0;
};
static_assert(sizeof(bf16_t) == 2);

// Round to nearest even; NaN stays a (quiet) NaN, ±inf stays ±inf, overflow rounds to ±inf.
inline bf16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}

inline float to_float(bf16_t b) {
  const uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The float nearest to f that bf16 can hold (what a store to bf16 and a load give back).
inline float round_bf16(float f) { return to_float(to_bf16(f)); }

}  // namespace triad
