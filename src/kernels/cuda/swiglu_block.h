// SwiGLU (backend.h swiglu_forward / swiglu_backward; cuda_swiglu.cu launches them) as block
// programs (see block_program.h), so that the CPU tests run the same code through the SIMT
// emulator (test_swiglu_emulated) against the CPU backend. One thread per hidden unit of a row,
// reading its gate and up values; the CPU backend's formulas (cpu_swiglu.cpp) with the accurate
// exp, computed in fp32, each output rounded once. Elem is float or uint16_t (bf16 bits).
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::swiglu_block {

template <class X>
TRIAD_BLOCK_FN float sigmoid(X& x, float g) {
  return 1.0f / (1.0f + x.exp(-g));
}

// out[row, j] = silu(gate) · up, gate = pre[row, j], up = pre[row, H + j]; k = row·H + j < n.
template <class X, class Elem>
TRIAD_BLOCK_FN void forward(X& x, Elem* out, const Elem* pre, int H, size_t n, int threads,
                            size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, k, n, threads, stride) {
    const size_t row = k / size_t(H), j = k % size_t(H);
    const Elem* gate = pre + row * 2 * size_t(H);
    const float g = load(x, gate + j);
    store(x, out + k, g * sigmoid(x, g) * load(x, gate + size_t(H) + j));
  }
}

// dpre's gate and up halves from dout (written, or added with accumulate).
template <class X, class Elem>
TRIAD_BLOCK_FN void backward(X& x, Elem* dpre, const Elem* pre, const Elem* dout, int H, size_t n,
                             bool accumulate, int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, k, n, threads, stride) {
    const size_t row = k / size_t(H), j = k % size_t(H);
    const size_t at = row * 2 * size_t(H) + j;
    const float g = load(x, pre + at), up = load(x, pre + at + size_t(H)), s = sigmoid(x, g);
    const float d = load(x, dout + k);
    const float vg = d * up * s * (1.0f + g * (1.0f - s)), vu = d * g * s;
    store(x, dpre + at, accumulate ? load(x, dpre + at) + vg : vg);
    store(x, dpre + at + size_t(H), accumulate ? load(x, dpre + at + size_t(H)) + vu : vu);
  }
}

}  // namespace triad::swiglu_block
