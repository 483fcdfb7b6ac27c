// Rotary position embedding (backend.h rope; cuda_rope.cu launches it) as a block program (see
// block_program.h), so that the CPU tests run the same code through the SIMT emulator
// (test_embedding_emulated) against the CPU backend. One thread per rotated pair of a q or k
// head (the NH q heads then the NKV k heads of a row, contiguous from column 0; the first rot of
// each head's hd values under partial rotary, the table [seq_len, rot]), in place; the
// CPU backend's formula (cpu_rope.cpp), computed in fp32 and rounded once per element. Elem is
// float or uint16_t (bf16 bits).
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::rope_block {

// Pair k (of `pairs` = rows · heads · rot/2): pair i of head j of row r, at position
// positions[r] or pos0 + r % T; sign −1 rotates by the opposite angles (the backward pass).
template <class X, class Elem>
TRIAD_BLOCK_FN void rotate(X& x, Elem* qkv, const float* table, const int32_t* positions, int T,
                           int pos0, int hd, int rot, int heads, size_t W, size_t pairs, float sign,
                           int threads, size_t stride) {
  const int half = rot / 2;
  TRIAD_BLOCK_STRIDE_LOOP(x, k, pairs, threads, stride) {
    const int i = int(k % size_t(half));
    const size_t head = k / size_t(half);  // row · heads + j
    const int j = int(head % size_t(heads));
    const size_t r = head / size_t(heads);
    const int p = positions != nullptr ? positions[r] : pos0 + int(r % size_t(T));
    const float* cs = table + size_t(p) * size_t(rot);
    Elem* v = qkv + r * W + size_t(j) * hd;  // k head g is column C + g·hd = (NH + g)·hd
    const float c = cs[i], s = sign * cs[half + i];
    const float a = load(x, v + i), b = load(x, v + half + i);
    store(x, v + i, a * c - b * s);
    store(x, v + half + i, b * c + a * s);
  }
}

}  // namespace triad::rope_block
