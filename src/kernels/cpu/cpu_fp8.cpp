// FP8 linear layers on the CPU (backend.h's matmul_forward_fp8 / matmul_backward_fp8): the
// contract's literal form, the reference the GPU's FP8 products are compared with. Each operand
// is widened, scaled by its tensorwise power of two, rounded to e4m3 or e5m2 (core/fp8.h) and
// scaled back, which is exact; the fp32 product of those floats then is the FP8 product with fp32
// accumulation. It costs the bf16 path's time and a pass per operand: an emulation of the
// numerics (for tests and CI), not a way to make the CPU faster.
#include <cmath>
#include <vector>

#include "cpu_math.h"
#include "cpu_ops.h"
#include "triad/core/fp8.h"

namespace triad::cpu {
namespace {

thread_local std::vector<float> tls_fp8_scratch[5];

float* fp8_scratch(int slot, size_t n) {
  auto& v = tls_fp8_scratch[slot];
  if (v.size() < n) v.resize(n);
  return v.data();
}

// src through format f at the tensorwise scale of amax, back in float (slot's scratch).
template <class T>
const float* quantized(int slot, const T* src, size_t n, float amax, Fp8Format f) {
  float* dst = fp8_scratch(slot, n);
  const float s = fp8_scale(amax, f), inv = 1.0f / s;  // powers of two: both products exact
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) dst[i] = fp8_round(load_elem(src + i) * s, f) * inv;
  return dst;
}

template <class T>
void absmax_of(float* out, const T* x, size_t n) {
  float m = 0.0f;
  bool nan = false;  // a maximum is order-free: the threads' partial ones give the same value
#pragma omp parallel for schedule(static) reduction(max               \
                                                    : m) reduction(|| \
                                                                   : nan) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const float a = std::fabs(load_elem(x + i));
    if (a > m) m = a;
    nan = nan || a != a;
  }
  out[0] = nan ? INFINITY : m;  // backend.h: a NaN as +inf, which the ranks' maximum keeps
}

// The product into o (fp32, N×OC), the bias widened into scratch.
template <class T>
void forward_fp8(float* o, const T* inp, const T* weight, const T* bias, int N, int IC, int OC,
                 const float* amax) {
  const float* b = nullptr;
  if (bias != nullptr) {
    float* wb = fp8_scratch(3, size_t(OC));
    for (int i = 0; i < OC; ++i) wb[i] = load_elem(bias + i);
    b = wb;
  }
  matmul_forward(o, quantized(1, inp, size_t(N) * IC, amax[0], Fp8Format::e4m3),
                 quantized(2, weight, size_t(OC) * IC, amax[1], Fp8Format::e4m3), b, N, IC, OC);
}

// dinp (fp32, accumulated), dweight, dbias (from dout itself) of the FP8 products.
template <class T>
void backward_fp8(float* dinp, float* dweight, float* dbias, const T* dout, const T* inp,
                  const T* weight, int N, int IC, int OC, const float* amax) {
  if (dbias != nullptr) bias_backward(dbias, dout, N, OC);  // from the gradient itself
  if (dinp == nullptr && dweight == nullptr) return;
  const float* d = quantized(1, dout, size_t(N) * OC, amax[2], Fp8Format::e5m2);
  // inp is read for dweight only, the weight for dinp only (a split backward's two passes).
  const float* x = dweight ? quantized(2, inp, size_t(N) * IC, amax[0], Fp8Format::e4m3) : nullptr;
  const float* w = dinp ? quantized(3, weight, size_t(OC) * IC, amax[1], Fp8Format::e4m3) : nullptr;
  matmul_backward(dinp, dweight, nullptr, d, x, w, N, IC, OC);
}

}  // namespace

void absmax(float* out, const float* x, size_t n) { absmax_of(out, x, n); }
void absmax(float* out, const bf16_t* x, size_t n) { absmax_of(out, x, n); }

void matmul_forward_fp8(float* out, const float* inp, const float* weight, const float* bias, int N,
                        int IC, int OC, const float* amax) {
  forward_fp8(out, inp, weight, bias, N, IC, OC, amax);
}

void matmul_forward_fp8(bf16_t* out, const bf16_t* inp, const bf16_t* weight, const bf16_t* bias,
                        int N, int IC, int OC, const float* amax) {
  float* o = fp8_scratch(0, size_t(N) * OC);
  forward_fp8(o, inp, weight, bias, N, IC, OC, amax);
  to_bf16(out, o, size_t(N) * OC);
}

void matmul_backward_fp8(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, int N, int IC, int OC,
                         const float* amax) {
  backward_fp8(dinp, dweight, dbias, dout, inp, weight, N, IC, OC, amax);
}

void matmul_backward_fp8(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                         const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC,
                         const float* amax) {
  float* di = nullptr;
  if (dinp != nullptr) {  // accumulated: round(old + product), as the bf16 op
    di = fp8_scratch(4, size_t(N) * IC);
    to_fp32(di, dinp, size_t(N) * IC);
  }
  backward_fp8(di, dweight, dbias, dout, inp, weight, N, IC, OC, amax);
  if (dinp != nullptr) to_bf16(dinp, di, size_t(N) * IC);
}

}  // namespace triad::cpu
