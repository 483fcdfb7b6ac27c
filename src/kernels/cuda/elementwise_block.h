// The elementwise ops of cuda_elementwise.cu (GELU and squared ReLU forward/backward, residual add,
// accumulate, scale, the logits' soft cap, the fp32 ↔ bf16 conversions) and the bias passes of the
// matmul files (cuda_matmul.cu, cuda_matmul_lt.cu) as block programs (see block_program.h), so that
// the CPU tests run the same code through the SIMT emulator (test_elementwise_emulated) against the
// CPU backend. Memory-bound grid-stride loops; the CPU backend's formulas (cpu_elementwise.cpp)
// with the accurate tanh, computed in fp32, each output rounded once. Elem is float or uint16_t
// (bf16 bits).
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"
#include "triad/kernels/dropout_mask.h"

namespace triad::elementwise_block {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

// gelu(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
template <class X, class Elem>
TRIAD_BLOCK_FN void gelu_forward(X& x, Elem* out, const Elem* inp, size_t n, int threads,
                                 size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const float v = load(x, inp + i);
    const float t = x.tanh(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
    store(x, out + i, 0.5f * v * (1.0f + t));
  }
}

// d gelu/dx = ½(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²);  dinp (+)= that · dout
template <class X, class Elem>
TRIAD_BLOCK_FN void gelu_backward(X& x, Elem* dinp, const Elem* inp, const Elem* dout, size_t n,
                                  bool accumulate, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const float v = load(x, inp + i);
    const float t = x.tanh(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
    const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    const float grad = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du_dx;
    const float g = grad * load(x, dout + i);
    store(x, dinp + i, accumulate ? load(x, dinp + i) + g : g);
  }
}

// The MLP activations of their own pass (backend.h Activation, kind its value): the squared
// ReLU, out = max(x, 0)² (model.mlp = relu2), the exact GELU, out = ½·x·(1 + erf(x/√2))
// (model.mlp = gelu_exact), or the ReLU, out = max(x, 0) (model.mlp = relu).
constexpr int kRelu2 = 0, kGeluExact = 1, kRelu = 2;  // Activation's values
constexpr float kSqrtHalf = 0.7071067811865476f;      // 1/√2
constexpr float kInvSqrt2Pi = 0.3989422804014327f;    // 1/√(2π)

template <class X, class Elem>
TRIAD_BLOCK_FN void activation_forward(X& x, int kind, Elem* out, const Elem* inp, size_t n,
                                       int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const float v = load(x, inp + i);
    const float r = v > 0.0f ? v : 0.0f;
    store(x, out + i,
          kind == kGeluExact ? 0.5f * v * (1.0f + x.erf(v * kSqrtHalf))
          : kind == kRelu    ? r
                             : r * r);
  }
}

// dinp (+)= f'(x)·dout: 2·max(x, 0), ½·(1 + erf(x/√2)) + x·φ(x), or 1 where x > 0.
template <class X, class Elem>
TRIAD_BLOCK_FN void activation_backward(X& x, int kind, Elem* dinp, const Elem* inp,
                                        const Elem* dout, size_t n, bool accumulate, int threads,
                                        size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const float v = load(x, inp + i);
    const float grad = kind == kGeluExact ? 0.5f * (1.0f + x.erf(v * kSqrtHalf)) +
                                                v * kInvSqrt2Pi * x.exp(-0.5f * v * v)
                       : kind == kRelu ? (v > 0.0f ? 1.0f : 0.0f)
                                       : 2.0f * (v > 0.0f ? v : 0.0f);
    const float g = grad * load(x, dout + i);
    store(x, dinp + i, accumulate ? load(x, dinp + i) + g : g);
  }
}

// out = a + b (out may be a or b).
template <class X, class Elem>
TRIAD_BLOCK_FN void add(X& x, Elem* out, const Elem* a, const Elem* b, size_t n, int threads,
                        size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    store(x, out + i, load(x, a + i) + load(x, b + i));
  }
}

// dst += src.
template <class X, class Elem>
TRIAD_BLOCK_FN void accumulate(X& x, Elem* dst, const Elem* src, size_t n, int threads,
                               size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    store(x, dst + i, load(x, dst + i) + load(x, src + i));
  }
}

