// Test data of the block programs run through the SIMT emulator (test_moe_emulated,
// test_qk_norm_emulated): bf16 values as the programs take them (uint16_t bits) and as the CPU
// backend takes them (bf16_t), widened back, and the error measure of the GPU tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "random_data.h"
#include "triad/core/bf16.h"

namespace triad::testing {

using Bf16Bits = std::vector<uint16_t>;

// Each value rounded to bf16 (nearest even), as bits.
inline Bf16Bits bf16_bits(const std::vector<float>& v) {
  Bf16Bits b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = to_bf16(v[i]).bits;
  return b;
}
inline std::vector<float> widened(const Bf16Bits& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = to_float(bf16_t{b[i]});
  return v;
}
// n values uniform in [lo, hi), each rounded to bf16: numbers an fp32 and a bf16 run of a test
// both start from exactly.
inline std::vector<float> bf16_values(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  return widened(bf16_bits(random_vec(n, seed, lo, hi)));
}
// Values as a storage type holds them, in both views of the same numbers: fp32 floats and bf16
// bits (n values uniform in [lo, hi), rounded to bf16).
struct BothViews {
  std::vector<float> f;
  Bf16Bits b;
};
inline BothViews both_views(size_t n, uint32_t seed, float lo = -2.0f, float hi = 2.0f) {
  Bf16Bits b = bf16_bits(random_vec(n, seed, lo, hi));
  return BothViews{widened(b), std::move(b)};
}
// The same bits as the CPU backend's bf16 type.
inline bf16_t* as_bf16(Bf16Bits& b) { return reinterpret_cast<bf16_t*>(b.data()); }
inline const bf16_t* as_bf16(const Bf16Bits& b) {
  return reinterpret_cast<const bf16_t*>(b.data());
}

// The buffers of one precision for a test that runs a block program (Gpu: float, or uint16_t
// bf16 bits) and the CPU backend (Cpu: float or bf16_t) on the same values; kTol the
// tolerance of the kernel tests (max_rel_error: 1e-5 fp32, 1e-2 bf16).
template <bool kBf16>
struct Precision {
  using Gpu = std::conditional_t<kBf16, uint16_t, float>;
  using Cpu = std::conditional_t<kBf16, bf16_t, float>;
  static constexpr double kTol = kBf16 ? 1e-2 : 1e-5;
  static constexpr const char* kName = kBf16 ? "bf16" : "fp32";
  static std::vector<Gpu> from(const std::vector<float>& v) {
    if constexpr (kBf16)
      return bf16_bits(v);
    else
      return v;
  }
  static std::vector<float> widen(const std::vector<Gpu>& v) {
    if constexpr (kBf16)
      return widened(v);
    else
      return v;
  }
  static Cpu* cpu(std::vector<Gpu>& v) { return reinterpret_cast<Cpu*>(v.data()); }
  static const Cpu* cpu(const std::vector<Gpu>& v) {
    return reinterpret_cast<const Cpu*>(v.data());
  }
};

// max |got − want| / max |want| (a NaN or infinity in the difference: infinity).
inline double max_rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::abs(double(got[i]) - want[i]);
    if (!std::isfinite(d)) return INFINITY;
    diff = std::max(diff, d);
    scale = std::max(scale, std::abs(double(want[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

}  // namespace triad::testing
