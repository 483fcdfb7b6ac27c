// Elementwise ops (GELU, squared ReLU, residual add, accumulate, scale) and the sum of squares used
// by gradient clipping. All are memory-bound: one parallel, vectorized pass each.
#include <cmath>
#include <vector>

#include "cpu_math.h"
#include "cpu_ops.h"
#include "triad/kernels/dropout_mask.h"

namespace triad::cpu {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;
constexpr float kSqrtHalf = 0.7071067811865476f;    // 1/√2
constexpr float kInvSqrt2Pi = 0.3989422804014327f;  // 1/√(2π)

// gelu(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
inline f32x8 gelu8(f32x8 x) {
  const f32x8 t = tanh8(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
  return 0.5f * x * (1.0f + t);
}

// d gelu/dx = ½(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)
inline f32x8 gelu_grad8(f32x8 x) {
  const f32x8 t = tanh8(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
  const f32x8 du_dx = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du_dx;
}

}  // namespace

void gelu_forward(float* out, const float* inp, size_t n) {
  const size_t n8 = n / 8;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t b = 0; b < n8; ++b) store8(out + 8 * b, gelu8(load8(inp + 8 * b)));
  for (size_t i = 8 * n8; i < n; ++i) out[i] = gelu8(splat8(inp[i]))[0];
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  const size_t n8 = n / 8;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t b = 0; b < n8; ++b) {
    const size_t i = 8 * b;
    store8(dinp + i, load8(dinp + i) + gelu_grad8(load8(inp + i)) * load8(dout + i));
  }
  for (size_t i = 8 * n8; i < n; ++i) dinp[i] += gelu_grad8(splat8(inp[i]))[0] * dout[i];
}

void activation_forward(Activation f, float* out, const float* inp, size_t n) {
  if (f == Activation::relu) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
  } else if (f == Activation::relu2) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
      const float r = inp[i] > 0.0f ? inp[i] : 0.0f;
      out[i] = r * r;
    }
  } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) out[i] = 0.5f * inp[i] * (1.0f + std::erf(inp[i] * kSqrtHalf));
  }
}

void activation_backward(Activation f, float* dinp, const float* inp, const float* dout, size_t n) {
  if (f == Activation::relu) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
  } else if (f == Activation::relu2) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
      const float r = inp[i] > 0.0f ? inp[i] : 0.0f;
      dinp[i] += 2.0f * r * dout[i];
    }
  } else {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (size_t i = 0; i < n; ++i) {
      const float x = inp[i];
      const float grad =
          0.5f * (1.0f + std::erf(x * kSqrtHalf)) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
      dinp[i] += grad * dout[i];
    }
  }
}

void add(float* out, const float* a, const float* b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void accumulate(float* dst, const float* src, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

void clamp(float* out, const float* inp, size_t n, float c) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = inp[i] < -c ? -c : inp[i] > c ? c : inp[i];
}

void clamp_backward(float* d, const float* inp, size_t n, float c) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i)
    if (inp[i] < -c || inp[i] > c) d[i] = 0.0f;
}

void dropout(float* x, const int32_t* keys, int rows, int C, uint32_t site, float p) {
  const uint32_t threshold = dropout_threshold(p);
  const float scale = dropout_scale(p);
#pragma omp parallel for schedule(static) if (size_t(rows) * size_t(C) >= kParallelMin)
  for (int r = 0; r < rows; ++r) {
    const uint64_t key = dropout_key_of(keys, size_t(r));
    float* row = x + size_t(r) * size_t(C);
    for (int c = 0; c < C; ++c)
      row[c] *= dropout_keeps(key, site, uint32_t(c), threshold) ? scale : 0.0f;
  }
}

void scale(float* x, float s, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) x[i] *= s;
}

void ema_update(float* ema, const float* p, size_t n, float w) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) ema[i] += w * (p[i] - ema[i]);
}

// Fixed-size chunks summed independently, then combined in chunk order: the result does not
// depend on the thread count. Within a chunk, eight running sums (element i into sum i mod 8,
// each a fused multiply-add), then added pairwise: an order written out rather than left to the
// compiler's simd reduction, which summed bf16 and fp32 inputs of the same values in different
// orders (results a last bit apart).
template <class T>
double sum_squares_of(const T* x, size_t n) {
  constexpr size_t kChunk = size_t{1} << 16, kLanes = 8;
  const size_t n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks, 0.0);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t c = 0; c < n_chunks; ++c) {
    const size_t begin = c * kChunk;
    const size_t end = begin + kChunk < n ? begin + kChunk : n;
    double lane[kLanes] = {};
    size_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
#pragma omp simd
      for (size_t k = 0; k < kLanes; ++k) {
        const double v = load_elem(x + i + k);
        lane[k] = std::fma(v, v, lane[k]);
      }
    for (size_t k = 0; i < end; ++i, ++k) {
      const double v = load_elem(x + i);
      lane[k] = std::fma(v, v, lane[k]);
    }
    partial[c] =
        ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

double sum_squares(const float* x, size_t n) { return sum_squares_of(x, n); }
double sum_squares(const bf16_t* x, size_t n) { return sum_squares_of(x, n); }

}  // namespace triad::cpu