// v = c·tanh(mult·v/c), or mult·v with c = 0 (model.logit_softcap, μP's output multiplier; the
// backward is in the cross-entropy kernels).
template <class X, class Elem>
TRIAD_BLOCK_FN void scale_cap_logits(X& x, Elem* v, size_t n, float mult, float c, int threads,
                                     size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const float y = mult * load(x, v + i);
    store(x, v + i, c > 0.0f ? c * x.tanh(y / c) : y);
  }
}

// out = min(max(v, −c), c) (model.clip_qkv: OLMo's clamp of q, k and v); out may be inp.
template <class X, class Elem>
TRIAD_BLOCK_FN void clamp(X& x, Elem* out, const Elem* inp, size_t n, float c, int threads,
                          size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const float v = load(x, inp + i);
    store(x, out + i, v < -c ? -c : v > c ? c : v);
  }
}

// The clamp's gradient, in place: d passes where −c ≤ inp ≤ c (inp: the clamp's input), 0 where
// the clamp cut.
template <class X, class Elem>
TRIAD_BLOCK_FN void clamp_backward(X& x, Elem* d, const Elem* inp, size_t n, float c, int threads,
                                   size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const float v = load(x, inp + i);
    if (v < -c || v > c) store(x, d + i, 0.0f);
  }
}

// Hidden dropout in place over rows × C values (kernels/dropout_mask.h: row r's key in
// keys[2r], keys[2r + 1]); the kept values times scale, rounded once.
template <class X, class Elem>
TRIAD_BLOCK_FN void dropout(X& x, Elem* v, const int32_t* keys, int rows, int C, uint32_t site,
                            uint32_t threshold, float scale, int threads, size_t stride) {
  const size_t n = size_t(rows) * size_t(C);
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) {
    const size_t r = i / size_t(C);
    const uint32_t c = uint32_t(i - r * size_t(C));
    const bool keep = dropout_keeps(dropout_key_of(keys, r), site, c, threshold);
    store(x, v + i, load(x, v + i) * (keep ? scale : 0.0f));
  }
}

// v *= factor (fp32 only: gradients and statistics).
template <class X>
TRIAD_BLOCK_FN void scale(X& x, float* v, float factor, size_t n, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) { v[i] *= factor; }
}

// ema += w·(p − ema), w = 1 − optim.ema_decay (Backend::ema_update).
template <class X>
TRIAD_BLOCK_FN void ema_update(X& x, float* ema, const float* p, float w, size_t n, int threads,
                               size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) { ema[i] += w * (p[i] - ema[i]); }
}

// dst = src, widened or rounded to dst's type.
template <class X, class Dst, class Src>
TRIAD_BLOCK_FN void convert(X& x, Dst* dst, const Src* src, size_t n, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, n, threads, stride) { store(x, dst + i, load(x, src + i)); }
}

// out[n, o] = bias[o], or 0 without a bias, over the total = N·OC elements of out [N, OC]: the
// start of a product accumulated onto its bias (cuda_matmul.cu), or the product of an empty
// inner dimension (cuda_matmul_lt.cu).
template <class X, class Elem>
TRIAD_BLOCK_FN void broadcast_rows(X& x, Elem* out, const Elem* bias, int OC, size_t total,
                                   int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) {
    store(x, out + i, bias != nullptr ? load(x, bias + i % size_t(OC)) : 0.0f);
  }
}

// d[j·ldd + i] = round(acc[j·m + i] + bias[i]) over the column-major m×n fp32 product acc
// (total = m·n): the bias epilogue of the FP8 products, which cuBLASLt does not fuse there.
template <class X>
TRIAD_BLOCK_FN void bias_round(X& x, uint16_t* d, int ldd, const float* acc, const uint16_t* bias,
                               int m, size_t total, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, idx, total, threads, stride) {
    const size_t i = idx % size_t(m), j = idx / size_t(m);
    store(x, d + j * size_t(ldd) + i, acc[idx] + load(x, bias + i));
  }
}

}  // namespace triad::elementwise_block
