// Token + position embedding (backend.h encoder_forward / encoder_backward; cuda_encoder.cu
// launches them, and describes the backward's buckets) as block programs (see block_program.h),
// so that the CPU tests run the same code through the SIMT emulator (test_embedding_emulated)
// against the CPU backend. Elem is float or uint16_t (bf16 bits) for out, wte, wpe and dout; the
// gradients are fp32.
//  - forward: one thread per output element (grid-stride); a token < 0 (another rank's slice of
//    the vocabulary) adds a zero row.
//  - backward_rows: thread (c, bucket) owns channel c of every row whose id (a token, or with
//    positions of their own a position) is ≡ bucket (mod kBuckets) and walks all N rows in order:
//    each gradient element updated by one thread, in row order (the CPU's sums, bit for bit).
//  - backward_positions: thread (t, c) adds the B sequences' dout in order onto dwpe[t, c].
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::encoder_block {

// 256 buckets: C/128 · 256 blocks (1536 for C = 768) fill the GPU, and a thread's chain of
// dependent read-modify-writes is about N/256 long instead of N/32.
constexpr int kBuckets = 256;
constexpr int kChannelBlock = 128;  // backward_rows' threads per block

// out[n, c] = wte[tokens[n], c] + wpe[t, c], t = positions[n] or n % T (wpe null: no term).
template <class X, class Elem>
TRIAD_BLOCK_FN void forward(X& x, Elem* out, const int32_t* tokens, const Elem* wte,
                            const Elem* wpe, const int32_t* positions, int T, int C, size_t total,
                            int threads, size_t stride) {
  TRIAD_BLOCK_STRIDE_LOOP(x, i, total, threads, stride) {
    const size_t n = i / size_t(C);
    const size_t c = i % size_t(C);
    const size_t t = positions != nullptr ? size_t(positions[n]) : n % size_t(T);
    const int32_t tok = tokens[n];
    const float v = tok >= 0 ? load(x, wte + size_t(tok) * C + c) : 0.0f;  // foreign: a zero row
    store(x, out + i, wpe != nullptr ? v + load(x, wpe + t * C + c) : v);
  }
}

// dw[ids[n], c] += dout[n, c] over the N rows with ids[n] >= 0. Block (x, y), kChannelBlock
// threads: channel kChannelBlock·x + thread, bucket y.
template <class X, class Elem>
TRIAD_BLOCK_FN void backward_rows(X& x, float* dw, const Elem* dout, const int32_t* ids, int N,
                                  int C) {
  const int c = x.block_x() * kChannelBlock + x.thread();
  const int bucket = x.block_y();
  if (c >= C) return;
  TRIAD_UNROLL8
  for (int n = 0; n < N; ++n) {
    const int id = ids[n];
    if (id >= 0 && id % kBuckets == bucket)
      dw[size_t(id) * C + c] += load(x, dout + size_t(n) * C + c);
  }
}

// dwpe[t, c] += Σ_b dout[b, t, c], b in order; element i = t·C + c of T·C.
template <class X, class Elem>
TRIAD_BLOCK_FN void backward_positions(X& x, float* dwpe, const Elem* dout, int B, int T, int C,
                                       int threads, size_t stride) {
  const size_t TC = size_t(T) * C;
  TRIAD_BLOCK_STRIDE_LOOP(x, i, TC, threads, stride) {
    float acc = dwpe[i];
    for (int b = 0; b < B; ++b) acc += load(x, dout + size_t(b) * TC + i);
    dwpe[i] = acc;
  }
}

}  // namespace triad::encoder_block
