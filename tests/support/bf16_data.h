// bf16 test data shared by the CPU and CUDA mixed-precision suites: vectors of bf16_t made from
// floats (rounded to nearest even), widened back, and seeded random ones.
#pragma once

#include <vector>

#include "random_data.h"
#include "triad/core/bf16.h"

namespace triad::testing {

using Bits = std::vector<bf16_t>;

inline Bits to_bits(const std::vector<float>& v) {
  Bits b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = to_bf16(v[i]);
  return b;
}

inline std::vector<float> to_floats(const Bits& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = to_float(b[i]);
  return v;
}

// Uniform values in [lo, hi) rounded to bf16.
inline Bits random_bits(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  return to_bits(random_vec(n, seed, lo, hi));
}

}  // namespace triad::testing
