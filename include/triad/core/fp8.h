// FP8 for the linear layers' products (run.fp8 = tensorwise; docs/precision.md): the two 8-bit
// float formats of Hopper's tensor cores and the tensorwise scaling that fits a tensor into one.
//   e4m3 (OCP "e4m3fn"): 4 exponent bits (bias 7), 3 mantissa bits, largest finite 448, no ±inf;
//        the weights and activations of the forward product.
//   e5m2: 5 exponent bits (bias 15), 2 mantissa bits, largest finite 57344; the output gradients
//        of the backward products (more range, less precision).
// A tensor x goes in as q = fp8(x·s) with the power of two s = fp8_scale(max|x|, largest), and a
// product of two such tensors is divided by both scales after its fp32 accumulation. A power of
// two makes both scalings exact, so q·(1/s) is a float and the CPU backend can emulate an FP8
// product as an fp32 product of those floats, which is what a GPU's FP8 tensor-core product with
// fp32 accumulation computes (up to the order of the sums).
//
// Written once for the CPU backend and the CUDA kernels (TRIAD_HOST_DEVICE), so their rounding
// cannot drift apart; tests compare fp8_round with PyTorch's float8 casts over every bf16 value.
#pragma once

#include <cmath>

#include "triad/kernels/optimizer_math.h"  // TRIAD_HOST_DEVICE

namespace triad {

enum class Fp8Format { e4m3, e5m2 };

TRIAD_HOST_DEVICE constexpr float fp8_max(Fp8Format f) {
  return f == Fp8Format::e4m3 ? 448.0f : 57344.0f;
}

// The scale of a tensor whose largest magnitude is amax: the largest power of two s with
// amax·s <= fp8_max, so the tensor's largest element lands in the format's top binade. A zero
// tensor gets 1; a NaN or infinite amax gives NaN (the product then is NaN, as it would be
// without FP8, and the loss shows it). At most 2^126, for tiny amax: its inverse, the factor a
// GPU product is multiplied by, stays a normal float (2^-127 would be subnormal, which cuBLASLt
// may flush to zero).
TRIAD_HOST_DEVICE inline float fp8_scale(float amax, Fp8Format f) {
  if (amax == 0.0f) return 1.0f;
  if (!(amax < INFINITY)) return NAN;  // NaN or +inf
  const float ratio = fp8_max(f) / amax;
  if (!(ratio < 1.7e38f)) return ldexpf(1.0f, 126);  // overflowed: amax below ~2.6e-36
  int e = 0;
  frexpf(ratio, &e);  // ratio = m·2^e, m in [0.5, 1): the power of two below is 2^(e-1)
  return ldexpf(1.0f, e - 1 < 126 ? e - 1 : 126);
}

// v rounded to the nearest value format f holds (ties to even), saturating to ±fp8_max (as the
// GPU's __NV_SATFINITE conversion: ±inf too); NaN stays NaN; the sign kept (−0 too, as the GPU's
// conversion gives 0x80). The result is a float.
TRIAD_HOST_DEVICE inline float fp8_round(float v, Fp8Format f) {
  if (v != v) return v;
  const float top = fp8_max(f);
  const float a = fabsf(v);
  if (a >= top) return copysignf(top, v);  // (what rounds above top is past it already)
  const int mbits = f == Fp8Format::e4m3 ? 3 : 2;
  const int emin = f == Fp8Format::e4m3 ? -6 : -14;  // exponent of the smallest normal
  int e = 0;
  frexpf(a, &e);  // a = m·2^e, m in [0.5, 1): a's binade starts at 2^(e-1)
  const int binade = e - 1 < emin ? emin : e - 1;  // below: the subnormals' spacing
  const float ulp = ldexpf(1.0f, binade - mbits);
  const float r = rintf(a / ulp) * ulp;  // exact division by a power of two; rint: ties to even
  return copysignf(r > top ? top : r, v);
}

}  // namespace triad
